//! Golden bytes: the 15 control message types and enhanced GRE, read by the
//! wire views and rewritten by the engine.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, Verdict};
use pptp_alg::wire::gre::GrePacket;
use pptp_alg::wire::pptp::{ControlMessage, ControlType};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A message from its first 16 bytes, zero-padded to its Length.
fn golden(head: &str) -> Vec<u8> {
    let mut m = hex(head);
    let len = usize::from(u16::from_be_bytes([m[0], m[1]]));
    m.resize(len, 0);
    m
}

/// (first 16 bytes, type, own id, peer id)
const MESSAGES: [(&str, ControlType, Option<u16>, Option<u16>); 15] = [
    (
        "009c 0001 1a2b3c4d 0001 0000 0100 0000",
        ControlType::StartCtrlConnRequest,
        None,
        None,
    ),
    (
        "009c 0001 1a2b3c4d 0002 0000 0100 0100",
        ControlType::StartCtrlConnReply,
        None,
        None,
    ),
    (
        "0010 0001 1a2b3c4d 0003 0000 0100 0000",
        ControlType::StopCtrlConnRequest,
        None,
        None,
    ),
    (
        "0010 0001 1a2b3c4d 0004 0000 0100 0000",
        ControlType::StopCtrlConnReply,
        None,
        None,
    ),
    (
        "0010 0001 1a2b3c4d 0005 0000 0000 0001",
        ControlType::EchoRequest,
        None,
        None,
    ),
    (
        "0014 0001 1a2b3c4d 0006 0000 0000 0001",
        ControlType::EchoReply,
        None,
        None,
    ),
    (
        "00a8 0001 1a2b3c4d 0007 0000 4000 0042",
        ControlType::OutgoingCallRequest,
        Some(0x4000),
        None,
    ),
    (
        "0020 0001 1a2b3c4d 0008 0000 0777 4001",
        ControlType::OutgoingCallReply,
        Some(0x0777),
        Some(0x4001),
    ),
    (
        "00dc 0001 1a2b3c4d 0009 0000 0aaa 0001",
        ControlType::IncomingCallRequest,
        Some(0x0aaa),
        None,
    ),
    (
        "0018 0001 1a2b3c4d 000a 0000 4010 0aaa",
        ControlType::IncomingCallReply,
        Some(0x4010),
        Some(0x0aaa),
    ),
    (
        "001c 0001 1a2b3c4d 000b 0000 4011 0000",
        ControlType::IncomingCallConnected,
        None,
        Some(0x4011),
    ),
    (
        "0010 0001 1a2b3c4d 000c 0000 4000 0000",
        ControlType::CallClearRequest,
        Some(0x4000),
        None,
    ),
    (
        "0094 0001 1a2b3c4d 000d 0000 4000 0300",
        ControlType::CallDisconnectNotify,
        Some(0x4000),
        None,
    ),
    (
        "0028 0001 1a2b3c4d 000e 0000 4001 0000",
        ControlType::WanErrorNotify,
        None,
        Some(0x4001),
    ),
    (
        "0018 0001 1a2b3c4d 000f 0000 4001 0000",
        ControlType::SetLinkInfo,
        None,
        Some(0x4001),
    ),
];

#[test]
fn views_read_all_fifteen_types() {
    for (head, ty, own, peer) in MESSAGES {
        let m = golden(head);
        let v = ControlMessage::new_checked(&m[..]).unwrap();
        assert_eq!(v.control_type(), ty);
        assert_eq!(usize::from(v.length()), ty.length());
        assert_eq!((v.own_call_id(), v.peer_call_id()), (own, peer), "{ty:?}");
        assert!(
            ControlMessage::new_checked(&m[..m.len() - 1]).is_err(),
            "{ty:?} truncated"
        );
    }
}

/// Host 2's call 0x4000 is NAT id 0x4100 (host 1 holds block 0x40); the
/// server's id is 0x0777. Each message in each direction, first 16 bytes
/// in and out.
#[test]
fn engine_output_bytes() {
    let rows = [
        (
            Direction::FromInside,
            "00a8 0001 1a2b3c4d 0007 0000 4000 0042",
            "00a8 0001 1a2b3c4d 0007 0000 4100 0042",
        ),
        (
            Direction::FromInside,
            "0010 0001 1a2b3c4d 000c 0000 4000 0000",
            "0010 0001 1a2b3c4d 000c 0000 4100 0000",
        ),
        (
            Direction::FromInside,
            "0018 0001 1a2b3c4d 000f 0000 0777 0000",
            "0018 0001 1a2b3c4d 000f 0000 0777 0000",
        ),
        (
            Direction::FromInside,
            "0094 0001 1a2b3c4d 000d 0000 4000 0300",
            "0094 0001 1a2b3c4d 000d 0000 4100 0300",
        ),
        (
            Direction::ToInside,
            "0020 0001 1a2b3c4d 0008 0000 0777 4100",
            "0020 0001 1a2b3c4d 0008 0000 0777 4000",
        ),
        (
            Direction::ToInside,
            "0018 0001 1a2b3c4d 000f 0000 4100 0000",
            "0018 0001 1a2b3c4d 000f 0000 4000 0000",
        ),
        (
            Direction::ToInside,
            "0028 0001 1a2b3c4d 000e 0000 4100 0000",
            "0028 0001 1a2b3c4d 000e 0000 4000 0000",
        ),
        (
            Direction::ToInside,
            "001c 0001 1a2b3c4d 000b 0000 4100 0000",
            "001c 0001 1a2b3c4d 000b 0000 4000 0000",
        ),
        (
            Direction::ToInside,
            "0094 0001 1a2b3c4d 000d 0000 0777 0300",
            "0094 0001 1a2b3c4d 000d 0000 0777 0300",
        ),
        (
            Direction::ToInside,
            "0094 0001 1a2b3c4d 000d 0000 4100 0300",
            "0094 0001 1a2b3c4d 000d 0000 4000 0300",
        ),
    ];
    for (d, input, want) in rows {
        let mut sim = Sim::new(AlgConfig::default());
        let mut a = Conn::client_inside(host(1), 40000, SERVER);
        let mut b = Conn::client_inside(host(2), 40000, SERVER);
        sim.start_control(&mut a);
        sim.start_control(&mut b);
        sim.send(
            &mut a,
            Direction::FromInside,
            &golden("00a8 0001 1a2b3c4d 0007 0000 4000 0042"),
        );
        if input.contains("0007 0000") {
            let (v, out) = sim.send(&mut b, d, &golden(input));
            assert_eq!((v, out), (Verdict::Modified, golden(want)));
            continue;
        }
        sim.send(
            &mut b,
            Direction::FromInside,
            &golden("00a8 0001 1a2b3c4d 0007 0000 4000 0042"),
        );
        let mut reply = golden("0020 0001 1a2b3c4d 0008 0000 0777 4100");
        reply[16] = 1;
        sim.send(&mut b, Direction::ToInside, &reply);
        let (_, out) = sim.send(&mut b, d, &golden(input));
        assert_eq!(out, golden(want), "{input}");
    }
}

#[test]
fn gre_with_and_without_sequence_and_ack() {
    let cases = [
        // flags, version byte, header length, seq, ack
        ("2001 880b 0004 4100", 8, None, None),
        ("3001 880b 0004 4100 00000007", 12, Some(7), None),
        ("2081 880b 0004 4100 00000009", 12, None, Some(9)),
        (
            "3081 880b 0004 4100 00000007 00000009",
            16,
            Some(7),
            Some(9),
        ),
    ];
    for (head, hl, seq, ack) in cases {
        let mut g = hex(head);
        g.extend_from_slice(b"ppp!");
        let v = GrePacket::new_checked(&g[..]).unwrap();
        assert_eq!(
            (v.header_len(), v.seq(), v.ack(), v.call_id(), v.payload()),
            (hl, seq, ack, 0x4100, &b"ppp!"[..])
        );
        assert!(GrePacket::new_checked(&g[..hl - 1]).is_err());

        // Through the engine: only the destination and the Call ID change.
        let mut sim = Sim::new(AlgConfig::default());
        let mut a = Conn::client_inside(host(1), 40000, SERVER);
        let mut b = Conn::client_inside(host(2), 40000, SERVER);
        sim.start_control(&mut a);
        sim.start_control(&mut b);
        sim.send(&mut a, Direction::FromInside, &ocrq(0x4000));
        sim.send(&mut b, Direction::FromInside, &ocrq(0x4000));
        let mut ip = hex("4500 0000 0000 4000 402f 0000 cb00710a c6336401");
        let total = (ip.len() + g.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let mut pkt = [ip, g.clone()].concat();
        pptp_alg::wire::ipv4::Ipv4Packet::new_checked(&mut pkt[..])
            .unwrap()
            .fill_checksum();
        let (v, out) = sim.packet(pkt.clone(), Direction::ToInside);
        assert_eq!(v, Verdict::Modified);
        let mut want = pkt.clone();
        want[16..20].copy_from_slice(&[10, 0, 0, 2]);
        want[20 + 6..20 + 8].copy_from_slice(&[0x40, 0x00]);
        pptp_alg::wire::ipv4::Ipv4Packet::new_checked(&mut want[..])
            .unwrap()
            .fill_checksum();
        assert_eq!(out, want, "{head}");
    }
}

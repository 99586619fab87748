//! Golden bytes: the 15 control message types and enhanced GRE, read by the
//! wire views and the control message `Repr`, and rewritten by the engine.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, Verdict};
use pptp_alg::wire::gre::GrePacket;
use pptp_alg::wire::pptp::{
    CallClearRequest, CallDisconnectNotify, ControlBody, ControlMessage, ControlRepr, ControlType,
    EchoReply, EchoRequest, IncomingCallConnected, IncomingCallReply, IncomingCallRequest,
    OutgoingCallReply, OutgoingCallRequest, SetLinkInfo, StartCtrlConn, StopCtrlConn,
    WanErrorNotify,
};
use proptest::prelude::*;

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

/// Messages written out byte by byte from RFC 2637's figures, every field
/// a different value, and the `Repr` each must parse to.
fn rfc_messages() -> Vec<(Vec<u8>, ControlRepr)> {
    let name = |s: &str| {
        let mut a = [0u8; 64];
        a[..s.len()].copy_from_slice(s.as_bytes());
        a
    };
    let mut stats = [0u8; 128];
    stats[..5].copy_from_slice(b"stats");
    let repr = |body| ControlRepr { reserved0: 0, body };
    let sccrq = [
        hex("009c 0001 1a2b3c4d 0001 0000 0100 0000 00000003 00000002 0010 0a0b"),
        name("pptp-alg").to_vec(),
        name("vendor").to_vec(),
    ]
    .concat();
    let ocrq = [
        hex("00a8 0001 1a2b3c4d 0007 0000 4000 0042 0000012c 05f5e100 00000003 00000003 0040 0000 0003 0000"),
        name("123").to_vec(),
        name("sub").to_vec(),
    ]
    .concat();
    let icrq = [
        hex("00dc 0001 1a2b3c4d 0009 0000 0aaa 0007 00000001 00000009 0002 0003"),
        name("12").to_vec(),
        name("345").to_vec(),
        name("s").to_vec(),
    ]
    .concat();
    let cdn = [
        hex("0094 0001 1a2b3c4d 000d 0000 4000 0302 0010 0000"),
        stats.to_vec(),
    ]
    .concat();
    vec![
        (
            sccrq,
            repr(ControlBody::StartCtrlConnRequest(StartCtrlConn {
                protocol_version: 0x0100,
                result_code: 0,
                error_code: 0,
                framing_capabilities: 3,
                bearer_capabilities: 2,
                max_channels: 16,
                firmware_revision: 0x0a0b,
                host_name: name("pptp-alg"),
                vendor: name("vendor"),
            })),
        ),
        (
            hex("0010 0001 1a2b3c4d 0004 0000 01 05 0000"),
            repr(ControlBody::StopCtrlConnReply(StopCtrlConn {
                reason_or_result: 1,
                error_code: 5,
                reserved2: 0,
            })),
        ),
        (
            hex("0010 0001 1a2b3c4d 0005 0000 deadbeef"),
            repr(ControlBody::EchoRequest(EchoRequest {
                identifier: 0xdead_beef,
            })),
        ),
        (
            hex("0014 0001 1a2b3c4d 0006 0000 deadbeef 01 00 0000"),
            repr(ControlBody::EchoReply(EchoReply {
                identifier: 0xdead_beef,
                result_code: 1,
                error_code: 0,
                reserved1: 0,
            })),
        ),
        (
            ocrq,
            repr(ControlBody::OutgoingCallRequest(OutgoingCallRequest {
                call_id: 0x4000,
                call_serial: 0x42,
                min_bps: 300,
                max_bps: 100_000_000,
                bearer_type: 3,
                framing_type: 3,
                recv_window: 64,
                processing_delay: 0,
                phone_number_len: 3,
                reserved1: 0,
                phone_number: name("123"),
                subaddress: name("sub"),
            })),
        ),
        (
            hex("0020 0001 1a2b3c4d 0008 0000 0777 4000 01 00 0000 0000fa00 0010 0002 00000009"),
            repr(ControlBody::OutgoingCallReply(OutgoingCallReply {
                call_id: 0x0777,
                peer_call_id: 0x4000,
                result_code: 1,
                error_code: 0,
                cause_code: 0,
                connect_speed: 64_000,
                recv_window: 16,
                processing_delay: 2,
                physical_channel_id: 9,
            })),
        ),
        (
            icrq,
            repr(ControlBody::IncomingCallRequest(IncomingCallRequest {
                call_id: 0x0aaa,
                call_serial: 7,
                bearer_type: 1,
                physical_channel_id: 9,
                dialed_number_len: 2,
                dialing_number_len: 3,
                dialed_number: name("12"),
                dialing_number: name("345"),
                subaddress: name("s"),
            })),
        ),
        (
            hex("0018 0001 1a2b3c4d 000a 0000 4010 0aaa 01 00 0040 0003 0000"),
            repr(ControlBody::IncomingCallReply(IncomingCallReply {
                call_id: 0x4010,
                peer_call_id: 0x0aaa,
                result_code: 1,
                error_code: 0,
                recv_window: 64,
                transmit_delay: 3,
                reserved1: 0,
            })),
        ),
        (
            hex("001c 0001 1a2b3c4d 000b 0000 4011 0000 0000fa00 0040 0003 00000001"),
            repr(ControlBody::IncomingCallConnected(IncomingCallConnected {
                peer_call_id: 0x4011,
                reserved1: 0,
                connect_speed: 64_000,
                recv_window: 64,
                transmit_delay: 3,
                framing_type: 1,
            })),
        ),
        (
            hex("0010 0001 1a2b3c4d 000c 0000 4000 0000"),
            repr(ControlBody::CallClearRequest(CallClearRequest {
                call_id: 0x4000,
                reserved1: 0,
            })),
        ),
        (
            cdn,
            repr(ControlBody::CallDisconnectNotify(CallDisconnectNotify {
                call_id: 0x4000,
                result_code: 3,
                error_code: 2,
                cause_code: 16,
                reserved1: 0,
                call_statistics: stats,
            })),
        ),
        (
            hex("0028 0001 1a2b3c4d 000e 0000 4001 0000 00000001 00000002 00000003 00000004 00000005 00000006"),
            repr(ControlBody::WanErrorNotify(WanErrorNotify {
                peer_call_id: 0x4001,
                reserved1: 0,
                crc_errors: 1,
                framing_errors: 2,
                hardware_overruns: 3,
                buffer_overruns: 4,
                timeout_errors: 5,
                alignment_errors: 6,
            })),
        ),
        (
            hex("0018 0001 1a2b3c4d 000f 0000 4001 0000 ffffffff 000a0000"),
            repr(ControlBody::SetLinkInfo(SetLinkInfo {
                peer_call_id: 0x4001,
                reserved1: 0,
                send_accm: 0xffff_ffff,
                receive_accm: 0x000a_0000,
            })),
        ),
    ]
}

#[test]
fn reprs_parse_and_emit_rfc_bytes() {
    for (bytes, want) in rfc_messages() {
        let m = ControlMessage::new_checked(&bytes[..]).unwrap();
        let ty = want.control_type();
        assert_eq!((m.control_type(), bytes.len()), (ty, ty.length()));
        let got = ControlRepr::parse(&m);
        assert_eq!(got, want, "{ty:?}");
        assert_eq!(want.to_bytes(), bytes, "{ty:?}");
        // The view and the Repr agree on the Call IDs the engine reads.
        let (own, peer) = match &got.body {
            ControlBody::OutgoingCallRequest(b) => (Some(b.call_id), None),
            ControlBody::OutgoingCallReply(b) => (Some(b.call_id), Some(b.peer_call_id)),
            ControlBody::IncomingCallRequest(b) => (Some(b.call_id), None),
            ControlBody::IncomingCallReply(b) => (Some(b.call_id), Some(b.peer_call_id)),
            ControlBody::IncomingCallConnected(b) => (None, Some(b.peer_call_id)),
            ControlBody::CallClearRequest(b) => (Some(b.call_id), None),
            ControlBody::CallDisconnectNotify(b) => (Some(b.call_id), None),
            ControlBody::WanErrorNotify(b) => (None, Some(b.peer_call_id)),
            ControlBody::SetLinkInfo(b) => (None, Some(b.peer_call_id)),
            _ => (None, None),
        };
        assert_eq!((m.own_call_id(), m.peer_call_id()), (own, peer), "{ty:?}");
    }
}

#[test]
fn reprs_round_trip_all_fifteen_golden_messages() {
    for (head, ty, _, _) in MESSAGES {
        let m = golden(head);
        let repr = ControlRepr::parse(&ControlMessage::new_checked(&m[..]).unwrap());
        assert_eq!(repr.control_type(), ty);
        assert_eq!(repr.to_bytes(), m, "{ty:?}");
    }
}

proptest! {
    /// Any message with a valid header, whatever its other bytes (reserved
    /// ones included): emit(parse(bytes)) gives the bytes back, and parsing
    /// that gives the same Repr. A longer buffer is parsed the same.
    #[test]
    fn repr_round_trips_any_message(
        ty in 1u16..=15,
        reserved0 in any::<u16>(),
        body in proptest::collection::vec(any::<u8>(), 208),
        tail in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let ty = ControlType::from_u16(ty).unwrap();
        let mut m = hex("0000 0001 1a2b3c4d");
        m[0..2].copy_from_slice(&(ty.length() as u16).to_be_bytes());
        m.extend_from_slice(&(ty as u16).to_be_bytes());
        m.extend_from_slice(&reserved0.to_be_bytes());
        m.extend_from_slice(&body[..ty.length() - 12]);
        let repr = ControlRepr::parse(&ControlMessage::new_checked(&m[..]).unwrap());
        prop_assert_eq!(repr.reserved0, reserved0);
        prop_assert_eq!(repr.to_bytes(), m.clone());
        let again = ControlRepr::parse(&ControlMessage::new_checked(&repr.to_bytes()[..]).unwrap());
        prop_assert_eq!(&again, &repr);
        let longer = [m, tail].concat();
        let from_longer = ControlRepr::parse(&ControlMessage::new_checked(&longer[..]).unwrap());
        prop_assert_eq!(from_longer, repr);
    }
}

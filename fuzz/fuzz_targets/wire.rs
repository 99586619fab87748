//! The wire views (src/wire) on arbitrary bytes: no panic, getters agree
//! with the bytes and with etherparse, setters round-trip, and incremental
//! checksum updates agree with a full recomputation by etherparse.
#![no_main]

use etherparse::checksum::Sum16BitWords;
use fuzz_common::{ip_header_valid, tcp_checksum_valid};
use libfuzzer_sys::fuzz_target;
use pptp_alg::wire::checksum;
use pptp_alg::wire::gre::{self, GrePacket};
use pptp_alg::wire::ipv4::{Ipv4Packet, PROTO_TCP};
use pptp_alg::wire::pptp::{parse_header, ControlMessage, ControlRepr, ControlType, HEADER_LEN};
use pptp_alg::wire::tcp::TcpSegment;
use std::net::Ipv4Addr;

/// Patches for the checksum helpers and a new address and Call ID for the
/// setters, derived from the bytes so that an input is just a packet (the
/// seeds are the golden packets as they are).
fn params(b: &[u8]) -> (Vec<(u16, u8)>, Ipv4Addr, u16) {
    let n = b.len();
    let patches = (0..n)
        .step_by(37)
        .take(8)
        .map(|i| ((u16::from(b[i]) << 4) ^ i as u16, b[n - 1 - i]))
        .collect();
    let x = (n as u32).wrapping_mul(0x9e37_79b9);
    (patches, Ipv4Addr::from(x), (x >> 7) as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Our full checksum equals etherparse's; incremental byte updates equal a
/// full recomputation after each patch (as sums: 0x0000 and 0xffff are the
/// same one's complement value).
fn checksums(data: &[u8], patches: &[(u16, u8)]) {
    let ours = checksum::checksum(data);
    let theirs = Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
        .to_be();
    assert_eq!(ours, theirs, "full checksum");
    if data.is_empty() {
        return;
    }
    let mut d = data.to_vec();
    let mut hc = ours;
    for &(pos, new) in patches {
        let pos = usize::from(pos) % d.len();
        hc = checksum::update_byte(hc, pos, d[pos], new);
        d[pos] = new;
        let full = Sum16BitWords::new().add_slice(&d).ones_complement().to_be();
        assert!(
            hc == full || (hc == 0xffff && full == 0) || (hc == 0 && full == 0xffff),
            "update_byte {hc:#06x} vs full {full:#06x}"
        );
    }
    // A 32-bit update at an even position (an address in a header).
    if d.len() >= 4 {
        let old = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let new = old.rotate_left(7) ^ 0x5a5a_a5a5;
        let hc = checksum::update_u32(checksum::checksum(&d), old, new);
        d[..4].copy_from_slice(&new.to_be_bytes());
        let full = Sum16BitWords::new().add_slice(&d).ones_complement().to_be();
        assert!(
            hc == full || (hc == 0xffff && full == 0) || (hc == 0 && full == 0xffff),
            "update_u32 {hc:#06x} vs full {full:#06x}"
        );
    }
}

fn ipv4(bytes: &[u8], new_dst: Ipv4Addr) {
    let theirs = etherparse::Ipv4HeaderSlice::from_slice(bytes);
    let Ok(p) = Ipv4Packet::new_checked(bytes) else {
        return;
    };
    let (hl, tl) = (p.header_len(), p.total_len());
    assert!(20 <= hl && hl <= tl && tl <= bytes.len());
    assert_eq!(p.payload().len(), tl - hl);
    assert_eq!(p.protocol(), bytes[9]);
    assert_eq!(p.src().octets(), bytes[12..16]);
    assert_eq!(p.dst().octets(), bytes[16..20]);
    assert_eq!(p.header_checksum(), be16(bytes, 10));
    assert_eq!(p.frag_offset(), be16(bytes, 6) & 0x1fff);
    // etherparse reads the same fields wherever it accepts the header (it
    // also refuses some headers we take, e.g. a total length below the
    // header length is refused by both, but it checks less about the rest).
    if let Ok(h) = theirs {
        assert_eq!(usize::from(h.ihl()) * 4, hl);
        assert_eq!(usize::from(h.total_len()), tl);
        assert_eq!(h.protocol().0, p.protocol());
        assert_eq!(h.source_addr(), p.src());
        assert_eq!(h.destination_addr(), p.dst());
        assert_eq!(h.header_checksum(), p.header_checksum());
        assert_eq!(h.fragments_offset().value(), p.frag_offset());
        assert_eq!(h.more_fragments(), p.more_frags());
    }

    // fill_checksum gives etherparse's sum over the raw header.
    let mut buf = bytes.to_vec();
    let mut m = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
    m.fill_checksum();
    assert!(ip_header_valid(&buf));
    // set_dst keeps a valid checksum valid and round-trips.
    let mut m = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
    let old = m.set_dst(new_dst);
    assert_eq!(old.octets(), bytes[16..20]);
    assert_eq!(m.dst(), new_dst);
    assert!(ip_header_valid(&buf), "set_dst broke the header checksum");
    // Only the address and the checksum changed.
    for (i, (a, b)) in bytes.iter().zip(&buf).enumerate() {
        if !(10..12).contains(&i) && !(16..20).contains(&i) {
            assert_eq!(a, b, "set_dst changed byte {i}");
        }
    }
}

fn tcp(seg: &[u8], src: Ipv4Addr, dst: Ipv4Addr, patches: &[(u16, u8)]) {
    let Ok(t) = TcpSegment::new_checked(seg) else {
        return;
    };
    let hl = t.header_len();
    assert!(20 <= hl && hl <= seg.len());
    assert_eq!(t.payload(), &seg[hl..]);
    if let Ok(h) = etherparse::TcpHeaderSlice::from_slice(seg) {
        assert_eq!(h.source_port(), t.src_port());
        assert_eq!(h.destination_port(), t.dst_port());
        assert_eq!(h.sequence_number(), t.seq());
        assert_eq!(h.acknowledgment_number(), t.ack());
        assert_eq!(usize::from(h.data_offset()) * 4, hl);
        assert_eq!(h.checksum(), t.checksum());
        assert_eq!(h.syn(), t.flags() & 0x02 != 0);
        assert_eq!(h.fin(), t.flags() & 0x01 != 0);
    }
    assert_eq!(
        t.verify_checksum(src, dst),
        tcp_checksum_valid(src, dst, seg),
        "verify_checksum disagrees with etherparse's sum"
    );
    // fill_checksum makes it valid; payload patches keep it valid.
    let mut buf = seg.to_vec();
    let mut m = TcpSegment::new_checked(&mut buf[..]).unwrap();
    m.fill_checksum(src, dst);
    assert!(tcp_checksum_valid(src, dst, &buf), "fill_checksum");
    let plen = buf.len() - hl;
    if plen == 0 {
        return;
    }
    for &(at, new) in patches {
        let at = usize::from(at) % plen;
        let mut m = TcpSegment::new_checked(&mut buf[..]).unwrap();
        m.patch_payload_byte(at, new);
        assert_eq!(buf[hl + at], new);
        assert!(
            tcp_checksum_valid(src, dst, &buf),
            "patch_payload_byte at {at} broke the checksum"
        );
    }
}

fn gre(bytes: &[u8], new_id: u16) {
    assert_eq!(gre::version(bytes), bytes.get(1).map(|b| b & 7));
    let Ok(g) = GrePacket::new_checked(bytes) else {
        return;
    };
    let hl = g.header_len();
    assert!(hl <= bytes.len() && [8, 12, 16].contains(&hl));
    assert_eq!(gre::version(bytes), Some(1));
    assert_eq!(g.call_id(), be16(bytes, 6));
    assert_eq!(g.payload_len(), be16(bytes, 4));
    assert_eq!(g.payload(), &bytes[hl..]);
    assert_eq!(g.seq().is_some(), bytes[0] & gre::FLAG_S != 0);
    assert_eq!(g.ack().is_some(), bytes[1] & gre::FLAG_A != 0);
    assert_eq!(
        hl,
        8 + 4 * usize::from(g.seq().is_some()) + 4 * usize::from(g.ack().is_some())
    );
    let mut buf = bytes.to_vec();
    let mut m = GrePacket::new_checked(&mut buf[..]).unwrap();
    m.set_call_id(new_id);
    assert_eq!(m.call_id(), new_id);
    assert_eq!(m.seq(), g.seq());
    assert_eq!(m.ack(), g.ack());
    assert_eq!(&buf[..6], &bytes[..6]);
    assert_eq!(&buf[8..], &bytes[8..]);
}

fn pptp(bytes: &[u8]) {
    if bytes.len() >= HEADER_LEN {
        let h: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        if let Ok(ty) = parse_header(h) {
            assert_eq!(usize::from(be16(bytes, 0)), ty.length());
            assert_eq!(ControlType::from_u16(be16(bytes, 8)), Some(ty));
        }
    }
    let Ok(m) = ControlMessage::new_checked(bytes) else {
        return;
    };
    let ty = m.control_type();
    assert!(bytes.len() >= ty.length());
    assert_eq!(usize::from(m.length()), ty.length());
    assert_eq!(ControlType::from_u16(ty as u16), Some(ty));
    let f = ty.call_id_fields();
    assert_eq!(m.own_call_id(), f.own.clone().map(|o| be16(bytes, o.start)));
    assert_eq!(
        m.peer_call_id(),
        f.peer.clone().map(|o| be16(bytes, o.start))
    );
    for (_, o) in f.iter() {
        assert!(o.len() == 2 && o.end <= ty.length());
    }
    // The Repr keeps every byte: emitting what it parsed gives the message.
    let repr = ControlRepr::parse(&m);
    assert_eq!(repr.control_type(), ty);
    assert_eq!(repr.to_bytes(), &bytes[..ty.length()]);
    assert_eq!(
        m.reply_result().is_some(),
        matches!(
            ty,
            ControlType::OutgoingCallReply | ControlType::IncomingCallReply
        )
    );
}

fuzz_target!(|b: &[u8]| {
    let (patches, new_dst, new_call_id) = params(b);
    // Addresses for a bare TCP segment's pseudo-header.
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(203, 0, 113, 10));
    checksums(b, &patches);
    ipv4(b, new_dst);
    tcp(b, src, dst, &patches);
    gre(b, new_call_id);
    pptp(b);
    // The views as the engine stacks them: TCP or GRE inside IPv4.
    if let Ok(ip) = Ipv4Packet::new_checked(b) {
        let p = ip.payload();
        if ip.protocol() == PROTO_TCP {
            tcp(p, ip.src(), ip.dst(), &patches);
            if let Ok(t) = TcpSegment::new_checked(p) {
                pptp(t.payload());
            }
        } else {
            gre(p, new_call_id);
        }
    }
});

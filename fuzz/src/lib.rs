//! Helpers shared by the fuzz targets: checksum oracles (etherparse's own
//! summing, over the raw bytes, so that reserved bits etherparse's header
//! types drop still count) and packet builders, after tests/common/mod.rs.

use etherparse::checksum::Sum16BitWords;
use std::net::Ipv4Addr;

/// Whether the IPv4 header at the start of `pkt` has a valid checksum.
pub fn ip_header_valid(pkt: &[u8]) -> bool {
    let hl = usize::from(pkt[0] & 0x0f) * 4;
    Sum16BitWords::new().add_slice(&pkt[..hl]).ones_complement() == 0
}

/// Whether a TCP segment has a valid checksum for the given addresses.
pub fn tcp_checksum_valid(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> bool {
    Sum16BitWords::new()
        .add_slice(&src.octets())
        .add_slice(&dst.octets())
        .add_2bytes([0, 6])
        .add_2bytes((seg.len() as u16).to_be_bytes())
        .add_slice(seg)
        .ones_complement()
        == 0
}

/// Fixed length of each control message type (index = type).
pub const LEN: [usize; 16] = [
    0, 156, 156, 16, 16, 16, 20, 168, 32, 220, 24, 28, 16, 148, 40, 24,
];

/// A control message of type `ty` with its Call-ID words at 12 and 14 and
/// its result byte at 16 (where the type has them). The filler never holds
/// 0x1a, the first byte of the magic cookie, so that no window inside a
/// message reads as a header: framing can only start at message starts.
pub fn msg(ty: u16, w12: u16, w14: u16, result: u8) -> Vec<u8> {
    let len = LEN[usize::from(ty)];
    let mut m = vec![0u8; len];
    for (i, b) in m.iter_mut().enumerate().skip(12) {
        *b = ((i as u8).wrapping_mul(7) | 0x01) & 0x7f;
        if *b == 0x1a {
            *b = 0x1b;
        }
    }
    m[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    m[2..4].copy_from_slice(&1u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x1a2b3c4du32.to_be_bytes());
    m[8..10].copy_from_slice(&ty.to_be_bytes());
    m[10..12].copy_from_slice(&[0, 0]);
    let no_cookie = |v: u16| {
        let [a, b] = v.to_be_bytes();
        let f = |x: u8| if x == 0x1a { 0x1b } else { x };
        u16::from_be_bytes([f(a), f(b)])
    };
    if len >= 16 {
        m[12..14].copy_from_slice(&no_cookie(w12).to_be_bytes());
        m[14..16].copy_from_slice(&no_cookie(w14).to_be_bytes());
    }
    if len > 16 {
        m[16] = if result == 0x1a { 0x1b } else { result };
    }
    m
}

/// An IPv4/TCP packet with valid checksums.
pub fn tcp_packet(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, seq, 65535);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("tcp packet");
    // The flags byte as given (any combination), acknowledgement number
    // included, then the checksum again.
    out[20 + 13] = flags;
    out[20 + 8..20 + 12].copy_from_slice(&ack.to_be_bytes());
    out[20 + 16..20 + 18].copy_from_slice(&[0, 0]);
    let sum = Sum16BitWords::new()
        .add_slice(&src.0.octets())
        .add_slice(&dst.0.octets())
        .add_2bytes([0, 6])
        .add_2bytes(((out.len() - 20) as u16).to_be_bytes())
        .add_slice(&out[20..])
        .ones_complement()
        .to_be();
    out[20 + 16..20 + 18].copy_from_slice(&sum.to_be_bytes());
    out
}

/// An IPv4 packet carrying enhanced GRE with the given Call ID.
pub fn gre_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    call_id: u16,
    seq: Option<u32>,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut g = vec![
        0x20 | if seq.is_some() { 0x10 } else { 0 },
        0x01 | if ack.is_some() { 0x80 } else { 0 },
        0x88,
        0x0b,
    ];
    g.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    g.extend_from_slice(&call_id.to_be_bytes());
    if let Some(s) = seq {
        g.extend_from_slice(&s.to_be_bytes());
    }
    if let Some(a) = ack {
        g.extend_from_slice(&a.to_be_bytes());
    }
    g.extend_from_slice(payload);
    let mut ip = etherparse::Ipv4Header::new(
        g.len() as u16,
        64,
        etherparse::IpNumber(47),
        src.octets(),
        dst.octets(),
    )
    .expect("ipv4 header");
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&g);
    out
}

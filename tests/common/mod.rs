//! Test support: crafted PPTP messages, TCP/GRE packets (built with
//! etherparse, which also serves as the checksum oracle) and a tiny
//! simulated network around the engine.
#![allow(dead_code)]

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use pptp_alg::alg::{Alg, AlgConfig, Direction, Event, Verdict};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub const SCCRQ: u16 = 1;
pub const SCCRP: u16 = 2;
pub const STOPRQ: u16 = 3;
pub const STOPRP: u16 = 4;
pub const ECHORQ: u16 = 5;
pub const ECHORP: u16 = 6;
pub const OCRQ: u16 = 7;
pub const OCRP: u16 = 8;
pub const ICRQ: u16 = 9;
pub const ICRP: u16 = 10;
pub const ICCN: u16 = 11;
pub const CCRQ: u16 = 12;
pub const CDN: u16 = 13;
pub const WEN: u16 = 14;
pub const SLI: u16 = 15;

/// Fixed length of each control message type (index = type).
pub const LEN: [usize; 16] = [
    0, 156, 156, 16, 16, 16, 20, 168, 32, 220, 24, 28, 16, 148, 40, 24,
];

/// A control message of type `ty` with u16 fields set at the given
/// offsets; other bytes are a recognisable filler.
pub fn msg(ty: u16, fields: &[(usize, u16)]) -> Vec<u8> {
    let len = LEN[ty as usize];
    let mut m = vec![0u8; len];
    for (i, b) in m.iter_mut().enumerate().skip(12) {
        *b = (i as u8).wrapping_mul(7) | 0x01;
    }
    m[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    m[2..4].copy_from_slice(&1u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x1a2b3c4du32.to_be_bytes());
    m[8..10].copy_from_slice(&ty.to_be_bytes());
    m[10..12].copy_from_slice(&[0, 0]);
    for &(o, v) in fields {
        m[o..o + 2].copy_from_slice(&v.to_be_bytes());
    }
    m
}

pub fn ocrq(id: u16) -> Vec<u8> {
    msg(OCRQ, &[(12, id), (14, 0x0042)])
}
/// Outgoing-Call-Reply with result 1 (connected) unless `result` differs.
pub fn ocrp(own: u16, peer: u16, result: u8) -> Vec<u8> {
    let mut m = msg(OCRP, &[(12, own), (14, peer)]);
    m[16] = result;
    m
}
pub fn icrq(id: u16) -> Vec<u8> {
    msg(ICRQ, &[(12, id)])
}
pub fn icrp(own: u16, peer: u16, result: u8) -> Vec<u8> {
    let mut m = msg(ICRP, &[(12, own), (14, peer)]);
    m[16] = result;
    m
}
pub fn iccn(peer: u16) -> Vec<u8> {
    msg(ICCN, &[(12, peer)])
}
pub fn ccrq(id: u16) -> Vec<u8> {
    msg(CCRQ, &[(12, id)])
}
pub fn cdn(id: u16) -> Vec<u8> {
    msg(CDN, &[(12, id)])
}
pub fn sli(peer: u16) -> Vec<u8> {
    msg(SLI, &[(12, peer)])
}
pub fn wen(peer: u16) -> Vec<u8> {
    msg(WEN, &[(12, peer)])
}
pub fn simple(ty: u16) -> Vec<u8> {
    msg(ty, &[])
}

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// TCP flags for [`tcp_packet`].
#[derive(Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// Acknowledgement number; by default 1 with the ACK flag, except on a
    /// SYN, which then goes without ACK (the first SYN of a handshake).
    pub ack: Option<u32>,
}

/// An IPv4/TCP packet with a valid checksum.
pub fn tcp_packet(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b =
        PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, seq, 65535);
    if flags.syn {
        b = b.syn();
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let b = match (flags.ack, flags.syn) {
        (Some(n), _) => b.ack(n),
        (None, false) => b.ack(1),
        (None, true) => b,
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
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
    .unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&g);
    out
}

/// The TCP payload of a packet, after checking with etherparse that the IP
/// and TCP checksums are valid.
pub fn checked_tcp_payload(pkt: &[u8]) -> Vec<u8> {
    let sliced = SlicedPacket::from_ip(pkt).expect("valid ip");
    let ip = match &sliced.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => v4.clone(),
        _ => panic!("not ipv4"),
    };
    let hdr = ip.header();
    assert_eq!(
        hdr.to_header().calc_header_checksum(),
        hdr.header_checksum(),
        "ip checksum"
    );
    match sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4_raw(hdr.source(), hdr.destination(), t.payload())
                .unwrap();
            assert_eq!(want, t.checksum(), "tcp checksum");
            t.payload().to_vec()
        }
        _ => panic!("not tcp"),
    }
}

pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// One control connection seen by the engine: an inside end and an outside
/// end, each with its own next sequence number.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub inside: (Ipv4Addr, u16),
    pub outside: (Ipv4Addr, u16),
    pub seq: [u32; 2],
}

impl Conn {
    /// An inside client (ephemeral port) talking to an outside server.
    pub fn client_inside(h: Ipv4Addr, port: u16, server: Ipv4Addr) -> Self {
        Conn {
            inside: (h, port),
            outside: (server, 1723),
            seq: [1000, 500_000],
        }
    }
    /// An inside server (port 1723) reached by an outside client.
    pub fn server_inside(server: Ipv4Addr, client: Ipv4Addr, port: u16) -> Self {
        Conn {
            inside: (server, 1723),
            outside: (client, port),
            seq: [7000, 900_000],
        }
    }
}

fn di(d: Direction) -> usize {
    match d {
        Direction::FromInside => 0,
        Direction::ToInside => 1,
    }
}

/// The engine plus a clock.
pub struct Sim {
    pub alg: Alg,
    pub t0: Instant,
    pub now: Instant,
    pub events: Vec<Event>,
}

impl Sim {
    pub fn new(cfg: AlgConfig) -> Self {
        let t0 = Instant::now();
        Sim {
            alg: Alg::new(cfg),
            t0,
            now: t0,
            events: Vec::new(),
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.alg.handle_timeout(self.now);
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(e) = self.alg.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs one raw packet through the engine.
    pub fn packet(&mut self, mut pkt: Vec<u8>, dir: Direction) -> (Verdict, Vec<u8>) {
        let v = self.alg.handle(self.now, &mut pkt, dir);
        self.drain();
        (v, pkt)
    }

    /// Opens a connection: SYN from the initiator side of `c` (the outside
    /// end when the inside end listens on 1723), SYN-ACK from the other.
    pub fn open(&mut self, c: &mut Conn) {
        let order = if c.inside.1 == 1723 {
            [Direction::ToInside, Direction::FromInside]
        } else {
            [Direction::FromInside, Direction::ToInside]
        };
        for (k, d) in order.into_iter().enumerate() {
            let (src, dst) = ends(c, d);
            let ack = (k == 1).then(|| c.seq[1 - di(d)]);
            let pkt = tcp_packet(
                src,
                dst,
                c.seq[di(d)],
                Flags {
                    syn: true,
                    ack,
                    ..Default::default()
                },
                &[],
            );
            let (v, _) = self.packet(pkt, d);
            assert_eq!(v, Verdict::Accept);
            c.seq[di(d)] = c.seq[di(d)].wrapping_add(1);
        }
    }

    /// Sends `payload` as one segment in direction `d`; returns the verdict
    /// and the translated payload (checksums verified).
    pub fn send(&mut self, c: &mut Conn, d: Direction, payload: &[u8]) -> (Verdict, Vec<u8>) {
        let (src, dst) = ends(c, d);
        // Acknowledging all the other side sent, as a TCP stack does.
        let flags = Flags {
            ack: Some(c.seq[1 - di(d)]),
            ..Default::default()
        };
        let pkt = tcp_packet(src, dst, c.seq[di(d)], flags, payload);
        let (v, out) = self.packet(pkt, d);
        if !matches!(v, Verdict::Drop(_)) {
            c.seq[di(d)] = c.seq[di(d)].wrapping_add(payload.len() as u32);
        }
        (v, checked_tcp_payload(&out))
    }

    /// Sends a segment at an explicit sequence number without advancing.
    pub fn send_at(
        &mut self,
        c: &Conn,
        d: Direction,
        seq: u32,
        flags: Flags,
        payload: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let (src, dst) = ends(c, d);
        let pkt = tcp_packet(src, dst, seq, flags, payload);
        let (v, out) = self.packet(pkt, d);
        (v, checked_tcp_payload(&out))
    }

    /// Start-Control-Connection exchange (initiator is the outside end when
    /// the inside end listens on 1723).
    pub fn start_control(&mut self, c: &mut Conn) {
        self.open(c);
        let (first, second) = if c.inside.1 == 1723 {
            (Direction::ToInside, Direction::FromInside)
        } else {
            (Direction::FromInside, Direction::ToInside)
        };
        assert_eq!(self.send(c, first, &simple(SCCRQ)).0, Verdict::Accept);
        assert_eq!(self.send(c, second, &simple(SCCRP)).0, Verdict::Accept);
    }

    /// GRE from the outside peer of `c` to the router with `call_id`.
    pub fn gre_in(&mut self, from: Ipv4Addr, call_id: u16, payload: &[u8]) -> (Verdict, Vec<u8>) {
        let pkt = gre_packet(from, ROUTER, call_id, Some(1), None, payload);
        self.packet(pkt, Direction::ToInside)
    }
}

/// The router's public address (destination of GRE from outside).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

pub fn ends(c: &Conn, d: Direction) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    match d {
        Direction::FromInside => (c.inside, c.outside),
        Direction::ToInside => (c.outside, c.inside),
    }
}

/// The starts and ends of calls among the events so far, in order, by
/// inside id.
pub fn lifecycle(sim: &Sim) -> Vec<(&'static str, u16)> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            Event::CallStarted(c) => Some(("start", c.inside_id)),
            Event::CallEnded(c, _) => Some(("end", c.inside_id)),
            _ => None,
        })
        .collect()
}

/// Destination address and Call ID of a GRE packet.
pub fn gre_dst_and_id(pkt: &[u8]) -> (Ipv4Addr, u16) {
    let sliced = etherparse::Ipv4Slice::from_slice(pkt).expect("valid ipv4");
    let h = sliced.header();
    assert_eq!(
        h.to_header().calc_header_checksum(),
        h.header_checksum(),
        "ip checksum"
    );
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    (h.destination_addr(), u16_at(pkt, ihl + 6))
}

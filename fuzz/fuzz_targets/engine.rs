//! The engine (`Alg`) fed sequences of control segments both ways (PPTP
//! messages from a grammar of the 15 types with ids from a small set, cut
//! anywhere, coalesced, out of order, retransmitted, with any TCP flags and
//! sequence numbers), GRE both ways, clock jumps, timers, and restarts
//! through `saved_calls`/`restore_calls`. Invariants checked (independent of
//! how NAT ids are chosen):
//!
//! - every packet: `Accept` leaves the bytes unchanged; a rewritten control
//!   segment keeps its length and headers and has valid IP and TCP
//!   checksums; GRE from inside is never rewritten;
//! - GRE from outside is rewritten only when `calls()` lists a live call of
//!   that (peer, NAT id), and then exactly to that call's inside host and id;
//! - GRE from an inside host to the public address (hairpin NAT, the
//!   connection classified as the daemon does from conntrack) is sent on only
//!   when `calls()` lists a live hairpinned call of that host with that
//!   outside id, to its outside peer, with only the destination changed;
//! - an inside host's call request (own id of OCRQ/ICRQ/OCRP/ICRP) never
//!   leaves with an id that already routes the peer's GRE to another call
//!   (the hijack an untranslated inside id causes);
//! - a retransmission of a rewritten segment gives identical bytes;
//! - live NAT ids are unique per outside peer; `check_call_indexes()` holds;
//! - a restart restores every saved call, and restoring into the same
//!   engine restores none.
//!
//! The input is a byte code read front to back (see `Op`), so that seeds
//! are easy to write and mutations stay meaningful.
#![no_main]

use arbitrary::Unstructured;
use fuzz_common::{gre_packet, ip_header_valid, msg, tcp_checksum_valid, tcp_packet};
use libfuzzer_sys::fuzz_target;
use pptp_alg::alg::{
    Alg, AlgConfig, CallInfo, ConnKey, Direction, Event, Hairpin, IdPartition, IdPolicy, Verdict,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The input as `arbitrary` reads it, front to back (`Unstructured` takes
/// single bytes from the front; no collection lengths, which it would take
/// from the back), with zeros when exhausted.
struct Bytes<'a>(Unstructured<'a>);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        self.0.arbitrary::<u8>().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()]
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const S1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const S2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// Control connections: (inside end, outside end). Two hosts calling the
/// same server from the same port, a server inside reached from the same
/// outside address, a second server, and a second connection of a host.
fn conn_ends() -> [((Ipv4Addr, u16), (Ipv4Addr, u16)); 5] {
    [
        ((host(1), 40000), (S1, 1723)),
        ((host(2), 40000), (S1, 1723)),
        ((host(3), 1723), (S1, 50000)),
        ((host(1), 40001), (S2, 1723)),
        ((host(2), 40001), (S1, 1723)),
    ]
}

/// Longest clean segment: its rewritten Call IDs (at most one per 16
/// bytes, two bytes each) stay within the engine's log of 64 patches per
/// direction that identical retransmissions rely on.
const MAX_SEGMENT: usize = 400;

/// Call IDs the grammar uses: collisions are the point.
const IDS: [u16; 8] = [
    0x4000, 0x4001, 0x4002, 0x0000, 0x0001, 0x0100, 0x8000, 0xffff,
];

/// PPTP_FUZZ_TRACE=1 prints every packet, verdict and event (to read a
/// reproducer).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("PPTP_FUZZ_TRACE").is_some())
}

#[derive(Default)]
struct Stream {
    /// Bytes appended so far; `data[0]` is at sequence number `isn + 1`.
    data: Vec<u8>,
    isn: u32,
    /// Message start positions and (position, control type) of each
    /// call-creating own Call-ID field in `data`.
    starts: Vec<usize>,
    create_fields: Vec<usize>,
    /// End of the furthest segment the engine did not drop: bytes beyond it
    /// are new to the engine.
    high: usize,
    /// Something outside the grammar went into this direction (garbage,
    /// a bad sequence number, an unknown message type, a desync): the
    /// engine's framing may differ from the model's.
    tainted: bool,
    /// The last segment sent that the engine rewrote and nothing since may
    /// have made it translate differently: (packet in, packet out).
    last_rewritten: Option<(Vec<u8>, Vec<u8>)>,
}

struct Model {
    /// The engine's `forged_resyncs` when rewrites were last remembered.
    resyncs_seen: u64,
    alg: Alg,
    cfg: AlgConfig,
    now: Instant,
    streams: Vec<[Stream; 2]>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn di(d: Direction) -> usize {
    match d {
        Direction::FromInside => 0,
        Direction::ToInside => 1,
    }
}

impl Model {
    fn ends(&self, c: usize, d: Direction) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let (i, o) = conn_ends()[c];
        match d {
            Direction::FromInside => (i, o),
            Direction::ToInside => (o, i),
        }
    }

    fn drain(&mut self) {
        while let Some(e) = self.alg.poll_event() {
            if trace() {
                eprintln!("  event {e:?}");
            }
            if let Event::Desync { conn, .. } = e {
                // The engine stops translating the connection: the model
                // no longer knows what leaves.
                for (c, (i, o)) in conn_ends().iter().enumerate() {
                    if *conn.inside.ip() == i.0
                        && conn.inside.port() == i.1
                        && *conn.outside.ip() == o.0
                        && conn.outside.port() == o.1
                    {
                        for s in &mut self.streams[c] {
                            s.tainted = true;
                        }
                    }
                }
            }
        }
    }

    /// Anything that may make a retransmission translate differently
    /// (connection reuse, timers, a restart).
    fn forget_rewritten(&mut self) {
        for pair in &mut self.streams {
            for s in pair {
                s.last_rewritten = None;
            }
        }
    }

    fn live(&self) -> Vec<CallInfo> {
        self.alg.calls(self.now)
    }

    /// Runs one packet and checks what holds for every packet.
    fn packet(&mut self, pkt: &[u8], d: Direction) -> (Verdict, Vec<u8>) {
        let mut out = pkt.to_vec();
        let v = self.alg.handle(self.now, &mut out, d);
        if trace() {
            eprintln!(
                "{d:?} {} bytes: {v:?}\n  in  {}\n  out {}",
                pkt.len(),
                hex(pkt),
                hex(&out)
            );
        }
        self.drain();
        assert_eq!(out.len(), pkt.len());
        if v != Verdict::Modified {
            assert_eq!(out, pkt, "{v:?} but the bytes changed");
        }
        (v, out)
    }

    /// A control segment with valid checksums.
    fn tcp(&mut self, pkt: Vec<u8>, d: Direction) -> (Verdict, Vec<u8>) {
        let (v, out) = self.packet(&pkt, d);
        if v == Verdict::Modified {
            // Headers unchanged but for the TCP checksum; checksums valid.
            let thl = usize::from(pkt[20 + 12] >> 4) * 4;
            assert_eq!(out[..20], pkt[..20], "ip header changed");
            assert_eq!(out[20..36], pkt[20..36], "tcp header changed");
            assert_eq!(out[38..20 + thl], pkt[38..20 + thl], "tcp header changed");
            assert!(ip_header_valid(&out), "ip checksum");
            let src = Ipv4Addr::new(out[12], out[13], out[14], out[15]);
            let dst = Ipv4Addr::new(out[16], out[17], out[18], out[19]);
            assert!(tcp_checksum_valid(src, dst, &out[20..]), "tcp checksum");
        }
        (v, out)
    }

    fn append(&mut self, c: usize, d: Direction, r: &mut Bytes) {
        let n = 1 + r.u8() % 4;
        for _ in 0..n {
            let sel = r.u8();
            let id = |r: &mut Bytes, live: &[CallInfo]| -> u16 {
                let k = r.u8();
                match k % 8 {
                    0..=4 => IDS[usize::from(k / 8) % IDS.len()],
                    5 if !live.is_empty() => live[usize::from(k / 8) % live.len()].nat_id,
                    6 if !live.is_empty() => live[usize::from(k / 8) % live.len()].inside_id,
                    _ => r.u16(),
                }
            };
            let live = self.live();
            let s = &mut self.streams[c][di(d)];
            if sel == 0xff {
                // A message type RFC 2637 does not define, skipped by its
                // length (its bytes are arbitrary: the model's framing no
                // longer holds).
                let len = 12 + usize::from(r.u8());
                let mut m = msg(1, 0, 0, 0);
                m.truncate(12);
                m[0..2].copy_from_slice(&(len as u16).to_be_bytes());
                m[8..10].copy_from_slice(&(16 + u16::from(r.u8())).to_be_bytes());
                m.resize(len, 0x55);
                s.tainted = true;
                s.starts.push(s.data.len());
                s.data.extend_from_slice(&m);
                continue;
            }
            let ty = 1 + u16::from(sel % 15);
            let (w12, w14) = (id(r, &live), id(r, &live));
            // Results: mostly success (1), some failures.
            let result = if r.u8().is_multiple_of(4) { 2 } else { 1 };
            let m = msg(ty, w12, w14, result);
            let s = &mut self.streams[c][di(d)];
            let at = s.data.len();
            s.starts.push(at);
            if d == Direction::FromInside && matches!(ty, 7..=10) {
                s.create_fields.push(at + 12);
            }
            s.data.extend_from_slice(&m);
        }
    }

    /// Sends bytes `[a, b)` of a stream as one segment.
    fn send_range(&mut self, c: usize, d: Direction, a: usize, b: usize, flags: u8) {
        let (src, dst) = self.ends(c, d);
        let s = &self.streams[c][di(d)];
        let seq = s.isn.wrapping_add(1).wrapping_add(a as u32);
        let other_isn = self.streams[c][1 - di(d)].isn;
        let pkt = tcp_packet(
            src,
            dst,
            seq,
            other_isn.wrapping_add(1),
            flags,
            &s.data[a..b],
        );
        let high_before = s.high;
        let at_boundary = s.starts.binary_search(&a).is_ok();
        let check_leak = d == Direction::FromInside && !s.tainted && at_boundary;
        let fields: Vec<usize> = s
            .create_fields
            .iter()
            .copied()
            .filter(|&f| f >= a.max(high_before) && f + 2 <= b)
            .collect();
        let before = if check_leak && !fields.is_empty() {
            self.live()
        } else {
            Vec::new()
        };
        let (v, out) = self.tcp(pkt.clone(), d);
        let s = &mut self.streams[c][di(d)];
        if matches!(v, Verdict::Drop(_)) {
            return;
        }
        s.high = s.high.max(b);
        s.last_rewritten = (v == Verdict::Modified).then(|| (pkt, out.clone()));
        if fields.is_empty() || !check_leak {
            return;
        }
        let (inside, outside) = conn_ends()[c];
        let thl = usize::from(out[20 + 12] >> 4) * 4;
        let payload = &out[20 + thl..];
        let after = self.live();
        for f in fields {
            let orig =
                u16::from_be_bytes([self.streams[c][0].data[f], self.streams[c][0].data[f + 1]]);
            let sent = u16::from_be_bytes([payload[f - a], payload[f - a + 1]]);
            let owner = after
                .iter()
                .find(|x| x.outside_peer == outside.0 && x.nat_id == sent);
            if let Some(o) = owner {
                let ours = o.inside_host == inside.0
                    && o.inside_id == orig
                    && o.conn.is_some_and(|k| {
                        k.inside.port() == inside.1 && k.outside.port() == outside.1
                    });
                let existed = before.iter().any(|x| {
                    x.outside_peer == o.outside_peer
                        && x.nat_id == o.nat_id
                        && x.inside_host == o.inside_host
                        && x.inside_id == o.inside_id
                });
                assert!(
                    ours || !existed,
                    "conn {c}: call request with inside id {orig:#06x} left as {sent:#06x}, \
                     which routes {}'s GRE to {}:{:#06x}",
                    outside.0,
                    o.inside_host,
                    o.inside_id
                );
            }
        }
    }

    fn gre(&mut self, c: usize, d: Direction, r: &mut Bytes) {
        let (inside, outside) = conn_ends()[c];
        let live = self.live();
        let k = r.u8();
        let id = match k % 4 {
            0 if !live.is_empty() => live[usize::from(k / 4) % live.len()].nat_id,
            1 | 2 => IDS[usize::from(k / 4) % IDS.len()],
            _ => r.u16(),
        };
        let opt = r.u8();
        let seq = (opt & 1 != 0).then_some(7);
        let ack = (opt & 2 != 0).then_some(9);
        if d == Direction::ToInside && opt & 4 != 0 {
            return self.hairpin_gre(c, opt, k, id, seq, ack);
        }
        let pkt = match d {
            Direction::ToInside => gre_packet(outside.0, ROUTER, id, seq, ack, b"ppp"),
            Direction::FromInside => gre_packet(inside.0, outside.0, id, seq, ack, b"ppp"),
        };
        let (v, out) = self.packet(&pkt, d);
        match d {
            Direction::FromInside => assert_ne!(v, Verdict::Modified, "GRE from inside rewritten"),
            Direction::ToInside => {
                let call = live
                    .iter()
                    .find(|x| x.outside_peer == outside.0 && x.nat_id == id);
                match (v, call) {
                    (Verdict::Modified, None) => {
                        panic!("GRE from {} with unknown id {id:#06x} rewritten", outside.0)
                    }
                    (Verdict::Modified, Some(call)) => {
                        assert!(ip_header_valid(&out), "ip checksum of GRE");
                        let dst = Ipv4Addr::new(out[16], out[17], out[18], out[19]);
                        let cid = u16::from_be_bytes([out[26], out[27]]);
                        assert_eq!(
                            (dst, cid),
                            (call.inside_host, call.inside_id),
                            "GRE rewritten to another call than the one listed"
                        );
                        // Only the destination, the IP checksum and the
                        // Call ID change.
                        assert_eq!(out[..10], pkt[..10]);
                        assert_eq!(out[12..16], pkt[12..16]);
                        assert_eq!(out[20..26], pkt[20..26]);
                        assert_eq!(out[28..], pkt[28..]);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Hairpin NAT: the connection is (with `opt` bit 3; bit 4: as not hairpinned) classified as hairpinned through
    /// [`ROUTER`], as the daemon does from conntrack, and its inside host sends GRE to
    /// [`ROUTER`] (mostly with a live call's outside id). It may only be sent on, to the
    /// outside peer, for a live hairpinned call of that host with that outside id, with only
    /// the destination (and the IP checksum) changed.
    #[allow(clippy::too_many_arguments)]
    fn hairpin_gre(
        &mut self,
        c: usize,
        opt: u8,
        k: u8,
        id: u16,
        seq: Option<u32>,
        ack: Option<u32>,
    ) {
        let (inside, outside) = conn_ends()[c];
        if opt & 8 != 0 {
            let key = ConnKey {
                inside: SocketAddrV4::new(inside.0, inside.1),
                outside: SocketAddrV4::new(outside.0, outside.1),
            };
            let hp = Hairpin {
                public: ROUTER,
                masq: Ipv4Addr::new(10, 0, 0, 254),
            };
            self.alg.set_hairpin(key, (opt & 16 == 0).then_some(hp));
        }
        let live_now = self.live();
        let ids: Vec<u16> = live_now.iter().filter_map(|x| x.outside_id).collect();
        let id = match k % 4 {
            0 | 1 if !ids.is_empty() => ids[usize::from(k / 4) % ids.len()],
            _ => id,
        };
        let pkt = gre_packet(inside.0, ROUTER, id, seq, ack, b"ppp");
        let (v, out) = self.packet(&pkt, Direction::ToInside);
        if v != Verdict::Modified {
            return;
        }
        assert!(ip_header_valid(&out), "ip checksum of hairpin GRE");
        let dst = Ipv4Addr::new(out[16], out[17], out[18], out[19]);
        assert!(
            live_now.iter().any(|x| x.inside_host == inside.0
                && x.outside_id == Some(id)
                && x.hairpin.is_some_and(|h| h.public == ROUTER)
                && x.outside_peer == dst),
            "hairpin GRE from {} with id {id:#06x} sent to {dst}, for no listed call",
            inside.0
        );
        assert_eq!(out[..10], pkt[..10]);
        assert_eq!(out[12..16], pkt[12..16]);
        assert_eq!(
            out[20..],
            pkt[20..],
            "hairpin GRE: only the destination changes"
        );
    }

    fn check(&self) {
        self.alg.check_call_indexes().expect("call indexes");
        let live = self.live();
        let mut seen: Vec<(Ipv4Addr, u16)> =
            live.iter().map(|x| (x.outside_peer, x.nat_id)).collect();
        seen.sort();
        let n = seen.len();
        seen.dedup();
        assert_eq!(n, seen.len(), "a NAT id is held twice towards one peer");
    }
}

fn config(r: &mut Bytes) -> AlgConfig {
    // Small limits reach the refusal, eviction and quarantine-bound paths
    // (issue 9 items 2 and 4 were found here; see artifacts-found/).
    let max_calls = r.pick(&[1, 2, 3, 8, 64, 16384]);
    let max_connections = r.pick(&[1, 2, 5, 8192]);
    AlgConfig {
        max_calls,
        max_calls_per_host: r.pick(&[1, 2, 64]),
        max_connections,
        id_policy: if r.u8() & 1 == 0 {
            IdPolicy::Keep
        } else {
            IdPolicy::Random
        },
        seed: u64::from(r.u8()),
        call_setup_timeout: Duration::from_secs(r.pick(&[5, 60])),
        call_idle_timeout: Duration::from_secs(r.pick(&[5, 600])),
        conn_idle_timeout: Duration::from_secs(r.pick(&[5, 300])),
        conn_linger: Duration::from_secs(r.pick(&[0, 10])),
        quarantine: Duration::from_secs(r.pick(&[0, 1, 60])),
        // One node of a router pair hands out half the ids (issue 10).
        id_partition: match r.u8() % 3 {
            0 => IdPartition::None,
            1 => IdPartition::Even,
            _ => IdPartition::Odd,
        },
    }
}

fn dir(b: u8) -> Direction {
    if b & 1 == 0 {
        Direction::FromInside
    } else {
        Direction::ToInside
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes(Unstructured::new(data));
    let cfg = config(&mut r);
    let now = Instant::now();
    let mut m = Model {
        resyncs_seen: 0,
        alg: Alg::new(cfg.clone()),
        cfg,
        now,
        streams: (0..conn_ends().len()).map(|_| Default::default()).collect(),
    };
    for (c, pair) in m.streams.iter_mut().enumerate() {
        pair[0].isn = 1000 + 7919 * c as u32;
        pair[1].isn = 0xffff_ff00u32.wrapping_add(104_729 * c as u32);
    }
    let mut ops = 0;
    while !r.is_empty() && ops < 256 {
        ops += 1;
        let op = r.u8();
        let c = usize::from(r.u8()) % conn_ends().len();
        let d = dir(op >> 4);
        if trace() {
            eprintln!("op {} conn {c} {d:?} at {:?}", op % 10, m.now - now);
        }
        match op % 10 {
            // Append messages to a stream, and send them all.
            0 => {
                m.append(c, d, &mut r);
                let s = &m.streams[c][di(d)];
                let (a, b) = (s.high, s.data.len().min(s.high + MAX_SEGMENT));
                if a < b {
                    m.send_range(c, d, a, b, 0x18);
                }
            }
            // Append only (sent later, cut elsewhere).
            1 => m.append(c, d, &mut r),
            // Send a range of a stream: new bytes cut anywhere, or a
            // retransmission overlapping old ones, or a later part (out of
            // order). Mostly ACK or ACK|PSH; some FIN or RST.
            2 => {
                let back = usize::from(r.u8());
                let len = usize::from(r.u16()) % (MAX_SEGMENT + 1);
                let flags = r.pick(&[0x10, 0x18, 0x18, 0x18, 0x11, 0x14, 0x04, 0x00]);
                let s = &m.streams[c][di(d)];
                let a = if back >= 0xf0 {
                    // Out of order: beyond what was sent.
                    (s.high + (back - 0xf0) * 7).min(s.data.len())
                } else {
                    s.high.saturating_sub(back)
                };
                let b = (a + len).min(s.data.len());
                if flags & 0x05 != 0 {
                    m.forget_rewritten();
                }
                m.send_range(c, d, a, b, flags);
            }
            // Retransmit the last rewritten segment of this direction.
            3 => {
                // A stream towards the inside host picked up unconfirmed and
                // undone by the host's acknowledgement (`forged_resyncs`) is
                // picked up afresh: earlier rewrites of it are void, and its
                // old bytes are dropped as unsynced, by design.
                let resyncs = m.alg.stats().forged_resyncs;
                if resyncs != m.resyncs_seen {
                    m.resyncs_seen = resyncs;
                    m.forget_rewritten();
                }
                if let Some((pkt, out)) = m.streams[c][di(d)].last_rewritten.clone() {
                    let (v, again) = m.tcp(pkt, d);
                    assert_eq!(v, Verdict::Modified, "retransmission not rewritten");
                    assert_eq!(again, out, "retransmission rewritten differently");
                }
            }
            // Handshake: SYN from the side that opens, SYN-ACK back, with the
            // model's sequence numbers or arbitrary ones.
            4 => {
                m.forget_rewritten();
                let opener = if conn_ends()[c].0 .1 == 1723 {
                    Direction::ToInside
                } else {
                    Direction::FromInside
                };
                let other = match opener {
                    Direction::FromInside => Direction::ToInside,
                    Direction::ToInside => Direction::FromInside,
                };
                let bad = r.u8();
                let mut seq = m.streams[c][di(opener)].isn;
                if bad & 1 != 0 {
                    seq = r.u32();
                    m.streams[c][di(opener)].tainted = true;
                }
                let (src, dst) = m.ends(c, opener);
                m.tcp(tcp_packet(src, dst, seq, 0, 0x02, &[]), opener);
                if bad & 2 == 0 {
                    let mut ack = m.streams[c][di(opener)].isn.wrapping_add(1);
                    if bad & 4 != 0 {
                        ack = r.u32();
                        m.streams[c][di(opener)].tainted = true;
                    }
                    let seq = m.streams[c][di(other)].isn;
                    let (src, dst) = m.ends(c, other);
                    m.tcp(tcp_packet(src, dst, seq, ack, 0x12, &[]), other);
                }
            }
            // A segment at an arbitrary sequence number with arbitrary flags
            // and bytes (spoofed, garbage): only the per-packet invariants.
            5 => {
                m.forget_rewritten();
                let seq = r.u32();
                let flags = r.u8();
                let len = usize::from(r.u8());
                let mut payload = Vec::with_capacity(len);
                for _ in 0..len {
                    payload.push(r.u8());
                }
                // Both ways: a SYN-ACK sets where the other direction
                // starts.
                for s in &mut m.streams[c] {
                    s.tainted = true;
                }
                let (src, dst) = m.ends(c, d);
                m.tcp(tcp_packet(src, dst, seq, r.u32(), flags, &payload), d);
            }
            6 => m.gre(c, d, &mut r),
            // Clock jumps and timers.
            7 => {
                m.forget_rewritten();
                let secs = r.pick(&[0u64, 1, 2, 6, 11, 61, 301, 601, 3600]);
                m.now += Duration::from_secs(secs);
                if r.u8() & 1 == 0 {
                    m.alg.handle_timeout(m.now);
                    m.drain();
                }
            }
            // A restart: a new engine takes the saved calls back; or the
            // same engine is given its own calls again.
            8 => {
                m.forget_rewritten();
                let saved = m.alg.saved_calls();
                if op & 0x10 == 0 {
                    let mut fresh = Alg::new(m.cfg.clone());
                    let n = fresh.restore_calls(m.now, &saved);
                    assert_eq!(n, saved.len(), "a restart lost calls");
                    m.alg = fresh;
                    // The new engine counts from zero.
                    m.resyncs_seen = 0;
                    m.drain();
                } else {
                    assert_eq!(m.alg.restore_calls(m.now, &saved), 0);
                    m.drain();
                }
            }
            // Arbitrary bytes as a packet.
            _ => {
                m.forget_rewritten();
                let len = usize::from(r.u8());
                let mut pkt = Vec::with_capacity(len);
                for _ in 0..len {
                    pkt.push(r.u8());
                }
                m.packet(&pkt, d);
                for s in &mut m.streams[c] {
                    s.tainted = true;
                }
            }
        }
        m.check();
        if trace() {
            eprintln!("  stats {:?}", m.alg.stats());
        }
    }
});

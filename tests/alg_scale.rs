//! Many calls on one control connection: the per-connection call indexes
//! (inside id, outside id) agree with a brute-force scan of the
//! connection's calls after any sequence of control messages, teardowns,
//! timeouts, reused tuples, refused segments and restores; the lookups
//! that a scan used to answer keep their meaning when ids repeat; and two
//! crashes these sequences found (a refused segment that ended a call it
//! created, Stop-Control-Connection with a full quarantine) stay fixed.

mod common;
use common::*;
use pptp_alg::alg::{Alg, AlgConfig, Direction, EndCause, Event, SavedCall, Verdict};
use proptest::prelude::*;
use std::net::Ipv4Addr;
use std::time::Duration;

use Direction::{FromInside as OUT, ToInside as IN};

/// The inside ids of the calls announced as ended, in order.
fn ended_inside_ids(sim: &Sim) -> Vec<u16> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            Event::CallEnded(c, _) => Some(c.inside_id),
            _ => None,
        })
        .collect()
}

/// Fails the test if an indexed lookup disagrees with a scan.
fn check(sim: &Sim) {
    if let Err(e) = sim.alg.check_call_indexes() {
        panic!("call indexes disagree with a scan: {e}");
    }
}

/// A refused segment that created a call and ended it again before the
/// refusal: nothing of the segment left, so the call is unmade like the
/// live ones, with both its events (announcing its end without its start
/// left a fast-path element behind for good). Rolling it back as if live
/// used to corrupt the counts and the quarantine queue.
#[test]
fn refused_segment_that_ended_its_own_new_call() {
    let cfg = AlgConfig {
        max_calls_per_host: 2,
        quarantine: Duration::from_secs(5),
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    let seg = [ocrq(1), cdn(1), ocrq(2), ocrq(3)].concat();
    assert_eq!(
        sim.send(&mut c, OUT, &seg).0,
        Verdict::Drop(pptp_alg::alg::DropReason::CallRefused)
    );
    check(&sim);
    let st = sim.alg.stats();
    assert_eq!(st.calls_active, 0, "call 2 is rolled back");
    assert_eq!(sim.alg.quarantined(), 0, "call 1 is rolled back");
    assert_eq!((st.calls_created, st.ended.iter().sum::<u64>()), (0, 0));
    assert!(
        sim.events
            .iter()
            .all(|e| matches!(e, Event::CallRefused { .. })),
        "{:?}",
        sim.events
    );
    // The retransmission: call 1 starts and ends, in that order, call 2
    // starts; their ids are their own (nothing holds them).
    let (v, out) = sim.send(&mut c, OUT, &[ocrq(1), cdn(1), ocrq(2)].concat());
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Accept, 0x0001));
    assert_eq!(lifecycle(&sim), [("start", 1), ("end", 1), ("start", 2)]);
    check(&sim);
    sim.advance(Duration::from_secs(6));
    assert_eq!(sim.alg.quarantined(), 0, "the quarantine still expires");
    assert_eq!(sim.alg.stats().calls_active, 1);
    check(&sim);
}

/// Stop-Control-Connection with the quarantine full: ending the first call
/// releases the oldest ended call, which is a later call of the same
/// connection. Ending the connection's calls used to walk into that
/// released call (a panic, in release builds too).
#[test]
fn stop_control_with_a_full_quarantine() {
    let cfg = AlgConfig {
        max_calls: 2,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    sim.send(&mut c, OUT, &ocrq(1));
    for id in [2, 3] {
        sim.send(&mut c, OUT, &ocrq(id));
        sim.send(&mut c, OUT, &cdn(id));
    }
    assert_eq!(sim.alg.quarantined(), 2);
    sim.send(&mut c, OUT, &simple(STOPRQ));
    assert_eq!(ended_inside_ids(&sim), [2, 3, 1]);
    assert_eq!(sim.alg.stats().ended_by(EndCause::StopControl), 1);
    assert_eq!(sim.alg.quarantined(), 2);
    check(&sim);
}

/// A peer that gives two live calls of one connection the same id of its
/// own: a Call-Disconnect-Notify with that id ends the newest of them (by
/// creation, not by which reply came last), then the other.
#[test]
fn a_peer_id_shared_by_two_live_calls_ends_the_newest_first() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    sim.send(&mut c, OUT, &ocrq(0x0100));
    sim.send(&mut c, OUT, &ocrq(0x0101));
    // Replies in reverse order, both with the server's id 0x0077.
    sim.send(&mut c, IN, &ocrp(0x0077, 0x0101, 1));
    sim.send(&mut c, IN, &ocrp(0x0077, 0x0100, 1));
    check(&sim);
    sim.send(&mut c, IN, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim), [0x0101]);
    check(&sim);
    sim.send(&mut c, IN, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim), [0x0101, 0x0100]);
    sim.send(&mut c, IN, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim).len(), 2);
    check(&sim);
    // Once no live call shares it, the id is found without a scan again.
    sim.send(&mut c, OUT, &ocrq(0x0102));
    sim.send(&mut c, IN, &ocrp(0x0077, 0x0102, 1));
    sim.send(&mut c, OUT, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim), [0x0101, 0x0100, 0x0102]);
    check(&sim);
}

/// Two control connections between the same two hosts: a peer's id names
/// a call of the connection it arrives on only.
#[test]
fn a_peer_id_names_calls_of_its_own_connection_only() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut a = Conn::client_inside(host(1), 40000, SERVER);
    let mut b = Conn::client_inside(host(1), 40001, SERVER);
    sim.start_control(&mut a);
    sim.start_control(&mut b);
    sim.send(&mut a, OUT, &ocrq(0x0100));
    sim.send(&mut a, IN, &ocrp(0x0077, 0x0100, 1));
    // Only a's call has 0x0077: b's notify ends nothing.
    sim.send(&mut b, IN, &cdn(0x0077));
    assert!(ended_inside_ids(&sim).is_empty());
    // Both have it: each connection's notify ends its own call.
    sim.send(&mut b, OUT, &ocrq(0x0200));
    sim.send(&mut b, IN, &ocrp(0x0077, 0x0200, 1));
    check(&sim);
    sim.send(&mut b, IN, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim), [0x0200]);
    sim.send(&mut a, IN, &cdn(0x0077));
    assert_eq!(ended_inside_ids(&sim), [0x0200, 0x0100]);
    check(&sim);
}

/// 10,000 calls on one connection (40 high bytes of 250 ids), set up,
/// cleared by the server with its own ids (the lookup by outside id), and
/// expired from quarantine; late messages of ended calls still translate.
#[test]
fn ten_thousand_calls_on_one_connection() {
    const N: u16 = 10_000;
    let cfg = AlgConfig {
        max_calls_per_host: usize::from(N),
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    let id = |k: u16| ((k / 250) << 8) | (k % 250);
    for k in 0..N {
        assert_eq!(sim.send(&mut c, OUT, &ocrq(id(k))).0, Verdict::Accept);
        let (v, out) = sim.send(&mut c, IN, &ocrp(0x8000 | k, id(k), 1));
        assert_eq!((v, u16_at(&out, 14)), (Verdict::Accept, id(k)));
    }
    sim.events.clear();
    assert_eq!(sim.alg.stats().calls_active, u64::from(N));
    check(&sim);
    for k in 0..N {
        sim.send(&mut c, IN, &cdn(0x8000 | k));
    }
    assert_eq!(sim.alg.stats().ended_by(EndCause::Disconnect), u64::from(N));
    assert_eq!(sim.alg.quarantined(), usize::from(N));
    check(&sim);
    // A late clear-request of an ended call still carries its NAT id.
    let (_, out) = sim.send(&mut c, OUT, &ccrq(id(1234)));
    assert_eq!(u16_at(&out, 12), id(1234));
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.alg.quarantined(), 0);
    check(&sim);
}

/// One control message for the random sequences: a type and two ids from
/// small pools, so that ids repeat across calls, connections and roles.
#[derive(Debug, Clone)]
struct Msg {
    ty: u16,
    a: u16,
    b: u16,
    ok: bool,
}

impl Msg {
    fn bytes(&self) -> Vec<u8> {
        let result = if self.ok { 1 } else { 2 };
        match self.ty {
            OCRQ => ocrq(self.a),
            OCRP => ocrp(self.a, self.b, result),
            ICRQ => icrq(self.a),
            ICRP => icrp(self.a, self.b, result),
            ICCN => iccn(self.a),
            CCRQ => ccrq(self.a),
            CDN => cdn(self.a),
            SLI => sli(self.a),
            WEN => wen(self.a),
            ty => simple(ty),
        }
    }
}

/// One step of the random sequences.
#[derive(Debug, Clone)]
enum Op {
    /// Messages coalesced into one segment of connection `conn`.
    Segment {
        conn: usize,
        inside: bool,
        msgs: Vec<Msg>,
    },
    Fin(usize, bool),
    Rst(usize, bool),
    /// The connection closes and its tuple is reused by a new one (new
    /// sequence numbers).
    Reopen(usize),
    Advance(u64),
    Snapshot,
    RestoreSnapshot,
    /// A new engine restoring the current engine's saved calls.
    Restart,
}

const IDS: [u16; 8] = [
    0x0010, 0x0011, 0x0100, 0x0101, 0x0102, 0x0103, 0x0200, 0x0201,
];

fn msg_strategy() -> impl Strategy<Value = Msg> {
    let ty = prop_oneof![
        4 => Just(OCRQ),
        4 => Just(OCRP),
        2 => Just(ICRQ),
        2 => Just(ICRP),
        1 => Just(ICCN),
        2 => Just(CCRQ),
        4 => Just(CDN),
        1 => Just(SLI),
        1 => Just(WEN),
        1 => Just(STOPRQ),
        1 => Just(ECHORQ),
    ];
    (ty, 0..IDS.len(), 0..IDS.len(), prop::bool::weighted(0.85)).prop_map(|(ty, a, b, ok)| Msg {
        ty,
        a: IDS[a],
        b: IDS[b],
        ok,
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => (0..3usize, any::<bool>(), prop::collection::vec(msg_strategy(), 1..4))
            .prop_map(|(conn, inside, msgs)| Op::Segment { conn, inside, msgs }),
        2 => (0..3usize, any::<bool>()).prop_map(|(c, i)| Op::Fin(c, i)),
        1 => (0..3usize, any::<bool>()).prop_map(|(c, i)| Op::Rst(c, i)),
        3 => (0..3usize).prop_map(Op::Reopen),
        8 => (0..9u64).prop_map(Op::Advance),
        1 => Just(Op::Snapshot),
        1 => Just(Op::RestoreSnapshot),
        1 => Just(Op::Restart),
    ]
}

fn small_config() -> AlgConfig {
    AlgConfig {
        max_calls: 10,
        max_calls_per_host: 5,
        max_connections: 4,
        call_setup_timeout: Duration::from_secs(10),
        call_idle_timeout: Duration::from_secs(15),
        conn_idle_timeout: Duration::from_secs(25),
        conn_linger: Duration::from_secs(3),
        quarantine: Duration::from_secs(6),
        ..AlgConfig::default()
    }
}

fn di(inside: bool) -> (Direction, usize) {
    if inside {
        (OUT, 0)
    } else {
        (IN, 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]
    /// Connections 0 and 1 join the same two hosts (a client inside),
    /// connection 2 has a server inside. After every step the indexed
    /// lookups give what a scan of each connection's calls gives, and the
    /// counters stay consistent.
    #[test]
    fn indexes_agree_with_a_scan(ops in prop::collection::vec(op_strategy(), 1..80)) {
        let cfg = small_config();
        let mut sim = Sim::new(cfg.clone());
        let mut conns = [
            Conn::client_inside(host(1), 40000, SERVER),
            Conn::client_inside(host(1), 40001, SERVER),
            Conn::server_inside(host(2), Ipv4Addr::new(192, 0, 2, 7), 40002),
        ];
        for c in &mut conns {
            sim.start_control(c);
        }
        let mut snapshot: Vec<SavedCall> = Vec::new();
        for op in &ops {
            match op {
                Op::Segment { conn, inside, msgs } => {
                    let bytes: Vec<u8> = msgs.iter().flat_map(Msg::bytes).collect();
                    let (v, _) = sim.send(&mut conns[*conn], di(*inside).0, &bytes);
                    prop_assert!(matches!(v, Verdict::Accept | Verdict::Modified | Verdict::Drop(_)));
                }
                Op::Fin(conn, inside) | Op::Rst(conn, inside) => {
                    let (d, i) = di(*inside);
                    let c = conns[*conn];
                    let fin = matches!(op, Op::Fin(..));
                    let ack = Some(c.seq[1 - i]);
                    let flags = Flags { fin, rst: !fin, ack, ..Default::default() };
                    sim.send_at(&c, d, c.seq[i], flags, &[]);
                }
                Op::Reopen(conn) => {
                    // The old connection ends (at its position: a SYN alone
                    // ends nothing), then the tuple carries a new one.
                    let c = &mut conns[*conn];
                    let fin = |ack| Flags { fin: true, ack: Some(ack), ..Default::default() };
                    sim.send_at(c, OUT, c.seq[0], fin(c.seq[1]), &[]);
                    sim.send_at(c, IN, c.seq[1], fin(c.seq[0]), &[]);
                    c.seq = [c.seq[0].wrapping_add(100_000), c.seq[1].wrapping_add(100_000)];
                    sim.start_control(c);
                }
                Op::Advance(s) => sim.advance(Duration::from_secs(*s)),
                Op::Snapshot => snapshot = sim.alg.saved_calls(),
                Op::RestoreSnapshot => {
                    sim.alg.restore_calls(sim.now, &snapshot);
                    sim.drain();
                }
                Op::Restart => {
                    let saved = sim.alg.saved_calls();
                    sim.alg = Alg::new(cfg.clone());
                    prop_assert_eq!(sim.alg.restore_calls(sim.now, &saved), saved.len());
                    sim.drain();
                }
            }
            let r = sim.alg.check_call_indexes();
            prop_assert!(r.is_ok(), "{:?} after {:?}", r, op);
            let st = sim.alg.stats();
            prop_assert_eq!(st.calls_created, st.ended.iter().sum::<u64>() + st.calls_active, "after {:?}", op);
        }
    }
}

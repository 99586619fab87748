//! The NAT id partition of a router pair (issue 10): two engines
//! configured as the two nodes never hand out one (peer, NAT id) to two
//! calls however they are driven, even both active at once (split brain),
//! and calls replicated in from the other node keep their ids and their
//! GRE translation.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, Event, IdPartition, SavedCall, Verdict};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use Direction::{FromInside as OUT, ToInside as IN};

fn node(part: IdPartition) -> Sim {
    Sim::new(AlgConfig {
        id_partition: part,
        ..AlgConfig::default()
    })
}

/// The NAT ids of the calls `sim` created (not restored) since `from`.
fn started(sim: &Sim, from: usize) -> Vec<(Ipv4Addr, u16)> {
    sim.events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::CallStarted(c) => Some((c.outside_peer, c.nat_id)),
            _ => None,
        })
        .collect()
}

/// Every call either engine holds, live or in quarantine, by (peer, NAT
/// id): two different calls (connection and inside id) on one key fail.
fn check_unique(nodes: &[&Sim]) -> Result<(), String> {
    let mut seen: HashMap<(Ipv4Addr, u16), (pptp_alg::alg::ConnKey, u16)> = HashMap::new();
    for sim in nodes {
        for c in sim.alg.saved_calls() {
            let key = (*c.conn.outside.ip(), c.nat_id);
            let who = (c.conn, c.inside_id);
            if let Some(prev) = seen.insert(key, who) {
                if prev != who {
                    return Err(format!("{key:?} held by {prev:?} and {who:?}"));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    /// An inside host asks for a call through node `n` on connection `c`.
    Call { n: usize, c: usize, id: u16 },
    /// The inside host clears its call.
    Clear { n: usize, c: usize, id: u16 },
    /// Node `n`'s calls are replicated into the other node.
    Replicate { n: usize },
}

fn op() -> impl Strategy<Value = Op> {
    // Few inside ids sharing high bytes, so that connections map the same
    // high bytes and blocks fill.
    let id = prop_oneof![0x4000u16..0x4008, 0x4100u16..0x4104, Just(0x0001u16)];
    prop_oneof![
        6 => (0..2usize, 0..4usize, id.clone()).prop_map(|(n, c, id)| Op::Call { n, c, id }),
        2 => (0..2usize, 0..4usize, id).prop_map(|(n, c, id)| Op::Clear { n, c, id }),
        2 => (0..2usize).prop_map(|n| Op::Replicate { n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Both nodes active at once, with calls replicated either way at any
    /// moment: every id a node hands out is in its half, and no (peer, NAT
    /// id) is ever held by two different calls across the pair.
    #[test]
    fn a_pair_never_gives_one_id_to_two_calls(ops in prop::collection::vec(op(), 1..80)) {
        let mut sims = [node(IdPartition::Even), node(IdPartition::Odd)];
        let parts = [IdPartition::Even, IdPartition::Odd];
        // Three inside clients with the same Call IDs, and a fourth host,
        // all to one server: both routers saw every connection open.
        let mut conns: [Vec<Conn>; 2] = [vec![], vec![]];
        for (n, sim) in sims.iter_mut().enumerate() {
            for h in 1..=4u8 {
                let mut c = Conn::client_inside(host(h), 40000 + u16::from(h), SERVER);
                sim.start_control(&mut c);
                conns[n].push(c);
            }
        }
        for op in ops {
            match op {
                Op::Call { n, c, id } => {
                    let from = sims[n].events.len();
                    let (v, _) = sims[n].send(&mut conns[n][c], OUT, &ocrq(id));
                    prop_assert!(matches!(v, Verdict::Modified | Verdict::Accept | Verdict::Drop(_)));
                    for (peer, nat) in started(&sims[n], from) {
                        prop_assert!(parts[n].owns(nat), "node {n} gave {peer} {nat:#06x}");
                    }
                }
                Op::Clear { n, c, id } => {
                    sims[n].send(&mut conns[n][c], OUT, &ccrq(id));
                    sims[n].send(&mut conns[n][c], OUT, &cdn(id));
                }
                Op::Replicate { n } => {
                    let saved = sims[n].alg.saved_calls();
                    let now = sims[1 - n].now;
                    sims[1 - n].alg.restore_calls(now, &saved);
                    sims[1 - n].drain();
                }
            }
            check_unique(&[&sims[0], &sims[1]]).map_err(TestCaseError::fail)?;
        }
    }
}

/// A failover: node 0 set the calls up, node 1 never saw the connections
/// and gets the calls replicated in. It keeps their NAT ids, delivers their
/// GRE to the right hosts, and gives a new call on an old connection (same
/// inside high byte, so the same block) an id of its own half.
#[test]
fn replicated_calls_keep_their_ids_on_the_other_node() {
    let mut a = node(IdPartition::Even);
    let mut b = node(IdPartition::Odd);
    let mut conns = vec![];
    let mut nat = vec![];
    for h in 1..=3u8 {
        let mut c = Conn::client_inside(host(h), 40000 + u16::from(h), SERVER);
        a.start_control(&mut c);
        let (v, out) = a.send(&mut c, OUT, &ocrq(0x4000));
        assert!(!matches!(v, Verdict::Drop(_)));
        let id = u16_at(&out, 12);
        assert!(IdPartition::Even.owns(id), "{id:#06x}");
        let (v, out) = a.send(&mut c, IN, &ocrp(0x0700 + u16::from(h), id, 1));
        assert!(!matches!(v, Verdict::Drop(_)));
        assert_eq!(u16_at(&out, 14), 0x4000);
        nat.push(id);
        conns.push(c);
    }
    assert_eq!(
        nat,
        [0x4000, 0x4100, 0x4200],
        "three hosts with one Call ID"
    );

    let saved: Vec<SavedCall> = a.alg.saved_calls();
    assert_eq!(b.alg.restore_calls(b.now, &saved), 3);
    b.drain();
    let mut kept: Vec<(Ipv4Addr, u16, u16)> = b
        .alg
        .calls(b.now)
        .iter()
        .map(|c| (c.inside_host, c.inside_id, c.nat_id))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            (host(1), 0x4000, 0x4000),
            (host(2), 0x4000, 0x4100),
            (host(3), 0x4000, 0x4200)
        ]
    );
    // The server's GRE for each old call reaches its host on node 1.
    for (i, &id) in nat.iter().enumerate() {
        let (v, out) = b.gre_in(SERVER, id, b"ppp");
        assert_eq!(v, Verdict::Modified);
        assert_eq!(gre_dst_and_id(&out), (host(i as u8 + 1), 0x4000));
    }
    // Host 2 places a second call with the same high byte through node 1
    // (the connection is tracked again from this message's header): it
    // shares block 0x41 with the replicated call, in node 1's half.
    let mut on_b = conns[1];
    let (v, out) = b.send(&mut on_b, OUT, &ocrq(0x4000 + 2));
    assert_eq!(v, Verdict::Modified);
    assert_eq!(u16_at(&out, 12), 0x4103);
    // Node 0, still active (split brain), gives host 2 another call: its
    // own half of the same block (inside id 0x4003 keeps no odd slot),
    // never node 1's 0x4103.
    let (v, out) = a.send(&mut conns[1], OUT, &ocrq(0x4000 + 3));
    assert_eq!(v, Verdict::Modified);
    assert_eq!(u16_at(&out, 12), 0x4104);
    check_unique(&[&a, &b]).unwrap();
}

/// Without a partition (the default) the ids are those of a single router:
/// the inside id's low byte is kept whatever its parity.
#[test]
fn no_partition_keeps_odd_and_even_ids() {
    let mut a = node(IdPartition::None);
    let mut c = Conn::client_inside(host(1), 40001, SERVER);
    a.start_control(&mut c);
    for id in [0x4001u16, 0x4002] {
        let (_, out) = a.send(&mut c, OUT, &ocrq(id));
        assert_eq!(u16_at(&out, 12), id);
    }
}

/// Items 1 to 3 together: node 0's engine events become records, cross
/// the replication protocol, and node 1's engine applies them
/// (`apply_replicated`: started calls are restored, as after a restart):
/// their GRE reaches the right hosts on node 1, their answers and ends
/// follow.
#[test]
fn engine_events_replicate_into_the_other_engine() {
    use pptp_alg::alg::{CallState, EndCause};
    use pptp_alg::replication::{Key, Record, Replica, ReplicaConfig, ReplicaEvent, Role};

    let key = Key::new(b"pair key, sixteen bytes at least").unwrap();
    let mut a = node(IdPartition::Even);
    let mut b = node(IdPartition::Odd);
    let t = a.now;
    let mut ra = Replica::new(ReplicaConfig::new(0, Role::Active, key.clone(), 1), t);
    let mut rb = Replica::new(ReplicaConfig::new(1, Role::Backup, key, 2), t);
    let quarantine = a.alg.config().quarantine;
    // Node 0's new events through the protocol into node 1's engine;
    // returns how many records node 1 applied.
    let mut sent = 0;
    let mut sync = |a: &mut Sim, b: &mut Sim, ra: &mut Replica, rb: &mut Replica| {
        for e in &a.events[sent..] {
            if let Some(r) = Record::from_event(e, quarantine) {
                ra.record(t, r);
            }
        }
        sent = a.events.len();
        for _ in 0..4 {
            while let Some(m) = ra.poll_transmit() {
                rb.handle(t, &m).unwrap();
            }
            while let Some(m) = rb.poll_transmit() {
                ra.handle(t, &m).unwrap();
            }
        }
        let mut n = 0;
        while let Some(e) = rb.poll_event() {
            if let ReplicaEvent::Apply(r) = e {
                assert!(b.alg.apply_replicated(b.now, r.call()), "{r:?}");
                n += 1;
            }
        }
        b.drain();
        n
    };
    assert_eq!(sync(&mut a, &mut b, &mut ra, &mut rb), 0);
    assert!(ra.in_sync() && rb.in_sync());

    let mut conns = vec![];
    let mut nat = vec![];
    for h in 1..=3u8 {
        let mut c = Conn::client_inside(host(h), 40000 + u16::from(h), SERVER);
        a.start_control(&mut c);
        let (_, out) = a.send(&mut c, OUT, &ocrq(0x4000));
        nat.push(u16_at(&out, 12));
        conns.push(c);
    }
    assert_eq!(sync(&mut a, &mut b, &mut ra, &mut rb), 3);
    for (i, &id) in nat.iter().enumerate() {
        let (v, out) = b.gre_in(SERVER, id, b"ppp");
        assert_eq!(v, Verdict::Modified);
        assert_eq!(gre_dst_and_id(&out), (host(i as u8 + 1), 0x4000));
    }
    // The server answers call 1 and 2 through node 0; host 3 clears.
    for i in 0..2 {
        a.send(&mut conns[i], IN, &ocrp(0x0700 + i as u16, nat[i], 1));
    }
    a.send(&mut conns[2], OUT, &cdn(0x4000));
    assert_eq!(sync(&mut a, &mut b, &mut ra, &mut rb), 3);
    let calls = b.alg.calls(b.now);
    let state = |id: u16| {
        calls
            .iter()
            .find(|c| c.nat_id == id)
            .map(|c| (c.state, c.outside_id))
    };
    assert_eq!(state(nat[0]), Some((CallState::Established, Some(0x0700))));
    assert_eq!(state(nat[1]), Some((CallState::Established, Some(0x0701))));
    assert_eq!(state(nat[2]), None);
    assert!(b.events.iter().any(|e| matches!(
        e,
        Event::CallEnded(c, EndCause::Peer) if c.nat_id == nat[2]
    )));
    assert_eq!(b.alg.stats().ended_by(EndCause::Peer), 1);
    let (v, _) = b.gre_in(SERVER, nat[2], b"ppp");
    assert_eq!(v, Verdict::UnknownCall);
    // Applying the same record again changes nothing.
    let again = b.alg.saved_calls();
    assert!(again.iter().all(|c| !b.alg.apply_replicated(b.now, c)));
}

/// The backup sees none of the active node's packets: without a refresh
/// its copy of a replicated call ends at the idle timeouts (and with it
/// the call's fast path there); refreshed, as the daemon does while the
/// peer holds the call, it stays up and keeps translating.
#[test]
fn refreshed_replicated_calls_outlive_the_idle_timeouts() {
    let mut a = node(IdPartition::Even);
    let mut c = Conn::client_inside(host(1), 40001, SERVER);
    a.start_control(&mut c);
    let (_, out) = a.send(&mut c, OUT, &ocrq(0x4000));
    let id = u16_at(&out, 12);
    a.send(&mut c, IN, &ocrp(0x0701, id, 1));
    let saved = a.alg.saved_calls();
    assert_eq!(saved.len(), 1);

    let mut refreshed = node(IdPartition::Odd);
    let mut left = node(IdPartition::Odd);
    for b in [&mut refreshed, &mut left] {
        assert!(b.alg.apply_replicated(b.now, &saved[0]));
        b.drain();
    }
    // Past both idle timeouts (conn 300 s, call 600 s), a sweep a second.
    for _ in 0..700 {
        for b in [&mut refreshed, &mut left] {
            b.advance(std::time::Duration::from_secs(1));
        }
        let now = refreshed.now;
        assert!(refreshed.alg.refresh_replicated(now, &saved[0]));
    }
    assert_eq!(refreshed.alg.calls(refreshed.now).len(), 1);
    let (v, out) = refreshed.gre_in(SERVER, id, b"ppp");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&out), (host(1), 0x4000));
    assert!(left.alg.calls(left.now).is_empty(), "timed out unrefreshed");
    assert!(
        !left.alg.refresh_replicated(left.now, &saved[0]),
        "an ended call is not live"
    );
}

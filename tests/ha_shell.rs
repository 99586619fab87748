//! The daemon's high-availability shell ([`Ha`], issue 10) over real UDP
//! sockets on loopback, without root: two nodes, each an engine driven by
//! crafted packets and an `Ha` driven as the packet thread drives it. A
//! call made on node 0 appears in node 1's engine with the same NAT id and
//! its GRE is translated there; a call made on node 1 (after a failover)
//! appears on node 0 (failback); an end follows; a node with another key
//! is refused and counted.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, CallState, Direction, EndCause, Event, IdPartition, Verdict};
use pptp_alg::daemon::ha::Ha;
use pptp_alg::daemon::HaSettings;
use pptp_alg::replication::Role;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use Direction::{FromInside as OUT, ToInside as IN};

const KEY: &[u8] = b"the pair's key, 16 bytes or more";

/// A node: its engine, its shell, and how many of its events went to the shell.
struct Node {
    sim: Sim,
    ha: Ha,
    recorded: usize,
}

fn free_port() -> SocketAddrV4 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    match s.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    }
}

fn node(n: u8, listen: SocketAddrV4, peer: SocketAddrV4, key: &[u8]) -> Node {
    node_at(n, listen, peer, key, None)
}

/// A node whose role follows `address` (active while this host has it).
fn node_at(
    n: u8,
    listen: SocketAddrV4,
    peer: SocketAddrV4,
    key: &[u8],
    address: Option<std::net::Ipv4Addr>,
) -> Node {
    let sim = Sim::new(AlgConfig {
        id_partition: if n == 0 {
            IdPartition::Even
        } else {
            IdPartition::Odd
        },
        ..AlgConfig::default()
    });
    let s = HaSettings {
        node: n,
        listen,
        peer,
        key: key.to_vec(),
        address,
    };
    let ha = Ha::start(&s, &sim.alg, 100 + u64::from(n), Instant::now()).unwrap();
    Node {
        sim,
        ha,
        recorded: 0,
    }
}

impl Node {
    /// One turn of the packet thread's loop for the pair.
    fn step(&mut self) {
        let now = Instant::now();
        // This node's own events since the last turn; those of applying the
        // peer's calls (below) are never sent back.
        for e in &self.sim.events[self.recorded..] {
            self.ha.record(now, e);
        }
        self.ha.handle_timeout(now);
        self.ha.receive(now);
        while let Some(c) = self.ha.poll_apply() {
            self.sim.alg.apply_replicated(self.sim.now, &c);
        }
        self.sim.drain();
        self.recorded = self.sim.events.len();
        self.ha.transmit(now);
    }
}

/// Runs both nodes until `done` or 3 s.
fn pump(a: &mut Node, b: &mut Node, done: impl Fn(&Node, &Node) -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        a.step();
        b.step();
        if done(a, b) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn nat_ids(n: &Node) -> Vec<(std::net::Ipv4Addr, u16, u16, CallState)> {
    let mut v: Vec<_> = n
        .sim
        .alg
        .calls(n.sim.now)
        .iter()
        .map(|c| (c.inside_host, c.inside_id, c.nat_id, c.state))
        .collect();
    v.sort_by_key(|c| (c.0, c.1, c.2));
    v
}

#[test]
fn calls_cross_the_pair_both_ways_and_a_wrong_key_is_refused() {
    let (pa, pb) = (free_port(), free_port());
    let mut a = node(0, pa, pb, KEY);
    let mut b = node(1, pb, pa, KEY);
    assert!(
        pump(&mut a, &mut b, |a, b| a.ha.report(Instant::now()).in_sync
            && b.ha.report(Instant::now()).in_sync),
        "the nodes greet and sync"
    );
    let rb = b.ha.report(Instant::now());
    assert_eq!(
        (rb.node, rb.role),
        (1, Role::Active),
        "no ha_address: active"
    );
    assert_eq!((rb.peer.node, rb.peer.role), (Some(0), Some(Role::Active)));
    assert!(rb.peer.alive);

    // A call through node 0, answered.
    let mut c = Conn::client_inside(host(1), 40001, SERVER);
    a.sim.start_control(&mut c);
    let (_, out) = a.sim.send(&mut c, OUT, &ocrq(0x4000));
    let id = u16_at(&out, 12);
    assert!(IdPartition::Even.owns(id));
    a.sim.send(&mut c, IN, &ocrp(0x0701, id, 1));
    let want = vec![(host(1), 0x4000, id, CallState::Established)];
    assert!(
        pump(&mut a, &mut b, |_, b| nat_ids(b) == want),
        "node 1 holds node 0's call: {:?}",
        nat_ids(&b)
    );
    // Node 1 translates the call's GRE (hot standby).
    let (v, gre) = b.sim.gre_in(SERVER, id, b"ppp");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&gre), (host(1), 0x4000));
    assert!(a.ha.report(Instant::now()).records_sent >= 2);
    assert!(b.ha.report(Instant::now()).records_received >= 2);
    assert_eq!(b.ha.report(Instant::now()).peer_calls, 1);

    // Failover: host 2 calls through node 1; node 0 learns it (failback).
    let mut c2 = Conn::client_inside(host(2), 40002, SERVER);
    b.sim.start_control(&mut c2);
    let (_, out) = b.sim.send(&mut c2, OUT, &ocrq(0x4000));
    let id2 = u16_at(&out, 12);
    assert!(IdPartition::Odd.owns(id2) && id2 != id);
    assert!(
        pump(&mut a, &mut b, |a, _| nat_ids(a).iter().any(|c| c.2 == id2)),
        "node 0 holds node 1's call: {:?}",
        nat_ids(&a)
    );
    // Node 0 ends its call: node 1's copy ends too, by the peer.
    a.sim.send(&mut c, OUT, &ccrq(0x4000));
    a.sim.send(&mut c, IN, &cdn(0x0701));
    assert!(
        pump(&mut a, &mut b, |_, b| !nat_ids(b).iter().any(|c| c.2 == id)),
        "node 1 ended node 0's call: {:?}",
        nat_ids(&b)
    );
    assert!(b
        .sim
        .events
        .iter()
        .any(|e| matches!(e, Event::CallEnded(c, EndCause::Peer) if c.nat_id == id)));
    let (v, _) = b.sim.gre_in(SERVER, id, b"late");
    assert_eq!(v, Verdict::UnknownCall, "its GRE is no longer translated");

    // Node 0 comes back with another key: node 1 refuses every message
    // and counts them, and holds nothing new from it.
    drop(a);
    let before = b.ha.report(Instant::now());
    let mut bad = node(0, pa, pb, b"another key, also long enough");
    let mut c3 = Conn::client_inside(host(3), 40003, SERVER);
    bad.sim.start_control(&mut c3);
    bad.sim.send(&mut c3, OUT, &ocrq(0x4000));
    pump(&mut bad, &mut b, |_, b| {
        b.ha.report(Instant::now()).auth_failures >= 3
    });
    let after = b.ha.report(Instant::now());
    assert!(after.auth_failures >= 3, "{after:?}");
    assert_eq!(after.records_received, before.records_received);
    assert!(!nat_ids(&b).iter().any(|c| c.0 == host(3)));
    assert!(
        bad.ha.report(Instant::now()).auth_failures >= 1,
        "and the other way"
    );
}

/// With `ha_address`, the backup (which sees none of the calls' packets)
/// keeps the active node's calls past every idle timeout and never tells
/// of a timeout; the active node's own timeout of a call ends it on the
/// backup too. Roles follow the address: 127.0.0.1 is this host's,
/// 192.0.2.99 (TEST-NET-1) is not.
#[test]
fn the_active_node_times_calls_out_and_the_backup_keeps_them() {
    let (pa, pb) = (free_port(), free_port());
    let mut a = node_at(0, pa, pb, KEY, Some("127.0.0.1".parse().unwrap()));
    let mut b = node_at(1, pb, pa, KEY, Some("192.0.2.99".parse().unwrap()));
    assert!(pump(&mut a, &mut b, |a, b| {
        let (ra, rb) = (a.ha.report(Instant::now()), b.ha.report(Instant::now()));
        ra.in_sync && rb.in_sync && rb.peer.role == Some(Role::Active)
    }));
    assert_eq!(a.ha.role(), Role::Active);
    assert_eq!(b.ha.role(), Role::Backup);

    let mut c = Conn::client_inside(host(1), 40001, SERVER);
    a.sim.start_control(&mut c);
    let (_, out) = a.sim.send(&mut c, OUT, &ocrq(0x4000));
    let id = u16_at(&out, 12);
    a.sim.send(&mut c, IN, &ocrp(0x0701, id, 1));
    assert!(pump(&mut a, &mut b, |_, b| nat_ids(b).len() == 1));
    // A call the backup made (before a failback, say), which the active
    // node now carries.
    let mut c2 = Conn::client_inside(host(2), 40002, SERVER);
    b.sim.start_control(&mut c2);
    let (_, out) = b.sim.send(&mut c2, OUT, &ocrq(0x4000));
    let id2 = u16_at(&out, 12);
    b.sim.send(&mut c2, IN, &ocrp(0x0702, id2, 1));
    assert!(pump(&mut a, &mut b, |a, _| nat_ids(a).len() == 2));

    // 700 s on the backup's clock: past the connection's (300 s) and the
    // call's (600 s) idle timeouts.
    for _ in 0..70 {
        b.ha.refresh(b.sim.now, &mut b.sim.alg);
        b.sim.advance(Duration::from_secs(10));
        b.step();
    }
    assert_eq!(nat_ids(&b).len(), 2, "the backup keeps both calls");
    assert!(!b
        .sim
        .events
        .iter()
        .any(|e| matches!(e, Event::CallEnded(..))));
    let (v, _) = b.sim.gre_in(SERVER, id, b"ppp");
    assert_eq!(v, Verdict::Modified, "and its GRE translation");
    for _ in 0..50 {
        a.step();
        b.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(nat_ids(&a).len(), 2, "no end went to the active node");

    // The active node's clock: its call times out there, and so on the backup.
    for _ in 0..70 {
        a.ha.refresh(a.sim.now, &mut a.sim.alg);
        a.sim.advance(Duration::from_secs(10));
    }
    assert!(nat_ids(&a).is_empty(), "both timed out on the active node");
    assert!(
        pump(&mut a, &mut b, |_, b| nat_ids(b).is_empty()),
        "ended on the backup: {:?}",
        nat_ids(&b)
    );
    assert!(b
        .sim
        .events
        .iter()
        .any(|e| matches!(e, Event::CallEnded(c, EndCause::Peer) if c.nat_id == id)));
}

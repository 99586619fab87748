//! The replication protocol of a router pair (issue 10), without root: its
//! messages' bytes, their authentication and bounds, and two replicas
//! converging over a transport that loses, duplicates and reorders
//! messages.

use pptp_alg::alg::{ConnKey, SavedCall};
use pptp_alg::replication::wire::{
    self, decode, encode, HEADER_LEN, MAX_MESSAGE, MAX_RECORDS, RECORD_LEN, TAG_LEN,
};
use pptp_alg::replication::{
    Body, Error, Header, Key, Message, Record, Replica, ReplicaConfig, ReplicaEvent, Role, Status,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const KEY: &[u8] = b"0123456789abcdef-pair-secret";

fn key() -> Key {
    Key::new(KEY).unwrap()
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// Call `k` of `node`: three inside hosts with the same Call IDs, NAT ids
/// in the node's half.
fn call(node: u8, k: u16) -> SavedCall {
    SavedCall {
        conn: ConnKey {
            inside: addr([10, 0, 0, 1 + (k % 3) as u8], 40000 + k),
            outside: addr([203, 0, 113, 10], 1723),
        },
        inside_id: 0x4000 + k / 3,
        outside_id: None,
        nat_id: 0x4000 + 2 * k + u16::from(node),
        established: false,
        quarantine_left: None,
    }
}

fn arb_call() -> impl Strategy<Value = SavedCall> {
    (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
        any::<Option<u16>>(),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(
            |(ih, ip, oh, op, inside_id, outside_id, nat_id, established)| SavedCall {
                conn: ConnKey {
                    inside: addr(ih, ip),
                    outside: addr(oh, op),
                },
                inside_id,
                outside_id,
                nat_id,
                established,
                quarantine_left: None,
            },
        )
}

fn arb_record() -> impl Strategy<Value = Record> {
    (arb_call(), 0..3u8, any::<u32>()).prop_map(|(mut c, kind, q)| match kind {
        0 => Record::Started(c),
        1 => Record::Answered(c),
        _ => {
            c.quarantine_left = Some(q);
            Record::Ended(c)
        }
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let status = (0..2u8, any::<bool>()).prop_map(|(node, active)| Status {
        node,
        role: if active { Role::Active } else { Role::Backup },
    });
    let records = || prop::collection::vec(arb_record(), 0..=MAX_RECORDS);
    let body = prop_oneof![
        status.clone().prop_map(Body::Hello),
        status.prop_map(Body::Heartbeat),
        records().prop_map(Body::Records),
        (1..u16::MAX, any::<u16>(), records()).prop_map(|(total, i, records)| Body::Snapshot {
            index: i % total,
            total,
            records
        }),
        Just(Body::ResyncRequest),
    ];
    (any::<[u64; 4]>(), body).prop_map(|(h, body)| Message {
        header: Header {
            from: h[0],
            to: h[1],
            counter: h[2],
            seq: h[3],
        },
        body,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every message encodes within the cap and decodes to itself.
    #[test]
    fn messages_round_trip(msg in arb_message()) {
        let bytes = encode(&msg, &key()).unwrap();
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(decode(&bytes, &key()).unwrap(), msg);
    }

    /// Any change of any bit, any cut or extension, and another key: refused.
    #[test]
    fn corruption_and_other_keys_are_refused(
        msg in arb_message(),
        at in any::<prop::sample::Index>(),
        bit in 0..8u8,
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..40),
        other in prop::collection::vec(any::<u8>(), 16..64),
    ) {
        let bytes = encode(&msg, &key()).unwrap();
        let mut flipped = bytes.clone();
        flipped[at.index(bytes.len())] ^= 1 << bit;
        prop_assert!(decode(&flipped, &key()).is_err());
        prop_assert!(decode(&bytes[..cut.index(bytes.len())], &key()).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(decode(&longer, &key()).is_err());
        if other != KEY {
            prop_assert_eq!(decode(&bytes, &Key::new(&other).unwrap()), Err(Error::BadTag));
        }
    }

    /// Any header and payload with a valid tag: refused with a typed error,
    /// or a message that encodes to the very same bytes (one encoding).
    #[test]
    fn signed_bytes_decode_canonically(
        kind in 0..7u8,
        head in any::<[u8; 32]>(),
        payload in prop::collection::vec(any::<u8>(), 0..200),
        records in prop::collection::vec(arb_record(), 0..4),
    ) {
        let k = key();
        let mut b = b"PPHA".to_vec();
        b.push(wire::VERSION);
        b.push(kind);
        // Half the time the payload is well-formed records, so that the
        // record checks are reached.
        let mut body = payload.clone();
        if payload.len() % 2 == 0 {
            body.clear();
            if kind == 4 {
                body.extend_from_slice(&[0, 0, 0, 1]);
            }
            let m = encode(&Message {
                header: Header { from: 1, to: 2, counter: 3, seq: 4 },
                body: Body::Records(records),
            }, &k).unwrap();
            body.extend_from_slice(&m[HEADER_LEN..m.len() - TAG_LEN]);
            if let Some(x) = payload.first() {
                let i = usize::from(*x) % body.len().max(1);
                if let Some(v) = body.get_mut(i) {
                    *v ^= payload[payload.len() - 1];
                }
            }
        }
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(&head);
        b.extend_from_slice(&body);
        let tag = k.tag(&b);
        b.extend_from_slice(&tag);
        match decode(&b, &k) {
            Ok(msg) => prop_assert_eq!(encode(&msg, &k).unwrap(), b),
            Err(e) => prop_assert!(matches!(
                e,
                Error::UnknownKind(_) | Error::BadPayload(_) | Error::BadRecord(_)
            ), "{e:?}"),
        }
    }

    /// Random bytes never decode (nor panic).
    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        prop_assert!(decode(&bytes, &key()).is_err());
    }
}

#[test]
fn bounds_and_versions() {
    let k = key();
    assert_eq!(Key::new(&[7; 15]).unwrap_err(), Error::BadKey(15));
    assert!(Key::new(&[7; 1025]).is_err());
    let header = Header {
        from: 1,
        to: 2,
        counter: 3,
        seq: 4,
    };
    let rec = Record::Started(call(0, 1));
    let full = Message {
        header,
        body: Body::Records(vec![rec.clone(); MAX_RECORDS]),
    };
    let bytes = encode(&full, &k).unwrap();
    assert_eq!(bytes.len(), HEADER_LEN + MAX_RECORDS * RECORD_LEN + TAG_LEN);
    let over = Message {
        header,
        body: Body::Records(vec![rec; MAX_RECORDS + 1]),
    };
    assert!(matches!(encode(&over, &k), Err(Error::TooLong(_))));
    assert_eq!(decode(&[0; 1401], &k), Err(Error::TooLong(1401)));
    assert_eq!(decode(&bytes[..71], &k), Err(Error::TooShort(71)));
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(decode(&v2, &k), Err(Error::UnsupportedVersion(2)));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(decode(&magic, &k), Err(Error::BadMagic));
}

/// One record's cost on the wire, the bandwidth question.
#[test]
fn bytes_per_record() {
    let k = key();
    let header = Header {
        from: 1,
        to: 2,
        counter: 3,
        seq: 4,
    };
    let one = encode(
        &Message {
            header,
            body: Body::Records(vec![Record::Started(call(0, 1))]),
        },
        &k,
    )
    .unwrap();
    assert_eq!(
        one.len(),
        96,
        "a record alone: header 40 + record 24 + tag 32"
    );
    // Batched: 55 records in 1,392 bytes, 25.3 bytes a record.
    assert_eq!(MAX_RECORDS, 55);
    assert_eq!(HEADER_LEN + MAX_RECORDS * RECORD_LEN + TAG_LEN, 1392);
}

/// Two replicas and the transport between them.
struct Pair {
    now: Instant,
    r: [Replica; 2],
    /// In flight: (delivery time in steps, to node, bytes).
    net: Vec<(u64, usize, Vec<u8>)>,
    step: u64,
    rng: u64,
    events: [Vec<ReplicaEvent>; 2],
    errors: Vec<Error>,
}

fn config(node: u8, session: u64) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(node, Role::Backup, key(), session);
    c.max_calls = 4096;
    c
}

impl Pair {
    fn new(seed: u64) -> Pair {
        let now = Instant::now();
        Pair {
            now,
            r: [
                Replica::new(config(0, 0xa0a0), now),
                Replica::new(config(1, 0xb1b1), now),
            ],
            net: vec![],
            step: 0,
            rng: seed | 1,
            events: [vec![], vec![]],
            errors: vec![],
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One step of 100 ms: timers, sends, deliveries. `lossy`: a message is
    /// lost 1 in 5, duplicated 1 in 8, and delayed 0 to 3 steps (so
    /// reordered).
    fn run_step(&mut self, lossy: bool) {
        self.step += 1;
        self.now += Duration::from_millis(100);
        for n in 0..2 {
            if self.r[n].poll_timeout().is_some_and(|t| t <= self.now) {
                self.r[n].handle_timeout(self.now);
            }
            while let Some(b) = self.r[n].poll_transmit() {
                let copies = if !lossy {
                    1
                } else if self.rand() % 5 == 0 {
                    0
                } else if self.rand() % 8 == 0 {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = if lossy { self.rand() % 4 } else { 0 };
                    self.net.push((self.step + delay, 1 - n, b.clone()));
                }
            }
        }
        let step = self.step;
        let (due, later): (Vec<_>, Vec<_>) = self.net.drain(..).partition(|m| m.0 <= step);
        self.net = later;
        for (_, to, bytes) in due {
            if let Err(e) = self.r[to].handle(self.now, &bytes) {
                self.errors.push(e);
            }
        }
        for n in 0..2 {
            while let Some(e) = self.r[n].poll_event() {
                self.events[n].push(e);
            }
        }
    }
}

/// A table's calls by key, with whether each ended (the seconds of
/// quarantine left depend on when a record arrived).
fn by_key(calls: Vec<SavedCall>) -> BTreeMap<(Ipv4Addr, u16), (SavedCall, bool)> {
    calls
        .into_iter()
        .map(|mut c| {
            let ended = c.quarantine_left.take().is_some();
            ((*c.conn.outside.ip(), c.nat_id), (c, ended))
        })
        .collect()
}

/// The events of a node applied to a model of the local engine's copy of
/// the peer's calls.
fn applied(events: &[ReplicaEvent]) -> BTreeMap<(Ipv4Addr, u16), (SavedCall, bool)> {
    let mut m = BTreeMap::new();
    for e in events {
        match e {
            ReplicaEvent::Apply(r) => {
                let mut c = r.call().clone();
                let ended = c.quarantine_left.take().is_some();
                m.insert((*c.conn.outside.ip(), c.nat_id), (c, ended));
            }
            ReplicaEvent::Forget(c) => {
                m.remove(&(*c.conn.outside.ip(), c.nat_id));
            }
            _ => {}
        }
    }
    m
}

#[derive(Debug, Clone)]
enum Change {
    Start(u16),
    Answer(u16),
    End(u16),
}

fn change() -> impl Strategy<Value = (usize, Change)> {
    (
        0..2usize,
        prop_oneof![
            (0..40u16).prop_map(Change::Start),
            (0..40u16).prop_map(Change::Answer),
            (0..40u16).prop_map(Change::End),
        ],
    )
}

fn record_of(node: u8, ch: &Change) -> Record {
    match *ch {
        Change::Start(k) => Record::Started(call(node, k)),
        Change::Answer(k) => {
            let mut c = call(node, k);
            c.established = true;
            c.outside_id = Some(0x0700 + k);
            Record::Answered(c)
        }
        Change::End(k) => {
            let mut c = call(node, k);
            c.quarantine_left = Some(600);
            Record::Ended(c)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random changes on both nodes, sent over a transport that loses,
    /// duplicates and reorders: once the transport is quiet and sound for
    /// a few seconds, each node's mirror (and the events it gave its
    /// engine) is the other's own table.
    #[test]
    fn replicas_converge_over_a_bad_transport(
        seed in any::<u64>(),
        changes in prop::collection::vec((change(), 0..4u8), 0..200),
    ) {
        let mut p = Pair::new(seed);
        for ((n, ch), gap) in changes {
            let now = p.now;
            p.r[n].record(now, record_of(n as u8, &ch));
            for _ in 0..gap {
                p.run_step(true);
            }
        }
        for _ in 0..60 {
            p.run_step(false);
        }
        for n in 0..2 {
            let own = by_key(p.r[n].own_calls(p.now));
            prop_assert_eq!(&by_key(p.r[1 - n].peer_calls(p.now)), &own);
            prop_assert_eq!(&applied(&p.events[1 - n]), &own);
            prop_assert!(p.r[1 - n].in_sync());
        }
        // What the lossy transport did is refused as duplicates or taken:
        // never a failed authentication or a malformed message.
        for e in &p.errors {
            prop_assert!(matches!(e, Error::Replay(_) | Error::WrongSession), "{e:?}");
        }
    }
}

#[test]
fn a_gap_is_filled_by_a_snapshot_and_missed_ends_are_forgotten() {
    let mut p = Pair::new(7);
    for _ in 0..5 {
        p.run_step(false);
    }
    assert!(p.r[0].in_sync() && p.r[1].in_sync());
    let now = p.now;
    p.r[0].record(now, record_of(0, &Change::Start(1)));
    p.r[0].record(now, record_of(0, &Change::Start(2)));
    p.run_step(false);
    assert_eq!(p.r[1].peer_calls(p.now).len(), 2);
    // Call 1 ends, its quarantine over before the resync (none left); its
    // record is lost.
    let mut c = call(0, 1);
    c.quarantine_left = Some(0);
    p.r[0].record(p.now, Record::Ended(c));
    let lost = p.r[0].poll_transmit().expect("the record");
    assert!(matches!(
        decode(&lost, &key()).unwrap().body,
        Body::Records(_)
    ));
    let before = p.r[1].stats().resyncs_requested;
    // The next heartbeat tells of the gap.
    for _ in 0..20 {
        p.run_step(false);
    }
    assert_eq!(p.r[1].stats().resyncs_requested, before + 1);
    assert_eq!(
        p.r[1].stats().gaps,
        1,
        "greeting asks for a snapshot but is no gap"
    );
    assert_eq!(p.r[1].stats().snapshots_applied, 2);
    let calls = p.r[1].peer_calls(p.now);
    assert_eq!(calls, vec![call(0, 2)]);
    assert!(p.events[1].contains(&ReplicaEvent::Forget(call(0, 1))));
}

#[test]
fn replays_and_old_sessions_are_refused() {
    let mut p = Pair::new(9);
    for _ in 0..5 {
        p.run_step(false);
    }
    let now = p.now;
    p.r[0].record(now, record_of(0, &Change::Start(1)));
    let msg = p.r[0].poll_transmit().unwrap();
    assert_eq!(p.r[1].handle(now, &msg), Ok(()));
    assert_eq!(
        p.r[1].handle(now, &msg),
        Err(Error::Replay(msg_counter(&msg)))
    );
    // Node 0 restarts: a new session. What the old one sent is refused
    // once the new one greeted.
    p.r[0] = Replica::new(config(0, 0xa0a1), now);
    for _ in 0..5 {
        p.run_step(false);
    }
    assert_eq!(p.r[1].handle(p.now, &msg), Err(Error::WrongSession));
    // The new run has no calls: the peer's mirror is empty again.
    assert!(p.r[1].peer_calls(p.now).is_empty());
    assert!(p.events[1].contains(&ReplicaEvent::Forget(call(0, 1))));
    // A message under another key never reaches the state machine.
    let other = Key::new(b"another key of the pair").unwrap();
    let forged = encode(
        &Message {
            header: Header {
                from: 0xa0a1,
                to: 0xb1b1,
                counter: 1 << 40,
                seq: 1,
            },
            body: Body::Records(vec![Record::Started(call(0, 5))]),
        },
        &other,
    )
    .unwrap();
    assert_eq!(p.r[1].handle(p.now, &forged), Err(Error::BadTag));
    assert!(p.r[1].peer_calls(p.now).is_empty());
}

/// Failback: node 0 (active) fails, node 1 takes over as active and holds
/// node 0's calls; node 0 comes back from a reboot with nothing. Its empty
/// table must not make node 1 forget the calls it carries: node 1 takes
/// them as its own and node 0 gets them back in node 1's table, so its
/// kernel has them before the address returns to it.
#[test]
fn an_active_node_keeps_a_restarted_peers_calls_and_gives_them_back() {
    let mut p = Pair::new(13);
    p.r[0].set_role(Role::Active);
    for _ in 0..5 {
        p.run_step(false);
    }
    let now = p.now;
    p.r[0].record(now, record_of(0, &Change::Start(1)));
    p.r[0].record(now, record_of(0, &Change::Start(2)));
    let mut ended = call(0, 2);
    ended.quarantine_left = Some(300);
    p.r[0].record(now, Record::Ended(ended));
    for _ in 0..5 {
        p.run_step(false);
    }
    assert_eq!(p.r[1].peer_live_calls().count(), 1);
    // Node 0 is gone; node 1 holds the address now.
    p.r[1].set_role(Role::Active);
    p.r[0] = Replica::new(config(0, 0xa0a2), p.now);
    for _ in 0..10 {
        p.run_step(false);
    }
    assert!(
        p.events[1].contains(&ReplicaEvent::Adopted(2)),
        "{:?}",
        p.events[1]
    );
    assert!(!p.events[1]
        .iter()
        .any(|e| matches!(e, ReplicaEvent::Forget(_))));
    let own: Vec<_> = p.r[1].adopted_live_calls().cloned().collect();
    assert_eq!(own, vec![call(0, 1)]);
    // Node 0's new run holds them again, the ended one with its quarantine.
    let back = p.r[0].peer_calls(p.now);
    assert!(back.contains(&call(0, 1)), "{back:?}");
    assert!(
        back.iter()
            .any(|c| c.nat_id == call(0, 2).nat_id && c.quarantine_left.is_some()),
        "{back:?}"
    );
    // Its end, told by node 0 once it carries the call again, ends it on
    // node 1 too.
    let mut c = call(0, 1);
    c.quarantine_left = Some(300);
    p.r[0].record(p.now, Record::Ended(c));
    for _ in 0..5 {
        p.run_step(false);
    }
    assert_eq!(p.r[1].adopted_live_calls().count(), 0);
    assert_eq!(p.r[1].own_live_calls().count(), 0);
}

/// A backup does not take over a restarted peer's calls: the active peer
/// carries them and its new table (restored or empty) is the truth.
#[test]
fn a_backup_forgets_what_a_restarted_peer_no_longer_has() {
    let mut p = Pair::new(15);
    for _ in 0..5 {
        p.run_step(false);
    }
    p.r[0].record(p.now, record_of(0, &Change::Start(1)));
    for _ in 0..5 {
        p.run_step(false);
    }
    p.r[0] = Replica::new(config(0, 0xa0a3), p.now);
    for _ in 0..10 {
        p.run_step(false);
    }
    assert!(p.events[1].contains(&ReplicaEvent::Forget(call(0, 1))));
    assert_eq!(p.r[1].own_live_calls().count(), 0);
}

fn msg_counter(bytes: &[u8]) -> u64 {
    decode(bytes, &key()).unwrap().header.counter
}

#[test]
fn a_silent_peer_is_dead_and_comes_back() {
    let mut p = Pair::new(11);
    for _ in 0..5 {
        p.run_step(false);
    }
    assert!(p.events[0]
        .iter()
        .any(|e| matches!(e, ReplicaEvent::PeerUp(Status { node: 1, .. }))));
    p.r[1].set_role(Role::Active);
    p.run_step(false);
    assert!(p.events[0].contains(&ReplicaEvent::PeerRole(Status {
        node: 1,
        role: Role::Active
    })));
    // Node 1's messages are lost for 3 s: node 0 declares it dead.
    for _ in 0..35 {
        p.step += 1;
        p.now += Duration::from_millis(100);
        for n in 0..2 {
            p.r[n].handle_timeout(p.now);
            while p.r[n].poll_transmit().is_some() {}
            while let Some(e) = p.r[n].poll_event() {
                p.events[n].push(e);
            }
        }
    }
    assert_eq!(p.events[0].last(), Some(&ReplicaEvent::PeerDead));
    assert_eq!(p.r[0].peer(), None);
    for _ in 0..15 {
        p.run_step(false);
    }
    let dead = p.events[0]
        .iter()
        .rposition(|e| *e == ReplicaEvent::PeerDead)
        .unwrap();
    let back = Status {
        node: 1,
        role: Role::Active,
    };
    assert!(p.events[0][dead..].contains(&ReplicaEvent::PeerUp(back)));
    assert_eq!(p.r[0].peer(), Some(back));
    assert!(p.r[0].in_sync());
}

#[test]
fn tables_and_snapshots_are_bounded() {
    let now = Instant::now();
    let mut c = config(0, 5);
    c.max_calls = 100;
    let mut r = Replica::new(c, now);
    for k in 0..150 {
        r.record(now, record_of(0, &Change::Start(k)));
    }
    assert_eq!(r.own_calls(now).len(), 100);
    assert_eq!(r.stats().table_full, 50);
    // A greeting peer, then a snapshot of more chunks than 100 calls need.
    let mut m = Message {
        header: Header {
            from: 6,
            to: 5,
            counter: 1,
            seq: 0,
        },
        body: Body::Hello(Status {
            node: 1,
            role: Role::Active,
        }),
    };
    assert_eq!(r.handle(now, &encode(&m, &key()).unwrap()), Ok(()));
    m.header.counter = 2;
    m.body = Body::Snapshot {
        index: 0,
        total: 3,
        records: vec![],
    };
    assert!(matches!(
        r.handle(now, &encode(&m, &key()).unwrap()),
        Err(Error::BadPayload(_))
    ));
    // Every message this replica sends is within the cap, the snapshot
    // of its 100 calls in two chunks.
    m.header.counter = 3;
    m.body = Body::ResyncRequest;
    assert_eq!(r.handle(now, &encode(&m, &key()).unwrap()), Ok(()));
    let mut chunks = 0;
    while let Some(b) = r.poll_transmit() {
        assert!(b.len() <= MAX_MESSAGE);
        if let Body::Snapshot { total, .. } = wire::decode(&b, &key()).unwrap().body {
            assert_eq!(total, 2);
            chunks += 1;
        }
    }
    assert_eq!(chunks, 2);
}

/// Node 1's call, carried and ended by node 0 after a failover: node 1's
/// own table takes the end too, so a later snapshot of it (a resync) does
/// not hand the call back to node 0 as live.
#[test]
fn an_own_call_the_peer_ended_leaves_the_own_table() {
    let mut p = Pair::new(11);
    for _ in 0..5 {
        p.run_step(false);
    }
    let now = p.now;
    p.r[1].record(now, record_of(1, &Change::Start(3)));
    p.run_step(false);
    assert_eq!(p.r[0].peer_calls(p.now).len(), 1);
    assert_eq!(p.r[1].own_live_calls().count(), 1);
    // Node 0 carried it and saw its end.
    let mut c = call(1, 3);
    c.quarantine_left = Some(60);
    p.r[0].record(p.now, Record::Ended(c));
    p.run_step(false);
    assert_eq!(p.r[1].own_live_calls().count(), 0);
    let own = p.r[1].own_calls(p.now);
    assert_eq!(own.len(), 1);
    assert!(own[0].quarantine_left.is_some(), "ended, in quarantine");
}

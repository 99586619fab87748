//! Per-packet cost of the engine with 10,000 live calls: the GRE path from
//! outside (lookup, Call-ID and address rewrite, IP checksum update) and a
//! control message rewrite (stream tracking, lookup, TCP checksum update);
//! and the cost of setting up 10,000 calls on one control connection, which
//! shows whether per-connection call lookups grow with the connection.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pptp_alg::alg::{Alg, AlgConfig, Direction, Verdict};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

const CALLS: u16 = 10_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn msg(ty: u16, len: usize, id: u16) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    m[2..4].copy_from_slice(&1u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x1a2b3c4du32.to_be_bytes());
    m[8..10].copy_from_slice(&ty.to_be_bytes());
    m[12..14].copy_from_slice(&id.to_be_bytes());
    m
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, seq, 65535);
    if syn {
        b = b.syn();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn host(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)
}

/// 10,000 inside hosts, one connection and one call each, all with inside
/// ids spread over 50 high bytes, two hosts per id.
fn loaded() -> (Alg, Instant) {
    let cfg = AlgConfig {
        max_calls: 20_000,
        max_connections: 20_000,
        ..AlgConfig::default()
    };
    let mut alg = Alg::new(cfg);
    let now = Instant::now();
    for i in 0..CALLS {
        let (h, port) = (host(i), 40000);
        let mut syn = tcp((h, port), (SERVER, 1723), 1000, true, &[]);
        alg.handle(now, &mut syn, Direction::FromInside);
        // Pairs of hosts share an inside id, so half the calls are translated.
        let id = 0x4000 | ((i % 100) + (i / 200 % 50) * 0x100);
        let mut p = tcp((h, port), (SERVER, 1723), 1001, false, &msg(7, 168, id));
        let v = alg.handle(now, &mut p, Direction::FromInside);
        assert!(matches!(v, Verdict::Accept | Verdict::Modified));
    }
    while alg.poll_event().is_some() {}
    assert_eq!(alg.stats().calls_active, u64::from(CALLS));
    (alg, now)
}

fn gre(src: Ipv4Addr, call_id: u16) -> Vec<u8> {
    let mut g = vec![
        0x30,
        0x81,
        0x88,
        0x0b,
        0,
        64,
        (call_id >> 8) as u8,
        call_id as u8,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        1,
    ];
    g.extend_from_slice(&[0xab; 64]);
    let ip = etherparse::Ipv4Header::new(
        g.len() as u16,
        64,
        etherparse::IpNumber(47),
        src.octets(),
        [198, 51, 100, 1],
    )
    .unwrap();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&g);
    out
}

/// Translates known calls' GRE towards inside hosts, cycling over `pkts` (one per call
/// sampled), each on a fresh copy.
fn bench_gre_from_outside(
    c: &mut Criterion,
    name: &str,
    alg: &mut Alg,
    now: Instant,
    pkts: &[Vec<u8>],
) {
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                i = (i + 1) % pkts.len();
                pkts[i].clone()
            },
            |p| {
                let v = alg.handle(now, black_box(p), Direction::ToInside);
                debug_assert_eq!(v, Verdict::Modified);
                v
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let (mut alg, now) = loaded();
    let calls = alg.calls(now);
    let pkts: Vec<Vec<u8>> = calls
        .iter()
        .step_by(97)
        .map(|c| gre(c.outside_peer, c.nat_id))
        .collect();
    bench_gre_from_outside(c, "gre_from_outside_10k_calls", &mut alg, now, &pkts);

    // Set-Link-Info from the server naming the NAT id: parse, look up,
    // rewrite, fix the TCP checksum. Each iteration advances the stream.
    let (mut alg, now) = loaded();
    let calls = alg.calls(now);
    let mut k = 0usize;
    let mut down_seq: Vec<u32> = vec![5000; calls.len()];
    for c in &calls {
        let mut s = tcp((SERVER, 1723), (c.inside_host, 40000), 4999, true, &[]);
        alg.handle(now, &mut s, Direction::ToInside);
    }
    c.bench_function("control_rewrite_10k_calls", |b| {
        b.iter_batched_ref(
            || {
                k = (k + 101) % calls.len();
                let c = &calls[k];
                let seq = down_seq[k];
                down_seq[k] += 24;
                tcp(
                    (SERVER, 1723),
                    (c.inside_host, 40000),
                    seq,
                    false,
                    &msg(15, 24, c.nat_id),
                )
            },
            |p| alg.handle(now, black_box(p), Direction::ToInside),
            BatchSize::SmallInput,
        )
    });
}

/// The segments of one inside client that sets up `CALLS` calls on one
/// control connection: SYN both ways, then per call an Outgoing-Call-Request
/// from inside and the server's successful Outgoing-Call-Reply. Inside ids
/// are 250 per high byte over 40 high bytes (the engine gives 256 NAT ids
/// per outside peer and high byte), so every NAT id equals the inside id.
fn one_connection_setup() -> Vec<(Vec<u8>, Direction)> {
    let h = Ipv4Addr::new(10, 2, 0, 1);
    let (inside, outside) = ((h, 40000), (SERVER, 1723));
    let mut pkts = vec![
        (tcp(inside, outside, 1000, true, &[]), Direction::FromInside),
        (tcp(outside, inside, 4999, true, &[]), Direction::ToInside),
    ];
    let (mut up, mut down) = (1001u32, 5000u32);
    for k in 0..CALLS {
        let id = ((k / 250) << 8) | (k % 250);
        let rq = msg(7, 168, id);
        pkts.push((tcp(inside, outside, up, false, &rq), Direction::FromInside));
        up += rq.len() as u32;
        let mut rp = msg(8, 32, 0x8000 | k);
        rp[14..16].copy_from_slice(&id.to_be_bytes());
        rp[16] = 1;
        pkts.push((tcp(outside, inside, down, false, &rp), Direction::ToInside));
        down += rp.len() as u32;
    }
    pkts
}

fn bench_setup(c: &mut Criterion) {
    let pkts = one_connection_setup();
    let cfg = AlgConfig {
        max_calls_per_host: usize::from(CALLS),
        ..AlgConfig::default()
    };
    let mut g = c.benchmark_group("setup");
    // One iteration is 20,000 control segments; ten samples suffice.
    g.sample_size(10);
    g.bench_function("setup_10k_calls_one_connection", |b| {
        b.iter_batched(
            || (Alg::new(cfg.clone()), pkts.clone()),
            |(mut alg, mut pkts)| {
                let now = Instant::now();
                for (p, dir) in &mut pkts {
                    let v = alg.handle(now, black_box(p), *dir);
                    debug_assert!(matches!(v, Verdict::Accept | Verdict::Modified));
                    while alg.poll_event().is_some() {}
                }
                assert_eq!(alg.stats().calls_active, u64::from(CALLS));
                alg
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

// ---- colliding Call IDs at scale (issue 15) ----------------------------------

/// A host of the colliding benchmarks: 10.(3..).x.y, one per index.
fn colliding_host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 3, 0, 1)) + i)
}

/// The segments that set up `calls` calls to one server when every inside
/// host uses the same Call IDs: `per_host` calls per host on one control
/// connection, with ids `first`, `first + 1`, ... (so every host collides
/// with every other on every id). Per host: SYN both ways, then per call an
/// Outgoing-Call-Request and the server's successful reply.
fn colliding_setup(calls: u32, per_host: u16, first: u16) -> Vec<(Vec<u8>, Direction)> {
    let per = u32::from(per_host);
    assert_eq!(calls % per, 0);
    let mut pkts = Vec::with_capacity(calls as usize * 2 + 2 * (calls / per) as usize);
    for h in 0..calls / per {
        let (inside, outside) = ((colliding_host(h), 40000), (SERVER, 1723));
        pkts.push((tcp(inside, outside, 1000, true, &[]), Direction::FromInside));
        pkts.push((tcp(outside, inside, 4999, true, &[]), Direction::ToInside));
        let (mut up, mut down) = (1001u32, 5000u32);
        for k in 0..per_host {
            let id = first + k;
            let rq = msg(7, 168, id);
            pkts.push((tcp(inside, outside, up, false, &rq), Direction::FromInside));
            up += rq.len() as u32;
            // The server's own id, unique on the connection, and success.
            // The reply's second id (the NAT id the server saw) is filled in
            // as the setup runs.
            let mut rp = msg(8, 32, 0x8000 | k);
            rp[16] = 1;
            pkts.push((tcp(outside, inside, down, false, &rp), Direction::ToInside));
            down += rp.len() as u32;
        }
    }
    pkts
}

/// Offset of the PPTP message in the segments built here (IPv4 and TCP
/// headers without options).
const MSG_AT: usize = 40;

/// Runs a colliding setup: each reply names the NAT id its request went out
/// with, read back from the translated request, as a server would. Returns
/// the engine with every call established.
fn run_colliding_setup(cfg: &AlgConfig, pkts: &mut [(Vec<u8>, Direction)], calls: u32) -> Alg {
    let mut alg = Alg::new(cfg.clone());
    let now = Instant::now();
    let mut nat_id = 0u16;
    for (p, dir) in pkts.iter_mut() {
        let ty = p
            .get(MSG_AT + 8..MSG_AT + 10)
            .map(|t| u16::from_be_bytes([t[0], t[1]]));
        if *dir == Direction::ToInside && ty == Some(8) {
            // Peer's Call ID at offset 14 of the reply; the TCP checksum
            // (offset 16 of the TCP header) follows the change (RFC 1624).
            let at = MSG_AT + 14;
            let old = u16::from_be_bytes([p[at], p[at + 1]]);
            p[at..at + 2].copy_from_slice(&nat_id.to_be_bytes());
            let ck = u16::from_be_bytes([p[36], p[37]]);
            let ck = pptp_alg::wire::checksum::update_word(ck, old, nat_id);
            p[36..38].copy_from_slice(&ck.to_be_bytes());
        }
        let v = alg.handle(now, black_box(p), *dir);
        debug_assert!(matches!(v, Verdict::Accept | Verdict::Modified), "{v:?}");
        if *dir == Direction::FromInside && ty == Some(7) {
            nat_id = u16::from_be_bytes([p[MSG_AT + 12], p[MSG_AT + 13]]);
        }
        while alg.poll_event().is_some() {}
    }
    assert_eq!(
        alg.stats().calls_active,
        u64::from(calls),
        "every colliding call is set up"
    );
    alg
}

/// Checks once, outside the measurement, that a colliding setup did what it
/// says: every call established, and each with its own NAT id.
fn check_colliding(alg: &Alg, calls: u32) {
    let infos = alg.calls(Instant::now());
    assert_eq!(infos.len(), calls as usize);
    assert!(
        infos
            .iter()
            .all(|c| c.state == pptp_alg::alg::CallState::Established),
        "all established"
    );
    let ids: std::collections::HashSet<u16> = infos.iter().map(|c| c.nat_id).collect();
    assert_eq!(ids.len(), calls as usize, "distinct NAT ids");
}

fn colliding_cfg(calls: u32) -> AlgConfig {
    AlgConfig {
        max_calls: calls as usize + 1,
        max_connections: calls as usize + 1,
        max_calls_per_host: 250,
        ..AlgConfig::default()
    }
}

/// Call setup with colliding ids: 10,000 and 60,000 calls to one server, as
/// many hosts with one call each, all 0x4000, and as hosts with 250 calls
/// each, all 0x0100..0x01f9. Per-call time flat from 10,000 to 60,000 says
/// allocation stays O(1) as the NAT id space fills.
fn bench_colliding_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("setup_colliding");
    // One iteration is 20,000 to 240,000 control segments.
    g.sample_size(10);
    for calls in [10_000u32, 60_000] {
        for (name, per_host, first) in [
            ("one_call_per_host", 1u16, 0x4000u16),
            ("250_per_host", 250, 0x0100),
        ] {
            let pkts = colliding_setup(calls, per_host, first);
            let cfg = colliding_cfg(calls);
            check_colliding(&run_colliding_setup(&cfg, &mut pkts.clone(), calls), calls);
            g.throughput(Throughput::Elements(u64::from(calls)));
            g.bench_function(BenchmarkId::new(name, calls), |b| {
                b.iter_batched(
                    || pkts.clone(),
                    |mut pkts| run_colliding_setup(&cfg, &mut pkts, calls),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

/// The GRE path from outside with 60,000 colliding calls up (hosts with 250
/// calls each, all 0x0100..0x01f9): the lookup by NAT id in a full id space.
fn bench_colliding_gre(c: &mut Criterion) {
    const N: u32 = 60_000;
    let mut pkts = colliding_setup(N, 250, 0x0100);
    let mut alg = run_colliding_setup(&colliding_cfg(N), &mut pkts, N);
    let now = Instant::now();
    let grams: Vec<Vec<u8>> = alg
        .calls(now)
        .iter()
        .step_by(97)
        .map(|c| gre(c.outside_peer, c.nat_id))
        .collect();
    bench_gre_from_outside(
        c,
        "gre_from_outside_60k_colliding_calls",
        &mut alg,
        now,
        &grams,
    );
}

/// The replication protocol (issue 10): 1,000 call records (start and
/// end of 500 calls) from one replica to the other, batched as the
/// replica batches them, encoded, authenticated, checked and applied.
fn bench_replication(c: &mut Criterion) {
    use pptp_alg::alg::{ConnKey, SavedCall};
    use pptp_alg::replication::{Key, Record, Replica, ReplicaConfig, Role};
    use std::net::SocketAddrV4;

    let key = Key::new(b"benchmark key, 32 bytes long....").unwrap();
    let records: Vec<Record> = (0..500u16)
        .flat_map(|k| {
            let call = SavedCall {
                conn: ConnKey {
                    inside: SocketAddrV4::new(host(k), 40000),
                    outside: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 1723),
                },
                inside_id: 0x4000,
                outside_id: Some(k),
                nat_id: 2 * k,
                established: true,
                quarantine_left: None,
            };
            let ended = SavedCall {
                quarantine_left: Some(60),
                ..call.clone()
            };
            [Record::Started(call), Record::Ended(ended)]
        })
        .collect();
    let mut g = c.benchmark_group("replication");
    g.throughput(Throughput::Elements(records.len() as u64));
    let pair = || {
        let t = Instant::now();
        let mut a = Replica::new(ReplicaConfig::new(0, Role::Active, key.clone(), 1), t);
        let mut bb = Replica::new(ReplicaConfig::new(1, Role::Backup, key.clone(), 2), t);
        for _ in 0..4 {
            while let Some(m) = a.poll_transmit() {
                bb.handle(t, &m).unwrap();
            }
            while let Some(m) = bb.poll_transmit() {
                a.handle(t, &m).unwrap();
            }
        }
        (a, bb, t)
    };
    // As a busy daemon sends them: 55 records a message.
    g.bench_function("records_1000_batched", |b| {
        b.iter_batched(
            pair,
            |(mut a, mut bb, t)| {
                for r in &records {
                    a.record(t, r.clone());
                }
                while let Some(m) = a.poll_transmit() {
                    bb.handle(t, black_box(&m)).unwrap();
                }
                assert_eq!(bb.stats().records_applied, 1000);
                bb
            },
            BatchSize::SmallInput,
        )
    });
    // The worst case: every record its own message (two HMACs a record).
    g.bench_function("records_1000_one_per_message", |b| {
        b.iter_batched(
            pair,
            |(mut a, mut bb, t)| {
                for r in &records {
                    a.record(t, r.clone());
                    while let Some(m) = a.poll_transmit() {
                        bb.handle(t, black_box(&m)).unwrap();
                    }
                }
                assert_eq!(bb.stats().records_applied, 1000);
                bb
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench,
    bench_setup,
    bench_colliding_setup,
    bench_colliding_gre,
    bench_replication
);
criterion_main!(benches);

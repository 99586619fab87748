//! Per-packet cost of the engine with 10,000 live calls: the GRE path from
//! outside (lookup, Call-ID and address rewrite, IP checksum update) and a
//! control message rewrite (stream tracking, lookup, TCP checksum update);
//! and the cost of setting up 10,000 calls on one control connection, which
//! shows whether per-connection call lookups grow with the connection.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
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

fn bench(c: &mut Criterion) {
    let (mut alg, now) = loaded();
    let calls = alg.calls(now);
    let pkts: Vec<Vec<u8>> = calls
        .iter()
        .step_by(97)
        .map(|c| gre(c.outside_peer, c.nat_id))
        .collect();
    let mut i = 0;
    c.bench_function("gre_from_outside_10k_calls", |b| {
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

criterion_group!(benches, bench, bench_setup);
criterion_main!(benches);

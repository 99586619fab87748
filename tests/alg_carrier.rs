//! Colliding Call IDs at carrier scale: 60,000 calls to one server through
//! one public address whatever ids the inside hosts use (all hosts 0x4000,
//! or every host 0x0100..0x01f9), GRE to each call reaching its host and
//! id, a refusal only when the 65,536 ids towards the peer are all held,
//! quarantine churn near the full space, a large table across a restart,
//! and Call IDs split between segments under these allocations.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, DropReason, Event, RefuseReason, SavedCall, Verdict};
use proptest::prelude::*;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use Direction::{FromInside as OUT, ToInside as IN};

fn carrier_config() -> AlgConfig {
    AlgConfig {
        max_calls: 70_000,
        max_connections: 70_000,
        max_calls_per_host: 300,
        ..AlgConfig::default()
    }
}

/// Inside host number `n` (10.0.0.0/8 is large enough for 60,000 hosts).
fn inside(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + n + 1)
}

/// Opens `calls` calls with ids `first..` on one connection of host `n`;
/// returns the connection and the NAT ids the server saw.
fn open_calls(sim: &mut Sim, n: u32, first: u16, calls: u16) -> (Conn, Vec<u16>) {
    let mut c = Conn::client_inside(inside(n), 40000, SERVER);
    sim.start_control(&mut c);
    let mut nat = Vec::new();
    for k in 0..calls {
        let (v, out) = sim.send(&mut c, OUT, &ocrq(first + k));
        assert!(
            matches!(v, Verdict::Accept | Verdict::Modified),
            "host {n} call {k}: {v:?}"
        );
        nat.push(u16_at(&out, 12));
        let (_, out) = sim.send(&mut c, IN, &ocrp(0x0700 + k, u16_at(&out, 12), 1));
        assert_eq!(u16_at(&out, 14), first + k, "the reply names the inside id");
    }
    sim.events.clear();
    (c, nat)
}

/// GRE from the server to every NAT id reaches its host with its inside id.
fn check_gre(sim: &mut Sim, calls: &[(Ipv4Addr, u16, u16)]) {
    for &(host, inside_id, nat) in calls {
        let (v, pkt) = sim.gre_in(SERVER, nat, b"x");
        assert_eq!(v, Verdict::Modified, "NAT id {nat:#06x}");
        assert_eq!(gre_dst_and_id(&pkt), (host, inside_id), "NAT id {nat:#06x}");
    }
}

#[test]
fn sixty_thousand_hosts_all_calling_with_0x4000() {
    let mut sim = Sim::new(carrier_config());
    let mut calls = Vec::new();
    let mut seen = HashSet::new();
    for n in 0..60_000 {
        let (_, nat) = open_calls(&mut sim, n, 0x4000, 1);
        assert!(seen.insert(nat[0]), "NAT id {:#06x} given twice", nat[0]);
        calls.push((inside(n), 0x4000, nat[0]));
    }
    assert_eq!(sim.alg.stats().calls_active, 60_000);
    assert_eq!(sim.alg.stats().alloc_failures, 0);
    check_gre(&mut sim, &calls);
    sim.alg.check_call_indexes().unwrap();
}

#[test]
fn two_hundred_forty_hosts_with_the_same_250_ids() {
    let mut sim = Sim::new(carrier_config());
    let mut calls = Vec::new();
    let mut seen = HashSet::new();
    for n in 0..240 {
        let (_, nat) = open_calls(&mut sim, n, 0x0100, 250);
        for (k, id) in nat.into_iter().enumerate() {
            assert!(seen.insert(id), "NAT id {id:#06x} given twice");
            calls.push((inside(n), 0x0100 + k as u16, id));
        }
    }
    assert_eq!(sim.alg.stats().calls_active, 60_000);
    check_gre(&mut sim, &calls);
    // A large table survives a restart of the daemon whole.
    let saved: Vec<SavedCall> = sim.alg.saved_calls();
    assert_eq!(saved.len(), 60_000);
    sim.alg = pptp_alg::alg::Alg::new(carrier_config());
    assert_eq!(sim.alg.restore_calls(sim.now, &saved), 60_000);
    sim.drain();
    sim.events.clear();
    check_gre(&mut sim, &calls);
    sim.alg.check_call_indexes().unwrap();
}

#[test]
fn refused_only_when_every_id_towards_the_peer_is_held() {
    let mut sim = Sim::new(carrier_config());
    // 256 hosts with 256 calls each, every host using 0x0100..0x01ff:
    // each connection fills one block, all 65,536 ids are held.
    let mut conns = Vec::new();
    for n in 0..256 {
        let (c, _) = open_calls(&mut sim, n, 0x0100, 256);
        conns.push(c);
    }
    assert_eq!(sim.alg.stats().calls_active, 65_536);
    // Host 300's call is refused, with the numbers an operator needs, and
    // its segment dropped: its inside id never leaves.
    let mut x = Conn::client_inside(inside(300), 40000, SERVER);
    sim.start_control(&mut x);
    let (v, _) = sim.send(&mut x, OUT, &ocrq(0x4000));
    assert_eq!(v, Verdict::Drop(DropReason::CallRefused));
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::CallRefused {
            reason: RefuseReason::IdSpaceExhausted,
            live_ids: 65_536,
            quarantined_ids: 0,
            ..
        }
    )));
    // Quarantine near the full space: an ended call's id stays held for
    // everyone else...
    let (_, out) = sim.send(&mut conns[7], OUT, &cdn(0x0105));
    assert_eq!(out.len(), 148);
    sim.events.clear();
    let (v, _) = sim.send(&mut x, OUT, &ocrq(0x4000));
    assert_eq!(v, Verdict::Drop(DropReason::CallRefused));
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::CallRefused {
            reason: RefuseReason::IdSpaceExhausted,
            live_ids: 65_535,
            quarantined_ids: 1,
            ..
        }
    )));
    // ...until its quarantine ends; then exactly that id is free.
    sim.advance(Duration::from_secs(61));
    let (v, out) = sim.send(&mut x, OUT, &ocrq(0x4000));
    assert_eq!(v, Verdict::Modified);
    let freed = u16_at(&out, 12);
    assert_eq!(sim.alg.stats().calls_active, 65_536);
    // Nothing else broke: every other call's GRE still reaches its host.
    assert_eq!(
        gre_dst_and_id(&sim.gre_in(SERVER, freed, b"x").1),
        (inside(300), 0x4000)
    );
    sim.alg.check_call_indexes().unwrap();
}

/// A host's quarantine counts against that host: one host opening and
/// clearing calls as fast as it can is refused by its own limit, and never
/// keeps another host from its calls.
#[test]
fn a_churning_host_locks_only_itself() {
    let cfg = AlgConfig {
        max_calls_per_host: 64,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut churn = Conn::client_inside(inside(1), 40000, SERVER);
    sim.start_control(&mut churn);
    let mut refused = 0;
    for k in 0..1000u16 {
        let id = 0x4000 + (k % 256);
        match sim.send(&mut churn, OUT, &ocrq(id)).0 {
            Verdict::Drop(DropReason::CallRefused) => refused += 1,
            _ => {
                sim.send(&mut churn, OUT, &ccrq(id));
                sim.send(&mut churn, IN, &cdn(0x0700));
                sim.send(&mut churn, OUT, &cdn(id));
            }
        }
    }
    assert_eq!(refused, 1000 - 64, "its 64 calls in quarantine stop it");
    assert_eq!(sim.alg.stats().refused_host_limit, 1000 - 64);
    // Every other host, with the same ids, is unaffected.
    for n in 2..100 {
        let (_, nat) = open_calls(&mut sim, n, 0x4000, 1);
        assert_ne!(nat[0] >> 8, 0x40, "block 0x40 holds the churner's ids");
    }
    assert_eq!(sim.alg.stats().calls_active, 98);
}

/// Many hosts with the same ids, each request cut anywhere (also between
/// the two bytes of its Call ID) gives the bytes the whole messages give.
fn run_cut(cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut sim = Sim::new(carrier_config());
    // Fill blocks 0x01..0x05 partly, so that new connections' ids change
    // their first byte.
    for n in 100..105 {
        open_calls(&mut sim, n, 0x0100, 3);
    }
    let mut outs = Vec::new();
    for (n, &cut) in cuts.iter().enumerate() {
        let mut c = Conn::client_inside(inside(n as u32), 40000, SERVER);
        sim.start_control(&mut c);
        let stream = [ocrq(0x0100), ocrq(0x0101), ccrq(0x0100)].concat();
        let cut = cut % stream.len();
        let mut out = Vec::new();
        for seg in [&stream[..cut], &stream[cut..]] {
            if !seg.is_empty() {
                let (v, o) = sim.send(&mut c, OUT, seg);
                assert!(matches!(v, Verdict::Accept | Verdict::Modified), "{v:?}");
                out.extend(o);
            }
        }
        // The server's answers name the NAT ids; they come back translated.
        let (n1, n2) = (u16_at(&out, 12), u16_at(&out, 168 + 12));
        let answers = [ocrp(0x0700, n1, 1), sli(n2)].concat();
        let cut2 = cut % answers.len();
        for seg in [&answers[..cut2], &answers[cut2..]] {
            if !seg.is_empty() {
                out.extend(sim.send(&mut c, IN, seg).1);
            }
        }
        outs.push(out);
    }
    outs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_cut_under_remapped_blocks_gives_the_same_bytes(
        cuts in prop::collection::vec(0usize..400, 8)
    ) {
        let whole = run_cut(&[0; 8]);
        let got = run_cut(&cuts);
        prop_assert_eq!(&got, &whole);
        // And the translation is the expected one: ids distinct towards the
        // server, the server's answers back to the inside ids.
        let mut seen = HashSet::new();
        for out in &whole {
            prop_assert!(seen.insert(u16_at(out, 12)));
            prop_assert!(seen.insert(u16_at(out, 168 + 12)));
            prop_assert_eq!(u16_at(out, 2 * 168 + 12), u16_at(out, 12));
            prop_assert_eq!(u16_at(out, 2 * 168 + 16 + 14), 0x0100);
            prop_assert_eq!(u16_at(out, 2 * 168 + 16 + 32 + 12), 0x0101);
        }
    }
}

//! A reload reconfigures the running engine (`Alg::reconfigure`): new
//! limits and timeouts apply to what comes next, live calls stay as they
//! are.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, DropReason, EndCause, Event, IdPolicy, Verdict};
use std::time::Duration;

use Direction::{FromInside as OUT, ToInside as IN};

/// Host 1 and host 2 each hold an established call with inside id 0x4000
/// to the same server; host 2's has NAT id 0x4100.
fn two_calls() -> (Sim, Conn, Conn) {
    let mut sim = Sim::new(AlgConfig::default());
    let mut a = Conn::client_inside(host(1), 40001, SERVER);
    let mut b = Conn::client_inside(host(2), 40001, SERVER);
    sim.start_control(&mut a);
    sim.start_control(&mut b);
    assert_eq!(sim.send(&mut a, OUT, &ocrq(0x4000)).0, Verdict::Accept);
    assert_eq!(sim.send(&mut b, OUT, &ocrq(0x4000)).0, Verdict::Modified);
    sim.send(&mut a, IN, &ocrp(0x0666, 0x4000, 1));
    let (v, out) = sim.send(&mut b, IN, &ocrp(0x0777, 0x4100, 1));
    assert_eq!((v, u16_at(&out, 14)), (Verdict::Modified, 0x4000));
    (sim, a, b)
}

#[test]
fn reconfigured_engine_keeps_its_calls_and_applies_new_limits() {
    let (mut sim, mut a, _b) = two_calls();
    let seed = sim.alg.config().seed;
    let before = sim.alg.calls(sim.now);
    assert_eq!(before.len(), 2);
    sim.alg.reconfigure(AlgConfig {
        max_calls_per_host: 1,
        id_policy: IdPolicy::Random,
        seed: 1,
        ..AlgConfig::default()
    });
    assert_eq!(sim.alg.config().max_calls_per_host, 1);
    assert_eq!(sim.alg.config().id_policy, IdPolicy::Random);
    assert_eq!(sim.alg.config().seed, seed, "the id generator continues");
    // Nothing ended, every call is as it was.
    assert_eq!(sim.alg.calls(sim.now), before);
    assert!(!sim.events.iter().any(|e| matches!(e, Event::CallEnded(..))));
    // GRE of both calls still goes to its own host, with its own id.
    let (v, out) = sim.gre_in(SERVER, 0x4100, b"two");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&out), (host(2), 0x4000));
    let (v, out) = sim.gre_in(SERVER, 0x4000, b"one");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&out), (host(1), 0x4000));
    // The new limits apply to the next call: host 1 already holds one.
    assert_eq!(
        sim.send(&mut a, OUT, &ocrq(0x4001)).0,
        Verdict::Drop(DropReason::CallRefused)
    );
    assert_eq!(sim.alg.stats().refused_host_limit, 1);
    // Raised again, the same request passes.
    sim.alg.reconfigure(AlgConfig::default());
    assert_eq!(sim.send(&mut a, OUT, &ocrq(0x4001)).0, Verdict::Accept);
}

#[test]
fn shorter_timeouts_apply_to_live_calls_at_the_next_sweep() {
    let (mut sim, _a, _b) = two_calls();
    sim.advance(Duration::from_secs(30));
    assert!(sim
        .events
        .iter()
        .all(|e| !matches!(e, Event::CallEnded(..))));
    sim.alg.reconfigure(AlgConfig {
        call_idle_timeout: Duration::from_secs(20),
        conn_idle_timeout: Duration::from_secs(3600),
        ..AlgConfig::default()
    });
    // 30 s of silence are past the new 20 s idle timeout.
    sim.advance(Duration::from_secs(2));
    let ended: Vec<(u16, EndCause)> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::CallEnded(c, cause) => Some((c.inside_id, *cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ended,
        vec![
            (0x4000, EndCause::IdleTimeout),
            (0x4000, EndCause::IdleTimeout)
        ]
    );
}

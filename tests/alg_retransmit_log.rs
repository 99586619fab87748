//! Reproduction (from tests/e2e_scale.rs, issue 15): a TCP retransmission of
//! control bytes the engine translated more than PATCH_LOG (64) patches ago
//! leaves with the inside Call IDs. A client clearing 250 calls at once sends
//! 250 Call-Clear-Requests back to back; when some of them are lost after the
//! engine saw them (e.g. NFQUEUE's socket overflowing under the burst), the
//! sender retransmits, often collapsed into one segment, and the server gets
//! "CCRQ for unknown call 259" (the inside id) for the older ones. Fails on
//! 8cec9fa (high-byte allocator) and on the per-connection blocks alike.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction};
use Direction::{FromInside as OUT, ToInside as IN};

fn ids(out: &[u8]) -> Vec<u16> {
    out.chunks(16).map(|m| u16_at(m, 12)).collect()
}

#[test]
fn retransmission_of_more_than_64_unacknowledged_messages() {
    let mut sim = Sim::new(AlgConfig {
        max_calls_per_host: 300,
        ..AlgConfig::default()
    });
    // Host 2 uses the same ids as host 1, so its NAT ids differ from its ids.
    let mut a = Conn::client_inside(host(1), 40001, SERVER);
    let mut b = Conn::client_inside(host(2), 40001, SERVER);
    sim.start_control(&mut a);
    sim.start_control(&mut b);
    let mut map = Vec::new();
    for id in 0x100u16..0x100 + 100 {
        let (_, o) = sim.send(&mut a, OUT, &ocrq(id));
        sim.send(&mut a, IN, &ocrp(0x600 + id, u16_at(&o, 12), 1));
        let (_, o) = sim.send(&mut b, OUT, &ocrq(id));
        let nat = u16_at(&o, 12);
        assert_ne!(nat, id);
        sim.send(&mut b, IN, &ocrp(0x700 + id, nat, 1));
        map.push((id, nat));
    }
    // 100 Call-Clear-Requests, one segment each, none acknowledged yet.
    let seq = b.seq[0];
    for &(id, nat) in &map {
        let (_, o) = sim.send(&mut b, OUT, &ccrq(id));
        assert_eq!(u16_at(&o, 12), nat, "first transmission");
    }
    // TCP retransmits the first one ...
    let (_, o) = sim.send_at(&b, OUT, seq, Flags::default(), &ccrq(map[0].0));
    assert_eq!(u16_at(&o, 12), map[0].1, "retransmission of the first");
    // ... or all of them collapsed into one segment.
    let all: Vec<u8> = map.iter().flat_map(|&(id, _)| ccrq(id)).collect();
    let (_, o) = sim.send_at(&b, OUT, seq, Flags::default(), &all);
    let want: Vec<u16> = map.iter().map(|&(_, nat)| nat).collect();
    assert_eq!(ids(&o), want, "collapsed retransmission");
}

//! Call-ID translation by the symmetric rule, call lifetimes, limits and
//! malformed input, with crafted packets through the pure engine.

mod common;
use common::*;
use pptp_alg::alg::{
    AlgConfig, Direction, DropReason, EndCause, Event, IdPolicy, RefuseReason, Verdict,
};
use std::time::Duration;

use Direction::{FromInside as OUT, ToInside as IN};

const SRV_ID: u16 = 0x0777;

/// Two inside clients each open a call with id 0x4000 to the same server.
/// Returns the sim and host 2's connection, whose call got NAT id 0x4100
/// (block 0x40 holds host 1's call, so host 2's first call takes the next
/// empty block).
fn two_clients() -> (Sim, Conn) {
    two_clients_with(AlgConfig::default())
}

fn two_clients_with(cfg: AlgConfig) -> (Sim, Conn) {
    let mut sim = Sim::new(cfg);
    let mut a = Conn::client_inside(host(1), 40001, SERVER);
    let mut b = Conn::client_inside(host(2), 40001, SERVER);
    sim.start_control(&mut a);
    sim.start_control(&mut b);
    let (v, out) = sim.send(&mut a, OUT, &ocrq(0x4000));
    assert_eq!(
        (v, u16_at(&out, 12)),
        (Verdict::Accept, 0x4000),
        "first caller keeps its id"
    );
    let (v, out) = sim.send(&mut b, OUT, &ocrq(0x4000));
    assert_eq!(
        (v, u16_at(&out, 12)),
        (Verdict::Modified, 0x4100),
        "second caller gets another id"
    );
    let (_, out) = sim.send(&mut a, IN, &ocrp(0x0666, 0x4000, 1));
    assert_eq!(u16_at(&out, 14), 0x4000);
    let (v, out) = sim.send(&mut b, IN, &ocrp(SRV_ID, 0x4100, 1));
    assert_eq!((v, u16_at(&out, 14)), (Verdict::Modified, 0x4000));
    (sim, b)
}

/// Expected output: the input with the field at `off` set to `want`.
fn expect(input: &[u8], off: usize, want: u16) -> Vec<u8> {
    let mut e = input.to_vec();
    e[off..off + 2].copy_from_slice(&want.to_be_bytes());
    e
}

#[test]
fn every_call_id_field_client_inside() {
    // (message, direction, field offset, value on the wire after translation)
    let rows: Vec<(&str, Vec<u8>, Direction, usize, u16)> = vec![
        ("CCRQ own", ccrq(0x4000), OUT, 12, 0x4100),
        ("CDN own (RFC meaning)", cdn(0x4000), OUT, 12, 0x4100),
        ("SLI peer, to server", sli(SRV_ID), OUT, 12, SRV_ID),
        ("WEN peer, to server", wen(SRV_ID), OUT, 12, SRV_ID),
        ("ICCN peer, to server", iccn(SRV_ID), OUT, 12, SRV_ID),
        (
            "OCRP peer, from server (own id unchanged)",
            ocrp(SRV_ID, 0x4100, 1),
            IN,
            14,
            0x4000,
        ),
        ("SLI peer, from server", sli(0x4100), IN, 12, 0x4000),
        ("WEN peer, from server", wen(0x4100), IN, 12, 0x4000),
        ("ICCN peer, from server", iccn(0x4100), IN, 12, 0x4000),
        (
            "ICRP peer, from server",
            icrp(0x0999, 0x4100, 1),
            IN,
            14,
            0x4000,
        ),
        ("CDN server's own id", cdn(SRV_ID), IN, 12, SRV_ID),
        (
            "CDN naming our NAT id (Linux meaning)",
            cdn(0x4100),
            IN,
            12,
            0x4000,
        ),
        ("CCRQ from server, own id", ccrq(SRV_ID), IN, 12, SRV_ID),
        ("ICRQ from server, own id", icrq(0x0999), IN, 12, 0x0999),
        ("OCRQ from server, own id", ocrq(0x0998), IN, 12, 0x0998),
    ];
    for (name, m, d, off, want) in rows {
        let (mut sim, mut b) = two_clients();
        let (v, out) = sim.send(&mut b, d, &m);
        assert_eq!(out, expect(&m, off, want), "{name}");
        let changed = out != m;
        assert_eq!(
            v,
            if changed {
                Verdict::Modified
            } else {
                Verdict::Accept
            },
            "{name}"
        );
    }
}

/// An inside server behind a port forward: two outside clients use the same
/// id; the server's own ids are what gets translated.
#[test]
fn every_call_id_field_server_inside() {
    let setup = || {
        let mut sim = Sim::new(AlgConfig::default());
        let srv = host(5);
        let client = SERVER; // outside client
        let mut a = Conn::server_inside(srv, client, 50001);
        let mut b = Conn::server_inside(srv, client, 50002);
        sim.start_control(&mut a);
        sim.start_control(&mut b);
        // Both outside clients call with id 7; the server answers with its
        // own ids 0x100 and 0x100 on... no: one server gives distinct ids,
        // but two servers behind one NAT may not; take the same id to force
        // a collision towards the same outside peer.
        for c in [&mut a, &mut b] {
            assert_eq!(sim.send(c, IN, &ocrq(7)).0, Verdict::Accept);
        }
        let (_, out) = sim.send(&mut a, OUT, &ocrp(0x0100, 7, 1));
        assert_eq!((u16_at(&out, 12), u16_at(&out, 14)), (0x0100, 7));
        let (v, out) = sim.send(&mut b, OUT, &ocrp(0x0100, 7, 1));
        assert_eq!(
            (v, u16_at(&out, 12), u16_at(&out, 14)),
            (Verdict::Modified, 0x0200, 7)
        );
        (sim, b)
    };
    let rows: Vec<(&str, Vec<u8>, Direction, usize, u16)> = vec![
        (
            "SLI from client names server's call",
            sli(0x0200),
            IN,
            12,
            0x0100,
        ),
        ("WEN from client", wen(0x0200), IN, 12, 0x0100),
        ("CCRQ from client, own id", ccrq(7), IN, 12, 7),
        ("CDN from client, own id", cdn(7), IN, 12, 7),
        ("SLI from server names client's call", sli(7), OUT, 12, 7),
        ("CDN from server, own id", cdn(0x0100), OUT, 12, 0x0200),
        (
            "CDN from server, client's id (Linux meaning)",
            cdn(7),
            OUT,
            12,
            7,
        ),
        (
            "ICRQ from server (server places call)",
            icrq(0x0200),
            OUT,
            12,
            0x0300,
        ),
    ];
    for (name, m, d, off, want) in rows {
        let (mut sim, mut b) = setup();
        let (v, out) = sim.send(&mut b, d, &m);
        assert_eq!(out, expect(&m, off, want), "{name}");
        assert_eq!(v == Verdict::Modified, out != m, "{name}");
    }
    // GRE from the client to the router reaches the right call of the server.
    let (mut sim, _) = setup();
    let (v, pkt) = sim.gre_in(SERVER, 0x0200, b"to-second");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&pkt), (host(5), 0x0100));
}

#[test]
fn three_clients_same_id_get_their_own_gre() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut nat = vec![];
    let mut conns = vec![];
    for n in 1..=3 {
        let mut c = Conn::client_inside(host(n), 40000, SERVER);
        sim.start_control(&mut c);
        let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
        nat.push(u16_at(&out, 12));
        conns.push(c);
    }
    assert_eq!(nat, vec![0x4000, 0x4100, 0x4200]);
    for (i, c) in conns.iter_mut().enumerate() {
        let (_, out) = sim.send(c, IN, &ocrp(0x10 + i as u16, nat[i], 1));
        assert_eq!(u16_at(&out, 14), 0x4000);
    }
    for (i, &n) in nat.iter().enumerate() {
        let (v, pkt) = sim.gre_in(SERVER, n, b"data");
        assert_eq!(v, Verdict::Modified);
        assert_eq!(gre_dst_and_id(&pkt), (host(i as u8 + 1), 0x4000));
    }
    // GRE from inside carries the server's id and passes unchanged.
    let pkt = gre_packet(host(2), SERVER, 0x11, None, Some(5), b"up");
    let (v, out) = sim.packet(pkt.clone(), OUT);
    assert_eq!((v, out), (Verdict::Accept, pkt));
    let listing = sim.alg.calls(sim.now);
    let c2 = listing.iter().find(|c| c.inside_host == host(2)).unwrap();
    assert_eq!(
        (c2.packets_out, c2.packets_in, c2.outside_id),
        (1, 1, Some(0x11))
    );
    assert_eq!(sim.alg.stats().calls_active, 3);
}

#[test]
fn several_calls_on_one_connection_and_incoming_calls() {
    let (mut sim, mut b) = two_clients();
    // A second and third call on the same connection.
    let (_, out) = sim.send(&mut b, OUT, &ocrq(0x4100));
    let second = u16_at(&out, 12);
    assert_ne!(
        second, 0x4100,
        "0x4100 is taken by this connection's first call"
    );
    // An incoming call: the server (PAC) asks, the inside client answers.
    let (v, _) = sim.send(&mut b, IN, &icrq(0x0aaa));
    assert_eq!(v, Verdict::Accept);
    let (_, out) = sim.send(&mut b, OUT, &icrp(0x4000 + 0x10, 0x0aaa, 1));
    let icall = u16_at(&out, 12);
    assert_eq!(u16_at(&out, 14), 0x0aaa);
    let (_, out) = sim.send(&mut b, IN, &iccn(icall));
    assert_eq!(u16_at(&out, 12), 0x4010);
    let calls = sim.alg.calls(sim.now);
    assert_eq!(calls.iter().filter(|c| c.inside_host == host(2)).count(), 3);
    let (v, pkt) = sim.gre_in(SERVER, icall, b"x");
    assert_eq!(v, Verdict::Modified);
    assert_eq!(gre_dst_and_id(&pkt), (host(2), 0x4010));
}

#[test]
fn retransmitted_request_is_byte_identical() {
    let (mut sim, b) = two_clients();
    let seq = b.seq[0];
    let mut b2 = b;
    let (_, first) = sim.send(&mut b2, OUT, &ocrq(0x4100));
    let (_, again) = sim.send_at(&b, OUT, seq, Flags::default(), &ocrq(0x4100));
    assert_eq!(first, again);
    // Also as fresh bytes (the peer re-sent the message): same NAT id.
    let (_, third) = sim.send(&mut b2, OUT, &ocrq(0x4100));
    assert_eq!(u16_at(&third, 12), u16_at(&first, 12));
    assert_eq!(sim.alg.stats().calls_created, 3);
}

fn ended(sim: &Sim) -> Vec<(u16, EndCause)> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            Event::CallEnded(c, cause) => Some((c.nat_id, *cause)),
            _ => None,
        })
        .collect()
}

#[test]
fn teardown_by_each_cause() {
    type Step = fn(&mut Sim, &mut Conn);
    let cases: Vec<(&str, Step, EndCause)> = vec![
        (
            "CDN from client",
            |s, c| drop(s.send(c, OUT, &cdn(0x4000))),
            EndCause::Disconnect,
        ),
        (
            "CDN from server",
            |s, c| drop(s.send(c, IN, &cdn(SRV_ID))),
            EndCause::Disconnect,
        ),
        (
            "CDN from server, Linux meaning",
            |s, c| drop(s.send(c, IN, &cdn(0x4100))),
            EndCause::Disconnect,
        ),
        (
            "Stop request",
            |s, c| drop(s.send(c, OUT, &simple(STOPRQ))),
            EndCause::StopControl,
        ),
        (
            "Stop reply",
            |s, c| drop(s.send(c, IN, &simple(STOPRP))),
            EndCause::StopControl,
        ),
        (
            "FIN",
            |s, c| {
                let seq = c.seq[0];
                s.send_at(
                    c,
                    OUT,
                    seq,
                    Flags {
                        fin: true,
                        ..Default::default()
                    },
                    &[],
                );
            },
            EndCause::ConnClosed,
        ),
        (
            "RST",
            |s, c| {
                let seq = c.seq[1];
                s.send_at(
                    c,
                    IN,
                    seq,
                    Flags {
                        rst: true,
                        ..Default::default()
                    },
                    &[],
                );
            },
            EndCause::ConnClosed,
        ),
        (
            "idle",
            |s, _| {
                // Only the other call has traffic.
                for _ in 0..7 {
                    s.advance(Duration::from_secs(100));
                    s.gre_in(SERVER, 0x4000, b"keepalive");
                }
            },
            EndCause::IdleTimeout,
        ),
    ];
    for (name, step, cause) in cases {
        let cfg = AlgConfig {
            conn_idle_timeout: Duration::from_secs(3600),
            ..AlgConfig::default()
        };
        let (mut sim, mut b) = two_clients_with(cfg);
        sim.events.clear();
        step(&mut sim, &mut b);
        assert_eq!(ended(&sim), vec![(0x4100, cause)], "{name}");
        assert_eq!(
            sim.gre_in(SERVER, 0x4100, b"late").0,
            Verdict::UnknownCall,
            "{name}"
        );
        assert_eq!(
            sim.gre_in(SERVER, 0x4000, b"other").0,
            Verdict::Modified,
            "{name}: other call unaffected"
        );
        assert_eq!(sim.alg.stats().ended_by(cause), 1, "{name}");
    }
}

#[test]
fn failed_reply_and_setup_timeout_end_the_call() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    sim.send(&mut c, OUT, &ocrq(0x10));
    sim.send(&mut c, IN, &ocrp(0x20, 0x10, 2));
    assert_eq!(ended(&sim), vec![(0x10, EndCause::ReplyFailure)]);
    sim.send(&mut c, OUT, &ocrq(0x11));
    sim.advance(Duration::from_secs(59));
    assert_eq!(ended(&sim).len(), 1);
    sim.advance(Duration::from_secs(2));
    assert_eq!(ended(&sim)[1], (0x11, EndCause::SetupTimeout));
}

#[test]
fn idle_connection_times_out_and_is_forgotten() {
    let (mut sim, _) = two_clients();
    assert_eq!(sim.alg.connections(), 2);
    sim.advance(Duration::from_secs(299));
    // GRE keeps calls alive but not the control connection.
    sim.gre_in(SERVER, 0x4100, b"x");
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.alg.connections(), 0);
    assert!(ended(&sim).iter().all(|&(_, c)| c == EndCause::ConnTimeout));
    assert_eq!(ended(&sim).len(), 2);
}

#[test]
fn quarantine_keeps_ended_ids_out_of_use() {
    let (mut sim, mut b) = two_clients();
    sim.send(&mut b, OUT, &cdn(0x4000));
    assert_eq!(sim.gre_in(SERVER, 0x4100, b"late").0, Verdict::UnknownCall);
    // Block 0x41 still holds the ended call's 0x4100: host 3 gets 0x4200.
    let mut c = Conn::client_inside(host(3), 40000, SERVER);
    sim.start_control(&mut c);
    let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
    assert_eq!(u16_at(&out, 12), 0x4200);
    sim.advance(Duration::from_secs(61));
    let mut d = Conn::client_inside(host(4), 40000, SERVER);
    sim.start_control(&mut d);
    let (_, out) = sim.send(&mut d, OUT, &ocrq(0x4000));
    assert_eq!(u16_at(&out, 12), 0x4100, "released after the quarantine");
}

#[test]
fn full_block_refuses_visibly_and_never_duplicates() {
    let cfg = AlgConfig {
        max_calls_per_host: 1000,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    // One connection's 256 ids with high byte 0x12 fill its block...
    let mut seen = std::collections::HashSet::new();
    for low in 0..=255u16 {
        let (v, out) = sim.send(&mut c, OUT, &ocrq(0x1200 | low));
        assert_eq!(v, Verdict::Accept, "the block is the inside id's own");
        assert!(seen.insert(u16_at(&out, 12)));
    }
    // ...so its next call with that high byte is refused (its first byte
    // must go out as the block's before the second byte is known) once
    // the first is in quarantine.
    sim.send(&mut c, OUT, &cdn(0x1234));
    let (v, _) = sim.send(&mut c, OUT, &ocrq(0x1234));
    assert_eq!(v, Verdict::Drop(DropReason::CallRefused));
    assert_eq!(sim.alg.stats().alloc_failures, 1);
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::CallRefused {
            reason: RefuseReason::BlockFull,
            live_ids: 255,
            quarantined_ids: 1,
            ..
        }
    )));
    // Another host with the same ids takes another block.
    let mut d = Conn::client_inside(host(2), 40000, SERVER);
    sim.start_control(&mut d);
    let (v, out) = sim.send(&mut d, OUT, &ocrq(0x1234));
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Modified, 0x1334));
    assert!(seen.insert(0x1334));
    // The dropped segment left no trace: another high byte still works on
    // the full connection once the TCP sender retransmits something else.
    let (v, out) = sim.send(&mut c, OUT, &ocrq(0x1300));
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Modified, 0x1400));
    // A different server has its own id space.
    let mut e = Conn::client_inside(host(2), 40001, common::ROUTER);
    sim.start_control(&mut e);
    assert_eq!(sim.send(&mut e, OUT, &ocrq(0x1234)).0, Verdict::Accept);
}

#[test]
fn limits_per_host_and_total() {
    let cfg = AlgConfig {
        max_calls_per_host: 2,
        max_calls: 3,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    assert_eq!(sim.send(&mut c, OUT, &ocrq(1)).0, Verdict::Accept);
    assert_eq!(sim.send(&mut c, OUT, &ocrq(2)).0, Verdict::Accept);
    assert_eq!(
        sim.send(&mut c, OUT, &ocrq(3)).0,
        Verdict::Drop(DropReason::CallRefused)
    );
    assert_eq!(sim.alg.stats().refused_host_limit, 1);
    let mut d = Conn::client_inside(host(2), 40000, SERVER);
    sim.start_control(&mut d);
    assert_eq!(sim.send(&mut d, OUT, &ocrq(1)).0, Verdict::Modified);
    assert_eq!(
        sim.send(&mut d, OUT, &ocrq(5)).0,
        Verdict::Drop(DropReason::CallRefused)
    );
    assert_eq!(sim.alg.stats().refused_total_limit, 1);
    // Ending a call frees room.
    sim.send(&mut c, OUT, &cdn(1));
    assert_eq!(sim.send(&mut d, OUT, &ocrq(5)).0, Verdict::Modified);
    sim.send(&mut d, OUT, &cdn(1));
    // Host 1's ended call is in quarantine and counts against host 1 only.
    assert_eq!(
        sim.send(&mut c, OUT, &ocrq(3)).0,
        Verdict::Drop(DropReason::CallRefused)
    );
    assert_eq!(sim.alg.stats().refused_host_limit, 2);
}

#[test]
fn refused_segment_is_rolled_back_whole() {
    let cfg = AlgConfig {
        max_calls_per_host: 1,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    // Two requests coalesced: the second is refused, so the whole segment
    // is dropped and the first call must not exist either.
    let seg = [ocrq(1), ocrq(2)].concat();
    assert_eq!(
        sim.send(&mut c, OUT, &seg).0,
        Verdict::Drop(DropReason::CallRefused)
    );
    assert_eq!(sim.alg.stats().calls_active, 0);
    assert!(!sim
        .events
        .iter()
        .any(|e| matches!(e, Event::CallStarted(_))));
    // The sender retransmits only the first one: it works.
    assert_eq!(sim.send(&mut c, OUT, &ocrq(1)).0, Verdict::Accept);
    assert_eq!(sim.alg.stats().calls_active, 1);
}

#[test]
fn random_policy_spreads_slots() {
    let cfg = AlgConfig {
        id_policy: IdPolicy::Random,
        seed: 42,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut ids = std::collections::HashSet::new();
    for n in 1..=20 {
        let mut c = Conn::client_inside(host(n), 40000, SERVER);
        sim.start_control(&mut c);
        let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
        let id = u16_at(&out, 12);
        // Each connection's first call takes the next empty block.
        assert_eq!(id >> 8, 0x40 + u16::from(n) - 1);
        assert!(ids.insert(id));
    }
    assert!(
        ids.iter().filter(|&&i| i & 0xff == 0).count() < 3,
        "random slots"
    );
}

#[test]
fn out_of_order_segment_is_dropped_then_retransmission_works() {
    let (mut sim, mut b) = two_clients();
    let m1 = sli(SRV_ID);
    let m2 = ccrq(0x4000);
    let seq = b.seq[0];
    let (v, _) = sim.send_at(&b, OUT, seq + m1.len() as u32, Flags::default(), &m2);
    assert_eq!(v, Verdict::Drop(DropReason::OutOfOrder));
    sim.send(&mut b, OUT, &m1);
    let (v, out) = sim.send(&mut b, OUT, &m2);
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Modified, 0x4100));
}

#[test]
fn desync_stops_translation_but_passes_packets() {
    let (mut sim, mut b) = two_clients();
    let mut bad = sli(0x4100);
    bad[4] = 0xde; // bad magic cookie
    let (v, out) = sim.send(&mut b, IN, &bad);
    assert_eq!((v, out.clone()), (Verdict::Accept, bad));
    assert_eq!(sim.alg.stats().desyncs, 1);
    let (v, out) = sim.send(&mut b, IN, &sli(0x4100));
    assert_eq!(
        (v, u16_at(&out, 12)),
        (Verdict::Accept, 0x4100),
        "no longer translated"
    );
    // Logged once: one event.
    let n = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::Desync { .. }))
        .count();
    assert_eq!(n, 1);
    // GRE of its calls still flows.
    assert_eq!(sim.gre_in(SERVER, 0x4100, b"x").0, Verdict::Modified);
}

/// The TCP header of a control segment is checked before anything is read
/// from it: a data offset below 5 words or beyond the segment leaves the
/// packet unchanged and counted as malformed, never as control traffic.
#[test]
fn control_segments_with_impossible_tcp_headers_pass_unread() {
    let (mut sim, _) = two_clients();
    let good = tcp_packet(
        (host(2), 40001),
        (SERVER, 1723),
        5,
        Flags::default(),
        &sli(0x4100),
    );
    let data_offset = 20 + 12;
    assert_eq!(good[data_offset], 5 << 4);
    let tcp_len = good.len() - 20;
    for (words, readable) in [(4u8, false), (15, false), ((tcp_len / 4) as u8, true)] {
        let mut pkt = good.clone();
        pkt[data_offset] = words << 4;
        let before = sim.alg.stats().clone();
        let (v, out) = sim.packet(pkt.clone(), OUT);
        let after = sim.alg.stats();
        assert_eq!((v, &out), (Verdict::Accept, &pkt), "data offset {words}");
        assert_eq!(
            (
                after.malformed - before.malformed,
                after.control_packets - before.control_packets
            ),
            if readable { (0, 1) } else { (1, 0) },
            "data offset {words}"
        );
    }
}

#[test]
fn malformed_inputs_get_defined_verdicts() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", {
            let mut m = sli(1);
            m[0] = 0;
            m[1] = 0;
            m
        }),
        ("length beyond the message", {
            let mut m = sli(1);
            m[1] = 200;
            m
        }),
        ("unknown type with an impossible length", {
            let mut m = sli(1);
            m[9] = 99;
            m[0..2].copy_from_slice(&2000u16.to_be_bytes());
            m
        }),
        ("not a control message", {
            let mut m = sli(1);
            m[3] = 2;
            m
        }),
    ];
    for (name, m) in cases {
        let (mut sim, mut b) = two_clients();
        let (v, out) = sim.send(&mut b, IN, &m);
        assert_eq!((v, out), (Verdict::Accept, m.clone()), "{name}");
        assert_eq!(sim.alg.stats().desyncs, 1, "{name}");
    }
    let (mut sim, _) = two_clients();
    let good = tcp_packet(
        (host(2), 40001),
        (SERVER, 1723),
        5,
        Flags::default(),
        &sli(1),
    );
    for cut in [0, 1, 19, 20, 30, 39] {
        let (v, _) = sim.packet(good[..cut].to_vec(), OUT);
        assert_eq!(v, Verdict::Accept, "truncated to {cut}");
    }
    // IP total length larger than the buffer.
    let mut long = good.clone();
    long[3] = long[3].wrapping_add(10);
    assert_eq!(sim.packet(long, OUT).0, Verdict::Accept);
    // Non-first fragment.
    let mut frag = gre_packet(SERVER, ROUTER, 0x4100, None, None, b"frag");
    frag[6] = 0x00;
    frag[7] = 0x10;
    assert_eq!(sim.packet(frag, IN).0, Verdict::Accept);
    // GRE version 0 and truncated GRE are not touched.
    let mut v0 = gre_packet(SERVER, ROUTER, 0x4100, None, None, b"v0");
    v0[21] = 0x00;
    let (v, out) = sim.packet(v0.clone(), IN);
    assert_eq!((v, out), (Verdict::UnknownCall, v0));
    // The S flag announces a sequence number the packet does not hold.
    let mut short = gre_packet(SERVER, ROUTER, 0x4100, None, None, b"");
    short[20] |= 0x10;
    assert_eq!(sim.packet(short, IN).0, Verdict::UnknownCall);
    let s = sim.alg.stats();
    assert!(s.malformed >= 7 && s.fragments == 1, "{s:?}");
}

#[test]
fn ip_and_tcp_options_are_handled() {
    let (mut sim, b) = two_clients();
    // Build a packet with a 4-byte IP option (NOP x4) and 12 bytes of TCP
    // options by hand, then fix checksums with the wire helpers.
    let payload = sli(0x4100);
    let mut tcp = vec![0u8; 32];
    tcp[0..2].copy_from_slice(&1723u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&40001u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&b.seq[1].to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18;
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    tcp.extend_from_slice(&payload);
    let mut ip = vec![0x46, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&SERVER.octets());
    ip.extend_from_slice(&host(2).octets());
    ip.extend_from_slice(&[1, 1, 1, 1]);
    let total = (ip.len() + tcp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut pkt = [ip, tcp].concat();
    {
        let mut v = pptp_alg::wire::ipv4::Ipv4Packet::new_checked(&mut pkt[..]).unwrap();
        v.fill_checksum();
        let mut t = pptp_alg::wire::tcp::TcpSegment::new_checked(v.payload_mut()).unwrap();
        t.fill_checksum(SERVER, host(2));
    }
    let (v, out) = sim.packet(pkt, IN);
    assert_eq!(v, Verdict::Modified);
    let p = checked_tcp_payload(&out);
    assert_eq!(u16_at(&p, 12), 0x4000);
}

#[test]
fn a_new_connection_on_a_reused_tuple_starts_afresh() {
    let (mut sim, mut b) = two_clients();
    let seq = b.seq[0];
    sim.send_at(
        &b,
        OUT,
        seq,
        Flags {
            fin: true,
            ..Default::default()
        },
        &[],
    );
    // Same addresses and ports, new sequence numbers, before the linger ends.
    b.seq = [77_000, 88_000];
    sim.start_control(&mut b);
    let (v, out) = sim.send(&mut b, OUT, &ocrq(0x4000));
    assert_eq!(
        (v, u16_at(&out, 12)),
        (Verdict::Modified, 0x4200),
        "0x4100 is in quarantine"
    );
    sim.advance(Duration::from_secs(11));
    assert_eq!(
        sim.alg.connections(),
        2,
        "the new connection is not forgotten with the old one"
    );
    let (_, out) = sim.send(&mut b, IN, &sli(0x4200));
    assert_eq!(u16_at(&out, 12), 0x4000);
}

/// The rules cannot queue an inside client's SYN (its masquerade binding
/// is made after the forward hook): the SYN-ACK gives that stream's start,
/// so even a first message split into tiny segments is translated.
#[test]
fn inside_stream_starts_from_the_syn_ack_when_the_syn_is_unseen() {
    let (mut sim, _) = two_clients();
    let mut c = Conn::client_inside(host(3), 40009, SERVER);
    let isn = c.seq[0];
    let synack = Flags {
        syn: true,
        ack: Some(isn + 1),
        ..Default::default()
    };
    sim.send_at(&c, IN, c.seq[1], synack, &[]);
    c.seq = [isn + 1, c.seq[1] + 1];
    let stream = [simple(SCCRQ), ocrq(0x4000)].concat();
    let mut out = vec![];
    for chunk in stream.chunks(3) {
        let (v, o) = sim.send(&mut c, OUT, chunk);
        assert!(matches!(v, Verdict::Accept | Verdict::Modified));
        out.extend(o);
    }
    assert_eq!(
        u16_at(&out, 156 + 12),
        0x4200,
        "0x4000 and 0x4100 are taken"
    );
    assert_eq!(sim.alg.stats().unsynced_segments, 0);
}

/// An undefined message type with a sane Length keeps the framing: it is
/// skipped and counted, and translation goes on (peers ignore such
/// messages, so passing the rest untranslated would let the connection's
/// later calls collide with other hosts' NAT ids).
#[test]
fn unknown_message_types_are_skipped_by_their_length() {
    let mut unknown = msg(SLI, &[(12, 0x4000)]);
    unknown[9] = 99;
    unknown.extend_from_slice(&[0x40; 8]);
    unknown[0..2].copy_from_slice(&32u16.to_be_bytes());
    let stream = [unknown.clone(), ccrq(0x4000), unknown.clone(), sli(0x0777)].concat();
    for chunk in [stream.len(), 7, 1] {
        let (mut sim, mut b) = two_clients();
        let mut out = vec![];
        for c in stream.chunks(chunk) {
            let (v, o) = sim.send(&mut b, OUT, c);
            assert_ne!(v, Verdict::Drop(DropReason::OutOfOrder));
            out.extend(o);
        }
        let mut want = stream.clone();
        // The Call-Clear-Request's id: 0x4000 -> 0x4100.
        want[32 + 12] = 0x41;
        assert_eq!(out, want, "chunks of {chunk}");
        let s = sim.alg.stats();
        assert_eq!((s.unknown_messages, s.desyncs), (2, 0), "chunks of {chunk}");
    }
}

/// A restart keeps the calls: the new engine translates their GRE and
/// control messages and never hands their NAT ids to another host.
#[test]
fn saved_calls_survive_a_restart() {
    let (sim, mut b) = two_clients();
    let saved = sim.alg.saved_calls();
    assert_eq!(saved.len(), 2);
    let json = serde_json::to_string(&saved).unwrap();
    let saved: Vec<pptp_alg::alg::SavedCall> = serde_json::from_str(&json).unwrap();

    let mut sim = Sim::new(AlgConfig::default());
    assert_eq!(sim.alg.restore_calls(sim.now, &saved), 2);
    sim.drain();
    let started = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::CallStarted(_)))
        .count();
    assert_eq!(started, 2, "the fast path learns the restored calls");
    let (v, pkt) = sim.gre_in(SERVER, 0x4100, b"after restart");
    assert_eq!(
        (v, gre_dst_and_id(&pkt)),
        (Verdict::Modified, (host(2), 0x4000))
    );
    // The control connection resumes mid-stream at a message boundary.
    let (v, out) = sim.send(&mut b, IN, &sli(0x4100));
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Modified, 0x4000));
    // Another host asking for 0x4000 does not get a restored NAT id.
    let mut c = Conn::client_inside(host(3), 40000, SERVER);
    sim.start_control(&mut c);
    let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
    assert_eq!(u16_at(&out, 12), 0x4200);
    // Restoring twice, or a call whose id is taken, adds nothing.
    assert_eq!(sim.alg.restore_calls(sim.now, &saved), 0);
    // The call still ends normally.
    sim.send(&mut b, OUT, &cdn(0x4000));
    assert_eq!(sim.gre_in(SERVER, 0x4100, b"late").0, Verdict::UnknownCall);
}

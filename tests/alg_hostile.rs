//! Hostile and unlucky input against the engine: spoofed teardown segments,
//! SYN floods and a full connection table, calls created and ended in one
//! segment, tiny limits, and a Call-Disconnect-Notify whose id fits two
//! calls. Each test failed before its fix.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, DropReason, EndCause, Event, Verdict};
use std::net::Ipv4Addr;

use Direction::{FromInside as OUT, ToInside as IN};

fn one_call(sim: &mut Sim, n: u8, port: u16) -> Conn {
    let mut c = Conn::client_inside(host(n), port, SERVER);
    sim.start_control(&mut c);
    sim.send(&mut c, OUT, &ocrq(0x4000));
    sim.send(&mut c, IN, &ocrp(0x0700, 0x4000, 1));
    c
}

fn ended(sim: &Sim) -> usize {
    sim.events
        .iter()
        .filter(|e| matches!(e, Event::CallEnded(..)))
        .count()
}

/// A blind spray of SYN-ACKs and FIN|ACKs with every sequence number but
/// the right one ends no call; the real FIN at the stream position does.
#[test]
fn spoofed_teardown_segments_end_nothing() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut c = one_call(&mut sim, 1, 40000);
    let right = c.seq[1];
    for k in 1..2000u32 {
        let seq = right.wrapping_add(k.wrapping_mul(2_147_483));
        for flags in [
            Flags {
                syn: true,
                ack: Some(k),
                ..Default::default()
            },
            Flags {
                fin: true,
                ack: Some(k),
                ..Default::default()
            },
            Flags {
                rst: true,
                ..Default::default()
            },
        ] {
            assert_eq!(sim.send_at(&c, IN, seq, flags, &[]).0, Verdict::Accept);
        }
    }
    // Also at the right position: a SYN on a live connection changes nothing.
    let syn = Flags {
        syn: true,
        ack: Some(9),
        ..Default::default()
    };
    sim.send_at(&c, IN, right.wrapping_sub(1), syn, &[]);
    assert_eq!(ended(&sim), 0);
    assert_eq!(sim.alg.stats().ignored_teardowns, 2 * 1999);
    assert_eq!(
        gre_dst_and_id(&sim.gre_in(SERVER, 0x4000, b"x").1).0,
        host(1)
    );
    // The connection still translates at its position.
    let (v, _) = sim.send(&mut c, IN, &sli(0x4000));
    assert_eq!(v, Verdict::Accept);
    // The real FIN ends the call.
    let fin = Flags {
        fin: true,
        ack: Some(c.seq[0]),
        ..Default::default()
    };
    sim.send_at(&c, IN, c.seq[1], fin, &[]);
    assert_eq!(ended(&sim), 1);
}

/// 20,000 spoofed SYNs take no connection slot; with the table full of
/// connections with calls, a new connection's request is dropped (never
/// passed untranslated) and reported; a connection without calls gives its
/// slot up.
#[test]
fn syn_flood_and_full_table() {
    let cfg = AlgConfig {
        max_connections: 2,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    for k in 0..20_000u32 {
        let src = (Ipv4Addr::from(0xc000_0200 + k), 1024 + (k % 60000) as u16);
        let pkt = tcp_packet(
            src,
            (host(9), 1723),
            k,
            Flags {
                syn: true,
                ..Default::default()
            },
            &[],
        );
        assert_eq!(sim.packet(pkt, IN).0, Verdict::Accept);
    }
    assert_eq!(sim.alg.connections(), 0);
    one_call(&mut sim, 1, 40000);
    one_call(&mut sim, 2, 40000);
    assert_eq!(sim.alg.connections(), 2);
    // Host 3 uses the same id as the others: it must not leave as is.
    let mut c = Conn::client_inside(host(3), 40000, SERVER);
    sim.open(&mut c);
    let (v, _) = sim.send(&mut c, OUT, &simple(SCCRQ));
    assert_eq!(v, Verdict::Drop(DropReason::ConnectionLimit));
    assert_eq!(sim.alg.stats().connection_limit, 1);
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::ConnectionRefused { .. })));
    // Once those connections are gone, host 4 has a connection with no
    // calls and host 5 one with a call: host 4's gives way to host 3.
    sim.advance(std::time::Duration::from_secs(400));
    assert_eq!(sim.alg.connections(), 0, "idle connections time out");
    let mut d = Conn::client_inside(host(4), 40000, SERVER);
    sim.start_control(&mut d);
    one_call(&mut sim, 5, 40000);
    let (v, _) = sim.send(&mut c, OUT, &simple(SCCRQ));
    assert_eq!(v, Verdict::Accept, "the call-less connection made room");
    assert_eq!(sim.alg.stats().connections_evicted, 1);
    let (v, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
    assert_eq!(v, Verdict::Modified);
    assert_ne!(u16_at(&out, 12), 0x4000);
}

/// Data of a connection whose position is unknown is dropped, not passed
/// with its Call IDs untranslated.
#[test]
fn unsynced_data_is_dropped() {
    let mut sim = Sim::new(AlgConfig::default());
    one_call(&mut sim, 1, 40000);
    let c = Conn::client_inside(host(2), 40000, SERVER);
    let tail = &ocrq(0x4000)[5..];
    let (v, _) = sim.send_at(&c, OUT, 77, Flags::default(), tail);
    assert_eq!(v, Verdict::Drop(DropReason::Unsynced));
    assert_eq!(sim.alg.stats().unsynced_segments, 1);
}

/// An inside server refusing a call (Outgoing-Call-Reply with result 2):
/// the call starts and ends in one segment, announced in that order, so
/// the fast path gets no element that outlives it.
#[test]
fn call_created_and_ended_in_one_segment_is_announced_in_order() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut s = Conn::server_inside(host(2), Ipv4Addr::new(192, 0, 2, 7), 40002);
    sim.start_control(&mut s);
    sim.send(&mut s, IN, &ocrq(7));
    sim.send(&mut s, OUT, &ocrp(0x0100, 7, 2));
    assert_eq!(lifecycle(&sim), [("start", 0x0100), ("end", 0x0100)]);
    assert_eq!(sim.alg.stats().ended_by(EndCause::ReplyFailure), 1);
    // A segment of requests each cleared at once, from an inside host.
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    sim.events.clear();
    let seg: Vec<u8> = (0..20u16)
        .flat_map(|i| [ocrq(i), cdn(i)].concat())
        .collect();
    sim.send(&mut c, OUT, &seg);
    let mut live = std::collections::HashSet::new();
    for e in &sim.events {
        match e {
            Event::CallStarted(c) => assert!(live.insert(c.nat_id)),
            Event::CallEnded(c, _) => assert!(live.remove(&c.nat_id), "ended before started"),
            _ => {}
        }
    }
    assert!(live.is_empty());
}

/// With max_calls 2, a segment of three failed Incoming-Call-Replies used
/// to make ending a call release a call the same segment created, then
/// look it up (a panic that stopped the daemon).
#[test]
fn tiny_limits_do_not_panic() {
    let cfg = AlgConfig {
        max_calls: 2,
        ..AlgConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    sim.send(&mut c, IN, &[icrq(1), icrq(2), icrq(3)].concat());
    let seg = [icrp(0x11, 1, 2), icrp(0x12, 2, 2), icrp(0x13, 3, 2)].concat();
    let (v, _) = sim.send(&mut c, OUT, &seg);
    assert!(matches!(
        v,
        Verdict::Accept | Verdict::Modified | Verdict::Drop(_)
    ));
    sim.alg.check_call_indexes().unwrap();
    assert!(sim.alg.quarantined() <= 2);
}

/// The server's own Call ID for call B equals the NAT id of call A on the
/// same connection: its Call-Disconnect-Notify for B ends B, not A, and
/// reaches the client unchanged (the server's own id, as RFC 2637 says).
#[test]
fn call_disconnect_notify_prefers_the_senders_own_id() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut c = Conn::client_inside(host(1), 40000, SERVER);
    sim.start_control(&mut c);
    let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
    let nat_a = u16_at(&out, 12);
    sim.send(&mut c, IN, &ocrp(0x0700, nat_a, 1));
    let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4001));
    let nat_b = u16_at(&out, 12);
    // Call B's server id is call A's NAT id.
    sim.send(&mut c, IN, &ocrp(nat_a, nat_b, 1));
    sim.events.clear();
    let (_, out) = sim.send(&mut c, IN, &cdn(nat_a));
    assert_eq!(u16_at(&out, 12), nat_a, "the server's own id is left");
    let gone: Vec<u16> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::CallEnded(c, _) => Some(c.inside_id),
            _ => None,
        })
        .collect();
    assert_eq!(gone, [0x4001]);
}

/// A restart keeps ended calls' NAT ids in quarantine for the time they had
/// left: another host's new call right after the restart never gets one
/// (it used to, and received the old call's late GRE).
#[test]
fn restart_keeps_the_quarantine() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut a = one_call(&mut sim, 1, 40000);
    sim.send(&mut a, OUT, &cdn(0x4000));
    sim.advance(std::time::Duration::from_secs(20));
    let saved = sim.alg.saved_calls();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].quarantine_left, Some(40));
    sim.alg = pptp_alg::alg::Alg::new(AlgConfig::default());
    assert_eq!(sim.alg.restore_calls(sim.now, &saved), 1);
    assert_eq!(sim.alg.quarantined(), 1);
    assert_eq!(sim.alg.stats().calls_active, 0);
    assert_eq!(sim.gre_in(SERVER, 0x4000, b"late").0, Verdict::UnknownCall);
    let mut b = Conn::client_inside(host(2), 40000, SERVER);
    sim.start_control(&mut b);
    let (_, out) = sim.send(&mut b, OUT, &ocrq(0x4000));
    assert_ne!(u16_at(&out, 12), 0x4000, "in quarantine");
    sim.advance(std::time::Duration::from_secs(41));
    assert_eq!(sim.alg.quarantined(), 0, "for the time it had left");
    let mut c = Conn::client_inside(host(3), 40000, SERVER);
    sim.start_control(&mut c);
    let (_, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
    assert_eq!(u16_at(&out, 12), 0x4000);
}

/// After a restart a connection's stream positions are unknown. A forged
/// segment that starts with a PPTP header must not set the position of the
/// stream towards the inside host (the real segments would then all be
/// "ahead" and dropped for good): only the inside host's acknowledgement
/// says where that stream goes on.
#[test]
fn forged_data_after_a_restart_does_not_take_the_stream() {
    let mut sim = Sim::new(AlgConfig::default());
    let mut c = one_call(&mut sim, 1, 40000);
    let saved = sim.alg.saved_calls();
    sim.alg = pptp_alg::alg::Alg::new(AlgConfig::default());
    sim.alg.restore_calls(sim.now, &saved);
    // Before the inside host said anything: a forged Echo-Request behind
    // the real stream is picked up, unconfirmed...
    let forged = c.seq[1].wrapping_sub(5000);
    let (v, _) = sim.send_at(&c, IN, forged, Flags::default(), &simple(ECHORQ));
    assert_eq!(v, Verdict::Accept);
    // ...until the inside host's next segment acknowledges where the
    // stream really is: the pick-up is undone.
    sim.send(&mut c, OUT, &simple(ECHORQ));
    assert_eq!(sim.alg.stats().forged_resyncs, 1);
    // The server's real message is translated.
    let (v, out) = sim.send(&mut c, IN, &sli(0x4000));
    assert_eq!((v, u16_at(&out, 12)), (Verdict::Accept, 0x4000));
    let (_, out) = sim.send(&mut c, OUT, &ccrq(0x4000));
    assert_eq!(u16_at(&out, 12), 0x4000);
    // Once the host's position is known, a forged message elsewhere is
    // dropped, and the real stream goes on.
    let (v, _) = sim.send_at(&c, IN, forged, Flags::default(), &simple(ECHORQ));
    assert_eq!(v, Verdict::Accept, "behind the stream: a retransmission");
    let ahead = c.seq[1].wrapping_add(7000);
    let (v, _) = sim.send_at(&c, IN, ahead, Flags::default(), &simple(ECHORQ));
    assert_eq!(v, Verdict::Drop(DropReason::OutOfOrder));
    let (v, _) = sim.send(&mut c, IN, &cdn(0x0700));
    assert_eq!(v, Verdict::Accept);
    assert_eq!(sim.alg.stats().ended_by(EndCause::Disconnect), 1);
}

/// A spoofed SYN-ACK on a connection not tracked yet (after a restart, or
/// before its first data) says where the inside host's stream starts. If
/// the engine believed it, the host's real requests would pass as
/// "retransmissions", untranslated (found by the engine fuzz target).
#[test]
fn spoofed_syn_ack_does_not_place_the_inside_stream() {
    let mut sim = Sim::new(AlgConfig::default());
    one_call(&mut sim, 1, 40000);
    let c = Conn::client_inside(host(2), 40000, SERVER);
    for ack in [c.seq[0].wrapping_add(4000), c.seq[0].wrapping_sub(4000)] {
        let mut c = c;
        let synack = Flags {
            syn: true,
            ack: Some(ack),
            ..Default::default()
        };
        sim.send_at(&c, IN, 77, synack, &[]);
        // The host's real stream, from a message start.
        assert_eq!(sim.send(&mut c, OUT, &simple(SCCRQ)).0, Verdict::Accept);
        let (v, out) = sim.send(&mut c, OUT, &ocrq(0x4000));
        assert_eq!(v, Verdict::Modified, "translated, ack {ack}");
        assert_ne!(u16_at(&out, 12), 0x4000);
        let fin = Flags {
            fin: true,
            ack: Some(c.seq[1]),
            ..Default::default()
        };
        sim.send_at(&c, OUT, c.seq[0], fin, &[]);
        sim.advance(std::time::Duration::from_secs(11));
    }
}

/// A segment exactly 2^31 bytes away from the stream position (found by the
/// engine fuzz target: negating the distance overflowed, a panic in debug
/// builds) is a retransmission as far as the engine can tell.
#[test]
fn a_segment_half_the_sequence_space_away_does_not_panic() {
    let mut sim = Sim::new(AlgConfig::default());
    let c = one_call(&mut sim, 1, 40000);
    let far = c.seq[0].wrapping_add(1 << 31);
    let (v, _) = sim.send_at(&c, OUT, far, Flags::default(), &ocrq(0x4000));
    assert!(matches!(v, Verdict::Accept | Verdict::Drop(_)));
    sim.alg.check_call_indexes().unwrap();
}

/// The inside host's own SYN places its stream; a spoofed SYN-ACK that
/// follows it on the same tuple must not move it (a stream placed there
/// would let the host's first bytes, cut before a whole header, pass as
/// already seen).
#[test]
fn spoofed_syn_ack_after_the_inside_syn_changes_nothing() {
    let mut sim = Sim::new(AlgConfig::default());
    one_call(&mut sim, 1, 40000);
    let mut c = Conn::client_inside(host(2), 40000, SERVER);
    let syn = Flags {
        syn: true,
        ..Default::default()
    };
    sim.send_at(&c, OUT, c.seq[0], syn, &[]);
    c.seq[0] = c.seq[0].wrapping_add(1);
    let spoofed = Flags {
        syn: true,
        ack: Some(c.seq[0].wrapping_add(4000)),
        ..Default::default()
    };
    sim.send_at(&c, IN, 4242, spoofed, &[]);
    // The host's first bytes, cut before a whole header, are tracked from
    // its SYN, so its request is translated.
    let stream = [simple(SCCRQ), ocrq(0x4000)].concat();
    let (v, _) = sim.send(&mut c, OUT, &stream[..5]);
    assert_eq!(v, Verdict::Accept);
    let (v, out) = sim.send(&mut c, OUT, &stream[5..]);
    assert_eq!(v, Verdict::Modified);
    assert_ne!(u16_at(&out, 156 - 5 + 12), 0x4000);
}

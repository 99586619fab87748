//! Hairpin NAT in the pure engine (issue #14): inside clients reaching an inside server
//! through the router's public address. The engine sees such a control connection, between
//! the kernel's dnat and masquerade, as client <-> server; the caller tells it from conntrack
//! that the connection is hairpinned ([`Alg::set_hairpin`]). Ids are translated as for any
//! inside client; GRE both ways ends on the router and is sent on.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, ConnKey, Direction, EndCause, Event, Hairpin, Verdict};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use Direction::{FromInside as OUT, ToInside as IN};

/// The inside server, behind the public address [`ROUTER`].
const SRV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// The router's address towards the server: the masquerade address.
const MASQ: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const HP: Hairpin = Hairpin {
    public: ROUTER,
    masq: MASQ,
};

fn key(c: &Conn) -> ConnKey {
    ConnKey {
        inside: SocketAddrV4::new(c.inside.0, c.inside.1),
        outside: SocketAddrV4::new(c.outside.0, c.outside.1),
    }
}

fn src_dst_id(pkt: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16) {
    let (dst, id) = gre_dst_and_id(pkt);
    (Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]), dst, id)
}

/// GRE from `src` to `dst` with `id`, through the engine as the GRE queue hands it over.
fn gre(sim: &mut Sim, src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> (Verdict, Vec<u8>) {
    sim.packet(gre_packet(src, dst, id, Some(1), None, b"lcp"), IN)
}

/// One hairpinned call of `client` with `client_id`, answered by the server with
/// `server_id`: the connection, and the NAT id the server was given. Classifies the
/// connection after the request, as the daemon does when the call starts.
fn hairpin_call(sim: &mut Sim, client: Ipv4Addr, client_id: u16, server_id: u16) -> (Conn, u16) {
    let mut c = Conn::client_inside(client, 40001, SRV);
    sim.start_control(&mut c);
    let (v, out) = sim.send(&mut c, OUT, &ocrq(client_id));
    assert_ne!(v, Verdict::Drop(pptp_alg::alg::DropReason::CallRefused));
    let nat = u16_at(&out, 12);
    let started = sim.events.iter().rev().find_map(|e| match e {
        Event::CallStarted(i) => Some(i.clone()),
        _ => None,
    });
    let started = started.expect("call started");
    assert_eq!(started.hairpin, None, "not classified yet");
    assert_eq!(sim.alg.hairpin(&key(&c)), None);
    sim.alg.set_hairpin(key(&c), Some(HP));
    assert_eq!(sim.alg.hairpin(&key(&c)), Some(Some(HP)));
    let (_, out) = sim.send(&mut c, IN, &ocrp(server_id, nat, 1));
    assert_eq!(u16_at(&out, 12), server_id, "the server's own id passes");
    assert_eq!(
        u16_at(&out, 14),
        client_id,
        "the NAT id goes back to the client's"
    );
    let answered = sim.events.iter().rev().find_map(|e| match e {
        Event::CallAnswered(i) => Some(i.clone()),
        _ => None,
    });
    let answered = answered.expect("answered");
    assert_eq!(answered.hairpin, Some(HP));
    assert_eq!(answered.outside_id, Some(server_id));
    (c, nat)
}

/// The case: two clients with the same Call ID dialing the public address. The
/// server sees two ids; each client's GRE reaches the server (destination rewritten, the
/// server's id unchanged), the server's GRE reaches the right client with its own id.
#[test]
fn two_clients_same_call_id_gre_both_ways() {
    let mut sim = Sim::new(AlgConfig::default());
    let (a, nat_a) = hairpin_call(&mut sim, host(2), 0x4000, 0x0100);
    let (b, nat_b) = hairpin_call(&mut sim, host(3), 0x4000, 0x0101);
    assert_ne!(nat_a, nat_b, "the server must see two distinct ids");

    // Client to the public address, with the server's id: on to the server.
    for (c, sid) in [(&a, 0x0100), (&b, 0x0101)] {
        let (v, out) = gre(&mut sim, c.inside.0, ROUTER, sid);
        assert_eq!(v, Verdict::Modified);
        // The source stays: the kernel rewrites it to MASQ once the packet is routed.
        assert_eq!(src_dst_id(&out), (c.inside.0, SRV, sid));
    }
    // Server to the masquerade address, with the NAT id: on to the right client, own id.
    for (c, nat) in [(&a, nat_a), (&b, nat_b)] {
        let (v, out) = gre(&mut sim, SRV, MASQ, nat);
        assert_eq!(v, Verdict::Modified);
        assert_eq!(src_dst_id(&out), (SRV, c.inside.0, 0x4000));
    }
    assert_eq!(sim.alg.stats().gre_hairpin, 2);
    assert_eq!(sim.alg.stats().gre_unknown_call, 0);
    let calls = sim.alg.calls(sim.now);
    assert!(calls.iter().all(|c| c.hairpin == Some(HP)), "{calls:?}");
    assert!(calls
        .iter()
        .all(|c| c.packets_in == 1 && c.packets_out == 1));
}

/// Only what names a live hairpinned call of the sender is sent on: another client's
/// server id, another destination, an unclassified or plain connection are not.
#[test]
fn only_the_senders_own_hairpinned_calls() {
    let mut sim = Sim::new(AlgConfig::default());
    let (_a, _) = hairpin_call(&mut sim, host(2), 0x4000, 0x0100);
    // host 3 has no call with server id 0x0100.
    assert_eq!(
        gre(&mut sim, host(3), ROUTER, 0x0100).0,
        Verdict::UnknownCall
    );
    // host 2's call, but to another router address than the one it dialed.
    assert_eq!(
        gre(&mut sim, host(2), Ipv4Addr::new(198, 51, 100, 2), 0x0100).0,
        Verdict::UnknownCall
    );
    // A connection the caller found plain (an inside client of an outside server): its
    // client's GRE to the router is nobody's.
    let mut p = Conn::client_inside(host(4), 40001, SERVER);
    sim.start_control(&mut p);
    let (_, out) = sim.send(&mut p, OUT, &ocrq(0x4000));
    sim.alg.set_hairpin(key(&p), None);
    assert_eq!(sim.alg.hairpin(&key(&p)), Some(None));
    sim.send(&mut p, IN, &ocrp(0x0100, u16_at(&out, 12), 1));
    assert_eq!(
        gre(&mut sim, host(4), ROUTER, 0x0100).0,
        Verdict::UnknownCall
    );
    // Not classified: the same.
    let mut q = Conn::client_inside(host(5), 40001, SRV);
    sim.start_control(&mut q);
    let (_, out) = sim.send(&mut q, OUT, &ocrq(0x4000));
    sim.send(&mut q, IN, &ocrp(0x0102, u16_at(&out, 12), 1));
    assert_eq!(
        gre(&mut sim, host(5), ROUTER, 0x0102).0,
        Verdict::UnknownCall
    );
    assert_eq!(sim.alg.stats().gre_hairpin, 0);
    assert_eq!(sim.alg.stats().gre_unknown_call, 4);
    // Classifying a connection the engine does not track records nothing.
    let ghost = Conn::client_inside(host(9), 40009, SRV);
    sim.alg.set_hairpin(key(&ghost), Some(HP));
    assert_eq!(sim.alg.hairpin(&key(&ghost)), None);
}

/// Whatever the ids: client ids equal to the server's, to the other client's NAT id, at the
/// ends of the range; every field and GRE both ways come out right.
#[test]
fn any_client_and_server_ids() {
    let cases: [(u16, u16, u16); 5] = [
        (0x4000, 0x4000, 0x4000),
        (0x0001, 0xffff, 0x0001),
        (0xffff, 0x0000, 0x4100),
        (0x4100, 0x4000, 0x4100),
        (0x1234, 0x1234, 0x1235),
    ];
    for (ida, idb, sid) in cases {
        let mut sim = Sim::new(AlgConfig::default());
        let (a, nat_a) = hairpin_call(&mut sim, host(2), ida, sid);
        let (b, nat_b) = hairpin_call(&mut sim, host(3), idb, sid.wrapping_add(1));
        assert_ne!(nat_a, nat_b);
        let (_, out) = gre(&mut sim, SRV, MASQ, nat_a);
        assert_eq!(
            src_dst_id(&out),
            (SRV, a.inside.0, ida),
            "{ida:#x} {sid:#x}"
        );
        let (_, out) = gre(&mut sim, SRV, MASQ, nat_b);
        assert_eq!(src_dst_id(&out), (SRV, b.inside.0, idb), "{idb:#x}");
        let (_, out) = gre(&mut sim, a.inside.0, ROUTER, sid);
        assert_eq!(src_dst_id(&out), (a.inside.0, SRV, sid));
        let (_, out) = gre(&mut sim, b.inside.0, ROUTER, sid.wrapping_add(1));
        assert_eq!(src_dst_id(&out), (b.inside.0, SRV, sid.wrapping_add(1)));
    }
}

/// Control messages of a hairpinned connection cut at every byte translate to the bytes an
/// uncut one gives.
#[test]
fn split_messages_translate_identically() {
    let whole = {
        let mut sim = Sim::new(AlgConfig::default());
        let (mut c, nat) = hairpin_call(&mut sim, host(2), 0x4000, 0x0100);
        let (_, sli_in) = sim.send(&mut c, IN, &sli(nat));
        let (_, ccrq_out) = sim.send(&mut c, OUT, &ccrq(0x4000));
        (nat, sli_in, ccrq_out)
    };
    let mut sim = Sim::new(AlgConfig::default());
    // Another client first, so this one's id is really translated.
    hairpin_call(&mut sim, host(3), 0x4000, 0x0101);
    let (mut c, nat) = hairpin_call(&mut sim, host(2), 0x4000, 0x0100);
    assert_ne!(nat, whole.0);
    let mut sli_in = Vec::new();
    for b in sli(nat).chunks(1) {
        sli_in.extend(sim.send(&mut c, IN, b).1);
    }
    assert_eq!(
        sli_in, whole.1,
        "Set-Link-Info to the client names its own id"
    );
    let mut ccrq_out = Vec::new();
    for b in ccrq(0x4000).chunks(1) {
        ccrq_out.extend(sim.send(&mut c, OUT, b).1);
    }
    assert_eq!(
        u16_at(&ccrq_out, 12),
        nat,
        "Call-Clear-Request carries the NAT id"
    );
}

/// A call's end stops its GRE both ways; the connection's classification goes with it.
#[test]
fn teardown_stops_gre_and_forgets_the_connection() {
    let mut sim = Sim::new(AlgConfig::default());
    let (mut a, nat) = hairpin_call(&mut sim, host(2), 0x4000, 0x0100);
    sim.send(&mut a, IN, &cdn(0x0100));
    let ended = sim.events.iter().find_map(|e| match e {
        Event::CallEnded(i, cause) => Some((i.clone(), *cause)),
        _ => None,
    });
    let (info, cause) = ended.expect("ended");
    assert_eq!(cause, EndCause::Disconnect);
    assert_eq!(
        info.hairpin,
        Some(HP),
        "the caller removes its elements from this"
    );
    assert_eq!(
        gre(&mut sim, host(2), ROUTER, 0x0100).0,
        Verdict::UnknownCall
    );
    assert_eq!(gre(&mut sim, SRV, MASQ, nat).0, Verdict::UnknownCall);
    // FIN both ways, then the linger: the connection and what the caller told go.
    for d in [OUT, IN] {
        let (src, dst) = ends(&a, d);
        let i = usize::from(d == IN);
        let fin = Flags {
            fin: true,
            ack: Some(a.seq[1 - i]),
            ..Default::default()
        };
        sim.packet(tcp_packet(src, dst, a.seq[i], fin, &[]), d);
        a.seq[i] += 1;
    }
    assert_eq!(sim.alg.hairpin(&key(&a)), Some(Some(HP)));
    sim.advance(Duration::from_secs(11));
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.alg.connections(), 0);
    assert_eq!(sim.alg.hairpin(&key(&a)), None);
}

/// An incoming call on a hairpinned connection (the server asks, the client answers): the
/// client's own id is translated in its reply, and GRE goes both ways as for its own calls.
#[test]
fn incoming_call_on_a_hairpinned_connection() {
    let mut sim = Sim::new(AlgConfig::default());
    // Another client's call first, so this one's id is really translated.
    hairpin_call(&mut sim, host(3), 0x4000, 0x0101);
    let mut c = Conn::client_inside(host(2), 40002, SRV);
    sim.start_control(&mut c);
    let (v, _) = sim.send(&mut c, IN, &icrq(0x0200));
    assert_eq!(v, Verdict::Accept, "the server's own id passes");
    let (_, out) = sim.send(&mut c, OUT, &icrp(0x4000, 0x0200, 1));
    let nat = u16_at(&out, 12);
    assert_ne!(
        nat, 0x4000,
        "the client's id collides with host 3's: translated"
    );
    assert_eq!(u16_at(&out, 14), 0x0200);
    sim.alg.set_hairpin(key(&c), Some(HP));
    let (_, out) = sim.send(&mut c, IN, &iccn(nat));
    assert_eq!(u16_at(&out, 12), 0x4000);
    let (v, out) = gre(&mut sim, SRV, MASQ, nat);
    assert_eq!(v, Verdict::Modified);
    assert_eq!(src_dst_id(&out), (SRV, host(2), 0x4000));
    let (v, out) = gre(&mut sim, host(2), ROUTER, 0x0200);
    assert_eq!(v, Verdict::Modified);
    assert_eq!(src_dst_id(&out), (host(2), SRV, 0x0200));
}

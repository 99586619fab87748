//! Hairpin NAT end to end (issue #14, root only): two LAN clients using the same Call ID
//! dial the router's public address, where the administrator's hairpin pair (dnat of
//! tcp/1723 to an inside server, masquerade towards it) sends them to a PPTP server on the
//! LAN. The tests assert which host gets which GRE bytes, from which source address and
//! with which Call ID, with the kernel fast path and without it.

#[path = "e2e/lab.rs"]
mod lab;

use std::collections::BTreeSet;

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 10;
const CALL_ID: u64 = 1000;
/// LAN host index of the PPTP server.
const SERVER_HOST: usize = 2;

/// Who dials the public address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// LAN hosts 0 and 1, through the administrator's hairpin pair to LAN host 2.
    Inside,
    /// WAN addresses 1 and 2, through a port forward to LAN host 0 that the router also
    /// masquerades towards the server (so the server needs no route back): conntrack NATs
    /// it both ways, exactly like a hairpin.
    OutsideMasqueraded,
}

fn hairpin(case: &str, daemon_flags: &[&str]) {
    hairpin_with(case, daemon_flags, &[], &[], Clients::Inside);
}

/// [`hairpin`] with options for the server and the clients, and either kind of clients.
fn hairpin_with(
    case: &str,
    daemon_flags: &[&str],
    server_flags: &[&str],
    client_flags: &[&str],
    clients: Clients,
) {
    let offload = !daemon_flags.contains(&"--no-offload");
    let (mut lab, server_host, client_hosts) = match clients {
        Clients::Inside => {
            let lab = Lab::new(case, 3, 1);
            lab.hairpin_to(SERVER_HOST);
            let c = [(Host::Lan(0), lan_addr(0)), (Host::Lan(1), lan_addr(1))];
            (lab, SERVER_HOST, c)
        }
        Clients::OutsideMasqueraded => {
            let lab = Lab::new(case, 1, 3);
            lab.port_forward_to(0);
            lab.masquerade_to(0);
            let c = [(Host::Wan, wan_addr(1)), (Host::Wan, wan_addr(2))];
            (lab, 0, c)
        }
    };
    lab.start_daemon(daemon_flags);
    let server_addr = lan_addr(server_host);
    let srv = lab.server(Host::Lan(server_host), server_addr, server_flags);
    let tags = ["hp1", "hp2"];
    let (id, count) = (CALL_ID.to_string(), GRE_COUNT.to_string());
    let mut args = vec!["--call-id", &id, "--gre-count", &count, "--hold", "2"];
    args.extend_from_slice(client_flags);
    let pids: Vec<Pid> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            let (h, addr) = client_hosts[i];
            lab.client(h, ROUTER_WAN, addr, tag, &args)
        })
        .collect();
    let up = lab.wait_established(2);
    assert_distinct_nat_ids(&up, 2);
    // The chain that rewrites routed hairpinned GRE's source is there while they are up ...
    let table = lab.exec(Host::Router, "nft", &["list", "table", "ip", "pptp_alg"]);
    assert!(table.contains("chain gre_post {"), "{table}");
    let summaries: Vec<Value> = pids
        .into_iter()
        .zip(tags)
        .map(|(p, t)| lab.client_ok(p, t))
        .collect();
    let server = lab.stop_server(srv);
    let log = lab.daemon_log();

    // Each client: exactly its own echoes, with its own Call ID, all from the address it
    // dialed (the public one), never from the server's inside address.
    for (i, (tag, v)) in tags.iter().zip(&summaries).enumerate() {
        assert_exactly_own_echoes(tag, v, 1, GRE_COUNT);
        for g in v["gre_received"].as_array().expect("gre") {
            assert_eq!(g["from"], ROUTER_WAN.to_string(), "{tag}: {g}\nlog:\n{log}");
            assert_eq!(u64_of(&g["call_id"]), CALL_ID, "{tag}: {g}");
        }
        let row = call_row(&up, client_hosts[i].1, CALL_ID);
        assert_eq!(row["outside_peer"], server_addr.to_string(), "{row}");
    }

    // The server: one call per client, known by that client's NAT id, talking to the
    // masqueraded address, and receiving exactly that client's GRE from that address.
    assert_eq!(
        server["errors"].as_array().map(Vec::len),
        Some(0),
        "{server}"
    );
    assert_eq!(
        server["unknown_gre"].as_array().map(Vec::len),
        Some(0),
        "server got GRE for no call: {server}\nlog:\n{log}"
    );
    let calls = server["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{server}");
    let mut nat_ids = BTreeSet::new();
    for (i, (tag, v)) in tags.iter().zip(&summaries).enumerate() {
        let cc = &v["calls"][0];
        let sid = u64_of(&cc["peer_id"]);
        let row = call_row(&up, client_hosts[i].1, CALL_ID);
        let nat = u64_of(&row["nat_id"]);
        assert_eq!(u64_of(&row["outside_id"]), sid, "{row}");
        nat_ids.insert(nat);
        let sc = calls
            .iter()
            .find(|s| u64_of(&s["own_id"]) == sid)
            .unwrap_or_else(|| panic!("no server call {sid}: {server}"));
        assert_eq!(u64_of(&sc["peer_id"]), nat, "{sc}");
        assert_eq!(sc["peer_addr"], ROUTER_LAN.to_string(), "{sc}");
        let got: BTreeSet<String> = sc["gre_received"]
            .as_array()
            .expect("gre")
            .iter()
            .map(|g| {
                assert_eq!(g["from"], ROUTER_LAN.to_string(), "{g}\nlog:\n{log}");
                assert_eq!(u64_of(&g["call_id"]), sid, "{g}");
                g["payload"].as_str().expect("payload").to_string()
            })
            .collect();
        let want: BTreeSet<String> = (0..GRE_COUNT)
            .map(|s| format!("{tag}:call{CALL_ID}:{s}"))
            .collect();
        assert_eq!(got, want, "server call of {tag}\nlog:\n{log}");
    }
    assert_eq!(nat_ids.len(), 2, "the server must see two distinct ids");

    let after = lab.wait_no_calls();
    assert_eq!(stat(&after, "calls_created"), 2, "{after:#}");
    assert_eq!(stat(&after, "gre_unknown_call"), 0, "{after:#}");
    assert_eq!(stat(&after, "desyncs"), 0, "{after:#}");
    // Who sent the client's GRE on: the kernel's maps, or the daemon (every packet).
    let by_daemon = if offload { 0 } else { 2 * GRE_COUNT };
    assert_eq!(stat(&after, "gre_hairpin"), by_daemon, "{after:#}");
    if offload {
        assert_eq!(stat(&after, "gre_packets"), 0, "{after:#}");
    }
    // Ended calls leave no element behind.
    let left = lab.exec(
        Host::Router,
        "nft",
        &["list", "map", "ip", "pptp_alg", "hairpin_saddr"],
    );
    assert!(!left.contains("elements"), "{left}");
    // ... and gone with them: no other packet the router sends pays for it.
    let table = lab.exec(Host::Router, "nft", &["list", "table", "ip", "pptp_alg"]);
    assert!(!table.contains("gre_post"), "{table}");
    assert!(
        log.contains(&format!("hairpin: public {ROUTER_WAN}")),
        "the daemon must say it recognised the hairpin:\n{log}"
    );
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit status; log:\n{}", out.stderr);
    assert!(!lab.router_has_table("pptp_alg"), "table left behind");
}

#[test]
fn hairpin_two_clients_same_call_id_offload() {
    if !have_root() {
        return;
    }
    hairpin("hairpin", &[]);
}

#[test]
fn hairpin_two_clients_same_call_id_no_offload() {
    if !have_root() {
        return;
    }
    hairpin("hairpin_nooff", &["--no-offload"]);
}

/// Incoming calls (the server places them) and control messages cut into 5-byte segments,
/// through the hairpin.
#[test]
fn hairpin_incoming_calls_in_5_byte_segments() {
    if !have_root() {
        return;
    }
    hairpin_with(
        "hairpin_in",
        &[],
        &["--incoming-call", "--segmentation", "split:5"],
        &["--incoming", "--segmentation", "split:5"],
        Clients::Inside,
    );
}

/// Outside clients of a port forward that the router also masquerades towards the server:
/// the same double NAT, the same translation (the outside clients are what the engine calls
/// the inside hosts of these connections).
#[test]
fn masqueraded_port_forward_two_outside_clients_same_call_id() {
    if !have_root() {
        return;
    }
    hairpin_with("pfw_masq", &[], &[], &[], Clients::OutsideMasqueraded);
}

//! End-to-end tests of the `pptp-alg` daemon in network namespaces (root only).
//!
//! Each test builds its own lab (see `e2e/lab.rs`): a router namespace running
//! `pptp-alg run --install-rules` behind an nftables masquerade, LAN hosts each
//! in their own namespace, and a WAN namespace with the outside addresses. The
//! PPTP endpoints are `pptp-peer` processes; their JSON summaries say which
//! host received which GRE payloads, and `pptp-alg status --json` shows the
//! daemon's calls. Every test cleans up after itself (processes, namespaces)
//! and every wait has a timeout.
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run. The tests share nothing but
//! the machine; run them serially (`--test-threads=1`) to keep timings calm.

#[path = "e2e/lab.rs"]
mod lab;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::thread;
use std::time::Duration;

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 3;
const CALL_ID: &str = "1000";

/// The common client options: the same Call ID for everyone, and calls held
/// long enough for the status to be read while they are up.
fn client_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--call-id", CALL_ID, "--gre-count", "3"];
    if !extra.contains(&"--hold") {
        a.extend(["--hold", "2"]);
    }
    a.extend_from_slice(extra);
    a
}

/// Runs `clients` (tag, extra options, calls each) on LAN hosts 0.. against
/// the server on the WAN side, concurrently; checks the status while the
/// calls are up and every client's and the server's view. Returns the lab
/// (daemon still running) and the status taken while the calls were up.
fn masquerade_scenario(
    case: &str,
    daemon_flags: &[&str],
    server_flags: &[&str],
    clients: &[(&str, Vec<&str>, usize)],
) -> (Lab, Value) {
    masquerade_scenario_with(case, daemon_flags, server_flags, clients, |_, _| {})
}

/// [`masquerade_scenario`], running `while_up(lab, status)` while the calls are up.
fn masquerade_scenario_with(
    case: &str,
    daemon_flags: &[&str],
    server_flags: &[&str],
    clients: &[(&str, Vec<&str>, usize)],
    while_up: impl FnOnce(&mut Lab, &Value),
) -> (Lab, Value) {
    let mut lab = Lab::new(case, clients.len(), 1);
    lab.start_daemon(daemon_flags);
    let srv = lab.server(Host::Wan, SERVER, server_flags);
    let pids: Vec<Pid> = clients
        .iter()
        .enumerate()
        .map(|(i, (tag, extra, _))| {
            lab.client(Host::Lan(i), SERVER, lan_addr(i), tag, &client_args(extra))
        })
        .collect();
    let total: usize = clients.iter().map(|c| c.2).sum();
    let up = lab.wait_established(total);
    assert_distinct_nat_ids(&up, total);
    for (i, (_, _, calls)) in clients.iter().enumerate() {
        let mine = up["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter(|c| c["inside_host"] == lan_addr(i).to_string())
            .count();
        assert_eq!(mine, *calls, "calls of {}: {up:#}", lan_addr(i));
    }
    while_up(&mut lab, &up);
    let summaries: Vec<Value> = pids
        .iter()
        .zip(clients)
        .map(|(&p, (tag, _, _))| lab.client_ok(p, tag))
        .collect();
    for ((tag, _, calls), v) in clients.iter().zip(&summaries) {
        assert_exactly_own_echoes(tag, v, *calls, GRE_COUNT);
    }
    let server = lab.stop_server(srv);
    let runs: Vec<ClientRun> = clients
        .iter()
        .zip(&summaries)
        .map(|((tag, _, _), v)| ClientRun {
            tag,
            summary: v,
            seen_from: ROUTER_WAN,
        })
        .collect();
    assert_server_view(&server, &up, &runs, None);
    let after = lab.wait_no_calls();
    assert_eq!(stat(&after, "calls_created"), total as u64, "{after:#}");
    assert_eq!(stat(&after, "gre_unknown_call"), 0, "{after:#}");
    assert_eq!(stat(&after, "desyncs"), 0, "{after:#}");
    assert!(lab.daemon_log().contains("call started: inside"));
    (lab, up)
}

/// Stops the daemon and checks that it leaves cleanly and takes its table along.
fn stop_cleanly(lab: &mut Lab) -> String {
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit status; log:\n{}", out.stderr);
    assert!(
        !lab.router_has_table("pptp_alg"),
        "table ip pptp_alg left behind"
    );
    assert!(!out.stderr.contains(" ERROR "), "{}", out.stderr);
    out.stderr
}

// ---- a) and j): the main scenario ---------------------------------------------

#[test]
fn two_clients_same_call_id_offload() {
    if !have_root() {
        return;
    }
    let (mut lab, up) = masquerade_scenario_with(
        "two_off",
        &[],
        &[],
        &[("alice", vec![], 1), ("bob", vec![], 1)],
        |lab, _| {
            // Every echo is translated once, by the kernel (the map element
            // counters) or, if it raced the element's insertion, by the daemon.
            let want = 2 * GRE_COUNT;
            let st = lab.wait_status(Duration::from_secs(5), "all echoes translated", |s| {
                lab.fast_path_packets() + stat(s, "gre_packets") >= want
            });
            let kernel = lab.fast_path_packets();
            assert_eq!(kernel + stat(&st, "gre_packets"), want, "{st:#}");
            assert!(
                kernel > 0,
                "the kernel fast path translated nothing: {st:#}"
            );
        },
    );
    assert_eq!(up["offload"], true, "kernel fast path should be on: {up:#}");
    let log = stop_cleanly(&mut lab);
    assert_eq!(log.matches("call ended (Disconnect)").count(), 2, "{log}");
    // Each end line counts every echo, the kernel's included (read from
    // the call's element as it ends, not at the last periodic poll).
    let complete = format!(", {GRE_COUNT} packets in,");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("call ended (Disconnect)") && l.contains(&complete))
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn two_clients_same_call_id_no_offload() {
    if !have_root() {
        return;
    }
    let (mut lab, up) = masquerade_scenario(
        "two_nooff",
        &["--no-offload"],
        &[],
        &[("alice", vec![], 1), ("bob", vec![], 1)],
    );
    assert_eq!(up["offload"], false, "{up:#}");
    let after = lab.status();
    // In userspace every echo passes through the engine.
    assert_eq!(stat(&after, "gre_packets"), 2 * GRE_COUNT, "{after:#}");
    stop_cleanly(&mut lab);
}

#[test]
fn three_clients_same_call_id() {
    if !have_root() {
        return;
    }
    let (mut lab, _) = masquerade_scenario(
        "three",
        &[],
        &[],
        &[
            ("alice", vec![], 1),
            ("bob", vec![], 1),
            ("carol", vec![], 1),
        ],
    );
    stop_cleanly(&mut lab);
}

/// Incoming calls (the server places them, RFC 2637 ICRQ/ICRP/ICCN): the
/// inside host's id is in the reply, and must be translated the same way.
#[test]
fn incoming_calls_same_call_id() {
    if !have_root() {
        return;
    }
    let (mut lab, _) = masquerade_scenario(
        "incoming",
        &[],
        &["--incoming-call"],
        &[
            ("alice", vec!["--incoming"], 1),
            ("bob", vec!["--incoming"], 1),
        ],
    );
    stop_cleanly(&mut lab);
}

// ---- b) segmentation ---------------------------------------------------------------

#[test]
fn coalesced_and_call_id_split_control_messages() {
    if !have_root() {
        return;
    }
    // The server cuts its own messages inside the Call ID fields too, so the
    // to-inside direction is exercised as well.
    let (mut lab, _) = masquerade_scenario(
        "segments",
        &[],
        &["--segmentation", "split-callid", "--wan-error"],
        &[
            (
                "coal",
                vec!["--segmentation", "coalesce", "--calls", "2"],
                2,
            ),
            (
                "cid",
                vec!["--segmentation", "split-callid", "--calls", "2"],
                2,
            ),
        ],
    );
    stop_cleanly(&mut lab);
}

/// Every control message of the client (from its first, SCCRQ) arrives in
/// 5-byte segments, so no segment from the inside ever holds a whole PPTP
/// header: the engine must know the stream start from the TCP handshake.
#[test]
fn control_messages_in_5_byte_segments() {
    if !have_root() {
        return;
    }
    let (mut lab, _) = masquerade_scenario(
        "split5",
        &[],
        &["--segmentation", "split:5"],
        &[
            ("bytes", vec!["--segmentation", "split:5"], 1),
            ("bytes2", vec!["--segmentation", "split:5"], 1),
        ],
    );
    stop_cleanly(&mut lab);
}

// ---- c) several calls on one control connection -----------------------------------

#[test]
fn several_calls_per_control_connection() {
    if !have_root() {
        return;
    }
    let (mut lab, up) = masquerade_scenario(
        "calls3",
        &[],
        &[],
        &[
            ("alice", vec!["--calls", "3"], 3),
            ("bob", vec!["--calls", "3"], 3),
        ],
    );
    // One control connection per host carries all its calls.
    let conns: BTreeSet<String> = up["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["conn"]["inside"].as_str().expect("conn").to_string())
        .collect();
    assert_eq!(conns.len(), 2, "{up:#}");
    stop_cleanly(&mut lab);
}

// ---- d) teardown -----------------------------------------------------------------------

/// One call from LAN host 0, ended with `close`; GRE sent to its NAT id
/// reaches the client while the call is up and nobody after it ended.
fn teardown(case: &str, close: &str, server_flags: &[&str], cause: &str) {
    let mut lab = Lab::new(case, 1, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, server_flags);
    let c = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "tear",
        &client_args(&["--close", close]),
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;
    // Positive control: while the call is up, GRE from the server's address
    // to the NAT id is delivered to the client, with its own Call ID.
    lab.gre_send_from_server(ROUTER_WAN, nat, "live-probe", 1, &[]);
    let v = lab.finish(c).json("tear");
    assert!(
        v["errors"].as_array().is_some_and(Vec::is_empty),
        "client: {v}"
    );
    let mut want: Vec<String> = own_echoes("tear", &v).into_iter().collect();
    want.push("live-probe".into());
    want.sort();
    let mut got = payloads(&v);
    got.sort();
    assert_eq!(got, want, "while the call was up");

    let after = lab.wait_no_calls();
    assert_eq!(stat(&after, cause), 1, "ended by {cause}: {after:#}");
    let unknown_before = stat(&after, "gre_unknown_call");
    let rx = lab.gre_recv(Host::Lan(0), None, 1.0);
    lab.gre_send_from_server(ROUTER_WAN, nat, "stale-probe", 3, &[]);
    let rx = lab.finish(rx).json_lines("gre-recv");
    assert!(rx.is_empty(), "GRE to ended NAT id {nat} delivered: {rx:?}");
    let end = lab.status();
    assert_eq!(
        stat(&end, "gre_unknown_call") - unknown_before,
        3,
        "stale GRE counted: {end:#}"
    );
    let server = lab.stop_server(srv);
    assert_eq!(server["calls"].as_array().map(Vec::len), Some(1));
    let log = stop_cleanly(&mut lab);
    assert_eq!(log.matches("call ended").count(), 1, "{log}");
}

#[test]
fn teardown_after_call_clear() {
    if !have_root() {
        return;
    }
    teardown("tear_clear", "clear", &[], "ended_disconnect");
}

/// Call-Disconnect-Notify carrying the PNS's id (pptp-linux and the Linux
/// helper read it that way) ends the call as well.
#[test]
fn teardown_after_call_clear_cdn_with_peer_id() {
    if !have_root() {
        return;
    }
    teardown(
        "tear_cdnpeer",
        "clear",
        &["--cdn-call-id", "peer"],
        "ended_disconnect",
    );
}

#[test]
fn teardown_when_control_connection_closes_fin() {
    if !have_root() {
        return;
    }
    teardown("tear_fin", "fin", &[], "ended_conn_closed");
}

#[test]
fn teardown_when_control_connection_resets() {
    if !have_root() {
        return;
    }
    teardown("tear_rst", "rst", &[], "ended_conn_closed");
}

#[test]
fn teardown_by_stop_control_connection() {
    if !have_root() {
        return;
    }
    teardown("tear_stop", "stop", &[], "ended_stop_control");
}

// ---- e) unknown GRE ---------------------------------------------------------------------

#[test]
fn unknown_gre_from_outside_is_dropped_and_counted() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("unknown_gre", 2, 1);
    lab.start_daemon(&[]);
    let rx: Vec<Pid> = (0..2)
        .map(|i| lab.gre_recv(Host::Lan(i), None, 1.5))
        .collect();
    lab.gre_send_from_server(ROUTER_WAN, 1000, "unknown-1000", 3, &[]);
    lab.gre_send_from_server(ROUTER_WAN, 0x4242, "unknown-4242", 2, &[]);
    // GRE version 0 with the same layout is not PPTP: never queued, never counted.
    lab.gre_send_from_server(ROUTER_WAN, 1000, "gre-v0", 2, &["--version", "0"]);
    for (i, p) in rx.into_iter().enumerate() {
        let got = lab.finish(p).json_lines("gre-recv");
        assert!(got.is_empty(), "LAN host {i} received {got:?}");
    }
    let st = lab.status();
    assert_eq!(stat(&st, "gre_unknown_call"), 5, "{st:#}");
    // With the fast path, GRE to the router's address that matches no call never reaches
    // the daemon: the kernel leaves it to the router and counts it.
    assert_eq!(stat(&st, "gre_unknown_kernel"), 5, "{st:#}");
    assert_eq!(stat(&st, "gre_packets"), 0, "{st:#}");
    assert_eq!(stat(&st, "packets"), 0, "queued: {st:#}");
    stop_cleanly(&mut lab);
}

/// Without the fast path the daemon sees that GRE on its GRE queue and counts it itself.
#[test]
fn unknown_gre_from_outside_is_dropped_and_counted_without_offload() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("unknown_gre_nooff", 1, 1);
    lab.start_daemon(&["--no-offload"]);
    let rx = lab.gre_recv(Host::Lan(0), None, 1.5);
    lab.gre_send_from_server(ROUTER_WAN, 1000, "unknown-1000", 3, &[]);
    lab.gre_send_from_server(ROUTER_WAN, 1000, "gre-v0", 2, &["--version", "0"]);
    let got = lab.finish(rx).json_lines("gre-recv");
    assert!(got.is_empty(), "LAN host received {got:?}");
    let st = lab.status();
    assert_eq!(stat(&st, "gre_unknown_call"), 3, "{st:#}");
    assert_eq!(stat(&st, "gre_packets"), 3, "{st:#}");
    assert_eq!(stat(&st, "packets"), 3, "version 0 was queued: {st:#}");
    assert!(st["stats"].get("gre_unknown_kernel").is_none(), "{st:#}");
    stop_cleanly(&mut lab);
}

// ---- f) malformed control messages -------------------------------------------------

#[test]
fn malformed_control_messages_do_not_hurt_the_daemon() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("malformed", 3, 1);
    let daemon = lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let kinds = ["bad-cookie", "bad-length", "unknown-type"];
    let pids: Vec<Pid> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            lab.client(
                Host::Lan(i),
                SERVER,
                lan_addr(i),
                k,
                &client_args(&["--malformed", k, "--hold", "1"]),
            )
        })
        .collect();
    let outs: Vec<Value> = pids
        .into_iter()
        .zip(kinds)
        .map(|(p, k)| lab.finish(p).json(k))
        .collect();
    // The server's own reaction decides the outcome, as without the ALG (see
    // tests/peer_loopback.rs): the daemon passes the bytes, neither stalling
    // nor resetting the connection.
    assert_eq!(outs[0]["malformed"]["outcome"], "closed", "{}", outs[0]);
    assert_eq!(outs[1]["malformed"]["outcome"], "closed", "{}", outs[1]);
    assert_eq!(outs[2]["malformed"]["outcome"], "survived", "{}", outs[2]);
    // A message of an undefined type keeps the framing: the daemon skips
    // it by its Length and the connection's call is translated as usual.
    assert_eq!(outs[2]["ok"], true, "{}", outs[2]);
    assert_eq!(u64_of(&outs[2]["calls"][0]["result"]), 1, "{}", outs[2]);
    assert_exactly_own_echoes("unknown-type", &outs[2], 1, GRE_COUNT);
    for (k, v) in kinds.iter().zip(&outs).take(2) {
        assert!(payloads(v).is_empty(), "{k}: {v}");
    }
    assert!(lab.is_running(daemon), "daemon died:\n{}", lab.daemon_log());
    let st = lab.wait_no_calls();
    // Each framing error cost its connection the translation, nothing more;
    // the undefined type was only skipped.
    assert_eq!(stat(&st, "desyncs"), 2, "{st:#}");
    assert_eq!(stat(&st, "unknown_messages"), 1, "{st:#}");
    let log = lab.daemon_log();
    assert_eq!(log.matches("no longer translated").count(), 2, "{log}");

    // Later calls work: two hosts, same Call ID again.
    let later: Vec<Pid> = (0..2)
        .map(|i| {
            let tag = ["later0", "later1"][i];
            lab.client(Host::Lan(i), SERVER, lan_addr(i), tag, &client_args(&[]))
        })
        .collect();
    let up = lab.wait_established(2);
    assert_distinct_nat_ids(&up, 2);
    for (i, p) in later.into_iter().enumerate() {
        let tag = ["later0", "later1"][i];
        let v = lab.client_ok(p, tag);
        assert_exactly_own_echoes(tag, &v, 1, GRE_COUNT);
    }
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// A host sends a message of unknown type (which the server ignores), then
/// places a call with the same Call ID as another host's live call. Had the
/// connection been given up as desynchronised, its request would pass
/// untranslated and the server would send its GRE to the other call's NAT
/// id; the daemon skips the message instead, so the call gets its own id.
#[test]
fn untranslated_connection_cannot_reach_another_hosts_call() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("desync_steal", 2, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let a = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "victim",
        &client_args(&["--hold", "4"]),
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]);
    assert_eq!(nat, 1000, "id policy keep: the first call keeps its id");
    let b = lab.client(
        Host::Lan(1),
        SERVER,
        lan_addr(1),
        "odd",
        &client_args(&["--malformed", "unknown-type", "--hold", "1"]),
    );
    let b = lab.finish(b).json("odd");
    assert_eq!(b["malformed"]["outcome"], "survived", "{b}");
    assert_exactly_own_echoes("odd", &b, 1, GRE_COUNT);
    let a = lab.client_ok(a, "victim");
    assert_exactly_own_echoes("victim", &a, 1, GRE_COUNT);
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

// ---- g) PPTP server behind a port forward --------------------------------------------

/// LAN host 0 runs the server behind `dnat`; WAN addresses 1 and 2 are two
/// outside clients using the same Call ID.
fn port_forward(case: &str, server_flags: &[&str], client_flags: &[&str]) {
    let mut lab = Lab::new(case, 1, 3);
    lab.port_forward_to(0);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Lan(0), lan_addr(0), server_flags);
    two_outside_clients_through_port_forward(&mut lab, srv, &client_args(client_flags), GRE_COUNT);
    lab.wait_no_calls();
    stop_cleanly(&mut lab);
}

#[test]
fn server_behind_port_forward_two_outside_clients_same_call_id() {
    if !have_root() {
        return;
    }
    port_forward("portfwd", &[], &[]);
}

/// The same 5-byte segments as in `control_messages_in_5_byte_segments`,
/// through dnat: here the connection's first SYN is queued (dnat is done
/// before the forward hook), so the engine knows both stream starts.
#[test]
fn server_behind_port_forward_5_byte_segments() {
    if !have_root() {
        return;
    }
    port_forward(
        "portfwd_split5",
        &["--segmentation", "split:5"],
        &["--segmentation", "split:5"],
    );
}

// ---- h) strict firewall ------------------------------------------------------------------

/// One client call from LAN host `host`; returns its summary (not checked).
fn one_call(lab: &mut Lab, host: usize, tag: &str) -> Value {
    let p = lab.client(
        Host::Lan(host),
        SERVER,
        lan_addr(host),
        tag,
        &client_args(&["--hold", "1"]),
    );
    lab.finish(p).json(tag)
}

#[test]
fn strict_firewall_needs_only_the_mark_rule() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("strictfw", 2, 1);
    lab.strict_firewall(true);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);

    // With `meta mark 0x1723 accept`: two hosts, same Call ID, both work.
    let pids: Vec<Pid> = ["fw0", "fw1"]
        .iter()
        .enumerate()
        .map(|(i, t)| lab.client(Host::Lan(i), SERVER, lan_addr(i), t, &client_args(&[])))
        .collect();
    lab.wait_established(2);
    for (p, t) in pids.into_iter().zip(["fw0", "fw1"]) {
        let v = lab.client_ok(p, t);
        assert_exactly_own_echoes(t, &v, 1, GRE_COUNT);
    }
    lab.wait_no_calls();

    // Without it, the control connection still works (established) but the
    // translated GRE is a new flow from the WAN and dies in the forward chain.
    lab.strict_firewall(false);
    let drops = lab.firewall_drops();
    let v = one_call(&mut lab, 0, "nomark");
    assert_eq!(v["ok"], true, "control must still work: {v}");
    assert_eq!(u64_of(&v["calls"][0]["result"]), 1, "{v}");
    assert!(payloads(&v).is_empty(), "GRE got through: {v}");
    assert!(
        lab.firewall_drops() >= drops + GRE_COUNT,
        "drops {} -> {}",
        drops,
        lab.firewall_drops()
    );
    lab.wait_no_calls();
    stop_cleanly(&mut lab);

    // The userspace path sets the same mark in its verdict.
    lab.strict_firewall(true);
    lab.start_daemon(&["--no-offload"]);
    let v = one_call(&mut lab, 1, "userspace");
    assert_exactly_own_echoes("userspace", &v, 1, GRE_COUNT);
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

// ---- i) daemon restart while a call is up -------------------------------------------

/// SIGTERM removes the daemon's table, so while it is away the router is a
/// plain masquerading router: control connections work, GRE towards inside
/// hosts is not delivered (that is what the ALG is for). The daemon saves
/// its live calls at stop and a restarted daemon takes them back: GRE to
/// the old call's NAT id reaches its host again, and new calls work.
#[test]
fn daemon_restart_while_a_call_is_up() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("restart", 3, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    // A second listener on A's host that ends once A's echoes are there.
    let echoes = lab.gre_recv_count(Host::Lan(0), Some(lan_addr(0)), 10.0, GRE_COUNT);
    let a = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "old",
        &client_args(&["--hold", "10"]),
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;
    let seen = lab.finish(echoes).json_lines("gre-recv");
    assert_eq!(seen.len(), GRE_COUNT as usize, "A's echoes: {seen:?}");
    lab.gre_send_from_server(ROUTER_WAN, nat, "before-stop", 1, &[]);

    // Stop: the table goes with the daemon.
    let log1 = stop_cleanly(&mut lab);
    assert!(log1.contains("removed table ip pptp_alg"), "{log1}");
    lab.gre_send_from_server(ROUTER_WAN, nat, "while-absent", 1, &[]);
    // A new call while the daemon is away: control works through plain masquerade,
    // its GRE reaches the server, the echoes cannot come back.
    let b = one_call(&mut lab, 1, "absent");
    assert_eq!(b["ok"], true, "control through plain NAT: {b}");
    assert_eq!(u64_of(&b["calls"][0]["result"]), 1, "{b}");
    assert!(payloads(&b).is_empty(), "untranslated GRE delivered: {b}");

    // Restart: the old call is back (the call placed while the daemon was
    // away was never seen, so it is not).
    lab.start_daemon(&[]);
    let st = lab.status();
    assert_eq!(st["calls"].as_array().map(Vec::len), Some(1), "{st:#}");
    assert_eq!(
        u64_of(&call_row(&st, lan_addr(0), 1000)["nat_id"]),
        u64::from(nat)
    );
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-restart", 2, &[]);
    assert!(
        lab.is_running(a),
        "the old client should still hold its call"
    );
    // New calls work, with the same Call ID as the old call.
    let c = one_call(&mut lab, 2, "new");
    assert_exactly_own_echoes("new", &c, 1, GRE_COUNT);

    let a = lab.finish(a).json("old");
    let mut got = payloads(&a);
    got.sort();
    let mut want: Vec<String> = own_echoes("old", &a).into_iter().collect();
    want.extend(["before-stop", "after-restart", "after-restart"].map(String::from));
    want.sort();
    assert_eq!(
        got, want,
        "old call: its echoes and the probes before the stop and after the restart"
    );
    let st = lab.status();
    assert_eq!(stat(&st, "gre_unknown_call"), 0, "{st:#}");
    let server = lab.stop_server(srv);
    // The server got the GRE of the call placed while the daemon was away.
    let absent_gre: Vec<&Value> = server["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .flat_map(|c| c["gre_received"].as_array().expect("gre"))
        .filter(|g| {
            g["payload"]
                .as_str()
                .is_some_and(|p| p.starts_with("absent:"))
        })
        .collect();
    assert_eq!(absent_gre.len(), GRE_COUNT as usize, "{server}");
    stop_cleanly(&mut lab);
}

/// A restart keeps the calls that are up (saved at stop, restored at
/// start): the old call's GRE still reaches its host, and a new call of
/// another host with the same Call ID gets another NAT id, so it never
/// receives the old call's GRE.
#[test]
fn restart_does_not_hand_an_old_calls_gre_to_a_new_call() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("restart_steal", 2, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let a = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "old",
        &client_args(&["--hold", "6"]),
    );
    let up = lab.wait_established(1);
    let row = call_row(&up, lan_addr(0), 1000);
    let a_server_id = u64_of(&row["outside_id"]) as u16;
    stop_cleanly(&mut lab);
    lab.start_daemon(&[]);
    let c = lab.client(
        Host::Lan(1),
        SERVER,
        lan_addr(1),
        "new",
        &client_args(&["--hold", "2"]),
    );
    lab.wait_established(1);
    // The old call's PPP keeps talking (as LCP echoes would): GRE from A to
    // the server, which answers on the old call, to the old NAT id.
    lab.gre_send_as(
        Host::Lan(0),
        lan_addr(0),
        SERVER,
        a_server_id,
        "old:call1000:late",
    );
    let c = lab.client_ok(c, "new");
    assert!(
        lab.is_running(a),
        "the old client should still hold its call"
    );
    assert_exactly_own_echoes("new", &c, 1, GRE_COUNT);
    let a = lab.finish(a).json("old");
    assert!(
        payloads(&a).iter().any(|p| p == "echo:old:call1000:late"),
        "the old call's GRE must still reach its host after the restart: {a}"
    );
    let log = lab.daemon_log();
    assert!(log.contains("restored 1 of 1 live calls"), "{log}");
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// What a crash (SIGKILL) leaves when the daemon installed its table
/// (`--install-rules`): nothing. The table is owned by the daemon's netlink
/// socket, so the kernel deletes it, fast-path elements and all, the moment
/// the daemon dies, and the router is a plain masquerading router.
/// `cleanup` then runs `pptp-alg rules remove`, as the systemd unit's
/// ExecStopPost does after any stop: with nothing left it succeeds. Then
/// host B places a call with the same Call ID as A's NAT id while the daemon
/// is away, the daemon is started again, and the old NAT id is probed once
/// more.
fn crash(case: &str, daemon_flags: &[&str], cleanup: bool) {
    let mut lab = Lab::new(case, 2, 1);
    lab.start_daemon(daemon_flags);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let echoes = lab.gre_recv_count(Host::Lan(0), Some(lan_addr(0)), 10.0, GRE_COUNT);
    let a = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "old",
        &client_args(&["--hold", "6"]),
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;
    assert_eq!(nat, 1000, "id policy keep: the first call keeps its id");
    let seen = lab.finish(echoes).json_lines("gre-recv");
    assert_eq!(seen.len(), GRE_COUNT as usize, "A's echoes: {seen:?}");

    lab.kill_daemon();
    assert!(
        !lab.router_has_table("pptp_alg"),
        "the kernel removes the table a killed daemon owned"
    );
    if cleanup {
        let out = lab.try_exec(Host::Router, ALG, &["rules", "remove"]);
        assert_eq!(out.code, 0, "rules remove after a crash: {out:?}");
        assert!(
            out.stdout.contains("table ip pptp_alg was not installed"),
            "{out:?}"
        );
    }
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-crash", 1, &[]);
    // No queue rules: a new control connection passes untranslated.
    let b = one_call(&mut lab, 1, "absent");
    assert_eq!(
        b["ok"], true,
        "control must pass while the daemon is away: {b}"
    );
    assert_eq!(u64_of(&b["calls"][0]["result"]), 1, "{b}");
    assert!(payloads(&b).is_empty(), "untranslated GRE delivered: {b}");

    // A crash before the first periodic save of the calls (a saved call
    // would come back, see the restart tests): the new daemon knows no call.
    lab.forget_saved_calls();
    lab.start_daemon(daemon_flags);
    let log = lab.daemon_log();
    assert!(!log.contains("left by an earlier run"), "{log}");
    assert!(
        log.contains("installed table ip pptp_alg owned by this daemon"),
        "{log}"
    );
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-restart", 2, &[]);
    lab.wait_status(Duration::from_secs(5), "2 unknown GRE", |s| {
        stat(s, "gre_unknown_call") == 2
    });
    assert!(
        lab.is_running(a),
        "the old client should still hold its call"
    );
    let a = lab.finish(a).json("old");
    let got: BTreeSet<String> = payloads(&a).into_iter().collect();
    let own = own_echoes("old", &a);
    // Nothing but A's own echoes from before the crash: no dead daemon's
    // fast path delivers "after-crash", nor B's GRE (B's call went out
    // untranslated with the Call ID that is A's NAT id), nor the probes to
    // the NAT id the restarted daemon does not know.
    assert_eq!(got, own, "A's GRE after a crash of an owning daemon");
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// Deployed under systemd: ExecStopPost finds nothing left to remove after
/// the crash and succeeds.
#[test]
fn daemon_crash_then_rules_removed_as_systemd_does() {
    if !have_root() {
        return;
    }
    crash("crash_unit", &["--table-owner"], true);
}

/// Without the fast path the table goes just the same.
#[test]
fn daemon_crash_without_offload() {
    if !have_root() {
        return;
    }
    crash("crash_nooff", &["--no-offload", "--table-owner"], false);
}

/// Outside systemd nothing but the kernel cleans up after a crash, and that
/// is enough: the daemon's table, with the fast-path element of A's call,
/// goes with the daemon, so the GRE of B's new (untranslated) call with
/// A's NAT id as Call ID is not sent to A.
#[test]
fn daemon_crash_with_offload_and_nothing_cleaning_up() {
    if !have_root() {
        return;
    }
    crash("crash_raw", &["--table-owner"], false);
}

/// Rules loaded by the admin (`nft -f nft/pptp-alg.nft`; here `pptp-alg
/// rules install`) belong to nobody: a crashed daemon's table stays, with
/// the fast-path element of the call that was up. The next start flushes
/// the maps before it serves, so the old NAT id is no longer rewritten.
#[test]
fn daemon_crash_with_external_rules_flushes_the_fast_path_at_start() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("crash_ext", 1, 1);
    lab.start_daemon_on_external_rules(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let echoes = lab.gre_recv_count(Host::Lan(0), Some(lan_addr(0)), 10.0, GRE_COUNT);
    let a = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "old",
        &client_args(&["--hold", "6"]),
    );
    let up = lab.wait_established(1);
    assert_eq!(up["offload"], true, "{up:#}");
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;
    let seen = lab.finish(echoes).json_lines("gre-recv");
    assert_eq!(seen.len(), GRE_COUNT as usize, "A's echoes: {seen:?}");

    lab.kill_daemon();
    assert!(
        lab.router_has_table("pptp_alg"),
        "a table loaded by the admin outlives the daemon"
    );
    let map = gre_daddr_map(&lab);
    assert!(
        map.contains(&format!("{SERVER} . ")) && map.contains(&lan_addr(0).to_string()),
        "the dead daemon's fast-path element of A's call stays: {map}"
    );

    lab.forget_saved_calls();
    lab.start_daemon_on_external_rules(&[]);
    let log = lab.daemon_log();
    assert!(
        log.contains("using the existing table ip pptp_alg"),
        "{log}"
    );
    let map = gre_daddr_map(&lab);
    assert!(!map.contains("elements"), "flushed at start: {map}");
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-restart", 2, &[]);
    lab.wait_status(Duration::from_secs(5), "2 unknown GRE", |s| {
        stat(s, "gre_unknown_call") == 2
    });
    let a = lab.finish(a).json("old");
    let got: BTreeSet<String> = payloads(&a).into_iter().collect();
    assert_eq!(got, own_echoes("old", &a), "A's GRE");
    lab.stop_server(srv);

    // A clean stop empties the maps of a table that is not the daemon's and
    // leaves the table to whoever loaded it.
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit status; log:\n{}", out.stderr);
    assert!(lab.router_has_table("pptp_alg"));
    let map = gre_daddr_map(&lab);
    assert!(!map.contains("elements"), "flushed at stop: {map}");
    lab.exec(Host::Router, ALG, &["rules", "remove"]);
    assert!(!lab.router_has_table("pptp_alg"));
}

/// `nft list map ip pptp_alg gre_daddr` in the router.
fn gre_daddr_map(lab: &Lab) -> String {
    lab.exec(
        Host::Router,
        "nft",
        &["list", "map", "ip", "pptp_alg", "gre_daddr"],
    )
}

/// A running daemon's table is its own: `pptp-alg rules remove` (or
/// install) is refused with a message naming the daemon, and a firewall
/// reload's `nft flush ruleset` passes it by. The daemon still removes it
/// at stop.
#[test]
fn running_daemons_table_cannot_be_removed_or_flushed_by_others() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("owned", 1, 1);
    lab.start_daemon(&["--table-owner"]);
    let pid = lab.daemon_pid();
    let st = lab.status();
    assert_eq!(st["rules"]["installed"], "owned", "{st:#}");
    let listed = lab.exec(Host::Router, "nft", &["list", "table", "ip", "pptp_alg"]);
    assert!(listed.contains("flags owner"), "{listed}");
    for cmd in ["remove", "install"] {
        let out = lab.try_exec(Host::Router, ALG, &["rules", cmd]);
        assert_eq!(out.code, 1, "rules {cmd}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "table ip pptp_alg is owned by a running pptp-alg (pid {pid}); stop the daemon \
                 instead"
            )),
            "rules {cmd}: {out:?}"
        );
    }
    assert!(lab.router_has_table("pptp_alg"));
    lab.exec(Host::Router, "nft", &["flush", "ruleset"]);
    assert!(
        lab.router_has_table("pptp_alg"),
        "flush ruleset took the daemon's table"
    );
    assert!(
        !lab.router_has_table("lab_nat"),
        "flush ruleset did not run"
    );
    let log = stop_cleanly(&mut lab);
    assert!(log.contains("removed table ip pptp_alg"), "{log}");
}

// ---- the fast path's set of local addresses ------------------------------------------

/// The fast path rewrites GRE only to addresses in the set `local_addrs`, which the daemon
/// fills with the router's addresses at start and keeps up to date as they change.
#[test]
fn local_addrs_follow_the_routers_addresses() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("addrs", 1, 1);
    lab.start_daemon(&[]);
    let set = lab.local_addrs();
    assert_eq!(
        set,
        lab.router_addrs(),
        "the set holds exactly the router's addresses"
    );
    for a in [ROUTER_WAN, ROUTER_LAN, Ipv4Addr::LOCALHOST] {
        assert!(set.contains(&a), "{a} missing: {set:?}");
    }
    for a in [SERVER, lan_addr(0)] {
        assert!(!set.contains(&a), "{a} is not the router's: {set:?}");
    }
    let log = lab.daemon_log();
    assert!(
        log.contains("3 local address(es) in set local_addrs"),
        "{log}"
    );

    let new = Ipv4Addr::new(10, 213, 2, 100);
    lab.ip(
        Host::Router,
        &["addr", "add", "10.213.2.100/24", "dev", "wan0"],
    );
    let took = lab.wait_local_addrs("the new address", Duration::from_secs(1), |s| {
        s.contains(&new)
    });
    println!("address added: in the set after {took:?}");
    // The same address on a second interface: it stays until both are gone.
    lab.ip(
        Host::Router,
        &["addr", "add", "10.213.2.100/32", "dev", "lo"],
    );
    lab.ip(
        Host::Router,
        &["addr", "del", "10.213.2.100/24", "dev", "wan0"],
    );
    thread::sleep(Duration::from_millis(200));
    assert!(lab.local_addrs().contains(&new), "{:?}", lab.local_addrs());
    lab.ip(
        Host::Router,
        &["addr", "del", "10.213.2.100/32", "dev", "lo"],
    );
    let took = lab.wait_local_addrs("the address gone", Duration::from_secs(1), |s| {
        !s.contains(&new)
    });
    println!("address removed: out of the set after {took:?}");
    assert_eq!(lab.local_addrs(), lab.router_addrs());
    // The daemon logs a change just after making it: give the line time.
    let removed = "local address 10.213.2.100 removed from set local_addrs";
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !lab.daemon_log().contains(removed) && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = lab.daemon_log();
    for line in [
        "local address 10.213.2.100 added to set local_addrs",
        removed,
    ] {
        assert_eq!(log.matches(line).count(), 1, "{line:?} once in:\n{log}");
    }
    stop_cleanly(&mut lab);

    // Without the fast path there is no rule that would use the set, and no set.
    lab.start_daemon(&["--no-offload"]);
    let listed = lab.exec(Host::Router, "nft", &["list", "table", "ip", "pptp_alg"]);
    assert!(!listed.contains("local_addrs"), "{listed}");
    assert!(!lab.daemon_log().contains("set local_addrs"));
    stop_cleanly(&mut lab);

    // A table loaded by the admin gets its set filled as well.
    lab.start_daemon_on_external_rules(&[]);
    assert_eq!(lab.local_addrs(), lab.router_addrs());
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    lab.exec(Host::Router, ALG, &["rules", "remove"]);
}

/// The call whose NAT id differs from its inside id (two hosts placed calls with the same
/// Call ID 1000 to the same server), and the inside host it belongs to.
fn renumbered_call(up: &Value) -> (u16, Ipv4Addr) {
    let row = up["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["nat_id"] != c["inside_id"])
        .unwrap_or_else(|| panic!("no call with a NAT id of its own: {up:#}"));
    let host: Ipv4Addr = row["inside_host"].as_str().expect("host").parse().unwrap();
    (u64_of(&row["nat_id"]) as u16, host)
}

/// Waits until the calls' own GRE (sent and echoed right after setup) is over: the kernel's
/// and the daemon's GRE counters stay the same for a while.
fn settle(lab: &Lab) {
    let read = || (lab.fast_path_packets(), stat(&lab.status(), "gre_packets"));
    let mut last = read();
    for _ in 0..25 {
        thread::sleep(Duration::from_millis(300));
        let now = read();
        if now == last {
            return;
        }
        last = now;
    }
    panic!("GRE counters never settled: {last:?}");
}

/// GRE received by a `gre-recv` run: (destination, Call ID, payload) of each packet.
fn received(lab: &mut Lab, p: Pid) -> Vec<(String, u64, String)> {
    lab.finish(p)
        .json_lines("gre-recv")
        .iter()
        .map(|g| {
            (
                g["to"].as_str().expect("to").to_string(),
                u64_of(&g["call_id"]),
                g["payload"].as_str().expect("payload").to_string(),
            )
        })
        .collect()
}

/// GRE for a mapped call addressed to a router address the set does not hold goes through
/// the queue and is translated by the daemon; once the address is in the set, by the kernel.
#[test]
fn gre_to_a_router_address_added_after_start() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("newaddr", 2, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let clients: Vec<Pid> = (0..2)
        .map(|i| {
            let tag = format!("na{i}");
            lab.client(
                Host::Lan(i),
                SERVER,
                lan_addr(i),
                &tag,
                &client_args(&["--hold", "12"]),
            )
        })
        .collect();
    let up = lab.wait_established(2);
    let (nat, inside) = renumbered_call(&up);
    let idx = (0..2).find(|&i| lan_addr(i) == inside).expect("a LAN host");
    let n = 3;
    settle(&lab);

    // A local route without an interface address: local for the routing table (the queue
    // rule), never in the set (the fast path rule).
    let anyip = Ipv4Addr::new(10, 213, 2, 101);
    lab.ip(
        Host::Router,
        &["route", "add", "local", "10.213.2.101/32", "dev", "lo"],
    );
    lab.ip(
        Host::Wan,
        &[
            "route",
            "add",
            "10.213.2.101/32",
            "via",
            &ROUTER_WAN.to_string(),
        ],
    );
    let kernel_before = lab.fast_path_packets();
    let queued_before = stat(&lab.status(), "gre_packets");
    let rx = lab.gre_recv_count(Host::Lan(idx), Some(inside), 10.0, n);
    lab.gre_send_from_server(anyip, nat, "via-queue", n as u32, &[]);
    let got = received(&mut lab, rx);
    assert_eq!(got.len(), n as usize, "{got:?}");
    for (to, id, payload) in &got {
        assert_eq!(
            (to.as_str(), *id, payload.as_str()),
            (inside.to_string().as_str(), 1000, "via-queue")
        );
    }
    assert!(!lab.local_addrs().contains(&anyip));
    assert_eq!(lab.fast_path_packets(), kernel_before, "not the kernel's");
    lab.wait_status(Duration::from_secs(5), "the daemon's translations", |s| {
        stat(s, "gre_packets") >= queued_before + n
    });

    // An interface address added now: in the set within a second, then the kernel's.
    let added = Ipv4Addr::new(10, 213, 2, 100);
    lab.ip(
        Host::Router,
        &["addr", "add", "10.213.2.100/24", "dev", "wan0"],
    );
    lab.wait_local_addrs("the new address", Duration::from_secs(1), |s| {
        s.contains(&added)
    });
    let queued_before = stat(&lab.status(), "gre_packets");
    let rx = lab.gre_recv_count(Host::Lan(idx), Some(inside), 10.0, n);
    lab.gre_send_from_server(added, nat, "via-set", n as u32, &[]);
    let got = received(&mut lab, rx);
    assert_eq!(got.len(), n as usize, "{got:?}");
    for (to, id, payload) in &got {
        assert_eq!(
            (to.as_str(), *id, payload.as_str()),
            (inside.to_string().as_str(), 1000, "via-set")
        );
    }
    assert_eq!(lab.fast_path_packets(), kernel_before + n, "the kernel's");
    assert_eq!(
        stat(&lab.status(), "gre_packets"),
        queued_before,
        "not queued"
    );

    for p in clients {
        lab.terminate(p);
    }
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// GRE routed through the router to another host (here a subnet behind LAN host 0, not
/// NATed) is never rewritten, even when it carries the (outside peer, NAT id) of a call the
/// kernel translates: neither the set nor the routing table calls its destination local.
#[test]
fn transit_gre_with_a_mapped_call_id_is_not_rewritten() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("transit", 2, 1);
    let routed = Ipv4Addr::new(10, 213, 3, 2);
    lab.ip(
        Host::Lan(0),
        &["addr", "add", "10.213.3.2/32", "dev", "eth0"],
    );
    lab.ip(
        Host::Router,
        &["route", "add", "10.213.3.0/24", "dev", "lan1"],
    );
    lab.ip(
        Host::Wan,
        &[
            "route",
            "add",
            "10.213.3.0/24",
            "via",
            &ROUTER_WAN.to_string(),
        ],
    );
    lab.start_daemon(&[]);
    let gre_in = lab.exec(
        Host::Router,
        "nft",
        &["list", "chain", "ip", "pptp_alg", "gre_in"],
    );
    assert!(
        gre_in.contains("ip frag-off & 8191 == 0 ip daddr @local_addrs ip daddr set"),
        "{gre_in}"
    );
    assert!(!lab.local_addrs().contains(&routed));

    let srv = lab.server(Host::Wan, SERVER, &[]);
    let clients: Vec<Pid> = (0..2)
        .map(|i| {
            let tag = format!("tr{i}");
            lab.client(
                Host::Lan(i),
                SERVER,
                lan_addr(i),
                &tag,
                &client_args(&["--hold", "8"]),
            )
        })
        .collect();
    let up = lab.wait_established(2);
    let (nat, _) = renumbered_call(&up);
    assert_ne!(nat, 1000);
    settle(&lab);
    let kernel_before = lab.fast_path_packets();
    let queued_before = stat(&lab.status(), "gre_packets");

    let n = 3;
    let rx = lab.gre_recv_count(Host::Lan(0), Some(routed), 10.0, n);
    lab.gre_send_from_server(routed, nat, "transit", n as u32, &[]);
    let got = received(&mut lab, rx);
    assert_eq!(got.len(), n as usize, "{got:?}");
    for (to, id, payload) in &got {
        assert_eq!(
            (to.as_str(), *id, payload.as_str()),
            (routed.to_string().as_str(), u64::from(nat), "transit"),
            "transit GRE must arrive as sent"
        );
    }
    assert_eq!(
        lab.fast_path_packets(),
        kernel_before,
        "the fast path touched it"
    );
    assert_eq!(stat(&lab.status(), "gre_packets"), queued_before, "queued");

    for p in clients {
        lab.terminate(p);
    }
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

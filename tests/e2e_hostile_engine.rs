//! The engine under attack from outside, with real packets (root only, in
//! network namespaces; see `e2e/lab.rs`): forged teardowns injected into
//! live control connections, a SYN flood at a port-forwarded server, and a
//! connection table with no room left.
//!
//! The attacker has a namespace of its own behind the WAN namespace, which
//! routes for it as the Internet would, without source address checks:
//!
//! ```text
//!   <lab>-a 10.213.9.2 eth0==atk0 10.213.9.1 <lab>-w ==wan0== <lab>-r (router) == LAN
//! ```
//!
//! Its packets are made by `pptp-peer spray`: TCP segments with any source
//! address and port, and random sequence and acknowledgement numbers (an
//! off-path sender cannot know the real ones).
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 3;
/// The attacker's own address, on its link to the WAN namespace.
const ATTACKER: &str = "10.213.9.2";
/// Where forged SYN flood sources come from (RFC 2544 benchmarking space).
const FLOOD_NET: &str = "198.18.0.0/15";

/// The attacker's namespace; deleted when dropped (declare it after the
/// lab, so that it goes first).
struct Attacker {
    ns: Netns,
}

impl Attacker {
    fn new(lab: &Lab) -> Attacker {
        let a = Attacker {
            ns: Netns::add(&format!("{}-a", lab.name)),
        };
        // The WAN namespace forwards for the attacker and takes packets
        // whose source is one of its own addresses (the server's, forged):
        // no rp_filter, accept_local on the attacker's link.
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.default.accept_local=1",
        ] {
            lab.exec(Host::Wan, "sysctl", &["-qw", s]);
        }
        lab.wan.veth("atk0", &a.ns, "eth0");
        lab.ip(Host::Wan, &["addr", "add", "10.213.9.1/24", "dev", "atk0"]);
        lab.ip(Host::Wan, &["link", "set", "atk0", "up"]);
        a.ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "eth0"]);
        a.ip(&["link", "set", "eth0", "up"]);
        a.ip(&["route", "add", "default", "via", "10.213.9.1"]);
        // Replies to forged flood sources (an inside server's SYN-ACKs) go
        // out of the router to the WAN side and vanish there, as replies to
        // addresses nobody owns do.
        lab.ip(
            Host::Router,
            &["route", "add", FLOOD_NET, "via", &SERVER.to_string()],
        );
        lab.ip(Host::Wan, &["route", "add", "blackhole", FLOOD_NET]);
        a
    }

    fn ip(&self, args: &[&str]) {
        self.ns.ip(args);
    }

    /// Runs `pptp-peer spray ARGS` in the attacker's namespace to the end
    /// and returns its summary; panics if not everything was sent.
    fn spray(&self, args: &[&str]) -> Value {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), PEER, "spray"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pptp-peer spray");
        // The tool gives up by itself after --max-secs (20 s by default).
        let deadline = Instant::now() + Duration::from_secs(25);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("spray output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "spray {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("spray summary {text:?}: {e}"))
    }
}

/// The router's public ports of the control connections the server holds:
/// what masquerade made of the inside clients' ports, read where an
/// attacker could learn them too, at the server.
fn masqueraded_ports(lab: &Lab) -> BTreeSet<u16> {
    let text = lab.exec(
        Host::Wan,
        "ss",
        &["-Htn", "state", "established", "( sport = :1723 )"],
    );
    let prefix = format!("{ROUTER_WAN}:");
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

/// Kernel drop counters of the router's queues (queue full, socket
/// overflow), for the record: a flood may overrun them, which is allowed.
fn queue_drops(lab: &Lab) -> String {
    lab.try_exec(
        Host::Router,
        "cat",
        &["/proc/net/netfilter/nfnetlink_queue"],
    )
    .stdout
}

/// The status once the engine has seen no control packet for 300 ms (the
/// queues have drained after a flood).
fn settled(lab: &Lab) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = lab.status();
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = lab.status();
        if stat(&now, "control_packets") == stat(&last, "control_packets") {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "control packets never settled: {now:#}"
        );
        last = now;
    }
}

/// Forged SYN-ACKs, FIN|ACKs and RST|ACKs from the server's address and
/// port to the router's public ports of two live control connections,
/// whose calls share the same Call ID: out of window, they end nothing. The
/// calls stay up and keep their GRE both ways, the real teardown (each
/// client's Call-Clear-Request through the same connection) still works,
/// and the forged segments are counted as `ignored_teardowns`.
///
/// Before the fix (8cec9fa) any FIN, or a SYN whose sequence number did not
/// match, ended the connection's calls: `call ended (ConnClosed)` within
/// the first tenth of a second of the spray.
#[test]
fn forged_syn_ack_fin_and_rst_spray_ends_no_call() {
    if !have_root() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("spray", 2, 1);
    let atk = Attacker::new(&lab);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let tags = ["alice", "bob"];
    // Held long enough for the spray and the probes after it (the spray
    // gives up after 5 s; it takes 0.4 s here).
    let pids: Vec<Pid> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            lab.client(
                Host::Lan(i),
                SERVER,
                lan_addr(i),
                tag,
                &["--call-id", "1000", "--gre-count", "3", "--hold", "9"],
            )
        })
        .collect();
    let up = lab.wait_established(2);
    assert_distinct_nat_ids(&up, 2);
    let ports = masqueraded_ports(&lab);
    assert_eq!(ports.len(), 2, "two control connections: {ports:?}");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();

    let before = lab.status();
    let count = 30_000;
    let spray = atk.spray(&[
        "--to",
        &ROUTER_WAN.to_string(),
        "--to-ports",
        &ports.join(","),
        "--from",
        &SERVER.to_string(),
        "--from-port",
        "1723",
        "--kinds",
        "syn-ack,fin-ack,rst-ack",
        "--count",
        &count.to_string(),
        "--max-secs",
        "5",
    ]);
    println!("spray: {spray}");
    println!("queues:\n{}", queue_drops(&lab));

    // Let the queues drain, then the verdict: both calls still up, as they
    // were, and the forged teardowns seen and ignored.
    let after = settled(&lab);
    let reached = stat(&after, "control_packets") - stat(&before, "control_packets");
    println!("{reached} control packets reached the engine");
    let log = lab.daemon_log();
    assert!(
        !log.contains("call ended"),
        "a forged segment ended a call:\n{log}"
    );
    let calls = |s: &Value| -> BTreeSet<(String, u64, u64)> {
        established(s)
            .iter()
            .map(|c| {
                (
                    c["inside_host"].as_str().expect("host").to_string(),
                    u64_of(&c["inside_id"]),
                    u64_of(&c["nat_id"]),
                )
            })
            .collect()
    };
    assert_eq!(
        calls(&after),
        calls(&up),
        "calls after the spray: {after:#}"
    );
    let ignored = stat(&after, "ignored_teardowns");
    println!("{ignored} forged FIN/RST ignored");
    assert!(
        ignored > 0,
        "no forged FIN/RST reached the engine: {after:#}"
    );
    assert!(
        reached >= 1000,
        "only {reached} forged segments reached the engine: {after:#}"
    );
    assert_eq!(stat(&after, "desyncs"), 0, "{after:#}");

    // GRE still reaches each client under its own Call ID: a probe from
    // the server's address to each call's NAT id.
    for (i, tag) in tags.iter().enumerate() {
        let nat = u64_of(&call_row(&after, lan_addr(i), 1000)["nat_id"]) as u16;
        lab.gre_send_from_server(ROUTER_WAN, nat, &format!("probe:{tag}"), 2, &[]);
    }
    for (p, tag) in pids.into_iter().zip(tags) {
        let v = lab.client_ok(p, tag);
        assert_eq!(v["ok"], true, "{tag}: {v}");
        let call = &v["calls"][0];
        assert_eq!(
            call["cleared"], true,
            "{tag}: Call-Clear through the daemon: {v}"
        );
        assert_eq!(u64_of(&call["cdn_result"]), 4, "{tag}: {v}");
        let mut want: Vec<String> = own_echoes(tag, &v).into_iter().collect();
        want.extend([format!("probe:{tag}"), format!("probe:{tag}")]);
        want.sort();
        let mut got = payloads(&v);
        got.sort();
        assert_eq!(got, want, "{tag}: its own echoes and probes, nothing else");
        for g in v["gre_received"].as_array().expect("gre") {
            assert_eq!(u64_of(&g["call_id"]), 1000, "{tag}: {g}");
        }
    }
    let server = lab.stop_server(srv);
    assert_eq!(
        server["errors"].as_array().map(Vec::len),
        Some(0),
        "server: {server}"
    );
    let states: Vec<&str> = server["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["cleared", "cleared"], "{server}");

    // The calls ended when their clients cleared them, not before.
    let end = lab.wait_no_calls();
    assert_eq!(stat(&end, "ended_disconnect"), 2, "{end:#}");
    assert_eq!(stat(&end, "ended_conn_closed"), 0, "{end:#}");
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("call ended").count(),
        2,
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("call ended (Disconnect)").count(),
        2,
        "{}",
        out.stderr
    );
    drop(atk);
    println!("took {:?}", started.elapsed());
}

/// 20,000 forged SYNs from addresses all over 198.18.0.0/15 and random
/// ports at the router's port forward of tcp/1723 to an inside PPTP server.
/// The engine remembers handshakes in a bounded list and gives a slot only
/// to a connection that sends data, so the flood takes none: afterwards two
/// outside clients with the same Call ID get their calls through, each
/// translated and each receiving its own GRE.
///
/// Before the fix (8cec9fa) every SYN took a slot for `conn_idle_timeout`:
/// the flood filled all 8,192, and the clients' connections were then not
/// tracked at all (no call in the table; their messages passed
/// untranslated).
#[test]
fn syn_flood_at_a_port_forwarded_server_takes_no_connection_slot() {
    if !have_root() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("synflood", 1, 3);
    let atk = Attacker::new(&lab);
    lab.port_forward_to(0);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Lan(0), lan_addr(0), &[]);
    let before = lab.status();
    let flood = atk.spray(&[
        "--to",
        &ROUTER_WAN.to_string(),
        "--to-ports",
        "1723",
        "--from-net",
        FLOOD_NET,
        "--kinds",
        "syn",
        "--count",
        "20000",
        // Paced so that the flood reaches the engine rather than the
        // kernel's queue drop counters (the test build of the daemon is
        // slow); the attack is the number of handshakes, not their rate.
        "--pps",
        "8000",
        "--max-secs",
        "8",
    ]);
    println!("flood: {flood}");
    println!("queues:\n{}", queue_drops(&lab));
    let st = settled(&lab);
    let reached = stat(&st, "control_packets") - stat(&before, "control_packets");
    println!("{reached} control packets reached the engine (SYNs and the server's SYN-ACKs)");
    // More than the default table has slots, or the test proves nothing.
    assert!(reached > 8192, "the flood did not reach the engine: {st:#}");
    assert_eq!(st["connections"], 0, "a bare handshake took a slot: {st:#}");

    let up = two_outside_clients_through_port_forward(
        &mut lab,
        srv,
        &["--call-id", "1000", "--gre-count", "3", "--hold", "2"],
        GRE_COUNT,
    );
    assert_eq!(up["connections"], 2, "{up:#}");
    let end = lab.wait_no_calls();
    assert_eq!(stat(&end, "gre_unknown_call"), 0, "{end:#}");
    assert_eq!(stat(&end, "connection_limit"), 0, "{end:#}");
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("refused"), "{}", out.stderr);
    drop(atk);
    println!("took {:?}", started.elapsed());
}

/// Bytes the server's kernel received on each control connection from the
/// router's public address, by the router's port (`ss -ti`; a connection
/// that received nothing shows no `bytes_received`).
fn server_bytes_received(lab: &Lab) -> Vec<(u16, u64)> {
    let text = lab.exec(
        Host::Wan,
        "ss",
        &["-Htin", "state", "established", "( sport = :1723 )"],
    );
    let prefix = format!("{ROUTER_WAN}:");
    let mut out: Vec<(u16, u64)> = Vec::new();
    for w in text.split_whitespace() {
        if let Some(port) = w.strip_prefix(&prefix).and_then(|p| p.parse().ok()) {
            out.push((port, 0));
        } else if let Some(n) = w.strip_prefix("bytes_received:") {
            if let Some(last) = out.last_mut() {
                last.1 = n.parse().expect("bytes_received");
            }
        }
    }
    out
}

/// With `--max-connections 2` and two inside hosts holding calls (same
/// Call ID, same server), a third inside host's control connection has no
/// slot: its segments are dropped, counted as `connection_limit` and
/// logged, so none of its PPTP bytes reach the server untranslated (where
/// its Call ID would collide with the first host's NAT id). When the first
/// host goes away, the third gets through on TCP retransmission, with a NAT
/// id of its own.
///
/// Before the fix (8cec9fa) the third connection passed untranslated: its
/// messages reached the server as the host sent them.
#[test]
fn full_connection_table_refuses_a_new_connection_until_a_slot_frees() {
    if !have_root() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("connlimit", 3, 1);
    // A closed connection keeps its slot for conn_linger (to translate
    // retransmissions); 1 s instead of 10 lets the third host's
    // retransmission find the slot free within a few seconds.
    let daemon = lab.start_daemon(&["--max-connections", "2", "--conn-linger", "1"]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let call = |lab: &mut Lab, i: usize, tag: &str, extra: &[&str]| {
        let mut args = vec!["--call-id", "1000", "--gre-count", "3"];
        args.extend_from_slice(extra);
        lab.client(Host::Lan(i), SERVER, lan_addr(i), tag, &args)
    };
    // One after the other, so that the first keeps its Call ID as NAT id:
    // the id an untranslated third call (same Call ID) would collide with.
    let first = call(&mut lab, 0, "first", &["--hold", "30"]);
    lab.wait_established(1);
    let second = call(&mut lab, 1, "second", &["--hold", "8"]);
    let up = lab.wait_established(2);
    let nat = |s: &Value, i: usize| u64_of(&call_row(s, lan_addr(i), 1000)["nat_id"]);
    let (nat_first, nat_second) = (nat(&up, 0), nat(&up, 1));
    assert_eq!(nat_first, 1000, "id policy keep: {up:#}");
    let held: BTreeSet<u16> = masqueraded_ports(&lab);
    assert_eq!(held.len(), 2, "{held:?}");

    // The third host's handshake passes (it costs no slot); its first
    // message does not. It waits for the reply long enough for TCP to
    // retransmit it after the first host is gone (the lab's clients give
    // up after 5 s).
    let srv_addr = SERVER.to_string();
    let bind = lan_addr(2).to_string();
    let third = lab.spawn(
        Host::Lan(2),
        "pptp-peer client third",
        PEER,
        &[
            "client",
            "--server",
            &srv_addr,
            "--bind",
            &bind,
            "--tag",
            "third",
            "--call-id",
            "1000",
            "--gre-count",
            "3",
            "--hold",
            "1",
            "--timeout",
            "20",
        ],
    );
    let line = lab.wait_line(
        daemon,
        "refused: every tracked connection has calls",
        Duration::from_secs(5),
    );
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(&lan_addr(2).to_string()), "{line}");
    // Let TCP retransmit it a few times (after 0.2, 0.6, 1.4 s).
    thread::sleep(Duration::from_millis(1500));
    let st = lab.status();
    assert!(stat(&st, "connection_limit") >= 2, "{st:#}");
    assert_eq!(st["connections"], 2, "{st:#}");
    assert_eq!(established(&st).len(), 2, "{st:#}");
    assert!(
        st["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .all(|c| c["inside_host"] != lan_addr(2).to_string()),
        "{st:#}"
    );
    let bytes = server_bytes_received(&lab);
    assert_eq!(
        bytes.len(),
        3,
        "the server accepted three connections: {bytes:?}"
    );
    for (port, n) in &bytes {
        if held.contains(port) {
            assert!(*n > 0, "{bytes:?}");
        } else {
            assert_eq!(
                *n, 0,
                "the refused connection's bytes reached the server: {bytes:?}"
            );
        }
    }

    // The first host goes away (its socket closed when it is killed): its
    // call ends, and after conn_linger its slot is free for the third.
    lab.terminate(first);
    let _ = lab.finish(first);
    let gone = Instant::now();
    let st = lab.wait_status(Duration::from_secs(15), "the third host's call", |s| {
        established(s)
            .iter()
            .any(|c| c["inside_host"] == lan_addr(2).to_string())
    });
    println!(
        "the third call was up {:?} after the first host went away",
        gone.elapsed()
    );
    let nat_third = nat(&st, 2);
    assert_ne!(
        nat_third, nat_first,
        "the first call's id is in quarantine: {st:#}"
    );
    assert_ne!(nat_third, nat_second, "{st:#}");
    let t = lab.client_ok(third, "third");
    assert_exactly_own_echoes("third", &t, 1, GRE_COUNT);
    let s = lab.client_ok(second, "second");
    assert_exactly_own_echoes("second", &s, 1, GRE_COUNT);

    // The server saw three calls from the router, each under its own NAT id,
    // and each got only its own host's GRE.
    let server = lab.stop_server(srv);
    assert_eq!(
        server["errors"].as_array().map(Vec::len),
        Some(0),
        "server: {server}"
    );
    assert_eq!(
        server["unknown_gre"].as_array().map(Vec::len),
        Some(0),
        "server: {server}"
    );
    let mut seen = BTreeSet::new();
    for (tag, nat) in [
        ("first", nat_first),
        ("second", nat_second),
        ("third", nat_third),
    ] {
        let calls: Vec<&Value> = server["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter(|c| c["peer_id"].as_u64() == Some(nat))
            .collect();
        assert_eq!(
            calls.len(),
            1,
            "one server call with PNS id {nat}: {server}"
        );
        seen.insert(nat);
        let got: BTreeSet<String> = calls[0]["gre_received"]
            .as_array()
            .expect("gre")
            .iter()
            .map(|g| g["payload"].as_str().expect("payload").to_string())
            .collect();
        let want: BTreeSet<String> = (0..GRE_COUNT)
            .map(|s| format!("{tag}:call1000:{s}"))
            .collect();
        assert_eq!(got, want, "GRE of the server's call with {tag}: {server}");
    }
    assert_eq!(
        server["calls"].as_array().map(Vec::len),
        Some(3),
        "{server}"
    );

    let end = lab.wait_no_calls();
    assert_eq!(stat(&end, "calls_created"), 3, "{end:#}");
    assert_eq!(stat(&end, "ended_conn_closed"), 1, "{end:#}");
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    println!("took {:?}", started.elapsed());
}

/// After a restart the engine does not know where the restored control
/// connections' streams are. 400 forged 16-byte Echo-Requests with random
/// sequence numbers, from the server's address and port to the router's
/// ports of two restored connections: conntrack passes (with their NAT)
/// only those whose sequence number lies behind the real one. The engine
/// used to take the position from the first segment that started with a
/// PPTP header, forged or not, and then dropped every real segment from the
/// server as out of order (the clients' Call-Clear-Requests got no
/// Call-Disconnect-Notify back). Now only the inside host's acknowledgement
/// places the stream towards it: the forged pick-up is undone by the
/// client's next ACK.
#[test]
fn forged_data_after_a_restart_leaves_the_control_connections_working() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("inject", 2, 1);
    let atk = Attacker::new(&lab);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &["--cdn-call-id", "peer"]);
    let args = ["--call-id", "1000", "--gre-count", "3", "--hold", "6"];
    let tags = ["a", "b"];
    let a = lab.client(Host::Lan(0), SERVER, lan_addr(0), tags[0], &args);
    lab.wait_established(1);
    let b = lab.client(Host::Lan(1), SERVER, lan_addr(1), tags[1], &args);
    lab.wait_established(2);
    let ports: Vec<String> = masqueraded_ports(&lab).iter().map(u16::to_string).collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    lab.start_daemon(&[]);
    assert_eq!(established(&lab.status()).len(), 2, "restored");

    // PPTP Echo-Request: Length 16, control message, magic cookie, type 5.
    let echo_request = "001000011a2b3c4d00050000deadbeef";
    let spray = atk.spray(&[
        "--to",
        &ROUTER_WAN.to_string(),
        "--to-ports",
        &ports.join(","),
        "--from",
        &SERVER.to_string(),
        "--from-port",
        "1723",
        "--kinds",
        "psh-ack",
        "--payload-hex",
        echo_request,
        "--count",
        "400",
    ]);
    println!("spray: {spray}");
    let st = settled(&lab);
    println!("after the spray: {:#}", st["stats"]);

    for (p, tag) in [a, b].into_iter().zip(tags) {
        let v = lab.client_ok(p, tag);
        let call = &v["calls"][0];
        assert_eq!(call["cleared"], true, "{tag}: {v}");
        assert_eq!(u64_of(&call["cdn_result"]), 4, "{tag}: {v}");
    }
    lab.stop_server(srv);
    let end = lab.wait_no_calls();
    assert_eq!(stat(&end, "ended_disconnect"), 2, "{end:#}");
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

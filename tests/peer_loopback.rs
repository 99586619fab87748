//! Root-only tests of the `pptp-peer` tool itself, with no NAT in between: a
//! server in one network namespace, clients in another, joined by a veth pair.
//!
//! They establish that the peers are a trustworthy oracle for the ALG tests:
//! two clients using the same Call ID each get back only their own GRE, and the
//! control protocol works under every segmentation mode.
//!
//! Without root they print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/netns.rs"]
mod netns;
use netns::{have_root, Netns};

const PEER: &str = env!("CARGO_BIN_EXE_pptp-peer");
const SERVER_IP: &str = "10.213.0.1";
/// Client addresses; both live in the client namespace on one veth.
const CLIENT_IPS: [&str; 3] = ["10.213.0.2", "10.213.0.3", "10.213.0.4"];
/// Upper bound for any single peer process; the tests normally need a few seconds.
const PROC_TIMEOUT: Duration = Duration::from_secs(40);

/// A running peer process with its output drained by threads, so it can never
/// block on a full pipe.
struct Proc {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr_lines: Receiver<String>,
    stderr_all: Option<JoinHandle<String>>,
}

/// Two namespaces joined by a veth pair; deleted (with every process we started
/// in them) on drop, even when an assertion fails.
struct Lab {
    server_ns: Netns,
    client_ns: Netns,
    procs: Vec<Proc>,
}

impl Lab {
    fn new(case: u8) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            server_ns: Netns::add(&format!("pptppeer-{pid}-{case}-s")),
            client_ns: Netns::add(&format!("pptppeer-{pid}-{case}-c")),
            procs: Vec::new(),
        };
        // Interface names are limited to 15 bytes; they only need to be unique
        // at creation time, before they move into the namespaces.
        let (va, vb) = (format!("pp{pid}{case}a"), format!("pp{pid}{case}b"));
        let (s, c) = (&lab.server_ns, &lab.client_ns);
        s.veth(&va, c, &vb);
        s.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", &va]);
        for a in CLIENT_IPS {
            c.ip(&["addr", "add", &format!("{a}/24"), "dev", &vb]);
        }
        s.ip(&["link", "set", &va, "up"]);
        c.ip(&["link", "set", &vb, "up"]);
        lab
    }

    /// Starts `pptp-peer ARGS` inside a namespace; returns its index.
    fn spawn(&mut self, server_side: bool, args: &[&str]) -> usize {
        let ns = if server_side {
            self.server_ns.name()
        } else {
            self.client_ns.name()
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, PEER])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pptp-peer");
        let mut out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, stderr_lines) = mpsc::channel();
        let stderr_all = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        self.procs.push(Proc {
            child,
            stdout: Some(stdout),
            stderr_lines,
            stderr_all: Some(stderr_all),
        });
        self.procs.len() - 1
    }

    /// Starts a server and waits until it listens.
    fn server(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["server", "--bind", SERVER_IP, "--duration", "60"];
        args.extend_from_slice(extra);
        let i = self.spawn(true, &args);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.procs[i].stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return i,
                Ok(_) => {}
                Err(_) => panic!("server did not start listening within 10 s"),
            }
        }
    }

    /// Waits for a process to exit; returns (exit code, stdout summary, stderr).
    fn finish(&mut self, i: usize) -> (i32, Value, String) {
        let p = &mut self.procs[i];
        let deadline = Instant::now() + PROC_TIMEOUT;
        let status = loop {
            if let Some(st) = p.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                panic!("pptp-peer process {i} did not finish within {PROC_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let out = p
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let err = p
            .stderr_all
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let json = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!("process {i}: stdout is not one JSON object ({e}): {out:?}\nstderr:\n{err}")
        });
        (status.code().unwrap_or(-1), json, err)
    }

    /// Asks the server to stop (SIGTERM) and returns its summary.
    fn stop_server(&mut self, i: usize) -> Value {
        let pid = self.procs[i].child.id() as libc::pid_t;
        // `ip netns exec` execs the program, so this pid is the server itself.
        // SAFETY: plain syscall on a child we started and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (code, v, err) = self.finish(i);
        assert_eq!(code, 0, "server failed:\n{err}");
        v
    }

    /// Runs clients concurrently and returns their (tag, summary) in order.
    fn run_clients(&mut self, clients: &[(&str, &str, Vec<&str>)]) -> Vec<(String, Value)> {
        let idx: Vec<usize> = clients
            .iter()
            .map(|(tag, bind, extra)| {
                let mut args = vec![
                    "client", "--server", SERVER_IP, "--bind", bind, "--tag", tag,
                ];
                args.extend_from_slice(extra);
                self.spawn(false, &args)
            })
            .collect();
        idx.into_iter()
            .zip(clients)
            .map(|(i, (tag, _, _))| {
                let (code, v, err) = self.finish(i);
                assert_eq!(code, 0, "client {tag} failed: {v}\n{err}");
                (tag.to_string(), v)
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        // The namespaces go with the fields, after this.
    }
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Checks one client's summary: every call connected, and it received exactly
/// the echoes of its own payloads and nothing else.
fn check_client(tag: &str, v: &Value, calls: u64, gre_count: u64) {
    assert_eq!(v["ok"], Value::Bool(true), "{tag}: {v}");
    let cs = v["calls"].as_array().expect("calls");
    assert_eq!(cs.len() as u64, calls, "{tag}: {v}");
    let mut want = BTreeSet::new();
    for c in cs {
        let own = u64_of(&c["own_id"]);
        assert!(c["peer_id"].is_u64(), "{tag}: call {own} has no server id");
        assert_eq!(u64_of(&c["result"]), 1);
        assert_eq!(u64_of(&c["gre_sent"]), gre_count);
        assert_eq!(u64_of(&c["echoes_received"]), gre_count, "{tag}: {v}");
        assert_eq!(u64_of(&c["sli_received"]), 1, "{tag}: {v}");
        for seq in 0..gre_count {
            want.insert(format!("echo:{tag}:call{own}:{seq}"));
        }
    }
    let got: Vec<&str> = v["gre_received"]
        .as_array()
        .expect("gre_received")
        .iter()
        .map(|g| g["payload"].as_str().expect("payload"))
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{tag} received other GRE too: {got:?}"
    );
    assert_eq!(
        got.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        want,
        "{tag}"
    );
}

/// Checks the server saw each client's GRE on that client's calls only.
fn check_server(v: &Value, clients: &[(String, Value)], gre_count: u64) {
    assert_eq!(
        v["errors"].as_array().map(Vec::len),
        Some(0),
        "server errors: {v}"
    );
    assert_eq!(
        v["unknown_gre"].as_array().map(Vec::len),
        Some(0),
        "unknown GRE: {v}"
    );
    let calls = v["calls"].as_array().expect("calls");
    let want_calls: usize = clients
        .iter()
        .map(|(_, c)| c["calls"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(calls.len(), want_calls, "{v}");
    let own_ids: BTreeSet<u64> = calls.iter().map(|c| u64_of(&c["own_id"])).collect();
    assert_eq!(own_ids.len(), calls.len(), "server ids must be distinct");
    for (tag, c) in clients {
        let local_ip = c["local"]
            .as_str()
            .and_then(|l| l.split(':').next())
            .expect("local");
        for cc in c["calls"].as_array().expect("calls") {
            let sid = u64_of(&cc["peer_id"]);
            let own = u64_of(&cc["own_id"]);
            let sc = calls
                .iter()
                .find(|s| u64_of(&s["own_id"]) == sid)
                .expect("server call");
            assert_eq!(u64_of(&sc["peer_id"]), own);
            assert_eq!(sc["peer_addr"], Value::from(local_ip));
            let payloads: BTreeSet<String> = sc["gre_received"]
                .as_array()
                .expect("gre")
                .iter()
                .map(|g| {
                    assert_eq!(g["from"], Value::from(local_ip));
                    g["payload"].as_str().expect("payload").to_string()
                })
                .collect();
            let want: BTreeSet<String> = (0..gre_count)
                .map(|s| format!("{tag}:call{own}:{s}"))
                .collect();
            assert_eq!(payloads, want, "server call {sid}");
        }
    }
}

#[test]
fn two_clients_with_the_same_call_id_get_only_their_own_echoes() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new(1);
    let srv = lab.server(&[]);
    let common = vec!["--call-id", "1000", "--calls", "2", "--gre-count", "3"];
    let clients = lab.run_clients(&[
        ("alice", CLIENT_IPS[0], common.clone()),
        ("bob", CLIENT_IPS[1], common.clone()),
    ]);
    let server = lab.stop_server(srv);
    for (tag, v) in &clients {
        check_client(tag, v, 2, 3);
    }
    check_server(&server, &clients, 3);
    for call in server["calls"].as_array().expect("calls") {
        assert_eq!(call["state"], "cleared", "{call}");
    }
}

#[test]
fn every_segmentation_mode_completes_the_protocol() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new(2);
    // The server splits its own messages too, so the clients' splitter is exercised.
    let srv = lab.server(&[
        "--segmentation",
        "split-callid",
        "--wan-error",
        "--cdn-call-id",
        "peer",
    ]);
    let clients = lab.run_clients(&[
        (
            "split",
            CLIENT_IPS[0],
            vec![
                "--call-id",
                "7",
                "--calls",
                "2",
                "--segmentation",
                "split-callid",
            ],
        ),
        (
            "coal",
            CLIENT_IPS[1],
            vec![
                "--call-id",
                "7",
                "--calls",
                "3",
                "--segmentation",
                "coalesce",
                "--close",
                "stop",
            ],
        ),
        (
            "bytes",
            CLIENT_IPS[2],
            vec![
                "--call-id",
                "7",
                "--segmentation",
                "split:7",
                "--close",
                "rst",
            ],
        ),
    ]);
    let server = lab.stop_server(srv);
    for (tag, v) in &clients {
        check_client(
            tag,
            v,
            v["calls"].as_array().map_or(0, |c| c.len() as u64),
            3,
        );
        for c in v["calls"].as_array().expect("calls") {
            assert_eq!(u64_of(&c["wen_received"]), 1, "{tag}: {v}");
        }
    }
    assert_eq!(clients[0].1["calls"].as_array().map(Vec::len), Some(2));
    assert_eq!(clients[1].1["calls"].as_array().map(Vec::len), Some(3));
    check_server(&server, &clients, 3);
    // The coalescing client's step arrives as one segment; the server must still see every message.
    let conns = server["control_connections"]
        .as_array()
        .expect("connections");
    let coal_local = clients[1].1["local"].as_str().expect("local");
    let coal = conns
        .iter()
        .find(|c| c["peer"] == coal_local)
        .expect("coalesce connection");
    let names: Vec<&str> = coal["received"]
        .as_array()
        .expect("received")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        names,
        ["SCCRQ", "EchoRQ", "OCRQ", "OCRQ", "OCRQ", "SLI", "SLI", "SLI", "StopCCRQ"],
        "{coal}"
    );
    let cleared = clients[0].1["calls"].as_array().expect("calls");
    assert!(
        cleared
            .iter()
            .all(|c| c["cleared"] == true && c["cdn_result"] == 4),
        "{cleared:?}"
    );
}

#[test]
fn incoming_calls_and_malformed_messages() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new(3);
    let srv = lab.server(&["--incoming-call"]);
    let clients = lab.run_clients(&[
        (
            "inc",
            CLIENT_IPS[0],
            vec!["--call-id", "0x4000", "--incoming", "--require-echoes"],
        ),
        (
            "cookie",
            CLIENT_IPS[1],
            vec!["--call-id", "1", "--incoming", "--malformed", "bad-cookie"],
        ),
        (
            "unknown",
            CLIENT_IPS[2],
            vec![
                "--call-id",
                "2",
                "--incoming",
                "--malformed",
                "unknown-type",
            ],
        ),
    ]);
    let server = lab.stop_server(srv);
    check_client("inc", &clients[0].1, 1, 3);
    check_client("unknown", &clients[2].1, 1, 3);
    assert_eq!(
        clients[1].1["malformed"]["outcome"], "closed",
        "{}",
        clients[1].1
    );
    assert_eq!(
        clients[2].1["malformed"]["outcome"], "survived",
        "{}",
        clients[2].1
    );
    let errors = server["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "only the bad cookie is an error: {server}");
    let incoming: Vec<&Value> = server["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["direction"] == "incoming" && c["state"] == "cleared")
        .collect();
    assert_eq!(incoming.len(), 2, "{server}");
    assert!(incoming.iter().any(|c| c["peer_id"] == 0x4000));
}

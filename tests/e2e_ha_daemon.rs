//! Two daemons of a router pair (issue 10), root only, in network
//! namespaces: two labs of `e2e/lab.rs` with the same addresses (LAN hosts,
//! the server, the routers' own addresses), as the two routers of a pair
//! see the same segments, and a sync veth between the two routers. Router
//! 1 (node 0) holds the virtual address `VIP` at first.
//!
//! A call made through router 1 shows in router 2's status with the same
//! NAT id, and router 2's kernel maps hold its GRE elements (hot standby);
//! its end removes them. The replication lag (router 1's call start to
//! router 2's, from the daemons' log stamps) is printed over 100 calls.
//! Moving `VIP` swaps the roles. A call made through router 2 while router
//! 1's daemon is down shows on router 1 once it is back (failback). Router 2 restarted with another key is refused by
//! both sides, counted and logged, and router 1 then calls its peer lost.
//!
//! Without root the test prints "skipped: needs root" and passes, unless
//! `PPTP_ALG_E2E=1` demands that it really run.

#[path = "e2e/lab.rs"]
mod lab;

use lab::*;
use serde_json::Value;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SYNC_1: &str = "10.213.9.1";
const SYNC_2: &str = "10.213.9.2";
/// The virtual public address keepalived would move.
const VIP: &str = "10.213.2.100";

fn key_file(lab: &Lab, name: &str, key: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = lab.status_socket().with_file_name(name);
    std::fs::write(&p, key).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn start(lab: &mut Lab, node: &str, me: &str, peer: &str, key: &Path) -> Pid {
    let key = key.to_str().unwrap().to_string();
    lab.start_daemon(&[
        "--ha-node",
        node,
        "--ha-listen",
        me,
        "--ha-peer",
        peer,
        "--ha-key-file",
        &key,
        "--ha-address",
        VIP,
        // The 100 calls of one host for the lag measurement.
        "--max-calls-per-host",
        "256",
    ])
}

/// A call with Call ID 0x4000 from LAN host 0 through `lab`'s router, up
/// and held until the client gets SIGUSR1.
fn held_call(lab: &mut Lab, tag: &str) -> Pid {
    let c = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        tag,
        &[
            "--call-id",
            "0x4000",
            "--hold",
            "0.2",
            "--until-signal",
            "15",
        ],
    );
    lab.wait_line(c, "holding calls until SIGUSR1", Duration::from_secs(10));
    c
}

fn ha(status: &Value) -> &Value {
    &status["ha"]
}

fn in_sync(status: &Value) -> bool {
    ha(status)["in_sync"] == true && ha(status)["peer"]["alive"] == true
}

/// The calls of a status as (inside host, inside id, NAT id, state).
fn calls(status: &Value) -> Vec<(String, u64, u64, String)> {
    let mut v: Vec<_> = status["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            (
                c["inside_host"].as_str().unwrap().to_string(),
                u64_of(&c["inside_id"]),
                u64_of(&c["nat_id"]),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The elements of map `name` of the router's table as (key, value) text:
/// `nft -j` writes a concatenated key as `{"concat": [addr, id]}`.
fn map_elements(lab: &Lab, name: &str) -> Vec<(String, String)> {
    let out = lab.exec(
        Host::Router,
        "nft",
        &["-j", "list", "map", "ip", "pptp_alg", name],
    );
    let doc: Value = serde_json::from_str(&out).expect("nft -j output");
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string().trim_matches('"').to_string())
            .collect::<Vec<_>>()
            .join(" . "),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().unwrap() {
        let Some(elems) = item["map"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let pair = e.as_array().expect("[key, value]");
            // A key with counters comes as {"elem": {"val": key, ...}}.
            let key = pair[0]
                .get("elem")
                .map_or(&pair[0], |el| &el["val"])
                .clone();
            out.push((text(&key), text(&pair[1])));
        }
    }
    out
}

/// The call's GRE elements in the router's maps: the server's GRE to NAT
/// id `nat` goes to `host` with Call ID `inside_id`.
fn has_gre_elements(lab: &Lab, nat: u64, host: Ipv4Addr, inside_id: u64) -> bool {
    let key = format!("{SERVER} . {nat}");
    map_elements(lab, "gre_daddr").contains(&(key.clone(), host.to_string()))
        && map_elements(lab, "gre_cid").contains(&(key, inside_id.to_string()))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never saw {what} within {timeout:?}");
}

/// Milliseconds of the day of a log line's stamp (`2026-12-07T03:40:00.123Z`).
fn stamp_ms(line: &str) -> Option<u64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.trim_end_matches('Z');
    let (hms, ms) = t.split_once('.')?;
    let mut it = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, s) = (it.next()??, it.next()??, it.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}

/// NAT id -> stamp of the first line that contains `needle` and names it.
fn starts(log: &str, needle: &str) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for line in log.lines().filter(|l| l.contains(needle)) {
        let Some(id) = line
            .split("as NAT id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|x| x.parse().ok())
        else {
            continue;
        };
        if let Some(t) = stamp_ms(line) {
            m.entry(id).or_insert(t);
        }
    }
    m
}

#[test]
fn two_daemons_replicate_calls_both_ways() {
    if !have_root() {
        return;
    }
    let t0 = std::time::Instant::now();
    let mut r1 = Lab::new("ha1", 1, 1);
    let mut r2 = Lab::new("ha2", 1, 1);
    r1.router.veth("sync0", &r2.router, "sync0");
    for (lab, addr) in [(&r1, SYNC_1), (&r2, SYNC_2)] {
        lab.ip(
            Host::Router,
            &["addr", "add", &format!("{addr}/30"), "dev", "sync0"],
        );
        lab.ip(Host::Router, &["link", "set", "sync0", "up"]);
    }
    r1.ip(
        Host::Router,
        &["addr", "add", &format!("{VIP}/32"), "dev", "wan0"],
    );
    let key = "a pre-shared key of the pair 0123456789\n";
    let (k1, k2) = (key_file(&r1, "ha.key", key), key_file(&r2, "ha.key", key));
    let s1 = r1.server(Host::Wan, SERVER, &[]);
    let s2 = r2.server(Host::Wan, SERVER, &[]);
    start(&mut r1, "0", SYNC_1, SYNC_2, &k1);
    start(&mut r2, "1", SYNC_2, SYNC_1, &k2);
    let st1 = r1.wait_status(Duration::from_secs(5), "the peer in sync", in_sync);
    let st2 = r2.wait_status(Duration::from_secs(5), "the peer in sync", in_sync);
    assert_eq!(ha(&st1)["node"], 0);
    assert_eq!(ha(&st1)["role"], "active", "router 1 holds {VIP}");
    assert_eq!(ha(&st2)["role"], "backup");
    assert_eq!(ha(&st2)["peer"]["role"], "active");
    assert_eq!(ha(&st2)["peer"]["node"], 0);
    assert!(r1.daemon_log().contains("ha: peer up: node 1 backup"));
    assert!(r2
        .daemon_log()
        .contains("ha: resync: took the peer's whole table (0 live calls)"));
    let table = r2.exec(
        Host::Router,
        ALG,
        &["status", "--socket", r2.status_socket().to_str().unwrap()],
    );
    assert!(
        table.contains(
            "high availability: node 1 backup; peer 10.213.9.1:1729 node 0 active, alive, in sync"
        ),
        "{table}"
    );

    // A call through router 1 shows on router 2, with its GRE elements.
    let c = held_call(&mut r1, "one");
    let on1 = calls(&r1.wait_established(1));
    let nat = on1[0].2;
    assert_eq!(nat % 2, 0, "node 0's half of the ids");
    let on2 = calls(
        &r2.wait_status(Duration::from_secs(3), "router 1's call", |s| {
            calls(s).iter().any(|c| c.3 == "established")
        }),
    );
    assert_eq!(on2, on1, "the same call, NAT id {nat}, on router 2");
    assert!(
        has_gre_elements(&r2, nat, lan_addr(0), 0x4000),
        "router 2's maps: {:?} {:?}",
        map_elements(&r2, "gre_daddr"),
        map_elements(&r2, "gre_cid")
    );
    assert!(has_gre_elements(&r1, nat, lan_addr(0), 0x4000));
    assert!(r2.daemon_log().contains(&format!(
        "peer's call started: inside {}:16384",
        lan_addr(0)
    )));
    // Its end removes them there.
    r1.signal(c, libc::SIGUSR1);
    r1.client_ok(c, "one");
    r2.wait_status(Duration::from_secs(3), "the call's end", |s| {
        calls(s).is_empty()
    });
    wait_for("router 2's elements gone", Duration::from_secs(2), || {
        !has_gre_elements(&r2, nat, lan_addr(0), 0x4000)
    });
    let st2 = r2.status();
    assert_eq!(stat(&st2, "ended_peer"), 1);

    // Replication lag over 100 calls: router 1's "call started" line to
    // router 2's "peer's call started" line for the same NAT id.
    let sent = |st: &Value| {
        let h = ha(st);
        [
            u64_of(&h["bytes_sent"]),
            u64_of(&h["messages_sent"]),
            u64_of(&h["records_sent"]),
        ]
    };
    let before = sent(&r1.status());
    let t_many = std::time::Instant::now();
    let many = r1.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "many",
        &[
            "--call-id",
            "0x5000",
            "--calls",
            "100",
            "--window",
            "10",
            "--gre-count",
            "1",
            "--hold",
            "0.2",
            "--until-signal",
            "15",
        ],
    );
    r1.wait_line(many, "holding calls until SIGUSR1", Duration::from_secs(15));
    r2.wait_status(Duration::from_secs(5), "100 replicated calls", |s| {
        established(s).len() == 100
    });
    let (a, b) = (
        starts(&r1.daemon_log(), "INFO  call started:"),
        starts(&r2.daemon_log(), "INFO  peer's call started:"),
    );
    let mut lag: Vec<u64> = a
        .iter()
        .filter(|(id, _)| **id >= 0x5000)
        .filter_map(|(id, t)| b.get(id).map(|u| u.saturating_sub(*t)))
        .collect();
    lag.sort_unstable();
    assert_eq!(lag.len(), 100, "every call's start on both routers");
    println!(
        "replication lag over {} calls (log stamps, ms): median {}, p99 {}, max {}",
        lag.len(),
        lag[lag.len() / 2],
        lag[lag.len() * 99 / 100],
        lag[lag.len() - 1]
    );
    r1.signal(many, libc::SIGUSR1);
    r1.client_ok(many, "many");
    r2.wait_status(Duration::from_secs(5), "the 100 calls' ends", |s| {
        calls(s).is_empty()
    });
    // The status's ha object is at most 100 ms old.
    let after = sent(&r1.wait_status(
        Duration::from_secs(2),
        "a start, an answer and an end record a call",
        |s| sent(s)[2] >= before[2] + 300,
    ));
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    println!(
        "sync traffic for 100 calls set up, answered and cleared in {:.1} s: {} records in {} \
         messages, {} bytes of UDP payload ({} bytes a call, heartbeats included)",
        t_many.elapsed().as_secs_f64(),
        d[2],
        d[1],
        d[0],
        d[0] / 100
    );

    // Failover: the virtual address moves, the roles follow.
    r1.ip(
        Host::Router,
        &["addr", "del", &format!("{VIP}/32"), "dev", "wan0"],
    );
    r2.ip(
        Host::Router,
        &["addr", "add", &format!("{VIP}/32"), "dev", "wan0"],
    );
    let st2 = r2.wait_status(Duration::from_secs(3), "router 2 active", |s| {
        ha(s)["role"] == "active" && ha(s)["peer"]["role"] == "backup"
    });
    assert_eq!(ha(&st2)["node"], 1);
    r1.wait_status(Duration::from_secs(3), "router 1 backup", |s| {
        ha(s)["role"] == "backup" && ha(s)["peer"]["role"] == "active"
    });
    assert!(r1.daemon_log().contains(&format!(
        "ha: role active -> backup ({VIP} left this router)"
    )));
    assert!(r2.daemon_log().contains(&format!(
        "ha: role backup -> active ({VIP} came to this router)"
    )));

    // Router 1's daemon is down while a call is made through router 2;
    // back, it takes router 2's table (failback).
    r1.stop_daemon();
    let c2 = held_call(&mut r2, "two");
    let on2 = calls(&r2.wait_established(1));
    let nat2 = on2[0].2;
    assert_eq!(nat2 % 2, 1, "node 1's half of the ids");
    start(&mut r1, "0", SYNC_1, SYNC_2, &k1);
    let on1 = calls(
        &r1.wait_status(Duration::from_secs(3), "router 2's call", |s| {
            calls(s).iter().any(|c| c.3 == "established")
        }),
    );
    assert_eq!(on1, on2);
    assert!(has_gre_elements(&r1, nat2, lan_addr(0), 0x4000));
    let st1 = r1.status();
    assert_eq!(ha(&st1)["role"], "backup", "{VIP} is router 2's");
    assert!(r1
        .daemon_log()
        .contains("ha: resync: took the peer's whole table (1 live calls)"));
    let log2 = r2.daemon_log();
    assert!(
        log2.contains("ha: peer up: node 0 backup"),
        "the new run greets"
    );
    assert!(log2.contains("ha: resync: sent this node's whole table to the peer"));
    r2.signal(c2, libc::SIGUSR1);
    r2.client_ok(c2, "two");
    r1.wait_status(Duration::from_secs(3), "its end", |s| calls(s).is_empty());

    // Router 2 comes back with another key: refused both ways, logged.
    r2.stop_daemon();
    let wrong = key_file(&r2, "wrong.key", "another key, just as long as it\n");
    start(&mut r2, "1", SYNC_2, SYNC_1, &wrong);
    r1.wait_status(Duration::from_secs(4), "auth failures", |s| {
        u64_of(&ha(s)["auth_failures"]) >= 1
    });
    let st2 = r2.wait_status(Duration::from_secs(4), "auth failures", |s| {
        u64_of(&ha(s)["auth_failures"]) >= 1
    });
    assert_eq!(ha(&st2)["peer"]["alive"], false);
    let refused = format!(
        "ha: message from {SYNC_2}:1729 refused: authentication failed (wrong key or corrupted \
         message)"
    );
    assert!(r1.daemon_log().contains(&refused), "{}", r1.daemon_log());
    assert!(r2.daemon_log().contains("refused: authentication failed"));
    // Nothing valid from router 2 any more: router 1 calls it lost.
    r1.wait_status(Duration::from_secs(5), "the peer lost", |s| {
        ha(s)["peer"]["alive"] == false && ha(s)["in_sync"] == false
    });
    assert!(r1.daemon_log().contains(&format!(
        "ha: peer lost: nothing valid from {SYNC_2}:1729 for 3 s"
    )));
    r2.stop_daemon();
    r1.stop_daemon();
    r1.stop_server(s1);
    r2.stop_server(s2);
    println!("took {:?}", t0.elapsed());
}

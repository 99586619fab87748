//! Reloading a running daemon (root only, in network namespaces; see
//! `e2e/lab.rs`): SIGHUP after the config file was edited. A limit change
//! applies at once (the next call is refused by it, counted and logged); a
//! queue change is refused with one line naming the key, and the running
//! configuration stays; the call that was up all along keeps its NAT id
//! and its GRE.
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::time::Duration;

use lab::*;

fn config_path(lab: &Lab) -> PathBuf {
    lab.status_socket().with_file_name("pptp-alg.toml")
}

fn write_config(lab: &Lab, text: &str) {
    std::fs::write(config_path(lab), text).expect("write the config file");
}

/// SIGHUP, then the reload's log line (which contains `needle`).
fn reload(lab: &mut Lab, needle: &str) -> String {
    let d = lab.daemon();
    lab.signal(d, libc::SIGHUP);
    lab.wait_line(d, needle, Duration::from_secs(10))
}

/// A client call from LAN host 0 with `call_id`, held `hold` seconds.
fn call(lab: &mut Lab, tag: &str, call_id: &str, hold: &str) -> Pid {
    lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        tag,
        &["--call-id", call_id, "--gre-count", "1", "--hold", hold],
    )
}

#[test]
fn sighup_applies_a_limit_refuses_a_queue_change_and_keeps_calls() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("reload", 1, 1);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    write_config(&lab, "max_calls_per_host = 64\n");
    let cfg = config_path(&lab);
    lab.start_daemon(&["--config", cfg.to_str().unwrap()]);
    let long = call(&mut lab, "long", "1000", "12");
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;

    // A limit: applies at once, the live call stays.
    write_config(&lab, "max_calls_per_host = 1\n");
    let line = reload(&mut lab, "reloaded config file");
    assert!(line.contains("`max_calls_per_host` 64 -> 1"), "{line}");
    let refused = call(&mut lab, "refused", "1001", "1");
    let out = lab.finish(refused);
    assert_ne!(out.code, 0, "a call past the new limit got through");
    // Counted once per (retransmitted) request.
    let st = lab.status();
    let refusals = stat(&st, "refused_host_limit");
    assert!(refusals >= 1, "{st:#}");
    assert!(lab.daemon_log().contains("call refused (HostLimit)"));

    // A queue: refused with the key named; the running config stays, so
    // the limit change in the same edit does not apply either.
    write_config(&lab, "max_calls_per_host = 64\nqueue_gre = 1800\n");
    let line = reload(&mut lab, "reload refused");
    assert!(line.contains("`queue_gre` 1725 -> 1800"), "{line}");
    assert!(line.contains("only at a restart"), "{line}");
    assert!(!line.contains("max_calls_per_host"), "{line}");
    let again = call(&mut lab, "again", "1002", "1");
    assert_ne!(lab.finish(again).code, 0, "the refused reload applied");
    let st = lab.status();
    assert!(stat(&st, "refused_host_limit") > refusals, "{st:#}");

    // A file that does not parse: refused naming the file and the key.
    write_config(&lab, "max_calls_per_host = \"many\"\n");
    let line = reload(&mut lab, "reload refused");
    assert!(line.contains(cfg.to_str().unwrap()), "{line}");
    assert!(line.contains("`max_calls_per_host`"), "{line}");

    // Flags given at start win over the file at every reload: the lab
    // starts the daemon with --log-level info, so the file's log_level
    // changes nothing (and a call start is still logged at info).
    write_config(&lab, "max_calls_per_host = 1\nlog_level = \"warn\"\n");
    let line = reload(&mut lab, "reload: config file");
    assert!(line.contains("unchanged"), "{line}");
    assert!(
        line.contains("flags given at start override the file's `log_level`"),
        "{line}"
    );

    // The first call lived through it all: same NAT id, GRE still reaches
    // its host (through the queue or the fast path), and it ends normally.
    let st = lab.status();
    let row = call_row(&st, lan_addr(0), 1000);
    assert_eq!(row["state"], "established", "{st:#}");
    assert_eq!(u64_of(&row["nat_id"]), u64::from(nat), "{st:#}");
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-reload", 2, &[]);
    let v = lab.client_ok(long, "long");
    assert_eq!(
        payloads(&v).iter().filter(|p| *p == "after-reload").count(),
        2,
        "{v}"
    );
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("call ended (Disconnect)").count(),
        1,
        "{}",
        out.stderr
    );
}

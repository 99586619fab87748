//! The write-ahead journal across a crash (root only, in network namespaces;
//! see `e2e/lab.rs`). The state file alone is written every 2 s while calls
//! change, so a daemon killed within 2 s of a call's start or end used to
//! forget it: after the restart another host got the lost call's NAT id and
//! received its GRE. The journal has each change written before the packet
//! that carries it leaves. The crash tests here SIGKILL the daemon well
//! inside that window (and check that they did) and restart it at once.
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 3;

/// Well inside the 2 s between two saves of the state file: the daemon's
/// first save comes 2 s after it is ready, so a kill this soon after the
/// ready line found no call in the state file without the journal.
const KILL_WITHIN: Duration = Duration::from_millis(1500);

/// A client call from LAN host `host` with Call ID 1000, held `hold` seconds.
fn call(lab: &mut Lab, host: usize, tag: &str, hold: &str) -> Pid {
    lab.client(
        Host::Lan(host),
        SERVER,
        lan_addr(host),
        tag,
        &[
            "--call-id",
            "1000",
            "--gre-count",
            &GRE_COUNT.to_string(),
            "--hold",
            hold,
        ],
    )
}

fn state_path(lab: &Lab) -> PathBuf {
    // The lab keeps the daemon's state file beside its status socket.
    lab.status_socket().with_file_name("state.json")
}

/// Kills the daemon and checks that it happened within [`KILL_WITHIN`] of
/// `since` (the daemon's ready line, or its last save of the state file),
/// so that the test shows what the journal alone keeps.
fn kill_soon(lab: &mut Lab, since: Instant, what: &str) {
    lab.kill_daemon();
    let after = since.elapsed();
    eprintln!("killed {after:?} after {what}");
    assert!(
        after < KILL_WITHIN,
        "killed {after:?} after {what}: too late to show the journal"
    );
}

fn stop_cleanly(lab: &mut Lab) -> String {
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit status; log:\n{}", out.stderr);
    assert!(!lab.router_has_table("pptp_alg"), "table left behind");
    assert!(!out.stderr.contains(" ERROR "), "{}", out.stderr);
    out.stderr
}

/// A call that is a few hundred milliseconds old when the daemon is
/// killed comes back with the restart: the status shows it, its GRE
/// reaches its host, and a second host calling right after the restart with
/// the same Call ID gets another NAT id and none of the first call's GRE.
/// A record torn by the crash (here appended by hand) is ignored.
#[test]
fn sigkill_right_after_a_call_started_keeps_the_call() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("jr_young", 2, 1);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    lab.start_daemon(&[]);
    let ready = Instant::now();
    let a = call(&mut lab, 0, "old", "8");
    let up = lab.wait_established(1);
    let row = call_row(&up, lan_addr(0), 1000).clone();
    let nat = u64_of(&row["nat_id"]) as u16;
    let a_server_id = u64_of(&row["outside_id"]) as u16;
    kill_soon(&mut lab, ready, "the daemon was ready");
    // As if it had died in the middle of writing another record: that
    // one is ignored, the complete ones are not.
    let files = journal_files(&lab);
    assert_eq!(files.len(), 1, "{files:?}");
    let path = state_path(&lab).with_file_name(&files[0].0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("journal");
    std::io::Write::write_all(&mut f, b"{\"ev\":\"start\",\"at\":17").expect("append");
    drop(f);

    lab.start_daemon(&[]);
    let log = lab.daemon_log();
    assert!(
        log.contains("ignored an incomplete last record (21 bytes"),
        "{log}"
    );
    assert!(log.contains("replayed 2 journal record(s)"), "{log}");
    assert!(log.contains("restored 1 of 1 live calls"), "{log}");
    let st = lab.status();
    let back = call_row(&st, lan_addr(0), 1000);
    assert_eq!(u64_of(&back["nat_id"]), u64::from(nat), "{st:#}");
    assert_eq!(back["state"], "established", "{st:#}");
    assert_eq!(u64_of(&back["outside_id"]), u64::from(a_server_id));

    // Another host, the same Call ID, right after the restart.
    let b = call(&mut lab, 1, "new", "2");
    let st = lab.wait_established(2);
    let b_nat = u64_of(&call_row(&st, lan_addr(1), 1000)["nat_id"]);
    assert_ne!(
        b_nat,
        u64::from(nat),
        "the lost call's NAT id given away: {st:#}"
    );
    // The old call's GRE, both ways: its PPP talks to the server, which
    // answers to the old NAT id; and the server's own packets to it.
    lab.gre_send_as(
        Host::Lan(0),
        lan_addr(0),
        SERVER,
        a_server_id,
        "old:call1000:late",
    );
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-restart", 2, &[]);
    let b = lab.client_ok(b, "new");
    assert_exactly_own_echoes("new", &b, 1, GRE_COUNT);
    assert!(
        lab.is_running(a),
        "the old client should still hold its call"
    );
    let a = lab.finish(a).json("old");
    let got = payloads(&a);
    assert!(
        got.iter().any(|p| p == "echo:old:call1000:late"),
        "the old call's GRE must reach its host after the restart: {a}"
    );
    assert_eq!(
        got.iter().filter(|p| *p == "after-restart").count(),
        2,
        "{a}"
    );
    let st = lab.status();
    assert_eq!(stat(&st, "gre_unknown_call"), 0, "{st:#}");
    assert_eq!(stat(&st, "journal_errors"), 0, "{st:#}");
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// A call that ended just before the daemon was killed keeps its NAT id
/// in quarantine across the restart: GRE to the id is dropped as an
/// unknown call's, and a new call with the same Call ID gets another id.
#[test]
fn sigkill_right_after_a_call_ended_keeps_its_quarantine() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("jr_ended", 2, 1);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    lab.start_daemon(&[]);
    let ready = Instant::now();
    let a = call(&mut lab, 0, "gone", "0");
    let a = lab.client_ok(a, "gone");
    assert_exactly_own_echoes("gone", &a, 1, GRE_COUNT);
    lab.wait_status(Duration::from_secs(1), "the call in quarantine", |s| {
        s["calls"].as_array().is_some_and(Vec::is_empty) && s["quarantined"] == 1
    });
    kill_soon(&mut lab, ready, "the daemon was ready");
    let files = journal_files(&lab);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, 3, "start, answer, end: {files:?}");
    // The id policy `keep` gave the first call its own id.
    let nat = 1000;

    lab.start_daemon(&[]);
    let log = lab.daemon_log();
    assert!(log.contains("replayed 3 journal record(s)"), "{log}");
    let st = lab.status();
    assert_eq!(st["quarantined"], 1, "{st:#}");
    assert!(st["calls"].as_array().is_some_and(Vec::is_empty), "{st:#}");

    let b = call(&mut lab, 1, "new", "2");
    let st = lab.wait_established(1);
    let b_nat = u64_of(&call_row(&st, lan_addr(1), 1000)["nat_id"]);
    assert_ne!(b_nat, nat, "a NAT id in quarantine given away: {st:#}");
    // Late GRE of the ended call, while B's call is up.
    lab.gre_send_from_server(ROUTER_WAN, nat as u16, "late-for-gone", 2, &[]);
    lab.wait_status(Duration::from_secs(5), "2 unknown GRE", |s| {
        stat(s, "gre_unknown_call") == 2
    });
    let b = lab.client_ok(b, "new");
    assert_exactly_own_echoes("new", &b, 1, GRE_COUNT);
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// A journal that cannot be written (here a directory where its file
/// should be) costs nothing but the journal: the failure is logged once
/// and counted, and calls are translated as ever.
#[test]
fn journal_write_failures_are_counted_and_calls_go_on() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("jr_fail", 1, 1);
    let journal = PathBuf::from(format!("{}.journal.1", state_path(&lab).display()));
    std::fs::create_dir(&journal).expect("directory in the journal's way");
    let srv = lab.server(Host::Wan, SERVER, &[]);
    lab.start_daemon(&[]);
    let a = call(&mut lab, 0, "works", "0");
    let a = lab.client_ok(a, "works");
    assert_exactly_own_echoes("works", &a, 1, GRE_COUNT);
    let st: Value = lab.wait_status(Duration::from_secs(5), "journal errors", |s| {
        stat(s, "journal_errors") >= 2
    });
    assert_eq!(stat(&st, "journal_records"), 0, "{st:#}");
    let log = lab.daemon_log();
    assert_eq!(
        log.matches("journal: cannot write call changes").count(),
        1,
        "{log}"
    );
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// The journal files of the lab's daemon and their lines.
fn journal_files(lab: &Lab) -> Vec<(String, usize)> {
    let dir = lab.status_socket();
    let dir = dir.parent().expect("lab directory");
    let mut out: Vec<(String, usize)> = std::fs::read_dir(dir)
        .expect("lab directory")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.starts_with("state.json.journal.").then(|| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                (name, text.lines().count())
            })
        })
        .collect();
    out.sort();
    out
}

/// Calls on both sides of a snapshot: the one taken before it comes from
/// the state file, the one after it from the journal's new generation, each
/// once (the older generation is gone with the snapshot in place).
#[test]
fn sigkill_after_a_snapshot_replays_only_what_followed_it() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("jr_gen", 2, 1);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    lab.start_daemon(&[]);
    let a = call(&mut lab, 0, "first", "10");
    lab.wait_established(1);
    // The periodic snapshot (2 s after the change) takes A's call.
    let state = state_path(&lab);
    let deadline = Instant::now() + Duration::from_secs(5);
    let a_host = format!("\"{}:", lan_addr(0));
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&a_host)) {
        assert!(Instant::now() < deadline, "no snapshot with A's call");
        std::thread::sleep(Duration::from_millis(20));
    }
    let snapshot = Instant::now();
    let b = call(&mut lab, 1, "second", "10");
    lab.wait_established(2);
    kill_soon(&mut lab, snapshot, "the snapshot");
    let files = journal_files(&lab);
    assert_eq!(files.len(), 1, "older generations removed: {files:?}");
    assert_eq!(files[0].1, 2, "B's start and answer: {files:?}");

    lab.start_daemon(&[]);
    let log = lab.daemon_log();
    assert!(log.contains("replayed 2 journal record(s)"), "{log}");
    assert!(log.contains("restored 2 of 2 live calls"), "{log}");
    let st = lab.status();
    assert_eq!(established(&st).len(), 2, "{st:#}");
    assert_distinct_nat_ids(&st, 2);
    // The restart wrote its own snapshot and removed the journal.
    assert!(journal_files(&lab).is_empty(), "{:?}", journal_files(&lab));
    lab.terminate(a);
    lab.terminate(b);
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

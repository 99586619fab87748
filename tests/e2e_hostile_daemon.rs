//! The daemon under signals and inputs an operator or an intruder may throw
//! at it (root only, in network namespaces; see `e2e/lab.rs`): SIGHUP, a
//! huge state file, a state file from the future.
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 3;

/// A client call from LAN host `host` with Call ID 1000, held `hold` seconds.
fn call(lab: &mut Lab, host: usize, tag: &str, hold: &str) -> Pid {
    lab.client(
        Host::Lan(host),
        SERVER,
        lan_addr(host),
        tag,
        &["--call-id", "1000", "--gre-count", "3", "--hold", hold],
    )
}

/// Stops the daemon with SIGTERM and checks that it stopped cleanly: exit
/// status 0, its table and status socket gone. Returns its whole log.
fn stop_cleanly(lab: &mut Lab) -> String {
    let sock = lab.status_socket();
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit status; log:\n{}", out.stderr);
    assert!(out.stderr.contains("SIGTERM: stopping"), "{}", out.stderr);
    assert!(!lab.router_has_table("pptp_alg"), "table left behind");
    assert!(!sock.exists(), "status socket left behind");
    assert!(!out.stderr.contains(" ERROR "), "{}", out.stderr);
    out.stderr
}

fn state_path(lab: &Lab) -> PathBuf {
    // The lab keeps the daemon's state file beside its status socket.
    lab.status_socket().with_file_name("state.json")
}

/// SIGHUP used to end the daemon (status 129) without saving its calls or
/// removing its socket. Now it reloads the configuration; a daemon started
/// without a config file reads the same defaults and flags again, says so
/// in one line and changes nothing: the daemon keeps running, calls that
/// are up stay up, new calls work, status answers, and SIGTERM still stops
/// it cleanly.
#[test]
fn sighup_without_a_config_file_changes_nothing() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("sighup", 2, 1);
    let d = lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let a = call(&mut lab, 0, "before", "4");
    lab.wait_established(1);

    // SAFETY: plain syscall on the daemon we started and have not reaped.
    unsafe { libc::kill(lab.daemon_pid() as libc::pid_t, libc::SIGHUP) };
    let line = lab.wait_line(d, "reload:", Duration::from_secs(5));
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        line.contains("reload: the built-in defaults (no config file) unchanged"),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.is_running(d), "SIGHUP stopped the daemon");
    assert!(lab.status_socket().exists(), "status socket gone");
    let st = lab.status();
    assert_eq!(established(&st).len(), 1, "the call before SIGHUP: {st:#}");

    // A call placed after the signal is translated as before.
    let b = call(&mut lab, 1, "after", "1");
    let b = lab.client_ok(b, "after");
    assert_exactly_own_echoes("after", &b, 1, GRE_COUNT);
    let a = lab.client_ok(a, "before");
    assert_exactly_own_echoes("before", &a, 1, GRE_COUNT);
    lab.wait_no_calls();
    lab.stop_server(srv);

    let log = stop_cleanly(&mut lab);
    assert_eq!(log.matches("reload").count(), 1, "{log}");
    assert_eq!(log.matches("call started: inside").count(), 2, "{log}");
}

/// A state file far larger than `max_calls` calls can take is refused by
/// its size, unread, with a line saying so; the daemon starts and serves.
#[test]
fn huge_state_file_is_refused_unread() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("hugestate", 1, 1);
    let path = state_path(&lab);
    // 220 MB, sparse: costs no disk, but a reader would have to go through it.
    let f = std::fs::File::create(&path).expect("state file");
    f.set_len(220 << 20).expect("set_len");
    drop(f);
    let t = std::time::Instant::now();
    lab.start_daemon(&["--max-calls", "1000"]);
    let started = t.elapsed();
    let log = lab.daemon_log();
    let want = format!(
        "ignoring saved calls in {}: the file is larger than {} bytes, more than 1000 live and \
         as many quarantined saved calls (max_calls) can take at {} bytes each: refused unread",
        path.display(),
        pptp_alg::daemon::state::size_limit(1000),
        pptp_alg::daemon::state::BYTES_PER_CALL,
    );
    assert!(log.contains(&want), "{log}");
    // The refusal comes before the queues exist, so nothing waits on it.
    let refused = log.find("ignoring saved calls").expect("refusal line");
    let bound = log.find("bound queues").expect("bound line");
    assert!(refused < bound, "{log}");
    // The control socket holds every packet both control queues may hold
    // (4,096 each by default, about 4 kB a packet; the kernel reports twice
    // what was asked): a busy daemon's socket must not drop control
    // segments before the queues are full.
    let line = &log[bound..log[bound..].find('\n').map_or(log.len(), |e| bound + e)];
    let control_kb: u64 = line
        .split("socket buffers ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no socket buffer size: {line}"));
    assert!(control_kb >= 2 * 2 * 4096 * 4, "{line}");
    assert!(started < Duration::from_secs(10), "start took {started:?}");
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let c = call(&mut lab, 0, "works", "1");
    let c = lab.client_ok(c, "works");
    assert_exactly_own_echoes("works", &c, 1, GRE_COUNT);
    lab.stop_server(srv);
    stop_cleanly(&mut lab);
}

/// A state file whose `saved_at` is later than now cannot be aged: its calls
/// (which would otherwise be restored) are not taken back, and the log says
/// why.
#[test]
fn state_file_from_the_future_is_not_restored() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("futurestate", 1, 1);
    let path = state_path(&lab);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let doc = |saved_at: u64| -> Value {
        serde_json::json!({
            "saved_at": saved_at,
            "calls": [{
                "conn": {
                    "inside": format!("{}:40000", lan_addr(0)),
                    "outside": format!("{SERVER}:1723"),
                },
                "inside_id": 1000,
                "outside_id": 7,
                "nat_id": 1000,
                "established": true,
            }],
        })
    };
    std::fs::write(&path, doc(now + 3600).to_string()).expect("write");
    lab.start_daemon(&[]);
    let log = lab.daemon_log();
    assert!(
        log.contains(&format!(
            "ignoring saved calls in {}: saved_at {}",
            path.display(),
            now + 3600
        )),
        "{log}"
    );
    assert!(log.contains("its calls are not restored"), "{log}");
    let st = lab.status();
    assert_eq!(st["calls"].as_array().map(Vec::len), Some(0), "{st:#}");
    stop_cleanly(&mut lab);

    // The same call saved a second ago is taken back: the file was right
    // but for its time.
    std::fs::write(&path, doc(now).to_string()).expect("write");
    lab.start_daemon(&[]);
    let st = lab.status();
    assert_eq!(st["calls"].as_array().map(Vec::len), Some(1), "{st:#}");
    assert!(lab.daemon_log().contains("restored 1 of 1 live calls"));
    stop_cleanly(&mut lab);
}

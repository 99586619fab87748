//! The status socket under clients that connect and never read (no root
//! needed): a normal `pptp-alg status` still answers at once, and each
//! stalled client is cut off after the timeout, logged and counted.

use pptp_alg::alg::{CallInfo, CallState, ConnKey};
use pptp_alg::daemon::status::{
    Installed, RulesInfo, StatusReport, StatusServer, CLIENT_TIMEOUT, MAX_CLIENTS, SCHEMA,
};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pptp-alg");
/// About 1.3 MB of JSON: many times a socket buffer (a client that does
/// not read stalls the writer), yet cheap enough to serve ten copies at
/// once in a debug build on a busy machine. 16,000 calls (5 MB) stall the
/// same way, only later.
const CALLS: usize = 4_000;

/// Collects the log lines of this test binary.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{} {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

/// A report of [`CALLS`] calls. Built once: the server, not the test, should take the time.
fn big_report(dropped: u64) -> StatusReport {
    static REPORT: OnceLock<StatusReport> = OnceLock::new();
    let mut r = REPORT.get_or_init(build_report).clone();
    r.stats.insert("status_clients_dropped".into(), dropped);
    r
}

fn build_report() -> StatusReport {
    let calls = (0..CALLS)
        .map(|i| {
            let host = Ipv4Addr::from(0x0a00_0000 + i as u32);
            CallInfo {
                inside_host: host,
                inside_id: 0x4000,
                outside_peer: Ipv4Addr::new(192, 0, 2, 1),
                outside_id: Some(i as u16),
                nat_id: i as u16,
                conn: Some(ConnKey {
                    inside: format!("{host}:40000").parse().unwrap(),
                    outside: "192.0.2.1:1723".parse().unwrap(),
                }),
                state: CallState::Established,
                age: Duration::from_secs(100),
                packets_in: 1_000_000,
                packets_out: 1_000_000,
                bytes_in: 100_000_000,
                bytes_out: 100_000_000,
                hairpin: None,
            }
        })
        .collect();
    StatusReport {
        schema: SCHEMA,
        rules: RulesInfo {
            table: "pptp_alg".into(),
            installed: Installed::External,
            queue_backend: None,
        },
        version: "test".into(),
        uptime_secs: 1,
        calls,
        stats: BTreeMap::new(),
        connections: CALLS,
        quarantined: 0,
        offload: true,
        offloaded_counters: Vec::new(),
        queues: Vec::new(),
        ha: None,
    }
}

fn socket_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pptp-alg-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("status.sock")
}

/// `pptp-alg status --json`, timed; panics if it fails.
fn status(sock: &Path) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("run pptp-alg status");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "pptp-alg status failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).expect("json"), took)
}

/// Connects `n` clients that never read.
fn stall(sock: &Path, n: usize) -> Vec<UnixStream> {
    (0..n).map(|_| UnixStream::connect(sock).unwrap()).collect()
}

/// When the server hung up on each client (poll's POLLHUP, which needs no
/// read, so the clients stay stalled while watched); panics after `limit`.
fn hangups(clients: &[UnixStream], limit: Duration) -> Vec<Instant> {
    let start = Instant::now();
    let mut when: Vec<Option<Instant>> = vec![None; clients.len()];
    while when.iter().any(Option::is_none) {
        assert!(start.elapsed() < limit, "not cut off within {limit:?}");
        for (c, w) in clients.iter().zip(&mut when) {
            let mut p = libc::pollfd {
                fd: c.as_raw_fd(),
                events: 0,
                revents: 0,
            };
            // SAFETY: one valid pollfd for a socket we own.
            if w.is_none()
                && unsafe { libc::poll(&mut p, 1, 0) } == 1
                && p.revents & libc::POLLHUP != 0
            {
                *w = Some(Instant::now());
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    when.into_iter().flatten().collect()
}

/// Reads what the server sent before it hung up.
fn received(mut c: UnixStream) -> usize {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).expect("read to the end");
    buf.len()
}

#[test]
fn stalled_clients_do_not_block_status_and_are_cut_off() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let sock = socket_path();
    let server = StatusServer::start_with(&sock, None, big_report).unwrap();
    let full = serde_json::to_vec(&big_report(0)).unwrap().len() + 1;
    assert!(full > 1 << 20, "the report must not fit a socket buffer");

    // A normal status, alone, for reference.
    let (v, alone) = status(&sock);
    assert_eq!(v["calls"].as_array().map(Vec::len), Some(CALLS));
    assert!(alone < CLIENT_TIMEOUT, "status alone took {alone:?}");

    // Five clients that never read (fewer than the slots) do not delay
    // anybody.
    let t0 = Instant::now();
    let few = stall(&sock, 5);
    thread::sleep(Duration::from_millis(200));
    let (v, took5) = status(&sock);
    assert_eq!(v["calls"].as_array().map(Vec::len), Some(CALLS));
    assert!(
        took5 < CLIENT_TIMEOUT,
        "status with 5 stalled clients took {took5:?} (alone {alone:?})"
    );
    // Each is cut off after the timeout, not before, with part of its
    // document.
    for end in hangups(&few, 3 * CLIENT_TIMEOUT) {
        let after = end - t0;
        assert!(after >= CLIENT_TIMEOUT, "cut off after {after:?}");
    }
    for c in few {
        assert!(
            received(c) < full,
            "a stalled client got its whole document"
        );
    }

    // More than the slots: the excess waits in the backlog, and so does a
    // normal status, but no longer than the timeout of the clients ahead.
    let t0 = Instant::now();
    let many = stall(&sock, MAX_CLIENTS + 2);
    thread::sleep(Duration::from_millis(200));
    let (v, took) = status(&sock);
    assert_eq!(v["calls"].as_array().map(Vec::len), Some(CALLS));
    eprintln!(
        "status alone {alone:?}, with 5 stalled {took5:?}, with {} stalled {took:?}",
        MAX_CLIENTS + 2
    );
    // Most of the wait is the timeout; the rest is serving four copies of
    // the report at once in a debug build.
    assert!(
        took < 2 * CLIENT_TIMEOUT + alone,
        "status with {} stalled clients took {took:?} (alone {alone:?})",
        MAX_CLIENTS + 2
    );
    for end in hangups(&many, 4 * CLIENT_TIMEOUT) {
        let after = end - t0;
        assert!(after >= CLIENT_TIMEOUT, "cut off after {after:?}");
    }
    for c in many {
        assert!(
            received(c) < full,
            "a stalled client got its whole document"
        );
    }

    // Counted, and reported to the next client.
    let total = 5 + MAX_CLIENTS as u64 + 2;
    let (v, _) = status(&sock);
    assert_eq!(
        v["stats"]["status_clients_dropped"], total,
        "{}",
        v["stats"]
    );
    let lines = LOG.0.lock().unwrap().clone();
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("WARN status socket: dropped a client that read"))
        .collect();
    // Rate-limited: the first five of a minute.
    assert_eq!(dropped.len(), 5, "{lines:#?}");
    // Each client's thread counts its drop, then logs: two cut off at the
    // same moment may log in either order.
    assert!(
        dropped
            .iter()
            .any(|l| l.contains(&format!("of {full} bytes in 2s (1 dropped since start)"))),
        "{dropped:#?}"
    );
    drop(server);
    assert!(!sock.exists(), "socket file left behind");
    std::fs::remove_dir_all(sock.parent().unwrap()).unwrap();
}

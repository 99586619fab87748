//! The status report: a snapshot of calls and counters, served as one JSON
//! document per connection on a unix socket, and printed by
//! `pptp-alg status` as a table or as the JSON itself.

use super::shared::{lock, SharedRef};
use crate::alg::{CallInfo, EndCause};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A client that does not read its document within this long is dropped,
/// so one stuck client cannot block the others.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything `pptp-alg status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Live calls.
    pub calls: Vec<CallRow>,
    /// Engine and daemon counters by name (sorted).
    pub stats: BTreeMap<String, u64>,
    /// Tracked control connections.
    pub connections: usize,
    /// Ended calls whose NAT id is still in quarantine.
    pub quarantined: usize,
    /// The queue backend, if the daemon installed the rules.
    pub backend: Option<String>,
    /// Whether the kernel fast path is active.
    pub offload: bool,
    /// Per-call counters of the kernel fast path, as last read.
    pub offloaded_counters: Vec<OffloadRow>,
}

/// One control connection, inside and outside ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRow {
    /// Inside host's address and port.
    pub inside: SocketAddrV4,
    /// Outside peer's address and port.
    pub outside: SocketAddrV4,
}

/// One live call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRow {
    /// The inside host.
    pub inside_host: Ipv4Addr,
    /// The inside host's Call ID.
    pub inside_id: u16,
    /// The outside peer.
    pub outside_peer: Ipv4Addr,
    /// The outside peer's Call ID, once learned.
    pub outside_id: Option<u16>,
    /// The Call ID the outside peer sees.
    pub nat_id: u16,
    /// The control connection, if still tracked.
    pub conn: Option<ConnRow>,
    /// "requested" or "established".
    pub state: String,
    /// Seconds since the call was requested.
    pub age_secs: u64,
    /// GRE packets to the inside host (userspace and fast path).
    pub packets_in: u64,
    /// GRE packets from the inside host.
    pub packets_out: u64,
    /// GRE bytes to the inside host.
    pub bytes_in: u64,
    /// GRE bytes from the inside host.
    pub bytes_out: u64,
}

impl From<CallInfo> for CallRow {
    fn from(c: CallInfo) -> Self {
        CallRow {
            inside_host: c.inside_host,
            inside_id: c.inside_id,
            outside_peer: c.outside_peer,
            outside_id: c.outside_id,
            nat_id: c.nat_id,
            conn: c.conn.map(|k| ConnRow {
                inside: k.inside,
                outside: k.outside,
            }),
            state: c.state.to_string(),
            age_secs: c.age.as_secs(),
            packets_in: c.packets_in,
            packets_out: c.packets_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
        }
    }
}

/// Kernel fast path counters of one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadRow {
    /// The outside peer.
    pub outside_peer: Ipv4Addr,
    /// The NAT Call ID.
    pub nat_id: u16,
    /// Packets the kernel translated.
    pub packets: u64,
    /// Bytes the kernel translated.
    pub bytes: u64,
}

impl StatusReport {
    /// Takes a snapshot. The lock is held only while copying.
    pub fn snapshot(shared: &SharedRef) -> StatusReport {
        let now = Instant::now();
        let (calls, stats, mut report) = {
            let s = lock(shared);
            let report = StatusReport {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: now.saturating_duration_since(s.started).as_secs(),
                calls: Vec::new(),
                stats: BTreeMap::new(),
                connections: s.alg.connections(),
                quarantined: s.alg.quarantined(),
                backend: s.backend.clone(),
                offload: s.offload,
                offloaded_counters: s
                    .offloaded
                    .iter()
                    .map(|e| OffloadRow {
                        outside_peer: e.outside_peer,
                        nat_id: e.nat_id,
                        packets: e.packets,
                        bytes: e.bytes,
                    })
                    .collect(),
            };
            let mut extra = BTreeMap::new();
            extra.insert("fastpath_errors".to_string(), s.fastpath_errors);
            extra.insert("verdict_errors".to_string(), s.verdict_errors);
            extra.insert("recv_errors".to_string(), s.recv_errors);
            (s.alg.calls(now), (s.alg.stats().clone(), extra), report)
        };
        report.calls = calls.into_iter().map(CallRow::from).collect();
        report
            .calls
            .sort_by_key(|c| (c.inside_host, c.inside_id, c.outside_peer, c.nat_id));
        report.stats = flatten_stats(&stats.0);
        report.stats.extend(stats.1);
        report
    }

    /// The report as an aligned, human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pptp-alg {}, up {}, backend: {}, kernel fast path: {}",
            self.version,
            human_duration(self.uptime_secs),
            self.backend
                .as_deref()
                .unwrap_or("(rules not installed by the daemon)"),
            if self.offload { "on" } else { "off" }
        );
        let _ = writeln!(
            out,
            "{} live call(s), {} control connection(s), {} NAT id(s) in quarantine",
            self.calls.len(),
            self.connections,
            self.quarantined
        );
        if !self.calls.is_empty() {
            out.push('\n');
            let header = [
                "INSIDE", "OUTSIDE", "NAT ID", "CONTROL", "STATE", "AGE", "PKTS IN", "PKTS OUT",
            ];
            let rows: Vec<[String; 8]> = self
                .calls
                .iter()
                .map(|c| {
                    [
                        format!("{}:{}", c.inside_host, c.inside_id),
                        match c.outside_id {
                            Some(id) => format!("{}:{id}", c.outside_peer),
                            None => format!("{}:-", c.outside_peer),
                        },
                        c.nat_id.to_string(),
                        c.conn.as_ref().map_or_else(
                            || "-".into(),
                            |k| format!("{} <-> {}", k.inside, k.outside),
                        ),
                        c.state.clone(),
                        human_duration(c.age_secs),
                        c.packets_in.to_string(),
                        c.packets_out.to_string(),
                    ]
                })
                .collect();
            // Numbers read best right-aligned.
            let right = [false, false, true, false, false, true, true, true];
            write_table(&mut out, &header, &rows, &right);
        }
        out.push_str("\nCOUNTERS\n");
        let width = self.stats.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &self.stats {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        if !self.offloaded_counters.is_empty() {
            out.push_str("\nKERNEL FAST PATH\n");
            let rows: Vec<[String; 4]> = self
                .offloaded_counters
                .iter()
                .map(|o| {
                    [
                        o.outside_peer.to_string(),
                        o.nat_id.to_string(),
                        o.packets.to_string(),
                        o.bytes.to_string(),
                    ]
                })
                .collect();
            write_table(
                &mut out,
                &["PEER", "NAT ID", "PACKETS", "BYTES"],
                &rows,
                &[false, true, true, true],
            );
        }
        out
    }
}

/// Stats as name → value, with the per-cause array spelled out so that
/// JSON readers need not know the order of [`EndCause::ALL`].
fn flatten_stats(stats: &crate::alg::Stats) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(stats) {
        for (k, v) in map {
            if let Some(n) = v.as_u64() {
                out.insert(k, n);
            }
        }
    }
    for cause in EndCause::ALL {
        let name = serde_json::to_value(cause)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{cause:?}"));
        out.insert(format!("ended_{name}"), stats.ended_by(cause));
    }
    out
}

fn write_table<const N: usize>(
    out: &mut String,
    header: &[&str; N],
    rows: &[[String; N]],
    right: &[bool; N],
) {
    let mut width = header.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let w = width[i];
            if right[i] {
                let _ = write!(s, "{cell:>w$}");
            } else {
                let _ = write!(s, "{cell:<w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `3d04h`, `2h05m`, `4m07s`, `9s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The listening status socket; removes its file when dropped.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
}

impl StatusServer {
    /// Binds `path` (creating its directory) and serves snapshots of
    /// `shared` on a thread of its own.
    ///
    /// A socket file left by a dead daemon is replaced; one that a live
    /// daemon answers on is an error (two daemons would fight over the
    /// queues anyway).
    pub fn start(path: &Path, shared: SharedRef) -> io::Result<StatusServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is answered by a running daemon; is pptp-alg already running?",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Calls reveal who talks to whom: root (and the group) only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        std::thread::Builder::new()
            .name("status".into())
            .spawn(move || serve(listener, shared))?;
        Ok(StatusServer {
            path: path.to_owned(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, shared: SharedRef) {
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::debug!("status socket: accept: {e}");
                // Avoid spinning on a persistent error such as EMFILE.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let report = StatusReport::snapshot(&shared);
        let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut doc = match serde_json::to_vec(&report) {
            Ok(d) => d,
            Err(e) => {
                log::warn!("status socket: cannot encode the report: {e}");
                continue;
            }
        };
        doc.push(b'\n');
        if let Err(e) = conn.write_all(&doc) {
            log::debug!("status socket: write: {e}");
        }
    }
}

/// Asks the daemon at `path` for its report.
pub fn fetch(path: &Path) -> io::Result<StatusReport> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {}: {e} (is pptp-alg running? see --socket)",
                path.display()
            ),
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed status from {}: {e}", path.display()),
        )
    })
}

/// Writes the report to the log, one line per table row (SIGUSR1).
pub fn log_report(shared: &SharedRef) {
    let report = StatusReport::snapshot(shared);
    for line in report.to_table().lines() {
        log::info!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::{Alg, AlgConfig};
    use crate::daemon::shared::Shared;

    #[test]
    fn report_round_trips_and_prints() {
        let shared = Shared::new(Alg::new(AlgConfig::default()), true, Some("x".into()));
        let r = StatusReport::snapshot(&shared);
        let json = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(r, back);
        let t = r.to_table();
        assert!(t.contains("0 live call(s)"));
        assert!(t.contains("ended_idle_timeout"));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(9), "9s");
        assert_eq!(human_duration(247), "4m07s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(86400 * 3 + 3600 * 4), "3d04h");
    }

    #[test]
    fn table_rows_align() {
        let mut r =
            StatusReport::snapshot(&Shared::new(Alg::new(AlgConfig::default()), false, None));
        r.calls.push(CallRow {
            inside_host: "192.168.1.10".parse().unwrap(),
            inside_id: 1,
            outside_peer: "203.0.113.5".parse().unwrap(),
            outside_id: Some(777),
            nat_id: 1,
            conn: Some(ConnRow {
                inside: "192.168.1.10:40000".parse().unwrap(),
                outside: "203.0.113.5:1723".parse().unwrap(),
            }),
            state: "established".into(),
            age_secs: 61,
            packets_in: 10,
            packets_out: 12345,
            bytes_in: 0,
            bytes_out: 0,
        });
        let t = r.to_table();
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("NAT ID") || l.contains("192.168"))
            .collect();
        assert_eq!(lines.len(), 2);
        // Right-aligned last column ends at the same place.
        assert_eq!(lines[0].len(), lines[1].len());
    }
}

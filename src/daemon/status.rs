//! The status report: a snapshot of calls and counters, served as one JSON
//! document per connection on a unix socket, and printed by
//! `pptp-alg status` as a table or as the JSON itself.

use super::logging::RateLimit;
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A client that has not read its whole document this long after its turn
/// came is dropped (logged and counted as `status_clients_dropped`): one
/// that never reads holds its slot no longer than this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients served at once, each on its own thread with its own copy of the
/// document (about 330 bytes per call: 5 MB with 16,000 calls), so memory
/// stays bounded. Further clients wait in the socket's backlog for a slot.
pub const MAX_CLIENTS: usize = 8;

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
    /// The kernel's numbers of each queue, read at the request.
    #[serde(default)]
    pub queues: Vec<QueueRow>,
}

/// One NFQUEUE the daemon serves, as the kernel counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    /// The queue number.
    pub queue: u16,
    /// What it carries.
    pub carries: String,
    /// Packets waiting for a verdict.
    pub waiting: u64,
    /// Packets dropped because the queue was full (fail-closed).
    pub dropped_full: u64,
    /// Packets dropped because the daemon's socket buffer was full (fail-closed).
    pub dropped_socket: u64,
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
                queues: s
                    .queues
                    .iter()
                    .map(|&(queue, carries)| QueueRow {
                        queue,
                        carries: carries.to_string(),
                        waiting: 0,
                        dropped_full: 0,
                        dropped_socket: 0,
                    })
                    .collect(),
            };
            let mut extra = BTreeMap::new();
            extra.insert("fastpath_errors".to_string(), s.fastpath_errors);
            extra.insert("verdict_errors".to_string(), s.verdict_errors);
            extra.insert("recv_errors".to_string(), s.recv_errors);
            extra.insert("journal_records".to_string(), s.journal_records);
            extra.insert("journal_errors".to_string(), s.journal_errors);
            extra.insert("offload_pending".to_string(), s.offload_pending);
            (
                s.alg.calls(now),
                (s.alg.stats().clone(), extra, s.unknown_gre_table.clone()),
                report,
            )
        };
        report.calls = calls.into_iter().map(CallRow::from).collect();
        report
            .calls
            .sort_by_key(|c| (c.inside_host, c.inside_id, c.outside_peer, c.nat_id));
        report.stats = flatten_stats(&stats.0);
        report.stats.extend(stats.1);
        // Read outside the lock, only when someone asks.
        if let Ok(kernel) = crate::nfqueue::kernel_stats() {
            for row in &mut report.queues {
                if let Some(k) = kernel.iter().find(|k| k.queue == row.queue) {
                    row.waiting = k.waiting;
                    row.dropped_full = k.dropped_full;
                    row.dropped_socket = k.dropped_socket;
                }
            }
        }
        if let Some(table) = stats.2 {
            let kernel = crate::nft::unknown_gre_packets(&table).map_or(0, |(p, _)| p);
            report
                .stats
                .insert("gre_unknown_kernel".to_string(), kernel);
            *report
                .stats
                .entry("gre_unknown_call".to_string())
                .or_default() += kernel;
        }
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
        if !self.queues.is_empty() {
            out.push_str("\nQUEUES\n");
            let header = [
                "QUEUE",
                "CARRIES",
                "WAITING",
                "DROPPED FULL",
                "DROPPED SOCKET",
            ];
            let rows: Vec<[String; 5]> = self
                .queues
                .iter()
                .map(|q| {
                    [
                        q.queue.to_string(),
                        q.carries.clone(),
                        q.waiting.to_string(),
                        q.dropped_full.to_string(),
                        q.dropped_socket.to_string(),
                    ]
                })
                .collect();
            write_table(&mut out, &header, &rows, &[true, false, true, true, true]);
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
    /// `shared`.
    ///
    /// A socket file left by a dead daemon is replaced; one that a live
    /// daemon answers on is an error (two daemons would fight over the
    /// queues anyway).
    pub fn start(path: &Path, shared: SharedRef) -> io::Result<StatusServer> {
        StatusServer::start_with(path, move |dropped| {
            let mut report = StatusReport::snapshot(&shared);
            report
                .stats
                .insert("status_clients_dropped".into(), dropped);
            report
        })
    }

    /// Like [`StatusServer::start`], serving what `report` returns; it is
    /// given the number of clients dropped so far. Connections are accepted
    /// on a thread of their own and each is served on another, at most
    /// [`MAX_CLIENTS`] at once, within [`CLIENT_TIMEOUT`].
    pub fn start_with<F>(path: &Path, report: F) -> io::Result<StatusServer>
    where
        F: Fn(u64) -> StatusReport + Send + Sync + 'static,
    {
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
            .spawn(move || serve(listener, Arc::new(report)))?;
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

/// Client slots in use, and a signal when one frees (also used by the
/// metrics listener).
pub(super) struct Slots {
    max: usize,
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// At most `max` slots in use at once.
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max,
            busy: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot and takes it.
    pub(super) fn acquire(self: &Arc<Self>) -> Slot {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy >= self.max {
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *busy += 1;
        Slot(self.clone())
    }
}

/// A client slot, given back when dropped (also if the client's thread
/// cannot be started or panics).
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(PoisonError::into_inner);
        *busy -= 1;
        self.0.freed.notify_one();
    }
}

/// What the client threads share.
struct Served<F> {
    report: Arc<F>,
    dropped: Arc<AtomicU64>,
    /// A local script stuck in a loop must not fill the journal.
    log_limit: Arc<Mutex<RateLimit>>,
}

fn serve<F>(listener: UnixListener, report: Arc<F>)
where
    F: Fn(u64) -> StatusReport + Send + Sync + 'static,
{
    let slots = Arc::new(Slots::new(MAX_CLIENTS));
    let dropped = Arc::new(AtomicU64::new(0));
    let log_limit = Arc::new(Mutex::new(RateLimit::new(Duration::from_secs(60), 5)));
    loop {
        // A slot before accepting: excess clients wait in the backlog
        // rather than in memory.
        let slot = slots.acquire();
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) => {
                log::debug!("status socket: accept: {e}");
                // Avoid spinning on a persistent error such as EMFILE.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let served = Served {
            report: report.clone(),
            dropped: dropped.clone(),
            log_limit: log_limit.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("status-client".into())
            .spawn(move || {
                let _slot = slot;
                serve_client(conn, &served);
            });
        if let Err(e) = spawned {
            log::warn!("status socket: cannot start a thread for a client: {e}");
        }
    }
}

fn serve_client<F: Fn(u64) -> StatusReport>(mut conn: UnixStream, served: &Served<F>) {
    let report = (served.report)(served.dropped.load(Ordering::Relaxed));
    let mut doc = match serde_json::to_vec(&report) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("status socket: cannot encode the report: {e}");
            return;
        }
    };
    drop(report);
    doc.push(b'\n');
    match write_within(&mut conn, &doc, CLIENT_TIMEOUT) {
        Ok(()) => {}
        Err(Stalled::Timeout(sent)) => {
            let n = served.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let (allow, suppressed) = served
                .log_limit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .allow(Instant::now());
            if allow {
                let also = if suppressed > 0 {
                    format!("; {suppressed} more not logged")
                } else {
                    String::new()
                };
                log::warn!(
                    "status socket: dropped a client that read {sent} of {} bytes in {}s \
                     ({n} dropped since start{also})",
                    doc.len(),
                    CLIENT_TIMEOUT.as_secs()
                );
            }
        }
        Err(Stalled::Io(e)) => log::debug!("status socket: write: {e}"),
    }
}

/// A socket whose writes can time out (the status socket's, the metrics listener's).
pub(super) trait TimedWrite: Write {
    /// SO_SNDTIMEO.
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl TimedWrite for UnixStream {
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

impl TimedWrite for std::net::TcpStream {
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, t)
    }
}

pub(super) enum Stalled {
    /// The deadline passed with this many bytes sent.
    Timeout(usize),
    Io(io::Error),
}

/// Writes all of `doc` before `timeout` has passed, or gives up. A total
/// deadline, not one per write: a client reading a byte now and then must
/// not hold its slot for ever.
pub(super) fn write_within(
    conn: &mut impl TimedWrite,
    doc: &[u8],
    timeout: Duration,
) -> Result<(), Stalled> {
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    while sent < doc.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        // SO_SNDTIMEO of zero would mean "block for ever".
        if left < Duration::from_millis(1) {
            return Err(Stalled::Timeout(sent));
        }
        conn.set_write_timeout(Some(left)).map_err(Stalled::Io)?;
        match conn.write(&doc[sent..]) {
            Ok(0) => return Err(Stalled::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Stalled::Timeout(sent))
            }
            Err(e) => return Err(Stalled::Io(e)),
        }
    }
    Ok(())
}

/// How long `pptp-alg status` waits for data: longer than a client waits
/// for a slot when every slot is held by a stalled client.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    conn.set_read_timeout(Some(FETCH_TIMEOUT))?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete answer from {} within {}s (is the daemon stuck?)",
                    path.display(),
                    FETCH_TIMEOUT.as_secs()
                ),
            )
        } else {
            e
        }
    })?;
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

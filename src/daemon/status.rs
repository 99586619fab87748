//! The status report: a snapshot of calls and counters, served as one JSON
//! document per connection on a unix socket, and printed by
//! `pptp-alg status` as a table or as the JSON itself.
//!
//! Owns the document's schema ([`SCHEMA`], documented in the README), the
//! socket and its clients, and the table format. It only reads the shared
//! state, under the lock for as long as a copy takes, and changes nothing.

use super::ha::HaReport;
use super::logging::RateLimit;
use super::shared::{lock, SharedRef};
use crate::alg::{CallInfo, CallState, EndCause};
use crate::nft::{ElementCounter, QueueBackend};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
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

/// The version of the status document's layout ([`StatusReport::schema`]).
/// Raised when a field changes meaning or shape or goes away; new fields
/// are added without raising it, so readers must ignore unknown ones.
pub const SCHEMA: u32 = 1;

/// Everything `pptp-alg status` shows: the status socket's JSON document
/// (schema in the README, "Observability").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The layout's version: [`SCHEMA`].
    pub schema: u32,
    /// The daemon's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The daemon's nftables table.
    pub rules: RulesInfo,
    /// Whether the kernel fast path is active.
    pub offload: bool,
    /// Live calls, sorted by inside host, inside id, outside peer, NAT id.
    pub calls: Vec<CallInfo>,
    /// Tracked control connections.
    pub connections: usize,
    /// Ended calls whose NAT id is still in quarantine.
    pub quarantined: usize,
    /// Engine and daemon counters by name (sorted).
    pub stats: BTreeMap<String, u64>,
    /// Per-call counters of the kernel fast path, as last read.
    pub offloaded_counters: Vec<ElementCounter>,
    /// The kernel's numbers of each queue, read at the request.
    pub queues: Vec<QueueRow>,
    /// The router pair's replication (`null` without `ha_node`).
    #[serde(default)]
    pub ha: Option<HaReport>,
}

/// The daemon's nftables table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesInfo {
    /// The table's name (family ip).
    pub table: String,
    /// Who installed it and whether the kernel removes it with the daemon.
    pub installed: Installed,
    /// How it queues packets; `null` when someone else installed it.
    pub queue_backend: Option<QueueBackend>,
}

/// Who installed the daemon's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Installed {
    /// The daemon, as the table's owner: the kernel removes it if the
    /// daemon dies.
    Owned,
    /// The daemon, without an owner (the default, `table_owner = false`,
    /// or a kernel before 5.12): left behind if the daemon dies, until the
    /// unit's ExecStopPost or the next start.
    Unowned,
    /// Someone else (`pptp-alg rules install`, `nft -f`): the daemon only
    /// uses it.
    External,
}

/// What a queue carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRole {
    /// tcp/1723 sent by inside hosts.
    ControlFromInside,
    /// tcp/1723 to inside hosts.
    ControlToInside,
    /// GRE from outside that the kernel does not translate.
    Gre,
}

impl QueueRole {
    /// The name the JSON document uses (a metrics label too).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRole::ControlFromInside => "control_from_inside",
            QueueRole::ControlToInside => "control_to_inside",
            QueueRole::Gre => "gre",
        }
    }

    fn text(self) -> &'static str {
        match self {
            QueueRole::ControlFromInside => "control from inside",
            QueueRole::ControlToInside => "control to inside",
            QueueRole::Gre => "GRE",
        }
    }
}

/// One NFQUEUE the daemon serves, as the kernel counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    /// The queue number.
    pub queue: u16,
    /// What it carries.
    pub carries: QueueRole,
    /// Packets waiting for a verdict.
    pub waiting: u64,
    /// Packets dropped because the queue was full (fail-closed).
    pub dropped_full: u64,
    /// Packets dropped because the daemon's socket buffer was full (fail-closed).
    pub dropped_socket: u64,
}

/// How `pptp-alg status` prints the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Call IDs in hexadecimal (`0x4000`), as `conntrack -L` prints them.
    pub hex: bool,
}

impl StatusReport {
    /// Takes a snapshot. The lock is held only while copying.
    pub fn snapshot(shared: &SharedRef) -> StatusReport {
        let now = Instant::now();
        let (mut report, stats, unknown_gre_table) = {
            let s = lock(shared);
            let report = StatusReport {
                schema: SCHEMA,
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: now.saturating_duration_since(s.started).as_secs(),
                rules: s.rules.clone(),
                offload: s.offload,
                calls: s.alg.calls(now),
                connections: s.alg.connections(),
                quarantined: s.alg.quarantined(),
                stats: BTreeMap::new(),
                offloaded_counters: s.offloaded.clone(),
                queues: s
                    .queues
                    .iter()
                    .map(|&(queue, carries)| QueueRow {
                        queue,
                        carries,
                        waiting: 0,
                        dropped_full: 0,
                        dropped_socket: 0,
                    })
                    .collect(),
                ha: s.ha.as_ref().map(|(r, at)| {
                    let mut r = r.clone();
                    // Published when the packet thread last woke for it.
                    let since = now.saturating_duration_since(*at).as_millis();
                    r.last_message_age_ms = r
                        .last_message_age_ms
                        .map(|ms| ms.saturating_add(u64::try_from(since).unwrap_or(u64::MAX)));
                    r
                }),
            };
            let mut extra = BTreeMap::new();
            extra.insert("fastpath_errors".to_string(), s.fastpath_errors);
            extra.insert("verdict_errors".to_string(), s.verdict_errors);
            extra.insert("recv_errors".to_string(), s.recv_errors);
            extra.insert("journal_records".to_string(), s.journal_records);
            extra.insert("journal_errors".to_string(), s.journal_errors);
            extra.insert("offload_pending".to_string(), s.offload_pending);
            (
                report,
                (s.alg.stats().clone(), extra),
                s.unknown_gre_table.clone(),
            )
        };
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
        if let Some(table) = unknown_gre_table {
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

    /// Keeps only the calls (and fast path counters) of inside host `host`
    /// and outside peer `peer`, where given.
    pub fn filter(&mut self, host: Option<Ipv4Addr>, peer: Option<Ipv4Addr>) {
        self.calls.retain(|c| {
            host.is_none_or(|h| c.inside_host == h) && peer.is_none_or(|p| c.outside_peer == p)
        });
        if host.is_some() {
            // The kernel's counters name no inside host: keep those of the
            // calls that stay.
            let calls = &self.calls;
            self.offloaded_counters.retain(|e| {
                calls
                    .iter()
                    .any(|c| c.outside_peer == e.outside_peer && c.nat_id == e.nat_id)
            });
        }
        if let Some(p) = peer {
            self.offloaded_counters.retain(|e| e.outside_peer == p);
        }
    }

    /// The report as an aligned, human-readable table.
    pub fn to_table(&self) -> String {
        self.to_table_with(TableOptions::default())
    }

    /// The report as a table that fits 100 columns: packet counts from a
    /// million on in k/M/G units, a call's control connection only in the
    /// JSON document (`conn`).
    pub fn to_table_with(&self, opts: TableOptions) -> String {
        let id = |v: u16| {
            if opts.hex {
                format!("{v:#06x}")
            } else {
                v.to_string()
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pptp-alg {}, up {}, kernel fast path {}",
            self.version,
            human_duration(self.uptime_secs),
            if self.offload { "on" } else { "off" }
        );
        let _ = writeln!(out, "{}", self.rules.text());
        if let Some(ha) = &self.ha {
            let _ = writeln!(out, "{}", ha.text());
        }
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
                "INSIDE", "OUTSIDE", "NAT ID", "STATE", "AGE", "PKTS IN", "PKTS OUT",
            ];
            let rows: Vec<[String; 7]> = self
                .calls
                .iter()
                .map(|c| {
                    [
                        format!("{}:{}", c.inside_host, id(c.inside_id)),
                        format!(
                            "{}:{}",
                            c.outside_peer,
                            c.outside_id.map_or_else(|| "-".into(), id)
                        ),
                        id(c.nat_id),
                        state_text(c.state).into(),
                        human_duration(c.age.as_secs()),
                        human_count(c.packets_in),
                        human_count(c.packets_out),
                    ]
                })
                .collect();
            // Numbers read best right-aligned.
            let right = [false, false, true, false, true, true, true];
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
                        q.carries.text().into(),
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
                        id(o.nat_id),
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

impl RulesInfo {
    /// For the table's first line.
    fn text(&self) -> String {
        let who = match self.installed {
            Installed::Owned => "owned by the daemon",
            Installed::Unowned => "installed by the daemon without owner",
            Installed::External => "installed by someone else",
        };
        match self.queue_backend {
            Some(b) => format!("table ip {} {who}, {b}", self.table),
            None => format!("table ip {} {who}", self.table),
        }
    }
}

/// A call state in a table cell.
fn state_text(s: CallState) -> &'static str {
    match s {
        CallState::Requested => "requested",
        CallState::Established => "established",
        CallState::Ended(_) => "ended",
    }
}

/// A packet count in at most 6 characters: exact below a million, then
/// `1.2M`, `345.6G`.
pub fn human_count(n: u64) -> String {
    if n < 1_000_000 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = 'k';
    for u in ['k', 'M', 'G', 'T', 'P', 'E'] {
        v /= 1000.0;
        unit = u;
        if v < 999.95 {
            break;
        }
    }
    format!("{v:.1}{unit}")
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
    /// `shared`; readable by root and by `group` (a gid), if given.
    ///
    /// A socket file left by a dead daemon is replaced; one that a live
    /// daemon answers on is an error (two daemons would fight over the
    /// queues anyway).
    pub fn start(path: &Path, group: Option<u32>, shared: SharedRef) -> io::Result<StatusServer> {
        StatusServer::start_with(path, group, move |dropped| {
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
    pub fn start_with<F>(path: &Path, group: Option<u32>, report: F) -> io::Result<StatusServer>
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
        // Calls reveal who talks to whom: root and the group only.
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
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
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "is pptp-alg running? see --socket",
            io::ErrorKind::PermissionDenied => {
                "the status socket is open to root and to the group named by the daemon's \
                 status_group; run as root or as a member of that group"
            }
            io::ErrorKind::ConnectionRefused => {
                "nothing answers: a socket left by a daemon that died? is pptp-alg running?"
            }
            _ => "is pptp-alg running? see --socket",
        };
        io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e} ({hint})", path.display()),
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
    parse_report(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("status from {}: {e}", path.display()),
        )
    })
}

/// Reads a status document, checking its schema first, so that a daemon
/// of another version is named as such rather than as a parse error.
pub fn parse_report(text: &str) -> Result<StatusReport, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed: {e}"))?;
    match doc.get("schema").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(SCHEMA) => {}
        other => {
            return Err(format!(
                "the daemon speaks status schema {}, this pptp-alg reads schema {SCHEMA} \
                 (the daemon is another version: restart it, or use its own binary)",
                other.map_or_else(|| "0 (unversioned)".into(), |v| v.to_string())
            ))
        }
    }
    serde_json::from_value(doc).map_err(|e| format!("malformed: {e}"))
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
    use crate::alg::{Alg, AlgConfig, ConnKey};
    use crate::daemon::shared::Shared;
    use std::time::Duration;

    fn report(installed: Installed, backend: Option<QueueBackend>) -> StatusReport {
        let rules = RulesInfo {
            table: "pptp_alg".into(),
            installed,
            queue_backend: backend,
        };
        StatusReport::snapshot(&Shared::new(Alg::new(AlgConfig::default()), rules))
    }

    fn call(host: &str, id: u16, peer: &str, nat_id: u16, port: u16) -> CallInfo {
        CallInfo {
            inside_host: host.parse().unwrap(),
            inside_id: id,
            outside_peer: peer.parse().unwrap(),
            outside_id: Some(777),
            nat_id,
            conn: Some(ConnKey {
                inside: format!("{host}:{port}").parse().unwrap(),
                outside: format!("{peer}:1723").parse().unwrap(),
            }),
            state: CallState::Established,
            age: Duration::from_secs(61),
            packets_in: 10,
            packets_out: 12345,
            bytes_in: 0,
            bytes_out: 0,
            hairpin: None,
        }
    }

    #[test]
    fn report_round_trips_and_prints() {
        let r = report(Installed::Owned, Some(QueueBackend::XtNfqueue));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(parse_report(&json).unwrap(), r);
        let t = r.to_table();
        assert!(t.contains("0 live call(s)"));
        assert!(t.contains("ended_idle_timeout"));
        assert!(t.contains("table ip pptp_alg owned by the daemon"));
    }

    /// The documented schema: enums as fixed strings, numbers as numbers.
    #[test]
    fn schema_uses_enums_not_prose() {
        let mut r = report(Installed::Unowned, Some(QueueBackend::NftQueue));
        r.calls
            .push(call("192.168.1.10", 0x4000, "203.0.113.5", 0x4100, 40000));
        let mut ended = call("192.168.1.11", 1, "203.0.113.5", 2, 40001);
        ended.state = CallState::Ended(EndCause::IdleTimeout);
        r.calls.push(ended);
        let doc = serde_json::to_value(&r).unwrap();
        assert_eq!(doc["schema"], 1);
        assert_eq!(
            doc["rules"],
            serde_json::json!({"table": "pptp_alg", "installed": "unowned", "queue_backend": "nft_queue"})
        );
        let c = &doc["calls"][0];
        assert_eq!(c["state"], "established");
        assert_eq!(c["age_secs"], 61);
        assert_eq!(c["nat_id"], 0x4100);
        assert_eq!(c["conn"]["inside"], "192.168.1.10:40000");
        assert_eq!(
            doc["calls"][1]["state"],
            serde_json::json!({"ended": "idle_timeout"})
        );
        let external = serde_json::to_value(report(Installed::External, None)).unwrap();
        assert_eq!(external["rules"]["installed"], "external");
        assert_eq!(external["rules"]["queue_backend"], serde_json::Value::Null);
        assert_eq!(doc["queues"], serde_json::json!([]));
    }

    #[test]
    fn another_schema_is_named_not_misparsed() {
        let old = r#"{"version":"0.1.0","uptime_secs":1,"calls":[],"backend":"a sentence"}"#;
        let e = parse_report(old).unwrap_err();
        assert!(e.contains("schema 0 (unversioned)"), "{e}");
        let mut doc = serde_json::to_value(report(Installed::Owned, None)).unwrap();
        doc["schema"] = 2.into();
        let e = parse_report(&doc.to_string()).unwrap_err();
        assert!(e.contains("schema 2, this pptp-alg reads schema 1"), "{e}");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(9), "9s");
        assert_eq!(human_duration(247), "4m07s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(86400 * 3 + 3600 * 4), "3d04h");
    }

    #[test]
    fn counts_fit_six_columns() {
        assert_eq!(human_count(999_999), "999999");
        assert_eq!(human_count(1_000_000), "1.0M");
        assert_eq!(human_count(1_234_567), "1.2M");
        assert_eq!(human_count(999_999_999), "1.0G");
        assert_eq!(human_count(345_600_000_000), "345.6G");
        assert_eq!(human_count(u64::MAX), "18.4E");
        for n in [0, 999_999, 999_949_999, 999_950_000, u64::MAX / 3, u64::MAX] {
            assert!(human_count(n).len() <= 6, "{n}: {}", human_count(n));
        }
    }

    #[test]
    fn table_rows_align() {
        let mut r = report(Installed::Owned, None);
        r.calls
            .push(call("192.168.1.10", 1, "203.0.113.5", 1, 40000));
        let t = r.to_table();
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("NAT ID") || l.contains("192.168"))
            .collect();
        assert_eq!(lines.len(), 2);
        // Right-aligned last column ends at the same place.
        assert_eq!(lines[0].len(), lines[1].len());
    }

    /// The widest call row there can be fits a 100-column terminal, in
    /// decimal and in hex, and so does every other line.
    #[test]
    fn widest_table_fits_100_columns() {
        let mut r = report(Installed::Unowned, Some(QueueBackend::XtNfqueue));
        let mut c = call("255.255.255.255", 65535, "255.255.255.254", 65535, 65535);
        c.conn = Some(ConnKey {
            inside: "255.255.255.255:65535".parse().unwrap(),
            outside: "255.255.255.254:65535".parse().unwrap(),
        });
        c.outside_id = Some(65535);
        c.age = Duration::from_secs(99 * 86400 + 23 * 3600);
        c.packets_in = u64::MAX;
        c.packets_out = 999_999;
        c.state = CallState::Established;
        r.calls.push(c);
        r.uptime_secs = 999 * 86400;
        for hex in [false, true] {
            let t = r.to_table_with(TableOptions { hex });
            for line in t.lines() {
                assert!(line.len() <= 100, "{} columns: {line}", line.len());
            }
        }
    }

    #[test]
    fn hex_prints_call_ids_as_conntrack_does() {
        let mut r = report(Installed::Owned, None);
        r.calls
            .push(call("192.168.1.10", 0x4000, "203.0.113.5", 0x4100, 40000));
        let t = r.to_table_with(TableOptions { hex: true });
        assert!(t.contains("192.168.1.10:0x4000"), "{t}");
        assert!(t.contains("203.0.113.5:0x0309"), "{t}");
        assert!(t.contains("0x4100"), "{t}");
        let t = r.to_table();
        assert!(t.contains("192.168.1.10:16384"), "{t}");
    }

    #[test]
    fn filters_keep_the_calls_of_a_host_or_peer() {
        let mut r = report(Installed::Owned, None);
        r.calls.push(call("10.0.0.1", 1, "192.0.2.1", 1, 40000));
        r.calls.push(call("10.0.0.2", 1, "192.0.2.1", 2, 40000));
        r.calls.push(call("10.0.0.2", 5, "192.0.2.9", 5, 40001));
        let counter = |peer: &str, nat_id| ElementCounter {
            outside_peer: peer.parse().unwrap(),
            nat_id,
            packets: 1,
            bytes: 1,
        };
        r.offloaded_counters = vec![counter("192.0.2.1", 1), counter("192.0.2.9", 5)];
        let ids = |r: &StatusReport| -> Vec<(String, u16)> {
            r.calls
                .iter()
                .map(|c| (c.inside_host.to_string(), c.nat_id))
                .collect()
        };
        let mut by_host = r.clone();
        by_host.filter(Some("10.0.0.2".parse().unwrap()), None);
        assert_eq!(
            ids(&by_host),
            [("10.0.0.2".into(), 2), ("10.0.0.2".into(), 5)]
        );
        assert_eq!(by_host.offloaded_counters, [counter("192.0.2.9", 5)]);
        let mut by_peer = r.clone();
        by_peer.filter(None, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            ids(&by_peer),
            [("10.0.0.1".into(), 1), ("10.0.0.2".into(), 2)]
        );
        assert_eq!(by_peer.offloaded_counters, [counter("192.0.2.1", 1)]);
        let mut both = r;
        both.filter(
            Some("10.0.0.1".parse().unwrap()),
            Some("192.0.2.9".parse().unwrap()),
        );
        assert!(both.calls.is_empty());
        assert!(both.offloaded_counters.is_empty());
    }
}

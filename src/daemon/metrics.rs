//! Prometheus metrics: the exposition of a [`StatusReport`] (a pure function, encoded by the
//! `prometheus-client` crate in the OpenMetrics or the classic Prometheus text format), the
//! opt-in HTTP listener that serves it on `GET /metrics` (`metrics_listen`), and the
//! node_exporter textfile writer (`metrics_textfile`).
//!
//! Both run on threads of their own and read the shared state only through
//! [`StatusReport::snapshot`], which holds the engine's lock just long enough to copy it, so a
//! scrape never makes the packet thread wait longer than a `pptp-alg status` does. The
//! listener is bounded like the status socket: [`MAX_CLIENTS`] served at once (the rest wait
//! in the backlog), each within [`CLIENT_TIMEOUT`] for reading its request and as long again
//! for reading the answer, requests of at most [`MAX_REQUEST`] bytes, and nothing but
//! `GET /metrics`.

use super::shared::SharedRef;
use super::status::{write_within, Slots, Stalled, StatusReport};
use crate::replication::Role;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Scrapes served at once; a Prometheus server scrapes one at a time, so this leaves room for
/// a second server and an operator's `curl`, and bounds the memory of copies of the report.
pub const MAX_CLIENTS: usize = 4;
/// Time a client has to send its request, and again to read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read; a scraper's is a few hundred bytes.
pub const MAX_REQUEST: usize = 8192;
/// How often the textfile is rewritten (node_exporter reads it at each of its own scrapes).
pub const TEXTFILE_INTERVAL: Duration = Duration::from_secs(10);

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which text format to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (node_exporter's textfile collector, plain `curl`).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names it at all (Prometheus
    /// lists it first), the classic text otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// Where a counter of the status report goes: its metric (without the `pptp_alg_` prefix and
/// the `_total` suffix) and the label that tells it from its siblings, if any.
struct Place {
    metric: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
}

const fn plain(metric: &'static str, help: &'static str) -> Place {
    Place {
        metric,
        help,
        label: None,
    }
}

const fn labelled(
    metric: &'static str,
    help: &'static str,
    key: &'static str,
    value: &'static str,
) -> Place {
    Place {
        metric,
        help,
        label: Some((key, value)),
    }
}

const DROPPED: &str = "Packets dropped, by reason (TCP retransmits them)";
const REFUSED: &str = "Call requests refused, by reason (their segment is dropped)";
const ENDED: &str = "Calls ended, by cause";
const CALL_GRE: &str = "GRE packets of calls, to and from inside hosts (what the kernel \
                        translated or counted is read every 10 s and at each call's end)";

/// The counters of the status report (`pptp-alg status --json`, `stats`), by name. Counters
/// that say the same thing for different reasons share one metric with a label; the rest keep
/// their status name. Gauges among the stats are in [`STAT_GAUGES`].
fn stat_place(name: &str) -> Option<Place> {
    Some(match name {
        "dropped_call_refused" => labelled("packets_dropped", DROPPED, "reason", "call_refused"),
        "dropped_out_of_order" => labelled("packets_dropped", DROPPED, "reason", "out_of_order"),
        "unsynced_segments" => labelled("packets_dropped", DROPPED, "reason", "unsynced"),
        "connection_limit" => labelled("packets_dropped", DROPPED, "reason", "connection_limit"),
        "alloc_failures" => labelled("calls_refused", REFUSED, "reason", "no_nat_id"),
        "refused_total_limit" => labelled("calls_refused", REFUSED, "reason", "max_calls"),
        "refused_host_limit" => labelled("calls_refused", REFUSED, "reason", "max_calls_per_host"),
        "ended_disconnect" => labelled("calls_ended", ENDED, "cause", "disconnect"),
        "ended_reply_failure" => labelled("calls_ended", ENDED, "cause", "reply_failure"),
        "ended_stop_control" => labelled("calls_ended", ENDED, "cause", "stop_control"),
        "ended_conn_closed" => labelled("calls_ended", ENDED, "cause", "conn_closed"),
        "ended_setup_timeout" => labelled("calls_ended", ENDED, "cause", "setup_timeout"),
        "ended_idle_timeout" => labelled("calls_ended", ENDED, "cause", "idle_timeout"),
        "ended_conn_timeout" => labelled("calls_ended", ENDED, "cause", "conn_timeout"),
        "ended_peer" => labelled("calls_ended", ENDED, "cause", "peer"),
        "call_gre_in" => labelled("call_gre_packets", CALL_GRE, "direction", "to_inside"),
        "call_gre_out" => labelled("call_gre_packets", CALL_GRE, "direction", "from_inside"),
        "packets" => plain("packets", "Packets handed to the engine by the queues"),
        "control_packets" => plain("control_packets", "Control (tcp/1723) packets queued"),
        "gre_packets" => plain("gre_packets", "GRE packets queued"),
        "gre_hairpin" => plain(
            "gre_hairpin",
            "GRE of hairpinned calls the daemon sent on to the inside server",
        ),
        "rewritten" => plain("rewritten", "Packets accepted with rewritten bytes"),
        "gre_inside_unmatched" => plain(
            "gre_inside_unmatched",
            "GRE from inside hosts that matched no call (passed unchanged)",
        ),
        "ignored" => plain("ignored", "Queued packets not for the gateway (passed)"),
        "malformed" => plain("malformed", "Truncated or malformed headers (passed)"),
        "fragments" => plain("fragments", "Non-first IP fragments (passed)"),
        "messages" => plain("messages", "PPTP control messages parsed"),
        "unknown_messages" => plain(
            "unknown_messages",
            "Control messages of types RFC 2637 does not define (skipped)",
        ),
        "desyncs" => plain("desyncs", "Control connections that lost PPTP framing"),
        "connections_evicted" => plain(
            "connections_evicted",
            "Connections without calls forgotten to make room for a new one",
        ),
        "ignored_teardowns" => plain(
            "ignored_teardowns",
            "FIN or RST segments off the tracked stream position (spoofed or stale)",
        ),
        "patches_evicted" => plain(
            "patches_evicted",
            "Rewritten bytes forgotten unacknowledged (a retransmission would leave untranslated)",
        ),
        "forged_resyncs" => plain(
            "forged_resyncs",
            "Stream pick-ups towards an inside host that its acknowledgement showed forged",
        ),
        "calls_created" => plain("calls_created", "Calls created"),
        "events_lost" => plain("events_lost", "Engine events lost (a daemon bug)"),
        "fastpath_errors" => plain("fastpath_errors", "Fast path updates the kernel refused"),
        "verdict_errors" => plain("verdict_errors", "Packets whose verdict could not be sent"),
        "recv_errors" => plain("recv_errors", "Errors receiving from the queue sockets"),
        "journal_records" => plain("journal_records", "Journal records written"),
        "journal_errors" => plain("journal_errors", "Journal writes that failed"),
        "status_clients_dropped" => plain(
            "status_clients_dropped",
            "Status socket clients dropped for not reading in time",
        ),
        _ => return None,
    })
}

/// Stats of the status report that go up and down.
const STAT_GAUGES: [(&str, &str, &str); 2] = [
    ("calls_active", "calls_active", "Live calls"),
    (
        "offload_pending",
        "calls_offload_pending",
        "Calls waiting for their kernel fast path elements (their GRE is not delivered yet)",
    ),
];

/// Labels of one sample.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The metrics of one report, ready to encode.
fn registry(report: &StatusReport) -> Registry {
    let mut reg = Registry::with_prefix("pptp_alg");
    reg.register(
        "build",
        "The daemon's version",
        Info::new(labels(&[("version", &report.version)])),
    );
    let gauge = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        reg.register(name, help, g);
    };
    gauge(
        &mut reg,
        "uptime_seconds",
        "Seconds since the daemon started",
        report.uptime_secs,
    );
    gauge(
        &mut reg,
        "fast_path_enabled",
        "1 when known calls' GRE is translated by the kernel",
        u64::from(report.offload),
    );
    gauge(
        &mut reg,
        "connections",
        "Tracked control connections",
        report.connections as u64,
    );
    gauge(
        &mut reg,
        "nat_ids_quarantined",
        "Ended calls whose NAT id is not reused yet",
        report.quarantined as u64,
    );

    // The GRE that matched no call, split by who saw it: the daemon's queue or the kernel's
    // rule (the status's `gre_unknown_call` is their sum).
    let kernel_unknown = report.stats.get("gre_unknown_kernel").copied();
    let mut families: BTreeMap<&str, (&str, Family<Labels, Counter>)> = BTreeMap::new();
    let mut add = |metric: &'static str, help: &'static str, l: Labels, v: u64| {
        let fam = &families
            .entry(metric)
            .or_insert_with(|| (help, Family::default()))
            .1;
        fam.get_or_create(&l).inc_by(v);
    };
    const UNKNOWN: &str = "GRE to this router that matched no call (left to the router), by \
                           where it was seen";
    for (name, &v) in &report.stats {
        if let Some(&(_, metric, help)) = STAT_GAUGES.iter().find(|g| g.0 == name) {
            gauge(&mut reg, metric, help, v);
        } else if let Some(p) = stat_place(name) {
            let l = p
                .label
                .map(|(k, val)| labels(&[(k, val)]))
                .unwrap_or_default();
            add(p.metric, p.help, l, v);
        } else if name == "gre_unknown_call" {
            let kernel = kernel_unknown.unwrap_or(0);
            add(
                "gre_unknown_call",
                UNKNOWN,
                labels(&[("seen_by", "daemon")]),
                v.saturating_sub(kernel),
            );
            if kernel_unknown.is_some() {
                add(
                    "gre_unknown_call",
                    UNKNOWN,
                    labels(&[("seen_by", "kernel")]),
                    kernel,
                );
            }
        } else if name != "gre_unknown_kernel" {
            // A counter added to the report after this table was written: still exported,
            // as a gauge since nothing says it only grows (a test keeps the table complete).
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            reg.register(name.clone(), format!("Status counter {name}"), g);
        }
    }

    const QUEUE_DROPPED: &str = "Packets the kernel dropped on an NFQUEUE (fail-closed), by \
                                 reason: the queue was full, or the daemon's socket buffer was";
    let waiting: Family<Labels, Gauge> = Family::default();
    for q in &report.queues {
        let n = q.queue.to_string();
        let base = [("queue", n.as_str()), ("carries", q.carries.as_str())];
        waiting
            .get_or_create(&labels(&base))
            .set(i64::try_from(q.waiting).unwrap_or(i64::MAX));
        for (reason, v) in [
            ("queue_full", q.dropped_full),
            ("socket_full", q.dropped_socket),
        ] {
            let mut l = labels(&base);
            l.push(("reason".into(), reason.into()));
            add("queue_dropped", QUEUE_DROPPED, l, v);
        }
    }
    if !report.queues.is_empty() {
        reg.register(
            "queue_waiting",
            "Packets waiting in an NFQUEUE for the daemon's verdict",
            waiting,
        );
    }
    if let Some(ha) = &report.ha {
        gauge(
            &mut reg,
            "ha_role",
            "1 while this node of the pair is active (holds ha_address), 0 as backup",
            u64::from(ha.role == Role::Active),
        );
        gauge(
            &mut reg,
            "ha_node",
            "This node of the pair (0 or 1)",
            u64::from(ha.node),
        );
        gauge(
            &mut reg,
            "ha_peer_alive",
            "1 while the other node's messages arrive",
            u64::from(ha.peer.alive),
        );
        gauge(
            &mut reg,
            "ha_in_sync",
            "1 while the peer is alive and its calls here are current",
            u64::from(ha.in_sync),
        );
        gauge(
            &mut reg,
            "ha_peer_calls",
            "The peer's live calls held here (hot standby)",
            ha.peer_calls as u64,
        );
        if let Some(ms) = ha.last_message_age_ms {
            gauge(
                &mut reg,
                "ha_last_message_age_milliseconds",
                "Time since the peer's last valid message",
                ms,
            );
        }
        const RECORDS: &str = "Call records replicated, by direction (sent: this node's; \
                               received: the peer's, applied)";
        const MESSAGES: &str = "Replication messages, by direction (received: taken)";
        const BYTES: &str = "Bytes of replication datagrams (UDP payload), by direction";
        for (dir, records, messages, bytes) in [
            ("sent", ha.records_sent, ha.messages_sent, ha.bytes_sent),
            (
                "received",
                ha.records_received,
                ha.messages_received,
                ha.bytes_received,
            ),
        ] {
            let l = labels(&[("direction", dir)]);
            add("ha_records", RECORDS, l.clone(), records);
            add("ha_messages", MESSAGES, l.clone(), messages);
            add("ha_bytes", BYTES, l, bytes);
        }
        for (metric, help, v) in [
            ("ha_gaps", "Gaps found in the peer's records", ha.gaps),
            (
                "ha_resyncs",
                "Snapshots of the peer's table taken whole",
                ha.resyncs,
            ),
            (
                "ha_snapshots_sent",
                "Snapshots of this node's table sent",
                ha.snapshots_sent,
            ),
            (
                "ha_auth_failures",
                "Replication messages refused for a wrong tag (another key, or altered)",
                ha.auth_failures,
            ),
            (
                "ha_refused",
                "Replication messages refused otherwise (replays, other sessions or addresses, \
                 malformed)",
                ha.refused,
            ),
            (
                "ha_send_errors",
                "Replication datagrams that could not be sent",
                ha.send_errors,
            ),
        ] {
            add(metric, help, Labels::new(), v);
        }
    }
    for (metric, (help, fam)) in families {
        reg.register(metric, help, fam);
    }
    reg
}

/// The report in the given text format.
pub fn render(report: &StatusReport, format: Format) -> String {
    let reg = registry(report);
    let mut out = String::new();
    // Writing into a String cannot fail, and every name and label here is valid.
    let _ = match format {
        Format::OpenMetrics => text::encode(&mut out, &reg),
        Format::Prometheus => prometheus_text::encode(&mut out, &reg),
    };
    out
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`, with the format its `Accept` header wants.
    Metrics(Format),
    /// Anything else: the status line and a one-line body.
    Refuse(&'static str, &'static str),
}

/// Reads an HTTP request head (everything before the empty line). `None`: it is not complete
/// yet.
pub fn parse_request(head: &[u8]) -> Option<Request> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Bare newlines, as some hand-typed clients send them.
        head.windows(2).position(|w| w == b"\n\n")
    });
    let Some(end) = end else {
        return (head.len() >= MAX_REQUEST).then_some(Request::Refuse(
            "431 Request Header Fields Too Large",
            "request head too large",
        ));
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return Some(Request::Refuse("400 Bad Request", "not a text request"));
    };
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target, version) = (first.next(), first.next(), first.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || first.next().is_some() {
        return Some(Request::Refuse("400 Bad Request", "bad request line"));
    }
    let path = target.unwrap_or("").split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Some(Request::Refuse("404 Not Found", "only /metrics is served"));
    }
    if method != Some("GET") {
        return Some(Request::Refuse(
            "405 Method Not Allowed",
            "only GET is served",
        ));
    }
    let accept = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("accept").then_some(v.trim())
    });
    Some(Request::Metrics(Format::from_accept(accept)))
}

/// The whole HTTP answer to a request.
pub fn answer(req: &Request, body: impl FnOnce(Format) -> String) -> Vec<u8> {
    let (status, ctype, body) = match *req {
        Request::Metrics(f) => ("200 OK", f.content_type(), body(f)),
        Request::Refuse(status, why) => (
            status,
            "text/plain; charset=utf-8",
            format!("pptp-alg: {why}\n"),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if matches!(req, Request::Refuse("405 Method Not Allowed", _)) {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The HTTP listener; stops (and waits for its thread) when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    listener: Arc<TcpListener>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves the metrics of `shared`.
    pub fn start(addr: SocketAddr, shared: SharedRef) -> io::Result<MetricsServer> {
        MetricsServer::start_with(addr, move |f| render(&StatusReport::snapshot(&shared), f))
    }

    /// Like [`MetricsServer::start`], serving what `body` returns.
    pub fn start_with<F>(addr: SocketAddr, body: F) -> io::Result<MetricsServer>
    where
        F: Fn(Format) -> String + Send + Sync + 'static,
    {
        let listener = Arc::new(TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?);
        let addr = listener.local_addr()?;
        let l = listener.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&l, Arc::new(body)))?;
        Ok(MetricsServer {
            listener,
            addr,
            thread: Some(thread),
        })
    }

    /// The address served (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Wakes the accept with EINVAL; the thread then sees the listener shut and ends.
        // SAFETY: shutdown(2) on a socket this struct keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Says what to do about a bind that failed, for the cases an operator meets.
fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EAFNOSUPPORT) => {
            "; the address family is not allowed to this process: under the packaged unit, add \
             `RestrictAddressFamilies=AF_INET AF_INET6` in a drop-in (systemctl edit pptp-alg)"
        }
        Some(libc::EACCES) => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE, which the unit does not grant: use a \
             port above 1023 (the default is 9723)"
        }
        Some(libc::EADDRNOTAVAIL) => "; no interface of this router has that address",
        Some(libc::EADDRINUSE) => "; another program listens there",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("metrics_listen {addr}: cannot listen: {e}{hint}"),
    )
}

fn serve<F>(listener: &TcpListener, body: Arc<F>)
where
    F: Fn(Format) -> String + Send + Sync + 'static,
{
    let slots = Arc::new(Slots::new(MAX_CLIENTS));
    loop {
        let slot = slots.acquire();
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            // EINVAL: shut down by `MetricsServer::drop`.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => {
                log::debug!("metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let body = body.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-client".into())
            .spawn(move || {
                let _slot = slot;
                serve_client(conn, &*body);
            });
        if let Err(e) = spawned {
            log::warn!("metrics: cannot start a thread for a client: {e}");
        }
    }
}

fn serve_client(mut conn: TcpStream, body: &dyn Fn(Format) -> String) {
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let out = answer(&req, body);
    match write_within(&mut conn, &out, CLIENT_TIMEOUT) {
        Ok(()) => {}
        Err(Stalled::Timeout(sent)) => log::debug!(
            "metrics: dropped a client that read {sent} of {} bytes in {}s",
            out.len(),
            CLIENT_TIMEOUT.as_secs()
        ),
        Err(Stalled::Io(e)) => log::debug!("metrics: write: {e}"),
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Reads a request head within [`CLIENT_TIMEOUT`] in all; `None` when the client was too slow
/// or went away.
fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(r) = parse_request(&head) {
            return Some(r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            log::debug!("metrics: dropped a client that sent no request in time");
            return None;
        }
        conn.set_read_timeout(Some(left)).ok()?;
        let want = (MAX_REQUEST - head.len()).min(buf.len());
        match conn.read(&mut buf[..want]) {
            Ok(0) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Writes the metrics to a node_exporter textfile every [`TEXTFILE_INTERVAL`]; removes it when
/// dropped, so that a stopped daemon leaves no counters that look alive.
#[derive(Debug)]
pub struct TextfileWriter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl TextfileWriter {
    /// Writes `path` now (an error here is returned: the path is wrong) and then every
    /// [`TEXTFILE_INTERVAL`] on a thread of its own (errors logged, at most once a minute).
    pub fn start(path: &Path, shared: SharedRef) -> io::Result<TextfileWriter> {
        let text = move || render(&StatusReport::snapshot(&shared), Format::Prometheus);
        write_atomically(path, &text())?;
        let (tx, rx) = mpsc::channel::<()>();
        let p = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("metrics-textfile".into())
            .spawn(move || {
                let mut limit = super::logging::RateLimit::new(Duration::from_secs(60), 1);
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TEXTFILE_INTERVAL)
                {
                    if let Err(e) = write_atomically(&p, &text()) {
                        if limit.allow(Instant::now()).0 {
                            log::warn!("metrics_textfile {}: {e}", p.display());
                        }
                    }
                }
            })?;
        Ok(TextfileWriter {
            stop: Some(tx),
            thread: Some(thread),
            path: path.to_owned(),
        })
    }
}

impl Drop for TextfileWriter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes a file through a temporary beside it and a rename, so node_exporter never reads
/// half of it. The temporary's name starts with a dot and does not end in `.prom`, so the
/// collector never reads it either.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text)?;
    // Readable by node_exporter, which runs as another user.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::{Alg, AlgConfig};
    use crate::daemon::shared::Shared;
    use crate::daemon::status::{Installed, QueueRole, QueueRow, RulesInfo};

    fn report() -> StatusReport {
        let rules = RulesInfo {
            table: "pptp_alg".into(),
            installed: Installed::Unowned,
            queue_backend: None,
        };
        let mut r = StatusReport::snapshot(&Shared::new(Alg::new(AlgConfig::default()), rules));
        r.offload = true;
        r.queues = vec![QueueRow {
            queue: 1725,
            carries: QueueRole::Gre,
            waiting: 3,
            dropped_full: 7,
            dropped_socket: 2,
        }];
        r.stats.insert("gre_unknown_call".into(), 10);
        r.stats.insert("gre_unknown_kernel".into(), 6);
        r.stats.insert("status_clients_dropped".into(), 0);
        r
    }

    /// The pair's state: the status's `ha` object, and its table line.
    #[test]
    fn ha_metrics_follow_the_status() {
        use crate::daemon::ha::{HaReport, PeerReport};
        let mut r = report();
        assert!(!render(&r, Format::OpenMetrics).contains("pptp_alg_ha_"));
        let ha = HaReport {
            node: 1,
            role: Role::Backup,
            address: Some("192.0.2.10".parse().unwrap()),
            listen: "10.0.9.2:1729".parse().unwrap(),
            peer: PeerReport {
                address: "10.0.9.1:1729".parse().unwrap(),
                alive: true,
                role: Some(Role::Active),
                node: Some(0),
            },
            in_sync: true,
            peer_calls: 3,
            records_sent: 5,
            records_received: 9,
            messages_sent: 20,
            messages_received: 21,
            bytes_sent: 2000,
            bytes_received: 2100,
            gaps: 1,
            resyncs: 2,
            snapshots_sent: 1,
            auth_failures: 4,
            refused: 6,
            send_errors: 0,
            last_message_age_ms: Some(1300),
        };
        assert_eq!(
            ha.text(),
            "high availability: node 1 backup; peer 10.0.9.1:1729 node 0 active, alive, in sync; \
             3 of its calls; records 5 sent, 9 received; 1 gaps, 2 resyncs, 4 auth failures; \
             last message 1.3 s ago"
        );
        r.ha = Some(ha);
        let text = render(&r, Format::OpenMetrics);
        for line in [
            "pptp_alg_ha_role 0",
            "pptp_alg_ha_node 1",
            "pptp_alg_ha_peer_alive 1",
            "pptp_alg_ha_in_sync 1",
            "pptp_alg_ha_peer_calls 3",
            "pptp_alg_ha_last_message_age_milliseconds 1300",
            "pptp_alg_ha_records_total{direction=\"sent\"} 5",
            "pptp_alg_ha_records_total{direction=\"received\"} 9",
            "pptp_alg_ha_messages_total{direction=\"received\"} 21",
            "pptp_alg_ha_bytes_total{direction=\"sent\"} 2000",
            "pptp_alg_ha_gaps_total 1",
            "pptp_alg_ha_resyncs_total 2",
            "pptp_alg_ha_auth_failures_total 4",
            "pptp_alg_ha_refused_total 6",
            "# TYPE pptp_alg_ha_records counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn every_status_counter_has_a_documented_metric() {
        let r = report();
        for name in r.stats.keys() {
            let known = stat_place(name).is_some()
                || STAT_GAUGES.iter().any(|g| g.0 == name)
                || name.starts_with("gre_unknown_");
            assert!(known, "status counter {name} has no metric of its own");
        }
    }

    #[test]
    fn openmetrics_text_has_labels_types_and_eof() {
        let text = render(&report(), Format::OpenMetrics);
        for line in [
            "# TYPE pptp_alg_packets_dropped counter",
            "pptp_alg_packets_dropped_total{reason=\"call_refused\"} 0",
            "pptp_alg_calls_refused_total{reason=\"max_calls_per_host\"} 0",
            "pptp_alg_calls_ended_total{cause=\"idle_timeout\"} 0",
            "pptp_alg_queue_dropped_total{queue=\"1725\",carries=\"gre\",reason=\"queue_full\"} 7",
            "pptp_alg_queue_dropped_total{queue=\"1725\",carries=\"gre\",reason=\"socket_full\"} 2",
            "pptp_alg_queue_waiting{queue=\"1725\",carries=\"gre\"} 3",
            "pptp_alg_gre_unknown_call_total{seen_by=\"daemon\"} 4",
            "pptp_alg_gre_unknown_call_total{seen_by=\"kernel\"} 6",
            "# TYPE pptp_alg_calls_active gauge",
            "pptp_alg_calls_active 0",
            "pptp_alg_fast_path_enabled 1",
            "pptp_alg_calls_created_total 0",
            "pptp_alg_status_clients_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("pptp_alg_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Nothing fell through to the catch-all.
        assert!(!text.contains("Status counter"), "{text}");
    }

    #[test]
    fn prometheus_text_names_the_samples_in_type_lines() {
        let text = render(&report(), Format::Prometheus);
        assert!(
            text.lines()
                .any(|l| l == "# TYPE pptp_alg_packets_dropped_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample's metric has a TYPE line of its own name (what node_exporter checks).
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(&name), "{name} has no TYPE line:\n{text}");
        }
    }

    #[test]
    fn requests() {
        let om = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;\
                  version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
        assert_eq!(
            parse_request(om.as_bytes()),
            Some(Request::Metrics(Format::OpenMetrics))
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Metrics(Format::Prometheus))
        );
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost"), None);
        let refused = |r: &[u8]| match parse_request(r) {
            Some(Request::Refuse(s, _)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(b"POST /metrics HTTP/1.1\r\n\r\n"),
            "405 Method Not Allowed"
        );
        assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(refused(b"GET /metrics\r\n\r\n"), "400 Bad Request");
        assert_eq!(
            refused(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            "400 Bad Request"
        );
        assert_eq!(
            refused(&vec![b'a'; MAX_REQUEST]),
            "431 Request Header Fields Too Large"
        );
        let a = String::from_utf8(answer(
            &Request::Refuse("405 Method Not Allowed", "only GET"),
            |_| unreachable!(),
        ))
        .unwrap();
        assert!(a.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{a}");
        assert!(a.contains("\r\nAllow: GET\r\n"), "{a}");
        let a = String::from_utf8(answer(&Request::Metrics(Format::Prometheus), |_| {
            "x 1\n".into()
        }))
        .unwrap();
        assert!(
            a.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"),
            "{a}"
        );
    }
}

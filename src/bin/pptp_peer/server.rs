//! `pptp-peer server`: a scripted PAC that answers calls and echoes GRE.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ctl::{Control, RecvError, Segmentation};
use super::gre::{self, GreOut, GreRecord, RawGre};
use super::msg::{self, ty, Msg};
use super::parse_u16;

/// How often blocked loops look at the stop flag.
const TICK: Duration = Duration::from_millis(200);

/// Which id a Call-Disconnect-Notify carries; implementations disagree (see design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CdnId {
    /// The PAC's own id, as RFC 2637 says.
    Own,
    /// The PNS's id, as the Linux helper and pptp-linux assume.
    Peer,
}

/// Options of `pptp-peer server`.
#[derive(clap::Args, Debug)]
pub struct ServerOpts {
    /// Local address for the listener and the GRE socket.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: Ipv4Addr,
    /// TCP port of the control connection.
    #[arg(long, default_value_t = 1723)]
    pub port: u16,
    /// First Call ID the server assigns to its own calls (decimal or 0x-hex).
    #[arg(long, default_value = "0x100", value_parser = parse_u16)]
    pub first_call_id: u16,
    /// Stop after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long)]
    pub duration: Option<f64>,
    /// After each Start-Control-Connection-Reply, place an incoming call (ICRQ).
    #[arg(long)]
    pub incoming_call: bool,
    /// Which Call ID to put in Call-Disconnect-Notify.
    #[arg(long, value_enum, default_value = "own")]
    pub cdn_call_id: CdnId,
    /// Also send a WAN-Error-Notify for every call once it is connected.
    #[arg(long)]
    pub wan_error: bool,
    /// How the server's own messages are cut into TCP writes.
    #[arg(long, default_value = "one")]
    pub segmentation: Segmentation,
}

/// One control connection, as reported in the summary.
#[derive(Debug, Clone, Serialize)]
struct ConnRecord {
    id: usize,
    peer: String,
    received: Vec<String>,
    end: String,
}

/// One call, as reported in the summary.
#[derive(Debug, Clone, Serialize)]
struct CallRecord {
    own_id: u16,
    /// None while an incoming call waits for its Incoming-Call-Reply.
    peer_id: Option<u16>,
    peer_addr: String,
    connection: usize,
    direction: &'static str,
    /// pending, connected, rejected, cleared, stopped or closed.
    state: &'static str,
    sli_received: u32,
    gre_received: Vec<GreRecord>,
    echoes_sent: u32,
    #[serde(skip)]
    tx_seq: u32,
}

/// Everything the server prints at the end.
#[derive(Debug, Default, Serialize)]
struct Summary {
    role: &'static str,
    listen: String,
    control_connections: Vec<ConnRecord>,
    calls: Vec<CallRecord>,
    unknown_gre: Vec<GreRecord>,
    errors: Vec<String>,
}

struct Shared {
    opts: ServerOpts,
    stop: Arc<AtomicBool>,
    state: Mutex<(u16, Summary)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (u16, Summary)> {
        // A panicked thread must not take the summary down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Picks the next free own Call ID. Ids are never reused within a run, so GRE
/// for a finished call is reported as unknown rather than misattributed.
fn allocate(next: &mut u16, calls: &[CallRecord]) -> u16 {
    for _ in 0..=u16::MAX {
        let id = *next;
        *next = next.wrapping_add(1);
        if id != 0 && !calls.iter().any(|c| c.own_id == id) {
            return id;
        }
    }
    // All 65535 ids used in one run: reuse rather than fail; a test never gets here.
    *next
}

/// Runs the server until the duration elapses or a signal arrives; prints the summary.
pub fn run(opts: ServerOpts) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("pptp-peer server: cannot install signal handler: {e}");
            return 1;
        }
    }
    let listen = SocketAddr::from((opts.bind, opts.port));
    let listener = match TcpListener::bind(listen).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pptp-peer server: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let bind = (!opts.bind.is_unspecified()).then_some(opts.bind);
    let raw = match RawGre::open(bind).and_then(|r| {
        r.set_read_timeout(TICK)?;
        Ok(r)
    }) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("pptp-peer server: cannot open raw GRE socket (needs root/CAP_NET_RAW): {e}");
            return 1;
        }
    };
    let deadline = opts
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let first = opts.first_call_id;
    let shared = Arc::new(Shared {
        opts,
        stop,
        state: Mutex::new((
            first,
            Summary {
                role: "server",
                listen: listen.to_string(),
                ..Summary::default()
            },
        )),
    });
    // Printed unconditionally (not through the logger): tests wait for this line.
    eprintln!("pptp-peer server: listening on {listen}");

    let mut threads = Vec::new();
    {
        let shared = Arc::clone(&shared);
        let raw = Arc::clone(&raw);
        threads.push(thread::spawn(move || gre_loop(&shared, &raw)));
    }
    let mut next_conn = 0usize;
    while !shared.stopping() && deadline.is_none_or(|d| Instant::now() < d) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let id = next_conn;
                next_conn += 1;
                log::info!("connection {id} from {peer}");
                let shared = Arc::clone(&shared);
                threads.push(thread::spawn(move || serve_conn(&shared, stream, id, peer)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("accept: {e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let guard = shared.lock();
    match serde_json::to_string(&guard.1) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("pptp-peer server: cannot serialise summary: {e}");
            return 1;
        }
    }
    0
}

fn serve_conn(shared: &Shared, stream: TcpStream, id: usize, peer: SocketAddr) {
    shared.lock().1.control_connections.push(ConnRecord {
        id,
        peer: peer.to_string(),
        received: Vec::new(),
        end: "open".into(),
    });
    let peer_ip = match peer.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let end = match Control::new(stream, shared.opts.segmentation) {
        Err(e) => format!("socket setup failed: {e}"),
        Ok(mut ctl) => {
            let end = conn_loop(shared, &mut ctl, id, peer_ip);
            let mut g = shared.lock();
            if let Some(c) = g.1.control_connections.iter_mut().find(|c| c.id == id) {
                c.received = std::mem::take(&mut ctl.received);
            }
            end
        }
    };
    log::info!("connection {id} from {peer} ended: {end}");
    let mut g = shared.lock();
    if let Some(c) = g.1.control_connections.iter_mut().find(|c| c.id == id) {
        c.end = end;
    }
    for c in g.1.calls.iter_mut().filter(|c| c.connection == id) {
        if matches!(c.state, "pending" | "connected") {
            c.state = "closed";
        }
    }
}

/// Reads and answers messages until the connection ends; returns why it ended.
fn conn_loop(shared: &Shared, ctl: &mut Control, id: usize, peer_ip: Ipv4Addr) -> String {
    loop {
        if shared.stopping() {
            return "server stopping".into();
        }
        match ctl.recv_until(Instant::now() + TICK) {
            Ok(None) => {}
            Ok(Some(m)) => {
                let replies = handle(shared, &m, id, peer_ip);
                if !replies.is_empty() {
                    if let Err(e) = ctl.send_step(&replies) {
                        return format!("write failed: {e}");
                    }
                }
            }
            Err(RecvError::Closed) if ctl.pending() > 0 => {
                return format!(
                    "closed by peer inside a message ({} bytes left over)",
                    ctl.pending()
                )
            }
            Err(RecvError::Closed) => return "closed by peer".into(),
            Err(RecvError::Io(e)) => return format!("socket error: {e}"),
            Err(RecvError::Frame(e)) => {
                log::warn!("connection {id}: {e}; closing");
                shared
                    .lock()
                    .1
                    .errors
                    .push(format!("connection {id}: malformed message: {e}"));
                return format!("malformed: {e}");
            }
        }
    }
}

/// Applies one message to the call table; returns the messages to send back.
fn handle(shared: &Shared, m: &Msg, conn: usize, peer_ip: Ipv4Addr) -> Vec<Vec<u8>> {
    let opts = &shared.opts;
    let mut g = shared.lock();
    let (next, sum) = &mut *g;
    let notify = |peer_id: u16, out: &mut Vec<Vec<u8>>| {
        out.push(msg::sli(peer_id));
        if opts.wan_error {
            out.push(msg::wen(peer_id));
        }
    };
    let mut out = Vec::new();
    match m.ctype {
        ty::SCCRQ => {
            out.push(msg::sccrp(1, "pptp-peer-server"));
            if opts.incoming_call {
                let own = allocate(next, &sum.calls);
                sum.calls
                    .push(new_call(own, None, peer_ip, conn, "incoming", "pending"));
                out.push(msg::icrq(own, own, "5550100"));
            }
        }
        ty::ECHO_RQ => out.push(msg::echo_reply(m.u32_at(msg::off::ECHO_ID), 1)),
        ty::OCRQ => {
            let peer_id = m.u16_at(msg::off::CALL_ID);
            let own = allocate(next, &sum.calls);
            log::info!("connection {conn}: outgoing call {own} <-> peer {peer_id}");
            sum.calls.push(new_call(
                own,
                Some(peer_id),
                peer_ip,
                conn,
                "outgoing",
                "connected",
            ));
            out.push(msg::ocrp(own, peer_id, 1));
            notify(peer_id, &mut out);
        }
        ty::ICRP => {
            let own = m.u16_at(msg::off::PEER_CALL_ID);
            let peer_id = m.u16_at(msg::off::CALL_ID);
            let result = m.u8_at(msg::off::CALL_RESULT);
            let call = sum
                .calls
                .iter_mut()
                .find(|c| c.connection == conn && c.own_id == own && c.state == "pending");
            match call {
                Some(c) if result == 1 => {
                    log::info!("connection {conn}: incoming call {own} <-> peer {peer_id}");
                    c.peer_id = Some(peer_id);
                    c.state = "connected";
                    out.push(msg::iccn(peer_id));
                    notify(peer_id, &mut out);
                }
                Some(c) => {
                    c.peer_id = Some(peer_id);
                    c.state = "rejected";
                    sum.errors.push(format!(
                        "connection {conn}: ICRP for call {own} has result {result}"
                    ));
                }
                None => sum
                    .errors
                    .push(format!("connection {conn}: ICRP for unknown call {own}")),
            }
        }
        ty::CCRQ => {
            let peer_id = m.u16_at(msg::off::CALL_ID);
            let call = sum.calls.iter_mut().find(|c| {
                c.connection == conn && c.peer_id == Some(peer_id) && c.state == "connected"
            });
            match call {
                Some(c) => {
                    c.state = "cleared";
                    let id = match opts.cdn_call_id {
                        CdnId::Own => c.own_id,
                        CdnId::Peer => peer_id,
                    };
                    out.push(msg::cdn(id, 4));
                }
                None => {
                    sum.errors.push(format!(
                        "connection {conn}: CCRQ for unknown call {peer_id}"
                    ));
                    // Result 2 = general error: still answer so the client does not hang.
                    out.push(msg::cdn(peer_id, 2));
                }
            }
        }
        ty::STOP_CCRQ => {
            for c in sum.calls.iter_mut().filter(|c| c.connection == conn) {
                if matches!(c.state, "pending" | "connected") {
                    c.state = "stopped";
                }
            }
            out.push(msg::stop_ccrp(1));
        }
        ty::SLI => {
            let own = m.u16_at(msg::off::CALL_ID);
            match sum
                .calls
                .iter_mut()
                .find(|c| c.connection == conn && c.own_id == own)
            {
                Some(c) => c.sli_received += 1,
                None => sum
                    .errors
                    .push(format!("connection {conn}: SLI for unknown call {own}")),
            }
        }
        ty::ECHO_RP | ty::WEN | ty::CDN => {}
        t if msg::expected_len(t).is_none() => {
            // RFC 2637 gives no rule; skipping keeps the connection usable, which
            // lets tests see whether an ALG in the path survives such messages too.
            log::warn!("connection {conn}: ignoring unknown control message type {t}");
        }
        t => log::warn!(
            "connection {conn}: unexpected {} from a PNS",
            msg::type_name(t)
        ),
    }
    out
}

fn new_call(
    own_id: u16,
    peer_id: Option<u16>,
    peer: Ipv4Addr,
    connection: usize,
    direction: &'static str,
    state: &'static str,
) -> CallRecord {
    CallRecord {
        own_id,
        peer_id,
        peer_addr: peer.to_string(),
        connection,
        direction,
        state,
        sli_received: 0,
        gre_received: Vec::new(),
        echoes_sent: 0,
        tx_seq: 0,
    }
}

/// Records every GRE packet and echoes those of live calls back to their sender.
fn gre_loop(shared: &Shared, raw: &RawGre) {
    let mut buf = vec![0u8; 65536];
    while !shared.stopping() {
        let n = match raw.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if gre::is_timeout(&e) => continue,
            Err(e) => {
                log::error!("GRE receive failed: {e}");
                shared
                    .lock()
                    .1
                    .errors
                    .push(format!("GRE receive failed: {e}"));
                return;
            }
        };
        let Some(rec) = gre::parse_ip(&buf[..n]) else {
            continue;
        };
        let reply = {
            let mut g = shared.lock();
            let sum = &mut g.1;
            let call = sum.calls.iter_mut().find(|c| {
                rec.is_pptp()
                    && Some(c.own_id) == rec.call_id
                    && c.state == "connected"
                    && c.peer_id.is_some()
            });
            match call {
                None => {
                    log::info!("unknown GRE from {} call id {:?}", rec.from, rec.call_id);
                    sum.unknown_gre.push(rec);
                    None
                }
                Some(c) => {
                    c.gre_received.push(rec.clone());
                    // Never echo an echo: two peers on one host would ping-pong forever.
                    if rec.payload.starts_with("echo:") {
                        None
                    } else {
                        c.echoes_sent += 1;
                        c.tx_seq += 1;
                        let pkt = gre::build(&GreOut {
                            version: 1,
                            protocol: gre::PROTO_PPP,
                            call_id: c.peer_id.unwrap_or(0),
                            seq: Some(c.tx_seq - 1),
                            ack: rec.seq,
                            payload: format!("echo:{}", rec.payload).as_bytes(),
                        });
                        rec.from.parse::<Ipv4Addr>().ok().map(|to| (pkt, to))
                    }
                }
            }
        };
        if let Some((pkt, to)) = reply {
            if let Err(e) = raw.send_to(&pkt, to) {
                log::warn!("GRE echo to {to} failed: {e}");
            }
        }
    }
}

//! `pptp-peer client`: a scripted PNS that places (or accepts) calls and sends GRE.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ctl::{Control, RecvError, Segmentation};
use super::gre::{self, GreOut, GreRecord, RawGre};
use super::msg::{self, ty, Malformed, Msg};
use super::parse_u16;

/// Echo identifier used to probe whether the connection survived a malformed message.
const PROBE_ECHO_ID: u32 = 0xC0FF_EE00;

/// How the client ends its calls and the control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Close {
    /// Call-Clear-Request per call, wait for Call-Disconnect-Notify, then FIN.
    Clear,
    /// Stop-Control-Connection-Request, wait for the reply, then FIN.
    Stop,
    /// Just close the socket (FIN).
    Fin,
    /// Close with SO_LINGER 0, so the kernel sends a RST.
    Rst,
}

/// Options of `pptp-peer client`.
#[derive(clap::Args, Debug)]
pub struct ClientOpts {
    /// Server address (the control connection and GRE go there).
    #[arg(long)]
    pub server: Ipv4Addr,
    /// TCP port of the control connection.
    #[arg(long, default_value_t = 1723)]
    pub port: u16,
    /// Local address for TCP and GRE; needed to tell apart clients sharing a
    /// network namespace, since every raw GRE socket sees every GRE packet.
    #[arg(long)]
    pub bind: Option<Ipv4Addr>,
    /// The client's first own Call ID (decimal or 0x-hex); call i uses N+i.
    #[arg(long, value_parser = parse_u16)]
    pub call_id: u16,
    /// Number of calls on this control connection.
    #[arg(long, default_value_t = 1)]
    pub calls: u16,
    /// Outgoing-Call-Requests in flight before the first reply is awaited
    /// (1: one at a time). Hundreds of calls one round trip each through a
    /// queueing ALG take seconds; a window lets a test open them in a fraction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub window: u16,
    /// GRE packets sent per call.
    #[arg(long, default_value_t = 3)]
    pub gre_count: u32,
    /// Milliseconds between GRE packets (spread so a queueing ALG sees them
    /// one by one; lower it for many calls).
    #[arg(long, default_value_t = 5.0)]
    pub gre_gap_ms: f64,
    /// Name put in GRE payloads ("<tag>:call<N>:<seq>"); default "pid<PID>".
    #[arg(long)]
    pub tag: Option<String>,
    /// How messages are cut into TCP writes: one, coalesce, split:BYTES, split-callid.
    #[arg(long, default_value = "one")]
    pub segmentation: Segmentation,
    /// Send this malformed message right after SCCRQ and record the outcome.
    #[arg(long, value_enum)]
    pub malformed: Option<Malformed>,
    /// Seconds to keep collecting GRE after sending.
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// After the hold, log "holding calls until SIGUSR1" and keep the calls
    /// (answering the server) until SIGUSR1 arrives, at most this many
    /// seconds: lets a test read the router's state while every call of
    /// several clients is up, however long their setups took.
    #[arg(long)]
    pub until_signal: Option<f64>,
    /// How to end the calls and the connection.
    #[arg(long, value_enum, default_value = "clear")]
    pub close: Close,
    /// Accept incoming calls (ICRQ from the server) instead of placing outgoing ones.
    #[arg(long)]
    pub incoming: bool,
    /// Seconds to wait for each expected reply.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Treat missing GRE echoes as a failure (non-zero exit).
    #[arg(long)]
    pub require_echoes: bool,
}

/// One call, as reported in the summary.
#[derive(Debug, Clone, Serialize)]
struct CallRecord {
    own_id: u16,
    /// The server's id; None if the call never got that far.
    peer_id: Option<u16>,
    /// Result code of OCRP (outgoing) or the one we sent in ICRP (incoming).
    result: Option<u8>,
    gre_sent: u32,
    echoes_received: u32,
    sli_received: u32,
    wen_received: u32,
    cleared: bool,
    /// Result code of the Call-Disconnect-Notify (4 = cleared on request).
    cdn_result: Option<u8>,
}

/// What happened after a malformed message.
#[derive(Debug, Clone, Serialize)]
struct MalformedOutcome {
    kind: Malformed,
    /// "survived" (an Echo-Request after it was answered) or "closed".
    outcome: &'static str,
    detail: String,
}

/// Everything the client prints at the end.
#[derive(Debug, Serialize)]
struct Summary {
    role: &'static str,
    tag: String,
    mode: &'static str,
    server: String,
    local: Option<String>,
    segmentation: String,
    close: Close,
    ok: bool,
    calls: Vec<CallRecord>,
    gre_received: Vec<GreRecord>,
    control_received: Vec<String>,
    malformed: Option<MalformedOutcome>,
    errors: Vec<String>,
}

struct Client<'a> {
    o: &'a ClientOpts,
    tag: String,
    ctl: Option<Control>,
    calls: Vec<CallRecord>,
    malformed: Option<MalformedOutcome>,
    /// Messages that arrived before anyone waited for them (e.g. an ICRQ while
    /// probing after a malformed message); later waits look here first.
    backlog: VecDeque<Msg>,
    /// Messages received, kept here once the connection is gone.
    control_received: Vec<String>,
    /// Problems that do not stop the script but make the run a failure.
    errors: Vec<String>,
}

/// Runs the client script; prints the summary; returns the exit code.
pub fn run(o: ClientOpts) -> i32 {
    let tag = o
        .tag
        .clone()
        .unwrap_or_else(|| format!("pid{}", std::process::id()));
    // Open the raw socket before any call exists so that no echo can be missed.
    let raw = match RawGre::open(o.bind).and_then(|r| {
        r.set_read_timeout(Duration::from_millis(100))?;
        Ok(r)
    }) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("pptp-peer client: cannot open raw GRE socket (needs root/CAP_NET_RAW): {e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Vec::new()));
    let rx = {
        let (raw, stop, received) = (Arc::clone(&raw), Arc::clone(&stop), Arc::clone(&received));
        thread::spawn(move || collect_gre(&raw, &stop, &received))
    };

    let mut c = Client {
        o: &o,
        tag,
        ctl: None,
        calls: Vec::new(),
        malformed: None,
        backlog: VecDeque::new(),
        control_received: Vec::new(),
        errors: Vec::new(),
    };
    let server = SocketAddrV4::new(o.server, o.port);
    let mut local = None;
    let outcome = connect(o.bind, server, Duration::from_secs_f64(o.timeout.max(0.1)))
        .map_err(|e| format!("cannot connect to {server}: {e}"))
        .and_then(|s| {
            local = s.local_addr().ok().map(|a| a.to_string());
            Control::new(s, o.segmentation).map_err(|e| format!("socket setup: {e}"))
        })
        .and_then(|ctl| {
            c.ctl = Some(ctl);
            c.script(&raw)
        });
    if let Err(e) = outcome {
        c.errors.push(e);
    }

    stop.store(true, Ordering::SeqCst);
    let _ = rx.join();
    let gre_received = mem::take(&mut *received.lock().unwrap_or_else(|p| p.into_inner()));
    for call in &mut c.calls {
        let prefix = format!("echo:{}:call{}:", c.tag, call.own_id);
        call.echoes_received = gre_received
            .iter()
            .filter(|r| {
                r.is_pptp() && r.call_id == Some(call.own_id) && r.payload.starts_with(&prefix)
            })
            .count() as u32;
        if o.require_echoes && call.echoes_received < call.gre_sent {
            c.errors.push(format!(
                "call {}: {} of {} GRE echoes received",
                call.own_id, call.echoes_received, call.gre_sent
            ));
        }
    }
    let summary = Summary {
        role: "client",
        tag: c.tag.clone(),
        mode: if o.incoming { "incoming" } else { "outgoing" },
        server: server.to_string(),
        local,
        segmentation: o.segmentation.to_string(),
        close: o.close,
        ok: c.errors.is_empty(),
        calls: c.calls,
        gre_received,
        control_received: match c.ctl {
            Some(ctl) => ctl.received,
            None => c.control_received,
        },
        malformed: c.malformed,
        errors: c.errors,
    };
    match serde_json::to_string(&summary) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("pptp-peer client: cannot serialise summary: {e}");
            return 1;
        }
    }
    if summary.ok {
        0
    } else {
        eprintln!("pptp-peer client: FAILED: {}", summary.errors.join("; "));
        1
    }
}

fn collect_gre(raw: &RawGre, stop: &AtomicBool, out: &Mutex<Vec<GreRecord>>) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match raw.recv(&mut buf) {
            Ok(n) => {
                if let Some(rec) = gre::parse_ip(&buf[..n]) {
                    log::debug!(
                        "GRE from {} call id {:?}: {}",
                        rec.from,
                        rec.call_id,
                        rec.payload
                    );
                    out.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
                }
            }
            Err(e) if gre::is_timeout(&e) => {}
            Err(e) => {
                log::error!("GRE receive failed: {e}");
                return;
            }
        }
    }
}

impl Client<'_> {
    fn ctl(&mut self) -> Result<&mut Control, String> {
        self.ctl
            .as_mut()
            .ok_or_else(|| "control connection already closed".to_string())
    }

    fn step_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.o.timeout.max(0.1))
    }

    fn send(&mut self, msgs: &[Vec<u8>]) -> Result<(), String> {
        let names: Vec<String> = msgs
            .iter()
            .map(|m| msg::type_name(msg::ctype_of(m)))
            .collect();
        self.ctl()?
            .send_step(msgs)
            .map_err(|e| format!("sending {}: {e}", names.join("+")))
    }

    /// The whole protocol run; `Err` ends it early with that error.
    fn script(&mut self, raw: &RawGre) -> Result<(), String> {
        let host = format!("pptp-peer-{}", self.tag);
        let sccrq = msg::sccrq(&host);
        match self.o.malformed {
            Some(kind) if self.o.segmentation == Segmentation::Coalesce => {
                self.send(&[sccrq, msg::malformed(kind)])?
            }
            Some(kind) => {
                self.send(&[sccrq])?;
                self.send(&[msg::malformed(kind)])?;
            }
            None => self.send(&[sccrq])?,
        }
        let sccrp = self.wait_for("SCCRP", |m| m.ctype == ty::SCCRP);
        if let Some(kind) = self.o.malformed {
            if !self.probe_after_malformed(kind, sccrp.as_ref().err())? {
                return Ok(());
            }
        }
        let sccrp = sccrp?;
        let result = sccrp.u8_at(msg::off::SCCRP_RESULT);
        if result != 1 {
            return Err(format!("SCCRP result {result}"));
        }

        if self.o.incoming {
            self.accept_incoming()?;
        } else {
            self.place_outgoing()?;
        }
        let slis: Vec<Vec<u8>> = self
            .calls
            .iter()
            .filter_map(|c| c.peer_id)
            .map(msg::sli)
            .collect();
        if !slis.is_empty() {
            self.send(&slis)?;
        }

        self.send_gre(raw);
        self.idle(Instant::now() + Duration::from_secs_f64(self.o.hold.max(0.0)))?;
        if let Some(max) = self.o.until_signal {
            self.hold_until_signal(Duration::from_secs_f64(max.max(0.0)))?;
        }
        self.close()
    }

    /// After a malformed message: returns whether the script should go on.
    fn probe_after_malformed(
        &mut self,
        kind: Malformed,
        sccrp_err: Option<&String>,
    ) -> Result<bool, String> {
        let probe = match sccrp_err {
            Some(e) => Err(e.clone()),
            None => self
                .send(&[msg::echo_request(PROBE_ECHO_ID)])
                .and_then(|()| {
                    self.wait_for("Echo-Reply to the probe", |m| {
                        m.ctype == ty::ECHO_RP && m.u32_at(msg::off::ECHO_ID) == PROBE_ECHO_ID
                    })
                })
                .map(|_| ()),
        };
        let (outcome, detail) = match probe {
            Ok(()) => ("survived", "probe Echo-Request answered".to_string()),
            Err(e) if e.starts_with("timed out") => return Err(e),
            Err(e) => ("closed", e),
        };
        log::info!("after malformed {kind:?}: connection {outcome} ({detail})");
        self.malformed = Some(MalformedOutcome {
            kind,
            outcome,
            detail,
        });
        Ok(outcome == "survived")
    }

    fn place_outgoing(&mut self) -> Result<(), String> {
        let ids: Vec<u16> = (0..self.o.calls)
            .map(|i| self.o.call_id.wrapping_add(i))
            .collect();
        for &id in &ids {
            self.calls.push(new_call(id));
        }
        let phone = "5550199";
        if self.o.segmentation == Segmentation::Coalesce {
            // An Echo-Request up front so the segment holds several messages even for one call.
            let mut step = vec![msg::echo_request(1)];
            step.extend(ids.iter().map(|&id| msg::ocrq(id, id, phone)));
            self.send(&step)?;
            for &id in &ids {
                self.await_ocrp(id)?;
            }
        } else {
            // Replies are awaited in request order; one arriving early waits
            // in the backlog.
            let window = usize::from(self.o.window);
            let mut sent = 0;
            for (done, &id) in ids.iter().enumerate() {
                while sent < ids.len() && sent - done < window {
                    self.send(&[msg::ocrq(ids[sent], ids[sent], phone)])?;
                    sent += 1;
                }
                self.await_ocrp(id)?;
            }
        }
        Ok(())
    }

    fn await_ocrp(&mut self, own: u16) -> Result<(), String> {
        let m = self.wait_for(&format!("OCRP for call {own}"), |m| {
            m.ctype == ty::OCRP && m.u16_at(msg::off::PEER_CALL_ID) == own
        })?;
        let peer = m.u16_at(msg::off::CALL_ID);
        let result = m.u8_at(msg::off::CALL_RESULT);
        log::info!("call {own}: OCRP server id {peer} result {result}");
        if let Some(c) = self.calls.iter_mut().find(|c| c.own_id == own) {
            c.result = Some(result);
            if result == 1 {
                c.peer_id = Some(peer);
            }
        }
        if result != 1 {
            self.errors
                .push(format!("call {own}: OCRP result {result}"));
        }
        Ok(())
    }

    fn accept_incoming(&mut self) -> Result<(), String> {
        for i in 0..self.o.calls {
            let own = self.o.call_id.wrapping_add(i);
            let icrq = self.wait_for("ICRQ", |m| m.ctype == ty::ICRQ)?;
            let peer = icrq.u16_at(msg::off::CALL_ID);
            log::info!("incoming call from server id {peer}, answering as {own}");
            let mut call = new_call(own);
            call.peer_id = Some(peer);
            call.result = Some(1);
            self.calls.push(call);
            self.send(&[msg::icrp(own, peer, 1)])?;
            let iccn = self.wait_for(&format!("ICCN for call {own}"), |m| m.ctype == ty::ICCN)?;
            let named = iccn.u16_at(msg::off::CALL_ID);
            if named != own {
                self.errors
                    .push(format!("ICCN names call {named}, expected {own}"));
            }
        }
        Ok(())
    }

    fn send_gre(&mut self, raw: &RawGre) {
        let to = self.o.server;
        for i in 0..self.calls.len() {
            let (own, Some(peer)) = (self.calls[i].own_id, self.calls[i].peer_id) else {
                continue;
            };
            for seq in 0..self.o.gre_count {
                let payload = format!("{}:call{own}:{seq}", self.tag);
                let pkt = gre::build(&GreOut {
                    version: 1,
                    protocol: gre::PROTO_PPP,
                    call_id: peer,
                    seq: Some(seq),
                    ack: None,
                    payload: payload.as_bytes(),
                });
                match raw.send_to(&pkt, to) {
                    Ok(()) => self.calls[i].gre_sent += 1,
                    Err(e) => self
                        .errors
                        .push(format!("call {own}: GRE send failed: {e}")),
                }
                // Spread packets a little so a queueing ALG sees them one by one.
                thread::sleep(Duration::from_secs_f64(self.o.gre_gap_ms.max(0.0) / 1000.0));
            }
        }
    }

    /// Holds the calls until SIGUSR1 or `max` has passed; `max` passing is an
    /// error, since whoever asked for the signal did not send it.
    fn hold_until_signal(&mut self, max: Duration) -> Result<(), String> {
        let usr1 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
            .map_err(|e| format!("cannot install SIGUSR1 handler: {e}"))?;
        let up = self.calls.iter().filter(|c| c.peer_id.is_some()).count();
        // Printed unconditionally (not through the logger): tests wait for this line.
        eprintln!("pptp-peer client: {up} calls up; holding calls until SIGUSR1");
        let deadline = Instant::now() + max;
        while !usr1.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return Err(format!("no SIGUSR1 within {max:?}"));
            }
            self.idle(Instant::now() + Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Answers whatever the server sends until `until`.
    fn idle(&mut self, until: Instant) -> Result<(), String> {
        loop {
            match self.ctl()?.recv_until(until) {
                Ok(None) => return Ok(()),
                Ok(Some(m)) => {
                    if !self.background(&m)? {
                        log::info!("keeping {} for later while holding", m.name());
                        self.backlog.push_back(m);
                    }
                }
                Err(e) => return Err(format!("{e} while holding the calls")),
            }
        }
    }

    fn close(&mut self) -> Result<(), String> {
        match self.o.close {
            Close::Clear => {
                let live: Vec<(u16, u16)> = self
                    .calls
                    .iter()
                    .filter_map(|c| c.peer_id.map(|p| (c.own_id, p)))
                    .collect();
                let step: Vec<Vec<u8>> = live.iter().map(|&(own, _)| msg::ccrq(own)).collect();
                if !step.is_empty() {
                    self.send(&step)?;
                }
                for _ in &live {
                    // Either meaning of CDN's Call ID is in use (design.md); accept both.
                    let m = self.wait_for("CDN", |m| {
                        m.ctype == ty::CDN && {
                            let id = m.u16_at(msg::off::CALL_ID);
                            live.iter().any(|&(own, peer)| id == own || id == peer)
                        }
                    })?;
                    let id = m.u16_at(msg::off::CALL_ID);
                    let result = m.u8_at(msg::off::CDN_RESULT);
                    if let Some(c) = self
                        .calls
                        .iter_mut()
                        .find(|c| !c.cleared && (c.own_id == id || c.peer_id == Some(id)))
                    {
                        c.cleared = true;
                        c.cdn_result = Some(result);
                    }
                }
                self.shutdown();
            }
            Close::Stop => {
                self.send(&[msg::stop_ccrq(1)])?;
                let m = self.wait_for("StopCCRP", |m| m.ctype == ty::STOP_CCRP)?;
                let result = m.u8_at(msg::off::STOP_RESULT);
                if result != 1 {
                    self.errors.push(format!("StopCCRP result {result}"));
                }
                for c in &mut self.calls {
                    c.cleared = c.peer_id.is_some();
                }
                self.shutdown();
            }
            Close::Fin => self.shutdown(),
            Close::Rst => {
                if let Some(ctl) = self.ctl.take() {
                    if let Err(e) = set_linger_zero(&ctl.stream) {
                        self.errors.push(format!("SO_LINGER: {e}"));
                    }
                    self.control_received = ctl.received;
                    // Dropping the only descriptor with linger 0 is what sends the RST.
                    drop(ctl.stream);
                }
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        if let Some(ctl) = &self.ctl {
            let _ = ctl.stream.shutdown(Shutdown::Both);
        }
    }

    /// Handles messages that may arrive at any time; true if `m` was one of them.
    fn background(&mut self, m: &Msg) -> Result<bool, String> {
        match m.ctype {
            ty::ECHO_RQ => {
                self.send(&[msg::echo_reply(m.u32_at(msg::off::ECHO_ID), 1)])?;
                Ok(true)
            }
            ty::SLI | ty::WEN => {
                let named = m.u16_at(msg::off::CALL_ID);
                match self.calls.iter_mut().find(|c| c.own_id == named) {
                    Some(c) if m.ctype == ty::SLI => c.sli_received += 1,
                    Some(c) => c.wen_received += 1,
                    None => self
                        .errors
                        .push(format!("{} names unknown call {named}", m.name())),
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reads until a message satisfies `want`, handling background traffic meanwhile.
    fn wait_for(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Result<Msg, String> {
        if let Some(i) = self.backlog.iter().position(&want) {
            if let Some(m) = self.backlog.remove(i) {
                return Ok(m);
            }
        }
        let deadline = Instant::now() + self.step_timeout();
        loop {
            match self.ctl()?.recv_until(deadline) {
                Ok(Some(m)) if want(&m) => return Ok(m),
                Ok(Some(m)) => {
                    if !self.background(&m)? {
                        log::info!("keeping {} for later while waiting for {what}", m.name());
                        self.backlog.push_back(m);
                    }
                }
                Ok(None) => return Err(format!("timed out waiting for {what}")),
                Err(RecvError::Frame(e)) => {
                    return Err(format!(
                        "malformed message from server ({e}) while waiting for {what}"
                    ))
                }
                Err(e) => return Err(format!("{e} while waiting for {what}")),
            }
        }
    }
}

fn new_call(own_id: u16) -> CallRecord {
    CallRecord {
        own_id,
        peer_id: None,
        result: None,
        gre_sent: 0,
        echoes_received: 0,
        sli_received: 0,
        wen_received: 0,
        cleared: false,
        cdn_result: None,
    }
}

/// Connects, from `bind` if given (std cannot bind before connecting).
fn connect(
    bind: Option<Ipv4Addr>,
    server: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect_timeout(&SocketAddr::V4(server), timeout);
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = TcpStream::from(fd);
    // Linux bounds a blocking connect() by the send timeout.
    stream.set_write_timeout(Some(timeout))?;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let sa_local = sockaddr_in(SocketAddrV4::new(local, 0));
    let sa_server = sockaddr_in(server);
    let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: both sockaddrs are valid sockaddr_in values of the given length.
    check(unsafe {
        libc::bind(
            stream.as_raw_fd(),
            &sa_local as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    // SAFETY: as above.
    check(unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &sa_server as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    Ok(stream)
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: l is a valid linger struct and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

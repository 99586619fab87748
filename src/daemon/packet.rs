//! The packet thread, in quinn-proto's calling pattern: receive a packet,
//! `handle` it in the engine, drain `poll_event` (journal, log, fast path),
//! give the verdict; run `handle_timeout` when `poll_timeout` is due.
//!
//! Owns the queue sockets, the wake-up socket, the journal writer, the
//! [`Offload`] controller and, in a router pair, the [`Ha`] shell: the
//! engine's events of this node's calls go to it, the peer's calls it
//! gives are applied to the engine, and their events take the same way
//! as any call's (journal, log, fast path) but never back to the peer. It
//! must not decide anything about packets (the engine does) nor touch
//! nftables itself (the controller does).
//!
//! Waiting. nfq 0.2.5 has no descriptor accessor, so a blocking `recv`
//! could not be interrupted for timers or shutdown. The queue socket is
//! non-blocking instead, and the thread waits in `poll(2)` on the queue
//! sockets (found by [`NfQueue::poll_fd`]), a wake-up socket the main
//! thread writes to on shutdown and, in a pair, the replication and route
//! sockets (read at every wake-up, so a packet load that never lets the
//! thread wait does not starve them). The timeout is the next engine
//! timer, fast-path counter poll, replication timer or watchdog ping, so an
//! idle daemon sleeps and a busy one never waits. Should the queue's
//! descriptor not be identifiable, the thread polls the wake-up socket
//! with a 1 ms timeout and tries the queue after each: slower to react,
//! never stuck.
//!
//! Cost per packet. The hot path is measured in instructions
//! (`benches/callgrind.sh`), so the loop reads the clock once per wake-up
//! and gives that time to every packet of the batch (the engine counts in
//! seconds), runs timers only when one is due, polls only once the queue
//! is empty, reads the wake-up socket only when poll says it is readable,
//! and rewrites GRE in the receive buffer instead of a copy.

use super::ha::Ha;
use super::journal;
use super::logging::RateLimit;
use super::offload::{Offload, OffloadConfig};
use super::shared::{lock, Shared, SharedRef};
use crate::alg::{CallInfo, Direction, Event, Verdict};
use crate::nfqueue::{Action, NfQueue, Packet};
use crate::wire::ipv4::{self, PROTO_GRE};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets served between checks of timers and the stop flag.
const BATCH: usize = 256;
/// GRE packets served between two looks at the control queues. Control
/// segments come first: under a GRE flood one waits for at most this many
/// GRE packets (a few microseconds each), not for the flood.
const GRE_SLICE: usize = 16;
/// Longest sleep, so the stop flag is seen even if a wake-up is lost.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Sleep between attempts when the queue's descriptor is unknown.
const FALLBACK_SLEEP: Duration = Duration::from_millis(1);
/// Consecutive receive errors after which the thread gives up.
const MAX_RECV_ERRORS: u32 = 1000;
/// After the rules are gone, how long to keep listening for packets the
/// kernel queued just before (CPUs still inside the old rules).
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// What the packet thread needs to know.
#[derive(Debug)]
pub struct LoopConfig {
    /// The queue carrying packets sent by inside hosts; the other queue
    /// carries packets to inside hosts.
    pub queue_from_inside: u16,
    /// Mark for translated GRE to inside hosts.
    pub mark: u32,
    /// The bits of the packet mark that are pptp-alg's (`mark_mask`).
    pub mark_mask: u32,
    /// The fast path and the daemon's table.
    pub offload: OffloadConfig,
    /// The write-ahead journal of call changes; `None` without a state file.
    pub journal: Option<JournalConfig>,
    /// The events of the calls restored at start: acted on (fast path,
    /// log) before the first packet, but not journaled, since the snapshot
    /// written at start holds those calls.
    pub restored: Vec<Event>,
    /// The other node of a router pair, if this is one.
    pub ha: Option<Ha>,
}

/// Where a batch of engine events comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Calls restored at start: the snapshot written at start holds them,
    /// so they are not journaled; the peer learns them.
    Restored,
    /// This node's packets and timers: journaled, and sent to the peer.
    Local,
    /// The peer's calls, replicated: journaled, never sent back.
    Peer,
}

/// Where and how the packet thread journals call changes.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The state file the journal continues.
    pub state_file: std::path::PathBuf,
    /// The generation of the snapshot written at start.
    pub generation: u64,
    /// Bounds the journal (see [`journal::size_limit`]).
    pub max_calls: usize,
    /// Asks the main thread for a snapshot when a generation grows large.
    pub ask_snapshot: journal::SnapshotRequest,
}

/// The packet thread's state.
pub struct PacketLoop {
    queue_from_inside: u16,
    mark: u32,
    mark_mask: u32,
    restored: Vec<Event>,
    /// The control queues (from and to inside hosts) on one socket.
    queue: NfQueue,
    /// The GRE queue on a socket of its own: when a GRE flood fills that
    /// socket's buffer or queue, the kernel drops GRE only (fail-closed),
    /// never a control segment, which shares neither.
    gre_queue: NfQueue,
    shared: SharedRef,
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    offload: Offload,
    /// Copy of a control packet under translation: the engine rewrites in
    /// place, and only a rewritten packet is sent back (sending back costs
    /// a copy into the verdict message, and most control segments, the
    /// bare ACKs, pass unchanged). GRE is rewritten where it was received:
    /// nearly every queued GRE packet is translated.
    scratch: Vec<u8>,
    /// When the next timer is due (engine sweep, fast path, watchdog).
    next_timer: Instant,
    events: Vec<Event>,
    /// The journal generation `events` were drained in.
    events_gen: u64,
    journal: Option<journal::Writer>,
    warn_journal: RateLimit,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    warn_refused: RateLimit,
    warn_desync: RateLimit,
    warn_io: RateLimit,
    /// Set when the engine panicked: the thread stops after the verdict.
    fatal: Option<String>,
    /// The replication with the other node of a pair.
    ha: Option<Ha>,
}

impl std::fmt::Debug for PacketLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLoop")
            .field("queue", &self.queue)
            .field("gre_queue", &self.gre_queue)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

impl PacketLoop {
    /// Prepares the loop; nothing runs until [`PacketLoop::run`]. `wake`
    /// must be non-blocking.
    pub fn new(
        cfg: LoopConfig,
        queue: NfQueue,
        gre_queue: NfQueue,
        shared: SharedRef,
        stop: Arc<AtomicBool>,
        wake: UnixStream,
    ) -> Self {
        let now = Instant::now();
        let journal = cfg
            .journal
            .map(|j| journal::Writer::new(j.state_file, j.generation, j.max_calls, j.ask_snapshot));
        PacketLoop {
            queue_from_inside: cfg.queue_from_inside,
            mark: cfg.mark,
            mark_mask: cfg.mark_mask,
            restored: cfg.restored,
            journal,
            events_gen: 0,
            warn_journal: RateLimit::new(Duration::from_secs(60), 1),
            queue,
            gre_queue,
            shared,
            stop,
            wake,
            offload: Offload::new(cfg.offload, now),
            scratch: vec![0; usize::from(u16::MAX) + 1],
            next_timer: now,
            events: Vec::with_capacity(64),
            watchdog: sd_notify::watchdog_enabled().map(|d| d / 2),
            next_watchdog: now,
            warn_refused: RateLimit::new(Duration::from_secs(60), 20),
            warn_desync: RateLimit::new(Duration::from_secs(60), 20),
            warn_io: RateLimit::new(Duration::from_secs(60), 10),
            fatal: None,
            ha: cfg.ha,
        }
    }

    /// Opens the kernel fast path (see [`Offload::start`]); returns whether
    /// it is active.
    pub fn start_fast_path(&mut self) -> bool {
        self.offload.start(&self.shared)
    }

    /// Serves packets until the stop flag is set. Returns an error when the
    /// thread cannot go on.
    pub fn run(&mut self) -> Result<(), String> {
        // After the fast path was flushed, before any packet.
        if !self.restored.is_empty() {
            self.events = std::mem::take(&mut self.restored);
            self.handle_events(Instant::now(), Origin::Restored);
        }
        let mut recv_errors = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            // At every wake-up, also under a load that never lets the
            // thread wait: the peer's messages must not starve.
            if self.ha.is_some() {
                self.ha_step(now);
            }
            if now >= self.next_timer {
                self.handle_timeout(now);
                self.next_timer = self.poll_timeout(now);
            }
            let served = self.serve(BATCH, now);
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
            match served {
                // A full batch: more are probably waiting, so no poll.
                Ok(BATCH) => {
                    recv_errors = 0;
                    continue;
                }
                Ok(_) => recv_errors = 0,
                Err(e) => {
                    recv_errors += 1;
                    if recv_errors >= MAX_RECV_ERRORS {
                        return Err(format!(
                            "{recv_errors} consecutive errors receiving from the queue, last: {e}"
                        ));
                    }
                }
            }
            // The records of this batch's calls in as few datagrams as
            // they fit, before the thread may sleep.
            if let Some(ha) = &mut self.ha {
                ha.transmit(now);
            }
            if self.wait(self.next_timer, now) {
                self.drain_wake();
            }
        }
        Ok(())
    }

    /// Removes the daemon's table so nothing new is queued, gives every
    /// packet still queued a verdict, then empties the fast path and
    /// unbinds.
    pub fn shutdown(&mut self) {
        self.offload.remove_table();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut quiet_since = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.serve(BATCH, now) {
                Ok(0) | Err(_) => {
                    if quiet_since.elapsed() >= DRAIN_GRACE {
                        break;
                    }
                    self.wait(now + Duration::from_millis(5), now);
                }
                Ok(_) => quiet_since = Instant::now(),
            }
        }
        self.offload.shutdown();
        self.queue.unbind_all();
        self.gre_queue.unbind_all();
    }

    /// Serves up to `max` packets, all at time `now`; returns how many.
    /// Control segments first: every waiting one, then at most
    /// [`GRE_SLICE`] GRE packets, then the control queues again. Returns
    /// less than `max` only when both sockets were found empty.
    fn serve(&mut self, max: usize, now: Instant) -> io::Result<usize> {
        let mut n = 0;
        loop {
            n += self.serve_queue(false, max - n, now)?;
            if n >= max || self.fatal.is_some() {
                return Ok(n);
            }
            let g = self.serve_queue(true, GRE_SLICE.min(max - n), now)?;
            n += g;
            if g == 0 || n >= max || self.fatal.is_some() {
                return Ok(n);
            }
        }
    }

    /// Serves up to `max` packets of the GRE queue (`gre`) or the control
    /// queues; returns how many.
    fn serve_queue(&mut self, gre: bool, max: usize, now: Instant) -> io::Result<usize> {
        for n in 0..max {
            let q = if gre {
                &mut self.gre_queue
            } else {
                &mut self.queue
            };
            let pkt = match q.try_recv() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(n),
                Err(e) => {
                    lock(&self.shared).recv_errors += 1;
                    if let (true, _) = self.warn_io.allow(now) {
                        log::warn!(
                            "receiving from the {} queue: {e}",
                            if gre { "GRE" } else { "control" }
                        );
                    }
                    return Err(e);
                }
            };
            self.packet(pkt, gre, now);
            if self.fatal.is_some() {
                return Ok(n + 1);
            }
        }
        Ok(max)
    }

    /// One packet: receive, `handle`, drain the events, verdict. The
    /// verdict is given on every path, including a panic in the engine
    /// (the error then stops the daemon).
    // Inlined so the (large) nfq message is not copied into the call.
    #[inline(always)]
    fn packet(&mut self, mut pkt: Packet, from_gre_queue: bool, now: Instant) {
        let dir = if pkt.queue() == self.queue_from_inside {
            Direction::FromInside
        } else {
            Direction::ToInside
        };
        let gre = ipv4::peek_protocol(pkt.payload()) == Some(PROTO_GRE);
        let len = if gre {
            0
        } else {
            // `scratch` holds 65536 bytes and the copy range is 65535.
            let len = pkt.payload().len().min(self.scratch.len());
            self.scratch[..len].copy_from_slice(&pkt.payload()[..len]);
            len
        };
        let buf = if gre {
            pkt.payload_mut()
        } else {
            &mut self.scratch[..len]
        };
        let verdict = {
            let mut s = lock(&self.shared);
            let alg = &mut s.alg;
            let r = catch_unwind(AssertUnwindSafe(|| alg.handle(now, buf, dir)));
            // The first packet of a call arms the engine's sweep timer.
            take_engine_events(
                &mut s,
                &mut self.events,
                &mut self.events_gen,
                &mut self.next_timer,
            );
            r
        };
        let Ok(verdict) = verdict else {
            let _ = self.queue_of(from_gre_queue).verdict(pkt, Action::Accept);
            self.fatal = Some("the engine panicked (see above)".into());
            return;
        };
        // Events before the verdict: a call's journal record is written
        // and its fast path element in place before the message that
        // carries its NAT id (or starts its GRE) leaves.
        if !self.events.is_empty() {
            self.handle_events(now, Origin::Local);
        }
        // Reads the clock only while records wait.
        if let Some(ha) = &mut self.ha {
            ha.transmit_if_due();
        }
        let action = match verdict {
            Verdict::Accept | Verdict::UnknownCall => Action::Accept,
            Verdict::Drop(_) => Action::Drop,
            Verdict::Modified if gre => {
                if dir == Direction::ToInside {
                    // Only pptp-alg's bits: the others keep what the packet carried.
                    pkt.set_mark(pkt.mark() & !self.mark_mask | self.mark);
                }
                Action::Accept
            }
            Verdict::Modified => Action::AcceptModified(&self.scratch[..len]),
        };
        // The verdict goes back on the socket the packet came from.
        let queue = if from_gre_queue {
            &mut self.gre_queue
        } else {
            &mut self.queue
        };
        if let Err(e) = queue.verdict(pkt, action) {
            lock(&self.shared).verdict_errors += 1;
            if let (true, _) = self.warn_io.allow(now) {
                log::warn!("sending a verdict: {e}");
            }
        }
    }

    /// The GRE queue's socket or the control queues' one.
    fn queue_of(&mut self, gre: bool) -> &mut NfQueue {
        if gre {
            &mut self.gre_queue
        } else {
            &mut self.queue
        }
    }

    /// Runs every timer that is due: the engine's (and the events it
    /// raises outside a packet), the fast path's, the watchdog.
    fn handle_timeout(&mut self, now: Instant) {
        {
            let mut s = lock(&self.shared);
            if s.alg.poll_timeout().is_some_and(|t| t <= now) {
                s.alg.handle_timeout(now);
            }
            while let Some(ev) = s.alg.poll_event() {
                self.events.push(ev);
            }
            self.events_gen = s.journal_gen;
        }
        self.handle_events(now, Origin::Local);
        if let Some(ha) = &mut self.ha {
            ha.handle_timeout(now);
            self.ha_step(now);
        }
        self.offload.handle_timeout(now, &self.shared);
        if let Some(every) = self.watchdog {
            if now >= self.next_watchdog {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                self.next_watchdog = now + every;
            }
        }
    }

    /// When [`PacketLoop::handle_timeout`] should run next: the earliest
    /// timer, and at most [`MAX_SLEEP`] from `now`.
    fn poll_timeout(&self, now: Instant) -> Instant {
        let mut t = now + MAX_SLEEP;
        if let Some(alg) = lock(&self.shared).alg.poll_timeout() {
            t = t.min(alg);
        }
        if let Some(fast) = self.offload.poll_timeout() {
            t = t.min(fast);
        }
        if let Some(ha) = &self.ha {
            t = t.min(ha.poll_timeout());
        }
        if self.watchdog.is_some() {
            t = t.min(self.next_watchdog);
        }
        t
    }

    /// Sleeps until the queue or the wake-up socket is readable, or `until`
    /// (`now` is the time of this wake-up). Returns whether the wake-up
    /// socket is readable.
    fn wait(&self, until: Instant, now: Instant) -> bool {
        let timeout = until.saturating_duration_since(now);
        let queue_fd: Option<RawFd> = self.queue.poll_fd().map(|fd| fd.as_raw_fd());
        let gre_fd: Option<RawFd> = self.gre_queue.poll_fd().map(|fd| fd.as_raw_fd());
        let timeout = if queue_fd.is_some() && gre_fd.is_some() {
            timeout
        } else {
            timeout.min(FALLBACK_SLEEP)
        };
        // The replication's sockets wake the thread; the loop reads them at
        // every wake-up.
        let [udp_fd, route_fd] = self.ha.as_ref().map_or([None, None], Ha::fds);
        let fds = [
            Some(self.wake.as_raw_fd()),
            queue_fd,
            gre_fd,
            udp_fd,
            route_fd,
        ];
        // A failed or interrupted wait is an early wake-up with nothing to read.
        matches!(crate::netlink::readable(fds, timeout), Ok([true, ..]))
    }

    /// The replication's turn: reads the peer's messages and address
    /// changes, applies the peer's call changes to the engine (their
    /// events then go to the fast path and the journal as any call's),
    /// keeps the peer's calls from timing out here, sends what is due, and
    /// publishes the pair's state for `pptp-alg status`.
    fn ha_step(&mut self, now: Instant) {
        let Some(mut ha) = self.ha.take() else { return };
        ha.receive(now);
        {
            let mut s = lock(&self.shared);
            while let Some(call) = ha.poll_apply() {
                s.alg.apply_replicated(now, &call);
            }
            ha.refresh(now, &mut s.alg);
            take_engine_events(
                &mut s,
                &mut self.events,
                &mut self.events_gen,
                &mut self.next_timer,
            );
        }
        ha.transmit(now);
        if let Some(r) = ha.take_report(now) {
            lock(&self.shared).ha = Some((r, now));
        }
        self.next_timer = self.next_timer.min(ha.poll_timeout());
        self.ha = Some(ha);
        if !self.events.is_empty() {
            self.handle_events(now, Origin::Peer);
        }
    }

    fn drain_wake(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Appends the call changes among the events to the journal, in one
    /// write. A failure is counted and logged (once a minute) and changes
    /// nothing else: the packet still gets its verdict, and the next
    /// snapshot holds the call.
    fn journal_events(&mut self, now: Instant) {
        let Some(w) = &mut self.journal else { return };
        match w.append(self.events_gen, &self.events, super::state::unix_now()) {
            Ok(0) => {}
            // One more lock, only for packets that change calls.
            Ok(n) => lock(&self.shared).journal_records += n as u64,
            Err(e) => {
                lock(&self.shared).journal_errors += 1;
                let (ok, suppressed) = self.warn_journal.allow(now);
                if ok {
                    log::warn!(
                        "journal: cannot write call changes ({e}); calls that start or end \
                         now are lost if the daemon dies before the next snapshot \
                         (counted as journal_errors){}",
                        if suppressed > 0 {
                            format!("; {suppressed} more failures not logged")
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }

    /// Journals the call changes (unless restored), records this node's for
    /// the peer of a pair (sent once per batch of packets), logs events and
    /// keeps the fast path in step with the call table.
    fn handle_events(&mut self, now: Instant, origin: Origin) {
        if origin != Origin::Restored && !self.events.is_empty() {
            self.journal_events(now);
        }
        // The peer's calls are told apart in the log.
        let whose = if origin == Origin::Peer {
            "peer's call"
        } else {
            "call"
        };
        let mut events = std::mem::take(&mut self.events);
        if origin != Origin::Peer {
            if let Some(ha) = &mut self.ha {
                for ev in &events {
                    ha.record(now, ev);
                }
            }
        }
        let mut next = 0;
        while next < events.len() {
            // A run of call ends shares its round trips to the kernel.
            let ends: Vec<&CallInfo> = events[next..]
                .iter()
                .map_while(|ev| match ev {
                    Event::CallEnded(c, _) => Some(c),
                    _ => None,
                })
                .collect();
            if !ends.is_empty() {
                let run = &events[next..next + ends.len()];
                let counts = self.offload.calls_ended(&ends, now, &self.shared);
                for (ev, (kernel_in, kernel_out)) in run.iter().zip(counts) {
                    if let Event::CallEnded(c, cause) = ev {
                        log::info!(
                            "{whose} ended ({cause:?}): inside {}:{} <-> outside {}:{} NAT id {}, after {}, {} packets in, {} out",
                            c.inside_host,
                            c.inside_id,
                            c.outside_peer,
                            c.outside_id.map_or_else(|| "-".into(), |id| id.to_string()),
                            c.nat_id,
                            super::status::human_duration(c.age.as_secs()),
                            c.packets_in + kernel_in,
                            c.packets_out + kernel_out,
                        );
                    }
                }
                next += ends.len();
                continue;
            }
            let ev = &events[next];
            next += 1;
            match ev {
                Event::CallStarted(c) => {
                    log::info!(
                        "{whose} started: inside {}:{} <-> outside {} as NAT id {} ({})",
                        c.inside_host,
                        c.inside_id,
                        c.outside_peer,
                        c.nat_id,
                        c.conn.map_or_else(
                            || "no control connection".into(),
                            |k| format!("control {k}")
                        ),
                    );
                    self.offload.call_started(c, now, &self.shared);
                    // A failed add is retried on a timer that may be the earliest.
                    if let Some(t) = self.offload.poll_timeout() {
                        if t < self.next_timer {
                            self.next_timer = t;
                        }
                    }
                }
                Event::CallAnswered(c) => {
                    log::debug!(
                        "{whose} answered: inside {}:{} <-> outside {}:{} NAT id {}",
                        c.inside_host,
                        c.inside_id,
                        c.outside_peer,
                        c.outside_id.map_or_else(|| "-".into(), |id| id.to_string()),
                        c.nat_id,
                    );
                    self.offload.call_answered(c, now, &self.shared);
                }
                // Handled with the run of ends it begins, above.
                Event::CallEnded(..) => {}
                Event::CallRefused {
                    conn,
                    inside_id,
                    reason,
                    host_calls,
                    live_ids,
                    quarantined_ids,
                } => {
                    let (ok, suppressed) = self.warn_refused.allow(now);
                    if suppressed > 0 {
                        log::warn!("{suppressed} more refused calls not logged");
                    }
                    if ok {
                        log::warn!(
                            "call refused ({reason:?}): inside id {inside_id:#06x} on control {conn}; \
                             host {} holds {host_calls} calls; NAT ids towards {}: {live_ids} live, \
                             {quarantined_ids} in quarantine",
                            conn.inside.ip(),
                            conn.outside.ip(),
                        );
                    }
                }
                Event::ConnectionRefused { conn } => {
                    let (ok, suppressed) = self.warn_refused.allow(now);
                    if suppressed > 0 {
                        log::warn!("{suppressed} more refused calls or connections not logged");
                    }
                    if ok {
                        log::warn!(
                            "control connection {conn} refused: every tracked connection has calls \
                             (max_connections); its segments are dropped until one ends"
                        );
                    }
                }
                Event::Desync {
                    conn,
                    direction,
                    error,
                } => {
                    let (ok, suppressed) = self.warn_desync.allow(now);
                    if suppressed > 0 {
                        log::warn!("{suppressed} more desyncs not logged");
                    }
                    if ok {
                        log::warn!(
                            "control {conn} no longer translated: {direction:?} stream lost PPTP framing: {error}"
                        );
                    }
                }
            }
        }
        // Its allocation serves the next packets' events.
        events.clear();
        self.events = events;
    }
}

/// Moves the engine's events to `events` (with the journal generation they
/// belong to) and brings `next_timer` forward to the engine's next timer.
fn take_engine_events(
    s: &mut Shared,
    events: &mut Vec<Event>,
    events_gen: &mut u64,
    next_timer: &mut Instant,
) {
    while let Some(ev) = s.alg.poll_event() {
        events.push(ev);
    }
    *events_gen = s.journal_gen;
    if let Some(t) = s.alg.poll_timeout() {
        if t < *next_timer {
            *next_timer = t;
        }
    }
}

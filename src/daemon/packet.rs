//! The packet thread: receives from NFQUEUE, runs the engine, acts on its
//! events, gives every packet its verdict, runs timers.
//!
//! Waiting. nfq 0.2.5 has no descriptor accessor, so a blocking `recv`
//! could not be interrupted for timers or shutdown. The queue socket is
//! non-blocking instead, and the thread waits in `poll(2)` on two
//! descriptors: the queue socket (found by [`NfQueue::poll_fd`]) and a
//! wake-up socket the main thread writes to on shutdown. The timeout is
//! the next engine timer, fast-path counter poll or watchdog ping, so an
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

use super::addrs::ResyncHandle;
use super::journal;
use super::logging::RateLimit;
use super::shared::{lock, SharedRef};
use crate::alg::{Direction, Event, Verdict};
use crate::nfqueue::{Action, NfQueue, Packet};
use crate::nft::{ElementCounter, FastPath, QueueBackend, RulesConfig, TableSocket};
use crate::wire::ipv4::PROTO_GRE;
use rustc_hash::FxHashMap;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
/// How often the fast path's per-call counters are read (bounded further
/// by the idle timeout, so offloaded calls never look idle).
const OFFLOAD_POLL: Duration = Duration::from_secs(10);
/// How often adding a call's fast path elements is tried again after it failed.
const OFFLOAD_RETRY: Duration = Duration::from_secs(1);
/// Consecutive receive errors after which the thread gives up.
const MAX_RECV_ERRORS: u32 = 1000;
/// How often the daemon checks that its table still exists.
const RULES_CHECK: Duration = Duration::from_secs(5);
/// After the rules are gone, how long to keep listening for packets the
/// kernel queued just before (CPUs still inside the old rules).
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// What the packet thread needs to know.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The queue carrying packets sent by inside hosts; the other queue
    /// carries packets to inside hosts.
    pub queue_from_inside: u16,
    /// Mark for translated GRE to inside hosts.
    pub mark: u32,
    /// The rules, for opening the fast path.
    pub rules: RulesConfig,
    /// Whether to use the kernel fast path.
    pub offload: bool,
    /// The engine's call idle timeout (bounds the counter poll interval).
    pub call_idle_timeout: Duration,
    /// Whether the table (with the fast path maps) is removed before the
    /// thread stops, so there is nothing left to flush.
    pub table_removed_at_stop: bool,
    /// When the daemon installed the table without owning it (a kernel
    /// without table owners): the backend, and whether the table should
    /// exist. A table that vanishes while it should exist (a firewall
    /// reload running `flush ruleset`) is put back. An owned table cannot
    /// vanish: no other socket can delete it, and `flush ruleset` skips it.
    pub reinstall: Option<(QueueBackend, Arc<Mutex<bool>>)>,
    /// When the daemon installed the table: the socket that did, which
    /// makes every change of it (the kernel accepts changes of an owned
    /// table only from its owner). Otherwise the fast path opens its own.
    pub table_socket: Option<TableSocket>,
    /// Asks the thread that keeps the set of local addresses filled to fill it again (a
    /// reinstalled table starts with an empty set).
    pub local_addrs: Option<ResyncHandle>,
    /// The write-ahead journal of call changes; `None` without a state file.
    pub journal: Option<JournalConfig>,
    /// The events of the calls restored at start: acted on (fast path,
    /// log) before the first packet, but not journaled, since the snapshot
    /// written at start holds those calls.
    pub restored: Vec<Event>,
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
    cfg: LoopConfig,
    /// The control queues (from and to inside hosts) on one socket.
    queue: NfQueue,
    /// The GRE queue on a socket of its own: when a GRE flood fills that
    /// socket's buffer or queue, the kernel drops GRE only (fail-closed),
    /// never a control segment, which shares neither.
    gre_queue: NfQueue,
    shared: SharedRef,
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    fast: Option<FastPath>,
    /// Copy of a control packet under translation: the engine rewrites in
    /// place, and only a rewritten packet is sent back (sending back costs
    /// a copy into the verdict message, and most control segments, the
    /// bare ACKs, pass unchanged). GRE is rewritten where it was received:
    /// nearly every queued GRE packet is translated.
    scratch: Vec<u8>,
    /// When the next timer is due (engine sweep, counter poll, watchdog,
    /// rules check).
    next_timer: Instant,
    events: Vec<Event>,
    /// The journal generation `events` were drained in.
    events_gen: u64,
    journal: Option<journal::Writer>,
    warn_journal: RateLimit,
    /// Last counters read per fast path element, to feed deltas to the engine.
    offload_seen: FxHashMap<(Ipv4Addr, u16), (u64, u64)>,
    next_offload_poll: Instant,
    /// Calls whose fast path elements could not be added, (outside peer, NAT id) to (inside
    /// host, inside id). With the fast path on, GRE to the router that matches no element
    /// stays with the router (it is never queued), so such a call gets no GRE until its
    /// elements are in place: they are tried again every [`OFFLOAD_RETRY`], and the call is
    /// logged and counted (`offload_pending`) meanwhile.
    offload_pending: FxHashMap<(Ipv4Addr, u16), (Ipv4Addr, u16)>,
    next_offload_retry: Instant,
    next_rules_check: Instant,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    warn_refused: RateLimit,
    warn_desync: RateLimit,
    warn_io: RateLimit,
    /// Set when the engine panicked: the thread stops after the verdict.
    fatal: Option<String>,
}

impl std::fmt::Debug for PacketLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLoop")
            .field("cfg", &self.cfg)
            .field("queue", &self.queue)
            .field("gre_queue", &self.gre_queue)
            .field("fast", &self.fast.is_some())
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
        let journal = cfg.journal.as_ref().map(|j| {
            journal::Writer::new(
                j.state_file.clone(),
                j.generation,
                j.max_calls,
                j.ask_snapshot.clone(),
            )
        });
        PacketLoop {
            journal,
            events_gen: 0,
            warn_journal: RateLimit::new(Duration::from_secs(60), 1),
            cfg,
            queue,
            gre_queue,
            shared,
            stop,
            wake,
            fast: None,
            scratch: vec![0; usize::from(u16::MAX) + 1],
            next_timer: now,
            events: Vec::with_capacity(64),
            offload_seen: FxHashMap::default(),
            next_offload_poll: now,
            offload_pending: FxHashMap::default(),
            next_offload_retry: now,
            next_rules_check: now + RULES_CHECK,
            watchdog: sd_notify::watchdog_enabled().map(|d| d / 2),
            next_watchdog: now,
            warn_refused: RateLimit::new(Duration::from_secs(60), 20),
            warn_desync: RateLimit::new(Duration::from_secs(60), 20),
            warn_io: RateLimit::new(Duration::from_secs(60), 10),
            fatal: None,
        }
    }

    /// Opens the kernel fast path and empties it, so no element from an
    /// earlier run outlives the calls it belonged to. Returns whether the
    /// fast path is active; without it all GRE is translated here.
    pub fn start_fast_path(&mut self) -> bool {
        if !self.cfg.offload {
            return false;
        }
        let fp = match &self.cfg.table_socket {
            Some(sock) => FastPath::open_on(&self.cfg.rules, sock.clone()),
            None => FastPath::open(&self.cfg.rules),
        };
        let fp = fp.and_then(|mut fp| fp.flush().map(|()| fp));
        match fp {
            Ok(fp) => {
                log::info!(
                    "kernel fast path on (maps of table ip {})",
                    self.cfg.rules.table
                );
                self.fast = Some(fp);
            }
            Err(e) => {
                log::warn!("kernel fast path off, translating all GRE in userspace: {e}");
            }
        }
        let on = self.fast.is_some();
        let mut shared = lock(&self.shared);
        shared.offload = on;
        shared.unknown_gre_table = on.then(|| self.cfg.rules.table.clone());
        on
    }

    /// Serves packets until the stop flag is set, then drains the queue.
    /// Returns an error when the thread cannot go on.
    pub fn run(&mut self) -> Result<(), String> {
        // After the fast path was flushed, before any packet.
        if !self.cfg.restored.is_empty() {
            self.events = std::mem::take(&mut self.cfg.restored);
            self.handle_events(Instant::now(), false);
        }
        let mut recv_errors = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= self.next_timer {
                self.run_timers(now);
                self.next_timer = self.next_wakeup(now);
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
            if self.wait(self.next_timer, now) {
                self.drain_wake();
            }
        }
        Ok(())
    }

    /// Gives every packet still queued a verdict, then empties the fast
    /// path and unbinds. Called once the rules no longer queue anything.
    pub fn shutdown(&mut self) {
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
        if let Some(fp) = self
            .fast
            .as_mut()
            .filter(|_| !self.cfg.table_removed_at_stop)
        {
            match fp.flush() {
                Ok(()) => log::debug!("kernel fast path flushed"),
                Err(e) => log::debug!("kernel fast path not flushed: {e}"),
            }
        }
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

    /// One packet, start to verdict. The verdict is given on every path,
    /// including a panic in the engine (the error then stops the daemon).
    // Inlined so the (large) nfq message is not copied into the call.
    #[inline(always)]
    fn packet(&mut self, mut pkt: Packet, from_gre_queue: bool, now: Instant) {
        let dir = if pkt.queue() == self.cfg.queue_from_inside {
            Direction::FromInside
        } else {
            Direction::ToInside
        };
        let gre = pkt.payload().get(9) == Some(&PROTO_GRE);
        let mut engine = Engine {
            shared: &self.shared,
            events: &mut self.events,
            events_gen: &mut self.events_gen,
            next_timer: &mut self.next_timer,
        };
        let (verdict, len) = if gre {
            (engine.handle(now, pkt.payload_mut(), dir), 0)
        } else {
            let len = pkt.payload().len();
            // `scratch` holds 65536 bytes and the copy range is 65535.
            let len = len.min(self.scratch.len());
            self.scratch[..len].copy_from_slice(&pkt.payload()[..len]);
            (engine.handle(now, &mut self.scratch[..len], dir), len)
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
            self.handle_events(now, true);
        }
        let action = match verdict {
            Verdict::Accept | Verdict::UnknownCall => Action::Accept,
            Verdict::Drop(_) => Action::Drop,
            Verdict::Modified if gre => {
                if dir == Direction::ToInside {
                    pkt.set_mark(self.cfg.mark);
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

    fn run_timers(&mut self, now: Instant) {
        {
            let mut shared = lock(&self.shared);
            if shared.alg.poll_timeout().is_some_and(|t| t <= now) {
                shared.alg.handle_timeout(now);
            }
            // Also events raised outside a packet (timeouts).
            while let Some(ev) = shared.alg.poll_event() {
                self.events.push(ev);
            }
            self.events_gen = shared.journal_gen;
        }
        self.handle_events(now, true);
        if self.fast.is_some() && now >= self.next_offload_poll {
            self.poll_offload(now);
            let every = OFFLOAD_POLL
                .min(self.cfg.call_idle_timeout / 3)
                .max(Duration::from_secs(1));
            self.next_offload_poll = now + every;
        }
        if !self.offload_pending.is_empty() && now >= self.next_offload_retry {
            self.retry_offload();
            self.next_offload_retry = now + OFFLOAD_RETRY;
        }
        if self.cfg.reinstall.is_some() && now >= self.next_rules_check {
            self.check_rules(now);
            self.next_rules_check = now + RULES_CHECK;
        }
        if let Some(every) = self.watchdog {
            if now >= self.next_watchdog {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                self.next_watchdog = now + every;
            }
        }
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut t = now + MAX_SLEEP;
        if let Some(alg) = lock(&self.shared).alg.poll_timeout() {
            t = t.min(alg);
        }
        if self.fast.is_some() {
            t = t.min(self.next_offload_poll);
        }
        if self.watchdog.is_some() {
            t = t.min(self.next_watchdog);
        }
        if !self.offload_pending.is_empty() {
            t = t.min(self.next_offload_retry);
        }
        if self.cfg.reinstall.is_some() {
            t = t.min(self.next_rules_check);
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
        // A failed or interrupted wait is an early wake-up with nothing to read.
        matches!(
            crate::netlink::readable([Some(self.wake.as_raw_fd()), queue_fd, gre_fd], timeout),
            Ok([true, ..])
        )
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

    /// Journals the call changes (if `journal`), logs events and keeps the
    /// fast path in step with the call table.
    fn handle_events(&mut self, now: Instant, journal: bool) {
        if journal && !self.events.is_empty() {
            self.journal_events(now);
        }
        for ev in self.events.drain(..) {
            match ev {
                Event::CallStarted(c) => {
                    log::info!(
                        "call started: inside {}:{} <-> outside {} as NAT id {} ({})",
                        c.inside_host,
                        c.inside_id,
                        c.outside_peer,
                        c.nat_id,
                        c.conn.map_or_else(
                            || "no control connection".into(),
                            |k| format!("control {k}")
                        ),
                    );
                    if let Some(fp) = &mut self.fast {
                        if let Err(e) =
                            fp.add_call(c.outside_peer, c.nat_id, c.inside_host, c.inside_id)
                        {
                            self.offload_pending
                                .insert((c.outside_peer, c.nat_id), (c.inside_host, c.inside_id));
                            let mut shared = lock(&self.shared);
                            shared.fastpath_errors += 1;
                            shared.offload_pending = self.offload_pending.len() as u64;
                            drop(shared);
                            log::warn!(
                                "fast path: cannot add call {}:{} ({e}); its GRE stays with the \
                                 router until the kernel takes it, tried again every second",
                                c.outside_peer,
                                c.nat_id
                            );
                            self.next_offload_retry = now + OFFLOAD_RETRY;
                            if self.next_offload_retry < self.next_timer {
                                self.next_timer = self.next_offload_retry;
                            }
                        }
                    }
                }
                Event::CallAnswered(c) => log::debug!(
                    "call answered: inside {}:{} <-> outside {}:{} NAT id {}",
                    c.inside_host,
                    c.inside_id,
                    c.outside_peer,
                    c.outside_id.map_or_else(|| "-".into(), |id| id.to_string()),
                    c.nat_id,
                ),
                Event::CallEnded(c, cause) => {
                    // What the kernel translated since the last counter poll,
                    // read before its element goes, so the line is complete.
                    let kernel_in = match &mut self.fast {
                        Some(fp) => match fp.call_counter(c.outside_peer, c.nat_id) {
                            Ok(Some(e)) => offload_delta(&self.offload_seen, &e).0,
                            Ok(None) => 0,
                            Err(e) => {
                                log::debug!(
                                    "fast path: no counter for call {}:{}: {e}",
                                    c.outside_peer,
                                    c.nat_id
                                );
                                0
                            }
                        },
                        None => 0,
                    };
                    log::info!(
                        "call ended ({cause:?}): inside {}:{} <-> outside {}:{} NAT id {}, after {}, {} packets in, {} out",
                        c.inside_host,
                        c.inside_id,
                        c.outside_peer,
                        c.outside_id.map_or_else(|| "-".into(), |id| id.to_string()),
                        c.nat_id,
                        super::status::human_duration(c.age.as_secs()),
                        c.packets_in + kernel_in,
                        c.packets_out,
                    );
                    self.offload_seen.remove(&(c.outside_peer, c.nat_id));
                    // A call whose elements never made it has none to remove.
                    let never_added = self
                        .offload_pending
                        .remove(&(c.outside_peer, c.nat_id))
                        .is_some();
                    if never_added {
                        lock(&self.shared).offload_pending = self.offload_pending.len() as u64;
                    }
                    if let Some(fp) = self.fast.as_mut().filter(|_| !never_added) {
                        if let Err(e) = fp.remove_call(c.outside_peer, c.nat_id) {
                            lock(&self.shared).fastpath_errors += 1;
                            log::warn!(
                                "fast path: cannot remove call {}:{}: {e}",
                                c.outside_peer,
                                c.nat_id
                            );
                        }
                    }
                }
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
    }

    /// Puts our table back if it vanished while it should exist, with the
    /// fast path elements of every live call. Without this, a firewall
    /// reload that flushes the whole ruleset would silently end all
    /// translation until the daemon restarts. Only an unowned table (a
    /// kernel without table owners) can vanish so; it is reinstalled
    /// through the socket that installed it, again unowned.
    fn check_rules(&mut self, now: Instant) {
        let (Some((backend, wanted)), Some(sock)) = (&self.cfg.reinstall, &self.cfg.table_socket)
        else {
            return;
        };
        let wanted = wanted.lock().unwrap_or_else(PoisonError::into_inner);
        if !*wanted {
            return;
        }
        match crate::nft::table_exists(&self.cfg.rules.table) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                if let (true, _) = self.warn_io.allow(now) {
                    log::warn!("cannot check for table ip {}: {e}", self.cfg.rules.table);
                }
                return;
            }
        }
        if let Err(e) = sock.install(&self.cfg.rules, *backend, false) {
            log::error!(
                "table ip {} vanished and cannot be reinstalled: {e}",
                self.cfg.rules.table
            );
            return;
        }
        drop(wanted);
        if let Some(addrs) = &self.cfg.local_addrs {
            addrs.request();
        }
        let calls = lock(&self.shared).alg.calls(now);
        let mut failed = 0;
        if let Some(fp) = &mut self.fast {
            self.offload_pending.clear();
            for c in &calls {
                if fp
                    .add_call(c.outside_peer, c.nat_id, c.inside_host, c.inside_id)
                    .is_err()
                {
                    failed += 1;
                    self.offload_pending
                        .insert((c.outside_peer, c.nat_id), (c.inside_host, c.inside_id));
                }
            }
        }
        self.offload_seen.clear();
        {
            let mut shared = lock(&self.shared);
            shared.fastpath_errors += failed;
            shared.offload_pending = self.offload_pending.len() as u64;
        }
        log::warn!(
            "table ip {} vanished (a firewall reload?); reinstalled it with {} call(s) in the fast path",
            self.cfg.rules.table,
            if self.fast.is_some() { calls.len() - failed as usize } else { 0 }
        );
    }

    /// Tries again to add the elements of calls whose add failed.
    fn retry_offload(&mut self) {
        let Some(fp) = &mut self.fast else { return };
        let before = self.offload_pending.len();
        self.offload_pending
            .retain(
                |&(peer, nat_id), &mut (host, id)| match fp.add_call(peer, nat_id, host, id) {
                    Ok(()) => {
                        log::info!("fast path: call {peer}:{nat_id} added at last");
                        false
                    }
                    Err(_) => true,
                },
            );
        if self.offload_pending.len() != before {
            lock(&self.shared).offload_pending = self.offload_pending.len() as u64;
        }
    }

    /// Reads the fast path's per-call counters and tells the engine what the
    /// kernel translated since the last read, so offloaded calls keep their
    /// idle timers fresh and their counters true.
    fn poll_offload(&mut self, now: Instant) {
        let Some(fp) = &mut self.fast else { return };
        let counters = match fp.counters() {
            Ok(c) => c,
            Err(e) => {
                lock(&self.shared).fastpath_errors += 1;
                if let (true, _) = self.warn_io.allow(now) {
                    log::warn!("fast path: cannot read counters: {e}");
                }
                return;
            }
        };
        let mut seen = FxHashMap::default();
        seen.reserve(counters.len());
        let mut shared = lock(&self.shared);
        for e in &counters {
            let (dp, db) = offload_delta(&self.offload_seen, e);
            shared
                .alg
                .note_offloaded(now, e.outside_peer, e.nat_id, dp, db);
            seen.insert((e.outside_peer, e.nat_id), (e.packets, e.bytes));
        }
        shared.offloaded = counters;
        drop(shared);
        self.offload_seen = seen;
    }
}

/// Packets and bytes the kernel translated for a call since the counters in
/// `seen` were read.
fn offload_delta(seen: &FxHashMap<(Ipv4Addr, u16), (u64, u64)>, e: &ElementCounter) -> (u64, u64) {
    let (p0, b0) = seen
        .get(&(e.outside_peer, e.nat_id))
        .copied()
        .unwrap_or((0, 0));
    // A smaller value means the element was replaced: count it all.
    if e.packets >= p0 {
        (e.packets - p0, e.bytes.saturating_sub(b0))
    } else {
        (e.packets, e.bytes)
    }
}

/// The engine as the packet path uses it: under the lock, guarded against
/// panics, its events collected.
struct Engine<'a> {
    shared: &'a SharedRef,
    events: &'a mut Vec<Event>,
    /// Set to the journal generation the events were drained in.
    events_gen: &'a mut u64,
    next_timer: &'a mut Instant,
}

impl Engine<'_> {
    /// Runs the engine on `buf`; `Err` when it panicked.
    #[inline]
    fn handle(&mut self, now: Instant, buf: &mut [u8], dir: Direction) -> Result<Verdict, ()> {
        let mut shared = lock(self.shared);
        let alg = &mut shared.alg;
        let r = catch_unwind(AssertUnwindSafe(|| alg.handle(now, buf, dir)));
        while let Some(ev) = shared.alg.poll_event() {
            self.events.push(ev);
        }
        *self.events_gen = shared.journal_gen;
        // The first packet of a call arms the engine's sweep timer.
        if let Some(t) = shared.alg.poll_timeout() {
            if t < *self.next_timer {
                *self.next_timer = t;
            }
        }
        r.map_err(|_| ())
    }
}

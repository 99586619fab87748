//! The kernel's per-call elements as the packet thread drives them: the
//! fast path's map elements (added at a call's start, retried while the
//! kernel refuses, removed at its end), the hairpin maps of calls whose
//! control connection is NATed both ways, the set counting GRE from inside
//! hosts, the per-call counters fed back to the engine, and the daemon's own
//! table (put back when a firewall reload flushed it or a restore made it
//! anew, removed at stop).
//!
//! Owns the [`FastPath`], [`HairpinMaps`] and [`OutCounting`] handles and
//! the [`InstalledTable`]; told about calls through
//! [`Offload::call_started`], [`Offload::call_answered`] and
//! [`Offload::calls_ended`], run by the packet loop at
//! [`Offload::poll_timeout`]. It must not touch the
//! queues or give verdicts, and reads or changes the engine only through
//! [`SharedRef`] (counters in, live calls out for a reinstall).

use super::addrs::ResyncHandle;
use super::logging::RateLimit;
use super::outcount::{Key as OutKey, OutCounting};
use super::shared::{lock, SharedRef};
use crate::alg::{CallInfo, ConnKey, Hairpin, PPTP_PORT};
use crate::nft::{
    read_calls_counters, CallReads, Conntrack, ElemBatch, ElementCounter, FastPath, HairpinCall,
    HairpinMaps, NftError, OutCounter, QueueBackend, RulesConfig, TableSocket,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How often the fast path's per-call counters are read (bounded further
/// by the idle timeout, so offloaded calls never look idle).
const OFFLOAD_POLL: Duration = Duration::from_secs(10);
/// How often adding a call's fast path elements is tried again after it failed.
const OFFLOAD_RETRY: Duration = Duration::from_secs(1);
/// How often the daemon checks that its (unowned) table is still the one it
/// installed.
const RULES_CHECK: Duration = Duration::from_secs(1);
/// How many ended calls share one read and one batch: the read's answers
/// (about 200 bytes each, two a call) wait in the socket's receive buffer
/// until every request is handled.
const END_CHUNK: usize = 64;

/// What an ended call's removal falls back to if the kernel refuses its
/// batch (see [`Offload::calls_ended`]).
struct EndPlan {
    hp: Option<HairpinCall>,
    /// Its hairpin elements were still being retried: removed on their own.
    hp_pending: bool,
    /// It was the last hairpinned call, so `gre_post` goes.
    last_hairpin: bool,
    /// The batch drops `gre_post`.
    post_dropped: bool,
    out_key: Option<OutKey>,
    fast_remove: bool,
}

/// The table the daemon installed (`--install-rules`), removed when this
/// is dropped: at stop, and on any error or panic after installing.
#[derive(Debug)]
pub struct InstalledTable {
    /// The socket that installed it, which makes every change of it (the
    /// kernel accepts changes of an owned table only from its owner).
    pub socket: TableSocket,
    /// The table's name.
    pub table: String,
    /// How it queues; used to put it back.
    pub backend: QueueBackend,
    /// Whether the kernel gave it this socket as owner. An owned table
    /// cannot vanish (no other socket can delete it, and `flush ruleset`
    /// skips it); an unowned one is watched and put back.
    pub owned: bool,
}

impl InstalledTable {
    /// The kernel's handle of the table now, to tell a table made anew (a
    /// saved ruleset restored after `flush ruleset`) from ours.
    fn handle(&self) -> Result<Option<u64>, crate::nft::NftError> {
        self.socket.table_handle(&self.table)
    }
}

impl Drop for InstalledTable {
    fn drop(&mut self) {
        match self.socket.remove(&self.table) {
            Ok(_) => log::info!("removed table ip {}", self.table),
            Err(e) => log::error!("cannot remove table ip {}: {e}", self.table),
        }
    }
}

/// What the fast path controller needs to know.
#[derive(Debug)]
pub struct OffloadConfig {
    /// The rules, for opening the fast path and reinstalling the table.
    pub rules: RulesConfig,
    /// Whether to use the kernel fast path.
    pub offload: bool,
    /// The table the daemon installed; `None` when it runs with a table
    /// installed by someone else (`pptp-alg rules install`), which it
    /// neither watches nor removes.
    pub table: Option<InstalledTable>,
    /// Asks the thread that keeps the set of local addresses filled to fill it again (a
    /// reinstalled table starts with an empty set).
    pub local_addrs: Option<ResyncHandle>,
}

/// The fast path controller (see the module documentation).
pub struct Offload {
    cfg: OffloadConfig,
    /// The one socket through which every element kind below is changed,
    /// so one call event's changes go to the kernel as one batch.
    sock: Option<TableSocket>,
    fast: Option<FastPath>,
    /// The kernel's per-call count of GRE from inside hosts.
    out: Option<OutCounting>,
    /// The hairpin maps, with and without the fast path (see [`HairpinMaps`]).
    hairpin: Option<HairpinMaps>,
    /// Hairpinned calls whose elements could not be added: tried again with
    /// the fast path's pending calls, until they are in or the call ends.
    hairpin_pending: Vec<HairpinCall>,
    /// Hairpinned calls alive (client, client's id, server), whether their
    /// elements are in or pending: the chain `gre_post` goes with the last.
    hairpinned: FxHashSet<(Ipv4Addr, u16, Ipv4Addr)>,
    /// Conntrack, asked once per control connection whether it is
    /// hairpinned; opened at the first call.
    conntrack: Option<Conntrack>,
    warn_hairpin: RateLimit,
    /// The installed table's handle as last seen.
    table_handle: Option<u64>,
    /// Last counters read per fast path element, to feed deltas to the engine.
    seen: FxHashMap<(Ipv4Addr, u16), (u64, u64)>,
    next_poll: Instant,
    /// Calls whose fast path elements could not be added, (outside peer, NAT id) to (inside
    /// host, inside id). With the fast path on, GRE to the router that matches no element
    /// stays with the router (it is never queued), so such a call gets no GRE until its
    /// elements are in place: they are tried again every [`OFFLOAD_RETRY`], and the call is
    /// logged and counted (`offload_pending`) meanwhile.
    pending: FxHashMap<(Ipv4Addr, u16), (Ipv4Addr, u16)>,
    next_retry: Instant,
    next_rules_check: Instant,
    /// Whether the daemon installed the table: then removing it at stop
    /// takes the fast path's maps with it, and there is nothing to flush.
    installed: bool,
    warn_io: RateLimit,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("cfg", &self.cfg)
            .field("fast", &self.fast.is_some())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Offload {
    /// A controller with the fast path closed (see [`Offload::start`]).
    pub fn new(cfg: OffloadConfig, now: Instant) -> Self {
        // Installed just before: a table made later under its name is not ours.
        let table_handle = cfg.table.as_ref().and_then(|t| t.handle().ok().flatten());
        Offload {
            installed: cfg.table.is_some(),
            cfg,
            sock: None,
            fast: None,
            out: None,
            hairpin: None,
            hairpin_pending: Vec::new(),
            hairpinned: FxHashSet::default(),
            conntrack: None,
            warn_hairpin: RateLimit::new(Duration::from_secs(60), 5),
            table_handle,
            seen: FxHashMap::default(),
            next_poll: now,
            pending: FxHashMap::default(),
            next_retry: now,
            next_rules_check: now + RULES_CHECK,
            warn_io: RateLimit::new(Duration::from_secs(60), 10),
        }
    }

    /// Whether the fast path is active.
    pub fn is_on(&self) -> bool {
        self.fast.is_some()
    }

    /// Opens the kernel fast path and empties it, so no element from an
    /// earlier run outlives the calls it belonged to. Returns whether the
    /// fast path is active; without it all GRE is translated in userspace.
    pub fn start(&mut self, shared: &SharedRef) -> bool {
        let sock = match &self.cfg.table {
            Some(t) => t.socket.clone(),
            None => match TableSocket::open() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(
                        "kernel fast path, hairpin NAT and per-call counts of GRE from inside \
                         hosts off: {e}"
                    );
                    return false;
                }
            },
        };
        self.out = OutCounting::open(&self.cfg.rules, Some(&sock));
        self.hairpin = open_hairpin_maps(&self.cfg.rules, &sock);
        self.sock = Some(sock.clone());
        if self.cfg.offload {
            match FastPath::open_on(&self.cfg.rules, sock)
                .and_then(|mut fp| fp.flush().map(|()| fp))
            {
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
        }
        let on = self.fast.is_some();
        let mut s = lock(shared);
        s.offload = on;
        s.unknown_gre_table = on.then(|| self.cfg.rules.table.clone());
        on
    }

    /// Adds a new call's elements (fast path, `gre_out` once the outside
    /// peer's id is known, hairpin maps) in one batch; on failure each kind
    /// is added on its own, and what the kernel still refuses is retried
    /// every second (see [`Offload::poll_timeout`]).
    pub fn call_started(&mut self, c: &CallInfo, now: Instant, shared: &SharedRef) {
        let hp = c
            .conn
            .and_then(|k| self.classify(k, now, shared))
            .map(|hp| hairpin_call(c, hp));
        self.add_elements(c, hp, true, now, shared);
    }

    /// The outside peer told its id for call `c`: the elements keyed by it,
    /// in one batch.
    pub fn call_answered(&mut self, c: &CallInfo, now: Instant, shared: &SharedRef) {
        let hp = c.hairpin.map(|hp| hairpin_call(c, hp));
        self.add_elements(c, hp, false, now, shared);
    }

    /// Adds call `c`'s `gre_out` element, its hairpin elements `hp` and,
    /// with `fast`, its fast path elements, as ONE batch: one round trip to
    /// the kernel per call event. The batch is all or nothing, so when the
    /// kernel refuses it (a stale element with other data, a full map) each
    /// kind is added on its own, with its own replace, retry and count:
    /// one kind's trouble never costs another its elements.
    fn add_elements(
        &mut self,
        c: &CallInfo,
        hp: Option<HairpinCall>,
        fast: bool,
        now: Instant,
        shared: &SharedRef,
    ) {
        let fast = fast && self.fast.is_some();
        let hp = hp.filter(|_| self.hairpin.is_some());
        if let Some(call) = &hp {
            self.hairpinned.insert(hairpin_key(call));
        }
        let mut b = ElemBatch::new();
        if let Some(out) = &self.out {
            out.batch_known(&mut b, c);
        }
        if let (Some(maps), Some(call)) = (&self.hairpin, &hp) {
            maps.batch(&mut b, true, call);
        }
        if let (true, Some(fp)) = (fast, &self.fast) {
            fp.batch_add(&mut b, c.outside_peer, c.nat_id, c.inside_host, c.inside_id);
        }
        if b.is_empty() {
            return;
        }
        if self.commit(b).is_ok() {
            if let Some(call) = &hp {
                // A later state of the call replaces an earlier one still pending.
                self.hairpin_pending.retain(|p| !same_hairpin(p, call));
            }
            return;
        }
        if let Some(out) = &mut self.out {
            out.call_known(c, shared);
        }
        if let Some(call) = hp {
            self.hairpin_change(call, true, now, shared);
        }
        if fast {
            self.fast_add(c, now, shared);
        }
    }

    /// Adds a call's fast path elements on their own; on failure the call
    /// is pending, retried every second.
    fn fast_add(&mut self, c: &CallInfo, now: Instant, shared: &SharedRef) {
        let Some(fp) = &mut self.fast else { return };
        if let Err(e) = fp.add_call(c.outside_peer, c.nat_id, c.inside_host, c.inside_id) {
            self.pending
                .insert((c.outside_peer, c.nat_id), (c.inside_host, c.inside_id));
            let mut s = lock(shared);
            s.fastpath_errors += 1;
            s.offload_pending = self.pending.len() as u64;
            drop(s);
            log::warn!(
                "fast path: cannot add call {}:{} ({e}); its GRE stays with the router until \
                 the kernel takes it, tried again every second",
                c.outside_peer,
                c.nat_id
            );
            self.next_retry = now + OFFLOAD_RETRY;
        }
    }

    /// Sends `b` through the socket every element kind shares.
    fn commit(&self, b: ElemBatch) -> Result<(), NftError> {
        match &self.sock {
            Some(sock) => sock.commit_elems(b),
            None => Err(NftError::Protocol("no netlink socket".into())),
        }
    }

    /// Removes ended calls' elements. Returns for each call the packets the
    /// kernel translated for it and counted from its inside host since the
    /// last counter poll, read before its elements go, so the call's end
    /// line is complete. Calls that end together (a closed connection, a
    /// sweep) share the round trips: per `END_CHUNK` (64) calls one read of all
    /// their counters and one batch deleting all their elements; if the
    /// kernel refuses the batch (e.g. for an element already gone), each
    /// call's kinds are removed on their own.
    pub fn calls_ended(
        &mut self,
        calls: &[&CallInfo],
        now: Instant,
        shared: &SharedRef,
    ) -> Vec<(u64, u64)> {
        let mut counts = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(END_CHUNK) {
            self.end_chunk(chunk, now, shared, &mut counts);
        }
        counts
    }

    fn end_chunk(
        &mut self,
        calls: &[&CallInfo],
        now: Instant,
        shared: &SharedRef,
        counts: &mut Vec<(u64, u64)>,
    ) {
        // A call whose fast path elements never made it has none to read or remove.
        let was_pending: Vec<bool> = calls
            .iter()
            .map(|c| self.pending.remove(&(c.outside_peer, c.nat_id)).is_some())
            .collect();
        if was_pending.contains(&true) {
            lock(shared).offload_pending = self.pending.len() as u64;
        }
        // Two ending calls of a peer that reused its id share one `gre_out`
        // element: it is read with the first, so its packets count once.
        let mut out_read = FxHashSet::default();
        let reads: Vec<CallReads<'_>> = calls
            .iter()
            .zip(&was_pending)
            .map(|(c, &pending)| {
                let fast = match &self.fast {
                    Some(fp) if !pending => Some((fp, c.outside_peer, c.nat_id)),
                    _ => None,
                };
                let out = self
                    .out
                    .as_ref()
                    .and_then(|out| out.end_read(c))
                    .filter(|&(_, inside, peer, id)| out_read.insert((inside, peer, id)));
                (fast, out)
            })
            .collect();
        let read = match &self.sock {
            Some(sock) => read_calls_counters(sock, &reads),
            None => reads.iter().map(|_| (None, None)).collect(),
        };
        drop(reads);

        let mut b = ElemBatch::new();
        let mut plans = Vec::with_capacity(calls.len());
        let mut out_removed = FxHashSet::default();
        for ((c, pending), (fast_counter, out_counter)) in calls.iter().zip(was_pending).zip(read) {
            let (kernel_in, kernel_out, plan) = self.end_call(
                c,
                pending,
                fast_counter,
                out_counter,
                &mut b,
                &mut out_removed,
                now,
                shared,
            );
            counts.push((kernel_in, kernel_out));
            plans.push((c, plan));
        }
        let refused = !b.is_empty() && self.commit(b).is_err();
        for (c, plan) in plans {
            self.end_fallback(c, plan, refused, now, shared);
        }
    }

    /// The bookkeeping of call `c`'s end given its counters: the engine's
    /// last deltas, the hairpin sets; appends the removal of its elements to
    /// `b` and says what to do should the kernel refuse `b`.
    #[allow(clippy::too_many_arguments)]
    fn end_call(
        &mut self,
        c: &CallInfo,
        was_pending: bool,
        fast_counter: Option<Result<Option<ElementCounter>, NftError>>,
        out_counter: Option<Result<Option<OutCounter>, NftError>>,
        b: &mut ElemBatch,
        out_removed: &mut FxHashSet<OutKey>,
        now: Instant,
        shared: &SharedRef,
    ) -> (u64, u64, EndPlan) {
        let key = (c.outside_peer, c.nat_id);
        let mut kernel_in = 0;
        if self.fast.is_some() {
            kernel_in = match fast_counter {
                Some(Ok(Some(e))) => offload_delta(&self.seen, &e).0,
                Some(Ok(None)) | None => 0,
                Some(Err(e)) => {
                    log::debug!(
                        "fast path: no counter for call {}:{}: {e}",
                        c.outside_peer,
                        c.nat_id
                    );
                    0
                }
            };
            self.seen.remove(&key);
            // The last read of its counter: the engine counts it delivered.
            lock(shared)
                .alg
                .note_offloaded(now, c.outside_peer, c.nat_id, kernel_in, 0);
        }
        let (kernel_out, out_key) = match &mut self.out {
            Some(out) => out.ended(c, out_counter, shared, now),
            None => (0, None),
        };
        let out_key = out_key.filter(|k| out_removed.insert(*k));

        let hp = c
            .hairpin
            .filter(|_| self.hairpin.is_some())
            .map(|hp| hairpin_call(c, hp));
        // Elements of a pending hairpin call may be partly absent: removed on their own.
        let hp_pending = hp.is_some_and(|call| {
            let before = self.hairpin_pending.len();
            self.hairpin_pending.retain(|p| !same_hairpin(p, &call));
            before != self.hairpin_pending.len()
        });
        let last_hairpin = hp.is_some_and(|call| {
            self.hairpinned.remove(&hairpin_key(&call)) && self.hairpinned.is_empty()
        });
        let fast_remove = self.fast.is_some() && !was_pending;
        let mut post_dropped = false;
        if let (Some(maps), Some(call), false) = (&self.hairpin, &hp, hp_pending) {
            maps.batch(b, false, call);
            if last_hairpin {
                maps.batch_drop_post(b);
                post_dropped = true;
            }
        }
        if let (Some(out), Some(k)) = (&self.out, out_key) {
            out.batch_remove(b, k);
        }
        if let (true, Some(fp)) = (fast_remove, &self.fast) {
            fp.batch_remove(b, c.outside_peer, c.nat_id);
        }
        let plan = EndPlan {
            hp,
            hp_pending,
            last_hairpin,
            post_dropped,
            out_key,
            fast_remove,
        };
        (kernel_in, kernel_out, plan)
    }

    /// After the batch of `c`'s end: each kind on its own where the kernel
    /// `refused` the batch, and what was never in it.
    fn end_fallback(
        &mut self,
        c: &CallInfo,
        plan: EndPlan,
        refused: bool,
        now: Instant,
        shared: &SharedRef,
    ) {
        if let Some(call) = plan.hp.filter(|_| refused || plan.hp_pending) {
            self.hairpin_change(call, false, now, shared);
        }
        if refused {
            if let (Some(out), Some(k)) = (&mut self.out, plan.out_key) {
                out.remove(k, shared);
            }
            if let (true, Some(fp)) = (plan.fast_remove, &mut self.fast) {
                if let Err(e) = fp.remove_call(c.outside_peer, c.nat_id) {
                    lock(shared).fastpath_errors += 1;
                    log::warn!(
                        "fast path: cannot remove call {}:{}: {e}",
                        c.outside_peer,
                        c.nat_id
                    );
                }
            }
        }
        if let (true, false, Some(maps)) = (
            plan.last_hairpin,
            plan.post_dropped && !refused,
            &mut self.hairpin,
        ) {
            if let Err(e) = maps.drop_post() {
                log::debug!("hairpin: chain gre_post not removed with the last call: {e}");
            }
        }
    }

    /// When [`Offload::handle_timeout`] has work next (`None`: never).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if self.fast.is_some() || self.out.is_some() {
            at(self.next_poll);
        }
        if !self.pending.is_empty() || !self.hairpin_pending.is_empty() {
            at(self.next_retry);
        }
        if self.watches_table() {
            at(self.next_rules_check);
        }
        t
    }

    /// Runs what is due: the counter poll, retries of failed adds, the
    /// check that the table still exists.
    pub fn handle_timeout(&mut self, now: Instant, shared: &SharedRef) {
        if (self.fast.is_some() || self.out.is_some()) && now >= self.next_poll {
            if let Some(out) = &mut self.out {
                if let Err(e) = out.poll(shared, now) {
                    lock(shared).fastpath_errors += 1;
                    if let (true, _) = self.warn_io.allow(now) {
                        log::warn!("cannot read the counters of GRE from inside hosts: {e}");
                    }
                }
            }
            let idle = self.poll_counters(now, shared);
            // The engine's, so a reload that shortens it applies here too.
            let every = OFFLOAD_POLL.min(idle / 3).max(Duration::from_secs(1));
            self.next_poll = now + every;
        }
        let pending = !self.pending.is_empty() || !self.hairpin_pending.is_empty();
        if pending && now >= self.next_retry {
            self.retry(shared);
            self.retry_hairpin();
            self.next_retry = now + OFFLOAD_RETRY;
        }
        if self.watches_table() && now >= self.next_rules_check {
            self.check_table(now, shared);
            self.next_rules_check = now + RULES_CHECK;
        }
    }

    /// Removes the table the daemon installed, so nothing new is queued,
    /// and stops watching it. The first step of a stop: what is queued
    /// already still gets its verdict afterwards.
    pub fn remove_table(&mut self) {
        self.cfg.table = None;
    }

    /// Empties the fast path at stop, unless its table is gone already.
    pub fn shutdown(&mut self) {
        if self.installed {
            self.remove_table();
            return;
        }
        if let Some(fp) = &mut self.fast {
            match fp.flush() {
                Ok(()) => log::debug!("kernel fast path flushed"),
                Err(e) => log::debug!("kernel fast path not flushed: {e}"),
            }
        }
        if let Some(m) = &mut self.hairpin {
            if let Err(e) = m.flush() {
                log::debug!("hairpin maps not flushed: {e}");
            }
        }
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
    }

    /// Only an unowned table (a kernel without table owners) can vanish.
    fn watches_table(&self) -> bool {
        self.cfg.table.as_ref().is_some_and(|t| !t.owned)
    }

    /// Puts our table back if it vanished while it should exist, or was
    /// made anew by someone else, with the kernel elements of every live
    /// call. Without this, a firewall reload that flushes the whole ruleset
    /// would silently end all translation until the daemon restarts, and
    /// one that restores a saved listing of the live ruleset would leave the
    /// saved copy (its elements as they were, and on the xt backend rules
    /// without their queue targets, which `nft` cannot list). It is
    /// reinstalled through the socket that installed it, again unowned.
    fn check_table(&mut self, now: Instant, shared: &SharedRef) {
        let Some(t) = &self.cfg.table else { return };
        let what = match t.handle() {
            Ok(Some(h)) if self.table_handle.is_none_or(|known| known == h) => {
                self.table_handle = Some(h);
                return;
            }
            Ok(Some(_)) => "was made anew (a saved ruleset restored?)",
            Ok(None) => "vanished (a firewall reload?)",
            Err(e) => {
                if let (true, _) = self.warn_io.allow(now) {
                    log::warn!("cannot check for table ip {}: {e}", t.table);
                }
                return;
            }
        };
        if let Err(e) = t.socket.install(&self.cfg.rules, t.backend, false) {
            log::error!("table ip {} {what} and cannot be reinstalled: {e}", t.table);
            return;
        }
        self.table_handle = t.handle().ok().flatten();
        if let Some(addrs) = &self.cfg.local_addrs {
            addrs.request();
        }
        let calls = lock(shared).alg.calls(now);
        let mut failed = 0;
        if let Some(fp) = &mut self.fast {
            self.pending.clear();
            for c in &calls {
                if fp
                    .add_call(c.outside_peer, c.nat_id, c.inside_host, c.inside_id)
                    .is_err()
                {
                    failed += 1;
                    self.pending
                        .insert((c.outside_peer, c.nat_id), (c.inside_host, c.inside_id));
                }
            }
        }
        self.seen.clear();
        // A reinstalled table starts with empty hairpin maps and counters too.
        self.hairpinned.clear();
        for c in &calls {
            if let Some(hp) = c.hairpin.filter(|_| self.hairpin.is_some()) {
                let call = hairpin_call(c, hp);
                self.hairpinned.insert(hairpin_key(&call));
                self.hairpin_change(call, true, now, shared);
            }
        }
        if let Some(out) = &mut self.out {
            failed += out.reinstall(&calls);
        }
        {
            let mut s = lock(shared);
            s.fastpath_errors += failed;
            s.offload_pending = self.pending.len() as u64;
        }
        log::warn!(
            "table ip {} {what}; reinstalled it with {} call(s) in the fast path",
            self.cfg.rules.table,
            if self.fast.is_some() {
                calls.len().saturating_sub(self.pending.len())
            } else {
                0
            }
        );
    }

    /// Whether control connection `conn` is hairpinned, from the engine if
    /// it knows, else from conntrack (then told to the engine). Only a
    /// connection whose inside end is the client (not port 1723) can be:
    /// the server side of a hairpin is what the engine calls the outside
    /// peer.
    fn classify(&mut self, conn: ConnKey, now: Instant, shared: &SharedRef) -> Option<Hairpin> {
        if let Some(known) = lock(shared).alg.hairpin(&conn) {
            return known;
        }
        let hp = if conn.inside.port() == PPTP_PORT {
            None
        } else {
            match self.read_conntrack(conn) {
                Ok(hp) => hp,
                Err(e) => {
                    if let (true, _) = self.warn_hairpin.allow(now) {
                        log::warn!(
                            "cannot read the NAT of control {conn} from conntrack ({e}); \
                             translated as an outside peer's, never as hairpinned"
                        );
                    }
                    None
                }
            }
        };
        if let Some(h) = hp {
            log::info!(
                "hairpin: public {} and masquerade {} for control {conn} (an inside client \
                 reaching an inside server through the public address); its GRE is sent on \
                 both ways",
                h.public,
                h.masq
            );
        }
        lock(shared).alg.set_hairpin(conn, hp);
        hp
    }

    fn read_conntrack(&mut self, conn: ConnKey) -> Result<Option<Hairpin>, String> {
        let ct = match &mut self.conntrack {
            Some(ct) => ct,
            None => self
                .conntrack
                .insert(Conntrack::open().map_err(|e| e.to_string())?),
        };
        // The usual inside client: found by its tuple towards the server, no
        // lookup of the router's addresses.
        if let Some(e) = ct
            .get_tcp(conn.inside, conn.outside)
            .map_err(|e| e.to_string())?
        {
            return Ok(e.hairpin().map(|(public, masq)| Hairpin { public, masq }));
        }
        let locals = crate::nft::local_addrs().map_err(|e| e.to_string())?;
        let e = ct
            .control_connection(conn.inside, conn.outside, &locals)
            .map_err(|e| e.to_string())?;
        Ok(e.and_then(|e| e.hairpin())
            .map(|(public, masq)| Hairpin { public, masq }))
    }

    /// Adds (`add`) or removes the hairpin elements of `call` on their own.
    fn hairpin_change(&mut self, call: HairpinCall, add: bool, now: Instant, shared: &SharedRef) {
        let Some(maps) = &mut self.hairpin else {
            return;
        };
        self.hairpin_pending.retain(|p| !same_hairpin(p, &call));
        let r = if add {
            maps.add_call(&call)
        } else {
            maps.remove_call(&call)
        };
        if let Err(e) = r {
            if add {
                self.hairpin_pending.push(call);
                self.next_retry = now + OFFLOAD_RETRY;
            }
            lock(shared).fastpath_errors += 1;
            log::warn!(
                "hairpin: cannot {} the elements of call {}:{}: {e}{}",
                if add { "add" } else { "remove" },
                call.client,
                call.client_id,
                if add {
                    "; its GRE is not sent on until they are in, tried again every second"
                } else {
                    ""
                }
            );
        }
    }

    /// Tries again to add the elements of hairpinned calls whose add failed.
    fn retry_hairpin(&mut self) {
        let Some(maps) = &mut self.hairpin else {
            return;
        };
        self.hairpin_pending.retain(|c| match maps.add_call(c) {
            Ok(()) => {
                log::info!(
                    "hairpin: elements of call {}:{} added at last",
                    c.client,
                    c.client_id
                );
                false
            }
            Err(_) => true,
        });
    }

    /// Tries again to add the elements of calls whose add failed.
    fn retry(&mut self, shared: &SharedRef) {
        let Some(fp) = &mut self.fast else { return };
        let before = self.pending.len();
        self.pending.retain(|&(peer, nat_id), &mut (host, id)| {
            match fp.add_call(peer, nat_id, host, id) {
                Ok(()) => {
                    log::info!("fast path: call {peer}:{nat_id} added at last");
                    false
                }
                Err(_) => true,
            }
        });
        if self.pending.len() != before {
            lock(shared).offload_pending = self.pending.len() as u64;
        }
    }

    /// Reads the fast path's per-call counters and tells the engine what the
    /// kernel translated since the last read, so offloaded calls keep their
    /// idle timers fresh and their counters true. Returns the engine's
    /// call idle timeout, which bounds the time to the next poll.
    fn poll_counters(&mut self, now: Instant, shared: &SharedRef) -> Duration {
        let Some(fp) = &mut self.fast else {
            return OFFLOAD_POLL;
        };
        let counters = match fp.counters() {
            Ok(c) => c,
            Err(e) => {
                let mut s = lock(shared);
                s.fastpath_errors += 1;
                let idle = s.alg.config().call_idle_timeout;
                drop(s);
                if let (true, _) = self.warn_io.allow(now) {
                    log::warn!("fast path: cannot read counters: {e}");
                }
                return idle;
            }
        };
        let mut seen = FxHashMap::default();
        seen.reserve(counters.len());
        let mut s = lock(shared);
        for e in &counters {
            let (dp, db) = offload_delta(&self.seen, e);
            s.alg.note_offloaded(now, e.outside_peer, e.nat_id, dp, db);
            seen.insert((e.outside_peer, e.nat_id), (e.packets, e.bytes));
        }
        s.offloaded = counters;
        let idle = s.alg.config().call_idle_timeout;
        drop(s);
        self.seen = seen;
        idle
    }
}

/// The hairpin elements' view of call `c`, hairpinned through `hp`.
fn hairpin_call(c: &CallInfo, hp: Hairpin) -> HairpinCall {
    HairpinCall {
        client: c.inside_host,
        client_id: c.inside_id,
        server: c.outside_peer,
        server_id: c.outside_id,
        public: hp.public,
        masq: hp.masq,
    }
}

/// What stays the same through a hairpinned call's states.
fn hairpin_key(c: &HairpinCall) -> (Ipv4Addr, u16, Ipv4Addr) {
    (c.client, c.client_id, c.server)
}

/// Whether `a` and `b` are states of the same hairpinned call.
fn same_hairpin(a: &HairpinCall, b: &HairpinCall) -> bool {
    hairpin_key(a) == hairpin_key(b)
}

/// Opens the hairpin maps (with or without the fast path) and empties them,
/// as [`Offload::start`] does the fast path's.
fn open_hairpin_maps(rules: &RulesConfig, sock: &TableSocket) -> Option<HairpinMaps> {
    let maps = HairpinMaps::open_on(rules, sock.clone()).and_then(|mut m| m.flush().map(|()| m));
    match maps {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!(
                "hairpin NAT unavailable (no source rewrite of table ip {}): {e}",
                rules.table
            );
            None
        }
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

//! The sans-IO translation engine.
//!
//! [`Alg::handle`] takes one IPv4 packet as NFQUEUE delivers it, the time,
//! and which side it comes from; it rewrites the packet in place and returns
//! a [`Verdict`]. What the caller must act on besides the verdict (calls
//! mapped and unmapped for a kernel fast path, refusals and desyncs to log)
//! comes out of [`Alg::poll_event`]. Timers run when the caller calls
//! [`Alg::handle_timeout`] at [`Alg::poll_timeout`]. Nothing here reads a
//! clock, logs or performs I/O, so every behaviour is reproducible in tests.

pub mod config;
mod control;
mod hairpin;
pub mod ids;
pub mod stats;
pub mod stream;
pub mod table;

pub use config::{AlgConfig, IdPartition, IdPolicy};
pub use hairpin::Hairpin;
pub use stats::{DropReason, EndCause, Stats};
pub use table::{CallState, RefuseReason};

use crate::wire::gre::GrePacket;
use crate::wire::ipv4::{Ipv4Packet, PROTO_GRE, PROTO_TCP};
use crate::wire::pptp::HeaderError;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use table::{CallIdx, CallTable, ConnIdx, DETACHED};

/// The TCP port of the PPTP control connection.
pub const PPTP_PORT: u16 = 1723;

/// How often [`Alg::handle_timeout`] wants to run while there is state.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on undrained events; beyond it events are counted and discarded.
pub const MAX_EVENTS: usize = 65536;

/// Which side a packet comes from, relative to the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by an inside (NATed) host.
    FromInside,
    /// Going to an inside host (sent by an outside peer).
    ToInside,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept, bytes unchanged.
    Accept,
    /// Accept the bytes as rewritten in place (checksums are valid).
    Modified,
    /// Drop.
    Drop(DropReason),
    /// GRE from outside that names no live call: left unchanged. It must
    /// not reach an inside host; the caller decides (the bundled rules only
    /// queue GRE addressed to the router, which may accept it unchanged).
    UnknownCall,
}

/// A control connection as the gateway sees it (inside addresses before
/// source NAT, after destination NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnKey {
    /// The inside host's end.
    pub inside: SocketAddrV4,
    /// The outside peer's end.
    pub outside: SocketAddrV4,
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} <-> {}", self.inside, self.outside)
    }
}

/// A call as shown to operators (the status document's `calls`) and to
/// the fast path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInfo {
    /// The inside host.
    pub inside_host: Ipv4Addr,
    /// The inside host's own Call ID.
    pub inside_id: u16,
    /// The outside peer.
    pub outside_peer: Ipv4Addr,
    /// The outside peer's own Call ID, once learned.
    pub outside_id: Option<u16>,
    /// The Call ID the outside peer sees for the inside host's call.
    pub nat_id: u16,
    /// The control connection, if it is still tracked.
    pub conn: Option<ConnKey>,
    /// Where the call is in its life.
    pub state: CallState,
    /// Time since the call was created (whole seconds, `age_secs`).
    #[serde(rename = "age_secs", with = "whole_secs")]
    pub age: Duration,
    /// GRE packets towards the inside host (through this engine).
    pub packets_in: u64,
    /// GRE packets from the inside host (through this engine).
    pub packets_out: u64,
    /// GRE bytes towards the inside host.
    pub bytes_in: u64,
    /// GRE bytes from the inside host.
    pub bytes_out: u64,
    /// The router's two addresses when the control connection is hairpinned (an inside
    /// client reaching an inside server through the public address), once the caller
    /// classified it ([`Alg::set_hairpin`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hairpin: Option<Hairpin>,
}

/// A [`Duration`] as whole seconds (what the engine counts in).
mod whole_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A live call as kept across a restart of the daemon: enough to go on
/// translating its GRE and its control messages, and to keep its NAT id
/// from being given to another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCall {
    /// The control connection.
    pub conn: ConnKey,
    /// The inside host's own Call ID.
    pub inside_id: u16,
    /// The outside peer's own Call ID, if known.
    pub outside_id: Option<u16>,
    /// The NAT Call ID.
    pub nat_id: u16,
    /// Whether the call had been answered with success.
    pub established: bool,
    /// For a call that had ended: the seconds its NAT id still had to stay
    /// in quarantine. Without it, a restart would hand the ids of calls
    /// that just ended to other hosts at once, and late GRE of the old
    /// calls would reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_left: Option<u32>,
}

/// Something the caller should know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call was mapped: GRE from `outside_peer` carrying `nat_id` belongs
    /// to `inside_id` at `inside_host`.
    CallStarted(CallInfo),
    /// A call was answered with success: it is established and its
    /// outside peer's own id is known. For callers that keep the call
    /// table elsewhere (a journal, a standby); the mapping is unchanged.
    CallAnswered(CallInfo),
    /// A call ended; its mapping is gone (its NAT id is in quarantine).
    CallEnded(CallInfo, EndCause),
    /// A call request was refused and its segment dropped.
    CallRefused {
        /// The connection.
        conn: ConnKey,
        /// The inside host's id the call asked for.
        inside_id: u16,
        /// Why.
        reason: RefuseReason,
        /// Calls the inside host holds, live and in quarantine.
        host_calls: u32,
        /// NAT ids towards the outside peer held by live calls.
        live_ids: u32,
        /// NAT ids towards the outside peer in quarantine.
        quarantined_ids: u32,
    },
    /// A new control connection found the connection table full of
    /// connections with calls; its segment was dropped (TCP retransmits).
    ConnectionRefused {
        /// The connection.
        conn: ConnKey,
    },
    /// A control connection lost PPTP framing and is no longer translated.
    Desync {
        /// The connection.
        conn: ConnKey,
        /// Which direction.
        direction: Direction,
        /// What was wrong.
        error: HeaderError,
    },
}

/// The engine.
#[derive(Debug)]
pub struct Alg {
    cfg: AlgConfig,
    stats: Stats,
    calls: CallTable,
    conns: control::Conns,
    hairpins: hairpin::Hairpins,
    events: VecDeque<Event>,
    next_sweep: Option<Instant>,
    /// Time zero of the engine's timestamps (its first input).
    epoch: Option<Instant>,
    /// The last stamp and the instants between which it holds: a packet
    /// path that calls [`Alg::handle`] many times per second gets its stamp
    /// from two comparisons instead of a duration computation.
    stamp_cache: Option<(Stamp, Instant, Instant)>,
    /// Scratch list of calls created by the segment being processed.
    created: Vec<CallIdx>,
    /// State of the random id policy (xorshift64).
    rng: u64,
}

impl Alg {
    /// A new engine.
    pub fn new(cfg: AlgConfig) -> Self {
        Alg {
            calls: CallTable::new(),
            rng: cfg.seed | 1,
            cfg,
            stats: Stats::default(),
            conns: control::Conns::default(),
            hairpins: hairpin::Hairpins::default(),
            events: VecDeque::new(),
            next_sweep: None,
            epoch: None,
            stamp_cache: None,
            created: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AlgConfig {
        &self.cfg
    }

    /// Takes new limits, timeouts and id policy (a reload). Live calls and
    /// connections stay as they are: the limits apply to the next call or
    /// connection, the timeouts at the next sweep. The seed stays the
    /// running one, so the id generator continues.
    pub fn reconfigure(&mut self, cfg: AlgConfig) {
        self.cfg = AlgConfig {
            seed: self.cfg.seed,
            ..cfg
        };
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A byte from the random id policy's generator: cheap, seedable, good
    /// enough to spread ids.
    fn random_byte(&mut self) -> u8 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as u8
    }

    #[inline]
    fn stamp(&mut self, now: Instant) -> Stamp {
        if let Some((stamp, from, until)) = self.stamp_cache {
            if from <= now && now < until {
                return stamp;
            }
        }
        // Backdated by a quarantine, so that a call restored in quarantine
        // can have ended before the engine's first input.
        let backdate = self.cfg.quarantine;
        let epoch = *self
            .epoch
            .get_or_insert_with(|| now.checked_sub(backdate).unwrap_or(now));
        let stamp = secs(now.saturating_duration_since(epoch));
        if now >= epoch {
            let from = epoch + Duration::from_secs(u64::from(stamp));
            let until = from + Duration::from_secs(1);
            self.stamp_cache = Some((stamp, from, until));
        }
        stamp
    }

    /// Handles one IPv4 packet, rewriting it in place.
    pub fn handle(&mut self, now: Instant, pkt: &mut [u8], dir: Direction) -> Verdict {
        self.stats.packets += 1;
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        let now = self.stamp(now);
        let Ok(mut ip) = Ipv4Packet::new_checked(&mut pkt[..]) else {
            self.stats.malformed += 1;
            return Verdict::Accept;
        };
        let proto = ip.protocol();
        if proto != PROTO_TCP && proto != PROTO_GRE {
            self.stats.ignored += 1;
            return Verdict::Accept;
        }
        if ip.frag_offset() != 0 {
            self.stats.fragments += 1;
            return Verdict::Accept;
        }
        let verdict = if proto == PROTO_TCP {
            self.handle_tcp(now, &mut ip, dir)
        } else {
            self.handle_gre(now, &mut ip, dir)
        };
        if verdict == Verdict::Modified {
            self.stats.rewritten += 1;
        }
        self.bound_quarantine();
        verdict
    }

    fn handle_gre(
        &mut self,
        now: Stamp,
        ip: &mut Ipv4Packet<&mut [u8]>,
        dir: Direction,
    ) -> Verdict {
        let (src, dst) = (ip.src(), ip.dst());
        let payload = ip.payload_mut();
        let len = payload.len() as u64;
        // Parsed once: the view that finds the Call ID also rewrites it.
        let mut gre = match GrePacket::new_checked(payload) {
            Ok(g) => g,
            Err(_) => {
                if crate::wire::gre::version(ip.payload()) == Some(1) {
                    self.stats.malformed += 1;
                } else {
                    self.stats.ignored += 1;
                }
                return match dir {
                    // Not translatable, so it must not be forwarded inside.
                    Direction::ToInside if ip.payload().len() >= 2 => Verdict::UnknownCall,
                    _ => Verdict::Accept,
                };
            }
        };
        let call_id = gre.call_id();
        self.stats.gre_packets += 1;
        match dir {
            Direction::ToInside => {
                let Some(idx) = self
                    .calls
                    .by_nat(src, call_id)
                    .filter(|&i| self.calls.get(i).is_live())
                else {
                    if let Some(v) = self.hairpin_to_server(now, ip, call_id, len) {
                        return v;
                    }
                    self.stats.gre_unknown_call += 1;
                    return Verdict::UnknownCall;
                };
                let c = self.calls.get_mut(idx);
                c.packets_in += 1;
                c.bytes_in += len;
                c.last_activity = now;
                self.stats.call_gre_in += 1;
                let (host, id) = (c.inside_host, c.inside_id);
                gre.set_call_id(id);
                ip.set_dst(host);
                Verdict::Modified
            }
            Direction::FromInside => {
                match self.calls.by_outside(src, dst, call_id) {
                    Some(idx) => {
                        let c = self.calls.get_mut(idx);
                        c.packets_out += 1;
                        c.bytes_out += len;
                        c.last_activity = now;
                        self.stats.call_gre_out += 1;
                    }
                    None => self.stats.gre_inside_unmatched += 1,
                }
                Verdict::Accept
            }
        }
    }

    /// GRE from an inside client to the public address it dialed for a hairpinned control
    /// connection, carrying the server's own Call ID: sent on to the server, id unchanged.
    /// Its source becomes the masquerade address after routing (see [`hairpin`]).
    fn hairpin_to_server(
        &mut self,
        now: Stamp,
        ip: &mut Ipv4Packet<&mut [u8]>,
        call_id: u16,
        len: u64,
    ) -> Option<Verdict> {
        let (client, public) = (ip.src(), ip.dst());
        let (calls, conns) = (&self.calls, &self.conns);
        let (idx, server) = self.hairpins.servers(client, public).find_map(|(k, _)| {
            let server = *k.outside.ip();
            let idx = calls.by_outside(client, server, call_id)?;
            let c = calls.get(idx);
            (c.is_live() && c.conn != DETACHED && conns.get(c.conn).key == *k)
                .then_some((idx, server))
        })?;
        let c = self.calls.get_mut(idx);
        c.packets_out += 1;
        c.bytes_out += len;
        c.last_activity = now;
        ip.set_dst(server);
        self.stats.gre_hairpin += 1;
        Some(Verdict::Modified)
    }

    /// How the caller classified control connection `conn`: `None` if it has not yet,
    /// `Some(None)` if it is not hairpinned.
    pub fn hairpin(&self, conn: &ConnKey) -> Option<Option<Hairpin>> {
        self.hairpins.get(conn)
    }

    /// Records what the caller read from conntrack about control connection `conn`: whether
    /// it is hairpinned, and if so through which router addresses. Its calls' GRE is then
    /// translated both ways (module `hairpin`); their [`CallInfo::hairpin`] says so. Forgotten
    /// with the connection.
    pub fn set_hairpin(&mut self, conn: ConnKey, hairpin: Option<Hairpin>) {
        if self.conns.contains(&conn) {
            self.hairpins.set(conn, hairpin);
        }
    }

    /// Records GRE that a kernel fast path translated for a call, so that
    /// its idle timer and counters stay true. `packets`/`bytes` are deltas.
    pub fn note_offloaded(
        &mut self,
        now: Instant,
        outside_peer: Ipv4Addr,
        nat_id: u16,
        packets: u64,
        bytes: u64,
    ) {
        let now = self.stamp(now);
        // Delivered whether or not the call is still live (the last read is at its end).
        self.stats.call_gre_in += packets;
        if let Some(idx) = self.calls.by_nat(outside_peer, nat_id) {
            let c = self.calls.get_mut(idx);
            if c.is_live() && packets > 0 {
                c.packets_in += packets;
                c.bytes_in += bytes;
                c.last_activity = now;
            }
        }
    }

    /// Records GRE that an inside host sent for a call and the kernel counted (it never
    /// reaches the daemon): the call's packets out, and its idle timer. `packets`/`bytes` are
    /// deltas; `outside_id` is the outside peer's own Call ID, which that GRE carries.
    pub fn note_sent(
        &mut self,
        now: Instant,
        inside_host: Ipv4Addr,
        outside_peer: Ipv4Addr,
        outside_id: u16,
        packets: u64,
        bytes: u64,
    ) {
        let now = self.stamp(now);
        self.stats.call_gre_out += packets;
        if let Some(idx) = self.calls.by_outside(inside_host, outside_peer, outside_id) {
            let c = self.calls.get_mut(idx);
            if c.is_live() && packets > 0 {
                c.packets_out += packets;
                c.bytes_out += bytes;
                c.last_activity = now;
            }
        }
    }

    /// Whether a live call has this (inside host, outside peer, outside peer's id): when two
    /// calls share them and one ends, the other still needs its kernel counter.
    pub fn has_live_outside(&self, inside_host: Ipv4Addr, outside_peer: Ipv4Addr, id: u16) -> bool {
        self.calls
            .by_outside(inside_host, outside_peer, id)
            .is_some_and(|idx| self.calls.get(idx).is_live())
    }

    /// The next event, if any. Drain after every [`Alg::handle`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.stats.events_lost += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// When [`Alg::handle_timeout`] should run next (`None`: no state).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Runs timers: setup and idle timeouts of calls, idle and lingering
    /// connections, and the end of quarantines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let instant = now;
        let now = self.stamp(now);
        self.sweep_conns(now);
        let conns = &self.conns;
        self.hairpins.retain(|k| conns.contains(k));
        let live: Vec<(CallIdx, EndCause)> = self
            .calls
            .iter()
            .filter_map(|(i, c)| match c.state {
                CallState::Requested
                    if now.saturating_sub(c.created) >= secs(self.cfg.call_setup_timeout) =>
                {
                    Some((i, EndCause::SetupTimeout))
                }
                CallState::Established
                    if now.saturating_sub(c.last_activity) >= secs(self.cfg.call_idle_timeout) =>
                {
                    Some((i, EndCause::IdleTimeout))
                }
                _ => None,
            })
            .collect();
        for (i, cause) in live {
            self.end_call(i, cause, now);
        }
        let cutoff = now.checked_sub(secs(self.cfg.quarantine));
        while let Some(idx) = self.calls.oldest_ended_before(cutoff) {
            if cutoff.is_none() {
                break;
            }
            self.release_quarantined(idx);
        }
        self.bound_quarantine();
        let idle = self.calls.live() == 0 && self.calls.quarantined() == 0 && self.conns.is_empty();
        self.next_sweep = (!idle).then(|| instant + SWEEP_INTERVAL);
    }

    fn release_quarantined(&mut self, idx: CallIdx) {
        let conn = self.calls.get(idx).conn;
        if conn != DETACHED {
            self.conns.get_mut(conn).calls.retain(|&c| c != idx);
        }
        self.calls.purge_oldest_ended();
    }

    /// Ends a live call, emitting [`Event::CallEnded`].
    fn end_call(&mut self, idx: CallIdx, cause: EndCause, now: Stamp) {
        if self.calls.end(idx, cause, now) {
            self.stats.ended[cause as usize] += 1;
            self.stats.calls_active = self.calls.live() as u64;
            let info = self.info(idx, now);
            self.push_event(Event::CallEnded(info, cause));
        }
    }

    /// Never holds more ended calls than live ones may exist, whatever the
    /// input. Runs between packets, never within one: a segment being
    /// processed may still roll back calls it created and ended.
    fn bound_quarantine(&mut self) {
        while self.calls.quarantined() > self.cfg.max_calls {
            match self.calls.oldest_ended_before(None) {
                Some(old) => self.release_quarantined(old),
                None => break,
            }
        }
    }

    fn info(&self, idx: CallIdx, now: Stamp) -> CallInfo {
        let c = self.calls.get(idx);
        CallInfo {
            inside_host: c.inside_host,
            inside_id: c.inside_id,
            outside_peer: c.outside_peer,
            outside_id: c.outside_id,
            nat_id: c.nat_id,
            conn: (c.conn != DETACHED).then(|| self.conns.get(c.conn).key),
            state: c.state,
            age: Duration::from_secs(u64::from(now.saturating_sub(c.created))),
            packets_in: c.packets_in,
            packets_out: c.packets_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            hairpin: (c.conn != DETACHED)
                .then(|| self.hairpins.get(&self.conns.get(c.conn).key).flatten())
                .flatten(),
        }
    }

    /// Every live call.
    pub fn calls(&self, now: Instant) -> Vec<CallInfo> {
        let now = self
            .epoch
            .map_or(0, |e| secs(now.saturating_duration_since(e)));
        self.calls
            .iter()
            .filter(|(_, c)| c.is_live())
            .map(|(i, _)| self.info(i, now))
            .collect()
    }

    /// Every live call, in a form that [`Alg::restore_calls`] takes back.
    ///
    /// Calls in quarantine come too, with the time they have left as of
    /// the engine's last input.
    pub fn saved_calls(&self) -> Vec<SavedCall> {
        let now = self.stamp_cache.map_or(0, |(s, _, _)| s);
        let quarantine = secs(self.cfg.quarantine);
        self.calls
            .iter()
            .filter(|(_, c)| c.conn != DETACHED)
            .map(|(_, c)| SavedCall {
                conn: self.conns.get(c.conn).key,
                inside_id: c.inside_id,
                outside_id: c.outside_id,
                nat_id: c.nat_id,
                established: c.state == CallState::Established,
                quarantine_left: (!c.is_live())
                    .then(|| quarantine.saturating_sub(now.saturating_sub(c.last_activity))),
            })
            .collect()
    }

    /// Takes back calls saved by an earlier run, emitting
    /// [`Event::CallStarted`] for each. Their connections are tracked again
    /// from the next segment that starts with a PPTP header (PPTP peers
    /// send each message in its own segment). Calls saved in quarantine
    /// come back in quarantine for the time they had left, without an
    /// event. A saved call whose NAT id is
    /// taken, that breaks its connection's high-byte map (see
    /// [`ids`]) or exceeds a limit is skipped.
    /// Returns how many calls were restored.
    pub fn restore_calls(&mut self, now: Instant, saved: &[SavedCall]) -> usize {
        let now = self.stamp(now);
        let mut n = 0;
        let mut order: Vec<&SavedCall> = saved.iter().collect();
        order.sort_by_key(|c| restore_order(c));
        for sc in order {
            if self.restore_call(now, sc) {
                n += 1;
            }
        }
        self.stats.calls_active = self.calls.live() as u64;
        if n > 0 && self.next_sweep.is_none() {
            self.next_sweep = self.epoch.map(|e| e + SWEEP_INTERVAL);
        }
        n
    }

    /// Brings this engine's copy of one call of the other node of a router
    /// pair up to date, as the replication delivers it (a replicated call
    /// is a restored call, in the same [`SavedCall`] form). A call whose
    /// NAT id is not held is restored as by [`Alg::restore_calls`]. The
    /// live call it names (same connection, inside id and NAT id) takes
    /// its outside id and, when established, becomes so
    /// ([`Event::CallAnswered`]); given a `quarantine_left` it ends
    /// ([`EndCause::Peer`], announced as every end is) into this engine's
    /// quarantine. Anything else (its id held by another call, a limit) is
    /// left as it is. Returns whether the engine changed.
    pub fn apply_replicated(&mut self, now: Instant, sc: &SavedCall) -> bool {
        let now = self.stamp(now);
        let changed = self.apply_replicated_call(now, sc);
        self.stats.calls_active = self.calls.live() as u64;
        if changed && self.next_sweep.is_none() {
            self.next_sweep = self.epoch.map(|e| e + SWEEP_INTERVAL);
        }
        changed
    }

    /// Keeps the other node's live call `sc` (as [`Alg::apply_replicated`]
    /// gave it) from timing out here: this engine sees none of its
    /// packets while the other node is active, so without this its
    /// connection and call would end after their idle timeouts and the
    /// standby would lose their fast path. The call and its connection
    /// count as active at `now`. Returns whether `sc` named a live call.
    pub fn refresh_replicated(&mut self, now: Instant, sc: &SavedCall) -> bool {
        let now = self.stamp(now);
        self.refresh_replicated_call(now, sc)
    }

    /// Tracked control connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Ended calls whose NAT id is still in quarantine.
    pub fn quarantined(&self) -> usize {
        self.calls.quarantined()
    }
}

/// The order saved calls are restored in: those in quarantine first, in the
/// order they ended (soonest to expire first), then the live ones. A live
/// call may have replaced an ended one with the same inside id on its
/// connection, so it must come after it to be the newest with that id.
fn restore_order(c: &SavedCall) -> (bool, u32) {
    (c.quarantine_left.is_none(), c.quarantine_left.unwrap_or(0))
}

/// Timestamps kept per call and connection: whole seconds since the
/// engine's first input. Four bytes instead of sixteen per timestamp keeps a
/// call small; timeouts have one-second resolution.
type Stamp = u32;

fn secs(d: Duration) -> Stamp {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Map type used for connections.
type ConnMap = FxHashMap<ConnKey, ConnIdx>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached stamp is always the one computed from scratch, whatever
    /// order the instants come in (the shell passes one instant per batch,
    /// tests jump back and forth).
    #[test]
    fn cached_stamp_equals_computed() {
        let t0 = Instant::now();
        let epoch = t0 + Duration::from_secs(5);
        let mut alg = Alg::new(AlgConfig {
            quarantine: Duration::ZERO,
            ..AlgConfig::default()
        });
        // The first input sets the epoch (backdated by no quarantine).
        assert_eq!(alg.stamp(epoch), 0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            // xorshift: 0 to 20 s after t0 (some before the epoch), in ms
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let now = t0 + Duration::from_millis(x % 20_000);
            let expect = secs(now.saturating_duration_since(epoch));
            assert_eq!(alg.stamp(now), expect, "at {:?}", now - t0);
        }
        let ms = |m| epoch + Duration::from_millis(m);
        assert_eq!(alg.stamp(ms(999)), 0);
        assert_eq!(alg.stamp(ms(1000)), 1);
        assert_eq!(alg.stamp(ms(1999)), 1);
        assert_eq!(alg.stamp(t0), 0);
        assert_eq!(alg.stamp(ms(2000)), 2);
    }
}

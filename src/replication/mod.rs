//! High availability, sans-IO: the replication of the call table between
//! the two daemons of a router pair (issue 10), as a state machine that
//! takes bytes and the time and gives bytes and events, like the engine.
//! The messages and their bytes are [`wire`]'s; the transport (a UDP
//! socket on the sync link), the clock, the key file and applying the
//! peer's calls to the engine are the daemon's (not built yet).
//!
//! Each node sends its own calls' changes ([`Replica::record`]) and keeps a
//! mirror of the peer's ([`Replica::peer_calls`]), announcing every change
//! of the mirror as a [`ReplicaEvent`] for the local engine.
//!
//! * Sessions: each start of a node draws a random session id. A node
//!   greets with hello until the peer addresses it by that session; every
//!   other message names both sessions and is taken only from the greeted
//!   peer session and for the current own one, so nothing recorded from
//!   an earlier run can be played back. Within a session every message has
//!   a counter, checked against a 64-message window: duplicates and
//!   replays are refused.
//! * Records carry sequence numbers. The receiver applies them in order;
//!   one beyond the next expected (a lost message; heartbeats carry the
//!   sender's next sequence, so a lost tail shows too) is a gap: the
//!   receiver asks for a resync, and the sender sends its whole table as
//!   a snapshot in chunks, as of its current sequence, which replaces the
//!   mirror. A new peer session starts with the same request.
//! * Bounds: both tables hold at most [`ReplicaConfig::max_calls`] calls,
//!   the records waiting to be sent at most [`ReplicaConfig::max_outbox`]
//!   (beyond it they are dropped and the peer resyncs from the gap), a
//!   snapshot being assembled at most as many chunks as the table bound
//!   needs; ended calls leave both tables when their quarantine ends.

pub mod wire;

pub use wire::{Body, Error, Header, Key, Message, Record, Role, Status};

use crate::alg::{CallState, Event, SavedCall};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use wire::MAX_RECORDS;

/// The longest quarantine a record is taken with, in seconds.
pub const MAX_QUARANTINE: u32 = 86_400;

/// A call's key in the pair: the partition keeps it unique across both
/// nodes.
type CallKey = (Ipv4Addr, u16);

fn key_of(c: &SavedCall) -> CallKey {
    (*c.conn.outside.ip(), c.nat_id)
}

/// Settings of one node's replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node: 0 or 1 (its half of the NAT ids).
    pub node: u8,
    /// Its role at start.
    pub role: Role,
    /// The pre-shared key.
    pub key: Key,
    /// This run's session id: random, not 0 (the caller draws it).
    pub session: u64,
    /// How often a heartbeat (or a hello, until the peer answers) goes out.
    pub heartbeat: Duration,
    /// The peer is dead after this long without a valid message.
    pub dead_after: Duration,
    /// A resync request not answered by a whole snapshot is sent again
    /// after this long.
    pub resync_retry: Duration,
    /// Calls in each table (own and peer's), live and in quarantine.
    pub max_calls: usize,
    /// Records waiting to be sent.
    pub max_outbox: usize,
}

impl ReplicaConfig {
    /// Defaults for `node` with `key` and `session`: heartbeats every
    /// second, dead after three missed, the engine's default table bound
    /// (16,384 live calls and as many in quarantine).
    pub fn new(node: u8, role: Role, key: Key, session: u64) -> Self {
        ReplicaConfig {
            node,
            role,
            key,
            session,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            resync_retry: Duration::from_secs(1),
            max_calls: 2 * 16384,
            max_outbox: 65536,
        }
    }
}

/// What the caller should know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// A peer session greeted or came back after being dead.
    PeerUp(Status),
    /// The peer changed its role.
    PeerRole(Status),
    /// Nothing valid from the peer for [`ReplicaConfig::dead_after`].
    PeerDead,
    /// A change of one of the peer's calls, to apply to the local engine.
    Apply(Record),
    /// A peer's call that a snapshot no longer has (its end was missed and
    /// its quarantine is over): forget it.
    Forget(SavedCall),
    /// The peer started a new run while this node was active: the calls
    /// this node held of its earlier run (live ones, and ended ones in
    /// quarantine) are this node's own from now on, so they go back to the
    /// peer in this node's table instead of being forgotten when the new
    /// run's (empty, after a reboot) table arrives. That is failback: the
    /// calls a node took over reach the returning node's kernel before the
    /// address does. The count of calls taken over.
    Adopted(usize),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages taken.
    pub received: u64,
    /// Messages refused (any [`Error`]).
    pub refused: u64,
    /// Resync requests sent.
    pub resyncs_requested: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Snapshots taken whole.
    pub snapshots_applied: u64,
    /// Peer's records applied.
    pub records_applied: u64,
    /// Own records dropped from a full outbox (the peer resyncs).
    pub outbox_dropped: u64,
    /// Calls not kept because a table was full.
    pub table_full: u64,
    /// Own records sent (in record messages; snapshots not counted).
    pub records_sent: u64,
    /// Gaps found in the peer's records (each starts a resync).
    pub gaps: u64,
}

/// One call of a table: the call (its `quarantine_left` unset) and, once
/// ended, when its quarantine ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    call: SavedCall,
    expires: Option<Instant>,
    /// A call of an earlier run of the peer that this node took over
    /// (see [`ReplicaEvent::Adopted`]).
    adopted: bool,
}

impl Entry {
    fn from_record(r: &Record, now: Instant) -> Entry {
        let mut call = r.call().clone();
        let expires = match r {
            Record::Ended(_) => {
                Some(now + Duration::from_secs(u64::from(call.quarantine_left.take().unwrap_or(0))))
            }
            _ => {
                call.quarantine_left = None;
                None
            }
        };
        Entry {
            call,
            expires,
            adopted: false,
        }
    }

    fn record(&self, now: Instant) -> Record {
        let mut call = self.call.clone();
        match self.expires {
            Some(t) => {
                let left = t.saturating_duration_since(now).as_secs();
                call.quarantine_left = Some(u32::try_from(left).unwrap_or(u32::MAX));
                Record::Ended(call)
            }
            None if call.established => Record::Answered(call),
            None => Record::Started(call),
        }
    }

    /// The call as [`crate::alg::Alg::restore_calls`] takes it.
    fn saved(&self, now: Instant) -> SavedCall {
        self.record(now).call().clone()
    }
}

/// A table of calls bounded in number.
#[derive(Debug, Default)]
struct Table(HashMap<CallKey, Entry>);

impl Table {
    /// Puts `r` in; false when the table is full.
    fn apply(&mut self, r: &Record, now: Instant, max: usize) -> bool {
        let key = key_of(r.call());
        if self.0.len() >= max && !self.0.contains_key(&key) {
            return false;
        }
        self.0.insert(key, Entry::from_record(r, now));
        true
    }

    fn live(&self) -> impl Iterator<Item = &SavedCall> {
        self.0
            .values()
            .filter(|e| e.expires.is_none())
            .map(|e| &e.call)
    }

    fn expire(&mut self, now: Instant) {
        self.0.retain(|_, e| e.expires.is_none_or(|t| t > now));
    }
}

/// The 64-message window of counters already taken (RFC 4303's).
#[derive(Debug, Default)]
struct Window {
    highest: u64,
    seen: u64,
}

impl Window {
    fn check(&mut self, c: u64) -> Result<(), Error> {
        if c > self.highest {
            let shift = c - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = c;
            return Ok(());
        }
        let age = self.highest - c;
        if c == 0 || age >= 64 || self.seen & (1 << age) != 0 {
            return Err(Error::Replay(c));
        }
        self.seen |= 1 << age;
        Ok(())
    }
}

/// A snapshot being received.
#[derive(Debug)]
struct Assembly {
    base: u64,
    chunks: Vec<Option<Vec<Record>>>,
    missing: usize,
}

/// What this node knows of the peer's session.
#[derive(Debug)]
struct Peer {
    session: u64,
    status: Status,
    window: Window,
    last_heard: Instant,
    alive: bool,
    /// The peer addressed us by our session: it knows it.
    confirmed: bool,
    /// The next record sequence expected; `None` while a snapshot is due.
    expected: Option<u64>,
    assembly: Option<Assembly>,
    /// The sequence of the last snapshot taken: older ones are stale.
    applied_base: u64,
    resync_due: Option<Instant>,
}

/// One node's side of the replication.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    stats: ReplicaStats,
    own: Table,
    mirror: Table,
    peer: Option<Peer>,
    /// Our next record sequence.
    next_seq: u64,
    /// Our next message counter.
    counter: u64,
    outbox: VecDeque<(u64, Record)>,
    /// Snapshot chunks to send, all as of `snapshot_base`.
    snapshot_out: VecDeque<Body>,
    snapshot_base: u64,
    hello_now: bool,
    heartbeat_now: bool,
    resync_now: bool,
    next_tick: Instant,
    events: VecDeque<ReplicaEvent>,
}

impl Replica {
    /// A replica starting at `now`; its first hello goes out at once.
    pub fn new(cfg: ReplicaConfig, now: Instant) -> Self {
        Replica {
            next_tick: now + cfg.heartbeat,
            cfg,
            stats: ReplicaStats::default(),
            own: Table::default(),
            mirror: Table::default(),
            peer: None,
            next_seq: 1,
            counter: 1,
            outbox: VecDeque::new(),
            snapshot_out: VecDeque::new(),
            snapshot_base: 0,
            hello_now: true,
            heartbeat_now: false,
            resync_now: false,
            events: VecDeque::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// This node: 0 or 1.
    pub fn node(&self) -> u8 {
        self.cfg.node
    }

    /// How long the peer may be silent before it is dead.
    pub fn dead_after(&self) -> Duration {
        self.cfg.dead_after
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.cfg.role
    }

    /// Changes this node's role; the peer hears it at once.
    pub fn set_role(&mut self, role: Role) {
        if role != self.cfg.role {
            self.cfg.role = role;
            self.heartbeat_now = true;
        }
    }

    /// The peer's status while it is alive.
    pub fn peer(&self) -> Option<Status> {
        self.peer.as_ref().filter(|p| p.alive).map(|p| p.status)
    }

    /// How long ago the peer's last valid message came, if one ever did.
    pub fn peer_silent_for(&self, now: Instant) -> Option<Duration> {
        self.peer
            .as_ref()
            .map(|p| now.saturating_duration_since(p.last_heard))
    }

    /// Whether the mirror holds the peer's call on `nat_id` towards
    /// `outside` as live.
    pub fn peer_holds_live(&self, outside: Ipv4Addr, nat_id: u16) -> bool {
        self.mirror
            .0
            .get(&(outside, nat_id))
            .is_some_and(|e| e.expires.is_none())
    }

    /// The peer's live calls as replicated here.
    pub fn peer_live_calls(&self) -> impl Iterator<Item = &SavedCall> {
        self.mirror.live()
    }

    /// Own records waiting to be sent.
    pub fn queued_records(&self) -> usize {
        self.outbox.len()
    }

    /// This node's live calls as last recorded.
    pub fn own_live_calls(&self) -> impl Iterator<Item = &SavedCall> {
        self.own.live()
    }

    /// This node's live calls that it took over from an earlier run of the
    /// peer (see [`ReplicaEvent::Adopted`]).
    pub fn adopted_live_calls(&self) -> impl Iterator<Item = &SavedCall> {
        self.own
            .0
            .values()
            .filter(|e| e.adopted && e.expires.is_none())
            .map(|e| &e.call)
    }

    /// Whether the mirror is current: the peer is alive and no resync is
    /// under way.
    pub fn in_sync(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.alive && p.expected.is_some())
    }

    /// A change of one of this node's calls, to send to the peer.
    pub fn record(&mut self, now: Instant, r: Record) {
        if !self.own.apply(&r, now, self.cfg.max_calls) {
            self.stats.table_full += 1;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.peer.is_none() {
            // The peer gets the table as a snapshot when it greets.
            return;
        }
        if self.outbox.len() >= self.cfg.max_outbox {
            // The peer sees the gap and asks for a snapshot.
            self.stats.outbox_dropped += self.outbox.len() as u64;
            self.outbox.clear();
        }
        self.outbox.push_back((seq, r));
    }

    /// This node's calls as the peer should hold them.
    pub fn own_calls(&self, now: Instant) -> Vec<SavedCall> {
        self.own.0.values().map(|e| e.saved(now)).collect()
    }

    /// The peer's calls as replicated here, in the form
    /// [`crate::alg::Alg::restore_calls`] takes (ended ones with their
    /// quarantine left).
    pub fn peer_calls(&self, now: Instant) -> Vec<SavedCall> {
        self.mirror.0.values().map(|e| e.saved(now)).collect()
    }

    /// Takes one message from the peer. An `Err` says why it was refused;
    /// nothing of a refused message has any effect.
    pub fn handle(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let r = self.take(now, bytes);
        match r {
            Ok(()) => self.stats.received += 1,
            Err(_) => self.stats.refused += 1,
        }
        r
    }

    fn take(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let msg = wire::decode(bytes, &self.cfg.key)?;
        let h = msg.header;
        if h.from == self.cfg.session || h.from == 0 {
            return Err(Error::WrongSession);
        }
        if let Body::Hello(status) = msg.body {
            return self.hello(now, h, status);
        }
        let Some(peer) = self.peer.as_mut() else {
            return Err(Error::WrongSession);
        };
        if h.from != peer.session || h.to != self.cfg.session {
            return Err(Error::WrongSession);
        }
        peer.window.check(h.counter)?;
        peer.last_heard = now;
        peer.confirmed = true;
        if !peer.alive {
            peer.alive = true;
            self.events.push_back(ReplicaEvent::PeerUp(peer.status));
        }
        match msg.body {
            // Taken above; a hello carries the same status.
            Body::Hello(status) => self.status(status),
            Body::Heartbeat(status) => {
                self.status(status);
                if self.peer_expected().is_some_and(|e| h.seq > e) {
                    self.gap(now);
                }
            }
            Body::Records(records) => self.records(now, h.seq, records),
            Body::Snapshot {
                index,
                total,
                records,
            } => self.chunk(now, h.seq, index, total, records)?,
            Body::ResyncRequest => self.queue_snapshot(now),
        }
        Ok(())
    }

    fn peer_expected(&self) -> Option<u64> {
        self.peer.as_ref().and_then(|p| p.expected)
    }

    fn hello(&mut self, now: Instant, h: Header, status: Status) -> Result<(), Error> {
        let known = self.peer.as_ref().is_some_and(|p| p.session == h.from);
        if !known {
            // A new run of the peer (or its first): greet it, forget what
            // was queued for the old one and ask for its table.
            let mut window = Window::default();
            window.check(h.counter)?;
            self.peer = Some(Peer {
                session: h.from,
                status,
                window,
                last_heard: now,
                alive: true,
                confirmed: h.to == self.cfg.session,
                expected: None,
                assembly: None,
                applied_base: 0,
                resync_due: None,
            });
            self.outbox.clear();
            self.snapshot_out.clear();
            self.events.push_back(ReplicaEvent::PeerUp(status));
            if self.cfg.role == Role::Active {
                self.adopt(now);
            }
            self.hello_now = true;
            self.want_snapshot(now);
            return Ok(());
        }
        let Some(peer) = self.peer.as_mut() else {
            return Err(Error::WrongSession);
        };
        peer.window.check(h.counter)?;
        peer.last_heard = now;
        if h.to == self.cfg.session {
            peer.confirmed = true;
        } else {
            // It greets an earlier run of ours: tell it who we are now.
            self.hello_now = true;
        }
        if !peer.alive {
            peer.alive = true;
            self.events.push_back(ReplicaEvent::PeerUp(status));
        }
        self.status(status);
        Ok(())
    }

    /// Takes the mirror of the peer's earlier run into the own table (see
    /// [`ReplicaEvent::Adopted`]); what the own table has of a call already
    /// (this node handled it: an end, say) stays as it is. The own table's
    /// bound holds: beyond it calls are left (and counted).
    fn adopt(&mut self, now: Instant) {
        self.mirror.expire(now);
        let mut n = 0;
        for (k, mut e) in std::mem::take(&mut self.mirror.0) {
            if self.own.0.contains_key(&k) {
                continue;
            }
            if self.own.0.len() >= self.cfg.max_calls {
                self.stats.table_full += 1;
                continue;
            }
            e.adopted = true;
            self.own.0.insert(k, e);
            n += 1;
        }
        if n > 0 {
            self.events.push_back(ReplicaEvent::Adopted(n));
        }
    }

    fn status(&mut self, status: Status) {
        if let Some(p) = self.peer.as_mut() {
            if p.status != status {
                p.status = status;
                self.events.push_back(ReplicaEvent::PeerRole(status));
            }
        }
    }

    /// Records were missed (counted): ask for a snapshot.
    fn gap(&mut self, now: Instant) {
        if self.peer.is_some() {
            self.stats.gaps += 1;
        }
        self.want_snapshot(now);
    }

    /// Asks for a snapshot now, and again until one arrives whole.
    fn want_snapshot(&mut self, now: Instant) {
        if let Some(p) = self.peer.as_mut() {
            p.expected = None;
            p.resync_due = Some(now + self.cfg.resync_retry);
            self.resync_now = true;
        }
    }

    fn records(&mut self, now: Instant, seq: u64, records: Vec<Record>) {
        let Some(expected) = self.peer_expected() else {
            // A snapshot is due; it covers these.
            return;
        };
        if seq > expected {
            self.gap(now);
            return;
        }
        let skip = usize::try_from(expected - seq).unwrap_or(usize::MAX);
        let mut next = expected;
        for r in records.into_iter().skip(skip) {
            self.apply(now, r);
            next += 1;
        }
        if let Some(p) = self.peer.as_mut() {
            p.expected = Some(next);
        }
    }

    fn apply(&mut self, now: Instant, r: Record) {
        if let Record::Ended(c) = &r {
            // One of this node's calls that the peer carried (a failover)
            // and ended: it is over here too, and must not go back to the
            // peer as live in a snapshot.
            if let Some(e) = self.own.0.get_mut(&key_of(c)) {
                if e.expires.is_none() {
                    *e = Entry::from_record(&r, now);
                }
            }
        }
        if self.mirror.apply(&r, now, self.cfg.max_calls) {
            self.stats.records_applied += 1;
            self.events.push_back(ReplicaEvent::Apply(r));
        } else {
            self.stats.table_full += 1;
        }
    }

    fn chunk(
        &mut self,
        now: Instant,
        base: u64,
        index: u16,
        total: u16,
        records: Vec<Record>,
    ) -> Result<(), Error> {
        let max_chunks = self.cfg.max_calls.div_ceil(MAX_RECORDS).max(1);
        if usize::from(total) > max_chunks {
            return Err(Error::BadPayload("snapshot larger than the table bound"));
        }
        let Some(peer) = self.peer.as_mut() else {
            return Err(Error::WrongSession);
        };
        if peer.expected.is_some_and(|e| base <= e) {
            // Not newer than the mirror (a late answer to an earlier
            // resync request): it would only take the mirror back. A newer
            // one (a retried request's answer) is taken even in sync.
            return Ok(());
        }
        if base < peer.applied_base {
            // A late chunk of a snapshot older than the mirror.
            return Ok(());
        }
        match &peer.assembly {
            // An older snapshot than the one being put together.
            Some(a) if a.base > base => return Ok(()),
            Some(a) if a.base == base && a.chunks.len() == usize::from(total) => {}
            _ => {
                peer.assembly = Some(Assembly {
                    base,
                    chunks: vec![None; usize::from(total)],
                    missing: usize::from(total),
                })
            }
        }
        let Some(a) = peer.assembly.as_mut() else {
            return Ok(());
        };
        let Some(slot) = a.chunks.get_mut(usize::from(index)) else {
            return Ok(());
        };
        if slot.is_none() {
            *slot = Some(records);
            a.missing -= 1;
        }
        if a.missing > 0 {
            return Ok(());
        }
        let Some(a) = peer.assembly.take() else {
            return Ok(());
        };
        if peer.expected.is_some_and(|e| a.base < e) {
            // Records past it were applied while it came together.
            return Ok(());
        }
        peer.expected = Some(a.base);
        peer.applied_base = a.base;
        peer.resync_due = None;
        self.resync_now = false;
        self.stats.snapshots_applied += 1;
        let mut table = Table::default();
        for r in a.chunks.into_iter().flatten().flatten() {
            if !table.apply(&r, now, self.cfg.max_calls) {
                self.stats.table_full += 1;
            }
        }
        let old = std::mem::replace(&mut self.mirror, table);
        for (k, e) in &old.0 {
            if !self.mirror.0.contains_key(k) {
                self.events.push_back(ReplicaEvent::Forget(e.saved(now)));
            }
        }
        for (k, e) in &self.mirror.0 {
            if old
                .0
                .get(k)
                .is_none_or(|o| o.call != e.call || o.expires.is_some() != e.expires.is_some())
            {
                self.events.push_back(ReplicaEvent::Apply(e.record(now)));
            }
        }
        Ok(())
    }

    fn queue_snapshot(&mut self, now: Instant) {
        self.own.expire(now);
        let records: Vec<Record> = self.own.0.values().map(|e| e.record(now)).collect();
        let total = records.len().div_ceil(MAX_RECORDS).max(1);
        self.snapshot_out.clear();
        self.snapshot_base = self.next_seq;
        let mut chunks = records.chunks(MAX_RECORDS);
        for index in 0..total {
            self.snapshot_out.push_back(Body::Snapshot {
                index: index as u16,
                total: total as u16,
                records: chunks.next().map(<[Record]>::to_vec).unwrap_or_default(),
            });
        }
        // Everything queued is in the snapshot.
        self.outbox.clear();
        self.stats.snapshots_sent += 1;
    }

    /// The next message to send to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let (to, seq, body) = self.next_body()?;
        let header = Header {
            from: self.cfg.session,
            to,
            counter: self.counter,
            seq,
        };
        self.counter += 1;
        self.stats.sent += 1;
        wire::encode(&Message { header, body }, &self.cfg.key).ok()
    }

    fn next_body(&mut self) -> Option<(u64, u64, Body)> {
        let status = Status {
            node: self.cfg.node,
            role: self.cfg.role,
        };
        let to = self.peer.as_ref().map_or(0, |p| p.session);
        let confirmed = self.peer.as_ref().is_some_and(|p| p.confirmed);
        if self.hello_now || (self.heartbeat_now && !confirmed) {
            self.hello_now = false;
            self.heartbeat_now = false;
            return Some((to, 0, Body::Hello(status)));
        }
        self.peer.as_ref()?;
        if self.resync_now {
            self.resync_now = false;
            self.stats.resyncs_requested += 1;
            return Some((to, 0, Body::ResyncRequest));
        }
        if let Some(chunk) = self.snapshot_out.pop_front() {
            return Some((to, self.snapshot_base, chunk));
        }
        if let Some(&(first, _)) = self.outbox.front() {
            let n = self.outbox.len().min(MAX_RECORDS);
            let records = self.outbox.drain(..n).map(|(_, r)| r).collect();
            self.stats.records_sent += n as u64;
            return Some((to, first, Body::Records(records)));
        }
        if self.heartbeat_now {
            self.heartbeat_now = false;
            return Some((to, self.next_seq, Body::Heartbeat(status)));
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop_front()
    }

    /// When [`Replica::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_tick;
        if let Some(p) = &self.peer {
            if let Some(r) = p.resync_due {
                t = t.min(r);
            }
            if p.alive {
                t = t.min(p.last_heard + self.cfg.dead_after);
            }
        }
        Some(t)
    }

    /// Runs the timers due at `now`: heartbeat, peer death, resync retry,
    /// the end of quarantines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.next_tick = now + self.cfg.heartbeat;
            self.heartbeat_now = true;
            self.own.expire(now);
            self.mirror.expire(now);
        }
        let mut dead = false;
        if let Some(p) = self.peer.as_mut() {
            if p.alive && now >= p.last_heard + self.cfg.dead_after {
                p.alive = false;
                dead = true;
            }
            if p.resync_due.is_some_and(|t| now >= t) {
                p.resync_due = Some(now + self.cfg.resync_retry);
                self.resync_now = true;
            }
        }
        if dead {
            self.events.push_back(ReplicaEvent::PeerDead);
        }
    }
}

impl Record {
    /// The record of an engine event about a call, if it is one (calls
    /// without a tracked connection cannot be restored and are left out).
    /// `quarantine` is the engine's.
    pub fn from_event(e: &Event, quarantine: Duration) -> Option<Record> {
        let (info, ended) = match e {
            Event::CallStarted(i) | Event::CallAnswered(i) => (i, false),
            Event::CallEnded(i, _) => (i, true),
            _ => return None,
        };
        let call = SavedCall {
            conn: info.conn?,
            inside_id: info.inside_id,
            outside_id: info.outside_id,
            nat_id: info.nat_id,
            established: info.state == CallState::Established,
            quarantine_left: ended.then(|| u32::try_from(quarantine.as_secs()).unwrap_or(u32::MAX)),
        };
        Some(match e {
            Event::CallStarted(_) => Record::Started(call),
            Event::CallAnswered(_) => Record::Answered(call),
            _ => Record::Ended(call),
        })
    }
}

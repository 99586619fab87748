//! The call table: every call the gateway knows, indexed for O(1) lookups
//! by the keys packets carry, with the NAT ids they hold (`ids`). Owns the
//! calls (in a slab) and every index over them; it knows nothing of
//! packets, streams or time beyond the stamps it is given.
//!
//! Ended calls stay in the table, still holding their NAT id, until their
//! quarantine expires: that is the quarantine, and it also lets late or
//! retransmitted control messages of an ended call translate identically.

use super::ids::Ids;
use super::stats::EndCause;
use super::Stamp;
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

/// Index of a call in the table.
pub type CallIdx = u32;
/// Index of a control connection.
pub type ConnIdx = u32;
/// A call whose connection is gone (only ended calls).
pub const DETACHED: ConnIdx = u32::MAX;

/// Lifecycle of a call. Serialized as `"requested"`, `"established"` or
/// `{"ended": CAUSE}` (the status schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Request seen, no successful reply yet.
    Requested,
    /// Reply with success seen.
    Established,
    /// Ended; kept for the quarantine.
    Ended(EndCause),
}

/// One PPTP call.
#[derive(Debug, Clone)]
pub struct Call {
    pub conn: ConnIdx,
    pub inside_host: Ipv4Addr,
    pub inside_id: u16,
    pub outside_peer: Ipv4Addr,
    pub outside_id: Option<u16>,
    pub nat_id: u16,
    pub state: CallState,
    pub created: Stamp,
    /// The last packet or message of a live call; when it ended, for an
    /// ended one (activity no longer matters then, and a call stays small).
    pub last_activity: Stamp,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Call {
    /// A call created at `now`, with no traffic and the outside peer's own
    /// id not yet known.
    pub fn new(
        conn: ConnIdx,
        (inside_host, inside_id): (Ipv4Addr, u16),
        outside_peer: Ipv4Addr,
        nat_id: u16,
        state: CallState,
        now: Stamp,
    ) -> Self {
        Call {
            conn,
            inside_host,
            inside_id,
            outside_peer,
            outside_id: None,
            nat_id,
            state,
            created: now,
            last_activity: now,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Whether the call is live (not ended).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, CallState::Ended(_))
    }
}

fn nat_key(peer: Ipv4Addr, id: u16) -> u64 {
    (u64::from(u32::from(peer)) << 16) | u64::from(id)
}

fn outside_key(inside: Ipv4Addr, outside: Ipv4Addr, id: u16) -> (u64, u16) {
    (
        (u64::from(u32::from(inside)) << 32) | u64::from(u32::from(outside)),
        id,
    )
}

/// Why an id could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseReason {
    /// Every NAT id towards the outside peer is held by a live call or one
    /// in quarantine.
    IdSpaceExhausted,
    /// The block of NAT ids the connection uses for the inside id's high
    /// byte is full (by the connection's own calls, or shared with others
    /// when ids towards the peer run short).
    BlockFull,
    /// `max_calls` live calls exist.
    TotalLimit,
    /// The inside host holds `max_calls_per_host` calls, live or in
    /// quarantine.
    HostLimit,
}

/// What [`CallTable::by_outside_unique`] knows about the live calls of an
/// inside host towards an outside peer that go by one outside id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideMatch {
    /// None has that id.
    Absent,
    /// Exactly this one has it.
    One(CallIdx),
    /// Several have (or had) it: the peer broke the uniqueness of its
    /// Call IDs, and only a scan of the connection's calls can tell which
    /// one is meant.
    Shared,
}

/// Calls and their indexes.
#[derive(Debug, Default)]
pub struct CallTable {
    /// The calls, by index (a freed index is reused first, as before the
    /// `slab` crate kept them).
    slots: Slab<Call>,
    by_nat: FxHashMap<u64, CallIdx>,
    /// The live call holding each outside id; the last one set wins when
    /// several share an id (see `shared_outside`).
    by_outside: FxHashMap<(u64, u16), CallIdx>,
    /// Keys of `by_outside` (inside host, outside peer, outside id) that two
    /// or more live calls held at once, with the number of live calls still
    /// holding them. While a key is here `by_outside` cannot name the newest
    /// holder on a connection, so per-connection lookups scan. It stays
    /// empty unless a peer reuses its ids, so it costs nothing per call.
    shared_outside: FxHashMap<(u64, u16), u32>,
    /// Per connection and inside id, the newest call (live or in
    /// quarantine). A connection never has two live calls with one inside
    /// id and creates one only when none is live, so a live call with that
    /// id is always the newest: one entry answers both "the live call" and
    /// "the call a late message of an ended call names", in O(1).
    by_conn_inside: FxHashMap<(ConnIdx, u16), CallIdx>,
    /// Calls of each inside host, live and in quarantine: a host's
    /// quarantine counts against its own limit.
    per_host: FxHashMap<Ipv4Addr, u32>,
    /// NAT ids held towards each peer, and each connection's high-byte map.
    pub ids: Ids,
    /// Ended calls in the order they ended (the quarantine is one fixed
    /// duration, so this is also expiry order).
    ended: VecDeque<CallIdx>,
    live: usize,
}

impl CallTable {
    /// An empty table.
    pub fn new() -> Self {
        CallTable::default()
    }

    /// Live calls.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Ended calls still in quarantine.
    pub fn quarantined(&self) -> usize {
        self.ended.len()
    }

    /// Calls of one inside host, live and in quarantine.
    pub fn host_calls(&self, host: Ipv4Addr) -> u32 {
        self.per_host.get(&host).copied().unwrap_or(0)
    }

    /// The call at `idx`.
    pub fn get(&self, idx: CallIdx) -> &Call {
        &self.slots[idx as usize]
    }

    /// The call at `idx`, mutably.
    pub fn get_mut(&mut self, idx: CallIdx) -> &mut Call {
        &mut self.slots[idx as usize]
    }

    /// Every call with its index.
    pub fn iter(&self) -> impl Iterator<Item = (CallIdx, &Call)> {
        self.slots.iter().map(|(i, c)| (i as CallIdx, c))
    }

    /// The call (live or in quarantine) holding NAT id `nat` towards `peer`.
    #[inline]
    pub fn by_nat(&self, peer: Ipv4Addr, nat: u16) -> Option<CallIdx> {
        self.by_nat.get(&nat_key(peer, nat)).copied()
    }

    /// The live call of `inside` whose outside peer calls itself `id`.
    #[inline]
    pub fn by_outside(&self, inside: Ipv4Addr, outside: Ipv4Addr, id: u16) -> Option<CallIdx> {
        self.by_outside
            .get(&outside_key(inside, outside, id))
            .copied()
    }

    /// The newest call of connection `conn` with inside id `id`, live or in
    /// quarantine. If a call of `conn` with that id is live, it is this one.
    #[inline]
    pub fn newest_by_inside(&self, conn: ConnIdx, id: u16) -> Option<CallIdx> {
        self.by_conn_inside.get(&(conn, id)).copied()
    }

    /// The live calls of `inside` towards `outside` whose outside peer calls
    /// itself `id`, when they can be told apart without a scan.
    #[inline]
    pub fn by_outside_unique(&self, inside: Ipv4Addr, outside: Ipv4Addr, id: u16) -> OutsideMatch {
        let k = outside_key(inside, outside, id);
        if self.shared_outside.contains_key(&k) {
            OutsideMatch::Shared
        } else {
            self.by_outside
                .get(&k)
                .map_or(OutsideMatch::Absent, |&i| OutsideMatch::One(i))
        }
    }

    /// Inserts a new live call. Its NAT id must be free, its connection
    /// must have no live call with the same inside id, and its block must
    /// fit the connection's map ([`Ids::can_map`]).
    pub fn insert(&mut self, call: Call) -> CallIdx {
        debug_assert!(call.is_live() && call.conn != DETACHED);
        let key = nat_key(call.outside_peer, call.nat_id);
        let inside = (call.conn, call.inside_id);
        *self.per_host.entry(call.inside_host).or_insert(0) += 1;
        self.live += 1;
        self.ids.hold(call.outside_peer, call.nat_id);
        self.ids.map_call(
            call.conn,
            (call.inside_id >> 8) as u8,
            (call.nat_id >> 8) as u8,
        );
        let idx = self.slots.insert(call) as CallIdx;
        self.by_nat.insert(key, idx);
        let older = self.by_conn_inside.insert(inside, idx);
        debug_assert!(older.is_none_or(|o| !self.get(o).is_live()));
        idx
    }

    /// Records the outside peer's own id of a live call.
    pub fn set_outside_id(&mut self, idx: CallIdx, id: u16) {
        let c = self.get_mut(idx);
        if !c.is_live() || c.outside_id == Some(id) {
            return;
        }
        let old = c.outside_id.replace(id);
        let (inside, outside, conn) = (c.inside_host, c.outside_peer, c.conn);
        if let Some(old) = old {
            let k = outside_key(inside, outside, old);
            self.by_outside.remove(&k);
            self.leave_shared(k);
            if conn != DETACHED {
                self.ids.count_outside(conn, (old >> 8) as u8, false);
            }
        }
        if conn != DETACHED {
            self.ids.count_outside(conn, (id >> 8) as u8, true);
        }
        let k = outside_key(inside, outside, id);
        if let Some(n) = self.shared_outside.get_mut(&k) {
            *n += 1;
        } else if self.by_outside.contains_key(&k) {
            // The entry is another live call with this id: now two hold it.
            self.shared_outside.insert(k, 2);
        }
        self.by_outside.insert(k, idx);
    }

    /// Live call `idx` of connection `conn` stops holding its outside id
    /// (it ends or is rolled back): out of the index unless another call
    /// holds the entry, and out of the shared and per-connection counts.
    fn drop_outside_id(
        &mut self,
        idx: CallIdx,
        (host, outside, oid): (Ipv4Addr, Ipv4Addr, u16),
        conn: ConnIdx,
    ) {
        let k = outside_key(host, outside, oid);
        if self.by_outside.get(&k) == Some(&idx) {
            self.by_outside.remove(&k);
        }
        self.leave_shared(k);
        if conn != DETACHED {
            self.ids.count_outside(conn, (oid >> 8) as u8, false);
        }
    }

    /// A live call stops holding outside id key `k`.
    fn leave_shared(&mut self, k: (u64, u16)) {
        if let Some(n) = self.shared_outside.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.shared_outside.remove(&k);
            }
        }
    }

    /// Marks a live call ended; it stays in quarantine. Returns false if it
    /// had already ended.
    pub fn end(&mut self, idx: CallIdx, cause: EndCause, now: Stamp) -> bool {
        let c = self.get_mut(idx);
        if !c.is_live() {
            return false;
        }
        c.state = CallState::Ended(cause);
        c.last_activity = now;
        let (host, outside, oid, conn) = (c.inside_host, c.outside_peer, c.outside_id, c.conn);
        if let Some(oid) = oid {
            self.drop_outside_id(idx, (host, outside, oid), conn);
        }
        self.live -= 1;
        self.ids.quarantine(outside);
        self.ended.push_back(idx);
        true
    }

    /// Removes a call as if it never existed (a refused segment rolls back
    /// the calls it created, live or already ended). `older` is the newest
    /// remaining call of its connection with the same inside id, which
    /// becomes the newest again; the table cannot find it without the
    /// connection's call list.
    pub fn forget(&mut self, idx: CallIdx, older: Option<CallIdx>) {
        let c = self.slots.remove(idx as usize);
        self.by_nat.remove(&nat_key(c.outside_peer, c.nat_id));
        if c.is_live() {
            if let Some(oid) = c.outside_id {
                self.drop_outside_id(idx, (c.inside_host, c.outside_peer, oid), c.conn);
            }
            self.live -= 1;
        } else if let Some(pos) = self.ended.iter().rposition(|&i| i == idx) {
            // It ended in the segment being rolled back: near the back.
            self.ended.remove(pos);
        }
        let inside = (c.conn, c.inside_id);
        // Calls are rolled back newest first, so this one is the newest.
        debug_assert_eq!(self.by_conn_inside.get(&inside), Some(&idx));
        match older {
            Some(o) => self.by_conn_inside.insert(inside, o),
            None => self.by_conn_inside.remove(&inside),
        };
        self.ids.release(c.outside_peer, c.nat_id, c.is_live());
        self.ids.unmap_call(c.conn, (c.inside_id >> 8) as u8);
        self.dec_host(c.inside_host);
    }

    /// Detaches a call from its connection, which is being forgotten (its
    /// index may be reused by a new connection). The call is normally
    /// ended; one created after a FIN (the other half of the connection
    /// may still send) can be live and goes on, found by NAT id and outside
    /// id, until its own timers end it.
    pub fn detach(&mut self, idx: CallIdx) {
        let c = self.get_mut(idx);
        let inside = (std::mem::replace(&mut c.conn, DETACHED), c.inside_id);
        let (live, oid) = (c.is_live(), c.outside_id);
        if self.by_conn_inside.get(&inside) == Some(&idx) {
            self.by_conn_inside.remove(&inside);
        }
        self.ids.unmap_call(inside.0, (inside.1 >> 8) as u8);
        if let (true, Some(oid)) = (live, oid) {
            self.ids.count_outside(inside.0, (oid >> 8) as u8, false);
        }
    }

    fn dec_host(&mut self, host: Ipv4Addr) {
        if let Some(n) = self.per_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }

    /// The oldest ended call, if its quarantine started at or before `cutoff`.
    pub fn oldest_ended_before(&self, cutoff: Option<Stamp>) -> Option<CallIdx> {
        let &idx = self.ended.front()?;
        let c = self.get(idx);
        if c.is_live() {
            return None;
        }
        let at = c.last_activity;
        match cutoff {
            Some(c) if at > c => None,
            _ => Some(idx),
        }
    }

    /// Removes the oldest ended call for good, freeing its NAT id.
    pub fn purge_oldest_ended(&mut self) -> Option<Call> {
        let idx = self.ended.pop_front()?;
        let c = self.slots.remove(idx as usize);
        let k = nat_key(c.outside_peer, c.nat_id);
        if self.by_nat.get(&k) == Some(&idx) {
            self.by_nat.remove(&k);
        }
        // Calls of one connection with one inside id end in the order they
        // were created (only one is live at a time), and quarantine ends in
        // the order calls ended: this is the oldest with its inside id, so
        // if it is also the newest, it was the only one.
        let inside = (c.conn, c.inside_id);
        if c.conn != DETACHED {
            if self.by_conn_inside.get(&inside) == Some(&idx) {
                self.by_conn_inside.remove(&inside);
            }
            self.ids.unmap_call(c.conn, (c.inside_id >> 8) as u8);
        }
        self.ids.release(c.outside_peer, c.nat_id, false);
        self.dec_host(c.inside_host);
        Some(c)
    }

    /// Checks every index against the calls themselves, in O(calls): for
    /// tests, which cannot see the indexes. `Err` says what is wrong.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        for (&k, &i) in &self.by_outside {
            match self.slots.get(i as usize) {
                Some(c)
                    if c.is_live()
                        && c.outside_id
                            .map(|o| outside_key(c.inside_host, c.outside_peer, o))
                            == Some(k) => {}
                c => return Err(format!("by_outside {k:?} -> {i}: {c:?}")),
            }
        }
        let mut holders: FxHashMap<(u64, u16), Vec<CallIdx>> = FxHashMap::default();
        for (i, c) in self.iter() {
            if let (true, Some(o)) = (c.is_live(), c.outside_id) {
                holders
                    .entry(outside_key(c.inside_host, c.outside_peer, o))
                    .or_default()
                    .push(i);
            }
            if c.conn != DETACHED && !self.by_conn_inside.contains_key(&(c.conn, c.inside_id)) {
                return Err(format!("call {i} of conn {} has no inside entry", c.conn));
            }
        }
        for (&k, &n) in &self.shared_outside {
            let held = holders.get(&k).map_or(0, Vec::len);
            if n as usize != held || n == 0 {
                return Err(format!("shared_outside {k:?}: {n}, {held} live holders"));
            }
        }
        for (k, v) in &holders {
            if !self.shared_outside.contains_key(k)
                && (v.len() > 1 || self.by_outside.get(k) != Some(&v[0]))
            {
                return Err(format!(
                    "outside id {k:?} held by {v:?}, not shared, entry {:?}",
                    self.by_outside.get(k)
                ));
            }
        }
        for (&(conn, id), &i) in &self.by_conn_inside {
            match self.slots.get(i as usize) {
                Some(c) if conn != DETACHED && c.conn == conn && c.inside_id == id => {}
                c => return Err(format!("by_conn_inside ({conn}, {id:#x}) -> {i}: {c:?}")),
            }
        }
        let mut hosts: FxHashMap<Ipv4Addr, u32> = FxHashMap::default();
        for (_, c) in self.iter() {
            *hosts.entry(c.inside_host).or_insert(0) += 1;
        }
        if hosts != self.per_host {
            return Err(format!("per_host {:?}, counted {hosts:?}", self.per_host));
        }
        self.ids.check(self.iter().map(|(_, c)| {
            let conn = (c.conn != DETACHED).then_some((c.conn, c.inside_id, c.outside_id));
            (c.outside_peer, c.nat_id, c.is_live(), conn)
        }))
    }
}

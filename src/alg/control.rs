//! The control connection path: TCP stream tracking per direction and the
//! Call-ID translation rule for control messages.

use super::stream::{seq_diff, FeedError, Item, Parser, Patch};
use super::table::{Call, CallIdx, CallState, ConnIdx, OutsideMatch, DETACHED};
use super::{
    secs, Alg, ConnKey, ConnMap, Direction, DropReason, EndCause, Event, RefuseReason, SavedCall,
    Stamp, Verdict, PPTP_PORT,
};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::pptp::{parse_header, ControlType, HEADER_LEN, REPLY_RESULT_OFFSET};
use crate::wire::tcp::{TcpSegment, ACK, FIN, RST, SYN};
use std::net::SocketAddrV4;

/// Patches kept per direction for identical retransmissions. Each call
/// produces one or two, so this covers many calls' worth of unacknowledged
/// data while bounding memory.
const PATCH_LOG: usize = 64;

/// Result code of a successful Outgoing/Incoming-Call-Reply.
const RESULT_SUCCESS: u8 = 1;

/// One direction of a tracked connection.
#[derive(Debug, Default)]
pub(super) struct Dir {
    /// `None` until the stream start (SYN or a segment beginning with a
    /// PPTP header) has been seen.
    parser: Option<Parser>,
    patches: Vec<Patch>,
}

/// A tracked control connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub key: ConnKey,
    dirs: [Dir; 2],
    /// Calls of this connection, live and in quarantine, oldest first.
    /// Lookups go through the call table's indexes; this list is walked
    /// only to end or detach all calls of the connection and in the rare
    /// cases the indexes cannot answer alone.
    pub calls: Vec<CallIdx>,
    last_seen: Stamp,
    closing: Option<Stamp>,
    desynced: bool,
}

impl Conn {
    /// A connection first seen at `now`, with neither stream start known.
    fn new(key: ConnKey, now: Stamp) -> Self {
        Conn {
            key,
            dirs: Default::default(),
            calls: Vec::new(),
            last_seen: now,
            closing: None,
            desynced: false,
        }
    }
}

/// All tracked connections.
#[derive(Debug, Default)]
pub(super) struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<ConnIdx>,
    by_key: ConnMap,
}

impl Conns {
    pub fn get(&self, i: ConnIdx) -> &Conn {
        self.slots[i as usize].as_ref().expect("valid conn index")
    }
    pub fn get_mut(&mut self, i: ConnIdx) -> &mut Conn {
        self.slots[i as usize].as_mut().expect("valid conn index")
    }
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
    fn insert(&mut self, c: Conn) -> ConnIdx {
        let key = c.key;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(c);
                i
            }
            None => {
                self.slots.push(Some(c));
                (self.slots.len() - 1) as ConnIdx
            }
        };
        self.by_key.insert(key, i);
        i
    }
    fn remove(&mut self, i: ConnIdx) -> Conn {
        let c = self.slots[i as usize].take().expect("valid conn index");
        self.by_key.remove(&c.key);
        self.free.push(i);
        c
    }
    fn indices(&self) -> Vec<ConnIdx> {
        self.by_key.values().copied().collect()
    }
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::FromInside => 0,
        Direction::ToInside => 1,
    }
}

fn starts_with_header(payload: &[u8]) -> bool {
    payload.len() >= HEADER_LEN
        && parse_header(payload[..HEADER_LEN].try_into().expect("12 bytes")).is_ok()
}

/// A call request that cannot be granted.
struct Refused;

impl Alg {
    pub(super) fn handle_tcp(
        &mut self,
        now: Stamp,
        ip: &mut Ipv4Packet<&mut [u8]>,
        dir: Direction,
    ) -> Verdict {
        let (src, dst) = (ip.src(), ip.dst());
        let Ok(mut tcp) = TcpSegment::new_checked(ip.payload_mut()) else {
            self.stats.malformed += 1;
            return Verdict::Accept;
        };
        let (sp, dp) = (tcp.src_port(), tcp.dst_port());
        if sp != PPTP_PORT && dp != PPTP_PORT {
            self.stats.ignored += 1;
            return Verdict::Accept;
        }
        self.stats.control_packets += 1;
        let (s, d) = (SocketAddrV4::new(src, sp), SocketAddrV4::new(dst, dp));
        let key = match dir {
            Direction::FromInside => ConnKey {
                inside: s,
                outside: d,
            },
            Direction::ToInside => ConnKey {
                inside: d,
                outside: s,
            },
        };
        let flags = tcp.flags();
        let seq = tcp.seq();
        let data_seq = if flags & SYN != 0 {
            seq.wrapping_add(1)
        } else {
            seq
        };
        let payload_len = tcp.payload().len();

        if flags & SYN != 0 {
            self.forget_if_reused(&key, dir, data_seq, now);
        }
        let ci = match self.conns.by_key.get(&key) {
            Some(&ci) => ci,
            None => {
                if flags & SYN == 0 && !starts_with_header(tcp.payload()) {
                    if payload_len > 0 {
                        self.stats.unsynced_segments += 1;
                    }
                    return Verdict::Accept;
                }
                if self.conns.len() >= self.cfg.max_connections {
                    self.stats.connection_limit += 1;
                    return Verdict::Accept;
                }
                self.conns.insert(Conn::new(key, now))
            }
        };
        let di = dir_index(dir);
        let conn = self.conns.get_mut(ci);
        conn.last_seen = now;
        if flags & SYN != 0 && conn.dirs[di].parser.is_none() {
            conn.dirs[di].parser = Some(Parser::new(data_seq));
        }
        // The SYN-ACK acknowledges the other side's stream start. The rules
        // cannot see an inside client's SYN (masquerade is set up after the
        // forward hook), so this is where that direction gets its start.
        if flags & (SYN | ACK) == SYN | ACK && conn.dirs[1 - di].parser.is_none() {
            conn.dirs[1 - di].parser = Some(Parser::new(tcp.ack()));
        }

        if payload_len > 0 {
            if conn.dirs[di].parser.is_none() {
                if starts_with_header(tcp.payload()) {
                    conn.dirs[di].parser = Some(Parser::new(data_seq));
                } else {
                    self.stats.unsynced_segments += 1;
                }
            }
            if let Some(v) = self.feed_segment(now, ci, dir, data_seq, tcp.payload()) {
                return v;
            }
        }

        let mut modified = false;
        let conn = self.conns.get(ci);
        for &(pseq, byte) in &conn.dirs[di].patches {
            let off = seq_diff(pseq, data_seq);
            if off >= 0 && (off as usize) < payload_len {
                tcp.patch_payload_byte(off as usize, byte);
                modified = true;
            }
        }

        if flags & (FIN | RST) != 0 {
            self.close_conn(ci, now);
        }
        if modified {
            Verdict::Modified
        } else {
            Verdict::Accept
        }
    }

    /// Parses the new bytes of a segment. Returns a verdict only when the
    /// segment must be dropped.
    fn feed_segment(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        dir: Direction,
        data_seq: u32,
        payload: &[u8],
    ) -> Option<Verdict> {
        let di = dir_index(dir);
        let conn = self.conns.get_mut(ci);
        if conn.desynced {
            return None;
        }
        let parser = conn.dirs[di].parser.as_ref()?;
        let ahead = seq_diff(data_seq, parser.next);
        if ahead > 0 {
            self.stats.dropped_out_of_order += 1;
            return Some(Verdict::Drop(DropReason::OutOfOrder));
        }
        let skip = (-ahead) as usize;
        if skip >= payload.len() {
            return None; // a pure retransmission: patches cover it
        }
        // Work on a copy so that a refused segment leaves no trace.
        let mut parser = parser.clone();
        let mut patches = std::mem::take(&mut conn.dirs[di].patches);
        let patches_before = patches.len();
        self.created.clear();
        let res = parser.feed(&payload[skip..], &mut patches, |item| {
            self.on_item(now, ci, dir, item)
        });
        let conn = self.conns.get_mut(ci);
        let desync = match res {
            Ok(()) => None,
            Err(FeedError::Desync(error)) => Some(error),
            Err(FeedError::Handler(Refused)) => {
                patches.truncate(patches_before);
                conn.dirs[di].patches = patches;
                for idx in std::mem::take(&mut self.created) {
                    if !self.calls.get(idx).is_live() {
                        // Created and ended by this very segment: its end
                        // was announced and it sits in the quarantine queue,
                        // so it cannot be unmade; it stays like any ended
                        // call (never announced as started, counted as
                        // created so that created = ended + active).
                        self.stats.calls_created += 1;
                        continue;
                    }
                    let calls = &mut self.conns.get_mut(ci).calls;
                    calls.retain(|&c| c != idx);
                    let id = self.calls.get(idx).inside_id;
                    let older = calls
                        .iter()
                        .rev()
                        .copied()
                        .find(|&i| self.calls.get(i).inside_id == id);
                    self.calls.forget_live(idx, older);
                }
                self.stats.calls_active = self.calls.live() as u64;
                self.stats.dropped_call_refused += 1;
                return Some(Verdict::Drop(DropReason::CallRefused));
            }
        };
        // Keep what was translated, up to a bad header if there was one.
        conn.dirs[di].parser = Some(parser);
        if patches.len() > PATCH_LOG {
            patches.drain(..patches.len() - PATCH_LOG);
        }
        conn.dirs[di].patches = patches;
        if let Some(error) = desync {
            conn.desynced = true;
            let key = conn.key;
            self.stats.desyncs += 1;
            self.push_event(Event::Desync {
                conn: key,
                direction: dir,
                error,
            });
        }
        let created = std::mem::take(&mut self.created);
        for &idx in &created {
            self.stats.calls_created += 1;
            let info = self.info(idx, now);
            self.push_event(Event::CallStarted(info));
        }
        self.created = created;
        self.stats.calls_active = self.calls.live() as u64;
        None
    }

    fn on_item(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        dir: Direction,
        item: Item<'_>,
    ) -> Result<Option<u16>, Refused> {
        use ControlType::*;
        match item {
            Item::Field { ty, offset, value } => {
                let own = ty.call_id_fields().own == Some(offset);
                Ok(match (dir, own) {
                    (Direction::FromInside, true) => match ty {
                        OutgoingCallRequest | IncomingCallRequest | OutgoingCallReply
                        | IncomingCallReply => {
                            let idx = self.call_for_inside(now, ci, value)?;
                            Some(self.calls.get(idx).nat_id)
                        }
                        _ => self
                            .find_by_inside(ci, value)
                            .map(|i| self.calls.get(i).nat_id),
                    },
                    // The outside peer's own ids pass unchanged, except a
                    // Call-Disconnect-Notify that names our NAT id (the
                    // Linux/pptp-linux reading of its field).
                    (Direction::ToInside, true) if ty == CallDisconnectNotify => self
                        .find_by_nat(ci, value)
                        .map(|i| self.calls.get(i).inside_id),
                    (Direction::ToInside, false) => self
                        .find_by_nat(ci, value)
                        .map(|i| self.calls.get(i).inside_id),
                    _ => None,
                })
            }
            Item::Skipped { .. } => {
                self.stats.unknown_messages += 1;
                Ok(None)
            }
            Item::Message { ty, bytes } => {
                self.stats.messages += 1;
                self.on_message(now, ci, dir, ty, bytes);
                Ok(None)
            }
        }
    }

    fn on_message(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        dir: Direction,
        ty: ControlType,
        bytes: &[u8],
    ) {
        use ControlType::*;
        let at = |o: usize| u16::from_be_bytes([bytes[o], bytes[o + 1]]);
        match ty {
            StopCtrlConnRequest | StopCtrlConnReply => {
                self.end_conn_calls(ci, EndCause::StopControl, now)
            }
            OutgoingCallReply | IncomingCallReply => {
                let (own, peer) = (at(12), at(14));
                let call = match dir {
                    Direction::FromInside => self.live_by_inside(ci, own).map(|i| (i, peer)),
                    Direction::ToInside => self
                        .find_by_nat(ci, peer)
                        .filter(|&i| self.calls.get(i).is_live())
                        .map(|i| (i, own)),
                };
                if let Some((idx, outside_id)) = call {
                    self.calls.set_outside_id(idx, outside_id);
                    if bytes[REPLY_RESULT_OFFSET] == RESULT_SUCCESS {
                        let c = self.calls.get_mut(idx);
                        c.state = CallState::Established;
                        c.last_activity = now;
                    } else {
                        self.end_call(idx, EndCause::ReplyFailure, now);
                    }
                }
            }
            CallDisconnectNotify => {
                let id = at(12);
                // Either meaning of the field: the sender's own call, or the
                // receiver's (as the Linux helper reads it).
                let idx = match dir {
                    Direction::FromInside => self
                        .live_by_inside(ci, id)
                        .or_else(|| self.live_by_outside(ci, id)),
                    Direction::ToInside => self
                        .find_by_nat(ci, id)
                        .filter(|&i| self.calls.get(i).is_live())
                        .or_else(|| self.live_by_outside(ci, id)),
                };
                if let Some(idx) = idx {
                    self.end_call(idx, EndCause::Disconnect, now);
                }
            }
            _ => {}
        }
    }

    /// The live call of `inside_id` on this connection, or a new one.
    fn call_for_inside(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        inside_id: u16,
    ) -> Result<CallIdx, Refused> {
        if let Some(idx) = self.live_by_inside(ci, inside_id) {
            return Ok(idx);
        }
        let key = self.conns.get(ci).key;
        let (host, peer) = (*key.inside.ip(), *key.outside.ip());
        let refuse = |this: &mut Self, reason: RefuseReason| {
            match reason {
                RefuseReason::IdSpaceExhausted => this.stats.alloc_failures += 1,
                RefuseReason::TotalLimit => this.stats.refused_total_limit += 1,
                RefuseReason::HostLimit => this.stats.refused_host_limit += 1,
            }
            this.push_event(Event::CallRefused {
                conn: key,
                inside_id,
                reason,
            });
            Err(Refused)
        };
        if self.calls.live() >= self.cfg.max_calls {
            return refuse(self, RefuseReason::TotalLimit);
        }
        if self.calls.host_calls(host) as usize >= self.cfg.max_calls_per_host {
            return refuse(self, RefuseReason::HostLimit);
        }
        let Some(nat_id) = self.calls.pick_id(peer, inside_id, self.cfg.id_policy) else {
            return refuse(self, RefuseReason::IdSpaceExhausted);
        };
        let idx = self.calls.insert(Call::new(
            ci,
            (host, inside_id),
            peer,
            nat_id,
            CallState::Requested,
            now,
        ));
        self.conns.get_mut(ci).calls.push(idx);
        self.created.push(idx);
        Ok(idx)
    }

    /// The newest call of this connection matching `f` that is live, by a
    /// scan: the answer when a peer gave several live calls one outside id.
    fn scan_live(&self, ci: ConnIdx, f: impl Fn(&Call) -> bool) -> Option<CallIdx> {
        self.conns.get(ci).calls.iter().rev().copied().find(|&i| {
            let c = self.calls.get(i);
            c.is_live() && f(c)
        })
    }

    /// The live call of this connection with `inside_id`.
    fn live_by_inside(&self, ci: ConnIdx, inside_id: u16) -> Option<CallIdx> {
        self.calls
            .newest_by_inside(ci, inside_id)
            .filter(|&i| self.calls.get(i).is_live())
    }

    /// The newest call of this connection with `inside_id`, live or in
    /// quarantine (late messages of an ended call translate as before).
    fn find_by_inside(&self, ci: ConnIdx, inside_id: u16) -> Option<CallIdx> {
        self.calls.newest_by_inside(ci, inside_id)
    }

    /// The newest live call of this connection whose outside peer calls
    /// itself `id`.
    fn live_by_outside(&self, ci: ConnIdx, id: u16) -> Option<CallIdx> {
        let key = self.conns.get(ci).key;
        match self
            .calls
            .by_outside_unique(*key.inside.ip(), *key.outside.ip(), id)
        {
            OutsideMatch::Absent => None,
            // The only live call of this host pair with that id; another
            // connection between the same hosts may hold it.
            OutsideMatch::One(i) => (self.calls.get(i).conn == ci).then_some(i),
            OutsideMatch::Shared => self.scan_live(ci, |c| c.outside_id == Some(id)),
        }
    }

    /// The call of this connection holding NAT id `nat`.
    fn find_by_nat(&self, ci: ConnIdx, nat: u16) -> Option<CallIdx> {
        let peer = *self.conns.get(ci).key.outside.ip();
        self.calls
            .by_nat(peer, nat)
            .filter(|&i| self.calls.get(i).conn == ci)
    }

    fn end_conn_calls(&mut self, ci: ConnIdx, cause: EndCause, now: Stamp) {
        // Only the live ones: ending one may release the oldest call in
        // quarantine (the quarantine is bounded), which can be an ended
        // call of this very connection, gone by the time the loop got to it.
        let calls: Vec<CallIdx> = self
            .conns
            .get(ci)
            .calls
            .iter()
            .copied()
            .filter(|&i| self.calls.get(i).is_live())
            .collect();
        for idx in calls {
            self.end_call(idx, cause, now);
        }
    }

    fn close_conn(&mut self, ci: ConnIdx, now: Stamp) {
        self.end_conn_calls(ci, EndCause::ConnClosed, now);
        let c = self.conns.get_mut(ci);
        c.closing.get_or_insert(now);
    }

    /// Restores one saved call (see [`Alg::restore_calls`]).
    pub(super) fn restore_call(&mut self, now: Stamp, sc: &SavedCall) -> bool {
        let (host, peer) = (*sc.conn.inside.ip(), *sc.conn.outside.ip());
        if sc.nat_id >> 8 != sc.inside_id >> 8
            || self.calls.by_nat(peer, sc.nat_id).is_some()
            || self.calls.live() >= self.cfg.max_calls
            || self.calls.host_calls(host) as usize >= self.cfg.max_calls_per_host
        {
            return false;
        }
        let ci = match self.conns.by_key.get(&sc.conn) {
            Some(&ci) => ci,
            None if self.conns.len() >= self.cfg.max_connections => return false,
            None => self.conns.insert(Conn::new(sc.conn, now)),
        };
        if self.live_by_inside(ci, sc.inside_id).is_some() {
            return false;
        }
        let state = if sc.established {
            CallState::Established
        } else {
            CallState::Requested
        };
        let idx = self.calls.insert(Call::new(
            ci,
            (host, sc.inside_id),
            peer,
            sc.nat_id,
            state,
            now,
        ));
        if let Some(oid) = sc.outside_id {
            self.calls.set_outside_id(idx, oid);
        }
        self.conns.get_mut(ci).calls.push(idx);
        self.stats.calls_created += 1;
        let info = self.info(idx, now);
        self.push_event(Event::CallStarted(info));
        true
    }

    /// A SYN that does not match the tracked stream start (or arrives after
    /// FIN/RST) means the 4-tuple now carries a new connection: the old one
    /// is over.
    fn forget_if_reused(&mut self, key: &ConnKey, dir: Direction, data_seq: u32, now: Stamp) {
        let Some(&ci) = self.conns.by_key.get(key) else {
            return;
        };
        let c = self.conns.get(ci);
        let other_start = c.dirs[dir_index(dir)]
            .parser
            .as_ref()
            .is_some_and(|p| p.next != data_seq);
        if c.closing.is_some() || other_start {
            self.close_conn(ci, now);
            self.forget_conn(ci);
        }
    }

    fn forget_conn(&mut self, ci: ConnIdx) {
        let conn = self.conns.remove(ci);
        for idx in conn.calls {
            self.calls.detach(idx);
        }
    }

    pub(super) fn sweep_conns(&mut self, now: Stamp) {
        for ci in self.conns.indices() {
            let c = self.conns.get(ci);
            if let Some(t) = c.closing {
                if now.saturating_sub(t) >= secs(self.cfg.conn_linger) {
                    self.forget_conn(ci);
                }
            } else if now.saturating_sub(c.last_seen) >= secs(self.cfg.conn_idle_timeout) {
                self.end_conn_calls(ci, EndCause::ConnTimeout, now);
                self.forget_conn(ci);
            }
        }
    }

    /// Checks the call indexes against what scans of every tracked
    /// connection's calls give (the lookups as they were before the
    /// indexes, done for all ids in one pass per connection): for tests,
    /// in O(calls). `Err` says what disagrees.
    #[doc(hidden)]
    pub fn check_call_indexes(&self) -> Result<(), String> {
        use rustc_hash::FxHashMap;
        self.calls.check_indexes()?;
        let mut attached = 0;
        for ci in self.conns.indices() {
            let calls = &self.conns.get(ci).calls;
            attached += calls.len();
            // Oldest first, so the last call seen for an id is the newest.
            let mut inside: FxHashMap<u16, (Option<CallIdx>, Option<CallIdx>)> =
                FxHashMap::default();
            let mut outside: FxHashMap<u16, Option<CallIdx>> = FxHashMap::default();
            for &i in calls {
                let c = self.calls.get(i);
                if c.conn != ci {
                    return Err(format!(
                        "call {i} listed by conn {ci} names conn {}",
                        c.conn
                    ));
                }
                let e = inside.entry(c.inside_id).or_default();
                e.0 = Some(i);
                if c.is_live() {
                    e.1 = Some(i);
                }
                if let Some(o) = c.outside_id {
                    let e = outside.entry(o).or_default();
                    if c.is_live() {
                        *e = Some(i);
                    }
                }
            }
            for (id, want) in inside {
                let got = (self.find_by_inside(ci, id), self.live_by_inside(ci, id));
                if got != want {
                    return Err(format!(
                        "conn {ci} inside id {id:#x}: index {got:?}, scan {want:?}"
                    ));
                }
            }
            for (id, want) in outside {
                let got = self.live_by_outside(ci, id);
                if got != want {
                    return Err(format!(
                        "conn {ci} outside id {id:#x}: index {got:?}, scan {want:?}"
                    ));
                }
            }
        }
        let in_table = self
            .calls
            .iter()
            .filter(|(_, c)| c.conn != DETACHED)
            .count();
        if in_table != attached {
            return Err(format!(
                "{in_table} attached calls, {attached} listed by connections"
            ));
        }
        Ok(())
    }
}

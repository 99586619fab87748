//! The control connection path: TCP stream tracking per direction and the
//! Call-ID translation rule for control messages. Owns the connections (in
//! a slab, [`Conns`]); calls are created and ended through the call table,
//! never held here.

use super::stream::{seq_diff, FeedError, Item, Parser, Patch};
use super::table::{Call, CallIdx, CallState, ConnIdx, OutsideMatch, DETACHED};
use super::{
    secs, Alg, ConnKey, ConnMap, Direction, DropReason, EndCause, Event, IdPolicy, RefuseReason,
    SavedCall, Stamp, Verdict, PPTP_PORT,
};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::pptp::{parse_header, ControlMessage, ControlType, Role, HEADER_LEN};
use crate::wire::tcp::TcpSegment;
use etherparse::TcpSlice;
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::net::SocketAddrV4;

/// Patches kept per direction for identical retransmissions, at most.
/// Beyond `PATCH_KEEP` they go as soon as the receiver acknowledges their
/// bytes, so this bounds only unacknowledged rewrites: a client clearing
/// 250 calls at once has about 500 in flight; 4,096 take 32 KB.
const PATCH_LOG: usize = 4096;
/// Patches kept even once acknowledged, so that a spurious retransmission
/// of recent bytes still leaves identical.
const PATCH_KEEP: usize = 64;

/// Result code of a successful Outgoing/Incoming-Call-Reply.
const RESULT_SUCCESS: u8 = 1;

/// One direction of a tracked connection: its PPTP framing and the
/// patches of its rewritten bytes. (Which direction a packet travels is
/// [`super::Direction`].)
#[derive(Debug, Default)]
pub(super) struct HalfStream {
    /// `None` until the stream start (SYN or a segment beginning with a
    /// PPTP header) has been seen.
    parser: Option<Parser>,
    patches: Vec<Patch>,
}

impl HalfStream {
    /// The receiver acknowledged this direction's bytes before `ack`: only
    /// a spurious retransmission sends them again (and the receiver drops
    /// it), so their patches can go, but for the newest `PATCH_KEEP`. An
    /// acknowledgement of bytes not yet sent is forged and changes nothing.
    fn forget_acked(&mut self, ack: u32) {
        if self.patches.len() <= PATCH_KEEP {
            return;
        }
        let Some(p) = &self.parser else {
            return;
        };
        if seq_diff(ack, p.next) > 0 {
            return;
        }
        let acked = self
            .patches
            .iter()
            .take(self.patches.len() - PATCH_KEEP)
            .take_while(|&&(seq, _)| seq_diff(seq, ack) < 0)
            .count();
        self.patches.drain(..acked);
    }
}

/// A tracked control connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub key: ConnKey,
    dirs: [HalfStream; 2],
    /// Calls of this connection, live and in quarantine, oldest first.
    /// Lookups go through the call table's indexes; this list is walked
    /// only to end or detach all calls of the connection and in the rare
    /// cases the indexes cannot answer alone.
    pub calls: Vec<CallIdx>,
    last_seen: Stamp,
    closing: Option<Stamp>,
    desynced: bool,
    /// The inside host's latest acknowledgement number: where the stream
    /// towards it goes on. Outside senders cannot forge it.
    inside_ack: Option<u32>,
    /// Where the stream towards the inside host was picked up at a message
    /// start that nothing vouched for yet (after a restart, before the
    /// inside host acknowledged anything): the host's next ACK confirms it
    /// or shows it was forged.
    unconfirmed: Option<u32>,
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
            inside_ack: None,
            unconfirmed: None,
        }
    }
}

/// What the segments of a connection not tracked yet told about where its
/// two streams start (next data sequence number, by direction index).
#[derive(Debug, Clone, Copy)]
struct Handshake {
    starts: [Option<u32>; 2],
    /// `starts[0]` comes from the inside host's own SYN, not from an
    /// outside sender's acknowledgement.
    inside_syn: bool,
    /// Insertion number, named by `handshake_order`.
    n: u64,
}

impl Handshake {
    fn new(n: u64) -> Self {
        Handshake {
            starts: [None; 2],
            inside_syn: false,
            n,
        }
    }
}

/// Handshakes remembered at most: a SYN flood evicts old ones, and a
/// connection whose handshake was evicted is tracked from its first segment
/// that starts a message instead.
const MAX_HANDSHAKES: usize = 4096;

/// All tracked connections, and the handshakes of connections that have
/// not sent data yet.
#[derive(Debug, Default)]
pub(super) struct Conns {
    slots: Slab<Conn>,
    by_key: ConnMap,
    /// Stream starts (next data sequence number per direction) from SYN and
    /// SYN-ACK, with the insertion number that `handshake_order` names.
    handshakes: FxHashMap<ConnKey, Handshake>,
    handshake_order: VecDeque<(ConnKey, u64)>,
    handshake_count: u64,
    /// Connections in the order they were tracked, to find an old one
    /// without calls when the table is full. Entries of connections with
    /// calls are skipped lazily; a slot reused by a newer connection may
    /// be found early, which only matters to which call-less one goes.
    callless: VecDeque<ConnIdx>,
}

impl Conns {
    pub fn get(&self, i: ConnIdx) -> &Conn {
        &self.slots[i as usize]
    }
    pub fn get_mut(&mut self, i: ConnIdx) -> &mut Conn {
        &mut self.slots[i as usize]
    }
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
    pub fn contains(&self, key: &ConnKey) -> bool {
        self.by_key.contains_key(key)
    }
    /// Records what a segment of a connection not tracked tells about its
    /// stream starts. Only the inside host vouches for where the stream
    /// towards it starts (its acknowledgements); outside senders can forge
    /// SYNs and acknowledgements with any number, so what they tell is
    /// kept apart from what the inside host's own SYN told.
    fn note_handshake(
        &mut self,
        key: ConnKey,
        dir: Direction,
        syn: bool,
        seq: u32,
        ack: Option<u32>,
    ) {
        if !syn && (dir == Direction::ToInside || ack.is_none()) {
            return;
        }
        let n = self.handshake_count;
        let e = self
            .handshakes
            .entry(key)
            .or_insert_with(|| Handshake::new(n));
        if syn && ack.is_none() {
            // A new handshake on the tuple: what older segments told is void.
            // (A SYN-ACK answers the current one: it must not void what the
            // inside host's own SYN told.)
            *e = Handshake::new(e.n);
        }
        match dir {
            Direction::FromInside => {
                if syn {
                    e.starts[0] = Some(seq.wrapping_add(1));
                    e.inside_syn = true;
                }
                if ack.is_some() {
                    e.starts[1] = ack;
                }
            }
            // The rules cannot see an inside client's SYN (masquerade is
            // set up after the forward hook): the server's SYN-ACK
            // acknowledging it is where that stream start is learned.
            Direction::ToInside => {
                if !e.inside_syn && ack.is_some() {
                    e.starts[0] = ack;
                }
            }
        }
        if e.n == n {
            self.handshake_count += 1;
            self.handshake_order.push_back((key, n));
        }
        if self.handshake_order.len() > 2 * self.handshakes.len() + 64 {
            let live = &self.handshakes;
            self.handshake_order
                .retain(|(k, n)| live.get(k).is_some_and(|e| e.n == *n));
        }
        while self.handshakes.len() > MAX_HANDSHAKES {
            let Some((k, n)) = self.handshake_order.pop_front() else {
                break;
            };
            if self.handshakes.get(&k).is_some_and(|e| e.n == n) {
                self.handshakes.remove(&k);
            }
        }
    }

    /// What the handshake of `key` told, if anything.
    fn handshake(&self, key: &ConnKey) -> Handshake {
        self.handshakes
            .get(key)
            .copied()
            .unwrap_or(Handshake::new(0))
    }

    /// The oldest tracked connection without calls, if any.
    fn oldest_callless(&mut self) -> Option<ConnIdx> {
        while let Some(i) = self.callless.pop_front() {
            if self
                .slots
                .get(i as usize)
                .is_some_and(|c| c.calls.is_empty())
            {
                return Some(i);
            }
        }
        None
    }

    fn insert(&mut self, c: Conn) -> ConnIdx {
        let key = c.key;
        self.handshakes.remove(&key);
        let i = self.slots.insert(c) as ConnIdx;
        self.by_key.insert(key, i);
        self.callless.push_back(i);
        if self.callless.len() > 2 * self.by_key.len() + 64 {
            let slots = &self.slots;
            self.callless
                .retain(|&i| slots.get(i as usize).is_some_and(|c| c.calls.is_empty()));
        }
        i
    }
    fn remove(&mut self, i: ConnIdx) -> Conn {
        let c = self.slots.remove(i as usize);
        self.by_key.remove(&c.key);
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

/// Message types whose sender's own Call ID names a new call.
fn creates_call(ty: ControlType) -> bool {
    use ControlType::*;
    matches!(
        ty,
        OutgoingCallRequest | IncomingCallRequest | OutgoingCallReply | IncomingCallReply
    )
}

fn starts_with_header(payload: &[u8]) -> bool {
    payload
        .first_chunk::<HEADER_LEN>()
        .is_some_and(|h| parse_header(h).is_ok())
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
        // Read with etherparse (see README, Development); written below
        // through the wire view, which etherparse does not offer.
        let Ok(tcp) = TcpSlice::from_slice(ip.payload()) else {
            self.stats.malformed += 1;
            return Verdict::Accept;
        };
        let (sp, dp) = (tcp.source_port(), tcp.destination_port());
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
        let (syn, fin, rst) = (tcp.syn(), tcp.fin(), tcp.rst());
        let seq = tcp.sequence_number();
        let data_seq = if syn { seq.wrapping_add(1) } else { seq };
        let payload_len = tcp.payload().len();
        let di = dir_index(dir);

        let mut known = self.conns.by_key.get(&key).copied();
        if let Some(ci) = known {
            // A SYN on a closed connection's tuple starts a new connection.
            // On a live one it changes nothing: a blind attacker can send
            // one with any sequence number, and a real new connection on
            // the tuple comes only after the old one's FIN or RST.
            if syn && self.conns.get(ci).closing.is_some() {
                self.forget_conn(ci);
                known = None;
            }
        }
        let ack = tcp.ack().then(|| tcp.acknowledgment_number());
        let ci = match known {
            Some(ci) => ci,
            None if syn || payload_len == 0 => {
                // A handshake costs no connection slot (a SYN flood must
                // not fill the table): its stream starts wait in a bounded
                // list until the first byte of data.
                self.conns.note_handshake(key, dir, syn, seq, ack);
                return Verdict::Accept;
            }
            None => {
                self.conns.note_handshake(key, dir, false, seq, ack);
                let hs = self.conns.handshake(&key);
                let header = starts_with_header(tcp.payload());
                let synced = match dir {
                    Direction::FromInside => hs.starts[0] == Some(data_seq) || header,
                    // Where the inside host said, or, before it said
                    // anything, at a message start (unconfirmed).
                    Direction::ToInside => hs.starts[1].map_or(header, |s| s == data_seq),
                };
                if !synced {
                    // Untranslatable: its bytes may hold Call IDs. TCP
                    // retransmits it; PPTP peers send each message in its
                    // own segment, so a retransmission starts a message.
                    self.stats.unsynced_segments += 1;
                    return Verdict::Drop(DropReason::Unsynced);
                }
                let Some(ci) = self.admit(key, now) else {
                    return Verdict::Drop(DropReason::ConnectionLimit);
                };
                let conn = self.conns.get_mut(ci);
                // This segment's stream starts here; the other one where
                // the inside host said (an outside sender's word for the
                // inside host's stream would let it pass as retransmitted).
                conn.dirs[di].parser = Some(Parser::new(data_seq));
                let other = match dir {
                    Direction::FromInside => hs.starts[1],
                    Direction::ToInside => hs.starts[0].filter(|_| hs.inside_syn),
                };
                conn.dirs[1 - di].parser = other.map(Parser::new);
                if dir == Direction::ToInside && hs.starts[1].is_none() {
                    conn.unconfirmed = Some(data_seq);
                }
                ci
            }
        };
        let conn = self.conns.get_mut(ci);
        conn.last_seen = now;
        if let Some(ack) = ack {
            conn.dirs[1 - di].forget_acked(ack);
            if dir == Direction::FromInside {
                self.note_inside_ack(ci, ack);
            }
        }
        let conn = self.conns.get_mut(ci);

        if payload_len > 0 {
            if conn.dirs[di].parser.is_none() {
                let header = starts_with_header(tcp.payload());
                let synced = match (dir, conn.inside_ack) {
                    (Direction::ToInside, Some(ack)) => header && ack == data_seq,
                    _ => header,
                };
                if !synced {
                    self.stats.unsynced_segments += 1;
                    return Verdict::Drop(DropReason::Unsynced);
                }
                conn.dirs[di].parser = Some(Parser::new(data_seq));
                if dir == Direction::ToInside && conn.inside_ack.is_none() {
                    conn.unconfirmed = Some(data_seq);
                }
            }
            if let Some(v) = self.feed_segment(now, ci, dir, data_seq, tcp.payload()) {
                return v;
            }
        }

        let mut modified = false;
        let conn = self.conns.get(ci);
        // The same bytes etherparse checked above.
        let mut tcp = TcpSegment::new_unchecked(ip.payload_mut());
        for &(pseq, byte) in &conn.dirs[di].patches {
            let off = seq_diff(pseq, data_seq);
            if off >= 0 && (off as usize) < payload_len {
                tcp.patch_payload_byte(off as usize, byte);
                modified = true;
            }
        }

        // FIN and RST count only at the stream position reached: off-path
        // senders cannot know it, and ending the calls on a spoofed one
        // would cut GRE while both peers keep their connection.
        let next = conn.dirs[di].parser.as_ref().map(|p| p.next);
        let at_rst = next == Some(data_seq);
        let at_fin = next == Some(data_seq.wrapping_add(payload_len as u32));
        if (rst && at_rst) || (fin && at_fin) {
            self.close_conn(ci, now);
        } else if rst || fin {
            self.stats.ignored_teardowns += 1;
        }
        if modified {
            Verdict::Modified
        } else {
            Verdict::Accept
        }
    }

    /// The inside host acknowledged up to `ack`. A stream towards it that
    /// was picked up unconfirmed is confirmed when the host acknowledges
    /// within what it was sent since; anything else shows the pick-up point
    /// was forged (the host never got those bytes as new), and the stream
    /// is picked up again where the host says.
    fn note_inside_ack(&mut self, ci: ConnIdx, ack: u32) {
        let conn = self.conns.get_mut(ci);
        conn.inside_ack = Some(ack);
        let Some(start) = conn.unconfirmed.take() else {
            return;
        };
        let d = &mut conn.dirs[1];
        let Some(p) = d.parser.as_ref() else {
            return;
        };
        if seq_diff(ack, start) < 0 || seq_diff(ack, p.next) > 0 {
            d.parser = None;
            d.patches.clear();
            self.stats.forged_resyncs += 1;
        }
    }

    /// A slot for a new connection: a free one, or the one of the oldest
    /// connection without calls (it loses nothing it cannot get back: it is
    /// tracked again from its next message). `None` when every slot holds
    /// calls.
    fn admit(&mut self, key: ConnKey, now: Stamp) -> Option<ConnIdx> {
        if self.conns.len() >= self.cfg.max_connections {
            match self.conns.oldest_callless() {
                Some(old) => {
                    self.stats.connections_evicted += 1;
                    self.forget_conn(old);
                }
                None => {
                    self.stats.connection_limit += 1;
                    self.push_event(Event::ConnectionRefused { conn: key });
                    return None;
                }
            }
        }
        Some(self.conns.insert(Conn::new(key, now)))
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
        let desynced = conn.desynced;
        let parser = conn.dirs[di].parser.as_mut()?;
        let ahead = seq_diff(data_seq, parser.next);
        if ahead > 0 {
            self.stats.dropped_out_of_order += 1;
            return Some(Verdict::Drop(DropReason::OutOfOrder));
        }
        let skip = ahead.unsigned_abs() as usize;
        if skip >= payload.len() {
            return None; // a pure retransmission: patches cover it
        }
        if desynced {
            // Not parsed any more, but the position still counts for FIN.
            parser.next = data_seq.wrapping_add(payload.len() as u32);
            return None;
        }
        // Work on a copy so that a refused segment leaves no trace.
        let mut parser = parser.clone();
        let mut patches = std::mem::take(&mut conn.dirs[di].patches);
        let patches_before = patches.len();
        self.created.clear();
        let events_before = self.events.len();
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
                self.roll_back_created(ci, events_before);
                self.stats.dropped_call_refused += 1;
                return Some(Verdict::Drop(DropReason::CallRefused));
            }
        };
        // Keep what was translated, up to a bad header if there was one.
        conn.dirs[di].parser = Some(parser);
        if patches.len() > PATCH_LOG {
            let evicted = patches.len() - PATCH_LOG;
            self.stats.patches_evicted += evicted as u64;
            patches.drain(..evicted);
        }
        conn.dirs[di].patches = patches;
        if let Some(error) = desync {
            conn.desynced = true;
            // Not parsed any more, but the position still counts for FIN.
            if let Some(p) = conn.dirs[di].parser.as_mut() {
                p.next = data_seq.wrapping_add(payload.len() as u32);
            }
            let key = conn.key;
            self.stats.desyncs += 1;
            self.push_event(Event::Desync {
                conn: key,
                direction: dir,
                error,
            });
        }
        self.stats.calls_active = self.calls.live() as u64;
        None
    }

    /// Unmakes the calls a refused segment created, newest first, live or
    /// already ended by the same segment: none of their bytes left, so no
    /// one may know them. Their events (from `events_before` on) go too.
    fn roll_back_created(&mut self, ci: ConnIdx, events_before: usize) {
        let created = std::mem::take(&mut self.created);
        let mut gone = Vec::with_capacity(created.len());
        for &idx in created.iter().rev() {
            let c = self.calls.get(idx);
            gone.push((c.outside_peer, c.nat_id));
            if let CallState::Ended(cause) = c.state {
                self.stats.ended[cause as usize] -= 1;
            }
            let id = c.inside_id;
            let calls = &mut self.conns.get_mut(ci).calls;
            calls.retain(|&c| c != idx);
            let older = calls
                .iter()
                .rev()
                .copied()
                .find(|&i| self.calls.get(i).inside_id == id);
            self.calls.forget(idx, older);
            self.stats.calls_created -= 1;
        }
        let mut i = events_before;
        while i < self.events.len() {
            let call = match &self.events[i] {
                Event::CallStarted(c) | Event::CallAnswered(c) | Event::CallEnded(c, _) => {
                    Some((c.outside_peer, c.nat_id))
                }
                _ => None,
            };
            if call.is_some_and(|k| gone.contains(&k)) {
                self.events.remove(i);
            } else {
                i += 1;
            }
        }
        self.created = created;
        self.stats.calls_active = self.calls.live() as u64;
    }

    fn on_item(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        dir: Direction,
        item: Item<'_>,
    ) -> Result<Option<u8>, Refused> {
        match item {
            Item::FieldHigh { ty, role, high } => Ok(self.translate_high(ci, dir, ty, role, high)),
            Item::FieldLow {
                ty,
                role,
                value,
                high_out,
            } => self.translate_low(now, ci, dir, ty, role, value, high_out),
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

    /// The first byte of a Call-ID field on the wire. It depends on the
    /// connection's high-byte map and that byte only (the second may be in
    /// the next segment).
    fn translate_high(
        &mut self,
        ci: ConnIdx,
        dir: Direction,
        ty: ControlType,
        role: Role,
        high: u8,
    ) -> Option<u8> {
        let own = role == Role::Own;
        let ids = &self.calls.ids;
        // A Call-Disconnect-Notify names the sender's own call (RFC 2637)
        // or the receiver's (Linux, pptp-linux): where a byte could start
        // an id of either, the sender's meaning wins and the byte stays.
        let cdn = ty == ControlType::CallDisconnectNotify;
        match (dir, own) {
            (Direction::FromInside, true) => match ids.block_of(ci, high) {
                Some(_) if cdn && ids.outside_high_live(ci, high) => None,
                Some(block) => Some(block),
                None if creates_call(ty) => {
                    let peer = *self.conns.get(ci).key.outside.ip();
                    ids.pick_block(peer, ci, high)
                }
                None => None,
            },
            (Direction::FromInside, false) => None,
            (Direction::ToInside, true) if !cdn => None,
            (Direction::ToInside, _) => {
                if own && ids.outside_high_live(ci, high) {
                    return None;
                }
                ids.high_of(ci, high)
            }
        }
    }

    /// The second byte of a Call-ID field on the wire, given the whole
    /// field and its first byte as it went out. A call request from inside
    /// creates its call here.
    #[allow(clippy::too_many_arguments)]
    fn translate_low(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        dir: Direction,
        ty: ControlType,
        role: Role,
        value: u16,
        high_out: u8,
    ) -> Result<Option<u8>, Refused> {
        let own = role == Role::Own;
        // Only an id whose first byte went out as this one's can be written:
        // anything else would name another call.
        let low_if = |id: u16| ((id >> 8) as u8 == high_out).then_some(id as u8);
        Ok(match (dir, own) {
            (Direction::FromInside, true) => {
                let idx = if creates_call(ty) {
                    Some(self.call_for_inside(now, ci, value, high_out)?)
                } else {
                    self.find_by_inside(ci, value)
                };
                idx.and_then(|i| low_if(self.calls.get(i).nat_id))
            }
            (Direction::FromInside, false) => None,
            (Direction::ToInside, true) if ty != ControlType::CallDisconnectNotify => None,
            (Direction::ToInside, _) => {
                if own && self.live_by_outside(ci, value).is_some() {
                    None
                } else {
                    self.find_by_nat(ci, value)
                        .and_then(|i| low_if(self.calls.get(i).inside_id))
                }
            }
        })
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
        // The parser hands over whole messages with a valid header only.
        let Ok(msg) = ControlMessage::new_checked(bytes) else {
            return;
        };
        let (own, peer) = (msg.own_call_id(), msg.peer_call_id());
        match ty {
            StopCtrlConnRequest | StopCtrlConnReply => {
                self.end_conn_calls(ci, EndCause::StopControl, now)
            }
            OutgoingCallReply | IncomingCallReply => {
                let (Some(own), Some(peer)) = (own, peer) else {
                    return;
                };
                let call = match dir {
                    Direction::FromInside => self.live_by_inside(ci, own).map(|i| (i, peer)),
                    Direction::ToInside => self
                        .find_by_nat(ci, peer)
                        .filter(|&i| self.calls.get(i).is_live())
                        .map(|i| (i, own)),
                };
                if let Some((idx, outside_id)) = call {
                    self.calls.set_outside_id(idx, outside_id);
                    if msg.reply_result() == Some(RESULT_SUCCESS) {
                        let c = self.calls.get_mut(idx);
                        c.state = CallState::Established;
                        c.last_activity = now;
                        let info = self.info(idx, now);
                        self.push_event(Event::CallAnswered(info));
                    } else {
                        self.end_call(idx, EndCause::ReplyFailure, now);
                    }
                }
            }
            CallDisconnectNotify => {
                let Some(id) = own else {
                    return;
                };
                // Either meaning of the field: the sender's own call, or the
                // receiver's (as the Linux helper reads it).
                let idx = match dir {
                    Direction::FromInside => self
                        .live_by_inside(ci, id)
                        .or_else(|| self.live_by_outside(ci, id)),
                    // The peer's own id first: that is what the field
                    // means when both fit (RFC 2637).
                    Direction::ToInside => self.live_by_outside(ci, id).or_else(|| {
                        self.find_by_nat(ci, id)
                            .filter(|&i| self.calls.get(i).is_live())
                    }),
                };
                if let Some(idx) = idx {
                    self.end_call(idx, EndCause::Disconnect, now);
                }
            }
            _ => {}
        }
    }

    /// The live call of `inside_id` on this connection, or a new one whose
    /// NAT id is in `block` (the first byte already on the wire).
    fn call_for_inside(
        &mut self,
        now: Stamp,
        ci: ConnIdx,
        inside_id: u16,
        block: u8,
    ) -> Result<CallIdx, Refused> {
        if let Some(idx) = self.live_by_inside(ci, inside_id) {
            return Ok(idx);
        }
        let key = self.conns.get(ci).key;
        let (host, peer) = (*key.inside.ip(), *key.outside.ip());
        let high = (inside_id >> 8) as u8;
        let nat_id = if self.calls.live() >= self.cfg.max_calls {
            Err(RefuseReason::TotalLimit)
        } else if self.calls.host_calls(host) as usize >= self.cfg.max_calls_per_host {
            Err(RefuseReason::HostLimit)
        } else {
            let start = match self.cfg.id_policy {
                IdPolicy::Keep => inside_id as u8,
                IdPolicy::Random => self.random_byte(),
            };
            let ids = &self.calls.ids;
            ids.can_map(ci, high, block)
                .then(|| ids.free_in_block(peer, block, start, self.cfg.id_partition))
                .flatten()
                .ok_or_else(|| {
                    let (live, quarantined) = ids.peer_counts(peer);
                    if live + quarantined >= 1 << 16 {
                        RefuseReason::IdSpaceExhausted
                    } else {
                        RefuseReason::BlockFull
                    }
                })
        };
        let nat_id = match nat_id {
            Ok(id) => id,
            Err(reason) => {
                match reason {
                    RefuseReason::IdSpaceExhausted | RefuseReason::BlockFull => {
                        self.stats.alloc_failures += 1
                    }
                    RefuseReason::TotalLimit => self.stats.refused_total_limit += 1,
                    RefuseReason::HostLimit => self.stats.refused_host_limit += 1,
                }
                let (live_ids, quarantined_ids) = self.calls.ids.peer_counts(peer);
                self.push_event(Event::CallRefused {
                    conn: key,
                    inside_id,
                    reason,
                    host_calls: self.calls.host_calls(host),
                    live_ids,
                    quarantined_ids,
                });
                return Err(Refused);
            }
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
        // Announced now, so that an end in the same segment comes after.
        self.stats.calls_created += 1;
        let info = self.info(idx, now);
        self.push_event(Event::CallStarted(info));
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
        let limit = match sc.quarantine_left {
            None => self.calls.live(),
            Some(_) => self.calls.quarantined(),
        };
        if self.calls.ids.is_held(peer, sc.nat_id)
            || limit >= self.cfg.max_calls
            || self.calls.host_calls(host) as usize >= self.cfg.max_calls_per_host
        {
            return false;
        }
        let ci = match self.conns.by_key.get(&sc.conn) {
            Some(&ci) => ci,
            None if self.conns.len() >= self.cfg.max_connections => return false,
            None => self.conns.insert(Conn::new(sc.conn, now)),
        };
        let (high, block) = ((sc.inside_id >> 8) as u8, (sc.nat_id >> 8) as u8);
        if self.live_by_inside(ci, sc.inside_id).is_some()
            || !self.calls.ids.can_map(ci, high, block)
        {
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
        if let Some(left) = sc.quarantine_left {
            // Ended as long ago as leaves it `left` seconds; not counted
            // as created or ended again, and nothing to announce.
            let quarantine = secs(self.cfg.quarantine);
            let ended = now.saturating_sub(quarantine.saturating_sub(left));
            self.calls.end(idx, EndCause::ConnTimeout, ended);
            return true;
        }
        self.stats.calls_created += 1;
        let info = self.info(idx, now);
        self.push_event(Event::CallStarted(info));
        true
    }

    /// Applies one call replicated from the other node of a pair (see
    /// [`Alg::apply_replicated`]).
    pub(super) fn apply_replicated_call(&mut self, now: Stamp, sc: &SavedCall) -> bool {
        let Some(idx) = self.calls.by_nat(*sc.conn.outside.ip(), sc.nat_id) else {
            return self.restore_call(now, sc);
        };
        let c = self.calls.get(idx);
        let same = c.is_live()
            && c.conn != DETACHED
            && self.conns.get(c.conn).key == sc.conn
            && c.inside_id == sc.inside_id;
        if !same {
            return false;
        }
        if sc.quarantine_left.is_some() {
            self.end_call(idx, EndCause::Peer, now);
            return true;
        }
        let mut changed = false;
        if let Some(oid) = sc.outside_id.filter(|&o| c.outside_id != Some(o)) {
            self.calls.set_outside_id(idx, oid);
            changed = true;
        }
        let c = self.calls.get_mut(idx);
        if sc.established && c.state == CallState::Requested {
            c.state = CallState::Established;
            c.last_activity = now;
            let info = self.info(idx, now);
            self.push_event(Event::CallAnswered(info));
            changed = true;
        }
        changed
    }

    pub(super) fn refresh_replicated_call(&mut self, now: Stamp, sc: &SavedCall) -> bool {
        let Some(idx) = self.calls.by_nat(*sc.conn.outside.ip(), sc.nat_id) else {
            return false;
        };
        let c = self.calls.get(idx);
        let ci = c.conn;
        if !c.is_live() || ci == DETACHED || self.conns.get(ci).key != sc.conn {
            return false;
        }
        if c.inside_id != sc.inside_id {
            return false;
        }
        self.calls.get_mut(idx).last_activity = now;
        let conn = self.conns.get_mut(ci);
        if conn.closing.is_none() {
            conn.last_seen = now;
        }
        true
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

//! The NAT Call-ID space towards each outside peer, and the per-connection
//! high-byte maps that let a Call ID split between two TCP segments leave
//! translated without holding the first segment back.
//!
//! A NAT id is a *block* (its high byte) and a *slot* (its low byte). Every
//! control connection maps each inside high byte its calls use to one block,
//! one-to-one, for as long as it has a call (live or in quarantine) with
//! that high byte. The first byte of a Call-ID field is then translated
//! from the connection and that byte alone, before the second byte is
//! known; the second byte from the whole id. Blocks are shared: any number
//! of connections may map into one block, each call taking its own slot,
//! so the number of calls towards a peer is bounded by the 65,536 ids, not
//! by how inside hosts choose their ids. A connection's first call with a
//! high byte takes the block with the most free slots (its own high byte
//! when that block is empty), so that connections which grow to many calls
//! each find room in their block.

use super::config::IdPartition;
use super::table::ConnIdx;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// Slots held (by a live call or one in quarantine) in one block of one
/// peer's id space.
#[derive(Debug, Default, Clone)]
struct Block {
    held: [u64; 4],
    count: u16,
}

/// One peer's id space: which blocks hold any id, and how many ids are
/// held by live calls and by calls in quarantine.
#[derive(Debug, Default, Clone)]
struct PeerIds {
    used: [u64; 4],
    live: u32,
    quarantined: u32,
    /// Ids held per block, kept from the first time every block holds ids
    /// (a peer with at least 256 calls): then the emptiest block is found
    /// by a scan of 512 bytes instead of 256 lookups.
    counts: Option<Box<[u16; 256]>>,
}

/// One entry of a connection's maps: an inside high byte and its block
/// with the number of calls holding it (`OUTSIDE` clear), or a high byte
/// of live calls' outside ids with their number (`OUTSIDE` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    count: u32,
    high: u8,
    block: u8,
    kind: u8,
}

const INSIDE: u8 = 0;
const OUTSIDE: u8 = 1;

/// The ids held towards every peer, and every connection's high-byte map.
#[derive(Debug, Default)]
pub struct Ids {
    /// Keyed by peer and block (`peer << 8 | block`); only non-empty blocks.
    blocks: FxHashMap<u64, Block>,
    peers: FxHashMap<Ipv4Addr, PeerIds>,
    /// Per connection index: its inside high bytes with their blocks, and
    /// the high bytes of its live calls' outside ids. A Call-Disconnect-
    /// Notify may name either side's call; the latter tell whether its
    /// first byte can be the peer's own id. A few entries per connection,
    /// searched linearly: smaller than any index for the common case.
    conns: Vec<Vec<Entry>>,
}

fn block_key(peer: Ipv4Addr, block: u8) -> u64 {
    (u64::from(u32::from(peer)) << 8) | u64::from(block)
}

fn bit(bits: &[u64; 4], i: u8) -> bool {
    bits[usize::from(i >> 6)] & (1 << (i & 63)) != 0
}

fn set_bit(bits: &mut [u64; 4], i: u8, on: bool) {
    let w = &mut bits[usize::from(i >> 6)];
    if on {
        *w |= 1 << (i & 63);
    } else {
        *w &= !(1 << (i & 63));
    }
}

/// The first clear bit at or after `start`, wrapping around.
fn first_clear_from(bits: &[u64; 4], start: u8) -> Option<u8> {
    let (sw, sb) = (usize::from(start >> 6), u32::from(start & 63));
    let found = |w: usize, free: u64| (w * 64 + free.trailing_zeros() as usize) as u8;
    for (w, &word) in bits.iter().enumerate().skip(sw) {
        let mut free = !word;
        if w == sw {
            free &= !0u64 << sb;
        }
        if free != 0 {
            return Some(found(w, free));
        }
    }
    for (w, &word) in bits.iter().enumerate().take(sw + 1) {
        let mut free = !word;
        if w == sw {
            free &= (1u64 << sb) - 1;
        }
        if free != 0 {
            return Some(found(w, free));
        }
    }
    None
}

impl Ids {
    /// Whether `id` towards `peer` is held by some call.
    pub fn is_held(&self, peer: Ipv4Addr, id: u16) -> bool {
        self.blocks
            .get(&block_key(peer, (id >> 8) as u8))
            .is_some_and(|b| bit(&b.held, id as u8))
    }

    /// Marks `id` held by a new live call.
    pub fn hold(&mut self, peer: Ipv4Addr, id: u16) {
        let b = self
            .blocks
            .entry(block_key(peer, (id >> 8) as u8))
            .or_default();
        debug_assert!(!bit(&b.held, id as u8), "id {id:#06x} held twice");
        set_bit(&mut b.held, id as u8, true);
        b.count += 1;
        let p = self.peers.entry(peer).or_default();
        set_bit(&mut p.used, (id >> 8) as u8, true);
        p.live += 1;
        match &mut p.counts {
            Some(counts) => counts[usize::from(id >> 8)] += 1,
            None if p.used == [!0; 4] => {
                let mut counts = Box::new([0u16; 256]);
                for (block, n) in counts.iter_mut().enumerate() {
                    *n = self.blocks[&block_key(peer, block as u8)].count;
                }
                p.counts = Some(counts);
            }
            None => {}
        }
    }

    /// A live call holding `id` ended: the id stays held, in quarantine.
    pub fn quarantine(&mut self, peer: Ipv4Addr) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.live -= 1;
            p.quarantined += 1;
        }
    }

    /// Frees `id`, held by a live call (`live`) or one in quarantine.
    pub fn release(&mut self, peer: Ipv4Addr, id: u16, live: bool) {
        let key = block_key(peer, (id >> 8) as u8);
        let Some(b) = self.blocks.get_mut(&key) else {
            debug_assert!(false, "id {id:#06x} not held");
            return;
        };
        set_bit(&mut b.held, id as u8, false);
        b.count -= 1;
        let empty = b.count == 0;
        if empty {
            self.blocks.remove(&key);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if live {
                p.live -= 1;
            } else {
                p.quarantined -= 1;
            }
            if empty {
                set_bit(&mut p.used, (id >> 8) as u8, false);
            }
            if let Some(counts) = &mut p.counts {
                counts[usize::from(id >> 8)] -= 1;
            }
            if p.live == 0 && p.quarantined == 0 {
                self.peers.remove(&peer);
            }
        }
    }

    /// Ids towards `peer` held by live calls and by calls in quarantine.
    pub fn peer_counts(&self, peer: Ipv4Addr) -> (u32, u32) {
        self.peers
            .get(&peer)
            .map_or((0, 0), |p| (p.live, p.quarantined))
    }

    /// A free id in `block` towards `peer` among the slots `part` leaves
    /// to this engine: the slot `start` if free, otherwise the next one.
    pub fn free_in_block(
        &self,
        peer: Ipv4Addr,
        block: u8,
        start: u8,
        part: IdPartition,
    ) -> Option<u16> {
        let held = self
            .blocks
            .get(&block_key(peer, block))
            .map_or([0; 4], |b| b.held);
        let taken = held.map(|w| w | part.foreign_slots());
        let slot = first_clear_from(&taken, start)?;
        Some(u16::from(block) << 8 | u16::from(slot))
    }

    /// The block for connection `conn`'s first call with inside high byte
    /// `high` towards `peer`: the block with the most free slots among
    /// those the connection does not map yet, `high` itself first, then the
    /// blocks after it. `None` when every such block is full.
    pub fn pick_block(&self, peer: Ipv4Addr, conn: ConnIdx, high: u8) -> Option<u8> {
        let Some(p) = self.peers.get(&peer) else {
            return Some(high);
        };
        // A block the connection maps holds ids, so an empty one is free
        // for it.
        if let Some(b) = first_clear_from(&p.used, high) {
            return Some(b);
        }
        // Every block holds ids (so the counts are kept): the emptiest one
        // the connection does not map, in one pass.
        let counts = p.counts.as_deref()?;
        let mut mapped = [0u64; 4];
        for e in self.entries(conn).iter().filter(|e| e.kind == INSIDE) {
            set_bit(&mut mapped, e.block, true);
        }
        let mut best: Option<(u8, u16)> = None;
        for i in 0..=255u8 {
            let b = high.wrapping_add(i);
            let held = counts[usize::from(b)];
            if held < 256 && !bit(&mapped, b) && best.is_none_or(|(_, h)| held < h) {
                best = Some((b, held));
            }
        }
        best.map(|(b, _)| b)
    }

    fn entries(&self, conn: ConnIdx) -> &[Entry] {
        self.conns.get(conn as usize).map_or(&[], Vec::as_slice)
    }

    fn entries_mut(&mut self, conn: ConnIdx) -> &mut Vec<Entry> {
        let i = conn as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, Vec::new);
        }
        &mut self.conns[i]
    }

    /// The block connection `conn` maps inside high byte `high` to.
    #[inline]
    pub fn block_of(&self, conn: ConnIdx, high: u8) -> Option<u8> {
        self.entries(conn)
            .iter()
            .find(|e| e.kind == INSIDE && e.high == high)
            .map(|e| e.block)
    }

    /// The inside high byte connection `conn` maps to `block`.
    #[inline]
    pub fn high_of(&self, conn: ConnIdx, block: u8) -> Option<u8> {
        self.entries(conn)
            .iter()
            .find(|e| e.kind == INSIDE && e.block == block)
            .map(|e| e.high)
    }

    /// Whether a new call of `conn` with inside high byte `high` may take
    /// an id in `block` without breaking the one-to-one map.
    pub fn can_map(&self, conn: ConnIdx, high: u8, block: u8) -> bool {
        match self.block_of(conn, high) {
            Some(b) => b == block,
            None => self.high_of(conn, block).is_none(),
        }
    }

    /// Adds `add` (+1 or -1) to the entry of `kind` and `high`, creating it
    /// with `block` or removing it at zero.
    fn count(&mut self, conn: ConnIdx, kind: u8, high: u8, block: u8, add: i32) {
        let v = self.entries_mut(conn);
        match v.iter().position(|e| e.kind == kind && e.high == high) {
            Some(i) => {
                debug_assert!(kind == OUTSIDE || add < 0 || v[i].block == block);
                v[i].count = v[i].count.wrapping_add_signed(add);
                if v[i].count == 0 {
                    v.swap_remove(i);
                    if v.is_empty() {
                        *v = Vec::new();
                    }
                }
            }
            None if add > 0 => {
                v.push(Entry {
                    count: 1,
                    high,
                    block,
                    kind,
                });
                // Most connections hold one or two entries for life.
                v.shrink_to_fit();
            }
            None => debug_assert!(false, "connection {conn}: no entry {kind}/{high:#04x}"),
        }
    }

    /// A call of `conn` with inside high byte `high` now holds an id in
    /// `block` (see [`Ids::can_map`]).
    pub fn map_call(&mut self, conn: ConnIdx, high: u8, block: u8) {
        debug_assert!(self.can_map(conn, high, block));
        self.count(conn, INSIDE, high, block, 1);
    }

    /// A call of `conn` with inside high byte `high` left the connection.
    pub fn unmap_call(&mut self, conn: ConnIdx, high: u8) {
        self.count(conn, INSIDE, high, 0, -1);
    }

    /// A live call of `conn` now has (`add`) or no longer has an outside id
    /// with high byte `high`.
    pub fn count_outside(&mut self, conn: ConnIdx, high: u8, add: bool) {
        self.count(conn, OUTSIDE, high, 0, if add { 1 } else { -1 });
    }

    /// Whether a live call of `conn` has an outside id with high byte `high`.
    #[inline]
    pub fn outside_high_live(&self, conn: ConnIdx, high: u8) -> bool {
        self.entries(conn)
            .iter()
            .any(|e| e.kind == OUTSIDE && e.high == high)
    }

    /// Checks the counts against `calls` (peer, id, live, connection, inside
    /// id, live outside id): for tests. `Err` says what disagrees.
    pub fn check(
        &self,
        calls: impl Iterator<Item = (Ipv4Addr, u16, bool, Option<(ConnIdx, u16, Option<u16>)>)>,
    ) -> Result<(), String> {
        let mut want = Ids::default();
        for (peer, id, live, conn) in calls {
            if want.is_held(peer, id) {
                return Err(format!("{peer} id {id:#06x} held by two calls"));
            }
            want.hold(peer, id);
            if !live {
                want.quarantine(peer);
            }
            if let Some((ci, inside, outside)) = conn {
                let (high, block) = ((inside >> 8) as u8, (id >> 8) as u8);
                if !want.can_map(ci, high, block) {
                    return Err(format!(
                        "connection {ci}: {high:#04x} -> {block:#04x} breaks its map"
                    ));
                }
                want.map_call(ci, high, block);
                if let (true, Some(o)) = (live, outside) {
                    want.count_outside(ci, (o >> 8) as u8, true);
                }
            }
        }
        let same = |a: &Ids, b: &Ids| {
            let blocks = |i: &Ids| {
                let mut v: Vec<_> = i
                    .blocks
                    .iter()
                    .map(|(k, b)| (*k, b.held, b.count))
                    .collect();
                v.sort_unstable();
                v
            };
            let peers = |i: &Ids| {
                let mut v: Vec<_> = i
                    .peers
                    .iter()
                    .map(|(k, p)| (*k, p.used, p.live, p.quarantined))
                    .collect();
                v.sort_unstable();
                v
            };
            let conns = |i: &Ids| {
                let v: Vec<_> = (0..a.conns.len().max(b.conns.len()))
                    .map(|c| {
                        let mut e: Vec<_> = i
                            .entries(c as ConnIdx)
                            .iter()
                            .map(|e| (e.kind, e.high, e.block, e.count))
                            .collect();
                        e.sort_unstable();
                        e
                    })
                    .collect();
                v
            };
            blocks(a) == blocks(b) && peers(a) == peers(b) && conns(a) == conns(b)
        };
        for (peer, p) in &self.peers {
            for (b, &n) in p.counts.iter().flat_map(|c| c.iter().enumerate()) {
                let held = self
                    .blocks
                    .get(&block_key(*peer, b as u8))
                    .map_or(0, |blk| blk.count);
                if n != held {
                    return Err(format!("{peer} block {b:#04x}: count {n}, {held} held"));
                }
            }
        }
        if same(self, &want) {
            Ok(())
        } else {
            Err(format!("id space {self:?}, recomputed {want:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_clear_wraps_and_skips_held() {
        let mut b = [0u64; 4];
        assert_eq!(first_clear_from(&b, 0), Some(0));
        assert_eq!(first_clear_from(&b, 200), Some(200));
        for i in 200..=255u8 {
            set_bit(&mut b, i, true);
        }
        assert_eq!(first_clear_from(&b, 200), Some(0));
        set_bit(&mut b, 0, true);
        assert_eq!(first_clear_from(&b, 255), Some(1));
        assert_eq!(first_clear_from(&b, 64), Some(64));
        b = [!0; 4];
        assert_eq!(first_clear_from(&b, 17), None);
        set_bit(&mut b, 63, false);
        assert_eq!(first_clear_from(&b, 64), Some(63));
        assert_eq!(first_clear_from(&b, 63), Some(63));
    }

    #[test]
    fn blocks_fill_emptiest_first_and_never_give_a_held_id() {
        let peer = Ipv4Addr::new(192, 0, 2, 1);
        let mut ids = Ids::default();
        // Every connection's first call with high byte 0x40: the own block
        // first, then the empty ones after it.
        for conn in 0..256u32 {
            let b = ids.pick_block(peer, conn, 0x40).unwrap();
            assert_eq!(b, 0x40u8.wrapping_add(conn as u8));
            let id = ids.free_in_block(peer, b, 0, IdPartition::None).unwrap();
            ids.hold(peer, id);
            ids.map_call(conn, 0x40, b);
        }
        // All blocks hold one id: the next takes the emptiest, never one the
        // connection maps already.
        ids.map_call(300, 0x01, 0x40);
        ids.hold(peer, 0x4001);
        assert_eq!(ids.pick_block(peer, 300, 0x40), Some(0x41));
        assert_eq!(ids.pick_block(peer, 301, 0x40), Some(0x41));
        // Fill block 0x41 entirely: it is never picked again.
        for slot in 0..=255u16 {
            if !ids.is_held(peer, 0x4100 | slot) {
                ids.hold(peer, 0x4100 | slot);
            }
        }
        assert_eq!(ids.free_in_block(peer, 0x41, 9, IdPartition::None), None);
        assert_eq!(ids.pick_block(peer, 302, 0x41), Some(0x42));
        assert_eq!(ids.peer_counts(peer), (256 + 1 + 255, 0));
        ids.quarantine(peer);
        assert_eq!(ids.peer_counts(peer), (256 + 255, 1));
        ids.release(peer, 0x4105, false);
        assert_eq!(
            ids.free_in_block(peer, 0x41, 0, IdPartition::None),
            Some(0x4105)
        );
        assert_eq!(ids.peer_counts(peer), (256 + 255, 0));
    }

    #[test]
    fn a_connection_maps_one_to_one() {
        let mut ids = Ids::default();
        ids.map_call(1, 0x40, 0x07);
        ids.map_call(1, 0x40, 0x07);
        assert!(ids.can_map(1, 0x40, 0x07));
        assert!(!ids.can_map(1, 0x40, 0x08), "one block per high byte");
        assert!(!ids.can_map(1, 0x41, 0x07), "one high byte per block");
        assert!(ids.can_map(2, 0x41, 0x07), "other connections are free");
        assert_eq!(ids.high_of(1, 0x07), Some(0x40));
        ids.unmap_call(1, 0x40);
        assert_eq!(ids.block_of(1, 0x40), Some(0x07));
        ids.unmap_call(1, 0x40);
        assert_eq!(ids.block_of(1, 0x40), None);
        assert_eq!(ids.high_of(1, 0x07), None);
        assert!(ids.can_map(1, 0x41, 0x07));
    }

    #[test]
    fn a_partition_hands_out_its_own_half_only() {
        let peer = Ipv4Addr::new(192, 0, 2, 1);
        let mut ids = Ids::default();
        // The other node's call, replicated in, holds an odd slot.
        ids.hold(peer, 0x4003);
        for part in [IdPartition::Even, IdPartition::Odd] {
            for start in 0..=255u8 {
                let id = ids.free_in_block(peer, 0x40, start, part).unwrap();
                assert!(
                    part.owns(id) && !ids.is_held(peer, id),
                    "{part:?} {id:#06x}"
                );
            }
        }
        assert_eq!(
            ids.free_in_block(peer, 0x40, 3, IdPartition::Odd),
            Some(0x4005)
        );
        assert_eq!(
            ids.free_in_block(peer, 0x40, 3, IdPartition::Even),
            Some(0x4004)
        );
        assert_eq!(
            ids.free_in_block(peer, 0x40, 255, IdPartition::Even),
            Some(0x4000)
        );
        // A half fills after 128 ids, the other half still has room.
        for slot in (0..=255u16).step_by(2) {
            ids.hold(peer, 0x4100 | slot);
        }
        assert_eq!(ids.free_in_block(peer, 0x41, 7, IdPartition::Even), None);
        assert_eq!(
            ids.free_in_block(peer, 0x41, 7, IdPartition::Odd),
            Some(0x4107)
        );
        assert_eq!(
            ids.free_in_block(peer, 0x41, 7, IdPartition::None),
            Some(0x4107)
        );
    }
}

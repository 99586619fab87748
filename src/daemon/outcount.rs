//! Packets out: the GRE inside hosts send for their calls, which masquerade carries out
//! without the daemon, counted by the kernel in the set `gre_out` (see [`crate::nft::GreOut`]).
//! The packet thread keeps one element per call whose outside peer's Call ID is known (added
//! when the call starts or is answered, so before the message that tells the inside host that
//! id leaves), reads the counters with the fast path's and gives the engine the deltas (the
//! call's `packets_out`, its idle timer, the `call_gre_out` counter), and reads a call's last
//! delta when it ends, for the call-end log line. A call event's add or removal goes in the
//! offload controller's one batch for the event (see [`super::offload`]).

use super::shared::SharedRef;
use crate::alg::CallInfo;
use crate::nft::{ElemBatch, GreOut, NftError, OutCounter, RulesConfig, TableSocket};
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

/// (inside host, outside peer, outside peer's Call ID).
pub type Key = (Ipv4Addr, Ipv4Addr, u16);

/// The packet thread's handle on `gre_out`.
#[derive(Debug)]
pub struct OutCounting {
    set: GreOut,
    /// Last counters read per element, to feed deltas to the engine.
    seen: FxHashMap<Key, (u64, u64)>,
}

impl OutCounting {
    /// Opens the set (through the table's own socket when the daemon owns it) and empties it,
    /// so no element of an earlier run is counted for a new call. `None`, logged, when the
    /// table has no such set: packets out are then counted only for GRE the daemon sees.
    pub fn open(rules: &RulesConfig, sock: Option<&TableSocket>) -> Option<OutCounting> {
        let set = match sock {
            Some(s) => GreOut::open_on(rules, s.clone()),
            None => GreOut::open(rules),
        };
        match set.and_then(|mut s| s.flush().map(|()| s)) {
            Ok(set) => Some(OutCounting {
                set,
                seen: FxHashMap::default(),
            }),
            Err(e @ NftError::FastPathUnavailable(_)) => {
                log::info!("GRE from inside hosts is not counted per call: {e}");
                None
            }
            Err(e) => {
                log::warn!("GRE from inside hosts is not counted per call: {e}");
                None
            }
        }
    }

    /// A call started or its outside peer told its id: the call's element,
    /// once that id is known. Errors are counted as `fastpath_errors` and
    /// logged at debug level: only a count is at stake.
    pub fn call_known(&mut self, c: &CallInfo, shared: &SharedRef) {
        let Some(id) = c.outside_id else { return };
        if let Err(e) = self.set.add(c.inside_host, c.outside_peer, id) {
            failed(shared, &e);
        }
    }

    /// Appends the add of the call's element to `b` once the outside peer's id is known (see
    /// [`crate::nft::ElemBatch`]); [`OutCounting::call_known`] is the way on its own.
    pub fn batch_known(&self, b: &mut ElemBatch, c: &CallInfo) {
        if let Some(id) = c.outside_id {
            self.set.batch(b, true, c.inside_host, c.outside_peer, id);
        }
    }

    /// What to read when call `c` ends: the set and the call's element, if it has one.
    pub fn end_read(&self, c: &CallInfo) -> Option<(&GreOut, Ipv4Addr, Ipv4Addr, u16)> {
        let id = c.outside_id?;
        Some((&self.set, c.inside_host, c.outside_peer, id))
    }

    /// A call ended and `read` is its element's counter (see [`OutCounting::end_read`]):
    /// gives the engine the last delta and returns the packets its inside host sent since
    /// the last read (for its log line), and the element to remove unless another live call
    /// has the same ids (a peer that reuses its ids keeps counting).
    pub fn ended(
        &mut self,
        c: &CallInfo,
        read: Option<Result<Option<OutCounter>, NftError>>,
        shared: &SharedRef,
        now: Instant,
    ) -> (u64, Option<Key>) {
        let Some(id) = c.outside_id else {
            return (0, None);
        };
        let key = (c.inside_host, c.outside_peer, id);
        let delta = match read {
            Some(Ok(Some(k))) => delta(&self.seen, &k),
            Some(Ok(None)) | None => (0, 0),
            Some(Err(e)) => {
                failed(shared, &e);
                (0, 0)
            }
        };
        let mut s = super::shared::lock(shared);
        s.alg.note_sent(now, key.0, key.1, key.2, delta.0, delta.1);
        let keep = s.alg.has_live_outside(key.0, key.1, key.2);
        drop(s);
        if keep {
            if let Some(seen) = self.seen.get_mut(&key) {
                seen.0 += delta.0;
                seen.1 += delta.1;
            }
            return (delta.0, None);
        }
        self.seen.remove(&key);
        (delta.0, Some(key))
    }

    /// Appends the removal of an ended call's element to `b`.
    pub fn batch_remove(&self, b: &mut ElemBatch, key: Key) {
        self.set.batch(b, false, key.0, key.1, key.2);
    }

    /// Removes an ended call's element on its own (when the batch it was in was refused).
    pub fn remove(&mut self, key: Key, shared: &SharedRef) {
        if let Err(e) = self.set.remove(key.0, key.1, key.2) {
            failed(shared, &e);
        }
    }

    /// Reads every call's counter and gives the engine what the kernel counted since the last
    /// read.
    pub fn poll(&mut self, shared: &SharedRef, now: Instant) -> Result<(), NftError> {
        let counters = self.set.counters()?;
        let mut seen = FxHashMap::default();
        seen.reserve(counters.len());
        let mut s = super::shared::lock(shared);
        for k in &counters {
            let (dp, db) = delta(&self.seen, k);
            s.alg
                .note_sent(now, k.inside_host, k.outside_peer, k.outside_id, dp, db);
            seen.insert(
                (k.inside_host, k.outside_peer, k.outside_id),
                (k.packets, k.bytes),
            );
        }
        drop(s);
        self.seen = seen;
        Ok(())
    }

    /// Puts back the elements of `calls` in a reinstalled (empty) table; returns how many
    /// could not be added.
    pub fn reinstall(&mut self, calls: &[CallInfo]) -> u64 {
        self.seen.clear();
        let mut failed = 0;
        for c in calls {
            if let Some(id) = c.outside_id {
                if self.set.add(c.inside_host, c.outside_peer, id).is_err() {
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Empties the set (at stop, for a table that outlives the daemon).
    pub fn flush(&mut self) -> Result<(), NftError> {
        self.set.flush()
    }
}

/// What the kernel counted for one element since `seen` was read; a smaller value means the
/// element was made anew, so all of it is new.
fn delta(seen: &FxHashMap<Key, (u64, u64)>, k: &OutCounter) -> (u64, u64) {
    let (p0, b0) = seen
        .get(&(k.inside_host, k.outside_peer, k.outside_id))
        .copied()
        .unwrap_or((0, 0));
    if k.packets >= p0 {
        (k.packets - p0, k.bytes.saturating_sub(b0))
    } else {
        (k.packets, k.bytes)
    }
}

fn failed(shared: &SharedRef, e: &NftError) {
    super::shared::lock(shared).fastpath_errors += 1;
    log::debug!("gre_out: {e}");
}

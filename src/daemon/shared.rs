//! State shared between the packet thread and its readers (the status
//! socket, SIGUSR1). The engine itself lives here behind one mutex: the
//! packet thread holds it only around `Alg::handle` and the event drain,
//! readers only long enough to copy a snapshot, so contention stays short
//! and an uncontended lock costs far less than a packet's trip through
//! netlink.
//!
//! Owns nothing but the data; the packet thread writes it, the main thread
//! reconfigures the engine in it at a reload, readers copy from it.

use super::status::{QueueRole, RulesInfo};
use crate::alg::Alg;
use crate::nft::ElementCounter;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The shared state.
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub alg: Alg,
    /// The last per-call counters read from the kernel fast path.
    pub offloaded: Vec<ElementCounter>,
    /// The daemon's table.
    pub rules: RulesInfo,
    /// Whether the kernel fast path is active.
    pub offload: bool,
    /// When the daemon started.
    pub started: Instant,
    /// Fast path updates that failed.
    pub fastpath_errors: u64,
    /// Calls whose fast path elements could not be added yet (retried every second; their
    /// GRE is left to the router meanwhile).
    pub offload_pending: u64,
    /// The table whose rule counts GRE to the router that matched no call's element (with
    /// the fast path on): the kernel leaves that GRE to the router, so the daemon never sees
    /// it and reads its count from there.
    pub unknown_gre_table: Option<String>,
    /// The queues the daemon serves and what each carries, for the status.
    pub queues: Vec<(u16, QueueRole)>,
    /// Packets whose verdict could not be sent.
    pub verdict_errors: u64,
    /// Errors receiving from the queue socket.
    pub recv_errors: u64,
    /// The journal generation that call events drained from the engine now
    /// belong to (see [`super::journal`]). A snapshot takes the calls and
    /// increments it under this lock, so every event is either in the
    /// snapshot or in a generation after it.
    pub journal_gen: u64,
    /// Journal records written.
    pub journal_records: u64,
    /// Journal writes that failed (disk full, EIO, a generation at its
    /// bound): their calls are safe only once the next snapshot is written.
    pub journal_errors: u64,
    /// The pair's state as the packet thread last published it, and when.
    pub ha: Option<(super::ha::HaReport, Instant)>,
}

/// A handle on the shared state.
pub type SharedRef = Arc<Mutex<Shared>>;

impl Shared {
    /// Wraps an engine; the fast path is off until the packet thread
    /// opens it.
    pub fn new(alg: Alg, rules: RulesInfo) -> SharedRef {
        Arc::new(Mutex::new(Shared {
            alg,
            offloaded: Vec::new(),
            rules,
            offload: false,
            started: Instant::now(),
            fastpath_errors: 0,
            offload_pending: 0,
            unknown_gre_table: None,
            queues: Vec::new(),
            verdict_errors: 0,
            recv_errors: 0,
            journal_gen: 0,
            journal_records: 0,
            journal_errors: 0,
            ha: None,
        }))
    }
}

/// Locks the state. A panic while holding the lock is already handled by
/// the packet thread (it gives its packet a verdict and stops the daemon),
/// so a poisoned lock is still good enough for reading a final snapshot.
pub fn lock(s: &SharedRef) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

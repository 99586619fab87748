//! The router's own IPv4 addresses in the fast path's set `local_addrs`.
//!
//! The fast path rule rewrites GRE only when its destination is in that set: a hash lookup
//! per packet instead of the FIB lookup of `fib daddr type local`, which cost about a tenth
//! of the router's per-packet work. The queue rule still asks the routing table, so GRE to an
//! address the set does not hold (yet) reaches the daemon, which translates it: a set that
//! lags behind costs speed, never a packet.
//!
//! [`AddrWatcher::start`] reads every IPv4 address from the kernel (an rtnetlink
//! `RTM_GETADDR` dump) and replaces the set's content with them in one batch, then a thread
//! of its own follows `RTM_NEWADDR`/`RTM_DELADDR` (group `RTMGRP_IPV4_IFADDR`) and adds or
//! removes elements as addresses come and go. Missed notifications (`ENOBUFS`) and a
//! reinstalled table ([`ResyncHandle`]) make it read everything again. Every change goes
//! through the table's socket ([`crate::nft::TableSocket`]), the only one the kernel accepts
//! changes of an owned table from. A change the kernel refuses is a warning and is retried
//! every few seconds; meanwhile GRE to the missing addresses goes through the queue.
//!
//! The thread blocks only on its own route socket and a wake-up socket, and shares nothing
//! with the packet thread but the table socket's mutex (held for one netlink round trip).
//!
//! This module owns the policy (which addresses go into the set, the diffing, when to read
//! everything again) and the thread's loop. The route socket, the dump and the decoding of
//! rtnetlink messages are [`crate::netlink::route`]'s: nothing here touches netlink bytes.

use crate::netlink::route::{IfAddr, Received, RouteSocket, RtMsg};
use crate::nft::{LocalAddrSet, NftError};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long to wait for the kernel's answer to an address dump.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure (dump or set change), how long until the next attempt.
const RETRY: Duration = Duration::from_secs(5);

/// The addresses of all interfaces. An address configured on two interfaces (or twice with
/// different prefixes) stays local until the last of them goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrTable {
    entries: BTreeSet<IfAddr>,
}

impl AddrTable {
    /// Applies one message; anything but [`RtMsg::New`] and [`RtMsg::Del`] is ignored. A
    /// repeated `New` (the kernel also sends one when an address changes) changes nothing.
    pub fn apply(&mut self, msg: &RtMsg) {
        match msg {
            RtMsg::New(a) => {
                self.entries.insert(*a);
            }
            RtMsg::Del(a) => {
                self.entries.remove(a);
            }
            _ => {}
        }
    }

    /// Whether `addr` is one of them.
    pub fn has(&self, addr: Ipv4Addr) -> bool {
        self.entries.iter().any(|e| e.addr == addr)
    }

    /// The distinct local addresses.
    pub fn addrs(&self) -> BTreeSet<Ipv4Addr> {
        self.entries.iter().map(|e| e.addr).collect()
    }
}

/// Where the addresses go: the nftables set, or a test's recorder.
pub trait AddrSink {
    /// Replaces the whole content, atomically.
    fn replace(&mut self, addrs: &[Ipv4Addr]) -> Result<(), NftError>;
    /// Adds one address.
    fn add(&mut self, addr: Ipv4Addr) -> Result<(), NftError>;
    /// Removes one address (absent is fine).
    fn remove(&mut self, addr: Ipv4Addr) -> Result<(), NftError>;
}

impl AddrSink for LocalAddrSet {
    fn replace(&mut self, addrs: &[Ipv4Addr]) -> Result<(), NftError> {
        LocalAddrSet::replace(self, addrs)
    }
    fn add(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
        LocalAddrSet::add(self, addr)
    }
    fn remove(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
        LocalAddrSet::remove(self, addr)
    }
}

fn list(addrs: &BTreeSet<Ipv4Addr>) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps a sink in step with an [`AddrTable`]: single adds and removes for changes, a whole
/// replace at first, after a failure and on request.
#[derive(Debug)]
pub struct SetSync<S> {
    sink: S,
    /// What the kernel's address list says.
    pub table: AddrTable,
    /// What the sink holds, as far as we know.
    in_set: BTreeSet<Ipv4Addr>,
    /// The sink's content is unknown (start, a failed change, a reinstalled table): the next
    /// push replaces it.
    dirty: bool,
    /// Nothing was written yet.
    first: bool,
    /// The last push failed (warned once; recovery is logged).
    failing: bool,
}

impl<S: AddrSink> SetSync<S> {
    /// Starts with nothing known about the sink.
    pub fn new(sink: S) -> Self {
        SetSync {
            sink,
            table: AddrTable::default(),
            in_set: BTreeSet::new(),
            dirty: true,
            first: true,
            failing: false,
        }
    }

    /// The sink's content is unknown (its table was replaced): replace it at the next push.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a push is due (after a failure, or a change not written yet).
    pub fn pending(&self) -> bool {
        self.dirty || self.in_set != self.table.addrs()
    }

    /// Writes what changed since the last push (everything when dirty) and logs each
    /// address that enters or leaves the set. Returns whether the sink is now in step.
    pub fn push(&mut self) -> bool {
        let want = self.table.addrs();
        let r = if self.dirty {
            let all: Vec<Ipv4Addr> = want.iter().copied().collect();
            self.sink.replace(&all).map(|()| {
                if self.first {
                    log::info!(
                        "fast path: {} local address(es) in set local_addrs: {}",
                        want.len(),
                        list(&want)
                    );
                } else {
                    self.log_changes(&want);
                }
                self.in_set = want.clone();
                self.dirty = false;
                self.first = false;
            })
        } else {
            self.push_changes(&want)
        };
        match r {
            Ok(()) => {
                if self.failing {
                    log::info!("fast path: set local_addrs back in step with the addresses");
                    self.failing = false;
                }
                true
            }
            Err(e) => {
                self.dirty = true;
                if !self.failing {
                    log::warn!(
                        "fast path: cannot update set local_addrs (GRE to addresses missing \
                         there goes through the queue; retrying every {}s): {e}",
                        RETRY.as_secs()
                    );
                    self.failing = true;
                } else {
                    log::debug!("fast path: set local_addrs still not updated: {e}");
                }
                false
            }
        }
    }

    fn push_changes(&mut self, want: &BTreeSet<Ipv4Addr>) -> Result<(), NftError> {
        let added: Vec<Ipv4Addr> = want.difference(&self.in_set).copied().collect();
        let removed: Vec<Ipv4Addr> = self.in_set.difference(want).copied().collect();
        for a in removed {
            self.sink.remove(a)?;
            self.in_set.remove(&a);
            log::info!("fast path: local address {a} removed from set local_addrs");
        }
        for a in added {
            self.sink.add(a)?;
            self.in_set.insert(a);
            log::info!("fast path: local address {a} added to set local_addrs");
        }
        Ok(())
    }

    fn log_changes(&self, want: &BTreeSet<Ipv4Addr>) {
        for a in self.in_set.difference(want) {
            log::info!("fast path: local address {a} removed from set local_addrs");
        }
        for a in want.difference(&self.in_set) {
            log::info!("fast path: local address {a} added to set local_addrs");
        }
    }
}

/// Asks the watcher to read all addresses again and replace the set's content: after the
/// table was reinstalled (its set is then empty). Never blocks.
#[derive(Debug, Clone)]
pub struct ResyncHandle {
    resync: Arc<AtomicBool>,
    wake: Arc<UnixStream>,
}

impl ResyncHandle {
    /// Requests the resync.
    pub fn request(&self) {
        self.resync.store(true, Ordering::Release);
        // Non-blocking: a full socket means a wake-up is pending anyway.
        let _ = (&*self.wake).write(&[1]);
    }
}

/// The thread that keeps the set in step; stopped (and joined) when dropped.
#[derive(Debug)]
pub struct AddrWatcher {
    stop: Arc<AtomicBool>,
    handle: ResyncHandle,
    thread: Option<JoinHandle<()>>,
}

impl AddrWatcher {
    /// Fills the set with every IPv4 address of this network namespace (before it returns),
    /// then follows their changes on a thread of its own. Errors only when the route socket
    /// or the thread cannot be had; a set the kernel refuses to change is a warning, retried.
    pub fn start(set: LocalAddrSet) -> io::Result<AddrWatcher> {
        let mut w = Worker {
            sock: RouteSocket::open()?,
            sync: SetSync::new(set),
            need_dump: true,
            dump_failing: false,
            retry_at: None,
        };
        w.step(Instant::now());
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let resync = Arc::new(AtomicBool::new(false));
        let handle = ResyncHandle {
            resync: resync.clone(),
            wake: Arc::new(wake_tx),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("addresses".into())
                .spawn(move || w.run(&stop, &resync, wake_rx))?
        };
        Ok(AddrWatcher {
            stop,
            handle,
            thread: Some(thread),
        })
    }

    /// A handle to request a full resync.
    pub fn resync_handle(&self) -> ResyncHandle {
        self.handle.clone()
    }
}

impl Drop for AddrWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&*self.handle.wake).write(&[1]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watcher thread's state.
struct Worker<S> {
    sock: RouteSocket,
    sync: SetSync<S>,
    /// Every address must be read (again): at start, after lost notifications, on request.
    need_dump: bool,
    /// The last dump failed (warned once).
    dump_failing: bool,
    /// After a failure: not before this time.
    retry_at: Option<Instant>,
}

/// How long the thread sleeps when nothing is due (a notification or the wake-up socket
/// ends it earlier).
const IDLE: Duration = Duration::from_secs(3600);

impl<S: AddrSink> Worker<S> {
    /// Follows changes until `stop`; `wake` ends a wait (stop or resync requested).
    fn run(mut self, stop: &AtomicBool, resync: &AtomicBool, mut wake: UnixStream) {
        while !stop.load(Ordering::Acquire) {
            if resync.swap(false, Ordering::AcqRel) {
                self.need_dump = true;
                self.retry_at = None;
            }
            let now = Instant::now();
            self.step(now);
            let timeout = self
                .retry_at
                .map_or(IDLE, |t| t.saturating_duration_since(now));
            let [readable, woken] = match crate::netlink::readable(
                [Some(self.sock.as_fd().as_raw_fd()), Some(wake.as_raw_fd())],
                timeout,
            ) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("fast path: waiting for address changes: {e}");
                    std::thread::sleep(RETRY);
                    [false, false]
                }
            };
            if woken {
                let mut b = [0u8; 64];
                while matches!(wake.read(&mut b), Ok(n) if n > 0) {}
            }
            if readable && read_changes(|| self.sock.recv(), &mut self.sync.table) {
                self.need_dump = true;
            }
        }
    }

    /// Does what is due at `now`: the dump, then writing the set.
    fn step(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        if self.need_dump {
            match self.sock.dump(DUMP_TIMEOUT) {
                Ok(msgs) => {
                    let mut table = AddrTable::default();
                    for m in &msgs {
                        table.apply(m);
                    }
                    self.sync.table = table;
                    self.sync.mark_dirty();
                    self.need_dump = false;
                    self.dump_failing = false;
                }
                Err(e) => {
                    if !self.dump_failing {
                        log::warn!(
                            "fast path: cannot read this router's addresses (GRE goes through \
                             the queue meanwhile; retrying every {}s): {e}",
                            RETRY.as_secs()
                        );
                    }
                    self.dump_failing = true;
                    self.retry_at = Some(now + RETRY);
                    return;
                }
            }
        }
        if self.sync.pending() && !self.sync.push() {
            self.retry_at = Some(now + RETRY);
        }
    }
}

/// Applies every notification waiting on the socket (`recv` receives without blocking) to
/// `table` (the fast path's set and the high-availability role both follow one). Returns whether some were lost, so that everything must be read again.
pub(super) fn read_changes(
    mut recv: impl FnMut() -> io::Result<Received>,
    table: &mut AddrTable,
) -> bool {
    loop {
        match recv() {
            Ok(Received::Msgs(m)) if m.is_empty() => return false,
            Ok(Received::Msgs(m)) => {
                for p in m {
                    if let RtMsg::Malformed(why) = p.msg {
                        log::warn!("unreadable address notification: {why}");
                    }
                    table.apply(&p.msg);
                }
            }
            Ok(Received::Lost) => {
                log::info!("address notifications were lost; reading all addresses again");
                return true;
            }
            Err(e) => {
                log::warn!("reading address notifications: {e}; reading all addresses again");
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::route::Parsed;

    fn ifa(ifindex: u32, addr: [u8; 4], prefixlen: u8) -> IfAddr {
        IfAddr {
            ifindex,
            addr: addr.into(),
            prefixlen,
        }
    }

    #[test]
    fn an_address_on_two_interfaces_stays_until_both_are_gone() {
        let mut t = AddrTable::default();
        let a = ifa(2, [10, 0, 0, 1], 32);
        let b = ifa(3, [10, 0, 0, 1], 32);
        t.apply(&RtMsg::New(a));
        t.apply(&RtMsg::New(b));
        t.apply(&RtMsg::New(a));
        t.apply(&RtMsg::Done);
        t.apply(&RtMsg::Del(a));
        assert_eq!(t.addrs(), BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1)]));
        assert!(t.has(Ipv4Addr::new(10, 0, 0, 1)));
        t.apply(&RtMsg::Del(b));
        assert!(t.addrs().is_empty());
        assert!(!t.has(Ipv4Addr::new(10, 0, 0, 1)));
        t.apply(&RtMsg::Del(b));
        assert!(t.addrs().is_empty());
    }

    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
        fail: bool,
    }

    impl AddrSink for Recorder {
        fn replace(&mut self, addrs: &[Ipv4Addr]) -> Result<(), NftError> {
            self.op(format!("replace {addrs:?}"))
        }
        fn add(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
            self.op(format!("add {addr}"))
        }
        fn remove(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
            self.op(format!("remove {addr}"))
        }
    }

    impl Recorder {
        fn op(&mut self, op: String) -> Result<(), NftError> {
            if self.fail {
                return Err(NftError::Kernel {
                    what: op,
                    errno: libc::ENOENT,
                });
            }
            self.ops.push(op);
            Ok(())
        }
    }

    #[test]
    fn sync_replaces_first_then_adds_and_removes_and_replaces_after_a_failure() {
        let mut s = SetSync::new(Recorder::default());
        s.table.apply(&RtMsg::New(ifa(1, [127, 0, 0, 1], 8)));
        s.table.apply(&RtMsg::New(ifa(2, [192, 0, 2, 1], 24)));
        assert!(s.pending());
        assert!(s.push());
        assert!(!s.pending());
        s.table.apply(&RtMsg::New(ifa(2, [192, 0, 2, 9], 24)));
        s.table.apply(&RtMsg::Del(ifa(2, [192, 0, 2, 1], 24)));
        assert!(s.push());
        // Nothing changed: nothing written.
        assert!(s.push());

        s.sink.fail = true;
        s.table.apply(&RtMsg::New(ifa(3, [198, 51, 100, 1], 24)));
        assert!(!s.push());
        assert!(s.pending());
        s.sink.fail = false;
        assert!(s.push());
        assert!(!s.pending());
        s.mark_dirty();
        assert!(s.pending());
        assert!(s.push());
        assert_eq!(
            s.sink.ops,
            [
                "replace [127.0.0.1, 192.0.2.1]",
                "remove 192.0.2.1",
                "add 192.0.2.9",
                "replace [127.0.0.1, 192.0.2.9, 198.51.100.1]",
                "replace [127.0.0.1, 192.0.2.9, 198.51.100.1]",
            ]
        );
    }

    #[test]
    fn notifications_change_the_table_and_a_loss_asks_for_everything_again() {
        let msg = |m| Parsed {
            ty: 0,
            flags: 0,
            seq: 0,
            pid: 0,
            msg: m,
        };
        let (a, b) = (ifa(2, [192, 0, 2, 1], 24), ifa(2, [192, 0, 2, 2], 24));
        let mut s = SetSync::new(Recorder::default());
        let mut queue = vec![
            Ok(Received::Msgs(vec![msg(RtMsg::New(a)), msg(RtMsg::New(b))])),
            Ok(Received::Msgs(vec![
                msg(RtMsg::Malformed("short ifaddrmsg")),
                msg(RtMsg::Del(a)),
                msg(RtMsg::Other),
            ])),
            Ok(Received::Msgs(Vec::new())),
        ]
        .into_iter();
        assert!(!read_changes(|| queue.next().unwrap(), &mut s.table));
        assert_eq!(queue.len(), 0, "read until nothing was waiting");
        assert_eq!(s.table.addrs(), BTreeSet::from([b.addr]));

        for lost in [
            Ok(Received::Lost),
            Err(io::Error::from_raw_os_error(libc::EBADF)),
        ] {
            let mut queue = vec![Ok(Received::Msgs(vec![msg(RtMsg::New(a))])), lost].into_iter();
            assert!(read_changes(|| queue.next().unwrap(), &mut s.table));
            assert_eq!(queue.len(), 0);
        }
        assert_eq!(s.table.addrs(), BTreeSet::from([a.addr, b.addr]));
    }
}

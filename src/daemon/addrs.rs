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

use crate::nft::{LocalAddrSet, NftError};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long to wait for the kernel's answer to an address dump.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure (dump or set change), how long until the next attempt.
const RETRY: Duration = Duration::from_secs(5);
/// Receive buffer: larger than any one netlink message (a dump part is at most a few pages).
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue for notifications, so that a burst of changes (an interface with
/// many addresses going away) is not lost.
const RCVBUF_BYTES: i32 = 1 << 20;

const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTA_HDRLEN: usize = 4;

/// One IPv4 address of one interface, as rtnetlink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    /// The interface.
    pub ifindex: u32,
    /// The local address (`IFA_LOCAL`, or `IFA_ADDRESS` where there is no `IFA_LOCAL`).
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefixlen: u8,
}

/// What one rtnetlink message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtMsg {
    /// `RTM_NEWADDR`: an IPv4 address exists (dump) or was added or changed (notification).
    New(IfAddr),
    /// `RTM_DELADDR`: an IPv4 address was removed.
    Del(IfAddr),
    /// End of a dump.
    Done,
    /// `NLMSG_ERROR`: the negative of the errno, 0 for an acknowledgement.
    Error(i32),
    /// Something else: another address family, another message type.
    Other,
    /// An address message that cannot be read (too short, no IPv4 address), or broken
    /// framing (then the last message of the buffer).
    Malformed(&'static str),
}

/// One parsed message with the header fields that tell a dump part from a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `nlmsg_type`
    pub ty: u16,
    /// `nlmsg_flags`
    pub flags: u16,
    /// `nlmsg_seq`
    pub seq: u32,
    /// `nlmsg_pid`
    pub pid: u32,
    /// The content.
    pub msg: RtMsg,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a buffer received from a route socket into messages and reads the address
/// messages among them. Never panics, whatever the bytes: every length is checked against
/// what is there. A message whose length field is impossible ends the buffer with
/// [`RtMsg::Malformed`].
pub fn parse(mut buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        let (ty, flags) = (u16_at(buf, 4), u16_at(buf, 6));
        let (seq, pid) = (u32_at(buf, 8), u32_at(buf, 12));
        if len < NLMSG_HDRLEN || len > buf.len() {
            out.push(Parsed {
                ty,
                flags,
                seq,
                pid,
                msg: RtMsg::Malformed("netlink message length out of range"),
            });
            break;
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        let msg = match ty {
            t if t == libc::NLMSG_DONE as u16 => RtMsg::Done,
            t if t == libc::NLMSG_ERROR as u16 => {
                if payload.len() < 4 {
                    RtMsg::Malformed("short NLMSG_ERROR")
                } else {
                    RtMsg::Error(u32_at(payload, 0) as i32)
                }
            }
            libc::RTM_NEWADDR | libc::RTM_DELADDR => match parse_ifaddr(payload) {
                Ok(Some(a)) if ty == libc::RTM_NEWADDR => RtMsg::New(a),
                Ok(Some(a)) => RtMsg::Del(a),
                Ok(None) => RtMsg::Other,
                Err(why) => RtMsg::Malformed(why),
            },
            _ => RtMsg::Other,
        };
        out.push(Parsed {
            ty,
            flags,
            seq,
            pid,
            msg,
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// Reads an `ifaddrmsg` and its attributes: `Ok(None)` for another family than IPv4.
fn parse_ifaddr(p: &[u8]) -> Result<Option<IfAddr>, &'static str> {
    if p.len() < IFADDRMSG_LEN {
        return Err("short ifaddrmsg");
    }
    // struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
    if i32::from(p[0]) != libc::AF_INET {
        return Ok(None);
    }
    let prefixlen = p[1];
    let ifindex = u32_at(p, 4);
    let (mut local, mut address) = (None, None);
    let mut attrs = &p[align4(IFADDRMSG_LEN).min(p.len())..];
    while attrs.len() >= RTA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0));
        let ty = u16_at(attrs, 2) & (libc::NLA_TYPE_MASK as u16);
        if len < RTA_HDRLEN || len > attrs.len() {
            return Err("attribute length out of range");
        }
        let data = &attrs[RTA_HDRLEN..len];
        let addr = (data.len() == 4).then(|| Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        match ty {
            libc::IFA_LOCAL => local = Some(addr.ok_or("IFA_LOCAL is not 4 bytes")?),
            libc::IFA_ADDRESS => address = Some(addr.ok_or("IFA_ADDRESS is not 4 bytes")?),
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let addr = local.or(address).ok_or("no IFA_LOCAL or IFA_ADDRESS")?;
    Ok(Some(IfAddr {
        ifindex,
        addr,
        prefixlen,
    }))
}

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

/// A route netlink socket subscribed to IPv4 address changes.
struct RouteSocket {
    fd: OwnedFd,
    portid: u32,
    seq: u32,
    buf: Vec<u8>,
}

/// What a receive brought.
enum Received {
    /// Messages (possibly none: nothing was waiting).
    Msgs(Vec<Parsed>),
    /// The kernel dropped notifications (`ENOBUFS`), or one did not fit the buffer.
    Lost,
}

impl RouteSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned by OwnedFd from here.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = RCVBUF_BYTES;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: valid descriptor and option buffer.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const i32).cast(),
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        // SAFETY: zeroed sockaddr_nl is valid; we fill the fields we need.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = libc::RTMGRP_IPV4_IFADDR as u32;
        let salen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: valid descriptor and address.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                salen,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut len = salen;
        // SAFETY: valid descriptor, address buffer and length.
        if unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(RouteSocket {
            fd,
            portid: sa.nl_pid,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every IPv4 address now, and the notifications that arrived meanwhile (in order: they
    /// are newer than or as new as the dump and must be applied after it).
    fn dump(&mut self) -> io::Result<(AddrTable, Vec<RtMsg>)> {
        let mut events = Vec::new();
        // A dump interrupted by changes (NLM_F_DUMP_INTR) or notifications lost meanwhile
        // make it start again; changes do not come that fast for long.
        for _ in 0..5 {
            let mut table = AddrTable::default();
            let mut again = false;
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            self.send_dump_request(seq)?;
            let deadline = Instant::now() + DUMP_TIMEOUT;
            'parts: loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete answer to the address dump",
                    ));
                }
                if !poll_in(self.fd.as_raw_fd(), None, left)?.0 {
                    continue;
                }
                let msgs = match self.recv()? {
                    Received::Msgs(m) => m,
                    Received::Lost => {
                        again = true;
                        continue;
                    }
                };
                for p in msgs {
                    let ours = p.pid == self.portid && p.seq == seq;
                    if !ours {
                        if matches!(p.msg, RtMsg::New(_) | RtMsg::Del(_)) {
                            events.push(p.msg);
                        }
                        continue;
                    }
                    if p.flags & (libc::NLM_F_DUMP_INTR as u16) != 0 {
                        again = true;
                    }
                    match p.msg {
                        RtMsg::Done => break 'parts,
                        RtMsg::Error(0) => {}
                        RtMsg::Error(e) => return Err(io::Error::from_raw_os_error(-e)),
                        m => table.apply(&m),
                    }
                }
            }
            if !again {
                return Ok((table, events));
            }
            // The events so far are older than the next dump: applying them after it is
            // still right (each address ends in the state of its last notification).
        }
        Err(io::Error::other(
            "the address dump kept being interrupted by changes",
        ))
    }

    fn send_dump_request(&self, seq: u32) -> io::Result<()> {
        let mut req = [0u8; NLMSG_HDRLEN + IFADDRMSG_LEN];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&libc::RTM_GETADDR.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nlmsg_pid 0: to the kernel. ifaddrmsg: family AF_INET, the rest 0 (all addresses).
        req[NLMSG_HDRLEN] = libc::AF_INET as u8;
        // SAFETY: zeroed sockaddr_nl (pid 0, groups 0) addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: valid descriptor, buffer and address.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r == req.len() as isize {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One non-blocking receive. Only the kernel's messages count.
    fn recv(&mut self) -> io::Result<Received> {
        loop {
            // SAFETY: zeroed sockaddr_nl is valid as an output buffer.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut fromlen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: valid descriptor, buffer, address buffer and length.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut fromlen,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => Ok(Received::Msgs(Vec::new())),
                    Some(libc::ENOBUFS) => Ok(Received::Lost),
                    _ => Err(e),
                };
            }
            let n = r as usize;
            if n > self.buf.len() {
                return Ok(Received::Lost);
            }
            if from.nl_pid != 0 {
                // Not from the kernel: nothing we asked for.
                continue;
            }
            return Ok(Received::Msgs(parse(&self.buf[..n])));
        }
    }
}

/// Waits until `fd` (or `wake`) is readable or `timeout` passes; returns (fd readable, wake
/// readable).
fn poll_in(fd: i32, wake: Option<i32>, timeout: Duration) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: two valid pollfd (a negative fd is ignored).
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
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
            let (readable, woken) =
                match poll_in(self.sock.fd.as_raw_fd(), Some(wake.as_raw_fd()), timeout) {
                    Ok(r) => r,
                    Err(e) => {
                        log::warn!("fast path: waiting for address changes: {e}");
                        std::thread::sleep(RETRY);
                        (false, false)
                    }
                };
            if woken {
                let mut b = [0u8; 64];
                while matches!(wake.read(&mut b), Ok(n) if n > 0) {}
            }
            if readable && read_changes(&mut self.sock, &mut self.sync) {
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
            match self.sock.dump() {
                Ok((mut table, events)) => {
                    for e in &events {
                        table.apply(e);
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

/// Applies every notification waiting on the socket to `sync.table`. Returns whether some
/// were lost, so that everything must be read again.
fn read_changes<S: AddrSink>(sock: &mut RouteSocket, sync: &mut SetSync<S>) -> bool {
    loop {
        match sock.recv() {
            Ok(Received::Msgs(m)) if m.is_empty() => return false,
            Ok(Received::Msgs(m)) => {
                for p in m {
                    if let RtMsg::Malformed(why) = p.msg {
                        log::warn!("fast path: unreadable address notification: {why}");
                    }
                    sync.table.apply(&p.msg);
                }
            }
            Ok(Received::Lost) => {
                log::info!(
                    "fast path: address notifications were lost; reading all addresses again"
                );
                return true;
            }
            Err(e) => {
                log::warn!(
                    "fast path: reading address notifications: {e}; reading all addresses again"
                );
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `RTM_NEWADDR`/`RTM_DELADDR` message as the kernel writes it.
    fn addr_msg(ty: u16, family: u8, prefix: u8, ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![family, prefix, 0x80, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        for (t, data) in attrs {
            let len = (RTA_HDRLEN + data.len()) as u16;
            p.extend_from_slice(&len.to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(data);
            while p.len() % 4 != 0 {
                p.push(0);
            }
        }
        nl_msg(ty, 0, 7, 0, &p)
    }

    fn nl_msg(ty: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    const AF_INET: u8 = libc::AF_INET as u8;

    fn ifa(ifindex: u32, addr: [u8; 4], prefixlen: u8) -> IfAddr {
        IfAddr {
            ifindex,
            addr: addr.into(),
            prefixlen,
        }
    }

    #[test]
    fn local_wins_over_address() {
        // A point-to-point address: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        let m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            32,
            5,
            &[
                (libc::IFA_ADDRESS, &[10, 0, 0, 2]),
                (libc::IFA_LABEL, b"ppp0\0"),
                (libc::IFA_LOCAL, &[10, 0, 0, 1]),
            ],
        );
        let p = parse(&m);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].msg, RtMsg::New(ifa(5, [10, 0, 0, 1], 32)));
        assert_eq!((p[0].ty, p[0].seq), (libc::RTM_NEWADDR, 7));
    }

    #[test]
    fn address_when_no_local() {
        let m = addr_msg(
            libc::RTM_DELADDR,
            AF_INET,
            24,
            2,
            &[(libc::IFA_ADDRESS, &[192, 0, 2, 1])],
        );
        assert_eq!(parse(&m)[0].msg, RtMsg::Del(ifa(2, [192, 0, 2, 1], 24)));
    }

    #[test]
    fn several_messages_other_families_done_and_errors() {
        let mut buf = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            8,
            1,
            &[
                (libc::IFA_ADDRESS, &[127, 0, 0, 1]),
                (libc::IFA_LOCAL, &[127, 0, 0, 1]),
            ],
        );
        // IPv6: ignored, whatever its attributes hold.
        buf.extend(addr_msg(
            libc::RTM_NEWADDR,
            libc::AF_INET6 as u8,
            64,
            1,
            &[(libc::IFA_ADDRESS, &[0xfe; 16])],
        ));
        buf.extend(nl_msg(libc::RTM_NEWLINK, 0, 0, 0, &[0; 16]));
        buf.extend(nl_msg(
            libc::NLMSG_DONE as u16,
            2,
            7,
            0,
            &0u32.to_ne_bytes(),
        ));
        buf.extend(nl_msg(
            libc::NLMSG_ERROR as u16,
            0,
            8,
            0,
            &(-libc::EPERM).to_ne_bytes(),
        ));
        let msgs: Vec<RtMsg> = parse(&buf).into_iter().map(|p| p.msg).collect();
        assert_eq!(
            msgs,
            [
                RtMsg::New(ifa(1, [127, 0, 0, 1], 8)),
                RtMsg::Other,
                RtMsg::Other,
                RtMsg::Done,
                RtMsg::Error(-libc::EPERM),
            ]
        );
    }

    #[test]
    fn malformed_input_never_panics() {
        let good = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[(libc::IFA_LOCAL, &[10, 1, 2, 3])],
        );
        // Every truncation and every single-byte corruption of a valid message.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for v in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut m = good.clone();
                m[n] = v;
                let _ = parse(&m);
            }
        }
        assert!(parse(&good[..NLMSG_HDRLEN - 1]).is_empty());

        // Message length beyond the buffer: reported, and the end of the buffer.
        let mut m = good.clone();
        m[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let p = parse(&m);
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0].msg, RtMsg::Malformed(_)));
        // Length below the header: the same.
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));

        // An attribute longer than its message.
        let mut m = good.clone();
        let at = NLMSG_HDRLEN + IFADDRMSG_LEN;
        m[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        // An attribute shorter than its header.
        m[at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));

        // An address of the wrong size, no address, a truncated ifaddrmsg.
        let m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[(libc::IFA_LOCAL, &[1, 2, 3])],
        );
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        let m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[(libc::IFA_LABEL, b"x\0")],
        );
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        let m = nl_msg(libc::RTM_DELADDR, 0, 0, 0, &[AF_INET, 24, 0]);
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));

        // A malformed message in the middle does not hide the next one.
        let mut buf = nl_msg(libc::RTM_NEWADDR, 0, 0, 0, &[AF_INET]);
        buf.extend([0, 0, 0]);
        buf.extend(&good);
        let p = parse(&buf);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].msg, RtMsg::New(ifa(3, [10, 1, 2, 3], 24)));
    }

    #[test]
    fn unaligned_message_lengths_are_padded() {
        // An attribute whose length is not a multiple of 4, last in its message, and a
        // message length that is not either: the next message starts at the aligned offset.
        let mut first = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[
                (libc::IFA_LOCAL, &[10, 1, 2, 3]),
                (libc::IFA_LABEL, b"ab\0"),
            ],
        );
        first.truncate(first.len() - 1);
        let len = first.len() as u32;
        first[0..4].copy_from_slice(&len.to_ne_bytes());
        first.push(0);
        first.extend(addr_msg(
            libc::RTM_DELADDR,
            AF_INET,
            24,
            4,
            &[(libc::IFA_LOCAL, &[10, 9, 9, 9])],
        ));
        let msgs: Vec<RtMsg> = parse(&first).into_iter().map(|p| p.msg).collect();
        assert_eq!(
            msgs,
            [
                RtMsg::New(ifa(3, [10, 1, 2, 3], 24)),
                RtMsg::Del(ifa(4, [10, 9, 9, 9], 24))
            ]
        );
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
        t.apply(&RtMsg::Del(b));
        assert!(t.addrs().is_empty());
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
}

//! High availability, the shell around the sans-IO [`Replica`] (issue
//! 10): the UDP socket on the sync link, this node's role, the counters and
//! log lines of the pair. Driven by the packet thread, in the engine's
//! calling pattern: it hands the engine's call events to [`Ha::record`],
//! reads datagrams when the socket is readable ([`Ha::receive`]), applies
//! what [`Ha::poll_apply`] gives to the engine (whose events then reach the
//! fast path as any call's do: the peer's calls get their kernel elements
//! here too, a hot standby), and runs [`Ha::handle_timeout`] when due.
//!
//! Owns the socket (non-blocking: the packet thread never waits on it; a
//! datagram that cannot go now is lost, and the peer's gap detection asks
//! for a snapshot), the route socket that tells the role (active while
//! this router holds `ha_address`), and which events are this node's to
//! replicate. It must not decide anything about calls (the replica and the
//! engine do) nor touch nftables.

use super::addrs::{read_changes, AddrTable};
use super::config::HaSettings;
use super::logging::RateLimit;
use crate::alg::{Alg, EndCause, Event, IdPartition, SavedCall};
use crate::netlink::route::RouteSocket;
use crate::replication::{
    wire::{MAX_MESSAGE, MAX_RECORDS},
    Error, Key, Record, Replica, ReplicaConfig, ReplicaEvent, Role, Status,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Datagrams read per call of [`Ha::receive`], so a flood on the sync link
/// cannot hold the packet thread.
const RECV_BATCH: usize = 64;
/// Socket buffers: a snapshot of the largest table (32,768 calls in 575
/// datagrams, 800 kB) fits, so a resync is not lost to the buffer itself.
const SOCKET_BUFFER: usize = 4 << 20;
/// How long the initial address dump may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// A record waits at most this long for others to share its datagram
/// (the packet thread sends what is queued at the end of every batch of
/// packets anyway; a long batch must not hold a record back).
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// The status is brought up to date at most this often: a report counts
/// the peer's calls, too much work for every wake-up of a busy thread.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// What `pptp-alg status` shows of the pair (its JSON `ha` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaReport {
    /// This node: 0 or 1.
    pub node: u8,
    /// This node's role.
    pub role: Role,
    /// The virtual address whose holder is active, if configured.
    pub address: Option<Ipv4Addr>,
    /// Where the replication socket is bound.
    pub listen: SocketAddrV4,
    /// The peer's address and what it last said of itself.
    pub peer: PeerReport,
    /// The peer is alive and its calls here are current (no resync due).
    pub in_sync: bool,
    /// The peer's live calls held here.
    pub peer_calls: usize,
    /// Own call records sent.
    pub records_sent: u64,
    /// Peer's call records applied.
    pub records_received: u64,
    /// Messages sent and taken.
    pub messages_sent: u64,
    /// Messages taken from the peer.
    pub messages_received: u64,
    /// Bytes of the datagrams sent (UDP payload).
    pub bytes_sent: u64,
    /// Bytes of the datagrams read (UDP payload), taken or not.
    pub bytes_received: u64,
    /// Gaps found in the peer's records.
    pub gaps: u64,
    /// Snapshots of the peer's table taken whole (resyncs).
    pub resyncs: u64,
    /// Snapshots of this node's table sent.
    pub snapshots_sent: u64,
    /// Messages refused for a wrong tag (another key, or altered).
    pub auth_failures: u64,
    /// Messages refused for any other reason (replays, other sessions,
    /// malformed, from another address).
    pub refused: u64,
    /// Datagrams that could not be sent.
    pub send_errors: u64,
    /// Milliseconds since the peer's last valid message; `None`: never.
    pub last_message_age_ms: Option<u64>,
}

/// The peer as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Its replication socket.
    pub address: SocketAddrV4,
    /// A valid message came within the dead time.
    pub alive: bool,
    /// Its role, as it last said.
    pub role: Option<Role>,
    /// Its node, as it last said.
    pub node: Option<u8>,
}

impl HaReport {
    /// One line for the status table.
    pub fn text(&self) -> String {
        let peer = match (self.peer.alive, self.peer.role, self.peer.node) {
            (true, Some(r), Some(n)) => format!(
                "node {n} {}, alive, {}",
                role_text(r),
                if self.in_sync { "in sync" } else { "resyncing" }
            ),
            (false, Some(r), Some(n)) => format!("node {n} (last {}), lost", role_text(r)),
            _ => "never heard".into(),
        };
        let age = self
            .last_message_age_ms
            .map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        format!(
            "high availability: node {} {}; peer {} {peer}; {} of its calls; records {} sent, {} \
             received; {} gaps, {} resyncs, {} auth failures; last message {age} ago",
            self.node,
            role_text(self.role),
            self.peer.address,
            self.peer_calls,
            self.records_sent,
            self.records_received,
            self.gaps,
            self.resyncs,
            self.auth_failures,
        )
    }
}

fn role_text(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Backup => "backup",
    }
}

/// Follows whether this router holds the virtual address.
struct Follower {
    address: Ipv4Addr,
    sock: RouteSocket,
    table: AddrTable,
}

impl Follower {
    fn start(address: Ipv4Addr) -> io::Result<Follower> {
        let mut f = Follower {
            address,
            sock: RouteSocket::open()?,
            table: AddrTable::default(),
        };
        f.dump()?;
        Ok(f)
    }

    fn dump(&mut self) -> io::Result<()> {
        let mut table = AddrTable::default();
        for m in &self.sock.dump(DUMP_TIMEOUT)? {
            table.apply(m);
        }
        self.table = table;
        Ok(())
    }

    /// Reads the waiting notifications (never blocks but for a dump after
    /// lost ones).
    fn read(&mut self) {
        let sock = &mut self.sock;
        if read_changes(|| sock.recv(), &mut self.table) {
            if let Err(e) = self.dump() {
                log::warn!("ha: cannot read this router's addresses: {e}");
            }
        }
    }

    fn role(&self) -> Role {
        if self.table.has(self.address) {
            Role::Active
        } else {
            Role::Backup
        }
    }
}

/// This node's side of the pair.
pub struct Ha {
    sock: UdpSocket,
    listen: SocketAddrV4,
    peer: SocketAddrV4,
    replica: Replica,
    follower: Option<Follower>,
    /// The engine's quarantine, which ended calls' records carry.
    quarantine: Duration,
    /// This node's half of the NAT ids.
    partition: IdPartition,
    /// How often the peer's live calls are kept from timing out here.
    refresh_every: Duration,
    next_refresh: Instant,
    /// What the peer last said of itself, kept after it died.
    last_peer: Option<Status>,
    auth_failures: u64,
    refused: u64,
    send_errors: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// What the last [`Ha::log_progress`] saw: gaps, snapshots applied and sent.
    logged: (u64, u64, u64),
    warn_refused: RateLimit,
    warn_io: RateLimit,
    buf: Vec<u8>,
    /// Something changed since the last report.
    changed: bool,
    /// When the oldest record not sent yet was queued.
    pending_since: Option<Instant>,
    next_report: Instant,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("listen", &self.listen)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Ha {
    /// Binds the socket and reads the role. `session` is random and not 0;
    /// `alg` is the engine's configuration (quarantine, idle timeouts).
    pub fn start(s: &HaSettings, alg: &Alg, session: u64, now: Instant) -> io::Result<Ha> {
        let key = Key::new(&s.key).map_err(io::Error::other)?;
        let sock = UdpSocket::bind(s.listen).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                "; under the packaged unit, add RestrictAddressFamilies=AF_INET in a drop-in"
            } else {
                ""
            };
            io::Error::new(
                e.kind(),
                format!("binding the replication socket to {}: {e}{hint}", s.listen),
            )
        })?;
        sock.set_nonblocking(true)?;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            set_buffer(&sock, opt, SOCKET_BUFFER);
        }
        let listen = match sock.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => s.listen,
        };
        let follower = match s.address {
            Some(a) => Some(Follower::start(a).map_err(|e| {
                io::Error::new(e.kind(), format!("following this router's addresses: {e}"))
            })?),
            None => None,
        };
        let role = follower.as_ref().map_or(Role::Active, Follower::role);
        let cfg = alg.config();
        // Several refreshes within the shortest idle timeout.
        let refresh_every = (cfg.conn_idle_timeout.min(cfg.call_idle_timeout) / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut rc = ReplicaConfig::new(s.node, role, key, session.max(1));
        // As many calls in each table as the engine holds, live and in
        // quarantine (the replica's own bound would cut a larger table).
        rc.max_calls = rc.max_calls.max(2 * cfg.max_calls);
        log::info!(
            "ha: node {} {} on {listen}, peer {}{}",
            s.node,
            role_text(role),
            s.peer,
            s.address.map_or_else(
                || " (no ha_address: always active)".into(),
                |a| format!(", active while this router holds {a}")
            )
        );
        Ok(Ha {
            sock,
            listen,
            peer: s.peer,
            replica: Replica::new(rc, now),
            follower,
            quarantine: cfg.quarantine,
            partition: cfg.id_partition,
            refresh_every,
            next_refresh: now + refresh_every,
            last_peer: None,
            auth_failures: 0,
            refused: 0,
            send_errors: 0,
            bytes_sent: 0,
            bytes_received: 0,
            logged: (0, 0, 0),
            warn_refused: RateLimit::new(Duration::from_secs(60), 10),
            warn_io: RateLimit::new(Duration::from_secs(60), 10),
            buf: vec![0; MAX_MESSAGE + 1],
            changed: true,
            pending_since: None,
            next_report: now,
        })
    }

    /// The descriptors to wait on: the replication socket and the route
    /// socket, if the role follows an address.
    pub fn fds(&self) -> [Option<RawFd>; 2] {
        [
            Some(self.sock.as_raw_fd()),
            self.follower.as_ref().map(|f| f.sock.as_fd().as_raw_fd()),
        ]
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.replica.role()
    }

    /// Whether the live peer, not this node, carries the packets of the
    /// call on `nat_id`, so that only its timers may end the call: all
    /// calls while this node is the backup; while both are active (no
    /// `ha_address`, or split brain) those of the peer's half of the ids.
    /// The active node of a pair times out every call itself, as a single
    /// router does.
    fn defers_to_peer(&self, nat_id: u16) -> bool {
        let Some(peer) = self.replica.peer() else {
            return false;
        };
        match (self.replica.role(), peer.role) {
            (Role::Backup, _) => true,
            (Role::Active, Role::Backup) => false,
            (Role::Active, Role::Active) => !self.partition.owns(nat_id),
        }
    }

    /// An engine event of a call this node handled (its packets or its
    /// timers, or restored at start), to send to the peer. The timeout of
    /// a call whose packets the peer carries (see `defers_to_peer`) is not
    /// this node's to tell: it saw none of them.
    pub fn record(&mut self, now: Instant, ev: &Event) {
        if let Event::CallEnded(c, cause) = ev {
            let timeout = matches!(
                cause,
                EndCause::SetupTimeout | EndCause::IdleTimeout | EndCause::ConnTimeout
            );
            if timeout && self.defers_to_peer(c.nat_id) {
                return;
            }
        }
        if let Some(r) = Record::from_event(ev, self.quarantine) {
            self.replica.record(now, r);
            self.changed = true;
            if self.pending_since.is_none() && self.replica.queued_records() > 0 {
                // The clock, not `now`: that is the batch's start.
                self.pending_since = Some(Instant::now());
            }
        }
    }

    /// Sends the queued records if a datagram's worth waits or the oldest
    /// has waited `FLUSH_AFTER`; for the middle of a batch of packets.
    pub fn transmit_if_due(&mut self) {
        let Some(since) = self.pending_since else {
            return;
        };
        let now = Instant::now();
        if self.replica.queued_records() >= MAX_RECORDS || now >= since + FLUSH_AFTER {
            self.transmit(now);
        }
    }

    /// Reads what waits on the sockets (at most `RECV_BATCH` datagrams):
    /// the peer's messages and address changes. Never blocks.
    pub fn receive(&mut self, now: Instant) {
        if let Some(f) = &mut self.follower {
            f.read();
            let role = f.role();
            if role != self.replica.role() {
                log::info!(
                    "ha: role {} -> {} ({} {} this router)",
                    role_text(self.replica.role()),
                    role_text(role),
                    f.address,
                    if role == Role::Active {
                        "came to"
                    } else {
                        "left"
                    }
                );
                self.replica.set_role(role);
                self.changed = true;
            }
        }
        for _ in 0..RECV_BATCH {
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error of an earlier send (the peer's socket closed).
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    self.io_warning(now, "receiving", &e);
                    break;
                }
            };
            self.changed = true;
            self.bytes_received += n as u64;
            if from != SocketAddr::V4(self.peer) {
                self.refused += 1;
                self.refusal(now, from, &format!("not from the peer {}", self.peer));
                continue;
            }
            // A datagram longer than the largest message is cut to
            // MAX_MESSAGE + 1 bytes, which the decoder refuses.
            if let Err(e) = self.replica.handle(now, &self.buf[..n]) {
                match e {
                    Error::BadTag => self.auth_failures += 1,
                    _ => self.refused += 1,
                }
                if matches!(e, Error::Replay(_) | Error::WrongSession) {
                    // Duplicates and a restarted peer's stray datagrams
                    // are part of normal life.
                    log::debug!("ha: message from {from} refused: {e}");
                } else {
                    self.refusal(now, from, &e.to_string());
                }
            }
        }
    }

    fn refusal(&mut self, now: Instant, from: SocketAddr, why: &str) {
        let (ok, suppressed) = self.warn_refused.allow(now);
        if suppressed > 0 {
            log::warn!("ha: {suppressed} more refused messages not logged");
        }
        if ok {
            log::warn!("ha: message from {from} refused: {why}");
        }
    }

    fn io_warning(&mut self, now: Instant, what: &str, e: &io::Error) {
        let (ok, suppressed) = self.warn_io.allow(now);
        if ok {
            log::warn!(
                "ha: {what} on the replication socket: {e}{}",
                if suppressed > 0 {
                    format!(" ({suppressed} more errors not logged)")
                } else {
                    String::new()
                }
            );
        }
    }

    /// The next change of the peer's calls for the engine, after logging
    /// the peer's comings and goings. `None`: nothing more now.
    pub fn poll_apply(&mut self) -> Option<SavedCall> {
        loop {
            match self.replica.poll_event()? {
                ReplicaEvent::Apply(r) => return Some(r.call().clone()),
                ReplicaEvent::Forget(mut c) => {
                    // Its end was missed and its quarantine is over: end it
                    // here too (no quarantine left).
                    c.quarantine_left = Some(0);
                    return Some(c);
                }
                ReplicaEvent::PeerUp(st) => {
                    log::info!(
                        "ha: peer up: node {} {} at {}",
                        st.node,
                        role_text(st.role),
                        self.peer
                    );
                    self.last_peer = Some(st);
                }
                ReplicaEvent::PeerRole(st) => {
                    log::info!("ha: peer node {} is now {}", st.node, role_text(st.role));
                    self.last_peer = Some(st);
                }
                ReplicaEvent::Adopted(n) => log::info!(
                    "ha: the peer started anew while this node is active: the {n} calls of \
                     its earlier run held here are this node's now, and go back to the peer \
                     in this node's table"
                ),
                ReplicaEvent::PeerDead => log::warn!(
                    "ha: peer lost: nothing valid from {} for {} s; its {} live calls stay \
                     here as they were",
                    self.peer,
                    self.replica.dead_after().as_secs(),
                    self.replica.peer_live_calls().count()
                ),
            }
        }
    }

    /// Every few seconds, keeps the calls whose packets the live peer
    /// carries (see `defers_to_peer`) from timing out in `alg` (see
    /// [`Alg::refresh_replicated`]): the peer's, and those this node made
    /// that the peer took over, so the standby keeps their fast path. Not
    /// the other half's calls restored here at start that the peer no
    /// longer has: they time out.
    pub fn refresh(&mut self, now: Instant, alg: &mut Alg) {
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + self.refresh_every;
        let partition = self.partition;
        let calls = self
            .replica
            .peer_live_calls()
            .chain(
                self.replica
                    .own_live_calls()
                    .filter(|c| partition.owns(c.nat_id)),
            )
            .chain(
                // Taken over from the peer's earlier run: this node's now.
                self.replica
                    .adopted_live_calls()
                    .filter(|c| !partition.owns(c.nat_id)),
            );
        for c in calls {
            if self.defers_to_peer(c.nat_id) {
                alg.refresh_replicated(now, c);
            }
        }
    }

    /// Sends what the replica has to send. A datagram the socket does not
    /// take now is dropped (counted); the protocol recovers from loss.
    pub fn transmit(&mut self, now: Instant) {
        self.pending_since = None;
        while let Some(bytes) = self.replica.poll_transmit() {
            self.changed = true;
            match self.sock.send_to(&bytes, self.peer) {
                Ok(n) => self.bytes_sent += n as u64,
                // The peer's daemon is not running: its hello will come.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    self.send_errors += 1;
                    self.io_warning(now, "sending", &e);
                }
            }
        }
        self.log_progress();
    }

    /// Logs gaps and resyncs as they happen.
    fn log_progress(&mut self) {
        let st = self.replica.stats();
        let now = (st.gaps, st.snapshots_applied, st.snapshots_sent);
        if now.0 > self.logged.0 {
            log::info!("ha: gap in the peer's records: asking for its whole table (resync)");
        }
        if now.1 > self.logged.1 {
            log::info!(
                "ha: resync: took the peer's whole table ({} live calls)",
                self.replica.peer_live_calls().count()
            );
        }
        if now.2 > self.logged.2 {
            log::info!("ha: resync: sent this node's whole table to the peer");
        }
        self.logged = now;
    }

    /// When [`Ha::handle_timeout`] (or a report) wants to run.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self
            .replica
            .poll_timeout()
            .map_or(self.next_refresh, |t| t.min(self.next_refresh));
        if self.changed {
            t = t.min(self.next_report);
        }
        t
    }

    /// Runs the replica's timers (heartbeats, peer death, resync retries).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.replica.poll_timeout().is_some_and(|t| t <= now) {
            self.replica.handle_timeout(now);
            self.changed = true;
        }
    }

    /// The report for `pptp-alg status` when something changed since the
    /// last one, at most every `REPORT_EVERY`.
    pub fn take_report(&mut self, now: Instant) -> Option<HaReport> {
        if !self.changed || now < self.next_report {
            return None;
        }
        self.changed = false;
        self.next_report = now + REPORT_EVERY;
        Some(self.report(now))
    }

    /// The state for `pptp-alg status`, as of `now`.
    pub fn report(&self, now: Instant) -> HaReport {
        let st = self.replica.stats();
        let alive = self.replica.peer();
        let known = alive.or(self.last_peer);
        HaReport {
            node: self.replica.node(),
            role: self.replica.role(),
            address: self.follower.as_ref().map(|f| f.address),
            listen: self.listen,
            peer: PeerReport {
                address: self.peer,
                alive: alive.is_some(),
                role: known.map(|s| s.role),
                node: known.map(|s| s.node),
            },
            in_sync: self.replica.in_sync(),
            peer_calls: self.replica.peer_live_calls().count(),
            records_sent: st.records_sent,
            records_received: st.records_applied,
            messages_sent: st.sent,
            messages_received: st.received,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            gaps: st.gaps,
            resyncs: st.snapshots_applied,
            snapshots_sent: st.snapshots_sent,
            auth_failures: self.auth_failures,
            refused: self.refused,
            send_errors: self.send_errors,
            last_message_age_ms: self
                .replica
                .peer_silent_for(now)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Sets a socket buffer size; a refusal only costs resyncs of large tables.
fn set_buffer(sock: &UdpSocket, opt: libc::c_int, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if let Err(e) = crate::netlink::set_socket_int(sock.as_raw_fd(), opt, v) {
        log::debug!("ha: cannot size a socket buffer: {e}");
    }
}

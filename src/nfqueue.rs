//! NFQUEUE access: the only code that touches the `nfq` crate.
//!
//! [`NfQueue::open`] binds and configures every queue completely (copy
//! range, length, fail-closed, no GSO) before returning, because the caller
//! must not create a queue rule before that: a packet queued to a bound
//! but unconfigured queue is dropped by the kernel.
//!
//! Every [`Packet`] obtained from [`NfQueue::try_recv`] must be passed to
//! [`NfQueue::verdict`]; a packet without a verdict stays in the kernel
//! until the socket closes, and then it is dropped.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// The largest IPv4 packet; the copy range, so the engine always sees the
/// whole packet.
pub const COPY_RANGE: u16 = 0xffff;

/// A queue that could not be set up.
#[derive(Debug)]
pub struct QueueError {
    /// What was being done.
    pub step: String,
    /// The system error.
    pub source: io::Error,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.source)?;
        match self.source.raw_os_error() {
            Some(libc::EPERM) => write!(f, " (CAP_NET_ADMIN is needed)"),
            Some(libc::EBUSY) => write!(
                f,
                " (another process is bound to this queue; is another pptp-alg running?)"
            ),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One queued packet awaiting its verdict.
#[derive(Debug)]
pub struct Packet {
    msg: nfq::Message,
}

impl Packet {
    /// The queue it came from.
    #[inline]
    pub fn queue(&self) -> u16 {
        self.msg.get_queue_num()
    }

    /// The packet's bytes (from the IP header on).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.msg.get_payload()
    }

    /// The packet's bytes, to rewrite in place (in the receive buffer, no
    /// copy). Once this is called, an [`Action::Accept`] verdict sends the
    /// bytes back to the kernel whether or not they changed, so call it
    /// only for packets that will normally be rewritten.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.msg.get_payload_mut()
    }

    /// The packet mark as it was queued.
    #[inline]
    pub fn mark(&self) -> u32 {
        self.msg.get_nfmark()
    }

    /// Sets the packet mark the kernel applies with the verdict.
    #[inline]
    pub fn set_mark(&mut self, mark: u32) {
        self.msg.set_nfmark(mark);
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Let it pass: unchanged, or with the bytes rewritten through
    /// [`Packet::payload_mut`] and the mark set with [`Packet::set_mark`].
    Accept,
    /// Let it pass with these bytes instead (and the mark, if one was set
    /// with [`Packet::set_mark`]).
    AcceptModified(&'a [u8]),
    /// Discard it.
    Drop,
}

/// What one queued packet of a full-size copy takes of a socket's receive
/// buffer (the kernel counts an skb's true size, about twice the packet).
const PACKET_TRUESIZE: u64 = 4096;
/// The largest receive buffer asked for (the default queues: 2 x 4,096
/// packets, 32 MiB).
const MAX_SOCKET_BUFFER: u64 = 64 << 20;

/// A netlink socket bound to a set of queues.
pub struct NfQueue {
    inner: nfq::Queue,
    fd: Option<RawFd>,
    queues: Vec<u16>,
}

impl fmt::Debug for NfQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfQueue")
            .field("fd", &self.fd)
            .field("queues", &self.queues)
            .finish()
    }
}

impl NfQueue {
    /// Opens one socket, binds `queues` and configures each: full copy,
    /// `max_len` packets, fail-closed, no GSO. Receiving is non-blocking.
    pub fn open(queues: &[u16], max_len: u32) -> Result<NfQueue, QueueError> {
        let err = |step: String| move |source| QueueError { step, source };
        let before = netfilter_sockets();
        let mut inner = nfq::Queue::open().map_err(err("opening the NFQUEUE socket".into()))?;
        let fd = match (&before, netfilter_sockets()) {
            (Some(before), Some(after)) => {
                let mut new = after.difference(before);
                match (new.next(), new.next()) {
                    (Some(&fd), None) => Some(fd),
                    _ => None,
                }
            }
            _ => None,
        };
        for &q in queues {
            inner.bind(q).map_err(err(format!("binding queue {q}")))?;
            inner
                .set_copy_range(q, COPY_RANGE)
                .map_err(err(format!("setting the copy range of queue {q}")))?;
            inner
                .set_queue_max_len(q, max_len)
                .map_err(err(format!("setting the length of queue {q}")))?;
            // Fail-closed: a full queue drops. A control segment let
            // through untranslated would leave a hole in the stream the
            // engine tracks (that connection could not be translated any
            // more) and carry inside Call IDs to the peer, where they can
            // collide with another host's NAT id; dropped, it is simply
            // retransmitted. GRE let through would reach the router itself,
            // not the inside host: lost either way. (No daemon at all is a
            // different case: the rules' `bypass` passes everything.)
            inner
                .set_fail_open(q, false)
                .map_err(err(format!("setting fail-closed on queue {q}")))?;
            // GSO super-packets would arrive with partial checksums and
            // several TCP segments in one; the engine wants real packets.
            inner
                .set_recv_gso(q, false)
                .map_err(err(format!("disabling GSO on queue {q}")))?;
        }
        inner.set_nonblocking(true);
        // Room in the socket for every packet the queues may hold: with the
        // default buffer (about 200 kB, some 90 queued packets) a busy
        // daemon's socket overflowed long before the queue was full, and
        // the kernel dropped control segments as "user dropped" (seen with
        // `--no-offload` under a GRE flood while the daemon's core was 98%
        // busy). The queue's own limit then decides, as configured.
        if let Some(fd) = fd {
            let bytes = (u64::from(max_len) * PACKET_TRUESIZE * queues.len() as u64)
                .min(MAX_SOCKET_BUFFER) as libc::c_int;
            if let Err(e) = crate::netlink::set_receive_buffer(fd, bytes) {
                log::debug!("NFQUEUE socket buffer of {bytes} bytes refused: {e}");
            }
        }
        Ok(NfQueue {
            inner,
            fd,
            queues: queues.to_vec(),
        })
    }

    /// The socket's descriptor for `poll(2)`, when it could be identified.
    ///
    /// nfq 0.2.5 keeps its descriptor private. `open` finds it as the one
    /// netlink-netfilter socket that appeared in `/proc/self/fd` during
    /// `nfq::Queue::open` (checked by socket domain and protocol), which is
    /// unambiguous as long as no other thread opens such a socket at the
    /// same moment (the daemon opens queues before starting threads).
    /// `None` means the caller must fall back to polling by time.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the descriptor belongs to `self.inner`, which outlives the
        // borrow; it is only used for poll(2), never closed.
        self.fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The socket's receive buffer in bytes, as the kernel reports it (twice
    /// what was asked for: it counts its own overhead), if the descriptor is
    /// known.
    pub fn receive_buffer(&self) -> Option<usize> {
        let fd = self.fd?;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` live for the call and describe the buffer.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then(|| usize::try_from(v).unwrap_or(0))
    }

    /// The bound queues.
    pub fn queues(&self) -> &[u16] {
        &self.queues
    }

    /// The next queued packet, or `None` when none is waiting.
    /// Interrupted system calls are retried.
    #[inline(always)]
    pub fn try_recv(&mut self) -> io::Result<Option<Packet>> {
        loop {
            match self.inner.recv() {
                Ok(msg) => return Ok(Some(Packet { msg })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives `pkt` its verdict.
    #[inline(always)]
    pub fn verdict(&mut self, mut pkt: Packet, action: Action<'_>) -> io::Result<()> {
        match action {
            Action::Accept => pkt.msg.set_verdict(nfq::Verdict::Accept),
            Action::Drop => pkt.msg.set_verdict(nfq::Verdict::Drop),
            Action::AcceptModified(payload) => {
                // `get_payload_mut` writes into the receive buffer (no
                // allocation); the engine never changes a packet's length,
                // so the other arm is only a safety net.
                let buf = pkt.msg.get_payload_mut();
                if buf.len() == payload.len() {
                    buf.copy_from_slice(payload);
                } else {
                    pkt.msg.set_payload(payload.to_vec());
                }
                pkt.msg.set_verdict(nfq::Verdict::Accept);
            }
        }
        self.inner.verdict(pkt.msg)
    }

    /// Unbinds every queue (best effort: closing the socket unbinds too).
    pub fn unbind_all(&mut self) {
        for &q in &self.queues {
            let _ = self.inner.unbind(q);
        }
    }
}

/// Descriptors of this process's netlink-netfilter sockets, or `None` when
/// `/proc` cannot be read.
fn netfilter_sockets() -> Option<HashSet<RawFd>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .filter(|&fd| {
                sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                    && sockopt(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
            })
            .collect(),
    )
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain getsockopt into a local int; a descriptor that is not a
    // socket (or is already closed) just fails.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(val)
}

/// One queue's line of `/proc/net/netfilter/nfnetlink_queue` (this
/// network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelQueueStats {
    /// The queue number.
    pub queue: u16,
    /// Packets waiting for a verdict.
    pub waiting: u64,
    /// Packets dropped because the queue held `queue_max_len`.
    pub dropped_full: u64,
    /// Packets dropped because the socket's receive buffer was full.
    pub dropped_socket: u64,
}

/// The kernel's numbers of every bound queue in this network namespace.
pub fn kernel_stats() -> io::Result<Vec<KernelQueueStats>> {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")?;
    Ok(parse_kernel_stats(&text))
}

/// Parses the lines of `/proc/net/netfilter/nfnetlink_queue`: queue number,
/// peer port id, waiting, copy mode, copy range, queue dropped, user
/// dropped, last id, 1.
fn parse_kernel_stats(text: &str) -> Vec<KernelQueueStats> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|w| w.parse().ok())
                .collect::<Option<_>>()?;
            if f.len() < 7 {
                return None;
            }
            Some(KernelQueueStats {
                queue: u16::try_from(f[0]).ok()?,
                waiting: f[2],
                dropped_full: f[5],
                dropped_socket: f[6],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_stats_lines() {
        let text = " 1723  12345     0 2 65535     0     0       17  1\n\
                    1725  12346    31 2 65535     4 84691   900000  1\n";
        assert_eq!(
            parse_kernel_stats(text),
            vec![
                KernelQueueStats {
                    queue: 1723,
                    waiting: 0,
                    dropped_full: 0,
                    dropped_socket: 0
                },
                KernelQueueStats {
                    queue: 1725,
                    waiting: 31,
                    dropped_full: 4,
                    dropped_socket: 84691
                },
            ]
        );
        assert!(parse_kernel_stats("garbage\n").is_empty());
    }
}

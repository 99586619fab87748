//! Talking to nf_tables over a netlink socket: atomic batches with every message's ack checked,
//! and simple get/dump requests.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nftnl::{Batch, MsgType, NlMsg};
use nftnl_sys::libc;

use super::NftError;

/// How long to wait for a dump to finish. The kernel answers in microseconds; this only guards
/// against hanging forever on a kernel bug.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer size: larger than any single netlink message the kernel sends us
/// (a dump part is at most a few pages).
const RECV_BUF_BYTES: usize = 256 * 1024;

const NLMSG_HDR_LEN: usize = 16;

/// One netlink message as received: its header fields and payload (after the 16-byte header).
pub struct Msg<'a> {
    /// The full message including the header, suitable for libnftnl's `*_nlmsg_parse`.
    pub raw: &'a [u8],
    /// `nlmsg_type`
    pub ty: u16,
    /// `nlmsg_seq`
    pub seq: u32,
}

/// A netlink socket to the netfilter subsystem.
///
/// The kernel knows the socket by its port id: a table created with the owner flag through
/// this socket accepts changes only from it, and is deleted when it closes (see
/// [`super::TableSocket`]).
pub struct Netlink {
    sock: mnl::Socket,
    /// `u64` so the byte view is aligned for `nlmsghdr`.
    buf: Vec<u64>,
    next_seq: u32,
}

impl Netlink {
    /// Opens and binds the socket.
    pub fn open() -> Result<Self, NftError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
        // libmnl opens without SOCK_CLOEXEC. A copy of the socket in a child process would keep
        // an owned table alive after the daemon died.
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(NftError::Socket(io::Error::last_os_error()));
        }
        Ok(Netlink {
            sock,
            buf: vec![0; RECV_BUF_BYTES / 8],
            // Batches number their messages from 1; keep single requests well apart so a
            // stray late reply can never be mistaken for a current one.
            next_seq: 0x1000_0000,
        })
    }

    /// The port id the kernel knows this socket by (the owner of the tables it creates with
    /// the owner flag).
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Sends `txn` as one atomic batch and checks the kernel's answer to every message in it.
    ///
    /// Returns the first rejection, naming the object it was about.
    pub fn commit(&mut self, txn: Txn) -> Result<(), NftError> {
        let n = txn.what.len();
        let batch = txn.batch.finalize();
        let seqs = batch.sequence_numbers();
        // Kernels >= 6.10 also ack the batch begin/end messages; nftnl numbers them too.
        let first = seqs.start + (seqs.len() - n) as u32 / 2;
        self.sock
            .send_all(&batch)
            .map_err(|source| NftError::Io { op: "send", source })?;

        // The kernel processes a batch synchronously inside sendmsg(), so every ack and error
        // is already queued on the socket: drain it without blocking.
        let mut first_error: Option<NftError> = None;
        let mut acked = vec![false; n];
        loop {
            let len = match self.recv(libc::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(NftError::Io {
                        op: "receive",
                        source,
                    })
                }
            };
            for msg in messages(self.bytes(len)) {
                let msg = msg?;
                if msg.ty != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                let (errno, seq) = parse_error(&msg)?;
                let idx = seq.wrapping_sub(first) as usize;
                if idx < n {
                    acked[idx] = true;
                }
                if errno != 0 && first_error.is_none() {
                    let what = match txn.what.get(idx) {
                        Some(w) => w.clone(),
                        None => "the batch".to_string(),
                    };
                    first_error = Some(NftError::Kernel { what, errno });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(idx) = acked.iter().position(|a| !a) {
            return Err(NftError::Timeout(txn.what[idx].clone()));
        }
        Ok(())
    }

    /// Sends one request built by `build(buf, seq)` and collects the data messages of the
    /// answer (until NLMSG_DONE for a dump, or the ack for a plain get).
    pub fn request(
        &mut self,
        what: &str,
        build: impl FnOnce(&mut [u8], u32),
        mut each: impl FnMut(&Msg<'_>) -> Result<(), NftError>,
    ) -> Result<(), NftError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut req = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
        build(&mut req, seq);
        let len = u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize;
        self.sock
            .send(&req[..len])
            .map_err(|source| NftError::Io { op: "send", source })?;

        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            self.wait_readable(deadline, what)?;
            let len = self
                .recv(libc::MSG_DONTWAIT)
                .map_err(|source| NftError::Io {
                    op: "receive",
                    source,
                })?;
            for msg in messages(self.bytes(len)) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                match msg.ty as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        let (errno, _) = parse_error(&msg)?;
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(NftError::Kernel {
                            what: what.to_string(),
                            errno,
                        });
                    }
                    _ => each(&msg)?,
                }
            }
        }
    }

    fn wait_readable(&self, deadline: Instant, what: &str) -> Result<(), NftError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NftError::Timeout(what.to_string()));
            }
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            match r {
                1.. => return Ok(()),
                0 => continue,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(NftError::Io {
                            op: "poll",
                            source: e,
                        });
                    }
                }
            }
        }
    }

    fn recv(&mut self, flags: i32) -> io::Result<usize> {
        let cap = self.buf.len() * 8;
        // SAFETY: the buffer is valid for `cap` bytes.
        let r = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                cap,
                flags,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: u64 storage viewed as bytes; len <= capacity as returned by recv().
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), len) }
    }
}

// SAFETY: `mnl::Socket` is a pointer to libmnl's `struct mnl_socket`, a heap block holding
// the descriptor and its bound address, with no thread affinity and no hidden shared state.
// `Netlink` owns it alone and uses it only through `&mut self` (or `&self` for the poll), so
// moving it to another thread is sound. It is not `Sync`: share it behind a mutex.
unsafe impl Send for Netlink {}

/// Splits a receive buffer into netlink messages.
pub(super) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, NftError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(NftError::Protocol(format!(
                "netlink message length {len} out of range"
            ))));
        }
        let msg = Msg {
            raw: &buf[..len],
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(Ok(msg))
    })
}

/// Returns (positive errno or 0, sequence number of the message it answers).
pub(super) fn parse_error(msg: &Msg<'_>) -> Result<(i32, u32), NftError> {
    let p = &msg.raw[NLMSG_HDR_LEN..];
    if p.len() < 4 + NLMSG_HDR_LEN {
        return Err(NftError::Protocol("short NLMSG_ERROR".into()));
    }
    let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let seq = u32::from_ne_bytes([p[12], p[13], p[14], p[15]]);
    // i32::MIN has no positive errno (negating it overflows); found by the
    // netlink fuzz target.
    let errno = err
        .checked_neg()
        .ok_or_else(|| NftError::Protocol(format!("NLMSG_ERROR with error code {err}")))?;
    Ok((errno, seq))
}

/// A batch under construction that remembers, for every message, what it was about, so that a
/// rejection can be reported as "add rule ... to chain ctl" rather than "batch failed".
pub struct Txn {
    batch: Batch,
    what: Vec<String>,
}

impl Txn {
    /// Starts an empty batch.
    pub fn new() -> Self {
        Txn {
            batch: Batch::new(),
            what: Vec::new(),
        }
    }

    /// Appends one message.
    pub fn add(&mut self, msg: &impl NlMsg, ty: MsgType, what: impl Into<String>) {
        self.batch.add(msg, ty);
        self.what.push(what.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_msg(code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        // The header of the request answered: length, type, flags, seq 7, pid.
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m
    }

    #[test]
    fn error_codes() {
        let parse = |code| {
            let buf = error_msg(code);
            let msg = messages(&buf).next().unwrap().unwrap();
            parse_error(&msg)
        };
        assert_eq!(parse(0).unwrap(), (0, 7));
        assert_eq!(parse(-libc::ENOENT).unwrap(), (libc::ENOENT, 7));
        // Regression (fuzz target netlink): negating i32::MIN panicked.
        assert!(matches!(parse(i32::MIN), Err(NftError::Protocol(_))));
    }
}

//! Talking to nf_tables over a netlink socket: atomic batches with every message's ack checked,
//! and simple get/dump requests. The socket, the splitting of replies into messages and the
//! wait are [`crate::netlink`]'s; what the messages mean is this module's (with libnftnl).

use std::io;
use std::time::{Duration, Instant};

use crate::netlink::Bus;
use nftnl::{Batch, MsgType, NlMsg};
use nftnl_sys::libc;

use super::NftError;
use crate::netlink::{messages, FrameError, Msg, NlSocket};

/// How long to wait for a dump to finish. The kernel answers in microseconds; this only guards
/// against hanging forever on a kernel bug.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer size: larger than any single netlink message the kernel sends us
/// (a dump part is at most a few pages).
const RECV_BUF_BYTES: usize = 256 * 1024;

/// A netlink socket to the netfilter subsystem.
///
/// The kernel knows the socket by its port id: a table created with the owner flag through
/// this socket accepts changes only from it, and is deleted when it closes (see
/// [`super::TableSocket`]). The socket is close-on-exec: a copy of it in a child process
/// would keep an owned table alive after the daemon died.
pub struct Netlink {
    sock: NlSocket,
    next_seq: u32,
    /// Sends that waited for the kernel's answer (batches and requests): what a call's
    /// element changes cost the kernel and the daemon, shown to tests.
    round_trips: u64,
    /// Where requests are built: as large as any message libnftnl builds, zeroed once and
    /// cleared after each use (zeroing all of it per request cost more than the rest of a
    /// call's netlink work together).
    req: Vec<u8>,
}

impl From<FrameError> for NftError {
    fn from(e: FrameError) -> NftError {
        NftError::Protocol(e.to_string())
    }
}

fn receive_error(e: impl Into<io::Error>) -> NftError {
    NftError::Io {
        op: "receive",
        source: e.into(),
    }
}

impl Netlink {
    /// Opens and binds the socket.
    pub fn open() -> Result<Self, NftError> {
        let sock = NlSocket::open(Bus::Netfilter, 0, RECV_BUF_BYTES).map_err(NftError::Socket)?;
        Ok(Netlink {
            sock,
            // Batches number their messages from 1; keep single requests well apart so a
            // stray late reply can never be mistaken for a current one.
            next_seq: 0x1000_0000,
            round_trips: 0,
            req: vec![0u8; nftnl::nft_nlmsg_maxsize() as usize],
        })
    }

    /// How many batches and requests went to the kernel through this socket, each one send
    /// and one wait for its answer.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
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
        self.round_trips += 1;
        for part in &batch {
            self.sock
                .send(part)
                .map_err(|source| NftError::Io { op: "send", source })?;
        }

        // The kernel processes a batch synchronously inside sendmsg(), so every ack and error
        // is already queued on the socket: drain it without blocking.
        let mut first_error: Option<NftError> = None;
        let mut acked = vec![false; n];
        while let Some(bytes) = self.sock.recv().map_err(receive_error)? {
            for msg in messages(bytes) {
                let msg = msg?;
                if !msg.is_error() {
                    continue;
                }
                let (errno, seq) = parse_error(&msg)?;
                let idx = seq.wrapping_sub(first) as usize;
                if idx < n {
                    acked[idx] = true;
                }
                if errno != 0 && first_error.is_none() {
                    let what = match txn.what.get(idx) {
                        Some(w) => w.text(),
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
            return Err(NftError::Timeout(txn.what[idx].text()));
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
        let mut build = Some(build);
        let mut r = self.requests(
            1,
            |_| what.to_string(),
            |_, buf, seq| {
                if let Some(b) = build.take() {
                    b(buf, seq)
                }
            },
            |_, msg| each(msg),
        )?;
        r.pop()
            .unwrap_or_else(|| Err(NftError::Timeout(what.to_string())))
    }

    /// Sends `n` requests (the `i`th built by `build(i, buf, seq)`, about `what(i)`) in ONE
    /// send, and collects the data messages of every answer with `each(i, msg)`: several
    /// reads for one wait. Returns each request's own outcome (one can fail while the others
    /// answer); `Err` only when nothing could be sent or the answers cannot be read.
    pub fn requests(
        &mut self,
        n: usize,
        what: impl Fn(usize) -> String,
        mut build: impl FnMut(usize, &mut [u8], u32),
        mut each: impl FnMut(usize, &Msg<'_>) -> Result<(), NftError>,
    ) -> Result<Vec<Result<(), NftError>>, NftError> {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(n as u32);
        let mut out = Vec::with_capacity(n * 128);
        for i in 0..n {
            let part = &mut self.req;
            build(i, part, first.wrapping_add(i as u32));
            let len = u32::from_ne_bytes([part[0], part[1], part[2], part[3]]) as usize;
            let built = match part.get(..len) {
                Some(msg) => {
                    out.extend_from_slice(msg);
                    // Netlink messages follow each other at 4-byte boundaries.
                    out.resize(out.len().next_multiple_of(4), 0);
                    true
                }
                None => false,
            };
            // The next request is built on zeros, as on a fresh buffer.
            let used = len.next_multiple_of(4).min(part.len());
            part[..used].fill(0);
            if !built {
                part.fill(0);
                return Err(NftError::Protocol(format!(
                    "request {} claims {len} bytes, more than built",
                    what(i)
                )));
            }
        }
        self.round_trips += 1;
        self.sock
            .send(&out)
            .map_err(|source| NftError::Io { op: "send", source })?;

        let mut done: Vec<Option<Result<(), NftError>>> = (0..n).map(|_| None).collect();
        let mut left = n;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while left > 0 {
            match self.wait_readable(deadline, "") {
                Ok(()) => {}
                Err(NftError::Timeout(_)) => {
                    for (i, d) in done.iter_mut().enumerate() {
                        if d.is_none() {
                            *d = Some(Err(NftError::Timeout(what(i))));
                        }
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
            let Some(bytes) = self.sock.recv().map_err(receive_error)? else {
                continue;
            };
            for msg in messages(bytes) {
                let msg = msg?;
                let i = msg.seq.wrapping_sub(first) as usize;
                let Some(slot @ None) = done.get_mut(i) else {
                    continue;
                };
                let r = match msg.ty as i32 {
                    libc::NLMSG_DONE => Ok(()),
                    libc::NLMSG_ERROR => match parse_error(&msg)? {
                        (0, _) => Ok(()),
                        (errno, _) => Err(NftError::Kernel {
                            what: what(i),
                            errno,
                        }),
                    },
                    _ => match each(i, &msg) {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    },
                };
                *slot = Some(r);
                left -= 1;
            }
        }
        Ok(done
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Err(NftError::Protocol("no answer".into()))))
            .collect())
    }

    fn wait_readable(&self, deadline: Instant, what: &str) -> Result<(), NftError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NftError::Timeout(what.to_string()));
            }
            if self
                .sock
                .wait(left)
                .map_err(|source| NftError::Io { op: "poll", source })?
            {
                return Ok(());
            }
        }
    }
}

/// Returns (positive errno or 0, sequence number of the message it answers).
pub(super) fn parse_error(msg: &Msg<'_>) -> Result<(i32, u32), NftError> {
    let e = msg.error()?;
    let seq = e
        .request_seq
        .ok_or_else(|| NftError::Protocol("short NLMSG_ERROR".into()))?;
    // i32::MIN has no positive errno (negating it overflows); found by the
    // netlink fuzz target.
    let errno = e
        .code
        .checked_neg()
        .ok_or_else(|| NftError::Protocol(format!("NLMSG_ERROR with error code {}", e.code)))?;
    Ok((errno, seq))
}

/// A batch under construction that remembers, for every message, what it was about, so that a
/// rejection can be reported as "add rule ... to chain ctl" rather than "batch failed".
pub struct Txn {
    batch: Batch,
    what: Vec<What>,
}

/// What a message of a [`Txn`] is about: a text, or a function that writes it, called only
/// when the message is refused (a call's element messages are sent by the thousand and
/// formatting their descriptions up front cost more than building them).
enum What {
    Text(String),
    Lazy(Box<dyn Fn() -> String>),
}

impl What {
    fn text(&self) -> String {
        match self {
            What::Text(s) => s.clone(),
            What::Lazy(f) => f(),
        }
    }
}

impl Txn {
    /// Starts an empty batch.
    pub fn new() -> Self {
        Txn {
            batch: Batch::new(),
            what: Vec::new(),
        }
    }

    /// Whether the batch has no message.
    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    /// Appends one message.
    pub fn add(&mut self, msg: &impl NlMsg, ty: MsgType, what: impl Into<String>) {
        self.batch.add(msg, ty);
        self.what.push(What::Text(what.into()));
    }

    /// Appends one message whose description `what` writes only if it is needed.
    pub fn add_lazy(&mut self, msg: &impl NlMsg, ty: MsgType, what: impl Fn() -> String + 'static) {
        self.batch.add(msg, ty);
        self.what.push(What::Lazy(Box::new(what)));
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

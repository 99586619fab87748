//! A bound netlink socket and its receive buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

/// What can go wrong receiving, beyond "nothing is waiting".
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The socket's receive queue overflowed: the kernel dropped messages (`ENOBUFS`).
    #[error("the kernel dropped messages to this socket (receive queue full)")]
    Overrun,
    /// A datagram larger than the receive buffer: its tail is lost.
    #[error("a {0}-byte netlink datagram did not fit the receive buffer")]
    Truncated(usize),
    /// Any other failure of recvfrom(2).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<RecvError> for io::Error {
    fn from(e: RecvError) -> io::Error {
        match e {
            RecvError::Overrun => io::Error::from_raw_os_error(libc::ENOBUFS),
            RecvError::Io(e) => e,
            e @ RecvError::Truncated(_) => io::Error::other(e),
        }
    }
}

/// A netlink socket bound to a port id the kernel chose, close-on-exec, with a receive buffer
/// aligned for `nlmsghdr` (libnftnl reads headers through struct pointers).
pub struct NlSocket {
    sock: Socket,
    portid: u32,
    /// `u64` so the byte view is aligned.
    buf: Vec<u64>,
}

impl NlSocket {
    /// Opens a socket of `protocol` (`netlink_sys::protocols`), joined to the multicast
    /// `groups` (a bit mask, 0 for none), receiving datagrams of up to `recv_buf` bytes.
    pub fn open(protocol: isize, groups: u32, recv_buf: usize) -> io::Result<Self> {
        let mut sock = Socket::new(protocol)?;
        let mut addr = SocketAddr::new(0, groups);
        sock.bind(&addr)?;
        sock.get_address(&mut addr)?;
        Ok(NlSocket {
            sock,
            portid: addr.port_number(),
            buf: vec![0; recv_buf.div_ceil(8)],
        })
    }

    /// The port id the kernel knows this socket by.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Asks for a socket receive queue of `bytes`, beyond `rmem_max` where allowed
    /// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN), else as large as `rmem_max` lets it be.
    pub fn set_queue_size(&self, bytes: i32) -> io::Result<()> {
        // SAFETY: valid descriptor and option buffer. netlink-sys sets only SO_RCVBUF.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        self.sock.set_rx_buf_sz(bytes)
    }

    /// Sends one buffer (one message or a batch of them) to the kernel, whole.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(bytes, &kernel, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "sent {n} of {} bytes to the kernel",
                        bytes.len()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One receive that does not block: `None` when nothing is waiting. Datagrams that other
    /// processes sent to this port are dropped unread: only the kernel's count.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, RecvError> {
        let cap = self.buf.len() * 8;
        loop {
            // SAFETY: u64 storage viewed as the bytes it holds, all initialised.
            let mut view: &mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast(), cap) };
            match self
                .sock
                .recv_from(&mut view, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                // MSG_TRUNC: the datagram's real length, even when longer than the buffer.
                Ok((n, _)) if n > cap => return Err(RecvError::Truncated(n)),
                Ok((_, from)) if from.port_number() != 0 => continue,
                Ok((n, _)) => {
                    // SAFETY: as above, read-only, n <= cap.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), n) };
                    return Ok(Some(bytes));
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(None),
                    Some(libc::ENOBUFS) => return Err(RecvError::Overrun),
                    _ => return Err(RecvError::Io(e)),
                },
            }
        }
    }

    /// Waits until something can be received or `timeout` passes (see [`super::readable`]).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        Ok(super::readable([Some(self.sock.as_raw_fd())], timeout)?[0])
    }
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

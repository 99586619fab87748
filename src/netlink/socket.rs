//! A bound netlink socket and its receive buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

pub use mnl::Bus;

/// What can go wrong receiving, beyond "nothing is waiting".
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The socket's receive queue overflowed: the kernel dropped messages (`ENOBUFS`).
    #[error("the kernel dropped messages to this socket (receive queue full)")]
    Overrun,
    /// A datagram larger than the receive buffer (of this many bytes): its tail is lost.
    #[error("a netlink datagram did not fit the {0}-byte receive buffer")]
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

/// A netlink socket (libmnl's, the library libnftnl is made for) bound to a port id the
/// kernel chose, close-on-exec and non-blocking, with a receive buffer aligned for
/// `nlmsghdr` (libnftnl reads headers through struct pointers).
pub struct NlSocket {
    sock: mnl::Socket,
    portid: u32,
    /// `u64` so the byte view is aligned.
    buf: Vec<u64>,
}

// SAFETY: `mnl::Socket` is a pointer to libmnl's `struct mnl_socket`, a heap block holding
// the descriptor and its bound address, with no thread affinity and no hidden shared state.
// `NlSocket` owns it alone, so moving it to another thread is sound. It is not `Sync`: share
// it behind a mutex.
unsafe impl Send for NlSocket {}

impl NlSocket {
    /// Opens a socket on `bus`, joined to the multicast `groups` (a bit mask, 0 for none),
    /// receiving datagrams of up to `recv_buf` bytes.
    pub fn open(bus: Bus, groups: u32, recv_buf: usize) -> io::Result<Self> {
        let sock = mnl::Socket::open(bus)?;
        let fd = sock.as_raw_fd();
        // SAFETY: fcntl on a descriptor this socket owns; flags are plain integers.
        let ok = unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
                && libc::fcntl(
                    fd,
                    libc::F_SETFL,
                    libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
                ) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        sock.bind(groups, mnl::mnl_sys::MNL_SOCKET_AUTOPID)?;
        Ok(NlSocket {
            portid: sock.portid(),
            sock,
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
        set_receive_buffer(self.sock.as_raw_fd(), bytes)
    }

    /// Sends one buffer (one message or a batch of them) to the kernel, whole.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        loop {
            match self.sock.send(bytes) {
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

    /// One receive that does not block: `None` when nothing is waiting.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, RecvError> {
        let cap = self.buf.len() * 8;
        loop {
            // SAFETY: u64 storage viewed as the bytes it holds, all initialised.
            let view: &mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast(), cap) };
            match self.sock.recv_raw(view) {
                Ok(n) => {
                    // SAFETY: as above, read-only, n <= cap.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), n) };
                    return Ok(Some(bytes));
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(None),
                    Some(libc::ENOBUFS) => return Err(RecvError::Overrun),
                    // libmnl's answer to a datagram longer than the buffer (MSG_TRUNC).
                    Some(libc::ENOSPC) => return Err(RecvError::Truncated(cap)),
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
        // SAFETY: the descriptor is open as long as `self.sock` is, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) }
    }
}

/// Sets the socket option `opt` (of level `SOL_SOCKET`) of `fd` to `value`.
pub fn set_socket_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed; a bad descriptor is an error.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for a receive buffer of `bytes` on `fd`, beyond `rmem_max` where allowed
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN), else as large as `rmem_max` lets it be.
pub fn set_receive_buffer(fd: RawFd, bytes: libc::c_int) -> io::Result<()> {
    set_socket_int(fd, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| set_socket_int(fd, libc::SO_RCVBUF, bytes))
}

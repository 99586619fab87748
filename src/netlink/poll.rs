//! Waiting for readable descriptors.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until one of `fds` is readable (or hung up, or in error) or `timeout` passes, and
/// tells which are. `None` entries are skipped. An interrupting signal returns early with
/// nothing readable: callers loop on their own deadline anyway.
///
/// ppoll(2) as a bare system call with the timeout in nanoseconds: no rounding (a deadline
/// 0.4 ms away is not polled for 0 ms in a loop, nor for 1 ms), and none of glibc's thread
/// cancellation work around its wrapper (about 60 instructions per wake-up, measured), which
/// no thread here uses. The packet thread waits here at every wake-up, hence inlined, and raw
/// descriptors rather than `BorrowedFd`s: std's `AsFd` of a socket is a call of its own
/// (poll only reports on a descriptor, a closed one included, as POLLNVAL).
#[inline]
pub fn readable<const N: usize>(
    fds: [Option<RawFd>; N],
    timeout: Duration,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        // A negative descriptor is ignored by poll.
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is a valid array of N pollfd and `ts` a valid timespec, both live for the
    // call; no signal mask is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            pfds.as_mut_ptr(),
            N as libc::nfds_t,
            &ts as *const libc::timespec,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if r < 0 {
        return failed();
    }
    Ok(pfds.map(|p| p.revents != 0))
}

/// The rare way out of [`readable`], kept out of its inlined body.
#[cold]
#[inline(never)]
fn failed<const N: usize>() -> io::Result<[bool; N]> {
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        return Ok([false; N]);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn tells_which_is_readable_and_times_out() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        let t = Instant::now();
        let r = readable(
            [Some(b.as_raw_fd()), None, Some(d.as_raw_fd())],
            Duration::from_millis(20),
        );
        assert_eq!(r.unwrap(), [false; 3]);
        assert!(t.elapsed() >= Duration::from_millis(20));
        a.write_all(&[1]).unwrap();
        let r = readable(
            [Some(b.as_raw_fd()), None, Some(d.as_raw_fd())],
            Duration::from_secs(5),
        );
        assert_eq!(r.unwrap(), [true, false, false]);
        // A zero timeout only looks.
        let r = readable([Some(d.as_raw_fd()), Some(b.as_raw_fd())], Duration::ZERO);
        assert_eq!(r.unwrap(), [false, true]);
    }
}

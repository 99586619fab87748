//! Splitting a receive buffer into netlink messages, and reading `NLMSG_ERROR`.

use netlink_packet_core::{ErrorBuffer, NetlinkBuffer, NLMSG_ERROR};

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

/// One netlink message of a receive buffer: its header fields and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The whole message, header included (libnftnl's `*_nlmsg_parse` wants it so).
    pub raw: &'a [u8],
    /// `nlmsg_type`
    pub ty: u16,
    /// `nlmsg_flags`
    pub flags: u16,
    /// `nlmsg_seq`
    pub seq: u32,
    /// `nlmsg_pid`
    pub pid: u32,
}

/// A buffer whose framing cannot be trusted from some message on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message's length field is below the header's size or beyond the buffer.
    #[error("netlink message length {len} out of range ({left} bytes left)")]
    Length {
        /// `nlmsg_len`
        len: usize,
        /// The bytes left in the buffer from the message's start.
        left: usize,
    },
    /// An `NLMSG_ERROR` too short for its error code (and, where asked for, the header of the
    /// request it answers).
    #[error("short NLMSG_ERROR ({0} bytes)")]
    ShortError(usize),
}

/// The content of an `NLMSG_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg {
    /// 0 for an acknowledgement, else the negative of the errno.
    pub code: i32,
    /// `nlmsg_seq` of the request answered, when the message carries its header.
    pub request_seq: Option<u32>,
}

/// Splits a receive buffer into messages, each starting at the 4-byte aligned end of the one
/// before. Fewer than [`NLMSG_HDRLEN`] bytes left end it quietly; a length field that is
/// impossible ends it with a [`FrameError`]. Never panics, whatever the bytes.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, FrameError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        // The header's fields are readable: the buffer holds at least a header.
        let nl = NetlinkBuffer::new(buf);
        let len = nl.length() as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            let left = buf.len();
            buf = &[];
            return Some(Err(FrameError::Length { len, left }));
        }
        let msg = Msg {
            raw: &buf[..len],
            ty: nl.message_type(),
            flags: nl.flags(),
            seq: nl.sequence_number(),
            pid: nl.port_number(),
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(Ok(msg))
    })
}

impl<'a> Msg<'a> {
    /// The bytes after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.raw[NLMSG_HDRLEN..]
    }

    /// Whether this is an `NLMSG_ERROR` (an error or an acknowledgement).
    pub fn is_error(&self) -> bool {
        self.ty == NLMSG_ERROR
    }

    /// Reads an `NLMSG_ERROR`: its code needs 4 bytes, the request's sequence number is there
    /// when the request's header follows (it always does from the kernel).
    pub fn error(&self) -> Result<ErrorMsg, FrameError> {
        let p = self.payload();
        let e = ErrorBuffer::new_checked(p).map_err(|_| FrameError::ShortError(p.len()))?;
        // The kernel echoes the request's header (and, without NLM_F_CAPPED, its payload):
        // only its sequence number matters, whatever its length field says.
        let request_seq = e
            .payload()
            .get(..NLMSG_HDRLEN)
            .map(|h| NetlinkBuffer::new(h).sequence_number());
        Ok(ErrorMsg {
            code: e.code().map_or(0, i32::from),
            request_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn splits_at_aligned_ends_and_reads_the_header() {
        let mut buf = nl_msg(20, 0x22, 7, 9, &[1, 2, 3]);
        buf.push(0);
        buf.extend(nl_msg(3, 2, 8, 0, &0u32.to_ne_bytes()));
        // A tail shorter than a header is no message.
        buf.extend([0xff; 15]);
        let m: Vec<Msg> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].ty, m[0].flags, m[0].seq, m[0].pid), (20, 0x22, 7, 9));
        assert_eq!(m[0].payload(), [1, 2, 3]);
        assert_eq!((m[1].ty, m[1].seq, m[1].raw.len()), (3, 8, 20));
    }

    #[test]
    fn an_impossible_length_ends_the_buffer_with_an_error() {
        let good = nl_msg(20, 0, 1, 0, &[0; 4]);
        for bad in [0u32, 15, 1000] {
            let mut buf = good.clone();
            let mut m = good.clone();
            m[0..4].copy_from_slice(&bad.to_ne_bytes());
            buf.extend(&m);
            buf.extend(&good);
            let r: Vec<_> = messages(&buf).collect();
            assert_eq!(r.len(), 2, "length {bad}");
            assert!(r[0].is_ok());
            assert_eq!(
                r[1],
                Err(FrameError::Length {
                    len: bad as usize,
                    left: 2 * good.len()
                })
            );
        }
        // A length that ends past the buffer by its padding only is fine.
        let m = nl_msg(20, 0, 1, 0, &[0; 3]);
        assert_eq!(messages(&m).count(), 1);
    }

    #[test]
    fn error_messages() {
        let mut p = (-libc::EPERM).to_ne_bytes().to_vec();
        let m = nl_msg(NLMSG_ERROR, 0, 1, 0, &p);
        let m = messages(&m).next().unwrap().unwrap();
        assert!(m.is_error());
        assert_eq!(
            m.error(),
            Ok(ErrorMsg {
                code: -libc::EPERM,
                request_seq: None
            })
        );
        // With the request's header: its sequence number.
        p.extend(nl_msg(0x0a00, 5, 42, 0, &[]));
        let m = nl_msg(NLMSG_ERROR, 0, 1, 0, &p);
        let m = messages(&m).next().unwrap().unwrap();
        assert_eq!(m.error().unwrap().request_seq, Some(42));
        // The whole request echoed (an error without NLM_F_CAPPED), its length field larger
        // than what this test put there: still read.
        let mut p = 0i32.to_ne_bytes().to_vec();
        p.extend(nl_msg(0x0a00, 5, 43, 0, &[0; 8]));
        p[4..8].copy_from_slice(&200u32.to_ne_bytes());
        let m = nl_msg(NLMSG_ERROR, 0, 1, 0, &p);
        let m = messages(&m).next().unwrap().unwrap();
        assert_eq!(
            m.error(),
            Ok(ErrorMsg {
                code: 0,
                request_seq: Some(43)
            })
        );
        let m = nl_msg(NLMSG_ERROR, 0, 1, 0, &[0; 3]);
        let m = messages(&m).next().unwrap().unwrap();
        assert_eq!(m.error(), Err(FrameError::ShortError(3)));
    }
}

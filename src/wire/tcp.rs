//! TCP segment view (RFC 9293): ports, sequence number, flags, payload and
//! checksum, and the in-place payload patch with its checksum update.

use super::{check, checksum, get_u16, get_u32, ipv4, set_u16, LenError};
use std::net::Ipv4Addr;
use thiserror::Error;

/// Where the fields of the fixed header are.
pub mod field {
    use crate::wire::Field;

    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgement number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble, in 32-bit words).
    pub const DATA_OFF: usize = 12;
    /// The flag byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub const FLAGS: usize = 13;
    /// Receive window.
    pub const WIN_SIZE: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
    /// Length of a header without options.
    pub const MIN_HEADER: usize = URGENT.end;
}

/// FIN flag.
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// ACK flag.
pub const ACK: u8 = 0x10;

/// Why a buffer is not a TCP segment this view can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TcpError {
    /// Shorter than the header (with the options its data offset declares).
    #[error("TCP {0}")]
    Len(#[from] LenError),
    /// The data offset gives less than the 20 bytes of a header.
    #[error("TCP header length {0} below 20")]
    HeaderLen(usize),
}

/// A view over a TCP segment (header and payload).
#[derive(Debug)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buf` without any check: the getters may panic on a buffer
    /// that [`Self::check_len`] would refuse.
    pub const fn new_unchecked(buf: T) -> Self {
        TcpSegment { buf }
    }

    /// Wraps `buf` after [`Self::check_len`].
    pub fn new_checked(buf: T) -> Result<Self, TcpError> {
        let s = Self::new_unchecked(buf);
        s.check_len()?;
        Ok(s)
    }

    /// Checks that the buffer holds the header and the options its data
    /// offset declares.
    pub fn check_len(&self) -> Result<(), TcpError> {
        let len = self.buf.as_ref().len();
        check(len, field::MIN_HEADER)?;
        let hl = self.header_len();
        if hl < field::MIN_HEADER {
            return Err(TcpError::HeaderLen(hl));
        }
        check(len, hl)?;
        Ok(())
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        get_u32(self.buf.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgement number (meaningful with the ACK flag).
    pub fn ack(&self) -> u32 {
        get_u32(self.buf.as_ref(), field::ACK_NUM)
    }

    /// Header length including options.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flag byte (FIN, SYN, RST, PSH, ACK, URG, ...).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// Segment payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }

    /// Whether the checksum is valid for the given addresses.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buf.as_ref();
        let acc = ipv4::pseudo_header_sum(src, dst, ipv4::PROTO_TCP, b.len());
        checksum::finish(checksum::sum(acc, b)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    /// Overwrites one payload byte and updates the checksum incrementally.
    #[inline]
    pub fn patch_payload_byte(&mut self, at: usize, new: u8) {
        let pos = self.header_len() + at;
        let old = self.buf.as_ref()[pos];
        if old == new {
            return;
        }
        let hc = checksum::update_byte(self.checksum(), pos, old, new);
        let b = self.buf.as_mut();
        b[pos] = new;
        set_u16(b, field::CHECKSUM, hc);
    }

    /// Recomputes the checksum from scratch for the given addresses.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let b = self.buf.as_mut();
        set_u16(b, field::CHECKSUM, 0);
        let acc = ipv4::pseudo_header_sum(src, dst, ipv4::PROTO_TCP, b.len());
        let c = checksum::finish(checksum::sum(acc, b));
        set_u16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_is_wrong() {
        let mut b = [0u8; 24];
        assert_eq!(
            TcpSegment::new_checked(&b[..19]).err(),
            Some(TcpError::Len(LenError { need: 20, have: 19 }))
        );
        b[field::DATA_OFF] = 4 << 4;
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(TcpError::HeaderLen(16))
        );
        b[field::DATA_OFF] = 7 << 4;
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(TcpError::Len(LenError { need: 28, have: 24 }))
        );
        b[field::DATA_OFF] = 6 << 4;
        assert_eq!(TcpSegment::new_checked(&b[..]).unwrap().payload().len(), 0);
    }
}

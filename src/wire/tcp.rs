//! TCP segment view (RFC 9293): ports, sequence number, flags, payload and
//! checksum.

use super::{check, checksum, get_u16, get_u32, ipv4, set_u16, WireError};
use std::net::Ipv4Addr;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
    pub const MIN_HEADER: usize = 20;
}

/// FIN flag.
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// ACK flag.
pub const ACK: u8 = 0x10;

/// A view over a TCP segment (header and payload).
#[derive(Debug)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buf` after checking the header and its data offset.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let len = buf.as_ref().len();
        check(len, field::MIN_HEADER)?;
        let s = TcpSegment { buf };
        let hl = s.header_len();
        if hl < field::MIN_HEADER {
            return Err(WireError::BadLength);
        }
        check(len, hl)?;
        Ok(s)
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
        get_u32(self.buf.as_ref(), field::SEQ)
    }

    /// Acknowledgement number (meaningful with the ACK flag).
    pub fn ack(&self) -> u32 {
        get_u32(self.buf.as_ref(), field::ACK)
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

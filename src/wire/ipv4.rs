//! IPv4 header view (RFC 791), enough to find the transport payload and to
//! rewrite the destination address.

use super::{check, checksum, get_u16, get_u32, WireError};
use std::net::Ipv4Addr;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of GRE.
pub const PROTO_GRE: u8 = 47;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const FRAG: usize = 6;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_HEADER: usize = 20;
}

/// Minimum IPv4 header length.
pub const MIN_HEADER_LEN: usize = field::MIN_HEADER;

/// A view over an IPv4 packet starting at the IP header.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buf` after checking the version, the header length and that
    /// the buffer holds the total length the header declares.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        check(b.len(), field::MIN_HEADER)?;
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadField("ip version"));
        }
        let p = Ipv4Packet { buf };
        let hl = p.header_len();
        let tl = p.total_len();
        if hl < field::MIN_HEADER || tl < hl {
            return Err(WireError::BadLength);
        }
        check(p.buf.as_ref().len(), tl)?;
        Ok(p)
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length field.
    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buf.as_ref(), field::TOTAL_LEN))
    }

    /// Fragment offset in 8-byte units; non-zero for non-first fragments.
    pub fn frag_offset(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::FRAG) & 0x1fff
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        get_u16(self.buf.as_ref(), field::FRAG) & 0x2000 != 0
    }

    /// IP protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTOCOL]
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.buf.as_ref(), field::SRC))
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.buf.as_ref(), field::DST))
    }

    /// Header checksum field.
    pub fn header_checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// The transport payload (up to the total length).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Mutable transport payload (up to the total length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.buf.as_mut()[h..t]
    }

    /// Rewrites the destination address and updates the header checksum
    /// incrementally. Returns the old address (needed for transport
    /// pseudo-header checksums).
    pub fn set_dst(&mut self, dst: Ipv4Addr) -> Ipv4Addr {
        let old = self.dst();
        let hc = checksum::update_u32(self.header_checksum(), u32::from(old), u32::from(dst));
        let b = self.buf.as_mut();
        b[field::DST..field::DST + 4].copy_from_slice(&dst.octets());
        super::set_u16(b, field::CHECKSUM, hc);
        old
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        super::set_u16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        super::set_u16(b, field::CHECKSUM, c);
    }
}

/// Pseudo-header sum for TCP/UDP checksums (not folded).
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = checksum::sum(0, &src.octets());
    acc = checksum::sum(acc, &dst.octets());
    acc + u32::from(proto) + (len as u32)
}

//! IPv4 header view (RFC 791), enough to find the transport payload and to
//! rewrite the destination address.

use super::{check, checksum, get_u16, get_u32, set_u16, LenError};
use std::net::Ipv4Addr;
use thiserror::Error;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of GRE.
pub const PROTO_GRE: u8 = 47;

/// Where the fields of the fixed header are.
pub mod field {
    use crate::wire::Field;

    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const DSCP_ECN: usize = 1;
    /// Total length of the datagram.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
    /// Length of a header without options.
    pub const MIN_HEADER: usize = DST_ADDR.end;
}

/// Minimum IPv4 header length.
pub const MIN_HEADER_LEN: usize = field::MIN_HEADER;

const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET: u16 = 0x1fff;

/// Why a buffer is not an IPv4 packet this view can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Ipv4Error {
    /// Shorter than the header or than the total length it declares.
    #[error("IPv4 {0}")]
    Len(#[from] LenError),
    /// The version nibble is not 4.
    #[error("IP version {0} is not 4")]
    Version(u8),
    /// The IHL gives less than the 20 bytes of a header without options.
    #[error("IPv4 header length {0} below 20")]
    HeaderLen(usize),
    /// The total length is less than the header length.
    #[error("IPv4 total length {total} below the header length {header}")]
    TotalLen {
        /// The Total Length field.
        total: usize,
        /// IHL * 4.
        header: usize,
    },
}

/// The protocol byte of what may be an IPv4 header, unchecked: for a
/// dispatch that the full check ([`Ipv4Packet::new_checked`]) follows.
pub fn peek_protocol(buf: &[u8]) -> Option<u8> {
    buf.get(field::PROTOCOL).copied()
}

/// A view over an IPv4 packet starting at the IP header.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buf` without any check: the getters may panic on a buffer
    /// that [`Self::check_len`] would refuse.
    pub const fn new_unchecked(buf: T) -> Self {
        Ipv4Packet { buf }
    }

    /// Wraps `buf` after checking the version and [`Self::check_len`].
    pub fn new_checked(buf: T) -> Result<Self, Ipv4Error> {
        let p = Self::new_unchecked(buf);
        p.check_len()?;
        let version = p.buf.as_ref()[field::VER_IHL] >> 4;
        if version != 4 {
            return Err(Ipv4Error::Version(version));
        }
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header, that the header and
    /// total lengths are possible, and that it holds the total length.
    pub fn check_len(&self) -> Result<(), Ipv4Error> {
        check(self.buf.as_ref().len(), field::MIN_HEADER)?;
        let (header, total) = (self.header_len(), self.total_len());
        if header < field::MIN_HEADER {
            return Err(Ipv4Error::HeaderLen(header));
        }
        if total < header {
            return Err(Ipv4Error::TotalLen { total, header });
        }
        check(self.buf.as_ref().len(), total)?;
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length field.
    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buf.as_ref(), field::LENGTH))
    }

    /// Fragment offset in 8-byte units; non-zero for non-first fragments.
    pub fn frag_offset(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::FLG_OFF) & FRAG_OFFSET
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        get_u16(self.buf.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// IP protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTOCOL]
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.buf.as_ref(), field::SRC_ADDR))
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.buf.as_ref(), field::DST_ADDR))
    }

    /// Header checksum field.
    pub fn header_checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
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
        b[field::DST_ADDR].copy_from_slice(&dst.octets());
        set_u16(b, field::CHECKSUM, hc);
        old
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        set_u16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        set_u16(b, field::CHECKSUM, c);
    }
}

/// Pseudo-header sum for TCP/UDP checksums (not folded).
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = checksum::sum(0, &src.octets());
    acc = checksum::sum(acc, &dst.octets());
    acc + u32::from(proto) + (len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ver_ihl: u8, total: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[field::VER_IHL] = ver_ihl;
        b[field::LENGTH].copy_from_slice(&total.to_be_bytes());
        b
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = |b: Vec<u8>| Ipv4Packet::new_checked(&b[..]).err();
        assert_eq!(
            e(vec![0x45; 19]),
            Some(Ipv4Error::Len(LenError { need: 20, have: 19 }))
        );
        assert_eq!(e(header(0x65, 20, 20)), Some(Ipv4Error::Version(6)));
        assert_eq!(e(header(0x44, 20, 20)), Some(Ipv4Error::HeaderLen(16)));
        assert_eq!(
            e(header(0x46, 20, 24)),
            Some(Ipv4Error::TotalLen {
                total: 20,
                header: 24
            })
        );
        assert_eq!(
            e(header(0x45, 30, 29)),
            Some(Ipv4Error::Len(LenError { need: 30, have: 29 }))
        );
        assert_eq!(e(header(0x45, 30, 30)), None);
        assert_eq!(peek_protocol(&[0; 9]), None);
    }
}

//! Enhanced GRE header view (RFC 2637 section 4.1): GRE version 1 carrying
//! PPP (protocol 0x880B), with the Key field split into payload length and
//! Call ID. Enhanced GRE has no checksum.

use super::{check, get_u16, get_u32, set_u16, LenError};
use thiserror::Error;

/// GRE protocol type of PPP in enhanced GRE.
pub const PROTO_PPP: u16 = 0x880b;

/// Where the fields are.
pub mod field {
    use crate::wire::Field;

    /// C R K S s Recur flags.
    pub const FLAGS: usize = 0;
    /// The A flag and the version (low three bits).
    pub const VERSION: usize = 1;
    /// Protocol type.
    pub const PROTOCOL: Field = 2..4;
    /// Key, high half: the payload length.
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Key, low half: the receiver's Call ID.
    pub const CALL_ID: Field = 6..8;
    /// The first optional field: the sequence number if present, else the
    /// acknowledgement number.
    pub const OPT_FIRST: Field = 8..12;
    /// The acknowledgement number when a sequence number precedes it.
    pub const OPT_SECOND: Field = 12..16;
    /// Length of the header without the optional fields.
    pub const FIXED: usize = CALL_ID.end;
}

/// Checksum present.
pub const FLAG_C: u8 = 0x80;
/// Routing present.
pub const FLAG_R: u8 = 0x40;
/// Key present (always set in enhanced GRE).
pub const FLAG_K: u8 = 0x20;
/// Sequence number present.
pub const FLAG_S: u8 = 0x10;
/// Acknowledgement number present (in the version byte).
pub const FLAG_A: u8 = 0x80;

/// Why a buffer is not enhanced GRE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GreError {
    /// Shorter than the header (with the optional fields its flags announce).
    #[error("GRE {0}")]
    Len(#[from] LenError),
    /// Not version 1 (enhanced GRE).
    #[error("GRE version {0} is not 1")]
    Version(u8),
    /// Not PPP (0x880B).
    #[error("GRE protocol {0:#06x} is not PPP")]
    Protocol(u16),
    /// Checksum or routing present, or no key.
    #[error("GRE flags {0:#04x} are not enhanced GRE's")]
    Flags(u8),
}

/// Reads the GRE version (low three bits of the second byte) without a full
/// check, so that callers can tell PPTP GRE from other GRE cheaply.
pub fn version(buf: &[u8]) -> Option<u8> {
    buf.get(field::VERSION).map(|b| b & 0x07)
}

/// A view over an enhanced GRE packet (header and payload).
#[derive(Debug)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Wraps `buf` without any check: the getters may panic on a buffer
    /// that [`Self::check_len`] would refuse.
    pub const fn new_unchecked(buf: T) -> Self {
        GrePacket { buf }
    }

    /// Wraps `buf` if it is enhanced GRE: version 1, protocol 0x880B, Key
    /// present, no checksum or routing, and long enough for the optional
    /// sequence and acknowledgement numbers its flags announce.
    pub fn new_checked(buf: T) -> Result<Self, GreError> {
        let p = Self::new_unchecked(buf);
        p.check_len()?;
        let b = p.buf.as_ref();
        let version = b[field::VERSION] & 0x07;
        if version != 1 {
            return Err(GreError::Version(version));
        }
        let protocol = get_u16(b, field::PROTOCOL);
        if protocol != PROTO_PPP {
            return Err(GreError::Protocol(protocol));
        }
        let flags = b[field::FLAGS];
        if flags & (FLAG_C | FLAG_R | FLAG_K) != FLAG_K {
            return Err(GreError::Flags(flags));
        }
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header and the optional
    /// fields the flags announce.
    pub fn check_len(&self) -> Result<(), GreError> {
        let len = self.buf.as_ref().len();
        check(len, field::FIXED)?;
        check(len, self.header_len())?;
        Ok(())
    }

    fn has_seq(&self) -> bool {
        self.buf.as_ref()[field::FLAGS] & FLAG_S != 0
    }

    fn has_ack(&self) -> bool {
        self.buf.as_ref()[field::VERSION] & FLAG_A != 0
    }

    /// Header length: 8, plus 4 with a sequence number, plus 4 with an
    /// acknowledgement number.
    pub fn header_len(&self) -> usize {
        let opt = field::OPT_FIRST.len();
        field::FIXED + opt * usize::from(self.has_seq()) + opt * usize::from(self.has_ack())
    }

    /// The payload length field.
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::PAYLOAD_LEN)
    }

    /// The Call ID: always the receiver's call.
    pub fn call_id(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::CALL_ID)
    }

    /// Sequence number, if present.
    pub fn seq(&self) -> Option<u32> {
        self.has_seq()
            .then(|| get_u32(self.buf.as_ref(), field::OPT_FIRST))
    }

    /// Acknowledgement number, if present.
    pub fn ack(&self) -> Option<u32> {
        let at = if self.has_seq() {
            field::OPT_SECOND
        } else {
            field::OPT_FIRST
        };
        self.has_ack().then(|| get_u32(self.buf.as_ref(), at))
    }

    /// The PPP payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrePacket<T> {
    /// Sets the Call ID (no checksum to update in enhanced GRE).
    pub fn set_call_id(&mut self, id: u16) {
        set_u16(self.buf.as_mut(), field::CALL_ID, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_is_wrong() {
        let ok = [
            0x30, 0x81, 0x88, 0x0b, 0, 0, 0x40, 0, 0, 0, 0, 7, 0, 0, 0, 9,
        ];
        let e = |b: &[u8]| GrePacket::new_checked(b).err();
        assert_eq!(e(&ok), None);
        assert_eq!(
            e(&ok[..7]),
            Some(GreError::Len(LenError { need: 8, have: 7 }))
        );
        assert_eq!(
            e(&ok[..15]),
            Some(GreError::Len(LenError { need: 16, have: 15 }))
        );
        let mut b = ok;
        b[field::VERSION] = 0x80;
        assert_eq!(e(&b), Some(GreError::Version(0)));
        let mut b = ok;
        b[field::PROTOCOL.start] = 0x08;
        assert_eq!(e(&b), Some(GreError::Protocol(0x080b)));
        let mut b = ok;
        b[field::FLAGS] = 0xb0;
        assert_eq!(e(&b), Some(GreError::Flags(0xb0)));
    }
}

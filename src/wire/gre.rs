//! Enhanced GRE header view (RFC 2637 section 4.1): GRE version 1 carrying
//! PPP (protocol 0x880B), with the Key field split into payload length and
//! Call ID. Enhanced GRE has no checksum.

use super::{check, get_u16, get_u32, set_u16, WireError};

/// GRE protocol type of PPP in enhanced GRE.
pub const PROTO_PPP: u16 = 0x880b;

mod field {
    pub const FLAGS: usize = 0;
    pub const VERSION: usize = 1;
    pub const PROTOCOL: usize = 2;
    pub const PAYLOAD_LEN: usize = 4;
    pub const CALL_ID: usize = 6;
    pub const FIXED: usize = 8;
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

/// Byte offset of the Call ID inside the GRE header.
pub const CALL_ID_OFFSET: usize = field::CALL_ID;

/// A view over an enhanced GRE packet (header and payload).
#[derive(Debug)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buf: T,
}

/// Reads the GRE version (low three bits of the second byte) without a full
/// check, so that callers can tell PPTP GRE from other GRE cheaply.
pub fn version(buf: &[u8]) -> Option<u8> {
    buf.get(field::VERSION).map(|b| b & 0x07)
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Wraps `buf` if it is enhanced GRE: version 1, protocol 0x880B, Key
    /// present, no checksum or routing, and long enough for the optional
    /// sequence and acknowledgement numbers its flags announce.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        check(b.len(), field::FIXED)?;
        if b[field::VERSION] & 0x07 != 1 {
            return Err(WireError::BadField("gre version"));
        }
        if get_u16(b, field::PROTOCOL) != PROTO_PPP {
            return Err(WireError::BadField("gre protocol"));
        }
        if b[field::FLAGS] & (FLAG_C | FLAG_R | FLAG_K) != FLAG_K {
            return Err(WireError::BadField("gre flags"));
        }
        let p = GrePacket { buf };
        check(p.buf.as_ref().len(), p.header_len())?;
        Ok(p)
    }

    /// Header length: 8, plus 4 with a sequence number, plus 4 with an
    /// acknowledgement number.
    pub fn header_len(&self) -> usize {
        let b = self.buf.as_ref();
        let mut n = field::FIXED;
        if b[field::FLAGS] & FLAG_S != 0 {
            n += 4;
        }
        if b[field::VERSION] & FLAG_A != 0 {
            n += 4;
        }
        n
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
        let b = self.buf.as_ref();
        (b[field::FLAGS] & FLAG_S != 0).then(|| get_u32(b, field::FIXED))
    }

    /// Acknowledgement number, if present.
    pub fn ack(&self) -> Option<u32> {
        let b = self.buf.as_ref();
        if b[field::VERSION] & FLAG_A == 0 {
            return None;
        }
        let at = if b[field::FLAGS] & FLAG_S != 0 { 12 } else { 8 };
        Some(get_u32(b, at))
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

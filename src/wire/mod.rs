//! Typed views over the byte buffers the gateway reads and rewrites.
//!
//! Each view wraps `T: AsRef<[u8]>` (and `AsMut<[u8]>` for setters), checks
//! its length once in `new_checked`, and then reads fields at constant
//! offsets. Nothing here allocates, logs or performs I/O.

pub mod checksum;
pub mod gre;
pub mod ipv4;
pub mod pptp;
pub mod tcp;

use thiserror::Error;

/// Why a buffer could not be viewed as a given protocol unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than the fixed header or the length it declares.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A length field is impossible (e.g. IHL < 5, TCP data offset < 5).
    #[error("bad length field")]
    BadLength,
    /// A fixed field has a value this view does not accept.
    #[error("unexpected value in {0}")]
    BadField(&'static str),
}

pub(crate) fn check(have: usize, need: usize) -> Result<(), WireError> {
    if have < need {
        Err(WireError::Truncated { need, have })
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

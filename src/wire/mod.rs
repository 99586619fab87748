//! Typed views over the byte buffers the gateway reads and rewrites: the
//! only code of the product that knows where a field sits in a header.
//!
//! The shape is smoltcp's `src/wire`: each layer has a `field` module of
//! byte ranges, and a view over `T: AsRef<[u8]>` (and `AsMut<[u8]>` for
//! setters) with `new_unchecked` (no check: for a buffer the caller has
//! already checked), `check_len` (the length checks that make every getter
//! safe to call) and `new_checked` (both). Errors are typed per layer, as
//! etherparse does: a [`LenError`] when the buffer is short, otherwise what
//! the layer found wrong. PPTP control messages also have a `Repr` (a
//! parsed, owned form with `parse` and `emit`). Nothing here allocates,
//! logs or performs I/O.

pub mod checksum;
pub mod gre;
pub mod ipv4;
pub mod pptp;
pub mod tcp;

use thiserror::Error;

/// The bytes of a field, as an index into its header.
pub type Field = core::ops::Range<usize>;

/// The buffer is shorter than a header needs or than the length it
/// declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("truncated: need {need} bytes, have {have}")]
pub struct LenError {
    /// Bytes required.
    pub need: usize,
    /// Bytes present.
    pub have: usize,
}

pub(crate) fn check(have: usize, need: usize) -> Result<(), LenError> {
    if have < need {
        Err(LenError { need, have })
    } else {
        Ok(())
    }
}

// The accessors take the field's range, so that every offset is named in a
// `field` module; only its start is read because the length is the type's.
#[inline]
pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    debug_assert_eq!(f.len(), 2);
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

#[inline]
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    debug_assert_eq!(f.len(), 4);
    let at = f.start;
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn set_u16(b: &mut [u8], f: Field, v: u16) {
    debug_assert_eq!(f.len(), 2);
    b[f.start..f.start + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn set_u32(b: &mut [u8], f: Field, v: u32) {
    debug_assert_eq!(f.len(), 4);
    b[f.start..f.start + 4].copy_from_slice(&v.to_be_bytes());
}

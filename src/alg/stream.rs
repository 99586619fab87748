//! One direction of a control connection: reassembles PPTP messages from TCP
//! payload bytes in sequence order, reports each Call-ID field as soon as
//! both of its bytes have been seen, and each message when it is complete.
//!
//! Fields are reported before the message completes because a segment that
//! ends inside a message must already leave with its Call IDs translated.
//! Each field is reported in two steps, its first byte as soon as that byte
//! is seen and its second byte with the whole value, so that a segment that
//! ends between the two bytes leaves with its byte translated without
//! waiting for the next segment. Both steps happen whether or not the field
//! is split, so the bytes on the wire never depend on where a segment ends.

use crate::wire::get_u16;
use crate::wire::pptp::{
    declared_length, parse_header, ControlType, HeaderError, Role, HEADER_LEN, MAX_MESSAGE_LEN,
};

/// What the parser reports to its handler.
#[derive(Debug)]
pub enum Item<'a> {
    /// The first (high) byte of a Call-ID field has been seen. The handler
    /// answers the byte to put on the wire, or `None` to leave it.
    FieldHigh {
        /// Message type.
        ty: ControlType,
        /// Which call the field names.
        role: Role,
        /// The byte as sent.
        high: u8,
    },
    /// A Call-ID field is complete. The handler answers the second (low)
    /// byte to put on the wire, or `None` to leave it.
    FieldLow {
        /// Message type.
        ty: ControlType,
        /// Which call the field names.
        role: Role,
        /// The value as sent.
        value: u16,
        /// The first byte as it went on the wire.
        high_out: u8,
    },
    /// A message of a type RFC 2637 does not define was skipped by its
    /// Length: its framing is intact, and peers ignore such messages.
    Skipped {
        /// The Control Message Type.
        ctrl_type: u16,
    },
    /// A message is complete (original bytes, before translation).
    Message {
        /// Message type.
        ty: ControlType,
        /// The whole message.
        bytes: &'a [u8],
    },
}

/// Why feeding stopped.
#[derive(Debug)]
pub enum FeedError<E> {
    /// The stream is not PPTP any more.
    Desync(HeaderError),
    /// The handler refused an item.
    Handler(E),
}

/// One byte of translated output at a stream position.
pub type Patch = (u32, u8);

/// Reassembly state of one direction. Messages that arrive whole inside a
/// segment are parsed in place; only a message split across segments is
/// buffered, so an idle direction costs a few bytes.
#[derive(Clone, Debug)]
pub struct Parser {
    /// Sequence number of the next byte not yet parsed.
    pub next: u32,
    /// The start of a message split across segments (`have` bytes of it).
    partial: Option<Box<[u8; MAX_MESSAGE_LEN]>>,
    have: usize,
    ty: Option<ControlType>,
    /// Bytes of an unknown message still to skip.
    skip: u32,
    /// The first byte of a Call-ID field as it went on the wire, while the
    /// message is split between that byte and the next.
    high_out: Option<u8>,
}

/// Longest unknown message skipped by its Length; longer ones count as
/// lost framing (the longest defined message is 220 bytes).
pub const MAX_UNKNOWN_LEN: usize = 1024;

/// A parsed header.
enum Header {
    Known(ControlType),
    Unknown { ctrl_type: u16, length: usize },
}

impl Parser {
    /// A parser whose next byte is at `next` and starts a message.
    pub fn new(next: u32) -> Self {
        Parser {
            next,
            partial: None,
            have: 0,
            ty: None,
            skip: 0,
            high_out: None,
        }
    }

    /// Feeds `data`, which starts at sequence number `self.next`. Patches for
    /// changed fields are appended to `patches`.
    pub fn feed<E>(
        &mut self,
        mut data: &[u8],
        patches: &mut Vec<Patch>,
        mut on: impl FnMut(Item<'_>) -> Result<Option<u8>, E>,
    ) -> Result<(), FeedError<E>> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u32;
                self.next = self.next.wrapping_add(n as u32);
                data = &data[n..];
                continue;
            }
            if self.have == 0 && data.len() >= HEADER_LEN {
                let ty = match header(&data[..HEADER_LEN]).map_err(FeedError::Desync)? {
                    Header::Known(ty) => ty,
                    Header::Unknown { ctrl_type, length } => {
                        on(Item::Skipped { ctrl_type }).map_err(FeedError::Handler)?;
                        self.next = self.next.wrapping_add(HEADER_LEN as u32);
                        self.skip = (length - HEADER_LEN) as u32;
                        data = &data[HEADER_LEN..];
                        continue;
                    }
                };
                let len = ty.length();
                if data.len() >= len {
                    // The common case: a whole message in this segment.
                    let mut high_out = None;
                    emit(
                        ty,
                        &data[..len],
                        0,
                        self.next,
                        &mut high_out,
                        patches,
                        &mut on,
                    )?;
                    self.next = self.next.wrapping_add(len as u32);
                    data = &data[len..];
                    continue;
                }
            }
            let buf = self
                .partial
                .get_or_insert_with(|| Box::new([0; MAX_MESSAGE_LEN]));
            let msg_seq = self.next.wrapping_sub(self.have as u32);
            let want = self.ty.map_or(HEADER_LEN, ControlType::length);
            let take = (want - self.have).min(data.len());
            let before = self.have;
            buf[before..before + take].copy_from_slice(&data[..take]);
            self.have += take;
            self.next = self.next.wrapping_add(take as u32);
            data = &data[take..];
            let ty = match self.ty {
                Some(ty) => ty,
                None if self.have < HEADER_LEN => continue,
                None => match header(&buf[..HEADER_LEN]).map_err(FeedError::Desync)? {
                    Header::Known(ty) => {
                        self.ty = Some(ty);
                        ty
                    }
                    Header::Unknown { ctrl_type, length } => {
                        on(Item::Skipped { ctrl_type }).map_err(FeedError::Handler)?;
                        self.skip = (length - HEADER_LEN) as u32;
                        self.have = 0;
                        self.partial = None;
                        continue;
                    }
                },
            };
            emit(
                ty,
                &buf[..self.have],
                before,
                msg_seq,
                &mut self.high_out,
                patches,
                &mut on,
            )?;
            if self.have == ty.length() {
                self.have = 0;
                self.ty = None;
                self.partial = None;
            }
        }
        Ok(())
    }
}

fn header(h: &[u8]) -> Result<Header, HeaderError> {
    let h = h.try_into().expect("caller passes HEADER_LEN bytes");
    match parse_header(h) {
        Ok(ty) => Ok(Header::Known(ty)),
        Err(HeaderError::UnknownType(ctrl_type)) => {
            let length = declared_length(h);
            if (HEADER_LEN..=MAX_UNKNOWN_LEN).contains(&length) {
                Ok(Header::Unknown { ctrl_type, length })
            } else {
                Err(HeaderError::BadLength {
                    length: length as u16,
                    ctrl_type,
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// Reports the Call-ID field bytes that lie in `msg[before..]` (each step
/// of each field exactly once, when its byte is seen), and the message when
/// `msg` holds all of it. `high_out` carries a field's translated first
/// byte from one call to the next when the message is split between them.
fn emit<E>(
    ty: ControlType,
    msg: &[u8],
    before: usize,
    msg_seq: u32,
    high_out: &mut Option<u8>,
    patches: &mut Vec<Patch>,
    on: &mut impl FnMut(Item<'_>) -> Result<Option<u8>, E>,
) -> Result<(), FeedError<E>> {
    let have = msg.len();
    for (role, field) in ty.call_id_fields().iter() {
        // The field's two bytes (big-endian), each reported when it is seen.
        let (hi, lo) = (field.start, field.end - 1);
        let mut patch = |at: usize, old: u8, new: Option<u8>| {
            let new = new.unwrap_or(old);
            if new != old {
                patches.push((msg_seq.wrapping_add(at as u32), new));
            }
            new
        };
        if (before..have).contains(&hi) {
            let high = msg[hi];
            let new = on(Item::FieldHigh { ty, role, high }).map_err(FeedError::Handler)?;
            *high_out = Some(patch(hi, high, new));
        }
        if (before..have).contains(&lo) {
            let value = get_u16(msg, field);
            let item = Item::FieldLow {
                ty,
                role,
                value,
                high_out: high_out.take().unwrap_or(msg[hi]),
            };
            let new = on(item).map_err(FeedError::Handler)?;
            patch(lo, value as u8, new);
        }
    }
    if have == ty.length() {
        on(Item::Message { ty, bytes: msg }).map_err(FeedError::Handler)?;
    }
    Ok(())
}

/// Signed distance from `b` to `a` in sequence space.
#[inline]
pub fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

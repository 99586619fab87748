//! One direction of a control connection: reassembles PPTP messages from TCP
//! payload bytes in sequence order, reports each Call-ID field as soon as
//! both of its bytes have been seen, and each message when it is complete.
//!
//! Fields are reported before the message completes because a segment that
//! ends inside a message must already leave with its Call IDs translated.
//! Translation only ever changes the low byte of a Call ID (the allocator
//! keeps the high byte), so a segment that ends between the two bytes of a
//! field can leave before the field's value is known.

use crate::wire::pptp::{parse_header, ControlType, HeaderError, HEADER_LEN, MAX_MESSAGE_LEN};

/// What the parser reports to its handler.
#[derive(Debug)]
pub enum Item<'a> {
    /// A Call-ID field is complete. The handler answers the value to put on
    /// the wire (same high byte), or `None` to leave it.
    Field {
        /// Message type.
        ty: ControlType,
        /// Offset of the field in the message.
        offset: usize,
        /// The value as sent.
        value: u16,
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

/// Reassembly state of one direction.
#[derive(Clone, Debug)]
pub struct Parser {
    /// Sequence number of the next byte not yet parsed.
    pub next: u32,
    msg: [u8; MAX_MESSAGE_LEN],
    have: usize,
    ty: Option<ControlType>,
}

impl Parser {
    /// A parser whose next byte is at `next` and starts a message.
    pub fn new(next: u32) -> Self {
        Parser {
            next,
            msg: [0; MAX_MESSAGE_LEN],
            have: 0,
            ty: None,
        }
    }

    /// Feeds `data`, which starts at sequence number `self.next`. Patches for
    /// changed fields are appended to `patches`.
    pub fn feed<E>(
        &mut self,
        mut data: &[u8],
        patches: &mut Vec<Patch>,
        mut on: impl FnMut(Item<'_>) -> Result<Option<u16>, E>,
    ) -> Result<(), FeedError<E>> {
        while !data.is_empty() {
            let msg_seq = self.next.wrapping_sub(self.have as u32);
            let want = match self.ty {
                None => HEADER_LEN,
                Some(ty) => ty.length(),
            };
            let take = (want - self.have).min(data.len());
            let before = self.have;
            self.msg[before..before + take].copy_from_slice(&data[..take]);
            self.have += take;
            self.next = self.next.wrapping_add(take as u32);
            data = &data[take..];

            let ty = match self.ty {
                Some(ty) => ty,
                None if self.have < HEADER_LEN => continue,
                None => {
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&self.msg[..HEADER_LEN]);
                    let ty = parse_header(&h).map_err(FeedError::Desync)?;
                    self.ty = Some(ty);
                    ty
                }
            };
            let fields = ty.call_id_fields();
            for off in [fields.own, fields.peer].into_iter().flatten() {
                // Report a field exactly once: when its second byte arrives.
                if before < off + 2 && off + 2 <= self.have {
                    let value = u16::from_be_bytes([self.msg[off], self.msg[off + 1]]);
                    let item = Item::Field {
                        ty,
                        offset: off,
                        value,
                    };
                    if let Some(new) = on(item).map_err(FeedError::Handler)? {
                        debug_assert_eq!(new >> 8, value >> 8, "allocator must keep the high byte");
                        if new != value {
                            let seq = msg_seq.wrapping_add(off as u32 + 1);
                            patches.push((seq, new as u8));
                        }
                    }
                }
            }
            if self.have == ty.length() {
                let item = Item::Message {
                    ty,
                    bytes: &self.msg[..self.have],
                };
                on(item).map_err(FeedError::Handler)?;
                self.have = 0;
                self.ty = None;
            }
        }
        Ok(())
    }
}

/// Signed distance from `b` to `a` in sequence space.
#[inline]
pub fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

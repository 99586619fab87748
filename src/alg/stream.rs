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
                    emit(ty, &data[..len], 0, self.next, patches, &mut on)?;
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
            emit(ty, &buf[..self.have], before, msg_seq, patches, &mut on)?;
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
    match parse_header(h.try_into().expect("caller passes HEADER_LEN bytes")) {
        Ok(ty) => Ok(Header::Known(ty)),
        Err(HeaderError::UnknownType(ctrl_type)) => {
            let length = usize::from(u16::from_be_bytes([h[0], h[1]]));
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

/// Reports the Call-ID fields whose second byte lies in `msg[before..]`
/// (each field exactly once, when it becomes complete), and the message
/// when `msg` holds all of it.
fn emit<E>(
    ty: ControlType,
    msg: &[u8],
    before: usize,
    msg_seq: u32,
    patches: &mut Vec<Patch>,
    on: &mut impl FnMut(Item<'_>) -> Result<Option<u16>, E>,
) -> Result<(), FeedError<E>> {
    let have = msg.len();
    let fields = ty.call_id_fields();
    for off in [fields.own, fields.peer].into_iter().flatten() {
        if before < off + 2 && off + 2 <= have {
            let value = u16::from_be_bytes([msg[off], msg[off + 1]]);
            let item = Item::Field {
                ty,
                offset: off,
                value,
            };
            if let Some(new) = on(item).map_err(FeedError::Handler)? {
                debug_assert_eq!(new >> 8, value >> 8, "allocator must keep the high byte");
                if new != value {
                    patches.push((msg_seq.wrapping_add(off as u32 + 1), new as u8));
                }
            }
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

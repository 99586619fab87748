//! PPTP control message view (RFC 2637 section 2).
//!
//! Every message starts with a 12-byte header: Length, PPTP Message Type
//! (1 = control), Magic Cookie 0x1A2B3C4D, Control Message Type, Reserved.
//! Each control message type has a fixed length; the Call-ID fields it
//! carries either name the sender's own call or the receiver's call, which is
//! what the translation rule depends on.

use super::{check, get_u16, get_u32, WireError};

/// The magic cookie every control message carries.
pub const MAGIC_COOKIE: u32 = 0x1a2b_3c4d;
/// PPTP Message Type of control messages.
pub const CONTROL_MESSAGE: u16 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 12;
/// Length of the longest control message (Incoming-Call-Request).
pub const MAX_MESSAGE_LEN: usize = 220;

mod field {
    pub const LENGTH: usize = 0;
    pub const MSG_TYPE: usize = 2;
    pub const COOKIE: usize = 4;
    pub const CTRL_TYPE: usize = 8;
}

/// Result code offset in Outgoing-Call-Reply and Incoming-Call-Reply.
pub const REPLY_RESULT_OFFSET: usize = 16;

/// The fifteen control message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ControlType {
    /// Start-Control-Connection-Request.
    StartCtrlConnRequest = 1,
    /// Start-Control-Connection-Reply.
    StartCtrlConnReply = 2,
    /// Stop-Control-Connection-Request.
    StopCtrlConnRequest = 3,
    /// Stop-Control-Connection-Reply.
    StopCtrlConnReply = 4,
    /// Echo-Request.
    EchoRequest = 5,
    /// Echo-Reply.
    EchoReply = 6,
    /// Outgoing-Call-Request.
    OutgoingCallRequest = 7,
    /// Outgoing-Call-Reply.
    OutgoingCallReply = 8,
    /// Incoming-Call-Request.
    IncomingCallRequest = 9,
    /// Incoming-Call-Reply.
    IncomingCallReply = 10,
    /// Incoming-Call-Connected.
    IncomingCallConnected = 11,
    /// Call-Clear-Request.
    CallClearRequest = 12,
    /// Call-Disconnect-Notify.
    CallDisconnectNotify = 13,
    /// WAN-Error-Notify.
    WanErrorNotify = 14,
    /// Set-Link-Info.
    SetLinkInfo = 15,
}

/// Where a message carries Call IDs, as offsets from the message start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallIdFields {
    /// Offset of the sender's own Call ID, if the message has one.
    pub own: Option<usize>,
    /// Offset of the receiver's Call ID, if the message has one.
    pub peer: Option<usize>,
}

impl ControlType {
    /// All types in numeric order.
    pub const ALL: [ControlType; 15] = [
        Self::StartCtrlConnRequest,
        Self::StartCtrlConnReply,
        Self::StopCtrlConnRequest,
        Self::StopCtrlConnReply,
        Self::EchoRequest,
        Self::EchoReply,
        Self::OutgoingCallRequest,
        Self::OutgoingCallReply,
        Self::IncomingCallRequest,
        Self::IncomingCallReply,
        Self::IncomingCallConnected,
        Self::CallClearRequest,
        Self::CallDisconnectNotify,
        Self::WanErrorNotify,
        Self::SetLinkInfo,
    ];

    /// Maps the numeric Control Message Type.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.get(usize::from(v).wrapping_sub(1)).copied()
    }

    /// The fixed length of this message type.
    pub fn length(self) -> usize {
        use ControlType::*;
        match self {
            StartCtrlConnRequest | StartCtrlConnReply => 156,
            StopCtrlConnRequest | StopCtrlConnReply => 16,
            EchoRequest => 16,
            EchoReply => 20,
            OutgoingCallRequest => 168,
            OutgoingCallReply => 32,
            IncomingCallRequest => 220,
            IncomingCallReply => 24,
            IncomingCallConnected => 28,
            CallClearRequest => 16,
            CallDisconnectNotify => 148,
            WanErrorNotify => 40,
            SetLinkInfo => 24,
        }
    }

    /// Which Call-ID fields the message carries. Call-Disconnect-Notify's
    /// field is listed as the sender's own (RFC 2637); the engine also
    /// accepts the other meaning.
    pub fn call_id_fields(self) -> CallIdFields {
        use ControlType::*;
        let (own, peer) = match self {
            OutgoingCallRequest | IncomingCallRequest | CallClearRequest | CallDisconnectNotify => {
                (Some(12), None)
            }
            OutgoingCallReply | IncomingCallReply => (Some(12), Some(14)),
            IncomingCallConnected | WanErrorNotify | SetLinkInfo => (None, Some(12)),
            _ => (None, None),
        };
        CallIdFields { own, peer }
    }
}

/// Why a byte stream stopped looking like PPTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The magic cookie is not 0x1A2B3C4D.
    #[error("bad magic cookie {0:#010x}")]
    BadCookie(u32),
    /// The PPTP Message Type is not 1 (control).
    #[error("PPTP message type {0} is not control")]
    NotControl(u16),
    /// The Control Message Type is not one of the fifteen.
    #[error("unknown control message type {0}")]
    UnknownType(u16),
    /// The Length does not match the fixed length of the type.
    #[error("length {length} impossible for control message type {ctrl_type}")]
    BadLength {
        /// The Length field.
        length: u16,
        /// The Control Message Type.
        ctrl_type: u16,
    },
}

/// Validates a complete 12-byte header and returns the message type. The
/// Length must equal the type's fixed length: the RFC fixes every length,
/// and accepting others would let a peer desynchronise the translation.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<ControlType, HeaderError> {
    let cookie = get_u32(h, field::COOKIE);
    if cookie != MAGIC_COOKIE {
        return Err(HeaderError::BadCookie(cookie));
    }
    let mt = get_u16(h, field::MSG_TYPE);
    if mt != CONTROL_MESSAGE {
        return Err(HeaderError::NotControl(mt));
    }
    let ct = get_u16(h, field::CTRL_TYPE);
    let ty = ControlType::from_u16(ct).ok_or(HeaderError::UnknownType(ct))?;
    let length = get_u16(h, field::LENGTH);
    if usize::from(length) != ty.length() {
        return Err(HeaderError::BadLength {
            length,
            ctrl_type: ct,
        });
    }
    Ok(ty)
}

/// A view over one complete control message.
#[derive(Debug)]
pub struct ControlMessage<T: AsRef<[u8]>> {
    buf: T,
    ty: ControlType,
}

impl<T: AsRef<[u8]>> ControlMessage<T> {
    /// Wraps `buf`, validating the header and that the whole message is
    /// present.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        check(b.len(), HEADER_LEN)?;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&b[..HEADER_LEN]);
        let ty = parse_header(&h).map_err(|_| WireError::BadField("pptp header"))?;
        check(b.len(), ty.length())?;
        Ok(ControlMessage { buf, ty })
    }

    /// The control message type.
    pub fn control_type(&self) -> ControlType {
        self.ty
    }

    /// The Length field.
    pub fn length(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::LENGTH)
    }

    /// The sender's own Call ID, where the message carries one.
    pub fn own_call_id(&self) -> Option<u16> {
        self.ty
            .call_id_fields()
            .own
            .map(|o| get_u16(self.buf.as_ref(), o))
    }

    /// The receiver's Call ID, where the message carries one.
    pub fn peer_call_id(&self) -> Option<u16> {
        self.ty
            .call_id_fields()
            .peer
            .map(|o| get_u16(self.buf.as_ref(), o))
    }

    /// Result code of an Outgoing- or Incoming-Call-Reply.
    pub fn reply_result(&self) -> Option<u8> {
        matches!(
            self.ty,
            ControlType::OutgoingCallReply | ControlType::IncomingCallReply
        )
        .then(|| self.buf.as_ref()[REPLY_RESULT_OFFSET])
    }
}

//! PPTP control messages (RFC 2637 section 2): the header check, the view
//! the engine reads Call IDs through, and a lossless `Repr` of all fifteen
//! messages.
//!
//! Every message starts with a 12-byte header: Length, PPTP Message Type
//! (1 = control), Magic Cookie 0x1A2B3C4D, Control Message Type, Reserved0.
//! Each control message type has a fixed length; the Call-ID fields it
//! carries either name the sender's own call or the receiver's call, which is
//! what the translation rule depends on.

use super::{check, get_u16, get_u32, set_u16, set_u32, Field, LenError};
use thiserror::Error;

/// The magic cookie every control message carries.
pub const MAGIC_COOKIE: u32 = 0x1a2b_3c4d;
/// PPTP Message Type of control messages.
pub const CONTROL_MESSAGE: u16 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 12;
/// Length of the longest control message (Incoming-Call-Request).
pub const MAX_MESSAGE_LEN: usize = 220;

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

/// A value of a message field, read from and written to exactly its bytes.
trait FieldValue {
    fn read(b: &[u8]) -> Self;
    fn write(&self, b: &mut [u8]);
}

impl FieldValue for u8 {
    fn read(b: &[u8]) -> Self {
        b[0]
    }
    fn write(&self, b: &mut [u8]) {
        b[0] = *self;
    }
}

impl FieldValue for u16 {
    fn read(b: &[u8]) -> Self {
        get_u16(b, 0..2)
    }
    fn write(&self, b: &mut [u8]) {
        set_u16(b, 0..2, *self);
    }
}

impl FieldValue for u32 {
    fn read(b: &[u8]) -> Self {
        get_u32(b, 0..4)
    }
    fn write(&self, b: &mut [u8]) {
        set_u32(b, 0..4, *self);
    }
}

impl<const N: usize> FieldValue for [u8; N] {
    fn read(b: &[u8]) -> Self {
        let mut a = [0; N];
        a.copy_from_slice(b);
        a
    }
    fn write(&self, b: &mut [u8]) {
        b.copy_from_slice(self);
    }
}

/// Declares, from one list per message body, the byte ranges of its fields
/// (`field::<module>::<NAME>`) and the struct of its `Repr` with its
/// `parse` and `emit`, so that a field's place is written once.
macro_rules! bodies {
    ($(
        $(#[$sm:meta])*
        $name:ident in $module:ident {
            $( $(#[$fm:meta])* $f:ident: $t:ty = $FIELD:ident $range:expr, )*
        }
    )*) => {
        /// Where the fields are: the header's, then each message body's
        /// (offsets from the first byte of the message).
        pub mod field {
            use crate::wire::Field;

            /// Length of the whole message.
            pub const LENGTH: Field = 0..2;
            /// PPTP Message Type (1: control message).
            pub const MSG_TYPE: Field = 2..4;
            /// Magic Cookie 0x1A2B3C4D.
            pub const MAGIC_COOKIE: Field = 4..8;
            /// Control Message Type.
            pub const CTRL_TYPE: Field = 8..10;
            /// Reserved0.
            pub const RESERVED0: Field = 10..12;

            $(
                #[doc = concat!("Fields of [`", stringify!($name), "`](crate::wire::pptp::", stringify!($name), ").")]
                pub mod $module {
                    use crate::wire::Field;
                    $( $(#[$fm])* pub const $FIELD: Field = $range; )*
                    /// Every field, in order.
                    #[cfg(test)]
                    pub const ALL: &[Field] = &[$($FIELD),*];
                }
            )*
        }

        $(
            $(#[$sm])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $name {
                $( $(#[$fm])* pub $f: $t, )*
            }

            impl $name {
                fn parse(m: &[u8]) -> Self {
                    $name { $( $f: FieldValue::read(&m[field::$module::$FIELD]), )* }
                }
                fn emit(&self, m: &mut [u8]) {
                    $( self.$f.write(&mut m[field::$module::$FIELD]); )*
                }
            }
        )*
    };
}

bodies! {
    /// Start-Control-Connection-Request and -Reply.
    StartCtrlConn in start_ctrl_conn {
        /// Protocol Version (0x0100).
        protocol_version: u16 = PROTOCOL_VERSION 12..14,
        /// Result Code (reply; Reserved1 in the request).
        result_code: u8 = RESULT_CODE 14..15,
        /// Error Code (reply; Reserved1 in the request).
        error_code: u8 = ERROR_CODE 15..16,
        /// Framing Capabilities.
        framing_capabilities: u32 = FRAMING_CAPS 16..20,
        /// Bearer Capabilities.
        bearer_capabilities: u32 = BEARER_CAPS 20..24,
        /// Maximum Channels.
        max_channels: u16 = MAX_CHANNELS 24..26,
        /// Firmware Revision.
        firmware_revision: u16 = FIRMWARE_REV 26..28,
        /// Host Name (NUL padded).
        host_name: [u8; 64] = HOST_NAME 28..92,
        /// Vendor String (NUL padded).
        vendor: [u8; 64] = VENDOR 92..156,
    }

    /// Stop-Control-Connection-Request and -Reply.
    StopCtrlConn in stop_ctrl_conn {
        /// Reason (request) or Result Code (reply).
        reason_or_result: u8 = REASON_RESULT 12..13,
        /// Error Code (reply; Reserved1 in the request).
        error_code: u8 = ERROR_CODE 13..14,
        /// Reserved2.
        reserved2: u16 = RESERVED2 14..16,
    }

    /// Echo-Request.
    EchoRequest in echo_request {
        /// Identifier, returned in the reply.
        identifier: u32 = IDENTIFIER 12..16,
    }

    /// Echo-Reply.
    EchoReply in echo_reply {
        /// Identifier of the request.
        identifier: u32 = IDENTIFIER 12..16,
        /// Result Code.
        result_code: u8 = RESULT_CODE 16..17,
        /// Error Code.
        error_code: u8 = ERROR_CODE 17..18,
        /// Reserved1.
        reserved1: u16 = RESERVED1 18..20,
    }

    /// Outgoing-Call-Request.
    OutgoingCallRequest in outgoing_call_request {
        /// The sender's own Call ID.
        call_id: u16 = CALL_ID 12..14,
        /// Call Serial Number.
        call_serial: u16 = CALL_SERIAL 14..16,
        /// Minimum BPS.
        min_bps: u32 = MIN_BPS 16..20,
        /// Maximum BPS.
        max_bps: u32 = MAX_BPS 20..24,
        /// Bearer Type.
        bearer_type: u32 = BEARER_TYPE 24..28,
        /// Framing Type.
        framing_type: u32 = FRAMING_TYPE 28..32,
        /// Packet Receive Window Size.
        recv_window: u16 = RECV_WINDOW 32..34,
        /// Packet Processing Delay.
        processing_delay: u16 = PROC_DELAY 34..36,
        /// Phone Number Length.
        phone_number_len: u16 = PHONE_LEN 36..38,
        /// Reserved1.
        reserved1: u16 = RESERVED1 38..40,
        /// Phone Number.
        phone_number: [u8; 64] = PHONE_NUMBER 40..104,
        /// Subaddress.
        subaddress: [u8; 64] = SUBADDRESS 104..168,
    }

    /// Outgoing-Call-Reply.
    OutgoingCallReply in outgoing_call_reply {
        /// The sender's own Call ID.
        call_id: u16 = CALL_ID 12..14,
        /// The receiver's Call ID (the request's).
        peer_call_id: u16 = PEER_CALL_ID 14..16,
        /// Result Code (1: connected).
        result_code: u8 = RESULT_CODE 16..17,
        /// Error Code.
        error_code: u8 = ERROR_CODE 17..18,
        /// Cause Code.
        cause_code: u16 = CAUSE_CODE 18..20,
        /// Connect Speed.
        connect_speed: u32 = CONNECT_SPEED 20..24,
        /// Packet Receive Window Size.
        recv_window: u16 = RECV_WINDOW 24..26,
        /// Packet Processing Delay.
        processing_delay: u16 = PROC_DELAY 26..28,
        /// Physical Channel ID.
        physical_channel_id: u32 = PHYS_CHANNEL 28..32,
    }

    /// Incoming-Call-Request.
    IncomingCallRequest in incoming_call_request {
        /// The sender's own Call ID.
        call_id: u16 = CALL_ID 12..14,
        /// Call Serial Number.
        call_serial: u16 = CALL_SERIAL 14..16,
        /// Call Bearer Type.
        bearer_type: u32 = BEARER_TYPE 16..20,
        /// Physical Channel ID.
        physical_channel_id: u32 = PHYS_CHANNEL 20..24,
        /// Dialed Number Length.
        dialed_number_len: u16 = DIALED_LEN 24..26,
        /// Dialing Number Length.
        dialing_number_len: u16 = DIALING_LEN 26..28,
        /// Dialed Number.
        dialed_number: [u8; 64] = DIALED_NUMBER 28..92,
        /// Dialing Number.
        dialing_number: [u8; 64] = DIALING_NUMBER 92..156,
        /// Subaddress.
        subaddress: [u8; 64] = SUBADDRESS 156..220,
    }

    /// Incoming-Call-Reply.
    IncomingCallReply in incoming_call_reply {
        /// The sender's own Call ID.
        call_id: u16 = CALL_ID 12..14,
        /// The receiver's Call ID (the request's).
        peer_call_id: u16 = PEER_CALL_ID 14..16,
        /// Result Code (1: connect).
        result_code: u8 = RESULT_CODE 16..17,
        /// Error Code.
        error_code: u8 = ERROR_CODE 17..18,
        /// Packet Receive Window Size.
        recv_window: u16 = RECV_WINDOW 18..20,
        /// Packet Transmit Delay.
        transmit_delay: u16 = TRANSMIT_DELAY 20..22,
        /// Reserved1.
        reserved1: u16 = RESERVED1 22..24,
    }

    /// Incoming-Call-Connected.
    IncomingCallConnected in incoming_call_connected {
        /// The receiver's Call ID.
        peer_call_id: u16 = PEER_CALL_ID 12..14,
        /// Reserved1.
        reserved1: u16 = RESERVED1 14..16,
        /// Connect Speed.
        connect_speed: u32 = CONNECT_SPEED 16..20,
        /// Packet Receive Window Size.
        recv_window: u16 = RECV_WINDOW 20..22,
        /// Packet Transmit Delay.
        transmit_delay: u16 = TRANSMIT_DELAY 22..24,
        /// Framing Type.
        framing_type: u32 = FRAMING_TYPE 24..28,
    }

    /// Call-Clear-Request.
    CallClearRequest in call_clear_request {
        /// The sender's own Call ID.
        call_id: u16 = CALL_ID 12..14,
        /// Reserved1.
        reserved1: u16 = RESERVED1 14..16,
    }

    /// Call-Disconnect-Notify.
    CallDisconnectNotify in call_disconnect_notify {
        /// The sender's own Call ID (RFC 2637; Linux and pptp-linux read it
        /// as the receiver's).
        call_id: u16 = CALL_ID 12..14,
        /// Result Code.
        result_code: u8 = RESULT_CODE 14..15,
        /// Error Code.
        error_code: u8 = ERROR_CODE 15..16,
        /// Cause Code.
        cause_code: u16 = CAUSE_CODE 16..18,
        /// Reserved1.
        reserved1: u16 = RESERVED1 18..20,
        /// Call Statistics.
        call_statistics: [u8; 128] = CALL_STATS 20..148,
    }

    /// WAN-Error-Notify.
    WanErrorNotify in wan_error_notify {
        /// The receiver's Call ID.
        peer_call_id: u16 = PEER_CALL_ID 12..14,
        /// Reserved1.
        reserved1: u16 = RESERVED1 14..16,
        /// CRC Errors.
        crc_errors: u32 = CRC_ERRORS 16..20,
        /// Framing Errors.
        framing_errors: u32 = FRAMING_ERRORS 20..24,
        /// Hardware Overruns.
        hardware_overruns: u32 = HW_OVERRUNS 24..28,
        /// Buffer Overruns.
        buffer_overruns: u32 = BUF_OVERRUNS 28..32,
        /// Time-out Errors.
        timeout_errors: u32 = TIMEOUT_ERRORS 32..36,
        /// Alignment Errors.
        alignment_errors: u32 = ALIGN_ERRORS 36..40,
    }

    /// Set-Link-Info.
    SetLinkInfo in set_link_info {
        /// The receiver's Call ID.
        peer_call_id: u16 = PEER_CALL_ID 12..14,
        /// Reserved1.
        reserved1: u16 = RESERVED1 14..16,
        /// Send ACCM.
        send_accm: u32 = SEND_ACCM 16..20,
        /// Receive ACCM.
        receive_accm: u32 = RECV_ACCM 20..24,
    }
}

/// Which call a Call-ID field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The sender's own call.
    Own,
    /// The receiver's call.
    Peer,
}

/// Where a message carries Call IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallIdFields {
    /// The sender's own Call ID, if the message has one.
    pub own: Option<Field>,
    /// The receiver's Call ID, if the message has one.
    pub peer: Option<Field>,
}

impl CallIdFields {
    /// The fields with their roles, in the order of the bytes.
    pub fn iter(self) -> impl Iterator<Item = (Role, Field)> {
        let own = self.own.map(|f| (Role::Own, f));
        let peer = self.peer.map(|f| (Role::Peer, f));
        own.into_iter().chain(peer)
    }
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
            OutgoingCallRequest => (Some(field::outgoing_call_request::CALL_ID), None),
            IncomingCallRequest => (Some(field::incoming_call_request::CALL_ID), None),
            CallClearRequest => (Some(field::call_clear_request::CALL_ID), None),
            CallDisconnectNotify => (Some(field::call_disconnect_notify::CALL_ID), None),
            OutgoingCallReply => (
                Some(field::outgoing_call_reply::CALL_ID),
                Some(field::outgoing_call_reply::PEER_CALL_ID),
            ),
            IncomingCallReply => (
                Some(field::incoming_call_reply::CALL_ID),
                Some(field::incoming_call_reply::PEER_CALL_ID),
            ),
            IncomingCallConnected => (None, Some(field::incoming_call_connected::PEER_CALL_ID)),
            WanErrorNotify => (None, Some(field::wan_error_notify::PEER_CALL_ID)),
            SetLinkInfo => (None, Some(field::set_link_info::PEER_CALL_ID)),
            _ => (None, None),
        };
        CallIdFields { own, peer }
    }

    /// Where a call reply's Result Code is (`None` for other messages).
    pub fn reply_result_field(self) -> Option<Field> {
        match self {
            ControlType::OutgoingCallReply => Some(field::outgoing_call_reply::RESULT_CODE),
            ControlType::IncomingCallReply => Some(field::incoming_call_reply::RESULT_CODE),
            _ => None,
        }
    }
}

/// Why a byte stream stopped looking like PPTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
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

/// Why a buffer is not a whole control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PptpError {
    /// Shorter than the header or than the message's length.
    #[error("PPTP {0}")]
    Len(#[from] LenError),
    /// The header is not a control message's.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// The Length field of a header, unchecked: how far a message of a type
/// this parser does not know extends.
pub fn declared_length(h: &[u8; HEADER_LEN]) -> usize {
    usize::from(get_u16(h, field::LENGTH))
}

/// Validates a complete 12-byte header and returns the message type. The
/// Length must equal the type's fixed length: the RFC fixes every length,
/// and accepting others would let a peer desynchronise the translation.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<ControlType, HeaderError> {
    let cookie = get_u32(h, field::MAGIC_COOKIE);
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
}

impl<T: AsRef<[u8]>> ControlMessage<T> {
    /// Wraps `buf` without any check: the getters may panic on a buffer
    /// that [`Self::check_len`] would refuse.
    pub const fn new_unchecked(buf: T) -> Self {
        ControlMessage { buf }
    }

    /// Wraps `buf` after [`Self::check_len`].
    pub fn new_checked(buf: T) -> Result<Self, PptpError> {
        let m = Self::new_unchecked(buf);
        m.check_len()?;
        Ok(m)
    }

    /// Checks that the buffer holds a valid header (see [`parse_header`])
    /// and the whole message it announces.
    pub fn check_len(&self) -> Result<(), PptpError> {
        let b = self.buf.as_ref();
        let h = b.first_chunk::<HEADER_LEN>().ok_or(LenError {
            need: HEADER_LEN,
            have: b.len(),
        })?;
        let ty = parse_header(h)?;
        check(b.len(), ty.length())?;
        Ok(())
    }

    /// The control message type.
    pub fn control_type(&self) -> ControlType {
        // Indexing, like every getter of an unchecked view, is what fails
        // on a buffer the check would refuse.
        ControlType::ALL[usize::from(get_u16(self.buf.as_ref(), field::CTRL_TYPE)).wrapping_sub(1)]
    }

    /// The Length field.
    pub fn length(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::LENGTH)
    }

    /// The Reserved0 field.
    pub fn reserved0(&self) -> u16 {
        get_u16(self.buf.as_ref(), field::RESERVED0)
    }

    /// The sender's own Call ID, where the message carries one.
    pub fn own_call_id(&self) -> Option<u16> {
        let f = self.control_type().call_id_fields().own?;
        Some(get_u16(self.buf.as_ref(), f))
    }

    /// The receiver's Call ID, where the message carries one.
    pub fn peer_call_id(&self) -> Option<u16> {
        let f = self.control_type().call_id_fields().peer?;
        Some(get_u16(self.buf.as_ref(), f))
    }

    /// Result code of an Outgoing- or Incoming-Call-Reply.
    pub fn reply_result(&self) -> Option<u8> {
        let f = self.control_type().reply_result_field()?;
        Some(self.buf.as_ref()[f.start])
    }
}

/// A control message's body, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlBody {
    StartCtrlConnRequest(StartCtrlConn),
    StartCtrlConnReply(StartCtrlConn),
    StopCtrlConnRequest(StopCtrlConn),
    StopCtrlConnReply(StopCtrlConn),
    EchoRequest(EchoRequest),
    EchoReply(EchoReply),
    OutgoingCallRequest(OutgoingCallRequest),
    OutgoingCallReply(OutgoingCallReply),
    IncomingCallRequest(IncomingCallRequest),
    IncomingCallReply(IncomingCallReply),
    IncomingCallConnected(IncomingCallConnected),
    CallClearRequest(CallClearRequest),
    CallDisconnectNotify(CallDisconnectNotify),
    WanErrorNotify(WanErrorNotify),
    SetLinkInfo(SetLinkInfo),
}

/// A control message, parsed: every byte of it (reserved fields
/// included), so that `emit` after `parse` gives the bytes back. The
/// engine reads messages through the view instead ([`ControlMessage`]
/// copies nothing); the `Repr` is for building and inspecting messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRepr {
    /// The header's Reserved0 (0 by RFC 2637).
    pub reserved0: u16,
    /// The message.
    pub body: ControlBody,
}

impl ControlRepr {
    /// Parses a checked message.
    pub fn parse<T: AsRef<[u8]>>(msg: &ControlMessage<T>) -> ControlRepr {
        use ControlBody as B;
        use ControlType as C;
        let m = msg.buf.as_ref();
        let body = match msg.control_type() {
            C::StartCtrlConnRequest => B::StartCtrlConnRequest(StartCtrlConn::parse(m)),
            C::StartCtrlConnReply => B::StartCtrlConnReply(StartCtrlConn::parse(m)),
            C::StopCtrlConnRequest => B::StopCtrlConnRequest(StopCtrlConn::parse(m)),
            C::StopCtrlConnReply => B::StopCtrlConnReply(StopCtrlConn::parse(m)),
            C::EchoRequest => B::EchoRequest(EchoRequest::parse(m)),
            C::EchoReply => B::EchoReply(EchoReply::parse(m)),
            C::OutgoingCallRequest => B::OutgoingCallRequest(OutgoingCallRequest::parse(m)),
            C::OutgoingCallReply => B::OutgoingCallReply(OutgoingCallReply::parse(m)),
            C::IncomingCallRequest => B::IncomingCallRequest(IncomingCallRequest::parse(m)),
            C::IncomingCallReply => B::IncomingCallReply(IncomingCallReply::parse(m)),
            C::IncomingCallConnected => B::IncomingCallConnected(IncomingCallConnected::parse(m)),
            C::CallClearRequest => B::CallClearRequest(CallClearRequest::parse(m)),
            C::CallDisconnectNotify => B::CallDisconnectNotify(CallDisconnectNotify::parse(m)),
            C::WanErrorNotify => B::WanErrorNotify(WanErrorNotify::parse(m)),
            C::SetLinkInfo => B::SetLinkInfo(SetLinkInfo::parse(m)),
        };
        ControlRepr {
            reserved0: msg.reserved0(),
            body,
        }
    }

    /// The message's type.
    pub fn control_type(&self) -> ControlType {
        use ControlBody as B;
        use ControlType as C;
        match self.body {
            B::StartCtrlConnRequest(_) => C::StartCtrlConnRequest,
            B::StartCtrlConnReply(_) => C::StartCtrlConnReply,
            B::StopCtrlConnRequest(_) => C::StopCtrlConnRequest,
            B::StopCtrlConnReply(_) => C::StopCtrlConnReply,
            B::EchoRequest(_) => C::EchoRequest,
            B::EchoReply(_) => C::EchoReply,
            B::OutgoingCallRequest(_) => C::OutgoingCallRequest,
            B::OutgoingCallReply(_) => C::OutgoingCallReply,
            B::IncomingCallRequest(_) => C::IncomingCallRequest,
            B::IncomingCallReply(_) => C::IncomingCallReply,
            B::IncomingCallConnected(_) => C::IncomingCallConnected,
            B::CallClearRequest(_) => C::CallClearRequest,
            B::CallDisconnectNotify(_) => C::CallDisconnectNotify,
            B::WanErrorNotify(_) => C::WanErrorNotify,
            B::SetLinkInfo(_) => C::SetLinkInfo,
        }
    }

    /// The length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        self.control_type().length()
    }

    /// Writes the message into `msg`, whose buffer holds at least
    /// [`Self::buffer_len`] bytes (a shorter one panics, as smoltcp's
    /// `emit` does).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, msg: &mut ControlMessage<T>) {
        use ControlBody as B;
        let ty = self.control_type();
        let m = msg.buf.as_mut();
        set_u16(m, field::LENGTH, ty.length() as u16);
        set_u16(m, field::MSG_TYPE, CONTROL_MESSAGE);
        set_u32(m, field::MAGIC_COOKIE, MAGIC_COOKIE);
        set_u16(m, field::CTRL_TYPE, ty as u16);
        set_u16(m, field::RESERVED0, self.reserved0);
        match &self.body {
            B::StartCtrlConnRequest(b) | B::StartCtrlConnReply(b) => b.emit(m),
            B::StopCtrlConnRequest(b) | B::StopCtrlConnReply(b) => b.emit(m),
            B::EchoRequest(b) => b.emit(m),
            B::EchoReply(b) => b.emit(m),
            B::OutgoingCallRequest(b) => b.emit(m),
            B::OutgoingCallReply(b) => b.emit(m),
            B::IncomingCallRequest(b) => b.emit(m),
            B::IncomingCallReply(b) => b.emit(m),
            B::IncomingCallConnected(b) => b.emit(m),
            B::CallClearRequest(b) => b.emit(m),
            B::CallDisconnectNotify(b) => b.emit(m),
            B::WanErrorNotify(b) => b.emit(m),
            B::SetLinkInfo(b) => b.emit(m),
        }
    }

    /// The message as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0; self.buffer_len()];
        self.emit(&mut ControlMessage::new_unchecked(&mut b[..]));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each body's fields follow one another from the end of the header to
    /// the message's end, without gap or overlap.
    #[test]
    fn fields_tile_every_message() {
        use field::*;
        let bodies: [(&[Field], &[ControlType]); 13] = [
            (
                start_ctrl_conn::ALL,
                &[
                    ControlType::StartCtrlConnRequest,
                    ControlType::StartCtrlConnReply,
                ],
            ),
            (
                stop_ctrl_conn::ALL,
                &[
                    ControlType::StopCtrlConnRequest,
                    ControlType::StopCtrlConnReply,
                ],
            ),
            (echo_request::ALL, &[ControlType::EchoRequest]),
            (echo_reply::ALL, &[ControlType::EchoReply]),
            (
                outgoing_call_request::ALL,
                &[ControlType::OutgoingCallRequest],
            ),
            (outgoing_call_reply::ALL, &[ControlType::OutgoingCallReply]),
            (
                incoming_call_request::ALL,
                &[ControlType::IncomingCallRequest],
            ),
            (incoming_call_reply::ALL, &[ControlType::IncomingCallReply]),
            (
                incoming_call_connected::ALL,
                &[ControlType::IncomingCallConnected],
            ),
            (call_clear_request::ALL, &[ControlType::CallClearRequest]),
            (
                call_disconnect_notify::ALL,
                &[ControlType::CallDisconnectNotify],
            ),
            (wan_error_notify::ALL, &[ControlType::WanErrorNotify]),
            (set_link_info::ALL, &[ControlType::SetLinkInfo]),
        ];
        let header = [LENGTH, MSG_TYPE, MAGIC_COOKIE, CTRL_TYPE, RESERVED0];
        let mut seen = 0;
        for (fields, types) in bodies {
            for &ty in types {
                let mut at = 0;
                for f in header.iter().chain(fields) {
                    assert_eq!(f.start, at, "{ty:?} {f:?}");
                    assert!(f.end > f.start);
                    at = f.end;
                }
                assert_eq!(at, ty.length(), "{ty:?}");
                seen += 1;
            }
        }
        assert_eq!(seen, ControlType::ALL.len());
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let occr = ControlRepr {
            reserved0: 0,
            body: ControlBody::CallClearRequest(CallClearRequest {
                call_id: 0x4000,
                reserved1: 0,
            }),
        };
        let mut b = occr.to_bytes();
        assert!(ControlMessage::new_checked(&b[..]).is_ok());
        assert_eq!(
            ControlMessage::new_checked(&b[..15]).err(),
            Some(PptpError::Len(LenError { need: 16, have: 15 }))
        );
        assert_eq!(
            ControlMessage::new_checked(&b[..11]).err(),
            Some(PptpError::Len(LenError { need: 12, have: 11 }))
        );
        b[field::MAGIC_COOKIE.start] = 0;
        assert_eq!(
            ControlMessage::new_checked(&b[..]).err(),
            Some(PptpError::Header(HeaderError::BadCookie(0x002b_3c4d)))
        );
    }
}

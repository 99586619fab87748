//! PPTP control messages (RFC 2637 section 2): builders for all 15 types and a
//! stream splitter that cuts a TCP byte stream into messages.
//!
//! This is deliberately independent of the library's `wire` module: the peer is
//! the test oracle for the ALG, so it should not share the code it is testing.

use std::fmt;

/// The constant in every PPTP header; anything else means the stream is garbage.
pub const MAGIC_COOKIE: u32 = 0x1A2B_3C4D;
/// PPTP Message Type 1 = control message (2, management, is never used).
pub const PPTP_CONTROL: u16 = 1;
/// Bytes before the type-specific fields (Length .. Reserved0).
pub const HEADER_LEN: usize = 12;

/// Control message types (RFC 2637 section 2).
pub mod ty {
    /// Start-Control-Connection-Request.
    pub const SCCRQ: u16 = 1;
    /// Start-Control-Connection-Reply.
    pub const SCCRP: u16 = 2;
    /// Stop-Control-Connection-Request.
    pub const STOP_CCRQ: u16 = 3;
    /// Stop-Control-Connection-Reply.
    pub const STOP_CCRP: u16 = 4;
    /// Echo-Request.
    pub const ECHO_RQ: u16 = 5;
    /// Echo-Reply.
    pub const ECHO_RP: u16 = 6;
    /// Outgoing-Call-Request.
    pub const OCRQ: u16 = 7;
    /// Outgoing-Call-Reply.
    pub const OCRP: u16 = 8;
    /// Incoming-Call-Request.
    pub const ICRQ: u16 = 9;
    /// Incoming-Call-Reply.
    pub const ICRP: u16 = 10;
    /// Incoming-Call-Connected.
    pub const ICCN: u16 = 11;
    /// Call-Clear-Request.
    pub const CCRQ: u16 = 12;
    /// Call-Disconnect-Notify.
    pub const CDN: u16 = 13;
    /// WAN-Error-Notify.
    pub const WEN: u16 = 14;
    /// Set-Link-Info.
    pub const SLI: u16 = 15;
}

/// Field offsets shared by several message types (from the first byte of the message).
pub mod off {
    /// Length of the whole message.
    pub const LENGTH: usize = 0;
    /// PPTP Message Type (1 = control).
    pub const PPTP_TYPE: usize = 2;
    /// Magic Cookie.
    pub const COOKIE: usize = 4;
    /// Control Message Type.
    pub const CTRL_TYPE: usize = 8;
    /// First Call-ID field of call messages (own id, or peer id for ICCN/WEN/SLI).
    pub const CALL_ID: usize = 12;
    /// "Peer's Call ID" of OCRP and ICRP.
    pub const PEER_CALL_ID: usize = 14;
    /// Result Code of SCCRP (after the protocol version).
    pub const SCCRP_RESULT: usize = 14;
    /// Result Code of OCRP and ICRP.
    pub const CALL_RESULT: usize = 16;
    /// Result Code of CDN, StopCCRP.
    pub const CDN_RESULT: usize = 14;
    /// Result Code of Stop-Control-Connection-Reply.
    pub const STOP_RESULT: usize = 12;
    /// Identifier of Echo-Request/Reply.
    pub const ECHO_ID: usize = 12;
}

/// The fixed length of each known control message type, indexed by type.
pub fn expected_len(ctype: u16) -> Option<usize> {
    Some(match ctype {
        ty::SCCRQ | ty::SCCRP => 156,
        ty::STOP_CCRQ | ty::STOP_CCRP | ty::ECHO_RQ | ty::CCRQ => 16,
        ty::ECHO_RP => 20,
        ty::OCRQ => 168,
        ty::OCRP => 32,
        ty::ICRQ => 220,
        ty::ICRP | ty::SLI => 24,
        ty::ICCN => 28,
        ty::CDN => 148,
        ty::WEN => 40,
        _ => return None,
    })
}

/// Short name of a control message type, for logs and summaries.
pub fn type_name(ctype: u16) -> String {
    let name = match ctype {
        ty::SCCRQ => "SCCRQ",
        ty::SCCRP => "SCCRP",
        ty::STOP_CCRQ => "StopCCRQ",
        ty::STOP_CCRP => "StopCCRP",
        ty::ECHO_RQ => "EchoRQ",
        ty::ECHO_RP => "EchoRP",
        ty::OCRQ => "OCRQ",
        ty::OCRP => "OCRP",
        ty::ICRQ => "ICRQ",
        ty::ICRP => "ICRP",
        ty::ICCN => "ICCN",
        ty::CCRQ => "CCRQ",
        ty::CDN => "CDN",
        ty::WEN => "WEN",
        ty::SLI => "SLI",
        other => return format!("type{other}"),
    };
    name.to_string()
}

/// Control type of a raw message (0 if it is too short to hold one).
pub fn ctype_of(m: &[u8]) -> u16 {
    match m.get(off::CTRL_TYPE..off::CTRL_TYPE + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// A zeroed message of `len` bytes with the common header filled in.
///
/// `len` is passed separately from the type so that malformed messages can be built.
fn header(ctype: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    put_u16(&mut m, off::LENGTH, len as u16);
    put_u16(&mut m, off::PPTP_TYPE, PPTP_CONTROL);
    put_u32(&mut m, off::COOKIE, MAGIC_COOKIE);
    put_u16(&mut m, off::CTRL_TYPE, ctype);
    m
}

fn new(ctype: u16) -> Vec<u8> {
    // Every caller passes a known type, so the length is always there.
    header(ctype, expected_len(ctype).unwrap_or(16))
}

fn put_u16(m: &mut [u8], at: usize, v: u16) {
    m[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_u32(m: &mut [u8], at: usize, v: u32) {
    m[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Copies `s` into a NUL-padded fixed field (truncating: the fields are 64 bytes).
fn put_str(m: &mut [u8], at: usize, width: usize, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(width);
    m[at..at + n].copy_from_slice(&b[..n]);
}

/// Framing capabilities: asynchronous + synchronous.
const FRAMING_ANY: u32 = 3;
/// Bearer capabilities: analog + digital.
const BEARER_ANY: u32 = 3;
/// Our receive window in packets; only echoed, never enforced.
const RECV_WINDOW: u16 = 64;

/// Start-Control-Connection-Request (PNS to PAC).
pub fn sccrq(host: &str) -> Vec<u8> {
    let mut m = new(ty::SCCRQ);
    put_u16(&mut m, 12, 0x0100);
    put_u32(&mut m, 16, FRAMING_ANY);
    put_u32(&mut m, 20, BEARER_ANY);
    put_u16(&mut m, 24, 0);
    put_u16(&mut m, 26, 1);
    put_str(&mut m, 28, 64, host);
    put_str(&mut m, 92, 64, "pptp-peer");
    m
}

/// Start-Control-Connection-Reply with the given result code (1 = OK).
pub fn sccrp(result: u8, host: &str) -> Vec<u8> {
    let mut m = new(ty::SCCRP);
    put_u16(&mut m, 12, 0x0100);
    m[14] = result;
    put_u32(&mut m, 16, FRAMING_ANY);
    put_u32(&mut m, 20, BEARER_ANY);
    put_u16(&mut m, 24, 0);
    put_u16(&mut m, 26, 1);
    put_str(&mut m, 28, 64, host);
    put_str(&mut m, 92, 64, "pptp-peer");
    m
}

/// Stop-Control-Connection-Request (reason 1 = general request to clear).
pub fn stop_ccrq(reason: u8) -> Vec<u8> {
    let mut m = new(ty::STOP_CCRQ);
    m[12] = reason;
    m
}

/// Stop-Control-Connection-Reply (result 1 = OK).
pub fn stop_ccrp(result: u8) -> Vec<u8> {
    let mut m = new(ty::STOP_CCRP);
    m[12] = result;
    m
}

/// Echo-Request with an identifier the reply must repeat.
pub fn echo_request(id: u32) -> Vec<u8> {
    let mut m = new(ty::ECHO_RQ);
    put_u32(&mut m, off::ECHO_ID, id);
    m
}

/// Echo-Reply (result 1 = OK).
pub fn echo_reply(id: u32, result: u8) -> Vec<u8> {
    let mut m = new(ty::ECHO_RP);
    put_u32(&mut m, off::ECHO_ID, id);
    m[16] = result;
    m
}

/// Outgoing-Call-Request carrying the PNS's own Call ID.
pub fn ocrq(call_id: u16, serial: u16, phone: &str) -> Vec<u8> {
    let mut m = new(ty::OCRQ);
    put_u16(&mut m, 12, call_id);
    put_u16(&mut m, 14, serial);
    put_u32(&mut m, 16, 2400);
    put_u32(&mut m, 20, 10_000_000);
    put_u32(&mut m, 24, BEARER_ANY);
    put_u32(&mut m, 28, FRAMING_ANY);
    put_u16(&mut m, 32, RECV_WINDOW);
    put_u16(&mut m, 34, 0);
    put_u16(&mut m, 36, phone.len().min(64) as u16);
    put_str(&mut m, 40, 64, phone);
    m
}

/// Outgoing-Call-Reply: the PAC's own id and the PNS's id echoed back.
pub fn ocrp(call_id: u16, peer_call_id: u16, result: u8) -> Vec<u8> {
    let mut m = new(ty::OCRP);
    put_u16(&mut m, 12, call_id);
    put_u16(&mut m, off::PEER_CALL_ID, peer_call_id);
    m[16] = result;
    put_u32(&mut m, 20, 10_000_000);
    put_u16(&mut m, 24, RECV_WINDOW);
    m
}

/// Incoming-Call-Request carrying the PAC's own Call ID.
pub fn icrq(call_id: u16, serial: u16, dialing: &str) -> Vec<u8> {
    let mut m = new(ty::ICRQ);
    put_u16(&mut m, 12, call_id);
    put_u16(&mut m, 14, serial);
    put_u32(&mut m, 16, BEARER_ANY);
    put_u16(&mut m, 26, dialing.len().min(64) as u16);
    put_str(&mut m, 92, 64, dialing);
    m
}

/// Incoming-Call-Reply: the PNS's own id and the PAC's id echoed back.
pub fn icrp(call_id: u16, peer_call_id: u16, result: u8) -> Vec<u8> {
    let mut m = new(ty::ICRP);
    put_u16(&mut m, 12, call_id);
    put_u16(&mut m, off::PEER_CALL_ID, peer_call_id);
    m[16] = result;
    put_u16(&mut m, 18, RECV_WINDOW);
    m
}

/// Incoming-Call-Connected: names only the PNS's call (the receiver's id).
pub fn iccn(peer_call_id: u16) -> Vec<u8> {
    let mut m = new(ty::ICCN);
    put_u16(&mut m, 12, peer_call_id);
    put_u32(&mut m, 16, 10_000_000);
    put_u16(&mut m, 20, RECV_WINDOW);
    put_u32(&mut m, 24, FRAMING_ANY);
    m
}

/// Call-Clear-Request carrying the PNS's own Call ID.
pub fn ccrq(call_id: u16) -> Vec<u8> {
    let mut m = new(ty::CCRQ);
    put_u16(&mut m, 12, call_id);
    m
}

/// Call-Disconnect-Notify (result 4 = call cleared on request).
pub fn cdn(call_id: u16, result: u8) -> Vec<u8> {
    let mut m = new(ty::CDN);
    put_u16(&mut m, 12, call_id);
    m[14] = result;
    m
}

/// WAN-Error-Notify: names the PNS's call (the receiver's id); counters left zero.
pub fn wen(peer_call_id: u16) -> Vec<u8> {
    let mut m = new(ty::WEN);
    put_u16(&mut m, 12, peer_call_id);
    m
}

/// Set-Link-Info: names the receiver's call; ACCMs set to the PPP default.
pub fn sli(peer_call_id: u16) -> Vec<u8> {
    let mut m = new(ty::SLI);
    put_u16(&mut m, 12, peer_call_id);
    put_u32(&mut m, 16, 0xFFFF_FFFF);
    put_u32(&mut m, 20, 0xFFFF_FFFF);
    m
}

/// Deliberately broken messages, to see how the far end (and an ALG) copes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Malformed {
    /// An Echo-Request whose Magic Cookie is wrong.
    BadCookie,
    /// An Echo-Request whose Length field (8) is shorter than any header.
    BadLength,
    /// A well-formed 16-byte message of control type 99.
    UnknownType,
}

/// Bytes of a malformed message of the given kind.
pub fn malformed(kind: Malformed) -> Vec<u8> {
    match kind {
        Malformed::BadCookie => {
            let mut m = echo_request(0xBAD);
            put_u32(&mut m, off::COOKIE, 0xDEAD_BEEF);
            m
        }
        Malformed::BadLength => {
            let mut m = echo_request(0xBAD);
            put_u16(&mut m, off::LENGTH, 8);
            m
        }
        Malformed::UnknownType => header(99, 16),
    }
}

/// One complete control message cut out of the stream.
#[derive(Clone, Debug)]
pub struct Msg {
    /// Control Message Type.
    pub ctype: u16,
    /// The whole message, header included.
    pub bytes: Vec<u8>,
}

impl Msg {
    /// Byte at `at`, or 0 beyond the end (lengths are checked, this is belt and braces).
    pub fn u8_at(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }

    /// Big-endian u16 at `at`, or 0 beyond the end.
    pub fn u16_at(&self, at: usize) -> u16 {
        match self.bytes.get(at..at + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// Big-endian u32 at `at`, or 0 beyond the end.
    pub fn u32_at(&self, at: usize) -> u32 {
        match self.bytes.get(at..at + 4) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// Short type name.
    pub fn name(&self) -> String {
        type_name(self.ctype)
    }
}

/// Why the stream cannot be parsed any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Length field shorter than the header, or wrong for a known type.
    Length {
        /// Control type (0 if the header was too short to hold one).
        ctype: u16,
        /// The Length field.
        len: usize,
    },
    /// PPTP Message Type other than 1.
    PptpType(u16),
    /// Magic cookie mismatch.
    Cookie(u32),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Length { len, .. } if *len < HEADER_LEN => {
                write!(f, "length field {len} is shorter than the header")
            }
            FrameError::Length { ctype, len } => {
                write!(f, "bad length {len} for {}", type_name(*ctype))
            }
            FrameError::PptpType(t) => write!(f, "bad PPTP message type {t}"),
            FrameError::Cookie(c) => write!(f, "bad magic cookie {c:#010x}"),
        }
    }
}

/// Reassembles control messages from TCP reads of any size.
#[derive(Default, Debug)]
pub struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes waiting for the rest of their message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// Unknown control types with a sane header are returned, not rejected: what
    /// to do with them is the caller's policy. After an error the stream has lost
    /// framing and the caller must give up on it.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, FrameError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        if len < HEADER_LEN {
            // Check early: waiting for more bytes would never resynchronise.
            return Err(FrameError::Length { ctype: 0, len });
        }
        if self.buf.len() < len {
            return Ok(None);
        }
        let msg: Vec<u8> = self.buf.drain(..len).collect();
        let pptp_type = u16::from_be_bytes([msg[2], msg[3]]);
        let cookie = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let ctype = u16::from_be_bytes([msg[8], msg[9]]);
        if cookie != MAGIC_COOKIE {
            return Err(FrameError::Cookie(cookie));
        }
        if pptp_type != PPTP_CONTROL {
            return Err(FrameError::PptpType(pptp_type));
        }
        if let Some(want) = expected_len(ctype) {
            if want != len {
                return Err(FrameError::Length { ctype, len });
            }
        }
        Ok(Some(Msg { ctype, bytes: msg }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Vec<u8>> {
        vec![
            sccrq("h"),
            sccrp(1, "h"),
            stop_ccrq(1),
            stop_ccrp(1),
            echo_request(7),
            echo_reply(7, 1),
            ocrq(1, 2, "555"),
            ocrp(1, 2, 1),
            icrq(1, 2, "555"),
            icrp(1, 2, 1),
            iccn(1),
            ccrq(1),
            cdn(1, 4),
            wen(1),
            sli(1),
        ]
    }

    #[test]
    fn builders_match_rfc_lengths_and_types() {
        for (i, m) in all_messages().iter().enumerate() {
            let ctype = i as u16 + 1;
            assert_eq!(Some(m.len()), expected_len(ctype), "type {ctype}");
            assert_eq!(u16::from_be_bytes([m[0], m[1]]) as usize, m.len());
            assert_eq!(u16::from_be_bytes([m[8], m[9]]), ctype);
            assert_eq!(&m[4..8], &MAGIC_COOKIE.to_be_bytes());
        }
    }

    #[test]
    fn call_id_fields_at_rfc_offsets() {
        let m = ocrp(0x1234, 0x5678, 1);
        assert_eq!(&m[12..16], &[0x12, 0x34, 0x56, 0x78]);
        let m = icrp(0x1234, 0x5678, 1);
        assert_eq!(&m[12..16], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&iccn(0xABCD)[12..14], &[0xAB, 0xCD]);
        assert_eq!(&ocrq(0xABCD, 0, "")[12..14], &[0xAB, 0xCD]);
    }

    #[test]
    fn splitter_handles_any_segmentation() {
        let stream: Vec<u8> = all_messages().concat();
        for chunk in [1, 2, 3, 7, 16, 100, stream.len()] {
            let mut s = Splitter::default();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                s.push(part);
                while let Some(m) = s.next_msg().unwrap() {
                    got.push(m.ctype);
                }
            }
            assert_eq!(got, (1..=15).collect::<Vec<u16>>(), "chunk {chunk}");
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn splitter_rejects_malformed() {
        let mut s = Splitter::default();
        s.push(&malformed(Malformed::BadCookie));
        assert!(matches!(s.next_msg(), Err(FrameError::Cookie(_))));
        let mut s = Splitter::default();
        s.push(&malformed(Malformed::BadLength));
        assert!(matches!(s.next_msg(), Err(FrameError::Length { .. })));
        let mut s = Splitter::default();
        s.push(&malformed(Malformed::UnknownType));
        assert_eq!(s.next_msg().unwrap().unwrap().ctype, 99);
        let mut s = Splitter::default();
        let mut m = echo_request(1);
        m[1] = 20; // length 20 is wrong for an Echo-Request
        m.extend_from_slice(&[0; 4]);
        s.push(&m);
        assert!(matches!(s.next_msg(), Err(FrameError::Length { .. })));
    }
}

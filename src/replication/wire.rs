//! The replication protocol's messages as bytes: their layout, the bounds
//! every length is checked against, and their HMAC-SHA256 authentication.
//! What the messages mean and when they are sent is [`super::Replica`]'s.
//!
//! Every message is one datagram (or one frame of a stream) of at most
//! [`MAX_MESSAGE`] bytes, all integers big-endian:
//!
//! ```text
//!  0  magic "PPHA"         4 bytes
//!  4  version              1   (VERSION; any other is refused)
//!  5  kind                 1   (1 hello, 2 heartbeat, 3 records, 4 snapshot, 5 resync request)
//!  6  payload length       2   (at most MAX_PAYLOAD, and exactly what follows minus the tag)
//!  8  sender's session     8   (random per daemon start)
//! 16  receiver's session   8   (as the sender knows it; 0 before it does)
//! 24  message counter      8   (per sender session, +1 every message: replays are refused)
//! 32  record sequence      8   (records: the first one's; snapshot: the sequence it is
//!                               current at; heartbeat: the sender's next; resync: 0)
//! 40  payload              0..=MAX_PAYLOAD
//!  …  tag                  32  HMAC-SHA256(key, bytes 0 .. end of payload)
//! ```
//!
//! Payloads: hello and heartbeat carry the node id (0 or 1) and its role
//! (0 backup, 1 active) and two zero bytes; records carry up to
//! [`MAX_RECORDS`] records; a snapshot chunk carries its index and the
//! number of chunks (2 bytes each), then up to [`MAX_RECORDS`] records; a
//! resync request carries nothing. A record is [`RECORD_LEN`] bytes:
//!
//! ```text
//!  0  kind           1  (1 call started, 2 call answered, 3 call ended)
//!  1  flags          1  (bit 0 established, bit 1 outside id known; others 0)
//!  2  inside host    4 + port 2
//!  8  outside peer   4 + port 2
//! 14  inside id      2
//! 16  outside id     2  (0 unless flag bit 1)
//! 18  NAT id         2
//! 20  quarantine     4  (ended: seconds its NAT id stays in quarantine; else 0)
//! ```
//!
//! Decoding accepts exactly what encoding produces (every reserved bit and
//! byte zero), so a message has one encoding.

use crate::alg::{ConnKey, SavedCall};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The first bytes of every message.
pub const MAGIC: [u8; 4] = *b"PPHA";
/// The protocol version this build speaks. A change of layout or meaning
/// is a new number; a node refuses every other (there is no negotiation:
/// both nodes of a pair run the same release, and a mismatch is logged).
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 40;
/// Bytes of the authentication tag after the payload.
pub const TAG_LEN: usize = 32;
/// The largest message: one UDP datagram without fragmentation on a
/// 1,500-byte link (with IPv4 and UDP headers, and room for a tunnel).
pub const MAX_MESSAGE: usize = 1400;
/// The largest payload.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - HEADER_LEN - TAG_LEN;
/// Bytes of one record.
pub const RECORD_LEN: usize = 24;
/// Records in one message (a snapshot chunk's 4 bytes of index included).
pub const MAX_RECORDS: usize = (MAX_PAYLOAD - 4) / RECORD_LEN;
/// The shortest pre-shared key taken (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// The longest pre-shared key taken (a key file is read whole).
pub const MAX_KEY_LEN: usize = 1024;

/// Why bytes are not a message, or a message is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than a header and a tag.
    #[error("message of {0} bytes is too short")]
    TooShort(usize),
    /// Longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes is too long")]
    TooLong(usize),
    /// Not this protocol.
    #[error("not a replication message (bad magic)")]
    BadMagic,
    /// Another version of the protocol.
    #[error("protocol version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The payload length does not match the message's.
    #[error("payload length {declared} but {actual} bytes")]
    BadLength {
        /// In the header.
        declared: usize,
        /// In the message.
        actual: usize,
    },
    /// The tag does not match: another key, or the bytes were changed.
    #[error("authentication failed (wrong key or corrupted message)")]
    BadTag,
    /// An unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A payload that does not fit its kind.
    #[error("bad payload: {0}")]
    BadPayload(&'static str),
    /// A record that is not valid.
    #[error("bad record: {0}")]
    BadRecord(&'static str),
    /// A key outside [`MIN_KEY_LEN`]..=[`MAX_KEY_LEN`] bytes.
    #[error("pre-shared key of {0} bytes (needs {MIN_KEY_LEN} to {MAX_KEY_LEN})")]
    BadKey(usize),
    /// A counter already seen, or too old to tell: a replay or a duplicate.
    #[error("replayed or duplicate message (counter {0})")]
    Replay(u64),
    /// Addressed to another session of this node (an old one: a replay),
    /// or from a session of the peer other than the one it greeted with.
    #[error("message for another session")]
    WrongSession,
}

/// A node's role in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds the replicated table, does not translate new calls.
    Backup,
    /// Holds the public addresses and translates.
    Active,
}

/// What a hello and a heartbeat say about their sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// 0 or 1: its half of the NAT id space.
    pub node: u8,
    /// Its role.
    pub role: Role,
}

/// A change of one call, as replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A call was mapped (its `quarantine_left` is `None`).
    Started(SavedCall),
    /// A call was answered: established, outside id known.
    Answered(SavedCall),
    /// A call ended; `quarantine_left` (`Some`) is how long its NAT id
    /// stays held.
    Ended(SavedCall),
}

impl Record {
    /// The call.
    pub fn call(&self) -> &SavedCall {
        match self {
            Record::Started(c) | Record::Answered(c) | Record::Ended(c) => c,
        }
    }
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// "I am this session": sent until the peer answers in our session.
    Hello(Status),
    /// "Still here, my next record is `seq`".
    Heartbeat(Status),
    /// Changes, numbered from the header's `seq` on.
    Records(Vec<Record>),
    /// One chunk of the sender's whole table as of `seq`.
    Snapshot {
        /// This chunk's index, from 0.
        index: u16,
        /// The number of chunks.
        total: u16,
        /// The calls (live ones as started or answered, ended ones in
        /// quarantine as ended).
        records: Vec<Record>,
    },
    /// "I missed changes: send me a snapshot".
    ResyncRequest,
}

/// The header fields a message carries besides its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's session.
    pub from: u64,
    /// The receiver's session as the sender knows it (0: unknown).
    pub to: u64,
    /// The sender's message counter.
    pub counter: u64,
    /// The record sequence (see the module's table).
    pub seq: u64,
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The body.
    pub body: Body,
}

/// The pre-shared key, ready to authenticate (its HMAC state is keyed
/// once and cloned per message).
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Result<Key, Error> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(Error::BadKey(bytes.len()));
        }
        Hmac::<Sha256>::new_from_slice(bytes)
            .map(Key)
            .map_err(|_| Error::BadKey(bytes.len()))
    }

    /// The tag of `bytes` (a message up to the end of its payload).
    pub fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison of `tag` with the tag of `bytes`.
    fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }
}

const HELLO: u8 = 1;
const HEARTBEAT: u8 = 2;
const RECORDS: u8 = 3;
const SNAPSHOT: u8 = 4;
const RESYNC: u8 = 5;

const STARTED: u8 = 1;
const ANSWERED: u8 = 2;
const ENDED: u8 = 3;
const ESTABLISHED: u8 = 1;
const HAS_OUTSIDE: u8 = 2;

/// The bytes of `msg`, authenticated with `key`. Refuses a message whose
/// payload would exceed [`MAX_PAYLOAD`] (more than [`MAX_RECORDS`]
/// records) or a node id other than 0 and 1.
pub fn encode(msg: &Message, key: &Key) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(match msg.body {
        Body::Hello(_) => HELLO,
        Body::Heartbeat(_) => HEARTBEAT,
        Body::Records(_) => RECORDS,
        Body::Snapshot { .. } => SNAPSHOT,
        Body::ResyncRequest => RESYNC,
    });
    out.extend_from_slice(&[0, 0]);
    let h = &msg.header;
    for v in [h.from, h.to, h.counter, h.seq] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let records = match &msg.body {
        Body::Hello(s) | Body::Heartbeat(s) => {
            if s.node > 1 {
                return Err(Error::BadPayload("node id other than 0 and 1"));
            }
            out.extend_from_slice(&[s.node, s.role as u8, 0, 0]);
            &[][..]
        }
        Body::Records(r) => r.as_slice(),
        Body::Snapshot {
            index,
            total,
            records,
        } => {
            if index >= total {
                return Err(Error::BadPayload("chunk index beyond the total"));
            }
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
            records.as_slice()
        }
        Body::ResyncRequest => &[][..],
    };
    if records.len() > MAX_RECORDS {
        return Err(Error::TooLong(HEADER_LEN + records.len() * RECORD_LEN));
    }
    for r in records {
        put_record(&mut out, r);
    }
    let len = out.len() - HEADER_LEN;
    out[6..8].copy_from_slice(&(len as u16).to_be_bytes());
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn put_record(out: &mut Vec<u8>, r: &Record) {
    let (kind, c) = match r {
        Record::Started(c) => (STARTED, c),
        Record::Answered(c) => (ANSWERED, c),
        Record::Ended(c) => (ENDED, c),
    };
    let mut flags = 0;
    if c.established {
        flags |= ESTABLISHED;
    }
    if c.outside_id.is_some() {
        flags |= HAS_OUTSIDE;
    }
    out.push(kind);
    out.push(flags);
    for a in [c.conn.inside, c.conn.outside] {
        out.extend_from_slice(&a.ip().octets());
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    for v in [c.inside_id, c.outside_id.unwrap_or(0), c.nat_id] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let q = match r {
        Record::Ended(c) => c.quarantine_left.unwrap_or(0),
        _ => 0,
    };
    out.extend_from_slice(&q.to_be_bytes());
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(v)
}

/// The message in `bytes`, if it is one, whole, of this version and
/// authenticated with `key`. The tag is checked before the payload is
/// read; nothing of an unauthenticated message is believed but its version.
pub fn decode(bytes: &[u8], key: &Key) -> Result<Message, Error> {
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(Error::TooLong(bytes.len()));
    }
    if bytes[0..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(Error::UnsupportedVersion(bytes[4]));
    }
    let declared = usize::from(be16(bytes, 6));
    let actual = bytes.len() - HEADER_LEN - TAG_LEN;
    if declared != actual {
        return Err(Error::BadLength { declared, actual });
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if !key.verify(signed, tag) {
        return Err(Error::BadTag);
    }
    let header = Header {
        from: be64(bytes, 8),
        to: be64(bytes, 16),
        counter: be64(bytes, 24),
        seq: be64(bytes, 32),
    };
    let p = &signed[HEADER_LEN..];
    let body = match bytes[5] {
        k @ (HELLO | HEARTBEAT) => {
            if p.len() != 4 || p[2..] != [0, 0] {
                return Err(Error::BadPayload("status is 4 bytes, the last two zero"));
            }
            if p[0] > 1 {
                return Err(Error::BadPayload("node id other than 0 and 1"));
            }
            let role = match p[1] {
                0 => Role::Backup,
                1 => Role::Active,
                _ => return Err(Error::BadPayload("unknown role")),
            };
            let s = Status { node: p[0], role };
            if k == HELLO {
                Body::Hello(s)
            } else {
                Body::Heartbeat(s)
            }
        }
        RECORDS => Body::Records(records(p)?),
        SNAPSHOT => {
            if p.len() < 4 {
                return Err(Error::BadPayload("snapshot chunk without its index"));
            }
            let (index, total) = (be16(p, 0), be16(p, 2));
            if index >= total {
                return Err(Error::BadPayload("chunk index beyond the total"));
            }
            Body::Snapshot {
                index,
                total,
                records: records(&p[4..])?,
            }
        }
        RESYNC => {
            if !p.is_empty() {
                return Err(Error::BadPayload("resync request with a payload"));
            }
            Body::ResyncRequest
        }
        k => return Err(Error::UnknownKind(k)),
    };
    Ok(Message { header, body })
}

fn records(p: &[u8]) -> Result<Vec<Record>, Error> {
    if p.len() % RECORD_LEN != 0 {
        return Err(Error::BadPayload("not a whole number of records"));
    }
    p.chunks_exact(RECORD_LEN).map(record).collect()
}

fn record(b: &[u8]) -> Result<Record, Error> {
    let flags = b[1];
    if flags & !(ESTABLISHED | HAS_OUTSIDE) != 0 {
        return Err(Error::BadRecord("unknown flags"));
    }
    let addr = |o: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]),
            be16(b, o + 4),
        )
    };
    let outside = be16(b, 16);
    let outside_id = if flags & HAS_OUTSIDE != 0 {
        Some(outside)
    } else if outside != 0 {
        return Err(Error::BadRecord("outside id without its flag"));
    } else {
        None
    };
    let q = be32(b, 20);
    let mut call = SavedCall {
        conn: ConnKey {
            inside: addr(2),
            outside: addr(8),
        },
        inside_id: be16(b, 14),
        outside_id,
        nat_id: be16(b, 18),
        established: flags & ESTABLISHED != 0,
        quarantine_left: None,
    };
    match b[0] {
        STARTED | ANSWERED if q != 0 => Err(Error::BadRecord("quarantine on a live call")),
        STARTED => Ok(Record::Started(call)),
        ANSWERED => Ok(Record::Answered(call)),
        ENDED => {
            call.quarantine_left = Some(q);
            Ok(Record::Ended(call))
        }
        _ => Err(Error::BadRecord("unknown record kind")),
    }
}

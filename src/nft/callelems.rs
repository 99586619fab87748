//! One call event's element changes as ONE netlink batch, whatever maps and sets they touch
//! (the fast path's, `gre_out`, the hairpin maps), and one call's counters in ONE read: the
//! cost of a call's setup and teardown is a round trip to the kernel each, not one per element
//! kind. The handles ([`super::FastPath`], [`super::GreOut`], [`super::HairpinMaps`]) append
//! their messages; a refused batch changes nothing (nf_tables batches are atomic), so the
//! caller falls back to each kind's own change, which knows how to replace a stale element
//! or pass over an absent one.

use std::net::Ipv4Addr;

use super::fastpath::parse_counters;
use super::greout::parse_out_counters;
use super::netlink::Txn;
use super::{ElementCounter, FastPath, GreOut, NftError, OutCounter, TableSocket};

/// Element changes of one or more call events, sent with [`TableSocket::commit_elems`].
pub struct ElemBatch {
    pub(super) txn: Txn,
}

impl ElemBatch {
    /// An empty batch.
    pub fn new() -> Self {
        ElemBatch { txn: Txn::new() }
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.txn.is_empty()
    }
}

impl Default for ElemBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl TableSocket {
    /// Sends `b` as one atomic batch (nothing is sent when it is empty); the first refusal
    /// names its element, and then no change of the batch took effect.
    pub fn commit_elems(&self, b: ElemBatch) -> Result<(), NftError> {
        if b.is_empty() {
            return Ok(());
        }
        self.lock().commit(b.txn)
    }

    /// How many batches and requests went to the kernel through this socket (each one send
    /// and one wait for the answer).
    pub fn round_trips(&self) -> u64 {
        self.lock().round_trips()
    }
}

/// The counters one call's end needs, read with one send and one wait through `sock`: the fast
/// path's element of (outside peer, NAT id) in `fast`, and the `gre_out` element of (inside
/// host, outside peer, the peer's id) in `out`. Each answer on its own: `None` when not asked,
/// `Some(Ok(None))` when the element is absent.
#[allow(clippy::type_complexity)]
pub fn read_call_counters(
    sock: &TableSocket,
    fast: Option<(&FastPath, Ipv4Addr, u16)>,
    out: Option<(&GreOut, Ipv4Addr, Ipv4Addr, u16)>,
) -> (
    Option<Result<Option<ElementCounter>, NftError>>,
    Option<Result<Option<OutCounter>, NftError>>,
) {
    let fr = fast.map(|(fp, peer, nat_id)| fp.read_call(peer, nat_id));
    let or = out.map(|(set, inside, peer, id)| set.read_call(inside, peer, id));
    // Index of each request in the send, when asked.
    let fi = fr.as_ref().map(|_| 0);
    let oi = or.as_ref().map(|_| usize::from(fr.is_some()));
    let n = usize::from(fr.is_some()) + usize::from(or.is_some());
    if n == 0 {
        return (None, None);
    }
    let mut fc = Vec::new();
    let mut oc = Vec::new();
    let done = sock.lock().requests(
        n,
        |i| match (&fr, &or) {
            (Some(r), _) if Some(i) == fi => r.what(),
            (_, Some(r)) => r.what(),
            _ => String::new(),
        },
        |i, buf, seq| match (&fr, &or) {
            (Some(r), _) if Some(i) == fi => r.build()(buf, seq),
            (_, Some(r)) if Some(i) == oi => r.build()(buf, seq),
            _ => {}
        },
        |i, msg| {
            if Some(i) == fi {
                parse_counters(msg.raw, &mut fc)
            } else {
                parse_out_counters(msg.raw, &mut oc)
            }
        },
    );
    let mut rs: Vec<Option<Result<(), NftError>>> = match done {
        Ok(v) => v.into_iter().map(Some).collect(),
        // Nothing sent or the answers unreadable: every read failed alike.
        Err(e) => {
            let msg = e.to_string();
            let mut v: Vec<_> = (1..n)
                .map(|_| Some(Err(NftError::Protocol(msg.clone()))))
                .collect();
            v.insert(0, Some(Err(e)));
            v
        }
    };
    let mut take = |i: Option<usize>| i.and_then(|i| rs.get_mut(i)?.take());
    let f = take(fi).zip(fr.as_ref()).map(|(d, r)| r.answer(d, fc));
    let o = take(oi).zip(or.as_ref()).map(|(d, r)| r.answer(d, oc));
    (f, o)
}

//! One call event's element changes as ONE netlink batch, whatever maps and sets they touch
//! (the fast path's, `gre_out`, the hairpin maps), and the counters of one or more calls'
//! ends in ONE read: the cost of a call's setup and teardown is a round trip to the kernel
//! each, not one per element kind, and calls that end together share theirs. The handles ([`super::FastPath`], [`super::GreOut`], [`super::HairpinMaps`]) append
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

/// What one call's end reads: the fast path's element of (outside peer, NAT id) and the
/// `gre_out` element of (inside host, outside peer, the peer's id), each if asked.
pub type CallReads<'a> = (
    Option<(&'a FastPath, Ipv4Addr, u16)>,
    Option<(&'a GreOut, Ipv4Addr, Ipv4Addr, u16)>,
);

/// The answers to one call's [`CallReads`], each on its own: `None` when not asked,
/// `Some(Ok(None))` when the element is absent.
pub type CallCounters = (
    Option<Result<Option<ElementCounter>, NftError>>,
    Option<Result<Option<OutCounter>, NftError>>,
);

/// One element read of [`read_calls_counters`]: the call it is for, and what it asks.
enum Read {
    Fast(usize, super::fastpath::CallRead),
    Out(usize, super::greout::OutRead),
}

/// The counters the ends of `calls` need, read with one send and one wait through `sock`,
/// in the order of `calls`. Every answer waits in the socket until all requests are
/// handled, so the caller keeps `calls` short enough for the socket's receive buffer
/// (a read answers with about 200 bytes).
pub fn read_calls_counters(sock: &TableSocket, calls: &[CallReads<'_>]) -> Vec<CallCounters> {
    let mut reads = Vec::with_capacity(calls.len() * 2);
    for (i, (fast, out)) in calls.iter().enumerate() {
        if let Some((fp, peer, nat_id)) = fast {
            reads.push(Read::Fast(i, fp.read_call(*peer, *nat_id)));
        }
        if let Some((set, inside, peer, id)) = out {
            reads.push(Read::Out(i, set.read_call(*inside, *peer, *id)));
        }
    }
    let mut answers: Vec<CallCounters> = calls.iter().map(|_| (None, None)).collect();
    if reads.is_empty() {
        return answers;
    }
    let n = reads.len();
    let mut fc: Vec<Vec<ElementCounter>> = (0..n).map(|_| Vec::new()).collect();
    let mut oc: Vec<Vec<OutCounter>> = (0..n).map(|_| Vec::new()).collect();
    let done = sock.lock().requests(
        n,
        |i| match &reads[i] {
            Read::Fast(_, r) => r.what(),
            Read::Out(_, r) => r.what(),
        },
        |i, buf, seq| match &reads[i] {
            Read::Fast(_, r) => r.build()(buf, seq),
            Read::Out(_, r) => r.build()(buf, seq),
        },
        |i, msg| match &reads[i] {
            Read::Fast(..) => parse_counters(msg.raw, &mut fc[i]),
            Read::Out(..) => parse_out_counters(msg.raw, &mut oc[i]),
        },
    );
    let done: Vec<Result<(), NftError>> = match done {
        Ok(v) => v,
        // Nothing sent or the answers unreadable: every read failed alike.
        Err(e) => {
            let msg = e.to_string();
            let mut v: Vec<_> = (1..n)
                .map(|_| Err(NftError::Protocol(msg.clone())))
                .collect();
            v.insert(0, Err(e));
            v
        }
    };
    for (((read, d), f), o) in reads.iter().zip(done).zip(fc).zip(oc) {
        match read {
            Read::Fast(c, r) => answers[*c].0 = Some(r.answer(d, f)),
            Read::Out(c, r) => answers[*c].1 = Some(r.answer(d, o)),
        }
    }
    answers
}

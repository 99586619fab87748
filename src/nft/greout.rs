//! The set `gre_out`: one element per call whose outside peer's Call ID is known, keyed (inside
//! host, outside peer, the peer's Call ID), with a counter. The forward chain looks up the GRE
//! that inside hosts send (which masquerade carries out without the daemon), so the kernel
//! counts each call's packets out; the daemon adds and removes the elements as calls are
//! answered and end, and reads the counters with the fast path's.

use std::ffi::CString;
use std::net::Ipv4Addr;

use nftnl::MsgType;
use nftnl_sys::libc;

use super::detect::netlink_owner;
use super::fastpath::elem_counters;
use super::netlink::Txn;
use super::objects::{dump_elems, flush_txn, get_elem, get_set, ElemsMsg};
use super::ruleset::{out_key, GRE_OUT, OUT_KEY_LEN};
use super::{table_cname, ElemBatch, NftError, RulesConfig, TableSocket};

/// Packets and bytes one inside host sent for one call, as the kernel counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutCounter {
    /// The inside host (source of the GRE before masquerade).
    pub inside_host: Ipv4Addr,
    /// The outside peer (its destination).
    pub outside_peer: Ipv4Addr,
    /// The Call ID it carries: the outside peer's own.
    pub outside_id: u16,
    /// Packets.
    pub packets: u64,
    /// Bytes (IP length).
    pub bytes: u64,
}

/// A handle on the set `gre_out`.
pub struct GreOut {
    nl: TableSocket,
    table: CString,
}

impl std::fmt::Debug for GreOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreOut")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl GreOut {
    /// Opens a netlink socket of its own and checks that the installed table has the set.
    pub fn open(cfg: &RulesConfig) -> Result<Self, NftError> {
        Self::open_on(cfg, TableSocket::open()?)
    }

    /// Like [`GreOut::open`], changing the set through `nl`: the socket that installed the
    /// table, which must be used if it owns the table. [`NftError::FastPathUnavailable`] when
    /// the table has no such set (loaded from an older `pptp-alg.nft`).
    pub fn open_on(cfg: &RulesConfig, nl: TableSocket) -> Result<Self, NftError> {
        let table = table_cname(&cfg.table)?;
        let what = format!("get set gre_out of table ip {}", cfg.table);
        match nl
            .lock()
            .request(&what, get_set(&table, GRE_OUT), |_| Ok(()))
        {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                return Err(NftError::FastPathUnavailable(format!(
                    "table ip {} has no set gre_out (loaded from an older pptp-alg.nft?)",
                    cfg.table
                )))
            }
            Err(e) => return Err(e),
        }
        if let Some(port) = nl.foreign_owner(&cfg.table)? {
            return Err(NftError::FastPathUnavailable(format!(
                "table ip {} is owned by a running {}, which alone may change its sets",
                cfg.table,
                netlink_owner(port)
            )));
        }
        Ok(GreOut { nl, table })
    }

    /// Starts counting a call's GRE from its inside host. Adding it twice keeps its counter.
    pub fn add(&mut self, inside: Ipv4Addr, peer: Ipv4Addr, id: u16) -> Result<(), NftError> {
        self.change(MsgType::Add, inside, peer, id)
    }

    /// Stops counting a call's GRE; an absent element is not an error.
    pub fn remove(&mut self, inside: Ipv4Addr, peer: Ipv4Addr, id: u16) -> Result<(), NftError> {
        match self.change(MsgType::Del, inside, peer, id) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Appends the add (`add`) or the deletion of a call's element to `b` (see
    /// [`ElemBatch`]).
    pub fn batch(&self, b: &mut ElemBatch, add: bool, inside: Ipv4Addr, peer: Ipv4Addr, id: u16) {
        let ty = if add { MsgType::Add } else { MsgType::Del };
        self.push(&mut b.txn, ty, inside, peer, id);
    }

    fn change(
        &mut self,
        ty: MsgType,
        inside: Ipv4Addr,
        peer: Ipv4Addr,
        id: u16,
    ) -> Result<(), NftError> {
        let mut txn = Txn::new();
        self.push(&mut txn, ty, inside, peer, id);
        self.nl.lock().commit(txn)
    }

    fn push(&self, txn: &mut Txn, ty: MsgType, inside: Ipv4Addr, peer: Ipv4Addr, id: u16) {
        let verb = if ty == MsgType::Add { "add" } else { "delete" };
        let table = self.table.clone();
        txn.add_lazy(
            &ElemsMsg::new(
                &self.table,
                GRE_OUT,
                vec![(out_key(inside, peer, id), Vec::new())],
            ),
            ty,
            move || {
                format!(
                    "{verb} element {inside} . {peer} . {id:#06x} of set gre_out in table ip {}",
                    table.to_string_lossy()
                )
            },
        );
    }

    /// Removes every element (start-up, and a reinstalled table's fresh start).
    pub fn flush(&mut self) -> Result<(), NftError> {
        self.nl.lock().commit(flush_txn(&self.table, &[GRE_OUT]))
    }

    /// The counters of every element.
    pub fn counters(&mut self) -> Result<Vec<OutCounter>, NftError> {
        let what = format!(
            "list set gre_out of table ip {}",
            self.table.to_string_lossy()
        );
        let table = self.table.clone();
        let mut out = Vec::new();
        self.nl
            .lock()
            .request(&what, dump_elems(&table, GRE_OUT), |msg| {
                parse_out_counters(msg.raw, &mut out)
            })?;
        Ok(out)
    }

    /// The counter of one call's element, `None` when it has none.
    pub fn counter(
        &mut self,
        inside: Ipv4Addr,
        peer: Ipv4Addr,
        id: u16,
    ) -> Result<Option<OutCounter>, NftError> {
        let r = self.read_call(inside, peer, id);
        let mut out = Vec::new();
        let done = self.nl.lock().request(&r.what(), r.build(), |msg| {
            parse_out_counters(msg.raw, &mut out)
        });
        r.answer(done, out)
    }

    /// The request [`GreOut::counter`] sends, to send it with others (see
    /// [`super::read_calls_counters`]).
    pub(super) fn read_call(&self, inside: Ipv4Addr, peer: Ipv4Addr, id: u16) -> OutRead {
        OutRead {
            table: self.table.clone(),
            key: out_key(inside, peer, id),
            elem: (inside, peer, id),
        }
    }
}

/// One call's counter request on `gre_out`.
pub(super) struct OutRead {
    table: CString,
    key: Vec<u8>,
    elem: (Ipv4Addr, Ipv4Addr, u16),
}

impl OutRead {
    pub(super) fn what(&self) -> String {
        let (inside, peer, id) = self.elem;
        format!(
            "get element {inside} . {peer} . {id:#06x} of set gre_out in table ip {}",
            self.table.to_string_lossy()
        )
    }

    pub(super) fn build(&self) -> impl FnOnce(&mut [u8], u32) + '_ {
        get_elem(&self.table, GRE_OUT, &self.key)
    }

    /// The element's counter from the request's outcome and the counters its answer carried.
    pub(super) fn answer(
        &self,
        done: Result<(), NftError>,
        out: Vec<OutCounter>,
    ) -> Result<Option<OutCounter>, NftError> {
        match done {
            Ok(()) => Ok(out
                .into_iter()
                .find(|c| (c.inside_host, c.outside_peer, c.outside_id) == self.elem)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Appends the counters of every element in one GETSETELEM message of `gre_out`.
pub(super) fn parse_out_counters(raw: &[u8], out: &mut Vec<OutCounter>) -> Result<(), NftError> {
    elem_counters(raw, |k, packets, bytes| {
        if k.len() >= OUT_KEY_LEN - 2 {
            out.push(OutCounter {
                inside_host: Ipv4Addr::new(k[0], k[1], k[2], k[3]),
                outside_peer: Ipv4Addr::new(k[4], k[5], k[6], k[7]),
                outside_id: u16::from_be_bytes([k[8], k[9]]),
                packets,
                bytes,
            });
        }
    })
}

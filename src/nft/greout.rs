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
use super::objects::{dump_elems, get_elem, get_set, ElemsMsg};
use super::ruleset::{out_key, GRE_OUT, OUT_KEY_LEN};
use super::{table_cname, NftError, RulesConfig, TableSocket};

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

    fn change(
        &mut self,
        ty: MsgType,
        inside: Ipv4Addr,
        peer: Ipv4Addr,
        id: u16,
    ) -> Result<(), NftError> {
        let verb = if ty == MsgType::Add { "add" } else { "delete" };
        let mut txn = Txn::new();
        txn.add(
            &ElemsMsg::new(
                &self.table,
                GRE_OUT,
                vec![(out_key(inside, peer, id), Vec::new())],
            ),
            ty,
            format!(
                "{verb} element {inside} . {peer} . {id:#06x} of set gre_out in table ip {}",
                self.table.to_string_lossy()
            ),
        );
        self.nl.lock().commit(txn)
    }

    /// Removes every element (start-up, and a reinstalled table's fresh start).
    pub fn flush(&mut self) -> Result<(), NftError> {
        let mut txn = Txn::new();
        txn.add(
            &ElemsMsg::flush(&self.table, GRE_OUT),
            MsgType::Del,
            format!(
                "flush set gre_out of table ip {}",
                self.table.to_string_lossy()
            ),
        );
        self.nl.lock().commit(txn)
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
        let what = format!(
            "get element {inside} . {peer} . {id:#06x} of set gre_out in table ip {}",
            self.table.to_string_lossy()
        );
        let table = self.table.clone();
        let k = out_key(inside, peer, id);
        let mut out = Vec::new();
        let r = self
            .nl
            .lock()
            .request(&what, get_elem(&table, GRE_OUT, &k), |msg| {
                parse_out_counters(msg.raw, &mut out)
            });
        match r {
            Ok(()) => Ok(out
                .into_iter()
                .find(|c| (c.inside_host, c.outside_peer, c.outside_id) == (inside, peer, id))),
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

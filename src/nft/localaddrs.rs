//! The set `local_addrs`: this router's own IPv4 addresses, which the fast path rule matches
//! GRE's destination against (one hash lookup, where `fib daddr type local` costs a FIB lookup
//! per packet). The daemon fills it at start and keeps it in step with the interfaces'
//! addresses; the queue rule still asks the routing table, so GRE to an address the set does
//! not hold yet reaches the daemon and is translated there.

use std::ffi::CString;
use std::net::Ipv4Addr;

use nftnl::MsgType;
use nftnl_sys::libc;

use super::detect::netlink_owner;
use super::netlink::Txn;
use super::objects::{dump_elems, elem_key, flush_txn, for_each_elem, get_set, ElemsMsg};
use super::ruleset::LOCAL_ADDRS;
use super::{table_cname, NftError, RulesConfig, TableSocket};

/// Addresses per element message: a message must fit in one netlink buffer page set
/// (libnftnl's batch pages), about 20 bytes per element.
const CHUNK: usize = 512;

/// A handle on the set of local addresses.
pub struct LocalAddrSet {
    nl: TableSocket,
    table: CString,
}

impl std::fmt::Debug for LocalAddrSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAddrSet")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl LocalAddrSet {
    /// Opens a netlink socket of its own and checks that the installed table has the set
    /// (for a table installed by someone else, e.g. `nft -f nft/pptp-alg.nft`).
    pub fn open(cfg: &RulesConfig) -> Result<Self, NftError> {
        Self::open_on(cfg, TableSocket::open()?)
    }

    /// Like [`LocalAddrSet::open`], changing the set through `nl`: the socket that installed
    /// the table, which must be used if it owns the table.
    ///
    /// [`NftError::FastPathUnavailable`] if the table has no such set (a ruleset without the
    /// fast path, or one loaded from an older `pptp-alg.nft` whose fast path rule asks the
    /// routing table instead).
    pub fn open_on(cfg: &RulesConfig, nl: TableSocket) -> Result<Self, NftError> {
        let table = table_cname(&cfg.table)?;
        let what = format!("get set local_addrs of table ip {}", cfg.table);
        match nl
            .lock()
            .request(&what, get_set(&table, LOCAL_ADDRS), |_| Ok(()))
        {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                return Err(NftError::FastPathUnavailable(format!(
                    "table ip {} has no set local_addrs",
                    cfg.table
                )))
            }
            Err(e) => return Err(e),
        }
        if let Some(port) = nl.foreign_owner(&cfg.table)? {
            return Err(NftError::FastPathUnavailable(format!(
                "table ip {} is owned by a running {}, which alone may change its set \
                 local_addrs",
                cfg.table,
                netlink_owner(port)
            )));
        }
        Ok(LocalAddrSet { nl, table })
    }

    /// Replaces the content of the set by `addrs`, atomically (flush and adds in one batch).
    pub fn replace(&mut self, addrs: &[Ipv4Addr]) -> Result<(), NftError> {
        let mut txn = flush_txn(&self.table, &[LOCAL_ADDRS]);
        for chunk in addrs.chunks(CHUNK) {
            let elems = chunk.iter().map(|a| (a.octets().to_vec(), Vec::new()));
            txn.add(
                &ElemsMsg::new(&self.table, LOCAL_ADDRS, elems.collect()),
                MsgType::Add,
                format!(
                    "add {} element(s) to set local_addrs of table ip {}",
                    chunk.len(),
                    self.tname()
                ),
            );
        }
        self.nl.lock().commit(txn)
    }

    /// Adds one address; adding one that is there is harmless.
    pub fn add(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
        self.change(MsgType::Add, addr)
    }

    /// Removes one address; removing one that is not there is not an error.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<(), NftError> {
        match self.change(MsgType::Del, addr) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// The addresses in the set.
    pub fn list(&mut self) -> Result<Vec<Ipv4Addr>, NftError> {
        let what = format!("list set local_addrs of table ip {}", self.tname());
        let mut out = Vec::new();
        let table = self.table.clone();
        self.nl
            .lock()
            .request(&what, dump_elems(&table, LOCAL_ADDRS), |msg| {
                parse_keys(msg.raw, &mut out)
            })?;
        out.sort();
        Ok(out)
    }

    fn change(&mut self, ty: MsgType, addr: Ipv4Addr) -> Result<(), NftError> {
        let verb = if ty == MsgType::Add { "add" } else { "delete" };
        let mut txn = Txn::new();
        txn.add(
            &ElemsMsg::new(
                &self.table,
                LOCAL_ADDRS,
                vec![(addr.octets().to_vec(), Vec::new())],
            ),
            ty,
            format!(
                "{verb} element {addr} of set local_addrs in table ip {}",
                self.tname()
            ),
        );
        self.nl.lock().commit(txn)
    }

    fn tname(&self) -> std::borrow::Cow<'_, str> {
        self.table.to_string_lossy()
    }
}

/// Appends the IPv4 keys of one GETSETELEM dump message.
pub(super) fn parse_keys(raw: &[u8], out: &mut Vec<Ipv4Addr>) -> Result<(), NftError> {
    for_each_elem(raw, |e| {
        // SAFETY: libnftnl hands over a valid element.
        if let Some(&[a, b, c, d]) = unsafe { elem_key(e) } {
            out.push(Ipv4Addr::new(a, b, c, d));
        }
    })
}

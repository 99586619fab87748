//! The kernel fast path: elements of the `gre_daddr` and `gre_cid` maps, one pair per call.

use std::ffi::{c_int, c_void, CStr, CString};
use std::net::Ipv4Addr;

use nftnl::MsgType;
use nftnl_sys::{self as sys, libc};

use super::detect::netlink_owner;
use super::netlink::Txn;
use super::objects::{dump_elems, elem_key, flush_txn, for_each_elem, get_elem, get_set, ElemsMsg};
use super::ruleset::{key, GRE_CID, GRE_DADDR, KEY_LEN};
use super::{table_cname, ElemBatch, ElementCounter, NftError, RulesConfig, TableSocket};

/// A handle on the fast path maps.
///
/// Every change is one atomic batch over both maps, so the kernel never sees a call whose
/// address is known but whose Call ID is not.
pub struct FastPath {
    nl: TableSocket,
    table: CString,
}

impl FastPath {
    /// Opens a netlink socket of its own and checks that the installed table has the fast path
    /// maps (for a table installed by someone else, e.g. `nft -f nft/pptp-alg.nft`).
    pub fn open(cfg: &RulesConfig) -> Result<Self, NftError> {
        Self::open_on(cfg, TableSocket::open()?)
    }

    /// Like [`FastPath::open`], changing the maps through `nl`: the socket that installed the
    /// table, which must be used if it owns the table.
    pub fn open_on(cfg: &RulesConfig, nl: TableSocket) -> Result<Self, NftError> {
        if !cfg.offload {
            return Err(NftError::FastPathUnavailable(
                "the kernel fast path is disabled in the configuration (offload = false)".into(),
            ));
        }
        let table = table_cname(&cfg.table)?;
        for map in [GRE_DADDR, GRE_CID] {
            let what = format!(
                "get map {} of table ip {}",
                map.to_string_lossy(),
                cfg.table
            );
            match nl.lock().request(&what, get_set(&table, map), |_| Ok(())) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::ENOENT) => {
                    return Err(NftError::FastPathUnavailable(format!(
                        "table ip {} has no map {}: install the rules (with offload) first",
                        cfg.table,
                        map.to_string_lossy()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(port) = nl.foreign_owner(&cfg.table)? {
            return Err(NftError::FastPathUnavailable(format!(
                "table ip {} is owned by a running {}, which alone may change its maps",
                cfg.table,
                netlink_owner(port)
            )));
        }
        Ok(FastPath { nl, table })
    }

    /// Lets the kernel translate GRE from `outside_peer` carrying Call ID `nat_id`: destination
    /// becomes `inside_host`, Call ID becomes `inside_id`.
    ///
    /// Adding the same call twice is harmless; a different mapping for the same key replaces
    /// the old one.
    pub fn add_call(
        &mut self,
        outside_peer: Ipv4Addr,
        nat_id: u16,
        inside_host: Ipv4Addr,
        inside_id: u16,
    ) -> Result<(), NftError> {
        let k = key(outside_peer, nat_id);
        let elems = [
            (GRE_CID, inside_id.to_be_bytes().to_vec()),
            (GRE_DADDR, inside_host.octets().to_vec()),
        ];
        let mut txn = Txn::new();
        for (map, data) in &elems {
            self.push(&mut txn, MsgType::Add, map, &k, data, outside_peer, nat_id);
        }
        let r = self.nl.lock().commit(txn);
        match r {
            Err(e) if matches!(e.errno(), Some(libc::EBUSY) | Some(libc::EEXIST)) => {
                // A stale entry (e.g. left by a crashed daemon) with other data: replace it.
                self.remove_call(outside_peer, nat_id)?;
                let mut txn = Txn::new();
                for (map, data) in &elems {
                    self.push(&mut txn, MsgType::Add, map, &k, data, outside_peer, nat_id);
                }
                self.nl.lock().commit(txn)
            }
            r => r,
        }
    }

    /// Appends [`FastPath::add_call`]'s messages to `b` (see [`ElemBatch`]); the batch's
    /// refusal leaves a stale element with other data, which [`FastPath::add_call`] replaces.
    pub fn batch_add(
        &self,
        b: &mut ElemBatch,
        outside_peer: Ipv4Addr,
        nat_id: u16,
        inside_host: Ipv4Addr,
        inside_id: u16,
    ) {
        let k = key(outside_peer, nat_id);
        let cid = inside_id.to_be_bytes();
        let daddr = inside_host.octets();
        for (map, data) in [(GRE_CID, &cid[..]), (GRE_DADDR, &daddr[..])] {
            self.push(
                &mut b.txn,
                MsgType::Add,
                map,
                &k,
                data,
                outside_peer,
                nat_id,
            );
        }
    }

    /// Appends the deletion of a call's two elements to `b` (all or nothing: an absent one
    /// makes the batch fail, and [`FastPath::remove_call`] deletes what is there).
    pub fn batch_remove(&self, b: &mut ElemBatch, outside_peer: Ipv4Addr, nat_id: u16) {
        let k = key(outside_peer, nat_id);
        for map in [GRE_DADDR, GRE_CID] {
            self.push(&mut b.txn, MsgType::Del, map, &k, &[], outside_peer, nat_id);
        }
    }

    /// Stops translating a call in the kernel. Removing an absent call is not an error.
    pub fn remove_call(&mut self, outside_peer: Ipv4Addr, nat_id: u16) -> Result<(), NftError> {
        let k = key(outside_peer, nat_id);
        let mut txn = Txn::new();
        for map in [GRE_DADDR, GRE_CID] {
            self.push(&mut txn, MsgType::Del, map, &k, &[], outside_peer, nat_id);
        }
        let r = self.nl.lock().commit(txn);
        match r {
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                // One half is missing and the batch was rolled back: delete each on its own.
                for map in [GRE_DADDR, GRE_CID] {
                    let mut txn = Txn::new();
                    self.push(&mut txn, MsgType::Del, map, &k, &[], outside_peer, nat_id);
                    let r = self.nl.lock().commit(txn);
                    match r {
                        Err(e) if e.errno() == Some(libc::ENOENT) => {}
                        r => r?,
                    }
                }
                Ok(())
            }
            r => r,
        }
    }

    /// Removes every element of both maps (start-up synchronisation and exit).
    pub fn flush(&mut self) -> Result<(), NftError> {
        self.nl
            .lock()
            .commit(flush_txn(&self.table, &[GRE_DADDR, GRE_CID]))
    }

    /// Packets and bytes the kernel translated, per call (from the per-element counters of
    /// `gre_daddr`).
    pub fn counters(&mut self) -> Result<Vec<ElementCounter>, NftError> {
        let what = format!(
            "list map {} of table ip {}",
            GRE_DADDR.to_string_lossy(),
            self.table.to_string_lossy()
        );
        let table = self.table.clone();
        self.read_counters(&what, dump_elems(&table, GRE_DADDR))
    }

    /// The kernel's counters of one call, `None` when it has no element (one request, however
    /// many calls there are: read when a call ends, so its log line is complete).
    pub fn call_counter(
        &mut self,
        outside_peer: Ipv4Addr,
        nat_id: u16,
    ) -> Result<Option<ElementCounter>, NftError> {
        let r = self.read_call(outside_peer, nat_id);
        let mut out = Vec::new();
        let done = self.nl.lock().request(&r.what(), r.build(), |msg| {
            parse_counters(msg.raw, &mut out)
        });
        r.answer(done, out)
    }

    /// The request [`FastPath::call_counter`] sends, to send it with others (see
    /// [`super::read_calls_counters`]).
    pub(super) fn read_call(&self, outside_peer: Ipv4Addr, nat_id: u16) -> CallRead {
        CallRead {
            table: self.table.clone(),
            key: key(outside_peer, nat_id),
            peer: outside_peer,
            nat_id,
        }
    }

    /// Sends one element request on the table's socket and collects the counters of every
    /// element in the answer.
    fn read_counters(
        &mut self,
        what: &str,
        build: impl FnOnce(&mut [u8], u32),
    ) -> Result<Vec<ElementCounter>, NftError> {
        let mut out = Vec::new();
        self.nl
            .lock()
            .request(what, build, |msg| parse_counters(msg.raw, &mut out))?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        txn: &mut Txn,
        ty: MsgType,
        map: &'static CStr,
        k: &[u8],
        data: &[u8],
        peer: Ipv4Addr,
        nat_id: u16,
    ) {
        let verb = if ty == MsgType::Add { "add" } else { "delete" };
        let table = self.table.clone();
        txn.add_lazy(
            &ElemsMsg::new(&self.table, map, vec![(k.to_vec(), data.to_vec())]),
            ty,
            move || {
                format!(
                    "{verb} element {peer} . {nat_id:#06x} of map {} in table ip {}",
                    map.to_string_lossy(),
                    table.to_string_lossy()
                )
            },
        );
    }
}

/// One call's counter request on `gre_daddr`.
pub(super) struct CallRead {
    table: CString,
    key: Vec<u8>,
    peer: Ipv4Addr,
    nat_id: u16,
}

impl CallRead {
    pub(super) fn what(&self) -> String {
        format!(
            "get element {} . {:#06x} of map {} in table ip {}",
            self.peer,
            self.nat_id,
            GRE_DADDR.to_string_lossy(),
            self.table.to_string_lossy()
        )
    }

    pub(super) fn build(&self) -> impl FnOnce(&mut [u8], u32) + '_ {
        get_elem(&self.table, GRE_DADDR, &self.key)
    }

    /// The call's counter from the request's outcome and the counters its answer carried.
    pub(super) fn answer(
        &self,
        done: Result<(), NftError>,
        out: Vec<ElementCounter>,
    ) -> Result<Option<ElementCounter>, NftError> {
        match done {
            Ok(()) => Ok(out
                .into_iter()
                .find(|c| c.outside_peer == self.peer && c.nat_id == self.nat_id)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Appends the counters of every element in one GETSETELEM dump message.
pub(super) fn parse_counters(raw: &[u8], out: &mut Vec<ElementCounter>) -> Result<(), NftError> {
    elem_counters(raw, |k, packets, bytes| {
        if k.len() >= KEY_LEN - 2 {
            out.push(ElementCounter {
                outside_peer: Ipv4Addr::new(k[0], k[1], k[2], k[3]),
                nat_id: u16::from_be_bytes([k[4], k[5]]),
                packets,
                bytes,
            });
        }
    })
}

/// Calls `f` with the key, packets and bytes of every element in one GETSETELEM message (an
/// element without a counter reads 0).
pub(super) fn elem_counters(
    raw: &[u8],
    mut f: impl FnMut(&[u8], u64, u64),
) -> Result<(), NftError> {
    for_each_elem(raw, |e| {
        // SAFETY: libnftnl hands over a valid element.
        let Some(k) = (unsafe { elem_key(e) }) else {
            return;
        };
        let mut c = (0u64, 0u64);
        // SAFETY: a valid element, and `c` outlives the foreach.
        unsafe {
            sys::nftnl_set_elem_expr_foreach(
                e,
                Some(counter_cb),
                (&mut c as *mut (u64, u64)).cast(),
            )
        };
        f(k, c.0, c.1);
    })
}

unsafe extern "C" fn counter_cb(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: called by libnftnl with a valid expression and the pointer we passed.
    unsafe {
        let name = sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16);
        if !name.is_null() && CStr::from_ptr(name) == c"counter" {
            let c = &mut *data.cast::<(u64, u64)>();
            c.0 = sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16);
            c.1 = sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_BYTES as u16);
        }
    }
    0
}

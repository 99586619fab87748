//! The elements of hairpinned calls (see `crate::alg::Hairpin`): the source map, with and
//! without the fast path, and the fast path's destination map for the client's GRE.
//!
//! A hairpinned call has three elements at most:
//!
//! - `hairpin_saddr[server . client . client's id] = public`: the server's GRE, once the
//!   kernel or the daemon sent it on to the client, leaves from the address the client
//!   dialed; known when the call starts;
//! - `hairpin_saddr[client . server . server's id] = masq` and (fast path)
//!   `hairpin_daddr[client . public . server's id] = server`: the client's GRE to the public
//!   address goes on to the server, from the address the server knows; known once the
//!   server's reply names its id.
//!
//! The chain that reads the source map, `gre_post`, exists only while hairpinned calls do:
//! every batch that adds a call's elements (re)creates it, and the daemon removes it with the
//! last call's (see [`crate::nft`]'s ruleset, `hairpin_post`).

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;

use nftnl::MsgType;
use nftnl_sys::libc;

use super::netlink::Txn;
use super::objects::{flush_txn, ElemsMsg};
use super::ruleset::{
    add_drop_hairpin_post, add_hairpin_post, hairpin_key, HAIRPIN_DADDR, HAIRPIN_SADDR,
};
use super::{table_cname, ElemBatch, NftError, RulesConfig, TableSocket};

/// A hairpinned call as its elements need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HairpinCall {
    /// The inside client.
    pub client: Ipv4Addr,
    /// The client's own Call ID (what the server's GRE carries once translated).
    pub client_id: u16,
    /// The inside server.
    pub server: Ipv4Addr,
    /// The server's own Call ID, once its reply named it.
    pub server_id: Option<u16>,
    /// The address the client dialed.
    pub public: Ipv4Addr,
    /// The address the server sees the client come from.
    pub masq: Ipv4Addr,
}

impl HairpinCall {
    /// (map, key, data) of every element the call has so far; `offload` includes the
    /// destination map's.
    fn elements(&self, offload: bool) -> Vec<(&'static CStr, Vec<u8>, Ipv4Addr)> {
        let mut v = vec![(
            HAIRPIN_SADDR,
            hairpin_key(self.server, self.client, self.client_id),
            self.public,
        )];
        if let Some(sid) = self.server_id {
            v.push((
                HAIRPIN_SADDR,
                hairpin_key(self.client, self.server, sid),
                self.masq,
            ));
            if offload {
                v.push((
                    HAIRPIN_DADDR,
                    hairpin_key(self.client, self.public, sid),
                    self.server,
                ));
            }
        }
        v
    }
}

/// A handle on the hairpin maps of the installed table.
pub struct HairpinMaps {
    nl: TableSocket,
    table: CString,
    offload: bool,
    /// For the rule of `gre_post` (the mark).
    rules: RulesConfig,
}

impl std::fmt::Debug for HairpinMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HairpinMaps")
            .field("table", &self.table)
            .field("offload", &self.offload)
            .finish()
    }
}

impl HairpinMaps {
    /// Changes the maps through `nl` (the table's owner socket when the daemon installed it);
    /// `offload` says whether the table has the fast path's destination map.
    pub fn open_on(cfg: &RulesConfig, nl: TableSocket) -> Result<Self, NftError> {
        Ok(HairpinMaps {
            nl,
            table: table_cname(&cfg.table)?,
            offload: cfg.offload,
            rules: cfg.clone(),
        })
    }

    /// Adds the elements `call` has so far, in one batch. An element already there with
    /// the same data is left; one with other data (left by an earlier run) is replaced.
    pub fn add_call(&mut self, call: &HairpinCall) -> Result<(), NftError> {
        let elems = call.elements(self.offload);
        match self.commit(MsgType::Add, &elems) {
            Err(e) if matches!(e.errno(), Some(libc::EBUSY) | Some(libc::EEXIST)) => {
                self.remove_call(call)?;
                self.commit(MsgType::Add, &elems)
            }
            r => r,
        }
    }

    /// Removes the call's elements; absent ones are no error.
    pub fn remove_call(&mut self, call: &HairpinCall) -> Result<(), NftError> {
        for e in call.elements(self.offload) {
            match self.commit(MsgType::Del, std::slice::from_ref(&e)) {
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Removes every element of the hairpin maps, and the chain that reads them (start-up
    /// synchronisation and exit).
    pub fn flush(&mut self) -> Result<(), NftError> {
        let maps: &[&CStr] = if self.offload {
            &[HAIRPIN_SADDR, HAIRPIN_DADDR]
        } else {
            &[HAIRPIN_SADDR]
        };
        let mut txn = flush_txn(&self.table, maps);
        add_drop_hairpin_post(&mut txn, &self.rules, &self.table);
        self.nl.lock().commit(txn)
    }

    /// Appends the add (`add`) or the deletion of every element `call` has so far to `b`
    /// (see [`ElemBatch`]; all or nothing, where [`HairpinMaps::add_call`] replaces stale
    /// elements and [`HairpinMaps::remove_call`] passes over absent ones). An add brings the
    /// chain `gre_post` along.
    pub fn batch(&self, b: &mut ElemBatch, add: bool, call: &HairpinCall) {
        let ty = if add { MsgType::Add } else { MsgType::Del };
        if add {
            add_hairpin_post(&mut b.txn, &self.rules, &self.table);
        }
        self.push(&mut b.txn, ty, &call.elements(self.offload));
    }

    /// Appends the removal of the chain `gre_post` to `b`: no hairpinned call is left.
    pub fn batch_drop_post(&self, b: &mut ElemBatch) {
        add_drop_hairpin_post(&mut b.txn, &self.rules, &self.table);
    }

    /// Removes the chain `gre_post` on its own (absent is no error).
    pub fn drop_post(&mut self) -> Result<(), NftError> {
        let mut txn = Txn::new();
        add_drop_hairpin_post(&mut txn, &self.rules, &self.table);
        self.nl.lock().commit(txn)
    }

    fn commit(
        &mut self,
        ty: MsgType,
        elems: &[(&'static CStr, Vec<u8>, Ipv4Addr)],
    ) -> Result<(), NftError> {
        let mut txn = Txn::new();
        if ty == MsgType::Add {
            add_hairpin_post(&mut txn, &self.rules, &self.table);
        }
        self.push(&mut txn, ty, elems);
        self.nl.lock().commit(txn)
    }

    fn push(&self, txn: &mut Txn, ty: MsgType, elems: &[(&'static CStr, Vec<u8>, Ipv4Addr)]) {
        let verb = if ty == MsgType::Add { "add" } else { "delete" };
        for (map, k, data) in elems {
            let data = if ty == MsgType::Add {
                data.octets().to_vec()
            } else {
                Vec::new()
            };
            let (map, k, table) = (*map, k.clone(), self.table.clone());
            txn.add_lazy(
                &ElemsMsg::new(&table, map, vec![(k.clone(), data)]),
                ty,
                move || {
                    format!(
                        "{verb} element {}.{}.{}.{} . {}.{}.{}.{} . {:#06x} of map {} in table ip {}",
                        k[0],
                        k[1],
                        k[2],
                        k[3],
                        k[4],
                        k[5],
                        k[6],
                        k[7],
                        u16::from_be_bytes([k[8], k[9]]),
                        map.to_string_lossy(),
                        table.to_string_lossy()
                    )
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn elements_of_a_call() {
        let mut c = HairpinCall {
            client: a("10.0.0.2"),
            client_id: 1000,
            server: a("10.0.0.10"),
            server_id: None,
            public: a("192.0.2.1"),
            masq: a("10.0.0.1"),
        };
        // Before the server's reply: only the server's GRE can flow.
        assert_eq!(
            c.elements(true),
            vec![(
                HAIRPIN_SADDR,
                hairpin_key(c.server, c.client, 1000),
                c.public
            )]
        );
        c.server_id = Some(7);
        let all = c.elements(true);
        assert_eq!(all.len(), 3);
        assert!(all.contains(&(HAIRPIN_SADDR, hairpin_key(c.client, c.server, 7), c.masq)));
        assert!(all.contains(&(HAIRPIN_DADDR, hairpin_key(c.client, c.public, 7), c.server)));
        // Without the fast path the daemon sends the client's GRE on itself.
        assert!(c.elements(false).iter().all(|e| e.0 == HAIRPIN_SADDR));
        assert_eq!(c.elements(false).len(), 2);
    }
}

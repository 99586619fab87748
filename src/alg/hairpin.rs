//! Hairpin NAT: an inside client reaching an inside server through the router's public
//! address. The kernel both destination-NATs (public address to the server) and
//! source-NATs (client to the router's own address towards the server) such a control
//! connection, so the engine sees it, between the two, as an inside client talking to an
//! outside peer that happens to be the server: Call IDs are translated as for any inside
//! client. What differs is GRE, whose two directions both end on the router:
//!
//! - the client's GRE goes to the public address, carrying the server's Call ID: it must go
//!   on to the server, from the address the server sees the control connection come from
//!   (the masquerade address);
//! - the server's GRE goes to that masquerade address, carrying the NAT id: it must go on
//!   to the client with the client's own id (as for any call), from the public address the
//!   client dialed.
//!
//! This module owns what the engine knows about that: which control connections the caller
//! classified (it reads the NAT from conntrack, see `crate::nft::conntrack`), the two
//! addresses of the hairpinned ones, and the lookup of a client's GRE to the public address.
//! The source addresses are rewritten after routing by the kernel (a local source would
//! make routing drop the packet as a martian), from elements the caller adds for the calls
//! of hairpinned connections.

use super::ConnKey;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The two router addresses of a hairpinned control connection, as conntrack has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hairpin {
    /// The address the client dialed (the original destination, before dnat): the source of
    /// the server's GRE as the client must see it.
    pub public: Ipv4Addr,
    /// The address the server sees the client come from (the reply destination, after
    /// masquerade): the source of the client's GRE as the server must see it.
    pub masq: Ipv4Addr,
}

/// The connections the caller classified, hairpinned or not. Entries go with their
/// connection (see `Alg::handle_timeout`), so this never holds more than the connection
/// table.
#[derive(Debug, Default)]
pub(super) struct Hairpins {
    plain: FxHashSet<ConnKey>,
    hairpinned: FxHashMap<ConnKey, Hairpin>,
}

impl Hairpins {
    /// `None` while the caller has not classified the connection.
    pub fn get(&self, key: &ConnKey) -> Option<Option<Hairpin>> {
        match self.hairpinned.get(key) {
            Some(h) => Some(Some(*h)),
            None => self.plain.contains(key).then_some(None),
        }
    }

    pub fn set(&mut self, key: ConnKey, hp: Option<Hairpin>) {
        match hp {
            Some(h) => {
                self.plain.remove(&key);
                self.hairpinned.insert(key, h);
            }
            None => {
                self.hairpinned.remove(&key);
                self.plain.insert(key);
            }
        }
    }

    /// Keeps the entries of connections for which `alive` holds.
    pub fn retain(&mut self, mut alive: impl FnMut(&ConnKey) -> bool) {
        self.plain.retain(&mut alive);
        self.hairpinned.retain(|k, _| alive(k));
    }

    /// The hairpinned connections of `client` that dialed `public`: the servers its GRE to
    /// `public` may be meant for. Hairpinned connections are few (a site's own clients of
    /// its own server), so a scan of them, done only for GRE that matches no call by NAT
    /// id, is cheaper than an index kept in step with every call.
    pub fn servers(
        &self,
        client: Ipv4Addr,
        public: Ipv4Addr,
    ) -> impl Iterator<Item = (&ConnKey, Hairpin)> + '_ {
        self.hairpinned
            .iter()
            .filter(move |(k, h)| *k.inside.ip() == client && h.public == public)
            .map(|(k, h)| (k, *h))
    }
}

//! nftables: the only code that talks to nf_tables (through libnftnl; the socket is
//! [`crate::netlink`]'s).
//!
//! The daemon owns one table (`ip pptp_alg` by default) and never touches any other:
//!
//! - chain `gre_in` (prerouting, priority raw): enhanced GRE (version 1, protocol 0x880b, key
//!   bit set, checksum bit clear) addressed to this router. Calls the daemon handed to the
//!   kernel are rewritten in place through the maps `gre_daddr` and `gre_cid` (the fast path,
//!   see [`FastPath`]) when the destination is in the set `local_addrs` of the router's own
//!   addresses (see [`LocalAddrSet`]); GRE to those addresses that matches no element is
//!   counted and left to the router (it belongs to no call: elements are added before a
//!   call's NAT id leaves), and what the routing table calls local but the set does not hold
//!   is queued to `queue_gre` (all GRE to the router without the fast path). Every one of
//!   these rules `notrack`s what it takes: conntrack never sees this GRE.
//!   With the fast path, a hairpinned client's GRE to the public address it dialed is sent on
//!   to the inside server through the map `hairpin_daddr` (see [`HairpinMaps`]).
//! - chain `gre_post` (postrouting, priority filter), only while hairpinned calls exist:
//!   hairpinned GRE that the kernel or the daemon sent on (it carries the mark) gets, once
//!   routed, the source its receiver expects from the map `hairpin_saddr`, with and without
//!   the fast path. A local source before routing would make the kernel drop it as a martian.
//! - chain `ctl` (forward, priority filter + 10): the GRE translated above (untracked) leaves
//!   at its first rule; PPTP control connections (server port 1723)
//!   that the kernel NATs, queued by direction; before them, tracked GRE that inside hosts
//!   send is counted per call in the set `gre_out` (see [`GreOut`]).
//!
//! [`Conntrack`] reads the NAT of a control connection (is it hairpinned?) over ctnetlink.
//!
//! Every queue verdict has the bypass flag, so traffic flows untranslated (fail-open) while no
//! daemon listens. Queueing uses the nft `queue` expression where the kernel has it, else the
//! xt NFQUEUE target through nft_compat ([`detect_backend`] finds out which).

mod callelems;
mod conntrack;
mod detect;
mod error;
mod expr;
mod fastpath;
mod greout;
mod hairpin;
mod localaddrs;
mod netlink;
mod objects;
mod render;
mod ruleset;

use std::ffi::CString;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nftnl::MsgType;
use nftnl_sys::libc;

pub use callelems::{read_calls_counters, CallCounters, CallReads, ElemBatch};
pub use conntrack::{local_addrs, Conntrack, CtEntry};
pub use error::NftError;
pub use fastpath::FastPath;
pub use greout::{GreOut, OutCounter};
pub use hairpin::{HairpinCall, HairpinMaps};
pub use localaddrs::LocalAddrSet;

use netlink::{Netlink, Txn};
use objects::{get_table, table_owner, TableMsg};

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    /// Name of our table (family `ip`).
    pub table: String,
    /// Queue for tcp/1723 packets sent by an inside host.
    pub queue_from_inside: u16,
    /// Queue for tcp/1723 packets going to an inside host.
    pub queue_to_inside: u16,
    /// Queue for GRE from outside that the kernel does not translate. Never one of the
    /// control queues: a GRE flood that overflows it must not drop control segments.
    pub queue_gre: u16,
    /// Packet mark of translated GRE, set by the fast path (and by the daemon's verdicts), so
    /// a strict forward policy can accept it with `meta mark <mark> accept`.
    pub mark: u32,
    /// The bits of the packet mark pptp-alg owns: only these are set (the others keep what
    /// the packet carried), so routers that use other mark bits keep them. All by default.
    pub mark_mask: u32,
    /// Include the fast path maps, the set of local addresses and the fast path rule.
    pub offload: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            table: "pptp_alg".into(),
            queue_from_inside: 1723,
            queue_to_inside: 1724,
            queue_gre: 1725,
            mark: 0x1723,
            mark_mask: u32::MAX,
            offload: true,
        }
    }
}

/// How packets are handed to the daemon (`nft_queue` or `xt_nfqueue` in
/// the status document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    /// The native nft `queue` expression (CONFIG_NFT_QUEUE); what `nft/pptp-alg.nft` uses.
    NftQueue,
    /// The xt NFQUEUE target, revision 3, run by nft_compat, as `iptables-nft -j NFQUEUE`
    /// adds it. Only `pptp-alg rules install` can load such rules; `nft` can list them.
    XtNfqueue,
}

impl fmt::Display for QueueBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueBackend::NftQueue => "nft queue expression",
            QueueBackend::XtNfqueue => "xt NFQUEUE target (nft_compat)",
        })
    }
}

/// Packets and bytes the kernel fast path translated for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ElementCounter {
    /// The outside peer (source of the GRE).
    pub outside_peer: Ipv4Addr,
    /// The Call ID the peer sends to, i.e. the NAT-side id.
    pub nat_id: u16,
    /// Packets translated.
    pub packets: u64,
    /// Bytes translated (IP length).
    pub bytes: u64,
}

/// Finds out which queue mechanism the running kernel supports.
///
/// Tries to add a throwaway table with a `queue` rule and delete it in the same atomic batch;
/// falls back to trying the xt NFQUEUE target the same way. Nothing is left behind either way.
pub fn detect_backend() -> Result<QueueBackend, NftError> {
    detect::detect_backend().map_err(explain_refusal)
}

/// Installs the ruleset without the owner flag (what `pptp-alg rules install` does): in ONE
/// atomic batch, deletes our table if it exists, then adds the table, the maps, the chains and
/// the rules. Other tables are never touched. The table stays until someone removes it.
///
/// Replacing the table drops all fast path elements; re-add them afterwards.
pub fn install(cfg: &RulesConfig, backend: QueueBackend) -> Result<(), NftError> {
    TableSocket::open()?.install(cfg, backend, false)
}

/// Deletes our table. Returns `Ok(false)` if it did not exist, and
/// [`NftError::OwnedByOther`] if a running daemon owns it.
pub fn remove(table: &str) -> Result<bool, NftError> {
    TableSocket::open()?.remove(table)
}

/// Who may change an installed table, and what becomes of it when the daemon dies.
#[derive(Debug)]
pub enum Ownership {
    /// The table belongs to the [`TableSocket`] that installed it: only that socket can change
    /// it, `nft flush ruleset` from elsewhere leaves it alone, and the kernel deletes it
    /// (rules, maps and fast path elements) when the socket closes, however the daemon ends.
    Owned,
    /// The kernel refused the owner flag (older than 5.12; the refusal is carried), so the
    /// table was installed as anyone's: it outlives a crashed daemon until someone removes
    /// it (the unit's ExecStopPost, or the next start).
    Unowned(NftError),
}

/// The netlink socket through which the daemon changes its table.
///
/// A table installed with [`TableSocket::install_owned`] is owned by this socket: the kernel
/// accepts changes of it (a reinstall, fast path elements, its removal) only from here, and
/// deletes it when the socket closes. So everything that changes the table shares this one
/// socket: clones refer to the same socket behind a mutex, held for one netlink round trip per
/// request or batch, and the socket closes (taking an owned table with it) when the last
/// clone is dropped. Reads may use any socket.
#[derive(Clone)]
pub struct TableSocket {
    nl: Arc<Mutex<Netlink>>,
    portid: u32,
}

impl fmt::Debug for TableSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSocket")
            .field("portid", &self.portid)
            .finish()
    }
}

impl TableSocket {
    /// Opens a new socket.
    pub fn open() -> Result<Self, NftError> {
        let nl = Netlink::open()?;
        let portid = nl.portid();
        Ok(TableSocket {
            nl: Arc::new(Mutex::new(nl)),
            portid,
        })
    }

    /// The netlink port id of the socket: the owner the kernel names for its tables.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Installs the ruleset (as [`install`]) through this socket; with `own` the new table
    /// is owned by it.
    pub fn install(
        &self,
        cfg: &RulesConfig,
        backend: QueueBackend,
        own: bool,
    ) -> Result<(), NftError> {
        let table = table_cname(&cfg.table)?;
        let mut txn = Txn::new();
        ruleset::add_install(&mut txn, cfg, backend, &table, own);
        let mut nl = self.lock();
        let r = nl.commit(txn);
        r.map_err(|e| explain_eperm(&mut nl, &cfg.table, e))
    }

    /// Installs the ruleset owned by this socket, or, where the kernel does not know table
    /// owners, as anyone's (see [`Ownership`]).
    pub fn install_owned(
        &self,
        cfg: &RulesConfig,
        backend: QueueBackend,
    ) -> Result<Ownership, NftError> {
        owned_or_fallback(|own| self.install(cfg, backend, own))
    }

    /// Deletes the table. Returns `Ok(false)` if it did not exist, and
    /// [`NftError::OwnedByOther`] if another socket owns it.
    pub fn remove(&self, table: &str) -> Result<bool, NftError> {
        let name = table_cname(table)?;
        let mut txn = Txn::new();
        txn.add(
            &TableMsg::new(&name, false),
            MsgType::Del,
            format!("delete table ip {table}"),
        );
        let mut nl = self.lock();
        match nl.commit(txn) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(explain_eperm(&mut nl, table, e)),
        }
    }

    /// The handle of `table` (`None` if it does not exist), which changes when the table is
    /// deleted and made anew (a saved ruleset restored after `flush ruleset`). Asked through
    /// this socket: the packet thread asks every second, and a socket of its own each time
    /// would cost a buffer and system calls for nothing.
    pub fn table_handle(&self, table: &str) -> Result<Option<u64>, NftError> {
        handle_on(&mut self.lock(), table)
    }

    /// The port id of the socket owning `table`, if the table exists and is owned by another
    /// socket than this one.
    pub(crate) fn foreign_owner(&self, table: &str) -> Result<Option<u32>, NftError> {
        let owner = owner_of(&mut self.lock(), table)?;
        Ok(owner.filter(|&p| p != self.portid))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Netlink> {
        // A panic while holding the lock leaves the socket as usable as before.
        self.nl.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tries `install(true)` (owned); where the kernel refuses the owner flag (EOPNOTSUPP from
/// kernels that check table flags, EINVAL from older ones), installs with `install(false)`.
fn owned_or_fallback(
    mut install: impl FnMut(bool) -> Result<(), NftError>,
) -> Result<Ownership, NftError> {
    match install(true) {
        Ok(()) => Ok(Ownership::Owned),
        Err(refused) if matches!(refused.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            // If the flag was not the reason, this fails the same way and says why.
            install(false)?;
            Ok(Ownership::Unowned(refused))
        }
        Err(e) => Err(e),
    }
}

/// The owner of `table` (`None` if it has none or does not exist).
fn owner_of(nl: &mut Netlink, table: &str) -> Result<Option<u32>, NftError> {
    let name = table_cname(table)?;
    let mut owner = None;
    match nl.request(&format!("get table ip {table}"), get_table(&name), |msg| {
        owner = table_owner(msg.raw)?;
        Ok(())
    }) {
        Ok(()) => Ok(owner),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Turns EPERM for a change of `table` into [`NftError::OwnedByOther`] when the table is
/// owned by another socket, and explains it in a non-initial user namespace (EPERM also means
/// a missing CAP_NET_ADMIN: then `err` stays).
fn explain_eperm(nl: &mut Netlink, table: &str, err: NftError) -> NftError {
    if err.errno() != Some(libc::EPERM) {
        return err;
    }
    match owner_of(nl, table) {
        Ok(Some(port)) if port != nl.portid() => NftError::OwnedByOther {
            table: table.to_string(),
            owner: detect::netlink_owner(port),
        },
        _ => explain_refusal(err),
    }
}

/// Says why the kernel answered EPERM when the process lacks CAP_NET_ADMIN or runs in a
/// non-initial user namespace; other errors pass unchanged.
fn explain_refusal(err: NftError) -> NftError {
    if err.errno() != Some(libc::EPERM) {
        return err;
    }
    if crate::check::gather::cap_net_admin() == Ok(false) {
        return NftError::NoPrivilege(Box::new(err));
    }
    match crate::check::gather::non_initial_user_ns() {
        Some(uid_map) => NftError::UserNamespace {
            source: Box::new(err),
            uid_map,
        },
        None => err,
    }
}

/// The ruleset in nft syntax, as `nft list table ip <table>` shows it once installed
/// (what `pptp-alg rules print` prints).
///
/// With [`QueueBackend::NftQueue`] the text is valid `nft -f` input. With
/// [`QueueBackend::XtNfqueue`] the queue statements print as nft shows an xt target, which nft
/// cannot parse back.
pub fn render(cfg: &RulesConfig, backend: QueueBackend) -> String {
    render::render(cfg, backend)
}

/// Whether table `ip <table>` exists.
pub fn table_exists(table: &str) -> Result<bool, NftError> {
    detect::table_exists(table)
}

/// Whether the kernel gives tables an owner (nftables table ownership, Linux 5.12): a
/// throwaway owned table is added and deleted in one batch, so nothing is left behind.
pub fn probe_table_owner() -> Result<bool, NftError> {
    detect::probe_table_owner()
}

/// Whether a rule with a payload write can be loaded here: kernels with the netfilter change
/// of May 2026 refuse it (EPERM) in a network namespace owned by a non-initial user namespace.
/// Added and deleted in one batch, in a chain no packet reaches.
pub fn probe_payload_write() -> Result<(), NftError> {
    detect::probe_payload_write()
}

/// The handle of `table` (`None` if it does not exist): it changes when the table is deleted
/// and made anew, as restoring a saved ruleset after `flush ruleset` does.
fn handle_on(nl: &mut Netlink, table: &str) -> Result<Option<u64>, NftError> {
    let name = table_cname(table)?;
    let mut handle = None;
    match nl.request(&format!("get table ip {table}"), get_table(&name), |msg| {
        handle = Some(objects::table_handle(msg.raw)?);
        Ok(())
    }) {
        Ok(()) => Ok(handle),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Who holds `table`: `None` if it does not exist, `Some(None)` if nobody owns it, else the
/// owner as "pptp-alg (pid N)".
pub fn table_holder(table: &str) -> Result<Option<Option<String>>, NftError> {
    if !detect::table_exists(table)? {
        return Ok(None);
    }
    let mut nl = Netlink::open()?;
    Ok(Some(owner_of(&mut nl, table)?.map(detect::netlink_owner)))
}

/// Packets and bytes of GRE to this router's addresses that matched no call's element and were
/// left to the router's own stack by the kernel (the counter of that rule in chain `gre_in`).
/// Zero for a table without the fast path (no such rule: the daemon counts that GRE itself).
pub fn unknown_gre_packets(table: &str) -> Result<(u64, u64), NftError> {
    let t = table_cname(table)?;
    let mut nl = Netlink::open()?;
    let mut sum = (0, 0);
    nl.request(
        &format!("list chain gre_in of table ip {table}"),
        objects::dump_rules(&t, c"gre_in"),
        |msg| objects::add_rule_counters(msg.raw, &mut sum),
    )?;
    Ok(sum)
}

/// Whether the kernel's PPTP conntrack helper may be attached to flows, which would fight with
/// the daemon over the same packets. Returns where, e.g. an nftables `ct helper` object of type
/// "pptp", automatic helper assignment enabled, or tracked connections that carry the helper.
pub fn pptp_helper_in_use() -> Result<Option<String>, NftError> {
    detect::pptp_helper_in_use()
}

/// Validates a table name and turns it into the C string libnftnl wants.
fn table_cname(table: &str) -> Result<CString, NftError> {
    // NFT_NAME_MAXLEN is 256 including the terminating NUL.
    if table.is_empty() || table.len() > 255 {
        return Err(NftError::InvalidName(table.into()));
    }
    CString::new(table).map_err(|_| NftError::InvalidName(table.into()))
}

/// The parsers of kernel replies, which are private, for the fuzz targets
/// (fuzz/fuzz_targets/netlink.rs). Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use nftnl_sys::libc;

    /// Splits `buf` as a receive buffer and reads each message as the
    /// daemon may: errors always, and with `libnftnl` also tables, set
    /// elements (keys and counters) and ct helper objects. libnftnl exits
    /// the process ("nf_tables kernel ABI is broken") on an attribute of
    /// the wrong size: it trusts the kernel, as the daemon does, so callers
    /// pass only well-formed attributes with `libnftnl`. Returns how many
    /// parses succeeded.
    pub fn parse_replies(buf: &[u8], libnftnl: bool) -> usize {
        let mut ok = 0;
        let (mut keys, mut counters, mut outs) = (Vec::new(), Vec::new(), Vec::new());
        for msg in crate::netlink::messages(buf) {
            let Ok(msg) = msg else { break };
            if msg.ty as i32 == libc::NLMSG_ERROR {
                ok += usize::from(super::netlink::parse_error(&msg).is_ok());
                continue;
            }
            if !libnftnl || msg.ty >> 8 != libc::NFNL_SUBSYS_NFTABLES as u16 {
                continue;
            }
            // Each parser gets the answers to the request it is used for.
            let parsed = match i32::from(msg.ty & 0xff) {
                libc::NFT_MSG_NEWTABLE => super::objects::table_owner(msg.raw).is_ok(),
                libc::NFT_MSG_NEWSETELEM => {
                    super::localaddrs::parse_keys(msg.raw, &mut keys).is_ok()
                        && super::fastpath::parse_counters(msg.raw, &mut counters).is_ok()
                        && super::greout::parse_out_counters(msg.raw, &mut outs).is_ok()
                }
                libc::NFT_MSG_NEWOBJ => super::detect::pptp_helper_object(msg.raw).is_ok(),
                _ => false,
            };
            ok += usize::from(parsed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errno: i32) -> NftError {
        NftError::Kernel {
            what: "add table ip t".into(),
            errno,
        }
    }

    #[test]
    fn owner_flag_refused_falls_back_to_an_unowned_table() {
        for errno in [libc::EOPNOTSUPP, libc::EINVAL] {
            let mut tries = Vec::new();
            let r = owned_or_fallback(|own| {
                tries.push(own);
                if own {
                    Err(refused(errno))
                } else {
                    Ok(())
                }
            });
            assert!(
                matches!(r, Ok(Ownership::Unowned(ref e)) if e.errno() == Some(errno)),
                "{r:?}"
            );
            assert_eq!(tries, [true, false]);
        }
    }

    #[test]
    fn owned_install_needs_no_fallback_and_other_errors_stay() {
        let mut tries = Vec::new();
        let r = owned_or_fallback(|own| {
            tries.push(own);
            Ok(())
        });
        assert!(matches!(r, Ok(Ownership::Owned)), "{r:?}");
        assert_eq!(tries, [true]);

        // Not about the flag (the queue expression is missing): no second attempt.
        let mut tries = Vec::new();
        let r = owned_or_fallback(|own| {
            tries.push(own);
            Err(refused(libc::ENOENT))
        });
        assert_eq!(r.err().and_then(|e| e.errno()), Some(libc::ENOENT));
        assert_eq!(tries, [true]);

        // Refused without the flag as well: that error is the one reported.
        let r = owned_or_fallback(|own| Err(refused(if own { libc::EINVAL } else { libc::E2BIG })));
        assert_eq!(r.err().and_then(|e| e.errno()), Some(libc::E2BIG));
    }
}

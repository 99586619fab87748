//! nftables: the only code that talks to nf_tables (through libnftnl and libmnl).
//!
//! The daemon owns one table (`ip pptp_alg` by default) and never touches any other:
//!
//! - chain `gre_in` (prerouting, priority raw): enhanced GRE (version 1, protocol 0x880b, key
//!   bit set, checksum bit clear) addressed to this router. Calls the daemon handed to the
//!   kernel are rewritten in place through the maps `gre_daddr` and `gre_cid` (the fast path,
//!   see [`FastPath`]); everything else is queued to `queue_to_inside`.
//! - chain `ctl` (forward, priority filter + 10): PPTP control connections (server port 1723)
//!   that the kernel NATs, queued by direction.
//!
//! Every queue verdict has the bypass flag, so traffic flows untranslated (fail-open) while no
//! daemon listens. Queueing uses the nft `queue` expression where the kernel has it, else the
//! xt NFQUEUE target through nft_compat ([`detect_backend`] finds out which).

mod detect;
mod error;
mod expr;
mod fastpath;
mod netlink;
mod objects;
mod render;
mod ruleset;

use std::ffi::CString;
use std::fmt;
use std::net::Ipv4Addr;

use nftnl::MsgType;
use nftnl_sys::libc;

pub use error::NftError;
pub use fastpath::FastPath;

use netlink::{Netlink, Txn};
use objects::TableMsg;

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    /// Name of our table (family `ip`).
    pub table: String,
    /// Queue for tcp/1723 packets sent by an inside host.
    pub queue_from_inside: u16,
    /// Queue for tcp/1723 packets going to an inside host, and for GRE from outside.
    pub queue_to_inside: u16,
    /// Packet mark of translated GRE, set by the fast path (and by the daemon's verdicts), so
    /// a strict forward policy can accept it with `meta mark <mark> accept`.
    pub mark: u32,
    /// Include the fast path maps and rule.
    pub offload: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            table: "pptp_alg".into(),
            queue_from_inside: 1723,
            queue_to_inside: 1724,
            mark: 0x1723,
            offload: true,
        }
    }
}

/// How packets are handed to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    detect::detect_backend()
}

/// Installs the ruleset: in ONE atomic batch, deletes our table if it exists, then adds the
/// table, the maps, the chains and the rules. Other tables are never touched.
///
/// Replacing the table drops all fast path elements; re-add them afterwards.
pub fn install(cfg: &RulesConfig, backend: QueueBackend) -> Result<(), NftError> {
    let table = table_cname(&cfg.table)?;
    let mut txn = Txn::new();
    ruleset::add_install(&mut txn, cfg, backend, &table);
    Netlink::open()?.commit(txn)
}

/// Deletes our table. Returns `Ok(false)` if it did not exist.
pub fn remove(table: &str) -> Result<bool, NftError> {
    let name = table_cname(table)?;
    let mut txn = Txn::new();
    txn.add(
        &TableMsg::new(&name, false),
        MsgType::Del,
        format!("delete table ip {table}"),
    );
    match Netlink::open()?.commit(txn) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
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

//! pptp-alg: a userspace PPTP NAT application level gateway.
//!
//! The crate is split into a pure, deterministic core and a thin shell:
//! - [`wire`]: typed views over IPv4, TCP, PPTP control messages and enhanced GRE.
//! - [`alg`]: the sans-IO translation engine (call table, Call-ID allocator,
//!   stream tracking, timeouts). Time is passed in by the caller.
//! - [`netlink`]: netlink sockets, the message splitter, the wait, rtnetlink addresses.
//! - [`nft`]: the only code that talks to nftables (nftnl).
//! - [`nfqueue`]: the only code that talks to NFQUEUE (nfq).
//! - [`daemon`]: configuration, the packet loop, status socket, signals.
//! - [`check`]: `pptp-alg check`, the preflight (pure checks over gathered facts).

pub mod alg;
pub mod check;
pub mod daemon;
pub mod netlink;
pub mod nfqueue;
pub mod nft;
pub mod replication;
pub mod wire;

//! Netlink: the only code that opens the rtnetlink and nf_tables sockets, waits on them,
//! receives from them and splits what they bring into messages, for both users: rtnetlink
//! (the router's addresses, [`route`]) and nf_tables ([`crate::nft`], which builds and reads
//! its messages through libnftnl and sends them through [`NlSocket`]). The NFQUEUE sockets
//! are `crate::nfqueue`'s (the nfq crate's); only their wait is here.
//!
//! - [`NlSocket`]: a bound netlink socket (libmnl's, through the mnl crate, as libnftnl
//!   expects) with an aligned receive buffer; truncation and lost notifications are typed
//!   errors.
//! - [`messages`]: the one splitter of a receive buffer into `nlmsghdr` messages
//!   (netlink-packet-core's header view), every length checked, never a panic.
//! - [`readable`]: the one wait for readable descriptors with a timeout (the packet thread's,
//!   the address watcher's and nf_tables replies').
//! - [`route`]: the address dump, the `RTMGRP_IPV4_IFADDR` notifications and their decoding
//!   (netlink-packet-route).
//!
//! What to do with the messages is the callers' business: nothing here knows nf_tables, the
//! set `local_addrs` or which addresses count (that policy is `crate::daemon::addrs`).

mod poll;
pub mod route;
mod socket;
mod split;

pub use poll::readable;
pub use socket::{set_receive_buffer, set_socket_int, Bus, NlSocket, RecvError};
pub use split::{messages, ErrorMsg, FrameError, Msg, NLMSG_HDRLEN};

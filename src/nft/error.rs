//! The error type of the nftables module.

use std::io;

/// Everything that can go wrong while talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened or bound.
    #[error("cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),

    /// Sending to or receiving from the netlink socket failed.
    #[error("netlink {op} failed: {source}")]
    Io {
        /// What was being done ("send", "receive", "poll").
        op: &'static str,
        /// The operating system error.
        #[source]
        source: io::Error,
    },

    /// The kernel rejected one object of a request or batch.
    ///
    /// `what` names the object in nft syntax, e.g. "add rule to chain ctl of table ip pptp_alg:
    /// `tcp dport 1723 ...`", so that the message alone tells which part of the ruleset the
    /// running kernel does not support.
    #[error("kernel rejected {what}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The object the kernel complained about.
        what: String,
        /// The positive errno value the kernel returned.
        errno: i32,
    },

    /// The kernel did not answer a request in time.
    #[error("no answer from the kernel to {0} within the timeout")]
    Timeout(String),

    /// The kernel sent something this module does not understand.
    #[error("malformed netlink reply: {0}")]
    Protocol(String),

    /// A table name that nf_tables cannot accept.
    #[error("invalid nftables table name {0:?}: must be 1..=255 bytes without NUL")]
    InvalidName(String),

    /// The table belongs to another netlink socket (a running daemon that installed it with
    /// the owner flag): only that socket may change it, and it goes when that socket closes.
    #[error(
        "table ip {table} is owned by a running {owner}; stop the daemon instead (the kernel \
         removes the table when its owner exits)"
    )]
    OwnedByOther {
        /// The table.
        table: String,
        /// Who owns it, e.g. "pptp-alg (pid 1234)".
        owner: String,
    },

    /// The kernel refused a change (EPERM) to a process without CAP_NET_ADMIN.
    #[error("{0}: pptp-alg {needs}", needs = crate::check::NEEDS_ADMIN)]
    NoPrivilege(Box<NftError>),

    /// The kernel refused a change (EPERM) in a user namespace other than the initial one,
    /// where recent kernels refuse payload writes whatever the capabilities.
    #[error(
        "{source}; this process runs in a non-initial user namespace (uid_map {uid_map}), and {}",
        crate::check::USERNS_EXPLAIN
    )]
    UserNamespace {
        /// The kernel's refusal.
        source: Box<NftError>,
        /// The namespace's uid map.
        uid_map: String,
    },

    /// The configured fast path maps are missing.
    #[error("{0}")]
    FastPathUnavailable(String),

    /// Neither way of queueing packets to userspace works on this kernel.
    #[error(
        "this kernel supports neither the nft queue expression ({queue}) \
         nor the xt NFQUEUE target through nft_compat ({xt})"
    )]
    NoQueueBackend {
        /// Why the `queue` expression probe failed.
        queue: Box<NftError>,
        /// Why the xt NFQUEUE probe failed.
        xt: Box<NftError>,
    },

    /// Reading a file under /proc failed.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// The operating system error.
        #[source]
        source: io::Error,
    },
}

impl NftError {
    /// The kernel's errno if this error is a rejection by the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::UserNamespace { source, .. } | NftError::NoPrivilege(source) => {
                source.errno()
            }
            _ => None,
        }
    }
}

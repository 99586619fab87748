//! The daemon shell around the engine: configuration, the packet thread,
//! the status socket, logging, signals and start-up/stop ordering.
//!
//! - [`addrs`]: the router's own addresses in the fast path's set `local_addrs`.
//! - [`config`]: the TOML file and command-line overrides.
//! - [`ha`]: high availability: the replication socket, the role, the peer's calls.
//! - [`run`](mod@run): `pptp-alg run` (start-up steps, signals, reload, clean stop).
//! - [`packet`]: the packet thread (NFQUEUE, engine calls, verdicts, timers).
//! - [`offload`]: the kernel fast path and the daemon's own table, driven by the packet thread.
//! - [`outcount`]: the kernel's per-call count of GRE from inside hosts.
//! - [`shared`]: the state shared between the packet thread and readers.
//! - [`state`]: live calls saved across restarts.
//! - [`journal`]: the write-ahead journal of call changes between snapshots.
//! - [`status`]: the status report, its socket and its table format.
//! - [`metrics`]: Prometheus metrics over HTTP and in a node_exporter textfile.
//! - [`logging`]: stderr/journald logging and rate limits.

pub mod addrs;
pub mod config;
pub mod ha;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod offload;
pub mod outcount;
pub mod packet;
pub mod run;
pub mod shared;
pub mod state;
pub mod status;

pub use config::{
    Apply, Config, ConfigError, ConfigSource, HaNode, HaSettings, LogLevel, Overrides,
};
pub use run::{run, DaemonError};
pub use status::StatusReport;

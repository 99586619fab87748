//! Counters of the engine. Plain integers: the engine is single-threaded
//! and callers take a copy for display.

use serde::Serialize;

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// Call-Disconnect-Notify.
    Disconnect,
    /// An Outgoing- or Incoming-Call-Reply with a result other than success.
    ReplyFailure,
    /// Stop-Control-Connection-Request or -Reply.
    StopControl,
    /// FIN or RST on the control connection.
    ConnClosed,
    /// No successful reply within the setup timeout.
    SetupTimeout,
    /// No traffic within the idle timeout.
    IdleTimeout,
    /// The control connection was idle past its timeout.
    ConnTimeout,
    /// Ended on the other node of a router pair, as replicated
    /// ([`crate::alg::Alg::apply_replicated`]).
    Peer,
}

impl EndCause {
    /// All causes, for listings.
    pub const ALL: [EndCause; 8] = [
        EndCause::Disconnect,
        EndCause::ReplyFailure,
        EndCause::StopControl,
        EndCause::ConnClosed,
        EndCause::SetupTimeout,
        EndCause::IdleTimeout,
        EndCause::ConnTimeout,
        EndCause::Peer,
    ];
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A call request was refused (no NAT id, or a limit reached). The TCP
    /// sender retransmits; the call never starts.
    CallRefused,
    /// A control segment beyond the tracked stream position: its earlier
    /// bytes have not been seen, so it cannot be translated. TCP
    /// retransmits it.
    OutOfOrder,
    /// Data of a control connection whose stream position is unknown (no
    /// handshake seen, and the segment does not start a message): it may
    /// hold Call IDs that cannot be translated. TCP retransmits it.
    Unsynced,
    /// A new control connection while every tracked one has calls
    /// (`max_connections`). TCP retransmits it.
    ConnectionLimit,
}

/// Counters, all monotonic except `calls_active`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Packets handed to the engine.
    pub packets: u64,
    /// Control (tcp/1723) packets.
    pub control_packets: u64,
    /// GRE packets.
    pub gre_packets: u64,
    /// Packets accepted with rewritten bytes.
    pub rewritten: u64,
    /// Packets dropped because a call was refused.
    pub dropped_call_refused: u64,
    /// Packets dropped as out of order.
    pub dropped_out_of_order: u64,
    /// GRE from outside naming no live call.
    pub gre_unknown_call: u64,
    /// GRE from inside that matched no call (passed unchanged).
    pub gre_inside_unmatched: u64,
    /// GRE from an inside client to the public address of a hairpinned control connection,
    /// sent on to the inside server.
    pub gre_hairpin: u64,
    /// Packets not for the gateway (other protocols, ports, GRE versions).
    pub ignored: u64,
    /// Truncated or malformed IP/TCP/GRE headers (passed unchanged).
    pub malformed: u64,
    /// Non-first IP fragments (passed unchanged).
    pub fragments: u64,
    /// Control messages parsed.
    pub messages: u64,
    /// Control messages of undefined types, skipped by their Length.
    pub unknown_messages: u64,
    /// Control connections that lost PPTP framing.
    pub desyncs: u64,
    /// Segments dropped because their connection's stream position is
    /// unknown.
    pub unsynced_segments: u64,
    /// Segments of new control connections dropped because every tracked
    /// connection has calls (`max_connections`).
    pub connection_limit: u64,
    /// Connections without calls forgotten to make room for a new one.
    pub connections_evicted: u64,
    /// FIN or RST segments not at the tracked stream position (spoofed or
    /// stale): they end nothing.
    pub ignored_teardowns: u64,
    /// Rewritten bytes forgotten unacknowledged (more than 4,096 in flight
    /// on one direction): a retransmission of them would leave untranslated.
    pub patches_evicted: u64,
    /// Streams towards an inside host picked up at a message start that the
    /// host's acknowledgement then showed to be forged, and picked up again.
    pub forged_resyncs: u64,
    /// GRE packets delivered to inside hosts for their calls (by the daemon and, read every
    /// 10 s and at each call's end, by the kernel fast path).
    pub call_gre_in: u64,
    /// GRE packets inside hosts sent for their calls (counted by the kernel's `gre_out` set,
    /// read likewise).
    pub call_gre_out: u64,
    /// Calls created.
    pub calls_created: u64,
    /// Calls currently live.
    pub calls_active: u64,
    /// Calls refused for lack of a free NAT id (in the connection's block
    /// or towards the peer at all).
    pub alloc_failures: u64,
    /// Calls refused by `max_calls`.
    pub refused_total_limit: u64,
    /// Calls refused by `max_calls_per_host`.
    pub refused_host_limit: u64,
    /// Ended calls by cause, indexed like [`EndCause::ALL`].
    pub ended: [u64; 8],
    /// Events discarded because the caller did not drain them.
    pub events_lost: u64,
}

impl Stats {
    /// Number of calls ended for `cause`.
    pub fn ended_by(&self, cause: EndCause) -> u64 {
        self.ended[cause as usize]
    }
}

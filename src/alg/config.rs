//! Engine configuration: limits, timeouts and the Call-ID policy.

use std::time::Duration;

/// How a NAT Call ID is chosen for a new call.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum IdPolicy {
    /// Keep the inside id's low byte when that slot of the connection's
    /// block is free, otherwise take the next free one (see
    /// [`crate::alg::ids`]; the block is the inside id's own high byte
    /// while no other call towards the peer uses it).
    #[default]
    #[value(help = "Keep the inside host's id when free")]
    Keep,
    /// Start the search in the block at a random slot.
    #[value(help = "Start the search at a random id")]
    Random,
}

/// Which NAT ids this engine may hand out, so that the two routers of a
/// high-availability pair never give one id towards a peer to two calls,
/// even while both are active (split brain). The split is by the id's
/// low byte (the slot), not its high byte (the block): a connection whose
/// calls were replicated in from the other node keeps mapping its inside
/// high byte to the block those calls hold (see [`crate::alg::ids`]), so
/// its next call must find a slot of this node's in that very block.
/// Calls replicated in ([`crate::alg::Alg::restore_calls`]) keep their ids
/// whatever half they are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdPartition {
    /// Every id (a single router): the behaviour without a pair.
    #[default]
    None,
    /// Ids with an even low byte (node 0 of a pair).
    Even,
    /// Ids with an odd low byte (node 1 of a pair).
    Odd,
}

impl IdPartition {
    /// The slots of a block this engine may not take, as a slot bitmap
    /// (bit `i` of word `i / 64` is slot `i`).
    pub(crate) fn foreign_slots(self) -> u64 {
        match self {
            IdPartition::None => 0,
            IdPartition::Even => 0xaaaa_aaaa_aaaa_aaaa,
            IdPartition::Odd => 0x5555_5555_5555_5555,
        }
    }

    /// Whether this engine may hand out `id`.
    pub fn owns(self, id: u16) -> bool {
        self.foreign_slots() & (1 << (id & 63)) == 0
    }
}

/// Limits and timeouts of the engine. `Default` gives the documented
/// defaults; each is justified at its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlgConfig {
    /// Live calls in total. A call costs about 213 bytes, a control
    /// connection about 400 (tests/alg_memory.rs).
    pub max_calls: usize,
    /// Calls per inside host, live and in quarantine (a host's ended calls
    /// count against it, not against the others). 64 covers a PPTP server
    /// behind the NAT serving many clients only if raised; a client needs
    /// one or two.
    pub max_calls_per_host: usize,
    /// Tracked control connections in total.
    pub max_connections: usize,
    /// NAT id selection.
    pub id_policy: IdPolicy,
    /// The half of the id space this engine hands out (a router pair).
    pub id_partition: IdPartition,
    /// Seed of the random policy (deterministic tests pass a constant).
    pub seed: u64,
    /// A call without a successful reply is dropped after this long.
    /// RFC 2637 peers give up on an unanswered request within a minute.
    pub call_setup_timeout: Duration,
    /// An established call with no GRE and no control message naming it
    /// ends after this long. PPP sends LCP echoes every 10-60 s, so 10 min
    /// of silence means the call is gone.
    pub call_idle_timeout: Duration,
    /// A control connection with no segment for this long is forgotten with
    /// its calls. RFC 2637 sends Echo-Request after 60 s of silence, so
    /// five minutes is five missed echoes.
    pub conn_idle_timeout: Duration,
    /// How long a closed (FIN/RST) connection's state is kept to translate
    /// retransmissions identically.
    pub conn_linger: Duration,
    /// An ended call's NAT id is not reused for this long, so late GRE of
    /// the old call cannot reach a new one.
    pub quarantine: Duration,
}

impl Default for AlgConfig {
    fn default() -> Self {
        AlgConfig {
            max_calls: 16384,
            max_calls_per_host: 64,
            max_connections: 8192,
            id_policy: IdPolicy::Keep,
            id_partition: IdPartition::None,
            seed: 0x5eed_1723,
            call_setup_timeout: Duration::from_secs(60),
            call_idle_timeout: Duration::from_secs(600),
            conn_idle_timeout: Duration::from_secs(300),
            conn_linger: Duration::from_secs(10),
            quarantine: Duration::from_secs(60),
        }
    }
}

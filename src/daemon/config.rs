//! The daemon's configuration: a TOML file, overridden by command-line
//! flags, validated, then mapped into [`AlgConfig`] and [`RulesConfig`].
//! Every key is written once, in `config_keys!`, which derives the file's
//! fields, the flags and when a change of the key applies ([`Apply`]).
//! Owns parsing and validation; must not act on a configuration (no I/O
//! besides reading the file).
//!
//! Every key is optional; a missing key takes the default documented in
//! `config/pptp-alg.toml`. Errors always name the offending key, because
//! an operator editing a config file under pressure needs the key, not a
//! serde type name.

use crate::alg::{AlgConfig, IdPartition, IdPolicy};
use crate::nft::RulesConfig;
use crate::replication::wire::{MAX_KEY_LEN, MIN_KEY_LEN};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the status socket lives by default (systemd's `RuntimeDirectory`).
pub const DEFAULT_STATUS_SOCKET: &str = "/run/pptp-alg/status.sock";
/// Default file keeping live calls across restarts (in the RuntimeDirectory,
/// which the unit preserves across restarts).
pub const DEFAULT_STATE_FILE: &str = "/run/pptp-alg/state.json";
/// The largest config file read. The example with every key and its
/// comments is under 4 KiB; a limit keeps a wrong path (`/dev/zero`, a log
/// file) from being read until memory runs out.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Upper bound of `max_calls`, `max_calls_per_host` and `max_connections`:
/// 16 outside peers' whole 16-bit Call-ID space, and about 225 MB of calls
/// (340 MB of connections) in the engine. It also bounds the state file a
/// start will read (see [`crate::daemon::state::size_limit`]).
pub const MAX_TABLE_SIZE: usize = 1 << 20;

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings (refused calls, desyncs).
    Warn,
    /// Also one line per call start and end.
    #[default]
    Info,
    /// Also start-up and fast-path details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The equivalent `log` filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// When a changed key takes effect in a running daemon (see
/// [`Config::changed_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Apply {
    /// At a reload (SIGHUP), without touching live calls.
    Reload,
    /// Only at a restart: it shapes the queues, the table or the files the
    /// daemon holds open.
    Restart,
}

/// Writes every configuration key once: its doc (the file's field doc and
/// the flag's help), its type, when a change applies, and extra clap
/// attributes. Generates [`Config`] (the file format, with serde),
/// [`Overrides`] (the flags, with clap; each key as `--key-name`),
/// [`Config::apply`] and [`Config::changed_keys`].
macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])*
        [$apply:ident $(, $($arg:tt)*)?]
        $name:ident : $ty:ty,
    )*) => {
        /// The configuration file's contents. Durations are whole seconds.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            $($(#[doc = $doc])* pub $name: $ty,)*
        }

        /// Command-line flags that override configuration keys, one per key
        /// (the flag is the key with `-` for `_`).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct Overrides {
            $(
                $(#[doc = $doc])*
                #[arg(long $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            )*
            /// Translate all GRE in userspace (the same as --offload=false).
            #[arg(long, overrides_with = "offload")]
            pub no_offload: bool,
        }

        impl Config {
            /// Every key and when a change of it applies.
            pub const KEYS: &'static [(&'static str, Apply)] =
                &[$((stringify!($name), Apply::$apply),)*];

            /// Applies command-line overrides.
            pub fn apply(&mut self, o: &Overrides) {
                $(if let Some(v) = &o.$name {
                    self.$name = v.clone();
                })*
                if o.no_offload {
                    self.offload = false;
                }
            }

            /// The keys whose values differ from `other`'s, in file order.
            pub fn changed_keys(&self, other: &Config) -> Vec<(&'static str, Apply)> {
                let mut changed = Vec::new();
                $(if self.$name != other.$name {
                    changed.push((stringify!($name), Apply::$apply));
                })*
                changed
            }
        }
    };
}

config_keys! {
    /// NFQUEUE number for tcp/1723 sent by inside hosts [default: 1723].
    [Restart, value_name = "N"]
    queue_from_inside: u16,
    /// NFQUEUE number for tcp/1723 to inside hosts [default: 1724].
    [Restart, value_name = "N"]
    queue_to_inside: u16,
    /// NFQUEUE number for GRE from outside the kernel does not translate [default: 1725].
    [Restart, value_name = "N"]
    queue_gre: u16,
    /// Packets the kernel holds per queue before it drops (fail-closed) [default: 4096].
    [Restart, value_name = "N"]
    queue_max_len: u32,
    /// Mark for translated GRE to inside hosts, decimal or 0x-hex [default: 0x1723].
    [Restart, value_name = "MARK", value_parser = parse_u32_auto]
    mark: u32,
    /// Bits of the packet mark pptp-alg owns, decimal or 0x-hex [default: 0xffffffff].
    [Restart, value_name = "MASK", value_parser = parse_u32_auto]
    mark_mask: u32,
    /// Translate known calls' GRE in the kernel [default: true].
    [Restart, value_name = "BOOL", num_args = 0..=1, require_equals = true,
     default_missing_value = "true", overrides_with = "no_offload"]
    offload: bool,
    /// nftables table name (family ip) [default: pptp_alg].
    [Restart, value_name = "NAME"]
    table: String,
    /// Install the nftables table at start and remove it at stop [default: false].
    [Restart, value_name = "BOOL", num_args = 0..=1, require_equals = true,
     default_missing_value = "true"]
    install_rules: bool,
    /// Install the table with the nftables owner flag (see table_owner in pptp-alg.toml(5))
    /// [default: false].
    [Restart, value_name = "BOOL", num_args = 0..=1, require_equals = true,
     default_missing_value = "true"]
    table_owner: bool,
    /// Status socket path [default: /run/pptp-alg/status.sock].
    [Restart, value_name = "PATH"]
    status_socket: PathBuf,
    /// Group whose members may read the status socket, "" for root only [default: ""].
    [Restart, value_name = "GROUP"]
    status_group: String,
    /// File keeping live calls across restarts, "" for none [default: /run/pptp-alg/state.json].
    [Restart, value_name = "PATH", value_parser = parse_path_or_empty]
    state_file: PathBuf,
    /// NAT Call-ID policy [default: keep].
    [Reload, value_enum, value_name = "POLICY"]
    id_policy: IdPolicy,
    /// Live calls in total [default: 16384].
    [Reload, value_name = "N"]
    max_calls: usize,
    /// Calls per inside host, live and in quarantine [default: 64].
    [Reload, value_name = "N"]
    max_calls_per_host: usize,
    /// Tracked control connections [default: 8192].
    [Reload, value_name = "N"]
    max_connections: usize,
    /// Seconds a call may wait for its reply [default: 60].
    [Reload, value_name = "SECS"]
    call_setup_timeout: u64,
    /// Seconds of silence that end an established call [default: 600].
    [Reload, value_name = "SECS"]
    call_idle_timeout: u64,
    /// Seconds of silence that end a control connection [default: 300].
    [Reload, value_name = "SECS"]
    conn_idle_timeout: u64,
    /// Seconds a closed control connection is remembered [default: 10].
    [Reload, value_name = "SECS"]
    conn_linger: u64,
    /// Seconds an ended call's NAT id stays unused [default: 60].
    [Reload, value_name = "SECS"]
    quarantine: u64,
    /// Log verbosity [default: info].
    [Reload, value_enum, value_name = "LEVEL"]
    log_level: LogLevel,
    /// Serve Prometheus metrics on ADDR:PORT, "" for none [default: ""].
    [Restart, value_name = "ADDR:PORT"]
    metrics_listen: String,
    /// Write Prometheus metrics to this node_exporter textfile, "" for none [default: ""].
    [Restart, value_name = "PATH", value_parser = parse_path_or_empty]
    metrics_textfile: PathBuf,
    /// This router's node in a high-availability pair, 0 or 1, or none [default: none].
    [Restart, value_name = "0|1|none", value_parser = parse_ha_node]
    ha_node: HaNode,
    /// ADDR or ADDR:PORT the replication socket binds on the sync link (port 1729) [default: ""].
    [Restart, value_name = "ADDR[:PORT]"]
    ha_listen: String,
    /// ADDR or ADDR:PORT of the other node's replication socket (port 1729) [default: ""].
    [Restart, value_name = "ADDR[:PORT]"]
    ha_peer: String,
    /// File holding the pair's pre-shared key (mode 0600 or stricter) [default: ""].
    [Restart, value_name = "PATH", value_parser = parse_path_or_empty]
    ha_key_file: PathBuf,
    /// Virtual public address: this node is active while it holds it [default: "": always].
    [Restart, value_name = "ADDR"]
    ha_address: String,
}

impl Default for Config {
    fn default() -> Self {
        // Taken from the engine's and the rules' own defaults so the three
        // can never disagree.
        let alg = AlgConfig::default();
        let rules = RulesConfig::default();
        Config {
            queue_from_inside: rules.queue_from_inside,
            queue_to_inside: rules.queue_to_inside,
            queue_gre: rules.queue_gre,
            queue_max_len: 4096,
            mark: rules.mark,
            mark_mask: rules.mark_mask,
            offload: rules.offload,
            table: rules.table,
            install_rules: false,
            table_owner: false,
            status_socket: PathBuf::from(DEFAULT_STATUS_SOCKET),
            status_group: String::new(),
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            id_policy: alg.id_policy,
            max_calls: alg.max_calls,
            max_calls_per_host: alg.max_calls_per_host,
            max_connections: alg.max_connections,
            call_setup_timeout: alg.call_setup_timeout.as_secs(),
            call_idle_timeout: alg.call_idle_timeout.as_secs(),
            conn_idle_timeout: alg.conn_idle_timeout.as_secs(),
            conn_linger: alg.conn_linger.as_secs(),
            quarantine: alg.quarantine.as_secs(),
            log_level: LogLevel::Info,
            metrics_listen: String::new(),
            metrics_textfile: PathBuf::new(),
            ha_node: HaNode::None,
            ha_listen: String::new(),
            ha_peer: String::new(),
            ha_key_file: PathBuf::new(),
            ha_address: String::new(),
        }
    }
}

/// Where a configuration comes from: the file (or the built-in defaults)
/// and the flags over it. Kept by the daemon to read it again at a reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file; `None`: the built-in defaults.
    pub path: Option<PathBuf>,
    /// The command-line flags, which override the file at every reload.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads, overrides and validates (see [`Config::resolve`]).
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        Config::resolve(self.path.as_deref(), &self.overrides)
    }

    /// How log lines and errors name the source.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("config file {}", p.display()),
            None => "the built-in defaults (no config file)".into(),
        }
    }

    /// The keys the file sets that a flag sets otherwise: editing them in
    /// the file changes nothing. Empty without a file or when it cannot be
    /// read (resolving says why).
    pub fn overridden_keys(&self) -> Vec<&'static str> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let Ok(text) = read_text(path) else {
            return Vec::new();
        };
        let (Ok(set), Ok(file)) = (
            toml::from_str::<toml::Table>(&text),
            Config::from_toml(&text),
        ) else {
            return Vec::new();
        };
        let mut flagged = file.clone();
        flagged.apply(&self.overrides);
        file.changed_keys(&flagged)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| set.contains_key(*k))
            .collect()
    }

    /// `e` naming the file as well as the key.
    pub fn error_text(&self, e: &ConfigError) -> String {
        match e {
            // These name the file already.
            ConfigError::Io { .. } | ConfigError::TooLarge { .. } => e.to_string(),
            _ => format!("{}: {e}", self.describe()),
        }
    }
}

/// A configuration problem, naming the key when there is one.
#[derive(Debug)]
pub enum ConfigError {
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    Parse {
        /// The key whose value is wrong, when it can be told.
        key: Option<String>,
        /// toml's message (with line, column and a snippet).
        detail: String,
    },
    /// A value parsed but is not acceptable.
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::TooLarge { path } => write!(
                f,
                "config file {} is larger than {MAX_CONFIG_BYTES} bytes: not a pptp-alg \
                 configuration (is the path right?)",
                path.display()
            ),
            ConfigError::Parse {
                key: Some(key),
                detail,
            } => write!(f, "config key `{key}`: {}", detail.trim_end()),
            ConfigError::Parse { key: None, detail } => {
                write!(f, "config file: {}", detail.trim_end())
            }
            ConfigError::Invalid { key, reason } => write!(f, "config key `{key}`: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } | ConfigError::TooLarge { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl Config {
    /// Parses a TOML document (no validation; see [`Config::validate`]).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
            key: offending_key(text).or_else(|| key_at(text, e.span())),
            detail: e.to_string(),
        })
    }

    /// Reads (at most [`MAX_CONFIG_BYTES`]) and parses a file (no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml(&read_text(path)?)
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.queue_from_inside == self.queue_to_inside {
            return bad(
                "queue_to_inside",
                format!(
                    "must differ from `queue_from_inside` (both are {}): the queue number tells the direction",
                    self.queue_to_inside
                ),
            );
        }
        // GRE on a queue of its own: a flood of it must never crowd out control segments.
        for (key, other) in [
            ("queue_from_inside", self.queue_from_inside),
            ("queue_to_inside", self.queue_to_inside),
        ] {
            if self.queue_gre == other {
                return bad(
                    "queue_gre",
                    format!(
                        "must differ from `{key}` (both are {other}): GRE has a queue of its own so that no GRE flood can delay control segments"
                    ),
                );
            }
        }
        if self.queue_max_len == 0 {
            return bad("queue_max_len", "must be at least 1".into());
        }
        if self.mark == 0 {
            return bad(
                "mark",
                "must not be 0: unmarked packets carry mark 0, so a firewall rule accepting it would accept everything".into(),
            );
        }
        if self.mark & !self.mark_mask != 0 {
            return bad(
                "mark_mask",
                format!(
                    "{:#x} does not cover every bit of `mark` {:#x}: pptp-alg sets only the bits \
                     of the mask",
                    self.mark_mask, self.mark
                ),
            );
        }
        if !valid_table_name(&self.table) {
            return bad(
                "table",
                format!(
                    "{:?} is not an nftables identifier (a letter, then letters, digits, `_`; at most 255 bytes)",
                    self.table
                ),
            );
        }
        if self.status_socket.as_os_str().is_empty() {
            return bad("status_socket", "must not be empty".into());
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.status_socket.as_os_str().len() > 107 {
            return bad(
                "status_socket",
                "is longer than a unix socket path may be (107 bytes)".into(),
            );
        }
        if !self.status_group.is_empty() {
            if let Err(reason) = group_id(&self.status_group) {
                return bad("status_group", reason);
            }
        }
        for (key, v) in [
            ("max_calls", self.max_calls),
            ("max_calls_per_host", self.max_calls_per_host),
            ("max_connections", self.max_connections),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
            if v > MAX_TABLE_SIZE {
                return bad(key, format!("must be at most {MAX_TABLE_SIZE}"));
            }
        }
        for (key, v) in [
            ("call_setup_timeout", self.call_setup_timeout),
            ("call_idle_timeout", self.call_idle_timeout),
            ("conn_idle_timeout", self.conn_idle_timeout),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1 second".into());
            }
        }
        // Far beyond any sensible value, and keeps `Instant` arithmetic
        // clear of overflow.
        const MAX_SECS: u64 = 10 * 365 * 24 * 3600;
        for (key, v) in [
            ("call_setup_timeout", self.call_setup_timeout),
            ("call_idle_timeout", self.call_idle_timeout),
            ("conn_idle_timeout", self.conn_idle_timeout),
            ("conn_linger", self.conn_linger),
            ("quarantine", self.quarantine),
        ] {
            if v > MAX_SECS {
                return bad(key, format!("must be at most {MAX_SECS} seconds"));
            }
        }
        if !self.metrics_listen.is_empty() && self.metrics_addr().is_none() {
            return bad(
                "metrics_listen",
                format!(
                    "{:?} is not an address and port such as \"127.0.0.1:9723\" or \"[::1]:9723\"",
                    self.metrics_listen
                ),
            );
        }
        if !self.metrics_textfile.as_os_str().is_empty()
            && self.metrics_textfile.file_name().is_none()
        {
            return bad(
                "metrics_textfile",
                format!("{} is not a file name", self.metrics_textfile.display()),
            );
        }
        self.ha_settings()?;
        Ok(())
    }

    /// The high-availability settings, checked: `None` without `ha_node`.
    /// Reads the key file (see [`read_key_file`]).
    pub fn ha_settings(&self) -> Result<Option<HaSettings>, ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let set = [
            ("ha_listen", !self.ha_listen.is_empty()),
            ("ha_peer", !self.ha_peer.is_empty()),
            ("ha_key_file", !self.ha_key_file.as_os_str().is_empty()),
            ("ha_address", !self.ha_address.is_empty()),
        ];
        let HaNode::Node(node) = self.ha_node else {
            if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
                return bad(
                    "ha_node",
                    format!("is needed with `{key}`: 0 on one router of the pair, 1 on the other"),
                );
            }
            return Ok(None);
        };
        if let Some((key, _)) = set[..3].iter().find(|(_, s)| !*s) {
            return bad(
                key,
                "is needed with `ha_node` (`ha_node`, `ha_listen`, `ha_peer` and \
                 `ha_key_file` go together)"
                    .into(),
            );
        }
        let addr = |key, text: &str| {
            parse_ha_addr(text).ok_or_else(|| ConfigError::Invalid {
                key,
                reason: format!(
                    "{text:?} is not an IPv4 address with an optional port, such as \
                     \"192.0.2.1\" or \"192.0.2.1:{HA_PORT}\""
                ),
            })
        };
        let listen = addr("ha_listen", &self.ha_listen)?;
        let peer = addr("ha_peer", &self.ha_peer)?;
        if peer.ip().is_unspecified() || peer.port() == 0 {
            return bad(
                "ha_peer",
                format!("{peer} is not an address a datagram can be sent to"),
            );
        }
        if listen == peer {
            return bad(
                "ha_peer",
                format!("is `ha_listen` ({listen}): it names the other node"),
            );
        }
        let address = match self.ha_address.as_str() {
            "" => None,
            a => match a.parse::<Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => return bad("ha_address", format!("{a:?} is not an IPv4 address")),
            },
        };
        let key = match read_key_file(&self.ha_key_file) {
            Ok(k) => k,
            Err(reason) => return bad("ha_key_file", reason),
        };
        Ok(Some(HaSettings {
            node,
            listen,
            peer,
            key,
            address,
        }))
    }

    /// The metrics listener's address, if one is configured (and valid).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen.parse().ok()
    }

    /// The value of `key` as the file writes it (for log lines naming a
    /// change); `None` for an unknown key.
    pub fn value_text(&self, key: &str) -> Option<String> {
        let v = toml::Value::try_from(self).ok()?;
        v.get(key).map(ToString::to_string)
    }

    /// Loads `path` (or the defaults), applies `overrides` and validates.
    pub fn resolve(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        cfg.apply(overrides);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The engine's configuration. `seed` feeds the random id policy.
    pub fn alg_config(&self, seed: u64) -> AlgConfig {
        AlgConfig {
            max_calls: self.max_calls,
            max_calls_per_host: self.max_calls_per_host,
            max_connections: self.max_connections,
            id_policy: self.id_policy,
            // The pair's nodes take disjoint halves of the NAT ids, so
            // that both active at once (split brain) never give one id twice.
            id_partition: match self.ha_node {
                HaNode::None => IdPartition::None,
                HaNode::Node(0) => IdPartition::Even,
                HaNode::Node(_) => IdPartition::Odd,
            },
            seed,
            call_setup_timeout: Duration::from_secs(self.call_setup_timeout),
            call_idle_timeout: Duration::from_secs(self.call_idle_timeout),
            conn_idle_timeout: Duration::from_secs(self.conn_idle_timeout),
            conn_linger: Duration::from_secs(self.conn_linger),
            quarantine: Duration::from_secs(self.quarantine),
        }
    }

    /// What `pptp-alg check` compares the system with.
    pub fn check_config(&self) -> crate::check::CheckConfig {
        crate::check::CheckConfig {
            table: self.table.clone(),
            mark: self.mark,
            mark_mask: self.mark_mask,
        }
    }

    /// The nftables rules' configuration.
    pub fn rules_config(&self) -> RulesConfig {
        RulesConfig {
            table: self.table.clone(),
            queue_from_inside: self.queue_from_inside,
            queue_to_inside: self.queue_to_inside,
            queue_gre: self.queue_gre,
            mark: self.mark,
            mark_mask: self.mark_mask,
            offload: self.offload,
        }
    }
}

/// Reads a config file: at most [`MAX_CONFIG_BYTES`], UTF-8.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ))
    })
}

/// nftables accepts `[a-zA-Z][a-zA-Z0-9_]*`-like names; keeping to that
/// subset keeps the name safe in `nft` commands an operator copies from logs.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() < 256
}

/// Finds the top-level key whose value makes deserialization fail, by
/// deserializing each key alone. toml's own message points at the line but
/// says only the expected Rust type; the key is what the operator needs.
fn offending_key(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.into_iter().find_map(|(key, value)| {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value);
        Config::deserialize(toml::Value::Table(one))
            .is_err()
            .then_some(key)
    })
}

/// The key on the line where toml found an error it reports for the whole
/// document (a duplicated key or table, an integer too large for any type):
/// the text before `=`, or the name of a `[table]` header.
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> Option<String> {
    let start = span?.start;
    let line_start = text.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let name = match line.strip_prefix('[') {
        Some(header) => header.trim_start_matches('[').split(']').next()?,
        // A line without `=` is inside a multi-line value: no key to name.
        None => line.split_once('=')?.0,
    };
    let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!name.is_empty() && name.chars().all(bare)).then(|| name.to_string())
}

/// Parses an integer in decimal or `0x` hexadecimal (marks are usually
/// written in hex).
pub fn parse_u32_auto(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// The id of group `name` (or a number), looked up through NSS: what
/// `status_group` names.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("{name:?} contains NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `grp` and `buf` outlive the call; getgrnam_r writes at most
    // `buf.len()` bytes into `buf` and sets `result` to null or to `grp`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot look up group {name:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if result.is_null() {
        return Err(format!("no group {name:?} on this system"));
    }
    Ok(grp.gr_gid)
}

/// The replication port when `ha_listen` or `ha_peer` names none.
pub const HA_PORT: u16 = 1729;

/// `ha_node`: this router's node in a pair (its half of the NAT ids), or
/// none. The file writes `0`, `1` or `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaNode {
    /// A single router.
    #[default]
    None,
    /// Node 0 or 1 of a pair.
    Node(u8),
}

impl Serialize for HaNode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HaNode::None => s.serialize_str("none"),
            HaNode::Node(n) => s.serialize_u8(*n),
        }
    }
}

impl<'de> Deserialize<'de> for HaNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HaNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("0, 1 or \"none\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HaNode, E> {
                match v {
                    0 | 1 => Ok(HaNode::Node(v as u8)),
                    _ => Err(E::custom(format!("{v} is not a node: 0, 1 or \"none\""))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HaNode, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HaNode, E> {
                parse_ha_node(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `--ha-node`: 0, 1 or none.
pub fn parse_ha_node(s: &str) -> Result<HaNode, String> {
    match s.trim() {
        "0" => Ok(HaNode::Node(0)),
        "1" => Ok(HaNode::Node(1)),
        "none" | "" => Ok(HaNode::None),
        other => Err(format!("{other:?} is not a node: 0, 1 or \"none\"")),
    }
}

/// `ADDR` or `ADDR:PORT` (IPv4; the port defaults to [`HA_PORT`]).
pub fn parse_ha_addr(s: &str) -> Option<SocketAddrV4> {
    let s = s.trim();
    s.parse::<SocketAddrV4>().ok().or_else(|| {
        s.parse::<Ipv4Addr>()
            .ok()
            .map(|a| SocketAddrV4::new(a, HA_PORT))
    })
}

/// The high-availability settings of a pair's node, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// 0 or 1.
    pub node: u8,
    /// Where the replication socket binds.
    pub listen: SocketAddrV4,
    /// The other node's replication socket.
    pub peer: SocketAddrV4,
    /// The pre-shared key's bytes.
    pub key: Vec<u8>,
    /// The virtual address whose holder is active; `None`: always active.
    pub address: Option<Ipv4Addr>,
}

impl fmt::Debug for HaSettings {
    // Never the key: a Debug print ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaSettings")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("peer", &self.peer)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("address", &self.address)
            .finish()
    }
}

/// Reads the pre-shared key: the file's bytes as they are (so `openssl rand
/// -hex 32 > FILE` gives a 64-byte key), one trailing newline stripped, at
/// least [`MIN_KEY_LEN`] and at most [`MAX_KEY_LEN`] bytes. A file that
/// its group or others may read is refused: the key authenticates the
/// call table a node takes from the network.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.display();
    // Non-blocking: a FIFO at the path must not hang the start (or a
    // check-config) until someone writes to it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(format!(
            "{name} is readable by its group or others (mode {mode:04o}): the key must be \
             secret; chmod 600 {name}"
        ));
    }
    let mut key = Vec::new();
    f.take(MAX_KEY_LEN as u64 + 2)
        .read_to_end(&mut key)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if key.last() == Some(&b'\n') {
        key.pop();
        if key.last() == Some(&b'\r') {
            key.pop();
        }
    }
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        return Err(format!(
            "{name} holds a key of {} bytes; it needs {MIN_KEY_LEN} to {MAX_KEY_LEN} (e.g. \
             `openssl rand -hex 32 > {name}`)",
            key.len()
        ));
    }
    Ok(key)
}

/// A path where the empty string means "none" (clap's path parser refuses
/// empty values).
fn parse_path_or_empty(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

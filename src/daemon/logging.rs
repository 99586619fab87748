//! Logging to stderr, in journald's format when running under systemd, and
//! the level a reload changes ([`set_level`]). Owns the log format and rate
//! limits; what to log is the caller's.
//!
//! journald stamps every line itself and reads a `<N>` syslog priority
//! prefix, so under systemd each line is `<N>message`; on a terminal it is
//! `timestamp LEVEL message`.

use super::config::LogLevel;
use std::io::Write;
use std::time::{Duration, Instant};

/// Installs the logger. `RUST_LOG`, if set, overrides `level` (for
/// debugging a single module without editing the config).
pub fn init(level: LogLevel) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut b = env_logger::Builder::new();
    // Libraries (netlink message traces at debug) only when something is
    // wrong. Our own lines pass the logger at every level: the level is
    // the global maximum (see `set_level`), so a reload can change it.
    b.filter_level(log::LevelFilter::Warn);
    b.filter_module("pptp_alg", log::LevelFilter::Trace);
    let rust_log = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &rust_log {
        b.parse_filters(spec);
    }
    if journald {
        b.format(|buf, rec| {
            let prio = match rec.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}", rec.args())
        });
    } else {
        b.format(|buf, rec| {
            writeln!(
                buf,
                "{} {:5} {}",
                buf.timestamp_millis(),
                rec.level(),
                rec.args()
            )
        });
    }
    // A second init (tests) is harmless.
    let _ = b.try_init();
    if rust_log.is_none() {
        set_level(level);
    }
}

/// Sets the log level of a running daemon (a reload), unless `RUST_LOG`
/// chose the filters; returns whether it did.
pub fn set_level(level: LogLevel) -> bool {
    if std::env::var_os("RUST_LOG").is_some() {
        return false;
    }
    log::set_max_level(level.filter());
    true
}

/// Limits a class of log lines to `burst` per `window`, so a flood (a peer
/// retrying refused calls, a desync storm) cannot fill the journal; the
/// number suppressed is reported when the window reopens.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// At most `burst` lines per `window`.
    pub const fn new(window: Duration, burst: u32) -> Self {
        RateLimit {
            window,
            burst,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now. When a new window opens after
    /// suppression, returns the number suppressed as the second value so the
    /// caller can say so.
    pub fn allow(&mut self, now: Instant) -> (bool, u64) {
        let expired = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        let mut reported = 0;
        if expired {
            self.start = Some(now);
            self.used = 0;
            reported = std::mem::take(&mut self.suppressed);
        }
        if self.used < self.burst {
            self.used += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload changes the level of a running daemon (the global
    /// maximum the macros check), unless RUST_LOG chose the filters.
    #[test]
    fn set_level_changes_the_maximum() {
        if std::env::var_os("RUST_LOG").is_some() {
            assert!(!set_level(LogLevel::Warn));
            return;
        }
        let before = log::max_level();
        assert!(set_level(LogLevel::Warn));
        assert_eq!(log::max_level(), log::LevelFilter::Warn);
        assert!(set_level(LogLevel::Debug));
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        log::set_max_level(before);
    }

    #[test]
    fn rate_limit_counts_suppressed_lines() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(Duration::from_secs(10), 2);
        assert_eq!(rl.allow(t0), (true, 0));
        assert_eq!(rl.allow(t0), (true, 0));
        assert_eq!(rl.allow(t0), (false, 0));
        assert_eq!(rl.allow(t0 + Duration::from_secs(1)), (false, 0));
        assert_eq!(rl.allow(t0 + Duration::from_secs(10)), (true, 2));
    }
}

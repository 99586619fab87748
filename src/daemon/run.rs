//! `pptp-alg run`: start-up, signal handling and clean stop.
//!
//! Start-up order matters: the queues are bound and fully configured
//! before any rule can queue to them (a packet queued to a half-configured
//! queue is dropped), and the fast path is flushed before the first call
//! is served (a stale element would send a new call's GRE to an old host).
//! Stop order matters too: the rules go first so nothing new is queued,
//! then every packet still queued gets its verdict.
//!
//! With `--install-rules` the table is created with the nftables owner
//! flag on one netlink socket (a [`nft::TableSocket`]) that lives as long
//! as the daemon: the kernel deletes the table, and with it every fast path
//! element, when that socket closes, so a daemon that dies for any reason
//! (SIGKILL, abort) leaves plain masquerade behind, not stale elements
//! rewriting GRE to hosts whose calls are over. The kernel accepts changes
//! of an owned table only from its owner, so the same socket is shared by
//! everything that changes it: the install here, the fast path and a
//! reinstall in the packet thread, the removal at stop ([`RulesGuard`]).

use super::addrs::AddrWatcher;
use super::config::Config;
use super::packet::{LoopConfig, PacketLoop};
use super::shared::{lock, Shared, SharedRef};
use super::status::{log_report, StatusServer};
use crate::alg::Alg;
use crate::alg::SavedCall;
use crate::nfqueue::{NfQueue, QueueError};
use crate::nft::{self, LocalAddrSet, NftError, Ownership, RulesConfig, TableSocket};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The kernel's PPTP helper would rewrite the same packets.
    #[error(
        "the kernel PPTP conntrack helper is in use ({0}); it would translate the same calls \
         and fight with pptp-alg. Remove its `ct helper` assignment (and set \
         net.netfilter.nf_conntrack_helper=0), then start again"
    )]
    HelperInUse(String),
    /// The queues could not be set up.
    #[error("{0}")]
    Queue(#[from] QueueError),
    /// The rules could not be managed.
    #[error("{context}: {source}")]
    Rules {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: NftError,
    },
    /// Setting up signals or threads failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The packet thread stopped with an error.
    #[error("packet thread: {0}")]
    PacketThread(String),
    /// The state file could not be written; found at start rather than
    /// at the first save, when the calls it should keep are already lost.
    #[error(
        "state_file {path}: {reason}; fix it or set state_file = \"\" (--state-file '') \
         to keep no calls across restarts"
    )]
    StateFile {
        /// The configured file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl DaemonError {
    /// Whether a restart cannot help (a configuration problem).
    pub fn is_config(&self) -> bool {
        matches!(self, DaemonError::StateFile { .. })
    }
}

enum Msg {
    Signal(i32),
    /// The packet thread is serving; the fast path is on or off.
    Started(bool),
    /// The packet thread ended (with its error, if any).
    Exited(Result<(), String>),
}

/// Sends `Exited` even when the packet thread unwinds from a panic, so the
/// main thread never waits for a thread that is gone.
struct ExitGuard {
    tx: mpsc::Sender<Msg>,
    result: Option<Result<(), String>>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let r = self
            .result
            .take()
            .unwrap_or_else(|| Err("panicked (see above)".into()));
        let _ = self.tx.send(Msg::Exited(r));
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), DaemonError> {
    // Signals first, so a stop request during start-up is not lost: it is
    // acted on once the main loop runs, with everything set up to undo.
    let (tx, rx) = mpsc::channel::<Msg>();
    // SIGHUP's default action would end the daemon without a clean stop
    // (no state saved, a stale status socket), and systemd would not
    // restart it; until reloading exists it is logged and ignored.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP]).map_err(|source| DaemonError::Io {
            context: "installing signal handlers",
            source,
        })?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Msg::Signal(sig)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| DaemonError::Io {
                context: "starting the signal thread",
                source,
            })?;
    }

    // Before anything is bound: a state file that cannot be written would
    // otherwise show only at the first save, and reading the saved calls
    // here keeps its parsing out of the time packets wait in the queues.
    let saved = load_state(cfg)?;

    match nft::pptp_helper_in_use() {
        Ok(Some(place)) => return Err(DaemonError::HelperInUse(place)),
        Ok(None) => {}
        Err(e) => log::warn!("cannot check for the kernel PPTP helper: {e}"),
    }

    let rules = cfg.rules_config();
    // The socket that installs, changes and removes our table (see the
    // module documentation); closed when its last user is gone.
    let table_socket = if cfg.install_rules {
        let sock = TableSocket::open().map_err(|source| DaemonError::Rules {
            context: "opening the nftables socket".into(),
            source,
        })?;
        // A table left by a previous run would queue to our queues while
        // they are being configured; take it away until they are ready.
        // One owned by a running daemon cannot be removed: that is an error.
        if sock
            .remove(&cfg.table)
            .map_err(|source| DaemonError::Rules {
                context: format!("removing the old table ip {}", cfg.table),
                source,
            })?
        {
            log::info!("removed table ip {} left by an earlier run", cfg.table);
        }
        Some(sock)
    } else {
        match nft::table_exists(&cfg.table) {
            Ok(true) => log::info!("using the existing table ip {}", cfg.table),
            Ok(false) => log::warn!(
                "table ip {} does not exist: nothing is queued to the daemon until it is \
                 installed (`pptp-alg rules install`, or run with --install-rules)",
                cfg.table
            ),
            Err(e) => log::warn!("cannot check for table ip {}: {e}", cfg.table),
        }
        None
    };

    let queue = NfQueue::open(
        &[cfg.queue_from_inside, cfg.queue_to_inside],
        cfg.queue_max_len,
    )?;
    log::info!(
        "bound queues {} (from inside) and {} (to inside), {} packets each, fail-closed",
        cfg.queue_from_inside,
        cfg.queue_to_inside,
        cfg.queue_max_len
    );
    if queue.poll_fd().is_none() {
        log::warn!("queue socket descriptor not found; polling every millisecond instead");
    }

    let installed = match &table_socket {
        Some(sock) => {
            let backend = nft::detect_backend().map_err(|source| DaemonError::Rules {
                context: "detecting how this kernel queues packets".into(),
                source,
            })?;
            log::info!("queue backend: {backend}");
            let ownership =
                sock.install_owned(&rules, backend)
                    .map_err(|source| DaemonError::Rules {
                        context: format!("installing table ip {}", cfg.table),
                        source,
                    })?;
            let owned = match ownership {
                Ownership::Owned => {
                    log::info!("installed {}", ownership_text(&cfg.table, true));
                    true
                }
                Ownership::Unowned(refused) => {
                    log::warn!(
                        "this kernel cannot give table ip {} an owner ({refused}); installed it \
                         unowned: after a crash it stays until the unit's ExecStopPost or the \
                         next start removes it",
                        cfg.table
                    );
                    false
                }
            };
            Some((backend, owned))
        }
        None => None,
    };
    let backend = installed.map(|(b, owned)| format!("{b}; {}", ownership_text(&cfg.table, owned)));
    // From here on, leaving means removing the rules we installed.
    let rules_guard = RulesGuard {
        table: table_socket.clone().map(|s| (s, cfg.table.clone())),
        wanted: Arc::new(Mutex::new(cfg.install_rules)),
    };
    // Fills the fast path's set of local addresses and keeps it filled; stopped before the
    // table is removed (declared after the guard, so also on an early return).
    let addr_watcher = if cfg.offload {
        start_addr_watcher(&rules, table_socket.clone())
    } else {
        None
    };

    let shared = Shared::new(Alg::new(cfg.alg_config(random_seed())), false, backend);
    restore_state(cfg, &shared, &saved);
    drop(saved);
    let stop = Arc::new(AtomicBool::new(false));
    let (mut wake_tx, wake_rx) = UnixStream::pair().map_err(|source| DaemonError::Io {
        context: "creating the wake-up socket",
        source,
    })?;
    let loop_cfg = LoopConfig {
        queue_from_inside: cfg.queue_from_inside,
        mark: cfg.mark,
        rules,
        offload: cfg.offload,
        call_idle_timeout: Duration::from_secs(cfg.call_idle_timeout),
        table_removed_at_stop: cfg.install_rules,
        // Nobody but this daemon can remove an owned table, so only an
        // unowned one needs watching.
        reinstall: installed
            .filter(|&(_, owned)| !owned)
            .map(|(b, _)| (b, rules_guard.wanted.clone())),
        table_socket,
        local_addrs: addr_watcher.as_ref().map(AddrWatcher::resync_handle),
    };
    wake_rx
        .set_nonblocking(true)
        .map_err(|source| DaemonError::Io {
            context: "preparing the wake-up socket",
            source,
        })?;
    let thread = {
        let tx = tx.clone();
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("packets".into())
            .spawn(move || {
                let mut guard = ExitGuard {
                    tx: tx.clone(),
                    result: None,
                };
                // Built here, on the thread that runs it.
                let mut pl = PacketLoop::new(loop_cfg, queue, shared, stop, wake_rx);
                let offload = pl.start_fast_path();
                let _ = tx.send(Msg::Started(offload));
                let r = pl.run();
                pl.shutdown();
                guard.result = Some(r);
            })
            .map_err(|source| DaemonError::Io {
                context: "starting the packet thread",
                source,
            })?
    };

    let mut status = None;
    let mut exit: Option<Result<(), DaemonError>> = None;
    let mut thread_done = false;
    let mut ready = false;
    let mut saved_mark = state_mark(&shared);
    loop {
        let msg = match rx.recv_timeout(STATE_SAVE_INTERVAL) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mark = state_mark(&shared);
                if mark != saved_mark {
                    save_state(cfg, &shared);
                    saved_mark = mark;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Msg::Started(offload) => {
                status = match StatusServer::start(&cfg.status_socket, shared.clone()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        log::warn!(
                            "status socket {} not available: {e}",
                            cfg.status_socket.display()
                        );
                        None
                    }
                };
                let text = format!(
                    "serving queues {}/{}, fast path {}",
                    cfg.queue_from_inside,
                    cfg.queue_to_inside,
                    if offload { "on" } else { "off" }
                );
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&text),
                ]);
                ready = true;
                log::info!("ready: {text}");
            }
            Msg::Signal(SIGUSR1) => {
                log::info!("SIGUSR1: live calls and counters follow");
                log_report(&shared);
            }
            Msg::Signal(SIGHUP) => log::info!(
                "SIGHUP received: reloading is not supported yet; still running with the \
                 configuration read at start (restart to apply changes)"
            ),
            Msg::Signal(sig) => {
                log::info!(
                    "{}: stopping",
                    if sig == SIGINT { "SIGINT" } else { "SIGTERM" }
                );
                exit = Some(Ok(()));
                break;
            }
            Msg::Exited(r) => {
                thread_done = true;
                exit = Some(match r {
                    Ok(()) => Err(DaemonError::PacketThread("ended unexpectedly".into())),
                    Err(e) => Err(DaemonError::PacketThread(e)),
                });
                break;
            }
        }
    }
    let exit = exit.unwrap_or(Ok(()));

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(addr_watcher);
    // Rules first: once they are gone nothing new is queued, and what is
    // queued already still gets a verdict from the running packet thread.
    drop(rules_guard);
    stop.store(true, Ordering::Release);
    let _ = wake_tx.write_all(&[1]);
    if !thread_done {
        // The thread drains the queue, flushes the fast path and unbinds.
        let _ = thread.join();
    }
    if !ready {
        log::warn!("stopped before start-up completed");
    }
    save_state(cfg, &shared);
    {
        let s = lock(&shared);
        let st = s.alg.stats();
        log::info!(
            "stopped: {} packets, {} rewritten, {} calls created, {} live at exit",
            st.packets,
            st.rewritten,
            st.calls_created,
            st.calls_active
        );
    }
    drop(status);
    exit
}

/// How often the live calls are saved while they change, so that even a
/// crash loses at most this much of the call table.
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(2);

/// Changes whenever calls start or end.
fn state_mark(shared: &SharedRef) -> (u64, u64) {
    let s = lock(shared);
    let st = s.alg.stats();
    (st.calls_created, st.ended.iter().sum())
}

/// Checks that the state file can be written and reads the calls an
/// earlier run saved in it (see [`super::state`]). Saved calls that cannot
/// be used are logged and skipped; only an unwritable file is an error.
fn load_state(cfg: &Config) -> Result<Vec<SavedCall>, DaemonError> {
    if cfg.state_file.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    super::state::check_writable(&cfg.state_file).map_err(|reason| DaemonError::StateFile {
        path: cfg.state_file.display().to_string(),
        reason,
    })?;
    let max_age = Duration::from_secs(cfg.conn_idle_timeout);
    Ok(
        match super::state::load(&cfg.state_file, max_age, cfg.max_calls) {
            Ok(calls) => calls,
            Err(e) => {
                log::warn!("ignoring saved calls in {}: {e}", cfg.state_file.display());
                Vec::new()
            }
        },
    )
}

/// Takes back the calls [`load_state`] read.
fn restore_state(cfg: &Config, shared: &SharedRef, calls: &[SavedCall]) {
    if calls.is_empty() {
        return;
    }
    let n = lock(shared).alg.restore_calls(Instant::now(), calls);
    log::info!(
        "restored {n} of {} live calls saved in {}",
        calls.len(),
        cfg.state_file.display()
    );
}

fn save_state(cfg: &Config, shared: &SharedRef) {
    if cfg.state_file.as_os_str().is_empty() {
        return;
    }
    let calls = lock(shared).alg.saved_calls();
    if let Err(e) = super::state::save(&cfg.state_file, calls) {
        log::warn!(
            "cannot save live calls to {}: {e}",
            cfg.state_file.display()
        );
    }
}

/// Removes the table we installed when dropped (at stop, and on any error
/// after installing), through the socket that installed it.
struct RulesGuard {
    table: Option<(TableSocket, String)>,
    /// Whether the table should exist; shared with the packet thread, which
    /// reinstalls a vanished table only under this lock while it is true,
    /// so it can never put the table back after the removal here.
    wanted: Arc<Mutex<bool>>,
}

impl Drop for RulesGuard {
    fn drop(&mut self) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        *wanted = false;
        if let Some((sock, table)) = self.table.take() {
            match sock.remove(&table) {
                Ok(_) => log::info!("removed table ip {table}"),
                Err(e) => log::error!("cannot remove table ip {table}: {e}"),
            }
        }
    }
}

/// Starts filling the fast path's set `local_addrs` with this router's
/// addresses (see [`super::addrs`]), through the table's socket if the
/// daemon installed the table. `None` (logged) when the table has no such
/// set or the addresses cannot be followed: the fast path rule then never
/// matches (or, from an older `pptp-alg.nft`, does not use the set) and
/// GRE is translated through the queue.
fn start_addr_watcher(rules: &RulesConfig, sock: Option<TableSocket>) -> Option<AddrWatcher> {
    let set = match sock {
        Some(sock) => LocalAddrSet::open_on(rules, sock),
        None => LocalAddrSet::open(rules),
    };
    let set = match set {
        Ok(set) => set,
        Err(e @ NftError::FastPathUnavailable(_)) => {
            log::info!("fast path: not filling a set of local addresses: {e}");
            return None;
        }
        Err(e) => {
            log::warn!(
                "fast path: cannot open set local_addrs of table ip {} (GRE to this router \
                 goes through the queue): {e}",
                rules.table
            );
            return None;
        }
    };
    match AddrWatcher::start(set) {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                "fast path: cannot follow this router's addresses (GRE to them goes through \
                 the queue): {e}"
            );
            None
        }
    }
}

/// How the log and `pptp-alg status` describe the daemon's table.
fn ownership_text(table: &str, owned: bool) -> String {
    if owned {
        format!("table ip {table} owned by this daemon: removed by the kernel if it dies")
    } else {
        format!("table ip {table} not owned (kernel too old): left behind if the daemon dies")
    }
}

/// A seed for the random id policy: unpredictable, so that an outside
/// party cannot guess the ids the gateway will assign.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    }
}

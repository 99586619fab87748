//! `pptp-alg run`: start-up, signal handling, reload and clean stop.
//!
//! Owns the order of things: [`run`] is a list of named start-up steps,
//! then the `MainLoop` on the main thread (signals, reload, snapshots,
//! readiness, the status socket). It must not touch packets, the engine's
//! state beyond reconfiguring it, or the table once the packet thread has
//! it.
//!
//! Start-up order matters: the queues are bound and fully configured
//! before any rule can queue to them (a packet queued to a half-configured
//! queue is dropped), and the fast path is flushed before the first call
//! is served (a stale element would send a new call's GRE to an old host).
//! Stop order matters too: the rules go first so nothing new is queued,
//! then every packet still queued gets its verdict.
//!
//! With `--install-rules` the table is installed through one netlink socket
//! (a [`nft::TableSocket`]) that lives as long as the daemon and is shared by
//! everything that changes the table: the install here, the fast path and a
//! reinstall in the packet thread, the removal at stop (the packet thread's
//! [`InstalledTable`], dropped also when the thread fails or panics). By
//! default the table has no owner, so a saved listing of the live ruleset can
//! be restored; the packet thread puts the table back when a flush took it or
//! a restore made it anew. With `table_owner` it is created with the
//! nftables owner flag on that socket: the kernel deletes it, and with it
//! every fast path element, when that socket closes, so a daemon that dies
//! for any reason leaves plain masquerade behind, and accepts changes of it
//! only from its owner.

use super::addrs::AddrWatcher;
use super::config::{Apply, Config, ConfigSource};
use super::ha::Ha;
use super::journal;
use super::metrics::{MetricsServer, TextfileWriter};
use super::offload::{InstalledTable, OffloadConfig};
use super::packet::{JournalConfig, LoopConfig, PacketLoop};
use super::shared::{lock, Shared, SharedRef};
use super::status::{log_report, Installed, QueueRole, RulesInfo, StatusServer};
use crate::alg::{Alg, Event, SavedCall};
use crate::nfqueue::{NfQueue, QueueError};
use crate::nft::{self, LocalAddrSet, NftError, Ownership, RulesConfig, TableSocket};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
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
    /// The high-availability settings or socket.
    #[error("high availability: {reason}")]
    Ha {
        /// What is wrong.
        reason: String,
        /// A configuration problem (a restart cannot help).
        config: bool,
    },
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
        matches!(
            self,
            DaemonError::StateFile { .. } | DaemonError::Ha { config: true, .. }
        )
    }
}

enum Msg {
    Signal(i32),
    /// The packet thread is serving; the fast path is on or off.
    Started(bool),
    /// The packet thread ended (with its error, if any).
    Exited(Result<(), String>),
    /// The journal's generation grows large: take a snapshot now.
    Snapshot,
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

/// Runs the daemon in the foreground until SIGTERM or SIGINT, with `cfg`
/// (read from `source`, which a SIGHUP reads again).
pub fn run(cfg: &Config, source: &ConfigSource) -> Result<(), DaemonError> {
    // Signals first, so a stop request during start-up is not lost: it is
    // acted on once the main loop runs, with everything set up to undo.
    let (tx, rx) = mpsc::channel::<Msg>();
    start_signal_thread(tx.clone())?;
    let restored = restore_calls(cfg)?;
    let ha = start_ha(cfg, &restored.alg)?;
    check_no_helper()?;
    let table_socket = clear_old_table(cfg)?;
    let (queue, gre_queue) = open_queues(cfg)?;
    // From here on, leaving means removing the table we installed: it is
    // removed when `table` is dropped, wherever that happens.
    let table = install_table(cfg, table_socket)?;
    let rules_info = RulesInfo {
        table: cfg.table.clone(),
        installed: match &table {
            Some(t) if t.owned => Installed::Owned,
            Some(_) => Installed::Unowned,
            None => Installed::External,
        },
        queue_backend: table.as_ref().map(|t| t.backend),
    };
    let rules = cfg.rules_config();
    // Fills the fast path's set of local addresses and keeps it filled; stopped before the
    // packet thread removes the table.
    let addr_watcher = if cfg.offload {
        start_addr_watcher(&rules, table.as_ref().map(|t| t.socket.clone()))
    } else {
        None
    };
    let shared = Shared::new(restored.alg, rules_info);
    {
        let mut s = lock(&shared);
        s.journal_gen = restored.generation;
        s.queues = vec![
            (cfg.queue_from_inside, QueueRole::ControlFromInside),
            (cfg.queue_to_inside, QueueRole::ControlToInside),
            (cfg.queue_gre, QueueRole::Gre),
        ];
    }
    let loop_cfg = LoopConfig {
        queue_from_inside: cfg.queue_from_inside,
        mark: cfg.mark,
        mark_mask: cfg.mark_mask,
        offload: OffloadConfig {
            rules,
            offload: cfg.offload,
            table,
            local_addrs: addr_watcher.as_ref().map(AddrWatcher::resync_handle),
        },
        journal: (!cfg.state_file.as_os_str().is_empty()).then(|| {
            let tx = tx.clone();
            JournalConfig {
                state_file: cfg.state_file.clone(),
                generation: restored.generation,
                max_calls: cfg.max_calls,
                ask_snapshot: journal::SnapshotRequest(Arc::new(move || {
                    let _ = tx.send(Msg::Snapshot);
                })),
            }
        }),
        restored: restored.events,
        ha,
    };
    let packets = PacketThread::start(loop_cfg, queue, gre_queue, shared.clone(), tx)?;
    let mut main = MainLoop {
        cfg: cfg.clone(),
        source,
        shared,
        status: None,
        metrics: (None, None),
        ready: false,
    };
    let exit = main.serve(&rx);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(addr_watcher);
    // The packet thread removes the table first, so nothing new is queued,
    // then gives what is queued already a verdict.
    packets.stop();
    main.stopped();
    exit
}

/// Starts the thread that turns signals into [`Msg::Signal`].
fn start_signal_thread(tx: mpsc::Sender<Msg>) -> Result<(), DaemonError> {
    // SIGHUP reloads (see `MainLoop::reload`); its default action would end
    // the daemon without a clean stop.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP]).map_err(|source| DaemonError::Io {
            context: "installing signal handlers",
            source,
        })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map(drop)
        .map_err(|source| DaemonError::Io {
            context: "starting the signal thread",
            source,
        })
}

/// The engine with the calls an earlier run left, ready to serve.
struct Restored {
    alg: Alg,
    /// The events the engine announced the restored calls with.
    events: Vec<Event>,
    /// The journal generation this run writes.
    generation: u64,
}

/// Reads the saved calls into a new engine and writes them as the
/// snapshot this run's journal continues. Before anything is bound: a
/// state file that cannot be written would otherwise show only at the
/// first save, parsing it here keeps that out of the time packets wait in
/// the queues, and from here on the state file and journal describe this
/// run.
fn restore_calls(cfg: &Config) -> Result<Restored, DaemonError> {
    let saved = load_state(cfg)?;
    let mut alg = Alg::new(cfg.alg_config(random_seed()));
    let events = restore_state(cfg, &mut alg, &saved.calls);
    drop(saved.calls);
    // As of when the last daemon was alive, not now: a daemon that keeps
    // failing after this point must not make the calls look younger.
    let now = super::state::unix_now();
    let calls = journal::backdate(alg.saved_calls(), now, saved.as_of);
    write_snapshot(cfg, calls, saved.generation, saved.as_of);
    Ok(Restored {
        alg,
        events,
        generation: saved.generation,
    })
}

/// With `ha_node`: binds the replication socket and reads the role, before
/// any packet is queued (the calls restored meanwhile go to the peer once it
/// greets). The key file is read again here: it may have changed since the
/// configuration was checked.
fn start_ha(cfg: &Config, alg: &Alg) -> Result<Option<Ha>, DaemonError> {
    let settings = match cfg.ha_settings() {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(DaemonError::Ha {
                reason: e.to_string(),
                config: true,
            })
        }
    };
    Ha::start(&settings, alg, random_seed(), Instant::now())
        .map(Some)
        .map_err(|e| DaemonError::Ha {
            reason: e.to_string(),
            config: false,
        })
}

/// Refuses to start beside the kernel's PPTP helper.
fn check_no_helper() -> Result<(), DaemonError> {
    match nft::pptp_helper_in_use() {
        Ok(Some(place)) => Err(DaemonError::HelperInUse(place)),
        Ok(None) => Ok(()),
        Err(e) => {
            log::warn!("cannot check for the kernel PPTP helper: {e}");
            Ok(())
        }
    }
}

/// With `install_rules`: opens the socket that installs, changes and
/// removes our table (see the module documentation) and takes away a
/// table left by a previous run, which would queue to our queues while
/// they are being configured. One owned by a running daemon cannot be
/// removed: that is an error. Without: checks that someone installed it.
fn clear_old_table(cfg: &Config) -> Result<Option<TableSocket>, DaemonError> {
    if !cfg.install_rules {
        match nft::table_exists(&cfg.table) {
            Ok(true) => log::info!("using the existing table ip {}", cfg.table),
            Ok(false) => log::warn!(
                "table ip {} does not exist: nothing is queued to the daemon until it is \
                 installed (`pptp-alg rules install`, or run with --install-rules)",
                cfg.table
            ),
            Err(e) => log::warn!("cannot check for table ip {}: {e}", cfg.table),
        }
        return Ok(None);
    }
    let sock = TableSocket::open().map_err(|source| DaemonError::Rules {
        context: "opening the nftables socket".into(),
        source,
    })?;
    let removed = sock
        .remove(&cfg.table)
        .map_err(|source| DaemonError::Rules {
            context: format!("removing the old table ip {}", cfg.table),
            source,
        })?;
    if removed {
        log::info!("removed table ip {} left by an earlier run", cfg.table);
    }
    Ok(Some(sock))
}

/// Binds and configures the control queues and the GRE queue, before any
/// rule can queue to them (a packet queued to a half-configured queue is
/// dropped).
fn open_queues(cfg: &Config) -> Result<(NfQueue, NfQueue), DaemonError> {
    let queue = NfQueue::open(
        &[cfg.queue_from_inside, cfg.queue_to_inside],
        cfg.queue_max_len,
    )?;
    // GRE on its own socket, not just its own queue number: a socket whose
    // receive buffer a GRE flood fills drops whatever queue the next packet
    // belongs to. So a flood costs GRE only, and control segments never
    // wait behind it (the packet thread serves them first).
    let gre_queue = NfQueue::open(&[cfg.queue_gre], cfg.queue_max_len)?;
    let kb = |q: &NfQueue| {
        q.receive_buffer()
            .map_or("?".into(), |b| (b >> 10).to_string())
    };
    log::info!(
        "bound queues {} (control from inside), {} (control to inside) and {} (GRE, its own \
         socket), {} packets each, fail-closed; socket buffers {} kB (control) and {} kB (GRE)",
        cfg.queue_from_inside,
        cfg.queue_to_inside,
        cfg.queue_gre,
        cfg.queue_max_len,
        kb(&queue),
        kb(&gre_queue)
    );
    if queue.poll_fd().is_none() || gre_queue.poll_fd().is_none() {
        log::warn!("queue socket descriptor not found; polling every millisecond instead");
    }
    Ok((queue, gre_queue))
}

/// Installs our table through `sock` (from [`clear_old_table`]); with
/// `table_owner`, owned by it where the kernel allows.
fn install_table(
    cfg: &Config,
    sock: Option<TableSocket>,
) -> Result<Option<InstalledTable>, DaemonError> {
    let Some(sock) = sock else { return Ok(None) };
    let backend = nft::detect_backend().map_err(|source| DaemonError::Rules {
        context: "detecting how this kernel queues packets".into(),
        source,
    })?;
    log::info!("queue backend: {backend}");
    let install_err = |source| DaemonError::Rules {
        context: format!("installing table ip {}", cfg.table),
        source,
    };
    let rules = cfg.rules_config();
    let owned = if !cfg.table_owner {
        sock.install(&rules, backend, false).map_err(install_err)?;
        log::info!("installed {}", ownership_text(&cfg.table, false));
        false
    } else {
        match sock.install_owned(&rules, backend).map_err(install_err)? {
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
        }
    };
    Ok(Some(InstalledTable {
        socket: sock,
        table: cfg.table.clone(),
        backend,
        owned,
    }))
}

/// The packet thread, seen from the main thread.
struct PacketThread {
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    thread: std::thread::JoinHandle<()>,
}

impl PacketThread {
    /// Starts the thread; it sends [`Msg::Started`] once it serves and
    /// [`Msg::Exited`] when it ends, however it ends.
    fn start(
        cfg: LoopConfig,
        queue: NfQueue,
        gre_queue: NfQueue,
        shared: SharedRef,
        tx: mpsc::Sender<Msg>,
    ) -> Result<Self, DaemonError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, wake_rx) = UnixStream::pair().map_err(|source| DaemonError::Io {
            context: "creating the wake-up socket",
            source,
        })?;
        wake_rx
            .set_nonblocking(true)
            .map_err(|source| DaemonError::Io {
                context: "preparing the wake-up socket",
                source,
            })?;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("packets".into())
                .spawn(move || {
                    let mut guard = ExitGuard {
                        tx: tx.clone(),
                        result: None,
                    };
                    // Built here, on the thread that runs it; dropped
                    // (removing the table) before the guard reports.
                    let mut pl = PacketLoop::new(cfg, queue, gre_queue, shared, stop, wake_rx);
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
        Ok(PacketThread { stop, wake, thread })
    }

    /// Stops the thread and waits until it has drained the queues,
    /// removed the table or flushed the fast path, and unbound.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write_all(&[1]);
        let _ = self.thread.join();
    }
}

/// The main thread once the packet thread runs: signals, snapshots,
/// readiness, the status socket, reloads.
struct MainLoop<'a> {
    /// The running configuration (changed by a reload).
    cfg: Config,
    source: &'a ConfigSource,
    shared: SharedRef,
    status: Option<StatusServer>,
    /// The metrics listener and textfile writer that are configured.
    metrics: (Option<MetricsServer>, Option<TextfileWriter>),
    ready: bool,
}

impl MainLoop<'_> {
    /// Serves messages until a stop signal or the packet thread's end;
    /// returns how the daemon should exit.
    fn serve(&mut self, rx: &mpsc::Receiver<Msg>) -> Result<(), DaemonError> {
        let mut saved_mark = state_mark(&self.shared);
        // None: not yet in this run. The snapshot written at start is dated
        // when the last daemon was alive; the first save of a daemon that
        // serves (2 s after it is ready, if it restored calls) dates it now.
        let mut saved_at: Option<Instant> = None;
        loop {
            let cfg = &self.cfg;
            let refresh = state_refresh_interval(cfg.conn_idle_timeout);
            let msg = match rx.recv_timeout(STATE_SAVE_INTERVAL) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mark = state_mark(&self.shared);
                    // Also while nothing changes, so that a snapshot is never
                    // older than a start accepts (see `state_refresh_interval`).
                    let stale = mark.2 && saved_at.is_none_or(|t| t.elapsed() >= refresh);
                    if (mark.0, mark.1) != (saved_mark.0, saved_mark.1) || stale {
                        save_state(cfg, &self.shared);
                        saved_mark = mark;
                        saved_at = Some(Instant::now());
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            match msg {
                Msg::Snapshot => {
                    save_state(cfg, &self.shared);
                    saved_mark = state_mark(&self.shared);
                    saved_at = Some(Instant::now());
                }
                Msg::Started(offload) => self.started(offload),
                Msg::Signal(SIGUSR1) => {
                    log::info!("SIGUSR1: live calls and counters follow");
                    log_report(&self.shared);
                }
                Msg::Signal(SIGHUP) => self.reload(),
                Msg::Signal(sig) => {
                    log::info!(
                        "{}: stopping",
                        if sig == SIGINT { "SIGINT" } else { "SIGTERM" }
                    );
                    return Ok(());
                }
                Msg::Exited(r) => {
                    return match r {
                        Ok(()) => Err(DaemonError::PacketThread("ended unexpectedly".into())),
                        Err(e) => Err(DaemonError::PacketThread(e)),
                    }
                }
            }
        }
    }

    /// Reads the configuration again (SIGHUP, `systemctl reload`). Keys
    /// that [`Apply::Reload`] take effect at once, live calls untouched;
    /// an unreadable or invalid file, or a change of a key that needs a
    /// restart, is refused with one line naming it, and the running
    /// configuration stays.
    fn reload(&mut self) {
        let what = self.source.describe();
        let new = match self.source.resolve() {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "reload refused, {}; still running with the previous configuration",
                    self.source.error_text(&e)
                );
                return;
            }
        };
        let changed = self.cfg.changed_keys(&new);
        let restart: Vec<String> = changed
            .iter()
            .filter(|(_, a)| *a == Apply::Restart)
            .map(|(k, _)| self.change_text(&new, k))
            .collect();
        if !restart.is_empty() {
            log::error!(
                "reload refused, {what}: {} only at a restart (systemctl restart pptp-alg); \
                 still running with the previous configuration",
                restart.join(", ")
            );
            return;
        }
        // An edit of a key a flag given at start overrides changes nothing:
        // say so, or the operator looks for the edit in vain.
        let flagged = self.source.overridden_keys();
        let flagged = if flagged.is_empty() {
            String::new()
        } else {
            let keys: Vec<String> = flagged.iter().map(|k| format!("`{k}`")).collect();
            format!(
                " (flags given at start override the file's {})",
                keys.join(", ")
            )
        };
        if changed.is_empty() {
            log::info!("reload: {what} unchanged{flagged}");
            return;
        }
        let text: Vec<String> = changed
            .iter()
            .map(|(k, _)| self.change_text(&new, k))
            .collect();
        // The seed is the running engine's (`Alg::reconfigure` keeps it).
        lock(&self.shared).alg.reconfigure(new.alg_config(0));
        // Logged at the old level: a reload that lowers it still says so.
        log::info!(
            "reloaded {what}: {}; live calls kept{flagged}",
            text.join(", ")
        );
        if new.log_level != self.cfg.log_level && !super::logging::set_level(new.log_level) {
            log::warn!("reload: log_level not applied: RUST_LOG chooses the log filters");
        }
        self.cfg = new;
    }

    /// `key` old -> new, for a log line.
    fn change_text(&self, new: &Config, key: &str) -> String {
        let v = |c: &Config| c.value_text(key).unwrap_or_else(|| "?".into());
        format!("`{key}` {} -> {}", v(&self.cfg), v(new))
    }

    /// The packet thread serves: open the status socket, tell systemd.
    fn started(&mut self, offload: bool) {
        let cfg = &self.cfg;
        // Validated with the configuration; looked up again here, as the
        // group may have gone since.
        let group = match cfg.status_group.as_str() {
            "" => Ok(None),
            name => super::config::group_id(name).map(Some),
        };
        let started = group
            .map_err(io::Error::other)
            .and_then(|g| StatusServer::start(&cfg.status_socket, g, self.shared.clone()));
        self.status = match started {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!(
                    "status socket {} not available: {e}",
                    cfg.status_socket.display()
                );
                None
            }
        };
        self.metrics = start_metrics(cfg, &self.shared);
        let text = format!(
            "serving queues {}/{}/{}, fast path {}",
            cfg.queue_from_inside,
            cfg.queue_to_inside,
            cfg.queue_gre,
            if offload { "on" } else { "off" }
        );
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&text),
        ]);
        self.ready = true;
        log::info!("ready: {text}");
    }

    /// After the packet thread stopped: the last snapshot and the last
    /// lines; the status socket and the metrics go when `self` is dropped.
    fn stopped(&mut self) {
        if !self.ready {
            log::warn!("stopped before start-up completed");
        }
        save_state(&self.cfg, &self.shared);
        let s = lock(&self.shared);
        let st = s.alg.stats();
        log::info!(
            "stopped: {} packets, {} rewritten, {} calls created, {} live at exit",
            st.packets,
            st.rewritten,
            st.calls_created,
            st.calls_active
        );
    }
}

/// Starts the metrics listener and textfile writer that are configured. Metrics are not worth
/// stopping a router for: one that cannot start is logged as an error and left out.
fn start_metrics(
    cfg: &Config,
    shared: &SharedRef,
) -> (Option<MetricsServer>, Option<TextfileWriter>) {
    let server =
        cfg.metrics_addr()
            .and_then(|addr| match MetricsServer::start(addr, shared.clone()) {
                Ok(s) => {
                    log::info!("metrics: serving http://{}/metrics", s.local_addr());
                    Some(s)
                }
                Err(e) => {
                    log::error!("{e}; no metrics are served");
                    None
                }
            });
    let path = &cfg.metrics_textfile;
    let textfile = (!path.as_os_str().is_empty())
        .then(|| match TextfileWriter::start(path, shared.clone()) {
            Ok(w) => {
                log::info!(
                    "metrics: writing {} every {} s",
                    path.display(),
                    super::metrics::TEXTFILE_INTERVAL.as_secs()
                );
                Some(w)
            }
            Err(e) => {
                log::error!(
                    "metrics_textfile {}: {e}; no metrics are written (under the packaged unit \
                     the directory must be listed in ReadWritePaths=)",
                    path.display()
                );
                None
            }
        })
        .flatten();
    (server, textfile)
}

/// How often the live calls are saved while they change. The journal
/// holds what happened since (see [`super::journal`]), so a crash loses
/// nothing in between; the snapshot keeps the journal short and a start's
/// replay quick.
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(2);

/// How often the snapshot is written while calls are up but nothing
/// changes. A start restores nothing when the daemon was last seen alive
/// (the snapshot, the latest journal record) more than `conn_idle_timeout`
/// ago, taking that for downtime; without this, steady calls would be lost
/// to a crash once their last change is that old. A quarter of it, at most
/// a minute, at least the save interval.
fn state_refresh_interval(conn_idle_timeout: u64) -> Duration {
    Duration::from_secs((conn_idle_timeout / 4).clamp(2, 60))
}

/// Calls created and ended (changes whenever calls start or end), and
/// whether any call is live or in quarantine.
fn state_mark(shared: &SharedRef) -> (u64, u64, bool) {
    let s = lock(shared);
    let st = s.alg.stats();
    let any = st.calls_active > 0 || s.alg.quarantined() > 0;
    (st.calls_created, st.ended.iter().sum(), any)
}

/// What [`load_state`] found.
struct Loaded {
    /// The calls to restore.
    calls: Vec<SavedCall>,
    /// The journal generation this run starts with: after every one on disk.
    generation: u64,
    /// When the daemon that saved them was last alive (see
    /// [`journal::Restored::as_of`]).
    as_of: u64,
}

/// Checks that the state file can be written and reads the calls an
/// earlier run saved in it (see [`super::state`]) and journaled after it
/// (see [`super::journal`]). Saved calls that cannot be used are logged
/// and skipped; only an unwritable file is an error.
fn load_state(cfg: &Config) -> Result<Loaded, DaemonError> {
    let path = &cfg.state_file;
    if path.as_os_str().is_empty() {
        return Ok(Loaded {
            calls: Vec::new(),
            generation: 1,
            as_of: super::state::unix_now(),
        });
    }
    super::state::check_writable(path).map_err(|reason| DaemonError::StateFile {
        path: path.display().to_string(),
        reason,
    })?;
    let now = super::state::unix_now();
    let snapshot = match super::state::load_snapshot(path, cfg.max_calls, now) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("ignoring saved calls in {}: {e}", path.display());
            None
        }
    };
    let on_disk = journal::list(path).unwrap_or_else(|e| {
        log::warn!("cannot list the journal files of {}: {e}", path.display());
        Vec::new()
    });
    let last_on_disk = on_disk.last().map_or(0, |g| g.0);
    let Some(snapshot) = snapshot else {
        if !on_disk.is_empty() {
            log::warn!(
                "ignoring {} journal file(s) of {}: no state file they continue",
                on_disk.len(),
                path.display()
            );
        }
        return Ok(Loaded {
            calls: Vec::new(),
            generation: last_on_disk + 1,
            as_of: now,
        });
    };
    let generation = last_on_disk.max(snapshot.journal.unwrap_or(0)) + 1;
    let read = match snapshot.journal {
        Some(first) => journal::read_from(path, first, journal::size_limit(cfg.max_calls))
            .unwrap_or_else(|e| {
                log::warn!(
                    "ignoring the journal of {} (the calls of the last seconds before the                      daemon stopped may be missing): {e}",
                    path.display()
                );
                journal::Generations::default()
            }),
        None => journal::Generations::default(),
    };
    if let Some((_, why)) = &read.refused {
        log::warn!("journal: {why}");
    }
    for (gen, p) in &read.generations {
        let file = journal::gen_path(path, *gen);
        if let Some((line, e)) = &p.first_bad {
            log::warn!(
                "journal {}: {} unreadable line(s) skipped, the first at line {line}: {e}",
                file.display(),
                p.bad_lines
            );
        }
        if p.torn_tail > 0 {
            log::info!(
                "journal {}: ignored an incomplete last record ({} bytes; written when the \
                 daemon died, its packet never left)",
                file.display(),
                p.torn_tail
            );
        }
    }
    let parsed: Vec<journal::Parsed> = read.generations.into_iter().map(|g| g.1).collect();
    let restored = journal::restore(
        snapshot.calls,
        snapshot.saved_at,
        &parsed,
        now,
        Duration::from_secs(cfg.conn_idle_timeout),
        Duration::from_secs(cfg.quarantine),
    );
    if restored.applied > 0 {
        log::info!(
            "replayed {} journal record(s) ({} bytes) on the calls saved in {}",
            restored.applied,
            read.bytes,
            path.display()
        );
    }
    Ok(Loaded {
        calls: restored.calls,
        generation,
        as_of: restored.as_of,
    })
}

/// Takes back the calls [`load_state`] read; returns the events the engine
/// announced them with (for the fast path, not for the journal).
fn restore_state(cfg: &Config, alg: &mut Alg, calls: &[SavedCall]) -> Vec<Event> {
    if calls.is_empty() {
        return Vec::new();
    }
    let n = alg.restore_calls(Instant::now(), calls);
    log::info!(
        "restored {n} of {} live calls saved in {} ({} of them in quarantine)",
        calls.len(),
        cfg.state_file.display(),
        alg.quarantined(),
    );
    std::iter::from_fn(|| alg.poll_event()).collect()
}

/// Writes a snapshot of `calls` as of `saved_at`, continued by journal
/// generation `generation`, then removes the generations before it.
fn write_snapshot(cfg: &Config, calls: Vec<SavedCall>, generation: u64, saved_at: u64) {
    let path = &cfg.state_file;
    if path.as_os_str().is_empty() {
        return;
    }
    if let Err(e) = super::state::save_snapshot(path, calls, Some(generation), saved_at) {
        // The journal generations before this one stay, and so does the
        // snapshot they continue: a start still finds every call.
        log::warn!("cannot save live calls to {}: {e}", path.display());
        return;
    }
    if let Err(e) = journal::remove_before(path, generation) {
        log::warn!("cannot remove old journal files of {}: {e}", path.display());
    }
}

/// Takes a snapshot: the calls and a new journal generation under one
/// lock, so that every call change is in exactly one of them.
fn save_state(cfg: &Config, shared: &SharedRef) {
    if cfg.state_file.as_os_str().is_empty() {
        return;
    }
    let (calls, generation) = {
        let mut s = lock(shared);
        s.journal_gen += 1;
        (s.alg.saved_calls(), s.journal_gen)
    };
    write_snapshot(cfg, calls, generation, super::state::unix_now());
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
        format!("table ip {table} not owned (table_owner is off): left behind if the daemon dies")
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

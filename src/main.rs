//! `pptp-alg`: the command-line entry point (daemon, rules, status,
//! check-config). Owns the command line and exit statuses; the work is in
//! the library (`pptp_alg::daemon`, `pptp_alg::nft`).

use clap::{Parser, Subcommand, ValueEnum};
use pptp_alg::check;
use pptp_alg::daemon::{self, logging, status, Config, ConfigError, ConfigSource, Overrides};
use pptp_alg::nft::{self, QueueBackend};
use std::path::PathBuf;
use std::process::ExitCode;

mod gen_docs;

/// Exit status for configuration and usage errors. The systemd unit lists
/// it in RestartPreventExitStatus: restarting cannot fix a bad file.
const EXIT_CONFIG: u8 = 2;

/// Userspace PPTP NAT application level gateway (NFQUEUE + nftables).
#[derive(Debug, Parser)]
#[command(name = "pptp-alg", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground (as systemd does).
    Run(RunArgs),
    /// Install, remove or print the nftables table without the daemon.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Show the running daemon's calls and counters.
    Status(StatusArgs),
    /// Check this router before enabling the unit: kernel features, forwarding, NAT rules,
    /// the kernel PPTP helper, the forward policy, the user namespace. One line per check
    /// (OK, WARN or FAIL); exit status 1 when any check fails.
    Check(PreflightArgs),
    /// Check a configuration file (and flags) without side effects: exit 0
    /// when `run` would accept it, 2 naming the file and key when not.
    CheckConfig(CheckArgs),
    /// Write the man pages and shell completions under DIR (build time;
    /// hidden because the package installs its output).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are created in it).
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML); without it, the built-in defaults.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Configuration file (TOML); without it, the built-in defaults.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Debug, Subcommand)]
enum RulesAction {
    /// Install (or atomically replace) the table.
    Install(RulesArgs),
    /// Remove the table.
    Remove(RulesArgs),
    /// Print the table in nft syntax.
    Print(RulesArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// Detect what the running kernel supports.
    Auto,
    /// The nft `queue` expression.
    NftQueue,
    /// The xt NFQUEUE target through nft_compat.
    Xt,
}

#[derive(Debug, clap::Args)]
struct RulesArgs {
    /// How packets are queued.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Configuration file (TOML) whose queues, mark, table and offload to use.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Debug, clap::Args)]
struct PreflightArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Configuration file (TOML) whose table and mark to check against.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print the daemon's JSON document (schema in the README) instead of a table.
    #[arg(long)]
    json: bool,
    /// Only the calls of this inside host.
    #[arg(long, value_name = "ADDR")]
    host: Option<std::net::Ipv4Addr>,
    /// Only the calls with this outside peer.
    #[arg(long, value_name = "ADDR")]
    peer: Option<std::net::Ipv4Addr>,
    /// Call IDs in hexadecimal in the table, as conntrack -L prints them.
    #[arg(long)]
    hex: bool,
    /// The daemon's status socket.
    #[arg(long, value_name = "PATH", default_value = daemon::config::DEFAULT_STATUS_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => cmd_run(args),
        Cmd::Rules { action } => cmd_rules(action),
        Cmd::Status(args) => cmd_status(args),
        Cmd::Check(args) => cmd_check(args),
        Cmd::CheckConfig(args) => cmd_check_config(args),
        Cmd::GenerateDocs { dir } => match gen_docs::generate(&dir, EXIT_CONFIG) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pptp-alg: generate-docs {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn config_or_exit(source: &ConfigSource) -> Result<Config, ExitCode> {
    source.resolve().map_err(|e: ConfigError| {
        eprintln!("pptp-alg: {}", source.error_text(&e));
        ExitCode::from(EXIT_CONFIG)
    })
}

fn cmd_check_config(args: CheckArgs) -> ExitCode {
    let source = ConfigSource {
        path: args.file,
        overrides: args.overrides,
    };
    match config_or_exit(&source) {
        Ok(_) => {
            println!("{}: ok", source.describe());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn cmd_run(args: RunArgs) -> ExitCode {
    let source = ConfigSource {
        path: args.config,
        overrides: args.overrides,
    };
    let cfg = match config_or_exit(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.log_level);
    log::info!(
        "pptp-alg {} starting{}",
        env!("CARGO_PKG_VERSION"),
        source
            .path
            .as_ref()
            .map_or_else(String::new, |p| format!(" with {}", p.display()))
    );
    match daemon::run(&cfg, &source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            if e.is_config() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn cmd_rules(action: RulesAction) -> ExitCode {
    let (args, what) = match action {
        RulesAction::Install(a) => (a, "install"),
        RulesAction::Remove(a) => (a, "remove"),
        RulesAction::Print(a) => (a, "print"),
    };
    let source = ConfigSource {
        path: args.config,
        overrides: args.overrides,
    };
    let cfg = match config_or_exit(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.log_level);
    let rules = cfg.rules_config();
    let backend = |print: bool| -> Result<QueueBackend, nft::NftError> {
        match args.backend {
            BackendArg::NftQueue => Ok(QueueBackend::NftQueue),
            BackendArg::Xt => Ok(QueueBackend::XtNfqueue),
            BackendArg::Auto => match nft::detect_backend() {
                Ok(b) => Ok(b),
                // Printing needs no privileges: show the portable form.
                Err(e) if print => {
                    eprintln!(
                        "pptp-alg: cannot detect the queue backend ({e}); showing the nft queue form"
                    );
                    Ok(QueueBackend::NftQueue)
                }
                Err(e) => Err(e),
            },
        }
    };
    let result = match what {
        "print" => backend(true).map(|b| emit(&nft::render(&rules, b))),
        "install" => backend(false).and_then(|b| {
            nft::install(&rules, b)?;
            println!("installed table ip {} (queue backend: {b})", rules.table);
            Ok(())
        }),
        _ => nft::remove(&rules.table).map(|existed| {
            if existed {
                println!("removed table ip {}", rules.table);
            } else {
                println!("table ip {} was not installed", rules.table);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pptp-alg: rules {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_status(args: StatusArgs) -> ExitCode {
    match status::fetch(&args.socket) {
        Ok(mut report) => {
            report.filter(args.host, args.peer);
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => emit(&(s + "\n")),
                    Err(e) => {
                        eprintln!("pptp-alg: status: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                emit(&report.to_table_with(status::TableOptions { hex: args.hex }));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pptp-alg: status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_check(args: PreflightArgs) -> ExitCode {
    let cfg = match config_or_exit(&ConfigSource {
        path: args.config,
        overrides: args.overrides,
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let facts = check::gather::gather(&cfg.table);
    let outcomes = check::run(&facts, &cfg.check_config());
    let failed = check::failed(&outcomes);
    if args.json {
        let doc = serde_json::json!({ "ok": !failed, "checks": outcomes });
        emit(&format!("{doc:#}\n"));
    } else {
        emit(&check::to_text(&outcomes));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

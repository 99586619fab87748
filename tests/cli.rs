//! The `pptp-alg` command line, without root: help, printing the rules,
//! configuration errors, status without a daemon.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pptp-alg");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run pptp-alg")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pptp-alg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn help_lists_the_commands() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for cmd in ["run", "rules", "status"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn run_has_a_flag_for_every_config_key() {
    let o = run(&["run", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let keys = [
        "queue_from_inside",
        "queue_to_inside",
        "queue_gre",
        "queue_max_len",
        "mark",
        "offload",
        "table",
        "install_rules",
        "status_socket",
        "id_policy",
        "max_calls",
        "max_calls_per_host",
        "max_connections",
        "call_setup_timeout",
        "call_idle_timeout",
        "conn_idle_timeout",
        "conn_linger",
        "quarantine",
        "log_level",
        "ha_node",
        "ha_listen",
        "ha_peer",
        "ha_key_file",
        "ha_address",
    ];
    for key in keys {
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(out.contains(&flag), "no {flag} in\n{out}");
    }
    assert!(out.contains("--no-offload"));
    assert!(out.contains("--config"));
}

#[test]
fn rules_print_shows_the_chains() {
    for backend in ["nft-queue", "xt", "auto"] {
        let o = run(&["rules", "print", "--backend", backend]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("table ip pptp_alg"), "{out}");
        assert!(out.contains("chain gre_in"), "{out}");
        assert!(out.contains("chain ctl"), "{out}");
        assert!(out.contains("map gre_daddr"), "{out}");
    }
}

#[test]
fn rules_print_follows_config_and_flags() {
    let o = run(&[
        "rules",
        "print",
        "--backend",
        "nft-queue",
        "--table",
        "other_alg",
        "--queue-from-inside",
        "101",
        "--queue-to-inside",
        "102",
        "--no-offload",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("table ip other_alg"), "{out}");
    assert!(out.contains("to 101"), "{out}");
    assert!(out.contains("to 102"), "{out}");
    assert!(!out.contains("gre_daddr"), "{out}");

    let cfg = temp_file("print.toml", "table = \"from_file\"\nmark = 0x42\n");
    let o = run(&[
        "rules",
        "print",
        "--backend",
        "nft-queue",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("table ip from_file"), "{out}");
    assert!(out.contains("0x00000042"), "{out}");
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let cases = [
        (
            "type.toml",
            "max_calls_per_host = \"lots\"\n",
            "max_calls_per_host",
        ),
        ("unknown.toml", "queue_lenght = 5\n", "queue_lenght"),
        ("same.toml", "queue_to_inside = 1723\n", "queue_to_inside"),
        ("zero.toml", "max_calls = 0\n", "max_calls"),
    ];
    for (name, text, key) in cases {
        let p = temp_file(name, text);
        for cmd in [&["run"][..], &["rules", "print"][..]] {
            let mut args = cmd.to_vec();
            args.extend(["--config", p.to_str().unwrap()]);
            let o = run(&args);
            assert!(!o.status.success(), "{args:?} succeeded");
            assert_eq!(o.status.code(), Some(2), "{args:?}");
            let err = stderr(&o);
            assert!(err.contains(key), "{args:?}: {err}");
        }
    }
}

#[test]
fn bad_flag_values_are_refused() {
    let o = run(&["run", "--mark", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("mark"), "{}", stderr(&o));
    let o = run(&["run", "--id-policy", "nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("id-policy"), "{}", stderr(&o));
}

#[test]
fn missing_config_file_is_an_error() {
    let o = run(&["run", "--config", "/nonexistent/pptp-alg.toml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/pptp-alg.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn endless_config_file_fails_fast() {
    for cmd in [&["run"][..], &["rules", "print"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["--config", "/dev/zero"]);
        let t = std::time::Instant::now();
        let o = run(&args);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{args:?}");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("config file /dev/zero is larger than 65536 bytes"),
            "{args:?}: {err}"
        );
    }
}

/// Found at start, before any queue or rule exists (so also without root),
/// not at the first save when the calls it should keep are lost.
#[test]
fn state_file_in_a_missing_directory_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("pptp-alg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("missing/state.json");
    let sock = dir.join("missing-state.sock");
    let o = run(&[
        "run",
        "--state-file",
        state.to_str().unwrap(),
        "--status-socket",
        sock.to_str().unwrap(),
        "--table",
        "pptp_alg_never_installed",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "state_file {}: directory {} does not exist",
            state.display(),
            dir.join("missing").display()
        )),
        "{err}"
    );
    assert!(!err.contains("bound queues"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn status_without_daemon_fails_clearly() {
    let o = run(&["status", "--socket", "/nonexistent/status.sock"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("/nonexistent/status.sock"), "{err}");
    assert!(err.contains("is pptp-alg running"), "{err}");
}

/// `--state-file ""` turns saving off (clap's path parser would refuse it).
#[test]
fn empty_state_file_is_accepted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pptp-alg"))
        .args(["run", "--state-file", "", "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_accepts_a_good_file_and_names_file_and_key_of_a_bad_one() {
    let good = temp_file("check-good.toml", "max_calls = 10\n");
    let o = run(&["check-config", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(good.to_str().unwrap()),
        "{}",
        stdout(&o)
    );
    // The built-in defaults, and flags over a file, are checked too.
    assert_eq!(run(&["check-config"]).status.code(), Some(0));
    let o = run(&[
        "check-config",
        good.to_str().unwrap(),
        "--queue-gre",
        "1723",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`queue_gre`"), "{}", stderr(&o));
    for (name, text, key) in [
        ("check-type.toml", "max_calls = \"many\"\n", "`max_calls`"),
        (
            "check-zero.toml",
            "quarantine = 1\nmax_connections = 0\n",
            "`max_connections`",
        ),
        ("check-unknown.toml", "queue_lenght = 5\n", "queue_lenght"),
    ] {
        let p = temp_file(name, text);
        let o = run(&["check-config", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}");
        let err = stderr(&o);
        assert!(err.contains(p.to_str().unwrap()), "{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
    }
    let o = run(&["check-config", "/nonexistent/pptp-alg.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/pptp-alg.toml"));
}

/// Checking touches nothing: a state file in a missing directory, which
/// `run` refuses at start, is not created or checked.
#[test]
fn check_config_has_no_side_effects() {
    let dir = std::env::temp_dir().join(format!("pptp-alg-check-{}", std::process::id()));
    let state = dir.join("sub/state.json");
    let sock = dir.join("status.sock");
    let o = run(&[
        "check-config",
        "--state-file",
        state.to_str().unwrap(),
        "--status-socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!dir.exists(), "check-config created {}", dir.display());
}

/// check-config checks a router pair's keys: a key file others may read is
/// refused naming the key and the remedy; a private one passes.
#[test]
fn check_config_checks_the_pairs_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let key = temp_file("ha.key", "0123456789abcdef0123456789abcdef\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = temp_file(
        "ha.toml",
        &format!(
            "ha_node = 1\nha_listen = \"10.9.0.2\"\nha_peer = \"10.9.0.1\"\nha_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let o = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`ha_key_file`"), "{err}");
    assert!(
        err.contains("readable by its group or others (mode 0644)"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Without ha_node the others are an error naming it.
    let o = run(&["check-config", "--ha-peer", "10.9.0.1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`ha_node`"), "{}", stderr(&o));
}

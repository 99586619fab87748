//! The configuration file: defaults, every key, and errors that name the key.

use pptp_alg::alg::{AlgConfig, IdPolicy};
use pptp_alg::daemon::{Config, ConfigError, ConfigSource, LogLevel, Overrides};
use pptp_alg::nft::RulesConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let c = Config::from_toml(text)?;
    c.validate()?;
    Ok(c)
}

fn err_key(text: &str) -> String {
    let e = parse(text).expect_err(text);
    let key = e
        .key()
        .unwrap_or_else(|| panic!("no key in {e}"))
        .to_string();
    // The message names the key as well, for the operator.
    assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    key
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.queue_from_inside, 1723);
    assert_eq!(c.queue_to_inside, 1724);
    assert_eq!(c.queue_gre, 1725);
    assert_eq!(c.queue_max_len, 4096);
    assert_eq!(c.mark, 0x1723);
    assert!(c.offload);
    assert_eq!(c.table, "pptp_alg");
    assert!(!c.install_rules);
    assert_eq!(c.status_socket, Path::new("/run/pptp-alg/status.sock"));
    assert_eq!(c.id_policy, IdPolicy::Keep);
    assert_eq!(c.log_level, LogLevel::Info);
}

#[test]
fn defaults_agree_with_engine_and_rules() {
    let c = Config::default();
    let mut alg = c.alg_config(AlgConfig::default().seed);
    assert_eq!(alg, AlgConfig::default());
    alg.seed = 1;
    assert_eq!(c.alg_config(1), alg);
    assert_eq!(c.rules_config(), RulesConfig::default());
}

#[test]
fn example_config_is_the_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/pptp-alg.toml");
    let c = Config::load(&path).unwrap();
    c.validate().unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn every_key_parses() {
    let c = parse(
        r#"
        queue_from_inside = 10
        queue_to_inside = 11
        queue_gre = 12
        queue_max_len = 100
        mark = 0xff
        offload = false
        table = "my_alg"
        install_rules = true
        status_socket = "/tmp/x.sock"
        id_policy = "random"
        max_calls = 5
        max_calls_per_host = 2
        max_connections = 3
        call_setup_timeout = 7
        call_idle_timeout = 8
        conn_idle_timeout = 9
        conn_linger = 0
        quarantine = 0
        log_level = "debug"
        "#,
    )
    .unwrap();
    assert_eq!(c.queue_from_inside, 10);
    assert_eq!(c.queue_to_inside, 11);
    assert_eq!(c.queue_gre, 12);
    assert_eq!(c.queue_max_len, 100);
    assert_eq!(c.mark, 0xff);
    assert!(!c.offload);
    assert_eq!(c.table, "my_alg");
    assert!(c.install_rules);
    assert_eq!(c.status_socket, Path::new("/tmp/x.sock"));
    assert_eq!(c.id_policy, IdPolicy::Random);
    assert_eq!(c.log_level, LogLevel::Debug);
    let a = c.alg_config(42);
    assert_eq!(a.max_calls, 5);
    assert_eq!(a.max_calls_per_host, 2);
    assert_eq!(a.max_connections, 3);
    assert_eq!(a.seed, 42);
    assert_eq!(a.id_policy, IdPolicy::Random);
    assert_eq!(a.call_setup_timeout, Duration::from_secs(7));
    assert_eq!(a.call_idle_timeout, Duration::from_secs(8));
    assert_eq!(a.conn_idle_timeout, Duration::from_secs(9));
    assert_eq!(a.conn_linger, Duration::ZERO);
    assert_eq!(a.quarantine, Duration::ZERO);
    let r = c.rules_config();
    assert_eq!(
        r,
        RulesConfig {
            table: "my_alg".into(),
            queue_from_inside: 10,
            queue_to_inside: 11,
            queue_gre: 12,
            mark: 0xff,
            mark_mask: u32::MAX,
            offload: false,
        }
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert_eq!(err_key("max_calls = \"many\""), "max_calls");
    assert_eq!(err_key("queue_to_inside = 70000"), "queue_to_inside");
    assert_eq!(err_key("queue_from_inside = -1"), "queue_from_inside");
    assert_eq!(err_key("mark = \"0x1723\""), "mark");
    assert_eq!(err_key("offload = 1"), "offload");
    assert_eq!(err_key("table = 3"), "table");
    assert_eq!(err_key("id_policy = \"sequential\""), "id_policy");
    assert_eq!(err_key("log_level = \"loud\""), "log_level");
    assert_eq!(err_key("quarantine = 1.5"), "quarantine");
    // A later key is found even when earlier ones are fine.
    assert_eq!(
        err_key("max_calls = 10\nconn_linger = true\n"),
        "conn_linger"
    );
}

#[test]
fn unknown_keys_are_refused() {
    assert_eq!(err_key("max_call = 10"), "max_call");
    let e = parse("[section]\nx = 1").unwrap_err();
    assert_eq!(e.key(), Some("section"));
}

#[test]
fn syntax_errors_are_reported() {
    let e = parse("max_calls = = 3").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn invalid_values_name_the_key() {
    assert_eq!(
        err_key("queue_from_inside = 5\nqueue_to_inside = 5"),
        "queue_to_inside"
    );
    // GRE never shares a queue with control segments (a GRE flood would drop them).
    assert_eq!(err_key("queue_gre = 1723"), "queue_gre");
    assert_eq!(err_key("queue_gre = 1724"), "queue_gre");
    assert_eq!(
        err_key("queue_to_inside = 1725\nqueue_gre = 1725"),
        "queue_gre"
    );
    assert_eq!(err_key("max_calls = 0"), "max_calls");
    assert_eq!(err_key("max_calls_per_host = 0"), "max_calls_per_host");
    assert_eq!(err_key("max_connections = 0"), "max_connections");
    assert_eq!(err_key("queue_max_len = 0"), "queue_max_len");
    assert_eq!(err_key("mark = 0"), "mark");
    assert_eq!(err_key("table = \"\""), "table");
    assert_eq!(err_key("table = \"bad name\""), "table");
    assert_eq!(err_key("table = \"1abc\""), "table");
    assert_eq!(err_key("status_socket = \"\""), "status_socket");
    assert_eq!(
        err_key(&format!("status_socket = \"/{}\"", "x".repeat(120))),
        "status_socket"
    );
    assert_eq!(
        err_key("status_group = \"no-such-group-pptp-alg\""),
        "status_group"
    );
    assert_eq!(
        parse("status_group = \"root\"").unwrap().status_group,
        "root"
    );
    assert_eq!(err_key("call_setup_timeout = 0"), "call_setup_timeout");
    assert_eq!(err_key("call_idle_timeout = 0"), "call_idle_timeout");
    assert_eq!(err_key("conn_idle_timeout = 0"), "conn_idle_timeout");
    assert_eq!(err_key("quarantine = 10000000000"), "quarantine");
    assert_eq!(err_key("metrics_listen = \"9723\""), "metrics_listen");
    assert_eq!(
        err_key("metrics_listen = \"localhost:9723\""),
        "metrics_listen"
    );
    assert_eq!(err_key("metrics_textfile = \"/\""), "metrics_textfile");
    assert_eq!(err_key("mark = 0x11723\nmark_mask = 0xffff"), "mark_mask");
    let c = parse("mark = 0x1723\nmark_mask = 0xffff").unwrap();
    assert_eq!(
        (c.rules_config().mark_mask, c.check_config().mark_mask),
        (0xffff, 0xffff)
    );
    let c = parse("metrics_listen = \"[::1]:9723\"").unwrap();
    assert_eq!(c.metrics_addr(), Some("[::1]:9723".parse().unwrap()));
    assert_eq!(Config::default().metrics_addr(), None);
}

#[test]
fn overrides_beat_the_file() {
    let dir = std::env::temp_dir().join(format!("pptp-alg-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "max_calls = 10\noffload = false\nmark = 7\n").unwrap();
    let o = Overrides {
        max_calls: Some(20),
        offload: Some(true),
        ..Overrides::default()
    };
    let c = Config::resolve(Some(&path), &o).unwrap();
    assert_eq!(c.max_calls, 20);
    assert!(c.offload);
    assert_eq!(c.mark, 7);
    let o = Overrides {
        no_offload: true,
        queue_to_inside: Some(1723),
        ..Overrides::default()
    };
    let e = Config::resolve(Some(&path), &o).unwrap_err();
    assert_eq!(e.key(), Some("queue_to_inside"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reload names the keys the file sets that flags override: only those
/// the file sets, and only where the flag's value differs.
#[test]
fn overridden_keys_are_the_files_keys_a_flag_changes() {
    let dir = std::env::temp_dir().join(format!("pptp-alg-ovr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "max_calls = 10\nlog_level = \"warn\"\nmark = 7\n").unwrap();
    let source = ConfigSource {
        path: Some(path.clone()),
        overrides: Overrides {
            log_level: Some(LogLevel::Info),
            mark: Some(7),
            quarantine: Some(5),
            ..Overrides::default()
        },
    };
    assert_eq!(source.overridden_keys(), ["log_level"]);
    assert!(ConfigSource::default().overridden_keys().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::resolve(
        Some(Path::new("/nonexistent/pptp-alg.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pptp-alg.toml"), "{e}");
}

#[test]
fn duplicated_keys_name_the_key_and_line() {
    let e = parse("max_calls = 5\ntable = \"x\"\nmax_calls = 7\n").unwrap_err();
    assert_eq!(e.key(), Some("max_calls"), "{e}");
    assert!(e.to_string().contains("line 3"), "{e}");
    assert!(e.to_string().contains("duplicate key"), "{e}");
    assert_eq!(err_key("[extra]\nx = 1\n[extra]\ny = 2\n"), "extra");
}

#[test]
fn out_of_range_numbers_name_the_key() {
    // Too large for any integer type toml knows: the whole document fails.
    let e = parse("offload = true\nmax_connections = 99999999999999999999\n").unwrap_err();
    assert_eq!(e.key(), Some("max_connections"), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    // Fits the type, but no router holds that many calls or connections.
    for key in ["max_calls", "max_calls_per_host", "max_connections"] {
        assert_eq!(err_key(&format!("{key} = 1000000000000")), key);
        assert_eq!(err_key(&format!("{key} = 1048577")), key);
        parse(&format!("{key} = 1048576")).unwrap();
    }
}

/// A file in a directory of its own: tests run in parallel, and
/// `overrides_beat_the_file` removes its directory when done.
fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pptp-alg-cfg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn remove_temp(path: &Path) {
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn oversized_files_are_refused_unread() {
    let limit = pptp_alg::daemon::config::MAX_CONFIG_BYTES as usize;
    // Comments up to the limit are still a configuration.
    let path = temp_path("at-limit.toml");
    let mut text = "max_calls = 10\n".to_string();
    text.push_str(&"#".repeat(limit - text.len()));
    std::fs::write(&path, &text).unwrap();
    assert_eq!(Config::load(&path).unwrap().max_calls, 10);
    text.push('#');
    std::fs::write(&path, &text).unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");
    assert!(e.to_string().contains("at-limit.toml"), "{e}");
    remove_temp(&path);

    // Endless: read up to the limit, then refused, at once.
    let t = std::time::Instant::now();
    let e = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn binary_files_are_refused_clearly() {
    let path = temp_path("binary.toml");
    std::fs::write(&path, b"max_calls = 1\n\xff\xfe\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    assert!(e.to_string().contains("binary.toml"), "{e}");
    remove_temp(&path);
}

/// The queue fails closed (the code binds every queue so, see src/nfqueue.rs); the example
/// configuration, the README's key table and `--help` once said it fails open.
#[test]
fn queue_max_len_is_documented_as_fail_closed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/config/pptp-alg.toml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_pptp-alg"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `queue_max_len` |"))
        .expect("README row");
    for (what, text) in [
        ("example", example.as_str()),
        ("README row", row),
        ("--help", &help),
    ] {
        let t = text.to_lowercase();
        assert!(
            !t.contains("fails open") && !t.contains("failing open"),
            "{what}"
        );
        assert!(
            t.contains("fail-closed") || t.contains("fails closed"),
            "{what}"
        );
    }
}

/// A key file with `bytes` and `mode`, for the high-availability keys.
fn key_file(name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = temp_path(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn ha_text(node: &str, key: &Path) -> String {
    format!(
        "ha_node = {node}\nha_listen = \"10.9.0.1\"\nha_peer = \"10.9.0.2:4000\"\n\
         ha_key_file = \"{}\"\nha_address = \"192.0.2.10\"\n",
        key.display()
    )
}

#[test]
fn ha_keys_give_the_node_its_half_of_the_ids() {
    use pptp_alg::alg::IdPartition;
    use pptp_alg::daemon::HaNode;
    let key = key_file("ha-key-ok", b"0123456789abcdef0123\n", 0o600);
    for (node, partition) in [("0", IdPartition::Even), ("1", IdPartition::Odd)] {
        let c = parse(&ha_text(node, &key)).unwrap();
        assert_eq!(c.alg_config(1).id_partition, partition);
        let ha = c.ha_settings().unwrap().unwrap();
        assert_eq!(ha.node, node.parse::<u8>().unwrap());
        assert_eq!(ha.listen.to_string(), "10.9.0.1:1729", "the default port");
        assert_eq!(ha.peer.to_string(), "10.9.0.2:4000");
        assert_eq!(ha.address, Some("192.0.2.10".parse().unwrap()));
        // The trailing newline is not part of the key, and the key never
        // shows in a debug print.
        assert_eq!(ha.key, b"0123456789abcdef0123");
        assert!(!format!("{ha:?}").contains("0123456789"), "{ha:?}");
        // A change of any of them is for a restart.
        for (k, apply) in Config::default().changed_keys(&c) {
            assert!(k.starts_with("ha_"), "{k}");
            assert_eq!(apply, pptp_alg::daemon::Apply::Restart, "{k}");
        }
    }
    // Without ha_node: no pair, every id, as before.
    let c = parse("ha_node = \"none\"").unwrap();
    assert_eq!(c.ha_node, HaNode::None);
    assert_eq!(c.alg_config(1).id_partition, IdPartition::None);
    assert!(c.ha_settings().unwrap().is_none());
    // The flag.
    let o = Overrides {
        ha_node: Some(HaNode::Node(1)),
        ..Overrides::default()
    };
    let mut c = Config::default();
    c.apply(&o);
    assert_eq!(c.ha_node, HaNode::Node(1));
    remove_temp(&key);
}

#[test]
fn ha_keys_missing_or_bad_name_the_key() {
    let key = key_file("ha-key-ok2", b"0123456789abcdef", 0o400);
    let full = ha_text("0", &key);
    // Each of the four needed ones, left out, is named.
    for missing in ["ha_listen", "ha_peer", "ha_key_file"] {
        let text: String = full
            .lines()
            .filter(|l| !l.starts_with(missing))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(err_key(&text), missing);
    }
    let text: String = full.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_eq!(err_key(&text), "ha_node");
    assert_eq!(
        err_key(&full.replace("ha_node = 0", "ha_node = 2")),
        "ha_node"
    );
    assert_eq!(
        err_key(&full.replace("10.9.0.2:4000", "peer.example")),
        "ha_peer"
    );
    assert_eq!(
        err_key(&full.replace("\"10.9.0.1\"", "\"::1\"")),
        "ha_listen"
    );
    assert_eq!(
        err_key(&full.replace("10.9.0.2:4000", "10.9.0.1:1729")),
        "ha_peer"
    );
    assert_eq!(
        err_key(&full.replace("192.0.2.10", "192.0.2.300")),
        "ha_address"
    );
    // The key file: readable by others, too short, absent.
    let open = key_file("ha-key-open", b"0123456789abcdef", 0o644);
    let e = parse(&ha_text("0", &open)).unwrap_err();
    assert_eq!(e.key(), Some("ha_key_file"));
    assert!(
        e.to_string().contains("readable by its group or others"),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let short = key_file("ha-key-short", b"0123456789abcde\n", 0o600);
    let e = parse(&ha_text("0", &short)).unwrap_err();
    assert!(e.to_string().contains("key of 15 bytes"), "{e}");
    let gone = temp_path("ha-key-gone");
    let e = parse(&ha_text("0", &gone)).unwrap_err();
    assert_eq!(e.key(), Some("ha_key_file"));
    assert!(e.to_string().contains("cannot read"), "{e}");
    // A FIFO is refused at once, not waited on.
    let fifo = temp_path("ha-key-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = parse(&ha_text("0", &fifo)).unwrap_err();
    assert!(e.to_string().contains("is not a regular file"), "{e}");
    for p in [key, open, short, gone, fifo] {
        remove_temp(&p);
    }
}

//! `systemd-analyze verify` on the unit, with ExecStart pointed at the
//! binary just built (the installed path need not exist here).
//!
//! Skipped with a message when systemd-analyze is missing, unless
//! `PPTP_ALG_E2E=1` demands that it run.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pptp-alg");

fn unit_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/pptp-alg.service");
    std::fs::read_to_string(path).expect("read systemd/pptp-alg.service")
}

fn analyze_available() -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PPTP_ALG_E2E").as_deref() == Ok("1") {
            panic!("PPTP_ALG_E2E=1 but systemd-analyze is not available");
        }
        println!("skipped: systemd-analyze not found");
    }
    ok
}

#[test]
fn unit_verifies() {
    if !analyze_available() {
        return;
    }
    let text = unit_text().replace("/usr/local/sbin/pptp-alg", BIN);
    let dir = std::env::temp_dir().join(format!("pptp-alg-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("pptp-alg.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on some warnings; an unknown or misplaced setting is a bug.
    for bad in [
        "Unknown key",
        "Unknown section",
        "Failed to parse",
        "ignoring",
    ] {
        assert!(!stderr.contains(bad), "systemd-analyze verify:\n{stderr}");
    }
}

#[test]
fn unit_has_the_required_settings() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/sbin/pptp-alg run --install-rules --config /etc/pptp-alg/pptp-alg.toml",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_NETLINK AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "Restart=on-failure",
        "RuntimeDirectory=pptp-alg",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "missing `{line}` in the unit"
        );
    }
}

#[test]
fn unit_and_status_default_agree() {
    // The unit's RuntimeDirectory is where the daemon puts its socket.
    assert!(pptp_alg::daemon::config::DEFAULT_STATUS_SOCKET.starts_with("/run/pptp-alg/"));
}

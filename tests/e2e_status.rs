//! Read access to the status socket (root only: it runs `pptp-alg status`
//! as another user; no network namespace is needed, the socket lives in a
//! directory of its own under the temp dir). The socket is mode 0660 and
//! belongs to `status_group`: a member reads the report, anyone else is
//! told that the socket is for root and that group, not that the daemon
//! might not be running.
//!
//! Without root the tests print "skipped: needs root" and pass, unless
//! `PPTP_ALG_E2E=1` demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use lab::have_root;
use pptp_alg::daemon::shared::Shared;
use pptp_alg::daemon::status::{Installed, RulesInfo, StatusReport, StatusServer};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pptp-alg");
/// nobody's group on Debian; the test's reader is uid nobody.
const NOGROUP: u32 = 65534;
const NOBODY: u32 = 65534;

/// Runs `pptp-alg status` as `uid`/`gid` from a copy of the binary beside the socket: the
/// build's own directory may be closed to other users (a checkout under `mktemp -d` is
/// mode 0700).
fn status_as(uid: u32, gid: u32, sock: &std::path::Path) -> Output {
    let bin = sock.with_file_name("pptp-alg");
    if !bin.exists() {
        std::fs::copy(BIN, &bin).expect("copy pptp-alg beside the socket");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new(&bin)
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run pptp-alg status")
}

#[test]
fn status_group_members_read_others_get_the_right_hint() {
    if !have_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pptp-alg-e2e-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("status.sock");
    let shared = Shared::new(
        pptp_alg::alg::Alg::new(Default::default()),
        RulesInfo {
            table: "pptp_alg".into(),
            installed: Installed::External,
            queue_backend: None,
        },
    );
    let server = StatusServer::start_with(&sock, Some(NOGROUP), move |_| {
        StatusReport::snapshot(&shared)
    })
    .expect("status socket");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), NOGROUP);

    let member = status_as(NOBODY, NOGROUP, &sock);
    let out = String::from_utf8_lossy(&member.stdout);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["schema"], 1, "{doc:#}");

    // Not in the group: refused by the kernel, and told why.
    let other = status_as(NOBODY, 1, &sock);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("status_group"), "{err}");
    assert!(!err.contains("is pptp-alg running"), "{err}");

    // A socket nobody answers on any more.
    drop(server);
    let gone = status_as(0, 0, &sock);
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("is pptp-alg running?"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

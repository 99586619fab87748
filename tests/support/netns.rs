//! What every root-only test needs, written once: whether it may run
//! ([`have_root`]), running a command that must succeed ([`run`]), and a
//! network namespace that is deleted when dropped ([`Netns`]).
//!
//! Included by path (`#[path = "support/netns.rs"] mod netns;`, or
//! `../support/netns.rs` from `tests/e2e/lab.rs`).

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// True if the test may run; panics if it must run (`PPTP_ALG_E2E=1`) but
/// cannot.
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("PPTP_ALG_E2E").as_deref() == Ok("1") {
        panic!("PPTP_ALG_E2E=1 but not running as root: the namespace tests cannot run");
    }
    println!("skipped: needs root");
    false
}

/// Runs `cmd args`, panics unless it succeeds; returns its standard output.
pub fn run(cmd: &str, args: &[&str]) -> String {
    run_with(cmd, args, None)
}

/// [`run`] with `stdin` as the command's input.
pub fn run_input(cmd: &str, args: &[&str], stdin: &str) -> String {
    run_with(cmd, args, Some(stdin))
}

fn run_with(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if let Some(text) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace (`ip netns add`), with its loopback up; deleted when
/// dropped, also when the test fails.
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Creates namespace `name`, replacing one an earlier, killed run of
    /// the same test left behind.
    pub fn add(name: &str) -> Netns {
        if std::path::Path::new("/run/netns").join(name).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
        run("ip", &["netns", "add", name]);
        let ns = Netns(name.to_string());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        run("ip", &a);
    }

    /// Runs `cmd args` inside the namespace; returns its standard output.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.0, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// A veth pair: `name` here, `peer_name` in `peer`, both down.
    pub fn veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        run(
            "ip",
            &[
                "link", "add", name, "netns", &self.0, "type", "veth", "peer", "name", peer_name,
                "netns", &peer.0,
            ],
        );
    }

    /// Runs `f` on a thread that has entered the namespace (for code that
    /// opens netlink sockets itself).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let h = std::thread::spawn(move || {
            // SAFETY: `fd` is an open namespace file for the whole call.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

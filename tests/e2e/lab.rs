//! A network-namespace lab for the end-to-end tests: a router running
//! `pptp-alg`, LAN hosts each in its own namespace, and one WAN namespace
//! holding the outside addresses. Same topology as `scripts/lab.sh`:
//!
//! ```text
//!   <name>-c1 10.213.1.2 eth0==lan1 --+
//!   <name>-c2 10.213.1.3 eth0==lan2 --+-- <name>-r --wan0==eth0-- <name>-w 10.213.2.2 (.3, .4)
//!   ...                               |   10.213.1.1 / 10.213.2.1
//! ```
//!
//! The router forwards and masquerades `oifname "wan0"` in its own table; the
//! WAN side has no route to the LAN. Every process started here, and every
//! namespace, is removed when the [`Lab`] is dropped, also when a test fails.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../support/netns.rs"]
mod netns;
pub use netns::{have_root, run, run_input, Netns};

pub const ALG: &str = env!("CARGO_BIN_EXE_pptp-alg");
pub const PEER: &str = env!("CARGO_BIN_EXE_pptp-peer");

pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 1);
/// The first WAN address: the PPTP server in most tests.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);
/// The daemon's default mark for translated GRE.
pub const MARK: &str = "0x1723";

/// Upper bound for any peer process; they normally need a few seconds.
const PROC_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for the daemon to get ready or to stop.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a peer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The router.
    Router,
    /// The WAN namespace (all outside addresses).
    Wan,
    /// LAN host `n` (0-based), address 10.213.1.(n+2).
    Lan(usize),
}

/// The address of LAN host `n`.
pub fn lan_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 1, 2 + n as u8)
}

/// The `n`th WAN address (0 is [`SERVER`]).
pub fn wan_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 2, 2 + n as u8)
}

/// A running process whose output is drained by threads, so it never blocks
/// on a full pipe; stderr lines are also forwarded for readiness waits.
pub struct Proc {
    pub what: String,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr_lines: Receiver<String>,
    stderr_all: Arc<Mutex<String>>,
    stderr_done: Option<JoinHandle<()>>,
}

/// What a finished process left.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout as one JSON document.
    pub fn json(&self, what: &str) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{what}: stdout is not one JSON object ({e}): {:?}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The stdout as one JSON document per line.
    pub fn json_lines(&self, what: &str) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{what}: bad JSON line {l:?}: {e}"))
            })
            .collect()
    }
}

impl Proc {
    /// Starts `cmd` with no input; its stdout is collected and its stderr
    /// drained line by line (kept whole and forwarded for [`Proc::wait_line`]).
    pub fn start(what: String, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, stderr_lines) = mpsc::channel();
        let stderr_all = Arc::new(Mutex::new(String::new()));
        let all = stderr_all.clone();
        let stderr_done = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                {
                    let mut a = all.lock().unwrap_or_else(|p| p.into_inner());
                    a.push_str(&line);
                    a.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Proc {
            what,
            child,
            stdout: Some(stdout),
            stderr_lines,
            stderr_all,
            stderr_done: Some(stderr_done),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr the process has written so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for a stderr line containing `needle`; panics after `timeout`
    /// or if the process ends first.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line with {needle:?} within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(100));
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} ended ({status:?}) before printing {needle:?}; stderr:\n{}",
                        self.what,
                        self.stderr_so_far()
                    )
                }
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (killing it after `timeout`) and collects its output.
    pub fn finish_within(&mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if let Some(h) = self.stderr_done.take() {
            let _ = h.join();
        }
        Output {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr_so_far(),
        }
    }

    /// Sends `sig` if the process still runs.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            // SAFETY: plain syscall on a child we started and have not reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// SIGKILL if it still runs, then reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The lab; see the module documentation.
pub struct Lab {
    pub name: String,
    pub router: Netns,
    pub wan: Netns,
    pub lan: Vec<Netns>,
    dir: PathBuf,
    procs: Vec<Proc>,
    daemon: Option<usize>,
}

/// Index of a process started in a [`Lab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pid(usize);

impl Lab {
    /// Creates the namespaces for test `case` with `lan_hosts` LAN hosts and
    /// `wan_addrs` outside addresses (at least one, the server's).
    pub fn new(case: &str, lan_hosts: usize, wan_addrs: usize) -> Lab {
        assert!(wan_addrs >= 1 && lan_hosts <= 50);
        let name = format!("pptpe2e-{}-{case}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let lab = Lab {
            router: Netns::add(&format!("{name}-r")),
            wan: Netns::add(&format!("{name}-w")),
            lan: (1..=lan_hosts)
                .map(|i| Netns::add(&format!("{name}-c{i}")))
                .collect(),
            name,
            dir,
            procs: Vec::new(),
            daemon: None,
        };
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            lab.exec(Host::Router, "sysctl", &["-qw", s]);
        }
        // Interface names are created directly inside their namespaces, so the
        // same short names serve every lab.
        lab.router.veth("wan0", &lab.wan, "eth0");
        lab.ip(
            Host::Router,
            &["addr", "add", &format!("{ROUTER_WAN}/24"), "dev", "wan0"],
        );
        lab.ip(Host::Router, &["link", "set", "wan0", "up"]);
        for i in 0..wan_addrs {
            lab.ip(
                Host::Wan,
                &["addr", "add", &format!("{}/24", wan_addr(i)), "dev", "eth0"],
            );
        }
        lab.ip(Host::Wan, &["link", "set", "eth0", "up"]);
        for i in 0..lan_hosts {
            let ifname = format!("lan{}", i + 1);
            lab.router.veth(&ifname, &lab.lan[i], "eth0");
            lab.ip(
                Host::Router,
                &["addr", "add", &format!("{ROUTER_LAN}/32"), "dev", &ifname],
            );
            lab.ip(Host::Router, &["link", "set", &ifname, "up"]);
            lab.ip(
                Host::Router,
                &[
                    "route",
                    "add",
                    &format!("{}/32", lan_addr(i)),
                    "dev",
                    &ifname,
                    "src",
                    &ROUTER_LAN.to_string(),
                ],
            );
            lab.ip(
                Host::Lan(i),
                &["addr", "add", &format!("{}/24", lan_addr(i)), "dev", "eth0"],
            );
            lab.ip(Host::Lan(i), &["link", "set", "eth0", "up"]);
            lab.ip(
                Host::Lan(i),
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &ROUTER_LAN.to_string(),
                    "dev",
                    "eth0",
                    "onlink",
                ],
            );
        }
        lab.nft(
            "table ip lab_nat {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"wan0\" masquerade\n\
             \t}\n\
             }\n",
        );
        lab
    }

    pub fn ns(&self, h: Host) -> &str {
        match h {
            Host::Router => self.router.name(),
            Host::Wan => self.wan.name(),
            Host::Lan(i) => self.lan[i].name(),
        }
    }

    /// Runs a command to completion in a namespace; panics if it fails.
    pub fn exec(&self, h: Host, cmd: &str, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.ns(h), cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    pub fn ip(&self, h: Host, args: &[&str]) {
        let mut a = vec!["-n", self.ns(h)];
        a.extend_from_slice(args);
        run("ip", &a);
    }

    /// Runs a command to completion in a namespace and returns what it left,
    /// failing or not.
    pub fn try_exec(&self, h: Host, cmd: &str, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns(h), cmd])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Loads an nft script in the router.
    pub fn nft(&self, script: &str) {
        run_input(
            "ip",
            &["netns", "exec", self.router.name(), "nft", "-f", "-"],
            script,
        );
    }

    /// Whether the router has table `ip <name>`.
    pub fn router_has_table(&self, name: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.router.name(),
                "nft",
                "list",
                "table",
                "ip",
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// GRE packets the kernel fast path translated for the calls now in its
    /// map (the sum of the `gre_daddr` element counters); 0 without the table.
    pub fn fast_path_packets(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.router.name(),
                "nft",
                "list",
                "map",
                "ip",
                "pptp_alg",
            ])
            .arg("gre_daddr")
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }

    /// The addresses in the router's set `ip pptp_alg local_addrs` (the fast path's test
    /// for "addressed to this router").
    pub fn local_addrs(&self) -> BTreeSet<Ipv4Addr> {
        let text = self.exec(
            Host::Router,
            "nft",
            &["list", "set", "ip", "pptp_alg", "local_addrs"],
        );
        match text.find("elements") {
            Some(i) => text[i..]
                .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '='))
                .filter_map(|w| w.parse().ok())
                .collect(),
            None => BTreeSet::new(),
        }
    }

    /// The router's IPv4 interface addresses, as `ip -4 addr` lists them.
    pub fn router_addrs(&self) -> BTreeSet<Ipv4Addr> {
        let text = self.exec(Host::Router, "ip", &["-4", "-o", "addr", "show"]);
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "inet")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// Waits until the router's set of local addresses satisfies `pred`; returns how long
    /// that took, and panics (with the daemon's log) after `timeout`.
    pub fn wait_local_addrs(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeSet<Ipv4Addr>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let set = self.local_addrs();
            if pred(&set) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "set local_addrs never showed {what} within {timeout:?}: {set:?}\nlog:\n{}",
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Adds a port forward of tcp/1723 from the WAN to LAN host `n`.
    pub fn port_forward_to(&self, n: usize) {
        self.nft(&format!(
            "table ip lab_dnat {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"wan0\" tcp dport 1723 dnat to {}\n\
             \t}}\n\
             }}\n",
            lan_addr(n)
        ));
    }

    /// Installs (or replaces) a strict forward firewall: drop unless
    /// established/related or new from the LAN; with `mark_rule`, also the
    /// one rule the README gives for translated GRE.
    pub fn strict_firewall(&self, mark_rule: bool) {
        if self.router_has_table("lab_fw") {
            self.nft("delete table ip lab_fw\n");
        }
        let mark = if mark_rule {
            format!("\t\tmeta mark {MARK} accept\n")
        } else {
            String::new()
        };
        self.nft(&format!(
            "table ip lab_fw {{\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy drop;\n\
             \t\tct state established,related accept\n\
             {mark}\
             \t\tiifname \"lan*\" oifname \"wan0\" ct state new accept\n\
             \t\tcounter comment \"dropped\"\n\
             \t}}\n\
             }}\n"
        ));
    }

    /// Packets the strict firewall dropped so far.
    pub fn firewall_drops(&self) -> u64 {
        let text = self.exec(
            Host::Router,
            "nft",
            &["list", "chain", "ip", "lab_fw", "forward"],
        );
        let line = text
            .lines()
            .find(|l| l.contains("comment \"dropped\""))
            .expect("counter rule");
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                return words.next().and_then(|n| n.parse().ok()).expect("count");
            }
        }
        panic!("no packet count in {line:?}")
    }

    /// Starts a process inside a namespace.
    pub fn spawn(&mut self, h: Host, what: &str, program: &str, args: &[&str]) -> Pid {
        let ns = self.ns(h).to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, program]).args(args);
        if program == PEER {
            cmd.env("RUST_LOG", "info");
        } else {
            cmd.env_remove("RUST_LOG");
        }
        self.procs.push(Proc::start(format!("{what} in {ns}"), cmd));
        Pid(self.procs.len() - 1)
    }

    /// The stderr a process has written so far.
    pub fn stderr_so_far(&self, p: Pid) -> String {
        self.procs[p.0].stderr_so_far()
    }

    /// Waits for a stderr line containing `needle`; panics after `timeout`
    /// or if the process ends first.
    pub fn wait_line(&mut self, p: Pid, needle: &str, timeout: Duration) -> String {
        self.procs[p.0].wait_line(needle, timeout)
    }

    pub fn is_running(&mut self, p: Pid) -> bool {
        self.procs[p.0].is_running()
    }

    /// Waits for a process to exit (killing it after `timeout`) and collects its output.
    pub fn finish_within(&mut self, p: Pid, timeout: Duration) -> Output {
        self.procs[p.0].finish_within(timeout)
    }

    pub fn finish(&mut self, p: Pid) -> Output {
        self.finish_within(p, PROC_TIMEOUT)
    }

    /// Sends SIGTERM to a process we started.
    pub fn terminate(&mut self, p: Pid) {
        let pid = self.procs[p.0].child.id() as libc::pid_t;
        if self.is_running(p) {
            // `ip netns exec` execs the program, so this pid is the program itself.
            // SAFETY: plain syscall on a child we started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    // ---- the daemon -------------------------------------------------------

    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("status.sock")
    }

    /// Starts `pptp-alg run --install-rules` in the router and waits until
    /// it reports ready.
    pub fn start_daemon(&mut self, extra: &[&str]) -> Pid {
        self.start_daemon_with(true, extra)
    }

    /// Starts `pptp-alg run` on rules loaded by someone else (here `pptp-alg
    /// rules install`, as an admin would with `nft -f`): an unowned table
    /// that outlives the daemon. Loads them first if they are not there.
    pub fn start_daemon_on_external_rules(&mut self, extra: &[&str]) -> Pid {
        if !self.router_has_table("pptp_alg") {
            self.exec(Host::Router, ALG, &["rules", "install"]);
        }
        self.start_daemon_with(false, extra)
    }

    /// Forgets the calls the daemon saved, as if it died before saving them.
    pub fn forget_saved_calls(&self) {
        let _ = std::fs::remove_file(self.dir.join("state.json"));
    }

    /// The pid of the running daemon.
    pub fn daemon_pid(&self) -> u32 {
        self.procs[self.daemon().0].child.id()
    }

    fn start_daemon_with(&mut self, install_rules: bool, extra: &[&str]) -> Pid {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let sock = self.status_socket();
        let _ = std::fs::remove_file(&sock);
        let sock = sock.to_str().expect("utf-8 path").to_string();
        let state = self.dir.join("state.json");
        let state = state.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["run"];
        if install_rules {
            args.push("--install-rules");
        }
        args.extend([
            "--status-socket",
            &sock,
            "--state-file",
            &state,
            "--log-level",
            "info",
        ]);
        args.extend_from_slice(extra);
        let p = self.spawn(Host::Router, "pptp-alg", ALG, &args);
        self.daemon = Some(p.0);
        self.wait_line(p, "ready:", DAEMON_TIMEOUT);
        // The status socket is served right after the ready line is logged.
        self.wait_status(Duration::from_secs(5), "the status socket", |_| true);
        p
    }

    pub fn daemon(&self) -> Pid {
        Pid(self.daemon.expect("no daemon started"))
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        self.stderr_so_far(self.daemon())
    }

    /// Stops the daemon with SIGTERM; returns its exit code and whole log.
    pub fn stop_daemon(&mut self) -> Output {
        let p = self.daemon();
        self.terminate(p);
        let out = self.finish_within(p, DAEMON_TIMEOUT);
        self.daemon = None;
        out
    }

    /// Kills the daemon with SIGKILL, as a crash would: it cannot clean up.
    pub fn kill_daemon(&mut self) -> Output {
        let p = self.daemon();
        let proc = &mut self.procs[p.0];
        let _ = proc.child.kill();
        let out = self.finish_within(p, DAEMON_TIMEOUT);
        self.daemon = None;
        out
    }

    /// `pptp-alg status --json`, or the error text.
    pub fn try_status(&self) -> Result<Value, String> {
        let out = Command::new(ALG)
            .args(["status", "--json", "--socket"])
            .arg(self.status_socket())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("pptp-alg status failed: {e}\nlog:\n{}", self.daemon_log()))
    }

    /// Polls the status until `pred` holds; panics after `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Err(String::from("never asked"));
        while Instant::now() < deadline {
            last = self.try_status();
            if let Ok(v) = &last {
                if pred(v) {
                    return v.clone();
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        let log = self
            .daemon
            .map(|d| self.stderr_so_far(Pid(d)))
            .unwrap_or_default();
        panic!("status never showed {what} within {timeout:?}; last: {last:?}\nlog:\n{log}")
    }

    /// Waits until the daemon shows `n` established calls and returns that status.
    pub fn wait_established(&self, n: usize) -> Value {
        self.wait_status(
            Duration::from_secs(10),
            &format!("{n} established calls"),
            |v| established(v).len() == n,
        )
    }

    /// Waits until the daemon has no live call.
    pub fn wait_no_calls(&self) -> Value {
        self.wait_status(Duration::from_secs(10), "no live calls", |v| {
            v["calls"].as_array().is_some_and(Vec::is_empty)
        })
    }

    // ---- peers --------------------------------------------------------------

    /// Starts `pptp-peer server` on `bind` in `h` and waits until it listens.
    pub fn server(&mut self, h: Host, bind: Ipv4Addr, extra: &[&str]) -> Pid {
        let bind = bind.to_string();
        let mut args = vec!["server", "--bind", &bind, "--duration", "90"];
        args.extend_from_slice(extra);
        let p = self.spawn(h, "pptp-peer server", PEER, &args);
        self.wait_line(p, "listening on", Duration::from_secs(10));
        p
    }

    /// Stops a server and returns its summary.
    pub fn stop_server(&mut self, p: Pid) -> Value {
        self.terminate(p);
        let out = self.finish(p);
        assert_eq!(out.code, 0, "server failed:\n{}", out.stderr);
        out.json("server")
    }

    /// Starts `pptp-peer client --server S --bind B --tag T EXTRA` in `h`.
    pub fn client(
        &mut self,
        h: Host,
        server: Ipv4Addr,
        bind: Ipv4Addr,
        tag: &str,
        extra: &[&str],
    ) -> Pid {
        let (server, bind) = (server.to_string(), bind.to_string());
        let mut args = vec![
            "client",
            "--server",
            &server,
            "--bind",
            &bind,
            "--tag",
            tag,
            "--timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        self.spawn(h, &format!("pptp-peer client {tag}"), PEER, &args)
    }

    /// Waits for a client that must succeed and returns its summary.
    pub fn client_ok(&mut self, p: Pid, tag: &str) -> Value {
        let out = self.finish(p);
        let v = out.json(tag);
        assert_eq!(
            out.code,
            0,
            "client {tag} failed: {v}\n{}\ndaemon log:\n{}",
            out.stderr,
            self.daemon
                .map(|d| self.stderr_so_far(Pid(d)))
                .unwrap_or_default()
        );
        v
    }

    /// Starts `pptp-peer gre-recv` in `h` and waits until it listens.
    pub fn gre_recv(&mut self, h: Host, bind: Option<Ipv4Addr>, secs: f64) -> Pid {
        self.gre_recv_args(h, bind, secs, None)
    }

    /// Like [`Lab::gre_recv`], but ends after `count` packets.
    pub fn gre_recv_count(
        &mut self,
        h: Host,
        bind: Option<Ipv4Addr>,
        secs: f64,
        count: u64,
    ) -> Pid {
        self.gre_recv_args(h, bind, secs, Some(count))
    }

    fn gre_recv_args(
        &mut self,
        h: Host,
        bind: Option<Ipv4Addr>,
        secs: f64,
        count: Option<u64>,
    ) -> Pid {
        let secs = secs.to_string();
        let bind = bind.map(|b| b.to_string());
        let count = count.map(|c| c.to_string());
        let mut args = vec!["gre-recv", "--duration", &secs];
        if let Some(b) = &bind {
            args.extend(["--bind", b]);
        }
        if let Some(c) = &count {
            args.extend(["--count", c]);
        }
        let p = self.spawn(h, "pptp-peer gre-recv", PEER, &args);
        self.wait_line(p, "listening", Duration::from_secs(10));
        p
    }

    /// Runs `pptp-peer gre-send` from the server's address on the WAN side
    /// to completion.
    pub fn gre_send_from_server(
        &mut self,
        to: Ipv4Addr,
        call_id: u16,
        payload: &str,
        count: u32,
        extra: &[&str],
    ) {
        let (from, to) = (SERVER.to_string(), to.to_string());
        let (id, count) = (call_id.to_string(), count.to_string());
        let mut args = vec![
            "gre-send",
            "--bind",
            &from,
            "--to",
            &to,
            "--call-id",
            &id,
            "--payload",
            payload,
            "--count",
            &count,
        ];
        args.extend_from_slice(extra);
        let p = self.spawn(Host::Wan, "pptp-peer gre-send", PEER, &args);
        let out = self.finish(p);
        assert_eq!(out.code, 0, "gre-send failed: {}{}", out.stdout, out.stderr);
    }

    /// Sends one GRE packet from address `from` in `h` to `to`.
    pub fn gre_send_as(
        &mut self,
        h: Host,
        from: Ipv4Addr,
        to: Ipv4Addr,
        call_id: u16,
        payload: &str,
    ) {
        let (from, to, id) = (from.to_string(), to.to_string(), call_id.to_string());
        let args = [
            "gre-send",
            "--bind",
            &from,
            "--to",
            &to,
            "--call-id",
            &id,
            "--payload",
            payload,
        ];
        let p = self.spawn(h, "pptp-peer gre-send", PEER, &args);
        let out = self.finish(p);
        assert_eq!(out.code, 0, "gre-send failed: {}{}", out.stdout, out.stderr);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The daemon first, politely, so that it removes its table; then the rest.
        if let Some(d) = self.daemon {
            let p = &mut self.procs[d];
            if let Ok(None) = p.child.try_wait() {
                // SAFETY: plain syscall on a child we started and have not reaped.
                unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        // The namespaces go with the fields, after this.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- reading summaries and status --------------------------------------------

pub fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// The established calls of a status document.
pub fn established(status: &Value) -> Vec<&Value> {
    status["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["state"] == "established")
        .collect()
}

/// A named counter of a status document.
pub fn stat(status: &Value, name: &str) -> u64 {
    u64_of(&status["stats"][name])
}

/// The status row of the call of `inside_host` with `inside_id`.
pub fn call_row(status: &Value, inside_host: Ipv4Addr, inside_id: u64) -> &Value {
    status["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| {
            c["inside_host"] == inside_host.to_string() && u64_of(&c["inside_id"]) == inside_id
        })
        .unwrap_or_else(|| panic!("no call {inside_host}:{inside_id} in {status:#}"))
}

/// The payloads of every GRE packet a client (or gre-recv) received.
pub fn payloads(v: &Value) -> Vec<String> {
    v["gre_received"]
        .as_array()
        .expect("gre_received")
        .iter()
        .map(|g| g["payload"].as_str().expect("payload").to_string())
        .collect()
}

/// The echoes a client must get for its own calls: "echo:<tag>:call<id>:<seq>".
pub fn own_echoes(tag: &str, v: &Value) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for c in v["calls"].as_array().expect("calls") {
        let own = u64_of(&c["own_id"]);
        for seq in 0..u64_of(&c["gre_sent"]) {
            want.insert(format!("echo:{tag}:call{own}:{seq}"));
        }
    }
    want
}

/// Checks one client's summary: `calls` calls connected, `gre_count` GRE
/// sent on each, and it received exactly the echoes of its own payloads,
/// each once, and nothing else.
pub fn assert_exactly_own_echoes(tag: &str, v: &Value, calls: usize, gre_count: u64) {
    assert_eq!(v["ok"], Value::Bool(true), "{tag}: {v}");
    let cs = v["calls"].as_array().expect("calls");
    assert_eq!(cs.len(), calls, "{tag}: {v}");
    for c in cs {
        assert!(c["peer_id"].is_u64(), "{tag}: call without server id: {c}");
        assert_eq!(u64_of(&c["result"]), 1, "{tag}: {c}");
        assert_eq!(u64_of(&c["gre_sent"]), gre_count, "{tag}: {c}");
    }
    let got = payloads(v);
    let want = own_echoes(tag, v);
    assert_eq!(want.len(), calls * gre_count as usize);
    let mut sorted = got.clone();
    sorted.sort();
    let want_sorted: Vec<String> = want.into_iter().collect();
    assert_eq!(
        sorted, want_sorted,
        "{tag} must receive exactly its own echoes, each once"
    );
    for g in v["gre_received"].as_array().expect("gre") {
        // The echo of call N carries call id N: the NAT id was translated back.
        let payload = g["payload"].as_str().expect("payload");
        let id: u64 = payload
            .split(':')
            .nth(2)
            .and_then(|s| s.strip_prefix("call"))
            .and_then(|s| s.parse().ok())
            .expect("call id in payload");
        assert_eq!(u64_of(&g["call_id"]), id, "{tag}: {g}");
    }
}

/// One client as seen from both ends.
pub struct ClientRun<'a> {
    pub tag: &'a str,
    pub summary: &'a Value,
    /// The address the server sees the client's control connection and GRE coming from.
    pub seen_from: Ipv4Addr,
}

/// Checks the server's view of masqueraded (or port-forwarded) clients: one
/// server call per client call, whose peer id is the NAT id the daemon gave
/// that call (found in `status`, taken while the calls were up), and which
/// received exactly that client call's GRE. With `inside_server` the server is
/// the inside host and the clients the outside peers.
pub fn assert_server_view(
    server: &Value,
    status: &Value,
    clients: &[ClientRun<'_>],
    inside_server: Option<Ipv4Addr>,
) {
    assert_eq!(
        server["errors"].as_array().map(Vec::len),
        Some(0),
        "server errors: {server}"
    );
    assert_eq!(
        server["unknown_gre"].as_array().map(Vec::len),
        Some(0),
        "server got GRE for no call: {server}"
    );
    let calls = server["calls"].as_array().expect("calls");
    let want: usize = clients
        .iter()
        .map(|c| c.summary["calls"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(calls.len(), want, "server calls: {server}");
    for cl in clients {
        let local = cl.summary["local"]
            .as_str()
            .and_then(|l| l.split(':').next())
            .expect("local");
        let local: Ipv4Addr = local.parse().expect("address");
        for cc in cl.summary["calls"].as_array().expect("calls") {
            let own = u64_of(&cc["own_id"]);
            let sid = u64_of(&cc["peer_id"]);
            let (sc, nat_seen_by_server) = match inside_server {
                None => {
                    // Inside client: the server knows the call by the NAT id.
                    let row = call_row(status, local, own);
                    assert_eq!(row["outside_peer"], SERVER.to_string(), "{row}");
                    assert_eq!(u64_of(&row["outside_id"]), sid, "{row}");
                    let sc = calls
                        .iter()
                        .find(|s| u64_of(&s["own_id"]) == sid)
                        .unwrap_or_else(|| panic!("no server call {sid}: {server}"));
                    (sc, u64_of(&row["nat_id"]))
                }
                Some(srv) => {
                    // Inside server: the client knows the server's call by the NAT id.
                    let row = status["calls"]
                        .as_array()
                        .expect("calls")
                        .iter()
                        .find(|c| {
                            c["outside_peer"] == local.to_string()
                                && c["outside_id"].as_u64() == Some(own)
                        })
                        .unwrap_or_else(|| panic!("no call of {local}:{own} in {status:#}"));
                    assert_eq!(row["inside_host"], srv.to_string(), "{row}");
                    assert_eq!(u64_of(&row["nat_id"]), sid, "{row}");
                    let inside_id = u64_of(&row["inside_id"]);
                    let sc = calls
                        .iter()
                        .find(|s| u64_of(&s["own_id"]) == inside_id)
                        .unwrap_or_else(|| panic!("no server call {inside_id}: {server}"));
                    (sc, own)
                }
            };
            assert_eq!(u64_of(&sc["peer_id"]), nat_seen_by_server, "{sc}");
            assert_eq!(sc["peer_addr"], cl.seen_from.to_string(), "{sc}");
            let got: BTreeSet<String> = sc["gre_received"]
                .as_array()
                .expect("gre")
                .iter()
                .map(|g| {
                    assert_eq!(g["from"], cl.seen_from.to_string(), "{g}");
                    g["payload"].as_str().expect("payload").to_string()
                })
                .collect();
            let want: BTreeSet<String> = (0..u64_of(&cc["gre_sent"]))
                .map(|s| format!("{}:call{own}:{s}", cl.tag))
                .collect();
            assert_eq!(got, want, "server call for {}:call{own}", cl.tag);
        }
    }
}
/// The port-forward case: two outside clients (WAN addresses 1 and 2, tags `out1` and
/// `out2`, both with `client_args`, which give `gre_count` echoes and the same Call ID)
/// call the server `srv` at LAN host 0 through the router's public address. Asserts that
/// both calls come up on distinct NAT ids for that one inside host, that each client gets
/// exactly its own echoes, and that the server sees each client from its own address.
/// Returns the status with both calls up.
pub fn two_outside_clients_through_port_forward(
    lab: &mut Lab,
    srv: Pid,
    client_args: &[&str],
    gre_count: u64,
) -> Value {
    let tags = ["out1", "out2"];
    let pids: Vec<Pid> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| lab.client(Host::Wan, ROUTER_WAN, wan_addr(i + 1), tag, client_args))
        .collect();
    let up = lab.wait_established(2);
    assert_distinct_nat_ids(&up, 2);
    for c in up["calls"].as_array().expect("calls") {
        assert_eq!(c["inside_host"], lan_addr(0).to_string(), "{c}");
    }
    let vs: Vec<Value> = pids
        .into_iter()
        .zip(tags)
        .map(|(p, t)| lab.client_ok(p, t))
        .collect();
    for (tag, v) in tags.iter().zip(&vs) {
        assert_exactly_own_echoes(tag, v, 1, gre_count);
    }
    let server = lab.stop_server(srv);
    let runs: Vec<ClientRun> = tags
        .iter()
        .zip(&vs)
        .enumerate()
        .map(|(i, (tag, v))| ClientRun {
            tag,
            summary: v,
            seen_from: wan_addr(i + 1),
        })
        .collect();
    assert_server_view(&server, &up, &runs, Some(lan_addr(0)));
    up
}

/// NAT ids of the live calls must be distinct per outside peer.
pub fn assert_distinct_nat_ids(status: &Value, n: usize) {
    let calls = status["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), n, "{status:#}");
    let ids: BTreeSet<(String, u64)> = calls
        .iter()
        .map(|c| {
            (
                c["outside_peer"].as_str().expect("peer").to_string(),
                u64_of(&c["nat_id"]),
            )
        })
        .collect();
    assert_eq!(ids.len(), n, "NAT ids must be distinct: {status:#}");
}

// ---- many calls (tests/e2e_scale.rs) ----------------------------------------

impl Lab {
    /// Sends `sig` to a process we started (e.g. SIGUSR1 to a client holding
    /// its calls with `--until-signal`).
    pub fn signal(&mut self, p: Pid, sig: libc::c_int) {
        if self.is_running(p) {
            let pid = self.procs[p.0].child.id() as libc::pid_t;
            // SAFETY: plain syscall on a child we started and have not reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits until every process in `ps` has written a stderr line containing
    /// `needle`. Returns the processes that ended without writing it (empty if
    /// all wrote it); panics after `timeout`.
    pub fn wait_line_all(&mut self, ps: &[Pid], needle: &str, timeout: Duration) -> Vec<Pid> {
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<Pid> = ps
                .iter()
                .copied()
                .filter(|&p| !self.stderr_so_far(p).contains(needle))
                .collect();
            if pending.is_empty() {
                return pending;
            }
            let ended: Vec<Pid> = pending
                .iter()
                .copied()
                .filter(|&p| !self.is_running(p))
                .collect();
            if !ended.is_empty() {
                return ended;
            }
            if Instant::now() > deadline {
                let mut msg = String::new();
                for p in pending {
                    msg.push_str(&format!(
                        "{}:\n{}\n",
                        self.procs[p.0].what,
                        self.stderr_so_far(p)
                    ));
                }
                panic!("no line with {needle:?} within {timeout:?} from:\n{msg}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---- hairpin NAT (tests/e2e_hairpin.rs) ---------------------------------------

impl Lab {
    /// The administrator's hairpin pair of the README (OpenWrt's "NAT loopback" shape):
    /// LAN hosts dialing the router's public address (`ROUTER_WAN`) on tcp/1723 reach LAN
    /// host `server`, masqueraded to the router's LAN address so the server answers through
    /// the router.
    pub fn hairpin_to(&self, server: usize) {
        let s = lan_addr(server);
        self.nft(&format!(
            "table ip lab_hairpin {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"lan*\" ip daddr {ROUTER_WAN} tcp dport 1723 dnat to {s}\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"lan*\" ip saddr 10.213.1.0/24 ip daddr {s} tcp dport 1723 masquerade\n\
             \t}}\n\
             }}\n"
        ));
    }

    /// Masquerades tcp/1723 towards LAN host `n` (a port forward that the server answers
    /// through the router without a route back to the clients).
    pub fn masquerade_to(&self, n: usize) {
        self.nft(&format!(
            "table ip lab_fwd_masq {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"lan*\" ip daddr {} tcp dport 1723 masquerade\n\
             \t}}\n\
             }}\n",
            lan_addr(n)
        ));
    }
}

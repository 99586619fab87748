//! A keepalived router pair for the failover tests (issue 10), built from
//! the files of `examples/ha/` as they are:
//!
//! ```text
//!   c1 .11 ─┐                     ┌─ lan0 r1 wan0 ─┐
//!   c2 .12 ─┼─ lansw (bridge) ────┤   sync0 │      ├── wansw (bridge) ── srv 203.0.113.10
//!   c3 .13 ─┘  192.168.10.0/24    │  syncsw │      │   203.0.113.0/24
//!                                 └─ lan0 r2 wan0 ─┘
//! ```
//!
//! Each router is a network namespace and a mount namespace of its own, with
//! a private `/run` and an overlay on `/etc` (so keepalived, conntrackd and
//! pptp-alg use their default paths, as on a real router, and the host's
//! files are never touched); the example files are copied into that `/etc`.
//! A router can crash (links down, every process of its mount namespace
//! killed, its namespace gone) and boot again empty. Everything is removed
//! when the [`Pair`] is dropped, also when a test fails.

use std::io;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{Netns, Proc, ALG, PEER};
use crate::peer::ctl::{Control, Segmentation};
use crate::peer::gre::{self, GreOut, RawGre};
use crate::peer::msg::{self, ty, Msg};

/// The files a router pair is configured with (README: High availability).
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ha");

/// The LAN gateway address keepalived moves.
pub const LAN_VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// The public address keepalived moves (snat target, pptp-alg's ha_address).
pub const WAN_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The PPTP server on the WAN.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Inside client `i` (0-based).
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 10, 11 + i as u8)
}

const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// One router of the pair.
pub struct Router {
    /// "r1" or "r2": keepalived's `-i` and the suffix of its example files.
    pub id: &'static str,
    ns: Option<Netns>,
    /// The process holding the router's mount namespace.
    anchor: Option<Proc>,
    daemons: Vec<(&'static str, Proc)>,
    dir: PathBuf,
}

/// The pair, its two segments and the hosts on them.
pub struct Pair {
    prefix: String,
    pub routers: [Router; 2],
    pub clients: Vec<Netns>,
    pub server_ns: Netns,
    server: Option<Proc>,
    key: Vec<u8>,
    replicate: bool,
    /// Ordered so that the switches go last.
    switches: [Netns; 3],
}

impl Pair {
    /// Creates the switches and hosts, boots both routers (no daemons yet)
    /// and starts the PPTP server. Without `replicate` the routers' pptp-alg
    /// configuration lacks its `ha_` keys.
    pub fn new(case: &str, clients: usize, replicate: bool) -> Pair {
        let prefix = format!("pf{}-{case}", std::process::id());
        let sw = |s: &str| {
            let ns = Netns::add(&format!("{prefix}-{s}"));
            // No IGMP snooping: VRRP multicast must reach every port at once.
            ns.ip(&[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
            ns.ip(&["link", "set", "br0", "up"]);
            ns
        };
        let switches = [sw("lansw"), sw("wansw"), sw("syncsw")];
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let router = |id| Router {
            id,
            ns: None,
            anchor: None,
            daemons: Vec::new(),
            dir: dir.join(id),
        };
        let mut pair = Pair {
            routers: [router("r1"), router("r2")],
            clients: Vec::new(),
            server_ns: Netns::add(&format!("{prefix}-srv")),
            server: None,
            key: (0..32).map(|i| (i * 37 + 11) as u8).collect(),
            replicate,
            switches,
            prefix,
        };
        for i in 0..clients {
            let ns = Netns::add(&format!("{}-c{}", pair.prefix, i + 1));
            pair.plug(&ns, "eth0", 0, &format!("c{}", i + 1));
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", client_addr(i)),
                "dev",
                "eth0",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &LAN_VIP.to_string()]);
            pair.clients.push(ns);
        }
        pair.plug(&pair.server_ns, "eth0", 1, "srv");
        pair.server_ns
            .ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "eth0"]);
        pair.server_ns.ip(&["link", "set", "eth0", "up"]);
        for r in 0..2 {
            pair.boot(r);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", pair.server_ns.name(), PEER])
            .args(["server", "--bind", &SERVER.to_string(), "--duration", "120"])
            .env("RUST_LOG", "info");
        let mut srv = Proc::start("pptp-peer server".into(), cmd);
        srv.wait_line("listening on", Duration::from_secs(10));
        pair.server = Some(srv);
        pair
    }

    /// A veth from `ns`'s `ifname` into switch `sw` (0 LAN, 1 WAN, 2 sync).
    fn plug(&self, ns: &Netns, ifname: &str, sw: usize, port: &str) {
        let port = format!("{port}-{ifname}");
        // A crashed router's namespace is deleted in the background: the
        // switch port of its earlier run may still be there at a reboot.
        let switch = self.switches[sw].name();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("ip")
            .args(["-n", switch, "link", "del", &port])
            .output()
            .is_ok_and(|o| o.status.success())
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        ns.veth(ifname, &self.switches[sw], &port);
        self.switches[sw].ip(&["link", "set", &port, "master", "br0", "up"]);
    }

    /// The switch port of router `r`'s interface `ifname`.
    pub fn port(&self, r: usize, ifname: &str) -> String {
        format!("{}-{ifname}", self.routers[r].id)
    }

    /// Takes switch port of router `r`'s `ifname` (lan0, wan0, sync0) down or up:
    /// a cable pulled and plugged back in.
    pub fn set_cable(&self, r: usize, ifname: &str, up: bool) {
        let sw = match ifname {
            "lan0" => 0,
            "wan0" => 1,
            _ => 2,
        };
        let state = if up { "up" } else { "down" };
        self.switches[sw].ip(&["link", "set", &self.port(r, ifname), state]);
    }

    /// Creates router `r`'s namespace, links and addresses, its mount
    /// namespace with the example files, its NAT (examples/ha/nat.nft) and key.
    pub fn boot(&mut self, r: usize) {
        assert!(self.routers[r].ns.is_none(), "router {r} is up");
        let id = self.routers[r].id;
        let ns = Netns::add(&format!("{}-{id}", self.prefix));
        let n = r as u8;
        for (ifname, sw, addr) in [
            ("lan0", 0, format!("192.168.10.{}/24", 2 + n)),
            ("wan0", 1, format!("203.0.113.{}/24", 2 + n)),
            ("sync0", 2, format!("172.31.255.{}/29", 1 + n)),
        ] {
            self.plug(&ns, ifname, sw, id);
            ns.ip(&["addr", "add", &addr, "dev", ifname]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            // No pick-up of TCP connections in mid-stream: a control
            // connection survives a failover only if conntrackd carried it.
            "net.netfilter.nf_conntrack_tcp_loose=0",
        ] {
            ns.exec("sysctl", &["-qw", s]);
        }
        let (key_bytes, replicate) = (self.key.clone(), self.replicate);
        let rt = &mut self.routers[r];
        let _ = std::fs::remove_dir_all(&rt.dir);
        std::fs::create_dir_all(&rt.dir).expect("router dir");
        // A tmpfs under the overlay: the upper layer must not sit on the
        // host's /tmp (which may itself be an overlay).
        let script = format!(
            "set -e\n\
             mount -t tmpfs tmpfs /run\n\
             mkdir -p /run/lock /run/pptp-alg\n\
             mkdir -p {d}\n\
             mount -t tmpfs tmpfs {d}\n\
             mkdir -p {d}/up {d}/work\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/up,workdir={d}/work /etc\n\
             mkdir -p /etc/keepalived /etc/conntrackd /etc/pptp-alg\n\
             echo anchored >&2\n\
             exec sleep 3600\n",
            d = rt.dir.join("overlay").display()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(script);
        let mut anchor = Proc::start(format!("{id} mount namespace"), cmd);
        anchor.wait_line("anchored", Duration::from_secs(10));
        rt.anchor = Some(anchor);
        rt.ns = Some(ns);
        let ex = Path::new(EXAMPLES);
        rt.install(
            &ex.join("keepalived.conf"),
            "/etc/keepalived/keepalived.conf",
            "0644",
        );
        rt.install(
            &ex.join("pptp-alg-ha.sh"),
            "/etc/keepalived/pptp-alg-ha.sh",
            "0755",
        );
        rt.install(
            &ex.join(format!("conntrackd-{id}.conf")),
            "/etc/conntrackd/conntrackd.conf",
            "0644",
        );
        let key = rt.dir.join("ha.key.src");
        std::fs::write(&key, key_bytes).expect("key");
        rt.install(&key, "/etc/pptp-alg/ha.key", "0600");
        let conf = rt.dir.join("pptp-alg.toml.src");
        std::fs::write(&conf, alg_config(id, replicate)).expect("config");
        rt.install(&conf, "/etc/pptp-alg/pptp-alg.toml", "0644");
        rt.sh(&format!("nft -f {}", ex.join("nat.nft").display()));
    }

    /// Router `r` fails: its cables are pulled, every process it runs is
    /// killed (SIGKILL, no cleanup) and its namespaces are gone.
    pub fn crash(&mut self, r: usize) {
        for ifname in ["lan0", "wan0", "sync0"] {
            self.set_cable(r, ifname, false);
        }
        self.routers[r].kill_all();
    }

    /// `pptp-alg status --json` of router `r`, or the error.
    pub fn try_status(&self, r: usize) -> Result<Value, String> {
        let out = self.routers[r].in_ns(ALG, &["status", "--json"]);
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Polls router `r`'s status until `pred` holds; panics after `timeout`.
    pub fn wait_status(
        &self,
        r: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Err("never asked".to_string());
        while Instant::now() < deadline {
            last = self.try_status(r);
            if matches!(&last, Ok(v) if pred(v)) {
                return last.expect("status");
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: status never showed {what} within {timeout:?}; last: {last:?}\n{}",
            self.routers[r].id,
            self.routers[r].logs()
        )
    }

    /// Waits until router `r` holds both virtual addresses; returns how long that took.
    pub fn wait_vips(&self, r: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let a = self.routers[r].addrs();
            if a.contains(&LAN_VIP) && a.contains(&WAN_VIP) {
                return start.elapsed();
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{} never held both virtual addresses within {timeout:?}\n{}",
            self.routers[r].id,
            self.routers[r].logs()
        )
    }

    /// Starts conntrackd, pptp-alg and keepalived on router `r`, in the order
    /// of their systemd units, and waits until each is up.
    pub fn start_daemons(&mut self, r: usize) {
        let rt = &mut self.routers[r];
        rt.spawn("conntrackd", &["conntrackd"], "initialization completed");
        rt.spawn(
            "pptp-alg",
            &[
                ALG,
                "run",
                "--config",
                "/etc/pptp-alg/pptp-alg.toml",
                "--install-rules",
                "--log-level",
                "info",
            ],
            "ready:",
        );
        let id = rt.id;
        rt.spawn(
            "keepalived",
            &["keepalived", "-n", "-l", "-D", "-i", id],
            "Startup complete",
        );
    }

    /// Stops router `r`'s keepalived with SIGTERM (it hands over at once by
    /// advertising priority 0) and waits for it to exit.
    pub fn stop_keepalived(&mut self, r: usize) {
        let rt = &mut self.routers[r];
        let p = rt.daemon("keepalived");
        p.signal(libc::SIGTERM);
        p.finish_within(DAEMON_TIMEOUT);
    }

    /// The pptp-peer server's summary (it is stopped).
    pub fn stop_server(&mut self) -> Value {
        let mut s = self.server.take().expect("server");
        s.signal(libc::SIGTERM);
        let out = s.finish_within(Duration::from_secs(10));
        out.json("server")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for r in &mut self.routers {
            r.kill_all();
        }
        if let Some(s) = &mut self.server {
            s.kill();
        }
        if let Some(dir) = self.routers[0].dir.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        // The namespaces go with the fields, after this.
    }
}

/// `examples/ha/pptp-alg-<id>.toml` as it is, or without its `ha_` keys
/// (no call replication: what the pair gives with conntrackd alone).
pub fn alg_config(id: &str, replicate: bool) -> String {
    let text = std::fs::read_to_string(Path::new(EXAMPLES).join(format!("pptp-alg-{id}.toml")))
        .expect("example config");
    if replicate {
        text
    } else {
        text.lines()
            .filter(|l| !l.starts_with("ha_"))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Router {
    fn anchor_pid(&self) -> u32 {
        self.anchor.as_ref().expect("router is down").pid()
    }

    fn nsenter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.anchor_pid().to_string(), "-m", "-n", "--"]);
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// Runs a command inside the router (both namespaces) to completion.
    pub fn in_ns(&self, prog: &str, args: &[&str]) -> std::process::Output {
        self.nsenter()
            .arg(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {prog}: {e}"))
    }

    /// Runs a shell command inside the router; panics unless it succeeds.
    pub fn sh(&self, script: &str) -> String {
        let out = self.in_ns("sh", &["-c", script]);
        assert!(
            out.status.success(),
            "{}: {script}: {}{}",
            self.id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn install(&self, from: &Path, to: &str, mode: &str) {
        self.sh(&format!(
            "install -m {mode} {} {to}",
            from.to_str().expect("utf-8 path")
        ));
    }

    fn spawn(&mut self, what: &'static str, argv: &[&str], ready: &str) {
        let mut cmd = self.nsenter();
        // conntrackd's console messages go to stdout: one stream to wait on.
        cmd.args(["sh", "-c", "exec \"$@\" >&2", "sh"]).args(argv);
        let mut p = Proc::start(format!("{} {what}", self.id), cmd);
        p.wait_line(ready, DAEMON_TIMEOUT);
        self.daemons.push((what, p));
    }

    /// The running daemon `what`.
    pub fn daemon(&mut self, what: &str) -> &mut Proc {
        self.daemons
            .iter_mut()
            .rev()
            .find(|(w, _)| *w == what)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no {what} started"))
    }

    /// The log of daemon `what` so far ("" if never started).
    pub fn log(&self, what: &str) -> String {
        self.daemons
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, p)| p.stderr_so_far())
            .collect()
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(w, p)| format!("--- {} {w}:\n{}", self.id, p.stderr_so_far()))
            .collect()
    }

    /// The router's IPv4 addresses.
    pub fn addrs(&self) -> Vec<Ipv4Addr> {
        let out = self.in_ns("ip", &["-4", "-o", "addr", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "inet")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// Lines of `conntrackd -e` (the connections replicated from the peer,
    /// not yet committed) for tcp/1723.
    pub fn external_cache(&self) -> Vec<String> {
        let out = self.in_ns(
            "conntrackd",
            &["-C", "/etc/conntrackd/conntrackd.conf", "-e"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("dport=1723"))
            .map(str::to_string)
            .collect()
    }

    /// Bytes conntrackd sent on the sync link so far (`conntrackd -s`).
    pub fn conntrackd_bytes_sent(&self) -> Option<u64> {
        let out = self.in_ns(
            "conntrackd",
            &["-C", "/etc/conntrackd/conntrackd.conf", "-s"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.contains("Bytes sent"))?;
        line.split_whitespace().next()?.parse().ok()
    }

    /// The kernel's tcp/1723 conntrack entries.
    pub fn conntrack_1723(&self) -> Vec<String> {
        let out = self.in_ns("conntrack", &["-L", "-p", "tcp", "--dport", "1723"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Kills every process in the router's mount namespace (its daemons, their
    /// children, running notify scripts) and removes its network namespace.
    fn kill_all(&mut self) {
        if let Some(anchor) = &self.anchor {
            let me = mnt_ns(anchor.pid());
            if me.is_some() {
                for pid in all_pids() {
                    if mnt_ns(pid) == me {
                        // SAFETY: plain syscall; pid shares our router's mount namespace,
                        // so it was started there by this test.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
            }
        }
        for (_, p) in &mut self.daemons {
            p.kill();
        }
        if let Some(a) = &mut self.anchor {
            a.kill();
        }
        self.anchor = None;
        self.ns = None;
    }
}

fn mnt_ns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

// ---- an inside PNS driven step by step ------------------------------------

/// A control connection from an inside client to [`SERVER`] with one call,
/// driven by the test (pptp-peer's message builders and framing).
pub struct Pns {
    pub client: usize,
    pub own_id: u16,
    /// The server's Call ID.
    pub peer_id: u16,
    ctl: Control,
}

const STEP: Duration = Duration::from_secs(5);

impl Pns {
    /// Connects from client `client`, starts the control connection and
    /// places one call with Call ID `own_id`.
    pub fn call(pair: &Pair, client: usize, own_id: u16) -> Result<Pns, String> {
        let stream = pair.clients[client]
            .enter(|| TcpStream::connect_timeout(&(SERVER, 1723).into(), STEP))
            .map_err(|e| format!("connect: {e}"))?;
        let ctl = Control::new(stream, Segmentation::One).map_err(|e| e.to_string())?;
        let mut p = Pns {
            client,
            own_id,
            peer_id: 0,
            ctl,
        };
        p.send(msg::sccrq(&format!("failover-c{client}")))?;
        p.wait("SCCRP", |m| m.ctype == ty::SCCRP)?;
        p.send(msg::ocrq(own_id, own_id, "5550199"))?;
        let m = p.wait("OCRP", |m| {
            m.ctype == ty::OCRP && m.u16_at(msg::off::PEER_CALL_ID) == own_id
        })?;
        if m.u8_at(msg::off::CALL_RESULT) != 1 {
            return Err(format!("OCRP result {}", m.u8_at(msg::off::CALL_RESULT)));
        }
        p.peer_id = m.u16_at(msg::off::CALL_ID);
        Ok(p)
    }

    fn send(&mut self, m: Vec<u8>) -> Result<(), String> {
        self.ctl.send_step(&[m]).map_err(|e| format!("send: {e}"))
    }

    fn wait(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Result<Msg, String> {
        let deadline = Instant::now() + STEP;
        loop {
            match self.ctl.recv_until(deadline) {
                Ok(Some(m)) if want(&m) => return Ok(m),
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("timed out waiting for {what}")),
                Err(e) => return Err(format!("{e} while waiting for {what}")),
            }
        }
    }

    /// Sends an Echo-Request and waits for its Echo-Reply.
    pub fn echo(&mut self, id: u32) -> Result<(), String> {
        self.send(msg::echo_request(id))?;
        self.wait("Echo-Reply", |m| {
            m.ctype == ty::ECHO_RP && m.u32_at(msg::off::ECHO_ID) == id
        })
        .map(|_| ())
    }

    /// Sends a Call-Clear-Request for the call and waits for the server's
    /// Call-Disconnect-Notify; returns its result code.
    pub fn clear(&mut self) -> Result<u8, String> {
        self.send(msg::ccrq(self.own_id))?;
        let (own, peer) = (self.own_id, self.peer_id);
        let m = self.wait("Call-Disconnect-Notify", |m| {
            m.ctype == ty::CDN && {
                let id = m.u16_at(msg::off::CALL_ID);
                id == own || id == peer
            }
        })?;
        Ok(m.u8_at(msg::off::CDN_RESULT))
    }
}

// ---- GRE from the server every millisecond, timestamped by the clients ----

/// One packet a client received.
#[derive(Clone, Debug)]
pub struct Rx {
    pub at: Instant,
    pub call_id: Option<u16>,
    pub from: String,
    pub payload: String,
}

/// The server sends GRE to each stream's NAT id at [`WAN_VIP`] every
/// millisecond ("<tag>:<seq>"); each client records what reaches it.
pub struct GreStreams {
    stop: Arc<AtomicBool>,
    /// (NAT id, tag) of every call the server sends to.
    pub targets: Arc<Mutex<Vec<(u16, String)>>>,
    /// Rounds sent (one packet to every target each).
    rounds: Arc<AtomicU64>,
    started: Instant,
    threads: Vec<JoinHandle<()>>,
    pub received: Vec<Arc<Mutex<Vec<Rx>>>>,
}

impl GreStreams {
    pub fn start(pair: &Pair) -> io::Result<GreStreams> {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let mut threads = Vec::new();
        let mut received = Vec::new();
        for ns in &pair.clients {
            let raw = ns.enter(|| {
                let r = RawGre::open(None)?;
                r.set_read_timeout(Duration::from_millis(50))?;
                Ok::<_, io::Error>(r)
            })?;
            let got: Arc<Mutex<Vec<Rx>>> = Arc::default();
            let (stop, g) = (stop.clone(), got.clone());
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = raw.recv(&mut buf) {
                        let at = Instant::now();
                        if let Some(rec) = gre::parse_ip(&buf[..n]) {
                            g.lock().expect("rx").push(Rx {
                                at,
                                call_id: rec.call_id,
                                from: rec.from,
                                payload: rec.payload,
                            });
                        }
                    }
                }
            }));
            received.push(got);
        }
        let raw = pair.server_ns.enter(|| RawGre::open(Some(SERVER)))?;
        let rounds = Arc::new(AtomicU64::new(0));
        let (st, tg, rd) = (stop.clone(), targets.clone(), rounds.clone());
        threads.push(thread::spawn(move || {
            let mut seq = 0u32;
            let mut next = Instant::now();
            while !st.load(Ordering::SeqCst) {
                let now: Vec<(u16, String)> = tg.lock().expect("targets").clone();
                for (nat, tag) in &now {
                    let payload = format!("{tag}:{seq}");
                    let pkt = gre::build(&GreOut {
                        version: 1,
                        protocol: gre::PROTO_PPP,
                        call_id: *nat,
                        seq: Some(seq),
                        ack: None,
                        payload: payload.as_bytes(),
                    });
                    let _ = raw.send_to(&pkt, WAN_VIP);
                }
                seq += 1;
                rd.fetch_add(1, Ordering::Relaxed);
                next += Duration::from_millis(1);
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Behind (a loaded machine): skip ahead rather than burst.
                    next = Instant::now();
                } else {
                    thread::sleep(left);
                }
            }
        }));
        Ok(GreStreams {
            stop,
            targets,
            rounds,
            started: Instant::now(),
            threads,
            received,
        })
    }

    /// The mean time between two packets of one call so far: 1 ms unless
    /// the calls are too many for one round a millisecond.
    pub fn round(&self) -> Duration {
        self.started.elapsed() / self.rounds.load(Ordering::Relaxed).max(1) as u32
    }

    /// What client `c` received so far.
    pub fn rx(&self, c: usize) -> Vec<Rx> {
        self.received[c].lock().expect("rx").clone()
    }
}

impl Drop for GreStreams {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The packets of `tag` in `rx`, and the longest time without one from
/// `since` on (until the last one); None if none arrived after `since`.
pub fn gap_after(rx: &[Rx], tag: &str, since: Instant) -> Option<Duration> {
    let prefix = format!("{tag}:");
    let times: Vec<Instant> = rx
        .iter()
        .filter(|r| r.payload.starts_with(&prefix))
        .map(|r| r.at)
        .collect();
    let before = times.iter().filter(|t| **t <= since).max().copied();
    let after: Vec<Instant> = times.into_iter().filter(|t| *t > since).collect();
    let first = *after.first()?;
    let mut gap = before.map_or(Duration::ZERO, |b| first - b);
    for w in after.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    Some(gap)
}

/// Reads a status row field as u64.
pub fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

//! Day-2 operations against a running daemon in a namespace lab (root only, see
//! `e2e/lab.rs`): the Prometheus metrics listener and textfile, scraped while real calls and
//! real GRE cross the router.
//!
//! Without root the tests print "skipped: needs root" and pass, unless `PPTP_ALG_E2E=1`
//! demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use lab::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Runs `f` on a thread that has entered network namespace `ns`: its sockets live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on this thread only, with a namespace file we hold open.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// `GET /metrics` from inside the router's namespace; returns status line and body.
fn scrape(lab: &Lab, addr: SocketAddr) -> (String, String) {
    in_netns(lab.router.name(), move || {
        let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: router\r\nAccept: */*\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    })
}

/// The value of the sample whose line starts with `series `.
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_follow_real_calls_and_gre() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("metrics", 1, 1);
    let textfile = PathBuf::from(format!("/tmp/pptp-alg-e2e-{}.prom", std::process::id()));
    let _ = std::fs::remove_file(&textfile);
    let addr: SocketAddr = "127.0.0.1:9723".parse().unwrap();
    lab.start_daemon(&[
        "--metrics-listen",
        "127.0.0.1:9723",
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ]);
    assert!(
        lab.daemon_log()
            .contains("metrics: serving http://127.0.0.1:9723/metrics"),
        "{}",
        lab.daemon_log()
    );

    let (status, before) = scrape(&lab, addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&before, "pptp_alg_calls_created_total"), 0);
    assert_eq!(sample(&before, "pptp_alg_fast_path_enabled"), 1);
    for q in ["1723", "1724", "1725"] {
        assert!(
            before.contains(&format!("pptp_alg_queue_dropped_total{{queue=\"{q}\"")),
            "queue {q}:\n{before}"
        );
    }
    let kernel_unknown = "pptp_alg_gre_unknown_call_total{seen_by=\"kernel\"}";
    assert_eq!(sample(&before, kernel_unknown), 0);
    assert!(std::fs::read_to_string(&textfile)
        .expect("textfile written at start")
        .contains("pptp_alg_calls_created_total 0"));

    // A real call with GRE both ways, through the daemon and the kernel fast path.
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let c = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "m0",
        &["--call-id", "1000", "--gre-count", "3", "--hold", "1"],
    );
    let up = lab.wait_established(1);
    let (_, during) = scrape(&lab, addr);
    assert_eq!(sample(&during, "pptp_alg_calls_active"), 1, "{up:#}");
    lab.client_ok(c, "m0");
    lab.wait_no_calls();
    // GRE for a call nobody has: the kernel's rule leaves it with the router and counts it.
    lab.gre_send_from_server(ROUTER_WAN, 0x7777, "nobody", 3, &[]);

    let (_, after) = scrape(&lab, addr);
    assert_eq!(sample(&after, "pptp_alg_calls_created_total"), 1);
    assert_eq!(sample(&after, "pptp_alg_calls_active"), 0);
    let ended: u64 = after
        .lines()
        .filter(|l| l.starts_with("pptp_alg_calls_ended_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(ended, 1, "{after}");
    // SCCRQ, SCCRP, OCRQ, OCRP, CCRQ, CDN, StopCCRQ, StopCCRP at least.
    assert!(
        sample(&after, "pptp_alg_control_packets_total") >= 8,
        "{after}"
    );
    assert_eq!(sample(&after, kernel_unknown), 3, "{after}");
    assert_eq!(
        sample(
            &after,
            "pptp_alg_queue_dropped_total{queue=\"1723\",carries=\"control_from_inside\",reason=\"queue_full\"}"
        ),
        0,
        "{after}"
    );

    // The textfile catches up within its interval.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&textfile).unwrap_or_default();
        if text.contains("pptp_alg_calls_created_total 1\n") {
            assert!(text.contains("# TYPE pptp_alg_calls_created_total counter"));
            break;
        }
        assert!(Instant::now() < deadline, "textfile not updated:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    }

    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!textfile.exists(), "the textfile outlived the daemon");
    // The port is free again once the daemon is gone.
    assert!(
        in_netns(lab.router.name(), move || TcpStream::connect(addr).is_err()),
        "still listening"
    );
}

/// Packets out: GRE an inside host sends for its call is counted by the kernel (masquerade
/// carries it out without the daemon) and shows in the status, its JSON, the metrics and the
/// call-end log line. Before `gre_out`, every one of these said 0.
#[test]
fn packets_out_are_counted_per_call() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("pktsout", 1, 1);
    let addr: SocketAddr = "127.0.0.1:9724".parse().unwrap();
    // A short idle timeout makes the daemon read the kernel's counters every second.
    lab.start_daemon(&[
        "--call-idle-timeout",
        "3",
        "--metrics-listen",
        "127.0.0.1:9724",
    ]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let c = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "out0",
        &["--call-id", "1000", "--gre-count", "3", "--hold", "2.5"],
    );
    // While the call is up the status catches up with the kernel's count.
    let up = lab.wait_status(Duration::from_secs(10), "3 packets out", |v| {
        established(v)
            .first()
            .is_some_and(|c| c["packets_out"].as_u64() == Some(3))
    });
    let call = &established(&up)[0];
    assert!(u64_of(&call["packets_in"]) >= 3, "{up:#}");
    let table = lab.exec(
        Host::Router,
        ALG,
        &["status", "--socket", lab.status_socket().to_str().unwrap()],
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}:1000", lan_addr(0))))
        .unwrap_or_else(|| panic!("no call row:\n{table}"));
    assert_eq!(
        row.split_whitespace().last(),
        Some("3"),
        "PKTS OUT:\n{table}"
    );
    let v = lab.client_ok(c, "out0");
    assert_eq!(v["ok"], true, "{v}");
    lab.wait_no_calls();
    let log = lab.daemon_log();
    let ended = log
        .lines()
        .find(|l| l.contains("call ended"))
        .unwrap_or_else(|| panic!("no call-end line:\n{log}"));
    assert!(ended.ends_with(", 3 out"), "{ended}");
    let (_, body) = scrape(&lab, addr);
    assert_eq!(
        sample(
            &body,
            "pptp_alg_call_gre_packets_total{direction=\"from_inside\"}"
        ),
        3,
        "{body}"
    );
    assert!(
        sample(
            &body,
            "pptp_alg_call_gre_packets_total{direction=\"to_inside\"}"
        ) >= 3,
        "{body}"
    );
    // The ended call's element is gone with it.
    let set = lab.exec(
        Host::Router,
        "nft",
        &["list", "set", "ip", "pptp_alg", "gre_out"],
    );
    assert!(!set.contains("elements"), "{set}");
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `pptp-alg check --json` in the router's namespace: its outcome per check, and whether it
/// exited 0.
fn check(lab: &Lab) -> (std::collections::BTreeMap<String, (String, String)>, bool) {
    let out = lab.try_exec(Host::Router, ALG, &["check", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}:\n{}{}", out.stdout, out.stderr));
    let checks = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                (
                    c["status"].as_str().unwrap().to_string(),
                    c["detail"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(v["ok"], out.code == 0, "{}", out.stdout);
    (checks, out.code == 0)
}

/// The preflight in a lab router set up as the README says, then broken the ways an
/// administrator meets: forwarding off, a strict forward chain without the mark rule, a
/// kernel PPTP helper object. Each break fails its own check and the exit status.
#[test]
fn check_passes_a_good_router_and_names_what_is_broken() {
    if !have_root() {
        return;
    }
    let lab = Lab::new("check", 1, 1);
    lab.strict_firewall(true);
    let (good, ok) = check(&lab);
    assert!(ok, "{good:#?}");
    for c in [
        "privileges",
        "user_namespace",
        "queue",
        "table",
        "ip_forward",
        "masquerade",
        "pptp_helper",
        "forward_policy",
    ] {
        assert_eq!(good[c].0, "OK", "{c}: {}", good[c].1);
    }
    assert!(
        good["forward_policy"].1.contains("ip lab_fw forward"),
        "{}",
        good["forward_policy"].1
    );

    lab.strict_firewall(false);
    lab.exec(Host::Router, "sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    let helper = lab
        .try_exec(
            Host::Router,
            "nft",
            &["add ct helper ip lab_fw pptp-h { type \"pptp\" protocol tcp; l3proto ip; }"],
        )
        .code
        == 0;
    let (bad, ok) = check(&lab);
    assert!(!ok, "{bad:#?}");
    assert_eq!(bad["ip_forward"].0, "FAIL");
    let (s, d) = &bad["forward_policy"];
    assert_eq!(s, "FAIL", "{d}");
    assert!(
        d.contains("ip lab_fw forward") && d.contains("`meta mark 0x1723 accept`"),
        "{d}"
    );
    if helper {
        let (s, d) = &bad["pptp_helper"];
        assert_eq!(s, "FAIL", "{d}");
        assert!(d.contains("pptp-h"), "{d}");
    } else {
        eprintln!("kernel has no pptp conntrack helper; its check is not exercised");
    }
    // Masquerade and the table are still fine.
    assert_eq!(bad["masquerade"].0, "OK");
    assert_eq!(bad["table"].0, "OK");
}

/// In a user namespace other than the initial one (a rootless container), `check` says what
/// will not work there and why; on a kernel that refuses payload writes there (this one
/// does), so does the daemon's start-up error.
#[test]
fn check_explains_a_user_namespace() {
    if !have_root() {
        return;
    }
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", ALG, "check"])
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("user_namespace"))
        .unwrap_or_else(|| panic!("no user_namespace line:\n{text}"));
    assert!(
        line.contains("non-initial user namespace") && line.contains("NFQUEUE payload rewrites"),
        "{line}"
    );
    let refused = line.starts_with("FAIL");
    if refused {
        assert_ne!(out.status.code(), Some(0));
        let run = std::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--net",
                ALG,
                "run",
                "--install-rules",
                "--state-file",
                "",
                "--status-socket",
                &format!("/tmp/pptp-alg-userns-{}.sock", std::process::id()),
            ])
            .output()
            .expect("unshare run");
        let log = String::from_utf8_lossy(&run.stderr);
        assert_ne!(run.status.code(), Some(0), "{log}");
        assert!(log.contains("non-initial user namespace"), "{log}");
    } else {
        assert!(line.starts_with("WARN"), "{line}");
    }
}

/// Refusals for want of privilege say which privilege: run as an unprivileged user, `rules
/// install` and the daemon name CAP_NET_ADMIN instead of a bare "Operation not permitted".
#[test]
fn permission_errors_name_the_missing_privilege() {
    if !have_root() {
        return;
    }
    // A copy nobody can run (the build directory may not be open to it).
    let bin = std::env::temp_dir().join(format!("pptp-alg-nobody-{}", std::process::id()));
    std::fs::copy(ALG, &bin).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = as_nobody(&["rules", "install", "--table", "pptp_alg_nobody"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs CAP_NET_ADMIN"), "{err}");
    let (code, err) = as_nobody(&[
        "run",
        "--install-rules",
        "--table",
        "pptp_alg_nobody",
        "--state-file",
        "",
        "--status-socket",
        "/tmp/pptp-alg-nobody.sock",
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("needs CAP_NET_ADMIN"), "{err}");
    let _ = std::fs::remove_file(&bin);
}

/// The common save and restore of the live ruleset, done while the daemon runs with a call
/// up: `nft list ruleset > /etc/nftables.conf`, then loading that file with `flush ruleset`
/// first (as Debian's nftables.conf starts). The administrator's tables come back, and
/// pptp-alg puts its own table back (the saved copy has the fast path as it was): the live
/// call keeps its GRE and a new call is translated.
///
/// One adaptation to this kernel: it lacks the nftables `queue` expression, so the daemon
/// queues with the xt NFQUEUE target, which `nft list` prints as `queue num N bypass` (with
/// iptables' plugins) or `xt target "NFQUEUE"` and which no kernel without `queue` loads
/// back: no listing of xt NFQUEUE rules restores here, iptables-nft's included. The test
/// drops those statements from the saved listing, which leaves exactly what a kernel with
/// `queue` would restore apart from the queue statements; the daemon replaces the table
/// either way.
#[test]
fn saving_and_restoring_the_live_ruleset_keeps_everything() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("saverest", 2, 1);
    lab.strict_firewall(true);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let old = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "held",
        &["--call-id", "1000", "--gre-count", "3", "--hold", "8"],
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;

    let saved = std::env::temp_dir().join(format!("pptp-alg-saved-{}.nft", std::process::id()));
    let listing = lab.exec(Host::Router, "nft", &["list", "ruleset"]);
    let listing = without_xt_queue(&listing);
    std::fs::write(&saved, format!("flush ruleset\n{listing}")).unwrap();
    let restore = lab.try_exec(Host::Router, "nft", &["-f", saved.to_str().unwrap()]);
    assert_eq!(restore.code, 0, "restore failed:\n{}", restore.stderr);
    // The administrator's own tables are back.
    for t in ["lab_fw", "lab_nat"] {
        assert!(lab.router_has_table(t), "table {t} not restored");
    }
    lab.wait_line(
        lab.daemon(),
        "table ip pptp_alg was made anew (a saved ruleset restored?); reinstalled it with 1 call(s)",
        Duration::from_secs(5),
    );
    // The held call's GRE still reaches its host through the fast path.
    let probe = lab.gre_recv_count(Host::Lan(0), Some(lan_addr(0)), 5.0, 2);
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-restore", 2, &[]);
    let got = lab.finish(probe).json_lines("gre-recv");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|g| g["payload"] == "after-restore" && u64_of(&g["call_id"]) == 1000));
    // A new call from another host with the same Call ID is translated.
    let p = lab.client(
        Host::Lan(1),
        SERVER,
        lan_addr(1),
        "new",
        &["--call-id", "1000", "--gre-count", "3", "--hold", "1"],
    );
    let v = lab.client_ok(p, "new");
    assert_exactly_own_echoes("new", &v, 1, 3);
    lab.client_ok(old, "held");
    // The file restores again (the table it holds is replaced the same way).
    let again = lab.try_exec(Host::Router, "nft", &["-f", saved.to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let _ = std::fs::remove_file(&saved);
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!lab.router_has_table("pptp_alg"));
}

/// The listing without the xt NFQUEUE statements this kernel cannot load back (see above).
fn without_xt_queue(listing: &str) -> String {
    listing
        .lines()
        .map(
            |l| match (l.find(" queue num "), l.find(" comment \"xt NFQUEUE")) {
                (Some(q), Some(c)) => format!("{}{}", &l[..q], &l[c..]),
                _ => l.replace(" xt target \"NFQUEUE\"", ""),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// A plain `nft flush ruleset` (a firewall reload without pptp-alg's table in its file) takes
/// the daemon's table; the daemon puts it back within a second, with the live call's fast
/// path.
#[test]
fn a_flushed_table_is_back_within_a_second() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("flushback", 1, 1);
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let c = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "held",
        &["--call-id", "1000", "--gre-count", "3", "--hold", "5"],
    );
    let up = lab.wait_established(1);
    let nat = u64_of(&call_row(&up, lan_addr(0), 1000)["nat_id"]) as u16;
    lab.exec(Host::Router, "nft", &["flush", "ruleset"]);
    let t = Instant::now();
    lab.wait_line(
        lab.daemon(),
        "table ip pptp_alg vanished (a firewall reload?); reinstalled it with 1 call(s)",
        Duration::from_secs(5),
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // The lab's masquerade went with the flush; GRE to the call's NAT id is translated by the
    // reinstalled fast path all the same.
    let probe = lab.gre_recv_count(Host::Lan(0), Some(lan_addr(0)), 5.0, 1);
    lab.gre_send_from_server(ROUTER_WAN, nat, "after-flush", 1, &[]);
    assert_eq!(lab.finish(probe).json_lines("gre-recv").len(), 1);
    let _ = lab.finish(c);
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// With `table_owner`, the same restore fails as a whole (the kernel lets nobody but the
/// daemon create its table), as the README warns.
#[test]
fn an_owned_table_makes_the_restore_fail_as_documented() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("saveown", 1, 1);
    lab.start_daemon(&["--table-owner"]);
    let listing = lab.exec(Host::Router, "nft", &["list", "ruleset"]);
    let saved = std::env::temp_dir().join(format!("pptp-alg-owned-{}.nft", std::process::id()));
    std::fs::write(&saved, format!("flush ruleset\n{listing}")).unwrap();
    let restore = lab.try_exec(Host::Router, "nft", &["-f", saved.to_str().unwrap()]);
    let _ = std::fs::remove_file(&saved);
    assert_ne!(restore.code, 0, "the restore worked after all");
    assert!(
        restore.stderr.contains("Operation not permitted"),
        "{}",
        restore.stderr
    );
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

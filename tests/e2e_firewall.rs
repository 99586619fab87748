//! The README's firewall recipes, each exercised behind a drop-by-default forward policy in a
//! namespace lab (root only, see `e2e/lab.rs`): a call's GRE must reach the inside host with
//! the recipe and must not without it, and `mark_mask` must leave the packet's other mark
//! bits alone, on the kernel fast path and on the daemon's own path.
//!
//! Without root the tests print "skipped: needs root" and pass, unless `PPTP_ALG_E2E=1`
//! demands that they really run.

#[path = "e2e/lab.rs"]
mod lab;

use lab::*;
use serde_json::Value;

const GRE_COUNT: u64 = 3;

/// One call with GRE both ways from LAN host 0; returns the client's summary.
fn one_call(lab: &mut Lab, tag: &str) -> Value {
    let p = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        tag,
        &["--call-id", "1000", "--gre-count", "3", "--hold", "1"],
    );
    let out = lab.finish(p);
    out.json(tag)
}

fn assert_gre_delivered(tag: &str, v: &Value) {
    assert_exactly_own_echoes(tag, v, 1, GRE_COUNT);
}

fn assert_gre_blocked(v: &Value) {
    assert_eq!(v["ok"], true, "control must still work: {v}");
    assert!(payloads(v).is_empty(), "GRE got through: {v}");
}

/// The nft recipe with a mask, as the README gives it.
const NFT_RECIPE: &str = "meta mark & 0x0000ffff == 0x1723 accept";

/// A strict forward chain of the administrator's, with `extra` rules after the usual ones.
fn nft_strict(lab: &Lab, extra: &str) {
    // Declared, deleted and defined anew in one batch: replaced, never merged.
    lab.nft(&format!(
        "table inet lab_fw\n\
         delete table inet lab_fw\n\
         table inet lab_fw {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\t{extra}\n\
         \t\tiifname \"lan*\" oifname \"wan0\" ct state new accept\n\
         \t}}\n\
         }}\n"
    ));
}

#[test]
fn nft_recipe_with_a_mark_mask() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("fwnft", 1, 1);
    // Another user of the mark: the router tags everything from the WAN with bit 16 before
    // pptp-alg sees it (policy routing, QoS). pptp-alg must leave that bit alone.
    lab.nft(
        "table ip lab_tag {\n\
         \tchain pre {\n\
         \t\ttype filter hook prerouting priority -350; policy accept;\n\
         \t\tiifname \"wan0\" meta mark set 0x00010000\n\
         \t}\n\
         }\n",
    );
    nft_strict(
        &lab,
        &format!("meta mark 0x00011723 counter comment \"both bits\"\n\t\t{NFT_RECIPE}"),
    );
    lab.start_daemon(&["--mark-mask", "0xffff"]);
    // The kernel shows the rule as `rules print` renders it.
    let table = lab.exec(Host::Router, "nft", &["list", "table", "ip", "pptp_alg"]);
    assert!(
        table.contains(" notrack meta mark set meta mark & 0xffff1723 | 0x00001723 accept"),
        "{table}"
    );
    let srv = lab.server(Host::Wan, SERVER, &[]);
    let v = one_call(&mut lab, "nft");
    assert_gre_delivered("nft", &v);
    // The kernel fast path kept bit 16 and set pptp-alg's bits.
    assert!(both_bits(&lab) >= GRE_COUNT, "{}", fw_listing(&lab));
    lab.wait_no_calls();
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The daemon's own path (no fast path) does the same in its verdicts.
    let before = both_bits(&lab);
    lab.start_daemon(&["--mark-mask", "0xffff", "--no-offload"]);
    let v = one_call(&mut lab, "nft-userspace");
    assert_gre_delivered("nft-userspace", &v);
    assert!(
        both_bits(&lab) >= before + GRE_COUNT,
        "{}",
        fw_listing(&lab)
    );
    lab.wait_no_calls();

    // Without the recipe the same call's GRE dies in the forward chain.
    nft_strict(&lab, "");
    let v = one_call(&mut lab, "nft-none");
    assert_gre_blocked(&v);
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn fw_listing(lab: &Lab) -> String {
    lab.exec(Host::Router, "nft", &["list", "table", "inet", "lab_fw"])
}

/// Packets the forward chain saw with both bit 16 and pptp-alg's mark.
fn both_bits(lab: &Lab) -> u64 {
    let text = fw_listing(lab);
    let line = text
        .lines()
        .find(|l| l.contains("comment \"both bits\""))
        .expect("counter rule");
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().and_then(|n| n.parse().ok()).expect("count");
        }
    }
    panic!("no packet count in {line:?}")
}

/// iptables-nft (Debian's `iptables`): the same policy and the recipe as iptables rules.
#[test]
fn iptables_nft_recipe() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("fwipt", 1, 1);
    let ipt = |lab: &Lab, args: &[&str]| {
        let out = lab.try_exec(Host::Router, "iptables-nft", args);
        assert_eq!(out.code, 0, "iptables-nft {args:?}: {}", out.stderr);
    };
    ipt(&lab, &["-P", "FORWARD", "DROP"]);
    ipt(
        &lab,
        &[
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    );
    ipt(
        &lab,
        &["-A", "FORWARD", "-i", "lan+", "-o", "wan0", "-j", "ACCEPT"],
    );
    lab.start_daemon(&["--mark-mask", "0xffff"]);
    let srv = lab.server(Host::Wan, SERVER, &[]);

    // Without the recipe: blocked.
    let v = one_call(&mut lab, "ipt-none");
    assert_gre_blocked(&v);
    lab.wait_no_calls();

    // The recipe, as the README gives it.
    ipt(
        &lab,
        &[
            "-I",
            "FORWARD",
            "-m",
            "mark",
            "--mark",
            "0x1723/0xffff",
            "-j",
            "ACCEPT",
        ],
    );
    let v = one_call(&mut lab, "ipt");
    assert_gre_delivered("ipt", &v);
    // `pptp-alg check` reads the iptables-nft rule as the mark rule it is.
    let out = lab.try_exec(Host::Router, ALG, &["check", "--mark-mask", "0xffff"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("forward_policy"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.starts_with("OK"), "{line}");
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// firewalld (nftables backend) in the router's namespace, on a D-Bus system bus of its own
/// (no system bus or systemd here) and with its configuration in a temporary directory, so
/// nothing outside the lab is touched. Its zones cannot match a mark; the README's recipe is
/// a policy letting GRE from the external zone into the internal one.
#[test]
fn firewalld_recipe() {
    if !have_root() {
        return;
    }
    if !std::path::Path::new("/usr/sbin/firewalld").exists() {
        if std::env::var("PPTP_ALG_E2E").as_deref() == Ok("1") {
            panic!("firewalld is not installed (.ci/run installs it)");
        }
        println!("skipped: firewalld not installed");
        return;
    }
    let mut lab = Lab::new("fwd", 1, 1);
    let dir = std::env::temp_dir().join(format!("pptp-alg-firewalld-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let etc = dir.join("etc");
    let cp = std::process::Command::new("cp")
        .args(["-r", "/etc/firewalld"])
        .arg(&etc)
        .status()
        .unwrap();
    assert!(cp.success());
    let bus = dir.join("bus.sock");
    let conf = dir.join("dbus.conf");
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\n\
             <policy context=\"default\"><allow user=\"root\"/><allow own=\"*\"/>\
             <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
            bus.display()
        ),
    )
    .unwrap();
    let conf_arg = format!("--config-file={}", conf.display());
    lab.spawn(
        Host::Router,
        "dbus-daemon",
        "dbus-daemon",
        &[&conf_arg, "--nofork"],
    );
    let env = format!("DBUS_SYSTEM_BUS_ADDRESS=unix:path={}", bus.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !bus.exists() {
        assert!(std::time::Instant::now() < deadline, "no bus socket");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let etc_arg = etc.to_str().unwrap().to_string();
    lab.spawn(
        Host::Router,
        "firewalld",
        "env",
        &[
            &env,
            "/usr/sbin/firewalld",
            "--nofork",
            "--nopid",
            "--system-config",
            &etc_arg,
            "--log-target",
            "console",
        ],
    );
    let fwcmd = |lab: &Lab, args: &[&str]| {
        let mut a = vec![env.as_str(), "firewall-cmd"];
        a.extend_from_slice(args);
        lab.try_exec(Host::Router, "env", &a)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fwcmd(&lab, &["--state"]).stdout.trim() != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "firewalld did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ok = |lab: &Lab, args: &[&str]| {
        let out = fwcmd(lab, args);
        assert_eq!(
            out.code, 0,
            "firewall-cmd {args:?}: {}{}",
            out.stdout, out.stderr
        );
    };
    for args in [
        &["--permanent", "--zone=external", "--add-interface=wan0"][..],
        &["--permanent", "--zone=internal", "--add-interface=lan1"],
        // The LAN may open connections to the WAN (the control connection).
        &["--permanent", "--new-policy", "lan-out"],
        &[
            "--permanent",
            "--policy",
            "lan-out",
            "--add-ingress-zone",
            "internal",
        ],
        &[
            "--permanent",
            "--policy",
            "lan-out",
            "--add-egress-zone",
            "external",
        ],
        &[
            "--permanent",
            "--policy",
            "lan-out",
            "--set-target",
            "ACCEPT",
        ],
        &["--reload"],
    ] {
        ok(&lab, args);
    }
    lab.start_daemon(&[]);
    let srv = lab.server(Host::Wan, SERVER, &[]);

    // firewalld's forward chain rejects the translated GRE.
    let v = one_call(&mut lab, "fwd-none");
    assert_gre_blocked(&v);
    lab.wait_no_calls();

    // The recipe, as the README gives it.
    for args in [
        &["--permanent", "--new-policy", "pptp-alg-gre"][..],
        &[
            "--permanent",
            "--policy",
            "pptp-alg-gre",
            "--add-ingress-zone",
            "external",
        ],
        &[
            "--permanent",
            "--policy",
            "pptp-alg-gre",
            "--add-egress-zone",
            "internal",
        ],
        &[
            "--permanent",
            "--policy",
            "pptp-alg-gre",
            "--add-protocol",
            "gre",
        ],
        &["--reload"],
    ] {
        ok(&lab, args);
    }
    // A firewalld reload leaves pptp-alg's table alone.
    assert!(lab.router_has_table("pptp_alg"));
    let v = one_call(&mut lab, "fwd");
    assert_gre_delivered("fwd", &v);
    // `pptp-alg check` finds firewalld's accept of GRE.
    let out = lab.try_exec(Host::Router, ALG, &["check"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("forward_policy"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.starts_with("OK"), "{line}");
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "{}", out.stderr);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

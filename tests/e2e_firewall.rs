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

//! Tests of the nftables module.
//!
//! `render` tests need nothing. Root tests run in network namespaces they create (and always
//! delete), so they never touch the host's ruleset; without root they are skipped with a message,
//! unless PPTP_ALG_E2E=1, which makes a missing root a failure.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use pptp_alg::nft::{self, NftError, Ownership, QueueBackend, RulesConfig, TableSocket};

#[path = "support/netns.rs"]
mod netns;
use netns::{have_root, run, Netns};

const NFT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nft/pptp-alg.nft");

// ---------------------------------------------------------------------------------------------
// Helpers

/// True when root tests should run; panics if they must run but cannot.
/// A namespace named after this test binary's process and `role`.
fn fresh_netns(role: &str) -> Netns {
    static N: AtomicU32 = AtomicU32::new(0);
    Netns::add(&format!(
        "pptpalg-nft-{}-{}-{role}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs a root test body in a fresh namespace.
fn in_fresh_netns(test: &str, body: impl FnOnce(&Netns) + Send + 'static) {
    if !have_root() {
        eprintln!("skipping {test}: needs root (network namespaces, nftables)");
        return;
    }
    let ns = std::sync::Arc::new(fresh_netns("r"));
    let ns2 = ns.clone();
    ns.enter(move || body(&ns2));
}

/// Normalises `nft` output for comparison: comments, blank lines, indentation and the
/// volatile parts (handles, counter values) removed.
fn normalise(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.find('#') {
            Some(i) => &l[..i],
            None => l,
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut out = Vec::new();
            let mut words = l.split(' ').peekable();
            while let Some(w) = words.next() {
                match w {
                    "packets" | "bytes" | "handle" => {
                        words.next();
                    }
                    _ => out.push(w),
                }
            }
            out.join(" ")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// No root needed

#[test]
fn render_nft_queue_golden() {
    let text = nft::render(&RulesConfig::default(), QueueBackend::NftQueue);
    let expected = "\
table ip pptp_alg {
\tmap gre_daddr {
\t\ttypeof ip saddr . @th,48,16 : ip daddr
\t\tcounter
\t}

\tmap gre_cid {
\t\ttypeof ip saddr . @th,48,16 : @th,48,16
\t}

\tmap hairpin_daddr {
\t\ttypeof ip saddr . ip daddr . @th,48,16 : ip daddr
\t}

\tmap hairpin_saddr {
\t\ttypeof ip saddr . ip daddr . @th,48,16 : ip saddr
\t}

\tset local_addrs {
\t\ttypeof ip daddr
\t}

\tset gre_out {
\t\ttypeof ip saddr . ip daddr . @th,48,16
\t\tcounter
\t}

\tchain gre_in {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b ip frag-off & 8191 == 0 ip daddr @local_addrs ip daddr set ip saddr . @th,48,16 map @gre_daddr @th,48,16 set ip saddr . @th,48,16 map @gre_cid notrack meta mark set 0x00001723 accept
\t\tip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b ip frag-off & 8191 == 0 ip daddr @local_addrs ip daddr set ip saddr . ip daddr . @th,48,16 map @hairpin_daddr notrack meta mark set 0x00001723 accept
\t\tip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b ip frag-off & 8191 == 0 ip daddr @local_addrs counter packets 0 bytes 0 notrack accept
\t\tip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b ip frag-off & 8191 == 0 fib daddr type local notrack queue flags bypass to 1725
\t}

\tchain ctl {
\t\ttype filter hook forward priority filter + 10; policy accept;
\t\tct state untracked accept
\t\tip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b ip frag-off & 8191 == 0 ip saddr . ip daddr . @th,48,16 @gre_out
\t\tmeta l4proto != tcp accept
\t\ttcp dport 1723 ct direction original ct status snat queue flags bypass to 1723
\t\ttcp sport 1723 ct direction reply ct status snat queue flags bypass to 1724
\t\ttcp sport 1723 ct direction reply ct status dnat queue flags bypass to 1723
\t\ttcp dport 1723 ct direction original ct status dnat queue flags bypass to 1724
\t}
}
";
    assert_eq!(text, expected);
}

#[test]
fn render_xt_shows_target_and_comment() {
    let text = nft::render(&RulesConfig::default(), QueueBackend::XtNfqueue);
    assert!(text.contains(
        "fib daddr type local notrack xt target \"NFQUEUE\" comment \"xt NFQUEUE num 1725 bypass\"\n"
    ));
    assert!(text.contains(
        "tcp dport 1723 ct direction original ct status snat xt target \"NFQUEUE\" \
         comment \"xt NFQUEUE num 1723 bypass\"\n"
    ));
    assert!(!text.contains("queue flags"));
}

#[test]
fn render_follows_config() {
    let cfg = RulesConfig {
        table: "alg2".into(),
        queue_from_inside: 7,
        queue_to_inside: 8,
        queue_gre: 9,
        mark: 0xabc,
        mark_mask: u32::MAX,
        offload: false,
    };
    let text = nft::render(&cfg, QueueBackend::NftQueue);
    assert!(text.starts_with("table ip alg2 {\n"));
    // Without offload, only the hairpin source map: sources are rewritten after routing.
    assert_eq!(text.matches("\tmap ").count(), 1, "{text}");
    assert!(text.contains("map hairpin_saddr {"), "{text}");
    assert!(!text.contains("@gre_daddr") && !text.contains("@hairpin_daddr"));
    // The source rewrite of routed hairpinned GRE comes and goes with hairpinned calls.
    assert!(!text.contains("gre_post"), "{text}");
    assert!(
        !text.contains("set local_addrs"),
        "no set without offload:\n{text}"
    );
    assert!(!text.contains("@local_addrs"));
    assert!(!text.contains("meta mark set"));
    assert_eq!(text.matches("@hairpin_saddr").count(), 0, "{text}");
    assert_eq!(text.matches("queue flags bypass to 7\n").count(), 2);
    // GRE on its own queue, never on a control queue.
    assert_eq!(text.matches("queue flags bypass to 8\n").count(), 2);
    assert_eq!(text.matches("queue flags bypass to 9\n").count(), 1);
    assert!(text.contains("fib daddr type local notrack queue flags bypass to 9\n"));
    let cfg = RulesConfig {
        offload: true,
        ..cfg
    };
    assert!(nft::render(&cfg, QueueBackend::NftQueue).contains("meta mark set 0x00000abc accept"));
    // With a mask only those bits are set; the others keep what the packet carried.
    let cfg = RulesConfig {
        mark_mask: 0xfff,
        ..cfg
    };
    let text = nft::render(&cfg, QueueBackend::NftQueue);
    assert!(text.contains("meta mark set meta mark & 0xfffffabc | 0x00000abc accept"));
    assert!(!text.contains("meta mark 0x00000abc"), "{text}");
}

#[test]
fn backend_display() {
    assert_eq!(QueueBackend::NftQueue.to_string(), "nft queue expression");
    assert_eq!(
        QueueBackend::XtNfqueue.to_string(),
        "xt NFQUEUE target (nft_compat)"
    );
}

/// The shipped file is the rendered default ruleset plus comments and the two lines that make
/// reloading it replace the table.
#[test]
fn nft_file_matches_render() {
    let file = std::fs::read_to_string(NFT_FILE).unwrap();
    let mut lines = normalise(&file);
    assert_eq!(
        lines[..2],
        ["table ip pptp_alg", "delete table ip pptp_alg"]
    );
    lines.drain(..2);
    let rendered = normalise(&nft::render(
        &RulesConfig::default(),
        QueueBackend::NftQueue,
    ));
    assert_eq!(lines, rendered);
}

#[test]
fn invalid_table_names() {
    for bad in ["", "a\0b"] {
        assert!(matches!(
            nft::table_exists(bad),
            Err(nft::NftError::InvalidName(_))
        ));
    }
    let long = "x".repeat(300);
    assert!(matches!(
        nft::remove(&long),
        Err(nft::NftError::InvalidName(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Root: in a fresh network namespace

/// What the kernel supports, found with the nft tool rather than with our own code.
fn backend_by_nft_tool() -> QueueBackend {
    let t = "pptpalg_oracle";
    run("nft", &["add", "table", "ip", t]);
    run("nft", &["add", "chain", "ip", t, "c"]);
    let ok = Command::new("nft")
        .args(["add", "rule", "ip", t, "c", "queue", "num", "1", "bypass"])
        .output()
        .unwrap()
        .status
        .success();
    run("nft", &["delete", "table", "ip", t]);
    if ok {
        QueueBackend::NftQueue
    } else {
        QueueBackend::XtNfqueue
    }
}

/// Makes an xt NFQUEUE rule from `render` and from `nft list` comparable: depending on the nft
/// version and on whether iptables' plugins are installed, nft shows the target as
/// `xt target "NFQUEUE"`, as a native queue statement, or not at all. The rule comment
/// carries the queue number either way.
fn normalise_xt(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            let Some(i) = l.find(" comment \"xt NFQUEUE") else {
                return l;
            };
            let (head, comment) = l.split_at(i);
            let mut head = head.trim_end();
            if let Some(h) = head.strip_suffix(" xt target \"NFQUEUE\"") {
                head = h;
            } else if let Some(j) = head.rfind(" queue ") {
                head = &head[..j];
            }
            format!("{head}{comment}")
        })
        .collect()
}

fn list_table(table: &str) -> String {
    run("nft", &["list", "table", "ip", table])
}

#[test]
fn detect_backend_matches_nft_and_leaves_nothing() {
    in_fresh_netns("detect_backend_matches_nft_and_leaves_nothing", |_| {
        run("nft", &["add", "table", "ip", "bystander"]);
        let before = run("nft", &["list", "ruleset"]);
        let expected = backend_by_nft_tool();
        let got = nft::detect_backend().unwrap();
        assert_eq!(got, expected);
        // This project's CI kernel lacks CONFIG_NFT_QUEUE; say so if it ever changes.
        eprintln!("detect_backend: {got}");
        assert_eq!(run("nft", &["list", "ruleset"]), before);
    });
}

#[test]
fn install_lists_like_render() {
    in_fresh_netns("install_lists_like_render", |_| {
        let cfg = RulesConfig::default();
        let backend = nft::detect_backend().unwrap();
        assert!(!nft::table_exists(&cfg.table).unwrap());
        nft::install(&cfg, backend).unwrap();
        assert!(nft::table_exists(&cfg.table).unwrap());
        let listed = list_table(&cfg.table);
        for name in [
            "map gre_daddr",
            "map gre_cid",
            "set local_addrs",
            "chain gre_in",
            "chain ctl",
        ] {
            assert!(listed.contains(name), "{name} missing:\n{listed}");
        }
        assert_eq!(
            normalise_xt(normalise(&listed)),
            normalise_xt(normalise(&nft::render(&cfg, backend)))
        );
        // With a mark mask, the masked mark statements (set in gre_in) are what the kernel
        // holds too.
        let masked = RulesConfig {
            mark_mask: 0xffff,
            ..cfg
        };
        nft::install(&masked, backend).unwrap();
        let listed = list_table(&masked.table);
        assert!(
            listed.contains("meta mark set meta mark & 0xffff1723 | 0x00001723"),
            "{listed}"
        );
        assert_eq!(
            normalise_xt(normalise(&listed)),
            normalise_xt(normalise(&nft::render(&masked, backend)))
        );
    });
}

#[test]
fn install_is_idempotent_and_remove_spares_other_tables() {
    in_fresh_netns(
        "install_is_idempotent_and_remove_spares_other_tables",
        |_| {
            let other = "table ip other {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 192.0.2.9 }\n\t}\n\n\tchain c {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr @s counter\n\t}\n}\n";
            let path =
                std::env::temp_dir().join(format!("pptpalg-other-{}.nft", std::process::id()));
            std::fs::write(&path, other).unwrap();
            run("nft", &["-f", path.to_str().unwrap()]);
            let _ = std::fs::remove_file(&path);
            let other_before = list_table("other");

            let cfg = RulesConfig::default();
            let backend = nft::detect_backend().unwrap();
            nft::install(&cfg, backend).unwrap();
            let first = list_table(&cfg.table);
            nft::install(&cfg, backend).unwrap();
            assert_eq!(list_table(&cfg.table), first, "reinstall changed the table");

            assert!(nft::remove(&cfg.table).unwrap());
            assert!(!nft::table_exists(&cfg.table).unwrap());
            assert!(!nft::remove(&cfg.table).unwrap());
            assert_eq!(list_table("other"), other_before);
        },
    );
}

#[test]
fn failed_install_keeps_old_table() {
    in_fresh_netns("failed_install_keeps_old_table", |_| {
        let cfg = RulesConfig::default();
        let backend = nft::detect_backend().unwrap();
        nft::install(&cfg, backend).unwrap();
        let before = list_table(&cfg.table);
        if backend == QueueBackend::XtNfqueue {
            // The queue expression is missing: the batch must fail as a whole and say why.
            let err = nft::install(&cfg, QueueBackend::NftQueue).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("queue flags bypass to"), "{msg}");
            assert_eq!(list_table(&cfg.table), before);
        }
    });
}

fn map_elements(map: &str) -> String {
    run("nft", &["list", "map", "ip", "pptp_alg", map])
}

#[test]
fn fast_path_elements() {
    in_fresh_netns("fast_path_elements", |_| {
        let cfg = RulesConfig::default();
        nft::install(&cfg, nft::detect_backend().unwrap()).unwrap();
        let mut fp = nft::FastPath::open(&cfg).unwrap();
        let peer = Ipv4Addr::new(192, 0, 2, 1);
        let inside = Ipv4Addr::new(10, 0, 0, 2);

        fp.add_call(peer, 0x4000, inside, 7).unwrap();
        fp.add_call(peer, 0x4000, inside, 7).unwrap();
        fp.add_call(peer, 0x4001, Ipv4Addr::new(10, 0, 0, 3), 7)
            .unwrap();
        let d = map_elements("gre_daddr");
        assert!(
            d.contains("192.0.2.1 . 0x4000 counter packets 0 bytes 0 : 10.0.0.2"),
            "{d}"
        );
        assert!(
            d.contains("192.0.2.1 . 0x4001 counter packets 0 bytes 0 : 10.0.0.3"),
            "{d}"
        );
        let c = map_elements("gre_cid");
        assert!(c.contains("192.0.2.1 . 0x4000 : 0x7"), "{c}");

        // A new mapping for an existing key replaces the old one.
        fp.add_call(peer, 0x4000, Ipv4Addr::new(10, 0, 0, 4), 9)
            .unwrap();
        assert!(map_elements("gre_daddr").contains("0x4000 counter packets 0 bytes 0 : 10.0.0.4"));
        assert!(map_elements("gre_cid").contains("192.0.2.1 . 0x4000 : 0x9"));

        let mut counters = fp.counters().unwrap();
        counters.sort_by_key(|c| c.nat_id);
        assert_eq!(counters.len(), 2);
        assert_eq!(
            (counters[0].outside_peer, counters[0].nat_id),
            (peer, 0x4000)
        );
        assert_eq!((counters[0].packets, counters[0].bytes), (0, 0));

        fp.remove_call(peer, 0x4000).unwrap();
        fp.remove_call(peer, 0x4000).unwrap();
        let d = map_elements("gre_daddr");
        assert!(!d.contains("0x4000") && d.contains("0x4001"), "{d}");
        assert!(!map_elements("gre_cid").contains("0x4000"));

        fp.flush().unwrap();
        assert!(!map_elements("gre_daddr").contains("elements"));
        assert!(!map_elements("gre_cid").contains("elements"));
        assert!(fp.counters().unwrap().is_empty());
        fp.flush().unwrap();
    });
}

fn local_addrs_listed() -> String {
    run("nft", &["list", "set", "ip", "pptp_alg", "local_addrs"])
}

#[test]
fn local_addr_set_elements() {
    in_fresh_netns("local_addr_set_elements", |_| {
        let cfg = RulesConfig::default();
        nft::install(&cfg, nft::detect_backend().unwrap()).unwrap();
        let mut set = nft::LocalAddrSet::open(&cfg).unwrap();
        assert!(set.list().unwrap().is_empty());
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();

        set.replace(&[a("192.0.2.1"), a("10.0.0.1")]).unwrap();
        assert_eq!(set.list().unwrap(), [a("10.0.0.1"), a("192.0.2.1")]);
        let listed = local_addrs_listed();
        assert!(
            listed.contains("elements = { 10.0.0.1, 192.0.2.1 }")
                || listed.contains("elements = { 192.0.2.1, 10.0.0.1 }"),
            "{listed}"
        );

        set.add(a("198.51.100.7")).unwrap();
        set.add(a("198.51.100.7")).unwrap();
        set.remove(a("10.0.0.1")).unwrap();
        set.remove(a("10.0.0.1")).unwrap();
        assert_eq!(set.list().unwrap(), [a("192.0.2.1"), a("198.51.100.7")]);

        // A replace is a flush and adds in one batch; large ones take several messages.
        let many: Vec<Ipv4Addr> = (0..1500u32)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
            .collect();
        set.replace(&many).unwrap();
        assert_eq!(set.list().unwrap(), many);
        set.replace(&[]).unwrap();
        assert!(set.list().unwrap().is_empty());
        assert!(!local_addrs_listed().contains("elements"));
    });
}

#[test]
fn fast_path_needs_maps() {
    in_fresh_netns("fast_path_needs_maps", |_| {
        let cfg = RulesConfig {
            offload: false,
            ..RulesConfig::default()
        };
        assert!(nft::FastPath::open(&cfg).is_err());
        nft::install(&cfg, nft::detect_backend().unwrap()).unwrap();
        let listed = list_table(&cfg.table);
        assert!(!listed.contains("map gre_"), "{listed}");
        assert!(listed.contains("map hairpin_saddr"), "{listed}");
        let err = nft::FastPath::open(&RulesConfig::default()).err().unwrap();
        assert!(err.to_string().contains("has no map gre_daddr"), "{err}");
        let err = nft::LocalAddrSet::open(&RulesConfig::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("has no set local_addrs"), "{err}");
    });
}

/// Installs the default ruleset owned by `sock`; this project's kernels (>= 5.12) know owners.
fn install_owned(sock: &TableSocket) {
    let backend = nft::detect_backend().unwrap();
    match sock
        .install_owned(&RulesConfig::default(), backend)
        .unwrap()
    {
        Ownership::Owned => {}
        Ownership::Unowned(e) => panic!("the kernel refused the table owner flag: {e}"),
    }
}

/// `nft <cmd>` from another process; returns its stderr after checking that it failed.
fn nft_fails(cmd: &str) -> String {
    let out = Command::new("nft").arg(cmd).output().unwrap();
    assert!(!out.status.success(), "`nft {cmd}` succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The kernel facts the daemon's crash safety rests on. A table installed with the owner flag
/// belongs to the netlink socket that installed it: every change from another socket (another
/// process, or another socket of this one) is refused with EPERM, which we report naming the
/// owner; reads work from anywhere; `nft flush ruleset` passes it by; the owner may change and
/// replace it; and it is gone the moment its socket closes.
#[test]
fn owned_table_belongs_to_its_socket() {
    in_fresh_netns("owned_table_belongs_to_its_socket", |_| {
        let cfg = RulesConfig::default();
        let backend = nft::detect_backend().unwrap();
        let sock = TableSocket::open().unwrap();
        install_owned(&sock);
        let listed = list_table(&cfg.table);
        assert!(listed.contains("flags owner"), "{listed}");
        assert!(
            nft::table_exists(&cfg.table).unwrap(),
            "read by another socket"
        );

        // Our changes through other sockets: refused, naming the owner (this process).
        let owner = format!(
            "table ip pptp_alg is owned by a running {} (pid {}); stop the daemon instead",
            std::fs::read_to_string("/proc/self/comm").unwrap().trim(),
            std::process::id()
        );
        for (what, err) in [
            ("remove", nft::remove(&cfg.table).unwrap_err()),
            ("install", nft::install(&cfg, backend).unwrap_err()),
            (
                "install_owned",
                TableSocket::open()
                    .unwrap()
                    .install_owned(&cfg, backend)
                    .unwrap_err(),
            ),
        ] {
            assert!(
                matches!(err, NftError::OwnedByOther { .. }),
                "{what}: {err:?}"
            );
            assert!(err.to_string().contains(&owner), "{what}: {err}");
        }
        let err = nft::FastPath::open(&cfg).err().expect("fast path refused");
        assert!(err.to_string().contains("is owned by a running"), "{err}");
        let err = nft::LocalAddrSet::open(&cfg).expect_err("set refused");
        assert!(err.to_string().contains("is owned by a running"), "{err}");
        // ... and another process's.
        for cmd in [
            "add element ip pptp_alg gre_cid { 192.0.2.1 . 0x0001 : 0x0002 }",
            "flush map ip pptp_alg gre_daddr",
            "add element ip pptp_alg local_addrs { 192.0.2.99 }",
            "add chain ip pptp_alg intruder",
            "delete table ip pptp_alg",
        ] {
            let err = nft_fails(cmd);
            assert!(err.contains("Operation not permitted"), "nft {cmd}: {err}");
        }

        // The owner's socket changes it: fast path elements.
        let mut fp = nft::FastPath::open_on(&cfg, sock.clone()).unwrap();
        let peer = Ipv4Addr::new(192, 0, 2, 1);
        fp.add_call(peer, 0x4000, Ipv4Addr::new(10, 0, 0, 2), 7)
            .unwrap();
        fp.add_call(peer, 0x4001, Ipv4Addr::new(10, 0, 0, 3), 7)
            .unwrap();
        fp.remove_call(peer, 0x4001).unwrap();
        assert_eq!(fp.counters().unwrap().len(), 1);
        assert!(map_elements("gre_daddr").contains("0x4000 counter packets 0 bytes 0 : 10.0.0.2"));
        // ... and the set of local addresses.
        let mut set = nft::LocalAddrSet::open_on(&cfg, sock.clone()).unwrap();
        set.replace(&[Ipv4Addr::new(192, 0, 2, 7)]).unwrap();
        set.replace(&[]).unwrap();

        // A firewall reload's `flush ruleset` takes every other table and leaves ours whole.
        run("nft", &["add", "table", "ip", "bystander"]);
        run("nft", &["flush", "ruleset"]);
        assert!(
            !nft::table_exists("bystander").unwrap(),
            "flush ruleset did not run"
        );
        assert_eq!(list_table(&cfg.table), listed_with_element(&listed));

        // The owner replaces its table (as a reinstall does), still owned, maps empty.
        sock.install(&cfg, backend, true).unwrap();
        assert_eq!(list_table(&cfg.table), listed);
        fp.flush().unwrap();

        // Closing the owner's socket (every clone of it) deletes the table at once, so what a
        // systemd ExecStopPost `rules remove` finds afterwards is nothing, which is success.
        drop(fp);
        drop(set);
        assert!(
            nft::table_exists(&cfg.table).unwrap(),
            "a clone still holds the socket"
        );
        drop(sock);
        assert!(
            !nft::table_exists(&cfg.table).unwrap(),
            "owned table outlived its socket"
        );
        assert!(!nft::remove(&cfg.table).unwrap());
    });
}

/// What `nft list table` shows of the default table with the one element
/// `owned_table_belongs_to_its_socket` adds.
fn listed_with_element(listed: &str) -> String {
    let mut out = String::new();
    let mut in_daddr = false;
    let mut in_cid = false;
    for line in listed.lines() {
        out.push_str(line);
        out.push('\n');
        in_daddr |= line.contains("map gre_daddr {");
        in_cid |= line.contains("map gre_cid {");
        if line.trim() == "counter" && in_daddr {
            out.push_str(
                "\t\telements = { 192.0.2.1 . 0x4000 counter packets 0 bytes 0 : 10.0.0.2 }\n",
            );
            in_daddr = false;
        } else if line.contains("typeof") && in_cid {
            out.push_str("\t\telements = { 192.0.2.1 . 0x4000 : 0x7 }\n");
            in_cid = false;
        }
    }
    out
}

/// The daemon's start: an owned install replaces a table someone left unowned (the flag cannot
/// be added to an existing table, so the batch deletes it first). Another socket cannot take
/// the table over; once its owner removed it, it can.
#[test]
fn owned_install_replaces_an_unowned_table() {
    in_fresh_netns("owned_install_replaces_an_unowned_table", |_| {
        let cfg = RulesConfig::default();
        nft::install(&cfg, nft::detect_backend().unwrap()).unwrap();
        assert!(!list_table(&cfg.table).contains("flags owner"));
        let first = TableSocket::open().unwrap();
        install_owned(&first);
        assert!(list_table(&cfg.table).contains("flags owner"));

        let second = TableSocket::open().unwrap();
        let err = second
            .install_owned(&cfg, nft::detect_backend().unwrap())
            .unwrap_err();
        assert!(matches!(err, NftError::OwnedByOther { .. }), "{err:?}");
        assert!(first.remove(&cfg.table).unwrap());
        assert!(!first.remove(&cfg.table).unwrap());
        install_owned(&second);
        drop(first);
        assert!(nft::table_exists(&cfg.table).unwrap());
        drop(second);
        assert!(!nft::table_exists(&cfg.table).unwrap());
    });
}

/// Loads the shipped file with `nft -f`. Where the kernel lacks the queue expression, the
/// queue statements are replaced by `counter` (in the file and in `render`) so the rest of
/// the file is still loaded by the real parser and compared with what we render.
#[test]
fn nft_file_loads_with_nft() {
    in_fresh_netns("nft_file_loads_with_nft", |_| {
        let mut file = std::fs::read_to_string(NFT_FILE).unwrap();
        let mut rendered = nft::render(&RulesConfig::default(), QueueBackend::NftQueue);
        if backend_by_nft_tool() == QueueBackend::XtNfqueue {
            for q in [1723, 1724, 1725] {
                let from = format!("queue flags bypass to {q}");
                file = file.replace(&from, "counter");
                rendered = rendered.replace(&from, "counter");
            }
        }
        let path = std::env::temp_dir().join(format!("pptpalg-file-{}.nft", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        // Twice: the file must replace its table, not add duplicate rules.
        run("nft", &["-f", path.to_str().unwrap()]);
        run("nft", &["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert_eq!(normalise(&list_table("pptp_alg")), normalise(&rendered));
        // The daemon's fast path works on a table loaded by nft.
        let mut fp = nft::FastPath::open(&RulesConfig::default()).unwrap();
        fp.add_call(
            Ipv4Addr::new(192, 0, 2, 1),
            1,
            Ipv4Addr::new(10, 0, 0, 2),
            2,
        )
        .unwrap();
        assert_eq!(fp.counters().unwrap().len(), 1);
        // ... and fills its set of local addresses.
        let mut set = nft::LocalAddrSet::open(&RulesConfig::default()).unwrap();
        set.add(Ipv4Addr::new(192, 0, 2, 9)).unwrap();
        assert!(local_addrs_listed().contains("elements = { 192.0.2.9 }"));
    });
}

#[test]
fn pptp_helper_detection() {
    in_fresh_netns("pptp_helper_detection", |_| {
        // The sysctl and /proc/net/nf_conntrack are outside our control here; only check that
        // an nftables ct helper object is found and named.
        let before = nft::pptp_helper_in_use().unwrap();
        run("nft", &["add", "table", "inet", "fw"]);
        let ok = Command::new("nft")
            .args([
                "add",
                "ct",
                "helper",
                "inet",
                "fw",
                "pptp-h",
                "{ type \"pptp\" protocol tcp; l3proto ip; }",
            ])
            .status()
            .unwrap()
            .success();
        if !ok {
            eprintln!("kernel has no pptp conntrack helper; skipping the object check");
            return;
        }
        let found = nft::pptp_helper_in_use()
            .unwrap()
            .expect("helper object found");
        assert!(
            found.contains("\"pptp-h\"") && found.contains("inet fw"),
            "{found}"
        );
        if let Some(b) = before {
            assert!(found.contains(&b));
        }
    });
}

/// Opens a raw IPv4 GRE socket inside `ns`; the socket stays there after the thread exits.
fn gre_socket_in(ns: &Netns) -> OwnedFd {
    ns.enter(|| {
        // SAFETY: plain socket(2); ownership of the fd moves into OwnedFd.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_GRE) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 500_000,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            OwnedFd::from_raw_fd(fd)
        }
    })
}

fn send_gre(sock: &OwnedFd, to: Ipv4Addr, call_id: u16, seq: u32) {
    let payload = b"\xff\x03\x00\x21PPTP";
    let mut pkt = vec![0x30, 0x01, 0x88, 0x0b];
    pkt.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    pkt.extend_from_slice(&call_id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid fd, buffer and address.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(r, pkt.len() as isize, "{}", std::io::Error::last_os_error());
}

/// Next GRE packet (IPv4 header included) or None after the receive timeout.
fn recv_gre(sock: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    // SAFETY: valid fd and buffer.
    let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (r > 0).then(|| buf[..r as usize].to_vec())
}

fn ipv4_header_ok(pkt: &[u8]) -> bool {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let mut sum = 0u32;
    for w in pkt[..ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// outside (10.99.1.2) -- router (10.99.1.1 | 10.99.2.1) -- inside (10.99.2.2): GRE from the
/// outside peer to the router's address is translated by the kernel alone, once the address
/// is in the set of local addresses; GRE routed through the router to the inside host is not,
/// whatever (peer, Call ID) it carries.
#[test]
fn fast_path_rewrites_gre() {
    if !have_root() {
        return;
    }
    let router = std::sync::Arc::new(fresh_netns("r"));
    let outside = fresh_netns("o");
    let inside = fresh_netns("i");
    let (o, i) = (outside.name().to_string(), inside.name().to_string());
    router.enter(move || {
        run("ip", &["link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", &o,
            ],
        );
        run(
            "ip",
            &[
                "link", "add", "vi", "type", "veth", "peer", "name", "eth0", "netns", &i,
            ],
        );
        run("ip", &["addr", "add", "10.99.1.1/24", "dev", "vo"]);
        run("ip", &["addr", "add", "10.99.2.1/24", "dev", "vi"]);
        run("ip", &["link", "set", "vo", "up"]);
        run("ip", &["link", "set", "vi", "up"]);
        run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    });
    for (ns, addr, gw) in [
        (&outside, "10.99.1.2/24", "10.99.1.1"),
        (&inside, "10.99.2.2/24", "10.99.2.1"),
    ] {
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns.exec("ip", &["addr", "add", addr, "dev", "eth0"]);
        ns.exec("ip", &["link", "set", "eth0", "up"]);
        ns.exec("ip", &["route", "add", "default", "via", gw]);
    }

    let peer = Ipv4Addr::new(10, 99, 1, 2);
    let host = Ipv4Addr::new(10, 99, 2, 2);
    router.enter(move || {
        nft::install(&RulesConfig::default(), nft::detect_backend().unwrap()).unwrap();
        // Shows that the fast path marks what it translates.
        run(
            "nft",
            &["add table ip obs; \
                 add chain ip obs f { type filter hook forward priority filter; }; \
                 add rule ip obs f meta mark 0x1723 ip protocol gre counter"],
        );
        let mut fp = nft::FastPath::open(&RulesConfig::default()).unwrap();
        fp.add_call(peer, 0x4000, host, 0x0007).unwrap();
    });

    let tx = gre_socket_in(&outside);
    let rx = gre_socket_in(&inside);
    // The set is empty (no daemon fills it here): the fast path rule does not match, the queue
    // rule does (bypass, no daemon: accepted locally), nothing reaches the inside.
    for seq in 0..3 {
        send_gre(&tx, Ipv4Addr::new(10, 99, 1, 1), 0x4000, 100 + seq);
    }
    assert!(
        recv_gre(&rx).is_none(),
        "translated without the address in local_addrs"
    );
    router.enter(|| {
        let mut set = nft::LocalAddrSet::open(&RulesConfig::default()).unwrap();
        set.replace(&[Ipv4Addr::new(10, 99, 1, 1), Ipv4Addr::new(10, 99, 2, 1)])
            .unwrap();
    });
    // Let IPv4 duplicate address detection and neighbour setup settle.
    let mut got = None;
    for seq in 0..20 {
        send_gre(&tx, Ipv4Addr::new(10, 99, 1, 1), 0x4000, seq);
        if let Some(p) = recv_gre(&rx) {
            got = Some(p);
            break;
        }
    }
    let pkt = got.expect("inside host received the translated GRE packet");
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    assert_eq!(&pkt[12..16], &peer.octets(), "source unchanged");
    assert_eq!(&pkt[16..20], &host.octets(), "destination rewritten");
    assert!(ipv4_header_ok(&pkt), "IPv4 header checksum updated");
    assert_eq!(&pkt[ihl..ihl + 4], &[0x30, 0x01, 0x88, 0x0b]);
    assert_eq!(
        u16::from_be_bytes([pkt[ihl + 6], pkt[ihl + 7]]),
        0x0007,
        "Call ID"
    );

    // Unknown call: queued with bypass, no daemon, so accepted locally; never forwarded.
    send_gre(&tx, Ipv4Addr::new(10, 99, 1, 1), 0x4999, 99);
    assert!(
        recv_gre(&rx).is_none(),
        "unknown call must not reach the inside"
    );

    // Transit: GRE from the same peer with the mapped Call ID, addressed to the inside host
    // itself (routed, no NAT), passes untouched.
    let translated = || {
        router.enter(|| {
            let mut fp = nft::FastPath::open(&RulesConfig::default()).unwrap();
            fp.counters().unwrap()[0].packets
        })
    };
    let before = translated();
    send_gre(&tx, host, 0x4000, 7777);
    let pkt = recv_gre(&rx).expect("routed GRE reaches the inside host");
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    assert_eq!(&pkt[16..20], &host.octets());
    assert_eq!(
        u16::from_be_bytes([pkt[ihl + 6], pkt[ihl + 7]]),
        0x4000,
        "transit GRE's Call ID rewritten"
    );
    assert_eq!(
        u32::from_be_bytes([pkt[ihl + 8], pkt[ihl + 9], pkt[ihl + 10], pkt[ihl + 11]]),
        7777
    );
    assert_eq!(
        translated(),
        before,
        "transit GRE went through the fast path"
    );

    let (counters, obs) = router.enter(|| {
        let mut fp = nft::FastPath::open(&RulesConfig::default()).unwrap();
        (
            fp.counters().unwrap(),
            run("nft", &["list", "chain", "ip", "obs", "f"]),
        )
    });
    assert_eq!(counters.len(), 1);
    assert!(counters[0].packets >= 1, "{counters:?}");
    assert!(counters[0].bytes >= 20 + 16, "{counters:?}");
    assert!(
        !obs.contains("counter packets 0 "),
        "translated GRE carries the mark:\n{obs}"
    );
}

/// A call event's kernel elements go to the kernel as ONE netlink batch (what makes a call's
/// setup cost one round trip, not one per element kind): its start (fast path + `gre_out`),
/// its answer (`gre_out` + hairpin maps) one round trip each, its end two (one send reading
/// both counters, one batch deleting every element). The elements are checked where the
/// kernel lists them; a batch the kernel refuses (here a stale fast path element with other
/// data) falls back to each kind on its own, and no kind loses its elements.
/// The daemon's table installed through `sock` (owned) and an [`Offload`] with the fast path
/// on over it, as the packet thread has them.
fn offload_on(
    sock: &TableSocket,
) -> (
    RulesConfig,
    pptp_alg::daemon::shared::SharedRef,
    pptp_alg::daemon::offload::Offload,
) {
    use pptp_alg::alg::{Alg, AlgConfig};
    use pptp_alg::daemon::offload::{InstalledTable, Offload, OffloadConfig};
    use pptp_alg::daemon::shared::Shared;
    use pptp_alg::daemon::status::{Installed, RulesInfo};

    install_owned(sock);
    let rules = RulesConfig::default();
    let backend = nft::detect_backend().unwrap();
    let shared = Shared::new(
        Alg::new(AlgConfig::default()),
        RulesInfo {
            table: rules.table.clone(),
            installed: Installed::Owned,
            queue_backend: Some(backend),
        },
    );
    let mut off = Offload::new(
        OffloadConfig {
            rules: rules.clone(),
            offload: true,
            table: Some(InstalledTable {
                socket: sock.clone(),
                table: rules.table.clone(),
                backend,
                owned: true,
            }),
            local_addrs: None,
        },
        std::time::Instant::now(),
    );
    assert!(off.start(&shared), "fast path on");
    (rules, shared, off)
}

/// A call of inside host `host` to peer 192.0.2.7, answered with peer id `peer_id`.
fn call_info(host: &str, nat_id: u16, peer_id: u16) -> pptp_alg::alg::CallInfo {
    pptp_alg::alg::CallInfo {
        inside_host: host.parse().unwrap(),
        inside_id: 0x4000,
        outside_peer: "192.0.2.7".parse().unwrap(),
        outside_id: Some(peer_id),
        nat_id,
        conn: None,
        state: pptp_alg::alg::CallState::Requested,
        age: std::time::Duration::ZERO,
        packets_in: 0,
        packets_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        hairpin: None,
    }
}

/// No call's element is left in the fast path, hairpin maps or `gre_out`, and removing them
/// counted no error.
fn assert_no_call_elements(shared: &pptp_alg::daemon::shared::SharedRef) {
    for map in ["gre_daddr", "gre_cid", "hairpin_saddr", "hairpin_daddr"] {
        let l = map_elements(map);
        assert!(!l.contains("elements"), "{map} still has elements: {l}");
    }
    let out = run("nft", &["list", "set", "ip", "pptp_alg", "gre_out"]);
    assert!(!out.contains("elements"), "{out}");
    assert_eq!(pptp_alg::daemon::shared::lock(shared).fastpath_errors, 0);
}

#[test]
fn call_events_are_one_netlink_batch_each() {
    use pptp_alg::alg::Hairpin;
    use pptp_alg::daemon::shared::lock;
    use std::time::Instant;

    in_fresh_netns("call_events_are_one_netlink_batch_each", |_| {
        let sock = TableSocket::open().unwrap();
        let (rules, shared, mut off) = offload_on(&sock);
        let now = Instant::now();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut c = call_info("10.0.0.2", 0x1234, 0x77);
        let trips = || sock.round_trips();

        let t0 = trips();
        off.call_started(&c, now, &shared);
        assert_eq!(trips() - t0, 1, "a call's start is one netlink round trip");
        assert!(map_elements("gre_daddr").contains("192.0.2.7 . 0x1234"));
        assert!(map_elements("gre_cid").contains("192.0.2.7 . 0x1234"));
        let out = run("nft", &["list", "set", "ip", "pptp_alg", "gre_out"]);
        assert!(out.contains("10.0.0.2 . 192.0.2.7 . 0x77"), "{out}");

        c.hairpin = Some(Hairpin {
            public: a("192.0.2.1"),
            masq: a("10.0.0.1"),
        });
        let t0 = trips();
        off.call_answered(&c, now, &shared);
        assert_eq!(trips() - t0, 1, "a call's answer is one netlink round trip");
        let saddr = map_elements("hairpin_saddr");
        assert!(saddr.contains("192.0.2.7 . 10.0.0.2 . 0x4000"), "{saddr}");
        assert!(saddr.contains("10.0.0.2 . 192.0.2.7 . 0x77"), "{saddr}");
        assert!(map_elements("hairpin_daddr").contains("10.0.0.2 . 192.0.2.1 . 0x77"));
        // The chain that rewrites routed hairpinned GRE's source came with them, and only then.
        let post = run("nft", &["list", "chain", "ip", "pptp_alg", "gre_post"]);
        assert!(
            post.contains("type filter hook postrouting priority filter; policy accept;")
                && post.contains(
                    "meta mark 0x00001723 ip protocol gre @th,0,32 & 0xa007ffff == 0x2001880b \
                     ip frag-off & 8191 == 0 ip saddr set ip saddr . ip daddr . @th,48,16 map \
                     @hairpin_saddr"
                ),
            "{post}"
        );

        let t0 = trips();
        assert_eq!(off.calls_ended(&[&c], now, &shared), [(0, 0)]);
        assert_eq!(
            trips() - t0,
            2,
            "a call's end is one read of its counters and one delete batch"
        );
        assert_no_call_elements(&shared);
        let table = list_table(&rules.table);
        assert!(!table.contains("gre_post"), "{table}");

        // A stale fast path element with other data (an earlier run's) makes the batch fail:
        // the fast path replaces it on its own, and gre_out still gets its element.
        let mut fp = nft::FastPath::open_on(&rules, sock.clone()).unwrap();
        fp.add_call(c.outside_peer, c.nat_id, a("10.0.0.99"), 0x1111)
            .unwrap();
        c.hairpin = None;
        off.call_started(&c, now, &shared);
        let daddr = map_elements("gre_daddr");
        assert!(
            daddr.contains("192.0.2.7 . 0x1234") && daddr.contains("10.0.0.2"),
            "{daddr}"
        );
        assert!(!daddr.contains("10.0.0.99"), "{daddr}");
        let out = run("nft", &["list", "set", "ip", "pptp_alg", "gre_out"]);
        assert!(out.contains("10.0.0.2 . 192.0.2.7 . 0x77"), "{out}");
        let s = lock(&shared);
        assert_eq!((s.fastpath_errors, s.offload_pending), (0, 0));
        drop(s);

        // An end whose elements are gone already (both reads answered ENOENT, the delete
        // batch refused, each kind then removed on its own): nothing counted as an error.
        assert_eq!(off.calls_ended(&[&c], now, &shared), [(0, 0)]);
        assert!(!map_elements("gre_daddr").contains("elements"));
        assert_eq!(off.calls_ended(&[&c], now, &shared), [(0, 0)]);
        assert_eq!(lock(&shared).fastpath_errors, 0);

        // A refused batch names the element it was refused for (described only then).
        let mut b = nft::ElemBatch::new();
        fp.batch_remove(&mut b, a("192.0.2.9"), 5);
        let err = sock.commit_elems(b).unwrap_err().to_string();
        assert!(
            err.contains("delete element 192.0.2.9 . 0x0005 of map gre_daddr in table ip pptp_alg"),
            "{err}"
        );
    });
}

#[test]
fn calls_that_end_together_share_their_round_trips() {
    use std::time::Instant;

    in_fresh_netns("calls_that_end_together_share_their_round_trips", |_| {
        let sock = TableSocket::open().unwrap();
        let (rules, shared, mut off) = offload_on(&sock);
        let now = Instant::now();
        // 150 calls of three hosts (a control connection that closes ends them all at once),
        // and two calls of one host to which the peer gave the same id: one gre_out element.
        let mut calls: Vec<_> = (0..150u16)
            .map(|i| call_info(&format!("10.0.0.{}", 2 + i / 50), 0x1000 + i, 0x100 + i))
            .collect();
        calls.push(call_info("10.0.0.9", 0x2000, 0x77));
        calls.push(call_info("10.0.0.9", 0x2001, 0x77));
        for c in &calls {
            off.call_started(c, now, &shared);
        }
        let count = |l: &str| l.matches("192.0.2.7 . 0x").count();
        assert_eq!(count(&map_elements("gre_daddr")), 152);
        let out = run("nft", &["list", "set", "ip", "pptp_alg", "gre_out"]);
        assert_eq!(out.matches(" . 192.0.2.7 . 0x").count(), 151, "{out}");

        let ends: Vec<_> = calls.iter().collect();
        let t0 = sock.round_trips();
        assert_eq!(off.calls_ended(&ends, now, &shared), vec![(0, 0); 152]);
        // 152 calls in chunks of 64: three reads and three delete batches, where one call
        // at a time took two round trips each (304).
        assert_eq!(sock.round_trips() - t0, 6);
        assert_no_call_elements(&shared);

        // One call's element gone behind the daemon's back: the kernel refuses its chunk's
        // batch, and every call of the chunk is removed kind by kind, without an error.
        let some = &calls[..10];
        for c in some {
            off.call_started(c, now, &shared);
        }
        let mut fp = nft::FastPath::open_on(&rules, sock.clone()).unwrap();
        fp.remove_call(some[4].outside_peer, some[4].nat_id)
            .unwrap();
        let ends: Vec<_> = some.iter().collect();
        assert_eq!(off.calls_ended(&ends, now, &shared), vec![(0, 0); 10]);
        assert_no_call_elements(&shared);
    });
}

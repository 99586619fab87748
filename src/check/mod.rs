//! `pptp-alg check`: a preflight an administrator runs before enabling the unit. The checks
//! are pure functions of [`Facts`] (tested with crafted facts, no root needed); [`gather`]
//! is the thin layer that reads them from the running system.
//!
//! One [`Outcome`] per check, OK, WARN or FAIL; the command exits 1 when any check fails.

pub mod gather;
pub mod ruleset;

use crate::nft::QueueBackend;
use ruleset::{ChainFacts, Ruleset};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// A probe that could not be made, with the errno when the kernel gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    /// What went wrong, as the error said.
    pub message: String,
    /// The kernel's errno, if the error carried one.
    pub errno: Option<i32>,
}

impl ProbeError {
    /// An error without errno.
    pub fn new(message: impl Into<String>) -> ProbeError {
        ProbeError {
            message: message.into(),
            errno: None,
        }
    }

    fn eperm(&self) -> bool {
        self.errno == Some(libc::EPERM) || self.errno == Some(libc::EACCES)
    }
}

/// The result of a probe.
pub type Probe<T> = Result<T, ProbeError>;

/// Who holds the configured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableState {
    /// No such table: the daemon installs it.
    Absent,
    /// Owned by another netlink socket (a running daemon).
    Owned(String),
    /// There, owned by nobody: loaded by hand (`nft -f`, `rules install`) or left by a
    /// daemon on a kernel without table owners.
    Unowned,
}

/// Everything the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Whether this process is in the initial user namespace (`/proc/self/uid_map` maps all
    /// of it); the map otherwise.
    pub user_ns: Probe<Result<(), String>>,
    /// Whether this process has CAP_NET_ADMIN in its namespace.
    pub cap_net_admin: Probe<bool>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Probe<bool>,
    /// Whether nfnetlink_queue is loaded (or built in).
    pub nfnetlink_queue: Probe<bool>,
    /// How this kernel can queue packets.
    pub backend: Probe<QueueBackend>,
    /// Whether the kernel gives tables an owner (Linux 5.12).
    pub table_owner: Probe<bool>,
    /// Whether a payload write rule can be loaded; probed only outside the initial user
    /// namespace, where recent kernels refuse it.
    pub payload_write: Option<Probe<()>>,
    /// The configured table.
    pub table: Probe<TableState>,
    /// Where the kernel PPTP helper is in use, if it is.
    pub pptp_helper: Probe<Option<String>>,
    /// The live nftables ruleset.
    pub ruleset: Probe<Ruleset>,
}

/// What the checks compare against: the daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// The nftables table.
    pub table: String,
    /// The mark of translated GRE.
    pub mark: u32,
    /// The bits of the mark pptp-alg owns.
    pub mark_mask: u32,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a caveat, or cannot be told.
    Warn,
    /// pptp-alg will not work (or not fully) until it is fixed.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The check's name.
    pub check: &'static str,
    /// OK, WARN or FAIL.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

fn outcome(check: &'static str, status: Status, detail: impl Into<String>) -> Outcome {
    Outcome {
        check,
        status,
        detail: detail.into(),
    }
}

/// The sentence every "not allowed" says.
pub const NEEDS_ADMIN: &str = "needs CAP_NET_ADMIN: run as root (the unit grants it)";

/// What pptp-alg cannot do in a user namespace other than the initial one.
pub const USERNS_EXPLAIN: &str = "kernels with the netfilter change of May 2026 refuse NFQUEUE \
    payload rewrites and nftables payload writes in network namespaces owned by a non-initial \
    user namespace (rootless containers): there, control messages cannot be translated and the \
    kernel fast path cannot rewrite GRE. Run pptp-alg on the host, or in a container that \
    shares the host's user namespace";

/// Runs every check.
pub fn run(f: &Facts, cfg: &CheckConfig) -> Vec<Outcome> {
    vec![
        privileges(f),
        user_ns(f),
        nfnetlink_queue(f),
        queue_backend(f),
        table(f, cfg),
        ip_forward(f),
        masquerade(f),
        port_forward(f),
        pptp_helper(f),
        forward_policy(f, cfg),
    ]
}

fn privileges(f: &Facts) -> Outcome {
    match &f.cap_net_admin {
        Ok(true) => outcome("privileges", Status::Ok, "CAP_NET_ADMIN"),
        Ok(false) => outcome(
            "privileges",
            Status::Fail,
            format!("no CAP_NET_ADMIN: the daemon and most checks need it ({NEEDS_ADMIN})"),
        ),
        Err(e) => outcome("privileges", Status::Warn, e.message.clone()),
    }
}

fn user_ns(f: &Facts) -> Outcome {
    const C: &str = "user_namespace";
    match &f.user_ns {
        Ok(Ok(())) => outcome(C, Status::Ok, "the initial user namespace"),
        Ok(Err(map)) => {
            let probe = match &f.payload_write {
                Some(Err(e)) if e.eperm() => {
                    return outcome(
                        C,
                        Status::Fail,
                        format!(
                            "a non-initial user namespace (uid_map {map}), and this kernel \
                             refuses payload writes here (EPERM): {USERNS_EXPLAIN}"
                        ),
                    )
                }
                Some(Ok(())) => "this kernel accepts payload writes here today, but ",
                _ => "",
            };
            outcome(
                C,
                Status::Warn,
                format!("a non-initial user namespace (uid_map {map}); {probe}{USERNS_EXPLAIN}"),
            )
        }
        Err(e) => outcome(C, Status::Warn, format!("cannot tell: {}", e.message)),
    }
}

fn nfnetlink_queue(f: &Facts) -> Outcome {
    const C: &str = "nfnetlink_queue";
    match &f.nfnetlink_queue {
        Ok(true) => outcome(C, Status::Ok, "loaded"),
        Ok(false) => outcome(
            C,
            Status::Warn,
            "not loaded yet; the kernel loads it when the daemon binds its queues \
             (`modprobe nfnetlink_queue` to be sure it exists)",
        ),
        Err(e) => outcome(C, Status::Warn, format!("cannot tell: {}", e.message)),
    }
}

fn queue_backend(f: &Facts) -> Outcome {
    const C: &str = "queue";
    match &f.backend {
        Ok(QueueBackend::NftQueue) => outcome(C, Status::Ok, "nftables `queue` expression"),
        Ok(QueueBackend::XtNfqueue) => outcome(
            C,
            Status::Ok,
            "no nftables `queue` expression (CONFIG_NFT_QUEUE); the xt NFQUEUE target through \
             nft_compat is used instead (`nft -f pptp-alg.nft` would not load: use \
             `pptp-alg rules install` or --install-rules)",
        ),
        Err(e) if e.eperm() => outcome(
            C,
            Status::Fail,
            format!("cannot probe ({}): {NEEDS_ADMIN}", e.message),
        ),
        Err(e) => outcome(
            C,
            Status::Fail,
            format!(
                "{}; the kernel needs nft_queue or nft_compat with xt_NFQUEUE",
                e.message
            ),
        ),
    }
}

fn table(f: &Facts, cfg: &CheckConfig) -> Outcome {
    const C: &str = "table";
    let owner = match &f.table_owner {
        Ok(true) => "this kernel can give it an owner (table_owner = true)",
        Ok(false) => "this kernel gives tables no owner (Linux < 5.12): table_owner has no effect",
        Err(_) => "whether the kernel can give it an owner cannot be told",
    };
    match &f.table {
        Ok(TableState::Absent) => outcome(
            C,
            Status::Ok,
            format!(
                "table ip {} absent; the daemon installs it ({owner})",
                cfg.table
            ),
        ),
        Ok(TableState::Owned(by)) => outcome(
            C,
            Status::Ok,
            format!("table ip {} owned by a running {by}", cfg.table),
        ),
        Ok(TableState::Unowned) => outcome(
            C,
            Status::Warn,
            format!(
                "table ip {} exists and has no owner: a running daemon's (it has none by \
                 default), one loaded by hand (fine without --install-rules), or one left by a \
                 crashed daemon (`pptp-alg rules remove`)",
                cfg.table
            ),
        ),
        Err(e) if e.eperm() => outcome(C, Status::Fail, NEEDS_ADMIN),
        Err(e) => outcome(C, Status::Warn, format!("cannot tell: {}", e.message)),
    }
}

fn ip_forward(f: &Facts) -> Outcome {
    const C: &str = "ip_forward";
    match &f.ip_forward {
        Ok(true) => outcome(C, Status::Ok, "net.ipv4.ip_forward = 1"),
        Ok(false) => outcome(
            C,
            Status::Fail,
            "net.ipv4.ip_forward = 0: this host routes nothing (sysctl -w net.ipv4.ip_forward=1, \
             and set it in /etc/sysctl.d/)",
        ),
        Err(e) => outcome(C, Status::Warn, format!("cannot tell: {}", e.message)),
    }
}

/// The IPv4 NAT base chains with `hook`.
fn nat_chains<'a>(rs: &'a Ruleset, hook: &'a str) -> impl Iterator<Item = &'a ChainFacts> {
    rs.chains.iter().filter(move |c| {
        c.hook.as_deref() == Some(hook)
            && c.kind.as_deref() == Some("nat")
            && matches!(c.family.as_str(), "ip" | "inet")
    })
}

fn ruleset_unknown(check: &'static str, e: &ProbeError) -> Outcome {
    let why = if e.eperm() {
        NEEDS_ADMIN.to_string()
    } else {
        e.message.clone()
    };
    outcome(
        check,
        Status::Warn,
        format!("cannot read the nftables ruleset: {why}"),
    )
}

fn masquerade(f: &Facts) -> Outcome {
    const C: &str = "masquerade";
    let rs = match &f.ruleset {
        Ok(rs) => rs,
        Err(e) => return ruleset_unknown(C, e),
    };
    let found: Vec<String> = nat_chains(rs, "postrouting")
        .filter(|c| c.rules.iter().any(|r| r.masquerade || r.snat))
        .map(ChainFacts::label)
        .collect();
    if found.is_empty() {
        outcome(
            C,
            Status::Warn,
            "no masquerade or snat rule in the nftables ruleset: inside clients need one \
             (`oifname \"wan0\" masquerade`; rules of iptables-legacy are not visible here)",
        )
    } else {
        outcome(C, Status::Ok, format!("in {}", found.join(", ")))
    }
}

fn port_forward(f: &Facts) -> Outcome {
    const C: &str = "port_forward";
    let rs = match &f.ruleset {
        Ok(rs) => rs,
        Err(e) => return ruleset_unknown(C, e),
    };
    let to: BTreeSet<&str> = nat_chains(rs, "prerouting")
        .flat_map(|c| c.rules.iter().filter_map(|r| r.dnat_1723.as_deref()))
        .collect();
    if to.is_empty() {
        outcome(
            C,
            Status::Ok,
            "no dnat of tcp/1723 (needed only for a PPTP server inside)",
        )
    } else {
        outcome(
            C,
            Status::Ok,
            format!(
                "tcp/1723 forwarded to {}",
                to.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    }
}

fn pptp_helper(f: &Facts) -> Outcome {
    const C: &str = "pptp_helper";
    match &f.pptp_helper {
        Ok(None) => outcome(C, Status::Ok, "the kernel PPTP helper is not in use"),
        Ok(Some(place)) => outcome(
            C,
            Status::Fail,
            format!(
                "the kernel PPTP helper is in use ({place}): it would translate the same calls, \
                 and the daemon refuses to start. Remove its `ct helper` rules and set \
                 net.netfilter.nf_conntrack_helper=0"
            ),
        ),
        Err(e) if e.eperm() => outcome(C, Status::Fail, NEEDS_ADMIN),
        Err(e) => outcome(C, Status::Warn, format!("cannot tell: {}", e.message)),
    }
}

/// What a chain (and the chains it jumps to) does with translated GRE: accepted by a rule,
/// not known (xt rules, jumps out of reach), or nothing accepts it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accepted(String),
    Unknown(String),
    NotAccepted,
}

fn accepts_translated_gre(
    rs: &Ruleset,
    chain: &ChainFacts,
    cfg: &CheckConfig,
    seen: &mut BTreeSet<String>,
) -> Verdict {
    if !seen.insert(chain.label()) {
        return Verdict::NotAccepted;
    }
    let mark = cfg.mark & cfg.mark_mask;
    let mut unknown = None;
    for r in &chain.rules {
        if r.verdict.as_deref() == Some("accept") {
            // The mark pptp-alg sets passes a match when it gives the same value under the
            // rule's mask, and the rule looks at no bit pptp-alg does not own.
            if let Some((m, v)) = r
                .mark_matches
                .iter()
                .find(|&&(m, v)| mark & m == v && m & !cfg.mark_mask == 0)
            {
                let shown = if *m == u32::MAX {
                    format!("meta mark {v:#x} accept")
                } else {
                    format!("meta mark & {m:#x} == {v:#x} accept")
                };
                return Verdict::Accepted(format!("`{shown}` in {}", chain.label()));
            }
            if r.untracked && r.mark_matches.is_empty() {
                return Verdict::Accepted(format!(
                    "`ct state untracked accept` in {}",
                    chain.label()
                ));
            }
            if r.gre && r.mark_matches.is_empty() {
                return Verdict::Accepted(format!("an accept of GRE in {}", chain.label()));
            }
        }
        if r.xt && unknown.is_none() {
            unknown = Some(format!(
                "{} has iptables-nft (xt) rules whose matches cannot be read",
                chain.label()
            ));
        }
        for j in &r.jumps {
            match rs.sibling(chain, j) {
                Some(next) => match accepts_translated_gre(rs, next, cfg, seen) {
                    Verdict::NotAccepted => {}
                    v => return v,
                },
                None => {
                    unknown.get_or_insert_with(|| format!("{} jumps to {j}", chain.label()));
                }
            }
        }
    }
    unknown.map_or(Verdict::NotAccepted, Verdict::Unknown)
}

fn forward_policy(f: &Facts, cfg: &CheckConfig) -> Outcome {
    const C: &str = "forward_policy";
    let rs = match &f.ruleset {
        Ok(rs) => rs,
        Err(e) => return ruleset_unknown(C, e),
    };
    let strict: Vec<&ChainFacts> = rs
        .chains
        .iter()
        .filter(|c| {
            c.hook.as_deref() == Some("forward")
                && matches!(c.family.as_str(), "ip" | "inet")
                && c.drops_by_default()
        })
        .collect();
    if strict.is_empty() {
        return outcome(C, Status::Ok, "no forward chain drops by default");
    }
    let mut ok = Vec::new();
    let mut unknown = Vec::new();
    let mut broken = Vec::new();
    for c in strict {
        match accepts_translated_gre(rs, c, cfg, &mut BTreeSet::new()) {
            Verdict::Accepted(how) => ok.push(how),
            Verdict::Unknown(why) => unknown.push(why),
            Verdict::NotAccepted => broken.push(c.label()),
        }
    }
    let rule = if cfg.mark_mask == u32::MAX {
        format!("meta mark {:#x} accept", cfg.mark)
    } else {
        format!(
            "meta mark & {:#x} == {:#x} accept",
            cfg.mark_mask,
            cfg.mark & cfg.mark_mask
        )
    };
    if !broken.is_empty() {
        return outcome(
            C,
            Status::Fail,
            format!(
                "{} drop(s) by default and nothing there accepts translated GRE (untracked, \
                 mark {:#x}): calls come up but no GRE reaches inside hosts. Add `{rule}` \
                 before the drop (README: Firewall recipes)",
                broken.join(", "),
                cfg.mark
            ),
        );
    }
    if !unknown.is_empty() {
        return outcome(
            C,
            Status::Warn,
            format!(
                "cannot tell whether translated GRE passes: {}; make sure `{rule}` comes first",
                unknown.join("; ")
            ),
        );
    }
    outcome(C, Status::Ok, format!("accepted by {}", ok.join(", ")))
}

/// The outcomes, one line each: `STATUS  check  detail`.
pub fn to_text(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|o| o.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for o in outcomes {
        let s = match o.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(out, "{s:<4}  {:<width$}  {}", o.check, o.detail);
    }
    out
}

/// Whether any check failed.
pub fn failed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().any(|o| o.status == Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CheckConfig {
        CheckConfig {
            table: "pptp_alg".into(),
            mark: 0x1723,
            mark_mask: u32::MAX,
        }
    }

    fn good() -> Facts {
        Facts {
            user_ns: Ok(Ok(())),
            cap_net_admin: Ok(true),
            ip_forward: Ok(true),
            nfnetlink_queue: Ok(true),
            backend: Ok(QueueBackend::XtNfqueue),
            table_owner: Ok(true),
            payload_write: None,
            table: Ok(TableState::Absent),
            pptp_helper: Ok(None),
            ruleset: Ok(Ruleset::from_nft_json(ruleset::tests::SAMPLE).unwrap()),
        }
    }

    fn status(outcomes: &[Outcome], check: &str) -> (Status, String) {
        let o = outcomes.iter().find(|o| o.check == check).expect(check);
        (o.status, o.detail.clone())
    }

    #[test]
    fn a_good_router_passes() {
        let o = run(&good(), &cfg());
        assert!(!failed(&o), "{}", to_text(&o));
        assert!(o.iter().all(|o| o.status == Status::Ok), "{}", to_text(&o));
        let (_, d) = status(&o, "forward_policy");
        // The masked rule accepts it first.
        assert!(d.contains("meta mark & 0xffff == 0x1723 accept"), "{d}");
        assert_eq!(
            status(&o, "port_forward").1,
            "tcp/1723 forwarded to 192.168.1.10"
        );
        assert_eq!(status(&o, "masquerade").1, "in ip nat postrouting");
    }

    #[test]
    fn each_broken_fact_fails_its_check() {
        let mut f = good();
        f.ip_forward = Ok(false);
        f.pptp_helper = Ok(Some("ct helper object inet filter pptp".into()));
        f.backend = Err(ProbeError::new("neither nft queue nor xt NFQUEUE"));
        let o = run(&f, &cfg());
        assert!(failed(&o));
        assert_eq!(status(&o, "ip_forward").0, Status::Fail);
        assert_eq!(status(&o, "pptp_helper").0, Status::Fail);
        assert_eq!(status(&o, "queue").0, Status::Fail);
        assert_eq!(status(&o, "forward_policy").0, Status::Ok);
    }

    #[test]
    fn a_strict_forward_chain_without_the_mark_rule_fails() {
        let mut f = good();
        let rs = f.ruleset.as_mut().unwrap();
        // Drop the masked mark rule, the untracked rule and the jump to `sub`.
        rs.chains[0].rules.drain(1..4);
        let o = run(&f, &cfg());
        let (s, d) = status(&o, "forward_policy");
        assert_eq!(s, Status::Fail, "{d}");
        assert!(d.contains("inet filter forward"), "{d}");
        assert!(d.contains("`meta mark 0x1723 accept`"), "{d}");
        // The jump alone is enough.
        let mut f = good();
        f.ruleset.as_mut().unwrap().chains[0].rules.drain(1..3);
        let (s, d) = status(&run(&f, &cfg()), "forward_policy");
        assert_eq!(s, Status::Ok, "{d}");
        assert!(
            d.contains("`meta mark 0x1723 accept` in inet filter sub"),
            "{d}"
        );
    }

    #[test]
    fn an_accept_of_gre_counts_as_firewalld_gives_it() {
        let mut f = good();
        let rs = f.ruleset.as_mut().unwrap();
        rs.chains[0].rules.drain(1..4);
        rs.chains[0].rules.insert(
            1,
            ruleset::RuleFacts {
                conditional: true,
                gre: true,
                verdict: Some("accept".into()),
                ..Default::default()
            },
        );
        let (s, d) = status(&run(&f, &cfg()), "forward_policy");
        assert_eq!(s, Status::Ok, "{d}");
        assert!(d.contains("an accept of GRE in inet filter forward"), "{d}");
    }

    #[test]
    fn a_mark_rule_for_other_bits_is_not_enough() {
        let mut f = good();
        f.ruleset.as_mut().unwrap().chains[0].rules.drain(2..4);
        // Only the masked rule is left, and pptp-alg owns fewer bits than it reads.
        let c = CheckConfig {
            mark_mask: 0xff,
            mark: 0x23,
            ..cfg()
        };
        assert_eq!(status(&run(&f, &c), "forward_policy").0, Status::Fail);
        let c = CheckConfig {
            mark_mask: 0xffff,
            ..cfg()
        };
        assert_eq!(status(&run(&f, &c), "forward_policy").0, Status::Ok);
    }

    #[test]
    fn permissions_say_what_is_missing() {
        let mut f = good();
        let eperm = ProbeError {
            message: "Operation not permitted".into(),
            errno: Some(libc::EPERM),
        };
        f.cap_net_admin = Ok(false);
        f.backend = Err(eperm.clone());
        f.table = Err(eperm.clone());
        f.ruleset = Err(eperm);
        let o = run(&f, &cfg());
        for c in ["privileges", "queue", "table"] {
            let (s, d) = status(&o, c);
            assert_eq!(s, Status::Fail, "{c}");
            assert!(d.contains("CAP_NET_ADMIN"), "{c}: {d}");
        }
        assert!(status(&o, "masquerade").1.contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn a_user_namespace_is_explained() {
        let mut f = good();
        f.user_ns = Ok(Err("0 100000 65536".into()));
        f.payload_write = Some(Err(ProbeError {
            message: "Operation not permitted".into(),
            errno: Some(libc::EPERM),
        }));
        let (s, d) = status(&run(&f, &cfg()), "user_namespace");
        assert_eq!(s, Status::Fail);
        assert!(d.contains("refuse NFQUEUE payload rewrites"), "{d}");
        f.payload_write = Some(Ok(()));
        let (s, d) = status(&run(&f, &cfg()), "user_namespace");
        assert_eq!(s, Status::Warn);
        assert!(d.contains("accepts payload writes here today"), "{d}");
    }

    #[test]
    fn text_has_one_line_per_check() {
        let o = run(&good(), &cfg());
        let t = to_text(&o);
        assert_eq!(t.lines().count(), o.len());
        assert!(t.lines().all(|l| l.starts_with("OK ")), "{t}");
    }
}

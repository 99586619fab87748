//! What `check` needs to know of the live nftables ruleset, read from `nft -j list ruleset`:
//! the base chains (hook, policy) and, per rule, the few things a check asks about. Pure:
//! parsing only, no I/O. Rules of iptables-legacy are not in it (they are not nftables).

use serde_json::Value;

/// The ruleset as far as the checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Every chain, in listing order.
    pub chains: Vec<ChainFacts>,
}

/// One chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainFacts {
    /// `ip`, `inet`, `ip6`, `bridge`, ...
    pub family: String,
    /// The table.
    pub table: String,
    /// The chain.
    pub name: String,
    /// `filter`, `nat`, `route` for a base chain.
    pub kind: Option<String>,
    /// The hook of a base chain.
    pub hook: Option<String>,
    /// `accept` or `drop` for a base chain.
    pub policy: Option<String>,
    /// Its rules, in order.
    pub rules: Vec<RuleFacts>,
}

/// One rule, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFacts {
    /// It has match statements (is conditional).
    pub conditional: bool,
    /// Masquerade (nft `masquerade` or xt `MASQUERADE`).
    pub masquerade: bool,
    /// Source NAT to an address.
    pub snat: bool,
    /// The destination of a `dnat` of tcp/1723.
    pub dnat_1723: Option<String>,
    /// `meta mark` matches: (mask, value), mask 0xffffffff when none.
    pub mark_matches: Vec<(u32, u32)>,
    /// Matches `ct state untracked` (alone or in a set of states).
    pub untracked: bool,
    /// Matches GRE (`meta l4proto gre`, `ip protocol gre`), as firewalld's recipe does.
    pub gre: bool,
    /// Chains it jumps or goes to.
    pub jumps: Vec<String>,
    /// Its final verdict: `accept`, `drop`, `reject`, `return`, `jump`, `goto`, or none.
    pub verdict: Option<String>,
    /// It uses xt (iptables-nft) extensions `nft` cannot show.
    pub xt: bool,
}

impl Ruleset {
    /// Parses the output of `nft -j list ruleset`.
    pub fn from_nft_json(text: &str) -> Result<Ruleset, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not nft JSON: {e}"))?;
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("no \"nftables\" array in nft's JSON")?;
        let mut rs = Ruleset::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                rs.chains.push(ChainFacts {
                    family: str_of(c, "family"),
                    table: str_of(c, "table"),
                    name: str_of(c, "name"),
                    kind: c.get("type").and_then(Value::as_str).map(str::to_owned),
                    hook: c.get("hook").and_then(Value::as_str).map(str::to_owned),
                    policy: c.get("policy").and_then(Value::as_str).map(str::to_owned),
                    rules: Vec::new(),
                });
            } else if let Some(r) = item.get("rule") {
                let (family, table, chain) =
                    (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"));
                let facts = rule_facts(r.get("expr").and_then(Value::as_array));
                if let Some(c) = rs
                    .chains
                    .iter_mut()
                    .find(|c| c.family == family && c.table == table && c.name == chain)
                {
                    c.rules.push(facts);
                }
            }
        }
        Ok(rs)
    }

    /// The chain `name` of the table of `of`.
    pub fn sibling(&self, of: &ChainFacts, name: &str) -> Option<&ChainFacts> {
        self.chains
            .iter()
            .find(|c| c.family == of.family && c.table == of.table && c.name == name)
    }
}

impl ChainFacts {
    /// `inet filter forward`, as an operator would name it.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }

    /// Whether what no rule accepts is dropped: a drop policy, or a last rule that drops or
    /// rejects everything that reaches it (firewalld's and many hand-written chains end so).
    pub fn drops_by_default(&self) -> bool {
        self.policy.as_deref() == Some("drop")
            || self.rules.last().is_some_and(|r| {
                !r.conditional && matches!(r.verdict.as_deref(), Some("drop" | "reject"))
            })
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn rule_facts(exprs: Option<&Vec<Value>>) -> RuleFacts {
    let mut f = RuleFacts::default();
    let mut tcp_1723 = false;
    let mut dnat_to = None;
    for e in exprs.into_iter().flatten() {
        let Some((key, body)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match key.as_str() {
            "match" => {
                f.conditional = true;
                let left = body.get("left").unwrap_or(&Value::Null);
                let right = body.get("right").unwrap_or(&Value::Null);
                let op = body.get("op").and_then(Value::as_str).unwrap_or("==");
                if let Some(mask) = mark_left(left) {
                    if matches!(op, "==" | "in") {
                        if let Some(v) = right.as_u64().and_then(|v| u32::try_from(v).ok()) {
                            f.mark_matches.push((mask, v));
                        }
                    }
                }
                if is_ct_state(left) && matches!(op, "==" | "in") && names(right, "untracked") {
                    f.untracked = true;
                }
                if is_l4proto(left) && matches!(op, "==" | "in") && is_gre(right) {
                    f.gre = true;
                }
                if is_dport(left) && op == "==" && has_port(right, 1723) {
                    tcp_1723 = true;
                }
            }
            "masquerade" => f.masquerade = true,
            "snat" => f.snat = true,
            "dnat" => {
                dnat_to = Some(match body.get("addr") {
                    Some(Value::String(a)) => a.clone(),
                    Some(other) => other.to_string(),
                    None => "?".into(),
                });
            }
            "xt" => {
                f.xt = true;
                if body.get("name").and_then(Value::as_str) == Some("MASQUERADE") {
                    f.masquerade = true;
                }
            }
            "accept" | "drop" | "reject" | "return" => f.verdict = Some(key.clone()),
            "jump" | "goto" => {
                f.verdict = Some(key.clone());
                if let Some(t) = body.get("target").and_then(Value::as_str) {
                    f.jumps.push(t.to_string());
                }
            }
            _ => {}
        }
    }
    if tcp_1723 {
        f.dnat_1723 = dnat_to;
    }
    f
}

/// `meta mark`, or `meta mark & MASK`: the mask.
fn mark_left(left: &Value) -> Option<u32> {
    let is_mark = |v: &Value| v.pointer("/meta/key").and_then(Value::as_str) == Some("mark");
    if is_mark(left) {
        return Some(u32::MAX);
    }
    let and = left.get("&")?.as_array()?;
    match and.as_slice() {
        [m, mask] if is_mark(m) => mask.as_u64().and_then(|v| u32::try_from(v).ok()),
        _ => None,
    }
}

fn is_l4proto(left: &Value) -> bool {
    left.pointer("/meta/key").and_then(Value::as_str) == Some("l4proto")
        || (left.pointer("/payload/protocol").and_then(Value::as_str) == Some("ip")
            && left.pointer("/payload/field").and_then(Value::as_str) == Some("protocol"))
}

/// `gre`, 47, or a set holding either.
fn is_gre(right: &Value) -> bool {
    match right {
        Value::String(s) => s == "gre",
        Value::Number(n) => n.as_u64() == Some(47),
        Value::Array(a) => a.iter().any(is_gre),
        Value::Object(o) => o.get("set").is_some_and(is_gre),
        _ => false,
    }
}

fn is_ct_state(left: &Value) -> bool {
    left.pointer("/ct/key").and_then(Value::as_str) == Some("state")
}

fn is_dport(left: &Value) -> bool {
    left.pointer("/payload/field").and_then(Value::as_str) == Some("dport")
        && matches!(
            left.pointer("/payload/protocol").and_then(Value::as_str),
            Some("tcp" | "th")
        )
}

/// Whether `right` is `name` or a list or set holding it.
fn names(right: &Value, name: &str) -> bool {
    match right {
        Value::String(s) => s == name,
        Value::Array(a) => a.iter().any(|v| names(v, name)),
        Value::Object(o) => o.get("set").is_some_and(|s| names(s, name)),
        _ => false,
    }
}

/// Whether `right` is the port, a list or set holding it, or a range around it.
fn has_port(right: &Value, port: u64) -> bool {
    match right {
        Value::Number(n) => n.as_u64() == Some(port),
        Value::Array(a) => a.iter().any(|v| has_port(v, port)),
        Value::Object(o) => {
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                return matches!(r.as_slice(), [lo, hi]
                    if lo.as_u64().is_some_and(|l| l <= port) && hi.as_u64().is_some_and(|h| port <= h));
            }
            o.get("set").is_some_and(|s| has_port(s, port))
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `nft -j list ruleset` (nftables 1.0.6) of a router with a strict forward chain, the
    /// mark rule (with a mask), masquerade and a port forward of tcp/1723; handles left out.
    pub const SAMPLE: &str = r#"{"nftables": [
{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "filter"}},
{"chain": {"family": "inet", "table": "filter", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"chain": {"family": "inet", "table": "filter", "name": "sub"}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65535]}, "right": 5923}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "untracked"}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"jump": {"target": "sub"}}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan*"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "sub", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 5923}}, {"accept": null}]}},
{"table": {"family": "ip", "name": "nat"}},
{"chain": {"family": "ip", "table": "nat", "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
{"chain": {"family": "ip", "table": "nat", "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
{"rule": {"family": "ip", "table": "nat", "chain": "postrouting", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"masquerade": null}]}},
{"rule": {"family": "ip", "table": "nat", "chain": "prerouting", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wan0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1723}}, {"dnat": {"addr": "192.168.1.10"}}]}}
]}"#;

    #[test]
    fn parses_what_the_checks_ask() {
        let rs = Ruleset::from_nft_json(SAMPLE).unwrap();
        assert_eq!(rs.chains.len(), 4);
        let fwd = &rs.chains[0];
        assert_eq!(fwd.label(), "inet filter forward");
        assert!(fwd.drops_by_default());
        assert_eq!(fwd.rules[1].mark_matches, vec![(0xffff, 0x1723)]);
        assert_eq!(fwd.rules[1].verdict.as_deref(), Some("accept"));
        assert!(fwd.rules[2].untracked);
        assert!(!fwd.rules[2].gre);
        let gre = r#"{"nftables": [{"chain": {"family": "inet", "table": "f", "name": "c"}},
            {"rule": {"family": "inet", "table": "f", "chain": "c", "expr": [{"match": {"op": "==",
            "left": {"meta": {"key": "l4proto"}}, "right": "gre"}}, {"accept": null}]}}]}"#;
        assert!(Ruleset::from_nft_json(gre).unwrap().chains[0].rules[0].gre);
        assert!(!fwd.rules[0].untracked);
        assert_eq!(fwd.rules[3].jumps, vec!["sub".to_string()]);
        assert!(!fwd.rules[5].conditional);
        let sub = rs.sibling(fwd, "sub").unwrap();
        assert_eq!(sub.rules[0].mark_matches, vec![(u32::MAX, 0x1723)]);
        assert!(rs.chains[2].rules[0].masquerade);
        assert_eq!(
            rs.chains[3].rules[0].dnat_1723.as_deref(),
            Some("192.168.1.10")
        );
    }

    #[test]
    fn refuses_what_is_not_nft_json() {
        assert!(Ruleset::from_nft_json("table ip x {}").is_err());
        assert!(Ruleset::from_nft_json("{}").is_err());
        assert_eq!(
            Ruleset::from_nft_json(r#"{"nftables": []}"#).unwrap(),
            Ruleset::default()
        );
    }
}

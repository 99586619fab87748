//! The ruleset in nft syntax, laid out exactly as `nft list table` prints it.

use super::ruleset::{chains, rule_text, sets};
use super::{QueueBackend, RulesConfig};

/// See [`super::render`].
pub fn render(cfg: &RulesConfig, backend: QueueBackend) -> String {
    let mut blocks = Vec::new();
    for m in sets(cfg) {
        let mut b = format!(
            "\t{} {} {{\n\t\t{}\n",
            m.keyword,
            m.name.to_string_lossy(),
            m.typeof_text
        );
        if m.counter {
            b.push_str("\t\tcounter\n");
        }
        b.push_str("\t}\n");
        blocks.push(b);
    }
    for c in chains(cfg, backend) {
        let mut b = format!(
            "\tchain {} {{\n\t\ttype filter hook {} priority {}; policy accept;\n",
            c.name.to_string_lossy(),
            c.hook_text,
            c.prio_text
        );
        for r in &c.rules {
            b.push_str("\t\t");
            b.push_str(&rule_text(r));
            b.push('\n');
        }
        b.push_str("\t}\n");
        blocks.push(b);
    }
    format!("table ip {} {{\n{}}}\n", cfg.table, blocks.join("\n"))
}

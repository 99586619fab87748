//! `pptp-alg generate-docs DIR` (hidden): the man pages and shell
//! completions, generated from the parser this very binary uses and from
//! the example config it embeds, so the installed pages cannot drift from
//! the installed program. The Makefile and the Debian package call it at
//! build time; it is hidden because administrators get its output already
//! installed.
//!
//! pptp-alg(8) is clap's definition rendered by clap_mangen, one page for
//! all subcommands (a daemon's few commands read better on one page than
//! on `pptp-alg-run(8)` and friends). pptp-alg.toml(5) is rendered from
//! `config/pptp-alg.toml`, the commented example with every key and its
//! default; the tests below check that the README's table names the same
//! keys with the same defaults, and tests/config.rs that the example is
//! the built-in defaults.

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use std::io::{self, Write};
use std::path::Path;

/// The example configuration, the single source of pptp-alg.toml(5).
pub const EXAMPLE_CONFIG: &str = include_str!("../config/pptp-alg.toml");

/// Where the package installs the configuration (the unit's --config).
const CONFIG_PATH: &str = "/etc/pptp-alg/pptp-alg.toml";

/// Writes `man/pptp-alg.8`, `man/pptp-alg.toml.5` and
/// `completions/{pptp-alg.bash,_pptp-alg,pptp-alg.fish}` under `dir`.
pub fn generate(dir: &Path, exit_config: u8) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    std::fs::write(
        man.join("pptp-alg.8"),
        program_page(crate::Cli::command(), exit_config)?,
    )?;
    std::fs::write(man.join("pptp-alg.toml.5"), config_page(EXAMPLE_CONFIG))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "pptp-alg", &completions)?;
    }
    Ok(())
}

/// The package's version for the pages' footers.
fn source() -> String {
    format!("pptp-alg {}", env!("CARGO_PKG_VERSION"))
}

/// pptp-alg(8): clap_mangen's title, name, synopsis and description of the
/// top command, then every visible subcommand with its synopsis and
/// options, then what clap does not know (files, environment, exit status).
pub fn program_page(cmd: Command, exit_config: u8) -> io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(source());
    let mut out = Vec::new();
    top.render_title(&mut out)?;
    top.render_name_section(&mut out)?;
    top.render_synopsis_section(&mut out)?;
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    r.text([
        bold("pptp-alg"),
        roman(
            " lets many hosts behind one NAT address hold PPTP calls to the same server \
             at the same time, and lets a PPTP server sit behind a port forward. nftables \
             does the ordinary NAT; the PPTP control connection (tcp/1723) and enhanced GRE \
             reach the daemon through NFQUEUE, and known calls' GRE is translated by the \
             kernel through nftables maps the daemon fills.",
        ),
    ]);
    r.control("PP", []);
    r.text([
        roman("The systemd unit "),
        bold("pptp-alg.service"),
        roman(" runs "),
        bold(format!(
            "pptp-alg run --install-rules --config {CONFIG_PATH}"
        )),
        roman(". The package installs it disabled: enable it with "),
        bold("systemctl enable --now pptp-alg"),
        roman(" once the router's masquerade is in place and the configuration is checked."),
    ]);
    r.control("SH", ["COMMANDS"]);
    write_roff(&mut out, &r)?;
    for sub in visible_leaves(&cmd) {
        let man = clap_mangen::Man::new(sub.clone()).section("8");
        let mut r = Roff::new();
        r.control("SS", [sub.get_bin_name().unwrap_or(sub.get_name())]);
        write_roff(&mut out, &r)?;
        // clap_mangen's sections start with `.SH NAME`-style headers; under
        // COMMANDS each subcommand is a subsection, so drop those headers.
        let mut synopsis = Vec::new();
        man.render_synopsis_section(&mut synopsis)?;
        out.extend(strip_headers(&synopsis));
        let mut r = Roff::new();
        r.control("PP", []);
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        r.text([roman(about)]);
        write_roff(&mut out, &r)?;
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let mut options = Vec::new();
            man.render_options_section(&mut options)?;
            out.extend(strip_headers(&options));
        }
    }
    write_roff(&mut out, &program_tail(exit_config))?;
    Ok(out)
}

/// The runnable subcommands, depth first (`rules install`, not `rules`).
fn visible_leaves(cmd: &Command) -> Vec<&Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.has_subcommands() {
            out.extend(visible_leaves(sub));
        } else {
            out.push(sub);
        }
    }
    out
}

/// Removes `.SH` lines and the apostrophe preamble roff puts first, so a
/// rendered section can be embedded in another page.
fn strip_headers(roff_text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff_text);
    let body = text.split_once(".SH ").map_or(text.as_ref(), |(_, rest)| {
        rest.split_once('\n').map_or("", |(_, after)| after)
    });
    body.lines()
        .filter(|l| !l.starts_with(".SH "))
        .flat_map(|l| [l, "\n"])
        .collect::<String>()
        .into_bytes()
}

fn write_roff(out: &mut Vec<u8>, r: &Roff) -> io::Result<()> {
    // to_roff (not render): the apostrophe preamble is in the title already.
    out.write_all(r.to_roff().as_bytes())
}

fn program_tail(exit_config: u8) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            CONFIG_PATH,
            "The configuration read by the unit; see pptp-alg.toml(5). Flags of the same name override it.",
        ),
        (
            "/usr/share/pptp-alg/pptp-alg.nft",
            "The ruleset the daemon installs, for administrators who load rules themselves (nft -f) and run the daemon without --install-rules.",
        ),
        (
            crate::daemon::config::DEFAULT_STATUS_SOCKET,
            "The socket pptp-alg status reads.",
        ),
        (
            crate::daemon::config::DEFAULT_STATE_FILE,
            "Live calls saved at stop and restored at start, so a restart or an upgrade keeps them.",
        ),
    ] {
        r.control("TP", []);
        r.text([italic(path)]);
        r.text([roman(what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("RUST_LOG")]);
    r.text([roman(
        "Overrides log_level with an env_logger filter (e.g. RUST_LOG=debug).",
    )]);
    r.control("SH", ["EXIT STATUS"]);
    r.text([roman(format!(
        "0 on success; {exit_config} for a configuration or usage error (the unit does not \
         restart on it: RestartPreventExitStatus={exit_config}); 1 for any other failure."
    ))]);
    r.control("SH", ["SIGNALS"]);
    r.text([roman(
        "SIGTERM and SIGINT stop the daemon cleanly: it saves the live calls and removes its \
         table. SIGHUP reloads the configuration file: limits, timeouts, id_policy and \
         log_level apply at once, live calls stay; a change of a key that needs a restart is \
         refused with a log line naming it, and the running configuration stays. SIGUSR1 \
         writes the live calls and counters to the log.",
    )]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("pptp-alg.toml"),
        roman("(5), "),
        bold("nft"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), /usr/share/doc/pptp-alg/README.md.gz"),
    ]);
    r
}

/// One key of the example configuration.
#[derive(Debug, PartialEq)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Its value in the example, which is the default.
    pub value: String,
    /// The comment lines above it, `# ` removed.
    pub doc: Vec<String>,
}

/// The example config, parsed for documentation: its header comment, and
/// keys grouped under the `# --- Title ---` lines.
#[derive(Debug)]
pub struct Example {
    /// The first comment block.
    pub header: Vec<String>,
    /// (section title, its keys).
    pub sections: Vec<(String, Vec<Key>)>,
}

/// Splits the example into its header, sections and keys. It relies only
/// on the layout every block of the file has: comment lines directly above
/// `key = value`, blank lines between blocks.
pub fn parse_example(text: &str) -> Example {
    let mut header = Vec::new();
    let mut sections: Vec<(String, Vec<Key>)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    let mut in_header = true;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            if in_header && !comment.is_empty() {
                header = std::mem::take(&mut comment);
                in_header = false;
            }
            comment.clear();
        } else if let Some(title) = line.strip_prefix("# ---") {
            sections.push((title.trim_matches(|c| c == '-' || c == ' ').into(), vec![]));
            comment.clear();
        } else if let Some(c) = line.strip_prefix('#') {
            comment.push(c.strip_prefix(' ').unwrap_or(c).to_string());
        } else if let Some((name, value)) = line.split_once('=') {
            if sections.is_empty() {
                sections.push((String::new(), vec![]));
            }
            let key = Key {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                doc: std::mem::take(&mut comment),
            };
            sections.last_mut().expect("pushed above").1.push(key);
        }
    }
    Example { header, sections }
}

/// Adds comment lines as filled text. A line that starts a quoted value
/// (`"keep"   keeps ...`) begins a new line, so the file's small value
/// lists stay lists; an empty comment line begins a paragraph.
fn comment_text(r: &mut Roff, lines: &[String]) {
    for line in lines {
        let t = line.trim();
        if t.is_empty() {
            r.control("PP", []);
        } else {
            if t.starts_with('"') {
                r.control("br", []);
            }
            r.text([roman(t)]);
        }
    }
}

/// pptp-alg.toml(5), from the example config.
pub fn config_page(example_text: &str) -> Vec<u8> {
    let ex = parse_example(example_text);
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "PPTP-ALG.TOML",
            "5",
            "",
            source().as_str(),
            "File Formats Manual",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman("pptp-alg.toml - pptp-alg configuration file")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(CONFIG_PATH)]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([
        bold("pptp-alg"),
        roman("(8) reads this TOML file when given "),
        bold("--config"),
        roman(" (the systemd unit gives "),
        italic(CONFIG_PATH),
        roman(")."),
    ]);
    r.control("PP", []);
    // The header's first line is the file's title ("pptp-alg configuration
    // (TOML)."), said by NAME already.
    let header = ex.header.get(1..).unwrap_or_default();
    comment_text(&mut r, header);
    r.control("PP", []);
    r.text([roman(
        "The value after each key is its default. The package installs this file \
         with every key at its default as a conffile: an upgrade keeps the administrator's \
         changes. The commented original stays in \
         /usr/share/doc/pptp-alg/examples/pptp-alg.toml (from source: \
         /usr/local/share/pptp-alg/pptp-alg.toml.example).",
    )]);
    r.control("SH", ["KEYS"]);
    for (title, keys) in &ex.sections {
        if !title.is_empty() {
            r.control("SS", [title.as_str()]);
        }
        for key in keys {
            r.control("TP", []);
            r.text([bold(key.name.as_str()), roman(format!(" = {}", key.value))]);
            comment_text(&mut r, &key.doc);
        }
    }
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([italic(CONFIG_PATH)]);
    r.text([roman("The configuration the systemd unit reads.")]);
    r.control("TP", []);
    r.text([italic("/usr/share/doc/pptp-alg/examples/pptp-alg.toml")]);
    r.text([roman("The example with every key at its default.")]);
    r.control("SH", ["SEE ALSO"]);
    r.text([bold("pptp-alg"), roman("(8), https://toml.io/")]);
    r.render().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pptp_alg::daemon::Config;

    /// The README's configuration table: (key, default) per row.
    fn readme_table() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("## Configuration reference")
            .expect("README has a configuration reference");
        readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| key"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect()
    }

    fn example_keys() -> Vec<Key> {
        parse_example(EXAMPLE_CONFIG)
            .sections
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect()
    }

    /// The man page's source names every key the daemon reads, in the
    /// README's order, with the README's defaults.
    #[test]
    fn readme_table_agrees_with_the_example_config() {
        let readme = readme_table();
        let example = example_keys();
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let example_pairs: Vec<(String, String)> = example
            .iter()
            .map(|k| (k.name.clone(), k.value.clone()))
            .collect();
        assert_eq!(names(&readme), names(&example_pairs));
        for ((key, readme_default), (_, example_value)) in readme.iter().zip(&example_pairs) {
            // The README writes durations as "60 s" and strings unquoted.
            let readme_default = readme_default.trim_end_matches(" s").trim_matches('"');
            let example_value = example_value.trim_matches('"');
            assert_eq!(readme_default, example_value, "default of `{key}`");
        }
    }

    /// The README says for every key when a change applies, as the daemon
    /// decides it at a reload.
    #[test]
    fn readme_table_says_when_each_key_applies() {
        use pptp_alg::daemon::Apply;
        let readme = include_str!("../README.md");
        let start = readme.find("## Configuration reference").unwrap();
        let rows: Vec<(String, String)> = readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| key"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[4].to_string())
            })
            .collect();
        let want: Vec<(String, String)> = Config::KEYS
            .iter()
            .map(|&(k, a)| {
                let when = match a {
                    Apply::Reload => "at a reload",
                    Apply::Restart => "at a restart",
                };
                (k.to_string(), when.to_string())
            })
            .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn example_config_names_every_key() {
        let defaults: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap())
            .expect("the defaults serialize");
        let mut keys: Vec<String> = defaults.keys().cloned().collect();
        let mut example: Vec<String> = example_keys().into_iter().map(|k| k.name).collect();
        keys.sort();
        example.sort();
        assert_eq!(keys, example);
    }

    #[test]
    fn every_key_has_a_description_and_a_section() {
        let ex = parse_example(EXAMPLE_CONFIG);
        assert!(ex.header[0].starts_with("pptp-alg configuration"));
        for (title, keys) in &ex.sections {
            assert!(!title.is_empty(), "keys outside a `# ---` section");
            for k in keys {
                assert!(!k.doc.is_empty(), "`{}` has no comment", k.name);
            }
        }
    }

    #[test]
    fn program_page_documents_every_visible_flag() {
        let page = String::from_utf8(program_page(crate::Cli::command(), 2).unwrap()).unwrap();
        assert!(
            page.starts_with(".ie \\n(.g"),
            "the apostrophe preamble comes first"
        );
        assert_eq!(page.matches(".TH ").count(), 1);
        for sub in ["pptp-alg run", "pptp-alg rules install", "pptp-alg status"] {
            assert!(page.contains(&format!(".SS \"{sub}\"")), "{sub} missing");
        }
        assert!(!page.contains("generate"), "the hidden command stays out");
        for key in example_keys() {
            if key.name == "install_rules" {
                continue; // run's --install-rules is written out below
            }
            let flag = format!("\\-\\-{}", key.name.replace('_', "\\-"));
            assert!(page.contains(&flag), "{flag} missing");
        }
        assert!(page.contains("\\-\\-install\\-rules"));
    }

    /// The package's version is the crate's (`pptp-alg --version` must
    /// name the version dpkg shows): bumping one means a changelog entry.
    #[test]
    fn debian_changelog_names_the_crate_version() {
        let top = include_str!("../debian/changelog").lines().next().unwrap();
        let want = format!("pptp-alg ({}) ", env!("CARGO_PKG_VERSION"));
        assert!(
            top.starts_with(&want),
            "debian/changelog starts {top:?}, not {want:?}"
        );
    }

    #[test]
    fn config_page_has_every_key() {
        let page = String::from_utf8(config_page(EXAMPLE_CONFIG)).unwrap();
        for key in example_keys() {
            let name = &key.name;
            assert!(page.contains(&format!("\\fB{name}\\fR")), "{name} missing");
        }
    }
}

//! The daemon's configuration parser on arbitrary text: no panic; a
//! document is either refused with an error that formats, or gives a
//! configuration that validates or not (naming the key), and whose derived
//! engine and nftables configurations are usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::daemon::config::{parse_u32_auto, Config};
use pptp_alg::nft::{render, QueueBackend};

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file as UTF-8 (read_to_string): other bytes
    // never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_u32_auto(text);
    match Config::from_toml(text) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
        Ok(cfg) => match cfg.validate() {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert!(e.key().is_some(), "a validation error names its key");
            }
            Ok(()) => {
                let alg = cfg.alg_config(1);
                assert!(alg.max_calls >= 1 && alg.max_connections >= 1);
                let rules = cfg.rules_config();
                for backend in [QueueBackend::NftQueue, QueueBackend::XtNfqueue] {
                    let text = render(&rules, backend);
                    assert!(text.contains(&rules.table));
                }
                // An engine with this configuration starts.
                let _ = pptp_alg::alg::Alg::new(alg);
            }
        },
    }
});

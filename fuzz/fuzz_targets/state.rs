//! The state-file loader on arbitrary bytes: no panic; what it accepts is
//! taken by the engine's `restore_calls` without breaking the call
//! indexes, and a save of the restored calls loads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::alg::{Alg, AlgConfig};
use pptp_alg::daemon::state;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One file per fuzzing process: `state::load` takes a path, and going
/// through the file keeps this target independent of how load is built
/// inside.
fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pptp-alg-fuzz-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("state.json")
    })
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    std::fs::write(p, data).expect("write state file");
    let calls = match state::load(p, Duration::from_secs(u64::MAX), 1 << 20) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Small limits, so that restoring also exercises the refusals.
    let cfg = AlgConfig {
        max_calls: 8,
        max_calls_per_host: 4,
        max_connections: 4,
        ..AlgConfig::default()
    };
    let now = Instant::now();
    let mut alg = Alg::new(cfg.clone());
    let n = alg.restore_calls(now, &calls);
    assert!(n <= calls.len());
    alg.check_call_indexes().expect("indexes after restore");
    let saved = alg.saved_calls();
    assert_eq!(saved.len(), n);
    // Calls saved in quarantine come back in quarantine, not live.
    let live = saved.iter().filter(|c| c.quarantine_left.is_none()).count();
    assert_eq!(alg.calls(now).len(), live);
    // What one engine saved, another restores whole.
    let mut again = Alg::new(cfg);
    assert_eq!(again.restore_calls(now, &saved), n);
    again
        .check_call_indexes()
        .expect("indexes after second restore");
    let mut a = again.saved_calls();
    let mut b = saved.clone();
    let key = |c: &pptp_alg::alg::SavedCall| (c.conn.inside, c.conn.outside, c.inside_id, c.nat_id);
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
    state::save(p, saved.clone()).expect("save");
    let back = state::load(p, Duration::from_secs(60), 8).expect("load what was saved");
    // The live calls come back as saved; a quarantine may have lost a
    // second to the clock between saving and loading.
    let is_live = |c: &&pptp_alg::alg::SavedCall| c.quarantine_left.is_none();
    assert!(back.iter().filter(is_live).eq(saved.iter().filter(is_live)));
    assert!(back.len() <= saved.len());
});

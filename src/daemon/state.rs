//! The live calls kept across restarts: written at stop and while calls
//! change, read at start. Without it, a restarted daemon would not know
//! which NAT ids the calls that are up hold, and could give one of them to
//! a new call of another host, which would then receive the old call's GRE.

use crate::alg::SavedCall;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize)]
struct StateFile {
    /// Seconds since the Unix epoch when written.
    saved_at: u64,
    calls: Vec<SavedCall>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `calls` atomically (temporary file, then rename).
pub fn save(path: &Path, calls: Vec<SavedCall>) -> io::Result<()> {
    let doc = StateFile {
        saved_at: unix_now(),
        calls,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Reads saved calls no older than `max_age` (older ones would have timed
/// out anyway). A missing file is no calls.
pub fn load(path: &Path, max_age: Duration) -> io::Result<Vec<SavedCall>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let doc: StateFile = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    if unix_now().saturating_sub(doc.saved_at) > max_age.as_secs() {
        return Ok(Vec::new());
    }
    Ok(doc.calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::ConnKey;

    #[test]
    fn round_trip_and_age_limit() {
        let dir = std::env::temp_dir().join(format!("pptp-alg-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert!(load(&path, Duration::from_secs(60)).unwrap().is_empty());
        let call = SavedCall {
            conn: ConnKey {
                inside: "10.0.0.2:40000".parse().unwrap(),
                outside: "192.0.2.1:1723".parse().unwrap(),
            },
            inside_id: 0x4000,
            outside_id: Some(7),
            nat_id: 0x4001,
            established: true,
        };
        save(&path, vec![call.clone()]).unwrap();
        assert_eq!(load(&path, Duration::from_secs(60)).unwrap(), vec![call]);
        std::fs::write(&path, br#"{"saved_at":1,"calls":[]}"#).unwrap();
        assert!(load(&path, Duration::from_secs(60)).unwrap().is_empty());
        std::fs::write(&path, b"not json").unwrap();
        assert!(load(&path, Duration::from_secs(60)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

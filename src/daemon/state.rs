//! The live calls kept across restarts: written at stop and while calls
//! change, read at start. Without it, a restarted daemon would not know
//! which NAT ids the calls that are up hold, and could give one of them to
//! a new call of another host, which would then receive the old call's GRE.
//! Owns the state file's format and its reading and writing; it does not
//! decide when to save (the main loop in [`super::run`](mod@super::run) does).
//!
//! The file is read before the queues are bound and only up to
//! [`size_limit`]: a start never spends seconds parsing a file this daemon
//! could not have written while packets wait in the queues.
//!
//! The file is a snapshot; what happened since is in the write-ahead
//! journal (see [`super::journal`]). The snapshot names the first journal
//! generation that continues it (`journal`), so that a start replays
//! exactly the records the snapshot does not hold.

use crate::alg::SavedCall;
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize)]
struct StateFile {
    /// Format version. Files without one are version 1 (NAT ids that keep
    /// the inside id's high byte): valid version 2 files too, so they are
    /// read as they are. A daemon of version 1 reading a version 2 file
    /// drops the calls whose NAT id changed the high byte (it checks the
    /// rule per call) instead of misreading them.
    #[serde(default = "version_1")]
    version: u32,
    /// Seconds since the Unix epoch when written.
    saved_at: u64,
    /// The first journal generation written after the calls were taken:
    /// the records a start replays on top of them. Absent in files of
    /// daemons without a journal (and in [`save`]'s): nothing to replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal: Option<u64>,
    calls: Vec<SavedCall>,
}

/// A state file as read, before the journal is replayed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was written (seconds since the Unix epoch).
    pub saved_at: u64,
    /// The first journal generation to replay on it, if any.
    pub journal: Option<u64>,
    /// Its calls; those in quarantine with the time they have left now
    /// (the time since `saved_at` taken off), expired ones dropped.
    pub calls: Vec<SavedCall>,
}

/// The format this daemon writes: NAT ids in per-connection blocks.
const VERSION: u32 = 2;

fn version_1() -> u32 {
    1
}

/// Bytes allowed per saved call. The longest call this daemon writes (every
/// address and port at its widest) takes about 150 bytes of JSON (checked by
/// a test below), 180 in quarantine; the rest is headroom for later fields.
pub const BYTES_PER_CALL: u64 = 288;
/// Bytes allowed besides the calls (`saved_at` and the brackets).
const BYTES_FIXED: u64 = 4096;

/// The largest state file a daemon with `max_calls` reads: it never saves
/// more than `max_calls` live calls and as many in quarantine. 9 MiB with
/// the default 16,384; a file saved with a `max_calls` more than about 1.5
/// times larger than today's can be refused, losing its calls.
pub fn size_limit(max_calls: usize) -> u64 {
    BYTES_FIXED + BYTES_PER_CALL.saturating_mul(2 * max_calls as u64)
}

/// Why saved calls are not taken back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Larger than [`size_limit`]: not read at all.
    #[error(
        "the file is larger than {limit} bytes, more than {max_calls} live and as many \
         quarantined saved calls (max_calls) can take at {BYTES_PER_CALL} bytes each: \
         refused unread"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The `max_calls` it was derived from.
        max_calls: usize,
    },
    /// Not the JSON this daemon writes.
    #[error("not a pptp-alg state file: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer daemon in a format this one does not know.
    #[error("state file version {0} is newer than this daemon's ({VERSION}): its calls are not restored")]
    NewerVersion(u32),
    /// Written "later" than now: the age check cannot be trusted.
    #[error(
        "saved_at {saved_at} is {ahead} s ahead of this clock (the clock went back since, \
         or the file is not this daemon's): its calls are not restored"
    )]
    FromTheFuture {
        /// The file's timestamp (seconds since the Unix epoch).
        saved_at: u64,
        /// How far ahead of now, in seconds.
        ahead: u64,
    },
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `calls` atomically (temporary file, then rename), with no journal
/// to replay on them.
pub fn save(path: &Path, calls: Vec<SavedCall>) -> io::Result<()> {
    save_snapshot(path, calls, None, unix_now())
}

/// Writes `calls`, as they were at `saved_at` (seconds since the Unix
/// epoch), atomically (temporary file, then rename) as a snapshot
/// continued by journal generations from `journal` on.
pub fn save_snapshot(
    path: &Path,
    calls: Vec<SavedCall>,
    journal: Option<u64>,
    saved_at: u64,
) -> io::Result<()> {
    let doc = StateFile {
        version: VERSION,
        saved_at,
        journal,
        calls,
    };
    let tmp = temp_path(path);
    std::fs::write(&tmp, serde_json::to_vec(&doc).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Checks at start that [`save`] will be able to write `path`: its
/// directory exists and takes a new file (created and removed here). The
/// error names what is wrong, for the operator.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("directory {} does not exist", dir.display()))
        }
        Err(e) => return Err(format!("directory {}: {e}", dir.display())),
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    // Permissions, read-only mounts, a sandbox: only a write tells.
    let tmp = temp_path(path);
    std::fs::write(&tmp, b"")
        .map_err(|e| format!("cannot write in directory {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Reads saved calls no older than `max_age` (older ones would have timed
/// out anyway), refusing files larger than [`size_limit`]`(max_calls)`.
/// A missing file is no calls.
pub fn load(
    path: &Path,
    max_age: Duration,
    max_calls: usize,
) -> Result<Vec<SavedCall>, StateError> {
    let now = unix_now();
    Ok(match load_snapshot(path, max_calls, now)? {
        Some(snap) if now - snap.saved_at <= max_age.as_secs() => snap.calls,
        _ => Vec::new(),
    })
}

/// Reads a state file, refusing files larger than
/// [`size_limit`]`(max_calls)` unread. `None` when there is none. The age
/// is not checked: the journal may show the daemon alive later than the
/// snapshot was written.
pub fn load_snapshot(
    path: &Path,
    max_calls: usize,
    now: u64,
) -> Result<Option<Snapshot>, StateError> {
    let limit = size_limit(max_calls);
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let too_large = StateError::TooLarge { limit, max_calls };
    // The size first, so a huge file is not even read; `take` for what
    // has no size (a device, a pipe).
    if file.metadata()?.len() > limit {
        return Err(too_large);
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large);
    }
    parse_snapshot(&bytes, now).map(Some)
}

/// The calls of a state file's bytes, given the time now (seconds since
/// the Unix epoch): none if older than `max_age`, an error if from the
/// future.
pub fn parse(bytes: &[u8], now: u64, max_age: Duration) -> Result<Vec<SavedCall>, StateError> {
    let snap = parse_snapshot(bytes, now)?;
    if now - snap.saved_at > max_age.as_secs() {
        return Ok(Vec::new());
    }
    Ok(snap.calls)
}

/// A state file's bytes as a [`Snapshot`], given the time now (seconds
/// since the Unix epoch): an error if from the future; `saved_at <= now`.
pub fn parse_snapshot(bytes: &[u8], now: u64) -> Result<Snapshot, StateError> {
    let doc: StateFile = serde_json::from_slice(bytes)?;
    if doc.version > VERSION {
        return Err(StateError::NewerVersion(doc.version));
    }
    if doc.saved_at > now {
        return Err(StateError::FromTheFuture {
            saved_at: doc.saved_at,
            ahead: doc.saved_at - now,
        });
    }
    let elapsed = now - doc.saved_at;
    // A quarantine went on while the daemon was down.
    let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
    let mut calls = doc.calls;
    calls.retain_mut(|c| match &mut c.quarantine_left {
        Some(left) if *left <= elapsed => false,
        Some(left) => {
            *left -= elapsed;
            true
        }
        None => true,
    });
    Ok(Snapshot {
        saved_at: doc.saved_at,
        journal: doc.journal,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::ConnKey;

    fn temp_dir(case: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pptp-alg-state-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn widest_call() -> SavedCall {
        SavedCall {
            conn: ConnKey {
                inside: "255.255.255.255:65535".parse().unwrap(),
                outside: "255.255.255.255:65535".parse().unwrap(),
            },
            inside_id: 65535,
            outside_id: Some(65535),
            nat_id: 65535,
            established: false,
            quarantine_left: Some(u32::MAX),
        }
    }

    #[test]
    fn round_trip_and_age_limit() {
        let dir = temp_dir("rt");
        let path = dir.join("state.json");
        let load = |p: &Path| load(p, Duration::from_secs(60), 100);
        assert!(load(&path).unwrap().is_empty());
        let call = SavedCall {
            conn: ConnKey {
                inside: "10.0.0.2:40000".parse().unwrap(),
                outside: "192.0.2.1:1723".parse().unwrap(),
            },
            inside_id: 0x4000,
            outside_id: Some(7),
            nat_id: 0x4001,
            established: true,
            quarantine_left: None,
        };
        save(&path, vec![call.clone()]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![call.clone()]);
        // The quarantine of a saved ended call went on while nothing ran.
        let ended = SavedCall {
            quarantine_left: Some(30),
            ..call.clone()
        };
        let doc = format!(
            r#"{{"version":2,"saved_at":1000000,"calls":[{}]}}"#,
            serde_json::to_string(&ended).unwrap()
        );
        let left = parse(doc.as_bytes(), 1_000_020, Duration::from_secs(60)).unwrap();
        assert_eq!(left[0].quarantine_left, Some(10));
        assert!(parse(doc.as_bytes(), 1_000_030, Duration::from_secs(60))
            .unwrap()
            .is_empty());
        // A version 1 file (no version field) is read; a newer one is not.
        let v1 = format!(
            r#"{{"saved_at":{},"calls":[{}]}}"#,
            unix_now(),
            serde_json::to_string(&call).unwrap()
        );
        assert_eq!(
            parse(v1.as_bytes(), unix_now(), Duration::from_secs(60))
                .unwrap()
                .len(),
            1
        );
        let v3 = format!(r#"{{"version":3,"saved_at":{},"calls":[]}}"#, unix_now());
        assert!(matches!(
            parse(v3.as_bytes(), unix_now(), Duration::from_secs(60)),
            Err(StateError::NewerVersion(3))
        ));
        std::fs::write(&path, br#"{"saved_at":1,"calls":[]}"#).unwrap();
        assert!(load(&path).unwrap().is_empty());
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(load(&path), Err(StateError::Malformed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The size limit assumes [`BYTES_PER_CALL`] per call: a full table of
    /// the widest calls must fit, with room to spare for new fields.
    #[test]
    fn a_full_table_fits_the_size_limit() {
        let one = serde_json::to_vec(&widest_call()).unwrap().len() as u64 + 1;
        assert!(one * 3 / 2 <= BYTES_PER_CALL, "{one} bytes per call");
        let max_calls = 1000;
        let doc = StateFile {
            version: VERSION,
            saved_at: u64::MAX,
            journal: Some(u64::MAX),
            calls: vec![widest_call(); max_calls],
        };
        let len = serde_json::to_vec(&doc).unwrap().len() as u64;
        assert!(len <= size_limit(max_calls), "{len}");
    }

    #[test]
    fn a_file_above_the_limit_is_refused_unread() {
        let dir = temp_dir("big");
        let path = dir.join("state.json");
        let max_calls = 10;
        let saved = vec![widest_call(); max_calls];
        save(&path, saved.clone()).unwrap();
        assert_eq!(
            load(&path, Duration::from_secs(60), max_calls).unwrap(),
            saved
        );
        // Valid JSON, padded beyond the limit: refused by its size alone.
        let mut text = std::fs::read(&path).unwrap();
        text.resize(size_limit(max_calls) as usize + 1, b' ');
        std::fs::write(&path, &text).unwrap();
        let e = load(&path, Duration::from_secs(60), max_calls).unwrap_err();
        assert!(matches!(e, StateError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("max_calls"), "{e}");
        // No size to check first: the read stops at the limit.
        let e = load(Path::new("/dev/zero"), Duration::from_secs(60), max_calls).unwrap_err();
        assert!(matches!(e, StateError::TooLarge { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A snapshot names the journal generation that continues it and
    /// keeps the date it was given; files without one have none.
    #[test]
    fn snapshot_keeps_its_journal_generation_and_date() {
        let dir = temp_dir("snap");
        let path = dir.join("state.json");
        let ended = SavedCall {
            quarantine_left: Some(50),
            ..widest_call()
        };
        save_snapshot(&path, vec![ended], Some(7), 1000).unwrap();
        let snap = load_snapshot(&path, 10, 1020).unwrap().unwrap();
        assert_eq!((snap.saved_at, snap.journal), (1000, Some(7)));
        assert_eq!(snap.calls[0].quarantine_left, Some(30));
        save(&path, Vec::new()).unwrap();
        let snap = load_snapshot(&path, 10, unix_now()).unwrap().unwrap();
        assert_eq!(snap.journal, None);
        assert_eq!(load_snapshot(&dir.join("none"), 10, 0).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_from_the_future_is_refused() {
        let doc = br#"{"saved_at":1000,"calls":[]}"#;
        let age = Duration::from_secs(300);
        assert!(parse(doc, 1000, age).unwrap().is_empty());
        let e = parse(doc, 999, age).unwrap_err();
        assert!(
            matches!(
                e,
                StateError::FromTheFuture {
                    saved_at: 1000,
                    ahead: 1
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("not restored"), "{e}");
    }

    #[test]
    fn writability_is_checked_with_a_clear_message() {
        let dir = temp_dir("w");
        assert_eq!(check_writable(&dir.join("state.json")), Ok(()));
        assert!(!dir.join("state.tmp").exists(), "probe file left behind");
        let missing = dir.join("nope/state.json");
        let e = check_writable(&missing).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("nope"), "{e}");
        let e = check_writable(&dir).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        std::fs::write(dir.join("file"), b"").unwrap();
        let e = check_writable(&dir.join("file/state.json")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

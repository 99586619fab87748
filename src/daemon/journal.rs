//! The write-ahead journal of call changes: what happened since the last
//! snapshot of the call table (the state file, see [`super::state`]).
//! Owns the journal files' format, writing and replay; the packet thread
//! calls the writer, and nothing here touches the engine.
//!
//! Why. The snapshot is written every 2 s while calls change; a daemon
//! killed in between (SIGKILL, a crash) lost the calls younger than that,
//! and after the restart another host could be given such a call's NAT id
//! and receive its GRE. The packet thread therefore appends one record per
//! call start, answer and end to the journal *before* it gives the packet
//! that carries the call's NAT id its verdict: once the peer can know the
//! id, the record is in the kernel's page cache, which survives the death
//! of the process (not a power loss, which takes the router's conntrack
//! state and the peers' TCP connections along anyway). A plain `write(2)`,
//! no `fsync`: one system call of a few hundred bytes per packet that
//! changes calls, none for the rest.
//!
//! Format. JSON lines, one record per line, written in one `write` per
//! packet (or timer run): readable with `jq`, parsed by the serde code the
//! state file uses, and a torn record (a crash mid-write) is an incomplete
//! last line. Such a line is ignored, and rightly so: the write of a
//! packet's records returns before its verdict is given, so a record
//! without its newline belongs to a packet that never left, whose call
//! no peer knows. A record is about 150 bytes; the bytes cost little next
//! to the system call.
//!
//! Generations. Journal files are `<state_file>.journal.<generation>`.
//! A snapshot takes the calls and moves the packet thread to a new
//! generation under the same engine lock, and says in the state file
//! which generation continues it; older generations are removed after
//! the snapshot is renamed into place. Each packet's events are tagged
//! with the generation current when they were drained from the engine
//! (under that lock), so a record is either in the snapshot or in a
//! generation the snapshot names, never both, never neither. A start
//! loads the snapshot and replays the generations from the one it names,
//! in order, reading no more than [`size_limit`] bytes in all.
//!
//! Encoding, parsing and replay are pure functions; [`Writer`],
//! [`list`], [`remove_before`] and [`read_from`] are the file system shell.

use crate::alg::{ConnKey, Event, SavedCall};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Bytes allowed per record. The widest record this daemon writes (every
/// address, port and time at its widest) takes about 230 bytes with its
/// newline (checked by a test below).
pub const BYTES_PER_RECORD: u64 = 256;
/// Bytes allowed besides the records.
const BYTES_FIXED: u64 = 4096;

/// The most journal bytes a start reads, over all generations: four
/// records for each of `max_calls` calls (a start, an answer, an end and a
/// start of the call that takes its place), 16 MiB with the default
/// 16,384. The writer keeps a generation below half of it and asks for a
/// snapshot (which starts a new generation) at a quarter, so this is
/// reached only when snapshots cannot be written; more is refused unread.
pub fn size_limit(max_calls: usize) -> u64 {
    BYTES_FIXED + BYTES_PER_RECORD.saturating_mul(4 * max_calls as u64)
}

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`Event::CallStarted`]: the call is live.
    Start,
    /// [`Event::CallAnswered`]: established, the outside id known.
    Answer,
    /// [`Event::CallEnded`]: its NAT id is in quarantine from `at`.
    End,
}

/// One line of the journal. Every record describes its call in full, so
/// that one lost record (a failed write) costs no more than itself: an
/// answer or an end without its start still brings the call back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What happened.
    pub ev: Kind,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The outside peer: with `nat_id`, the call's key.
    pub peer: Ipv4Addr,
    /// The NAT Call ID.
    pub nat_id: u16,
    /// The inside host's own Call ID.
    pub inside_id: u16,
    /// The control connection (always known for starts and answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnKey>,
    /// The outside peer's own Call ID, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_id: Option<u16>,
    /// Whether the call had been answered with success.
    #[serde(default, skip_serializing_if = "is_false")]
    pub established: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The record of an event, if it changes the call table.
pub fn record_of(ev: &Event, at: u64) -> Option<Record> {
    let (kind, c) = match ev {
        Event::CallStarted(c) => (Kind::Start, c),
        Event::CallAnswered(c) => (Kind::Answer, c),
        Event::CallEnded(c, _) => (Kind::End, c),
        _ => return None,
    };
    Some(Record {
        ev: kind,
        at,
        peer: c.outside_peer,
        nat_id: c.nat_id,
        inside_id: c.inside_id,
        conn: c.conn,
        outside_id: c.outside_id,
        established: kind == Kind::Answer || c.state == crate::alg::CallState::Established,
    })
}

/// Appends the records of `events` to `out`, one line each; returns how
/// many.
pub fn encode(events: &[Event], at: u64, out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for r in events.iter().filter_map(|e| record_of(e, at)) {
        let len = out.len();
        // Serializing plain fields into a Vec cannot fail; should it, the
        // partial line is taken back rather than written.
        if serde_json::to_writer(&mut *out, &r).is_ok() {
            out.push(b'\n');
            n += 1;
        } else {
            out.truncate(len);
        }
    }
    n
}

/// The records of a journal file's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The complete, readable records, in order.
    pub records: Vec<Record>,
    /// Complete lines that are not records (skipped).
    pub bad_lines: usize,
    /// The first of them: its line number (from 1) and what is wrong.
    pub first_bad: Option<(usize, String)>,
    /// Bytes after the last newline: a record torn by a crash mid-write,
    /// ignored.
    pub torn_tail: usize,
}

/// Parses a journal file. Never fails: a line that is not a record is
/// skipped and counted (a failed write followed by a good one leaves one
/// such line; the writer ends a torn line before it writes again), an
/// incomplete last line is ignored (see the module documentation).
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let (complete, tail) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => (&bytes[..=i], &bytes[i + 1..]),
        None => (&bytes[..0], bytes),
    };
    out.torn_tail = tail.len();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => out.records.push(r),
            Err(e) => {
                out.bad_lines += 1;
                out.first_bad.get_or_insert((i + 1, e.to_string()));
            }
        }
    }
    out
}

/// How a call of the replayed table ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// In quarantine in the snapshot, for this many seconds more (now).
    Left(u32),
    /// Ended at this time (seconds since the Unix epoch).
    At(u64),
}

/// The call table as the snapshot and the journal records after it say.
#[derive(Debug, Default)]
pub struct Replay {
    /// By (outside peer, NAT id): unique among live and quarantined calls.
    calls: HashMap<(Ipv4Addr, u16), (u64, SavedCall, Option<Ended>)>,
    /// Insertion counter, for a stable order of the result.
    seq: u64,
    /// The latest record time seen.
    last_at: u64,
    /// Records applied.
    applied: usize,
}

impl Replay {
    /// Starts from a snapshot's calls (quarantines already aged to now).
    pub fn new(snapshot: Vec<SavedCall>) -> Self {
        let mut r = Replay::default();
        for c in snapshot {
            let ended = c.quarantine_left.map(Ended::Left);
            r.put(
                SavedCall {
                    quarantine_left: None,
                    ..c
                },
                ended,
            );
        }
        r
    }

    fn put(&mut self, call: SavedCall, ended: Option<Ended>) {
        self.seq += 1;
        let key = (*call.conn.outside.ip(), call.nat_id);
        self.calls.insert(key, (self.seq, call, ended));
    }

    /// Applies one record: a start or an answer makes the call live with
    /// the record's fields (a NAT id is only given again once its
    /// quarantine is over, so a start replaces an ended call with its
    /// key); an end puts it in quarantine from the record's time.
    pub fn apply(&mut self, r: &Record) {
        self.last_at = self.last_at.max(r.at);
        let key = (r.peer, r.nat_id);
        let conn = match (r.conn, self.calls.get(&key)) {
            (Some(c), _) => c,
            // An end names no connection only when the engine had already
            // forgotten it (and would not save the call either).
            (None, Some((_, c, _))) => c.conn,
            (None, None) => return,
        };
        let call = SavedCall {
            conn,
            inside_id: r.inside_id,
            outside_id: r.outside_id,
            nat_id: r.nat_id,
            established: r.established,
            quarantine_left: None,
        };
        let ended = (r.ev == Kind::End).then_some(Ended::At(r.at));
        self.put(call, ended);
        self.applied += 1;
    }

    /// Records applied.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// The latest time a record was written at (0: none).
    pub fn last_at(&self) -> u64 {
        self.last_at
    }

    /// The calls to restore at `now` (seconds since the Unix epoch), with
    /// a quarantine of `quarantine` seconds: ended calls whose quarantine
    /// is over are left out.
    pub fn calls(self, now: u64, quarantine: u32) -> Vec<SavedCall> {
        let mut out: Vec<(u64, SavedCall)> = self
            .calls
            .into_values()
            .filter_map(|(seq, mut c, ended)| {
                c.quarantine_left = match ended {
                    None => None,
                    Some(Ended::Left(left)) => Some(left),
                    Some(Ended::At(at)) => {
                        let since = now.saturating_sub(at);
                        let left = u64::from(quarantine).checked_sub(since)?;
                        Some(u32::try_from(left).ok().filter(|&l| l > 0)?)
                    }
                };
                Some((seq, c))
            })
            .collect();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, c)| c).collect()
    }
}

/// What a start restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The calls, those in quarantine with the time they have left now.
    pub calls: Vec<SavedCall>,
    /// Journal records applied.
    pub applied: usize,
    /// When the daemon that wrote them was last seen alive (the snapshot
    /// or its latest record, at most now; now when nothing is restored).
    /// The snapshot a start writes keeps this time, so that a daemon that
    /// keeps failing to start does not make old calls look young.
    pub as_of: u64,
}

/// The calls a start restores from a snapshot and the journal generations
/// after it (in order), at `now`: none when the daemon was last seen alive
/// (the snapshot or the latest record) more than `max_age` ago, as with
/// the state file alone.
pub fn restore(
    snapshot_calls: Vec<SavedCall>,
    saved_at: u64,
    generations: &[Parsed],
    now: u64,
    max_age: Duration,
    quarantine: Duration,
) -> Restored {
    let mut replay = Replay::new(snapshot_calls);
    for g in generations {
        for r in &g.records {
            replay.apply(r);
        }
    }
    let applied = replay.applied();
    let last_alive = saved_at.max(replay.last_at()).min(now);
    if now - last_alive > max_age.as_secs() {
        return Restored {
            calls: Vec::new(),
            applied,
            as_of: now,
        };
    }
    let q = u32::try_from(quarantine.as_secs()).unwrap_or(u32::MAX);
    let calls = replay.calls(now, q);
    Restored {
        as_of: if calls.is_empty() { now } else { last_alive },
        calls,
        applied,
    }
}

/// `calls` taken at `now`, made to read as taken at `as_of` (earlier):
/// their quarantines had that much more time left then. A start writes
/// its snapshot so (see [`Restored::as_of`]); the next start takes the
/// time since `as_of` off again.
pub fn backdate(mut calls: Vec<SavedCall>, now: u64, as_of: u64) -> Vec<SavedCall> {
    let back = u32::try_from(now.saturating_sub(as_of)).unwrap_or(u32::MAX);
    for c in &mut calls {
        if let Some(left) = &mut c.quarantine_left {
            *left = left.saturating_add(back);
        }
    }
    calls
}

// ---- files ------------------------------------------------------------------

/// The file of generation `gen` of the journal of `state`.
pub fn gen_path(state: &Path, gen: u64) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".journal.{gen}"));
    state.with_file_name(name)
}

/// The generation a file named `file` holds, if it is one of the journal
/// files of the state file named `state_name`.
pub fn gen_of(state_name: &OsStr, file: &OsStr) -> Option<u64> {
    let file = file.to_str()?;
    let rest = file.strip_prefix(state_name.to_str()?)?;
    let digits = rest.strip_prefix(".journal.")?;
    // Digits only: `u64::from_str` would also take a sign.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The journal files of `state` (regular files only), by generation.
pub fn list(state: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = state.file_name().unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(gen) = gen_of(name, &entry.file_name()) {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push((gen, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the journal files of `state` older than generation `gen` (a
/// snapshot continued by `gen` is in place). Returns how many went.
pub fn remove_before(state: &Path, gen: u64) -> io::Result<usize> {
    let mut n = 0;
    for (g, path) in list(state)? {
        if g < gen && std::fs::remove_file(&path).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// The generations from `first` on, as a start reads them.
#[derive(Debug, Default)]
pub struct Generations {
    /// Each generation read, in order, and its records.
    pub generations: Vec<(u64, Parsed)>,
    /// Bytes read.
    pub bytes: u64,
    /// Why the generations from this one on were not read (too large).
    pub refused: Option<(u64, String)>,
}

/// Reads the journal generations of `state` from `first` on, in order, at
/// most `limit` bytes in all: a generation that would pass it is refused
/// unread, and so are the ones after it (replaying a later one without it
/// could bring back calls it ended).
pub fn read_from(state: &Path, first: u64, limit: u64) -> io::Result<Generations> {
    let mut out = Generations::default();
    for (gen, path) in list(state)?.into_iter().filter(|(g, _)| *g >= first) {
        let file = File::open(&path)?;
        let room = limit.saturating_sub(out.bytes);
        let refuse = |out: &mut Generations| {
            out.refused = Some((
                gen,
                format!(
                    "{} and later generations refused unread: the journal is larger than \
                     {limit} bytes (max_calls x 4 records x {BYTES_PER_RECORD} bytes)",
                    path.display()
                ),
            ));
        };
        // The size first, so a huge file is not even read; `take` in case
        // it grows meanwhile.
        if file.metadata()?.len() > room {
            refuse(&mut out);
            break;
        }
        let mut bytes = Vec::new();
        file.take(room + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > room {
            refuse(&mut out);
            break;
        }
        out.bytes += bytes.len() as u64;
        out.generations.push((gen, parse(&bytes)));
    }
    Ok(out)
}

/// Asks the main thread for a snapshot (a generation grows large).
#[derive(Clone)]
pub struct SnapshotRequest(pub Arc<dyn Fn() + Send + Sync>);

impl fmt::Debug for SnapshotRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotRequest")
    }
}

/// Why records were not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file system said no (disk full, EIO, ...).
    #[error("{path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The generation reached its size bound before a snapshot started a
    /// new one: its records would make the journal too large to read.
    #[error("{path} holds {bytes} bytes, its bound: records dropped until the next snapshot")]
    Full {
        /// The journal file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// The packet thread's end of the journal: appends records to the current
/// generation, opening its file on the first record.
#[derive(Debug)]
pub struct Writer {
    state: PathBuf,
    gen: u64,
    /// The current generation's file name.
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the current generation's file.
    bytes: u64,
    /// Bound of one generation: half of what a start reads.
    bound: u64,
    /// Beyond this, ask for a snapshot (once per generation).
    ask_at: u64,
    asked: bool,
    ask: SnapshotRequest,
    /// The last write failed, maybe after part of it: the next one starts
    /// with a newline, so the torn part stays a line of its own.
    torn: bool,
    buf: Vec<u8>,
}

impl Writer {
    /// A writer for the journal of `state`, starting at generation `gen`,
    /// bounded by [`size_limit`]`(max_calls)`.
    pub fn new(state: PathBuf, gen: u64, max_calls: usize, ask: SnapshotRequest) -> Self {
        let limit = size_limit(max_calls);
        Writer {
            path: gen_path(&state, gen),
            state,
            gen,
            file: None,
            bytes: 0,
            bound: limit / 2,
            ask_at: limit / 4,
            asked: false,
            ask,
            torn: false,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Appends the records of `events` (drained from the engine while the
    /// generation was `gen`), written at `at`, in one write. Returns how
    /// many records were written.
    pub fn append(&mut self, gen: u64, events: &[Event], at: u64) -> Result<usize, WriteError> {
        if gen < self.gen {
            // A snapshot taken after these events were drained holds them.
            return Ok(0);
        }
        self.buf.clear();
        if self.torn {
            self.buf.push(b'\n');
        }
        let n = encode(events, at, &mut self.buf);
        if n == 0 {
            return Ok(0);
        }
        if gen > self.gen {
            self.gen = gen;
            self.path = gen_path(&self.state, gen);
            self.file = None;
            self.bytes = 0;
            self.asked = false;
            self.torn = false;
            if self.buf.first() == Some(&b'\n') {
                self.buf.remove(0);
            }
        }
        if self.bytes + self.buf.len() as u64 > self.bound {
            self.ask_snapshot();
            return Err(WriteError::Full {
                path: self.path.clone(),
                bytes: self.bytes,
            });
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|source| WriteError::Io {
                        path: self.path.clone(),
                        source,
                    })?;
                self.file.insert(f)
            }
        };
        if let Err(source) = file.write_all(&self.buf) {
            // Part of it may be in the file; nothing counts as written.
            self.torn = true;
            self.bytes += self.buf.len() as u64;
            return Err(WriteError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.torn = false;
        self.bytes += self.buf.len() as u64;
        if self.bytes > self.ask_at {
            self.ask_snapshot();
        }
        Ok(n)
    }

    fn ask_snapshot(&mut self) {
        if !self.asked {
            self.asked = true;
            (self.ask.0)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::{CallInfo, EndCause};

    fn conn(host: u8, port: u16) -> ConnKey {
        ConnKey {
            inside: format!("10.0.0.{host}:{port}").parse().unwrap(),
            outside: "192.0.2.1:1723".parse().unwrap(),
        }
    }

    fn info(host: u8, inside_id: u16, nat_id: u16, outside_id: Option<u16>) -> CallInfo {
        let c = conn(host, 40000);
        CallInfo {
            inside_host: *c.inside.ip(),
            inside_id,
            outside_peer: *c.outside.ip(),
            outside_id,
            nat_id,
            conn: Some(c),
            state: if outside_id.is_some() {
                crate::alg::CallState::Established
            } else {
                crate::alg::CallState::Requested
            },
            age: Duration::ZERO,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            hairpin: None,
        }
    }

    fn saved(host: u8, inside_id: u16, nat_id: u16, outside_id: Option<u16>) -> SavedCall {
        SavedCall {
            conn: conn(host, 40000),
            inside_id,
            outside_id,
            nat_id,
            established: outside_id.is_some(),
            quarantine_left: None,
        }
    }

    fn lines(events: &[Event], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(events, at, &mut out);
        out
    }

    const Q: Duration = Duration::from_secs(60);
    const AGE: Duration = Duration::from_secs(300);

    #[test]
    fn format_is_one_json_line_per_call_change() {
        let events = [
            Event::CallStarted(info(2, 1000, 1001, None)),
            Event::CallAnswered(info(2, 1000, 1001, Some(7))),
            Event::ConnectionRefused {
                conn: conn(2, 40000),
            },
            Event::CallEnded(info(2, 1000, 1001, Some(7)), EndCause::Disconnect),
        ];
        let bytes = lines(&events, 1_700_000_000);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"ev":"start","at":1700000000,"peer":"192.0.2.1","nat_id":1001,"inside_id":1000,"conn":{"inside":"10.0.0.2:40000","outside":"192.0.2.1:1723"}}"#
        );
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with('\n'));
        let p = parse(&bytes);
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[1].ev, Kind::Answer);
        assert_eq!(p.records[1].outside_id, Some(7));
        assert!(p.records[1].established);
        assert_eq!(p.records[2].ev, Kind::End);
        assert_eq!((p.bad_lines, p.torn_tail), (0, 0));
    }

    /// [`BYTES_PER_RECORD`] must hold the widest record, with room to spare.
    #[test]
    fn the_widest_record_fits_its_bound() {
        let wide = ConnKey {
            inside: "255.255.255.255:65535".parse().unwrap(),
            outside: "255.255.255.255:65535".parse().unwrap(),
        };
        let r = Record {
            ev: Kind::Answer,
            at: u64::MAX,
            peer: Ipv4Addr::BROADCAST,
            nat_id: 65535,
            inside_id: 65535,
            conn: Some(wide),
            outside_id: Some(65535),
            established: true,
        };
        let len = serde_json::to_vec(&r).unwrap().len() as u64 + 1;
        assert!(len * 10 / 9 <= BYTES_PER_RECORD, "{len} bytes");
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_bad_line_skipped() {
        let mut bytes = lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 10);
        bytes.extend_from_slice(b"{\"ev\":\"start\",\"at\":11,\"pe\n");
        bytes.extend(lines(&[Event::CallStarted(info(3, 1000, 1001, None))], 12));
        let full = lines(&[Event::CallStarted(info(4, 1000, 1002, None))], 13);
        bytes.extend_from_slice(&full[..full.len() - 1]); // no newline: torn
        let p = parse(&bytes);
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[1].nat_id, 1001);
        assert_eq!(p.bad_lines, 1);
        assert_eq!(p.first_bad.as_ref().map(|b| b.0), Some(2));
        assert_eq!(p.torn_tail, full.len() - 1);
        // Nothing but a torn line, and nothing at all.
        assert_eq!(parse(b"{\"ev\"").torn_tail, 5);
        assert_eq!(parse(b""), Parsed::default());
        assert_eq!(parse(b"\n\n").records.len(), 0);
        assert_eq!(parse(b"\n\n").bad_lines, 0);
        // Garbage never panics.
        let p = parse(&[0xff, b'\n', b'[', b'\n', 0, 0]);
        assert_eq!((p.records.len(), p.bad_lines, p.torn_tail), (0, 2, 2));
    }

    #[test]
    fn replay_start_answer_end() {
        let now = 1000;
        let bytes = [
            lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 990),
            lines(&[Event::CallAnswered(info(2, 1000, 1000, Some(7)))], 990),
            lines(&[Event::CallStarted(info(3, 1000, 1001, None))], 995),
            lines(
                &[Event::CallEnded(
                    info(3, 1000, 1001, None),
                    EndCause::Disconnect,
                )],
                996,
            ),
        ]
        .concat();
        let Restored { calls, applied, .. } =
            restore(Vec::new(), 980, &[parse(&bytes)], now, AGE, Q);
        assert_eq!(applied, 4);
        assert_eq!(
            calls,
            vec![
                saved(2, 1000, 1000, Some(7)),
                SavedCall {
                    quarantine_left: Some(56),
                    ..saved(3, 1000, 1001, None)
                },
            ]
        );
        // Once the quarantine is over the ended call is gone.
        let calls = restore(Vec::new(), 980, &[parse(&bytes)], 996 + 60, AGE, Q).calls;
        assert_eq!(calls, vec![saved(2, 1000, 1000, Some(7))]);
    }

    #[test]
    fn replay_continues_the_snapshot() {
        let snapshot = vec![
            saved(2, 1000, 1000, Some(7)),
            SavedCall {
                quarantine_left: Some(30),
                ..saved(3, 1000, 1001, Some(8))
            },
            saved(4, 1000, 1002, Some(9)),
        ];
        let bytes = [
            // Host 4's call ends; host 3's NAT id, its quarantine over, goes
            // to a new call of host 5.
            lines(
                &[Event::CallEnded(
                    info(4, 1000, 1002, Some(9)),
                    EndCause::Disconnect,
                )],
                1000,
            ),
            lines(&[Event::CallStarted(info(5, 1000, 1001, None))], 1001),
        ]
        .concat();
        let calls = restore(snapshot, 999, &[parse(&bytes)], 1002, AGE, Q).calls;
        assert_eq!(
            calls,
            vec![
                saved(2, 1000, 1000, Some(7)),
                SavedCall {
                    quarantine_left: Some(58),
                    ..saved(4, 1000, 1002, Some(9))
                },
                saved(5, 1000, 1001, None),
            ]
        );
    }

    #[test]
    fn generations_apply_in_order_and_lost_starts_are_recovered() {
        let g1 = lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 100);
        let g2 = lines(
            &[Event::CallEnded(
                info(2, 1000, 1000, None),
                EndCause::SetupTimeout,
            )],
            101,
        );
        let calls = restore(Vec::new(), 99, &[parse(&g1), parse(&g2)], 102, AGE, Q).calls;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].quarantine_left, Some(59));
        // The other order would leave the call live: order matters.
        let calls = restore(Vec::new(), 99, &[parse(&g2), parse(&g1)], 102, AGE, Q).calls;
        assert_eq!(calls[0].quarantine_left, None);
        // An answer whose start was not written still brings the call back,
        // and an end without either holds its id.
        let a = lines(&[Event::CallAnswered(info(2, 1000, 1000, Some(7)))], 100);
        let calls = restore(Vec::new(), 99, &[parse(&a)], 102, AGE, Q).calls;
        assert_eq!(calls, vec![saved(2, 1000, 1000, Some(7))]);
        let calls = restore(Vec::new(), 99, &[parse(&g2)], 102, AGE, Q).calls;
        assert_eq!(calls[0].quarantine_left, Some(59));
        // An end that names no connection, of a call nobody knows: nothing.
        let mut orphan = info(2, 1000, 1000, None);
        orphan.conn = None;
        let e = lines(&[Event::CallEnded(orphan, EndCause::ConnTimeout)], 100);
        assert!(restore(Vec::new(), 99, &[parse(&e)], 102, AGE, Q)
            .calls
            .is_empty());
    }

    #[test]
    fn age_counts_from_the_last_sign_of_life() {
        let g = lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 2000);
        // The snapshot is old, the journal young: restored.
        let calls = restore(Vec::new(), 1000, &[parse(&g)], 2100, AGE, Q).calls;
        assert_eq!(calls.len(), 1);
        assert_eq!(
            restore(Vec::new(), 1000, &[parse(&g)], 2100, AGE, Q).as_of,
            2000
        );
        // Both old: nothing, as of now.
        let r = restore(Vec::new(), 1000, &[parse(&g)], 2301, AGE, Q);
        assert!(r.calls.is_empty());
        assert_eq!(r.as_of, 2301);
        // A record from the future (the clock went back) is not a reason to
        // wrap around.
        let calls = restore(Vec::new(), 1000, &[parse(&g)], 1500, AGE, Q).calls;
        assert_eq!(calls.len(), 1);
    }

    /// A start that writes what it restored as of when the last daemon
    /// was alive, and a start after it, restore the same calls: a daemon
    /// failing to start again and again neither makes old calls young nor
    /// shortens quarantines.
    #[test]
    fn a_backdated_snapshot_reads_as_the_original() {
        let g = [
            lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 1000),
            lines(&[Event::CallStarted(info(3, 1000, 1001, None))], 1000),
            lines(
                &[Event::CallEnded(
                    info(3, 1000, 1001, None),
                    EndCause::Disconnect,
                )],
                1010,
            ),
        ]
        .concat();
        let first = restore(Vec::new(), 990, &[parse(&g)], 1030, AGE, Q);
        assert_eq!(first.as_of, 1010);
        assert_eq!(first.calls[1].quarantine_left, Some(40));
        let snapshot = backdate(first.calls.clone(), 1030, first.as_of);
        assert_eq!(snapshot[1].quarantine_left, Some(60));
        // What `state::parse` does with it 20 s later, then the restore.
        let aged: Vec<SavedCall> = snapshot
            .into_iter()
            .filter_map(|mut c| {
                if let Some(l) = &mut c.quarantine_left {
                    *l = l.checked_sub(1050 - 1010).filter(|&l| l > 0)?;
                }
                Some(c)
            })
            .collect();
        let second = restore(aged, first.as_of, &[], 1050, AGE, Q);
        assert_eq!(second.as_of, 1010);
        assert_eq!(second.calls[1].quarantine_left, Some(20));
        assert_eq!(
            restore(Vec::new(), 990, &[parse(&g)], 1050, AGE, Q).calls,
            second.calls
        );
        // Once the last sign of life is older than the age limit, nothing.
        assert!(restore(second.calls, 1010, &[], 1311, AGE, Q)
            .calls
            .is_empty());
    }

    #[test]
    fn file_names_and_generations() {
        let state = Path::new("/run/pptp-alg/state.json");
        assert_eq!(
            gen_path(state, 7),
            Path::new("/run/pptp-alg/state.json.journal.7")
        );
        let name = OsStr::new("state.json");
        assert_eq!(gen_of(name, OsStr::new("state.json.journal.7")), Some(7));
        assert_eq!(gen_of(name, OsStr::new("state.json.journal.")), None);
        assert_eq!(gen_of(name, OsStr::new("state.json.journal.+7")), None);
        assert_eq!(gen_of(name, OsStr::new("state.json.journal.7.tmp")), None);
        assert_eq!(gen_of(name, OsStr::new("other.json.journal.7")), None);
        assert_eq!(
            gen_of(name, OsStr::new("state.json.journal.99999999999999999999")),
            None
        );
    }

    fn temp_dir(case: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pptp-alg-journal-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn never() -> SnapshotRequest {
        SnapshotRequest(Arc::new(|| {}))
    }

    #[test]
    fn writer_switches_generations_and_old_ones_are_removed() {
        let dir = temp_dir("gen");
        let state = dir.join("state.json");
        let mut w = Writer::new(state.clone(), 3, 100, never());
        let start = |h| [Event::CallStarted(info(h, 1000, 1000 + u16::from(h), None))];
        // Events drained before the writer's generation: a snapshot holds them.
        assert_eq!(w.append(2, &start(1), 10).unwrap(), 0);
        assert!(list(&state).unwrap().is_empty(), "no file for nothing");
        assert_eq!(w.append(3, &start(2), 10).unwrap(), 1);
        assert_eq!(w.append(3, &start(3), 11).unwrap(), 1);
        // A snapshot moved the engine to generation 5.
        assert_eq!(w.append(5, &start(4), 12).unwrap(), 1);
        assert_eq!(w.generation(), 5);
        assert_eq!(w.append(3, &start(5), 12).unwrap(), 0);
        let gens: Vec<u64> = list(&state).unwrap().into_iter().map(|g| g.0).collect();
        assert_eq!(gens, vec![3, 5]);
        let read = read_from(&state, 3, 1 << 20).unwrap();
        let counts: Vec<(u64, usize)> = read
            .generations
            .iter()
            .map(|(g, p)| (*g, p.records.len()))
            .collect();
        assert_eq!(counts, vec![(3, 2), (5, 1)]);
        // A snapshot continued by generation 5 is in place.
        assert_eq!(remove_before(&state, 5).unwrap(), 1);
        let read = read_from(&state, 5, 1 << 20).unwrap();
        assert_eq!(read.generations.len(), 1);
        // Other files in the directory are left alone.
        std::fs::write(dir.join("state.json.tmp"), b"").unwrap();
        std::fs::create_dir(dir.join("state.json.journal.1")).unwrap();
        assert_eq!(remove_before(&state, 9).unwrap(), 1);
        assert!(dir.join("state.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_above_the_limit_is_refused_unread() {
        let dir = temp_dir("cap");
        let state = dir.join("state.json");
        let ok = lines(&[Event::CallStarted(info(2, 1000, 1000, None))], 10);
        std::fs::write(gen_path(&state, 1), &ok).unwrap();
        // Sparse, far beyond the limit: refused by its size, with the
        // generations after it.
        let f = File::create(gen_path(&state, 2)).unwrap();
        f.set_len(1 << 30).unwrap();
        std::fs::write(gen_path(&state, 3), &ok).unwrap();
        let limit = size_limit(10);
        let t = std::time::Instant::now();
        let read = read_from(&state, 1, limit).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(read.generations.len(), 1);
        assert_eq!(read.bytes, ok.len() as u64);
        let (gen, why) = read.refused.unwrap();
        assert_eq!(gen, 2);
        assert!(
            why.contains("refused unread") && why.contains(&limit.to_string()),
            "{why}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_keeps_a_generation_bounded_and_asks_for_a_snapshot() {
        let dir = temp_dir("full");
        let state = dir.join("state.json");
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = asked.clone();
        let ask = SnapshotRequest(Arc::new(move || {
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let max_calls = 2;
        let mut w = Writer::new(state.clone(), 1, max_calls, ask);
        let ev = [Event::CallStarted(info(2, 1000, 1000, None))];
        let mut written = 0;
        let mut full = 0;
        for _ in 0..100 {
            match w.append(1, &ev, 10) {
                Ok(n) => written += n,
                Err(WriteError::Full { .. }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(written > 0 && full > 0, "{written} {full}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let len = std::fs::metadata(gen_path(&state, 1)).unwrap().len();
        assert!(len <= size_limit(max_calls) / 2, "{len}");
        // A new generation starts empty and may ask again.
        assert_eq!(w.append(2, &ev, 10).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_and_the_next_one_starts_a_new_line() {
        let dir = temp_dir("fail");
        let state = dir.join("state.json");
        // A directory where the file should be: every open fails.
        std::fs::create_dir(gen_path(&state, 1)).unwrap();
        let mut w = Writer::new(state.clone(), 1, 100, never());
        let ev = [Event::CallStarted(info(2, 1000, 1000, None))];
        assert!(matches!(w.append(1, &ev, 10), Err(WriteError::Io { .. })));
        // The next generation is writable again.
        assert_eq!(w.append(2, &ev, 10).unwrap(), 1);
        // A torn write leaves part of a line; the next record gets a line
        // of its own.
        w.torn = true;
        let mut f = OpenOptions::new()
            .append(true)
            .open(gen_path(&state, 2))
            .unwrap();
        f.write_all(b"{\"ev\":\"sta").unwrap();
        assert_eq!(w.append(2, &ev, 11).unwrap(), 1);
        let p = parse(&std::fs::read(gen_path(&state, 2)).unwrap());
        assert_eq!((p.records.len(), p.bad_lines, p.torn_tail), (2, 1, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

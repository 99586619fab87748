//! A flood of GRE with Call IDs no call uses, aimed at the router's public address, must not
//! slow the control plane (root only; see `e2e/lab.rs`).
//!
//! With a few calls up, an outside namespace sends enhanced GRE (version 1, protocol 0x880b)
//! to the router's WAN address as fast as one raw socket can, for a few seconds. Meanwhile an
//! inside host places 20 new calls on one control connection, each reply awaited at most 2 s,
//! and the test checks what users depend on:
//!
//! - no control segment was dropped: the drop columns of the control queues in
//!   `/proc/net/netfilter/nfnetlink_queue` do not move (a dropped segment waits for a TCP
//!   retransmission, 200 ms and more);
//! - every call sets up in time;
//! - no flood packet reaches an inside host;
//! - with the fast path, no flood packet reaches the daemon at all: the kernel counts them
//!   (`gre_unknown_kernel`) and leaves them with the router.
//!
//! Both with the kernel fast path and with `--no-offload`. Rates and drops are printed, so a
//! run on a machine too slow to overflow anything says how close it came.

#[path = "e2e/lab.rs"]
mod lab;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lab::*;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(5);
/// Call IDs of the flood: none of the calls here uses them (the inside ids are 1000.. and
/// 2000.., which keep their own blocks 0x03 and 0x07 as NAT ids).
const FLOOD_IDS: std::ops::Range<u16> = 0x9000..0xa000;
/// The payload of every flood packet, to recognise one wherever it arrives.
const FLOOD_PAYLOAD: &[u8] = b"gre-flood-packet";

/// The drop columns of one queue in `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct QueueDrops {
    /// Dropped because the queue was full.
    queue: u64,
    /// Dropped because the daemon's socket buffer was full.
    user: u64,
}

/// The drops of queue `q` in the router (zero while the queue is not bound).
fn queue_drops(lab: &Lab, q: u16) -> QueueDrops {
    let text = lab.exec(
        Host::Router,
        "cat",
        &["/proc/net/netfilter/nfnetlink_queue"],
    );
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if f.len() >= 7 && f[0] == u64::from(q) {
            return QueueDrops {
                queue: f[5],
                user: f[6],
            };
        }
    }
    QueueDrops::default()
}

/// One enhanced GRE packet (no sequence or acknowledgement number) with Call ID `id`.
fn gre_packet(id: u16) -> Vec<u8> {
    let mut p = vec![0x20, 0x01, 0x88, 0x0b];
    p.extend_from_slice(&(FLOOD_PAYLOAD.len() as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(FLOOD_PAYLOAD);
    p
}

/// Sends GRE from namespace `ns` to `to` as fast as a raw socket takes it (batches of
/// `sendmmsg`), cycling through [`FLOOD_IDS`], for `secs` or until `stop`. Returns the
/// packets sent.
fn flood(ns: &str, to: std::net::Ipv4Addr, secs: Duration, stop: &AtomicBool) -> u64 {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a valid descriptor; it changes this thread's namespace only.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_GRE) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    const BATCH: usize = 64;
    let mut next_id = FLOOD_IDS.start;
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut sent = 0u64;
    let end = Instant::now() + secs;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        bufs.clear();
        for _ in 0..BATCH {
            bufs.push(gre_packet(next_id));
            next_id = if next_id + 1 >= FLOOD_IDS.end {
                FLOOD_IDS.start
            } else {
                next_id + 1
            };
        }
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid msghdr; the fields are set below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&addr as *const libc::sockaddr_in).cast_mut().cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` points into `iovs`, `bufs` and `addr`, all alive for the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    // SAFETY: closing our own socket.
    unsafe { libc::close(fd) };
    sent
}

/// Starts a client on LAN host 1 that places 20 calls on one control connection, waiting at
/// most 2 s for each reply (`Lab::client` would give it 5 s).
fn twenty_calls(lab: &mut Lab, tag: &str, call_id: &str) -> Pid {
    let (server, bind) = (SERVER.to_string(), lan_addr(1).to_string());
    lab.spawn(
        Host::Lan(1),
        &format!("pptp-peer client {tag}"),
        PEER,
        &[
            "client",
            "--server",
            &server,
            "--bind",
            &bind,
            "--tag",
            tag,
            "--call-id",
            call_id,
            "--calls",
            "20",
            "--gre-count",
            "1",
            "--hold",
            "0.2",
            "--timeout",
            "2",
        ],
    )
}

fn control_queues_keep_up_under_a_gre_flood(case: &str, offload: bool) {
    let daemon_flags: &[&str] = if offload { &[] } else { &["--no-offload"] };
    let mut lab = Lab::new(case, 2, 1);
    lab.start_daemon(daemon_flags);
    let srv = lab.server(Host::Wan, SERVER, &[]);
    // A few calls up through the whole flood.
    let held = lab.client(
        Host::Lan(0),
        SERVER,
        lan_addr(0),
        "held",
        &[
            "--call-id",
            "1000",
            "--calls",
            "3",
            "--gre-count",
            "3",
            "--hold",
            &(FLOOD.as_secs() + 3).to_string(),
        ],
    );
    lab.wait_established(3);
    // Anything a LAN host receives from the flood is a failure; listen on both.
    let secs = FLOOD.as_secs_f64() + 4.0;
    let rx: Vec<Pid> = (0..2)
        .map(|i| lab.gre_recv(Host::Lan(i), None, secs))
        .collect();

    // The same 20 calls without a flood, for comparison (printed, not asserted: timings on
    // a shared machine vary too much).
    let t = Instant::now();
    let idle = twenty_calls(&mut lab, "idle", "3000");
    lab.client_ok(idle, "idle");
    let idle_time = t.elapsed();

    let control = [1723u16, 1724];
    let before: Vec<QueueDrops> = control.iter().map(|&q| queue_drops(&lab, q)).collect();
    let gre_before = queue_drops(&lab, 1725);
    let st_before = lab.status();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (ns, stop) = (lab.ns(Host::Wan).to_string(), stop.clone());
        thread::spawn(move || flood(&ns, ROUTER_WAN, FLOOD, &stop))
    };
    let started = Instant::now();
    // Let the flood build up before the calls.
    thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let during = twenty_calls(&mut lab, "during", "2000");
    let out = lab.finish(during);
    let setup_time = t.elapsed();
    let flood_left = FLOOD.saturating_sub(started.elapsed());
    let sent = flooder.join().expect("flood thread");
    stop.store(true, Ordering::Relaxed);
    let after: Vec<QueueDrops> = control.iter().map(|&q| queue_drops(&lab, q)).collect();
    let gre_after = queue_drops(&lab, 1725);
    let st_after = lab.status();
    eprintln!(
        "{case}: flood {sent} packets in {FLOOD:?} ({} pps); 20 calls on one connection took \
         {setup_time:?} ({idle_time:?} without the flood; the flood still ran {flood_left:?} after they were done); control \
         queue drops before {before:?} after {after:?}; GRE queue 1725 drops before \
         {gre_before:?} after {gre_after:?}",
        sent / FLOOD.as_secs()
    );

    let v = out.json("during");
    assert_eq!(
        out.code,
        0,
        "20 calls under the flood, each reply within 2 s: {v}\n{}\ndaemon log:\n{}",
        out.stderr,
        lab.daemon_log()
    );
    let calls = v["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 20, "{v}");
    assert!(
        calls.iter().all(|c| c["result"] == 1),
        "every call connected: {v}"
    );
    assert!(
        flood_left > Duration::ZERO,
        "the calls outlasted the flood ({setup_time:?}): nothing was measured under load"
    );
    assert_eq!(
        before, after,
        "control segments dropped under the GRE flood (queues {control:?}; {sent} flood packets)"
    );
    for (i, p) in rx.into_iter().enumerate() {
        let got = lab.finish(p).json_lines("gre-recv");
        let leaked = got
            .iter()
            .filter(|r| r.to_string().contains("gre-flood-packet"))
            .count();
        assert_eq!(leaked, 0, "LAN host {i} received flood packets: {got:?}");
    }
    // The status shows each queue's drops as the kernel counts them.
    let rows = st_after["queues"].as_array().expect("queues in the status");
    assert_eq!(rows.len(), 3, "{st_after:#}");
    for (q, want) in control.iter().zip(&after).chain([(&1725, &gre_after)]) {
        let row = rows
            .iter()
            .find(|r| r["queue"] == *q)
            .unwrap_or_else(|| panic!("no queue {q} in {st_after:#}"));
        // Read a moment after the file: GRE still in flight may have been dropped since.
        assert!(
            u64_of(&row["dropped_socket"]) >= want.user,
            "{row} {want:?}"
        );
        assert!(u64_of(&row["dropped_full"]) >= want.queue, "{row} {want:?}");
        if *q != 1725 {
            assert_eq!(u64_of(&row["dropped_socket"]), 0, "{row}");
            assert_eq!(u64_of(&row["dropped_full"]), 0, "{row}");
        }
    }
    if offload {
        // The kernel left every flood packet with the router: none reached the daemon.
        let kernel = stat(&st_after, "gre_unknown_kernel") - stat(&st_before, "gre_unknown_kernel");
        let queued = stat(&st_after, "gre_unknown_call") - stat(&st_before, "gre_unknown_call");
        eprintln!("{case}: the kernel counted {kernel} unknown GRE packets");
        assert!(kernel > 0, "{st_after:#}");
        assert_eq!(
            queued, kernel,
            "unknown GRE reached the daemon: {st_after:#}"
        );
        assert_eq!(gre_before, gre_after, "GRE queued with the fast path on");
    }
    lab.client_ok(held, "held");
    lab.stop_server(srv);
    let out = lab.stop_daemon();
    assert_eq!(out.code, 0, "daemon exit:\n{}", out.stderr);
}

#[test]
fn gre_flood_with_the_fast_path() {
    if !have_root() {
        return;
    }
    control_queues_keep_up_under_a_gre_flood("flood_fast", true);
}

#[test]
fn gre_flood_without_offload() {
    if !have_root() {
        return;
    }
    control_queues_keep_up_under_a_gre_flood("flood_nooff", false);
}

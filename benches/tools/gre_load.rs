//! `gre-load`: the traffic tools of the namespace benchmark (benches/throughput.sh).
//!
//! - `send`: enhanced GRE (version 1, protocol 0x880B, S bit, 64-byte payload carrying a
//!   sequence number and CLOCK_MONOTONIC/CLOCK_REALTIME send timestamps) from a raw
//!   IPPROTO_GRE socket, paced by busy-waiting on a CLOCK_MONOTONIC schedule (no timers),
//!   cycling over one or many Call IDs.
//! - `recv`: counts those packets, computes one-way latency (kernel receive timestamp minus
//!   send timestamp; all namespaces share the clocks) and prints one JSON object.
//! - `pac`: a minimal PPTP server (PAC) for many connections and calls (epoll), which can
//!   send a burst of GRE probes right after each Outgoing-Call-Reply.
//! - `pns`: a minimal PPTP client (PNS) that opens C control connections with K calls each,
//!   holds them until SIGTERM/SIGINT, then clears them; reports setup and teardown rates,
//!   optionally each connection's setup time, and while holding can time Echo-Request/Reply
//!   round trips on its first connection.
//!
//! The control tools carry no GRE socket, so they add no per-packet work to the namespaces
//! while GRE is measured.

use clap::{Parser, Subcommand};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Marks our payloads ("GLD1").
const MAGIC: u32 = 0x474c_4431;
const PAYLOAD: usize = 64;
/// GRE header with Key and Sequence number.
const GRE_HDR: usize = 12;
const PKT: usize = GRE_HDR + PAYLOAD;
const COOKIE: u32 = 0x1a2b_3c4d;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() {
    for s in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
    }
}

#[derive(Parser)]
#[command(
    name = "gre-load",
    about = "GRE load generator, receiver and PPTP control peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send enhanced GRE at a fixed rate (or as fast as possible).
    Send(SendArgs),
    /// Receive, count and time GRE from `send`; print JSON.
    Recv(RecvArgs),
    /// Minimal PPTP server (PAC).
    Pac(PacArgs),
    /// Minimal PPTP client (PNS) holding many calls.
    Pns(PnsArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    /// Destination address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Local address to send from.
    #[arg(long)]
    bind: Option<Ipv4Addr>,
    /// First Call ID (decimal or 0x-hex); with --calls K, ids N..N+K are cycled.
    #[arg(long, default_value = "0", value_parser = parse_u16)]
    call_id: u16,
    /// Number of Call IDs to cycle over.
    #[arg(long, default_value_t = 1)]
    calls: u32,
    /// File of Call IDs (one per line, decimal), cycled packet by packet; overrides --call-id.
    #[arg(long)]
    ids_file: Option<String>,
    /// Packets per second; 0 sends as fast as possible (sendmmsg batches).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to send.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Stop after this many packets (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Pin to this CPU (sched_setaffinity).
    #[arg(long)]
    cpu: Option<usize>,
    /// With --rate: sleep until the next tick of this many microseconds and send every
    /// packet due by then, instead of busy-waiting for each packet; leaves the core to
    /// other processes (a flood beside the PPTP peers).
    #[arg(long, default_value_t = 0)]
    tick_us: u64,
}

#[derive(clap::Args)]
struct RecvArgs {
    /// Local address to bind (only GRE to it is seen).
    #[arg(long)]
    bind: Option<Ipv4Addr>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Stop after this many milliseconds without a packet, once one has arrived.
    #[arg(long, default_value_t = 300)]
    idle_ms: u64,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Write every packet as "call_id seq arrival_real_ns ref_real_ns send_real_ns
    /// written_real_ns" to this file (for the OCRP-to-first-GRE probes: the reference is
    /// taken before the reply is written, `written` once the write returned).
    #[arg(long)]
    probe_out: Option<String>,
    /// A file created once the socket is open (for scripts).
    #[arg(long)]
    ready_file: Option<String>,
    /// Also count distinct (destination address, Call ID) pairs: with many inside hosts
    /// using the same ids, that is the number of calls that got traffic.
    #[arg(long)]
    flows: bool,
}

#[derive(clap::Args)]
struct PacArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: Ipv4Addr,
    #[arg(long, default_value_t = 1723)]
    port: u16,
    /// Append each call's peer Call ID (what this server sees: the NAT id) to this file.
    #[arg(long)]
    ids_out: Option<String>,
    /// GRE probes sent to the peer right after each Outgoing-Call-Reply.
    #[arg(long, default_value_t = 0)]
    probes: u32,
    /// Microseconds between probes (busy-wait).
    #[arg(long, default_value_t = 10)]
    probe_gap_us: u64,
    /// The server's first own Call ID (decimal or 0x-hex). Several servers sharing one
    /// listening port (--reuseport) each get their own range, as one real server's calls
    /// would have distinct ids.
    #[arg(long, default_value = "0x100", value_parser = parse_u16)]
    first_id: u16,
    /// Listen with SO_REUSEPORT, so that several processes share the port (a process may
    /// hold only so many descriptors: 60,000 connections need several).
    #[arg(long)]
    reuseport: bool,
}

#[derive(clap::Args)]
struct PnsArgs {
    /// Server address.
    #[arg(long)]
    server: Ipv4Addr,
    #[arg(long, default_value_t = 1723)]
    port: u16,
    /// Control connections (per host with --hosts).
    #[arg(long, default_value_t = 1)]
    conns: u32,
    /// Calls per connection.
    #[arg(long, default_value_t = 1)]
    calls: u32,
    /// First Call ID; call i (over all connections) uses N+i; with --hosts, call i of
    /// each host, so every host uses the same ids.
    #[arg(long, default_value = "0x100", value_parser = parse_u16)]
    call_id: u16,
    /// Inside hosts: host h binds its connections to --host-base + h (the client
    /// namespace needs a local route covering them, e.g. `ip route add local 10.214.0.0/16
    /// dev lo`). Without it, connections use the namespace's own address.
    #[arg(long)]
    hosts: Option<u32>,
    /// First inside host address (with --hosts).
    #[arg(long, default_value = "10.214.0.1")]
    host_base: Ipv4Addr,
    /// Skip this many hosts from --host-base: several processes share out the hosts (a
    /// process may hold only so many descriptors).
    #[arg(long, default_value_t = 0)]
    host_offset: u32,
    /// Threads setting up (and tearing down) connections in parallel; each works through
    /// its share of the connections one at a time.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Stop opening connections after this many failed calls (no reply in time, refused
    /// or connection errors): where a NAT stops, without waiting out every later timeout.
    #[arg(long, default_value_t = 100)]
    max_failures: u64,
    /// Outstanding requests per connection (pipelining).
    #[arg(long, default_value_t = 1)]
    window: u32,
    /// Seconds between calls (0: back to back); used by the OCRP probes.
    #[arg(long, default_value_t = 0.0)]
    gap: f64,
    /// Hold the calls this many seconds (0: until SIGTERM/SIGINT).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Write the setup report (JSON) here once all calls are up.
    #[arg(long)]
    ready_file: Option<String>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Every connection's calls use --call-id, --call-id + 1, ... (as separate hosts
    /// would), instead of continuing from the previous connection's.
    #[arg(long)]
    same_ids: bool,
    /// Seconds between connection starts (0: each thread opens its next connection as
    /// soon as the previous one is set up): new calls arriving at a steady pace.
    #[arg(long, default_value_t = 0.0)]
    conn_interval: f64,
    /// Report each connection's setup time (connect to its last Outgoing-Call-Reply, in
    /// ms; failed connections are not listed) as `conn_setup_ms`.
    #[arg(long)]
    conn_times: bool,
    /// While holding the calls, send an Echo-Request on the first connection every this
    /// many milliseconds and time its Echo-Reply (0: none).
    #[arg(long, default_value_t = 0)]
    echo_interval_ms: u64,
    /// Write each echo as "send_real_ns rtt_ns" to this file (with --echo-interval-ms).
    #[arg(long)]
    echo_out: Option<String>,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Send(a) => send(a),
        Cmd::Recv(a) => recv(a),
        Cmd::Pac(a) => pac(a),
        Cmd::Pns(a) => pns(a),
    };
    if let Err(e) = r {
        eprintln!("gre-load: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- clocks, sockets

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn real_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CPU time this thread has run (ns; /proc/thread-self/schedstat, first field), which counts
/// the kernel work done in its system calls (including softirq processing run on the way
/// out of them) but not time the CPU spent on other tasks.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (user, system) CPU time of this process in ns (getrusage).
fn rusage_ns() -> (u64, u64) {
    // SAFETY: getrusage fills a zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

fn pin(cpu: Option<usize>) -> io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity take valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A raw IPPROTO_GRE socket (the kernel writes the IP header).
struct Raw(RawFd);

impl Raw {
    fn open(bind: Option<Ipv4Addr>) -> io::Result<Raw> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_GRE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = Raw(fd);
        if let Some(ip) = bind {
            let sa = sockaddr(ip, 0);
            // SAFETY: `sa` is a valid sockaddr_in.
            let r = unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(raw)
    }

    fn setopt(&self, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt with a pointer to a local int.
        let r = unsafe {
            libc::setsockopt(
                self.0,
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Fills an enhanced GRE packet: flags K+S, version 1, PPP, payload length, call id, seq.
/// Payload: seq u64, mono ns u64, real ns u64, ref real ns u64, magic u32.
fn fill(buf: &mut [u8; PKT], call_id: u16, seq: u64, reference: u64) {
    buf[0] = 0x30;
    buf[1] = 0x01;
    buf[2..4].copy_from_slice(&0x880bu16.to_be_bytes());
    buf[4..6].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    buf[6..8].copy_from_slice(&call_id.to_be_bytes());
    buf[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
    let p = &mut buf[GRE_HDR..];
    p[0..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&mono_ns().to_be_bytes());
    p[16..24].copy_from_slice(&real_ns().to_be_bytes());
    p[24..32].copy_from_slice(&reference.to_be_bytes());
    p[32..36].copy_from_slice(&MAGIC.to_be_bytes());
}

// ---------------------------------------------------------------- send

fn send(a: SendArgs) -> Result<(), String> {
    pin(a.cpu).map_err(|e| format!("pinning: {e}"))?;
    let ids: Vec<u16> = match &a.ids_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("{f}: {e}"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        None => (0..a.calls.max(1))
            .map(|i| a.call_id.wrapping_add(i as u16))
            .collect(),
    };
    if ids.is_empty() {
        return Err("no call ids".into());
    }
    let raw = Raw::open(a.bind).map_err(|e| format!("raw socket: {e}"))?;
    let _ = raw.setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
    let dst = sockaddr(a.dst, 0);
    let dur_ns = (a.duration * 1e9) as u64;
    let limit = if a.count == 0 { u64::MAX } else { a.count };
    let mut sent = 0u64;
    let mut errors = 0u64;
    let cpu0 = thread_cpu_ns();
    let ru0 = rusage_ns();
    let start = mono_ns();
    let end = start + dur_ns;
    if a.rate > 0 {
        let mut buf = [0u8; PKT];
        let interval = 1e9 / a.rate as f64;
        while sent < limit {
            let due = start + (sent as f64 * interval) as u64;
            if due >= end {
                break;
            }
            if a.tick_us > 0 {
                let tick = a.tick_us * 1000;
                loop {
                    let now = mono_ns();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep(Duration::from_nanos(tick - (now - start) % tick));
                }
            } else {
                while mono_ns() < due {
                    std::hint::spin_loop();
                }
            }
            fill(&mut buf, ids[(sent % ids.len() as u64) as usize], sent, 0);
            // SAFETY: valid buffer and address.
            let r = unsafe {
                libc::sendto(
                    raw.0,
                    buf.as_ptr().cast(),
                    PKT,
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if r < 0 {
                errors += 1;
            }
            sent += 1;
        }
    } else {
        const BATCH: usize = 32;
        let mut bufs = [[0u8; PKT]; BATCH];
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        while sent < limit && mono_ns() < end {
            let n = BATCH.min((limit - sent) as usize);
            for i in 0..n {
                let seq = sent + i as u64;
                fill(&mut bufs[i], ids[(seq % ids.len() as u64) as usize], seq, 0);
                iov[i] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: PKT,
                };
                msgs[i].msg_hdr.msg_name = (&dst as *const libc::sockaddr_in) as *mut _;
                msgs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `n` initialised headers pointing at live buffers.
            let r = unsafe { libc::sendmmsg(raw.0, msgs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                errors += n as u64;
                sent += n as u64;
            } else {
                sent += r as u64;
                if (r as usize) < n {
                    errors += 1;
                }
            }
        }
    }
    let elapsed = (mono_ns() - start) as f64 / 1e9;
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    let ru1 = rusage_ns();
    let out = json!({
        "sent": sent,
        // With --rate 0 the sender never waits, so these are its cost per packet: the
        // system calls and the kernel work they trigger on this core.
        "cpu_ns_per_pkt": cpu as f64 / sent.max(1) as f64,
        "utime_ns_per_pkt": (ru1.0 - ru0.0) as f64 / sent.max(1) as f64,
        "stime_ns_per_pkt": (ru1.1 - ru0.1) as f64 / sent.max(1) as f64,
        "errors": errors,
        "elapsed_s": elapsed,
        "rate_offered": a.rate,
        "rate_achieved": sent as f64 / elapsed,
        "call_ids": ids.len(),
    });
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- recv

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

fn summary(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let us = |x: Option<u64>| x.map(|n| n as f64 / 1000.0);
    json!({
        "samples": v.len(),
        "p50_us": us(percentile(&v, 50.0)),
        "p99_us": us(percentile(&v, 99.0)),
        "p999_us": us(percentile(&v, 99.9)),
        "max_us": us(v.last().copied()),
    })
}

fn recv(a: RecvArgs) -> Result<(), String> {
    pin(a.cpu).map_err(|e| format!("pinning: {e}"))?;
    let raw = Raw::open(a.bind).map_err(|e| format!("raw socket: {e}"))?;
    let _ = raw.setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
    raw.setopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
        .map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt with a timeval.
    unsafe {
        libc::setsockopt(
            raw.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as u32,
        )
    };
    if let Some(f) = &a.ready_file {
        std::fs::write(f, "ready\n").map_err(|e| format!("{f}: {e}"))?;
    }
    let mut probe = match &a.probe_out {
        Some(f) => Some(io::BufWriter::new(
            std::fs::File::create(f).map_err(|e| format!("{f}: {e}"))?,
        )),
        None => None,
    };
    install_signals();

    const BATCH: usize = 64;
    const BUF: usize = 2048;
    const CMSG: usize = 64;
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut cbufs = vec![[0u8; CMSG]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; BATCH];

    let mut lat_kernel: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut lat_user: Vec<u64> = Vec::with_capacity(1 << 20);
    let (mut received, mut other, mut max_seq) = (0u64, 0u64, 0u64);
    let mut neg = 0u64;
    let mut per_call: HashMap<u16, u64> = HashMap::new();
    let mut flows: HashSet<(u32, u16)> = HashSet::new();
    let (mut first, mut last) = (0u64, 0u64);
    let t_start = mono_ns();
    let deadline = t_start + (a.timeout * 1e9) as u64;
    let idle = a.idle_ms * 1_000_000;
    const MAX_SAMPLES: usize = 20_000_000;
    loop {
        let now = mono_ns();
        if STOP.load(Ordering::Relaxed) || now > deadline || (received > 0 && now - last > idle) {
            break;
        }
        for i in 0..BATCH {
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = cbufs[i].as_mut_ptr().cast();
            msgs[i].msg_hdr.msg_controllen = CMSG;
            msgs[i].msg_hdr.msg_name = std::ptr::null_mut();
            msgs[i].msg_hdr.msg_namelen = 0;
        }
        // SAFETY: BATCH initialised headers pointing at live buffers.
        let n = unsafe {
            libc::recvmmsg(
                raw.0,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let now_mono = mono_ns();
        let now_real = real_ns();
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let b = &bufs[i][..len.min(BUF)];
            let Some((call_id, p)) = parse_gre(b) else {
                other += 1;
                continue;
            };
            let seq = u64::from_be_bytes(p[0..8].try_into().unwrap());
            let s_mono = u64::from_be_bytes(p[8..16].try_into().unwrap());
            let s_real = u64::from_be_bytes(p[16..24].try_into().unwrap());
            let reference = u64::from_be_bytes(p[24..32].try_into().unwrap());
            let k_real = kernel_stamp(&msgs[i].msg_hdr).unwrap_or(now_real);
            received += 1;
            if received == 1 {
                first = now_mono;
            }
            last = now_mono;
            max_seq = max_seq.max(seq);
            *per_call.entry(call_id).or_default() += 1;
            if a.flows && b.len() >= 20 {
                flows.insert((u32::from_be_bytes([b[16], b[17], b[18], b[19]]), call_id));
            }
            if lat_kernel.len() < MAX_SAMPLES {
                match k_real.checked_sub(s_real) {
                    Some(d) => lat_kernel.push(d),
                    None => neg += 1,
                }
                lat_user.push(now_mono.saturating_sub(s_mono));
            }
            if let Some(w) = &mut probe {
                let written = p
                    .get(36..44)
                    .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
                let _ = writeln!(w, "{call_id} {seq} {k_real} {reference} {s_real} {written}");
            }
        }
    }
    if let Some(mut w) = probe {
        let _ = w.flush();
    }
    let span = (last.saturating_sub(first)) as f64 / 1e9;
    let out = json!({
        "received": received,
        "other_packets": other,
        "max_seq": max_seq,
        "call_ids": per_call.len(),
        "flows": flows.len(),
        "span_s": span,
        "rate": if span > 0.0 { received as f64 / span } else { 0.0 },
        "negative_latency": neg,
        // Send timestamp (CLOCK_REALTIME) to the kernel's receive timestamp (SO_TIMESTAMPNS)
        // in the client namespace: independent of when this process gets to run.
        "latency": summary(lat_kernel),
        // CLOCK_MONOTONIC send to CLOCK_MONOTONIC after recvmmsg returned.
        "latency_user": summary(lat_user),
    });
    println!("{out}");
    Ok(())
}

/// The GRE call id and our payload, if `b` (an IPv4 packet) is one of ours.
fn parse_gre(b: &[u8]) -> Option<(u16, &[u8])> {
    let ihl = usize::from(*b.first()? & 0x0f) * 4;
    let g = b.get(ihl..)?;
    if g.len() < 8 || g[1] & 0x07 != 1 {
        return None;
    }
    let mut h = 8;
    if g[0] & 0x10 != 0 {
        h += 4;
    }
    if g[1] & 0x80 != 0 {
        h += 4;
    }
    let call_id = u16::from_be_bytes([g[6], g[7]]);
    let p = g.get(h..)?;
    (p.len() >= 36 && u32::from_be_bytes(p[32..36].try_into().unwrap()) == MAGIC)
        .then_some((call_id, p))
}

fn kernel_stamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

// ---------------------------------------------------------------- PPTP messages

fn ctl_msg(ty: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    m[2..4].copy_from_slice(&1u16.to_be_bytes());
    m[4..8].copy_from_slice(&COOKIE.to_be_bytes());
    m[8..10].copy_from_slice(&ty.to_be_bytes());
    m
}

fn sccrq(reply: bool) -> Vec<u8> {
    let mut m = ctl_msg(if reply { 2 } else { 1 }, 156);
    m[12..14].copy_from_slice(&0x0100u16.to_be_bytes());
    if reply {
        m[14] = 1; // result: success
    }
    m[16..20].copy_from_slice(&3u32.to_be_bytes()); // framing: async + sync
    m[20..24].copy_from_slice(&3u32.to_be_bytes()); // bearer: analog + digital
    m[24..26].copy_from_slice(&0xffffu16.to_be_bytes());
    m[28..36].copy_from_slice(b"gre-load");
    m
}

fn ocrq(call_id: u16, serial: u16) -> Vec<u8> {
    let mut m = ctl_msg(7, 168);
    m[12..14].copy_from_slice(&call_id.to_be_bytes());
    m[14..16].copy_from_slice(&serial.to_be_bytes());
    m[16..20].copy_from_slice(&300u32.to_be_bytes());
    m[20..24].copy_from_slice(&100_000_000u32.to_be_bytes());
    m[24..28].copy_from_slice(&3u32.to_be_bytes());
    m[28..32].copy_from_slice(&3u32.to_be_bytes());
    m[32..34].copy_from_slice(&64u16.to_be_bytes());
    m
}

fn ocrp(own: u16, peer: u16) -> Vec<u8> {
    let mut m = ctl_msg(8, 32);
    m[12..14].copy_from_slice(&own.to_be_bytes());
    m[14..16].copy_from_slice(&peer.to_be_bytes());
    m[16] = 1; // connected
    m[20..24].copy_from_slice(&100_000_000u32.to_be_bytes());
    m[24..26].copy_from_slice(&64u16.to_be_bytes());
    m
}

fn id_msg(ty: u16, len: usize, id: u16) -> Vec<u8> {
    let mut m = ctl_msg(ty, len);
    m[12..14].copy_from_slice(&id.to_be_bytes());
    m
}

fn msg_type(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[8], m[9]])
}

fn msg_u16(m: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([m[at], m[at + 1]])
}

/// Takes whole messages off the front of `buf`.
fn take_msgs(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 2 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        if len < 12 {
            return Err(format!("bad message length {len}"));
        }
        if buf.len() < len {
            break;
        }
        out.push(buf.drain(..len).collect());
    }
    Ok(out)
}

// ---------------------------------------------------------------- pac

struct PacConn {
    stream: TcpStream,
    peer: Ipv4Addr,
    buf: Vec<u8>,
}

fn pac(a: PacArgs) -> Result<(), String> {
    install_signals();
    raise_nofile();
    let listener = listen(SocketAddrV4::new(a.bind, a.port), a.reuseport)
        .map_err(|e| format!("listen: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let raw = if a.probes > 0 {
        Some(Raw::open(None).map_err(|e| format!("raw socket: {e}"))?)
    } else {
        None
    };
    let mut ids_out = match &a.ids_out {
        Some(f) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .map_err(|e| format!("{f}: {e}"))?,
        ),
        None => None,
    };
    // SAFETY: epoll_create1 returns a new descriptor.
    let ep = unsafe { libc::epoll_create1(0) };
    if ep < 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    let add = |fd: RawFd, token: u64| {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll and socket descriptors.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    };
    const LISTENER: u64 = u64::MAX;
    add(listener.as_raw_fd(), LISTENER);
    let mut conns: HashMap<u64, PacConn> = HashMap::new();
    let mut next_token = 0u64;
    let mut next_own: u16 = a.first_id;
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut calls = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for 256 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, 200) };
        for ev in events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok((s, peer)) = listener.accept() {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_nonblocking(true);
                    let peer = match peer {
                        std::net::SocketAddr::V4(v) => *v.ip(),
                        _ => continue,
                    };
                    add(s.as_raw_fd(), next_token);
                    conns.insert(
                        next_token,
                        PacConn {
                            stream: s,
                            peer,
                            buf: Vec::new(),
                        },
                    );
                    next_token += 1;
                }
                continue;
            }
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            let mut tmp = [0u8; 16384];
            let mut closed = false;
            loop {
                match c.stream.read(&mut tmp) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(k) => c.buf.extend_from_slice(&tmp[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let msgs = match take_msgs(&mut c.buf) {
                Ok(m) => m,
                Err(_) => {
                    closed = true;
                    Vec::new()
                }
            };
            for m in msgs {
                let (reply, probe_id) = match msg_type(&m) {
                    1 => (sccrq(true), None),
                    3 => {
                        let mut r = ctl_msg(4, 16);
                        r[12] = 1;
                        (r, None)
                    }
                    5 => {
                        let mut r = ctl_msg(6, 20);
                        r[12..16].copy_from_slice(&m[12..16]);
                        r[16] = 1;
                        (r, None)
                    }
                    7 => {
                        let peer_id = msg_u16(&m, 12);
                        let own = next_own;
                        next_own = next_own.wrapping_add(1).max(0x100);
                        calls += 1;
                        if let Some(f) = &mut ids_out {
                            // One write per line: other servers append to the same file.
                            let _ = f.write_all(format!("{peer_id}\n").as_bytes());
                        }
                        (ocrp(own, peer_id), Some(peer_id))
                    }
                    12 => {
                        // Call-Disconnect-Notify naming our own call, as RFC 2637 says; the
                        // client's id is what we know, so name that one: the Linux helper
                        // and pptp-alg both accept it.
                        let mut r = id_msg(13, 148, msg_u16(&m, 12));
                        r[14] = 3; // result: request
                        (r, None)
                    }
                    _ => continue,
                };
                let t_ref = real_ns();
                if write_all_nb(&mut c.stream, &reply).is_err() {
                    closed = true;
                    break;
                }
                let t_written = real_ns();
                if let (Some(raw), Some(id)) = (&raw, probe_id) {
                    let stamps = (t_ref, t_written);
                    send_probes(raw, c.peer, id, a.probes, a.probe_gap_us, stamps);
                }
            }
            if closed {
                conns.remove(&token);
            }
        }
    }
    eprintln!("gre-load pac: {calls} calls served");
    Ok(())
}

/// A listening socket with a backlog for thousands of connects in flight, optionally
/// shared with other processes (SO_REUSEPORT).
fn listen(addr: SocketAddrV4, reuseport: bool) -> io::Result<TcpListener> {
    // SAFETY: plain socket(2); the descriptor is owned by the TcpListener right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let l = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let mut opts = vec![libc::SO_REUSEADDR];
    if reuseport {
        opts.push(libc::SO_REUSEPORT);
    }
    for opt in opts {
        // SAFETY: setsockopt with a pointer to a local int.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr(*addr.ip(), addr.port());
    // SAFETY: a valid sockaddr_in of the given length.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    // SAFETY: listen on our bound socket.
    if r != 0 || unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

fn write_all_nb(s: &mut TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match s.write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `n` GRE probes to `call_id`, `gap_us` apart; each carries the reply's (reference, written)
/// real-time stamps: before its write and once the write returned.
fn send_probes(raw: &Raw, dst: Ipv4Addr, call_id: u16, n: u32, gap_us: u64, stamps: (u64, u64)) {
    let sa = sockaddr(dst, 0);
    let mut buf = [0u8; PKT];
    let start = mono_ns();
    for i in 0..u64::from(n) {
        let due = start + i * gap_us * 1000;
        while mono_ns() < due {
            std::hint::spin_loop();
        }
        fill(&mut buf, call_id, i, stamps.0);
        buf[GRE_HDR + 36..GRE_HDR + 44].copy_from_slice(&stamps.1.to_be_bytes());
        // SAFETY: valid buffer and address.
        unsafe {
            libc::sendto(
                raw.0,
                buf.as_ptr().cast(),
                PKT,
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
    }
}

/// Raises the descriptor limit as far as allowed: to the hard limit, or beyond it with
/// CAP_SYS_RESOURCE. (Containers often lack that capability; scale.sh then runs several
/// processes.)
fn raise_nofile() {
    let want = libc::rlimit {
        rlim_cur: 262_144,
        rlim_max: 262_144,
    };
    // SAFETY: setrlimit/getrlimit with valid structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let mut cur: libc::rlimit = mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) == 0 {
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
            }
        }
    }
}

// ---------------------------------------------------------------- pns

struct PnsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Calls the server accepted.
    ids: Vec<u16>,
    /// A request got no reply: nothing more is sent.
    broken: bool,
    /// The last `expect` failed because no reply came within the read timeout.
    timed_out: bool,
}

impl PnsConn {
    /// Reads until one message of type `ty` arrives (others are skipped).
    fn expect(&mut self, ty: u16) -> Result<Vec<u8>, String> {
        let mut tmp = [0u8; 4096];
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if len < 12 {
                    return Err(format!("bad message length {len}"));
                }
                if self.buf.len() >= len {
                    let m: Vec<u8> = self.buf.drain(..len).collect();
                    if msg_type(&m) == ty {
                        return Ok(m);
                    }
                    continue;
                }
            }
            let n = match self.stream.read(&mut tmp) {
                Ok(n) => n,
                Err(e) => {
                    self.timed_out = matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    );
                    return Err(format!("waiting for message type {ty}: {e}"));
                }
            };
            if n == 0 {
                return Err(format!("connection closed waiting for message type {ty}"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn send(&mut self, m: &[u8]) -> Result<(), String> {
        self.stream.write_all(m).map_err(|e| format!("send: {e}"))
    }
}

/// Sends `reqs` with at most `window` outstanding, reading one `reply_ty` per request.
/// Returns the replies received, and the error that stopped it early if any.
fn pipeline(
    c: &mut PnsConn,
    reqs: &[Vec<u8>],
    reply_ty: u16,
    window: usize,
    gap: f64,
) -> (Vec<Vec<u8>>, Option<String>) {
    let mut replies = Vec::with_capacity(reqs.len());
    let mut sent = 0;
    while replies.len() < reqs.len() {
        while sent < reqs.len() && sent - replies.len() < window.max(1) {
            if let Err(e) = c.send(&reqs[sent]) {
                return (replies, Some(e));
            }
            sent += 1;
        }
        match c.expect(reply_ty) {
            Ok(r) => replies.push(r),
            Err(e) => return (replies, Some(e)),
        }
        if gap > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(gap));
        }
    }
    (replies, None)
}

/// One planned control connection: its source address (None: the namespace's own) and
/// the Call IDs of its calls.
struct Plan {
    bind: Option<Ipv4Addr>,
    ids: Vec<u16>,
}

fn plan(a: &PnsArgs) -> Result<Vec<Plan>, String> {
    let mut out = Vec::new();
    match a.hosts {
        None => {
            let mut next = a.call_id;
            for _ in 0..a.conns {
                if a.same_ids {
                    next = a.call_id;
                }
                let ids = (0..a.calls)
                    .map(|_| {
                        let id = next;
                        next = next.wrapping_add(1);
                        id
                    })
                    .collect();
                out.push(Plan { bind: None, ids });
            }
        }
        Some(hosts) => {
            let base = u32::from(a.host_base);
            for h in 0..hosts {
                let addr = base
                    .checked_add(a.host_offset)
                    .and_then(|b| b.checked_add(h))
                    .map(Ipv4Addr::from)
                    .ok_or("--host-base + --hosts overflows")?;
                let mut next = a.call_id;
                for _ in 0..a.conns {
                    let ids = (0..a.calls)
                        .map(|_| {
                            let id = next;
                            next = next.wrapping_add(1);
                            id
                        })
                        .collect();
                    out.push(Plan {
                        bind: Some(addr),
                        ids,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Connects from `bind` (std cannot bind before connecting; Linux bounds a blocking
/// connect by the send timeout).
fn connect_from(
    bind: Option<Ipv4Addr>,
    server: SocketAddrV4,
    to: Duration,
) -> io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect_timeout(&server.into(), to);
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    s.set_write_timeout(Some(to))?;
    // Pick the source port at connect time, as a host that does not bind would: binding to
    // port 0 picks it at bind time, searching the ports' bind buckets, which grow with
    // every socket (tens of thousands here) and made the tool the bottleneck.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a local int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as u32,
        )
    };
    let (l, r) = (sockaddr(local, 0), sockaddr(*server.ip(), server.port()));
    let len = mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: valid sockaddr_in values of the given length.
    if unsafe { libc::bind(fd, (&l as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&r as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// What one setup thread did.
#[derive(Default)]
struct SetupResult {
    conns: Vec<PnsConn>,
    calls: u64,
    refused: u64,
    failed: u64,
    first_error: Option<String>,
    /// Setup time (ms) of each connection whose calls all came up.
    conn_ms: Vec<f64>,
}

/// Opens the planned connections one after another (connection `i` of the plan not before
/// `t0 + i * a.conn_interval`) and sets up their calls; stops early once `failures`
/// (shared by all threads) reaches `a.max_failures`.
fn setup_share(
    a: &PnsArgs,
    share: &[(usize, &Plan)],
    failures: &AtomicU64,
    t0: u64,
) -> SetupResult {
    let to = Duration::from_secs_f64(a.timeout);
    let server = SocketAddrV4::new(a.server, a.port);
    let mut r = SetupResult::default();
    let mut serial = 0u16;
    for &(i, p) in share {
        let due = t0 + (i as f64 * a.conn_interval * 1e9) as u64;
        while !STOP.load(Ordering::Relaxed) && mono_ns() < due {
            std::thread::sleep(Duration::from_nanos((due - mono_ns()).min(20_000_000)));
        }
        if STOP.load(Ordering::Relaxed) || failures.load(Ordering::Relaxed) >= a.max_failures {
            break;
        }
        let c0 = mono_ns();
        let fail = |r: &mut SetupResult, n: u64, e: String| {
            r.failed += n;
            failures.fetch_add(n, Ordering::Relaxed);
            r.first_error.get_or_insert(e);
        };
        let s = match connect_from(p.bind, server, to) {
            Ok(s) => s,
            Err(e) => {
                fail(
                    &mut r,
                    p.ids.len() as u64,
                    format!("connect from {:?}: {e}", p.bind),
                );
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(to));
        let mut c = PnsConn {
            stream: s,
            buf: Vec::new(),
            ids: Vec::new(),
            broken: false,
            timed_out: false,
        };
        if let Err(e) = c.send(&sccrq(false)).and_then(|()| c.expect(2).map(|_| ())) {
            fail(
                &mut r,
                p.ids.len() as u64,
                format!("SCCRQ from {:?}: {e}", p.bind),
            );
            continue;
        }
        let reqs: Vec<Vec<u8>> = p
            .ids
            .iter()
            .map(|&id| {
                serial = serial.wrapping_add(1);
                ocrq(id, serial)
            })
            .collect();
        let (replies, err) = pipeline(&mut c, &reqs, 8, a.window as usize, a.gap);
        for (rp, &id) in replies.iter().zip(&p.ids) {
            if rp[16] == 1 {
                r.calls += 1;
                c.ids.push(id);
            } else {
                r.refused += 1;
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(e) = err {
            // The calls that got no reply failed; those that did stay up. Nothing more
            // is sent on the connection: a request stuck in it (dropped by a NAT that
            // refused it) holds back everything behind it.
            c.broken = true;
            let n = (p.ids.len() - replies.len()) as u64;
            fail(&mut r, n, format!("OCRQ from {:?}: {e}", p.bind));
        } else if c.ids.len() == p.ids.len() {
            r.conn_ms.push((mono_ns() - c0) as f64 / 1e6);
        }
        r.conns.push(c);
    }
    r
}

/// Clears the calls of `conns` and stops their control connections; returns the calls
/// cleared.
fn teardown_share(a: &PnsArgs, conns: &mut [PnsConn]) -> u64 {
    let mut cleared = 0u64;
    for c in conns.iter_mut().filter(|c| !c.broken) {
        let reqs: Vec<Vec<u8>> = c.ids.iter().map(|&id| id_msg(12, 16, id)).collect();
        cleared += pipeline(c, &reqs, 13, a.window as usize, 0.0).0.len() as u64;
    }
    for c in conns.iter_mut().filter(|c| !c.broken) {
        let mut stop = ctl_msg(3, 16);
        stop[12] = 1;
        let _ = c.send(&stop);
        let _ = c.expect(4);
    }
    cleared
}

/// Echo-Request every `interval` on `c`, each awaited, until `until` (mono ns) or a signal;
/// writes "send_real_ns rtt_ns" per reply to `out`, or "send_real_ns -1" for an echo not
/// answered within the connection's read timeout (then the next one is sent; a late reply
/// is told apart by its identifier). After a reply later than `interval` the next echo goes
/// `interval` after it, not at once: catching up with the schedule would follow every slow
/// round trip by a burst of fast ones, as if the control plane had been sampled more often
/// when it was fast. Returns (echoes answered, echoes timed out, the error that stopped it
/// early).
fn echo_loop(
    c: &mut PnsConn,
    interval: Duration,
    until: u64,
    out: &mut impl Write,
) -> (u64, u64, Option<String>) {
    let step = interval.as_nanos().max(1) as u64;
    let mut due = mono_ns();
    let mut id = 0u32;
    let (mut answered, mut lost) = (0u64, 0u64);
    while !STOP.load(Ordering::Relaxed) && (until == 0 || mono_ns() < until) {
        let now = mono_ns();
        if now < due {
            std::thread::sleep(Duration::from_nanos((due - now).min(20_000_000)));
            continue;
        }
        due = due.max(now) + step;
        id = id.wrapping_add(1);
        let mut req = ctl_msg(5, 16);
        req[12..16].copy_from_slice(&id.to_be_bytes());
        let (t_real, t0) = (real_ns(), mono_ns());
        if let Err(e) = c.send(&req) {
            return (answered, lost, Some(e));
        }
        // A late reply to an earlier echo that timed out is skipped.
        let got = loop {
            match c.expect(6) {
                Ok(m) if m.len() >= 16 && m[12..16] == id.to_be_bytes() => break true,
                Ok(_) => continue,
                // The stop signal interrupts a read with a timeout (never restarted): the
                // run is over, not the echo lost.
                Err(_) if STOP.load(Ordering::Relaxed) => return (answered, lost, None),
                Err(_) if c.timed_out => break false,
                Err(e) => return (answered, lost, Some(e)),
            }
        };
        if got {
            answered += 1;
            let _ = writeln!(out, "{t_real} {}", mono_ns() - t0);
        } else {
            lost += 1;
            let _ = writeln!(out, "{t_real} -1");
        }
    }
    (answered, lost, None)
}

fn pns(a: PnsArgs) -> Result<(), String> {
    install_signals();
    raise_nofile();
    let plans = plan(&a)?;
    let threads = a.threads.max(1) as usize;
    // Round-robin shares, so every thread meets early and late hosts alike.
    let shares: Vec<Vec<(usize, &Plan)>> = (0..threads)
        .map(|t| plans.iter().enumerate().skip(t).step_by(threads).collect())
        .collect();
    let failures = AtomicU64::new(0);
    // CLOCK_REALTIME stamps as well, so a script can combine several processes' reports.
    let t0_real = real_ns();
    let t0 = mono_ns();
    let results: Vec<SetupResult> = std::thread::scope(|sc| {
        let hs: Vec<_> = shares
            .iter()
            .map(|sh| {
                let (a, f) = (&a, &failures);
                sc.spawn(move || setup_share(a, sh, f, t0))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let t_up = mono_ns();
    let t_up_real = real_ns();
    let calls: u64 = results.iter().map(|r| r.calls).sum();
    let refused: u64 = results.iter().map(|r| r.refused).sum();
    let failed: u64 = results.iter().map(|r| r.failed).sum();
    let open: usize = results.iter().map(|r| r.conns.len()).sum();
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    let setup_s = (t_up - t0) as f64 / 1e9;
    let planned: usize = plans.iter().map(|p| p.ids.len()).sum();
    let mut ready = json!({
        "conns": open,
        "planned_conns": plans.len(),
        "planned_calls": planned,
        "calls": calls,
        "refused": refused,
        "failed": failed,
        "first_error": first_error,
        "threads": threads,
        // From the first connect to the last reply: connections and calls.
        "setup_s": setup_s,
        "setups_per_s": calls as f64 / setup_s,
        "t0_real_ns": t0_real,
        "t_up_real_ns": t_up_real,
    });
    if a.conn_times {
        let ms: Vec<f64> = results
            .iter()
            .flat_map(|r| r.conn_ms.iter().copied())
            .collect();
        ready["conn_setup_ms"] = json!(ms);
    }
    if let Some(f) = &a.ready_file {
        std::fs::write(f, format!("{ready}\n")).map_err(|e| format!("{f}: {e}"))?;
    }
    let mut conns: Vec<Vec<PnsConn>> = results.into_iter().map(|r| r.conns).collect();
    let hold_until = mono_ns() + (a.hold * 1e9) as u64;
    let mut echo = json!(null);
    if a.echo_interval_ms > 0 {
        let c = conns
            .iter_mut()
            .flatten()
            .find(|c| !c.broken)
            .ok_or("no connection to send echoes on")?;
        let mut out: Box<dyn Write> = match &a.echo_out {
            Some(f) => Box::new(io::BufWriter::new(
                std::fs::File::create(f).map_err(|e| format!("{f}: {e}"))?,
            )),
            None => Box::new(io::sink()),
        };
        let until = if a.hold == 0.0 { 0 } else { hold_until };
        let interval = Duration::from_millis(a.echo_interval_ms);
        let (answered, lost, err) = echo_loop(c, interval, until, &mut out);
        let _ = out.flush();
        if err.is_some() || lost > 0 {
            c.broken = true;
        }
        echo = json!({"answered": answered, "timed_out": lost, "error": err});
    }
    while !STOP.load(Ordering::Relaxed) && (a.hold == 0.0 || mono_ns() < hold_until) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t_down0 = mono_ns();
    let t_down0_real = real_ns();
    let cleared: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = conns
            .iter_mut()
            .map(|cs| {
                let a = &a;
                sc.spawn(move || teardown_share(a, cs))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let teardown_s = (mono_ns() - t_down0) as f64 / 1e9;
    let out = json!({
        "setup": ready,
        "echo": echo,
        "cleared": cleared,
        "t_down0_real_ns": t_down0_real,
        "t_down_real_ns": real_ns(),
        "teardown_s": teardown_s,
        "teardowns_per_s": cleared as f64 / teardown_s,
    });
    println!("{out}");
    Ok(())
}

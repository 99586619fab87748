//! `nfq-minimal`: the least an NFQUEUE GRE translator can do with the `nfq` crate, as the
//! yardstick for pptp-alg's userspace path (benches/throughput.sh, config "min").
//!
//! Binds the same queues as the daemon (configured the same way: full copy range, fail-closed,
//! no GSO), and for every enhanced GRE packet rewrites the destination address to `--to` and
//! the Call ID through a 65,536-entry table (identity unless `--id-offset`), updates the IPv4
//! header checksum incrementally (RFC 1624), sets the mark and gives an accept verdict with the
//! modified payload, in place in the receive buffer. Anything else is accepted unchanged.
//! No call table, no validation beyond what the rewrite needs, no timers, no locks.

use clap::Parser;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Parser)]
#[command(
    name = "nfq-minimal",
    about = "Minimal NFQUEUE GRE rewriter (benchmark yardstick)"
)]
struct Args {
    /// Queues to bind (GRE is rewritten on any of them).
    #[arg(long, default_values_t = [1723u16, 1724u16])]
    queue: Vec<u16>,
    /// New destination address of GRE.
    #[arg(long)]
    to: Ipv4Addr,
    /// Added to every Call ID (0: the table is the identity, as with pptp-alg's "keep" ids).
    #[arg(long, default_value_t = 0)]
    id_offset: u16,
    /// Mark set on rewritten packets.
    #[arg(long, default_value_t = 0x1723)]
    mark: u32,
    /// Kernel queue length.
    #[arg(long, default_value_t = 4096)]
    max_len: u32,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// One's-complement update of a 16-bit checksum for one changed 16-bit word (RFC 1624 eq. 3).
#[inline]
fn csum_update(csum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!csum) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

fn main() {
    let a = Args::parse();
    if let Some(cpu) = a.cpu {
        // SAFETY: zeroed cpu_set_t is empty; valid pointers.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    // No SA_RESTART: a signal interrupts the blocking recv, so the loop can stop.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    let mut ids = vec![0u16; 65536];
    for (i, v) in ids.iter_mut().enumerate() {
        *v = (i as u16).wrapping_add(a.id_offset);
    }
    let to = a.to.octets();
    let mut q = nfq::Queue::open().expect("open NFQUEUE socket");
    for &n in &a.queue {
        q.bind(n).expect("bind queue");
        q.set_copy_range(n, 0xffff).expect("copy range");
        q.set_queue_max_len(n, a.max_len).expect("queue length");
        q.set_fail_open(n, false).expect("fail-closed");
        q.set_recv_gso(n, false).expect("gso");
    }
    eprintln!("nfq-minimal: bound {:?}", a.queue);
    let (mut packets, mut rewritten) = (0u64, 0u64);
    while !STOP.load(Ordering::Relaxed) {
        let mut msg = match q.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("nfq-minimal: recv: {e}");
                break;
            }
        };
        packets += 1;
        let p = msg.get_payload();
        let ihl = usize::from(p.first().copied().unwrap_or(0) & 0x0f) * 4;
        let is_gre = p.len() >= ihl + 8
            && ihl >= 20
            && p[9] == 47
            && p[ihl + 1] & 0x07 == 1
            && p[ihl + 2..ihl + 4] == [0x88, 0x0b];
        if is_gre {
            let b = msg.get_payload_mut();
            let mut csum = u16::from_be_bytes([b[10], b[11]]);
            for w in 0..2 {
                let at = 16 + 2 * w;
                let old = u16::from_be_bytes([b[at], b[at + 1]]);
                let new = u16::from_be_bytes([to[2 * w], to[2 * w + 1]]);
                csum = csum_update(csum, old, new);
            }
            b[16..20].copy_from_slice(&to);
            b[10..12].copy_from_slice(&csum.to_be_bytes());
            let at = ihl + 6;
            let id = u16::from_be_bytes([b[at], b[at + 1]]);
            b[at..at + 2].copy_from_slice(&ids[usize::from(id)].to_be_bytes());
            msg.set_nfmark(a.mark);
            rewritten += 1;
        }
        msg.set_verdict(nfq::Verdict::Accept);
        if let Err(e) = q.verdict(msg) {
            eprintln!("nfq-minimal: verdict: {e}");
        }
    }
    println!("{{\"packets\":{packets},\"rewritten\":{rewritten}}}");
}

//! `pptp-peer gre-send` and `gre-recv`: raw GRE without any control connection,
//! for checking what a NAT does with GRE it has no call for.

use std::io::Write;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use super::gre::{self, GreOut, RawGre};
use super::parse_u16;

/// Options of `pptp-peer gre-send`.
#[derive(clap::Args, Debug)]
pub struct SendOpts {
    /// Destination address.
    #[arg(long)]
    pub to: Ipv4Addr,
    /// Call ID put in the key field (decimal or 0x-hex).
    #[arg(long, value_parser = parse_u16)]
    pub call_id: u16,
    /// Payload text.
    #[arg(long)]
    pub payload: String,
    /// Number of packets (sequence numbers 0..COUNT).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// GRE version: 1 is PPTP; 0 uses the same layout, which no ALG may touch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub version: u8,
    /// GRE protocol type (decimal or 0x-hex).
    #[arg(long, default_value = "0x880B", value_parser = parse_u16)]
    pub protocol: u16,
    /// Local source address.
    #[arg(long)]
    pub bind: Option<Ipv4Addr>,
}

/// Options of `pptp-peer gre-recv`.
#[derive(clap::Args, Debug)]
pub struct RecvOpts {
    /// Seconds to listen.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Stop after this many packets.
    #[arg(long)]
    pub count: Option<usize>,
    /// Only packets to this local address.
    #[arg(long)]
    pub bind: Option<Ipv4Addr>,
}

/// Sends the packets; prints `{"sent":N,...}`.
pub fn send(o: SendOpts) -> i32 {
    let raw = match RawGre::open(o.bind) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pptp-peer gre-send: cannot open raw GRE socket (needs root/CAP_NET_RAW): {e}"
            );
            return 1;
        }
    };
    let mut sent = 0u32;
    for seq in 0..o.count {
        let pkt = gre::build(&GreOut {
            version: o.version,
            protocol: o.protocol,
            call_id: o.call_id,
            seq: Some(seq),
            ack: None,
            payload: o.payload.as_bytes(),
        });
        match raw.send_to(&pkt, o.to) {
            Ok(()) => sent += 1,
            Err(e) => {
                eprintln!("pptp-peer gre-send: send to {} failed: {e}", o.to);
                break;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    let summary = serde_json::json!({
        "sent": sent,
        "to": o.to.to_string(),
        "call_id": o.call_id,
        "version": o.version,
        "protocol": o.protocol,
    });
    println!("{summary}");
    if sent == o.count {
        0
    } else {
        1
    }
}

/// Prints one JSON line per GRE packet until the duration or count is reached.
pub fn recv(o: RecvOpts) -> i32 {
    let raw = match RawGre::open(o.bind).and_then(|r| {
        r.set_read_timeout(Duration::from_millis(100))?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pptp-peer gre-recv: cannot open raw GRE socket (needs root/CAP_NET_RAW): {e}"
            );
            return 1;
        }
    };
    eprintln!("pptp-peer gre-recv: listening");
    let deadline = Instant::now() + Duration::from_secs_f64(o.duration.max(0.0));
    let mut buf = vec![0u8; 65536];
    let mut seen = 0usize;
    let stdout = std::io::stdout();
    while Instant::now() < deadline && o.count.is_none_or(|c| seen < c) {
        match raw.recv(&mut buf) {
            Ok(n) => {
                if let Some(rec) = gre::parse_ip(&buf[..n]) {
                    seen += 1;
                    if let Ok(line) = serde_json::to_string(&rec) {
                        let mut out = stdout.lock();
                        // Flush per line: a test reads these while we still run.
                        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                    }
                }
            }
            Err(e) if gre::is_timeout(&e) => {}
            Err(e) => {
                eprintln!("pptp-peer gre-recv: receive failed: {e}");
                return 1;
            }
        }
    }
    0
}

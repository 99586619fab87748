//! Enhanced GRE (RFC 2637 section 4.1) over a raw IPv4 socket.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use serde::Serialize;

/// GRE protocol type of PPTP's PPP payload.
pub const PROTO_PPP: u16 = 0x880B;
/// IP protocol number of GRE.
const IPPROTO_GRE: libc::c_int = 47;

const FLAG_KEY: u8 = 0x20;
const FLAG_SEQ: u8 = 0x10;
const FLAG_ACK: u8 = 0x80;
const FLAG_CSUM: u8 = 0x80;
const FLAG_ROUTING: u8 = 0x40;

/// What to put in a GRE packet we send.
#[derive(Debug, Clone)]
pub struct GreOut<'a> {
    /// GRE version (1 for PPTP; 0 to check that a NAT leaves other GRE alone).
    pub version: u8,
    /// GRE protocol type.
    pub protocol: u16,
    /// The receiver's Call ID.
    pub call_id: u16,
    /// Sequence number (S bit) if any.
    pub seq: Option<u32>,
    /// Acknowledgement number (A bit) if any; only meaningful in version 1.
    pub ack: Option<u32>,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Serialises a GRE header (without IP header) plus payload.
///
/// For version 0 the same key layout is used so that only the version differs
/// from PPTP traffic: an ALG that ignores the version would visibly rewrite it.
pub fn build(p: &GreOut<'_>) -> Vec<u8> {
    let mut flags0 = FLAG_KEY;
    let mut flags1 = p.version & 0x07;
    if p.seq.is_some() {
        flags0 |= FLAG_SEQ;
    }
    if p.ack.is_some() {
        flags1 |= FLAG_ACK;
    }
    let plen = p.payload.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(16 + plen);
    out.extend_from_slice(&[flags0, flags1]);
    out.extend_from_slice(&p.protocol.to_be_bytes());
    out.extend_from_slice(&(plen as u16).to_be_bytes());
    out.extend_from_slice(&p.call_id.to_be_bytes());
    if let Some(s) = p.seq {
        out.extend_from_slice(&s.to_be_bytes());
    }
    if let Some(a) = p.ack {
        out.extend_from_slice(&a.to_be_bytes());
    }
    out.extend_from_slice(&p.payload[..plen]);
    out
}

/// A received GRE packet, as recorded in summaries and `gre-recv` output.
#[derive(Debug, Clone, Serialize)]
pub struct GreRecord {
    /// Source address from the IP header.
    pub from: String,
    /// Destination address from the IP header.
    pub to: String,
    /// GRE version.
    pub version: u8,
    /// GRE protocol type.
    pub protocol: u16,
    /// Call ID from the key field (None without the K bit).
    pub call_id: Option<u16>,
    /// Sequence number if the S bit was set.
    pub seq: Option<u32>,
    /// Acknowledgement number if the A bit was set.
    pub ack: Option<u32>,
    /// Payload as lossy UTF-8; the peers send text that names the sender.
    pub payload: String,
}

impl GreRecord {
    /// Whether this is PPTP's enhanced GRE (version 1, PPP, with a key).
    pub fn is_pptp(&self) -> bool {
        self.version == 1 && self.protocol == PROTO_PPP && self.call_id.is_some()
    }
}

/// Parses an IPv4 packet as delivered by a raw socket; None if it is not GRE or
/// is truncated. Never panics, whatever the bytes.
pub fn parse_ip(pkt: &[u8]) -> Option<GreRecord> {
    let first = *pkt.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0F) * 4;
    if ihl < 20 || pkt.len() < ihl || pkt[9] != IPPROTO_GRE as u8 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let g = &pkt[ihl..];
    if g.len() < 4 {
        return None;
    }
    let (f0, f1) = (g[0], g[1]);
    let version = f1 & 0x07;
    let protocol = u16::from_be_bytes([g[2], g[3]]);
    let mut at = 4;
    // Version 0 may carry checksum/offset and routing; skip them to find the key.
    if version == 0 && f0 & (FLAG_CSUM | FLAG_ROUTING) != 0 {
        at += 4;
    }
    let take4 = |at: &mut usize| -> Option<[u8; 4]> {
        let b = g.get(*at..*at + 4)?;
        *at += 4;
        Some([b[0], b[1], b[2], b[3]])
    };
    let mut payload_len = None;
    let mut call_id = None;
    if f0 & FLAG_KEY != 0 {
        let k = take4(&mut at)?;
        payload_len = Some(usize::from(u16::from_be_bytes([k[0], k[1]])));
        call_id = Some(u16::from_be_bytes([k[2], k[3]]));
    }
    let seq = if f0 & FLAG_SEQ != 0 {
        Some(u32::from_be_bytes(take4(&mut at)?))
    } else {
        None
    };
    let ack = if version == 1 && f1 & FLAG_ACK != 0 {
        Some(u32::from_be_bytes(take4(&mut at)?))
    } else {
        None
    };
    let rest = g.get(at..).unwrap_or(&[]);
    // In version 1 the key's high half is the payload length; trust it only as
    // far as the bytes actually go.
    let body = match (version, payload_len) {
        (1, Some(n)) => &rest[..n.min(rest.len())],
        _ => rest,
    };
    Some(GreRecord {
        from: src.to_string(),
        to: dst.to_string(),
        version,
        protocol,
        call_id,
        seq,
        ack,
        payload: String::from_utf8_lossy(body).into_owned(),
    })
}

/// A raw IPv4 socket for IP protocol 47.
///
/// Every such socket in a network namespace gets a copy of every GRE packet
/// delivered locally, so binding to a local address is what separates peers
/// that share a namespace.
pub struct RawGre {
    fd: OwnedFd,
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    sa
}

impl RawGre {
    /// Opens the socket, bound to `bind` if given (source address of what we send,
    /// and a filter on the destination address of what we receive).
    pub fn open(bind: Option<Ipv4Addr>) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                IPPROTO_GRE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Every GRE packet to the namespace is queued on every raw socket in
        // it; with hundreds of calls a burst of echoes overflows the default
        // buffer (~200 packets) before the reader runs, and a lost echo reads
        // as a misrouted call. Best effort: SO_RCVBUFFORCE needs CAP_NET_ADMIN.
        let size: libc::c_int = 8 << 20;
        // SAFETY: size is a valid c_int and its size is passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if let Some(addr) = bind {
            let sa = sockaddr(addr);
            // SAFETY: sa is a valid sockaddr_in and its size is passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(RawGre { fd })
    }

    /// Makes `recv` return `WouldBlock` after `t`, so loops can check a stop flag.
    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a GRE packet (no IP header: the kernel adds it).
    pub fn send_to(&self, gre: &[u8], to: Ipv4Addr) -> io::Result<()> {
        let sa = sockaddr(to);
        // SAFETY: the buffer and sockaddr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                gre.as_ptr() as *const libc::c_void,
                gre.len(),
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

    /// Receives one IP packet (IP header included); `WouldBlock` on timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Whether an error from `recv` only means "nothing arrived yet".
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_wrap(gre: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 47, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(gre);
        p
    }

    #[test]
    fn roundtrip_with_seq_and_ack() {
        let g = build(&GreOut {
            version: 1,
            protocol: PROTO_PPP,
            call_id: 0x4242,
            seq: Some(7),
            ack: Some(9),
            payload: b"hello",
        });
        assert_eq!(&g[..8], &[0x30, 0x81, 0x88, 0x0B, 0, 5, 0x42, 0x42]);
        let r = parse_ip(&ip_wrap(&g)).unwrap();
        assert!(r.is_pptp());
        assert_eq!((r.call_id, r.seq, r.ack), (Some(0x4242), Some(7), Some(9)));
        assert_eq!(r.payload, "hello");
        assert_eq!((r.from.as_str(), r.to.as_str()), ("10.0.0.1", "10.0.0.2"));
    }

    #[test]
    fn truncated_input_never_panics() {
        let g = build(&GreOut {
            version: 1,
            protocol: PROTO_PPP,
            call_id: 1,
            seq: Some(1),
            ack: Some(1),
            payload: b"xyz",
        });
        let p = ip_wrap(&g);
        for n in 0..p.len() {
            let _ = parse_ip(&p[..n]);
        }
        let mut bad = p.clone();
        bad[0] = 0x4F; // IHL beyond the packet
        assert!(parse_ip(&bad).is_none());
    }
}

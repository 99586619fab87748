//! Reading the NAT of a control connection from conntrack (ctnetlink), to tell a hairpinned
//! connection (an inside client reaching an inside server through the router's public
//! address) from the others, and which two router addresses it uses.
//!
//! The forward hook shows a control connection between its two NATs: client and server, no
//! router address. Conntrack has the rest: the original tuple holds the address the client
//! dialed, the reply tuple the address the server answers. A connection seen as
//! `client:port <-> server:1723` is looked up by its original tuple with the server as
//! destination (found: no destination NAT, not hairpinned; the usual inside client costs this
//! one request), then with each of the router's own addresses as destination (a hairpin
//! dials one of them). One request each, by exact tuple, in conntrack's default zone.

use std::net::{Ipv4Addr, SocketAddrV4};

use nftnl_sys::libc;

use super::netlink::Netlink;
use super::NftError;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;
const NLMSG_HDR_LEN: usize = 16;
const NFGEN_HDR_LEN: usize = 4;

/// One direction's tuple of a TCP or UDP conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
}

/// What a conntrack entry says about its NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    /// The tuple of the packet that created the entry, before any NAT.
    pub orig: Tuple,
    /// The tuple replies carry, after NAT.
    pub reply: Tuple,
    /// Whether the kernel source-NATs the connection.
    pub snat: bool,
    /// Whether the kernel destination-NATs the connection.
    pub dnat: bool,
}

impl CtEntry {
    /// For a connection both source- and destination-NATed: (the address the client dialed,
    /// the address the server sees the client come from).
    pub fn hairpin(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        (self.snat && self.dnat).then_some((*self.orig.dst.ip(), *self.reply.dst.ip()))
    }
}

/// A ctnetlink socket.
pub struct Conntrack {
    nl: Netlink,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conntrack")
    }
}

impl Conntrack {
    /// Opens a netlink socket for conntrack requests.
    pub fn open() -> Result<Self, NftError> {
        Ok(Conntrack {
            nl: Netlink::open()?,
        })
    }

    /// The TCP entry whose original tuple is `src -> dst`, if conntrack has one.
    pub fn get_tcp(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Option<CtEntry>, NftError> {
        let what = format!("get conntrack entry tcp {src} -> {dst}");
        let mut found = None;
        let r = self.nl.request(
            &what,
            |buf, seq| {
                let req = get_request(seq, src, dst);
                buf[..req.len()].copy_from_slice(&req);
            },
            |msg| {
                if found.is_none() {
                    found = parse_entry(msg.raw);
                }
                Ok(())
            },
        );
        match r {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entry of a TCP control connection that the forward hook shows as `client <->
    /// server`: by its original tuple towards the server, else towards one of `locals` (the
    /// router's addresses, one of which a hairpinned client dialed, at the server's port).
    /// `None` when conntrack has neither.
    pub fn control_connection(
        &mut self,
        client: SocketAddrV4,
        server: SocketAddrV4,
        locals: &[Ipv4Addr],
    ) -> Result<Option<CtEntry>, NftError> {
        if let Some(e) = self.get_tcp(client, server)? {
            return Ok(Some(e));
        }
        for &l in locals {
            if let Some(e) = self.get_tcp(client, SocketAddrV4::new(l, server.port()))? {
                // The entry must be this connection: replies come from the server.
                if e.reply.src == server {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }
}

/// The router's own IPv4 addresses (getifaddrs), without duplicates.
pub fn local_addrs() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned; an AF_INET address is a
        // sockaddr_in.
        unsafe {
            let a = (*p).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*a.cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            p = (*p).ifa_next;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

fn put_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn nested(ty: u16, build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut inner = Vec::new();
    build(&mut inner);
    let mut out = Vec::new();
    put_attr(&mut out, ty | NLA_F_NESTED, &inner);
    out
}

/// An IPCTNL_MSG_CT_GET request for the TCP entry whose original tuple is `src -> dst`, with
/// an ack, so that "no such entry" comes back as ENOENT.
pub fn get_request(seq: u32, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let tuple = nested(CTA_TUPLE_ORIG, |t| {
        t.extend(nested(CTA_TUPLE_IP, |ip| {
            put_attr(ip, CTA_IP_V4_SRC, &src.ip().octets());
            put_attr(ip, CTA_IP_V4_DST, &dst.ip().octets());
        }));
        t.extend(nested(CTA_TUPLE_PROTO, |p| {
            put_attr(p, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
            put_attr(p, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
            put_attr(p, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        }));
    });
    let len = NLMSG_HDR_LEN + NFGEN_HDR_LEN + tuple.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(&tuple);
    m
}

/// The attributes in `buf`: (type without flags, payload). Stops at the first one whose
/// length does not fit.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, payload))
    })
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|&(t, _)| t == ty).map(|(_, p)| p)
}

fn addr(p: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn port(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

fn tuple(t: &[u8]) -> Option<Tuple> {
    let ip = find(t, CTA_TUPLE_IP)?;
    let proto = find(t, CTA_TUPLE_PROTO)?;
    let src = addr(find(ip, CTA_IP_V4_SRC)?)?;
    let dst = addr(find(ip, CTA_IP_V4_DST)?)?;
    let sport = port(find(proto, CTA_PROTO_SRC_PORT)?)?;
    let dport = port(find(proto, CTA_PROTO_DST_PORT)?)?;
    Some(Tuple {
        src: SocketAddrV4::new(src, sport),
        dst: SocketAddrV4::new(dst, dport),
    })
}

/// The entry in one IPCTNL_MSG_CT_NEW message (header included), or `None` if the message
/// is of another kind or lacks a tuple or the status of an IPv4 TCP/UDP entry.
pub fn parse_entry(raw: &[u8]) -> Option<CtEntry> {
    let ty = u16::from_ne_bytes(raw.get(4..6)?.try_into().ok()?);
    if ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return None;
    }
    let len = (u32::from_ne_bytes(raw.get(..4)?.try_into().ok()?) as usize).min(raw.len());
    let body = raw.get(NLMSG_HDR_LEN + NFGEN_HDR_LEN..len)?;
    let status = u32::from_be_bytes(find(body, CTA_STATUS)?.get(..4)?.try_into().ok()?);
    Some(CtEntry {
        orig: tuple(find(body, CTA_TUPLE_ORIG)?)?,
        reply: tuple(find(body, CTA_TUPLE_REPLY)?)?,
        snat: status & IPS_SRC_NAT != 0,
        dnat: status & IPS_DST_NAT != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// A reply as the kernel builds it: the request's tuple layout, twice, then the status.
    fn reply(orig: Tuple, reply: Tuple, status: u32) -> Vec<u8> {
        let t = |ty: u16, t: Tuple| {
            let mut req = get_request(0, t.src, t.dst);
            let attrs = req.split_off(NLMSG_HDR_LEN + NFGEN_HDR_LEN);
            let mut a = attrs;
            a[2..4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
            a
        };
        let mut body = t(CTA_TUPLE_ORIG, orig);
        body.extend(t(CTA_TUPLE_REPLY, reply));
        put_attr(&mut body, CTA_STATUS, &status.to_be_bytes());
        let len = NLMSG_HDR_LEN + NFGEN_HDR_LEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        m.extend(body);
        m
    }

    #[test]
    fn request_layout() {
        let r = get_request(7, sa("10.0.0.2:40000"), sa("192.0.2.1:1723"));
        assert_eq!(r.len(), 16 + 4 + 4 + (4 + 8 + 8) + (4 + 8 + 8 + 8));
        assert_eq!(
            u32::from_ne_bytes(r[..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0101);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..20], &[libc::AF_INET as u8, 0, 0, 0]);
        // The addresses and ports, in network order, where the kernel reads them.
        assert!(r.windows(4).any(|w| w == [10, 0, 0, 2]));
        assert!(r.windows(4).any(|w| w == [192, 0, 2, 1]));
        assert!(r.windows(2).any(|w| w == 1723u16.to_be_bytes()));
    }

    #[test]
    fn hairpin_entry() {
        let orig = Tuple {
            src: sa("10.0.0.2:40000"),
            dst: sa("192.0.2.1:1723"),
        };
        let rep = Tuple {
            src: sa("10.0.0.10:1723"),
            dst: sa("10.0.0.1:40000"),
        };
        let e = parse_entry(&reply(orig, rep, IPS_SRC_NAT | IPS_DST_NAT | 0xe)).unwrap();
        assert_eq!((e.orig, e.reply, e.snat, e.dnat), (orig, rep, true, true));
        assert_eq!(
            e.hairpin(),
            Some(("192.0.2.1".parse().unwrap(), "10.0.0.1".parse().unwrap()))
        );
        let plain = parse_entry(&reply(orig, rep, IPS_SRC_NAT)).unwrap();
        assert_eq!(plain.hairpin(), None);
        let fwd = parse_entry(&reply(orig, rep, IPS_DST_NAT)).unwrap();
        assert_eq!(fwd.hairpin(), None);
    }

    #[test]
    fn malformed_replies_are_none_never_a_panic() {
        let orig = Tuple {
            src: sa("10.0.0.2:40000"),
            dst: sa("192.0.2.1:1723"),
        };
        let good = reply(orig, orig, IPS_SRC_NAT);
        assert!(parse_entry(&good).is_some());
        for cut in 0..good.len() {
            let mut m = good[..cut].to_vec();
            // Also with the header's length still claiming the whole message.
            let _ = parse_entry(&m);
            if m.len() >= 4 {
                m[..4].copy_from_slice(&(good.len() as u32).to_ne_bytes());
                let _ = parse_entry(&m);
            }
        }
        for i in 0..good.len() {
            let mut m = good.clone();
            m[i] ^= 0xff;
            let _ = parse_entry(&m);
        }
        let mut other = good.clone();
        other[4] = 2; // another message type
        assert_eq!(parse_entry(&other), None);
    }
}

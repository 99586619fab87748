//! rtnetlink for the router's IPv4 addresses: the `RTM_GETADDR` dump, the `RTM_NEWADDR` /
//! `RTM_DELADDR` notifications of group `RTMGRP_IPV4_IFADDR`, and their decoding into
//! [`RtMsg`] (netlink-packet-route). What the addresses are for is not decided here.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::Bus;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NlaBuffer, Parseable, NLA_HEADER_SIZE, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{messages, Msg, NlSocket, RecvError};

/// Receive buffer: larger than any one netlink message (a dump part is at most a few pages).
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue for notifications, so that a burst of changes (an interface with
/// many addresses going away) is not lost.
const QUEUE_BYTES: i32 = 1 << 20;
/// Length of `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;

/// One IPv4 address of one interface, as rtnetlink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    /// The interface.
    pub ifindex: u32,
    /// The local address (`IFA_LOCAL`, or `IFA_ADDRESS` where there is no `IFA_LOCAL`).
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefixlen: u8,
}

/// What one rtnetlink message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtMsg {
    /// `RTM_NEWADDR`: an IPv4 address exists (dump) or was added or changed (notification).
    New(IfAddr),
    /// `RTM_DELADDR`: an IPv4 address was removed.
    Del(IfAddr),
    /// End of a dump.
    Done,
    /// `NLMSG_ERROR`: the negative of the errno, 0 for an acknowledgement.
    Error(i32),
    /// Something else: another address family, another message type.
    Other,
    /// An address message that cannot be read (too short, no IPv4 address), or broken
    /// framing (then the last message of the buffer).
    Malformed(&'static str),
}

/// One decoded message with the header fields that tell a dump part from a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `nlmsg_type`
    pub ty: u16,
    /// `nlmsg_flags`
    pub flags: u16,
    /// `nlmsg_seq`
    pub seq: u32,
    /// `nlmsg_pid`
    pub pid: u32,
    /// The content.
    pub msg: RtMsg,
}

/// Splits a buffer received from a route socket into messages and decodes the address
/// messages among them. Never panics, whatever the bytes. A message whose length field is
/// impossible ends the buffer with [`RtMsg::Malformed`] (header fields 0: nothing in it can be
/// trusted).
pub fn parse(buf: &[u8]) -> Vec<Parsed> {
    messages(buf)
        .map(|m| match m {
            Ok(m) => Parsed {
                ty: m.ty,
                flags: m.flags,
                seq: m.seq,
                pid: m.pid,
                msg: decode(&m),
            },
            Err(_) => Parsed {
                ty: 0,
                flags: 0,
                seq: 0,
                pid: 0,
                msg: RtMsg::Malformed("netlink message length out of range"),
            },
        })
        .collect()
}

fn decode(m: &Msg<'_>) -> RtMsg {
    match m.ty {
        NLMSG_DONE => RtMsg::Done,
        NLMSG_ERROR => match m.error() {
            Ok(e) => RtMsg::Error(e.code),
            Err(_) => RtMsg::Malformed("short NLMSG_ERROR"),
        },
        libc::RTM_NEWADDR | libc::RTM_DELADDR => match parse_ifaddr(m.payload()) {
            Ok(Some(a)) if m.ty == libc::RTM_NEWADDR => RtMsg::New(a),
            Ok(Some(a)) => RtMsg::Del(a),
            Ok(None) => RtMsg::Other,
            Err(why) => RtMsg::Malformed(why),
        },
        _ => RtMsg::Other,
    }
}

/// Reads an `ifaddrmsg` and its address attributes: `Ok(None)` for another family than IPv4,
/// whatever its attributes hold. Attributes other than `IFA_LOCAL` and `IFA_ADDRESS` are
/// skipped unread, as the old kernels' and the new ones' extra attributes must be.
fn parse_ifaddr(p: &[u8]) -> Result<Option<IfAddr>, &'static str> {
    let header = AddressHeader::parse(p).map_err(|_| "short ifaddrmsg")?;
    if header.family != AddressFamily::Inet {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    // AddressHeader::parse checked that the 8-byte header is there.
    let mut attrs = &p[IFADDRMSG_LEN..];
    while attrs.len() >= NLA_HEADER_SIZE {
        let nla = NlaBuffer::new_checked(attrs).map_err(|_| "attribute length out of range")?;
        match nla.kind() {
            libc::IFA_LOCAL => local = Some(ipv4(&nla).ok_or("IFA_LOCAL is not 4 bytes")?),
            libc::IFA_ADDRESS => {
                address = Some(ipv4(&nla).ok_or("IFA_ADDRESS is not 4 bytes")?);
            }
            _ => {}
        }
        let len = usize::from(nla.length());
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    let addr = local.or(address).ok_or("no IFA_LOCAL or IFA_ADDRESS")?;
    Ok(Some(IfAddr {
        ifindex: header.index,
        addr,
        prefixlen: header.prefix_len,
    }))
}

/// The IPv4 address of an `IFA_LOCAL` or `IFA_ADDRESS` attribute.
fn ipv4(nla: &NlaBuffer<&[u8]>) -> Option<Ipv4Addr> {
    match AddressAttribute::parse(nla) {
        Ok(AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a))) => {
            Some(a)
        }
        _ => None,
    }
}

/// The `RTM_GETADDR` dump request for every IPv4 address.
fn dump_request(seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let mut req = NetlinkMessage::new(header, RouteNetlinkMessage::GetAddress(msg).into());
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    buf
}

/// What a receive brought.
#[derive(Debug)]
pub enum Received {
    /// Messages (possibly none: nothing was waiting).
    Msgs(Vec<Parsed>),
    /// The kernel dropped notifications (`ENOBUFS`), or one did not fit the buffer.
    Lost,
}

/// A route netlink socket subscribed to IPv4 address changes.
pub struct RouteSocket {
    sock: NlSocket,
    seq: u32,
}

impl RouteSocket {
    /// Opens the socket, joined to `RTMGRP_IPV4_IFADDR`, with a large receive queue.
    pub fn open() -> io::Result<Self> {
        let sock = NlSocket::open(Bus::Route, libc::RTMGRP_IPV4_IFADDR as u32, RECV_BUF)?;
        // A smaller queue only makes a lost burst (and a full dump after it) likelier.
        let _ = sock.set_queue_size(QUEUE_BYTES);
        Ok(RouteSocket { sock, seq: 0 })
    }

    /// Every IPv4 address now as `New` messages, then the notifications that arrived
    /// meanwhile (in order: they are newer than or as new as the dump and must be applied
    /// after it). Gives up after `timeout` without a complete answer.
    pub fn dump(&mut self, timeout: Duration) -> io::Result<Vec<RtMsg>> {
        let mut events = Vec::new();
        // A dump interrupted by changes (NLM_F_DUMP_INTR) or notifications lost meanwhile
        // make it start again; changes do not come that fast for long.
        for _ in 0..5 {
            let mut dumped = Vec::new();
            let mut again = false;
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            self.sock.send(&dump_request(seq))?;
            let deadline = Instant::now() + timeout;
            'parts: loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete answer to the address dump",
                    ));
                }
                if !self.sock.wait(left)? {
                    continue;
                }
                let msgs = match self.recv()? {
                    Received::Msgs(m) => m,
                    Received::Lost => {
                        again = true;
                        continue;
                    }
                };
                for p in msgs {
                    let ours = p.pid == self.sock.portid() && p.seq == seq;
                    if !ours {
                        if matches!(p.msg, RtMsg::New(_) | RtMsg::Del(_)) {
                            events.push(p.msg);
                        }
                        continue;
                    }
                    if p.flags & NLM_F_DUMP_INTR != 0 {
                        again = true;
                    }
                    match p.msg {
                        RtMsg::Done => break 'parts,
                        RtMsg::Error(0) => {}
                        RtMsg::Error(e) => return Err(io::Error::from_raw_os_error(-e)),
                        m @ (RtMsg::New(_) | RtMsg::Del(_)) => dumped.push(m),
                        _ => {}
                    }
                }
            }
            if !again {
                dumped.append(&mut events);
                return Ok(dumped);
            }
            // The events so far are older than the next dump: applying them after it is
            // still right (each address ends in the state of its last notification).
        }
        Err(io::Error::other(
            "the address dump kept being interrupted by changes",
        ))
    }

    /// One non-blocking receive.
    pub fn recv(&mut self) -> io::Result<Received> {
        match self.sock.recv() {
            Ok(None) => Ok(Received::Msgs(Vec::new())),
            Ok(Some(bytes)) => Ok(Received::Msgs(parse(bytes))),
            Err(RecvError::Overrun | RecvError::Truncated(_)) => Ok(Received::Lost),
            Err(RecvError::Io(e)) => Err(e),
        }
    }
}

impl AsFd for RouteSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NLMSG_HDRLEN;

    const RTA_HDRLEN: usize = 4;

    /// An `RTM_NEWADDR`/`RTM_DELADDR` message as the kernel writes it.
    fn addr_msg(ty: u16, family: u8, prefix: u8, ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![family, prefix, 0x80, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        for (t, data) in attrs {
            let len = (RTA_HDRLEN + data.len()) as u16;
            p.extend_from_slice(&len.to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(data);
            while p.len() % 4 != 0 {
                p.push(0);
            }
        }
        nl_msg(ty, 0, 7, 0, &p)
    }

    fn nl_msg(ty: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    const AF_INET: u8 = libc::AF_INET as u8;

    fn ifa(ifindex: u32, addr: [u8; 4], prefixlen: u8) -> IfAddr {
        IfAddr {
            ifindex,
            addr: addr.into(),
            prefixlen,
        }
    }

    #[test]
    fn the_dump_request_on_the_wire() {
        // nlmsghdr: length 24, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, pid 0 (to the
        // kernel); ifaddrmsg: AF_INET, the rest 0 (every address of every interface).
        let mut want = nl_msg(
            libc::RTM_GETADDR,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            0x0102_0304,
            0,
            &[AF_INET, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(dump_request(0x0102_0304), want);
        want[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(dump_request(1), want);
    }

    #[test]
    fn local_wins_over_address() {
        // A point-to-point address: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        let m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            32,
            5,
            &[
                (libc::IFA_ADDRESS, &[10, 0, 0, 2]),
                (libc::IFA_LABEL, b"ppp0\0"),
                (libc::IFA_LOCAL, &[10, 0, 0, 1]),
            ],
        );
        let p = parse(&m);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].msg, RtMsg::New(ifa(5, [10, 0, 0, 1], 32)));
        assert_eq!((p[0].ty, p[0].seq), (libc::RTM_NEWADDR, 7));
    }

    #[test]
    fn address_when_no_local() {
        let m = addr_msg(
            libc::RTM_DELADDR,
            AF_INET,
            24,
            2,
            &[(libc::IFA_ADDRESS, &[192, 0, 2, 1])],
        );
        assert_eq!(parse(&m)[0].msg, RtMsg::Del(ifa(2, [192, 0, 2, 1], 24)));
    }

    #[test]
    fn several_messages_other_families_done_and_errors() {
        let mut buf = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            8,
            1,
            &[
                (libc::IFA_ADDRESS, &[127, 0, 0, 1]),
                (libc::IFA_LOCAL, &[127, 0, 0, 1]),
            ],
        );
        // IPv6: ignored, whatever its attributes hold.
        buf.extend(addr_msg(
            libc::RTM_NEWADDR,
            libc::AF_INET6 as u8,
            64,
            1,
            &[(libc::IFA_ADDRESS, &[0xfe; 16]), (libc::IFA_LOCAL, &[1])],
        ));
        buf.extend(nl_msg(libc::RTM_NEWLINK, 0, 0, 0, &[0; 16]));
        buf.extend(nl_msg(
            libc::NLMSG_DONE as u16,
            2,
            7,
            0,
            &0u32.to_ne_bytes(),
        ));
        buf.extend(nl_msg(
            libc::NLMSG_ERROR as u16,
            0,
            8,
            0,
            &(-libc::EPERM).to_ne_bytes(),
        ));
        let msgs: Vec<RtMsg> = parse(&buf).into_iter().map(|p| p.msg).collect();
        assert_eq!(
            msgs,
            [
                RtMsg::New(ifa(1, [127, 0, 0, 1], 8)),
                RtMsg::Other,
                RtMsg::Other,
                RtMsg::Done,
                RtMsg::Error(-libc::EPERM),
            ]
        );
    }

    #[test]
    fn unknown_and_odd_attributes_are_skipped() {
        // IFA_CACHEINFO of a wrong size, IFA_FLAGS too long, a nested flag on IFA_LOCAL's
        // type (masked off, as the kernel does), and 3 bytes of trailing padding.
        let mut m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[
                (libc::IFA_CACHEINFO, &[1, 2, 3]),
                (libc::IFA_FLAGS, &[0; 12]),
                (libc::IFA_LOCAL | 0x8000, &[10, 1, 2, 3]),
                (99, &[]),
            ],
        );
        m.extend([0, 0, 0]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&m)[0].msg, RtMsg::New(ifa(3, [10, 1, 2, 3], 24)));
    }

    #[test]
    fn malformed_input_never_panics() {
        let good = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[(libc::IFA_LOCAL, &[10, 1, 2, 3])],
        );
        // Every truncation and every single-byte corruption of a valid message.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for v in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut m = good.clone();
                m[n] = v;
                let _ = parse(&m);
            }
        }
        assert!(parse(&good[..NLMSG_HDRLEN - 1]).is_empty());

        // Message length beyond the buffer: reported, and the end of the buffer.
        let mut m = good.clone();
        m[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let p = parse(&m);
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0].msg, RtMsg::Malformed(_)));
        // Length below the header: the same.
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));

        // An attribute longer than its message.
        let mut m = good.clone();
        let at = NLMSG_HDRLEN + IFADDRMSG_LEN;
        m[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        // An attribute shorter than its header.
        m[at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));

        // An address of the wrong size (an IPv6 one too), no address, a truncated ifaddrmsg.
        for bad in [&[1, 2, 3][..], &[0xfe; 16]] {
            for ty in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
                let m = addr_msg(libc::RTM_NEWADDR, AF_INET, 24, 3, &[(ty, bad)]);
                assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
            }
        }
        let m = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[(libc::IFA_LABEL, b"x\0")],
        );
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        let m = nl_msg(libc::RTM_DELADDR, 0, 0, 0, &[AF_INET, 24, 0]);
        assert!(matches!(parse(&m)[0].msg, RtMsg::Malformed(_)));
        let m = nl_msg(libc::NLMSG_ERROR as u16, 0, 0, 0, &[0, 0]);
        assert_eq!(parse(&m)[0].msg, RtMsg::Malformed("short NLMSG_ERROR"));

        // A malformed message in the middle does not hide the next one.
        let mut buf = nl_msg(libc::RTM_NEWADDR, 0, 0, 0, &[AF_INET]);
        buf.extend([0, 0, 0]);
        buf.extend(&good);
        let p = parse(&buf);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].msg, RtMsg::New(ifa(3, [10, 1, 2, 3], 24)));
    }

    #[test]
    fn unaligned_message_lengths_are_padded() {
        // An attribute whose length is not a multiple of 4, last in its message, and a
        // message length that is not either: the next message starts at the aligned offset.
        let mut first = addr_msg(
            libc::RTM_NEWADDR,
            AF_INET,
            24,
            3,
            &[
                (libc::IFA_LOCAL, &[10, 1, 2, 3]),
                (libc::IFA_LABEL, b"ab\0"),
            ],
        );
        first.truncate(first.len() - 1);
        let len = first.len() as u32;
        first[0..4].copy_from_slice(&len.to_ne_bytes());
        first.push(0);
        first.extend(addr_msg(
            libc::RTM_DELADDR,
            AF_INET,
            24,
            4,
            &[(libc::IFA_LOCAL, &[10, 9, 9, 9])],
        ));
        let msgs: Vec<RtMsg> = parse(&first).into_iter().map(|p| p.msg).collect();
        assert_eq!(
            msgs,
            [
                RtMsg::New(ifa(3, [10, 1, 2, 3], 24)),
                RtMsg::Del(ifa(4, [10, 9, 9, 9], 24))
            ]
        );
    }
}

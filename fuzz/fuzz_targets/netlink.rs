//! The netlink reply parsers: the one message splitter and NLMSG_ERROR
//! reader (src/netlink), the rtnetlink address decoder
//! (src/netlink/route.rs) and the address policy fed from it
//! (src/daemon/addrs.rs), and nf_tables replies (src/nft: errors on
//! arbitrary bytes; tables, set elements with keys and counters, and ct
//! helper objects through libnftnl on messages whose attributes are well
//! formed, as the kernel sends them: libnftnl exits the process on an
//! attribute of the wrong size, by design). No panic, the splitter stays
//! inside the buffer, and what the address decoder reports is consistent
//! with the bytes and with the splitter.
//!
//! The first byte chooses: even, the rest is one receive buffer as it is;
//! odd, the rest describes nf_tables messages that are built with correct
//! attribute framing (see `build`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::daemon::addrs::AddrTable;
use pptp_alg::netlink::route::{parse, RtMsg};
use pptp_alg::netlink::{messages, FrameError, NLMSG_HDRLEN};

/// Reads the description front to back; zeros when exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    /// A NUL-terminated name, as the kernel always sends names.
    fn name(&mut self) -> Vec<u8> {
        let n = usize::from(self.u8() % 24);
        let mut s: Vec<u8> = self.take(n).into_iter().filter(|&b| b != 0).collect();
        s.push(0);
        s
    }
}

fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

const NESTED: u16 = 0x8000;

/// Up to four nf_tables messages (a table, set elements, an object, an
/// error or the end of a dump), each attribute chosen or not by the
/// description and sized as its type requires.
fn build(r: &mut Bytes) -> Vec<u8> {
    let mut buf = Vec::new();
    for _ in 0..1 + r.u8() % 4 {
        let kind = r.u8() % 4;
        let mut p = vec![2, 0, 0, 0]; // nfgenmsg: AF_INET
        let ty: u16 = match kind {
            0 => {
                // NFTA_TABLE_NAME 1, FLAGS 2, USE 3, HANDLE 4, USERDATA 6, OWNER 7
                let sel = r.u8();
                if sel & 1 != 0 {
                    let n = r.name();
                    attr(&mut p, 1, &n);
                }
                if sel & 2 != 0 {
                    let v = r.take(4);
                    attr(&mut p, 2, &[v, vec![0; 4]].concat()[..4]);
                }
                if sel & 4 != 0 {
                    attr(&mut p, 3, &[0, 0, 0, 1]);
                }
                if sel & 8 != 0 {
                    attr(&mut p, 4, &7u64.to_be_bytes());
                }
                if sel & 16 != 0 {
                    let n = usize::from(r.u8() % 16);
                    let u = r.take(n);
                    attr(&mut p, 6, &u);
                }
                if sel & 32 != 0 {
                    let v = r.take(4);
                    attr(&mut p, 7, &[v, vec![0; 4]].concat()[..4]);
                }
                0x0a00
            }
            1 => {
                // NFTA_SET_ELEM_LIST_TABLE 1, _SET 2, _ELEMENTS 3 of
                // NFTA_LIST_ELEM 1: KEY 1 (NFTA_DATA_VALUE 1), FLAGS 3,
                // EXPR 7 (NFTA_EXPR_NAME 1, NFTA_EXPR_DATA 2: counter
                // BYTES 1, PACKETS 2).
                let (t, s) = (r.name(), r.name());
                attr(&mut p, 1, &t);
                attr(&mut p, 2, &s);
                let mut list = Vec::new();
                for _ in 0..r.u8() % 4 {
                    let sel = r.u8();
                    let mut e = Vec::new();
                    if sel & 1 != 0 {
                        let n = usize::from(r.u8() % 17);
                        let k = r.take(n);
                        let mut v = Vec::new();
                        attr(&mut v, 1, &k);
                        attr(&mut e, 1 | NESTED, &v);
                    }
                    if sel & 2 != 0 {
                        attr(&mut e, 3, &[0, 0, 0, sel >> 4]);
                    }
                    if sel & 4 != 0 {
                        let mut data = Vec::new();
                        attr(&mut data, 1, &u64::from(r.u8()).to_be_bytes());
                        attr(&mut data, 2, &u64::from(r.u8()).to_be_bytes());
                        let mut x = Vec::new();
                        let name: &[u8] = if sel & 8 != 0 {
                            b"counter\0"
                        } else {
                            b"limit\0"
                        };
                        attr(&mut x, 1, name);
                        if sel & 8 != 0 {
                            attr(&mut x, 2 | NESTED, &data);
                        }
                        attr(&mut e, 7 | NESTED, &x);
                    }
                    attr(&mut list, 1 | NESTED, &e);
                }
                attr(&mut p, 3 | NESTED, &list);
                0x0a0c
            }
            2 => {
                // NFTA_OBJ_TABLE 1, NAME 2, TYPE 3, DATA 4 (ct helper:
                // NAME 1, L3PROTO 2 (u16), L4PROTO 3 (u8)).
                let (t, n) = (r.name(), r.name());
                attr(&mut p, 1, &t);
                attr(&mut p, 2, &n);
                let sel = r.u8();
                let obj_type: u32 = [3, 3, 1, 99][usize::from(sel % 4)];
                attr(&mut p, 3, &obj_type.to_be_bytes());
                if obj_type == 3 && sel & 4 != 0 {
                    let mut d = Vec::new();
                    // The kernel's helper names hold at most 15 bytes
                    // with the NUL (libnftnl checks that too).
                    let h = if sel & 8 != 0 {
                        b"pptp\0".to_vec()
                    } else {
                        let mut h = r.name();
                        h.pop();
                        h.truncate(14);
                        h.push(0);
                        h
                    };
                    attr(&mut d, 1, &h);
                    attr(&mut d, 2, &2u16.to_be_bytes());
                    attr(&mut d, 3, &[6]);
                    attr(&mut p, 4 | NESTED, &d);
                }
                0x0a12
            }
            _ => {
                // NLMSG_ERROR with an errno and the request's header, or
                // NLMSG_DONE.
                if r.u8() & 1 == 0 {
                    p = (-i32::from(r.u8())).to_ne_bytes().to_vec();
                    p.extend_from_slice(&r.take(16));
                    p.resize(20, 0);
                    2
                } else {
                    p = vec![0; 4];
                    3
                }
            }
        };
        let start = buf.len();
        buf.extend_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&p);
        debug_assert_eq!(buf.len() - start, 16 + p.len());
    }
    buf
}

/// The daemon receives into u64 storage: keep netlink headers aligned as
/// they are there (libnftnl reads them through struct pointers).
fn aligned(data: &[u8]) -> Vec<u64> {
    let mut buf = vec![0u64; data.len().div_ceil(8)];
    for (i, b) in data.iter().enumerate() {
        buf[i / 8] |= u64::from(*b) << (8 * (i % 8)) as u64;
    }
    buf
}

fn view(buf: &[u64], len: usize) -> &[u8] {
    // SAFETY: `buf` holds at least `len` bytes (see `aligned`).
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let built = build(&mut Bytes(rest));
        let store = aligned(&built);
        let _ = pptp_alg::nft::fuzzing::parse_replies(view(&store, built.len()), true);
        return;
    }
    let store = aligned(rest);
    let bytes = view(&store, rest.len());

    // The splitter: messages lie in the buffer one after the other at
    // 4-byte aligned offsets, each at least a header long and as long as
    // its length field; a framing error only as the last item.
    let split: Vec<_> = messages(bytes).collect();
    assert!(split.len() <= bytes.len() / NLMSG_HDRLEN);
    let mut at = 0usize;
    for (i, m) in split.iter().enumerate() {
        match m {
            Ok(m) => {
                let start = m.raw.as_ptr() as usize - bytes.as_ptr() as usize;
                assert_eq!(start, at, "message not where the last one ended");
                assert!(m.raw.len() >= NLMSG_HDRLEN && start + m.raw.len() <= bytes.len());
                let len = u32::from_ne_bytes(m.raw[..4].try_into().unwrap()) as usize;
                assert_eq!(len, m.raw.len());
                at = (start + len).next_multiple_of(4);
                if let Ok(e) = m.error() {
                    assert!(m.payload().len() >= 4);
                    assert_eq!(
                        e.request_seq.is_some(),
                        m.payload().len() >= 4 + NLMSG_HDRLEN
                    );
                }
            }
            Err(FrameError::Length { len, left }) => {
                assert_eq!(i, split.len() - 1, "framing error not last");
                assert_eq!(*left, bytes.len() - at);
                assert!(*len < NLMSG_HDRLEN || len > left);
            }
            Err(e) => panic!("the splitter reported {e}"),
        }
    }

    // The address decoder: one result per message, a framing error where
    // the splitter has one, and the header fields the splitter read.
    let msgs = parse(bytes);
    assert_eq!(msgs.len(), split.len());
    let mut table = AddrTable::default();
    for (p, m) in msgs.iter().zip(&split) {
        match m {
            Ok(m) => {
                assert_eq!((p.ty, p.flags, p.seq, p.pid), (m.ty, m.flags, m.seq, m.pid));
                if matches!(p.msg, RtMsg::New(_) | RtMsg::Del(_)) {
                    assert!(m.ty == 20 || m.ty == 21, "address from type {}", m.ty);
                }
            }
            Err(_) => assert_eq!(
                p.msg,
                RtMsg::Malformed("netlink message length out of range")
            ),
        }
        table.apply(&p.msg);
    }
    let _ = table.addrs();
    let _ = pptp_alg::nft::fuzzing::parse_replies(bytes, false);
});

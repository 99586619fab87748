//! nf_tables expressions built directly over libnftnl.
//!
//! The `nftnl` crate only knows a handful of expressions, always loads into register 1 and has no
//! payload write, map lookup, fib, queue or xt target. Rather than mixing its types with our own,
//! every expression here is one generic [`Expr`]: a libnftnl expression name plus attributes.
//! The constructors mirror what `nft` 1.0.6 itself emits (checked with `nft --debug=netlink`), so
//! that `nft list` shows our rules exactly like the ones in `nft/pptp-alg.nft`.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::Rule;
use nftnl_sys::{self as sys, libc};

/// 128-bit register 1; 32-bit registers 8..=11 alias it.
pub const REG_1: u32 = libc::NFT_REG_1 as u32;
/// The 32-bit register right after the first 32 bits of [`REG_1`]: a concatenation's second
/// field goes here.
pub const REG32_01: u32 = libc::NFT_REG32_01 as u32;
/// The 32-bit register after [`REG32_01`]: a concatenation's third field goes here.
pub const REG32_02: u32 = libc::NFT_REG32_02 as u32;

/// `fib` flag: look up the destination address.
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// `fib` result: the address type (RTN_*).
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `payload` write checksum flag: the field is part of the L4 pseudo header.
pub const NFT_PAYLOAD_L4CSUM_PSEUDOHDR: u32 = 1;
/// `bitwise` operation: mask-and-xor.
const NFT_BITWISE_BOOL: u32 = 0;

/// Where a payload offset is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The IPv4 header.
    Network,
    /// The header after IPv4 (GRE, TCP).
    Transport,
}

impl Base {
    fn raw(self) -> u32 {
        match self {
            Base::Network => libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            Base::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    U16(u16),
    U32(u32),
    Str(CString),
    Data(Vec<u8>),
    /// Data that libnftnl keeps by pointer and frees itself (xt target info): must come from
    /// malloc, not from a Rust allocation.
    Handover(Vec<u8>),
}

/// One nf_tables expression: a libnftnl expression type name and its attributes.
#[derive(Debug, Clone)]
pub struct Expr {
    name: &'static CStr,
    attrs: Vec<(u32, Value)>,
}

impl Expr {
    fn new(name: &'static CStr) -> Self {
        Expr {
            name,
            attrs: Vec::new(),
        }
    }

    fn u32(mut self, attr: u32, v: u32) -> Self {
        self.attrs.push((attr, Value::U32(v)));
        self
    }

    fn u16(mut self, attr: u32, v: u16) -> Self {
        self.attrs.push((attr, Value::U16(v)));
        self
    }

    fn data(mut self, attr: u32, v: &[u8]) -> Self {
        self.attrs.push((attr, Value::Data(v.to_vec())));
        self
    }

    fn handover(mut self, attr: u32, v: &[u8]) -> Self {
        self.attrs.push((attr, Value::Handover(v.to_vec())));
        self
    }

    fn str(mut self, attr: u32, v: &CStr) -> Self {
        self.attrs.push((attr, Value::Str(v.to_owned())));
        self
    }

    /// Allocates the libnftnl object; the caller owns it (a rule, set or element takes it over).
    pub fn build(&self) -> NonNull<sys::nftnl_expr> {
        // SAFETY: `name` is a NUL-terminated string; every pointer handed to libnftnl stays alive
        // for the duration of the call and libnftnl copies the data.
        unsafe {
            let Some(e) = NonNull::new(sys::nftnl_expr_alloc(self.name.as_ptr())) else {
                // Same policy as std and the nftnl crate: out of memory aborts.
                std::process::abort();
            };
            for (attr, value) in &self.attrs {
                let attr = *attr as u16;
                match value {
                    Value::U16(v) => sys::nftnl_expr_set_u16(e.as_ptr(), attr, *v),
                    Value::U32(v) => sys::nftnl_expr_set_u32(e.as_ptr(), attr, *v),
                    Value::Str(v) => {
                        sys::nftnl_expr_set_str(e.as_ptr(), attr, v.as_ptr());
                    }
                    Value::Data(v) => {
                        sys::nftnl_expr_set(
                            e.as_ptr(),
                            attr,
                            v.as_ptr().cast::<c_void>(),
                            v.len() as u32,
                        );
                    }
                    Value::Handover(v) => {
                        let p = libc::malloc(v.len());
                        if p.is_null() {
                            std::process::abort();
                        }
                        std::ptr::copy_nonoverlapping(v.as_ptr(), p.cast::<u8>(), v.len());
                        sys::nftnl_expr_set(e.as_ptr(), attr, p, v.len() as u32);
                    }
                }
            }
            e
        }
    }
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        self.build()
    }
}

/// `[ payload load <len>b @ <base> + <offset> => reg <dreg> ]`
pub fn payload_load(base: Base, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base.raw())
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

/// How a payload write keeps checksums right.
#[derive(Debug, Clone, Copy)]
pub enum Csum {
    /// The written field is not covered by any checksum (GRE without the C bit).
    None,
    /// Update the internet checksum at `offset` of the same header, and the L4 checksum too if
    /// `pseudo_header` (an IPv4 address is part of the TCP/UDP pseudo header).
    Inet { offset: u32, pseudo_header: bool },
}

/// `[ payload write reg <sreg> => <len>b @ <base> + <offset> csum_type .. ]`
pub fn payload_write(base: Base, offset: u32, len: u32, sreg: u32, csum: Csum) -> Expr {
    let (ty, off, flags) = match csum {
        Csum::None => (libc::NFT_PAYLOAD_CSUM_NONE as u32, 0, 0),
        Csum::Inet {
            offset,
            pseudo_header,
        } => (
            libc::NFT_PAYLOAD_CSUM_INET as u32,
            offset,
            if pseudo_header {
                NFT_PAYLOAD_L4CSUM_PSEUDOHDR
            } else {
                0
            },
        ),
    };
    Expr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_SREG, sreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base.raw())
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
        .u32(sys::NFTNL_EXPR_PAYLOAD_CSUM_TYPE, ty)
        .u32(sys::NFTNL_EXPR_PAYLOAD_CSUM_OFFSET, off)
        .u32(sys::NFTNL_EXPR_PAYLOAD_FLAGS, flags)
}

/// Comparison operator of [`cmp`].
#[derive(Debug, Clone, Copy)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
}

/// `[ cmp eq|neq reg 1 <data> ]`; `data` is in packet (network) byte order.
pub fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    let op = match op {
        CmpOp::Eq => libc::NFT_CMP_EQ,
        CmpOp::Neq => libc::NFT_CMP_NEQ,
    } as u32;
    Expr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_CMP_OP, op)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

/// `[ bitwise reg 1 = ( reg 1 & <mask> ) ^ 0 ]`
pub fn and_mask(mask: &[u8]) -> Expr {
    mask_xor(mask, &vec![0; mask.len()])
}

/// `[ bitwise reg 1 = ( reg 1 & <mask> ) ^ <xor> ]`
pub fn mask_xor(mask: &[u8], xor: &[u8]) -> Expr {
    Expr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_OP, NFT_BITWISE_BOOL)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .data(sys::NFTNL_EXPR_BITWISE_XOR, xor)
}

/// `[ meta load <key> => reg 1 ]`
pub fn meta_load(key: i32) -> Expr {
    Expr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_META_KEY, key as u32)
}

/// `[ meta set <key> with reg 1 ]`
pub fn meta_set(key: i32) -> Expr {
    Expr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_META_KEY, key as u32)
}

/// `[ ct load <key> => reg 1 ]`
pub fn ct_load(key: i32) -> Expr {
    Expr::new(c"ct")
        .u32(sys::NFTNL_EXPR_CT_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_CT_KEY, key as u32)
}

/// `[ fib daddr type => reg 1 ]`
pub fn fib_daddr_type() -> Expr {
    Expr::new(c"fib")
        .u32(sys::NFTNL_EXPR_FIB_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
        .u32(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR)
}

/// `[ lookup reg 1 set <name> dreg 1 ]`: a map lookup whose value lands in register 1.
///
/// The set id lets the kernel resolve a set created earlier in the same batch.
pub fn map_lookup(set: &CStr, set_id: u32) -> Expr {
    Expr::new(c"lookup")
        .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_LOOKUP_DREG, REG_1)
        .str(sys::NFTNL_EXPR_LOOKUP_SET, set)
        .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, set_id)
}

/// `[ lookup reg 1 set <name> ]`: matches when register 1 is an element of the set.
///
/// The set id lets the kernel resolve a set created earlier in the same batch.
pub fn set_lookup(set: &CStr, set_id: u32) -> Expr {
    Expr::new(c"lookup")
        .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG_1)
        .str(sys::NFTNL_EXPR_LOOKUP_SET, set)
        .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, set_id)
}

/// `[ immediate reg 1 <data> ]`
pub fn immediate(data: &[u8]) -> Expr {
    Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, REG_1)
        .data(sys::NFTNL_EXPR_IMM_DATA, data)
}

/// `[ immediate reg 0 accept ]`
pub fn accept() -> Expr {
    Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_VERDICT as u32)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, libc::NF_ACCEPT as u32)
}

/// `[ notrack ]`: the packet skips connection tracking (module nft_ct).
pub fn notrack() -> Expr {
    Expr::new(c"notrack")
}

/// `[ counter ]`, as attached to a set so that every element counts its own packets.
pub fn counter() -> Expr {
    Expr::new(c"counter")
}

/// `[ queue num <num> bypass ]`: the nft `queue` expression (module nft_queue).
pub fn queue(num: u16) -> Expr {
    Expr::new(c"queue")
        .u16(sys::NFTNL_EXPR_QUEUE_NUM, num)
        .u16(sys::NFTNL_EXPR_QUEUE_TOTAL, 1)
        .u16(
            sys::NFTNL_EXPR_QUEUE_FLAGS,
            libc::NFT_QUEUE_FLAG_BYPASS as u16,
        )
}

/// `xt_NFQUEUE` revision 3 flag: accept instead of drop when nobody listens on the queue.
const NFQ_FLAG_BYPASS: u16 = 0x01;

/// The xt `NFQUEUE` target, revision 3, run by nft_compat, as `iptables-nft -j NFQUEUE
/// --queue-num <num> --queue-bypass` adds it.
///
/// The info blob is `struct xt_NFQ_info_v3 { u16 queuenum, queues_total, flags; }` in host
/// byte order, padded to XT_ALIGN (8 bytes): nft_compat rejects any other length.
pub fn xt_nfqueue(num: u16) -> Expr {
    let mut info = [0u8; 8];
    info[0..2].copy_from_slice(&num.to_ne_bytes());
    info[2..4].copy_from_slice(&1u16.to_ne_bytes());
    info[4..6].copy_from_slice(&NFQ_FLAG_BYPASS.to_ne_bytes());
    Expr::new(c"target")
        .str(sys::NFTNL_EXPR_TG_NAME, c"NFQUEUE")
        .u32(sys::NFTNL_EXPR_TG_REV, 3)
        .handover(sys::NFTNL_EXPR_TG_INFO, &info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xt_info_layout() {
        let e = xt_nfqueue(0x1723);
        let Value::Handover(info) = &e.attrs[2].1 else {
            panic!("info is data")
        };
        assert_eq!(info.len(), 8);
        assert_eq!(u16::from_ne_bytes([info[0], info[1]]), 0x1723);
        assert_eq!(u16::from_ne_bytes([info[2], info[3]]), 1);
        assert_eq!(u16::from_ne_bytes([info[4], info[5]]), 1);
    }

    #[test]
    fn builds_every_kind() {
        // libnftnl must know every expression name we use, or build() would abort.
        for e in [
            payload_load(Base::Network, 12, 4, REG_1),
            payload_write(Base::Transport, 6, 2, REG_1, Csum::None),
            cmp(CmpOp::Eq, &[1]),
            and_mask(&[0xff]),
            meta_load(libc::NFT_META_L4PROTO),
            meta_set(libc::NFT_META_MARK),
            ct_load(libc::NFT_CT_STATUS),
            fib_daddr_type(),
            map_lookup(c"m", 1),
            set_lookup(c"s", 1),
            immediate(&[0; 4]),
            accept(),
            counter(),
            queue(1),
            xt_nfqueue(1),
        ] {
            let p = e.build();
            // SAFETY: freshly allocated and owned by us.
            unsafe { sys::nftnl_expr_free(p.as_ptr()) };
        }
    }
}

//! The ruleset, described once: every statement knows both its nft text (for `render`) and its
//! expressions (for `install`), so the two can never drift apart.

use std::ffi::{CStr, CString};

use nftnl::{Chain, Hook, MsgType, Policy, Rule, Table};
use nftnl_sys::libc;

use super::expr::{self, Base, CmpOp, Csum, Expr, REG32_01, REG32_02, REG_1};
use super::netlink::Txn;
use super::objects::{SetMsg, TableMsg, Udata};
use super::{QueueBackend, RulesConfig};

/// Map: (outside peer, NAT Call ID) -> inside host.
pub const GRE_DADDR: &CStr = c"gre_daddr";
/// Map: (outside peer, NAT Call ID) -> inside Call ID.
pub const GRE_CID: &CStr = c"gre_cid";
/// Set: this router's own IPv4 addresses, kept up to date by the daemon. The fast path
/// rewrites only GRE addressed to one of them.
pub const LOCAL_ADDRS: &CStr = c"local_addrs";
/// Map: (hairpinned client, public address it dialed, server's Call ID) -> inside server: the
/// client's GRE goes on to the server (fast path only).
pub const HAIRPIN_DADDR: &CStr = c"hairpin_daddr";
/// Map: (source, destination, Call ID) of hairpinned GRE once routed -> the source the
/// receiver expects (the public address towards the client, the masquerade address towards
/// the server). Rewritten after routing, where a local source is no martian; with and
/// without the fast path.
pub const HAIRPIN_SADDR: &CStr = c"hairpin_saddr";

/// Set: (inside host, outside peer, the peer's Call ID) of every call whose peer id is known,
/// with per-element counters: the GRE each inside host sends for its calls, counted in the
/// forward hook (masquerade needs no help from the daemon, so this GRE never reaches it).
pub const GRE_OUT: &CStr = c"gre_out";
/// The chain the daemon adds while hairpinned calls exist (see [`hairpin_post`]).
pub const HAIRPIN_POST: &CStr = c"gre_post";

/// The batch-local ids of the sets, so rules in the same batch can refer to them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetIds {
    /// Id of [`GRE_DADDR`].
    pub gre_daddr: u32,
    /// Id of [`GRE_CID`].
    pub gre_cid: u32,
    /// Id of [`LOCAL_ADDRS`].
    pub local_addrs: u32,
    /// Id of [`HAIRPIN_DADDR`].
    pub hairpin_daddr: u32,
    /// Id of [`HAIRPIN_SADDR`].
    pub hairpin_saddr: u32,
    /// Id of [`GRE_OUT`].
    pub gre_out: u32,
}

/// Length of a map key: IPv4 address, then the 16-bit Call ID padded to a 32-bit register.
pub const KEY_LEN: usize = 8;
/// Length of a hairpin map key: two IPv4 addresses, then the Call ID padded to 32 bits.
pub const HAIRPIN_KEY_LEN: usize = 12;
/// Length of a [`GRE_OUT`] key: two IPv4 addresses and the padded Call ID.
pub const OUT_KEY_LEN: usize = 12;

/// Direction of a packet relative to its conntrack entry (`ct direction`;
/// not the engine's [`crate::alg::Direction`], which is relative to the NAT).
#[derive(Debug, Clone, Copy)]
pub enum CtDir {
    /// Same direction as the packet that created the entry.
    Original,
    /// The other way.
    Reply,
}

/// Which NAT the kernel applied to the connection.
#[derive(Debug, Clone, Copy)]
pub enum Nat {
    /// Source NAT (masquerade): the client is inside.
    Snat,
    /// Destination NAT (port forward): the server is inside.
    Dnat,
}

/// One statement of a rule.
#[derive(Debug, Clone, Copy)]
pub enum Stmt {
    /// Enhanced GRE: checksum bit clear, key bit set, version 1, protocol 0x880b. One 32-bit
    /// compare because nft 1.0.6 lists separate 8/16-bit raw matches as `th sport`/`th dport`
    /// and drops the `ip protocol gre` before them, which would not load back the same.
    GreV1,
    /// The first (or only) fragment: only that one carries the GRE header.
    NotFragment,
    /// Addressed to this router, as the routing table says (`fib daddr type local`). Costs a
    /// FIB lookup per packet: only the queue rule has it.
    LocalDaddr,
    /// Addressed to one of the router's own addresses in [`LOCAL_ADDRS`] (one hash lookup):
    /// the fast path's test. An address the set does not hold yet fails it, and the packet
    /// falls through to the queue rule.
    InLocalAddrs,
    /// Not tracked by conntrack: the GRE pptp-alg translated towards inside hosts, which all
    /// of its rules leave untracked (and nothing the control rules could queue).
    Untracked,
    /// Counts GRE of a call an inside host sends, in the call's element of [`GRE_OUT`].
    CountGreOut,
    /// Any transport protocol but TCP.
    NotTcp,
    /// TCP destination port.
    TcpDport(u16),
    /// TCP source port.
    TcpSport(u16),
    /// Conntrack direction.
    CtDirection(CtDir),
    /// Conntrack NAT status bit set.
    CtStatus(Nat),
    /// Rewrites destination address and Call ID from the two maps; no match if the key is
    /// absent.
    RewriteGre,
    /// Rewrites the destination of a hairpinned client's GRE to the public address (no match
    /// if the key is absent).
    RewriteHairpinDaddr,
    /// Rewrites the source of routed hairpinned GRE (no match if the key is absent).
    RewriteHairpinSaddr,
    /// The packet mark equals this.
    MarkIs(u32),
    /// The bits of the packet mark under the mask (second) equal the mark (first).
    MarkBitsAre(u32, u32),
    /// The packet skips connection tracking.
    Notrack,
    /// Counts the packets and bytes that reach it (read back by [`super::unknown_gre_packets`]).
    Counter,
    /// Sets the packet mark.
    SetMark(u32),
    /// Sets the bits of the packet mark under the mask (second) to the mark (first), keeping
    /// the others.
    SetMarkBits(u32, u32),
    /// Accept verdict.
    Accept,
    /// Queue to userspace with bypass (fail-open when the daemon is not running).
    Queue(u16, QueueBackend),
}

const IPPROTO_GRE: u8 = 47;
const RTN_LOCAL: u32 = 2;
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;
/// `ct state untracked` (NF_CT_STATE_UNTRACKED_BIT).
const CT_STATE_UNTRACKED: u32 = 1 << 6;

/// The `GreV1` mask and value over GRE bytes 0..4.
const GRE_MASK: [u8; 4] = [0xa0, 0x07, 0xff, 0xff];
const GRE_V1_PPTP: [u8; 4] = [0x20, 0x01, 0x88, 0x0b];

impl Stmt {
    /// The statement as `nft list` prints it.
    pub fn text(&self) -> String {
        match *self {
            Stmt::GreV1 => format!(
                "ip protocol gre @th,0,32 & {:#010x} == {:#010x}",
                u32::from_be_bytes(GRE_MASK),
                u32::from_be_bytes(GRE_V1_PPTP)
            ),
            Stmt::NotFragment => "ip frag-off & 8191 == 0".into(),
            Stmt::LocalDaddr => "fib daddr type local".into(),
            Stmt::InLocalAddrs => format!("ip daddr @{}", name(LOCAL_ADDRS)),
            Stmt::Untracked => "ct state untracked".into(),
            Stmt::CountGreOut => format!("ip saddr . ip daddr . @th,48,16 @{}", name(GRE_OUT)),
            Stmt::NotTcp => "meta l4proto != tcp".into(),
            Stmt::TcpDport(p) => format!("tcp dport {p}"),
            Stmt::TcpSport(p) => format!("tcp sport {p}"),
            Stmt::CtDirection(CtDir::Original) => "ct direction original".into(),
            Stmt::CtDirection(CtDir::Reply) => "ct direction reply".into(),
            Stmt::CtStatus(Nat::Snat) => "ct status snat".into(),
            Stmt::CtStatus(Nat::Dnat) => "ct status dnat".into(),
            Stmt::RewriteGre => format!(
                "ip daddr set ip saddr . @th,48,16 map @{} \
                 @th,48,16 set ip saddr . @th,48,16 map @{}",
                name(GRE_DADDR),
                name(GRE_CID)
            ),
            Stmt::RewriteHairpinDaddr => format!(
                "ip daddr set ip saddr . ip daddr . @th,48,16 map @{}",
                name(HAIRPIN_DADDR)
            ),
            Stmt::RewriteHairpinSaddr => format!(
                "ip saddr set ip saddr . ip daddr . @th,48,16 map @{}",
                name(HAIRPIN_SADDR)
            ),
            Stmt::MarkIs(m) => format!("meta mark {m:#010x}"),
            Stmt::MarkBitsAre(m, mask) => format!("meta mark & {mask:#010x} == {m:#010x}"),
            Stmt::Notrack => "notrack".into(),
            // What `nft list` shows for a fresh rule; the kernel fills in the numbers.
            Stmt::Counter => "counter packets 0 bytes 0".into(),
            Stmt::SetMark(m) => format!("meta mark set {m:#010x}"),
            // nft shows the AND operand with the mark's bits set.
            Stmt::SetMarkBits(m, mask) => {
                format!("meta mark set meta mark & {:#010x} | {m:#010x}", !mask | m)
            }
            Stmt::Accept => "accept".into(),
            Stmt::Queue(n, QueueBackend::NftQueue) => format!("queue flags bypass to {n}"),
            Stmt::Queue(_, QueueBackend::XtNfqueue) => XT_NFQUEUE_TEXT.into(),
        }
    }

    /// The expressions, in the order and with the registers `nft` 1.0.6 itself uses.
    pub fn exprs(&self, ids: SetIds) -> Vec<Expr> {
        match *self {
            Stmt::GreV1 => vec![
                expr::payload_load(Base::Network, 9, 1, REG_1),
                expr::cmp(CmpOp::Eq, &[IPPROTO_GRE]),
                expr::payload_load(Base::Transport, 0, 4, REG_1),
                expr::and_mask(&GRE_MASK),
                expr::cmp(CmpOp::Eq, &GRE_V1_PPTP),
            ],
            Stmt::NotFragment => vec![
                expr::payload_load(Base::Network, 6, 2, REG_1),
                expr::and_mask(&0x1fffu16.to_be_bytes()),
                expr::cmp(CmpOp::Eq, &[0, 0]),
            ],
            Stmt::LocalDaddr => vec![
                expr::fib_daddr_type(),
                expr::cmp(CmpOp::Eq, &RTN_LOCAL.to_ne_bytes()),
            ],
            Stmt::InLocalAddrs => vec![
                expr::payload_load(Base::Network, 16, 4, REG_1),
                expr::set_lookup(LOCAL_ADDRS, ids.local_addrs),
            ],
            // As nft encodes a flag match, so that it lists as `ct state untracked`.
            Stmt::Untracked => vec![
                expr::ct_load(libc::NFT_CT_STATE),
                expr::and_mask(&CT_STATE_UNTRACKED.to_ne_bytes()),
                expr::cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
            ],
            Stmt::CountGreOut => vec![
                expr::payload_load(Base::Network, 12, 4, REG_1),
                expr::payload_load(Base::Network, 16, 4, REG32_01),
                expr::payload_load(Base::Transport, 6, 2, REG32_02),
                expr::set_lookup(GRE_OUT, ids.gre_out),
            ],
            Stmt::NotTcp => vec![
                expr::meta_load(libc::NFT_META_L4PROTO),
                expr::cmp(CmpOp::Neq, &[libc::IPPROTO_TCP as u8]),
            ],
            Stmt::TcpDport(p) => tcp_port(2, p),
            Stmt::TcpSport(p) => tcp_port(0, p),
            Stmt::CtDirection(d) => vec![
                expr::ct_load(libc::NFT_CT_DIRECTION),
                expr::cmp(CmpOp::Eq, &[matches!(d, CtDir::Reply) as u8]),
            ],
            Stmt::CtStatus(n) => {
                let bit = match n {
                    Nat::Snat => IPS_SRC_NAT,
                    Nat::Dnat => IPS_DST_NAT,
                };
                vec![
                    expr::ct_load(libc::NFT_CT_STATUS),
                    expr::and_mask(&bit.to_ne_bytes()),
                    expr::cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
                ]
            }
            Stmt::RewriteGre => {
                let key = || {
                    [
                        expr::payload_load(Base::Network, 12, 4, REG_1),
                        expr::payload_load(Base::Transport, 6, 2, REG32_01),
                    ]
                };
                let mut v = Vec::new();
                v.extend(key());
                v.push(expr::map_lookup(GRE_DADDR, ids.gre_daddr));
                // The IPv4 header checksum is fixed incrementally; the pseudo-header flag
                // is what nft sets for an address and is a no-op for GRE.
                v.push(expr::payload_write(
                    Base::Network,
                    16,
                    4,
                    REG_1,
                    Csum::Inet {
                        offset: 10,
                        pseudo_header: true,
                    },
                ));
                v.extend(key());
                v.push(expr::map_lookup(GRE_CID, ids.gre_cid));
                // Only packets without the GRE checksum bit get here.
                v.push(expr::payload_write(
                    Base::Transport,
                    6,
                    2,
                    REG_1,
                    Csum::None,
                ));
                v
            }
            Stmt::RewriteHairpinDaddr => hairpin_rewrite(HAIRPIN_DADDR, ids.hairpin_daddr, 16),
            Stmt::RewriteHairpinSaddr => hairpin_rewrite(HAIRPIN_SADDR, ids.hairpin_saddr, 12),
            Stmt::MarkIs(m) => vec![
                expr::meta_load(libc::NFT_META_MARK),
                expr::cmp(CmpOp::Eq, &m.to_ne_bytes()),
            ],
            Stmt::MarkBitsAre(m, mask) => vec![
                expr::meta_load(libc::NFT_META_MARK),
                expr::mask_xor(&mask.to_ne_bytes(), &0u32.to_ne_bytes()),
                expr::cmp(CmpOp::Eq, &m.to_ne_bytes()),
            ],
            Stmt::Notrack => vec![expr::notrack()],
            Stmt::Counter => vec![expr::counter()],
            Stmt::SetMark(m) => vec![
                expr::immediate(&m.to_ne_bytes()),
                expr::meta_set(libc::NFT_META_MARK),
            ],
            Stmt::SetMarkBits(m, mask) => vec![
                expr::meta_load(libc::NFT_META_MARK),
                expr::mask_xor(&(!mask).to_ne_bytes(), &m.to_ne_bytes()),
                expr::meta_set(libc::NFT_META_MARK),
            ],
            Stmt::Accept => vec![expr::accept()],
            Stmt::Queue(n, QueueBackend::NftQueue) => vec![expr::queue(n)],
            Stmt::Queue(n, QueueBackend::XtNfqueue) => vec![expr::xt_nfqueue(n)],
        }
    }
}

/// `ip <field> set ip saddr . ip daddr . @th,48,16 map @<map>`, the address field at
/// `offset` of the IPv4 header; the header checksum is fixed incrementally.
fn hairpin_rewrite(map: &CStr, id: u32, offset: u32) -> Vec<Expr> {
    vec![
        expr::payload_load(Base::Network, 12, 4, REG_1),
        expr::payload_load(Base::Network, 16, 4, REG32_01),
        expr::payload_load(Base::Transport, 6, 2, REG32_02),
        expr::map_lookup(map, id),
        expr::payload_write(
            Base::Network,
            offset,
            4,
            REG_1,
            Csum::Inet {
                offset: 10,
                pseudo_header: true,
            },
        ),
    ]
}

/// How `nft` shows an xt target it cannot translate (nft >= 1.0.7). nft 1.0.6 without
/// iptables' extension plugins shows nothing at all, and with them it shows its own
/// translation; the rule comment (see [`rule_comment`]) keeps the listing meaningful in every
/// case. None of these forms is valid `nft -f` input.
pub const XT_NFQUEUE_TEXT: &str = "xt target \"NFQUEUE\"";

/// The comment a rule carries: xt NFQUEUE rules say where they queue, because `nft list` may
/// not show the target's parameters (or the target at all).
pub fn rule_comment(stmts: &[Stmt]) -> Option<String> {
    stmts.iter().find_map(|s| match *s {
        Stmt::Queue(n, QueueBackend::XtNfqueue) => Some(format!("xt NFQUEUE num {n} bypass")),
        _ => None,
    })
}

fn tcp_port(offset: u32, port: u16) -> Vec<Expr> {
    vec![
        expr::meta_load(libc::NFT_META_L4PROTO),
        expr::cmp(CmpOp::Eq, &[libc::IPPROTO_TCP as u8]),
        expr::payload_load(Base::Transport, offset, 2, REG_1),
        expr::cmp(CmpOp::Eq, &port.to_be_bytes()),
    ]
}

fn name(c: &CStr) -> &str {
    c.to_str().expect("set names are ASCII")
}

/// A base chain.
pub struct ChainSpec {
    /// Chain name.
    pub name: &'static CStr,
    /// Netfilter hook.
    pub hook: Hook,
    /// Hook name as nft prints it.
    pub hook_text: &'static str,
    /// Priority.
    pub prio: i32,
    /// Priority as nft prints it.
    pub prio_text: &'static str,
    /// Rules, each a list of statements.
    pub rules: Vec<Vec<Stmt>>,
}

/// A map or set of the fast path.
pub struct SetSpec {
    /// Map or set name.
    pub name: &'static CStr,
    /// `map` or `set`, as nft prints it.
    pub keyword: &'static str,
    /// The declaration line as nft prints it.
    pub typeof_text: &'static str,
    /// Whether elements carry counters.
    pub counter: bool,
}

/// The maps and the sets, in the order they are created and listed. Without the fast path
/// only the hairpin source map (the daemon then rewrites GRE destinations itself, but a source
/// can only be rewritten after routing) and the set counting GRE from inside hosts.
pub fn sets(cfg: &RulesConfig) -> Vec<SetSpec> {
    let hairpin_saddr = SetSpec {
        name: HAIRPIN_SADDR,
        keyword: "map",
        typeof_text: "typeof ip saddr . ip daddr . @th,48,16 : ip saddr",
        counter: false,
    };
    let gre_out = SetSpec {
        name: GRE_OUT,
        keyword: "set",
        typeof_text: "typeof ip saddr . ip daddr . @th,48,16",
        counter: true,
    };
    if !cfg.offload {
        return vec![hairpin_saddr, gre_out];
    }
    vec![
        SetSpec {
            name: GRE_DADDR,
            keyword: "map",
            typeof_text: "typeof ip saddr . @th,48,16 : ip daddr",
            counter: true,
        },
        SetSpec {
            name: GRE_CID,
            keyword: "map",
            typeof_text: "typeof ip saddr . @th,48,16 : @th,48,16",
            counter: false,
        },
        SetSpec {
            name: HAIRPIN_DADDR,
            keyword: "map",
            typeof_text: "typeof ip saddr . ip daddr . @th,48,16 : ip daddr",
            counter: false,
        },
        hairpin_saddr,
        SetSpec {
            name: LOCAL_ADDRS,
            keyword: "set",
            typeof_text: "typeof ip daddr",
            counter: false,
        },
        gre_out,
    ]
}

/// The statement that matches translated GRE's mark: the whole mark, or only the bits of
/// `mark_mask`.
pub fn mark_is(cfg: &RulesConfig) -> Stmt {
    if cfg.mark_mask == u32::MAX {
        Stmt::MarkIs(cfg.mark)
    } else {
        Stmt::MarkBitsAre(cfg.mark, cfg.mark_mask)
    }
}

/// The statement that marks translated GRE: the whole mark, or only the bits of `mark_mask`.
pub fn set_mark(cfg: &RulesConfig) -> Stmt {
    if cfg.mark_mask == u32::MAX {
        Stmt::SetMark(cfg.mark)
    } else {
        Stmt::SetMarkBits(cfg.mark, cfg.mark_mask)
    }
}

/// GRE from outside at raw prerouting (-300): before conntrack (-200) and before the routing
/// decision, so a rewritten destination is routed to the inside host; untracked (see below).
///
/// Control connections at forward, priority filter + 10: every forward priority lies between
/// DNAT (prerouting) and SNAT (postrouting), so the daemon sees inside addresses; running just
/// after the usual filter chains (priority 0) means a packet the firewall drops never reaches
/// the daemon and never creates call state, while an accept there does not stop us.
pub fn chains(cfg: &RulesConfig, backend: QueueBackend) -> Vec<ChainSpec> {
    use Stmt::*;
    let mut gre_rules = Vec::new();
    if cfg.offload {
        // The router's own addresses from the set the daemon keeps, not `fib daddr type
        // local`: a hash lookup instead of a FIB lookup per packet. Either way GRE to another
        // host (transit) carrying a mapped (peer, Call ID) is never rewritten. The mark comes
        // after the rewrite: a lookup miss ends the rule, and the packet must then reach the
        // queue unmarked.
        //
        // `notrack`: the translation is stateless, so conntrack has nothing to add; skipping
        // it saves its lookup, NAT hooks and confirmation (about 200 ns a packet, more than
        // this rule costs over a masqueraded packet) and one conntrack entry per call. The
        // queue rule below does the same, so a call's GRE looks the same to the firewall
        // (`ct state untracked`, the mark) whether the kernel or the daemon translates it.
        gre_rules.push(vec![
            GreV1,
            NotFragment,
            InLocalAddrs,
            RewriteGre,
            Notrack,
            set_mark(cfg),
            Accept,
        ]);
        // GRE to one of our addresses that matches no element is of no call the daemon
        // knows: every call's elements are added before the packet that gives its NAT id to
        // the peer leaves (the packet thread acts on a call's events before its verdict), so
        // no GRE of a call can arrive before them. It stays with the router's own stack, as
        // the daemon's verdict left it before, without the trip to userspace: a flood of
        // it costs one more rule here, never the daemon. `notrack`: conntrack stays flat
        // under such a flood, and with no conntrack entry no NAT can send it inside. The
        // router may itself be a PPTP endpoint: its own calls' GRE is delivered.
        // A hairpinned client's GRE to the public address it dialed, carrying the server's
        // Call ID: on to the server (the daemon adds the element when the server's reply
        // gives the client that id, before the reply's verdict). Its source is rewritten after
        // routing, in `gre_post`; the mark says so.
        gre_rules.push(vec![
            GreV1,
            NotFragment,
            InLocalAddrs,
            RewriteHairpinDaddr,
            Notrack,
            set_mark(cfg),
            Accept,
        ]);
        gre_rules.push(vec![
            GreV1,
            NotFragment,
            InLocalAddrs,
            Counter,
            Notrack,
            Accept,
        ]);
    }
    // The routing table decides here, so GRE to an address the set does not hold (yet) still
    // reaches the daemon, which translates known calls itself. With the fast path, that is
    // all that is left of GRE to the router; without it, all of it.
    gre_rules.push(vec![
        GreV1,
        NotFragment,
        LocalDaddr,
        Notrack,
        Queue(cfg.queue_gre, backend),
    ]);

    // The server side of a control connection has port 1723: original-direction packets carry
    // it as destination, reply-direction packets as source. A client that happens to use
    // source port 1723 is not PPTP and is left alone.
    let ctl = |port: Stmt, dir: CtDir, nat: Nat, queue: u16| {
        vec![port, CtDirection(dir), CtStatus(nat), Queue(queue, backend)]
    };
    let ctl_rules = vec![
        // The GRE this table (or the daemon) translated towards inside hosts, at line rate:
        // it leaves after one test, before the lookup below and the port rules.
        vec![Untracked, Accept],
        // GRE an inside host sends for a call, counted per call (`PKTS OUT`). No verdict:
        // the packet goes on to the next rule.
        vec![GreV1, NotFragment, CountGreOut],
        // Everything else forwarded (all other GRE) leaves after one test instead of walking
        // the four port rules.
        vec![NotTcp, Accept],
        ctl(
            TcpDport(1723),
            CtDir::Original,
            Nat::Snat,
            cfg.queue_from_inside,
        ),
        ctl(TcpSport(1723), CtDir::Reply, Nat::Snat, cfg.queue_to_inside),
        ctl(
            TcpSport(1723),
            CtDir::Reply,
            Nat::Dnat,
            cfg.queue_from_inside,
        ),
        ctl(
            TcpDport(1723),
            CtDir::Original,
            Nat::Dnat,
            cfg.queue_to_inside,
        ),
    ];
    vec![
        ChainSpec {
            name: c"gre_in",
            hook: Hook::PreRouting,
            hook_text: "prerouting",
            prio: -300,
            prio_text: "raw",
            rules: gre_rules,
        },
        ChainSpec {
            name: c"ctl",
            hook: Hook::Forward,
            hook_text: "forward",
            prio: 10,
            prio_text: "filter + 10",
            rules: ctl_rules,
        },
    ]
}

/// The chain `gre_post`: hairpinned GRE, routed, gets the source its receiver expects. It is
/// not in [`chains`]: the daemon adds it with a hairpinned call's first elements and removes it
/// after the last call ends (see [`add_hairpin_post`]), because as a postrouting base chain it
/// costs every packet the router sends, and the fast path's GRE (which carries the mark too)
/// a lookup that always misses: measured, that made the fast path slower than the kernel's
/// PPTP helper at one call.
pub fn hairpin_post(cfg: &RulesConfig) -> ChainSpec {
    ChainSpec {
        name: HAIRPIN_POST,
        hook: Hook::PostRouting,
        hook_text: "postrouting",
        prio: 0,
        prio_text: "filter",
        rules: vec![vec![
            mark_is(cfg),
            Stmt::GreV1,
            Stmt::NotFragment,
            Stmt::RewriteHairpinSaddr,
        ]],
    }
}

// nft's numbers for its own types and expressions, as found in the user data that
// `nft -f` stores for a `typeof` map (checked with `nft --debug=mnl`).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_BITS: u32 = 6;
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_TYPEOF_EXPR: u8 = 0;
const UDATA_TYPEOF_DATA: u8 = 1;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_CONCAT: u32 = 13;
const PAYLOAD_DESC: u8 = 0;
const PAYLOAD_TYPE: u8 = 1;
const PAYLOAD_BASE: u8 = 2;
const PAYLOAD_OFFSET: u8 = 3;
const PAYLOAD_LEN: u8 = 4;
const PROTO_DESC_IP: u32 = 12;
const IPHDR_SADDR: u32 = 11;
const IPHDR_DADDR: u32 = 12;
const PROTO_BASE_TRANSPORT: u32 = 3;

/// `typeof` record of one payload expression.
fn typeof_payload(desc: Udata) -> Udata {
    Udata::default()
        .u32(UDATA_TYPEOF_EXPR, EXPR_PAYLOAD)
        .nest(UDATA_TYPEOF_DATA, desc)
}

fn ip_field(field: u32) -> Udata {
    typeof_payload(
        Udata::default()
            .u32(PAYLOAD_DESC, PROTO_DESC_IP)
            .u32(PAYLOAD_TYPE, field),
    )
}

/// `@th,48,16`: the enhanced GRE Call ID.
fn call_id_field() -> Udata {
    typeof_payload(
        Udata::default()
            .u32(PAYLOAD_DESC, 0)
            .u32(PAYLOAD_TYPE, 0)
            .u32(PAYLOAD_BASE, PROTO_BASE_TRANSPORT)
            .u32(PAYLOAD_OFFSET, 48)
            .u32(PAYLOAD_LEN, 16),
    )
}

/// User data for `typeof ip saddr . @th,48,16 : <data>`.
fn map_udata(data: Udata) -> Vec<u8> {
    map_udata_of(
        Udata::default()
            .nest(0, ip_field(IPHDR_SADDR))
            .nest(1, call_id_field()),
        data,
    )
}

/// User data for `typeof ip saddr . ip daddr . @th,48,16 : <data>`.
fn hairpin_map_udata(data: Udata) -> Vec<u8> {
    map_udata_of(
        Udata::default()
            .nest(0, ip_field(IPHDR_SADDR))
            .nest(1, ip_field(IPHDR_DADDR))
            .nest(2, call_id_field()),
        data,
    )
}

/// User data for `typeof <concatenated fields> : <data>`.
fn map_udata_of(fields: Udata, data: Udata) -> Vec<u8> {
    let key = Udata::default()
        .u32(UDATA_TYPEOF_EXPR, EXPR_CONCAT)
        .nest(UDATA_TYPEOF_DATA, fields);
    Udata::default()
        .u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_INVALID)
        .u32(UDATA_SET_DATABYTEORDER, BYTEORDER_BIG_ENDIAN)
        .nest(UDATA_SET_KEY_TYPEOF, key)
        .nest(UDATA_SET_DATA_TYPEOF, data)
        .u32(UDATA_SET_DATA_INTERVAL, 0)
        .into_bytes()
}

/// User data for `typeof ip daddr` (a set: no data).
fn addr_set_udata() -> Vec<u8> {
    Udata::default()
        .u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_BIG_ENDIAN)
        .nest(UDATA_SET_KEY_TYPEOF, ip_field(IPHDR_DADDR))
        .into_bytes()
}

/// User data for `typeof ip saddr . ip daddr . @th,48,16` (a set: no data).
fn out_set_udata() -> Vec<u8> {
    let key = Udata::default().u32(UDATA_TYPEOF_EXPR, EXPR_CONCAT).nest(
        UDATA_TYPEOF_DATA,
        Udata::default()
            .nest(0, ip_field(IPHDR_SADDR))
            .nest(1, ip_field(IPHDR_DADDR))
            .nest(2, call_id_field()),
    );
    Udata::default()
        .u32(UDATA_SET_KEYBYTEORDER, BYTEORDER_INVALID)
        .nest(UDATA_SET_KEY_TYPEOF, key)
        .into_bytes()
}

/// The netlink description of a map or set.
pub fn set_msg(table: &CStr, spec: &SetSpec, id: u32) -> SetMsg {
    let map = |data_type, data_len, data| SetMsg {
        table: table.to_owned(),
        name: spec.name.to_owned(),
        id,
        key_type: (TYPE_IPADDR << TYPE_BITS) | TYPE_INTEGER,
        key_len: KEY_LEN as u32,
        data: Some((data_type, data_len)),
        udata: map_udata(data),
        counter: spec.counter,
    };
    let hairpin = |data_field| SetMsg {
        table: table.to_owned(),
        name: spec.name.to_owned(),
        id,
        key_type: (((TYPE_IPADDR << TYPE_BITS) | TYPE_IPADDR) << TYPE_BITS) | TYPE_INTEGER,
        key_len: HAIRPIN_KEY_LEN as u32,
        data: Some((TYPE_IPADDR, 4)),
        udata: hairpin_map_udata(ip_field(data_field)),
        counter: spec.counter,
    };
    if spec.name == GRE_DADDR {
        map(TYPE_IPADDR, 4, ip_field(IPHDR_DADDR))
    } else if spec.name == HAIRPIN_DADDR {
        hairpin(IPHDR_DADDR)
    } else if spec.name == HAIRPIN_SADDR {
        hairpin(IPHDR_SADDR)
    } else if spec.name == GRE_CID {
        map(TYPE_INTEGER, 2, call_id_field())
    } else if spec.name == GRE_OUT {
        SetMsg {
            table: table.to_owned(),
            name: spec.name.to_owned(),
            id,
            key_type: (((TYPE_IPADDR << TYPE_BITS) | TYPE_IPADDR) << TYPE_BITS) | TYPE_INTEGER,
            key_len: OUT_KEY_LEN as u32,
            data: None,
            udata: out_set_udata(),
            counter: spec.counter,
        }
    } else {
        SetMsg {
            table: table.to_owned(),
            name: spec.name.to_owned(),
            id,
            key_type: TYPE_IPADDR,
            key_len: 4,
            data: None,
            udata: addr_set_udata(),
            counter: spec.counter,
        }
    }
}

/// Appends "replace table `table` by the ruleset" to `txn`; with `owned`, the new table is
/// owned by the socket the batch is sent on.
///
/// Add, delete, add: the first add makes the delete valid whether or not the table existed, so
/// no separate existence check (and no race with it) is needed, and the batch stays atomic.
/// The first add carries no flags, so it changes nothing about an existing table (the kernel
/// refuses to give an existing table an owner); only the last add sets the owner flag.
pub fn add_install(
    txn: &mut Txn,
    cfg: &RulesConfig,
    backend: QueueBackend,
    table: &CString,
    owned: bool,
) {
    let tname = table.to_string_lossy();
    let t = TableMsg::new(table, false);
    txn.add(&t, MsgType::Add, format!("add table ip {tname}"));
    txn.add(&t, MsgType::Del, format!("delete old table ip {tname}"));
    if owned {
        txn.add(
            &TableMsg::owned(table),
            MsgType::Add,
            format!("add table ip {tname} {{ flags owner; }}"),
        );
    } else {
        txn.add(&t, MsgType::Add, format!("add table ip {tname}"));
    }

    let mut ids = SetIds::default();
    for (i, m) in sets(cfg).iter().enumerate() {
        let id = i as u32 + 1;
        let msg = set_msg(table, m, id);
        txn.add(
            &msg,
            MsgType::Add,
            format!(
                "add {} {} {{ {} }} to table ip {tname}",
                m.keyword,
                name(m.name),
                m.typeof_text
            ),
        );
        if m.name == GRE_DADDR {
            ids.gre_daddr = id;
        } else if m.name == GRE_CID {
            ids.gre_cid = id;
        } else if m.name == LOCAL_ADDRS {
            ids.local_addrs = id;
        } else if m.name == HAIRPIN_DADDR {
            ids.hairpin_daddr = id;
        } else if m.name == HAIRPIN_SADDR {
            ids.hairpin_saddr = id;
        } else if m.name == GRE_OUT {
            ids.gre_out = id;
        }
    }

    for spec in chains(cfg, backend) {
        add_chain(txn, table, &spec, ids);
    }
}

/// Appends "add base chain `spec` with its rules" to `txn`; `ids` name the sets created in
/// the same batch (a set that exists already is found by name).
fn add_chain(txn: &mut Txn, table: &CString, spec: &ChainSpec, ids: SetIds) {
    // nftnl's Chain and Rule want a Table to take the name and family from.
    let anchor = Table::new(table, nftnl::ProtoFamily::Ipv4);
    let tname = table.to_string_lossy();
    let chain = base_chain(&anchor, spec);
    let cname = name(spec.name);
    txn.add(
        &chain,
        MsgType::Add,
        format!(
            "add chain {cname} (hook {}) to table ip {tname}",
            spec.hook_text
        ),
    );
    for stmts in &spec.rules {
        let mut rule = Rule::new(&chain);
        for s in stmts {
            for e in s.exprs(ids) {
                rule.add_expr(&e);
            }
        }
        if let Some(c) = rule_comment(stmts) {
            let c = CString::new(c).expect("comment has no NUL");
            rule.set_comment(c).expect("comment fits nft's limit");
        }
        txn.add(
            &rule,
            MsgType::Add,
            format!(
                "rule `{}` in chain {cname} of table ip {tname}",
                rule_text(stmts)
            ),
        );
    }
}

/// The base chain `spec` describes, in the table `anchor` names (nftnl's Chain wants a Table
/// to take the name and family from).
fn base_chain<'a>(anchor: &'a Table, spec: &ChainSpec) -> Chain<'a> {
    let mut chain = Chain::new(spec.name, anchor);
    chain.set_hook(spec.hook, spec.prio);
    chain.set_type(nftnl::ChainType::Filter);
    chain.set_policy(Policy::Accept);
    chain
}

/// Appends "remove chain `gre_post` if it is there" to `txn`: an add (which changes nothing
/// about an existing chain) makes the delete valid either way, as for the table.
pub fn add_drop_hairpin_post(txn: &mut Txn, cfg: &RulesConfig, table: &CString) {
    let anchor = Table::new(table, nftnl::ProtoFamily::Ipv4);
    let chain = base_chain(&anchor, &hairpin_post(cfg));
    let tname = table.to_string_lossy();
    txn.add(
        &chain,
        MsgType::Add,
        format!("add chain gre_post to table ip {tname}"),
    );
    // Without NLM_F_NONREC the kernel deletes the chain's rules with it.
    txn.add(
        &chain,
        MsgType::Del,
        format!("delete chain gre_post of table ip {tname}"),
    );
}

/// Appends "chain `gre_post` with its one rule, whether or not it was there" to `txn`
/// (removed and added anew, so never two copies of the rule).
pub fn add_hairpin_post(txn: &mut Txn, cfg: &RulesConfig, table: &CString) {
    add_drop_hairpin_post(txn, cfg, table);
    add_chain(txn, table, &hairpin_post(cfg), SetIds::default());
}

/// A rule's statements (and comment) joined as nft prints them.
pub fn rule_text(stmts: &[Stmt]) -> String {
    let mut t = stmts.iter().map(Stmt::text).collect::<Vec<_>>().join(" ");
    if let Some(c) = rule_comment(stmts) {
        t.push_str(&format!(" comment \"{c}\""));
    }
    t
}

/// Encodes a hairpin map key: source, destination, Call ID, two bytes of register padding.
pub fn hairpin_key(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, call_id: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(HAIRPIN_KEY_LEN);
    k.extend_from_slice(&src.octets());
    k.extend_from_slice(&dst.octets());
    k.extend_from_slice(&call_id.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// Encodes a [`GRE_OUT`] key: inside host, outside peer, the peer's Call ID, padding.
pub fn out_key(
    inside_host: std::net::Ipv4Addr,
    outside_peer: std::net::Ipv4Addr,
    id: u16,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(OUT_KEY_LEN);
    k.extend_from_slice(&inside_host.octets());
    k.extend_from_slice(&key(outside_peer, id));
    k
}

/// Encodes a map key: address, Call ID, two bytes of register padding.
pub fn key(peer: std::net::Ipv4Addr, call_id: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_LEN);
    k.extend_from_slice(&peer.octets());
    k.extend_from_slice(&call_id.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user data `nft -f` 1.0.6 sent for
    /// `map gre_daddr { typeof ip saddr . @th,48,16 : ip daddr; counter; }` on x86_64.
    const NFT_GRE_DADDR_UDATA: &str = concat!(
        "000400000000010402000000034600040d000000013e0014000407000000010c",
        "00040c00000001040b0000000126000407000000011e00040000000001040000",
        "00000204030000000304300000000404100000000414000407000000010c0004",
        "0c00000001040c000000060400000000",
    );

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn udata_matches_nft() {
        let cfg = RulesConfig::default();
        let m = &sets(&cfg)[0];
        let msg = set_msg(c"pptp_alg", m, 1);
        assert_eq!(msg.udata, unhex(NFT_GRE_DADDR_UDATA));
        assert_eq!(msg.key_type, 0x1c4);
    }

    /// The user data `nft -f` 1.0.6 sent for `set local_addrs { typeof ip daddr; }` on x86_64
    /// (key type ipv4_addr, key length 4, no flags).
    const NFT_LOCAL_ADDRS_UDATA: &str = "0004020000000314000407000000010c00040c00000001040c000000";

    #[test]
    #[cfg(target_endian = "little")]
    fn set_udata_matches_nft() {
        let cfg = RulesConfig::default();
        let s = sets(&cfg)
            .into_iter()
            .find(|s| s.name == LOCAL_ADDRS)
            .expect("local_addrs with offload");
        assert_eq!(s.keyword, "set");
        let msg = set_msg(c"pptp_alg", &s, 3);
        assert_eq!(msg.udata, unhex(NFT_LOCAL_ADDRS_UDATA));
        assert_eq!((msg.key_type, msg.key_len, msg.data), (7, 4, None));
    }

    #[test]
    fn only_the_fast_path_rule_uses_the_set() {
        let cfg = RulesConfig::default();
        let gre = &chains(&cfg, QueueBackend::NftQueue)[0];
        assert_eq!(gre.rules.len(), 4);
        let fast = rule_text(&gre.rules[0]);
        let hairpin = rule_text(&gre.rules[1]);
        let unknown = rule_text(&gre.rules[2]);
        let queue = rule_text(&gre.rules[3]);
        // A hairpinned client's GRE: only to our addresses, marked for the source rewrite.
        assert!(
            hairpin.contains(" ip daddr @local_addrs ip daddr set ")
                && hairpin.ends_with(" notrack meta mark set 0x00001723 accept"),
            "{hairpin}"
        );
        // GRE to our addresses that no element matches stays with the router, untracked and
        // counted, and never reaches the queue.
        assert!(
            unknown.ends_with(" ip daddr @local_addrs counter packets 0 bytes 0 notrack accept"),
            "{unknown}"
        );
        assert!(
            fast.contains(" ip daddr @local_addrs ip daddr set "),
            "{fast}"
        );
        assert!(!fast.contains("fib"), "{fast}");
        assert!(
            queue.contains(" fib daddr type local notrack queue "),
            "{queue}"
        );
        assert!(!queue.contains("@local_addrs"), "{queue}");
        // Both paths leave the GRE they take untracked: the firewall sees the same either way.
        assert!(fast.contains(" notrack meta mark set "), "{fast}");

        let no_offload = RulesConfig {
            offload: false,
            ..cfg.clone()
        };
        let names: Vec<_> = sets(&no_offload).iter().map(|s| s.name).collect();
        assert_eq!(names, [HAIRPIN_SADDR, GRE_OUT]);
        let gre = &chains(&no_offload, QueueBackend::NftQueue)[0];
        assert_eq!(gre.rules.len(), 1);
        // The source rewrite of routed hairpinned GRE, with or without the fast path: only
        // marked GRE looks it up.
        for cfg in [&cfg, &no_offload] {
            let out = hairpin_post(cfg);
            assert_eq!(out.name, c"gre_post");
            // Added with the first hairpinned call only: it would cost every packet sent.
            assert!(chains(cfg, QueueBackend::NftQueue)
                .iter()
                .all(|c| c.name != c"gre_post"));
            assert_eq!(out.rules.len(), 1);
            let r = rule_text(&out.rules[0]);
            assert!(
                r.starts_with("meta mark 0x00001723 ip protocol gre "),
                "{r}"
            );
            assert!(r.ends_with(" ip saddr set ip saddr . ip daddr . @th,48,16 map @hairpin_saddr"));
        }
        // With a mark mask, only the bits pptp-alg owns say "translated here".
        let masked = RulesConfig {
            mark_mask: 0xfff,
            mark: 0xabc,
            ..cfg
        };
        let r = rule_text(&hairpin_post(&masked).rules[0]);
        assert!(
            r.starts_with("meta mark & 0x00000fff == 0x00000abc ip protocol gre "),
            "{r}"
        );
    }

    /// The user data `nft` 1.0.6 sent for
    /// `set gre_out { typeof ip saddr . ip daddr . @th,48,16; counter; }` on x86_64 (key type
    /// 0x71c4, key length 12, checked with `nft --debug=mnl`).
    const NFT_GRE_OUT_UDATA: &str = concat!(
        "000400000000035c00040d00000001540014000407000000010c00040c000000",
        "01040b0000000114000407000000010c00040c00000001040c00000002260004",
        "07000000011e00040000000001040000000002040300000003043000000004",
        "0410000000",
    );

    #[test]
    #[cfg(target_endian = "little")]
    fn out_set_udata_matches_nft() {
        let s = sets(&RulesConfig::default())
            .into_iter()
            .find(|s| s.name == GRE_OUT)
            .expect("gre_out");
        let msg = set_msg(c"pptp_alg", &s, 4);
        assert_eq!(msg.udata, unhex(NFT_GRE_OUT_UDATA));
        assert_eq!((msg.key_type, msg.key_len, msg.data), (0x71c4, 12, None));
        assert!(msg.counter);
    }

    #[test]
    fn out_key_layout() {
        assert_eq!(
            out_key(
                "10.0.0.2".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
                0x1234
            ),
            vec![10, 0, 0, 2, 192, 0, 2, 1, 0x12, 0x34, 0, 0]
        );
    }

    #[test]
    fn key_layout() {
        assert_eq!(
            key("192.0.2.1".parse().unwrap(), 0x1234),
            vec![192, 0, 2, 1, 0x12, 0x34, 0, 0]
        );
    }
}

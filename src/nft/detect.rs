//! Finding out what the running kernel supports and what else is loaded.

use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader};

use nftnl::{Chain, MsgType, Rule, Table};
use nftnl_sys::{self as sys, libc};

use super::netlink::{Netlink, Txn};
use super::objects::{dump_objects, get_table, TableMsg};
use super::ruleset::{SetIds, Stmt};
use super::{table_cname, NftError, QueueBackend};

/// `NFT_OBJECT_CT_HELPER` from linux/netfilter/nf_tables.h.
const NFT_OBJECT_CT_HELPER: u32 = 3;

/// See [`super::detect_backend`].
pub fn detect_backend() -> Result<QueueBackend, NftError> {
    let mut nl = Netlink::open()?;
    let queue = match probe(&mut nl, QueueBackend::NftQueue) {
        Ok(()) => return Ok(QueueBackend::NftQueue),
        Err(e) if unsupported(&e) => e,
        Err(e) => return Err(e),
    };
    match probe(&mut nl, QueueBackend::XtNfqueue) {
        Ok(()) => Ok(QueueBackend::XtNfqueue),
        Err(xt) if unsupported(&xt) => Err(NftError::NoQueueBackend {
            queue: Box::new(queue),
            xt: Box::new(xt),
        }),
        Err(e) => Err(e),
    }
}

/// The errors a kernel gives for an expression type (or xt target) it does not have.
fn unsupported(e: &NftError) -> bool {
    matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP))
}

/// Adds a throwaway table with one queue rule and deletes it again, in one batch.
///
/// On success the delete is part of the same commit, so the table never becomes visible; on
/// failure the whole batch is rolled back. Either way nothing is left behind. The chain has no
/// hook, so no packet could ever reach the rule, and the table is added with NLM_F_EXCL so an
/// existing table of the same name is never touched.
fn probe(nl: &mut Netlink, backend: QueueBackend) -> Result<(), NftError> {
    let exprs = Stmt::Queue(1, backend).exprs(SetIds::default());
    probe_rule(nl, &exprs, &format!("rule with the {backend}"), false)
}

/// Adds a throwaway table (owned by `nl` with `owned`) with a hookless chain holding one rule
/// of `exprs`, and deletes it again, in one batch (see [`probe`]).
fn probe_rule(
    nl: &mut Netlink,
    exprs: &[super::expr::Expr],
    what: &str,
    owned: bool,
) -> Result<(), NftError> {
    let name = CString::new(format!("pptp_alg_probe_{}", std::process::id()))
        .expect("no NUL in a formatted number");
    let tname = name.to_string_lossy().into_owned();
    let t = if owned {
        TableMsg::owned(&name)
    } else {
        TableMsg::new(&name, true)
    };
    let anchor = Table::new(&name, nftnl::ProtoFamily::Ipv4);
    let chain = Chain::new(c"probe", &anchor);
    let mut rule = Rule::new(&chain);
    for e in exprs {
        rule.add_expr(e);
    }
    let mut txn = Txn::new();
    txn.add(&t, MsgType::Add, format!("add probe table ip {tname}"));
    txn.add(
        &chain,
        MsgType::Add,
        format!("add chain probe to table ip {tname}"),
    );
    txn.add(&rule, MsgType::Add, what.to_string());
    txn.add(
        &TableMsg::new(&name, false),
        MsgType::Del,
        format!("delete probe table ip {tname}"),
    );
    nl.commit(txn)
}

/// See [`super::probe_table_owner`].
pub fn probe_table_owner() -> Result<bool, NftError> {
    let mut nl = Netlink::open()?;
    match probe_rule(&mut nl, &[super::expr::accept()], "an owned table", true) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// See [`super::probe_payload_write`].
pub fn probe_payload_write() -> Result<(), NftError> {
    use super::expr::{payload_load, payload_write, Base, Csum, REG_1};
    let mut nl = Netlink::open()?;
    let exprs = [
        payload_load(Base::Network, 16, 4, REG_1),
        payload_write(
            Base::Network,
            16,
            4,
            REG_1,
            Csum::Inet {
                offset: 10,
                pseudo_header: true,
            },
        ),
    ];
    probe_rule(
        &mut nl,
        &exprs,
        "a payload write (`ip daddr set ip daddr`)",
        false,
    )
}

/// See [`super::table_exists`].
pub fn table_exists(table: &str) -> Result<bool, NftError> {
    let name = table_cname(table)?;
    let mut nl = Netlink::open()?;
    match nl.request(&format!("get table ip {table}"), get_table(&name), |_| {
        Ok(())
    }) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// See [`super::pptp_helper_in_use`].
pub fn pptp_helper_in_use() -> Result<Option<String>, NftError> {
    let mut found = Vec::new();

    let mut nl = Netlink::open()?;
    nl.request(
        "list ct helper objects",
        dump_objects(NFT_OBJECT_CT_HELPER),
        |msg| {
            if let Some(d) = pptp_helper_object(msg.raw)? {
                found.push(d);
            }
            Ok(())
        },
    )?;

    let sysctl = "/proc/sys/net/netfilter/nf_conntrack_helper";
    match std::fs::read_to_string(sysctl) {
        Ok(v) if v.trim() == "1" => found.push(format!(
            "{sysctl} is 1: the kernel attaches helpers (pptp on tcp/1723) to new connections \
             automatically"
        )),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NftError::Proc {
                path: sysctl.into(),
                source,
            })
        }
    }

    // Catches helpers attached by anything we cannot inspect (iptables-legacy CT targets).
    let conntrack = "/proc/net/nf_conntrack";
    match std::fs::File::open(conntrack) {
        Ok(f) => {
            let n = BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.contains("helper=pptp"))
                .count();
            if n > 0 {
                found.push(format!(
                    "{conntrack} lists {n} connection(s) with helper=pptp"
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NftError::Proc {
                path: conntrack.into(),
                source,
            })
        }
    }

    Ok(if found.is_empty() {
        None
    } else {
        Some(found.join("; "))
    })
}

/// Describes a ct helper object if it uses the "pptp" helper.
pub(super) fn pptp_helper_object(raw: &[u8]) -> Result<Option<String>, NftError> {
    // SAFETY: `raw` is one complete netlink message; the object is ours and freed below; the
    // strings are copied before that.
    unsafe {
        let o = sys::nftnl_obj_alloc();
        if o.is_null() {
            std::process::abort();
        }
        if sys::nftnl_obj_nlmsg_parse(raw.as_ptr().cast(), o) < 0 {
            sys::nftnl_obj_free(o);
            return Err(NftError::Protocol("cannot parse an object dump".into()));
        }
        let get = |attr: u32| {
            let p = sys::nftnl_obj_get_str(o, attr as u16);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let helper = get(sys::NFTNL_OBJ_CT_HELPER_NAME);
        let desc = format!(
            "ct helper object \"{}\" of type \"{helper}\" in table {} {}",
            get(sys::NFTNL_OBJ_NAME),
            family_name(sys::nftnl_obj_get_u32(o, sys::NFTNL_OBJ_FAMILY as u16)),
            get(sys::NFTNL_OBJ_TABLE)
        );
        sys::nftnl_obj_free(o);
        Ok((helper == "pptp").then_some(desc))
    }
}

fn family_name(f: u32) -> &'static str {
    match f as i32 {
        libc::NFPROTO_IPV4 => "ip",
        libc::NFPROTO_IPV6 => "ip6",
        libc::NFPROTO_INET => "inet",
        libc::NFPROTO_BRIDGE => "bridge",
        libc::NFPROTO_ARP => "arp",
        libc::NFPROTO_NETDEV => "netdev",
        _ => "?",
    }
}

/// `NETLINK_NETFILTER`, the protocol column of /proc/net/netlink.
const NETLINK_NETFILTER: u32 = 12;

/// Names the process holding the netfilter netlink socket with port id `portid` (in this
/// network namespace), e.g. "pptp-alg (pid 1234)"; "process (netlink port N)" if it cannot be
/// found (no permission to look at other processes' descriptors, or a sandboxed /proc).
pub fn netlink_owner(portid: u32) -> String {
    match netlink_pid(portid) {
        Some(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
            let comm = comm.as_deref().map_or("process", str::trim);
            format!("{comm} (pid {pid})")
        }
        None => format!("process (netlink port {portid})"),
    }
}

/// The pid of a process holding the socket: its inode from the namespace's netlink socket
/// list, then a search of the processes' descriptors for it.
fn netlink_pid(portid: u32) -> Option<u32> {
    // thread-self, not self: the caller may be a thread that entered another namespace.
    let list = std::fs::read_to_string("/proc/thread-self/net/netlink").ok()?;
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    let inode = list.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let proto = f.get(1)?.parse::<u32>().ok()?;
        let port = f.get(2)?.parse::<u32>().ok()?;
        (proto == NETLINK_NETFILTER && port == portid).then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.find_map(|p| {
        let p = p.ok()?;
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
        fds.filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            .then_some(pid)
    })
}

//! Reads the [`Facts`] of the running system: files under /proc, throwaway nftables probes
//! (each added and deleted in one batch, so nothing is left behind) and `nft -j list
//! ruleset`. No decisions here: those are the checks' ([`super::run`]).

use super::ruleset::Ruleset;
use super::{Facts, Probe, ProbeError, TableState};
use crate::nft::{self, NftError};
use std::process::Command;

impl From<NftError> for ProbeError {
    fn from(e: NftError) -> ProbeError {
        ProbeError {
            errno: e.errno().or_else(|| io_errno(&e)),
            message: e.to_string(),
        }
    }
}

/// The errno of a socket-level error (opening a netlink socket without privilege).
fn io_errno(e: &NftError) -> Option<i32> {
    match e {
        NftError::Socket(io) | NftError::Io { source: io, .. } => io.raw_os_error(),
        _ => None,
    }
}

fn read(path: &str) -> Probe<String> {
    std::fs::read_to_string(path).map_err(|e| ProbeError {
        message: format!("{path}: {e}"),
        errno: e.raw_os_error(),
    })
}

/// `Ok(())` in the initial user namespace (its uid map covers every id), else the map.
fn user_ns() -> Probe<Result<(), String>> {
    read("/proc/self/uid_map").map(|m| {
        let fields: Vec<&str> = m.split_whitespace().collect();
        if fields == ["0", "0", "4294967295"] {
            Ok(())
        } else {
            Err(fields.join(" "))
        }
    })
}

/// The uid map of this process's user namespace when it is not the initial one: where errors
/// of payload writes are explained (see [`super::USERNS_EXPLAIN`]).
pub fn non_initial_user_ns() -> Option<String> {
    user_ns().ok()?.err()
}

/// Whether this process has CAP_NET_ADMIN (in its effective set).
pub fn cap_net_admin() -> Probe<bool> {
    let status = read("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| ProbeError::new("no CapEff in /proc/self/status"))?;
    let caps = u64::from_str_radix(hex.trim(), 16)
        .map_err(|e| ProbeError::new(format!("CapEff {hex:?}: {e}")))?;
    // CAP_NET_ADMIN is capability 12 (linux/capability.h).
    Ok(caps & (1 << 12) != 0)
}

/// Gathers every fact about table `table`.
pub fn gather(table: &str) -> Facts {
    let user_ns = user_ns();
    let payload_write =
        matches!(user_ns, Ok(Err(_))).then(|| nft::probe_payload_write().map_err(Into::into));
    Facts {
        cap_net_admin: cap_net_admin(),
        user_ns,
        ip_forward: read("/proc/sys/net/ipv4/ip_forward").map(|s| s.trim() == "1"),
        nfnetlink_queue: Ok(
            std::path::Path::new("/proc/net/netfilter/nfnetlink_queue").exists()
                || std::path::Path::new("/sys/module/nfnetlink_queue").exists(),
        ),
        backend: nft::detect_backend().map_err(Into::into),
        table_owner: nft::probe_table_owner().map_err(Into::into),
        payload_write,
        table: nft::table_holder(table)
            .map(|h| match h {
                None => TableState::Absent,
                Some(None) => TableState::Unowned,
                Some(Some(owner)) => TableState::Owned(owner),
            })
            .map_err(Into::into),
        pptp_helper: nft::pptp_helper_in_use().map_err(Into::into),
        ruleset: ruleset(),
    }
}

/// The live ruleset, through `nft -j list ruleset` (nftables' own JSON, which names every
/// statement): netlink would give expressions that `nft` itself has to interpret first.
fn ruleset() -> Probe<Ruleset> {
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .map_err(|e| ProbeError {
            message: format!("cannot run nft (package nftables): {e}"),
            errno: None,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let errno = err
            .contains("Operation not permitted")
            .then_some(libc::EPERM);
        return Err(ProbeError {
            message: format!("nft -j list ruleset: {err}"),
            errno,
        });
    }
    Ruleset::from_nft_json(&String::from_utf8_lossy(&out.stdout)).map_err(ProbeError::new)
}

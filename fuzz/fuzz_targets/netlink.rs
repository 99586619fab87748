//! The netlink reply parsers on arbitrary bytes: rtnetlink address
//! messages (src/daemon/addrs.rs) and nf_tables replies (src/nft: message
//! splitting, errors, tables, set elements with counters, ct helper
//! objects, the latter through libnftnl as the daemon calls it). No panic,
//! and what the address parser reports is consistent with the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::daemon::addrs::{parse, AddrTable, RtMsg};

fuzz_target!(|data: &[u8]| {
    // The daemon receives into u64 storage: keep netlink headers aligned
    // as they are there (libnftnl reads them through struct pointers).
    let mut buf = vec![0u64; data.len().div_ceil(8)];
    // SAFETY: `buf` holds at least `data.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), data.len()) };
    bytes.copy_from_slice(data);
    let bytes: &[u8] = bytes;

    let msgs = parse(bytes);
    // At most one message per 16 bytes (the header), and a framing error
    // only as the last one.
    assert!(msgs.len() <= bytes.len() / 16);
    let mut table = AddrTable::default();
    for (i, m) in msgs.iter().enumerate() {
        if let RtMsg::Malformed(why) = m.msg {
            if why.starts_with("netlink message length") {
                assert_eq!(i, msgs.len() - 1, "framing error not last");
            }
        }
        table.apply(&m.msg);
    }
    let _ = table.addrs();

    let _ = pptp_alg::nft::fuzzing::parse_replies(bytes);
});

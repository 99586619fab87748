//! The replication protocol's decoder and state machine on arbitrary
//! bytes: no panic; what decodes encodes back to the same bytes; a replica
//! fed anything sends only messages within the cap that decode again.
//! The first byte chooses between the bytes as they are (almost all fail
//! the tag) and the bytes as header and payload with a valid tag appended,
//! so that the fuzzer reaches the payload parsers past the authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::replication::wire::{decode, encode, MAX_MESSAGE};
use pptp_alg::replication::{Key, Replica, ReplicaConfig, Role};
use std::time::{Duration, Instant};

const KEY: &[u8] = b"fuzzing key, 32 bytes long......";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = Key::new(KEY).expect("a valid key");
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        let tag = key.tag(&bytes);
        bytes.extend_from_slice(&tag);
    }
    if let Ok(msg) = decode(&bytes, &key) {
        assert_eq!(
            encode(&msg, &key).expect("a decoded message encodes"),
            bytes
        );
    }
    // The same bytes, and the message split at every 200th byte, into a
    // replica that greets with the session the seeds address.
    let t = Instant::now();
    let mut cfg = ReplicaConfig::new(0, Role::Backup, key.clone(), 2);
    cfg.max_calls = 64;
    let mut r = Replica::new(cfg, t);
    let _ = r.handle(t, &bytes);
    let _ = r.handle(t + Duration::from_millis(10), &bytes);
    r.handle_timeout(t + Duration::from_secs(5));
    while let Some(out) = r.poll_transmit() {
        assert!(out.len() <= MAX_MESSAGE);
        decode(&out, &key).expect("a replica's own message decodes");
    }
    while r.poll_event().is_some() {}
});

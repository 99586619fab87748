//! Property tests: segmentation independence of the control translation,
//! and incremental checksums against full recomputation.

mod common;
use common::*;
use pptp_alg::alg::{AlgConfig, Direction, Verdict};
use pptp_alg::wire::ipv4::Ipv4Packet;
use pptp_alg::wire::tcp::TcpSegment;
use proptest::prelude::*;

use Direction::{FromInside as OUT, ToInside as IN};

/// A recorded conversation of an inside client whose ids collide with an
/// earlier caller (so translation really happens), in phases: each phase is
/// one direction's consecutive messages.
fn conversation() -> Vec<(Direction, Vec<Vec<u8>>)> {
    vec![
        (OUT, vec![ocrq(0x4000), ocrq(0x4105)]),
        (IN, vec![ocrp(0x0777, N1, 1), sli(N1), ocrp(0x0778, N2, 1)]),
        (OUT, vec![sli(0x0777), simple(ECHORQ), ccrq(0x4105)]),
        (IN, vec![simple(ECHORP), icrq(0x0aaa), wen(N1), cdn(0x0778)]),
        (OUT, vec![icrp(0x4000 + 0x20, 0x0aaa, 1)]),
        (IN, vec![iccn(N3), sli(N3), cdn(N1)]),
        (OUT, vec![cdn(0x4020), simple(STOPRQ)]),
        (IN, vec![simple(STOPRP)]),
    ]
}

/// The NAT ids of the conversation's calls. The other host holds blocks
/// 0x40 and 0x41 (its ids 0x4000 and 0x4105 are free there), so this
/// connection's first call with high byte 0x40 takes the next empty block,
/// 0x42, and its first with 0x41 the one after, 0x43; the slot is the
/// inside id's low byte. Every Call ID's first byte changes.
const N1: u16 = 0x4200;
const N2: u16 = 0x4305;
const N3: u16 = 0x4220;

/// Runs the conversation with segment boundaries given per phase, and
/// retransmissions of earlier segments; returns each direction's output
/// stream.
fn run(cuts: &[Vec<usize>], retransmit: &[Option<usize>]) -> [Vec<u8>; 2] {
    let mut sim = Sim::new(AlgConfig::default());
    // Another host already holds 0x4000 and 0x4105 towards the server.
    let mut other = Conn::client_inside(host(9), 40000, SERVER);
    sim.start_control(&mut other);
    sim.send(&mut other, OUT, &[ocrq(0x4000), ocrq(0x4105)].concat());
    let mut c = Conn::client_inside(host(1), 40001, SERVER);
    sim.start_control(&mut c);
    let mut out: [Vec<u8>; 2] = [vec![], vec![]];
    let mut sent: Vec<(Direction, u32, Vec<u8>)> = vec![];
    for (p, (d, msgs)) in conversation().into_iter().enumerate() {
        let di = if d == OUT { 0 } else { 1 };
        let bytes = msgs.concat();
        let mut bounds: Vec<usize> = cuts[p]
            .iter()
            .map(|&x| x % bytes.len())
            .filter(|&x| x > 0)
            .collect();
        bounds.push(bytes.len());
        bounds.sort();
        bounds.dedup();
        let mut start = 0;
        for (k, &end) in bounds.iter().enumerate() {
            let seg = &bytes[start..end];
            let seq = c.seq[di];
            let (v, o) = sim.send(&mut c, d, seg);
            assert!(matches!(v, Verdict::Accept | Verdict::Modified), "{v:?}");
            out[di].extend_from_slice(&o);
            sent.push((d, seq, seg.to_vec()));
            if let Some(Some(r)) = retransmit.get(p * 8 + k) {
                // Re-send an earlier segment: its output must be what the
                // same bytes produced the first time.
                let (rd, rseq, rseg) = sent[r % sent.len()].clone();
                let rdi = if rd == OUT { 0 } else { 1 };
                let (v, o) = sim.send_at(&c, rd, rseq, Flags::default(), &rseg);
                assert!(matches!(v, Verdict::Accept | Verdict::Modified));
                let base = rseq.wrapping_sub(c_start(rdi)) as usize;
                assert_eq!(o, out[rdi][base..base + o.len()], "retransmission differs");
            }
            start = end;
        }
    }
    out
}

/// Sequence number of the first payload byte of each direction (after the
/// SYN and the Start-Control-Connection exchange of `Sim::start_control`).
fn c_start(di: usize) -> u32 {
    let c = Conn::client_inside(host(1), 40001, SERVER);
    c.seq[di] + 1 + 156
}

fn reference() -> [Vec<u8>; 2] {
    // One message per segment.
    let cuts: Vec<Vec<usize>> = conversation()
        .iter()
        .map(|(_, m)| {
            m.iter()
                .scan(0, |acc, x| {
                    *acc += x.len();
                    Some(*acc)
                })
                .collect()
        })
        .collect();
    run(&cuts, &[])
}

#[test]
fn reference_translation_is_as_specified() {
    let [up, down] = reference();
    // Both outgoing requests collide with the other host's calls.
    assert_eq!(u16_at(&up, 12), N1);
    assert_eq!(u16_at(&up, 168 + 12), N2);
    // The server's reply names the inside id again.
    assert_eq!(u16_at(&down, 14), 0x4000);
    assert_eq!(u16_at(&down, 32 + 12), 0x4000);
    assert_eq!(u16_at(&down, 32 + 24 + 14), 0x4105);
    // Clear-request of the second call (third message of phase 3).
    assert_eq!(u16_at(&up, 2 * 168 + 24 + 16 + 12), N2);
    // The incoming call's reply and the server's messages naming it.
    let icrp_at = 2 * 168 + 24 + 16 + 16;
    assert_eq!(u16_at(&up, icrp_at + 12), N3);
    let iccn_at = 32 + 24 + 32 + 20 + 220 + 40 + 148;
    assert_eq!(u16_at(&down, iccn_at + 12), 0x4020);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_segmentation_gives_the_same_stream(
        cuts in proptest::collection::vec(proptest::collection::vec(0usize..2000, 0..12), 8),
        retransmit in proptest::collection::vec(proptest::option::weighted(0.3, 0usize..100), 64),
    ) {
        let got = run(&cuts, &retransmit);
        prop_assert_eq!(got, reference());
    }

    #[test]
    fn splits_inside_every_call_id_field(phase in 0usize..8, at in 0usize..400) {
        // Cut exactly between the two bytes of a field and around it.
        let mut cuts = vec![vec![]; 8];
        cuts[phase] = vec![at, at + 1, at + 13, at + 14];
        prop_assert_eq!(run(&cuts, &[]), reference());
    }

    #[test]
    fn tcp_checksum_stays_valid(
        payload in proptest::collection::vec(any::<u8>(), 1..300),
        patches in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..20),
    ) {
        let mut pkt = tcp_packet((host(1), 40000), (SERVER, 1723), 7, Flags::default(), &payload);
        {
            let mut ip = Ipv4Packet::new_checked(&mut pkt[..]).unwrap();
            let mut tcp = TcpSegment::new_checked(ip.payload_mut()).unwrap();
            for (at, b) in &patches {
                tcp.patch_payload_byte(at % payload.len(), *b);
            }
        }
        // etherparse recomputes the checksum from scratch and compares.
        checked_tcp_payload(&pkt);
    }

    #[test]
    fn ip_checksum_stays_valid_after_address_rewrite(dst in any::<[u8; 4]>(), id in any::<u16>(), ttl in any::<u8>()) {
        let mut pkt = gre_packet(SERVER, ROUTER, id, Some(3), None, b"payload");
        pkt[8] = ttl;
        Ipv4Packet::new_checked(&mut pkt[..]).unwrap().fill_checksum();
        Ipv4Packet::new_checked(&mut pkt[..]).unwrap().set_dst(dst.into());
        let (d, _) = gre_dst_and_id(&pkt); // asserts the checksum
        prop_assert_eq!(d, std::net::Ipv4Addr::from(dst));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Arbitrary bytes, and arbitrary payloads on tcp/1723 (valid headers
    /// with random types, lengths and ids mixed with garbage): never a
    /// panic, always a verdict, and the state stays within the limits.
    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
        segs in proptest::collection::vec((any::<bool>(), 0u8..4, 0u16..16, any::<u16>(), any::<u16>(), 0usize..300, any::<u32>()), 0..60),
    ) {
        let cfg = AlgConfig { max_calls: 8, max_calls_per_host: 4, max_connections: 3, ..AlgConfig::default() };
        let mut sim = Sim::new(cfg);
        for r in raw {
            let (_, _) = sim.packet(r, OUT);
        }
        for (inside, host_n, ty, id, len, cut, seq) in segs {
            let mut m = msg(ty.clamp(1, 15), &[(12, id)]);
            m[0..2].copy_from_slice(&len.to_be_bytes());
            m.truncate(cut.min(m.len()));
            let h = host(host_n);
            let (d, src, dst) = if inside { (OUT, (h, 40000), (SERVER, 1723)) } else { (IN, (SERVER, 1723), (h, 40000)) };
            let flags = Flags { syn: seq % 7 == 0, fin: seq % 11 == 0, rst: seq % 13 == 0, ack: (seq % 5 == 0).then_some(seq / 3) };
            let pkt = tcp_packet(src, dst, seq % 4096, flags, &m);
            let (v, _) = sim.packet(pkt, d);
            prop_assert!(matches!(v, Verdict::Accept | Verdict::Modified | Verdict::Drop(_)));
            let (gv, _) = sim.gre_in(SERVER, id, b"g");
            prop_assert!(matches!(gv, Verdict::Modified | Verdict::UnknownCall));
            sim.advance(std::time::Duration::from_millis(700));
        }
        prop_assert!(sim.alg.stats().calls_active <= 8);
        prop_assert!(sim.alg.connections() <= 3);
        prop_assert!(sim.alg.quarantined() <= 8);
    }
}

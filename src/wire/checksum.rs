//! Internet checksum helpers (RFC 1071) and incremental updates (RFC 1624).

/// One's complement sum of `data` as big-endian 16-bit words, added to `acc`
/// (not folded, not complemented). An odd trailing byte is padded with zero.
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds a 32-bit accumulator into 16 bits and complements it.
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Full checksum of `data`, as stored in an IPv4 header (with the checksum
/// field zeroed before the call).
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word changing
/// from `old` to `new`.
#[inline]
pub fn update_word(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    finish(acc)
}

/// Incremental update for a single byte at byte position `pos` of the
/// checksummed data. The byte is the high half of its word when `pos` is even.
/// Treating the other half as zero is sound because the one's complement sum
/// is linear in each byte's contribution.
#[inline]
pub fn update_byte(hc: u16, pos: usize, old: u8, new: u8) -> u16 {
    if pos % 2 == 0 {
        update_word(hc, u16::from(old) << 8, u16::from(new) << 8)
    } else {
        update_word(hc, u16::from(old), u16::from(new))
    }
}

/// Incremental update for a 32-bit value (e.g. an IPv4 address) at an even
/// position of the checksummed data.
#[inline]
pub fn update_u32(hc: u16, old: u32, new: u32) -> u16 {
    let hc = update_word(hc, (old >> 16) as u16, (new >> 16) as u16);
    update_word(hc, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn byte_updates_match_full_recomputation() {
        let mut d: Vec<u8> = (0..41u8).map(|i| i.wrapping_mul(37)).collect();
        let mut hc = checksum(&d);
        for (pos, new) in [(0usize, 0xffu8), (7, 0x00), (13, 0x80), (40, 0x11)] {
            hc = update_byte(hc, pos, d[pos], new);
            d[pos] = new;
            // Both encodings of zero (0x0000/0xffff) are the same sum.
            let full = checksum(&d);
            assert!(hc == full || (hc == 0xffff && full == 0) || (hc == 0 && full == 0xffff));
        }
    }
}

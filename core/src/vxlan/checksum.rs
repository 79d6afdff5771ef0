//! The Internet checksum (RFC 1071) for the outer IPv4 and UDP headers.
//!
//! Design note: smoltcp's checksum helpers are crate-private, and the UDP checksum of a
//! VXLAN frame covers the whole inner frame, so it is worth a fast loop. Because
//! 2^16 ≡ 1 (mod 2^16 − 1), the ones'-complement sum of 16-bit words equals that of
//! 32-bit words folded down to 16 bits, and it commutes with byte swapping; [`sum`]
//! therefore adds native little-endian 32-bit reads into a 64-bit accumulator (no carry
//! handling in the loop), folds once and swaps once. Inputs here are at most 64 KiB,
//! far from the accumulator's limit.

/// The ones'-complement sum of `data` read as big-endian 16-bit words (an odd final
/// byte is padded with zero), folded to 16 bits and widened so that partial sums can be
/// added. `data` must start at an even offset of the checksummed stream.
///
/// The loop reads little-endian 32-bit words (free on x86 and ARM) into a 64-bit
/// accumulator in 32-byte blocks, which compilers vectorise; since the ones'-complement
/// sum commutes with byte swapping (RFC 1071 §2(B)), the folded result is swapped once
/// at the end.
#[inline]
pub(crate) fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        let mut block_acc: u64 = 0;
        for w in block.chunks_exact(4) {
            block_acc += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        acc += block_acc;
    }
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    for (t, r) in tail.iter_mut().zip(words.remainder()) {
        *t = *r;
    }
    acc += u64::from(u32::from_le_bytes(tail));
    u64::from(fold(acc).swap_bytes())
}

/// Folds an unfolded sum to 16 bits (end-around carry), without complementing.
#[inline]
pub(crate) fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The IPv4 pseudo-header sum for UDP (RFC 768).
#[inline]
pub(crate) fn pseudo_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(protocol)
        + u64::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook definition: 16-bit words, end-around carry after every addition.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            acc += word;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        assert_eq!(
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
            0xddf2
        );
        assert_eq!(fold(sum(&[])), 0);
        assert_eq!(fold(sum(&[0xff, 0xff])), 0xffff);
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let fast = fold(sum(&data));
            let slow = reference(&data);
            prop_assert_eq!(fast, slow);
            // Splitting at an even offset gives the same sum.
            let cut = data.len() / 4 * 2;
            prop_assert_eq!(fold(sum(&data[..cut]) + sum(&data[cut..])), fast);
        }
    }
}

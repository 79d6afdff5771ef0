//! The Internet checksum (RFC 1071) for the outer IPv4 and UDP headers.
//!
//! Design note: the sum itself is the crate's fast loop ([`crate::checksum::sum_wide`]);
//! what is VXLAN-specific is the pseudo-header of the outer UDP datagram, whose
//! checksum covers the whole inner frame.

pub(crate) use crate::checksum::{fold, sum_wide as sum};

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

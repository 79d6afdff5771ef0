//! Incremental Internet checksum updates (RFC 1624).
//!
//! Design note: NAT changes a handful of 16-bit words of a packet (an address, a port,
//! an ICMP identifier). Recomputing the IP, TCP or UDP checksum over the whole packet
//! would cost time proportional to the payload and, worse, would silently "repair" a
//! packet that arrived corrupted. RFC 1624 eqn. 3 instead adjusts the stored checksum
//! by the difference of the changed words:
//!
//! ```text
//! HC' = ~(~HC + ~m + m')        (one's complement arithmetic)
//! ```
//!
//! which costs a few additions, is independent of the packet size, and keeps a bad
//! checksum bad. Eqn. 3 (unlike eqn. 2 of RFC 1141) never produces the "negative zero"
//! 0xFFFF for a sum that a full recomputation would write as 0x0000, except when every
//! word of the covered data is zero — so the result equals a full recomputation for any
//! real packet.
//!
//! UDP over IPv4 is special (RFC 768): a transmitted checksum of 0 means "no checksum",
//! so a zero UDP checksum is left alone, and a computed UDP checksum of 0 is written as
//! 0xFFFF (the other representation of zero). [`update16_udp`] and [`update32_udp`]
//! apply both rules.

/// One's complement addition of two 16-bit words (end-around carry).
#[inline]
pub fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    // At most one carry: 0xFFFF + 0xFFFF = 0x1FFFE → 0xFFFF.
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The checksum after the 16-bit word `old` of the covered data became `new`
/// (RFC 1624 eqn. 3). `checksum` is the value stored in the header.
#[inline]
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    !add(add(!checksum, !old), new)
}

/// The checksum after the 32-bit field `old` (two adjacent 16-bit words, e.g. an IPv4
/// address in network order read as a big-endian `u32`) became `new`.
#[inline]
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let s = add(!checksum, !(old >> 16) as u16);
    let s = add(s, !(old as u16));
    let s = add(s, (new >> 16) as u16);
    !add(s, new as u16)
}

/// [`update16`] for a UDP-over-IPv4 checksum: 0 ("no checksum") stays 0, and a result
/// of 0 is written as 0xFFFF.
#[inline]
pub fn update16_udp(checksum: u16, old: u16, new: u16) -> u16 {
    udp_rule(checksum, update16(checksum, old, new))
}

/// [`update32`] for a UDP-over-IPv4 checksum (see [`update16_udp`]).
#[inline]
pub fn update32_udp(checksum: u16, old: u32, new: u32) -> u16 {
    udp_rule(checksum, update32(checksum, old, new))
}

#[inline]
fn udp_rule(before: u16, after: u16) -> u16 {
    if before == 0 {
        0
    } else if after == 0 {
        0xffff
    } else {
        after
    }
}

/// An accumulated checksum difference: several field changes collected and applied to
/// one or more checksums at once (each `change` is the `~m + m'` term of eqn. 3).
///
/// Applying a delta is bit-for-bit the same as applying the changes one by one with
/// [`update16`] / [`update32`]: one's complement addition is associative, and its
/// result is 0x0000 only when every operand is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Delta(u16);

impl Delta {
    /// No change.
    pub const NONE: Delta = Delta(0);

    /// Records that a 16-bit word changed from `old` to `new`.
    #[inline]
    pub fn change16(&mut self, old: u16, new: u16) {
        self.0 = add(add(self.0, !old), new);
    }

    /// Records that a 32-bit field (two aligned 16-bit words) changed.
    #[inline]
    pub fn change32(&mut self, old: u32, new: u32) {
        self.change16((old >> 16) as u16, (new >> 16) as u16);
        self.change16(old as u16, new as u16);
    }

    /// Merges another delta into this one.
    #[inline]
    pub fn merge(&mut self, other: Delta) {
        self.0 = add(self.0, other.0);
    }

    /// The checksum `checksum` adjusted by this delta.
    #[inline]
    pub fn apply(self, checksum: u16) -> u16 {
        !add(!checksum, self.0)
    }

    /// The *partial* checksum field `field` adjusted by this delta. A packet whose L4
    /// checksum is left to the device that transmits it (Linux `CHECKSUM_PARTIAL`,
    /// `virtio_net_hdr` `NEEDS_CSUM`) holds in its TCP/UDP checksum field the one's
    /// complement sum of the pseudo-header, *not* complemented; the device sums the
    /// rest. So a pseudo-header change (an address) is added to the field as is —
    /// `~update(~field)`, Linux `inet_proto_csum_replace4` with `pseudohdr` on a
    /// partial skb — and a change of the covered data (a port) must not be applied at
    /// all: the device will sum the new value. No UDP zero rule applies either.
    #[inline]
    pub fn apply_partial(self, field: u16) -> u16 {
        add(field, self.0)
    }

    /// [`Delta::apply`] with the UDP-over-IPv4 rules of [`update16_udp`].
    #[inline]
    pub fn apply_udp(self, checksum: u16) -> u16 {
        udp_rule(checksum, self.apply(checksum))
    }
}

/// The one's complement sum of `data` read as big-endian 16-bit words (an odd last
/// byte is padded with zero), without the final complement: [`sum_wide`] folded.
/// Used where a checksum must be computed from scratch (building new packets,
/// completing a partial checksum, verifying one).
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    fold(sum_wide(data))
}

/// The one's complement sum of `data` (as for [`sum`]), folded to 16 bits but
/// widened so that partial sums can simply be added (then [`fold`]ed). `data` must
/// start at an even offset of the checksummed stream.
///
/// Because 2^16 ≡ 1 (mod 2^16 − 1), the sum of 16-bit words equals that of 32-bit
/// words folded down to 16 bits, and it commutes with byte swapping (RFC 1071 §2(B)):
/// the loop adds native little-endian 32-bit reads into a 64-bit accumulator in
/// 32-byte blocks, which compilers vectorise, with no carry handling in the loop (the
/// accumulator cannot overflow below 2^32 words); the result is folded and swapped
/// once at the end. This is the hot loop of software segmentation and of UDP
/// checksums over whole inner frames, about 8× the 16-bit-word loop.
#[inline]
pub fn sum_wide(data: &[u8]) -> u64 {
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
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Full RFC 1071 checksum of `data` with the checksum field at `at` taken as zero.
    fn full(data: &[u8], at: usize) -> u16 {
        let mut d = data.to_vec();
        d[at] = 0;
        d[at + 1] = 0;
        !sum(&d)
    }

    fn set16(data: &mut [u8], at: usize, v: u16) -> u16 {
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        data[at..at + 2].copy_from_slice(&v.to_be_bytes());
        old
    }

    #[test]
    fn ipv4_header_vector() {
        // A real IPv4 header (RFC 1071 style example): 45 00 00 73 00 00 40 00 40 11
        // [b8 61] c0 a8 00 01 c0 a8 00 c7 — checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(full(&h, 10), 0xb861);
        // Rewrite the destination 192.168.0.199 → 10.0.0.1 incrementally.
        let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let new = u32::from_be_bytes([10, 0, 0, 1]);
        h[16..20].copy_from_slice(&new.to_be_bytes());
        let c = update32(0xb861, old, new);
        assert_eq!(c, full(&h, 10));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(sum(&h), 0xffff);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4: HC = 0xDD2F, m = 0x5555 → m' = 0x3285 gives HC' = 0x0000
        // (eqn. 3), where eqn. 2 would wrongly give 0xFFFF.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn zero_and_ffff_edges() {
        // Data whose sum is 0xFFFF has checksum 0x0000; incremental updates into and
        // out of that case agree with full recomputation.
        let mut d = [0xff, 0x00, 0x00, 0xff, 0x00, 0x00];
        assert_eq!(full(&d, 4), 0x0000);
        let c0 = full(&d, 4);
        let old = set16(&mut d, 0, 0x1234);
        let c1 = update16(c0, old, 0x1234);
        assert_eq!(c1, full(&d, 4));
        let old = set16(&mut d, 0, 0xff00);
        assert_eq!(update16(c1, old, 0xff00), 0x0000);
        // A word changing between 0x0000 and 0xFFFF (the two zeros) leaves the sum's
        // value unchanged.
        let mut d = [0x12, 0x34, 0x00, 0x00, 0x00, 0x00];
        let c0 = full(&d, 4);
        let old = set16(&mut d, 2, 0xffff);
        assert_eq!(update16(c0, old, 0xffff), c0);
    }

    #[test]
    fn udp_zero_rules() {
        // "No checksum" stays "no checksum".
        assert_eq!(update16_udp(0, 0x1234, 0x4321), 0);
        assert_eq!(update32_udp(0, 0x0a00_0001, 0x0a00_0002), 0);
        // A computed 0 is transmitted as 0xFFFF.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0);
        assert_eq!(update16_udp(0xdd2f, 0x5555, 0x3285), 0xffff);
        // And 0xFFFF is a valid checksum to update from (it means sum 0x0000... i.e. +0).
        let r = update16_udp(0xffff, 0x3285, 0x5555);
        assert_eq!(r, 0xdd2f);
    }

    proptest! {
        #[test]
        fn update16_matches_full(
            mut words in proptest::collection::vec(any::<u16>(), 2..40),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            data[0] = 0; data[1] = 0; // checksum field at 0
            let c0 = !sum(&data);
            let i = 1 + at.index(words.len() - 1);
            let old = words[i];
            words[i] = new;
            data[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
            let c1 = update16(c0, old, new);
            let all_zero = data.iter().all(|&b| b == 0);
            if !all_zero {
                prop_assert_eq!(c1, !sum(&data));
            }
            // Whatever the representation, the packet verifies.
            data[0..2].copy_from_slice(&c1.to_be_bytes());
            prop_assert_eq!(sum(&data), if all_zero && c1 == 0 { 0 } else { 0xffff });
        }

        #[test]
        fn update32_matches_full(
            words in proptest::collection::vec(any::<u16>(), 3..40),
            at in any::<prop::sample::Index>(),
            new in any::<u32>(),
        ) {
            let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            data[0] = 0; data[1] = 0;
            let c0 = !sum(&data);
            let i = 1 + at.index(words.len() - 2);
            let old = u32::from_be_bytes([data[2*i], data[2*i+1], data[2*i+2], data[2*i+3]]);
            data[2 * i..2 * i + 4].copy_from_slice(&new.to_be_bytes());
            let c1 = update32(c0, old, new);
            if data.iter().any(|&b| b != 0) {
                prop_assert_eq!(c1, !sum(&data));
            }
        }

        #[test]
        fn delta_equals_sequential_updates(
            c in any::<u16>(),
            changes in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..8),
            wide in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..4),
        ) {
            let mut d = Delta::NONE;
            let mut seq = c;
            for &(o, n) in &changes { d.change16(o, n); seq = update16(seq, o, n); }
            for &(o, n) in &wide { d.change32(o, n); seq = update32(seq, o, n); }
            prop_assert_eq!(d.apply(c), seq);
        }

        #[test]
        fn partial_field_follows_the_pseudo_header(
            src in any::<u32>(), dst in any::<u32>(), new_src in any::<u32>(),
            new_dst in any::<u32>(), len in 1u16.., data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // A TCP segment whose field holds the partial sum; after an address change
            // with the partial rule, the device's final checksum equals a checksum of
            // the translated segment computed from scratch.
            let pseudo = |s: u32, d: u32| {
                let mut p: Vec<u8> = Vec::new();
                p.extend_from_slice(&s.to_be_bytes());
                p.extend_from_slice(&d.to_be_bytes());
                p.extend_from_slice(&[0, 6]);
                p.extend_from_slice(&len.to_be_bytes());
                sum(&p)
            };
            let field = pseudo(src, dst);
            let mut delta = Delta::NONE;
            delta.change32(src, new_src);
            delta.change32(dst, new_dst);
            let field = delta.apply_partial(field);
            // Compare as one's complement values (0x0000 and 0xFFFF are both zero).
            let norm = |x: u16| if x == 0xffff { 0 } else { x };
            prop_assert_eq!(norm(field), norm(pseudo(new_src, new_dst)));
            let mut seg = std::vec![0u8, 0];
            seg.extend_from_slice(&data);
            let device = |f: u16| {
                let mut s = seg.clone();
                s[0..2].copy_from_slice(&f.to_be_bytes());
                !sum(&s)
            };
            let scratch = !add(pseudo(new_src, new_dst), sum(&seg));
            prop_assert_eq!(norm(device(field)), norm(scratch));
            // And it is the complement-domain update: ~apply(~field).
            prop_assert_eq!(delta.apply_partial(0x1234), !delta.apply(!0x1234));
        }

        #[test]
        fn udp_update_never_writes_zero(c in 1u16.., old in any::<u16>(), new in any::<u16>()) {
            let r = update16_udp(c, old, new);
            prop_assert_ne!(r, 0);
            let plain = update16(c, old, new);
            prop_assert!(r == plain || (plain == 0 && r == 0xffff));
        }
    }
}

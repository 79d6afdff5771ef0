//! Flow keys and the podwire flow hash.
//!
//! Design note: several places must make "the same choice for the same flow" on every
//! node and on the firmware alike: the VXLAN outer UDP source port (RFC 7348 §5 entropy
//! for ECMP), the Maglev backend of a service, and the conntrack bucket. They all use
//! the one hash specified here, so it is part of podwire's contract, not an
//! implementation detail:
//!
//! **podwire flow hash v1.** Input: a 64-bit seed and a [`FlowKey`]. The key is laid out
//! as 64-bit words: `w0 = src_port | dst_port << 16 | protocol << 32 | zone << 40`, then
//! the source address and the destination address, each as two words (an IPv4 address
//! `a.b.c.d` is the single word `u32::from_be_bytes([a,b,c,d])` followed by the word 0;
//! an IPv6 address is its big-endian 128-bit value split high word first). Starting
//! from `h = seed ^ 0x9e37_79b9_7f4a_7c15`, every word `w` is absorbed as
//! `h = (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31)`, and the result is
//! finished with the MurmurHash3 64-bit finaliser (`fmix64`). There is no floating
//! point, no table and no allocation, so the hash costs a few nanoseconds.

use core::net::IpAddr;

/// The protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// The protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// The protocol number of ICMP (IPv4).
pub const PROTO_ICMP: u8 = 1;
/// The protocol number of SCTP.
pub const PROTO_SCTP: u8 = 132;

/// The identity of one direction of a connection: a 5-tuple plus a zone.
///
/// For ICMP echo the identifier stands in both port fields' place (`src_port` =
/// `dst_port` = identifier), as conntrack does. The zone separates address spaces that
/// may overlap (e.g. traffic seen before and after decapsulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (or ICMP identifier).
    pub src_port: u16,
    /// Destination port (or ICMP identifier).
    pub dst_port: u16,
    /// IP protocol number (see `PROTO_*`).
    pub protocol: u8,
    /// Conntrack zone.
    pub zone: u16,
}

impl FlowKey {
    /// The key of the opposite direction (source and destination swapped).
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            zone: self.zone,
        }
    }

    /// podwire flow hash v1 of this key under `seed` (see the module documentation).
    pub fn hash(&self, seed: u64) -> u64 {
        let w0 = u64::from(self.src_port)
            | u64::from(self.dst_port) << 16
            | u64::from(self.protocol) << 32
            | u64::from(self.zone) << 40;
        let mut h = absorb(seed ^ 0x9e37_79b9_7f4a_7c15, w0);
        for addr in [self.src, self.dst] {
            let (hi, lo) = address_words(addr);
            h = absorb(absorb(h, hi), lo);
        }
        fmix64(h)
    }
}

/// The two hash words of an address (see the module documentation).
fn address_words(addr: IpAddr) -> (u64, u64) {
    match addr {
        IpAddr::V4(a) => (u64::from(u32::from_be_bytes(a.octets())), 0),
        IpAddr::V6(a) => {
            let v = u128::from_be_bytes(a.octets());
            ((v >> 64) as u64, v as u64)
        }
    }
}

/// Absorbs one 64-bit word into the running hash state.
#[inline]
fn absorb(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31)
}

/// The MurmurHash3 64-bit finaliser: full avalanche of the state.
#[inline]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn key() -> FlowKey {
        FlowKey {
            src: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 244, 2, 3)),
            src_port: 40000,
            dst_port: 80,
            protocol: PROTO_TCP,
            zone: 0,
        }
    }

    #[test]
    fn hash_is_pinned() {
        // The hash is part of the cross-node contract: changing it changes which
        // backend every node picks. This value pins podwire flow hash v1.
        assert_eq!(key().hash(0), 0xc9bc_28d8_2916_7309);
    }

    #[test]
    fn hash_depends_on_every_field_and_seed() {
        let base = key().hash(7);
        let mut k = key();
        k.src_port += 1;
        assert_ne!(k.hash(7), base);
        let mut k = key();
        k.zone = 1;
        assert_ne!(k.hash(7), base);
        let mut k = key();
        k.dst = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 4));
        assert_ne!(k.hash(7), base);
        assert_ne!(key().hash(8), base);
        assert_ne!(key().reversed().hash(7), base);
        assert_eq!(key().reversed().reversed(), key());
    }
}

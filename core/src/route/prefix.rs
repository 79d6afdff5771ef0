//! Route prefixes and the address families a route table can key on.
//!
//! Design note: the table is generic over the address family through the sealed
//! [`RouteAddress`] trait, which maps an address to a fixed-width unsigned integer key
//! (`u32` for IPv4; an IPv6 table follows by implementing it for `Ipv6Addr` with a
//! `u128` key). Everything the trie needs from a key — masking, the top bits that index
//! the direct-pointing array, a 6-bit stride at a given depth — is a handful of shifts
//! on that integer, so the lookup monomorphises to straight-line integer code.

use core::fmt;
use core::net::Ipv4Addr;

use super::RouteError;

pub(crate) mod sealed {
    /// The integer form of an address; implemented for `u32` (and later `u128`).
    pub trait Key: Copy + Ord + Eq + core::fmt::Debug + core::hash::Hash {
        /// Width in bits.
        const BITS: u32;
        /// The all-zero key.
        const ZERO: Self;
        /// The key with all bits below the first `len` cleared (`len <= BITS`).
        fn mask(self, len: u32) -> Self;
        /// The first `bits` bits as an index (`1 <= bits <= 24`).
        fn top(self, bits: u32) -> usize;
        /// The key shifted right by `shift < BITS` bits, as an index (the hot-path
        /// form of `top`).
        fn top_shifted(self, shift: u32) -> usize;
        /// The 6 bits starting at bit `depth` (0 = most significant), bits past the end
        /// read as zero. `depth < BITS`.
        fn slot(self, depth: u32) -> u32;
        /// The key whose first `bits` bits are `index` and whose other bits are zero.
        fn from_top(index: usize, bits: u32) -> Self;
    }

    /// Seals [`super::RouteAddress`].
    pub trait Sealed {}
}

use sealed::Key;

impl Key for u32 {
    const BITS: u32 = 32;
    const ZERO: Self = 0;

    #[inline(always)]
    fn mask(self, len: u32) -> Self {
        // `checked_shl` is None for len == 0 (a shift by 32), which keeps nothing.
        self & u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0)
    }

    #[inline(always)]
    fn top(self, bits: u32) -> usize {
        self.checked_shr(32u32.saturating_sub(bits)).unwrap_or(0) as usize
    }

    #[inline(always)]
    fn top_shifted(self, shift: u32) -> usize {
        self.wrapping_shr(shift) as usize
    }

    #[inline(always)]
    fn slot(self, depth: u32) -> u32 {
        self.wrapping_shl(depth) >> 26
    }

    #[inline(always)]
    fn from_top(index: usize, bits: u32) -> Self {
        (index as u32)
            .checked_shl(32u32.saturating_sub(bits))
            .unwrap_or(0)
    }
}

/// An address family a [`RouteTable`](super::RouteTable) can be keyed on.
///
/// Sealed: implemented for [`Ipv4Addr`]; the IPv6 table will implement it for
/// `Ipv6Addr` with a 128-bit key.
pub trait RouteAddress: Copy + Eq + Ord + fmt::Debug + sealed::Sealed {
    /// The integer key of this family (an implementation detail of the trie).
    #[doc(hidden)]
    type Key: Key;
    /// The address as its big-endian integer key.
    #[doc(hidden)]
    fn to_key(self) -> Self::Key;
    /// The address of an integer key.
    #[doc(hidden)]
    fn from_key(key: Self::Key) -> Self;
}

impl sealed::Sealed for Ipv4Addr {}

impl RouteAddress for Ipv4Addr {
    type Key = u32;

    #[inline(always)]
    fn to_key(self) -> u32 {
        u32::from(self)
    }

    #[inline(always)]
    fn from_key(key: u32) -> Self {
        Ipv4Addr::from(key)
    }
}

/// A route prefix: a network address and a prefix length, with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Prefix<A> {
    addr: A,
    len: u8,
}

/// An IPv4 route prefix.
pub type Ipv4Prefix = Prefix<Ipv4Addr>;

impl<A: RouteAddress> Prefix<A> {
    /// The prefix `addr/len`.
    ///
    /// Errors: [`RouteError::BadPrefixLength`] if `len` exceeds the address width,
    /// [`RouteError::HostBitsSet`] if `addr` has bits set past the first `len`.
    pub fn new(addr: A, len: u8) -> Result<Self, RouteError> {
        if u32::from(len) > A::Key::BITS {
            return Err(RouteError::BadPrefixLength);
        }
        let key = addr.to_key();
        if key.mask(u32::from(len)) != key {
            return Err(RouteError::HostBitsSet);
        }
        Ok(Prefix { addr, len })
    }

    /// The prefix of length `len` that contains `addr` (host bits are cleared), as a
    /// CIDR written with an interface address (`10.244.1.7/24`) means it.
    ///
    /// Errors: [`RouteError::BadPrefixLength`] if `len` exceeds the address width.
    pub fn truncated(addr: A, len: u8) -> Result<Self, RouteError> {
        if u32::from(len) > A::Key::BITS {
            return Err(RouteError::BadPrefixLength);
        }
        Ok(Prefix {
            addr: A::from_key(addr.to_key().mask(u32::from(len))),
            len,
        })
    }

    /// The host route (`/32` for IPv4) of `addr`.
    pub fn host(addr: A) -> Self {
        Prefix {
            addr,
            len: A::Key::BITS as u8,
        }
    }

    /// The network address.
    pub fn addr(&self) -> A {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: A) -> bool {
        addr.to_key().mask(u32::from(self.len)) == self.addr.to_key()
    }

    /// Builds a prefix from a key already known to be masked.
    pub(crate) fn from_parts(key: A::Key, len: u8) -> Self {
        Prefix {
            addr: A::from_key(key),
            len,
        }
    }
}

impl<A: fmt::Display> fmt::Display for Prefix<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<A: fmt::Display> fmt::Debug for Prefix<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ops_u32() {
        let k: u32 = 0x0a0b_0c0d;
        assert_eq!(k.mask(0), 0);
        assert_eq!(k.mask(8), 0x0a00_0000);
        assert_eq!(k.mask(32), k);
        assert_eq!(k.top(8), 0x0a);
        assert_eq!(k.top(18), (k >> 14) as usize);
        assert_eq!(k.slot(0), 0x0a >> 2);
        assert_eq!(k.slot(30), (k & 3) << 4);
        assert_eq!(u32::from_top(0x0a, 8), 0x0a00_0000);
    }

    #[test]
    fn prefix_constructors() {
        let a = Ipv4Addr::new(10, 244, 1, 7);
        assert_eq!(Prefix::new(a, 24), Err(RouteError::HostBitsSet));
        assert_eq!(Prefix::new(a, 33), Err(RouteError::BadPrefixLength));
        let p = Prefix::truncated(a, 24).unwrap();
        assert_eq!(p.addr(), Ipv4Addr::new(10, 244, 1, 0));
        assert!(p.contains(a));
        assert!(!p.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(Prefix::host(a).prefix_len(), 32);
        assert_eq!(
            Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap().prefix_len(),
            0
        );
    }
}

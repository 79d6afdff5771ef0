//! Address families and CIDR prefixes for IPAM.
//!
//! Design note: the allocator and the pool work on *offsets* inside a prefix (a bit
//! index, a block index), never on addresses, so the only thing that differs between
//! IPv4 and IPv6 is how an address maps to and from an integer, its width, and which
//! offsets of a block are reserved (IPv4 has a broadcast address, IPv6 does not). That
//! is captured by the sealed [`AddressFamily`] trait; [`Ipv4`] is implemented today and
//! an `Ipv6` marker can follow without touching the allocator. Sealing keeps the
//! invariants the allocator relies on (width at most 128 bits, block prefixes that
//! give at most 2^16 addresses) under the core's control.

use core::fmt::Debug;
use core::hash::Hash;
use core::net::Ipv4Addr;

mod sealed {
    /// Prevents implementations of `AddressFamily` outside the core.
    pub trait Sealed {}

    /// `defmt::Format` when the `defmt` feature is on, nothing otherwise.
    #[cfg(feature = "defmt")]
    pub trait MaybeFormat: defmt::Format {}
    #[cfg(feature = "defmt")]
    impl<T: defmt::Format> MaybeFormat for T {}
    /// `defmt::Format` when the `defmt` feature is on, nothing otherwise.
    #[cfg(not(feature = "defmt"))]
    pub trait MaybeFormat {}
    #[cfg(not(feature = "defmt"))]
    impl<T> MaybeFormat for T {}
}

/// An IP address family the IPAM can manage (sealed: [`Ipv4`] today, IPv6 later).
pub trait AddressFamily:
    sealed::Sealed + Debug + Clone + Copy + PartialEq + Eq + Hash + 'static
{
    /// The address type of the family.
    type Addr: Debug + Clone + Copy + PartialEq + Eq + PartialOrd + Ord + Hash + sealed::MaybeFormat;
    /// Width of an address in bits (32 for IPv4).
    const BITS: u8;
    /// Width of an address in bytes, as written in snapshots.
    const ADDR_LEN: usize;
    /// The family byte of a snapshot (4 for IPv4, 6 reserved for IPv6).
    const TAG: u8;
    /// The shortest prefix a [`BlockAllocator`](super::BlockAllocator) may manage.
    const MIN_BLOCK_PREFIX: u8;
    /// The longest prefix a [`BlockAllocator`](super::BlockAllocator) may manage.
    const MAX_BLOCK_PREFIX: u8;
    /// Whether the last address of a block is a reserved broadcast address.
    const HAS_BROADCAST: bool;
    /// The address as an unsigned integer (network byte order value).
    fn to_bits(addr: Self::Addr) -> u128;
    /// The address of an integer value; bits above [`Self::BITS`] are ignored.
    fn from_bits(bits: u128) -> Self::Addr;
}

/// The IPv4 address family (a marker type, never instantiated).
///
/// Blocks are /16 to /30; the network address, the gateway (first host address) and
/// the broadcast address of each block are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Ipv4 {}

impl sealed::Sealed for Ipv4 {}

impl AddressFamily for Ipv4 {
    type Addr = Ipv4Addr;
    const BITS: u8 = 32;
    const ADDR_LEN: usize = 4;
    const TAG: u8 = 4;
    const MIN_BLOCK_PREFIX: u8 = 16;
    const MAX_BLOCK_PREFIX: u8 = 30;
    const HAS_BROADCAST: bool = true;

    fn to_bits(addr: Ipv4Addr) -> u128 {
        u128::from(u32::from(addr))
    }

    fn from_bits(bits: u128) -> Ipv4Addr {
        // Truncation to the low 32 bits is the documented behaviour.
        Ipv4Addr::from(bits as u32)
    }
}

/// Why a prefix is not a valid CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CidrError {
    /// The prefix length is longer than the address.
    PrefixTooLong {
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The address has bits set below the prefix (it is not the network address).
    HostBitsSet,
}

impl core::fmt::Display for CidrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CidrError::PrefixTooLong { prefix_len } => {
                write!(f, "prefix length /{prefix_len} is longer than the address")
            }
            CidrError::HostBitsSet => f.write_str("address has host bits set below the prefix"),
        }
    }
}

impl core::error::Error for CidrError {}

/// A network prefix: a network address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cidr<F: AddressFamily> {
    network: F::Addr,
    prefix_len: u8,
}

impl<F: AddressFamily> Cidr<F> {
    /// The prefix `network/prefix_len`; `network` must have no host bits set.
    pub fn new(network: F::Addr, prefix_len: u8) -> Result<Self, CidrError> {
        if prefix_len > F::BITS {
            return Err(CidrError::PrefixTooLong { prefix_len });
        }
        if F::to_bits(network) & host_mask::<F>(prefix_len) != 0 {
            return Err(CidrError::HostBitsSet);
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    /// The prefix containing `addr`, with the host bits of `addr` cleared.
    pub fn containing(addr: F::Addr, prefix_len: u8) -> Result<Self, CidrError> {
        if prefix_len > F::BITS {
            return Err(CidrError::PrefixTooLong { prefix_len });
        }
        let bits = F::to_bits(addr) & !host_mask::<F>(prefix_len);
        Ok(Cidr {
            network: F::from_bits(bits),
            prefix_len,
        })
    }

    /// The network address (first address of the prefix).
    pub fn network(&self) -> F::Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: F::Addr) -> bool {
        self.offset_of(addr).is_some()
    }

    /// Number of addresses in the prefix, as a power of two exponent (`BITS - prefix_len`).
    pub fn host_bits(&self) -> u8 {
        F::BITS - self.prefix_len
    }

    /// The offset of `addr` from the network address, if `addr` is inside the prefix.
    pub(crate) fn offset_of(&self, addr: F::Addr) -> Option<u128> {
        let a = F::to_bits(addr);
        let n = F::to_bits(self.network);
        if a & !host_mask::<F>(self.prefix_len) == n {
            Some(a - n)
        } else {
            None
        }
    }

    /// The address at `offset` from the network address (`offset` must be in range).
    pub(crate) fn addr_at(&self, offset: u128) -> F::Addr {
        F::from_bits(F::to_bits(self.network) | (offset & host_mask::<F>(self.prefix_len)))
    }
}

impl From<Cidr<Ipv4>> for smoltcp::wire::Ipv4Cidr {
    fn from(c: Cidr<Ipv4>) -> Self {
        smoltcp::wire::Ipv4Cidr::new(c.network, c.prefix_len)
    }
}

impl core::fmt::Display for Cidr<Ipv4> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The mask of the host bits of a `prefix_len` prefix (0 for a full-length prefix).
pub(crate) fn host_mask<F: AddressFamily>(prefix_len: u8) -> u128 {
    let host_bits = u32::from(F::BITS.saturating_sub(prefix_len));
    match 1u128.checked_shl(host_bits) {
        Some(v) => v - 1,
        None => u128::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_rejects_host_bits_and_long_prefix() {
        assert_eq!(
            Cidr::<Ipv4>::new(Ipv4Addr::new(10, 244, 1, 5), 24),
            Err(CidrError::HostBitsSet)
        );
        assert_eq!(
            Cidr::<Ipv4>::new(Ipv4Addr::new(10, 244, 1, 0), 33),
            Err(CidrError::PrefixTooLong { prefix_len: 33 })
        );
        let c = Cidr::<Ipv4>::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(c.offset_of(Ipv4Addr::new(10, 244, 1, 7)), Some(7));
        assert_eq!(c.addr_at(9), Ipv4Addr::new(10, 244, 1, 9));
        assert_eq!(
            Cidr::<Ipv4>::containing(Ipv4Addr::new(10, 244, 1, 77), 24),
            Ok(c)
        );
    }

    #[test]
    fn zero_and_full_prefixes() {
        let all = Cidr::<Ipv4>::new(Ipv4Addr::UNSPECIFIED, 0).unwrap();
        assert!(all.contains(Ipv4Addr::BROADCAST));
        assert_eq!(host_mask::<Ipv4>(0), 0xffff_ffff);
        assert_eq!(host_mask::<Ipv4>(32), 0);
        let one = Cidr::<Ipv4>::new(Ipv4Addr::new(1, 2, 3, 4), 32).unwrap();
        assert!(one.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(!one.contains(Ipv4Addr::new(1, 2, 3, 5)));
    }

    #[test]
    fn converts_to_smoltcp_and_displays() {
        let c = Cidr::<Ipv4>::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap();
        let s: smoltcp::wire::Ipv4Cidr = c.into();
        assert_eq!(s.prefix_len(), 16);
        assert_eq!(s.address(), Ipv4Addr::new(10, 244, 0, 0));
        assert_eq!(std::format!("{c}"), "10.244.0.0/16");
    }
}

//! CIDR blocks and a small longest-prefix-match table over caller storage.
//!
//! Design note: `ipBlock` peers with `except` lists are compiled the way Cilium compiles
//! CIDR policy: every prefix any rule mentions (blocks and their exceptions) goes into
//! one sorted table, and a peer address is classified *once* by its longest matching
//! prefix. An address lies in block `C` minus exceptions `E…` exactly when its longest
//! match `M` (among all those prefixes) satisfies `M ⊆ C` and `M ⊄ Eᵢ` for every `i`, so
//! each rule can precompute the set of prefix indexes ("CIDR classes") it admits and the
//! per-packet test becomes a set membership, like for pod identities. The table is
//! sorted by (family, length, address) and looked up with one binary search per prefix
//! length present — a few steps for the handful of lengths real policies use. It is
//! self-contained so a faster LPM (the route module's) can replace it behind
//! [`PrefixTable::longest_match`].

use core::net::IpAddr;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// A prefix length longer than the address family allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BadPrefixLength;

impl Cidr {
    /// The prefix `addr/len`, host bits cleared; an error if `len` exceeds 32 (IPv4) or
    /// 128 (IPv6).
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, BadPrefixLength> {
        if len > max_len(addr) {
            return Err(BadPrefixLength);
        }
        let (v6, key) = key_of(addr);
        let masked = key & mask(v6, len);
        let addr = if v6 {
            IpAddr::V6(masked.into())
        } else {
            IpAddr::V4((masked as u32).into())
        };
        Ok(Cidr { addr, len })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True when `ip` lies in this prefix (always false across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v6, key) = key_of(ip);
        let (my_v6, my_key) = key_of(self.addr);
        v6 == my_v6 && key & mask(v6, self.len) == my_key
    }

    /// True when every address of `other` lies in this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    fn entry(&self) -> Prefix {
        let (v6, key) = key_of(self.addr);
        Prefix {
            v6,
            len: self.len,
            key,
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An address as (is IPv6, value right-aligned in 128 bits).
#[inline]
fn key_of(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// The network mask of a `len`-bit prefix in the family's right-aligned key.
#[inline]
fn mask(v6: bool, len: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let len = u32::from(len).min(width);
    let ones = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    if v6 {
        ones
    } else {
        ones >> 96
    }
}

/// One entry of a [`PrefixTable`] (caller storage element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Prefix {
    v6: bool,
    len: u8,
    key: u128,
}

impl Prefix {
    /// An unused slot, to fill caller storage with.
    pub const EMPTY: Prefix = Prefix {
        v6: false,
        len: 0,
        key: 0,
    };
}

/// The table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PrefixTableFull;

/// A sorted, duplicate-free set of prefixes with longest-prefix match, over caller
/// storage. The index of a prefix is stable only while no prefix is inserted.
#[derive(Debug)]
pub struct PrefixTable<'a> {
    slots: &'a mut [Prefix],
    len: usize,
    /// Bit `l` set: some IPv4 prefix of length `l` is present.
    v4_lengths: u64,
    /// Bit `l` (of 129) set: some IPv6 prefix of length `l` is present.
    v6_lengths: [u64; 3],
}

impl<'a> PrefixTable<'a> {
    /// An empty table over `slots`.
    pub fn new(slots: &'a mut [Prefix]) -> Self {
        PrefixTable {
            slots,
            len: 0,
            v4_lengths: 0,
            v6_lengths: [0; 3],
        }
    }

    /// Number of prefixes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no prefix is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.len = 0;
        self.v4_lengths = 0;
        self.v6_lengths = [0; 3];
    }

    fn entries(&self) -> &[Prefix] {
        self.slots.get(..self.len).unwrap_or(&[])
    }

    /// Inserts `cidr` (no-op if present); returns an error when the storage is full.
    pub fn insert(&mut self, cidr: Cidr) -> Result<(), PrefixTableFull> {
        let e = cidr.entry();
        let pos = match self.entries().binary_search(&e) {
            Ok(_) => return Ok(()),
            Err(pos) => pos,
        };
        if self.len >= self.slots.len() {
            return Err(PrefixTableFull);
        }
        let end = self.len + 1;
        if let Some(window) = self.slots.get_mut(pos..end) {
            window.rotate_right(1);
            if let Some(first) = window.first_mut() {
                *first = e;
            }
        }
        self.len = end;
        if e.v6 {
            if let Some(w) = self.v6_lengths.get_mut(usize::from(e.len / 64)) {
                *w |= 1 << (e.len % 64);
            }
        } else {
            self.v4_lengths |= 1 << e.len;
        }
        Ok(())
    }

    /// The index of `cidr` in the table, if present.
    pub fn index_of(&self, cidr: &Cidr) -> Option<usize> {
        self.entries().binary_search(&cidr.entry()).ok()
    }

    /// The prefix at `index` as a [`Cidr`].
    pub fn get(&self, index: usize) -> Option<Cidr> {
        let p = self.entries().get(index)?;
        let addr = if p.v6 {
            IpAddr::V6(p.key.into())
        } else {
            IpAddr::V4((p.key as u32).into())
        };
        Some(Cidr { addr, len: p.len })
    }

    /// The index of the longest prefix containing `ip`, if any.
    #[inline]
    pub fn longest_match(&self, ip: IpAddr) -> Option<usize> {
        let (v6, key) = key_of(ip);
        let entries = self.entries();
        if v6 {
            for word in (0..3usize).rev() {
                let mut bits = self.v6_lengths.get(word).copied().unwrap_or(0);
                while bits != 0 {
                    let top = 63 - bits.leading_zeros();
                    bits &= !(1u64 << top);
                    let len = (word as u32 * 64 + top) as u8;
                    if let Some(i) = find(entries, true, len, key) {
                        return Some(i);
                    }
                }
            }
        } else {
            let mut bits = self.v4_lengths;
            while bits != 0 {
                let top = 63 - bits.leading_zeros();
                bits &= !(1u64 << top);
                if let Some(i) = find(entries, false, top as u8, key) {
                    return Some(i);
                }
            }
        }
        None
    }
}

#[inline]
fn find(entries: &[Prefix], v6: bool, len: u8, key: u128) -> Option<usize> {
    let probe = Prefix {
        v6,
        len,
        key: key & mask(v6, len),
    };
    entries.binary_search(&probe).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
        Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len).unwrap()
    }

    #[test]
    fn cidr_masks_and_contains() {
        let c = v4(10, 1, 2, 3, 16);
        assert_eq!(c.addr(), IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)));
        assert!(c.contains(IpAddr::V4(Ipv4Addr::new(10, 1, 255, 1))));
        assert!(!c.contains(IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1))));
        assert!(!c.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(v4(0, 0, 0, 0, 0).contains(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert!(c.contains_cidr(&v4(10, 1, 7, 0, 24)));
        assert!(!v4(10, 1, 7, 0, 24).contains_cidr(&c));
        assert_eq!(
            Cidr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33),
            Err(BadPrefixLength)
        );
        let six = Cidr::new(IpAddr::V6("2001:db8::1".parse().unwrap()), 32).unwrap();
        assert!(six.contains(IpAddr::V6("2001:db8:ffff::".parse().unwrap())));
        assert!(Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
    }

    #[test]
    fn longest_match_prefers_longer_and_reports_full() {
        let mut slots = [Prefix::EMPTY; 3];
        let mut t = PrefixTable::new(&mut slots);
        t.insert(v4(192, 0, 2, 0, 24)).unwrap();
        t.insert(v4(192, 0, 2, 128, 25)).unwrap();
        t.insert(v4(192, 0, 2, 128, 25)).unwrap();
        t.insert(v4(0, 0, 0, 0, 0)).unwrap();
        assert_eq!(t.insert(v4(10, 0, 0, 0, 8)), Err(PrefixTableFull));
        let at = |a, b, c, d| {
            t.longest_match(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
                .and_then(|i| t.get(i))
        };
        assert_eq!(at(192, 0, 2, 200), Some(v4(192, 0, 2, 128, 25)));
        assert_eq!(at(192, 0, 2, 7), Some(v4(192, 0, 2, 0, 24)));
        assert_eq!(at(8, 8, 8, 8), Some(v4(0, 0, 0, 0, 0)));
        assert_eq!(t.longest_match(IpAddr::V6(Ipv6Addr::LOCALHOST)), None);
    }

    proptest! {
        #[test]
        fn longest_match_equals_linear_scan(
            prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..24),
            probes in proptest::collection::vec(any::<u32>(), 1..32),
        ) {
            let mut slots = [Prefix::EMPTY; 24];
            let mut t = PrefixTable::new(&mut slots);
            let cidrs: std::vec::Vec<Cidr> = prefixes
                .iter()
                .map(|&(a, l)| Cidr::new(IpAddr::V4(a.into()), l).unwrap())
                .collect();
            for c in &cidrs {
                t.insert(*c).unwrap();
            }
            for p in probes {
                // Probe near a prefix as well as at random.
                for ip in [p, cidrs.first().map_or(p, |c| match c.addr() {
                    IpAddr::V4(a) => u32::from(a) ^ (p & 0xff),
                    IpAddr::V6(_) => p,
                })] {
                    let ip = IpAddr::V4(ip.into());
                    let want = cidrs.iter().filter(|c| c.contains(ip)).max_by_key(|c| c.prefix_len());
                    let got = t.longest_match(ip).and_then(|i| t.get(i));
                    prop_assert_eq!(got, want.copied());
                }
            }
        }
    }
}

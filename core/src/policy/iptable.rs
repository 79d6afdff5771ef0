//! An exact-match map from IP address to a small value, over caller storage.
//!
//! Design note: the policy table needs two address lookups per new flow — the local
//! endpoint's compiled policy and the peer's identity (Cilium's "ipcache") — and both
//! are exact matches on pod IPs, so a hash table beats any tree: open addressing with
//! linear probing over one caller-owned slice, one cache line per probe in the common
//! case. Keys are hashed with the flow module's `fmix64` finaliser (seeded, so a table
//! layout is reproducible). Inserts are refused past 7/8 load, which keeps probe
//! sequences short and guarantees every miss ends at an empty slot; deletion shifts
//! later entries back instead of leaving tombstones, so the table never degrades.

use core::net::IpAddr;

use crate::flow::fmix64;

/// One slot of an [`IpTable`] (caller storage element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IpSlot<V>(Option<(IpAddr, V)>);

impl<V> IpSlot<V> {
    /// An empty slot, to fill caller storage with.
    pub const EMPTY: IpSlot<V> = IpSlot(None);
}

/// The table has reached its load limit (7/8 of its slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IpTableFull;

/// The hash seed of address tables (arbitrary, fixed so layouts are reproducible).
const SEED: u64 = 0x706f_6477_6972_6531;

/// An open-addressing map `IpAddr → V` over caller storage.
#[derive(Debug)]
pub struct IpTable<'a, V> {
    slots: &'a mut [IpSlot<V>],
    len: usize,
}

#[inline]
fn hash(addr: &IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => fmix64(SEED ^ u64::from(u32::from(*a))),
        IpAddr::V6(a) => {
            let v = u128::from(*a);
            fmix64(SEED ^ (v >> 64) as u64 ^ fmix64(v as u64))
        }
    }
}

impl<'a, V: Copy> IpTable<'a, V> {
    /// An empty table over `slots` (clears them).
    pub fn new(slots: &'a mut [IpSlot<V>]) -> Self {
        for s in slots.iter_mut() {
            *s = IpSlot::EMPTY;
        }
        IpTable { slots, len: 0 }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most entries the storage accepts (7/8 of its slots).
    pub fn capacity(&self) -> usize {
        self.slots.len() - self.slots.len() / 8 - usize::from(self.slots.len() % 8 != 0)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            *s = IpSlot::EMPTY;
        }
        self.len = 0;
    }

    #[inline]
    fn home(&self, addr: &IpAddr) -> usize {
        // Multiply-shift maps the hash onto 0..len without a division.
        ((u128::from(hash(addr)) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 >= self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The slot holding `addr`, or the empty slot where it would go.
    #[inline]
    fn probe(&self, addr: &IpAddr) -> Option<(usize, bool)> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(addr);
        for _ in 0..self.slots.len() {
            match self.slots.get(i)?.0 {
                None => return Some((i, false)),
                Some((k, _)) if k == *addr => return Some((i, true)),
                Some(_) => i = self.next(i),
            }
        }
        None
    }

    /// The value stored for `addr`.
    #[inline]
    pub fn get(&self, addr: &IpAddr) -> Option<V> {
        match self.probe(addr) {
            Some((i, true)) => self.slots.get(i).and_then(|s| s.0).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Stores `value` for `addr`, replacing an existing value.
    pub fn insert(&mut self, addr: IpAddr, value: V) -> Result<(), IpTableFull> {
        let (i, found) = self.probe(&addr).ok_or(IpTableFull)?;
        if !found && self.len + 1 > self.capacity() {
            return Err(IpTableFull);
        }
        let slot = self.slots.get_mut(i).ok_or(IpTableFull)?;
        *slot = IpSlot(Some((addr, value)));
        if !found {
            self.len += 1;
        }
        Ok(())
    }

    /// Removes `addr`, returning its value (backward-shift deletion, no tombstones).
    pub fn remove(&mut self, addr: &IpAddr) -> Option<V> {
        let (mut hole, found) = self.probe(addr)?;
        if !found {
            return None;
        }
        let old = self.slots.get_mut(hole)?.0.take().map(|(_, v)| v);
        self.len -= 1;
        let mut i = self.next(hole);
        while let Some(Some((k, _))) = self.slots.get(i).map(|s| s.0) {
            let home = self.home(&k);
            // Move the entry back if the hole lies cyclically between its home and it.
            let dist_entry = (i + self.slots.len() - home) % self.slots.len();
            let dist_hole = (hole + self.slots.len() - home) % self.slots.len();
            if dist_hole < dist_entry {
                let moved = self.slots.get_mut(i).map(|s| s.0.take());
                if let (Some(moved), Some(h)) = (moved, self.slots.get_mut(hole)) {
                    h.0 = moved;
                }
                hole = i;
            }
            i = self.next(i);
        }
        old
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, V)> + '_ {
        self.slots.iter().filter_map(|s| s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn insert_get_remove_and_full() {
        let mut slots = [IpSlot::EMPTY; 8];
        let mut t = IpTable::new(&mut slots);
        assert_eq!(t.capacity(), 7);
        for n in 0..7 {
            t.insert(ip(n), n).unwrap();
        }
        assert_eq!(t.insert(ip(99), 1), Err(IpTableFull));
        t.insert(ip(3), 33).unwrap(); // replacing is fine when full
        assert_eq!(t.get(&ip(3)), Some(33));
        assert_eq!(t.remove(&ip(3)), Some(33));
        assert_eq!(t.get(&ip(3)), None);
        assert_eq!(t.remove(&ip(3)), None);
        t.insert(ip(99), 1).unwrap();
        assert_eq!(t.len(), 7);
        let mut none: [IpSlot<u8>; 0] = [];
        let mut empty = IpTable::new(&mut none);
        assert_eq!(empty.get(&ip(1)), None);
        assert_eq!(empty.insert(ip(1), 1), Err(IpTableFull));
        assert_eq!(empty.remove(&ip(1)), None);
    }

    proptest! {
        #[test]
        fn behaves_like_a_hashmap(ops in proptest::collection::vec((any::<bool>(), 0u32..40, any::<u8>()), 0..200)) {
            let mut slots = [IpSlot::EMPTY; 37];
            let mut t = IpTable::new(&mut slots);
            let mut model = HashMap::new();
            for (insert, k, v) in ops {
                if insert {
                    let r = t.insert(ip(k), v);
                    if r.is_ok() {
                        model.insert(k, v);
                    } else {
                        prop_assert!(!model.contains_key(&k));
                        prop_assert_eq!(model.len(), t.capacity());
                    }
                } else {
                    prop_assert_eq!(t.remove(&ip(k)), model.remove(&k));
                }
                prop_assert_eq!(t.len(), model.len());
                for k in 0..40 {
                    prop_assert_eq!(t.get(&ip(k)), model.get(&k).copied());
                }
            }
        }
    }
}

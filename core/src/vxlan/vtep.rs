//! The VTEP table: which node sits behind which underlay address.
//!
//! Design note: the table is read on every packet in both directions — by node on
//! encapsulation (the route says "node 7", the table says where node 7 is) and by
//! underlay source address on decapsulation (anti-spoofing: a VXLAN frame from an
//! address that is no known node is dropped) — and written rarely, by the control plane.
//! So both lookups are O(1) expected and never scan the table:
//!
//! * The entries live densely in `slots[0..len]` (removal moves the last entry into the
//!   hole), so iteration is a plain slice walk.
//! * Two open-addressing hash indexes with linear probing map a node id and an underlay
//!   address to an entry position. Each index has **two buckets per slot**, so the load
//!   factor never exceeds 1/2 even when the table is full, probe sequences stay short,
//!   and there is always an empty bucket to end a probe. Deletion is backward-shift
//!   deletion (no tombstones), so a long-lived table that churns never degrades.
//! * Keys are hashed with [`fmix64`](crate::flow::fmix64) (node id; IPv4 address as its
//!   32-bit value; IPv6 as its two 64-bit halves) and reduced to a bucket by
//!   multiply-shift, without division. No seed is needed: only the control plane inserts
//!   keys, a remote sender can only choose which key to *look up*, and a miss stops at
//!   the first empty bucket.
//!
//! All memory is one caller-owned slice of [`VtepSlot`]s (entry + its share of both
//! indexes, 40-odd bytes), so the Linux agent sizes it for its cluster and the firmware
//! uses a static array. A full table is [`VtepError::Full`]. The underlay address is a
//! `core::net::IpAddr`, so IPv6 underlays are stored and looked up today; whether
//! encapsulation supports them is the encapsulator's business.

use core::net::{IpAddr, Ipv4Addr};

use crate::flow::fmix64;
use crate::ids::NodeId;
use crate::wire::EthernetAddress;

/// The largest number of entries a table holds, whatever its storage: one per possible
/// [`NodeId`].
pub const MAX_VTEPS: usize = 1 << 16;

/// A VXLAN tunnel endpoint: a node and how to reach it on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Vtep {
    /// The node behind this endpoint.
    pub node: NodeId,
    /// The node's underlay address (its InternalIP): outer destination on encap,
    /// the only accepted outer source on decap.
    pub ip: IpAddr,
    /// The outer destination MAC for frames to this node: the node's underlay NIC when
    /// it shares the L2 segment, otherwise the underlay gateway's.
    pub mac: EthernetAddress,
}

/// Why a VTEP table update failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VtepError {
    /// Every slot is in use.
    Full,
    /// The underlay address already belongs to another node (two nodes cannot share an
    /// address: decapsulation could not tell them apart).
    AddressInUse {
        /// The node that owns the address.
        node: NodeId,
    },
}

impl core::fmt::Display for VtepError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtepError::Full => f.write_str("VTEP table full"),
            VtepError::AddressInUse { node } => {
                write!(f, "underlay address in use by node {}", node.0)
            }
        }
    }
}

/// One unit of VTEP table storage: room for one entry and its share of the indexes.
///
/// Create storage as `[VtepSlot::EMPTY; N]`; the contents are managed by
/// [`VtepTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VtepSlot {
    entry: Vtep,
    by_node: [u32; 2],
    by_ip: [u32; 2],
}

impl VtepSlot {
    /// An unused slot.
    pub const EMPTY: VtepSlot = VtepSlot {
        entry: Vtep {
            node: NodeId(0),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            mac: EthernetAddress([0; 6]),
        },
        by_node: [0; 2],
        by_ip: [0; 2],
    };
}

impl Default for VtepSlot {
    fn default() -> VtepSlot {
        VtepSlot::EMPTY
    }
}

/// Which of the two indexes an operation works on.
#[derive(Clone, Copy)]
enum Index {
    Node,
    Ip,
}

/// A bucket probe result: `Ok(bucket)` holding the key, or `Err(bucket)`, the empty
/// bucket where the key would go.
type Probe = Result<usize, usize>;

/// The VTEP table: node ↔ underlay endpoint, over caller storage (see the module
/// documentation for the layout).
#[derive(Debug)]
pub struct VtepTable<'a> {
    slots: &'a mut [VtepSlot],
    len: usize,
}

impl<'a> VtepTable<'a> {
    /// An empty table over `storage` (its previous contents are discarded). Capacity is
    /// `storage.len()`, at most [`MAX_VTEPS`].
    pub fn new(storage: &'a mut [VtepSlot]) -> VtepTable<'a> {
        let cap = storage.len().min(MAX_VTEPS);
        let slots = &mut storage[..cap];
        for slot in slots.iter_mut() {
            *slot = VtepSlot::EMPTY;
        }
        VtepTable { slots, len: 0 }
    }

    /// How many entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many entries the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Vtep> + '_ {
        self.slots[..self.len].iter().map(|s| &s.entry)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot = VtepSlot::EMPTY;
        }
        self.len = 0;
    }

    /// The endpoint of `node`.
    #[inline]
    pub fn get(&self, node: NodeId) -> Option<&Vtep> {
        let b = self.probe_node(node).ok()?;
        self.entry_at(self.bucket(Index::Node, b))
    }

    /// The endpoint whose underlay address is `ip` (the decapsulation lookup).
    #[inline]
    pub fn get_by_ip(&self, ip: IpAddr) -> Option<&Vtep> {
        let b = self.probe_ip(ip).ok()?;
        self.entry_at(self.bucket(Index::Ip, b))
    }

    /// Inserts `vtep`, or updates the entry of `vtep.node`, returning the entry it
    /// replaced.
    ///
    /// Fails with [`VtepError::AddressInUse`] if another node has `vtep.ip`, and with
    /// [`VtepError::Full`] if the node is new and every slot is taken. A failed call
    /// leaves the table unchanged.
    pub fn insert(&mut self, vtep: Vtep) -> Result<Option<Vtep>, VtepError> {
        if self.slots.is_empty() {
            return Err(VtepError::Full);
        }
        let ip_probe = self.probe_ip(vtep.ip);
        match self.probe_node(vtep.node) {
            Ok(nb) => {
                let e = self.bucket(Index::Node, nb) as usize - 1;
                let old = self.slots[e].entry;
                match ip_probe {
                    Ok(ib) => {
                        let owner = self.bucket(Index::Ip, ib) as usize - 1;
                        if owner != e {
                            return Err(VtepError::AddressInUse {
                                node: self.slots[owner].entry.node,
                            });
                        }
                    }
                    Err(_) => {
                        // The address changes: unhook the old one, hook the new one.
                        if let Ok(old_ib) = self.probe_ip(old.ip) {
                            self.delete_bucket(Index::Ip, old_ib);
                        }
                        if let Err(free) = self.probe_ip(vtep.ip) {
                            self.set_bucket(Index::Ip, free, e as u32 + 1);
                        }
                    }
                }
                self.slots[e].entry = vtep;
                Ok(Some(old))
            }
            Err(node_free) => {
                let ip_free = match ip_probe {
                    Ok(ib) => {
                        let owner = self.bucket(Index::Ip, ib) as usize - 1;
                        return Err(VtepError::AddressInUse {
                            node: self.slots[owner].entry.node,
                        });
                    }
                    Err(free) => free,
                };
                if self.len >= self.slots.len() {
                    return Err(VtepError::Full);
                }
                let e = self.len;
                self.slots[e].entry = vtep;
                self.set_bucket(Index::Node, node_free, e as u32 + 1);
                self.set_bucket(Index::Ip, ip_free, e as u32 + 1);
                self.len += 1;
                Ok(None)
            }
        }
    }

    /// Removes the entry of `node`, returning it.
    pub fn remove(&mut self, node: NodeId) -> Option<Vtep> {
        let nb = self.probe_node(node).ok()?;
        let e = self.bucket(Index::Node, nb) as usize - 1;
        let removed = self.slots[e].entry;
        self.delete_bucket(Index::Node, nb);
        if let Ok(ib) = self.probe_ip(removed.ip) {
            self.delete_bucket(Index::Ip, ib);
        }
        // Keep the entries dense: move the last one into the hole and re-point its
        // index buckets.
        let last = self.len - 1;
        if e != last {
            let moved = self.slots[last].entry;
            self.slots[e].entry = moved;
            if let Ok(b) = self.probe_node(moved.node) {
                self.set_bucket(Index::Node, b, e as u32 + 1);
            }
            if let Ok(b) = self.probe_ip(moved.ip) {
                self.set_bucket(Index::Ip, b, e as u32 + 1);
            }
        }
        self.slots[last].entry = VtepSlot::EMPTY.entry;
        self.len = last;
        Some(removed)
    }

    /// Removes the entry whose underlay address is `ip`, returning it.
    pub fn remove_by_ip(&mut self, ip: IpAddr) -> Option<Vtep> {
        let node = self.get_by_ip(ip)?.node;
        self.remove(node)
    }

    // ---- index internals ----

    /// Number of buckets in each index.
    #[inline]
    fn buckets(&self) -> usize {
        self.slots.len() * 2
    }

    #[inline]
    fn bucket(&self, index: Index, b: usize) -> u32 {
        let slot = &self.slots[b >> 1];
        match index {
            Index::Node => slot.by_node[b & 1],
            Index::Ip => slot.by_ip[b & 1],
        }
    }

    #[inline]
    fn set_bucket(&mut self, index: Index, b: usize, value: u32) {
        let slot = &mut self.slots[b >> 1];
        match index {
            Index::Node => slot.by_node[b & 1] = value,
            Index::Ip => slot.by_ip[b & 1] = value,
        }
    }

    /// The entry a non-empty bucket value points at.
    #[inline]
    fn entry_at(&self, value: u32) -> Option<&Vtep> {
        let e = (value as usize).checked_sub(1)?;
        self.slots.get(e).map(|s| &s.entry)
    }

    /// Maps a 64-bit hash onto a bucket (multiply-shift, no division).
    #[inline]
    fn reduce(&self, hash: u64) -> usize {
        (((hash >> 32) * self.buckets() as u64) >> 32) as usize
    }

    #[inline]
    fn home(&self, index: Index, vtep: &Vtep) -> usize {
        match index {
            Index::Node => self.reduce(node_hash(vtep.node)),
            Index::Ip => self.reduce(ip_hash(vtep.ip)),
        }
    }

    #[inline]
    fn probe_node(&self, node: NodeId) -> Probe {
        self.probe(Index::Node, self.reduce(node_hash(node)), |v| {
            v.node == node
        })
    }

    #[inline]
    fn probe_ip(&self, ip: IpAddr) -> Probe {
        self.probe(Index::Ip, self.reduce(ip_hash(ip)), |v| v.ip == ip)
    }

    /// Linear probe from `home` until the key or an empty bucket. Terminates because
    /// at most half of the buckets are ever occupied.
    #[inline]
    fn probe(&self, index: Index, home: usize, is_key: impl Fn(&Vtep) -> bool) -> Probe {
        let n = self.buckets();
        if n == 0 {
            return Err(0);
        }
        let mut b = home;
        for _ in 0..n {
            let value = self.bucket(index, b);
            match self.entry_at(value) {
                None => return Err(b),
                Some(v) if is_key(v) => return Ok(b),
                Some(_) => {}
            }
            b += 1;
            if b == n {
                b = 0;
            }
        }
        Err(home) // unreachable while the load factor invariant holds
    }

    /// Empties bucket `hole` and shifts later members of its probe run back
    /// (backward-shift deletion), so no tombstones are needed.
    fn delete_bucket(&mut self, index: Index, mut hole: usize) {
        let n = self.buckets();
        let mut j = hole;
        for _ in 0..n {
            j += 1;
            if j == n {
                j = 0;
            }
            let value = self.bucket(index, j);
            let Some(entry) = self.entry_at(value) else {
                break;
            };
            let home = self.home(index, entry);
            // The entry at j may fill the hole iff the hole lies on its probe path,
            // i.e. in the cyclic range [home, j).
            let from_home = (j + n - home) % n;
            let from_hole = (j + n - hole) % n;
            if from_home >= from_hole {
                self.set_bucket(index, hole, value);
                hole = j;
            }
        }
        self.set_bucket(index, hole, 0);
    }
}

/// The index hash of a node id.
#[inline]
fn node_hash(node: NodeId) -> u64 {
    fmix64(u64::from(node.0) ^ 0x9e37_79b9_7f4a_7c15)
}

/// The index hash of an underlay address.
#[inline]
fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => fmix64(u64::from(u32::from_be_bytes(a.octets()))),
        IpAddr::V6(a) => {
            let v = u128::from_be_bytes(a.octets());
            fmix64(fmix64((v >> 64) as u64) ^ v as u64 ^ 0x6a09_e667_f3bc_c908)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv6Addr;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    fn v4(n: u16) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8))
    }

    fn vtep(node: u16, ip: IpAddr) -> Vtep {
        Vtep {
            node: NodeId(node),
            ip,
            mac: EthernetAddress([2, 0, 0, 0, (node >> 8) as u8, node as u8]),
        }
    }

    #[test]
    fn insert_lookup_update_remove() {
        let mut storage = [VtepSlot::EMPTY; 4];
        let mut t = VtepTable::new(&mut storage);
        assert_eq!(t.capacity(), 4);
        assert!(t.is_empty());
        assert_eq!(t.insert(vtep(1, v4(1))), Ok(None));
        assert_eq!(t.insert(vtep(2, v4(2))), Ok(None));
        assert_eq!(t.get(NodeId(1)), Some(&vtep(1, v4(1))));
        assert_eq!(t.get_by_ip(v4(2)), Some(&vtep(2, v4(2))));
        assert_eq!(t.get(NodeId(3)), None);
        assert_eq!(t.get_by_ip(v4(3)), None);

        // Update the address of node 1: the old address no longer maps.
        assert_eq!(t.insert(vtep(1, v4(9))), Ok(Some(vtep(1, v4(1)))));
        assert_eq!(t.get_by_ip(v4(1)), None);
        assert_eq!(t.get_by_ip(v4(9)).map(|v| v.node), Some(NodeId(1)));
        assert_eq!(t.len(), 2);

        // Another node may not take an address in use.
        assert_eq!(
            t.insert(vtep(3, v4(9))),
            Err(VtepError::AddressInUse { node: NodeId(1) })
        );
        assert_eq!(
            t.insert(vtep(2, v4(9))),
            Err(VtepError::AddressInUse { node: NodeId(1) })
        );
        assert_eq!(t.get(NodeId(2)), Some(&vtep(2, v4(2))));

        assert_eq!(t.remove(NodeId(1)), Some(vtep(1, v4(9))));
        assert_eq!(t.remove(NodeId(1)), None);
        assert_eq!(t.get_by_ip(v4(9)), None);
        assert_eq!(t.remove_by_ip(v4(2)), Some(vtep(2, v4(2))));
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_is_an_error_and_changes_nothing() {
        let mut storage = [VtepSlot::EMPTY; 3];
        let mut t = VtepTable::new(&mut storage);
        for n in 0..3 {
            t.insert(vtep(n, v4(n))).unwrap();
        }
        assert_eq!(t.insert(vtep(3, v4(3))), Err(VtepError::Full));
        assert_eq!(t.len(), 3);
        // Updating an existing node still works when full.
        assert_eq!(t.insert(vtep(2, v4(7))), Ok(Some(vtep(2, v4(2)))));
        for n in 0..2 {
            assert_eq!(t.get_by_ip(v4(n)).map(|v| v.node), Some(NodeId(n)));
        }
        let mut empty: [VtepSlot; 0] = [];
        let mut t = VtepTable::new(&mut empty);
        assert_eq!(t.insert(vtep(0, v4(0))), Err(VtepError::Full));
        assert_eq!(t.get(NodeId(0)), None);
        assert_eq!(t.get_by_ip(v4(0)), None);
        assert_eq!(t.remove(NodeId(0)), None);
    }

    #[test]
    fn ipv6_underlay_is_stored() {
        let mut storage = [VtepSlot::EMPTY; 2];
        let mut t = VtepTable::new(&mut storage);
        let ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        t.insert(vtep(5, ip)).unwrap();
        assert_eq!(t.get_by_ip(ip).map(|v| v.node), Some(NodeId(5)));
        assert_eq!(t.get_by_ip(v4(2)), None);
    }

    #[test]
    fn large_table_full_churn() {
        let mut storage = std::vec![VtepSlot::EMPTY; 4096];
        let mut t = VtepTable::new(&mut storage);
        for n in 0..4096u16 {
            t.insert(vtep(n, v4(n))).unwrap();
        }
        assert_eq!(t.insert(vtep(5000, v4(5000))), Err(VtepError::Full));
        for n in (0..4096u16).step_by(3) {
            assert_eq!(t.remove(NodeId(n)).map(|v| v.node), Some(NodeId(n)));
        }
        for n in 0..4096u16 {
            let expect = (n % 3 != 0).then_some(NodeId(n));
            assert_eq!(t.get_by_ip(v4(n)).map(|v| v.node), expect);
            assert_eq!(t.get(NodeId(n)).map(|v| v.node), expect);
        }
        assert_eq!(t.iter().count(), t.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u16),
        Remove(u16),
        RemoveByIp(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..24, 0u16..24).prop_map(|(n, a)| Op::Insert(n, a)),
            (0u16..24).prop_map(Op::Remove),
            (0u16..24).prop_map(Op::RemoveByIp),
        ]
    }

    proptest! {
        /// The table behaves like a pair of maps (node → entry, ip → node) of bounded
        /// size, whatever the sequence of operations.
        #[test]
        fn matches_a_model(cap in 0usize..12, ops in proptest::collection::vec(op(), 0..200)) {
            let mut storage = std::vec![VtepSlot::EMPTY; cap];
            let mut t = VtepTable::new(&mut storage);
            let mut model: HashMap<NodeId, Vtep> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(n, a) => {
                        let v = vtep(n, v4(a));
                        let owner = model.values().find(|x| x.ip == v.ip && x.node != v.node).map(|x| x.node);
                        let expect = if let Some(node) = owner {
                            Err(VtepError::AddressInUse { node })
                        } else if !model.contains_key(&v.node) && model.len() >= cap {
                            Err(VtepError::Full)
                        } else {
                            Ok(model.insert(v.node, v))
                        };
                        prop_assert_eq!(t.insert(v), expect);
                    }
                    Op::Remove(n) => prop_assert_eq!(t.remove(NodeId(n)), model.remove(&NodeId(n))),
                    Op::RemoveByIp(a) => {
                        let node = model.values().find(|x| x.ip == v4(a)).map(|x| x.node);
                        let expect = node.and_then(|n| model.remove(&n));
                        prop_assert_eq!(t.remove_by_ip(v4(a)), expect);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                for n in 0..24u16 {
                    prop_assert_eq!(t.get(NodeId(n)), model.get(&NodeId(n)));
                    let by_ip = model.values().find(|x| x.ip == v4(n));
                    prop_assert_eq!(t.get_by_ip(v4(n)), by_ip);
                }
                let mut listed: Vec<Vtep> = t.iter().copied().collect();
                listed.sort_by_key(|v| v.node);
                let mut expected: Vec<Vtep> = model.values().copied().collect();
                expected.sort_by_key(|v| v.node);
                prop_assert_eq!(listed, expected);
            }
        }
    }
}

//! The cluster pool: a cluster CIDR split into node blocks, each owned by one node.
//!
//! Design note: when podwire itself assigns pod CIDRs (the manifests and etcd
//! sources), the cluster CIDR (e.g. 10.244.0.0/16) is cut into equal blocks (e.g.
//! /24s) and each node claims one, as the Kubernetes node-IPAM controller does for
//! `spec.podCIDR`. Blocks are numbered by their position in the cluster CIDR, so the
//! owner of an address's block is one shift and one array read, which is what the
//! datapath needs on a miss; the table is a const-generic array of owners (`BLOCKS`
//! entries, 4 bytes each), so the agent and the firmware choose its size at compile
//! time and nothing allocates. A node owns at most one block (one `podCIDR` per
//! family); looking a node up is a linear scan, which is fine for a control-plane
//! operation over at most `BLOCKS` entries.

use super::family::{AddressFamily, Cidr, Ipv4};
use super::snapshot::{self, Reader, SnapshotError, Writer, CRC_LEN, HEADER_LEN};
use crate::ids::NodeId;

/// The magic bytes of a pool snapshot ("PWIP": podwire IPAM pool).
pub const POOL_MAGIC: [u8; 4] = *b"PWIP";

/// Bytes per claimed block in a pool snapshot: block index (u32) and node id (u16).
const ENTRY_LEN: usize = 6;

/// An IPv4 cluster pool of up to 1024 blocks (e.g. a /16 in /26s, or a /14 in /24s).
pub type Ipv4Pool1024 = ClusterPool<Ipv4, 1024>;
/// An IPv4 cluster pool of up to 256 blocks (e.g. a /16 in /24s).
pub type Ipv4Pool256 = ClusterPool<Ipv4, 256>;

/// Why a pool operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PoolError {
    /// The block prefix is outside the family's block range or shorter than the
    /// cluster prefix.
    BlockPrefixOutOfRange {
        /// The block prefix length given.
        block_prefix: u8,
    },
    /// The pool has more blocks than the table of this type holds.
    TooManyBlocks {
        /// log2 of the number of blocks the pool needs.
        block_bits: u8,
        /// Entries of the table.
        capacity: usize,
    },
    /// Every block is claimed.
    Exhausted,
    /// The block or address is not inside the cluster CIDR.
    NotInPool,
    /// The block's prefix length is not the pool's block prefix.
    WrongBlockSize {
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The block is claimed by another node.
    BlockTaken {
        /// The node that owns it.
        owner: NodeId,
    },
    /// The node already owns another block.
    NodeHasBlock {
        /// The index of the block it owns (see [`ClusterPool::block`]).
        index: u32,
    },
    /// The node owns no block.
    NodeHasNoBlock,
    /// The block is not claimed.
    NotClaimed,
}

impl core::fmt::Display for PoolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PoolError::BlockPrefixOutOfRange { block_prefix } => {
                write!(f, "block prefix /{block_prefix} out of range for this pool")
            }
            PoolError::TooManyBlocks {
                block_bits,
                capacity,
            } => write!(
                f,
                "pool needs 2^{block_bits} blocks, table holds {capacity}"
            ),
            PoolError::Exhausted => f.write_str("pool exhausted: every block is claimed"),
            PoolError::NotInPool => f.write_str("outside the cluster CIDR"),
            PoolError::WrongBlockSize { prefix_len } => {
                write!(f, "block /{prefix_len} is not of the pool's block size")
            }
            PoolError::BlockTaken { owner } => write!(f, "block owned by node {}", owner.0),
            PoolError::NodeHasBlock { index } => write!(f, "node already owns block #{index}"),
            PoolError::NodeHasNoBlock => f.write_str("node owns no block"),
            PoolError::NotClaimed => f.write_str("block not claimed"),
        }
    }
}

impl core::error::Error for PoolError {}

/// A cluster CIDR split into blocks of one prefix length, with the owner of each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterPool<F: AddressFamily, const BLOCKS: usize> {
    cluster: Cidr<F>,
    block_prefix: u8,
    /// Number of blocks in the cluster CIDR (at most `BLOCKS`).
    block_count: u32,
    /// Number of `Some` entries in `owners`.
    claimed: u32,
    /// Owner of block `i` (entries at or past `block_count` are always `None`).
    owners: [Option<NodeId>; BLOCKS],
}

#[cfg(feature = "defmt")]
impl<F: AddressFamily, const BLOCKS: usize> defmt::Format for ClusterPool<F, BLOCKS> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "ClusterPool {{ cluster: {}/{}, block_prefix: {}, claimed: {}/{} }}",
            self.cluster.network(),
            self.cluster.prefix_len(),
            self.block_prefix,
            self.claimed,
            self.block_count
        )
    }
}

impl<F: AddressFamily, const BLOCKS: usize> ClusterPool<F, BLOCKS> {
    /// The largest snapshot a pool of this type can produce (every block claimed).
    pub const MAX_SNAPSHOT_LEN: usize = HEADER_LEN + F::ADDR_LEN + 4 + BLOCKS * ENTRY_LEN + CRC_LEN;

    /// An empty pool splitting `cluster` into blocks of `block_prefix`.
    pub fn new(cluster: Cidr<F>, block_prefix: u8) -> Result<Self, PoolError> {
        let block_count = block_count::<F>(cluster.prefix_len(), block_prefix, BLOCKS)?;
        Ok(ClusterPool {
            cluster,
            block_prefix,
            block_count,
            claimed: 0,
            owners: [None; BLOCKS],
        })
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> Cidr<F> {
        self.cluster
    }

    /// The prefix length of every block.
    pub fn block_prefix(&self) -> u8 {
        self.block_prefix
    }

    /// Number of blocks in the cluster CIDR.
    pub fn block_count(&self) -> u32 {
        self.block_count
    }

    /// Number of claimed blocks.
    pub fn claimed(&self) -> u32 {
        self.claimed
    }

    /// Number of unclaimed blocks.
    pub fn free_blocks(&self) -> u32 {
        self.block_count - self.claimed
    }

    /// Block number `index` (0 is the first block of the cluster CIDR).
    pub fn block(&self, index: u32) -> Option<Cidr<F>> {
        if index >= self.block_count {
            return None;
        }
        let shift = u32::from(F::BITS - self.block_prefix);
        let offset = u128::from(index).checked_shl(shift)?;
        Cidr::new(self.cluster.addr_at(offset), self.block_prefix).ok()
    }

    /// The index of `block` in the pool.
    pub fn index_of(&self, block: Cidr<F>) -> Result<u32, PoolError> {
        if block.prefix_len() != self.block_prefix {
            return Err(PoolError::WrongBlockSize {
                prefix_len: block.prefix_len(),
            });
        }
        self.index_of_addr(block.network())
            .ok_or(PoolError::NotInPool)
    }

    /// Claims a block for `node`: the block it already owns if any (so a restarted
    /// node gets its block back), otherwise the lowest unclaimed block.
    pub fn claim(&mut self, node: NodeId) -> Result<Cidr<F>, PoolError> {
        let index = match self.position(node) {
            Some(index) => index,
            None => {
                let index = self
                    .owners
                    .iter()
                    .take(self.block_count as usize)
                    .position(Option::is_none)
                    .ok_or(PoolError::Exhausted)?;
                self.set_owner(index, Some(node));
                index
            }
        };
        self.block(index as u32).ok_or(PoolError::NotInPool)
    }

    /// Claims the given block for `node` (e.g. a `podCIDR` assigned elsewhere).
    /// Succeeds without change if `node` already owns exactly this block.
    pub fn claim_block(&mut self, node: NodeId, block: Cidr<F>) -> Result<(), PoolError> {
        let index = self.index_of(block)? as usize;
        match self.owners.get(index).copied().flatten() {
            Some(owner) if owner == node => return Ok(()),
            Some(owner) => return Err(PoolError::BlockTaken { owner }),
            None => {}
        }
        if let Some(other) = self.position(node) {
            return Err(PoolError::NodeHasBlock {
                index: other as u32,
            });
        }
        self.set_owner(index, Some(node));
        Ok(())
    }

    /// Releases the block `node` owns and returns it.
    pub fn release(&mut self, node: NodeId) -> Result<Cidr<F>, PoolError> {
        let index = self.position(node).ok_or(PoolError::NodeHasNoBlock)?;
        self.set_owner(index, None);
        self.block(index as u32).ok_or(PoolError::NotInPool)
    }

    /// Releases `block` whoever owns it and returns its former owner.
    pub fn release_block(&mut self, block: Cidr<F>) -> Result<NodeId, PoolError> {
        let index = self.index_of(block)? as usize;
        let owner = self
            .owners
            .get(index)
            .copied()
            .flatten()
            .ok_or(PoolError::NotClaimed)?;
        self.set_owner(index, None);
        Ok(owner)
    }

    /// The block `node` owns.
    pub fn block_of(&self, node: NodeId) -> Option<Cidr<F>> {
        self.block(self.position(node)? as u32)
    }

    /// The node owning the block that contains `addr` (O(1)).
    pub fn owner_of(&self, addr: F::Addr) -> Option<NodeId> {
        let index = self.index_of_addr(addr)?;
        self.owners.get(index as usize).copied().flatten()
    }

    /// The owner of `block`, or `None` if it is unclaimed.
    pub fn owner_of_block(&self, block: Cidr<F>) -> Result<Option<NodeId>, PoolError> {
        let index = self.index_of(block)?;
        Ok(self.owners.get(index as usize).copied().flatten())
    }

    /// The claimed blocks and their owners, in ascending block order.
    pub fn iter(&self) -> Claims<'_, F, BLOCKS> {
        Claims {
            pool: self,
            index: 0,
        }
    }

    /// The length of this pool's snapshot (see the [`ipam`](super) module docs).
    pub fn snapshot_len(&self) -> usize {
        HEADER_LEN + F::ADDR_LEN + 4 + self.claimed as usize * ENTRY_LEN + CRC_LEN
    }

    /// Writes the snapshot into `out`; returns the number of bytes written
    /// (`snapshot_len()`), or `BufferTooSmall`.
    pub fn to_bytes(&self, out: &mut [u8]) -> Result<usize, SnapshotError> {
        let len = self.snapshot_len();
        let mut w = Writer::new(out, len)?;
        w.put(&POOL_MAGIC)?;
        w.put(&[
            snapshot::SNAPSHOT_VERSION,
            F::TAG,
            self.cluster.prefix_len(),
            self.block_prefix,
        ])?;
        let declared =
            u32::try_from(len).map_err(|_| SnapshotError::BadLength { declared: len })?;
        w.put(&declared.to_be_bytes())?;
        w.put_addr_bits(F::to_bits(self.cluster.network()), F::ADDR_LEN)?;
        w.put(&self.claimed.to_be_bytes())?;
        for (index, owner) in self.owners.iter().enumerate() {
            if let Some(node) = owner {
                w.put(&(index as u32).to_be_bytes())?;
                w.put(&node.0.to_be_bytes())?;
            }
        }
        w.seal()
    }

    /// Restores a pool from a snapshot written by [`to_bytes`](Self::to_bytes).
    /// The whole snapshot is checked (envelope, then every invariant) before the
    /// value is returned; any defect is an error naming it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let env = snapshot::open(bytes, POOL_MAGIC, F::TAG)?;
        let (cluster_prefix, block_prefix) = (env.b6, env.b7);
        if cluster_prefix > F::BITS {
            return Err(SnapshotError::PrefixOutOfRange {
                prefix_len: cluster_prefix,
            });
        }
        let block_count =
            block_count::<F>(cluster_prefix, block_prefix, BLOCKS).map_err(|e| match e {
                PoolError::TooManyBlocks { block_bits, .. } => {
                    SnapshotError::TooManyBlocks { block_bits }
                }
                _ => SnapshotError::PrefixOutOfRange {
                    prefix_len: block_prefix,
                },
            })?;
        let mut r: Reader<'_> = env.body;
        let short = SnapshotError::LengthMismatch {
            declared: env.len,
            expected: HEADER_LEN + F::ADDR_LEN + 4 + CRC_LEN,
        };
        let network = r.addr_bits(F::ADDR_LEN).ok_or(short)?;
        let claimed = r.u32().ok_or(short)?;
        let expected = (claimed as usize)
            .checked_mul(ENTRY_LEN)
            .and_then(|n| n.checked_add(HEADER_LEN + F::ADDR_LEN + 4 + CRC_LEN))
            .unwrap_or(usize::MAX);
        let mismatch = SnapshotError::LengthMismatch {
            declared: env.len,
            expected,
        };
        if env.len != expected {
            return Err(mismatch);
        }
        let cluster = Cidr::new(F::from_bits(network), cluster_prefix)
            .map_err(|_| SnapshotError::HostBitsSet)?;
        let entries = r.take(claimed as usize * ENTRY_LEN).ok_or(mismatch)?;
        let mut owners = [None; BLOCKS];
        let mut previous: Option<u32> = None;
        for entry in entries.chunks_exact(ENTRY_LEN) {
            let mut e = Reader::new(entry);
            let index = e.u32().ok_or(mismatch)?;
            let node = NodeId(e.u16().ok_or(mismatch)?);
            if index >= block_count {
                return Err(SnapshotError::BlockIndexOutOfRange { index });
            }
            if previous.is_some_and(|p| index <= p) {
                return Err(SnapshotError::EntriesNotSorted { index });
            }
            previous = Some(index);
            if let Some(slot) = owners.get_mut(index as usize) {
                *slot = Some(node);
            }
        }
        if let Some(node) = duplicate_node(entries) {
            return Err(SnapshotError::DuplicateNode { node });
        }
        Ok(ClusterPool {
            cluster,
            block_prefix,
            block_count,
            claimed,
            owners,
        })
    }

    fn index_of_addr(&self, addr: F::Addr) -> Option<u32> {
        let offset = self.cluster.offset_of(addr)?;
        let index = offset.checked_shr(u32::from(F::BITS - self.block_prefix))?;
        u32::try_from(index).ok()
    }

    fn position(&self, node: NodeId) -> Option<usize> {
        self.owners
            .iter()
            .take(self.block_count as usize)
            .position(|o| *o == Some(node))
    }

    fn set_owner(&mut self, index: usize, owner: Option<NodeId>) {
        if let Some(slot) = self.owners.get_mut(index) {
            match (slot.is_some(), owner.is_some()) {
                (false, true) => self.claimed += 1,
                (true, false) => self.claimed -= 1,
                _ => {}
            }
            *slot = owner;
        }
    }
}

/// The claimed blocks of a pool with their owners (from [`ClusterPool::iter`]).
#[derive(Debug, Clone)]
pub struct Claims<'a, F: AddressFamily, const BLOCKS: usize> {
    pool: &'a ClusterPool<F, BLOCKS>,
    index: u32,
}

impl<F: AddressFamily, const BLOCKS: usize> Iterator for Claims<'_, F, BLOCKS> {
    type Item = (Cidr<F>, NodeId);

    fn next(&mut self) -> Option<Self::Item> {
        while self.index < self.pool.block_count {
            let index = self.index;
            self.index += 1;
            if let Some(Some(node)) = self.pool.owners.get(index as usize) {
                return Some((self.pool.block(index)?, *node));
            }
        }
        None
    }
}

/// The number of blocks of `block_prefix` in a cluster of `cluster_prefix`, if it is
/// a valid split that fits a table of `capacity` entries.
fn block_count<F: AddressFamily>(
    cluster_prefix: u8,
    block_prefix: u8,
    capacity: usize,
) -> Result<u32, PoolError> {
    if !(F::MIN_BLOCK_PREFIX..=F::MAX_BLOCK_PREFIX).contains(&block_prefix)
        || block_prefix < cluster_prefix
    {
        return Err(PoolError::BlockPrefixOutOfRange { block_prefix });
    }
    let block_bits = block_prefix - cluster_prefix;
    let too_many = PoolError::TooManyBlocks {
        block_bits,
        capacity,
    };
    let count = 1u32.checked_shl(u32::from(block_bits)).ok_or(too_many)?;
    if count as usize > capacity || block_bits >= 32 {
        return Err(too_many);
    }
    Ok(count)
}

/// A node id appearing in two entries of a pool snapshot, if any.
fn duplicate_node(entries: &[u8]) -> Option<NodeId> {
    let nodes = entries
        .chunks_exact(ENTRY_LEN)
        .filter_map(|e| Some(NodeId(u16::from_be_bytes([*e.get(4)?, *e.get(5)?]))));
    if entries.len() / ENTRY_LEN <= 256 {
        // Few entries: quadratic, no scratch memory.
        for (i, a) in nodes.clone().enumerate() {
            if nodes.clone().take(i).any(|b| b == a) {
                return Some(a);
            }
        }
        None
    } else {
        duplicate_node_bitset(nodes)
    }
}

/// Duplicate detection with an 8 KiB set of every `u16` node id; kept out of line so
/// its stack frame exists only for pools of more than 256 claimed blocks.
#[inline(never)]
fn duplicate_node_bitset(nodes: impl Iterator<Item = NodeId>) -> Option<NodeId> {
    let mut seen = [0u64; 1024];
    for node in nodes {
        let word = seen.get_mut(usize::from(node.0 / 64))?;
        let bit = 1u64 << (node.0 % 64);
        if *word & bit != 0 {
            return Some(node);
        }
        *word |= bit;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    fn cidr(a: u8, b: u8, c: u8, d: u8, p: u8) -> Cidr<Ipv4> {
        Cidr::new(Ipv4Addr::new(a, b, c, d), p).unwrap()
    }

    fn pool() -> Ipv4Pool256 {
        ClusterPool::new(cidr(10, 244, 0, 0, 16), 24).unwrap()
    }

    fn snapshot_of<const B: usize>(p: &ClusterPool<Ipv4, B>) -> Vec<u8> {
        let mut v = std::vec![0u8; p.snapshot_len()];
        assert_eq!(p.to_bytes(&mut v), Ok(v.len()));
        v
    }

    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len();
        let crc = snapshot::crc32(&bytes[..n - 4]).to_be_bytes();
        bytes[n - 4..].copy_from_slice(&crc);
    }

    #[test]
    fn splits_claims_and_looks_up() {
        let mut p = pool();
        assert_eq!(p.block_count(), 256);
        assert_eq!(p.claim(NodeId(7)), Ok(cidr(10, 244, 0, 0, 24)));
        assert_eq!(p.claim(NodeId(8)), Ok(cidr(10, 244, 1, 0, 24)));
        // Idempotent: a node gets its own block back.
        assert_eq!(p.claim(NodeId(7)), Ok(cidr(10, 244, 0, 0, 24)));
        assert_eq!(p.claimed(), 2);
        assert_eq!(p.claim_block(NodeId(9), cidr(10, 244, 200, 0, 24)), Ok(()));
        assert_eq!(p.block_of(NodeId(9)), Some(cidr(10, 244, 200, 0, 24)));
        assert_eq!(p.owner_of(Ipv4Addr::new(10, 244, 200, 77)), Some(NodeId(9)));
        assert_eq!(p.owner_of(Ipv4Addr::new(10, 244, 2, 1)), None);
        assert_eq!(p.owner_of(Ipv4Addr::new(10, 245, 0, 1)), None);
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            [
                (cidr(10, 244, 0, 0, 24), NodeId(7)),
                (cidr(10, 244, 1, 0, 24), NodeId(8)),
                (cidr(10, 244, 200, 0, 24), NodeId(9)),
            ]
        );
        assert_eq!(p.release(NodeId(8)), Ok(cidr(10, 244, 1, 0, 24)));
        assert_eq!(p.release(NodeId(8)), Err(PoolError::NodeHasNoBlock));
        // The lowest free block is reused.
        assert_eq!(p.claim(NodeId(10)), Ok(cidr(10, 244, 1, 0, 24)));
        assert_eq!(p.release_block(cidr(10, 244, 200, 0, 24)), Ok(NodeId(9)));
        assert_eq!(
            p.release_block(cidr(10, 244, 200, 0, 24)),
            Err(PoolError::NotClaimed)
        );
        assert_eq!(p.free_blocks(), 254);
    }

    #[test]
    fn claim_block_errors() {
        let mut p = pool();
        p.claim_block(NodeId(1), cidr(10, 244, 5, 0, 24)).unwrap();
        assert_eq!(p.claim_block(NodeId(1), cidr(10, 244, 5, 0, 24)), Ok(()));
        assert_eq!(
            p.claim_block(NodeId(2), cidr(10, 244, 5, 0, 24)),
            Err(PoolError::BlockTaken { owner: NodeId(1) })
        );
        assert_eq!(
            p.claim_block(NodeId(1), cidr(10, 244, 6, 0, 24)),
            Err(PoolError::NodeHasBlock { index: 5 })
        );
        assert_eq!(
            p.claim_block(NodeId(2), cidr(10, 245, 6, 0, 24)),
            Err(PoolError::NotInPool)
        );
        assert_eq!(
            p.claim_block(NodeId(2), cidr(10, 244, 6, 0, 25)),
            Err(PoolError::WrongBlockSize { prefix_len: 25 })
        );
        assert_eq!(
            p.owner_of_block(cidr(10, 244, 5, 0, 24)),
            Ok(Some(NodeId(1)))
        );
        assert_eq!(p.owner_of_block(cidr(10, 244, 6, 0, 24)), Ok(None));
    }

    #[test]
    fn exhaustion_and_shape_errors() {
        let mut p: ClusterPool<Ipv4, 4> = ClusterPool::new(cidr(10, 244, 0, 0, 22), 24).unwrap();
        for n in 0..4 {
            p.claim(NodeId(n)).unwrap();
        }
        assert_eq!(p.claim(NodeId(4)), Err(PoolError::Exhausted));
        assert_eq!(
            ClusterPool::<Ipv4, 4>::new(cidr(10, 244, 0, 0, 21), 24),
            Err(PoolError::TooManyBlocks {
                block_bits: 3,
                capacity: 4
            })
        );
        assert_eq!(
            Ipv4Pool256::new(cidr(10, 244, 0, 0, 16), 31),
            Err(PoolError::BlockPrefixOutOfRange { block_prefix: 31 })
        );
        assert_eq!(
            Ipv4Pool256::new(cidr(10, 244, 0, 0, 16), 15),
            Err(PoolError::BlockPrefixOutOfRange { block_prefix: 15 })
        );
        // A pool smaller than the table leaves the tail unused.
        let mut small: Ipv4Pool256 = ClusterPool::new(cidr(10, 244, 0, 0, 24), 26).unwrap();
        assert_eq!(small.block_count(), 4);
        assert_eq!(small.block(3), Some(cidr(10, 244, 0, 192, 26)));
        assert_eq!(small.block(4), None);
        for n in 0..4 {
            small.claim(NodeId(n)).unwrap();
        }
        assert_eq!(small.claim(NodeId(9)), Err(PoolError::Exhausted));
    }

    #[test]
    fn snapshot_byte_vector() {
        let mut p = pool();
        p.claim_block(NodeId(0x0102), cidr(10, 244, 3, 0, 24))
            .unwrap();
        let bytes = snapshot_of(&p);
        let body: &[u8] = &[
            b'P', b'W', b'I', b'P', 1, 4, 16, 24, // magic, version, family, prefixes
            0, 0, 0, 30, // total length
            10, 244, 0, 0, // cluster network
            0, 0, 0, 1, // claimed
            0, 0, 0, 3, 1, 2, // block 3 -> node 0x0102
        ];
        assert_eq!(&bytes[..bytes.len() - 4], body);
        assert_eq!(bytes[26..], snapshot::crc32(body).to_be_bytes());
        assert_eq!(Ipv4Pool256::from_bytes(&bytes), Ok(p));
    }

    #[test]
    fn snapshot_rejects_each_defect_by_name() {
        let mut p = pool();
        p.claim_block(NodeId(1), cidr(10, 244, 3, 0, 24)).unwrap();
        p.claim_block(NodeId(2), cidr(10, 244, 9, 0, 24)).unwrap();
        let good = snapshot_of(&p);
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            reseal(&mut v);
            Ipv4Pool256::from_bytes(&v)
        };
        assert!(matches!(
            Ipv4Pool256::from_bytes(&good[..good.len() - 1]),
            Err(SnapshotError::Truncated { .. })
        ));
        assert_eq!(
            edit(&|v| v[6] = 33),
            Err(SnapshotError::PrefixOutOfRange { prefix_len: 33 })
        );
        assert_eq!(
            edit(&|v| v[7] = 15),
            Err(SnapshotError::PrefixOutOfRange { prefix_len: 15 })
        );
        assert_eq!(
            edit(&|v| v[6] = 15),
            Err(SnapshotError::TooManyBlocks { block_bits: 9 })
        );
        assert_eq!(edit(&|v| v[15] = 1), Err(SnapshotError::HostBitsSet));
        assert_eq!(
            edit(&|v| v[19] = 3),
            Err(SnapshotError::LengthMismatch {
                declared: 36,
                expected: 42
            })
        );
        assert_eq!(
            edit(&|v| v[29] = 0),
            Err(SnapshotError::EntriesNotSorted { index: 0 })
        );
        assert_eq!(
            edit(&|v| v[29] = 3),
            Err(SnapshotError::EntriesNotSorted { index: 3 })
        );
        assert_eq!(
            edit(&|v| v[28] = 1),
            Err(SnapshotError::BlockIndexOutOfRange { index: 265 })
        );
        assert_eq!(
            edit(&|v| v[31] = 1),
            Err(SnapshotError::DuplicateNode { node: NodeId(1) })
        );
        // A 1024-block snapshot does not fit a 256-entry table.
        let big: Ipv4Pool1024 = ClusterPool::new(cidr(10, 244, 0, 0, 16), 26).unwrap();
        assert_eq!(
            Ipv4Pool256::from_bytes(&snapshot_of(&big)),
            Err(SnapshotError::TooManyBlocks { block_bits: 10 })
        );
    }

    #[test]
    fn duplicate_detection_on_large_pools() {
        let mut p: Ipv4Pool1024 = ClusterPool::new(cidr(10, 244, 0, 0, 16), 26).unwrap();
        for n in 0..600 {
            p.claim(NodeId(n * 97)).unwrap();
        }
        let bytes = snapshot_of(&p);
        assert_eq!(Ipv4Pool1024::from_bytes(&bytes).as_ref(), Ok(&p));
        let mut v = bytes.clone();
        // Entry 500's node := entry 3's node.
        let (a, b) = (20 + 3 * 6 + 4, 20 + 500 * 6 + 4);
        v[b] = v[a];
        v[b + 1] = v[a + 1];
        reseal(&mut v);
        assert_eq!(
            Ipv4Pool1024::from_bytes(&v),
            Err(SnapshotError::DuplicateNode {
                node: NodeId(3 * 97)
            })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(u16),
        ClaimBlock(u16, u32),
        Release(u16),
        ReleaseBlock(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u16..24).prop_map(Op::Claim),
            2 => (0u16..24, 0u32..20).prop_map(|(n, b)| Op::ClaimBlock(n, b)),
            2 => (0u16..24).prop_map(Op::Release),
            1 => (0u32..20).prop_map(Op::ReleaseBlock),
        ]
    }

    /// A /20 in /24s (16 blocks) driven against a map model.
    fn run(ops: &[Op]) -> ClusterPool<Ipv4, 16> {
        let mut p: ClusterPool<Ipv4, 16> = ClusterPool::new(cidr(10, 244, 16, 0, 20), 24).unwrap();
        let mut m: BTreeMap<u32, u16> = BTreeMap::new();
        let block = |i: u32| cidr(10, 244, 16 + i as u8, 0, 24);
        let find =
            |m: &BTreeMap<u32, u16>, n: u16| m.iter().find(|(_, &o)| o == n).map(|(&i, _)| i);
        for op in ops {
            match *op {
                Op::Claim(n) => {
                    let want = match find(&m, n) {
                        Some(i) => Ok(block(i)),
                        None => match (0..16).find(|i| !m.contains_key(i)) {
                            Some(i) => {
                                m.insert(i, n);
                                Ok(block(i))
                            }
                            None => Err(PoolError::Exhausted),
                        },
                    };
                    assert_eq!(p.claim(NodeId(n)), want);
                }
                Op::ClaimBlock(n, i) => {
                    let want = if i >= 16 {
                        Err(PoolError::NotInPool)
                    } else {
                        match (m.get(&i), find(&m, n)) {
                            (Some(&o), _) if o == n => Ok(()),
                            (Some(&o), _) => Err(PoolError::BlockTaken { owner: NodeId(o) }),
                            (None, Some(other)) => Err(PoolError::NodeHasBlock { index: other }),
                            (None, None) => {
                                m.insert(i, n);
                                Ok(())
                            }
                        }
                    };
                    let c = Cidr::new(Ipv4Addr::new(10, 244, 16 + i as u8, 0), 24).unwrap();
                    assert_eq!(p.claim_block(NodeId(n), c), want);
                }
                Op::Release(n) => {
                    let want = match find(&m, n) {
                        Some(i) => {
                            m.remove(&i);
                            Ok(block(i))
                        }
                        None => Err(PoolError::NodeHasNoBlock),
                    };
                    assert_eq!(p.release(NodeId(n)), want);
                }
                Op::ReleaseBlock(i) => {
                    let c = Cidr::new(Ipv4Addr::new(10, 244, 16 + i as u8, 0), 24).unwrap();
                    let want = if i >= 16 {
                        Err(PoolError::NotInPool)
                    } else {
                        m.remove(&i).map(NodeId).ok_or(PoolError::NotClaimed)
                    };
                    assert_eq!(p.release_block(c), want);
                }
            }
            assert_eq!(p.claimed() as usize, m.len());
        }
        let listed: Vec<_> = p.iter().collect();
        let modelled: Vec<_> = m.iter().map(|(&i, &n)| (block(i), NodeId(n))).collect();
        assert_eq!(listed, modelled);
        for (&i, &n) in &m {
            assert_eq!(
                p.owner_of(Ipv4Addr::new(10, 244, 16 + i as u8, 200)),
                Some(NodeId(n))
            );
            assert_eq!(p.block_of(NodeId(n)), Some(block(i)));
        }
        p
    }

    proptest! {
        #[test]
        fn matches_the_model(ops in proptest::collection::vec(op(), 0..200)) {
            run(&ops);
        }

        #[test]
        fn snapshot_round_trips(ops in proptest::collection::vec(op(), 0..100)) {
            let p = run(&ops);
            let bytes = snapshot_of(&p);
            let restored = ClusterPool::<Ipv4, 16>::from_bytes(&bytes);
            prop_assert_eq!(restored.as_ref(), Ok(&p));
            prop_assert_eq!(snapshot_of(&restored.unwrap()), bytes);
        }

        #[test]
        fn any_bit_flip_or_truncation_is_rejected(
            ops in proptest::collection::vec(op(), 0..100),
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let p = run(&ops);
            let bytes = snapshot_of(&p);
            let bit = flip.index(bytes.len() * 8);
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ClusterPool::<Ipv4, 16>::from_bytes(&flipped).is_err());
            let len = cut.index(bytes.len());
            prop_assert!(ClusterPool::<Ipv4, 16>::from_bytes(&bytes[..len]).is_err());
        }
    }
}

//! The address allocator of one pod CIDR block: a fixed-size bitmap with next-fit.
//!
//! Design note: a node hands out pod addresses from its block (e.g. 10.244.1.0/24).
//! A bitmap is the densest exact representation (a /16 is 8 KiB, a /24 is 32 bytes),
//! its size is a const generic so the Linux agent and the firmware pick their shape at
//! compile time and nothing allocates, and every operation works on whole `u64` words
//! (`trailing_zeros`, `count_ones`), so finding a free address in a nearly full /16 is
//! a scan of at most 1024 words, never of 65536 bits. Reserved addresses (network,
//! gateway, broadcast) are never stored in the bitmap: they are masked in per word
//! while searching, so a snapshot's bitmap holds exactly the pods' addresses.
//!
//! Allocation is *next-fit*, as in the CNI `host-local` plugin: the search starts just
//! after the last address handed out by [`BlockAllocator::allocate`] and wraps around,
//! so an address that was just released (whose old owner may still be in other
//! nodes' caches, conntrack or DNS) is not handed out again until the whole range has
//! cycled. Allocating a specific address does not move this cursor.

use super::family::{AddressFamily, Cidr, Ipv4};
use super::snapshot::{self, Reader, SnapshotError, Writer, CRC_LEN, HEADER_LEN};

/// The magic bytes of a block snapshot ("PWIB": podwire IPAM block).
pub const BLOCK_MAGIC: [u8; 4] = *b"PWIB";

/// An IPv4 block allocator sized for any block from /16 to /30 (8 KiB bitmap).
pub type Ipv4Block16 = BlockAllocator<Ipv4, 1024>;
/// An IPv4 block allocator sized for blocks from /24 to /30 (32-byte bitmap), for firmware.
pub type Ipv4Block24 = BlockAllocator<Ipv4, 4>;

/// Why a block operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockError {
    /// The block prefix is outside the family's block range (IPv4: /16 to /30).
    PrefixOutOfRange {
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The block has more addresses than the bitmap of this type can hold.
    BlockTooLarge {
        /// The prefix length given.
        prefix_len: u8,
        /// The number of 64-bit bitmap words the block needs.
        words_needed: usize,
    },
    /// Every usable address of the block is allocated.
    Exhausted,
    /// The address is not inside the block.
    OutOfBlock,
    /// The address is reserved (network, gateway or broadcast).
    Reserved,
    /// The address is already allocated.
    AlreadyAllocated,
    /// The address is not allocated.
    NotAllocated,
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockError::PrefixOutOfRange { prefix_len } => {
                write!(f, "block prefix /{prefix_len} out of range")
            }
            BlockError::BlockTooLarge {
                prefix_len,
                words_needed,
            } => write!(
                f,
                "block /{prefix_len} needs {words_needed} bitmap words, more than this allocator has"
            ),
            BlockError::Exhausted => f.write_str("block exhausted: no free address"),
            BlockError::OutOfBlock => f.write_str("address outside the block"),
            BlockError::Reserved => f.write_str("address reserved (network, gateway or broadcast)"),
            BlockError::AlreadyAllocated => f.write_str("address already allocated"),
            BlockError::NotAllocated => f.write_str("address not allocated"),
        }
    }
}

impl core::error::Error for BlockError {}

/// The address allocator of one block, with a bitmap of `WORDS` 64-bit words.
///
/// A block of prefix `p` needs `2^(BITS-p) / 64` words (at least one): 1024 for an
/// IPv4 /16, 4 for a /24, 1 for a /26 or longer. See [`Ipv4Block16`], [`Ipv4Block24`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockAllocator<F: AddressFamily, const WORDS: usize> {
    cidr: Cidr<F>,
    /// Number of addresses in the block (a power of two, at least 4).
    size: u32,
    /// Offset of the last next-fit allocation (the search starts after it).
    cursor: u32,
    /// Number of bits set in `bits`.
    allocated: u32,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when offset `i` is allocated.
    /// Reserved offsets and bits past `size` are always clear.
    bits: [u64; WORDS],
}

#[cfg(feature = "defmt")]
impl<F: AddressFamily, const WORDS: usize> defmt::Format for BlockAllocator<F, WORDS> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "BlockAllocator {{ cidr: {}/{}, allocated: {}, capacity: {} }}",
            self.cidr.network(),
            self.cidr.prefix_len(),
            self.allocated,
            self.capacity()
        )
    }
}

impl<F: AddressFamily, const WORDS: usize> BlockAllocator<F, WORDS> {
    /// The largest snapshot any block of this type can produce (to size a static buffer).
    pub const MAX_SNAPSHOT_LEN: usize = HEADER_LEN + F::ADDR_LEN + 8 + WORDS * 8 + CRC_LEN;

    /// An empty allocator for `cidr`. The first [`allocate`](Self::allocate) returns
    /// the address after the gateway (e.g. 10.244.1.2 in 10.244.1.0/24).
    pub fn new(cidr: Cidr<F>) -> Result<Self, BlockError> {
        let prefix_len = cidr.prefix_len();
        let size = block_size::<F>(prefix_len)?;
        let words_needed = words_for(size);
        if words_needed > WORDS {
            return Err(BlockError::BlockTooLarge {
                prefix_len,
                words_needed,
            });
        }
        Ok(BlockAllocator {
            cidr,
            size,
            cursor: 1,
            allocated: 0,
            bits: [0; WORDS],
        })
    }

    /// The block this allocator manages.
    pub fn cidr(&self) -> Cidr<F> {
        self.cidr
    }

    /// The gateway address of the block (its first host address, e.g. 10.244.1.1).
    pub fn gateway(&self) -> F::Addr {
        self.cidr.addr_at(1)
    }

    /// The broadcast address of the block, if the family has one.
    pub fn broadcast(&self) -> Option<F::Addr> {
        F::HAS_BROADCAST.then(|| self.cidr.addr_at(u128::from(self.size - 1)))
    }

    /// Allocates the next free address after the last one [`allocate`](Self::allocate)
    /// returned, wrapping around at the end of the block (next-fit).
    ///
    /// Cost: full words are skipped eight at a time (one AND-reduction per 512
    /// addresses), so the worst case — the only free address just behind the cursor
    /// of a full /16 — reads 1024 words in 128 steps; the common case reads one word.
    pub fn allocate(&mut self) -> Result<F::Addr, BlockError> {
        if self.allocated >= self.capacity() {
            return Err(BlockError::Exhausted);
        }
        let start = (self.cursor.wrapping_add(1)) & (self.size - 1);
        let offset = self.find_free(start).ok_or(BlockError::Exhausted)?;
        self.set(offset, true);
        self.allocated += 1;
        self.cursor = offset;
        Ok(self.cidr.addr_at(u128::from(offset)))
    }

    /// Allocates the given address (a static or restored assignment). Does not move
    /// the next-fit cursor.
    pub fn allocate_addr(&mut self, addr: F::Addr) -> Result<(), BlockError> {
        let offset = self.usable_offset(addr)?;
        if self.get(offset) {
            return Err(BlockError::AlreadyAllocated);
        }
        self.set(offset, true);
        self.allocated += 1;
        Ok(())
    }

    /// Releases an allocated address. It is not handed out again by
    /// [`allocate`](Self::allocate) before the cursor has wrapped around to it.
    pub fn release(&mut self, addr: F::Addr) -> Result<(), BlockError> {
        let offset = self.usable_offset(addr)?;
        if !self.get(offset) {
            return Err(BlockError::NotAllocated);
        }
        self.set(offset, false);
        self.allocated -= 1;
        Ok(())
    }

    /// Whether `addr` is inside the block.
    pub fn contains(&self, addr: F::Addr) -> bool {
        self.cidr.contains(addr)
    }

    /// Whether `addr` is a reserved address of the block (network, gateway, broadcast).
    pub fn is_reserved(&self, addr: F::Addr) -> bool {
        match self.offset(addr) {
            Some(offset) => self.reserved(offset),
            None => false,
        }
    }

    /// Whether `addr` is currently allocated.
    pub fn is_allocated(&self, addr: F::Addr) -> bool {
        match self.offset(addr) {
            Some(offset) => self.get(offset),
            None => false,
        }
    }

    /// Number of allocated addresses.
    pub fn allocated(&self) -> u32 {
        self.allocated
    }

    /// Number of free usable addresses.
    pub fn free(&self) -> u32 {
        self.capacity() - self.allocated
    }

    /// Number of usable addresses (block size minus the reserved addresses).
    pub fn capacity(&self) -> u32 {
        self.size - self.reserved_count()
    }

    /// The address of the last next-fit allocation; the next search starts after it.
    /// Initially the gateway.
    pub fn cursor(&self) -> F::Addr {
        self.cidr.addr_at(u128::from(self.cursor))
    }

    /// The allocated addresses, in ascending order.
    pub fn iter(&self) -> Allocated<'_, F> {
        let words = self.bits.get(..words_for(self.size)).unwrap_or(&[]);
        Allocated {
            cidr: self.cidr,
            words,
            index: 0,
            current: words.first().copied().unwrap_or(0),
        }
    }

    /// The length of this block's snapshot (see the [`ipam`](super) module docs).
    pub fn snapshot_len(&self) -> usize {
        block_snapshot_len::<F>(self.size)
    }

    /// Writes the snapshot into `out`; returns the number of bytes written
    /// (`snapshot_len()`), or `BufferTooSmall`.
    pub fn to_bytes(&self, out: &mut [u8]) -> Result<usize, SnapshotError> {
        let len = self.snapshot_len();
        let mut w = Writer::new(out, len)?;
        w.put(&BLOCK_MAGIC)?;
        w.put(&[
            snapshot::SNAPSHOT_VERSION,
            F::TAG,
            self.cidr.prefix_len(),
            0,
        ])?;
        let declared =
            u32::try_from(len).map_err(|_| SnapshotError::BadLength { declared: len })?;
        w.put(&declared.to_be_bytes())?;
        w.put_addr_bits(F::to_bits(self.cidr.network()), F::ADDR_LEN)?;
        w.put(&self.cursor.to_be_bytes())?;
        w.put(&self.allocated.to_be_bytes())?;
        let mut remaining = bitmap_len(self.size);
        for word in &self.bits {
            if remaining == 0 {
                break;
            }
            let bytes = word.to_le_bytes();
            let n = remaining.min(8);
            w.put(bytes.get(..n).unwrap_or(&[]))?;
            remaining -= n;
        }
        w.seal()
    }

    /// Restores a block from a snapshot written by [`to_bytes`](Self::to_bytes).
    /// The whole snapshot is checked (envelope, then every invariant) before the
    /// value is returned; any defect is an error naming it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let env = snapshot::open(bytes, BLOCK_MAGIC, F::TAG)?;
        let prefix_len = env.b6;
        if env.b7 != 0 {
            return Err(SnapshotError::BadFlags { found: env.b7 });
        }
        let size = block_size::<F>(prefix_len)
            .map_err(|_| SnapshotError::PrefixOutOfRange { prefix_len })?;
        if words_for(size) > WORDS {
            return Err(SnapshotError::BlockTooLarge { prefix_len });
        }
        let expected = block_snapshot_len::<F>(size);
        let mismatch = SnapshotError::LengthMismatch {
            declared: env.len,
            expected,
        };
        if env.len != expected {
            return Err(mismatch);
        }
        let mut r: Reader<'_> = env.body;
        let network_bits = r.addr_bits(F::ADDR_LEN).ok_or(mismatch)?;
        let cidr = Cidr::new(F::from_bits(network_bits), prefix_len)
            .map_err(|_| SnapshotError::HostBitsSet)?;
        let cursor = r.u32().ok_or(mismatch)?;
        let declared = r.u32().ok_or(mismatch)?;
        let bitmap = r.take(bitmap_len(size)).ok_or(mismatch)?;
        if cursor >= size {
            return Err(SnapshotError::CursorOutOfRange { cursor });
        }
        let mut bits = [0u64; WORDS];
        for (word, chunk) in bits.iter_mut().zip(bitmap.chunks(8)) {
            let mut le = [0u8; 8];
            for (dst, src) in le.iter_mut().zip(chunk) {
                *dst = *src;
            }
            *word = u64::from_le_bytes(le);
        }
        if size < 64 && bits.first().copied().unwrap_or(0) >> size != 0 {
            return Err(SnapshotError::BitOutsideBlock);
        }
        let counted: u32 = bits.iter().map(|w| w.count_ones()).sum();
        let block = BlockAllocator {
            cidr,
            size,
            cursor,
            allocated: counted,
            bits,
        };
        for offset in [0, 1, size - 1] {
            if block.reserved(offset) && block.get(offset) {
                return Err(SnapshotError::ReservedAddressAllocated { offset });
            }
        }
        if counted != declared {
            return Err(SnapshotError::CountMismatch { declared, counted });
        }
        Ok(block)
    }

    /// The offset of `addr` if it is inside the block.
    fn offset(&self, addr: F::Addr) -> Option<u32> {
        self.cidr
            .offset_of(addr)
            .and_then(|o| u32::try_from(o).ok())
    }

    /// The offset of `addr` if it may be allocated, or why not.
    fn usable_offset(&self, addr: F::Addr) -> Result<u32, BlockError> {
        let offset = self.offset(addr).ok_or(BlockError::OutOfBlock)?;
        if self.reserved(offset) {
            return Err(BlockError::Reserved);
        }
        Ok(offset)
    }

    fn reserved_count(&self) -> u32 {
        if F::HAS_BROADCAST {
            3
        } else {
            2
        }
    }

    fn reserved(&self, offset: u32) -> bool {
        offset <= 1 || (F::HAS_BROADCAST && offset == self.size - 1)
    }

    fn get(&self, offset: u32) -> bool {
        let word = self.bits.get((offset / 64) as usize).copied().unwrap_or(0);
        word >> (offset % 64) & 1 != 0
    }

    fn set(&mut self, offset: u32, on: bool) {
        if let Some(word) = self.bits.get_mut((offset / 64) as usize) {
            let bit = 1u64 << (offset % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    /// The bits of word `w` that can never be allocated: reserved addresses and, for
    /// blocks smaller than a word, the bits past the end of the block.
    #[inline]
    fn blocked(&self, w: usize) -> u64 {
        let mut mask = 0;
        if w == 0 {
            mask |= 0b11;
        }
        if w == (self.size as usize - 1) / 64 {
            if self.size < 64 {
                mask |= !0u64 << self.size;
            }
            if F::HAS_BROADCAST {
                mask |= 1u64 << ((self.size - 1) % 64);
            }
        }
        mask
    }

    /// The first free offset at or after `start`, wrapping around to the beginning.
    fn find_free(&self, start: u32) -> Option<u32> {
        let words = self.bits.get(..words_for(self.size))?;
        let first = (start / 64) as usize;
        let head = !(*words.get(first)? | self.blocked(first)) & (!0u64 << (start % 64));
        if head != 0 {
            return Some(first as u32 * 64 + head.trailing_zeros());
        }
        // The rest of the block, then (wrapped) its beginning up to and including the
        // word of `start`, whose bits at or after `start` were found taken above.
        self.scan(words, first + 1, words.len())
            .or_else(|| self.scan(words, 0, first + 1))
    }

    /// The first free offset in words `from..to`.
    fn scan(&self, words: &[u64], from: usize, to: usize) -> Option<u32> {
        let mut w = from;
        while w < to {
            w += first_not_full(words.get(w..to)?)?;
            // A word that is not full may still only have reserved bits clear (the
            // first and last word of the block): then keep looking after it.
            let free = !(*words.get(w)? | self.blocked(w));
            if free != 0 {
                return Some(w as u32 * 64 + free.trailing_zeros());
            }
            w += 1;
        }
        None
    }
}

/// The index of the first word of `words` with a clear bit. Full words are skipped
/// eight at a time (one AND-reduction and one branch per 512 addresses).
#[inline]
fn first_not_full(words: &[u64]) -> Option<usize> {
    let mut chunks = words.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(!0u64, |acc, &w| acc & w) != !0 {
            return chunk.iter().position(|&w| w != !0).map(|i| base + i);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&w| w != !0)
        .map(|i| base + i)
}

/// The allocated addresses of a block, ascending (from [`BlockAllocator::iter`]).
#[derive(Debug, Clone)]
pub struct Allocated<'a, F: AddressFamily> {
    cidr: Cidr<F>,
    words: &'a [u64],
    index: usize,
    current: u64,
}

impl<F: AddressFamily> Iterator for Allocated<'_, F> {
    type Item = F::Addr;

    fn next(&mut self) -> Option<F::Addr> {
        while self.current == 0 {
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
        let bit = self.current.trailing_zeros();
        self.current &= self.current - 1;
        let offset = self.index as u128 * 64 + u128::from(bit);
        Some(self.cidr.addr_at(offset))
    }
}

/// The number of addresses of a block of `prefix_len`, if it is a valid block prefix.
fn block_size<F: AddressFamily>(prefix_len: u8) -> Result<u32, BlockError> {
    if !(F::MIN_BLOCK_PREFIX..=F::MAX_BLOCK_PREFIX).contains(&prefix_len) {
        return Err(BlockError::PrefixOutOfRange { prefix_len });
    }
    1u32.checked_shl(u32::from(F::BITS - prefix_len))
        .filter(|&s| s >= 4)
        .ok_or(BlockError::PrefixOutOfRange { prefix_len })
}

/// Bitmap words a block of `size` addresses needs.
fn words_for(size: u32) -> usize {
    (size as usize).div_ceil(64)
}

/// Bitmap bytes of a block of `size` addresses in a snapshot.
fn bitmap_len(size: u32) -> usize {
    (size as usize).div_ceil(8)
}

fn block_snapshot_len<F: AddressFamily>(size: u32) -> usize {
    HEADER_LEN + F::ADDR_LEN + 8 + bitmap_len(size) + CRC_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn block<const W: usize>(a: u8, b: u8, c: u8, d: u8, p: u8) -> BlockAllocator<Ipv4, W> {
        BlockAllocator::new(Cidr::new(Ipv4Addr::new(a, b, c, d), p).unwrap()).unwrap()
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    #[test]
    fn slash24_counts_and_first_addresses() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 24);
        assert_eq!(b.capacity(), 253);
        assert_eq!(b.free(), 253);
        assert_eq!(b.gateway(), ip(10, 244, 1, 1));
        assert_eq!(b.broadcast(), Some(ip(10, 244, 1, 255)));
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 2)));
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 3)));
        assert_eq!((b.allocated(), b.free()), (2, 251));
        assert_eq!(b.cursor(), ip(10, 244, 1, 3));
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 24);
        let mut seen = BTreeSet::new();
        while let Ok(a) = b.allocate() {
            assert!(seen.insert(a));
        }
        assert_eq!(seen.len(), 253);
        for r in [ip(10, 244, 1, 0), ip(10, 244, 1, 1), ip(10, 244, 1, 255)] {
            assert!(!seen.contains(&r));
            assert!(b.is_reserved(r));
            assert_eq!(b.allocate_addr(r), Err(BlockError::Reserved));
            assert_eq!(b.release(r), Err(BlockError::Reserved));
        }
        assert_eq!(b.allocate(), Err(BlockError::Exhausted));
    }

    #[test]
    fn slash30_has_one_usable_address() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 4, 30);
        assert_eq!(b.capacity(), 1);
        assert_eq!(b.gateway(), ip(10, 244, 1, 5));
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 6)));
        assert_eq!(b.allocate(), Err(BlockError::Exhausted));
        assert_eq!(b.release(ip(10, 244, 1, 6)), Ok(()));
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 6)));
        assert_eq!(
            b.allocate_addr(ip(10, 244, 1, 7)),
            Err(BlockError::Reserved)
        );
        assert_eq!(
            b.allocate_addr(ip(10, 244, 1, 8)),
            Err(BlockError::OutOfBlock)
        );
    }

    #[test]
    fn slash16_full_exhaustion() {
        let mut b: Ipv4Block16 = block(10, 244, 0, 0, 16);
        assert_eq!(b.capacity(), 65533);
        let mut last = ip(10, 244, 0, 1);
        for _ in 0..65533 {
            let a = b.allocate().unwrap();
            assert!(a > last, "ascending on the first pass");
            last = a;
        }
        assert_eq!(last, ip(10, 244, 255, 254));
        assert_eq!(b.free(), 0);
        assert_eq!(b.allocate(), Err(BlockError::Exhausted));
        assert_eq!(b.iter().count(), 65533);
        // One hole far behind the cursor is found after a wrap over 1024 words.
        b.release(ip(10, 244, 3, 7)).unwrap();
        assert_eq!(b.allocate(), Ok(ip(10, 244, 3, 7)));
        assert_eq!(b.allocate(), Err(BlockError::Exhausted));
    }

    #[test]
    fn prefix_range_and_bitmap_size_are_enforced() {
        let c15 = Cidr::new(ip(10, 244, 0, 0), 15).unwrap();
        assert_eq!(
            Ipv4Block16::new(c15),
            Err(BlockError::PrefixOutOfRange { prefix_len: 15 })
        );
        let c31 = Cidr::new(ip(10, 244, 0, 0), 31).unwrap();
        assert_eq!(
            Ipv4Block16::new(c31),
            Err(BlockError::PrefixOutOfRange { prefix_len: 31 })
        );
        let c23 = Cidr::new(ip(10, 244, 0, 0), 23).unwrap();
        assert_eq!(
            Ipv4Block24::new(c23),
            Err(BlockError::BlockTooLarge {
                prefix_len: 23,
                words_needed: 8
            })
        );
        assert!(BlockAllocator::<Ipv4, 1>::new(Cidr::new(ip(10, 0, 0, 0), 26).unwrap()).is_ok());
    }

    #[test]
    fn next_fit_order_and_wrap_around() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 28); // .0 - .15, usable .2 - .14
        for d in 2..=14 {
            assert_eq!(b.allocate(), Ok(ip(10, 244, 1, d)));
        }
        b.release(ip(10, 244, 1, 9)).unwrap();
        b.release(ip(10, 244, 1, 4)).unwrap();
        // Wraps past the broadcast and the reserved .0/.1 to the lowest hole.
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 4)));
        assert_eq!(b.allocate(), Ok(ip(10, 244, 1, 9)));
        assert_eq!(b.allocate(), Err(BlockError::Exhausted));
    }

    #[test]
    fn freed_address_not_reused_until_the_range_cycles() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 24);
        let first = b.allocate().unwrap(); // .2
        b.release(first).unwrap();
        let mut handed = Vec::new();
        for _ in 0..252 {
            handed.push(b.allocate().unwrap());
        }
        assert!(!handed.contains(&first));
        assert_eq!(handed.last(), Some(&ip(10, 244, 1, 254)));
        // Only now, after the wrap, does .2 come back.
        assert_eq!(b.allocate(), Ok(first));
    }

    #[test]
    fn allocate_given_address_and_release_errors() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 24);
        assert_eq!(b.allocate_addr(ip(10, 244, 1, 50)), Ok(()));
        assert_eq!(
            b.allocate_addr(ip(10, 244, 1, 50)),
            Err(BlockError::AlreadyAllocated)
        );
        assert_eq!(
            b.cursor(),
            ip(10, 244, 1, 1),
            "static allocation keeps the cursor"
        );
        assert_eq!(
            b.allocate_addr(ip(10, 244, 2, 50)),
            Err(BlockError::OutOfBlock)
        );
        assert_eq!(b.release(ip(10, 244, 1, 51)), Err(BlockError::NotAllocated));
        assert_eq!(b.release(ip(10, 245, 1, 51)), Err(BlockError::OutOfBlock));
        assert!(b.is_allocated(ip(10, 244, 1, 50)));
        assert_eq!(b.release(ip(10, 244, 1, 50)), Ok(()));
        assert!(!b.is_allocated(ip(10, 244, 1, 50)));
        assert_eq!(b.allocated(), 0);
    }

    #[test]
    fn iter_lists_allocated_ascending() {
        let mut b: Ipv4Block16 = block(10, 244, 0, 0, 16);
        let want = [
            ip(10, 244, 0, 2),
            ip(10, 244, 0, 64),
            ip(10, 244, 7, 0),
            ip(10, 244, 255, 254),
        ];
        for a in want.iter().rev() {
            b.allocate_addr(*a).unwrap();
        }
        assert_eq!(b.iter().collect::<Vec<_>>(), want);
    }

    /// A byte vector pinning the snapshot layout of a small block.
    #[test]
    fn snapshot_byte_vector() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 28);
        b.allocate().unwrap(); // .2
        b.allocate().unwrap(); // .3
        b.allocate_addr(ip(10, 244, 1, 9)).unwrap();
        let mut buf = [0u8; 64];
        let n = b.to_bytes(&mut buf).unwrap();
        assert_eq!(n, b.snapshot_len());
        let body: &[u8] = &[
            b'P',
            b'W',
            b'I',
            b'B',
            1,
            4,
            28,
            0, // magic, version, family, prefix, flags
            0,
            0,
            0,
            30, // total length
            10,
            244,
            1,
            0, // network
            0,
            0,
            0,
            3, // cursor: offset of .3
            0,
            0,
            0,
            3, // allocated
            0b0000_1100,
            0b0000_0010, // bitmap: offsets 2, 3, 9
        ];
        assert_eq!(&buf[..n - 4], body);
        assert_eq!(buf[n - 4..n], crc32_be(body));
        assert_eq!(Ipv4Block24::from_bytes(&buf[..n]), Ok(b));
    }

    fn crc32_be(b: &[u8]) -> [u8; 4] {
        snapshot::crc32(b).to_be_bytes()
    }

    /// Re-seals a hand-edited snapshot so its semantic checks are reached.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len();
        let crc = crc32_be(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc);
    }

    fn snapshot_of<const W: usize>(b: &BlockAllocator<Ipv4, W>) -> Vec<u8> {
        let mut v = std::vec![0u8; b.snapshot_len()];
        assert_eq!(b.to_bytes(&mut v), Ok(v.len()));
        v
    }

    #[test]
    fn snapshot_rejects_each_defect_by_name() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 28);
        b.allocate().unwrap();
        let good = snapshot_of(&b);
        let fresh = || good.clone();

        let mut short = [0u8; 8];
        assert_eq!(
            b.to_bytes(&mut short),
            Err(SnapshotError::BufferTooSmall { needed: 30, got: 8 })
        );
        assert_eq!(
            Ipv4Block24::from_bytes(&good[..5]),
            Err(SnapshotError::Truncated { needed: 12, got: 5 })
        );
        assert_eq!(
            Ipv4Block24::from_bytes(&good[..29]),
            Err(SnapshotError::Truncated {
                needed: 30,
                got: 29
            })
        );
        let mut long = fresh();
        long.push(0);
        assert_eq!(
            Ipv4Block24::from_bytes(&long),
            Err(SnapshotError::TrailingBytes {
                declared: 30,
                got: 31
            })
        );
        let mut v = fresh();
        v[0] = b'X';
        assert!(matches!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BadMagic { .. })
        ));
        let mut v = fresh();
        v[4] = 2;
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BadVersion { found: 2 })
        );
        let mut v = fresh();
        v[5] = 6;
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BadFamily { found: 6 })
        );
        let mut v = fresh();
        v[25] ^= 0x40;
        assert!(matches!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BadChecksum { .. })
        ));

        let mut v = fresh();
        v[7] = 1;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BadFlags { found: 1 })
        );
        let mut v = fresh();
        v[6] = 31;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::PrefixOutOfRange { prefix_len: 31 })
        );
        let mut v = fresh();
        v[6] = 27;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::LengthMismatch {
                declared: 30,
                expected: 32
            })
        );
        let mut v = fresh();
        v[15] = 1;
        reseal(&mut v);
        assert_eq!(Ipv4Block24::from_bytes(&v), Err(SnapshotError::HostBitsSet));
        let mut v = fresh();
        v[19] = 16;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::CursorOutOfRange { cursor: 16 })
        );
        for (byte, bit, offset) in [(24, 0, 0), (24, 1, 1), (25, 7, 15)] {
            let mut v = fresh();
            v[byte] |= 1 << bit;
            v[23] += 1;
            reseal(&mut v);
            assert_eq!(
                Ipv4Block24::from_bytes(&v),
                Err(SnapshotError::ReservedAddressAllocated { offset })
            );
        }
        let mut v = fresh();
        v[23] = 7;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::CountMismatch {
                declared: 7,
                counted: 1
            })
        );
        // A /16 snapshot does not fit the firmware-sized allocator.
        let big: Ipv4Block16 = block(10, 244, 0, 0, 16);
        assert_eq!(
            Ipv4Block24::from_bytes(&snapshot_of(&big)),
            Err(SnapshotError::BlockTooLarge { prefix_len: 16 })
        );
    }

    #[test]
    fn snapshot_rejects_bits_beyond_a_slash30() {
        let b: Ipv4Block24 = block(10, 244, 1, 4, 30);
        let mut v = snapshot_of(&b);
        assert_eq!(v.len(), 29);
        v[24] = 0b0001_0000; // offset 4: past the end of the /30
        v[23] = 1;
        reseal(&mut v);
        assert_eq!(
            Ipv4Block24::from_bytes(&v),
            Err(SnapshotError::BitOutsideBlock)
        );
    }

    #[test]
    fn snapshot_keeps_the_cursor() {
        let mut b: Ipv4Block24 = block(10, 244, 1, 0, 24);
        for _ in 0..10 {
            b.allocate().unwrap();
        }
        b.release(ip(10, 244, 1, 5)).unwrap();
        let mut restored = Ipv4Block24::from_bytes(&snapshot_of(&b)).unwrap();
        assert_eq!(restored.allocate(), b.allocate());
        assert_eq!(restored.allocate(), Ok(ip(10, 244, 1, 13)));
    }

    /// The reference model: a set of offsets and the same next-fit rule, bit by bit.
    struct Model {
        size: u32,
        cursor: u32,
        used: BTreeSet<u32>,
    }

    impl Model {
        fn usable(&self, o: u32) -> bool {
            o >= 2 && o < self.size - 1
        }
        fn allocate(&mut self) -> Option<u32> {
            let next = (1..=self.size)
                .map(|i| (self.cursor + i) % self.size)
                .find(|&o| self.usable(o) && !self.used.contains(&o))?;
            self.used.insert(next);
            self.cursor = next;
            Some(next)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        AllocateAt(u32),
        Release(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Allocate),
            1 => any::<u32>().prop_map(Op::AllocateAt),
            2 => any::<u32>().prop_map(Op::Release),
        ]
    }

    /// A block of a random prefix, driven by random operations; returns it and the model.
    fn run(prefix: u8, ops: &[Op]) -> (BlockAllocator<Ipv4, 16>, Model) {
        let net = ip(10, 244, 0, 0);
        let cidr = Cidr::new(net, prefix).unwrap();
        let mut b = BlockAllocator::<Ipv4, 16>::new(cidr).unwrap();
        let size = 1u32 << (32 - prefix);
        let mut m = Model {
            size,
            cursor: 1,
            used: BTreeSet::new(),
        };
        let span = size + 8; // some addresses just outside the block too
        let addr = |o: u32| Ipv4Addr::from(u32::from(net) + o % span);
        for op in ops {
            match *op {
                Op::Allocate => {
                    let got = b.allocate();
                    match m.allocate() {
                        Some(o) => assert_eq!(got, Ok(addr(o))),
                        None => assert_eq!(got, Err(BlockError::Exhausted)),
                    }
                }
                Op::AllocateAt(o) => {
                    let o = o % span;
                    let want = if o >= size {
                        Err(BlockError::OutOfBlock)
                    } else if !m.usable(o) {
                        Err(BlockError::Reserved)
                    } else if !m.used.insert(o) {
                        Err(BlockError::AlreadyAllocated)
                    } else {
                        Ok(())
                    };
                    assert_eq!(b.allocate_addr(addr(o)), want);
                }
                Op::Release(o) => {
                    let o = o % span;
                    let want = if o >= size {
                        Err(BlockError::OutOfBlock)
                    } else if !m.usable(o) {
                        Err(BlockError::Reserved)
                    } else if !m.used.remove(&o) {
                        Err(BlockError::NotAllocated)
                    } else {
                        Ok(())
                    };
                    assert_eq!(b.release(addr(o)), want);
                }
            }
            assert_eq!(b.allocated() as usize, m.used.len());
            assert_eq!(b.free(), size - 3 - m.used.len() as u32);
        }
        let listed: Vec<_> = b.iter().collect();
        let modelled: Vec<_> = m.used.iter().map(|&o| addr(o)).collect();
        assert_eq!(listed, modelled);
        (b, m)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Large, nearly full blocks: word skipping (eight words at a time) and the
        /// wrap-around find exactly the holes the per-address model finds, in order.
        #[test]
        fn nearly_full_blocks_match_the_model(
            prefix in 17u8..=22,
            holes in proptest::collection::vec(any::<u32>(), 1..40),
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let net = ip(10, 244, 0, 0);
            let mut b = Ipv4Block16::new(Cidr::new(net, prefix).unwrap()).unwrap();
            let size = 1u32 << (32 - prefix);
            let mut m = Model { size, cursor: 1, used: BTreeSet::new() };
            while let Some(o) = m.allocate() {
                prop_assert_eq!(b.allocate(), Ok(Ipv4Addr::from(u32::from(net) + o)));
            }
            prop_assert_eq!(b.allocate(), Err(BlockError::Exhausted));
            let addr = |o: u32| Ipv4Addr::from(u32::from(net) + o);
            for h in holes {
                let o = 2 + h % (size - 3);
                prop_assert_eq!(b.release(addr(o)).is_ok(), m.used.remove(&o));
            }
            for op in ops {
                match op {
                    Op::Allocate | Op::AllocateAt(_) => {
                        let want = m.allocate().map(addr).ok_or(BlockError::Exhausted);
                        prop_assert_eq!(b.allocate(), want);
                    }
                    Op::Release(o) => {
                        let o = 2 + o % (size - 3);
                        prop_assert_eq!(b.release(addr(o)).is_ok(), m.used.remove(&o));
                    }
                }
            }
            prop_assert_eq!(b.allocated() as usize, m.used.len());
        }
    }

    proptest! {
        #[test]
        fn matches_the_model(prefix in 22u8..=30, ops in proptest::collection::vec(op(), 0..400)) {
            run(prefix, &ops);
        }

        #[test]
        fn snapshot_round_trips(prefix in 22u8..=30, ops in proptest::collection::vec(op(), 0..200)) {
            let (b, _) = run(prefix, &ops);
            let bytes = snapshot_of(&b);
            let restored = BlockAllocator::<Ipv4, 16>::from_bytes(&bytes);
            prop_assert_eq!(restored.as_ref(), Ok(&b));
            // Re-encoding is byte-identical (the format is canonical).
            prop_assert_eq!(snapshot_of(&restored.unwrap()), bytes);
        }

        #[test]
        fn any_bit_flip_or_truncation_is_rejected(
            prefix in 22u8..=30,
            ops in proptest::collection::vec(op(), 0..100),
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let (b, _) = run(prefix, &ops);
            let bytes = snapshot_of(&b);
            let bit = flip.index(bytes.len() * 8);
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(BlockAllocator::<Ipv4, 16>::from_bytes(&flipped).is_err());
            let len = cut.index(bytes.len());
            prop_assert!(BlockAllocator::<Ipv4, 16>::from_bytes(&bytes[..len]).is_err());
        }
    }
}

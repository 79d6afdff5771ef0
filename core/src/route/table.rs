//! The route table: a sorted RIB compiled into a poptrie FIB, over caller-owned slices.
//!
//! Design note: see the [module documentation](super) for the structure. This file
//! holds the storage types, the compiler (RIB run → trie nodes) and the lookup. The
//! compiler is one routine with a dry-run switch: a dry run walks the same code
//! without writing and only counts the nodes and leaves it would allocate, which is
//! how every change learns whether it fits before it touches the live trie.

use core::fmt;
use core::marker::PhantomData;
use core::net::Ipv4Addr;

use super::next_hop::{self, GatewaySlot, NextHop, CODE_NONE};
use super::prefix::{sealed::Key, Prefix, RouteAddress};
use super::RouteError;

/// Bits consumed per trie node (a 64-bit bitmap per node).
const STRIDE: u32 = 6;
/// Set in a direct slot that points at a node rather than holding a leaf.
const NODE_FLAG: u32 = 1 << 31;
/// A route's length sits in the top byte of its `meta` word.
const LEN_SHIFT: u32 = 24;
/// Marks a route added by a batch that is not yet merged (`insert_many`).
const NEW_FLAG: u32 = 1 << 23;
/// The next-hop code in a route's `meta` word.
const CODE_MASK: u32 = NEW_FLAG - 1;
/// Largest direct-pointing array: 2^24 slots.
const MAX_DIRECT_BITS: u32 = 24;
/// Depth of the stack of covering prefixes during compilation (lengths 0..=24).
const STACK: usize = MAX_DIRECT_BITS as usize + 1;

/// One poptrie node: 64 children or leaves selected by 6 bits of the address.
///
/// Callers only allocate these (`[TrieNode::default(); n]`); the fields are private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrieNode {
    /// Bit `s` set: slot `s` continues in a child node.
    vector: u64,
    /// Bit `s` set: a new run of leaves starts at slot `s` (child slots are skipped).
    leafvec: u64,
    /// Index of this node's first leaf.
    base0: u32,
    /// Index of this node's first child.
    base1: u32,
}

impl TrieNode {
    /// An unused node (for static storage: `[TrieNode::EMPTY; n]`).
    pub const EMPTY: TrieNode = TrieNode {
        vector: 0,
        leafvec: 0,
        base0: 0,
        base1: 0,
    };
}

/// One route of the RIB (caller-owned storage; fields private).
pub struct RouteEntry<A: RouteAddress> {
    key: A::Key,
    /// `len << 24 | new-flag << 23 | next-hop code`.
    meta: u32,
}

impl<A: RouteAddress> Clone for RouteEntry<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: RouteAddress> Copy for RouteEntry<A> {}

impl<A: RouteAddress> Default for RouteEntry<A> {
    fn default() -> Self {
        RouteEntry {
            key: A::Key::ZERO,
            meta: 0,
        }
    }
}

impl<A: RouteAddress> fmt::Debug for RouteEntry<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteEntry")
            .field("key", &self.key)
            .field("len", &self.len())
            .field("code", &self.code())
            .finish()
    }
}

impl<A: RouteAddress> RouteEntry<A> {
    /// An unused slot (for static storage: `[RouteEntry::EMPTY; n]`).
    pub const EMPTY: Self = RouteEntry {
        key: A::Key::ZERO,
        meta: 0,
    };

    #[inline(always)]
    fn len(&self) -> u32 {
        self.meta >> LEN_SHIFT
    }

    #[inline(always)]
    fn code(&self) -> u32 {
        self.meta & CODE_MASK
    }

    /// Sort order: address, then length, then old before new.
    #[inline(always)]
    fn order(&self) -> (A::Key, u32) {
        (self.key, self.meta >> 23)
    }

    #[inline(always)]
    fn same_prefix(&self, other: &Self) -> bool {
        self.key == other.key && self.len() == other.len()
    }

    #[inline(always)]
    fn contains(&self, key: A::Key) -> bool {
        key.mask(self.len()) == self.key
    }
}

/// The caller-owned memory of a [`RouteTable`].
///
/// Size it with [`RouteLayout`]. `direct` must have a power-of-two length between 2
/// and 2^24: its log2 `k` is the number of address bits resolved by one read (18 for
/// a large table: 1 MiB; 8–12 on a microcontroller).
pub struct RouteStorage<'a, A: RouteAddress> {
    /// The direct-pointing top level, `2^k` slots.
    pub direct: &'a mut [u32],
    /// Trie nodes.
    pub nodes: &'a mut [TrieNode],
    /// Trie leaves (next-hop codes).
    pub leaves: &'a mut [u32],
    /// The routes (the RIB), one slot per prefix.
    pub routes: &'a mut [RouteEntry<A>],
    /// Interned gateway addresses, one slot per distinct `NextHop::Gateway`.
    pub gateways: &'a mut [GatewaySlot],
}

/// Slot counts for a [`RouteStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RouteLayout {
    /// Length of `direct` (`2^k`).
    pub direct: usize,
    /// Length of `nodes`.
    pub nodes: usize,
    /// Length of `leaves`.
    pub leaves: usize,
    /// Length of `routes`.
    pub routes: usize,
    /// Length of `gateways`.
    pub gateways: usize,
}

impl RouteLayout {
    /// Storage that holds any `prefixes` routes (with up to `gateways` distinct
    /// gateways) whatever their lengths and placement, for a direct array of
    /// `2^direct_bits` slots (`direct_bits` is clamped to 1..=24).
    ///
    /// Bound: with `L = ceil((W - k) / 6)` node levels below the direct array (`W` the
    /// address width), a prefix lies on at most `L` nodes, and a node's leaf runs
    /// number at most 1 + 2 × the prefixes ending in it, so `nodes <= L·N` and
    /// `leaves <= (L + 2)·N`. Real tables use far less (an internet-like IPv4 table
    /// about 0.25 nodes and 1.3 leaves per prefix with `k = 18`, see
    /// [`RouteTable::usage`]); a caller that knows its table can size below the bound
    /// and rely on the capacity errors.
    pub fn worst_case<A: RouteAddress>(
        direct_bits: u8,
        prefixes: usize,
        gateways: usize,
    ) -> RouteLayout {
        let k = u32::from(direct_bits).clamp(1, MAX_DIRECT_BITS);
        let levels = (A::Key::BITS.saturating_sub(k)).div_ceil(STRIDE) as usize;
        RouteLayout {
            direct: 1 << k,
            nodes: prefixes.saturating_mul(levels),
            leaves: prefixes.saturating_mul(levels + 2),
            routes: prefixes,
            gateways,
        }
    }

    /// A direct-array size for a table of about `prefixes` routes: `log2(prefixes)
    /// + 2` bits, clamped to 6..=18. Small tables get a small array that stays in
    /// cache (and in a microcontroller's RAM), a full internet-size table the
    /// 18 bits (1 MiB) that end most `/24`s in the first node.
    pub fn suggested_direct_bits(prefixes: usize) -> u8 {
        let log2 = usize::BITS - prefixes.max(1).saturating_sub(1).leading_zeros();
        (log2 + 2).clamp(6, 18) as u8
    }

    /// Bytes of this layout for address family `A`.
    pub fn bytes<A: RouteAddress>(&self) -> usize {
        self.direct * 4
            + self.nodes * core::mem::size_of::<TrieNode>()
            + self.leaves * 4
            + self.routes * core::mem::size_of::<RouteEntry<A>>()
            + self.gateways * core::mem::size_of::<GatewaySlot>()
    }
}

/// How much of its storage a table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RouteUsage {
    /// Slots in use, per slice (`nodes` and `leaves` include space left behind by
    /// incremental updates until the next compaction).
    pub used: RouteLayout,
    /// Bytes of the slots in use (the direct array counts whole).
    pub bytes: usize,
}

/// The trie's node and leaf arrays with their bump allocators.
struct Fib<'a> {
    nodes: &'a mut [TrieNode],
    leaves: &'a mut [u32],
    node_top: usize,
    leaf_top: usize,
    /// Count allocations only; write nothing and ignore capacity.
    dry: bool,
}

impl Fib<'_> {
    fn alloc_nodes(&mut self, n: usize) -> Result<usize, RouteError> {
        let start = self.node_top;
        let end = start.saturating_add(n);
        if !self.dry && (end > self.nodes.len() || end > NODE_FLAG as usize) {
            return Err(RouteError::NodesFull);
        }
        self.node_top = end;
        Ok(start)
    }

    fn alloc_leaves(&mut self, n: usize) -> Result<usize, RouteError> {
        let start = self.leaf_top;
        let end = start.saturating_add(n);
        if !self.dry && (end > self.leaves.len() || end > u32::MAX as usize) {
            return Err(RouteError::LeavesFull);
        }
        self.leaf_top = end;
        Ok(start)
    }

    /// Compiles the node at `at` for the address block at `depth` that holds `routes`
    /// (sorted, all longer than `depth`, all inside the block), under `default`.
    fn build<A: RouteAddress>(
        &mut self,
        routes: &[RouteEntry<A>],
        depth: u32,
        default: u32,
        at: usize,
    ) -> Result<(), RouteError> {
        let limit = depth + STRIDE;
        // Paint the routes ending in this node in pre-order: a covering route is
        // painted before the routes inside it, so the longest match wins.
        let mut slots = [default; 64];
        let mut vector = 0u64;
        for e in routes {
            let len = e.len();
            let s = e.key.slot(depth) as usize;
            if len > limit {
                vector |= 1 << s;
            } else if len > depth {
                let span = 1usize << (limit - len);
                if let Some(run) = slots.get_mut(s..s + span) {
                    run.fill(e.code());
                }
            }
        }
        let mut leafvec = 0u64;
        let mut leaves = 0usize;
        let mut prev = None;
        for (s, &v) in slots.iter().enumerate() {
            if vector & (1 << s) == 0 && prev != Some(v) {
                leafvec |= 1 << s;
                leaves += 1;
                prev = Some(v);
            }
        }
        let base1 = self.alloc_nodes(vector.count_ones() as usize)?;
        let base0 = self.alloc_leaves(leaves)?;
        if !self.dry {
            let mut i = base0;
            for (s, &v) in slots.iter().enumerate() {
                if leafvec & (1 << s) != 0 {
                    if let Some(l) = self.leaves.get_mut(i) {
                        *l = v;
                    }
                    i += 1;
                }
            }
            if let Some(n) = self.nodes.get_mut(at) {
                *n = TrieNode {
                    vector,
                    leafvec,
                    base0: base0 as u32,
                    base1: base1 as u32,
                };
            }
        }
        // Children, in slot order; each is the contiguous run of routes of its slot
        // that are longer than this node (the shorter ones come first in the slot).
        let mut i = 0;
        let mut child = base1;
        let mut bits = vector;
        while bits != 0 {
            let s = bits.trailing_zeros();
            bits &= bits - 1;
            while let Some(e) = routes.get(i) {
                if e.key.slot(depth) < s || e.len() <= limit {
                    i += 1;
                } else {
                    break;
                }
            }
            let start = i;
            while routes.get(i).is_some_and(|e| e.key.slot(depth) == s) {
                i += 1;
            }
            let inner = routes.get(start..i).unwrap_or(&[]);
            let inherited = slots.get(s as usize).copied().unwrap_or(default);
            self.build(inner, limit, inherited, child)?;
            child += 1;
        }
        Ok(())
    }

    /// Whether the whole trie for `routes` fits the storage (a dry run that leaves
    /// the live trie and its allocators as they were).
    fn fits_full<A: RouteAddress>(
        &mut self,
        direct: &mut [u32],
        k: u32,
        routes: &[RouteEntry<A>],
    ) -> Result<(), RouteError> {
        let (node_top, leaf_top) = (self.node_top, self.leaf_top);
        self.node_top = 0;
        self.leaf_top = 0;
        self.dry = true;
        let counted = self.build_range(direct, k, routes, 0, 1usize << k);
        self.dry = false;
        let result = if counted.is_err() {
            counted
        } else if self.node_top > self.nodes.len() || self.node_top > NODE_FLAG as usize {
            Err(RouteError::NodesFull)
        } else if self.leaf_top > self.leaves.len() {
            Err(RouteError::LeavesFull)
        } else {
            Ok(())
        };
        self.node_top = node_top;
        self.leaf_top = leaf_top;
        result
    }

    /// Compiles direct slots `c0..c1` from the sorted `routes`.
    fn build_range<A: RouteAddress>(
        &mut self,
        direct: &mut [u32],
        k: u32,
        routes: &[RouteEntry<A>],
        c0: usize,
        c1: usize,
    ) -> Result<(), RouteError> {
        // Covering routes of the current slot (length <= k), outermost first.
        let mut stack = [0usize; STACK];
        let mut sp = 0usize;
        let first = A::Key::from_top(c0, k);
        for l in 0..=k {
            let p = first.mask(l);
            if p != first {
                if let Ok(i) = find(routes, p, l) {
                    if let Some(t) = stack.get_mut(sp) {
                        *t = i;
                        sp += 1;
                    }
                }
            }
        }
        let mut i = routes.partition_point(|e| e.key < first);
        for c in c0..c1 {
            let ckey = A::Key::from_top(c, k);
            while sp > 0
                && !stack
                    .get(sp - 1)
                    .and_then(|&t| routes.get(t))
                    .is_some_and(|e| e.contains(ckey))
            {
                sp -= 1;
            }
            while let Some(e) = routes.get(i) {
                if e.key != ckey || e.len() > k {
                    break;
                }
                let top = sp.checked_sub(1).and_then(|t| stack.get(t).copied());
                if top
                    .and_then(|t| routes.get(t))
                    .is_some_and(|t| t.same_prefix(e))
                {
                    // A batch's newer duplicate replaces the older route.
                    if let Some(t) = stack.get_mut(sp - 1) {
                        *t = i;
                    }
                } else if let Some(t) = stack.get_mut(sp) {
                    *t = i;
                    sp += 1;
                }
                i += 1;
            }
            let mut j = i;
            while routes.get(j).is_some_and(|e| e.key.top(k) == c) {
                j += 1;
            }
            let default = sp
                .checked_sub(1)
                .and_then(|t| stack.get(t))
                .and_then(|&t| routes.get(t))
                .map_or(CODE_NONE, |e| e.code());
            let slot = if j == i {
                default
            } else {
                let at = self.alloc_nodes(1)?;
                self.build(routes.get(i..j).unwrap_or(&[]), k, default, at)?;
                NODE_FLAG | at as u32
            };
            if !self.dry {
                if let Some(d) = direct.get_mut(c) {
                    *d = slot;
                }
            }
            i = j;
        }
        Ok(())
    }
}

/// Position of the route `key/len` in the sorted `routes`.
fn find<A: RouteAddress>(routes: &[RouteEntry<A>], key: A::Key, len: u32) -> Result<usize, usize> {
    routes.binary_search_by(|e| (e.key, e.len()).cmp(&(key, len)))
}

/// A longest-prefix-match route table over caller-owned storage.
///
/// `lookup` is the per-packet call; `insert`, `remove` and `insert_many` are the
/// control plane's. Every change is all-or-nothing: on a capacity error the table is
/// unchanged.
pub struct RouteTable<'a, A: RouteAddress> {
    direct: &'a mut [u32],
    /// `k`: log2 of the direct array's length.
    direct_bits: u32,
    /// `W - k`: shift that turns a key into its direct slot.
    direct_shift: u32,
    fib: Fib<'a>,
    routes: &'a mut [RouteEntry<A>],
    len: usize,
    gateways: &'a mut [GatewaySlot],
    _family: PhantomData<A>,
}

/// An IPv4 route table.
pub type Ipv4RouteTable<'a> = RouteTable<'a, Ipv4Addr>;

impl<'a, A: RouteAddress> RouteTable<'a, A> {
    /// An empty table over `storage` (its previous contents are discarded).
    ///
    /// Errors: [`RouteError::BadStorage`] if `storage.direct` is not a power of two
    /// between 2 and 2^24 slots.
    pub fn new(storage: RouteStorage<'a, A>) -> Result<Self, RouteError> {
        let n = storage.direct.len();
        if !n.is_power_of_two() || !(2..=1 << MAX_DIRECT_BITS).contains(&n) {
            return Err(RouteError::BadStorage);
        }
        let k = n.trailing_zeros();
        storage.direct.fill(CODE_NONE);
        storage.gateways.fill(GatewaySlot::default());
        Ok(RouteTable {
            direct: storage.direct,
            direct_bits: k,
            direct_shift: A::Key::BITS - k,
            fib: Fib {
                nodes: storage.nodes,
                leaves: storage.leaves,
                node_top: 0,
                leaf_top: 0,
                dry: false,
            },
            routes: storage.routes,
            len: 0,
            gateways: storage.gateways,
            _family: PhantomData,
        })
    }

    /// [`RouteLayout::worst_case`] for this address family.
    pub fn layout(direct_bits: u8, prefixes: usize, gateways: usize) -> RouteLayout {
        RouteLayout::worst_case::<A>(direct_bits, prefixes, gateways)
    }

    /// The next hop of the longest prefix that contains `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: A) -> Option<NextHop> {
        next_hop::decode(self.lookup_code(addr.to_key()), self.gateways)
    }

    #[inline(always)]
    fn lookup_code(&self, key: A::Key) -> u32 {
        let Some(&first) = self.direct.get(key.top_shifted(self.direct_shift)) else {
            return CODE_NONE;
        };
        let mut e = first;
        let mut depth = self.direct_bits;
        while e & NODE_FLAG != 0 {
            let Some(n) = self.fib.nodes.get((e & !NODE_FLAG) as usize) else {
                return CODE_NONE;
            };
            let s = key.slot(depth);
            let bit = 1u64 << s;
            if n.vector & bit != 0 {
                e = NODE_FLAG | n.base1.wrapping_add((n.vector & (bit - 1)).count_ones());
                depth = depth.wrapping_add(STRIDE);
            } else {
                let run = (n.leafvec & (u64::MAX >> (63 - s))).count_ones();
                let idx = n.base0.wrapping_add(run).wrapping_sub(1);
                return self
                    .fib
                    .leaves
                    .get(idx as usize)
                    .copied()
                    .unwrap_or(CODE_NONE);
            }
        }
        e
    }

    /// The next hop of exactly `prefix`, if it is in the table.
    pub fn get(&self, prefix: Prefix<A>) -> Option<NextHop> {
        let routes = self.routes.get(..self.len).unwrap_or(&[]);
        let i = find(
            routes,
            prefix.addr().to_key(),
            u32::from(prefix.prefix_len()),
        )
        .ok()?;
        next_hop::decode(routes.get(i)?.code(), self.gateways)
    }

    /// Adds or replaces the route for `prefix`; returns the next hop it replaced.
    ///
    /// Cost: O(routes) to shift the sorted RIB plus the recompilation of the direct
    /// slots the prefix covers (one for a prefix longer than `k`). Use
    /// [`insert_many`](Self::insert_many) to load many routes at once.
    ///
    /// Errors: [`RouteError::RoutesFull`], [`RouteError::NodesFull`],
    /// [`RouteError::LeavesFull`], [`RouteError::GatewaysFull`]; the table is then
    /// unchanged.
    pub fn insert(
        &mut self,
        prefix: Prefix<A>,
        hop: NextHop,
    ) -> Result<Option<NextHop>, RouteError> {
        let key = prefix.addr().to_key();
        let len = u32::from(prefix.prefix_len());
        let code = next_hop::acquire(hop, self.gateways)?;
        let meta = len << LEN_SHIFT | code;
        let live = self.routes.get(..self.len).unwrap_or(&[]);
        match find(live, key, len) {
            Ok(i) => {
                let Some(slot) = self.routes.get_mut(i) else {
                    next_hop::release(code, self.gateways);
                    return Err(RouteError::RoutesFull);
                };
                let old = slot.meta;
                slot.meta = meta;
                if let Err(err) = self.refresh(key, len) {
                    if let Some(slot) = self.routes.get_mut(i) {
                        slot.meta = old;
                    }
                    next_hop::release(code, self.gateways);
                    return Err(err);
                }
                let old_code = old & CODE_MASK;
                let previous = next_hop::decode(old_code, self.gateways);
                next_hop::release(old_code, self.gateways);
                Ok(previous)
            }
            Err(i) => {
                if self.len >= self.routes.len() {
                    next_hop::release(code, self.gateways);
                    return Err(RouteError::RoutesFull);
                }
                self.routes.copy_within(i..self.len, i + 1);
                if let Some(slot) = self.routes.get_mut(i) {
                    *slot = RouteEntry { key, meta };
                }
                self.len += 1;
                if let Err(err) = self.refresh(key, len) {
                    self.routes.copy_within(i + 1..self.len, i);
                    self.len -= 1;
                    next_hop::release(code, self.gateways);
                    return Err(err);
                }
                Ok(None)
            }
        }
    }

    /// Removes the route for exactly `prefix`; returns its next hop if it was there.
    ///
    /// Errors: [`RouteError::LeavesFull`] or [`RouteError::NodesFull`] in the corner
    /// case where the trie without the route needs more leaves than the storage has
    /// (removing a route can split a run of leaves); never with storage sized by
    /// [`RouteLayout::worst_case`]. The table is then unchanged.
    pub fn remove(&mut self, prefix: Prefix<A>) -> Result<Option<NextHop>, RouteError> {
        let key = prefix.addr().to_key();
        let len = u32::from(prefix.prefix_len());
        let live = self.routes.get(..self.len).unwrap_or(&[]);
        let Ok(i) = find(live, key, len) else {
            return Ok(None);
        };
        let Some(&entry) = self.routes.get(i) else {
            return Ok(None);
        };
        self.routes.copy_within(i + 1..self.len, i);
        self.len -= 1;
        if let Err(err) = self.refresh(key, len) {
            self.routes.copy_within(i..self.len, i + 1);
            if let Some(slot) = self.routes.get_mut(i) {
                *slot = entry;
            }
            self.len += 1;
            return Err(err);
        }
        let previous = next_hop::decode(entry.code(), self.gateways);
        next_hop::release(entry.code(), self.gateways);
        Ok(previous)
    }

    /// Adds or replaces many routes at once, then recompiles the trie once:
    /// O(n log n) for the whole table instead of O(n) per route. All or nothing.
    ///
    /// The batch is staged in the free part of `routes` before duplicates are merged,
    /// so it needs room for all of its routes. If the batch names one prefix twice,
    /// one of its next hops is kept (which one is unspecified). Returns the number of
    /// routes in the table afterwards.
    ///
    /// Errors: as [`insert`](Self::insert); the table is then unchanged.
    pub fn insert_many<I>(&mut self, batch: I) -> Result<usize, RouteError>
    where
        I: IntoIterator<Item = (Prefix<A>, NextHop)>,
    {
        let old_len = self.len;
        let mut n = old_len;
        for (prefix, hop) in batch {
            let staged = match self.routes.get_mut(n) {
                None => Err(RouteError::RoutesFull),
                Some(slot) => next_hop::acquire(hop, self.gateways).map(|code| {
                    *slot = RouteEntry {
                        key: prefix.addr().to_key(),
                        meta: u32::from(prefix.prefix_len()) << LEN_SHIFT | NEW_FLAG | code,
                    };
                }),
            };
            if let Err(err) = staged {
                for e in self.routes.get(old_len..n).unwrap_or(&[]) {
                    next_hop::release(e.code(), self.gateways);
                }
                return Err(err);
            }
            n += 1;
        }
        let all = self.routes.get_mut(..n).unwrap_or(&mut []);
        all.sort_unstable_by_key(|e| e.order());
        let staged = self.routes.get(..n).unwrap_or(&[]);
        let fits = self.fib.fits_full(self.direct, self.direct_bits, staged);
        if let Err(err) = fits {
            // Drop the staged routes; the rest keeps its order, and the trie was
            // never touched.
            let mut w = 0;
            for r in 0..n {
                let Some(&e) = self.routes.get(r) else { break };
                if e.meta & NEW_FLAG != 0 {
                    next_hop::release(e.code(), self.gateways);
                } else {
                    if let Some(slot) = self.routes.get_mut(w) {
                        *slot = e;
                    }
                    w += 1;
                }
            }
            self.len = w;
            return Err(err);
        }
        // Merge: of equal prefixes keep the last (the newest).
        let mut w = 0;
        for r in 0..n {
            let Some(&e) = self.routes.get(r) else { break };
            if self
                .routes
                .get(r + 1)
                .is_some_and(|next| r + 1 < n && next.same_prefix(&e))
            {
                next_hop::release(e.code(), self.gateways);
                continue;
            }
            if let Some(slot) = self.routes.get_mut(w) {
                *slot = RouteEntry {
                    key: e.key,
                    meta: e.meta & !NEW_FLAG,
                };
            }
            w += 1;
        }
        self.len = w;
        self.rebuild_all()?;
        Ok(self.len)
    }

    /// Removes every route.
    pub fn clear(&mut self) {
        self.len = 0;
        self.direct.fill(CODE_NONE);
        self.gateways.fill(GatewaySlot::default());
        self.fib.node_top = 0;
        self.fib.leaf_top = 0;
    }

    /// Recompiles the whole trie compactly, reclaiming the space that incremental
    /// updates left behind.
    pub fn compact(&mut self) {
        // The compact form of the current routes always fits: it is no larger than
        // the live part of the current trie.
        let _ = self.rebuild_all();
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The routes, in (address, length) order.
    pub fn iter(&self) -> Routes<'_, A> {
        Routes {
            routes: self.routes.get(..self.len).unwrap_or(&[]).iter(),
            gateways: self.gateways,
        }
    }

    /// How much of the storage is in use.
    pub fn usage(&self) -> RouteUsage {
        let used = RouteLayout {
            direct: self.direct.len(),
            nodes: self.fib.node_top,
            leaves: self.fib.leaf_top,
            routes: self.len,
            gateways: next_hop::gateways_used(self.gateways),
        };
        RouteUsage {
            used,
            bytes: used.bytes::<A>(),
        }
    }

    /// Recompiles the direct slots covered by the changed prefix `key/len`, in the
    /// free space if it fits, else the whole trie compactly, else fails untouched.
    fn refresh(&mut self, key: A::Key, len: u32) -> Result<(), RouteError> {
        let k = self.direct_bits;
        let c0 = key.top(k);
        let c1 = c0 + (1usize << k.saturating_sub(len));
        let routes = self.routes.get(..self.len).unwrap_or(&[]);
        let (node_top, leaf_top) = (self.fib.node_top, self.fib.leaf_top);
        self.fib.dry = true;
        let counted = self.fib.build_range(self.direct, k, routes, c0, c1);
        self.fib.dry = false;
        let fits = counted.is_ok()
            && self.fib.node_top <= self.fib.nodes.len()
            && self.fib.leaf_top <= self.fib.leaves.len();
        self.fib.node_top = node_top;
        self.fib.leaf_top = leaf_top;
        if fits {
            return self.fib.build_range(self.direct, k, routes, c0, c1);
        }
        self.fib.fits_full(self.direct, k, routes)?;
        self.rebuild_all()
    }

    /// Recompiles the whole trie from the routes (caller checked that it fits).
    fn rebuild_all(&mut self) -> Result<(), RouteError> {
        self.fib.node_top = 0;
        self.fib.leaf_top = 0;
        let routes = self.routes.get(..self.len).unwrap_or(&[]);
        let end = 1usize << self.direct_bits;
        self.fib
            .build_range(self.direct, self.direct_bits, routes, 0, end)
    }
}

impl<A: RouteAddress> fmt::Debug for RouteTable<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .field("usage", &self.usage())
            .finish()
    }
}

/// Iterator over a table's routes, in (address, length) order.
pub struct Routes<'t, A: RouteAddress> {
    routes: core::slice::Iter<'t, RouteEntry<A>>,
    gateways: &'t [GatewaySlot],
}

impl<A: RouteAddress> Iterator for Routes<'_, A> {
    type Item = (Prefix<A>, NextHop);

    fn next(&mut self) -> Option<Self::Item> {
        for e in self.routes.by_ref() {
            if let Some(hop) = next_hop::decode(e.code(), self.gateways) {
                return Some((Prefix::from_parts(e.key, e.len() as u8), hop));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.routes.len()))
    }
}

//! Longest-prefix-match routing.
//!
//! Design note: the datapath asks "where does this destination go?" once per packet,
//! while the control plane changes routes a few times a second at most (pod CIDRs of
//! remote nodes, `/32`s of local pods, a default route). So the table keeps two views
//! of the same routes over caller-owned memory:
//!
//! - a **RIB**: the routes themselves, a slice sorted by (address, length). Sorted order
//!   is the pre-order of the prefix tree, so every region of the address space is one
//!   contiguous run of it and covering prefixes come before the prefixes they cover;
//! - a **FIB**: a poptrie (Asai & Ohara, SIGCOMM 2015) compiled from the RIB: a
//!   direct-pointing array indexed by the top `k` bits of the address (`k` = log2 of
//!   the caller's `direct` slice, 18 for a full table, smaller for firmware), then
//!   nodes of 6-bit stride holding a 64-bit child bitmap and a 64-bit leaf-run bitmap,
//!   with `popcount` turning a bit position into an index in contiguous child and leaf
//!   arrays. Runs of equal leaves are stored once, so a node that ends fifty `/24`s
//!   with three distinct next hops stores a handful of 32-bit leaves. A lookup is one
//!   direct read, usually zero or one node, and one leaf read: no comparisons of
//!   prefixes, no scan.
//!
//! A change rebuilds only the direct slots it covers (one for a prefix longer than
//! `k`), compiling fresh nodes into free space at the end of the node and leaf
//! arrays; when that space runs out the whole FIB is recompiled compactly, and only if
//! even the compact form does not fit does the change fail with a capacity error and
//! leave the table as it was. Every rebuild is counted in a dry run first, so a
//! failure never leaves a half-written trie. Leaves are 32-bit next-hop codes (see
//! [`NextHop`]), so a lookup decodes its answer without touching the RIB.
//!
//! The table is generic over the address family ([`RouteAddress`]): IPv4 is
//! implemented; IPv6 needs only a `u128` key implementation.

mod next_hop;
mod prefix;
mod table;

pub use next_hop::{GatewaySlot, NextHop};
pub use prefix::{Ipv4Prefix, Prefix, RouteAddress};
pub use table::{
    Ipv4RouteTable, RouteEntry, RouteLayout, RouteStorage, RouteTable, RouteUsage, Routes, TrieNode,
};

#[cfg(test)]
mod tests;

/// What went wrong with a route table operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RouteError {
    /// A prefix length longer than the address.
    BadPrefixLength,
    /// A prefix whose address has bits set past its length.
    HostBitsSet,
    /// The `direct` slice is not a power of two between 2 and 2^24 entries.
    BadStorage,
    /// The `routes` slice is full.
    RoutesFull,
    /// The trie needs more nodes than the `nodes` slice holds.
    NodesFull,
    /// The trie needs more leaves than the `leaves` slice holds.
    LeavesFull,
    /// The `gateways` slice has no room for another distinct gateway.
    GatewaysFull,
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RouteError::BadPrefixLength => "prefix length longer than the address",
            RouteError::HostBitsSet => "prefix address has host bits set",
            RouteError::BadStorage => "direct table size is not a power of two in 2..=2^24",
            RouteError::RoutesFull => "route storage full",
            RouteError::NodesFull => "trie node storage full",
            RouteError::LeavesFull => "trie leaf storage full",
            RouteError::GatewaysFull => "gateway storage full",
        })
    }
}

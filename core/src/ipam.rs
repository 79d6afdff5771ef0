//! IP address management: pod addresses within a node's block, and node blocks within
//! the cluster CIDR, with snapshots a shell can persist and restore.
//!
//! Design note: IPAM state must survive agent restarts exactly (a pod's address must
//! never be handed to a second pod, and the next-fit cursor must not jump back onto
//! recently freed addresses), yet the core never does I/O and never allocates. So the
//! state is two plain fixed-size values — a [`BlockAllocator`] (a const-generic bitmap)
//! and a [`ClusterPool`] (a const-generic owner table) — that serialise to a
//! self-checking byte snapshot; the shell writes it after every change (write, fsync,
//! rename) and restores it on start. A snapshot either loads completely or is rejected
//! with a [`SnapshotError`] naming the defect. Both are generic over a sealed
//! [`AddressFamily`]; IPv4 is implemented and IPv6 can follow as another family.
//!
//! # Typical use
//!
//! ```
//! use core::net::Ipv4Addr;
//! use podwire_core::ids::NodeId;
//! use podwire_core::ipam::{Cidr, Ipv4Block16, Ipv4Pool256};
//!
//! let cluster = Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap();
//! let mut pool = Ipv4Pool256::new(cluster, 24).unwrap();
//! let block = pool.claim(NodeId(1)).unwrap(); // 10.244.0.0/24
//! let mut ips = Ipv4Block16::new(block).unwrap();
//! assert_eq!(ips.gateway(), Ipv4Addr::new(10, 244, 0, 1));
//! let pod = ips.allocate().unwrap(); // 10.244.0.2
//!
//! let mut buf = [0u8; Ipv4Block16::MAX_SNAPSHOT_LEN];
//! let n = ips.to_bytes(&mut buf).unwrap();
//! let restored = Ipv4Block16::from_bytes(&buf[..n]).unwrap();
//! assert_eq!(restored, ips);
//! assert!(restored.is_allocated(pod));
//! ```
//!
//! # Snapshot byte format (version 1)
//!
//! Every snapshot is one record: a 12-byte header, a body, and a CRC-32. Integers are
//! big-endian; addresses are in network byte order (`A` = 4 bytes for IPv4). The
//! record must be passed to `from_bytes` exactly: shorter input is `Truncated`,
//! longer is `TrailingBytes`.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic: `"PWIB"` (block) or `"PWIP"` (pool) |
//! | 4 | 1 | format version, 1 |
//! | 5 | 1 | address family: 4 = IPv4 (6 reserved for IPv6) |
//! | 6 | 1 | block: prefix length · pool: cluster prefix length |
//! | 7 | 1 | block: flags, must be 0 · pool: block prefix length |
//! | 8 | 4 | total length of the record in bytes, including the CRC |
//! | 12 | … | body (below) |
//! | len−4 | 4 | CRC-32 of bytes `0..len-4` |
//!
//! **Block body** (`"PWIB"`), for a block of `S = 2^(32-prefix)` addresses:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 12 | A | network address |
//! | 12+A | 4 | next-fit cursor: offset in the block of the last address `allocate` returned (initially 1, the gateway) |
//! | 16+A | 4 | number of allocated addresses |
//! | 20+A | ⌈S/8⌉ | bitmap: offset `i` is allocated iff bit `i % 8` (LSB first) of byte `i / 8` is set |
//!
//! The bitmap never has bits set for reserved offsets (0 = network, 1 = gateway,
//! `S-1` = broadcast) or past `S`; the count equals the bits set; the cursor is below
//! `S`; the prefix is /16 to /30 and must fit the restoring type's bitmap.
//!
//! **Pool body** (`"PWIP"`), for `N` claimed blocks:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 12 | A | cluster network address |
//! | 12+A | 4 | `N` |
//! | 16+A | 6·N | entries: block index (u32; block `i` starts at `network + i·2^(32-block_prefix)`), owner node id (u16) |
//!
//! Entries are in strictly ascending block index, each below the pool's block count;
//! no node appears twice; the block prefix is /16 to /30 and not shorter than the
//! cluster prefix, and the pool must fit the restoring type's table.
//!
//! **CRC-32** is CRC-32/ISO-HDLC (as zlib, Ethernet, PNG): reflected polynomial
//! `0xEDB88320`, initial value and final XOR `0xFFFFFFFF`, check value `0xCBF43926`
//! for `"123456789"`; see [`crc32`]. It detects every single-bit error and every
//! burst up to 32 bits.
//!
//! Checks run in this order, and the first failure is returned: header present
//! (`Truncated`), magic, version, family, declared length (`BadLength`, `Truncated`,
//! `TrailingBytes`), CRC (`BadChecksum`), then the field invariants above.

mod block;
mod family;
mod pool;
mod snapshot;

pub use block::{Allocated, BlockAllocator, BlockError, Ipv4Block16, Ipv4Block24, BLOCK_MAGIC};
pub use family::{AddressFamily, Cidr, CidrError, Ipv4};
pub use pool::{Claims, ClusterPool, Ipv4Pool1024, Ipv4Pool256, PoolError, POOL_MAGIC};
pub use snapshot::{crc32, SnapshotError, SNAPSHOT_VERSION};

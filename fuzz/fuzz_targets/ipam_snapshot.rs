//! Feeds arbitrary bytes to the IPAM snapshot parsers (block and pool, two sizes
//! each). Each input is tried twice: as is (exercising the envelope checks), and with
//! its length field and CRC-32 patched to be valid, so the field-level invariant
//! checks behind the checksum are explored too. Whatever a parser accepts must
//! re-encode to the identical bytes and survive a few operations without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podwire_core::ids::NodeId;
use podwire_core::ipam::{crc32, BlockAllocator, ClusterPool, Ipv4, Ipv4Block16, Ipv4Block24};

fn reencode(
    len: usize,
    to_bytes: impl Fn(&mut [u8]) -> Result<usize, podwire_core::ipam::SnapshotError>,
    input: &[u8],
) {
    let mut out = vec![0u8; len];
    assert_eq!(to_bytes(&mut out), Ok(len));
    assert_eq!(out, input, "accepted snapshot must re-encode identically");
}

fn block<const W: usize>(data: &[u8]) {
    if let Ok(mut b) = BlockAllocator::<Ipv4, W>::from_bytes(data) {
        reencode(b.snapshot_len(), |o| b.to_bytes(o), data);
        let before = b.allocated();
        assert_eq!(b.iter().count() as u32, before);
        if let Ok(a) = b.allocate() {
            assert!(b.is_allocated(a) && !b.is_reserved(a));
            b.release(a).unwrap();
        }
        let _ = b.allocate_addr(b.gateway());
        assert_eq!(b.allocated(), before);
    }
}

fn pool<const N: usize>(data: &[u8]) {
    if let Ok(mut p) = ClusterPool::<Ipv4, N>::from_bytes(data) {
        reencode(p.snapshot_len(), |o| p.to_bytes(o), data);
        assert_eq!(p.iter().count() as u32, p.claimed());
        for (block, node) in p.iter() {
            assert_eq!(p.owner_of(block.network()), Some(node));
            assert_eq!(p.block_of(node), Some(block));
        }
        let _ = p.claim(NodeId(u16::MAX));
        let _ = p.release(NodeId(0));
    }
}

fn all(data: &[u8]) {
    block::<1024>(data);
    block::<4>(data);
    pool::<256>(data);
    pool::<1024>(data);
    let _ = Ipv4Block16::from_bytes(data);
    let _ = Ipv4Block24::from_bytes(data);
}

fuzz_target!(|data: &[u8]| {
    all(data);
    if data.len() >= 16 {
        let mut sealed = data.to_vec();
        let n = sealed.len();
        sealed[8..12].copy_from_slice(&(n as u32).to_be_bytes());
        let crc = crc32(&sealed[..n - 4]);
        sealed[n - 4..].copy_from_slice(&crc.to_be_bytes());
        all(&sealed);
    }
});

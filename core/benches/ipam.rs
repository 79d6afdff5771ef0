//! IPAM allocation cost in a nearly full /16: podwire's word-skipping next-fit vs. the
//! same next-fit rule probing one address at a time (the CNI host-local strategy),
//! over a bitmap and over a `BTreeSet` store, on the same state.
//!
//! Worst case by construction: every usable address of 10.244.0.0/16 is allocated
//! except one, which sits just *behind* the cursor, so each allocation wraps around
//! the whole block before finding it; it is then released again. Also measured: the
//! common case, allocating in an empty /16 (next address is adjacent).
//!
//! Each case runs 7 times; the median and minimum ns per allocation are printed as
//! one JSON line per case, then one JSON summary line.
use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use podwire_core::ipam::{Cidr, Ipv4Block16};

const SIZE: u32 = 1 << 16;
const RUNS: usize = 7;

fn measure(name: &str, iters: u32, mut f: impl FnMut(u32)) -> (f64, f64) {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        for i in 0..iters {
            f(black_box(i));
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (median, min) = (samples[RUNS / 2], samples[0]);
    println!(
        "{{\"case\":\"{name}\",\"iters\":{iters},\"runs\":{RUNS},\"median_ns\":{median:.1},\"min_ns\":{min:.1}}}"
    );
    (median, min)
}

/// Next-fit probing one address at a time; `taken(o)` says whether offset `o` is used.
fn next_fit_per_address(cursor: u32, taken: impl Fn(u32) -> bool) -> Option<u32> {
    (1..=SIZE)
        .map(|i| (cursor + i) % SIZE)
        .find(|&o| (2..SIZE - 1).contains(&o) && !taken(o))
}

fn main() {
    let net = Ipv4Addr::new(10, 244, 0, 0);
    let cidr = Cidr::new(net, 16).unwrap();
    let hole = 0x1234u32; // 10.244.18.52
    let hole_addr = Ipv4Addr::from(u32::from(net) + hole);

    // podwire: fill the block, free the hole, and let the cursor sit on it.
    let mut block = Ipv4Block16::new(cidr).unwrap();
    while block.allocate().is_ok() {}
    block.release(hole_addr).unwrap();
    assert_eq!(block.allocate(), Ok(hole_addr));
    block.release(hole_addr).unwrap();
    let (pw, pw_min) = measure("podwire_word_skip_nearly_full_16", 20_000, |_| {
        let a = block.allocate().unwrap();
        block.release(black_box(a)).unwrap();
    });

    // Peer 1: the same bitmap, probed bit by bit.
    let mut bits = vec![!0u64; (SIZE / 64) as usize];
    let clear = |bits: &mut Vec<u64>, o: u32| bits[(o / 64) as usize] &= !(1 << (o % 64));
    clear(&mut bits, hole);
    let mut cursor = hole;
    let (bit, bit_min) = measure("per_address_bitmap_nearly_full_16", 2_000, |_| {
        let o =
            next_fit_per_address(cursor, |o| bits[(o / 64) as usize] >> (o % 64) & 1 != 0).unwrap();
        bits[(o / 64) as usize] |= 1 << (o % 64);
        cursor = o;
        bits[(o / 64) as usize] &= !(1 << (o % 64));
    });

    // Peer 2: host-local's probing against an in-memory set of used addresses.
    let mut used: BTreeSet<u32> = (2..SIZE - 1).collect();
    used.remove(&hole);
    let mut cursor = hole;
    let (set, set_min) = measure("per_address_btreeset_nearly_full_16", 50, |_| {
        let o = next_fit_per_address(cursor, |o| used.contains(&o)).unwrap();
        used.insert(o);
        cursor = o;
        used.remove(&o);
    });

    // Common case: allocating in an empty /16 (reset every full pass).
    let mut fresh = Ipv4Block16::new(cidr).unwrap();
    let (seq, _) = measure("podwire_sequential_empty_16", 60_000, |_| {
        if fresh.allocate().is_err() {
            fresh = Ipv4Block16::new(cidr).unwrap();
        }
    });

    println!(
        "{{\"summary\":\"ipam next-fit allocation, nearly full /16, one hole behind the cursor\",\
\"podwire_median_ns\":{pw:.1},\"podwire_min_ns\":{pw_min:.1},\
\"per_address_bitmap_median_ns\":{bit:.1},\"per_address_bitmap_min_ns\":{bit_min:.1},\
\"per_address_btreeset_median_ns\":{set:.1},\"per_address_btreeset_min_ns\":{set_min:.1},\
\"speedup_vs_per_address_bitmap\":{:.1},\"speedup_vs_btreeset\":{:.1},\
\"podwire_sequential_empty_median_ns\":{seq:.1}}}",
        bit / pw,
        set / pw
    );
}

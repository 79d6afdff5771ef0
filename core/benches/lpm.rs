//! Longest-prefix-match benchmark: podwire's route table against `prefix-trie`,
//! `ip_network_table` and `poptrie`, side by side on the same prefixes and keys.
//!
//! Run: `cargo bench -p podwire-core --bench lpm` (sizes can be narrowed with
//! `LPM_SIZES=1000,10000`).
//!
//! For each table size (1k, 10k, 100k, ~1M prefixes) it draws prefixes with an
//! internet-like length mix (~60% /24, ~30% /16–/23, ~5% /8–/15, ~5% /25–/32) from a
//! fixed-seed PRNG, builds all four tables, checks that all four agree on every lookup
//! key (a mismatch aborts), then times lookups over the same key array: half uniformly
//! random addresses, half addresses inside inserted prefixes. Each structure is timed
//! in several interleaved rounds; the median and minimum ns/lookup are reported.
//! Memory: podwire's is exact (the storage slots in use, and what the worst-case
//! layout provisions); the peers' is what they hold on the heap after the build,
//! measured with a counting global allocator.
//!
//! Output: one JSON line per (size, implementation), then one summary line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use podwire_core::ids::NodeId;
use podwire_core::route::{
    GatewaySlot, Ipv4RouteTable, NextHop, Prefix, RouteEntry, RouteLayout, RouteStorage,
    RouteTable, TrieNode,
};

/// Counts the bytes currently allocated through the global allocator, so the peers'
/// heap footprint can be measured.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only updates an atomic counter besides, so `System`'s guarantees carry over. This is
// the only `unsafe` in podwire-core's targets; the core library itself forbids it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// splitmix64: a small deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SEED: u64 = 0x05ee_d0fb_0d1e;
const KEYS: usize = 1 << 19;
const ROUNDS: usize = 11;
/// Distinct next hops (remote nodes) the routes point at.
const HOPS: u64 = 1024;
/// "No route" in the u32 result all implementations are compared on.
const NONE: u32 = u32::MAX;

/// An internet-like prefix length.
fn draw_len(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..=59 => 24,
        60..=89 => 16 + rng.below(8) as u8,
        90..=94 => 8 + rng.below(8) as u8,
        _ => 25 + rng.below(8) as u8,
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Distinct prefixes `(network, len, value)`.
fn draw_prefixes(rng: &mut Rng, n: usize) -> Vec<(u32, u8, u32)> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = draw_len(rng);
        let addr = (rng.next() as u32) & mask(len);
        if seen.insert((addr, len)) {
            out.push((addr, len, rng.below(HOPS) as u32));
        }
    }
    out
}

/// Half random addresses, half addresses inside inserted prefixes, shuffled.
fn draw_keys(rng: &mut Rng, prefixes: &[(u32, u8, u32)]) -> Vec<u32> {
    (0..KEYS)
        .map(|i| {
            if i % 2 == 0 {
                rng.next() as u32
            } else {
                let (a, len, _) = prefixes[rng.below(prefixes.len() as u64) as usize];
                a | (rng.next() as u32 & !mask(len))
            }
        })
        .collect()
}

/// Times `f` over all keys; ns per lookup.
fn time<F: Fn(u32) -> u32>(keys: &[u32], f: F) -> f64 {
    let start = Instant::now();
    let mut acc = 0u32;
    for &k in keys {
        acc = acc.wrapping_add(f(black_box(k)));
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / keys.len() as f64
}

fn hop_value(h: Option<NextHop>) -> u32 {
    match h {
        Some(NextHop::Node(NodeId(id))) => u32::from(id),
        Some(_) => NONE - 1,
        None => NONE,
    }
}

struct Case {
    name: &'static str,
    build_ms: f64,
    bytes: usize,
    times: Vec<f64>,
}

fn stats(times: &[f64]) -> (f64, f64) {
    let mut t = times.to_vec();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[t.len() / 2], t[0])
}

fn main() {
    let sizes: Vec<usize> = std::env::var("LPM_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000, 1_000_000]);
    let forced_bits: Option<u8> = std::env::var("LPM_DIRECT_BITS")
        .ok()
        .and_then(|s| s.parse().ok());
    let poptrie_max: usize = std::env::var("LPM_POPTRIE_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut summary = Vec::new();
    let mut min_ratio = f64::INFINITY;

    for &n in &sizes {
        let mut rng = Rng(SEED ^ n as u64);
        let prefixes = draw_prefixes(&mut rng, n);
        let keys = draw_keys(&mut rng, &prefixes);

        // podwire: storage sized by the worst-case layout with the suggested direct
        // array for this many prefixes, loaded with one batch.
        let direct_bits = forced_bits.unwrap_or(RouteLayout::suggested_direct_bits(n));
        let layout = Ipv4RouteTable::layout(direct_bits, n, 1);
        let mut direct = vec![0u32; layout.direct];
        let mut nodes = vec![TrieNode::default(); layout.nodes];
        let mut leaves = vec![0u32; layout.leaves];
        let mut routes = vec![RouteEntry::default(); layout.routes];
        let mut gateways = vec![GatewaySlot::default(); layout.gateways];
        let t0 = Instant::now();
        let mut ours = RouteTable::new(RouteStorage {
            direct: &mut direct,
            nodes: &mut nodes,
            leaves: &mut leaves,
            routes: &mut routes,
            gateways: &mut gateways,
        })
        .expect("storage");
        ours.insert_many(prefixes.iter().map(|&(a, len, v)| {
            (
                Prefix::new(Ipv4Addr::from(a), len).expect("prefix"),
                NextHop::Node(NodeId(v as u16)),
            )
        }))
        .expect("podwire build");
        let ours_build = t0.elapsed().as_secs_f64() * 1e3;
        let usage = ours.usage();

        // prefix-trie
        let before = allocated();
        let t0 = Instant::now();
        let mut pt = prefix_trie::PrefixMap::<(u32, u8), u32>::new();
        for &(a, len, v) in &prefixes {
            pt.insert((a, len), v);
        }
        let pt_build = t0.elapsed().as_secs_f64() * 1e3;
        let pt_bytes = allocated() - before;

        // ip_network_table
        let before = allocated();
        let t0 = Instant::now();
        let mut nt = ip_network_table::IpNetworkTable::<u32>::new();
        for &(a, len, v) in &prefixes {
            let net = ip_network::Ipv4Network::new(Ipv4Addr::from(a), len).expect("network");
            nt.insert(net, v);
        }
        let nt_build = t0.elapsed().as_secs_f64() * 1e3;
        let nt_bytes = allocated() - before;

        // poptrie (its insert shifts its whole node and leaf arrays, so a build is
        // quadratic: ~17 s for 100k prefixes here, extrapolated ~30 min for 1M; it is
        // left out above `poptrie_max` prefixes and the skip is reported).
        let with_pop = n <= poptrie_max;
        let before = allocated();
        let t0 = Instant::now();
        let mut pop = poptrie::Poptrie::<(u32, u8), u32>::new();
        if with_pop {
            for &(a, len, v) in &prefixes {
                pop.insert((a, len), v);
            }
        } else {
            println!(
                "{{\"bench\":\"lpm\",\"prefixes\":{n},\"impl\":\"poptrie\",\"skipped\":\"build is quadratic in poptrie 0.2 (Vec::insert + base shifts per new node); over LPM_POPTRIE_MAX={poptrie_max}\"}}"
            );
        }
        let pop_build = t0.elapsed().as_secs_f64() * 1e3;
        let pop_bytes = allocated() - before;

        let f_ours = |k: u32| hop_value(ours.lookup(Ipv4Addr::from(k)));
        let f_pt = |k: u32| pt.get_lpm(&(k, 32)).map_or(NONE, |(_, &v)| v);
        let f_nt = |k: u32| {
            nt.longest_match_ipv4(Ipv4Addr::from(k))
                .map_or(NONE, |(_, &v)| v)
        };
        let f_pop = |k: u32| {
            if with_pop {
                pop.lookup(k).copied().unwrap_or(NONE)
            } else {
                f_ours(k)
            }
        };

        // Agreement on every key.
        for &k in &keys {
            let r = [f_ours(k), f_pt(k), f_nt(k), f_pop(k)];
            if r.iter().any(|&x| x != r[0]) {
                eprintln!(
                    "MISMATCH at {} with {n} prefixes: podwire {} prefix-trie {} ip_network_table {} poptrie {}",
                    Ipv4Addr::from(k),
                    r[0],
                    r[1],
                    r[2],
                    r[3]
                );
                std::process::exit(1);
            }
        }

        let mut cases: Vec<Case> = vec![
            Case {
                name: "podwire",
                build_ms: ours_build,
                bytes: usage.bytes,
                times: vec![],
            },
            Case {
                name: "prefix-trie",
                build_ms: pt_build,
                bytes: pt_bytes,
                times: vec![],
            },
            Case {
                name: "ip_network_table",
                build_ms: nt_build,
                bytes: nt_bytes,
                times: vec![],
            },
            Case {
                name: "poptrie",
                build_ms: pop_build,
                bytes: pop_bytes,
                times: vec![],
            },
        ];
        if !with_pop {
            cases.pop();
        }
        // Warm up, then interleave the rounds so machine noise hits all alike.
        time(&keys, f_ours);
        time(&keys, f_pt);
        time(&keys, f_nt);
        if with_pop {
            time(&keys, f_pop);
        }
        for _ in 0..ROUNDS {
            cases[0].times.push(time(&keys, f_ours));
            cases[1].times.push(time(&keys, f_pt));
            cases[2].times.push(time(&keys, f_nt));
            if with_pop {
                cases[3].times.push(time(&keys, f_pop));
            }
        }

        let mut best_peer: Option<(&'static str, f64)> = None;
        let (ours_med, ours_min) = stats(&cases[0].times);
        let mut best_peer_min = f64::INFINITY;
        for c in &cases {
            let (med, min) = stats(&c.times);
            let extra = if c.name == "podwire" {
                format!(
                    ",\"memory\":\"exact\",\"direct_bits\":{direct_bits},\"nodes\":{},\"leaves\":{},\"provisioned_bytes\":{}",
                    usage.used.nodes,
                    usage.used.leaves,
                    layout.bytes::<Ipv4Addr>()
                )
            } else {
                ",\"memory\":\"heap bytes after build (counting allocator)\"".to_string()
            };
            println!(
                "{{\"bench\":\"lpm\",\"prefixes\":{n},\"impl\":\"{}\",\"ns_per_lookup_median\":{med:.2},\"ns_per_lookup_min\":{min:.2},\"build_ms\":{:.1},\"bytes\":{},\"bytes_per_prefix\":{:.1},\"keys\":{KEYS},\"rounds\":{ROUNDS}{extra}}}",
                c.name,
                c.build_ms,
                c.bytes,
                c.bytes as f64 / n as f64
            );
            if c.name != "podwire" {
                best_peer_min = best_peer_min.min(min);
            }
            if c.name != "podwire" && best_peer.is_none_or(|(_, b)| med < b) {
                best_peer = Some((c.name, med));
            }
        }
        let (peer, peer_ns) = best_peer.expect("peers");
        let ratio = peer_ns / ours_med;
        min_ratio = min_ratio.min(ratio);
        summary.push(format!(
            "{{\"prefixes\":{n},\"peers\":{},\"podwire_ns\":{ours_med:.2},\"best_peer\":\"{peer}\",\"best_peer_ns\":{peer_ns:.2},\"ratio\":{ratio:.2},\"ratio_of_minima\":{:.2},\"podwire_bytes_per_prefix\":{:.1}}}",
            cases.len() - 1,
            best_peer_min / ours_min,
            usage.bytes as f64 / n as f64
        ));
    }
    println!(
        "{{\"bench\":\"lpm\",\"min_ratio_vs_best_peer\":{min_ratio:.2},\"cases\":[{}]}}",
        summary.join(",")
    );
}

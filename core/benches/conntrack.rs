//! Connection-tracking benchmark: 1M (2^20) TCP connections in podwire's table, with
//! std's `HashMap` (SipHash, both tuples inserted, as a two-tuple table must) as the
//! peer, on the same keys in the same run.
//!
//! Cases (ns per operation; each repeated, min and median printed):
//! - `insert`: 2^20 inserts into an empty table;
//! - `lookup_hit`: lookups of every connection's original tuple in a shuffled order
//!   (the table is far larger than the caches: this is mostly DRAM latency, overlapped
//!   across independent lookups by the CPU);
//! - `lookup_hit_hot`: lookups cycling over 1024 connections (cache-resident: the
//!   cost of hash + probe + compare alone);
//! - `lookup_update`: the per-packet established path, lookup + TCP state update;
//! - `lookup_miss`: lookups of absent tuples;
//! - `flow_hash`: the hash alone over the 1024 hot keys (SipHash for std).
//!
//! Last line: `{"bench":"conntrack","lookup_hit_ns":..,"insert_ns":..,...}` (medians).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant as Clock;

use podwire_core::conntrack::{
    buckets_for, Bucket, Config, ConnTrack, Direction, Entry, Nat, NatTarget, TCP_ACK,
};
use podwire_core::flow::{FlowKey, PROTO_TCP};
use podwire_core::Instant;

const N: usize = 1 << 20;
const RUNS: usize = 5;

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn keys(rng: &mut Rng, n: usize, offset: u32) -> Vec<FlowKey> {
    (0..n as u32)
        .map(|i| {
            let i = i + offset;
            let r = rng.next();
            FlowKey {
                // Distinct by construction: (source address, source port) encodes i.
                src: IpAddr::V4(Ipv4Addr::from(0x0af4_0000 | (i >> 12))),
                src_port: 32768 + (i & 0xfff) as u16,
                dst: IpAddr::V4(Ipv4Addr::from(0x0a60_0000 | (r as u32 & 0xffff))),
                dst_port: [80, 443, 53, 8080][(r >> 32) as usize % 4],
                protocol: PROTO_TCP,
                zone: 0,
            }
        })
        .collect()
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn report(case: &str, imp: &str, samples: Vec<f64>) -> f64 {
    let (min, median) = stats(samples);
    println!(
        "{{\"case\":\"{case}\",\"impl\":\"{imp}\",\"ns_min\":{min:.1},\"ns_median\":{median:.1}}}"
    );
    median
}

fn nat_for(k: &FlowKey) -> Nat {
    // A ClusterIP → backend DNAT, so the reply tuple differs from the reversed key.
    Nat {
        dnat: Some(NatTarget {
            addr: IpAddr::V4(Ipv4Addr::new(10, 244, 9, 9)),
            port: k.dst_port + 1,
        }),
        snat: None,
    }
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let flows = keys(&mut rng, N, 0);
    let absent = keys(&mut rng, N, N as u32);
    let mut order: Vec<usize> = (0..N).collect();
    shuffle(&mut rng, &mut order);
    let shuffled: Vec<FlowKey> = order.iter().map(|&i| flows[i]).collect();
    let hot: Vec<FlowKey> = shuffled[..1024].to_vec();
    let now = Instant::from_secs(1);

    let mut buckets = vec![Bucket::EMPTY; buckets_for(N)];
    let mut entries = vec![Entry::EMPTY; N];

    // --- insert ---
    let mut ins = Vec::new();
    let mut std_ins = Vec::new();
    for _ in 0..RUNS {
        let mut ct = ConnTrack::new(&mut buckets, &mut entries, Config::default()).unwrap();
        let t = Clock::now();
        for k in &flows {
            black_box(ct.insert(*k, nat_for(k), now).unwrap());
        }
        ins.push(t.elapsed().as_nanos() as f64 / N as f64);
        // Deterministic input: at the recommended sizing nothing is evicted early.
        assert_eq!((ct.len(), ct.counters().evictions), (N, 0));

        let replies: Vec<FlowKey> = flows
            .iter()
            .map(|k| nat_for(k).reply_key(k).unwrap())
            .collect();
        let mut map: HashMap<FlowKey, u32> = HashMap::with_capacity(2 * N);
        let t = Clock::now();
        for (i, (k, r)) in flows.iter().zip(&replies).enumerate() {
            map.insert(*k, (i as u32) << 1);
            map.insert(*r, (i as u32) << 1 | 1);
        }
        std_ins.push(t.elapsed().as_nanos() as f64 / N as f64);
        black_box(&map);
    }
    let insert_ns = report("insert", "podwire", ins);
    let std_insert_ns = report("insert", "std_hashmap_siphash", std_ins);

    // Tables for the lookup cases.
    let mut ct = ConnTrack::new(&mut buckets, &mut entries, Config::default()).unwrap();
    let mut map: HashMap<FlowKey, u32> = HashMap::with_capacity(2 * N);
    for (i, k) in flows.iter().enumerate() {
        let id = ct.insert(*k, nat_for(k), now).unwrap();
        ct.update(id, Direction::Original, TCP_ACK, 100, now)
            .unwrap();
        map.insert(*k, (i as u32) << 1);
        map.insert(nat_for(k).reply_key(k).unwrap(), (i as u32) << 1 | 1);
    }
    assert_eq!(ct.counters().evictions, 0);

    let run = |case: &str, keys: &[FlowKey], reps: usize, ct: &mut ConnTrack, update: bool| {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..RUNS {
            let t = Clock::now();
            let mut acc = 0usize;
            for _ in 0..reps {
                for k in keys {
                    if let Some((id, dir)) = ct.lookup(black_box(k), now) {
                        if update {
                            let _ = black_box(ct.update(id, dir, TCP_ACK, 1400, now));
                        }
                        acc = acc.wrapping_add(id.index());
                    }
                }
            }
            ours.push(t.elapsed().as_nanos() as f64 / (reps * keys.len()) as f64);
            black_box(acc);
            let t = Clock::now();
            let mut acc = 0usize;
            for _ in 0..reps {
                for k in keys {
                    if let Some(v) = map.get(black_box(k)) {
                        acc = acc.wrapping_add(*v as usize);
                    }
                }
            }
            theirs.push(t.elapsed().as_nanos() as f64 / (reps * keys.len()) as f64);
            black_box(acc);
        }
        let a = report(case, "podwire", ours);
        let b = report(case, "std_hashmap_siphash", theirs);
        (a, b)
    };
    // The floor of the hot path: hashing alone (podwire flow hash v1 vs SipHash-1-3).
    let (mut fh, mut sh) = (Vec::new(), Vec::new());
    let seed = ct.config().seed;
    let sip = std::collections::hash_map::RandomState::new();
    for _ in 0..RUNS {
        let t = Clock::now();
        let mut acc = 0u64;
        for _ in 0..1024 {
            for k in &hot {
                acc ^= black_box(k).hash(seed);
            }
        }
        fh.push(t.elapsed().as_nanos() as f64 / (1024 * hot.len()) as f64);
        black_box(acc);
        let t = Clock::now();
        let mut acc = 0u64;
        for _ in 0..1024 {
            for k in &hot {
                acc ^= std::hash::BuildHasher::hash_one(&sip, black_box(k));
            }
        }
        sh.push(t.elapsed().as_nanos() as f64 / (1024 * hot.len()) as f64);
        black_box(acc);
    }
    let hash_ns = report("flow_hash", "podwire", fh);
    report("flow_hash", "std_siphash", sh);
    let (hit, std_hit) = run("lookup_hit", &shuffled, 1, &mut ct, false);
    let (hot, std_hot) = run("lookup_hit_hot", &hot, 1024, &mut ct, false);
    let (upd, _) = run("lookup_update", &shuffled, 1, &mut ct, true);
    let (miss, std_miss) = run("lookup_miss", &absent, 1, &mut ct, false);
    let c = ct.counters();
    assert_eq!(c.evictions, 0);
    println!(
        "{{\"bench\":\"conntrack\",\"entries\":{N},\"entry_bytes\":{},\"index_bytes_per_entry\":{},\
\"lookup_hit_ns\":{hit:.1},\"insert_ns\":{insert_ns:.1},\"lookup_hit_hot_ns\":{hot:.1},\
\"lookup_update_ns\":{upd:.1},\"flow_hash_ns\":{hash_ns:.1},\"lookup_miss_ns\":{miss:.1},\
\"std_hashmap_lookup_hit_ns\":{std_hit:.1},\"std_hashmap_lookup_hit_hot_ns\":{std_hot:.1},\
\"std_hashmap_lookup_miss_ns\":{std_miss:.1},\"std_hashmap_insert_ns\":{std_insert_ns:.1},\
\"lookup_hit_ratio_vs_std\":{:.2},\"insert_ratio_vs_std\":{:.2}}}",
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<Bucket>() * buckets_for(N) / N,
        hit / std_hit,
        insert_ns / std_insert_ns,
    );
}

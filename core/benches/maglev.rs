//! Maglev benchmark: podwire-core's `maglev` module side by side with the `maglev`
//! crate (0.2, crates.io) on the same backends (`10.244.x.y:8080`, the crate keyed by
//! the same `SocketAddr`s), M = 65537.
//!
//! Cases (one JSON line each, then the summary as the last line):
//! * build time for N = 100 and N = 1000 — podwire: min and median of many builds;
//!   crate: min and median of a few (each allocates an N × M permutation matrix);
//! * lookup: ns per lookup of a precomputed flow hash (podwire), and per `get` of a
//!   `u64` key in the crate (which hashes it with SipHash inside), plus podwire's
//!   `FlowKey::hash` + lookup for an end-to-end figure;
//! * imbalance, defined as `(max entries owned by one backend − M/N) / (M/N) × 100`
//!   over the table entries (every entry is equally likely for a uniform flow hash), at
//!   M = 65537 for N = 100 (the summary's `max_imbalance_pct`) and N = 1000; plus the
//!   same measure over 10⁷ random flows' actual lookups (includes sampling noise);
//! * disruption: remove one of N backends, count the table entries whose backend
//!   changed, divide by M; mean over removals of many different backends;
//!   `disruption_vs_ideal` = that fraction / (1/N) (1.0 would be perfect consistency),
//!   for N = 100 (summary) and N = 1000, and for the crate at N = 100; and for
//!   N = 100 at M from 16381 to 655373, to show how it falls as M/N grows.
//!
//! Run: `cargo bench -p podwire-core --bench maglev`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use maglev::ConsistentHasher;
use podwire_core::flow::{FlowKey, PROTO_TCP};
use podwire_core::maglev::{build, lookup, scratch_len, MaglevBackend, MaglevScratch};

const M: usize = 65537;

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8);
            SocketAddr::new(IpAddr::V4(ip), 8080)
        })
        .collect()
}

fn podwire_backends(a: &[SocketAddr]) -> Vec<MaglevBackend> {
    a.iter()
        .map(|s| MaglevBackend::from_addr(s.ip(), s.port(), 1))
        .collect()
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn build_podwire(b: &[MaglevBackend], table: &mut [u16], scratch: &mut [MaglevScratch]) {
    build(table, b, scratch).unwrap();
}

/// Build times in ms (min, median).
fn time_podwire(b: &[MaglevBackend], runs: usize) -> (f64, f64) {
    let mut table = vec![0u16; M];
    let mut scratch = vec![MaglevScratch::ZERO; scratch_len(b.len())];
    build_podwire(b, &mut table, &mut scratch);
    let mut t = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        build_podwire(black_box(b), &mut table, &mut scratch);
        black_box(&table);
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    stats(t)
}

fn time_crate(a: &[SocketAddr], runs: usize) -> (f64, f64) {
    let mut t = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        let m = maglev::Maglev::with_capacity(black_box(a.to_vec()), M);
        black_box(&m);
        t.push(s.elapsed().as_secs_f64() * 1e3);
        assert_eq!(m.capacity(), M);
    }
    stats(t)
}

fn counts(t: &[u16], n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for &e in t {
        c[e as usize] += 1;
    }
    c
}

fn imbalance_pct(c: &[usize], total: usize) -> f64 {
    let mean = total as f64 / c.len() as f64;
    (*c.iter().max().unwrap() as f64 - mean) / mean * 100.0
}

fn built(b: &[MaglevBackend]) -> Vec<u16> {
    built_m(b, M)
}

fn built_m(b: &[MaglevBackend], m: usize) -> Vec<u16> {
    let mut table = vec![0u16; m];
    let mut scratch = vec![MaglevScratch::ZERO; scratch_len(b.len())];
    build(&mut table, b, &mut scratch).unwrap();
    table
}

/// Mean fraction of entries that change backend when one backend is removed, over
/// `removals` evenly spread removed backends.
fn disruption_podwire(n: usize, removals: usize) -> f64 {
    disruption_podwire_m(n, removals, M)
}

fn disruption_podwire_m(n: usize, removals: usize, m: usize) -> f64 {
    let b = podwire_backends(&addrs(n));
    let base = built_m(&b, m);
    let mut sum = 0.0;
    for k in 0..removals {
        let r = k * n / removals;
        let mut b2 = b.clone();
        b2[r].weight = 0; // excluded; indices of the others unchanged
        let t = built_m(&b2, m);
        let moved = base.iter().zip(&t).filter(|(x, y)| x != y).count();
        sum += moved as f64 / m as f64;
    }
    sum / removals as f64
}

fn disruption_crate(n: usize, removals: usize) -> f64 {
    let a = addrs(n);
    let base = maglev::Maglev::with_capacity(a.clone(), M);
    let keys: Vec<u64> = (0..200_000u64).collect();
    let before: Vec<SocketAddr> = keys.iter().map(|k| *base.get(k).unwrap()).collect();
    let mut sum = 0.0;
    for k in 0..removals {
        let r = k * n / removals;
        let mut a2 = a.clone();
        a2.remove(r);
        let m = maglev::Maglev::with_capacity(a2, M);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| m.get(*k).unwrap() != *b)
            .count();
        sum += moved as f64 / keys.len() as f64;
    }
    sum / removals as f64
}

fn flow(i: u64) -> FlowKey {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    FlowKey {
        src: IpAddr::V4(Ipv4Addr::from((x >> 32) as u32)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        src_port: x as u16,
        dst_port: 80,
        protocol: PROTO_TCP,
        zone: 0,
    }
}

fn main() {
    let runs_pw = 41;
    let runs_crate = 3;
    let mut summary = Vec::new();

    // Build times.
    let mut build = std::collections::BTreeMap::new();
    for n in [100usize, 1000] {
        let a = addrs(n);
        let b = podwire_backends(&a);
        let (pw_min, pw_med) = time_podwire(&b, runs_pw);
        let (cr_min, cr_med) = time_crate(&a, runs_crate);
        println!(
            "{{\"case\":\"build\",\"m\":{M},\"n\":{n},\"podwire_ms_min\":{pw_min:.3},\"podwire_ms_median\":{pw_med:.3},\"podwire_runs\":{runs_pw},\"maglev_crate_ms_min\":{cr_min:.3},\"maglev_crate_ms_median\":{cr_med:.3},\"maglev_crate_runs\":{runs_crate},\"ratio_min\":{:.1}}}",
            cr_min / pw_min
        );
        build.insert(n, (pw_min, cr_min));
    }

    // Lookups.
    let a = addrs(100);
    let table = built(&podwire_backends(&a));
    let keys: Vec<FlowKey> = (0..1_000_000u64).map(flow).collect();
    let hashes: Vec<u64> = keys.iter().map(|k| k.hash(0)).collect();
    let reps = 20;
    let mut t_lookup = Vec::new();
    let mut t_hash_lookup = Vec::new();
    let mut t_crate = Vec::new();
    let cr = maglev::Maglev::with_capacity(a.clone(), M);
    let crate_keys: Vec<u64> = (0..1_000_000u64).collect();
    for _ in 0..reps {
        let s = Instant::now();
        let mut acc = 0u64;
        for &h in &hashes {
            acc = acc.wrapping_add(u64::from(lookup(black_box(&table), h).unwrap()));
        }
        black_box(acc);
        t_lookup.push(s.elapsed().as_secs_f64() * 1e9 / hashes.len() as f64);

        let s = Instant::now();
        let mut acc = 0u64;
        for k in &keys {
            acc = acc.wrapping_add(u64::from(lookup(&table, black_box(k).hash(0)).unwrap()));
        }
        black_box(acc);
        t_hash_lookup.push(s.elapsed().as_secs_f64() * 1e9 / keys.len() as f64);

        let s = Instant::now();
        let mut acc = 0u64;
        for k in &crate_keys {
            acc = acc.wrapping_add(u64::from(cr.get(black_box(k)).unwrap().port()));
        }
        black_box(acc);
        t_crate.push(s.elapsed().as_secs_f64() * 1e9 / crate_keys.len() as f64);
    }
    let (lookup_ns, lookup_med) = stats(t_lookup);
    let (hl_ns, hl_med) = stats(t_hash_lookup);
    let (cr_ns, cr_med) = stats(t_crate);
    println!(
        "{{\"case\":\"lookup\",\"m\":{M},\"n\":100,\"podwire_lookup_ns_min\":{lookup_ns:.2},\"podwire_lookup_ns_median\":{lookup_med:.2},\"podwire_flowhash_plus_lookup_ns_min\":{hl_ns:.2},\"podwire_flowhash_plus_lookup_ns_median\":{hl_med:.2},\"maglev_crate_get_u64_ns_min\":{cr_ns:.2},\"maglev_crate_get_u64_ns_median\":{cr_med:.2}}}"
    );

    // Imbalance.
    let mut imb = std::collections::BTreeMap::new();
    for n in [100usize, 1000] {
        let t = built(&podwire_backends(&addrs(n)));
        let c = counts(&t, n);
        let pct = imbalance_pct(&c, M);
        let min = *c.iter().min().unwrap();
        let max = *c.iter().max().unwrap();
        // Over real lookups of random flows.
        let flows = 10_000_000u64;
        let mut kc = vec![0usize; n];
        for i in 0..flows {
            kc[lookup(&t, flow(i).hash(0)).unwrap() as usize] += 1;
        }
        let kpct = imbalance_pct(&kc, flows as usize);
        println!(
            "{{\"case\":\"imbalance\",\"m\":{M},\"n\":{n},\"entries_min\":{min},\"entries_max\":{max},\"mean\":{:.2},\"max_imbalance_pct\":{pct:.3},\"flows\":{flows},\"flow_max_imbalance_pct\":{kpct:.3}}}",
            M as f64 / n as f64
        );
        imb.insert(n, pct);
    }

    // Disruption.
    let d100 = disruption_podwire(100, 100);
    let d1000 = disruption_podwire(1000, 20);
    let dc100 = disruption_crate(100, 5);
    for (who, n, removals, d) in [
        ("podwire", 100, 100, d100),
        ("podwire", 1000, 20, d1000),
        ("maglev_crate", 100, 5, dc100),
    ] {
        println!(
            "{{\"case\":\"disruption\",\"impl\":\"{who}\",\"m\":{M},\"n\":{n},\"removals\":{removals},\"moved_fraction\":{d:.5},\"ideal\":{:.5},\"vs_ideal\":{:.3}}}",
            1.0 / n as f64,
            d * n as f64
        );
    }

    // How disruption depends on M/N (the table-size trade-off of Maglev).
    for m in [16381usize, 65537, 262147, 655373] {
        let d = disruption_podwire_m(100, 20, m);
        println!(
            "{{\"case\":\"disruption_vs_table_size\",\"impl\":\"podwire\",\"m\":{m},\"n\":100,\"m_over_n\":{},\"removals\":20,\"vs_ideal\":{:.3}}}",
            m / 100,
            d * 100.0
        );
    }

    let (pw1000, cr1000) = build[&1000];
    let (pw100, cr100) = build[&100];
    summary.push("\"bench\":\"maglev\"".to_string());
    summary.push(format!("\"build_ms_n1000\":{pw1000:.3}"));
    summary.push(format!("\"maglev_crate_build_ms_n1000\":{cr1000:.3}"));
    summary.push(format!("\"build_ratio\":{:.1}", cr1000 / pw1000));
    summary.push(format!("\"lookup_ns\":{lookup_ns:.2}"));
    summary.push(format!("\"max_imbalance_pct\":{:.3}", imb[&100]));
    summary.push(format!("\"disruption_vs_ideal\":{:.3}", d100 * 100.0));
    summary.push(format!("\"build_ms_n100\":{pw100:.3}"));
    summary.push(format!("\"maglev_crate_build_ms_n100\":{cr100:.3}"));
    summary.push(format!("\"max_imbalance_pct_n1000\":{:.3}", imb[&1000]));
    summary.push(format!(
        "\"disruption_vs_ideal_n1000\":{:.3}",
        d1000 * 1000.0
    ));
    summary.push(format!(
        "\"maglev_crate_disruption_vs_ideal_n100\":{:.3}",
        dc100 * 100.0
    ));
    summary.push(format!("\"maglev_crate_lookup_ns\":{cr_ns:.2}"));
    summary.push(format!("\"m\":{M}"));
    println!("{{{}}}", summary.join(","));
}

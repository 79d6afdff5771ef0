//! Maglev benchmark: podwire-core's `maglev` module side by side with the `maglev`
//! crate (0.2, crates.io) on the same backends (`10.244.x.y:8080`, the crate keyed by
//! the same `SocketAddr`s). Every table is sized as a service's table is sized,
//! `maglev::size_for(N, MAX)` (`M ≥ 100·N` from Cilium's prime list) with
//! `MAX = 1048573`.
//!
//! Cases (one JSON line each, then the summary as the last line):
//! * build time for N = 10, 100, 1000 and 5000 — podwire: min and median of several
//!   builds; crate: min and median of a few, where its `N × M` permutation matrix
//!   (8 bytes an entry) stays under 1.1 GB (not at N = 5000);
//! * lookup: ns per lookup of a precomputed flow hash (podwire), and per `get` of a
//!   `u64` key in the crate (which hashes it with SipHash inside), plus podwire's
//!   `FlowKey::hash` + lookup for an end-to-end figure (N = 100);
//! * imbalance at N = 10, 100, 1000, 5000, defined as `(max entries owned by one
//!   backend − M/N) / (M/N) × 100` over the table entries (every entry is equally
//!   likely for a uniform flow hash), and the same for the fewest entries;
//! * disruption at N = 10, 100, 1000, 5000: remove one of N backends, count the table
//!   entries whose backend changed, divide by M; mean over removals of evenly spread
//!   backends; `vs_ideal` = that fraction / (1/N) (1.0 would be perfect consistency);
//!   the crate's at N = 10 and 100;
//! * disruption against `M/N` at N = 100 and N = 1000 (M up to 4194301), to show
//!   what Maglev's consistency costs in memory.
//!
//! Run: `cargo bench -p podwire-core --bench maglev`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use maglev::ConsistentHasher;
use podwire_core::flow::{FlowKey, PROTO_TCP};
use podwire_core::maglev::{build, lookup, scratch_len, size_for, MaglevBackend, MaglevScratch};

/// The largest table (as a Linux node would configure it).
const MAX: u32 = 1_048_573;

/// The crate's build is measured where its permutation matrix stays under this.
const CRATE_MATRIX_BYTES: usize = 1_100_000_000;

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(
                10,
                244 + (i / 62500) as u8,
                (i / 250 % 250) as u8,
                (i % 250 + 1) as u8,
            );
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

/// Build times in ms (min, median).
fn time_podwire(b: &[MaglevBackend], m: usize, runs: usize) -> (f64, f64) {
    let mut table = vec![0u16; m];
    let mut scratch = vec![MaglevScratch::ZERO; scratch_len(b.len())];
    build(&mut table, b, &mut scratch).unwrap();
    let mut t = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        build(&mut table, black_box(b), &mut scratch).unwrap();
        black_box(&table);
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    stats(t)
}

fn time_crate(a: &[SocketAddr], m: usize, runs: usize) -> (f64, f64) {
    let mut t = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        let c = maglev::Maglev::with_capacity(black_box(a.to_vec()), m);
        black_box(&c);
        t.push(s.elapsed().as_secs_f64() * 1e3);
        assert_eq!(c.capacity(), m);
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

fn built(b: &[MaglevBackend], m: usize) -> Vec<u16> {
    let mut table = vec![0u16; m];
    let mut scratch = vec![MaglevScratch::ZERO; scratch_len(b.len())];
    build(&mut table, b, &mut scratch).unwrap();
    table
}

/// Mean fraction of entries that change backend when one backend is removed, over
/// `removals` evenly spread removed backends, at table size `m`.
fn disruption_podwire(n: usize, removals: usize, m: usize) -> f64 {
    let b = podwire_backends(&addrs(n));
    let base = built(&b, m);
    let mut sum = 0.0;
    for k in 0..removals {
        let r = k * n / removals;
        let mut b2 = b.clone();
        b2[r].weight = 0; // excluded; indices of the others unchanged
        let t = built(&b2, m);
        let moved = base.iter().zip(&t).filter(|(x, y)| x != y).count();
        sum += moved as f64 / m as f64;
    }
    sum / removals as f64
}

fn disruption_crate(n: usize, removals: usize, m: usize) -> f64 {
    let a = addrs(n);
    let base = maglev::Maglev::with_capacity(a.clone(), m);
    let keys: Vec<u64> = (0..200_000u64).collect();
    let before: Vec<SocketAddr> = keys.iter().map(|k| *base.get(k).unwrap()).collect();
    let mut sum = 0.0;
    for k in 0..removals {
        let r = k * n / removals;
        let mut a2 = a.clone();
        a2.remove(r);
        let c = maglev::Maglev::with_capacity(a2, m);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| c.get(*k).unwrap() != *b)
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
    let sizes = [10usize, 100, 1000, 5000];
    let mut summary = vec![
        "\"bench\":\"maglev\"".to_string(),
        format!("\"max_m\":{MAX}"),
    ];

    // Build times.
    for n in sizes {
        let m = size_for(n, MAX) as usize;
        let a = addrs(n);
        let b = podwire_backends(&a);
        let (pw_min, pw_med) = time_podwire(&b, m, if n >= 1000 { 9 } else { 41 });
        let crate_fits = n * m * 8 <= CRATE_MATRIX_BYTES;
        let (cr_min, cr_med) = if crate_fits {
            time_crate(&a, m, 3)
        } else {
            (f64::NAN, f64::NAN)
        };
        let crate_json = if crate_fits {
            format!(
                "\"maglev_crate_ms_min\":{cr_min:.3},\"maglev_crate_ms_median\":{cr_med:.3},\"ratio_min\":{:.1}",
                cr_min / pw_min
            )
        } else {
            "\"maglev_crate\":\"not run: its N x M matrix exceeds 1.1 GB\"".to_string()
        };
        println!(
            "{{\"case\":\"build\",\"m\":{m},\"n\":{n},\"podwire_ms_min\":{pw_min:.3},\"podwire_ms_median\":{pw_med:.3},{crate_json}}}"
        );
        summary.push(format!("\"build_ms_n{n}\":{pw_min:.3}"));
        if crate_fits {
            summary.push(format!("\"maglev_crate_build_ms_n{n}\":{cr_min:.3}"));
        }
    }

    // Lookups.
    let a = addrs(100);
    let m100 = size_for(100, MAX) as usize;
    let table = built(&podwire_backends(&a), m100);
    let keys: Vec<FlowKey> = (0..1_000_000u64).map(flow).collect();
    let hashes: Vec<u64> = keys.iter().map(|k| k.hash(0)).collect();
    let mut t_lookup = Vec::new();
    let mut t_hash_lookup = Vec::new();
    let mut t_crate = Vec::new();
    let cr = maglev::Maglev::with_capacity(a.clone(), m100);
    let crate_keys: Vec<u64> = (0..1_000_000u64).collect();
    for _ in 0..20 {
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
        "{{\"case\":\"lookup\",\"m\":{m100},\"n\":100,\"podwire_lookup_ns_min\":{lookup_ns:.2},\"podwire_lookup_ns_median\":{lookup_med:.2},\"podwire_flowhash_plus_lookup_ns_min\":{hl_ns:.2},\"podwire_flowhash_plus_lookup_ns_median\":{hl_med:.2},\"maglev_crate_get_u64_ns_min\":{cr_ns:.2},\"maglev_crate_get_u64_ns_median\":{cr_med:.2}}}"
    );
    summary.push(format!("\"lookup_ns\":{lookup_ns:.2}"));
    summary.push(format!("\"maglev_crate_lookup_ns\":{cr_ns:.2}"));

    // Imbalance and disruption at each N.
    for n in sizes {
        let m = size_for(n, MAX) as usize;
        let c = counts(&built(&podwire_backends(&addrs(n)), m), n);
        let mean = m as f64 / n as f64;
        let max = *c.iter().max().unwrap();
        let min = *c.iter().min().unwrap();
        let over = (max as f64 - mean) / mean * 100.0;
        let under = (mean - min as f64) / mean * 100.0;
        println!(
            "{{\"case\":\"imbalance\",\"m\":{m},\"n\":{n},\"entries_min\":{min},\"entries_max\":{max},\"mean\":{mean:.2},\"max_imbalance_pct\":{over:.3},\"min_imbalance_pct\":{under:.3}}}"
        );
        let removals = match n {
            10 => 10,
            100 => 50,
            1000 => 12,
            _ => 4,
        };
        let d = disruption_podwire(n, removals, m);
        println!(
            "{{\"case\":\"disruption\",\"impl\":\"podwire\",\"m\":{m},\"n\":{n},\"removals\":{removals},\"moved_fraction\":{d:.5},\"ideal\":{:.5},\"vs_ideal\":{:.3}}}",
            1.0 / n as f64,
            d * n as f64
        );
        summary.push(format!("\"m_n{n}\":{m}"));
        summary.push(format!("\"max_imbalance_pct_n{n}\":{over:.3}"));
        summary.push(format!("\"disruption_vs_ideal_n{n}\":{:.3}", d * n as f64));
        if n <= 100 {
            let dc = disruption_crate(n, 5, m);
            println!(
                "{{\"case\":\"disruption\",\"impl\":\"maglev_crate\",\"m\":{m},\"n\":{n},\"removals\":5,\"vs_ideal\":{:.3}}}",
                dc * n as f64
            );
            summary.push(format!(
                "\"maglev_crate_disruption_vs_ideal_n{n}\":{:.3}",
                dc * n as f64
            ));
        }
    }

    // What Maglev's consistency costs in memory: disruption against M/N.
    for (n, ms) in [
        (100usize, &[16381usize, 65521, 262_139, 1_048_573][..]),
        (1000, &[131_071, 1_048_573, 4_194_301][..]),
    ] {
        for &m in ms {
            let removals = if m > 1_000_000 { 3 } else { 10 };
            let d = disruption_podwire(n, removals, m);
            println!(
                "{{\"case\":\"disruption_vs_table_size\",\"impl\":\"podwire\",\"m\":{m},\"n\":{n},\"m_over_n\":{},\"removals\":{removals},\"vs_ideal\":{:.3}}}",
                m / n,
                d * n as f64
            );
        }
    }
    println!("{{{}}}", summary.join(","));
}

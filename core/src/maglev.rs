//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4).
//!
//! Design note: a Service's backend is chosen per new flow by looking the flow hash up
//! in a table of `M` entries (M prime) that every node fills the same way, so every node
//! and the firmware pick the same backend for the same flow, the load is even (each
//! backend owns `M/N` entries, ±1) and removing one backend moves few other flows. The
//! table and the build's scratch come from the caller (`&mut [u16]` of length `M`,
//! [`scratch_len`]`(N)` [`MaglevScratch`] cells), so the build needs `O(M + N)` memory —
//! not the paper's `N × M` permutation matrix: backend `i`'s permutation entry `j` is
//! `(offset_i + j·skip_i) mod M`, computed on the fly from a per-backend cursor that
//! advances by one add and one conditional subtract (no `%` in the inner loop). The
//! last [`TAIL`] empty entries, which the plain walk would reach only after `≈ M·ln TAIL`
//! probes of already-filled entries, are found exactly by computing, for each remaining
//! empty entry `e`, its rank `(e − cursor_i)·skip_i⁻¹ mod M` in the permutation of the
//! backend whose turn it is and taking the smallest: the same entry the walk would
//! claim, far fewer steps. The result is bit-for-bit the classic algorithm's.
//!
//! # The podwire Maglev contract v1
//!
//! * **Backend identity.** A backend is known by a 64-bit identity. For an `IP:port`
//!   backend ([`backend_identity`]) it is computed from the address words of the podwire
//!   flow hash ([`crate::flow`]: IPv4 `a.b.c.d` is the word `u32::from_be_bytes` then
//!   the word 0; IPv6 is its big-endian 128-bit value, high word first) as
//!   `h = fmix64(IDENTITY_SEED ^ hi); h = fmix64(h ^ lo);
//!   identity = fmix64(h ^ (port | family << 16))` with `family` 4 or 6 and
//!   [`fmix64`] the MurmurHash3 finaliser.
//! * **Permutation.** `offset = fmix64(identity ^ OFFSET_SEED) mod M`,
//!   `skip = fmix64(identity ^ SKIP_SEED) mod (M − 1) + 1` ([`offset_skip`]).
//! * **Fill order.** Backends with weight 0 are excluded. The others take turns in the
//!   order of `(offset, skip, index)` — so the table does not depend on the order in
//!   which the caller lists them. Each turn claims the first entry of the backend's
//!   permutation not yet claimed. Weights use the paper's weighted round: every backend
//!   carries a credit starting at 0; at its place in each round it adds its weight and,
//!   if the credit reaches the largest weight `W`, subtracts `W` and takes a turn. With
//!   equal weights this is the classic round robin; in general backend `i` owns
//!   `≈ M·wᵢ/Σw` entries.
//! * **Lookup.** The entry of flow hash `h` (from [`crate::flow::FlowKey::hash`]) is
//!   `((h >> 32) · M) >> 32` ([`slot_of`], a multiply-shift range reduction: no
//!   division on the packet path).
//!
//! * **Size.** A service's table size is [`size_for`]`(N, max)`: the smallest prime
//!   of [`SIZES`] (Cilium's list) with `M ≥ 100·N`, `N` the backends with a weight —
//!   Maglev's disruption falls as `M/N` grows, and 100 is the ratio Cilium's
//!   documentation recommends — bounded by the configured maximum `max` (itself
//!   prime). `M` depends only on `N` and `max`, so every node with the same maximum
//!   builds the same table; a service whose backends grow past `M/100` is rebuilt at
//!   the next size (and one that shrinks, at the smaller one).
//!
//! Tests pin entries of a small table so any change to this contract is noticed.
//!
//! # Consistency, and what it costs
//!
//! Maglev balances exactly (every backend owns `⌊M/N⌋` or `⌈M/N⌉` entries) but is
//! not minimally disruptive: removing one backend changes the turn order of the fill,
//! and every entry the others claim after the first difference may change. Measured
//! with `cargo bench -p podwire-core --bench maglev` (entries changed when one of `N`
//! backends is removed, over the ideal `M/N`): 2.27× at N = 100, M = 16381; 1.54× at
//! M = 65521; 1.23× at M = 262139; 1.11× at M = 1048573; and at N = 1000, 6.6× at
//! M = 131071, 3.0× at M = 1048573, 1.9× at M = 4194301 — the excess falls roughly as
//! `(M/N)^-½` and grows with `N`, so 1.2× at N = 1000 would take `M/N` of order 10⁴.
//! The paper's own evaluation (§5.3) shows the same trade-off: of its two table
//! sizes, 65537 and 655373, the larger is the more resilient to backend changes. A deterministic alternative was prototyped — the unique stable
//! assignment of a greedy pass over `(entry, backend)` pairs by descending rendezvous
//! score with exact capacities — and measured 1.70× (N = 100, M = 16381), 1.33×
//! (M = 65521), 3.9× (N = 1000, M = 131071) and 1.9× (M = 1048573), at an `O(M·N)`
//! build: better than Maglev, still short of 1.2×, and too slow for N = 5000. Both run
//! into the same limit: with every backend held within 1 % of `M/N`, the `M/N`
//! entries a removed backend frees land (by any hash) on backends that are already at
//! their bound and must push an entry on, and rendezvous hashing alone, which moves
//! nothing else, needs `M/N ≈ 10⁵` to stay within 1 %. Connection tracking pins every
//! established flow, so disruption only re-maps *new* flows of a changed service.

use crate::flow::fmix64;
use core::net::IpAddr;

/// The table entry that means "no backend" (all backends excluded or none given).
pub const EMPTY: u16 = u16::MAX;

/// The largest number of backends a table can index (entries are `u16`, [`EMPTY`]
/// excluded).
pub const MAX_BACKENDS: usize = EMPTY as usize;

/// Table sizes must be below this bound (so cursor arithmetic stays in `u32`).
pub const MAX_SIZE: usize = 1 << 31;

/// The table sizes [`size_for`] chooses from: primes close to powers of two, the
/// list Cilium documents for its `--bpf-lb-maglev-table-size`.
pub const SIZES: [u32; 15] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071, 262_139, 524_287, 1_048_573,
    2_097_143, 4_194_301,
];

/// Entries per backend a table should have at least (`M ≥ RATIO · N`).
pub const RATIO: usize = 100;

/// The table size of a service with `backends` backends (those with a weight) under
/// the maximum `max`: the smallest of [`SIZES`] that is at least [`RATIO`]` · backends`
/// and at most `max`, else `max` (see the module's contract). `max` should be prime
/// (check it with [`check_size`]); a table never gets larger than it.
pub fn size_for(backends: usize, max: u32) -> u32 {
    let wanted = backends.saturating_mul(RATIO);
    SIZES
        .iter()
        .copied()
        .find(|&m| m as usize >= wanted)
        .filter(|&m| m <= max)
        .unwrap_or(max)
}

/// How many trailing empty entries the build finds by rank computation instead of by
/// walking permutations (see the module's design note).
pub const TAIL: usize = 128;

/// Seed of the backend identity hash (part of the contract).
pub const IDENTITY_SEED: u64 = 0x6d61_676c_6576_7631; // "maglevv1"
/// Seed of a backend's permutation offset (part of the contract).
pub const OFFSET_SEED: u64 = 0x0ff5_e700_0ff5_e701;
/// Seed of a backend's permutation skip (part of the contract).
pub const SKIP_SEED: u64 = 0x5e1f_5e1f_5e1f_5e1f;

/// What was wrong with a build request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MaglevError {
    /// The table length `M` is not a prime number.
    SizeNotPrime,
    /// The table length is at least [`MAX_SIZE`].
    SizeTooLarge,
    /// More backends than table entries, or more than [`MAX_BACKENDS`].
    TooManyBackends,
    /// The scratch is shorter than [`scratch_len`] of the number of backends.
    ScratchTooSmall,
}

/// One backend as the Maglev build sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MaglevBackend {
    /// Stable identity (see [`backend_identity`]); determines the permutation.
    pub identity: u64,
    /// Relative weight; 0 excludes the backend from the table.
    pub weight: u16,
}

impl MaglevBackend {
    /// A backend with an explicit identity.
    pub const fn new(identity: u64, weight: u16) -> Self {
        MaglevBackend { identity, weight }
    }

    /// A backend known by its `IP:port`.
    pub fn from_addr(addr: IpAddr, port: u16, weight: u16) -> Self {
        MaglevBackend::new(backend_identity(addr, port), weight)
    }
}

/// One cell of build scratch. The build needs [`scratch_len`]`(N)` of them; their
/// content before and after a build is meaningless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MaglevScratch {
    /// Backend index (low 16 bits) and weight (high 16 bits).
    index_weight: u32,
    /// The backend's next permutation entry.
    pos: u32,
    /// The backend's permutation step.
    skip: u32,
    /// Weighted-round credit.
    credit: u32,
}

impl MaglevScratch {
    /// A zeroed cell, for `static` arrays.
    pub const ZERO: MaglevScratch = MaglevScratch {
        index_weight: 0,
        pos: 0,
        skip: 0,
        credit: 0,
    };
}

/// Scratch cells a build over `backends` backends needs: one per backend plus
/// [`TAIL`].
pub const fn scratch_len(backends: usize) -> usize {
    backends + TAIL
}

/// The identity of an `IP:port` backend (see the module documentation).
pub fn backend_identity(addr: IpAddr, port: u16) -> u64 {
    let (hi, lo, family) = match addr {
        IpAddr::V4(a) => (u64::from(u32::from_be_bytes(a.octets())), 0, 4u64),
        IpAddr::V6(a) => {
            let v = u128::from_be_bytes(a.octets());
            ((v >> 64) as u64, v as u64, 6u64)
        }
    };
    let h = fmix64(IDENTITY_SEED ^ hi);
    let h = fmix64(h ^ lo);
    fmix64(h ^ (u64::from(port) | family << 16))
}

/// A backend's permutation `(offset, skip)` in a table of prime size `m ≥ 2`.
pub fn offset_skip(identity: u64, m: u32) -> (u32, u32) {
    let m64 = u64::from(m.max(2));
    let offset = fmix64(identity ^ OFFSET_SEED) % m64;
    let skip = fmix64(identity ^ SKIP_SEED) % (m64 - 1) + 1;
    (offset as u32, skip as u32)
}

/// The table entry a flow hash maps to in a table of size `m` (`< 2³²`):
/// `((h >> 32) · m) >> 32`.
#[inline]
pub fn slot_of(flow_hash: u64, m: u32) -> u32 {
    (((flow_hash >> 32) * u64::from(m)) >> 32) as u32
}

/// Looks a flow hash up in a built table: the backend index, or `None` if the table
/// is empty (no backend with a weight).
#[inline]
pub fn lookup(table: &[u16], flow_hash: u64) -> Option<u16> {
    let m = u32::try_from(table.len()).ok()?;
    match table.get(slot_of(flow_hash, m) as usize) {
        Some(&e) if e != EMPTY => Some(e),
        _ => None,
    }
}

/// Whether `n` is prime (deterministic Miller–Rabin with bases 2, 7, 61, exact for
/// every `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u32, 3, 5, 7, 11, 13, 61] {
        if n % p == 0 {
            return n == p;
        }
    }
    let n64 = u64::from(n);
    let mut d = n64 - 1;
    let mut s = 0;
    while d % 2 == 0 {
        d /= 2;
        s += 1;
    }
    'witness: for a in [2u64, 7, 61] {
        let mut x = pow_mod(a, d, n64);
        if x == 1 || x == n64 - 1 {
            continue;
        }
        for _ in 1..s {
            x = x * x % n64;
            if x == n64 - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// `b^e mod m` for `m < 2³²`.
fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1 % m;
    b %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % m;
        }
        b = b * b % m;
        e >>= 1;
    }
    r
}

/// The inverse of `a` modulo the prime `m` (`0 < a < m`), by the extended Euclidean
/// algorithm.
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(i64::from(m)) as u32
}

/// Checks a table length: prime and below [`MAX_SIZE`].
pub fn check_size(len: usize) -> Result<u32, MaglevError> {
    if len >= MAX_SIZE {
        return Err(MaglevError::SizeTooLarge);
    }
    let m = len as u32;
    if !is_prime(m) {
        return Err(MaglevError::SizeNotPrime);
    }
    Ok(m)
}

/// Builds `table` (its length `M` must be prime) over `backends`. Entry values are
/// indices into `backends`, or [`EMPTY`] everywhere if no backend has a weight.
pub fn build(
    table: &mut [u16],
    backends: &[MaglevBackend],
    scratch: &mut [MaglevScratch],
) -> Result<(), MaglevError> {
    build_with(table, backends.len(), |i| backends[i], scratch)
}

/// Like [`build`], with backend `i` (for `i < n`) given by `backend(i)`, so a caller
/// can build over its own backend records (and exclude some with weight 0) without
/// copying them into a [`MaglevBackend`] slice. `backend` is called once per index.
pub fn build_with(
    table: &mut [u16],
    n: usize,
    backend: impl Fn(usize) -> MaglevBackend,
    scratch: &mut [MaglevScratch],
) -> Result<(), MaglevError> {
    let m = check_size(table.len())?;
    if n > table.len() || n > MAX_BACKENDS {
        return Err(MaglevError::TooManyBackends);
    }
    if scratch.len() < scratch_len(n) {
        return Err(MaglevError::ScratchTooSmall);
    }
    table.fill(EMPTY);
    let (state, tail) = scratch.split_at_mut(n);

    // Active backends, their permutations, and the largest weight.
    let mut active = 0;
    let mut max_weight = 0u16;
    let mut min_weight = u16::MAX;
    for i in 0..n {
        let b = backend(i);
        if b.weight == 0 {
            continue;
        }
        let (offset, skip) = offset_skip(b.identity, m);
        if let Some(s) = state.get_mut(active) {
            *s = MaglevScratch {
                index_weight: i as u32 | u32::from(b.weight) << 16,
                pos: offset,
                skip,
                credit: 0,
            };
            active += 1;
        }
        max_weight = max_weight.max(b.weight);
        min_weight = min_weight.min(b.weight);
    }
    let state = state.get_mut(..active).unwrap_or_default();
    if state.is_empty() {
        return Ok(());
    }
    state.sort_unstable_by_key(|s| (s.pos, s.skip, s.index_weight & 0xffff));
    let weighted = min_weight != max_weight;
    let n_active = state.len();
    let max_weight = u32::from(max_weight);

    let mut remaining = m;
    let tail_len = tail.len().min(TAIL) as u32;
    let mut k = 0usize;

    // Main phase: walk permutations until only `tail_len` entries are empty.
    while remaining > tail_len {
        let Some(s) = state.get_mut(k) else { break };
        k += 1;
        if k == n_active {
            k = 0;
        }
        if weighted {
            s.credit += s.index_weight >> 16;
            if s.credit < max_weight {
                continue;
            }
            s.credit -= max_weight;
        }
        let index = s.index_weight as u16;
        let skip = s.skip;
        let mut pos = s.pos;
        loop {
            let p = pos as usize;
            pos += skip;
            if pos >= m {
                pos -= m;
            }
            if let Some(e) = table.get_mut(p) {
                if *e == EMPTY {
                    *e = index;
                    break;
                }
            }
        }
        s.pos = pos;
        remaining -= 1;
    }
    if remaining == 0 {
        return Ok(());
    }

    // Tail phase: list the empty entries, then each turn claims the one of smallest
    // rank in the turn's backend's permutation from its cursor.
    let mut empties = 0usize;
    for (e, v) in table.iter().enumerate() {
        if *v == EMPTY {
            if let Some(t) = tail.get_mut(empties) {
                t.pos = e as u32;
                empties += 1;
            }
        }
    }
    let m64 = u64::from(m);
    while empties > 0 {
        let Some(s) = state.get_mut(k) else { break };
        k += 1;
        if k == n_active {
            k = 0;
        }
        if weighted {
            s.credit += s.index_weight >> 16;
            if s.credit < max_weight {
                continue;
            }
            s.credit -= max_weight;
        }
        let inv = u64::from(inverse_mod(s.skip, m));
        let mut best = (u64::MAX, 0usize);
        for (t, cell) in tail.iter().take(empties).enumerate() {
            let e = cell.pos;
            let delta = if e >= s.pos {
                e - s.pos
            } else {
                e + (m - s.pos)
            };
            let rank = u64::from(delta) * inv % m64;
            if rank < best.0 {
                best = (rank, t);
            }
        }
        let Some(e) = tail.get(best.1).map(|c| c.pos) else {
            break;
        };
        if let Some(v) = table.get_mut(e as usize) {
            *v = s.index_weight as u16;
        }
        empties -= 1;
        tail.swap(best.1, empties);
        let next = e + s.skip;
        s.pos = if next >= m { next - m } else { next };
    }
    Ok(())
}

/// A Maglev lookup table over caller storage, its size checked once.
#[derive(Debug)]
pub struct MaglevTable<'a> {
    entries: &'a mut [u16],
    m: u32,
}

impl<'a> MaglevTable<'a> {
    /// Wraps `entries` (length `M`, prime) as an empty table.
    pub fn new(entries: &'a mut [u16]) -> Result<Self, MaglevError> {
        let m = check_size(entries.len())?;
        entries.fill(EMPTY);
        Ok(MaglevTable { entries, m })
    }

    /// The table size `M`.
    pub fn size(&self) -> u32 {
        self.m
    }

    /// Rebuilds the table over `backends` (see [`build`]).
    pub fn build(
        &mut self,
        backends: &[MaglevBackend],
        scratch: &mut [MaglevScratch],
    ) -> Result<(), MaglevError> {
        build(self.entries, backends, scratch)
    }

    /// The backend index of a flow hash, or `None` if the table is empty.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<u16> {
        match self.entries.get(slot_of(flow_hash, self.m) as usize) {
            Some(&e) if e != EMPTY => Some(e),
            _ => None,
        }
    }

    /// The entries (backend indices or [`EMPTY`]).
    pub fn entries(&self) -> &[u16] {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8);
                MaglevBackend::from_addr(IpAddr::V4(ip), 8080, 1)
            })
            .collect()
    }

    fn built(m: usize, b: &[MaglevBackend]) -> Vec<u16> {
        let mut t = vec![0u16; m];
        let mut s = vec![MaglevScratch::ZERO; scratch_len(b.len())];
        build(&mut t, b, &mut s).unwrap();
        t
    }

    /// The classic algorithm with `%` and a full walk, for comparison.
    fn reference(m: usize, b: &[MaglevBackend]) -> Vec<u16> {
        let m32 = m as u32;
        let mut order: Vec<(u32, u32, usize)> = b
            .iter()
            .enumerate()
            .filter(|(_, x)| x.weight > 0)
            .map(|(i, x)| {
                let (o, s) = offset_skip(x.identity, m32);
                (o, s, i)
            })
            .collect();
        order.sort();
        let wmax = b.iter().map(|x| u32::from(x.weight)).max().unwrap_or(0);
        let mut next = vec![0u64; order.len()];
        let mut credit = vec![0u32; order.len()];
        let mut t = vec![EMPTY; m];
        let mut filled = 0;
        while filled < m && !order.is_empty() {
            for (k, &(o, s, i)) in order.iter().enumerate() {
                if filled == m {
                    break;
                }
                credit[k] += u32::from(b[i].weight);
                if credit[k] < wmax {
                    continue;
                }
                credit[k] -= wmax;
                loop {
                    let c = ((u64::from(o) + next[k] * u64::from(s)) % m as u64) as usize;
                    next[k] += 1;
                    if t[c] == EMPTY {
                        t[c] = i as u16;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        t
    }

    fn counts(t: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &e in t {
            c[e as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
        );
        for p in [251, 65537, 131_071, 2_147_483_647, 4_294_967_291] {
            assert!(is_prime(p), "{p}");
        }
        // Strong pseudoprimes to some of the bases, and squares of primes.
        for c in [
            2047,
            3_215_031_751,
            25_326_001,
            65_536,
            65_539 * 3,
            251 * 251,
            4_294_967_295,
        ] {
            assert!(!is_prime(c), "{c}");
        }
        let mut t = [0u16; 100];
        let mut s = [MaglevScratch::ZERO; 130];
        assert_eq!(
            build(&mut t, &backends(3), &mut s),
            Err(MaglevError::SizeNotPrime)
        );
        assert_eq!(
            MaglevTable::new(&mut t).err(),
            Some(MaglevError::SizeNotPrime)
        );
        assert_eq!(check_size(0), Err(MaglevError::SizeNotPrime));
        assert_eq!(check_size(1), Err(MaglevError::SizeNotPrime));
    }

    #[test]
    fn inverse() {
        for m in [2u32, 3, 251, 65537] {
            for a in (1..m).step_by(((m / 50) as usize).max(1)) {
                assert_eq!(
                    u64::from(inverse_mod(a, m)) * u64::from(a) % u64::from(m),
                    1
                );
            }
        }
    }

    #[test]
    fn limits_checked() {
        let mut t = [0u16; 7];
        let mut s = [MaglevScratch::ZERO; 200];
        assert_eq!(
            build(&mut t, &backends(8), &mut s),
            Err(MaglevError::TooManyBackends)
        );
        let mut short = [MaglevScratch::ZERO; 5];
        assert_eq!(
            build(&mut t, &backends(3), &mut short),
            Err(MaglevError::ScratchTooSmall)
        );
        // N = M is allowed: every backend owns exactly one entry.
        build(&mut t, &backends(7), &mut s).unwrap();
        assert_eq!(counts(&t, 7), [1; 7]);
    }

    #[test]
    fn matches_classic_algorithm() {
        for (m, n) in [
            (251, 1),
            (251, 7),
            (251, 100),
            (251, 251),
            (65537, 100),
            (4099, 1000),
        ] {
            let b = backends(n);
            assert_eq!(built(m, &b), reference(m, &b), "M={m} N={n}");
        }
        // Weighted, with exclusions.
        let mut b = backends(20);
        for (i, x) in b.iter_mut().enumerate() {
            x.weight = (i % 4) as u16 * 3;
        }
        assert_eq!(built(4099, &b), reference(4099, &b));
    }

    #[test]
    fn every_backend_gets_its_share() {
        let (m, n) = (65537, 1000);
        let t = built(m, &backends(n));
        for c in counts(&t, n) {
            assert!(c == m / n || c == m / n + 1, "{c}");
        }
    }

    #[test]
    fn weights_are_proportional() {
        let m = 65537;
        let mut b = backends(4);
        for (x, w) in b.iter_mut().zip([1, 2, 3, 4]) {
            x.weight = w;
        }
        let c = counts(&built(m, &b), 4);
        for (i, w) in [1usize, 2, 3, 4].iter().enumerate() {
            let ideal = m * w / 10;
            assert!(c[i].abs_diff(ideal) <= 2, "{c:?}");
        }
    }

    #[test]
    fn zero_weight_is_excluded() {
        let mut b = backends(5);
        b[2].weight = 0;
        let t = built(251, &b);
        let c = counts(&t, 5);
        assert_eq!(c[2], 0);
        assert!(c.iter().enumerate().all(|(i, &c)| i == 2 || c >= 62));
        for x in b.iter_mut() {
            x.weight = 0;
        }
        let t = built(251, &b);
        assert!(t.iter().all(|&e| e == EMPTY));
        assert_eq!(lookup(&t, 12345), None);
        assert!(built(251, &[]).iter().all(|&e| e == EMPTY));
    }

    #[test]
    fn contract_is_pinned() {
        let b = [
            MaglevBackend::from_addr(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 8080, 1),
            MaglevBackend::from_addr(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 7)), 8080, 1),
            MaglevBackend::from_addr(IpAddr::V6(Ipv6Addr::LOCALHOST), 53, 1),
        ];
        assert_eq!(b[0].identity, 0x5d22_6782_5727_2fd2);
        assert_eq!(offset_skip(b[0].identity, 251), (9, 244));
        let t = built(251, &b);
        assert_eq!(&t[..16], &[0, 1, 0, 2, 2, 2, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0]);
        assert_eq!(slot_of(0xffff_ffff_0000_0000, 251), 250);
        assert_eq!(slot_of(0x8000_0000_0000_0000, 251), 125);
        assert_eq!(slot_of(0, 251), 0);
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let b = backends(50);
        let mut r: Vec<MaglevBackend> = b.iter().rev().copied().collect();
        let t = built(4099, &b);
        let tr = built(4099, &r);
        // Same backend (by identity) behind every entry.
        for (x, y) in t.iter().zip(&tr) {
            assert_eq!(b[*x as usize], r[*y as usize]);
        }
        r.rotate_left(7);
        let tr = built(4099, &r);
        assert!(t
            .iter()
            .zip(&tr)
            .all(|(x, y)| b[*x as usize] == r[*y as usize]));
    }

    #[test]
    fn removing_a_backend_moves_few_entries() {
        let (m, n) = (65537, 100);
        let b = backends(n);
        let t = built(m, &b);
        let mut moved_total = 0;
        for removed in [0, 37, 99] {
            let mut r = b.clone();
            r[removed].weight = 0;
            let t2 = built(m, &r);
            let mut moved = 0;
            for (x, y) in t.iter().zip(&t2) {
                if *x as usize == removed {
                    assert_ne!(*y as usize, removed);
                } else if x != y {
                    moved += 1;
                }
            }
            moved_total += moved;
        }
        // The removed backend's own entries (1/N) must move; Maglev moves some others
        // as well (≈ 0.56/N here), but far fewer than a modulo hash would (≈ all).
        let others = moved_total as f64 / 3.0 / m as f64;
        assert!(others < 1.0 / n as f64, "extra disruption {others}");
    }

    #[test]
    fn table_wrapper() {
        let mut e = [0u16; 251];
        let mut t = MaglevTable::new(&mut e).unwrap();
        assert_eq!(t.size(), 251);
        assert_eq!(t.lookup(7), None);
        let b = backends(3);
        let mut s = [MaglevScratch::ZERO; scratch_len(3)];
        t.build(&b, &mut s).unwrap();
        assert!(t.lookup(7).is_some());
        assert_eq!(t.lookup(7), lookup(t.entries(), 7));
    }

    proptest! {
        #[test]
        fn prop_matches_reference(
            m in prop::sample::select(vec![2usize, 3, 5, 251, 257, 1031, 4099]),
            w in prop::collection::vec(0u16..5, 0..40),
        ) {
            let mut b = backends(w.len().min(m));
            for (x, w) in b.iter_mut().zip(&w) {
                x.weight = *w;
            }
            let t = built(m, &b);
            prop_assert_eq!(&t, &reference(m, &b));
            // Every backend with weight owns an entry when M ≥ 2·Σw... at least when
            // equal-weight; and nothing excluded appears.
            for &e in &t {
                prop_assert!(e == EMPTY || b[e as usize].weight > 0);
            }
            if b.iter().any(|x| x.weight > 0) {
                prop_assert!(t.iter().all(|&e| e != EMPTY));
            }
        }

        #[test]
        fn prop_lookup_in_range(h in any::<u64>(), m in prop::sample::select(vec![2u32, 251, 65537, 2_147_483_647])) {
            prop_assert!(slot_of(h, m) < m);
        }

        #[test]
        fn prop_equal_weights_balanced(n in 1usize..60) {
            let m = 1031;
            let t = built(m, &backends(n));
            for c in counts(&t, n) {
                prop_assert!(c == m / n || c == m / n + 1);
            }
        }
    }
}

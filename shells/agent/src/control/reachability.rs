//! The pod × pod reachability matrix of one port, computed from the policy table.
//!
//! Design note: 10k pods make 100M ordered pairs — too many to evaluate one flow at a
//! time within a second, and grouping pods into equivalence classes does not save
//! enough when `ipBlock`s cut through the pod network (every node's /24 becomes its own
//! class). So the matrix is computed *rule-major* over the very same compiled
//! [`PolicyTable`]: every peer set the table's rules use becomes a bitset over pods
//! (the OR of the pod bitsets of its identities and CIDR classes); every endpoint
//! policy and direction becomes the OR of the peer bitsets of its rules that admit the
//! port (`PolicyTable::rule_admits_port`, `PolicyTable::rule_peers` — the table's own
//! semantics); then `allowed = EGRESS ∧ INGRESSᵀ`, with the ingress matrix transposed
//! in 64×64 bit blocks. [`reachability_pairwise`] evaluates every pair with
//! `evaluate_connection` instead; tests check that both agree. A pod's traffic to
//! itself never leaves its network namespace, so the diagonal is always allowed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use podwire_core::policy::{DirPolicy, Identity, PeerSet, PeerSetView, PolicyTable};

use super::cluster::{ClusterState, Protocol};

/// Reachability between pods, as a bit matrix (rows = from, columns = to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// Pod indexes (into the cluster state) of the rows and columns: every pod with an
    /// address, in cluster order.
    pub pods: Vec<usize>,
    words: usize,
    bits: Vec<u64>,
}

impl Reachability {
    fn new(pods: Vec<usize>) -> Reachability {
        let words = pods.len().div_ceil(64);
        Reachability {
            bits: vec![0; pods.len() * words],
            pods,
            words,
        }
    }

    fn set(&mut self, from: usize, to: usize) {
        if let Some(w) = self.bits.get_mut(from * self.words + to / 64) {
            *w |= 1 << (to % 64);
        }
    }

    /// True when row pod `from` may open a connection to column pod `to`.
    pub fn allowed(&self, from: usize, to: usize) -> bool {
        self.bits
            .get(from * self.words + to / 64)
            .is_some_and(|w| w >> (to % 64) & 1 == 1)
    }

    /// Number of allowed (from, to) pairs.
    pub fn allowed_pairs(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The upstream e2e truth-table layout: a header `-` + pod names, then one row per
    /// source pod with `.` (allowed) or `X` (denied) per destination, tab-separated.
    pub fn render(&self, cluster: &ClusterState) -> String {
        let names: Vec<String> = self.pods.iter().map(|&p| cluster.pods[p].key()).collect();
        let mut out = String::from("-");
        for n in &names {
            let _ = write!(out, "\t{n}");
        }
        out.push('\n');
        for (r, n) in names.iter().enumerate() {
            out.push_str(n);
            for c in 0..names.len() {
                out.push('\t');
                out.push(if self.allowed(r, c) { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }
}

/// Transposes a 64×64 bit block in place (row `r` bit `c` ↔ row `c` bit `r`).
fn transpose64(a: &mut [u64; 64]) {
    let mut j = 32;
    let mut m: u64 = 0x0000_0000_ffff_ffff;
    while j != 0 {
        let mut k = 0;
        while k < 64 {
            let t = ((a[k] >> j) ^ a[k + j]) & m;
            a[k] ^= t << j;
            a[k + j] ^= t;
            k = (k + j + 1) & !j;
        }
        j >>= 1;
        m ^= m << j;
    }
}

/// Transposes an n×n bit matrix stored as rows of `words` words.
fn transpose(bits: &[u64], n: usize, words: usize) -> Vec<u64> {
    let mut out = vec![0u64; n * words];
    let mut block = [0u64; 64];
    for bi in 0..words {
        for bj in 0..words {
            for (r, b) in block.iter_mut().enumerate() {
                let row = bi * 64 + r;
                *b = if row < n { bits[row * words + bj] } else { 0 };
            }
            transpose64(&mut block);
            for (c, b) in block.iter().enumerate() {
                let row = bj * 64 + c;
                if row < n {
                    out[row * words + bi] = *b;
                }
            }
        }
    }
    out
}

fn addressed_pods(cluster: &ClusterState) -> Vec<(usize, IpAddr)> {
    cluster
        .pods
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.ips.first().map(|ip| (i, *ip)))
        .collect()
}

/// Computes the matrix for destination `port`/`protocol` (see the module notes).
pub fn reachability(
    cluster: &ClusterState,
    table: &PolicyTable<'_>,
    port: u16,
    protocol: Protocol,
) -> Reachability {
    let pods = addressed_pods(cluster);
    let n = pods.len();
    let words = n.div_ceil(64);
    let proto = protocol.number();
    let mut all = vec![!0u64; words];
    if !n.is_multiple_of(64) {
        if let Some(last) = all.last_mut() {
            *last = (1u64 << (n % 64)) - 1;
        }
    }
    // Pod bitsets per identity and per CIDR class; endpoints per pod.
    let mut by_id: HashMap<Identity, Vec<u64>> = HashMap::new();
    let mut with_identity = vec![0u64; words];
    let mut endpoint = Vec::with_capacity(n);
    for (q, &(_, ip)) in pods.iter().enumerate() {
        let info = table.address(&ip);
        let keys = [info.identity(), table.cidr_class(ip)];
        for id in keys.into_iter().flatten() {
            by_id.entry(id).or_insert_with(|| vec![0; words])[q / 64] |= 1 << (q % 64);
        }
        if info.identity().is_some() {
            with_identity[q / 64] |= 1 << (q % 64);
        }
        endpoint.push(info.endpoint());
    }
    let mut set_cache: HashMap<PeerSet, Vec<u64>> = HashMap::new();
    let mut set_bits = |set: PeerSetView<'_>| -> Vec<u64> {
        set_cache
            .entry(set.stored())
            .or_insert_with(|| {
                let mut b = vec![0u64; words];
                for id in set.iter() {
                    if let Some(ids) = by_id.get(&id) {
                        b.iter_mut().zip(ids).for_each(|(x, y)| *x |= y);
                    }
                }
                b
            })
            .clone()
    };
    // Allowed peers per (endpoint policy, direction).
    let mut allowed_cache: HashMap<(u32, bool), Vec<u64>> = HashMap::new();
    let mut allowed_of = |dir: &DirPolicy, key: (u32, bool)| -> Vec<u64> {
        if dir.isolated_by.is_none() {
            return all.clone();
        }
        allowed_cache
            .entry(key)
            .or_insert_with(|| {
                let mut acc = vec![0u64; words];
                for rule in table.rules_of(dir) {
                    if !table.rule_admits_port(rule, port, proto) {
                        continue;
                    }
                    let peers = table.rule_peers(rule);
                    let mut b = if peers.any {
                        all.clone()
                    } else {
                        let mut b = set_bits(peers.set);
                        if peers.any_pod {
                            b.iter_mut().zip(&with_identity).for_each(|(x, y)| *x |= y);
                        }
                        b
                    };
                    if let Some(only) = peers.only {
                        let f = set_bits(only);
                        b.iter_mut().zip(&f).for_each(|(x, y)| *x &= y);
                    }
                    acc.iter_mut().zip(&b).for_each(|(x, y)| *x |= y);
                }
                acc
            })
            .clone()
    };
    let mut egress = vec![0u64; n * words];
    let mut ingress = vec![0u64; n * words];
    for (q, ep) in endpoint.iter().enumerate() {
        let policy = ep.and_then(|e| table.endpoint_policy(e).map(|p| (e, p)));
        let (eg, ing) = match policy {
            Some((e, p)) => (
                allowed_of(&p.egress, (e.0, false)),
                allowed_of(&p.ingress, (e.0, true)),
            ),
            None => (all.clone(), all.clone()),
        };
        egress[q * words..(q + 1) * words].copy_from_slice(&eg);
        ingress[q * words..(q + 1) * words].copy_from_slice(&ing);
    }
    // allowed[s][d] = egress[s][d] ∧ ingress[d][s].
    let ingress_t = transpose(&ingress, n, words);
    let mut r = Reachability::new(pods.iter().map(|&(i, _)| i).collect());
    for (x, (e, i)) in r.bits.iter_mut().zip(egress.iter().zip(&ingress_t)) {
        *x = e & i;
    }
    for q in 0..n {
        r.set(q, q);
    }
    r
}

/// The same matrix, one `evaluate_connection` per pair (slow; the reference).
pub fn reachability_pairwise(
    cluster: &ClusterState,
    table: &PolicyTable<'_>,
    port: u16,
    protocol: Protocol,
) -> Reachability {
    let pods = addressed_pods(cluster);
    let mut r = Reachability::new(pods.iter().map(|&(i, _)| i).collect());
    for (s, &(_, src)) in pods.iter().enumerate() {
        for (d, &(_, dst)) in pods.iter().enumerate() {
            if s == d
                || table
                    .evaluate_connection(src, dst, port, protocol.number())
                    .is_allow()
            {
                r.set(s, d);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::manifests::{parse, Manifests};
    use crate::control::policy_compiler::compile;
    use std::path::Path;

    #[test]
    fn transpose_matches_naive() {
        let n: usize = 130;
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        let mut x = 0x1234_5678_9abc_def0u64;
        for r in 0..n {
            for c in 0..n {
                x = podwire_core::flow::fmix64(x.wrapping_add(1));
                if x & 3 == 0 {
                    bits[r * words + c / 64] |= 1 << (c % 64);
                }
            }
        }
        let t = transpose(&bits, n, words);
        for r in 0..n {
            for c in 0..n {
                assert_eq!(
                    bits[r * words + c / 64] >> (c % 64) & 1,
                    t[c * words + r / 64] >> (r % 64) & 1
                );
            }
        }
    }

    /// A cluster with every kind of rule, checked against pairwise evaluation.
    #[test]
    fn bitset_matrix_equals_pairwise_evaluation() {
        let mut yaml = String::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: t{}}}}}\n",
                i % 2
            );
        }
        for i in 0..70u32 {
            let ns = ["x", "y", "z"][(i % 3) as usize];
            let app = ["web", "db", "api"][(i / 3 % 3) as usize];
            let port = 80 + i % 3;
            yaml += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: {port}}}]}}]}}\nstatus: {{podIP: 10.0.{}.{}}}\n",
                i / 20,
                i % 20 + 1
            );
        }
        let policies = [
            ("x", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]}"),
            ("x", "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]}]}"),
            ("y", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{ports: [{port: http}]}, {to: [{namespaceSelector: {matchLabels: {team: t0}}, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}}]}]}"),
            ("z", "{podSelector: {matchExpressions: [{key: app, operator: In, values: [api, db]}]}, policyTypes: [Ingress, Egress], ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80, endPort: 81}]}], egress: [{to: [{ipBlock: {cidr: 10.0.2.0/24}}, {podSelector: {}}]}]}"),
        ];
        for (i, (ns, spec)) in policies.iter().enumerate() {
            yaml += &format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec: {spec}\n");
        }
        let mut m = Manifests::default();
        m.extend(parse(&yaml, Path::new("t.yaml")).unwrap());
        let cluster = ClusterState::from_manifests(&m).unwrap();
        let compiled = compile(&cluster).unwrap();
        let mut store = compiled.store();
        let table = compiled.table(&mut store, |_| true).unwrap();
        for (port, proto) in [
            (80, Protocol::Tcp),
            (81, Protocol::Tcp),
            (82, Protocol::Tcp),
            (80, Protocol::Udp),
        ] {
            let fast = reachability(&cluster, &table, port, proto);
            let slow = reachability_pairwise(&cluster, &table, port, proto);
            assert_eq!(fast, slow, "{proto}/{port}");
            let allowed = fast.allowed_pairs();
            assert!(
                allowed > 70 && allowed < 70 * 70,
                "{proto}/{port}: {allowed}"
            );
        }
    }
}

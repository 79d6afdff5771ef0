//! The pod × pod reachability matrix of one port, computed through the policy table.
//!
//! Design note: 10k pods make 100M ordered pairs, far too many to evaluate one by one
//! within a second. But the table cannot tell apart two addresses with the same entry
//! (identity and local endpoint policy) and the same CIDR class, so pods are first
//! grouped into such equivalence classes; one representative pair per class pair is
//! evaluated through [`PolicyTable::evaluate_connection`] — exactly what the datapath
//! runs — and the class matrix is expanded into one bitset row per pod. A pod's traffic
//! to itself never leaves its network namespace, so the diagonal is always allowed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use podwire_core::policy::PolicyTable;

use super::cluster::{ClusterState, Protocol};

/// Reachability between pods, as a bit matrix (rows = from, columns = to).
#[derive(Debug, Clone)]
pub struct Reachability {
    /// Pod indexes (into the cluster state) of the rows and columns: every pod with an
    /// address, in cluster order.
    pub pods: Vec<usize>,
    words: usize,
    bits: Vec<u64>,
    /// Number of equivalence classes the pods fell into.
    pub classes: usize,
}

impl Reachability {
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

/// Computes the matrix for destination `port`/`protocol` (see the module notes).
pub fn reachability(
    cluster: &ClusterState,
    table: &PolicyTable<'_>,
    port: u16,
    protocol: Protocol,
) -> Reachability {
    let pods: Vec<(usize, IpAddr)> = cluster
        .pods
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.ips.first().map(|ip| (i, *ip)))
        .collect();
    // Equivalence classes.
    let mut class_of_key = HashMap::new();
    let mut reps: Vec<IpAddr> = Vec::new();
    let class: Vec<usize> = pods
        .iter()
        .map(|&(_, ip)| {
            let key = (table.address(&ip), table.cidr_class(ip));
            *class_of_key.entry(key).or_insert_with(|| {
                reps.push(ip);
                reps.len() - 1
            })
        })
        .collect();
    let n_classes = reps.len();
    // Class matrix through the core.
    let proto = protocol.number();
    let mut class_allowed = vec![false; n_classes * n_classes];
    for (s, &src) in reps.iter().enumerate() {
        for (d, &dst) in reps.iter().enumerate() {
            class_allowed[s * n_classes + d] =
                table.evaluate_connection(src, dst, port, proto).is_allow();
        }
    }
    // Expand: one row per class, copied to each of its pods.
    let n = pods.len();
    let words = n.div_ceil(64);
    let mut class_rows = vec![0u64; n_classes * words];
    for s in 0..n_classes {
        let row = &mut class_rows[s * words..(s + 1) * words];
        let allowed = &class_allowed[s * n_classes..(s + 1) * n_classes];
        for (q, &c) in class.iter().enumerate() {
            if allowed[c] {
                row[q / 64] |= 1 << (q % 64);
            }
        }
    }
    let mut bits = vec![0u64; n * words];
    for (p, &c) in class.iter().enumerate() {
        let row = &mut bits[p * words..(p + 1) * words];
        row.copy_from_slice(&class_rows[c * words..(c + 1) * words]);
        row[p / 64] |= 1 << (p % 64);
    }
    Reachability {
        pods: pods.into_iter().map(|(i, _)| i).collect(),
        words,
        bits,
        classes: n_classes,
    }
}

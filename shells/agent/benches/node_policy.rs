//! What the node agent pays to apply a cluster change to its running datapath: the
//! synthetic cluster of `policy_matrix` (10,000 pods in 100 namespaces, 1,000
//! NetworkPolicies), of which 100 pods are this node's.
//!
//! Measured, on typed objects already in memory, each 5 times (minimum reported; the
//! machine is shared): `compile_for_node` (the one compiler, with this node's pods as
//! local endpoints), `refill` (clearing and refilling a datapath-shaped policy table
//! that already exists — what the agent's worker does on every change), and, side by
//! side, `policy_check_table` (the offline path: fresh storage sized by the plan, then
//! the same fill). The summary's `seconds` is compile + refill: the agent-side cost of
//! one change (the manifest poll interval comes on top).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use podwire_agent::api::PodRef;
use podwire_agent::control::cluster::ClusterState;
use podwire_agent::control::node_policy::compile_for_node;
use podwire_core::policy::PolicyTable;

#[path = "policy_matrix.rs"]
#[allow(dead_code)]
mod matrix;

fn main() {
    let m = matrix::manifests();
    let cluster = ClusterState::from_manifests(&m).unwrap();
    let local: Vec<(PodRef, Ipv4Addr)> = cluster
        .pods
        .iter()
        .take(100)
        .map(|p| {
            let std::net::IpAddr::V4(ip) = p.ips[0] else {
                unreachable!()
            };
            (
                PodRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                },
                ip,
            )
        })
        .collect();
    let first = compile_for_node(&cluster, &local).unwrap();
    let mut table = PolicyTable::new(first.compiled.leaked_storage());
    let (mut compile_s, mut refill_s, mut offline_s) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t0 = Instant::now();
        let p = compile_for_node(black_box(&cluster), &local).unwrap();
        let t1 = Instant::now();
        p.compiled.fill(&mut table, |i| p.local[i]).unwrap();
        let t2 = Instant::now();
        let mut store = p.compiled.store();
        let t = p.compiled.table(&mut store, |i| p.local[i]).unwrap();
        black_box(t.usage());
        let t3 = Instant::now();
        compile_s = compile_s.min((t1 - t0).as_secs_f64());
        refill_s = refill_s.min((t2 - t1).as_secs_f64());
        offline_s = offline_s.min((t3 - t2).as_secs_f64());
    }
    let (rules, ports, peers, prefixes) = table.usage();
    println!(
        "{{\"case\":\"setup\",\"pods\":{},\"local_pods\":{},\"policies\":{},\"identities\":{},\"rules\":{rules},\"port_ranges\":{ports},\"peer_ids\":{peers},\"prefixes\":{prefixes}}}",
        cluster.pods.len(),
        local.len(),
        m.network_policies.len(),
        first.compiled.identities.len()
    );
    println!("{{\"case\":\"compile_for_node\",\"seconds\":{compile_s:.4}}}");
    println!("{{\"case\":\"refill\",\"seconds\":{refill_s:.4}}}");
    println!("{{\"case\":\"policy_check_table\",\"seconds\":{offline_s:.4}}}");
    println!(
        "{{\"bench\":\"node_policy\",\"pods\":{},\"policies\":{},\"compile_seconds\":{compile_s:.4},\"refill_seconds\":{refill_s:.4},\"seconds\":{:.4},\"offline_table_seconds\":{offline_s:.4}}}",
        cluster.pods.len(),
        m.network_policies.len(),
        compile_s + refill_s
    );
}

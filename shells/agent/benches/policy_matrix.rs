//! Full pod × pod reachability of a synthetic cluster: 10,000 pods in 100 namespaces
//! (≈2,000 identities), 1,000 NetworkPolicies (podSelector with matchLabels and
//! matchExpressions, namespaceSelector, ipBlock with except, numeric / named / endPort
//! ports, ingress and egress), for TCP/80.
//!
//! Measured, on typed objects already in memory: `compile` (validation, identities,
//! plan), `table` (filling the core PolicyTable), `matrix` (rule-major bitset
//! evaluation over that table, see `control::reachability`: 100M pod pairs as bits).
//! `seconds` in the summary is compile + table + matrix: the whole path from cluster
//! objects to the 10k × 10k truth table. Each is run 3 times; the minimum is reported
//! (the machine is shared with other builds).

use std::hint::black_box;
use std::time::Instant;

use podwire_agent::control::cluster::{ClusterState, Protocol};
use podwire_agent::control::manifests::Manifests;
use podwire_agent::control::policy_compiler::compile;
use podwire_agent::control::reachability::reachability;
use serde_json::json;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (podwire_core::flow::fmix64(self.0) % n as u64) as usize
    }
}

const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

pub fn manifests() -> Manifests {
    let mut rng = Rng(1);
    let mut m = Manifests::default();
    let n_ns = 100;
    for i in 0..n_ns {
        m.namespaces.push(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": format!("ns-{i}"), "labels": {
                    "team": format!("team-{}", i % 10), "env": (["prod", "staging", "dev"][i % 3])}}
            }))
            .unwrap(),
        );
    }
    for i in 0..10_000u32 {
        let ns = i as usize % n_ns;
        let app = rng.below(10);
        let tier = TIERS[app % 4];
        let port_name = if tier == "web" { "http" } else { "metrics" };
        m.pods.push(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{ns}"),
                    "labels": {"app": format!("app-{app}"), "tier": tier, "version": format!("v{}", rng.below(2))}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [
                    {"name": port_name, "containerPort": 80 + (app as i32 % 3)}]}]},
                "status": {"podIP": format!("10.{}.{}.{}", 244 + i / 65536, (i / 250) % 256, i % 250 + 2)}
            }))
            .unwrap(),
        );
    }
    let mut add = |ns: usize, name: String, spec: serde_json::Value| {
        m.network_policies.push(
            serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": format!("ns-{ns}")}, "spec": spec
            }))
            .unwrap(),
        );
    };
    for ns in 0..n_ns {
        add(
            ns,
            "default-deny".into(),
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        );
        add(
            ns,
            "web-open".into(),
            json!({"podSelector": {"matchLabels": {"tier": "web"}},
            "ingress": [{"ports": [{"port": "http"}, {"port": 443}]}]}),
        );
        for k in 0..4 {
            let (to, from) = (rng.below(10), rng.below(10));
            add(
                ns,
                format!("app-{k}"),
                json!({"podSelector": {"matchLabels": {"app": format!("app-{to}")}},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": [format!("app-{from}"), format!("app-{}", (from + 1) % 10)]}]}}],
                  "ports": [{"port": 80}, {"port": 9090, "endPort": 9100 + k}]}]}),
            );
        }
        add(
            ns,
            "db-from-team-api".into(),
            json!({"podSelector": {"matchLabels": {"tier": "db"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", ns % 10)}},
                                   "podSelector": {"matchLabels": {"tier": "api"}}}], "ports": [{"port": 80}]}]}),
        );
        add(
            ns,
            "api-from-corp".into(),
            json!({"podSelector": {"matchLabels": {"tier": "api"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("10.244.{}.0/24", ns)]}}]}]}),
        );
        add(
            ns,
            "db-egress".into(),
            json!({"podSelector": {"matchLabels": {"tier": "db"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}}}],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
                       {"to": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["cache"]}]}}],
                        "ports": [{"port": "metrics"}, {"port": 80}]}]}),
        );
        add(
            ns,
            "cache-egress".into(),
            json!({"podSelector": {"matchLabels": {"tier": "cache"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32", "10.0.0.0/8"]}}],
                        "ports": [{"port": 443}]},
                       {"to": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}]}]}),
        );
    }
    m
}

fn main() {
    let m = manifests();
    let cluster = ClusterState::from_manifests(&m).unwrap();
    let (mut compile_s, mut table_s, mut matrix_s) = (f64::MAX, f64::MAX, f64::MAX);
    let mut summary = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let compiled = compile(black_box(&cluster)).unwrap();
        let t1 = Instant::now();
        let mut store = compiled.store();
        let table = compiled.table(&mut store, |_| true).unwrap();
        let t2 = Instant::now();
        let r = reachability(&cluster, &table, 80, Protocol::Tcp);
        let t3 = Instant::now();
        compile_s = compile_s.min((t1 - t0).as_secs_f64());
        table_s = table_s.min((t2 - t1).as_secs_f64());
        matrix_s = matrix_s.min((t3 - t2).as_secs_f64());
        summary = Some((
            compiled.identities.len(),
            r.pods.len(),
            r.allowed_pairs(),
            table.usage(),
        ));
    }
    let (identities, pods, allowed, (rules, ports, peers, prefixes)) = summary.unwrap();
    println!(
        "{{\"case\":\"setup\",\"pods\":{pods},\"policies\":{},\"identities\":{identities},\"rules\":{rules},\"port_ranges\":{ports},\"peer_ids\":{peers},\"prefixes\":{prefixes}}}",
        m.network_policies.len()
    );
    println!("{{\"case\":\"compile\",\"seconds\":{compile_s:.3}}}");
    println!("{{\"case\":\"table\",\"seconds\":{table_s:.3}}}");
    println!(
        "{{\"case\":\"matrix\",\"pairs\":{},\"allowed_pairs\":{allowed},\"seconds\":{matrix_s:.3}}}",
        pods * pods
    );
    println!(
        "{{\"bench\":\"policy_matrix\",\"pods\":{pods},\"policies\":{},\"seconds\":{:.3}}}",
        m.network_policies.len(),
        compile_s + table_s + matrix_s
    );
}

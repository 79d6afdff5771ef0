//! NetworkPolicy for one node's datapath: the cluster-wide compilation, with this
//! node's pods as the local endpoints.
//!
//! Design note: there is one compiler ([`super::policy_compiler`]); a node differs
//! from `policy check` only in (a) where the addresses of its own pods come from —
//! the node's IPAM knows them before any Pod status does, so attached pods get their
//! IPAM address (a pod attached but not listed yet gets an identity of its namespace
//! with no labels) — and (b) which pods are local endpoints: only those attached here,
//! because egress is enforced on the source node and ingress on the destination node.
//! Every pod of the cluster still gets its identity, so a local pod's policy can
//! recognise remote peers by their labels. The result also keeps the names needed to
//! explain a drop: policies by [`PolicyId`](podwire_core::policy::PolicyId), pods by
//! address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::cluster::{ClusterState, PodInfo};
use super::policy_compiler::{compile, CompileError, CompiledPolicy};
use crate::api::PodRef;

/// The compiled policy of a node and which pods are its local endpoints.
#[derive(Debug, Clone, Default)]
pub struct NodePolicy {
    /// The compiled form (shared with `policy check`).
    pub compiled: CompiledPolicy,
    /// `local[pod index]`: the pod is attached to this node.
    pub local: Vec<bool>,
    /// `namespace/name` of every pod address (for explaining flows).
    pub pod_names: HashMap<IpAddr, String>,
}

impl NodePolicy {
    /// `namespace/name` of policy `id` (as carried in flow verdicts).
    pub fn policy_name(&self, id: u16) -> Option<String> {
        self.compiled.policies.get(usize::from(id)).map(|p| p.key())
    }

    /// The names of every policy, by id.
    pub fn policy_names(&self) -> Vec<String> {
        self.compiled.policies.iter().map(|p| p.key()).collect()
    }
}

/// Compiles `state` for the node whose attached pods are `local` (pod, IPAM address).
pub fn compile_for_node(
    state: &ClusterState,
    local: &[(PodRef, Ipv4Addr)],
) -> Result<NodePolicy, CompileError> {
    let mut state = state.clone();
    let mut is_local = vec![false; state.pods.len()];
    for (pod, ip) in local {
        let ip = IpAddr::V4(*ip);
        match state.pod_index(&pod.namespace, &pod.name) {
            Some(i) => {
                state.pods[i].ips = vec![ip];
                is_local[i] = true;
            }
            None => {
                state.pods.push(PodInfo {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    labels: Default::default(),
                    ips: vec![ip],
                    named_ports: Vec::new(),
                    host_network: false,
                });
                is_local.push(true);
                state
                    .namespaces
                    .entry(pod.namespace.clone())
                    .or_insert_with(|| {
                        [(
                            super::cluster::NAMESPACE_NAME_LABEL.to_string(),
                            pod.namespace.clone(),
                        )]
                        .into_iter()
                        .collect()
                    });
            }
        }
    }
    // A local address listed as another pod's status IP (stale status): the local
    // attachment wins.
    let local_ips: Vec<IpAddr> = local.iter().map(|(_, ip)| IpAddr::V4(*ip)).collect();
    for (i, p) in state.pods.iter_mut().enumerate() {
        if !is_local[i] {
            p.ips.retain(|ip| !local_ips.contains(ip));
        }
    }
    let compiled = compile(&state)?;
    let pod_names = state
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.key())))
        .collect();
    Ok(NodePolicy {
        compiled,
        local: is_local,
        pod_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::manifests::{parse, Manifests};
    use podwire_core::policy::PolicyTable;
    use std::path::Path;

    const YAML: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: default, labels: {role: client}}
status: {podIP: 10.244.2.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]
";

    fn state() -> ClusterState {
        let mut m = Manifests::default();
        m.extend(parse(YAML, Path::new("t.yaml")).unwrap());
        ClusterState::from_manifests(&m).unwrap()
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn local_pods_get_their_ipam_address_and_are_the_only_endpoints() {
        let web: Ipv4Addr = "10.244.1.2".parse().unwrap();
        let client: Ipv4Addr = "10.244.1.3".parse().unwrap();
        let stranger: Ipv4Addr = "10.244.1.4".parse().unwrap();
        let p = compile_for_node(
            &state(),
            &[
                (pod("web"), web),
                (pod("client"), client),
                (pod("not-listed"), stranger),
            ],
        )
        .unwrap();
        assert_eq!(p.local, vec![true, true, false, true]);
        assert_eq!(
            p.policy_name(0).as_deref(),
            Some("default/web-allow-client")
        );
        assert_eq!(p.pod_names[&IpAddr::V4(web)], "default/web");
        // Fill a table of the node's shape (the datapath's) and evaluate.
        let mut t = PolicyTable::new(p.compiled.leaked_storage());
        p.compiled.fill(&mut t, |i| p.local[i]).unwrap();
        let ok = |from: Ipv4Addr, to: Ipv4Addr, port| {
            t.evaluate_connection(from.into(), to.into(), port, 6)
                .is_allow()
        };
        let remote: Ipv4Addr = "10.244.2.9".parse().unwrap();
        assert!(ok(client, web, 80));
        assert!(ok(remote, web, 80), "remote peers have their identity");
        assert!(!ok(client, web, 81));
        assert!(!ok(stranger, web, 80), "an unlisted pod has no labels");
        assert!(ok(web, stranger, 9), "not isolated");
        // A refill of the same table after a label change.
        let mut s2 = state();
        s2.pods[0].labels.insert("app".into(), "other".into());
        let p2 = compile_for_node(&s2, &[(pod("web"), web), (pod("client"), client)]).unwrap();
        p2.compiled.fill(&mut t, |i| p2.local[i]).unwrap();
        assert!(t
            .evaluate_connection(stranger.into(), web.into(), 81, 6)
            .is_allow());
    }
}

//! Compiles Services and EndpointSlices into the core's service form: one core
//! service per Kubernetes service port, its frontends and its backends.
//!
//! Design note: the core's `ServiceTable` knows nothing of names; it wants dense
//! [`ServiceId`]s, frontends `(IP, port, protocol) → id` and, per id, a list of
//! `IP:targetPort` backends with EndpointSlice conditions and a node. This module
//! produces exactly that as plain owned data ([`ServicePlan`]), deterministic for a
//! given cluster state (ids follow `namespace/name/port` order, so every node numbers
//! services alike), so the node agent can compare plans and reinstall only on change,
//! and tests can check the compilation without a datapath. Backends come from the
//! EndpointSlices labelled `kubernetes.io/service-name`, matched to a service port by
//! port name and protocol, as kube-proxy does; a missing `ready` counts as ready, a
//! missing `serving` as `ready`, a missing `terminating` as false (the API's
//! documented interpretation). Headless services (`clusterIP: None`) and
//! ExternalName services have no frontends and are skipped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podwire_core::flow::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use podwire_core::ids::NodeId;
use podwire_core::service::{
    Backend, Conditions, Frontend, FrontendKind, ServiceConfig, ServiceId, TrafficPolicy,
};

use super::node_view::NodeInfo;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One Kubernetes service port, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The core's id.
    pub id: ServiceId,
    /// `namespace/name:port` (port name, or number when unnamed).
    pub name: String,
    /// Settings.
    pub config: ServiceConfig,
    /// Frontends (ClusterIP, NodePort, external IPs).
    pub frontends: Vec<Frontend>,
    /// Backends.
    pub backends: Vec<Backend>,
}

/// Every service port of the cluster, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePlan {
    /// Entries, `entries[i].id == ServiceId(i)`.
    pub entries: Vec<ServiceEntry>,
}

fn protocol_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// The node an address belongs to: by name, else by pod CIDR.
fn node_of(nodes: &[NodeInfo], name: Option<&str>, ip: Ipv4Addr) -> NodeId {
    let by_name = name.and_then(|n| nodes.iter().position(|x| x.name == n));
    let by_cidr = || {
        nodes
            .iter()
            .position(|x| x.pod_cidr.is_some_and(|c| c.contains(&ip)))
    };
    NodeId(by_name.or_else(by_cidr).map_or(u16::MAX, |i| i as u16))
}

/// Compiles `services` with their `slices`; `nodes` is the name-sorted node list
/// (a node's [`NodeId`] is its position). Services with an unsupported protocol,
/// a non-IPv4 ClusterIP, or no ClusterIP are skipped.
pub fn compile(services: &[Service], slices: &[EndpointSlice], nodes: &[NodeInfo]) -> ServicePlan {
    // (namespace, service name) → slices.
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        by_service.entry((ns, svc.clone())).or_default().push(s);
    }
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    let mut plan = ServicePlan::default();
    for svc in sorted {
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None"), unset, or IPv6
        };
        let local_policy = |p: Option<&String>| match p.map(String::as_str) {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        };
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            podwire_core::Duration::from_secs(secs.max(1) as u64)
        });
        let config = ServiceConfig {
            affinity,
            external_policy: local_policy(spec.external_traffic_policy.as_ref()),
            internal_policy: local_policy(spec.internal_traffic_policy.as_ref()),
        };
        let node_port_type = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(proto) = protocol_number(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(svc_port) = u16::try_from(port.port) else {
                continue;
            };
            let id = ServiceId(plan.entries.len() as u16);
            let mut frontends = vec![Frontend {
                addr: IpAddr::V4(cluster_ip),
                port: svc_port,
                protocol: proto,
                kind: FrontendKind::ClusterIp,
                service: id,
            }];
            if node_port_type {
                if let Some(np) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
                    frontends.push(Frontend {
                        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        port: np,
                        protocol: proto,
                        kind: FrontendKind::NodePort,
                        service: id,
                    });
                }
            }
            for ip in spec.external_ips.iter().flatten() {
                if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                    frontends.push(Frontend {
                        addr: IpAddr::V4(ip),
                        port: svc_port,
                        protocol: proto,
                        kind: FrontendKind::External,
                        service: id,
                    });
                }
            }
            let port_name = port.name.clone().unwrap_or_default();
            let mut backends = Vec::new();
            for slice in &slices {
                let Some(target) = slice.ports.iter().flatten().find_map(|p| {
                    let same_name = p.name.clone().unwrap_or_default() == port_name;
                    let same_proto = protocol_number(p.protocol.as_deref()) == Some(proto);
                    (same_name && same_proto)
                        .then_some(p.port)
                        .flatten()
                        .and_then(|n| u16::try_from(n).ok())
                }) else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    let c = ep.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let conditions = Conditions {
                        ready,
                        serving: c.and_then(|c| c.serving).unwrap_or(ready),
                        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    };
                    for a in &ep.addresses {
                        let Ok(ip) = a.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        let b = Backend {
                            addr: IpAddr::V4(ip),
                            port: target,
                            node: node_of(nodes, ep.node_name.as_deref(), ip),
                            conditions,
                        };
                        if !backends.contains(&b) {
                            backends.push(b);
                        }
                    }
                }
            }
            let label = if port_name.is_empty() {
                svc_port.to_string()
            } else {
                port_name.clone()
            };
            plan.entries.push(ServiceEntry {
                id,
                name: format!("{ns}/{name}:{label}"),
                config,
                frontends,
                backends,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::manifests::{parse, Manifests};
    use std::path::Path;

    const YAML: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: prod}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.1.5]
  nodeName: n1
  conditions: {ready: true}
- addresses: [10.244.2.7]
  conditions: {ready: false, serving: true, terminating: true}
";

    fn nodes() -> Vec<NodeInfo> {
        ["n1", "n2"]
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                name: n.to_string(),
                pod_cidr: Some(format!("10.244.{}.0/24", i + 1).parse().unwrap()),
                internal_ip: None,
                vtep_mac: None,
            })
            .collect()
    }

    #[test]
    fn service_ports_become_core_services_with_backends_from_slices() {
        let mut m = Manifests::default();
        m.extend(parse(YAML, Path::new("t.yaml")).unwrap());
        let plan = compile(&m.services, &m.endpoint_slices, &nodes());
        assert_eq!(plan.entries.len(), 2, "headless skipped: {plan:?}");
        let http = &plan.entries[0];
        assert_eq!(http.name, "prod/web:http");
        assert_eq!(http.id, ServiceId(0));
        assert_eq!(http.frontends.len(), 2);
        assert_eq!(
            http.frontends[0].addr,
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        assert_eq!(http.frontends[0].port, 80);
        assert_eq!(http.frontends[1].kind, FrontendKind::NodePort);
        assert_eq!(http.frontends[1].port, 30080);
        assert_eq!(http.backends.len(), 2);
        assert_eq!(http.backends[0].port, 8080);
        assert_eq!(http.backends[0].node, NodeId(0));
        assert_eq!(http.backends[0].conditions, Conditions::READY);
        // No nodeName: found by pod CIDR; conditions kept.
        assert_eq!(http.backends[1].node, NodeId(1));
        assert!(!http.backends[1].conditions.ready && http.backends[1].conditions.terminating);
        let dns = &plan.entries[1];
        assert_eq!(dns.frontends[0].protocol, PROTO_UDP);
        assert_eq!(dns.backends[0].port, 5353);
    }
}

//! The lab's API objects: what `podwire lab apply` and `lab delete` change, and the
//! EndpointSlices the lab derives from them.
//!
//! Design note: in the lab, podwire itself plays the parts of the API server and of
//! the controllers that a real cluster runs next to it. It keeps the applied
//! Namespaces, Services and NetworkPolicies as the typed objects (so `state.json`
//! survives a `lab apply` that fails half-way), allocates ClusterIPs from the service
//! CIDR as the API server does, and writes one EndpointSlice per selecting Service
//! from the pods it created, as the EndpointSlice controller does: every pod whose
//! labels match the selector is a ready endpoint, with its hostname and subdomain,
//! and named target ports resolve on each pod's container ports. Pods themselves are
//! not kept here: they are [`super::LabPod`]s, created as a runtime would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::LabPod;

/// The service CIDR's first address (the `kubernetes` Service's, in a real cluster).
pub const SERVICE_CIDR_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// Addresses of the service CIDR the lab hands out (a /16 of 10.96.0.0/12).
pub const SERVICE_CIDR_SIZE: u32 = 1 << 16;
/// The first address allocated: `.1` is the `kubernetes` Service's and `.10` the
/// cluster DNS's in a kubeadm cluster, so the lab starts after them.
pub const FIRST_ALLOCATED: u32 = 11;

/// A container port of a lab pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPort {
    /// Its name (`http`), empty if unnamed.
    #[serde(default)]
    pub name: String,
    /// The port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Namespaces, Services and NetworkPolicies applied to the lab, by `namespace/name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabObjects {
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Namespace>,
    /// Services by `namespace/name`.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// NetworkPolicies by `namespace/name`.
    #[serde(default)]
    pub policies: BTreeMap<String, NetworkPolicy>,
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

impl LabObjects {
    /// Adds or replaces a Service, allocating its ClusterIP as the API server would
    /// when it has none (a changed Service keeps the address it had).
    pub fn apply_service(&mut self, mut svc: Service) -> Result<()> {
        svc.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        let k = key(&svc.metadata);
        let spec = svc.spec.get_or_insert_with(Default::default);
        let external_name = spec.type_.as_deref() == Some("ExternalName");
        if spec.cluster_ip.is_none() && !external_name {
            let kept = self
                .services
                .get(&k)
                .and_then(|old| old.spec.as_ref()?.cluster_ip.clone());
            let ip = match kept {
                Some(ip) => ip,
                None => self.free_cluster_ip()?.to_string(),
            };
            spec.cluster_ip = Some(ip.clone());
            spec.cluster_ips = Some(vec![ip]);
        }
        self.services.insert(k, svc);
        Ok(())
    }

    fn free_cluster_ip(&self) -> Result<Ipv4Addr> {
        let taken: std::collections::BTreeSet<String> = self
            .services
            .values()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        let base = u32::from(SERVICE_CIDR_BASE);
        (FIRST_ALLOCATED..SERVICE_CIDR_SIZE - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !taken.contains(&ip.to_string()))
            .ok_or_else(|| anyhow::anyhow!("the service CIDR 10.96.0.0/16 is full"))
    }

    /// Adds or replaces a NetworkPolicy.
    pub fn apply_policy(&mut self, mut p: NetworkPolicy) {
        p.metadata.namespace.get_or_insert_with(|| "default".into());
        self.policies.insert(key(&p.metadata), p);
    }

    /// Adds or replaces a Namespace.
    pub fn apply_namespace(&mut self, ns: Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        self.namespaces.insert(name, ns);
    }

    /// Removes the object of `kind` named `namespace/name` (or `name` for a
    /// Namespace); whether it existed.
    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> Result<bool> {
        let k = format!("{namespace}/{name}");
        Ok(match kind {
            "Namespace" => self.namespaces.remove(name).is_some(),
            "Service" => self.services.remove(&k).is_some(),
            "NetworkPolicy" => self.policies.remove(&k).is_some(),
            other => bail!("the lab does not keep {other} objects"),
        })
    }

    /// The EndpointSlices the endpoint controller would write for `pods`.
    pub fn endpoint_slices(&self, pods: &[LabPod]) -> Vec<EndpointSlice> {
        self.services
            .values()
            .filter_map(|svc| endpoint_slice(svc, pods))
            .collect()
    }

    /// Every object as a YAML document stream, slices included.
    pub fn manifests(&self, pods: &[LabPod]) -> Result<String> {
        let mut docs = vec![self.api_manifests()?];
        for slice in self.endpoint_slices(pods) {
            docs.push(document("discovery.k8s.io/v1", "EndpointSlice", &slice)?);
        }
        docs.retain(|d| !d.is_empty());
        Ok(docs.join("---\n"))
    }

    /// The applied Namespaces as JSON objects with their apiVersion and kind.
    pub fn namespace_objects(&self) -> Result<Vec<serde_json::Value>> {
        self.namespaces
            .values()
            .map(|ns| object("v1", "Namespace", ns))
            .collect()
    }

    /// The applied objects without the EndpointSlices, for an API server whose
    /// own controller writes them.
    pub fn api_manifests(&self) -> Result<String> {
        let mut docs: Vec<String> = self
            .namespace_objects()?
            .into_iter()
            .map(|o| format!("{o}\n"))
            .collect();
        for svc in self.services.values() {
            docs.push(document("v1", "Service", svc)?);
        }
        for p in self.policies.values() {
            docs.push(document("networking.k8s.io/v1", "NetworkPolicy", p)?);
        }
        Ok(docs.join("---\n"))
    }
}

/// One object as JSON with its apiVersion and kind.
fn object<T: Serialize>(api_version: &str, kind: &str, o: &T) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(o)?;
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    Ok(v)
}

/// One object as a JSON document (JSON is YAML) with its apiVersion and kind.
fn document<T: Serialize>(api_version: &str, kind: &str, o: &T) -> Result<String> {
    Ok(format!("{}\n", object(api_version, kind, o)?))
}

/// The EndpointSlice of a selecting Service, from the pods whose labels match.
fn endpoint_slice(svc: &Service, pods: &[LabPod]) -> Option<EndpointSlice> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone()?;
    let selected: Vec<&LabPod> = pods
        .iter()
        .filter(|p| p.namespace == namespace)
        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .collect();
    let mut ports = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        // A named target port must resolve to the same number on every selected
        // pod to be one slice port (as the controller groups them); the lab's pods
        // of one service agree, and an unresolved name leaves the port out.
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(n)) => selected.iter().find_map(|p| {
                p.ports
                    .iter()
                    .find(|c| &c.name == n && c.protocol == protocol)
                    .map(|c| i32::from(c.port))
            }),
        };
        if let Some(port) = port {
            ports.push(EndpointPort {
                name: sp.name.clone(),
                port: Some(port),
                protocol: Some(protocol),
                ..Default::default()
            });
        }
    }
    let endpoints: Vec<Endpoint> = selected
        .iter()
        .map(|p| Endpoint {
            addresses: vec![p.ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            // As the controller: a hostname only where the pod's subdomain names
            // this service.
            hostname: p
                .hostname
                .clone()
                .filter(|_| p.subdomain.as_deref() == Some(name.as_str())),
            node_name: Some(p.node.clone()),
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(p.namespace.clone()),
                name: Some(p.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    Some(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-lab")),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_string(), name),
                (
                    "endpointslice.kubernetes.io/managed-by".to_string(),
                    "lab.podwire.io".to_string(),
                ),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn pod(name: &str, app: &str, ip: [u8; 4], ports: Vec<PodPort>) -> LabPod {
        LabPod {
            name: name.into(),
            namespace: "default".into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            node: "node1".into(),
            netns: format!("x-{name}"),
            ip: ip.into(),
            ports,
            hostname: None,
            subdomain: None,
            server_pid: 0,
        }
    }

    fn service(name: &str, app: &str, target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(target),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn cluster_ips_are_allocated_once_and_kept() {
        let mut o = LabObjects::default();
        o.apply_service(service("a", "a", IntOrString::Int(8080)))
            .unwrap();
        o.apply_service(service("b", "b", IntOrString::Int(8080)))
            .unwrap();
        o.apply_service(service("a", "a", IntOrString::Int(9090)))
            .unwrap();
        let ip = |k: &str| {
            o.services[k]
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .clone()
                .unwrap()
        };
        assert_eq!(ip("default/a"), "10.96.0.11");
        assert_eq!(ip("default/b"), "10.96.0.12");
    }

    #[test]
    fn slices_list_matching_pods_and_resolve_named_ports() {
        let mut o = LabObjects::default();
        o.apply_service(service("web", "web", IntOrString::String("serve".into())))
            .unwrap();
        let serve = PodPort {
            name: "serve".into(),
            port: 8080,
            protocol: "TCP".into(),
        };
        let pods = [
            pod("w1", "web", [10, 244, 1, 2], vec![serve.clone()]),
            pod("w2", "web", [10, 244, 2, 2], vec![serve]),
            pod("db", "db", [10, 244, 2, 3], vec![]),
        ];
        let slices = o.endpoint_slices(&pods);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        let addrs: Vec<&str> = s
            .endpoints
            .iter()
            .flatten()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addrs, ["10.244.1.2", "10.244.2.2"]);
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
            "web"
        );
        let text = o.manifests(&pods).unwrap();
        let m = crate::control::manifests::parse(&text, std::path::Path::new("lab.yaml")).unwrap();
        assert_eq!(m.len(), 2, "a Service and its EndpointSlice");
    }
}

//! The node's view of the cluster: its own pod CIDR and address, the other nodes
//! (for routes and VTEPs) and the pods' labels.
//!
//! Design note: the view is built from the typed Kubernetes objects (loaded by
//! [`super::manifests`], pods validated by [`super::cluster`]) in one pure, fallible
//! step, so a reload either produces a complete new view or an error naming the
//! object and field that was wrong — and the agent keeps running on the last good
//! view. Only what the node needs is validated strictly (its own Node must have a
//! podCIDR); a remote node without a podCIDR yet is listed without routes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::cluster::ClusterState;
use super::manifests::{self, Manifests};
use super::services::{self, ServicePlan};
use crate::api::PodRef;

/// An invalid cluster state: which object, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {}{message}", if .field.is_empty() { String::new() } else { format!("{}: ", .field) })]
pub struct ViewError {
    /// The object (`Kind/name (file)`) or file.
    pub object: String,
    /// The field path (`spec.podCIDR`), empty if not about one field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ViewError {
    pub(crate) fn whole(object: String, message: String) -> ViewError {
        ViewError {
            object,
            field: String::new(),
            message,
        }
    }
}

/// Loads the manifests under `path` and builds the view of node `local`.
pub fn load(path: &Path, local: &str) -> Result<ClusterView, ViewError> {
    let m = manifests::load(&[path.to_path_buf()])
        .map_err(|e| ViewError::whole(path.display().to_string(), e.to_string()))?;
    ClusterView::build(&m, local)
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDR` (or the first IPv4 entry of `spec.podCIDRs`).
    pub pod_cidr: Option<Ipv4Net>,
    /// The `InternalIP` of `status.addresses`.
    pub internal_ip: Option<Ipv4Addr>,
    /// The VTEP MAC a flannel node publishes in [`FLANNEL_BACKEND_DATA`]
    /// (`{"VNI":1,"VtepMAC":"aa:bb:.."}`); `None` for podwire nodes.
    pub vtep_mac: Option<[u8; 6]>,
}

/// The Node annotation in which flannel's VXLAN backend publishes its VTEP.
pub const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn flannel_vtep_mac(node: &Node, object: &str) -> Result<Option<[u8; 6]>, ViewError> {
    let Some(data) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FLANNEL_BACKEND_DATA))
    else {
        return Ok(None);
    };
    let err = |message: String| ViewError {
        object: object.to_string(),
        field: format!("metadata.annotations[{FLANNEL_BACKEND_DATA}]"),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_str(data).map_err(|e| err(format!("not JSON: {e}")))?;
    let mac = v
        .get("VtepMAC")
        .and_then(|m| m.as_str())
        .ok_or_else(|| err("no VtepMAC".into()))?;
    parse_mac(mac)
        .map(Some)
        .ok_or_else(|| err(format!("invalid VtepMAC {mac:?}")))
}

/// What the node agent needs from the cluster state.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node.
    pub local: NodeInfo,
    /// Every node, by name (this one included).
    pub nodes: Vec<NodeInfo>,
    /// Pod labels by pod.
    pub pod_labels: HashMap<PodRef, BTreeMap<String, String>>,
    /// Namespaces listed.
    pub namespaces: usize,
    /// Namespaces, pods and NetworkPolicies (validated: the policies compile), the
    /// input of the policy compiler.
    pub state: ClusterState,
    /// Services and their backends, compiled for the core.
    pub services: ServicePlan,
    /// The Service objects as listed (cluster DNS names them, headless and
    /// ExternalName services included).
    pub service_objects: Vec<Service>,
    /// The EndpointSlice objects as listed (cluster DNS reads their hostnames).
    pub endpoint_slices: Vec<EndpointSlice>,
}

fn node_info(node: &Node) -> Result<NodeInfo, ViewError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let object = format!("Node/{name}");
    if name.is_empty() {
        return Err(ViewError {
            object,
            field: "metadata.name".into(),
            message: "missing".into(),
        });
    }
    let spec = node.spec.as_ref();
    let mut pod_cidr = None;
    let candidates: Vec<(String, &String)> = match spec {
        Some(s) => s
            .pod_cidr
            .iter()
            .map(|c| ("spec.podCIDR".to_string(), c))
            .chain(
                s.pod_cidrs
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c)),
            )
            .collect(),
        None => vec![],
    };
    for (field, text) in candidates {
        if text.contains(':') {
            continue; // IPv6: not served yet.
        }
        let net: Ipv4Net = text.parse().map_err(|_| ViewError {
            object: object.clone(),
            field: field.clone(),
            message: format!("invalid CIDR {text:?}"),
        })?;
        if net.trunc() != net {
            return Err(ViewError {
                object,
                field,
                message: format!("{text} has host bits set"),
            });
        }
        pod_cidr = Some(net);
        break;
    }
    let mut internal_ip = None;
    if let Some(addrs) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for (i, a) in addrs.iter().enumerate() {
            if a.type_ == "InternalIP" && !a.address.contains(':') {
                internal_ip = Some(a.address.parse().map_err(|_| ViewError {
                    object: object.clone(),
                    field: format!("status.addresses[{i}].address"),
                    message: format!("invalid IPv4 address {:?}", a.address),
                })?);
                break;
            }
        }
    }
    let vtep_mac = flannel_vtep_mac(node, &object)?;
    Ok(NodeInfo {
        name,
        pod_cidr,
        internal_ip,
        vtep_mac,
    })
}

impl ClusterView {
    /// Builds the view of node `local` from `objects`.
    pub fn build(objects: &Manifests, local: &str) -> Result<ClusterView, ViewError> {
        let mut nodes = Vec::new();
        for n in &objects.nodes {
            let info = node_info(n)?;
            if nodes.iter().any(|o: &NodeInfo| o.name == info.name) {
                return Err(ViewError {
                    object: format!("Node/{}", info.name),
                    field: "metadata.name".into(),
                    message: "listed twice".into(),
                });
            }
            nodes.push(info);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                if let (Some(x), Some(y)) = (a.pod_cidr, b.pod_cidr) {
                    if x.contains(&y.network()) || y.contains(&x.network()) {
                        return Err(ViewError {
                            object: format!("Node/{}", b.name),
                            field: "spec.podCIDR".into(),
                            message: format!("{y} overlaps {x} of Node/{}", a.name),
                        });
                    }
                }
            }
        }
        let me = nodes
            .iter()
            .find(|n| n.name == local)
            .cloned()
            .ok_or_else(|| ViewError {
                object: format!("Node/{local}"),
                field: String::new(),
                message: "this node is not in the cluster state".into(),
            })?;
        if me.pod_cidr.is_none() {
            return Err(ViewError {
                object: format!("Node/{local}"),
                field: "spec.podCIDR".into(),
                message: "missing: this node needs a pod CIDR".into(),
            });
        }
        let state = ClusterState::from_manifests(objects)
            .map_err(|e| ViewError::whole("pods".into(), e.to_string()))?;
        let pod_labels = state
            .pods
            .iter()
            .map(|p| {
                (
                    PodRef {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    },
                    p.labels.clone(),
                )
            })
            .collect::<HashMap<_, _>>();
        // Reject an invalid NetworkPolicy as the API server would, naming the object
        // and the field: the last good state keeps running.
        if let Err(e) = super::policy_compiler::validate(&state) {
            return Err(ViewError {
                object: format!("NetworkPolicy/{}", e.name),
                field: e
                    .errors
                    .first()
                    .map(|f| f.field.clone())
                    .unwrap_or_default(),
                message: e.to_string(),
            });
        }
        let services = services::compile(&objects.services, &objects.endpoint_slices, &nodes);
        Ok(ClusterView {
            local: me,
            nodes,
            pod_labels,
            namespaces: objects.namespaces.len(),
            state,
            services,
            service_objects: objects.services.clone(),
            endpoint_slices: objects.endpoint_slices.clone(),
        })
    }

    /// The labels of `pod`, if the cluster state lists it.
    pub fn labels(&self, pod: &PodRef) -> Option<&BTreeMap<String, String>> {
        self.pod_labels.get(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn objects(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.extend(manifests::parse(yaml, Path::new("t.yaml")).unwrap());
        m
    }

    const TWO_NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: 192.168.50.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.244.2.0/24]}
status: {addresses: [{type: InternalIP, address: 192.168.50.12}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
";

    #[test]
    fn builds_the_local_node_and_peers() {
        let v = ClusterView::build(&objects(TWO_NODES), "n1").unwrap();
        assert_eq!(v.local.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(v.local.internal_ip, Some(Ipv4Addr::new(192, 168, 50, 11)));
        assert_eq!(v.nodes.len(), 2);
        assert_eq!(v.nodes[1].pod_cidr, Some("10.244.2.0/24".parse().unwrap()));
        let web = PodRef {
            namespace: "prod".into(),
            name: "web".into(),
        };
        assert_eq!(v.labels(&web).unwrap()["app"], "web");
    }

    #[test]
    fn an_invalid_network_policy_rejects_the_view() {
        let bad = format!(
            "{TWO_NODES}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: 81, endPort: 80}}]}}]\n"
        );
        let e = ClusterView::build(&objects(&bad), "n1").unwrap_err();
        assert_eq!(e.object, "NetworkPolicy/prod/p");
        assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
        let good = bad.replace("endPort: 80", "endPort: 90");
        let v = ClusterView::build(&objects(&good), "n1").unwrap();
        assert_eq!(v.state.policies.len(), 1);
    }

    #[test]
    fn errors_name_object_and_field() {
        let e = ClusterView::build(&objects(TWO_NODES), "n3").unwrap_err();
        assert_eq!(e.object, "Node/n3");
        let bad = TWO_NODES.replace("10.244.2.0/24", "10.244.2.0/33");
        let e = ClusterView::build(&objects(&bad), "n1").unwrap_err();
        assert_eq!(
            (e.object.as_str(), e.field.as_str()),
            ("Node/n2", "spec.podCIDRs[0]")
        );
        let overlap = TWO_NODES.replace("10.244.2.0/24", "10.244.1.128/25");
        let e = ClusterView::build(&objects(&overlap), "n1").unwrap_err();
        assert!(e.message.contains("overlaps"), "{e}");
        let no_cidr = TWO_NODES.replace("spec: {podCIDR: 10.244.1.0/24}", "spec: {}");
        let e = ClusterView::build(&objects(&no_cidr), "n1").unwrap_err();
        assert_eq!(e.field, "spec.podCIDR");
        let bad_ip = TWO_NODES.replace("192.168.50.12", "not-an-ip");
        let e = ClusterView::build(&objects(&bad_ip), "n1").unwrap_err();
        assert_eq!(e.field, "status.addresses[0].address");
        assert!(e
            .to_string()
            .contains("Node/n2: status.addresses[0].address: invalid"));
    }

    #[test]
    fn reads_flannel_vtep_mac_annotation() {
        let with = |data: &str| {
            TWO_NODES.replace(
                "metadata: {name: n2}",
                &format!(
                    "metadata: {{name: n2, annotations: {{{FLANNEL_BACKEND_DATA}: '{data}'}}}}"
                ),
            )
        };
        let v = ClusterView::build(
            &objects(&with(r#"{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:0f"}"#)),
            "n1",
        )
        .unwrap();
        assert_eq!(v.nodes[1].vtep_mac, Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0f]));
        assert_eq!(v.nodes[0].vtep_mac, None);
        for bad in [r#"{"VNI":1}"#, r#"{"VtepMAC":"02:aa:bb"}"#, "nope"] {
            let e = ClusterView::build(&objects(&with(bad)), "n1").unwrap_err();
            assert_eq!(e.object, "Node/n2");
            assert!(e.field.contains(FLANNEL_BACKEND_DATA), "{e}");
        }
    }
}

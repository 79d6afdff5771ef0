//! The cluster state the agent compiles: namespaces with their labels, pods with
//! labels, addresses and named ports, and the NetworkPolicy objects.
//!
//! Design note: the typed Kubernetes objects carry far more than policy needs, and
//! some of it in forms that need defaulting (a container port's protocol, a
//! namespace's automatic `kubernetes.io/metadata.name` label). This module extracts
//! exactly the policy-relevant facts once, validated and defaulted as the API server
//! would, so the compiler never looks at raw objects except the policies themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podwire_core::flow::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use podwire_core::policy::PortProtocol;

use super::manifests::Manifests;
use super::selectors::{FieldError, Labels};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A port protocol of the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The API spellings.
    pub const NAMES: [&'static str; 3] = ["SCTP", "TCP", "UDP"];

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive, as the API is).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        }
    }

    /// The core's port protocol.
    pub fn port_protocol(self) -> PortProtocol {
        match self {
            Protocol::Tcp => PortProtocol::Tcp,
            Protocol::Udp => PortProtocol::Udp,
            Protocol::Sctp => PortProtocol::Sctp,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// The policy-relevant facts of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Addresses (`status.podIPs`, else `status.podIP`); empty while not scheduled.
    pub ips: Vec<IpAddr>,
    /// Named container ports, sorted.
    pub named_ports: Vec<NamedPort>,
    /// A host-network pod shares its node's address; NetworkPolicy does not apply.
    pub host_network: bool,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port that `name` (of `protocol`) resolves to on this pod.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        resolve_named_port(&self.named_ports, name, protocol)
    }
}

/// The port `name` of `protocol` among `ports`.
pub fn resolve_named_port(ports: &[NamedPort], name: &str, protocol: Protocol) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.name == name && p.protocol == protocol)
        .map(|p| p.port)
}

/// A problem with the cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Two objects of a kind with the same namespace and name.
    #[error("duplicate {kind} {name}")]
    Duplicate {
        /// The kind.
        kind: &'static str,
        /// `ns/name` or `name`.
        name: String,
    },
    /// An invalid field.
    #[error("{kind} {name}: {error}")]
    Invalid {
        /// The kind.
        kind: &'static str,
        /// `ns/name` or `name`.
        name: String,
        /// The field and the problem.
        error: FieldError,
    },
}

/// Namespaces, pods and policies, extracted from manifests.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Namespace name → labels (with `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, Labels>,
    /// Pods, in manifest order.
    pub pods: Vec<PodInfo>,
    /// NetworkPolicies, in manifest order.
    pub policies: Vec<NetworkPolicy>,
}

fn pod_info(pod: &Pod) -> Result<PodInfo, ClusterError> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let invalid = |error: FieldError| ClusterError::Invalid {
        kind: "Pod",
        name: format!("{namespace}/{name}"),
        error,
    };
    if name.is_empty() {
        return Err(invalid(FieldError::required(
            "metadata.name",
            "name is required",
        )));
    }
    let mut ips = Vec::new();
    let status = pod.status.as_ref();
    let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|s| !s.is_empty())
            .map(|ip| vec![("status.podIP".to_string(), ip)])
            .unwrap_or_default(),
    };
    for (field, ip) in listed {
        let ip: IpAddr = ip.parse().map_err(|_| {
            invalid(FieldError::invalid(
                field,
                format!("\"{ip}\""),
                "must be a valid IP address",
            ))
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let mut named_ports = Vec::new();
    let spec = pod.spec.as_ref();
    for (ci, c) in spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            if !(1..=65535).contains(&p.container_port) {
                return Err(invalid(FieldError::invalid(
                    format!("{field}.containerPort"),
                    p.container_port,
                    "must be between 1 and 65535, inclusive",
                )));
            }
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s).ok_or_else(|| {
                    invalid(FieldError::unsupported(
                        format!("{field}.protocol"),
                        s,
                        &Protocol::NAMES,
                    ))
                })?,
            };
            if let Some(name) = p.name.as_ref().filter(|n| !n.is_empty()) {
                named_ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port: p.container_port as u16,
                });
            }
        }
    }
    named_ports.sort();
    named_ports.dedup();
    Ok(PodInfo {
        labels: meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        namespace,
        name,
        ips,
        named_ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    })
}

impl ClusterState {
    /// Extracts the cluster state from loaded manifests. Pods in a namespace without a
    /// Namespace object get an implicit one (labelled only with its name).
    pub fn from_manifests(m: &Manifests) -> Result<ClusterState, ClusterError> {
        let mut state = ClusterState::default();
        for ns in &m.namespaces {
            let name = ns.metadata.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(ClusterError::Invalid {
                    kind: "Namespace",
                    name: "<unnamed>".into(),
                    error: FieldError::required("metadata.name", "name is required"),
                });
            }
            let mut labels: Labels = ns
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
            if state.namespaces.insert(name.clone(), labels).is_some() {
                return Err(ClusterError::Duplicate {
                    kind: "Namespace",
                    name,
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for pod in &m.pods {
            let info = pod_info(pod)?;
            if !seen.insert(info.key()) {
                return Err(ClusterError::Duplicate {
                    kind: "Pod",
                    name: info.key(),
                });
            }
            state
                .namespaces
                .entry(info.namespace.clone())
                .or_insert_with(|| {
                    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), info.namespace.clone())])
                });
            state.pods.push(info);
        }
        state.policies = m.network_policies.clone();
        Ok(state)
    }

    /// The index of pod `namespace/name`.
    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
    }

    /// The index of the (non-host-network) pod with address `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.pods
            .iter()
            .position(|p| !p.host_network && p.ips.contains(&ip))
    }
}

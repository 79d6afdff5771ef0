//! The etcd datastore's key layout and values.
//!
//! Design note: everything podwire keeps in etcd lives under one prefix (by default
//! `/podwire/v1`), so one range read lists it, one watch follows it, and two clusters
//! can share an etcd by prefix. The layout:
//!
//! - `<prefix>/config`: the network config (cluster CIDR, node block size, backend),
//!   JSON, written once by `podwire etcd init`;
//! - `<prefix>/subnets/<a.b.c.d>-<len>`: one subnet lease per node, JSON naming the
//!   node; created with a create-if-absent transaction and attached to a long etcd
//!   lease that the node renews, so a subnet has at most one holder;
//! - `<prefix>/resources/<Kind>/<namespace>/<name>` (cluster-scoped kinds:
//!   `<prefix>/resources/<Kind>/<name>`): the objects, as Kubernetes JSON, so the
//!   compile step sees the same objects whatever the datastore. A node's own `Node`
//!   object is attached to a short lease: it is the node's liveness;
//! - `<prefix>/synced/<node>`: the canary a node writes after listing; seeing it come
//!   back through its watch proves the watch runs and has caught up with the list.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::control::manifests::{self, Object};
use crate::source::{Kind, ObjectKey};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/podwire/v1";

/// The keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    prefix: String,
}

/// Where a key under the prefix belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The network config.
    Config,
    /// A subnet lease.
    Subnet(Ipv4Net),
    /// An object.
    Resource(ObjectKey),
    /// A node's synced canary.
    Canary(String),
    /// Something podwire does not use (or a malformed key): ignored.
    Unknown,
}

impl Schema {
    /// The layout under `prefix` (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Schema {
        Schema {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix every key starts with, ending in `/`.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The network config's key.
    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The prefix of the subnet leases.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The key of one subnet lease.
    pub fn subnet(&self, net: Ipv4Net) -> String {
        format!("{}{}-{}", self.subnets(), net.network(), net.prefix_len())
    }

    /// The prefix of every object.
    pub fn resources(&self) -> String {
        format!("{}/resources/", self.prefix)
    }

    /// The prefix of the objects of `kind`.
    pub fn kind_prefix(&self, kind: Kind) -> String {
        format!("{}{kind}/", self.resources())
    }

    /// The key of one object.
    pub fn resource(&self, key: &ObjectKey) -> String {
        if key.kind.namespaced() {
            format!(
                "{}{}/{}",
                self.kind_prefix(key.kind),
                key.namespace,
                key.name
            )
        } else {
            format!("{}{}", self.kind_prefix(key.kind), key.name)
        }
    }

    /// The key of node `node`'s synced canary.
    pub fn canary(&self, node: &str) -> String {
        format!("{}/synced/{node}", self.prefix)
    }

    /// What `key` is.
    pub fn classify(&self, key: &[u8]) -> KeyKind {
        let Ok(key) = std::str::from_utf8(key) else {
            return KeyKind::Unknown;
        };
        let Some(rest) = key.strip_prefix(&self.root()) else {
            return KeyKind::Unknown;
        };
        if rest == "config" {
            return KeyKind::Config;
        }
        if let Some(s) = rest.strip_prefix("subnets/") {
            return s
                .split_once('-')
                .and_then(|(ip, len)| Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok())
                .map_or(KeyKind::Unknown, KeyKind::Subnet);
        }
        if let Some(node) = rest.strip_prefix("synced/") {
            return KeyKind::Canary(node.to_string());
        }
        let Some(r) = rest.strip_prefix("resources/") else {
            return KeyKind::Unknown;
        };
        let parts: Vec<&str> = r.split('/').collect();
        let Some(kind) = Kind::ALL.iter().find(|k| k.as_str() == parts[0]) else {
            return KeyKind::Unknown;
        };
        match (kind.namespaced(), &parts[1..]) {
            (true, [ns, name]) if !ns.is_empty() && !name.is_empty() => {
                KeyKind::Resource(ObjectKey {
                    kind: *kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            (false, [name]) if !name.is_empty() => KeyKind::Resource(ObjectKey {
                kind: *kind,
                namespace: String::new(),
                name: name.to_string(),
            }),
            _ => KeyKind::Unknown,
        }
    }
}

/// The backends a node can use to reach the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// VXLAN (flannel's wire format).
    #[default]
    Vxlan,
}

/// The network config at `<prefix>/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    /// The cluster's pod network.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of each node's block (`24`: a /24 per node).
    pub node_block_prefix: u8,
    /// How nodes reach each other.
    #[serde(default)]
    pub backend: Backend,
}

impl NetworkConfig {
    /// Checks that the blocks fit the cluster CIDR and hold pods.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_cidr.trunc() != self.cluster_cidr {
            return Err(format!(
                "clusterCIDR {} has host bits set",
                self.cluster_cidr
            ));
        }
        let len = self.node_block_prefix;
        if len < self.cluster_cidr.prefix_len() || len > 30 {
            return Err(format!(
                "nodeBlockPrefix {len} must lie between the clusterCIDR's /{} and /30",
                self.cluster_cidr.prefix_len()
            ));
        }
        Ok(())
    }

    /// Parses and validates the stored JSON.
    pub fn parse(bytes: &[u8]) -> Result<NetworkConfig, String> {
        let c: NetworkConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Every node block, in address order, but the first (it holds the network's own
    /// address, as flannel leaves it out).
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.cluster_cidr
            .subnets(self.node_block_prefix)
            .into_iter()
            .flatten()
            .skip(1)
    }
}

/// The value of a subnet lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetHolder {
    /// The node holding the subnet.
    pub node: String,
    /// Its InternalIP when it took the lease.
    pub node_ip: Ipv4Addr,
}

impl fmt::Display for SubnetHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node/{} ({})", self.node, self.node_ip)
    }
}

/// Why an object stored in etcd was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The value does not parse as the Kubernetes object it should be.
    #[error("{0}")]
    Invalid(String),
    /// The object names another key than the one it is stored under.
    #[error("holds {found}, not the object of its key")]
    WrongKey {
        /// The object's own key.
        found: ObjectKey,
    },
}

/// Parses the Kubernetes JSON stored under `key` (named `etcd key` in errors).
pub fn decode_object(key: &ObjectKey, bytes: &[u8], etcd_key: &str) -> Result<Object, ValueError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ValueError::Invalid(e.to_string()))?;
    let path = std::path::PathBuf::from(format!("{etcd_key}.json"));
    let mut objects =
        manifests::parse(text, &path).map_err(|e| ValueError::Invalid(e.to_string()))?;
    if objects.len() != 1 {
        return Err(ValueError::Invalid(format!(
            "holds {} objects, not one",
            objects.len()
        )));
    }
    let object = objects.remove(0);
    match ObjectKey::of(&object) {
        Some(found) if found == *key => Ok(object),
        Some(found) => Err(ValueError::WrongKey { found }),
        None => Err(ValueError::Invalid(format!(
            "not a {} (kind {:?})",
            key.kind,
            match &object {
                Object::Other { kind } => kind.as_str(),
                _ => "",
            }
        ))),
    }
}

/// The Kubernetes JSON of a typed object (`None` for kinds podwire does not store).
pub fn encode_object(object: &Object) -> Option<Vec<u8>> {
    let v = match object {
        Object::Namespace(o) => serde_json::to_vec(o),
        Object::Node(o) => serde_json::to_vec(o),
        Object::Pod(o) => serde_json::to_vec(o),
        Object::Service(o) => serde_json::to_vec(o),
        Object::EndpointSlice(o) => serde_json::to_vec(o),
        Object::NetworkPolicy(o) => serde_json::to_vec(o),
        Object::Other { .. } => return None,
    };
    v.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn keys_round_trip_through_classify() {
        let s = Schema::new("/podwire/v1/");
        for k in [key(Kind::Pod, "default", "web"), key(Kind::Node, "", "n1")] {
            assert_eq!(
                s.classify(s.resource(&k).as_bytes()),
                KeyKind::Resource(k.clone())
            );
        }
        assert_eq!(
            s.resource(&key(Kind::Node, "", "n1")),
            "/podwire/v1/resources/Node/n1"
        );
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(s.subnet(net), "/podwire/v1/subnets/10.244.3.0-24");
        assert_eq!(s.classify(s.subnet(net).as_bytes()), KeyKind::Subnet(net));
        assert_eq!(s.classify(s.config().as_bytes()), KeyKind::Config);
        assert_eq!(
            s.classify(s.canary("n1").as_bytes()),
            KeyKind::Canary("n1".into())
        );
        for bad in [
            "/podwire/v1/resources/Pod/only-name",
            "/podwire/v1/resources/Node/ns/name",
            "/podwire/v1/resources/ConfigMap/a/b",
            "/podwire/v1/subnets/10.244.3.0",
            "/other/config",
        ] {
            assert_eq!(s.classify(bad.as_bytes()), KeyKind::Unknown, "{bad}");
        }
    }

    #[test]
    fn an_object_under_another_key_or_malformed_is_refused() {
        let k = key(Kind::Pod, "default", "web");
        let pod =
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"namespace":"default","name":"web"}}"#;
        assert!(decode_object(&k, pod, "k").is_ok());
        let other = key(Kind::Pod, "default", "db");
        assert!(matches!(
            decode_object(&other, pod, "k"),
            Err(ValueError::WrongKey { .. })
        ));
        let e = decode_object(&k, br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"},"spec":{"containers":7}}"#, "/p/resources/Pod/default/web").unwrap_err();
        assert!(e.to_string().contains("spec.containers"), "{e}");
        assert!(
            e.to_string().contains("/p/resources/Pod/default/web"),
            "{e}"
        );
    }

    #[test]
    fn config_blocks_skip_the_network_address_and_bad_configs_are_refused() {
        let c = NetworkConfig::parse(br#"{"clusterCIDR":"10.244.0.0/22","nodeBlockPrefix":24}"#)
            .unwrap();
        let blocks: Vec<String> = c.blocks().map(|b| b.to_string()).collect();
        assert_eq!(blocks, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);
        assert!(
            NetworkConfig::parse(br#"{"clusterCIDR":"10.244.0.0/16","nodeBlockPrefix":8}"#)
                .unwrap_err()
                .contains("nodeBlockPrefix 8")
        );
        assert!(NetworkConfig::parse(
            br#"{"clusterCIDR":"10.244.0.0/16","nodeBlockPrefix":24,"x":1}"#
        )
        .unwrap_err()
        .contains("unknown field"));
    }
}

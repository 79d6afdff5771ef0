//! What the agent publishes on its own Node: its VXLAN endpoint as annotations and
//! the `NetworkUnavailable` condition set to False once the node is wired.
//!
//! Design note: publication is level-based. The source task remembers the last Node
//! it saw for this node and what the agent said about itself; whenever the two
//! disagree (first wiring, a Node re-created by its kubelet, an annotation removed by
//! hand) it sends one strategic-merge patch to `nodes/status` — the only write the
//! agent's ClusterRole allows, as for flannel, whose annotations the agent also
//! writes with `--flannel-interop`. A failed patch is retried with a growing delay
//! (a node that cannot publish still forwards); a successful one is taken as seen,
//! so the watch echo of the patch does not cause a second one.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::Event;
use serde_json::json;
use tokio::time::Instant;

use super::Settings;
use crate::control::manifests::Object;
use crate::control::node_view::FLANNEL_BACKEND_DATA;
use crate::source::{Kind, WiredNode};

/// The `reason` of the `NetworkUnavailable=False` condition the agent sets.
pub const NETWORK_UNAVAILABLE_REASON: &str = "PodwireIsUp";

/// The annotations that describe a wired node: podwire's own keys, plus flannel's
/// (`backend-type`, `backend-data`, `public-ip`, `kube-subnet-manager`) when
/// `flannel_interop` is on.
pub fn annotations(wired: &WiredNode, flannel_interop: bool) -> BTreeMap<String, String> {
    let m = wired.vtep_mac;
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    let ip = wired.public_ip.to_string();
    let mut out = BTreeMap::from([
        ("podwire.io/backend-type".to_string(), "vxlan".to_string()),
        (
            "podwire.io/backend-data".to_string(),
            json!({"VNI": wired.vni, "Port": wired.vxlan_port, "VtepMAC": mac}).to_string(),
        ),
        ("podwire.io/public-ip".to_string(), ip.clone()),
    ]);
    if flannel_interop {
        out.extend([
            (
                "flannel.alpha.coreos.com/backend-type".to_string(),
                "vxlan".to_string(),
            ),
            (
                FLANNEL_BACKEND_DATA.to_string(),
                json!({"VNI": wired.vni, "VtepMAC": mac}).to_string(),
            ),
            ("flannel.alpha.coreos.com/public-ip".to_string(), ip),
            (
                "flannel.alpha.coreos.com/kube-subnet-manager".to_string(),
                "true".to_string(),
            ),
        ]);
    }
    out
}

/// What the agent last saw of its Node.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    annotations: BTreeMap<String, String>,
    network_available: bool,
}

impl Seen {
    fn of(node: &Node) -> Seen {
        let network_available = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False");
        Seen {
            annotations: node.metadata.annotations.clone().unwrap_or_default(),
            network_available,
        }
    }
}

/// The `nodes/status` patch that brings `seen` to what `wanted` describes, or
/// `None` when it is there already. `now` is RFC 3339.
fn patch_for(
    seen: &Seen,
    wanted: &BTreeMap<String, String>,
    now: &str,
) -> Option<serde_json::Value> {
    let missing: BTreeMap<&String, &String> = wanted
        .iter()
        .filter(|(k, v)| seen.annotations.get(*k) != Some(v))
        .collect();
    if missing.is_empty() && seen.network_available {
        return None;
    }
    let mut patch = json!({"metadata": {"annotations": missing}});
    if !seen.network_available {
        patch["status"] = json!({"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": NETWORK_UNAVAILABLE_REASON,
            "message": "podwire agent wired this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]});
    }
    Some(patch)
}

/// Publishes the agent on its Node, from the source task.
pub struct Publisher {
    node: String,
    flannel_interop: bool,
    wanted: Option<BTreeMap<String, String>>,
    seen: Option<Seen>,
    retry_at: Option<Instant>,
    delay: Duration,
}

impl Publisher {
    const FIRST_DELAY: Duration = Duration::from_secs(1);
    const MAX_DELAY: Duration = Duration::from_secs(30);

    /// A publisher for the node of `settings`, with nothing to publish yet.
    pub fn new(settings: &Settings) -> Publisher {
        Publisher {
            node: settings.node.clone(),
            flannel_interop: settings.flannel_interop,
            wanted: None,
            seen: None,
            retry_at: None,
            delay: Self::FIRST_DELAY,
        }
    }

    /// What the agent says about itself (`None`: not wired).
    pub fn set_wired(&mut self, wired: Option<WiredNode>) {
        self.wanted = wired.map(|w| annotations(&w, self.flannel_interop));
    }

    /// Notes the agent's own Node from a watcher event of `kind`.
    pub fn observe(&mut self, kind: Kind, event: &Event<Object>) {
        if kind != Kind::Node {
            return;
        }
        let own = |o: &Object| match o {
            Object::Node(n) if n.metadata.name.as_deref() == Some(self.node.as_str()) => {
                Some(Seen::of(n))
            }
            _ => None,
        };
        match event {
            // A relist that does not name the node means it is gone.
            Event::Init => self.seen = None,
            Event::Apply(o) | Event::InitApply(o) => {
                if let Some(seen) = own(o) {
                    self.seen = Some(seen);
                }
            }
            Event::Delete(o) => {
                if own(o).is_some() {
                    self.seen = None;
                }
            }
            Event::InitDone => {}
        }
    }

    /// Sends the patch the Node needs, if any and if no retry delay is running.
    pub async fn publish_if_needed(&mut self, nodes: &Api<Node>, timeout: Duration) {
        let (Some(wanted), Some(seen)) = (&self.wanted, &self.seen) else {
            return;
        };
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let now = serde_json::to_value(k8s_openapi::jiff::Timestamp::now())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(patch) = patch_for(seen, wanted, &now) else {
            return;
        };
        let params = PatchParams::default();
        let patch = Patch::Strategic(&patch);
        let sent = nodes.patch_status(&self.node, &params, &patch);
        let result = match tokio::time::timeout(timeout, sent).await {
            Ok(r) => r.map(drop).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match result {
            Ok(()) => {
                tracing::info!(node = %self.node, "published the node's VXLAN endpoint; NetworkUnavailable=False");
                let mut done = seen.clone();
                done.annotations.extend(wanted.clone());
                done.network_available = true;
                self.seen = Some(done);
                self.retry_at = None;
                self.delay = Self::FIRST_DELAY;
            }
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, retry_in = ?self.delay, "could not publish the node on its Node status");
                self.retry_at = Some(Instant::now() + self.delay);
                self.delay = (self.delay * 2).min(Self::MAX_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn wired() -> WiredNode {
        WiredNode {
            public_ip: Ipv4Addr::new(172, 30, 0, 11),
            vtep_mac: [0x0e, 0x58, 172, 30, 0, 11],
            vni: 1,
            vxlan_port: 8472,
        }
    }

    #[test]
    fn annotations_name_the_vtep_and_flannel_keys_only_with_interop() {
        let a = annotations(&wired(), false);
        assert_eq!(a["podwire.io/backend-type"], "vxlan");
        assert_eq!(a["podwire.io/public-ip"], "172.30.0.11");
        let data: serde_json::Value = serde_json::from_str(&a["podwire.io/backend-data"]).unwrap();
        assert_eq!(
            data,
            json!({"VNI": 1, "Port": 8472, "VtepMAC": "0e:58:ac:1e:00:0b"})
        );
        assert!(!a.keys().any(|k| k.starts_with("flannel.")));
        let f = annotations(&wired(), true);
        assert_eq!(
            f[FLANNEL_BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"0e:58:ac:1e:00:0b"}"#
        );
        assert_eq!(f["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
    }

    #[test]
    fn the_patch_carries_only_what_is_missing() {
        let wanted = annotations(&wired(), false);
        let fresh = Seen::default();
        let p = patch_for(&fresh, &wanted, "2026-12-04T20:00:00Z").unwrap();
        assert_eq!(p["metadata"]["annotations"].as_object().unwrap().len(), 3);
        let c = &p["status"]["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some("NetworkUnavailable"), Some("False"))
        );
        let done = Seen {
            annotations: wanted.clone(),
            network_available: true,
        };
        assert_eq!(patch_for(&done, &wanted, "t"), None);
        let mut stripped = done.clone();
        stripped.annotations.remove("podwire.io/public-ip");
        let p = patch_for(&stripped, &wanted, "t").unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {"podwire.io/public-ip": "172.30.0.11"}}}),
            "the condition is not touched (its transition time stays)"
        );
    }

    #[test]
    fn the_own_node_is_followed_through_relists_and_deletes() {
        let settings = Settings {
            kubeconfig: None,
            node: "n1".into(),
            flannel_interop: false,
        };
        let mut p = Publisher::new(&settings);
        let node = |name: &str| {
            let mut n = Node::default();
            n.metadata.name = Some(name.into());
            Object::Node(Box::new(n))
        };
        p.observe(Kind::Node, &Event::InitApply(node("n2")));
        assert!(p.seen.is_none());
        p.observe(Kind::Node, &Event::InitApply(node("n1")));
        assert!(p.seen.is_some());
        p.observe(Kind::Node, &Event::Delete(node("n2")));
        assert!(p.seen.is_some());
        p.observe(Kind::Node, &Event::Delete(node("n1")));
        assert!(p.seen.is_none());
        p.observe(Kind::Node, &Event::Apply(node("n1")));
        assert!(p.seen.is_some());
        p.observe(Kind::Node, &Event::Init);
        assert!(p.seen.is_none());
    }
}

//! The agent's local API: what `podwire-cni` and the `podwire` CLI send over the
//! agent's unix socket, and what comes back.
//!
//! Design note: one request per connection, as one JSON document; the client shuts
//! down its write half and reads one JSON response to EOF. That keeps the protocol
//! trivially debuggable (`socat` and `jq` speak it), needs no framing code, and lets
//! the short-lived CNI plugin use a blocking std socket with a timeout instead of an
//! async runtime. The socket is root-only (mode 0600): whoever can write to it can
//! attach and detach pods.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cni::env::Command;
use crate::cni::spec::{CniError, CniResult, GcAttachment};

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A CNI command forwarded by the plugin.
    Cni(CniRequest),
    /// Subsystem health (`podwire status`).
    Status,
    /// Attached pods (`podwire pods`).
    Pods,
    /// The routing table the agent programs (`podwire routes`).
    Routes,
    /// Pod CIDR usage (`podwire ipam`).
    Ipam,
    /// Recent flow events of the datapath (`podwire flows`, `podwire drops`).
    Flows {
        /// Only dropped flows.
        #[serde(default)]
        drops_only: bool,
    },
    /// The node's Prometheus metrics text (`podwire metrics`).
    Metrics,
}

/// A pod's Kubernetes identity, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// A CNI command with the parts of the environment and configuration the agent needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniRequest {
    /// The command (ADD, DEL, CHECK, GC, STATUS).
    pub command: Command,
    /// The network name from the configuration.
    pub network: String,
    /// `CNI_CONTAINERID`.
    #[serde(default)]
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: Option<String>,
    /// The pod, from `K8S_POD_NAMESPACE` / `K8S_POD_NAME`.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// CHECK: the addresses of the previous result.
    #[serde(default)]
    pub prev_addresses: Vec<IpNet>,
    /// GC: the attachments to keep.
    #[serde(default)]
    pub valid_attachments: Vec<GcAttachment>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Response {
    /// A CNI command succeeded (ADD carries a result).
    Cni(Option<CniResult>),
    /// A CNI command failed.
    CniError(CniError),
    /// Subsystem health.
    Status(Vec<StatusLine>),
    /// Attached pods.
    Pods(Vec<PodRow>),
    /// Routes.
    Routes(Vec<RouteRow>),
    /// IPAM usage.
    Ipam(IpamReport),
    /// Recent flow events.
    Flows(FlowReport),
    /// Prometheus metrics text.
    Metrics(String),
    /// The request could not be served.
    Error(String),
}

/// One subsystem's state.
/// Recent flow events of the datapath, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowReport {
    /// The events kept (a bounded log).
    pub flows: Vec<FlowRow>,
    /// Events the datapath could not hand over (its ring was full).
    pub lost: u64,
}

/// One verdict of the datapath on a new flow, or a drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// Wall-clock time (RFC 3339, UTC) when the agent received the event.
    pub time: String,
    /// Source address.
    pub src: IpAddr,
    /// Source port (ICMP: identifier).
    pub src_port: u16,
    /// `namespace/name` of the source pod, if known.
    pub src_pod: Option<String>,
    /// Destination address (as sent: a ClusterIP stays a ClusterIP).
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// `namespace/name` of the destination pod (after service translation), if known.
    pub dst_pod: Option<String>,
    /// `TCP`, `UDP`, `ICMP`, `SCTP` or the protocol number.
    pub protocol: String,
    /// `delivered`, `encapsulated`, `rejected` or `dropped`.
    pub outcome: String,
    /// The drop reason (`policy_denied_ingress`...), for drops.
    pub reason: Option<String>,
    /// For policy drops, the direction that denied (`ingress` / `egress`).
    pub direction: Option<String>,
    /// For policy drops, `namespace/name` of the NetworkPolicy that isolated the pod;
    /// for allowed flows, the policy whose rule allowed it (if the pod is isolated).
    pub policy: Option<String>,
    /// The backend, when a service translated the flow (`IP:port`).
    pub translated: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLine {
    /// The subsystem (`Cluster`, `IPAM`, `Datapath`, ...).
    pub subsystem: String,
    /// `Ok`, `Warning`, `Error` or `Disabled`.
    pub state: String,
    /// A one-line explanation.
    pub detail: String,
}

/// One attached pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRow {
    /// Kubernetes namespace (empty if unknown).
    pub namespace: String,
    /// Kubernetes name (empty if unknown).
    pub name: String,
    /// The container id.
    pub container_id: String,
    /// The interface inside the pod.
    pub ifname: String,
    /// The pod IP.
    pub ip: IpAddr,
    /// The interface's MAC.
    pub mac: String,
    /// The datapath port id.
    pub port: u16,
    /// The pod's netns path.
    pub netns: String,
    /// `attached` (TAP queues open), `detached` (netns gone or device missing).
    pub state: String,
    /// The pod's labels from the cluster state (empty until it appears there).
    pub labels: BTreeMap<String, String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// The destination prefix.
    pub destination: IpNet,
    /// `local` (this node's pods), `vxlan` (another node) or `host`.
    pub kind: String,
    /// The node the prefix belongs to.
    pub node: String,
    /// The next hop's underlay address, for remote nodes.
    pub via: Option<IpAddr>,
}

/// Pod CIDR usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamReport {
    /// The node's pod CIDR.
    pub cidr: Option<IpNet>,
    /// The gateway address.
    pub gateway: Option<IpAddr>,
    /// Assignable addresses.
    pub capacity: u32,
    /// Addresses in use.
    pub allocated: u32,
    /// Each allocation.
    pub allocations: Vec<IpamAllocation>,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamAllocation {
    /// The address.
    pub ip: IpAddr,
    /// The container id.
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
    /// `namespace/name`, if known.
    pub pod: String,
}

/// Why a request did not reach the agent or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not exist or nobody listens (the agent is not running).
    #[error("agent not reachable at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("agent request failed: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not a response document.
    #[error("agent sent an invalid response: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends one request and waits (at most `timeout` per read/write) for the response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = serde_json::to_vec(request)?;
    stream.write_all(&body)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(serde_json::from_slice(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_roundtrip_through_json() {
        let r = Request::Cni(CniRequest {
            command: Command::Add,
            network: "podwire".into(),
            container_id: Some("c1".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web".into(),
            }),
            prev_addresses: vec![],
            valid_attachments: vec![],
        });
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""op":"cni""#) && s.contains(r#""command":"ADD""#));
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let s = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(s, r#"{"op":"status"}"#);
        let resp = Response::Cni(None);
        let s = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), resp);
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let e = call(
            Path::new("/nonexistent/podwire.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }));
    }
}

//! Cluster-state sources: where the agent's Kubernetes objects come from.
//!
//! Design note: the agent runs on one of three datastores (`--datastore`): a
//! manifests file or folder ([`file`]), the Kubernetes API, or etcd. Each of them is
//! a task that feeds one channel with the same events, in the shape Kubernetes
//! reflectors use: a (re)listing of a kind that replaces what was known of it, then
//! incremental applies and deletes, a synced mark once every kind has been listed,
//! and availability changes. The agent keeps the objects in one [`ObjectStore`],
//! compiles the store into its node view after a short debounce (so an event storm
//! costs one compile, not one per event), and never tears anything down when a
//! source goes away: it keeps the last good state and reports how stale it is. A
//! source therefore never needs to know what the agent derives from the objects, and
//! the compile step never needs to know where they came from.

pub mod etcd;
pub mod file;
pub mod kubernetes;
pub mod store;

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

pub use store::{ObjectKey, ObjectStore};

use crate::control::manifests::Object;

/// The kinds of object the agent follows, in the order they are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Node.
    Node,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    /// The object's `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a source tells the agent.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// Everything of `kind` the source holds now; objects of that kind not listed are
    /// gone (an initial list, or a relist after a lost watch).
    Listed {
        /// The kind listed.
        kind: Kind,
        /// Its objects.
        objects: Vec<Object>,
    },
    /// An object was created or changed.
    Applied(Object),
    /// An object was deleted.
    Deleted(ObjectKey),
    /// Every kind has been listed at least once: the state is complete.
    Synced,
    /// The source cannot be read (or what it holds was rejected); the agent keeps its
    /// last good state. The text says why.
    Unavailable(String),
    /// The source can be read again after [`SourceEvent::Unavailable`].
    Available,
}

/// Which datastore the agent runs on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    /// A manifests file or folder, watched for changes.
    #[default]
    File,
    /// An etcd cluster (`--etcd-endpoints`), shared by every node.
    Etcd,
    /// The Kubernetes API server (`--kubeconfig`, or the in-cluster configuration).
    Kubernetes,
}

impl fmt::Display for Datastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Datastore::File => "file",
            Datastore::Etcd => "etcd",
            Datastore::Kubernetes => "kubernetes",
        })
    }
}

/// The sending half a source task writes its events to.
pub type EventSender = tokio::sync::mpsc::Sender<SourceEvent>;

/// How many events may wait for the agent before a source blocks on sending.
pub const EVENT_QUEUE: usize = 4096;

/// How long the agent waits after an event for more before it compiles.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the agent tells its datastore about its own node once the node is wired
/// (dataplane running, VXLAN socket bound), so that a shared datastore can publish
/// it for the other nodes and for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiredNode {
    /// The node's underlay address: where other nodes send its VXLAN traffic.
    pub public_ip: Ipv4Addr,
    /// The inner destination MAC other nodes address this node's VTEP with.
    pub vtep_mac: [u8; 6],
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
}

/// The receiving half a source reads [`WiredNode`] from (`None` until wired).
pub type WiredReceiver = tokio::sync::watch::Receiver<Option<WiredNode>>;

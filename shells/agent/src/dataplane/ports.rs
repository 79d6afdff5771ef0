//! The datapath's local ports as the shell sees them: which TAP queues belong to
//! which `PortId`, with the identity (IP, MAC) the datapath must be told about.
//!
//! Design note: the pod manager registers a port when it has wired a pod and
//! unregisters it on DEL; the dataplane workers (and the core datapath's port table)
//! are fed from this one registry, so there is a single owner of every TAP queue and
//! dropping a [`Port`] closes its queues.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use podwire_core::ids::PortId;

use super::tap::Tap;
use crate::control::ipam::AttachmentKey;

/// The host port's id (`podwire0`).
pub const HOST_PORT: PortId = PortId(0);

/// What a port connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// The node's own stack, through `podwire0`.
    Host,
    /// A pod interface.
    Pod(AttachmentKey),
}

/// One local port.
#[derive(Debug)]
pub struct Port {
    /// The datapath port id.
    pub id: PortId,
    /// Host or pod.
    pub kind: PortKind,
    /// The address behind the port (pod IP; the gateway for the host port).
    pub ip: Ipv4Addr,
    /// The MAC of the interface on the far side.
    pub mac: [u8; 6],
    /// The TAP and its open queues (`None` while detached, e.g. netns gone).
    pub tap: Option<Tap>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Ports {
    ports: BTreeMap<PortId, Port>,
}

impl Ports {
    /// An empty registry.
    pub fn new() -> Ports {
        Ports::default()
    }

    /// Adds or replaces a port, returning the old one.
    pub fn insert(&mut self, port: Port) -> Option<Port> {
        self.ports.insert(port.id, port)
    }

    /// Removes a port (closing its queues when dropped).
    pub fn remove(&mut self, id: PortId) -> Option<Port> {
        self.ports.remove(&id)
    }

    /// A port.
    pub fn get(&self, id: PortId) -> Option<&Port> {
        self.ports.get(&id)
    }

    /// Every port.
    pub fn iter(&self) -> impl Iterator<Item = &Port> {
        self.ports.values()
    }

    /// Whether port `id` has its TAP (queues open).
    pub fn is_attached(&self, id: PortId) -> bool {
        self.ports.get(&id).is_some_and(|p| p.tap.is_some())
    }
}

//! Link, address and route configuration behind the [`Netlink`] trait.
//!
//! Design note: pod wiring is a sequence of small kernel operations (create a TAP,
//! set its MAC and MTU, move it into the pod's netns, rename it, add the address, bring
//! it up, add the default route) whose *order and arguments* are the logic worth
//! testing. The trait names those operations at the level the agent thinks in (a link
//! by name in a namespace, not netlink messages), [`rt::RtNetlink`] implements them
//! with rtnetlink (plus the TUN ioctls, the one link type netlink cannot create), and
//! [`fake::RecordingNetlink`] records every call and keeps a small model of the links
//! so the agent's configuration logic is unit-tested without root.

pub mod fake;
pub mod netns;
pub mod rt;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::dataplane::tap::{Tap, TapOptions};

/// A network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ns {
    /// The node's namespace: the one the agent runs in.
    Node,
    /// A pod's namespace, by path (`CNI_NETNS`).
    Path(PathBuf),
}

impl std::fmt::Display for Ns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ns::Node => write!(f, "node netns"),
            Ns::Path(p) => write!(f, "netns {}", p.display()),
        }
    }
}

/// A link's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The interface index.
    pub index: u32,
    /// The MAC address.
    pub mac: [u8; 6],
    /// The MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
}

/// Changes to a link (each `None` leaves that property alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// A new MAC address.
    pub mac: Option<[u8; 6]>,
    /// A new MTU.
    pub mtu: Option<u32>,
    /// A new name (the link must be down).
    pub rename: Option<String>,
    /// Bring up (true) or down (false).
    pub up: Option<bool>,
}

/// The identity a TAP gets when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapIdentity {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
}

/// Layer-3 configuration of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSetup {
    /// The address to add (replacing an identical one).
    pub address: IpNet,
    /// The default route's next hop, if a default route is wanted.
    pub default_gateway: Option<IpAddr>,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix (`0.0.0.0/0` for the default route).
    pub destination: IpNet,
    /// The next hop, if any.
    pub gateway: Option<IpAddr>,
    /// The output device.
    pub device: String,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetlinkError {
    /// The link, address or namespace does not exist.
    #[error("{op}: {what} not found")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// What was missing.
        what: String,
    },
    /// Something of that name already exists.
    #[error("{op}: {what} already exists")]
    Exists {
        /// The operation.
        op: &'static str,
        /// What exists.
        what: String,
    },
    /// Any other failure, with the kernel's message.
    #[error("{op} {what}: {message}")]
    Failed {
        /// The operation.
        op: &'static str,
        /// Its target.
        what: String,
        /// The error.
        message: String,
    },
}

/// Result of a netlink operation.
pub type NlResult<T> = Result<T, NetlinkError>;

/// The kernel operations the agent needs.
pub trait Netlink: Send + Sync + 'static {
    /// Creates a persistent TAP `name` directly in `ns` (no move between namespaces:
    /// that costs an RCU grace period), sets its MAC and MTU in the same step, and
    /// opens its queues.
    fn create_tap(
        &self,
        ns: &Ns,
        name: &str,
        identity: TapIdentity,
        options: TapOptions,
    ) -> impl Future<Output = NlResult<Tap>> + Send;

    /// Gives link `name` in `ns` its address, brings it up and, with a gateway, adds
    /// the default route — in one netlink session.
    fn setup_link(
        &self,
        ns: &Ns,
        name: &str,
        setup: &LinkSetup,
    ) -> impl Future<Output = NlResult<()>> + Send;

    /// Opens queues on the existing TAP `name` in `ns` (re-adoption after a restart).
    fn attach_tap(
        &self,
        ns: &Ns,
        name: &str,
        options: TapOptions,
    ) -> impl Future<Output = NlResult<Tap>> + Send;

    /// The state of link `name` in `ns`, or `None` if there is no such link.
    fn link(&self, ns: &Ns, name: &str)
        -> impl Future<Output = NlResult<Option<LinkState>>> + Send;

    /// Applies `change` to link `name` in `ns`.
    fn set_link(
        &self,
        ns: &Ns,
        name: &str,
        change: &LinkChange,
    ) -> impl Future<Output = NlResult<()>> + Send;

    /// Adds `address` to link `name` in `ns` (replacing an identical one).
    fn add_address(
        &self,
        ns: &Ns,
        name: &str,
        address: IpNet,
    ) -> impl Future<Output = NlResult<()>> + Send;

    /// Adds or replaces `route` in the main table of `ns`.
    fn replace_route(&self, ns: &Ns, route: &Route) -> impl Future<Output = NlResult<()>> + Send;

    /// The IPv4 routes of the main table of `ns`.
    fn routes(&self, ns: &Ns) -> impl Future<Output = NlResult<Vec<Route>>> + Send;

    /// Removes the route to `destination` from the main table of `ns`; `Ok(false)` if
    /// there was none.
    fn delete_route(
        &self,
        ns: &Ns,
        destination: IpNet,
    ) -> impl Future<Output = NlResult<bool>> + Send;

    /// Every link of `ns` with its state.
    fn links(&self, ns: &Ns) -> impl Future<Output = NlResult<Vec<(String, LinkState)>>> + Send;

    /// Whether the namespace exists (a pod's netns path may be gone).
    fn ns_exists(&self, ns: &Ns) -> bool;

    /// Deletes link `name` in `ns`; `Ok(false)` if it did not exist.
    fn delete_link(&self, ns: &Ns, name: &str) -> impl Future<Output = NlResult<bool>> + Send;
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

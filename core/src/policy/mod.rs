//! NetworkPolicy, compiled: per-flow allow/deny verdicts without allocation.
//!
//! Design note: Kubernetes NetworkPolicy is defined over label selectors, named ports
//! and namespaces — far too rich to interpret per packet. The control plane (the
//! agent's policy compiler) does all of that once per cluster change and hands the core
//! a flat, caller-owned table ([`PolicyTable`]) in which:
//!
//! - a *local endpoint* (a pod on this node, by IP) has, per direction, either "not
//!   isolated" or "isolated by policy P, with this contiguous run of rules";
//! - the *peer* of a flow is known by its [`Identity`] (pod IP → identity, the shell's
//!   ipcache) and by its CIDR class (longest matching policy prefix), see [`cidr`];
//! - a [`Rule`] admits a flow when its destination (protocol, port) is in the rule's
//!   [`PortRange`]s (none = all) and its peer is in the rule's peer set.
//!
//! A verdict ([`Verdict`]) says which policy and rule allowed a flow or which policy
//! isolated the endpoint, packs into 32 bits, and is computed once per new connection:
//! the datapath stores the [`ConnVerdict`] (egress of the source AND ingress of the
//! destination) in the conntrack entry, and replies and later packets of the flow only
//! read it. Semantics (Kubernetes `networking.k8s.io/v1`): an endpoint no policy of a
//! direction selects is not isolated in it; the rules of all policies selecting it are
//! unioned; a connection needs both directions to allow it.

pub mod cidr;
pub mod iptable;
pub mod rule;
pub mod table;
pub mod verdict;

#[cfg(test)]
mod model_tests;

pub use cidr::{BadPrefixLength, Cidr, Prefix, PrefixTable};
pub use iptable::{IpSlot, IpTable, IpTableFull};
pub use rule::{
    AddrInfo, DirPolicy, EndpointPolicy, EndpointRef, Identity, IpBlock, PeerSet, PeerSpec,
    PolicyId, PortProtocol, PortRange, PortSet, Rule, RuleSpec, Span,
};
pub use table::{PeerSetView, PolicyError, PolicyStorage, PolicyTable, RulePeers};
pub use verdict::{AllowReason, ConnVerdict, DenyReason, Direction, Verdict, MAX_RULE_INDEX};

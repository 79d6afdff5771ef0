//! Cluster state and what the node derives from it.
//!
//! Design note: the control plane is split by responsibility: `manifests` turns files
//! into typed Kubernetes objects, `cluster` extracts the facts policy needs,
//! `node_view` the facts this node's wiring needs (its pod CIDR, the other nodes),
//! `ipam` and `store` keep the node's address allocations durable, `selectors`
//! validates and matches label selectors, `policy_compiler` compiles NetworkPolicy
//! into the core's `PolicyTable`, and `reachability` answers "who may talk to whom"
//! through that same table; `node_policy` narrows that compilation to one node's
//! datapath (its local endpoints) and `services` compiles Services and
//! EndpointSlices into the core's service table form.

pub mod cluster;
pub mod ipam;
pub mod manifests;
pub mod node_policy;
pub mod node_view;
pub mod policy_compiler;
pub mod reachability;
pub mod selectors;
pub mod services;
pub mod store;

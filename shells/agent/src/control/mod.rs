//! Cluster state and its compilation into the core's tables.
//!
//! Design note: the control plane is split by responsibility: `manifests` turns files
//! into typed Kubernetes objects, `cluster` extracts the facts the dataplane needs,
//! `selectors` validates and matches label selectors, `policy_compiler` compiles
//! NetworkPolicy into the core's `PolicyTable`, and `reachability` answers "who may
//! talk to whom" through that same table.

pub mod cluster;
pub mod manifests;
pub mod policy_compiler;
pub mod reachability;
pub mod selectors;

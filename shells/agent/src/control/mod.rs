//! Cluster state and what the node derives from it: the node view, IPAM and its
//! persisted state.

pub mod cluster;
pub mod ipam;
pub mod loader;
pub mod store;

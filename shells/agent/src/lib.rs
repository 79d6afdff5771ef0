//! # podwire-agent
//!
//! podwire's Linux shell: the node agent (`podwire agent`), its kubectl-style CLI, and
//! the CNI plugin (`podwire-cni`).
//!
//! Design note: the crate is split by responsibility. `cni/` is what the container
//! runtime executes (synchronous, small); `api` is the local socket protocol between
//! the plugin/CLI and the agent; `control/` turns cluster state into what the node
//! needs (node view, IPAM with its persisted state); `source/` delivers the cluster
//! state from a datastore (file, Kubernetes API, etcd); `netlink/` configures links,
//! addresses and routes behind a trait with a real rtnetlink implementation and a
//! recording fake; `observe/` serves metrics and health; `dataplane/` owns TAP devices and the loop that feeds frames
//! through the core datapath; `dns/` is the cluster DNS server; `agent/` ties them into the daemon; `cli/` is the
//! command line.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cni;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod lab;
pub mod netlink;
pub mod observe;
pub mod source;

//! The node agent daemon: pod wiring, the local API server, cluster-state reloads.

pub mod pods;

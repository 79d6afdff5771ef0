//! The node agent daemon: pod wiring, shared state and request handling, start-up
//! and cluster-state reloads.

pub mod daemon;
pub mod enforce;
pub mod pods;
pub mod state;

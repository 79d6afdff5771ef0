//! The data plane: TAP devices, the port registry, and the function that moves one
//! frame through the core datapath.
//!
//! Design note: everything here is I/O; every forwarding decision is the core's
//! `Datapath`, which runs on a worker thread ([`worker`]) and is controlled through
//! [`node::Dataplane`].

pub mod coalesce;
pub mod flows;
pub mod forward;
pub mod gso;
pub mod node;
pub mod ports;
pub mod tap;
pub mod udp;
pub mod vnet;
pub mod worker;

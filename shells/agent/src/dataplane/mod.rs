//! The data plane: TAP devices, the port registry, and the function that moves one
//! frame through the core datapath.
//!
//! Design note: everything here is I/O; every forwarding decision is the core's.
//! Until the core `Datapath` is linked in, the agent wires pods and registers their
//! ports but runs no forwarding workers (it does not pretend to forward).

pub mod forward;
pub mod ports;
pub mod tap;
pub mod worker;

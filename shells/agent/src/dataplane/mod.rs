//! The data plane: TAP devices and the loop that feeds their frames through the core
//! datapath.
//!
//! Design note: everything here is I/O; every forwarding decision is the core's.

pub mod tap;

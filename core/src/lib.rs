//! # podwire-core
//!
//! The allocation-free heart of podwire: everything a packet meets on its way between
//! Kubernetes pods — IPAM, longest-prefix routing, VXLAN encapsulation, service
//! load-balancing, connection tracking, NetworkPolicy — as plain data structures over
//! caller-owned memory.
//!
//! Design note: the core is *sans-IO*. It never touches a socket, a device, a clock or
//! the heap. Shells (the Linux agent, the embassy firmware, or any other datapath) own
//! I/O and time and pass `now` in. Tables take their storage from the caller, so the
//! same code sizes itself for a million flows on a Linux node and a few hundred on a
//! microcontroller, and a full table is an error value, never a panic. Untrusted bytes
//! are only ever read through checked views (`new_checked`) that return an error enum
//! naming what was wrong.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod checksum;
pub mod conntrack;
pub mod datapath;
pub mod flow;
pub mod ids;
pub mod ipam;
pub mod maglev;
pub mod nat;
pub mod policy;
pub mod route;
pub mod service;
pub mod vxlan;
pub mod wire;

pub use smoltcp::time::{Duration, Instant};

//! The packet pipeline: one function from (state, time, frame) to an [`Action`].
//!
//! Design note: the datapath is sans-IO. A shell hands it a frame in a buffer with
//! headroom, the ingress it came from and the current time; the datapath parses,
//! tracks, translates, checks policy, routes and encapsulates in place, and returns
//! what to do. Every drop names a [`DropReason`] and is counted.

mod action;
mod drop;

pub use action::{Action, Encapsulated, Ingress, Span};
pub use drop::{DropCounters, DropReason};

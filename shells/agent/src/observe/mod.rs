//! Observability: what the agent tells about itself and its datapath.
//!
//! Design note: everything here reads state the agent already keeps (the core's
//! counters, the flow log, IPAM, the cluster state) at the moment someone asks, so
//! observing costs the datapath nothing until it is asked. `metrics` renders the
//! Prometheus text; `admin` serves it and the health endpoints over HTTP.

pub mod admin;
pub mod metrics;

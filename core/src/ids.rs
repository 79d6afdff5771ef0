//! Small identifiers shared by the core's tables.
//!
//! Design note: tables refer to each other by dense integer ids rather than by
//! references, so they can live in separate caller-owned slices, be rebuilt
//! independently by a control plane, and be serialised into snapshots or a sync
//! protocol unchanged. Each id is a newtype so a node id can never be passed where a
//! port id is expected.

/// A node of the cluster (a VTEP, a BGP peer, the local node), dense from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NodeId(pub u16);

/// A local port of the datapath: the host port, a pod's interface, or an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortId(pub u16);

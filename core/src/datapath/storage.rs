//! All of a datapath's tables built over caller memory in one call.
//!
//! Design note: every table of the core lives in memory its caller owns — statics on
//! a microcontroller, leaked or boxed slices on Linux — and each has its own
//! constructor that checks and clears it. A shell, a benchmark or a fuzz target that
//! wants a datapath would otherwise repeat the same six constructors and the table
//! struct around them; [`DatapathStorage`] names every slice once and
//! [`DatapathTables::new`] builds and checks them all, with one error that says which
//! table refused its storage. Sizes stay the caller's choice: nothing here allocates.

use core::net::Ipv4Addr;

use crate::conntrack::{self, Bucket, ConnTrack, Entry};
use crate::ids::NodeId;
use crate::policy::{PolicyStorage, PolicyTable};
use crate::route::{RouteError, RouteStorage, RouteTable};
use crate::service::{ServiceError, ServiceStorage, ServiceTable};
use crate::vxlan::{VtepSlot, VtepTable};

use super::{DatapathTables, PortKind, PortTable};

/// The memory of every table of a datapath.
pub struct DatapathStorage<'a> {
    /// Local port slots; a port's id is its index.
    pub ports: &'a mut [Option<PortKind>],
    /// The IPv4 route table (sizes from [`RouteTable::layout`]).
    pub routes: RouteStorage<'a, Ipv4Addr>,
    /// Remote nodes' VTEPs.
    pub vteps: &'a mut [VtepSlot],
    /// Services, frontends, backends, Maglev tables and affinity.
    pub services: ServiceStorage<'a>,
    /// The connection-tracking index ([`conntrack::buckets_for`] the entries).
    pub conntrack_buckets: &'a mut [Bucket],
    /// Connection-tracking entries.
    pub conntrack_entries: &'a mut [Entry],
    /// Compiled NetworkPolicy and the IP → identity map.
    pub policy: PolicyStorage<'a>,
}

/// A table that refused its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TablesError {
    /// The route table.
    Routes(RouteError),
    /// The service table (Maglev size or storage).
    Services(ServiceError),
    /// Connection tracking.
    Conntrack(conntrack::StorageError),
}

impl<'a> DatapathTables<'a> {
    /// Every table over `storage`, cleared: services with Maglev tables of prime size
    /// `maglev_size` on node `node`, connection tracking with `conntrack`.
    pub fn new(
        storage: DatapathStorage<'a>,
        node: NodeId,
        maglev_size: u32,
        conntrack: conntrack::Config,
    ) -> Result<Self, TablesError> {
        Ok(DatapathTables {
            ports: PortTable::new(storage.ports),
            routes: RouteTable::new(storage.routes).map_err(TablesError::Routes)?,
            vteps: VtepTable::new(storage.vteps),
            services: ServiceTable::new(storage.services, maglev_size, node)
                .map_err(TablesError::Services)?,
            conntrack: ConnTrack::new(
                storage.conntrack_buckets,
                storage.conntrack_entries,
                conntrack,
            )
            .map_err(TablesError::Conntrack)?,
            policy: PolicyTable::new(storage.policy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::{self, MaglevScratch};
    use crate::policy::{EndpointPolicy, Identity, IpSlot, PortRange, Prefix, Rule};
    use crate::route::{GatewaySlot, RouteEntry, TrieNode};
    use crate::service::{AffinitySlot, BackendSlot, FrontendSlot, ServiceSlot};
    use std::boxed::Box;
    use std::vec;

    fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
        Box::leak(vec![value; n].into_boxed_slice())
    }

    /// Storage for small tables with `entries` conntrack entries and Maglev size 251.
    fn storage(entries: usize) -> DatapathStorage<'static> {
        let layout = RouteTable::<Ipv4Addr>::layout(4, 8, 2);
        DatapathStorage {
            ports: leak(None, 4),
            routes: RouteStorage {
                direct: leak(0u32, layout.direct),
                nodes: leak(TrieNode::default(), layout.nodes),
                leaves: leak(0u32, layout.leaves),
                routes: leak(RouteEntry::default(), layout.routes),
                gateways: leak(GatewaySlot::default(), layout.gateways),
            },
            vteps: leak(VtepSlot::EMPTY, 4),
            services: ServiceStorage {
                services: leak(ServiceSlot::EMPTY, 2),
                frontends: leak(FrontendSlot::EMPTY, 4),
                backends: leak(BackendSlot::EMPTY, 4),
                maglev: leak(0u16, 2 * 251),
                scratch: leak(MaglevScratch::ZERO, maglev::scratch_len(4)),
                affinity: leak(AffinitySlot::EMPTY, 0),
            },
            conntrack_buckets: leak(Bucket::EMPTY, conntrack::buckets_for(entries.max(1))),
            conntrack_entries: leak(Entry::EMPTY, entries),
            policy: PolicyStorage {
                addresses: leak(IpSlot::EMPTY, 4),
                endpoint_policies: leak(EndpointPolicy::default(), 2),
                rules: leak(Rule::EMPTY, 2),
                ports: leak(PortRange::ANY, 2),
                peers: leak(Identity(0), 2),
                prefixes: leak(Prefix::EMPTY, 2),
            },
        }
    }

    #[test]
    fn every_table_is_built_or_the_refusing_one_is_named() {
        let config = conntrack::Config::default();
        let t = DatapathTables::new(storage(16), NodeId(1), 251, config).unwrap();
        assert_eq!(t.conntrack.capacity(), 16);
        assert!(matches!(
            DatapathTables::new(storage(16), NodeId(1), 250, config),
            Err(TablesError::Services(_))
        ));
        assert_eq!(
            DatapathTables::new(storage(0), NodeId(1), 251, config).err(),
            Some(TablesError::Conntrack(conntrack::StorageError::NoEntries))
        );
    }
}

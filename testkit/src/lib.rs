//! One way to give a podwire-core datapath its tables outside the core: for the
//! benchmarks, the fuzz targets and the examples.
//!
//! Design note: every table of the core takes caller-owned memory, which is right for
//! a firmware's statics and a Linux agent's start-up sizing, but a test scenario only
//! wants "a node with room for this many pods, routes, services and connections".
//! [`TableSizes`] says that in one struct (start from [`TableSizes::SMALL`] and change
//! the fields a scenario cares about), [`NodeStore`] owns the slices it implies, and
//! [`NodeStore::tables`] builds every table over them with
//! [`DatapathTables::new`](podwire_core::datapath::DatapathTables::new). A fuzz target
//! keeps a fresh `NodeStore` per input; a benchmark or an example that wants
//! `'static` tables leaks one ([`NodeStore::leak`]). [`add_tcp_service`] and
//! [`ready_backend`] give a scenario its service in one call. std only: the core itself stays
//! `no_std` and its unit tests keep their own storage (a core test cannot use a crate
//! that depends on the core).

use std::net::{IpAddr, Ipv4Addr};

use podwire_core::conntrack::{self, Bucket, Entry};
use podwire_core::datapath::{DatapathStorage, DatapathTables, PortKind, TablesError};
use podwire_core::flow::PROTO_TCP;
use podwire_core::ids::NodeId;
use podwire_core::maglev::{self, MaglevScratch};
use podwire_core::policy::{
    AddrInfo, EndpointPolicy, Identity, IpSlot, PolicyStorage, PortRange, Prefix, Rule,
};
use podwire_core::route::{GatewaySlot, RouteEntry, RouteStorage, RouteTable, TrieNode};
use podwire_core::service::{
    AffinitySlot, Backend, BackendSlot, Conditions, Frontend, FrontendKind, FrontendSlot,
    ServiceConfig, ServiceError, ServiceId, ServiceSlot, ServiceStorage, ServiceTable,
};
use podwire_core::vxlan::VtepSlot;

/// How much of everything a node's tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    /// Local port slots (pods, the host, a raw underlay device).
    pub ports: usize,
    /// Bits of the route table's direct array ([`RouteTable::layout`]).
    pub route_direct_bits: u8,
    /// Route prefixes.
    pub routes: usize,
    /// Gateway next hops.
    pub route_gateways: usize,
    /// Remote nodes' VTEPs.
    pub vteps: usize,
    /// Service slots.
    pub services: usize,
    /// Frontend hash-table slots.
    pub frontends: usize,
    /// Backends of all services together.
    pub backends: usize,
    /// Backends one service may have (the Maglev build scratch).
    pub backends_per_service: usize,
    /// The largest Maglev table (prime).
    pub max_maglev: u32,
    /// The Maglev arena, in entries.
    pub maglev_entries: usize,
    /// Session-affinity slots.
    pub affinity: usize,
    /// Connection-tracking entries (the index gets [`conntrack::buckets_for`] them).
    pub connections: usize,
    /// IP → identity slots.
    pub addresses: usize,
    /// Per-endpoint policies.
    pub endpoint_policies: usize,
    /// Policy rules.
    pub rules: usize,
    /// Policy port ranges.
    pub policy_ports: usize,
    /// Policy peer identities.
    pub peers: usize,
    /// Policy CIDR prefixes.
    pub prefixes: usize,
}

impl TableSizes {
    /// A node with room for a handful of everything: 8 ports, 64 routes, 8 VTEPs,
    /// 8 services of up to 16 backends with Maglev tables of 251 entries, 256
    /// connections, 64 addresses and 32 policy rules.
    pub const SMALL: TableSizes = TableSizes {
        ports: 8,
        route_direct_bits: 8,
        routes: 64,
        route_gateways: 4,
        vteps: 8,
        services: 8,
        frontends: 32,
        backends: 64,
        backends_per_service: 16,
        max_maglev: 251,
        maglev_entries: 8 * 251,
        affinity: 64,
        connections: 256,
        addresses: 64,
        endpoint_policies: 16,
        rules: 32,
        policy_ports: 32,
        peers: 64,
        prefixes: 16,
    };
}

/// The memory of every table of one node, owned.
pub struct NodeStore {
    sizes: TableSizes,
    ports: Vec<Option<PortKind>>,
    direct: Vec<u32>,
    nodes: Vec<TrieNode>,
    leaves: Vec<u32>,
    routes: Vec<RouteEntry<Ipv4Addr>>,
    gateways: Vec<GatewaySlot>,
    vteps: Vec<VtepSlot>,
    services: Vec<ServiceSlot>,
    frontends: Vec<FrontendSlot>,
    backends: Vec<BackendSlot>,
    maglev: Vec<u16>,
    scratch: Vec<MaglevScratch>,
    affinity: Vec<AffinitySlot>,
    buckets: Vec<Bucket>,
    entries: Vec<Entry>,
    addresses: Vec<IpSlot<AddrInfo>>,
    endpoint_policies: Vec<EndpointPolicy>,
    rules: Vec<Rule>,
    policy_ports: Vec<PortRange>,
    peers: Vec<Identity>,
    prefixes: Vec<Prefix>,
}

impl NodeStore {
    /// Storage of `sizes`.
    pub fn new(sizes: TableSizes) -> NodeStore {
        let layout = RouteTable::<Ipv4Addr>::layout(
            sizes.route_direct_bits,
            sizes.routes,
            sizes.route_gateways,
        );
        NodeStore {
            sizes,
            ports: vec![None; sizes.ports],
            direct: vec![0; layout.direct],
            nodes: vec![TrieNode::default(); layout.nodes],
            leaves: vec![0; layout.leaves],
            routes: vec![RouteEntry::default(); layout.routes],
            gateways: vec![GatewaySlot::default(); layout.gateways],
            vteps: vec![VtepSlot::EMPTY; sizes.vteps],
            services: vec![ServiceSlot::EMPTY; sizes.services],
            frontends: vec![FrontendSlot::EMPTY; sizes.frontends],
            backends: vec![BackendSlot::EMPTY; sizes.backends],
            maglev: vec![maglev::EMPTY; sizes.maglev_entries],
            scratch: vec![MaglevScratch::ZERO; maglev::scratch_len(sizes.backends_per_service)],
            affinity: vec![AffinitySlot::EMPTY; sizes.affinity],
            buckets: vec![Bucket::EMPTY; conntrack::buckets_for(sizes.connections)],
            entries: vec![Entry::EMPTY; sizes.connections],
            addresses: vec![IpSlot::EMPTY; sizes.addresses],
            endpoint_policies: vec![EndpointPolicy::default(); sizes.endpoint_policies],
            rules: vec![Rule::EMPTY; sizes.rules],
            policy_ports: vec![PortRange::ANY; sizes.policy_ports],
            peers: vec![Identity(0); sizes.peers],
            prefixes: vec![Prefix::EMPTY; sizes.prefixes],
        }
    }

    /// The sizes this storage was made for.
    pub fn sizes(&self) -> &TableSizes {
        &self.sizes
    }

    /// Every slice, named as [`DatapathTables::new`] wants them.
    pub fn storage(&mut self) -> DatapathStorage<'_> {
        DatapathStorage {
            ports: &mut self.ports,
            routes: RouteStorage {
                direct: &mut self.direct,
                nodes: &mut self.nodes,
                leaves: &mut self.leaves,
                routes: &mut self.routes,
                gateways: &mut self.gateways,
            },
            vteps: &mut self.vteps,
            services: ServiceStorage {
                services: &mut self.services,
                frontends: &mut self.frontends,
                backends: &mut self.backends,
                maglev: &mut self.maglev,
                scratch: &mut self.scratch,
                affinity: &mut self.affinity,
            },
            conntrack_buckets: &mut self.buckets,
            conntrack_entries: &mut self.entries,
            policy: PolicyStorage {
                addresses: &mut self.addresses,
                endpoint_policies: &mut self.endpoint_policies,
                rules: &mut self.rules,
                ports: &mut self.policy_ports,
                peers: &mut self.peers,
                prefixes: &mut self.prefixes,
            },
        }
    }

    /// Every table of node `node` over this storage, with the default conntrack
    /// configuration.
    pub fn tables(&mut self, node: NodeId) -> Result<DatapathTables<'_>, TablesError> {
        let max_maglev = self.sizes.max_maglev;
        DatapathTables::new(
            self.storage(),
            node,
            max_maglev,
            conntrack::Config::default(),
        )
    }

    /// The tables of node `node` over storage of `sizes` that lives as long as the
    /// program (for benchmarks and examples, as a firmware's statics would).
    pub fn leak(sizes: TableSizes, node: NodeId) -> Result<DatapathTables<'static>, TablesError> {
        Box::leak(Box::new(NodeStore::new(sizes))).tables(node)
    }
}

/// A ready backend `addr:port` on `node`.
pub fn ready_backend(addr: Ipv4Addr, port: u16, node: NodeId) -> Backend {
    Backend {
        addr: IpAddr::V4(addr),
        port,
        node,
        conditions: Conditions::READY,
    }
}

/// Creates the TCP service `id` with the default settings (no affinity, `Cluster`
/// traffic policies) and `backends`, reachable at each `(address, port, kind)` of
/// `frontends`.
pub fn add_tcp_service(
    services: &mut ServiceTable<'_>,
    id: ServiceId,
    backends: &[Backend],
    frontends: &[(Ipv4Addr, u16, FrontendKind)],
) -> Result<(), ServiceError> {
    services.upsert_service(id, ServiceConfig::default())?;
    services.set_backends(id, backends)?;
    for &(addr, port, kind) in frontends {
        services.add_frontend(Frontend {
            addr: IpAddr::V4(addr),
            port,
            protocol: PROTO_TCP,
            kind,
            service: id,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tables_build_and_report_their_sizes() {
        let mut store = NodeStore::new(TableSizes::SMALL);
        let tables = store.tables(NodeId(1)).unwrap();
        assert_eq!(tables.conntrack.capacity(), 256);
        assert_eq!(tables.services.max_maglev_size(), 251);
        assert_eq!(store.sizes().ports, 8);
    }

    #[test]
    fn a_tcp_service_is_reachable_at_its_frontends() {
        let mut store = NodeStore::new(TableSizes::SMALL);
        let mut tables = store.tables(NodeId(1)).unwrap();
        let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
        let backend = ready_backend(Ipv4Addr::new(10, 244, 2, 2), 8080, NodeId(2));
        add_tcp_service(
            &mut tables.services,
            ServiceId(1),
            &[backend],
            &[(cluster_ip, 80, FrontendKind::ClusterIp)],
        )
        .unwrap();
        let f = tables
            .services
            .frontend(IpAddr::V4(cluster_ip), 80, PROTO_TCP, false)
            .unwrap();
        assert_eq!(f.service, ServiceId(1));
        assert_eq!(
            tables
                .services
                .backends(ServiceId(1))
                .copied()
                .collect::<Vec<_>>(),
            [backend]
        );
        assert_eq!(
            add_tcp_service(&mut tables.services, ServiceId(99), &[], &[]),
            Err(ServiceError::ServiceIdOutOfRange)
        );
    }

    #[test]
    fn a_refused_size_names_its_table() {
        let sizes = TableSizes {
            connections: 0,
            ..TableSizes::SMALL
        };
        assert!(matches!(
            NodeStore::new(sizes).tables(NodeId(1)),
            Err(TablesError::Conntrack(_))
        ));
        let sizes = TableSizes {
            max_maglev: 250,
            ..TableSizes::SMALL
        };
        assert!(matches!(
            NodeStore::leak(sizes, NodeId(1)),
            Err(TablesError::Services(_))
        ));
    }
}

//! The node's datapath over static tables sized for a board, filled with the static
//! cluster configuration of [`crate::config`].
//!
//! Design note: every table is one static of uninitialised memory (an empty
//! `heapless::Vec` of the table's capacity) filled in place with the slot type's empty
//! value at start-up, so the tables live in `.bss` and cost no flash, and nothing
//! table-sized is ever built on the stack (the same scheme as `firmware/footprint`).

use core::net::IpAddr;

use podwire_core::conntrack::{self, Bucket, Entry};
use podwire_core::datapath::{Datapath, DatapathConfig, DatapathStorage, DatapathTables, PortKind};
use podwire_core::ids::{NodeId, PortId};
use podwire_core::maglev::{self, MaglevScratch};
use podwire_core::policy::{
    AddrInfo, DirPolicy, EndpointPolicy, Identity, IpSlot, PolicyStorage, PortRange, Prefix, Rule,
};
use podwire_core::route::{GatewaySlot, Ipv4Prefix, NextHop, RouteEntry, RouteStorage, TrieNode};
use podwire_core::service::{AffinitySlot, BackendSlot, FrontendSlot, ServiceSlot, ServiceStorage};
use podwire_core::vxlan::{Vtep, VtepSlot, VxlanConfig};
use podwire_core::wire::EthernetAddress;
use static_cell::{ConstStaticCell, StaticCell};

use crate::config;

/// The port of the board's Ethernet: a raw underlay carrying VXLAN.
pub const UNDERLAY_PORT: PortId = PortId(0);
/// The port of the board-local pod.
pub const POD_PORT: PortId = PortId(1);

const PORTS: usize = 2;
const ROUTES: usize = 16;
const ROUTE_DIRECT_BITS: u32 = 8;
/// Trie levels below the direct array (6-bit strides), as `RouteLayout::worst_case`.
const ROUTE_LEVELS: usize = (32 - ROUTE_DIRECT_BITS).div_ceil(6) as usize;
const ROUTE_NODES: usize = ROUTES * ROUTE_LEVELS;
const ROUTE_LEAVES: usize = ROUTES * (ROUTE_LEVELS + 2);
const ROUTE_GATEWAYS: usize = 2;
const VTEPS: usize = 8;
const SERVICES: usize = 4;
const BACKENDS_PER_SERVICE: usize = 4;
/// Maglev table size per service (prime).
const MAGLEV_M: usize = 251;
const FRONTENDS: usize = 8;
const AFFINITY: usize = 8;
const RULES: usize = 16;
const POLICY_PORTS: usize = 16;
const POLICY_PEERS: usize = 32;
const POLICY_PREFIXES: usize = 8;
const ENDPOINT_POLICIES: usize = 2;
const ADDRESSES: usize = 32;
const CONNECTIONS: usize = 64;
const CONNTRACK_BUCKETS: usize = conntrack::buckets_for(CONNECTIONS);

/// The static storage of one table: an empty vector of the table's capacity.
struct StaticTable<T: 'static, const N: usize>(ConstStaticCell<heapless::Vec<T, N>>);

impl<T: Clone, const N: usize> StaticTable<T, N> {
    const fn new() -> Self {
        StaticTable(ConstStaticCell::new(heapless::Vec::new()))
    }

    /// The table's `N` slots, each set to `empty`; once (panics after).
    fn take(&'static self, empty: T) -> &'static mut [T] {
        let slots = self.0.take();
        if slots.resize(N, empty).is_err() {
            panic!("a vector of capacity N holds N slots");
        }
        slots.as_mut_slice()
    }
}

macro_rules! table {
    ($NAME:ident: [$t:ty; $n:expr]) => {
        static $NAME: StaticTable<$t, { $n }> = StaticTable::new();
    };
}

table!(PORT_SLOTS: [Option<PortKind>; PORTS]);
table!(ROUTE_DIRECT: [u32; 1 << ROUTE_DIRECT_BITS]);
table!(ROUTE_TRIE_NODES: [TrieNode; ROUTE_NODES]);
table!(ROUTE_TRIE_LEAVES: [u32; ROUTE_LEAVES]);
table!(ROUTE_ENTRIES: [RouteEntry<core::net::Ipv4Addr>; ROUTES]);
table!(ROUTE_GATEWAY_SLOTS: [GatewaySlot; ROUTE_GATEWAYS]);
table!(VTEP_SLOTS: [VtepSlot; VTEPS]);
table!(SERVICE_SLOTS: [ServiceSlot; SERVICES]);
table!(FRONTEND_SLOTS: [FrontendSlot; FRONTENDS]);
table!(BACKEND_SLOTS: [BackendSlot; SERVICES * BACKENDS_PER_SERVICE]);
table!(MAGLEV_TABLES: [u16; SERVICES * MAGLEV_M]);
table!(MAGLEV_BUILD_SCRATCH: [MaglevScratch; maglev::scratch_len(BACKENDS_PER_SERVICE)]);
table!(AFFINITY_SLOTS: [AffinitySlot; AFFINITY]);
table!(CONNTRACK_INDEX: [Bucket; CONNTRACK_BUCKETS]);
table!(CONNTRACK_ENTRIES: [Entry; CONNECTIONS]);
table!(POLICY_ADDRESSES: [IpSlot<AddrInfo>; ADDRESSES]);
table!(POLICY_ENDPOINTS: [EndpointPolicy; ENDPOINT_POLICIES]);
table!(POLICY_RULES: [Rule; RULES]);
table!(POLICY_PORT_RANGES: [PortRange; POLICY_PORTS]);
table!(POLICY_PEER_IDS: [Identity; POLICY_PEERS]);
table!(POLICY_CIDRS: [Prefix; POLICY_PREFIXES]);
static DATAPATH: StaticCell<Datapath<'static>> = StaticCell::new();

/// A prefix of the static configuration (a bad one is a build-time mistake).
fn prefix(addr: core::net::Ipv4Addr, len: u8) -> Ipv4Prefix {
    match Ipv4Prefix::new(addr, len) {
        Ok(prefix) => prefix,
        Err(_) => panic!("the static configuration holds a malformed prefix"),
    }
}

/// The node's datapath with the static configuration installed; once.
pub fn datapath() -> &'static mut Datapath<'static> {
    let open = EndpointPolicy {
        ingress: DirPolicy::OPEN,
        egress: DirPolicy::OPEN,
    };
    let storage = DatapathStorage {
        ports: PORT_SLOTS.take(None),
        routes: RouteStorage {
            direct: ROUTE_DIRECT.take(0),
            nodes: ROUTE_TRIE_NODES.take(TrieNode::EMPTY),
            leaves: ROUTE_TRIE_LEAVES.take(0),
            routes: ROUTE_ENTRIES.take(RouteEntry::EMPTY),
            gateways: ROUTE_GATEWAY_SLOTS.take(GatewaySlot::EMPTY),
        },
        vteps: VTEP_SLOTS.take(VtepSlot::EMPTY),
        services: ServiceStorage {
            services: SERVICE_SLOTS.take(ServiceSlot::EMPTY),
            frontends: FRONTEND_SLOTS.take(FrontendSlot::EMPTY),
            backends: BACKEND_SLOTS.take(BackendSlot::EMPTY),
            maglev: MAGLEV_TABLES.take(maglev::EMPTY),
            scratch: MAGLEV_BUILD_SCRATCH.take(MaglevScratch::ZERO),
            affinity: AFFINITY_SLOTS.take(AffinitySlot::EMPTY),
        },
        conntrack_buckets: CONNTRACK_INDEX.take(Bucket::EMPTY),
        conntrack_entries: CONNTRACK_ENTRIES.take(Entry::EMPTY),
        policy: PolicyStorage {
            addresses: POLICY_ADDRESSES.take(IpSlot::EMPTY),
            endpoint_policies: POLICY_ENDPOINTS.take(open),
            rules: POLICY_RULES.take(Rule::EMPTY),
            ports: POLICY_PORT_RANGES.take(PortRange::ANY),
            peers: POLICY_PEER_IDS.take(Identity(0)),
            prefixes: POLICY_CIDRS.take(Prefix::EMPTY),
        },
    };
    let node = NodeId(config::NODE);
    let Ok(tables) =
        DatapathTables::new(storage, node, MAGLEV_M as u32, conntrack::Config::default())
    else {
        panic!("the static storage matches the table sizes");
    };
    let underlay_mac = EthernetAddress(config::UNDERLAY_MAC);
    let mut vxlan = VxlanConfig::new(IpAddr::V4(config::UNDERLAY_IP), underlay_mac);
    vxlan.underlay_mtu = config::UNDERLAY_MTU;
    vxlan.flow_seed = config::FLOW_SEED;
    let block = config::POD_BLOCK;
    let dp = DATAPATH.init(Datapath::new(
        DatapathConfig {
            node,
            router_mac: EthernetAddress(config::ROUTER_MAC),
            gateway: core::net::Ipv4Addr::from_bits(block.to_bits() | 1),
            pod_cidr: prefix(block, config::POD_PREFIX_LEN),
            vxlan,
            flow_seed: config::FLOW_SEED,
        },
        tables,
    ));
    install(dp);
    dp
}

/// The static cluster: the ports, the pod's route, every peer's VTEP and pod block.
fn install(dp: &mut Datapath<'static>) {
    let pod = PortKind::Pod {
        ip: config::POD_IP,
        mac: EthernetAddress(config::POD_MAC),
    };
    if dp
        .ports_mut()
        .set(UNDERLAY_PORT, PortKind::Underlay)
        .is_err()
        || dp.ports_mut().set(POD_PORT, pod).is_err()
    {
        panic!("the port table holds the underlay and the pod");
    }
    if dp
        .routes_mut()
        .insert(prefix(config::POD_IP, 32), NextHop::Port(POD_PORT))
        .is_err()
    {
        panic!("the route table holds the pod's route");
    }
    for peer in config::PEERS {
        let vtep = Vtep {
            node: NodeId(peer.node),
            ip: IpAddr::V4(peer.ip),
            mac: EthernetAddress(peer.mac),
        };
        let route = prefix(peer.pod_block, peer.pod_prefix_len);
        if dp.vteps_mut().insert(vtep).is_err()
            || dp
                .routes_mut()
                .insert(route, NextHop::Node(NodeId(peer.node)))
                .is_err()
        {
            panic!("the VTEP and route tables hold every peer");
        }
    }
}

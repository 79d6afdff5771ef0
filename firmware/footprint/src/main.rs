//! podwire-footprint: one firmware-sized `Datapath` over static storage, linked for a
//! Cortex-M4F (`thumbv7em-none-eabihf`), to measure what podwire-core costs in flash
//! and RAM. `tests/footprint` builds it and reports the sections and tables.
//!
//! Design note: a staticlib keeps every public function of the core whether a firmware
//! calls it or not, so its size says little. This is a linked binary instead:
//! cortex-m-rt's reset handler calls `main`, which builds every table over its own
//! static, then loops forever handling what a firmware node handles — a frame from a
//! port or the VXLAN socket through `Datapath::process`, a control-plane update of
//! each table, periodic conntrack expiry — on inputs hidden behind `black_box`. So the
//! linker keeps exactly the code such a node needs, nothing is constant-folded away,
//! and every table is its own symbol whose bytes `nm` reports. Features select smaller
//! images: `process-only` (no control-plane update code) and `baseline` (the runtime
//! alone, to subtract).
//!
//! The storage is one `static_cell::ConstStaticCell` per table holding an empty
//! `heapless::Vec` of the table's capacity: its elements are uninitialised memory, so
//! every table lands in `.bss` (zeroed RAM, no flash) whatever its slot type's `EMPTY`
//! value is. At start-up [`StaticTable::take`] fills the vector in place with `EMPTY`,
//! one element at a time, and hands out the slice — no unsafe code and no table-sized
//! temporary on the stack. (Initialising each cell at compile time from `EMPTY` instead
//! put every table whose empty slot is not all zero bytes — `u32::MAX` links, `None`
//! niches, `u16::MAX` Maglev entries — into `.data`, where it cost its size twice: in
//! RAM and in flash, the image copied at reset. `StaticCell::init_with` builds the whole
//! array on the stack first: a 41 KiB temporary for the conntrack entries.)
#![no_std]
#![no_main]

use core::panic::PanicInfo;

use cortex_m_rt::entry;

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(feature = "baseline")]
#[entry]
fn main() -> ! {
    let mut n = 0u32;
    loop {
        n = core::hint::black_box(n).wrapping_add(1);
    }
}

#[cfg(not(feature = "baseline"))]
#[entry]
fn main() -> ! {
    node::run()
}

#[cfg(not(feature = "baseline"))]
mod node {
    use core::hint::black_box;
    use core::net::{IpAddr, Ipv4Addr};

    use static_cell::{ConstStaticCell, StaticCell};

    use podwire_core::conntrack::{self, Bucket, Entry};
    use podwire_core::datapath::{
        Datapath, DatapathConfig, DatapathStorage, DatapathTables, Ingress, PortKind, Span,
        HEADROOM,
    };
    use podwire_core::ids::{NodeId, PortId};
    use podwire_core::maglev::{self, MaglevScratch};
    use podwire_core::policy::{
        AddrInfo, DirPolicy, EndpointPolicy, Identity, IpSlot, PolicyStorage, PortRange, Prefix,
        Rule,
    };
    use podwire_core::route::{GatewaySlot, Ipv4Prefix, RouteEntry, RouteStorage, TrieNode};
    use podwire_core::service::{
        AffinitySlot, BackendSlot, FrontendSlot, ServiceSlot, ServiceStorage,
    };
    use podwire_core::vxlan::{VtepSlot, VxlanConfig};
    use podwire_core::wire::EthernetAddress;
    use podwire_core::Instant;

    // ---- The configuration measured ------------------------------------------------

    /// Local ports: the host port and up to 15 pods (services running on the board).
    pub const PORTS: usize = 16;
    /// Routes, any lengths: pod /32s, remote node blocks, a default route.
    pub const ROUTES: usize = 64;
    /// log2 of the route table's direct array (`RouteLayout::suggested_direct_bits(64)`).
    pub const ROUTE_DIRECT_BITS: u32 = 8;
    /// Trie levels below the direct array (`RouteLayout::worst_case`: 6-bit strides).
    const ROUTE_LEVELS: usize = (32 - ROUTE_DIRECT_BITS).div_ceil(6) as usize;
    /// Worst-case trie nodes and leaves for `ROUTES` prefixes of any shape: the table
    /// can never fail for lack of trie space below 64 routes.
    pub const ROUTE_NODES: usize = ROUTES * ROUTE_LEVELS;
    /// See [`ROUTE_NODES`].
    pub const ROUTE_LEAVES: usize = ROUTES * (ROUTE_LEVELS + 2);
    /// Distinct direct-routing gateways.
    pub const ROUTE_GATEWAYS: usize = 4;
    /// Remote nodes' VTEPs.
    pub const VTEPS: usize = 16;
    /// Services.
    pub const SERVICES: usize = 16;
    /// Backends per service (Maglev build scratch is sized for this many).
    pub const BACKENDS_PER_SERVICE: usize = 8;
    /// Maglev table size per service (prime).
    pub const MAGLEV_M: usize = 251;
    /// Frontend hash slots: 16 ClusterIPs plus a few NodePorts at under 70 % load.
    pub const FRONTENDS: usize = 32;
    /// Session-affinity entries.
    pub const AFFINITY: usize = 32;
    /// NetworkPolicy rules.
    pub const RULES: usize = 128;
    /// Port ranges of the rules' port sets (one each on average).
    pub const POLICY_PORTS: usize = 128;
    /// Identities of the rules' peer sets (two each on average).
    pub const POLICY_PEERS: usize = 256;
    /// CIDR prefixes of ipBlock peers.
    pub const POLICY_PREFIXES: usize = 32;
    /// Endpoint policies (one per local identity).
    pub const ENDPOINT_POLICIES: usize = 16;
    /// IP → identity slots: 224 cluster pod addresses at the table's 7/8 load limit.
    pub const ADDRESSES: usize = 256;
    /// Tracked connections.
    pub const CONNECTIONS: usize = 256;
    /// Conntrack index buckets for `CONNECTIONS`.
    pub const CONNTRACK_BUCKETS: usize = conntrack::buckets_for(CONNECTIONS);
    /// One receive buffer: headroom plus a full Ethernet frame.
    pub const FRAME_BUFFER: usize = HEADROOM + 1536;

    /// The static storage of one table: an empty vector of the table's capacity (its
    /// own symbol, all of it uninitialised or zero, so in `.bss`).
    struct StaticTable<T: 'static, const N: usize>(ConstStaticCell<heapless::Vec<T, N>>);

    impl<T: Clone, const N: usize> StaticTable<T, N> {
        const fn new() -> Self {
            StaticTable(ConstStaticCell::new(heapless::Vec::new()))
        }

        /// The table's `N` slots, each set to `empty`; once (panics after). The empty
        /// value is passed here, not stored in the static: a single non-zero byte would
        /// move the whole symbol into `.data`.
        fn take(&'static self, empty: T) -> &'static mut [T] {
            let slots = self.0.take();
            if slots.resize(N, empty).is_err() {
                panic!("a vector of capacity N holds N slots");
            }
            slots.as_mut_slice()
        }
    }

    /// Declares `$NAME`, the static storage of one table of `$n` slots of type `$t`.
    macro_rules! table {
        ($NAME:ident: [$t:ty; $n:expr]) => {
            static $NAME: StaticTable<$t, { $n }> = StaticTable::new();
        };
    }

    // ---- Static storage, one symbol per table ---------------------------------------

    table!(PORT_SLOTS: [Option<PortKind>; PORTS]);
    table!(ROUTE_DIRECT: [u32; 1 << ROUTE_DIRECT_BITS]);
    table!(ROUTE_TRIE_NODES: [TrieNode; ROUTE_NODES]);
    table!(ROUTE_TRIE_LEAVES: [u32; ROUTE_LEAVES]);
    table!(ROUTE_ENTRIES: [RouteEntry<Ipv4Addr>; ROUTES]);
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
    table!(RX_FRAME_BUFFER: [u8; FRAME_BUFFER]);
    static DATAPATH_STATE: StaticCell<Datapath<'static>> = StaticCell::new();

    /// The node's datapath over the static tables.
    fn datapath() -> &'static mut Datapath<'static> {
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
                endpoint_policies: POLICY_ENDPOINTS.take(EndpointPolicy {
                    ingress: DirPolicy::OPEN,
                    egress: DirPolicy::OPEN,
                }),
                rules: POLICY_RULES.take(Rule::EMPTY),
                ports: POLICY_PORT_RANGES.take(PortRange::ANY),
                peers: POLICY_PEER_IDS.take(Identity(0)),
                prefixes: POLICY_CIDRS.take(Prefix::EMPTY),
            },
        };
        let tables = DatapathTables::new(
            storage,
            NodeId(1),
            MAGLEV_M as u32,
            conntrack::Config::default(),
        );
        let Ok(tables) = tables else {
            panic!("static storage matches the configuration");
        };
        // The node's identity arrives at run time (from flash or the agent).
        let underlay = Ipv4Addr::from_bits(black_box(0xc0a8_380b));
        let mac = EthernetAddress(black_box([0x02, 0x50, 0x57, 0, 0, 0x0a]));
        let block = Ipv4Addr::from_bits(black_box(0x0af4_0100));
        let Ok(pod_cidr) = Ipv4Prefix::new(block, 24) else {
            panic!("a /24");
        };
        let config = DatapathConfig {
            node: NodeId(black_box(1)),
            router_mac: mac,
            gateway: Ipv4Addr::from_bits(block.to_bits() | 1),
            pod_cidr,
            vxlan: VxlanConfig::new(IpAddr::V4(underlay), mac),
            flow_seed: black_box(7),
        };
        DATAPATH_STATE.init(Datapath::new(config, tables))
    }

    /// The firmware's main loop: frames and, unless `process-only`, control-plane
    /// updates, all on inputs the compiler cannot see.
    pub fn run() -> ! {
        let dp = datapath();
        let buf: &mut [u8] = RX_FRAME_BUFFER.take(0);
        loop {
            let now = Instant::from_micros(black_box(0i64));
            match black_box(0u8) {
                0 => {
                    // A frame the driver wrote into `buf`, from a port or the socket.
                    let buf = black_box(&mut *buf);
                    let frame = Span {
                        start: HEADROOM,
                        len: black_box(60),
                    };
                    let ingress = if black_box(true) {
                        Ingress::Port(PortId(black_box(1)))
                    } else {
                        Ingress::Underlay {
                            source: IpAddr::V4(Ipv4Addr::from_bits(black_box(0))),
                            source_port: black_box(0),
                        }
                    };
                    black_box(dp.process(now, ingress, buf, frame));
                }
                1 => {
                    black_box(dp.conntrack_mut().expire(now, 16));
                }
                _ => {
                    #[cfg(not(feature = "process-only"))]
                    crate::control::update(dp, now);
                }
            }
        }
    }
}

/// One control-plane update of each kind, as the table-sync protocol would apply them.
#[cfg(all(not(feature = "baseline"), not(feature = "process-only")))]
mod control {
    use core::hint::black_box;
    use core::net::{IpAddr, Ipv4Addr};

    use podwire_core::datapath::{Datapath, PortKind};
    use podwire_core::flow::FlowKey;
    use podwire_core::ids::{NodeId, PortId};
    use podwire_core::policy::{
        EndpointPolicy, Identity, PeerSpec, PolicyId, PortProtocol, PortRange, RuleSpec,
    };
    use podwire_core::route::{Ipv4Prefix, NextHop};
    use podwire_core::service::{
        Backend, Conditions, Frontend, FrontendKind, ServiceConfig, ServiceId, TrafficPolicy,
    };
    use podwire_core::vxlan::Vtep;
    use podwire_core::wire::EthernetAddress;
    use podwire_core::Instant;

    fn ip() -> Ipv4Addr {
        Ipv4Addr::from_bits(black_box(0))
    }

    fn mac() -> EthernetAddress {
        EthernetAddress(black_box([0; 6]))
    }

    /// Applies one update chosen at run time.
    pub fn update(dp: &mut Datapath<'static>, now: Instant) {
        match black_box(0u8) {
            0 => {
                let kind = PortKind::Pod {
                    ip: ip(),
                    mac: mac(),
                };
                black_box(dp.ports_mut().set(PortId(black_box(1)), kind)).ok();
            }
            1 => {
                black_box(dp.ports_mut().remove(PortId(black_box(1))));
            }
            2 => {
                if let Ok(prefix) = Ipv4Prefix::new(ip(), black_box(24)) {
                    let hop = NextHop::Node(NodeId(black_box(2)));
                    black_box(dp.routes_mut().insert(prefix, hop)).ok();
                }
            }
            3 => {
                if let Ok(prefix) = Ipv4Prefix::new(ip(), black_box(24)) {
                    black_box(dp.routes_mut().remove(prefix)).ok();
                }
            }
            4 => {
                let vtep = Vtep {
                    node: NodeId(black_box(2)),
                    ip: IpAddr::V4(ip()),
                    mac: mac(),
                };
                black_box(dp.vteps_mut().insert(vtep)).ok();
            }
            5 => {
                black_box(dp.vteps_mut().remove(NodeId(black_box(2))));
            }
            6 => update_service(dp),
            7 => {
                let services = dp.services_mut();
                black_box(services.remove_frontend(IpAddr::V4(ip()), black_box(80), 6));
                black_box(services.remove_service(ServiceId(black_box(0))));
                black_box(services.purge_affinity(now));
            }
            8 => update_policy(dp),
            _ => {
                // Flush one connection (e.g. its pod went away).
                let key = FlowKey {
                    src: IpAddr::V4(ip()),
                    dst: IpAddr::V4(ip()),
                    src_port: black_box(0),
                    dst_port: black_box(0),
                    protocol: black_box(6),
                    zone: 0,
                };
                let conntrack = dp.conntrack_mut();
                if let Some((id, _)) = conntrack.lookup(&key, now) {
                    black_box(conntrack.remove(id));
                }
            }
        }
    }

    /// A service with its backends and frontend.
    fn update_service(dp: &mut Datapath<'static>) {
        let services = dp.services_mut();
        let id = ServiceId(black_box(0));
        let config = ServiceConfig {
            affinity: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
        };
        black_box(services.upsert_service(id, config)).ok();
        let backend = Backend {
            addr: IpAddr::V4(ip()),
            port: black_box(8080),
            node: NodeId(black_box(2)),
            conditions: Conditions::READY,
        };
        let backends = black_box([backend; 8]);
        let n = black_box(8usize).min(backends.len());
        black_box(services.set_backends(id, &backends[..n])).ok();
        let frontend = Frontend {
            addr: IpAddr::V4(ip()),
            port: black_box(80),
            protocol: 6,
            kind: FrontendKind::ClusterIp,
            service: id,
        };
        black_box(services.add_frontend(frontend)).ok();
    }

    /// A recompiled policy for one local pod: one ingress rule from two identities on
    /// one port.
    fn update_policy(dp: &mut Datapath<'static>) {
        let t = dp.policy_mut();
        t.clear();
        let ids = black_box([Identity(1), Identity(2)]);
        let spec = PeerSpec {
            identities: &ids,
            ..PeerSpec::default()
        };
        let (Ok(peers), Ok(ports)) = (
            t.add_peer_set(&spec),
            t.add_port_set(&[PortRange::single(PortProtocol::Tcp, black_box(8080))]),
        ) else {
            return;
        };
        let rule = RuleSpec {
            policy: PolicyId(black_box(7)),
            index: 0,
            peers,
            only: None,
            ports,
        };
        if t.push_rule(&rule).is_err() {
            return;
        }
        let ingress = t.finish_rule_set(Some(PolicyId(7)));
        let policy = EndpointPolicy {
            ingress,
            egress: podwire_core::policy::DirPolicy::OPEN,
        };
        if let Ok(endpoint) = t.add_endpoint_policy(policy) {
            let pod = IpAddr::V4(ip());
            black_box(t.set_identity(pod, Some(Identity(black_box(3))))).ok();
            black_box(t.set_endpoint(pod, Some(endpoint))).ok();
        }
    }
}

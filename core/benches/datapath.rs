//! The datapath end to end: ns per packet through `Datapath::process` on established
//! cross-node TCP flows, on a node with realistic tables.
//!
//! The node under test (node 1, block 10.244.0.0/24, underlay 192.168.0.1) has 100 pods
//! (ports 1–100; port 0 is the host, port 101 a raw underlay device), routes and VTEPs
//! of 100 remote nodes (block 10.244.k.0/24, underlay 192.168.1.k), 100 ClusterIP
//! services with 3 backends each (Maglev tables of at most 4093 entries, 509 for 3
//! backends), NetworkPolicy (identities for all
//! 10 100 pods of the cluster, half the local pods isolated for ingress and a quarter
//! for egress by rules that admit the benchmark's traffic) and a conntrack of 65 536
//! entries holding 10 000 live connections. Each connection is a local pod's TCP
//! connection to a pod on a remote node, opened by a real handshake through the
//! datapath (SYN out, SYN-ACK in over the overlay, ACK out), so it is ESTABLISHED with
//! its policy verdict cached.
//!
//! Cases (one JSON line each; `flows` connections are visited in a fixed pseudo-random
//! order, one packet each, round after round):
//!
//! * `tx`: a 1400-byte TCP segment (ACK|PSH) from the local pod: parse → anti-spoofing
//!   → conntrack hit → route → TTL/MAC rewrite → VXLAN encapsulation into the headroom.
//! * `rx_socket`: the remote pod's 1400-byte segment as the payload of a VXLAN UDP
//!   datagram (`Ingress::Underlay`, the Linux agent's socket): VXLAN header and VNI
//!   check → VTEP lookup of the sender → parse → inner-source check → conntrack hit
//!   (reply direction) → route → TTL/MAC rewrite → deliver to the pod's port.
//! * `rx_raw`: the same as a whole outer Ethernet/IPv4/UDP/VXLAN frame on the raw
//!   underlay port (full outer header validation, UDP checksum zero as sent by
//!   podwire and flannel).
//!
//! Each case runs twice: one frame per `Datapath::process` call (`mode = "single"`)
//! and [`BURST`] frames per `Datapath::process_burst` call (`mode = "burst"`), which
//! reads every frame's conntrack bucket and entry before processing the first, so the
//! cache misses of the burst overlap. Both visit the connections in the same order.
//! At 1 flow a burst is 32 buffers holding the same connection's frame, as a shell's
//! receive ring would.
//!
//! `process` rewrites the frame in place, so every packet must start from the original
//! bytes. Two ways are measured, and the reset is also timed alone:
//!
//! * `reset = "headers"`: each connection has its own buffer; before each packet the
//!   bytes `process` may change (the inner Ethernet/IPv4/TCP headers, plus the VXLAN
//!   header for the socket case and the outer headers for the raw case: 54, 62 and
//!   104 bytes) are restored from a pristine copy. The payload is never written by
//!   `process` (the bench checks this), so this is an exact reset. This is the
//!   headline figure, *including* the reset.
//! * `reset = "copy"`: the whole frame is copied from the connection's pristine copy
//!   into one reused buffer (what a shell that copies from a ring would do).
//! * `*_only` cases time the reset alone; the datapath's own cost is the difference.
//!
//! Timing: `ROUNDS` rounds per case, cases interleaved round by round; min and median
//! ns per packet. The last line is the summary; its `tx_ns_per_packet` and
//! `rx_ns_per_packet` are the minimum over rounds of the 10 000-connection
//! `headers` case (rx: the socket ingress), reset included, one frame at a time; the
//! `burst_*` figures are the same cases through `process_burst`.
//!
//! Instructions per packet (this machine's timings are noisy): run the bench binary
//! under `valgrind --tool=callgrind` twice with one case selected and two packet
//! counts, and divide the difference of the instruction totals by the difference of
//! the packets processed (see the README).
//!
//! Run: `cargo bench -p podwire-core --bench datapath`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant as WallClock;

use podwire_core::conntrack;
use podwire_core::datapath::{
    Action, BurstFrame, Datapath, DatapathConfig, Ingress, PortKind, Span, HEADROOM,
};
use podwire_core::ids::{NodeId, PortId};
use podwire_core::policy::{
    DirPolicy, EndpointPolicy, Identity, PeerSpec, PolicyId, PortProtocol, PortRange, RuleSpec,
};
use podwire_core::route::{Ipv4Prefix, NextHop, RouteLayout};
use podwire_core::service::{Backend, FrontendKind, ServiceId};
use podwire_core::vxlan::{Vtep, VxlanConfig, IPV4_OVERHEAD};
use podwire_core::wire::EthernetAddress;
use podwire_core::Instant;
use podwire_testkit::{add_tcp_service, ready_backend, NodeStore, TableSizes};

const PODS: usize = 100;
const NODES: usize = 100;
const SERVICES: usize = 100;
const BACKENDS_PER_SERVICE: usize = 3;
const CONNTRACK_ENTRIES: usize = 65_536;
const FLOWS: usize = 10_000;
const PAYLOAD: usize = 1400;
const MAGLEV_SIZE: u32 = 4093;
const ROUNDS: usize = 15;
/// Frames per `process_burst` call in the burst cases.
const BURST: usize = 32;

const HOST: PortId = PortId(0);
const UNDERLAY_PORT: PortId = PortId(PODS as u16 + 1);
const ROUTER_MAC: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]);
const UNDERLAY_MAC: EthernetAddress = EthernetAddress([0x02, 0xbb, 0, 0, 0, 1]);
const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0xcc, 0, 0, 0, 1]);
const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const T0: Instant = Instant::from_micros_const(1_000_000_000);

/// Bytes `process` may rewrite in a TX or delivered frame: Ethernet + IPv4 + TCP.
const INNER_HEADERS: usize = 14 + 20 + 20;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

fn local_pod(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 2 + i as u8)
}

fn pod_mac(i: usize) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, 2 + i as u8])
}

fn remote_pod(node: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 2 + i as u8)
}

fn remote_underlay(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, node as u8)
}

fn remote_router_mac(node: usize) -> EthernetAddress {
    EthernetAddress([0x02, 0xaa, 0, 0, 1, node as u8])
}

fn remote_underlay_mac(node: usize) -> EthernetAddress {
    EthernetAddress([0x02, 0xbb, 0, 0, 1, node as u8])
}

/// The identity of a pod (its "app" label): 50 apps spread over the cluster.
fn identity_of(pod_index: usize) -> Identity {
    Identity(1 + (pod_index % 50) as u32)
}

/// The node under test with realistic tables (see the module documentation).
fn node_under_test() -> Datapath<'static> {
    let prefixes = 1 + PODS + NODES;
    let mut vxlan = VxlanConfig::new(IpAddr::V4(UNDERLAY_IP), UNDERLAY_MAC);
    vxlan.underlay_mtu = 1500;
    let config = DatapathConfig {
        node: NodeId(1),
        router_mac: ROUTER_MAC,
        gateway: GATEWAY,
        pod_cidr: Ipv4Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 24).unwrap(),
        vxlan,
        flow_seed: 7,
    };
    let sizes = TableSizes {
        ports: PODS + 2,
        route_direct_bits: RouteLayout::suggested_direct_bits(prefixes),
        routes: prefixes,
        route_gateways: 4,
        vteps: NODES + 1,
        services: SERVICES,
        frontends: 2 * SERVICES,
        backends: SERVICES * BACKENDS_PER_SERVICE,
        backends_per_service: 16,
        max_maglev: MAGLEV_SIZE,
        maglev_entries: SERVICES * MAGLEV_SIZE as usize,
        affinity: 256,
        connections: CONNTRACK_ENTRIES,
        addresses: (PODS + NODES * PODS) * 8 / 7 + 64,
        endpoint_policies: 64,
        rules: 256,
        policy_ports: 256,
        peers: 1024,
        prefixes: 16,
    };
    let tables = NodeStore::leak(sizes, NodeId(1)).unwrap();
    let mut dp = Datapath::new(config, tables);

    dp.ports_mut()
        .set(HOST, PortKind::Host { mac: HOST_MAC })
        .unwrap();
    dp.ports_mut()
        .set(UNDERLAY_PORT, PortKind::Underlay)
        .unwrap();
    dp.routes_mut()
        .insert(Ipv4Prefix::host(GATEWAY), NextHop::Host)
        .unwrap();
    for i in 0..PODS {
        let port = PortId(1 + i as u16);
        dp.ports_mut()
            .set(
                port,
                PortKind::Pod {
                    ip: local_pod(i),
                    mac: pod_mac(i),
                },
            )
            .unwrap();
        dp.routes_mut()
            .insert(Ipv4Prefix::host(local_pod(i)), NextHop::Port(port))
            .unwrap();
    }
    for k in 1..=NODES {
        dp.vteps_mut()
            .insert(Vtep {
                node: NodeId(1 + k as u16),
                ip: IpAddr::V4(remote_underlay(k)),
                mac: remote_underlay_mac(k),
            })
            .unwrap();
        dp.routes_mut()
            .insert(
                Ipv4Prefix::new(Ipv4Addr::new(10, 244, k as u8, 0), 24).unwrap(),
                NextHop::Node(NodeId(1 + k as u16)),
            )
            .unwrap();
    }
    add_services(&mut dp);
    add_policy(&mut dp);
    dp
}

/// 100 ClusterIP services 10.96.0.s:80/TCP, each with 3 backend pods on remote nodes.
fn add_services(dp: &mut Datapath<'static>) {
    let services = dp.services_mut();
    for s in 0..SERVICES {
        let backends: Vec<Backend> = (0..BACKENDS_PER_SERVICE)
            .map(|b| {
                let node = 1 + (s * 7 + b * 13) % NODES;
                ready_backend(
                    remote_pod(node, (s + b) % PODS),
                    8080,
                    NodeId(1 + node as u16),
                )
            })
            .collect();
        let cluster_ip = Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250) as u8 + 1);
        add_tcp_service(
            services,
            ServiceId(s as u16),
            &backends,
            &[(cluster_ip, 80, FrontendKind::ClusterIp)],
        )
        .unwrap();
    }
}

/// Identities for every pod of the cluster; local pods with an even index isolated for
/// ingress (TCP 8080 from apps 1–25, TCP 9090 from any pod), those with index ≡ 1 mod 4
/// also isolated for egress (TCP 8080 and 9090 to any pod, UDP 53 anywhere).
fn add_policy(dp: &mut Datapath<'static>) {
    let t = dp.policy_mut();
    let apps: Vec<Identity> = (1..=25).map(Identity).collect();
    let some_apps = t
        .add_peer_set(&PeerSpec {
            identities: &apps,
            ..PeerSpec::default()
        })
        .unwrap();
    let any_pod = t
        .add_peer_set(&PeerSpec {
            any_pod: true,
            ..PeerSpec::default()
        })
        .unwrap();
    let anywhere = t
        .add_peer_set(&PeerSpec {
            any: true,
            ..PeerSpec::default()
        })
        .unwrap();
    let tcp8080 = t
        .add_port_set(&[PortRange::single(PortProtocol::Tcp, 8080)])
        .unwrap();
    let tcp9090 = t
        .add_port_set(&[PortRange::single(PortProtocol::Tcp, 9090)])
        .unwrap();
    let dns = t
        .add_port_set(&[PortRange::single(PortProtocol::Udp, 53)])
        .unwrap();
    let web = t
        .add_port_set(&[
            PortRange::single(PortProtocol::Tcp, 8080),
            PortRange::single(PortProtocol::Tcp, 9090),
        ])
        .unwrap();
    for (index, (peers, ports)) in [(some_apps, tcp8080), (any_pod, tcp9090)]
        .into_iter()
        .enumerate()
    {
        t.push_rule(&RuleSpec {
            policy: PolicyId(1),
            index: index as u16,
            peers,
            only: None,
            ports,
        })
        .unwrap();
    }
    let ingress = t.finish_rule_set(Some(PolicyId(1)));
    for (index, (peers, ports)) in [(any_pod, web), (anywhere, dns)].into_iter().enumerate() {
        t.push_rule(&RuleSpec {
            policy: PolicyId(2),
            index: index as u16,
            peers,
            only: None,
            ports,
        })
        .unwrap();
    }
    let egress = t.finish_rule_set(Some(PolicyId(2)));
    let in_only = t
        .add_endpoint_policy(EndpointPolicy {
            ingress,
            egress: DirPolicy::OPEN,
        })
        .unwrap();
    let both = t
        .add_endpoint_policy(EndpointPolicy { ingress, egress })
        .unwrap();
    let out_only = t
        .add_endpoint_policy(EndpointPolicy {
            ingress: DirPolicy::OPEN,
            egress,
        })
        .unwrap();
    for i in 0..PODS {
        let ip = IpAddr::V4(local_pod(i));
        t.set_identity(ip, Some(identity_of(i))).unwrap();
        let endpoint = match i % 4 {
            0 => Some(in_only),
            1 => Some(out_only),
            2 => Some(both),
            _ => None,
        };
        t.set_endpoint(ip, endpoint).unwrap();
    }
    for k in 1..=NODES {
        for i in 0..PODS {
            let ip = IpAddr::V4(remote_pod(k, i));
            t.set_identity(ip, Some(identity_of(k * PODS + i))).unwrap();
        }
    }
}

/// An Ethernet/IPv4/TCP frame (checksums correct) with `payload_len` bytes of payload.
#[allow(clippy::too_many_arguments)]
fn tcp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut f = vec![0u8; INNER_HEADERS + payload_len];
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 20 + payload_len) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    let c = !fold(sum(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let t = 34;
    f[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    f[t + 4..t + 8].copy_from_slice(&1000u32.to_be_bytes());
    f[t + 8..t + 12].copy_from_slice(&2000u32.to_be_bytes());
    f[t + 12] = 5 << 4;
    f[t + 13] = flags;
    f[t + 14..t + 16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in f[t + 20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let tcp_len = (20 + payload_len) as u64;
    let pseudo = u64::from(u32::from_be_bytes(src.octets()))
        + u64::from(u32::from_be_bytes(dst.octets()))
        + 6
        + tcp_len;
    let c = !fold(pseudo + sum(&f[t..]));
    f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// The ones'-complement sum of big-endian 16-bit words, unfolded.
fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A frame as a remote node's datapath sends it to us: encapsulated by `node`'s
/// VXLAN endpoint. Returns the whole outer frame.
fn from_overlay(node: usize, inner: &[u8], ident: u16) -> Vec<u8> {
    let mut c = VxlanConfig::new(IpAddr::V4(remote_underlay(node)), remote_underlay_mac(node));
    c.underlay_mtu = 1500;
    let us = Vtep {
        node: NodeId(1),
        ip: IpAddr::V4(UNDERLAY_IP),
        mac: UNDERLAY_MAC,
    };
    let mut buf = vec![0u8; IPV4_OVERHEAD + inner.len()];
    buf[IPV4_OVERHEAD..].copy_from_slice(inner);
    let e = c
        .encapsulate(&us, &mut buf, IPV4_OVERHEAD, inner.len(), ident)
        .unwrap();
    buf[e.frame()].to_vec()
}

/// Buffer slot size of the pools: headroom + the largest frame (1504) + slack.
const STRIDE: usize = 2048;
/// Record size of the compact pristine-header copies (the largest reset is 104).
const HEADER_STRIDE: usize = 128;

/// One kind of input frame for every connection, laid out like a shell's buffer pool:
/// connection `f`'s buffer is `bytes[f * STRIDE..(f + 1) * STRIDE]`, its frame at
/// offset [`HEADROOM`]. `pristine` holds the original frames in the same layout (the
/// source of the full copy), `headers` their first `reset_len` bytes, compactly (the
/// source of the header reset).
struct Pool {
    bytes: Vec<u8>,
    pristine: Vec<u8>,
    headers: Vec<u8>,
    lens: Vec<usize>,
    /// How many leading frame bytes `process` may change.
    reset_len: usize,
}

impl Pool {
    fn new(reset_len: usize) -> Pool {
        assert!(reset_len <= HEADER_STRIDE);
        Pool {
            bytes: Vec::new(),
            pristine: Vec::new(),
            headers: Vec::new(),
            lens: Vec::new(),
            reset_len,
        }
    }

    fn push(&mut self, frame: &[u8]) {
        assert!(HEADROOM + frame.len() <= STRIDE);
        let mut slot = vec![0u8; STRIDE];
        slot[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.bytes.extend_from_slice(&slot);
        self.pristine.extend_from_slice(&slot);
        let mut header = [0u8; HEADER_STRIDE];
        header[..self.reset_len].copy_from_slice(&frame[..self.reset_len]);
        self.headers.extend_from_slice(&header);
        self.lens.push(frame.len());
    }

    /// Connection `f`'s buffer and the frame's span in it.
    #[inline(always)]
    fn slot(&mut self, f: usize) -> (&mut [u8], Span) {
        let span = Span {
            start: HEADROOM,
            len: self.lens[f],
        };
        (&mut self.bytes[f * STRIDE..(f + 1) * STRIDE], span)
    }

    /// Restores the bytes of connection `f`'s frame that `process` may have changed.
    #[inline(always)]
    fn reset_headers(&mut self, f: usize) {
        let n = self.reset_len;
        let at = f * STRIDE + HEADROOM;
        self.bytes[at..at + n].copy_from_slice(&self.headers[f * HEADER_STRIDE..][..n]);
    }

    /// A pool of `n` buffers, each holding connection `f`'s frame (a receive ring
    /// full of one connection's packets).
    fn replicas(&self, f: usize, n: usize) -> Pool {
        let mut pool = Pool::new(self.reset_len);
        for _ in 0..n {
            pool.push(self.pristine(f));
        }
        pool
    }

    /// Connection `f`'s original frame.
    #[inline(always)]
    fn pristine(&self, f: usize) -> &[u8] {
        &self.pristine[f * STRIDE + HEADROOM..][..self.lens[f]]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Tx,
    RxSocket,
    RxRaw,
}

impl Dir {
    const ALL: [Dir; 3] = [Dir::Tx, Dir::RxSocket, Dir::RxRaw];

    fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::RxSocket => "rx_socket",
            Dir::RxRaw => "rx_raw",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// Restore the headers in the connection's own buffer, then process.
    Headers,
    /// Copy the whole frame into one reused buffer, then process.
    Copy,
    /// Only restore the headers (baseline).
    HeadersOnly,
    /// Only copy the frame (baseline).
    CopyOnly,
}

impl Reset {
    fn name(self) -> &'static str {
        match self {
            Reset::Headers => "headers",
            Reset::Copy => "copy",
            Reset::HeadersOnly => "headers_only",
            Reset::CopyOnly => "copy_only",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One frame per `process` call.
    Single,
    /// [`BURST`] frames per `process_burst` call.
    Burst,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Burst => "burst",
        }
    }
}

#[derive(Clone, Copy)]
struct Case {
    dir: Dir,
    reset: Reset,
    flows: usize,
    mode: Mode,
}

/// The buffers of each burst of a case with `flows` connections: burst `k` covers
/// visiting positions `k·BURST ..`, and lists its (connection, position in the burst)
/// pairs by connection, so the burst's buffers can be borrowed from the pool in one
/// pass. With one connection, the bursts use a ring of [`BURST`] replica buffers.
struct BurstPlan {
    flows: usize,
    bursts: Vec<Vec<(usize, usize)>>,
}

impl BurstPlan {
    fn new(order: &[usize], flows: usize) -> BurstPlan {
        let count = if flows == 1 {
            1
        } else {
            assert!(flows >= BURST);
            // Bursts until the visiting positions come round to the start again.
            let mut gcd = (flows, BURST);
            while gcd.1 != 0 {
                gcd = (gcd.1, gcd.0 % gcd.1);
            }
            flows / gcd.0
        };
        let bursts = (0..count)
            .map(|k| {
                let mut b: Vec<(usize, usize)> = (0..BURST)
                    .map(|j| match flows {
                        1 => (j, j),
                        _ => (order[(k * BURST + j) % flows], j),
                    })
                    .collect();
                b.sort_unstable();
                b
            })
            .collect();
        BurstPlan { flows, bursts }
    }
}

/// Where connection `f`'s packets come in: the local pod's port (TX) and the remote
/// node's underlay address (RX through the socket).
#[derive(Clone, Copy)]
struct FlowIngress {
    port: PortId,
    source: IpAddr,
}

struct Bench {
    dp: Datapath<'static>,
    /// Input frames by [`Dir`].
    pools: [Pool; 3],
    /// [`BURST`] buffers of the first visited connection's frame, by [`Dir`].
    replicas: [Pool; 3],
    /// The burst plans by number of flows.
    plans: Vec<BurstPlan>,
    ingress: Vec<FlowIngress>,
    /// The visiting order: a fixed pseudo-random permutation of the connections.
    order: Vec<usize>,
    scratch: Vec<u8>,
    now: Instant,
    /// Packets whose action was not the expected one (must stay 0).
    unexpected: u64,
}

impl Bench {
    #[inline(always)]
    fn ingress(&self, dir: Dir, f: usize) -> Ingress {
        Self::ingress_of(self.ingress[f], dir)
    }

    #[inline(always)]
    fn ingress_of(flow: FlowIngress, dir: Dir) -> Ingress {
        match dir {
            Dir::Tx => Ingress::Port(flow.port),
            Dir::RxSocket => Ingress::Underlay {
                source: flow.source,
                source_port: 50000,
            },
            Dir::RxRaw => Ingress::Port(UNDERLAY_PORT),
        }
    }

    fn expected(dir: Dir, action: &Action) -> bool {
        match dir {
            Dir::Tx => matches!(action, Action::Encap(_)),
            Dir::RxSocket | Dir::RxRaw => matches!(action, Action::Deliver { .. }),
        }
    }

    /// One packet of connection number `i` (in visiting order) of `case`.
    #[inline(always)]
    fn packet(&mut self, case: Case, i: usize) {
        let f = self.order[i % case.flows.min(self.order.len())];
        let ingress = self.ingress(case.dir, f);
        let now = self.now;
        let pool = &mut self.pools[case.dir as usize];
        let action = match case.reset {
            Reset::Headers => {
                pool.reset_headers(f);
                let (buf, span) = pool.slot(f);
                self.dp.process(now, ingress, buf, span)
            }
            Reset::Copy => {
                let frame = pool.pristine(f);
                let len = frame.len();
                self.scratch[HEADROOM..HEADROOM + len].copy_from_slice(frame);
                let span = Span {
                    start: HEADROOM,
                    len,
                };
                self.dp.process(now, ingress, &mut self.scratch, span)
            }
            Reset::HeadersOnly => {
                pool.reset_headers(f);
                black_box(pool.slot(f));
                return;
            }
            Reset::CopyOnly => {
                let frame = pool.pristine(f);
                let len = frame.len();
                self.scratch[HEADROOM..HEADROOM + len].copy_from_slice(frame);
                black_box(&mut self.scratch);
                return;
            }
        };
        if !Self::expected(case.dir, &action) {
            self.unexpected += 1;
        }
        black_box(action);
    }

    /// Burst number `k` of `case` (header reset and `process_burst`; the copy and
    /// reset-only cases are single-frame only).
    #[inline(always)]
    fn burst(&mut self, case: Case, k: usize) {
        let Some(plan) = self.plans.iter().find(|p| p.flows == case.flows) else {
            panic!("no burst plan for {} flows", case.flows);
        };
        let plan = &plan.bursts[k % plan.bursts.len()];
        let pool = match case.flows {
            1 => &mut self.replicas[case.dir as usize],
            _ => &mut self.pools[case.dir as usize],
        };
        for &(f, _) in plan {
            pool.reset_headers(f);
        }
        let mut frames: heapless::Vec<BurstFrame<'_>, BURST> = heapless::Vec::new();
        let mut chunks = pool.bytes.chunks_mut(STRIDE);
        let mut next = 0;
        for &(f, j) in plan {
            let buf = chunks.nth(f - next).expect("a buffer per connection");
            next = f + 1;
            let flow = self.order[(k * BURST + j) % case.flows];
            let ingress = Self::ingress_of(self.ingress[flow], case.dir);
            let span = Span {
                start: HEADROOM,
                len: pool.lens[f],
            };
            if frames.push(BurstFrame::new(ingress, buf, span)).is_err() {
                panic!("a burst holds {BURST} frames");
            }
        }
        self.dp.process_burst(self.now, &mut frames);
        for f in &frames {
            match f.action {
                Some(a) if Self::expected(case.dir, &a) => {}
                _ => self.unexpected += 1,
            }
        }
        black_box(&frames);
    }

    /// `packets` packets of `case` (rounded up to whole bursts in burst mode).
    #[inline(always)]
    fn run(&mut self, case: Case, packets: usize) {
        match case.mode {
            Mode::Single => {
                for i in 0..packets {
                    self.packet(case, i);
                }
            }
            Mode::Burst => {
                for k in 0..packets.div_ceil(BURST) {
                    self.burst(case, k);
                }
            }
        }
    }

    /// One timed round of `case`: the function a profiler counts
    /// (`--toggle-collect` and `--dump-after` of callgrind name it).
    #[inline(never)]
    fn measured_round(&mut self, case: Case, packets: usize) {
        self.run(case, packets);
    }

    /// Times `cases`, interleaved round by round; returns (min, median) ns per packet.
    fn time(&mut self, cases: &[Case], packets: usize, rounds: usize) -> Vec<(f64, f64)> {
        let packets = packets.div_ceil(BURST) * BURST;
        let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
        for case in cases {
            // Warm-up.
            self.run(*case, packets.min(case.flows.max(1000)));
        }
        for _ in 0..rounds {
            for (c, case) in cases.iter().enumerate() {
                self.now += podwire_core::Duration::from_millis(1);
                let t = WallClock::now();
                self.measured_round(*case, packets);
                samples[c].push(t.elapsed().as_nanos() as f64 / packets as f64);
            }
        }
        samples
            .into_iter()
            .map(|mut s| {
                s.sort_by(|a, b| a.partial_cmp(b).unwrap());
                (s[0], s[s.len() / 2])
            })
            .collect()
    }
}

/// Processes one frame in a fresh buffer at `T0` and returns the action.
fn once(dp: &mut Datapath<'static>, ingress: Ingress, frame: &[u8]) -> Action {
    let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let span = Span {
        start: HEADROOM,
        len: frame.len(),
    };
    dp.process(T0, ingress, &mut buf, span)
}

/// Sets up the node and opens every connection with a handshake through the datapath.
fn setup() -> Bench {
    let mut dp = node_under_test();
    let mut pools = [
        Pool::new(INNER_HEADERS),
        Pool::new(8 + INNER_HEADERS),
        Pool::new(IPV4_OVERHEAD + INNER_HEADERS),
    ];
    let mut ingress = Vec::with_capacity(FLOWS);
    for f in 0..FLOWS {
        let p = f % PODS;
        let node = 1 + (f / PODS) % NODES;
        let remote = remote_pod(node, (f * 7 + f / PODS) % PODS);
        let local = local_pod(p);
        let sport = 20_000 + (f / PODS) as u16;
        let dport = if p % 3 == 0 { 9090 } else { 8080 };
        let port = PortId(1 + p as u16);
        let out = |flags, len| {
            tcp_frame(
                pod_mac(p),
                ROUTER_MAC,
                local,
                remote,
                sport,
                dport,
                flags,
                len,
            )
        };
        let back = |flags, len| {
            tcp_frame(
                remote_router_mac(node),
                ROUTER_MAC,
                remote,
                local,
                dport,
                sport,
                flags,
                len,
            )
        };
        // The handshake.
        let a = once(&mut dp, Ingress::Port(port), &out(TCP_SYN, 0));
        assert!(matches!(a, Action::Encap(_)), "SYN of flow {f}: {a:?}");
        let syn_ack = from_overlay(node, &back(TCP_SYN | TCP_ACK, 0), 1);
        let a = once(&mut dp, Ingress::Port(UNDERLAY_PORT), &syn_ack);
        assert!(
            matches!(a, Action::Deliver { port: p2, .. } if p2 == port),
            "SYN-ACK of flow {f}: {a:?}"
        );
        let a = once(&mut dp, Ingress::Port(port), &out(TCP_ACK, 0));
        assert!(matches!(a, Action::Encap(_)), "ACK of flow {f}: {a:?}");

        // The data packets the benchmark sends.
        let raw = from_overlay(node, &back(TCP_ACK | TCP_PSH, PAYLOAD), f as u16);
        pools[Dir::Tx as usize].push(&out(TCP_ACK | TCP_PSH, PAYLOAD));
        pools[Dir::RxSocket as usize].push(&raw[42..]);
        pools[Dir::RxRaw as usize].push(&raw);
        ingress.push(FlowIngress {
            port,
            source: IpAddr::V4(remote_underlay(node)),
        });
    }
    let ct = &dp.tables().conntrack;
    assert_eq!(ct.len(), FLOWS);
    assert!(ct
        .iter()
        .all(|(_, e)| e.state() == conntrack::ConnState::Tcp(conntrack::TcpState::Established)));
    assert_eq!(dp.stats().dropped, 0);

    // A fixed pseudo-random visiting order (xorshift-driven Fisher–Yates).
    let mut order: Vec<usize> = (0..FLOWS).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..FLOWS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let first = order[0];
    let replicas = [
        pools[0].replicas(first, BURST),
        pools[1].replicas(first, BURST),
        pools[2].replicas(first, BURST),
    ];
    let plans = [FLOWS, 1000, 1]
        .iter()
        .map(|&flows| BurstPlan::new(&order, flows))
        .collect();
    let mut bench = Bench {
        dp,
        pools,
        replicas,
        plans,
        ingress,
        order,
        scratch: vec![0u8; STRIDE],
        now: T0,
        unexpected: 0,
    };
    check_reset_is_exact(&mut bench);
    bench
}

/// `process` must leave every byte past the reset region as it was: otherwise the
/// header reset would not give each packet its original frame.
fn check_reset_is_exact(b: &mut Bench) {
    for dir in Dir::ALL {
        for f in [0, 1, FLOWS / 2, FLOWS - 1] {
            let ingress = b.ingress(dir, f);
            let pool = &mut b.pools[dir as usize];
            pool.reset_headers(f);
            let (buf, span) = pool.slot(f);
            let action = b.dp.process(T0, ingress, buf, span);
            assert!(Bench::expected(dir, &action), "{} flow {f}", dir.name());
            let n = pool.reset_len;
            let (buf, span) = pool.slot(f);
            let after = buf[span.start + n..span.start + span.len].to_vec();
            assert_eq!(
                &after[..],
                &pool.pristine(f)[n..],
                "{}: process wrote past the reset region",
                dir.name()
            );
        }
    }
}

fn main() {
    let t = WallClock::now();
    let mut b = setup();
    eprintln!(
        "set-up: {} pods, {} nodes, {} services, conntrack {} entries with {} connections ({:.1} s)",
        PODS,
        NODES,
        SERVICES,
        CONNTRACK_ENTRIES,
        b.dp.tables().conntrack.len(),
        t.elapsed().as_secs_f64()
    );
    let packets = std::env::var("DATAPATH_BENCH_PACKETS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100_000);
    let rounds = std::env::var("DATAPATH_BENCH_ROUNDS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let mut summary = (0.0, 0.0, 0.0);
    let mut burst_summary = (0.0, 0.0, 0.0);
    // For profiling: `DATAPATH_BENCH_FILTER=tx/1/headers/single,rx_raw/1/copy/single`
    // runs only the cases named (dir/flows/reset/mode); `DATAPATH_BENCH_PACKETS` sets
    // the packets per round, `DATAPATH_BENCH_ROUNDS` the rounds.
    let filter = std::env::var("DATAPATH_BENCH_FILTER").unwrap_or_default();
    for flows in [FLOWS, 1000, 1] {
        let mut cases = Vec::new();
        for dir in Dir::ALL {
            for (reset, mode) in [
                (Reset::Headers, Mode::Single),
                (Reset::Headers, Mode::Burst),
                (Reset::Copy, Mode::Single),
                (Reset::HeadersOnly, Mode::Single),
                (Reset::CopyOnly, Mode::Single),
            ] {
                let name = format!("{}/{}/{}/{}", dir.name(), flows, reset.name(), mode.name());
                if filter.is_empty() || filter.split(',').any(|f| f == name) {
                    cases.push(Case {
                        dir,
                        reset,
                        flows,
                        mode,
                    });
                }
            }
        }
        if cases.is_empty() {
            continue;
        }
        let results = b.time(&cases, packets, rounds);
        for (case, (min, median)) in cases.iter().zip(&results) {
            println!(
                "{{\"case\":\"{}\",\"flows\":{},\"reset\":\"{}\",\"mode\":\"{}\",\"ns_per_packet_min\":{:.2},\"ns_per_packet_median\":{:.2}}}",
                case.dir.name(),
                case.flows,
                case.reset.name(),
                case.mode.name(),
                min,
                median
            );
            if case.flows == FLOWS && case.reset == Reset::Headers {
                let s = match case.mode {
                    Mode::Single => &mut summary,
                    Mode::Burst => &mut burst_summary,
                };
                match case.dir {
                    Dir::Tx => s.0 = *min,
                    Dir::RxSocket => s.1 = *min,
                    Dir::RxRaw => s.2 = *min,
                }
            }
        }
    }
    assert_eq!(b.unexpected, 0, "packets with an unexpected action");
    assert_eq!(b.dp.stats().dropped, 0);
    println!(
        "{{\"bench\":\"datapath\",\"tx_ns_per_packet\":{:.2},\"rx_ns_per_packet\":{:.2},\"rx_raw_ns_per_packet\":{:.2},\"burst_tx_ns_per_packet\":{:.2},\"burst_rx_ns_per_packet\":{:.2},\"burst_rx_raw_ns_per_packet\":{:.2},\"burst\":{BURST},\"flows\":{},\"reset\":\"headers\",\"stat\":\"min\"}}",
        summary.0, summary.1, summary.2, burst_summary.0, burst_summary.1, burst_summary.2, FLOWS
    );
}

//! Scenario tests: two nodes' datapaths driven purely through `Datapath::process`.
//!
//! Node 1 (block 10.244.1.0/24, underlay 192.0.2.1) has pods A (10.244.1.2, port 1)
//! and C (10.244.1.3, port 2); node 2 (block 10.244.2.0/24, underlay 192.0.2.2) has
//! pod B (10.244.2.2, port 1). Port 0 is each node's host port. The addresses are
//! only bytes in buffers: nothing here touches a network.

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use core::net::{IpAddr, Ipv4Addr};

use heapless::spsc::Queue;
use smoltcp::wire::{
    EthernetAddress, Icmpv4Message, Icmpv4Packet, IpAddress, Ipv4Packet, TcpPacket, UdpPacket,
};

use super::parse::tcp_flags::{ACK, SYN};
use super::test_frames::*;
use super::*;
use crate::conntrack::{self, Bucket, Entry};
use crate::maglev::{self, MaglevScratch};
use crate::policy::{
    DenyReason, DirPolicy, EndpointPolicy, Identity, IpSlot, PeerSpec, PolicyId, PolicyStorage,
    PortProtocol, PortRange, Prefix, Rule, RuleSpec,
};
use crate::route::{GatewaySlot, RouteEntry, RouteStorage, RouteTable, TrieNode};
use crate::service::{
    AffinitySlot, Backend, BackendSlot, Conditions, Frontend, FrontendKind, FrontendSlot,
    ServiceConfig, ServiceSlot, ServiceStorage, TrafficPolicy,
};
use crate::vxlan::{Vtep, VtepSlot};

const ROUTER1: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]);
const ROUTER2: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 2]);
const UNDERLAY_MAC1: EthernetAddress = EthernetAddress([0x02, 0xbb, 0, 0, 0, 1]);
const UNDERLAY_MAC2: EthernetAddress = EthernetAddress([0x02, 0xbb, 0, 0, 0, 2]);
const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0xcc, 0, 0, 0, 0]);
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 3];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const GW1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HOST: PortId = PortId(0);
const PORT_A: PortId = PortId(1);
const PORT_C: PortId = PortId(2);
const PORT_B: PortId = PortId(1);
const RAW_UNDERLAY: PortId = PortId(3);
const MAGLEV_SIZE: u32 = 251;
const T0: Instant = Instant::from_micros_const(1_000_000_000);

fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
    Box::leak(vec![value; n].into_boxed_slice())
}

fn prefix(a: Ipv4Addr, len: u8) -> Ipv4Prefix {
    Ipv4Prefix::new(a, len).unwrap()
}

/// A datapath with generous test-sized tables.
fn datapath(
    node: u16,
    block: Ipv4Addr,
    gateway: Ipv4Addr,
    underlay: Ipv4Addr,
) -> Datapath<'static> {
    let (router_mac, underlay_mac) = if node == 1 {
        (ROUTER1, UNDERLAY_MAC1)
    } else {
        (ROUTER2, UNDERLAY_MAC2)
    };
    let layout = RouteTable::<Ipv4Addr>::layout(8, 64, 4);
    let storage = DatapathStorage {
        ports: leak(None, 8),
        routes: RouteStorage {
            direct: leak(0u32, layout.direct),
            nodes: leak(TrieNode::default(), layout.nodes),
            leaves: leak(0u32, layout.leaves),
            routes: leak(RouteEntry::default(), layout.routes),
            gateways: leak(GatewaySlot::default(), layout.gateways),
        },
        vteps: leak(VtepSlot::EMPTY, 8),
        services: ServiceStorage {
            services: leak(ServiceSlot::EMPTY, 8),
            frontends: leak(FrontendSlot::EMPTY, 32),
            backends: leak(BackendSlot::EMPTY, 64),
            maglev: leak(0u16, 8 * MAGLEV_SIZE as usize),
            scratch: leak(MaglevScratch::ZERO, maglev::scratch_len(16)),
            affinity: leak(AffinitySlot::EMPTY, 64),
        },
        conntrack_buckets: leak(Bucket::EMPTY, conntrack::buckets_for(256)),
        conntrack_entries: leak(Entry::EMPTY, 256),
        policy: PolicyStorage {
            addresses: leak(IpSlot::EMPTY, 64),
            endpoint_policies: leak(EndpointPolicy::default(), 16),
            rules: leak(Rule::EMPTY, 32),
            ports: leak(PortRange::ANY, 32),
            peers: leak(Identity(0), 64),
            prefixes: leak(Prefix::EMPTY, 16),
        },
    };
    let tables = DatapathTables::new(
        storage,
        NodeId(node),
        MAGLEV_SIZE,
        conntrack::Config::default(),
    )
    .unwrap();
    let mut vxlan = VxlanConfig::new(IpAddr::V4(underlay), underlay_mac);
    vxlan.underlay_mtu = 1500;
    let config = DatapathConfig {
        node: NodeId(node),
        router_mac,
        gateway,
        pod_cidr: prefix(block, 24),
        vxlan,
        flow_seed: 7,
    };
    let mut dp = Datapath::new(config, tables);
    dp.ports_mut()
        .set(HOST, PortKind::Host { mac: HOST_MAC })
        .unwrap();
    dp.routes_mut()
        .insert(Ipv4Prefix::host(gateway), NextHop::Host)
        .unwrap();
    dp
}

fn add_pod(dp: &mut Datapath<'static>, port: PortId, ip: Ipv4Addr, mac: [u8; 6]) {
    dp.ports_mut()
        .set(
            port,
            PortKind::Pod {
                ip,
                mac: EthernetAddress(mac),
            },
        )
        .unwrap();
    dp.routes_mut()
        .insert(Ipv4Prefix::host(ip), NextHop::Port(port))
        .unwrap();
}

fn add_peer(
    dp: &mut Datapath<'static>,
    node: u16,
    block: Ipv4Addr,
    underlay: Ipv4Addr,
    mac: EthernetAddress,
) {
    dp.vteps_mut()
        .insert(Vtep {
            node: NodeId(node),
            ip: IpAddr::V4(underlay),
            mac,
        })
        .unwrap();
    dp.routes_mut()
        .insert(prefix(block, 24), NextHop::Node(NodeId(node)))
        .unwrap();
}

/// Node 1 with pods A and C, node 2 with pod B, each knowing the other.
fn cluster() -> (Datapath<'static>, Datapath<'static>) {
    let mut n1 = datapath(1, Ipv4Addr::new(10, 244, 1, 0), GW1, NODE1_IP);
    let mut n2 = datapath(2, Ipv4Addr::new(10, 244, 2, 0), GW2, NODE2_IP);
    add_pod(&mut n1, PORT_A, A, A_MAC);
    add_pod(&mut n1, PORT_C, C, C_MAC);
    add_pod(&mut n2, PORT_B, B, B_MAC);
    add_peer(&mut n1, 2, Ipv4Addr::new(10, 244, 2, 0), NODE2_IP, ROUTER2);
    add_peer(&mut n2, 1, Ipv4Addr::new(10, 244, 1, 0), NODE1_IP, ROUTER1);
    (n1, n2)
}

/// A service 10.96.0.10:80/TCP with `backends` (IP, node) on port 8080.
fn add_service(dp: &mut Datapath<'static>, backends: &[(Ipv4Addr, u16)]) {
    let services = dp.services_mut();
    let id = ServiceId(0);
    services
        .upsert_service(
            id,
            ServiceConfig {
                affinity: None,
                external_policy: TrafficPolicy::Cluster,
                internal_policy: TrafficPolicy::Cluster,
            },
        )
        .unwrap();
    let list: Vec<Backend> = backends
        .iter()
        .map(|(ip, node)| Backend {
            addr: IpAddr::V4(*ip),
            port: 8080,
            node: NodeId(*node),
            conditions: Conditions {
                ready: true,
                serving: true,
                terminating: false,
            },
        })
        .collect();
    services.set_backends(id, &list).unwrap();
    services
        .add_frontend(Frontend {
            addr: IpAddr::V4(SERVICE_IP),
            port: 80,
            protocol: 6,
            kind: FrontendKind::ClusterIp,
            service: id,
        })
        .unwrap();
}

struct Out {
    buf: Vec<u8>,
    action: Action,
}

impl Out {
    fn frame(&self) -> &[u8] {
        match self.action {
            Action::Deliver { frame, .. } | Action::Reply { frame } => &self.buf[frame.range()],
            Action::Encap(e) => &self.buf[e.outer_frame.range()],
            Action::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    fn ip(&self) -> Ipv4Packet<&[u8]> {
        let p = Ipv4Packet::new_checked(&self.frame()[14..]).unwrap();
        assert!(p.verify_checksum(), "IPv4 checksum");
        p
    }

    /// The inner frame's UDP payload for a UDP-socket shell.
    fn vxlan_payload(&self) -> (Vec<u8>, Span) {
        let Action::Encap(e) = self.action else {
            panic!("not encapsulated: {:?}", self.action)
        };
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&self.buf[e.udp_payload.range()]);
        (
            buf,
            Span {
                start: HEADROOM,
                len: e.udp_payload.len,
            },
        )
    }
}

/// The ingress of a VXLAN payload from the underlay address `source`.
fn underlay(source: IpAddr, source_port: u16) -> Ingress {
    Ingress::Underlay {
        source,
        source_port,
    }
}

fn run(dp: &mut Datapath<'static>, ingress: Ingress, (mut buf, span): (Vec<u8>, Span)) -> Out {
    let action = dp.process(T0, ingress, &mut buf, span);
    Out { buf, action }
}

fn tcp_from(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> (Vec<u8>, Span) {
    ipv4_frame(
        src_mac,
        ROUTER1.0,
        src,
        dst,
        6,
        64,
        &tcp(sport, dport, 1, 0, flags, b"hello"),
    )
}

/// B's SYN/ACK from port 8080 to A's port `dport`, as B sends it to node 2.
fn syn_ack_from_b(dport: u16) -> (Vec<u8>, Span) {
    ipv4_frame(
        B_MAC,
        ROUTER2.0,
        B,
        A,
        6,
        64,
        &tcp(8080, dport, 5, 2, SYN | ACK, b""),
    )
}

fn assert_tcp(out: &Out, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
    let ip = out.ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (src.0, dst.0));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        t.verify_checksum(&IpAddress::Ipv4(src.0), &IpAddress::Ipv4(dst.0)),
        "TCP checksum"
    );
    assert_eq!((t.src_port(), t.dst_port()), (src.1, dst.1));
}

#[test]
fn arp_is_answered_for_the_block_and_for_the_host() {
    let (mut n1, _) = cluster();
    let arp = |sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr| {
        let mut buf = vec![0u8; HEADROOM + 42];
        let f = &mut buf[HEADROOM..];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&sender_mac);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&sender_mac);
        f[28..32].copy_from_slice(&sender.octets());
        f[38..42].copy_from_slice(&target.octets());
        (
            buf,
            Span {
                start: HEADROOM,
                len: 42,
            },
        )
    };
    let out = run(&mut n1, Ingress::Port(PORT_A), arp(A_MAC, A, GW1));
    assert!(matches!(out.action, Action::Reply { .. }));
    assert_eq!(
        &out.frame()[22..28],
        &ROUTER1.0,
        "gateway is at the router MAC"
    );
    let out = run(&mut n1, Ingress::Port(PORT_A), arp(A_MAC, A, C));
    assert!(
        matches!(out.action, Action::Reply { .. }),
        "proxy ARP for a block neighbour"
    );
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        arp(A_MAC, A, Ipv4Addr::new(10, 9, 9, 9)),
    );
    assert_eq!(out.action, Action::Drop(DropReason::ArpNotAnswered));
    let out = run(&mut n1, Ingress::Port(PORT_A), arp(A_MAC, C, GW1));
    assert_eq!(out.action, Action::Drop(DropReason::SpoofedIp));
    let out = run(&mut n1, Ingress::Port(HOST), arp(HOST_MAC.0, GW1, A));
    assert!(
        matches!(out.action, Action::Reply { .. }),
        "host resolves pods"
    );
    let out = run(&mut n1, Ingress::Port(HOST), arp(HOST_MAC.0, A, GW1));
    assert_eq!(
        out.action,
        Action::Drop(DropReason::ArpNotAnswered),
        "the host owns the gateway"
    );
}

#[test]
fn pods_cannot_spoof_their_mac_or_ip() {
    let (mut n1, _) = cluster();
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(C_MAC, A, C, 1000, 80, SYN),
    );
    assert_eq!(out.action, Action::Drop(DropReason::SpoofedMac));
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, C, B, 1000, 80, SYN),
    );
    assert_eq!(out.action, Action::Drop(DropReason::SpoofedIp));
    assert_eq!(n1.drops().get(DropReason::SpoofedIp), 1);
    assert_eq!(n1.drops().get(DropReason::SpoofedMac), 1);
    let out = run(
        &mut n1,
        Ingress::Port(PortId(6)),
        tcp_from(A_MAC, A, B, 1000, 80, SYN),
    );
    assert_eq!(out.action, Action::Drop(DropReason::UnknownPort));
}

#[test]
fn same_node_pods_talk_without_nat() {
    let (mut n1, _) = cluster();
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, C, 40000, 80, SYN),
    );
    assert!(
        matches!(out.action, Action::Deliver { port: PORT_C, .. }),
        "{:?}",
        out.action
    );
    assert_tcp(&out, (A, 40000), (C, 80));
    assert_eq!(&out.frame()[0..6], &C_MAC);
    assert_eq!(&out.frame()[6..12], &ROUTER1.0);
    assert_eq!(out.ip().hop_limit(), 63);
    let reply = ipv4_frame(
        C_MAC,
        ROUTER1.0,
        C,
        A,
        6,
        64,
        &tcp(80, 40000, 9, 2, SYN | ACK, b""),
    );
    let out = run(&mut n1, Ingress::Port(PORT_C), reply);
    assert!(matches!(out.action, Action::Deliver { port: PORT_A, .. }));
    assert_tcp(&out, (C, 80), (A, 40000));
}

#[test]
fn node_and_pods_reach_each_other() {
    let (mut n1, _) = cluster();
    let from_host = ipv4_frame(HOST_MAC.0, ROUTER1.0, GW1, A, 1, 64, &icmp_echo(7, 1));
    let out = run(&mut n1, Ingress::Port(HOST), from_host);
    assert!(matches!(out.action, Action::Deliver { port: PORT_A, .. }));
    assert_eq!(
        out.ip().src_addr(),
        GW1,
        "the pod sees the node's real address"
    );
    let to_host = ipv4_frame(A_MAC, ROUTER1.0, A, GW1, 17, 64, &udp(5000, 10250, b"hi"));
    let out = run(&mut n1, Ingress::Port(PORT_A), to_host);
    assert!(matches!(out.action, Action::Deliver { port: HOST, .. }));
    assert_eq!(&out.frame()[0..6], &HOST_MAC.0);
    assert_eq!(out.ip().src_addr(), A);
}

#[test]
fn cross_node_over_vxlan_both_shell_styles() {
    let (mut n1, mut n2) = cluster();
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, SYN),
    );
    let Action::Encap(e) = out.action else {
        panic!("{:?}", out.action)
    };
    assert_eq!(
        (e.node, e.remote, e.remote_port),
        (NodeId(2), IpAddr::V4(NODE2_IP), 8472)
    );
    assert!((49152..=65535).contains(&e.source_port));
    assert_eq!(e.outer_frame.len, e.udp_payload.len + 42);
    // UDP-socket shell: the payload arrives with the sender's underlay address.
    let source = IpAddr::V4(NODE1_IP);
    let delivered = run(
        &mut n2,
        underlay(source, e.source_port),
        out.vxlan_payload(),
    );
    assert!(
        matches!(delivered.action, Action::Deliver { port: PORT_B, .. }),
        "{:?}",
        delivered.action
    );
    assert_tcp(&delivered, (A, 40000), (B, 8080));
    assert_eq!(&delivered.frame()[0..6], &B_MAC);

    // The reply goes back the same way.
    let reply = syn_ack_from_b(40000);
    let out = run(&mut n2, Ingress::Port(PORT_B), reply);
    let source = IpAddr::V4(NODE2_IP);
    let back = run(&mut n1, underlay(source, 50000), out.vxlan_payload());
    assert!(matches!(back.action, Action::Deliver { port: PORT_A, .. }));
    assert_tcp(&back, (B, 8080), (A, 40000));

    // Raw-underlay shell: the whole outer frame arrives on an underlay port. Such a
    // node answers on one MAC, its underlay MAC, which node 1 knows as its VTEP MAC.
    n2.ports_mut()
        .set(RAW_UNDERLAY, PortKind::Underlay)
        .unwrap();
    add_peer(
        &mut n1,
        2,
        Ipv4Addr::new(10, 244, 2, 0),
        NODE2_IP,
        UNDERLAY_MAC2,
    );
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40001, 8080, SYN),
    );
    let outer = out.frame().to_vec();
    assert_eq!(
        &outer[0..6],
        &UNDERLAY_MAC2.0,
        "outer frame to the peer VTEP's MAC"
    );
    assert_eq!(
        &outer[50..56],
        &UNDERLAY_MAC2.0,
        "inner frame to the peer VTEP's MAC"
    );
    let mut buf = vec![0u8; 4];
    buf.extend_from_slice(&outer);
    let span = Span {
        start: 4,
        len: outer.len(),
    };
    let delivered = run(&mut n2, Ingress::Port(RAW_UNDERLAY), (buf, span));
    assert!(matches!(
        delivered.action,
        Action::Deliver { port: PORT_B, .. }
    ));
    assert_tcp(&delivered, (A, 40001), (B, 8080));
    assert_eq!(n2.stats().decapsulated, 2);
}

#[test]
fn overlay_rejects_unknown_senders_and_spoofed_inner_sources() {
    let (mut n1, mut n2) = cluster();
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, SYN),
    );
    let stranger = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
    let dropped = run(&mut n2, underlay(stranger, 1), out.vxlan_payload());
    assert_eq!(dropped.action, Action::Drop(DropReason::UnknownVtep));
    // Node 1 claims a source from node 2's own block.
    let forged = ipv4_frame(A_MAC, ROUTER1.0, GW2, B, 17, 64, &udp(1, 2, b"x"));
    let mut payload = vec![0u8; HEADROOM];
    payload.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
    payload.extend_from_slice(&forged.0[forged.1.range()]);
    let span = Span {
        start: HEADROOM,
        len: payload.len() - HEADROOM,
    };
    let source = IpAddr::V4(NODE1_IP);
    let dropped = run(&mut n2, underlay(source, 1), (payload, span));
    assert_eq!(dropped.action, Action::Drop(DropReason::SpoofedIp));
    assert_eq!(n2.drops().get(DropReason::UnknownVtep), 1);
}

#[test]
fn service_dnat_encap_decap_and_reverse_nat_of_the_reply() {
    let (mut n1, mut n2) = cluster();
    add_service(&mut n1, &[(B, 2)]);
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, SERVICE_IP, 40000, 80, SYN),
    );
    let source = IpAddr::V4(NODE1_IP);
    let at_b = run(&mut n2, underlay(source, 1), out.vxlan_payload());
    assert!(matches!(at_b.action, Action::Deliver { port: PORT_B, .. }));
    assert_tcp(&at_b, (A, 40000), (B, 8080));

    let reply = syn_ack_from_b(40000);
    let out = run(&mut n2, Ingress::Port(PORT_B), reply);
    let source = IpAddr::V4(NODE2_IP);
    let at_a = run(&mut n1, underlay(source, 1), out.vxlan_payload());
    assert!(matches!(at_a.action, Action::Deliver { port: PORT_A, .. }));
    assert_tcp(&at_a, (SERVICE_IP, 80), (A, 40000));
    let (id, _) = n1
        .tables()
        .conntrack
        .iter()
        .next()
        .map(|(id, e)| (id, *e.original()))
        .unwrap();
    assert_eq!(n1.tables().conntrack.entry(id).unwrap().service, 0);
}

#[test]
fn hairpin_to_own_service_is_snatted_to_the_gateway() {
    let (mut n1, _) = cluster();
    add_service(&mut n1, &[(A, 1)]);
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, SERVICE_IP, 40000, 80, SYN),
    );
    assert!(matches!(out.action, Action::Deliver { port: PORT_A, .. }));
    let ip = out.ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW1, A));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    let sport = t.src_port();
    let reply = ipv4_frame(
        A_MAC,
        ROUTER1.0,
        A,
        GW1,
        6,
        64,
        &tcp(8080, sport, 5, 2, SYN | ACK, b""),
    );
    let out = run(&mut n1, Ingress::Port(PORT_A), reply);
    assert!(matches!(out.action, Action::Deliver { port: PORT_A, .. }));
    assert_tcp(&out, (SERVICE_IP, 80), (A, 40000));
}

#[test]
fn service_without_backends_is_rejected() {
    let (mut n1, _) = cluster();
    add_service(&mut n1, &[]);
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, SERVICE_IP, 40000, 80, SYN),
    );
    assert!(
        matches!(out.action, Action::Reply { .. }),
        "{:?}",
        out.action
    );
    let t = TcpPacket::new_checked(out.ip().payload()).unwrap();
    assert!(t.rst());
    assert_eq!(out.ip().src_addr(), SERVICE_IP);
    assert_eq!(n1.drops().get(DropReason::NoServiceBackend), 1);
    // UDP gets port unreachable.
    n1.services_mut()
        .add_frontend(Frontend {
            addr: IpAddr::V4(SERVICE_IP),
            port: 53,
            protocol: 17,
            kind: FrontendKind::ClusterIp,
            service: ServiceId(0),
        })
        .unwrap();
    let q = ipv4_frame(
        A_MAC,
        ROUTER1.0,
        A,
        SERVICE_IP,
        17,
        64,
        &udp(5353, 53, b"q"),
    );
    let out = run(&mut n1, Ingress::Port(PORT_A), q);
    let icmp = Icmpv4Packet::new_checked(out.ip().payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 3)
    );
}

/// Node 2 isolates B for ingress with policy 7: only identity 1 (pod A) on TCP 8080.
fn isolate_b(n2: &mut Datapath<'static>, allow_port: Option<u16>) {
    let t = n2.policy_mut();
    t.clear();
    if let Some(port) = allow_port {
        let peers = t
            .add_peer_set(&PeerSpec {
                identities: &[Identity(1)],
                ..PeerSpec::default()
            })
            .unwrap();
        let ports = t
            .add_port_set(&[PortRange::single(PortProtocol::Tcp, port)])
            .unwrap();
        t.push_rule(&RuleSpec {
            policy: PolicyId(7),
            index: 0,
            peers,
            only: None,
            ports,
        })
        .unwrap();
    }
    let ingress = t.finish_rule_set(Some(PolicyId(7)));
    let endpoint = t
        .add_endpoint_policy(EndpointPolicy {
            ingress,
            egress: DirPolicy::OPEN,
        })
        .unwrap();
    t.set_identity(IpAddr::V4(A), Some(Identity(1))).unwrap();
    t.set_identity(IpAddr::V4(B), Some(Identity(2))).unwrap();
    t.set_endpoint(IpAddr::V4(B), Some(endpoint)).unwrap();
}

#[test]
fn ingress_policy_on_the_destination_node_with_reasons_and_events() {
    let (mut n1, mut n2) = cluster();
    let ring: &'static mut Queue<FlowEvent, 8> = Box::leak(Box::new(Queue::new()));
    let (producer, mut consumer) = ring.split();
    n2.events().connect(producer);
    isolate_b(&mut n2, Some(8080));
    let source = IpAddr::V4(NODE1_IP);

    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 9090, SYN),
    );
    let denied = run(&mut n2, underlay(source, 1), out.vxlan_payload());
    assert_eq!(denied.action, Action::Drop(DropReason::PolicyDeniedIngress));
    let event = consumer.dequeue().unwrap();
    assert_eq!(
        event.outcome,
        EventOutcome::Dropped(DropReason::PolicyDeniedIngress)
    );
    assert_eq!(event.source, EventSource::Node(NodeId(1)));
    assert_eq!(
        event.policy.unwrap().ingress,
        Verdict::Deny(DenyReason::NoRuleMatched {
            policy: PolicyId(7)
        })
    );

    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40001, 8080, SYN),
    );
    let allowed = run(&mut n2, underlay(source, 1), out.vxlan_payload());
    assert!(matches!(
        allowed.action,
        Action::Deliver { port: PORT_B, .. }
    ));
    let event = consumer.dequeue().unwrap();
    assert_eq!(event.outcome, EventOutcome::Delivered(PORT_B));
    assert_eq!(
        event.policy.unwrap().ingress,
        Verdict::Allow(AllowReason::Rule {
            policy: PolicyId(7),
            rule: 0
        })
    );
    // The reply of the allowed connection passes B's isolation.
    let reply = syn_ack_from_b(40001);
    let out = run(&mut n2, Ingress::Port(PORT_B), reply);
    assert!(matches!(out.action, Action::Encap(_)));

    // A policy change that still allows the connection keeps it; one that no longer
    // does cuts it on its next packet.
    isolate_b(&mut n2, Some(8080));
    let again = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40001, 8080, ACK),
    );
    let kept = run(&mut n2, underlay(source, 1), again.vxlan_payload());
    assert!(matches!(kept.action, Action::Deliver { .. }));
    isolate_b(&mut n2, None);
    let again = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40001, 8080, ACK),
    );
    let cut = run(&mut n2, underlay(source, 1), again.vxlan_payload());
    assert_eq!(cut.action, Action::Drop(DropReason::PolicyDeniedIngress));
}

#[test]
fn ttl_and_mtu_errors_are_answered_with_icmp() {
    let (mut n1, _) = cluster();
    let last_hop = ipv4_frame(A_MAC, ROUTER1.0, A, C, 17, 1, &udp(1, 2, b"x"));
    let out = run(&mut n1, Ingress::Port(PORT_A), last_hop);
    let icmp = Icmpv4Packet::new_checked(out.ip().payload()).unwrap();
    assert_eq!(icmp.msg_type(), Icmpv4Message::TimeExceeded);
    assert_eq!(out.ip().dst_addr(), A);
    assert_eq!(n1.drops().get(DropReason::TtlExceeded), 1);

    let big = vec![0u8; 1460 - 28];
    let too_big = ipv4_frame(A_MAC, ROUTER1.0, A, B, 17, 64, &udp(1, 2, &big));
    let out = run(&mut n1, Ingress::Port(PORT_A), too_big);
    let icmp = Icmpv4Packet::new_checked(out.ip().payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 4)
    );
    assert_eq!(&icmp.data()[..0], &[] as &[u8]);
    assert_eq!(
        u16::from_be_bytes([out.ip().payload()[6], out.ip().payload()[7]]),
        1450
    );
    let fits = vec![0u8; 1450 - 28];
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        ipv4_frame(A_MAC, ROUTER1.0, A, B, 17, 64, &udp(1, 2, &fits)),
    );
    let Action::Encap(e) = out.action else {
        panic!()
    };
    assert_eq!(e.outer_frame.len, 14 + 1500);
    UdpPacket::new_checked(&out.frame()[34..]).unwrap();
}

#[test]
fn untracked_icmp_errors_and_unrouted_destinations_are_dropped() {
    let (mut n1, _) = cluster();
    let mut quote = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    let inner = ipv4_frame(A_MAC, ROUTER1.0, C, B, 17, 64, &udp(9, 9, b""));
    quote.extend_from_slice(&inner.0[inner.1.start + 14..inner.1.start + 14 + 28]);
    let error = ipv4_frame(A_MAC, ROUTER1.0, A, C, 1, 64, &quote);
    let out = run(&mut n1, Ingress::Port(PORT_A), error);
    assert_eq!(out.action, Action::Drop(DropReason::UntrackedIcmpError));
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, Ipv4Addr::new(203, 0, 113, 1), 1, 2, SYN),
    );
    assert_eq!(out.action, Action::Drop(DropReason::NoRoute));
}

#[test]
fn a_full_event_ring_counts_lost_events() {
    let (mut n1, _) = cluster();
    let ring: &'static mut Queue<FlowEvent, 4> = Box::leak(Box::new(Queue::new()));
    let (producer, _consumer) = ring.split();
    n1.events().connect(producer);
    for port in 0..6 {
        run(
            &mut n1,
            Ingress::Port(PORT_A),
            tcp_from(A_MAC, A, C, 1000 + port, 80, SYN),
        );
    }
    // A ring of N holds N - 1 events.
    assert_eq!(n1.events().emitted(), 3);
    assert_eq!(n1.events().lost(), 3);
    assert_eq!(n1.stats().delivered, 6);
}

#[test]
fn encap_source_port_is_the_entropy_hash_of_the_inner_frame_as_sent() {
    // The datapath hashes the flow key instead of re-reading the frame for TCP, UDP
    // and SCTP: the result must be the specified hash of the frame it sends.
    let (mut n1, _) = cluster();
    add_service(&mut n1, &[(B, 2)]);
    let frames = [
        tcp_from(A_MAC, A, B, 40000, 8080, SYN),
        tcp_from(A_MAC, A, SERVICE_IP, 40001, 80, SYN),
        ipv4_frame(A_MAC, ROUTER1.0, A, B, 17, 64, &udp(5353, 53, b"q")),
        ipv4_frame(A_MAC, ROUTER1.0, A, B, 132, 64, &udp(7, 9, b"sctp")),
        ipv4_frame(A_MAC, ROUTER1.0, A, B, 1, 64, &icmp_echo(0x77, 1)),
        ipv4_frame(A_MAC, ROUTER1.0, A, B, 47, 64, b"gre payload"),
    ];
    for (i, frame) in frames.into_iter().enumerate() {
        let out = run(&mut n1, Ingress::Port(PORT_A), frame);
        let Action::Encap(e) = out.action else {
            panic!("frame {i}: {:?}", out.action)
        };
        let inner = &out.buf[e.outer_frame.start + 50..e.outer_frame.start + e.outer_frame.len];
        let vxlan = &n1.config().vxlan;
        let expected = vxlan
            .src_ports
            .pick(crate::vxlan::inner_flow_hash(inner, vxlan.flow_seed));
        assert_eq!(e.source_port, expected, "frame {i}");
    }
}

/// Found by the `datapath_process` fuzz target: a span whose end overflows `usize`
/// panicked (arithmetic overflow) in `Span::range` instead of being dropped.
#[test]
fn a_span_beyond_the_address_space_is_dropped_not_a_panic() {
    let (mut n1, _) = cluster();
    let mut buf = [0u8; 8];
    for span in [
        Span {
            start: 4,
            len: usize::MAX,
        },
        Span {
            start: usize::MAX,
            len: 1,
        },
    ] {
        let action = n1.process(T0, Ingress::Port(PORT_A), &mut buf, span);
        assert_eq!(action, Action::Drop(DropReason::Truncated));
    }
    assert_eq!(n1.drops().get(DropReason::Truncated), 2);
}

// ---- Offloads: GSO super-frames and partial checksums --------------------------------

fn run_with(
    dp: &mut Datapath<'static>,
    ingress: Ingress,
    (mut buf, span): (Vec<u8>, Span),
    meta: FrameMeta,
) -> Out {
    let action = dp.process_with(T0, ingress, &mut buf, span, meta);
    Out { buf, action }
}

/// The uncomplemented pseudo-header sum a checksum-offloading sender leaves in the
/// TCP checksum field.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, l4_len: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    crate::checksum::sum(&p)
}

/// A TCP frame as a TAP with offloads hands it over: `len` payload bytes (a GSO
/// super-frame when longer than one segment), checksum field partial.
fn offloaded_tcp(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (sport, dport): (u16, u16),
    len: usize,
) -> (Vec<u8>, Span) {
    let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
    let (mut buf, span) = ipv4_frame(
        src_mac,
        ROUTER1.0,
        src,
        dst,
        6,
        64,
        &tcp(sport, dport, 2, 9, ACK, &payload),
    );
    let at = span.start + 34 + 16;
    buf[at..at + 2].copy_from_slice(&pseudo_sum(src, dst, 20 + len).to_be_bytes());
    (buf, span)
}

/// What the receiving device does with a partial TCP checksum.
fn finish_partial(out: &mut Out) {
    let Action::Deliver { frame, .. } = out.action else {
        panic!("not delivered: {:?}", out.action)
    };
    let f = &mut out.buf[frame.range()];
    let c = !crate::checksum::sum(&f[34..]);
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

const GSO: FrameMeta = FrameMeta {
    gso_size: Some(1398),
    checksum_partial: true,
};

#[test]
fn gso_super_frames_pass_between_local_pods_as_one_frame() {
    let (mut n1, _) = cluster();
    run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, C, 40000, 80, SYN),
    );
    let input = offloaded_tcp(A_MAC, A, C, (40000, 80), 30_000);
    let sent = input.0[input.1.range()].to_vec();
    let mut out = run_with(&mut n1, Ingress::Port(PORT_A), input, GSO);
    let Action::Deliver { port, frame } = out.action else {
        panic!("{:?}", out.action)
    };
    assert_eq!((port, frame.len), (PORT_C, 14 + 20 + 20 + 30_000));
    assert_eq!(out.ip().hop_limit(), 63);
    // Without NAT the partial field and the payload are untouched.
    assert_eq!(&out.frame()[34..], &sent[34..]);
    finish_partial(&mut out);
    assert_tcp(&out, (A, 40000), (C, 80));
    assert_eq!(n1.stats().dropped, 0);
}

#[test]
fn nat_keeps_partial_checksums_partial() {
    let (mut n1, _) = cluster();
    add_service(&mut n1, &[(C, 1)]);
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, SERVICE_IP, 40000, 80, SYN),
    );
    assert_tcp(&out, (A, 40000), (C, 8080));
    // A super-frame to the service: DNAT with the partial rule.
    let mut out = run_with(
        &mut n1,
        Ingress::Port(PORT_A),
        offloaded_tcp(A_MAC, A, SERVICE_IP, (40000, 80), 5000),
        GSO,
    );
    assert!(matches!(out.action, Action::Deliver { port: PORT_C, .. }));
    let field = u16::from_be_bytes([out.frame()[50], out.frame()[51]]);
    assert_eq!(
        field,
        pseudo_sum(A, C, 20 + 5000),
        "field = translated pseudo sum"
    );
    finish_partial(&mut out);
    assert_tcp(&out, (A, 40000), (C, 8080));
    // The reply, partial-only (no GSO): reverse NAT, still partial.
    let mut out = run_with(
        &mut n1,
        Ingress::Port(PORT_C),
        offloaded_tcp(C_MAC, C, A, (8080, 40000), 700),
        FrameMeta {
            gso_size: None,
            checksum_partial: true,
        },
    );
    assert!(matches!(out.action, Action::Deliver { port: PORT_A, .. }));
    finish_partial(&mut out);
    assert_tcp(&out, (SERVICE_IP, 80), (A, 40000));
}

/// A super-frame from A to B whose segments (40 bytes of headers + gso_size 1411)
/// exceed the overlay MTU is answered with ICMP fragmentation needed.
fn assert_oversized_segments_get_fragmentation_needed(n1: &mut Datapath<'static>) {
    let big = FrameMeta {
        gso_size: Some(1411),
        checksum_partial: true,
    };
    let out = run_with(
        n1,
        Ingress::Port(PORT_A),
        offloaded_tcp(A_MAC, A, B, (40000, 80), 20_000),
        big,
    );
    let icmp = Icmpv4Packet::new_checked(out.ip().payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (Icmpv4Message::DstUnreachable, 4)
    );
}

#[test]
fn offloaded_frames_to_the_overlay_come_back_untouched() {
    let (mut n1, _) = cluster();
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 80, SYN),
    );
    assert!(matches!(out.action, Action::Encap(_)));
    let packets = |dp: &Datapath<'static>| {
        dp.tables()
            .conntrack
            .iter()
            .map(|(_, e)| std::format!("{e:?}"))
            .collect::<Vec<_>>()
    };
    let tracked = packets(&n1);
    let partial = FrameMeta {
        gso_size: None,
        checksum_partial: true,
    };
    for (meta, len) in [(GSO, 20_000), (partial, 1000)] {
        let input = offloaded_tcp(A_MAC, A, B, (40000, 80), len);
        let before = input.0.clone();
        let out = run_with(&mut n1, Ingress::Port(PORT_A), input, meta);
        assert_eq!(out.action, Action::Drop(DropReason::NeedsSoftwareOffload));
        assert_eq!(out.buf, before, "nothing changed");
        assert_eq!(packets(&n1), tracked, "connection tracking untouched");
    }
    assert_eq!(n1.drops().get(DropReason::NeedsSoftwareOffload), 2);
    // The same bytes as a plain segment go out.
    let out = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 80, ACK),
    );
    assert!(matches!(out.action, Action::Encap(_)));
    // Segments larger than the overlay allows are answered by the MTU check, which
    // measures a segment (40 bytes of headers + gso_size), not the super-frame.
    assert_oversized_segments_get_fragmentation_needed(&mut n1);
    let fits = FrameMeta {
        gso_size: Some(1410),
        checksum_partial: true,
    };
    let out = run_with(
        &mut n1,
        Ingress::Port(PORT_A),
        offloaded_tcp(A_MAC, A, B, (40000, 80), 20_000),
        fits,
    );
    assert_eq!(out.action, Action::Drop(DropReason::NeedsSoftwareOffload));
}

#[test]
fn with_overlay_gso_a_super_frame_is_encapsulated_once() {
    let (mut n1, _) = cluster();
    n1.set_overlay_gso(true);
    run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 80, SYN),
    );
    let input = offloaded_tcp(A_MAC, A, B, (40000, 80), 20_000);
    let sent = input.0[input.1.range()].to_vec();
    let before: u64 = n1
        .tables()
        .conntrack
        .iter()
        .map(|(_, e)| e.packets(Direction::Original))
        .sum();
    let out = run_with(&mut n1, Ingress::Port(PORT_A), input, GSO);
    let Action::Encap(e) = out.action else {
        panic!("{:?}", out.action)
    };
    // The UDP payload: one VXLAN header, then the whole inner super-frame.
    let payload = &out.buf[e.udp_payload.range()];
    assert_eq!(payload.len(), 8 + sent.len());
    assert_eq!(&payload[..5], &[0x08, 0, 0, 0, 0]);
    let inner = &payload[8..];
    assert_eq!(inner[14 + 8], 63, "TTL decremented once");
    assert_eq!(&inner[..6], &ROUTER2.0, "to the peer's VTEP MAC");
    // Without NAT the partial checksum field and the payload are as sent.
    assert_eq!(&inner[34..], &sent[34..]);
    // The outer headers describe the first datagram: 20 + 8 + 8 + 14 + 40 + 1398.
    assert_eq!(out.ip().total_len(), 20 + 8 + 8 + 14 + 40 + 1398);
    let outer_udp = &out.frame()[34..42];
    assert_eq!(
        &outer_udp[6..8],
        &[0, 0],
        "no UDP checksum on a super-frame"
    );
    // Tracked like any packet.
    let after: u64 = n1
        .tables()
        .conntrack
        .iter()
        .map(|(_, e)| e.packets(Direction::Original))
        .sum();
    assert_eq!(after, before + 1);
    assert_eq!(n1.drops().get(DropReason::NeedsSoftwareOffload), 0);
    // Segments that do not fit the overlay are still answered by the MTU check.
    assert_oversized_segments_get_fragmentation_needed(&mut n1);
}

#[test]
fn cached_next_hops_follow_route_changes() {
    let (mut n1, _) = cluster();
    let first = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, SYN),
    );
    assert!(matches!(first.action, Action::Encap(_)));
    let again = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, ACK),
    );
    assert!(
        matches!(again.action, Action::Encap(_)),
        "served from the cached hop"
    );
    // Node 2's block now goes nowhere: the tracked connection must see it at once.
    n1.routes_mut()
        .insert(prefix(Ipv4Addr::new(10, 244, 2, 0), 24), NextHop::Blackhole)
        .unwrap();
    let cut = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, ACK),
    );
    assert_eq!(cut.action, Action::Drop(DropReason::Blackhole));
    // And B moves to this node: delivered locally, not encapsulated.
    n1.routes_mut()
        .insert(Ipv4Prefix::host(B), NextHop::Port(PORT_C))
        .unwrap();
    let moved = run(
        &mut n1,
        Ingress::Port(PORT_A),
        tcp_from(A_MAC, A, B, 40000, 8080, ACK),
    );
    assert!(
        matches!(moved.action, Action::Deliver { port: PORT_C, .. }),
        "{:?}",
        moved.action
    );
}

#[test]
fn next_hops_round_trip_through_the_conntrack_cache_encoding() {
    for hop in [
        NextHop::Port(PortId(65535)),
        NextHop::Host,
        NextHop::Node(NodeId(7)),
        NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 254)),
        NextHop::Blackhole,
    ] {
        assert_ne!(super::encode_hop(hop), 0);
        assert_eq!(super::decode_hop(super::encode_hop(hop)), Some(hop));
    }
    assert_eq!(super::decode_hop(0), None);
}

/// Node 1's inputs of 12 cross-node connections: A's SYNs, B's SYN-ACKs as VXLAN
/// payloads from node 2, A's data segments, and two frames that must be dropped (a
/// truncated one, one from an unknown port); in an interleaved order, more than one
/// burst window.
fn node1_inputs() -> Vec<(Ingress, (Vec<u8>, Span))> {
    let (mut n1, mut n2) = cluster();
    let node2 = underlay(IpAddr::V4(NODE2_IP), 50000);
    let mut inputs = Vec::new();
    for i in 0..12 {
        let sport = 41000 + i;
        let syn = tcp_from(A_MAC, A, B, sport, 8080, SYN);
        let out = run(&mut n1, Ingress::Port(PORT_A), syn.clone());
        run(
            &mut n2,
            underlay(IpAddr::V4(NODE1_IP), 50000),
            out.vxlan_payload(),
        );
        let out = run(&mut n2, Ingress::Port(PORT_B), syn_ack_from_b(sport));
        inputs.push((Ingress::Port(PORT_A), syn));
        inputs.push((node2, out.vxlan_payload()));
        inputs.push((
            Ingress::Port(PORT_A),
            tcp_from(A_MAC, A, B, sport, 8080, ACK),
        ));
    }
    let (buf, mut span) = tcp_from(A_MAC, A, B, 41000, 8080, ACK);
    span.len = 30;
    inputs.insert(5, (Ingress::Port(PORT_A), (buf, span)));
    inputs.insert(
        20,
        (
            Ingress::Port(PortId(7)),
            tcp_from(A_MAC, A, B, 41001, 8080, ACK),
        ),
    );
    inputs
}

#[test]
fn a_burst_is_processed_as_its_frames_one_by_one() {
    let inputs = node1_inputs();
    assert!(inputs.len() > BURST_WINDOW);
    let (mut one_by_one, _) = cluster();
    let singles: Vec<Out> = inputs
        .iter()
        .map(|(ingress, frame)| run(&mut one_by_one, *ingress, frame.clone()))
        .collect();

    let (mut bursty, _) = cluster();
    let mut bufs: Vec<(Ingress, (Vec<u8>, Span))> = inputs.clone();
    let mut burst: Vec<BurstFrame<'_>> = bufs
        .iter_mut()
        .map(|(ingress, (buf, span))| BurstFrame::new(*ingress, buf, *span))
        .collect();
    bursty.process_burst(T0, &mut burst);
    let actions: Vec<Option<Action>> = burst.iter().map(|f| f.action).collect();
    drop(burst);

    for (i, (single, action)) in singles.iter().zip(&actions).enumerate() {
        assert_eq!(Some(single.action), *action, "frame {i}");
        assert_eq!(single.buf, bufs[i].1 .0, "frame {i}'s bytes");
    }
    assert!(
        matches!(actions[5], Some(Action::Drop(_))),
        "{:?}",
        actions[5]
    );
    assert!(matches!(
        actions[20],
        Some(Action::Drop(DropReason::UnknownPort))
    ));
    assert_eq!(one_by_one.stats(), bursty.stats());
    assert_eq!(one_by_one.drops(), bursty.drops());
    assert_eq!(bursty.tables().conntrack.len(), 12);
    assert!(bursty
        .tables()
        .conntrack
        .iter()
        .all(|(_, e)| e.state() == conntrack::ConnState::Tcp(conntrack::TcpState::Established)));
    // An empty burst is nothing to do.
    bursty.process_burst(T0, &mut []);
    assert_eq!(one_by_one.stats(), bursty.stats());
}

//! podwire two_nodes: a whole pipeline walkthrough with two nodes' `Datapath`s.
//!
//! Node 1 runs pod `client` (10.244.1.2), node 2 runs pod `web` (10.244.2.2). The
//! ClusterIP service `web` (10.96.0.10:80/TCP) has one backend, `web` on port 8080.
//! The client opens a TCP connection to the service:
//!
//! 1. node 1 takes the SYN from the client's port: service lookup (Maglev), DNAT to the
//!    backend, connection tracking, routing to node 2, VXLAN encapsulation;
//! 2. the UDP payload travels to node 2 (here: copied into a fresh buffer, as a UDP
//!    socket would receive it), which checks the sender, decapsulates and delivers the
//!    SYN to `web` — with the client's real address as source;
//! 3. `web` answers with a SYN-ACK: node 2 tracks it as a reply and encapsulates it;
//! 4. node 1 decapsulates it, finds the connection, reverses the NAT and delivers it
//!    to the client as coming from the service address.
//!
//! Each step prints the `Action` the datapath returned and the frame it produced. The
//! tables take caller-owned storage; here it is `podwire-testkit`'s `NodeStore`,
//! `Vec`s sized at run time from a `TableSizes` and leaked for the program's lifetime.
//!
//! Run it with `cargo run -p podwire-examples --bin two_nodes`.

use std::net::{IpAddr, Ipv4Addr};

use podwire_core::conntrack::Direction;
use podwire_core::datapath::{Action, Datapath, DatapathConfig, Ingress, PortKind, Span, HEADROOM};
use podwire_core::ids::{NodeId, PortId};
use podwire_core::route::{Ipv4Prefix, NextHop};
use podwire_core::service::{FrontendKind, ServiceId};
use podwire_core::vxlan::{Vtep, VxlanConfig};
use podwire_core::wire::EthernetAddress;
use podwire_core::Instant;

use podwire_examples::{self as frames, Transport, ACK, SYN};
use podwire_testkit::{add_tcp_service, ready_backend, NodeStore, TableSizes};

/// A node: its id, pod block, gateway, underlay address and MACs.
struct NodeSpec {
    id: u16,
    block: Ipv4Addr,
    gateway: Ipv4Addr,
    underlay: Ipv4Addr,
    router_mac: EthernetAddress,
    underlay_mac: EthernetAddress,
}

/// A pod: its name, port on its node, address and interface MAC.
struct PodSpec {
    name: &'static str,
    port: PortId,
    ip: Ipv4Addr,
    mac: EthernetAddress,
}

const NODE1: NodeSpec = NodeSpec {
    id: 1,
    block: Ipv4Addr::new(10, 244, 1, 0),
    gateway: Ipv4Addr::new(10, 244, 1, 1),
    underlay: Ipv4Addr::new(192, 168, 56, 11),
    router_mac: EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]),
    underlay_mac: EthernetAddress([0x02, 0xbb, 0, 0, 0, 1]),
};
const NODE2: NodeSpec = NodeSpec {
    id: 2,
    block: Ipv4Addr::new(10, 244, 2, 0),
    gateway: Ipv4Addr::new(10, 244, 2, 1),
    underlay: Ipv4Addr::new(192, 168, 56, 12),
    router_mac: EthernetAddress([0x02, 0xaa, 0, 0, 0, 2]),
    underlay_mac: EthernetAddress([0x02, 0xbb, 0, 0, 0, 2]),
};
const CLIENT: PodSpec = PodSpec {
    name: "client",
    port: PortId(1),
    ip: Ipv4Addr::new(10, 244, 1, 2),
    mac: EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]),
};
const WEB: PodSpec = PodSpec {
    name: "web",
    port: PortId(1),
    ip: Ipv4Addr::new(10, 244, 2, 2),
    mac: EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02]),
};
const HOST_PORT: PortId = PortId(0);
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
/// Maglev table size per service (prime): a firmware-sized choice.
const MAGLEV_M: u32 = 251;
/// The shells pass time in; this program's clock stands still.
const NOW: Instant = Instant::from_micros_const(1_000_000_000);

/// A frame in a buffer with the datapath's headroom before it.
struct Packet {
    buf: Vec<u8>,
    frame: Span,
}

fn main() {
    let mut node1 = build_node(&NODE1);
    let mut node2 = build_node(&NODE2);
    add_pod(&mut node1, &CLIENT);
    add_pod(&mut node2, &WEB);
    know_peer(&mut node1, &NODE2);
    know_peer(&mut node2, &NODE1);
    add_web_service(&mut node1);
    add_web_service(&mut node2);

    let syn = client_sends_syn(&mut node1);
    let delivered = node2_receives(&mut node2, &syn);
    let reply = web_answers(&mut node2, &delivered);
    node1_receives_reply(&mut node1, &reply);
    summary(&node1, &node2);
}

/// Step 0: one node's datapath over caller-owned tables, with its host port and the
/// route of its gateway address to the host.
fn build_node(spec: &NodeSpec) -> Datapath<'static> {
    let sizes = TableSizes {
        ports: 4,
        route_direct_bits: 8,
        routes: 16,
        route_gateways: 2,
        vteps: 4,
        services: 4,
        frontends: 8,
        backends: 16,
        backends_per_service: 8,
        max_maglev: MAGLEV_M,
        maglev_entries: 4 * MAGLEV_M as usize,
        affinity: 0,
        connections: 64,
        addresses: 16,
        endpoint_policies: 4,
        rules: 8,
        policy_ports: 8,
        peers: 8,
        prefixes: 4,
    };
    let tables = NodeStore::leak(sizes, NodeId(spec.id)).expect("storage fits its tables");
    let config = DatapathConfig {
        node: NodeId(spec.id),
        router_mac: spec.router_mac,
        gateway: spec.gateway,
        pod_cidr: Ipv4Prefix::new(spec.block, 24).expect("a /24"),
        vxlan: VxlanConfig::new(IpAddr::V4(spec.underlay), spec.underlay_mac),
        flow_seed: 7,
    };
    let mut dp = Datapath::new(config, tables);
    dp.ports_mut()
        .set(
            HOST_PORT,
            PortKind::Host {
                mac: EthernetAddress([0x02, 0xcc, 0, 0, 0, spec.id as u8]),
            },
        )
        .expect("port 0 exists");
    dp.routes_mut()
        .insert(Ipv4Prefix::host(spec.gateway), NextHop::Host)
        .expect("room for a route");
    println!(
        "node {}: pod block {}/24, gateway {}, underlay {} (VXLAN VNI {}, UDP {})",
        spec.id,
        spec.block,
        spec.gateway,
        spec.underlay,
        dp.config().vxlan.vni,
        dp.config().vxlan.dst_port
    );
    dp
}

/// Step 0: a pod's interface is a port; its address routes to that port.
fn add_pod(dp: &mut Datapath<'static>, pod: &PodSpec) {
    dp.ports_mut()
        .set(
            pod.port,
            PortKind::Pod {
                ip: pod.ip,
                mac: pod.mac,
            },
        )
        .expect("the port exists");
    dp.routes_mut()
        .insert(Ipv4Prefix::host(pod.ip), NextHop::Port(pod.port))
        .expect("room for a route");
    println!(
        "node {}: pod {} {} on port {}",
        dp.config().node.0,
        pod.name,
        pod.ip,
        pod.port.0
    );
}

/// Step 0: the peer's VTEP (where it is on the underlay) and its block's route.
fn know_peer(dp: &mut Datapath<'static>, peer: &NodeSpec) {
    dp.vteps_mut()
        .insert(Vtep {
            node: NodeId(peer.id),
            ip: IpAddr::V4(peer.underlay),
            mac: peer.router_mac,
        })
        .expect("room for a VTEP");
    let block = Ipv4Prefix::new(peer.block, 24).expect("a /24");
    dp.routes_mut()
        .insert(block, NextHop::Node(NodeId(peer.id)))
        .expect("room for a route");
    println!(
        "node {}: route {block} -> node {} at {}",
        dp.config().node.0,
        peer.id,
        peer.underlay
    );
}

/// Step 0: every node knows every service: ClusterIP 10.96.0.10:80/TCP with the one
/// backend `web` on node 2, port 8080.
fn add_web_service(dp: &mut Datapath<'static>) {
    let node = dp.config().node.0;
    add_tcp_service(
        dp.services_mut(),
        ServiceId(0),
        &[ready_backend(WEB.ip, TARGET_PORT, NodeId(NODE2.id))],
        &[(SERVICE_IP, SERVICE_PORT, FrontendKind::ClusterIp)],
    )
    .expect("room for the service");
    println!(
        "node {node}: service web {SERVICE_IP}:{SERVICE_PORT}/TCP -> backend {}:{TARGET_PORT} on node {}",
        WEB.ip, NODE2.id
    );
}

/// A TCP segment from `pod` through its node's router MAC, in a fresh buffer.
fn pod_segment(
    pod: &PodSpec,
    router_mac: EthernetAddress,
    dst: (Ipv4Addr, u16),
    src_port: u16,
    flags: u8,
) -> Packet {
    let mut buf = vec![0u8; HEADROOM + 128];
    let len = frames::write_ipv4_frame(
        &mut buf[HEADROOM..],
        (pod.mac, pod.ip),
        (router_mac, dst.0),
        Transport::Tcp {
            src_port,
            dst_port: dst.1,
            seq: 1000,
            ack: if flags & ACK != 0 { 1001 } else { 0 },
            flags,
        },
    );
    Packet {
        buf,
        frame: Span {
            start: HEADROOM,
            len,
        },
    }
}

/// Runs one frame through a node's datapath and prints what came in and what the
/// datapath decided.
fn process(dp: &mut Datapath<'static>, ingress: Ingress, mut packet: Packet) -> (Packet, Action) {
    let node = dp.config().node.0;
    let from = match ingress {
        Ingress::Port(p) => format!("port {}", p.0),
        Ingress::Underlay {
            source,
            source_port,
        } => format!("the VXLAN socket, from {source}:{source_port}"),
    };
    println!("node {node} <- {from}");
    let action = dp.process(NOW, ingress, &mut packet.buf, packet.frame);
    let out = match action {
        Action::Deliver { port, frame } => {
            println!("  Action::Deliver to port {}", port.0);
            frame
        }
        Action::Encap(e) => {
            println!(
                "  Action::Encap for node {}: VXLAN to {}:{} from UDP port {} ({} byte outer frame, {} byte UDP payload)",
                e.node.0, e.remote, e.remote_port, e.source_port, e.outer_frame.len, e.udp_payload.len
            );
            e.outer_frame
        }
        Action::Reply { frame } => {
            println!("  Action::Reply ({} bytes)", frame.len);
            frame
        }
        Action::Drop(reason) => panic!("node {node} dropped the frame: {}", reason.name()),
    };
    println!("  out: {}", frames::describe(&packet.buf[out.range()]));
    (packet, action)
}

/// Step 1: the client's SYN to the service address enters node 1 on the client's port.
fn client_sends_syn(node1: &mut Datapath<'static>) -> (Packet, Action) {
    println!();
    println!(
        "== 1. client {}:{CLIENT_PORT} opens a connection to {SERVICE_IP}:{SERVICE_PORT}",
        CLIENT.ip
    );
    let syn = pod_segment(
        &CLIENT,
        NODE1.router_mac,
        (SERVICE_IP, SERVICE_PORT),
        CLIENT_PORT,
        SYN,
    );
    println!("  in:  {}", frames::describe(&syn.buf[syn.frame.range()]));
    let (packet, action) = process(node1, Ingress::Port(CLIENT.port), syn);
    let tracked = node1.tables().conntrack.iter().next().map(|(_, e)| e);
    if let Some(entry) = tracked {
        let (o, t) = (entry.original(), entry.translated(Direction::Original));
        println!(
            "  DNAT {} -> {} (Maglev chose the backend; conntrack pins it)",
            frames::endpoint(o.dst, o.dst_port),
            frames::endpoint(t.dst, t.dst_port)
        );
        println!(
            "  conntrack on node 1: {} connection, {} -> {}, state {:?}",
            node1.tables().conntrack.len(),
            frames::endpoint(o.src, o.src_port),
            frames::endpoint(o.dst, o.dst_port),
            entry.state()
        );
    }
    (packet, action)
}

/// Step 2: the VXLAN payload of the encapsulated SYN arrives on node 2's UDP socket (a fresh buffer with headroom, as a shell would receive it).
fn node2_receives(
    node2: &mut Datapath<'static>,
    (packet, action): &(Packet, Action),
) -> (Packet, Action) {
    println!();
    println!("== 2. the SYN crosses the underlay to node 2");
    let received = carry(packet, action);
    let Action::Encap(e) = action else {
        unreachable!("carry checked it")
    };
    let ingress = Ingress::Underlay {
        source: IpAddr::V4(NODE1.underlay),
        source_port: e.source_port,
    };
    let (packet, action) = process(node2, ingress, received);
    if let Action::Deliver { frame, .. } = action {
        if let Some((src, dst)) = frames::tcp_endpoints(&packet.buf[frame.range()]) {
            println!(
                "  delivered to pod {}: {src} -> {dst} (the client's real address)",
                WEB.name
            );
        }
    }
    (packet, action)
}

/// The UDP payload of an `Encap` action, copied after fresh headroom.
fn carry(packet: &Packet, action: &Action) -> Packet {
    let Action::Encap(e) = action else {
        panic!("expected an encapsulated frame, got {action:?}")
    };
    let payload = &packet.buf[e.udp_payload.range()];
    let mut buf = vec![0u8; HEADROOM];
    buf.extend_from_slice(payload);
    println!(
        "  carried: {} bytes of UDP payload from {}:{} to {}:{}",
        payload.len(),
        packet_outer_source(packet, e.outer_frame),
        e.source_port,
        e.remote,
        e.remote_port
    );
    Packet {
        buf,
        frame: Span {
            start: HEADROOM,
            len: payload.len(),
        },
    }
}

/// The outer IPv4 source address of an encapsulated frame.
fn packet_outer_source(packet: &Packet, outer: Span) -> Ipv4Addr {
    let bytes = &packet.buf[outer.range()];
    Ipv4Addr::new(bytes[26], bytes[27], bytes[28], bytes[29])
}

/// Step 3: `web` answers the SYN it received with a SYN-ACK to the client's address.
fn web_answers(
    node2: &mut Datapath<'static>,
    (packet, action): &(Packet, Action),
) -> (Packet, Action) {
    let Action::Deliver { frame, .. } = action else {
        panic!("expected the SYN to be delivered, got {action:?}")
    };
    let (client, _) =
        frames::tcp_endpoints(&packet.buf[frame.range()]).expect("a TCP segment was delivered");
    println!();
    println!("== 3. web answers with a SYN-ACK to {client}");
    let synack = pod_segment(
        &WEB,
        NODE2.router_mac,
        (CLIENT.ip, CLIENT_PORT),
        TARGET_PORT,
        SYN | ACK,
    );
    println!(
        "  in:  {}",
        frames::describe(&synack.buf[synack.frame.range()])
    );
    process(node2, Ingress::Port(WEB.port), synack)
}

/// Step 4: node 1 receives the reply, finds the connection and reverses the NAT.
fn node1_receives_reply(node1: &mut Datapath<'static>, reply: &(Packet, Action)) {
    println!();
    println!("== 4. the SYN-ACK crosses back to node 1");
    let received = carry(&reply.0, &reply.1);
    let Action::Encap(e) = reply.1 else {
        unreachable!("carry checked it")
    };
    let ingress = Ingress::Underlay {
        source: IpAddr::V4(NODE2.underlay),
        source_port: e.source_port,
    };
    let (packet, action) = process(node1, ingress, received);
    let Action::Deliver { port, frame } = action else {
        panic!("expected the reply to be delivered, got {action:?}")
    };
    let (src, dst) =
        frames::tcp_endpoints(&packet.buf[frame.range()]).expect("a TCP segment was delivered");
    println!(
        "  reverse NAT: delivered to pod {} on port {} as {src} -> {dst} (from the service address)",
        CLIENT.name, port.0
    );
}

/// What each node did, and that nothing was dropped.
fn summary(node1: &Datapath<'static>, node2: &Datapath<'static>) {
    println!();
    println!("== summary");
    for dp in [node1, node2] {
        let s = dp.stats();
        println!(
            "node {}: delivered {}, encapsulated {}, decapsulated {}, replied {}, dropped {}, connections tracked {}",
            dp.config().node.0,
            s.delivered,
            s.encapsulated,
            s.decapsulated,
            s.replied,
            s.dropped,
            dp.tables().conntrack.len()
        );
    }
}

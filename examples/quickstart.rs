//! podwire quickstart: the core as a library, one step per function.
//!
//! 1. **IPAM**: allocate pod addresses from this node's block 10.244.1.0/24, next-fit.
//! 2. **Routing**: a longest-prefix-match route table over caller-owned storage with
//!    the node's gateway, its pods, two remote nodes' blocks and a default route, and
//!    a few lookups.
//! 3. **VXLAN**: a VTEP table; a frame from the first pod to a pod on node 2 is routed
//!    (the table says "node 2"), encapsulated in place for node 2's VTEP, printed in
//!    hex and decoded in one line.
//! 4. **The peer** validates and decapsulates it, and learns which node sent it.
//!
//! Nothing here touches a network: frames are bytes in a buffer. Every table takes its
//! memory from the caller; this program uses arrays and `Vec`s, a firmware would use
//! statics of the same shapes.
//!
//! Run it with `cargo run -p podwire-examples --bin quickstart`.

use std::net::{IpAddr, Ipv4Addr};

use podwire_core::ids::{NodeId, PortId};
use podwire_core::ipam::{Cidr, Ipv4Block24};
use podwire_core::route::{
    GatewaySlot, Ipv4Prefix, Ipv4RouteTable, NextHop, RouteEntry, RouteLayout, RouteStorage,
    TrieNode,
};
use podwire_core::vxlan::{Encapsulated, Vtep, VtepSlot, VtepTable, VxlanConfig, IPV4_OVERHEAD};
use podwire_core::wire::EthernetAddress;

use podwire_examples as frames;
use podwire_examples::Transport;

/// This node's pod block.
const POD_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
/// The underlay address and MAC of this node (node 1) and of its peers.
const NODES: [(u16, Ipv4Addr, EthernetAddress); 3] = [
    (1, Ipv4Addr::new(192, 168, 56, 11), mac(0x0a)),
    (2, Ipv4Addr::new(192, 168, 56, 12), mac(0x0b)),
    (3, Ipv4Addr::new(192, 168, 56, 13), mac(0x0c)),
];
/// The underlay router behind the default route.
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 1);
/// A pod on node 2 that our first pod talks to.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

const fn mac(last: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x50, 0x57, 0x00, 0x00, last])
}

fn main() {
    let pods = allocate_pod_ips();

    let layout = Ipv4RouteTable::layout(RouteLayout::suggested_direct_bits(16), 16, 4);
    let mut direct = vec![0u32; layout.direct];
    let mut nodes = vec![TrieNode::default(); layout.nodes];
    let mut leaves = vec![0u32; layout.leaves];
    let mut routes = vec![RouteEntry::default(); layout.routes];
    let mut gateways = vec![GatewaySlot::default(); layout.gateways];
    let storage = RouteStorage {
        direct: &mut direct,
        nodes: &mut nodes,
        leaves: &mut leaves,
        routes: &mut routes,
        gateways: &mut gateways,
    };
    let table = build_routes(storage, &pods);
    show_lookups(&table, &pods);

    let (_, local_ip, local_mac) = NODES[0];
    let config = vxlan_endpoint(local_ip, local_mac);
    let mut vtep_storage = [VtepSlot::EMPTY; 16];
    let vteps = vtep_table("node 1", &mut vtep_storage);

    let mut buf = [0u8; 256];
    let inner_len = write_pod_frame(&mut buf[IPV4_OVERHEAD..], pods[0]);
    let outer = route_and_encapsulate(&table, &config, &vteps, &mut buf, inner_len);
    receive_on_peer(&buf[outer.frame()]);
}

/// Step 1: pod addresses from the node's /24 block. The allocator is a fixed-size
/// bitmap (no heap) with a next-fit cursor: an address that was just freed is not
/// handed out again until the cursor wraps, so a new pod never inherits the address of
/// one that may still have connections in flight.
fn allocate_pod_ips() -> Vec<Ipv4Addr> {
    let cidr = Cidr::new(POD_BLOCK, 24).expect("a valid /24");
    let mut block = Ipv4Block24::new(cidr).expect("a /24 fits a 256-bit block");
    println!("== IPAM: pod addresses from {cidr}, next-fit");
    println!(
        "gateway {} (reserved), {} addresses for pods",
        block.gateway(),
        block.capacity()
    );
    let mut pods = Vec::new();
    for _ in 0..3 {
        let ip = block.allocate().expect("the block has room");
        println!("allocated {ip}");
        pods.push(ip);
    }
    let gone = pods.remove(1);
    block.release(gone).expect("it was allocated");
    println!("released {gone}");
    let ip = block.allocate().expect("the block has room");
    println!("allocated {ip} (next-fit: {gone} is not reused at once)");
    pods.push(ip);
    println!(
        "{} allocated, {} free, cursor at {}",
        block.allocated(),
        block.free(),
        block.cursor()
    );
    pods
}

/// Step 2: the route table. Local pods are /32s to their ports, the gateway address
/// goes to the host, the rest of our block is a blackhole, remote blocks go to their
/// nodes (VXLAN), and everything else to the underlay router.
fn build_routes<'a>(storage: RouteStorage<'a, Ipv4Addr>, pods: &[Ipv4Addr]) -> Ipv4RouteTable<'a> {
    let mut table = Ipv4RouteTable::new(storage).expect("direct array is a power of two");
    let prefix = |addr, len| Ipv4Prefix::new(addr, len).expect("no host bits set");
    let mut add = |p: Ipv4Prefix, hop| {
        table.insert(p, hop).expect("the table has room");
    };
    add(prefix(POD_BLOCK, 24), NextHop::Blackhole);
    add(
        Ipv4Prefix::host(Ipv4Addr::new(10, 244, 1, 1)),
        NextHop::Host,
    );
    for (i, &pod) in pods.iter().enumerate() {
        add(Ipv4Prefix::host(pod), NextHop::Port(PortId(i as u16 + 1)));
    }
    add(
        prefix(Ipv4Addr::new(10, 244, 2, 0), 24),
        NextHop::Node(NodeId(2)),
    );
    add(
        prefix(Ipv4Addr::new(10, 244, 3, 0), 24),
        NextHop::Node(NodeId(3)),
    );
    add(prefix(Ipv4Addr::UNSPECIFIED, 0), NextHop::Gateway(UPLINK));
    println!();
    println!("== Routing: {} routes", table.len());
    for (p, hop) in table.iter() {
        println!("  {:<18} -> {}", p.to_string(), hop_name(hop));
    }
    table
}

/// Step 2, continued: longest-prefix-match lookups, the datapath's per-packet call.
fn show_lookups(table: &Ipv4RouteTable<'_>, pods: &[Ipv4Addr]) {
    println!("lookups:");
    let unused = Ipv4Addr::new(10, 244, 1, 200);
    for addr in [
        pods[0],
        unused,
        REMOTE_POD,
        Ipv4Addr::new(10, 244, 3, 9),
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        let hop = table.lookup(addr).map_or("no route".into(), hop_name);
        println!("  {addr:<15} -> {hop}");
    }
}

/// Step 3a: this node's VXLAN endpoint (flannel defaults: VNI 1, UDP port 8472).
fn vxlan_endpoint(ip: Ipv4Addr, mac: EthernetAddress) -> VxlanConfig {
    let mut config = VxlanConfig::new(IpAddr::V4(ip), mac);
    config.udp_checksum = true;
    println!();
    println!("== VXLAN");
    println!(
        "node {ip}: VNI {}, UDP port {}, underlay MTU {}, pod MTU {}",
        config.vni,
        config.dst_port,
        config.underlay_mtu,
        config.pod_mtu()
    );
    config
}

/// Step 3b: the VTEP table over caller-owned storage: where each node is on the
/// underlay.
fn vtep_table<'a>(who: &str, storage: &'a mut [VtepSlot]) -> VtepTable<'a> {
    let mut vteps = VtepTable::new(storage);
    for (node, ip, mac) in NODES {
        vteps
            .insert(Vtep {
                node: NodeId(node),
                ip: IpAddr::V4(ip),
                mac,
            })
            .expect("the table has room");
    }
    println!(
        "{who}'s VTEP table: {} of {} slots used",
        vteps.len(),
        vteps.capacity()
    );
    vteps
}

/// Step 3c: a frame from pod `src` to a pod on node 2 (UDP 40000 -> 53), written where
/// a shell receives frames: after the encapsulation headroom. Returns its length.
fn write_pod_frame(out: &mut [u8], src: Ipv4Addr) -> usize {
    let (_, _, router_mac) = NODES[0];
    let (_, _, peer_mac) = NODES[1];
    let len = frames::write_ipv4_frame(
        out,
        (router_mac, src),
        (peer_mac, REMOTE_POD),
        Transport::Udp {
            src_port: 40000,
            dst_port: 53,
            payload: b"hello from pod a",
        },
    );
    frames::print_hex("pod frame", &out[..len]);
    len
}

/// Step 3d: route the frame's destination, look the node up in the VTEP table and
/// encapsulate in place: the outer headers go into the headroom, nothing is copied.
fn route_and_encapsulate(
    table: &Ipv4RouteTable<'_>,
    config: &VxlanConfig,
    vteps: &VtepTable<'_>,
    buf: &mut [u8],
    inner_len: usize,
) -> Encapsulated {
    let Some(NextHop::Node(node)) = table.lookup(REMOTE_POD) else {
        panic!("{REMOTE_POD} should route to a node");
    };
    let vtep = vteps.get(node).expect("every routed node has a VTEP");
    let outer = config
        .encapsulate(vtep, buf, IPV4_OVERHEAD, inner_len, 1)
        .expect("the frame fits the underlay MTU");
    println!(
        "{REMOTE_POD} routes to node {}: encapsulated for {}, {} bytes, UDP source port {}",
        node.0, vtep.ip, outer.len, outer.src_port
    );
    frames::print_hex("outer frame", &buf[outer.frame()]);
    println!("decoded: {}", frames::describe(&buf[outer.frame()]));
    outer
}

/// Step 4: the peer validates every outer header and the sender, and decapsulates.
fn receive_on_peer(frame: &[u8]) {
    let (_, peer_ip, peer_mac) = NODES[1];
    let peer = VxlanConfig::new(IpAddr::V4(peer_ip), peer_mac);
    let mut storage = [VtepSlot::EMPTY; 16];
    let vteps = vtep_table("node 2", &mut storage);
    match peer.decapsulate(&vteps, frame) {
        Ok(d) => {
            println!(
                "peer accepted it: from node {}, VNI {}, inner frame {} bytes",
                d.node.0, d.vni, d.inner_len
            );
            println!("inner: {}", frames::describe(&frame[d.inner()]));
        }
        Err(e) => println!("peer dropped it: {}", e.name()),
    }
}

/// A next hop in words.
fn hop_name(hop: NextHop) -> String {
    match hop {
        NextHop::Port(p) => format!("local port {}", p.0),
        NextHop::Host => "host".into(),
        NextHop::Node(n) => format!("node {} (VXLAN)", n.0),
        NextHop::Gateway(g) => format!("gateway {g}"),
        NextHop::Blackhole => "blackhole (drop)".into(),
    }
}

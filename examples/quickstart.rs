//! podwire quickstart: the core as a library, one step per function.
//!
//! Sets up this node's VXLAN endpoint and a VTEP table, builds a pod-to-pod frame
//! in a buffer with headroom, encapsulates it in place for the peer node, prints the
//! outer frame in hex, and decapsulates it again as the peer would.
//!
//! Run it with `cargo run -p podwire-examples --bin quickstart`.

use std::net::{IpAddr, Ipv4Addr};

use podwire_core::ids::NodeId;
use podwire_core::vxlan::{Encapsulated, Vtep, VtepSlot, VtepTable, VxlanConfig, IPV4_OVERHEAD};
use podwire_core::wire::EthernetAddress;

/// This node's underlay address and MAC.
const NODE_A_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 11);
const NODE_A_MAC: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0x00, 0x00, 0x0a]);
/// The peer node's underlay address and MAC.
const NODE_B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 12);
const NODE_B_MAC: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0x00, 0x00, 0x0b]);

fn main() {
    let config = node_config(NODE_A_IP, NODE_A_MAC);
    let mut storage = [VtepSlot::EMPTY; 16];
    let vteps = vtep_table(&mut storage);

    let mut buf = [0u8; 256];
    let inner_len = build_pod_frame(&mut buf[IPV4_OVERHEAD..]);
    let outer = encapsulate(&config, &vteps, NodeId(2), &mut buf, inner_len);
    print_frame("outer frame", &buf[outer.frame()]);

    receive_on_peer(&buf[outer.frame()]);
}

/// Step 1: this node's VXLAN endpoint (flannel defaults: VNI 1, UDP port 8472).
fn node_config(ip: Ipv4Addr, mac: EthernetAddress) -> VxlanConfig {
    let mut config = VxlanConfig::new(IpAddr::V4(ip), mac);
    config.udp_checksum = true;
    println!(
        "node {ip}: VNI {}, UDP port {}, underlay MTU {}, pod MTU {}",
        config.vni,
        config.dst_port,
        config.underlay_mtu,
        config.pod_mtu()
    );
    config
}

/// Step 2: the VTEP table over caller-owned storage: node 1 is us, node 2 the peer.
fn vtep_table(storage: &mut [VtepSlot]) -> VtepTable<'_> {
    let mut vteps = VtepTable::new(storage);
    for (node, ip, mac) in [(1, NODE_A_IP, NODE_A_MAC), (2, NODE_B_IP, NODE_B_MAC)] {
        vteps
            .insert(Vtep {
                node: NodeId(node),
                ip: IpAddr::V4(ip),
                mac,
            })
            .expect("the table has room for two nodes");
    }
    println!(
        "VTEP table: {} of {} slots used",
        vteps.len(),
        vteps.capacity()
    );
    vteps
}

/// Step 3: a pod-to-pod frame (10.244.1.2 → 10.244.2.3, UDP 40000 → 53) written where a
/// shell would receive it: after the encapsulation headroom. Returns its length.
fn build_pod_frame(out: &mut [u8]) -> usize {
    let payload = b"hello from pod a";
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut frame = Vec::with_capacity(14 + ip_len);
    frame.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x03]); // destination pod MAC
    frame.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]); // source pod MAC
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
    let checksum = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&53u16.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no inner UDP checksum
    frame.extend_from_slice(payload);
    out[..frame.len()].copy_from_slice(&frame);
    print_frame("pod frame", &frame);
    frame.len()
}

/// Step 4: look the destination node up and encapsulate in place (no copy).
fn encapsulate(
    config: &VxlanConfig,
    vteps: &VtepTable<'_>,
    node: NodeId,
    buf: &mut [u8],
    inner_len: usize,
) -> Encapsulated {
    let vtep = vteps.get(node).expect("node 2 is in the VTEP table");
    let outer = config
        .encapsulate(vtep, buf, IPV4_OVERHEAD, inner_len, 1)
        .expect("the frame fits the underlay MTU");
    println!(
        "encapsulated for node {} at {}: {} bytes, UDP source port {}",
        node.0, vtep.ip, outer.len, outer.src_port
    );
    outer
}

/// Step 5: the peer validates and decapsulates the frame, and learns who sent it.
fn receive_on_peer(frame: &[u8]) {
    let peer = VxlanConfig::new(IpAddr::V4(NODE_B_IP), NODE_B_MAC);
    let mut storage = [VtepSlot::EMPTY; 16];
    let vteps = vtep_table(&mut storage);
    match peer.decapsulate(&vteps, frame) {
        Ok(d) => {
            println!(
                "peer accepted it: from node {}, VNI {}, inner frame {} bytes",
                d.node.0, d.vni, d.inner_len
            );
            print_frame("inner frame", &frame[d.inner()]);
        }
        Err(e) => println!("peer dropped it: {}", e.name()),
    }
}

/// The IPv4 header checksum (RFC 1071).
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Prints a frame as hex, 16 bytes per line.
fn print_frame(label: &str, bytes: &[u8]) {
    println!("{label} ({} bytes):", bytes.len());
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {:04x}  {}", i * 16, hex.join(" "));
    }
}

//! Interop with the Linux kernel's flannel-style VXLAN: a node whose pods are wired
//! by the kernel exactly as flannel's vxlan backend does it (cni0 bridge, veth pairs,
//! `flannel.1` = kernel `vxlan` VNI 1 dstport 8472 nolearning, and per peer the FDB,
//! neighbour and onlink route entries flannel programs) exchanges pod traffic with a
//! podwire node, both ways, with real pod source IPs. The podwire node learns the
//! kernel node (and its VTEP MAC) from the Node object's flannel annotation.
//! Needs root; without it the test prints "skipped" and passes.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::can_run;
use common::lab::{disable_tx_checksum, drops, lab, tcp_bulk, wait_for};
use podwire_agent::dataplane::node::router_mac;
use podwire_agent::lab::topology::{add_netns, exec, ip};
use podwire_agent::lab::traffic::{ping, ping_size, tcp_ask, udp_ask, Reporter, REPORT_PORT};

const FLANNEL_MAC: &str = "02:fa:00:00:00:09";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn kernel_flannel_node_and_podwire_node_exchange_pod_traffic_both_ways() {
    if !can_run() {
        return;
    }
    let mut lab = lab(1, 1);
    let pw_pod = lab.pods[0].clone();
    let pw_node = lab.nodes[0].clone();
    let pw_vtep = mac(router_mac(pw_node.ip));

    // The kernel node: underlay eth0 172.30.0.99, pod CIDR 10.244.9.0/24.
    let (k, k_ip) = lab.add_foreign_host("kflannel", 99).unwrap();
    let kx = |args: &[&str]| {
        ip(&k, args).unwrap();
    };
    exec(&k, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    kx(&["link", "add", "cni0", "mtu", "1450", "type", "bridge"]);
    kx(&["addr", "add", "10.244.9.1/24", "dev", "cni0"]);
    kx(&["link", "set", "cni0", "up"]);
    let k_ip_s = k_ip.to_string();
    kx(&[
        "link",
        "add",
        "flannel.1",
        "address",
        FLANNEL_MAC,
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &k_ip_s,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    kx(&["addr", "add", "10.244.9.0/32", "dev", "flannel.1"]);
    kx(&["link", "set", "flannel.1", "up"]);
    // A pod on the kernel node, wired like the bridge CNI plugin does.
    let k_pod = format!("{}-kpod", lab.paths.prefix);
    add_netns(&k_pod).unwrap();
    ip(
        &k_pod,
        &[
            "link", "add", "eth0", "mtu", "1450", "type", "veth", "peer", "name", "vethk1", "mtu",
            "1450", "netns", &k,
        ],
    )
    .unwrap();
    kx(&["link", "set", "vethk1", "master", "cni0", "up"]);
    ip(&k_pod, &["addr", "add", "10.244.9.2/24", "dev", "eth0"]).unwrap();
    ip(&k_pod, &["link", "set", "eth0", "up"]).unwrap();
    ip(&k_pod, &["route", "add", "default", "via", "10.244.9.1"]).unwrap();
    let k_pod_ip = Ipv4Addr::new(10, 244, 9, 2);
    // Between veths nothing ever fills in a checksum left to offload: the kernel
    // pod's TCP/UDP would reach the other side of the overlay with a partial one
    // (a NIC or a real wire fills it in). The kernel pod computes its own, as it
    // does behind a physical NIC without offload.
    disable_tx_checksum(&k_pod, "eth0");
    // What flannel programs for the podwire peer.
    let pw_ip = pw_node.ip.to_string();
    let pw_net0 = pw_node.pod_cidr.network().to_string();
    exec(
        &k,
        &[
            "bridge",
            "fdb",
            "append",
            &pw_vtep,
            "dev",
            "flannel.1",
            "dst",
            &pw_ip,
        ],
    )
    .unwrap();
    kx(&[
        "neigh",
        "add",
        &pw_net0,
        "lladdr",
        &pw_vtep,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    kx(&[
        "route",
        "add",
        &pw_node.pod_cidr.to_string(),
        "via",
        &pw_net0,
        "dev",
        "flannel.1",
        "onlink",
    ]);

    // The kernel node as flannel publishes it in the cluster state.
    lab.extra_manifests = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node9\n  annotations:\n    \
         flannel.alpha.coreos.com/backend-type: vxlan\n    \
         flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"{FLANNEL_MAC}\"}}'\n    \
         flannel.alpha.coreos.com/public-ip: {k_ip}\n\
         spec: {{podCIDR: 10.244.9.0/24}}\n\
         status: {{addresses: [{{type: InternalIP, address: {k_ip}}}]}}\n"
    );
    lab.publish_state().unwrap();
    wait_for("podwire learns node9", || {
        lab.podwire("node1", &["routes"])
            .unwrap()
            .contains("10.244.9.0/24")
    });

    let _r1 = Reporter::start(&pw_pod.netns, REPORT_PORT).unwrap();
    let _r2 = Reporter::start(&k_pod, REPORT_PORT).unwrap();
    // podwire pod → kernel pod.
    assert!(ping(&pw_pod.netns, k_pod_ip), "podwire → kernel ICMP");
    let to_k = SocketAddr::new(IpAddr::V4(k_pod_ip), REPORT_PORT);
    assert_eq!(tcp_ask(&pw_pod.netns, to_k).unwrap(), pw_pod.ip.to_string());
    assert_eq!(udp_ask(&pw_pod.netns, to_k).unwrap(), pw_pod.ip.to_string());
    // kernel pod → podwire pod.
    assert!(ping(&k_pod, pw_pod.ip), "kernel → podwire ICMP");
    let to_pw = SocketAddr::new(IpAddr::V4(pw_pod.ip), REPORT_PORT);
    assert_eq!(tcp_ask(&k_pod, to_pw).unwrap(), k_pod_ip.to_string());
    assert_eq!(udp_ask(&k_pod, to_pw).unwrap(), k_pod_ip.to_string());
    // Full-size frames both ways (pod MTU 1450 on both sides).
    assert!(ping_size(&pw_pod.netns, k_pod_ip, Some(1422)));
    assert!(ping_size(&k_pod, pw_pod.ip, Some(1422)));
    // Bulk TCP both ways: podwire's segments of its pod's super-frames pass the
    // kernel's checks, and the kernel's segments are coalesced for podwire's pod.
    let n = 4 << 20;
    assert_eq!(
        tcp_bulk(&pw_pod.netns, &k_pod, k_pod_ip, n),
        n,
        "podwire → kernel"
    );
    assert_eq!(
        tcp_bulk(&k_pod, &pw_pod.netns, pw_pod.ip, n),
        n,
        "kernel → podwire"
    );
    // The kernel's VXLAN device saw it too: it decapsulated our frames.
    let stats = ip(&k, &["-s", "-j", "link", "show", "flannel.1"]).unwrap();
    let j: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        j[0]["stats64"]["rx"]["packets"].as_u64().unwrap() >= 6,
        "{stats}"
    );
    assert!(
        j[0]["stats64"]["tx"]["packets"].as_u64().unwrap() >= 6,
        "{stats}"
    );
    assert_eq!(drops(&lab, "node1", "unknown_vtep"), 0);
    assert_eq!(drops(&lab, "node1", "spoofed_ip"), 0);
}

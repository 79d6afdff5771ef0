//! End-to-end multi-node tests: labs of node namespaces on an underlay bridge
//! namespace, one real `podwire agent` per node, pods created through `podwire-cni`
//! as a runtime does (the same builder as `podwire lab`). Every lab has a random
//! namespace prefix and run directory; a guard removes it (agents, namespaces,
//! files) on drop, also when a test panics. Nothing touches the root namespace.
//! They need root; without it they print "skipped" and pass.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::can_run;
use common::lab::{assert_all_pass, datapath_status, drops, lab, rx_packets, tcp_bulk, wait_for};
use podwire_agent::lab::demo::{self, Coverage};
use podwire_agent::lab::topology::{in_netns, ip};
use podwire_agent::lab::traffic::{ping, ping_size, tcp_ask, udp_ask, Reporter, REPORT_PORT};

#[test]
fn three_nodes_three_pods_full_matrix_tcp_udp_icmp_and_node_pod() {
    if !can_run() {
        return;
    }
    let lab = lab(3, 3);
    let checks = demo::run_checks(&lab, Coverage::Full).unwrap();
    // 9 one-IP checks, 72 ordered pod pairs × 3, 3 nodes × 9 pods × 2 directions × 3.
    assert_eq!(checks.len(), 9 + 72 * 3 + 3 * 9 * 2 * 3);
    assert_all_pass(&checks);
    let cross = checks
        .iter()
        .filter(|c| c.what == "pod→pod cross-node")
        .count();
    assert_eq!(cross, 54 * 3);
    // Cross-node traffic really went through the core's VXLAN on every node.
    for n in ["node1", "node2", "node3"] {
        let line = datapath_status(&lab, n);
        let count = |k: &str| -> u64 {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words.iter().position(|w| *w == k).unwrap();
            words[i + 1].parse().unwrap()
        };
        assert!(
            count("encapsulated") > 0 && count("decapsulated") > 0,
            "{line}"
        );
    }
}

#[test]
fn node_removed_and_added_back_live_and_foreign_vxlan_is_dropped_and_counted() {
    if !can_run() {
        return;
    }
    let mut lab = lab(2, 1);
    let a = lab.pods[0].clone();
    let b = lab.pods[1].clone();
    assert!(ping(&a.netns, b.ip));

    // Removed from the cluster state: node1 loses the route and the VTEP.
    lab.set_listed("node2", false).unwrap();
    wait_for("node2 gone from node1's routes", || {
        !lab.podwire("node1", &["routes"]).unwrap().contains("node2")
    });
    let host_routes = ip(&lab.nodes[0].netns, &["route", "show", "10.244.2.0/24"]).unwrap();
    assert!(host_routes.trim().is_empty(), "{host_routes}");
    assert!(!ping(&a.netns, b.ip));
    // Frames node2 still sends are from an address node1 no longer knows.
    assert!(!ping(&b.netns, a.ip));
    assert!(drops(&lab, "node1", "unknown_vtep") >= 1);

    // Listed again: reachable again, both ways.
    lab.set_listed("node2", true).unwrap();
    wait_for("node2 back", || ping(&a.netns, b.ip));
    assert!(ping(&b.netns, a.ip));

    // A foreign VXLAN sender on the underlay: a valid-looking VXLAN datagram (VNI 1,
    // inner frame to a pod) from an address that is no node is dropped and counted.
    let (foreign, _) = lab.add_foreign_host("foreign", 99).unwrap();
    let before = drops(&lab, "node1", "unknown_vtep");
    let node1 = SocketAddr::new(IpAddr::V4(lab.nodes[0].ip), 8472);
    let target = a.ip;
    in_netns(&foreign, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut pkt = vec![0x08, 0, 0, 0, 0, 0, 1, 0]; // VXLAN, I flag, VNI 1
        pkt.extend_from_slice(&[0x0e, 0x58, 1, 1, 1, 1, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip4 = [
            0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 9, 9, 9, 0, 0, 0, 0,
        ];
        ip4[16..20].copy_from_slice(&target.octets());
        pkt.extend_from_slice(&ip4);
        pkt.extend_from_slice(&[0x30, 0x39, 0x1e, 0x61, 0, 8, 0, 0]);
        for _ in 0..3 {
            s.send_to(&pkt, node1).unwrap();
        }
    })
    .unwrap();
    wait_for("foreign VXLAN counted", || {
        drops(&lab, "node1", "unknown_vtep") >= before + 3
    });
}

#[test]
fn agent_restart_on_one_node_keeps_cross_node_traffic_working() {
    if !can_run() {
        return;
    }
    let mut lab = lab(2, 1);
    let a = lab.pods[0].clone();
    let b = lab.pods[1].clone();
    let _rb = Reporter::start(&b.netns, REPORT_PORT).unwrap();
    let _ra = Reporter::start(&a.netns, REPORT_PORT).unwrap();
    let to_b = SocketAddr::new(IpAddr::V4(b.ip), REPORT_PORT);
    assert_eq!(tcp_ask(&a.netns, to_b).unwrap(), a.ip.to_string());
    lab.kill_agent("node1").unwrap();
    assert!(!ping(&a.netns, b.ip), "no agent, no forwarding");
    lab.start_agent("node1").unwrap();
    lab.wait_agent("node1").unwrap();
    wait_for("traffic resumes", || ping(&a.netns, b.ip));
    assert_eq!(tcp_ask(&a.netns, to_b).unwrap(), a.ip.to_string());
    assert_eq!(udp_ask(&a.netns, to_b).unwrap(), a.ip.to_string());
    let to_a = SocketAddr::new(IpAddr::V4(a.ip), REPORT_PORT);
    assert_eq!(tcp_ask(&b.netns, to_a).unwrap(), b.ip.to_string());
    // The pod kept its address (IPAM and TAP re-adopted).
    let pods = lab.podwire("node1", &["pods"]).unwrap();
    assert!(pods.contains(&a.ip.to_string()), "{pods}");
}

#[test]
fn mtu_full_size_segments_cross_nodes_and_oversized_frames_are_dropped_with_a_reason() {
    if !can_run() {
        return;
    }
    let lab = lab(2, 1);
    let a = lab.pods[0].clone();
    let b = lab.pods[1].clone();
    let mtu = ip(&a.netns, &["-j", "link", "show", "eth0"]).unwrap();
    assert!(mtu.contains("\"mtu\":1450"), "pod MTU = 1500 - 50: {mtu}");
    // Full-size datagrams with Don't Fragment: 1450 - 20 - 8 bytes of ICMP payload.
    assert!(ping_size(&a.netns, b.ip, Some(1422)));
    // Full-size TCP segments (MSS 1410) carry 8 MiB across, intact.
    let n = 8 << 20;
    assert_eq!(tcp_bulk(&a.netns, &b.netns, b.ip, n), n);
    assert_eq!(drops(&lab, "node1", "exceeds_underlay_mtu"), 0);
    assert_eq!(drops(&lab, "node1", "fragment"), 0);
    // A pod that raises its MTU past the overlay's sends frames too large for the
    // underlay: dropped with a reason, never truncated or fragmented.
    ip(&a.netns, &["link", "set", "eth0", "mtu", "1600"]).unwrap();
    assert!(!ping_size(&a.netns, b.ip, Some(1500)));
    assert!(drops(&lab, "node1", "exceeds_underlay_mtu") >= 1);
    // The datapath answered with ICMP fragmentation-needed (MTU 1450), so the
    // sender's kernel learnt the path MTU: the same payload now goes out fragmented
    // to fit, and arrives.
    let pmtu = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.netns,
            "ip",
            "route",
            "get",
            &b.ip.to_string(),
        ])
        .output()
        .unwrap();
    let pmtu = String::from_utf8_lossy(&pmtu.stdout).into_owned();
    assert!(pmtu.contains("mtu 1450"), "{pmtu}");
}

#[test]
fn bulk_tcp_crosses_nodes_intact_coalesced_for_the_pod_and_through_a_cluster_ip() {
    if !can_run() {
        return;
    }
    let mut lab = lab(2, 1);
    let a = lab.pods[0].clone();
    let b = lab.pods[1].clone();
    // Both directions: each agent segments its pod's super-frames once encapsulated
    // (overlay GSO), and the other coalesces them again for its pod (GRO to the TAP).
    for (from, to) in [(&a, &b), (&b, &a)] {
        let before = rx_packets(&to.netns, "eth0");
        let n = 32 << 20;
        assert_eq!(tcp_bulk(&from.netns, &to.netns, to.ip, n), n, "intact");
        let frames = rx_packets(&to.netns, "eth0") - before;
        // Wire-sized, 32 MiB are at least 23,700 segments of at most 1,410 bytes;
        // written one per frame the pod would count as many. Coalesced runs come to
        // tens of segments each; at least 4 on average is asked.
        let segments = n as u64 / 1410;
        assert!(
            frames * 4 <= segments,
            "{frames} frames for {segments} segments: not coalesced"
        );
    }
    // Through a ClusterIP whose backend is on the other node: node1 translates the
    // super-frames (partial checksums stay partial) before it encapsulates them.
    let vip: std::net::Ipv4Addr = "10.96.0.77".parse().unwrap();
    lab.set_extra_manifests(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sink, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{name: bulk, port: 7780, targetPort: 7780}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sink-1, namespace: default, labels: {{kubernetes.io/service-name: sink}}}}
addressType: IPv4
ports: [{{name: bulk, port: 7780, protocol: TCP}}]
endpoints:
- addresses: [{}]
  nodeName: node2
  conditions: {{ready: true, serving: true, terminating: false}}
",
        b.ip
    ))
    .unwrap();
    wait_for("the service on node1", || {
        lab.podwire("node1", &["status"])
            .is_ok_and(|s| s.contains(", 1 service ports"))
    });
    let n = 16 << 20;
    assert_eq!(tcp_bulk(&a.netns, &b.netns, vip, n), n, "via the ClusterIP");
    for node in ["node1", "node2"] {
        assert_eq!(drops(&lab, node, "needs_software_offload"), 0, "{node}");
    }
}

#[test]
fn tshark_on_the_underlay_decodes_valid_vxlan() {
    if !can_run() {
        return;
    }
    if Command::new("tshark").arg("-v").output().is_err() {
        eprintln!("skipped: tshark not installed");
        return;
    }
    let lab = lab(2, 1);
    let a = lab.pods[0].clone();
    let b = lab.pods[1].clone();
    let pcap = lab.paths.run_dir.join("underlay.pcap");
    let mut cap = Command::new("ip")
        .args(["netns", "exec", &lab.underlay, "tshark", "-q", "-i", "br0"])
        .args(["-f", "udp port 8472", "-c", "4", "-w"])
        .arg(&pcap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("capture file", || pcap.exists());
    std::thread::sleep(Duration::from_millis(300));
    let mut ok = false;
    for _ in 0..10 {
        ok |= ping(&a.netns, b.ip);
        if cap.try_wait().unwrap().is_some() {
            break;
        }
    }
    assert!(ok);
    let _ = cap.kill();
    let _ = cap.wait();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-d", "udp.port==8472,vxlan"])
        .args([
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "separator=;"])
        .args(["-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst"])
        .args(["-e", "udp.checksum.status", "-e", "ip.checksum.status"])
        .args(["-e", "icmp.type", "-e", "_ws.expert"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "no VXLAN captured: {text}");
    let (n1, n2) = (lab.nodes[0].ip.to_string(), lab.nodes[1].ip.to_string());
    for l in &lines {
        let f: Vec<&str> = l.split(';').collect();
        assert_eq!(f[0], "1", "VNI: {l}");
        // Outer then inner addresses.
        let src: Vec<&str> = f[1].split(',').collect();
        let dst: Vec<&str> = f[2].split(',').collect();
        assert_eq!(src.len(), 2, "{l}");
        let pods = [a.ip.to_string(), b.ip.to_string()];
        assert!([&n1, &n2].contains(&&src[0].to_string()), "{l}");
        assert!(
            pods.contains(&src[1].to_string()),
            "inner source is a pod: {l}"
        );
        assert!(
            pods.contains(&dst[1].to_string()),
            "inner destination is a pod: {l}"
        );
        // Checksums: the outer UDP checksum is zero (status 3: not present), as RFC 7348 and the
        // kernel's VXLAN do over IPv4; both IPv4 headers and the inner ICMP good.
        assert!(f[3].split(',').all(|s| s == "3"), "UDP checksum: {l}");
        assert!(f[4].split(',').all(|s| s == "1"), "IPv4 checksums: {l}");
        assert!(f[6].is_empty(), "expert info (malformed?): {l}");
    }
}

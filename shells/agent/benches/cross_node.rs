//! Cross-node benchmark: podwire's VXLAN overlay vs the kernel's flannel-style VXLAN
//! datapath, side by side in one run, in the same netns topology (node namespaces on
//! one underlay bridge namespace, MTU 1500, pods with MTU 1450).
//!
//! - TCP throughput: `iperf3` from a pod on one node to a pod on the other
//!   (`IPERF_SECONDS` s, median of `IPERF_RUNS` runs, podwire and kernel alternating).
//! - Round-trip time: a TCP_RR-style ping-pong (1-byte request, 1-byte response,
//!   TCP_NODELAY) between the same pods; mean round trip of one run, median of
//!   `RR_RUNS` runs.
//!
//! podwire: two `podwire agent` nodes built by the lab builder (pods via podwire-cni),
//! with default settings for the headline figures; then, for information, the
//! agents are restarted with `--busy-poll-us` [`BUSY_POLL_US`] and the round trip
//! (and one throughput run) measured again (`*_busy_poll` fields: busy polling trades
//! a spinning core while traffic flows for the wake-ups it saves).
//! Kernel: two namespaces on the same bridge wired as flannel's vxlan backend does
//! (cni0 bridge + veth pods, `flannel.1` VNI 1 port 8472 nolearning, FDB, neighbour and
//! onlink route per peer). Run as root: `cargo bench -p podwire-agent --bench
//! cross_node`. Prints one JSON line per case and, last, the summary object.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::can_run;
use common::lab::lab;
use podwire_agent::lab::topology::{add_netns, exec, in_netns, ip, netns_path};
use podwire_agent::lab::Lab;
use serde_json::{json, Value};

const IPERF_SECONDS: u32 = 10;
const IPERF_RUNS: usize = 3;
const RR_RUNS: usize = 5;
const RR_TIME: Duration = Duration::from_secs(2);
/// The busy-poll window of the informational second podwire measurement.
const BUSY_POLL_US: u64 = 200;

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(v[v.len() / 2])
}

fn in_ns_command(netns: &str, program: &str) -> Command {
    podwire_agent::netlink::netns::command_in(netns_path(netns), program)
}

fn iperf(server_ns: &str, client_ns: &str, server_ip: Ipv4Addr) -> Option<f64> {
    let mut server = in_ns_command(server_ns, "iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns_command(client_ns, "iperf3")
        .args(["-c", &server_ip.to_string(), "-p", "5201", "-J", "-t"])
        .arg(IPERF_SECONDS.to_string())
        .output()
        .ok();
    let _ = server.kill();
    let _ = server.wait();
    let j: Value = serde_json::from_slice(&out?.stdout).ok()?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
}

/// Mean round trip (µs) of 1-byte TCP request/response for `RR_TIME`.
fn tcp_rr(server_ns: &str, client_ns: &str, server_ip: Ipv4Addr) -> Option<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = {
        let ns = server_ns.to_string();
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                let l = TcpListener::bind("0.0.0.0:7790").unwrap();
                tx.send(()).unwrap();
                let (mut s, _) = l.accept().unwrap();
                s.set_nodelay(true).unwrap();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            })
        })
    };
    rx.recv_timeout(Duration::from_secs(5)).ok()?;
    let to = SocketAddr::new(server_ip.into(), 7790);
    let r = in_netns(client_ns, move || -> std::io::Result<f64> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [7u8; 1];
        for _ in 0..100 {
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
        }
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < RR_TIME {
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            n += 1;
        }
        Ok(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
    })
    .ok()?
    .ok();
    let _ = server.join();
    r
}

struct KernelNode {
    ns: String,
    pod_ns: String,
    pod_ip: Ipv4Addr,
    ip: Ipv4Addr,
    cidr: String,
    mac: String,
}

/// A node wired by the kernel as flannel's vxlan backend does, with one pod.
fn kernel_node(lab: &mut Lab, i: u8) -> KernelNode {
    let (ns, node_ip) = lab.add_foreign_host(&format!("k{i}"), 100 + i).unwrap();
    let k = |args: &[&str]| {
        ip(&ns, args).unwrap();
    };
    let net = 100 + i;
    let mac = format!("02:fa:00:00:00:{i:02x}");
    exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    k(&["link", "add", "cni0", "mtu", "1450", "type", "bridge"]);
    k(&["addr", "add", &format!("10.244.{net}.1/24"), "dev", "cni0"]);
    k(&["link", "set", "cni0", "up"]);
    let nip = node_ip.to_string();
    k(&[
        "link",
        "add",
        "flannel.1",
        "address",
        &mac,
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &nip,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    k(&[
        "addr",
        "add",
        &format!("10.244.{net}.0/32"),
        "dev",
        "flannel.1",
    ]);
    k(&["link", "set", "flannel.1", "up"]);
    let pod_ns = format!("{}-k{i}pod", lab.paths.prefix);
    add_netns(&pod_ns).unwrap();
    ip(
        &pod_ns,
        &[
            "link", "add", "eth0", "mtu", "1450", "type", "veth", "peer", "name", "vethp", "mtu",
            "1450", "netns", &ns,
        ],
    )
    .unwrap();
    k(&["link", "set", "vethp", "master", "cni0", "up"]);
    let pod_ip = Ipv4Addr::new(10, 244, net, 2);
    ip(
        &pod_ns,
        &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
    )
    .unwrap();
    ip(&pod_ns, &["link", "set", "eth0", "up"]).unwrap();
    ip(
        &pod_ns,
        &["route", "add", "default", "via", &format!("10.244.{net}.1")],
    )
    .unwrap();
    KernelNode {
        ns,
        pod_ns,
        pod_ip,
        ip: node_ip,
        cidr: format!("10.244.{net}.0/24"),
        mac,
    }
}

/// What flannel programs on `on` for peer `peer`.
fn program_peer(on: &KernelNode, peer: &KernelNode) {
    let gw0 = peer.cidr.replace(".0/24", ".0");
    let pip = peer.ip.to_string();
    exec(
        &on.ns,
        &[
            "bridge",
            "fdb",
            "append",
            &peer.mac,
            "dev",
            "flannel.1",
            "dst",
            &pip,
        ],
    )
    .unwrap();
    ip(
        &on.ns,
        &[
            "neigh",
            "add",
            &gw0,
            "lladdr",
            &peer.mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    ip(
        &on.ns,
        &[
            "route",
            "add",
            &peer.cidr,
            "via",
            &gw0,
            "dev",
            "flannel.1",
            "onlink",
        ],
    )
    .unwrap();
}

fn main() {
    if !can_run() || Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("cross_node needs root, iproute2 and iperf3");
        println!(
            "{}",
            json!({"bench": "cross_node", "skipped": "needs root, iproute2 and iperf3"})
        );
        return;
    }
    let mut lab = lab(2, 1);
    let (pa, pb) = (lab.pods[0].clone(), lab.pods[1].clone());
    let k1 = kernel_node(&mut lab, 1);
    let k2 = kernel_node(&mut lab, 2);
    program_peer(&k1, &k2);
    program_peer(&k2, &k1);
    let reach = |ns: &str, to: Ipv4Addr| podwire_agent::lab::traffic::ping(ns, to);
    assert!(
        reach(&pa.netns, pb.ip),
        "podwire pods cannot reach each other"
    );
    assert!(
        reach(&k1.pod_ns, k2.pod_ip),
        "kernel pods cannot reach each other"
    );

    let (mut pw, mut kf) = (Vec::new(), Vec::new());
    for run in 0..IPERF_RUNS {
        if let Some(g) = iperf(&pb.netns, &pa.netns, pb.ip) {
            pw.push(g);
        }
        if let Some(g) = iperf(&k2.pod_ns, &k1.pod_ns, k2.pod_ip) {
            kf.push(g);
        }
        eprintln!("iperf run {run}: podwire {pw:?} kernel {kf:?}");
    }
    let (mut pw_rr, mut kf_rr) = (Vec::new(), Vec::new());
    for _ in 0..RR_RUNS {
        if let Some(r) = tcp_rr(&pb.netns, &pa.netns, pb.ip) {
            pw_rr.push(r);
        }
        if let Some(r) = tcp_rr(&k2.pod_ns, &k1.pod_ns, k2.pod_ip) {
            kf_rr.push(r);
        }
    }
    let (pw_g, kf_g) = (median(&mut pw.clone()), median(&mut kf.clone()));
    let (pw_r, kf_r) = (median(&mut pw_rr.clone()), median(&mut kf_rr.clone()));
    println!(
        "{}",
        json!({"case": "tcp_gbps", "seconds": IPERF_SECONDS, "podwire_runs": pw, "flannel_runs": kf, "podwire_median": pw_g, "flannel_median": kf_g})
    );
    println!(
        "{}",
        json!({"case": "tcp_rr_us", "seconds_per_run": RR_TIME.as_secs(), "podwire_runs": pw_rr, "flannel_runs": kf_rr, "podwire_median": pw_r, "flannel_median": kf_r})
    );
    // The same podwire nodes with busy polling, for information.
    lab.spec.busy_poll_us = BUSY_POLL_US;
    for node in ["node1", "node2"] {
        lab.kill_agent(node).unwrap();
        lab.start_agent(node).unwrap();
        lab.wait_agent(node).unwrap();
    }
    assert!(
        reach(&pa.netns, pb.ip),
        "podwire pods cannot reach each other after the restart"
    );
    let mut bp_rr = Vec::new();
    for _ in 0..RR_RUNS {
        if let Some(r) = tcp_rr(&pb.netns, &pa.netns, pb.ip) {
            bp_rr.push(r);
        }
    }
    let bp_g = iperf(&pb.netns, &pa.netns, pb.ip);
    let bp_r = median(&mut bp_rr.clone());
    println!(
        "{}",
        json!({"case": "busy_poll", "busy_poll_us": BUSY_POLL_US, "podwire_rtt_runs": bp_rr, "podwire_rtt_median": bp_r, "podwire_gbps": bp_g})
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "bench": "cross_node",
            "podwire_gbps": pw_g,
            "flannel_gbps": kf_g,
            "throughput_ratio": ratio(pw_g, kf_g),
            "podwire_rtt_us": pw_r,
            "flannel_rtt_us": kf_r,
            "rtt_ratio": ratio(pw_r, kf_r),
            "busy_poll_us": BUSY_POLL_US,
            "podwire_gbps_busy_poll": bp_g,
            "podwire_rtt_us_busy_poll": bp_r,
            "rtt_ratio_busy_poll": ratio(bp_r, kf_r),
        })
    );
}

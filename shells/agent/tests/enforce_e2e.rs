//! NetworkPolicy and Services in the running agent, end to end (root, netns only):
//! pods created through `podwire-cni`, real TCP and UDP between them, the manifests
//! file rewritten while the agent runs, `podwire drops` explaining a denied
//! connection, and a ClusterIP (and a NodePort) answered by the datapath's DNAT.
//!
//! Timing: a change must take effect "within a second"; the tests poll with a
//! generous timeout (10 s) and print how long it took (no timing assertion).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// The harness's nodes and namespace, plus `extra` documents.
fn cluster_yaml(extra: &str) -> String {
    manifests("10.244.2.0/24") + extra
}

fn pod(name: &str, labels: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}\n")
}

fn policy(name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n")
}

const DENY_ALL: &str = "  podSelector: {}\n  policyTypes: [Ingress]";

fn allow_to_web_from(role: &str) -> String {
    format!("  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: {role}}}}}}}]\n    ports: [{{port: {TCP_PORT}}}, {{port: {UDP_PORT}, protocol: UDP}}]")
}

/// A TCP server in `netns` that answers every connection with the peer's address,
/// forever (the thread ends with the test process).
fn tcp_server(netns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(netns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            if let Ok(peer) = s.peer_addr() {
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A UDP server in `netns` that answers every datagram with the sender's address.
fn udp_server(netns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(netns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// TCP from `netns` to `to` with a short timeout: (what the server said, the peer
/// address of the client's socket), or the error.
fn tcp_try(
    netns: &str,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(String, SocketAddr)> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        // A connection a policy change cuts after the handshake shows up as a read
        // that times out: keep that as short as the connect.
        s.set_read_timeout(Some(timeout))?;
        let peer = s.peer_addr()?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok((out, peer))
    })
    .join()
    .unwrap()
}

/// One UDP request/reply from `netns` with a short timeout.
fn udp_try(netns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"who am i", to)?;
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .unwrap()
}

/// The `Policy` line of `podwire status -o json`.
fn policy_status(c: &Cluster) -> String {
    let v = c.view_json("status");
    v.as_array()
        .unwrap()
        .iter()
        .find(|l| l["subsystem"] == "Policy")
        .map(|l| format!("{} {}", l["state"], l["detail"]))
        .unwrap_or_default()
}

/// Waits until the agent's policy status contains `want`.
fn wait_policy(c: &Cluster, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = policy_status(c);
        if s.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "policy status never showed {want:?}: {s}\n{}",
            c.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rewrites the manifests, then polls `check` until it holds; returns how long it
/// took from the write.
fn change_and_wait(
    c: &Cluster,
    yaml: &str,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    // Write-and-rename, as a ConfigMap update does.
    let tmp = c.dir.0.join("cluster.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    let started = Instant::now();
    std::fs::rename(&tmp, c.cluster_file()).unwrap();
    loop {
        if check() {
            let took = started.elapsed();
            eprintln!("MEASURED {what}: took effect after {} ms", took.as_millis());
            return took;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not take effect within 10 s\n{}",
            c.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The probe's connect timeout while polling for a change (same node: a
/// connection that is allowed completes in well under a millisecond).
const SHORT: Duration = Duration::from_millis(100);
const DENIED_WAIT: Duration = Duration::from_millis(1000);

#[test]
fn network_policy_is_enforced_on_real_traffic_and_changes_apply_live() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let pods = pod("client", "role: client") + &pod("other", "role: other");
    let base = |extra: &str| {
        cluster_yaml(
            &(pods.clone()
                + &policy("deny-all", DENY_ALL)
                + &policy("web-from-client", &allow_to_web_from("client"))
                + extra),
        )
    };
    std::fs::write(c.cluster_file(), base("")).unwrap();
    let (web_ns, web) = c.add_pod("web");
    let (client_ns, client) = c.add_pod("client");
    let (other_ns, other) = c.add_pod("other");
    let (web, client, other) = (web.ip(), client.ip(), other.ip());
    wait_policy(&c, "2 policies");
    wait_policy(&c, "3 local endpoints");
    tcp_server(&web_ns, TCP_PORT);
    udp_server(&web_ns, UDP_PORT);
    tcp_server(&client_ns, TCP_PORT);
    let web_tcp = SocketAddr::from((web, TCP_PORT));
    let web_udp = SocketAddr::from((web, UDP_PORT));

    // Allowed: client → web, TCP and UDP; the replies come back and the server
    // sees the client's real address.
    let (said, _) = tcp_try(&client_ns, web_tcp, Duration::from_secs(5)).expect("client → web TCP");
    assert_eq!(said, client.to_string());
    assert_eq!(
        udp_try(&client_ns, web_udp, Duration::from_secs(3)).expect("client → web UDP"),
        client.to_string()
    );
    // Denied: other → web (TCP and UDP), web → client (default deny).
    assert!(
        tcp_try(&other_ns, web_tcp, DENIED_WAIT).is_err(),
        "other → web TCP must fail"
    );
    assert!(
        udp_try(&other_ns, web_udp, DENIED_WAIT).is_err(),
        "other → web UDP must fail"
    );
    assert!(
        tcp_try(&web_ns, SocketAddr::from((client, TCP_PORT)), DENIED_WAIT).is_err(),
        "web → client must fail (default deny ingress)"
    );
    // Allowed port only: client → web on another port is denied.
    assert!(udp_try(&client_ns, SocketAddr::from((web, 9999)), DENIED_WAIT).is_err());

    // `podwire drops` names the denied connection and the policy.
    let deadline = Instant::now() + Duration::from_secs(5);
    let drop = loop {
        let v: Value = c.view_json("drops");
        let found = v["flows"].as_array().unwrap().iter().find(|f| {
            f["src"] == other.to_string()
                && f["dst"] == web.to_string()
                && f["dst_port"] == TCP_PORT
                && f["protocol"] == "TCP"
        });
        if let Some(f) = found {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "no drop recorded: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(drop["reason"], "policy_denied_ingress", "{drop}");
    assert_eq!(drop["direction"], "ingress", "{drop}");
    let by = drop["policy"].as_str().unwrap_or_default();
    assert!(
        by == "default/deny-all" || by == "default/web-from-client",
        "the policy that isolated web: {drop}"
    );
    assert_eq!(drop["src_pod"], "default/other");
    assert_eq!(drop["dst_pod"], "default/web");
    let table = c.podwire(&["drops"]).unwrap();
    eprintln!("podwire drops:\n{table}");
    assert!(
        table.contains("POLICY") && table.contains("default/other") && table.contains(by),
        "{table}"
    );
    let yaml = c.podwire(&["flows", "-o", "yaml"]).unwrap();
    assert!(
        yaml.contains("delivered") && yaml.contains("dropped"),
        "{yaml}"
    );

    // A policy change: allow `other` too.
    change_and_wait(
        &c,
        &base(&policy("web-from-other", &allow_to_web_from("other"))),
        "policy change (allow other → web)",
        || tcp_try(&other_ns, web_tcp, SHORT).is_ok(),
    );
    assert_eq!(
        udp_try(&other_ns, web_udp, Duration::from_secs(3)).unwrap(),
        other.to_string()
    );

    // A label change: `client` loses its role; it is denied now (new connections).
    let relabelled = cluster_yaml(
        &(pod("client", "role: retired")
            + &pod("other", "role: other")
            + &policy("deny-all", DENY_ALL)
            + &policy("web-from-client", &allow_to_web_from("client"))
            + &policy("web-from-other", &allow_to_web_from("other"))),
    );
    change_and_wait(
        &c,
        &relabelled,
        "label change (client loses role=client)",
        || tcp_try(&client_ns, web_tcp, SHORT).is_err(),
    );
    assert!(
        tcp_try(&other_ns, web_tcp, Duration::from_secs(5)).is_ok(),
        "other still allowed"
    );
    eprintln!("MEASURED agent policy status: {}", policy_status(&c));
    for l in c.agent_log().lines() {
        if l.contains("reloaded") || l.contains("installed") {
            eprintln!("agent: {l}");
        }
    }
}

#[test]
fn a_cluster_ip_reaches_its_backend_pod_with_real_addresses() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (web_ns, web) = c.add_pod("web");
    let (client_ns, client) = c.add_pod("client");
    let (web, client) = (web.ip(), client.ip());
    tcp_server(&web_ns, TCP_PORT);
    udp_server(&web_ns, UDP_PORT);
    let vip: Ipv4Addr = "10.96.0.20".parse().unwrap();
    let service = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: {vip}
  ports: [{{name: http, port: 80, targetPort: {TCP_PORT}, nodePort: 30080}}, {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {TCP_PORT}, protocol: TCP}}, {{name: dns, port: {UDP_PORT}, protocol: UDP}}]
endpoints:
- addresses: [{web}]
  nodeName: node-a
  conditions: {{ready: true, serving: true, terminating: false}}
"
    );
    let yaml = cluster_yaml(&(pod("client", "role: client") + &service));
    let to_vip = SocketAddr::from((vip, 80));
    change_and_wait(&c, &yaml, "service install", || {
        tcp_try(&client_ns, to_vip, SHORT).is_ok()
    });
    let (said, peer) = tcp_try(&client_ns, to_vip, Duration::from_secs(5)).unwrap();
    assert_eq!(
        peer, to_vip,
        "the client's socket is connected to the ClusterIP"
    );
    assert_eq!(
        said,
        client.to_string(),
        "the backend sees the client's pod IP"
    );
    // UDP through the ClusterIP: the reply comes from the ClusterIP (the client's
    // socket is not connected, so a reply from the pod IP would be accepted too:
    // check the source explicitly).
    let from = in_netns(&client_ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"x", (vip, 53)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    })
    .join()
    .unwrap();
    assert_eq!(
        from.1,
        SocketAddr::from((vip, 53)),
        "the reply comes from the ClusterIP"
    );
    assert_eq!(from.0, client.to_string());
    // NodePort: a pod reaching the node's InternalIP on the node port.
    let node_port = SocketAddr::from(([192, 168, 99, 1], 30080));
    let (said, peer) = tcp_try(&client_ns, node_port, Duration::from_secs(5)).expect("NodePort");
    assert_eq!(peer, node_port);
    assert_eq!(
        said,
        client.to_string(),
        "the backend sees the client's pod IP"
    );
    // The flow log shows the translation (it is drained every few milliseconds).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Value = c.view_json("flows");
        let translated =
            v["flows"].as_array().unwrap().iter().any(|f| {
                f["dst"] == vip.to_string() && f["translated"] == format!("{web}:{TCP_PORT}")
            });
        if translated {
            break;
        }
        assert!(Instant::now() < deadline, "no translated flow in {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{}", c.podwire(&["flows"]).unwrap());
}

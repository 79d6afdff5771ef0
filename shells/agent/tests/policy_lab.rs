//! NetworkPolicy in a two-node `podwire lab` (root, netns only): default-deny
//! ingress plus an allow rule enforced on real TCP and UDP traffic across and
//! within nodes, a policy change and a label change applied to the running lab, and
//! `podwire drops` on the destination node naming the denied connection and the
//! policy. The lab lists every pod with its labels and the IP its CNI ADD returned,
//! so each agent knows the pods of the other node by address and labels.
//!
//! Timing: a change must take effect "within a second"; the test polls with a
//! generous timeout (5 s) and prints how long it took (no timing assertion).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::can_run;
use common::lab::lab;
use podwire_agent::lab::topology::in_netns;
use podwire_agent::lab::traffic::Reporter;
use podwire_agent::lab::{Lab, LabPod};
use serde_json::Value;

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n")
}

const DENY_ALL: &str = "  podSelector: {}\n  policyTypes: [Ingress]";

fn allow_to_web_from(role: &str) -> String {
    format!("  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: {role}}}}}}}]\n    ports: [{{port: {TCP_PORT}}}, {{port: {UDP_PORT}, protocol: UDP}}]")
}

/// TCP from `netns` to `to`: what the server said (the client address it saw).
fn tcp_try(netns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
}

/// One UDP request from `netns` to `to`: the reply (the client address the server
/// saw).
fn udp_try(netns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"who am i", to)?;
        let mut buf = [0u8; 256];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

/// The `Policy` line of `podwire status -o json` on `node`.
fn policy_status(lab: &Lab, node: &str) -> String {
    let v: Value =
        serde_json::from_str(&lab.podwire(node, &["status", "-o", "json"]).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|l| l["subsystem"] == "Policy")
        .map(|l| format!("{} {}", l["state"], l["detail"]))
        .unwrap_or_default()
}

fn agent_logs(lab: &Lab) -> String {
    lab.nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(lab.paths.run_dir.join(&n.name).join("agent.log"))
                .unwrap_or_default();
            format!("--- {} agent log:\n{log}", n.name)
        })
        .collect()
}

/// Polls `check` until it holds (5 s) after `started`; prints and returns the time.
fn until(lab: &Lab, started: Instant, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    loop {
        // The time the successful probe started: a denial probe waits out its
        // timeout before it can report, but its packet met the change on the way.
        let probe = started.elapsed();
        if check() {
            eprintln!(
                "MEASURED {what}: took effect after {} ms (probe done at {} ms)",
                probe.as_millis(),
                started.elapsed().as_millis()
            );
            return probe;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} did not take effect within 5 s\n{}",
            agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first flow in `podwire drops -o json` on `node` from `src` to `dst:port`.
fn find_drop(lab: &Lab, node: &str, src: &LabPod, dst: &LabPod, port: u16, proto: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Value =
            serde_json::from_str(&lab.podwire(node, &["drops", "-o", "json"]).unwrap()).unwrap();
        let found = v["flows"].as_array().unwrap().iter().find(|f| {
            f["src"] == src.ip.to_string()
                && f["dst"] == dst.ip.to_string()
                && f["dst_port"] == port
                && f["protocol"] == proto
        });
        if let Some(f) = found {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {proto} drop {} → {}:{port} on {node}: {v}",
            src.name,
            dst.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection that is allowed completes in about a millisecond in the lab; a
/// probe polling for a change uses a short timeout, a check for a denial a long one.
const SHORT: Duration = Duration::from_millis(300);
/// Polling for an allow: a spurious timeout only delays the result, so shorter.
const POLL_ALLOWED: Duration = Duration::from_millis(100);
const DENIED_WAIT: Duration = Duration::from_millis(1000);
const ALLOWED_WAIT: Duration = Duration::from_secs(3);

#[test]
fn default_deny_and_allow_across_and_within_nodes_with_live_policy_and_label_changes() {
    if !can_run() {
        return;
    }
    let mut lab = lab(2, 0);
    let web = lab
        .add_pod_with("node1", "default", "web1", labels(&[("app", "web")]))
        .unwrap();
    let client1 = lab
        .add_pod_with("node1", "default", "client1", labels(&[("role", "client")]))
        .unwrap();
    let other1 = lab
        .add_pod_with("node1", "default", "other1", labels(&[("role", "other")]))
        .unwrap();
    let client2 = lab
        .add_pod_with("node2", "default", "client2", labels(&[("role", "client")]))
        .unwrap();
    let other2 = lab
        .add_pod_with("node2", "default", "other2", labels(&[("role", "other")]))
        .unwrap();

    // The cluster state lists every pod with its labels and address.
    let yaml = std::fs::read_to_string(lab.manifests_file()).unwrap();
    for p in [&web, &client1, &other1, &client2, &other2] {
        assert!(
            yaml.contains(&format!(
                r#""podIP":"{}","podIPs":[{{"ip":"{}"}}]"#,
                p.ip, p.ip
            )),
            "{} not listed with its IP:\n{yaml}",
            p.name
        );
    }

    let _web_tcp = Reporter::start(&web.netns, TCP_PORT).unwrap();
    let _web_udp = Reporter::start(&web.netns, UDP_PORT).unwrap();
    let _c1 = Reporter::start(&client1.netns, TCP_PORT).unwrap();
    let _c2 = Reporter::start(&client2.netns, TCP_PORT).unwrap();
    let web_tcp = SocketAddr::from((web.ip, TCP_PORT));
    let web_udp = SocketAddr::from((web.ip, UDP_PORT));

    // Before any policy everything is allowed (the servers answer).
    assert_eq!(
        tcp_try(&other2.netns, web_tcp, ALLOWED_WAIT).unwrap(),
        other2.ip.to_string()
    );

    // Default deny plus the allow rule, applied to the running lab.
    let base =
        policy("deny-all", DENY_ALL) + &policy("web-from-client", &allow_to_web_from("client"));
    let started = Instant::now();
    lab.set_extra_manifests(&base).unwrap();
    for n in ["node1", "node2"] {
        until(&lab, started, &format!("policy installed on {n}"), || {
            policy_status(&lab, n).contains("2 policies")
        });
    }
    until(
        &lab,
        started,
        "default deny (other2 → web1 denied)",
        || tcp_try(&other2.netns, web_tcp, SHORT).is_err(),
    );

    // Allowed, across nodes and within a node, TCP and UDP: the replies come back
    // and the server saw the client's real address.
    for c in [&client2, &client1] {
        let said = tcp_try(&c.netns, web_tcp, ALLOWED_WAIT)
            .unwrap_or_else(|e| panic!("{} → web1 TCP: {e}\n{}", c.name, agent_logs(&lab)));
        assert_eq!(said, c.ip.to_string(), "{} → web1 TCP", c.name);
        let said = udp_try(&c.netns, web_udp, ALLOWED_WAIT)
            .unwrap_or_else(|e| panic!("{} → web1 UDP: {e}\n{}", c.name, agent_logs(&lab)));
        assert_eq!(said, c.ip.to_string(), "{} → web1 UDP", c.name);
    }

    // Denied: other pods to web (both nodes, TCP and UDP), the allowed client on a
    // port the rule does not name, and web to the clients (default deny).
    for o in [&other2, &other1] {
        assert!(
            tcp_try(&o.netns, web_tcp, DENIED_WAIT).is_err(),
            "{} → web1 TCP must fail",
            o.name
        );
        assert!(
            udp_try(&o.netns, web_udp, DENIED_WAIT).is_err(),
            "{} → web1 UDP must fail",
            o.name
        );
    }
    assert!(
        udp_try(
            &client2.netns,
            SocketAddr::from((web.ip, TCP_PORT)),
            DENIED_WAIT
        )
        .is_err(),
        "UDP to web1:{TCP_PORT} is not in the rule"
    );
    for c in [&client2, &client1] {
        assert!(
            tcp_try(&web.netns, SocketAddr::from((c.ip, TCP_PORT)), DENIED_WAIT).is_err(),
            "web1 → {} must fail (default deny)",
            c.name
        );
    }

    // `podwire drops` on the destination node names the denied connections and the
    // policy that isolated the destination.
    for (src, dst, node) in [
        (&other2, &web, "node1"),
        (&other1, &web, "node1"),
        (&web, &client2, "node2"),
    ] {
        let d = find_drop(&lab, node, src, dst, TCP_PORT, "TCP");
        eprintln!("drop on {node}: {d}");
        assert_eq!(d["reason"], "policy_denied_ingress", "{d}");
        assert_eq!(d["direction"], "ingress", "{d}");
        assert_eq!(d["src_pod"], format!("default/{}", src.name), "{d}");
        assert_eq!(d["dst_pod"], format!("default/{}", dst.name), "{d}");
        let by = d["policy"].as_str().unwrap_or_default();
        if dst.name == "web1" {
            assert!(
                by == "default/deny-all" || by == "default/web-from-client",
                "the policy that isolated web1: {d}"
            );
        } else {
            assert_eq!(by, "default/deny-all", "only deny-all selects clients: {d}");
        }
    }
    let table = lab.podwire("node1", &["drops"]).unwrap();
    eprintln!("podwire drops on node1:\n{table}");
    assert!(
        table.contains("POLICY") && table.contains("default/other2"),
        "{table}"
    );

    // A policy change: allow role=other too (other2 is on the other node).
    let started = Instant::now();
    lab.set_extra_manifests(
        &(base.clone() + &policy("web-from-other", &allow_to_web_from("other"))),
    )
    .unwrap();
    let policy_change = until(
        &lab,
        started,
        "policy change (allow other2 → web1)",
        || tcp_try(&other2.netns, web_tcp, POLL_ALLOWED).is_ok(),
    );
    assert_eq!(
        tcp_try(&other2.netns, web_tcp, ALLOWED_WAIT).unwrap(),
        other2.ip.to_string()
    );
    assert_eq!(
        udp_try(&other2.netns, web_udp, ALLOWED_WAIT).unwrap(),
        other2.ip.to_string()
    );
    assert_eq!(
        tcp_try(&other1.netns, web_tcp, ALLOWED_WAIT).unwrap(),
        other1.ip.to_string(),
        "other1 (same node) allowed too"
    );

    // A label change: client2 loses role=client (node1 learns it from the cluster
    // state only); its new connections are denied, client1's still pass.
    let started = Instant::now();
    lab.set_pod_labels("client2", labels(&[("role", "retired")]))
        .unwrap();
    let label_change = until(
        &lab,
        started,
        "label change (client2 loses role=client)",
        || tcp_try(&client2.netns, web_tcp, SHORT).is_err(),
    );
    assert!(tcp_try(&client2.netns, web_tcp, DENIED_WAIT).is_err());
    assert!(udp_try(&client2.netns, web_udp, DENIED_WAIT).is_err());
    assert_eq!(
        tcp_try(&client1.netns, web_tcp, ALLOWED_WAIT).unwrap(),
        client1.ip.to_string()
    );
    let d = find_drop(&lab, "node1", &client2, &web, UDP_PORT, "UDP");
    assert_eq!(d["reason"], "policy_denied_ingress", "{d}");
    eprintln!(
        "MEASURED summary: policy change {} ms, label change {} ms; node1 {}; node2 {}",
        policy_change.as_millis(),
        label_change.as_millis(),
        policy_status(&lab, "node1"),
        policy_status(&lab, "node2")
    );
}

//! Metrics, health and logs of a running agent (root, netns only): traffic between
//! two pods shows up in `podwire metrics` and on the HTTP endpoints, Prometheus's
//! own `promtool check metrics` accepts the text, `/readyz` answers, and the log
//! file the agent writes holds no terminal colour codes.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The value of the sample `name{labels}` (`labels` exactly as printed, or empty).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET path` on `127.0.0.1:port` inside `netns`: (status code, body).
fn http_get(netns: &str, port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    })
    .join()
    .unwrap()
}

fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e} (install Debian's prometheus package)"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn metrics_follow_traffic_pass_promtool_and_health_answers() {
    if !can_run() {
        return;
    }
    let cluster = Cluster::start();
    let (netns_a, a) = cluster.add_pod("metrics-a");
    let (netns_b, b) = cluster.add_pod("metrics-b");
    let server = tcp_peer_reporter(&netns_b, 7000, 3);
    for _ in 0..3 {
        let seen = tcp_ask(&netns_a, SocketAddr::from((b.ip(), 7000))).unwrap();
        assert_eq!(seen, a.ip().to_string());
    }
    server.join().unwrap();

    // Flow events reach the totals through the flow log's drain thread (every 20 ms).
    let mut text = String::new();
    for _ in 0..100 {
        text = cluster.podwire(&["metrics"]).unwrap();
        if sample(&text, "podwire_flows_total", "outcome=\"delivered\"") >= Some(3.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejected the metrics: {e}\n{text}"));
    let delivered = sample(
        &text,
        "podwire_datapath_packets_total",
        "action=\"delivered\"",
    )
    .unwrap_or_else(|| panic!("no delivered counter:\n{text}"));
    assert!(
        delivered >= 18.0,
        "3 connections deliver at least 18 frames, saw {delivered}"
    );
    assert_eq!(
        sample(&text, "podwire_ipam_allocated_addresses", ""),
        Some(2.0)
    );
    assert_eq!(sample(&text, "podwire_pods", ""), Some(2.0));
    assert_eq!(
        sample(
            &text,
            "podwire_cni_operation_duration_seconds_count",
            "command=\"ADD\""
        ),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "podwire_conntrack_entries", "").unwrap() >= 1.0);
    assert!(
        sample(&text, "podwire_flows_total", "outcome=\"delivered\"").unwrap() >= 3.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "podwire_cluster_state_stale_seconds", ""),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "podwire_cluster_state_generation", ""),
        Some(1.0)
    );
    assert!(!text.contains("10.244."), "no per-pod labels by default");

    // The same text over HTTP, and health.
    let (code, body) = http_get(&cluster.node_ns, 9402, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("podwire_datapath_packets_total"), "{body}");
    assert_eq!(
        http_get(&cluster.node_ns, 9403, "/healthz"),
        (200, "ok\n".into())
    );
    assert_eq!(
        http_get(&cluster.node_ns, 9403, "/readyz"),
        (200, "ok\n".into())
    );

    // A manifest that does not load makes the source stale, which the metrics
    // show, while the last good state runs.
    std::fs::write(cluster.cluster_file(), "kind: Node\nmetadata: [").unwrap();
    let stale = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let text = cluster.podwire(&["metrics"]).unwrap();
        sample(&text, "podwire_cluster_state_stale_seconds", "").unwrap() > 0.0
    });
    assert!(stale, "the stale source never showed");
    let server = tcp_peer_reporter(&netns_b, 7001, 1);
    let seen = tcp_ask(&netns_a, SocketAddr::from((b.ip(), 7001))).unwrap();
    assert_eq!(
        seen,
        a.ip().to_string(),
        "forwarding goes on while the source is stale"
    );
    server.join().unwrap();

    let log = cluster.agent_log();
    assert!(log.contains("agent started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in the log file:\n{log}"
    );
}

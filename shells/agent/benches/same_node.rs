//! Same-node benchmark: podwire vs the reference `bridge` + `host-local` CNI plugins
//! (Debian `containernetworking-plugins`), side by side in one run on one machine.
//!
//! - CNI ADD latency: wall-clock time of the plugin process from spawn to exit,
//!   for `ROUNDS` pods created one after another (median and min reported).
//! - Pod↔pod TCP throughput: `iperf3` between two pods of the same node (median of
//!   `IPERF_RUNS` runs of `IPERF_SECONDS`).
//!
//! Run as root: `cargo bench -p podwire-agent --bench same_node`. Everything lives
//! in network namespaces this program creates (random suffixes) and deletes again.
//! Prints one JSON line per case and, last, the summary object. If podwire pods
//! cannot reach each other, the podwire throughput is reported as null with the
//! reason rather than failing the run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROUNDS: usize = 20;
const IPERF_SECONDS: u32 = 5;
const IPERF_RUNS: usize = 3;
const REFERENCE_DIR: &str = "/usr/lib/cni";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn in_ns_command(netns: &str, program: &str) -> Command {
    podwire_agent::netlink::netns::command_in(netns_path(netns), program)
}

/// Runs a plugin (optionally inside `netns`) and returns (elapsed, exit code, stdout).
fn timed_plugin(
    netns: Option<&str>,
    program: &str,
    env: &[(&str, String)],
    stdin: &str,
) -> (Duration, i32, String) {
    let mut c = match netns {
        Some(n) => in_ns_command(n, program),
        None => Command::new(program),
    };
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = c.spawn().expect("spawn plugin");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = start.elapsed();
    (
        elapsed,
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn env(cmd: &str, id: &str, netns: &str, cni_path: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", netns_path(netns)),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", cni_path.to_string()),
    ]
}

fn iperf(server_ns: &str, client_ns: &str, server_ip: &str) -> Option<f64> {
    let mut server = in_ns_command(server_ns, "iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns_command(client_ns, "iperf3")
        .args([
            "-c",
            server_ip,
            "-p",
            "5201",
            "-J",
            "-t",
            &IPERF_SECONDS.to_string(),
        ])
        .output()
        .ok();
    let _ = server.kill();
    let _ = server.wait();
    let j: Value = serde_json::from_slice(&out?.stdout).ok()?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
}

fn main() {
    if !can_run() || Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("same_node needs root, iproute2 and iperf3");
        return;
    }
    if !std::path::Path::new(REFERENCE_DIR).join("bridge").exists() {
        eprintln!(
            "same_node needs the reference plugins: apt-get install containernetworking-plugins"
        );
        return;
    }
    // podwire: agent in a node netns, pods via podwire-cni.
    let cluster = Cluster::start();
    let conf = cluster.net_conf().to_string();
    let plugin = cluster.dir.0.join("bin/podwire-cni").display().to_string();
    let cni_path = cluster.dir.0.join("bin").display().to_string();
    // Reference: bridge + host-local in its own node netns.
    let ref_node = cluster.ns.create("refnode");
    let ref_data = cluster.dir.0.join("host-local");
    let ref_conf = json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "type": "bridge",
        "bridge": "cniref0",
        "isGateway": true,
        "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/24", "dataDir": ref_data.display().to_string(),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
    .to_string();

    let mut pw_ms = Vec::new();
    let mut ref_ms = Vec::new();
    let mut pw_pods = Vec::new();
    let mut ref_pods = Vec::new();
    for i in 0..ROUNDS {
        let ns = cluster.ns.create("pwp");
        let (t, code, out) = timed_plugin(
            None,
            &plugin,
            &env("ADD", &format!("pw{i}"), &ns, &cni_path),
            &conf,
        );
        assert_eq!(code, 0, "podwire ADD: {out}");
        pw_ms.push(t.as_secs_f64() * 1e3);
        pw_pods.push((ns, serde_json::from_str::<Value>(&out).unwrap()));

        let ns = cluster.ns.create("refp");
        let (t, code, out) = timed_plugin(
            Some(&ref_node),
            &format!("{REFERENCE_DIR}/bridge"),
            &env("ADD", &format!("ref{i}"), &ns, REFERENCE_DIR),
            &ref_conf,
        );
        assert_eq!(code, 0, "reference ADD: {out}");
        ref_ms.push(t.as_secs_f64() * 1e3);
        ref_pods.push((ns, serde_json::from_str::<Value>(&out).unwrap()));
    }
    let (pw_med, ref_med) = (median(&mut pw_ms.clone()), median(&mut ref_ms.clone()));
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        json!({"case": "cni_add_ms", "podwire_median": pw_med, "podwire_min": min(&pw_ms), "reference_median": ref_med, "reference_min": min(&ref_ms), "rounds": ROUNDS})
    );

    let ip_of = |r: &Value| {
        r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let mut ref_runs: Vec<f64> = (0..IPERF_RUNS)
        .filter_map(|_| iperf(&ref_pods[0].0, &ref_pods[1].0, &ip_of(&ref_pods[0].1)))
        .collect();
    let bridge_gbps = if ref_runs.is_empty() {
        None
    } else {
        Some(median(&mut ref_runs))
    };
    println!(
        "{}",
        json!({"case": "tcp_gbps", "peer": "bridge", "runs": ref_runs, "median": bridge_gbps})
    );

    let pw_server_ip = ip_of(&pw_pods[0].1);
    let reachable = ping(&pw_pods[1].0, pw_server_ip.parse().unwrap());
    let mut pw_runs: Vec<f64> = if reachable {
        (0..IPERF_RUNS)
            .filter_map(|_| iperf(&pw_pods[0].0, &pw_pods[1].0, &pw_server_ip))
            .collect()
    } else {
        Vec::new()
    };
    let podwire_gbps = if pw_runs.is_empty() {
        None
    } else {
        Some(median(&mut pw_runs))
    };
    println!(
        "{}",
        json!({"case": "tcp_gbps", "peer": "podwire", "runs": pw_runs, "median": podwire_gbps,
               "note": if reachable { Value::Null } else { json!("podwire pods cannot reach each other (ping failed)") }})
    );
    let ratio = match (podwire_gbps, bridge_gbps) {
        (Some(p), Some(b)) if b > 0.0 => Some(p / b),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "bench": "same_node",
            "podwire_gbps": podwire_gbps,
            "bridge_gbps": bridge_gbps,
            "throughput_ratio": ratio,
            "podwire_add_ms": pw_med,
            "reference_add_ms": ref_med,
            "add_latency_ratio": pw_med / ref_med,
        })
    );
}

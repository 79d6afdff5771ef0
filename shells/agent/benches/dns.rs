//! Cluster DNS against authoritative servers, in the same run: dnsperf (one core)
//! against podwire's agent, NSD and Knot (each pinned to the other core), all
//! serving the same cluster zone of 1,000 and then 10,000 services.
//!
//! podwire runs as it does on a node: `podwire agent` in a lab node's namespace,
//! the services in its manifests, answering on its node-local address; NSD and Knot
//! run in the same namespace on loopback addresses with a zone file of the same
//! records (per service: the A record, the SRV at the name, the SRV and A of its
//! named port). The load is the A query of every service in a shuffled order.
//! Server CPU comes from /proc (utime + stime of the server's processes, before
//! and after the run), so the shared, noisy machine does not decide the result:
//! µs of CPU per answered query. p99 latency comes from a second, rate-limited run
//! with per-query output; RSS from /proc/<pid>/status.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::can_run;
use common::dns::dig_short;
use common::lab::lab_with;
use common::TempDir;
use podwire_agent::lab::LabSpec;
use serde_json::json;

const LOAD_SECONDS: u32 = 8;
const PODWIRE_ADDR: &str = "169.254.20.10";
const NSD_ADDR: &str = "127.0.0.2";
const KNOT_ADDR: &str = "127.0.0.3";
const SERVER_CORE: &str = "0";
const LOAD_CORE: &str = "1";

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn cluster_ip(i: usize) -> String {
    format!("10.100.{}.{}", i / 250, i % 250 + 1)
}

fn manifests(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: default}}\nspec: {{clusterIP: {}, ports: [{{name: http, port: 80}}]}}\n",
            service_name(i),
            cluster_ip(i)
        );
    }
    y
}

fn zone_file(n: usize) -> String {
    let mut z = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ IN SOA ns.dns hostmaster 1 7200 1800 86400 5\n@ IN NS ns.dns\nns.dns IN A 10.96.0.10\ndns-version IN TXT \"1.1.0\"\n",
    );
    for i in 0..n {
        let (name, ip) = (service_name(i), cluster_ip(i));
        let base = format!("{name}.default.svc");
        let _ = writeln!(z, "{base} IN A {ip}");
        let _ = writeln!(z, "{base} IN SRV 0 100 80 {base}.cluster.local.");
        let _ = writeln!(z, "_http._tcp.{base} IN SRV 0 100 80 {base}.cluster.local.");
        let _ = writeln!(z, "_http._tcp.{base} IN A {ip}");
    }
    z
}

fn queries(n: usize) -> String {
    // A fixed shuffle (multiplicative stride), so every server gets the same load.
    let stride = (0..)
        .map(|k| 7919 + 2 * k)
        .find(|s| gcd(*s, n) == 1)
        .unwrap_or(1);
    (0..n)
        .map(|k| {
            format!(
                "{}.default.svc.cluster.local A\n",
                service_name(k * stride % n)
            )
        })
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The process `pid` and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.filter_map(|e| e.ok()) {
                let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|s| s.parse::<u32>().ok());
                if ppid == Some(parent) && !all.contains(&p) {
                    all.push(p);
                }
            }
        }
        i += 1;
    }
    all
}

/// CPU seconds (user + system) of the processes.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let hz = 100.0; // USER_HZ on Linux.
    pids.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            // After the command: state(0) ppid(1) … utime(11) stime(12).
            (ticks(11) + ticks(12)) / hz
        })
        .sum()
}

fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / 1024.0
}

fn pin(pids: &[u32]) {
    for p in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", SERVER_CORE, &p.to_string()])
            .stdout(Stdio::null())
            .status();
    }
}

fn dnsperf(netns: &str, server: &str, queries: &Path, extra: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "taskset", "-c", LOAD_CORE, "dnsperf",
        ])
        .args(["-s", server, "-d"])
        .arg(queries)
        .args(extra)
        .output()
        .expect("dnsperf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// p99 latency (ms) from a rate-limited verbose run (`> NOERROR … 0.000123`).
fn p99_ms(netns: &str, server: &str, queries: &Path) -> f64 {
    let out = dnsperf(netns, server, queries, &["-v", "-Q", "5000", "-l", "2"]);
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)] * 1000.0
}

struct Measured {
    qps: f64,
    answered: f64,
    us_per_query: f64,
    p99_ms: f64,
    rss_mib: f64,
}

fn measure(netns: &str, server: &str, pid: u32, queries: &Path) -> Measured {
    let pids = process_tree(pid);
    pin(&pids);
    // Warm-up (caches, page faults), then the measured run.
    dnsperf(netns, server, queries, &["-l", "1", "-c", "4", "-q", "200"]);
    let before = cpu_seconds(&pids);
    let out = dnsperf(
        netns,
        server,
        queries,
        &["-l", &LOAD_SECONDS.to_string(), "-c", "4", "-q", "200"],
    );
    let cpu = cpu_seconds(&pids) - before;
    let answered = field(&out, "Queries completed:");
    let m = Measured {
        qps: field(&out, "Queries per second:"),
        answered,
        us_per_query: if answered > 0.0 {
            cpu * 1e6 / answered
        } else {
            0.0
        },
        p99_ms: p99_ms(netns, server, queries),
        rss_mib: rss_mib(&pids),
    };
    assert!(
        m.answered > 0.0,
        "dnsperf got no answers from {server}: {out}"
    );
    m
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nsd(netns: &str, dir: &Path) -> Daemon {
    let d = dir.display();
    std::fs::write(
        dir.join("nsd.conf"),
        format!(
            "server:\n  ip-address: {NSD_ADDR}\n  port: 53\n  username: \"\"\n  chroot: \"\"\n  database: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: cluster.local\n  zonefile: \"{d}/zone\"\n"
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "nsd", "-d", "-c"])
        .arg(dir.join("nsd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon { child }
}

fn knot(netns: &str, dir: &Path) -> Daemon {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("knot")).unwrap();
    std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n  listen: {KNOT_ADDR}@53\n  rundir: \"{d}/knot\"\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\ndatabase:\n  storage: \"{d}/knot\"\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: cluster.local\n    file: \"{d}/zone\"\n    storage: \"{d}/knot\"\n    journal-content: none\n    zonefile-sync: -1\n"
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "knotd", "-c"])
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon { child }
}

fn wait_answer(netns: &str, server: &str, name: &str, want: &str) {
    let at = format!("@{server}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while dig_short(netns, &[&at, name]) != [want] {
        assert!(Instant::now() < deadline, "{server} does not answer {name}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    let tools = ["dnsperf", "nsd", "knotd", "taskset"];
    if !can_run()
        || tools.iter().any(|t| {
            Command::new("which")
                .arg(t)
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
    {
        println!(
            "{}",
            json!({"bench": "dns", "skipped": "needs root, iproute2, dnsperf, nsd, knotd and taskset"})
        );
        return;
    }
    let mut lab = lab_with(LabSpec {
        nodes: 1,
        pods_per_node: 0,
        ..LabSpec::default()
    });
    let netns = lab.nodes[0].netns.clone();
    let agent = lab.nodes[0].agent_pid;
    let dir = TempDir::new();
    let mut results = Vec::new();
    for n in [1000usize, 10_000] {
        lab.set_extra_manifests(&manifests(n)).unwrap();
        let last = format!("{}.default.svc.cluster.local", service_name(n - 1));
        wait_answer(&netns, PODWIRE_ADDR, &last, &cluster_ip(n - 1));
        std::fs::write(dir.0.join("zone"), zone_file(n)).unwrap();
        let qfile = dir.0.join("queries");
        std::fs::write(&qfile, queries(n)).unwrap();
        let pw = measure(&netns, PODWIRE_ADDR, agent, &qfile);
        let mut peers = Vec::new();
        for (name, addr) in [("nsd", NSD_ADDR), ("knot", KNOT_ADDR)] {
            let daemon = if name == "nsd" {
                nsd(&netns, &dir.0)
            } else {
                knot(&netns, &dir.0)
            };
            wait_answer(&netns, addr, &last, &cluster_ip(n - 1));
            peers.push((name, measure(&netns, addr, daemon.child.id(), &qfile)));
        }
        for (name, m) in std::iter::once(("podwire", &pw)).chain(peers.iter().map(|(n, m)| (*n, m)))
        {
            println!(
                "{}",
                json!({"case": name, "services": n, "qps": m.qps.round(), "answered": m.answered,
                       "cpu_us_per_query": (m.us_per_query * 100.0).round() / 100.0,
                       "p99_ms": (m.p99_ms * 1000.0).round() / 1000.0, "rss_mib": (m.rss_mib * 10.0).round() / 10.0})
            );
        }
        results.push((n, pw, peers));
    }
    // The summary: the largest zone.
    let (n, pw, peers) = results.last().expect("two sizes measured");
    let (best, best_m) = peers
        .iter()
        .min_by(|a, b| a.1.us_per_query.total_cmp(&b.1.us_per_query))
        .expect("two peers");
    println!(
        "{}",
        json!({
            "bench": "dns",
            "services": n,
            "podwire_us_per_query": (pw.us_per_query * 100.0).round() / 100.0,
            "best_peer": best,
            "best_peer_us_per_query": (best_m.us_per_query * 100.0).round() / 100.0,
            "cpu_ratio": (pw.us_per_query / best_m.us_per_query * 100.0).round() / 100.0,
            "podwire_qps": pw.qps.round(),
            "podwire_p99_ms": (pw.p99_ms * 1000.0).round() / 1000.0,
            "podwire_rss_mib": (pw.rss_mib * 10.0).round() / 10.0,
        })
    );
}

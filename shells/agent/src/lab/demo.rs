//! The network-model checks `podwire lab demo` runs (and the e2e tests reuse): one IP
//! per pod; pod↔pod on the same node and across nodes over ICMP, TCP and UDP with the
//! receiver seeing the sender's real pod IP; node↔pod both ways.
//!
//! Design note: each check is one row — what, from, to, protocol, result — so the
//! table a newcomer reads and the assertions a test makes are the same data. A check
//! that fails says what it saw (the peer address the server reported, the error), so a
//! NAT or a routing bug is visible in the table itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Result;

use super::topology::ip;
use super::traffic::{ping, tcp_ask, udp_ask, Reporter, REPORT_PORT};
use super::{table, Lab};

/// One check and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is checked (`pod↔pod same node`).
    pub what: String,
    /// The sender.
    pub from: String,
    /// The receiver.
    pub to: String,
    /// `ICMP`, `TCP`, `UDP` or `-`.
    pub proto: &'static str,
    /// `Ok(detail)` or `Err(what went wrong)`.
    pub result: Result<String, String>,
}

impl Check {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }
}

/// Which pairs to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every ordered pod pair, every node with every pod.
    Full,
    /// Same node: the first two pods of each node both ways; across nodes: the first
    /// pod of each node to the first pod of every other node; node↔pod: each node
    /// with its first pod and the next node's first pod.
    Sample,
}

/// An endpoint: label, namespace, address.
#[derive(Clone)]
struct End {
    label: String,
    netns: String,
    ip: Ipv4Addr,
    node: String,
}

fn pod_end(p: &super::LabPod) -> End {
    End {
        label: format!("{}/{}", p.namespace, p.name),
        netns: p.netns.clone(),
        ip: p.ip,
        node: p.node.clone(),
    }
}

/// Checks TCP and UDP from `a` to `b` (whose reporter runs) and ICMP; `expect` are
/// the source addresses the receiver may see.
fn traffic(out: &mut Vec<Check>, what: &str, a: &End, b: &End, expect: &[Ipv4Addr]) {
    let row = |proto, result| Check {
        what: what.to_string(),
        from: format!("{} ({})", a.label, a.ip),
        to: format!("{} ({})", b.label, b.ip),
        proto,
        result,
    };
    out.push(row(
        "ICMP",
        if ping(&a.netns, b.ip) {
            Ok("echo reply".into())
        } else {
            Err("no echo reply".into())
        },
    ));
    let to = SocketAddr::new(IpAddr::V4(b.ip), REPORT_PORT);
    let seen = |r: Result<String>| -> Result<String, String> {
        match r {
            Ok(s) if expect.iter().any(|e| e.to_string() == s) => Ok(format!("receiver saw {s}")),
            Ok(s) => Err(format!(
                "receiver saw {s}, expected {}",
                expect
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    out.push(row("TCP", seen(tcp_ask(&a.netns, to))));
    out.push(row("UDP", seen(udp_ask(&a.netns, to))));
}

/// Runs the checks on a built lab.
pub fn run_checks(lab: &Lab, coverage: Coverage) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    // One IP per pod: eth0 holds exactly the ADD result's address; all distinct.
    let mut seen = std::collections::HashSet::new();
    for p in &lab.pods {
        let j: serde_json::Value =
            serde_json::from_str(&ip(&p.netns, &["-j", "-4", "addr", "show", "dev", "eth0"])?)?;
        let addrs: Vec<String> = j[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["local"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let unique = seen.insert(p.ip);
        let in_cidr = lab
            .node(&p.node)
            .map(|n| n.pod_cidr.contains(&p.ip))
            .unwrap_or(false);
        out.push(Check {
            what: "one IP per pod".into(),
            from: format!("{}/{}", p.namespace, p.name),
            to: "-".into(),
            proto: "-",
            result: if addrs == [p.ip.to_string()] && unique && in_cidr {
                Ok(format!("eth0 {}", p.ip))
            } else {
                Err(format!(
                    "eth0 has {addrs:?}, ADD returned {} (unique: {unique}, in node CIDR: {in_cidr})",
                    p.ip
                ))
            },
        });
    }
    let pods: Vec<End> = lab.pods.iter().map(pod_end).collect();
    let nodes: Vec<End> = lab
        .nodes
        .iter()
        .map(|n| End {
            label: n.name.clone(),
            netns: n.netns.clone(),
            ip: n.ip,
            node: n.name.clone(),
        })
        .collect();
    let mut reporters = Vec::new();
    for e in pods.iter().chain(nodes.iter()) {
        reporters.push(Reporter::start(&e.netns, REPORT_PORT)?);
    }
    let first_two =
        |node: &str| -> Vec<&End> { pods.iter().filter(|p| p.node == node).take(2).collect() };
    let mut pairs: Vec<(&End, &End)> = Vec::new();
    match coverage {
        Coverage::Full => {
            for a in &pods {
                for b in &pods {
                    if a.ip != b.ip {
                        pairs.push((a, b));
                    }
                }
            }
        }
        Coverage::Sample => {
            for n in &lab.nodes {
                if let [a, b] = first_two(&n.name)[..] {
                    pairs.push((a, b));
                    pairs.push((b, a));
                }
            }
            for n in &lab.nodes {
                for m in &lab.nodes {
                    if n.name == m.name {
                        continue;
                    }
                    if let (Some(a), Some(b)) =
                        (first_two(&n.name).first(), first_two(&m.name).first())
                    {
                        pairs.push((a, b));
                    }
                }
            }
        }
    }
    for (a, b) in pairs {
        let what = if a.node == b.node {
            "pod→pod same node"
        } else {
            "pod→pod cross-node"
        };
        traffic(&mut out, what, a, b, &[a.ip]);
    }
    // Node ↔ pod. The node speaks from its gateway address on podwire0 (or its
    // InternalIP); a pod is seen with its own IP.
    for (i, n) in lab.nodes.iter().enumerate() {
        let node = &nodes[i];
        let node_addrs = [n.ip, gateway(n.pod_cidr)];
        let targets: Vec<&End> = match coverage {
            Coverage::Full => pods.iter().collect(),
            Coverage::Sample => {
                let next = &lab.nodes[(i + 1) % lab.nodes.len()];
                let mut v: Vec<&End> = first_two(&n.name).into_iter().take(1).collect();
                if next.name != n.name {
                    v.extend(first_two(&next.name).into_iter().take(1));
                }
                v
            }
        };
        for p in targets {
            let local = p.node == n.name;
            let what = if local {
                "node→pod local"
            } else {
                "node→pod remote"
            };
            traffic(&mut out, what, node, p, &node_addrs);
            let what = if local {
                "pod→node local"
            } else {
                "pod→node remote"
            };
            traffic(&mut out, what, p, node, &[p.ip]);
        }
    }
    drop(reporters);
    Ok(out)
}

/// The first address of a pod CIDR (the gateway on `podwire0`).
pub fn gateway(cidr: ipnet::Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

/// The checks as a table with a PASS/FAIL column and a summary line.
pub fn render(checks: &[Check]) -> String {
    let mut rows = vec![vec![
        "CHECK".to_string(),
        "FROM".into(),
        "TO".into(),
        "PROTO".into(),
        "RESULT".into(),
        "DETAIL".into(),
    ]];
    for c in checks {
        let (r, d) = match &c.result {
            Ok(d) => ("PASS", d.clone()),
            Err(d) => ("FAIL", d.clone()),
        };
        rows.push(vec![
            c.what.clone(),
            c.from.clone(),
            c.to.clone(),
            c.proto.to_string(),
            r.into(),
            d,
        ]);
    }
    let passed = checks.iter().filter(|c| c.passed()).count();
    let mut out = table(&rows);
    out.push_str(&format!(
        "\n{passed}/{} checks passed{}\n",
        checks.len(),
        if passed == checks.len() {
            ""
        } else {
            " — FAILED"
        }
    ));
    out
}

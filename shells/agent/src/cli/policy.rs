//! `podwire policy check` and `podwire policy matrix`: NetworkPolicy verdicts computed
//! offline from manifests, through the same compiled table the datapath uses.
//!
//! Design note: both commands load manifests, compile them with the agent's policy
//! compiler into a core `PolicyTable` in which every pod is a local endpoint (a
//! cluster-wide view), and ask the table — so what they print is what a node would
//! enforce. Explanations come from the verdict itself (which policy and rule allowed,
//! or which policies isolate the pod) plus the compiler's names.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use podwire_core::policy::{AllowReason, PolicyTable, Verdict};
use serde::{Deserialize, Serialize};

use crate::control::cluster::{ClusterState, Protocol};
use crate::control::manifests;
use crate::control::policy_compiler::{self, CompiledPolicy, PolicyStore, EGRESS, INGRESS};
use crate::control::reachability::reachability;

/// `podwire policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate connection queries against the cluster's NetworkPolicies.
    Check(CheckArgs),
    /// Print the pod × pod reachability table of one port (upstream e2e layout).
    Matrix(MatrixArgs),
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// `{"results": [...]}`.
    Json,
}

/// Arguments of `policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A manifest file (multi-document YAML or JSON) or a folder of them; repeatable.
    #[arg(long = "manifests", required = true, value_name = "FILE|DIR")]
    pub manifests: Vec<PathBuf>,
    /// Queries: `{"queries": [{"from": "ns/pod"|"ip:A.B.C.D", "to": …, "port": N, "protocol": "TCP"}]}`.
    #[arg(long, value_name = "FILE")]
    pub queries: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `policy matrix`.
#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// A manifest file (multi-document YAML or JSON) or a folder of them; repeatable.
    #[arg(long = "manifests", required = true, value_name = "FILE|DIR")]
    pub manifests: Vec<PathBuf>,
    /// Destination port and protocol, e.g. `80/TCP` or `53/UDP` (protocol defaults to TCP).
    #[arg(long, default_value = "80/TCP", value_parser = parse_port_spec)]
    pub port: (u16, Protocol),
}

fn parse_port_spec(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("bad port {port:?}: expected 1-65535"))?;
    let proto = Protocol::parse(proto)
        .ok_or_else(|| format!("bad protocol {proto:?}: expected TCP, UDP or SCTP"))?;
    Ok((port, proto))
}

/// Runs a `policy` subcommand.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(a) => check(&a),
        PolicyCommand::Matrix(a) => matrix(&a),
    }
}

/// Loads and compiles manifests.
pub fn load_cluster(paths: &[PathBuf]) -> anyhow::Result<(ClusterState, CompiledPolicy)> {
    let m = manifests::load(paths)?;
    let cluster = ClusterState::from_manifests(&m)?;
    let compiled = policy_compiler::compile(&cluster)?;
    Ok((cluster, compiled))
}

fn build_table<'s>(
    compiled: &CompiledPolicy,
    store: &'s mut PolicyStore,
) -> anyhow::Result<PolicyTable<'s>> {
    compiled
        .table(store, |_| true)
        .map_err(|e| anyhow::anyhow!("building the policy table: {e:?}"))
}

// ---- check ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct QueryFile {
    queries: Vec<Query>,
}

#[derive(Debug, Deserialize)]
struct Query {
    from: String,
    to: String,
    port: serde_json::Value,
    #[serde(default)]
    protocol: Option<String>,
}

/// One direction's part of a result.
#[derive(Debug, Serialize)]
struct DirReport {
    /// The endpoint whose policy this is.
    endpoint: String,
    isolated: bool,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    isolated_by: Vec<String>,
    reason: String,
}

#[derive(Debug, Serialize)]
struct QueryResult {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    verdict: &'static str,
    egress: DirReport,
    ingress: DirReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    results: Vec<QueryResult>,
}

/// A query endpoint: its address and, if it is a pod, its index.
struct Endpoint {
    ip: IpAddr,
    pod: Option<usize>,
}

fn resolve(cluster: &ClusterState, s: &str, what: &str) -> anyhow::Result<Endpoint> {
    if let Some(ip) = s.strip_prefix("ip:") {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| anyhow::anyhow!("\"{what}\": {s:?} is not a valid IP address"))?;
        return Ok(Endpoint {
            ip,
            pod: cluster.pod_by_ip(ip),
        });
    }
    let Some((ns, name)) = s.split_once('/') else {
        bail!("\"{what}\": {s:?} is neither \"namespace/pod\" nor \"ip:A.B.C.D\"");
    };
    let Some(i) = cluster.pod_index(ns, name) else {
        bail!("\"{what}\": unknown pod {s}");
    };
    let Some(ip) = cluster.pods[i].ips.first().copied() else {
        bail!("\"{what}\": pod {s} has no IP address (status.podIP is not set)");
    };
    Ok(Endpoint { ip, pod: Some(i) })
}

fn read_queries(path: &Path) -> anyhow::Result<Vec<Query>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read queries file {}", path.display()))?;
    let file: QueryFile = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a valid queries file: {e}", path.display()))?,
        _ => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a valid queries file: {e}", path.display()))?,
    };
    Ok(file.queries)
}

struct Explainer<'a> {
    cluster: &'a ClusterState,
    compiled: &'a CompiledPolicy,
}

impl Explainer<'_> {
    fn name(&self, e: &Endpoint, raw: &str) -> String {
        match e.pod {
            Some(p) => self.cluster.pods[p].key(),
            None => raw.to_string(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        dir: usize,
        local: &Endpoint,
        local_raw: &str,
        peer_name: &str,
        (port, protocol): (u16, Protocol),
        verdict: Verdict,
    ) -> DirReport {
        let dir_name = if dir == INGRESS { "ingress" } else { "egress" };
        let type_name = if dir == INGRESS { "Ingress" } else { "Egress" };
        let endpoint = self.name(local, local_raw);
        let pod = local.pod.map(|p| &self.cluster.pods[p]);
        let isolated_by: Vec<String> = local
            .pod
            .and_then(|p| self.compiled.pod_identity.get(p))
            .and_then(|id| self.compiled.isolating.get(id.0 as usize))
            .map(|iso| {
                iso[dir]
                    .iter()
                    .map(|pid| self.compiled.policies[pid.0 as usize].key())
                    .collect()
            })
            .unwrap_or_default();
        let mut r = DirReport {
            endpoint,
            isolated: false,
            allowed: verdict.is_allow(),
            policy: None,
            rule: None,
            isolated_by: Vec::new(),
            reason: String::new(),
        };
        match verdict {
            Verdict::Allow(AllowReason::NotIsolated) => {
                r.reason = match pod {
                    None => "not a pod: NetworkPolicy does not apply".into(),
                    Some(p) if p.host_network => {
                        "host-network pod: NetworkPolicy does not apply".into()
                    }
                    Some(_) => format!("not isolated: no NetworkPolicy with policyType {type_name} selects the pod"),
                };
            }
            Verdict::Allow(AllowReason::Rule { policy, rule }) => {
                let key = self.compiled.policies[policy.0 as usize].key();
                r.isolated = true;
                r.reason = format!("allowed by {dir_name} rule {rule} of NetworkPolicy {key}");
                r.policy = Some(key);
                r.rule = Some(rule);
                r.isolated_by = isolated_by;
            }
            Verdict::Deny(_) => {
                r.isolated = true;
                let dir_peer = if dir == INGRESS { "from" } else { "to" };
                r.reason = format!(
                    "isolated by {}; no {dir_name} rule allows {protocol}/{port} {dir_peer} {peer_name}",
                    isolated_by.join(", ")
                );
                r.isolated_by = isolated_by;
            }
        }
        r
    }
}

fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let queries = read_queries(&a.queries)?;
    let (cluster, compiled) = load_cluster(&a.manifests)?;
    let mut store = compiled.store();
    let table = build_table(&compiled, &mut store)?;
    let explain = Explainer {
        cluster: &cluster,
        compiled: &compiled,
    };
    let mut results = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let at = || format!("{}: query {}", a.queries.display(), i + 1);
        let from = resolve(&cluster, &q.from, "from").with_context(at)?;
        let to = resolve(&cluster, &q.to, "to").with_context(at)?;
        let port = q
            .port
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| anyhow::anyhow!("\"port\": {} is not a port number (1-65535)", q.port))
            .with_context(at)? as u16;
        let proto_text = q.protocol.clone().unwrap_or_else(|| "TCP".into());
        let protocol = Protocol::parse(&proto_text)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "\"protocol\": unsupported protocol {proto_text:?}: expected TCP, UDP or SCTP"
                )
            })
            .with_context(at)?;
        let v = table.evaluate_connection(from.ip, to.ip, port, protocol.number());
        let from_name = explain.name(&from, &q.from);
        let to_name = explain.name(&to, &q.to);
        let egress = explain.report(EGRESS, &from, &q.from, &to_name, (port, protocol), v.egress);
        let ingress = explain.report(INGRESS, &to, &q.to, &from_name, (port, protocol), v.ingress);
        let loopback = from.ip == to.ip;
        let (verdict, note) = if loopback {
            (
                "allow",
                Some("traffic of a pod to itself stays inside its network namespace and never reaches the datapath; NetworkPolicy does not apply (egress/ingress show what the policies alone would say)".to_string()),
            )
        } else if v.is_allow() {
            ("allow", None)
        } else {
            ("deny", None)
        };
        results.push(QueryResult {
            from: q.from.clone(),
            to: q.to.clone(),
            port,
            protocol: proto_text,
            verdict,
            egress,
            ingress,
            note,
        });
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match a.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &Results { results })?;
            writeln!(out)?;
        }
        Output::Table => {
            let mut rows = vec![[
                "FROM".to_string(),
                "TO".into(),
                "PORT".into(),
                "VERDICT".into(),
                "EGRESS".into(),
                "INGRESS".into(),
            ]];
            for r in &results {
                rows.push([
                    r.from.clone(),
                    r.to.clone(),
                    format!("{}/{}", r.protocol, r.port),
                    r.verdict.to_string() + if r.note.is_some() { " (self)" } else { "" },
                    r.egress.reason.clone(),
                    r.ingress.reason.clone(),
                ]);
            }
            let mut widths = [0usize; 6];
            for row in &rows {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for row in rows {
                let line: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                writeln!(out, "{}", line.join("  ").trim_end())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---- matrix -----------------------------------------------------------------------

fn matrix(a: &MatrixArgs) -> anyhow::Result<ExitCode> {
    let (cluster, compiled) = load_cluster(&a.manifests)?;
    let mut store = compiled.store();
    let table = build_table(&compiled, &mut store)?;
    let (port, protocol) = a.port;
    let m = reachability(&cluster, &table, port, protocol);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "Reachability matrix for {protocol}/{port} (rows: from, columns: to; '.' allowed, 'X' denied):")?;
    out.write_all(m.render(&cluster).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

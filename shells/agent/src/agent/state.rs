//! The agent's shared state and how requests are answered from it.
//!
//! Design note: one mutex around (cluster view, pod manager) serialises every pod
//! operation — concurrent ADDs from the runtime queue up rather than race for an
//! address — while each operation is short (a few netlink calls and one fsync).
//! Answers are computed from this one place so the CLI, CNI STATUS and the logs
//! agree.

use std::path::PathBuf;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::agent::pods::{Pods, HOST_TAP};
use crate::api::{CniRequest, Request, Response, RouteRow, StatusLine};
use crate::cni::env::Command;
use crate::cni::spec::{CniError, ErrorCode};
use crate::control::node_view::ClusterView;
use crate::netlink::Netlink;
use crate::observe::metrics::{Recorded, Snapshot};

/// The cluster state the agent runs on.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// Where it comes from (`file /etc/podwire/cluster.yaml`, …).
    pub source: String,
    /// The last good view.
    pub view: ClusterView,
    /// How many good views have been applied (1 = the initial load).
    pub generation: u64,
    /// The error of the last reload, if it failed (the last good view keeps running).
    pub last_error: Option<String>,
    /// When the last good view was applied.
    pub loaded_at: SystemTime,
    /// Since when, and why, the source cannot be read (the last good view keeps
    /// running meanwhile).
    pub unavailable: Option<(SystemTime, String)>,
}

/// Everything behind the agent's lock.
pub struct Shared<N: Netlink> {
    /// Cluster state.
    pub cluster: ClusterState,
    /// Pods, IPAM, ports.
    pub pods: Pods<N>,
    /// The socket path (for status).
    pub socket: PathBuf,
    /// What the last policy/service installation did.
    pub enforcement: crate::agent::enforce::EnforceStatus,
    /// Metrics recorded as things happen (CNI latency).
    pub recorded: Recorded,
    /// The cluster DNS server, if enabled.
    pub dns: Option<crate::dns::DnsServer>,
}

fn line(subsystem: &str, state: &str, detail: String) -> StatusLine {
    StatusLine {
        subsystem: subsystem.into(),
        state: state.into(),
        detail,
    }
}

impl<N: Netlink> Shared<N> {
    /// Answers one request.
    pub async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Cni(req) => match self.cni(&req).await {
                Ok(r) => {
                    // A pod came or went: its address joins or leaves the policy.
                    if matches!(req.command, Command::Add | Command::Del) {
                        self.enforce().await;
                    }
                    Response::Cni(r)
                }
                Err(e) => {
                    tracing::warn!(command = ?req.command, container = ?req.container_id, error = %e, "CNI request failed");
                    Response::CniError(e)
                }
            },
            Request::Status => Response::Status(self.status()),
            Request::Pods => Response::Pods(self.pods.rows(Some(&self.cluster.view))),
            Request::Routes => Response::Routes(self.routes()),
            Request::Ipam => Response::Ipam(self.pods.ipam_report()),
            Request::Flows { drops_only } => match self.pods.dataplane_mut() {
                Some(dp) => Response::Flows(dp.flows().report(drops_only)),
                None => Response::Error("no dataplane".into()),
            },
            Request::Metrics => Response::Metrics(self.metrics()),
        }
    }

    async fn cni(
        &mut self,
        req: &CniRequest,
    ) -> Result<Option<crate::cni::spec::CniResult>, CniError> {
        let started = std::time::Instant::now();
        let out = match req.command {
            Command::Add => self.pods.add(req).await.map(Some),
            Command::Del => self.pods.del(req).await.map(|_| None),
            Command::Check => self.pods.check(req).await.map(|_| None),
            Command::Gc => {
                let freed = self.pods.gc(req).await?;
                if !freed.is_empty() {
                    tracing::info!(freed = freed.len(), "GC freed stale attachments");
                }
                Ok(None)
            }
            Command::Status => {
                let ipam = self.pods.ipam();
                if ipam.allocated() >= ipam.capacity() {
                    Err(CniError::new(
                        ErrorCode::PluginNotAvailable,
                        format!("pod CIDR {} is full", ipam.cidr()),
                    ))
                } else {
                    Ok(None)
                }
            }
            Command::Version => Ok(None),
        };
        self.recorded.cni(req.command, started.elapsed());
        if out.is_ok() {
            tracing::info!(
                command = ?req.command,
                container = req.container_id.as_deref().unwrap_or(""),
                ifname = req.ifname.as_deref().unwrap_or(""),
                micros = started.elapsed().as_micros() as u64,
                "CNI request done"
            );
        }
        out
    }

    /// `podwire status`.
    pub fn status(&self) -> Vec<StatusLine> {
        let c = &self.cluster;
        let v = &c.view;
        let mut lines = Vec::new();
        match (&c.unavailable, &c.last_error) {
            (Some((since, why)), _) => lines.push(line(
                "Cluster",
                "Stale",
                format!(
                    "stale since {}: {why}; running generation {} from {}",
                    crate::dataplane::flows::rfc3339(*since),
                    c.generation,
                    c.source
                ),
            )),
            (None, None) => lines.push(line(
                "Cluster",
                "Ok",
                format!(
                    "{} (generation {}): {} nodes, {} pods, {} namespaces",
                    c.source,
                    c.generation,
                    v.nodes.len(),
                    v.pod_labels.len(),
                    v.namespaces
                ),
            )),
            (None, Some(e)) => lines.push(line(
                "Cluster",
                "Warning",
                format!(
                    "last reload rejected, running generation {}: {e}",
                    c.generation
                ),
            )),
        }
        let e = &self.enforcement;
        lines.push(line(
            "Policy",
            if e.error.is_some() { "Error" } else { "Ok" },
            format!(
                "{} policies, {} identities, {} local endpoints; compile {} us + install {} us ({} installs), {} service ports{}",
                e.policies,
                e.identities,
                e.local_pods,
                e.compile.as_micros(),
                e.fill.as_micros(),
                e.count,
                e.services,
                e.error.as_ref().map(|x| format!(": {x}")).unwrap_or_default()
            ),
        ));
        lines.push(line(
            "Node",
            "Ok",
            format!(
                "{} podCIDR {} InternalIP {}",
                v.local.name,
                v.local
                    .pod_cidr
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                v.local
                    .internal_ip
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
        ));
        let ipam = self.pods.ipam();
        let (state, mut detail) = if ipam.allocated() >= ipam.capacity() {
            ("Error", "full: ".to_string())
        } else if ipam.warning.is_some() {
            ("Warning", String::new())
        } else {
            ("Ok", String::new())
        };
        detail.push_str(&format!(
            "{}/{} addresses allocated in {}",
            ipam.allocated(),
            ipam.capacity(),
            ipam.cidr()
        ));
        if let Some(w) = &ipam.warning {
            detail.push_str(&format!("; {w}"));
        }
        lines.push(line("IPAM", state, detail));
        let cfg = self.pods.config();
        lines.push(line(
            "Host port",
            if self
                .pods
                .ports()
                .is_attached(crate::dataplane::ports::HOST_PORT)
            {
                "Ok"
            } else {
                "Error"
            },
            format!(
                "{HOST_TAP} {}/{} mtu {}, {} routes to other nodes",
                self.pods.gateway(),
                ipam.cidr().prefix_len(),
                cfg.mtu,
                self.pods.host_routes().len()
            ),
        ));
        let rows = self.pods.rows(None);
        let detached = rows.iter().filter(|r| r.state != "attached").count();
        lines.push(line(
            "Pods",
            if detached == 0 { "Ok" } else { "Warning" },
            format!("{} attached, {detached} detached", rows.len() - detached),
        ));
        lines.push(datapath_line(self.pods.dataplane_stats()));
        lines.push(match &self.dns {
            Some(d) => d.status(),
            None => line("DNS", "Disabled", "--dns-address none".into()),
        });
        lines.push(line(
            "API",
            "Ok",
            format!("{} (mode 0600)", self.socket.display()),
        ));
        lines
    }

    /// The Prometheus metrics text: a snapshot of every counter, read now.
    pub fn metrics(&self) -> String {
        let mut snap = Snapshot::default();
        if let Some(dp) = self.pods.dataplane() {
            snap.datapath = dp.stats();
            snap.set_tallies(dp.flows().tallies(), dp.flows().lost());
        }
        let ipam = self.pods.ipam();
        snap.ipam_allocated = u64::from(ipam.allocated());
        snap.ipam_capacity = u64::from(ipam.capacity());
        snap.pods = ipam.attachments().count() as u64;
        snap.cluster_generation = self.cluster.generation;
        snap.cluster_loaded_at = Some(self.cluster.loaded_at);
        snap.cluster_unavailable_since = self.cluster.unavailable.as_ref().map(|(t, _)| *t);
        snap.cluster_rejected = self.cluster.last_error.is_some();
        snap.render(&self.recorded)
    }

    /// Whether the node forwards: the dataplane's worker answers. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        match self.pods.dataplane_stats() {
            None => Err("no dataplane".into()),
            Some(None) => Err("the dataplane worker did not answer".into()),
            Some(Some(_)) => Ok(()),
        }
    }

    /// `podwire routes`.
    pub fn routes(&self) -> Vec<RouteRow> {
        let v = &self.cluster.view;
        let mut rows = Vec::new();
        for n in &v.nodes {
            let Some(cidr) = n.pod_cidr else { continue };
            let local = n.name == v.local.name;
            rows.push(RouteRow {
                destination: IpNet::V4(cidr),
                kind: if local {
                    "local".into()
                } else {
                    "vxlan".into()
                },
                node: n.name.clone(),
                via: if local {
                    None
                } else {
                    n.internal_ip.map(std::net::IpAddr::V4)
                },
            });
        }
        for n in &v.nodes {
            if let Some(ip) = n.internal_ip {
                rows.push(RouteRow {
                    destination: IpNet::V4(ipnet::Ipv4Net::new(ip, 32).unwrap_or_default()),
                    kind: "host".into(),
                    node: n.name.clone(),
                    via: None,
                });
            }
        }
        rows
    }
}

/// `Datapath:` in `podwire status`: the core's counters and its non-zero drop
/// reasons (`drops: unknown_vtep=3 exceeds_underlay_mtu=1`).
fn datapath_line(stats: Option<Option<crate::dataplane::node::Stats>>) -> crate::api::StatusLine {
    let (state, detail) = match stats {
        None => ("Disabled", "no dataplane".to_string()),
        Some(None) => ("Warning", "the dataplane worker did not answer".to_string()),
        Some(Some(s)) => {
            let mut d = format!(
                "delivered {} encapsulated {} decapsulated {} replied {} dropped {}",
                s.stats.delivered,
                s.stats.encapsulated,
                s.stats.decapsulated,
                s.stats.replied,
                s.stats.dropped
            );
            if !s.drops.is_empty() {
                d.push_str("; drops:");
                for (r, n) in &s.drops {
                    d.push_str(&format!(" {r}={n}"));
                }
            }
            ("Ok", d)
        }
    };
    crate::api::StatusLine {
        subsystem: "Datapath".into(),
        state: state.into(),
        detail,
    }
}

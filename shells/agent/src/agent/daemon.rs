//! `podwire agent`: start-up, the local API server, and cluster-state reloads.
//!
//! Design note: start-up is ordered so that a restarted agent resumes without help:
//! load the cluster state (the node's pod CIDR), restore IPAM from the state dir,
//! (re)attach the host TAP and every recorded pod TAP, and only then open the socket
//! — a CNI call that arrives earlier finds no socket and is told to try again (11).
//! The manifests are polled (a content fingerprint once per interval), which works
//! the same for a file, a folder, and a ConfigMap's symlink swaps; a change that does
//! not parse or validate is logged and reported by `podwire status`, and the last
//! good state keeps running.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use podwire_core::wire::Vni;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Mutex;

use crate::agent::pods::{Pods, WiringConfig};
use crate::agent::state::{ClusterState, Shared};
use crate::api::{Request, Response};
use crate::control::ipam::mac_for;
use crate::control::ipam::NodeIpam;
use crate::control::manifests;
use crate::control::node_view::{self, ClusterView, ViewError};
use crate::dataplane::node::{Dataplane, NodeSetup, RemoteNode, Sizes};
use crate::dataplane::tap::TapOptions;
use crate::netlink::rt::RtNetlink;
use crate::netlink::{Netlink, Ns};
use podwire_core::ids::NodeId;

/// VXLAN overhead subtracted from the underlay MTU for pod interfaces.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Manifests file or folder.
    pub cluster: PathBuf,
    /// This node's name.
    pub node: String,
    /// State directory (IPAM).
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Underlay MTU; detected from the InternalIP's device when `None`.
    pub underlay_mtu: Option<u32>,
    /// How often the manifests are checked for changes.
    pub reload_interval: Duration,
    /// TAP queues per pod.
    pub queues: usize,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// VXLAN network identifier.
    pub vni: Vni,
    /// Connection-tracking entries.
    pub conntrack_entries: usize,
    /// How long the dataplane busy-polls after traffic before sleeping (zero: never).
    pub busy_poll: Duration,
    /// Cluster DNS (`None`: not served).
    pub dns: Option<crate::dns::DnsConfig>,
}

/// A fingerprint of the manifests: file names and contents.
fn fingerprint(path: &Path) -> Result<Vec<u8>, ViewError> {
    let mut out = Vec::new();
    let files = manifests::manifest_files(path)
        .map_err(|e| ViewError::whole(path.display().to_string(), e.to_string()))?;
    for f in files {
        out.extend_from_slice(f.display().to_string().as_bytes());
        out.push(0);
        out.extend_from_slice(
            &std::fs::read(&f)
                .map_err(|e| ViewError::whole(f.display().to_string(), e.to_string()))?,
        );
        out.push(0);
    }
    Ok(out)
}

fn load_view(path: &Path, node: &str) -> Result<ClusterView, ViewError> {
    node_view::load(path, node)
}

/// The other nodes with a pod CIDR and an InternalIP, numbered by their position in
/// the name-sorted node list (the same on every node).
fn remote_nodes(view: &ClusterView) -> Vec<RemoteNode> {
    view.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.name != view.local.name)
        .filter_map(|(i, n)| {
            Some(RemoteNode {
                id: NodeId(i as u16),
                pod_cidr: n.pod_cidr?,
                ip: n.internal_ip?,
                vtep_mac: n.vtep_mac,
            })
        })
        .collect()
}

fn local_node_id(view: &ClusterView) -> NodeId {
    NodeId(
        view.nodes
            .iter()
            .position(|n| n.name == view.local.name)
            .unwrap_or(0) as u16,
    )
}

fn start_dataplane<N: Netlink>(
    pods: &mut Pods<N>,
    view: &ClusterView,
    config: &AgentConfig,
    underlay_mtu: u32,
) -> Result<()> {
    let Some(node_ip) = view.local.internal_ip else {
        bail!(
            "Node/{} has no InternalIP in status.addresses",
            view.local.name
        );
    };
    let host_queue = pods
        .host_queue()
        .context("the host port podwire0 has no queue")?;
    let underlay = match std::net::UdpSocket::bind((node_ip, config.vxlan_port)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(%node_ip, port = config.vxlan_port, error = %e, "no VXLAN socket: cross-node traffic disabled");
            None
        }
    };
    let setup = NodeSetup {
        node: local_node_id(view),
        pod_cidr: pods.ipam().cidr(),
        gateway: pods.gateway(),
        node_ip,
        underlay_mtu: underlay_mtu.min(u32::from(u16::MAX)) as u16,
        host_mac: mac_for(pods.gateway()),
        vxlan_port: config.vxlan_port,
        vni: config.vni,
        busy_poll: config.busy_poll,
    };
    let sizes = Sizes {
        conntrack: config.conntrack_entries.max(1024),
        ..Sizes::default()
    };
    let dp = Dataplane::start(&setup, sizes, host_queue, underlay).map_err(anyhow::Error::msg)?;
    pods.attach_dataplane(dp);
    pods.set_remote_nodes(remote_nodes(view));
    Ok(())
}

fn remote_cidrs(view: &ClusterView) -> Vec<Ipv4Net> {
    view.nodes
        .iter()
        .filter(|n| n.name != view.local.name)
        .filter_map(|n| n.pod_cidr)
        .collect()
}

async fn detect_underlay_mtu<N: Netlink>(nl: &N, view: &ClusterView) -> Option<u32> {
    let ip = view.local.internal_ip?;
    let links = nl.links(&Ns::Node).await.ok()?;
    links
        .into_iter()
        .find(|(_, l)| {
            l.addresses
                .iter()
                .any(|a| a.addr() == std::net::IpAddr::V4(ip))
        })
        .map(|(_, l)| l.mtu)
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config: AgentConfig) -> Result<()> {
    let view = load_view(&config.cluster, &config.node)
        .with_context(|| format!("loading cluster state from {}", config.cluster.display()))?;
    let fp = fingerprint(&config.cluster).unwrap_or_default();
    let Some(cidr) = view.local.pod_cidr else {
        bail!("Node/{} has no podCIDR", config.node);
    };
    let ipam = NodeIpam::open(&config.state_dir, cidr)
        .with_context(|| format!("opening IPAM state in {}", config.state_dir.display()))?;
    if let Some(w) = &ipam.warning {
        tracing::warn!(warning = %w, "IPAM");
    }
    let nl = Arc::new(RtNetlink::new().context("opening rtnetlink")?);
    let underlay = match config.underlay_mtu {
        Some(m) => m,
        None => detect_underlay_mtu(nl.as_ref(), &view)
            .await
            .unwrap_or(1500),
    };
    if underlay <= VXLAN_OVERHEAD + 576 {
        bail!("underlay MTU {underlay} is too small");
    }
    let wiring = WiringConfig {
        mtu: underlay - VXLAN_OVERHEAD,
        tap: TapOptions {
            queues: config.queues.max(1),
            ..TapOptions::default()
        },
    };
    let mut pods = Pods::new(nl.clone(), ipam, wiring);
    pods.ensure_host_port(&remote_cidrs(&view))
        .await
        .context("setting up the host port podwire0")?;
    for (key, why) in pods.adopt().await {
        tracing::warn!(container = %key.container_id, ifname = %key.ifname, reason = %why, "could not re-adopt pod; it stays allocated until DEL or GC");
    }
    start_dataplane(&mut pods, &view, &config, underlay).context("starting the dataplane")?;
    let dns = match &config.dns {
        Some(c) => {
            let server = crate::dns::DnsServer::start(c.clone(), nl.as_ref())
                .await
                .context("starting cluster DNS")?;
            server.publish(&view);
            pods.set_dns(Some(c.clone()));
            Some(server)
        }
        None => None,
    };
    tracing::info!(
        node = %config.node,
        pod_cidr = %cidr,
        mtu = wiring.mtu,
        pods = pods.ipam().attachments().count(),
        "agent started"
    );
    let listener = bind(&config.socket)?;
    let shared = Arc::new(Mutex::new(Shared {
        cluster: ClusterState {
            source: config.cluster.clone(),
            view,
            generation: 1,
            last_error: None,
            loaded_at: SystemTime::now(),
        },
        pods,
        socket: config.socket.clone(),
        enforcement: Default::default(),
        dns,
    }));
    // Policy and services are in force before the first CNI request is served.
    shared.lock().await.enforce().await;
    let reload = tokio::spawn(reload_loop(shared.clone(), config.clone(), fp));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, shared).await {
                            tracing::debug!(error = %e, "API connection");
                        }
                    });
                }
                Err(e) => break Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = term.recv() => break Ok(()),
        }
    };
    reload.abort();
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("agent stopped; pod interfaces stay in place for the next start");
    result
}

fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    // Create the socket with no permissions for others from the first instant.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve<N: Netlink>(
    mut stream: tokio::net::UnixStream,
    shared: Arc<Mutex<Shared<N>>>,
) -> Result<()> {
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut body)).await??;
    let response = match serde_json::from_slice::<Request>(&body) {
        Ok(req) => shared.lock().await.handle(req).await,
        Err(e) => Response::Error(format!("invalid request: {e}")),
    };
    stream.write_all(&serde_json::to_vec(&response)?).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn reload_loop<N: Netlink>(
    shared: Arc<Mutex<Shared<N>>>,
    config: AgentConfig,
    mut last: Vec<u8>,
) {
    let mut tick = tokio::time::interval(config.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let path = config.cluster.clone();
        let node = config.node.clone();
        let fp = match tokio::task::spawn_blocking(move || fingerprint(&path)).await {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) => {
                record_error(&shared, e.to_string()).await;
                continue;
            }
            Err(_) => continue,
        };
        if fp == last {
            continue;
        }
        last = fp;
        let path = config.cluster.clone();
        let view = tokio::task::spawn_blocking(move || load_view(&path, &node)).await;
        match view {
            Ok(Ok(view)) => {
                let mut s = shared.lock().await;
                if let Err(e) = s.pods.sync_host_routes(&remote_cidrs(&view)).await {
                    tracing::error!(error = %e, "updating routes to other nodes");
                }
                s.pods.set_remote_nodes(remote_nodes(&view));
                if view.local.pod_cidr != Some(s.pods.ipam().cidr()) {
                    tracing::warn!(
                        new = ?view.local.pod_cidr,
                        in_use = %s.pods.ipam().cidr(),
                        "node podCIDR changed; it takes effect when the agent restarts with no pods"
                    );
                }
                s.cluster.view = view;
                if let Some(dns) = &s.dns {
                    dns.publish(&s.cluster.view);
                }
                s.cluster.generation += 1;
                s.cluster.last_error = None;
                s.cluster.loaded_at = SystemTime::now();
                tracing::info!(generation = s.cluster.generation, "cluster state reloaded");
                s.enforce().await;
            }
            Ok(Err(e)) => record_error(&shared, e.to_string()).await,
            Err(_) => {}
        }
    }
}

async fn record_error<N: Netlink>(shared: &Arc<Mutex<Shared<N>>>, e: String) {
    let mut s = shared.lock().await;
    if s.cluster.last_error.as_deref() != Some(&e) {
        tracing::error!(error = %e, "cluster state rejected; keeping the last good state");
    }
    s.cluster.last_error = Some(e);
}

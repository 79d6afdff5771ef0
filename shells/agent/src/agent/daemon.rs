//! `podwire agent`: start-up, the local API server, and cluster-state reloads.
//!
//! Design note: start-up is ordered so that a restarted agent resumes without help:
//! load the cluster state (the node's pod CIDR), restore IPAM from the state dir,
//! (re)attach the host TAP and every recorded pod TAP, and only then open the socket
//! — a CNI call that arrives earlier finds no socket and is told to try again (11).
//! The cluster state comes from a [`crate::source`] task over a channel; events are
//! gathered into the object store and compiled after a short debounce. A state that
//! does not validate, or a source that goes away, is logged and reported by
//! `podwire status`, and the last good state keeps running.

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
use crate::control::node_view::ClusterView;
use crate::dataplane::node::{router_mac, Dataplane, NodeSetup, RemoteNode, Sizes};
use crate::dataplane::tap::TapOptions;
use crate::netlink::rt::RtNetlink;
use crate::netlink::{Netlink, Ns};
use crate::source::{self, Datastore, ObjectStore, SourceEvent, WiredNode, WiredReceiver};
use podwire_core::ids::NodeId;

/// VXLAN overhead subtracted from the underlay MTU for pod interfaces.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the cluster state comes from.
    pub datastore: Datastore,
    /// Manifests file or folder (the file datastore).
    pub cluster: PathBuf,
    /// The etcd cluster (the etcd datastore).
    pub etcd: source::etcd::EtcdConfig,
    /// The InternalIP this node publishes (the etcd datastore; `None`: detected).
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// How long this node's Node object outlives the agent (the etcd datastore).
    pub liveness_ttl: Duration,
    /// The kubeconfig of the Kubernetes datastore (`None`: in-cluster configuration).
    pub kubeconfig: Option<PathBuf>,
    /// Also publish flannel's Node annotations (the Kubernetes datastore).
    pub flannel_interop: bool,
    /// This node's name.
    pub node: String,
    /// State directory (IPAM).
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Underlay MTU; detected from the InternalIP's device when `None`.
    pub underlay_mtu: Option<u32>,
    /// How often the manifests are checked for changes (the file datastore).
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
    /// Where Prometheus metrics are served (`None`: not served).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where health, readiness and metrics are served (`None`: not served).
    pub admin_address: Option<std::net::SocketAddr>,
    /// Cluster DNS (`None`: not served).
    pub dns: Option<crate::dns::DnsConfig>,
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
    let (events_tx, mut events) = tokio::sync::mpsc::channel(source::EVENT_QUEUE);
    let (wired_tx, wired_rx) = tokio::sync::watch::channel(None);
    let (source_name, source_task) = spawn_source(&config, events_tx, wired_rx);
    let mut store = ObjectStore::default();
    let (view, cidr) = first_view(&config, &source_name, &mut store, &mut events).await?;
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
    if let Some(ip) = view.local.internal_ip {
        wired_tx.send_replace(Some(WiredNode {
            public_ip: ip,
            vtep_mac: router_mac(ip),
            vni: config.vni.get(),
            vxlan_port: config.vxlan_port,
        }));
    }
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
            source: source_name,
            view,
            generation: 1,
            last_error: None,
            loaded_at: SystemTime::now(),
            unavailable: None,
        },
        pods,
        socket: config.socket.clone(),
        enforcement: Default::default(),
        recorded: Default::default(),
        dns,
    }));
    // Policy and services are in force before the first CNI request is served.
    shared.lock().await.enforce().await;
    let admin =
        crate::observe::admin::serve(config.metrics_address, config.admin_address, shared.clone())
            .await?;
    let reload = tokio::spawn(follow(shared.clone(), config.node.clone(), store, events));
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
    source_task.abort();
    admin.abort();
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

/// Starts the configured source; returns how status names it and its task. `wired`
/// says when this node is wired, for a datastore that publishes it.
fn spawn_source(
    config: &AgentConfig,
    events: source::EventSender,
    wired: WiredReceiver,
) -> (String, tokio::task::JoinHandle<()>) {
    match config.datastore {
        Datastore::File => (
            format!("file {}", config.cluster.display()),
            tokio::spawn(source::file::run(
                config.cluster.clone(),
                config.reload_interval,
                events,
            )),
        ),
        Datastore::Etcd => (
            format!("etcd {}", config.etcd.endpoints.join(",")),
            tokio::spawn(source::etcd::run(
                config.etcd.clone(),
                source::etcd::NodeIdentity {
                    name: config.node.clone(),
                    ip: config.node_ip,
                    liveness_ttl: config.liveness_ttl,
                },
                events,
            )),
        ),
        Datastore::Kubernetes => (
            match &config.kubeconfig {
                Some(k) => format!("kubernetes ({})", k.display()),
                None => "kubernetes (in-cluster)".to_string(),
            },
            tokio::spawn(source::kubernetes::run(
                source::kubernetes::Settings {
                    kubeconfig: config.kubeconfig.clone(),
                    node: config.node.clone(),
                    flannel_interop: config.flannel_interop,
                },
                events,
                wired,
            )),
        ),
    }
}

/// Waits for the source's first complete state that gives this node a pod CIDR.
/// A file that does not load is a start-up error; a network datastore is waited for.
async fn first_view(
    config: &AgentConfig,
    source_name: &str,
    store: &mut ObjectStore,
    events: &mut tokio::sync::mpsc::Receiver<SourceEvent>,
) -> Result<(ClusterView, Ipv4Net)> {
    let mut last_problem = String::new();
    loop {
        let Some(event) = events.recv().await else {
            bail!("the {source_name} source stopped before its first sync: {last_problem}");
        };
        let problem = match event {
            SourceEvent::Unavailable(why) => why,
            e => {
                store.apply(e);
                if !store.synced() || !events.is_empty() {
                    continue;
                }
                match ClusterView::build(&store.manifests(), &config.node) {
                    Ok(view) => match view.local.pod_cidr {
                        Some(cidr) => return Ok((view, cidr)),
                        None => format!("Node/{} has no podCIDR", config.node),
                    },
                    Err(e) => e.to_string(),
                }
            }
        };
        if config.datastore == Datastore::File {
            bail!("loading cluster state from {source_name}: {problem}");
        }
        if problem != last_problem {
            tracing::warn!(source = source_name, problem = %problem, "waiting for the cluster state");
            last_problem = problem;
        }
    }
}

/// Applies the source's events for as long as the agent runs: gathers what arrives
/// within [`source::DEBOUNCE`] of a change, then compiles and installs the new view.
async fn follow<N: Netlink>(
    shared: Arc<Mutex<Shared<N>>>,
    node: String,
    mut store: ObjectStore,
    mut events: tokio::sync::mpsc::Receiver<SourceEvent>,
) {
    while let Some(event) = events.recv().await {
        let mut changed = note_availability(&shared, &event).await | store.apply(event);
        let deadline = tokio::time::Instant::now() + source::DEBOUNCE;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            changed |= note_availability(&shared, &event).await | store.apply(event);
        }
        if !changed || !store.synced() {
            continue;
        }
        let manifests = store.manifests();
        let node = node.clone();
        let view = tokio::task::spawn_blocking(move || ClusterView::build(&manifests, &node)).await;
        match view {
            Ok(Ok(view)) => install_view(&shared, view).await,
            Ok(Err(e)) => record_error(&shared, e.to_string()).await,
            Err(_) => {}
        }
    }
}

/// Records a source's loss or return in the status; never changes forwarding.
async fn note_availability<N: Netlink>(
    shared: &Arc<Mutex<Shared<N>>>,
    event: &SourceEvent,
) -> bool {
    match event {
        SourceEvent::Unavailable(why) => {
            let mut s = shared.lock().await;
            if s.cluster.unavailable.as_ref().map(|(_, w)| w) != Some(why) {
                tracing::error!(reason = %why, "cluster state source unavailable; keeping the last good state");
                let since = s
                    .cluster
                    .unavailable
                    .as_ref()
                    .map_or(SystemTime::now(), |(t, _)| *t);
                s.cluster.unavailable = Some((since, why.clone()));
            }
        }
        SourceEvent::Available => {
            let mut s = shared.lock().await;
            if s.cluster.unavailable.take().is_some() {
                tracing::info!("cluster state source available again");
            }
        }
        _ => {}
    }
    false
}

async fn install_view<N: Netlink>(shared: &Arc<Mutex<Shared<N>>>, view: ClusterView) {
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

async fn record_error<N: Netlink>(shared: &Arc<Mutex<Shared<N>>>, e: String) {
    let mut s = shared.lock().await;
    if s.cluster.last_error.as_deref() != Some(&e) {
        tracing::error!(error = %e, "cluster state rejected; keeping the last good state");
    }
    s.cluster.last_error = Some(e);
}

//! The etcd datastore: a cluster's state in a real etcd, shared by every node.
//!
//! Design note: this is flannel's etcd mode and Calico's etcd datastore in one
//! source. A session with one member ([`connection`]) reads the network config,
//! takes the node's subnet lease ([`subnet`]), writes the node's own `Node` object
//! (InternalIP, `spec.podCIDR` from the lease, `podwire.io/*` annotations) on a
//! short liveness lease, then lists every object and watches the prefix from the
//! listed revision ([`schema`] has the layout). Seeing its own synced canary come
//! back through the watch gives the synced mark. Any failure (a member killed,
//! stopped or partitioned away, a lease lost) ends the session: the source says it is
//! unavailable — the agent keeps forwarding on its last good state — and the next
//! session, on the next member, resumes the watch from the last revision it
//! applied; if etcd has compacted that revision away the watch is refused and the
//! source relists. A node that dies stops renewing its liveness lease; etcd deletes
//! its `Node` when the lease expires, and every other node drops its routes.

pub mod connection;
pub mod schema;
pub mod subnet;
pub mod writer;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use connection::EtcdConfig;
use connection::{Connector, REQUEST_TIMEOUT};
use schema::{KeyKind, NetworkConfig, Schema, SubnetHolder};

use super::{EventSender, Kind, ObjectKey, SourceEvent};
use crate::control::manifests::Object;

/// The annotation with the node's backend (`vxlan`).
pub const BACKEND_ANNOTATION: &str = "podwire.io/backend";
/// The annotation with the node's underlay address.
pub const PUBLIC_IP_ANNOTATION: &str = "podwire.io/public-ip";
/// The annotation with the etcd key of the node's subnet lease.
pub const SUBNET_LEASE_ANNOTATION: &str = "podwire.io/subnet-lease";

/// The largest response a list may return (a cluster at Kubernetes' limits).
const MAX_MESSAGE: usize = 1 << 30;

/// A session shorter than this counts as failing at once (see [`run`]).
const SHORT_SESSION: Duration = Duration::from_secs(10);

/// How often the subnet lease is renewed (its TTL is a day).
const SUBNET_RENEW: Duration = Duration::from_secs(300);

/// Who this node is in etcd.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node's name.
    pub name: String,
    /// Its InternalIP; `None`: the address it reaches etcd from.
    pub ip: Option<Ipv4Addr>,
    /// How long the node's `Node` object outlives its last renewal.
    pub liveness_ttl: Duration,
}

/// What survives from one session to the next.
#[derive(Debug, Default)]
struct Progress {
    /// The subnet the node holds (its pods use it: never given up).
    subnet: Option<Ipv4Net>,
    /// The revision everything delivered so far is at.
    revision: Option<i64>,
    synced: bool,
    unavailable: Option<String>,
}

/// Why a session ended.
enum End {
    /// The agent hung up.
    Closed,
    /// Something failed; the text says what.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for End {
    fn from(e: anyhow::Error) -> End {
        End::Failed(e)
    }
}

impl From<etcd_client::Error> for End {
    fn from(e: etcd_client::Error) -> End {
        End::Failed(e.into())
    }
}

/// Runs the etcd source until the agent hangs up.
pub async fn run(config: EtcdConfig, node: NodeIdentity, events: EventSender) {
    let schema = Schema::new(&config.prefix);
    let mut connector = Connector::new(config);
    let mut progress = Progress::default();
    let mut short_sessions = 0;
    loop {
        let mut pause = None;
        let failure = match connector.connect_round().await {
            Ok((endpoint, mut client)) => {
                tracing::info!(%endpoint, "connected to etcd");
                let started = tokio::time::Instant::now();
                let end = session(
                    &mut client,
                    &endpoint,
                    &schema,
                    &node,
                    &mut progress,
                    &events,
                )
                .await;
                // A session that fails as soon as it starts (no network config, no
                // free subnet) is retried after a growing pause, not in a tight loop.
                if started.elapsed() < SHORT_SESSION {
                    short_sessions += 1;
                    pause = Some(connection::backoff(short_sessions));
                } else {
                    short_sessions = 0;
                }
                match end {
                    End::Closed => return,
                    End::Failed(e) => format!("etcd {endpoint}: {e:#}"),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if progress.unavailable.as_ref() != Some(&failure) {
            tracing::warn!(reason = %failure, "etcd session ended");
        }
        progress.unavailable = Some(failure.clone());
        if events
            .send(SourceEvent::Unavailable(failure))
            .await
            .is_err()
        {
            return;
        }
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
}

async fn send(events: &EventSender, e: SourceEvent) -> Result<(), End> {
    events.send(e).await.map_err(|_| End::Closed)
}

/// One session with one member; returns only when it ends.
async fn session(
    client: &mut Client,
    endpoint: &str,
    schema: &Schema,
    node: &NodeIdentity,
    progress: &mut Progress,
    events: &EventSender,
) -> End {
    match session_inner(client, endpoint, schema, node, progress, events).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    client: &mut Client,
    endpoint: &str,
    schema: &Schema,
    node: &NodeIdentity,
    progress: &mut Progress,
    events: &EventSender,
) -> Result<std::convert::Infallible, End> {
    let network = read_config(client, schema).await?;
    let ip = match node.ip {
        Some(ip) => ip,
        None => source_address(endpoint)?,
    };
    let me = SubnetHolder {
        node: node.name.clone(),
        node_ip: ip,
    };
    let lease = subnet::claim(client, schema, &network, &me, progress.subnet).await?;
    if progress.subnet != Some(lease.subnet) {
        tracing::info!(subnet = %lease.subnet, "holding subnet lease");
    }
    progress.subnet = Some(lease.subnet);
    let ttl = node.liveness_ttl.as_secs().max(2) as i64;
    let liveness = client.lease_grant(ttl, None).await?.id();
    let own = own_node(&me, lease.subnet, &network, &schema.subnet(lease.subnet));
    let own_key = ObjectKey::of(&own).expect("a Node has a key");
    client
        .put(
            schema.resource(&own_key),
            schema::encode_object(&own).expect("a Node encodes"),
            Some(PutOptions::new().with_lease(liveness)),
        )
        .await
        .context("writing this node's Node object")?;
    let (mut live_keeper, mut live_stream) = client.lease_keep_alive(liveness).await?;
    let (mut subnet_keeper, mut subnet_stream) = client.lease_keep_alive(lease.lease_id).await?;
    let mut live_tick = tokio::time::interval(Duration::from_secs((ttl / 3).max(1) as u64));
    let mut subnet_tick = tokio::time::interval(SUBNET_RENEW);
    loop {
        let from = match progress.revision {
            Some(r) => r + 1,
            None => list(client, schema, progress, events).await?,
        };
        if progress.unavailable.take().is_some() {
            send(events, SourceEvent::Available).await?;
        }
        client
            .put(schema.canary(&node.name), from.to_string(), None)
            .await
            .context("writing the synced canary")?;
        let (_watcher, mut stream) = client
            .watch(
                schema.root(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from)
                        .with_progress_notify(),
                ),
            )
            .await?;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(resp) = msg? else { return Err(anyhow::anyhow!("the watch was closed").into()) };
                    if resp.compact_revision() != 0 {
                        tracing::warn!(from, compacted = resp.compact_revision(), "watch revision compacted away; relisting");
                        progress.revision = None;
                        break;
                    }
                    if resp.canceled() {
                        return Err(anyhow::anyhow!("the watch was cancelled: {}", resp.cancel_reason()).into());
                    }
                    for ev in resp.events() {
                        deliver(ev, schema, node, progress, events).await?;
                    }
                    if let Some(h) = resp.header() {
                        if h.revision() >= from {
                            progress.revision = Some(h.revision().max(progress.revision.unwrap_or(0)));
                        }
                    }
                }
                _ = live_tick.tick() => {
                    renew(&mut live_keeper, &mut live_stream).await.context("renewing this node's liveness lease")?;
                }
                _ = subnet_tick.tick() => {
                    renew(&mut subnet_keeper, &mut subnet_stream).await.with_context(|| format!("renewing the lease of subnet {}", lease.subnet))?;
                }
            }
        }
    }
}

/// Renews a lease once; an expired lease is an error (the session starts over and
/// takes its keys again).
async fn renew(
    keeper: &mut etcd_client::LeaseKeeper,
    stream: &mut etcd_client::LeaseKeepAliveStream,
) -> Result<()> {
    keeper.keep_alive().await?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
        .await
        .context("no answer")??
        .context("keep-alive stream closed")?;
    if resp.ttl() <= 0 {
        bail!("lease {} expired", keeper.id());
    }
    Ok(())
}

/// Hands one watch event to the agent.
async fn deliver(
    ev: &etcd_client::Event,
    schema: &Schema,
    node: &NodeIdentity,
    progress: &mut Progress,
    events: &EventSender,
) -> Result<(), End> {
    let Some(kv) = ev.kv() else { return Ok(()) };
    match (schema.classify(kv.key()), ev.event_type()) {
        (KeyKind::Resource(key), EventType::Put) => {
            let etcd_key = String::from_utf8_lossy(kv.key()).into_owned();
            match schema::decode_object(&key, kv.value(), &etcd_key) {
                Ok(o) => send(events, SourceEvent::Applied(o)).await?,
                Err(e) => {
                    tracing::warn!(key = %etcd_key, error = %e, "object in etcd refused; the last good version stays")
                }
            }
        }
        (KeyKind::Resource(key), EventType::Delete) => {
            if key.kind == Kind::Node && key.name == node.name {
                return Err(anyhow::anyhow!("this node's Node object was deleted").into());
            }
            send(events, SourceEvent::Deleted(key)).await?
        }
        (KeyKind::Canary(n), EventType::Put) if n == node.name && !progress.synced => {
            progress.synced = true;
            send(events, SourceEvent::Synced).await?
        }
        (KeyKind::Config, _) => {
            tracing::warn!("the network config changed; it takes effect when the agent restarts")
        }
        _ => {}
    }
    Ok(())
}

/// Lists every object; returns the revision to watch from.
async fn list(
    client: &mut Client,
    schema: &Schema,
    progress: &mut Progress,
    events: &EventSender,
) -> Result<i64, End> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let resp = kv
        .get(schema.resources(), Some(GetOptions::new().with_prefix()))
        .await
        .context("listing objects")?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut by_kind: Vec<Vec<Object>> = Kind::ALL.iter().map(|_| Vec::new()).collect();
    let mut refused = 0usize;
    for kv in resp.kvs() {
        let KeyKind::Resource(key) = schema.classify(kv.key()) else {
            continue;
        };
        let etcd_key = String::from_utf8_lossy(kv.key()).into_owned();
        match schema::decode_object(&key, kv.value(), &etcd_key) {
            Ok(o) => by_kind[key.kind as usize].push(o),
            Err(e) => {
                refused += 1;
                tracing::warn!(key = %etcd_key, error = %e, "object in etcd refused");
            }
        }
    }
    tracing::info!(
        objects = resp.kvs().len() - refused,
        refused,
        revision,
        "listed etcd"
    );
    for (kind, objects) in Kind::ALL.iter().zip(by_kind) {
        send(
            events,
            SourceEvent::Listed {
                kind: *kind,
                objects,
            },
        )
        .await?;
    }
    progress.revision = Some(revision);
    Ok(revision + 1)
}

/// Reads and validates the network config.
pub async fn read_config(client: &mut Client, schema: &Schema) -> Result<NetworkConfig> {
    let resp = client
        .get(schema.config(), None)
        .await
        .context("reading the network config")?;
    let Some(kv) = resp.kvs().first() else {
        bail!(
            "no network config at {}: write one with `podwire etcd init`",
            schema.config()
        );
    };
    NetworkConfig::parse(kv.value()).map_err(|e| anyhow::anyhow!("{}: {e}", schema.config()))
}

/// The local address this host reaches `endpoint` from (no packet is sent).
fn source_address(endpoint: &str) -> Result<Ipv4Addr> {
    let hostport = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, r)| r)
        .trim_end_matches('/');
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(hostport)
        .with_context(|| format!("finding the address this node reaches {endpoint} from"))?;
    match sock.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        std::net::IpAddr::V6(_) => bail!("{endpoint} is reached over IPv6; pass --node-ip"),
    }
}

/// The `Node` object this node publishes.
fn own_node(
    me: &SubnetHolder,
    subnet: Ipv4Net,
    network: &NetworkConfig,
    lease_key: &str,
) -> Object {
    let backend = serde_json::to_value(network.backend)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let annotations = [
        (BACKEND_ANNOTATION.to_string(), backend),
        (PUBLIC_IP_ANNOTATION.to_string(), me.node_ip.to_string()),
        (SUBNET_LEASE_ANNOTATION.to_string(), lease_key.to_string()),
    ];
    Object::Node(Box::new(Node {
        metadata: ObjectMeta {
            name: Some(me.node.clone()),
            annotations: Some(annotations.into_iter().collect()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(subnet.to_string()),
            pod_cidrs: Some(vec![subnet.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: me.node_ip.to_string(),
            }]),
            ..Default::default()
        }),
    }))
}

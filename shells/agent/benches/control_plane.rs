//! One agent's control plane at Kubernetes' published scalability limits: 5,000
//! nodes, 150,000 pods (30 per node), 10,000 Services with an EndpointSlice each and
//! 1,000 NetworkPolicies, fed from a real etcd (Debian's, one member on loopback in
//! a network namespace the bench makes and deletes) and, as the baseline, from the
//! file datastore (the same objects as one JSON `List`).
//!
//! Measured: `sync_s`, from starting the source to its first complete state compiled
//! (the node view — routes, pod identities, services — and this node's policy:
//! what the agent installs); `rss_mib`, this process's resident memory after that
//! (the generator's objects are dropped before the source starts, but pages the
//! allocator keeps count); then a storm of 1,000 pod changes per second for 5 s written to etcd,
//! each stamped with its write time, applied the way the agent applies them (gather
//! for the 50 ms debounce, compile the whole state): `apply_p99_ms` is the 99th
//! percentile of write-to-compiled lag, `storm_events_per_s` the rate delivered.
//! Needs root (the namespace) and `etcd` on PATH. The last line is the summary.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use podwire_agent::control::node_policy::compile_for_node;
use podwire_agent::control::node_view::ClusterView;
use podwire_agent::source::etcd::schema::{Backend, NetworkConfig, Schema};
use podwire_agent::source::etcd::{self, writer, EtcdConfig, NodeIdentity};
use podwire_agent::source::{self as src, Kind, ObjectKey, ObjectStore, SourceEvent};
use serde_json::{json, Value};

const NODES: usize = 5_000;
const PODS_PER_NODE: usize = 30;
const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const POLICIES_PER_NS: usize = 10;
const STORM_PER_S: usize = 1_000;
const STORM_S: u64 = 5;
const ME: &str = "bench-node";
const STAMP: &str = "bench.podwire.io/written-at-us";
const URL: &str = "http://127.0.0.1:23790";

fn pod(i: usize, stamp: Option<u128>) -> Value {
    let node = i / PODS_PER_NODE;
    let ns = i % NAMESPACES;
    let mut meta = json!({"name": format!("pod-{i}"), "namespace": format!("ns-{ns}"),
        "labels": {"app": format!("app-{}", i % 20), "tier": (["web", "api", "db"][i % 3])}});
    if let Some(t) = stamp {
        meta["annotations"] = json!({ STAMP: t.to_string() });
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": format!("node-{node}"), "containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": pod_ip(i).to_string()}})
}

fn block(node: usize) -> (u8, u8) {
    ((128 + node / 256) as u8, (node % 256) as u8)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    let (a, b) = block(i / PODS_PER_NODE);
    Ipv4Addr::new(10, a, b, (i % PODS_PER_NODE + 2) as u8)
}

/// Every object of the cluster, in chunks (kind, namespace, name, JSON).
fn objects(mut out: impl FnMut(Vec<(ObjectKey, Value)>)) {
    let key = |kind, ns: &str, name: String| ObjectKey {
        kind,
        namespace: ns.to_string(),
        name,
    };
    let mut chunk = Vec::new();
    let mut push = |k: ObjectKey, v: Value, out: &mut dyn FnMut(Vec<(ObjectKey, Value)>)| {
        chunk.push((k, v));
        if chunk.len() == 1000 {
            out(std::mem::take(&mut chunk));
        }
    };
    for n in 0..NODES {
        let (a, b) = block(n);
        let v = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}")},
            "spec": {"podCIDR": format!("10.{a}.{b}.0/24")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("172.{}.{}.10", 16 + n / 250, n % 250)}]}});
        push(key(Kind::Node, "", format!("node-{n}")), v, &mut out);
    }
    for ns in 0..NAMESPACES {
        let v = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{ns}"),
            "labels": {"team": format!("team-{}", ns % 10)}}});
        push(key(Kind::Namespace, "", format!("ns-{ns}")), v, &mut out);
    }
    for i in 0..NODES * PODS_PER_NODE {
        let ns = format!("ns-{}", i % NAMESPACES);
        push(
            key(Kind::Pod, &ns, format!("pod-{i}")),
            pod(i, None),
            &mut out,
        );
    }
    for s in 0..SERVICES {
        let ns = format!("ns-{}", s % NAMESPACES);
        let name = format!("svc-{s}");
        let ip = format!("10.{}.{}.{}", 96 + s / 65536, (s / 256) % 256, s % 256);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": {"app": format!("app-{}", s % 20)},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
        push(key(Kind::Service, &ns, name.clone()), svc, &mut out);
        let endpoints: Vec<Value> = (0..3)
            .map(|k| {
                let p = (s * 7 + k * 50_021) % (NODES * PODS_PER_NODE);
                json!({"addresses": [pod_ip(p).to_string()], "conditions": {"ready": true},
                       "nodeName": format!("node-{}", p / PODS_PER_NODE)})
            })
            .collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abc"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
        push(
            key(Kind::EndpointSlice, &ns, format!("{name}-abc")),
            slice,
            &mut out,
        );
    }
    for ns in 0..NAMESPACES {
        let nsn = format!("ns-{ns}");
        for k in 0..POLICIES_PER_NS {
            let spec = if k == 0 {
                json!({"podSelector": {}, "policyTypes": ["Ingress"]})
            } else {
                json!({"podSelector": {"matchLabels": {"app": format!("app-{}", (ns + k) % 20)}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k)}},
                                           "podSelector": {"matchLabels": {"tier": "api"}}}],
                                 "ports": [{"port": 8080}]}]})
            };
            let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("pol-{k}"), "namespace": nsn}, "spec": spec});
            push(
                key(Kind::NetworkPolicy, &nsn, format!("pol-{k}")),
                v,
                &mut out,
            );
        }
    }
    if !chunk.is_empty() {
        out(chunk);
    }
}

fn total_objects() -> usize {
    NODES + NAMESPACES + NODES * PODS_PER_NODE + 2 * SERVICES + NAMESPACES * POLICIES_PER_NS
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Compiles the store as the agent does on a change: the view, then this node's
/// policy.
fn compile(store: &ObjectStore) {
    let view = ClusterView::build(&store.manifests(), ME).expect("the bench cluster is valid");
    compile_for_node(&view.state, &[]).expect("the bench policies compile");
}

/// Receives until the first complete state and compiles it; returns the store.
async fn first_sync(events: &mut tokio::sync::mpsc::Receiver<SourceEvent>) -> ObjectStore {
    let mut store = ObjectStore::default();
    loop {
        match events.recv().await.expect("the source stopped") {
            SourceEvent::Unavailable(why) => eprintln!("  source unavailable: {why}"),
            e => {
                store.apply(e);
            }
        }
        if store.synced() && events.is_empty() {
            let store = tokio::task::spawn_blocking(move || {
                compile(&store);
                store
            })
            .await
            .unwrap();
            return store;
        }
    }
}

async fn load(client: &mut Client, schema: &Schema) {
    let mut chunks = Vec::new();
    objects(|c| chunks.push(c));
    for c in chunks {
        for ops in c.chunks(128) {
            let ops: Vec<TxnOp> = ops
                .iter()
                .map(|(k, v)| TxnOp::put(schema.resource(k), serde_json::to_vec(v).unwrap(), None))
                .collect();
            client.txn(Txn::new().and_then(ops)).await.unwrap();
        }
    }
}

async fn etcd_run() -> (f64, f64, f64, f64) {
    let config = EtcdConfig {
        endpoints: vec![URL.into()],
        prefix: "/podwire/v1".into(),
        ..EtcdConfig::default()
    };
    let network = NetworkConfig {
        cluster_cidr: "10.0.0.0/8".parse().unwrap(),
        node_block_prefix: 24,
        backend: Backend::Vxlan,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = writer::init(&config, &network).await {
        assert!(Instant::now() < deadline, "etcd did not start: {e:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let schema = Schema::new(&config.prefix);
    let mut client = Client::connect([URL], None).await.unwrap();
    let t = Instant::now();
    load(&mut client, &schema).await;
    eprintln!(
        "  loaded {} objects into etcd in {:.1} s",
        total_objects(),
        t.elapsed().as_secs_f64()
    );

    let (tx, mut rx) = tokio::sync::mpsc::channel(src::EVENT_QUEUE);
    let t0 = Instant::now();
    let source = tokio::spawn(etcd::run(
        config,
        NodeIdentity {
            name: ME.into(),
            ip: Some(Ipv4Addr::new(172, 31, 255, 1)),
            liveness_ttl: Duration::from_secs(60),
        },
        tx,
    ));
    let mut store = first_sync(&mut rx).await;
    let sync_s = t0.elapsed().as_secs_f64();
    let rss = rss_mib();
    eprintln!("  etcd: synced and compiled in {sync_s:.2} s, RSS {rss:.0} MiB");

    // The storm: 1,000 pod changes per second, in 20 batches per second.
    let writer = tokio::spawn(async move {
        let per_batch = STORM_PER_S / 20;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut n = 0;
        for _ in 0..STORM_S * 20 {
            tick.tick().await;
            let ops: Vec<TxnOp> = (0..per_batch)
                .map(|k| {
                    let i = (n + k) * 7919 % (NODES * PODS_PER_NODE);
                    let key = ObjectKey {
                        kind: Kind::Pod,
                        namespace: format!("ns-{}", i % NAMESPACES),
                        name: format!("pod-{i}"),
                    };
                    let v = serde_json::to_vec(&pod(i, Some(now_us()))).unwrap();
                    TxnOp::put(schema.resource(&key), v, None::<PutOptions>)
                })
                .collect();
            n += per_batch;
            client.txn(Txn::new().and_then(ops)).await.unwrap();
        }
        n
    });
    let storm_start = Instant::now();
    let mut lags_ms = Vec::new();
    let expected = STORM_PER_S * STORM_S as usize;
    while lags_ms.len() < expected {
        let mut stamps = Vec::new();
        let take = |e: SourceEvent, stamps: &mut Vec<u128>, store: &mut ObjectStore| {
            if let SourceEvent::Applied(podwire_agent::control::manifests::Object::Pod(p)) = &e {
                if let Some(t) = p.metadata.annotations.as_ref().and_then(|a| a.get(STAMP)) {
                    stamps.push(t.parse().unwrap());
                }
            }
            store.apply(e);
        };
        let Some(e) = rx.recv().await else { break };
        take(e, &mut stamps, &mut store);
        let until = tokio::time::Instant::now() + src::DEBOUNCE;
        while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
            take(e, &mut stamps, &mut store);
        }
        store = tokio::task::spawn_blocking(move || {
            compile(&store);
            store
        })
        .await
        .unwrap();
        let done = now_us();
        lags_ms.extend(stamps.iter().map(|t| (done - t) as f64 / 1000.0));
    }
    let storm_s = storm_start.elapsed().as_secs_f64();
    let written = writer.await.unwrap();
    source.abort();
    lags_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = lags_ms[(lags_ms.len() * 99 / 100).min(lags_ms.len() - 1)];
    eprintln!("  storm: {written} pod changes applied in {storm_s:.1} s, p99 lag {p99:.0} ms");
    (sync_s, rss, lags_ms.len() as f64 / storm_s, p99)
}

async fn file_run(dir: &Path) -> f64 {
    let path = dir.join("cluster.json");
    let mut items = Vec::new();
    objects(|c| items.extend(c.into_iter().map(|(_, v)| v)));
    let mut me = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ME},
        "spec": {"podCIDR": "10.0.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.31.255.1"}]}});
    items.push(me.take());
    let mut f = std::fs::File::create(&path).unwrap();
    serde_json::to_writer(
        &mut f,
        &json!({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    .unwrap();
    f.flush().unwrap();
    drop(items);
    let (tx, mut rx) = tokio::sync::mpsc::channel(src::EVENT_QUEUE);
    let t0 = Instant::now();
    let source = tokio::spawn(src::file::run(path, Duration::from_millis(250), tx));
    first_sync(&mut rx).await;
    let s = t0.elapsed().as_secs_f64();
    source.abort();
    eprintln!("  file: synced and compiled in {s:.2} s");
    s
}

struct Guard {
    netns: String,
    dir: std::path::PathBuf,
    etcd: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("control_plane: needs root (a network namespace for etcd); skipped");
        return;
    }
    let id = std::process::id();
    let mut g = Guard {
        netns: format!("pwbench-cp-{id}"),
        dir: std::env::temp_dir().join(format!("podwire-bench-cp-{id}")),
        etcd: None,
    };
    std::fs::create_dir_all(&g.dir).unwrap();
    podwire_agent::lab::topology::add_netns(&g.netns).unwrap();
    g.etcd = Some(
        Command::new("ip")
            .args(["netns", "exec", &g.netns, "etcd", "--data-dir"])
            .arg(g.dir.join("etcd"))
            .args(["--listen-client-urls", URL, "--advertise-client-urls", URL])
            .args(["--listen-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-cluster", "default=http://127.0.0.1:23800"])
            .args(["--quota-backend-bytes", "8589934592", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd on PATH"),
    );
    eprintln!(
        "control_plane: {NODES} nodes, {} pods, {SERVICES} services + slices, {} policies",
        NODES * PODS_PER_NODE,
        NAMESPACES * POLICIES_PER_NS
    );
    let (sync_s, rss, rate, p99) = podwire_agent::lab::topology::in_netns(&g.netns, || {
        tokio::runtime::Runtime::new().unwrap().block_on(etcd_run())
    })
    .unwrap();
    let dir = g.dir.clone();
    let file_s = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(file_run(&dir));
    println!("{{\"bench\":\"control_plane\",\"source\":\"file\",\"sync_s\":{file_s:.2}}}");
    println!(
        "{{\"bench\":\"control_plane\",\"source\":\"etcd\",\"sync_s\":{sync_s:.2},\"rss_mib\":{rss:.0},\"storm_events_per_s\":{rate:.0},\"apply_p99_ms\":{p99:.0},\"file_sync_s\":{file_s:.2}}}"
    );
}

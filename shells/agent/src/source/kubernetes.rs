//! The Kubernetes datastore: watches on the API server, delivered as source events.
//!
//! Design note: one kube-runtime watcher per kind the agent follows (Namespace, Node,
//! Pod, Service, EndpointSlice, NetworkPolicy). Each lists, then watches from the
//! listed resourceVersion, and starts over with a fresh list when the server answers
//! 410 Gone (its history was compacted); after any error it retries with a capped
//! exponential backoff ([`WatchBackoff`]). The watchers' events map one to one onto
//! [`SourceEvent`]s — a (re)list (`Init`, `InitApply`…, `InitDone`) becomes one
//! `Listed` of its kind, so the agent's object store is the reflectors' store — and
//! the synced mark follows once every kind has finished its first list. A watch error
//! makes the source unavailable (the agent keeps forwarding on its last state); a
//! watch that resumes after an outage is silent until something changes, so recovery
//! is confirmed by a cheap list (one item) of each failing kind, once a second.
//! The agent publishes itself on its own Node ([`publish`]), from the same task, so
//! a Node re-created or stripped of the annotations is published again.

mod publish;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;

use super::{EventSender, Kind, ObjectKey, SourceEvent, WiredReceiver};
use crate::control::manifests::Object;

pub use publish::{annotations, NETWORK_UNAVAILABLE_REASON};

/// How often a failing kind is probed for recovery.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe or one Node status patch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kubernetes datastore's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A kubeconfig file; `None` uses the in-cluster configuration (the pod's
    /// service-account token and `KUBERNETES_SERVICE_HOST`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Node the agent publishes itself on).
    pub node: String,
    /// Also publish flannel's Node annotations, so flannel nodes reach this one.
    pub flannel_interop: bool,
}

/// A client for the configured API server; the error says which configuration
/// failed and why.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let named = |e: &dyn std::fmt::Display| format!("kubeconfig {}: {e}", path.display());
            let file = Kubeconfig::read_from(path).map_err(|e| named(&e))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| named(&e))?
        }
        None => Config::incluster()
            .map_err(|e| format!("in-cluster configuration (no --kubeconfig given): {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// Follows the API server and sends what it holds and what changes, until the agent
/// hangs up; publishes this node once `wired` says it is wired.
pub async fn run(settings: Settings, events: EventSender, mut wired: WiredReceiver) {
    let client = match connect(settings.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            // Dropping the sender after the reason ends the agent's wait for a sync.
            let _ = events.send(SourceEvent::Unavailable(e)).await;
            return;
        }
    };
    let mut watches = watch_all(&client);
    let mut feed = Feed::default();
    let mut publisher = publish::Publisher::new(&settings);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wired_open = true;
    loop {
        let out = tokio::select! {
            Some((kind, item)) = watches.next() => match item {
                Ok(event) => {
                    publisher.observe(kind, &event);
                    feed.on_event(kind, event)
                }
                Err(e) => feed.on_error(kind, e),
            },
            changed = wired.changed(), if wired_open => {
                match changed {
                    Ok(()) => publisher.set_wired(wired.borrow_and_update().clone()),
                    Err(_) => wired_open = false,
                }
                Vec::new()
            }
            _ = probe.tick() => {
                let mut out = Vec::new();
                for kind in feed.failing() {
                    if readable(&client, kind).await {
                        out.extend(feed.recovered(kind));
                    }
                }
                out
            }
        };
        for e in out {
            if events.send(e).await.is_err() {
                return;
            }
        }
        publisher.publish_if_needed(&nodes, REQUEST_TIMEOUT).await;
    }
}

/// A watch's output: its kind and the event or error.
type WatchItem = (Kind, Result<Event<Object>, String>);

/// One watcher per kind, merged.
fn watch_all(client: &Client) -> SelectAll<BoxStream<'static, WatchItem>> {
    futures::stream::select_all([
        watch(client, Kind::Namespace, |o: Namespace| {
            Object::Namespace(Box::new(o))
        }),
        watch(client, Kind::Node, |o: Node| Object::Node(Box::new(o))),
        watch(client, Kind::Pod, |o: Pod| Object::Pod(Box::new(o))),
        watch(client, Kind::Service, |o: Service| {
            Object::Service(Box::new(o))
        }),
        watch(client, Kind::EndpointSlice, |o: EndpointSlice| {
            Object::EndpointSlice(Box::new(o))
        }),
        watch(client, Kind::NetworkPolicy, |o: NetworkPolicy| {
            Object::NetworkPolicy(Box::new(o))
        }),
    ])
}

/// The watcher of one kind, cluster-wide, with backoff; objects lose their
/// `managedFields` (bookkeeping the agent never reads, often half an object's size).
fn watch<K>(client: &Client, kind: Kind, wrap: fn(K) -> Object) -> BoxStream<'static, WatchItem>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let strip = move |mut k: K| {
        k.meta_mut().managed_fields = None;
        wrap(k)
    };
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .backoff(WatchBackoff::default())
        .map(move |item| {
            let item = item.map_err(|e| e.to_string()).map(|e| match e {
                Event::Apply(k) => Event::Apply(strip(k)),
                Event::Delete(k) => Event::Delete(strip(k)),
                Event::Init => Event::Init,
                Event::InitApply(k) => Event::InitApply(strip(k)),
                Event::InitDone => Event::InitDone,
            });
            (kind, item)
        })
        .boxed()
}

/// Whether one object of `kind` can be listed now (the source is readable again).
async fn readable(client: &Client, kind: Kind) -> bool {
    async fn list_one<K>(client: &Client) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api = Api::<K>::all(client.clone());
        let one = ListParams::default().limit(1);
        let probe = api.list_metadata(&one);
        matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, probe).await,
            Ok(Ok(_))
        )
    }
    match kind {
        Kind::Namespace => list_one::<Namespace>(client).await,
        Kind::Node => list_one::<Node>(client).await,
        Kind::Pod => list_one::<Pod>(client).await,
        Kind::Service => list_one::<Service>(client).await,
        Kind::EndpointSlice => list_one::<EndpointSlice>(client).await,
        Kind::NetworkPolicy => list_one::<NetworkPolicy>(client).await,
    }
}

/// The watchers' retry delays: 250 ms doubling to 4 s, back to 250 ms after an
/// event. The cap bounds how long after an API server returns the watches resume.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::CAP);
        Some(now)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The watches' progress, turned into source events: lists in progress, the kinds
/// listed at least once, and the kinds whose watch is failing.
#[derive(Debug, Default)]
struct Feed {
    listing: BTreeMap<Kind, Vec<Object>>,
    listed: BTreeSet<Kind>,
    synced: bool,
    failing: BTreeMap<Kind, String>,
    reported: Option<String>,
}

impl Feed {
    /// The events for one watcher event of `kind` (which also shows it works).
    fn on_event(&mut self, kind: Kind, event: Event<Object>) -> Vec<SourceEvent> {
        let mut out = self.recovered(kind);
        match event {
            Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            Event::InitApply(o) => self.listing.entry(kind).or_default().push(o),
            Event::InitDone => {
                let objects = self.listing.remove(&kind).unwrap_or_default();
                out.push(SourceEvent::Listed { kind, objects });
                self.listed.insert(kind);
                if !self.synced && self.listed.len() == Kind::ALL.len() {
                    self.synced = true;
                    out.push(SourceEvent::Synced);
                }
            }
            Event::Apply(o) => out.push(SourceEvent::Applied(o)),
            Event::Delete(o) => out.extend(ObjectKey::of(&o).map(SourceEvent::Deleted)),
        }
        out
    }

    /// The events for a failed watch of `kind`.
    fn on_error(&mut self, kind: Kind, error: String) -> Vec<SourceEvent> {
        tracing::debug!(%kind, %error, "watch failed");
        self.failing.insert(kind, error);
        self.report()
    }

    /// The events for `kind` working again.
    fn recovered(&mut self, kind: Kind) -> Vec<SourceEvent> {
        if self.failing.remove(&kind).is_none() {
            return Vec::new();
        }
        self.report()
    }

    /// The kinds whose watch is failing.
    fn failing(&self) -> Vec<Kind> {
        self.failing.keys().copied().collect()
    }

    /// An availability event if what is failing changed since the last one.
    fn report(&mut self) -> Vec<SourceEvent> {
        let now = self.failing.iter().next().map(|(kind, why)| {
            let more = self.failing.len() - 1;
            let also = if more > 0 {
                format!(" (and {more} more kinds)")
            } else {
                String::new()
            };
            format!("Kubernetes API: {kind} watch: {why}{also}")
        });
        if now == self.reported {
            return Vec::new();
        }
        let was_failing = std::mem::replace(&mut self.reported, now.clone()).is_some();
        match now {
            Some(why) => vec![SourceEvent::Unavailable(why)],
            None if was_failing => vec![SourceEvent::Available],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str) -> Object {
        Object::Pod(Box::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn names(e: &SourceEvent) -> String {
        match e {
            SourceEvent::Listed { kind, objects } => {
                let keys: Vec<_> = objects
                    .iter()
                    .filter_map(ObjectKey::of)
                    .map(|k| k.name)
                    .collect();
                format!("Listed {kind} {keys:?}")
            }
            SourceEvent::Applied(o) => format!("Applied {}", ObjectKey::of(o).unwrap()),
            SourceEvent::Deleted(k) => format!("Deleted {k}"),
            SourceEvent::Synced => "Synced".into(),
            SourceEvent::Unavailable(why) => format!("Unavailable {why}"),
            SourceEvent::Available => "Available".into(),
        }
    }

    fn feed(f: &mut Feed, kind: Kind, e: Event<Object>) -> Vec<String> {
        f.on_event(kind, e).iter().map(names).collect()
    }

    #[test]
    fn a_list_is_delivered_whole_and_synced_follows_the_last_kind() {
        let mut f = Feed::default();
        for kind in &Kind::ALL[..5] {
            assert!(feed(&mut f, *kind, Event::Init).is_empty());
            assert_eq!(
                feed(&mut f, *kind, Event::InitDone),
                [format!("Listed {kind} []")]
            );
        }
        feed(&mut f, Kind::NetworkPolicy, Event::Init);
        assert_eq!(
            feed(&mut f, Kind::NetworkPolicy, Event::InitDone),
            ["Listed NetworkPolicy []", "Synced"]
        );
        // A relist after 410 Gone replaces the kind, and is not a second sync.
        feed(&mut f, Kind::Pod, Event::Init);
        assert!(feed(&mut f, Kind::Pod, Event::InitApply(pod("a"))).is_empty());
        feed(&mut f, Kind::Pod, Event::InitApply(pod("b")));
        assert_eq!(
            feed(&mut f, Kind::Pod, Event::InitDone),
            [r#"Listed Pod ["a", "b"]"#]
        );
        assert_eq!(
            feed(&mut f, Kind::Pod, Event::Apply(pod("c"))),
            ["Applied Pod/default/c"]
        );
        assert_eq!(
            feed(&mut f, Kind::Pod, Event::Delete(pod("a"))),
            ["Deleted Pod/default/a"]
        );
    }

    #[test]
    fn errors_make_it_unavailable_once_and_recovery_of_every_kind_available() {
        let mut f = Feed::default();
        let e = |f: &mut Feed, k, why: &str| -> Vec<String> {
            f.on_error(k, why.into()).iter().map(names).collect()
        };
        assert_eq!(
            e(&mut f, Kind::Pod, "connection refused"),
            ["Unavailable Kubernetes API: Pod watch: connection refused"]
        );
        assert!(e(&mut f, Kind::Pod, "connection refused").is_empty());
        assert_eq!(
            e(&mut f, Kind::Namespace, "connection refused"),
            ["Unavailable Kubernetes API: Namespace watch: connection refused (and 1 more kinds)"]
        );
        assert_eq!(f.failing(), [Kind::Namespace, Kind::Pod]);
        // An event of one kind shows that kind works; the other still fails.
        assert_eq!(
            feed(&mut f, Kind::Namespace, Event::Init),
            ["Unavailable Kubernetes API: Pod watch: connection refused"]
        );
        assert_eq!(
            f.recovered(Kind::Pod).iter().map(names).collect::<Vec<_>>(),
            ["Available"]
        );
        assert!(f.recovered(Kind::Pod).is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = WatchBackoff::default();
        let first: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}

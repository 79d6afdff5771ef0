//! Writing a cluster's objects into the etcd datastore: `podwire apply`, `podwire
//! delete` and `podwire etcd init`.
//!
//! Design note: without an API server, these commands are the admission step. A
//! file is parsed with the same loader as the file datastore (an object listed twice
//! is refused), merged with what etcd holds, and the merged state must pass the same
//! validation the agents apply (pods, namespaces, NetworkPolicies as the API server
//! would check them) before anything is written; the writes then go in one
//! transaction (up to etcd's 128 operations; bigger changes in chunks), guarded by
//! the revision that was validated, so a change is never written on top of a state
//! it was not checked against.
//! `Node` objects are refused: in this datastore each agent writes its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::connection::Connector;
use super::schema::{self, KeyKind, NetworkConfig, Schema};
use super::EtcdConfig;
use crate::control::cluster::ClusterState;
use crate::control::manifests::{Manifests, Object};
use crate::source::{Kind, ObjectKey};

/// The most operations one transaction may carry (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

async fn connect(config: &EtcdConfig) -> Result<Client> {
    config.validate()?;
    let mut c = Connector::new(config.clone());
    let mut last = None;
    for _ in 0..config.endpoints.len() {
        match c.try_next().await {
            Ok((_, client)) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one endpoint was tried"))
}

/// Writes the network config, or checks that the one stored is the same.
pub async fn init(config: &EtcdConfig, network: &NetworkConfig) -> Result<&'static str> {
    network.validate().map_err(anyhow::Error::msg)?;
    let schema = Schema::new(&config.prefix);
    let mut client = connect(config).await?;
    let key = schema.config();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), serde_json::to_vec(network)?, None)]);
    if client.txn(txn).await?.succeeded() {
        return Ok("created");
    }
    let stored = super::read_config(&mut client, &schema).await?;
    if stored != *network {
        bail!(
            "{key} already holds {}; the network of a running cluster cannot be changed",
            serde_json::to_string(&stored)?
        );
    }
    Ok("unchanged")
}

/// Keys `objects`, refusing `Node` objects and kinds podwire does not store
/// (`origin` names where they came from in errors).
fn keyed(objects: Vec<Object>, origin: &str) -> Result<Vec<(ObjectKey, Object)>> {
    let mut out = Vec::new();
    for o in objects {
        let Some(key) = ObjectKey::of(&o) else {
            let kind = match &o {
                Object::Other { kind } => kind.clone(),
                _ => String::new(),
            };
            bail!(
                "{origin}: kind {kind} is not stored by podwire (Namespace, Pod, Service, EndpointSlice, NetworkPolicy)"
            );
        };
        if key.kind == Kind::Node {
            bail!("{origin}: {key}: Node objects are written by each node's agent in the etcd datastore");
        }
        if key.name.is_empty() {
            bail!("{origin}: a {}: metadata.name: Required value", key.kind);
        }
        out.push((key, o));
    }
    Ok(out)
}

/// Loads a manifests file or folder for `apply` or `delete`.
fn load(path: &Path) -> Result<Vec<(ObjectKey, Object)>> {
    let objects = crate::source::file::load_objects(path).map_err(anyhow::Error::msg)?;
    keyed(objects, &path.display().to_string())
}

/// Everything etcd holds under the prefix's resources, and the revision read.
async fn current(client: &mut Client, schema: &Schema) -> Result<(Vec<(ObjectKey, Object)>, i64)> {
    let resp = client
        .kv_client()
        .max_decoding_message_size(1 << 30)
        .get(schema.resources(), Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the objects in etcd")?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        if let KeyKind::Resource(key) = schema.classify(kv.key()) {
            let etcd_key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Ok(o) = schema::decode_object(&key, kv.value(), &etcd_key) {
                out.push((key, o));
            }
        }
    }
    Ok((out, resp.header().map_or(0, |h| h.revision())))
}

/// Validates the state that results from the change as the agents will.
fn validate(objects: impl IntoIterator<Item = Object>) -> Result<()> {
    let mut m = Manifests::default();
    m.extend(objects);
    let state = ClusterState::from_manifests(&m).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::control::policy_compiler::validate(&state)
        .map_err(|e| anyhow::anyhow!("NetworkPolicy/{}: {e}", e.name))?;
    Ok(())
}

/// Runs `ops` in transactions guarded by `revision`: no object but the agents' own
/// `Node`s (which agents rewrite whenever they reconnect, and which the checks do
/// not read) changed since it was read. Changes bigger than one transaction are
/// written in chunks of [`MAX_TXN_OPS`]; only the first is guarded, so a conflict
/// writes nothing, but a connection lost between chunks leaves the first ones
/// written (apply the file again).
async fn commit(
    client: &mut Client,
    schema: &Schema,
    revision: i64,
    ops: Vec<TxnOp>,
) -> Result<()> {
    let mut first = true;
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let mut txn = Txn::new();
        if first {
            let unchanged: Vec<Compare> = Kind::ALL
                .iter()
                .filter(|k| **k != Kind::Node)
                .map(|k| {
                    Compare::mod_revision(schema.kind_prefix(*k), CompareOp::Less, revision + 1)
                        .with_prefix()
                })
                .collect();
            txn = txn.when(unchanged);
        }
        if !client.txn(txn.and_then(chunk.to_vec())).await?.succeeded() {
            bail!("the objects in etcd changed while this file was checked; nothing was written, try again");
        }
        first = false;
    }
    Ok(())
}

/// What `apply` or `delete` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The object.
    pub key: ObjectKey,
    /// `created`, `configured`, `unchanged`, `deleted` or `not found`.
    pub action: &'static str,
}

/// The change a command makes.
enum Change {
    /// Create or replace these objects.
    Apply(Vec<(ObjectKey, Object)>),
    /// Delete these objects.
    Delete(Vec<ObjectKey>),
    /// Make these exactly the objects etcd holds (every `Node` stays).
    Replace(Vec<(ObjectKey, Object)>),
}

/// Validates `change` against what etcd holds and commits it in one guarded write.
async fn write(config: &EtcdConfig, origin: &str, change: Change) -> Result<Vec<Outcome>> {
    let schema = Schema::new(&config.prefix);
    let mut client = connect(config).await?;
    let (existing, revision) = current(&mut client, &schema).await?;
    let mut merged: BTreeMap<ObjectKey, Object> = existing.into_iter().collect();
    let mut ops = Vec::new();
    let mut out = Vec::new();
    let mut delete = |merged: &mut BTreeMap<ObjectKey, Object>, key: ObjectKey| {
        let action = if merged.remove(&key).is_some() {
            ops.push(TxnOp::delete(schema.resource(&key), None));
            "deleted"
        } else {
            "not found"
        };
        Outcome { key, action }
    };
    let puts = match change {
        Change::Apply(objects) => objects,
        Change::Delete(keys) => {
            for key in keys {
                out.push(delete(&mut merged, key));
            }
            vec![]
        }
        Change::Replace(objects) => {
            let keep: BTreeSet<&ObjectKey> = objects.iter().map(|(k, _)| k).collect();
            let gone: Vec<ObjectKey> = merged
                .keys()
                .filter(|k| k.kind != Kind::Node && !keep.contains(k))
                .cloned()
                .collect();
            for key in gone {
                out.push(delete(&mut merged, key));
            }
            objects
        }
    };
    for (key, object) in puts {
        let bytes = schema::encode_object(&object).context("encoding an object")?;
        let action = match merged.get(&key) {
            None => "created",
            Some(old) if schema::encode_object(old).as_ref() == Some(&bytes) => "unchanged",
            Some(_) => "configured",
        };
        if action != "unchanged" {
            ops.push(TxnOp::put(schema.resource(&key), bytes, None));
        }
        merged.insert(key.clone(), object);
        out.push(Outcome { key, action });
    }
    validate(merged.into_values()).with_context(|| format!("{origin}: refused"))?;
    commit(&mut client, &schema, revision, ops).await?;
    Ok(out)
}

/// `podwire apply -f`: creates or replaces the file's objects.
pub async fn apply(config: &EtcdConfig, path: &Path) -> Result<Vec<Outcome>> {
    let objects = load(path)?;
    write(config, &path.display().to_string(), Change::Apply(objects)).await
}

/// `podwire delete -f`: deletes the file's objects.
pub async fn delete(config: &EtcdConfig, path: &Path) -> Result<Vec<Outcome>> {
    let keys = load(path)?.into_iter().map(|(k, _)| k).collect();
    write(config, &path.display().to_string(), Change::Delete(keys)).await
}

/// Makes `objects` exactly the objects etcd holds, besides the nodes' own `Node`
/// objects (the lab writes its whole cluster state this way).
pub async fn replace(
    config: &EtcdConfig,
    origin: &str,
    objects: Vec<Object>,
) -> Result<Vec<Outcome>> {
    let objects = keyed(objects, origin)?;
    write(config, origin, Change::Replace(objects)).await
}

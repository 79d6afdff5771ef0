//! The objects a source has delivered, by kind, namespace and name.
//!
//! Design note: sources speak in lists, applies and deletes; the compile step wants
//! a [`Manifests`] value. The store is the one place between them: it applies
//! [`SourceEvent`]s idempotently (a re-applied object replaces itself, a delete of an
//! unknown key is a no-op, a relist of a kind replaces exactly that kind) and hands
//! out the objects in key order, so the same cluster state always compiles to the
//! same view whichever source and event order delivered it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Kind, SourceEvent};
use crate::control::manifests::{Manifests, Object};

/// Identifies one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a typed object; `None` for kinds the agent does not follow.
    pub fn of(object: &Object) -> Option<ObjectKey> {
        let (kind, meta) = match object {
            Object::Namespace(o) => (Kind::Namespace, &o.metadata),
            Object::Node(o) => (Kind::Node, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
            Object::NetworkPolicy(o) => (Kind::NetworkPolicy, &o.metadata),
            Object::Other { .. } => return None,
        };
        Some(ObjectKey::new(kind, meta))
    }

    /// The key of an object of `kind` with metadata `meta`.
    pub fn new(kind: Kind, meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: if kind.namespaced() {
                meta.namespace.clone().unwrap_or_else(|| "default".into())
            } else {
                String::new()
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The objects delivered so far.
#[derive(Debug, Default)]
pub struct ObjectStore {
    objects: BTreeMap<ObjectKey, Object>,
    listed: [bool; Kind::ALL.len()],
    synced: bool,
}

impl ObjectStore {
    /// Applies one event; returns whether the objects changed.
    pub fn apply(&mut self, event: SourceEvent) -> bool {
        match event {
            SourceEvent::Listed { kind, objects } => {
                self.listed[kind as usize] = true;
                let fresh: BTreeMap<ObjectKey, Object> = objects
                    .into_iter()
                    .filter_map(|o| ObjectKey::of(&o).filter(|k| k.kind == kind).map(|k| (k, o)))
                    .collect();
                self.objects.retain(|k, _| k.kind != kind);
                self.objects.extend(fresh);
                true
            }
            SourceEvent::Applied(object) => match ObjectKey::of(&object) {
                Some(key) => {
                    self.objects.insert(key, object);
                    true
                }
                None => false,
            },
            SourceEvent::Deleted(key) => self.objects.remove(&key).is_some(),
            SourceEvent::Synced => {
                let first = !self.synced;
                self.synced = true;
                first
            }
            SourceEvent::Unavailable(_) | SourceEvent::Available => false,
        }
    }

    /// Whether the source has said it is synced and every kind was listed.
    pub fn synced(&self) -> bool {
        self.synced && self.listed.iter().all(|l| *l)
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects, in key order, as the compile step takes them.
    pub fn manifests(&self) -> Manifests {
        let mut m = Manifests::default();
        m.extend(self.objects.values().cloned());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    fn pod(ns: &str, name: &str) -> Object {
        Object::Pod(Box::new(Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn namespace(name: &str) -> Object {
        Object::Namespace(Box::new(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn list(kind: Kind, objects: Vec<Object>) -> SourceEvent {
        SourceEvent::Listed { kind, objects }
    }

    #[test]
    fn a_relist_replaces_exactly_its_kind() {
        let mut s = ObjectStore::default();
        s.apply(list(Kind::Namespace, vec![namespace("a")]));
        s.apply(list(Kind::Pod, vec![pod("a", "p1"), pod("a", "p2")]));
        s.apply(list(Kind::Pod, vec![pod("a", "p3")]));
        let m = s.manifests();
        assert_eq!(m.namespaces.len(), 1);
        let names: Vec<_> = m
            .pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["p3"]);
    }

    #[test]
    fn applies_replace_and_deletes_are_idempotent() {
        let mut s = ObjectStore::default();
        assert!(s.apply(SourceEvent::Applied(pod("a", "p1"))));
        assert!(s.apply(SourceEvent::Applied(pod("a", "p1"))));
        assert_eq!(s.len(), 1);
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: "a".into(),
            name: "p1".into(),
        };
        assert!(s.apply(SourceEvent::Deleted(key.clone())));
        assert!(!s.apply(SourceEvent::Deleted(key)));
        assert!(s.is_empty());
        assert!(!s.apply(SourceEvent::Applied(Object::Other {
            kind: "ConfigMap".into()
        })));
    }

    #[test]
    fn synced_needs_the_mark_and_every_kind_listed() {
        let mut s = ObjectStore::default();
        for k in &Kind::ALL[..5] {
            s.apply(list(*k, vec![]));
        }
        assert!(s.apply(SourceEvent::Synced));
        assert!(!s.synced(), "NetworkPolicy was never listed");
        s.apply(list(Kind::NetworkPolicy, vec![]));
        assert!(s.synced());
        assert!(!s.apply(SourceEvent::Synced), "only the first mark is news");
    }

    #[test]
    fn order_of_delivery_does_not_change_the_manifests() {
        let mut a = ObjectStore::default();
        let mut b = ObjectStore::default();
        for name in ["z", "m", "a"] {
            a.apply(SourceEvent::Applied(pod("ns", name)));
        }
        b.apply(list(
            Kind::Pod,
            vec![pod("ns", "a"), pod("ns", "z"), pod("ns", "m")],
        ));
        let names = |s: &ObjectStore| -> Vec<String> {
            s.manifests()
                .pods
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names(&a), names(&b));
    }
}

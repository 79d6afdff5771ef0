//! The file datastore: a manifests file or folder, checked for changes.
//!
//! Design note: the manifests are polled (a content fingerprint once per interval),
//! which works the same for a file, a folder and a ConfigMap's symlink swaps, and
//! needs no inotify semantics across bind mounts. A change is loaded whole and
//! delivered as a relisting of every kind, so the agent's store ends up holding
//! exactly what the files say. A change that does not load (a syntax error, a field
//! of the wrong shape, an object listed twice) is reported as unavailable with the
//! file and object named, and nothing is delivered: the last good state keeps
//! running. The first successful load is followed by the synced mark.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{EventSender, Kind, ObjectKey, SourceEvent};
use crate::control::manifests::{self, Object};

/// A fingerprint of the manifests: file names and contents.
fn fingerprint(path: &Path) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let files = manifests::manifest_files(path).map_err(|e| e.to_string())?;
    for f in files {
        out.extend_from_slice(f.display().to_string().as_bytes());
        out.push(0);
        out.extend_from_slice(&std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?);
        out.push(0);
    }
    Ok(out)
}

/// Loads every object under `path`, refusing an object listed twice.
pub fn load_objects(path: &Path) -> Result<Vec<Object>, String> {
    let mut objects = Vec::new();
    let mut seen = BTreeSet::new();
    for file in manifests::manifest_files(path).map_err(|e| e.to_string())? {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for object in manifests::parse(&text, &file).map_err(|e| e.to_string())? {
            if let Some(key) = ObjectKey::of(&object) {
                if !seen.insert(key.clone()) {
                    return Err(format!("{}: {key}: listed twice", file.display()));
                }
            }
            objects.push(object);
        }
    }
    Ok(objects)
}

/// The events that replace everything of every kind with `objects`.
pub fn relist_all(objects: Vec<Object>) -> Vec<SourceEvent> {
    let mut by_kind: Vec<(Kind, Vec<Object>)> = Kind::ALL.iter().map(|k| (*k, vec![])).collect();
    for o in objects {
        if let Some(key) = ObjectKey::of(&o) {
            by_kind[key.kind as usize].1.push(o);
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, objects)| SourceEvent::Listed { kind, objects })
        .collect()
}

/// Watches `path` every `interval` and sends what changes, until the agent hangs up.
pub async fn run(path: PathBuf, interval: Duration, events: EventSender) {
    let mut last: Option<Vec<u8>> = None;
    let mut failing: Option<String> = None;
    let mut synced = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = path.clone();
        let fp = match tokio::task::spawn_blocking(move || fingerprint(&p)).await {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) => {
                if failing.as_deref() != Some(&e) {
                    failing = Some(e.clone());
                    if events.send(SourceEvent::Unavailable(e)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(_) => continue,
        };
        if last.as_ref() == Some(&fp) {
            continue;
        }
        last = Some(fp);
        let p = path.clone();
        let objects = match tokio::task::spawn_blocking(move || load_objects(&p)).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        let mut out = match objects {
            Ok(objects) => relist_all(objects),
            Err(e) => {
                failing = Some(e.clone());
                if events.send(SourceEvent::Unavailable(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if failing.take().is_some() {
            out.insert(0, SourceEvent::Available);
        }
        if !synced {
            synced = true;
            out.push(SourceEvent::Synced);
        }
        for e in out {
            if events.send(e).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectStore;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const NODE: &str =
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\n";

    #[test]
    fn an_object_listed_twice_is_refused_with_its_name() {
        let dir = tempdir();
        write(&dir, "a.yaml", NODE);
        write(&dir, "b.yaml", NODE);
        let e = load_objects(&dir).unwrap_err();
        assert!(e.contains("Node/n1: listed twice"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn changes_are_relisted_and_a_bad_file_keeps_the_last_good_state() {
        let dir = tempdir();
        write(&dir, "a.yaml", NODE);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(run(dir.clone(), Duration::from_millis(10), tx));
        let mut store = ObjectStore::default();
        while !store.synced() {
            store.apply(rx.recv().await.unwrap());
        }
        assert_eq!(store.manifests().nodes.len(), 1);
        write(&dir, "a.yaml", "kind: Node\nmetadata: {name: [x]}\n:");
        match rx.recv().await.unwrap() {
            SourceEvent::Unavailable(e) => assert!(e.contains("a.yaml"), "{e}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        write(&dir, "a.yaml", &NODE.replace("n1", "n2"));
        let mut came_back = false;
        loop {
            match rx.recv().await.unwrap() {
                SourceEvent::Available => came_back = true,
                e @ SourceEvent::Listed {
                    kind: Kind::NetworkPolicy,
                    ..
                } => {
                    store.apply(e);
                    break;
                }
                e => {
                    store.apply(e);
                }
            }
        }
        assert!(came_back);
        let names: Vec<_> = store
            .manifests()
            .nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["n2"]);
        task.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("podwire-file-source-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

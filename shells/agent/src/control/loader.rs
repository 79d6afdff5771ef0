//! A minimal Kubernetes manifests loader (to be replaced by the shared
//! `control::manifests` loader when it lands).
//!
//! Design note: the agent only needs typed Node, Namespace and Pod objects from a
//! manifests file or folder to run; this reads every document of every `.yaml`,
//! `.yml` and `.json` file (YAML is a superset of JSON, so one parser serves both)
//! with serde-saphyr, dispatches on `kind` into k8s-openapi types, and names the
//! object and the field of the first error. Kinds it does not use are counted and
//! skipped.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::Value;

use super::cluster::{ClusterError, ClusterObjects};

/// The manifest files under `path` (a file, or every manifest file in a folder, by
/// name), and their concatenated text (for change detection).
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ClusterError> {
    let meta = std::fs::metadata(path).map_err(|e| ClusterError::io(path, e))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ClusterError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every object under `path`.
pub fn load(path: &Path) -> Result<ClusterObjects, ClusterError> {
    let mut objects = ClusterObjects::default();
    for file in manifest_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|e| ClusterError::io(&file, e))?;
        load_text(&file.display().to_string(), &text, &mut objects)?;
    }
    Ok(objects)
}

/// Adds the objects of one file's text.
pub fn load_text(
    origin: &str,
    text: &str,
    objects: &mut ClusterObjects,
) -> Result<(), ClusterError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ClusterError {
        object: origin.to_string(),
        field: String::new(),
        message: format!("not valid YAML/JSON: {e}"),
    })?;
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        add_object(&format!("{origin} document {}", i + 1), doc, objects)?;
    }
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(object: String, doc: Value) -> Result<T, ClusterError> {
    serde_path_to_error::deserialize(doc).map_err(|e| ClusterError {
        object,
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

fn add_object(origin: &str, doc: Value, objects: &mut ClusterObjects) -> Result<(), ClusterError> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| ClusterError {
            object: origin.to_string(),
            field: "kind".into(),
            message: "missing".into(),
        })?
        .to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let object = format!("{kind}/{name} ({origin})");
    match kind.as_str() {
        "List" => {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                add_object(&format!("{origin} item {}", i + 1), item, objects)?;
            }
        }
        "Node" => objects.nodes.push(typed::<Node>(object, doc)?),
        "Pod" => objects.pods.push(typed::<Pod>(object, doc)?),
        "Namespace" => objects.namespaces.push(typed::<Namespace>(object, doc)?),
        _ => objects.other += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_multi_document_yaml_and_json() {
        let mut o = ClusterObjects::default();
        load_text(
            "a.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            &mut o,
        )
        .unwrap();
        load_text(
            "b.json",
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"prod"}}]}"#,
            &mut o,
        )
        .unwrap();
        assert_eq!(
            (o.nodes.len(), o.pods.len(), o.namespaces.len(), o.other),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn a_bad_field_is_named_with_its_object() {
        let mut o = ClusterObjects::default();
        let e = load_text(
            "c.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: [1, 2]}\n",
            &mut o,
        )
        .unwrap_err();
        assert!(e.object.starts_with("Node/n1"), "{e}");
        assert_eq!(e.field, "spec.podCIDR");
        let e = load_text("d.yaml", "metadata: {name: x}\n", &mut o).unwrap_err();
        assert_eq!(e.field, "kind");
        assert!(load_text("e.yaml", "a: [unclosed", &mut o).is_err());
    }
}

//! Loading Kubernetes-shaped manifests: files or folders of multi-document YAML or
//! JSON, into typed `k8s-openapi` objects.
//!
//! Design note: every document is first read as a generic value (YAML through
//! serde-saphyr, JSON through serde_json) so that its `kind` and `metadata` are known
//! before it is typed; the typed deserialisation then runs through
//! `serde_path_to_error`, so a bad document is reported as "file: Kind ns/name:
//! field.path: problem" — the same shape as the API server's errors. Kinds the agent
//! does not use yet are counted and skipped, so a whole cluster dump can be loaded.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What went wrong while loading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder holds no `.yaml`, `.yml` or `.json` file.
    #[error("{path}: no .yaml, .yml or .json files in this folder")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// A file is not valid YAML / JSON.
    #[error("{path}: not valid {format}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A document is not a Kubernetes object at all.
    #[error("{path}: document {index}: {message}")]
    Document {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document in the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// An object has a field of the wrong shape.
    #[error("{path}: {kind} {name}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The object's kind.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
        /// Path of the bad field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// One typed object.
#[derive(Debug, Clone)]
pub enum Object {
    /// A `v1` Namespace.
    Namespace(Box<Namespace>),
    /// A `v1` Pod.
    Pod(Box<Pod>),
    /// A `v1` Node.
    Node(Box<Node>),
    /// A `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A `v1` Service.
    Service(Box<Service>),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A kind the agent does not use (yet).
    Other {
        /// Its kind.
        kind: String,
    },
}

/// The objects of a set of manifests, by kind, in file order.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Number of objects of other kinds that were skipped.
    pub skipped: usize,
}

impl Manifests {
    /// Adds objects.
    pub fn extend(&mut self, objects: impl IntoIterator<Item = Object>) {
        for o in objects {
            match o {
                Object::Namespace(n) => self.namespaces.push(*n),
                Object::Pod(p) => self.pods.push(*p),
                Object::Node(n) => self.nodes.push(*n),
                Object::NetworkPolicy(p) => self.network_policies.push(*p),
                Object::Service(x) => self.services.push(*x),
                Object::EndpointSlice(x) => self.endpoint_slices.push(*x),
                Object::Other { .. } => self.skipped += 1,
            }
        }
    }
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files under `path`: the file itself, or every `.yaml`/`.yml`/`.json`
/// file of a folder and its subfolders, sorted by path.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            match manifest_files(&p) {
                Ok(more) => files.extend(more),
                Err(ManifestError::EmptyFolder { .. }) => {}
                Err(e) => return Err(e),
            }
        } else if is_manifest_file(&p) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(ManifestError::EmptyFolder {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Loads every manifest under each of `paths` (files or folders).
pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut out = Manifests::default();
    for path in paths {
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
                path: file.clone(),
                source,
            })?;
            out.extend(parse(&text, &file)?);
        }
    }
    Ok(out)
}

/// Parses the documents of one file (JSON if `path` ends in `.json`, else YAML).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Object>, ManifestError> {
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let docs: Vec<Value> = if json {
        let v: Value = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
            path: path.to_path_buf(),
            format: "JSON",
            message: e.to_string(),
        })?;
        vec![v]
    } else {
        // YAML 1.2 core booleans only: `y`, `n`, `on`, `off` (namespace `y`!) stay strings.
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
            ManifestError::Syntax {
                path: path.to_path_buf(),
                format: "YAML",
                message: e.to_string(),
            }
        })?
    };
    let mut objects = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        typed(doc, path, i + 1, &mut objects)?;
    }
    Ok(objects)
}

fn object_name(v: &Value) -> String {
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn typed(
    doc: Value,
    path: &Path,
    index: usize,
    out: &mut Vec<Object>,
) -> Result<(), ManifestError> {
    if doc.is_null() {
        return Ok(());
    }
    let document_error = |message: String| ManifestError::Document {
        path: path.to_path_buf(),
        index,
        message,
    };
    if !doc.is_object() {
        return Err(document_error(
            "not a Kubernetes object (expected a mapping with apiVersion and kind)".into(),
        ));
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| document_error(format!("{}: missing `kind`", object_name(&doc))))?
        .to_string();
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let name = object_name(&doc);
    let field_error = |field: String, message: String| ManifestError::Field {
        path: path.to_path_buf(),
        kind: kind.clone(),
        name: name.clone(),
        field,
        message,
    };
    fn de<T: DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let p = e.path().to_string();
            let field = if p == "." { "(object)".to_string() } else { p };
            (field, e.into_inner().to_string())
        })
    }
    let check_version = |want: &str| {
        if api_version == want {
            Ok(())
        } else {
            Err(field_error(
                "apiVersion".into(),
                format!("Unsupported value: \"{api_version}\": supported values: \"{want}\""),
            ))
        }
    };
    match kind.as_str() {
        "List" => {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                typed(item, path, index, out)?;
            }
        }
        "Namespace" => {
            check_version("v1")?;
            let ns = de::<Namespace>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::Namespace(Box::new(ns)));
        }
        "Pod" => {
            check_version("v1")?;
            let pod = de::<Pod>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::Pod(Box::new(pod)));
        }
        "Node" => {
            check_version("v1")?;
            let node = de::<Node>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::Node(Box::new(node)));
        }
        "NetworkPolicy" => {
            check_version("networking.k8s.io/v1")?;
            let p = de::<NetworkPolicy>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::NetworkPolicy(Box::new(p)));
        }
        "Service" => {
            check_version("v1")?;
            let x = de::<Service>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::Service(Box::new(x)));
        }
        "EndpointSlice" => {
            check_version("discovery.k8s.io/v1")?;
            let x = de::<EndpointSlice>(doc).map_err(|(f, m)| field_error(f, m))?;
            out.push(Object::EndpointSlice(Box::new(x)));
        }
        _ => out.push(Object::Other { kind }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: y
  labels: {team: blue, enabled: on}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    image: i
    ports: [{name: http, containerPort: 80}]
status: {podIP: 10.244.1.2}
---
# a comment-only document is skipped
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}, {port: 81, endPort: 90, protocol: UDP}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: s, namespace: x}
"#;

    #[test]
    fn multi_document_yaml_is_typed() {
        let mut m = Manifests::default();
        m.extend(parse(YAML, Path::new("c.yaml")).unwrap());
        assert_eq!(m.namespaces.len(), 1);
        let labels = m.namespaces[0].metadata.labels.clone().unwrap();
        assert_eq!(m.namespaces[0].metadata.name.as_deref(), Some("y"));
        assert_eq!(labels["enabled"], "on");
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.network_policies.len(), 1);
        assert_eq!(m.skipped, 1);
        let p = &m.network_policies[0];
        let ports = p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
            .ports
            .clone()
            .unwrap();
        assert_eq!(ports[1].end_port, Some(90));
        assert_eq!(
            m.pods[0].status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.2")
        );
    }

    #[test]
    fn json_and_list() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}}]}"#;
        let objs = parse(json, Path::new("l.json")).unwrap();
        assert!(matches!(&objs[..], [Object::Namespace(_)]));
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - ports: [{port: 80, endPort: eighty}]\n";
        let e = parse(bad, Path::new("bad.yaml")).unwrap_err().to_string();
        assert!(
            e.starts_with("bad.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].endPort: "),
            "{e}"
        );
        let e = parse("kind: [", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.yaml: not valid YAML"), "{e}");
        let e = parse("- 1\n- 2\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 1: not a Kubernetes object"), "{e}");
        let e = parse("metadata: {name: q}\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "s.yaml: document 1: q: missing `kind`");
        let e = parse(
            "apiVersion: v2\nkind: Pod\nmetadata: {name: q}\n",
            Path::new("s.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("Pod q: apiVersion: Unsupported value: \"v2\""),
            "{e}"
        );
        let e = load(&[PathBuf::from("/nonexistent/podwire")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read /nonexistent/podwire"), "{e}");
    }
}

//! `podwire lab apply -f` and `lab delete -f`: change a running lab kubectl-style.
//!
//! Design note: a manifest is checked whole before anything changes — every
//! document parses and types (the agent's own loader, so errors name the file,
//! object and field), every kind is one the lab can play, every Pod names a node of
//! the lab, and the cluster state the change leads to builds into a node view (the
//! same validation the agents run) — so a bad file is refused and the lab keeps its
//! last good state. Only then are pods created (a netns and `podwire-cni ADD`, as
//! kubelet and a runtime would, with a [`super::serve`] process on their container
//! ports) and the objects kept; the cluster-state file is written once at the end,
//! with the EndpointSlices recomputed from the pods.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;

use super::objects::PodPort;
use super::{topology, Lab, PodExtras};
use crate::control::manifests::{self, Object};
use crate::control::node_view::ClusterView;

/// What one `lab apply` or `lab delete` did, one line per object
/// (`service/default/web created`), as kubectl prints.
pub type Outcome = Vec<String>;

fn read_objects(path: &Path) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for file in manifests::manifest_files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        out.extend(manifests::parse(&text, &file)?);
    }
    Ok(out)
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A pod to create: where, with which labels, ports and names.
struct PodPlan {
    node: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ports: Vec<PodPort>,
    hostname: Option<String>,
    subdomain: Option<String>,
}

fn pod_plan(lab: &Lab, pod: &Pod) -> Result<PodPlan> {
    let (namespace, name) = name_of(&pod.metadata);
    let object = format!("Pod {namespace}/{name}");
    let spec = pod
        .spec
        .as_ref()
        .with_context(|| format!("{object}: no spec"))?;
    let node = spec.node_name.clone().with_context(|| {
        format!("{object}: spec.nodeName: the lab has no scheduler; name a node")
    })?;
    lab.node(&node)
        .with_context(|| format!("{object}: spec.nodeName"))?;
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| {
                    format!("{object}: containerPort {} out of range", p.container_port)
                })?;
            Ok(PodPort {
                name: p.name.clone().unwrap_or_default(),
                port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect::<Result<_>>()?;
    Ok(PodPlan {
        node,
        namespace,
        name,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports,
        hostname: spec.hostname.clone(),
        subdomain: spec.subdomain.clone(),
    })
}

impl Lab {
    /// Applies every object of the manifest file or folder `path`.
    pub fn apply(&mut self, path: &Path) -> Result<Outcome> {
        let objects = read_objects(path)?;
        let mut next = self.objects.clone();
        let mut pods = Vec::new();
        let mut out = Vec::new();
        for o in objects {
            match o {
                Object::Namespace(ns) => {
                    out.push(format!("namespace/{} configured", ns.metadata.name.clone().unwrap_or_default()));
                    next.apply_namespace(*ns);
                }
                Object::Service(svc) => {
                    let (ns, name) = name_of(&svc.metadata);
                    out.push(format!("service/{ns}/{name} configured"));
                    next.apply_service(*svc)?;
                }
                Object::NetworkPolicy(p) => {
                    let (ns, name) = name_of(&p.metadata);
                    out.push(format!("networkpolicy/{ns}/{name} configured"));
                    next.apply_policy(*p);
                }
                Object::Pod(p) => pods.push(pod_plan(self, &p)?),
                Object::EndpointSlice(s) => bail!(
                    "EndpointSlice {}: the lab writes EndpointSlices from its pods, as the endpoint controller does",
                    name_of(&s.metadata).1
                ),
                Object::Node(n) => bail!(
                    "Node {}: the lab's nodes are built by `lab up`",
                    n.metadata.name.unwrap_or_default()
                ),
                Object::Other { kind } => bail!("the lab does not serve {kind} objects"),
            }
        }
        // The state this leads to must be one the agents accept.
        let mut candidate = self.clone();
        candidate.objects = next.clone();
        for p in &pods {
            if let Some(x) = candidate
                .pods
                .iter_mut()
                .find(|x| x.namespace == p.namespace && x.name == p.name)
            {
                x.labels = p.labels.clone();
            }
        }
        candidate.validate_state()?;
        self.objects = next;
        for p in pods {
            let key = format!("{}/{}", p.namespace, p.name);
            if let Some(existing) = self
                .pods
                .iter_mut()
                .find(|x| x.namespace == p.namespace && x.name == p.name)
            {
                if existing.node != p.node {
                    bail!(
                        "pod {key} runs on {}; a pod's node cannot change",
                        existing.node
                    );
                }
                existing.labels = p.labels;
                out.push(format!("pod/{key} configured"));
                continue;
            }
            let extras = PodExtras {
                ports: p.ports,
                hostname: p.hostname,
                subdomain: p.subdomain,
            };
            self.add_pod_as(&p.node, &p.namespace, &p.name, p.labels, extras)?;
            let i = self.pods.len() - 1;
            self.start_server(i)?;
            out.push(format!(
                "pod/{key} created ({} on {})",
                self.pods[i].ip, p.node
            ));
        }
        self.save()?;
        self.publish_state()?;
        Ok(out)
    }

    /// Deletes every object named in the manifest file or folder `path`.
    pub fn delete(&mut self, path: &Path) -> Result<Outcome> {
        let mut out = Vec::new();
        for o in read_objects(path)? {
            let (kind, meta) = match &o {
                Object::Namespace(x) => ("Namespace", &x.metadata),
                Object::Service(x) => ("Service", &x.metadata),
                Object::NetworkPolicy(x) => ("NetworkPolicy", &x.metadata),
                Object::Pod(x) => ("Pod", &x.metadata),
                Object::EndpointSlice(_) | Object::Node(_) | Object::Other { .. } => {
                    bail!("the lab does not delete this kind of object")
                }
            };
            let (ns, name) = name_of(meta);
            let gone = if kind == "Pod" {
                self.remove_pod(&ns, &name)?
            } else {
                self.objects.delete(kind, &ns, &name)?
            };
            let what = if kind == "Namespace" {
                name.clone()
            } else {
                format!("{ns}/{name}")
            };
            out.push(format!(
                "{}/{what} {}",
                kind.to_lowercase(),
                if gone { "deleted" } else { "not found" }
            ));
        }
        self.save()?;
        self.publish_state()?;
        Ok(out)
    }

    /// Checks that the cluster state the lab would write is one every agent
    /// accepts (the agents' own view build).
    fn validate_state(&self) -> Result<()> {
        let text = self.manifests_text()?;
        let mut m = manifests::Manifests::default();
        m.extend(manifests::parse(&text, Path::new("cluster.yaml"))?);
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        ClusterView::build(&m, &node).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        Ok(())
    }

    /// Starts the server of pod `i` on its container ports (none: no server).
    fn start_server(&mut self, i: usize) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let pod = &self.pods[i];
        if pod.ports.is_empty() {
            return Ok(());
        }
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &pod.netns])
            .arg(&self.paths.podwire)
            .args(["lab", "serve", "--run-dir"])
            .arg(&self.paths.run_dir)
            .args(["--pod", &format!("{}/{}", pod.namespace, pod.name)]);
        for p in &pod.ports {
            match p.protocol.as_str() {
                "TCP" => command.args(["--tcp", &p.port.to_string()]),
                "UDP" => command.args(["--udp", &p.port.to_string()]),
                _ => continue,
            };
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.paths.run_dir.join("servers.log"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the server of {}/{}", pod.namespace, pod.name))?;
        self.pods[i].server_pid = child.id();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }

    /// Removes pod `namespace/name` as kubelet would: stops its server, `podwire-cni
    /// DEL`, deletes its netns. Whether it existed.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<bool> {
        let Some(i) = self
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
        else {
            return Ok(false);
        };
        let pod = self.pods[i].clone();
        if pod.server_pid != 0
            && super::is_lab_process(pod.server_pid, &self.paths.run_dir, "serve")
        {
            super::kill_and_wait(pod.server_pid);
        }
        self.cni(&pod.node, "DEL", &pod.netns, namespace, name)?;
        topology::del_netns(&pod.netns);
        self.pods.remove(i);
        Ok(true)
    }
}

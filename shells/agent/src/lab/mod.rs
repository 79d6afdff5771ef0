//! `podwire lab`: a whole cluster on one machine, built from network namespaces.
//!
//! Design note: the lab is built exactly the way the pieces meet in a real cluster —
//! an underlay namespace holding a bridge (the "switch"), one namespace per node
//! wired to it by a veth (`eth0` with the node's InternalIP), one `podwire agent` per
//! node running inside its namespace, Kubernetes manifests as the cluster state, and
//! pods created as a container runtime creates them (a netns, then `podwire-cni ADD`
//! with the CNI environment and the installed conflist on stdin). Every namespace is
//! named `<prefix>-…` and everything else lives in one run directory, and the state
//! (`state.json`) is written after every step, so `down` can remove a lab after a
//! crash or a half-built `up`: it deletes every namespace with the prefix and stops
//! every agent whose command line names the run directory, whether the state file was
//! complete or not. Tests build labs with a random prefix and run directory; the CLI
//! uses the fixed ones ([`DEFAULT_PREFIX`], [`DEFAULT_RUN_DIR`]).

pub mod apply;
pub mod demo;
pub mod etcd;
pub mod flow;
pub mod kubernetes;
pub mod objects;
pub mod serve;
pub mod topology;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use topology::{add_netns, add_underlay, attach_to_underlay, del_netns, list_netns};

/// The namespace prefix of the CLI's lab.
pub const DEFAULT_PREFIX: &str = "pwlab";
/// The run directory of the CLI's lab.
pub const DEFAULT_RUN_DIR: &str = "/run/podwire-lab";
/// The Kubernetes namespace of the lab's pods (unless a pod is added to another
/// with [`Lab::add_pod_with`]).
pub const POD_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    POD_NAMESPACE.to_string()
}

/// What to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LabSpec {
    /// Nodes (1..=200).
    pub nodes: usize,
    /// Pods per node (0..=250).
    pub pods_per_node: usize,
    /// The underlay MTU (pods get this − 50).
    pub underlay_mtu: u32,
    /// The underlay network: node `i` (from 1) gets `.(10 + i)`.
    pub underlay_cidr: String,
    /// The cluster CIDR (a /16): node `i` gets the `/24` number `i`.
    pub cluster_cidr: String,
    /// The agents' `--busy-poll-us` (0: off).
    pub busy_poll_us: u64,
    /// Manifest files or folders applied once the lab is up, as `lab apply` would
    /// (Namespaces, Pods with `spec.nodeName`, Services, NetworkPolicies).
    pub manifests: Vec<PathBuf>,
    /// The agents' `--dns-upstream` (empty: the node's resolv.conf).
    pub dns_upstreams: Vec<String>,
    /// Where the cluster state lives: the lab's manifests file, a 3-member etcd in
    /// the lab (`etcd`), or a Kubernetes control plane the lab runs in its own
    /// namespace (`kubernetes`).
    pub datastore: crate::source::Datastore,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            nodes: 2,
            pods_per_node: 2,
            underlay_mtu: 1500,
            underlay_cidr: "172.30.0.0/24".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            busy_poll_us: 0,
            manifests: Vec::new(),
            dns_upstreams: Vec::new(),
            datastore: crate::source::Datastore::File,
        }
    }
}

impl LabSpec {
    /// Reads a spec from a YAML file (`nodes`, `podsPerNode`, `underlayMtu`, ...);
    /// `manifests` paths are relative to the file's folder.
    pub fn from_file(path: &Path) -> Result<LabSpec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut spec: LabSpec =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for m in &mut spec.manifests {
            *m = base.join(&*m);
        }
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=200).contains(&self.nodes) {
            bail!("nodes must be 1..=200, not {}", self.nodes);
        }
        if self.pods_per_node > 250 {
            bail!("podsPerNode must be at most 250");
        }
        if !(1280..=65535).contains(&self.underlay_mtu) {
            bail!("underlayMtu must be 1280..=65535");
        }
        self.underlay_net()?;
        self.cluster_net()?;
        Ok(())
    }

    fn underlay_net(&self) -> Result<ipnet::Ipv4Net> {
        let n: ipnet::Ipv4Net = self.underlay_cidr.parse().context("underlayCidr")?;
        if n.prefix_len() != 24 {
            bail!("underlayCidr must be a /24");
        }
        Ok(n.trunc())
    }

    fn cluster_net(&self) -> Result<ipnet::Ipv4Net> {
        let n: ipnet::Ipv4Net = self.cluster_cidr.parse().context("clusterCidr")?;
        if n.prefix_len() != 16 {
            bail!("clusterCidr must be a /16");
        }
        Ok(n.trunc())
    }

    /// The InternalIP of node `i` (from 1).
    pub fn node_ip(&self, i: usize) -> Result<Ipv4Addr> {
        let o = self.underlay_net()?.network().octets();
        Ok(Ipv4Addr::new(o[0], o[1], o[2], (10 + i) as u8))
    }

    /// The pod CIDR of node `i` (from 1).
    pub fn pod_cidr(&self, i: usize) -> Result<ipnet::Ipv4Net> {
        let o = self.cluster_net()?.network().octets();
        Ok(ipnet::Ipv4Net::new(
            Ipv4Addr::new(o[0], o[1], i as u8, 0),
            24,
        )?)
    }
}

/// Where the lab lives and which binaries it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPaths {
    /// Namespace prefix (`<prefix>-underlay`, `<prefix>-node1`, ...).
    pub prefix: String,
    /// Run directory (state.json, manifests, agent state, logs, CNI files).
    pub run_dir: PathBuf,
    /// The `podwire` binary (agents).
    pub podwire: PathBuf,
    /// The `podwire-cni` binary (installed per node, called as a runtime would).
    pub podwire_cni: PathBuf,
}

impl LabPaths {
    /// The CLI's lab: prefix [`DEFAULT_PREFIX`] and run dir [`DEFAULT_RUN_DIR`]
    /// (overridable with `PODWIRE_LAB_PREFIX` / `PODWIRE_LAB_DIR`), this program and
    /// `podwire-cni` next to it.
    pub fn default_for_cli() -> Result<LabPaths> {
        let podwire = std::env::current_exe().context("locating this program")?;
        let podwire_cni = podwire.with_file_name("podwire-cni");
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Ok(LabPaths {
            prefix: var("PODWIRE_LAB_PREFIX", DEFAULT_PREFIX),
            run_dir: var("PODWIRE_LAB_DIR", DEFAULT_RUN_DIR).into(),
            podwire,
            podwire_cni,
        })
    }

    fn state_file(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }
}

/// One node of a built lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Node name (`node1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its InternalIP.
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// The agent's pid (0 when not running).
    pub agent_pid: u32,
    /// Whether the node is listed in the cluster state.
    pub listed: bool,
}

/// One pod of a built lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Pod name (`node1-pod1`).
    pub name: String,
    /// Its Kubernetes namespace ([`POD_NAMESPACE`] unless added elsewhere).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its labels in the cluster state (`app: lab`, `node: <node>` by default).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its node's name.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// The IP the CNI ADD returned.
    pub ip: Ipv4Addr,
    /// Its containers' ports (a pod applied from a manifest serves them).
    #[serde(default)]
    pub ports: Vec<objects::PodPort>,
    /// `spec.hostname`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `spec.subdomain`: with a hostname, the pod's record under the headless
    /// service of that name.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// The pid of the lab server answering on its ports (0: none).
    #[serde(default)]
    pub server_pid: u32,
}

/// What a pod is created with besides its name and labels.
#[derive(Debug, Clone, Default)]
pub struct PodExtras {
    /// Its containers' ports.
    pub ports: Vec<objects::PodPort>,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
}

/// A lab: what was built (persisted in `state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    /// Paths and binaries.
    pub paths: LabPaths,
    /// The spec it was built from.
    pub spec: LabSpec,
    /// The underlay namespace.
    pub underlay: String,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Extra manifests appended to the cluster state (e.g. foreign nodes).
    #[serde(default)]
    pub extra_manifests: String,
    /// Namespaces, Services and NetworkPolicies applied with `lab apply`.
    #[serde(default)]
    pub objects: objects::LabObjects,
    /// The etcd cluster (`datastore: etcd`).
    #[serde(default)]
    pub etcd: Option<etcd::LabEtcd>,
    /// The control plane and its sync state (`--datastore kubernetes`).
    #[serde(default)]
    pub kube: Option<kubernetes::KubeLab>,
}

fn progress(verbose: bool, msg: &str) {
    if verbose {
        eprintln!("  {msg}");
    }
}

impl Lab {
    /// Builds a lab; `verbose` prints progress to stderr. On error the half-built
    /// lab stays recorded; [`down`] removes it.
    pub fn up(spec: LabSpec, paths: LabPaths, verbose: bool) -> Result<Lab> {
        spec.validate()?;
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces)");
        }
        for b in [&paths.podwire, &paths.podwire_cni] {
            if !b.exists() {
                bail!("{} not found", b.display());
            }
        }
        if paths.state_file().exists() || !list_netns(&format!("{}-", paths.prefix)).is_empty() {
            bail!(
                "a lab already exists (prefix {}, {}); run `podwire lab down` first",
                paths.prefix,
                paths.run_dir.display()
            );
        }
        std::fs::create_dir_all(&paths.run_dir)
            .with_context(|| format!("creating {}", paths.run_dir.display()))?;
        let mut lab = Lab {
            underlay: format!("{}-underlay", paths.prefix),
            paths,
            spec,
            nodes: Vec::new(),
            pods: Vec::new(),
            extra_manifests: String::new(),
            objects: Default::default(),
            etcd: None,
            kube: None,
        };
        lab.save()?;
        let t0 = Instant::now();
        progress(
            verbose,
            &format!("underlay bridge in netns {}", lab.underlay),
        );
        add_underlay(&lab.underlay, lab.spec.underlay_mtu)?;
        if lab.spec.datastore == crate::source::Datastore::Etcd {
            progress(verbose, "etcd: 3 members on the underlay");
            lab.etcd = Some(etcd::LabEtcd::up(
                &lab.paths.prefix,
                &lab.underlay,
                lab.spec.underlay_net()?,
                lab.spec.underlay_mtu,
                &lab.paths.run_dir,
                lab.spec.cluster_net()?,
            )?);
            lab.save()?;
        } else if lab.spec.datastore == crate::source::Datastore::Kubernetes {
            lab.start_control_plane(verbose)?;
        }
        for i in 1..=lab.spec.nodes {
            let name = format!("node{i}");
            lab.nodes.push(LabNode {
                netns: format!("{}-{name}", lab.paths.prefix),
                ip: lab.spec.node_ip(i)?,
                pod_cidr: lab.spec.pod_cidr(i)?,
                name,
                agent_pid: 0,
                listed: true,
            });
        }
        lab.write_manifests()?;
        for i in 0..lab.nodes.len() {
            let n = lab.nodes[i].clone();
            let cidr = match lab.kube {
                Some(_) => "from kube-controller-manager".to_string(),
                None => n.pod_cidr.to_string(),
            };
            progress(
                verbose,
                &format!(
                    "{}: netns {}, InternalIP {}, podCIDR {cidr}",
                    n.name, n.netns, n.ip
                ),
            );
            add_netns(&n.netns)?;
            lab.save()?;
            // A Kubernetes node forwards (pods reach other nodes' addresses through
            // it), as kubelet's prerequisites require.
            topology::exec(&n.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            attach_to_underlay(
                &lab.underlay,
                &n.netns,
                &format!("v{}", n.name),
                n.ip,
                lab.spec.underlay_mtu,
            )?;
            if let Some(k) = lab.kube.as_mut() {
                let cidr = k.control_plane.register_node(&n.name, n.ip, None)?;
                k.nodes.insert(n.name.clone());
                lab.nodes[i].pod_cidr = cidr;
                progress(
                    verbose,
                    &format!(
                        "{}: registered; kube-controller-manager allocated {cidr}",
                        n.name
                    ),
                );
                lab.save()?;
            }
            lab.install_cni(&n.name)?;
            lab.start_agent(&n.name)?;
        }
        for n in lab.nodes.clone() {
            lab.wait_agent(&n.name)?;
        }
        if lab.etcd.is_some() {
            lab.learn_pod_cidrs()?;
        }
        progress(verbose, &format!("{} agents running", lab.nodes.len()));
        for n in lab.nodes.clone() {
            for k in 1..=lab.spec.pods_per_node {
                let pod = lab.add_pod(&n.name, &format!("{}-pod{k}", n.name))?;
                progress(
                    verbose,
                    &format!("pod {POD_NAMESPACE}/{} on {}: {}", pod.name, n.name, pod.ip),
                );
            }
        }
        for m in lab.spec.manifests.clone() {
            for line in lab
                .apply(&m)
                .with_context(|| format!("applying {}", m.display()))?
            {
                progress(verbose, &line);
            }
        }
        progress(
            verbose,
            &format!("lab up in {:.1} s", t0.elapsed().as_secs_f64()),
        );
        Ok(lab)
    }

    /// Loads the lab recorded in `run_dir`.
    pub fn load(run_dir: &Path) -> Result<Lab> {
        let p = run_dir.join("state.json");
        let text = std::fs::read(&p).with_context(|| {
            format!(
                "no lab state at {} (run `podwire lab up` first)",
                p.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Writes `state.json` (write, fsync, rename).
    pub fn save(&self) -> Result<()> {
        let p = self.paths.state_file();
        let tmp = p.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.paths.run_dir.join(node)
    }

    /// The agent socket of `node`.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.sock")
    }

    /// The cluster-state file every agent watches.
    pub fn manifests_file(&self) -> PathBuf {
        self.paths.run_dir.join("cluster.yaml")
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name} in the lab"))
    }

    /// A pod by `name` (in [`POD_NAMESPACE`]) or `namespace/name`.
    pub fn pod(&self, name: &str) -> Result<&LabPod> {
        let (ns, bare) = name.split_once('/').unwrap_or((POD_NAMESPACE, name));
        self.pods
            .iter()
            .find(|p| p.name == bare && p.namespace == ns)
            .with_context(|| format!("no pod {name} in the lab"))
    }

    /// Replaces the labels of pod `name` (`namespace/name` or a name in
    /// [`POD_NAMESPACE`]) and rewrites the cluster state (the agents apply it live).
    pub fn set_pod_labels(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let (ns, bare) = {
            let p = self.pod(name)?;
            (p.namespace.clone(), p.name.clone())
        };
        if let Some(p) = self
            .pods
            .iter_mut()
            .find(|p| p.name == bare && p.namespace == ns)
        {
            p.labels = labels;
        }
        self.save()?;
        self.publish_state()
    }

    /// Replaces the extra manifests appended to the cluster state (policies,
    /// services, foreign nodes: YAML documents separated by `---`) and rewrites it
    /// (the agents apply it live).
    pub fn set_extra_manifests(&mut self, yaml: &str) -> Result<()> {
        self.extra_manifests = yaml.trim_start_matches("---\n").to_string();
        self.save()?;
        self.publish_state()
    }

    /// Writes the cluster state (write a temporary file, then rename it over the
    /// old one, as the agents poll it): listed nodes, the namespaces, the pods with
    /// their labels and the IP their CNI ADD returned (`status.podIP` and
    /// `status.podIPs`, so every agent knows every pod's address and labels, as the
    /// API server tells a real node), then the extras.
    pub fn write_manifests(&self) -> Result<()> {
        let y = self.manifests_text()?;
        if let Some(etcd) = &self.etcd {
            return etcd.write_state(&y);
        }
        let p = self.manifests_file();
        let tmp = p.with_extension("yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    /// The cluster state [`Lab::write_manifests`] writes.
    pub fn manifests_text(&self) -> Result<String> {
        let mut y = String::new();
        for n in self.nodes.iter().filter(|n| n.listed) {
            y.push_str(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDR: {}}}\n\
                 status: {{addresses: [{{type: InternalIP, address: {}}}]}}\n---\n",
                n.name, n.pod_cidr, n.ip
            ));
        }
        // Namespaces the pods use but nobody applied exist anyway, as kubectl's
        // namespace of a pod must.
        let namespaces: BTreeSet<&str> = std::iter::once(POD_NAMESPACE)
            .chain(self.pods.iter().map(|p| p.namespace.as_str()))
            .filter(|ns| !self.objects.namespaces.contains_key(*ns))
            .collect();
        for (i, ns) in namespaces.iter().enumerate() {
            if i > 0 {
                y.push_str("---\n");
            }
            y.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            ));
        }
        for p in &self.pods {
            y.push_str("---\n");
            y.push_str(&pod_document(p)?);
        }
        let applied = self.objects.manifests(&self.pods)?;
        if !applied.is_empty() {
            y.push_str("---\n");
            y.push_str(&applied);
        }
        if !self.extra_manifests.is_empty() {
            y.push_str("---\n");
            y.push_str(&self.extra_manifests);
        }
        Ok(y)
    }

    /// Publishes the lab's cluster state: writes the manifests file and, on the
    /// Kubernetes datastore, brings the API server to the same state.
    pub fn publish_state(&mut self) -> Result<()> {
        self.write_manifests()?;
        if let Some(mut k) = self.kube.take() {
            let synced = k.sync(self);
            self.kube = Some(k);
            self.save()?;
            synced?;
        }
        Ok(())
    }

    fn start_control_plane(&mut self, verbose: bool) -> Result<()> {
        let netns = format!("{}-cp", self.paths.prefix);
        let o = self.spec.underlay_net()?.network().octets();
        let address = Ipv4Addr::new(o[0], o[1], o[2], kubernetes::CONTROL_PLANE_HOST);
        progress(
            verbose,
            &format!("control plane: netns {netns}, {address}: etcd, kube-apiserver, kube-controller-manager"),
        );
        add_netns(&netns)?;
        attach_to_underlay(
            &self.underlay,
            &netns,
            "vcp",
            address,
            self.spec.underlay_mtu,
        )?;
        let k = kubernetes::KubeLab::start(
            &netns,
            address,
            &self.paths.run_dir,
            self.spec.cluster_net()?,
        )?;
        self.kube = Some(k);
        self.save()
    }

    /// The admin kubeconfig of the lab's API server (`--datastore kubernetes`).
    pub fn kubeconfig(&self) -> Result<PathBuf> {
        match &self.kube {
            Some(k) => Ok(k.control_plane.admin_kubeconfig()),
            None => bail!("this lab runs on the file datastore (lab up --datastore kubernetes has a kubeconfig)"),
        }
    }

    fn install_cni(&self, node: &str) -> Result<()> {
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir)?;
        crate::cni::install::install(
            &dir.join("net.d"),
            &dir.join("bin"),
            &self.socket(node),
            &self.paths.podwire_cni,
        )?;
        Ok(())
    }

    /// Starts (or restarts) the agent of `node` in its namespace, detached from the
    /// terminal, logging to `<run dir>/<node>/agent.log`.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let n = self.node(node)?.clone();
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &n.netns])
            .arg(&self.paths.podwire)
            .arg("agent")
            .args(["--node", &n.name])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(self.socket(node))
            .args(["--reload-interval-ms", "100"])
            .args(["--busy-poll-us", &self.spec.busy_poll_us.to_string()])
            .args(self.datastore_args(&n));
        if !self.spec.dns_upstreams.is_empty() {
            command.args(["--dns-upstream", &self.spec.dns_upstreams.join(",")]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the agent of {node}"))?;
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        let pid = child.id();
        // Reaped by whoever waits: the lab does not keep the handle (agents outlive
        // `lab up`), so a reaper thread avoids zombies while this process lives.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        if let Some(m) = self.nodes.iter_mut().find(|x| x.name == node) {
            m.agent_pid = pid;
        }
        self.save()
    }

    /// Stops the agent of `node` with SIGKILL (as a crash would).
    pub fn kill_agent(&mut self, node: &str) -> Result<()> {
        let pid = self.node(node)?.agent_pid;
        if pid != 0 && is_lab_agent(pid, &self.paths.run_dir) {
            kill_and_wait(pid);
        }
        if let Some(m) = self.nodes.iter_mut().find(|x| x.name == node) {
            m.agent_pid = 0;
        }
        self.save()
    }

    /// Waits until the agent of `node` answers `status` (20 s).
    pub fn wait_agent(&self, node: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = self.socket(node);
        loop {
            let ok = Command::new(&self.paths.podwire)
                .arg("status")
                .arg("--socket")
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.node_dir(node).join("agent.log"))
                    .unwrap_or_default();
                bail!("the agent of {node} did not start; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `podwire <args> --socket <node's socket>`; stdout.
    pub fn podwire(&self, node: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.paths.podwire)
            .args(args)
            .arg("--socket")
            .arg(self.socket(node))
            .output()?;
        if !out.status.success() {
            bail!(
                "podwire {args:?} on {node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates pod `name` on `node` in [`POD_NAMESPACE`] with the labels `app: lab`
    /// and `node: <node>` (see [`Lab::add_pod_with`]).
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<LabPod> {
        let labels = [("app", "lab"), ("node", node)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.add_pod_with(node, POD_NAMESPACE, name, labels)
    }

    /// Creates pod `namespace/name` on `node` as a runtime would: a netns, then
    /// `podwire-cni ADD` with the CNI environment and the conflist's plugin config;
    /// then lists it in the cluster state with `labels` and the IP the ADD returned.
    pub fn add_pod_with(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<LabPod> {
        self.add_pod_as(node, namespace, name, labels, PodExtras::default())
    }

    /// [`Lab::add_pod_with`], with the container ports, hostname and subdomain the
    /// pod is listed with from the start (a pod's spec cannot change later).
    pub fn add_pod_as(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        extras: PodExtras,
    ) -> Result<LabPod> {
        let n = self.node(node)?.clone();
        if self.pod(&format!("{namespace}/{name}")).is_ok() {
            bail!("pod {namespace}/{name} already exists in the lab");
        }
        let netns = if namespace == POD_NAMESPACE {
            format!("{}-{name}", self.paths.prefix)
        } else {
            format!("{}-{namespace}-{name}", self.paths.prefix)
        };
        add_netns(&netns)?;
        let result = self.cni(node, "ADD", &netns, namespace, name)?;
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no IP in the ADD result {result}"))?;
        topology::write_resolv_conf(&netns, &result["dns"])?;
        let pod = LabPod {
            name: name.into(),
            namespace: namespace.into(),
            labels,
            node: n.name,
            netns,
            ip,
            ports: extras.ports,
            hostname: extras.hostname,
            subdomain: extras.subdomain,
            server_pid: 0,
        };
        self.pods.push(pod.clone());
        self.save()?;
        self.publish_state()?;
        Ok(pod)
    }

    /// Runs `podwire-cni <command>` for pod `namespace/name` in `netns` on `node` as
    /// a runtime would: the CNI environment, the conflist's plugin config on stdin.
    /// The result (ADD) or `null`.
    fn cni(
        &self,
        node: &str,
        command: &str,
        netns: &str,
        namespace: &str,
        name: &str,
    ) -> Result<serde_json::Value> {
        let dir = self.node_dir(node);
        let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(
            dir.join("net.d").join(crate::cni::install::CONFLIST_NAME),
        )?)?;
        let conf = crate::cni::install::plugin_config(&conflist).context("conflist")?;
        let mut child = Command::new(dir.join("bin").join(crate::cni::install::PLUGIN_TYPE))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("lab-{name}"))
            .env("CNI_NETNS", topology::netns_path(netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", dir.join("bin"))
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "podwire-cni {command} of {namespace}/{name} on {node}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Lists or unlists a node in the cluster state (the agents apply it live).
    pub fn set_listed(&mut self, node: &str, listed: bool) -> Result<()> {
        if self.etcd.is_some() {
            bail!("on etcd each node lists itself: stop its agent to unlist {node}");
        }
        match self.nodes.iter_mut().find(|x| x.name == node) {
            Some(n) => n.listed = listed,
            None => bail!("no node {node}"),
        }
        self.save()?;
        self.publish_state()
    }

    /// Adds a namespace wired to the underlay like a node, but without an agent (a
    /// foreign node: the kernel, another implementation). Returns (netns, address).
    pub fn add_foreign_host(&mut self, tag: &str, host: u8) -> Result<(String, Ipv4Addr)> {
        let netns = format!("{}-{tag}", self.paths.prefix);
        let o = self.spec.underlay_net()?.network().octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], host);
        add_netns(&netns)?;
        attach_to_underlay(
            &self.underlay,
            &netns,
            &format!("v{tag}"),
            addr,
            self.spec.underlay_mtu,
        )?;
        Ok((netns, addr))
    }

    /// The agent's datastore options for node `n`.
    fn datastore_args(&self, n: &LabNode) -> Vec<String> {
        if let Some(etcd) = &self.etcd {
            return vec![
                "--datastore".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoints(),
                "--node-ip".into(),
                n.ip.to_string(),
            ];
        }
        if let Some(k) = &self.kube {
            return vec![
                "--datastore".into(),
                "kubernetes".into(),
                "--kubeconfig".into(),
                k.agent_kubeconfig.display().to_string(),
            ];
        }
        vec![
            "--cluster".into(),
            self.manifests_file().display().to_string(),
        ]
    }

    /// Records the pod CIDR each agent took from its subnet lease (etcd).
    fn learn_pod_cidrs(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            let name = self.nodes[i].name.clone();
            let report: crate::api::IpamReport =
                serde_json::from_str(&self.podwire(&name, &["ipam", "-o", "json"])?)?;
            match report.cidr {
                Some(ipnet::IpNet::V4(c)) => self.nodes[i].pod_cidr = c,
                other => bail!("the agent of {name} reports pod CIDR {other:?}"),
            }
        }
        self.save()
    }

    /// Tears the lab down (see [`down`]).
    pub fn down(&self) -> Vec<String> {
        down(&self.paths.prefix, &self.paths.run_dir)
    }
}

/// A lab pod as the API server would list it (JSON, which is YAML): labels, node,
/// hostname and subdomain, container ports, and the IP its CNI ADD returned.
fn pod_document(p: &LabPod) -> Result<String> {
    Ok(format!("{}\n", pod_object(p)))
}

/// [`pod_document`] as a JSON value.
pub(crate) fn pod_object(p: &LabPod) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = p
        .ports
        .iter()
        .map(|c| {
            let mut v = serde_json::json!({"containerPort": c.port, "protocol": c.protocol});
            if !c.name.is_empty() {
                v["name"] = c.name.clone().into();
            }
            v
        })
        .collect();
    let mut spec = serde_json::json!({
        "nodeName": p.node,
        "containers": [{"name": "main", "image": "lab", "ports": ports}],
    });
    if let Some(h) = &p.hostname {
        spec["hostname"] = h.clone().into();
    }
    if let Some(d) = &p.subdomain {
        spec["subdomain"] = d.clone().into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": spec,
        "status": {"podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}]},
    })
}

pub(crate) fn wait_gone(pid: u32) {
    // Up to 15 s: a big process killed on a busy machine takes a while to go.
    for _ in 0..1500 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        // A zombie still has /proc/<pid>; treat a zombie as gone.
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a `podwire agent` of the lab in `run_dir`.
fn is_lab_agent(pid: u32, run_dir: &Path) -> bool {
    is_lab_process(pid, run_dir, "agent")
}

/// Whether `pid` is a `podwire` process of the lab in `run_dir` with the argument
/// `role` (`agent`, or `serve` for a pod's server).
fn is_lab_process(pid: u32, run_dir: &Path, role: &str) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let run = run_dir.as_os_str().as_encoded_bytes();
    args.contains(&role.as_bytes()) && args.iter().any(|a| a.windows(run.len()).any(|w| w == run))
}

/// SIGKILL, then wait until the process is gone.
fn kill_and_wait(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_gone(pid);
}

/// Removes everything of the lab with namespace `prefix` and `run_dir`, also after
/// a crash or a half-built lab: stops every agent whose command line names the run
/// directory, deletes every namespace `<prefix>-*`, removes the run directory.
/// Returns what it removed.
pub fn down(prefix: &str, run_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.filter_map(|e| e.ok()) {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let what = if is_lab_agent(pid, run_dir) {
                "agent"
            } else if is_lab_process(pid, run_dir, "serve") {
                "serve"
            } else if etcd::is_lab_member(pid, run_dir) {
                "etcd"
            } else {
                continue;
            };
            kill_and_wait(pid);
            removed.push(format!("{what} pid {pid}"));
        }
    }
    removed.extend(kubernetes::stop_all(run_dir));
    for ns in list_netns(&format!("{prefix}-")) {
        del_netns(&ns);
        removed.push(format!("netns {ns}"));
    }
    // Pods' resolv.conf files whose namespace is already gone (a crash mid-way).
    if let Ok(dir) = std::fs::read_dir("/etc/netns") {
        for e in dir.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                let _ = std::fs::remove_dir_all(e.path());
                removed.push(format!("/etc/netns/{name}"));
            }
        }
    }
    if run_dir.exists() {
        let _ = std::fs::remove_dir_all(run_dir);
        removed.push(format!("{}", run_dir.display()));
    }
    removed
}

/// A node in `lab status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its InternalIP.
    pub internal_ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// `running (pid N)`, `not answering (pid N)` or `stopped`.
    pub agent: String,
}

/// A pod in `lab status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its network namespace.
    pub netns: String,
}

/// A Service in `lab status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    pub r#type: String,
    /// Its ClusterIP (`None` for a headless service, empty for ExternalName).
    pub cluster_ip: String,
    /// `port/protocol` of each port.
    pub ports: Vec<String>,
    /// Endpoints the lab's controller listed.
    pub endpoints: usize,
}

/// `podwire lab status`: nodes with their agent's health, pods, services.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Pods.
    pub pods: Vec<PodStatus>,
    /// Services.
    pub services: Vec<ServiceStatus>,
}

/// The lab's status, asking each agent whether it answers.
pub fn status(lab: &Lab) -> LabStatus {
    let nodes = lab
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            netns: n.netns.clone(),
            internal_ip: n.ip,
            pod_cidr: n.pod_cidr,
            agent: if n.agent_pid != 0 && is_lab_agent(n.agent_pid, &lab.paths.run_dir) {
                match lab.podwire(&n.name, &["status"]) {
                    Ok(_) => format!("running (pid {})", n.agent_pid),
                    Err(_) => format!("not answering (pid {})", n.agent_pid),
                }
            } else {
                "stopped".into()
            },
        })
        .collect();
    let pods = lab
        .pods
        .iter()
        .map(|p| PodStatus {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: p.node.clone(),
            ip: p.ip,
            labels: p.labels.clone(),
            netns: p.netns.clone(),
        })
        .collect();
    let slices = lab.objects.endpoint_slices(&lab.pods);
    let services = lab
        .objects
        .services
        .values()
        .map(|svc| {
            let spec = svc.spec.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            let namespace = svc.metadata.namespace.clone().unwrap_or_default();
            let endpoints = slices
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .filter(|s| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&name)
                })
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .sum();
            ServiceStatus {
                r#type: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
                cluster_ip: spec.cluster_ip.clone().unwrap_or_default(),
                ports: spec
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
                    .collect(),
                endpoints,
                name,
                namespace,
            }
        })
        .collect();
    LabStatus {
        nodes,
        pods,
        services,
    }
}

/// The lab's status as tables: nodes, pods, and services when there are any.
pub fn status_table(lab: &Lab) -> String {
    let st = status(lab);
    let mut rows = vec![vec![
        "NODE".to_string(),
        "NETNS".into(),
        "INTERNAL-IP".into(),
        "POD-CIDR".into(),
        "AGENT".into(),
    ]];
    for n in &st.nodes {
        rows.push(vec![
            n.name.clone(),
            n.netns.clone(),
            n.internal_ip.to_string(),
            n.pod_cidr.to_string(),
            n.agent.clone(),
        ]);
    }
    let mut out = table(&rows);
    out.push('\n');
    let mut rows = vec![vec![
        "POD".to_string(),
        "NODE".into(),
        "IP".into(),
        "NETNS".into(),
    ]];
    for p in &st.pods {
        rows.push(vec![
            format!("{}/{}", p.namespace, p.name),
            p.node.clone(),
            p.ip.to_string(),
            p.netns.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    if !st.services.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "TYPE".into(),
            "CLUSTER-IP".into(),
            "PORTS".into(),
            "ENDPOINTS".into(),
        ]];
        for s in &st.services {
            rows.push(vec![
                format!("{}/{}", s.namespace, s.name),
                s.r#type.clone(),
                s.cluster_ip.clone(),
                s.ports.join(","),
                s.endpoints.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if let Some(e) = &lab.etcd {
        out.push('\n');
        out.push_str(&e.status_table(&lab.paths.run_dir));
    }
    out
}

/// Aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `command` inside the pod's namespace, inheriting stdio; its exit code.
pub fn exec(lab: &Lab, pod: &str, command: &[String]) -> Result<i32> {
    let p = lab.pod(pod)?;
    if command.is_empty() {
        bail!("no command given (podwire lab exec <ns/pod> -- <command>)");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &p.netns])
        .args(command)
        .status()
        .with_context(|| format!("running {command:?} in {}", p.netns))?;
    Ok(status.code().unwrap_or(1))
}

/// Makes sure the node `ip` command can see the namespace (used by tests).
pub fn netns_exists(name: &str) -> bool {
    Path::new(&topology::netns_path(name)).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn spec_addresses_and_validation() {
        let s = LabSpec::default();
        assert_eq!(s.node_ip(1).unwrap(), Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(s.pod_cidr(3).unwrap().to_string(), "10.244.3.0/24");
        let bad = LabSpec {
            nodes: 0,
            ..LabSpec::default()
        };
        assert!(bad.validate().is_err());
        let y: LabSpec = serde_saphyr::from_str("nodes: 3\npodsPerNode: 1\n").unwrap();
        assert_eq!((y.nodes, y.pods_per_node, y.underlay_mtu), (3, 1, 1500));
        assert!(serde_saphyr::from_str::<LabSpec>("nodez: 3\n").is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["xxx".into(), "y".into(), "z".into()],
        ]);
        assert_eq!(t, "A     BB   C\nxxx   y    z\n");
    }

    #[test]
    fn manifests_list_every_pod_with_labels_namespace_and_ip() {
        use crate::control::cluster::ClusterState;
        use crate::control::manifests::{parse, Manifests};
        let dir = std::env::temp_dir().join(format!("pwlab-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = LabSpec::default();
        let pod = |name: &str, ns: &str, node: &str, ip: [u8; 4], labels: &[(&str, &str)]| LabPod {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: node.into(),
            netns: format!("x-{name}"),
            ip: ip.into(),
            ports: Vec::new(),
            hostname: None,
            subdomain: None,
            server_pid: 0,
        };
        let mut lab = Lab {
            paths: LabPaths {
                prefix: "x".into(),
                run_dir: dir.clone(),
                podwire: "podwire".into(),
                podwire_cni: "podwire-cni".into(),
            },
            underlay: "x-underlay".into(),
            nodes: (1..=2)
                .map(|i| LabNode {
                    name: format!("node{i}"),
                    netns: format!("x-node{i}"),
                    ip: spec.node_ip(i).unwrap(),
                    pod_cidr: spec.pod_cidr(i).unwrap(),
                    agent_pid: 0,
                    listed: true,
                })
                .collect(),
            spec,
            pods: vec![
                pod(
                    "web",
                    "default",
                    "node1",
                    [10, 244, 1, 2],
                    &[("app", "web"), ("note", "a: b, {c}")],
                ),
                pod("c", "team-a", "node2", [10, 244, 2, 2], &[("role", "a: b")]),
            ],
            extra_manifests: String::new(),
            objects: Default::default(),
            etcd: None,
            kube: None,
        };
        lab.save().unwrap();
        lab.set_pod_labels(
            "team-a/c",
            [("role".to_string(), "client".to_string())].into(),
        )
        .unwrap();
        lab.set_extra_manifests("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
            .unwrap();
        let text = std::fs::read_to_string(lab.manifests_file()).unwrap();
        let mut m = Manifests::default();
        m.extend(parse(&text, &lab.manifests_file()).unwrap());
        let state = ClusterState::from_manifests(&m).unwrap();
        let web = &state.pods[state.pod_index("default", "web").unwrap()];
        assert_eq!(web.ips, vec![IpAddr::from([10, 244, 1, 2])]);
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            web.labels.get("note").map(String::as_str),
            Some("a: b, {c}")
        );
        let c = &state.pods[state.pod_index("team-a", "c").unwrap()];
        assert_eq!(c.ips, vec![IpAddr::from([10, 244, 2, 2])]);
        assert_eq!(c.labels.get("role").map(String::as_str), Some("client"));
        assert!(state.namespaces.contains_key("team-a"));
        assert!(state.namespaces.contains_key("extra"));
        assert!(lab.pod("c").is_err() && lab.pod("team-a/c").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn down_of_nothing_is_quiet() {
        let dir = std::env::temp_dir().join(format!("pwlab-none-{}", std::process::id()));
        assert!(down("pwlab-does-not-exist-x", &dir).is_empty());
    }
}

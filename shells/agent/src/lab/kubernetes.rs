//! A Kubernetes control plane in a network namespace: etcd, kube-apiserver and
//! kube-controller-manager, for the lab's `--datastore kubernetes` and the tests.
//!
//! Design note: the programs are the real ones, built from the `k8s.io/kubernetes`
//! Go module by `tests/k8s-build` (no Debian package carries them) and found in
//! `PODWIRE_K8S_BIN` or [`DEFAULT_K8S_BIN`]; etcd is Debian's. They run inside one
//! namespace that the caller made and wired to the underlay: etcd on that
//! namespace's loopback, the API server on all its addresses (nodes reach it at the
//! underlay address), the controller manager against its loopback. Credentials are
//! made with `openssl` in the control plane's directory: a CA and a serving
//! certificate, a service-account signing key (so `kubectl create token` issues
//! tokens the agent can run under), and a static admin token. The controller manager
//! runs only what a CNI needs from it: node IPAM (`--allocate-node-cidrs`), the
//! EndpointSlice controller and the namespace controller. There are no kubelets, so
//! the node lifecycle controller stays off (it would mark every pod not ready) and
//! the ServiceAccount admission plugin too (nothing mounts tokens into pods). Every
//! process runs in its own process group, and its command line names the
//! directory, so [`stop_all`] finds them after a crash.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where `tests/k8s-build` puts the Kubernetes programs.
pub const DEFAULT_K8S_BIN: &str = "/var/cache/podwire/k8s-v1.37.2/bin";
/// The API server's port.
pub const API_PORT: u16 = 6443;
/// The Service CIDR of the control plane.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The ServiceAccount the agent runs as (deploy/podwire.yaml).
pub const AGENT_SERVICE_ACCOUNT: (&str, &str) = ("kube-podwire", "podwire");

/// The directory of the Kubernetes programs (`PODWIRE_K8S_BIN`, else
/// [`DEFAULT_K8S_BIN`]); an error says how to build them.
pub fn k8s_bin() -> Result<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("PODWIRE_K8S_BIN").unwrap_or_else(|_| DEFAULT_K8S_BIN.to_string()),
    );
    for p in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
        if !dir.join(p).exists() {
            bail!(
                "{} not found: build the Kubernetes programs with tests/k8s-build \
                 (or point PODWIRE_K8S_BIN at them)",
                dir.join(p).display()
            );
        }
    }
    Ok(dir)
}

/// A running (or recorded) control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address (the API server's advertised address).
    pub address: Ipv4Addr,
    /// Certificates, tokens, etcd data, kubeconfigs and logs.
    pub dir: PathBuf,
    /// The Kubernetes programs.
    pub bin: PathBuf,
    /// The cluster CIDR the controller manager splits into node pod CIDRs.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The pids of etcd, kube-apiserver and kube-controller-manager (0: stopped).
    pub pids: [u32; 3],
}

const ETCD: usize = 0;
const APISERVER: usize = 1;
const CONTROLLER_MANAGER: usize = 2;

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kubeconfig for `server` with a bearer token, trusting `ca`.
pub fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\n\
         contexts:\n- name: lab\n  context: {{cluster: lab, user: user}}\ncurrent-context: lab\n",
        ca.display()
    )
}

impl ControlPlane {
    /// Makes the credentials and starts etcd, the API server and the controller
    /// manager in `netns` (made and wired by the caller, reachable at `address`);
    /// returns once the API server is ready.
    pub fn start(
        netns: &str,
        address: Ipv4Addr,
        dir: &Path,
        cluster_cidr: ipnet::Ipv4Net,
    ) -> Result<ControlPlane> {
        let bin = k8s_bin()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cp = ControlPlane {
            netns: netns.into(),
            address,
            dir: dir.to_path_buf(),
            bin,
            cluster_cidr,
            pids: [0; 3],
        };
        cp.make_credentials()?;
        cp.start_etcd()?;
        cp.start_apiserver()?;
        cp.wait_ready()?;
        cp.start_controller_manager()?;
        Ok(cp)
    }

    fn make_credentials(&self) -> Result<()> {
        let d = &self.dir;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-keyout", "ca.key", "-out", "ca.crt"];
        ca.extend(ec);
        ca.extend(["-days", "30", "-subj", "/CN=podwire-lab-ca"]);
        openssl(d, &ca)?;
        let mut csr = vec![
            "req",
            "-new",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
        ];
        csr.extend(ec);
        csr.extend(["-subj", "/CN=kube-apiserver"]);
        openssl(d, &csr)?;
        std::fs::write(
            d.join("apiserver.ext"),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{},IP:127.0.0.1,IP:10.96.0.1,\
                 DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n",
                self.address
            ),
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "apiserver.ext",
                "-out",
                "apiserver.crt",
            ],
        )?;
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(d, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        let token = random_token()?;
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},podwire-lab-admin,podwire-lab-admin,\"system:masters\"\n"),
        )?;
        std::fs::write(
            self.admin_kubeconfig(),
            kubeconfig(&format!("https://127.0.0.1:{API_PORT}"), &self.ca(), &token),
        )?;
        Ok(())
    }

    /// The API server's URL on the underlay.
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.address)
    }

    /// The CA certificate that signed the API server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A kubeconfig with cluster-admin rights (`system:masters`) for the API server
    /// on the control plane namespace's loopback: use it inside that namespace
    /// (`ip netns exec <netns> kubectl`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    fn spawn(&mut self, which: usize, program: &Path, args: &[String]) -> Result<()> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log_path = self.dir.join(format!("{name}.log"));
        let log = File::options().create(true).append(true).open(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // `ip netns exec` execs the program: the child's pid is the program's.
        self.pids[which] = child.id();
        // Reaped here; how it ended goes to its log.
        std::thread::spawn(move || {
            let mut child = child;
            let status = child.wait();
            if let Ok(mut f) = File::options().append(true).open(&log_path) {
                let _ = writeln!(f, "podwire lab: {name} ended: {status:?}");
            }
        });
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<()> {
        let data = self.dir.join("etcd");
        let args = [
            "--name=cp".to_string(),
            format!("--data-dir={}", data.display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=cp=http://127.0.0.1:2380".into(),
            "--log-level=warn".into(),
        ];
        self.spawn(ETCD, Path::new("/usr/bin/etcd"), &args)
    }

    /// Starts (or restarts) the API server.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args = vec![
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={API_PORT}"),
            format!("--advertise-address={}", self.address),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            format!("--cert-dir={}", d("apiserver-certs")),
            // The command line names the directory (see stop_all).
            format!("--audit-log-path={}", d("audit.log")),
            "--audit-log-maxsize=10".into(),
        ];
        let program = self.bin.join("kube-apiserver");
        self.spawn(APISERVER, &program, &args)
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let args = vec![
            format!("--kubeconfig={}", self.admin_kubeconfig().display()),
            "--controllers=node-ipam-controller,endpointslice-controller,namespace-controller"
                .into(),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", self.cluster_cidr),
            "--node-cidr-mask-size=24".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        let program = self.bin.join("kube-controller-manager");
        self.spawn(CONTROLLER_MANAGER, &program, &args)
    }

    /// Stops the API server (SIGKILL, as a crash would); etcd and the controller
    /// manager keep running.
    pub fn stop_apiserver(&mut self) {
        kill(self.pids[APISERVER], &self.dir);
        self.pids[APISERVER] = 0;
    }

    /// Waits until the API server answers `/readyz` (90 s: it starts slowly on a
    /// busy machine).
    pub fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(out) if out.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                Ok(out) => bail!("kube-apiserver not ready: {out}"),
                Err(e) => bail!(
                    "kube-apiserver (pid {}: {}) not ready: {e}; its log ends:\n{}",
                    self.pids[APISERVER],
                    process_state(self.pids[APISERVER]),
                    self.log_tail("kube-apiserver")
                ),
            }
        }
    }

    /// The last lines of a program's log.
    pub fn log_tail(&self, program: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{program}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs the module-built `kubectl` as cluster admin inside the control plane's
    /// namespace; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// Runs `kubectl` with `input` on stdin (`kubectl apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(text) = input {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
    }

    /// Merge-patches the status subresource of `kind/name` (in `namespace`, if any)
    /// with `status`, as a kubelet reports it.
    pub fn patch_status(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        status: &serde_json::Value,
    ) -> Result<()> {
        let patch = serde_json::json!({ "status": status }).to_string();
        let mut args = vec![
            "patch",
            kind,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        self.kubectl(&args).map(drop)
    }

    /// Registers Node `name` with `internal_ip` as a kubelet would and waits for its
    /// pod CIDR (30 s): `pod_cidr` when given (a node coming back keeps its block),
    /// else the one the controller manager allocates.
    pub fn register_node(
        &self,
        name: &str,
        internal_ip: Ipv4Addr,
        pod_cidr: Option<ipnet::Ipv4Net>,
    ) -> Result<ipnet::Ipv4Net> {
        let spec = match pod_cidr {
            Some(c) => format!("spec: {{podCIDR: {c}, podCIDRs: [{c}]}}\n"),
            None => String::new(),
        };
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n{spec}"
        ))?;
        self.patch_status(
            "node",
            None,
            name,
            &serde_json::json!({
                "addresses": [{"type": "InternalIP", "address": internal_ip.to_string()}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "LabNode",
                                "message": "a lab node without a kubelet"}],
            }),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cidr = self.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])?;
            if let Ok(net) = cidr.trim().parse() {
                return Ok(net);
            }
            if Instant::now() > deadline {
                bail!(
                    "Node/{name} got no podCIDR from kube-controller-manager; its log ends:\n{}",
                    self.log_tail("kube-controller-manager")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A bearer token of the agent's ServiceAccount (it must exist: apply
    /// deploy/podwire.yaml first).
    pub fn agent_token(&self) -> Result<String> {
        let (ns, sa) = AGENT_SERVICE_ACCOUNT;
        Ok(self
            .kubectl(&["create", "token", sa, "-n", ns, "--duration=2h"])?
            .trim()
            .to_string())
    }

    /// Stops every process of this control plane.
    pub fn stop(&mut self) {
        for pid in self.pids.iter_mut().rev() {
            kill(*pid, &self.dir);
            *pid = 0;
        }
    }
}

/// The state letter of `pid` from `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), or `gone`.
fn process_state(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim().chars().take(1).collect())
        })
        .unwrap_or_else(|| "gone".to_string())
}

/// Whether `pid` is a process whose command line names `dir`.
fn names_dir(pid: u32, dir: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let d = dir.as_os_str().as_encoded_bytes();
    cmd.windows(d.len()).any(|w| w == d)
}

fn kill(pid: u32, dir: &Path) {
    if pid != 0 && names_dir(pid, dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        super::wait_gone(pid);
    }
}

/// Stops every control-plane process whose command line names `dir` (also after
/// a crash, when no state was recorded); returns what it stopped.
pub fn stop_all(dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return stopped;
    };
    for p in procs.filter_map(|e| e.ok()) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let program = cmd.split(|b| *b == 0).next().unwrap_or_default();
        let ours = [&b"etcd"[..], b"kube-apiserver", b"kube-controller-manager"]
            .iter()
            .any(|n| program.ends_with(n));
        if ours && pid != std::process::id() && names_dir(pid, dir) {
            kill(pid, dir);
            stopped.push(format!("{} pid {pid}", String::from_utf8_lossy(program)));
        }
    }
    stopped
}

/// The lab's deployment manifest, applied to the lab's API server so that the agents
/// run under its ServiceAccount and ClusterRole.
pub const DEPLOY_MANIFEST: &str = include_str!("../../../../deploy/podwire.yaml");

/// The host number of the control plane on the lab's underlay (`.250`).
pub const CONTROL_PLANE_HOST: u8 = 250;

/// A lab on the Kubernetes datastore: its control plane and what the lab has put
/// into the API server, so that each change of the lab's state is one sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeLab {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The kubeconfig the agents run with (the agent ServiceAccount's token).
    pub agent_kubeconfig: PathBuf,
    /// Nodes registered.
    pub nodes: std::collections::BTreeSet<String>,
    /// Pods registered (`namespace/name`) with their reported status.
    pub pods: std::collections::BTreeSet<String>,
    /// The namespaces and pods last applied.
    pub applied_pods: String,
    /// The extra manifests last applied.
    pub applied_extras: String,
}

/// `(kind, namespace, name)` of every document in `yaml`.
fn object_refs(yaml: &str) -> Result<Vec<(String, Option<String>, String)>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).context("parsing the lab's extra manifests")?;
    Ok(docs
        .iter()
        .filter(|d| !d.is_null())
        .filter_map(|d| {
            let kind = d.get("kind")?.as_str()?.to_string();
            let meta = d.get("metadata")?;
            let name = meta.get("name")?.as_str()?.to_string();
            let ns = meta
                .get("namespace")
                .and_then(|n| n.as_str())
                .map(str::to_string);
            Some((kind, ns, name))
        })
        .collect())
}

impl KubeLab {
    /// Starts the control plane in `netns` at `address`, applies
    /// [`DEPLOY_MANIFEST`] and writes the agents' kubeconfig into `run_dir`.
    pub fn start(
        netns: &str,
        address: Ipv4Addr,
        run_dir: &Path,
        cluster_cidr: ipnet::Ipv4Net,
    ) -> Result<KubeLab> {
        let cp = ControlPlane::start(netns, address, &run_dir.join("control-plane"), cluster_cidr)?;
        cp.apply(DEPLOY_MANIFEST)
            .context("applying deploy/podwire.yaml")?;
        let agent_kubeconfig = run_dir.join("agent.kubeconfig");
        std::fs::write(
            &agent_kubeconfig,
            kubeconfig(&cp.server(), &cp.ca(), &cp.agent_token()?),
        )?;
        Ok(KubeLab {
            control_plane: cp,
            agent_kubeconfig,
            nodes: Default::default(),
            pods: Default::default(),
            applied_pods: String::new(),
            applied_extras: String::new(),
        })
    }

    /// Brings the API server to the lab's state: registers and deletes nodes,
    /// applies namespaces and pods (reporting new pods' status as a kubelet would),
    /// applies the extra manifests and deletes the objects dropped from them.
    pub fn sync(&mut self, lab: &super::Lab) -> Result<()> {
        let cp = &self.control_plane;
        for n in &lab.nodes {
            match (n.listed, self.nodes.contains(&n.name)) {
                (true, false) => {
                    cp.register_node(&n.name, n.ip, Some(n.pod_cidr))?;
                    self.nodes.insert(n.name.clone());
                }
                (false, true) => {
                    cp.kubectl(&["delete", "node", &n.name, "--ignore-not-found"])?;
                    self.nodes.remove(&n.name);
                }
                _ => {}
            }
        }
        let mut docs = Vec::new();
        // Namespaces applied with `lab apply` keep their labels; the others a pod
        // needs exist plain, as kubectl's namespace of a pod must.
        let namespaces: std::collections::BTreeSet<&str> = std::iter::once(super::POD_NAMESPACE)
            .chain(lab.pods.iter().map(|p| p.namespace.as_str()))
            .filter(|ns| !lab.objects.namespaces.contains_key(*ns))
            .collect();
        for ns in namespaces {
            docs.push(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": ns}}));
        }
        docs.extend(lab.objects.namespace_objects()?);
        for p in &lab.pods {
            // The status is the kubelet's to report (below), not part of the spec.
            let mut doc = super::pod_object(p);
            if let Some(o) = doc.as_object_mut() {
                o.remove("status");
            }
            docs.push(doc);
        }
        let pods =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
        if pods != self.applied_pods {
            cp.apply(&pods)?;
            self.applied_pods = pods;
        }
        for p in &lab.pods {
            let key = format!("{}/{}", p.namespace, p.name);
            if !self.pods.contains(&key) {
                report_pod_running(cp, &p.namespace, &p.name, p.ip)?;
                self.pods.insert(key);
            }
        }
        // What `lab apply` added (the EndpointSlice controller writes the slices
        // here), then the extras.
        let extras = [lab.objects.api_manifests()?, lab.extra_manifests.clone()]
            .into_iter()
            .filter(|y| !y.is_empty())
            .collect::<Vec<_>>()
            .join("---\n");
        if extras != self.applied_extras {
            let wanted = object_refs(&extras)?;
            if !wanted.is_empty() {
                cp.apply(&extras)?;
            }
            for (kind, ns, name) in object_refs(&self.applied_extras)? {
                if !wanted.contains(&(kind.clone(), ns.clone(), name.clone())) {
                    let mut args = vec!["delete", &kind, &name, "--ignore-not-found"];
                    if let Some(ns) = &ns {
                        args.extend(["-n", ns]);
                    }
                    cp.kubectl(&args)?;
                }
            }
            self.applied_extras = extras;
        }
        Ok(())
    }
}

/// Reports pod `namespace/name` running and ready at `ip` through its status, as
/// its kubelet would.
pub fn report_pod_running(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    let ip = ip.to_string();
    cp.patch_status(
        "pod",
        Some(namespace),
        name,
        &serde_json::json!({
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        }),
    )
}

//! End-to-end test harness: network namespaces with a guard, an agent running inside
//! a node namespace, pods created exactly as a container runtime creates them, and
//! echo servers that report the peer address.
//!
//! Safety: every address, route and device lives in namespaces this harness made
//! (random suffixes); the guard deletes them on drop, also when a test panics.
//! Nothing is ever configured in the root namespace.

#![allow(dead_code)]

pub mod dns;
pub mod etcd;
pub mod lab;
pub mod runtime;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PODWIRE: &str = env!("CARGO_BIN_EXE_podwire");
pub const PODWIRE_CNI: &str = env!("CARGO_BIN_EXE_podwire-cni");

/// Whether the tests can run (root, `ip` present). Tests return early otherwise.
pub fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && ip) {
        eprintln!("skipped: end-to-end tests need root and iproute2");
    }
    root && ip
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A random-enough suffix: pid, time and a counter.
pub fn suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{:x}{:x}{n:x}", std::process::id() & 0xffff, t & 0xfffff)
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces created by a test, deleted on drop.
#[derive(Default)]
pub struct NetnsGuard {
    names: std::sync::Mutex<Vec<String>>,
}

impl NetnsGuard {
    /// Creates `pw<tag>-<suffix>` and returns its name.
    pub fn create(&self, tag: &str) -> String {
        let name = format!("pw{tag}-{}", suffix());
        sh(&["ip", "netns", "add", &name]);
        self.names.lock().unwrap().push(name.clone());
        name
    }

    /// Deletes one namespace now.
    pub fn delete(&self, name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        self.names.lock().unwrap().retain(|n| n != name);
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for n in self.names.lock().unwrap().drain(..) {
            let _ = Command::new("ip")
                .args(["netns", "del", &n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The path of a named netns, as a runtime passes it in CNI_NETNS.
pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("podwire-e2e-{}", suffix()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a CNI invocation returned.
#[derive(Debug)]
pub struct CniOutput {
    pub code: i32,
    pub stdout: String,
}

impl CniOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }

    /// The first IP address of an ADD result (`10.244.1.2`).
    pub fn ip(&self) -> Ipv4Addr {
        let j = self.json();
        let a = j["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no ips in {j}"));
        a.split('/').next().unwrap().parse().unwrap()
    }
}

/// A one-node cluster: a node netns running the agent, the installed conflist.
pub struct Cluster {
    pub ns: NetnsGuard,
    pub dir: TempDir,
    pub node_ns: String,
    pub node: String,
    pub cidr: String,
    agent: Option<Child>,
    pub conflist: Value,
}

/// Two-node manifests: this node `node-a` (10.244.1.0/24) and `node-b`.
pub fn manifests(node_b_cidr: &str) -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 192.168.99.1}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-b}}
spec: {{podCIDR: {node_b_cidr}}}
status: {{addresses: [{{type: InternalIP, address: 192.168.99.2}}]}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: default, labels: {{app: web}}}}
"
    )
}

impl Cluster {
    /// Starts the agent in a fresh node netns and installs the CNI conflist.
    pub fn start() -> Cluster {
        let ns = NetnsGuard::default();
        let dir = TempDir::new();
        let node_ns = ns.create("node");
        std::fs::write(dir.0.join("cluster.yaml"), manifests("10.244.2.0/24")).unwrap();
        // Underlay: a dummy device holding the InternalIP inside the node netns.
        sh(&[
            "ip",
            "-n",
            &node_ns,
            "link",
            "add",
            "underlay0",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "underlay1",
        ]);
        sh(&[
            "ip",
            "-n",
            &node_ns,
            "addr",
            "add",
            "192.168.99.1/24",
            "dev",
            "underlay0",
        ]);
        sh(&["ip", "-n", &node_ns, "link", "set", "underlay0", "up"]);
        sh(&["ip", "-n", &node_ns, "link", "set", "lo", "up"]);
        let conf_dir = dir.0.join("net.d");
        let bin_dir = dir.0.join("bin");
        sh(&[
            PODWIRE,
            "install-cni",
            "--conf-dir",
            conf_dir.to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--socket",
            dir.0.join("agent.sock").to_str().unwrap(),
            "--plugin-binary",
            PODWIRE_CNI,
        ]);
        let conflist: Value =
            serde_json::from_slice(&std::fs::read(conf_dir.join("10-podwire.conflist")).unwrap())
                .unwrap();
        let mut c = Cluster {
            ns,
            dir,
            node_ns,
            node: "node-a".into(),
            cidr: "10.244.1.0/24".into(),
            agent: None,
            conflist,
        };
        c.start_agent();
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("agent.sock")
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.dir.0.join("cluster.yaml")
    }

    /// Starts (or restarts) the agent and waits until it answers.
    pub fn start_agent(&mut self) {
        let log = File::create(self.dir.0.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns, PODWIRE, "agent"])
            .arg("--cluster")
            .arg(self.cluster_file())
            .args(["--node", &self.node])
            .arg("--state-dir")
            .arg(self.dir.0.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--reload-interval-ms", "100"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.podwire(&["status"]).is_ok() {
                break;
            }
            if let Some(st) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({st}): {}", self.agent_log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    /// `kill -9` the agent (`ip netns exec` execs, so the child is the agent).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a `podwire` view against the agent.
    pub fn podwire(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(PODWIRE)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `podwire <view> -o json`.
    pub fn view_json(&self, view: &str) -> Value {
        serde_json::from_str(&self.podwire(&[view, "-o", "json"]).unwrap()).unwrap()
    }

    /// The network configuration a runtime on libcni 1.2+ passes for the installed
    /// conflist (cniVersion negotiated from `cniVersions`).
    pub fn net_conf(&self) -> Value {
        podwire_agent::cni::install::plugin_config(&self.conflist).expect("conflist")
    }

    /// Runs the installed plugin as a runtime does.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        netns: Option<&str>,
        stdin: &str,
    ) -> CniOutput {
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", self.dir.0.join("bin").display().to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
            ),
        ];
        if let Some(n) = netns {
            env.push(("CNI_NETNS", netns_path(n)));
        }
        run_plugin(&self.dir.0.join("bin/podwire-cni"), &env, stdin)
    }

    /// Creates a pod netns and ADDs it; returns (netns name, result).
    pub fn add_pod(&self, container: &str) -> (String, CniOutput) {
        let netns = self.ns.create("pod");
        let out = self.cni("ADD", container, Some(&netns), &self.net_conf().to_string());
        assert_eq!(
            out.code,
            0,
            "ADD failed: {} / {}",
            out.stdout,
            self.agent_log()
        );
        (netns, out)
    }

    /// DEL of a pod.
    pub fn del_pod(&self, container: &str, netns: &str) -> CniOutput {
        self.cni("DEL", container, Some(netns), &self.net_conf().to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Runs a plugin binary with exactly `env` (plus PATH) and `stdin`.
pub fn run_plugin(binary: &Path, env: &[(&str, String)], stdin: &str) -> CniOutput {
    assert!(std::fs::metadata(binary).unwrap().permissions().mode() & 0o111 != 0);
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    CniOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// `ip -j <args>` inside `netns`, parsed.
pub fn ip_json(netns: &str, args: &[&str]) -> Value {
    let mut full = vec!["ip", "-n", netns, "-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&sh(&full)).unwrap()
}

/// Runs `f` on a thread inside netns `name` (sockets it creates live there).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = netns_path(name);
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A TCP server in `netns` on `port` that answers each connection with the peer's
/// address and closes; serves `count` connections.
pub fn tcp_peer_reporter(netns: &str, port: u16, count: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(netns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for _ in 0..count {
            let (mut s, peer) = l.accept().unwrap();
            let _ = s.write_all(peer.ip().to_string().as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// Connects from `netns` to `to` and returns what the server said (the peer
/// address it saw).
pub fn tcp_ask(netns: &str, to: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()
}

/// A UDP server in `netns` on `port` that replies to each datagram with the
/// sender's address; serves `count` datagrams.
pub fn udp_peer_reporter(netns: &str, port: u16, count: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(netns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..count {
            let (_, peer) = s.recv_from(&mut buf).unwrap();
            let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// Sends one datagram from `netns` to `to` and returns the reply.
pub fn udp_ask(netns: &str, to: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.send_to(b"who am i", to)?;
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .unwrap()
}

/// Whether `ping -c1` from `netns` to `to` succeeds.
pub fn ping(netns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &to.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

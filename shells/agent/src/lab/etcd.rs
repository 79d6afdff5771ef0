//! The lab on etcd: a 3-member etcd cluster in the lab's own namespaces.
//!
//! Design note: each member is a namespace wired to the underlay bridge like a node
//! (`<prefix>-etcd1..3`, addresses `.241`–`.243` of the underlay), running Debian's
//! `etcd` with its data under the run directory, so `down` finds and stops it by
//! its command line, like the agents. The lab writes the network config once, the
//! agents take their subnets and register their `Node` objects themselves, and
//! every later change of the lab's cluster state (pods, labels, extra manifests) is
//! written with [`writer::replace`] — the same validated, transactional path as
//! `podwire apply`. Tests use the same handle to kill, stop and resume members.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::topology::{self, add_netns, attach_to_underlay};
use crate::control::manifests;
use crate::source::etcd::schema::{Backend, NetworkConfig, DEFAULT_PREFIX};
use crate::source::etcd::{writer, EtcdConfig};

/// Members of the lab's etcd cluster.
pub const MEMBERS: usize = 3;

/// One etcd member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMember {
    /// Member name (`etcd1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address on the underlay.
    pub ip: Ipv4Addr,
    /// The etcd process (0 when stopped).
    pub pid: u32,
}

impl EtcdMember {
    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }
}

/// The lab's etcd cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    /// The members.
    pub members: Vec<EtcdMember>,
    /// The token that keeps this cluster apart from any other.
    pub token: String,
}

/// Runs `f` to completion on a thread inside namespace `netns`, so the etcd
/// client's sockets live in the lab, never in the root namespace.
fn block_on_in<T: Send + 'static>(
    netns: &str,
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    topology::in_netns(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f)
    })?
}

impl LabEtcd {
    /// Creates the members' namespaces on the underlay and starts the cluster;
    /// returns once it has a leader and holds the network config.
    pub fn up(
        prefix: &str,
        underlay: &str,
        underlay_net: ipnet::Ipv4Net,
        mtu: u32,
        run_dir: &Path,
        cluster_cidr: ipnet::Ipv4Net,
    ) -> Result<LabEtcd> {
        let o = underlay_net.network().octets();
        let members: Vec<EtcdMember> = (1..=MEMBERS)
            .map(|i| EtcdMember {
                name: format!("etcd{i}"),
                netns: format!("{prefix}-etcd{i}"),
                ip: Ipv4Addr::new(o[0], o[1], o[2], 240 + i as u8),
                pid: 0,
            })
            .collect();
        let mut etcd = LabEtcd {
            members,
            token: prefix.to_string(),
        };
        for m in etcd.members.clone() {
            add_netns(&m.netns)?;
            attach_to_underlay(underlay, &m.netns, &format!("v{}", m.name), m.ip, mtu)?;
        }
        for i in 0..MEMBERS {
            etcd.start_member(i, run_dir)?;
        }
        let network = NetworkConfig {
            cluster_cidr,
            node_block_prefix: 24,
            backend: Backend::Vxlan,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (config, network) = (etcd.config(), network.clone());
            let init = async move { writer::init(&config, &network).await };
            match block_on_in(&etcd.members[0].netns, init) {
                Ok(_) => return Ok(etcd),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("the lab's etcd cluster did not come up"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The agents' connection settings.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.members.iter().map(EtcdMember::endpoint).collect(),
            prefix: DEFAULT_PREFIX.into(),
            ..EtcdConfig::default()
        }
    }

    /// `--etcd-endpoints` of the agents.
    pub fn endpoints(&self) -> String {
        self.config().endpoints.join(",")
    }

    /// Starts (or restarts, on its data) member `i`, detached, logging to
    /// `<run dir>/etcd/<name>.log`.
    pub fn start_member(&mut self, i: usize, run_dir: &Path) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let m = self.members[i].clone();
        let dir = run_dir.join("etcd");
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", m.name)))?;
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|x| format!("{}={}", x.name, x.peer_url()))
            .collect();
        let child = Command::new("ip")
            .args(["netns", "exec", &m.netns, "etcd"])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(dir.join(&m.name))
            .args(["--listen-client-urls", &m.endpoint()])
            .args(["--advertise-client-urls", &m.endpoint()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting etcd member {}", m.name))?;
        self.members[i].pid = child.id();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }

    /// Sends `signal` to member `i` (SIGKILL also marks it stopped).
    pub fn signal(&mut self, i: usize, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.members[i].pid;
        if pid == 0 {
            bail!("etcd member {} is not running", self.members[i].name);
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signalling etcd member {}", self.members[i].name))?;
        if signal == nix::sys::signal::Signal::SIGKILL {
            self.members[i].pid = 0;
        }
        Ok(())
    }

    /// `etcdctl` against every member, run from member 1's namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoints = format!("--endpoints={}", self.endpoints());
        let mut full = vec![
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            &endpoints,
            "--command-timeout=3s",
        ];
        full.extend_from_slice(args);
        topology::exec(&self.members[0].netns, &full)
    }

    /// The index of the current leader, asking each member that answers.
    pub fn leader(&self) -> Result<usize> {
        for m in &self.members {
            let endpoint = format!("--endpoints={}", m.endpoint());
            let Ok(out) = topology::exec(
                &self.members[0].netns,
                &[
                    "env",
                    "ETCDCTL_API=3",
                    "etcdctl",
                    &endpoint,
                    "--command-timeout=2s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ],
            ) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let leader = v[0]["Status"]["leader"].as_u64();
            let ids = self.member_ids()?;
            if let Some(l) = leader.filter(|l| *l != 0) {
                if let Some(i) = ids.iter().position(|id| *id == l) {
                    return Ok(i);
                }
            }
        }
        bail!("no etcd member knows a leader")
    }

    /// Member ids in member order.
    fn member_ids(&self) -> Result<Vec<u64>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.etcdctl(&["member", "list", "-w", "json"])?)?;
        self.members
            .iter()
            .map(|m| {
                v["members"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == m.name.as_str()))
                    .and_then(|x| x["ID"].as_u64())
                    .with_context(|| format!("member {} not listed", m.name))
            })
            .collect()
    }

    /// Compacts the history up to the current revision.
    pub fn compact(&self) -> Result<i64> {
        let v: serde_json::Value =
            serde_json::from_str(&self.etcdctl(&["get", "/", "-w", "json"])?)?;
        let rev = v["header"]["revision"]
            .as_i64()
            .context("no revision in etcdctl's answer")?;
        self.etcdctl(&["compact", &rev.to_string()])?;
        Ok(rev)
    }

    /// The members, their addresses and whether their process runs.
    pub fn status_table(&self, run_dir: &Path) -> String {
        let mut rows = vec![vec![
            "ETCD".to_string(),
            "NETNS".into(),
            "CLIENT-URL".into(),
            "PROCESS".into(),
        ]];
        for m in &self.members {
            let process = if m.pid != 0 && is_lab_member(m.pid, run_dir) {
                format!("running (pid {})", m.pid)
            } else {
                "stopped".into()
            };
            rows.push(vec![m.name.clone(), m.netns.clone(), m.endpoint(), process]);
        }
        super::table(&rows)
    }

    /// Writes the lab's cluster state (YAML documents): every object but the
    /// nodes, which the agents write themselves. The client runs in member 1's
    /// namespace.
    pub fn write_state(&self, yaml: &str) -> Result<()> {
        let objects = manifests::parse(yaml, Path::new("lab cluster state"))?;
        let objects = objects
            .into_iter()
            .filter(|o| !matches!(o, manifests::Object::Node(_)))
            .collect();
        let objects: Vec<manifests::Object> = objects;
        let config = self.config();
        block_on_in(&self.members[0].netns, async move {
            writer::replace(&config, "lab cluster state", objects).await
        })?;
        Ok(())
    }
}

/// Whether `pid` is an etcd member of the lab in `run_dir`.
pub fn is_lab_member(pid: u32, run_dir: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let data = run_dir.join("etcd");
    let data = data.as_os_str().as_encoded_bytes();
    args.first().is_some_and(|a| a.ends_with(b"etcd")) && args.iter().any(|a| a.starts_with(data))
}

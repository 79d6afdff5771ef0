//! The `podwire` command line, in kubectl style: the agent itself, views that query
//! the agent's socket, `install-cni`, and offline NetworkPolicy tools.
//!
//! Design note: `main.rs` only parses arguments; each subcommand lives in its own module
//! and returns `anyhow::Result`, so every failure reaches the user as one message that
//! names the problem (file, object, field, query), with a non-zero exit status. The
//! views fetch one typed response and render it as an aligned table (the default),
//! JSON or YAML, so scripts get exactly the structure the API carries and people get
//! `kubectl get`-style columns.

pub mod datastore;
pub mod lab;
pub mod output;
pub mod policy;
pub mod show;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use podwire_core::wire::Vni;

/// podwire: Kubernetes pod networking on one allocation-free core.
#[derive(Debug, Parser)]
#[command(name = "podwire", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Options shared by the views.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// The agent's socket.
    #[arg(long, default_value = crate::cni::spec::DEFAULT_SOCKET, env = "PODWIRE_SOCKET")]
    pub socket: PathBuf,
}

/// How to reach the etcd datastore.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// Client URLs of the etcd members, comma-separated (`http://10.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',', env = "PODWIRE_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the cluster's data.
    #[arg(long, default_value = crate::source::etcd::schema::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) of the members.
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The connection settings.
    pub fn config(&self) -> crate::source::etcd::EtcdConfig {
        crate::source::etcd::EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        }
    }
}

/// Options of `podwire agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Where the cluster state comes from.
    #[arg(long, value_enum, default_value_t)]
    pub datastore: crate::source::Datastore,
    /// Kubernetes manifests (file or folder) describing the cluster (`--datastore file`).
    #[arg(long, default_value = "/etc/podwire/cluster.yaml")]
    pub cluster: PathBuf,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The InternalIP this node publishes in its Node object (`--datastore etcd`;
    /// default: the address it reaches the first etcd endpoint from).
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Seconds this node's Node object outlives a dead agent (`--datastore etcd`):
    /// the other nodes drop its routes when it expires.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub etcd_node_ttl_s: u64,
    /// kubeconfig of the API server (`--datastore kubernetes`; default: the in-cluster
    /// configuration of the pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Also publish flannel's Node annotations (`flannel.alpha.coreos.com/*`), so
    /// flannel nodes reach this one (`--datastore kubernetes`).
    #[arg(long, env = "PODWIRE_FLANNEL_INTEROP")]
    pub flannel_interop: bool,
    /// This node's name (defaults to $NODE_NAME, then the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Where IPAM state is kept.
    #[arg(long, default_value = "/var/lib/podwire")]
    pub state_dir: PathBuf,
    /// The API socket (created with mode 0600).
    #[arg(long, default_value = crate::cni::spec::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Underlay MTU (default: the MTU of the device holding the node's InternalIP, else 1500).
    #[arg(long)]
    pub underlay_mtu: Option<u32>,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub reload_interval_ms: u64,
    /// TAP queues per pod interface.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// VXLAN UDP port (flannel-compatible default).
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// VXLAN network identifier, 0 to 16777215 (flannel-compatible default).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=0x00ff_ffff))]
    pub vxlan_vni: u32,
    /// Connection-tracking entries.
    #[arg(long, default_value_t = 65536)]
    pub conntrack_entries: usize,
    /// Busy-poll the dataplane for this many microseconds after traffic before
    /// sleeping (0: off). Cuts cross-node latency by the thread wake-ups it saves, at
    /// the cost of a spinning core while traffic keeps coming within the window.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,
    /// The node-local address cluster DNS serves pods on, and the nameserver CNI
    /// results name (`none`: no DNS server).
    #[arg(long, default_value = "169.254.20.10")]
    pub dns_address: String,
    /// The cluster DNS Service's ClusterIP, answered by this agent without NAT.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns_ip: std::net::Ipv4Addr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// TTL of cluster DNS records, in seconds.
    #[arg(long, default_value_t = crate::dns::config::DEFAULT_TTL)]
    pub dns_ttl: u32,
    /// Upstream resolvers for names outside the cluster domain (IP or IP:port,
    /// comma-separated or repeated; default: the nameservers of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Vec<String>,
    /// UDP sockets per DNS address (SO_REUSEPORT), 1 to 64.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub dns_udp_sockets: u16,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics (`/metrics`), or `off`.
    #[arg(long, default_value = "0.0.0.0:9402", value_parser = parse_listen_address)]
    pub metrics_address: ListenAddress,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, or `off`.
    #[arg(long, default_value = "127.0.0.1:9403", value_parser = parse_listen_address)]
    pub admin_address: ListenAddress,
}

/// A TCP listen address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddress(pub Option<std::net::SocketAddr>);

fn parse_listen_address(s: &str) -> Result<ListenAddress, String> {
    if s == "off" {
        return Ok(ListenAddress(None));
    }
    s.parse()
        .map(|a| ListenAddress(Some(a)))
        .map_err(|_| format!("{s:?} is not an address:port (e.g. 0.0.0.0:9402) or `off`"))
}

/// The DNS settings of `podwire agent`'s flags (`None` for `--dns-address none`).
fn dns_config(a: &AgentArgs) -> anyhow::Result<Option<crate::dns::DnsConfig>> {
    use anyhow::Context as _;
    if a.dns_address == "none" {
        return Ok(None);
    }
    let node_local = a.dns_address.parse().with_context(|| {
        format!(
            "invalid --dns-address {:?}: an IPv4 address or none",
            a.dns_address
        )
    })?;
    let upstreams = if a.dns_upstream.is_empty() {
        crate::dns::config::resolv_conf_upstreams(std::path::Path::new("/etc/resolv.conf"))
    } else {
        a.dns_upstream
            .iter()
            .map(|u| crate::dns::config::parse_upstream(u))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?
    };
    let mut c = crate::dns::DnsConfig::new(
        node_local,
        a.cluster_dns_ip,
        &a.cluster_domain,
        a.dns_ttl,
        upstreams,
    )?;
    c.udp_sockets = usize::from(a.dns_udp_sockets);
    Ok(Some(c))
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// NetworkPolicy tools that work offline on manifests.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// One line per subsystem.
    Status(ViewArgs),
    /// Pods attached on this node.
    Pods(ViewArgs),
    /// Pod CIDR routes of the cluster as this node sees them.
    Routes(ViewArgs),
    /// Pod CIDR usage and allocations.
    Ipam(ViewArgs),
    /// A local cluster of network namespaces: up, status, exec, down, demo.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Recent drops of the datapath, with the reason and, for NetworkPolicy drops,
    /// the policy that isolated the pod.
    Drops(ViewArgs),
    /// Recent flow verdicts of the datapath (new connections and drops).
    Flows {
        /// Only drops (the same as `podwire drops`).
        #[arg(long)]
        drops: bool,
        #[command(flatten)]
        view: ViewArgs,
    },
    /// A node's Prometheus metrics, as Prometheus would scrape them.
    Metrics {
        /// A node of the running lab (its agent's socket is found in the lab's state).
        #[arg(long)]
        node: Option<String>,
        /// The agent's socket (when no `--node` is given).
        #[arg(long, default_value = crate::cni::spec::DEFAULT_SOCKET, env = "PODWIRE_SOCKET")]
        socket: PathBuf,
    },
    /// Create or update the objects of a manifests file or folder in the etcd datastore.
    Apply(datastore::ApplyArgs),
    /// Delete the objects of a manifests file or folder from the etcd datastore.
    Delete(datastore::ApplyArgs),
    /// The etcd datastore's network config.
    #[command(subcommand)]
    Etcd(datastore::EtcdCommand),
    /// Install the CNI conflist and plugin binary (as a DaemonSet init container does).
    InstallCni {
        /// CNI configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// CNI plugin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The agent socket the plugin will use.
        #[arg(long, default_value = crate::cni::spec::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The plugin binary to install (default: `podwire-cni` next to this program).
        #[arg(long)]
        plugin_binary: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into a log file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(cmd) => return policy::run(cmd),
        Command::Lab(cmd) => return lab::run(cmd),
        Command::Apply(a) => datastore::apply(&a, false)?,
        Command::Delete(a) => datastore::apply(&a, true)?,
        Command::Etcd(cmd) => datastore::etcd(&cmd)?,
        Command::Agent(a) => run_agent(*a)?,
        Command::Status(v) => show::status(&v)?,
        Command::Pods(v) => show::pods(&v)?,
        Command::Routes(v) => show::routes(&v)?,
        Command::Ipam(v) => show::ipam(&v)?,
        Command::Drops(v) => show::flows(&v, true)?,
        Command::Flows { drops, view } => show::flows(&view, drops)?,
        Command::Metrics { node, socket } => show::metrics(node.as_deref(), socket)?,
        Command::InstallCni {
            conf_dir,
            bin_dir,
            socket,
            plugin_binary,
        } => {
            let plugin = match plugin_binary {
                Some(p) => p,
                None => crate::cni::install::default_plugin_binary()?,
            };
            let out = crate::cni::install::install(&conf_dir, &bin_dir, &socket, &plugin)?;
            println!("installed {}", out.conflist.display());
            println!("installed {}", out.plugin.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    init_logs(a.log_format);
    let dns = dns_config(&a)?;
    if a.datastore == crate::source::Datastore::Etcd {
        a.etcd.config().validate()?;
    }
    let node = match a.node {
        Some(n) => n,
        None => nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| anyhow::anyhow!("hostname is not UTF-8"))?,
    };
    let config = crate::agent::daemon::AgentConfig {
        datastore: a.datastore,
        cluster: a.cluster,
        etcd: a.etcd.config(),
        node_ip: a.node_ip,
        liveness_ttl: Duration::from_secs(a.etcd_node_ttl_s),
        kubeconfig: a.kubeconfig,
        flannel_interop: a.flannel_interop,
        node,
        state_dir: a.state_dir,
        socket: a.socket,
        underlay_mtu: a.underlay_mtu,
        reload_interval: Duration::from_millis(a.reload_interval_ms.max(50)),
        queues: a.queues,
        vxlan_port: a.vxlan_port,
        vni: Vni::new(a.vxlan_vni).unwrap_or(Vni::DEFAULT),
        conntrack_entries: a.conntrack_entries,
        busy_poll: Duration::from_micros(a.busy_poll_us),
        metrics_address: a.metrics_address.0,
        admin_address: a.admin_address.0,
        dns,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::agent::daemon::run(config))
}

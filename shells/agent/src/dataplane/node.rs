//! The node's datapath: the core `Datapath` sized for a Linux node, running on a
//! dataplane worker, and the control operations the agent performs on it.
//!
//! Design note: the core takes caller-owned storage; the agent allocates it once at
//! start-up and leaks it (`'static`), because the datapath lives for the whole
//! process and is moved onto its worker thread. Every table update is a closure sent
//! to the worker ([`worker::Command::Apply`]), so the datapath is never shared or
//! locked; a read (stats, drop counters) is a closure that answers on a channel.
//! The route table holds: the gateway and the node's own address → host; each local
//! pod /32 → its port; each remote node's pod CIDR → that node (VXLAN to its VTEP);
//! and the default route → host (pods reach everything else through the node).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use ipnet::Ipv4Net;
use podwire_core::conntrack::{self, Bucket, Entry};
use podwire_core::datapath::{
    Action, Datapath, DatapathConfig, DatapathStats, DatapathStorage, DatapathTables, FrameMeta,
    Ingress, PortKind, Span,
};
use podwire_core::ids::{NodeId, PortId};
use podwire_core::maglev::{self, MaglevScratch};
use podwire_core::policy::{
    EndpointPolicy, Identity, IpSlot, PolicyStorage, PolicyTable, PortRange, Prefix, Rule,
};
use podwire_core::route::{
    GatewaySlot, Ipv4Prefix, NextHop, RouteEntry, RouteStorage, RouteTable, TrieNode,
};
use podwire_core::service::{AffinitySlot, BackendSlot, FrontendSlot, ServiceSlot, ServiceStorage};
use podwire_core::vxlan::{Vtep, VtepSlot, VxlanConfig};
use podwire_core::wire::{EthernetAddress, Vni};
use podwire_core::Instant;

use heapless::spsc::Queue;
use podwire_core::datapath::FlowEvent;
use std::sync::Arc;

use super::flows::{FlowLog, Names};
use super::forward::Forwarder;
use super::worker::{self, Command, WorkerHandle};
use crate::control::node_policy::NodePolicy;
use crate::control::services::ServicePlan;

/// Table sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Local ports (host + pods).
    pub ports: usize,
    /// Routes.
    pub routes: usize,
    /// Remote nodes.
    pub vteps: usize,
    /// Tracked connections.
    pub conntrack: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            ports: 1024,
            routes: 4096,
            vteps: 256,
            conntrack: 65536,
        }
    }
}

/// What the datapath needs to know about this node.
#[derive(Debug, Clone, Copy)]
pub struct NodeSetup {
    /// This node's id.
    pub node: NodeId,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The gateway (first address of the pod CIDR).
    pub gateway: Ipv4Addr,
    /// The node's underlay (InternalIP) address.
    pub node_ip: Ipv4Addr,
    /// The underlay MTU.
    pub underlay_mtu: u16,
    /// `podwire0`'s MAC (destination of frames to the host).
    pub host_mac: [u8; 6],
    /// The VXLAN UDP port peers listen on (8472, as flannel, by default).
    pub vxlan_port: u16,
    /// The VXLAN network identifier (1, as flannel, by default).
    pub vni: Vni,
    /// How long the worker busy-polls after traffic before sleeping (zero: never).
    pub busy_poll: std::time::Duration,
}

/// A remote node as the datapath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its id.
    pub id: NodeId,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its VTEP MAC (inner destination MAC): a flannel node publishes it in its
    /// `flannel.alpha.coreos.com/backend-data` annotation; a podwire node's is
    /// [`router_mac`] of its address (the default).
    pub vtep_mac: Option<[u8; 6]>,
}

fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
    Box::leak(vec![value; n].into_boxed_slice())
}

fn prefix(net: Ipv4Net) -> Result<Ipv4Prefix, String> {
    Ipv4Prefix::new(net.network(), net.prefix_len()).map_err(|e| format!("{net}: {e:?}"))
}

/// Sends VXLAN with a zero outer UDP checksum (`SO_NO_CHECK`), as RFC 7348
/// recommends over IPv4 and as the kernel's VXLAN device (flannel) does by default:
/// the inner frame carries its own checksums, and the socket path skips a pass over
/// every payload. UDP GSO runs are the exception: the kernel requires the checksum
/// for them, and [`super::udp::SendBatch`] turns it on for those sends only.
///
/// About source ports: the socket is bound to the VXLAN port (8472), so every
/// datagram leaves from it; the per-flow entropy port the core computes
/// (`Encapsulated::source_port`) is not used on this socket path. Receivers
/// (podwire and the kernel) accept any source port; ECMP spreading across underlay
/// paths needs the raw-underlay path, which writes the core's outer headers as is.
fn no_udp_checksum(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "SO_NO_CHECK on the VXLAN socket");
    }
}

/// The router MAC of a node: locally administered, from its underlay address.
pub fn router_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    [0x0e, 0x58, o[0], o[1], o[2], o[3]]
}

/// Builds the node's datapath over leaked storage of `sizes`.
pub fn build(setup: &NodeSetup, sizes: Sizes) -> Result<Datapath<'static>, String> {
    let layout = RouteTable::<Ipv4Addr>::layout(16, sizes.routes, 16);
    let router = EthernetAddress(router_mac(setup.node_ip));
    let mut vxlan = VxlanConfig::new(IpAddr::V4(setup.node_ip), router);
    vxlan.underlay_mtu = setup.underlay_mtu;
    vxlan.dst_port = setup.vxlan_port;
    vxlan.vni = setup.vni;
    let config = DatapathConfig {
        node: setup.node,
        router_mac: router,
        gateway: setup.gateway,
        pod_cidr: prefix(setup.pod_cidr)?,
        vxlan,
        flow_seed: 0x706f_6477_6972_6521,
    };
    // Each service's Maglev table is sized from its backends (M ≥ 100 · N) up to
    // this prime; the arena holds the smallest table of every service plus room for
    // every backend at twice the ratio (the primes are about powers of two apart).
    let maglev_max = 65_521u32;
    let (services, backends) = (64usize, 512usize);
    let maglev_arena = services * maglev::SIZES[0] as usize + 2 * maglev::RATIO * backends;
    let storage = DatapathStorage {
        ports: leak(None, sizes.ports),
        routes: RouteStorage {
            direct: leak(0u32, layout.direct),
            nodes: leak(TrieNode::default(), layout.nodes),
            leaves: leak(0u32, layout.leaves),
            routes: leak(RouteEntry::default(), layout.routes),
            gateways: leak(GatewaySlot::default(), layout.gateways),
        },
        vteps: leak(VtepSlot::EMPTY, sizes.vteps),
        services: ServiceStorage {
            services: leak(ServiceSlot::EMPTY, services),
            frontends: leak(FrontendSlot::EMPTY, 256),
            backends: leak(BackendSlot::EMPTY, backends),
            maglev: leak(0u16, maglev_arena),
            scratch: leak(MaglevScratch::ZERO, maglev::scratch_len(backends)),
            affinity: leak(AffinitySlot::EMPTY, 1024),
        },
        conntrack_buckets: leak(Bucket::EMPTY, conntrack::buckets_for(sizes.conntrack)),
        conntrack_entries: leak(Entry::EMPTY, sizes.conntrack),
        policy: PolicyStorage {
            addresses: leak(IpSlot::EMPTY, 4096),
            endpoint_policies: leak(EndpointPolicy::default(), 256),
            rules: leak(Rule::EMPTY, 1024),
            ports: leak(PortRange::ANY, 1024),
            peers: leak(Identity(0), 4096),
            prefixes: leak(Prefix::EMPTY, 256),
        },
    };
    let tables = DatapathTables::new(
        storage,
        setup.node,
        maglev_max,
        conntrack::Config::default(),
    )
    .map_err(|e| format!("datapath tables: {e:?}"))?;
    let mut dp = Datapath::new(config, tables);
    // The worker's egress cuts encapsulated super-frames into datagrams itself
    // (`udp::SendBatch::push_segments`), so a pod's 64 KiB TCP segment goes through
    // the core once. `PODWIRE_OVERLAY_GSO=0` segments before the core instead.
    dp.set_overlay_gso(!std::env::var("PODWIRE_OVERLAY_GSO").is_ok_and(|v| v == "0"));
    dp.ports_mut()
        .set(
            super::ports::HOST_PORT,
            PortKind::Host {
                mac: EthernetAddress(setup.host_mac),
            },
        )
        .map_err(|e| format!("host port: {e:?}"))?;
    let r = dp.routes_mut();
    for (p, hop) in [
        (Ipv4Prefix::host(setup.gateway), NextHop::Host),
        (Ipv4Prefix::host(setup.node_ip), NextHop::Host),
        (
            prefix("0.0.0.0/0".parse().expect("literal"))?,
            NextHop::Host,
        ),
    ] {
        r.insert(p, hop).map_err(|e| format!("route: {e:?}"))?;
    }
    Ok(dp)
}

impl Forwarder for Datapath<'static> {
    fn process(&mut self, now: Instant, ingress: Ingress, buf: &mut [u8], frame: Span) -> Action {
        Datapath::process(self, now, ingress, buf, frame)
    }

    fn process_with(
        &mut self,
        now: Instant,
        ingress: Ingress,
        buf: &mut [u8],
        frame: Span,
        meta: FrameMeta,
    ) -> Action {
        Datapath::process_with(self, now, ingress, buf, frame, meta)
    }

    fn tick(&mut self, now: Instant) {
        self.conntrack_mut().expire(now, 4096);
    }
}

/// A snapshot of the datapath's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// What it did.
    pub stats: DatapathStats,
    /// The non-zero drop counters by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// The worker's frame counters.
    pub worker: worker::Counters,
    /// Connection tracking: live entries, capacity, event counters.
    pub conntrack: ConntrackStats,
}

/// Connection tracking's occupancy and counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConntrackStats {
    /// Live connections.
    pub entries: usize,
    /// Connections the table can hold.
    pub capacity: usize,
    /// Inserts, hits, evictions, refusals, expirations.
    pub counters: podwire_core::conntrack::Counters,
}

/// The running dataplane: a worker thread owning the node's datapath.
pub struct Dataplane {
    worker: WorkerHandle<Datapath<'static>>,
    remote: Vec<RemoteNode>,
    flows: FlowLog,
    services: ServicePlan,
}

/// Flow events the datapath can queue before the drain thread takes them.
pub const EVENT_RING: usize = 1024;

/// What installing a policy compilation cost, measured on the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyInstall {
    /// Time to clear and refill the datapath's policy table.
    pub fill: Duration,
    /// The table had to be reallocated (it outgrew its storage).
    pub grew: bool,
}

impl Dataplane {
    /// Builds the datapath and starts its worker with the host port's queue and the
    /// underlay socket (if one could be bound).
    pub fn start(
        setup: &NodeSetup,
        sizes: Sizes,
        host_queue: OwnedFd,
        underlay: Option<UdpSocket>,
    ) -> Result<Dataplane, String> {
        let mut dp = build(setup, sizes)?;
        if let Some(u) = &underlay {
            no_udp_checksum(u);
        }
        // The flow-event ring lives as long as the process, like the tables.
        let ring: &'static mut Queue<FlowEvent, EVENT_RING> = Box::leak(Box::default());
        let (producer, consumer) = ring.split();
        dp.events().connect(producer);
        let flows = FlowLog::default();
        flows.spawn_drain(consumer).map_err(|e| e.to_string())?;
        let worker = worker::spawn(dp, underlay, setup.busy_poll).map_err(|e| e.to_string())?;
        worker
            .send(Command::AddPort(super::ports::HOST_PORT, host_queue))
            .map_err(|e| e.to_string())?;
        Ok(Dataplane {
            worker,
            remote: Vec::new(),
            flows,
            services: ServicePlan::default(),
        })
    }

    /// The flow log (recent verdicts and drops).
    pub fn flows(&self) -> &FlowLog {
        &self.flows
    }

    /// Installs a node's policy compilation into the datapath's policy table (a full
    /// refill, which starts a new policy epoch: tracked connections are re-evaluated
    /// on their next packet). Waits for the worker; the table grows if needed.
    pub async fn install_policy(&self, policy: Arc<NodePolicy>) -> Result<PolicyInstall, String> {
        self.flows.set_names(Names {
            policies: policy.policy_names(),
            pods: policy.pod_names.clone(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.apply(move |dp| {
            let started = std::time::Instant::now();
            let local = |i: usize| policy.local.get(i).copied().unwrap_or(false);
            let mut grew = false;
            let mut result = policy.compiled.fill(dp.policy_mut(), local);
            if result.is_err() {
                // Outgrown: a new table over storage sized for this compilation. The
                // old storage is leaked (growth doubles, so this stays rare).
                *dp.policy_mut() = PolicyTable::new(policy.compiled.leaked_storage());
                grew = true;
                result = policy.compiled.fill(dp.policy_mut(), local);
            }
            let _ = tx.send(result.map(|()| PolicyInstall {
                fill: started.elapsed(),
                grew,
            }));
        });
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r.map_err(|e| format!("policy table: {e:?}")),
            _ => Err("the dataplane worker did not answer".into()),
        }
    }

    /// Makes the datapath's services exactly `plan` (nothing happens if it did not
    /// change). Returns the errors of the entries that did not fit.
    pub async fn install_services(&mut self, plan: ServicePlan) -> Vec<String> {
        if plan == self.services {
            return Vec::new();
        }
        let old = std::mem::replace(&mut self.services, plan.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.apply(move |dp| {
            let t = dp.services_mut();
            let mut errors = Vec::new();
            for e in &old.entries {
                if plan.entries.get(usize::from(e.id.0)) != Some(e) {
                    t.remove_service(e.id);
                }
            }
            for e in &plan.entries {
                if old.entries.get(usize::from(e.id.0)) == Some(e) {
                    continue;
                }
                let r = t
                    .upsert_service(e.id, e.config)
                    .and_then(|()| t.set_backends(e.id, &e.backends))
                    .and_then(|()| e.frontends.iter().try_for_each(|f| t.add_frontend(*f)));
                if let Err(err) = r {
                    t.remove_service(e.id);
                    errors.push(format!("service {}: {err:?}", e.name));
                }
            }
            let _ = tx.send(errors);
        });
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(errors)) => errors,
            _ => vec!["the dataplane worker did not answer".into()],
        }
    }

    fn apply(&self, f: impl FnOnce(&mut Datapath<'static>) + Send + 'static) {
        if let Err(e) = self.worker.send(Command::Apply(Box::new(f))) {
            tracing::error!(error = %e, "dataplane worker");
        }
    }

    /// Registers a pod port: its identity for anti-spoofing, its /32 route, its queue.
    pub fn add_pod(&self, port: PortId, ip: Ipv4Addr, mac: [u8; 6], queue: OwnedFd) {
        self.apply(move |dp| {
            if let Err(e) = dp.ports_mut().set(
                port,
                PortKind::Pod {
                    ip,
                    mac: EthernetAddress(mac),
                },
            ) {
                tracing::error!(port = port.0, error = ?e, "datapath port table");
            }
            if let Err(e) = dp
                .routes_mut()
                .insert(Ipv4Prefix::host(ip), NextHop::Port(port))
            {
                tracing::error!(%ip, error = ?e, "datapath route table");
            }
        });
        if let Err(e) = self.worker.send(Command::AddPort(port, queue)) {
            tracing::error!(error = %e, "dataplane worker");
        }
    }

    /// Unregisters a pod port (its queue is closed by the worker).
    pub fn remove_pod(&self, port: PortId, ip: Ipv4Addr) {
        self.apply(move |dp| {
            let _ = dp.routes_mut().remove(Ipv4Prefix::host(ip));
            dp.ports_mut().remove(port);
        });
        if let Err(e) = self.worker.send(Command::RemovePort(port)) {
            tracing::error!(error = %e, "dataplane worker");
        }
    }

    /// Makes the remote nodes (routes to their pod CIDRs, their VTEPs) exactly `nodes`.
    pub fn set_remote_nodes(&mut self, nodes: Vec<RemoteNode>) {
        if nodes == self.remote {
            return;
        }
        let old = std::mem::replace(&mut self.remote, nodes.clone());
        self.apply(move |dp| {
            for n in &old {
                if let Ok(p) = prefix(n.pod_cidr) {
                    let _ = dp.routes_mut().remove(p);
                }
                let _ = dp.routes_mut().remove(Ipv4Prefix::host(n.ip));
                dp.vteps_mut().remove(n.id);
            }
            for n in &nodes {
                let vtep = Vtep {
                    node: n.id,
                    ip: IpAddr::V4(n.ip),
                    mac: EthernetAddress(n.vtep_mac.unwrap_or_else(|| router_mac(n.ip))),
                };
                // The remote node's own address is reached through the overlay too,
                // so that its host's replies to our pods (sent from its InternalIP
                // through its datapath) pass the overlay's source check, and a
                // pod's traffic to a remote node takes the same path both ways.
                if let Err(e) = dp
                    .routes_mut()
                    .insert(Ipv4Prefix::host(n.ip), NextHop::Node(n.id))
                {
                    tracing::error!(ip = %n.ip, error = ?e, "datapath route table");
                }
                if let Err(e) = dp.vteps_mut().insert(vtep) {
                    tracing::error!(node = n.id.0, error = ?e, "datapath VTEP table");
                }
                match prefix(n.pod_cidr) {
                    Ok(p) => {
                        if let Err(e) = dp.routes_mut().insert(p, NextHop::Node(n.id)) {
                            tracing::error!(cidr = %n.pod_cidr, error = ?e, "datapath route table");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "remote pod CIDR"),
                }
            }
        });
    }

    /// The datapath's counters (waits up to a second for the worker).
    pub fn stats(&self) -> Option<Stats> {
        let (tx, rx) = mpsc::channel();
        let flows = self.flows.clone();
        self.apply(move |dp| {
            flows.set_lost(dp.events().lost());
            let _ = tx.send(Stats {
                stats: dp.stats(),
                drops: dp
                    .drops()
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.name(), n))
                    .collect(),
                worker: Default::default(),
                conntrack: ConntrackStats {
                    entries: dp.tables().conntrack.len(),
                    capacity: dp.tables().conntrack.capacity(),
                    counters: *dp.tables().conntrack.counters(),
                },
            });
        });
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_datapath_uses_the_configured_vxlan_port_and_vni() {
        let setup = NodeSetup {
            node: NodeId(0),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            underlay_mtu: 1500,
            host_mac: [0x0a, 0x58, 10, 244, 1, 1],
            vxlan_port: 4789,
            vni: Vni::new(42).unwrap(),
            busy_poll: std::time::Duration::ZERO,
        };
        let dp = build(&setup, Sizes::default()).unwrap();
        assert_eq!(dp.config().vxlan.dst_port, 4789);
        assert_eq!(dp.config().vxlan.vni, Vni::new(42).unwrap());
        assert_eq!(dp.config().vxlan.pod_mtu(), 1450);
    }
}

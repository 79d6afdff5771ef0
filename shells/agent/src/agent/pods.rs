//! Pod wiring: what ADD, DEL, CHECK and GC do on the node, and re-adoption of pods
//! after an agent restart.
//!
//! Design note: the order of operations is chosen so that a crash (`kill -9`) at any
//! point leaves something DEL can clean up, and nothing that leaks:
//!
//! 1. the address is allocated and the attachment *recorded* first (one durable
//!    write), so every device that may exist afterwards has an owner on disk;
//! 2. the TAP is created *directly inside* the pod's netns under `CNI_IFNAME`, with
//!    its MAC (derived from the pod IP) and MTU set in the same namespace excursion —
//!    creating it in the node's netns and moving it would cost an RCU grace period
//!    (~15 ms) per pod — then addressed, brought up and given its default route in
//!    one netlink session;
//! 3. the port is registered with the dataplane.
//!
//! A failure in step 2 rolls back everything (the device, recognised by its MAC, then
//! the allocation). DEL deletes the device (only if it carries the attachment's MAC),
//! makes the TAP non-persistent so it vanishes with its last queue even if the pod's
//! netns path is already gone, and frees the address last. Re-adoption reopens the queues of every
//! recorded TAP inside its pod's netns; the pod never notices the restart beyond the
//! carrier blip.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use podwire_core::ids::PortId;

use crate::api::{CniRequest, IpamAllocation, IpamReport, PodRow};
use crate::cni::spec::{CniError, CniResult, ErrorCode, Interface, IpConfig, RouteConfig};
use crate::control::ipam::{mac_for, Attachment, AttachmentKey, IpamError, NodeIpam};
use crate::control::node_view::ClusterView;
use crate::dataplane::node::{Dataplane, RemoteNode, Stats};
use crate::dataplane::ports::{Port, PortKind, Ports, HOST_PORT};
use crate::dataplane::tap::TapOptions;
use crate::netlink::{
    format_mac, LinkChange, LinkSetup, Netlink, NetlinkError, Ns, Route, TapIdentity,
};

/// The name of the host port's TAP.
pub const HOST_TAP: &str = "podwire0";

/// How pods are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WiringConfig {
    /// The pods' (and host port's) MTU: underlay MTU − 50.
    pub mtu: u32,
    /// How TAPs are opened.
    pub tap: TapOptions,
}

/// The pod manager.
pub struct Pods<N: Netlink> {
    nl: Arc<N>,
    ipam: NodeIpam,
    ports: Ports,
    config: WiringConfig,
    host_routes: BTreeSet<Ipv4Net>,
    dataplane: Option<Dataplane>,
    dns: Option<crate::dns::DnsConfig>,
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Internal, e.to_string())
}

fn from_ipam(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted(_) => CniError::new(ErrorCode::IpamExhausted, e.to_string()),
        other => internal(other),
    }
}

fn key_of(req: &CniRequest) -> Result<AttachmentKey, CniError> {
    match (&req.container_id, &req.ifname) {
        (Some(c), Some(i)) => Ok(AttachmentKey {
            container_id: c.clone(),
            ifname: i.clone(),
        }),
        _ => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_CONTAINERID and CNI_IFNAME are required",
        )),
    }
}

impl<N: Netlink> Pods<N> {
    /// A manager over `ipam` (already restored from the state dir).
    pub fn new(nl: Arc<N>, ipam: NodeIpam, config: WiringConfig) -> Pods<N> {
        Pods {
            nl,
            ipam,
            ports: Ports::new(),
            config,
            host_routes: BTreeSet::new(),
            dataplane: None,
            dns: None,
        }
    }

    /// The cluster DNS that ADD results name (`None`: results carry no `dns`).
    pub fn set_dns(&mut self, dns: Option<crate::dns::DnsConfig>) {
        self.dns = dns;
    }

    /// The IPAM state.
    pub fn ipam(&self) -> &NodeIpam {
        &self.ipam
    }

    /// The port registry.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The wiring configuration.
    pub fn config(&self) -> WiringConfig {
        self.config
    }

    /// Hands the running dataplane to the manager and registers every attached pod
    /// with it; later ADDs and DELs keep it in step.
    pub fn attach_dataplane(&mut self, dp: Dataplane) {
        for port in self.ports.iter() {
            let PortKind::Pod(_) = port.kind else {
                continue;
            };
            if let Some(q) = port.tap.as_ref().and_then(|t| t.queues().first()) {
                match q.try_clone() {
                    Ok(q) => dp.add_pod(port.id, port.ip, port.mac, q),
                    Err(e) => tracing::error!(port = port.id.0, error = %e, "dup TAP queue"),
                }
            }
        }
        self.dataplane = Some(dp);
    }

    /// The running dataplane, if attached.
    pub fn dataplane(&self) -> Option<&Dataplane> {
        self.dataplane.as_ref()
    }

    /// The running dataplane, to change it.
    pub fn dataplane_mut(&mut self) -> Option<&mut Dataplane> {
        self.dataplane.as_mut()
    }

    /// The host port's first TAP queue (duplicated), for the dataplane.
    pub fn host_queue(&self) -> Option<std::os::fd::OwnedFd> {
        self.ports
            .get(HOST_PORT)
            .and_then(|p| p.tap.as_ref())
            .and_then(|t| t.queues().first())
            .and_then(|q| q.try_clone().ok())
    }

    /// Updates the dataplane's routes and VTEPs for the other nodes.
    pub fn set_remote_nodes(&mut self, nodes: Vec<RemoteNode>) {
        if let Some(dp) = &mut self.dataplane {
            dp.set_remote_nodes(nodes);
        }
    }

    /// The dataplane's counters: `None` without a dataplane, `Some(None)` if the
    /// worker did not answer.
    pub fn dataplane_stats(&self) -> Option<Option<Stats>> {
        self.dataplane.as_ref().map(Dataplane::stats)
    }

    fn prefix(&self) -> Ipv4Net {
        self.ipam.cidr()
    }

    /// Creates (or re-attaches) `podwire0` with the gateway address, and routes the
    /// other nodes' pod CIDRs through it.
    pub async fn ensure_host_port(&mut self, remote_cidrs: &[Ipv4Net]) -> Result<(), NetlinkError> {
        let gw = self.ipam.gateway();
        let mac = mac_for(gw);
        let tap = match self.nl.link(&Ns::Node, HOST_TAP).await? {
            Some(_) => {
                self.nl
                    .attach_tap(&Ns::Node, HOST_TAP, self.config.tap)
                    .await?
            }
            None => {
                let identity = TapIdentity {
                    mac,
                    mtu: self.config.mtu,
                };
                self.nl
                    .create_tap(&Ns::Node, HOST_TAP, identity, self.config.tap)
                    .await?
            }
        };
        self.nl
            .set_link(
                &Ns::Node,
                HOST_TAP,
                &LinkChange {
                    mac: Some(mac),
                    mtu: Some(self.config.mtu),
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let addr = Ipv4Net::new(gw, self.prefix().prefix_len()).unwrap_or(self.prefix());
        self.nl
            .add_address(&Ns::Node, HOST_TAP, IpNet::V4(addr))
            .await?;
        self.ports.insert(Port {
            id: HOST_PORT,
            kind: PortKind::Host,
            ip: gw,
            mac,
            tap: Some(tap),
        });
        self.sync_host_routes(remote_cidrs).await
    }

    /// Makes the routes through `podwire0` exactly `remote_cidrs`.
    pub async fn sync_host_routes(&mut self, remote_cidrs: &[Ipv4Net]) -> Result<(), NetlinkError> {
        let want: BTreeSet<Ipv4Net> = remote_cidrs.iter().copied().collect();
        for stale in self
            .host_routes
            .difference(&want)
            .copied()
            .collect::<Vec<_>>()
        {
            self.nl.delete_route(&Ns::Node, IpNet::V4(stale)).await?;
            self.host_routes.remove(&stale);
        }
        for cidr in want.difference(&self.host_routes.clone()) {
            self.nl
                .replace_route(
                    &Ns::Node,
                    &Route {
                        destination: IpNet::V4(*cidr),
                        gateway: None,
                        device: HOST_TAP.into(),
                    },
                )
                .await?;
            self.host_routes.insert(*cidr);
        }
        Ok(())
    }

    /// The routes installed through `podwire0`.
    pub fn host_routes(&self) -> &BTreeSet<Ipv4Net> {
        &self.host_routes
    }

    /// Reopens the TAP queues of every recorded attachment. Returns the attachments
    /// that could not be re-attached (netns gone, device missing) with the reason;
    /// they stay recorded until DEL or GC.
    pub async fn adopt(&mut self) -> Vec<(AttachmentKey, String)> {
        let mut failed = Vec::new();
        let attachments: Vec<Attachment> = self.ipam.attachments().cloned().collect();
        for a in attachments {
            let ns = Ns::Path(PathBuf::from(&a.netns));
            let tap = if !self.nl.ns_exists(&ns) {
                failed.push((a.key.clone(), format!("{ns} is gone")));
                None
            } else {
                match self
                    .nl
                    .attach_tap(&ns, &a.key.ifname, self.config.tap)
                    .await
                {
                    Ok(t) => Some(t),
                    Err(e) => {
                        failed.push((a.key.clone(), e.to_string()));
                        None
                    }
                }
            };
            self.ports.insert(Port {
                id: PortId(a.port),
                kind: PortKind::Pod(a.key.clone()),
                ip: a.ip,
                mac: a.mac,
                tap,
            });
        }
        failed
    }

    fn result(&self, a: &Attachment) -> CniResult {
        let gw = self.ipam.gateway();
        let prefix = self.prefix().prefix_len();
        CniResult {
            interfaces: vec![Interface {
                name: a.key.ifname.clone(),
                mac: format_mac(a.mac),
                mtu: self.config.mtu,
                sandbox: Some(a.netns.clone()),
            }],
            ips: vec![IpConfig {
                address: IpNet::V4(Ipv4Net::new(a.ip, prefix).unwrap_or(self.prefix())),
                gateway: Some(IpAddr::V4(gw)),
                interface: Some(0),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap_or(IpNet::V4(Ipv4Net::default())),
                gw: Some(IpAddr::V4(gw)),
            }],
            dns: self
                .dns
                .as_ref()
                .map(|d| {
                    let namespace = a.pod.as_ref().map_or("default", |p| p.namespace.as_str());
                    d.pod_dns(namespace)
                })
                .unwrap_or_default(),
        }
    }

    /// ADD: allocate, wire, register. Idempotent for a repeated ADD of an attachment
    /// that is still wired in the same netns.
    pub async fn add(&mut self, req: &CniRequest) -> Result<CniResult, CniError> {
        let key = key_of(req)?;
        let netns = req
            .netns
            .clone()
            .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is required"))?;
        let ns = Ns::Path(PathBuf::from(&netns));
        if !self.nl.ns_exists(&ns) {
            return Err(internal(format!(
                "network namespace {netns} does not exist"
            )));
        }
        if let Some(existing) = self.ipam.get(&key).cloned() {
            let wired = existing.netns == netns
                && self
                    .nl
                    .link(&ns, &key.ifname)
                    .await
                    .map_err(internal)?
                    .is_some_and(|l| l.mac == existing.mac);
            if wired {
                return Ok(self.result(&existing));
            }
            return Err(internal(format!(
                "container {} interface {} is already attached (netns {}); DEL it first",
                key.container_id, key.ifname, existing.netns
            )));
        }
        if self
            .nl
            .link(&ns, &key.ifname)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(internal(format!(
                "interface {} already exists in {netns}",
                key.ifname
            )));
        }
        let pod = req.pod.clone();
        let network = req.network.clone();
        let k2 = key.clone();
        let ns_path = netns.clone();
        let attachment = self
            .ipam
            .attach(key.clone(), move |ip, port| Attachment {
                key: k2,
                network,
                netns: ns_path,
                pod,
                ip,
                mac: mac_for(ip),
                port,
            })
            .map_err(from_ipam)?;
        match self.wire(&attachment, &ns).await {
            Ok(tap) => {
                if let Some(dp) = &self.dataplane {
                    match tap.queues().first().map(|q| q.try_clone()) {
                        Some(Ok(q)) => {
                            dp.add_pod(PortId(attachment.port), attachment.ip, attachment.mac, q)
                        }
                        Some(Err(e)) => tracing::error!(error = %e, "dup TAP queue"),
                        None => {}
                    }
                }
                self.ports.insert(Port {
                    id: PortId(attachment.port),
                    kind: PortKind::Pod(key),
                    ip: attachment.ip,
                    mac: attachment.mac,
                    tap: Some(tap),
                });
                Ok(self.result(&attachment))
            }
            Err(e) => {
                self.unwire(&attachment, None).await;
                self.ipam.detach(&key).map_err(from_ipam)?;
                Err(internal(e))
            }
        }
    }

    async fn wire(
        &self,
        a: &Attachment,
        ns: &Ns,
    ) -> Result<crate::dataplane::tap::Tap, NetlinkError> {
        let identity = TapIdentity {
            mac: a.mac,
            mtu: self.config.mtu,
        };
        let tap = self
            .nl
            .create_tap(ns, &a.key.ifname, identity, self.config.tap)
            .await?;
        let addr = Ipv4Net::new(a.ip, self.prefix().prefix_len()).unwrap_or(self.prefix());
        let setup = LinkSetup {
            address: IpNet::V4(addr),
            default_gateway: Some(IpAddr::V4(self.ipam.gateway())),
        };
        match self.nl.setup_link(ns, &a.key.ifname, &setup).await {
            Ok(()) => Ok(tap),
            Err(e) => {
                let _ = tap.unpersist();
                Err(e)
            }
        }
    }

    /// Removes an attachment's devices wherever they may be; errors are logged, not
    /// returned (DEL must succeed when the pod is already gone).
    async fn unwire(&mut self, a: &Attachment, port: Option<Port>) {
        if let Some(tap) = port.and_then(|p| p.tap) {
            if let Err(e) = tap.unpersist() {
                tracing::warn!(container = %a.key.container_id, error = %e, "unpersist TAP");
            }
            drop(tap);
        }
        let ns = Ns::Path(PathBuf::from(&a.netns));
        if self.nl.ns_exists(&ns) {
            // Only delete CNI_IFNAME if it is ours (our MAC).
            if let Ok(Some(l)) = self.nl.link(&ns, &a.key.ifname).await {
                if l.mac == a.mac {
                    if let Err(e) = self.nl.delete_link(&ns, &a.key.ifname).await {
                        tracing::warn!(container = %a.key.container_id, error = %e, "delete pod interface");
                    }
                }
            }
        }
    }

    /// DEL: idempotent; succeeds for unknown containers and vanished namespaces.
    pub async fn del(&mut self, req: &CniRequest) -> Result<(), CniError> {
        let key = key_of(req)?;
        self.del_key(&key).await
    }

    async fn del_key(&mut self, key: &AttachmentKey) -> Result<(), CniError> {
        let Some(a) = self.ipam.get(key).cloned() else {
            return Ok(());
        };
        if let Some(dp) = &self.dataplane {
            dp.remove_pod(PortId(a.port), a.ip);
        }
        let port = self.ports.remove(PortId(a.port));
        self.unwire(&a, port).await;
        self.ipam.detach(key).map_err(from_ipam)?;
        Ok(())
    }

    /// CHECK: the interface exists in the pod's netns, up, with its MAC, MTU,
    /// address and default route, the dataplane holds its queues, and the previous
    /// result's addresses match.
    pub async fn check(&mut self, req: &CniRequest) -> Result<(), CniError> {
        let key = key_of(req)?;
        let a = self.ipam.get(&key).cloned().ok_or_else(|| {
            CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "container {} interface {} is not attached",
                    key.container_id, key.ifname
                ),
            )
        })?;
        let fail = |m: String| CniError::new(ErrorCode::CheckFailed, m);
        let ns = Ns::Path(PathBuf::from(&a.netns));
        if !self.nl.ns_exists(&ns) {
            return Err(fail(format!("network namespace {} is gone", a.netns)));
        }
        let want =
            IpNet::V4(Ipv4Net::new(a.ip, self.prefix().prefix_len()).unwrap_or(self.prefix()));
        for prev in &req.prev_addresses {
            if *prev != want {
                return Err(fail(format!(
                    "prevResult address {prev} is not the allocated {want}"
                )));
            }
        }
        let link = self
            .nl
            .link(&ns, &key.ifname)
            .await
            .map_err(internal)?
            .ok_or_else(|| fail(format!("interface {} missing in {}", key.ifname, a.netns)))?;
        if link.mac != a.mac {
            return Err(fail(format!(
                "interface {} has MAC {}, expected {}",
                key.ifname,
                format_mac(link.mac),
                format_mac(a.mac)
            )));
        }
        if link.mtu != self.config.mtu {
            return Err(fail(format!(
                "interface {} has MTU {}, expected {}",
                key.ifname, link.mtu, self.config.mtu
            )));
        }
        if !link.up {
            return Err(fail(format!("interface {} is down", key.ifname)));
        }
        if !link.addresses.contains(&want) {
            return Err(fail(format!("address {want} missing on {}", key.ifname)));
        }
        let routes = self.nl.routes(&ns).await.map_err(internal)?;
        let gw = IpAddr::V4(self.ipam.gateway());
        if !routes.iter().any(|r| {
            r.destination.prefix_len() == 0 && r.gateway == Some(gw) && r.device == key.ifname
        }) {
            return Err(fail(format!(
                "default route via {gw} dev {} missing",
                key.ifname
            )));
        }
        if !self.ports.is_attached(PortId(a.port)) {
            return Err(fail(format!(
                "interface {} is not attached to the dataplane",
                key.ifname
            )));
        }
        Ok(())
    }

    /// GC: frees every attachment of `req.network` that is not in the valid list.
    pub async fn gc(&mut self, req: &CniRequest) -> Result<Vec<AttachmentKey>, CniError> {
        let valid: HashSet<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|v| (v.container_id.clone(), v.ifname.clone()))
            .collect();
        let stale: Vec<AttachmentKey> = self
            .ipam
            .attachments()
            .filter(|a| a.network == req.network)
            .filter(|a| !valid.contains(&(a.key.container_id.clone(), a.key.ifname.clone())))
            .map(|a| a.key.clone())
            .collect();
        for k in &stale {
            self.del_key(k).await?;
        }
        Ok(stale)
    }

    /// Rows for `podwire pods`.
    pub fn rows(&self, view: Option<&ClusterView>) -> Vec<PodRow> {
        self.ipam
            .attachments()
            .map(|a| {
                let (namespace, name) = a
                    .pod
                    .as_ref()
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .unwrap_or_default();
                let labels = a
                    .pod
                    .as_ref()
                    .and_then(|p| view.and_then(|v| v.labels(p)))
                    .cloned()
                    .unwrap_or_else(BTreeMap::new);
                PodRow {
                    namespace,
                    name,
                    container_id: a.key.container_id.clone(),
                    ifname: a.key.ifname.clone(),
                    ip: IpAddr::V4(a.ip),
                    mac: format_mac(a.mac),
                    port: a.port,
                    netns: a.netns.clone(),
                    state: if self.ports.is_attached(PortId(a.port)) {
                        "attached".into()
                    } else {
                        "detached".into()
                    },
                    labels,
                }
            })
            .collect()
    }

    /// The report for `podwire ipam`.
    pub fn ipam_report(&self) -> IpamReport {
        IpamReport {
            cidr: Some(IpNet::V4(self.ipam.cidr())),
            gateway: Some(IpAddr::V4(self.ipam.gateway())),
            capacity: self.ipam.capacity(),
            allocated: self.ipam.allocated(),
            allocations: self
                .ipam
                .attachments()
                .map(|a| IpamAllocation {
                    ip: IpAddr::V4(a.ip),
                    container_id: a.key.container_id.clone(),
                    ifname: a.key.ifname.clone(),
                    pod: a
                        .pod
                        .as_ref()
                        .map(|p| format!("{}/{}", p.namespace, p.name))
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PodRef;
    use crate::cni::env::Command;
    use crate::cni::spec::GcAttachment;
    use crate::netlink::fake::{Call, RecordingNetlink};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, Arc<RecordingNetlink>, Pods<RecordingNetlink>) {
        let dir = std::env::temp_dir().join(format!("podwire-pods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ipam = NodeIpam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap();
        let nl = Arc::new(RecordingNetlink::new());
        let pods = Pods::new(
            nl.clone(),
            ipam,
            WiringConfig {
                mtu: 1450,
                tap: TapOptions::default(),
            },
        );
        (Dir(dir), nl, pods)
    }

    fn req(cmd: Command, c: &str) -> CniRequest {
        CniRequest {
            command: cmd,
            network: "podwire".into(),
            container_id: Some(c.into()),
            netns: Some(format!("/run/netns/{c}")),
            ifname: Some("eth0".into()),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: format!("pod-{c}"),
            }),
            prev_addresses: vec![],
            valid_attachments: vec![],
        }
    }

    fn pod_ns(c: &str) -> Ns {
        Ns::Path(PathBuf::from(format!("/run/netns/{c}")))
    }

    #[tokio::test]
    async fn add_wires_in_order_and_returns_the_result() {
        let (_d, nl, mut pods) = setup("add");
        let r = pods.add(&req(Command::Add, "a")).await.unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(r.ips[0].gateway, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(r.interfaces[0].mac, "0a:58:0a:f4:01:02");
        assert_eq!(r.interfaces[0].mtu, 1450);
        let ns = pod_ns("a");
        let calls = nl.calls();
        assert_eq!(
            calls,
            vec![
                Call::CreateTap(
                    ns.clone(),
                    "eth0".into(),
                    TapIdentity {
                        mac: [0x0a, 0x58, 10, 244, 1, 2],
                        mtu: 1450
                    }
                ),
                Call::SetupLink(
                    ns.clone(),
                    "eth0".into(),
                    LinkSetup {
                        address: "10.244.1.2/24".parse().unwrap(),
                        default_gateway: Some("10.244.1.1".parse().unwrap()),
                    }
                ),
            ]
        );
        let links = nl.links_in(&ns);
        assert_eq!(links.len(), 1);
        let (name, state) = &links[0];
        assert_eq!(name, "eth0");
        assert!(state.up);
        assert_eq!(state.mtu, 1450);
        assert_eq!(
            state.addresses,
            vec!["10.244.1.2/24".parse::<IpNet>().unwrap()]
        );
        let routes = nl.routes_in(&ns);
        assert_eq!(routes[0].gateway, Some("10.244.1.1".parse().unwrap()));
        // CHECK passes on a freshly wired pod.
        pods.check(&req(Command::Check, "a")).await.unwrap();
        // A repeated ADD returns the same result without new calls.
        nl.clear_calls();
        let again = pods.add(&req(Command::Add, "a")).await.unwrap();
        assert_eq!(again, r);
        assert!(nl.calls().is_empty());
    }

    #[tokio::test]
    async fn a_failed_step_rolls_everything_back() {
        let (_d, nl, mut pods) = setup("rollback");
        nl.fail_on("SetupLink");
        let e = pods.add(&req(Command::Add, "a")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(pods.ipam().allocated(), 0);
        assert!(nl.links_in(&pod_ns("a")).is_empty());
        assert!(nl.links_in(&Ns::Node).is_empty());
        // And the next ADD works.
        pods.add(&req(Command::Add, "a")).await.unwrap();
    }

    #[tokio::test]
    async fn del_is_idempotent_and_survives_a_vanished_netns() {
        let (_d, nl, mut pods) = setup("del");
        pods.add(&req(Command::Add, "a")).await.unwrap();
        pods.add(&req(Command::Add, "b")).await.unwrap();
        pods.del(&req(Command::Del, "a")).await.unwrap();
        assert!(nl.links_in(&pod_ns("a")).is_empty());
        pods.del(&req(Command::Del, "a")).await.unwrap();
        pods.del(&req(Command::Del, "never-added")).await.unwrap();
        nl.remove_ns(pod_ns("b"));
        pods.del(&req(Command::Del, "b")).await.unwrap();
        assert_eq!(pods.ipam().allocated(), 0);
        assert!(pods.ports().iter().next().is_none());
    }

    #[tokio::test]
    async fn check_reports_what_is_wrong() {
        let (_d, nl, mut pods) = setup("check");
        pods.add(&req(Command::Add, "a")).await.unwrap();
        nl.strip_address(&pod_ns("a"), "eth0", "10.244.1.2/24".parse().unwrap());
        let e = pods.check(&req(Command::Check, "a")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::CheckFailed);
        assert!(e.msg.contains("10.244.1.2/24"), "{}", e.msg);
        let e = pods.check(&req(Command::Check, "zzz")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownContainer);
        let mut r = req(Command::Check, "a");
        r.prev_addresses = vec!["10.244.1.77/24".parse().unwrap()];
        let e = pods.check(&r).await.unwrap_err();
        assert!(e.msg.contains("prevResult"), "{}", e.msg);
    }

    #[tokio::test]
    async fn gc_frees_attachments_not_in_the_valid_list() {
        let (_d, _nl, mut pods) = setup("gc");
        for c in ["a", "b", "c"] {
            pods.add(&req(Command::Add, c)).await.unwrap();
        }
        let mut r = req(Command::Gc, "");
        r.container_id = None;
        r.valid_attachments = vec![GcAttachment {
            container_id: "b".into(),
            ifname: "eth0".into(),
        }];
        let freed = pods.gc(&r).await.unwrap();
        assert_eq!(freed.len(), 2);
        let left: Vec<_> = pods
            .ipam()
            .attachments()
            .map(|a| a.key.container_id.clone())
            .collect();
        assert_eq!(left, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn restart_readopts_recorded_pods() {
        let (d, nl, mut pods) = setup("adopt");
        pods.add(&req(Command::Add, "a")).await.unwrap();
        pods.add(&req(Command::Add, "b")).await.unwrap();
        drop(pods);
        nl.remove_ns(pod_ns("b"));
        let ipam = NodeIpam::open(&d.0, "10.244.1.0/24".parse().unwrap()).unwrap();
        let mut pods = Pods::new(
            nl.clone(),
            ipam,
            WiringConfig {
                mtu: 1450,
                tap: TapOptions::default(),
            },
        );
        let failed = pods.adopt().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0.container_id, "b");
        let rows = pods.rows(None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.iter().filter(|r| r.state == "attached").count(), 1);
        assert!(nl
            .calls()
            .contains(&Call::AttachTap(pod_ns("a"), "eth0".into())));
    }

    #[tokio::test]
    async fn host_port_and_routes_follow_the_cluster() {
        let (_d, nl, mut pods) = setup("host");
        let n2: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let n3: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        pods.ensure_host_port(&[n2, n3]).await.unwrap();
        let host = nl.links_in(&Ns::Node);
        assert_eq!(host[0].0, HOST_TAP);
        assert_eq!(
            host[0].1.addresses,
            vec!["10.244.1.1/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(nl.routes_in(&Ns::Node).len(), 2);
        pods.sync_host_routes(&[n3]).await.unwrap();
        let routes = nl.routes_in(&Ns::Node);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].destination, IpNet::V4(n3));
    }
}

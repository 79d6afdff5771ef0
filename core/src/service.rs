//! Kubernetes Services: frontends → service → backends, and the per-flow choice of a
//! backend.
//!
//! Design note: the datapath asks this table once per *new* flow (connection tracking
//! pins the answer for the rest of the flow), so a lookup must be cheap and
//! allocation-free, and the answer must be the same on every node: frontends are found
//! by open addressing over caller storage keyed by `(IP, port, protocol)` (O(1), no
//! scan), and the backend is chosen by [Maglev](crate::maglev) on the podwire flow hash,
//! whose table is rebuilt whenever the service's backends change. All storage is the
//! caller's ([`ServiceStorage`]): a slot per service, one arena of backends and one of
//! Maglev entries, both kept packed in service-id order (an update shifts an arena, a
//! control-plane cost, never a packet-path one), and an affinity table. Each service's
//! Maglev table is sized from its backend count ([`maglev::size_for`]: `M ≥ 100·N` up
//! to the configured maximum), so a two-backend service costs 251 entries and a
//! thousand-backend one gets the `M/N` that keeps its disruption low. The behaviour follows kube-proxy so a podwire node is a drop-in replacement:
//!
//! * a podwire service is one Kubernetes *service port*: every frontend of that port —
//!   ClusterIP:port, NodePort on the node's addresses (a NodePort frontend with an
//!   unspecified address matches any of the node's own addresses), externalIPs and
//!   LoadBalancer ingress IPs — names the same [`ServiceId`];
//! * eligible backends are the *ready* ones; if none is ready, the serving-and-
//!   terminating ones (KEP-1669); if none at all, the decision is [`Decision::Reject`]
//!   (ICMP port unreachable / TCP RST, as kube-proxy's REJECT);
//! * traffic from outside the cluster to a NodePort or external frontend follows
//!   `externalTrafficPolicy`; everything else follows `internalTrafficPolicy`. `Local`
//!   keeps the client IP and uses only this node's backends (same ready → serving-
//!   terminating fallback); if there is none the packet is dropped
//!   ([`Decision::Drop`]), as kube-proxy does. `Cluster` for external traffic needs
//!   SNAT to the node (so replies come back through it); so does hairpin traffic
//!   (a pod reaching itself through its service);
//! * among this node's backends (`Local`), the choice is rendezvous hashing (highest
//!   `fmix64(flow_hash ^ identity)`): consistent too, and it needs no second table,
//!   because the local backends are few and stored first in the service's arena range;
//! * `sessionAffinity: ClientIP` pins `(service, client IP)` to a backend for the
//!   timeout (default 10800 s), refreshed by each new flow like iptables' `recent`
//!   match. The affinity table is a bounded-probe hash table over caller storage:
//!   expired entries are reused lazily; if all [`AFFINITY_PROBE`] slots of a key's
//!   window are live, the one expiring first is evicted (counted): affinity is a
//!   best effort that never makes a lookup fail.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flow::fmix64;
use crate::ids::NodeId;
use crate::maglev::{self, MaglevBackend, MaglevError, MaglevScratch};
use crate::{Duration, Instant};

/// A service (one Kubernetes service port), dense from 0: the index of its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServiceId(pub u16);

/// How many slots of the affinity table one `(service, client)` key may occupy.
pub const AFFINITY_PROBE: usize = 8;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// What kind of address a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrontendKind {
    /// The service's ClusterIP.
    ClusterIp,
    /// A NodePort on one of this node's addresses (or on all of them, if the
    /// frontend's address is unspecified).
    NodePort,
    /// An externalIP or a LoadBalancer ingress IP.
    External,
}

/// One address at which a service is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frontend {
    /// The address (`0.0.0.0` / `::` for a NodePort on every node address).
    pub addr: IpAddr,
    /// The port (the service port, or the node port).
    pub port: u16,
    /// The IP protocol number (`crate::flow::PROTO_*`).
    pub protocol: u8,
    /// The kind of frontend.
    pub kind: FrontendKind,
    /// The service behind it.
    pub service: ServiceId,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrafficPolicy {
    /// Any backend of the cluster.
    #[default]
    Cluster,
    /// Only backends on this node; the client IP is kept.
    Local,
}

/// The settings of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServiceConfig {
    /// `sessionAffinity: ClientIP` with its timeout (`None`: no affinity).
    pub affinity: Option<Duration>,
    /// `externalTrafficPolicy`.
    pub external_policy: TrafficPolicy,
    /// `internalTrafficPolicy`.
    pub internal_policy: TrafficPolicy,
}

/// EndpointSlice conditions of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Conditions {
    /// Ready to receive new connections.
    pub ready: bool,
    /// Serving (ready, regardless of terminating).
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
}

impl Conditions {
    /// A ready backend (ready, serving, not terminating).
    pub const READY: Conditions = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
}

/// One backend of a service: a pod's `IP:targetPort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Backend {
    /// The pod IP.
    pub addr: IpAddr,
    /// The target port.
    pub port: u16,
    /// The node the pod runs on.
    pub node: NodeId,
    /// Its conditions.
    pub conditions: Conditions,
}

/// A new flow, as the datapath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServiceQuery {
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Source (client) address.
    pub client: IpAddr,
    /// The podwire flow hash of the flow (`FlowKey::hash`).
    pub flow_hash: u64,
    /// `dst` is one of this node's own addresses (NodePort frontends with an
    /// unspecified address match only then).
    pub to_node_address: bool,
    /// The source is outside the cluster (not a pod or node): NodePort and external
    /// frontends then follow `externalTrafficPolicy`.
    pub from_external: bool,
}

/// Where a new flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Forward {
    /// The service.
    pub service: ServiceId,
    /// The backend's address (DNAT destination).
    pub backend: IpAddr,
    /// The backend's port.
    pub port: u16,
    /// The backend's node.
    pub node: NodeId,
    /// The backend runs on this node.
    pub local: bool,
    /// Source NAT to the node is needed (external traffic under `Cluster` policy, or
    /// hairpin).
    pub snat: bool,
}

/// The decision for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Decision {
    /// DNAT to a backend.
    Forward(Forward),
    /// The service has no usable backend: answer ICMP port unreachable / TCP RST.
    Reject(ServiceId),
    /// A `Local` policy applies and this node has no usable backend: drop silently.
    Drop(ServiceId),
    /// No frontend matches: not service traffic.
    NoService,
}

/// What was wrong with a service-table operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ServiceError {
    /// The service id is not below the number of service slots.
    ServiceIdOutOfRange,
    /// The service does not exist.
    UnknownService,
    /// The frontend table has no free slot.
    FrontendTableFull,
    /// The backend arena has no room for the new backends.
    BackendStorageFull,
    /// More backends than the Maglev size or the scratch allows for one service.
    TooManyBackends,
    /// The Maglev storage is shorter than one smallest table per service
    /// (`services × maglev::size_for(1, max)`).
    MaglevStorageTooSmall,
    /// The Maglev arena has no room for the service's table at the size its backends
    /// need.
    MaglevStorageFull,
    /// The Maglev size or scratch was rejected.
    Maglev(MaglevError),
}

impl From<MaglevError> for ServiceError {
    fn from(e: MaglevError) -> Self {
        ServiceError::Maglev(e)
    }
}

/// Storage slot of one service (caller-owned; start from [`ServiceSlot::EMPTY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServiceSlot {
    config: Option<ServiceConfig>,
    /// Range of its backends in the arena.
    start: u32,
    len: u32,
    /// Backends `start .. start + local_len` are this node's eligible backends.
    local_len: u32,
    /// Number of cluster-eligible backends (in the Maglev table).
    cluster_len: u32,
    /// Bumped on every change of the backends (validates affinity indices).
    generation: u32,
    /// Range of its Maglev table in the Maglev arena (length 0: no cluster backend).
    table_start: u32,
    table_len: u32,
}

impl ServiceSlot {
    /// An unused slot.
    pub const EMPTY: ServiceSlot = ServiceSlot {
        config: None,
        start: 0,
        len: 0,
        local_len: 0,
        cluster_len: 0,
        generation: 0,
        table_start: 0,
        table_len: 0,
    };
}

/// Storage slot of one frontend (caller-owned; start from [`FrontendSlot::EMPTY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrontendSlot(Option<Frontend>);

impl FrontendSlot {
    /// An unused slot.
    pub const EMPTY: FrontendSlot = FrontendSlot(None);
}

/// Storage slot of one backend (caller-owned; start from [`BackendSlot::EMPTY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BackendSlot {
    backend: Backend,
    identity: u64,
    in_cluster: bool,
}

impl BackendSlot {
    /// An unused slot.
    pub const EMPTY: BackendSlot = BackendSlot {
        backend: Backend {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            node: NodeId(0),
            conditions: Conditions {
                ready: false,
                serving: false,
                terminating: false,
            },
        },
        identity: 0,
        in_cluster: false,
    };

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Affinity {
    service: ServiceId,
    client: IpAddr,
    backend: IpAddr,
    port: u16,
    index: u32,
    generation: u32,
    expires: Instant,
}

/// Storage slot of one session-affinity entry (caller-owned; start from
/// [`AffinitySlot::EMPTY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AffinitySlot(Option<Affinity>);

impl AffinitySlot {
    /// An unused slot.
    pub const EMPTY: AffinitySlot = AffinitySlot(None);
}

/// The caller's storage for a [`ServiceTable`].
#[derive(Debug)]
pub struct ServiceStorage<'a> {
    /// One slot per service; [`ServiceId`]s index it.
    pub services: &'a mut [ServiceSlot],
    /// The frontend hash table (keep it under ~70 % full for short probes).
    pub frontends: &'a mut [FrontendSlot],
    /// The backends of all services together.
    pub backends: &'a mut [BackendSlot],
    /// The Maglev arena: every service's table, each [`maglev::size_for`] its
    /// cluster backends. At least `services.len() × maglev::size_for(1, max)`; for
    /// services with many backends, more (a service of `N` backends needs
    /// `size_for(N, max)`).
    pub maglev: &'a mut [u16],
    /// Maglev build scratch: `maglev::scratch_len(B)` cells allow `B` backends per
    /// service.
    pub scratch: &'a mut [MaglevScratch],
    /// The session-affinity table (may be empty if no service uses affinity).
    pub affinity: &'a mut [AffinitySlot],
}

/// Counters of a [`ServiceTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServiceStats {
    /// Live affinity entries evicted because their probe window was full.
    pub affinity_evictions: u64,
}

/// Services, their frontends and backends, over caller storage.
#[derive(Debug)]
pub struct ServiceTable<'a> {
    s: ServiceStorage<'a>,
    max_m: u32,
    local_node: NodeId,
    used_backends: usize,
    used_maglev: usize,
    stats: ServiceStats,
}

/// The frontend key hash.
fn frontend_hash(addr: IpAddr, port: u16, protocol: u8) -> u64 {
    let (hi, lo, family) = address_words(addr);
    let h = fmix64(0x6672_6f6e_7465_6e64 ^ hi);
    let h = fmix64(h ^ lo);
    fmix64(h ^ (u64::from(port) | u64::from(protocol) << 16 | family << 24))
}

/// The affinity key hash.
fn affinity_hash(service: ServiceId, client: IpAddr) -> u64 {
    let (hi, lo, family) = address_words(client);
    let h = fmix64(0x6166_6669_6e69_7479 ^ hi);
    let h = fmix64(h ^ lo);
    fmix64(h ^ (u64::from(service.0) | family << 16))
}

fn address_words(addr: IpAddr) -> (u64, u64, u64) {
    match addr {
        IpAddr::V4(a) => (u64::from(u32::from_be_bytes(a.octets())), 0, 4),
        IpAddr::V6(a) => {
            let v = u128::from_be_bytes(a.octets());
            ((v >> 64) as u64, v as u64, 6)
        }
    }
}

/// Gives the range `start..start + old_len` of an arena packed up to `used` the length
/// `new_len`, moving everything after it (the caller has checked that it fits).
fn resize_range<T: Copy>(
    arena: &mut [T],
    used: usize,
    start: usize,
    old_len: usize,
    new_len: usize,
) {
    if old_len != new_len {
        arena.copy_within(start + old_len..used, start + new_len);
    }
}

/// Moves the arena start (`start_of`) of each of the `later` services by the change of
/// a range before them from `old_len` to `new_len`.
fn shift_starts(
    later: &mut [ServiceSlot],
    old_len: usize,
    new_len: usize,
    start_of: fn(&mut ServiceSlot) -> &mut u32,
) {
    if old_len != new_len {
        for s in later {
            let start = start_of(s);
            *start = (*start as usize + new_len - old_len) as u32;
        }
    }
}

/// `hash` reduced to `0..len` (multiply-shift), `len > 0`.
fn home(hash: u64, len: usize) -> usize {
    (((hash >> 32) * (len as u64 & 0xffff_ffff)) >> 32) as usize
}

fn unspecified(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The instant `d` after `t`, saturating.
fn after(t: Instant, d: Duration) -> Instant {
    let d = i64::try_from(d.total_micros()).unwrap_or(i64::MAX);
    Instant::from_micros(t.total_micros().saturating_add(d))
}

impl<'a> ServiceTable<'a> {
    /// A table over `storage` whose Maglev tables are at most `max_maglev_size`
    /// entries (prime: e.g. 251 on a microcontroller, where every table then has that
    /// size, or 1048573 on Linux), on the node `local_node`. Service, frontend and
    /// affinity slots are cleared.
    pub fn new(
        storage: ServiceStorage<'a>,
        max_maglev_size: u32,
        local_node: NodeId,
    ) -> Result<Self, ServiceError> {
        let max_m = maglev::check_size(max_maglev_size as usize)?;
        let smallest = maglev::size_for(1, max_m) as usize;
        let needed = smallest.checked_mul(storage.services.len());
        if needed.is_none_or(|n| storage.maglev.len() < n) {
            return Err(ServiceError::MaglevStorageTooSmall);
        }
        if storage.scratch.len() < maglev::scratch_len(0) {
            return Err(MaglevError::ScratchTooSmall.into());
        }
        let s = storage;
        s.services.fill(ServiceSlot::EMPTY);
        s.frontends.fill(FrontendSlot::EMPTY);
        s.affinity.fill(AffinitySlot::EMPTY);
        s.maglev.fill(maglev::EMPTY);
        Ok(ServiceTable {
            s,
            max_m,
            local_node,
            used_backends: 0,
            used_maglev: 0,
            stats: ServiceStats::default(),
        })
    }

    /// The largest Maglev table size.
    pub fn max_maglev_size(&self) -> u32 {
        self.max_m
    }

    /// The size `M` of service `id`'s Maglev table (0 while it has no cluster
    /// backend), or `None` if the id is out of range.
    pub fn maglev_size(&self, id: ServiceId) -> Option<u32> {
        self.slot(id).ok().map(|s| s.table_len)
    }

    /// The most backends one service may have.
    pub fn max_backends_per_service(&self) -> usize {
        (self.s.scratch.len() - maglev::TAIL.min(self.s.scratch.len()))
            .min(self.max_m as usize)
            .min(maglev::MAX_BACKENDS)
    }

    /// Counters.
    pub fn stats(&self) -> ServiceStats {
        self.stats
    }

    fn slot(&self, id: ServiceId) -> Result<&ServiceSlot, ServiceError> {
        self.s
            .services
            .get(usize::from(id.0))
            .ok_or(ServiceError::ServiceIdOutOfRange)
    }

    /// Creates service `id` (without backends) or updates its settings.
    pub fn upsert_service(
        &mut self,
        id: ServiceId,
        config: ServiceConfig,
    ) -> Result<(), ServiceError> {
        let slot = self
            .s
            .services
            .get_mut(usize::from(id.0))
            .ok_or(ServiceError::ServiceIdOutOfRange)?;
        slot.config = Some(config);
        Ok(())
    }

    /// The settings of service `id`, if it exists.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceConfig> {
        self.slot(id).ok()?.config.as_ref()
    }

    /// Removes service `id` with its backends and frontends. Returns whether it
    /// existed.
    pub fn remove_service(&mut self, id: ServiceId) -> bool {
        if self.service(id).is_none() {
            return false;
        }
        // Cannot fail: an empty backend list always fits.
        let _ = self.set_backends(id, &[]);
        let mut i = 0;
        while i < self.s.frontends.len() {
            match self.s.frontends.get(i) {
                Some(FrontendSlot(Some(f))) if f.service == id => self.delete_frontend_at(i),
                _ => i += 1,
            }
        }
        if let Some(slot) = self.s.services.get_mut(usize::from(id.0)) {
            slot.config = None;
        }
        true
    }

    /// The backends of service `id` (this node's eligible ones first).
    pub fn backends(&self, id: ServiceId) -> impl Iterator<Item = &Backend> {
        let (start, len) = match self.slot(id) {
            Ok(s) => (s.start as usize, s.len as usize),
            Err(_) => (0, 0),
        };
        self.s
            .backends
            .iter()
            .skip(start)
            .take(len)
            .map(|b| &b.backend)
    }

    /// Replaces the backends of service `id` and rebuilds its Maglev table, at the
    /// size its cluster backends need ([`maglev::size_for`]). Duplicates are kept (the
    /// control plane should remove them). On an error nothing changed.
    pub fn set_backends(
        &mut self,
        id: ServiceId,
        backends: &[Backend],
    ) -> Result<(), ServiceError> {
        let idx = usize::from(id.0);
        let slot = *self.slot(id)?;
        if slot.config.is_none() {
            return Err(ServiceError::UnknownService);
        }
        let n = backends.len();
        if n > self.max_backends_per_service() {
            return Err(ServiceError::TooManyBackends);
        }
        let old_len = slot.len as usize;
        let new_used = self.used_backends - old_len + n;
        if new_used > self.s.backends.len() {
            return Err(ServiceError::BackendStorageFull);
        }

        // Eligibility tiers: ready, else serving-and-terminating; cluster-wide and
        // among this node's backends separately.
        let local_node = self.local_node;
        let fallback = |b: &Backend| b.conditions.serving && b.conditions.terminating;
        let any_ready = backends.iter().any(|b| b.conditions.ready);
        let any_local_ready = backends
            .iter()
            .any(|b| b.conditions.ready && b.node == local_node);
        let in_cluster = |b: &Backend| {
            if any_ready {
                b.conditions.ready
            } else {
                fallback(b)
            }
        };
        let in_local = |b: &Backend| {
            b.node == local_node
                && if any_local_ready {
                    b.conditions.ready
                } else {
                    fallback(b)
                }
        };
        let cluster_len = backends.iter().filter(|b| in_cluster(b)).count();
        let table_len = match cluster_len {
            0 => 0,
            c => maglev::size_for(c, self.max_m) as usize,
        };
        let old_table_len = slot.table_len as usize;
        let new_used_maglev = self.used_maglev - old_table_len + table_len;
        if new_used_maglev > self.s.maglev.len() {
            return Err(ServiceError::MaglevStorageFull);
        }

        // Shift the backends and Maglev tables of the services after this one.
        let later = self.s.services.get_mut(idx + 1..).unwrap_or_default();
        let start = slot.start as usize;
        let new_end = start + n;
        resize_range(self.s.backends, self.used_backends, start, old_len, n);
        shift_starts(later, old_len, n, |s| &mut s.start);
        self.used_backends = new_used;
        let table_start = slot.table_start as usize;
        let new_table_end = table_start + table_len;
        resize_range(
            self.s.maglev,
            self.used_maglev,
            table_start,
            old_table_len,
            table_len,
        );
        shift_starts(later, old_table_len, table_len, |s| &mut s.table_start);
        self.used_maglev = new_used_maglev;

        let range = self
            .s
            .backends
            .get_mut(start..new_end)
            .ok_or(ServiceError::BackendStorageFull)?;
        let mut w = 0;
        for pass_local in [true, false] {
            for b in backends.iter().filter(|b| in_local(b) == pass_local) {
                if let Some(slot) = range.get_mut(w) {
                    *slot = BackendSlot {
                        backend: *b,
                        identity: maglev::backend_identity(b.addr, b.port),
                        in_cluster: in_cluster(b),
                    };
                    w += 1;
                }
            }
            if pass_local {
                if let Some(s) = self.s.services.get_mut(idx) {
                    s.local_len = w as u32;
                }
            }
        }

        // Rebuild the Maglev table.
        let table = self
            .s
            .maglev
            .get_mut(table_start..new_table_end)
            .ok_or(ServiceError::MaglevStorageFull)?;
        if !table.is_empty() {
            let arena = &*range;
            maglev::build_with(
                table,
                n,
                |i| match arena.get(i) {
                    Some(b) => MaglevBackend::new(b.identity, u16::from(b.in_cluster)),
                    None => MaglevBackend::new(0, 0),
                },
                self.s.scratch,
            )?;
        }
        if let Some(s) = self.s.services.get_mut(idx) {
            s.len = n as u32;
            s.cluster_len = cluster_len as u32;
            s.table_len = table_len as u32;
            s.generation = s.generation.wrapping_add(1);
        }
        Ok(())
    }

    fn find_frontend(&self, addr: IpAddr, port: u16, protocol: u8) -> Option<usize> {
        let len = self.s.frontends.len();
        if len == 0 {
            return None;
        }
        let mut i = home(frontend_hash(addr, port, protocol), len);
        for _ in 0..len {
            match self.s.frontends.get(i)?.0 {
                None => return None,
                Some(f) if f.addr == addr && f.port == port && f.protocol == protocol => {
                    return Some(i)
                }
                Some(_) => {}
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
        None
    }

    /// Adds a frontend, or replaces the one with the same `(addr, port, protocol)`.
    /// The service must exist.
    pub fn add_frontend(&mut self, frontend: Frontend) -> Result<(), ServiceError> {
        if self.service(frontend.service).is_none() {
            return Err(ServiceError::UnknownService);
        }
        if let Some(i) = self.find_frontend(frontend.addr, frontend.port, frontend.protocol) {
            if let Some(slot) = self.s.frontends.get_mut(i) {
                slot.0 = Some(frontend);
            }
            return Ok(());
        }
        let len = self.s.frontends.len();
        if len == 0 {
            return Err(ServiceError::FrontendTableFull);
        }
        let mut i = home(
            frontend_hash(frontend.addr, frontend.port, frontend.protocol),
            len,
        );
        // Keep one slot free so that unsuccessful probes always end at an empty one.
        let used = self.s.frontends.iter().filter(|f| f.0.is_some()).count();
        if used + 1 >= len {
            return Err(ServiceError::FrontendTableFull);
        }
        loop {
            match self.s.frontends.get_mut(i) {
                Some(slot) if slot.0.is_none() => {
                    slot.0 = Some(frontend);
                    return Ok(());
                }
                Some(_) => {}
                None => return Err(ServiceError::FrontendTableFull),
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
    }

    /// Removes the frontend `(addr, port, protocol)`; returns it if it existed.
    pub fn remove_frontend(&mut self, addr: IpAddr, port: u16, protocol: u8) -> Option<Frontend> {
        let i = self.find_frontend(addr, port, protocol)?;
        let f = self.s.frontends.get(i)?.0;
        self.delete_frontend_at(i);
        f
    }

    /// Empties slot `i` and shifts later entries of the probe run back (no tombstones).
    fn delete_frontend_at(&mut self, mut i: usize) {
        let len = self.s.frontends.len();
        if let Some(slot) = self.s.frontends.get_mut(i) {
            slot.0 = None;
        }
        let mut j = i;
        for _ in 0..len {
            j += 1;
            if j == len {
                j = 0;
            }
            let Some(FrontendSlot(Some(f))) = self.s.frontends.get(j).copied() else {
                return;
            };
            let k = home(frontend_hash(f.addr, f.port, f.protocol), len);
            // Entry j may move to the hole i if its home is not cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.s.frontends.swap(i, j);
                i = j;
            }
        }
    }

    /// The frontend matching `(dst, port, protocol)`; NodePorts on every node address
    /// also when `to_node_address`.
    pub fn frontend(
        &self,
        dst: IpAddr,
        port: u16,
        protocol: u8,
        to_node_address: bool,
    ) -> Option<&Frontend> {
        let i = self.find_frontend(dst, port, protocol).or_else(|| {
            if to_node_address {
                self.find_frontend(unspecified(dst), port, protocol)
                    .filter(|&i| {
                        matches!(self.s.frontends.get(i),
                            Some(FrontendSlot(Some(f))) if f.kind == FrontendKind::NodePort)
                    })
            } else {
                None
            }
        })?;
        self.s.frontends.get(i)?.0.as_ref()
    }

    /// Chooses the backend of a new flow. `&mut` because session affinity records
    /// the choice.
    pub fn lookup(&mut self, q: &ServiceQuery, now: Instant) -> Decision {
        let Some(&fe) = self.frontend(q.dst, q.dst_port, q.protocol, q.to_node_address) else {
            return Decision::NoService;
        };
        let id = fe.service;
        let Ok(&slot) = self.slot(id) else {
            return Decision::NoService;
        };
        let Some(config) = slot.config else {
            return Decision::NoService;
        };
        let external = fe.kind != FrontendKind::ClusterIp && q.from_external;
        let policy = if external {
            config.external_policy
        } else {
            config.internal_policy
        };
        let local_only = policy == TrafficPolicy::Local;
        if local_only && slot.local_len == 0 {
            return if slot.len > 0 {
                Decision::Drop(id)
            } else {
                Decision::Reject(id)
            };
        }
        if !local_only && slot.cluster_len == 0 {
            return Decision::Reject(id);
        }

        let pinned = match config.affinity {
            Some(_) => self.affinity_get(id, &slot, q.client, local_only, now),
            None => None,
        };
        let index = match pinned {
            Some(i) => Some(i),
            None if local_only => self.rendezvous(&slot, q.flow_hash),
            None => {
                let start = slot.table_start as usize;
                self.s
                    .maglev
                    .get(start..start + slot.table_len as usize)
                    .and_then(|t| maglev::lookup(t, q.flow_hash))
                    .map(u32::from)
            }
        };
        let Some(index) = index else {
            return Decision::Reject(id);
        };
        let Some(b) = self
            .s
            .backends
            .get(slot.start as usize + index as usize)
            .map(|b| b.backend)
        else {
            return Decision::Reject(id);
        };
        if let Some(timeout) = config.affinity {
            self.affinity_put(id, &slot, q.client, &b, index, after(now, timeout), now);
        }
        Decision::Forward(Forward {
            service: id,
            backend: b.addr,
            port: b.port,
            node: b.node,
            local: b.node == self.local_node,
            snat: (external && policy == TrafficPolicy::Cluster) || b.addr == q.client,
        })
    }

    /// Rendezvous choice among this node's eligible backends of a service.
    fn rendezvous(&self, slot: &ServiceSlot, flow_hash: u64) -> Option<u32> {
        let start = slot.start as usize;
        let local = self
            .s
            .backends
            .get(start..start + slot.local_len as usize)?;
        let mut best: Option<(u64, u32)> = None;
        for (i, b) in local.iter().enumerate() {
            let score = fmix64(flow_hash ^ b.identity);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i as u32));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether backend `index` of a service is eligible under the policy in force.
    fn eligible(&self, slot: &ServiceSlot, index: u32, local_only: bool) -> bool {
        if index >= slot.len {
            return false;
        }
        if local_only {
            return index < slot.local_len;
        }
        self.s
            .backends
            .get(slot.start as usize + index as usize)
            .is_some_and(|b| b.in_cluster)
    }

    fn affinity_window(&self, id: ServiceId, client: IpAddr) -> impl Iterator<Item = usize> {
        let len = self.s.affinity.len();
        let h = if len == 0 {
            0
        } else {
            home(affinity_hash(id, client), len)
        };
        (0..AFFINITY_PROBE.min(len)).map(move |k| (h + k) % len)
    }

    /// The pinned, still eligible backend index of `(service, client)`.
    fn affinity_get(
        &mut self,
        id: ServiceId,
        slot: &ServiceSlot,
        client: IpAddr,
        local_only: bool,
        now: Instant,
    ) -> Option<u32> {
        let i = self.affinity_window(id, client).find(|&i| {
            matches!(self.s.affinity.get(i), Some(AffinitySlot(Some(a)))
                if a.service == id && a.client == client)
        })?;
        let a = self.s.affinity.get(i)?.0?;
        if a.expires <= now {
            if let Some(s) = self.s.affinity.get_mut(i) {
                s.0 = None;
            }
            return None;
        }
        let index = if a.generation == slot.generation {
            a.index
        } else {
            // The backends changed: find the pinned backend again.
            let start = slot.start as usize;
            let pos = self
                .s
                .backends
                .get(start..start + slot.len as usize)?
                .iter()
                .position(|b| b.backend.addr == a.backend && b.backend.port == a.port)?;
            pos as u32
        };
        self.eligible(slot, index, local_only).then_some(index)
    }

    /// Records (or refreshes) `(service, client) → backend`.
    #[allow(clippy::too_many_arguments)]
    fn affinity_put(
        &mut self,
        id: ServiceId,
        slot: &ServiceSlot,
        client: IpAddr,
        b: &Backend,
        index: u32,
        expires: Instant,
        now: Instant,
    ) {
        let entry = Affinity {
            service: id,
            client,
            backend: b.addr,
            port: b.port,
            index,
            generation: slot.generation,
            expires,
        };
        let mut target = None;
        let mut free = None;
        let mut oldest: Option<(Instant, usize)> = None;
        for i in self.affinity_window(id, client) {
            match self.s.affinity.get(i).and_then(|s| s.0) {
                Some(a) if a.service == id && a.client == client => {
                    target = Some(i);
                    break;
                }
                Some(a) if a.expires > now => {
                    if oldest.is_none_or(|(t, _)| a.expires < t) {
                        oldest = Some((a.expires, i));
                    }
                }
                _ => {
                    if free.is_none() {
                        free = Some(i);
                    }
                }
            }
        }
        let i = match (target, free, oldest) {
            (Some(i), _, _) | (None, Some(i), _) => i,
            (None, None, Some((_, i))) => {
                self.stats.affinity_evictions += 1;
                i
            }
            (None, None, None) => return,
        };
        if let Some(s) = self.s.affinity.get_mut(i) {
            s.0 = Some(entry);
        }
    }

    /// Frees expired affinity entries; returns how many.
    pub fn purge_affinity(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for s in self.s.affinity.iter_mut() {
            if s.0.is_some_and(|a| a.expires <= now) {
                s.0 = None;
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{PROTO_TCP, PROTO_UDP};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::vec;
    use std::vec::Vec;

    const M: u32 = 251;
    const LOCAL: NodeId = NodeId(1);
    const CLUSTER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
    const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
    const LB_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 99));
    const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    const S: ServiceId = ServiceId(3);

    struct Store {
        services: Vec<ServiceSlot>,
        frontends: Vec<FrontendSlot>,
        backends: Vec<BackendSlot>,
        maglev: Vec<u16>,
        scratch: Vec<MaglevScratch>,
        affinity: Vec<AffinitySlot>,
        max_maglev: u32,
    }

    impl Store {
        fn new(services: usize, frontends: usize, backends: usize, affinity: usize) -> Self {
            Store {
                services: vec![ServiceSlot::EMPTY; services],
                frontends: vec![FrontendSlot::EMPTY; frontends],
                backends: vec![BackendSlot::EMPTY; backends],
                maglev: vec![0; services * M as usize],
                scratch: vec![MaglevScratch::ZERO; maglev::scratch_len(64)],
                affinity: vec![AffinitySlot::EMPTY; affinity],
                max_maglev: M,
            }
        }

        /// A store whose Maglev tables may grow to `max` entries, in an arena of
        /// `arena` entries.
        fn growing(max: u32, arena: usize) -> Self {
            let mut st = Store::new(8, 8, 256, 0);
            st.max_maglev = max;
            st.maglev = vec![0; arena];
            st
        }

        fn table(&mut self) -> ServiceTable<'_> {
            ServiceTable::new(
                ServiceStorage {
                    services: &mut self.services,
                    frontends: &mut self.frontends,
                    backends: &mut self.backends,
                    maglev: &mut self.maglev,
                    scratch: &mut self.scratch,
                    affinity: &mut self.affinity,
                },
                self.max_maglev,
                LOCAL,
            )
            .unwrap()
        }
    }

    fn backend(last: u8, node: u16, conditions: Conditions) -> Backend {
        Backend {
            addr: IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, last)),
            port: 8080,
            node: NodeId(node),
            conditions,
        }
    }

    const TERMINATING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    const NOT_READY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };

    fn query(dst: IpAddr, port: u16, client: IpAddr, flow_hash: u64) -> ServiceQuery {
        ServiceQuery {
            dst,
            dst_port: port,
            protocol: PROTO_TCP,
            client,
            flow_hash,
            to_node_address: dst == NODE_IP,
            from_external: client == OUTSIDE,
        }
    }

    /// A service with ClusterIP:80, NodePort 30080 on every node address, and a
    /// LoadBalancer IP:80.
    fn service(t: &mut ServiceTable<'_>, config: ServiceConfig) {
        t.upsert_service(S, config).unwrap();
        for (addr, port, kind) in [
            (CLUSTER_IP, 80, FrontendKind::ClusterIp),
            (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                30080,
                FrontendKind::NodePort,
            ),
            (LB_IP, 80, FrontendKind::External),
        ] {
            t.add_frontend(Frontend {
                addr,
                port,
                protocol: PROTO_TCP,
                kind,
                service: S,
            })
            .unwrap();
        }
    }

    fn forward(d: Decision) -> Forward {
        match d {
            Decision::Forward(f) => f,
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    /// The set of backend addresses chosen over many flows.
    fn chosen(
        t: &mut ServiceTable<'_>,
        dst: IpAddr,
        port: u16,
        client: IpAddr,
    ) -> BTreeSet<IpAddr> {
        (0..2000u64)
            .map(|i| forward(t.lookup(&query(dst, port, client, fmix64(i)), Instant::ZERO)).backend)
            .collect()
    }

    #[test]
    fn frontends_match_exactly() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(&mut t, ServiceConfig::default());
        t.set_backends(S, &[backend(2, 2, Conditions::READY)])
            .unwrap();
        let hit = |t: &mut ServiceTable<'_>, q: ServiceQuery| t.lookup(&q, Instant::ZERO);
        assert!(matches!(
            hit(&mut t, query(CLUSTER_IP, 80, CLIENT, 1)),
            Decision::Forward(_)
        ));
        assert_eq!(
            hit(&mut t, query(CLUSTER_IP, 81, CLIENT, 1)),
            Decision::NoService
        );
        let mut udp = query(CLUSTER_IP, 80, CLIENT, 1);
        udp.protocol = PROTO_UDP;
        assert_eq!(hit(&mut t, udp), Decision::NoService);
        // NodePort on any node address, only when the datapath says it is one.
        assert!(matches!(
            hit(&mut t, query(NODE_IP, 30080, OUTSIDE, 1)),
            Decision::Forward(_)
        ));
        let mut q = query(NODE_IP, 30080, OUTSIDE, 1);
        q.to_node_address = false;
        assert_eq!(hit(&mut t, q), Decision::NoService);
        assert_eq!(
            hit(&mut t, query(CLUSTER_IP, 30080, CLIENT, 1)),
            Decision::NoService
        );
        assert!(matches!(
            hit(&mut t, query(LB_IP, 80, OUTSIDE, 1)),
            Decision::Forward(_)
        ));
        assert_eq!(
            t.remove_frontend(LB_IP, 80, PROTO_TCP).map(|f| f.kind),
            Some(FrontendKind::External)
        );
        assert_eq!(
            hit(&mut t, query(LB_IP, 80, OUTSIDE, 1)),
            Decision::NoService
        );
        assert!(t.remove_service(S));
        assert!(!t.remove_service(S));
        assert_eq!(
            hit(&mut t, query(CLUSTER_IP, 80, CLIENT, 1)),
            Decision::NoService
        );
        assert_eq!(
            hit(&mut t, query(NODE_IP, 30080, OUTSIDE, 1)),
            Decision::NoService
        );
        assert!(st.frontends.iter().all(|f| f.0.is_none()));
    }

    #[test]
    fn ready_then_terminating_then_reject() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(&mut t, ServiceConfig::default());
        assert_eq!(
            t.lookup(&query(CLUSTER_IP, 80, CLIENT, 1), Instant::ZERO),
            Decision::Reject(S)
        );
        let ready = [
            backend(2, 2, Conditions::READY),
            backend(3, 3, Conditions::READY),
        ];
        let term = backend(4, 4, TERMINATING);
        let dead = backend(5, 5, NOT_READY);
        t.set_backends(S, &[ready[0], term, dead, ready[1]])
            .unwrap();
        let got = chosen(&mut t, CLUSTER_IP, 80, CLIENT);
        assert_eq!(got, ready.iter().map(|b| b.addr).collect());
        // No ready backend: the serving-and-terminating one takes the traffic.
        t.set_backends(S, &[term, dead]).unwrap();
        assert_eq!(chosen(&mut t, CLUSTER_IP, 80, CLIENT), [term.addr].into());
        // Nothing usable: reject.
        t.set_backends(S, &[dead]).unwrap();
        assert_eq!(
            t.lookup(&query(CLUSTER_IP, 80, CLIENT, 1), Instant::ZERO),
            Decision::Reject(S)
        );
        t.set_backends(S, &[]).unwrap();
        assert_eq!(
            t.lookup(&query(CLUSTER_IP, 80, CLIENT, 1), Instant::ZERO),
            Decision::Reject(S)
        );
    }

    #[test]
    fn choice_is_maglev_and_independent_of_listing_order() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(&mut t, ServiceConfig::default());
        let b: Vec<Backend> = (1..=10).map(|i| backend(i, 2, Conditions::READY)).collect();
        t.set_backends(S, &b).unwrap();
        let first: Vec<IpAddr> = (0..500u64)
            .map(|h| {
                forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, fmix64(h)), Instant::ZERO)).backend
            })
            .collect();
        // The same as a Maglev table built directly over the backends.
        let mb: Vec<MaglevBackend> = b
            .iter()
            .map(|x| MaglevBackend::from_addr(x.addr, x.port, 1))
            .collect();
        let mut table = vec![0u16; M as usize];
        let mut scratch = vec![MaglevScratch::ZERO; maglev::scratch_len(10)];
        maglev::build(&mut table, &mb, &mut scratch).unwrap();
        for (h, got) in first.iter().enumerate() {
            let i = maglev::lookup(&table, fmix64(h as u64)).unwrap();
            assert_eq!(b[usize::from(i)].addr, *got);
        }
        let mut rev = b.clone();
        rev.reverse();
        t.set_backends(S, &rev).unwrap();
        for (h, got) in first.iter().enumerate() {
            let d = forward(t.lookup(
                &query(CLUSTER_IP, 80, CLIENT, fmix64(h as u64)),
                Instant::ZERO,
            ));
            assert_eq!(d.backend, *got);
            assert_eq!((d.port, d.service, d.snat), (8080, S, false));
        }
    }

    #[test]
    fn external_traffic_policy() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        let local = backend(2, 1, Conditions::READY);
        let remote = backend(3, 2, Conditions::READY);
        service(
            &mut t,
            ServiceConfig {
                external_policy: TrafficPolicy::Local,
                ..ServiceConfig::default()
            },
        );
        t.set_backends(S, &[remote, local]).unwrap();
        // External clients on NodePort / LB: local backends only, client IP kept.
        for (dst, port) in [(NODE_IP, 30080), (LB_IP, 80)] {
            assert_eq!(chosen(&mut t, dst, port, OUTSIDE), [local.addr].into());
            let f = forward(t.lookup(&query(dst, port, OUTSIDE, 7), Instant::ZERO));
            assert!(!f.snat && f.local && f.node == LOCAL);
        }
        // Pods reaching the same frontends, and the ClusterIP: any backend.
        assert_eq!(
            chosen(&mut t, NODE_IP, 30080, CLIENT),
            [local.addr, remote.addr].into()
        );
        assert_eq!(
            chosen(&mut t, CLUSTER_IP, 80, CLIENT),
            [local.addr, remote.addr].into()
        );
        // No local backend: drop (not reject) external traffic; the rest still works.
        t.set_backends(S, &[remote, backend(4, 1, NOT_READY)])
            .unwrap();
        assert_eq!(
            t.lookup(&query(LB_IP, 80, OUTSIDE, 7), Instant::ZERO),
            Decision::Drop(S)
        );
        assert!(matches!(
            t.lookup(&query(LB_IP, 80, CLIENT, 7), Instant::ZERO),
            Decision::Forward(_)
        ));
        // Local fallback to a local serving-and-terminating backend.
        let local_term = backend(5, 1, TERMINATING);
        t.set_backends(S, &[remote, local_term]).unwrap();
        assert_eq!(chosen(&mut t, LB_IP, 80, OUTSIDE), [local_term.addr].into());
        // ... but cluster-wide, the ready remote one wins.
        assert_eq!(chosen(&mut t, CLUSTER_IP, 80, CLIENT), [remote.addr].into());

        // Cluster policy: external traffic is SNATed, internal traffic is not.
        t.upsert_service(S, ServiceConfig::default()).unwrap();
        t.set_backends(S, &[remote, local]).unwrap();
        for h in 0..50 {
            assert!(forward(t.lookup(&query(NODE_IP, 30080, OUTSIDE, h), Instant::ZERO)).snat);
            assert!(!forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, h), Instant::ZERO)).snat);
        }
    }

    #[test]
    fn local_choice_spreads_over_local_backends() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(
            &mut t,
            ServiceConfig {
                external_policy: TrafficPolicy::Local,
                ..ServiceConfig::default()
            },
        );
        let locals: Vec<Backend> = (1..=4).map(|i| backend(i, 1, Conditions::READY)).collect();
        let mut all = locals.clone();
        all.push(backend(9, 2, Conditions::READY));
        t.set_backends(S, &all).unwrap();
        let mut count = BTreeMap::new();
        for h in 0..4000u64 {
            let f = forward(t.lookup(&query(LB_IP, 80, OUTSIDE, fmix64(h)), Instant::ZERO));
            *count.entry(f.backend).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 4);
        assert!(count.values().all(|&c| c > 800), "{count:?}");
    }

    #[test]
    fn internal_traffic_policy() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(
            &mut t,
            ServiceConfig {
                internal_policy: TrafficPolicy::Local,
                ..ServiceConfig::default()
            },
        );
        let local = backend(2, 1, Conditions::READY);
        let remote = backend(3, 2, Conditions::READY);
        t.set_backends(S, &[remote, local]).unwrap();
        assert_eq!(chosen(&mut t, CLUSTER_IP, 80, CLIENT), [local.addr].into());
        // External traffic follows the external policy (Cluster): everything.
        assert_eq!(
            chosen(&mut t, LB_IP, 80, OUTSIDE),
            [local.addr, remote.addr].into()
        );
        t.set_backends(S, &[remote]).unwrap();
        assert_eq!(
            t.lookup(&query(CLUSTER_IP, 80, CLIENT, 1), Instant::ZERO),
            Decision::Drop(S)
        );
    }

    #[test]
    fn hairpin_needs_snat() {
        let mut st = Store::new(8, 16, 64, 0);
        let mut t = st.table();
        service(&mut t, ServiceConfig::default());
        let only = backend(2, 1, Conditions::READY);
        t.set_backends(S, &[only]).unwrap();
        assert!(forward(t.lookup(&query(CLUSTER_IP, 80, only.addr, 1), Instant::ZERO)).snat);
        assert!(!forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, 1), Instant::ZERO)).snat);
    }

    #[test]
    fn affinity_pins_refreshes_and_expires() {
        let mut st = Store::new(8, 16, 64, 64);
        let mut t = st.table();
        let timeout = Duration::from_secs(100);
        service(
            &mut t,
            ServiceConfig {
                affinity: Some(timeout),
                ..ServiceConfig::default()
            },
        );
        let b: Vec<Backend> = (1..=8).map(|i| backend(i, 2, Conditions::READY)).collect();
        t.set_backends(S, &b).unwrap();
        let t0 = Instant::from_secs(1000);
        let first = forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, 0), t0)).backend;
        // A flow hash that Maglev alone maps elsewhere.
        let other = (1..1000u64)
            .map(fmix64)
            .find(|&h| {
                let mut q = query(CLUSTER_IP, 80, OUTSIDE, h);
                q.from_external = false;
                forward(t.lookup(&q, t0)).backend != first
            })
            .unwrap();
        // Pinned: every new flow of the client goes to the first backend...
        for s in [1, 50, 99] {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(
                forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, other), at)).backend,
                first
            );
        }
        // ...each use refreshed the timer (last use at t0+99s) ...
        let at = t0 + Duration::from_secs(198);
        assert_eq!(
            forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, other), at)).backend,
            first
        );
        // ... and after the timeout without use the pin is gone.
        let late = at + timeout;
        assert_ne!(
            forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, other), late)).backend,
            first
        );
        // Different services, different clients: separate pins (OUTSIDE was pinned
        // elsewhere above).
        let again = late + Duration::from_secs(1);
        assert_ne!(
            forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, 0), again)).backend,
            first
        );
    }

    #[test]
    fn affinity_follows_backend_changes() {
        let mut st = Store::new(8, 16, 64, 64);
        let mut t = st.table();
        service(
            &mut t,
            ServiceConfig {
                affinity: Some(DEFAULT_AFFINITY_TIMEOUT),
                ..ServiceConfig::default()
            },
        );
        let mut b: Vec<Backend> = (1..=8).map(|i| backend(i, 2, Conditions::READY)).collect();
        t.set_backends(S, &b).unwrap();
        let now = Instant::from_secs(5);
        let pinned = forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, 42), now)).backend;
        // Reordered and grown: the pin survives (found again by address).
        b.reverse();
        b.push(backend(20, 2, Conditions::READY));
        t.set_backends(S, &b).unwrap();
        for h in 0..200 {
            assert_eq!(
                forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, h), now)).backend,
                pinned
            );
        }
        // The pinned backend terminates: a ready one is chosen and pinned instead.
        for x in b.iter_mut().filter(|x| x.addr == pinned) {
            x.conditions = TERMINATING;
        }
        t.set_backends(S, &b).unwrap();
        let new = forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, 42), now)).backend;
        assert_ne!(new, pinned);
        for h in 0..200 {
            assert_eq!(
                forward(t.lookup(&query(CLUSTER_IP, 80, CLIENT, h), now)).backend,
                new
            );
        }
        assert_eq!(t.purge_affinity(now), 0);
        assert_eq!(t.purge_affinity(now + DEFAULT_AFFINITY_TIMEOUT), 1);
    }

    #[test]
    fn affinity_table_full_evicts_oldest() {
        let mut st = Store::new(8, 16, 64, AFFINITY_PROBE);
        let mut t = st.table();
        service(
            &mut t,
            ServiceConfig {
                affinity: Some(Duration::from_secs(10)),
                ..ServiceConfig::default()
            },
        );
        t.set_backends(
            S,
            &[
                backend(1, 2, Conditions::READY),
                backend(2, 2, Conditions::READY),
            ],
        )
        .unwrap();
        for i in 0..(AFFINITY_PROBE as u8 + 3) {
            let client = IpAddr::V4(Ipv4Addr::new(10, 244, 9, i));
            t.lookup(
                &query(CLUSTER_IP, 80, client, u64::from(i)),
                Instant::from_secs(i64::from(i)),
            );
        }
        assert_eq!(t.stats().affinity_evictions, 3);
    }

    #[test]
    fn errors_name_the_problem() {
        let mut st = Store::new(2, 4, 4, 0);
        let mut t = st.table();
        assert_eq!(
            t.upsert_service(ServiceId(2), ServiceConfig::default()),
            Err(ServiceError::ServiceIdOutOfRange)
        );
        assert_eq!(
            t.set_backends(ServiceId(1), &[]),
            Err(ServiceError::UnknownService)
        );
        let fe = Frontend {
            addr: CLUSTER_IP,
            port: 80,
            protocol: PROTO_TCP,
            kind: FrontendKind::ClusterIp,
            service: ServiceId(1),
        };
        assert_eq!(t.add_frontend(fe), Err(ServiceError::UnknownService));
        t.upsert_service(ServiceId(1), ServiceConfig::default())
            .unwrap();
        t.upsert_service(ServiceId(0), ServiceConfig::default())
            .unwrap();
        for port in 0..3 {
            t.add_frontend(Frontend { port, ..fe }).unwrap();
        }
        assert_eq!(
            t.add_frontend(Frontend { port: 9, ..fe }),
            Err(ServiceError::FrontendTableFull)
        );
        // Replacing an existing key needs no new slot.
        t.add_frontend(Frontend {
            port: 0,
            service: ServiceId(0),
            ..fe
        })
        .unwrap();
        assert_eq!(
            t.frontend(CLUSTER_IP, 0, PROTO_TCP, false)
                .map(|f| f.service),
            Some(ServiceId(0))
        );
        let five: Vec<Backend> = (1..=5).map(|i| backend(i, 2, Conditions::READY)).collect();
        assert_eq!(
            t.set_backends(ServiceId(1), &five),
            Err(ServiceError::BackendStorageFull)
        );
        t.set_backends(ServiceId(1), &five[..3]).unwrap();
        assert_eq!(
            t.set_backends(ServiceId(0), &five[..2]),
            Err(ServiceError::BackendStorageFull)
        );
        t.set_backends(ServiceId(0), &five[..1]).unwrap();
        assert_eq!(t.backends(ServiceId(1)).count(), 3);

        let mut st = Store::new(2, 4, 400, 0);
        st.scratch.truncate(maglev::scratch_len(3));
        let mut t = st.table();
        t.upsert_service(ServiceId(0), ServiceConfig::default())
            .unwrap();
        assert_eq!(t.max_backends_per_service(), 3);
        let four: Vec<Backend> = (1..=4).map(|i| backend(i, 2, Conditions::READY)).collect();
        assert_eq!(
            t.set_backends(ServiceId(0), &four),
            Err(ServiceError::TooManyBackends)
        );

        let mut st = Store::new(2, 4, 4, 0);
        let mk = |st: &mut Store, m: u32| {
            ServiceTable::new(
                ServiceStorage {
                    services: &mut st.services,
                    frontends: &mut st.frontends,
                    backends: &mut st.backends,
                    maglev: &mut st.maglev,
                    scratch: &mut st.scratch,
                    affinity: &mut st.affinity,
                },
                m,
                LOCAL,
            )
            .err()
        };
        assert_eq!(
            mk(&mut st, 250),
            Some(ServiceError::Maglev(MaglevError::SizeNotPrime))
        );
        assert_eq!(mk(&mut st, 251), None);
        st.maglev.pop();
        assert_eq!(mk(&mut st, 251), Some(ServiceError::MaglevStorageTooSmall));
        // A maximum below the smallest listed size is every table's size.
        st.maglev.truncate(2 * 7);
        assert_eq!(mk(&mut st, 7), None);
    }

    fn ready_backends(n: usize, node: u16) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                addr: IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8)),
                port: 8080,
                node: NodeId(node),
                conditions: Conditions::READY,
            })
            .collect()
    }

    /// The backend each of `flows` flow hashes is sent to.
    fn choices(t: &mut ServiceTable<'_>, frontend: IpAddr, flows: u64) -> Vec<IpAddr> {
        (0..flows)
            .map(|h| {
                forward(t.lookup(&query(frontend, 80, CLIENT, fmix64(h)), Instant::ZERO)).backend
            })
            .collect()
    }

    #[test]
    fn maglev_tables_are_sized_from_their_backends() {
        let mut st = Store::growing(8191, 4093 + 509 + 100);
        let mut t = st.table();
        service(&mut t, ServiceConfig::default());
        let other = ServiceId(5);
        let other_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11));
        t.upsert_service(other, ServiceConfig::default()).unwrap();
        t.add_frontend(Frontend {
            addr: other_ip,
            port: 80,
            protocol: PROTO_TCP,
            kind: FrontendKind::ClusterIp,
            service: other,
        })
        .unwrap();
        t.set_backends(S, &ready_backends(2, 2)).unwrap();
        assert_eq!(t.maglev_size(S), Some(251));
        assert_eq!(t.maglev_size(other), Some(0));
        t.set_backends(other, &ready_backends(3, 3)).unwrap();
        assert_eq!(t.maglev_size(other), Some(509));
        let before = choices(&mut t, other_ip, 300);

        // Growth past M/100 rebuilds at the next size; the service after it in the
        // arena keeps its table (shifted) and its choices.
        t.set_backends(S, &ready_backends(40, 2)).unwrap();
        assert_eq!(t.maglev_size(S), Some(4093));
        assert_eq!(choices(&mut t, other_ip, 300), before);
        // Every backend is used: the table was built at the new size.
        let used: BTreeSet<IpAddr> = choices(&mut t, CLUSTER_IP, 4000).into_iter().collect();
        assert_eq!(used.len(), 40);

        // Beyond the arena: refused, and nothing changed.
        assert_eq!(
            t.set_backends(S, &ready_backends(41, 2)),
            Err(ServiceError::MaglevStorageFull)
        );
        assert_eq!(t.maglev_size(S), Some(4093));
        assert_eq!(t.backends(S).count(), 40);
        assert_eq!(choices(&mut t, other_ip, 300), before);

        // Shrinking takes the smaller size (the size is a function of N alone), and a
        // service without cluster backends holds no table.
        t.set_backends(S, &ready_backends(1, 2)).unwrap();
        assert_eq!(t.maglev_size(S), Some(251));
        t.set_backends(S, &[]).unwrap();
        assert_eq!(t.maglev_size(S), Some(0));
        assert_eq!(choices(&mut t, other_ip, 300), before);
        assert!(t.remove_service(other));
        assert_eq!(t.maglev_size(other), Some(0));
    }

    #[test]
    fn table_size_follows_the_contract() {
        assert_eq!(maglev::size_for(0, 65521), 251);
        assert_eq!(maglev::size_for(2, 65521), 251);
        assert_eq!(maglev::size_for(3, 65521), 509);
        assert_eq!(maglev::size_for(100, 1_048_573), 16381);
        assert_eq!(maglev::size_for(1000, 1_048_573), 131_071);
        assert_eq!(maglev::size_for(1000, 65521), 65521);
        assert_eq!(maglev::size_for(1000, 100_003), 100_003);
        assert_eq!(maglev::size_for(5, 251), 251);
        for &m in &maglev::SIZES {
            assert!(maglev::is_prime(m), "{m}");
        }
    }

    proptest! {
        /// Frontend insert/remove against a model, in a small table (many collisions,
        /// wrap-around, backward-shift deletion).
        #[test]
        fn prop_frontends_match_model(ops in prop::collection::vec((any::<bool>(), 0u16..24, 0u16..4), 0..200)) {
            let mut st = Store::new(4, 17, 4, 0);
            let mut t = st.table();
            for s in 0..4 {
                t.upsert_service(ServiceId(s), ServiceConfig::default()).unwrap();
            }
            let mut model = BTreeMap::new();
            for (insert, port, svc) in ops {
                let addr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, (port % 3) as u8));
                if insert {
                    let f = Frontend { addr, port, protocol: PROTO_TCP, kind: FrontendKind::ClusterIp, service: ServiceId(svc) };
                    match t.add_frontend(f) {
                        Ok(()) => { model.insert((addr, port), svc); }
                        Err(e) => {
                            prop_assert_eq!(e, ServiceError::FrontendTableFull);
                            prop_assert!(model.len() >= 16);
                        }
                    }
                } else {
                    let got = t.remove_frontend(addr, port, PROTO_TCP).map(|f| f.service.0);
                    prop_assert_eq!(got, model.remove(&(addr, port)));
                }
                for p in 0..24u16 {
                    let addr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, (p % 3) as u8));
                    let got = t.frontend(addr, p, PROTO_TCP, false).map(|f| f.service.0);
                    prop_assert_eq!(got, model.get(&(addr, p)).copied());
                }
            }
        }

        /// Backend arena shifting across services against a model.
        #[test]
        fn prop_backends_match_model(ops in prop::collection::vec((0u16..5, 0usize..12, any::<u8>()), 0..60)) {
            let mut st = Store::new(5, 8, 30, 0);
            let mut t = st.table();
            for s in 0..5 {
                t.upsert_service(ServiceId(s), ServiceConfig::default()).unwrap();
            }
            let mut model: BTreeMap<u16, Vec<Backend>> = BTreeMap::new();
            for (svc, n, seed) in ops {
                let b: Vec<Backend> = (0..n).map(|i| backend(seed.wrapping_add(i as u8), svc, Conditions::READY)).collect();
                let used: usize = model.iter().filter(|(k, _)| **k != svc).map(|(_, v)| v.len()).sum();
                match t.set_backends(ServiceId(svc), &b) {
                    Ok(()) => { model.insert(svc, b); }
                    Err(e) => {
                        prop_assert_eq!(e, ServiceError::BackendStorageFull);
                        prop_assert!(used + n > 30);
                    }
                }
                for s in 0..5u16 {
                    let mut got: Vec<Backend> = t.backends(ServiceId(s)).copied().collect();
                    let mut want = model.get(&s).cloned().unwrap_or_default();
                    got.sort_by_key(|b| (b.addr, b.port));
                    want.sort_by_key(|b| (b.addr, b.port));
                    prop_assert_eq!(got, want);
                }
            }
        }

        /// Any query never panics and a Forward always names a backend of the service
        /// that is eligible.
        #[test]
        fn prop_lookup_sound(
            conds in prop::collection::vec((0u8..4, 0u16..3), 0..12),
            h in any::<u64>(), external in any::<bool>(), etp_local in any::<bool>(), itp_local in any::<bool>(),
        ) {
            let mut st = Store::new(8, 16, 64, 16);
            let mut t = st.table();
            service(&mut t, ServiceConfig {
                affinity: if h % 2 == 0 { Some(Duration::from_secs(5)) } else { None },
                external_policy: if etp_local { TrafficPolicy::Local } else { TrafficPolicy::Cluster },
                internal_policy: if itp_local { TrafficPolicy::Local } else { TrafficPolicy::Cluster },
            });
            let b: Vec<Backend> = conds.iter().enumerate().map(|(i, &(c, node))| {
                let conditions = match c { 0 => Conditions::READY, 1 => TERMINATING, 2 => NOT_READY,
                    _ => Conditions { ready: false, serving: true, terminating: false } };
                backend(i as u8 + 1, node, conditions)
            }).collect();
            t.set_backends(S, &b).unwrap();
            let client = if external { OUTSIDE } else { CLIENT };
            for dst in [(CLUSTER_IP, 80), (NODE_IP, 30080), (LB_IP, 80)] {
                let q = query(dst.0, dst.1, client, h);
                let local_only = if q.from_external && dst.0 != CLUSTER_IP { etp_local } else { itp_local };
                let usable = |x: &Backend| x.conditions.ready || x.conditions.serving && x.conditions.terminating;
                let candidates = b.iter().filter(|x| usable(x) && (!local_only || x.node == LOCAL)).count();
                match t.lookup(&q, Instant::ZERO) {
                    Decision::Forward(f) => {
                        prop_assert!(candidates > 0);
                        let x = b.iter().find(|x| x.addr == f.backend).unwrap();
                        prop_assert!(usable(x));
                        if local_only { prop_assert_eq!(x.node, LOCAL); }
                        let any_ready = b.iter().any(|y| y.conditions.ready && (!local_only || y.node == LOCAL));
                        if any_ready { prop_assert!(x.conditions.ready); }
                    }
                    Decision::Reject(_) => prop_assert!(candidates == 0 && (!local_only || b.is_empty())),
                    Decision::Drop(_) => prop_assert!(candidates == 0 && local_only && !b.is_empty()),
                    Decision::NoService => prop_assert!(false),
                }
            }
        }
    }
}

//! The packet pipeline: one function from (state, time, frame) to an [`Action`].
//!
//! Design note: the datapath is sans-IO. A shell hands it a frame in a buffer with
//! headroom, the ingress it came from and the current time; the datapath parses,
//! tracks, translates, checks policy, routes and encapsulates in place, and returns
//! what to do. Every drop names a [`DropReason`] and is counted.
//!
//! The pipeline, in order:
//!
//! 1. **Ingress.** A frame from a pod or the host port is parsed; a frame from the
//!    underlay (a raw outer frame, or a VXLAN payload from a UDP socket) is first
//!    decapsulated, which checks that its sender is a known node.
//! 2. **ARP.** Requests from pods for addresses of their block, and from the host for
//!    anything it routes to us, are answered with the router MAC (proxy ARP): pods and
//!    host always send to the datapath, which routes at layer 3.
//! 3. **Anti-spoofing.** A pod may send only from its own MAC and IP; a frame from the
//!    overlay must come from an address of the sending node's pod block.
//! 4. **Connection tracking.** A packet of a known connection takes the NAT and the
//!    policy verdict cached in its entry: replies of allowed connections pass.
//! 5. **New connections:** service lookup (Maglev choice of a backend, DNAT, SNAT for
//!    hairpin and external NodePort traffic, reject when there is no backend), then
//!    NetworkPolicy — egress of a local source, ingress of a local destination — then
//!    a new conntrack entry with the verdict cached.
//! 6. **Routing** (longest-prefix match on the translated destination) to a local pod
//!    port, the host port, a remote node (VXLAN to its VTEP) or a direct next hop.
//! 7. **Forwarding:** TTL check (ICMP time exceeded), underlay MTU check (ICMP
//!    fragmentation needed: VXLAN never fragments), NAT rewrite with incremental
//!    checksums, TTL decrement, MAC rewrite, encapsulation in place.
//!
//! **Bursts.** [`Datapath::process_burst`] takes many frames at once and reads the
//! connection-tracking memory of all of them before processing the first, so their
//! cache misses overlap (see `burst.rs`); [`Datapath::process`] stays the one-frame
//! entry point.
//!
//! **Offloads.** [`Datapath::process_with`] takes a frame's offload state
//! ([`FrameMeta`]): GSO super-frames of up to 64 KiB and partial checksums pass
//! between local ports as they are (NAT keeps a partial checksum partial) and are
//! measured against the underlay MTU by their segments. Routed to the overlay, they
//! are encapsulated once when the shell cuts encapsulated super-frames into
//! datagrams itself ([`Datapath::set_overlay_gso`], as the kernel's VXLAN device does
//! with GSO), and otherwise handed back untouched (`Drop(NeedsSoftwareOffload)`) for
//! the shell to segment first.
//!
//! Connections opened by the node itself (from its gateway or underlay address) are not
//! subject to NetworkPolicy, as in Calico and Cilium: kubelet probes must always reach
//! their pods. Everything else — pods, remote nodes, external clients of a NodePort —
//! is policed.

mod action;
mod arp;
mod burst;
mod drop;
mod event;
mod meta;
mod parse;
mod ports;
mod reject;
mod storage;
#[cfg(test)]
mod test_frames;
#[cfg(test)]
mod tests;

use core::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::EthernetAddress;

use crate::checksum;
use crate::conntrack::{self, ConnTrack, Direction, Nat, NatTarget};
use crate::flow::{FlowKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::ids::{NodeId, PortId};
use crate::nat::{self, ChecksumMode, Rewrite};
use crate::policy::{AllowReason, ConnVerdict, PolicyTable, Verdict};
use crate::route::{Ipv4Prefix, Ipv4RouteTable, NextHop};
use crate::service::{Decision, ServiceId, ServiceQuery, ServiceTable};
use crate::vxlan::{DecapError, EncapError, VtepTable, VxlanConfig};
use crate::wire::{VxlanPacket, VxlanRepr, VXLAN_HEADER_LEN};
use crate::Instant;

pub use action::{Action, Encapsulated, Ingress, Span};
pub use burst::{BurstFrame, BURST_WINDOW};
pub use drop::{DropCounters, DropReason};
pub use event::{EventOutcome, EventSink, EventSource, FlowEvent};
pub use meta::FrameMeta;
pub use ports::{PortError, PortKind, PortTable};
pub use storage::{DatapathStorage, TablesError};

use parse::{parse_frame, Ipv4Summary, Parsed};
use reject::IcmpError;

/// Bytes of headroom the datapath needs before every frame (outer VXLAN headers, or
/// the headers of an ICMP error).
pub const HEADROOM: usize = 64;

/// How a node's datapath is set up.
#[derive(Debug, Clone, Copy)]
pub struct DatapathConfig {
    /// This node.
    pub node: NodeId,
    /// The MAC address the datapath uses towards pods and the host (it answers ARP
    /// with it), and its VTEP MAC as inner source of VXLAN frames.
    pub router_mac: EthernetAddress,
    /// The gateway address of the node's pod block (its first address): source of the
    /// datapath's ICMP errors and of hairpin SNAT.
    pub gateway: Ipv4Addr,
    /// The node's pod block.
    pub pod_cidr: Ipv4Prefix,
    /// VXLAN: the node's underlay address, VNI, port, underlay MTU.
    pub vxlan: VxlanConfig,
    /// Seed of the flow hash used for service backend choice (all nodes must agree).
    pub flow_seed: u64,
}

/// The tables a datapath works on, each over caller-owned storage.
pub struct DatapathTables<'a> {
    /// Local ports.
    pub ports: PortTable<'a>,
    /// The IPv4 route table.
    pub routes: Ipv4RouteTable<'a>,
    /// Remote nodes' VTEPs.
    pub vteps: VtepTable<'a>,
    /// Services, frontends and backends.
    pub services: ServiceTable<'a>,
    /// Connection tracking.
    pub conntrack: ConnTrack<'a>,
    /// Compiled NetworkPolicy and the IP → identity map.
    pub policy: PolicyTable<'a>,
}

/// Counts of what the datapath did (drops are in [`DropCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DatapathStats {
    /// Frames delivered to a local port.
    pub delivered: u64,
    /// Frames encapsulated towards a remote node.
    pub encapsulated: u64,
    /// Frames received from the overlay and decapsulated.
    pub decapsulated: u64,
    /// Replies written by the datapath (ARP, ICMP errors, TCP resets).
    pub replied: u64,
    /// Frames dropped.
    pub dropped: u64,
}

/// Where the packet being forwarded came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A local pod.
    Pod(PortId),
    /// The node's host stack.
    Host(PortId),
    /// A remote node through the overlay.
    Overlay(NodeId),
}

impl Origin {
    fn event_source(self) -> EventSource {
        match self {
            Origin::Pod(p) | Origin::Host(p) => EventSource::Port(p),
            Origin::Overlay(n) => EventSource::Node(n),
        }
    }
}

/// What was decided for a packet before the buffer is touched.
struct Decided {
    /// The packet's flow after NAT.
    translated: FlowKey,
    /// How to rewrite the packet (from its flow to `translated`).
    rewrite: Rewrite,
    /// Where it goes.
    hop: NextHop,
    /// For a new connection: its verdict and service, to report once the packet's
    /// outcome is known.
    new_connection: Option<(ConnVerdict, Option<ServiceId>)>,
}

/// The fate of a packet once tracking, services and policy have spoken.
enum Fate {
    /// Forward it as decided.
    Forward(Decided),
    /// The datapath already answered it (a reject).
    Done(Action),
    /// Drop it.
    Drop(DropReason),
}

/// One node's datapath.
pub struct Datapath<'a> {
    config: DatapathConfig,
    tables: DatapathTables<'a>,
    drops: DropCounters,
    stats: DatapathStats,
    events: EventSink<'a>,
    ip_ident: u16,
    policy_epoch: u32,
    route_epoch: u32,
    overlay_gso: bool,
    /// What [`Datapath::process_burst`]'s look-ahead read, kept so the reads stay.
    touched: u64,
}

impl<'a> Datapath<'a> {
    /// A datapath over `tables`, configured by `config`.
    pub fn new(config: DatapathConfig, tables: DatapathTables<'a>) -> Self {
        Datapath {
            config,
            tables,
            drops: DropCounters::default(),
            stats: DatapathStats::default(),
            events: EventSink::disconnected(),
            ip_ident: 0,
            policy_epoch: 0,
            route_epoch: 1,
            overlay_gso: false,
            touched: 0,
        }
    }

    /// Declares that the shell segments encapsulated super-frames (off by default).
    ///
    /// On, an offloaded frame (GSO or partial checksum) routed to the overlay is
    /// forwarded like any other — tracked, policed, translated (partial checksums
    /// stay partial), TTL and MACs rewritten — and encapsulated *once*: the action is
    /// an [`Action::Encap`] whose UDP payload is one VXLAN header followed by the
    /// inner super-frame, and whose outer headers describe its first full segment
    /// (lengths, MTU check) without a UDP checksum. The shell then cuts it as the
    /// offload it passed in says — every datagram gets the VXLAN header, the inner
    /// headers with lengths, sequence numbers and checksums completed, and `gso_size`
    /// payload bytes — which is what the kernel's VXLAN device does with GSO. A
    /// shell that sends whole outer frames (a raw underlay device without such an
    /// offload) leaves it off and gets `Drop(NeedsSoftwareOffload)` instead.
    pub fn set_overlay_gso(&mut self, on: bool) {
        self.overlay_gso = on;
    }

    /// The configuration.
    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// The tables, for reading.
    pub fn tables(&self) -> &DatapathTables<'a> {
        &self.tables
    }

    /// The local ports, for the control plane to update.
    pub fn ports_mut(&mut self) -> &mut PortTable<'a> {
        &mut self.tables.ports
    }

    /// The route table, for the control plane to update. Taking it starts a new route
    /// epoch: the next hops cached in tracked connections are looked up again.
    pub fn routes_mut(&mut self) -> &mut Ipv4RouteTable<'a> {
        self.route_epoch = self.route_epoch.wrapping_add(1).max(1);
        &mut self.tables.routes
    }

    /// The VTEP table, for the control plane to update.
    pub fn vteps_mut(&mut self) -> &mut VtepTable<'a> {
        &mut self.tables.vteps
    }

    /// The service table, for the control plane to update.
    pub fn services_mut(&mut self) -> &mut ServiceTable<'a> {
        &mut self.tables.services
    }

    /// Connection tracking, for the shell's periodic expiry and for flushing.
    pub fn conntrack_mut(&mut self) -> &mut ConnTrack<'a> {
        &mut self.tables.conntrack
    }

    /// The policy table, for the control plane to update. Taking it starts a new
    /// policy epoch: every tracked connection has its verdict re-evaluated on its next
    /// packet, so a policy change cuts connections it no longer allows and keeps the
    /// ones it still allows, in both directions.
    pub fn policy_mut(&mut self) -> &mut PolicyTable<'a> {
        self.policy_epoch = self.policy_epoch.wrapping_add(1);
        &mut self.tables.policy
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counts of what the datapath did.
    pub fn stats(&self) -> DatapathStats {
        self.stats
    }

    /// The flow event sink (attach a ring with [`EventSink::connect`]).
    pub fn events(&mut self) -> &mut EventSink<'a> {
        &mut self.events
    }

    /// Processes the frame `buf[frame]` that arrived on `ingress` at `now`, in place.
    /// `buf` should leave [`HEADROOM`] bytes before the frame. The frame is plain: no
    /// offload ([`FrameMeta::PLAIN`]).
    pub fn process(
        &mut self,
        now: Instant,
        ingress: Ingress,
        buf: &mut [u8],
        frame: Span,
    ) -> Action {
        self.process_with(now, ingress, buf, frame, FrameMeta::PLAIN)
    }

    /// [`Datapath::process`] for a frame with the offload state `meta`, as a TAP or NIC
    /// with offloads reports it (see [`FrameMeta`]). A frame from a local port may
    /// then be a GSO super-frame longer than the MTU and carry a partial L4 checksum:
    /// - delivered to a local port, it keeps both (its layout is unchanged, so the
    ///   shell writes it out with the same offload description);
    /// - routed to the overlay with [`Datapath::set_overlay_gso`] on, it is
    ///   encapsulated once and the shell cuts the result into datagrams;
    /// - routed to the overlay otherwise, it comes back as `Drop(NeedsSoftwareOffload)`
    ///   with nothing changed — neither the buffer nor connection tracking — and the
    ///   shell segments it or completes its checksum and submits the results with
    ///   [`FrameMeta::PLAIN`];
    /// - either way, segments that exceed the underlay MTU are answered as for any
    ///   packet (ICMP fragmentation needed).
    ///
    /// `meta` is ignored for frames from the underlay.
    pub fn process_with(
        &mut self,
        now: Instant,
        ingress: Ingress,
        buf: &mut [u8],
        frame: Span,
        meta: FrameMeta,
    ) -> Action {
        let action = match buf.get(frame.range()) {
            None => Action::Drop(DropReason::Truncated),
            Some(_) => match ingress {
                Ingress::Port(port) => self.ingress_port(now, port, buf, frame, meta),
                Ingress::Underlay { source, .. } => self.ingress_socket(now, source, buf, frame),
            },
        };
        match action {
            Action::Deliver { .. } => self.stats.delivered += 1,
            Action::Encap(_) => self.stats.encapsulated += 1,
            Action::Reply { .. } => self.stats.replied += 1,
            Action::Drop(reason) => {
                self.stats.dropped += 1;
                self.drops.count(reason);
            }
        }
        action
    }

    /// A frame from a local port: a pod, the host, or a raw underlay device.
    fn ingress_port(
        &mut self,
        now: Instant,
        port: PortId,
        buf: &mut [u8],
        frame: Span,
        meta: FrameMeta,
    ) -> Action {
        let Some(kind) = self.tables.ports.get(port) else {
            return Action::Drop(DropReason::UnknownPort);
        };
        let origin = match kind {
            PortKind::Underlay => {
                let decap = self
                    .config
                    .vxlan
                    .decapsulate(&self.tables.vteps, &buf[frame.range()]);
                return match decap {
                    Ok(d) => {
                        let inner = Span {
                            start: frame.start + d.inner_start,
                            len: d.inner_len,
                        };
                        self.ingress_overlay(now, d.node, buf, inner)
                    }
                    Err(e) => Action::Drop(decap_drop_reason(e)),
                };
            }
            PortKind::Pod { .. } => Origin::Pod(port),
            PortKind::Host { .. } => Origin::Host(port),
        };
        let bytes = &buf[frame.range()];
        let parsed = match parse_frame(bytes) {
            Ok(p) => p,
            Err(reason) => return Action::Drop(reason),
        };
        if let PortKind::Pod { mac, .. } = kind {
            if bytes[6..12] != mac.0 {
                return Action::Drop(DropReason::SpoofedMac);
            }
        }
        match parsed {
            Parsed::Arp => self.answer_arp(kind, buf, frame),
            Parsed::Ipv4(packet) => {
                let packet = Ipv4Summary { meta, ..packet };
                if let PortKind::Pod { ip, .. } = kind {
                    if packet.src != ip {
                        return self.drop_event(now, origin, &packet, frame, DropReason::SpoofedIp);
                    }
                }
                self.forward(now, origin, buf, frame, &packet)
            }
        }
    }

    /// The payload of a datagram from the VXLAN socket.
    fn ingress_socket(
        &mut self,
        now: Instant,
        source: IpAddr,
        buf: &mut [u8],
        frame: Span,
    ) -> Action {
        let payload = &buf[frame.range()];
        let Ok(vxlan) = VxlanPacket::new_checked(payload) else {
            return Action::Drop(DropReason::MalformedVxlan);
        };
        let Ok(repr) = VxlanRepr::parse(&vxlan) else {
            return Action::Drop(DropReason::MalformedVxlan);
        };
        if repr.vni != self.config.vxlan.vni {
            return Action::Drop(DropReason::UnknownVni);
        }
        let Some(node) = self.tables.vteps.get_by_ip(source).map(|v| v.node) else {
            return Action::Drop(DropReason::UnknownVtep);
        };
        let inner = Span {
            start: frame.start + VXLAN_HEADER_LEN,
            len: frame.len - VXLAN_HEADER_LEN,
        };
        self.ingress_overlay(now, node, buf, inner)
    }

    /// A decapsulated frame from remote `node`.
    fn ingress_overlay(
        &mut self,
        now: Instant,
        node: NodeId,
        buf: &mut [u8],
        frame: Span,
    ) -> Action {
        self.stats.decapsulated += 1;
        let packet = match parse_frame(&buf[frame.range()]) {
            Ok(Parsed::Ipv4(p)) => p,
            Ok(Parsed::Arp) => return Action::Drop(DropReason::UnsupportedEtherType),
            Err(reason) => return Action::Drop(reason),
        };
        let origin = Origin::Overlay(node);
        if self.tables.routes.lookup(packet.src) != Some(NextHop::Node(node)) {
            return self.drop_event(now, origin, &packet, frame, DropReason::SpoofedIp);
        }
        self.forward(now, origin, buf, frame, &packet)
    }

    /// Answers an ARP request if it asks for an address the datapath routes for the
    /// port it came from.
    fn answer_arp(&mut self, kind: PortKind, buf: &mut [u8], frame: Span) -> Action {
        let bytes = &mut buf[frame.range()];
        let request = match arp::read_request(bytes) {
            Ok(r) => r,
            Err(reason) => return Action::Drop(reason),
        };
        let answer = match kind {
            PortKind::Pod { ip, .. } => {
                if request.sender_ip != ip {
                    return Action::Drop(DropReason::SpoofedIp);
                }
                self.config.pod_cidr.contains(request.target_ip)
            }
            PortKind::Host { .. } => request.target_ip != self.config.gateway,
            PortKind::Underlay => false,
        };
        if !answer {
            return Action::Drop(DropReason::ArpNotAnswered);
        }
        arp::write_reply(bytes, &request, self.config.router_mac);
        Action::Reply { frame }
    }

    /// Tracks, translates, polices, routes and forwards an IPv4 packet.
    fn forward(
        &mut self,
        now: Instant,
        origin: Origin,
        buf: &mut [u8],
        frame: Span,
        packet: &Ipv4Summary,
    ) -> Action {
        let fate = match self.tables.conntrack.lookup(&packet.key, now) {
            Some((id, dir)) => self.established(now, origin, id, dir, frame, packet),
            None if packet.icmp_error => Fate::Drop(DropReason::UntrackedIcmpError),
            None => self.new_connection(now, origin, buf, frame, packet),
        };
        match fate {
            Fate::Forward(decided) => self.transmit(now, origin, buf, frame, packet, decided),
            Fate::Done(action) => action,
            Fate::Drop(reason) => self.drop_event(now, origin, packet, frame, reason),
        }
    }

    /// A packet of a tracked connection: its cached translation applies. If policy
    /// changed since the connection's verdict, the verdict is re-evaluated once, so a
    /// policy that no longer allows a connection cuts it, and one that still does keeps
    /// both directions flowing.
    fn established(
        &mut self,
        now: Instant,
        origin: Origin,
        id: conntrack::EntryId,
        dir: Direction,
        frame: Span,
        packet: &Ipv4Summary,
    ) -> Fate {
        let epoch = self.policy_epoch;
        let Some(entry) = self.tables.conntrack.entry(id) else {
            return Fate::Drop(DropReason::ConntrackFull);
        };
        let translated = entry.translated(dir);
        if entry.policy_epoch != epoch {
            let original = *entry.original();
            let forward = entry.translated(Direction::Original);
            let verdict = self.connection_verdict(&original, &forward);
            if !verdict.is_allow() {
                self.tables.conntrack.remove(id);
                return Fate::Drop(policy_drop_reason(&verdict));
            }
            if let Some(entry) = self.tables.conntrack.entry_mut(id) {
                entry.verdict = verdict.pack();
                entry.policy_epoch = epoch;
            }
        }
        let hop = match self.cached_route(origin, id, dir, &translated) {
            Ok(hop) => hop,
            Err(reason) => return Fate::Drop(reason),
        };
        if self.needs_software_offload(packet, hop) {
            return Fate::Done(Action::Drop(DropReason::NeedsSoftwareOffload));
        }
        if !packet.icmp_error {
            // An invalid TCP transition is tolerated (as with nf_conntrack_tcp_loose):
            // the connection's owner decides, not the middlebox.
            let _ = self
                .tables
                .conntrack
                .update(id, dir, packet.tcp_flags, frame.len, now);
        }
        match Rewrite::between(&packet.key, &translated) {
            Ok(rewrite) => Fate::Forward(Decided {
                translated,
                rewrite,
                hop,
                new_connection: None,
            }),
            Err(_) => Fate::Drop(DropReason::NatFailed),
        }
    }

    /// The first packet of a connection: service translation, policy, a conntrack entry.
    fn new_connection(
        &mut self,
        now: Instant,
        origin: Origin,
        buf: &mut [u8],
        frame: Span,
        packet: &Ipv4Summary,
    ) -> Fate {
        let key = packet.key;
        let mut translated = key;
        let mut nat = Nat {
            dnat: None,
            snat: None,
        };
        let mut service = None;
        if matches!(key.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
            let query = ServiceQuery {
                dst: key.dst,
                dst_port: key.dst_port,
                protocol: key.protocol,
                client: key.src,
                flow_hash: key.hash(self.config.flow_seed),
                to_node_address: key.dst == self.config.vxlan.local_ip,
                from_external: !self.is_cluster_address(packet.src),
            };
            match self.tables.services.lookup(&query, now) {
                Decision::Forward(f) => {
                    service = Some(f.service);
                    translated.dst = f.backend;
                    translated.dst_port = f.port;
                    nat.dnat = Some(NatTarget {
                        addr: f.backend,
                        port: f.port,
                    });
                    if f.snat {
                        let port = self.snat_port(&translated, now);
                        translated.src = IpAddr::V4(self.config.gateway);
                        translated.src_port = port;
                        nat.snat = Some(NatTarget {
                            addr: translated.src,
                            port,
                        });
                    }
                }
                Decision::Reject(id) => return self.reject(now, origin, buf, frame, packet, id),
                Decision::Drop(_) => return Fate::Drop(DropReason::NoServiceBackend),
                Decision::NoService => {}
            }
        }
        let hop = match self.route(origin, &translated) {
            Ok(hop) => hop,
            Err(reason) => return Fate::Drop(reason),
        };
        if self.needs_software_offload(packet, hop) {
            return Fate::Done(Action::Drop(DropReason::NeedsSoftwareOffload));
        }
        let verdict = self.connection_verdict(&key, &translated);
        if !verdict.is_allow() {
            let reason = policy_drop_reason(&verdict);
            self.emit(
                now,
                origin,
                packet,
                frame,
                Some(translated),
                EventOutcome::Dropped(reason),
                Some(verdict),
                service,
            );
            return Fate::Done(Action::Drop(reason));
        }
        let rewrite = match Rewrite::between(&key, &translated) {
            Ok(r) => r,
            Err(_) => return Fate::Drop(DropReason::NatFailed),
        };
        let id = match self.tables.conntrack.insert(key, nat, now) {
            Ok(id) => id,
            Err(_) => return Fate::Drop(DropReason::ConntrackFull),
        };
        let (epoch, route_epoch) = (self.policy_epoch, self.route_epoch);
        if let Some(entry) = self.tables.conntrack.entry_mut(id) {
            entry.verdict = verdict.pack();
            entry.policy_epoch = epoch;
            entry.route_cache = [encode_hop(hop), 0];
            entry.route_epoch = route_epoch;
            entry.service = service.map_or(u16::MAX, |s| s.0);
        }
        let _ =
            self.tables
                .conntrack
                .update(id, Direction::Original, packet.tcp_flags, frame.len, now);
        Fate::Forward(Decided {
            translated,
            rewrite,
            hop,
            new_connection: Some((verdict, service)),
        })
    }

    /// NetworkPolicy for a connection from `key.src` to the translated destination.
    /// Traffic from the node itself (its gateway or underlay address) is not policed:
    /// kubelet probes must reach their pods.
    fn connection_verdict(&self, key: &FlowKey, translated: &FlowKey) -> ConnVerdict {
        let from_this_node =
            key.src == IpAddr::V4(self.config.gateway) || key.src == self.config.vxlan.local_ip;
        if from_this_node {
            let open = Verdict::Allow(AllowReason::NotIsolated);
            return ConnVerdict {
                egress: open,
                ingress: open,
            };
        }
        self.tables.policy.evaluate_connection(
            key.src,
            translated.dst,
            translated.dst_port,
            key.protocol,
        )
    }

    /// Whether `addr` belongs to the cluster's pod address space as this node knows
    /// it: a local pod, the node's own gateway, or any remote node's block.
    fn is_cluster_address(&self, addr: Ipv4Addr) -> bool {
        addr == self.config.gateway
            || matches!(
                self.tables.routes.lookup(addr),
                Some(NextHop::Port(_) | NextHop::Node(_))
            )
    }

    /// A source port for SNAT to the gateway address whose reply tuple is free: the
    /// client's own port if possible, else a hashed port in the ephemeral range.
    fn snat_port(&self, translated: &FlowKey, now: Instant) -> u16 {
        let mut reply = FlowKey {
            src: translated.dst,
            dst: IpAddr::V4(self.config.gateway),
            src_port: translated.dst_port,
            dst_port: translated.src_port,
            protocol: translated.protocol,
            zone: translated.zone,
        };
        let mut hash = translated.hash(self.config.flow_seed);
        for _ in 0..16 {
            if !self.tables.conntrack.contains(&reply, now) {
                break;
            }
            reply.dst_port = 32768 + (hash % 28232) as u16;
            hash = crate::flow::fmix64(hash);
        }
        reply.dst_port
    }

    /// Whether an offloaded packet must go back to the shell: it is routed where
    /// offloads do not reach — the overlay (if its segments fit the underlay MTU;
    /// otherwise the MTU check answers it) or a raw underlay device.
    fn needs_software_offload(&self, packet: &Ipv4Summary, hop: NextHop) -> bool {
        if !packet.meta.is_offloaded() {
            return false;
        }
        match hop {
            NextHop::Node(_) => {
                !self.overlay_gso && packet.wire_len() <= usize::from(self.config.vxlan.pod_mtu())
            }
            NextHop::Gateway(_) => self.tables.ports.underlay().is_some(),
            NextHop::Port(_) | NextHop::Host | NextHop::Blackhole => false,
        }
    }

    /// Where the translated packet goes. Traffic from the overlay may only be
    /// delivered locally.
    fn route(&self, origin: Origin, translated: &FlowKey) -> Result<NextHop, DropReason> {
        check_origin(origin, self.lookup_hop(translated)?)
    }

    /// The route table's next hop for the translated destination.
    fn lookup_hop(&self, translated: &FlowKey) -> Result<NextHop, DropReason> {
        let IpAddr::V4(dst) = translated.dst else {
            return Err(DropReason::NoRoute);
        };
        self.tables.routes.lookup(dst).ok_or(DropReason::NoRoute)
    }

    /// Where a tracked connection's packet goes: the next hop cached in its entry for
    /// this direction while the routes are unchanged, else a fresh lookup, cached.
    fn cached_route(
        &mut self,
        origin: Origin,
        id: conntrack::EntryId,
        dir: Direction,
        translated: &FlowKey,
    ) -> Result<NextHop, DropReason> {
        let epoch = self.route_epoch;
        let slot = dir as usize;
        let cached = self
            .tables
            .conntrack
            .entry(id)
            .filter(|e| e.route_epoch == epoch)
            .and_then(|e| decode_hop(e.route_cache[slot]));
        let hop = match cached {
            Some(hop) => hop,
            None => {
                let hop = self.lookup_hop(translated)?;
                if let Some(entry) = self.tables.conntrack.entry_mut(id) {
                    if entry.route_epoch != epoch {
                        entry.route_cache = [0; 2];
                        entry.route_epoch = epoch;
                    }
                    entry.route_cache[slot] = encode_hop(hop);
                }
                hop
            }
        };
        check_origin(origin, hop)
    }

    /// Answers a connection to a service without backends as kube-proxy does: a TCP
    /// reset, or ICMP port unreachable for other protocols.
    fn reject(
        &mut self,
        now: Instant,
        origin: Origin,
        buf: &mut [u8],
        frame: Span,
        packet: &Ipv4Summary,
        service: ServiceId,
    ) -> Fate {
        self.drops.count(DropReason::NoServiceBackend);
        self.emit(
            now,
            origin,
            packet,
            frame,
            None,
            EventOutcome::Rejected,
            None,
            Some(service),
        );
        let reply = if packet.key.protocol == PROTO_TCP {
            reject::write_tcp_reset(buf, frame, packet, self.config.router_mac).ok()
        } else {
            reject::write_icmp_error(
                buf,
                frame,
                packet,
                IcmpError::PortUnreachable,
                packet.dst,
                self.config.router_mac,
            )
        };
        match reply {
            Some(frame) => Fate::Done(Action::Reply { frame }),
            None => Fate::Done(Action::Drop(DropReason::NoServiceBackend)),
        }
    }

    /// Applies a decision to the buffer and produces the action.
    fn transmit(
        &mut self,
        now: Instant,
        origin: Origin,
        buf: &mut [u8],
        frame: Span,
        packet: &Ipv4Summary,
        decided: Decided,
    ) -> Action {
        if let Some(action) = self.icmp_errors_before_forwarding(buf, frame, packet, decided.hop) {
            return action;
        }
        let bytes = &mut buf[frame.range()];
        if !decided.rewrite.is_empty() {
            let mode = if packet.meta.checksum_partial {
                ChecksumMode::Partial
            } else {
                ChecksumMode::Complete
            };
            let rewritten = if packet.icmp_error {
                nat::translate_icmp_error_frame_with(bytes, &decided.rewrite, mode)
            } else {
                nat::rewrite_frame_with(bytes, &decided.rewrite, mode)
            };
            if rewritten.is_err() {
                return self.drop_event(now, origin, packet, frame, DropReason::NatFailed);
            }
        }
        decrement_ttl(bytes, packet.ip);
        let action = match decided.hop {
            NextHop::Port(port) => self.deliver_local(port, bytes, frame),
            NextHop::Host => match self.tables.ports.host() {
                Some(port) => self.deliver_local(port, bytes, frame),
                None => Action::Drop(DropReason::NoRoute),
            },
            NextHop::Node(node) => {
                let entropy = self.entropy(packet, &decided.translated);
                // A super-frame is measured by its first full segment.
                let segment = packet.meta.gso_size.map(|_| packet.ip + packet.wire_len());
                self.encapsulate(node, buf, frame, entropy, segment)
            }
            NextHop::Gateway(next_hop) => self.route_direct(next_hop, bytes, frame),
            NextHop::Blackhole => Action::Drop(DropReason::Blackhole),
        };
        if let Some((verdict, service)) = decided.new_connection {
            let outcome = match action {
                Action::Deliver { port, .. } => EventOutcome::Delivered(port),
                Action::Encap(e) => EventOutcome::Encapsulated(e.node),
                Action::Reply { .. } => EventOutcome::Rejected,
                Action::Drop(reason) => EventOutcome::Dropped(reason),
            };
            let translated = (decided.translated != packet.key).then_some(decided.translated);
            self.emit(
                now,
                origin,
                packet,
                frame,
                translated,
                outcome,
                Some(verdict),
                service,
            );
        }
        action
    }

    /// ICMP time exceeded when the TTL runs out, and fragmentation needed when a
    /// packet would not fit the overlay; `None` when the packet may be forwarded.
    fn icmp_errors_before_forwarding(
        &mut self,
        buf: &mut [u8],
        frame: Span,
        packet: &Ipv4Summary,
        hop: NextHop,
    ) -> Option<Action> {
        let (reason, error) = if packet.ttl <= 1 {
            (DropReason::TtlExceeded, IcmpError::TimeExceeded)
        } else if matches!(hop, NextHop::Node(_))
            && packet.wire_len() > self.config.vxlan.pod_mtu() as usize
        {
            if !packet.dont_fragment {
                return Some(Action::Drop(DropReason::ExceedsUnderlayMtu));
            }
            let mtu = self.config.vxlan.pod_mtu();
            (
                DropReason::ExceedsUnderlayMtu,
                IcmpError::FragmentationNeeded { mtu },
            )
        } else {
            return None;
        };
        let reply = reject::write_icmp_error(
            buf,
            frame,
            packet,
            error,
            self.config.gateway,
            self.config.router_mac,
        );
        Some(match reply {
            Some(frame) => {
                self.drops.count(reason);
                Action::Reply { frame }
            }
            None => Action::Drop(reason),
        })
    }

    /// Delivers to a local pod or the host, from the router MAC.
    fn deliver_local(&self, port: PortId, bytes: &mut [u8], frame: Span) -> Action {
        let mac = match self.tables.ports.get(port) {
            Some(PortKind::Pod { mac, .. } | PortKind::Host { mac }) => mac,
            _ => return Action::Drop(DropReason::UnknownPort),
        };
        set_macs(bytes, mac, self.config.router_mac);
        Action::Deliver { port, frame }
    }

    /// The VXLAN entropy hash of the packet as it leaves (carrying `translated`), when
    /// it can be had from the key: for TCP, UDP and SCTP packets that are not
    /// fragments, [`crate::vxlan::inner_flow_hash`] of the frame is the flow hash of
    /// its tuple. `None` (read the frame) otherwise.
    fn entropy(&self, packet: &Ipv4Summary, translated: &FlowKey) -> Option<u64> {
        let by_key = matches!(translated.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
            && !packet.more_fragments
            && !packet.icmp_error;
        by_key.then(|| {
            FlowKey {
                zone: 0,
                ..*translated
            }
            .hash(self.config.vxlan.flow_seed)
        })
    }

    /// Encapsulates towards `node`'s VTEP. The inner frame goes from our VTEP (router)
    /// MAC to the remote VTEP's MAC, as a kernel VXLAN device expects. `entropy` is the
    /// inner frame's flow hash if already known.
    fn encapsulate(
        &mut self,
        node: NodeId,
        buf: &mut [u8],
        frame: Span,
        entropy: Option<u64>,
        segment: Option<usize>,
    ) -> Action {
        let Some(vtep) = self.tables.vteps.get(node).copied() else {
            return Action::Drop(DropReason::UnknownNode);
        };
        set_macs(&mut buf[frame.range()], vtep.mac, self.config.router_mac);
        self.ip_ident = self.ip_ident.wrapping_add(1);
        let vxlan = &self.config.vxlan;
        let entropy = match entropy {
            Some(hash) => hash,
            None => crate::vxlan::inner_flow_hash(&buf[frame.range()], vxlan.flow_seed),
        };
        let encapsulated = match segment {
            Some(segment) => vxlan.encapsulate_super_frame(
                &vtep,
                buf,
                frame.start,
                frame.len,
                segment,
                self.ip_ident,
                entropy,
            ),
            None => vxlan.encapsulate_with_hash(
                &vtep,
                buf,
                frame.start,
                frame.len,
                self.ip_ident,
                entropy,
            ),
        };
        match encapsulated {
            Ok(e) => {
                let payload = e.udp_payload();
                Action::Encap(Encapsulated {
                    node,
                    remote: vtep.ip,
                    remote_port: self.config.vxlan.dst_port,
                    source_port: e.src_port,
                    outer_frame: Span {
                        start: e.start,
                        len: e.len,
                    },
                    udp_payload: Span {
                        start: payload.start,
                        len: payload.len(),
                    },
                })
            }
            Err(EncapError::InsufficientHeadroom { .. }) => Action::Drop(DropReason::NoHeadroom),
            Err(EncapError::MtuExceeded { .. }) => Action::Drop(DropReason::ExceedsUnderlayMtu),
            Err(_) => Action::Drop(DropReason::UnknownNode),
        }
    }

    /// Routes without encapsulation to `next_hop`: out of the raw underlay device to
    /// the next hop's MAC when there is one, else to the host, whose kernel routing
    /// table (programmed by BGP) knows the way.
    fn route_direct(&self, next_hop: Ipv4Addr, bytes: &mut [u8], frame: Span) -> Action {
        match self.tables.ports.underlay() {
            Some(port) => match self.tables.vteps.get_by_ip(IpAddr::V4(next_hop)) {
                Some(peer) => {
                    set_macs(bytes, peer.mac, self.config.vxlan.local_mac);
                    Action::Deliver { port, frame }
                }
                None => Action::Drop(DropReason::UnknownNode),
            },
            None => match self.tables.ports.host() {
                Some(port) => self.deliver_local(port, bytes, frame),
                None => Action::Drop(DropReason::NoRoute),
            },
        }
    }

    /// Reports a dropped packet and returns the drop.
    fn drop_event(
        &mut self,
        now: Instant,
        origin: Origin,
        packet: &Ipv4Summary,
        frame: Span,
        reason: DropReason,
    ) -> Action {
        self.emit(
            now,
            origin,
            packet,
            frame,
            None,
            EventOutcome::Dropped(reason),
            None,
            None,
        );
        Action::Drop(reason)
    }

    /// Pushes one flow event.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        now: Instant,
        origin: Origin,
        packet: &Ipv4Summary,
        frame: Span,
        translated: Option<FlowKey>,
        outcome: EventOutcome,
        policy: Option<ConnVerdict>,
        service: Option<ServiceId>,
    ) {
        self.events.emit(FlowEvent {
            time: now,
            key: packet.key,
            translated,
            source: origin.event_source(),
            outcome,
            policy,
            service,
            bytes: frame.len as u32,
        });
    }
}

/// Whether a packet from `origin` may take `hop`: traffic from the overlay may only be
/// delivered locally, and nothing passes a blackhole.
fn check_origin(origin: Origin, hop: NextHop) -> Result<NextHop, DropReason> {
    match (origin, hop) {
        (_, NextHop::Blackhole) => Err(DropReason::Blackhole),
        (Origin::Overlay(_), NextHop::Port(_) | NextHop::Host) => Ok(hop),
        (Origin::Overlay(_), _) => Err(DropReason::NotLocal),
        _ => Ok(hop),
    }
}

/// A next hop as the 64-bit value cached in a conntrack entry (never 0).
fn encode_hop(hop: NextHop) -> u64 {
    match hop {
        NextHop::Port(p) => 1 << 32 | u64::from(p.0),
        NextHop::Host => 2 << 32,
        NextHop::Node(n) => 3 << 32 | u64::from(n.0),
        NextHop::Gateway(ip) => 4 << 32 | u64::from(u32::from(ip)),
        NextHop::Blackhole => 5 << 32,
    }
}

/// The next hop cached by [`encode_hop`], or `None` for an empty slot.
fn decode_hop(bits: u64) -> Option<NextHop> {
    let low = bits as u32;
    match bits >> 32 {
        1 => Some(NextHop::Port(PortId(low as u16))),
        2 => Some(NextHop::Host),
        3 => Some(NextHop::Node(NodeId(low as u16))),
        4 => Some(NextHop::Gateway(Ipv4Addr::from(low))),
        5 => Some(NextHop::Blackhole),
        _ => None,
    }
}

/// The drop reason for a denied connection: egress is checked first.
fn policy_drop_reason(verdict: &ConnVerdict) -> DropReason {
    if verdict.egress.is_allow() {
        DropReason::PolicyDeniedIngress
    } else {
        DropReason::PolicyDeniedEgress
    }
}

/// The drop reason for a VXLAN packet that failed decapsulation.
fn decap_drop_reason(error: DecapError) -> DropReason {
    match error {
        DecapError::UnknownVtep => DropReason::UnknownVtep,
        DecapError::UnknownVni => DropReason::UnknownVni,
        DecapError::WrongDstPort => DropReason::WrongVxlanPort,
        DecapError::Ipv4BadChecksum => DropReason::BadIpv4Checksum,
        _ => DropReason::MalformedVxlan,
    }
}

/// Sets a frame's destination and source MAC addresses.
fn set_macs(frame: &mut [u8], dst: EthernetAddress, src: EthernetAddress) {
    frame[0..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
}

/// Decrements the TTL of the IPv4 header at `ip`, updating its checksum (RFC 1624).
fn decrement_ttl(frame: &mut [u8], ip: usize) {
    let word = u16::from_be_bytes([frame[ip + 8], frame[ip + 9]]);
    let new_word = word - 0x0100;
    frame[ip + 8] -= 1;
    let sum = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
    let sum = checksum::update16(sum, word, new_word);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
}

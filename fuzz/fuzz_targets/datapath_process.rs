//! Fuzzes `Datapath::process` with sequences of frames on every ingress, so that
//! connection tracking, NAT and policy state evolve between packets.
//!
//! Set-up (fresh for every input): node 1 (block 10.244.1.0/24, underlay 192.0.2.1) with
//! pods A (10.244.1.2, port 1) and C (10.244.1.3, port 2), the host (port 0) and a raw
//! underlay device (port 3); remote node 2 (block 10.244.2.0/24, underlay 192.0.2.2)
//! with pod B; a ClusterIP service 10.96.0.10:80/TCP (backends A and B) with a NodePort
//! 30080 on the node address; C isolated for ingress (TCP 8080 from A only); a
//! conntrack of only 16 entries (so it fills up and evicts) and a small event ring.
//!
//! The input is a sequence of records `[selector, time step, len_lo, len_hi, bytes…]`:
//!
//! * selector bits 0–2: the ingress — pod A, pod C, host, raw underlay port, the VXLAN
//!   socket from node 2, the socket from an unknown address, an unknown port, or (7) a
//!   control-plane step instead of a frame (policy change, conntrack expiry, a route
//!   or VTEP update, overlay GSO on or off, chosen by the first byte);
//! * bit 3: the frame is offloaded (`process_with`: a GSO super-frame of segments of
//!   `step × 8 + 1` bytes — `step` 0 means a partial checksum only — with a partial
//!   checksum), as a TAP with offloads hands them over;
//! * bits 4–5: the headroom in front of the frame (64, 0, 20 or 50 bytes);
//! * bit 7: *template* mode: the bytes are (offset, xor) edits to one of a few valid
//!   frames chosen by the first byte (TCP, UDP, ICMP echo and errors, ARP, a large
//!   datagram; for the underlay ingresses the edited inner frame is encapsulated by
//!   node 2), and the inner IPv4 header checksum is fixed unless bit 6 is set. Without
//!   bit 7 the bytes are the frame as is.
//!
//! The time step advances the clock by `step × 0.5 s` (so idle timeouts pass). Checked
//! after every packet: no panic, conntrack within its capacity, and every span of the
//! action inside the buffer. The input then runs again on a fresh node through
//! `Datapath::process_burst`, every run of frames with time step 0 as one burst: the
//! actions, the frames' bytes and the drop counters must be those of the one-by-one
//! run.
#![no_main]

use core::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use podwire_core::datapath::{
    Action, BurstFrame, Datapath, DatapathConfig, FlowEvent, FrameMeta, Ingress, PortKind, Span,
    HEADROOM,
};
use podwire_core::ids::{NodeId, PortId};
use podwire_core::policy::{
    DirPolicy, EndpointPolicy, Identity, PeerSpec, PolicyId, PortProtocol, PortRange, RuleSpec,
};
use podwire_core::route::{Ipv4Prefix, NextHop};
use podwire_core::service::{FrontendKind, ServiceId};
use podwire_core::vxlan::{Vtep, VxlanConfig, IPV4_OVERHEAD};
use podwire_core::wire::EthernetAddress;
use podwire_core::{Duration, Instant};
use podwire_testkit::{add_tcp_service, ready_backend, NodeStore, TableSizes};

const ROUTER1: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 1]);
const ROUTER2: EthernetAddress = EthernetAddress([0x02, 0xaa, 0, 0, 0, 2]);
const UNDERLAY_MAC1: EthernetAddress = EthernetAddress([0x02, 0xbb, 0, 0, 0, 1]);
const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0xcc, 0, 0, 0, 0]);
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 3];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const GW1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HOST: PortId = PortId(0);
const PORT_A: PortId = PortId(1);
const PORT_C: PortId = PortId(2);
const RAW_UNDERLAY: PortId = PortId(3);
const CONNTRACK_ENTRIES: usize = 16;
const MAGLEV_SIZE: u32 = 251;

/// The sizes of the node's tables.
const SIZES: TableSizes = TableSizes {
    ports: 6,
    route_direct_bits: 8,
    routes: 16,
    route_gateways: 4,
    vteps: 4,
    services: 2,
    frontends: 8,
    backends: 8,
    backends_per_service: 4,
    max_maglev: MAGLEV_SIZE,
    maglev_entries: 2 * MAGLEV_SIZE as usize,
    affinity: 8,
    connections: CONNTRACK_ENTRIES,
    addresses: 16,
    endpoint_policies: 4,
    rules: 8,
    policy_ports: 8,
    peers: 8,
    prefixes: 4,
};

fn datapath(st: &mut NodeStore) -> Datapath<'_> {
    let mut vxlan = VxlanConfig::new(IpAddr::V4(NODE1_IP), UNDERLAY_MAC1);
    vxlan.underlay_mtu = 1500;
    let config = DatapathConfig {
        node: NodeId(1),
        router_mac: ROUTER1,
        gateway: GW1,
        pod_cidr: Ipv4Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap(),
        vxlan,
        flow_seed: 7,
    };
    let tables = st.tables(NodeId(1)).unwrap();
    let mut dp = Datapath::new(config, tables);
    let ports = dp.ports_mut();
    ports.set(HOST, PortKind::Host { mac: HOST_MAC }).unwrap();
    ports.set(RAW_UNDERLAY, PortKind::Underlay).unwrap();
    for (port, ip, mac) in [(PORT_A, A, A_MAC), (PORT_C, C, C_MAC)] {
        dp.ports_mut()
            .set(
                port,
                PortKind::Pod {
                    ip,
                    mac: EthernetAddress(mac),
                },
            )
            .unwrap();
        dp.routes_mut()
            .insert(Ipv4Prefix::host(ip), NextHop::Port(port))
            .unwrap();
    }
    dp.routes_mut()
        .insert(Ipv4Prefix::host(GW1), NextHop::Host)
        .unwrap();
    add_peer(&mut dp);

    add_tcp_service(
        dp.services_mut(),
        ServiceId(0),
        &[
            ready_backend(A, 8080, NodeId(1)),
            ready_backend(B, 8080, NodeId(2)),
        ],
        &[
            (SERVICE_IP, 80, FrontendKind::ClusterIp),
            (NODE1_IP, 30080, FrontendKind::NodePort),
        ],
    )
    .unwrap();
    isolate_c(&mut dp, true);
    dp
}

fn add_peer(dp: &mut Datapath<'_>) {
    dp.vteps_mut()
        .insert(Vtep {
            node: NodeId(2),
            ip: IpAddr::V4(NODE2_IP),
            mac: ROUTER2,
        })
        .unwrap();
    dp.routes_mut()
        .insert(
            Ipv4Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap(),
            NextHop::Node(NodeId(2)),
        )
        .unwrap();
}

/// C isolated for ingress: TCP 8080 from A only (`allow`), or nothing at all.
fn isolate_c(dp: &mut Datapath<'_>, allow: bool) {
    let t = dp.policy_mut();
    t.clear();
    if allow {
        let peers = t
            .add_peer_set(&PeerSpec {
                identities: &[Identity(1)],
                ..PeerSpec::default()
            })
            .unwrap();
        let ports = t
            .add_port_set(&[PortRange::single(PortProtocol::Tcp, 8080)])
            .unwrap();
        t.push_rule(&RuleSpec {
            policy: PolicyId(7),
            index: 0,
            peers,
            only: None,
            ports,
        })
        .unwrap();
    }
    let ingress = t.finish_rule_set(Some(PolicyId(7)));
    let endpoint = t
        .add_endpoint_policy(EndpointPolicy {
            ingress,
            egress: DirPolicy::OPEN,
        })
        .unwrap();
    for (ip, id) in [(A, 1), (C, 3), (B, 2)] {
        t.set_identity(IpAddr::V4(ip), Some(Identity(id))).unwrap();
    }
    t.set_endpoint(IpAddr::V4(C), Some(endpoint)).unwrap();
}

/// The folded ones'-complement sum of big-endian 16-bit words.
fn ones_sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for pair in data.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Recomputes the IPv4 header checksum of an Ethernet frame, if its header lets us.
fn fix_ipv4_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let c = !ones_sum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An Ethernet/IPv4 frame with `l4` as payload (header checksum correct).
fn ipv4(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&ROUTER1.0);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    fix_ipv4_checksum(&mut f);
    f
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t.extend_from_slice(b"data");
    t
}

fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload_len];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    u
}

fn arp(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// A valid frame for `ingress` (0 A, 1 C, 2 host, otherwise from B through the
/// overlay), chosen by `which`.
fn template(ingress: u8, which: u8) -> Vec<u8> {
    let (mac, src) = match ingress {
        0 => (A_MAC, A),
        1 => (C_MAC, C),
        2 => (HOST_MAC.0, GW1),
        _ => (B_MAC, B),
    };
    let peer = if ingress >= 3 { A } else { B };
    match which % 12 {
        0 => ipv4(mac, src, peer, 6, &tcp(40000, 8080, 0x02)),
        1 => ipv4(mac, src, peer, 6, &tcp(40000, 8080, 0x10)),
        2 => ipv4(mac, src, SERVICE_IP, 6, &tcp(40001, 80, 0x02)),
        3 => ipv4(mac, src, C, 6, &tcp(40002, 8080, 0x02)),
        4 => ipv4(mac, src, peer, 17, &udp(5353, 53, 4)),
        5 => ipv4(mac, src, peer, 1, &[8, 0, 0, 0, 0, 7, 0, 1, 1, 2, 3, 4]),
        6 => {
            // Port unreachable quoting a UDP datagram of the reverse flow.
            let quoted = ipv4(mac, peer, src, 17, &udp(53, 5353, 0));
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quoted[14..42]);
            ipv4(mac, src, peer, 1, &icmp)
        }
        7 => arp(mac, src, GW1),
        8 => arp(mac, src, peer),
        9 => ipv4(mac, src, peer, 17, &udp(1, 2, 1430)),
        10 => ipv4(mac, src, NODE1_IP, 6, &tcp(40003, 30080, 0x02)),
        _ => ipv4(mac, src, peer, 132, &udp(7, 9, 4)),
    }
}

/// `inner` as node 2 sends it to us: the whole outer frame.
fn from_node2(inner: &[u8]) -> Vec<u8> {
    let mut c = VxlanConfig::new(IpAddr::V4(NODE2_IP), ROUTER2);
    c.underlay_mtu = u16::MAX;
    let us = Vtep {
        node: NodeId(1),
        ip: IpAddr::V4(NODE1_IP),
        mac: UNDERLAY_MAC1,
    };
    let mut buf = vec![0u8; IPV4_OVERHEAD + inner.len()];
    buf[IPV4_OVERHEAD..].copy_from_slice(inner);
    match c.encapsulate(&us, &mut buf, IPV4_OVERHEAD, inner.len(), 1) {
        Ok(e) => buf[e.frame()].to_vec(),
        Err(_) => buf,
    }
}

fn within(span: Span, buf_len: usize) -> bool {
    span.start
        .checked_add(span.len)
        .is_some_and(|end| end <= buf_len)
}

fn control(dp: &mut Datapath<'_>, op: u8, now: Instant) {
    match op % 7 {
        6 => dp.set_overlay_gso(op & 0x40 != 0),
        0 => isolate_c(dp, true),
        1 => isolate_c(dp, false),
        2 => {
            dp.conntrack_mut().expire(now, 8);
        }
        3 => {
            let _ = dp.routes_mut().remove(Ipv4Prefix::host(C));
        }
        4 => {
            let _ = dp.vteps_mut().insert(Vtep {
                node: NodeId(2),
                ip: IpAddr::V4(NODE2_IP),
                mac: EthernetAddress([2, 0xdd, 0, 0, 0, op]),
            });
        }
        _ => {
            dp.vteps_mut().clear();
            if op & 0x80 != 0 {
                add_peer(dp);
            }
        }
    }
}

/// One step of an input: a control-plane change, or a frame at a time.
enum Record {
    Control(u8, Instant),
    Frame(Instant, Input),
}

/// A frame of an input and where it enters.
struct Input {
    ingress: Ingress,
    buf: Vec<u8>,
    span: Span,
    meta: FrameMeta,
}

/// The records of an input (see the module documentation).
fn records(data: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut now = Instant::from_secs(1_000_000);
    let mut rest = data;
    while let [selector, step, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*step) * 500);
        let ingress_sel = selector & 7;
        if ingress_sel == 7 {
            out.push(Record::Control(bytes.first().copied().unwrap_or(0), now));
            continue;
        }
        let frame = if selector & 0x80 != 0 {
            let (which, edits) = bytes.split_first().map_or((0, &[][..]), |(w, e)| (*w, e));
            let mut f = template(ingress_sel, which);
            for pair in edits.chunks_exact(2) {
                let at = usize::from(pair[0]) % f.len();
                f[at] ^= pair[1];
            }
            if selector & 0x40 == 0 {
                fix_ipv4_checksum(&mut f);
            }
            match ingress_sel {
                3 | 6 => from_node2(&f),
                4 | 5 => {
                    let outer = from_node2(&f);
                    outer.get(42..).unwrap_or(&[]).to_vec()
                }
                _ => f,
            }
        } else {
            bytes.to_vec()
        };
        let ingress = match ingress_sel {
            0 => Ingress::Port(PORT_A),
            1 => Ingress::Port(PORT_C),
            2 => Ingress::Port(HOST),
            3 => Ingress::Port(RAW_UNDERLAY),
            4 => Ingress::Underlay {
                source: IpAddr::V4(NODE2_IP),
                source_port: 50000,
            },
            5 => Ingress::Underlay {
                source: IpAddr::V4(Ipv4Addr::new(198, 51, 100, *step)),
                source_port: 50000,
            },
            _ => Ingress::Port(PortId(5)),
        };
        let headroom = [HEADROOM, 0, 20, 50][usize::from(selector >> 4 & 3)];
        let mut buf = vec![0u8; headroom + frame.len()];
        buf[headroom..].copy_from_slice(&frame);
        let span = Span {
            start: headroom,
            len: frame.len(),
        };
        let meta = if selector & 0x08 != 0 {
            FrameMeta {
                gso_size: (*step != 0).then(|| u16::from(*step) * 8 + 1),
                checksum_partial: true,
            }
        } else {
            FrameMeta::PLAIN
        };
        out.push(Record::Frame(
            now,
            Input {
                ingress,
                buf,
                span,
                meta,
            },
        ));
    }
    out
}

/// Runs `records` one frame at a time, checking every action; returns the actions and
/// the time of the last frame.
fn run(records: &mut [Record], dp: &mut Datapath<'_>) -> (Vec<Action>, Instant) {
    let mut actions = Vec::new();
    let mut last = Instant::from_secs(1_000_000);
    for record in records.iter_mut() {
        let (now, f) = match record {
            Record::Control(op, now) => {
                control(dp, *op, *now);
                continue;
            }
            Record::Frame(now, f) => (*now, f),
        };
        last = now;
        let buf = &mut f.buf;
        let action = if f.meta.is_offloaded() {
            dp.process_with(now, f.ingress, buf, f.span, f.meta)
        } else {
            dp.process(now, f.ingress, buf, f.span)
        };
        match action {
            Action::Deliver { frame, .. } | Action::Reply { frame } => {
                assert!(within(frame, buf.len()), "{action:?} outside {}", buf.len());
            }
            Action::Encap(e) => {
                assert!(within(e.outer_frame, buf.len()), "{action:?}");
                assert!(within(e.udp_payload, buf.len()), "{action:?}");
                assert_eq!(e.remote, IpAddr::V4(NODE2_IP));
            }
            Action::Drop(_) => {}
        }
        actions.push(action);
        let ct = &dp.tables().conntrack;
        assert!(ct.len() <= ct.capacity());
        assert_eq!(ct.iter().count(), ct.len());
    }
    (actions, last)
}

/// Runs `records` with `process_burst`, each run of frames that arrive at the same
/// time as one burst; returns the actions.
fn run_bursts(records: &mut [Record], dp: &mut Datapath<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut burst: Vec<BurstFrame<'_>> = Vec::new();
    let mut burst_now = None;
    for record in records.iter_mut() {
        match record {
            Record::Control(op, now) => {
                flush(dp, burst_now, &mut burst, &mut actions);
                control(dp, *op, *now);
            }
            Record::Frame(now, f) => {
                if burst_now != Some(*now) {
                    flush(dp, burst_now, &mut burst, &mut actions);
                    burst_now = Some(*now);
                }
                let mut frame = BurstFrame::new(f.ingress, &mut f.buf, f.span);
                frame.meta = f.meta;
                burst.push(frame);
            }
        }
    }
    flush(dp, burst_now, &mut burst, &mut actions);
    actions
}

fn flush(
    dp: &mut Datapath<'_>,
    now: Option<Instant>,
    burst: &mut Vec<BurstFrame<'_>>,
    actions: &mut Vec<Action>,
) {
    if let Some(now) = now {
        dp.process_burst(now, burst);
    }
    actions.extend(
        burst
            .drain(..)
            .map(|f| f.action.expect("every frame of a burst is processed")),
    );
}

fuzz_target!(|data: &[u8]| {
    let mut store = NodeStore::new(SIZES);
    let mut ring: heapless::spsc::Queue<FlowEvent, 4> = heapless::spsc::Queue::new();
    let (producer, _consumer) = ring.split();
    let mut dp = datapath(&mut store);
    dp.events().connect(producer);
    let mut singles = records(data);
    let (actions, last) = run(&mut singles, &mut dp);

    // The same input in bursts: the same actions, the same bytes, the same counters.
    let mut burst_store = NodeStore::new(SIZES);
    let mut burst_dp = datapath(&mut burst_store);
    let mut bursts = records(data);
    let burst_actions = run_bursts(&mut bursts, &mut burst_dp);
    assert_eq!(actions, burst_actions);
    for (a, b) in singles.iter().zip(&bursts) {
        if let (Record::Frame(_, a), Record::Frame(_, b)) = (a, b) {
            assert_eq!(a.buf, b.buf);
        }
    }
    assert_eq!(dp.drops(), burst_dp.drops());

    // A process call with a span outside the buffer is a drop, not a panic.
    let mut small = [0u8; 8];
    let outside = Span {
        start: 4,
        len: usize::MAX,
    };
    assert!(matches!(
        dp.process(last, Ingress::Port(PORT_A), &mut small, outside),
        Action::Drop(_)
    ));
});

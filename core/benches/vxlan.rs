//! VXLAN encapsulation, decapsulation and VTEP lookup: podwire beside its peers.
//!
//! Peers, run in the same process on the same inputs, doing the same job:
//! * encap: smoltcp's `EthernetRepr` / `Ipv4Repr` / `UdpRepr::emit` writing the same
//!   headers in place, and etherparse's `PacketBuilder` (which writes headers + payload
//!   into a separate buffer, always with a UDP checksum). Every implementation computes
//!   the same source port with podwire's `inner_flow_hash`, so only header work differs.
//! * decap: smoltcp's checked views (`new_checked`, `verify_checksum`) plus a
//!   `std::collections::HashMap` sender lookup.
//! * VTEP lookup by underlay address: podwire's `VtepTable` vs `HashMap` vs a linear scan.
//!
//! Each case is timed in several rounds (interleaved between implementations); the JSON
//! lines report the minimum and the median ns/op. The last line is a summary object.
//! Run: `cargo bench -p podwire-core --bench vxlan`.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use podwire_core::ids::NodeId;
use podwire_core::vxlan::{inner_flow_hash, Vtep, VtepSlot, VtepTable, VxlanConfig, IPV4_OVERHEAD};
use podwire_core::wire::{EthernetAddress, Vni, VxlanPacket, VxlanRepr};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr,
};

const ROUNDS: usize = 11;
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const LOCAL_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 10]);
const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 20]);

/// Times each closure for `iters` iterations per round over `ROUNDS` rounds, the
/// implementations interleaved round by round (so frequency changes and other load hit
/// them alike); returns (min, median) ns per iteration for each.
fn time(iters: u64, fs: &mut [&mut dyn FnMut()]) -> Vec<(f64, f64)> {
    for f in fs.iter_mut() {
        for _ in 0..iters / 10 {
            f();
        }
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); fs.len()];
    for _ in 0..ROUNDS {
        for (f, s) in fs.iter_mut().zip(samples.iter_mut()) {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            s.push(t.elapsed().as_nanos() as f64 / iters as f64);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (s[0], s[ROUNDS / 2])
        })
        .collect()
}

fn report(case: &str, imp: &str, (min, median): (f64, f64)) -> f64 {
    println!(
        "{{\"case\":\"{case}\",\"impl\":\"{imp}\",\"ns_per_op_min\":{min:.2},\"ns_per_op_median\":{median:.2}}}"
    );
    min
}

/// A pod-to-pod UDP frame of `len` bytes (Ethernet header included).
fn inner_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..12].copy_from_slice(&[0x0a, 0x58, 10, 244, 2, 3, 0x0a, 0x58, 10, 244, 1, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[23] = 17;
    f[26..34].copy_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
    f[34..38].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35]);
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

fn config(checksum: bool) -> VxlanConfig {
    let mut c = VxlanConfig::new(IpAddr::V4(LOCAL_IP), LOCAL_MAC);
    c.udp_checksum = checksum;
    c.underlay_mtu = 9000;
    c
}

fn peer() -> Vtep {
    Vtep {
        node: NodeId(2),
        ip: IpAddr::V4(PEER_IP),
        mac: PEER_MAC,
    }
}

/// The same encapsulation through smoltcp's Repr layer.
fn smoltcp_encap(c: &VxlanConfig, v: &Vtep, buf: &mut [u8], inner_len: usize, checksum: bool) {
    let start = 0;
    let end = IPV4_OVERHEAD + inner_len;
    let src_port = c
        .src_ports
        .pick(inner_flow_hash(&buf[IPV4_OVERHEAD..end], c.flow_seed));
    let IpAddr::V4(dst) = v.ip else {
        unreachable!()
    };
    let mut caps = ChecksumCapabilities::ignored();
    caps.ipv4 = smoltcp::phy::Checksum::Both;
    if checksum {
        caps.udp = smoltcp::phy::Checksum::Both;
    }
    let frame = &mut buf[start..end];
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    EthernetRepr {
        src_addr: c.local_mac,
        dst_addr: v.mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let ip_repr = Ipv4Repr {
        src_addr: LOCAL_IP,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 16 + inner_len,
        hop_limit: c.ttl,
    };
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
    UdpRepr {
        src_port,
        dst_port: c.dst_port,
    }
    .emit(
        &mut udp,
        &IpAddress::Ipv4(LOCAL_IP),
        &IpAddress::Ipv4(dst),
        8 + inner_len,
        |payload| {
            VxlanRepr { vni: c.vni }.emit(&mut VxlanPacket::new_unchecked(payload));
        },
        &caps,
    );
}

/// The same encapsulation with etherparse's PacketBuilder (copies into `out`).
fn etherparse_encap(c: &VxlanConfig, v: &Vtep, input: &[u8], out: &mut [u8]) -> usize {
    let inner = &input[IPV4_OVERHEAD..];
    let src_port = c.src_ports.pick(inner_flow_hash(inner, c.flow_seed));
    let IpAddr::V4(dst) = v.ip else {
        unreachable!()
    };
    // The UDP payload (VXLAN header + inner frame) is the part of `input` after the
    // outer UDP header, whose VXLAN header the caller wrote once.
    etherparse::PacketBuilder::ethernet2(c.local_mac.0, v.mac.0)
        .ipv4(LOCAL_IP.octets(), dst.octets(), c.ttl)
        .udp(src_port, c.dst_port)
        .write_to_slice(out, &input[42..])
        .unwrap()
}

/// Decapsulation with smoltcp's checked views and a HashMap of senders.
fn smoltcp_decap(
    frame: &[u8],
    senders: &HashMap<Ipv4Addr, NodeId>,
    vni: Vni,
) -> Option<(NodeId, usize)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.dst_addr() != LOCAL_MAC || eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if !ip.verify_checksum()
        || ip.more_frags()
        || ip.frag_offset() != 0
        || ip.next_header() != IpProtocol::Udp
        || ip.dst_addr() != LOCAL_IP
    {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != 8472 {
        return None;
    }
    let node = *senders.get(&ip.src_addr())?;
    if udp.checksum() != 0
        && !udp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(LOCAL_IP))
    {
        return None;
    }
    let vx = VxlanPacket::new_checked(udp.payload()).ok()?;
    if VxlanRepr::parse(&vx).ok()?.vni != vni || vx.payload().len() < 14 {
        return None;
    }
    Some((node, vx.payload().len()))
}

fn main() {
    let mut summary: Vec<(String, f64)> = Vec::new();

    for &(inner_len, iters) in &[(64usize, 2_000_000u64), (1464, 400_000)] {
        for checksum in [false, true] {
            let c = config(checksum);
            let v = peer();
            let inner = inner_frame(inner_len);
            let mut buf = vec![0u8; IPV4_OVERHEAD + inner_len];
            buf[IPV4_OVERHEAD..].copy_from_slice(&inner);
            let case = format!(
                "encap_{inner_len}B_udpcsum_{}",
                if checksum { "on" } else { "off" }
            );

            // All implementations must produce a frame podwire accepts.
            let mut check = buf.clone();
            smoltcp_encap(&c, &v, &mut check, inner_len, checksum);
            let mut ours = buf.clone();
            c.encapsulate(&v, &mut ours, IPV4_OVERHEAD, inner_len, 0)
                .unwrap();
            assert_eq!(check, ours, "smoltcp peer writes the same frame");

            let mut out = vec![0u8; IPV4_OVERHEAD + inner_len];
            assert_eq!(etherparse_encap(&c, &v, &ours, &mut out), out.len());
            let mut buf2 = buf.clone();
            let mut f_podwire = || {
                let e = c
                    .encapsulate(&v, black_box(&mut buf), IPV4_OVERHEAD, inner_len, 0)
                    .unwrap();
                black_box(e);
            };
            let mut f_smoltcp = || smoltcp_encap(&c, &v, black_box(&mut buf2), inner_len, checksum);
            let mut f_etherparse = || {
                black_box(etherparse_encap(&c, &v, black_box(&ours), &mut out));
            };
            let t = if checksum {
                // etherparse always computes the UDP checksum: compare it only then.
                time(
                    iters,
                    &mut [&mut f_podwire, &mut f_smoltcp, &mut f_etherparse],
                )
            } else {
                time(iters, &mut [&mut f_podwire, &mut f_smoltcp])
            };
            let p = report(&case, "podwire", t[0]);
            let s = report(&case, "smoltcp", t[1]);
            summary.push((format!("{case}_podwire_ns"), p));
            summary.push((format!("{case}_smoltcp_ns"), s));
            summary.push((format!("{case}_smoltcp_over_podwire"), s / p));
            if let Some(&e) = t.get(2) {
                let e = report(&case, "etherparse", e);
                summary.push((format!("{case}_etherparse_ns"), e));
                summary.push((format!("{case}_etherparse_over_podwire"), e / p));
            }
        }
    }

    // Decap: frames from node 2 (checksum on and off), 1000 known senders.
    let mut storage = vec![VtepSlot::EMPTY; 1024];
    let mut table = VtepTable::new(&mut storage);
    let mut senders = HashMap::new();
    for n in 0..1000u16 {
        let ip = Ipv4Addr::new(192, 0, 3 + (n >> 8) as u8, n as u8);
        table
            .insert(Vtep {
                node: NodeId(n + 10),
                ip: IpAddr::V4(ip),
                mac: PEER_MAC,
            })
            .unwrap();
        senders.insert(ip, NodeId(n + 10));
    }
    table
        .insert(Vtep {
            node: NodeId(2),
            ip: IpAddr::V4(PEER_IP),
            mac: PEER_MAC,
        })
        .unwrap();
    senders.insert(PEER_IP, NodeId(2));
    let receiver = VxlanConfig::new(IpAddr::V4(LOCAL_IP), LOCAL_MAC);
    for &(inner_len, iters) in &[(64usize, 2_000_000u64), (1464, 400_000)] {
        for checksum in [false, true] {
            let mut sender = VxlanConfig::new(IpAddr::V4(PEER_IP), PEER_MAC);
            sender.udp_checksum = checksum;
            sender.underlay_mtu = 9000;
            let us = Vtep {
                node: NodeId(1),
                ip: IpAddr::V4(LOCAL_IP),
                mac: LOCAL_MAC,
            };
            let mut frame = vec![0u8; IPV4_OVERHEAD + inner_len];
            frame[IPV4_OVERHEAD..].copy_from_slice(&inner_frame(inner_len));
            sender
                .encapsulate(&us, &mut frame, IPV4_OVERHEAD, inner_len, 0)
                .unwrap();
            assert_eq!(
                receiver.decapsulate(&table, &frame).unwrap().node,
                NodeId(2)
            );
            assert_eq!(
                smoltcp_decap(&frame, &senders, Vni::DEFAULT),
                Some((NodeId(2), inner_len))
            );
            let case = format!(
                "decap_{inner_len}B_udpcsum_{}",
                if checksum { "on" } else { "off" }
            );
            let t = time(
                iters,
                &mut [
                    &mut || {
                        black_box(receiver.decapsulate(&table, black_box(&frame)).ok());
                    },
                    &mut || {
                        black_box(smoltcp_decap(black_box(&frame), &senders, Vni::DEFAULT));
                    },
                ],
            );
            let p = report(&case, "podwire", t[0]);
            let s = report(&case, "smoltcp+hashmap", t[1]);
            summary.push((format!("{case}_podwire_ns"), p));
            summary.push((format!("{case}_smoltcp_ns"), s));
            summary.push((format!("{case}_smoltcp_over_podwire"), s / p));
        }
    }

    // VTEP lookup by underlay address among 1001 entries (hits spread over the table).
    let probes: Vec<IpAddr> = (0..1000u16)
        .step_by(7)
        .map(|n| IpAddr::V4(Ipv4Addr::new(192, 0, 3 + (n >> 8) as u8, n as u8)))
        .collect();
    let entries: Vec<Vtep> = table.iter().copied().collect();
    let by_ip: HashMap<IpAddr, NodeId> = entries.iter().map(|v| (v.ip, v.node)).collect();
    let iters = 20_000;
    let n = probes.len() as f64;
    let scale = |(a, b): (f64, f64)| (a / n, b / n);
    let t = time(
        iters,
        &mut [
            &mut || {
                for ip in &probes {
                    black_box(table.get_by_ip(black_box(*ip)));
                }
            },
            &mut || {
                for ip in &probes {
                    black_box(by_ip.get(black_box(ip)));
                }
            },
        ],
    );
    let p = report("vtep_lookup_1001", "podwire", scale(t[0]));
    let h = report("vtep_lookup_1001", "std_hashmap", scale(t[1]));
    let t = time(
        iters / 20,
        &mut [&mut || {
            for ip in &probes {
                black_box(entries.iter().find(|v| v.ip == *black_box(ip)));
            }
        }],
    );
    let l = report("vtep_lookup_1001", "linear_scan", scale(t[0]));
    summary.push(("vtep_lookup_1001_podwire_ns".into(), p));
    summary.push(("vtep_lookup_1001_hashmap_ns".into(), h));
    summary.push(("vtep_lookup_1001_linear_ns".into(), l));
    summary.push(("vtep_lookup_1001_hashmap_over_podwire".into(), h / p));

    let body: Vec<String> = summary
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v:.3}"))
        .collect();
    println!(
        "{{\"bench\":\"vxlan\",\"stat\":\"min_ns_per_op\",{}}}",
        body.join(",")
    );
}

//! `podwire_examples`: frame helpers shared by the example programs: build a pod's IPv4 frame with smoltcp's wire
//! views (the same ones the core uses), print a frame in hex, and decode one in a line.
//!
//! The core never builds frames from scratch (a shell hands it frames it received), so
//! these helpers live here, beside the programs that need test traffic.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use podwire_core::vxlan::{FLANNEL_PORT, IANA_PORT};
use podwire_core::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
    VxlanPacket, VxlanRepr,
};
use smoltcp::wire::IpAddress;

/// TCP flag bits in the 14th byte of the TCP header.
pub const SYN: u8 = 0x02;
/// TCP ACK flag bit.
pub const ACK: u8 = 0x10;

/// The transport part of a frame to build.
pub enum Transport<'p> {
    /// A UDP datagram carrying `payload`.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The datagram's payload.
        payload: &'p [u8],
    },
    /// A TCP segment without options or payload (a handshake segment).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number (sent when `flags` has [`ACK`]).
        ack: u32,
        /// Flag bits ([`SYN`], [`ACK`], ...).
        flags: u8,
    },
}

/// Writes an Ethernet + IPv4 frame from `src` to `dst` (TTL 64, DF set, correct
/// checksums) at the start of `out` and returns its length.
pub fn write_ipv4_frame(
    out: &mut [u8],
    (src_mac, src): (EthernetAddress, Ipv4Addr),
    (dst_mac, dst): (EthernetAddress, Ipv4Addr),
    transport: Transport<'_>,
) -> usize {
    let (protocol, l4_len) = match transport {
        Transport::Udp { payload, .. } => (IpProtocol::Udp, 8 + payload.len()),
        Transport::Tcp { .. } => (IpProtocol::Tcp, 20),
    };
    let len = 14 + 20 + l4_len;
    let out = &mut out[..len];
    out.fill(0);

    let mut eth = EthernetFrame::new_unchecked(&mut *out);
    eth.set_dst_addr(dst_mac);
    eth.set_src_addr(src_mac);
    eth.set_ethertype(EthernetProtocol::Ipv4);

    let mut ip = Ipv4Packet::new_unchecked(&mut out[14..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + l4_len) as u16);
    ip.set_dont_frag(true);
    ip.set_hop_limit(64);
    ip.set_next_header(protocol);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();

    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    let l4 = &mut out[34..];
    match transport {
        Transport::Udp {
            src_port,
            dst_port,
            payload,
        } => {
            let mut udp = UdpPacket::new_unchecked(l4);
            udp.set_src_port(src_port);
            udp.set_dst_port(dst_port);
            udp.set_len(l4_len as u16);
            udp.payload_mut().copy_from_slice(payload);
            udp.fill_checksum(&s, &d);
        }
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
        } => {
            let mut tcp = TcpPacket::new_unchecked(l4);
            tcp.set_src_port(src_port);
            tcp.set_dst_port(dst_port);
            tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
            tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(ack as i32));
            tcp.set_header_len(20);
            tcp.set_syn(flags & SYN != 0);
            tcp.set_ack(flags & ACK != 0);
            tcp.set_window_len(64240);
            tcp.fill_checksum(&s, &d);
        }
    }
    len
}

/// Prints `bytes` as hex, 16 bytes a line, under `label`.
pub fn print_hex(label: &str, bytes: &[u8]) {
    println!("{label} ({} bytes):", bytes.len());
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {:04x}  {}", i * 16, hex.join(" "));
    }
}

/// A one-line decode of an Ethernet frame, layer by layer, following VXLAN into the
/// inner frame: `eth a -> b | IPv4 x -> y ttl 64 | UDP 49664 -> 8472 | VXLAN VNI 1 | ...`.
pub fn describe(frame: &[u8]) -> String {
    let mut line = String::new();
    describe_into(&mut line, frame);
    line
}

fn describe_into(line: &mut String, frame: &[u8]) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        line.push_str("truncated Ethernet frame");
        return;
    };
    let _ = write!(
        line,
        "eth {} -> {}",
        mac(eth.src_addr()),
        mac(eth.dst_addr())
    );
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        let _ = write!(line, " | {}", eth.ethertype());
        return;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        line.push_str(" | malformed IPv4");
        return;
    };
    let _ = write!(
        line,
        " | IPv4 {} -> {} ttl {}",
        ip.src_addr(),
        ip.dst_addr(),
        ip.hop_limit()
    );
    match ip.next_header() {
        IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
            Ok(udp) => {
                let (sport, dport) = (udp.src_port(), udp.dst_port());
                let _ = write!(line, " | UDP {sport} -> {dport}");
                let vxlan = VxlanPacket::new_checked(udp.payload())
                    .ok()
                    .and_then(|p| VxlanRepr::parse(&p).ok());
                match vxlan {
                    Some(repr) if dport == FLANNEL_PORT || dport == IANA_PORT => {
                        let _ = write!(line, " | VXLAN VNI {} | ", repr.vni);
                        describe_into(line, &udp.payload()[8..]);
                    }
                    _ => {
                        let _ = write!(line, ", {} payload bytes", udp.payload().len());
                    }
                }
            }
            Err(_) => line.push_str(" | malformed UDP"),
        },
        IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()) {
            Ok(tcp) => {
                let flags: Vec<&str> = [
                    (tcp.syn(), "SYN"),
                    (tcp.ack(), "ACK"),
                    (tcp.fin(), "FIN"),
                    (tcp.rst(), "RST"),
                ]
                .into_iter()
                .filter_map(|(set, name)| set.then_some(name))
                .collect();
                let _ = write!(
                    line,
                    " | TCP {} -> {} [{}]",
                    tcp.src_port(),
                    tcp.dst_port(),
                    flags.join(",")
                );
            }
            Err(_) => line.push_str(" | malformed TCP"),
        },
        other => {
            let _ = write!(line, " | {other}");
        }
    }
}

/// A MAC address as `02:50:57:00:00:0a`.
pub fn mac(m: EthernetAddress) -> String {
    let parts: Vec<String> = m.0.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// An address and port as `10.244.1.2:40000`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    format!("{addr}:{port}")
}

/// The source and destination `address:port` of a TCP segment in an Ethernet frame.
pub fn tcp_endpoints(frame: &[u8]) -> Option<(String, String)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((
        endpoint(IpAddr::V4(ip.src_addr()), tcp.src_port()),
        endpoint(IpAddr::V4(ip.dst_addr()), tcp.dst_port()),
    ))
}

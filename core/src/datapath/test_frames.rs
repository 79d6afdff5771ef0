//! Frame builders for the datapath's tests (test-only).

use std::vec::Vec;

use core::net::Ipv4Addr;

use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

use crate::datapath::{Span, HEADROOM};

/// An IPv4 frame from `src_mac` to `dst_mac` with `l4` as transport header and payload,
/// with correct IPv4 and transport checksums, placed after the datapath's [`HEADROOM`].
pub fn ipv4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    l4: &[u8],
) -> (Vec<u8>, Span) {
    let mut buf = std::vec![0u8; HEADROOM];
    buf.extend_from_slice(&dst_mac);
    buf.extend_from_slice(&src_mac);
    buf.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = ttl;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
    buf.extend_from_slice(&ip);
    buf.extend_from_slice(l4);
    let l4_at = HEADROOM + 34;
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    match protocol {
        _ if l4.len() < 8 => {}
        6 if l4.len() < 20 => {}
        6 => TcpPacket::new_unchecked(&mut buf[l4_at..]).fill_checksum(&s, &d),
        17 => UdpPacket::new_unchecked(&mut buf[l4_at..]).fill_checksum(&s, &d),
        1 => smoltcp::wire::Icmpv4Packet::new_unchecked(&mut buf[l4_at..]).fill_checksum(),
        _ => {}
    }
    let len = buf.len() - HEADROOM;
    buf.extend_from_slice(&[0u8; 64]);
    (
        buf,
        Span {
            start: HEADROOM,
            len,
        },
    )
}

/// A TCP header (no options) with `flags`, followed by `payload`.
pub fn tcp(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = std::vec![0u8; 20];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

/// A UDP header followed by `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = std::vec![0u8; 8];
    u[0..2].copy_from_slice(&src_port.to_be_bytes());
    u[2..4].copy_from_slice(&dst_port.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// An ICMP echo request with `ident` and `seq`.
pub fn icmp_echo(ident: u16, seq: u16) -> Vec<u8> {
    let mut m = std::vec![8u8, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"podwire!");
    m
}

//! ARP for the node's own underlay address on its Ethernet.
//!
//! Design note: the datapath owns the board's Ethernet as a raw VXLAN underlay and
//! decapsulates every frame it is given; it answers ARP only for pods and the host
//! port. A Linux node must still resolve the board's InternalIP before it sends VXLAN
//! to it, so the node task answers those requests itself, in place, before a frame
//! reaches the datapath. Peers' MACs come from the VTEP table, so the board never asks.

use core::net::Ipv4Addr;

use podwire_core::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

/// Length of an Ethernet frame carrying an ARP packet for IPv4 (without padding).
const ARP_FRAME_LEN: usize = 14 + 28;

/// If `frame` is an ARP request for `ip`, overwrites it with the reply from `mac` and
/// returns the reply's length.
pub fn answer(frame: &mut [u8], ip: Ipv4Addr, mac: EthernetAddress) -> Option<usize> {
    let ethernet = EthernetFrame::new_checked(&*frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(ethernet.payload()).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    if target_protocol_addr != ip || frame.len() < ARP_FRAME_LEN {
        return None;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut out = EthernetFrame::new_unchecked(&mut frame[..ARP_FRAME_LEN]);
    EthernetRepr {
        src_addr: mac,
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut out);
    reply.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
    Some(ARP_FRAME_LEN)
}

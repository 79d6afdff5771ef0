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

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
    const MAC: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0, 0, 2]);
    const ASKER: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0, 0, 1]);

    /// An ARP frame from `ASKER` at 192.168.77.1, padded to Ethernet's minimum.
    fn arp(operation: ArpOperation, target: Ipv4Addr) -> [u8; 60] {
        let mut frame = [0u8; 60];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: ASKER,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut eth);
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: ASKER,
            source_protocol_addr: Ipv4Addr::new(192, 168, 77, 1),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        }
        .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        frame
    }

    #[test]
    fn a_request_for_our_address_becomes_the_reply() {
        let mut frame = arp(ArpOperation::Request, OURS);
        assert_eq!(answer(&mut frame, OURS, MAC), Some(ARP_FRAME_LEN));
        let eth = EthernetFrame::new_checked(&frame[..ARP_FRAME_LEN]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (MAC, ASKER));
        let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: MAC,
                source_protocol_addr: OURS,
                target_hardware_addr: ASKER,
                target_protocol_addr: Ipv4Addr::new(192, 168, 77, 1),
            }
        );
    }

    #[test]
    fn other_frames_are_left_alone() {
        for mut frame in [
            arp(ArpOperation::Request, Ipv4Addr::new(192, 168, 77, 3)),
            arp(ArpOperation::Reply, OURS),
        ] {
            let before = frame;
            assert_eq!(answer(&mut frame, OURS, MAC), None);
            assert_eq!(frame, before);
        }
        let mut ipv4 = arp(ArpOperation::Request, OURS);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(answer(&mut ipv4, OURS, MAC), None);
    }

    #[test]
    fn truncated_frames_are_left_alone() {
        let frame = arp(ArpOperation::Request, OURS);
        for len in 0..ARP_FRAME_LEN {
            let mut short = frame;
            assert_eq!(answer(&mut short[..len], OURS, MAC), None, "{len} bytes");
        }
    }
}

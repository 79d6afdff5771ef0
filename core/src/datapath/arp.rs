//! Answering ARP for the addresses the node routes.
//!
//! Design note: podwire routes at layer 3 — there is no bridge behind a pod's
//! interface. A pod's `eth0` has its address with the block's prefix (say /24), so the
//! pod ARPs for its gateway and for other pods of its block; the host port has the
//! gateway address and ARPs for any pod address. The datapath answers all of those
//! with its own router MAC (proxy ARP, as Calico does), so every frame comes to the
//! datapath to be routed, tracked and policed. The reply is written over the request in
//! place.

use core::net::Ipv4Addr;

use smoltcp::wire::{ArpHardware, ArpOperation, ArpPacket, EthernetAddress, EthernetProtocol};

use crate::datapath::parse::ETHERNET_HEADER_LEN;
use crate::datapath::DropReason;

/// A validated ARP request: who asks, and for which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArpRequest {
    /// The requester's MAC address.
    pub sender_mac: EthernetAddress,
    /// The requester's IP address.
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
}

/// Reads an Ethernet/IPv4 ARP request from `frame`. Replies and gratuitous
/// announcements are not requests and yield `ArpNotAnswered`.
pub(crate) fn read_request(frame: &[u8]) -> Result<ArpRequest, DropReason> {
    let arp = frame
        .get(ETHERNET_HEADER_LEN..)
        .and_then(|b| ArpPacket::new_checked(b).ok())
        .ok_or(DropReason::MalformedArp)?;
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.protocol_type() != EthernetProtocol::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return Err(DropReason::MalformedArp);
    }
    if arp.operation() != ArpOperation::Request {
        return Err(DropReason::ArpNotAnswered);
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let request = ArpRequest {
        sender_mac: EthernetAddress::from_bytes(arp.source_hardware_addr()),
        sender_ip: ip(arp.source_protocol_addr()),
        target_ip: ip(arp.target_protocol_addr()),
    };
    if request.sender_ip == request.target_ip {
        // Gratuitous ARP / duplicate address detection: nobody else owns it.
        return Err(DropReason::ArpNotAnswered);
    }
    Ok(request)
}

/// Rewrites the request in `frame` into the reply "`request.target_ip` is at
/// `router_mac`", addressed to the requester.
pub(crate) fn write_reply(frame: &mut [u8], request: &ArpRequest, router_mac: EthernetAddress) {
    frame[0..6].copy_from_slice(request.sender_mac.as_bytes());
    frame[6..12].copy_from_slice(router_mac.as_bytes());
    let mut arp = ArpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
    arp.set_operation(ArpOperation::Reply);
    arp.set_source_hardware_addr(router_mac.as_bytes());
    arp.set_source_protocol_addr(&request.target_ip.octets());
    arp.set_target_hardware_addr(request.sender_mac.as_bytes());
    arp.set_target_protocol_addr(&request.sender_ip.octets());
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{ArpRepr, EthernetFrame, EthernetRepr};

    fn request_frame(op: ArpOperation, sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
        let mut buf = [0u8; 42];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 7]),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut eth);
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 7]),
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
        buf
    }

    #[test]
    fn request_becomes_reply_from_router_mac() {
        let pod = Ipv4Addr::new(10, 244, 1, 7);
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let mut frame = request_frame(ArpOperation::Request, pod, gw);
        let req = read_request(&frame).unwrap();
        assert_eq!(req.target_ip, gw);
        let router = EthernetAddress([0xee, 0xee, 0, 0, 0, 1]);
        write_reply(&mut frame, &req, router);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(&frame[14..]).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: router,
                source_protocol_addr: gw,
                target_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 7]),
                target_protocol_addr: pod,
            }
        );
        assert_eq!(&frame[0..6], &[2, 0, 0, 0, 0, 7]);
        assert_eq!(&frame[6..12], router.as_bytes());
    }

    #[test]
    fn replies_gratuitous_and_garbage_are_not_answered() {
        let a = Ipv4Addr::new(10, 244, 1, 7);
        let reply = request_frame(ArpOperation::Reply, a, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(read_request(&reply), Err(DropReason::ArpNotAnswered));
        let garp = request_frame(ArpOperation::Request, a, a);
        assert_eq!(read_request(&garp), Err(DropReason::ArpNotAnswered));
        assert_eq!(read_request(&garp[..30]), Err(DropReason::MalformedArp));
    }
}

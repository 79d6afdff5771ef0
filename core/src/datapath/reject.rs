//! Replies the datapath writes itself: ICMP errors and TCP resets.
//!
//! Design note: a router that drops a packet should say so when the protocol expects
//! it — ICMP time exceeded when the TTL runs out, "fragmentation needed" when a frame
//! does not fit the overlay (so path-MTU discovery works), and, like kube-proxy, port
//! unreachable or a TCP reset for a service with no backend. Replies are written in
//! place: an ICMP error is laid out so that the quoted original IPv4 header stays where
//! it already is in the buffer (the new headers go into the 28 bytes of headroom before
//! the frame), and a TCP reset reuses the frame's own space. Errors about ICMP errors,
//! and about broadcast or multicast packets, are never sent (RFC 1122 §3.2.2).

use core::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::{
    EthernetAddress, Icmpv4Packet, IpAddress, Ipv4Packet, TcpPacket, IPV4_HEADER_LEN,
};

use crate::datapath::parse::{tcp_flags, Ipv4Summary, ETHERNET_HEADER_LEN};
use crate::datapath::{DropReason, Span};

/// Bytes of headroom an ICMP error needs before the offending frame.
pub(crate) const ICMP_ERROR_HEADROOM: usize = IPV4_HEADER_LEN + 8;

/// The ICMP error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// Type 11 code 0: TTL exceeded in transit.
    TimeExceeded,
    /// Type 3 code 3: nobody serves this port (a service without backends).
    PortUnreachable,
    /// Type 3 code 4: fragmentation needed and DF set, with the next-hop MTU.
    FragmentationNeeded {
        /// The largest IPv4 packet that fits.
        mtu: u16,
    },
}

fn ipv4_of(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Writes `error` about the IPv4 packet summarised by `packet`, which sits in
/// `buf[frame]`, sent from `source` and `router_mac` back to the packet's sender.
/// Returns the reply's span, or `None` when no error may be sent (the packet is itself
/// an ICMP error, is broadcast or multicast, or there is no headroom).
pub(crate) fn write_icmp_error(
    buf: &mut [u8],
    frame: Span,
    packet: &Ipv4Summary,
    error: IcmpError,
    source: Ipv4Addr,
    router_mac: EthernetAddress,
) -> Option<Span> {
    let dst = ipv4_of(packet.key.src)?;
    let original_dst = ipv4_of(packet.key.dst)?;
    if packet.icmp_error
        || original_dst.is_broadcast()
        || original_dst.is_multicast()
        || dst.is_unspecified()
        || frame.start < ICMP_ERROR_HEADROOM
    {
        return None;
    }
    let frame_bytes = buf.get(frame.range())?;
    let sender_mac = EthernetAddress::from_bytes(&frame_bytes[6..12]);
    let quoted = (packet.l4 - packet.ip + 8).min(packet.end - packet.ip);
    let start = frame.start - ICMP_ERROR_HEADROOM;
    let len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + 8 + quoted;
    let reply = buf.get_mut(start..start + len)?;

    reply[0..6].copy_from_slice(sender_mac.as_bytes());
    reply[6..12].copy_from_slice(router_mac.as_bytes());
    reply[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let icmp_at = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    let (kind, code, rest) = match error {
        IcmpError::TimeExceeded => (11, 0, [0; 4]),
        IcmpError::PortUnreachable => (3, 3, [0; 4]),
        IcmpError::FragmentationNeeded { mtu } => {
            let m = mtu.to_be_bytes();
            (3, 4, [0, 0, m[0], m[1]])
        }
    };
    reply[icmp_at] = kind;
    reply[icmp_at + 1] = code;
    reply[icmp_at + 2..icmp_at + 4].fill(0);
    reply[icmp_at + 4..icmp_at + 8].copy_from_slice(&rest);
    Icmpv4Packet::new_unchecked(&mut reply[icmp_at..]).fill_checksum();
    write_ipv4_header(
        &mut reply[ETHERNET_HEADER_LEN..],
        (IPV4_HEADER_LEN + 8 + quoted) as u16,
        1,
        source,
        dst,
    );
    Some(Span { start, len })
}

/// Writes a plain 20-byte IPv4 header (TTL 64, no options) with its checksum.
fn write_ipv4_header(ip: &mut [u8], total_len: u16, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr) {
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..8].fill(0);
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(&mut ip[..IPV4_HEADER_LEN]).fill_checksum();
}

/// Rewrites the TCP segment summarised by `packet`, in `buf[frame]`, into the reset a
/// closed port answers with (RFC 793 "reset generation"), from the segment's
/// destination back to its source. Returns the reply's span. Resets are not answered.
pub(crate) fn write_tcp_reset(
    buf: &mut [u8],
    frame: Span,
    packet: &Ipv4Summary,
    router_mac: EthernetAddress,
) -> Result<Span, DropReason> {
    let (Some(src), Some(dst)) = (ipv4_of(packet.key.src), ipv4_of(packet.key.dst)) else {
        return Err(DropReason::MalformedIpv4);
    };
    if packet.tcp_flags & tcp_flags::RST != 0 {
        return Err(DropReason::NoServiceBackend);
    }
    let bytes = buf.get_mut(frame.range()).ok_or(DropReason::Truncated)?;
    let tcp = &bytes[packet.l4..packet.end];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let payload = tcp.len().saturating_sub(data_offset) as u32;
    let flags = packet.tcp_flags;
    let (reply_seq, reply_ack, reply_flags) = if flags & tcp_flags::ACK != 0 {
        (ack, 0, tcp_flags::RST)
    } else {
        let consumed = payload
            + u32::from(flags & tcp_flags::SYN != 0)
            + u32::from(flags & tcp_flags::FIN != 0);
        (
            0,
            seq.wrapping_add(consumed),
            tcp_flags::RST | tcp_flags::ACK,
        )
    };

    let sender_mac = EthernetAddress::from_bytes(&bytes[6..12]);
    bytes[0..6].copy_from_slice(sender_mac.as_bytes());
    bytes[6..12].copy_from_slice(router_mac.as_bytes());
    let total = IPV4_HEADER_LEN + 20;
    write_ipv4_header(&mut bytes[ETHERNET_HEADER_LEN..], total as u16, 6, dst, src);
    let t = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    let segment = &mut bytes[t..t + 20];
    segment[0..2].copy_from_slice(&packet.key.dst_port.to_be_bytes());
    segment[2..4].copy_from_slice(&packet.key.src_port.to_be_bytes());
    segment[4..8].copy_from_slice(&reply_seq.to_be_bytes());
    segment[8..12].copy_from_slice(&reply_ack.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = reply_flags;
    segment[14..20].fill(0);
    TcpPacket::new_unchecked(segment).fill_checksum(&IpAddress::Ipv4(dst), &IpAddress::Ipv4(src));
    Ok(Span {
        start: frame.start,
        len: ETHERNET_HEADER_LEN + total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::parse::{parse_frame, Parsed};
    use crate::datapath::test_frames::*;
    use smoltcp::wire::{Icmpv4Message, TcpPacket};

    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ROUTER: EthernetAddress = EthernetAddress([0xee, 0xee, 0, 0, 0, 1]);
    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn summary(buf: &[u8], span: Span) -> Ipv4Summary {
        match parse_frame(&buf[span.range()]).unwrap() {
            Parsed::Ipv4(s) => s,
            Parsed::Arp => panic!("not ipv4"),
        }
    }

    #[test]
    fn tcp_syn_gets_rst_ack_with_correct_numbers_and_checksums() {
        let seg = tcp(40000, 80, 1000, 0, tcp_flags::SYN, b"");
        let (mut buf, span) = ipv4_frame(POD_MAC, ROUTER.0, POD, SVC, 6, 64, &seg);
        let s = summary(&buf, span);
        let reply = write_tcp_reset(&mut buf, span, &s, ROUTER).unwrap();
        let frame = &buf[reply.range()];
        assert_eq!(&frame[0..6], &POD_MAC);
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (SVC, POD));
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&IpAddress::Ipv4(SVC), &IpAddress::Ipv4(POD)));
        assert!(t.rst() && t.ack());
        assert_eq!((t.src_port(), t.dst_port()), (80, 40000));
        assert_eq!(t.ack_number().0, 1001);
    }

    #[test]
    fn segment_with_ack_gets_plain_rst_and_rst_is_never_answered() {
        let seg = tcp(40000, 80, 5, 777, tcp_flags::ACK, b"hello");
        let (mut buf, span) = ipv4_frame(POD_MAC, ROUTER.0, POD, SVC, 6, 64, &seg);
        let s = summary(&buf, span);
        let reply = write_tcp_reset(&mut buf, span, &s, ROUTER).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[reply.range()][14..]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.rst() && !t.ack());
        assert_eq!(t.seq_number().0, 777);

        let rst = tcp(40000, 80, 5, 0, tcp_flags::RST, b"");
        let (mut buf, span) = ipv4_frame(POD_MAC, ROUTER.0, POD, SVC, 6, 64, &rst);
        let s = summary(&buf, span);
        assert!(write_tcp_reset(&mut buf, span, &s, ROUTER).is_err());
    }

    #[test]
    fn icmp_errors_quote_the_original_header() {
        let dgram = udp(5353, 53, b"query-bytes");
        let (mut buf, span) = ipv4_frame(POD_MAC, ROUTER.0, POD, SVC, 17, 1, &dgram);
        let original: std::vec::Vec<u8> = buf[span.start + 14..span.start + 14 + 28].to_vec();
        let s = summary(&buf, span);
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let reply = write_icmp_error(
            &mut buf,
            span,
            &s,
            IcmpError::FragmentationNeeded { mtu: 1450 },
            gw,
            ROUTER,
        )
        .unwrap();
        let frame = &buf[reply.range()];
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw, POD));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 4);
        assert_eq!(&icmp.data()[..28], &original[..]);

        // An ICMP error about the ICMP error is never generated.
        let span2 = reply;
        let parsed = parse_frame(&buf[span2.range()]);
        let Ok(Parsed::Ipv4(s2)) = parsed else {
            panic!("{parsed:?}")
        };
        assert!(s2.icmp_error);
        assert!(
            write_icmp_error(&mut buf, span2, &s2, IcmpError::TimeExceeded, gw, ROUTER).is_none()
        );
    }
}

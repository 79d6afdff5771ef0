//! Parsing a frame into what the pipeline needs to decide its fate.
//!
//! Design note: the pipeline reads each frame once, up front, into a small `Copy`
//! summary — header offsets, the flow key, TCP flags, TTL — using smoltcp's checked
//! views, and every later stage works from that summary and the offsets. Nothing is
//! copied; a malformed frame becomes a [`DropReason`] here, so later stages can index
//! the buffer at offsets this module has already validated. ICMP errors are keyed by the
//! flow they report on (the embedded header, reversed), which is how connection
//! tracking finds the connection they are *related* to.

use core::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol};

use crate::datapath::{DropReason, FrameMeta};
use crate::flow::{FlowKey, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Length of an Ethernet II header.
pub(crate) const ETHERNET_HEADER_LEN: usize = 14;

/// TCP flag bits as they appear in the 14th byte of the TCP header.
pub(crate) mod tcp_flags {
    /// FIN: no more data from sender.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// ACK: the acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// The summary of an IPv4 packet inside an Ethernet frame. Offsets are relative to the
/// start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Summary {
    /// Offset of the IPv4 header.
    pub ip: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Offset one past the IPv4 packet's last byte (the frame may have padding).
    pub end: usize,
    /// The IPv4 source address.
    pub src: Ipv4Addr,
    /// The IPv4 destination address.
    pub dst: Ipv4Addr,
    /// Whether Don't Fragment is set.
    pub dont_fragment: bool,
    /// Whether More Fragments is set (a first fragment: the parser drops the others).
    pub more_fragments: bool,
    /// The flow this packet belongs to (for ICMP errors: the flow they report on, in
    /// the direction of this error).
    pub key: FlowKey,
    /// TCP flags, or 0.
    pub tcp_flags: u8,
    /// Time to live.
    pub ttl: u8,
    /// Whether this is an ICMP error about another packet (related traffic).
    pub icmp_error: bool,
    /// The TCP header length (data offset) or 8 for UDP: what a GSO segment repeats;
    /// 0 for other protocols.
    pub l4_header: usize,
    /// The frame's offload state, from the shell ([`FrameMeta::PLAIN`] as parsed).
    pub meta: FrameMeta,
}

impl Ipv4Summary {
    /// The length of the IPv4 packets this one becomes on the wire: itself, or for a
    /// GSO super-frame one full segment (IP and L4 headers plus `gso_size` bytes).
    pub fn wire_len(&self) -> usize {
        let whole = self.end - self.ip;
        match self.meta.gso_size {
            Some(mss) if self.l4_header > 0 => {
                whole.min(self.l4 - self.ip + self.l4_header + usize::from(mss))
            }
            _ => whole,
        }
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// An ARP packet (validated by the ARP responder).
    Arp,
    /// An IPv4 packet.
    Ipv4(Ipv4Summary),
}

/// Parses an Ethernet frame.
pub(crate) fn parse_frame(frame: &[u8]) -> Result<Parsed, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    match eth.ethertype() {
        EthernetProtocol::Arp => Ok(Parsed::Arp),
        EthernetProtocol::Ipv4 => parse_ipv4(frame).map(Parsed::Ipv4),
        _ => Err(DropReason::UnsupportedEtherType),
    }
}

/// Parses the IPv4 packet that follows an Ethernet header.
///
/// The header is read at fixed offsets rather than through smoltcp's `Ipv4Packet`
/// (whose checksum loop adds 16-bit words one at a time): this is the per-packet path.
/// The checks are smoltcp's `check_len` (at least 20 bytes, `20 <= IHL * 4 <= total
/// length <= bytes present`), then the version, the header checksum and the fragment
/// offset, with the same outcomes.
fn parse_ipv4(frame: &[u8]) -> Result<Ipv4Summary, DropReason> {
    let ip = frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]);
    let Some(h) = ip.first_chunk::<20>() else {
        return Err(DropReason::MalformedIpv4);
    };
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if header_len < 20 || header_len > total_len || total_len > ip.len() || h[0] >> 4 != 4 {
        return Err(DropReason::MalformedIpv4);
    }
    let header = ip.get(..header_len).unwrap_or(&[]);
    if header_sum(header) != 0xffff {
        return Err(DropReason::BadIpv4Checksum);
    }
    let flags_offset = u16::from_be_bytes([h[6], h[7]]);
    if flags_offset & 0x1fff != 0 {
        return Err(DropReason::Fragment);
    }
    let l4 = ETHERNET_HEADER_LEN + header_len;
    let end = ETHERNET_HEADER_LEN + total_len;
    let payload = frame.get(l4..end).unwrap_or(&[]);
    let protocol = h[9];
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let mut key = FlowKey {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        src_port: 0,
        dst_port: 0,
        protocol,
        zone: 0,
    };
    let mut tcp_flags = 0;
    let mut icmp_error = false;
    let mut l4_header = 0;
    match protocol {
        PROTO_TCP => {
            let Some(tcp) = payload.first_chunk::<20>() else {
                return Err(DropReason::MalformedTransport);
            };
            (key.src_port, key.dst_port) = ports(tcp);
            tcp_flags = tcp[13];
            l4_header = usize::from(tcp[12] >> 4) * 4;
        }
        PROTO_UDP | PROTO_SCTP => {
            let Some(l4) = payload.first_chunk::<8>() else {
                return Err(DropReason::MalformedTransport);
            };
            (key.src_port, key.dst_port) = ports(l4);
            if protocol == PROTO_UDP {
                l4_header = 8;
            }
        }
        PROTO_ICMP => {
            let icmp =
                Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::MalformedTransport)?;
            match icmp.msg_type() {
                Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => {
                    let id = icmp.echo_ident();
                    key.src_port = id;
                    key.dst_port = id;
                }
                Icmpv4Message::DstUnreachable | Icmpv4Message::TimeExceeded => {
                    key = embedded_flow(payload.get(8..).unwrap_or(&[]))?.reversed();
                    icmp_error = true;
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Ipv4Summary {
        ip: ETHERNET_HEADER_LEN,
        l4,
        end,
        src,
        dst,
        dont_fragment: flags_offset & 0x4000 != 0,
        more_fragments: flags_offset & 0x2000 != 0,
        key,
        tcp_flags,
        ttl: h[8],
        icmp_error,
        l4_header,
        meta: FrameMeta::PLAIN,
    })
}

/// The ones'-complement sum (folded, not complemented) of an IPv4 header, whose length
/// is a multiple of 4: 32-bit words added into 64 bits and folded once, which gives
/// the same 16-bit result as adding 16-bit words (2^16 ≡ 1 modulo 2^16 − 1). A correct
/// header sums to 0xffff.
fn header_sum(header: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for w in header.chunks_exact(4) {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The source and destination ports at the start of a TCP, UDP or SCTP header (0, 0
/// if it is shorter than 4 bytes; callers check the header length first).
fn ports(l4: &[u8]) -> (u16, u16) {
    let [a, b, c, d, ..] = *l4 else {
        return (0, 0);
    };
    (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

/// The flow of the packet embedded in an ICMP error: its IPv4 header and at least the
/// first 8 bytes of its payload (RFC 792).
pub(crate) fn embedded_flow(inner: &[u8]) -> Result<FlowKey, DropReason> {
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        return Err(DropReason::MalformedTransport);
    }
    let header_len = usize::from(inner[0] & 0x0f) * 4;
    if header_len < 20 || inner.len() < header_len + 8 {
        return Err(DropReason::MalformedTransport);
    }
    let addr =
        |at: usize| IpAddr::V4([inner[at], inner[at + 1], inner[at + 2], inner[at + 3]].into());
    let protocol = inner[9];
    let l4 = &inner[header_len..];
    let (src_port, dst_port) = match IpProtocol::from(protocol) {
        IpProtocol::Tcp | IpProtocol::Udp => ports(l4),
        IpProtocol::Icmp => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ if protocol == PROTO_SCTP => ports(l4),
        _ => (0, 0),
    };
    Ok(FlowKey {
        src: addr(12),
        dst: addr(16),
        src_port,
        dst_port,
        protocol,
        zone: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::test_frames::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    fn parse(buf: &[u8], span: crate::datapath::Span) -> Result<Parsed, DropReason> {
        parse_frame(&buf[span.range()])
    }

    #[test]
    fn tcp_udp_icmp_keys() {
        let (buf, span) = ipv4_frame(
            [2; 6],
            [3; 6],
            A,
            B,
            6,
            64,
            &tcp(1234, 80, 1, 0, tcp_flags::SYN, b""),
        );
        let Parsed::Ipv4(s) = parse(&buf, span).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.key.src_port, s.key.dst_port, s.key.protocol),
            (1234, 80, 6)
        );
        assert_eq!(s.tcp_flags, tcp_flags::SYN);
        assert_eq!((s.ip, s.l4, s.end), (14, 34, 54));
        let (buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 17, 64, &udp(9, 53, b"x"));
        let Parsed::Ipv4(s) = parse(&buf, span).unwrap() else {
            panic!()
        };
        assert_eq!((s.key.src_port, s.key.dst_port), (9, 53));
        let (buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 1, 64, &icmp_echo(0x3291, 1));
        let Parsed::Ipv4(s) = parse(&buf, span).unwrap() else {
            panic!()
        };
        assert_eq!((s.key.src_port, s.key.dst_port), (0x3291, 0x3291));
        assert!(!s.icmp_error);
    }

    #[test]
    fn malformed_frames_name_their_fault() {
        let (mut buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 6, 64, &tcp(1, 2, 0, 0, 0, b""));
        assert_eq!(
            parse_frame(&buf[span.start..span.start + 10]),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            parse_frame(&buf[span.start..span.start + 30]),
            Err(DropReason::MalformedIpv4)
        );
        assert_eq!(
            parse_frame(&buf[span.start..span.start + 40]),
            Err(DropReason::MalformedIpv4)
        );
        buf[span.start + 14 + 10] ^= 0xff;
        assert_eq!(parse(&buf, span), Err(DropReason::BadIpv4Checksum));
        let (buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 6, 64, &[0u8; 10]);
        assert_eq!(parse(&buf, span), Err(DropReason::MalformedTransport));
        let (mut buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 17, 64, &udp(1, 2, b""));
        buf[span.start + 12] = 0x86;
        buf[span.start + 13] = 0xdd;
        assert_eq!(parse(&buf, span), Err(DropReason::UnsupportedEtherType));
    }

    /// The checks of smoltcp's checked IPv4 view, which `parse_ipv4` reimplements at
    /// fixed offsets: the outcome `parse_frame` must agree with.
    fn smoltcp_verdict(frame: &[u8]) -> Result<(u8, u8, bool, usize), DropReason> {
        use smoltcp::wire::Ipv4Packet;
        let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..])
            .map_err(|_| DropReason::MalformedIpv4)?;
        if ip.version() != 4 {
            return Err(DropReason::MalformedIpv4);
        }
        if !ip.verify_checksum() {
            return Err(DropReason::BadIpv4Checksum);
        }
        if ip.frag_offset() != 0 {
            return Err(DropReason::Fragment);
        }
        Ok((
            ip.hop_limit(),
            u8::from(ip.next_header()),
            ip.dont_frag(),
            ETHERNET_HEADER_LEN + usize::from(ip.total_len()),
        ))
    }

    proptest::proptest! {
        /// Mutations of a valid frame (a few bytes of the IPv4 header changed, the
        /// header checksum fixed or not, the frame cut short) get the same verdict from
        /// `parse_frame` as from smoltcp's view.
        #[test]
        fn ipv4_checks_agree_with_smoltcp(
            edits in proptest::collection::vec(
                // Version/IHL, total length, flags/fragment offset, protocol, anywhere.
                (proptest::sample::select(&[0usize, 0, 2, 3, 6, 7, 9, 12][..]), proptest::prelude::any::<u8>()),
                0..3,
            ),
            fix_checksum in proptest::prelude::any::<bool>(),
            cut in proptest::option::of(1usize..40),
        ) {
            let (buf, span) = ipv4_frame([2; 6], [3; 6], A, B, 17, 64, &udp(9, 53, b"data"));
            let mut f = buf[span.range()].to_vec();
            for (at, v) in edits {
                let at = if at == 12 { usize::from(v) % 20 } else { at };
                f[14 + at] = v;
            }
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if fix_checksum && (20..=f.len() - 14).contains(&ihl) {
                f[24] = 0;
                f[25] = 0;
                let c = !crate::checksum::sum(&f[14..14 + ihl]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
            if let Some(cut) = cut {
                f.truncate(f.len().saturating_sub(cut).max(14));
            }
            let ours = parse_frame(&f).map(|p| match p {
                Parsed::Ipv4(s) => (s.ttl, s.key.protocol, s.dont_fragment, s.end),
                Parsed::Arp => unreachable!(),
            });
            let theirs = smoltcp_verdict(&f);
            match (ours, theirs) {
                // Past the IPv4 checks, transport checks may still drop it.
                (Err(DropReason::MalformedTransport), Ok(_)) => {}
                (ours, theirs) => proptest::prop_assert_eq!(ours, theirs),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_frame(&bytes);
        }
    }
}

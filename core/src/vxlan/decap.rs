//! Checked, zero-copy VXLAN decapsulation.
//!
//! Design note: a received frame is untrusted. Every field is checked before it is used
//! and every rejection is its own [`DecapError`] variant, so a datapath counts drops by
//! reason ([`DecapError::index`]). Checks run cheapest-and-most-telling first: headers
//! and lengths, the IPv4 header checksum (which makes the outer addresses trustworthy),
//! the destination port, the VTEP lookup of the sender (one O(1) probe, before any
//! per-byte work so spoofed traffic costs little), then the UDP checksum over the
//! whole datagram (if the sender set one) and only then the VXLAN fields it protects.
//! Trailing bytes after the IPv4 total length (Ethernet padding) are ignored, as every
//! IP stack does.

use core::fmt;
use core::net::IpAddr;
use core::ops::Range;

use super::checksum;
use super::{DstMacFilter, VtepTable, VxlanConfig, ETHERNET_HEADER_LEN};
use crate::ids::NodeId;
use crate::wire::{EthernetAddress, Vni, VxlanError, VxlanPacket, VxlanRepr, VXLAN_HEADER_LEN};

/// Why a received frame was not accepted as VXLAN from a known node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum DecapError {
    /// Shorter than an Ethernet header.
    EthernetTruncated,
    /// The outer EtherType is not IPv4 (nor IPv6).
    NotIpv4,
    /// The outer frame is IPv6; IPv6 underlays are not implemented yet.
    OuterIpv6Unsupported,
    /// The outer destination MAC is not ours (with [`DstMacFilter::Local`]).
    WrongDstMac,
    /// Shorter than the IPv4 header (20 bytes, or IHL × 4).
    Ipv4Truncated,
    /// The IP version field is not 4.
    Ipv4BadVersion,
    /// IHL below 5.
    Ipv4BadHeaderLen,
    /// The IPv4 header checksum is wrong.
    Ipv4BadChecksum,
    /// The total length is below the header length or beyond the frame.
    Ipv4BadTotalLen,
    /// A fragment (MF set or non-zero offset): VXLAN is never fragmented.
    Ipv4Fragment,
    /// The IPv4 protocol is not UDP.
    NotUdp,
    /// The outer destination address is not our underlay address.
    WrongDstIp,
    /// Shorter than a UDP header.
    UdpTruncated,
    /// The UDP length field does not match the IPv4 payload length.
    UdpBadLength,
    /// The UDP destination port is not the configured VXLAN port.
    WrongDstPort,
    /// The outer source address is not a known node (anti-spoofing).
    UnknownVtep,
    /// The (non-zero) UDP checksum is wrong.
    UdpBadChecksum,
    /// Shorter than a VXLAN header.
    VxlanTruncated,
    /// The VXLAN I flag is not set.
    MissingIFlag,
    /// The VNI is not ours.
    UnknownVni,
    /// The inner frame is shorter than an Ethernet header.
    InnerTruncated,
}

impl DecapError {
    /// Number of variants: the size of a per-reason counter array.
    pub const COUNT: usize = 21;

    /// Every variant, in index order.
    pub const ALL: [DecapError; DecapError::COUNT] = [
        DecapError::EthernetTruncated,
        DecapError::NotIpv4,
        DecapError::OuterIpv6Unsupported,
        DecapError::WrongDstMac,
        DecapError::Ipv4Truncated,
        DecapError::Ipv4BadVersion,
        DecapError::Ipv4BadHeaderLen,
        DecapError::Ipv4BadChecksum,
        DecapError::Ipv4BadTotalLen,
        DecapError::Ipv4Fragment,
        DecapError::NotUdp,
        DecapError::WrongDstIp,
        DecapError::UdpTruncated,
        DecapError::UdpBadLength,
        DecapError::WrongDstPort,
        DecapError::UnknownVtep,
        DecapError::UdpBadChecksum,
        DecapError::VxlanTruncated,
        DecapError::MissingIFlag,
        DecapError::UnknownVni,
        DecapError::InnerTruncated,
    ];

    /// A dense index in `0..COUNT`, for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name, for metric labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            DecapError::EthernetTruncated => "ethernet_truncated",
            DecapError::NotIpv4 => "not_ipv4",
            DecapError::OuterIpv6Unsupported => "outer_ipv6_unsupported",
            DecapError::WrongDstMac => "wrong_dst_mac",
            DecapError::Ipv4Truncated => "ipv4_truncated",
            DecapError::Ipv4BadVersion => "ipv4_bad_version",
            DecapError::Ipv4BadHeaderLen => "ipv4_bad_header_len",
            DecapError::Ipv4BadChecksum => "ipv4_bad_checksum",
            DecapError::Ipv4BadTotalLen => "ipv4_bad_total_len",
            DecapError::Ipv4Fragment => "ipv4_fragment",
            DecapError::NotUdp => "not_udp",
            DecapError::WrongDstIp => "wrong_dst_ip",
            DecapError::UdpTruncated => "udp_truncated",
            DecapError::UdpBadLength => "udp_bad_length",
            DecapError::WrongDstPort => "wrong_dst_port",
            DecapError::UnknownVtep => "unknown_vtep",
            DecapError::UdpBadChecksum => "udp_bad_checksum",
            DecapError::VxlanTruncated => "vxlan_truncated",
            DecapError::MissingIFlag => "missing_i_flag",
            DecapError::UnknownVni => "unknown_vni",
            DecapError::InnerTruncated => "inner_truncated",
        }
    }
}

impl fmt::Display for DecapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame accepted by [`VxlanConfig::decapsulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Decapsulated {
    /// The node that sent it (looked up by outer source address).
    pub node: NodeId,
    /// The VNI it carried (always the configured one).
    pub vni: Vni,
    /// Offset of the inner Ethernet frame in the received buffer.
    pub inner_start: usize,
    /// Length of the inner Ethernet frame.
    pub inner_len: usize,
}

impl Decapsulated {
    /// The inner Ethernet frame: `&frame[d.inner()]`.
    pub fn inner(&self) -> Range<usize> {
        self.inner_start..self.inner_start + self.inner_len
    }
}

impl VxlanConfig {
    /// Validates a received outer Ethernet frame and returns the sending node and the
    /// inner frame's place in `frame` (zero copy).
    ///
    /// Accepts exactly: Ethernet II to an accepted MAC ([`DstMacFilter`]); IPv4 with a
    /// correct header checksum, options allowed, total length within the frame, not a
    /// fragment, protocol UDP, destination `local_ip`, source a node in `vteps`; UDP
    /// length = IPv4 payload length, destination port `dst_port`, checksum zero or
    /// correct; a VXLAN header with the I flag and VNI `vni` (reserved bits ignored);
    /// an inner frame of at least an Ethernet header.
    pub fn decapsulate(
        &self,
        vteps: &VtepTable<'_>,
        frame: &[u8],
    ) -> Result<Decapsulated, DecapError> {
        use DecapError as E;

        // Outer Ethernet.
        let (eth, rest) = split(frame, ETHERNET_HEADER_LEN).ok_or(E::EthernetTruncated)?;
        match u16::from_be_bytes([eth[12], eth[13]]) {
            0x0800 => {}
            0x86dd => return Err(E::OuterIpv6Unsupported),
            _ => return Err(E::NotIpv4),
        }
        if self.dst_mac_filter == DstMacFilter::Local
            && EthernetAddress::from_bytes(&eth[..6]) != self.local_mac
        {
            return Err(E::WrongDstMac);
        }

        // Outer IPv4.
        let fixed: &[u8; 20] = rest
            .get(..20)
            .and_then(|h| h.try_into().ok())
            .ok_or(E::Ipv4Truncated)?;
        if fixed[0] >> 4 != 4 {
            return Err(E::Ipv4BadVersion);
        }
        let ihl = usize::from(fixed[0] & 0x0f) * 4;
        if ihl < 20 {
            return Err(E::Ipv4BadHeaderLen);
        }
        let header = rest.get(..ihl).ok_or(E::Ipv4Truncated)?;
        if checksum::fold(checksum::sum(header)) != 0xffff {
            return Err(E::Ipv4BadChecksum);
        }
        let total_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if total_len < ihl || total_len > rest.len() {
            return Err(E::Ipv4BadTotalLen);
        }
        if u16::from_be_bytes([fixed[6], fixed[7]]) & 0x3fff != 0 {
            return Err(E::Ipv4Fragment);
        }
        if fixed[9] != 17 {
            return Err(E::NotUdp);
        }
        let src: [u8; 4] = [fixed[12], fixed[13], fixed[14], fixed[15]];
        let dst: [u8; 4] = [fixed[16], fixed[17], fixed[18], fixed[19]];
        match self.local_ip {
            IpAddr::V4(local) if local.octets() == dst => {}
            _ => return Err(E::WrongDstIp),
        }

        // Outer UDP. `datagram` is exactly the IPv4 payload.
        let datagram = rest.get(ihl..total_len).ok_or(E::Ipv4BadTotalLen)?;
        let (udp, vxlan) = split(datagram, 8).ok_or(E::UdpTruncated)?;
        let udp_len = u16::from_be_bytes([udp[4], udp[5]]);
        if usize::from(udp_len) != datagram.len() {
            return Err(E::UdpBadLength);
        }
        if u16::from_be_bytes([udp[2], udp[3]]) != self.dst_port {
            return Err(E::WrongDstPort);
        }
        let node = vteps
            .get_by_ip(IpAddr::V4(src.into()))
            .ok_or(E::UnknownVtep)?
            .node;
        if u16::from_be_bytes([udp[6], udp[7]]) != 0 {
            let acc = checksum::pseudo_v4(src, dst, 17, udp_len) + checksum::sum(datagram);
            if checksum::fold(acc) != 0xffff {
                return Err(E::UdpBadChecksum);
            }
        }

        // VXLAN.
        let repr = VxlanRepr::parse(&VxlanPacket::new_unchecked(vxlan)).map_err(|e| match e {
            VxlanError::Truncated => E::VxlanTruncated,
            VxlanError::MissingIFlag => E::MissingIFlag,
        })?;
        if repr.vni != self.vni {
            return Err(E::UnknownVni);
        }
        let inner_len = vxlan.len() - VXLAN_HEADER_LEN;
        if inner_len < ETHERNET_HEADER_LEN {
            return Err(E::InnerTruncated);
        }
        Ok(Decapsulated {
            node,
            vni: repr.vni,
            inner_start: ETHERNET_HEADER_LEN + ihl + 8 + VXLAN_HEADER_LEN,
            inner_len,
        })
    }
}

/// Splits off a fixed-size head, or `None` if `data` is shorter.
#[inline]
fn split(data: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    if data.len() < at {
        None
    } else {
        Some(data.split_at(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vxlan::{inner_flow_hash, PortRange, Vtep, VtepSlot, IPV4_OVERHEAD};
    use crate::wire::{Icmpv4Packet, Ipv4Packet};
    use core::net::Ipv4Addr;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A 108-byte frame captured from the Linux kernel's vxlan driver: 198.18.0.1 →
    /// 198.18.0.2, UDP 37901 → 4789 with a correct checksum (0x8e6c), VNI 42, inner
    /// 10.99.0.1 → 10.99.0.2 ICMP echo request id 0x3291 seq 1.
    pub(crate) const KERNEL_FRAME: [u8; 108] = hex(concat!(
        "f6e1cb9f2f16befec3e1636508004500005e4b4d00004011a31ac6120001c6120002940d12b5004a8e6c",
        "0800000000002a00",
        "0200000000020200000000010800",
        "4500002c0fe84000400116210a6300010a63000208004ba732910001070a066b000000006c51000000000000",
    ));

    const fn hex<const N: usize>(s: &str) -> [u8; N] {
        const fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => panic!("not hex"),
            }
        }
        let s = s.as_bytes();
        assert!(s.len() == 2 * N);
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]);
            i += 1;
        }
        out
    }

    const SENDER_MAC: EthernetAddress = EthernetAddress([0xbe, 0xfe, 0xc3, 0xe1, 0x63, 0x65]);
    const RECEIVER_MAC: EthernetAddress = EthernetAddress([0xf6, 0xe1, 0xcb, 0x9f, 0x2f, 0x16]);
    const SENDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// The receiving end of the capture.
    fn receiver() -> VxlanConfig {
        let mut c = VxlanConfig::new(IpAddr::V4(RECEIVER_IP), RECEIVER_MAC);
        c.vni = Vni::new(42).unwrap();
        c.dst_port = 4789;
        c
    }

    /// The sending end of the capture, configured to reproduce the kernel's header.
    fn kernel_like_sender() -> VxlanConfig {
        let mut c = VxlanConfig::new(IpAddr::V4(SENDER_IP), SENDER_MAC);
        c.vni = Vni::new(42).unwrap();
        c.dst_port = 4789;
        c.src_ports = PortRange::new(37901, 37901).unwrap();
        c.udp_checksum = true;
        c.dont_fragment = false; // the kernel's default `df unset`
        c
    }

    fn sender_vtep() -> Vtep {
        Vtep {
            node: NodeId(1),
            ip: IpAddr::V4(SENDER_IP),
            mac: SENDER_MAC,
        }
    }

    fn receiver_vtep() -> Vtep {
        Vtep {
            node: NodeId(2),
            ip: IpAddr::V4(RECEIVER_IP),
            mac: RECEIVER_MAC,
        }
    }

    #[test]
    fn decapsulates_kernel_frame() {
        let mut storage = [VtepSlot::EMPTY; 4];
        let mut vteps = VtepTable::new(&mut storage);
        vteps.insert(sender_vtep()).unwrap();
        let d = receiver().decapsulate(&vteps, &KERNEL_FRAME).unwrap();
        assert_eq!(d.node, NodeId(1));
        assert_eq!(d.vni.get(), 42);
        assert_eq!(d.inner(), 50..108);
        let inner = &KERNEL_FRAME[d.inner()];
        assert_eq!(&inner[12..14], &[0x08, 0x00]);
        let ip = Ipv4Packet::new_checked(&inner[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 99, 0, 2));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.echo_ident(), 0x3291);
        assert_eq!(icmp.echo_seq_no(), 1);
        assert!(icmp.verify_checksum());
    }

    #[test]
    fn reproduces_kernel_frame_byte_for_byte() {
        let mut buf = [0u8; 108];
        buf[50..].copy_from_slice(&KERNEL_FRAME[50..]);
        let e = kernel_like_sender()
            .encapsulate(&receiver_vtep(), &mut buf, 50, 58, 0x4b4d)
            .unwrap();
        assert_eq!(e.frame(), 0..108);
        assert_eq!(e.src_port, 37901);
        assert_eq!(&buf[42..50], &KERNEL_FRAME[42..50], "VXLAN header");
        assert_eq!(&buf[24..26], &[0xa3, 0x1a], "IPv4 header checksum");
        assert_eq!(&buf[40..42], &[0x8e, 0x6c], "UDP checksum");
        assert_eq!(buf, KERNEL_FRAME);
    }

    #[test]
    fn default_encap_of_kernel_inner_frame() {
        // podwire's defaults differ from the capture exactly in DF, the source port
        // (flow hash) and the checksum fields; everything else is the kernel's.
        let mut c = kernel_like_sender();
        c.src_ports = PortRange::EPHEMERAL;
        c.dont_fragment = true;
        let mut buf = [0u8; 108];
        buf[50..].copy_from_slice(&KERNEL_FRAME[50..]);
        let e = c
            .encapsulate(&receiver_vtep(), &mut buf, 50, 58, 0x4b4d)
            .unwrap();
        let port = PortRange::EPHEMERAL.pick(inner_flow_hash(&KERNEL_FRAME[50..], 0));
        assert_eq!(e.src_port, port);
        assert!(port >= 49152);
        assert_eq!(&buf[34..36], &port.to_be_bytes());
        let mut expected = KERNEL_FRAME;
        expected[20] = 0x40; // DF
        expected[34..36].copy_from_slice(&port.to_be_bytes());
        refix(&mut expected, true);
        assert_eq!(buf, expected);
        let ip = Ipv4Packet::new_checked(&buf[14..]).unwrap();
        assert!(ip.verify_checksum() && ip.dont_frag() && ip.hop_limit() == 64);

        // Checksum off (the default) writes zero, and the receiver accepts it.
        c.udp_checksum = false;
        c.encapsulate(&receiver_vtep(), &mut buf, 50, 58, 1)
            .unwrap();
        assert_eq!(&buf[40..42], &[0, 0]);
        let mut storage = [VtepSlot::EMPTY; 1];
        let mut vteps = VtepTable::new(&mut storage);
        vteps.insert(sender_vtep()).unwrap();
        assert_eq!(
            receiver().decapsulate(&vteps, &buf).unwrap().inner(),
            50..108
        );
    }

    /// Recomputes the IPv4 header checksum and (if `udp`) the UDP checksum of an outer
    /// frame after a test mutated it, so that the intended check is the one that fails.
    fn refix(f: &mut [u8], udp: bool) {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        if ihl >= 20 && f.len() >= 14 + ihl {
            f[24..26].copy_from_slice(&[0, 0]);
            let c = !checksum::fold(checksum::sum(&f[14..14 + ihl]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        if udp && f.len() >= 14 + total && total >= ihl + 8 {
            let (s, d) = ([f[26], f[27], f[28], f[29]], [f[30], f[31], f[32], f[33]]);
            let dg = 14 + ihl..14 + total;
            f[dg.start + 6..dg.start + 8].copy_from_slice(&[0, 0]);
            let len = (total - ihl) as u16;
            let acc = checksum::pseudo_v4(s, d, 17, len) + checksum::sum(&f[dg.clone()]);
            let c = match !checksum::fold(acc) {
                0 => 0xffff,
                c => c,
            };
            f[dg.start + 6..dg.start + 8].copy_from_slice(&c.to_be_bytes());
        }
    }

    fn set_u16(f: &mut [u8], at: usize, v: u16) {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn every_rejection_has_its_own_reason() {
        use DecapError as E;
        let mut storage = [VtepSlot::EMPTY; 2];
        let mut vteps = VtepTable::new(&mut storage);
        vteps.insert(sender_vtep()).unwrap();
        let ok = receiver();
        let k = KERNEL_FRAME;
        let mutated = |m: &dyn Fn(&mut Vec<u8>)| {
            let mut f = k.to_vec();
            m(&mut f);
            f
        };
        let cases: Vec<(E, VxlanConfig, Vec<u8>)> = std::vec![
            (E::EthernetTruncated, ok, k[..13].to_vec()),
            (E::NotIpv4, ok, mutated(&|f| set_u16(f, 12, 0x0806))),
            (
                E::OuterIpv6Unsupported,
                ok,
                mutated(&|f| set_u16(f, 12, 0x86dd))
            ),
            (E::WrongDstMac, ok, mutated(&|f| f[5] ^= 1)),
            (E::Ipv4Truncated, ok, k[..33].to_vec()),
            (
                E::Ipv4Truncated,
                ok,
                mutated(&|f| {
                    f[14] = 0x46;
                    f.truncate(14 + 23)
                })
            ),
            (
                E::Ipv4BadVersion,
                ok,
                mutated(&|f| {
                    f[14] = 0x65;
                    refix(f, false)
                })
            ),
            (
                E::Ipv4BadHeaderLen,
                ok,
                mutated(&|f| {
                    f[14] = 0x44;
                    refix(f, false)
                })
            ),
            (E::Ipv4BadChecksum, ok, mutated(&|f| f[25] ^= 0x10)),
            (
                E::Ipv4BadTotalLen,
                ok,
                mutated(&|f| {
                    set_u16(f, 16, 95);
                    refix(f, false)
                })
            ),
            (
                E::Ipv4BadTotalLen,
                ok,
                mutated(&|f| {
                    set_u16(f, 16, 19);
                    refix(f, false)
                })
            ),
            (
                E::Ipv4Fragment,
                ok,
                mutated(&|f| {
                    f[20] = 0x20;
                    refix(f, false)
                })
            ),
            (
                E::Ipv4Fragment,
                ok,
                mutated(&|f| {
                    f[21] = 0x01;
                    refix(f, false)
                })
            ),
            (
                E::NotUdp,
                ok,
                mutated(&|f| {
                    f[23] = 6;
                    refix(f, false)
                })
            ),
            (
                E::WrongDstIp,
                VxlanConfig {
                    local_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)),
                    ..ok
                },
                k.to_vec()
            ),
            (
                E::UdpTruncated,
                ok,
                mutated(&|f| {
                    set_u16(f, 16, 27);
                    refix(f, false)
                })
            ),
            (E::UdpBadLength, ok, mutated(&|f| set_u16(f, 38, 0x49))),
            (E::UdpBadLength, ok, mutated(&|f| set_u16(f, 38, 0x4b))),
            (
                E::WrongDstPort,
                VxlanConfig {
                    dst_port: 8472,
                    ..ok
                },
                k.to_vec()
            ),
            (
                E::UnknownVtep,
                ok,
                mutated(&|f| {
                    f[29] = 9;
                    refix(f, true)
                })
            ),
            (E::UdpBadChecksum, ok, mutated(&|f| f[100] ^= 0x01)),
            (E::UdpBadChecksum, ok, mutated(&|f| f[48] ^= 0x01)),
            (
                E::VxlanTruncated,
                ok,
                mutated(&|f| {
                    f.truncate(49);
                    set_u16(f, 16, 35);
                    set_u16(f, 38, 15);
                    refix(f, true)
                })
            ),
            (
                E::MissingIFlag,
                ok,
                mutated(&|f| {
                    f[42] = 0x00;
                    refix(f, true)
                })
            ),
            (
                E::UnknownVni,
                VxlanConfig {
                    vni: Vni::DEFAULT,
                    ..ok
                },
                k.to_vec()
            ),
            (
                E::InnerTruncated,
                ok,
                mutated(&|f| {
                    f.truncate(63);
                    set_u16(f, 16, 49);
                    set_u16(f, 38, 29);
                    refix(f, true)
                })
            ),
        ];
        let mut seen = [false; DecapError::COUNT];
        for (expected, config, frame) in &cases {
            assert_eq!(
                config.decapsulate(&vteps, frame),
                Err(*expected),
                "{}",
                expected.name()
            );
            seen[expected.index()] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "every DecapError variant is exercised"
        );
        for (i, e) in DecapError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn accepts_what_the_rfc_allows() {
        let mut storage = [VtepSlot::EMPTY; 2];
        let mut vteps = VtepTable::new(&mut storage);
        vteps.insert(sender_vtep()).unwrap();
        let c = receiver();
        // Ethernet padding after the IP packet.
        let mut padded = KERNEL_FRAME.to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(c.decapsulate(&vteps, &padded).unwrap().inner(), 50..108);
        // Reserved VXLAN bits set: ignored.
        let mut reserved = KERNEL_FRAME;
        reserved[42] = 0xff;
        reserved[43] = 0x12;
        reserved[49] = 0x34;
        refix(&mut reserved, true);
        assert_eq!(c.decapsulate(&vteps, &reserved).unwrap().node, NodeId(1));
        // Zero UDP checksum: not verified.
        let mut zero = KERNEL_FRAME;
        zero[40..42].copy_from_slice(&[0, 0]);
        zero[100] ^= 0xff;
        assert!(c.decapsulate(&vteps, &zero).is_ok());
        // Any destination MAC when configured so.
        let mut other_mac = KERNEL_FRAME;
        other_mac[0] = 0xff;
        assert_eq!(
            c.decapsulate(&vteps, &other_mac),
            Err(DecapError::WrongDstMac)
        );
        let any = VxlanConfig {
            dst_mac_filter: DstMacFilter::Any,
            ..c
        };
        assert!(any.decapsulate(&vteps, &other_mac).is_ok());
        // IPv4 options: the inner frame starts later.
        let mut opts = KERNEL_FRAME[..34].to_vec();
        opts.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        opts.extend_from_slice(&KERNEL_FRAME[34..]);
        opts[14] = 0x46;
        set_u16(&mut opts, 16, 0x62);
        refix(&mut opts, true);
        let d = c.decapsulate(&vteps, &opts).unwrap();
        assert_eq!(d.inner(), 54..112);
        assert_eq!(&opts[d.inner()], &KERNEL_FRAME[50..]);
    }

    fn arb_config() -> impl Strategy<Value = (VxlanConfig, u16)> {
        (
            0u32..=0xff_ffff,
            any::<u16>(),
            any::<(u16, u16)>(),
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
            any::<u64>(),
            any::<u16>(),
        )
            .prop_map(|(vni, dst_port, (a, b), csum, df, ttl, seed, ident)| {
                let mut c = VxlanConfig::new(IpAddr::V4(SENDER_IP), SENDER_MAC);
                c.vni = Vni::new(vni).unwrap();
                c.dst_port = dst_port;
                c.src_ports = PortRange::new(a.min(b), a.max(b)).unwrap();
                c.udp_checksum = csum;
                c.dont_fragment = df;
                c.ttl = ttl;
                c.flow_seed = seed;
                c.underlay_mtu = 9000;
                (c, ident)
            })
    }

    proptest! {
        #[test]
        fn encap_decap_round_trip(
            (sender, ident) in arb_config(),
            inner in proptest::collection::vec(any::<u8>(), 14..1500),
            extra_headroom in 0usize..16,
            tailroom in 0usize..16,
            ipv4_inner in any::<bool>(),
        ) {
            let mut inner = inner;
            if ipv4_inner {
                // Make it look like IPv4 so the flow-key path is taken too.
                inner[12] = 0x08;
                inner[13] = 0x00;
                if let Some(b) = inner.get_mut(14) { *b = 0x45; }
            }
            let headroom = IPV4_OVERHEAD + extra_headroom;
            let mut buf = std::vec![0xeeu8; headroom + inner.len() + tailroom];
            buf[headroom..headroom + inner.len()].copy_from_slice(&inner);
            let e = sender.encapsulate(&receiver_vtep(), &mut buf, headroom, inner.len(), ident).unwrap();
            prop_assert_eq!(e.frame(), extra_headroom..headroom + inner.len());
            prop_assert!(e.src_port >= sender.src_ports.first() && e.src_port <= sender.src_ports.last());
            prop_assert_eq!(&buf[headroom..headroom + inner.len()], &inner[..]);

            let mut receiver = VxlanConfig::new(IpAddr::V4(RECEIVER_IP), RECEIVER_MAC);
            receiver.vni = sender.vni;
            receiver.dst_port = sender.dst_port;
            let mut storage = [VtepSlot::EMPTY; 4];
            let mut vteps = VtepTable::new(&mut storage);
            vteps.insert(sender_vtep()).unwrap();
            let frame = &buf[e.frame()];
            let d = receiver.decapsulate(&vteps, frame).unwrap();
            prop_assert_eq!(d.node, NodeId(1));
            prop_assert_eq!(d.vni, sender.vni);
            prop_assert_eq!(&frame[d.inner()], &inner[..]);
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            prop_assert!(ip.verify_checksum());
            prop_assert_eq!(ip.dont_frag(), sender.dont_fragment);
            prop_assert_eq!(ip.hop_limit(), sender.ttl);
            prop_assert_eq!(ip.ident(), ident);
        }

        #[test]
        fn decap_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut storage = [VtepSlot::EMPTY; 2];
            let mut vteps = VtepTable::new(&mut storage);
            vteps.insert(sender_vtep()).unwrap();
            let any = VxlanConfig { dst_mac_filter: DstMacFilter::Any, ..receiver() };
            if let Ok(d) = any.decapsulate(&vteps, &bytes) {
                prop_assert!(d.inner().end <= bytes.len());
            }
        }

        #[test]
        fn decap_of_mutated_kernel_frame_never_panics(
            flips in proptest::collection::vec((0usize..108, any::<u8>()), 1..6),
            cut in 0usize..=108,
            fix in any::<bool>(),
        ) {
            let mut storage = [VtepSlot::EMPTY; 2];
            let mut vteps = VtepTable::new(&mut storage);
            vteps.insert(sender_vtep()).unwrap();
            let mut f = KERNEL_FRAME;
            for (at, x) in flips {
                f[at] ^= x;
            }
            if fix {
                refix(&mut f, true);
            }
            if let Ok(d) = receiver().decapsulate(&vteps, &f[..cut]) {
                prop_assert!(d.inner().end <= cut);
                prop_assert!(d.inner_len >= 14);
            }
        }
    }
}

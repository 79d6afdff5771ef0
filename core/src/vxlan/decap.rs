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

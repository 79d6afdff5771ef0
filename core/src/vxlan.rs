//! VXLAN overlay (RFC 7348): the VTEP table, in-place encapsulation and checked,
//! zero-copy decapsulation.
//!
//! Design note: this is the per-packet path between nodes, so it is built for speed and
//! for hostile input, the way flannel's `vxlan` backend leaves it to the kernel:
//!
//! * **No copies.** [`VxlanConfig::encapsulate`] writes the 50-byte outer
//!   Ethernet + IPv4 + UDP + VXLAN header *in front of* an inner frame already in the
//!   caller's buffer (`buf[headroom..headroom + len]`); a shell receives frames at
//!   offset [`IPV4_OVERHEAD`] (or more) and never moves them. [`VxlanConfig::decapsulate`]
//!   returns the inner frame as a range of the received buffer.
//! * **O(1) lookups.** Encap takes the [`Vtep`] the caller looked up by node; decap looks
//!   the outer source address up in the [`VtepTable`] (two open-addressing indexes, by
//!   node and by underlay address, at most half full). Nothing scans a table per
//!   packet.
//! * **flannel-compatible defaults**: VNI 1, UDP port 8472 ([`FLANNEL_PORT`];
//!   [`IANA_PORT`] 4789 is a configuration choice), outer UDP source port from the inner
//!   flow's hash in 49152–65535 (RFC 7348 §5 entropy for underlay ECMP), UDP checksum
//!   zero (RFC 7348 §5: SHOULD be zero for IPv4; computing it is an option), DF set
//!   (VXLAN must not fragment: a frame that would exceed the underlay MTU is an error),
//!   TTL 64.
//! * **Every rejection has a name.** Decapsulation validates the outer Ethernet, IPv4,
//!   UDP and VXLAN headers, the VNI and the sender (a frame whose outer source is no
//!   known node is [`DecapError::UnknownVtep`]: anti-spoofing), and each reason is its
//!   own [`DecapError`] variant with a dense index so a datapath can count drops.
//! * **IPv6 underlay** is modelled (addresses are `core::net::IpAddr`, the VTEP table
//!   stores IPv6) but not yet encapsulated: such a configuration returns
//!   [`EncapError::OuterIpv6Unsupported`] / [`DecapError::OuterIpv6Unsupported`].
//!
//! The source-port hash is part of the cross-node contract and is specified in
//! [`inner_flow_hash`].

use core::net::IpAddr;

use crate::wire::{EthernetAddress, Vni};

mod checksum;
mod decap;
mod encap;
mod vtep;

pub use self::decap::{DecapError, Decapsulated};
pub use self::encap::{inner_flow_hash, EncapError, Encapsulated};
pub use self::vtep::{Vtep, VtepError, VtepSlot, VtepTable, MAX_VTEPS};

/// flannel's VXLAN UDP port (the Linux kernel's historical default), podwire's default.
pub const FLANNEL_PORT: u16 = 8472;
/// The IANA-assigned VXLAN UDP port.
pub const IANA_PORT: u16 = 4789;
/// Bytes added in front of the inner frame with an IPv4 underlay:
/// Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const IPV4_OVERHEAD: usize = 50;
/// Length of the outer Ethernet + IPv4 + UDP headers (where the VXLAN header starts).
pub const IPV4_UDP_HEADERS_LEN: usize = 42;
/// Length of an Ethernet header without VLAN tag.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// An inclusive range of UDP source ports that encapsulated flows are spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The dynamic/private port range 49152–65535 that RFC 7348 §5 recommends.
    pub const EPHEMERAL: PortRange = PortRange {
        first: 49152,
        last: 65535,
    };

    /// The ports `first ..= last`, or `None` if `first > last`.
    pub const fn new(first: u16, last: u16) -> Option<PortRange> {
        if first <= last {
            Some(PortRange { first, last })
        } else {
            None
        }
    }

    /// The lowest port.
    pub const fn first(self) -> u16 {
        self.first
    }

    /// The highest port.
    pub const fn last(self) -> u16 {
        self.last
    }

    /// The port a flow hash maps to: `first + ((hash >> 32) * n) >> 32` with
    /// `n = last - first + 1` (multiply-shift on the hash's upper 32 bits: uniform, no
    /// division).
    #[inline]
    pub const fn pick(self, hash: u64) -> u16 {
        let n = (self.last - self.first) as u64 + 1;
        self.first + (((hash >> 32) * n) >> 32) as u16
    }
}

impl Default for PortRange {
    fn default() -> PortRange {
        PortRange::EPHEMERAL
    }
}

/// Which outer destination MAC addresses decapsulation accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DstMacFilter {
    /// Only [`VxlanConfig::local_mac`] (the default).
    #[default]
    Local,
    /// Any destination (the shell already filtered, e.g. frames from a UDP socket with
    /// a synthesised Ethernet header, or a promiscuous capture).
    Any,
}

/// This node's VXLAN endpoint: what encapsulation writes and what decapsulation
/// accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VxlanConfig {
    /// This node's underlay address: outer source on encap, required outer destination
    /// on decap.
    pub local_ip: IpAddr,
    /// This node's underlay MAC: outer source on encap, accepted outer destination on
    /// decap (see [`VxlanConfig::dst_mac_filter`]).
    pub local_mac: EthernetAddress,
    /// The VXLAN network of the overlay (default 1). Decap rejects any other VNI.
    pub vni: Vni,
    /// The UDP destination port (default [`FLANNEL_PORT`] 8472).
    pub dst_port: u16,
    /// Range the outer UDP source port is picked from (default 49152–65535).
    pub src_ports: PortRange,
    /// Seed of the source-port flow hash (default 0; all nodes should agree).
    pub flow_seed: u64,
    /// Whether encapsulation computes the outer UDP checksum (default `false`: zero, as
    /// RFC 7348 recommends for IPv4 and the Linux kernel does by default). Decap always
    /// verifies a non-zero checksum.
    pub udp_checksum: bool,
    /// The underlay MTU: the largest outer IP packet (default 1500). Pods get
    /// `underlay_mtu - 50`.
    pub underlay_mtu: u16,
    /// Outer IPv4 TTL (default 64).
    pub ttl: u8,
    /// Whether the outer IPv4 header has Don't Fragment set (default `true`).
    pub dont_fragment: bool,
    /// Which outer destination MACs decap accepts (default [`DstMacFilter::Local`]).
    pub dst_mac_filter: DstMacFilter,
}

impl VxlanConfig {
    /// A configuration for the endpoint at `local_ip` / `local_mac` with every other
    /// field at its default.
    pub const fn new(local_ip: IpAddr, local_mac: EthernetAddress) -> VxlanConfig {
        VxlanConfig {
            local_ip,
            local_mac,
            vni: Vni::DEFAULT,
            dst_port: FLANNEL_PORT,
            src_ports: PortRange::EPHEMERAL,
            flow_seed: 0,
            udp_checksum: false,
            underlay_mtu: 1500,
            ttl: 64,
            dont_fragment: true,
            dst_mac_filter: DstMacFilter::Local,
        }
    }

    /// The largest inner Ethernet frame (header included) that fits the underlay MTU.
    pub const fn max_inner_frame_len(&self) -> usize {
        (self.underlay_mtu as usize).saturating_sub(IPV4_OVERHEAD - ETHERNET_HEADER_LEN)
    }

    /// The MTU pods get: the underlay MTU minus the 50 bytes of encapsulation.
    pub const fn pod_mtu(&self) -> u16 {
        self.underlay_mtu.saturating_sub(IPV4_OVERHEAD as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn defaults() {
        let c = VxlanConfig::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            EthernetAddress([2, 0, 0, 0, 0, 1]),
        );
        assert_eq!(c.vni.get(), 1);
        assert_eq!(c.dst_port, 8472);
        assert_eq!(c.src_ports, PortRange::new(49152, 65535).unwrap());
        assert!(!c.udp_checksum);
        assert!(c.dont_fragment);
        assert_eq!(c.ttl, 64);
        assert_eq!(c.pod_mtu(), 1450);
        assert_eq!(c.max_inner_frame_len(), 1464);
    }

    #[test]
    fn port_range_pick_covers_the_range() {
        let r = PortRange::EPHEMERAL;
        assert_eq!(r.pick(0), 49152);
        assert_eq!(r.pick(u64::MAX), 65535);
        assert_eq!(r.pick(1 << 63), 49152 + 8192);
        let one = PortRange::new(37901, 37901).unwrap();
        assert_eq!(one.pick(0), 37901);
        assert_eq!(one.pick(u64::MAX), 37901);
        let all = PortRange::new(0, 65535).unwrap();
        assert_eq!(all.pick(u64::MAX), 65535);
        assert_eq!(all.pick(0x1234_5678_0000_0000), 0x1234);
        assert_eq!(PortRange::new(2, 1), None);
    }
}

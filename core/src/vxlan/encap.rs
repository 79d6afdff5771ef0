//! In-place VXLAN encapsulation and the source-port entropy hash.
//!
//! Design note: the inner frame is never moved. The caller leaves at least
//! [`IPV4_OVERHEAD`] bytes of headroom in front of it and encapsulation writes the outer
//! headers there. The 50 header bytes are assembled in a local array from the config
//! and the VTEP and stored with one copy; the IPv4 header checksum is computed from the
//! handful of non-zero header words rather than by a loop over the header (smoltcp's
//! field setters, which read-modify-write, measured slower here). The cost is the flow
//! hash, the header and — only if the UDP checksum is enabled — one pass over the
//! frame. All bounds are checked up front, nothing is written on error, and every
//! failure is an [`EncapError`]. The layout is exactly what the wire views parse; the
//! tests decode it with smoltcp's `Ipv4Packet` and with Wireshark.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ops::Range;

use super::checksum;
use super::{Vtep, VxlanConfig, ETHERNET_HEADER_LEN, IPV4_OVERHEAD, IPV4_UDP_HEADERS_LEN};
use crate::flow::{fmix64, FlowKey, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::wire::vxlan::FLAG_I as VXLAN_FLAG_I;

/// The IPv6 next-header number of ICMPv6.
const PROTO_ICMPV6: u8 = 58;

/// Why a frame could not be encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncapError {
    /// Fewer than [`IPV4_OVERHEAD`] bytes in front of the inner frame.
    InsufficientHeadroom {
        /// Bytes needed in front of the inner frame.
        needed: usize,
        /// Bytes available (`headroom`).
        available: usize,
    },
    /// `headroom + inner_len` lies beyond the end of the buffer.
    InnerOutOfBounds,
    /// The inner frame is shorter than an Ethernet header.
    InnerTooShort,
    /// The outer IP packet would be larger than the underlay MTU (VXLAN must not
    /// fragment).
    MtuExceeded {
        /// Length the outer IP packet would have.
        outer_len: usize,
        /// The configured underlay MTU.
        mtu: u16,
    },
    /// The local and remote underlay addresses are of different IP versions.
    AddressFamilyMismatch,
    /// IPv6 underlay encapsulation is not implemented yet.
    OuterIpv6Unsupported,
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncapError::InsufficientHeadroom { needed, available } => {
                write!(f, "headroom {available} < {needed} bytes")
            }
            EncapError::InnerOutOfBounds => f.write_str("inner frame beyond the buffer"),
            EncapError::InnerTooShort => f.write_str("inner frame shorter than Ethernet"),
            EncapError::MtuExceeded { outer_len, mtu } => {
                write!(
                    f,
                    "outer packet {outer_len} bytes exceeds underlay MTU {mtu}"
                )
            }
            EncapError::AddressFamilyMismatch => f.write_str("underlay address family mismatch"),
            EncapError::OuterIpv6Unsupported => f.write_str("IPv6 underlay not supported"),
        }
    }
}

/// Where the encapsulated frame lies in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Encapsulated {
    /// Offset of the outer Ethernet header (`headroom - 50`).
    pub start: usize,
    /// Length of the whole outer frame (`50 + inner_len`).
    pub len: usize,
    /// The outer UDP source port that was chosen.
    pub src_port: u16,
}

impl Encapsulated {
    /// The outer Ethernet frame: hand `&buf[range]` to a NIC, TAP or AF_PACKET socket.
    pub fn frame(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The UDP payload (VXLAN header + inner frame): what a shell that sends through a
    /// kernel UDP socket passes to `sendto`.
    pub fn udp_payload(&self) -> Range<usize> {
        self.start + IPV4_UDP_HEADERS_LEN..self.start + self.len
    }
}

impl VxlanConfig {
    /// Encapsulates, in place, the inner Ethernet frame at
    /// `buf[headroom..headroom + inner_len]` for `vtep`.
    ///
    /// Writes the outer Ethernet (to `vtep.mac` from `local_mac`), IPv4 (`local_ip` →
    /// `vtep.ip`, identification `ip_ident`, DF and TTL as configured, header checksum),
    /// UDP (source port [`inner_flow_hash`] mapped into `src_ports`, destination
    /// `dst_port`, checksum zero or computed) and VXLAN (I flag, `vni`) headers into
    /// `buf[headroom - 50..headroom]` and returns where the outer frame lies. The inner
    /// frame is not touched. On error nothing is written.
    ///
    /// `ip_ident` is the caller's (e.g. a per-datapath counter): with DF set it only
    /// has to be unique enough for duplicate detection (RFC 6864).
    pub fn encapsulate(
        &self,
        vtep: &Vtep,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
        ip_ident: u16,
    ) -> Result<Encapsulated, EncapError> {
        let inner = headroom
            .checked_add(inner_len)
            .and_then(|end| buf.get(headroom..end))
            .unwrap_or(&[]);
        let entropy = inner_flow_hash(inner, self.flow_seed);
        self.encapsulate_with_hash(vtep, buf, headroom, inner_len, ip_ident, entropy)
    }

    /// [`VxlanConfig::encapsulate`] with the entropy hash supplied by the caller, who
    /// must pass [`inner_flow_hash`]`(inner frame, self.flow_seed)`: a datapath that has
    /// already parsed the inner frame's flow computes it from its key (for a TCP, UDP
    /// or SCTP packet that is not a fragment, `FlowKey::hash(flow_seed)` of the frame's
    /// tuple with zone 0) instead of reading the frame again.
    pub fn encapsulate_with_hash(
        &self,
        vtep: &Vtep,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
        ip_ident: u16,
        entropy: u64,
    ) -> Result<Encapsulated, EncapError> {
        let checksum = self.udp_checksum;
        self.encapsulate_as(
            vtep, buf, headroom, inner_len, inner_len, checksum, ip_ident, entropy,
        )
    }

    /// Encapsulates a GSO super-frame once, for a sender that cuts it into datagrams
    /// afterwards (as the kernel's VXLAN device does with GSO): as
    /// [`VxlanConfig::encapsulate_with_hash`], except that the outer headers describe
    /// its first datagram — an inner frame of `segment_len` bytes (inner headers plus
    /// one segment's payload), which must fit the underlay MTU — and carry no UDP
    /// checksum, since each datagram's is computed when it is cut. The returned
    /// outer frame spans the whole super-frame.
    #[allow(clippy::too_many_arguments)]
    pub fn encapsulate_super_frame(
        &self,
        vtep: &Vtep,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
        segment_len: usize,
        ip_ident: u16,
        entropy: u64,
    ) -> Result<Encapsulated, EncapError> {
        let segment_len = segment_len.min(inner_len);
        self.encapsulate_as(
            vtep,
            buf,
            headroom,
            inner_len,
            segment_len,
            false,
            ip_ident,
            entropy,
        )
    }

    /// Writes the outer headers in front of the inner frame of `inner_len` bytes,
    /// with lengths for an inner frame of `wire_len` bytes (the frame itself, or the
    /// first datagram of a super-frame), and the UDP checksum if `udp_checksum`.
    #[allow(clippy::too_many_arguments)]
    fn encapsulate_as(
        &self,
        vtep: &Vtep,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
        wire_len: usize,
        udp_checksum: bool,
        ip_ident: u16,
        entropy: u64,
    ) -> Result<Encapsulated, EncapError> {
        let end = headroom
            .checked_add(inner_len)
            .filter(|&end| end <= buf.len())
            .ok_or(EncapError::InnerOutOfBounds)?;
        let start =
            headroom
                .checked_sub(IPV4_OVERHEAD)
                .ok_or(EncapError::InsufficientHeadroom {
                    needed: IPV4_OVERHEAD,
                    available: headroom,
                })?;
        if inner_len < ETHERNET_HEADER_LEN {
            return Err(EncapError::InnerTooShort);
        }
        let (src, dst) = match (self.local_ip, vtep.ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (s, d),
            (IpAddr::V6(_), IpAddr::V6(_)) => return Err(EncapError::OuterIpv6Unsupported),
            _ => return Err(EncapError::AddressFamilyMismatch),
        };
        let ip_len = IPV4_OVERHEAD - ETHERNET_HEADER_LEN + wire_len;
        if ip_len > usize::from(self.underlay_mtu) {
            return Err(EncapError::MtuExceeded {
                outer_len: ip_len,
                mtu: self.underlay_mtu,
            });
        }
        // ip_len <= underlay_mtu <= u16::MAX, so these lengths fit in u16.
        let ip_len = ip_len as u16;
        let udp_len = ip_len - 20;

        let (head, inner) = buf[start..end].split_at_mut(IPV4_OVERHEAD);
        let src_port = self.src_ports.pick(entropy);
        let (src, dst) = (src.octets(), dst.octets());
        let flags: u16 = if self.dont_fragment { 0x4000 } else { 0 };
        let ttl_proto = u16::from(self.ttl) << 8 | 17;

        // The IPv4 header checksum from its 16-bit words (the rest are zero).
        let ip_sum = 0x4500
            + u64::from(ip_len)
            + u64::from(ip_ident)
            + u64::from(flags)
            + u64::from(ttl_proto)
            + u64::from(u16::from_be_bytes([src[0], src[1]]))
            + u64::from(u16::from_be_bytes([src[2], src[3]]))
            + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
            + u64::from(u16::from_be_bytes([dst[2], dst[3]]));
        let ip_checksum = !checksum::fold(ip_sum);

        let m = vtep.mac.0;
        let l = self.local_mac.0;
        let [ttl, _] = ttl_proto.to_be_bytes();
        let [il0, il1] = ip_len.to_be_bytes();
        let [id0, id1] = ip_ident.to_be_bytes();
        let [fl0, _] = flags.to_be_bytes();
        let [ic0, ic1] = ip_checksum.to_be_bytes();
        let [sp0, sp1] = src_port.to_be_bytes();
        let [dp0, dp1] = self.dst_port.to_be_bytes();
        let [ul0, ul1] = udp_len.to_be_bytes();
        let [_, v0, v1, v2] = self.vni.get().to_be_bytes();
        #[rustfmt::skip]
        let header: [u8; IPV4_OVERHEAD] = [
            // Ethernet: destination, source, EtherType IPv4.
            m[0], m[1], m[2], m[3], m[4], m[5],
            l[0], l[1], l[2], l[3], l[4], l[5],
            0x08, 0x00,
            // IPv4: version 4 / IHL 5, DSCP/ECN 0, total length, identification,
            // flags (DF) / fragment offset 0, TTL, protocol UDP, checksum, addresses.
            0x45, 0x00, il0, il1, id0, id1, fl0, 0x00, ttl, 17, ic0, ic1,
            src[0], src[1], src[2], src[3],
            dst[0], dst[1], dst[2], dst[3],
            // UDP: ports, length, checksum (filled below if enabled).
            sp0, sp1, dp0, dp1, ul0, ul1, 0, 0,
            // VXLAN (RFC 7348 §5): flags I, reserved, VNI, reserved.
            VXLAN_FLAG_I, 0, 0, 0, v0, v1, v2, 0,
        ];
        head.copy_from_slice(&header);

        if udp_checksum {
            let acc = checksum::pseudo_v4(src, dst, 17, udp_len)
                + checksum::sum(&header[34..])
                + checksum::sum(inner);
            // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
            let c = match !checksum::fold(acc) {
                0 => 0xffff,
                c => c,
            };
            head[40..42].copy_from_slice(&c.to_be_bytes());
        }

        Ok(Encapsulated {
            start,
            len: IPV4_OVERHEAD + inner_len,
            src_port,
        })
    }
}

/// The entropy hash of an inner Ethernet frame, from which the outer UDP source port is
/// picked ([`PortRange::pick`](super::PortRange::pick)). Part of the cross-node
/// contract (**podwire VXLAN entropy v1**):
///
/// * If the frame is IPv4 (EtherType 0x0800, version 4, IHL ≥ 5, header complete) or
///   IPv6 (EtherType 0x86DD, version 6, 40-byte header complete), the result is
///   [`FlowKey::hash`]`(seed)` of the key `{src, dst, protocol, src_port, dst_port,
///   zone: 0}`, where the ports are: TCP, UDP and SCTP — the two port fields (if the
///   first four L4 bytes are present); ICMP echo request/reply (types 8/0) and ICMPv6
///   echo (128/129) — the identifier in both; anything else — 0. An IPv4 fragment (MF
///   set or offset ≠ 0) uses ports 0 so all fragments of a datagram take the same
///   path. IPv6 extension headers are not walked: the protocol is the first next-header
///   value and the ports are 0.
/// * Otherwise (ARP, VLAN-tagged, malformed IP) with `d` the destination MAC and `s` the
///   source MAC as big-endian 48-bit integers and `t` the EtherType, the result is
///   `fmix64(fmix64(seed ^ 0x9e37_79b9_7f4a_7c15 ^ d) ^ (s << 16 | t))`.
/// * A frame shorter than an Ethernet header hashes as if padded with zeros.
pub fn inner_flow_hash(frame: &[u8], seed: u64) -> u64 {
    let mut eth = [0u8; ETHERNET_HEADER_LEN];
    for (e, f) in eth.iter_mut().zip(frame) {
        *e = *f;
    }
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let l3 = frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]);
    let key = match ethertype {
        0x0800 => ipv4_flow_key(l3),
        0x86dd => ipv6_flow_key(l3),
        _ => None,
    };
    match key {
        Some(key) => key.hash(seed),
        None => {
            let d = u64::from_be_bytes([0, 0, eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
            let s = u64::from_be_bytes([0, 0, eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
            fmix64(fmix64(seed ^ 0x9e37_79b9_7f4a_7c15 ^ d) ^ (s << 16 | u64::from(ethertype)))
        }
    }
}

/// The flow key of an IPv4 packet (see [`inner_flow_hash`]).
fn ipv4_flow_key(p: &[u8]) -> Option<FlowKey> {
    let hdr: &[u8; 20] = p.get(..20)?.try_into().ok()?;
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let l4 = p.get(ihl..)?;
    let protocol = hdr[9];
    let fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0;
    let (src_port, dst_port) = if fragment {
        (0, 0)
    } else {
        ports(protocol, l4, PROTO_ICMP, [8, 0])
    };
    Some(FlowKey {
        src: IpAddr::V4(Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15])),
        dst: IpAddr::V4(Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19])),
        src_port,
        dst_port,
        protocol,
        zone: 0,
    })
}

/// The flow key of an IPv6 packet (see [`inner_flow_hash`]).
fn ipv6_flow_key(p: &[u8]) -> Option<FlowKey> {
    let hdr: &[u8; 40] = p.get(..40)?.try_into().ok()?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = hdr[8..24].try_into().ok()?;
    let dst: [u8; 16] = hdr[24..40].try_into().ok()?;
    let protocol = hdr[6];
    let (src_port, dst_port) = ports(protocol, &p[40..], PROTO_ICMPV6, [128, 129]);
    Some(FlowKey {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        src_port,
        dst_port,
        protocol,
        zone: 0,
    })
}

/// The port pair of an L4 header (see [`inner_flow_hash`]); `icmp` is the ICMP protocol
/// number of this IP version and `echo` its echo request/reply types.
fn ports(protocol: u8, l4: &[u8], icmp: u8, echo: [u8; 2]) -> (u16, u16) {
    match (protocol, l4) {
        (PROTO_TCP | PROTO_UDP | PROTO_SCTP, [a, b, c, d, ..]) => {
            (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
        }
        (p, [t, _, _, _, i0, i1, ..]) if p == icmp && echo.contains(t) => {
            let id = u16::from_be_bytes([*i0, *i1]);
            (id, id)
        }
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::wire::EthernetAddress;

    fn config() -> VxlanConfig {
        VxlanConfig::new(
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            EthernetAddress([0xbe, 0xfe, 0xc3, 0xe1, 0x63, 0x65]),
        )
    }

    fn vtep() -> Vtep {
        Vtep {
            node: NodeId(2),
            ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            mac: EthernetAddress([0xf6, 0xe1, 0xcb, 0x9f, 0x2f, 0x16]),
        }
    }

    #[test]
    fn bounds_and_headroom_errors() {
        let c = config();
        let mut buf = [0u8; 100];
        assert_eq!(
            c.encapsulate(&vtep(), &mut buf, 49, 40, 0),
            Err(EncapError::InsufficientHeadroom {
                needed: 50,
                available: 49
            })
        );
        assert_eq!(
            c.encapsulate(&vtep(), &mut buf, 50, 51, 0),
            Err(EncapError::InnerOutOfBounds)
        );
        assert_eq!(
            c.encapsulate(&vtep(), &mut buf, usize::MAX, 2, 0),
            Err(EncapError::InnerOutOfBounds)
        );
        assert_eq!(
            c.encapsulate(&vtep(), &mut buf, 50, 13, 0),
            Err(EncapError::InnerTooShort)
        );
        assert_eq!(buf, [0u8; 100], "errors write nothing");
        let ok = c.encapsulate(&vtep(), &mut buf, 50, 50, 0).unwrap();
        assert_eq!(ok.frame(), 0..100);
        assert_eq!(ok.udp_payload(), 42..100);
    }

    #[test]
    fn mtu_is_enforced_exactly() {
        let mut c = config();
        c.underlay_mtu = 1500;
        let mut buf = [0u8; 1600];
        assert!(c.encapsulate(&vtep(), &mut buf, 50, 1464, 0).is_ok());
        assert_eq!(
            c.encapsulate(&vtep(), &mut buf, 50, 1465, 0),
            Err(EncapError::MtuExceeded {
                outer_len: 1501,
                mtu: 1500
            })
        );
    }

    #[test]
    fn address_family_errors() {
        let mut c = config();
        let mut v = vtep();
        let mut buf = [0u8; 100];
        v.ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            c.encapsulate(&v, &mut buf, 50, 50, 0),
            Err(EncapError::AddressFamilyMismatch)
        );
        c.local_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            c.encapsulate(&v, &mut buf, 50, 50, 0),
            Err(EncapError::OuterIpv6Unsupported)
        );
    }

    fn ipv4_frame(protocol: u8, l4: &[u8], flags_frag: u16) -> std::vec::Vec<u8> {
        let mut f = std::vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[20..22].copy_from_slice(&flags_frag.to_be_bytes());
        f[23] = protocol;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn flow_hash_uses_the_flow_key() {
        let udp = ipv4_frame(PROTO_UDP, &[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0], 0x4000);
        let key = FlowKey {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            src_port: 12345,
            dst_port: 53,
            protocol: PROTO_UDP,
            zone: 0,
        };
        assert_eq!(inner_flow_hash(&udp, 7), key.hash(7));

        let ping = ipv4_frame(PROTO_ICMP, &[8, 0, 0, 0, 0x32, 0x91, 0, 1], 0);
        let icmp_key = FlowKey {
            src_port: 0x3291,
            dst_port: 0x3291,
            protocol: PROTO_ICMP,
            ..key
        };
        assert_eq!(inner_flow_hash(&ping, 7), icmp_key.hash(7));

        // A fragment hashes without ports; so does an unknown protocol.
        let frag = ipv4_frame(PROTO_UDP, &[0x30, 0x39, 0x00, 0x35], 0x2000);
        let no_ports = FlowKey {
            src_port: 0,
            dst_port: 0,
            ..key
        };
        assert_eq!(inner_flow_hash(&frag, 7), no_ports.hash(7));
        let gre = ipv4_frame(47, &[1, 2, 3, 4], 0);
        assert_eq!(
            inner_flow_hash(&gre, 7),
            FlowKey {
                protocol: 47,
                ..no_ports
            }
            .hash(7)
        );
    }

    #[test]
    fn flow_hash_ipv6() {
        let mut f = std::vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[20] = PROTO_TCP;
        f[14 + 8 + 15] = 1;
        f[14 + 24 + 15] = 2;
        f.extend_from_slice(&[0, 80, 0x9c, 0x40]);
        let key = FlowKey {
            src: IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)),
            dst: IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 2)),
            src_port: 80,
            dst_port: 40000,
            protocol: PROTO_TCP,
            zone: 0,
        };
        assert_eq!(inner_flow_hash(&f, 0), key.hash(0));
        f[20] = PROTO_ICMPV6;
        f.truncate(54);
        f.extend_from_slice(&[128, 0, 0, 0, 0x9c, 0x40, 0, 1]);
        let echo = FlowKey {
            src_port: 0x9c40,
            dst_port: 0x9c40,
            protocol: PROTO_ICMPV6,
            ..key
        };
        assert_eq!(inner_flow_hash(&f, 0), echo.hash(0));
    }

    #[test]
    fn flow_hash_l2_fallback_is_pinned() {
        // An ARP request from 02:00:00:00:00:01 to broadcast.
        let mut arp = [0u8; 42];
        arp[..6].copy_from_slice(&[0xff; 6]);
        arp[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let d = 0xffff_ffff_ffffu64;
        let s = 0x0200_0000_0001u64;
        let expected = fmix64(fmix64(0x9e37_79b9_7f4a_7c15 ^ d) ^ (s << 16 | 0x0806));
        assert_eq!(inner_flow_hash(&arp, 0), expected);
        assert_eq!(inner_flow_hash(&arp, 0), 0x2536_c810_12ce_dad2);
        // Malformed IPv4 (bad version) falls back too; a runt frame is zero-padded.
        let mut bad = ipv4_frame(PROTO_UDP, &[0; 8], 0);
        bad[14] = 0x55;
        let mut hdr = [0u8; 14];
        hdr.copy_from_slice(&bad[..14]);
        assert_eq!(inner_flow_hash(&bad, 3), inner_flow_hash(&hdr, 3));
        assert_eq!(inner_flow_hash(&hdr[..5], 3), {
            let mut z = [0u8; 14];
            z[..5].copy_from_slice(&hdr[..5]);
            inner_flow_hash(&z, 3)
        });
    }
}

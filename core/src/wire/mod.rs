//! Wire formats.
//!
//! Design note: Ethernet, ARP, IPv4/IPv6, UDP, TCP and ICMP views come from
//! `smoltcp::wire` — the same code embassy-net runs on the firmware — and are
//! re-exported here so the rest of the core names one module. Formats smoltcp lacks
//! (VXLAN) are written beside it in the same `Packet<T: AsRef<[u8]>>` / `Repr` style:
//! a zero-copy checked view plus a parsed high-level representation with `parse` and
//! `emit`.

pub use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Cidr,
    Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, TcpPacket, UdpPacket,
};

pub mod vxlan;
pub use self::vxlan::{
    Error as VxlanError, Packet as VxlanPacket, Repr as VxlanRepr, Vni,
    HEADER_LEN as VXLAN_HEADER_LEN,
};

//! Why a frame was dropped, and how often.
//!
//! Design note: "explain every packet's fate" starts here. Every path in the datapath
//! that discards a frame names one [`DropReason`]; the datapath counts each reason in a
//! fixed array (no allocation, one increment per drop) and reports it in the flow event,
//! so a shell can export the counters as metrics and show a dropped flow with the
//! reason that stopped it. The reasons are flat (not nested error enums) so each has
//! one counter and one stable name.

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $text:literal,)*) => {
        /// The reason a frame was discarded.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// The number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// A stable, snake_case name for metrics and logs.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$name => $text,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The frame is shorter than its headers say.
    Truncated => "truncated",
    /// An EtherType the datapath does not forward.
    UnsupportedEtherType => "unsupported_ethertype",
    /// A malformed IPv4 header (version, header length, total length).
    MalformedIpv4 => "malformed_ipv4",
    /// An IPv4 header checksum that does not verify.
    BadIpv4Checksum => "bad_ipv4_checksum",
    /// A malformed ARP packet.
    MalformedArp => "malformed_arp",
    /// An ARP request for an address the datapath does not answer for.
    ArpNotAnswered => "arp_not_answered",
    /// A malformed TCP, UDP or ICMP header.
    MalformedTransport => "malformed_transport",
    /// A non-first IPv4 fragment (its ports are unknown, so it cannot be tracked).
    Fragment => "fragment",
    /// The frame came from a port the datapath does not know.
    UnknownPort => "unknown_port",
    /// A pod sent from a MAC address that is not its own.
    SpoofedMac => "spoofed_mac",
    /// A pod sent from an IP address that is not its own.
    SpoofedIp => "spoofed_ip",
    /// No route matches the destination.
    NoRoute => "no_route",
    /// The destination matched a blackhole route.
    Blackhole => "blackhole",
    /// The route points at a node with no VTEP.
    UnknownNode => "unknown_node",
    /// A frame decapsulated from the overlay is not for a local pod or the host.
    NotLocal => "not_local",
    /// The buffer has too little headroom for the outer headers.
    NoHeadroom => "no_headroom",
    /// The encapsulated frame would exceed the underlay MTU (VXLAN must not fragment).
    ExceedsUnderlayMtu => "exceeds_underlay_mtu",
    /// The TTL ran out (an ICMP time exceeded is sent where possible).
    TtlExceeded => "ttl_exceeded",
    /// A malformed VXLAN packet or outer header.
    MalformedVxlan => "malformed_vxlan",
    /// A VXLAN packet for a VNI this node does not serve.
    UnknownVni => "unknown_vni",
    /// A VXLAN packet from an underlay address that is not a known node.
    UnknownVtep => "unknown_vtep",
    /// A VXLAN packet to a UDP port other than the configured one.
    WrongVxlanPort => "wrong_vxlan_port",
    /// Egress NetworkPolicy of the source pod denied the connection.
    PolicyDeniedEgress => "policy_denied_egress",
    /// Ingress NetworkPolicy of the destination pod denied the connection.
    PolicyDeniedIngress => "policy_denied_ingress",
    /// A service with no usable backend (a reject is sent where possible).
    NoServiceBackend => "no_service_backend",
    /// The connection-tracking table is full and nothing could be evicted.
    ConntrackFull => "conntrack_full",
    /// A NAT rewrite could not be applied to the packet.
    NatFailed => "nat_failed",
    /// An ICMP error about a packet of no tracked connection.
    UntrackedIcmpError => "untracked_icmp_error",
    /// An offloaded frame (a GSO super-frame or a partial checksum, see
    /// [`FrameMeta`](crate::datapath::FrameMeta)) routed where offloads do not reach
    /// (the overlay): nothing was changed, and the shell is to segment it or complete
    /// its checksum in software and submit the results as plain frames.
    NeedsSoftwareOffload => "needs_software_offload",
}

/// One counter per [`DropReason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::COUNT],
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters {
            counts: [0; DropReason::COUNT],
        }
    }
}

impl DropCounters {
    /// Counts one drop.
    pub fn count(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason as usize];
        *slot = slot.wrapping_add(1);
    }

    /// The number of drops for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    /// Every reason with its count, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let mut c = DropCounters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            for _ in 0..=i {
                c.count(*r);
            }
        }
        for (i, (r, n)) in c.iter().enumerate() {
            assert_eq!(n, i as u64 + 1, "{}", r.name());
        }
        let mut names: std::vec::Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}

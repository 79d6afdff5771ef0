//! What the datapath tells its shell to do with a frame.
//!
//! Design note: the core never performs I/O, so the result of processing a frame is a
//! plain value. Frames are processed in place in a caller buffer; the action names the
//! part of that buffer to send (a [`Span`]), which may start before the input frame
//! (encapsulation writes outer headers into the headroom) or be a reply written over
//! it. Two underlay styles are served by one action: a shell with a raw underlay device
//! (firmware, AF_XDP) sends the whole outer Ethernet frame, while a shell that uses a
//! UDP socket (the Linux agent) sends only the UDP payload to `remote:remote_port` and
//! lets the kernel add the outer IP and UDP headers.

use core::net::IpAddr;

use crate::datapath::DropReason;
use crate::ids::{NodeId, PortId};

/// A part of the caller's buffer: `buf[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Span {
    /// Offset of the first byte.
    pub start: usize,
    /// Number of bytes.
    pub len: usize,
}

impl Span {
    /// The span as a range, for slicing the buffer. The end saturates at `usize::MAX`
    /// (a span that does not fit the address space is out of any buffer's bounds, so
    /// `buf.get(span.range())` is `None` rather than an overflow).
    pub fn range(&self) -> core::ops::Range<usize> {
        self.start..self.start.saturating_add(self.len)
    }
}

/// Where a frame entered the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Ingress {
    /// An Ethernet frame from a local port (a pod, the host port, or a raw underlay
    /// device carrying outer Ethernet/IP/UDP/VXLAN headers).
    Port(PortId),
    /// The payload of a UDP datagram received on the VXLAN socket (VXLAN header plus
    /// inner Ethernet frame), with the underlay address it came from.
    Underlay {
        /// The sender's underlay address.
        source: IpAddr,
        /// The sender's UDP source port.
        source_port: u16,
    },
}

/// A frame encapsulated for a remote node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Encapsulated {
    /// The destination node.
    pub node: NodeId,
    /// The node's underlay (VTEP) address.
    pub remote: IpAddr,
    /// The destination UDP port (the VXLAN port).
    pub remote_port: u16,
    /// The UDP source port chosen from the inner flow's hash.
    pub source_port: u16,
    /// The complete outer Ethernet frame, for raw underlay devices.
    pub outer_frame: Span,
    /// The UDP payload (VXLAN header and inner frame), for UDP-socket shells.
    pub udp_payload: Span,
}

/// What to do with a processed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Send `frame` out of local `port`.
    Deliver {
        /// The egress port.
        port: PortId,
        /// The frame to send.
        frame: Span,
    },
    /// Send the encapsulated frame to a remote node.
    Encap(Encapsulated),
    /// Send `frame` back where the input came from (an ARP reply, an ICMP error).
    Reply {
        /// The reply frame.
        frame: Span,
    },
    /// Discard the frame; the reason has been counted.
    Drop(DropReason),
}

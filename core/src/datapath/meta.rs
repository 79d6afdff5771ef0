//! What a shell knows about a frame beyond its bytes: its offload state.
//!
//! Design note: a Linux TAP with offloads (or a NIC with LRO/GRO, or a virtio device)
//! hands over TCP super-frames of up to 64 KiB that the *next* hop will cut into
//! segments (GSO), whose L4 checksum field holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`). Neither fact is in the bytes, so the shell passes them in
//! with [`Datapath::process_with`](crate::datapath::Datapath::process_with). The core
//! then
//! - accepts the frame whatever its length (the IPv4 total length must still be the
//!   real length; a total length of 0, as Linux's BIG TCP uses beyond 64 KiB, is
//!   refused as malformed),
//! - applies NAT with the partial-checksum rule (only pseudo-header changes adjust
//!   the field, as an *uncomplemented* sum: see
//!   [`ChecksumMode::Partial`](crate::nat::ChecksumMode::Partial)),
//! - measures a GSO frame against the underlay MTU by its segments (headers +
//!   `gso_size`), not by its length, and
//! - encapsulates an offloaded frame only for a shell that cuts the result into
//!   datagrams ([`Datapath::set_overlay_gso`](crate::datapath::Datapath::set_overlay_gso)):
//!   a VXLAN datagram carries one complete wire-sized frame. Otherwise, when an
//!   offloaded frame is routed to the overlay, the datapath returns
//!   `Drop(NeedsSoftwareOffload)` *before changing anything* (no connection tracking
//!   update, no rewrite); the shell then segments it or completes its checksum in
//!   software and submits the results as plain frames.
//!
//! Delivery to a local port keeps the offload: the frame's layout does not change, so
//! the shell writes it out with the same offload description (the checksum start and
//! offset relative to the frame start stay valid).

/// The offload state of a frame, from the device it was read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameMeta {
    /// `Some(n)`: a GSO super-frame whose payload is to be cut into segments of at most
    /// `n` bytes (the TCP MSS, or the UDP payload per datagram). `None`: a frame as it
    /// is on the wire.
    pub gso_size: Option<u16>,
    /// The L4 (TCP/UDP) checksum field holds the one's complement sum of the
    /// pseudo-header only, not complemented; the rest is summed by the device that
    /// finally transmits the frame (Linux `CHECKSUM_PARTIAL`).
    pub checksum_partial: bool,
}

impl FrameMeta {
    /// A plain frame: wire-sized, complete checksums.
    pub const PLAIN: FrameMeta = FrameMeta {
        gso_size: None,
        checksum_partial: false,
    };

    /// Whether the frame relies on an offload (segmentation or checksum) downstream.
    pub fn is_offloaded(&self) -> bool {
        self.gso_size.is_some() || self.checksum_partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_the_default_and_not_offloaded() {
        assert_eq!(FrameMeta::default(), FrameMeta::PLAIN);
        assert!(!FrameMeta::PLAIN.is_offloaded());
        let gso = FrameMeta {
            gso_size: Some(1448),
            ..FrameMeta::PLAIN
        };
        assert!(gso.is_offloaded());
        let partial = FrameMeta {
            checksum_partial: true,
            ..FrameMeta::PLAIN
        };
        assert!(partial.is_offloaded());
    }
}

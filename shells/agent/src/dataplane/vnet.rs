//! The `virtio_net_hdr` that prefixes every frame of a TAP opened with `IFF_VNET_HDR`.
//!
//! Design note: with offloads enabled (`TUNSETOFFLOAD`), the kernel hands a TAP reader
//! TCP segments of up to 64 KiB whose L4 checksum is only *partial* (the field holds
//! the pseudo-header sum; the rest is summed by whoever finally transmits), and it
//! accepts the same from a TAP writer. This header is how both sides say so: `flags`
//! (`NEEDS_CSUM`: checksum from `csum_start`, stored at `csum_start + csum_offset`),
//! `gso_type` (TCPv4, TCPv6, UDP L4, with the ECN bit) and `gso_size` (the payload bytes
//! per segment). The agent reads it, tells the core what it means
//! ([`FrameMeta`]), and writes it back unchanged in front of the delivered frame: the
//! datapath rewrites addresses and MACs in place, never the header layout, so offsets
//! relative to the frame start stay valid. Fields are little-endian (the TAP is in
//! the host's native byte order, and this agent runs on little-endian hosts; the
//! `TUNSETVNETLE` default); the 12-byte form includes `num_buffers`, which is
//! ignored on read and written as 0.

use podwire_core::datapath::FrameMeta;

/// The size of the header (with `num_buffers`), as set with `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 12;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified (receive side).
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, deprecated; never produced by the kernel today).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: a bit or-ed into the GSO type (CWR on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// A decoded `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` type, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers (Ethernet to L4) of a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO frame.
    pub gso_size: u16,
    /// With `F_NEEDS_CSUM`: where checksumming starts, from the frame start.
    pub csum_start: u16,
    /// With `F_NEEDS_CSUM`: where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// No offload: a complete frame with complete checksums.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the first [`VNET_HDR_LEN`] bytes of `b` (`None` if shorter).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Encodes the header (`num_buffers` 0).
    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether this is a GSO super-frame.
    pub fn is_gso(&self) -> bool {
        self.gso() != GSO_NONE
    }

    /// Whether the L4 checksum is partial.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Whether the frame needs anything done for it (segmentation or a checksum).
    pub fn is_offloaded(&self) -> bool {
        self.is_gso() || self.needs_csum()
    }

    /// What the core must know about the frame.
    pub fn meta(&self) -> FrameMeta {
        FrameMeta {
            gso_size: if self.is_gso() && self.gso_size > 0 {
                Some(self.gso_size)
            } else {
                None
            },
            checksum_partial: self.needs_csum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_vector_of_a_tso4_frame() {
        // What a 6.x kernel hands over for a 64 KiB TCPv4 segment on a TAP:
        // NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1398, csum_start 34, csum_offset 16.
        let bytes = [1, 1, 66, 0, 0x76, 0x05, 34, 0, 16, 0, 0, 0];
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1398,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert_eq!(h.emit(), bytes);
        assert!(h.is_gso() && h.needs_csum() && h.is_offloaded());
        assert_eq!(
            h.meta(),
            FrameMeta {
                gso_size: Some(1398),
                checksum_partial: true
            }
        );
    }

    #[test]
    fn plain_and_partial_only_frames() {
        let none = VnetHdr::parse(&[0; 12]).unwrap();
        assert_eq!(none, VnetHdr::NONE);
        assert!(!none.is_offloaded());
        assert_eq!(none.meta(), FrameMeta::default());
        let csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::NONE
        };
        assert!(csum.is_offloaded() && !csum.is_gso());
        assert_eq!(csum.meta().gso_size, None);
        // The ECN bit does not hide the type; DATA_VALID alone is not an offload.
        let ecn = VnetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            gso_size: 1448,
            ..VnetHdr::NONE
        };
        assert_eq!(ecn.gso(), GSO_TCPV4);
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::NONE
        };
        assert!(!valid.is_offloaded());
        assert!(VnetHdr::parse(&[0; 11]).is_none());
    }

    #[test]
    fn parse_emit_round_trip() {
        for seed in 0u32..2000 {
            let x = seed.wrapping_mul(2_654_435_761);
            let h = VnetHdr {
                flags: x as u8,
                gso_type: (x >> 8) as u8,
                hdr_len: (x >> 3) as u16,
                gso_size: (x >> 7) as u16,
                csum_start: (x >> 11) as u16,
                csum_offset: (x >> 13) as u16,
            };
            assert_eq!(VnetHdr::parse(&h.emit()), Some(h));
        }
    }
}

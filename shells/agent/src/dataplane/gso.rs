//! Software offload: completing partial checksums and cutting GSO super-frames into
//! wire-sized segments, for frames that must leave where offloads do not reach.
//!
//! Design note: with TAP offloads on, a pod hands the agent 64 KiB TCP segments with
//! partial checksums. Between local TAPs that costs nothing — the frame is written to
//! the destination TAP with the same `virtio_net_hdr` and the receiving kernel takes it
//! as one GSO packet. The overlay is different: a UDP datagram carries one inner frame
//! of at most the pod MTU, with a complete checksum, so the shell does here what the
//! kernel does for a device without offloads. [`complete_checksum`] sums the L4 part
//! in place; [`segment_into`] writes each segment (headers + `gso_size` payload bytes)
//! where a [`SegmentSink`] says, fixing the IPv4 total length, identification
//! (incremented per segment, as Linux does) and header checksum, the TCP sequence
//! number and flags (FIN and PSH only on the last segment, CWR only on the first) or
//! the UDP length, and computing the L4 checksum from scratch.
//!
//! Two callers. The agent's core encapsulates a super-frame once
//! (`Datapath::set_overlay_gso`) and the underlay send batch cuts it with a sink that
//! writes each segment behind the VXLAN header straight into the batch
//! (`udp::SendBatch::push_segments`) — one pass over the payload. A forwarder without
//! that hands offloaded frames back (`NeedsSoftwareOffload`, nothing changed), and
//! [`segment`] writes each segment into a scratch buffer with headroom, to go through
//! the datapath again as an ordinary frame. Only IPv4 is handled: the core forwards
//! nothing else.

use podwire_core::checksum;
use podwire_core::datapath::Span;

use super::forward::HEADROOM;
use super::vnet::{VnetHdr, GSO_TCPV4, GSO_UDP_L4};

const ETHERNET_HEADER_LEN: usize = 14;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame could not be handled in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftError {
    /// Headers or offsets are out of bounds or inconsistent.
    Malformed,
    /// A GSO type or protocol this module does not segment (IPv6, UFO).
    Unsupported,
    /// A segment does not fit where it is to be written.
    TooLarge,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The end of the IPv4 packet of an Ethernet frame (padding excluded), if it is one.
fn ipv4_end(frame: &[u8]) -> Option<usize> {
    if frame.len() < ETHERNET_HEADER_LEN + 20 || be16(frame, 12) != 0x0800 {
        return None;
    }
    let total = usize::from(be16(frame, ETHERNET_HEADER_LEN + 2));
    let end = ETHERNET_HEADER_LEN + total;
    (end <= frame.len()).then_some(end)
}

/// Completes the partial L4 checksum of `frame` (`hdr` has `F_NEEDS_CSUM`): the one's
/// complement sum from `csum_start` to the end of the IP packet — the field holds the
/// pseudo-header sum — complemented and stored at `csum_start + csum_offset`. A UDP
/// result of 0 is written as 0xFFFF.
pub fn complete_checksum(frame: &mut [u8], hdr: &VnetHdr) -> Result<(), SoftError> {
    let end = ipv4_end(frame).unwrap_or(frame.len());
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start < ETHERNET_HEADER_LEN || at + 2 > end {
        return Err(SoftError::Malformed);
    }
    let mut c = !checksum::sum(&frame[start..end]);
    if c == 0 && frame.get(ETHERNET_HEADER_LEN + 9) == Some(&PROTO_UDP) {
        c = 0xffff;
    }
    put16(frame, at, c);
    Ok(())
}

/// The one's complement sum of the IPv4 pseudo-header.
pub(crate) fn pseudo_v4(ip: &[u8], protocol: u8, l4_len: u16) -> u16 {
    let mut s = checksum::sum(&ip[12..20]);
    s = checksum::add(s, u16::from(protocol));
    checksum::add(s, l4_len)
}

/// Where [`segment_into`] writes segments.
pub trait SegmentSink {
    /// Room for the next segment of exactly `len` bytes; `None` if there is none.
    fn next(&mut self, len: usize) -> Option<&mut [u8]>;
    /// The segment written into the last room is complete.
    fn done(&mut self);
}

/// A sink that writes each segment to a scratch buffer at [`HEADROOM`] and hands it
/// to a function with its span (overwritten by the next).
struct Scratch<'a, F: FnMut(&mut [u8], Span)> {
    buf: &'a mut [u8],
    len: usize,
    emit: F,
}

impl<F: FnMut(&mut [u8], Span)> SegmentSink for Scratch<'_, F> {
    fn next(&mut self, len: usize) -> Option<&mut [u8]> {
        self.len = len;
        self.buf.get_mut(HEADROOM..HEADROOM + len)
    }

    fn done(&mut self) {
        let span = Span {
            start: HEADROOM,
            len: self.len,
        };
        (self.emit)(self.buf, span);
    }
}

/// Cuts the GSO super-frame `frame` (TCPv4 or UDPv4 L4 segmentation, per `hdr`) into
/// segments of at most `hdr.gso_size` payload bytes, with complete checksums. Each
/// segment is written to `scratch` at [`HEADROOM`] and handed to `emit` with its span
/// (overwritten by the next). Returns the number of segments.
pub fn segment(
    frame: &[u8],
    hdr: &VnetHdr,
    scratch: &mut [u8],
    emit: impl FnMut(&mut [u8], Span),
) -> Result<usize, SoftError> {
    let mut sink = Scratch {
        buf: scratch,
        len: 0,
        emit,
    };
    segment_into(frame, hdr, &mut sink)
}

/// [`segment`] into any [`SegmentSink`]: each segment (headers + at most
/// `hdr.gso_size` payload bytes) is written into the room the sink gives and then
/// announced with [`SegmentSink::done`]. Everything about the frame is checked before
/// the first segment is written; [`SoftError::TooLarge`] when the sink has no room.
pub fn segment_into<S: SegmentSink>(
    frame: &[u8],
    hdr: &VnetHdr,
    sink: &mut S,
) -> Result<usize, SoftError> {
    let end = ipv4_end(frame).ok_or(SoftError::Unsupported)?;
    let ip_at = ETHERNET_HEADER_LEN;
    let ihl = usize::from(frame[ip_at] & 0x0f) * 4;
    let l4 = ip_at + ihl;
    if frame[ip_at] >> 4 != 4 || ihl < 20 || l4 + 8 > end {
        return Err(SoftError::Malformed);
    }
    let protocol = frame[ip_at + 9];
    let l4_header = match (hdr.gso(), protocol) {
        (GSO_TCPV4, PROTO_TCP) => {
            if l4 + 20 > end {
                return Err(SoftError::Malformed);
            }
            match usize::from(frame[l4 + 12] >> 4) * 4 {
                doff if doff >= 20 => doff,
                _ => return Err(SoftError::Malformed),
            }
        }
        (GSO_UDP_L4, PROTO_UDP) => 8,
        _ => return Err(SoftError::Unsupported),
    };
    let headers = l4 + l4_header;
    let mss = usize::from(hdr.gso_size);
    if headers > end || mss == 0 {
        return Err(SoftError::Malformed);
    }
    let payload = &frame[headers..end];
    if payload.is_empty() {
        return Err(SoftError::Malformed);
    }
    let ident = be16(frame, ip_at + 4);
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let count = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = headers + chunk.len();
        let seg = sink.next(len).ok_or(SoftError::TooLarge)?;
        seg[..headers].copy_from_slice(&frame[..headers]);
        seg[headers..].copy_from_slice(chunk);
        // IPv4: total length, identification, header checksum.
        let l4_len = (l4_header + chunk.len()) as u16;
        put16(seg, ip_at + 2, (ihl as u16) + l4_len);
        put16(seg, ip_at + 4, ident.wrapping_add(i as u16));
        put16(seg, ip_at + 10, 0);
        let c = !checksum::sum(&seg[ip_at..l4]);
        put16(seg, ip_at + 10, c);
        let pseudo = pseudo_v4(&seg[ip_at..], protocol, l4_len);
        if protocol == PROTO_TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < count {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
            put16(seg, l4 + 16, 0);
            let c = !checksum::add(pseudo, checksum::sum(&seg[l4..]));
            put16(seg, l4 + 16, c);
        } else {
            put16(seg, l4 + 4, l4_len);
            put16(seg, l4 + 6, 0);
            let c = match !checksum::add(pseudo, checksum::sum(&seg[l4..])) {
                0 => 0xffff,
                c => c,
            };
            put16(seg, l4 + 6, c);
        }
        sink.done();
    }
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataplane::vnet::{F_NEEDS_CSUM, GSO_TCPV6};

    const SRC: [u8; 4] = [10, 244, 0, 2];
    const DST: [u8; 4] = [10, 244, 0, 3];

    /// An Ethernet/IPv4 frame around `l4` with a valid IPv4 header.
    fn ipv4(protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (20 + l4.len()) as u16;
        let t = total.to_be_bytes();
        f.extend_from_slice(&[0x45, 0, t[0], t[1], 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&DST);
        let c = !checksum::sum(&f[14..34]);
        put16(&mut f, 24, c);
        f.extend_from_slice(l4);
        f
    }

    /// A TCP segment whose checksum field holds the partial (pseudo-header) sum, as a
    /// kernel with TX checksum offload writes it.
    pub(crate) fn partial_tcp(payload: &[u8], flags: u8) -> (Vec<u8>, VnetHdr) {
        let mut tcp = vec![0u8; 20];
        put16(&mut tcp, 0, 40000);
        put16(&mut tcp, 2, 5201);
        tcp[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes()); // wraps
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        put16(&mut tcp, 14, 64240);
        tcp.extend_from_slice(payload);
        let mut f = ipv4(PROTO_TCP, &tcp);
        let p = pseudo_v4(&f[14..], PROTO_TCP, tcp.len() as u16);
        put16(&mut f, 34 + 16, p);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 16,
        };
        (f, hdr)
    }

    /// Whether the TCP or UDP checksum of an IPv4 frame verifies.
    pub(crate) fn l4_verifies(f: &[u8]) -> bool {
        let end = ipv4_end(f).unwrap();
        let p = pseudo_v4(&f[14..], f[23], (end - 34) as u16);
        checksum::add(p, checksum::sum(&f[34..end])) == 0xffff
    }

    #[test]
    fn partial_checksums_are_completed() {
        let (mut f, mut hdr) = partial_tcp(b"hello, partial world", 0x18);
        hdr.gso_type = 0;
        assert!(!l4_verifies(&f));
        complete_checksum(&mut f, &hdr).unwrap();
        assert!(l4_verifies(&f));
        // Out-of-bounds offsets are refused, not a panic.
        let bad = VnetHdr {
            csum_start: 60000,
            ..hdr
        };
        assert_eq!(complete_checksum(&mut f, &bad), Err(SoftError::Malformed));
    }

    #[test]
    fn tcp_super_frame_is_cut_into_valid_segments() {
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let (f, hdr) = partial_tcp(&payload, 0x18 | TCP_FIN | TCP_CWR);
        let mut scratch = vec![0u8; HEADROOM + 2000];
        let mut segs = Vec::new();
        let n = segment(&f, &hdr, &mut scratch, |b, s| {
            segs.push(b[s.range()].to_vec())
        })
        .unwrap();
        assert_eq!(n, 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(!checksum::sum(&s[14..34]), 0, "IPv4 checksum {i}");
            assert!(l4_verifies(s), "TCP checksum {i}");
            assert_eq!(usize::from(be16(s, 16)), s.len() - 14);
            assert_eq!(be16(s, 18), 0x1234u16.wrapping_add(i as u16));
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1000 * i as u32));
            let flags = s[47];
            assert_eq!(flags & TCP_FIN != 0, i == 2, "FIN only on the last");
            assert_eq!(flags & TCP_PSH != 0, i == 2, "PSH only on the last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(
            segs.iter().map(|s| s.len() - 54).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(joined, payload);
    }

    #[test]
    fn udp_super_frame_is_cut_into_datagrams() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut udp = vec![0u8; 8];
        put16(&mut udp, 0, 5000);
        put16(&mut udp, 2, 53);
        udp.extend_from_slice(&payload);
        let f = ipv4(PROTO_UDP, &udp);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 42,
            gso_size: 128,
            csum_start: 34,
            csum_offset: 6,
        };
        let mut scratch = vec![0u8; HEADROOM + 1000];
        let mut lens = Vec::new();
        segment(&f, &hdr, &mut scratch, |b, s| {
            let d = &b[s.range()];
            assert!(l4_verifies(d));
            assert_eq!(usize::from(be16(d, 38)), d.len() - 34);
            lens.push(d.len() - 42);
        })
        .unwrap();
        assert_eq!(lens, [128, 128, 44]);
    }

    #[test]
    fn refusals_name_the_fault() {
        let (f, hdr) = partial_tcp(&[1; 100], 0x10);
        let mut scratch = vec![0u8; HEADROOM + 2000];
        let v6 = VnetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        };
        assert_eq!(
            segment(&f, &v6, &mut scratch, |_, _| ()),
            Err(SoftError::Unsupported)
        );
        let zero = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            segment(&f, &zero, &mut scratch, |_, _| ()),
            Err(SoftError::Malformed)
        );
        let mut tiny = vec![0u8; HEADROOM + 60];
        assert_eq!(
            segment(&f, &hdr, &mut tiny, |_, _| ()),
            Err(SoftError::TooLarge)
        );
        // Truncated and garbage frames never panic.
        for cut in 0..f.len() {
            let _ = segment(&f[..cut], &hdr, &mut scratch, |_, _| ());
            let mut g = f[..cut].to_vec();
            let _ = complete_checksum(&mut g, &hdr);
        }
        let mut odd = f.clone();
        odd[46] = 0xf0; // data offset 60 > what is there
        let _ = segment(&odd[..70], &hdr, &mut scratch, |_, _| ());
    }
}

//! Receive coalescing: consecutive TCP segments of one flow, delivered from the
//! overlay to one pod, are written to its TAP as one GSO super-frame.
//!
//! Design note: a peer sends a TCP stream over VXLAN as wire-sized segments (a
//! VXLAN datagram carries one inner frame of at most the pod MTU), and UDP GRO hands
//! them to the agent back to back. Written to the pod's TAP one by one, every segment
//! costs a write and a trip through the pod's whole receive stack — that, not the
//! datapath, bounded cross-node throughput. The kernel's answer on a NIC is GRO; this
//! is the same for a TAP: each segment still goes through the core on its own
//! (decapsulation, policy, conntrack, routing, counters are unchanged), and the
//! *delivered* frames are collected here. A segment joins the current run when it
//! continues it exactly as Linux's `tcp_gro_receive` requires — same port, same
//! Ethernet, IPv4 (no options, not a fragment, same TOS/TTL/DF) and TCP headers except
//! the sequence number (same ports, ACK, window, options), ACK with at most PSH,
//! the next sequence number, every earlier segment `gso_size` long — and a run is
//! written with one `writev`: a `virtio_net_hdr` saying TCPv4 GSO with a partial
//! checksum, the first segment's headers (total length, flags and checksums fixed up),
//! and each segment's payload in place (no copy). The pod's kernel takes it as one
//! packet, exactly as it takes a GRO packet from a NIC.
//!
//! Integrity is not traded away: a segment joins only if its TCP checksum verifies
//! (the super-frame then carries a partial checksum, which the pod trusts), so a
//! corrupted segment is delivered on its own, unchanged, for the pod to reject. A run
//! of one segment is written exactly as it arrived. If the TAP refuses the
//! super-frame, its segments are written one by one.
//!
//! Frames live in the caller's receive buffers ([`Slots`]), named by slot and offset;
//! the caller flushes before it reuses a buffer.

use std::io;
use std::io::IoSlice;

use podwire_core::checksum;
use podwire_core::datapath::Span;
use podwire_core::ids::PortId;

use super::gso::pseudo_v4;
use super::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};

/// Segments per super-frame: the bound of one `writev`'s parts (a super-frame is
/// also held to the 64 KiB of an IPv4 packet, which at the usual MSS comes first; the
/// TAP copies it into its own pages, so the layout of the parts does not matter).
pub const MAX_SEGMENTS: usize = 64;

const ETH: usize = 14;
const IP: usize = ETH;
const TCP: usize = IP + 20;
const PROTO_TCP: u8 = 6;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
/// Largest Ethernet + IPv4 + TCP header (no IPv4 options: 14 + 20 + 60).
const MAX_HEADERS: usize = ETH + 20 + 60;

/// Where the delivered frames are: receive buffers by slot number.
pub trait Slots {
    /// The bytes of buffer `slot`.
    fn slot(&self, slot: usize) -> &[u8];
}

impl Slots for [Vec<u8>] {
    fn slot(&self, slot: usize) -> &[u8] {
        self.get(slot).map_or(&[], |b| b.as_slice())
    }
}

/// Where coalesced frames go: a port's TAP, written with a `virtio_net_hdr`.
pub trait PortWriter {
    /// Writes one frame, gathered from `parts`, behind `hdr` to `port`.
    fn write_parts(&mut self, port: PortId, hdr: &VnetHdr, parts: &[IoSlice]) -> io::Result<()>;
}

/// What a write of a run did, in frames (segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Frames written.
    pub frames: u64,
    /// Frames that went out inside a super-frame of two or more.
    pub coalesced: u64,
    /// Frames whose write failed.
    pub failed: u64,
}

impl Written {
    fn add(&mut self, other: Written) {
        self.frames += other.frames;
        self.coalesced += other.coalesced;
        self.failed += other.failed;
    }
}

/// A segment's payload (or, for the first, its whole frame) in a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    slot: usize,
    frame: Span,
}

/// The parsed headers of a coalescible TCP/IPv4 frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Segment {
    /// Ethernet + IPv4 + TCP header bytes.
    headers: usize,
    /// TCP payload bytes.
    payload: usize,
    seq: u32,
    flags: u8,
}

/// The run being collected.
#[derive(Debug)]
struct Run {
    port: PortId,
    first: Segment,
    pieces: Vec<Piece>,
    /// Payload bytes of the last segment (all earlier ones are `first.payload`).
    last_payload: usize,
    total_payload: usize,
    next_seq: u32,
    /// A segment with PSH ended the run: nothing may join it.
    closed: bool,
}

/// Collects delivered frames into runs and writes each run as one frame.
#[derive(Debug, Default)]
pub struct Coalescer {
    run: Option<Run>,
}

/// Reads a coalescible TCP/IPv4 frame: Ethernet II, IPv4 without options, not a
/// fragment, TCP with a payload and flags ACK (+PSH); `None` for anything else.
fn parse(frame: &[u8]) -> Option<Segment> {
    if frame.len() < TCP + 20 || frame[12..14] != [0x08, 0x00] || frame[IP] != 0x45 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let fragment = u16::from_be_bytes([frame[IP + 6], frame[IP + 7]]) & 0x3fff;
    if frame[IP + 9] != PROTO_TCP || fragment != 0 || ETH + total > frame.len() {
        return None;
    }
    let doff = usize::from(frame[TCP + 12] >> 4) * 4;
    let headers = TCP + doff;
    let flags = frame[TCP + 13];
    if doff < 20 || headers >= ETH + total || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    Some(Segment {
        headers,
        payload: ETH + total - headers,
        seq: u32::from_be_bytes([
            frame[TCP + 4],
            frame[TCP + 5],
            frame[TCP + 6],
            frame[TCP + 7],
        ]),
        flags,
    })
}

/// The IPv4 pseudo-header sum of a TCP segment of `l4_len` bytes in `frame`, widened
/// to be added to [`checksum::sum_wide`] sums.
fn pseudo_sum(frame: &[u8], l4_len: usize) -> u64 {
    u64::from(pseudo_v4(&frame[IP..], PROTO_TCP, l4_len as u16))
}

/// Whether the frame's TCP checksum verifies.
fn tcp_checksum_ok(frame: &[u8], seg: &Segment) -> bool {
    let l4 = &frame[TCP..seg.headers + seg.payload];
    checksum::fold(pseudo_sum(frame, l4.len()) + checksum::sum_wide(l4)) == 0xffff
}

/// Whether `next` (parsed as `seg`) may follow the first frame of a run `first`.
fn same_flow(first: &[u8], first_seg: &Segment, next: &[u8], seg: &Segment) -> bool {
    seg.headers == first_seg.headers
        // Ethernet addresses and type; IPv4 version/IHL and TOS.
        && first[..IP + 2] == next[..IP + 2]
        // DF (the ID may differ), TTL and protocol.
        && first[IP + 6] & 0x40 == next[IP + 6] & 0x40
        && first[IP + 8..IP + 10] == next[IP + 8..IP + 10]
        // Addresses, ports.
        && first[IP + 12..TCP + 4] == next[IP + 12..TCP + 4]
        // Acknowledgment number, data offset.
        && first[TCP + 8..TCP + 13] == next[TCP + 8..TCP + 13]
        // Window, then options (timestamps included) after checksum and urgent pointer.
        && first[TCP + 14..TCP + 16] == next[TCP + 14..TCP + 16]
        && first[TCP + 20..seg.headers] == next[TCP + 20..seg.headers]
}

impl Coalescer {
    /// Offers the frame `buf(slot)[frame]`, delivered to `port`. It joins the current
    /// run if it continues it; otherwise the run is written first and the frame starts
    /// a new one. Returns what was written.
    pub fn push<S: Slots + ?Sized, W: PortWriter>(
        &mut self,
        slots: &S,
        slot: usize,
        port: PortId,
        frame: Span,
        out: &mut W,
    ) -> Written {
        let bytes = slots.slot(slot).get(frame.range()).unwrap_or(&[]);
        let seg = parse(bytes).filter(|s| tcp_checksum_ok(bytes, s));
        let piece = Piece { slot, frame };
        if let (Some(run), Some(seg)) = (&mut self.run, seg) {
            let first = &run.pieces[0];
            let first_bytes = slots.slot(first.slot).get(first.frame.range());
            let fits = !run.closed
                && run.port == port
                && run.pieces.len() < MAX_SEGMENTS
                && seg.seq == run.next_seq
                && run.last_payload == run.first.payload
                && seg.payload <= run.first.payload
                && run.first.headers - ETH + run.total_payload + seg.payload <= 0xffff
                && first_bytes.is_some_and(|f| same_flow(f, &run.first, bytes, &seg));
            if fits {
                run.pieces.push(piece);
                run.last_payload = seg.payload;
                run.total_payload += seg.payload;
                run.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                run.closed = seg.flags & TCP_PSH != 0;
                return Written::default();
            }
        }
        let written = self.flush(slots, out);
        let mut pieces = Vec::with_capacity(MAX_SEGMENTS);
        pieces.push(piece);
        self.run = Some(match seg {
            Some(seg) => Run {
                port,
                first: seg,
                pieces,
                last_payload: seg.payload,
                total_payload: seg.payload,
                next_seq: seg.seq.wrapping_add(seg.payload as u32),
                closed: seg.flags & TCP_PSH != 0,
            },
            // Not coalescible: a run that nothing can join.
            None => Run {
                port,
                first: Segment::default(),
                pieces,
                last_payload: 0,
                total_payload: 0,
                next_seq: 0,
                closed: true,
            },
        });
        written
    }

    /// Writes the current run, if any.
    pub fn flush<S: Slots + ?Sized, W: PortWriter>(&mut self, slots: &S, out: &mut W) -> Written {
        let Some(run) = self.run.take() else {
            return Written::default();
        };
        if run.pieces.len() == 1 {
            return write_single(slots, run.port, run.pieces[0], out);
        }
        let first = run.pieces[0];
        let Some(first_bytes) = slots.slot(first.slot).get(first.frame.range()) else {
            return Written {
                failed: run.pieces.len() as u64,
                ..Written::default()
            };
        };
        let h = run.first.headers;
        let mut headers = [0u8; MAX_HEADERS];
        headers[..h].copy_from_slice(&first_bytes[..h]);
        let l4_len = h - TCP + run.total_payload;
        let headers = &mut headers[..h];
        // IPv4 total length and header checksum.
        headers[IP + 2..IP + 4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        headers[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let ip_sum = !checksum::sum(&headers[IP..TCP]);
        headers[IP + 10..IP + 12].copy_from_slice(&ip_sum.to_be_bytes());
        // PSH as the last segment had it; the checksum field holds the pseudo-header
        // sum (partial), completed by whoever needs it.
        let last = run.pieces[run.pieces.len() - 1];
        let last_flags = slots
            .slot(last.slot)
            .get(last.frame.start + TCP + 13)
            .copied()
            .unwrap_or(TCP_ACK);
        headers[TCP + 13] = TCP_ACK | (last_flags & TCP_PSH);
        let partial = checksum::fold(pseudo_sum(headers, l4_len));
        headers[TCP + 16..TCP + 18].copy_from_slice(&partial.to_be_bytes());

        let mut parts: Vec<IoSlice> = Vec::with_capacity(run.pieces.len() + 1);
        parts.push(IoSlice::new(headers));
        for p in &run.pieces {
            let payload = Span {
                start: p.frame.start + h,
                len: p.frame.len - h,
            };
            match slots.slot(p.slot).get(payload.range()) {
                // The frame may carry Ethernet padding past the IPv4 packet.
                Some(b) if !b.is_empty() => {
                    let len = if parts.len() == run.pieces.len() {
                        run.last_payload
                    } else {
                        run.first.payload
                    };
                    parts.push(IoSlice::new(&b[..len.min(b.len())]));
                }
                _ => {
                    return Written {
                        failed: run.pieces.len() as u64,
                        ..Written::default()
                    }
                }
            }
        }
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: h as u16,
            gso_size: run.first.payload as u16,
            csum_start: TCP as u16,
            csum_offset: 16,
        };
        let n = run.pieces.len() as u64;
        match out.write_parts(run.port, &hdr, &parts) {
            Ok(()) => Written {
                frames: n,
                coalesced: n,
                failed: 0,
            },
            Err(_) => {
                // Refused as a super-frame: the segments are intact, write each.
                let mut w = Written::default();
                for p in run.pieces {
                    w.add(write_single(slots, run.port, p, out));
                }
                w
            }
        }
    }
}

/// Writes one frame as it is.
fn write_single<S: Slots + ?Sized, W: PortWriter>(
    slots: &S,
    port: PortId,
    piece: Piece,
    out: &mut W,
) -> Written {
    let ok = slots
        .slot(piece.slot)
        .get(piece.frame.range())
        .is_some_and(|b| {
            out.write_parts(port, &VnetHdr::NONE, &[IoSlice::new(b)])
                .is_ok()
        });
    Written {
        frames: u64::from(ok),
        coalesced: 0,
        failed: u64::from(!ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::vnet::GSO_NONE;

    const PORT: PortId = PortId(3);
    const TCP_FIN: u8 = 0x01;
    const TCP_SYN: u8 = 0x02;
    const TCP_RST: u8 = 0x04;

    /// A TCP/IPv4 frame with a valid IPv4 header and TCP checksum, timestamps option.
    fn segment(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let l4_len = 32 + payload.len();
        let total = (20 + l4_len) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 63, 6, 0, 0]);
        f[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 2]);
        let c = !checksum::sum(&f[IP..TCP]);
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&777u32.to_be_bytes());
        f.extend_from_slice(&[8 << 4, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend_from_slice(payload);
        let c = !checksum::fold(pseudo_sum(&f, l4_len) + checksum::sum_wide(&f[TCP..]));
        f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// Records writes: the header and the gathered bytes.
    #[derive(Default)]
    struct Taps {
        writes: Vec<(PortId, VnetHdr, Vec<u8>)>,
        refuse_gso: bool,
    }

    impl PortWriter for Taps {
        fn write_parts(
            &mut self,
            port: PortId,
            hdr: &VnetHdr,
            parts: &[IoSlice],
        ) -> io::Result<()> {
            if self.refuse_gso && hdr.gso_type != GSO_NONE {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let bytes = parts.iter().flat_map(|p| p.iter().copied()).collect();
            self.writes.push((port, *hdr, bytes));
            Ok(())
        }
    }

    /// Frames placed in one buffer back to back, as spans.
    fn place(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Span>) {
        let mut buf = vec![0u8; 64];
        let mut spans = Vec::new();
        for f in frames {
            spans.push(Span {
                start: buf.len(),
                len: f.len(),
            });
            buf.extend_from_slice(f);
            buf.extend_from_slice(&[0xee; 64]); // what the core leaves between them
        }
        (vec![buf], spans)
    }

    fn run_all(frames: &[Vec<u8>], taps: &mut Taps) -> Written {
        let (slots, spans) = place(frames);
        let mut c = Coalescer::default();
        let mut w = Written::default();
        for s in spans {
            w.add(c.push(slots.as_slice(), 0, PORT, s, taps));
        }
        w.add(c.flush(slots.as_slice(), taps));
        w
    }

    fn stream(n: usize, mss: usize, last: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { mss };
                let payload: Vec<u8> = (0..len).map(|b| (i * 31 + b) as u8).collect();
                let flags = if i + 1 == n {
                    TCP_ACK | TCP_PSH
                } else {
                    TCP_ACK
                };
                segment(1000 + (i * mss) as u32, &payload, flags)
            })
            .collect()
    }

    /// Cuts a super-frame as the receiving kernel would, returns the segments'
    /// payloads, and checks the headers and the completed checksum.
    fn check_super_frame(hdr: &VnetHdr, bytes: &[u8], expected: &[Vec<u8>]) {
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        let h = usize::from(hdr.hdr_len);
        assert_eq!(h, TCP + 32);
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
        assert_eq!(!checksum::sum(&bytes[IP..TCP]), 0, "IPv4 checksum");
        let total = u16::from_be_bytes([bytes[IP + 2], bytes[IP + 3]]);
        assert_eq!(usize::from(total) + ETH, bytes.len());
        // Completing the partial checksum gives a valid segment.
        let mut full = bytes.to_vec();
        let c = !checksum::sum(&full[TCP..]);
        full[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
        let l4 = full.len() - TCP;
        assert_eq!(
            checksum::fold(pseudo_sum(&full, l4) + checksum::sum_wide(&full[TCP..])),
            0xffff
        );
        let payload: Vec<u8> = expected.iter().flat_map(|f| f[h..].to_vec()).collect();
        assert_eq!(&bytes[h..], &payload[..]);
        assert_eq!(&bytes[TCP + 4..TCP + 8], &expected[0][TCP + 4..TCP + 8]);
    }

    #[test]
    fn a_stream_becomes_one_super_frame() {
        let frames = stream(5, 1000, 300);
        let mut taps = Taps::default();
        let w = run_all(&frames, &mut taps);
        assert_eq!(
            w,
            Written {
                frames: 5,
                coalesced: 5,
                failed: 0
            }
        );
        assert_eq!(taps.writes.len(), 1);
        let (port, hdr, bytes) = &taps.writes[0];
        assert_eq!(*port, PORT);
        assert_eq!(hdr.gso_size, 1000);
        check_super_frame(hdr, bytes, &frames);
        assert_eq!(
            bytes[TCP + 13],
            TCP_ACK | TCP_PSH,
            "PSH from the last segment"
        );
    }

    #[test]
    fn runs_break_where_gro_would() {
        let base = stream(3, 500, 500);
        type Change = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Change)> = vec![
            ("sequence gap", Box::new(|f| f[TCP + 7] ^= 1)),
            ("other ack", Box::new(|f| f[TCP + 11] ^= 1)),
            ("other window", Box::new(|f| f[TCP + 15] ^= 1)),
            ("other timestamp", Box::new(|f| f[TCP + 30] ^= 1)),
            ("other port", Box::new(|f| f[TCP + 1] ^= 1)),
            ("other TTL", Box::new(|f| f[IP + 8] ^= 1)),
            ("FIN", Box::new(|f| f[TCP + 13] |= TCP_FIN)),
            ("SYN", Box::new(|f| f[TCP + 13] |= TCP_SYN)),
            ("RST", Box::new(|f| f[TCP + 13] |= TCP_RST)),
            ("bad checksum", Box::new(|f| f[TCP + 40] ^= 0xff)),
            ("fragment", Box::new(|f| f[IP + 6] |= 0x20)),
        ];
        for (what, change) in cases {
            let mut frames = base.clone();
            change(&mut frames[1]);
            // Fix the IPv4 header checksum so only the named change differs.
            frames[1][IP + 10..IP + 12].copy_from_slice(&[0, 0]);
            let c = !checksum::sum(&frames[1][IP..TCP]);
            frames[1][IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
            if what != "bad checksum" {
                let l4 = frames[1].len() - TCP;
                frames[1][TCP + 16..TCP + 18].copy_from_slice(&[0, 0]);
                let c = !checksum::fold(
                    pseudo_sum(&frames[1], l4) + checksum::sum_wide(&frames[1][TCP..]),
                );
                frames[1][TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
            }
            let mut taps = Taps::default();
            let w = run_all(&frames, &mut taps);
            assert_eq!(w.frames, 3, "{what}");
            assert!(
                taps.writes.len() >= 2,
                "{what}: {} writes",
                taps.writes.len()
            );
            // The changed frame itself goes out unchanged unless it starts a run.
            let out: Vec<u8> = taps.writes.iter().flat_map(|w| w.2.clone()).collect();
            assert!(out.len() >= frames.iter().map(|f| f.len() - 66).sum::<usize>());
        }
    }

    #[test]
    fn a_short_segment_ends_the_run_and_psh_closes_it() {
        // 1000, 400, 1000: the third cannot follow a short one.
        let mut frames = stream(2, 1000, 400);
        frames[1][TCP + 13] = TCP_ACK;
        let l4 = frames[1].len() - TCP;
        frames[1][TCP + 16..TCP + 18].copy_from_slice(&[0, 0]);
        let c = !checksum::fold(pseudo_sum(&frames[1], l4) + checksum::sum_wide(&frames[1][TCP..]));
        frames[1][TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
        frames.push(segment(2400, &[7; 1000], TCP_ACK));
        let mut taps = Taps::default();
        run_all(&frames, &mut taps);
        assert_eq!(taps.writes.len(), 2);
        check_super_frame(&taps.writes[0].1, &taps.writes[0].2, &frames[..2]);
        assert_eq!(taps.writes[1].2, frames[2], "written as it came");

        // PSH closes: a following segment starts a new run.
        let mut frames = stream(2, 1000, 1000);
        frames.push(segment(3000, &[9; 1000], TCP_ACK));
        let mut taps = Taps::default();
        run_all(&frames, &mut taps);
        assert_eq!(taps.writes.len(), 2);
    }

    #[test]
    fn other_ports_and_other_traffic_pass_unchanged() {
        let frames = stream(2, 800, 800);
        let (slots, spans) = place(&frames);
        let mut taps = Taps::default();
        let mut c = Coalescer::default();
        c.push(slots.as_slice(), 0, PORT, spans[0], &mut taps);
        c.push(slots.as_slice(), 0, PortId(4), spans[1], &mut taps);
        c.flush(slots.as_slice(), &mut taps);
        assert_eq!(taps.writes.len(), 2);
        assert_eq!(taps.writes[0].2, frames[0]);
        assert_eq!(taps.writes[1].0, PortId(4));
        assert_eq!(taps.writes[0].1, VnetHdr::NONE);

        // Non-TCP, garbage and truncated frames are written as they are.
        let mut udp = frames[0].clone();
        udp[IP + 9] = 17;
        for f in [udp, vec![0xab; 10], frames[0][..40].to_vec()] {
            let mut taps = Taps::default();
            run_all(&[f.clone(), f.clone()], &mut taps);
            assert_eq!(taps.writes.len(), 2);
            assert!(taps.writes.iter().all(|w| w.2 == f && w.1 == VnetHdr::NONE));
        }
    }

    #[test]
    fn a_refused_super_frame_is_written_segment_by_segment() {
        let frames = stream(4, 600, 600);
        let mut taps = Taps {
            refuse_gso: true,
            ..Taps::default()
        };
        let w = run_all(&frames, &mut taps);
        assert_eq!(
            w,
            Written {
                frames: 4,
                coalesced: 0,
                failed: 0
            }
        );
        let out: Vec<Vec<u8>> = taps.writes.into_iter().map(|w| w.2).collect();
        assert_eq!(out, frames);
    }

    #[test]
    fn runs_stop_at_the_segment_limit_and_across_buffers() {
        let frames = stream(MAX_SEGMENTS + 3, 100, 100);
        let mut taps = Taps::default();
        run_all(&frames, &mut taps);
        assert_eq!(taps.writes.len(), 2);
        check_super_frame(
            &taps.writes[0].1,
            &taps.writes[0].2,
            &frames[..MAX_SEGMENTS],
        );
        // Frames in different buffers (datagrams of one recvmmsg) join too.
        let frames = stream(3, 700, 700);
        let slots: Vec<Vec<u8>> = frames.clone();
        let mut c = Coalescer::default();
        let mut taps = Taps::default();
        for (i, f) in frames.iter().enumerate() {
            let span = Span {
                start: 0,
                len: f.len(),
            };
            c.push(slots.as_slice(), i, PORT, span, &mut taps);
        }
        c.flush(slots.as_slice(), &mut taps);
        assert_eq!(taps.writes.len(), 1);
        check_super_frame(&taps.writes[0].1, &taps.writes[0].2, &frames);
    }

    /// What the pod's kernel makes of the writes: each super-frame cut back into
    /// (sequence number, payload) segments, each single frame as it is.
    fn expand(writes: &[(PortId, VnetHdr, Vec<u8>)]) -> Vec<(PortId, Option<u32>, Vec<u8>)> {
        let mut out = Vec::new();
        for (port, hdr, bytes) in writes {
            if hdr.gso_type == GSO_NONE {
                out.push((*port, None, bytes.clone()));
                continue;
            }
            let h = usize::from(hdr.hdr_len);
            let seq = u32::from_be_bytes(bytes[TCP + 4..TCP + 8].try_into().unwrap());
            for (k, chunk) in bytes[h..].chunks(usize::from(hdr.gso_size)).enumerate() {
                let s = seq.wrapping_add((k * usize::from(hdr.gso_size)) as u32);
                out.push((*port, Some(s), chunk.to_vec()));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn every_frame_comes_out_once_in_order_whatever_the_input(
            n in 1usize..90,
            mss in 1usize..1400,
            edits in proptest::collection::vec((0usize..90, 0usize..2000, proptest::prelude::any::<u8>()), 0..6),
            other_port in proptest::collection::vec(0usize..90, 0..3),
            cut in proptest::prelude::any::<bool>(),
        ) {
            let mut frames = stream(n, mss, mss / 2 + 1);
            for (i, at, x) in edits {
                if let Some(f) = frames.get_mut(i) {
                    let at = at % f.len();
                    f[at] ^= x;
                }
            }
            if cut {
                let last = frames.len() - 1;
                let keep = frames[last].len() / 2;
                frames[last].truncate(keep);
            }
            let (slots, spans) = place(&frames);
            let mut taps = Taps::default();
            let mut c = Coalescer::default();
            let mut w = Written::default();
            let ports: Vec<PortId> = (0..frames.len())
                .map(|i| if other_port.contains(&i) { PortId(9) } else { PORT })
                .collect();
            for (s, p) in spans.iter().zip(&ports) {
                w.add(c.push(slots.as_slice(), 0, *p, *s, &mut taps));
            }
            w.add(c.flush(slots.as_slice(), &mut taps));
            proptest::prop_assert_eq!((w.frames, w.failed), (frames.len() as u64, 0));
            let got = expand(&taps.writes);
            proptest::prop_assert_eq!(got.len(), frames.len());
            for ((port, seq, bytes), (f, p)) in got.iter().zip(frames.iter().zip(&ports)) {
                proptest::prop_assert_eq!(port, p);
                match seq {
                    None => proptest::prop_assert_eq!(bytes, f),
                    Some(s) => {
                        // A coalesced segment: it verified, so its headers parse.
                        let seg = parse(f).unwrap();
                        proptest::prop_assert!(tcp_checksum_ok(f, &seg));
                        proptest::prop_assert_eq!(*s, seg.seq);
                        proptest::prop_assert_eq!(&bytes[..], &f[seg.headers..seg.headers + seg.payload]);
                    }
                }
            }
        }
    }
}

//! Processing a burst of frames: the cache misses of independent packets overlap.
//!
//! Design note: with many flows, a packet's cost is dominated by cache misses — the
//! connection-tracking bucket and entry of its flow are rarely in cache — and
//! [`Datapath::process`] waits for each miss before it can go on. A shell that reads
//! frames in bursts (a `recvmmsg`, a TAP queue drained at once, an AF_XDP ring, a
//! NIC's descriptor ring on a board) hands the whole burst to
//! [`Datapath::process_burst`], which works as DPDK-style datapaths do, in two passes
//! over windows of [`BURST_WINDOW`] frames:
//!
//! 1. **Touch.** For every frame, read the flow key straight from the header bytes
//!    (no validation: a wrong key only touches the wrong memory) and read the
//!    connection-tracking bucket and entry a lookup of it will read
//!    ([`ConnTrack::touch`](crate::conntrack::ConnTrack::touch)). The reads of
//!    different frames do not depend on each other, so an out-of-order core has
//!    several misses in flight at once. Safe `no_std` Rust has no prefetch
//!    instruction; a load whose value is kept (folded into a field) is the portable
//!    equivalent, and on a core without out-of-order execution it costs little more
//!    than the misses the second pass would take anyway.
//! 2. **Process.** Every frame goes through the ordinary one-frame pipeline, in
//!    order, now finding its lines in cache. The actions are exactly those of
//!    calling [`Datapath::process_with`] on each frame in turn.
//!
//! A window of 32 frames touches at most 96 lines (6 KiB), well inside any L1 data
//! cache, so the first frames' lines are still there when the second pass reaches
//! them.

use crate::flow::{FlowKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::wire::VXLAN_HEADER_LEN;
use crate::Instant;

use super::parse::ETHERNET_HEADER_LEN;
use super::{Action, Datapath, FrameMeta, Ingress, PortKind, Span};

/// Frames touched before the first of them is processed.
pub const BURST_WINDOW: usize = 32;

/// One frame of a burst: where it came from, its buffer (with [`super::HEADROOM`]
/// before the frame), its span and offload state, and — once the burst is processed
/// — the action taken.
#[derive(Debug)]
pub struct BurstFrame<'b> {
    /// Where the frame entered.
    pub ingress: Ingress,
    /// Its buffer; the frame is rewritten in place.
    pub buf: &'b mut [u8],
    /// The frame within `buf`.
    pub frame: Span,
    /// Its offload state.
    pub meta: FrameMeta,
    /// What to do with it: `None` until [`Datapath::process_burst`] has run.
    pub action: Option<Action>,
}

impl<'b> BurstFrame<'b> {
    /// A plain frame ([`FrameMeta::PLAIN`]), not yet processed.
    pub fn new(ingress: Ingress, buf: &'b mut [u8], frame: Span) -> Self {
        BurstFrame {
            ingress,
            buf,
            frame,
            meta: FrameMeta::PLAIN,
            action: None,
        }
    }
}

impl<'a> Datapath<'a> {
    /// Processes a burst of frames that arrived at `now`, setting each frame's
    /// `action`: the same actions, counters and events as [`Datapath::process_with`]
    /// on each frame in order, with the memory of each window of [`BURST_WINDOW`]
    /// frames read ahead (see the module's design note).
    pub fn process_burst(&mut self, now: Instant, frames: &mut [BurstFrame<'_>]) {
        for window in frames.chunks_mut(BURST_WINDOW) {
            let mut touched = self.touched;
            for f in window.iter() {
                if let Some(key) = self.peek_key(f) {
                    touched = touched.wrapping_add(self.tables.conntrack.touch(&key));
                }
            }
            self.touched = touched;
            for f in window.iter_mut() {
                f.action = Some(self.process_with(now, f.ingress, f.buf, f.frame, f.meta));
            }
        }
    }

    /// The flow key of a frame's (inner) IPv4 TCP, UDP or SCTP packet, read at the
    /// offsets a well-formed frame has, or `None` if the bytes are not there.
    fn peek_key(&self, f: &BurstFrame<'_>) -> Option<FlowKey> {
        let bytes = f.buf.get(f.frame.range())?;
        let inner = match f.ingress {
            Ingress::Underlay { .. } => VXLAN_HEADER_LEN,
            Ingress::Port(port) => match self.tables.ports.get(port)? {
                // Outer Ethernet, IPv4 (of its header length), UDP and VXLAN headers.
                PortKind::Underlay => {
                    let ihl = usize::from(bytes.get(ETHERNET_HEADER_LEN)? & 0x0f) * 4;
                    ETHERNET_HEADER_LEN + ihl + 8 + VXLAN_HEADER_LEN
                }
                PortKind::Pod { .. } | PortKind::Host { .. } => 0,
            },
        };
        peek_ipv4_key(bytes.get(inner..)?)
    }
}

/// The flow key of the IPv4 TCP, UDP or SCTP packet in an Ethernet frame, read without
/// validation (the pipeline validates; this is only where to look ahead).
fn peek_ipv4_key(frame: &[u8]) -> Option<FlowKey> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip: &[u8; 20] = frame.get(ETHERNET_HEADER_LEN..)?.first_chunk()?;
    let protocol = ip[9];
    if !matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return None;
    }
    let l4 = ETHERNET_HEADER_LEN + usize::from(ip[0] & 0x0f) * 4;
    let ports: &[u8; 4] = frame.get(l4..)?.first_chunk()?;
    Some(FlowKey {
        src: [ip[12], ip[13], ip[14], ip[15]].into(),
        dst: [ip[16], ip[17], ip[18], ip[19]].into(),
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        protocol,
        zone: 0,
    })
}

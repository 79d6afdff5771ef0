//! One frame through the datapath: the small, replaceable function at the heart of
//! the dataplane workers.
//!
//! Design note: the core decides, the shell moves bytes. A worker reads a frame from
//! a TAP queue into a buffer with [`HEADROOM`] bytes free in front (the core writes
//! outer VXLAN headers there), calls [`forward_one`], and that function performs the
//! returned [`Action`] through an [`Egress`] — the only place that knows how a port
//! or the underlay is written. Spans returned by the core are bounds-checked here, so
//! a datapath bug becomes a counted error, not a panic in the agent. `Forwarder` is
//! the one method of the core `Datapath` this needs, which keeps the loop testable
//! with a scripted forwarder and independent of the datapath's construction.
//!
//! Offloads: a frame read from a TAP comes with its `virtio_net_hdr` ([`VnetHdr`]).
//! [`forward_frame`] passes what it says to the core ([`FrameMeta`]); a delivered
//! frame is written out with the same header, so a 64 KiB TCP super-frame crosses
//! from one pod to another as one write. Routed to the overlay, the agent's core
//! encapsulates it once (`Datapath::set_overlay_gso`) and [`Egress::to_underlay_offloaded`]
//! cuts the result into datagrams. A forwarder without that hands the frame back
//! (`NeedsSoftwareOffload`); it is then segmented or its checksum completed here
//! ([`super::gso`]) and the results go through the core as plain frames.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use podwire_core::datapath::{Action, DropReason, FrameMeta, Ingress, Span};
use podwire_core::ids::PortId;
use podwire_core::Instant;

use super::gso;
use super::vnet::{VnetHdr, VNET_HDR_LEN};

/// Bytes kept free before each frame for outer headers (VXLAN over IPv6 needs 70,
/// the core requires at least 64).
pub const HEADROOM: usize = 128;

/// A frame buffer: headroom plus the largest frame a TAP hands over (GSO
/// super-frames of up to 64 KiB plus their Ethernet header), with some slack.
pub const BUFFER_LEN: usize = HEADROOM + 65536 + 256;

/// The core's packet function.
pub trait Forwarder {
    /// Processes `buf[frame]` that entered at `ingress`.
    fn process(&mut self, now: Instant, ingress: Ingress, buf: &mut [u8], frame: Span) -> Action;

    /// Processes a frame with offload state `meta` (a GSO super-frame, a partial
    /// checksum). The default knows no offloads: it hands every offloaded frame back
    /// (`NeedsSoftwareOffload`), and [`forward_frame`] then offloads it in software.
    fn process_with(
        &mut self,
        now: Instant,
        ingress: Ingress,
        buf: &mut [u8],
        frame: Span,
        meta: FrameMeta,
    ) -> Action {
        if meta.is_offloaded() {
            Action::Drop(DropReason::NeedsSoftwareOffload)
        } else {
            self.process(now, ingress, buf, frame)
        }
    }

    /// Periodic housekeeping (connection-tracking expiry), about once a second.
    fn tick(&mut self, _now: Instant) {}
}

/// Where frames leave.
pub trait Egress {
    /// Writes an Ethernet frame to local port `port`.
    fn to_port(&mut self, port: PortId, frame: &[u8]) -> io::Result<()>;
    /// Writes an Ethernet frame with the offloads `hdr` describes (GSO, partial
    /// checksum) to local port `port`. The default writes only plain frames.
    fn to_port_offloaded(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> io::Result<()> {
        if hdr.is_offloaded() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this egress cannot write offloaded frames",
            ));
        }
        self.to_port(port, frame)
    }
    /// Sends a VXLAN payload to `remote` from UDP source port `source_port`.
    fn to_underlay(
        &mut self,
        remote: SocketAddr,
        source_port: u16,
        payload: &[u8],
    ) -> io::Result<()>;
    /// Sends a VXLAN payload whose inner frame has the offloads `hdr` describes (the
    /// core encapsulated a super-frame once: see `Datapath::set_overlay_gso`): a GSO
    /// frame is cut into one datagram per segment, a partial checksum is completed.
    /// The default sends only plain payloads.
    fn to_underlay_offloaded(
        &mut self,
        remote: SocketAddr,
        source_port: u16,
        hdr: &VnetHdr,
        payload: &[u8],
    ) -> io::Result<()> {
        if hdr.is_offloaded() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this egress cannot segment offloaded frames",
            ));
        }
        self.to_underlay(remote, source_port, payload)
    }
}

/// What happened to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The core's action was carried out.
    Sent(Action),
    /// The core dropped it (and counted the reason).
    Dropped(Action),
    /// The action named bytes outside the buffer (a datapath bug; nothing sent).
    BadSpan(Action),
}

/// Runs one plain frame through `fwd` and performs the action on `egress`.
pub fn forward_one<F: Forwarder, E: Egress>(
    fwd: &mut F,
    now: Instant,
    ingress: Ingress,
    buf: &mut [u8],
    frame: Span,
    egress: &mut E,
) -> io::Result<Outcome> {
    let action = fwd.process(now, ingress, buf, frame);
    perform(action, ingress, buf, &VnetHdr::NONE, egress)
}

/// Runs one frame read with the `virtio_net_hdr` `hdr` through `fwd` and performs the
/// action on `egress`: a delivered frame keeps its offloads; an offloaded frame the
/// core hands back is completed or segmented in software (in `scratch`, a buffer of
/// [`BUFFER_LEN`] bytes) and the results are forwarded as plain frames. The outcome
/// of a segmented frame is that of its first segment that was not sent, or else of
/// its last.
#[allow(clippy::too_many_arguments)]
pub fn forward_frame<F: Forwarder, E: Egress>(
    fwd: &mut F,
    now: Instant,
    ingress: Ingress,
    buf: &mut [u8],
    frame: Span,
    hdr: VnetHdr,
    scratch: &mut [u8],
    egress: &mut E,
) -> io::Result<Outcome> {
    if !hdr.is_offloaded() {
        return forward_one(fwd, now, ingress, buf, frame, egress);
    }
    let action = fwd.process_with(now, ingress, buf, frame, hdr.meta());
    if action != Action::Drop(DropReason::NeedsSoftwareOffload) {
        return perform(action, ingress, buf, &hdr, egress);
    }
    let Some(bytes) = frame
        .start
        .checked_add(frame.len)
        .and_then(|end| buf.get_mut(frame.start..end))
    else {
        return Ok(Outcome::BadSpan(action));
    };
    if !hdr.is_gso() {
        return match gso::complete_checksum(bytes, &hdr) {
            Ok(()) => forward_one(fwd, now, ingress, buf, frame, egress),
            Err(_) => Ok(Outcome::Dropped(action)),
        };
    }
    let mut result: Option<io::Result<Outcome>> = None;
    let segmented = gso::segment(bytes, &hdr, scratch, |seg, span| {
        if matches!(result, None | Some(Ok(Outcome::Sent(_)))) {
            result = Some(forward_one(fwd, now, ingress, seg, span, egress));
        } else {
            // Keep the first failure, but still forward the other segments.
            let _ = forward_one(fwd, now, ingress, seg, span, egress);
        }
    });
    match (segmented, result) {
        (Ok(_), Some(r)) => r,
        _ => Ok(Outcome::Dropped(action)),
    }
}

/// Performs `action` (the result of processing a frame that entered at `ingress`,
/// in `buf`); a delivered frame is written with the offloads `hdr` describes.
pub fn perform<E: Egress>(
    action: Action,
    ingress: Ingress,
    buf: &[u8],
    hdr: &VnetHdr,
    egress: &mut E,
) -> io::Result<Outcome> {
    let bytes = |span: Span| {
        span.start
            .checked_add(span.len)
            .and_then(|end| buf.get(span.start..end))
    };
    match action {
        Action::Drop(_) => Ok(Outcome::Dropped(action)),
        Action::Deliver { port, frame } => match bytes(frame) {
            Some(b) if hdr.is_offloaded() => egress
                .to_port_offloaded(port, hdr, b)
                .map(|_| Outcome::Sent(action)),
            Some(b) => egress.to_port(port, b).map(|_| Outcome::Sent(action)),
            None => Ok(Outcome::BadSpan(action)),
        },
        Action::Encap(e) => {
            let remote = SocketAddr::new(e.remote, e.remote_port);
            match bytes(e.udp_payload) {
                Some(b) if hdr.is_offloaded() => egress
                    .to_underlay_offloaded(remote, e.source_port, hdr, b)
                    .map(|_| Outcome::Sent(action)),
                Some(b) => egress
                    .to_underlay(remote, e.source_port, b)
                    .map(|_| Outcome::Sent(action)),
                None => Ok(Outcome::BadSpan(action)),
            }
        }
        Action::Reply { frame } => match (bytes(frame), ingress) {
            (None, _) => Ok(Outcome::BadSpan(action)),
            (Some(b), Ingress::Port(p)) => egress.to_port(p, b).map(|_| Outcome::Sent(action)),
            (
                Some(b),
                Ingress::Underlay {
                    source,
                    source_port,
                },
            ) => egress
                .to_underlay(SocketAddr::new(source, source_port), 0, b)
                .map(|_| Outcome::Sent(action)),
        },
    }
}

/// Reads one frame from a TAP queue opened with `IFF_VNET_HDR` into `buf`, leaving
/// [`HEADROOM`] bytes in front of it, with its `virtio_net_hdr`. `Ok(None)` when the
/// queue has nothing (non-blocking).
pub fn read_frame(queue: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(Span, VnetHdr)>> {
    let Some(dst) = buf.get_mut(HEADROOM - VNET_HDR_LEN..) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "buffer too small",
        ));
    };
    // SAFETY: `dst` is a valid, writable slice for its whole length.
    let n = unsafe { libc::read(queue.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let n = n as usize;
    let Some(hdr) = VnetHdr::parse(dst).filter(|_| n >= VNET_HDR_LEN) else {
        return Ok(None);
    };
    Ok(Some((
        Span {
            start: HEADROOM,
            len: n - VNET_HDR_LEN,
        },
        hdr,
    )))
}

/// Writes one frame to a TAP queue opened with `IFF_VNET_HDR` (with an all-zero
/// header: no offload, checksums complete).
pub fn write_frame(queue: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    write_frame_with(queue, &VnetHdr::NONE, frame)
}

/// Writes one frame to a TAP queue opened with `IFF_VNET_HDR` behind the header
/// `hdr`: the receiving kernel takes a GSO frame as one GSO packet and completes a
/// partial checksum (or trusts it) as the header says.
pub fn write_frame_with(queue: &OwnedFd, hdr: &VnetHdr, frame: &[u8]) -> io::Result<()> {
    write_parts(queue, hdr, &[IoSlice::new(frame)])
}

/// The most parts [`write_parts`] gathers into one frame (a coalesced run's headers
/// and its payloads).
pub const MAX_PARTS: usize = super::coalesce::MAX_SEGMENTS + 1;

/// Writes one frame gathered from `parts` to a TAP queue opened with
/// `IFF_VNET_HDR`, behind the header `hdr` (one `writev`; at most [`MAX_PARTS`]
/// parts).
pub fn write_parts(queue: &OwnedFd, hdr: &VnetHdr, parts: &[IoSlice]) -> io::Result<()> {
    if parts.len() > MAX_PARTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many parts for one frame",
        ));
    }
    let hdr = hdr.emit();
    let mut iov = [IoSlice::new(&[]); MAX_PARTS + 1];
    iov[0] = IoSlice::new(&hdr);
    iov[1..=parts.len()].copy_from_slice(parts);
    let iov = &iov[..=parts.len()];
    // SAFETY: every slice is valid for reads for its length; `IoSlice` is
    // ABI-compatible with `struct iovec`; the count is the vector's length.
    let n = unsafe { libc::writev(queue.as_raw_fd(), iov.as_ptr().cast(), iov.len() as _) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_core::datapath::{DropReason, Encapsulated};
    use podwire_core::ids::NodeId;

    /// A scripted forwarder: returns the queued actions in order.
    struct Script(Vec<Action>);
    impl Forwarder for Script {
        fn process(&mut self, _: Instant, _: Ingress, _: &mut [u8], _: Span) -> Action {
            self.0.remove(0)
        }
    }

    #[derive(Default)]
    struct Sink {
        ports: Vec<(PortId, Vec<u8>)>,
        underlay: Vec<(SocketAddr, u16, Vec<u8>)>,
    }
    impl Egress for Sink {
        fn to_port(&mut self, port: PortId, frame: &[u8]) -> io::Result<()> {
            self.ports.push((port, frame.to_vec()));
            Ok(())
        }
        fn to_underlay(&mut self, r: SocketAddr, sp: u16, p: &[u8]) -> io::Result<()> {
            self.underlay.push((r, sp, p.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn actions_are_carried_out_on_the_named_span() {
        let mut buf = vec![0u8; 256];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8;
        }
        let span = |start, len| Span { start, len };
        let remote = "192.168.50.12".parse().unwrap();
        let mut fwd = Script(vec![
            Action::Deliver {
                port: PortId(3),
                frame: span(128, 4),
            },
            Action::Encap(Encapsulated {
                node: NodeId(1),
                remote,
                remote_port: 8472,
                source_port: 40000,
                outer_frame: span(78, 60),
                udp_payload: span(120, 8),
            }),
            Action::Reply {
                frame: span(128, 2),
            },
            Action::Drop(DropReason::NoRoute),
            Action::Deliver {
                port: PortId(1),
                frame: span(250, 10),
            },
            Action::Deliver {
                port: PortId(1),
                frame: span(usize::MAX, 10),
            },
        ]);
        let mut sink = Sink::default();
        let now = Instant::from_millis(0);
        let ing = Ingress::Port(PortId(2));
        let f = span(128, 20);
        let mut run = |fwd: &mut Script, sink: &mut Sink| {
            forward_one(fwd, now, ing, &mut buf, f, sink).unwrap()
        };
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::Sent(_)));
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::Sent(_)));
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::Sent(_)));
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::Dropped(_)));
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::BadSpan(_)));
        assert!(matches!(run(&mut fwd, &mut sink), Outcome::BadSpan(_)));
        assert_eq!(sink.ports[0], (PortId(3), vec![128, 129, 130, 131]));
        assert_eq!(sink.ports[1], (PortId(2), vec![128, 129]));
        assert_eq!(sink.ports.len(), 2);
        assert_eq!(sink.underlay[0].0, SocketAddr::new(remote, 8472));
        assert_eq!(sink.underlay[0].1, 40000);
        assert_eq!(sink.underlay[0].2, (120..128).collect::<Vec<u8>>());
    }

    /// A forwarder that knows no offloads (the trait's default `process_with`) and
    /// sends every plain frame to the overlay, as the core does for a remote pod.
    struct ToOverlay(usize);
    impl Forwarder for ToOverlay {
        fn process(&mut self, _: Instant, _: Ingress, _: &mut [u8], frame: Span) -> Action {
            self.0 += 1;
            Action::Encap(Encapsulated {
                node: NodeId(2),
                remote: "192.168.50.12".parse().unwrap(),
                remote_port: 8472,
                source_port: 40000,
                outer_frame: frame,
                udp_payload: frame,
            })
        }
    }

    /// `frame` read from port 1 with `hdr`, through `fwd`, out of `egress`.
    fn forward_read<F: Forwarder, E: Egress>(
        fwd: &mut F,
        frame: &[u8],
        hdr: VnetHdr,
        egress: &mut E,
    ) -> io::Result<Outcome> {
        let (mut buf, span) = placed(frame);
        let mut scratch = vec![0u8; BUFFER_LEN];
        let now = Instant::from_millis(0);
        let port = Ingress::Port(PortId(1));
        forward_frame(fwd, now, port, &mut buf, span, hdr, &mut scratch, egress)
    }

    fn placed(frame: &[u8]) -> (Vec<u8>, Span) {
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(frame);
        (
            buf,
            Span {
                start: HEADROOM,
                len: frame.len(),
            },
        )
    }

    #[test]
    fn offloaded_frames_for_the_overlay_are_segmented_in_software() {
        use crate::dataplane::gso::tests::{l4_verifies, partial_tcp};
        let payload: Vec<u8> = (0..4500u32).map(|i| (i * 13) as u8).collect();
        let (frame, hdr) = partial_tcp(&payload, 0x18);
        let mut fwd = ToOverlay(0);
        let mut sink = Sink::default();
        let out = forward_read(&mut fwd, &frame, hdr, &mut sink).unwrap();
        assert!(matches!(out, Outcome::Sent(Action::Encap(_))));
        assert_eq!(fwd.0, 5, "4500 bytes in segments of 1000");
        assert_eq!(sink.underlay.len(), 5);
        let mut joined = Vec::new();
        for (_, _, seg) in &sink.underlay {
            assert!(seg.len() <= 14 + 40 + 1000);
            assert!(l4_verifies(seg));
            joined.extend_from_slice(&seg[54..]);
        }
        assert_eq!(joined, payload);

        // A partial checksum alone is completed in place and sent as one frame.
        let (frame, mut hdr) = partial_tcp(&payload[..900], 0x18);
        hdr.gso_type = 0;
        let mut sink = Sink::default();
        let out = forward_read(&mut fwd, &frame, hdr, &mut sink).unwrap();
        assert!(matches!(out, Outcome::Sent(_)));
        assert_eq!(sink.underlay.len(), 1);
        assert!(l4_verifies(&sink.underlay[0].2));
    }

    /// A forwarder with overlay GSO: encapsulates offloaded frames as they are.
    struct EncapsulatesOnce(ToOverlay);
    impl Forwarder for EncapsulatesOnce {
        fn process(&mut self, now: Instant, i: Ingress, b: &mut [u8], frame: Span) -> Action {
            self.0.process(now, i, b, frame)
        }
        fn process_with(
            &mut self,
            now: Instant,
            i: Ingress,
            b: &mut [u8],
            frame: Span,
            _: FrameMeta,
        ) -> Action {
            self.0.process(now, i, b, frame)
        }
    }

    #[test]
    fn an_offloaded_frame_encapsulated_once_goes_to_the_offloaded_underlay_path() {
        use crate::dataplane::gso::tests::partial_tcp;
        #[derive(Default)]
        struct Offloads(Vec<(VnetHdr, usize)>, Sink);
        impl Egress for Offloads {
            fn to_port(&mut self, port: PortId, frame: &[u8]) -> io::Result<()> {
                self.1.to_port(port, frame)
            }
            fn to_underlay(&mut self, r: SocketAddr, sp: u16, p: &[u8]) -> io::Result<()> {
                self.1.to_underlay(r, sp, p)
            }
            fn to_underlay_offloaded(
                &mut self,
                _: SocketAddr,
                _: u16,
                hdr: &VnetHdr,
                p: &[u8],
            ) -> io::Result<()> {
                self.0.push((*hdr, p.len()));
                Ok(())
            }
        }
        let (frame, hdr) = partial_tcp(&[7; 3000], 0x18);
        let mut fwd = EncapsulatesOnce(ToOverlay(0));
        let mut out = Offloads::default();
        let r = forward_read(&mut fwd, &frame, hdr, &mut out);
        assert!(matches!(r, Ok(Outcome::Sent(Action::Encap(_)))));
        assert_eq!((fwd.0 .0, out.0.as_slice()), (1, &[(hdr, frame.len())][..]));
        assert!(out.1.underlay.is_empty(), "not segmented before the core");
        // An egress without the offloaded path refuses rather than sending it whole.
        let mut plain = Sink::default();
        let r = forward_read(&mut fwd, &frame, hdr, &mut plain);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::Unsupported);
        assert!(plain.underlay.is_empty());
    }

    #[test]
    fn delivered_offloaded_frames_keep_their_header() {
        use crate::dataplane::gso::tests::partial_tcp;
        /// Delivers everything to port 2 (knows offloads).
        struct Local;
        impl Forwarder for Local {
            fn process(&mut self, _: Instant, _: Ingress, _: &mut [u8], frame: Span) -> Action {
                Action::Deliver {
                    port: PortId(2),
                    frame,
                }
            }
            fn process_with(
                &mut self,
                now: Instant,
                ingress: Ingress,
                buf: &mut [u8],
                frame: Span,
                _: FrameMeta,
            ) -> Action {
                self.process(now, ingress, buf, frame)
            }
        }
        #[derive(Default)]
        struct HdrSink(Vec<(PortId, VnetHdr, usize)>);
        impl Egress for HdrSink {
            fn to_port(&mut self, port: PortId, frame: &[u8]) -> io::Result<()> {
                self.0.push((port, VnetHdr::NONE, frame.len()));
                Ok(())
            }
            fn to_port_offloaded(
                &mut self,
                port: PortId,
                hdr: &VnetHdr,
                frame: &[u8],
            ) -> io::Result<()> {
                self.0.push((port, *hdr, frame.len()));
                Ok(())
            }
            fn to_underlay(&mut self, _: SocketAddr, _: u16, _: &[u8]) -> io::Result<()> {
                unreachable!()
            }
        }
        let (frame, hdr) = partial_tcp(&[7u8; 30_000], 0x10);
        let mut sink = HdrSink::default();
        let out = forward_read(&mut Local, &frame, hdr, &mut sink).unwrap();
        assert!(matches!(out, Outcome::Sent(_)));
        assert_eq!(sink.0, vec![(PortId(2), hdr, frame.len())]);
        // An egress that cannot write offloaded frames refuses rather than writing
        // a super-frame without its header.
        let err = forward_read(&mut Local, &frame, hdr, &mut Sink::default());
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn frames_are_read_with_headroom_and_written_with_a_vnet_header() {
        use crate::dataplane::tap::{Tap, TapOptions};
        use crate::netlink::netns;
        if !netns::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // In a private netns: an up TAP with an address; a UDP datagram to a
        // neighbour makes the kernel send an ARP request out of the TAP.
        netns::run_in_new_netns(|| {
            let tap = Tap::create("pwfwd0", TapOptions::default())?;
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(args)
                    .status()?
                    .success();
                assert!(ok, "ip {args:?}");
                io::Result::Ok(())
            };
            ip(&["link", "set", "pwfwd0", "up"])?;
            ip(&["addr", "add", "10.99.0.1/24", "dev", "pwfwd0"])?;
            let sock = std::net::UdpSocket::bind("10.99.0.1:0")?;
            sock.send_to(b"x", "10.99.0.2:9")?;
            let q = &tap.queues()[0];
            let mut buf = vec![0u8; BUFFER_LEN];
            let mut got = None;
            for _ in 0..200 {
                if let Some((span, _)) = read_frame(q, &mut buf)? {
                    // Skip IPv6 router/MLD chatter; wait for the ARP request.
                    if buf[span.range()].get(12..14) == Some(&[0x08, 0x06]) {
                        got = Some(span);
                        break;
                    }
                    continue;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let span = got.expect("no frame from the kernel");
            assert_eq!(span.start, HEADROOM);
            let frame = &buf[span.range()];
            assert_eq!(&frame[0..6], &[0xff; 6], "broadcast ARP request");
            assert_eq!(&frame[38..42], &[10, 99, 0, 2], "ARP target");
            // Writing a frame back is accepted by the device.
            write_frame(q, frame)?;
            Ok(())
        })
        .unwrap();
    }
}

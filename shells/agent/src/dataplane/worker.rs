//! A dataplane worker: one OS thread that owns a [`Forwarder`] (the core datapath)
//! and a set of TAP queues and the underlay socket, and moves every frame through
//! [`forward_frame`] (frames from the underlay through the core one by one, delivered
//! TCP segments coalesced).
//!
//! Design note: the datapath is single-owner, allocation-free state, so it lives on
//! its worker thread and is never locked. Everything that changes it — a port added
//! by ADD, removed by DEL, a route or VTEP from a cluster reload — is sent as a
//! [`Command`] over a channel and applied on the worker between frames
//! ([`Command::Apply`] carries a closure over the forwarder, so the control API of the
//! datapath is used as is, without a mirrored message enum). An eventfd wakes the
//! `epoll` wait when commands arrive. Reads are batched per ready queue (level-
//! triggered, at most [`BATCH`] frames per queue per turn, so one busy pod cannot
//! starve the others). The clock is read once per turn and passed to the core.
//! The underlay socket is read with `recvmmsg` (UDP GRO reads are split back into
//! datagrams) and written through a [`SendBatch`]: encapsulated payloads are queued
//! and flushed with `sendmmsg`/UDP GSO after each ready source ([`super::udp`]).

use std::collections::HashMap;
use std::io;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use podwire_core::datapath::{Action, Ingress, Span};
use podwire_core::ids::PortId;
use podwire_core::Instant;

use super::coalesce::{Coalescer, PortWriter, Written};
use super::forward::{
    forward_frame, perform, read_frame, write_frame, write_frame_with, write_parts, Egress,
    Forwarder, Outcome, BUFFER_LEN, HEADROOM,
};
use super::gso::{self, SoftError};
use super::udp::{RecvBatch, SendBatch, MAX_BATCH, VXLAN_HEADER_LEN};
use super::vnet::VnetHdr;

/// Frames read from one queue per turn.
pub const BATCH: usize = 64;

const WAKE: u64 = 1 << 32;
const UNDERLAY: u64 = 1 << 33;

/// A change for the worker, applied between frames.
pub enum Command<F> {
    /// Start reading and writing a port's TAP queue.
    AddPort(PortId, OwnedFd),
    /// Stop using a port (its queue is closed).
    RemovePort(PortId),
    /// Run a closure on the forwarder (datapath control: ports, routes, VTEPs...).
    Apply(Box<dyn FnOnce(&mut F) + Send>),
    /// Stop the worker and hand the forwarder back.
    Stop,
}

/// Frame counters of a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames read from ports and the underlay.
    pub received: u64,
    /// Actions carried out.
    pub sent: u64,
    /// Frames the core dropped (reasons are counted in the core).
    pub dropped: u64,
    /// Writes that failed, or actions naming a port the worker does not have.
    pub egress_errors: u64,
    /// Actions with out-of-buffer spans (a datapath bug).
    pub bad_spans: u64,
    /// Frames from the overlay written to a pod inside a coalesced super-frame.
    pub coalesced: u64,
}

/// The handle of a running worker.
pub struct WorkerHandle<F> {
    tx: mpsc::Sender<Command<F>>,
    wake: std::sync::Arc<EventFd>,
    thread: Option<JoinHandle<io::Result<(F, Counters)>>>,
}

impl<F: Forwarder + Send + 'static> WorkerHandle<F> {
    /// Sends a command and wakes the worker.
    pub fn send(&self, command: Command<F>) -> io::Result<()> {
        self.tx
            .send(command)
            .map_err(|_| io::Error::other("dataplane worker stopped"))?;
        self.wake.write(1).map_err(io::Error::from)?;
        Ok(())
    }

    /// Stops the worker; returns the forwarder and the counters.
    pub fn stop(mut self) -> io::Result<(F, Counters)> {
        let _ = self.send(Command::Stop);
        self.thread
            .take()
            .ok_or_else(|| io::Error::other("already stopped"))?
            .join()
            .map_err(|_| io::Error::other("dataplane worker panicked"))?
    }
}

struct PortsEgress<'a> {
    ports: &'a HashMap<PortId, OwnedFd>,
    underlay: Option<&'a mut SendBatch>,
}

impl PortsEgress<'_> {
    /// The underlay send batch (payloads are queued there, flushed by the worker).
    fn batch(&mut self) -> io::Result<&mut SendBatch> {
        self.underlay
            .as_deref_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no underlay socket"))
    }
}

impl Egress for PortsEgress<'_> {
    fn to_port(&mut self, port: PortId, frame: &[u8]) -> io::Result<()> {
        let q = self.ports.get(&port).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no port {}", port.0))
        })?;
        write_frame(q, frame)
    }

    fn to_port_offloaded(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> io::Result<()> {
        let q = self.ports.get(&port).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no port {}", port.0))
        })?;
        write_frame_with(q, hdr, frame)
    }

    fn to_underlay(
        &mut self,
        remote: SocketAddr,
        _source_port: u16,
        payload: &[u8],
    ) -> io::Result<()> {
        // A socket bound to the VXLAN port sends from that port; per-flow source
        // ports (ECMP entropy) need one socket per port or a raw socket: later.
        // Queued here, sent by the worker's flush (`sendmmsg`, UDP GSO).
        let s = self.batch()?;
        s.push(remote, payload);
        Ok(())
    }

    fn to_underlay_offloaded(
        &mut self,
        remote: SocketAddr,
        _source_port: u16,
        hdr: &VnetHdr,
        payload: &[u8],
    ) -> io::Result<()> {
        let s = self.batch()?;
        let invalid = |e: SoftError| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"));
        if hdr.is_gso() {
            return s
                .push_segments(remote, payload, hdr)
                .map(|_| ())
                .map_err(invalid);
        }
        // A partial checksum only: complete it in the queued copy.
        let room = s.reserve(payload.len());
        room.copy_from_slice(payload);
        match room.get_mut(VXLAN_HEADER_LEN..) {
            Some(inner) => gso::complete_checksum(inner, hdr).map_err(invalid)?,
            None => return Err(invalid(SoftError::Malformed)),
        }
        s.commit(remote, payload.len());
        Ok(())
    }
}

/// Starts a worker thread around `forwarder`, with an optional underlay UDP socket
/// (bound to the node IP and the VXLAN port). After traffic the worker keeps polling
/// its queues without sleeping for `busy_poll` (zero: it sleeps at once).
pub fn spawn<F: Forwarder + Send + 'static>(
    forwarder: F,
    underlay: Option<UdpSocket>,
    busy_poll: std::time::Duration,
) -> io::Result<WorkerHandle<F>> {
    let (tx, rx) = mpsc::channel();
    let wake = std::sync::Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?,
    );
    let wake2 = wake.clone();
    if let Some(u) = &underlay {
        u.set_nonblocking(true)?;
        super::udp::prepare(u);
    }
    let thread = std::thread::Builder::new()
        .name("podwire-dataplane".into())
        .spawn(move || run(forwarder, underlay, busy_poll, rx, &wake2))?;
    Ok(WorkerHandle {
        tx,
        wake,
        thread: Some(thread),
    })
}

fn run<F: Forwarder>(
    mut fwd: F,
    underlay: Option<UdpSocket>,
    busy_poll: std::time::Duration,
    rx: mpsc::Receiver<Command<F>>,
    wake: &EventFd,
) -> io::Result<(F, Counters)> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
    epoll
        .add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
        .map_err(io::Error::from)?;
    if let Some(u) = &underlay {
        epoll
            .add(u.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, UNDERLAY))
            .map_err(io::Error::from)?;
    }
    let mut ports: HashMap<PortId, OwnedFd> = HashMap::new();
    let mut counters = Counters::default();
    let mut buf = vec![0u8; BUFFER_LEN];
    // Underlay I/O is batched: datagrams are read with `recvmmsg`, and the payloads
    // the core encapsulates are queued and flushed with `sendmmsg` after each ready
    // source (or every `MAX_BATCH` payloads), with UDP GSO where the kernel has it.
    let mut recv = RecvBatch::default();
    let mut coalescer = Coalescer::default();
    let mut send = underlay
        .as_ref()
        .map_or_else(|| SendBatch::new(false), SendBatch::for_socket);
    // Software segmentation of GSO frames for the overlay writes segments here.
    let mut scratch = vec![0u8; BUFFER_LEN];
    let mut events = vec![EpollEvent::empty(); 64];
    let start = std::time::Instant::now();
    let mut last_tick = start;
    // Busy polling: a sleeping worker is woken by the kernel (an inter-processor
    // interrupt, and on a VM an exit to the hypervisor) for every packet that finds
    // it asleep; polling for a while after traffic saves that on a request/response
    // path, and costs the core it spins on.
    let mut last_busy = std::time::Instant::now();
    loop {
        let polling = !busy_poll.is_zero() && last_busy.elapsed() < busy_poll;
        let timeout = if polling { 0u16 } else { 1000u16 };
        let n = match epoll.wait(&mut events, EpollTimeout::from(timeout)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 && polling {
            std::hint::spin_loop();
            continue;
        }
        if n > 0 {
            last_busy = std::time::Instant::now();
        }
        let now = Instant::from_micros(start.elapsed().as_micros() as i64);
        if last_tick.elapsed() >= std::time::Duration::from_secs(1) {
            last_tick = std::time::Instant::now();
            fwd.tick(now);
        }
        for ev in &events[..n] {
            match ev.data() {
                WAKE => {
                    let _ = wake.read();
                    while let Ok(cmd) = rx.try_recv() {
                        match cmd {
                            Command::AddPort(id, q) => {
                                epoll
                                    .add(
                                        q.as_fd(),
                                        EpollEvent::new(EpollFlags::EPOLLIN, u64::from(id.0)),
                                    )
                                    .map_err(io::Error::from)?;
                                if let Some(old) = ports.insert(id, q) {
                                    let _ = epoll.delete(old.as_fd());
                                }
                            }
                            Command::RemovePort(id) => {
                                if let Some(q) = ports.remove(&id) {
                                    let _ = epoll.delete(q.as_fd());
                                }
                            }
                            Command::Apply(f) => f(&mut fwd),
                            Command::Stop => return Ok((fwd, counters)),
                        }
                    }
                }
                UNDERLAY => {
                    let Some(u) = &underlay else { continue };
                    // Up to BATCH / MAX_BATCH reads, like a port's batch of frames.
                    for _ in 0..BATCH.div_ceil(MAX_BATCH) {
                        let n = match recv.recv(u) {
                            Ok(n) => n,
                            Err(_) => break,
                        };
                        for i in 0..n {
                            let mut egress = PortsEgress {
                                ports: &ports,
                                underlay: Some(&mut send),
                            };
                            from_underlay(
                                &mut fwd,
                                now,
                                &mut recv,
                                i,
                                &mut coalescer,
                                &mut egress,
                                &mut counters,
                            );
                        }
                        // The receive buffers are reused by the next read.
                        let mut taps = TapWriter { ports: &ports };
                        count_written(&mut counters, coalescer.flush(&recv, &mut taps));
                        if n < MAX_BATCH {
                            break;
                        }
                    }
                    flush(&mut send, u, &mut counters);
                }
                token => {
                    let id = PortId(token as u16);
                    for _ in 0..BATCH {
                        let Some(q) = ports.get(&id) else { break };
                        let (span, hdr) = match read_frame(q, &mut buf) {
                            Ok(Some(s)) => s,
                            Ok(None) => break,
                            Err(_) => break,
                        };
                        counters.received += 1;
                        let mut egress = PortsEgress {
                            ports: &ports,
                            underlay: underlay.as_ref().map(|_| &mut send),
                        };
                        tally(
                            &mut counters,
                            forward_frame(
                                &mut fwd,
                                now,
                                Ingress::Port(id),
                                &mut buf,
                                span,
                                hdr,
                                &mut scratch,
                                &mut egress,
                            ),
                        );
                        if send.len() >= MAX_BATCH {
                            if let Some(u) = &underlay {
                                flush(&mut send, u, &mut counters);
                            }
                        }
                    }
                    if let Some(u) = &underlay {
                        flush(&mut send, u, &mut counters);
                    }
                }
            }
        }
    }
}

/// Runs datagram `i` of the last underlay read through the core. A UDP GRO read
/// holds several datagrams back to back; each goes through the core on its own, in
/// place: the core sees a window of the buffer from [`HEADROOM`] bytes before the
/// datagram to its end (it cannot write into the next one), and the headroom bytes —
/// the tail of the previous datagram — are restored after it. Frames delivered to a pod are
/// handed to the coalescer (TCP segments of one flow become one TAP write); every
/// other action is performed at once.
#[allow(clippy::too_many_arguments)]
fn from_underlay<F: Forwarder>(
    fwd: &mut F,
    now: Instant,
    recv: &mut RecvBatch,
    i: usize,
    coalescer: &mut Coalescer,
    egress: &mut PortsEgress<'_>,
    counters: &mut Counters,
) {
    let Some(d) = recv.datagram(i) else { return };
    let ingress = Ingress::Underlay {
        source: d.from.ip(),
        source_port: d.from.port(),
    };
    let segment = match d.segment {
        0 => d.len,
        s => s.min(d.len),
    };
    let end = HEADROOM + d.len;
    let mut at = HEADROOM;
    let mut saved = [0u8; HEADROOM];
    while at < end && segment > 0 {
        let len = segment.min(end - at);
        let base = at - HEADROOM;
        counters.received += 1;
        let buf = recv.buf_mut(i);
        // The last datagram may use the buffer's slack (a reply can be longer than
        // what it answers); the others must not reach into the next.
        let window_end = if at + len == end { buf.len() } else { at + len };
        let Some(window) = buf.get_mut(base..window_end) else {
            counters.bad_spans += 1;
            return;
        };
        saved.copy_from_slice(&window[..HEADROOM]);
        let frame = Span {
            start: HEADROOM,
            len,
        };
        let action = fwd.process(now, ingress, window, frame);
        let delivered = match action {
            Action::Deliver { port, frame: f }
                if f.start >= HEADROOM && f.start.saturating_add(f.len) <= HEADROOM + len =>
            {
                Some((port, f))
            }
            _ => None,
        };
        if delivered.is_none() {
            tally(
                counters,
                perform(action, ingress, window, &VnetHdr::NONE, egress),
            );
        }
        window[..HEADROOM].copy_from_slice(&saved);
        if let Some((port, f)) = delivered {
            counters.sent += 1;
            let span = Span {
                start: base + f.start,
                len: f.len,
            };
            let mut taps = TapWriter {
                ports: egress.ports,
            };
            count_written(counters, coalescer.push(&*recv, i, port, span, &mut taps));
        }
        at += len;
    }
}

/// Writes coalesced frames to the ports' TAP queues.
struct TapWriter<'a> {
    ports: &'a HashMap<PortId, OwnedFd>,
}

impl PortWriter for TapWriter<'_> {
    fn write_parts(&mut self, port: PortId, hdr: &VnetHdr, parts: &[IoSlice]) -> io::Result<()> {
        let q = self.ports.get(&port).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no port {}", port.0))
        })?;
        write_parts(q, hdr, parts)
    }
}

/// Counts a coalescer write (its frames were counted as sent when delivered).
fn count_written(c: &mut Counters, w: Written) {
    c.egress_errors += w.failed;
    c.coalesced += w.coalesced;
}

/// Sends the queued underlay payloads; each datagram that could not be sent counts
/// as an egress error (its action was counted as sent when it was queued).
fn flush(send: &mut SendBatch, socket: &UdpSocket, c: &mut Counters) {
    if send.is_empty() {
        return;
    }
    c.egress_errors += send.flush(socket).failed;
}

fn tally(c: &mut Counters, r: io::Result<Outcome>) {
    match r {
        Ok(Outcome::Sent(_)) => c.sent += 1,
        Ok(Outcome::Dropped(_)) => c.dropped += 1,
        Ok(Outcome::BadSpan(_)) => c.bad_spans += 1,
        Err(_) => c.egress_errors += 1,
    }
}

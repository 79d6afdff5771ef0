//! The board as a node: the core `Datapath` between the board's Ethernet (a raw VXLAN
//! underlay with the node's InternalIP) and the board-local pod's virtual Ethernet.
//!
//! Design note: one task owns the datapath and both links, so the core needs no lock.
//! It waits for a frame from either side, copies it into its one frame buffer after the
//! datapath's headroom, lets the datapath decide ([`Datapath::process`]) and carries
//! the action out: `Deliver` to the pod (or out of the underlay), `Encap` as the whole
//! outer frame on the Ethernet, `Reply` back where the frame came from, `Drop` counted
//! by the datapath. The task never waits for room on an output: a frame for a link
//! whose queue is full is dropped and counted, as a NIC drops on a full ring. (Waiting
//! would deadlock: the pod's stack only takes a frame when it can also queue one, and
//! the task that would make it room is this one.) Drops are logged when their count
//! reaches a power of two, so a flood does not become a flood of logs. ARP requests for the node's own underlay address are answered
//! before the datapath sees them ([`arp`]). The underlay is any embassy-net driver (the
//! LAN9118's channel, a TAP on the `host` board), so this module is board-independent;
//! the board spawns a task that calls [`run`].

mod arp;
mod tables;

use core::future::poll_fn;
use core::task::{Context, Poll};

use embassy_futures::select::{select, Either};
use embassy_net_driver::{Driver, RxToken, TxToken};
use embassy_net_driver_channel::RxRunner;
use podwire_core::datapath::{Action, Datapath, Ingress, Span, HEADROOM};
use podwire_core::ids::PortId;
use podwire_core::wire::EthernetAddress;
use podwire_core::Instant;
use static_cell::ConstStaticCell;

use crate::pod::{PodLink, FRAME as POD_FRAME};
use crate::{config, log};
use tables::{POD_PORT, UNDERLAY_PORT};

/// The largest underlay frame: Ethernet header + underlay MTU.
const UNDERLAY_FRAME: usize = config::UNDERLAY_MTU as usize + 14;
/// The frame buffer: the datapath's headroom, then the largest frame.
static BUFFER: ConstStaticCell<[u8; HEADROOM + UNDERLAY_FRAME]> =
    ConstStaticCell::new([0; HEADROOM + UNDERLAY_FRAME]);

/// Frames the node dropped itself (the datapath counts its own drops).
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "host"), derive(defmt::Format))]
struct Dropped {
    /// Longer than the frame buffer.
    too_long: u32,
    /// The pod's receive queue was full.
    pod_full: u32,
    /// The Ethernet's transmit queue was full.
    underlay_full: u32,
}

/// An output link had no room for a frame.
#[derive(Debug, Clone, Copy)]
enum Full {
    Pod,
    Underlay,
}

impl Dropped {
    /// Counts one drop; true when the count reaches a power of two (time to log).
    fn count(&mut self, counter: fn(&mut Dropped) -> &mut u32) -> bool {
        let n = counter(self);
        *n = n.wrapping_add(1);
        n.is_power_of_two()
    }
}

/// Runs the node: forwards between `underlay` and the pod for ever.
pub async fn run<D: Driver>(mut underlay: D, pod: PodLink) -> ! {
    let dp = tables::datapath();
    let buf = BUFFER.take();
    let (pod_state, mut pod_rx, mut pod_tx) = pod.split();
    pod_state.set_link_state(embassy_net_driver::LinkState::Up);
    let underlay_mac = EthernetAddress(config::UNDERLAY_MAC);
    let mut dropped = Dropped::default();
    log::info!(
        "node {}: underlay {}, pod {}",
        config::NODE,
        config::UNDERLAY_IP,
        config::POD_IP
    );
    loop {
        let input = select(
            poll_fn(|cx| match underlay.receive(cx) {
                Some((rx, _)) => Poll::Ready(rx.consume(|frame| copy_in(buf, frame))),
                None => Poll::Pending,
            }),
            pod_tx.tx_buf(),
        )
        .await;
        let (port, len) = match input {
            Either::First(len) => (UNDERLAY_PORT, len),
            Either::Second(frame) => {
                let len = copy_in(buf, frame);
                pod_tx.tx_done();
                (POD_PORT, len)
            }
        };
        let Some(len) = len else {
            if dropped.count(|d| &mut d.too_long) {
                log::warn!(
                    "frames longer than {} bytes dropped: {:?}",
                    UNDERLAY_FRAME,
                    dropped
                );
            }
            continue;
        };
        let frame = Span {
            start: HEADROOM,
            len,
        };
        let now = Instant::from_micros(embassy_time::Instant::now().as_micros() as i64);
        let arp_reply = if port == UNDERLAY_PORT {
            arp::answer(&mut buf[frame.range()], config::UNDERLAY_IP, underlay_mac)
        } else {
            None
        };
        let (out, frame) = match arp_reply {
            Some(len) => (
                UNDERLAY_PORT,
                Span {
                    start: HEADROOM,
                    len,
                },
            ),
            None => match dp.process(now, Ingress::Port(port), buf, frame) {
                Action::Deliver { port, frame } => (port, frame),
                Action::Reply { frame } => (port, frame),
                Action::Encap(encapsulated) => (UNDERLAY_PORT, encapsulated.outer_frame),
                Action::Drop(reason) => {
                    let count = dp.drops().get(reason);
                    if count.is_power_of_two() {
                        log::info!(
                            "dropped from port {}: {:?} ({} so far)",
                            port.0,
                            reason,
                            count
                        );
                    }
                    expire(dp, now);
                    continue;
                }
            },
        };
        let sent = poll_fn(|cx| {
            Poll::Ready(send(
                cx,
                &mut underlay,
                &mut pod_rx,
                out,
                &buf[frame.range()],
            ))
        })
        .await;
        let logged = match sent {
            Ok(()) => false,
            Err(Full::Pod) => dropped.count(|d| &mut d.pod_full),
            Err(Full::Underlay) => dropped.count(|d| &mut d.underlay_full),
        };
        if logged {
            log::warn!("output queue full, frames dropped: {:?}", dropped);
        }
        expire(dp, now);
    }
}

/// Copies `frame` into the buffer after the headroom; `None` if it does not fit.
fn copy_in(buf: &mut [u8], frame: &[u8]) -> Option<usize> {
    let room = buf.get_mut(HEADROOM..HEADROOM + frame.len())?;
    room.copy_from_slice(frame);
    Some(frame.len())
}

/// Sends `frame` out of local port `out` if its queue has room, without waiting.
fn send<D: Driver>(
    cx: &mut Context<'_>,
    underlay: &mut D,
    pod: &mut RxRunner<'static, POD_FRAME>,
    out: PortId,
    frame: &[u8],
) -> Result<(), Full> {
    if out == POD_PORT {
        let room = pod.try_rx_buf().ok_or(Full::Pod)?;
        // The datapath keeps frames to the pod within its MTU.
        let Some(room) = room.get_mut(..frame.len()) else {
            return Err(Full::Pod);
        };
        room.copy_from_slice(frame);
        pod.rx_done(frame.len());
        Ok(())
    } else {
        let token = underlay.transmit(cx).ok_or(Full::Underlay)?;
        token.consume(frame.len(), |room| room.copy_from_slice(frame));
        Ok(())
    }
}

/// Expires a few idle connections per frame, so that conntrack never fills with dead
/// ones.
fn expire(dp: &mut Datapath<'static>, now: Instant) {
    dp.conntrack_mut().expire(now, 4);
}

//! The board as a node: the core `Datapath` between the board's Ethernet (a raw VXLAN
//! underlay with the node's InternalIP) and the board-local pod's virtual Ethernet.
//!
//! Design note: one task owns the datapath and both links, so the core needs no lock.
//! It waits for a frame from either side, copies it into its one frame buffer after the
//! datapath's headroom, lets the datapath decide ([`Datapath::process`]) and carries
//! the action out: `Deliver` to the pod (or out of the underlay), `Encap` as the whole
//! outer frame on the Ethernet, `Reply` back where the frame came from, `Drop` counted
//! by the datapath. ARP requests for the node's own underlay address are answered
//! before the datapath sees them ([`arp`]). The underlay is any embassy-net driver (the
//! LAN9118's channel, a TAP on the `host` board), so this module is board-independent;
//! the board spawns a task that calls [`run`].

mod arp;
mod tables;

use core::future::poll_fn;
use core::task::Poll;

use embassy_futures::select::{select, Either};
use embassy_net_driver::{Driver, RxToken, TxToken};
use podwire_core::datapath::{Action, Datapath, Ingress, Span, HEADROOM};
use podwire_core::ids::PortId;
use podwire_core::wire::EthernetAddress;
use podwire_core::Instant;
use static_cell::ConstStaticCell;

use crate::pod::PodLink;
use crate::{config, log};
use tables::{POD_PORT, UNDERLAY_PORT};

/// The largest underlay frame: Ethernet header + underlay MTU.
const UNDERLAY_FRAME: usize = config::UNDERLAY_MTU as usize + 14;
/// The frame buffer: the datapath's headroom, then the largest frame.
static BUFFER: ConstStaticCell<[u8; HEADROOM + UNDERLAY_FRAME]> =
    ConstStaticCell::new([0; HEADROOM + UNDERLAY_FRAME]);

/// Runs the node: forwards between `underlay` and the pod for ever.
pub async fn run<D: Driver>(mut underlay: D, pod: PodLink) -> ! {
    let dp = tables::datapath();
    let buf = BUFFER.take();
    let (pod_state, mut pod_rx, mut pod_tx) = pod.split();
    pod_state.set_link_state(embassy_net_driver::LinkState::Up);
    let underlay_mac = EthernetAddress(config::UNDERLAY_MAC);
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
            log::warn!(
                "frame longer than {} bytes from port {} dropped",
                UNDERLAY_FRAME,
                port.0
            );
            continue;
        };
        let frame = Span {
            start: HEADROOM,
            len,
        };
        if port == UNDERLAY_PORT {
            if let Some(reply) =
                arp::answer(&mut buf[frame.range()], config::UNDERLAY_IP, underlay_mac)
            {
                send_underlay(&mut underlay, &buf[HEADROOM..HEADROOM + reply]).await;
                continue;
            }
        }
        let now = Instant::from_micros(embassy_time::Instant::now().as_micros() as i64);
        match dp.process(now, Ingress::Port(port), buf, frame) {
            Action::Deliver { port: out, frame } => {
                send(&mut underlay, &mut pod_rx, out, &buf[frame.range()]).await
            }
            Action::Reply { frame } => {
                send(&mut underlay, &mut pod_rx, port, &buf[frame.range()]).await
            }
            Action::Encap(encapsulated) => {
                send_underlay(&mut underlay, &buf[encapsulated.outer_frame.range()]).await
            }
            Action::Drop(reason) => log::info!("dropped from port {}: {:?}", port.0, reason),
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

/// Sends `frame` out of local port `out`.
async fn send<D: Driver>(
    underlay: &mut D,
    pod: &mut embassy_net_driver_channel::RxRunner<'static, { crate::pod::FRAME }>,
    out: PortId,
    frame: &[u8],
) {
    if out == UNDERLAY_PORT {
        send_underlay(underlay, frame).await;
    } else if out == POD_PORT {
        let room = pod.rx_buf().await;
        match room.get_mut(..frame.len()) {
            Some(room) => {
                room.copy_from_slice(frame);
                pod.rx_done(frame.len());
            }
            None => log::warn!(
                "frame of {} bytes longer than the pod's MTU dropped",
                frame.len()
            ),
        }
    }
}

/// Sends `frame` out of the board's Ethernet.
async fn send_underlay<D: Driver>(underlay: &mut D, frame: &[u8]) {
    poll_fn(|cx| match underlay.transmit(cx) {
        Some(token) => {
            token.consume(frame.len(), |room| room.copy_from_slice(frame));
            Poll::Ready(())
        }
        None => Poll::Pending,
    })
    .await
}

/// Expires a few idle connections per frame, so that conntrack never fills with dead
/// ones.
fn expire(dp: &mut Datapath<'static>, now: Instant) {
    dp.conntrack_mut().expire(now, 4);
}

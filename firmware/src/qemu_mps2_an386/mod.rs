//! The `qemu-mps2-an386` board: QEMU's model of Arm's MPS2 board with the AN386 image, a
//! Cortex-M4F at 25 MHz with 4 MiB code and 4 MiB data SRAM and a LAN9118 Ethernet.
//!
//! Design note: everything the board needs that QEMU models is driven here by our own
//! small drivers — the clock ([`systick`], the embassy-time driver) and the Ethernet
//! ([`lan9118`], bridged to an embassy-net driver channel in the [`ethernet`] task, the
//! node's underlay). Logs are defmt frames over semihosting (decoded by `qemu-run`);
//! a panic logs and ends QEMU with a failure exit status, so a test sees it.

mod lan9118;
mod systick;

use cortex_m::peripheral::NVIC;
use cortex_m_rt::exception;
use defmt_semihosting as _;
use embassy_executor::Spawner;
use embassy_futures::select::{select3, Either3};
use embassy_net_driver_channel as ch;
use embassy_time::{Duration, Ticker};
use static_cell::StaticCell;

use crate::pod::{self, PodLink};
use crate::{config, log, node};
use lan9118::{Lan9118, MTU};

/// Frames buffered between the driver and the stack, each way.
const CHANNEL_FRAMES: usize = 4;
/// How often the PHY's link state and the driver's counters are looked at.
const LINK_POLL: Duration = Duration::from_secs(1);

/// Runs the board: clock, Ethernet, stack, services.
pub async fn run(spawner: Spawner) {
    let Some(core) = cortex_m::Peripherals::take() else {
        panic!("the core peripherals are taken once, here");
    };
    systick::start(core.SYST);

    let chip = match Lan9118::new(config::UNDERLAY_MAC) {
        Ok(chip) => chip,
        Err(e) => defmt::panic!("LAN9118: {}", e),
    };
    log::info!("LAN9118 id {=u32:#x}", chip.id());

    static CHANNEL: StaticCell<ch::State<MTU, CHANNEL_FRAMES, CHANNEL_FRAMES>> = StaticCell::new();
    let (channel, device) = ch::new(
        CHANNEL.init(ch::State::new()),
        ch::driver::HardwareAddress::Ethernet(config::UNDERLAY_MAC),
    );
    spawner.spawn(ethernet(chip, channel).expect("the Ethernet task is spawned once"));
    // SAFETY: unmasking the LAN9118's interrupt, whose handler only masks the chip's
    // interrupt enable and wakes a waker (no critical section relies on it being masked).
    unsafe { NVIC::unmask(lan9118::Irq) };
    let pod = pod::start(&spawner);
    spawner.spawn(node_task(device, pod).expect("the node task is spawned once"));
    log::info!("qemu-mps2-an386 board up");
}

/// Moves frames between the LAN9118 and the stack's channel, and follows the link.
#[embassy_executor::task]
async fn ethernet(mut chip: Lan9118, channel: ch::Runner<'static, MTU>) -> ! {
    let (state, mut rx, mut tx) = channel.split();
    let mut link = chip.link_up();
    state.set_link_state(link_state(link));
    log::info!("LAN9118: link {}", if link { "up" } else { "down" });
    let mut ticker = Ticker::every(LINK_POLL);
    let mut reported = chip.stats();
    loop {
        // A frame is taken from the chip only when the stack's channel has room for it;
        // until then it waits in the chip's FIFO (which drops, and counts, when full),
        // and transmission goes on meanwhile.
        let frame_and_room = async {
            chip.wait_rx().await;
            rx.rx_buf().await
        };
        match select3(frame_and_room, tx.tx_buf(), ticker.next()).await {
            Either3::First(buf) => match chip.receive(buf) {
                Ok(len) => rx.rx_done(len),
                Err(reason) => log::warn!("LAN9118: frame dropped: {}", reason),
            },
            Either3::Second(frame) => {
                chip.transmit(frame);
                tx.tx_done();
            }
            Either3::Third(()) => {
                let up = chip.link_up();
                if up != link {
                    link = up;
                    log::info!("LAN9118: link {}", if up { "up" } else { "down" });
                    state.set_link_state(link_state(up));
                }
                let stats = chip.stats();
                if stats.rx_fifo_dropped != reported.rx_fifo_dropped
                    || stats.tx_errored != reported.tx_errored
                {
                    log::warn!("LAN9118: {}", stats);
                }
                reported = stats;
            }
        }
    }
}

fn link_state(up: bool) -> ch::driver::LinkState {
    if up {
        ch::driver::LinkState::Up
    } else {
        ch::driver::LinkState::Down
    }
}

/// The node's datapath between the LAN9118 and the pod.
#[embassy_executor::task]
async fn node_task(underlay: ch::Device<'static, MTU>, pod: PodLink) -> ! {
    node::run(underlay, pod).await
}

/// Every device interrupt lands here (the board has no PAC); the LAN9118's is the one
/// enabled.
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == 13 {
        lan9118::on_interrupt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

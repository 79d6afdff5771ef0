//! The `nucleo-h743zi` board: ST's NUCLEO-H743ZI (STM32H743ZI, Cortex-M7F) with its
//! on-board LAN8742A PHY on RMII, driven by embassy-stm32's Ethernet; embassy-stm32's
//! time driver; defmt over RTT (probe-rs).
//!
//! Design note: embassy-stm32's `Ethernet` is an embassy-net driver, so it is the
//! node's underlay directly, as the TAP is on `host`. The RMII pins are the board's
//! solder-bridge defaults (UM1974): REF_CLK PA1, MDIO PA2, MDC PC1, CRS_DV PA7, RXD0
//! PC4, RXD1 PC5, TX_EN PG11, TXD0 PG13, TXD1 PB13. The clock tree is embassy-stm32's
//! default (HSI, 64 MHz), which the Ethernet MAC accepts (it needs HCLK ≥ 25 MHz). The
//! board has been built, not run: there is no board here.

use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::{bind_interrupts, Config};
use panic_probe as _;
use static_cell::StaticCell;

use crate::pod::{self, PodLink};
use crate::{config, log, node};

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
});

/// The board's Ethernet as embassy-stm32 drives it.
type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

/// Runs the board: clocks, Ethernet, the pod, the node.
pub async fn run(spawner: Spawner) {
    let p = embassy_stm32::init(Config::default());
    static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        config::UNDERLAY_MAC,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );
    let pod = pod::start(&spawner);
    spawner.spawn(node_task(device, pod).expect("the node task is spawned once"));
    log::info!("nucleo-h743zi board up");
}

/// The node's datapath between the board's Ethernet and the pod.
#[embassy_executor::task]
async fn node_task(underlay: Device, pod: PodLink) -> ! {
    node::run(underlay, pod).await
}

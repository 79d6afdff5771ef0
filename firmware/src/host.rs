//! The `host` board: embassy-executor's std platform and a Linux TAP device
//! (embassy-net-tuntap) as the board's Ethernet, to run the application on Linux.
//!
//! Usage: `podwire-firmware [TAP]` (default `tap0`), as root or with CAP_NET_ADMIN in
//! the network namespace the board should appear in; the TAP is created if missing and
//! must be brought up by whoever attaches it (tests/firmware does, inside its netns).

use embassy_executor::Spawner;
use embassy_net_tuntap::TunTapDevice;

use crate::pod::{self, PodLink};
use crate::{config, log, node};

/// Runs the board: the TAP as the underlay, the pod, the node.
pub async fn run(spawner: Spawner) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let name = std::env::args().nth(1).unwrap_or_else(|| "tap0".into());
    let mut device = match TunTapDevice::new(&name) {
        Ok(device) => device,
        Err(e) => {
            ::log::error!("TAP {name}: {e}");
            std::process::exit(1);
        }
    };
    device.set_hardware_address(config::UNDERLAY_MAC);
    let pod = pod::start(&spawner);
    match node_task(device, pod) {
        Ok(token) => spawner.spawn(token),
        Err(_) => unreachable!("the node task is spawned once"),
    }
    log::info!("host board up on {}", name);
}

/// The node's datapath between the TAP and the pod.
#[embassy_executor::task]
async fn node_task(underlay: TunTapDevice, pod: PodLink) -> ! {
    node::run(underlay, pod).await
}

//! The `host` board: embassy-executor's std platform and a Linux TAP device
//! (embassy-net-tuntap) as the board's Ethernet, to run the application on Linux.
//!
//! Usage: `podwire-firmware [TAP]` (default `tap0`), as root or with CAP_NET_ADMIN in
//! the network namespace the board should appear in; the TAP is created if missing and
//! must be brought up by whoever attaches it (tests/firmware does, inside its netns).

use embassy_executor::Spawner;
use embassy_net::{Runner, StackResources};
use embassy_net_tuntap::TunTapDevice;
use static_cell::StaticCell;

use crate::{config, log, pod};

/// Runs the board: the TAP, the stack, the services.
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
    device.set_hardware_address(config::MAC);

    static RESOURCES: StaticCell<StackResources<{ pod::SOCKETS }>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        config::ipv4(),
        RESOURCES.init(StackResources::new()),
        seed(),
    );
    match net(runner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => unreachable!("the network task is spawned once"),
    }
    pod::spawn_services(&spawner, stack);
    log::info!(
        "host board up on {name}: {}/{}",
        config::ADDRESS,
        config::PREFIX_LEN
    );
}

/// A random seed for the stack (TCP initial sequence numbers, ephemeral ports).
fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// The embassy-net stack's runner.
#[embassy_executor::task]
async fn net(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

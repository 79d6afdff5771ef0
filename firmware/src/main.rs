//! podwire-firmware: the embassy shell of podwire. A board joins the cluster as a node;
//! its "pods" are services running on the board.
//!
//! Design note: one module per board behind a feature (`qemu-mps2-an386`,
//! `nucleo-h743zi`, `host`), each
//! exposing the same `run(spawner)`: bring up the clock and the Ethernet, start the
//! board-independent pod ([`pod`]: an embassy-net stack behind a virtual Ethernet) and
//! the node ([`node`]: the core datapath between the Ethernet, a raw VXLAN underlay,
//! and the pod). The `host` board runs the very same application on Linux over a TAP
//! device, so it is tested fast in network namespaces; the QEMU board runs it on a
//! Cortex-M4F against QEMU's LAN9118 model. Logs go through [`log`]'s macros: defmt on the Cortex-M boards,
//! the `log` crate on `host`.
#![cfg_attr(not(feature = "host"), no_std)]
#![cfg_attr(not(feature = "host"), no_main)]

#[cfg(not(any(
    feature = "qemu-mps2-an386",
    feature = "nucleo-h743zi",
    feature = "host"
)))]
compile_error!("select a board: --features qemu-mps2-an386, nucleo-h743zi or host");
#[cfg(any(
    all(feature = "qemu-mps2-an386", feature = "nucleo-h743zi"),
    all(feature = "qemu-mps2-an386", feature = "host"),
    all(feature = "nucleo-h743zi", feature = "host"),
))]
compile_error!("select only one board feature");

mod config;
mod log;
mod node;
mod pod;

#[cfg(feature = "host")]
mod host;
#[cfg(feature = "host")]
use host as board;

#[cfg(feature = "qemu-mps2-an386")]
mod qemu_mps2_an386;
#[cfg(feature = "qemu-mps2-an386")]
use qemu_mps2_an386 as board;

#[cfg(feature = "nucleo-h743zi")]
mod nucleo_h743zi;
#[cfg(feature = "nucleo-h743zi")]
use nucleo_h743zi as board;

#[embassy_executor::main]
async fn main(spawner: embassy_executor::Spawner) {
    board::run(spawner).await;
}

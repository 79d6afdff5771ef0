//! Links the Cortex-M boards: puts the selected board's memory map
//! (`memory-<board>.x`) where cortex-m-rt's `link.x` finds it, as `memory.x`, and links
//! with `link.x` and defmt's `defmt.x`. The `host` board links as an ordinary Linux
//! program.

use std::env;
use std::fs;
use std::path::PathBuf;

/// The Cortex-M boards: their feature's environment variable and memory map.
const BOARDS: [(&str, &[u8]); 2] = [
    (
        "CARGO_FEATURE_QEMU_MPS2_AN386",
        include_bytes!("memory-qemu-mps2-an386.x"),
    ),
    (
        "CARGO_FEATURE_NUCLEO_H743ZI",
        include_bytes!("memory-nucleo-h743zi.x"),
    ),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=memory-qemu-mps2-an386.x");
    println!("cargo:rerun-if-changed=memory-nucleo-h743zi.x");
    for (feature, memory) in BOARDS {
        if env::var_os(feature).is_some() {
            let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
            fs::write(out.join("memory.x"), memory).expect("write memory.x");
            println!("cargo:rustc-link-search={}", out.display());
            println!("cargo:rustc-link-arg-bins=-Tlink.x");
            println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
        }
    }
}

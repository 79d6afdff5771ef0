//! Links the Cortex-M boards: puts the board's `memory.x` where cortex-m-rt's `link.x`
//! finds it and links with `link.x` and defmt's `defmt.x`. The `host` board links as an
//! ordinary Linux program.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=memory.x");
    if env::var_os("CARGO_FEATURE_QEMU_MPS2_AN386").is_some() {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
        println!("cargo:rustc-link-search={}", out.display());
        println!("cargo:rustc-link-arg-bins=-Tlink.x");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}

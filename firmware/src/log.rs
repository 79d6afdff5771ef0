//! One set of logging macros for every board: defmt on the Cortex-M boards (its format
//! strings are a subset of `core::fmt`'s), the `log` crate on `host`. Application code
//! writes `log::info!(...)` and stays board-independent.

#[cfg(feature = "host")]
pub use ::log::{info, warn};
#[cfg(not(feature = "host"))]
pub use defmt::{info, warn};

//! # podwire-agent
//!
//! podwire's Linux node agent: the control plane that turns cluster state into the
//! core's tables (`control`) and the `podwire` command-line interface (`cli`).
//!
//! Design note: the crate is a library with a thin binary, so the CLI, tests and
//! benchmarks all drive the same code paths.

pub mod cli;
pub mod control;

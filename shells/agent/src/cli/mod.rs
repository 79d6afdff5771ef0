//! The `podwire` command line: subcommands in kubectl style.
//!
//! Design note: `main.rs` only parses arguments; each subcommand lives in its own module
//! and returns `anyhow::Result`, so every failure reaches the user as one message that
//! names the problem (file, object, field, query), with a non-zero exit status.

pub mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// podwire: Kubernetes pod networking dataplane.
#[derive(Debug, Parser)]
#[command(name = "podwire", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// NetworkPolicy tools that work offline on manifests.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(cmd) => policy::run(cmd),
    }
}

//! `podwire`: the podwire node agent and CLI.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = podwire_agent::cli::Cli::parse();
    match podwire_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podwire: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

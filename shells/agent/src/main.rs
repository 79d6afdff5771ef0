//! `podwire`: the podwire node agent and CLI.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = podwire_agent::cli::Cli::parse();
    match podwire_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let broken_pipe = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
            if broken_pipe {
                // The reader went away (`| head`): nothing left to tell anyone.
                return ExitCode::SUCCESS;
            }
            eprintln!("podwire: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `podwire`: the node agent and its command line.

fn main() {
    std::process::exit(podwire_agent::cli::main());
}

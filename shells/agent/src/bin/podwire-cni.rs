//! `podwire-cni`: the CNI plugin executed by the container runtime.

fn main() {
    std::process::exit(podwire_agent::cni::plugin::main());
}

//! Runs the example programs and checks the key lines of what they print, so they
//! cannot silently rot: a changed API breaks the build, a changed behaviour breaks
//! these checks.

use std::process::Command;

/// Runs an example binary, asserts it succeeded and returns its standard output.
fn run(binary: &str) -> String {
    let out = Command::new(binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        out.status.success(),
        "{binary} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_has(output: &str, line: &str) {
    assert!(
        output.lines().any(|l| l.trim() == line.trim()),
        "missing line {line:?} in:\n{output}"
    );
}

fn assert_contains(output: &str, text: &str) {
    assert!(output.contains(text), "missing {text:?} in:\n{output}");
}

#[test]
fn quickstart_allocates_routes_and_encapsulates() {
    let out = run(env!("CARGO_BIN_EXE_quickstart"));
    // IPAM, next-fit.
    for line in [
        "allocated 10.244.1.2",
        "allocated 10.244.1.3",
        "allocated 10.244.1.4",
        "released 10.244.1.3",
        "allocated 10.244.1.5 (next-fit: 10.244.1.3 is not reused at once)",
        "3 allocated, 250 free, cursor at 10.244.1.5",
    ] {
        assert_has(&out, line);
    }
    // Routes and longest-prefix-match lookups.
    assert_contains(&out, "== Routing: 8 routes");
    for line in [
        "10.244.1.2      -> local port 1",
        "10.244.1.200    -> blackhole (drop)",
        "10.244.2.3      -> node 2 (VXLAN)",
        "10.244.3.9      -> node 3 (VXLAN)",
        "8.8.8.8         -> gateway 192.168.56.1",
    ] {
        assert_has(&out, line);
    }
    // The encapsulated frame: hex and decode.
    assert_contains(&out, "outer frame (108 bytes):");
    assert_has(
        &out,
        "0000  02 50 57 00 00 0b 02 50 57 00 00 0a 08 00 45 00",
    );
    assert_contains(
        &out,
        "decoded: eth 02:50:57:00:00:0a -> 02:50:57:00:00:0b | IPv4 192.168.56.11 -> 192.168.56.12 ttl 64 | UDP ",
    );
    assert_contains(
        &out,
        " -> 8472 | VXLAN VNI 1 | eth 02:50:57:00:00:0a -> 02:50:57:00:00:0b | IPv4 10.244.1.2 -> 10.244.2.3 ttl 64 | UDP 40000 -> 53, 16 payload bytes",
    );
    assert_has(
        &out,
        "peer accepted it: from node 1, VNI 1, inner frame 58 bytes",
    );
}

#[test]
fn two_nodes_walks_a_service_connection_through_both_datapaths() {
    let out = run(env!("CARGO_BIN_EXE_two_nodes"));
    // 1. DNAT and encapsulation on node 1.
    assert_contains(
        &out,
        "Action::Encap for node 2: VXLAN to 192.168.56.12:8472",
    );
    assert_contains(
        &out,
        "VXLAN VNI 1 | eth 02:aa:00:00:00:01 -> 02:aa:00:00:00:02 | IPv4 10.244.1.2 -> 10.244.2.2 ttl 63 | TCP 40000 -> 8080 [SYN]",
    );
    assert_has(
        &out,
        "DNAT 10.96.0.10:80 -> 10.244.2.2:8080 (Maglev chose the backend; conntrack pins it)",
    );
    // 2. Decapsulation and delivery on node 2, with the client's real address.
    assert_has(
        &out,
        "delivered to pod web: 10.244.1.2:40000 -> 10.244.2.2:8080 (the client's real address)",
    );
    // 3. The reply is encapsulated back to node 1.
    assert_contains(
        &out,
        "Action::Encap for node 1: VXLAN to 192.168.56.11:8472",
    );
    // 4. Reverse NAT on node 1.
    assert_has(
        &out,
        "reverse NAT: delivered to pod client on port 1 as 10.96.0.10:80 -> 10.244.1.2:40000 (from the service address)",
    );
    for node in [1, 2] {
        assert_has(
            &out,
            &format!("node {node}: delivered 1, encapsulated 1, decapsulated 1, replied 0, dropped 0, connections tracked 1"),
        );
    }
    assert_eq!(out.matches("Action::Deliver to port 1").count(), 2);
}

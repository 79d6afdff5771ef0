//! The lab's plumbing: network namespaces, the underlay bridge, node veths, running
//! commands inside a namespace.
//!
//! Design note: the lab drives `ip` (iproute2) rather than netlink, because every
//! step is a one-off at build time and the same commands are what a person would type
//! to inspect or repair it; a failing command is reported with its arguments and its
//! stderr. Nothing here touches the root namespace: every link is created inside a
//! namespace the lab named, and veth peers are created directly in their target
//! namespace.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command and returns its stdout; an error names the command and its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs `args` inside `ns` (`ip netns exec`).
pub fn exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Creates a named network namespace with `lo` up.
pub fn add_netns(name: &str) -> Result<()> {
    run(&["ip", "netns", "add", name])?;
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named network namespace and its `/etc/netns/<name>` files (no error
/// if they are gone).
pub fn del_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(netns_etc(name));
}

/// `/etc/netns/<name>`: files `ip netns exec` bind-mounts over `/etc` inside the
/// namespace (its `resolv.conf`, as kubelet writes one per pod).
pub fn netns_etc(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}

/// Writes a pod's resolv.conf as kubelet does from the CNI result's `dns`
/// (`nameserver` lines, `search`, `options`), where `ip netns exec` mounts it.
pub fn write_resolv_conf(netns: &str, dns: &serde_json::Value) -> Result<()> {
    let words = |key: &str| -> Vec<String> {
        dns[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let nameservers = words("nameservers");
    if nameservers.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for n in nameservers {
        text.push_str(&format!("nameserver {n}\n"));
    }
    let search = words("search");
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    let options = words("options");
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    let dir = netns_etc(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("resolv.conf"), text)
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))
}

/// The named namespaces whose name starts with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// The path a runtime passes as `CNI_NETNS`.
pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Creates the underlay namespace with bridge `br0` up.
pub fn add_underlay(ns: &str, mtu: u32) -> Result<()> {
    add_netns(ns)?;
    let mtu = mtu.to_string();
    ip(ns, &["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
    ip(ns, &["link", "set", "br0", "up"])?;
    Ok(())
}

/// Wires `node_ns` to the underlay: `eth0` (holding `addr/24`) in the node, its peer
/// `port` enslaved to the underlay bridge.
pub fn attach_to_underlay(
    underlay_ns: &str,
    node_ns: &str,
    port: &str,
    addr: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    let mtu = mtu.to_string();
    ip(
        node_ns,
        &[
            "link",
            "add",
            "eth0",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "mtu",
            &mtu,
            "netns",
            underlay_ns,
        ],
    )?;
    ip(underlay_ns, &["link", "set", port, "master", "br0", "up"])?;
    ip(
        node_ns,
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    ip(node_ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and waits for it.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = netns_path(name);
    let h = std::thread::spawn(move || -> Result<T> {
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        Ok(f())
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
}

//! End-to-end tests with real container runtimes: podman 4 on its CNI backend and
//! containerd 1.6 through `ctr run --cni`, both on libcni older than 1.2, against the
//! conflist `podwire install-cni` writes (and the same list with the reference tuning,
//! portmap and bandwidth plugins chained after podwire). Nodes are lab namespaces
//! with a real agent each; every runtime runs in its node's network namespace (see
//! `common::runtime`). They need root, podman, containerd, runc and busybox-static;
//! without root they print "skipped" and pass.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::lab::{lab, wait_for, LabGuard};
use common::runtime::{
    busybox_rootfs, chained, whoami_client, whoami_from, whoami_server, Containerd, NodeCni,
    Podman, TUNED_SYSCTL, WHOAMI_PORT,
};
use common::{can_run, ping, TempDir};
use serde_json::Value;

/// The installed CNI of lab node `name`.
fn node_cni(lab: &LabGuard, name: &str) -> NodeCni {
    NodeCni::of_lab_node(&lab.node(name).unwrap().netns, &lab.socket(name))
}

/// `podwire ipam -o json` of `node`.
fn ipam(lab: &LabGuard, node: &str) -> Value {
    serde_json::from_str(&lab.podwire(node, &["ipam", "-o", "json"]).unwrap()).unwrap()
}

/// The container ids `node`'s agent holds an address for.
fn allocated_ids(lab: &LabGuard, node: &str) -> Vec<String> {
    ipam(lab, node)["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["container_id"].as_str().unwrap().to_string())
        .collect()
}

/// The address `node`'s agent allocated to `container_id`.
fn allocated_ip(lab: &LabGuard, node: &str, container_id: &str) -> Option<Ipv4Addr> {
    ipam(lab, node)["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["container_id"] == container_id)
        .map(|a| a["ip"].as_str().unwrap().parse().unwrap())
}

/// Asks the whoami server at `ip` from inside a container through `exec`; returns
/// (server name, the client address the server saw).
fn whoami_via(
    exec: impl Fn(&[String]) -> Result<String, String>,
    ip: Ipv4Addr,
) -> (String, String) {
    let out = exec(&whoami_client(ip, WHOAMI_PORT)).unwrap_or_else(|e| panic!("{e}"));
    common::runtime::parse_whoami(&out).unwrap_or_else(|| panic!("not a whoami answer: {out:?}"))
}

#[test]
fn podman_on_two_nodes_pods_reach_each_other_chained_plugins_apply_and_rm_frees() {
    if !can_run() {
        return;
    }
    let mut lab = lab(2, 0);
    let dir = TempDir::new();
    let rootfs = busybox_rootfs(&dir.0);
    let node1 = node_cni(&lab, "node1");
    let node2 = node_cni(&lab, "node2");
    // node1: the conflist exactly as install-cni wrote it; node2: the same list with
    // tuning, portmap and bandwidth chained after podwire.
    assert_eq!(node1.conflist["cniVersion"], "1.0.0");
    let plain = node1.conflist.clone();
    let with_chain = chained(&node2.conflist);
    let p1 = Podman::new(node1, &plain, &dir.0.join("podman1"), &rootfs);
    let p2 = Podman::new(node2, &with_chain, &dir.0.join("podman2"), &rootfs);
    let s = common::suffix();
    let (web, client, remote) = (
        format!("web-{s}"),
        format!("client-{s}"),
        format!("remote-{s}"),
    );
    let web_id = p1.start_container(&web, &[], &whoami_server(&web));
    let client_id = p1.start_container(&client, &[], &["sleep".into(), "3600".into()]);
    let remote_id = p2.start_container(
        &remote,
        &["--publish", &format!("8080:{WHOAMI_PORT}")],
        &whoami_server(&remote),
    );

    // Each container has its pod IP on eth0, from its node's block; it is what the
    // runtime recorded from the result and what the agent allocated.
    let cidr1 = lab.node("node1").unwrap().pod_cidr;
    let cidr2 = lab.node("node2").unwrap().pod_cidr;
    let web_ip = p1.eth0_ip(&web);
    let client_ip = p1.eth0_ip(&client);
    let remote_ip = p2.eth0_ip(&remote);
    for (ip, cidr, p, name, id, node) in [
        (web_ip, cidr1, &p1, &web, &web_id, "node1"),
        (client_ip, cidr1, &p1, &client, &client_id, "node1"),
        (remote_ip, cidr2, &p2, &remote, &remote_id, "node2"),
    ] {
        assert!(cidr.contains(&ip), "{name}: {ip} not in {cidr}");
        assert_eq!(p.ip(name), ip, "podman's record of {name}");
        assert_eq!(
            allocated_ip(&lab, node, id),
            Some(ip),
            "agent's record of {name}"
        );
        assert_eq!(
            p.inspect(name, "{{.NetworkSettings.Networks.podwire.Gateway}}"),
            podwire_agent::lab::demo::gateway(cidr).to_string()
        );
    }
    assert_ne!(web_ip, client_ip);

    // Same node and across nodes, without NAT: the server sees the client's pod IP.
    let exec_client = |cmd: &[String]| p1.exec(&client, cmd);
    assert_eq!(
        whoami_via(exec_client, web_ip),
        (web.clone(), client_ip.to_string())
    );
    assert_eq!(
        whoami_via(exec_client, remote_ip),
        (remote.clone(), client_ip.to_string())
    );
    assert_eq!(
        whoami_via(|cmd: &[String]| p2.exec(&remote, cmd), web_ip),
        (web.clone(), remote_ip.to_string())
    );
    // The node reaches its pods, and the pods the node.
    let node1_ns = lab.node("node1").unwrap().netns.clone();
    let node1_ip = lab.node("node1").unwrap().ip;
    let node2_ip = lab.node("node2").unwrap().ip;
    assert!(ping(&node1_ns, client_ip));
    let (name, _) =
        whoami_from(&node1_ns, SocketAddr::new(IpAddr::V4(web_ip), WHOAMI_PORT)).unwrap();
    assert_eq!(name, web);
    p1.exec(
        &client,
        &["ping", "-c", "1", "-W", "2", &node1_ip.to_string()].map(String::from),
    )
    .unwrap();

    // The chain on node2: tuning's sysctl is set in the pod, and portmap's DNAT on
    // node2's address reaches the pod from a client outside the cluster on the
    // underlay, and from node2 itself. (Pods and other nodes use a NodePort Service:
    // the datapath returns their replies over the overlay, past node2's conntrack.)
    let sysctl_path = format!("/proc/sys/{}", TUNED_SYSCTL.0.replace('.', "/"));
    assert_eq!(
        p2.exec(&remote, &["cat".to_string(), sysctl_path.clone()])
            .unwrap()
            .trim(),
        TUNED_SYSCTL.1
    );
    assert_eq!(
        p1.exec(&client, &["cat".to_string(), sysctl_path])
            .unwrap()
            .trim(),
        "0",
        "node1's list has no tuning"
    );
    let (outside, outside_ip) = lab.add_foreign_host("outside", 200).unwrap();
    let host_port = SocketAddr::new(IpAddr::V4(node2_ip), 8080);
    assert_eq!(
        whoami_from(&outside, host_port).unwrap().0,
        remote,
        "from {outside_ip} through node2's portmap"
    );
    let node2_ns = lab.node("node2").unwrap().netns.clone();
    assert_eq!(whoami_from(&node2_ns, host_port).unwrap().0, remote);

    // Stop and start: DEL then ADD; the address is freed, then a fresh one works.
    p1.run(&["stop", "--time", "0", &web]);
    wait_for("web's address to be freed", || {
        allocated_ip(&lab, "node1", &web_id).is_none()
    });
    p1.run(&["start", &web]);
    let web_ip2 = p1.eth0_ip(&web);
    assert_eq!(allocated_ip(&lab, "node1", &web_id), Some(web_ip2));
    assert_eq!(
        whoami_via(exec_client, web_ip2),
        (web.clone(), client_ip.to_string())
    );

    // rm frees the address (and on node2, portmap's DNAT rule goes with it).
    p1.run(&["rm", "--force", "--time", "0", &web]);
    p2.run(&["rm", "--force", "--time", "0", &remote]);
    assert_eq!(allocated_ids(&lab, "node1"), vec![client_id.clone()]);
    assert_eq!(ipam(&lab, "node2")["allocated"], 0);
    let nat = common::sh(&[
        "ip", "netns", "exec", &node2_ns, "iptables", "-t", "nat", "-S",
    ]);
    assert!(!nat.contains(&remote_ip.to_string()), "{nat}");
    assert!(!std::path::Path::new(&format!("/var/lib/cni/results/podwire-{web_id}-eth0")).exists());
}

#[test]
fn containerd_ctr_run_cni_reaches_podman_across_nodes_survives_a_restart_and_dels_after_the_netns()
{
    if !can_run() {
        return;
    }
    let lab = lab(2, 0);
    let dir = TempDir::new();
    let rootfs = busybox_rootfs(&dir.0);
    let node1 = node_cni(&lab, "node1");
    let node2 = node_cni(&lab, "node2");
    let list1 = node1.conflist.clone();
    let list2 = node2.conflist.clone();
    let mut ctd = Containerd::start(node1, &list1, &dir.0.join("containerd"));
    let p2 = Podman::new(node2, &list2, &dir.0.join("podman"), &rootfs);
    let s = common::suffix();
    let (fg, bg, remote) = (format!("fg-{s}"), format!("bg-{s}"), format!("remote-{s}"));
    p2.start_container(&remote, &[], &whoami_server(&remote));
    let remote_ip = p2.eth0_ip(&remote);

    // A foreground `ctr run --cni --rm` (ctr DELs when the task exits) and a
    // detached one serving whoami.
    let fg_ip = ctd.run_foreground(&fg, &rootfs, &["sleep".into(), "3600".into()]);
    let bg_ip = ctd.run_detached(&bg, &rootfs, &whoami_server(&bg));
    let cidr1 = lab.node("node1").unwrap().pod_cidr;
    for (id, ip) in [(&fg, fg_ip), (&bg, bg_ip)] {
        assert!(cidr1.contains(&ip), "{id}: {ip} not in {cidr1}");
        assert_eq!(
            allocated_ip(&lab, "node1", &Containerd::cni_container_id(id)),
            Some(ip)
        );
    }
    let exec_fg = |cmd: &[String]| ctd.exec(&fg, cmd);
    assert_eq!(whoami_via(exec_fg, bg_ip), (bg.clone(), fg_ip.to_string()));
    assert_eq!(
        whoami_via(exec_fg, remote_ip),
        (remote.clone(), fg_ip.to_string())
    );
    assert_eq!(
        whoami_via(|cmd: &[String]| p2.exec(&remote, cmd), bg_ip),
        (bg.clone(), remote_ip.to_string())
    );
    let node1_ns = lab.node("node1").unwrap().netns.clone();
    assert!(ping(&node1_ns, fg_ip));

    // The foreground task dies: its netns goes with its last process, then ctr
    // calls DEL (CNI_NETNS empty); the address is freed.
    ctd.kill(&fg);
    assert!(
        ctd.wait_foreground(&fg),
        "ctr run {fg} did not exit: {}",
        ctd.run_log(&fg)
    );
    let fg_cni = Containerd::cni_container_id(&fg);
    wait_for("fg's address to be freed", || {
        allocated_ip(&lab, "node1", &fg_cni).is_none()
    });
    assert!(
        !ctd.run_log(&fg).contains("network review"),
        "{}",
        ctd.run_log(&fg)
    );

    // containerd restarts: the detached container keeps its address and stays
    // reachable from the node and across nodes. A foreground `ctr run` loses its
    // task stream and DELs its container, which keeps running: the agent removes
    // eth0 from the live netns and frees the address.
    let fg2 = format!("fg2-{s}");
    let fg2_ip = ctd.run_foreground(&fg2, &rootfs, &["sleep".into(), "3600".into()]);
    let fg2_cni = Containerd::cni_container_id(&fg2);
    assert_eq!(allocated_ip(&lab, "node1", &fg2_cni), Some(fg2_ip));
    ctd.restart();
    assert!(ctd.wait_foreground(&fg2), "ctr run {fg2} kept running");
    wait_for("fg2's address to be freed", || {
        allocated_ip(&lab, "node1", &fg2_cni).is_none()
    });
    let links = ctd
        .exec(&fg2, &["ip", "-o", "link"].map(String::from))
        .unwrap();
    assert!(!links.contains("eth0"), "{links}");
    let tasks = ctd.try_ctr(&["task", "ls"]).unwrap();
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(bg.as_str()) && l.contains("RUNNING")),
        "{tasks}"
    );
    assert_eq!(ctd.try_ip(&bg), Some(bg_ip));
    let (name, peer) =
        whoami_from(&node1_ns, SocketAddr::new(IpAddr::V4(bg_ip), WHOAMI_PORT)).unwrap();
    assert_eq!(name, bg);
    assert_eq!(
        peer,
        podwire_agent::lab::demo::gateway(cidr1).to_string(),
        "the node's own address"
    );
    assert_eq!(
        whoami_via(|cmd: &[String]| p2.exec(&remote, cmd), bg_ip),
        (bg.clone(), remote_ip.to_string())
    );
    assert_eq!(
        allocated_ids(&lab, "node1"),
        vec![Containerd::cni_container_id(&bg)]
    );
}

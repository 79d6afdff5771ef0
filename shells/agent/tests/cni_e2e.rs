//! End-to-end CNI tests: the agent runs inside a node network namespace, pods are
//! network namespaces wired by `podwire-cni` exactly as a container runtime calls it.
//! They need root; without it they print "skipped" and pass.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use common::*;
use podwire_agent::cni::spec::Version;
use serde_json::{json, Value};

fn eth0(netns: &str) -> Value {
    ip_json(netns, &["addr", "show", "dev", "eth0"])[0].clone()
}

#[test]
fn add_configures_eth0_and_the_host_port() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (netns, out) = c.add_pod("web");
    let j = out.json();
    assert_eq!(j["cniVersion"], "1.1.0");
    assert_eq!(j["interfaces"][0]["name"], "eth0");
    assert_eq!(j["interfaces"][0]["sandbox"], netns_path(&netns));
    assert_eq!(j["interfaces"][0]["mtu"], 1450, "underlay 1500 - 50");
    assert_eq!(j["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(j["routes"][0]["dst"], "0.0.0.0/0");
    let ip = out.ip();
    assert!(ip.octets()[..3] == [10, 244, 1] && ip.octets()[3] >= 2);

    // Inside the pod: eth0 up, MAC, MTU, address/24.
    let link = eth0(&netns);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], j["interfaces"][0]["mac"]);
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        flags.contains(&"UP") && flags.contains(&"LOWER_UP"),
        "{flags:?}"
    );
    let addr = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["family"] == "inet")
        .unwrap();
    assert_eq!(addr["local"], ip.to_string());
    assert_eq!(addr["prefixlen"], 24);
    // Default route via the gateway.
    let routes = ip_json(&netns, &["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.244.1.1");
    assert_eq!(routes[0]["dev"], "eth0");
    // The MAC is locally administered and derived from the IP.
    let o = ip.octets();
    assert_eq!(
        link["address"],
        format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );

    // The node: podwire0 holds the gateway, routes the other node's pod CIDR.
    let host = ip_json(&c.node_ns, &["addr", "show", "dev", "podwire0"])[0].clone();
    assert_eq!(host["mtu"], 1450);
    assert!(host["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "10.244.1.1" && a["prefixlen"] == 24));
    let r = ip_json(&c.node_ns, &["route", "show", "10.244.2.0/24"]);
    assert_eq!(r[0]["dev"], "podwire0");

    // The CLI lists the pod with its labels from the cluster state.
    let pods = c.view_json("pods");
    assert_eq!(pods[0]["ip"], ip.to_string());
    assert_eq!(pods[0]["name"], "web");
    assert_eq!(pods[0]["labels"]["app"], "web");
    assert_eq!(pods[0]["state"], "attached");
    let status = c.podwire(&["status"]).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("IPAM:") && l.contains("1/253")),
        "{status}"
    );

    // CHECK with the ADD result as prevResult passes.
    let mut conf = c.net_conf();
    conf["prevResult"] = j.clone();
    let chk = c.cni("CHECK", "web", Some(&netns), &conf.to_string());
    assert_eq!((chk.code, chk.stdout.as_str()), (0, ""));
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses_and_dels_free_them_all() {
    if !can_run() {
        return;
    }
    let c = std::sync::Arc::new(Cluster::start());
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let id = format!("ctr{i:02}");
                let (netns, out) = c.add_pod(&id);
                (id, netns, out.ip())
            })
        })
        .collect();
    let pods: Vec<(String, String, Ipv4Addr)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ips: HashSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    assert_eq!(ips.len(), 50, "addresses must be distinct");
    // Each pod really has its address.
    for (_, netns, ip) in &pods {
        let s = serde_json::to_string(&eth0(netns)).unwrap();
        assert!(s.contains(&format!("\"{ip}\"")), "{netns} lacks {ip}");
    }
    assert_eq!(c.view_json("ipam")["allocated"], 50);
    let dels: Vec<_> = pods
        .iter()
        .cloned()
        .map(|(id, netns, _)| {
            let c = c.clone();
            std::thread::spawn(move || c.del_pod(&id, &netns).code)
        })
        .collect();
    for d in dels {
        assert_eq!(d.join().unwrap(), 0);
    }
    let ipam = c.view_json("ipam");
    assert_eq!(ipam["allocated"], 0, "{ipam}");
    assert_eq!(ipam["allocations"], json!([]));
    // The persisted state agrees.
    let state: Value =
        serde_json::from_slice(&std::fs::read(c.dir.0.join("state/ipam.json")).unwrap()).unwrap();
    assert_eq!(state["attachments"], json!([]));
    // The pods' interfaces are gone.
    for (_, netns, _) in &pods {
        let links = ip_json(netns, &["link", "show"]);
        assert!(links
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "eth0"));
    }
}

#[test]
fn del_is_idempotent_twice_unknown_and_after_the_netns_is_gone() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (netns, _) = c.add_pod("a");
    assert_eq!(c.del_pod("a", &netns).code, 0);
    let again = c.del_pod("a", &netns);
    assert_eq!((again.code, again.stdout.as_str()), (0, ""));
    assert_eq!(
        c.cni("DEL", "never-added", None, &c.net_conf().to_string())
            .code,
        0
    );

    let (netns_b, _) = c.add_pod("b");
    c.ns.delete(&netns_b);
    let del = c.del_pod("b", &netns_b);
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert_eq!(c.view_json("ipam")["allocated"], 0);
}

#[test]
fn check_reports_a_removed_address() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (netns, out) = c.add_pod("a");
    let ip = out.ip();
    sh(&[
        "ip",
        "-n",
        &netns,
        "addr",
        "del",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]);
    let mut conf = c.net_conf();
    conf["prevResult"] = out.json();
    let chk = c.cni("CHECK", "a", Some(&netns), &conf.to_string());
    assert_eq!(chk.code, 1);
    let e = chk.json();
    assert_eq!(e["code"], 102);
    assert!(
        e["msg"].as_str().unwrap().contains(&format!("{ip}/24")),
        "{e}"
    );
}

/// Every supported version through the real plugin and agent: the result in that
/// version's shape, CHECK from 0.4.0 on (refused before, as the spec's error 1).
#[test]
fn add_check_del_in_every_supported_version() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let id = format!("v{}", version.replace('.', ""));
        let mut conf = c.net_conf();
        conf["cniVersion"] = json!(version);
        let netns = c.ns.create("pod");
        let add = c.cni("ADD", &id, Some(&netns), &conf.to_string());
        assert_eq!(add.code, 0, "{version}: {}", add.stdout);
        let j = add.json();
        assert_eq!(j["cniVersion"], version);
        let v = Version::parse(version).unwrap();
        let old = v < Version::V1_0_0;
        assert_eq!(j["ips"][0].get("version").is_some(), old, "{version}: {j}");
        if old {
            assert_eq!(j["ips"][0]["version"], "4");
        }
        assert_eq!(j["ips"][0]["interface"], 0, "{version}");
        assert_eq!(j["interfaces"][0]["sandbox"], netns_path(&netns));
        assert_eq!(
            j["interfaces"][0].get("mtu").is_some(),
            v >= Version::V1_1_0
        );
        conf["prevResult"] = j.clone();
        let check = c.cni("CHECK", &id, Some(&netns), &conf.to_string());
        if v < Version::V0_4_0 {
            assert_eq!((check.code, check.json()["code"].clone()), (1, json!(1)));
            assert_eq!(check.json()["cniVersion"], version);
        } else {
            assert_eq!((check.code, check.stdout.as_str()), (0, ""), "{version}");
        }
        let del = c.cni("DEL", &id, Some(&netns), &conf.to_string());
        assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{version}");
    }
    assert_eq!(c.view_json("ipam")["allocated"], 0);
}

#[test]
fn gc_frees_attachments_not_in_the_valid_list() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (_na, _) = c.add_pod("keep");
    let (_nb, _) = c.add_pod("stale1");
    let (_nc, _) = c.add_pod("stale2");
    let mut conf = c.net_conf();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = c.cni("GC", "", None, &conf.to_string());
    assert_eq!((gc.code, gc.stdout.as_str()), (0, ""));
    let pods = c.view_json("pods");
    let ids: Vec<&str> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["container_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["keep"]);

    // The legacy key name is honoured too.
    let (_nd, _) = c.add_pod("stale3");
    let mut conf = c.net_conf();
    conf["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(c.cni("GC", "", None, &conf.to_string()).code, 0);
    assert_eq!(c.view_json("ipam")["allocated"], 1);
}

#[test]
fn bad_input_returns_the_spec_error_json() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let netns = c.ns.create("pod");
    let err = |stdin: &str| {
        let o = c.cni("ADD", "x", Some(&netns), stdin);
        assert_eq!(o.code, 1, "{}", o.stdout);
        o.json()
    };
    let e = err("{this is not json");
    assert_eq!(e["code"], 6);
    assert!(e["msg"].is_string());
    let e = err(r#"{"cniVersion":"1.1.0","type":"podwire-cni"}"#);
    assert_eq!(e["code"], 7);
    assert!(e["details"].as_str().unwrap().contains("name"), "{e}");
    let mut conf = c.net_conf();
    conf["cniVersion"] = json!("0.2.0");
    let e = err(&conf.to_string());
    assert_eq!(e["code"], 1);
    // Missing environment variables are named (code 4).
    let o = run_plugin(
        &c.dir.0.join("bin/podwire-cni"),
        &[
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
        ],
        &c.net_conf().to_string(),
    );
    assert_eq!(o.json()["code"], 4);
    assert!(o.json()["msg"]
        .as_str()
        .unwrap()
        .contains("CNI_CONTAINERID"));
    // VERSION.
    let o = run_plugin(
        &c.dir.0.join("bin/podwire-cni"),
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(o.code, 0);
    assert_eq!(
        o.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // Nothing was allocated by the failures.
    assert_eq!(c.view_json("ipam")["allocated"], 0);
    // STATUS is fine while the agent runs.
    assert_eq!(c.cni("STATUS", "", None, &c.net_conf().to_string()).code, 0);
}

#[test]
fn an_unreachable_agent_means_try_again_later() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start();
    c.kill_agent();
    let _ = std::fs::remove_file(c.socket());
    let netns = c.ns.create("pod");
    let o = c.cni("ADD", "x", Some(&netns), &c.net_conf().to_string());
    assert_eq!((o.code, o.json()["code"].clone()), (1, json!(11)));
    let o = c.cni("STATUS", "", None, &c.net_conf().to_string());
    assert_eq!(o.json()["code"], 50);
}

#[test]
fn kill_9_and_restart_keeps_addresses_and_readopts_pods() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start();
    let pods: Vec<(String, String, Ipv4Addr)> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let (netns, out) = c.add_pod(id);
            (id.to_string(), netns, out.ip())
        })
        .collect();
    assert!(ping(&pods[0].1, pods[1].2), "traffic before the restart");
    c.kill_agent();
    // Without the agent the pods keep their interfaces, carrier down.
    let flags = eth0(&pods[0].1)["flags"].to_string();
    assert!(flags.contains("NO-CARRIER"), "{flags}");
    c.start_agent();
    let view = c.view_json("pods");
    for (id, netns, ip) in &pods {
        let row = view
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["container_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} lost: {view}"));
        assert_eq!(row["ip"], ip.to_string());
        assert_eq!(row["state"], "attached");
        let link = eth0(netns);
        let flags = link["flags"].to_string();
        assert!(flags.contains("LOWER_UP"), "{id}: {flags}");
    }
    // Traffic resumes without a new ADD: the TAPs were re-adopted.
    assert!(ping(&pods[0].1, pods[1].2), "traffic after the restart");
    let server = tcp_peer_reporter(&pods[2].1, 9000, 1);
    assert_eq!(
        tcp_ask(&pods[0].1, (pods[2].2, 9000).into()).unwrap(),
        pods[0].2.to_string()
    );
    server.join().unwrap();
    // A new pod gets a fresh address, and the old ones still CHECK.
    let (_n, out) = c.add_pod("d");
    assert!(pods.iter().all(|p| p.2 != out.ip()));
    let chk = c.cni("CHECK", "a", Some(&pods[0].1), &{
        let mut conf = c.net_conf();
        conf["prevResult"] = json!({"ips": [{"address": format!("{}/24", pods[0].2)}]});
        conf.to_string()
    });
    assert_eq!(chk.code, 0, "{}", chk.stdout);
    assert_eq!(c.view_json("ipam")["allocated"], 4);
}

#[test]
fn an_invalid_manifest_is_rejected_and_the_last_good_state_kept() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (_netns, _) = c.add_pod("a");
    std::fs::write(c.cluster_file(), manifests("10.244.2.0/33")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let s = c.podwire(&["status"]).unwrap();
        if s.contains("Warning") || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let cluster_line = status.lines().find(|l| l.starts_with("Cluster:")).unwrap();
    assert!(cluster_line.contains("Warning"), "{status}");
    assert!(
        cluster_line.contains("Node/node-b") && cluster_line.contains("spec.podCIDR"),
        "{cluster_line}"
    );
    // Still serving: ADD works on the last good state.
    let (_n2, out) = c.add_pod("b");
    assert_eq!(out.code, 0);
    // A valid change applies: node-b's pod CIDR moves, the route follows.
    std::fs::write(c.cluster_file(), manifests("10.244.7.0/24")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = ip_json(&c.node_ns, &["route", "show", "10.244.7.0/24"]);
        if r.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "route not updated: {}",
            c.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ip_json(&c.node_ns, &["route", "show", "10.244.2.0/24"])
        .as_array()
        .unwrap()
        .is_empty());
    let status = c.podwire(&["status"]).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Cluster:") && l.contains("Ok")),
        "{status}"
    );
}

/// Same-node pod↔pod ping, TCP and UDP, node→pod and pod→node: every frame crosses
/// the core datapath, and servers see the client's real address (no NAT).
#[test]
fn same_node_pod_to_pod_tcp_and_udp_see_the_real_source_ip() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (server_ns, server) = c.add_pod("server");
    let (client_ns, client) = c.add_pod("client");
    assert!(ping(&client_ns, server.ip()));
    let t = tcp_peer_reporter(&server_ns, 8080, 1);
    let seen = tcp_ask(&client_ns, (server.ip(), 8080).into()).unwrap();
    assert_eq!(seen, client.ip().to_string());
    t.join().unwrap();
    let u = udp_peer_reporter(&server_ns, 5353, 1);
    assert_eq!(
        udp_ask(&client_ns, (server.ip(), 5353).into()).unwrap(),
        client.ip().to_string()
    );
    u.join().unwrap();
    // Node -> pod and pod -> node, with real source addresses.
    let t = tcp_peer_reporter(&server_ns, 8081, 1);
    assert_eq!(
        tcp_ask(&c.node_ns, (server.ip(), 8081).into()).unwrap(),
        "10.244.1.1"
    );
    t.join().unwrap();
    let t = tcp_peer_reporter(&c.node_ns, 8082, 1);
    assert_eq!(
        tcp_ask(
            &client_ns,
            ("10.244.1.1".parse::<Ipv4Addr>().unwrap(), 8082).into()
        )
        .unwrap(),
        client.ip().to_string()
    );
    t.join().unwrap();
}

/// Bytes a pod's `eth0` has transmitted as packets (`ip -s`): a TAP counts one per
/// frame it hands the agent, so a GSO super-frame counts once.
fn tx_packets(netns: &str) -> u64 {
    let link = ip_json(netns, &["-s", "link", "show", "eth0"]);
    link[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

#[test]
fn a_large_tcp_transfer_between_same_node_pods_runs_on_super_frames() {
    use std::io::{Read, Write};
    if !can_run() {
        return;
    }
    const LEN: usize = 50 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let c = Cluster::start();
    let (server_ns, server) = c.add_pod("bulk-server");
    let (client_ns, _) = c.add_pod("bulk-client");
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = in_netns(&server_ns, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", 9000)).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let (mut n, mut bad, mut buf) = (0usize, 0usize, vec![0u8; 1 << 16]);
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            bad += (0..k).filter(|&j| buf[j] != pattern(n + j)).count();
            n += k;
        }
        s.write_all(format!("{n} {bad}").as_bytes()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    let before = tx_packets(&client_ns);
    let to: std::net::SocketAddr = (server.ip(), 9000).into();
    let reply = in_netns(&client_ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        std::io::Result::Ok(out)
    })
    .join()
    .unwrap()
    .unwrap();
    srv.join().unwrap();
    assert_eq!(reply, format!("{LEN} 0"), "bytes received and mismatches");
    // With TSO on the pod's eth0 the 50 MiB leave as super-frames: far fewer frames
    // than MSS-sized segments (about 36,000 at MTU 1450; acks go the other way).
    let frames = tx_packets(&client_ns) - before;
    eprintln!("{frames} frames carried {LEN} bytes");
    assert!(
        frames < (LEN / 1398 / 4) as u64,
        "{frames} frames for {LEN} bytes: offloads are not in effect"
    );
}

#[test]
fn a_pod_missing_from_the_cluster_state_gets_networking_and_its_labels_later() {
    if !can_run() {
        return;
    }
    let c = Cluster::start();
    let (netns, out) = c.add_pod("late");
    assert_eq!(out.code, 0);
    let row = |c: &Cluster| {
        c.view_json("pods")
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "late")
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&c)["labels"], json!({}));
    assert_eq!(row(&c)["ip"], out.ip().to_string());
    let mut m = manifests("10.244.2.0/24");
    m.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: default, labels: {tier: db}}\n");
    std::fs::write(c.cluster_file(), m).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while row(&c)["labels"] != json!({"tier": "db"}) {
        assert!(
            std::time::Instant::now() < deadline,
            "labels never attached: {}",
            c.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(eth0(&netns)["flags"].to_string().contains("LOWER_UP"));
}

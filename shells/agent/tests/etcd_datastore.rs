//! End-to-end tests of the etcd datastore: a real 3-member etcd cluster (Debian's
//! etcd-server), each member in its own namespace on the lab's underlay bridge, and
//! one real agent per node namespace running on it. Faults are real: members killed
//! and stopped, a node cut off etcd by blackhole routes inside its namespace, etcd
//! compacted under a watch, an agent killed. The invariants checked throughout: no
//! two nodes ever hold one subnet, forwarding and routes survive any loss of etcd,
//! and every agent catches up with what was written meanwhile. They need root;
//! without it they print "skipped" and pass.

mod common;

use std::process::Command;
use std::time::Duration;

use common::etcd::{cluster_status, etcd, has_key, partition, remote_routes, subnet_holders};
use common::lab::{lab_on_etcd, wait_for_within};
use common::{can_run, TempDir, PODWIRE};
use nix::sys::signal::Signal;
use podwire_agent::lab::traffic::ping;
use podwire_agent::lab::Lab;

/// How long the tests wait for a change to show (etcd elections, the agents'
/// keep-alive timeouts and the 15 s liveness TTL fit in it).
const SETTLE: Duration = Duration::from_secs(45);

/// A policy that isolates node1's pods for ingress (enforced by node1's agent).
const ISOLATE_NODE1: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-node1, namespace: default}
spec:
  podSelector: {matchLabels: {node: node1}}
  policyTypes: [Ingress]
";

/// No two nodes hold one subnet, every node holds exactly the subnet its agent
/// runs on, and every other node routes that subnet to it.
fn assert_subnets_consistent(lab: &Lab) {
    let holders = subnet_holders(lab);
    let mut nodes: Vec<&String> = holders.values().collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(
        nodes.len(),
        holders.len(),
        "a node holds two subnets: {holders:?}"
    );
    for n in &lab.nodes {
        assert_eq!(
            holders.get(&n.pod_cidr.to_string()),
            Some(&n.name),
            "{} runs on {} but etcd says {holders:?}",
            n.name,
            n.pod_cidr
        );
    }
}

/// `podwire <args> --etcd-endpoints ...`, run from etcd member 1's namespace.
fn podwire_on_etcd(lab: &Lab, args: &[&str]) -> Result<String, String> {
    let e = etcd(lab);
    let out = Command::new("ip")
        .args(["netns", "exec", &e.members[0].netns, PODWIRE])
        .args(args)
        .args(["--etcd-endpoints", &e.endpoints()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn racing_agents_get_distinct_subnets_and_apply_validates_like_the_api_server() {
    if !can_run() {
        return;
    }
    // The lab starts the three agents back to back: they race for the first blocks.
    let lab = lab_on_etcd(3, 1);
    assert_subnets_consistent(&lab);
    let cidrs: std::collections::BTreeSet<_> = lab.nodes.iter().map(|n| n.pod_cidr).collect();
    assert_eq!(cidrs.len(), 3);
    for n in &lab.nodes {
        let routes = remote_routes(&lab, &n.name);
        assert_eq!(routes.len(), 2, "{}: {routes:?}", n.name);
        for other in lab.nodes.iter().filter(|o| o.name != n.name) {
            assert_eq!(routes.get(&other.pod_cidr.to_string()), Some(&other.name));
        }
    }
    assert!(ping(&lab.pods[0].netns, lab.pods[2].ip));
    let status = podwire_agent::lab::status_table(&lab);
    for m in &etcd(&lab).members {
        let row = status
            .lines()
            .find(|l| l.starts_with(&m.name))
            .unwrap_or_default();
        assert!(
            row.contains(&m.endpoint()) && row.contains("running"),
            "{status}"
        );
    }

    let dir = TempDir::new();
    let file = |name: &str, text: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // Refused as the API server would, naming the object and field; nothing written.
    let bad = file(
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: broken, namespace: default}\n\
         spec: {podSelector: {matchLabels: {\"a b\": x}}}\n",
    );
    let e = podwire_on_etcd(&lab, &["apply", "-f", &bad]).unwrap_err();
    assert!(
        e.contains("NetworkPolicy/default/broken") && e.contains("matchLabels"),
        "{e}"
    );
    assert!(!has_key(&lab, "/podwire/v1/resources/Namespace/team-a"));
    let node = file(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node9}\n",
    );
    let e = podwire_on_etcd(&lab, &["apply", "-f", &node]).unwrap_err();
    assert!(
        e.contains("Node/node9: Node objects are written by each node's agent"),
        "{e}"
    );
    let good = file(
        "good.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n",
    );
    let out = podwire_on_etcd(&lab, &["apply", "-f", &good]).unwrap();
    assert_eq!(out.trim(), "namespace/team-a created");
    let out = podwire_on_etcd(&lab, &["apply", "-f", &good]).unwrap();
    assert_eq!(out.trim(), "namespace/team-a unchanged");
    assert!(has_key(&lab, "/podwire/v1/resources/Namespace/team-a"));
    wait_for_within("node1 to list the new namespace", SETTLE, || {
        cluster_status(&lab, "node1").contains("2 namespaces")
    });
    let out = podwire_on_etcd(&lab, &["delete", "-f", &good]).unwrap();
    assert_eq!(out.trim(), "namespace/team-a deleted");
    assert!(!has_key(&lab, "/podwire/v1/resources/Namespace/team-a"));
    // The network config cannot be changed under a running cluster.
    let e = podwire_on_etcd(&lab, &["etcd", "init", "--cluster-cidr", "10.99.0.0/16"]).unwrap_err();
    assert!(e.contains("cannot be changed"), "{e}");
    assert_subnets_consistent(&lab);
}

#[test]
fn killing_the_leader_and_stopping_a_member_keep_forwarding_and_writes_going() {
    if !can_run() {
        return;
    }
    let mut lab = lab_on_etcd(2, 1);
    let (a, b) = (lab.pods[0].clone(), lab.pods[1].clone());
    assert!(ping(&b.netns, a.ip));

    let leader = etcd(&lab).leader().unwrap();
    lab.etcd
        .as_mut()
        .unwrap()
        .signal(leader, Signal::SIGKILL)
        .unwrap();
    assert!(
        ping(&b.netns, a.ip),
        "forwarding stopped with the etcd leader"
    );
    // Writes go on with two members; node1 follows them.
    lab.set_extra_manifests(ISOLATE_NODE1).unwrap();
    wait_for_within(
        "node1 to enforce the policy written after the kill",
        SETTLE,
        || !ping(&b.netns, a.ip),
    );

    // The killed member comes back; then the new leader is frozen (SIGSTOP).
    let run_dir = lab.paths.run_dir.clone();
    lab.etcd
        .as_mut()
        .unwrap()
        .start_member(leader, &run_dir)
        .unwrap();
    let mut frozen = None;
    wait_for_within("a new leader", SETTLE, || {
        frozen = etcd(&lab).leader().ok().filter(|l| *l != leader);
        frozen.is_some()
    });
    let frozen = frozen.unwrap();
    lab.etcd
        .as_mut()
        .unwrap()
        .signal(frozen, Signal::SIGSTOP)
        .unwrap();
    lab.set_extra_manifests("").unwrap();
    wait_for_within(
        "node1 to lift the policy while a member is stopped",
        SETTLE,
        || ping(&b.netns, a.ip),
    );
    for n in ["node1", "node2"] {
        wait_for_within("the agents to run on a live member", SETTLE, || {
            cluster_status(&lab, n).contains("Ok")
        });
    }
    lab.etcd
        .as_mut()
        .unwrap()
        .signal(frozen, Signal::SIGCONT)
        .unwrap();
    assert_subnets_consistent(&lab);
    assert!(ping(&a.netns, b.ip));
}

#[test]
fn a_node_cut_off_etcd_keeps_forwarding_says_stale_and_relists_after_compaction() {
    if !can_run() {
        return;
    }
    let mut lab = lab_on_etcd(2, 1);
    let (a, b) = (lab.pods[0].clone(), lab.pods[1].clone());
    let routes_before = remote_routes(&lab, "node1");
    assert_eq!(routes_before.len(), 1);

    partition(&lab, "node1", true);
    wait_for_within("node1 to say its state is stale", SETTLE, || {
        cluster_status(&lab, "node1").contains("stale since")
    });
    // Forwarding and routes stay while etcd is unreachable.
    assert!(
        ping(&b.netns, a.ip),
        "forwarding stopped with etcd unreachable"
    );
    assert_eq!(remote_routes(&lab, "node1"), routes_before);
    // Changes node1 cannot see, then the history past its last revision compacted
    // away (two writes: etcd keeps the revision it compacts at).
    lab.set_extra_manifests(ISOLATE_NODE1).unwrap();
    lab.set_extra_manifests(&format!(
        "{ISOLATE_NODE1}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team-b}}\n"
    ))
    .unwrap();
    etcd(&lab).compact().unwrap();
    assert!(ping(&b.netns, a.ip), "node1 cannot know the policy yet");

    partition(&lab, "node1", false);
    wait_for_within("node1 to catch up with the policy", SETTLE, || {
        !ping(&b.netns, a.ip)
    });
    wait_for_within("node1 to be fresh again", SETTLE, || {
        cluster_status(&lab, "node1").contains("Ok")
    });
    let log = std::fs::read_to_string(lab.paths.run_dir.join("node1/agent.log")).unwrap();
    assert!(
        log.contains("relisting"),
        "node1 did not relist after the compaction:\n{log}"
    );
    assert_eq!(remote_routes(&lab, "node1"), routes_before);
    assert_subnets_consistent(&lab);
}

#[test]
fn a_dead_nodes_routes_go_with_its_lease_and_a_restarted_agent_reclaims_its_subnet() {
    if !can_run() {
        return;
    }
    let mut lab = lab_on_etcd(2, 1);
    let (a, b) = (lab.pods[0].clone(), lab.pods[1].clone());
    let node2_cidr = lab.node("node2").unwrap().pod_cidr.to_string();
    assert!(remote_routes(&lab, "node1").contains_key(&node2_cidr));

    lab.kill_agent("node2").unwrap();
    wait_for_within(
        "node2's Node object to expire with its lease",
        SETTLE,
        || !has_key(&lab, "/podwire/v1/resources/Node/node2"),
    );
    wait_for_within("node1 to drop node2's routes", SETTLE, || {
        remote_routes(&lab, "node1").is_empty()
    });
    // Its subnet stays reserved for it: no other node may take it.
    assert_eq!(
        subnet_holders(&lab).get(&node2_cidr).map(String::as_str),
        Some("node2")
    );

    lab.start_agent("node2").unwrap();
    lab.wait_agent("node2").unwrap();
    let ipam: serde_json::Value =
        serde_json::from_str(&lab.podwire("node2", &["ipam", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(ipam["cidr"].as_str(), Some(node2_cidr.as_str()));
    wait_for_within("node1 to route to node2 again", SETTLE, || {
        remote_routes(&lab, "node1").contains_key(&node2_cidr)
    });
    assert!(
        ping(&a.netns, b.ip),
        "node2's pod is unreachable after the restart"
    );
    assert_subnets_consistent(&lab);
}

#[test]
fn tls_client_certificates_are_presented_and_required() {
    if !can_run() {
        return;
    }
    let ns = common::NetnsGuard::default();
    let netns = ns.create("etcdtls");
    podwire_agent::lab::topology::ip(&netns, &["link", "set", "lo", "up"]).unwrap();
    let dir = TempDir::new();
    common::etcd::make_certificates(&dir.0);
    let f = |n: &str| dir.0.join(n).display().to_string();
    let _etcd = common::etcd::EtcdProcess::start(
        &netns,
        &dir.0.join("data"),
        &[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            &f("server.pem"),
            "--key-file",
            &f("server.key"),
            "--client-cert-auth",
            "--trusted-ca-file",
            &f("ca.pem"),
        ],
    );
    let init = |with_cert: bool| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &netns, PODWIRE, "etcd", "init"])
            .args(["--etcd-endpoints", "https://127.0.0.1:2379"])
            .args(["--etcd-cacert", &f("ca.pem")]);
        if with_cert {
            c.args([
                "--etcd-cert",
                &f("client.pem"),
                "--etcd-key",
                &f("client.key"),
            ]);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let mut said = String::new();
    wait_for_within("etcd to accept the client certificate", SETTLE, || {
        let (ok, out) = init(true);
        said = out;
        ok
    });
    assert_eq!(said.trim(), "network config /podwire/v1 created");
    let (ok, out) = init(false);
    assert!(!ok, "etcd accepted a client without a certificate: {out}");
    let (ok, out) = init(true);
    assert!(ok && out.contains("unchanged"), "{out}");
}

#[test]
fn eight_nodes_racing_for_three_blocks_never_share_one() {
    use podwire_agent::source::etcd::connection::Connector;
    use podwire_agent::source::etcd::schema::{Backend, NetworkConfig, Schema, SubnetHolder};
    use podwire_agent::source::etcd::{subnet, writer, EtcdConfig};
    if !can_run() {
        return;
    }
    let ns = common::NetnsGuard::default();
    let netns = ns.create("etcdrace");
    podwire_agent::lab::topology::ip(&netns, &["link", "set", "lo", "up"]).unwrap();
    let dir = TempDir::new();
    let url = "http://127.0.0.1:2379";
    let _etcd = common::etcd::EtcdProcess::start(
        &netns,
        &dir.0.join("data"),
        &["--listen-client-urls", url, "--advertise-client-urls", url],
    );
    let config = EtcdConfig {
        endpoints: vec![url.into()],
        prefix: "/race/v1".into(),
        ..EtcdConfig::default()
    };
    // A /22 of /24 blocks: three blocks once the first is left out.
    let network = NetworkConfig {
        cluster_cidr: "10.244.0.0/22".parse().unwrap(),
        node_block_prefix: 24,
        backend: Backend::Vxlan,
    };
    let results = podwire_agent::lab::topology::in_netns(&netns, move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let deadline = std::time::Instant::now() + SETTLE;
                while let Err(e) = writer::init(&config, &network).await {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "etcd did not start: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let schema = Schema::new(&config.prefix);
                let claim = |i: u8| {
                    let (config, schema, network) =
                        (config.clone(), schema.clone(), network.clone());
                    async move {
                        let (_, mut client) = Connector::new(config).try_next().await.unwrap();
                        let me = SubnetHolder {
                            node: format!("n{i}"),
                            node_ip: std::net::Ipv4Addr::new(192, 0, 2, i),
                        };
                        subnet::claim(&mut client, &schema, &network, &me, None)
                            .await
                            .map_err(|e| format!("{e:#}"))
                    }
                };
                let racers: Vec<_> = (1..=8).map(|i| tokio::spawn(claim(i))).collect();
                let mut first = Vec::new();
                for r in racers {
                    first.push(r.await.unwrap());
                }
                // Each winner claiming again gets its own block and lease back.
                let mut again = Vec::new();
                for (i, r) in first.iter().enumerate() {
                    if r.is_ok() {
                        again.push((i, claim(i as u8 + 1).await));
                    }
                }
                (first, again)
            })
    })
    .unwrap();
    let (first, again) = results;
    let won: Vec<_> = first.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut subnets: Vec<String> = won.iter().map(|l| l.subnet.to_string()).collect();
    subnets.sort();
    assert_eq!(
        subnets,
        ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"],
        "{first:?}"
    );
    for r in first.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("no free /24 block left in 10.244.0.0/22"), "{r}");
    }
    for (i, r) in again {
        assert_eq!(
            r.as_ref().ok(),
            first[i].as_ref().ok(),
            "n{} lost its block",
            i + 1
        );
    }
}

//! The Kubernetes datastore against a real control plane: kube-apiserver and
//! kube-controller-manager built from the k8s.io/kubernetes module (tests/k8s-build)
//! on Debian's etcd, in the lab's own network namespace. Nodes get their pod CIDRs
//! from the controller manager, pods are registered through the API with the status a
//! kubelet reports, EndpointSlices are written by the real EndpointSlice controller,
//! and the agents run under deploy/podwire.yaml's ServiceAccount and ClusterRole.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::lab::{assert_all_pass, lab_on, wait_for_within, LabGuard};
use podwire_agent::dataplane::node::router_mac;
use podwire_agent::lab::demo;
use podwire_agent::lab::kubernetes::ControlPlane;
use podwire_agent::lab::traffic::{tcp_ask, Reporter, REPORT_PORT};
use podwire_agent::source::Datastore;

const API_WAIT: Duration = Duration::from_secs(60);

fn control_plane(lab: &LabGuard) -> &ControlPlane {
    &lab.kube.as_ref().expect("a Kubernetes lab").control_plane
}

fn kubectl(lab: &LabGuard, args: &[&str]) -> String {
    control_plane(lab).kubectl(args).unwrap()
}

/// Whether `from` reaches `to`'s reporter over TCP and is seen with its own IP.
fn reaches(lab: &LabGuard, from: &str, to: &str) -> bool {
    let (a, b) = (lab.pod(from).unwrap(), lab.pod(to).unwrap());
    tcp_ask(&a.netns, SocketAddr::new(IpAddr::V4(b.ip), REPORT_PORT))
        .is_ok_and(|seen| seen == a.ip.to_string())
}

fn routes(lab: &LabGuard, node: &str) -> String {
    lab.podwire(node, &["routes"]).unwrap()
}

fn deny_ingress_to(node: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: deny-{node}, namespace: default}}\n\
         spec: {{podSelector: {{matchLabels: {{node: {node}}}}}, policyTypes: [Ingress]}}\n"
    )
}

#[test]
fn agents_follow_the_api_server() {
    if !common::can_run() {
        return;
    }
    let mut lab = lab_on(2, 2, Datastore::Kubernetes);
    // The manifest the lab applied is accepted by the API server as a whole.
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/podwire.yaml");
    kubectl(&lab, &["apply", "--dry-run=server", "-f", deploy]);

    // `podwire lab kubeconfig` names a kubeconfig the module-built kubectl uses
    // inside the control plane's namespace.
    let out = std::process::Command::new(common::PODWIRE)
        .args(["lab", "kubeconfig"])
        .env("PODWIRE_LAB_DIR", &lab.paths.run_dir)
        .env("PODWIRE_LAB_PREFIX", &lab.paths.prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    let cp = control_plane(&lab);
    let nodes = common::sh(&[
        "ip",
        "netns",
        "exec",
        &cp.netns,
        cp.bin.join("kubectl").to_str().unwrap(),
        "--kubeconfig",
        path.trim(),
        "get",
        "nodes",
        "-o",
        "name",
    ]);
    assert_eq!(nodes, "node/node1\nnode/node2\n");

    // Pod CIDRs came from kube-controller-manager, and the agents use them.
    for n in &lab.nodes {
        let cidr = kubectl(
            &lab,
            &["get", "node", &n.name, "-o", "jsonpath={.spec.podCIDR}"],
        );
        assert_eq!(cidr, n.pod_cidr.to_string());
    }
    assert_all_pass(&demo::run_checks(&lab, demo::Coverage::Sample).unwrap());

    // Each agent published its VXLAN endpoint and NetworkUnavailable=False (through
    // nodes/status, under the ServiceAccount's ClusterRole).
    for n in lab.nodes.clone() {
        wait_for_within("the node's annotations", API_WAIT, || {
            let out = kubectl(&lab, &["get", "node", &n.name, "-o", "json"]);
            let node: serde_json::Value = serde_json::from_str(&out).unwrap();
            let data = node["metadata"]["annotations"]["podwire.io/backend-data"]
                .as_str()
                .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap());
            let m = router_mac(n.ip);
            let mac = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
            let available = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "NetworkUnavailable"
                        && c["status"] == "False"
                        && c["reason"] == "PodwireIsUp"
                });
            data.is_some_and(|d| d["VtepMAC"] == mac.as_str() && d["VNI"] == 1)
                && node["metadata"]["annotations"]["podwire.io/public-ip"] == n.ip.to_string()
                && available
        });
    }

    // A Service: the EndpointSlice controller picks the one pod with app=web, and
    // traffic to the ClusterIP reaches it (no other pod answers on the port).
    lab.set_pod_labels(
        "node2-pod2",
        BTreeMap::from([("app".to_string(), "web".to_string())]),
    )
    .unwrap();
    let web = lab.pod("node2-pod2").unwrap().clone();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: {REPORT_PORT}}}]}}\n"
    );
    lab.set_extra_manifests(&service).unwrap();
    wait_for_within("the controller's EndpointSlice", API_WAIT, || {
        kubectl(
            &lab,
            &[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ],
        ) == web.ip.to_string()
    });
    let cluster_ip: IpAddr = kubectl(
        &lab,
        &[
            "get",
            "service",
            "web",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
    .parse()
    .unwrap();
    let _web = Reporter::start(&web.netns, REPORT_PORT).unwrap();
    let client = lab.pod("node1-pod1").unwrap().clone();
    wait_for_within("the ClusterIP to reach the endpoint", API_WAIT, || {
        tcp_ask(&client.netns, SocketAddr::new(cluster_ip, 80))
            .is_ok_and(|seen| seen == client.ip.to_string())
    });

    // A NetworkPolicy through the API is enforced; deleted, traffic flows again.
    let _others = Reporter::start(&lab.pod("node2-pod1").unwrap().netns, REPORT_PORT).unwrap();
    assert!(reaches(&lab, "node1-pod1", "node2-pod1"));
    lab.set_extra_manifests(&format!("{service}---\n{}", deny_ingress_to("node2")))
        .unwrap();
    wait_for_within("the policy to apply", API_WAIT, || {
        !reaches(&lab, "node1-pod1", "node2-pod1")
    });
    lab.set_extra_manifests(&service).unwrap();
    wait_for_within("the policy to go", API_WAIT, || {
        reaches(&lab, "node1-pod1", "node2-pod1")
    });

    // A node removed from the API loses its routes on the others; back, it has them.
    let node2_cidr = lab.node("node2").unwrap().pod_cidr.to_string();
    assert!(routes(&lab, "node1").contains(&node2_cidr));
    lab.set_listed("node2", false).unwrap();
    wait_for_within("node2's routes to go", API_WAIT, || {
        !routes(&lab, "node1").contains(&node2_cidr)
    });
    assert!(!reaches(&lab, "node1-pod1", "node2-pod1"));
    lab.set_listed("node2", true).unwrap();
    wait_for_within("node2's routes to come back", API_WAIT, || {
        routes(&lab, "node1").contains(&node2_cidr)
    });
    wait_for_within("node2 reachable again", API_WAIT, || {
        reaches(&lab, "node1-pod1", "node2-pod1")
    });
}

fn status_says_stale(lab: &LabGuard, node: &str) -> bool {
    lab.podwire(node, &["status"])
        .is_ok_and(|s| s.contains("stale since"))
}

#[test]
fn forwarding_outlives_the_api_server() {
    if !common::can_run() {
        return;
    }
    let mut lab = lab_on(2, 1, Datastore::Kubernetes);
    let _r1 = Reporter::start(&lab.pod("node1-pod1").unwrap().netns, REPORT_PORT).unwrap();
    let _r2 = Reporter::start(&lab.pod("node2-pod1").unwrap().netns, REPORT_PORT).unwrap();
    assert!(reaches(&lab, "node1-pod1", "node2-pod1"));

    // Restarted, the API server is followed again: a policy made afterwards applies.
    let cp = &mut lab.kube.as_mut().unwrap().control_plane;
    cp.stop_apiserver();
    cp.start_apiserver().unwrap();
    cp.wait_ready().unwrap();
    lab.set_extra_manifests(&deny_ingress_to("node2")).unwrap();
    wait_for_within("the policy after the restart", API_WAIT, || {
        !reaches(&lab, "node1-pod1", "node2-pod1")
    });
    lab.set_extra_manifests("").unwrap();
    wait_for_within("the policy to go", API_WAIT, || {
        reaches(&lab, "node1-pod1", "node2-pod1")
    });

    // Down for a minute: forwarding goes on, and status says how stale it is.
    lab.kube.as_mut().unwrap().control_plane.stop_apiserver();
    for n in ["node1", "node2"] {
        wait_for_within("status to say stale", API_WAIT, || {
            status_says_stale(&lab, n)
        });
    }
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(60) {
        assert!(reaches(&lab, "node1-pod1", "node2-pod1"));
        assert!(reaches(&lab, "node2-pod1", "node1-pod1"));
        std::thread::sleep(Duration::from_secs(5));
    }
    let cp = &mut lab.kube.as_mut().unwrap().control_plane;
    cp.start_apiserver().unwrap();
    cp.wait_ready().unwrap();
    for n in ["node1", "node2"] {
        wait_for_within("status to recover", API_WAIT, || {
            !status_says_stale(&lab, n)
        });
    }
    // And it catches up with what changes afterwards.
    lab.set_extra_manifests(&deny_ingress_to("node2")).unwrap();
    wait_for_within("the policy after the outage", API_WAIT, || {
        !reaches(&lab, "node1-pod1", "node2-pod1")
    });
    assert!(reaches(&lab, "node2-pod1", "node1-pod1"));
}

//! Runs the built `podwire` binary on manifests and queries, as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: y, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.2.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: http}]
"#;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "podwire-cli-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn podwire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podwire"))
        .args(args)
        .output()
        .unwrap()
}

fn check(s: &Scratch, manifests: &str, queries: &str, format: &str) -> Output {
    let m = s.file("cluster.yaml", manifests);
    let q = s.file("queries.json", queries);
    podwire(&[
        "policy",
        "check",
        "--manifests",
        m.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--output",
        format,
    ])
}

#[test]
fn check_prints_verdicts_with_explanations_in_query_order() {
    let s = Scratch::new("ok");
    let queries = r#"{"queries": [
        {"from": "y/client", "to": "x/web", "port": 8080, "protocol": "TCP"},
        {"from": "y/client", "to": "x/web", "port": 80, "protocol": "TCP"},
        {"from": "ip:192.0.2.1", "to": "x/web", "port": 8080, "protocol": "TCP"},
        {"from": "x/web", "to": "y/client", "port": 53, "protocol": "UDP"},
        {"from": "x/web", "to": "x/web", "port": 1, "protocol": "SCTP"}
    ]}"#;
    let out = check(&s, MANIFESTS, queries, "json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r[0]["from"], "y/client");
    assert_eq!(r[0]["port"], 8080);
    assert_eq!(r[0]["protocol"], "TCP");
    assert_eq!(r[0]["verdict"], "allow");
    assert_eq!(r[0]["ingress"]["isolated"], true);
    assert_eq!(r[0]["ingress"]["policy"], "x/web-from-y");
    assert_eq!(r[0]["ingress"]["rule"], 0);
    assert_eq!(r[0]["egress"]["isolated"], false);
    assert_eq!(r[1]["verdict"], "deny");
    assert_eq!(r[1]["ingress"]["allowed"], false);
    assert_eq!(r[1]["ingress"]["isolated_by"][0], "x/web-from-y");
    assert_eq!(r[2]["verdict"], "deny");
    assert_eq!(
        r[2]["egress"]["reason"],
        "not a pod: NetworkPolicy does not apply"
    );
    assert_eq!(r[3]["verdict"], "allow");
    assert_eq!(r[3]["ingress"]["isolated"], false);
    // A pod to itself: allowed (never reaches the datapath), with a note.
    assert_eq!(r[4]["verdict"], "allow");
    assert_eq!(r[4]["ingress"]["allowed"], false);
    assert!(r[4]["note"].as_str().unwrap().contains("itself"));
    // The table for people has a header and one line per query.
    let out = check(&s, MANIFESTS, queries, "table");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("FROM"));
    assert_eq!(text.lines().count(), 6);
    assert!(text.contains("allowed by ingress rule 0 of NetworkPolicy x/web-from-y"));
}

#[test]
fn matrix_prints_the_truth_table() {
    let s = Scratch::new("matrix");
    let m = s.file("cluster.yaml", MANIFESTS);
    let out = podwire(&[
        "policy",
        "matrix",
        "--manifests",
        m.to_str().unwrap(),
        "--port",
        "8080/TCP",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        ["-\tx/web\ty/client", "x/web\t.\t.", "y/client\t.\t."]
    );
    let out = podwire(&[
        "policy",
        "matrix",
        "--manifests",
        m.to_str().unwrap(),
        "--port",
        "80",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("y/client\tX\t."), "{text}");
}

fn failure(manifests: &str, queries: &str) -> String {
    let s = Scratch::new("err");
    let out = check(&s, manifests, queries, "json");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr).unwrap()
}

const ONE: &str =
    r#"{"queries": [{"from": "y/client", "to": "x/web", "port": 80, "protocol": "TCP"}]}"#;

#[test]
fn bad_input_fails_with_a_message_naming_the_problem() {
    let e = failure(
        MANIFESTS,
        r#"{"queries": [{"from": "y/nobody", "to": "x/web", "port": 80, "protocol": "TCP"}]}"#,
    );
    assert!(
        e.contains("query 1") && e.contains("unknown pod y/nobody"),
        "{e}"
    );
    let e = failure(
        MANIFESTS,
        r#"{"queries": [{"from": "y/client", "to": "x/web", "port": 80, "protocol": "ICMP"}]}"#,
    );
    assert!(e.contains("unsupported protocol \"ICMP\""), "{e}");
    let e = failure(
        MANIFESTS,
        r#"{"queries": [{"from": "y/client", "to": "x/web", "port": 0, "protocol": "TCP"}]}"#,
    );
    assert!(e.contains("\"port\": 0 is not a port number"), "{e}");
    let e = failure(
        MANIFESTS,
        r#"{"queries": [{"from": "ip:300.1.1.1", "to": "x/web", "port": 80}]}"#,
    );
    assert!(
        e.contains("\"ip:300.1.1.1\" is not a valid IP address"),
        "{e}"
    );
    let e = failure(MANIFESTS, "{\"queries\": 3}");
    assert!(e.contains("not a valid queries file"), "{e}");
    let bad_policy = MANIFESTS.replace("ports: [{port: http}]", "ports: [{port: 90, endPort: 89}]");
    let e = failure(&bad_policy, ONE);
    assert!(
        e.contains("NetworkPolicy x/web-from-y is invalid: spec.ingress[0].ports[0].endPort: Invalid value: 89: must be greater than or equal to `port`"),
        "{e}"
    );
    let bad_yaml = MANIFESTS.replace("containerPort: 8080", "containerPort: [8080]");
    let e = failure(&bad_yaml, ONE);
    assert!(
        e.contains("Pod x/web: spec.containers[0].ports[0].containerPort:"),
        "{e}"
    );
    let out = podwire(&[
        "policy",
        "check",
        "--manifests",
        "/nonexistent/podwire.yaml",
        "--queries",
        "/nonexistent/q.json",
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("cannot read queries file /nonexistent/q.json"),
        "{e}"
    );
}

#[test]
fn manifests_from_a_folder_of_yaml_and_json() {
    let s = Scratch::new("folder");
    let dir = s.0.join("cluster");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let (ns_and_pods, policy) =
        MANIFESTS.split_at(MANIFESTS.find("---\napiVersion: networking").unwrap());
    std::fs::write(dir.join("a.yaml"), ns_and_pods).unwrap();
    std::fs::write(dir.join("sub/policy.yml"), policy).unwrap();
    std::fs::write(dir.join("README.txt"), "not a manifest").unwrap();
    std::fs::write(
        dir.join("extra.json"),
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "y"}, "status": {"podIP": "10.244.2.3"}}"#,
    )
    .unwrap();
    let q = s.file(
        "q.json",
        r#"{"queries": [{"from": "y/other", "to": "x/web", "port": 8080, "protocol": "TCP"}, {"from": "y/other", "to": "x/web", "port": 8081, "protocol": "TCP"}]}"#,
    );
    let out = podwire(&[
        "policy",
        "check",
        "--manifests",
        dir.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["verdict"], "allow");
    assert_eq!(v["results"][1]["verdict"], "deny");
}

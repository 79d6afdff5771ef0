//! `podwire lab` as a user runs it: `demo` (build, check with real traffic, table,
//! tear down, exit status), and `up` / `status` / `exec` / `down`, including `down`
//! after a crash that left a half-recorded lab. Each test uses its own namespace
//! prefix and run directory (`PODWIRE_LAB_PREFIX`, `PODWIRE_LAB_DIR`), and a guard
//! runs `down` on drop. Needs root; without it the tests print "skipped" and pass.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{can_run, suffix, PODWIRE};
use podwire_agent::lab::topology::list_netns;

struct CliLab {
    prefix: String,
    dir: PathBuf,
}

impl CliLab {
    fn new() -> CliLab {
        let s = suffix();
        CliLab {
            prefix: format!("pwc{s}"),
            dir: std::env::temp_dir().join(format!("podwire-cli-lab-{s}")),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(PODWIRE)
            .arg("lab")
            .args(args)
            .env("PODWIRE_LAB_PREFIX", &self.prefix)
            .env("PODWIRE_LAB_DIR", &self.dir)
            .output()
            .unwrap()
    }

    fn namespaces(&self) -> Vec<String> {
        list_netns(&format!("{}-", self.prefix))
    }
}

impl Drop for CliLab {
    fn drop(&mut self) {
        podwire_agent::lab::down(&self.prefix, &self.dir);
    }
}

/// The demo's table has no FAIL row and its summary says every check passed.
fn assert_every_check_passed(stdout: &str) {
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    let (passed, total) = summary
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('/')
        .unwrap();
    assert_eq!(passed, total, "{summary}");
    assert!(summary.ends_with("checks passed"), "{summary}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn lab_demo_passes_every_check_prints_the_table_and_cleans_up() {
    if !can_run() {
        return;
    }
    let lab = CliLab::new();
    let out = lab.run(&["demo", "--nodes", "2", "--pods-per-node", "2"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    let header = stdout.lines().next().unwrap();
    for col in ["CHECK", "FROM", "TO", "PROTO", "RESULT", "DETAIL"] {
        assert!(header.contains(col), "{header}");
    }
    for what in [
        "one IP per pod",
        "pod→pod same node",
        "pod→pod cross-node",
        "node→pod local",
        "node→pod remote",
        "pod→node local",
        "pod→node remote",
        "service ClusterIP",
        "service name",
        "headless service",
        "service by name",
        "policy allows",
        "policy denies",
    ] {
        assert!(stdout.contains(what), "no {what} check:\n{stdout}");
    }
    for proto in ["ICMP", "TCP", "UDP"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("cross-node") && l.contains(proto) && l.contains("PASS")),
            "{stdout}"
        );
    }
    assert_every_check_passed(&stdout);
    // Progress went to stderr while building.
    assert!(
        text(&out.stderr).contains("lab up in"),
        "{}",
        text(&out.stderr)
    );
    // Torn down: no namespaces, no run directory.
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!lab.dir.exists());
}

#[test]
fn lab_demo_on_etcd_passes_and_leaves_no_member_behind() {
    if !can_run() {
        return;
    }
    let lab = CliLab::new();
    let out = lab.run(&[
        "demo",
        "--datastore",
        "etcd",
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo on etcd failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("etcd: 3 members"),
        "{}",
        text(&out.stderr)
    );
    assert_every_check_passed(&stdout);
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    let members = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| podwire_agent::lab::etcd::is_lab_member(*pid, &lab.dir))
        .count();
    assert_eq!(members, 0, "etcd members outlived the demo");
}

#[test]
fn lab_up_status_exec_down_and_down_after_a_crash() {
    if !can_run() {
        return;
    }
    let lab = CliLab::new();
    let yaml = std::env::temp_dir().join(format!("{}.yaml", lab.prefix));
    std::fs::write(&yaml, "nodes: 2\npodsPerNode: 1\nunderlayMtu: 1400\n").unwrap();
    let out = lab.run(&["up", "--config", yaml.to_str().unwrap()]);
    let _ = std::fs::remove_file(&yaml);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("node2: netns"), "progress");
    // A second `up` refuses to clobber the lab.
    assert!(!lab.run(&["up"]).status.success());

    let status = text(&lab.run(&["status"]).stdout);
    assert!(
        status.contains("node1") && status.contains("running"),
        "{status}"
    );
    assert!(status.contains("default/node2-pod1"), "{status}");

    // exec runs inside the pod: its eth0 has the pod MTU (1400 - 50) and the pod
    // reaches the pod on the other node.
    let out = lab.run(&[
        "exec",
        "default/node1-pod1",
        "--",
        "ip",
        "-j",
        "link",
        "show",
        "eth0",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("\"mtu\":1350"),
        "{}",
        text(&out.stdout)
    );
    let out = lab.run(&[
        "exec",
        "node1-pod1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.2.2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // The command's exit status is passed through.
    assert_eq!(
        lab.run(&["exec", "node1-pod1", "--", "false"])
            .status
            .code(),
        Some(1)
    );
    assert!(!lab.run(&["exec", "nope", "--", "true"]).status.success());

    // A crash: the state file is lost; `down` still finds the agents (by their
    // command line) and the namespaces (by prefix).
    std::fs::remove_file(lab.dir.join("state.json")).unwrap();
    assert_eq!(lab.namespaces().len(), 5);
    let out = lab.run(&["down"]);
    assert!(out.status.success());
    let said = text(&out.stdout);
    assert_eq!(said.matches("agent pid").count(), 2, "{said}");
    assert!(lab.namespaces().is_empty());
    assert!(!lab.dir.exists());
    assert!(text(&lab.run(&["down"]).stdout).contains("no lab found"));
    assert!(!lab.run(&["status"]).status.success());
}

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web1, namespace: shop, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web2, namespace: shop, labels: {app: web}}
spec: {nodeName: node2, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: node2, containers: [{name: c, image: x, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

/// What a lab server at `addr:port` says to `pod` over TCP (bash's /dev/tcp), or
/// `None` when the connection fails within 3 s.
fn ask(lab: &CliLab, pod: &str, addr: &str, port: u16) -> Option<String> {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port} && cat <&3");
    let out = lab.run(&["exec", pod, "--", "timeout", "3", "bash", "-c", &script]);
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

fn lab_json(lab: &CliLab) -> serde_json::Value {
    let out = lab.run(&["status", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pod_ip(status: &serde_json::Value, name: &str) -> String {
    status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pod {name} in {status}"))["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn lab_apply_creates_pods_services_and_policies_and_delete_removes_them() {
    if !can_run() {
        return;
    }
    let lab = CliLab::new();
    let dir = std::env::temp_dir().join(format!("{}-manifests", lab.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.yaml"), SHOP).unwrap();
    std::fs::write(
        dir.join("lab.yaml"),
        "nodes: 2\npodsPerNode: 0\nmanifests: [shop.yaml]\n",
    )
    .unwrap();
    let out = lab.run(&["up", "--config", dir.join("lab.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pod/shop/web2 created"),
        "{}",
        text(&out.stderr)
    );

    let st = lab_json(&lab);
    let web = &st["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["clusterIp"], "10.96.0.11");
    assert_eq!(web["endpoints"], 2);
    let client = pod_ip(&st, "client");
    let web1 = pod_ip(&st, "web1");
    let db = pod_ip(&st, "db");
    assert_eq!(
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "db")
            .unwrap()["labels"]["app"],
        "db"
    );

    // The ClusterIP reaches a backend; the backend saw the client's own pod IP.
    let said = ask(&lab, "shop/client", "10.96.0.11", 80).expect("service answers");
    assert!(
        said == format!("{client} shop/web1") || said == format!("{client} shop/web2"),
        "{said}"
    );
    // The policy: web reaches db, the client does not.
    assert_eq!(
        ask(&lab, "shop/web1", &db, 5432),
        Some(format!("{web1} shop/db"))
    );
    assert_eq!(ask(&lab, "shop/client", &db, 5432), None);

    // A bad manifest is refused whole and changes nothing.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec: {ports: [{port: 81}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: nowhere, namespace: shop}\nspec: {containers: []}\n",
    )
    .unwrap();
    let out = lab.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Pod shop/nowhere: spec.nodeName"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab_json(&lab)["services"].as_array().unwrap().len(), 1);

    // Opening the policy to the client applies live.
    let open = dir.join("open.yaml");
    std::fs::write(
        &open,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-web, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {}}]}]\n",
    )
    .unwrap();
    let out = lab.run(&["apply", "-f", open.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let opened = (0..30).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        ask(&lab, "shop/client", &db, 5432) == Some(format!("{client} shop/db"))
    });
    assert!(opened, "the changed policy never let the client in");

    // Deleting a backend pod takes it out of the service's endpoints.
    let web2 = dir.join("web2.yaml");
    std::fs::write(
        &web2,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web2, namespace: shop}\n",
    )
    .unwrap();
    let out = lab.run(&["delete", "-f", web2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pod/shop/web2 deleted"));
    assert_eq!(lab_json(&lab)["services"][0]["endpoints"], 1);
    assert!(!lab.namespaces().iter().any(|n| n.ends_with("shop-web2")));

    let out = lab.run(&["down"]);
    let said = text(&out.stdout);
    assert_eq!(
        said.matches("serve pid").count(),
        2,
        "web1 and db servers: {said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

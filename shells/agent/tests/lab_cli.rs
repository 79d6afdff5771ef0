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
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    let (passed, total) = summary
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('/')
        .unwrap();
    assert_eq!(passed, total, "{summary}");
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

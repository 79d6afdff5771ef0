//! The whole Kubernetes flow, as `podwire lab demo` shows it: a client pod resolves a
//! Service's name through its search path, connects to it by name, the datapath
//! picks a backend pod on another node, which sees the client's real address; a
//! headless Service resolves to its pods; a NetworkPolicy lets only the backends
//! reach a database.
//!
//! Design note: the scenario is an ordinary manifest applied with [`Lab::apply`],
//! the same path `podwire lab apply -f` takes, so the demo exercises what a user
//! would type and nothing the demo alone knows. The backends sit on the last node
//! and the client on the first, so "another node" holds whenever the lab has two.
//! Each check answers from what the receiving pod's server reported (its name and
//! the client address it saw), so a wrong backend, a NAT or a policy leak shows in
//! the table's detail column. Names are resolved the way a pod's program resolves
//! them: glibc (`getent`, bash's `/dev/tcp`) inside the pod's namespace, reading the
//! resolv.conf the lab wrote from the CNI result, as kubelet does.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::demo::Check;
use super::topology::exec;
use super::traffic::tcp_ask;
use super::Lab;

/// The demo's namespace.
pub const NAMESPACE: &str = "demo";
/// The backends' port.
pub const BACKEND_PORT: u16 = 8080;
/// The database's port.
pub const DB_PORT: u16 = 5432;

fn scenario(client_node: &str, backend_node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}, labels: {{app: client}}}}
spec: {{nodeName: {client_node}, containers: [{{name: main, image: lab}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-1, namespace: {NAMESPACE}, labels: {{app: backend}}}}
spec: {{nodeName: {backend_node}, hostname: backend-1, subdomain: backends, containers: [{{name: main, image: lab, ports: [{{name: http, containerPort: {BACKEND_PORT}}}]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-2, namespace: {NAMESPACE}, labels: {{app: backend}}}}
spec: {{nodeName: {backend_node}, hostname: backend-2, subdomain: backends, containers: [{{name: main, image: lab, ports: [{{name: http, containerPort: {BACKEND_PORT}}}]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: database, namespace: {NAMESPACE}, labels: {{app: database}}}}
spec: {{nodeName: {client_node}, containers: [{{name: main, image: lab, ports: [{{name: sql, containerPort: {DB_PORT}}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: my-service, namespace: {NAMESPACE}}}
spec: {{selector: {{app: backend}}, ports: [{{name: http, port: 80, targetPort: http}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: backends, namespace: {NAMESPACE}}}
spec: {{clusterIP: None, selector: {{app: backend}}, ports: [{{name: http, port: {BACKEND_PORT}}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: database-from-backends, namespace: {NAMESPACE}}}
spec:
  podSelector: {{matchLabels: {{app: database}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: backend}}}}}}], ports: [{{port: {DB_PORT}}}]}}]
"#
    )
}

/// What a lab pod's server said: the client address it saw and its own name.
fn parse_answer(said: &str) -> Option<(String, String)> {
    let mut it = said.split_whitespace();
    Some((it.next()?.to_string(), it.next()?.to_string()))
}

/// Asks over TCP until the answer comes (the agents apply a change within a
/// second), for up to `patience`; the last error otherwise.
fn ask_until(netns: &str, to: SocketAddr, patience: Duration) -> Result<(String, String)> {
    let deadline = Instant::now() + patience;
    loop {
        let r = tcp_ask(netns, to)
            .and_then(|s| parse_answer(&s).with_context(|| format!("unexpected answer {s:?}")));
        if r.is_ok() || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The addresses glibc resolves `name` to inside `netns` (`getent ahostsv4`).
fn resolve(netns: &str, name: &str) -> Result<Vec<Ipv4Addr>> {
    let out = exec(netns, &["getent", "ahostsv4", name])?;
    let mut addrs: Vec<Ipv4Addr> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Connects to `name:port` from `netns` with bash's `/dev/tcp` (so glibc resolves
/// the name) and returns what the server said.
fn connect_by_name(netns: &str, name: &str, port: u16) -> Result<(String, String)> {
    let script = format!("exec 3<>/dev/tcp/{name}/{port} && cat <&3");
    let said = exec(netns, &["timeout", "5", "bash", "-c", &script])?;
    parse_answer(&said).with_context(|| format!("unexpected answer {said:?}"))
}

/// Applies the scenario and runs its checks.
pub fn run_checks(lab: &mut Lab) -> Result<Vec<Check>> {
    let first = lab
        .nodes
        .first()
        .context("the lab has no node")?
        .name
        .clone();
    let last = lab
        .nodes
        .last()
        .context("the lab has no node")?
        .name
        .clone();
    let dir = lab.paths.run_dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("flow.yaml");
    std::fs::write(&file, scenario(&first, &last))?;
    lab.apply(&file)?;
    let pod = |name: &str| lab.pod(&format!("{NAMESPACE}/{name}")).cloned();
    let client = pod("client")?;
    let database = pod("database")?;
    let backends = [pod("backend-1")?, pod("backend-2")?];
    let service_ip: Ipv4Addr = lab
        .objects
        .services
        .get(&format!("{NAMESPACE}/my-service"))
        .and_then(|s| s.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok())
        .context("my-service has no ClusterIP")?;
    let mut out = Vec::new();
    let row = |what: &str, from: &super::LabPod, to: String, result| Check {
        what: what.into(),
        from: format!("{}/{} ({})", from.namespace, from.name, from.ip),
        to,
        proto: "TCP",
        result,
    };

    // ClusterIP → a backend on the other node, which sees the client's own IP.
    let to = SocketAddr::from((service_ip, 80));
    let result = match ask_until(&client.netns, to, Duration::from_secs(3)) {
        Ok((seen, by)) => {
            let backend = backends
                .iter()
                .find(|b| format!("{}/{}", b.namespace, b.name) == by);
            match backend {
                Some(b) if seen == client.ip.to_string() => Ok(format!(
                    "answered by {by} on {} ({}), which saw {seen}",
                    b.node, b.ip
                )),
                Some(_) => Err(format!("{by} saw {seen}, not the client's {}", client.ip)),
                None => Err(format!("answered by {by}, not a backend of my-service")),
            }
        }
        Err(e) => Err(format!("{e:#}")),
    };
    out.push(row(
        "service ClusterIP",
        &client,
        format!("{NAMESPACE}/my-service ({service_ip}:80)"),
        result,
    ));

    // Names: the short name through the search path, the namespace-qualified name
    // and the FQDN all give the ClusterIP; the headless service its pods.
    for name in [
        "my-service".to_string(),
        format!("my-service.{NAMESPACE}"),
        format!("my-service.{NAMESPACE}.svc.cluster.local"),
    ] {
        let result = match resolve(&client.netns, &name) {
            Ok(a) if a == [service_ip] => Ok(format!("{name} is {service_ip}")),
            Ok(a) => Err(format!("{name} resolved to {a:?}, not {service_ip}")),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push(Check {
            proto: "DNS",
            ..row("service name", &client, name.clone(), result)
        });
    }
    let mut pod_ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
    pod_ips.sort();
    let headless = format!("backends.{NAMESPACE}");
    let result = match resolve(&client.netns, &headless) {
        Ok(a) if a == pod_ips => Ok(format!("{headless} is {a:?}, the backend pods")),
        Ok(a) => Err(format!(
            "{headless} resolved to {a:?}, not the pods {pod_ips:?}"
        )),
        Err(e) => Err(format!("{e:#}")),
    };
    out.push(Check {
        proto: "DNS",
        ..row("headless service", &client, headless, result)
    });

    // By name: a backend on the other node answers and sees the client's own IP.
    let result = match connect_by_name(&client.netns, "my-service", 80) {
        Ok((seen, by)) if seen == client.ip.to_string() => {
            Ok(format!("answered by {by}, which saw {seen}"))
        }
        Ok((seen, by)) => Err(format!("{by} saw {seen}, not the client's {}", client.ip)),
        Err(e) => Err(format!("{e:#}")),
    };
    out.push(row(
        "service by name",
        &client,
        "my-service:80".into(),
        result,
    ));

    // NetworkPolicy: the database admits the backends, nobody else.
    let db = SocketAddr::from((database.ip, DB_PORT));
    let db_label = format!("{NAMESPACE}/database ({}:{DB_PORT})", database.ip);
    let allowed = match ask_until(&backends[0].netns, db, Duration::from_secs(3)) {
        Ok((seen, _)) if seen == backends[0].ip.to_string() => Ok(format!(
            "allowed by {NAMESPACE}/database-from-backends; saw {seen}"
        )),
        Ok((seen, _)) => Err(format!("the database saw {seen}")),
        Err(e) => Err(format!("denied: {e:#}")),
    };
    out.push(row(
        "policy allows",
        &backends[0],
        db_label.clone(),
        allowed,
    ));
    let denied = match tcp_ask(&client.netns, db) {
        Ok(s) => Err(format!("the client got through: {}", s.trim())),
        Err(_) => Ok(format!("denied by {NAMESPACE}/database-from-backends")),
    };
    out.push(row("policy denies", &client, db_label, denied));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_is_valid_manifests() {
        let text = scenario("node1", "node2");
        let objects =
            crate::control::manifests::parse(&text, std::path::Path::new("flow.yaml")).unwrap();
        assert_eq!(objects.len(), 8);
        assert_eq!(
            parse_answer("10.244.1.2 demo/backend-1\n"),
            Some(("10.244.1.2".into(), "demo/backend-1".into()))
        );
    }
}

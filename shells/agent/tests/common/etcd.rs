//! Helpers for labs on etcd: what etcd holds, what an agent sees, and partitions
//! between a node and the etcd members (blackhole routes inside the node's own
//! namespace, so nothing outside the lab is touched).

use std::collections::BTreeMap;

use podwire_agent::lab::topology::ip;
use podwire_agent::lab::Lab;

/// The lab's etcd cluster.
pub fn etcd(lab: &Lab) -> &podwire_agent::lab::etcd::LabEtcd {
    lab.etcd.as_ref().expect("a lab on etcd")
}

/// The subnet leases in etcd: subnet (`10.244.1.0/24`) → holder's node name.
pub fn subnet_holders(lab: &Lab) -> BTreeMap<String, String> {
    let out = etcd(lab)
        .etcdctl(&["get", "--prefix", "/podwire/v1/subnets/"])
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            let subnet = kv[0].rsplit('/').next().unwrap().replacen('-', "/", 1);
            let v: serde_json::Value = serde_json::from_str(kv[1]).unwrap();
            (subnet, v["node"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Whether etcd holds `key`.
pub fn has_key(lab: &Lab, key: &str) -> bool {
    !etcd(lab)
        .etcdctl(&["get", "--keys-only", key])
        .unwrap()
        .trim()
        .is_empty()
}

/// The remote pod CIDRs `node`'s agent routes to: destination → node.
pub fn remote_routes(lab: &Lab, node: &str) -> BTreeMap<String, String> {
    let out = lab.podwire(node, &["routes", "-o", "json"]).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .filter(|r| r["kind"] == "vxlan")
        .map(|r| {
            (
                r["destination"].as_str().unwrap().to_string(),
                r["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `Cluster:` line of `podwire status` on `node`.
pub fn cluster_status(lab: &Lab, node: &str) -> String {
    lab.podwire(node, &["status"])
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Cluster"))
        .unwrap_or_default()
        .to_string()
}

/// Cuts `node` off every etcd member (or heals it): blackhole routes in the node.
pub fn partition(lab: &Lab, node: &str, cut: bool) {
    let netns = &lab.node(node).unwrap().netns;
    for m in &etcd(lab).members {
        let dest = format!("{}/32", m.ip);
        let verb = if cut { "add" } else { "del" };
        ip(netns, &["route", verb, "blackhole", &dest]).unwrap();
    }
}

/// A CA and a server and a client certificate signed by it, made with `openssl`
/// in `dir`: `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1),
/// `client.pem`/`client.key`.
pub fn make_certificates(dir: &std::path::Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "openssl",
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=podwire test CA",
    ];
    ca.extend_from_slice(&ec);
    let (ca_pem, ca_key) = (p("ca.pem"), p("ca.key"));
    ca.extend_from_slice(&["-keyout", &ca_key, "-out", &ca_pem]);
    super::sh(&ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, extfile) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&extfile, ext).unwrap();
        let subj = format!("/CN=podwire test {name}");
        let mut req = vec!["openssl", "req", "-new", "-subj", &subj];
        req.extend_from_slice(&ec);
        req.extend_from_slice(&["-keyout", &key, "-out", &csr]);
        super::sh(&req);
        super::sh(&[
            "openssl",
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ]);
    }
}

/// One etcd member in `netns`, killed on drop.
pub struct EtcdProcess(pub std::process::Child);

impl EtcdProcess {
    /// Starts etcd in `netns` on 127.0.0.1 with `args` (client URLs, TLS).
    pub fn start(netns: &str, data_dir: &std::path::Path, args: &[&str]) -> EtcdProcess {
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        EtcdProcess(
            std::process::Command::new("ip")
                .args(["netns", "exec", netns, "etcd", "--data-dir"])
                .arg(data_dir)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

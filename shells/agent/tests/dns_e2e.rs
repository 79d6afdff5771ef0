//! Cluster DNS end to end: a two-node lab whose agents serve DNS, pods with the
//! resolv.conf kubelet would write, real `dig` and glibc (`getent`) inside the pods,
//! NSD as the upstream for names outside the cluster. The queries are those of the
//! upstream Kubernetes e2e DNS tests (test/e2e/network/dns.go, dns_common.go).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::can_run;
use common::dns::{dig, dig_short, getent, Nsd};
use common::lab::{lab_with, wait_for};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use podwire_agent::lab::LabSpec;

const NODE_LOCAL: &str = "169.254.20.10";
const CLUSTER_DNS: &str = "10.96.0.10";
/// The host number of NSD on the lab's underlay.
const UPSTREAM_HOST: u8 = 200;

fn services(querier: Ipv4Addr, external: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: kubernetes, namespace: default}}
spec: {{clusterIP: 10.96.0.1, ports: [{{name: https, port: 443, targetPort: 6443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {CLUSTER_DNS}
  ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dns-test-service, namespace: dns-test}}
spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-test-service-1, namespace: dns-test, labels: {{kubernetes.io/service-name: dns-test-service}}}}
addressType: IPv4
ports: [{{name: http, port: 80, protocol: TCP}}]
endpoints:
- addresses: [{querier}]
  hostname: dns-querier-2
  conditions: {{ready: true}}
---
apiVersion: v1
kind: Service
metadata: {{name: test-service-2, namespace: dns-test}}
spec: {{clusterIP: 10.96.5.2, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: dns-test-service-3, namespace: dns-test}}
spec: {external}
"
    )
}

fn a_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// glibc's default: A and AAAA sent back to back from one socket, both answers
/// awaited. Returns how many of `rounds` got both answers.
fn parallel_a_aaaa(netns: &str, server: Ipv4Addr, rounds: u16) -> u16 {
    podwire_agent::lab::topology::in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::from((server, 53))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let name = "kubernetes.default.svc.cluster.local.";
        let mut complete = 0;
        let mut buf = [0u8; 512];
        for round in 0..rounds {
            let (a, aaaa) = (round.wrapping_mul(2), round.wrapping_mul(2) + 1);
            s.send(&a_query(a, name, RecordType::A)).unwrap();
            s.send(&a_query(aaaa, name, RecordType::AAAA)).unwrap();
            let mut seen = [false; 2];
            while !(seen[0] && seen[1]) {
                let Ok(n) = s.recv(&mut buf) else { break };
                let m = Message::from_vec(&buf[..n]).unwrap();
                if m.metadata.id == a {
                    seen[0] = true;
                } else if m.metadata.id == aaaa {
                    seen[1] = true;
                }
            }
            if seen == [true, true] {
                complete += 1;
            }
        }
        complete
    })
    .unwrap()
}

#[test]
fn cluster_dns_answers_the_upstream_e2e_queries_from_pods() {
    if !can_run() {
        return;
    }
    let spec = LabSpec {
        nodes: 2,
        pods_per_node: 0,
        ..LabSpec::default()
    };
    let underlay: ipnet::Ipv4Net = spec.underlay_cidr.parse().unwrap();
    let o = underlay.network().octets();
    let upstream = Ipv4Addr::new(o[0], o[1], o[2], UPSTREAM_HOST);
    let mut lab = lab_with(LabSpec {
        dns_upstreams: vec![upstream.to_string()],
        ..spec
    });
    let (up_ns, up_addr) = lab.add_foreign_host("upstream", UPSTREAM_HOST).unwrap();
    assert_eq!(up_addr, upstream);
    let _nsd = Nsd::start(
        &up_ns,
        upstream,
        "example.test",
        "www IN A 192.0.2.80\nfoo IN A 192.0.2.81\nbar IN A 192.0.2.82",
    );
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let client = lab
        .add_pod_with("node1", "default", "client", labels("client"))
        .unwrap();
    let querier = lab
        .add_pod_with("node2", "dns-test", "querier", labels("querier"))
        .unwrap();
    // The resolv.conf kubelet would write, from the CNI result.
    let resolv =
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", querier.netns)).unwrap();
    assert_eq!(
        resolv,
        format!("nameserver {NODE_LOCAL}\nsearch dns-test.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
    );
    lab.set_extra_manifests(&services(
        querier.ip,
        "{type: ExternalName, externalName: foo.example.test}",
    ))
    .unwrap();
    let c = client.netns.clone();
    wait_for("the services in DNS", || {
        dig_short(&c, &["test-service-2.dns-test.svc.cluster.local"]) == ["10.96.5.2"]
    });

    // kubernetes.default, .svc and the FQDN: search path (dig +search and glibc),
    // over UDP and TCP, at the node-local address and at the cluster DNS ClusterIP.
    for name in [
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        for transport in ["+notcp", "+tcp"] {
            assert_eq!(
                dig_short(&c, &["+search", transport, name]),
                ["10.96.0.1"],
                "{name} {transport}"
            );
            let at_vip = format!("@{CLUSTER_DNS}");
            assert_eq!(
                dig_short(&c, &[&at_vip, "+search", transport, name]),
                ["10.96.0.1"],
                "{name} {transport} at the ClusterIP"
            );
        }
        let hosts = getent(&c, "hosts", name);
        assert!(
            hosts.starts_with("10.96.0.1 "),
            "getent hosts {name}: {hosts:?}"
        );
    }
    // SRV of named ports: headless (endpoint targets) and ClusterIP.
    assert_eq!(
        dig_short(
            &c,
            &[
                "SRV",
                "_http._tcp.dns-test-service.dns-test.svc.cluster.local"
            ]
        ),
        ["0 100 80 dns-querier-2.dns-test-service.dns-test.svc.cluster.local."]
    );
    assert_eq!(
        dig_short(
            &c,
            &[
                "SRV",
                "_http._tcp.test-service-2.dns-test.svc.cluster.local"
            ]
        ),
        ["0 100 80 test-service-2.dns-test.svc.cluster.local."]
    );
    // Headless A, hostname.subdomain, from the querier's own search path too.
    let q = querier.ip.to_string();
    assert_eq!(
        dig_short(&c, &["dns-test-service.dns-test.svc.cluster.local"]),
        [q.as_str()]
    );
    assert_eq!(
        dig_short(
            &c,
            &["dns-querier-2.dns-test-service.dns-test.svc.cluster.local"]
        ),
        [q.as_str()]
    );
    let hosts = getent(&querier.netns, "hosts", "dns-querier-2.dns-test-service");
    assert!(hosts.starts_with(&format!("{q} ")), "{hosts:?}");
    // Pod A records, as dns_common.go builds them from the pod's own address.
    let pod_name = format!(
        "{}.default.pod.cluster.local",
        client.ip.to_string().replace('.', "-")
    );
    assert_eq!(dig_short(&c, &[&pod_name]), [client.ip.to_string()]);
    // PTR of a ClusterIP and of an endpoint.
    assert_eq!(
        dig_short(&c, &["-x", "10.96.5.2"]),
        ["test-service-2.dns-test.svc.cluster.local."]
    );
    assert_eq!(
        dig_short(&c, &["-x", &q]),
        ["dns-querier-2.dns-test-service.dns-test.svc.cluster.local."]
    );
    // The schema version.
    assert_eq!(
        dig_short(&c, &["TXT", "dns-version.cluster.local"]),
        ["\"1.1.0\""]
    );
    // Negative answers: NXDOMAIN and NODATA, each with the SOA.
    let nx = dig(&c, &["nope.dns-test.svc.cluster.local"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("IN\tSOA\tns.dns.cluster.local."),
        "{nx}"
    );
    let nodata = dig(&c, &["AAAA", "kubernetes.default.svc.cluster.local"]);
    assert!(
        nodata.contains("status: NOERROR")
            && nodata.contains("ANSWER: 0")
            && nodata.contains("SOA"),
        "{nodata}"
    );
    // Names outside the cluster come from the upstream (NSD).
    assert_eq!(dig_short(&c, &["www.example.test"]), ["192.0.2.80"]);

    // The ExternalName change sequence (dns.go "should provide DNS for ExternalName
    // services"): CNAME foo, then bar, then a ClusterIP.
    let ext = "dns-test-service-3.dns-test.svc.cluster.local";
    assert_eq!(dig_short(&c, &["CNAME", ext]), ["foo.example.test."]);
    let hosts = getent(&c, "hosts", ext);
    assert!(
        hosts.starts_with("192.0.2.81 "),
        "the CNAME is followed upstream: {hosts:?}"
    );
    lab.set_extra_manifests(&services(
        querier.ip,
        "{type: ExternalName, externalName: bar.example.test}",
    ))
    .unwrap();
    let started = Instant::now();
    wait_for("the ExternalName change", || {
        dig_short(&c, &["CNAME", ext]) == ["bar.example.test."]
    });
    eprintln!(
        "MEASURED ExternalName change seen after {:?}",
        started.elapsed()
    );
    lab.set_extra_manifests(&services(
        querier.ip,
        "{type: ClusterIP, clusterIP: 10.96.5.3, ports: [{name: http, port: 80}]}",
    ))
    .unwrap();
    wait_for("the ExternalName → ClusterIP change", || {
        dig_short(&c, &[ext]) == ["10.96.5.3"]
    });
    assert!(dig_short(&c, &["CNAME", ext]).is_empty());

    // glibc's parallel A+AAAA from one socket, in a loop, at both addresses: every
    // round answered (no conntrack race: the ClusterIP is not NAT'ed).
    for server in [NODE_LOCAL, CLUSTER_DNS] {
        let complete = parallel_a_aaaa(&c, server.parse().unwrap(), 300);
        assert_eq!(complete, 300, "rounds with both answers from {server}");
    }
    for _ in 0..20 {
        let hosts = getent(&c, "ahosts", "kubernetes.default");
        assert!(hosts.starts_with("10.96.0.1 "), "{hosts:?}");
    }
    // DNS to the cluster DNS ClusterIP is never translated.
    let flows: serde_json::Value =
        serde_json::from_str(&lab.podwire("node1", &["flows", "-o", "json"]).unwrap()).unwrap();
    for f in flows["flows"].as_array().unwrap() {
        if f["dst"] == CLUSTER_DNS {
            assert!(f["translated"].is_null(), "a DNS flow was NAT'ed: {f}");
        }
    }
    // Status counts what was answered, by response code.
    let status = lab.podwire("node1", &["status"]).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("DNS:"))
        .unwrap_or_default();
    eprintln!("MEASURED {line}");
    assert!(
        line.contains("nxdomain=") && !line.contains("noerror=0 "),
        "{line}"
    );
}

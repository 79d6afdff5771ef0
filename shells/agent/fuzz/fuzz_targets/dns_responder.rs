//! Feeds arbitrary bytes to the cluster DNS responder — the parse and answer path
//! every UDP datagram and TCP message takes — over both transports, against a zone
//! with every kind of record. Whatever comes in, the responder must not panic, and
//! whatever it sends must be a DNS message that fits the transport (512 bytes over
//! UDP unless the query carried EDNS, never more than 4096); a query it would
//! forward must encode its SERVFAIL (no upstream) just as well.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use podwire_agent::control::manifests::{parse, Manifests};
use podwire_agent::control::node_view::ClusterView;
use podwire_agent::dns::responder::{Reply, Responder, Transport, MAX_UDP_PAYLOAD};
use podwire_agent::dns::zone::Zone;

const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
---
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.7]
  hostname: db-0
- addresses: [10.244.1.8]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.org}
";

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| {
        let mut m = Manifests::default();
        m.extend(parse(CLUSTER, Path::new("fuzz.yaml")).expect("fixture parses"));
        let view = ClusterView::build(&m, "n1").expect("fixture builds");
        let origin = Name::from_ascii("cluster.local.").expect("literal");
        let r = Responder::new(origin.clone());
        r.publish(Zone::build(&view, &origin, 5, "10.96.0.10".parse().expect("literal"), 1));
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let r = responder();
    for transport in [Transport::Udp, Transport::Tcp] {
        let sent = match r.respond(data, transport) {
            Reply::Send(b) => b,
            Reply::Drop => continue,
            Reply::Forward(p) => r.complete(&p, None),
        };
        let limit = match transport {
            Transport::Udp => usize::from(MAX_UDP_PAYLOAD),
            Transport::Tcp => usize::from(u16::MAX),
        };
        assert!(sent.len() <= limit, "{} bytes over {transport:?}", sent.len());
        let m = Message::from_vec(&sent).expect("the responder sends DNS messages");
        assert_eq!(&sent[..2], &data[..2], "the answer echoes the query's id");
        if transport == Transport::Udp && m.edns.is_none() {
            assert!(sent.len() <= 512, "{} bytes without EDNS", sent.len());
        }
    }
});

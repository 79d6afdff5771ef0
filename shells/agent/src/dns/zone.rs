//! The cluster zone: an immutable snapshot of every name the Kubernetes DNS
//! specification (schema 1.1.0) defines, built from one [`ClusterView`].
//!
//! Design note: the zone is computed once per cluster-state change, not per query:
//! every Service, EndpointSlice and Namespace becomes ready-made records in one hash
//! map keyed by name (hickory's `Name` compares and hashes case-insensitively), so a
//! query is one lookup and a copy of the records. Names that exist without data of
//! their own (the apex, `svc.<zone>`, `<ns>.svc.<zone>`, …) are in the map with no
//! records, which is what separates NODATA from NXDOMAIN. Only pod names
//! (`a-b-c-d.<ns>.pod.<zone>`, CoreDNS `pods insecure`) are computed at query time:
//! they are defined for every address. The semantics follow CoreDNS's kubernetes
//! plugin, which the upstream conformance tests are written against:
//!
//! - a Service's namespace must exist (a Namespace object), else its names are
//!   NXDOMAIN; `<ns>.svc.<zone>` of an existing namespace is NODATA;
//! - ClusterIP services: A (AAAA for IPv6 ClusterIPs) with the ClusterIP, SRV per
//!   port at the service name and per named port at `_<port>._<proto>.<svc>…`;
//! - headless services: A per *ready* endpoint (a missing `ready` counts as ready),
//!   NXDOMAIN when none is ready; SRV targets are the endpoints' names;
//! - every ready endpoint has `<hostname>.<svc>.<ns>.svc.<zone>`, its EndpointSlice
//!   hostname or else its address with dashes, as CoreDNS names it;
//! - ExternalName: a CNAME at the service name (not for SRV or port names);
//! - PTR for ClusterIPs (the service name) and ready endpoint addresses (the
//!   endpoint name); unknown addresses are not ours (forwarded, CoreDNS's
//!   `fallthrough in-addr.arpa`);
//! - `dns-version.<zone>` TXT `1.1.0` (TTL 28800, as CoreDNS), SOA and NS at the
//!   apex, SOA's minimum = the TTL, so negative answers are cached as long.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::control::node_view::ClusterView;
use crate::control::services::SERVICE_NAME_LABEL;

/// The DNS schema version this zone implements.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record (CoreDNS's).
pub const VERSION_TTL: u32 = 28800;

/// What the zone says about one (name, type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the type (and, for SRV, the targets' addresses).
    Answer {
        /// The answer section.
        answers: Vec<Record>,
        /// Extra records (SRV targets' A records).
        additionals: Vec<Record>,
    },
    /// The name is an alias: the CNAME, to be followed to `target`.
    Alias {
        /// The CNAME record.
        cname: Box<Record>,
        /// Its target.
        target: Name,
    },
    /// The name exists, but has no records of the type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// Not a name of this zone (forward it).
    NotOurs,
}

/// An immutable snapshot of the cluster zone.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    ttl: u32,
    soa: Record,
    names: HashMap<Name, Vec<Record>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
    namespaces: HashSet<String>,
    services: usize,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// One Service as the zone sees it.
struct ServiceFacts<'a> {
    namespace: &'a str,
    name: &'a str,
    kind: ServiceKind,
    ports: Vec<PortFacts>,
}

enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    External(Name),
}

struct PortFacts {
    name: String,
    protocol: String,
    port: u16,
}

/// A ready endpoint address of a service, with the ports of its slice.
struct EndpointFacts {
    ip: IpAddr,
    hostname: String,
    ports: Vec<PortFacts>,
}

fn protocol_label(p: Option<&str>) -> String {
    lower(p.unwrap_or("TCP"))
}

fn service_facts(svc: &k8s_openapi::api::core::v1::Service) -> Option<ServiceFacts<'_>> {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref()?;
    let spec = svc.spec.as_ref()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortFacts {
                name: lower(p.name.as_deref().unwrap_or("")),
                protocol: protocol_label(p.protocol.as_deref()),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?;
        // An IP as externalName is not a CNAME target: CoreDNS serves nothing.
        if target.parse::<IpAddr>().is_ok() {
            return None;
        }
        let mut t = Name::from_ascii(target.trim_end_matches('.')).ok()?;
        t.set_fqdn(true);
        ServiceKind::External(t)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        ips.dedup();
        if ips.is_empty() {
            return None;
        }
        ServiceKind::ClusterIp(ips)
    };
    Some(ServiceFacts {
        namespace,
        name,
        kind,
        ports,
    })
}

/// The ready endpoints of every service, by (namespace, service).
fn ready_endpoints(view: &ClusterView) -> BTreeMap<(String, String), Vec<EndpointFacts>> {
    let mut out: BTreeMap<(String, String), Vec<EndpointFacts>> = BTreeMap::new();
    for slice in &view.endpoint_slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        let ports: Vec<(String, String, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    lower(p.name.as_deref().unwrap_or("")),
                    protocol_label(p.protocol.as_deref()),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let list = out.entry((lower(ns), lower(svc))).or_default();
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let hostname = match &ep.hostname {
                    Some(h) if !h.is_empty() => lower(h),
                    _ => dashed(ip),
                };
                list.push(EndpointFacts {
                    ip,
                    hostname,
                    ports: ports
                        .iter()
                        .map(|(name, protocol, port)| PortFacts {
                            name: name.clone(),
                            protocol: protocol.clone(),
                            port: *port,
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// An address with dashes, as CoreDNS names endpoints without a hostname.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let s = v6.to_string().replace(':', "-");
            if s.ends_with('-') {
                format!("{s}0")
            } else {
                s
            }
        }
    }
}

/// The record of an address.
fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// SRV records to `targets` with CoreDNS's weights (100 split evenly, at least 1).
fn srv_set(name: &Name, ttl: u32, targets: &[(Name, u16)]) -> Vec<Record> {
    let weight = (100 / targets.len().max(1)).max(1) as u16;
    targets
        .iter()
        .map(|(t, port)| {
            Record::from_rdata(
                name.clone(),
                ttl,
                RData::SRV(SRV::new(0, weight, *port, t.clone())),
            )
        })
        .collect()
}

/// An endpoint serving a named port: its name, port and address.
type PortTarget = (Name, u16, IpAddr);

/// Builds zones; holds the origin and TTL while names are added.
struct Builder {
    origin: Name,
    ttl: u32,
    names: HashMap<Name, Vec<Record>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
}

impl Builder {
    /// `labels` (leftmost first) under the origin; `None` if they do not form a valid
    /// name (a label longer than 63 bytes, a name longer than 255).
    fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(&self.origin)
            .ok()
    }

    /// Declares `name` (and every name between it and the origin) to exist.
    fn exist(&mut self, name: &Name) {
        let mut n = name.clone();
        while n.num_labels() > self.origin.num_labels() {
            self.names.entry(n.clone()).or_default();
            n = n.base_name();
        }
        self.names.entry(self.origin.clone()).or_default();
    }

    fn add(&mut self, name: &Name, records: impl IntoIterator<Item = Record>) {
        self.exist(name);
        let set = self.names.entry(name.clone()).or_default();
        for r in records {
            if !set.contains(&r) {
                set.push(r);
            }
        }
    }

    fn ptr(&mut self, ip: IpAddr, target: &Name) {
        let list = self.reverse.entry(ip).or_default();
        if !list.contains(target) {
            list.push(target.clone());
        }
    }

    fn service(&mut self, svc: &ServiceFacts<'_>, endpoints: &[EndpointFacts]) {
        let (ns, name) = (lower(svc.namespace), lower(svc.name));
        let Some(base) = self.name(&[&name, &ns, "svc"]) else {
            return;
        };
        let ttl = self.ttl;
        match &svc.kind {
            ServiceKind::External(target) => {
                let cname =
                    Record::from_rdata(base.clone(), ttl, RData::CNAME(CNAME(target.clone())));
                self.add(&base, [cname]);
                return;
            }
            ServiceKind::ClusterIp(ips) => {
                if svc.ports.is_empty() {
                    return; // CoreDNS answers a service without ports with NXDOMAIN.
                }
                self.add(&base, ips.iter().map(|ip| address(&base, ttl, *ip)));
                let all: Vec<(Name, u16)> =
                    svc.ports.iter().map(|p| (base.clone(), p.port)).collect();
                let srv = srv_set(&base, ttl, &all);
                self.add(&base, srv);
                for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                    let port_name = format!("_{}", p.name);
                    let proto = format!("_{}", p.protocol);
                    let Some(pn) = self.name(&[&port_name, &proto, &name, &ns, "svc"]) else {
                        continue;
                    };
                    let srv = srv_set(&pn, ttl, &[(base.clone(), p.port)]);
                    self.add(&pn, srv);
                    self.add(&pn, ips.iter().map(|ip| address(&pn, ttl, *ip)));
                }
                for ip in ips {
                    self.ptr(*ip, &base);
                }
            }
            ServiceKind::Headless => {}
        }
        let headless = matches!(svc.kind, ServiceKind::Headless);
        // Endpoint names, for every service with ready endpoints.
        let mut srv_all: Vec<(Name, u16)> = Vec::new();
        let mut by_port: BTreeMap<(String, String), Vec<PortTarget>> = BTreeMap::new();
        for ep in endpoints {
            let Some(ep_name) = self.name(&[&ep.hostname, &name, &ns, "svc"]) else {
                continue;
            };
            self.add(&ep_name, [address(&ep_name, ttl, ep.ip)]);
            self.ptr(ep.ip, &ep_name);
            if !headless {
                continue;
            }
            self.add(&base, [address(&base, ttl, ep.ip)]);
            for p in &ep.ports {
                if !srv_all.contains(&(ep_name.clone(), p.port)) {
                    srv_all.push((ep_name.clone(), p.port));
                }
                if !p.name.is_empty() {
                    by_port
                        .entry((p.name.clone(), p.protocol.clone()))
                        .or_default()
                        .push((ep_name.clone(), p.port, ep.ip));
                }
            }
        }
        if headless && !srv_all.is_empty() {
            let srv = srv_set(&base, ttl, &srv_all);
            self.add(&base, srv);
        }
        for ((port, proto), targets) in by_port {
            let (port_name, proto) = (format!("_{port}"), format!("_{proto}"));
            let Some(pn) = self.name(&[&port_name, &proto, &name, &ns, "svc"]) else {
                continue;
            };
            let pairs: Vec<(Name, u16)> = targets.iter().map(|(n, p, _)| (n.clone(), *p)).collect();
            let srv = srv_set(&pn, ttl, &pairs);
            self.add(&pn, srv);
            self.add(&pn, targets.iter().map(|(_, _, ip)| address(&pn, ttl, *ip)));
        }
    }
}

impl Zone {
    /// Builds the zone `origin` (lower-case, absolute) from `view`. `dns_ip` is the
    /// address of the apex's NS record (the cluster DNS ClusterIP); `serial` the SOA
    /// serial.
    pub fn build(
        view: &ClusterView,
        origin: &Name,
        ttl: u32,
        dns_ip: Ipv4Addr,
        serial: u32,
    ) -> Zone {
        let mut b = Builder {
            origin: origin.clone(),
            ttl,
            names: HashMap::new(),
            reverse: HashMap::new(),
        };
        let ns_name = b.name(&["ns", "dns"]).unwrap_or_else(|| origin.clone());
        let hostmaster = b.name(&["hostmaster"]).unwrap_or_else(|| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        b.add(
            origin,
            [
                soa.clone(),
                Record::from_rdata(origin.clone(), ttl, RData::NS(NS(ns_name.clone()))),
            ],
        );
        b.add(&ns_name, [address(&ns_name, ttl, IpAddr::V4(dns_ip))]);
        for top in ["svc", "pod"] {
            if let Some(n) = b.name(&[top]) {
                b.exist(&n);
            }
        }
        if let Some(v) = b.name(&["dns-version"]) {
            let txt = Record::from_rdata(
                v.clone(),
                VERSION_TTL,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
            );
            b.add(&v, [txt]);
        }
        let namespaces: HashSet<String> = view.state.namespaces.keys().map(|n| lower(n)).collect();
        for ns in &namespaces {
            for top in ["svc", "pod"] {
                if let Some(n) = b.name(&[ns, top]) {
                    b.exist(&n);
                }
            }
        }
        let endpoints = ready_endpoints(view);
        let mut services = 0;
        for svc in view.service_objects.iter().filter_map(service_facts) {
            if !namespaces.contains(&lower(svc.namespace)) {
                continue;
            }
            let key = (lower(svc.namespace), lower(svc.name));
            let eps = endpoints.get(&key).map(Vec::as_slice).unwrap_or_default();
            b.service(&svc, eps);
            services += 1;
        }
        Zone {
            origin: b.origin,
            ttl,
            soa,
            names: b.names,
            reverse: b.reverse,
            namespaces,
            services,
        }
    }

    /// The zone's apex.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA record (for the authority section of negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Names in the zone (pod names not counted).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Services the zone serves.
    pub fn service_count(&self) -> usize {
        self.services
    }

    /// Whether `name` is in the cluster zone (an answer from here is authoritative).
    pub fn is_ours(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    /// Answers (`name`, `qtype`).
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        if !self.origin.zone_of(name) {
            return self.reverse_lookup(name, qtype);
        }
        if let Some(found) = self.pod(name, qtype) {
            return found;
        }
        let Some(records) = self.names.get(name) else {
            return Lookup::NxDomain;
        };
        let answers: Vec<Record> = records
            .iter()
            .filter(|r| r.record_type() == qtype)
            .map(|r| with_name(r, name))
            .collect();
        if answers.is_empty() {
            if let Some(c) = records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME)
            {
                if let RData::CNAME(CNAME(target)) = &c.data {
                    return Lookup::Alias {
                        cname: Box::new(with_name(c, name)),
                        target: target.clone(),
                    };
                }
            }
            return Lookup::NoData;
        }
        let mut additionals = Vec::new();
        if qtype == RecordType::SRV {
            for a in &answers {
                if let RData::SRV(srv) = &a.data {
                    for r in self.names.get(&srv.target).into_iter().flatten() {
                        if matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                            && !additionals.contains(r)
                        {
                            additionals.push(r.clone());
                        }
                    }
                }
            }
        }
        Lookup::Answer {
            answers,
            additionals,
        }
    }

    /// `a-b-c-d.<ns>.pod.<zone>` (CoreDNS `pods insecure`: any address, in an
    /// existing namespace). `None` if the name is not of that shape.
    fn pod(&self, name: &Name, qtype: RecordType) -> Option<Lookup> {
        let below = name.num_labels().checked_sub(self.origin.num_labels())?;
        if below != 3 {
            return None;
        }
        let labels: Vec<&[u8]> = name.iter().collect();
        if !labels[2].eq_ignore_ascii_case(b"pod") {
            return None;
        }
        let namespace = lower(std::str::from_utf8(labels[1]).ok()?);
        let label = std::str::from_utf8(labels[0]).ok()?;
        let ip = pod_label_address(label);
        Some(match ip {
            Some(ip) if self.namespaces.contains(&namespace) => {
                if qtype == RecordType::A {
                    Lookup::Answer {
                        answers: vec![address(name, self.ttl, IpAddr::V4(ip))],
                        additionals: vec![],
                    }
                } else {
                    Lookup::NoData
                }
            }
            _ => Lookup::NxDomain,
        })
    }

    /// PTR of ClusterIPs and endpoint addresses; anything else is not ours.
    fn reverse_lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        let Ok(net) = name.parse_arpa_name() else {
            return Lookup::NotOurs;
        };
        if net.prefix_len() != net.max_prefix_len() {
            return Lookup::NotOurs;
        }
        let Some(targets) = self.reverse.get(&net.addr()) else {
            return Lookup::NotOurs;
        };
        if qtype != RecordType::PTR {
            return Lookup::NoData;
        }
        Lookup::Answer {
            answers: targets
                .iter()
                .map(|t| Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(t.clone()))))
                .collect(),
            additionals: vec![],
        }
    }

    /// Whether reverse name `name` is one the zone answers (then it is authoritative).
    pub fn answers_reverse(&self, name: &Name) -> bool {
        name.parse_arpa_name().is_ok_and(|net| {
            net.prefix_len() == net.max_prefix_len() && self.reverse.contains_key(&net.addr())
        })
    }
}

/// `10-244-1-5` → 10.244.1.5 (exactly four decimal octets).
fn pod_label_address(label: &str) -> Option<Ipv4Addr> {
    if label.split('-').count() != 4 || label.contains("--") {
        return None;
    }
    label.replace('-', ".").parse().ok()
}

/// The record with the query's spelling of the name (answers echo the question's
/// case, as CoreDNS does).
fn with_name(r: &Record, name: &Name) -> Record {
    let mut r = r.clone();
    r.name = name.clone();
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::manifests::{parse, Manifests};
    use std::path::Path;

    /// A cluster state with every kind of record.
    pub(crate) const CLUSTER: &str = "
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
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.7]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.1.8]
- addresses: [10.244.1.9]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-1, namespace: prod, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.20]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: prod}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: orphan, namespace: nowhere}
spec: {clusterIP: 10.96.9.9, ports: [{port: 80}]}
";

    pub(crate) fn view(yaml: &str) -> ClusterView {
        let mut m = Manifests::default();
        m.extend(parse(yaml, Path::new("t.yaml")).unwrap());
        ClusterView::build(&m, "n1").unwrap()
    }

    pub(crate) fn zone() -> Zone {
        let origin = Name::from_ascii("cluster.local.").unwrap();
        Zone::build(&view(CLUSTER), &origin, 5, Ipv4Addr::new(10, 96, 0, 10), 1)
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn rdata(l: &Lookup) -> Vec<String> {
        match l {
            Lookup::Answer { answers, .. } => {
                let mut v: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
                v.sort();
                v
            }
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_services_have_a_records_and_aaaa_is_nodata() {
        let z = zone();
        let a = z.lookup(&n("kubernetes.default.svc.cluster.local."), RecordType::A);
        assert_eq!(rdata(&a), vec!["10.96.0.1"]);
        // Case-insensitive, answered with the question's spelling.
        let a = z.lookup(&n("Web.PROD.svc.cluster.local."), RecordType::A);
        match &a {
            Lookup::Answer { answers, .. } => {
                assert_eq!(answers[0].name.to_string(), "Web.PROD.svc.cluster.local.");
                assert_eq!(answers[0].ttl, 5);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            z.lookup(&n("web.prod.svc.cluster.local."), RecordType::AAAA),
            Lookup::NoData
        );
    }

    #[test]
    fn srv_for_named_ports_with_target_addresses() {
        let z = zone();
        let srv = z.lookup(
            &n("_http._tcp.web.prod.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(rdata(&srv), vec!["0 100 80 web.prod.svc.cluster.local."]);
        let Lookup::Answer { additionals, .. } = &srv else {
            unreachable!()
        };
        assert_eq!(additionals[0].data.to_string(), "10.96.1.1");
        let udp = z.lookup(&n("_dns._udp.web.prod.svc.cluster.local."), RecordType::SRV);
        assert_eq!(rdata(&udp), vec!["0 100 53 web.prod.svc.cluster.local."]);
        // The wrong protocol is no name at all.
        assert_eq!(
            z.lookup(&n("_dns._tcp.web.prod.svc.cluster.local."), RecordType::SRV),
            Lookup::NxDomain
        );
        // The service name carries every port.
        let all = z.lookup(&n("web.prod.svc.cluster.local."), RecordType::SRV);
        assert_eq!(rdata(&all).len(), 2);
        // Headless: one target per ready endpoint, named after the endpoint.
        let h = z.lookup(&n("_pg._tcp.db.prod.svc.cluster.local."), RecordType::SRV);
        assert_eq!(
            rdata(&h),
            vec![
                "0 50 5432 10-244-1-8.db.prod.svc.cluster.local.",
                "0 50 5432 db-0.db.prod.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints_and_hostnames() {
        let z = zone();
        let a = z.lookup(&n("db.prod.svc.cluster.local."), RecordType::A);
        assert_eq!(
            rdata(&a),
            vec!["10.244.1.7", "10.244.1.8"],
            "not-ready 10.244.1.9 left out"
        );
        let h = z.lookup(&n("db-0.db.prod.svc.cluster.local."), RecordType::A);
        assert_eq!(rdata(&h), vec!["10.244.1.7"]);
        let dashed = z.lookup(&n("10-244-1-8.db.prod.svc.cluster.local."), RecordType::A);
        assert_eq!(rdata(&dashed), vec!["10.244.1.8"]);
        // No ready endpoint: NXDOMAIN.
        assert_eq!(
            z.lookup(&n("empty.prod.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        // Endpoints of a ClusterIP service have names too.
        let e = z.lookup(&n("10-244-1-5.web.prod.svc.cluster.local."), RecordType::A);
        assert_eq!(rdata(&e), vec!["10.244.1.5"]);
    }

    #[test]
    fn ptr_for_cluster_ips_and_endpoints_others_are_forwarded() {
        let z = zone();
        let p = z.lookup(&n("1.1.96.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(rdata(&p), vec!["web.prod.svc.cluster.local."]);
        let e = z.lookup(&n("7.1.244.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(rdata(&e), vec!["db-0.db.prod.svc.cluster.local."]);
        assert_eq!(
            z.lookup(&n("9.9.9.9.in-addr.arpa."), RecordType::PTR),
            Lookup::NotOurs
        );
        assert_eq!(
            z.lookup(&n("1.1.96.10.in-addr.arpa."), RecordType::A),
            Lookup::NoData
        );
        assert!(z.answers_reverse(&n("1.1.96.10.in-addr.arpa.")));
    }

    #[test]
    fn external_name_is_a_cname() {
        let z = zone();
        match z.lookup(&n("ext.prod.svc.cluster.local."), RecordType::A) {
            Lookup::Alias { cname, target } => {
                assert_eq!(target.to_string(), "example.org.");
                assert_eq!(cname.record_type(), RecordType::CNAME);
            }
            other => panic!("{other:?}"),
        }
        let c = z.lookup(&n("ext.prod.svc.cluster.local."), RecordType::CNAME);
        assert_eq!(rdata(&c), vec!["example.org."]);
    }

    #[test]
    fn nodata_versus_nxdomain_as_coredns() {
        let z = zone();
        for exists in [
            "cluster.local.",
            "svc.cluster.local.",
            "prod.svc.cluster.local.",
            "pod.cluster.local.",
            "prod.pod.cluster.local.",
        ] {
            assert_eq!(
                z.lookup(&n(exists), RecordType::A),
                Lookup::NoData,
                "{exists}"
            );
        }
        for missing in [
            "nope.prod.svc.cluster.local.",
            "nowhere.svc.cluster.local.",
            "orphan.nowhere.svc.cluster.local.",
            "foo.cluster.local.",
            "a.b.web.prod.svc.cluster.local.",
        ] {
            assert_eq!(
                z.lookup(&n(missing), RecordType::A),
                Lookup::NxDomain,
                "{missing}"
            );
        }
        assert_eq!(z.lookup(&n("example.com."), RecordType::A), Lookup::NotOurs);
    }

    #[test]
    fn pod_records_version_soa_and_ns() {
        let z = zone();
        let p = z.lookup(&n("10-244-1-5.prod.pod.cluster.local."), RecordType::A);
        assert_eq!(rdata(&p), vec!["10.244.1.5"]);
        assert_eq!(
            z.lookup(&n("10-244-1-5.prod.pod.cluster.local."), RecordType::AAAA),
            Lookup::NoData
        );
        for bad in [
            "10-244-1.prod.pod.cluster.local.",
            "10-244-1-5.nowhere.pod.cluster.local.",
            "x-y-z-w.prod.pod.cluster.local.",
        ] {
            assert_eq!(z.lookup(&n(bad), RecordType::A), Lookup::NxDomain, "{bad}");
        }
        let v = z.lookup(&n("dns-version.cluster.local."), RecordType::TXT);
        assert_eq!(rdata(&v), vec!["1.1.0"]);
        let soa = z.lookup(&n("cluster.local."), RecordType::SOA);
        assert!(rdata(&soa)[0]
            .starts_with("ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"));
        let ns = z.lookup(&n("cluster.local."), RecordType::NS);
        assert_eq!(rdata(&ns), vec!["ns.dns.cluster.local."]);
        let nsa = z.lookup(&n("ns.dns.cluster.local."), RecordType::A);
        assert_eq!(rdata(&nsa), vec!["10.96.0.10"]);
        assert_eq!(z.service_count(), 5, "orphan's namespace does not exist");
    }
}

//! NetworkPolicy verdict cost on a synthetic cluster: 100 namespaces, 10,000 pods
//! (≈2,000 identities), 1,000 policies with podSelector / namespaceSelector / ipBlock
//! (with except) / port (and endPort) rules, both directions.
//!
//! Cases (same input, same run):
//! - `new_flow_node_view` (the summary's `new_flow_ns`): `evaluate_connection` on the
//!   table one node holds — the ipcache of all 10k pods, node 7's 100 pods as local
//!   endpoints — over 8,192 flows with one local end (half ingress, half egress).
//! - `new_flow_cluster_wide`: the same call with all 10k pods local (every rule set in
//!   play, the cache-hostile worst case) over 8,192 random flows (90% pod→pod, 10%
//!   external→pod).
//! - `established` (the summary's `established_ns`): what the datapath does for a
//!   packet of an established flow: hash the 5-tuple with the flow hash, probe an
//!   open-addressing table of 64-byte flow entries (65,536 flows, 50% load, visited in
//!   random order, so each packet misses the cache once) comparing keys, and test the
//!   cached packed `ConnVerdict` with `ConnVerdict::packed_is_allow`.
//! - `established_hot`: the same with 1,024 active flows (entries stay in cache).
//! - `established_burst` (the summary's `established_burst_ns`): the same lookups in
//!   windows of 32 packets, each window's home slots read first (as
//!   `Datapath::process_burst` does), so the 32 cache misses overlap.
//! - `established_conntrack` / `established_conntrack_burst`: the datapath's own
//!   table, `ConnTrack::lookup` + the cached verdict of the entry, 65,536 flows in a
//!   table of 131,072 entries (50% load), one at a time and with
//!   `ConnTrack::touch` over each window of 32 first. Measured: the look-ahead does
//!   not pay here — each lookup is a few dozen instructions with no dependence on the
//!   previous one, so an out-of-order core already has several misses in flight; it
//!   pays in the datapath (`--bench datapath`, burst cases), where ≈ 1,400
//!   instructions between two packets' lookups keep the next miss from starting.
//! - `naive` (peer): an interpreter that walks every policy and matches label
//!   selectors per packet — what evaluating NetworkPolicy without compiling costs.
//!   The bench also checks that it agrees with the compiled table on every sample.
//!
//! Each case is timed 9 times; min and median are printed, the summary line has the
//! minimum (the machine is shared with other builds).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use podwire_core::conntrack;
use podwire_core::flow::{FlowKey, PROTO_TCP, PROTO_UDP};
use podwire_core::policy::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        podwire_core::flow::fmix64(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Labels = BTreeMap<&'static str, String>;

/// matchLabels only; `None` on a peer selector means "absent".
#[derive(Clone)]
struct Sel(Vec<(&'static str, String)>);
impl Sel {
    fn matches(&self, l: &Labels) -> bool {
        self.0.iter().all(|(k, v)| l.get(k) == Some(v))
    }
}

#[derive(Clone)]
enum Peer {
    Pods { ns: Option<Sel>, pods: Option<Sel> },
    Block { cidr: Cidr, except: Vec<Cidr> },
}

#[derive(Clone)]
struct PolRule {
    peers: Vec<Peer>, // empty: everyone
    ports: Vec<PortRange>,
}

struct Policy {
    ns: usize,
    select: Sel,
    ingress: Option<Vec<PolRule>>,
    egress: Option<Vec<PolRule>>,
}

struct Pod {
    ns: usize,
    labels: Labels,
    ip: IpAddr,
    identity: usize,
}

struct Cluster {
    ns_labels: Vec<Labels>,
    pods: Vec<Pod>,
    idents: Vec<(usize, Labels)>,
    policies: Vec<Policy>,
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn cidr(a: [u8; 4], len: u8) -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap()
}

const TIERS: [&str; 4] = ["web", "api", "db", "cache"];
const PORTS: [(u8, u16); 6] = [
    (PROTO_TCP, 80),
    (PROTO_TCP, 443),
    (PROTO_TCP, 8080),
    (PROTO_TCP, 5432),
    (PROTO_UDP, 53),
    (PROTO_TCP, 9090),
];

fn cluster() -> Cluster {
    let mut rng = Rng(42);
    let n_ns = 100;
    let ns_labels: Vec<Labels> = (0..n_ns)
        .map(|i| {
            let mut l = Labels::new();
            l.insert("kubernetes.io/metadata.name", format!("ns-{i}"));
            l.insert("team", format!("team-{}", i % 10));
            l.insert("env", ["prod", "staging", "dev"][i % 3].to_string());
            l
        })
        .collect();
    let mut pods = Vec::new();
    let mut idents: Vec<(usize, Labels)> = Vec::new();
    let mut ident_of = BTreeMap::new();
    for i in 0..10_000u32 {
        let ns = (i as usize) % n_ns;
        let app = rng.below(10);
        let mut labels = Labels::new();
        labels.insert("app", format!("app-{app}"));
        labels.insert("tier", TIERS[app % 4].to_string());
        labels.insert("version", format!("v{}", rng.below(2)));
        let key = (ns, labels.clone());
        let identity = *ident_of.entry(key.clone()).or_insert_with(|| {
            idents.push(key);
            idents.len() - 1
        });
        // 10.244.<node>.<n>: 100 pods per /24 node block.
        let ip = v4(0x0af4_0000 | (i / 100) << 8 | (i % 100 + 2));
        pods.push(Pod {
            ns,
            labels,
            ip,
            identity,
        });
    }
    let mut policies = Vec::new();
    let tcp = |p| PortRange::single(PortProtocol::Tcp, p);
    for ns in 0..n_ns {
        let sel = |k: &'static str, v: String| Sel(vec![(k, v)]);
        // 1. default deny ingress in the namespace
        policies.push(Policy {
            ns,
            select: Sel(vec![]),
            ingress: Some(vec![]),
            egress: None,
        });
        // 2. web accepts everyone on 80/443
        policies.push(Policy {
            ns,
            select: sel("tier", "web".into()),
            ingress: Some(vec![PolRule {
                peers: vec![],
                ports: vec![tcp(80), tcp(443)],
            }]),
            egress: None,
        });
        // 3..6: app-to-app inside the namespace on 8080 and a metrics range
        for k in 0..4 {
            let to = rng.below(10);
            let from = rng.below(10);
            policies.push(Policy {
                ns,
                select: sel("app", format!("app-{to}")),
                ingress: Some(vec![PolRule {
                    peers: vec![Peer::Pods {
                        ns: None,
                        pods: Some(sel("app", format!("app-{from}"))),
                    }],
                    ports: vec![
                        tcp(8080),
                        PortRange {
                            protocol: PortProtocol::Tcp,
                            first: 9090,
                            last: 9100 + k,
                        },
                    ],
                }]),
                egress: None,
            });
        }
        // 7. db accepts api pods of namespaces of the same team (AND of selectors)
        policies.push(Policy {
            ns,
            select: sel("tier", "db".into()),
            ingress: Some(vec![PolRule {
                peers: vec![Peer::Pods {
                    ns: Some(sel("team", format!("team-{}", ns % 10))),
                    pods: Some(sel("tier", "api".into())),
                }],
                ports: vec![tcp(5432)],
            }]),
            egress: None,
        });
        // 8. api accepts from the corporate block except a quarantined subnet
        policies.push(Policy {
            ns,
            select: sel("tier", "api".into()),
            ingress: Some(vec![PolRule {
                peers: vec![Peer::Block {
                    cidr: cidr([192, 168, 0, 0], 16),
                    except: vec![cidr([192, 168, 66, 0], 24)],
                }],
                ports: vec![],
            }]),
            egress: None,
        });
        // 9. egress of db pods: only DNS to ns-0 and other dbs
        policies.push(Policy {
            ns,
            select: sel("tier", "db".into()),
            ingress: None,
            egress: Some(vec![
                PolRule {
                    peers: vec![Peer::Pods {
                        ns: Some(sel("kubernetes.io/metadata.name", "ns-0".into())),
                        pods: None,
                    }],
                    ports: vec![PortRange::single(PortProtocol::Udp, 53), tcp(53)],
                },
                PolRule {
                    peers: vec![Peer::Pods {
                        ns: None,
                        pods: Some(sel("tier", "db".into())),
                    }],
                    ports: vec![tcp(5432)],
                },
            ]),
        });
        // 10. egress of cache pods: the internet on 443 except metadata, and prod namespaces
        policies.push(Policy {
            ns,
            select: sel("tier", "cache".into()),
            ingress: None,
            egress: Some(vec![
                PolRule {
                    peers: vec![Peer::Block {
                        cidr: cidr([0, 0, 0, 0], 0),
                        except: vec![cidr([169, 254, 169, 254], 32), cidr([10, 0, 0, 0], 8)],
                    }],
                    ports: vec![tcp(443)],
                },
                PolRule {
                    peers: vec![Peer::Pods {
                        ns: Some(sel("env", "prod".into())),
                        pods: Some(Sel(vec![])),
                    }],
                    ports: vec![],
                },
            ]),
        });
    }
    Cluster {
        ns_labels,
        pods,
        idents,
        policies,
    }
}

/// Does peer spec `p` of a policy in namespace `pol_ns` select identity `(ns, labels)`?
fn peer_selects(c: &Cluster, pol_ns: usize, p: &Peer, ns: usize, labels: &Labels) -> bool {
    match p {
        Peer::Pods { ns: nsel, pods } => {
            let ns_ok = match nsel {
                None => ns == pol_ns,
                Some(s) => s.matches(&c.ns_labels[ns]),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(labels))
        }
        Peer::Block { .. } => false,
    }
}

struct Storage {
    addresses: Vec<IpSlot<AddrInfo>>,
    endpoint_policies: Vec<EndpointPolicy>,
    rules: Vec<Rule>,
    ports: Vec<PortRange>,
    peers: Vec<Identity>,
    prefixes: Vec<Prefix>,
}

/// Compiles the cluster; pods for which `local(pod index)` holds are local endpoints.
fn compile<'a>(c: &Cluster, s: &'a mut Storage, local: impl Fn(usize) -> bool) -> PolicyTable<'a> {
    let mut t = PolicyTable::new(PolicyStorage {
        addresses: &mut s.addresses,
        endpoint_policies: &mut s.endpoint_policies,
        rules: &mut s.rules,
        ports: &mut s.ports,
        peers: &mut s.peers,
        prefixes: &mut s.prefixes,
    });
    for p in &c.policies {
        for r in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in &r.peers {
                if let Peer::Block { cidr, except } = peer {
                    t.add_prefix(*cidr).unwrap();
                    for e in except {
                        t.add_prefix(*e).unwrap();
                    }
                }
            }
        }
    }
    // One peer set and port set per Kubernetes rule, shared by every identity.
    let mut shared = BTreeMap::new();
    for (pi, p) in c.policies.iter().enumerate() {
        for (d, rules) in [&p.ingress, &p.egress].into_iter().enumerate() {
            for (ri, r) in rules.iter().flatten().enumerate() {
                let ids: Vec<Identity> = (0..c.idents.len())
                    .filter(|&j| {
                        let (jns, jl) = &c.idents[j];
                        r.peers.iter().any(|pe| peer_selects(c, p.ns, pe, *jns, jl))
                    })
                    .map(|j| Identity(j as u32))
                    .collect();
                let blocks: Vec<IpBlock<'_>> = r
                    .peers
                    .iter()
                    .filter_map(|pe| match pe {
                        Peer::Block { cidr, except } => Some(IpBlock {
                            cidr: *cidr,
                            except,
                        }),
                        _ => None,
                    })
                    .collect();
                let peers = t
                    .add_peer_set(&PeerSpec {
                        any: r.peers.is_empty(),
                        any_pod: false,
                        identities: &ids,
                        blocks: &blocks,
                    })
                    .unwrap();
                let ports = t.add_port_set(&r.ports).unwrap();
                shared.insert((pi, d, ri), (peers, ports));
            }
        }
    }
    let mut per_ident = Vec::new();
    for (ns, labels) in &c.idents {
        let mut dirs = [DirPolicy::OPEN; 2];
        for (d, dir) in dirs.iter_mut().enumerate() {
            let mut iso = None;
            for (pi, p) in c.policies.iter().enumerate() {
                let rules = if d == 0 { &p.ingress } else { &p.egress };
                let Some(rules) = rules else { continue };
                if p.ns != *ns || !p.select.matches(labels) {
                    continue;
                }
                iso.get_or_insert(PolicyId(pi as u16));
                for ri in 0..rules.len() {
                    let (peers, ports) = shared[&(pi, d, ri)];
                    t.push_rule(&RuleSpec {
                        policy: PolicyId(pi as u16),
                        index: ri as u16,
                        peers,
                        only: None,
                        ports,
                    })
                    .unwrap();
                }
            }
            *dir = t.finish_rule_set(iso);
        }
        let ep = EndpointPolicy {
            ingress: dirs[0],
            egress: dirs[1],
        };
        let isolated = ep.ingress.isolated_by.is_some() || ep.egress.isolated_by.is_some();
        per_ident.push(isolated.then(|| t.add_endpoint_policy(ep).unwrap()));
    }
    for (i, pod) in c.pods.iter().enumerate() {
        t.set_identity(pod.ip, Some(Identity(pod.identity as u32)))
            .unwrap();
        if local(i) {
            t.set_endpoint(pod.ip, per_ident[pod.identity]).unwrap();
        }
    }
    t
}

/// The uncompiled peer: walks every policy per packet.
fn naive_dir(
    c: &Cluster,
    ingress: bool,
    local: IpAddr,
    peer: IpAddr,
    port: u16,
    proto: u8,
) -> bool {
    let Some(lp) = c.pods.iter().find(|p| p.ip == local) else {
        return true;
    };
    let pp = c.pods.iter().find(|p| p.ip == peer);
    let mut isolated = false;
    for p in &c.policies {
        let rules = if ingress { &p.ingress } else { &p.egress };
        let Some(rules) = rules else { continue };
        if p.ns != lp.ns || !p.select.matches(&lp.labels) {
            continue;
        }
        isolated = true;
        for r in rules {
            let ports_ok = r.ports.is_empty() || r.ports.iter().any(|pr| pr.admits(port, proto));
            let peer_ok = r.peers.is_empty()
                || r.peers.iter().any(|pe| match pe {
                    Peer::Block { cidr, except } => {
                        cidr.contains(peer) && !except.iter().any(|e| e.contains(peer))
                    }
                    _ => pp.is_some_and(|pp| peer_selects(c, p.ns, pe, pp.ns, &pp.labels)),
                });
            if ports_ok && peer_ok {
                return true;
            }
        }
    }
    !isolated
}

/// A conntrack-entry-sized slot: key, cached verdict, expiry (64 bytes, one line).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct FlowEntry {
    key: FlowKey,
    used: bool,
    verdict: u64,
    expires: u32,
}

/// (min, median) of repeated measurements. The machine is shared (other builds run
/// beside the bench), so the minimum is the least disturbed figure; both are printed.
fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn storage() -> Storage {
    Storage {
        addresses: vec![IpSlot::EMPTY; 16384],
        endpoint_policies: vec![EndpointPolicy::default(); 4096],
        rules: vec![Rule::EMPTY; 64 * 1024],
        ports: vec![PortRange::ANY; 128 * 1024],
        peers: vec![Identity(0); 1024 * 1024],
        prefixes: vec![Prefix::EMPTY; 64],
    }
}

fn time_flows(t: &PolicyTable<'_>, flows: &[(IpAddr, IpAddr, u16, u8)], runs: usize) -> (f64, f64) {
    let mut v = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..20 {
            for f in flows {
                let verdict = t.evaluate_connection(black_box(f.0), black_box(f.1), f.2, f.3);
                n += black_box(verdict.pack()) & 1;
            }
        }
        black_box(n);
        v.push(start.elapsed().as_nanos() as f64 / (20.0 * flows.len() as f64));
    }
    min_median(v)
}

fn main() {
    let c = cluster();
    let mut s = storage();
    let build = Instant::now();
    let t = compile(&c, &mut s, |_| true);
    let build_s = build.elapsed().as_secs_f64();
    let (rules, ports, peers, prefixes) = t.usage();
    println!(
        "{{\"case\":\"setup\",\"namespaces\":{},\"pods\":{},\"identities\":{},\"policies\":{},\"rules\":{rules},\"port_ranges\":{ports},\"peer_ids\":{peers},\"prefixes\":{prefixes},\"compile_s\":{build_s:.3}}}",
        c.ns_labels.len(),
        c.pods.len(),
        c.idents.len(),
        c.policies.len()
    );

    // Sample flows.
    let mut rng = Rng(7);
    let flows: Vec<(IpAddr, IpAddr, u16, u8)> = (0..8192)
        .map(|_| {
            let dst = c.pods[rng.below(c.pods.len())].ip;
            let src = if rng.below(10) == 0 {
                v4(0xc0a8_0000 | rng.below(65536) as u32) // 192.168.0.0/16
            } else {
                c.pods[rng.below(c.pods.len())].ip
            };
            let (proto, port) = PORTS[rng.below(PORTS.len())];
            (src, dst, port, proto)
        })
        .collect();

    // Cross-check against the naive interpreter.
    let mut allowed = 0;
    for &(src, dst, port, proto) in &flows {
        let v = t.evaluate_connection(src, dst, port, proto);
        let naive = naive_dir(&c, false, src, dst, port, proto)
            && naive_dir(&c, true, dst, src, port, proto);
        assert_eq!(v.is_allow(), naive, "{src} -> {dst} {proto}/{port}: {v:?}");
        allowed += usize::from(naive);
    }

    let runs = 9;
    let (cluster_ns, cluster_median) = time_flows(&t, &flows, runs);
    println!(
        "{{\"case\":\"new_flow_cluster_wide\",\"what\":\"PolicyTable::evaluate_connection (egress+ingress), all 10k pods local (worst case: every rule set in play)\",\"flows\":{},\"allowed\":{allowed},\"ns_per_flow_min\":{cluster_ns:.1},\"ns_per_flow_median\":{cluster_median:.1}}}",
        flows.len()
    );

    // Node view: what one node holds and evaluates. The ipcache knows all 10k pods;
    // local endpoints are node 7's 100 pods; every flow has one local end (half
    // ingress to a local pod from any pod or an external address, half egress from a
    // local pod to any pod).
    let node = 7;
    let is_local = |i: usize| i / 100 == node;
    let mut s_node = storage();
    let t_node = compile(&c, &mut s_node, is_local);
    let local: Vec<IpAddr> = (0..c.pods.len())
        .filter(|&i| is_local(i))
        .map(|i| c.pods[i].ip)
        .collect();
    let node_flows: Vec<(IpAddr, IpAddr, u16, u8)> = (0..8192)
        .map(|k| {
            let here = local[rng.below(local.len())];
            let there = if rng.below(10) == 0 && k % 2 == 0 {
                v4(0xc0a8_0000 | rng.below(65536) as u32)
            } else {
                c.pods[rng.below(c.pods.len())].ip
            };
            let (proto, port) = PORTS[rng.below(PORTS.len())];
            if k % 2 == 0 {
                (there, here, port, proto)
            } else {
                (here, there, port, proto)
            }
        })
        .collect();
    let mut node_allowed = 0;
    for &(src, dst, port, proto) in &node_flows {
        // The node's verdict equals the cluster-wide one for the local side.
        let a = t_node.evaluate_connection(src, dst, port, proto);
        let b = t.evaluate_connection(src, dst, port, proto);
        if is_local(
            c.pods
                .iter()
                .position(|p| p.ip == dst)
                .unwrap_or(usize::MAX),
        ) {
            assert_eq!(a.ingress, b.ingress);
        } else {
            assert_eq!(a.egress, b.egress);
        }
        node_allowed += usize::from(a.is_allow());
    }
    let (new_flow_ns, node_median) = time_flows(&t_node, &node_flows, runs);
    println!(
        "{{\"case\":\"new_flow_node_view\",\"what\":\"PolicyTable::evaluate_connection on one node's table (100 local pods, 10k-pod ipcache, 1k policies)\",\"flows\":{},\"allowed_locally\":{node_allowed},\"ns_per_flow_min\":{new_flow_ns:.1},\"ns_per_flow_median\":{node_median:.1}}}",
        node_flows.len()
    );

    // Breakdown: the two address-table lookups alone.
    let mut lookups = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut n = 0u32;
        for _ in 0..20 {
            for f in &flows {
                let a = t.address(&black_box(f.0));
                let b = t.address(&black_box(f.1));
                n = n.wrapping_add(black_box(a).endpoint().map_or(0, |e| e.0))
                    ^ black_box(b).identity().map_or(0, |i| i.0);
            }
        }
        black_box(n);
        lookups.push(start.elapsed().as_nanos() as f64 / (20.0 * flows.len() as f64));
    }
    let (lookup_ns, _) = min_median(lookups);
    println!(
        "{{\"case\":\"new_flow_address_lookups\",\"what\":\"the 2 ipcache lookups of evaluate_connection alone\",\"ns_per_flow_min\":{lookup_ns:.1}}}"
    );

    // Naive peer (fewer samples: it is slow).
    let mut naive = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0;
        for f in flows.iter().take(512) {
            n += usize::from(
                naive_dir(&c, false, black_box(f.0), f.1, f.2, f.3)
                    && naive_dir(&c, true, f.1, f.0, f.2, f.3),
            );
        }
        black_box(n);
        naive.push(start.elapsed().as_nanos() as f64 / 512.0);
    }
    let (naive_ns, _) = min_median(naive);
    println!(
        "{{\"case\":\"naive_peer\",\"what\":\"interpret every policy's selectors per flow (cluster-wide flows; ratio vs new_flow_cluster_wide)\",\"ns_per_flow_min\":{naive_ns:.0},\"ratio_vs_compiled\":{:.0}}}",
        naive_ns / cluster_ns
    );

    // Established: conntrack-style lookup of the cached verdict.
    let slots = 131_072usize;
    let mut table = vec![
        FlowEntry {
            key: FlowKey {
                src: v4(0),
                dst: v4(0),
                src_port: 0,
                dst_port: 0,
                protocol: 0,
                zone: 0,
            },
            used: false,
            verdict: 0,
            expires: 0,
        };
        slots
    ];
    let seed = 0x5eed;
    let mut keys = Vec::new();
    for i in 0..65_536 {
        let (src, dst, port, proto) = flows[i % flows.len()];
        let key = FlowKey {
            src,
            dst,
            src_port: 1024 + (i / flows.len()) as u16 * 7 + (i % 251) as u16,
            dst_port: port,
            protocol: proto,
            zone: 0,
        };
        let verdict = t.evaluate_connection(src, dst, port, proto).pack();
        let mut at = (key.hash(seed) as usize) & (slots - 1);
        loop {
            let e = &mut table[at];
            if !e.used {
                *e = FlowEntry {
                    key,
                    used: true,
                    verdict,
                    expires: 1,
                };
                keys.push(key);
                break;
            } else if e.key == key {
                break;
            }
            at = (at + 1) & (slots - 1);
        }
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let probe_keys: Vec<FlowKey> = order.iter().map(|&i| keys[i]).collect();
    let home = |key: &FlowKey| (key.hash(seed) as usize) & (slots - 1);
    let probe = |key: &FlowKey| -> u64 {
        let mut at = home(key);
        loop {
            let e = &table[at];
            if !e.used {
                break u64::MAX;
            } else if e.key == *key {
                break e.verdict;
            }
            at = (at + 1) & (slots - 1);
        }
    };
    // With `look_ahead`, each window of 32 keys has its home slots read first.
    let lookup = |keys: &[FlowKey], look_ahead: bool| -> f64 {
        let mut v = Vec::new();
        let reps = (262_144 / keys.len()).max(1);
        for _ in 0..runs {
            let start = Instant::now();
            let mut n = 0u64;
            let mut touched = 0u64;
            for _ in 0..reps {
                for window in keys.chunks(32) {
                    if look_ahead {
                        for key in window {
                            touched = touched.wrapping_add(table[home(black_box(key))].verdict);
                        }
                    }
                    for key in window {
                        n += u64::from(ConnVerdict::packed_is_allow(probe(black_box(key))));
                    }
                }
            }
            black_box((n, touched));
            v.push(start.elapsed().as_nanos() as f64 / (reps * keys.len()) as f64);
        }
        min_median(v).0
    };
    let established_ns = lookup(&probe_keys, false);
    let hot_ns = lookup(&probe_keys[..1024], false);
    let established_burst_ns = lookup(&probe_keys, true);

    // The datapath's own table.
    let mut buckets = vec![conntrack::Bucket::EMPTY; conntrack::buckets_for(2 * keys.len())];
    let mut entries = vec![conntrack::Entry::EMPTY; 2 * keys.len()];
    let mut ct =
        conntrack::ConnTrack::new(&mut buckets, &mut entries, conntrack::Config::default())
            .unwrap();
    let now = podwire_core::Instant::from_secs(1);
    for key in &keys {
        let id = ct.insert(*key, conntrack::Nat::NONE, now).unwrap();
        let (src, dst, port, proto) = (key.src, key.dst, key.dst_port, key.protocol);
        ct.entry_mut(id).unwrap().verdict = t.evaluate_connection(src, dst, port, proto).pack();
    }
    let mut ct_lookup = |look_ahead: bool| -> f64 {
        let mut v = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let mut n = 0u64;
            let mut touched = 0u64;
            for _ in 0..4 {
                for window in probe_keys.chunks(32) {
                    if look_ahead {
                        for key in window {
                            touched = touched.wrapping_add(ct.touch(black_box(key)));
                        }
                    }
                    for key in window {
                        let bits = match ct.lookup(black_box(key), now) {
                            Some((id, _)) => ct.entry(id).map_or(u64::MAX, |e| e.verdict),
                            None => u64::MAX,
                        };
                        n += u64::from(ConnVerdict::packed_is_allow(bits));
                    }
                }
            }
            black_box((n, touched));
            v.push(start.elapsed().as_nanos() as f64 / (4 * probe_keys.len()) as f64);
        }
        min_median(v).0
    };
    let ct_ns = ct_lookup(false);
    let ct_burst_ns = ct_lookup(true);
    assert_eq!(ct.counters().misses, 0, "every probe key is tracked");
    println!(
        "{{\"case\":\"established\",\"what\":\"flow hash + probe of 64-byte entries (65536 flows, 50% load, random order: a cache miss per packet) + packed verdict test\",\"entry_bytes\":{},\"ns_per_packet_min\":{established_ns:.1}}}",
        std::mem::size_of::<FlowEntry>()
    );
    println!(
        "{{\"case\":\"established_hot\",\"what\":\"the same for a working set of 1024 active flows (entries cache-resident)\",\"ns_per_packet_min\":{hot_ns:.1}}}"
    );
    println!(
        "{{\"case\":\"established_burst\",\"what\":\"the same as established in windows of 32, each window's home slots read first\",\"ns_per_packet_min\":{established_burst_ns:.1}}}"
    );
    println!(
        "{{\"case\":\"established_conntrack\",\"what\":\"ConnTrack::lookup + cached verdict, 65536 flows, random order\",\"ns_per_packet_min\":{ct_ns:.1}}}"
    );
    println!(
        "{{\"case\":\"established_conntrack_burst\",\"what\":\"the same with ConnTrack::touch over each window of 32 first\",\"ns_per_packet_min\":{ct_burst_ns:.1}}}"
    );
    println!("{{\"bench\":\"policy\",\"new_flow_ns\":{new_flow_ns:.1},\"established_ns\":{established_ns:.1},\"established_burst_ns\":{established_burst_ns:.1},\"established_conntrack_ns\":{ct_ns:.1},\"established_conntrack_burst_ns\":{ct_burst_ns:.1}}}");
}

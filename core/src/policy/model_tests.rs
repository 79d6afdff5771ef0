//! Tests of the whole policy table: hand-written cases and a property test comparing
//! [`PolicyTable::evaluate`] with a naive interpreter of the same rules.

use core::net::{IpAddr, Ipv4Addr};
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::flow::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn cidr(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
    Cidr::new(ip(a, b, c, d), len).unwrap()
}

struct Store {
    endpoints: Vec<IpSlot<EndpointPolicy>>,
    identities: Vec<IpSlot<Identity>>,
    rules: Vec<Rule>,
    ports: Vec<PortRange>,
    peers: Vec<Identity>,
    prefixes: Vec<Prefix>,
}

impl Store {
    fn new(n: usize) -> Store {
        Store {
            endpoints: vec![IpSlot::EMPTY; n],
            identities: vec![IpSlot::EMPTY; n],
            rules: vec![Rule::EMPTY; n],
            ports: vec![PortRange::ANY; n],
            peers: vec![Identity(0); n * 4],
            prefixes: vec![Prefix::EMPTY; n],
        }
    }

    fn table(&mut self) -> PolicyTable<'_> {
        PolicyTable::new(PolicyStorage {
            endpoints: &mut self.endpoints,
            identities: &mut self.identities,
            rules: &mut self.rules,
            ports: &mut self.ports,
            peers: &mut self.peers,
            prefixes: &mut self.prefixes,
        })
    }
}

const WEB: Identity = Identity(1);
const DB: Identity = Identity(2);

fn allow(policy: u16, rule: u16) -> Verdict {
    Verdict::Allow(AllowReason::Rule {
        policy: PolicyId(policy),
        rule,
    })
}

fn deny(policy: u16) -> Verdict {
    Verdict::Deny(DenyReason::NoRuleMatched {
        policy: PolicyId(policy),
    })
}

const OPEN: Verdict = Verdict::Allow(AllowReason::NotIsolated);

#[test]
fn db_accepts_web_on_5432_and_a_cidr_minus_exception() {
    let mut store = Store::new(32);
    let mut t = store.table();
    let (web, db, ext_ok, ext_no) = (
        ip(10, 244, 1, 2),
        ip(10, 244, 1, 3),
        ip(192, 0, 2, 7),
        ip(192, 0, 2, 200),
    );
    t.set_identity(web, WEB).unwrap();
    t.set_identity(db, DB).unwrap();
    let block = cidr(192, 0, 2, 0, 24);
    let except = [cidr(192, 0, 2, 128, 25)];
    t.add_prefix(block).unwrap();
    t.add_prefix(except[0]).unwrap();
    let tcp5432 = [PortRange::single(PortProtocol::Tcp, 5432)];
    t.push_rule(&RuleSpec {
        policy: PolicyId(7),
        index: 0,
        peers: PeerSpec {
            identities: &[WEB],
            ..PeerSpec::default()
        },
        only_identities: None,
        ports: &tcp5432,
    })
    .unwrap();
    t.push_rule(&RuleSpec {
        policy: PolicyId(7),
        index: 1,
        peers: PeerSpec {
            blocks: &[IpBlock {
                cidr: block,
                except: &except,
            }],
            ..PeerSpec::default()
        },
        only_identities: None,
        ports: &[],
    })
    .unwrap();
    let ingress = t.finish_rule_set(Some(PolicyId(7)));
    assert_eq!(t.rules_of(&ingress).len(), 2);
    t.set_endpoint(
        db,
        EndpointPolicy {
            ingress,
            egress: DirPolicy::OPEN,
        },
    )
    .unwrap();
    use Direction::*;
    assert_eq!(t.evaluate(Ingress, db, web, 5432, PROTO_TCP), allow(7, 0));
    assert_eq!(t.evaluate(Ingress, db, web, 5432, PROTO_UDP), deny(7));
    assert_eq!(t.evaluate(Ingress, db, web, 80, PROTO_TCP), deny(7));
    assert_eq!(t.evaluate(Ingress, db, ext_ok, 1, PROTO_ICMP), allow(7, 1));
    assert_eq!(t.evaluate(Ingress, db, ext_no, 5432, PROTO_TCP), deny(7));
    assert_eq!(t.evaluate(Egress, db, ext_no, 5432, PROTO_TCP), OPEN);
    // web is no local endpoint here: not isolated.
    assert_eq!(t.evaluate(Ingress, web, db, 5432, PROTO_TCP), OPEN);
    let c = t.evaluate_connection(web, db, 5432, PROTO_TCP);
    assert!(c.is_allow());
    assert!(!t.evaluate_connection(ext_no, db, 80, PROTO_TCP).is_allow());
    // Prefixes are sealed once rules exist; unknown prefixes are refused.
    assert_eq!(
        t.add_prefix(cidr(10, 0, 0, 0, 8)),
        Err(PolicyError::PrefixesSealed)
    );
    let unknown = RuleSpec {
        policy: PolicyId(1),
        index: 0,
        peers: PeerSpec {
            blocks: &[IpBlock {
                cidr: cidr(10, 0, 0, 0, 8),
                except: &[],
            }],
            ..PeerSpec::default()
        },
        only_identities: None,
        ports: &[],
    };
    assert_eq!(t.push_rule(&unknown), Err(PolicyError::UnknownPrefix));
    assert_eq!(t.usage().0, 2);
}

#[test]
fn capacity_and_input_errors() {
    let mut store = Store::new(2);
    store.peers.truncate(1);
    let mut t = store.table();
    assert_eq!(
        t.set_identity(ip(1, 1, 1, 1), Identity(Identity::CIDR_BASE)),
        Err(PolicyError::ReservedIdentity)
    );
    let spec = |index, ids: &'static [Identity]| RuleSpec {
        policy: PolicyId(0),
        index,
        peers: PeerSpec {
            identities: ids,
            ..PeerSpec::default()
        },
        only_identities: None,
        ports: &[],
    };
    assert_eq!(
        t.push_rule(&spec(MAX_RULE_INDEX + 1, &[])),
        Err(PolicyError::RuleIndexTooLarge)
    );
    assert_eq!(
        t.push_rule(&spec(0, &[WEB, DB])),
        Err(PolicyError::PeersFull)
    );
    // The failed rule left nothing behind.
    assert_eq!(t.usage(), (0, 0, 0, 0));
    let bad_ports = [PortRange {
        protocol: PortProtocol::Tcp,
        first: 9,
        last: 8,
    }];
    let mut s = spec(0, &[]);
    s.ports = &bad_ports;
    assert_eq!(t.push_rule(&s), Err(PolicyError::BadPortRange));
    t.push_rule(&spec(0, &[WEB])).unwrap();
    t.push_rule(&spec(1, &[])).unwrap();
    assert_eq!(t.push_rule(&spec(2, &[])), Err(PolicyError::RulesFull));
    assert_eq!(
        t.set_endpoint(ip(1, 1, 1, 1), EndpointPolicy::default()),
        Ok(())
    );
    assert_eq!(
        t.set_endpoint(ip(1, 1, 1, 2), EndpointPolicy::default()),
        Err(PolicyError::EndpointsFull)
    );
}

#[test]
fn filtered_rule_needs_identity_in_filter_and_isolated_set_without_rules_denies() {
    let mut store = Store::new(16);
    let mut t = store.table();
    let (a, b, c) = (ip(10, 0, 0, 1), ip(10, 0, 0, 2), ip(10, 0, 0, 3));
    t.set_identity(b, WEB).unwrap();
    t.set_identity(c, DB).unwrap();
    t.push_rule(&RuleSpec {
        policy: PolicyId(1),
        index: 0,
        peers: PeerSpec {
            any: true,
            ..PeerSpec::default()
        },
        only_identities: Some(&[DB]),
        ports: &[PortRange::single(PortProtocol::Tcp, 8080)],
    })
    .unwrap();
    let egress = t.finish_rule_set(Some(PolicyId(1)));
    let ingress = t.finish_rule_set(Some(PolicyId(2)));
    assert_eq!(ingress.rules.len, 0);
    t.set_endpoint(a, EndpointPolicy { ingress, egress })
        .unwrap();
    use Direction::*;
    assert_eq!(t.evaluate(Egress, a, c, 8080, PROTO_TCP), allow(1, 0));
    assert_eq!(t.evaluate(Egress, a, b, 8080, PROTO_TCP), deny(1));
    assert_eq!(
        t.evaluate(Egress, a, ip(8, 8, 8, 8), 8080, PROTO_TCP),
        deny(1)
    );
    assert_eq!(t.evaluate(Ingress, a, c, 8080, PROTO_TCP), deny(2));
    assert_eq!(t.remove_endpoint(&a).map(|e| e.egress), Some(egress));
    assert_eq!(t.evaluate(Ingress, a, c, 8080, PROTO_TCP), OPEN);
}

// ---- naive model ----------------------------------------------------------------

#[derive(Debug, Clone)]
struct MRule {
    any: bool,
    any_pod: bool,
    ids: Vec<Identity>,
    blocks: Vec<(Cidr, Vec<Cidr>)>,
    only: Option<Vec<Identity>>,
    ports: Vec<PortRange>,
}

#[derive(Debug, Clone)]
struct MSet {
    isolated_by: Option<u16>,
    rules: Vec<MRule>,
}

#[derive(Debug, Clone)]
struct Model {
    identity: Vec<Option<u32>>,     // per pod address 10.0.0.i
    sets: Vec<MSet>,                // rule sets
    endpoints: Vec<(usize, usize)>, // per local pod 10.0.0.i: (ingress set, egress set)
}

fn pod_ip(i: usize) -> IpAddr {
    ip(10, 0, 0, i as u8)
}

fn model_evaluate(
    m: &Model,
    dir: Direction,
    local: IpAddr,
    peer: IpAddr,
    port: u16,
    proto: u8,
) -> Verdict {
    let local_index = (0..m.endpoints.len()).find(|&i| pod_ip(i) == local);
    let Some(li) = local_index else { return OPEN };
    let (ing, eg) = m.endpoints[li];
    let set = &m.sets[if dir == Direction::Ingress { ing } else { eg }];
    let Some(iso) = set.isolated_by else {
        return OPEN;
    };
    let peer_id = (0..m.identity.len())
        .find(|&i| pod_ip(i) == peer)
        .and_then(|i| m.identity[i])
        .map(Identity);
    for (index, r) in set.rules.iter().enumerate() {
        let ports_ok = r.ports.is_empty() || r.ports.iter().any(|p| p.admits(port, proto));
        let peer_ok = r.any
            || (r.any_pod && peer_id.is_some())
            || peer_id.is_some_and(|id| r.ids.contains(&id))
            || r.blocks
                .iter()
                .any(|(c, ex)| c.contains(peer) && !ex.iter().any(|e| e.contains(peer)));
        let only_ok = match &r.only {
            None => true,
            Some(o) => peer_id.is_some_and(|id| o.contains(&id)),
        };
        if ports_ok && peer_ok && only_ok {
            return allow(iso, index as u16);
        }
    }
    deny(iso)
}

fn cidr_pool() -> Vec<Cidr> {
    vec![
        cidr(10, 0, 0, 0, 24),
        cidr(10, 0, 0, 0, 29),
        cidr(10, 0, 0, 4, 30),
        cidr(10, 0, 0, 6, 32),
        cidr(192, 0, 2, 0, 24),
        cidr(192, 0, 2, 128, 25),
        cidr(0, 0, 0, 0, 0),
    ]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (
        prop_oneof![
            Just(PortProtocol::Tcp),
            Just(PortProtocol::Udp),
            Just(PortProtocol::Sctp),
            Just(PortProtocol::Any)
        ],
        78u16..84,
        0u16..3,
    )
        .prop_map(|(protocol, first, extra)| PortRange {
            protocol,
            first,
            last: first + extra,
        })
}

fn mrule() -> impl Strategy<Value = MRule> {
    let ids = proptest::collection::vec((0u32..5).prop_map(Identity), 0..4);
    let blocks = proptest::collection::vec(
        (0usize..7, proptest::collection::vec(0usize..7, 0..2)),
        0..2,
    )
    .prop_map(|bs| {
        let pool = cidr_pool();
        bs.into_iter()
            .map(|(c, ex)| {
                let c = pool[c];
                let ex = ex
                    .into_iter()
                    .map(|e| pool[e])
                    .filter(|e| c.contains_cidr(e))
                    .collect();
                (c, ex)
            })
            .collect::<Vec<_>>()
    });
    (
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
        ids,
        blocks,
        proptest::option::weighted(
            0.2,
            proptest::collection::vec((0u32..5).prop_map(Identity), 0..3),
        ),
        proptest::collection::vec(port_range(), 0..3),
    )
        .prop_map(|(any, any_pod, ids, blocks, only, ports)| MRule {
            any,
            any_pod,
            ids,
            blocks,
            only,
            ports,
        })
}

fn model() -> impl Strategy<Value = Model> {
    let sets = proptest::collection::vec(
        (
            proptest::option::weighted(0.8, 0u16..4),
            proptest::collection::vec(mrule(), 0..4),
        )
            .prop_map(|(isolated_by, rules)| MSet { isolated_by, rules }),
        1..4,
    );
    (
        proptest::collection::vec(proptest::option::weighted(0.8, 0u32..5), 10),
        sets,
        proptest::collection::vec((0usize..4, 0usize..4), 0..8),
    )
        .prop_map(|(identity, sets, endpoints)| {
            let n = sets.len();
            let endpoints = endpoints.into_iter().map(|(i, e)| (i % n, e % n)).collect();
            Model {
                identity,
                sets,
                endpoints,
            }
        })
}

fn build<'a>(m: &Model, store: &'a mut Store) -> PolicyTable<'a> {
    let mut t = store.table();
    for (i, id) in m.identity.iter().enumerate() {
        if let Some(id) = id {
            t.set_identity(pod_ip(i), Identity(*id)).unwrap();
        }
    }
    for r in m.sets.iter().flat_map(|s| &s.rules) {
        for (c, ex) in &r.blocks {
            t.add_prefix(*c).unwrap();
            for e in ex {
                t.add_prefix(*e).unwrap();
            }
        }
    }
    let mut dirs = Vec::new();
    for (set_index, s) in m.sets.iter().enumerate() {
        for (index, r) in s.rules.iter().enumerate() {
            let blocks: Vec<IpBlock<'_>> = r
                .blocks
                .iter()
                .map(|(c, ex)| IpBlock {
                    cidr: *c,
                    except: ex,
                })
                .collect();
            t.push_rule(&RuleSpec {
                policy: PolicyId(s.isolated_by.unwrap_or(0)),
                index: index as u16,
                peers: PeerSpec {
                    any: r.any,
                    any_pod: r.any_pod,
                    identities: &r.ids,
                    blocks: &blocks,
                },
                only_identities: r.only.as_deref(),
                ports: &r.ports,
            })
            .unwrap();
        }
        let d = t.finish_rule_set(s.isolated_by.map(PolicyId));
        assert_eq!(dirs.len(), set_index);
        dirs.push(d);
    }
    for (i, &(ing, eg)) in m.endpoints.iter().enumerate() {
        t.set_endpoint(
            pod_ip(i),
            EndpointPolicy {
                ingress: dirs[ing],
                egress: dirs[eg],
            },
        )
        .unwrap();
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn evaluate_matches_naive_model(
        m in model(),
        queries in proptest::collection::vec(
            (any::<bool>(), 0usize..10, 0usize..14, 77u16..86, prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), Just(PROTO_SCTP), Just(PROTO_ICMP)]),
            1..40,
        ),
    ) {
        let mut store = Store::new(64);
        store.peers = vec![Identity(0); 1024];
        let t = build(&m, &mut store);
        // Peers: pods 10.0.0.0-9, and non-pod addresses inside and outside the blocks.
        let others = [ip(192, 0, 2, 5), ip(192, 0, 2, 200), ip(10, 0, 0, 200), ip(8, 8, 8, 8)];
        for (ingress, local, peer, port, proto) in queries {
            let dir = if ingress { Direction::Ingress } else { Direction::Egress };
            let peer = if peer < 10 { pod_ip(peer) } else { others[peer - 10] };
            let want = model_evaluate(&m, dir, pod_ip(local), peer, port, proto);
            let got = t.evaluate(dir, pod_ip(local), peer, port, proto);
            prop_assert_eq!(got, want, "{:?} local {} peer {} {}/{}", dir, local, peer, proto, port);
        }
    }
}

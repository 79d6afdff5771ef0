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
    addresses: Vec<IpSlot<AddrInfo>>,
    endpoint_policies: Vec<EndpointPolicy>,
    rules: Vec<Rule>,
    ports: Vec<PortRange>,
    peers: Vec<Identity>,
    prefixes: Vec<Prefix>,
}

impl Store {
    fn new(n: usize) -> Store {
        Store {
            addresses: vec![IpSlot::EMPTY; n],
            endpoint_policies: vec![EndpointPolicy::default(); n],
            rules: vec![Rule::EMPTY; n],
            ports: vec![PortRange::ANY; n],
            peers: vec![Identity(0); n * 4],
            prefixes: vec![Prefix::EMPTY; n],
        }
    }

    fn table(&mut self) -> PolicyTable<'_> {
        PolicyTable::new(PolicyStorage {
            addresses: &mut self.addresses,
            endpoint_policies: &mut self.endpoint_policies,
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

/// Adds peers + ports and pushes one rule.
fn rule(
    t: &mut PolicyTable<'_>,
    policy: u16,
    index: u16,
    peers: PeerSpec<'_>,
    only: Option<&[Identity]>,
    ports: &[PortRange],
) {
    let peers = t.add_peer_set(&peers).unwrap();
    let only = only.map(|o| {
        t.add_peer_set(&PeerSpec {
            identities: o,
            ..PeerSpec::default()
        })
        .unwrap()
    });
    let ports = t.add_port_set(ports).unwrap();
    t.push_rule(&RuleSpec {
        policy: PolicyId(policy),
        index,
        peers,
        only,
        ports,
    })
    .unwrap();
}

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
    let block = cidr(192, 0, 2, 0, 24);
    let except = [cidr(192, 0, 2, 128, 25)];
    t.add_prefix(block).unwrap();
    t.add_prefix(except[0]).unwrap();
    let tcp5432 = [PortRange::single(PortProtocol::Tcp, 5432)];
    let web_only = PeerSpec {
        identities: &[WEB],
        ..PeerSpec::default()
    };
    rule(&mut t, 7, 0, web_only, None, &tcp5432);
    let blocks = [IpBlock {
        cidr: block,
        except: &except,
    }];
    let in_block = PeerSpec {
        blocks: &blocks,
        ..PeerSpec::default()
    };
    rule(&mut t, 7, 1, in_block, None, &[]);
    let ingress = t.finish_rule_set(Some(PolicyId(7)));
    assert_eq!(t.rules_of(&ingress).len(), 2);
    let db_policy = t
        .add_endpoint_policy(EndpointPolicy {
            ingress,
            egress: DirPolicy::OPEN,
        })
        .unwrap();
    t.set_identity(web, Some(WEB)).unwrap();
    t.set_identity(db, Some(DB)).unwrap();
    t.set_endpoint(db, Some(db_policy)).unwrap();
    assert_eq!(t.address(&db).identity(), Some(DB));
    assert_eq!(t.address(&db).endpoint(), Some(db_policy));
    use Direction::*;
    assert_eq!(t.evaluate(Ingress, db, web, 5432, PROTO_TCP), allow(7, 0));
    assert_eq!(t.evaluate(Ingress, db, web, 5432, PROTO_UDP), deny(7));
    assert_eq!(t.evaluate(Ingress, db, web, 80, PROTO_TCP), deny(7));
    assert_eq!(t.evaluate(Ingress, db, ext_ok, 1, PROTO_ICMP), allow(7, 1));
    assert_eq!(t.evaluate(Ingress, db, ext_no, 5432, PROTO_TCP), deny(7));
    assert_eq!(t.evaluate(Egress, db, ext_no, 5432, PROTO_TCP), OPEN);
    // web is no local endpoint here: not isolated.
    assert_eq!(t.evaluate(Ingress, web, db, 5432, PROTO_TCP), OPEN);
    assert!(t.evaluate_connection(web, db, 5432, PROTO_TCP).is_allow());
    assert!(!t.evaluate_connection(ext_no, db, 80, PROTO_TCP).is_allow());
    // Prefixes are sealed once peer sets exist; unknown prefixes are refused.
    assert_eq!(
        t.add_prefix(cidr(10, 0, 0, 0, 8)),
        Err(PolicyError::PrefixesSealed)
    );
    let unknown = [IpBlock {
        cidr: cidr(10, 0, 0, 0, 8),
        except: &[],
    }];
    let spec = PeerSpec {
        blocks: &unknown,
        ..PeerSpec::default()
    };
    let before = t.usage();
    assert_eq!(t.add_peer_set(&spec), Err(PolicyError::UnknownPrefix));
    assert_eq!(t.usage(), before);
    // Forgetting the endpoint makes db open again; forgetting both drops the entry.
    t.set_endpoint(db, None).unwrap();
    assert_eq!(t.evaluate(Ingress, db, ext_no, 80, PROTO_TCP), OPEN);
    t.set_identity(db, None).unwrap();
    assert_eq!(t.address(&db), t.address(&ip(1, 2, 3, 4)));
}

#[test]
fn capacity_and_input_errors() {
    let mut store = Store::new(2);
    store.peers.truncate(1);
    store.endpoint_policies.truncate(1);
    let mut t = store.table();
    assert_eq!(
        t.set_identity(ip(1, 1, 1, 1), Some(Identity(Identity::CIDR_BASE))),
        Err(PolicyError::ReservedIdentity)
    );
    let two = PeerSpec {
        identities: &[WEB, DB],
        ..PeerSpec::default()
    };
    assert_eq!(t.add_peer_set(&two), Err(PolicyError::PeersFull));
    // The failed set left nothing behind.
    assert_eq!(t.usage(), (0, 0, 0, 0));
    let dup = PeerSpec {
        identities: &[WEB, WEB],
        ..PeerSpec::default()
    };
    assert_eq!(t.add_peer_set(&dup), Err(PolicyError::PeersFull));
    let one = t
        .add_peer_set(&PeerSpec {
            identities: &[WEB],
            ..PeerSpec::default()
        })
        .unwrap();
    let bad_ports = [PortRange {
        protocol: PortProtocol::Tcp,
        first: 9,
        last: 8,
    }];
    assert_eq!(t.add_port_set(&bad_ports), Err(PolicyError::BadPortRange));
    let three = [PortRange::ANY; 3];
    assert_eq!(t.add_port_set(&three), Err(PolicyError::PortsFull));
    let spec = |index| RuleSpec {
        policy: PolicyId(0),
        index,
        peers: one,
        only: None,
        ports: PortSet::ALL,
    };
    assert_eq!(
        t.push_rule(&spec(MAX_RULE_INDEX + 1)),
        Err(PolicyError::RuleIndexTooLarge)
    );
    t.push_rule(&spec(0)).unwrap();
    t.push_rule(&spec(1)).unwrap();
    assert_eq!(t.push_rule(&spec(2)), Err(PolicyError::RulesFull));
    let e = t.add_endpoint_policy(EndpointPolicy::default()).unwrap();
    assert_eq!(
        t.add_endpoint_policy(EndpointPolicy::default()),
        Err(PolicyError::EndpointPoliciesFull)
    );
    assert_eq!(
        t.set_endpoint(ip(1, 1, 1, 1), Some(EndpointRef(5))),
        Err(PolicyError::UnknownEndpointPolicy)
    );
    assert_eq!(t.set_endpoint(ip(1, 1, 1, 1), Some(e)), Ok(()));
    assert_eq!(
        t.set_endpoint(ip(1, 1, 1, 2), Some(e)),
        Err(PolicyError::AddressesFull)
    );
}

#[test]
fn filtered_rule_needs_identity_in_filter_and_isolated_set_without_rules_denies() {
    let mut store = Store::new(16);
    let mut t = store.table();
    let (a, b, c) = (ip(10, 0, 0, 1), ip(10, 0, 0, 2), ip(10, 0, 0, 3));
    let everyone = PeerSpec {
        any: true,
        ..PeerSpec::default()
    };
    rule(
        &mut t,
        1,
        0,
        everyone,
        Some(&[DB]),
        &[PortRange::single(PortProtocol::Tcp, 8080)],
    );
    let egress = t.finish_rule_set(Some(PolicyId(1)));
    let ingress = t.finish_rule_set(Some(PolicyId(2)));
    assert_eq!(ingress.rules.len, 0);
    let e = t
        .add_endpoint_policy(EndpointPolicy { ingress, egress })
        .unwrap();
    t.set_identity(b, Some(WEB)).unwrap();
    t.set_identity(c, Some(DB)).unwrap();
    t.set_endpoint(a, Some(e)).unwrap();
    use Direction::*;
    assert_eq!(t.evaluate(Egress, a, c, 8080, PROTO_TCP), allow(1, 0));
    assert_eq!(t.evaluate(Egress, a, b, 8080, PROTO_TCP), deny(1));
    assert_eq!(
        t.evaluate(Egress, a, ip(8, 8, 8, 8), 8080, PROTO_TCP),
        deny(1)
    );
    assert_eq!(t.evaluate(Ingress, a, c, 8080, PROTO_TCP), deny(2));
    t.set_endpoint(a, None).unwrap();
    assert_eq!(t.evaluate(Ingress, a, c, 8080, PROTO_TCP), OPEN);
}

#[test]
fn big_peer_sets_become_bitmaps_and_keep_every_member() {
    let mut store = Store::new(8);
    store.peers = vec![Identity(0); 64];
    let mut t = store.table();
    t.add_prefix(cidr(192, 0, 2, 0, 24)).unwrap();
    // An early small id followed by large ones: the bitmap (11 words) is shorter than
    // the 41 ids, and is built without clobbering ids not yet read.
    let mut ids: Vec<Identity> = (300..340).map(Identity).collect();
    ids.push(Identity(0));
    let blocks = [IpBlock {
        cidr: cidr(192, 0, 2, 0, 24),
        except: &[],
    }];
    let set = t
        .add_peer_set(&PeerSpec {
            identities: &ids,
            blocks: &blocks,
            ..PeerSpec::default()
        })
        .unwrap();
    assert_eq!(t.usage().2, 11 + 1, "11 bitmap words + 1 CIDR class");
    let ports = t.add_port_set(&[]).unwrap();
    t.push_rule(&RuleSpec {
        policy: PolicyId(0),
        index: 0,
        peers: set,
        only: None,
        ports,
    })
    .unwrap();
    let dir = t.finish_rule_set(Some(PolicyId(0)));
    let view = t.rule_peers(&t.rules_of(&dir)[0]).set;
    let members: Vec<Identity> = view.iter().collect();
    let mut want = ids.clone();
    want.sort();
    want.push(t.cidr_class(ip(192, 0, 2, 1)).unwrap());
    assert_eq!(members, want);
    for id in 0..400 {
        assert_eq!(
            view.contains(Identity(id)),
            id == 0 || (300..340).contains(&id)
        );
    }
    // Without spare room for the bitmap, the set stays a sorted list.
    let mut store = Store::new(8);
    store.peers = vec![Identity(0); 41];
    let mut t = store.table();
    let set = t
        .add_peer_set(&PeerSpec {
            identities: &ids,
            ..PeerSpec::default()
        })
        .unwrap();
    assert_eq!(t.usage().2, 41);
    let _ = set;
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
    // Up to 40 identities, sets up to 30 wide: exercises both the sorted-list and the
    // bitmap representation of peer sets.
    let ids = prop_oneof![
        proptest::collection::vec((0u32..5).prop_map(Identity), 0..4),
        proptest::collection::vec((0u32..40).prop_map(Identity), 8..30),
    ];
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
        proptest::collection::vec(
            proptest::option::weighted(0.8, prop_oneof![0u32..5, 0u32..40]),
            10,
        ),
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
    for r in m.sets.iter().flat_map(|s| &s.rules) {
        for (c, ex) in &r.blocks {
            t.add_prefix(*c).unwrap();
            for e in ex {
                t.add_prefix(*e).unwrap();
            }
        }
    }
    let mut refs = Vec::new();
    let mut dirs = Vec::new();
    for s in &m.sets {
        for (index, r) in s.rules.iter().enumerate() {
            let blocks: Vec<IpBlock<'_>> = r
                .blocks
                .iter()
                .map(|(c, ex)| IpBlock {
                    cidr: *c,
                    except: ex,
                })
                .collect();
            let peers = PeerSpec {
                any: r.any,
                any_pod: r.any_pod,
                identities: &r.ids,
                blocks: &blocks,
            };
            rule(
                &mut t,
                s.isolated_by.unwrap_or(0),
                index as u16,
                peers,
                r.only.as_deref(),
                &r.ports,
            );
        }
        dirs.push(t.finish_rule_set(s.isolated_by.map(PolicyId)));
    }
    for &(ing, eg) in &m.endpoints {
        refs.push(
            t.add_endpoint_policy(EndpointPolicy {
                ingress: dirs[ing],
                egress: dirs[eg],
            })
            .unwrap(),
        );
    }
    for (i, id) in m.identity.iter().enumerate() {
        t.set_identity(pod_ip(i), id.map(Identity)).unwrap();
    }
    for (i, r) in refs.iter().enumerate() {
        t.set_endpoint(pod_ip(i), Some(*r)).unwrap();
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
            if dir == Direction::Egress {
                let c = t.evaluate_connection(pod_ip(local), peer, port, proto);
                prop_assert_eq!(c.egress, got);
                prop_assert_eq!(c.ingress, model_evaluate(&m, Direction::Ingress, peer, pod_ip(local), port, proto));
            }
            prop_assert_eq!(got, want, "{:?} local {} peer {} {}/{}", dir, local, peer, proto, port);
        }
    }
}

//! Tests of the route table against a naive model (a scan over a list of prefixes).

use core::net::Ipv4Addr;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::ids::{NodeId, PortId};

/// Owned storage for a test table.
struct Store {
    direct: Vec<u32>,
    nodes: Vec<TrieNode>,
    leaves: Vec<u32>,
    routes: Vec<RouteEntry<Ipv4Addr>>,
    gateways: Vec<GatewaySlot>,
}

impl Store {
    fn new(layout: RouteLayout) -> Store {
        Store {
            direct: vec![0; layout.direct],
            nodes: vec![TrieNode::default(); layout.nodes],
            leaves: vec![0; layout.leaves],
            routes: vec![RouteEntry::default(); layout.routes],
            gateways: vec![GatewaySlot::default(); layout.gateways],
        }
    }

    fn worst(direct_bits: u8, prefixes: usize) -> Store {
        Store::new(Ipv4RouteTable::layout(direct_bits, prefixes, 8))
    }

    fn table(&mut self) -> Ipv4RouteTable<'_> {
        RouteTable::new(RouteStorage {
            direct: &mut self.direct,
            nodes: &mut self.nodes,
            leaves: &mut self.leaves,
            routes: &mut self.routes,
            gateways: &mut self.gateways,
        })
        .unwrap()
    }
}

fn p(a: [u8; 4], len: u8) -> Ipv4Prefix {
    Prefix::new(Ipv4Addr::from(a), len).unwrap()
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

const NODE1: NextHop = NextHop::Node(NodeId(1));
const NODE2: NextHop = NextHop::Node(NodeId(2));
const POD: NextHop = NextHop::Port(PortId(3));

/// The model: longest matching prefix by scanning.
fn model_lookup(model: &[(Ipv4Prefix, NextHop)], addr: Ipv4Addr) -> Option<NextHop> {
    model
        .iter()
        .filter(|(p, _)| p.contains(addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|&(_, h)| h)
}

#[test]
fn bad_direct_storage() {
    for n in [0usize, 1, 3, 1 << 25] {
        let mut layout = Ipv4RouteTable::layout(8, 4, 1);
        layout.direct = n;
        let mut s = Store::new(layout);
        let r = RouteTable::new(RouteStorage {
            direct: &mut s.direct,
            nodes: &mut s.nodes,
            leaves: &mut s.leaves,
            routes: &mut s.routes,
            gateways: &mut s.gateways,
        });
        assert_eq!(r.err(), Some(RouteError::BadStorage), "direct len {n}");
    }
}

#[test]
fn empty_table_has_no_route() {
    let mut s = Store::worst(18, 4);
    let t = s.table();
    assert_eq!(t.lookup(ip([10, 0, 0, 1])), None);
    assert!(t.is_empty());
    assert_eq!(t.iter().count(), 0);
}

#[test]
fn default_route_and_slash_zero() {
    let mut s = Store::worst(18, 4);
    let mut t = s.table();
    assert_eq!(t.insert(p([0, 0, 0, 0], 0), NextHop::Host), Ok(None));
    for a in [[0, 0, 0, 0], [255, 255, 255, 255], [10, 244, 1, 7]] {
        assert_eq!(t.lookup(ip(a)), Some(NextHop::Host));
    }
    assert_eq!(t.insert(p([0, 0, 0, 0], 0), NODE1), Ok(Some(NextHop::Host)));
    assert_eq!(t.lookup(ip([1, 2, 3, 4])), Some(NODE1));
    assert_eq!(t.remove(p([0, 0, 0, 0], 0)), Ok(Some(NODE1)));
    assert_eq!(t.lookup(ip([1, 2, 3, 4])), None);
}

#[test]
fn overlapping_prefixes_longest_wins() {
    for k in [4u8, 8, 16, 18, 24] {
        let mut s = Store::worst(k, 8);
        let mut t = s.table();
        t.insert(p([0, 0, 0, 0], 0), NextHop::Host).unwrap();
        t.insert(p([10, 244, 0, 0], 16), NextHop::Blackhole)
            .unwrap();
        t.insert(p([10, 244, 1, 0], 24), NODE1).unwrap();
        t.insert(p([10, 244, 1, 128], 25), NODE2).unwrap();
        t.insert(p([10, 244, 1, 7], 32), POD).unwrap();
        assert_eq!(t.lookup(ip([10, 244, 1, 7])), Some(POD), "k={k}");
        assert_eq!(t.lookup(ip([10, 244, 1, 8])), Some(NODE1), "k={k}");
        assert_eq!(t.lookup(ip([10, 244, 1, 200])), Some(NODE2), "k={k}");
        assert_eq!(
            t.lookup(ip([10, 244, 2, 1])),
            Some(NextHop::Blackhole),
            "k={k}"
        );
        assert_eq!(t.lookup(ip([10, 245, 0, 1])), Some(NextHop::Host), "k={k}");
    }
}

#[test]
fn remove_restores_shorter_match() {
    let mut s = Store::worst(18, 8);
    let mut t = s.table();
    t.insert(p([10, 244, 0, 0], 16), NODE1).unwrap();
    t.insert(p([10, 244, 1, 0], 24), NODE2).unwrap();
    t.insert(p([10, 244, 1, 7], 32), POD).unwrap();
    assert_eq!(t.remove(p([10, 244, 1, 7], 32)), Ok(Some(POD)));
    assert_eq!(t.lookup(ip([10, 244, 1, 7])), Some(NODE2));
    assert_eq!(t.remove(p([10, 244, 1, 0], 24)), Ok(Some(NODE2)));
    assert_eq!(t.lookup(ip([10, 244, 1, 7])), Some(NODE1));
    assert_eq!(t.remove(p([10, 244, 1, 0], 24)), Ok(None));
    assert_eq!(t.remove(p([10, 244, 0, 0], 16)), Ok(Some(NODE1)));
    assert_eq!(t.lookup(ip([10, 244, 1, 7])), None);
    assert!(t.is_empty());
}

#[test]
fn host_routes_slash_32() {
    let mut s = Store::worst(18, 65);
    let mut t = s.table();
    for i in 0..=63u8 {
        t.insert(
            p([10, 244, 1, i * 4], 32),
            NextHop::Port(PortId(u16::from(i))),
        )
        .unwrap();
    }
    for i in 0..=63u8 {
        assert_eq!(
            t.lookup(ip([10, 244, 1, i * 4])),
            Some(NextHop::Port(PortId(u16::from(i))))
        );
        assert_eq!(t.lookup(ip([10, 244, 1, i * 4 + 1])), None);
    }
    assert_eq!(t.lookup(ip([255, 255, 255, 255])), None);
    t.insert(p([255, 255, 255, 255], 32), POD).unwrap();
    assert_eq!(t.lookup(ip([255, 255, 255, 255])), Some(POD));
    assert_eq!(t.lookup(ip([255, 255, 255, 254])), None);
}

#[test]
fn gateway_next_hops_are_interned() {
    let mut s = Store::worst(12, 8);
    let mut t = s.table();
    let gw = NextHop::Gateway(ip([192, 0, 2, 1]));
    t.insert(p([10, 0, 0, 0], 8), gw).unwrap();
    t.insert(p([172, 16, 0, 0], 12), gw).unwrap();
    assert_eq!(t.lookup(ip([10, 1, 1, 1])), Some(gw));
    assert_eq!(t.lookup(ip([172, 17, 1, 1])), Some(gw));
    assert_eq!(t.usage().used.gateways, 1);
    t.remove(p([10, 0, 0, 0], 8)).unwrap();
    assert_eq!(t.usage().used.gateways, 1);
    t.remove(p([172, 16, 0, 0], 12)).unwrap();
    assert_eq!(t.usage().used.gateways, 0);
}

#[test]
fn capacity_errors_leave_table_unchanged() {
    // Two routes of room.
    let mut s = Store::new(RouteLayout {
        routes: 2,
        gateways: 1,
        ..Ipv4RouteTable::layout(18, 2, 1)
    });
    let mut t = s.table();
    t.insert(p([10, 0, 0, 0], 8), NODE1).unwrap();
    t.insert(p([10, 1, 0, 0], 16), NODE2).unwrap();
    assert_eq!(
        t.insert(p([10, 2, 0, 0], 16), POD),
        Err(RouteError::RoutesFull)
    );
    // Replacing an existing route needs no room.
    assert_eq!(t.insert(p([10, 1, 0, 0], 16), POD), Ok(Some(NODE2)));
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup(ip([10, 2, 0, 1])), Some(NODE1));

    // Gateways.
    let mut s = Store::new(Ipv4RouteTable::layout(8, 4, 1));
    let mut t = s.table();
    t.insert(p([10, 0, 0, 0], 8), NextHop::Gateway(ip([192, 0, 2, 1])))
        .unwrap();
    assert_eq!(
        t.insert(p([11, 0, 0, 0], 8), NextHop::Gateway(ip([192, 0, 2, 2]))),
        Err(RouteError::GatewaysFull)
    );
    assert_eq!(t.lookup(ip([11, 0, 0, 1])), None);
    assert_eq!(t.len(), 1);

    // Nodes: no node storage at all, so only prefixes up to /k fit.
    let mut s = Store::new(RouteLayout {
        nodes: 0,
        ..Ipv4RouteTable::layout(16, 8, 1)
    });
    let mut t = s.table();
    t.insert(p([10, 244, 0, 0], 16), NODE1).unwrap();
    assert_eq!(
        t.insert(p([10, 244, 1, 0], 24), NODE2),
        Err(RouteError::NodesFull)
    );
    assert_eq!(t.lookup(ip([10, 244, 1, 1])), Some(NODE1));
    assert_eq!(t.len(), 1);

    // Leaves: one node with room for a single leaf run.
    let mut s = Store::new(RouteLayout {
        nodes: 1,
        leaves: 2,
        ..Ipv4RouteTable::layout(18, 8, 1)
    });
    let mut t = s.table();
    t.insert(p([10, 244, 0, 0], 24), NODE1).unwrap();
    assert_eq!(
        t.insert(p([10, 244, 32, 0], 24), NODE2),
        Err(RouteError::LeavesFull)
    );
    assert_eq!(t.lookup(ip([10, 244, 32, 1])), None);
    assert_eq!(t.lookup(ip([10, 244, 0, 1])), Some(NODE1));
    // A batch that does not fit changes nothing either.
    let batch = [
        (p([10, 244, 16, 0], 24), NODE2),
        (p([10, 244, 1, 0], 24), POD),
    ];
    assert_eq!(t.insert_many(batch), Err(RouteError::LeavesFull));
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![(p([10, 244, 0, 0], 24), NODE1)]
    );
    assert_eq!(t.lookup(ip([10, 244, 16, 1])), None);
}

#[test]
fn incremental_updates_compact_when_space_runs_out() {
    // Room for the live trie plus a little: churn forces compactions.
    let mut s = Store::new(RouteLayout {
        nodes: 80,
        leaves: 400,
        ..Ipv4RouteTable::layout(16, 64, 1)
    });
    let mut t = s.table();
    for round in 0..50u16 {
        for i in 0..32u8 {
            let hop = NextHop::Node(NodeId(round + u16::from(i)));
            t.insert(p([10, i, 1, 0], 24), hop).unwrap();
        }
    }
    for i in 0..32u8 {
        assert_eq!(
            t.lookup(ip([10, i, 1, 9])),
            Some(NextHop::Node(NodeId(49 + u16::from(i))))
        );
    }
    t.compact();
    // Two levels below a 16-bit direct array for each /24.
    assert_eq!(t.usage().used.nodes, 64);
}

#[test]
fn iteration_returns_what_was_inserted() {
    let mut s = Store::worst(18, 16);
    let mut t = s.table();
    let mut want = vec![
        (p([10, 244, 1, 0], 24), NODE1),
        (p([0, 0, 0, 0], 0), NextHop::Host),
        (p([10, 244, 1, 7], 32), POD),
        (p([10, 244, 0, 0], 16), NextHop::Gateway(ip([192, 0, 2, 1]))),
        (p([10, 244, 1, 0], 25), NextHop::Blackhole),
    ];
    for &(pfx, hop) in &want {
        t.insert(pfx, hop).unwrap();
    }
    want.sort_by_key(|&(pfx, _)| (u32::from(pfx.addr()), pfx.prefix_len()));
    assert_eq!(t.iter().collect::<Vec<_>>(), want);
    assert_eq!(t.get(p([10, 244, 1, 0], 25)), Some(NextHop::Blackhole));
    assert_eq!(t.get(p([10, 244, 1, 0], 26)), None);
}

#[test]
fn insert_many_merges_with_existing() {
    let mut s = Store::worst(18, 16);
    let mut t = s.table();
    t.insert(p([10, 244, 1, 0], 24), NODE1).unwrap();
    t.insert(p([10, 0, 0, 0], 8), NODE1).unwrap();
    let n = t
        .insert_many([
            (p([10, 244, 1, 0], 24), NODE2),
            (p([10, 244, 2, 0], 24), POD),
            (p([0, 0, 0, 0], 0), NextHop::Host),
        ])
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(t.lookup(ip([10, 244, 1, 1])), Some(NODE2));
    assert_eq!(t.lookup(ip([10, 244, 2, 1])), Some(POD));
    assert_eq!(t.lookup(ip([10, 9, 2, 1])), Some(NODE1));
    assert_eq!(t.lookup(ip([11, 9, 2, 1])), Some(NextHop::Host));
}

/// One operation of the property test.
#[derive(Debug, Clone)]
enum Op {
    Insert(Ipv4Prefix, NextHop),
    Remove(Ipv4Prefix),
    Batch(Vec<(Ipv4Prefix, NextHop)>),
}

fn arb_prefix() -> impl Strategy<Value = Ipv4Prefix> {
    // Few distinct networks so that prefixes overlap and repeat a lot.
    (
        prop::sample::select(vec![
            0x0a00_0000u32,
            0x0af4_0000,
            0x0af4_0100,
            0xc0a8_0000,
            0xffff_ff00,
        ]),
        any::<u32>(),
        0u8..=32,
    )
        .prop_map(|(base, noise, len)| {
            let len_bits = u32::from(len);
            // Keep the base's top bits most of the time, vary the rest.
            let addr = base ^ (noise & (u32::MAX >> len_bits.clamp(8, 31)));
            Prefix::truncated(Ipv4Addr::from(addr), len).unwrap()
        })
}

fn arb_hop() -> impl Strategy<Value = NextHop> {
    prop_oneof![
        (0u16..4).prop_map(|i| NextHop::Port(PortId(i))),
        Just(NextHop::Host),
        (0u16..4).prop_map(|i| NextHop::Node(NodeId(i))),
        (0u8..3).prop_map(|i| NextHop::Gateway(Ipv4Addr::new(192, 0, 2, i))),
        Just(NextHop::Blackhole),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (arb_prefix(), arb_hop()).prop_map(|(p, h)| Op::Insert(p, h)),
        2 => arb_prefix().prop_map(Op::Remove),
        1 => prop::collection::vec((arb_prefix(), arb_hop()), 0..8).prop_map(Op::Batch),
    ]
}

/// Addresses worth probing: each prefix's first and last address and neighbours.
fn probes(model: &[(Ipv4Prefix, NextHop)], extra: &[u32]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = extra.iter().map(|&a| Ipv4Addr::from(a)).collect();
    for (pfx, _) in model {
        let a = u32::from(pfx.addr());
        let last = a
            | (u32::MAX
                .checked_shr(u32::from(pfx.prefix_len()))
                .unwrap_or(0));
        for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1), a | 0x55] {
            out.push(Ipv4Addr::from(x));
        }
    }
    out
}

fn apply_model(model: &mut Vec<(Ipv4Prefix, NextHop)>, pfx: Ipv4Prefix, hop: Option<NextHop>) {
    model.retain(|(q, _)| *q != pfx);
    if let Some(h) = hop {
        model.push((pfx, h));
    }
}

fn run_ops(
    direct_bits: u8,
    layout: RouteLayout,
    ops: &[Op],
    extra: &[u32],
) -> Result<(), TestCaseError> {
    let mut s = Store::new(layout);
    let mut t = s.table();
    assert_eq!(t.lookup(Ipv4Addr::new(1, 2, 3, 4)), None);
    let _ = direct_bits;
    let mut model: Vec<(Ipv4Prefix, NextHop)> = Vec::new();
    for op in ops {
        match op {
            Op::Insert(pfx, hop) => {
                let before = model.iter().find(|(q, _)| q == pfx).map(|&(_, h)| h);
                match t.insert(*pfx, *hop) {
                    Ok(prev) => {
                        prop_assert_eq!(prev, before);
                        apply_model(&mut model, *pfx, Some(*hop));
                    }
                    Err(e) => prop_assert!(matches!(
                        e,
                        RouteError::RoutesFull
                            | RouteError::NodesFull
                            | RouteError::LeavesFull
                            | RouteError::GatewaysFull
                    )),
                }
            }
            Op::Remove(pfx) => {
                let before = model.iter().find(|(q, _)| q == pfx).map(|&(_, h)| h);
                match t.remove(*pfx) {
                    Ok(prev) => {
                        prop_assert_eq!(prev, before);
                        apply_model(&mut model, *pfx, None);
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, RouteError::NodesFull | RouteError::LeavesFull))
                    }
                }
            }
            Op::Batch(batch) => {
                // Distinct prefixes only, so the winner is specified.
                let mut seen: Vec<Ipv4Prefix> = Vec::new();
                let batch: Vec<_> = batch
                    .iter()
                    .filter(|(q, _)| {
                        let new = !seen.contains(q);
                        seen.push(*q);
                        new
                    })
                    .copied()
                    .collect();
                if t.insert_many(batch.iter().copied()).is_ok() {
                    for &(pfx, hop) in &batch {
                        apply_model(&mut model, pfx, Some(hop));
                    }
                }
            }
        }
        prop_assert_eq!(t.len(), model.len());
        for a in probes(&model, extra) {
            prop_assert_eq!(t.lookup(a), model_lookup(&model, a), "addr {}", a);
        }
    }
    let mut want = model.clone();
    want.sort_by_key(|&(pfx, _)| (u32::from(pfx.addr()), pfx.prefix_len()));
    prop_assert_eq!(t.iter().collect::<Vec<_>>(), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_naive_model(
        k in prop::sample::select(vec![1u8, 5, 8, 16, 18]),
        ops in prop::collection::vec(arb_op(), 1..40),
        extra in prop::collection::vec(any::<u32>(), 8),
    ) {
        run_ops(k, Ipv4RouteTable::layout(k, 512, 4), &ops, &extra)?;
    }

    #[test]
    fn matches_naive_model_under_tight_storage(
        k in prop::sample::select(vec![4u8, 16]),
        nodes in 0usize..12,
        leaves in 0usize..48,
        routes in 0usize..16,
        ops in prop::collection::vec(arb_op(), 1..40),
        extra in prop::collection::vec(any::<u32>(), 4),
    ) {
        let layout = RouteLayout { nodes, leaves, routes, gateways: 2, ..Ipv4RouteTable::layout(k, 0, 0) };
        run_ops(k, layout, &ops, &extra)?;
    }
}

#[test]
fn suggested_direct_bits() {
    assert_eq!(RouteLayout::suggested_direct_bits(0), 6);
    assert_eq!(RouteLayout::suggested_direct_bits(100), 9);
    assert_eq!(RouteLayout::suggested_direct_bits(1000), 12);
    assert_eq!(RouteLayout::suggested_direct_bits(1 << 20), 18);
    assert_eq!(RouteLayout::suggested_direct_bits(usize::MAX), 18);
}

/// Storage built from the `EMPTY` constants in a `static`-like const context works like
/// any other, and the constants are the all-zero defaults (so such statics land in
/// `.bss`).
#[test]
fn const_empty_storage_for_statics() {
    const ROUTES: usize = 8;
    const NODES: usize = ROUTES * 4;
    const LEAVES: usize = ROUTES * 6;
    assert_eq!(TrieNode::EMPTY, TrieNode::default());
    assert_eq!(GatewaySlot::EMPTY, GatewaySlot::default());
    assert_eq!(
        std::format!("{:?}", RouteEntry::<Ipv4Addr>::EMPTY),
        std::format!("{:?}", RouteEntry::<Ipv4Addr>::default())
    );
    let layout = Ipv4RouteTable::layout(8, ROUTES, 2);
    assert_eq!((layout.nodes, layout.leaves), (NODES, LEAVES));
    let mut direct = [0u32; 256];
    let mut nodes = [TrieNode::EMPTY; NODES];
    let mut leaves = [0u32; LEAVES];
    let mut routes = [RouteEntry::EMPTY; ROUTES];
    let mut gateways = [GatewaySlot::EMPTY; 2];
    let mut t = RouteTable::new(RouteStorage {
        direct: &mut direct,
        nodes: &mut nodes,
        leaves: &mut leaves,
        routes: &mut routes,
        gateways: &mut gateways,
    })
    .unwrap();
    let p = |a, l| Ipv4Prefix::new(a, l).unwrap();
    t.insert(
        p(Ipv4Addr::new(10, 244, 2, 0), 24),
        NextHop::Node(NodeId(2)),
    )
    .unwrap();
    t.insert(
        p(Ipv4Addr::new(10, 244, 2, 7), 32),
        NextHop::Port(PortId(3)),
    )
    .unwrap();
    t.insert(
        p(Ipv4Addr::UNSPECIFIED, 0),
        NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 1)),
    )
    .unwrap();
    assert_eq!(
        t.lookup(Ipv4Addr::new(10, 244, 2, 9)),
        Some(NextHop::Node(NodeId(2)))
    );
    assert_eq!(
        t.lookup(Ipv4Addr::new(10, 244, 2, 7)),
        Some(NextHop::Port(PortId(3)))
    );
    assert_eq!(
        t.lookup(Ipv4Addr::new(8, 8, 8, 8)),
        Some(NextHop::Gateway(Ipv4Addr::new(192, 0, 2, 1)))
    );
}

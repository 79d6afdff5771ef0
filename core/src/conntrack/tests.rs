//! Tests of [`super`]: TCP life cycle, NAT tuples, eviction order, timeouts, counters,
//! and a model-checked property test.

use super::*;
use crate::nat::Rewrite;
use core::net::Ipv4Addr;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn key(protocol: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
    FlowKey {
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        protocol,
        zone: 0,
    }
}

fn client(port: u16) -> FlowKey {
    key(PROTO_TCP, ip(10, 244, 1, 2), port, ip(10, 96, 0, 10), 80)
}

fn t(secs: i64) -> Instant {
    Instant::from_secs(secs)
}

/// Owns the storage of a test table.
struct Storage {
    buckets: Vec<Bucket>,
    entries: Vec<Entry>,
}

impl Storage {
    fn new(entries: usize, buckets: usize) -> Storage {
        Storage {
            buckets: vec![Bucket::EMPTY; buckets],
            entries: vec![Entry::EMPTY; entries],
        }
    }

    fn table(&mut self, config: Config) -> ConnTrack<'_> {
        ConnTrack::new(&mut self.buckets, &mut self.entries, config).unwrap()
    }
}

#[test]
fn layout() {
    assert_eq!(core::mem::size_of::<Bucket>(), 64);
    assert_eq!(core::mem::align_of::<Bucket>(), 64);
    assert_eq!(buckets_for(0), 1);
    assert_eq!(buckets_for(1), 1);
    assert_eq!(buckets_for(2), 2);
    assert_eq!(buckets_for(1_000_000), 750_000);
    assert_eq!(buckets_for(1_000_001), 750_001);
}

#[test]
fn storage_errors() {
    let mut b = [Bucket::EMPTY; 1];
    let mut e = [Entry::EMPTY; 1];
    assert_eq!(
        ConnTrack::new(&mut [], &mut e, Config::default()).unwrap_err(),
        StorageError::NoBuckets
    );
    assert_eq!(
        ConnTrack::new(&mut b, &mut [], Config::default()).unwrap_err(),
        StorageError::NoEntries
    );
}

#[test]
fn tcp_handshake_established_fin_time_wait_expiry() {
    let mut s = Storage::new(16, 8);
    let mut ct = s.table(Config::default());
    let k = client(40000);
    let id = ct.insert(k, Nat::NONE, t(0)).unwrap();
    assert_eq!(
        ct.entry(id).unwrap().state(),
        ConnState::Tcp(TcpState::None)
    );
    let step = |ct: &mut ConnTrack, key: &FlowKey, flags: u8, now: i64| {
        let (id2, dir) = ct.lookup(key, t(now)).expect("tracked");
        assert_eq!(id2, id);
        ct.update(id2, dir, flags, 60, t(now)).unwrap()
    };
    let r = k.reversed();
    assert_eq!(
        step(&mut ct, &k, TCP_SYN, 0),
        ConnState::Tcp(TcpState::SynSent)
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(60));
    assert_eq!(
        step(&mut ct, &r, TCP_SYN | TCP_ACK, 1),
        ConnState::Tcp(TcpState::SynRecv)
    );
    assert_eq!(
        step(&mut ct, &k, TCP_ACK, 2),
        ConnState::Tcp(TcpState::Established)
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(2 + 6 * 3600));
    // Data both ways keeps it established.
    assert_eq!(
        step(&mut ct, &r, TCP_ACK, 3),
        ConnState::Tcp(TcpState::Established)
    );
    // The client closes: FIN, the server ACKs, then FINs, the client ACKs.
    assert_eq!(
        step(&mut ct, &k, TCP_FIN | TCP_ACK, 10),
        ConnState::Tcp(TcpState::FinWait)
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(20));
    assert_eq!(
        step(&mut ct, &r, TCP_ACK, 11),
        ConnState::Tcp(TcpState::CloseWait)
    );
    assert_eq!(
        step(&mut ct, &r, TCP_FIN | TCP_ACK, 12),
        ConnState::Tcp(TcpState::LastAck)
    );
    // A retransmitted FIN of the server changes nothing.
    assert_eq!(
        step(&mut ct, &r, TCP_FIN | TCP_ACK, 13),
        ConnState::Tcp(TcpState::LastAck)
    );
    assert_eq!(
        step(&mut ct, &k, TCP_ACK, 13),
        ConnState::Tcp(TcpState::TimeWait)
    );
    let e = ct.entry(id).unwrap();
    assert_eq!(e.expires(), t(133));
    assert_eq!(e.packets(Direction::Original), 4);
    assert_eq!(e.packets(Direction::Reply), 5);
    assert_eq!(e.bytes(Direction::Original), 240);
    // Still there just before TIME_WAIT ends, gone after.
    assert!(ct.lookup(&k, t(132)).is_some());
    assert_eq!(ct.len(), 1);
    assert!(ct.lookup(&k, t(133)).is_none());
    assert_eq!(ct.len(), 0);
    assert!(ct.entry(id).is_none());
    let c = ct.counters();
    assert_eq!((c.inserts, c.expirations, c.evictions), (1, 1, 0));
    assert_eq!(c.hits, 10); // 9 packets + the lookup at t=132
    assert_eq!(c.misses, 1);
}

#[test]
fn tcp_simultaneous_close_rst_and_reopen() {
    let mut s = Storage::new(4, 2);
    let mut ct = s.table(Config::default());
    let id = ct.insert(client(1), Nat::NONE, t(0)).unwrap();
    use Direction::{Original as O, Reply as R};
    for (dir, flags, want) in [
        (O, TCP_SYN, TcpState::SynSent),
        (R, TCP_SYN, TcpState::SynSent2),
        (O, TCP_SYN | TCP_ACK, TcpState::SynRecv),
        (O, TCP_ACK, TcpState::Established),
        (O, TCP_FIN | TCP_ACK, TcpState::FinWait),
        (R, TCP_FIN | TCP_ACK, TcpState::LastAck),
        (R, TCP_ACK, TcpState::LastAck), // acks the client's FIN, not the last one
        (O, TCP_ACK, TcpState::TimeWait),
        (O, TCP_SYN, TcpState::SynSent), // port reuse reopens
        (R, TCP_RST, TcpState::Close),
    ] {
        assert_eq!(
            ct.update(id, dir, flags, 0, t(1)),
            Ok(ConnState::Tcp(want)),
            "{dir:?} {flags:#x}"
        );
    }
    assert_eq!(ct.entry(id).unwrap().expires(), t(11));
    assert!(ct.entry(id).unwrap().state().is_closing());
}

#[test]
fn tcp_invalid_first_packets_change_nothing() {
    let mut s = Storage::new(4, 2);
    let mut ct = s.table(Config::default());
    let id = ct.insert(client(1), Nat::NONE, t(0)).unwrap();
    for (dir, flags) in [
        (Direction::Original, TCP_SYN | TCP_ACK),
        (Direction::Original, TCP_FIN),
        (Direction::Original, TCP_RST),
        (Direction::Original, 0),
        (Direction::Reply, TCP_SYN),
        (Direction::Reply, TCP_ACK),
    ] {
        assert_eq!(
            ct.update(id, dir, flags, 0, t(5)),
            Err(UpdateError::Invalid)
        );
    }
    let e = ct.entry(id).unwrap();
    assert_eq!(e.state(), ConnState::Tcp(TcpState::None));
    assert_eq!(e.expires(), t(60));
    assert_eq!(e.packets(Direction::Original), 0);
    assert_eq!(ct.counters().invalid, 6);
    // A mid-stream ACK is picked up as established (loose mode).
    assert_eq!(
        ct.update(id, Direction::Original, TCP_ACK, 0, t(5)),
        Ok(ConnState::Tcp(TcpState::Established))
    );
    assert!(ct.remove(id));
    assert!(!ct.remove(id));
    assert_eq!(
        ct.update(id, Direction::Original, TCP_ACK, 0, t(5)),
        Err(UpdateError::NoEntry)
    );
}

#[test]
fn dnat_reply_found_by_reply_tuple() {
    let mut s = Storage::new(16, 8);
    let mut ct = s.table(Config::default());
    let k = client(40000);
    let backend = NatTarget {
        addr: ip(10, 244, 2, 7),
        port: 8080,
    };
    let nat = Nat {
        dnat: Some(backend),
        snat: None,
    };
    let id = ct.insert(k, nat, t(0)).unwrap();
    let reply = key(PROTO_TCP, ip(10, 244, 2, 7), 8080, ip(10, 244, 1, 2), 40000);
    assert_eq!(ct.lookup(&reply, t(1)), Some((id, Direction::Reply)));
    assert_eq!(ct.lookup(&k, t(1)), Some((id, Direction::Original)));
    // The untranslated reverse of the original is *not* a reply: nobody answers as
    // the ClusterIP.
    assert_eq!(ct.lookup(&k.reversed(), t(1)), None);
    let e = ct.entry(id).unwrap();
    assert_eq!(e.nat(), nat);
    assert_eq!(*e.reply(), reply);
    assert_eq!(e.translated(Direction::Original), reply.reversed());
    assert_eq!(e.translated(Direction::Reply), k.reversed());
    // The packet rewrites the datapath derives.
    let fwd = Rewrite::between(
        e.key(Direction::Original),
        &e.translated(Direction::Original),
    );
    assert_eq!(
        fwd,
        Ok(Rewrite {
            dst: Some(Ipv4Addr::new(10, 244, 2, 7)),
            dst_port: Some(8080),
            ..Rewrite::NONE
        })
    );
    let back = Rewrite::between(e.key(Direction::Reply), &e.translated(Direction::Reply));
    assert_eq!(
        back,
        Ok(Rewrite {
            src: Some(Ipv4Addr::new(10, 96, 0, 10)),
            src_port: Some(80),
            ..Rewrite::NONE
        })
    );
    // Both tuples are taken.
    assert_eq!(ct.insert(k, Nat::NONE, t(1)), Err(InsertError::Exists));
    assert_eq!(ct.insert(reply, Nat::NONE, t(1)), Err(InsertError::Exists));
    assert!(ct.contains(&reply, t(1)));
    assert!(!ct.contains(&reply, t(61)));
}

#[test]
fn hairpin_dnat_and_snat() {
    // A pod reaches its own service and is picked as the backend: DNAT to itself, SNAT
    // to the node so the reply comes back through the datapath.
    let mut s = Storage::new(16, 8);
    let mut ct = s.table(Config::default());
    let k = client(40000);
    let nat = Nat {
        dnat: Some(NatTarget {
            addr: ip(10, 244, 1, 2),
            port: 8080,
        }),
        snat: Some(NatTarget {
            addr: ip(192, 168, 1, 10),
            port: 31000,
        }),
    };
    let id = ct.insert(k, nat, t(0)).unwrap();
    let reply = key(
        PROTO_TCP,
        ip(10, 244, 1, 2),
        8080,
        ip(192, 168, 1, 10),
        31000,
    );
    assert_eq!(ct.lookup(&reply, t(0)), Some((id, Direction::Reply)));
    assert_eq!(ct.entry(id).unwrap().nat(), nat);
    assert!(ct.entry(id).unwrap().has_nat());
}

#[test]
fn icmp_echo_snat_identifier() {
    let mut s = Storage::new(16, 8);
    let mut ct = s.table(Config::default());
    let k = key(PROTO_ICMP, ip(10, 244, 1, 2), 77, ip(1, 1, 1, 1), 77);
    let nat = Nat {
        dnat: None,
        snat: Some(NatTarget {
            addr: ip(192, 168, 1, 10),
            port: 5000,
        }),
    };
    let id = ct.insert(k, nat, t(0)).unwrap();
    let reply = key(PROTO_ICMP, ip(1, 1, 1, 1), 5000, ip(192, 168, 1, 10), 5000);
    assert_eq!(ct.lookup(&reply, t(0)), Some((id, Direction::Reply)));
    assert_eq!(
        ct.update(id, Direction::Reply, 0, 84, t(1)),
        Ok(ConnState::Icmp { replied: true })
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(31));
}

#[test]
fn bad_nat_is_refused() {
    let mut s = Storage::new(4, 2);
    let mut ct = s.table(Config::default());
    let v6 = NatTarget {
        addr: IpAddr::V6(core::net::Ipv6Addr::LOCALHOST),
        port: 1,
    };
    let nat = Nat {
        dnat: Some(v6),
        snat: None,
    };
    assert_eq!(ct.insert(client(1), nat, t(0)), Err(InsertError::BadNat));
    // Ping to oneself: the reply tuple is the original tuple.
    let me = key(PROTO_ICMP, ip(10, 0, 0, 1), 9, ip(10, 0, 0, 1), 9);
    assert_eq!(ct.insert(me, Nat::NONE, t(0)), Err(InsertError::BadNat));
    assert!(ct.is_empty());
}

#[test]
fn udp_icmp_and_other_timeouts() {
    let mut s = Storage::new(16, 8);
    let mut ct = s.table(Config::default());
    let udp = key(PROTO_UDP, ip(10, 244, 1, 2), 5353, ip(10, 96, 0, 10), 53);
    let id = ct.insert(udp, Nat::NONE, t(0)).unwrap();
    assert_eq!(
        ct.update(id, Direction::Original, 0, 40, t(0)),
        Ok(ConnState::Udp(UdpState::Unreplied))
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(30));
    assert_eq!(
        ct.update(id, Direction::Reply, 0, 90, t(10)),
        Ok(ConnState::Udp(UdpState::Assured))
    );
    assert_eq!(ct.entry(id).unwrap().expires(), t(130));
    assert!(ct.entry(id).unwrap().state().is_established());
    let gre = key(47, ip(10, 244, 1, 2), 0, ip(10, 244, 1, 3), 0);
    let g = ct.insert(gre, Nat::NONE, t(0)).unwrap();
    assert_eq!(ct.entry(g).unwrap().expires(), t(60));
    let ping = key(PROTO_ICMP, ip(10, 244, 1, 2), 3, ip(10, 244, 1, 3), 3);
    let p = ct.insert(ping, Nat::NONE, t(0)).unwrap();
    assert_eq!(ct.entry(p).unwrap().expires(), t(30));
    // Custom timeouts are honoured.
    let mut s2 = Storage::new(4, 2);
    let mut config = Config::default();
    config.timeouts.udp_unreplied = Duration::from_secs(5);
    let mut ct2 = s2.table(config);
    let id = ct2.insert(udp, Nat::NONE, t(0)).unwrap();
    assert_eq!(ct2.entry(id).unwrap().expires(), t(5));
}

#[test]
fn incremental_expire() {
    let mut s = Storage::new(10, 5);
    let mut ct = s.table(Config::default());
    for p in 0..10 {
        let k = key(PROTO_UDP, ip(10, 0, 0, 1), p, ip(10, 0, 0, 2), 53);
        ct.insert(k, Nat::NONE, t(0)).unwrap();
    }
    assert_eq!(ct.len(), 10);
    assert_eq!(ct.expire(t(29), 100), 0);
    assert_eq!(ct.expire(t(30), 3), 3);
    assert_eq!(ct.len(), 7);
    assert_eq!(ct.expire(t(30), 4), 4);
    assert_eq!(ct.expire(t(30), 4), 3);
    assert!(ct.is_empty());
    assert_eq!(ct.counters().expirations, 10);
    assert_eq!(ct.iter().count(), 0);
}

/// A one-bucket table: every key shares the only probe window (8 slots = 4
/// connections), so the eviction order is fully visible.
fn tiny() -> Storage {
    Storage::new(4, 1)
}

fn established(ct: &mut ConnTrack, k: FlowKey, now: i64) -> EntryId {
    let id = ct.insert(k, Nat::NONE, t(now)).unwrap();
    for (d, f) in [
        (Direction::Original, TCP_SYN),
        (Direction::Reply, TCP_SYN | TCP_ACK),
        (Direction::Original, TCP_ACK),
    ] {
        ct.update(id, d, f, 0, t(now)).unwrap();
    }
    id
}

#[test]
fn established_segments_take_the_fast_path_and_flags_still_count() {
    let mut st = Storage::new(8, 4);
    let mut ct = st.table(Config::default());
    let id = established(&mut ct, client(40000), 10);
    let timeouts = Timeouts::DEFAULT;
    // Data and pure ACKs (PSH and URG are not state flags): state kept, counters and
    // the established timeout refreshed, in both directions.
    for (i, (dir, flags)) in [
        (Direction::Original, TCP_ACK | 0x08),
        (Direction::Reply, TCP_ACK),
        (Direction::Original, 0x20 | TCP_ACK),
        (Direction::Reply, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let now = t(20 + i as i64);
        let state = ct.update(id, dir, flags, 100, now).unwrap();
        assert_eq!(state, ConnState::Tcp(TcpState::Established));
        let e = ct.entry(id).unwrap();
        assert_eq!(e.last_seen(), now);
        assert_eq!(e.expires(), now + timeouts.tcp_established);
    }
    let e = ct.entry(id).unwrap();
    assert_eq!(e.packets(Direction::Original), 2 + 2);
    assert_eq!(e.packets(Direction::Reply), 1 + 2);
    assert_eq!(e.bytes(Direction::Reply), 200);
    // Reading ahead (a burst's look-ahead) changes and counts nothing.
    let before = *ct.counters();
    ct.touch(&client(40000));
    ct.touch(&client(1));
    assert_eq!(*ct.counters(), before);
    assert_eq!(ct.entry(id).unwrap().packets(Direction::Original), 4);
    // A FIN leaves the fast path: the connection starts closing.
    let state = ct
        .update(id, Direction::Reply, TCP_FIN | TCP_ACK, 0, t(30))
        .unwrap();
    assert_eq!(state, ConnState::Tcp(TcpState::FinWait));
    let mut st = Storage::new(8, 4);
    let mut ct = st.table(Config::default());
    let id = established(&mut ct, client(40001), 10);
    let state = ct
        .update(id, Direction::Original, TCP_RST, 0, t(11))
        .unwrap();
    assert_eq!(state, ConnState::Tcp(TcpState::Close));
}

#[test]
fn eviction_order_protects_established() {
    let mut s = tiny();
    let mut ct = s.table(Config::default());
    let est_old = established(&mut ct, client(1), 0);
    let syn = ct.insert(client(2), Nat::NONE, t(1)).unwrap();
    ct.update(syn, Direction::Original, TCP_SYN, 0, t(1))
        .unwrap();
    let closing = established(&mut ct, client(3), 2);
    ct.update(closing, Direction::Original, TCP_FIN, 0, t(2))
        .unwrap();
    let udp_key = key(PROTO_UDP, ip(10, 0, 0, 1), 9, ip(10, 0, 0, 2), 53);
    let udp = ct.insert(udp_key, Nat::NONE, t(3)).unwrap();
    ct.update(udp, Direction::Original, 0, 0, t(3)).unwrap();
    assert_eq!(ct.len(), 4);

    // 1. The closing connection goes first (although it is not the oldest).
    let n1 = ct.insert(client(10), Nat::NONE, t(4)).unwrap();
    assert!(ct.lookup(&client(3), t(4)).is_none());
    assert_eq!(ct.counters().evictions, 1);
    // 2. Then the least recently seen non-established one: the SYN_SENT (t=1).
    let n2 = ct.insert(client(11), Nat::NONE, t(5)).unwrap();
    assert!(ct.lookup(&client(2), t(5)).is_none());
    // 3. Then the UDP unreplied (t=3), older than the new ones (t=4, t=5).
    let n3 = ct.insert(client(12), Nat::NONE, t(6)).unwrap();
    assert!(ct.lookup(&udp_key, t(6)).is_none());
    // 4. Then n1 (t=4): the established connection is still protected.
    ct.insert(client(13), Nat::NONE, t(7)).unwrap();
    assert!(ct.entry(n1).is_none() || ct.entry(n1).unwrap().original() != &client(10));
    assert!(ct.lookup(&client(1), t(7)).is_some());
    assert_eq!(ct.counters().evictions, 4);
    let _ = (n2, n3);
    // Make everything established; now the oldest established goes.
    for p in [11, 12, 13] {
        let (id, _) = ct.lookup(&client(p), t(8)).unwrap();
        for (d, f) in [
            (Direction::Original, TCP_SYN),
            (Direction::Reply, TCP_SYN | TCP_ACK),
            (Direction::Original, TCP_ACK),
        ] {
            ct.update(id, d, f, 0, t(8)).unwrap();
        }
    }
    ct.insert(client(14), Nat::NONE, t(9)).unwrap();
    assert!(ct.lookup(&client(1), t(9)).is_none(), "oldest established");
    assert!(ct.entry(est_old).is_none_or(|e| e.original() != &client(1)));
    assert_eq!(ct.counters().evictions, 5);
    assert_eq!(ct.counters().drops, 0);
    assert_eq!(ct.len(), 4);
}

#[test]
fn expired_before_any_eviction_and_linux_mode_drops() {
    let mut s = tiny();
    let config = Config {
        evict_established: false,
        ..Config::default()
    };
    let mut ct = s.table(config);
    for p in 1..=3 {
        established(&mut ct, client(p), 0);
    }
    let udp_key = key(PROTO_UDP, ip(10, 0, 0, 1), 9, ip(10, 0, 0, 2), 53);
    ct.insert(udp_key, Nat::NONE, t(0)).unwrap();
    // At t=40 the UDP entry (30 s) has expired: it makes room without an eviction.
    ct.insert(client(4), Nat::NONE, t(40)).unwrap();
    assert_eq!(ct.counters().expirations, 1);
    assert_eq!(ct.counters().evictions, 0);
    // Make the new one established too: nothing may be evicted any more.
    let (id, _) = ct.lookup(&client(4), t(40)).unwrap();
    ct.update(id, Direction::Original, TCP_ACK, 0, t(40))
        .unwrap();
    assert_eq!(
        ct.insert(client(5), Nat::NONE, t(41)),
        Err(InsertError::Full)
    );
    assert_eq!(ct.counters().drops, 1);
    assert_eq!(ct.len(), 4);
    for p in 1..=4 {
        assert!(ct.lookup(&client(p), t(41)).is_some());
    }
}

#[test]
fn eviction_when_entries_run_out_uses_clock_hand() {
    // Plenty of index, 2 entries: the insert's windows may hold no candidate, so the
    // rotating hand supplies one.
    let mut s = Storage::new(2, 64);
    let mut ct = s.table(Config::default());
    for p in 0..100 {
        ct.insert(client(p), Nat::NONE, t(i64::from(p))).unwrap();
        assert!(ct.len() <= 2);
        assert!(ct.lookup(&client(p), t(i64::from(p))).is_some());
    }
    assert_eq!(ct.counters().evictions, 98);
}

#[test]
fn time_far_in_the_future_does_not_overflow() {
    let mut s = Storage::new(4, 2);
    let mut ct = s.table(Config::default());
    let far = Instant::from_micros(i64::MAX - 5);
    let id = ct.insert(client(1), Nat::NONE, far).unwrap();
    assert_eq!(
        ct.entry(id).unwrap().expires(),
        Instant::from_micros(i64::MAX)
    );
    assert!(ct
        .lookup(&client(1), Instant::from_micros(i64::MIN))
        .is_some());
}

#[derive(Debug, Clone)]
enum Op {
    Insert { port: u16, dnat: bool },
    Lookup { port: u16 },
    Remove { port: u16 },
    Advance { secs: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..48, any::<bool>()).prop_map(|(port, dnat)| Op::Insert { port, dnat }),
        2 => (0u16..48).prop_map(|port| Op::Lookup { port }),
        1 => (0u16..48).prop_map(|port| Op::Remove { port }),
        1 => (0u8..40).prop_map(|secs| Op::Advance { secs }),
    ]
}

proptest! {
    /// The table never exceeds its capacity, and every connection that was inserted
    /// and neither removed nor expired is found — unless it was evicted, and then the
    /// eviction counter accounts for it exactly.
    #[test]
    fn never_exceeds_capacity_and_finds_live_flows(
        cap in 1usize..24,
        buckets in 1usize..8,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut s = Storage::new(cap, buckets);
        let mut ct = s.table(Config { seed, ..Config::default() });
        // (port, reply key, insert time) of connections the model believes are live.
        let mut model: Vec<(u16, FlowKey, i64)> = Vec::new();
        let mut now = 0i64;
        let mut lost = 0u64; // model entries found missing (must be evictions)
        for op in ops {
            match op {
                Op::Insert { port, dnat } => {
                    let nat = if dnat {
                        Nat { dnat: Some(NatTarget { addr: ip(10, 244, 9, 9), port: port + 1000 }), snat: None }
                    } else { Nat::NONE };
                    match ct.insert(client(port), nat, t(now)) {
                        Ok(id) => {
                            let reply = *ct.entry(id).unwrap().reply();
                            model.push((port, reply, now));
                        }
                        Err(InsertError::Exists) => {
                            prop_assert!(model.iter().any(|m| m.0 == port));
                        }
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Op::Lookup { port } => {
                    let _ = ct.lookup(&client(port), t(now));
                }
                Op::Remove { port } => {
                    if let Some((id, _)) = ct.lookup(&client(port), t(now)) {
                        prop_assert!(ct.remove(id));
                    }
                    model.retain(|m| m.0 != port);
                }
                Op::Advance { secs } => now += i64::from(secs),
            }
            prop_assert!(ct.len() <= ct.capacity());
            prop_assert_eq!(ct.iter().count(), ct.len());
            // Every model connection is found in both directions, or has expired (no
            // packet is tracked, so it lives 60 s from its insert), or was evicted.
            let mut still = Vec::new();
            for (port, reply, born) in model.drain(..) {
                let o = ct.contains(&client(port), t(now));
                let r = ct.contains(&reply, t(now));
                prop_assert_eq!(o, r);
                let expired = now >= born + 60;
                prop_assert!(!(o && expired));
                if o {
                    still.push((port, reply, born));
                } else if !expired {
                    lost += 1;
                }
            }
            model = still;
            prop_assert_eq!(lost, ct.counters().evictions);
            ct.expire(t(now), cap);
            prop_assert_eq!(model.len(), ct.len());
        }
    }

    #[test]
    fn tcp_state_machine_total(flags in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..40)) {
        let mut s = Storage::new(2, 1);
        let mut ct = s.table(Config::default());
        let id = ct.insert(client(1), Nat::NONE, t(0)).unwrap();
        for (reply, f) in flags {
            let dir = if reply { Direction::Reply } else { Direction::Original };
            let before = ct.entry(id).unwrap().state();
            match ct.update(id, dir, f, 1, t(1)) {
                Ok(st) => {
                    if f & TCP_RST != 0 {
                        prop_assert_eq!(st, ConnState::Tcp(TcpState::Close));
                    }
                }
                Err(UpdateError::Invalid) => {
                    // Only before the handshake completes (NONE; FIN in SYN_SENT).
                    prop_assert!(matches!(
                        before,
                        ConnState::Tcp(TcpState::None | TcpState::SynSent | TcpState::SynSent2)
                    ));
                    prop_assert_eq!(ct.entry(id).unwrap().state(), before);
                }
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }
    }
}

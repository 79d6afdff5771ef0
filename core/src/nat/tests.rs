//! Tests of [`super`]: byte vectors, checksum verification with smoltcp, property tests
//! against packets built from scratch, and the ICMP-error round trip.

use super::*;
use crate::checksum::sum;
use crate::wire::{Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket};
use proptest::prelude::*;
use smoltcp::wire::IpAddress;
use std::vec;
use std::vec::Vec;

/// A packet description from which bytes are built with full checksums.
#[derive(Debug, Clone)]
struct Pkt {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    sport: u16,
    dport: u16,
    ident: u16,
    ttl: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
    tcp_flags: u8,
    udp_no_checksum: bool,
    icmp_request: bool,
    /// More-fragments flag and fragment offset (in 8-byte units).
    frag: (bool, u16),
    /// Bytes after the IPv4 total length (Ethernet padding).
    trailer: Vec<u8>,
}

fn pkt(protocol: u8) -> Pkt {
    Pkt {
        src: Ipv4Addr::new(10, 244, 1, 2),
        dst: Ipv4Addr::new(10, 96, 0, 10),
        protocol,
        sport: 40000,
        dport: 80,
        ident: 0x1234,
        ttl: 64,
        options: vec![],
        payload: b"hello".to_vec(),
        tcp_flags: 0x02,
        udp_no_checksum: false,
        icmp_request: true,
        frag: (false, 0),
        trailer: vec![],
    }
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(&[0, protocol]);
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v
}

/// The L4 bytes of `p` (header + payload) with a full checksum.
fn l4_bytes(p: &Pkt) -> Vec<u8> {
    let mut l4 = Vec::new();
    match p.protocol {
        PROTO_TCP => {
            l4.extend_from_slice(&p.sport.to_be_bytes());
            l4.extend_from_slice(&p.dport.to_be_bytes());
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes());
            l4.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
            l4.extend_from_slice(&[5 << 4, p.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
            l4.extend_from_slice(&p.payload);
            let mut all = pseudo(p.src, p.dst, PROTO_TCP, l4.len());
            all.extend_from_slice(&l4);
            let c = !sum(&all);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        PROTO_UDP => {
            let len = 8 + p.payload.len();
            l4.extend_from_slice(&p.sport.to_be_bytes());
            l4.extend_from_slice(&p.dport.to_be_bytes());
            l4.extend_from_slice(&(len as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&p.payload);
            if !p.udp_no_checksum {
                let mut all = pseudo(p.src, p.dst, PROTO_UDP, len);
                all.extend_from_slice(&l4);
                let c = match !sum(&all) {
                    0 => 0xffff,
                    c => c,
                };
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        PROTO_ICMP => {
            let ty = if p.icmp_request { 8 } else { 0 };
            // Echo: the identifier is the "port" (sport for a request, dport for a reply).
            let id = if p.icmp_request { p.sport } else { p.dport };
            l4.extend_from_slice(&[ty, 0, 0, 0]);
            l4.extend_from_slice(&id.to_be_bytes());
            l4.extend_from_slice(&7u16.to_be_bytes());
            l4.extend_from_slice(&p.payload);
            let c = !sum(&l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => l4.extend_from_slice(&p.payload),
    }
    l4
}

fn ip_header(p: &Pkt, payload_len: usize) -> Vec<u8> {
    let hl = 20 + p.options.len();
    let total = hl + payload_len;
    let flags_frag = (u16::from(p.frag.0) << 13) | p.frag.1;
    let mut h = vec![
        0x40 | (hl / 4) as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        (p.ident >> 8) as u8,
        p.ident as u8,
        (flags_frag >> 8) as u8,
        flags_frag as u8,
        p.ttl,
        p.protocol,
        0,
        0,
    ];
    h.extend_from_slice(&p.src.octets());
    h.extend_from_slice(&p.dst.octets());
    h.extend_from_slice(&p.options);
    let c = !sum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn build(p: &Pkt) -> Vec<u8> {
    let l4 = l4_bytes(p);
    let mut v = ip_header(p, l4.len());
    v.extend_from_slice(&l4);
    v.extend_from_slice(&p.trailer);
    v
}

/// `p` with the rewrite applied to its description.
fn rewritten(p: &Pkt, rw: &Rewrite) -> Pkt {
    let mut q = p.clone();
    q.src = rw.src.unwrap_or(p.src);
    q.dst = rw.dst.unwrap_or(p.dst);
    if p.protocol == PROTO_ICMP {
        let id = if p.icmp_request {
            rw.src_port.or(rw.dst_port)
        } else {
            rw.dst_port.or(rw.src_port)
        };
        if let Some(id) = id {
            q.sport = id;
            q.dport = id;
        }
    } else {
        q.sport = rw.src_port.unwrap_or(p.sport);
        q.dport = rw.dst_port.unwrap_or(p.dport);
    }
    q
}

/// Verifies every checksum of an IPv4 packet with smoltcp's own implementation.
fn verify(bytes: &[u8]) {
    let ip = Ipv4Packet::new_checked(bytes).expect("ipv4");
    assert!(ip.verify_checksum(), "ipv4 header checksum");
    let (s, d) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let payload = ip.payload();
    match ip.next_header().into() {
        PROTO_TCP => assert!(TcpPacket::new_checked(payload)
            .expect("tcp")
            .verify_checksum(&s, &d)),
        PROTO_UDP => assert!(UdpPacket::new_checked(payload)
            .expect("udp")
            .verify_checksum(&s, &d)),
        PROTO_ICMP => assert!(Icmpv4Packet::new_checked(payload)
            .expect("icmp")
            .verify_checksum()),
        _ => {}
    }
}

fn dnat() -> Rewrite {
    Rewrite {
        dst: Some(Ipv4Addr::new(10, 244, 2, 7)),
        dst_port: Some(8080),
        ..Rewrite::NONE
    }
}

#[test]
fn tcp_syn_dnat_byte_vector() {
    let p = pkt(PROTO_TCP);
    let mut b = build(&p);
    // The packet as built, pinned (checksums computed independently, in Python):
    // 10.244.1.2:40000 → 10.96.0.10:80, SYN.
    assert_eq!(
        b,
        [
            0x45, 0x00, 0x00, 0x2d, 0x12, 0x34, 0x00, 0x00, 0x40, 0x06, 0x52, 0x38, 0x0a, 0xf4,
            0x01, 0x02, 0x0a, 0x60, 0x00, 0x0a, // IPv4
            0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x50, 0x02,
            0xff, 0xff, 0x9e, 0xfd, 0x00, 0x00, // TCP
            b'h', b'e', b'l', b'l', b'o'
        ]
    );
    verify(&b);
    rewrite_ipv4(&mut b, &dnat()).unwrap();
    verify(&b);
    // After DNAT to 10.244.2.7:8080 (checksums again computed independently).
    assert_eq!(
        b,
        [
            0x45, 0x00, 0x00, 0x2d, 0x12, 0x34, 0x00, 0x00, 0x40, 0x06, 0x4f, 0xa7, 0x0a, 0xf4,
            0x01, 0x02, 0x0a, 0xf4, 0x02, 0x07, // IPv4
            0x9c, 0x40, 0x1f, 0x90, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x50, 0x02,
            0xff, 0xff, 0x7d, 0x2c, 0x00, 0x00, // TCP
            b'h', b'e', b'l', b'l', b'o'
        ]
    );
    assert_eq!(b, build(&rewritten(&p, &dnat())));
}

#[test]
fn frame_rewrite_and_padding_untouched() {
    let mut p = pkt(PROTO_UDP);
    p.trailer = vec![0xee; 9];
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend_from_slice(&build(&p));
    let rw = Rewrite {
        src: Some(Ipv4Addr::new(192, 168, 1, 10)),
        src_port: Some(31000),
        ..dnat()
    };
    rewrite_frame(&mut frame, &rw).unwrap();
    let mut want = frame[..14].to_vec();
    want.extend_from_slice(&build(&rewritten(&p, &rw)));
    assert_eq!(frame, want);
    assert_eq!(&frame[frame.len() - 9..], &[0xee; 9]);
    let ip_len = frame.len() - 14 - 9;
    verify(&frame[14..14 + ip_len]);
    // Not IPv4: an ARP frame.
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(rewrite_frame(&mut frame, &rw), Err(NatError::NotIpv4));
    assert_eq!(rewrite_frame(&mut [0u8; 13], &rw), Err(NatError::Truncated));
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut p = pkt(PROTO_UDP);
    p.udp_no_checksum = true;
    let mut b = build(&p);
    rewrite_ipv4(&mut b, &dnat()).unwrap();
    assert_eq!(&b[26..28], &[0, 0]);
    assert_eq!(b, build(&rewritten(&p, &dnat())));
    verify(&b);
}

#[test]
fn udp_checksum_that_becomes_zero_is_written_ffff() {
    let p = pkt(PROTO_UDP);
    let mut b = build(&p);
    let c = u16::from_be_bytes([b[26], b[27]]);
    // Choose the new destination port that makes the plain checksum 0.
    let port = !crate::checksum::add(!c, !p.dport);
    assert_eq!(crate::checksum::update16(c, p.dport, port), 0);
    let rw = Rewrite {
        dst_port: Some(port),
        ..Rewrite::NONE
    };
    rewrite_ipv4(&mut b, &rw).unwrap();
    assert_eq!(&b[26..28], &[0xff, 0xff]);
    verify(&b);
    // Full recomputation agrees (it applies the same rule).
    assert_eq!(b, build(&rewritten(&p, &rw)));
}

#[test]
fn icmp_echo_identifier() {
    for request in [true, false] {
        let mut p = pkt(PROTO_ICMP);
        p.icmp_request = request;
        p.sport = 0x4242;
        p.dport = 0x4242;
        let mut b = build(&p);
        let rw = Rewrite {
            src: Some(Ipv4Addr::new(192, 168, 1, 10)),
            src_port: Some(0x0101),
            dst_port: Some(0x0101),
            ..Rewrite::NONE
        };
        rewrite_ipv4(&mut b, &rw).unwrap();
        assert_eq!(&b[24..26], &[1, 1]);
        assert_eq!(b, build(&rewritten(&p, &rw)));
        verify(&b);
    }
}

#[test]
fn errors_leave_packet_unchanged() {
    let rw = dnat();
    // Every truncation of a valid packet is refused without a write.
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
        let full = build(&pkt(proto));
        for n in 0..full.len() {
            let mut b = full[..n].to_vec();
            assert!(rewrite_ipv4(&mut b, &rw).is_err());
            assert_eq!(b, &full[..n]);
        }
    }
    // Wrong version, bad header length, unsupported protocol, ICMP error, no ports.
    let mut b = build(&pkt(PROTO_TCP));
    b[0] = 0x65;
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::NotIpv4));
    b[0] = 0x44;
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::BadHeaderLength));
    b[0] = 0x4f; // 60 bytes > total length 45
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::BadHeaderLength));
    let mut b = build(&pkt(47)); // GRE
    assert_eq!(
        rewrite_ipv4(&mut b, &rw),
        Err(NatError::UnsupportedProtocol)
    );
    let mut p = pkt(PROTO_ICMP);
    p.payload = vec![0; 28];
    let mut b = build(&p);
    b[20] = 13; // timestamp request: no ports
    let before = b.clone();
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::NoPorts));
    assert_eq!(b, before);
    let addr_only = Rewrite {
        dst: rw.dst,
        ..Rewrite::NONE
    };
    assert_eq!(rewrite_ipv4(&mut b, &addr_only), Ok(()));
    b[20] = 3;
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::IcmpError));
    // Non-first fragment.
    let mut p = pkt(PROTO_UDP);
    p.frag = (false, 3);
    let mut b = build(&p);
    assert_eq!(rewrite_ipv4(&mut b, &rw), Err(NatError::Fragment));
}

#[test]
fn first_fragment_rewrite_is_valid_for_the_whole_datagram() {
    let mut p = pkt(PROTO_UDP);
    p.payload = (0..64u8).collect();
    let whole = build(&p); // 20 + 8 + 64
                           // Split after 8 + 16 bytes of L4 into a first fragment.
    let mut first = p.clone();
    first.frag = (true, 0);
    let l4 = l4_bytes(&p);
    let mut frag = ip_header(&first, 24);
    frag.extend_from_slice(&l4[..24]);
    let rw = Rewrite {
        src: Some(Ipv4Addr::new(172, 16, 0, 1)),
        src_port: Some(5353),
        ..dnat()
    };
    rewrite_ipv4(&mut frag, &rw).unwrap();
    assert!(Ipv4Packet::new_checked(&frag[..])
        .unwrap()
        .verify_checksum());
    // Reassemble: rewritten first fragment's L4 part + the rest of the original.
    let mut reassembled = whole.clone();
    reassembled[..20].copy_from_slice(&build(&rewritten(&p, &rw))[..20]);
    reassembled[20..44].copy_from_slice(&frag[20..44]);
    assert_eq!(reassembled, build(&rewritten(&p, &rw)));
}

#[test]
fn parse_tuple_of_packets() {
    let t = parse_tuple(&build(&pkt(PROTO_TCP)), 3).unwrap();
    assert_eq!(
        t,
        Tuple::Flow {
            key: FlowKey {
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)),
                dst: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                src_port: 40000,
                dst_port: 80,
                protocol: PROTO_TCP,
                zone: 3,
            },
            tcp_flags: 0x02,
        }
    );
    let mut p = pkt(PROTO_ICMP);
    p.sport = 99;
    match parse_tuple(&build(&p), 0).unwrap() {
        Tuple::Flow { key, .. } => assert_eq!((key.src_port, key.dst_port), (99, 99)),
        t => panic!("{t:?}"),
    }
    assert_eq!(parse_tuple(&[0x45], 0), Err(NatError::Truncated));
}

/// Builds an ICMP destination-unreachable from `from` to `to` quoting `quoted_len`
/// bytes of `offending`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, offending: &[u8], quoted_len: usize) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&offending[..quoted_len.min(offending.len())]);
    let c = !sum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut outer = pkt(PROTO_ICMP);
    outer.src = from;
    outer.dst = to;
    let mut v = ip_header(&outer, icmp.len());
    v.extend_from_slice(&icmp);
    v
}

fn key_of(b: &[u8]) -> FlowKey {
    match parse_tuple(b, 0).unwrap() {
        Tuple::Flow { key, .. } => key,
        t => panic!("{t:?}"),
    }
}

#[test]
fn icmp_error_round_trip() {
    // Client C:40000 → VIP:80, DNAT to backend B:8080 and SNAT to node N:31000.
    let c = Ipv4Addr::new(10, 244, 1, 2);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let b_ip = Ipv4Addr::new(10, 244, 2, 7);
    let n = Ipv4Addr::new(192, 168, 1, 10);
    let router = Ipv4Addr::new(192, 168, 1, 1);
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
        for quoted in [28, 48] {
            for from_backend in [true, false] {
                let mut p = pkt(proto);
                p.payload = vec![0xab; 20];
                if proto == PROTO_ICMP {
                    p.dport = p.sport;
                }
                let original = build(&p);
                let orig_key = key_of(&original);
                // What conntrack would hold: the reply tuple after NAT.
                let translated_key = FlowKey {
                    src: IpAddr::V4(n),
                    dst: IpAddr::V4(b_ip),
                    // ICMP echo keys carry the identifier in both port fields.
                    src_port: 31000,
                    dst_port: if proto == PROTO_ICMP { 31000 } else { 8080 },
                    ..orig_key
                };
                let fwd = Rewrite::between(&orig_key, &translated_key).unwrap();
                let mut sent = original.clone();
                rewrite_ipv4(&mut sent, &fwd).unwrap();
                verify(&sent);
                // An error about the translated packet comes back to N.
                let from = if from_backend { b_ip } else { router };
                let mut err = icmp_error(from, n, &sent, quoted);
                verify(&err);
                let inner = match parse_tuple(&err, 0).unwrap() {
                    Tuple::IcmpError { inner } => inner,
                    t => panic!("{t:?}"),
                };
                assert_eq!(inner, translated_key);
                // The error travels in the reply direction: rewrite reply → original.
                let back = Rewrite::between(&inner.reversed(), &orig_key.reversed()).unwrap();
                translate_icmp_error(&mut err, &back).unwrap();
                verify(&err);
                let outer = Ipv4Packet::new_checked(&err[..]).unwrap();
                assert_eq!(outer.dst_addr(), c);
                assert_eq!(outer.src_addr(), if from_backend { vip } else { router });
                // The quote now shows the packet exactly as the client sent it
                // (including its IP and, when quoted, TCP/UDP/ICMP checksum).
                let q = &err[28..];
                assert_eq!(q, &original[..quoted]);
                let want = icmp_error(err_src(&err), c, &original, quoted);
                assert_eq!(err, want);
            }
        }
    }
}

fn err_src(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[12], b[13], b[14], b[15])
}

#[test]
fn icmp_error_refusals() {
    let sent = build(&pkt(PROTO_TCP));
    let n = Ipv4Addr::new(192, 168, 1, 10);
    let full = icmp_error(n, n, &sent, 28);
    let rw = dnat();
    for len in 0..full.len() {
        let mut b = full[..len].to_vec();
        let mut hdr_fixed = b.clone();
        if len >= 4 {
            // Keep the total length consistent so the quote itself is what is short.
            hdr_fixed[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        assert!(translate_icmp_error(&mut b, &rw).is_err());
        assert_eq!(b, &full[..len]);
        let before = hdr_fixed.clone();
        if translate_icmp_error(&mut hdr_fixed, &rw).is_err() {
            assert_eq!(hdr_fixed, before);
        }
    }
    let mut echo = build(&pkt(PROTO_ICMP));
    assert_eq!(
        translate_icmp_error(&mut echo, &rw),
        Err(NatError::NotIcmpError)
    );
    let mut tcp = build(&pkt(PROTO_TCP));
    assert_eq!(
        translate_icmp_error(&mut tcp, &rw),
        Err(NatError::NotIcmpError)
    );
}

fn arb_pkt() -> impl Strategy<Value = Pkt> {
    (
        prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), Just(PROTO_ICMP)],
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<(u16, u16, u16, u8, u8)>(),
        (0usize..=10).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<(bool, bool, bool)>(),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(
            |(protocol, s, d, (sport, dport, ident, ttl, flags), options, payload, b, trailer)| {
                let mut p = pkt(protocol);
                p.src = Ipv4Addr::from(s);
                p.dst = Ipv4Addr::from(d);
                p.sport = sport;
                p.dport = if protocol == PROTO_ICMP { sport } else { dport };
                p.ident = ident;
                p.ttl = ttl;
                p.tcp_flags = flags;
                p.options = options;
                p.payload = payload;
                p.udp_no_checksum = b.0;
                p.icmp_request = b.1;
                p.frag = (b.2, 0);
                p.trailer = trailer;
                p
            },
        )
}

fn arb_rewrite() -> impl Strategy<Value = Rewrite> {
    (
        proptest::option::of(any::<[u8; 4]>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<[u8; 4]>()),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(s, sp, d, dp)| Rewrite {
            src: s.map(Ipv4Addr::from),
            src_port: sp,
            dst: d.map(Ipv4Addr::from),
            dst_port: dp,
        })
}

proptest! {
    #[test]
    fn rewrite_equals_rebuild(p in arb_pkt(), rw in arb_rewrite()) {
        let mut b = build(&p);
        rewrite_ipv4(&mut b, &rw).unwrap();
        let total = b.len() - p.trailer.len();
        verify(&b[..total]);
        prop_assert_eq!(b, build(&rewritten(&p, &rw)));
    }

    #[test]
    fn rewrite_then_inverse_restores(p in arb_pkt(), rw in arb_rewrite()) {
        let original = build(&p);
        let mut b = original.clone();
        rewrite_ipv4(&mut b, &rw).unwrap();
        let key = key_of(&original);
        let now = key_of(&b);
        let inverse = Rewrite::between(&now, &key).unwrap();
        rewrite_ipv4(&mut b, &inverse).unwrap();
        prop_assert_eq!(b, original);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..120),
        rw in arb_rewrite(),
        icmp in any::<bool>(),
    ) {
        if icmp && bytes.len() > 20 {
            bytes[0] = 0x45;
            bytes[9] = 1;
        }
        let before = bytes.clone();
        if rewrite_ipv4(&mut bytes, &rw).is_err() {
            prop_assert_eq!(&bytes, &before);
        }
        let before = bytes.clone();
        if translate_icmp_error(&mut bytes, &rw).is_err() {
            prop_assert_eq!(&bytes, &before);
        }
        let _ = parse_tuple(&bytes, 0);
    }
}

/// Turns the complete TCP/UDP checksum of an IPv4 packet into the partial form a
/// checksum-offloading sender writes: the uncomplemented pseudo-header sum.
fn make_partial(b: &mut [u8], p: &Pkt) {
    let hl = 20 + p.options.len();
    let l4_len = b.len() - p.trailer.len() - hl;
    let at = hl + if p.protocol == PROTO_TCP { 16 } else { 6 };
    let field = sum(&pseudo(p.src, p.dst, p.protocol, l4_len));
    b[at..at + 2].copy_from_slice(&field.to_be_bytes());
}

/// What the transmitting device does with a partial packet: sums the L4 part (the
/// field included) and stores the complement; UDP writes a zero as 0xFFFF.
fn finish_partial(b: &mut [u8], p: &Pkt) {
    let hl = 20 + p.options.len();
    let end = b.len() - p.trailer.len();
    let at = hl + if p.protocol == PROTO_TCP { 16 } else { 6 };
    let mut c = !sum(&b[hl..end]);
    if c == 0 && p.protocol == PROTO_UDP {
        c = 0xffff;
    }
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn partial_checksum_dnat_byte_vector() {
    // DNAT of a TCP segment whose field holds the pseudo-header sum: the field moves
    // by the address change only, uncomplemented; the port change is left to the
    // device.
    let p = pkt(PROTO_TCP);
    let mut b = build(&p);
    make_partial(&mut b, &p);
    let before = u16::from_be_bytes([b[36], b[37]]);
    assert_eq!(before, sum(&pseudo(p.src, p.dst, PROTO_TCP, b.len() - 20)));
    rewrite_ipv4_with(&mut b, &dnat(), ChecksumMode::Partial).unwrap();
    let after = u16::from_be_bytes([b[36], b[37]]);
    let q = rewritten(&p, &dnat());
    assert_eq!(after, sum(&pseudo(q.src, q.dst, PROTO_TCP, b.len() - 20)));
    assert_eq!(&b[22..24], &8080u16.to_be_bytes());
    // The IPv4 header checksum is complete as always.
    assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
    finish_partial(&mut b, &p);
    assert_eq!(b, build(&q));
    verify(&b);
    // The complete mode would have broken it: ports added to a partial field.
    let mut c = build(&p);
    make_partial(&mut c, &p);
    rewrite_ipv4(&mut c, &dnat()).unwrap();
    finish_partial(&mut c, &p);
    assert_ne!(c, build(&q));
}

proptest! {
    #[test]
    fn partial_rewrite_then_device_equals_rebuild(p in arb_pkt(), rw in arb_rewrite()) {
        prop_assume!(p.protocol != PROTO_ICMP);
        let mut p = p;
        p.udp_no_checksum = false;
        let mut b = build(&p);
        make_partial(&mut b, &p);
        rewrite_ipv4_with(&mut b, &rw, ChecksumMode::Partial).unwrap();
        finish_partial(&mut b, &p);
        let total = b.len() - p.trailer.len();
        verify(&b[..total]);
        prop_assert_eq!(b, build(&rewritten(&p, &rw)));
    }
}

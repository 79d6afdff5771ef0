//! Fuzzes VXLAN decapsulation with arbitrary frames.
//!
//! The first byte selects the receiver's configuration (destination-MAC filter, UDP
//! port, VNI) and the mode; the rest is the frame. In *raw* mode the frame is the input
//! as is. In *patch* mode (bit 0x10) the input edits a valid frame captured from the
//! Linux kernel (VNI 42, port 4789): a length byte, then (offset, xor) pairs; the outer
//! IPv4 and UDP checksums are then recomputed unless bit 0x20 is set, so the fuzzer
//! reaches the checks behind the checksums. The VTEP table is fixed and holds the
//! sender. Any accepted frame must give an inner range inside the input, and
//! re-encapsulating that inner frame must decapsulate back to the same bytes.
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use podwire_core::ids::NodeId;
use podwire_core::vxlan::{
    DstMacFilter, Vtep, VtepSlot, VtepTable, VxlanConfig, FLANNEL_PORT, IANA_PORT, IPV4_OVERHEAD,
};
use podwire_core::wire::{EthernetAddress, Vni};

const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LOCAL_MAC: EthernetAddress = EthernetAddress([0xf6, 0xe1, 0xcb, 0x9f, 0x2f, 0x16]);

/// A valid frame from the Linux kernel's vxlan driver (198.18.0.1 → 198.18.0.2,
/// UDP 37901 → 4789, VNI 42, inner ICMP echo).
const KERNEL_FRAME: &str = concat!(
    "f6e1cb9f2f16befec3e1636508004500005e4b4d00004011a31ac6120001c6120002940d12b5004a8e6c",
    "0800000000002a00",
    "0200000000020200000000010800",
    "4500002c0fe84000400116210a6300010a63000208004ba732910001070a066b000000006c51000000000000",
);

fn kernel_frame() -> Vec<u8> {
    (0..KERNEL_FRAME.len() / 2)
        .map(|i| u8::from_str_radix(&KERNEL_FRAME[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The folded ones'-complement sum of 16-bit big-endian words.
fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for pair in data.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Recomputes the outer IPv4 header checksum and a non-zero UDP checksum, as far as
/// the (possibly mangled) header lets us.
fn refix(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let c = !ones_sum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let udp = 14 + ihl;
    if total < ihl + 8 || f.len() < 14 + total || f[udp + 6..udp + 8] == [0, 0] {
        return;
    }
    f[udp + 6] = 0;
    f[udp + 7] = 0;
    let len = (total - ihl) as u32;
    let pseudo = ones_sum(&f[26..34], 17 + len);
    let c = match !ones_sum(&f[udp..14 + total], u32::from(pseudo)) {
        0 => 0xffff,
        c => c,
    };
    f[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let patched;
    let frame = if selector & 0x10 == 0 {
        input
    } else {
        let mut f = kernel_frame();
        let (len, edits) = input.split_first().map_or((0xff, &[][..]), |(l, e)| (*l, e));
        for pair in edits.chunks_exact(2) {
            let at = usize::from(pair[0]) % f.len();
            f[at] ^= pair[1];
        }
        f.truncate(usize::from(len));
        if selector & 0x20 == 0 {
            refix(&mut f);
        }
        patched = f;
        &patched[..]
    };
    let mut config = VxlanConfig::new(IpAddr::V4(LOCAL_IP), LOCAL_MAC);
    config.dst_mac_filter = if selector & 1 == 0 {
        DstMacFilter::Local
    } else {
        DstMacFilter::Any
    };
    config.dst_port = if selector & 2 == 0 { IANA_PORT } else { FLANNEL_PORT };
    config.vni = if selector & 4 == 0 {
        Vni::new(42).unwrap()
    } else {
        Vni::DEFAULT
    };

    let mut storage = [VtepSlot::EMPTY; 8];
    let mut vteps = VtepTable::new(&mut storage);
    let peers = [
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
        IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    for (i, ip) in peers.into_iter().enumerate() {
        let node = NodeId(i as u16 + 1);
        vteps
            .insert(Vtep {
                node,
                ip,
                mac: EthernetAddress([2, 0, 0, 0, 0, i as u8]),
            })
            .unwrap();
    }

    let Ok(d) = config.decapsulate(&vteps, frame) else {
        return;
    };
    assert!(d.inner().end <= frame.len());
    assert!(d.inner_len >= 14);
    assert_eq!(d.vni, config.vni);
    let sender = *vteps.get(d.node).unwrap();

    // Round trip: the sender encapsulates the inner frame back to us.
    let inner = &frame[d.inner()];
    let mut sender_config = VxlanConfig::new(sender.ip, sender.mac);
    sender_config.vni = config.vni;
    sender_config.dst_port = config.dst_port;
    sender_config.udp_checksum = selector & 8 != 0;
    sender_config.underlay_mtu = u16::MAX;
    let mut buf = vec![0u8; IPV4_OVERHEAD + inner.len()];
    buf[IPV4_OVERHEAD..].copy_from_slice(inner);
    let us = Vtep {
        node: NodeId(0),
        ip: IpAddr::V4(LOCAL_IP),
        mac: LOCAL_MAC,
    };
    let e = sender_config
        .encapsulate(&us, &mut buf, IPV4_OVERHEAD, inner.len(), 0)
        .unwrap();
    let again = config.decapsulate(&vteps, &buf[e.frame()]).unwrap();
    assert_eq!(again.node, d.node);
    assert_eq!(&buf[e.frame()][again.inner()], inner);
});

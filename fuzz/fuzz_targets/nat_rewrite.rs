//! Arbitrary bytes and an arbitrary rewrite through every NAT entry point: no panic,
//! and a refused packet is left unchanged.
#![no_main]

use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use podwire_core::nat::{
    parse_tuple, rewrite_frame, rewrite_frame_with, rewrite_ipv4, rewrite_ipv4_with,
    translate_icmp_error, translate_icmp_error_frame, translate_icmp_error_frame_with,
    translate_icmp_error_with, ChecksumMode, Rewrite,
};

fn rewrite_from(b: &[u8]) -> Rewrite {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let flags = get(0);
    let addr = |i: usize| Ipv4Addr::new(get(i), get(i + 1), get(i + 2), get(i + 3));
    let port = |i: usize| u16::from_be_bytes([get(i), get(i + 1)]);
    Rewrite {
        src: (flags & 1 != 0).then(|| addr(1)),
        src_port: (flags & 2 != 0).then(|| port(5)),
        dst: (flags & 4 != 0).then(|| addr(7)),
        dst_port: (flags & 8 != 0).then(|| port(11)),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let (rw, packet) = data.split_at(13);
    let rw = rewrite_from(rw);
    let _ = parse_tuple(packet, 0);
    type Op = fn(&mut [u8], &Rewrite) -> Result<(), podwire_core::nat::NatError>;
    let ops: [Op; 8] = [
        rewrite_ipv4,
        translate_icmp_error,
        rewrite_frame,
        translate_icmp_error_frame,
        |p, rw| rewrite_ipv4_with(p, rw, ChecksumMode::Partial),
        |p, rw| translate_icmp_error_with(p, rw, ChecksumMode::Partial),
        |p, rw| rewrite_frame_with(p, rw, ChecksumMode::Partial),
        |p, rw| translate_icmp_error_frame_with(p, rw, ChecksumMode::Partial),
    ];
    for op in ops {
        let mut p = packet.to_vec();
        if op(&mut p, &rw).is_err() {
            assert_eq!(p, packet, "a refused packet must be unchanged");
        }
    }
});

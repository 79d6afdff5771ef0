//! Wireshark reads podwire's VXLAN frames the way podwire meant them.
//!
//! Encapsulates a few inner frames with podwire, writes them to a pcap file, dissects it
//! with `tshark -V` (checksum validation on) and checks, frame by frame, the VNI, the
//! outer and inner addresses, the UDP destination port and that Wireshark computes the
//! same outer UDP and IPv4 header checksums. A deliberately corrupted copy must be
//! reported as bad, so the checksum check is known to be live.
//!
//! This test fails, rather than skips, when tshark is missing: `tests/run-all` installs
//! the Debian package `tshark`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use podwire_core::ids::NodeId;
use podwire_core::vxlan::{Vtep, VxlanConfig, IANA_PORT, IPV4_OVERHEAD};
use podwire_core::wire::{EthernetAddress, Vni};

const LOCAL_MAC: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0x00, 0x00, 0x01]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0x50, 0x57, 0x00, 0x00, 0x02]);

/// The frames podwire emitted and what Wireshark must read in each.
struct Expect {
    vni: u32,
    dst_port: u16,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
    /// Expected `[Checksum Status: ...]` of the outer UDP header.
    udp_checksum_status: &'static str,
}

/// The RFC 1071 checksum of `data` (complemented).
fn internet_checksum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for pair in data.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An inner Ethernet + IPv4 frame carrying `l4` with protocol `protocol`.
fn inner_frame(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x03]); // pod MACs
    f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 63, protocol, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = internet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Encapsulates `inner` with `config` towards `peer` and returns the outer frame.
fn encap(config: &VxlanConfig, peer: &Vtep, inner: &[u8], ident: u16) -> Vec<u8> {
    let mut buf = vec![0u8; IPV4_OVERHEAD + inner.len()];
    buf[IPV4_OVERHEAD..].copy_from_slice(inner);
    let e = config
        .encapsulate(peer, &mut buf, IPV4_OVERHEAD, inner.len(), ident)
        .expect("encapsulate");
    buf[e.frame()].to_vec()
}

/// Writes a classic pcap file (microsecond timestamps, LINKTYPE_ETHERNET).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes()); // ts_sec
        out.extend_from_slice(&0u32.to_le_bytes()); // ts_usec
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes()); // incl_len
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes()); // orig_len
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).expect("write pcap");
}

/// Deletes the pcap file even when an assertion fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One top-level protocol section of `tshark -V` output: its title line and body.
struct Section {
    title: String,
    body: Vec<String>,
}

/// Splits `tshark -V` output into frames, each a list of protocol sections.
fn parse_tshark(text: &str) -> Vec<Vec<Section>> {
    let mut frames: Vec<Vec<Section>> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if line.starts_with("Frame ") {
                frames.push(Vec::new());
            }
            if let Some(frame) = frames.last_mut() {
                frame.push(Section {
                    title: line.to_string(),
                    body: Vec::new(),
                });
            }
        } else if let Some(section) = frames.last_mut().and_then(|f| f.last_mut()) {
            section.body.push(line.trim().to_string());
        }
    }
    frames
}

fn sections<'a>(frame: &'a [Section], prefix: &str) -> Vec<&'a Section> {
    frame
        .iter()
        .filter(|s| s.title.starts_with(prefix))
        .collect()
}

fn has_line(section: &Section, line: &str) -> bool {
    section.body.iter().any(|l| l == line)
}

#[test]
fn tshark_reads_podwire_vxlan() {
    let local_ip = Ipv4Addr::new(192, 0, 2, 10);
    let peer_ip = Ipv4Addr::new(192, 0, 2, 20);
    let peer = Vtep {
        node: NodeId(3),
        ip: IpAddr::V4(peer_ip),
        mac: PEER_MAC,
    };
    let pod_a = Ipv4Addr::new(10, 244, 1, 2);
    let pod_b = Ipv4Addr::new(10, 244, 2, 3);

    let mut frames = Vec::new();
    let mut expect = Vec::new();

    // 1. Defaults (VNI 1, port 8472) with the UDP checksum on; ICMP echo inside.
    let mut flannel = VxlanConfig::new(IpAddr::V4(local_ip), LOCAL_MAC);
    flannel.udp_checksum = true;
    let ping = inner_frame(pod_a, pod_b, 1, &icmp_echo(0x3291, 1, b"podwire ping!"));
    frames.push(encap(&flannel, &peer, &ping, 1));
    expect.push(Expect {
        vni: 1,
        dst_port: 8472,
        inner_src: pod_a,
        inner_dst: pod_b,
        udp_checksum_status: "Good",
    });

    // 2. IANA port, VNI 42, inner UDP (inner checksum 0 = none), odd length.
    let mut iana = flannel;
    iana.dst_port = IANA_PORT;
    iana.vni = Vni::new(42).unwrap();
    let dns = inner_frame(
        pod_b,
        pod_a,
        17,
        &[
            0x9c, 0x40, 0x00, 0x35, 0x00, 0x0d, 0x00, 0x00, 1, 2, 3, 4, 5,
        ],
    );
    frames.push(encap(&iana, &peer, &dns, 2));
    expect.push(Expect {
        vni: 42,
        dst_port: IANA_PORT,
        inner_src: pod_b,
        inner_dst: pod_a,
        udp_checksum_status: "Good",
    });

    // 3. The largest VNI, inner TCP SYN.
    let mut max_vni = flannel;
    max_vni.vni = Vni::MAX;
    let mut syn = vec![0u8; 20];
    syn[..4].copy_from_slice(&[0xa4, 0x10, 0x00, 0x50]);
    syn[12] = 0x50;
    syn[13] = 0x02;
    let tcp = inner_frame(pod_a, Ipv4Addr::new(10, 96, 0, 1), 6, &syn);
    frames.push(encap(&max_vni, &peer, &tcp, 3));
    expect.push(Expect {
        vni: 0xff_ffff,
        dst_port: 8472,
        inner_src: pod_a,
        inner_dst: Ipv4Addr::new(10, 96, 0, 1),
        udp_checksum_status: "Good",
    });

    // 4. The default configuration: no UDP checksum.
    let plain = VxlanConfig::new(IpAddr::V4(local_ip), LOCAL_MAC);
    frames.push(encap(&plain, &peer, &ping, 4));
    expect.push(Expect {
        vni: 1,
        dst_port: 8472,
        inner_src: pod_a,
        inner_dst: pod_b,
        udp_checksum_status: "Not present",
    });

    // 5. Negative control: frame 2 with one inner byte flipped after encapsulation.
    let mut corrupt = frames[1].clone();
    *corrupt.last_mut().unwrap() ^= 0x40;
    frames.push(corrupt);
    expect.push(Expect {
        vni: 42,
        dst_port: IANA_PORT,
        inner_src: pod_b,
        inner_dst: pod_a,
        udp_checksum_status: "Bad",
    });

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let file = TempFile(
        std::env::temp_dir().join(format!("podwire-vxlan-{}-{nanos}.pcap", std::process::id())),
    );
    write_pcap(&file.0, &frames);

    let output = Command::new("tshark")
        .arg("-r")
        .arg(&file.0)
        .args(["-V", "-n"])
        .args(["-o", "udp.check_checksum:TRUE"])
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-d", "udp.port==8472,vxlan"])
        .args(["-d", "udp.port==4789,vxlan"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run tshark ({e}): install the Debian package `tshark` (tests/run-all does)"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tshark failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let dissected = parse_tshark(&stdout);
    assert_eq!(
        dissected.len(),
        expect.len(),
        "frames in tshark output:\n{stdout}"
    );
    for (i, (frame, want)) in dissected.iter().zip(&expect).enumerate() {
        let n = i + 1;
        let ctx = || format!("frame {n}:\n{stdout}");

        let ips = sections(frame, "Internet Protocol Version 4, ");
        assert_eq!(ips.len(), 2, "outer and inner IPv4 in {}", ctx());
        assert_eq!(
            ips[0].title,
            format!("Internet Protocol Version 4, Src: {local_ip}, Dst: {peer_ip}"),
            "{}",
            ctx()
        );
        assert!(
            has_line(ips[0], "[Header checksum status: Good]"),
            "outer IPv4 checksum in {}",
            ctx()
        );
        assert!(
            has_line(ips[0], ".1.. .... = Don't fragment: Set"),
            "{}",
            ctx()
        );
        assert_eq!(
            ips[1].title,
            format!(
                "Internet Protocol Version 4, Src: {}, Dst: {}",
                want.inner_src, want.inner_dst
            ),
            "{}",
            ctx()
        );

        let udp = sections(frame, "User Datagram Protocol, ");
        let outer_udp = udp.first().unwrap_or_else(|| panic!("no UDP in {}", ctx()));
        assert!(
            outer_udp
                .title
                .ends_with(&format!("Dst Port: {}", want.dst_port)),
            "{}",
            ctx()
        );
        assert!(
            has_line(
                outer_udp,
                &format!("[Checksum Status: {}]", want.udp_checksum_status)
            ),
            "outer UDP checksum status {} in {}",
            want.udp_checksum_status,
            ctx()
        );

        let vxlan = sections(frame, "Virtual eXtensible Local Area Network");
        assert_eq!(vxlan.len(), 1, "VXLAN in {}", ctx());
        assert!(
            has_line(
                vxlan[0],
                &format!("VXLAN Network Identifier (VNI): {}", want.vni)
            ),
            "VNI {} in {}",
            want.vni,
            ctx()
        );
        assert!(
            has_line(
                vxlan[0],
                ".... 1... .... .... = VXLAN Network ID (VNI): True"
            ),
            "I flag in {}",
            ctx()
        );
    }
}

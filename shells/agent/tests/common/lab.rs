//! Labs for tests: `podwire lab`'s builder with a random namespace prefix and run
//! directory, removed by a guard on drop (also when the test panics or `up` failed
//! half-way).

use podwire_agent::lab::demo;
use podwire_agent::lab::{down, Lab, LabPaths, LabSpec};
use podwire_agent::source::Datastore;

use super::{suffix, PODWIRE, PODWIRE_CNI};

/// Removes the lab named by its paths on drop (also a half-built one).
pub struct LabGuard {
    pub paths: LabPaths,
    pub lab: Option<Lab>,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        down(&self.paths.prefix, &self.paths.run_dir);
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("lab built")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("lab built")
    }
}

pub fn test_paths() -> LabPaths {
    let s = suffix();
    LabPaths {
        prefix: format!("pwt{s}"),
        run_dir: std::env::temp_dir().join(format!("podwire-lab-{s}")),
        podwire: PODWIRE.into(),
        podwire_cni: PODWIRE_CNI.into(),
    }
}

pub fn lab(nodes: usize, pods: usize) -> LabGuard {
    lab_with(LabSpec {
        nodes,
        pods_per_node: pods,
        ..LabSpec::default()
    })
}

/// A lab whose agents run on a 3-member etcd cluster in the lab's namespaces.
pub fn lab_on_etcd(nodes: usize, pods: usize) -> LabGuard {
    lab_with(LabSpec {
        nodes,
        pods_per_node: pods,
        datastore: podwire_agent::source::Datastore::Etcd,
        ..LabSpec::default()
    })
}

/// A lab whose cluster state lives in `datastore`.
pub fn lab_on(nodes: usize, pods: usize, datastore: Datastore) -> LabGuard {
    lab_with(LabSpec {
        nodes,
        pods_per_node: pods,
        datastore,
        ..LabSpec::default()
    })
}

/// A lab built from `spec` (removed on drop).
pub fn lab_with(spec: LabSpec) -> LabGuard {
    let paths = test_paths();
    let mut g = LabGuard {
        paths: paths.clone(),
        lab: None,
    };
    g.lab = Some(Lab::up(spec, paths, false).expect("lab up"));
    g
}

pub fn assert_all_pass(checks: &[demo::Check]) {
    let table = demo::render(checks);
    assert!(checks.iter().all(|c| c.passed()), "{table}");
}

/// The `Datapath:` line of `podwire status` on `node`.
pub fn datapath_status(lab: &Lab, node: &str) -> String {
    lab.podwire(node, &["status"])
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Datapath:"))
        .unwrap_or_default()
        .to_string()
}

/// The value of drop counter `reason` in `podwire status` on `node` (0 if absent).
pub fn drops(lab: &Lab, node: &str, reason: &str) -> u64 {
    let line = datapath_status(lab, node);
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{reason}=")))
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// Polls `f` until it holds (10 s).
pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_within(what, std::time::Duration::from_secs(10), f)
}

/// Polls `f` until it holds, failing the test after `limit`.
pub fn wait_for_within(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Turns off TX checksum offload of `ifname` in `netns` (`ethtool -K <if> tx off`,
/// done with the ethtool ioctl so the tests need no ethtool binary).
pub fn disable_tx_checksum(netns: &str, ifname: &str) {
    let name = ifname.to_string();
    podwire_agent::lab::topology::in_netns(netns, move || {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            data: *mut EthtoolValue,
            _pad: [u8; 16],
        }
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        const ETHTOOL_STXCSUM: u32 = 0x17;
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut req = IfReq {
            name: [0; 16],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: plain socket and ioctl with a correctly laid out ifreq that points
        // at a live ethtool_value.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0);
            let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
            libc::close(fd);
            assert_eq!(
                r,
                0,
                "ETHTOOL_STXCSUM on {name}: {}",
                std::io::Error::last_os_error()
            );
        }
    })
    .unwrap();
}

/// The byte at offset `i` of a bulk transfer: position-dependent, so a lost,
/// duplicated, reordered or corrupted byte shows.
fn pattern(i: usize) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16)).wrapping_mul(31) as u8
}

/// Sends `len` pattern bytes over TCP from netns `from` to a sink in netns `to` at
/// `to_ip`; returns how many bytes arrived in order and intact (the sink stops
/// counting at the first wrong byte).
pub fn tcp_bulk(from: &str, to: &str, to_ip: std::net::Ipv4Addr, len: usize) -> usize {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    let (tx, rx) = std::sync::mpsc::channel();
    let to = to.to_string();
    let sink = std::thread::spawn(move || {
        podwire_agent::lab::topology::in_netns(&to, move || {
            let l = TcpListener::bind("0.0.0.0:7780").unwrap();
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut intact = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break intact,
                    Ok(n) => {
                        for b in &buf[..n] {
                            if *b != pattern(intact) {
                                return intact;
                            }
                            intact += 1;
                        }
                    }
                }
            }
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    podwire_agent::lab::topology::in_netns(from, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(to_ip), 7780),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let data: Vec<u8> = (0..len).map(pattern).collect();
        for chunk in data.chunks(256 << 10) {
            if s.write_all(chunk).is_err() {
                break;
            }
        }
    })
    .unwrap();
    sink.join().unwrap()
}

/// Packets received by `ifname` in `netns` so far.
pub fn rx_packets(netns: &str, ifname: &str) -> u64 {
    let out =
        podwire_agent::lab::topology::ip(netns, &["-s", "-j", "link", "show", ifname]).unwrap();
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    j[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

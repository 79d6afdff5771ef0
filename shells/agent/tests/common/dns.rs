//! DNS peers for tests: NSD serving a zone inside a test namespace (a real
//! authoritative server as the cluster DNS's upstream), and `dig` run inside a
//! namespace.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// NSD serving one zone on `addr:53` inside a namespace; stopped on drop.
pub struct Nsd {
    child: Child,
    dir: TempDir,
}

impl Nsd {
    /// Starts NSD in `netns` on `addr`, authoritative for `zone` with `records`
    /// (zone-file lines relative to the origin), and waits until it answers.
    pub fn start(netns: &str, addr: Ipv4Addr, zone: &str, records: &str) -> Nsd {
        let dir = TempDir::new();
        let d = dir.0.display();
        std::fs::write(
            dir.0.join("zone"),
            format!(
                "$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A {addr}\n{records}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("nsd.conf"),
            format!(
                "server:\n  ip-address: {addr}\n  port: 53\n  username: \"\"\n  chroot: \"\"\n  database: \"\"\n  \
                 zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
                 zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  \
                 server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\n\
                 zone:\n  name: {zone}\n  zonefile: \"{d}/zone\"\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "nsd", "-d", "-c"])
            .arg(dir.0.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nsd = Nsd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let soa = format!("{zone}.");
        loop {
            let out = dig(netns, &[&format!("@{addr}"), "+short", "SOA", &soa]);
            if out.contains("hostmaster") {
                break;
            }
            if let Ok(Some(st)) = nsd.child.try_wait() {
                panic!("nsd exited ({st}): {}", nsd.log());
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not answer: {}",
                nsd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        nsd
    }

    /// NSD's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dig +time=2 +tries=1 <args>` inside `netns` (its resolv.conf is the one
/// `ip netns exec` mounts from `/etc/netns/<netns>/`); stdout, whatever the status.
pub fn dig(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "dig", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short` lines, sorted.
pub fn dig_short(netns: &str, args: &[&str]) -> Vec<String> {
    let mut full = vec!["+short"];
    full.extend_from_slice(args);
    let mut v: Vec<String> = dig(netns, &full)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && !l.starts_with(";;"))
        .collect();
    v.sort();
    v
}

/// `getent <database> <name>` inside `netns` (glibc's resolver); stdout.
pub fn getent(netns: &str, database: &str, name: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "getent", database, name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

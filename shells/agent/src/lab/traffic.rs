//! Real traffic for the lab's checks: TCP and UDP servers that answer with the
//! address they saw the client connect from, clients that ask them, and ping.
//!
//! Design note: the point of every check is the network model's "no NAT" promise, so
//! the servers report the peer address as the kernel of the receiving pod saw it and
//! the check compares it with the sender's own pod IP. Servers and clients are
//! threads that enter the namespace (`setns` on the thread), so one process can speak
//! from and to every pod of the lab without helper binaries; servers poll a stop flag
//! and close their sockets when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::topology::{in_netns, netns_path};

/// The port the lab's peer-reporting servers listen on (TCP and UDP).
pub const REPORT_PORT: u16 = 7777;

/// TCP and UDP peer-reporting servers in one namespace; stopped on drop.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Reporter {
    /// Starts both servers on `0.0.0.0:port` inside `ns`.
    pub fn start(ns: &str, port: u16) -> Result<Reporter> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let path = netns_path(ns);
        let mut threads = Vec::new();
        for udp in [false, true] {
            let stop = stop.clone();
            let tx = tx.clone();
            let path = path.clone();
            threads.push(std::thread::spawn(move || {
                let enter = std::fs::File::open(&path).and_then(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
                if let Err(e) = enter {
                    let _ = tx.send(Err(e));
                    return;
                }
                if udp {
                    serve_udp(port, &stop, &tx)
                } else {
                    serve_tcp(port, &stop, &tx)
                }
            }));
        }
        drop(tx);
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5))
                .context("reporter did not start")?
                .with_context(|| format!("starting reporters in {ns}"))?;
        }
        Ok(Reporter { stop, threads })
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(port: u16, stop: &AtomicBool, ready: &std::sync::mpsc::Sender<std::io::Result<()>>) {
    let l = match TcpListener::bind(("0.0.0.0", port)).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_udp(port: u16, stop: &AtomicBool, ready: &std::sync::mpsc::Sender<std::io::Result<()>>) {
    let s = match UdpSocket::bind(("0.0.0.0", port)).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    }
}

/// Connects from `ns` to `to` over TCP; returns the peer address the server saw.
pub fn tcp_ask(ns: &str, to: SocketAddr) -> Result<String> {
    in_netns(ns, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
    .with_context(|| format!("TCP to {to}"))
}

/// Sends UDP from `ns` to `to` (retrying a few times, UDP may meet a cold ARP
/// cache); returns the peer address the server saw.
pub fn udp_ask(ns: &str, to: SocketAddr) -> Result<String> {
    in_netns(ns, move || -> std::io::Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut buf = [0u8; 256];
        let mut last = std::io::Error::other("no reply");
        for _ in 0..4 {
            s.send_to(b"who am i", to)?;
            match s.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => last = e,
            }
        }
        Err(last)
    })?
    .with_context(|| format!("UDP to {to}"))
}

/// Whether `ping` from `ns` to `to` gets a reply (up to three probes).
pub fn ping(ns: &str, to: Ipv4Addr) -> bool {
    ping_size(ns, to, None)
}

/// `ping` with an ICMP payload of `size` bytes and Don't Fragment set.
pub fn ping_size(ns: &str, to: Ipv4Addr, size: Option<usize>) -> bool {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        "ping".into(),
        "-c".into(),
        "1".into(),
        "-W".into(),
        "1".into(),
    ];
    if let Some(s) = size {
        args.extend(["-M".into(), "do".into(), "-s".into(), s.to_string()]);
    }
    args.push(to.to_string());
    (0..3).any(|_| {
        Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

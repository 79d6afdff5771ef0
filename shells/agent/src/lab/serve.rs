//! `podwire lab serve`: the server a lab pod runs on its container ports.
//!
//! Design note: a pod applied to the lab needs something real behind its ports for
//! services, names and policies to be checked with traffic, and the lab's machine
//! has no images to run. So each such pod runs this small server inside its
//! network namespace, as its own process (it outlives `lab apply`, and `lab down`
//! stops it as it stops agents): on every TCP and UDP port it answers with the
//! address it saw the client come from and the pod's name (`10.244.1.2 default/web`),
//! over HTTP when the client speaks HTTP (`GET /`), so `curl`, `wget` and plain
//! sockets all see the network model's "no NAT" promise and which backend answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

/// How long a TCP client has to send an HTTP request before it gets the plain
/// answer (a client that only reads sends nothing).
pub const REQUEST_WAIT: Duration = Duration::from_millis(200);

/// What the server says to a client seen as `peer`.
pub fn answer(peer: SocketAddr, pod: &str) -> String {
    format!("{} {pod}\n", peer.ip())
}

/// Serves `tcp` and `udp` ports on all addresses until killed.
pub fn run(pod: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("TCP port {port}"))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let pod = pod.clone();
                std::thread::spawn(move || serve_tcp(s, &pod));
            }
        }));
    }
    for &port in udp {
        let s = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("UDP port {port}"))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(answer(peer, &pod).as_bytes(), peer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_tcp(mut s: TcpStream, pod: &str) {
    let Ok(peer) = s.peer_addr() else { return };
    let body = answer(peer, pod);
    let _ = s.set_read_timeout(Some(REQUEST_WAIT));
    let mut first = [0u8; 4];
    let http = matches!(s.read(&mut first), Ok(n) if n > 0 && (first.starts_with(b"GET") || first.starts_with(b"HEAD")));
    if http {
        // The rest of the request does not matter; the answer is the same.
        let mut rest = [0u8; 4096];
        let _ = s.read(&mut rest);
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    } else {
        let _ = s.write_all(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn plain_and_http_clients_both_get_the_peer_and_the_pod() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().take(2).flatten() {
                serve_tcp(s, "default/web");
            }
        });
        let mut plain = TcpStream::connect(addr).unwrap();
        let mut out = String::new();
        plain.read_to_string(&mut out).unwrap();
        assert_eq!(out, "127.0.0.1 default/web\n");
        let mut http = TcpStream::connect(addr).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        http.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n127.0.0.1 default/web\n"), "{out}");
        assert_eq!(
            answer(
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 5)),
                "a/b"
            ),
            "10.244.1.2 a/b\n"
        );
    }
}

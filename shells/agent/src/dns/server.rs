//! The serving tasks: UDP sockets and TCP listeners on the listen addresses, each
//! feeding the one responder.
//!
//! Design note: each listen address gets several UDP sockets bound with
//! SO_REUSEPORT, so the kernel spreads datagrams over them by flow hash and each
//! socket's loop runs on its own runtime worker; a loop answers zone queries inline
//! (no task, no channel, no copy per query) and hands only forwarded queries to a
//! task, bounded by a semaphore (beyond it the client gets SERVFAIL at once, never
//! an unbounded queue). TCP serves RFC 7766 framing: many queries per connection,
//! answered in order, an idle timeout, and a bound on open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::responder::{Pending, Reply, Responder, Transport};
use super::upstream::Upstream;

/// Forwarded queries in flight at most.
pub const MAX_FORWARDS: usize = 1024;
/// Open TCP connections at most.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What every serving task shares.
pub struct Context {
    /// The responder (zone snapshot and counters).
    pub responder: Responder,
    /// The upstreams and their cache.
    pub upstream: Upstream,
    forwards: Semaphore,
    connections: Arc<Semaphore>,
}

impl Context {
    /// A context over `responder` and `upstream`.
    pub fn new(responder: Responder, upstream: Upstream) -> Context {
        Context {
            responder,
            upstream,
            forwards: Semaphore::new(MAX_FORWARDS),
            connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        }
    }

    /// Resolves a forwarded query and encodes the client's answer.
    pub async fn forward(&self, p: &Pending) -> Vec<u8> {
        let Ok(_permit) = self.forwards.try_acquire() else {
            return self.responder.complete(p, None);
        };
        let r = self
            .upstream
            .resolve(&p.target, p.question.query_type(), self.responder.stats())
            .await;
        self.responder.complete(p, r.ok().as_ref())
    }
}

/// Binds `count` UDP sockets on `addr` with SO_REUSEPORT.
pub fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    (0..count.max(1))
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            UdpSocket::from_std(s.into())
        })
        .collect()
}

/// Binds a TCP listener on `addr`.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Serves one UDP socket until aborted.
pub fn spawn_udp(socket: UdpSocket, ctx: Arc<Context>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive");
                    continue;
                }
            };
            match ctx.responder.respond(&buf[..n], Transport::Udp) {
                Reply::Send(b) => {
                    let _ = socket.send_to(&b, peer).await;
                }
                Reply::Drop => {}
                Reply::Forward(p) => {
                    let (ctx, socket) = (ctx.clone(), socket.clone());
                    tokio::spawn(async move {
                        let b = ctx.forward(&p).await;
                        let _ = socket.send_to(&b, peer).await;
                    });
                }
            }
        }
    })
}

/// Serves one TCP listener until aborted.
pub fn spawn_tcp(listener: TcpListener, ctx: Arc<Context>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    continue;
                }
            };
            let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
                continue; // Over the bound: the connection is closed at once.
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                serve_connection(stream, &ctx).await;
                drop(permit);
            });
        }
    })
}

async fn serve_connection(mut stream: TcpStream, ctx: &Context) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let answer = match ctx.responder.respond(&buf, Transport::Tcp) {
            Reply::Send(b) => b,
            Reply::Drop => return,
            Reply::Forward(p) => ctx.forward(&p).await,
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::zone;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn udp_and_tcp_answer_from_the_zone() {
        let responder = Responder::new(Name::from_ascii("cluster.local.").unwrap());
        responder.publish(zone());
        let ctx = Arc::new(Context::new(
            responder,
            Upstream::new(vec![], Duration::from_millis(100), 10),
        ));
        let udp = bind_udp("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let udp_addr = udp[0].local_addr().unwrap();
        let tcp = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let tasks: Vec<_> = udp
            .into_iter()
            .map(|s| spawn_udp(s, ctx.clone()))
            .chain([spawn_tcp(tcp, ctx.clone())])
            .collect();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query(1, "web.prod.svc.cluster.local."), udp_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.answers[0].data.to_string(), "10.96.1.1");
        // Two queries on one TCP connection.
        let mut s = TcpStream::connect(tcp_addr).await.unwrap();
        for (id, name) in [
            (2, "kubernetes.default.svc.cluster.local."),
            (3, "example.com."),
        ] {
            let q = query(id, name);
            s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&q).await.unwrap();
            let len = s.read_u16().await.unwrap();
            let mut b = vec![0u8; usize::from(len)];
            s.read_exact(&mut b).await.unwrap();
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.id, id);
            if id == 3 {
                // Outside the zone with no upstream: SERVFAIL.
                assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
            } else {
                assert_eq!(m.answers[0].data.to_string(), "10.96.0.1");
            }
        }
        for t in tasks {
            t.abort();
        }
    }
}

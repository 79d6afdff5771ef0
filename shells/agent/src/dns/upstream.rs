//! Forwarding names outside the cluster zone to the upstream resolvers, behind the
//! cache.
//!
//! Design note: each forwarded question is asked afresh — a new socket (a random
//! source port) and an unpredictable message id per attempt, and only a response
//! with that id and the same question is accepted — so an off-path attacker has
//! to guess both to poison the cache. Upstreams are tried in order, each with a
//! timeout; a truncated UDP answer is asked again over TCP (RFC 7766), so large
//! answers arrive whole. The first usable answer is cached (see [`super::cache`]).

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::cache::Cache;
use super::responder::ADVERTISED_PAYLOAD;
use super::stats::Stats;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// None is configured.
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    /// The upstream did not answer in time.
    #[error("{0} did not answer within the timeout")]
    Timeout(SocketAddr),
    /// A socket error.
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The answer did not parse.
    #[error("{0} sent a malformed answer: {1}")]
    Malformed(SocketAddr, String),
}

/// The upstream resolvers and the answer cache.
pub struct Upstream {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<Cache>,
    counter: AtomicU64,
    ids: std::hash::RandomState,
}

impl Upstream {
    /// Forwards to `servers` (tried in order), each given `timeout`, caching up to
    /// `cache_entries` answers.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, cache_entries: usize) -> Upstream {
        Upstream {
            servers,
            timeout,
            cache: Mutex::new(Cache::new(cache_entries)),
            counter: AtomicU64::new(0),
            ids: std::hash::RandomState::new(),
        }
    }

    /// The configured upstreams.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// An unpredictable message id (a keyed hash of a counter).
    fn next_id(&self) -> u16 {
        self.ids
            .hash_one(self.counter.fetch_add(1, Ordering::Relaxed)) as u16
    }

    /// The answer to (`name`, `qtype`): from the cache, else from the first upstream
    /// that answers.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        stats: &Stats,
    ) -> Result<Message, UpstreamError> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(name, qtype, Instant::now()));
        if let Some(m) = cached {
            stats.cache_hit();
            return Ok(m);
        }
        stats.forwarded();
        let mut last = UpstreamError::NoUpstreams;
        for server in &self.servers {
            match self.ask(*server, name, qtype).await {
                Ok(m) => {
                    if let Ok(mut c) = self.cache.lock() {
                        c.insert(name, qtype, &m, Instant::now());
                    }
                    return Ok(m);
                }
                Err(e) => {
                    tracing::debug!(upstream = %server, %name, error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        stats.upstream_failure();
        Err(last)
    }

    fn request(&self, name: &Name, qtype: RecordType) -> (u16, Vec<u8>, Query) {
        let id = self.next_id();
        let query = Query::query(name.clone(), qtype);
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(query.clone());
        let mut e = Edns::new();
        e.set_max_payload(ADVERTISED_PAYLOAD);
        m.set_edns(e);
        (id, m.to_vec().unwrap_or_default(), query)
    }

    /// One upstream: UDP, then TCP if the answer was truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, UpstreamError> {
        let io = |e| UpstreamError::Io(server, e);
        let (id, bytes, query) = self.request(name, qtype);
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(server).await.map_err(io)?;
        socket.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + self.timeout;
        let answer = loop {
            let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| UpstreamError::Timeout(server))?
                .map_err(io)?;
            // Ignore anything that is not the answer to this question.
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id && m.queries.first() == Some(&query) => break m,
                _ => continue,
            }
        };
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        tokio::time::timeout(self.timeout, self.ask_tcp(server, name, qtype))
            .await
            .map_err(|_| UpstreamError::Timeout(server))?
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, UpstreamError> {
        let io = |e| UpstreamError::Io(server, e);
        let (id, bytes, query) = self.request(name, qtype);
        let mut s = TcpStream::connect(server).await.map_err(io)?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).await.map_err(io)?;
        let len = s.read_u16().await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.map_err(io)?;
        let m =
            Message::from_vec(&buf).map_err(|e| UpstreamError::Malformed(server, e.to_string()))?;
        if m.metadata.id != id || m.queries.first() != Some(&query) {
            return Err(UpstreamError::Malformed(
                server,
                "the answer is not for our question".into(),
            ));
        }
        Ok(m)
    }
}

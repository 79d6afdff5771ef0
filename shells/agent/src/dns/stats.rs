//! The DNS server's counters: queries answered by response code, and what was
//! dropped, forwarded, cached and truncated.
//!
//! Design note: the serving tasks bump relaxed atomics (no lock on the query path);
//! `podwire status` reads a [`StatsSnapshot`]. Every query ends in exactly one
//! outcome: a response code, or a drop with its reason counted.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    servfail: AtomicU64,
    formerr: AtomicU64,
    refused: AtomicU64,
    notimp: AtomicU64,
    other: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    truncated: AtomicU64,
    upstream_failures: AtomicU64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Answers with NOERROR (including NODATA).
    pub noerror: u64,
    /// NXDOMAIN answers.
    pub nxdomain: u64,
    /// SERVFAIL answers.
    pub servfail: u64,
    /// FORMERR answers (malformed queries).
    pub formerr: u64,
    /// REFUSED answers (zone transfers, other classes).
    pub refused: u64,
    /// NOTIMP answers (other opcodes).
    pub notimp: u64,
    /// Answers with any other code (BADVERS).
    pub other: u64,
    /// Datagrams dropped without an answer (shorter than a header, or responses).
    pub dropped: u64,
    /// Queries sent to an upstream resolver.
    pub forwarded: u64,
    /// Queries answered from the upstream cache.
    pub cache_hits: u64,
    /// Answers truncated to fit the client's buffer.
    pub truncated: u64,
    /// Forwarded queries no upstream answered.
    pub upstream_failures: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Counts an answer with `rcode`.
    pub fn answered(&self, rcode: ResponseCode) {
        bump(match rcode {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            ResponseCode::FormErr => &self.formerr,
            ResponseCode::Refused => &self.refused,
            ResponseCode::NotImp => &self.notimp,
            _ => &self.other,
        });
    }

    /// Counts a dropped datagram.
    pub fn dropped(&self) {
        bump(&self.dropped);
    }

    /// Counts a query sent upstream.
    pub fn forwarded(&self) {
        bump(&self.forwarded);
    }

    /// Counts a cache hit.
    pub fn cache_hit(&self) {
        bump(&self.cache_hits);
    }

    /// Counts a truncated answer.
    pub fn truncated(&self) {
        bump(&self.truncated);
    }

    /// Counts a forwarded query no upstream answered.
    pub fn upstream_failure(&self) {
        bump(&self.upstream_failures);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            noerror: r(&self.noerror),
            nxdomain: r(&self.nxdomain),
            servfail: r(&self.servfail),
            formerr: r(&self.formerr),
            refused: r(&self.refused),
            notimp: r(&self.notimp),
            other: r(&self.other),
            dropped: r(&self.dropped),
            forwarded: r(&self.forwarded),
            cache_hits: r(&self.cache_hits),
            truncated: r(&self.truncated),
            upstream_failures: r(&self.upstream_failures),
        }
    }
}

impl StatsSnapshot {
    /// Answers of every code.
    pub fn answered(&self) -> u64 {
        self.noerror
            + self.nxdomain
            + self.servfail
            + self.formerr
            + self.refused
            + self.notimp
            + self.other
    }
}

impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answered {} (noerror={} nxdomain={} servfail={} formerr={} refused={} notimp={} other={}), forwarded {}, cache hits {}, truncated {}, upstream failures {}, dropped {}",
            self.answered(),
            self.noerror,
            self.nxdomain,
            self.servfail,
            self.formerr,
            self.refused,
            self.notimp,
            self.other,
            self.forwarded,
            self.cache_hits,
            self.truncated,
            self.upstream_failures,
            self.dropped
        )
    }
}

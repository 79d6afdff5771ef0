//! A bounded cache of upstream answers with CoreDNS's `cache` semantics.
//!
//! Design note: CoreDNS's cache plugin keeps positive answers for the smallest TTL
//! of the message, capped at 3600 s, and negative answers (NXDOMAIN, NODATA) for
//! the SOA's negative TTL (RFC 2308: the smaller of the SOA record's TTL and its
//! MINIMUM), capped at 1800 s; both at least 5 s. Served entries have their TTLs
//! lowered by their age, so a client never holds a record past its origin's TTL.
//! A full cache evicts an arbitrary entry, as CoreDNS's shards do. Errors other
//! than NXDOMAIN, truncated answers and negative answers without an SOA are not
//! cached. Keys ignore the name's case (hickory's `Name` hashes case-insensitively).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Longest time a positive answer is kept.
pub const MAX_POSITIVE_TTL: u32 = 3600;
/// Longest time a negative answer is kept.
pub const MAX_NEGATIVE_TTL: u32 = 1800;
/// Shortest time any answer is kept.
pub const MIN_TTL: u32 = 5;

struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
}

/// The cache.
pub struct Cache {
    capacity: usize,
    entries: HashMap<(Name, RecordType), Entry>,
}

/// How long `m` may be cached, or `None` if it must not be.
pub fn cache_ttl(m: &Message) -> Option<u32> {
    if m.metadata.truncation {
        return None;
    }
    let rcode = m.metadata.response_code;
    let negative =
        rcode == ResponseCode::NXDomain || (rcode == ResponseCode::NoError && m.answers.is_empty());
    if negative {
        let soa = m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?;
        return Some(soa.clamp(MIN_TTL, MAX_NEGATIVE_TTL));
    }
    if rcode != ResponseCode::NoError {
        return None;
    }
    let min = m
        .answers
        .iter()
        .chain(&m.authorities)
        .chain(&m.additionals)
        .map(|r| r.ttl)
        .min()?;
    Some(min.clamp(MIN_TTL, MAX_POSITIVE_TTL))
}

impl Cache {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer to (`name`, `qtype`) at `now`, its TTLs lowered by its age.
    pub fn get(&mut self, name: &Name, qtype: RecordType, now: Instant) -> Option<Message> {
        let key = (name.clone(), qtype);
        let e = self.entries.get(&key)?;
        let age = now.saturating_duration_since(e.stored);
        if age >= Duration::from_secs(u64::from(e.ttl)) {
            self.entries.remove(&key);
            return None;
        }
        let age = age.as_secs() as u32;
        let mut m = e.message.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.min(e.ttl).saturating_sub(age);
        }
        Some(m)
    }

    /// Stores `m` as the answer to (`name`, `qtype`) if it may be cached.
    pub fn insert(&mut self, name: &Name, qtype: RecordType, m: &Message, now: Instant) {
        let Some(ttl) = cache_ttl(m) else { return };
        let key = (name.clone(), qtype);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| {
                now.saturating_duration_since(e.stored).as_secs() < u64::from(e.ttl)
            });
            if self.entries.len() >= self.capacity {
                if let Some(victim) = self.entries.keys().next().cloned() {
                    self.entries.remove(&victim);
                }
            }
        }
        let mut message = m.clone();
        message.edns = None;
        self.entries.insert(
            key,
            Entry {
                message,
                stored: now,
                ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn positive(ttls: &[u32]) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        for t in ttls {
            m.add_answer(Record::from_rdata(
                n("a.example."),
                *t,
                RData::A(A("192.0.2.1".parse().unwrap())),
            ));
        }
        m
    }

    fn negative(rcode: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::error_msg(1, OpCode::Query, rcode);
        m.add_authority(Record::from_rdata(
            n("example."),
            soa_ttl,
            RData::SOA(SOA::new(
                n("ns.example."),
                n("h.example."),
                1,
                1,
                1,
                1,
                minimum,
            )),
        ));
        m
    }

    #[test]
    fn ttls_follow_coredns() {
        assert_eq!(cache_ttl(&positive(&[300, 60])), Some(60));
        assert_eq!(cache_ttl(&positive(&[1])), Some(MIN_TTL));
        assert_eq!(cache_ttl(&positive(&[86400])), Some(MAX_POSITIVE_TTL));
        assert_eq!(
            cache_ttl(&negative(ResponseCode::NXDomain, 900, 30)),
            Some(30)
        );
        assert_eq!(
            cache_ttl(&negative(ResponseCode::NoError, 20, 600)),
            Some(20)
        );
        assert_eq!(
            cache_ttl(&negative(ResponseCode::NXDomain, 86400, 86400)),
            Some(MAX_NEGATIVE_TTL)
        );
        assert_eq!(
            cache_ttl(&Message::error_msg(
                1,
                OpCode::Query,
                ResponseCode::NXDomain
            )),
            None,
            "no SOA"
        );
        assert_eq!(
            cache_ttl(&Message::error_msg(
                1,
                OpCode::Query,
                ResponseCode::ServFail
            )),
            None
        );
        let mut tc = positive(&[60]);
        tc.metadata.truncation = true;
        assert_eq!(cache_ttl(&tc), None);
    }

    #[test]
    fn entries_age_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        c.insert(&n("a.example."), RecordType::A, &positive(&[60]), t0);
        let hit = c
            .get(
                &n("A.Example."),
                RecordType::A,
                t0 + Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(hit.answers[0].ttl, 50);
        assert!(c.get(&n("a.example."), RecordType::AAAA, t0).is_none());
        assert!(c
            .get(
                &n("a.example."),
                RecordType::A,
                t0 + Duration::from_secs(60)
            )
            .is_none());
        assert!(c.is_empty(), "expired entries are removed");
        for (i, name) in ["a.example.", "b.example.", "c.example."]
            .iter()
            .enumerate()
        {
            c.insert(
                &n(name),
                RecordType::A,
                &positive(&[60]),
                t0 + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(c.len(), 2);
    }
}

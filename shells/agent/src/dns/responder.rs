//! The responder: one query's bytes in, the answer's bytes out (or the question to
//! forward).
//!
//! Design note: the responder is synchronous and owns no sockets, so the UDP and
//! TCP tasks, the unit tests and the fuzz target all drive the same function. It
//! reads the current zone snapshot with one lock-free load (`arc-swap`): the daemon
//! publishes a new snapshot whenever the cluster state changes and queries in
//! flight keep the one they loaded. Untrusted input never panics: a datagram shorter
//! than a header, or one that is itself a response, is dropped and counted; one that
//! does not parse gets FORMERR, as do queries with a question count other than one;
//! other opcodes get NOTIMP, zone transfers and other classes REFUSED, an EDNS
//! version above 0 BADVERS (RFC 6891). Answers honour the client's buffer: 512
//! bytes without EDNS, the advertised size (at most 4096) with it, 64 KiB over TCP;
//! what does not fit loses its additional records first and is then sent empty with
//! TC set, and the client retries over TCP.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};

use super::stats::Stats;
use super::zone::{Lookup, Zone};

/// Largest UDP answer we send, whatever the client advertises.
pub const MAX_UDP_PAYLOAD: u16 = 4096;
/// The UDP payload size we advertise in our EDNS records (the DNS Flag Day 2020
/// value, safe from fragmentation).
pub const ADVERTISED_PAYLOAD: u16 = 1232;
/// How many CNAMEs inside the zone are followed before giving up.
const MAX_CHASE: usize = 8;

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: answers are limited to the client's buffer.
    Udp,
    /// A TCP stream: answers up to 64 KiB.
    Tcp,
}

/// A parsed, valid query.
#[derive(Debug, Clone)]
pub struct Question {
    id: u16,
    recursion_desired: bool,
    query: Query,
    edns: bool,
    max_size: usize,
}

impl Question {
    /// The question's name.
    pub fn name(&self) -> &Name {
        self.query.name()
    }

    /// The question's type.
    pub fn query_type(&self) -> RecordType {
        self.query.query_type()
    }
}

/// A query the zone does not answer: to be asked of an upstream resolver.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The client's question.
    pub question: Question,
    /// CNAME records already followed inside the zone (ExternalName services).
    pub chain: Vec<Record>,
    /// The name to ask upstream (the question's, or the last CNAME's target).
    pub target: Name,
}

/// What to do with a datagram or TCP message.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes back.
    Send(Vec<u8>),
    /// Send nothing (the reason is counted).
    Drop,
    /// Resolve upstream, then [`Responder::complete`].
    Forward(Pending),
}

/// The responder: the current zone and the counters.
#[derive(Debug)]
pub struct Responder {
    domain: Name,
    zone: ArcSwapOption<Zone>,
    stats: Stats,
}

/// A response's sections.
struct Sections {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Sections {
    fn empty(rcode: ResponseCode) -> Sections {
        Sections {
            rcode,
            authoritative: false,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
        }
    }
}

/// A header-only response (no question), for queries that did not parse.
fn header_only(id: u16, rd: bool, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(id, OpCode::Query, rcode);
    m.metadata.recursion_desired = rd;
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_else(|_| {
        // Encoding a bare header cannot fail; still, never panic on the query path.
        let mut b = vec![0u8; 12];
        b[..2].copy_from_slice(&id.to_be_bytes());
        b[2] = 0x80 | u8::from(rd);
        b[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
        b
    })
}

impl Responder {
    /// A responder for the cluster domain `domain` with no zone yet: its names get
    /// SERVFAIL until the first [`Responder::publish`].
    pub fn new(domain: Name) -> Responder {
        Responder {
            domain,
            zone: ArcSwapOption::empty(),
            stats: Stats::default(),
        }
    }

    /// Replaces the zone snapshot (queries in flight keep the one they loaded).
    pub fn publish(&self, zone: Zone) {
        self.zone.store(Some(Arc::new(zone)));
    }

    /// The current snapshot, if the first sync has happened.
    pub fn zone(&self) -> Option<Arc<Zone>> {
        self.zone.load_full()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Answers one message.
    pub fn respond(&self, packet: &[u8], transport: Transport) -> Reply {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            // Too short to answer, or a response (answering it could loop).
            self.stats.dropped();
            return Reply::Drop;
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let rd = packet[2] & 0x01 != 0;
        let message = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                self.stats.answered(ResponseCode::FormErr);
                return Reply::Send(header_only(id, rd, ResponseCode::FormErr));
            }
        };
        if message.queries.len() != 1 {
            self.stats.answered(ResponseCode::FormErr);
            return Reply::Send(header_only(id, rd, ResponseCode::FormErr));
        }
        let edns = message.edns.as_ref();
        let max_size = match (transport, edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
            (Transport::Udp, None) => 512,
        };
        let question = Question {
            id,
            recursion_desired: rd,
            query: message.queries[0].clone(),
            edns: edns.is_some(),
            max_size,
        };
        if message.metadata.op_code != OpCode::Query {
            return Reply::Send(self.encode(&question, Sections::empty(ResponseCode::NotImp)));
        }
        if edns.is_some_and(|e| e.version() > 0) {
            return Reply::Send(self.encode(&question, Sections::empty(ResponseCode::BADVERS)));
        }
        let qtype = question.query_type();
        if question.query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return Reply::Send(self.encode(&question, Sections::empty(ResponseCode::Refused)));
        }
        let name = question.name().clone();
        let zone = self.zone.load();
        let Some(zone) = zone.as_ref() else {
            if self.domain.zone_of(&name) {
                // Cluster names wait for the first sync; others can be forwarded.
                return Reply::Send(
                    self.encode(&question, Sections::empty(ResponseCode::ServFail)),
                );
            }
            return Reply::Forward(Pending {
                question,
                chain: vec![],
                target: name,
            });
        };
        let mut chain = Vec::new();
        let mut current = name;
        loop {
            let found = zone.lookup(&current, qtype);
            let negative = |rcode| Sections {
                rcode,
                authoritative: true,
                answers: chain.clone(),
                authorities: vec![zone.soa().clone()],
                additionals: vec![],
            };
            let sections = match found {
                Lookup::Answer {
                    answers,
                    additionals,
                } => {
                    let mut all = chain.clone();
                    all.extend(answers);
                    Sections {
                        rcode: ResponseCode::NoError,
                        authoritative: true,
                        answers: all,
                        authorities: vec![],
                        additionals,
                    }
                }
                Lookup::NoData => negative(ResponseCode::NoError),
                Lookup::NxDomain => negative(ResponseCode::NXDomain),
                Lookup::Alias { cname, target } => {
                    chain.push(*cname);
                    if zone.is_ours(&target) && chain.len() < MAX_CHASE {
                        current = target;
                        continue;
                    }
                    if zone.is_ours(&target) {
                        Sections::empty(ResponseCode::ServFail)
                    } else {
                        return Reply::Forward(Pending {
                            question,
                            chain,
                            target,
                        });
                    }
                }
                Lookup::NotOurs => {
                    return Reply::Forward(Pending {
                        question,
                        chain,
                        target: current,
                    })
                }
            };
            return Reply::Send(self.encode(&question, sections));
        }
    }

    /// The answer to a forwarded query from the upstream's response (`None`: no
    /// upstream answered: SERVFAIL).
    pub fn complete(&self, pending: &Pending, upstream: Option<&Message>) -> Vec<u8> {
        let sections = match upstream {
            None => Sections::empty(ResponseCode::ServFail),
            Some(m) => {
                let mut answers = pending.chain.clone();
                answers.extend(m.answers.iter().cloned());
                Sections {
                    rcode: m.metadata.response_code,
                    authoritative: false,
                    answers,
                    authorities: m.authorities.clone(),
                    additionals: m.additionals.clone(),
                }
            }
        };
        self.encode(&pending.question, sections)
    }

    /// Encodes a response to `q`, fitting it into the client's buffer.
    fn encode(&self, q: &Question, s: Sections) -> Vec<u8> {
        let mut m = Message::response(q.id, OpCode::Query);
        m.metadata.recursion_desired = q.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.authoritative = s.authoritative;
        m.metadata.response_code = s.rcode;
        m.add_query(q.query.clone());
        if q.edns {
            let mut e = Edns::new();
            e.set_max_payload(ADVERTISED_PAYLOAD);
            m.set_edns(e);
        }
        m.answers = s.answers;
        m.authorities = s.authorities;
        m.additionals = s.additionals;
        self.stats.answered(s.rcode);
        let fits = |m: &Message| m.to_vec().ok().filter(|b| b.len() <= q.max_size);
        if let Some(b) = fits(&m) {
            return b;
        }
        // Additional records are optional: drop them before truncating.
        m.additionals.clear();
        if let Some(b) = fits(&m) {
            return b;
        }
        self.stats.truncated();
        m.answers.clear();
        m.authorities.clear();
        m.metadata.truncation = true;
        fits(&m).unwrap_or_else(|| header_only(q.id, q.recursion_desired, ResponseCode::ServFail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::zone;
    use hickory_proto::op::MessageType;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn cluster_local() -> Name {
        Name::from_ascii("cluster.local.").unwrap()
    }

    fn responder() -> Responder {
        let r = Responder::new(cluster_local());
        r.publish(zone());
        r
    }

    fn answer(r: &Responder, packet: &[u8], t: Transport) -> Message {
        match r.respond(packet, t) {
            Reply::Send(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_are_authoritative_with_the_question_echoed() {
        let r = responder();
        let m = answer(
            &r,
            &query("kubernetes.default.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            m.queries[0].name().to_string(),
            "kubernetes.default.svc.cluster.local."
        );
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.1");
        assert!(m.edns.is_none(), "no OPT without one in the query");
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let r = responder();
        let nx = answer(
            &r,
            &query("nope.prod.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = answer(
            &r,
            &query("web.prod.svc.cluster.local.", RecordType::AAAA, Some(1232)),
            Transport::Udp,
        );
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(
            nodata.edns.as_ref().unwrap().max_payload(),
            ADVERTISED_PAYLOAD
        );
        let s = r.stats().snapshot();
        assert_eq!((s.nxdomain, s.noerror), (1, 1));
    }

    #[test]
    fn servfail_until_the_first_sync_and_outside_names_are_forwarded() {
        let r = Responder::new(cluster_local());
        let m = answer(
            &r,
            &query("kubernetes.default.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let r = responder();
        match r.respond(&query("example.com.", RecordType::A, None), Transport::Udp) {
            Reply::Forward(p) => {
                assert_eq!(p.target.to_string(), "example.com.");
                assert!(p.chain.is_empty());
                let upstream = Message::error_msg(9, OpCode::Query, ResponseCode::NXDomain);
                let out = Message::from_vec(&r.complete(&p, Some(&upstream))).unwrap();
                assert_eq!(out.metadata.id, 0x1234);
                assert_eq!(out.metadata.response_code, ResponseCode::NXDomain);
                assert!(!out.metadata.authoritative);
                let failed = Message::from_vec(&r.complete(&p, None)).unwrap();
                assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn external_names_forward_the_cname_target() {
        let r = responder();
        match r.respond(
            &query("ext.prod.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        ) {
            Reply::Forward(p) => {
                assert_eq!(p.target.to_string(), "example.org.");
                assert_eq!(p.chain.len(), 1);
                let mut up = Message::response(1, OpCode::Query);
                up.add_answer(Record::from_rdata(
                    Name::from_ascii("example.org.").unwrap(),
                    60,
                    hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(
                        "192.0.2.7".parse().unwrap(),
                    )),
                ));
                let out = Message::from_vec(&r.complete(&p, Some(&up))).unwrap();
                let kinds: Vec<RecordType> = out.answers.iter().map(|a| a.record_type()).collect();
                assert_eq!(kinds, vec![RecordType::CNAME, RecordType::A]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_that_do_not_fit_are_truncated_unless_over_tcp() {
        // 40 ready endpoints of a headless service: more than 512 bytes of A records.
        let mut yaml = String::from(crate::dns::zone::tests::CLUSTER);
        yaml.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: prod}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: prod, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nendpoints:\n");
        for i in 0..40 {
            yaml.push_str(&format!("- addresses: [10.244.2.{i}]\n"));
        }
        let r = Responder::new(cluster_local());
        r.publish(Zone::build(
            &crate::dns::zone::tests::view(&yaml),
            &cluster_local(),
            5,
            "10.96.0.10".parse().unwrap(),
            1,
        ));
        let q = query("big.prod.svc.cluster.local.", RecordType::A, None);
        let small = match r.respond(&q, Transport::Udp) {
            Reply::Send(b) => b,
            other => panic!("{other:?}"),
        };
        assert!(small.len() <= 512);
        let m = Message::from_vec(&small).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty());
        let big = answer(
            &r,
            &query("big.prod.svc.cluster.local.", RecordType::A, Some(4096)),
            Transport::Udp,
        );
        assert!(!big.metadata.truncation);
        assert_eq!(big.answers.len(), 40);
        let tcp = answer(&r, &q, Transport::Tcp);
        assert_eq!(tcp.answers.len(), 40);
        assert_eq!(r.stats().snapshot().truncated, 1);
    }

    #[test]
    fn bad_input_gets_formerr_refused_notimp_or_is_dropped() {
        let r = responder();
        // Shorter than a header; a response: dropped.
        assert!(matches!(r.respond(&[1, 2, 3], Transport::Udp), Reply::Drop));
        let mut resp = query("a.cluster.local.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(r.respond(&resp, Transport::Udp), Reply::Drop));
        // Garbage after a header: FORMERR with the id.
        let mut junk = query("a.cluster.local.", RecordType::A, None);
        junk.truncate(15);
        let m = answer(&r, &junk, Transport::Udp);
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
        // Two questions.
        let mut two = Message::new(7, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").unwrap(),
            RecordType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let m = answer(&r, &two.to_vec().unwrap(), Transport::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // No question.
        let none = Message::new(8, MessageType::Query, OpCode::Query);
        assert_eq!(
            answer(&r, &none.to_vec().unwrap(), Transport::Udp)
                .metadata
                .response_code,
            ResponseCode::FormErr
        );
        // A name longer than 255 bytes (hand-built: 5 labels of 63).
        let mut long = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(63);
            long.extend([b'a'; 63]);
        }
        long.extend([0, 0, 1, 0, 1]);
        assert_eq!(
            answer(&r, &long, Transport::Udp).metadata.response_code,
            ResponseCode::FormErr
        );
        // A compression pointer loop.
        let mut looped = vec![
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
        ];
        assert_eq!(
            answer(&r, &looped, Transport::Udp).metadata.response_code,
            ResponseCode::FormErr
        );
        looped.truncate(13);
        assert_eq!(
            answer(&r, &looped, Transport::Udp).metadata.response_code,
            ResponseCode::FormErr
        );
        // Zone transfers and other classes: REFUSED.
        for t in [RecordType::AXFR, RecordType::IXFR] {
            let m = answer(&r, &query("cluster.local.", t, None), Transport::Tcp);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        }
        let mut chaos = Message::new(9, MessageType::Query, OpCode::Query);
        let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        assert_eq!(
            answer(&r, &chaos.to_vec().unwrap(), Transport::Udp)
                .metadata
                .response_code,
            ResponseCode::Refused
        );
        // Another opcode: NOTIMP.
        let mut status = Message::new(10, MessageType::Query, OpCode::Status);
        status.add_query(Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            answer(&r, &status.to_vec().unwrap(), Transport::Udp)
                .metadata
                .response_code,
            ResponseCode::NotImp
        );
        // EDNS version 1: BADVERS, with an OPT to carry it.
        let mut v1 = Message::new(11, MessageType::Query, OpCode::Query);
        v1.add_query(Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        v1.set_edns(e);
        let m = answer(&r, &v1.to_vec().unwrap(), Transport::Udp);
        // BADVERS is code 16 (which BADSIG shares: the decoder names it BADSIG).
        assert_eq!(u16::from(m.metadata.response_code), 16);
        assert!(m.edns.is_some());
        let s = r.stats().snapshot();
        assert_eq!(
            (s.dropped, s.formerr, s.refused, s.notimp, s.other),
            (2, 6, 3, 1, 1)
        );
    }
}

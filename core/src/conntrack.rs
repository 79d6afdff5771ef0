//! Connection tracking: a bounded flow table that pins NAT and remembers connection
//! state.
//!
//! Design note: every packet of an established connection crosses this table, so the
//! hit path is one hash, one or two cache lines of index, one key compare. The table is
//! split in two caller-owned arrays:
//!
//! - an **index** of [`Bucket`]s: 64-byte, cache-line-aligned groups of
//!   [`BUCKET_SLOTS`] slots, each slot a 32-bit hash tag plus a 32-bit link (entry
//!   number × 2 + direction). A key hashes (podwire flow hash v1, [`FlowKey::hash`],
//!   seeded by [`Config::seed`]) to a home bucket; it may live in the home bucket or
//!   the next one. **Probe bound: a lookup inspects at most [`MAX_PROBE`] = 16 slots in
//!   2 adjacent buckets (128 contiguous bytes), and compares a full key only where the
//!   32-bit tag matches.** Because the window is fixed, a lookup never stops at an
//!   empty slot, so removal simply clears slots — no tombstones, no back-shifting.
//! - the **entries**: one [`Entry`] per connection, holding both tuples, the NAT, the
//!   protocol state, timers, counters and the datapath's cached verdict.
//!
//! Each connection has two index slots, one for its **original** tuple (as the first
//! packet arrived) and one for its **reply** tuple (what the answer looks like on the
//! wire *after* NAT: with DNAT to a backend the reply comes from the backend; with SNAT
//! it goes to the node address), so a packet of either direction finds the entry with
//! one lookup and learns its [`Direction`]. This is the model of Linux nf_conntrack's
//! two tuple hashes.
//!
//! Sizing: give the index [`buckets_for`]`(entries)` buckets (¾ as many buckets as
//! entries: 48 bytes of index per entry, a slot load of at most ⅓). When both buckets
//! of a window are full, an insert first moves one of the window's slots to a free
//! slot of *its* window (one step of cuckoo-style displacement) and only then evicts
//! within the window. Measured with the benchmark's 2^20 connections filled to the last
//! entry: no premature eviction at this sizing (at ½ bucket per entry: 104, i.e. 1 in
//! 10 000; without the displacement step: 1126).
//!
//! **Eviction** happens only when an insert needs room: a free slot in the window of
//! each tuple and a free entry. First the expired entries linked from the window
//! concerned (for a missing entry: from both windows) are removed. If room is still
//! missing, a victim is chosen among the entries linked from
//! those windows (for a missing entry, also among [`CLOCK_SCAN`] entries under a
//! rotating hand, so a victim always exists): in order, expired, then closing (TCP
//! FIN/CLOSE-WAIT/LAST-ACK/TIME-WAIT/CLOSE), then non-established (TCP handshake, UDP
//! unreplied, ICMP, other protocols), and established connections (TCP ESTABLISHED,
//! UDP assured) only as a last resort — and never with
//! [`Config::evict_established`] `= false`, Linux's `early_drop` behaviour, where the
//! insert fails instead ([`InsertError::Full`], counted in [`Counters::drops`]). Within
//! a class the least recently seen entry goes first.
//!
//! **Time** is passed in. An entry expires at `last packet + timeout(state)`; expired
//! entries are invisible to lookups (and removed when met), and [`ConnTrack::expire`]
//! collects them incrementally with a budget so the shell can spread the work.
//!
//! **TCP** follows nf_conntrack's state machine, simplified: no sequence-number window
//! tracking (so an RST is accepted in any state, as Cilium does), states and events as
//! in `nf_conntrack_proto_tcp.c` (RST > SYN > SYN-ACK > FIN > ACK), loose pickup of
//! mid-stream connections (an ACK as the first packet establishes, Linux's
//! `nf_conntrack_tcp_loose = 1`), and packets the table marks invalid in Linux's `NONE`
//! state are reported [`UpdateError::Invalid`] without changing anything.
//! **UDP** is unreplied until a reply is seen, then assured. **ICMP** echo is keyed by
//! its identifier (both port fields, see [`FlowKey`]).
//!
//! | state                       | Linux default | Cilium default | podwire | why                                                     |
//! |-----------------------------|---------------|----------------|---------|---------------------------------------------------------|
//! | TCP SYN_SENT (and NONE)     | 120 s         | 60 s           | 60 s    | Cilium; a SYN retried for a minute is a dead peer       |
//! | TCP SYN_RECV                | 60 s          | 60 s           | 60 s    | both agree                                              |
//! | TCP ESTABLISHED             | 5 days        | 6 h            | 6 h     | bounded tables; Linux keepalive (2 h) refreshes live idle flows well within 6 h |
//! | TCP FIN_WAIT, LAST_ACK      | 120 s, 30 s   | 10 s           | 10 s    | Cilium's close timeout; the peer's answer is imminent   |
//! | TCP CLOSE_WAIT              | 60 s          | 10 s           | 60 s    | Linux; a half-closed stream may still carry data        |
//! | TCP TIME_WAIT               | 120 s         | 10 s           | 120 s   | Linux (2 MSL): late segments still find their NAT       |
//! | TCP CLOSE (after RST)       | 10 s          | 10 s           | 10 s    | both agree                                              |
//! | UDP unreplied               | 30 s          | 60 s           | 30 s    | Linux; one-shot datagrams (DNS) free their entry soon   |
//! | UDP assured (reply seen)    | 120 s         | 60 s           | 120 s   | Linux `udp_timeout_stream`                              |
//! | ICMP                        | 30 s          | 60 s           | 30 s    | Linux                                                   |
//! | other protocols             | 600 s         | 60 s           | 60 s    | Cilium; unknown protocols should not pin table space    |
//!
//! All of them are fields of [`Timeouts`], passed in [`Config`].

use core::net::IpAddr;

use crate::flow::{FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::{Duration, Instant};

/// Slots in one index bucket (one 64-byte cache line).
pub const BUCKET_SLOTS: usize = 8;
/// Buckets in a probe window: the home bucket and the next one.
pub const PROBE_BUCKETS: usize = 2;
/// The most slots a lookup inspects.
pub const MAX_PROBE: usize = BUCKET_SLOTS * PROBE_BUCKETS;
/// Entries examined under the rotating hand when an insert must free an entry.
pub const CLOCK_SCAN: usize = 8;

/// A link value meaning "empty slot".
const EMPTY: u32 = u32::MAX;
/// The largest number of entries a table can have (links are `index * 2 + dir`).
pub const MAX_ENTRIES: usize = (u32::MAX >> 1) as usize;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// The number of index buckets recommended for `entries` entries (see the module
/// documentation).
pub const fn buckets_for(entries: usize) -> usize {
    if entries < 2 {
        1
    } else {
        entries - entries / 4
    }
}

/// One cache line of the index: [`BUCKET_SLOTS`] (tag, link) slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C, align(64))]
pub struct Bucket {
    tags: [u32; BUCKET_SLOTS],
    links: [u32; BUCKET_SLOTS],
}

impl Bucket {
    /// A bucket with every slot empty (for static storage).
    pub const EMPTY: Bucket = Bucket {
        tags: [0; BUCKET_SLOTS],
        links: [EMPTY; BUCKET_SLOTS],
    };

    /// A bitmask of the slots whose tag is `tag`.
    #[inline]
    fn matches(&self, tag: u32) -> u32 {
        let mut m = 0;
        for (s, &t) in self.tags.iter().enumerate() {
            m |= u32::from(t == tag) << s;
        }
        m
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::EMPTY
    }
}

/// The direction of a packet relative to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Direction {
    /// The direction of the connection's first packet.
    Original = 0,
    /// The answering direction.
    Reply = 1,
}

impl Direction {
    /// The other direction.
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Where a translated address points: an address and a port (ignored for ICMP DNAT;
/// for ICMP SNAT it is the new echo identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NatTarget {
    /// The new address.
    pub addr: IpAddr,
    /// The new port (or ICMP identifier).
    pub port: u16,
}

/// The translation applied to a connection's original direction. The reply direction
/// gets the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Nat {
    /// Destination NAT: the original destination (a ClusterIP or NodePort) becomes this
    /// backend.
    pub dnat: Option<NatTarget>,
    /// Source NAT: the original source becomes this node address and port
    /// (NodePort with `externalTrafficPolicy: Cluster`, and hairpin traffic).
    pub snat: Option<NatTarget>,
}

impl Nat {
    /// No translation.
    pub const NONE: Nat = Nat {
        dnat: None,
        snat: None,
    };

    /// The reply tuple of a connection whose original tuple is `original`: the original
    /// reversed, with the translated addresses in place. `None` if a target's address
    /// family differs from the key's.
    pub fn reply_key(&self, original: &FlowKey) -> Option<FlowKey> {
        let same_family = |a: IpAddr| a.is_ipv4() == original.src.is_ipv4();
        let icmp = original.protocol == PROTO_ICMP;
        let mut r = original.reversed();
        if let Some(d) = self.dnat {
            if !same_family(d.addr) {
                return None;
            }
            r.src = d.addr;
            if !icmp {
                r.src_port = d.port;
            }
        }
        if let Some(s) = self.snat {
            if !same_family(s.addr) {
                return None;
            }
            r.dst = s.addr;
            if icmp {
                // The echo identifier is both "ports".
                r.src_port = s.port;
            }
            r.dst_port = s.port;
        }
        Some(r)
    }
}

/// TCP connection state (after Linux nf_conntrack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TcpState {
    /// Created, no packet tracked yet.
    None,
    /// SYN seen from the originator.
    SynSent,
    /// SYN seen from both sides (simultaneous open).
    SynSent2,
    /// SYN-ACK seen from the responder.
    SynRecv,
    /// Handshake completed.
    Established,
    /// One side sent a FIN.
    FinWait,
    /// The FIN was acknowledged by the other side, which may still send.
    CloseWait,
    /// Both sides sent a FIN; waiting for the last ACK.
    LastAck,
    /// Closed normally; late segments still find the connection.
    TimeWait,
    /// Reset.
    Close,
}

/// UDP connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UdpState {
    /// Only the original direction has been seen.
    Unreplied,
    /// A reply was seen.
    Assured,
}

/// The protocol state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConnState {
    /// TCP.
    Tcp(TcpState),
    /// UDP.
    Udp(UdpState),
    /// ICMP (echo): whether a reply was seen.
    Icmp {
        /// A reply was seen.
        replied: bool,
    },
    /// Any other protocol: whether a reply was seen.
    Other {
        /// A reply was seen.
        replied: bool,
    },
}

/// Eviction classes, cheapest to lose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Expired,
    Closing,
    NotEstablished,
    Established,
}

impl ConnState {
    fn initial(protocol: u8) -> ConnState {
        match protocol {
            PROTO_TCP => ConnState::Tcp(TcpState::None),
            PROTO_UDP => ConnState::Udp(UdpState::Unreplied),
            PROTO_ICMP => ConnState::Icmp { replied: false },
            _ => ConnState::Other { replied: false },
        }
    }

    /// Whether the connection is established (TCP ESTABLISHED, UDP assured, another
    /// non-ICMP protocol with a reply): the class eviction protects.
    pub fn is_established(&self) -> bool {
        matches!(
            self,
            ConnState::Tcp(TcpState::Established)
                | ConnState::Udp(UdpState::Assured)
                | ConnState::Other { replied: true }
        )
    }

    /// Whether the connection is closing or closed (TCP FIN_WAIT and later, or RST).
    pub fn is_closing(&self) -> bool {
        matches!(
            self,
            ConnState::Tcp(
                TcpState::FinWait
                    | TcpState::CloseWait
                    | TcpState::LastAck
                    | TcpState::TimeWait
                    | TcpState::Close
            )
        )
    }

    fn class(&self) -> Class {
        if self.is_established() {
            Class::Established
        } else if self.is_closing() {
            Class::Closing
        } else {
            Class::NotEstablished
        }
    }

    /// How long a connection in this state lives without a packet.
    pub fn timeout(&self, t: &Timeouts) -> Duration {
        match *self {
            ConnState::Tcp(s) => match s {
                TcpState::None | TcpState::SynSent | TcpState::SynSent2 => t.tcp_syn_sent,
                TcpState::SynRecv => t.tcp_syn_recv,
                TcpState::Established => t.tcp_established,
                TcpState::FinWait => t.tcp_fin_wait,
                TcpState::CloseWait => t.tcp_close_wait,
                TcpState::LastAck => t.tcp_last_ack,
                TcpState::TimeWait => t.tcp_time_wait,
                TcpState::Close => t.tcp_close,
            },
            ConnState::Udp(UdpState::Unreplied) => t.udp_unreplied,
            ConnState::Udp(UdpState::Assured) => t.udp_assured,
            ConnState::Icmp { .. } => t.icmp,
            ConnState::Other { replied: false } => t.other_unreplied,
            ConnState::Other { replied: true } => t.other_replied,
        }
    }
}

/// Idle timeouts per state (see the table in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Timeouts {
    /// TCP NONE, SYN_SENT, SYN_SENT2.
    pub tcp_syn_sent: Duration,
    /// TCP SYN_RECV.
    pub tcp_syn_recv: Duration,
    /// TCP ESTABLISHED.
    pub tcp_established: Duration,
    /// TCP FIN_WAIT.
    pub tcp_fin_wait: Duration,
    /// TCP CLOSE_WAIT.
    pub tcp_close_wait: Duration,
    /// TCP LAST_ACK.
    pub tcp_last_ack: Duration,
    /// TCP TIME_WAIT.
    pub tcp_time_wait: Duration,
    /// TCP CLOSE (after RST).
    pub tcp_close: Duration,
    /// UDP before a reply.
    pub udp_unreplied: Duration,
    /// UDP after a reply.
    pub udp_assured: Duration,
    /// ICMP.
    pub icmp: Duration,
    /// Other protocols before a reply.
    pub other_unreplied: Duration,
    /// Other protocols after a reply.
    pub other_replied: Duration,
}

impl Timeouts {
    /// podwire's defaults (see the module documentation).
    pub const DEFAULT: Timeouts = Timeouts {
        tcp_syn_sent: Duration::from_secs(60),
        tcp_syn_recv: Duration::from_secs(60),
        tcp_established: Duration::from_secs(6 * 3600),
        tcp_fin_wait: Duration::from_secs(10),
        tcp_close_wait: Duration::from_secs(60),
        tcp_last_ack: Duration::from_secs(10),
        tcp_time_wait: Duration::from_secs(120),
        tcp_close: Duration::from_secs(10),
        udp_unreplied: Duration::from_secs(30),
        udp_assured: Duration::from_secs(120),
        icmp: Duration::from_secs(30),
        other_unreplied: Duration::from_secs(60),
        other_replied: Duration::from_secs(60),
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::DEFAULT
    }
}

/// Table configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Seed of the flow hash (the same on every node is fine; it only places keys).
    pub seed: u64,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Whether an insert may evict an established connection when nothing else can go
    /// (`true`, the default), or must fail with [`InsertError::Full`] (Linux).
    pub evict_established: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0x706f_6477_6972_6563, // "podwirec"
            timeouts: Timeouts::DEFAULT,
            evict_established: true,
        }
    }
}

/// Event counters. They only grow (wrapping at `u64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Connections inserted.
    pub inserts: u64,
    /// Lookups that found a live connection.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Live connections evicted to make room.
    pub evictions: u64,
    /// Inserts refused because no room could be made ([`InsertError::Full`]).
    pub drops: u64,
    /// Connections removed because their timeout passed.
    pub expirations: u64,
    /// Packets the state machine found invalid ([`UpdateError::Invalid`]).
    pub invalid: u64,
}

/// A handle to a connection, valid until the connection is removed (by
/// [`ConnTrack::remove`], expiry, or eviction by a later insert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EntryId(u32);

impl EntryId {
    /// The entry's position in the caller's entry storage.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

const NAT_DNAT: u8 = 1;
const NAT_SNAT: u8 = 2;

/// One tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Entry {
    original: FlowKey,
    reply: FlowKey,
    state: ConnState,
    /// Bits: FIN seen from original (1), from reply (2); the last FIN came from the
    /// reply direction (4).
    fins: u8,
    nat: u8,
    live: bool,
    /// An opaque verdict the datapath caches per connection (e.g. a policy rule id).
    pub verdict: u64,
    /// The policy epoch `verdict` was computed in; the datapath re-evaluates the
    /// verdict when policy has changed since.
    pub policy_epoch: u32,
    /// An opaque per-direction next-hop cache for the datapath (0: empty).
    pub route_cache: [u64; 2],
    /// The route epoch `route_cache` was filled in; the datapath ignores the cache
    /// when routes have changed since.
    pub route_epoch: u32,
    /// An opaque service id the datapath caches per connection.
    pub service: u16,
    next_free: u32,
    last_seen: Instant,
    expires: Instant,
    packets: [u64; 2],
    bytes: [u64; 2],
}

const NO_KEY: FlowKey = FlowKey {
    src: IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
    src_port: 0,
    dst_port: 0,
    protocol: 0,
    zone: 0,
};

impl Entry {
    /// An unused entry (for static storage).
    pub const EMPTY: Entry = Entry {
        original: NO_KEY,
        reply: NO_KEY,
        state: ConnState::Other { replied: false },
        fins: 0,
        nat: 0,
        live: false,
        verdict: 0,
        policy_epoch: 0,
        route_cache: [0; 2],
        route_epoch: 0,
        service: 0,
        next_free: EMPTY,
        last_seen: Instant::ZERO,
        expires: Instant::ZERO,
        packets: [0; 2],
        bytes: [0; 2],
    };

    /// The tuple of the connection's first packet.
    pub fn original(&self) -> &FlowKey {
        &self.original
    }

    /// The tuple replies carry on the wire (after NAT).
    pub fn reply(&self) -> &FlowKey {
        &self.reply
    }

    /// The tuple of packets travelling in `dir`.
    pub fn key(&self, dir: Direction) -> &FlowKey {
        match dir {
            Direction::Original => &self.original,
            Direction::Reply => &self.reply,
        }
    }

    /// The tuple a packet travelling in `dir` must carry after translation (equal to
    /// [`Entry::key`] when there is no NAT). With `nat::Rewrite::between(key, translated)`
    /// this gives the packet rewrite.
    pub fn translated(&self, dir: Direction) -> FlowKey {
        match dir {
            Direction::Original => self.reply.reversed(),
            Direction::Reply => self.original.reversed(),
        }
    }

    /// The translation of the original direction.
    pub fn nat(&self) -> Nat {
        Nat {
            dnat: (self.nat & NAT_DNAT != 0).then_some(NatTarget {
                addr: self.reply.src,
                port: self.reply.src_port,
            }),
            snat: (self.nat & NAT_SNAT != 0).then_some(NatTarget {
                addr: self.reply.dst,
                port: self.reply.dst_port,
            }),
        }
    }

    /// Whether any translation applies.
    pub fn has_nat(&self) -> bool {
        self.nat != 0
    }

    /// The protocol state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When the last packet was tracked.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// When the connection expires unless another packet arrives.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Packets tracked in `dir`.
    pub fn packets(&self, dir: Direction) -> u64 {
        self.packets[dir as usize]
    }

    /// Bytes tracked in `dir`.
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir as usize]
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.expires <= now
    }

    fn class(&self, now: Instant) -> Class {
        if self.is_expired(now) {
            Class::Expired
        } else {
            self.state.class()
        }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry::EMPTY
    }
}

/// What is wrong with the storage given to [`ConnTrack::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// No index buckets.
    NoBuckets,
    /// No entries.
    NoEntries,
    /// More than [`MAX_ENTRIES`] entries, or more than `u32::MAX` buckets.
    TooLarge,
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InsertError {
    /// A live connection already has the original or the reply tuple (for NAT port
    /// selection: choose another port).
    Exists,
    /// No room could be made without evicting an established connection
    /// ([`Config::evict_established`] is `false`).
    Full,
    /// The NAT targets are of another address family than the key, or the reply tuple
    /// equals the original (a connection to itself through the same ports).
    BadNat,
}

/// Why a packet could not be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UpdateError {
    /// The handle does not name a live connection.
    NoEntry,
    /// The TCP state machine rejects the packet (e.g. a SYN-ACK or FIN as the first
    /// packet); nothing was changed.
    Invalid,
}

/// The connection tracking table over caller-owned storage.
#[derive(Debug)]
pub struct ConnTrack<'a> {
    buckets: &'a mut [Bucket],
    entries: &'a mut [Entry],
    config: Config,
    free: u32,
    len: usize,
    gc_hand: usize,
    clock_hand: usize,
    counters: Counters,
}

/// A live slot found by a probe.
#[derive(Clone, Copy)]
struct Found {
    index: u32,
    dir: Direction,
}

fn saturating_after(now: Instant, d: Duration) -> Instant {
    let d = i64::try_from(d.total_micros()).unwrap_or(i64::MAX);
    Instant::from_micros(now.total_micros().saturating_add(d))
}

impl<'a> ConnTrack<'a> {
    /// A table over `buckets` (the index; see [`buckets_for`]) and `entries`. Both are
    /// cleared.
    pub fn new(
        buckets: &'a mut [Bucket],
        entries: &'a mut [Entry],
        config: Config,
    ) -> Result<Self, StorageError> {
        if buckets.is_empty() {
            return Err(StorageError::NoBuckets);
        }
        if entries.is_empty() {
            return Err(StorageError::NoEntries);
        }
        if entries.len() > MAX_ENTRIES || u32::try_from(buckets.len()).is_err() {
            return Err(StorageError::TooLarge);
        }
        buckets.fill(Bucket::EMPTY);
        let n = entries.len();
        for (i, e) in entries.iter_mut().enumerate() {
            *e = Entry::EMPTY;
            e.next_free = if i + 1 < n { (i + 1) as u32 } else { EMPTY };
        }
        Ok(ConnTrack {
            buckets,
            entries,
            config,
            free: 0,
            len: 0,
            gc_hand: 0,
            clock_hand: 0,
            counters: Counters::default(),
        })
    }

    /// The most connections the table holds.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Connections held now (including expired ones not yet collected).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The event counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        // Lemire's multiply-shift range reduction of the low 32 bits.
        ((u64::from(h as u32) * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn window(&self, h: u64) -> impl Iterator<Item = usize> {
        let nb = self.buckets.len();
        let home = self.home(h);
        (0..PROBE_BUCKETS.min(nb)).map(move |w| {
            let b = home + w;
            if b >= nb {
                b - nb
            } else {
                b
            }
        })
    }

    /// The live slot holding `key` (hash `h`), expired or not.
    #[inline]
    fn find(&self, key: &FlowKey, h: u64) -> Option<Found> {
        let tag = (h >> 32) as u32;
        for b in self.window(h) {
            let bucket = &self.buckets[b];
            let mut m = bucket.matches(tag);
            while m != 0 {
                let s = m.trailing_zeros() as usize;
                m &= m - 1;
                let link = bucket.links[s];
                if link == EMPTY {
                    continue;
                }
                let index = link >> 1;
                let dir = if link & 1 == 0 {
                    Direction::Original
                } else {
                    Direction::Reply
                };
                if let Some(e) = self.entries.get(index as usize) {
                    if e.key(dir) == key {
                        return Some(Found { index, dir });
                    }
                }
            }
        }
        None
    }

    /// Finds the connection a packet with tuple `key` belongs to, and the packet's
    /// direction. Counts a hit or a miss; an expired connection is removed and
    /// reported as a miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Instant) -> Option<(EntryId, Direction)> {
        let h = key.hash(self.config.seed);
        match self.find(key, h) {
            Some(f) if !self.entries[f.index as usize].is_expired(now) => {
                self.counters.hits = self.counters.hits.wrapping_add(1);
                Some((EntryId(f.index), f.dir))
            }
            Some(f) => {
                self.remove_index(f.index);
                self.counters.expirations = self.counters.expirations.wrapping_add(1);
                self.counters.misses = self.counters.misses.wrapping_add(1);
                None
            }
            None => {
                self.counters.misses = self.counters.misses.wrapping_add(1);
                None
            }
        }
    }

    /// Reads the memory a [`ConnTrack::lookup`] of `key` will read — the home bucket,
    /// and the entry of the first slot whose tag matches — and returns a value made
    /// of what it read, for the caller to keep (so that the reads are not optimised
    /// away). Safe Rust has no prefetch instruction: a burst datapath calls this for
    /// every packet of a burst before processing any, so the cache misses of
    /// independent packets overlap in an out-of-order core instead of being waited
    /// for one after the other. Changes nothing and counts nothing.
    #[inline]
    pub fn touch(&self, key: &FlowKey) -> u64 {
        let h = key.hash(self.config.seed);
        let Some(bucket) = self.buckets.get(self.home(h)) else {
            return 0;
        };
        let m = bucket.matches((h >> 32) as u32);
        let Some(&link) = bucket.links.get(m.trailing_zeros() as usize) else {
            return u64::from(bucket.links[0]);
        };
        match self.entries.get((link >> 1) as usize) {
            Some(e) => e.expires.total_micros() as u64 ^ u64::from(e.original.src_port),
            None => u64::from(link),
        }
    }

    /// Whether a live connection uses `key` as its original or reply tuple, without
    /// counting or removing anything (for choosing a free SNAT port).
    pub fn contains(&self, key: &FlowKey, now: Instant) -> bool {
        let h = key.hash(self.config.seed);
        self.find(key, h)
            .is_some_and(|f| !self.entries[f.index as usize].is_expired(now))
    }

    /// The connection behind a handle.
    pub fn entry(&self, id: EntryId) -> Option<&Entry> {
        self.entries.get(id.index()).filter(|e| e.live)
    }

    /// The connection behind a handle, to set its cached `verdict` and `service`.
    pub fn entry_mut(&mut self, id: EntryId) -> Option<&mut Entry> {
        self.entries.get_mut(id.index()).filter(|e| e.live)
    }

    /// The live connections (including expired ones not yet collected).
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live)
            .map(|(i, e)| (EntryId(i as u32), e))
    }

    /// Tracks a new connection whose first packet has tuple `original`, translated by
    /// `nat`. The connection starts in its protocol's initial state (TCP NONE, UDP
    /// unreplied); pass its first packet to [`ConnTrack::update`] like any other.
    ///
    /// Makes room only when needed, as described in the module documentation (expired
    /// entries of the two probe windows, displacement, then eviction).
    pub fn insert(
        &mut self,
        original: FlowKey,
        nat: Nat,
        now: Instant,
    ) -> Result<EntryId, InsertError> {
        let reply = nat.reply_key(&original).ok_or(InsertError::BadNat)?;
        if reply == original {
            return Err(InsertError::BadNat);
        }
        let seed = self.config.seed;
        let (ho, hr) = (original.hash(seed), reply.hash(seed));
        for (k, h) in [(&original, ho), (&reply, hr)] {
            if let Some(f) = self.find(k, h) {
                if self.entries[f.index as usize].is_expired(now) {
                    self.expire_index(f.index);
                } else {
                    return Err(InsertError::Exists);
                }
            }
        }
        let slot_o = self.make_slot(ho, None, now)?;
        let slot_r = self.make_slot(hr, Some(slot_o), now)?;
        if self.free == EMPTY {
            self.purge_window(ho, now);
            self.purge_window(hr, now);
        }
        if self.free == EMPTY {
            let victim = self
                .choose_victim([ho, hr], true, now)
                .ok_or_else(|| self.drop_insert())?;
            self.evict(victim, now);
        }
        let index = self.free;
        let Some(e) = self.entries.get_mut(index as usize) else {
            // Unreachable: an eviction always frees an entry.
            return Err(self.drop_insert());
        };
        self.free = e.next_free;
        let timeout = ConnState::initial(original.protocol).timeout(&self.config.timeouts);
        *e = Entry {
            original,
            reply,
            state: ConnState::initial(original.protocol),
            fins: 0,
            nat: if nat.dnat.is_some() { NAT_DNAT } else { 0 }
                | if nat.snat.is_some() { NAT_SNAT } else { 0 },
            live: true,
            verdict: 0,
            policy_epoch: 0,
            route_cache: [0; 2],
            route_epoch: 0,
            service: 0,
            next_free: EMPTY,
            last_seen: now,
            expires: saturating_after(now, timeout),
            packets: [0; 2],
            bytes: [0; 2],
        };
        let (bo, so) = slot_o;
        self.buckets[bo].tags[so] = (ho >> 32) as u32;
        self.buckets[bo].links[so] = index << 1;
        let (br, sr) = slot_r;
        self.buckets[br].tags[sr] = (hr >> 32) as u32;
        self.buckets[br].links[sr] = index << 1 | 1;
        self.len += 1;
        self.counters.inserts = self.counters.inserts.wrapping_add(1);
        Ok(EntryId(index))
    }

    fn drop_insert(&mut self) -> InsertError {
        self.counters.drops = self.counters.drops.wrapping_add(1);
        InsertError::Full
    }

    /// A free slot in the window of `h` other than `except`, evicting if needed.
    fn make_slot(
        &mut self,
        h: u64,
        except: Option<(usize, usize)>,
        now: Instant,
    ) -> Result<(usize, usize), InsertError> {
        if let Some(s) = self.free_slot(h, except) {
            return Ok(s);
        }
        self.purge_window(h, now);
        if let Some(s) = self.free_slot(h, except) {
            return Ok(s);
        }
        if let Some(s) = self.relocate(h, except) {
            return Ok(s);
        }
        let victim = self
            .choose_victim([h, h], false, now)
            .ok_or_else(|| self.drop_insert())?;
        self.evict(victim, now);
        self.free_slot(h, except).ok_or_else(|| self.drop_insert())
    }

    fn free_slot(&self, h: u64, except: Option<(usize, usize)>) -> Option<(usize, usize)> {
        for b in self.window(h) {
            for (s, &link) in self.buckets[b].links.iter().enumerate() {
                if link == EMPTY && except != Some((b, s)) {
                    return Some((b, s));
                }
            }
        }
        None
    }

    /// Frees a slot in the full window of `h` by moving one of its slots to a free
    /// slot of that slot's own window outside this one (one step of cuckoo-style
    /// displacement; at most [`MAX_PROBE`] key hashes, only on this rare path).
    fn relocate(&mut self, h: u64, except: Option<(usize, usize)>) -> Option<(usize, usize)> {
        let nb = self.buckets.len();
        let home = self.home(h);
        let in_window = |b: usize| (b + nb - home) % nb < PROBE_BUCKETS.min(nb);
        let seed = self.config.seed;
        for w in 0..PROBE_BUCKETS.min(nb) {
            let b = (home + w) % nb;
            for s in 0..BUCKET_SLOTS {
                let link = self.buckets[b].links[s];
                if link == EMPTY || except == Some((b, s)) {
                    continue;
                }
                let e = &self.entries[(link >> 1) as usize];
                let key = if link & 1 == 0 { &e.original } else { &e.reply };
                let hk = key.hash(seed);
                let target = self.window(hk).find_map(|b2| {
                    if in_window(b2) {
                        return None;
                    }
                    // Not into the slot an insert has already reserved.
                    let s2 = (0..BUCKET_SLOTS).find(|&s2| {
                        self.buckets[b2].links[s2] == EMPTY && except != Some((b2, s2))
                    })?;
                    Some((b2, s2))
                });
                if let Some((b2, s2)) = target {
                    let tag = self.buckets[b].tags[s];
                    self.buckets[b2].tags[s2] = tag;
                    self.buckets[b2].links[s2] = link;
                    self.buckets[b].links[s] = EMPTY;
                    self.buckets[b].tags[s] = 0;
                    return Some((b, s));
                }
            }
        }
        None
    }

    /// Removes the expired connections linked from the window of `h`.
    fn purge_window(&mut self, h: u64, now: Instant) {
        let nb = self.buckets.len();
        let home = self.home(h);
        for w in 0..PROBE_BUCKETS.min(nb) {
            let b = (home + w) % nb;
            for s in 0..BUCKET_SLOTS {
                let link = self.buckets[b].links[s];
                if link != EMPTY && self.entries[(link >> 1) as usize].is_expired(now) {
                    self.expire_index(link >> 1);
                }
            }
        }
    }

    /// The best victim among the connections linked from the windows of `hashes`
    /// and, with `clock`, [`CLOCK_SCAN`] entries under the rotating hand.
    fn choose_victim(&mut self, hashes: [u64; 2], clock: bool, now: Instant) -> Option<u32> {
        let mut best: Option<(Class, Instant, u32)> = None;
        let evict_established = self.config.evict_established;
        let mut consider = |index: u32, e: &Entry| {
            if !e.live {
                return;
            }
            let class = e.class(now);
            if class == Class::Established && !evict_established {
                return;
            }
            let rank = (class, e.last_seen, index);
            if best.is_none_or(|b| rank < b) {
                best = Some(rank);
            }
        };
        for h in hashes {
            for b in self.window(h) {
                for &link in &self.buckets[b].links {
                    if link != EMPTY {
                        let index = link >> 1;
                        consider(index, &self.entries[index as usize]);
                    }
                }
            }
        }
        if clock {
            let n = self.entries.len();
            for _ in 0..CLOCK_SCAN.min(n) {
                let i = self.clock_hand;
                self.clock_hand = if i + 1 >= n { 0 } else { i + 1 };
                consider(i as u32, &self.entries[i]);
            }
        }
        best.map(|(_, _, i)| i)
    }

    fn evict(&mut self, index: u32, now: Instant) {
        if self.entries[index as usize].is_expired(now) {
            self.counters.expirations = self.counters.expirations.wrapping_add(1);
        } else {
            self.counters.evictions = self.counters.evictions.wrapping_add(1);
        }
        self.remove_index(index);
    }

    fn expire_index(&mut self, index: u32) {
        self.counters.expirations = self.counters.expirations.wrapping_add(1);
        self.remove_index(index);
    }

    /// Unlinks and frees a live entry.
    fn remove_index(&mut self, index: u32) {
        let Some(e) = self.entries.get(index as usize) else {
            return;
        };
        if !e.live {
            return;
        }
        let seed = self.config.seed;
        let keys = [(e.original, 0), (e.reply, 1)];
        for (key, dir) in keys {
            let h = key.hash(seed);
            let link = index << 1 | dir;
            let nb = self.buckets.len();
            let home = self.home(h);
            'window: for w in 0..PROBE_BUCKETS.min(nb) {
                let bucket = &mut self.buckets[(home + w) % nb];
                for s in 0..BUCKET_SLOTS {
                    if bucket.links[s] == link {
                        bucket.links[s] = EMPTY;
                        bucket.tags[s] = 0;
                        break 'window;
                    }
                }
            }
        }
        let e = &mut self.entries[index as usize];
        e.live = false;
        e.next_free = self.free;
        self.free = index;
        self.len -= 1;
    }

    /// Removes a connection. Returns whether the handle named a live one.
    pub fn remove(&mut self, id: EntryId) -> bool {
        let live = self.entry(id).is_some();
        self.remove_index(id.0);
        live
    }

    /// Garbage collection step: examines up to `budget` entries (continuing where the
    /// previous call stopped, wrapping around) and removes the expired ones. Returns
    /// how many were removed.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let n = self.entries.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let i = self.gc_hand;
            self.gc_hand = if i + 1 >= n { 0 } else { i + 1 };
            let e = &self.entries[i];
            if e.live && e.is_expired(now) {
                self.expire_index(i as u32);
                removed += 1;
            }
        }
        removed
    }

    /// Tracks one packet of a connection found by [`ConnTrack::lookup`] (or just
    /// inserted): advances the protocol state from `dir` and, for TCP, `tcp_flags`
    /// (the flags byte: [`TCP_FIN`], [`TCP_SYN`], [`TCP_RST`], [`TCP_ACK`]; ignored for
    /// other protocols), counts the packet and its `len` bytes, and restarts the
    /// timeout for the new state. Returns the new state.
    pub fn update(
        &mut self,
        id: EntryId,
        dir: Direction,
        tcp_flags: u8,
        len: usize,
        now: Instant,
    ) -> Result<ConnState, UpdateError> {
        let Some(e) = self.entries.get_mut(id.index()).filter(|e| e.live) else {
            return Err(UpdateError::NoEntry);
        };
        let d = dir as usize;
        // The fast path of almost every packet: an established TCP connection's
        // segment without SYN, FIN or RST keeps its state and FIN bits.
        if e.state == ConnState::Tcp(TcpState::Established)
            && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        {
            e.packets[d] = e.packets[d].wrapping_add(1);
            e.bytes[d] = e.bytes[d].wrapping_add(len as u64);
            e.last_seen = now;
            e.expires = saturating_after(now, self.config.timeouts.tcp_established);
            return Ok(e.state);
        }
        let state = match e.state {
            ConnState::Tcp(s) => match tcp_next(s, e.fins, dir, tcp_flags) {
                Some((s, fins)) => {
                    e.fins = fins;
                    ConnState::Tcp(s)
                }
                None => {
                    self.counters.invalid = self.counters.invalid.wrapping_add(1);
                    return Err(UpdateError::Invalid);
                }
            },
            ConnState::Udp(_) if dir == Direction::Reply => ConnState::Udp(UdpState::Assured),
            ConnState::Icmp { .. } if dir == Direction::Reply => ConnState::Icmp { replied: true },
            ConnState::Other { .. } if dir == Direction::Reply => {
                ConnState::Other { replied: true }
            }
            s => s,
        };
        e.state = state;
        e.packets[d] = e.packets[d].wrapping_add(1);
        e.bytes[d] = e.bytes[d].wrapping_add(len as u64);
        e.last_seen = now;
        e.expires = saturating_after(now, state.timeout(&self.config.timeouts));
        Ok(state)
    }
}

/// The simplified nf_conntrack TCP transition: the new state and FIN bits, or `None`
/// for an invalid packet.
fn tcp_next(s: TcpState, fins: u8, dir: Direction, flags: u8) -> Option<(TcpState, u8)> {
    use TcpState::*;
    const LAST_FIN_REPLY: u8 = 4;
    let (rst, syn, fin, ack) = (
        flags & TCP_RST != 0,
        flags & TCP_SYN != 0,
        flags & TCP_FIN != 0,
        flags & TCP_ACK != 0,
    );
    let orig = dir == Direction::Original;
    let other_fin = fins & dir.opposite().bit() != 0;
    let last_fin_from_other = {
        let last_reply = fins & LAST_FIN_REPLY != 0;
        // The last FIN came from the opposite direction of `dir`.
        (fins & 3 != 0) && (last_reply == orig)
    };
    let next = if rst {
        if s == None {
            return Option::None;
        }
        Close
    } else if syn && !ack {
        match (s, orig) {
            (None | Close | TimeWait, true) => return Some((SynSent, 0)),
            (SynSent, false) => SynSent2,
            (None, false) => return Option::None,
            _ => s,
        }
    } else if syn {
        // SYN-ACK.
        match (s, orig) {
            (SynSent | SynSent2 | SynRecv, false) => SynRecv,
            (SynSent2, true) => SynRecv,
            (None, _) => return Option::None,
            _ => s,
        }
    } else if fin {
        let fins_now = fins | dir.bit();
        let fins_now = if orig {
            fins_now & !LAST_FIN_REPLY
        } else {
            fins_now | LAST_FIN_REPLY
        };
        match s {
            None | SynSent | SynSent2 => return Option::None,
            SynRecv | Established => return Some((FinWait, fins_now)),
            FinWait | CloseWait if other_fin && fins & dir.bit() == 0 => {
                return Some((LastAck, fins_now))
            }
            _ => s,
        }
    } else if ack {
        match (s, orig) {
            (None, true) => Established, // loose pickup of a mid-stream connection
            (None, false) => return Option::None,
            (SynRecv, true) => Established,
            (FinWait, _) if other_fin => CloseWait,
            (LastAck, _) if last_fin_from_other => TimeWait,
            _ => s,
        }
    } else {
        if s == None {
            return Option::None;
        }
        s
    };
    Some((next, fins))
}

#[cfg(test)]
mod tests;

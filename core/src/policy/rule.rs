//! The compiled rule shapes: identities, port ranges, rules and per-endpoint rule sets.
//!
//! Design note: a Kubernetes NetworkPolicy talks about label selectors; the datapath
//! must not. The control plane resolves every selector to a set of *identities* (one
//! per distinct (namespace, labels, named ports) of pods, as Cilium does) and every
//! named port to numbers, so a compiled rule is just "peer identity in a sorted set, or
//! peer address in a set of CIDR blocks, and (protocol, port) in a list of ranges". The
//! rules of one endpoint and direction are contiguous, so evaluating a new flow walks one
//! short slice. Rules refer to their peers and ports by [`Span`]s into shared arrays
//! instead of holding them, so every table is a flat caller-owned slice.

use super::cidr::Cidr;

/// A security identity: the compiled form of a pod's (namespace, labels, named ports).
/// Values from [`Identity::CIDR_BASE`] up are reserved for the policy table's own CIDR
/// classes; pod identities must be below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Identity(pub u32);

impl Identity {
    /// The first identity reserved for CIDR classes (see the `table` module).
    pub const CIDR_BASE: u32 = 0x8000_0000;

    /// True for an identity a shell may give a pod (below [`Identity::CIDR_BASE`]).
    #[inline]
    pub fn is_pod_identity(self) -> bool {
        self.0 < Self::CIDR_BASE
    }
}

/// A NetworkPolicy, by a dense index the control plane assigns (it keeps the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PolicyId(pub u16);

/// The protocol a port range applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PortProtocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
    /// Any IP protocol (the port of a protocol without ports is 0).
    Any,
}

impl PortProtocol {
    /// True when this protocol filter admits IP protocol number `protocol`.
    #[inline]
    pub fn admits(self, protocol: u8) -> bool {
        match self {
            PortProtocol::Tcp => protocol == crate::flow::PROTO_TCP,
            PortProtocol::Udp => protocol == crate::flow::PROTO_UDP,
            PortProtocol::Sctp => protocol == crate::flow::PROTO_SCTP,
            PortProtocol::Any => true,
        }
    }
}

/// An inclusive range of destination ports of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortRange {
    /// The protocol the range applies to.
    pub protocol: PortProtocol,
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (inclusive; `first..=last`).
    pub last: u16,
}

impl PortRange {
    /// Every port of every protocol.
    pub const ANY: PortRange = PortRange {
        protocol: PortProtocol::Any,
        first: 0,
        last: u16::MAX,
    };

    /// A single port of one protocol.
    pub const fn single(protocol: PortProtocol, port: u16) -> PortRange {
        PortRange {
            protocol,
            first: port,
            last: port,
        }
    }

    /// True when the range admits destination `port` of IP protocol `protocol`.
    #[inline]
    pub fn admits(&self, port: u16, protocol: u8) -> bool {
        self.first <= port && port <= self.last && self.protocol.admits(protocol)
    }
}

/// A range of entries in one of the table's shared arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Span {
    /// Index of the first entry.
    pub start: u32,
    /// Number of entries.
    pub len: u32,
}

impl Span {
    /// The empty span.
    pub const EMPTY: Span = Span { start: 0, len: 0 };

    /// The entries of `items` this span covers, or an empty slice when it is out of
    /// range (never panics).
    #[inline]
    pub fn of<T>(self, items: &[T]) -> &[T] {
        let start = self.start as usize;
        items
            .get(start..start.saturating_add(self.len as usize))
            .unwrap_or(&[])
    }
}

/// A rule matches every peer, pods and non-pod addresses alike.
pub(crate) const FLAG_ANY_PEER: u8 = 1;
/// A rule matches every peer that has a pod identity.
pub(crate) const FLAG_ANY_POD: u8 = 2;
/// A rule's peer set holds CIDR classes (the peer's CIDR class must be looked up).
pub(crate) const FLAG_HAS_CIDR: u8 = 4;
/// A rule additionally requires the peer's pod identity to be in its filter set.
pub(crate) const FLAG_FILTERED: u8 = 8;

/// One compiled rule: peers × ports, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rule {
    /// The policy the rule belongs to.
    pub policy: PolicyId,
    /// The rule's index among the policy's rules of its direction.
    pub index: u16,
    pub(crate) flags: u8,
    /// The peer set in the peer array (see [`PeerSet`]).
    pub(crate) peers: PeerSet,
    /// The filter set in the peer array (only its pod identities count).
    pub(crate) filter: PeerSet,
    /// How many of `inline_ports` are used; 0: the ranges are `ports`.
    pub(crate) inline_count: u8,
    /// Up to two port ranges kept in the rule itself, so most port checks read no
    /// other cache line.
    pub(crate) inline_ports: [PortRange; 2],
    /// Port ranges in the port array; with `inline_count == 0`, empty means every
    /// port of every protocol.
    pub(crate) ports: Span,
}

impl Rule {
    /// An unused rule slot, to fill caller storage with.
    pub const EMPTY: Rule = Rule {
        policy: PolicyId(0),
        index: 0,
        flags: 0,
        peers: PeerSet::EMPTY,
        filter: PeerSet::EMPTY,
        inline_count: 0,
        inline_ports: [PortRange::ANY; 2],
        ports: Span::EMPTY,
    };
}

/// The policy of one endpoint in one direction: isolated or not, and its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DirPolicy {
    /// `Some(policy)` when the endpoint is isolated in this direction; `policy` is the
    /// (first) policy that isolates it. `None`: not isolated, everything is allowed.
    pub isolated_by: Option<PolicyId>,
    /// The endpoint's rules of this direction (the union of every selecting policy's).
    pub rules: Span,
}

impl DirPolicy {
    /// Not isolated: every flow of this direction is allowed.
    pub const OPEN: DirPolicy = DirPolicy {
        isolated_by: None,
        rules: Span::EMPTY,
    };
}

/// The compiled policy of one local endpoint (a pod on this node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EndpointPolicy {
    /// Policy for traffic to the endpoint.
    pub ingress: DirPolicy,
    /// Policy for traffic from the endpoint.
    pub egress: DirPolicy,
}

/// A local endpoint's compiled policy, by its index in the table's endpoint-policy
/// array (endpoints with the same identity share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EndpointRef(pub u32);

/// What the table knows about one address: the pod's identity and, for a pod on this
/// node, its compiled policy. The value of the address table (the ipcache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddrInfo {
    pub(crate) identity: u32,
    pub(crate) endpoint: u32,
}

impl AddrInfo {
    pub(crate) const NONE: u32 = u32::MAX;
    pub(crate) const UNKNOWN: AddrInfo = AddrInfo {
        identity: Self::NONE,
        endpoint: Self::NONE,
    };

    /// The pod identity of the address, if it is a pod.
    #[inline]
    pub fn identity(&self) -> Option<Identity> {
        (self.identity != Self::NONE).then_some(Identity(self.identity))
    }

    /// The compiled policy of the address, if it is a local endpoint.
    #[inline]
    pub fn endpoint(&self) -> Option<EndpointRef> {
        (self.endpoint != Self::NONE).then_some(EndpointRef(self.endpoint))
    }
}

/// An `ipBlock` peer: addresses in `cidr` except those in any of `except`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IpBlock<'s> {
    /// The block.
    pub cidr: Cidr,
    /// Sub-blocks left out.
    pub except: &'s [Cidr],
}

/// A set of peers to add with [`super::PolicyTable::add_peer_set`]: the union of
/// everything listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PeerSpec<'s> {
    /// Every peer at all, pod or not (a rule without `from`/`to`).
    pub any: bool,
    /// Every peer with a pod identity.
    pub any_pod: bool,
    /// Pod identities (any order, duplicates allowed).
    pub identities: &'s [Identity],
    /// Address blocks.
    pub blocks: &'s [IpBlock<'s>],
}

/// A stored peer set (made by [`super::PolicyTable::add_peer_set`]); rules of many
/// endpoints may share it. Its run in the peer array starts with `bitmap_words` words
/// of a bitmap over pod identities `0..32 * bitmap_words` (bit `i % 32` of word
/// `i / 32`, stored as `Identity` values), followed by sorted identities: the pod
/// identities when there is no bitmap, then the CIDR classes. The bitmap is chosen when
/// it is no larger than the sorted list, so a membership test is one load for big
/// selectors and a short binary search for small ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PeerSet {
    pub(crate) flags: u8,
    pub(crate) span: Span,
    pub(crate) bitmap_words: u32,
}

impl PeerSet {
    /// The empty set.
    pub const EMPTY: PeerSet = PeerSet {
        flags: 0,
        span: Span::EMPTY,
        bitmap_words: 0,
    };

    /// True when pod identity `id` is in the set (`run` = the set's peer-array run).
    #[inline]
    pub(crate) fn has_pod(&self, run: &[Identity], id: Identity) -> bool {
        if self.bitmap_words == 0 {
            return run.binary_search(&id).is_ok();
        }
        let word = id.0 / 32;
        word < self.bitmap_words
            && run
                .get(word as usize)
                .is_some_and(|w| w.0 >> (id.0 % 32) & 1 == 1)
    }

    /// True when CIDR class `class` is in the set.
    #[inline]
    pub(crate) fn has_class(&self, run: &[Identity], class: Identity) -> bool {
        run.get(self.bitmap_words as usize..)
            .unwrap_or(&[])
            .binary_search(&class)
            .is_ok()
    }
}

/// A stored list of port ranges (made by [`super::PolicyTable::add_port_set`]); the
/// empty set means every port of every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortSet(pub(crate) Span);

impl PortSet {
    /// Every port of every protocol (a rule without `ports`).
    pub const ALL: PortSet = PortSet(Span::EMPTY);
}

/// A rule to add to the table with [`super::PolicyTable::push_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RuleSpec {
    /// The policy the rule comes from.
    pub policy: PolicyId,
    /// The rule's index among the policy's rules of its direction (≤ 16383).
    pub index: u16,
    /// Which peers the rule admits.
    pub peers: PeerSet,
    /// If `Some`, the peer must also be a pod whose identity is in this set (its
    /// identities; used for egress named ports, which resolve per destination pod).
    pub only: Option<PeerSet>,
    /// Which destination ports the rule admits.
    pub ports: PortSet,
}

//! The compiled NetworkPolicy table: storage, builder and per-flow evaluation.
//!
//! Design note: everything lives in six caller-owned slices ([`PolicyStorage`]):
//!
//! - the address table (the ipcache): IP → [`AddrInfo`] = the pod's [`Identity`] and,
//!   for a pod on this node, an [`EndpointRef`]. One entry carries both, so a new
//!   connection between two local pods costs exactly two hash lookups;
//! - the endpoint policies ([`EndpointPolicy`]: per direction, isolated-by + a
//!   contiguous run of rules). The compiler makes one per identity and every pod of
//!   that identity points to it, so 10k pods cost rules per identity, not per pod;
//! - the rules, the port ranges, the peer identities and the CIDR prefixes. Peer sets
//!   and port sets are added once and shared by every rule made from the same
//!   Kubernetes rule, which keeps the hot data small enough to stay in cache.
//!
//! A peer set is stored in whichever of two forms is smaller (see [`PeerSet`]): a
//! sorted slice of identities searched by binary search — memory in proportion to the
//! selector's size, right for the many selectors that pick a handful of identities and
//! for the firmware's small tables — or a bitmap over pod identities, one load per
//! test, right for broad selectors ("every pod of the prod namespaces") that would
//! otherwise cost a ten-step search. "Every pod" and "every peer" are flags, so the
//! broadest selectors never enumerate. CIDR blocks become CIDR classes
//! ([`super::cidr`]) kept as a sorted tail of the same run, above
//! [`Identity::CIDR_BASE`]. Up to two port ranges live inside the rule itself.
//!
//! Building happens in a fixed order: prefixes (all of them first, since CIDR class
//! numbers are prefix indexes), then peer sets / port sets / rules, closing each
//! endpoint direction's run with [`PolicyTable::finish_rule_set`], then endpoint
//! policies, then addresses. Evaluation of a new flow: look up both addresses, take the
//! local endpoint's direction (absent or open → allowed, not isolated), then walk its
//! rules, ports first (cheapest), then the peer; the peer's CIDR class is computed
//! lazily, at most once. The first matching rule allows; if none does, the verdict
//! names the isolating policy.

use core::net::IpAddr;

use super::cidr::{Cidr, Prefix, PrefixTable};
use super::iptable::{IpSlot, IpTable};
use super::rule::{
    AddrInfo, DirPolicy, EndpointPolicy, EndpointRef, Identity, IpBlock, PeerSet, PeerSpec,
    PolicyId, PortRange, PortSet, Rule, RuleSpec, Span, FLAG_ANY_PEER, FLAG_ANY_POD, FLAG_FILTERED,
    FLAG_HAS_CIDR,
};
use super::verdict::{AllowReason, ConnVerdict, DenyReason, Direction, Verdict, MAX_RULE_INDEX};

/// What went wrong while building a policy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PolicyError {
    /// The address table is at its load limit.
    AddressesFull,
    /// The endpoint policy array is full.
    EndpointPoliciesFull,
    /// An endpoint reference that was not returned by `add_endpoint_policy`.
    UnknownEndpointPolicy,
    /// The rule array is full.
    RulesFull,
    /// The port range array is full.
    PortsFull,
    /// The peer identity array is full.
    PeersFull,
    /// The prefix table is full.
    PrefixesFull,
    /// A pod identity at or above [`Identity::CIDR_BASE`] was given.
    ReservedIdentity,
    /// A prefix was added after the first peer set (CIDR class numbers would shift).
    PrefixesSealed,
    /// A peer set names a block or exception that was not added with `add_prefix`.
    UnknownPrefix,
    /// A rule index above [`MAX_RULE_INDEX`].
    RuleIndexTooLarge,
    /// A port range whose first port is above its last.
    BadPortRange,
}

/// The caller-owned storage of a [`PolicyTable`]. Size the address table at 8/7 of
/// the addresses it must hold or more (it refuses inserts past 7/8 load).
#[derive(Debug)]
pub struct PolicyStorage<'a> {
    /// The address table (ipcache): IP → identity and local endpoint policy.
    pub addresses: &'a mut [IpSlot<AddrInfo>],
    /// Endpoint policies (one per local identity, typically).
    pub endpoint_policies: &'a mut [EndpointPolicy],
    /// Rules of every rule set.
    pub rules: &'a mut [Rule],
    /// Port ranges of every port set.
    pub ports: &'a mut [PortRange],
    /// Identities of every peer set.
    pub peers: &'a mut [Identity],
    /// Every prefix any peer set mentions.
    pub prefixes: &'a mut [Prefix],
}

/// A read-only view of a rule's peers (see [`PolicyTable::rule_peers`]). A peer is
/// admitted when (`any`, or `any_pod` and it has a pod identity, or its pod identity or
/// its CIDR class is in `set`) and (no `only`, or its pod identity is in `only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RulePeers<'t> {
    /// Every peer.
    pub any: bool,
    /// Every peer with a pod identity.
    pub any_pod: bool,
    /// Pod identities and CIDR classes.
    pub set: PeerSetView<'t>,
    /// The identity filter, if any (only its pod identities count).
    pub only: Option<PeerSetView<'t>>,
}

/// A stored peer set, readable (see [`RulePeers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PeerSetView<'t> {
    set: PeerSet,
    run: &'t [Identity],
}

impl PeerSetView<'_> {
    /// The stored set (equal for every rule sharing it: usable as a cache key).
    pub fn stored(&self) -> PeerSet {
        self.set
    }

    /// True when the set holds pod identity `id` (or, for a reserved identity, that
    /// CIDR class).
    pub fn contains(&self, id: Identity) -> bool {
        if id.is_pod_identity() {
            self.set.has_pod(self.run, id)
        } else {
            self.set.has_class(self.run, id)
        }
    }

    /// Every member: pod identities, then CIDR classes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Identity> + '_ {
        let words = self.set.bitmap_words as usize;
        let (bitmap, sorted) = if words == 0 {
            (&[][..], self.run)
        } else {
            (
                self.run.get(..words).unwrap_or(&[]),
                self.run.get(words..).unwrap_or(&[]),
            )
        };
        let from_bitmap = bitmap.iter().enumerate().flat_map(|(w, bits)| {
            (0..32u32)
                .filter(move |b| bits.0 >> b & 1 == 1)
                .map(move |b| Identity(w as u32 * 32 + b))
        });
        from_bitmap.chain(sorted.iter().copied())
    }
}

/// Compiled NetworkPolicy for one node's endpoints; see the module documentation.
#[derive(Debug)]
pub struct PolicyTable<'a> {
    addresses: IpTable<'a, AddrInfo>,
    endpoint_policies: &'a mut [EndpointPolicy],
    endpoint_count: usize,
    rules: &'a mut [Rule],
    rule_count: usize,
    set_start: usize,
    ports: &'a mut [PortRange],
    port_count: usize,
    peers: &'a mut [Identity],
    peer_count: usize,
    prefixes: PrefixTable<'a>,
    sealed: bool,
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        len: end.saturating_sub(start) as u32,
    }
}

/// Rewrites the sorted, duplicate-free run `area[..len]` = `[pod ids (pods) |
/// classes]` as `[bitmap (words) | classes]`, building the bitmap in the spare slots
/// `area[len..len + words]` first. Returns false (and leaves the run as it is) when
/// `area` has no room for that.
fn write_bitmap(area: &mut [Identity], len: usize, pods: usize, words: usize) -> bool {
    let Some(scratch) = area.get(len..len + words).map(|s| s.len()) else {
        return false;
    };
    if scratch != words {
        return false;
    }
    for w in len..len + words {
        if let Some(slot) = area.get_mut(w) {
            *slot = Identity(0);
        }
    }
    for i in 0..pods {
        let Some(id) = area.get(i).copied() else {
            break;
        };
        if let Some(slot) = area.get_mut(len + id.0 as usize / 32) {
            slot.0 |= 1 << (id.0 % 32);
        }
    }
    // [pods | classes | bitmap] → [bitmap | classes].
    if let Some(tail) = area.get_mut(pods..len + words) {
        tail.rotate_right(words);
    }
    area.copy_within(pods..len + words, 0);
    true
}

/// Sorts and de-duplicates `items` in place; returns the number of distinct items.
fn sort_dedup(items: &mut [Identity]) -> usize {
    items.sort_unstable();
    let (mut n, mut last) = (0, None);
    for i in 0..items.len() {
        let Some(&v) = items.get(i) else {
            break;
        };
        if last != Some(v) {
            if let Some(slot) = items.get_mut(n) {
                *slot = v;
            }
            n += 1;
            last = Some(v);
        }
    }
    n
}

impl<'a> PolicyTable<'a> {
    /// An empty table over `storage` (nothing isolated: every flow is allowed).
    pub fn new(storage: PolicyStorage<'a>) -> Self {
        PolicyTable {
            addresses: IpTable::new(storage.addresses),
            endpoint_policies: storage.endpoint_policies,
            endpoint_count: 0,
            rules: storage.rules,
            rule_count: 0,
            set_start: 0,
            ports: storage.ports,
            port_count: 0,
            peers: storage.peers,
            peer_count: 0,
            prefixes: PrefixTable::new(storage.prefixes),
            sealed: false,
        }
    }

    /// Forgets everything (to rebuild after a cluster change).
    pub fn clear(&mut self) {
        self.addresses.clear();
        self.endpoint_count = 0;
        self.rule_count = 0;
        self.set_start = 0;
        self.port_count = 0;
        self.peer_count = 0;
        self.prefixes.clear();
        self.sealed = false;
    }

    // ---- prefixes, peer sets, port sets, rules ----------------------------------

    /// Adds a prefix that peer sets will mention as a block or an exception. All
    /// prefixes must be added before the first peer set.
    pub fn add_prefix(&mut self, cidr: Cidr) -> Result<(), PolicyError> {
        if self.sealed {
            return Err(PolicyError::PrefixesSealed);
        }
        self.prefixes
            .insert(cidr)
            .map_err(|_| PolicyError::PrefixesFull)
    }

    /// The CIDR class of `ip`: its longest matching prefix, as a reserved identity.
    #[inline]
    pub fn cidr_class(&self, ip: IpAddr) -> Option<Identity> {
        self.prefixes
            .longest_match(ip)
            .map(|i| Identity(Identity::CIDR_BASE | i as u32))
    }

    fn push_peer(&mut self, id: Identity) -> Result<(), PolicyError> {
        let slot = self
            .peers
            .get_mut(self.peer_count)
            .ok_or(PolicyError::PeersFull)?;
        *slot = id;
        self.peer_count += 1;
        Ok(())
    }

    fn push_block_classes(&mut self, block: &IpBlock<'_>) -> Result<(), PolicyError> {
        let known = |c: &Cidr| self.prefixes.index_of(c).is_some();
        if !known(&block.cidr) || !block.except.iter().all(known) {
            return Err(PolicyError::UnknownPrefix);
        }
        for i in 0..self.prefixes.len() {
            let Some(m) = self.prefixes.get(i) else {
                break;
            };
            if block.cidr.contains_cidr(&m) && !block.except.iter().any(|e| e.contains_cidr(&m)) {
                self.push_peer(Identity(Identity::CIDR_BASE | i as u32))?;
            }
        }
        Ok(())
    }

    /// Stores a peer set for rules to share. On error nothing is stored.
    pub fn add_peer_set(&mut self, spec: &PeerSpec<'_>) -> Result<PeerSet, PolicyError> {
        self.sealed = true;
        let start = self.peer_count;
        let result = self.add_peer_set_parts(spec, start);
        if result.is_err() {
            self.peer_count = start;
        }
        result
    }

    fn add_peer_set_parts(
        &mut self,
        spec: &PeerSpec<'_>,
        start: usize,
    ) -> Result<PeerSet, PolicyError> {
        let mut flags = 0;
        if spec.any {
            flags |= FLAG_ANY_PEER;
        }
        if spec.any_pod {
            flags |= FLAG_ANY_POD;
        }
        for &id in spec.identities {
            if !id.is_pod_identity() {
                return Err(PolicyError::ReservedIdentity);
            }
            self.push_peer(id)?;
        }
        for block in spec.blocks {
            self.push_block_classes(block)?;
        }
        let run = self
            .peers
            .get_mut(start..self.peer_count)
            .unwrap_or(&mut []);
        if run.iter().any(|id| !id.is_pod_identity()) {
            flags |= FLAG_HAS_CIDR;
        }
        let len = sort_dedup(run);
        let run = run.get(..len).unwrap_or(&[]);
        let pods = run.partition_point(|id| id.is_pod_identity());
        let words = run
            .get(..pods)
            .and_then(|p| p.last())
            .map_or(0, |max| max.0 as usize / 32 + 1);
        let area = self.peers.get_mut(start..).unwrap_or(&mut []);
        let bitmap_words = if pods > 8 && words <= pods && write_bitmap(area, len, pods, words) {
            self.peer_count = start + words + (len - pods);
            words as u32
        } else {
            self.peer_count = start + len;
            0
        };
        Ok(PeerSet {
            flags,
            span: span(start, self.peer_count),
            bitmap_words,
        })
    }

    /// Stores a list of port ranges for rules to share (empty: every port).
    pub fn add_port_set(&mut self, ranges: &[PortRange]) -> Result<PortSet, PolicyError> {
        let start = self.port_count;
        if ranges.iter().any(|r| r.first > r.last) {
            return Err(PolicyError::BadPortRange);
        }
        let slots = self
            .ports
            .get_mut(start..start.saturating_add(ranges.len()))
            .ok_or(PolicyError::PortsFull)?;
        slots.copy_from_slice(ranges);
        self.port_count += ranges.len();
        Ok(PortSet(span(start, self.port_count)))
    }

    /// Appends a rule to the rule set being built (see [`PolicyTable::finish_rule_set`]).
    pub fn push_rule(&mut self, spec: &RuleSpec) -> Result<(), PolicyError> {
        if spec.index > MAX_RULE_INDEX {
            return Err(PolicyError::RuleIndexTooLarge);
        }
        let slot = self
            .rules
            .get_mut(self.rule_count)
            .ok_or(PolicyError::RulesFull)?;
        let mut flags = spec.peers.flags;
        let filter = match spec.only {
            Some(only) => {
                flags |= FLAG_FILTERED;
                only
            }
            None => PeerSet::EMPTY,
        };
        let ranges = spec.ports.0.of(self.ports);
        let mut inline_ports = [PortRange::ANY; 2];
        let (inline_count, ports) = match ranges {
            [a] => {
                inline_ports[0] = *a;
                (1, Span::EMPTY)
            }
            [a, b] => {
                inline_ports = [*a, *b];
                (2, Span::EMPTY)
            }
            _ => (0, spec.ports.0),
        };
        *slot = Rule {
            policy: spec.policy,
            index: spec.index,
            flags,
            peers: spec.peers,
            filter,
            inline_count,
            inline_ports,
            ports,
        };
        self.rule_count += 1;
        Ok(())
    }

    /// Closes the rule set made of the rules pushed since the previous call and returns
    /// the direction policy for endpoints: isolated by `isolated_by` (with those rules),
    /// or open when `isolated_by` is `None`.
    pub fn finish_rule_set(&mut self, isolated_by: Option<PolicyId>) -> DirPolicy {
        let rules = span(self.set_start, self.rule_count);
        self.set_start = self.rule_count;
        match isolated_by {
            Some(_) => DirPolicy { isolated_by, rules },
            None => DirPolicy::OPEN,
        }
    }

    /// Stores an endpoint policy for local endpoints to share.
    pub fn add_endpoint_policy(
        &mut self,
        policy: EndpointPolicy,
    ) -> Result<EndpointRef, PolicyError> {
        let slot = self
            .endpoint_policies
            .get_mut(self.endpoint_count)
            .ok_or(PolicyError::EndpointPoliciesFull)?;
        *slot = policy;
        self.endpoint_count += 1;
        Ok(EndpointRef(self.endpoint_count as u32 - 1))
    }

    /// The endpoint policy `r` refers to.
    pub fn endpoint_policy(&self, r: EndpointRef) -> Option<EndpointPolicy> {
        self.endpoint_policies
            .get(..self.endpoint_count)
            .and_then(|p| p.get(r.0 as usize))
            .copied()
    }

    // ---- addresses (ipcache) ----------------------------------------------------

    fn update(&mut self, ip: IpAddr, f: impl FnOnce(&mut AddrInfo)) -> Result<(), PolicyError> {
        let mut info = self.addresses.get(&ip).unwrap_or(AddrInfo::UNKNOWN);
        f(&mut info);
        if info == AddrInfo::UNKNOWN {
            self.addresses.remove(&ip);
            Ok(())
        } else {
            self.addresses
                .insert(ip, info)
                .map_err(|_| PolicyError::AddressesFull)
        }
    }

    /// Records the identity of the pod with address `ip`, or forgets it (`None`).
    pub fn set_identity(
        &mut self,
        ip: IpAddr,
        identity: Option<Identity>,
    ) -> Result<(), PolicyError> {
        let raw = match identity {
            Some(id) if !id.is_pod_identity() => return Err(PolicyError::ReservedIdentity),
            Some(id) => id.0,
            None => AddrInfo::NONE,
        };
        self.update(ip, |i| i.identity = raw)
    }

    /// Makes `ip` a local endpoint with policy `endpoint`, or no longer local (`None`).
    /// An address that is not a local endpoint is not isolated in either direction.
    pub fn set_endpoint(
        &mut self,
        ip: IpAddr,
        endpoint: Option<EndpointRef>,
    ) -> Result<(), PolicyError> {
        let raw = match endpoint {
            Some(r) if self.endpoint_policy(r).is_none() => {
                return Err(PolicyError::UnknownEndpointPolicy)
            }
            Some(r) => r.0,
            None => AddrInfo::NONE,
        };
        self.update(ip, |i| i.endpoint = raw)
    }

    /// What the table knows about `ip`.
    #[inline]
    pub fn address(&self, ip: &IpAddr) -> AddrInfo {
        self.addresses.get(ip).unwrap_or(AddrInfo::UNKNOWN)
    }

    // ---- inspection ---------------------------------------------------------------

    /// Number of rules, port ranges, peer identities and prefixes in use.
    pub fn usage(&self) -> (usize, usize, usize, usize) {
        (
            self.rule_count,
            self.port_count,
            self.peer_count,
            self.prefixes.len(),
        )
    }

    /// The rules of a direction policy (for explanations and tests).
    pub fn rules_of(&self, dir: &DirPolicy) -> &[Rule] {
        dir.rules.of(self.rules)
    }

    /// The peers of `rule` (for control-plane tools such as a reachability matrix,
    /// which evaluate whole peer sets at once instead of one flow at a time).
    pub fn rule_peers(&self, rule: &Rule) -> RulePeers<'_> {
        RulePeers {
            any: rule.flags & FLAG_ANY_PEER != 0,
            any_pod: rule.flags & FLAG_ANY_POD != 0,
            set: PeerSetView {
                set: rule.peers,
                run: rule.peers.span.of(self.peers),
            },
            only: (rule.flags & FLAG_FILTERED != 0).then(|| PeerSetView {
                set: rule.filter,
                run: rule.filter.span.of(self.peers),
            }),
        }
    }

    /// True when `rule` admits destination `port` of IP protocol `protocol`.
    pub fn rule_admits_port(&self, rule: &Rule, port: u16, protocol: u8) -> bool {
        self.ports_admit(rule, port, protocol)
    }

    // ---- evaluation ---------------------------------------------------------------

    #[inline]
    fn ports_admit(&self, rule: &Rule, port: u16, protocol: u8) -> bool {
        if rule.inline_count != 0 {
            return rule.inline_ports[0].admits(port, protocol)
                || (rule.inline_count == 2 && rule.inline_ports[1].admits(port, protocol));
        }
        rule.ports.len == 0
            || rule
                .ports
                .of(self.ports)
                .iter()
                .any(|r| r.admits(port, protocol))
    }

    #[inline]
    fn peer_admits(
        &self,
        rule: &Rule,
        peer: IpAddr,
        pod: Option<Identity>,
        class: &mut Option<Option<Identity>>,
    ) -> bool {
        let in_peers = rule.flags & FLAG_ANY_PEER != 0 || {
            let set = rule.peers.span.of(self.peers);
            match pod {
                Some(_) if rule.flags & FLAG_ANY_POD != 0 => true,
                Some(id) if rule.peers.has_pod(set, id) => true,
                _ => {
                    rule.flags & FLAG_HAS_CIDR != 0
                        && class
                            .get_or_insert_with(|| self.cidr_class(peer))
                            .is_some_and(|c| rule.peers.has_class(set, c))
                }
            }
        };
        in_peers
            && (rule.flags & FLAG_FILTERED == 0
                || pod.is_some_and(|id| rule.filter.has_pod(rule.filter.span.of(self.peers), id)))
    }

    #[inline]
    fn evaluate_info(
        &self,
        direction: Direction,
        local: AddrInfo,
        peer: IpAddr,
        peer_info: AddrInfo,
        port: u16,
        protocol: u8,
    ) -> Verdict {
        let Some(endpoint) = local
            .endpoint()
            .and_then(|r| self.endpoint_policies.get(r.0 as usize))
        else {
            return Verdict::Allow(AllowReason::NotIsolated);
        };
        let dir = match direction {
            Direction::Ingress => endpoint.ingress,
            Direction::Egress => endpoint.egress,
        };
        let Some(isolating) = dir.isolated_by else {
            return Verdict::Allow(AllowReason::NotIsolated);
        };
        let pod = peer_info.identity();
        let mut class = None;
        for rule in dir.rules.of(self.rules) {
            if self.ports_admit(rule, port, protocol)
                && self.peer_admits(rule, peer, pod, &mut class)
            {
                return Verdict::Allow(AllowReason::Rule {
                    policy: rule.policy,
                    rule: rule.index,
                });
            }
        }
        Verdict::Deny(DenyReason::NoRuleMatched { policy: isolating })
    }

    /// The verdict for a new flow in one direction of local endpoint `local`: for
    /// ingress `local` is the destination and `peer` the source, for egress `local` is
    /// the source and `peer` the destination; `port` is the destination port (0 for a
    /// protocol without ports) and `protocol` the IP protocol number. An address that
    /// is not a local endpoint is not isolated (its own node decides).
    #[inline]
    pub fn evaluate(
        &self,
        direction: Direction,
        local: IpAddr,
        peer: IpAddr,
        port: u16,
        protocol: u8,
    ) -> Verdict {
        let local = self.address(&local);
        if local.endpoint == AddrInfo::NONE {
            return Verdict::Allow(AllowReason::NotIsolated);
        }
        self.evaluate_info(direction, local, peer, self.address(&peer), port, protocol)
    }

    /// The verdict for a new connection from `src` to `dst` (`dst_port`, `protocol`):
    /// the egress of `src` AND the ingress of `dst` (each evaluated if it is a local
    /// endpoint), with one address lookup per side.
    #[inline]
    pub fn evaluate_connection(
        &self,
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
        protocol: u8,
    ) -> ConnVerdict {
        let (s, d) = (self.address(&src), self.address(&dst));
        ConnVerdict {
            egress: self.evaluate_info(Direction::Egress, s, dst, d, dst_port, protocol),
            ingress: self.evaluate_info(Direction::Ingress, d, src, s, dst_port, protocol),
        }
    }
}

//! The compiled NetworkPolicy table: storage, builder and per-flow evaluation.
//!
//! Design note: everything lives in six caller-owned slices ([`PolicyStorage`]): the
//! local endpoints (pod IP → [`EndpointPolicy`]), the ipcache (pod IP → [`Identity`]),
//! the rules, the port ranges, the peer identities and the CIDR prefixes. The control
//! plane builds the table in a fixed order — prefixes, then rule sets, then endpoints
//! and identities — and endpoints with the same identity share one rule set, so 10k pods
//! under 1k policies cost rules per *identity*, not per pod.
//!
//! A rule's peers are a sorted slice of identities searched with a binary search rather
//! than a bitmap over all identities: a sorted slice costs memory proportional to the
//! selector's size (most select a handful of identities), stays tiny on the firmware,
//! and the few cache lines a search touches are hot when the same rules see many flows.
//! "Every pod" and "every peer" are flags, so the broadest selectors never enumerate.
//! CIDR blocks become CIDR classes ([`super::cidr`]) stored in the same sorted slice
//! above [`Identity::CIDR_BASE`], so one search routine serves both kinds of peer.
//!
//! Evaluation of a new flow: one endpoint lookup (absent → not isolated, allowed), then
//! the rules of that direction in order, ports first (cheapest), then the peer; the
//! peer's identity and CIDR class are looked up lazily, at most once each. The first
//! matching rule allows; if none does, the verdict names the isolating policy.

use core::net::IpAddr;

use super::cidr::{Cidr, Prefix, PrefixTable};
use super::iptable::{IpSlot, IpTable};
use super::rule::{
    DirPolicy, EndpointPolicy, Identity, IpBlock, PolicyId, PortRange, Rule, RuleSpec, Span,
    FLAG_ANY_PEER, FLAG_ANY_POD, FLAG_FILTERED, FLAG_HAS_CIDR,
};
use super::verdict::{AllowReason, ConnVerdict, DenyReason, Direction, Verdict, MAX_RULE_INDEX};

/// What went wrong while building a policy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PolicyError {
    /// The endpoint table is at its load limit.
    EndpointsFull,
    /// The identity map (ipcache) is at its load limit.
    IdentitiesFull,
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
    /// A prefix was added after the first rule (CIDR class numbers would shift).
    PrefixesSealed,
    /// A rule names a block or exception that was not added with `add_prefix` first.
    UnknownPrefix,
    /// A rule index above [`MAX_RULE_INDEX`].
    RuleIndexTooLarge,
    /// A port range whose first port is above its last.
    BadPortRange,
}

/// The caller-owned storage of a [`PolicyTable`]. Size the two address tables at
/// 8/7 of the entries they must hold or more (they refuse inserts past 7/8 load).
#[derive(Debug)]
pub struct PolicyStorage<'a> {
    /// Local endpoints: pod IP → compiled policy.
    pub endpoints: &'a mut [IpSlot<EndpointPolicy>],
    /// The ipcache: pod IP → identity, for every pod of the cluster.
    pub identities: &'a mut [IpSlot<Identity>],
    /// Rules of every rule set.
    pub rules: &'a mut [Rule],
    /// Port ranges of every rule.
    pub ports: &'a mut [PortRange],
    /// Peer and filter identities of every rule.
    pub peers: &'a mut [Identity],
    /// Every prefix any rule mentions.
    pub prefixes: &'a mut [Prefix],
}

/// Compiled NetworkPolicy for one node's endpoints; see the module documentation.
#[derive(Debug)]
pub struct PolicyTable<'a> {
    endpoints: IpTable<'a, EndpointPolicy>,
    identities: IpTable<'a, Identity>,
    rules: &'a mut [Rule],
    rule_count: usize,
    set_start: usize,
    ports: &'a mut [PortRange],
    port_count: usize,
    peers: &'a mut [Identity],
    peer_count: usize,
    prefixes: PrefixTable<'a>,
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        len: end.saturating_sub(start) as u32,
    }
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
            endpoints: IpTable::new(storage.endpoints),
            identities: IpTable::new(storage.identities),
            rules: storage.rules,
            rule_count: 0,
            set_start: 0,
            ports: storage.ports,
            port_count: 0,
            peers: storage.peers,
            peer_count: 0,
            prefixes: PrefixTable::new(storage.prefixes),
        }
    }

    /// Forgets everything (to rebuild after a cluster change).
    pub fn clear(&mut self) {
        self.endpoints.clear();
        self.identities.clear();
        self.rule_count = 0;
        self.set_start = 0;
        self.port_count = 0;
        self.peer_count = 0;
        self.prefixes.clear();
    }

    /// Records the identity of the pod with address `ip` (the ipcache).
    pub fn set_identity(&mut self, ip: IpAddr, identity: Identity) -> Result<(), PolicyError> {
        if !identity.is_pod_identity() {
            return Err(PolicyError::ReservedIdentity);
        }
        self.identities
            .insert(ip, identity)
            .map_err(|_| PolicyError::IdentitiesFull)
    }

    /// Forgets the identity of `ip`.
    pub fn remove_identity(&mut self, ip: &IpAddr) -> Option<Identity> {
        self.identities.remove(ip)
    }

    /// The identity recorded for `ip`.
    #[inline]
    pub fn identity(&self, ip: &IpAddr) -> Option<Identity> {
        self.identities.get(ip)
    }

    /// Adds a prefix that rules will mention as a block or an exception. All prefixes
    /// must be added before the first rule.
    pub fn add_prefix(&mut self, cidr: Cidr) -> Result<(), PolicyError> {
        if self.rule_count != 0 {
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

    /// Appends a rule to the rule set being built (see [`PolicyTable::finish_rule_set`]).
    /// On error nothing is appended.
    pub fn push_rule(&mut self, spec: &RuleSpec<'_>) -> Result<(), PolicyError> {
        if spec.index > MAX_RULE_INDEX {
            return Err(PolicyError::RuleIndexTooLarge);
        }
        if self.rule_count >= self.rules.len() {
            return Err(PolicyError::RulesFull);
        }
        let (peer_mark, port_mark) = (self.peer_count, self.port_count);
        let result = self.push_rule_parts(spec);
        if result.is_err() {
            self.peer_count = peer_mark;
            self.port_count = port_mark;
        }
        result
    }

    fn push_rule_parts(&mut self, spec: &RuleSpec<'_>) -> Result<(), PolicyError> {
        let mut flags = 0;
        if spec.peers.any {
            flags |= FLAG_ANY_PEER;
        }
        if spec.peers.any_pod {
            flags |= FLAG_ANY_POD;
        }
        // Peers: pod identities and CIDR classes in one sorted run.
        let peers_start = self.peer_count;
        for &id in spec.peers.identities {
            if !id.is_pod_identity() {
                return Err(PolicyError::ReservedIdentity);
            }
            self.push_peer(id)?;
        }
        for block in spec.peers.blocks {
            self.push_block_classes(block)?;
        }
        let run = self
            .peers
            .get_mut(peers_start..self.peer_count)
            .unwrap_or(&mut []);
        if run.iter().any(|id| !id.is_pod_identity()) {
            flags |= FLAG_HAS_CIDR;
        }
        self.peer_count = peers_start + sort_dedup(run);
        let peers = span(peers_start, self.peer_count);
        // Filter.
        let filter_start = self.peer_count;
        if let Some(only) = spec.only_identities {
            flags |= FLAG_FILTERED;
            for &id in only {
                if !id.is_pod_identity() {
                    return Err(PolicyError::ReservedIdentity);
                }
                self.push_peer(id)?;
            }
            let run = self
                .peers
                .get_mut(filter_start..self.peer_count)
                .unwrap_or(&mut []);
            self.peer_count = filter_start + sort_dedup(run);
        }
        let filter = span(filter_start, self.peer_count);
        // Ports.
        let ports_start = self.port_count;
        for range in spec.ports {
            if range.first > range.last {
                return Err(PolicyError::BadPortRange);
            }
            let slot = self
                .ports
                .get_mut(self.port_count)
                .ok_or(PolicyError::PortsFull)?;
            *slot = *range;
            self.port_count += 1;
        }
        let ports = span(ports_start, self.port_count);
        let slot = self
            .rules
            .get_mut(self.rule_count)
            .ok_or(PolicyError::RulesFull)?;
        *slot = Rule {
            policy: spec.policy,
            index: spec.index,
            flags,
            peers,
            filter,
            ports,
        };
        self.rule_count += 1;
        Ok(())
    }

    /// Closes the rule set made of the rules pushed since the previous call and returns
    /// the direction policy to give endpoints: isolated by `isolated_by` (with those
    /// rules), or open when `isolated_by` is `None`.
    pub fn finish_rule_set(&mut self, isolated_by: Option<PolicyId>) -> DirPolicy {
        let rules = span(self.set_start, self.rule_count);
        self.set_start = self.rule_count;
        match isolated_by {
            Some(_) => DirPolicy { isolated_by, rules },
            None => DirPolicy::OPEN,
        }
    }

    /// Sets the compiled policy of the local endpoint with address `ip`. An endpoint
    /// that is never set (or removed) is not isolated in either direction.
    pub fn set_endpoint(&mut self, ip: IpAddr, policy: EndpointPolicy) -> Result<(), PolicyError> {
        self.endpoints
            .insert(ip, policy)
            .map_err(|_| PolicyError::EndpointsFull)
    }

    /// Removes the local endpoint `ip`.
    pub fn remove_endpoint(&mut self, ip: &IpAddr) -> Option<EndpointPolicy> {
        self.endpoints.remove(ip)
    }

    /// The compiled policy of local endpoint `ip`.
    pub fn endpoint(&self, ip: &IpAddr) -> Option<EndpointPolicy> {
        self.endpoints.get(ip)
    }

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

    #[inline]
    fn ports_admit(&self, rule: &Rule, port: u16, protocol: u8) -> bool {
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
        identity: &mut Option<Option<Identity>>,
        class: &mut Option<Option<Identity>>,
    ) -> bool {
        let mut pod = || *identity.get_or_insert_with(|| self.identities.get(&peer));
        let in_peers = if rule.flags & FLAG_ANY_PEER != 0 {
            true
        } else {
            let set = rule.peers.of(self.peers);
            (rule.flags & FLAG_ANY_POD != 0 && pod().is_some())
                || pod().is_some_and(|id| set.binary_search(&id).is_ok())
                || (rule.flags & FLAG_HAS_CIDR != 0
                    && class
                        .get_or_insert_with(|| self.cidr_class(peer))
                        .is_some_and(|c| set.binary_search(&c).is_ok()))
        };
        in_peers
            && (rule.flags & FLAG_FILTERED == 0
                || pod().is_some_and(|id| rule.filter.of(self.peers).binary_search(&id).is_ok()))
    }

    /// The verdict for a new flow in one direction of local endpoint `local`: for
    /// ingress `local` is the destination and `peer` the source, for egress `local` is
    /// the source and `peer` the destination; `port` is the destination port (0 for a
    /// protocol without ports) and `protocol` the IP protocol number.
    #[inline]
    pub fn evaluate(
        &self,
        direction: Direction,
        local: IpAddr,
        peer: IpAddr,
        port: u16,
        protocol: u8,
    ) -> Verdict {
        let Some(endpoint) = self.endpoints.get(&local) else {
            return Verdict::Allow(AllowReason::NotIsolated);
        };
        let dir = match direction {
            Direction::Ingress => endpoint.ingress,
            Direction::Egress => endpoint.egress,
        };
        let Some(isolating) = dir.isolated_by else {
            return Verdict::Allow(AllowReason::NotIsolated);
        };
        let (mut identity, mut class) = (None, None);
        for rule in dir.rules.of(self.rules) {
            if self.ports_admit(rule, port, protocol)
                && self.peer_admits(rule, peer, &mut identity, &mut class)
            {
                return Verdict::Allow(AllowReason::Rule {
                    policy: rule.policy,
                    rule: rule.index,
                });
            }
        }
        Verdict::Deny(DenyReason::NoRuleMatched { policy: isolating })
    }

    /// The verdict for a new connection from `src` to `dst` (`dst_port`, `protocol`):
    /// the egress of `src` and the ingress of `dst`, where either is a local endpoint
    /// (a remote or non-pod address is not isolated here: its own node decides).
    #[inline]
    pub fn evaluate_connection(
        &self,
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
        protocol: u8,
    ) -> ConnVerdict {
        ConnVerdict {
            egress: self.evaluate(Direction::Egress, src, dst, dst_port, protocol),
            ingress: self.evaluate(Direction::Ingress, dst, src, dst_port, protocol),
        }
    }
}

//! Compiles Pods, Namespaces and NetworkPolicies into the core's [`PolicyTable`].
//!
//! Design note: the compiler works in three steps, each cheap because it works on
//! *identities* rather than pods. (1) Every policy is validated the way the API server
//! validates `networking.k8s.io/v1` NetworkPolicy (errors name the object and the field)
//! and normalised: `policyTypes` defaulted, selectors compiled, CIDRs parsed, ports
//! split into numeric ranges and names. (2) Pods are grouped into identities by
//! (namespace, labels, named ports) — everything a policy can observe about a pod
//! except its address — so 10k pods from a few hundred deployments are a few thousand
//! identities, and every selector is evaluated once per identity. (3) A `Plan` is made
//! in owned memory: one peer set per Kubernetes rule (shared by every endpoint the
//! policy selects), per identity and direction the union of the rules of every
//! selecting policy, named ports resolved — for ingress on the local (destination)
//! pod, for egress per destination pod through an identity filter. The plan knows the
//! sizes the core tables need, so [`CompiledPolicy::store`] allocates them exactly and
//! [`CompiledPolicy::table`] fills a [`PolicyTable`] over that storage.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podwire_core::policy::{
    AddrInfo, Cidr, DirPolicy, EndpointPolicy, Identity, IpBlock, IpSlot, PeerSpec, PolicyError,
    PolicyId, PolicyStorage, PolicyTable, PortRange, PortSet, Prefix, Rule, RuleSpec,
};

use super::cluster::{resolve_named_port, ClusterState, NamedPort, Protocol};
use super::selectors::{FieldError, Labels, Selector};

/// A policy the API server would reject, with every invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// `namespace/name` of the NetworkPolicy.
    pub name: String,
    /// The invalid fields.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "NetworkPolicy {} is invalid: {}",
            self.name,
            list.join("; ")
        )
    }
}

impl std::error::Error for CompileError {}

/// Direction index in per-direction arrays.
pub const INGRESS: usize = 0;
/// Direction index in per-direction arrays.
pub const EGRESS: usize = 1;

// ---- step 1: validation and normalisation -----------------------------------------

/// A rule peer after validation.
#[derive(Debug, Clone)]
enum Peer {
    /// Pods: `namespace: None` means the policy's own namespace; `pods: None` all pods.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

/// One `ports` entry after validation and defaulting (protocol TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    /// Every port of a protocol (`port` omitted).
    All(Protocol),
    /// `port` (..= `endPort`).
    Range(Protocol, u16, u16),
    /// A named port, resolved on the destination pod.
    Named(Protocol, String),
}

#[derive(Debug, Clone)]
struct NormRule {
    /// `None`: every peer (no `from`/`to`, or an empty list).
    peers: Option<Vec<Peer>>,
    /// Empty: every port.
    ports: Vec<Port>,
}

#[derive(Debug, Clone)]
struct NormPolicy {
    namespace: String,
    name: String,
    selector: Selector,
    /// `[ingress, egress]`: `Some(rules)` when the policy has that policyType.
    rules: [Option<Vec<NormRule>>; 2],
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Cidr::new(addr, len.parse().ok()?).ok()
}

/// A valid IANA service name (what a named port must be).
fn port_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        Some("must be no more than 15 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    } else if name.contains("--") {
        Some("must not contain consecutive hyphens")
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("must contain at least one letter (a-z)")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not begin or end with a hyphen")
    } else {
        None
    }
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

fn norm_port(p: &NetworkPolicyPort, f: &str, errors: &mut Vec<FieldError>) -> Option<Port> {
    let before = errors.len();
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).unwrap_or_else(|| {
            errors.push(FieldError::unsupported(
                format!("{f}.protocol"),
                s,
                &Protocol::NAMES,
            ));
            Protocol::Tcp
        }),
    };
    let port_num_problem = "must be between 1 and 65535, inclusive";
    let port = match &p.port {
        None => {
            if let Some(end) = p.end_port {
                errors.push(FieldError::invalid(
                    format!("{f}.endPort"),
                    end,
                    "may not be specified when `port` is not specified",
                ));
            }
            Port::All(protocol)
        }
        Some(IntOrString::Int(n)) => {
            if !(1..=65535).contains(n) {
                errors.push(FieldError::invalid(
                    format!("{f}.port"),
                    n,
                    port_num_problem,
                ));
            }
            let end = p.end_port.unwrap_or(*n);
            if let Some(e) = p.end_port {
                if e < *n {
                    errors.push(FieldError::invalid(
                        format!("{f}.endPort"),
                        e,
                        "must be greater than or equal to `port`",
                    ));
                }
                if !(1..=65535).contains(&e) {
                    errors.push(FieldError::invalid(
                        format!("{f}.endPort"),
                        e,
                        port_num_problem,
                    ));
                }
            }
            Port::Range(protocol, *n as u16, end as u16)
        }
        Some(IntOrString::String(name)) => {
            if let Some(e) = p.end_port {
                errors.push(FieldError::invalid(
                    format!("{f}.endPort"),
                    e,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            if let Some(problem) = port_name_problem(name) {
                errors.push(FieldError::invalid(
                    format!("{f}.port"),
                    format!("\"{name}\""),
                    problem,
                ));
            }
            Port::Named(protocol, name.clone())
        }
    };
    (errors.len() == before).then_some(port)
}

fn norm_selector(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    f: &str,
    errors: &mut Vec<FieldError>,
) -> Selector {
    Selector::parse(sel, f).unwrap_or_else(|mut e| {
        errors.append(&mut e);
        Selector::everything()
    })
}

fn norm_peer(p: &NetworkPolicyPeer, f: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
    let count = usize::from(p.pod_selector.is_some())
        + usize::from(p.namespace_selector.is_some())
        + usize::from(p.ip_block.is_some());
    if count == 0 {
        errors.push(FieldError::required(f, "must specify a peer"));
        return None;
    }
    if count > 1 && p.ip_block.is_some() {
        errors.push(FieldError::forbidden(
            f,
            "may not specify both ipBlock and another peer",
        ));
        return None;
    }
    if let Some(b) = &p.ip_block {
        let f = format!("{f}.ipBlock");
        if b.cidr.is_empty() {
            errors.push(FieldError::required(format!("{f}.cidr"), ""));
            return None;
        }
        let Some(cidr) = parse_cidr(&b.cidr) else {
            errors.push(FieldError::invalid(
                format!("{f}.cidr"),
                format!("\"{}\"", b.cidr),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
            return None;
        };
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let ef = format!("{f}.except[{i}]");
            match parse_cidr(e) {
                None => errors.push(FieldError::invalid(
                    ef,
                    format!("\"{e}\""),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
                Some(c) if !(cidr.contains_cidr(&c) && c.prefix_len() > cidr.prefix_len()) => {
                    errors.push(FieldError::invalid(
                        ef,
                        format!("\"{e}\""),
                        "must be a strict subset of `cidr`",
                    ))
                }
                Some(c) => except.push(c),
            }
        }
        return Some(Peer::Block { cidr, except });
    }
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(|s| norm_selector(s, &format!("{f}.namespaceSelector"), errors));
    let pods = p
        .pod_selector
        .as_ref()
        .map(|s| norm_selector(s, &format!("{f}.podSelector"), errors));
    Some(Peer::Pods { namespaces, pods })
}

fn norm_rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    f: &str,
    peer_field: &str,
    errors: &mut Vec<FieldError>,
) -> NormRule {
    let peers = peers.filter(|p| !p.is_empty()).map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| norm_peer(p, &format!("{f}.{peer_field}[{i}]"), errors))
            .collect()
    });
    let ports = ports
        .iter()
        .flat_map(|v| v.iter())
        .enumerate()
        .filter_map(|(i, p)| norm_port(p, &format!("{f}.ports[{i}]"), errors))
        .collect();
    NormRule { peers, ports }
}

fn normalise(p: &NetworkPolicy) -> Result<NormPolicy, CompileError> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::required("metadata.name", "name is required"));
    } else if !valid_dns_subdomain(&name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            format!("\"{name}\""),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    let spec = p.spec.clone().unwrap_or_default();
    let selector = spec
        .pod_selector
        .as_ref()
        .map(|s| norm_selector(s, "spec.podSelector", &mut errors))
        .unwrap_or_default();
    let ingress: Vec<NormRule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.ingress[{i}]");
            norm_rule(r.from.as_ref(), r.ports.as_ref(), &f, "from", &mut errors)
        })
        .collect();
    let egress: Vec<NormRule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.egress[{i}]");
            norm_rule(r.to.as_ref(), r.ports.as_ref(), &f, "to", &mut errors)
        })
        .collect();
    // policyTypes, defaulted as the API server does (pkg/apis/networking/v1/defaults.go).
    let types: Vec<String> = match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => {
            if t.len() > 2 {
                errors.push(FieldError::invalid(
                    "spec.policyTypes",
                    format!("{t:?}"),
                    "may not specify more than two policyTypes",
                ));
            }
            for (i, ty) in t.iter().enumerate() {
                if ty != "Ingress" && ty != "Egress" {
                    errors.push(FieldError::unsupported(
                        format!("spec.policyTypes[{i}]"),
                        ty,
                        &["Ingress", "Egress"],
                    ));
                }
            }
            t.clone()
        }
        None if !egress.is_empty() => vec!["Ingress".into(), "Egress".into()],
        None => vec!["Ingress".into()],
    };
    if !errors.is_empty() {
        return Err(CompileError {
            name: format!("{namespace}/{name}"),
            errors,
        });
    }
    let has = |t: &str| types.iter().any(|x| x == t);
    Ok(NormPolicy {
        rules: [
            has("Ingress").then_some(ingress),
            has("Egress").then_some(egress),
        ],
        namespace,
        name,
        selector,
    })
}

// ---- step 2 and 3: identities and the plan -----------------------------------------

/// What every pod of one identity shares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityInfo {
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: Labels,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
}

/// A compiled policy's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PolicyMeta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct PeerPlan {
    any: bool,
    ids: Vec<Identity>,
    blocks: Vec<(Cidr, Vec<Cidr>)>,
}

#[derive(Debug, Clone, Copy)]
struct RulePlan {
    policy: PolicyId,
    index: u16,
    peers: usize,
    only: Option<usize>,
    ports: usize,
}

/// Everything needed to fill a [`PolicyTable`], plus names for explanations.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    /// Policies by [`PolicyId`] (sorted by namespace/name).
    pub policies: Vec<PolicyMeta>,
    /// Identities by [`Identity`] number.
    pub identities: Vec<IdentityInfo>,
    /// The identity of every pod of the cluster state, by pod index.
    pub pod_identity: Vec<Identity>,
    /// Per identity, `[ingress, egress]`: every policy isolating it, in order.
    pub isolating: Vec<[Vec<PolicyId>; 2]>,
    prefixes: Vec<Cidr>,
    peer_sets: Vec<PeerPlan>,
    port_sets: Vec<Vec<PortRange>>,
    /// Per identity, `[ingress, egress]` rules.
    rules: Vec<[Vec<RulePlan>; 2]>,
    /// Every pod address and the pod's index.
    addresses: Vec<(IpAddr, usize)>,
}

/// Owned storage for a [`PolicyTable`], sized by [`CompiledPolicy::store`].
#[derive(Debug, Clone)]
pub struct PolicyStore {
    addresses: Vec<IpSlot<AddrInfo>>,
    endpoint_policies: Vec<EndpointPolicy>,
    rules: Vec<Rule>,
    ports: Vec<PortRange>,
    peers: Vec<Identity>,
    prefixes: Vec<Prefix>,
}

#[derive(Default)]
struct Interner<T: Eq + std::hash::Hash + Clone> {
    items: Vec<T>,
    index: HashMap<T, usize>,
}

impl<T: Eq + std::hash::Hash + Clone> Interner<T> {
    fn intern(&mut self, item: T) -> usize {
        if let Some(&i) = self.index.get(&item) {
            return i;
        }
        self.items.push(item.clone());
        self.index.insert(item, self.items.len() - 1);
        self.items.len() - 1
    }
}

fn port_range(protocol: Protocol, first: u16, last: u16) -> PortRange {
    PortRange {
        protocol: protocol.port_protocol(),
        first,
        last,
    }
}

/// Validates the cluster's policies as the API server would, without compiling
/// (step 1 only). Fails on the first invalid policy (by name order).
pub fn validate(cluster: &ClusterState) -> Result<(), CompileError> {
    normalise_all(cluster).map(|_| ())
}

fn normalise_all(cluster: &ClusterState) -> Result<Vec<NormPolicy>, CompileError> {
    let mut policies: Vec<NormPolicy> = cluster
        .policies
        .iter()
        .map(normalise)
        .collect::<Result<_, _>>()?;
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if let Some(w) = policies
        .windows(2)
        .find(|w| (&w[0].namespace, &w[0].name) == (&w[1].namespace, &w[1].name))
    {
        return Err(CompileError {
            name: format!("{}/{}", w[0].namespace, w[0].name),
            errors: vec![FieldError {
                field: "metadata.name".into(),
                message: "Duplicate value: the name is used by another NetworkPolicy".into(),
            }],
        });
    }
    if policies.len() > usize::from(u16::MAX) {
        return Err(CompileError {
            name: "(all)".into(),
            errors: vec![FieldError::forbidden("", "more than 65535 NetworkPolicies")],
        });
    }
    Ok(policies)
}

/// Compiles the cluster's policies. Fails on the first invalid policy (by name order).
pub fn compile(cluster: &ClusterState) -> Result<CompiledPolicy, CompileError> {
    // Step 1.
    let policies = normalise_all(cluster)?;
    // Step 2: identities.
    let mut out = CompiledPolicy::default();
    let mut by_info: HashMap<IdentityInfo, Identity> = HashMap::new();
    for (i, pod) in cluster.pods.iter().enumerate() {
        let info = IdentityInfo {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            named_ports: pod.named_ports.clone(),
        };
        let next = Identity(by_info.len() as u32);
        let id = *by_info.entry(info.clone()).or_insert_with(|| {
            out.identities.push(info);
            next
        });
        out.pod_identity.push(id);
        if !pod.host_network {
            out.addresses.extend(pod.ips.iter().map(|ip| (*ip, i)));
        }
    }
    let empty = Labels::new();
    let ns_labels = |ns: &str| cluster.namespaces.get(ns).unwrap_or(&empty);
    out.policies = policies
        .iter()
        .map(|p| PolicyMeta {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        })
        .collect();
    // Step 3: shared peer sets and (for egress named ports) filters, per rule.
    let mut peer_sets: Interner<PeerPlan> = Interner::default();
    let mut port_sets: Interner<Vec<PortRange>> = Interner::default();
    let mut prefixes: Vec<Cidr> = Vec::new();
    // (policy, dir, rule) → (peer set, numeric ports, named ports)
    struct SharedRule {
        peers: usize,
        numeric: Vec<PortRange>,
        named: Vec<(Protocol, String)>,
        /// For egress: (filter peer set, port set) per resolution of the named ports.
        egress_named: Vec<(usize, usize)>,
    }
    let mut shared: HashMap<(usize, usize, usize), SharedRule> = HashMap::new();
    for (pi, p) in policies.iter().enumerate() {
        for dir in [INGRESS, EGRESS] {
            for (ri, rule) in p.rules[dir].iter().flatten().enumerate() {
                let mut plan = PeerPlan::default();
                match &rule.peers {
                    None => plan.any = true,
                    Some(peers) => {
                        for (j, id) in out.identities.iter().enumerate() {
                            let selected = peers.iter().any(|peer| match peer {
                                Peer::Pods { namespaces, pods } => {
                                    let ns_ok = match namespaces {
                                        None => id.namespace == p.namespace,
                                        Some(s) => s.matches(ns_labels(&id.namespace)),
                                    };
                                    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&id.labels))
                                }
                                Peer::Block { .. } => false,
                            });
                            if selected {
                                plan.ids.push(Identity(j as u32));
                            }
                        }
                        for peer in peers {
                            if let Peer::Block { cidr, except } = peer {
                                prefixes.push(*cidr);
                                prefixes.extend(except.iter().copied());
                                plan.blocks.push((*cidr, except.clone()));
                            }
                        }
                    }
                }
                let peers = peer_sets.intern(plan);
                let mut numeric = Vec::new();
                let mut named = Vec::new();
                for port in &rule.ports {
                    match port {
                        Port::All(proto) => numeric.push(port_range(*proto, 0, u16::MAX)),
                        Port::Range(proto, a, b) => numeric.push(port_range(*proto, *a, *b)),
                        Port::Named(proto, n) => named.push((*proto, n.clone())),
                    }
                }
                let mut egress_named = Vec::new();
                if dir == EGRESS && !named.is_empty() {
                    // Group destination identities by what the names resolve to.
                    let mut groups: BTreeMap<PortRange, Vec<Identity>> = BTreeMap::new();
                    for (j, id) in out.identities.iter().enumerate() {
                        for (proto, n) in &named {
                            if let Some(port) = resolve_named_port(&id.named_ports, n, *proto) {
                                groups
                                    .entry(port_range(*proto, port, port))
                                    .or_default()
                                    .push(Identity(j as u32));
                            }
                        }
                    }
                    for (range, ids) in groups {
                        let only = peer_sets.intern(PeerPlan {
                            any: false,
                            ids,
                            blocks: Vec::new(),
                        });
                        egress_named.push((only, port_sets.intern(vec![range])));
                    }
                }
                shared.insert(
                    (pi, dir, ri),
                    SharedRule {
                        peers,
                        numeric,
                        named,
                        egress_named,
                    },
                );
            }
        }
    }
    // Per identity: the union of the rules of every selecting policy.
    for id in &out.identities {
        let mut rules: [Vec<RulePlan>; 2] = Default::default();
        let mut isolating: [Vec<PolicyId>; 2] = Default::default();
        for (pi, p) in policies.iter().enumerate() {
            if p.namespace != id.namespace || !p.selector.matches(&id.labels) {
                continue;
            }
            let policy = PolicyId(pi as u16);
            for dir in [INGRESS, EGRESS] {
                let Some(list) = &p.rules[dir] else { continue };
                isolating[dir].push(policy);
                for ri in 0..list.len() {
                    let Some(s) = shared.get(&(pi, dir, ri)) else {
                        continue;
                    };
                    let index = ri.min(usize::from(podwire_core::policy::MAX_RULE_INDEX)) as u16;
                    let mut push = |only, ports| {
                        rules[dir].push(RulePlan {
                            policy,
                            index,
                            peers: s.peers,
                            only,
                            ports,
                        })
                    };
                    if s.numeric.is_empty() && s.named.is_empty() {
                        push(None, port_sets.intern(Vec::new()));
                        continue;
                    }
                    if dir == INGRESS {
                        // Named ports resolve on the local pod, the destination.
                        let mut ranges = s.numeric.clone();
                        for (proto, n) in &s.named {
                            if let Some(port) = resolve_named_port(&id.named_ports, n, *proto) {
                                ranges.push(port_range(*proto, port, port));
                            }
                        }
                        if !ranges.is_empty() {
                            push(None, port_sets.intern(ranges));
                        }
                    } else {
                        if !s.numeric.is_empty() {
                            push(None, port_sets.intern(s.numeric.clone()));
                        }
                        for &(only, ports) in &s.egress_named {
                            push(Some(only), ports);
                        }
                    }
                }
            }
        }
        out.rules.push(rules);
        out.isolating.push(isolating);
    }
    prefixes.sort_by_key(|c| (c.addr(), c.prefix_len()));
    prefixes.dedup();
    out.prefixes = prefixes;
    out.peer_sets = peer_sets.items;
    out.port_sets = port_sets.items;
    Ok(out)
}

impl CompiledPolicy {
    /// Storage sized for this plan.
    pub fn store(&self) -> PolicyStore {
        let rules: usize = self.rules.iter().map(|r| r[0].len() + r[1].len()).sum();
        // Bitmap peer sets are built in spare slots after their run: leave room.
        let peers: usize = self
            .peer_sets
            .iter()
            .map(|p| p.ids.len() + p.blocks.len() * self.prefixes.len())
            .sum::<usize>()
            + self.identities.len() / 32
            + 1;
        let ports: usize = self.port_sets.iter().map(Vec::len).sum();
        let addresses = self.addresses.len() + self.addresses.len() / 4 + 8;
        PolicyStore {
            addresses: vec![IpSlot::EMPTY; addresses],
            endpoint_policies: vec![EndpointPolicy::default(); self.identities.len()],
            rules: vec![Rule::EMPTY; rules],
            ports: vec![PortRange::ANY; ports],
            peers: vec![Identity(0); peers],
            prefixes: vec![Prefix::EMPTY; self.prefixes.len()],
        }
    }

    /// Storage for a policy table that lives as long as the process (the node
    /// datapath's): this plan's sizes doubled, so later growth rarely needs more.
    pub fn leaked_storage(&self) -> PolicyStorage<'static> {
        let s = self.store();
        fn leak<T: Clone>(v: Vec<T>, fill: T) -> &'static mut [T] {
            let n = (v.len() * 2).max(64);
            Box::leak(vec![fill; n].into_boxed_slice())
        }
        PolicyStorage {
            addresses: leak(s.addresses, IpSlot::EMPTY),
            endpoint_policies: leak(s.endpoint_policies, EndpointPolicy::default()),
            rules: leak(s.rules, Rule::EMPTY),
            ports: leak(s.ports, PortRange::ANY),
            peers: leak(s.peers, Identity(0)),
            prefixes: leak(s.prefixes, Prefix::EMPTY),
        }
    }

    /// Fills a policy table over `store`: every pod address with its identity, and the
    /// pods for which `local(pod index)` holds as local endpoints.
    pub fn table<'s>(
        &self,
        store: &'s mut PolicyStore,
        local: impl Fn(usize) -> bool,
    ) -> Result<PolicyTable<'s>, PolicyError> {
        let mut t = PolicyTable::new(PolicyStorage {
            addresses: &mut store.addresses,
            endpoint_policies: &mut store.endpoint_policies,
            rules: &mut store.rules,
            ports: &mut store.ports,
            peers: &mut store.peers,
            prefixes: &mut store.prefixes,
        });
        self.fill(&mut t, local)?;
        Ok(t)
    }

    /// Clears `t` and fills it with this plan: every pod address with its identity,
    /// and the pods for which `local(pod index)` holds as local endpoints. This is how
    /// both `policy check` (over a [`PolicyStore`]) and a node's datapath (its own
    /// table) get the same compiled form. On an error (a full table) `t` is left
    /// cleared-and-partial: the caller retries on bigger storage.
    pub fn fill(
        &self,
        t: &mut PolicyTable<'_>,
        local: impl Fn(usize) -> bool,
    ) -> Result<(), PolicyError> {
        t.clear();
        for c in &self.prefixes {
            t.add_prefix(*c)?;
        }
        let mut peer_sets = Vec::with_capacity(self.peer_sets.len());
        for p in &self.peer_sets {
            let blocks: Vec<IpBlock<'_>> = p
                .blocks
                .iter()
                .map(|(cidr, except)| IpBlock {
                    cidr: *cidr,
                    except,
                })
                .collect();
            peer_sets.push(t.add_peer_set(&PeerSpec {
                any: p.any,
                any_pod: false,
                identities: &p.ids,
                blocks: &blocks,
            })?);
        }
        let port_sets: Vec<PortSet> = self
            .port_sets
            .iter()
            .map(|p| t.add_port_set(p))
            .collect::<Result<_, _>>()?;
        let mut endpoint_refs = Vec::with_capacity(self.identities.len());
        for (rules, isolating) in self.rules.iter().zip(&self.isolating) {
            let mut dirs = [DirPolicy::OPEN; 2];
            for dir in [INGRESS, EGRESS] {
                for r in &rules[dir] {
                    let pick = |i: usize| peer_sets.get(i).copied().ok_or(PolicyError::PeersFull);
                    t.push_rule(&RuleSpec {
                        policy: r.policy,
                        index: r.index,
                        peers: pick(r.peers)?,
                        only: r.only.map(pick).transpose()?,
                        ports: port_sets
                            .get(r.ports)
                            .copied()
                            .ok_or(PolicyError::PortsFull)?,
                    })?;
                }
                dirs[dir] = t.finish_rule_set(isolating[dir].first().copied());
            }
            let isolated = dirs.iter().any(|d| d.isolated_by.is_some());
            endpoint_refs.push(if isolated {
                Some(t.add_endpoint_policy(EndpointPolicy {
                    ingress: dirs[INGRESS],
                    egress: dirs[EGRESS],
                })?)
            } else {
                None
            });
        }
        for &(ip, pod) in &self.addresses {
            let id = self.pod_identity.get(pod).copied();
            t.set_identity(ip, id)?;
            if local(pod) {
                let ep = id.and_then(|id| endpoint_refs.get(id.0 as usize).copied().flatten());
                t.set_endpoint(ip, ep)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::manifests::{parse, Manifests};
    use std::path::Path;

    /// Namespaces x (team=a), y (team=b); pods a, b in each; named port `http` is 80
    /// on x/a and 8080 on y/b; plus `extra` policies (YAML documents).
    fn cluster(extra: &str) -> ClusterState {
        let mut yaml = String::new();
        for (ns, team) in [("x", "a"), ("y", "b")] {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}\n"
            );
        }
        let pods = [
            (
                "x",
                "a",
                "10.0.1.1",
                "app: web",
                "[{name: http, containerPort: 80}]",
            ),
            ("x", "b", "10.0.1.2", "app: db", "[]"),
            ("y", "a", "10.0.2.1", "app: web", "[]"),
            (
                "y",
                "b",
                "10.0.2.2",
                "app: db",
                "[{name: http, containerPort: 8080}]",
            ),
        ];
        for (ns, name, ip, labels, ports) in pods {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{containers: [{{name: c, ports: {ports}}}]}}\nstatus: {{podIP: {ip}}}\n"
            );
        }
        yaml += extra;
        let mut m = Manifests::default();
        m.extend(parse(&yaml, Path::new("t.yaml")).unwrap());
        ClusterState::from_manifests(&m).unwrap()
    }

    fn policy(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
    }

    /// Allowed? for endpoints "ns/pod" or an IP.
    fn allowed(c: &ClusterState, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
        let compiled = compile(c).unwrap();
        let mut store = compiled.store();
        let t = compiled.table(&mut store, |_| true).unwrap();
        let ip = |s: &str| -> IpAddr {
            match s.split_once('/') {
                Some((ns, n)) => c.pods[c.pod_index(ns, n).unwrap()].ips[0],
                None => s.parse().unwrap(),
            }
        };
        t.evaluate_connection(ip(from), ip(to), port, proto.number())
            .is_allow()
    }

    const TCP: Protocol = Protocol::Tcp;

    #[test]
    fn no_policy_allows_everything() {
        let c = cluster("");
        assert!(allowed(&c, "x/a", "y/b", 1, Protocol::Sctp));
        assert!(allowed(&c, "192.0.2.1", "x/a", 80, TCP));
    }

    #[test]
    fn pod_selector_peer_is_in_policy_namespace_only_and_union_of_policies() {
        let c = cluster(&(policy(
            "x",
            "p1",
            "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]",
        ) + &policy(
            "x",
            "p2",
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24}}]}]",
        )));
        assert!(allowed(&c, "x/b", "x/a", 80, TCP));
        assert!(
            !allowed(&c, "y/b", "x/a", 80, TCP),
            "db of another namespace"
        );
        assert!(allowed(&c, "192.0.2.9", "x/a", 80, TCP), "union with p2");
        assert!(
            !allowed(&c, "x/a", "x/b", 80, TCP),
            "x/b isolated by p2 only"
        );
        assert!(
            allowed(&c, "x/a", "y/a", 80, TCP),
            "policies apply in their namespace"
        );
        let compiled = compile(&c).unwrap();
        let xa = compiled.pod_identity[c.pod_index("x", "a").unwrap()];
        assert_eq!(compiled.isolating[xa.0 as usize][INGRESS].len(), 2);
        assert!(compiled.isolating[xa.0 as usize][EGRESS].is_empty());
    }

    #[test]
    fn namespace_and_pod_selector_in_one_peer_are_anded_separate_peers_ored() {
        let and = cluster(&policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: db}}}]}]",
        ));
        assert!(allowed(&and, "y/b", "x/a", 80, TCP));
        assert!(!allowed(&and, "y/a", "x/a", 80, TCP));
        assert!(!allowed(&and, "x/b", "x/a", 80, TCP));
        let or = cluster(&policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: db}}}]}]",
        ));
        assert!(allowed(&or, "y/b", "x/a", 80, TCP));
        assert!(allowed(&or, "y/a", "x/a", 80, TCP));
        assert!(allowed(&or, "x/b", "x/a", 80, TCP));
        assert!(!allowed(&or, "192.0.2.1", "x/a", 80, TCP));
    }

    #[test]
    fn match_expressions_and_automatic_namespace_label() {
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}}]}]",
        ));
        assert!(allowed(&c, "y/a", "x/b", 80, TCP));
        assert!(!allowed(&c, "y/b", "x/b", 80, TCP));
        assert!(!allowed(&c, "x/a", "x/b", 80, TCP));
    }

    #[test]
    fn policy_types_default_from_egress_rules() {
        // policyTypes omitted + egress rules → Ingress and Egress.
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]",
        ));
        assert!(allowed(&c, "x/a", "x/b", 80, TCP));
        assert!(!allowed(&c, "x/a", "y/a", 80, TCP));
        assert!(!allowed(&c, "x/b", "x/a", 80, TCP), "ingress isolated too");
        // policyTypes omitted, no egress → Ingress only.
        let c = cluster(&policy("x", "p", "  podSelector: {}\n  egress: []"));
        assert!(allowed(&c, "x/a", "y/a", 80, TCP));
        assert!(!allowed(&c, "y/a", "x/a", 80, TCP));
        // Egress only: ingress stays open.
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {}\n  policyTypes: [Egress]",
        ));
        assert!(allowed(&c, "y/a", "x/a", 80, TCP));
        assert!(!allowed(&c, "x/a", "y/a", 80, TCP));
    }

    #[test]
    fn ports_protocol_default_end_port_and_protocol_only() {
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 1000, endPort: 1002, protocol: UDP}, {protocol: SCTP}]}]",
        ));
        assert!(allowed(&c, "y/a", "x/a", 80, TCP));
        assert!(!allowed(&c, "y/a", "x/a", 80, Protocol::Udp));
        assert!(allowed(&c, "y/a", "x/a", 1002, Protocol::Udp));
        assert!(!allowed(&c, "y/a", "x/a", 1003, Protocol::Udp));
        assert!(allowed(&c, "y/a", "x/a", 7, Protocol::Sctp));
        assert!(
            allowed(&c, "192.0.2.1", "x/a", 80, TCP),
            "no from: every peer"
        );
    }

    #[test]
    fn named_ports_resolve_on_the_destination_pod() {
        // Ingress: on the local pod (x/a has http=80, x/b has none).
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]",
        ));
        assert!(allowed(&c, "y/a", "x/a", 80, TCP));
        assert!(!allowed(&c, "y/a", "x/a", 8080, TCP));
        assert!(!allowed(&c, "y/a", "x/b", 80, TCP));
        assert!(
            !allowed(&c, "y/a", "x/a", 80, Protocol::Udp),
            "name+protocol"
        );
        // Egress: on each destination pod.
        let c = cluster(&policy(
            "y",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: http}]}]",
        ));
        assert!(allowed(&c, "y/a", "x/a", 80, TCP));
        assert!(!allowed(&c, "y/a", "x/a", 8080, TCP));
        assert!(allowed(&c, "y/a", "y/b", 8080, TCP));
        assert!(!allowed(&c, "y/a", "y/b", 80, TCP));
        assert!(!allowed(&c, "y/a", "x/b", 80, TCP));
        assert!(!allowed(&c, "y/a", "192.0.2.1", 80, TCP));
    }

    #[test]
    fn ip_block_with_except_matches_pods_and_external_addresses() {
        let c = cluster(&policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, {ipBlock: {cidr: 192.0.2.0/24}}]}]",
        ));
        assert!(allowed(&c, "x/a", "x/b", 80, TCP));
        assert!(!allowed(&c, "x/a", "y/a", 80, TCP));
        assert!(allowed(&c, "x/a", "192.0.2.77", 80, TCP));
        assert!(!allowed(&c, "x/a", "198.51.100.1", 80, TCP));
    }

    fn error_of(spec: &str) -> String {
        compile(&cluster(&policy("x", "bad", spec)))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn invalid_policies_are_rejected_naming_object_and_field() {
        let cases = [
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: 81, endPort: 80}]}]",
                "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 90}]}]",
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{endPort: 90}]}]",
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]",
                "spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                "  podSelector: {}\n  ingress: [{ports: [{port: Http_Port}]}]",
                "spec.ingress[0].ports[0].port: Invalid value: \"Http_Port\"",
            ),
            (
                "  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: ICMP}]}]",
                "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]",
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]",
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
                "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{}]}]",
                "spec.ingress[0].from[0]: Required value: must specify a peer",
            ),
            (
                "  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
                "spec.podSelector.matchExpressions[0].operator: Unsupported value: \"Equals\"",
            ),
            (
                "  podSelector: {}\n  egress: [{to: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: []}]}}]}]",
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values: Required value",
            ),
            (
                "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: team, operator: Exists, values: [a]}]}}]}]",
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: Forbidden",
            ),
            (
                "  podSelector: {}\n  policyTypes: [Ingress, Outgress]",
                "spec.policyTypes[1]: Unsupported value: \"Outgress\": supported values: \"Ingress\", \"Egress\"",
            ),
        ];
        for (spec, want) in cases {
            let e = error_of(spec);
            assert!(
                e.starts_with("NetworkPolicy x/bad is invalid: ") && e.contains(want),
                "{spec}\n got: {e}\nwant: {want}"
            );
        }
    }
}

//! Enforcement in the running agent: NetworkPolicy and Services from the cluster
//! state into the node's datapath.
//!
//! Design note: every event that can change what the datapath must enforce — the
//! agent's start, a cluster-state reload (a policy, a label, a namespace, a pod, a
//! service), a pod ADD or DEL on this node — calls [`Shared::enforce`], which
//! recompiles the node's policy with the one compiler (cluster-wide identities, this
//! node's attached pods as endpoints) and refills the datapath's policy table on the
//! worker, then installs the service plan if it changed. A full refill is simple and,
//! for clusters of the size one agent serves, takes milliseconds (measured and shown
//! by `podwire status`); the core re-evaluates tracked connections at the next packet
//! (a new policy epoch), so a change cuts what it no longer allows and keeps what it
//! still allows. It runs under the agent's lock, so a pod ADD returns only after its
//! policy is in force: a new pod is never reachable unpoliced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::state::Shared;
use crate::api::PodRef;
use crate::control::node_policy::compile_for_node;
use crate::netlink::Netlink;

/// What the last enforcement did.
#[derive(Debug, Clone, Default)]
pub struct EnforceStatus {
    /// Policies compiled.
    pub policies: usize,
    /// Identities compiled.
    pub identities: usize,
    /// Local endpoints.
    pub local_pods: usize,
    /// Time to compile the node's policy.
    pub compile: Duration,
    /// Time to refill the datapath's table (on the worker).
    pub fill: Duration,
    /// Compile plus install, as seen by the agent.
    pub total: Duration,
    /// Service ports installed.
    pub services: usize,
    /// Installations done.
    pub count: u64,
    /// The last error (policy or services), if any.
    pub error: Option<String>,
}

impl<N: Netlink> Shared<N> {
    /// Compiles and installs the node's policy and services into the datapath.
    pub async fn enforce(&mut self) {
        let started = Instant::now();
        let local: Vec<(PodRef, std::net::Ipv4Addr)> = self
            .pods
            .ipam()
            .attachments()
            .filter_map(|a| Some((a.pod.clone()?, a.ip)))
            .collect();
        let policy = match compile_for_node(&self.cluster.view.state, &local) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                // Cannot happen for a view that loaded (it validated the policies).
                tracing::error!(error = %e, "compiling NetworkPolicy");
                self.enforcement.error = Some(e.to_string());
                return;
            }
        };
        let compile = started.elapsed();
        // The cluster DNS ClusterIP is answered by the agent's DNS server, never DNAT'ed.
        let plan = match &self.dns {
            Some(dns) => dns.exclude_from_services(&self.cluster.view.services),
            None => self.cluster.view.services.clone(),
        };
        let Some(dp) = self.pods.dataplane_mut() else {
            return;
        };
        let mut errors = Vec::new();
        let fill = match dp.install_policy(policy.clone()).await {
            Ok(r) => {
                if r.grew {
                    tracing::info!("datapath policy table grown");
                }
                r.fill
            }
            Err(e) => {
                errors.push(e);
                Duration::ZERO
            }
        };
        let services = plan.entries.len();
        errors.extend(dp.install_services(plan).await);
        let total = started.elapsed();
        let s = &mut self.enforcement;
        s.policies = policy.compiled.policies.len();
        s.identities = policy.compiled.identities.len();
        s.local_pods = local.len();
        s.compile = compile;
        s.fill = fill;
        s.total = total;
        s.services = services;
        s.count += 1;
        s.error = (!errors.is_empty()).then(|| errors.join("; "));
        for e in &errors {
            tracing::error!(error = %e, "installing into the datapath");
        }
        tracing::info!(
            policies = s.policies,
            identities = s.identities,
            local_pods = s.local_pods,
            services,
            compile_us = compile.as_micros() as u64,
            fill_us = fill.as_micros() as u64,
            total_us = total.as_micros() as u64,
            "policy and services installed"
        );
    }
}

//! Cluster DNS served by the node agent: the Kubernetes DNS specification for the
//! cluster zone, everything else forwarded, on a node-local address and on the
//! cluster DNS Service's ClusterIP.
//!
//! Design note: this is the job of CoreDNS plus NodeLocal DNSCache, done inside the
//! agent that already holds the cluster state. The pieces, one per file:
//! [`config`] (settings, upstreams, loop protection), [`zone`] (an immutable
//! snapshot of every cluster name, built from a [`ClusterView`]), [`responder`]
//! (query bytes → answer bytes, on hickory-proto's message types), [`upstream`] and
//! [`cache`] (forwarding with CoreDNS's cache semantics), [`server`] (UDP sockets
//! with SO_REUSEPORT and TCP listeners) and [`stats`].
//!
//! Both listen addresses are put on the node's `lo` (this agent runs in the node's
//! network namespace). Pods reach them through their default route: the datapath
//! hands every destination that is not a pod, a node or a service frontend to the
//! host port, and the host delivers locally. The cluster DNS ClusterIP is taken out
//! of the service table ([`DnsServer::exclude_from_services`]), so DNS is never
//! DNAT'ed: no NAT entry exists whose insertion could race (the conntrack race
//! behind Kubernetes' "5-second DNS delay"), and the answer comes straight from the
//! address the pod asked.

pub mod cache;
pub mod config;
pub mod responder;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net};
use tokio::task::JoinHandle;

use crate::api::StatusLine;
use crate::control::node_view::ClusterView;
use crate::control::services::ServicePlan;
use crate::netlink::{LinkChange, Netlink, Ns};

pub use config::DnsConfig;
use responder::Responder;
use server::Context;
use upstream::Upstream;
use zone::Zone;

/// The DNS port.
pub const PORT: u16 = 53;

/// The running DNS server.
pub struct DnsServer {
    config: DnsConfig,
    context: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Puts the listen addresses on the node's `lo` and starts serving; cluster
    /// names get SERVFAIL until the first [`DnsServer::publish`].
    pub async fn start<N: Netlink>(config: DnsConfig, nl: &N) -> Result<DnsServer> {
        nl.set_link(
            &Ns::Node,
            "lo",
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .context("bringing lo up for the DNS addresses")?;
        for ip in config.listen_addresses() {
            let net = Ipv4Net::new(ip, 32).expect("a /32 is valid");
            nl.add_address(&Ns::Node, "lo", IpNet::V4(net))
                .await
                .with_context(|| format!("adding the DNS address {ip}/32 to lo"))?;
        }
        let addrs: Vec<SocketAddr> = config
            .listen_addresses()
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), PORT))
            .collect();
        DnsServer::serve(config, &addrs)
    }

    /// Serves on `addrs` (already local addresses) without touching any device.
    pub fn serve(config: DnsConfig, addrs: &[SocketAddr]) -> Result<DnsServer> {
        let context = Arc::new(Context::new(
            Responder::new(config.domain.clone()),
            Upstream::new(
                config.upstreams.clone(),
                config.upstream_timeout,
                config.cache_entries,
            ),
        ));
        let mut tasks = Vec::new();
        for addr in addrs {
            let udp = server::bind_udp(*addr, config.udp_sockets)
                .with_context(|| format!("binding DNS UDP {addr}"))?;
            tasks.extend(
                udp.into_iter()
                    .map(|s| server::spawn_udp(s, context.clone())),
            );
            let tcp = server::bind_tcp(*addr).with_context(|| format!("binding DNS TCP {addr}"))?;
            tasks.push(server::spawn_tcp(tcp, context.clone()));
        }
        tracing::info!(
            node_local = %config.node_local,
            cluster_ip = %config.cluster_ip,
            domain = %config.domain,
            upstreams = ?config.upstreams,
            "cluster DNS serving"
        );
        Ok(DnsServer {
            config,
            context,
            tasks,
        })
    }

    /// The settings.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Builds the zone of `view` and makes it the one queries see.
    pub fn publish(&self, view: &ClusterView) {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let zone = Zone::build(
            view,
            &self.config.domain,
            self.config.ttl,
            self.config.cluster_ip,
            serial,
        );
        tracing::debug!(
            services = zone.service_count(),
            names = zone.name_count(),
            "DNS zone published"
        );
        self.context.responder.publish(zone);
    }

    /// `plan` without the cluster DNS ClusterIP's service ports (see
    /// [`exclude_cluster_dns`]).
    pub fn exclude_from_services(&self, plan: &ServicePlan) -> ServicePlan {
        exclude_cluster_dns(plan, self.config.cluster_ip)
    }

    /// The `DNS` line of `podwire status`.
    pub fn status(&self) -> StatusLine {
        let stats = self.context.responder.stats().snapshot();
        let (state, zone) = match self.context.responder.zone() {
            Some(z) => (
                "Ok",
                format!("{} services, {} names", z.service_count(), z.name_count()),
            ),
            None => ("Warning", "waiting for the first cluster sync".to_string()),
        };
        StatusLine {
            subsystem: "DNS".into(),
            state: state.into(),
            detail: format!(
                "{}:53 and {}:53, zone {} ({zone}); {stats}",
                self.config.node_local, self.config.cluster_ip, self.config.domain
            ),
        }
    }
}

/// `plan` without the service ports that have `dns_ip` as a frontend, renumbered
/// densely: that address is answered by the DNS server, never DNAT'ed.
pub fn exclude_cluster_dns(plan: &ServicePlan, dns_ip: std::net::Ipv4Addr) -> ServicePlan {
    let dns = IpAddr::V4(dns_ip);
    let mut out = ServicePlan::default();
    for e in &plan.entries {
        if e.frontends.iter().any(|f| f.addr == dns) {
            continue;
        }
        let mut e = e.clone();
        let id = podwire_core::service::ServiceId(out.entries.len() as u16);
        e.id = id;
        for f in &mut e.frontends {
            f.service = id;
        }
        out.entries.push(e);
    }
    out
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::view;

    #[test]
    fn the_cluster_dns_ip_leaves_the_service_table() {
        let yaml = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]}
---
apiVersion: v1
kind: Service
metadata: {name: z, namespace: zz}
spec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}
";
        let plan = view(yaml).services;
        assert_eq!(plan.entries.len(), 4);
        let out = exclude_cluster_dns(&plan, config::DEFAULT_CLUSTER_DNS_IP);
        let names: Vec<&str> = out.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["default/a:80", "zz/z:80"]);
        for (i, e) in out.entries.iter().enumerate() {
            assert_eq!(e.id.0 as usize, i);
            assert!(e.frontends.iter().all(|f| f.service == e.id));
        }
    }
}

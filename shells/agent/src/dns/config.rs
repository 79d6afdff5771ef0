//! The DNS server's settings, the upstream resolvers, and the checks that refuse a
//! configuration that cannot work.
//!
//! Design note: every setting is validated once, at start-up, into [`DnsConfig`], so
//! the serving tasks never meet a bad value. Upstreams come from `--dns-upstream`
//! or, by default, from the node's `/etc/resolv.conf` (its `nameserver` lines, as
//! CoreDNS's `forward . /etc/resolv.conf` reads them). An upstream that is one of
//! our own listen addresses would make every unknown name loop between the server
//! and itself until the client gives up — the start-up error says which one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::rr::Name;

/// NodeLocal DNSCache's link-local address, the default node-local listen address.
pub const DEFAULT_NODE_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// The kube-dns Service's conventional ClusterIP.
pub const DEFAULT_CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The default TTL of cluster records, in seconds (CoreDNS's default).
pub const DEFAULT_TTL: u32 = 5;

/// A configuration the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An upstream is one of our own listen addresses.
    #[error("DNS upstream {upstream} is one of this server's own listen addresses ({listen}): every name outside the cluster domain would loop; set --dns-upstream to a real resolver")]
    Loop {
        /// The upstream.
        upstream: SocketAddr,
        /// Our listen addresses.
        listen: String,
    },
    /// The cluster domain is not a valid DNS name.
    #[error("invalid --cluster-domain {domain:?}: {reason}")]
    Domain {
        /// What was given.
        domain: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The two listen addresses are the same.
    #[error("--dns-address and --cluster-dns-ip are both {0}; they must differ")]
    SameAddress(Ipv4Addr),
    /// A setting out of range.
    #[error("{0}")]
    Range(String),
}

/// The DNS server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The node-local address pods are told to use.
    pub node_local: Ipv4Addr,
    /// The cluster DNS Service's ClusterIP, answered locally (no NAT).
    pub cluster_ip: Ipv4Addr,
    /// The cluster domain, as an absolute name (`cluster.local.`).
    pub domain: Name,
    /// TTL of cluster records.
    pub ttl: u32,
    /// Upstream resolvers for names outside the cluster domain, in order.
    pub upstreams: Vec<SocketAddr>,
    /// UDP sockets per listen address (SO_REUSEPORT).
    pub udp_sockets: usize,
    /// Entries of the upstream answer cache.
    pub cache_entries: usize,
    /// How long one upstream gets to answer before the next is tried.
    pub upstream_timeout: Duration,
}

/// The `nameserver` lines of a resolv.conf text, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The upstreams of the resolv.conf at `path` (none if it cannot be read).
pub fn resolv_conf_upstreams(path: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// Parses an upstream: `IP` (port 53) or `IP:port`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("invalid DNS upstream {text:?}: expected IP or IP:port"))
}

impl DnsConfig {
    /// Validates the settings into a configuration.
    pub fn new(
        node_local: Ipv4Addr,
        cluster_ip: Ipv4Addr,
        domain: &str,
        ttl: u32,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsConfig, ConfigError> {
        let bad = |reason: &str| ConfigError::Domain {
            domain: domain.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = domain.trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        let mut name = Name::from_ascii(trimmed).map_err(|e| bad(&e.to_string()))?;
        name.set_fqdn(true);
        if name.num_labels() == 0 {
            return Err(bad("empty"));
        }
        if node_local == cluster_ip {
            return Err(ConfigError::SameAddress(node_local));
        }
        if ttl > 3600 {
            return Err(ConfigError::Range(format!(
                "--dns-ttl {ttl} is out of range 0..=3600"
            )));
        }
        let config = DnsConfig {
            node_local,
            cluster_ip,
            domain: name.to_lowercase(),
            ttl,
            upstreams,
            udp_sockets: 2,
            cache_entries: 10_000,
            upstream_timeout: Duration::from_secs(2),
        };
        config.check_loops()?;
        Ok(config)
    }

    /// Both listen addresses.
    pub fn listen_addresses(&self) -> [Ipv4Addr; 2] {
        [self.node_local, self.cluster_ip]
    }

    fn check_loops(&self) -> Result<(), ConfigError> {
        let listen = self.listen_addresses();
        for u in &self.upstreams {
            let ours = match u.ip() {
                IpAddr::V4(ip) => listen.contains(&ip) && u.port() == 53,
                IpAddr::V6(_) => false,
            };
            if ours {
                return Err(ConfigError::Loop {
                    upstream: *u,
                    listen: format!("{}:53, {}:53", listen[0], listen[1]),
                });
            }
        }
        Ok(())
    }

    /// The search path of a pod in `namespace`, as kubelet writes it.
    pub fn search_path(&self, namespace: &str) -> Vec<String> {
        let zone = self.domain.to_string();
        let zone = zone.trim_end_matches('.');
        vec![
            format!("{namespace}.svc.{zone}"),
            format!("svc.{zone}"),
            zone.to_string(),
        ]
    }

    /// The CNI result's `dns` for a pod in `namespace`: our node-local address, the
    /// Kubernetes search path and `ndots:5`.
    pub fn pod_dns(&self, namespace: &str) -> crate::cni::spec::Dns {
        crate::cni::spec::Dns {
            nameservers: vec![self.node_local.to_string()],
            domain: None,
            search: self.search_path(namespace),
            options: vec!["ndots:5".to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstreams: Vec<SocketAddr>) -> Result<DnsConfig, ConfigError> {
        DnsConfig::new(
            DEFAULT_NODE_LOCAL,
            DEFAULT_CLUSTER_DNS_IP,
            DEFAULT_CLUSTER_DOMAIN,
            DEFAULT_TTL,
            upstreams,
        )
    }

    #[test]
    fn resolv_conf_nameservers_become_upstreams() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:2\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn an_upstream_that_is_ourselves_is_refused() {
        let e = config(vec!["169.254.20.10:53".parse().unwrap()]).unwrap_err();
        assert!(
            e.to_string().contains("169.254.20.10:53") && e.to_string().contains("loop"),
            "{e}"
        );
        assert!(config(vec![parse_upstream("10.96.0.10").unwrap()]).is_err());
        // The same address on another port is another server.
        assert!(config(vec!["169.254.20.10:5353".parse().unwrap()]).is_ok());
    }

    #[test]
    fn domain_and_ranges_are_checked() {
        let c = config(vec![]).unwrap();
        assert_eq!(c.domain.to_string(), "cluster.local.");
        assert!(DnsConfig::new(DEFAULT_NODE_LOCAL, DEFAULT_CLUSTER_DNS_IP, "", 5, vec![]).is_err());
        assert!(DnsConfig::new(
            DEFAULT_NODE_LOCAL,
            DEFAULT_CLUSTER_DNS_IP,
            "bad..domain",
            5,
            vec![]
        )
        .is_err());
        assert!(DnsConfig::new(DEFAULT_NODE_LOCAL, DEFAULT_NODE_LOCAL, "x", 5, vec![]).is_err());
        assert!(parse_upstream("nope").is_err());
        assert_eq!(
            parse_upstream("127.0.0.1:5300").unwrap(),
            "127.0.0.1:5300".parse().unwrap()
        );
    }

    #[test]
    fn pods_get_the_kubernetes_search_path() {
        let d = config(vec![]).unwrap().pod_dns("prod");
        assert_eq!(d.nameservers, vec!["169.254.20.10"]);
        assert_eq!(
            d.search,
            vec![
                "prod.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(d.options, vec!["ndots:5"]);
    }
}

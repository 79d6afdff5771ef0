//! Connecting to an etcd cluster: one member at a time, rotating on failure.
//!
//! Design note: `etcd-client` balances over the endpoints it is given but does not
//! fail over: a request sent to a dead, stopped or partitioned member waits for it.
//! So podwire connects to one member at a time, proves the connection with a
//! request that needs a leader (`require_leader`, so a member cut off from the
//! quorum refuses instead of serving stale reads), and on any failure moves to the
//! next endpoint, backing off exponentially once every member has been tried. Every
//! request carries a timeout and the HTTP/2 connection pings its peer, so a member
//! that stops answering (SIGSTOP, a partition) turns into an error within seconds
//! rather than a hung watch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest back-off between rounds over every endpoint.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://10.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's data.
    pub prefix: String,
    /// CA bundle that signed the members' certificates.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// Checks the endpoints and that certificate and key come together.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            bail!("--etcd-endpoints: at least one endpoint is needed");
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("--etcd-endpoints: {e:?} is not an http:// or https:// URL");
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            bail!("--etcd-cert and --etcd-key go together");
        }
        Ok(())
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if self.cacert.is_some() || self.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cacert {
                let pem =
                    std::fs::read(ca).with_context(|| format!("--etcd-cacert {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                let c = std::fs::read(cert)
                    .with_context(|| format!("--etcd-cert {}", cert.display()))?;
                let k =
                    std::fs::read(key).with_context(|| format!("--etcd-key {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }
}

/// Connects to the members in turn, starting after the one used last.
pub struct Connector {
    config: EtcdConfig,
    next: usize,
    failed_rounds: u32,
}

impl Connector {
    /// A connector over `config`'s endpoints.
    pub fn new(config: EtcdConfig) -> Connector {
        Connector {
            config,
            next: 0,
            failed_rounds: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// One attempt on the next endpoint: a client that has answered a request that
    /// needs a leader, or the reason that endpoint is not usable.
    pub async fn try_next(&mut self) -> Result<(String, Client)> {
        let endpoint = self.config.endpoints[self.next % self.config.endpoints.len()].clone();
        self.next += 1;
        let attempt = async {
            let mut client = Client::connect([endpoint.as_str()], Some(self.config.options()?))
                .await
                .map_err(anyhow::Error::from)?;
            // A linearizable read: answered only by a member with a leader.
            client.get("podwire-probe", None).await?;
            Ok::<_, anyhow::Error>(client)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok(c)) => {
                self.failed_rounds = 0;
                Ok((endpoint, c))
            }
            Ok(Err(e)) => Err(e).with_context(|| format!("etcd {endpoint}")),
            Err(_) => bail!("etcd {endpoint}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// Tries every endpoint once, starting after the one connected last (so a
    /// session that failed moves to the next member); on failure sleeps the back-off
    /// and returns the last reason.
    pub async fn connect_round(&mut self) -> Result<(String, Client)> {
        let mut last = None;
        for _ in 0..self.config.endpoints.len() {
            match self.try_next().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "etcd endpoint unusable");
                    last = Some(e);
                }
            }
        }
        self.failed_rounds += 1;
        tokio::time::sleep(backoff(self.failed_rounds)).await;
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoints")))
    }
}

/// The pause after `failures` failures in a row: 100 ms doubling up to
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(failures.min(6))).min(MAX_BACKOFF)
}

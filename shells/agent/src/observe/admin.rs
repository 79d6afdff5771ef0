//! The agent's HTTP endpoints: Prometheus metrics, liveness and readiness.
//!
//! Design note: two listeners, as operators expect from node agents: metrics on
//! `--metrics-address` (scraped from outside the node, so usually on all
//! addresses) and health on `--admin-address` (probed by the kubelet, loopback by
//! default). Both answer from the same shared state the unix-socket API uses, so
//! `curl /metrics` and `podwire metrics` print the same text. `/healthz` says the
//! process serves; `/readyz` says the node forwards (the dataplane worker answers),
//! with the reason in the body when it does not.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;

use crate::agent::state::Shared;
use crate::netlink::Netlink;
use crate::observe::metrics::to_text_format;

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Node<N> = Arc<Mutex<Shared<N>>>;

/// OpenMetrics to a client that asks for it (Prometheus does), the 0.0.4 text
/// format to everyone else.
async fn metrics<N: Netlink + Send + Sync + 'static>(
    State(node): State<Node<N>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let text = node.lock().await.metrics();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], text)
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_text_format(&text),
        )
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<N: Netlink + Send + Sync + 'static>(
    State(node): State<Node<N>>,
) -> (StatusCode, String) {
    match node.lock().await.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Binds both listeners (so a taken port is a start-up error) and serves them
/// until the agent stops.
pub async fn serve<N: Netlink + Send + Sync + 'static>(
    metrics_address: Option<SocketAddr>,
    admin_address: Option<SocketAddr>,
    node: Node<N>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut servers = Vec::new();
    if let Some(addr) = metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let app = Router::new()
            .route("/metrics", get(metrics::<N>))
            .with_state(node.clone());
        servers.push((listener, app));
    }
    if let Some(addr) = admin_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin address {addr}"))?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz::<N>))
            .route("/metrics", get(metrics::<N>))
            .with_state(node.clone());
        servers.push((listener, app));
    }
    Ok(tokio::spawn(async move {
        let runs = servers
            .into_iter()
            .map(|(listener, app)| async move { axum::serve(listener, app).await });
        for r in futures::future::join_all(runs).await {
            if let Err(e) = r {
                tracing::error!(error = %e, "admin HTTP server stopped");
            }
        }
    }))
}

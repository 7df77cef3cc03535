//! The admin HTTP server on one port: `/metrics` (canaryd's own metrics, see [`metrics`]),
//! `/healthz` (the process serves) and `/readyz` (the watch caches have synced). It owns
//! the registry and the readiness flag; it never talks to Kubernetes or Prometheus itself.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use jiff::Timestamp;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::analysis::LookCounts;
use crate::api::Canary;
use crate::cluster::MetricsSource;

pub use metrics::Metrics;

/// Set once the controller's caches have synced; `/readyz` answers 200 from then on.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the admin server serves and the controller fills in.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    registry: Arc<Registry>,
}

impl Admin {
    /// canaryd's metrics, registered, and a readiness flag that is not yet set.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        Self {
            metrics,
            readiness: Readiness::default(),
            registry: Arc::new(registry),
        }
    }

    /// The `/metrics` page as Prometheus scrapes it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Binds `listen` and serves in the background; the returned address is the bound one
    /// (port 0 picks a free port).
    pub async fn serve(&self, listen: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the admin server stopped");
            }
        });
        tracing::info!(%addr, "admin server: /metrics, /healthz, /readyz");
        Ok((addr, task))
    }
}

impl Default for Admin {
    fn default() -> Self {
        Self::new()
    }
}

async fn metrics_page(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        admin.encode(),
    )
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n")
    }
}

/// A [`MetricsSource`] that times every look's fetch and counts the failed ones.
pub struct TimedSource {
    pub inner: Arc<dyn MetricsSource>,
    pub metrics: Arc<Metrics>,
}

impl MetricsSource for TimedSource {
    fn counts<'a>(
        &'a self,
        canary: &'a Canary,
        window_end: Timestamp,
        window: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, String>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.counts(canary, window_end, window).await;
            self.metrics
                .prometheus_query(started.elapsed(), result.is_ok());
            result
        })
    }
}

#[cfg(test)]
mod tests;

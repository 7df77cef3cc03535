//! The admin HTTP server on one port: `/metrics` (canaryd's own metrics), `/healthz` (the
//! process serves), `/readyz` (the watch caches have synced) and the rollout page (`/`,
//! `/rollouts/{namespace}/{name}`, see [`page`]), drawn from the controller's cache and the
//! looks it hands to the [`board`]. Each component registers
//! its own metrics in the one registry (the controller's in [`metrics`], telemetry's and
//! notify's in theirs); the server only serves it. It never talks to Kubernetes or
//! Prometheus itself.

pub mod board;
pub mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::notify::DeliveryMetrics;
use crate::telemetry::QueryMetrics;

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
    /// The controller's metrics.
    pub metrics: Arc<Metrics>,
    /// Telemetry's: every look's fetch from Prometheus.
    pub queries: QueryMetrics,
    /// notify's: every delivery.
    pub deliveries: DeliveryMetrics,
    pub readiness: Readiness,
    /// What the rollout page draws besides the Canaries' statuses.
    pub board: Arc<board::Board>,
    registry: Arc<Registry>,
}

impl Admin {
    /// Every component's metrics, registered, and a readiness flag that is not yet set.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        Self {
            metrics: Arc::new(Metrics::register(&mut registry)),
            queries: QueryMetrics::register(&mut registry),
            deliveries: DeliveryMetrics::register(&mut registry),
            readiness: Readiness::default(),
            board: Arc::default(),
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
            .route("/", get(page::list))
            .route("/rollouts/{namespace}/{name}", get(page::rollout))
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the admin server stopped");
            }
        });
        tracing::info!(%addr, "admin server: /metrics, /healthz, /readyz, rollout page at /");
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

#[cfg(test)]
mod tests;

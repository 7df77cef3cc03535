//! Kubernetes I/O: the controller that watches Canaries (and the Deployments and
//! VirtualServices they name), observes, asks the pure core to decide, and acts: weights,
//! prod's template, gates, status, Events. It never decides anything itself.

pub mod boundaries;
pub mod commands;
pub mod controller;
pub mod decode;
pub mod gates;
pub mod leader;
pub mod reconcile;
pub mod traffic;
pub mod trim;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::Client;

use crate::api::virtual_service::VirtualService;

pub use crate::telemetry::MetricsSource;
pub use leader::Leadership;

/// The one field manager for everything canaryd writes.
pub const FIELD_MANAGER: &str = "canaryd";
/// Finalizer that lets canaryd restore prod's traffic before a Canary goes away.
pub const FINALIZER: &str = "canaryd.dev/restore-traffic";

/// Every I/O handle the reconciler uses, built once.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Arc<dyn MetricsSource>,
    pub recorder: Recorder,
    pub gates: gates::GateRunner,
    pub leader: Leadership,
    pub deployments: Store<Deployment>,
    pub virtual_services: Store<VirtualService>,
    /// Sends rollout events to people; `Context::new` starts without receivers.
    pub notifier: crate::notify::Notifier,
    /// Default time between two looks.
    pub interval: Duration,
    /// Prometheus's scrape interval of the mesh's metrics: each look's window ends this long
    /// before now. Zero in [`Context::new`]; the daemon sets `prometheus.scrapeInterval`.
    pub scrape_interval: Duration,
    /// The clock; tests pin it.
    pub now: fn() -> Timestamp,
    /// Per Canary uid, the resourceVersions our latest status writes were based on (two when
    /// a weight write was confirmed). The cache lags behind our own writes; a reconcile that
    /// still sees such a version would decide again on an old status (and fold the same
    /// telemetry twice), so it waits instead.
    pub written: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
    /// canaryd's own metrics (the admin server exports them).
    pub exported: Arc<crate::server::Metrics>,
    /// Every look, for the rollout page (the admin server draws it).
    pub board: Arc<crate::server::board::Board>,
    /// Every Canary as stored, undecoded (see [`decode`]), to find which one owns a route
    /// (see [`boundaries::route_owner`]).
    pub canaries: Store<kube::api::DynamicObject>,
    /// Which objects outside its namespace a Canary may drive, and the grants that allow it.
    pub references: crate::config::ReferencePolicy,
    pub grants: boundaries::Grants,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<dyn MetricsSource>,
        leader: Leadership,
        deployments: Store<Deployment>,
        virtual_services: Store<VirtualService>,
        interval: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: "canaryd".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            // The default egress policy; the daemon sets the config's (`controller::run_with`).
            gates: gates::GateRunner::new(crate::egress::EgressPolicy::default()),
            leader,
            deployments,
            virtual_services,
            notifier: crate::notify::Notifier::disabled(),
            interval,
            scrape_interval: Duration::ZERO,
            now: Timestamp::now,
            written: Arc::default(),
            exported: Arc::new(crate::server::Metrics::unregistered()),
            board: Arc::default(),
            canaries: kube::runtime::reflector::store::Writer::new(decode::api_resource())
                .as_reader(),
            // The secure default: cross-namespace references need grants, and none is seen.
            references: crate::config::ReferencePolicy::Granted,
            grants: boundaries::Grants::NotInstalled,
        }
    }
}

/// How long one API write may take; past it the round fails and holds, and the next round
/// decides again (a hung connection must not stall a Canary forever).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl Context {
    /// `Err(NotLeader)` unless this replica leads: only the leader acts.
    pub(crate) fn leading(&self) -> Result<(), Error> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Runs one API write while this replica leads, for at most [`WRITE_TIMEOUT`].
    pub(crate) async fn write<T, E>(
        &self,
        what: &'static str,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, Error>
    where
        Error: From<E>,
    {
        self.leading()?;
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Timeout { what }),
        }
    }
}

/// Why a reconcile did not finish. Every kind holds the Canary where it is and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Traffic(#[from] traffic::TrafficError),
    #[error("promotion: {0}")]
    Promotion(#[from] workload::PromotionError),
    #[error("promotion: spec.promotion.webhook is missing; set it, or use another promotion.mode")]
    NoPromotionWebhook,
    #[error("promotion webhook: {0}")]
    PromotionWebhook(#[source] gates::WebhookError),
    #[error("promotion webhook not called: {0}")]
    SigningKey(String),
    #[error("not the leader; not writing")]
    NotLeader,
    #[error("writing {what} took longer than {WRITE_TIMEOUT:?}")]
    Timeout { what: &'static str },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A small fixed set of categories for metrics and logs (never the error's text).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api(_) => "api",
            Error::Traffic(_) => "traffic",
            Error::Promotion(_)
            | Error::NoPromotionWebhook
            | Error::PromotionWebhook(_)
            | Error::SigningKey(_) => "promotion",
            Error::NotLeader => "not_leader",
            Error::Timeout { .. } => "timeout",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

#[cfg(test)]
mod tests;

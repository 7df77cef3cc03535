//! Where the reconciler gets a look's counts: the [`MetricsSource`] trait (Prometheus in
//! production, fixed counts in tests), its Prometheus implementation, and [`Timed`], which
//! counts and times every fetch in telemetry's own metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::{QueryTarget, Telemetry, TelemetryError};
use crate::analysis::LookCounts;
use crate::api::Canary;

/// Where the counts of a look come from.
pub trait MetricsSource: Send + Sync {
    /// Counts of stage and prod over `(window_end - window, window_end]`. An `Err` is a
    /// failed query (the Canary holds), never "no traffic" (that is zero counts).
    fn counts<'a>(
        &'a self,
        canary: &'a Canary,
        window_end: Timestamp,
        window: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, TelemetryError>>;
}

impl MetricsSource for Telemetry {
    fn counts<'a>(
        &'a self,
        canary: &'a Canary,
        window_end: Timestamp,
        window: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, TelemetryError>> {
        Box::pin(async move {
            let namespace = kube::ResourceExt::namespace(canary).unwrap_or_default();
            let target = QueryTarget {
                key: (),
                spec: &canary.spec,
                namespace: &namespace,
            };
            let mut results = self.fetch(&[target], window_end, window).await;
            results
                .remove(&())
                .unwrap_or_else(|| Err(no_result(canary)))
        })
    }
}

/// The error of a fetch that came back without this Canary's counts.
pub(super) fn no_result(canary: &Canary) -> TelemetryError {
    TelemetryError::NoResult {
        canary: format!(
            "{}/{}",
            kube::ResourceExt::namespace(canary).unwrap_or_default(),
            kube::ResourceExt::name_any(canary)
        ),
    }
}

/// Telemetry's own metrics: how long a look's fetch takes and how often it fails.
#[derive(Clone)]
pub struct QueryMetrics {
    duration: Histogram,
    errors: Counter,
    queries: Counter,
    batch: Histogram,
}

impl QueryMetrics {
    /// Registers `canaryd_prometheus_query_duration_seconds`,
    /// `canaryd_prometheus_query_errors_total`, `canaryd_prometheus_queries_total` and
    /// `canaryd_look_batch_canaries` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            errors: Counter::default(),
            queries: Counter::default(),
            batch: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
        };
        let canaryd = registry.sub_registry_with_prefix("canaryd");
        canaryd.register_with_unit(
            "prometheus_query_duration",
            "Time to fetch the counts of one analysis look from Prometheus",
            Unit::Seconds,
            m.duration.clone(),
        );
        canaryd.register(
            "prometheus_query_errors",
            "Analysis looks whose Prometheus queries failed",
            m.errors.clone(),
        );
        canaryd.register(
            "prometheus_queries",
            "Queries sent to Prometheus for analysis looks (batched over the Canaries due together)",
            m.queries.clone(),
        );
        canaryd.register(
            "look_batch_canaries",
            "Canaries whose looks were read together by one batch of queries",
            m.batch.clone(),
        );
        m
    }

    /// One batch: the looks of `canaries` Canaries read with `queries` queries.
    pub fn batch(&self, canaries: usize, queries: usize) {
        self.batch.observe(canaries as f64);
        self.queries.inc_by(queries as u64);
    }

    /// One look's fetch: how long it took and whether it failed.
    pub fn observe(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        if !ok {
            self.errors.inc();
        }
    }
}

/// A [`MetricsSource`] that times every look's fetch and counts the failed ones.
pub struct Timed {
    pub inner: Arc<dyn MetricsSource>,
    pub metrics: QueryMetrics,
}

impl MetricsSource for Timed {
    fn counts<'a>(
        &'a self,
        canary: &'a Canary,
        window_end: Timestamp,
        window: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, TelemetryError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.counts(canary, window_end, window).await;
            self.metrics.observe(started.elapsed(), result.is_ok());
            result
        })
    }
}

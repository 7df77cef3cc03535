//! Looks of many Canaries read together: [`Batched`] is the [`MetricsSource`] the daemon
//! uses. Each Canary's reconcile asks for its own look's counts; the batcher gathers the
//! requests that arrive within [`LINGER`] of the first, groups them by window (end and
//! length), and reads each group with one [`Telemetry::fetch`]: one traffic query and one
//! latency query per chunk of arms, whatever the number of Canaries (custom ratio queries
//! stay per Canary). Windows end on multiples of the look interval (the reconciler aligns
//! them, see `cluster::reconcile::window_end`), so every Canary with the same interval whose
//! look is due shares a group. A failed query fails only the Canaries whose counts it
//! carries; each holds, as with a single fetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::source::no_result;
use super::{MetricsSource, QueryMetrics, QueryTarget, Telemetry, TelemetryError};
use crate::analysis::LookCounts;
use crate::api::canary::CanarySpec;
use crate::api::Canary;

/// How long the batcher waits after a request for others of the same tick. Reconciles woken
/// by the same due time arrive within milliseconds of each other; a look is a few tens of
/// milliseconds late at most.
pub const LINGER: Duration = Duration::from_millis(50);

/// Requests in one batch at most; a larger tick is read in several batches.
const MAX_BATCH: usize = 5_000;

/// One Canary's look, waiting for its batch.
struct Request {
    spec: CanarySpec,
    namespace: String,
    name: String,
    window_end: Timestamp,
    window: Duration,
    reply: oneshot::Sender<Result<LookCounts, TelemetryError>>,
}

/// A [`MetricsSource`] that reads the looks of all Canaries due at one tick together.
pub struct Batched {
    requests: mpsc::Sender<Request>,
}

impl Batched {
    /// Starts the batcher task (it ends when the last `Batched` is dropped). `metrics` counts
    /// the queries and the Canaries per batch.
    pub fn start(telemetry: Telemetry, metrics: Option<QueryMetrics>) -> Self {
        let (requests, inbox) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(Arc::new(telemetry), inbox, metrics));
        Self { requests }
    }
}

impl MetricsSource for Batched {
    fn counts<'a>(
        &'a self,
        canary: &'a Canary,
        window_end: Timestamp,
        window: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, TelemetryError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let request = Request {
                spec: canary.spec.clone(),
                namespace: kube::ResourceExt::namespace(canary).unwrap_or_default(),
                name: kube::ResourceExt::name_any(canary),
                window_end,
                window,
                reply,
            };
            if self.requests.send(request).await.is_err() {
                return Err(no_result(canary));
            }
            answer.await.unwrap_or_else(|_| Err(no_result(canary)))
        })
    }
}

async fn run(
    telemetry: Arc<Telemetry>,
    mut inbox: mpsc::Receiver<Request>,
    metrics: Option<QueryMetrics>,
) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                () = &mut linger => break,
                next = inbox.recv() => match next {
                    Some(r) => batch.push(r),
                    None => break,
                },
            }
        }
        let mut groups: HashMap<(Timestamp, Duration), Vec<Request>> = HashMap::new();
        for r in batch {
            groups.entry((r.window_end, r.window)).or_default().push(r);
        }
        for ((window_end, window), group) in groups {
            let telemetry = telemetry.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let results = read_group(&telemetry, &group, window_end, window, metrics).await;
                for (i, r) in group.into_iter().enumerate() {
                    let lost = || TelemetryError::NoResult {
                        canary: format!("{}/{}", r.namespace, r.name),
                    };
                    let _ = r
                        .reply
                        .send(results.get(&i).cloned().unwrap_or_else(|| Err(lost())));
                }
            });
        }
    }
}

/// One fetch for every request of a group (same window), by index in `group`.
async fn read_group(
    telemetry: &Telemetry,
    group: &[Request],
    window_end: Timestamp,
    window: Duration,
    metrics: Option<QueryMetrics>,
) -> HashMap<usize, Result<LookCounts, TelemetryError>> {
    let targets: Vec<QueryTarget<'_, usize>> = group
        .iter()
        .enumerate()
        .map(|(i, r)| QueryTarget {
            key: i,
            spec: &r.spec,
            namespace: &r.namespace,
        })
        .collect();
    let (results, queries) = telemetry.fetch_counted(&targets, window_end, window).await;
    if let Some(m) = metrics {
        m.batch(targets.len(), queries);
    }
    results
}

//! Telemetry: reads the per-request counts one analysis look needs (requests, 5xx errors,
//! latency histogram buckets, custom bad/total pairs) for stage and prod from Prometheus, or
//! anything serving its HTTP API (Thanos, Mimir, VictoriaMetrics). It never decides anything:
//! the counts go to `analysis`, and an error goes to the caller, which holds the Canary.
//!
//! # Batching
//! [`Batched`] (the daemon's [`MetricsSource`]) gathers the looks that the Canaries' reconciles
//! request within [`LINGER`] of each other, groups them by window, and hands each group to
//! [`Telemetry::fetch`], which takes every Canary due at one tick and issues one query per metric
//! kind for all of them (per chunk of [`MAX_ARMS_PER_QUERY`] arms): one traffic query (requests
//! and 5xx together; every Canary needs its requests), one latency query if any Canary has a
//! latency metric, and one query per
//! custom ratio metric per Canary (custom PromQL is per Canary by nature). Results are split
//! in memory by the grouping labels (`destination_service`, ...). Both arms of a Canary are
//! always in the same query, so they are read at the same instant.
//!
//! # Window alignment and exact counts
//! A look covers the window `(window_end - window, window_end]`. Every query is evaluated at
//! the fixed instant `window_end` (the `time` parameter of the query API, not "now"), so both
//! arms and all metrics cover the same time range. The built-in metrics are read as exact
//! differences of raw counter samples ([`promql::exact_count`]: the last sample at or before
//! `window_end` minus the last at or before `window_end - window`, per series, with series
//! born in the window and counter resets handled), never `increase()`: at a 15 s scrape
//! interval `increase()` extrapolates each series to the window's edges and drops the gap
//! before the next window, so its counts behave like twice a Poisson count and double the
//! evidence. Exact differences are integers, and consecutive looks (`window_end` advanced by
//! `window`) tile time: each event is counted in exactly one look. The reconciler ends each
//! window one scrape interval in the past (`prometheus.scrapeInterval`), so the window's last
//! scrape has been ingested, and looks are at least 4 scrape intervals long, so the per-pod
//! scrape instants inside a window matter little. Custom `ratio` queries are the user's PromQL:
//! they decide how they count (`{{ window }}` is the look's length).

//! # Outcomes
//! - No series (no traffic, or a metric that does not exist): `Ok` with zero counts; the
//!   analysis sees no data and continues (its noData policy decides).
//! - Prometheus down or bad PromQL: `Err(TelemetryError)`, with Prometheus's own message;
//!   the Canary holds and never advances.
//! - NaN: `Err(TelemetryError::NotANumber)`, since no count can be NaN.

mod batch;
mod client;
mod error;
pub mod promql;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;

pub use batch::{Batched, LINGER};
pub use client::{PromClient, Sample};
use error::shown_query;
pub use error::TelemetryError;
pub use promql::{ArmKey, ArmVars, Grouping, SelectBy};
pub use source::{MetricsSource, QueryMetrics, Timed};

use crate::analysis::{Bucket, LookCounts, RatioCounts};
use crate::api::canary::{CanarySpec, MetricKind, MetricSpec};
use crate::config::{MeshPreset, PrometheusConfig};

/// Arms per batched query; bounds the size of one query (and of its regex) at scale.
pub const MAX_ARMS_PER_QUERY: usize = 500;
/// Queries in flight at once, so a tick with many Canaries does not flood Prometheus.
const MAX_CONCURRENT_QUERIES: usize = 4;

/// One Canary due at this tick.
#[derive(Clone, Copy, Debug)]
pub struct QueryTarget<'a, K> {
    /// How the caller tells this Canary's result apart (e.g. namespace/name).
    pub key: K,
    pub spec: &'a CanarySpec,
    /// The Canary's namespace, the default namespace of its Deployments.
    pub namespace: &'a str,
}

impl<K> QueryTarget<'_, K> {
    fn arm(&self, env: &crate::api::canary::Environment) -> ArmVars {
        ArmVars {
            host: env.host.clone(),
            namespace: env
                .deployment
                .namespace
                .clone()
                .unwrap_or_else(|| self.namespace.to_string()),
            workload: env.deployment.name.clone(),
        }
    }

    fn arms(&self) -> (ArmVars, ArmVars) {
        (self.arm(&self.spec.stage), self.arm(&self.spec.prod))
    }
}

/// Reads look counts from Prometheus for many Canaries at once.
#[derive(Clone, Debug)]
pub struct Telemetry {
    client: PromClient,
    grouping: Grouping,
}

/// One query of a tick and what its result is for.
#[derive(Clone, Debug, PartialEq)]
struct PlannedQuery {
    promql: String,
    purpose: Purpose,
}

#[derive(Clone, Debug, PartialEq)]
enum Purpose {
    /// Requests and errors of the targets in `chunk`.
    Traffic { chunk: usize },
    /// Latency buckets of the targets in `chunk`.
    Latency { chunk: usize },
    /// One ratio metric of one target.
    Ratio { target: usize, metric: String },
}

/// All queries of one tick, and for each target where its results are.
#[derive(Debug)]
struct Plan {
    queries: Vec<PlannedQuery>,
    /// Per target: its chunk, or the error that keeps it from being queried.
    targets: Vec<Result<TargetPlan, TelemetryError>>,
}

#[derive(Debug)]
struct TargetPlan {
    chunk: usize,
    stage: ArmKey,
    prod: ArmKey,
    latency: bool,
}

impl Telemetry {
    pub fn new(config: &PrometheusConfig, mesh: MeshPreset) -> Result<Self, TelemetryError> {
        Ok(Self::with_client(
            PromClient::new(config)?,
            mesh,
            SelectBy::Host,
        ))
    }

    pub fn with_client(client: PromClient, mesh: MeshPreset, select_by: SelectBy) -> Self {
        Self {
            client,
            grouping: Grouping::new(mesh, select_by),
        }
    }

    pub fn client(&self) -> &PromClient {
        &self.client
    }

    /// The PromQL one tick issues for these targets, in order (for `--verbose` and docs).
    pub fn queries<K>(&self, targets: &[QueryTarget<'_, K>], window: Duration) -> Vec<String> {
        self.plan(targets, window)
            .queries
            .into_iter()
            .map(|q| q.promql)
            .collect()
    }

    /// The counts of stage and prod of every target over `(window_end - window, window_end]`,
    /// by target key (keys must be unique). A failed query fails only the targets whose
    /// counts it carries.
    pub async fn fetch<K: Clone + Eq + Hash>(
        &self,
        targets: &[QueryTarget<'_, K>],
        window_end: Timestamp,
        window: Duration,
    ) -> HashMap<K, Result<LookCounts, TelemetryError>> {
        self.fetch_counted(targets, window_end, window).await.0
    }

    /// [`Telemetry::fetch`], and how many queries it sent.
    pub async fn fetch_counted<K: Clone + Eq + Hash>(
        &self,
        targets: &[QueryTarget<'_, K>],
        window_end: Timestamp,
        window: Duration,
    ) -> (HashMap<K, Result<LookCounts, TelemetryError>>, usize) {
        let plan = self.plan(targets, window);
        let sent = plan.queries.len();
        let results: Vec<Result<Vec<Sample>, TelemetryError>> =
            // Futures built up front (not in a stream closure) keep `fetch` Send for callers
            // that box it.
            futures::stream::iter(
                plan.queries
                    .iter()
                    .map(|q| self.client.instant(&q.promql, window_end))
                    .collect::<Vec<_>>(),
            )
            .buffered(MAX_CONCURRENT_QUERIES)
                .collect()
                .await;
        let mut traffic = HashMap::new();
        let mut latency = HashMap::new();
        let mut ratios: HashMap<usize, Vec<_>> = HashMap::new();
        for (query, result) in plan.queries.iter().zip(results) {
            let promql = query.promql.as_str();
            match &query.purpose {
                Purpose::Traffic { chunk } => {
                    let split = result.map(|s| self.split_traffic(s));
                    traffic.insert(*chunk, (promql, split));
                }
                Purpose::Latency { chunk } => {
                    let split = result.map(|s| self.split_latency(s));
                    latency.insert(*chunk, (promql, split));
                }
                Purpose::Ratio { target, metric } => {
                    let split = result.and_then(|s| split_ratio(promql, s));
                    ratios.entry(*target).or_default().push((metric, split));
                }
            }
        }
        let mut out = HashMap::with_capacity(targets.len());
        for (i, (target, target_plan)) in targets.iter().zip(plan.targets).enumerate() {
            let counts = target_plan.and_then(|tp| {
                let mut look = LookCounts::default();
                for (arm, key) in [(&mut look.stage, &tp.stage), (&mut look.prod, &tp.prod)] {
                    let (promql, by_arm) = &traffic[&tp.chunk];
                    let by_arm = by_arm.as_ref().map_err(Clone::clone)?;
                    let (requests, errors) = by_arm.get(key).copied().unwrap_or_default();
                    if requests.is_nan() || errors.is_nan() {
                        return Err(nan(promql, key, "requests"));
                    }
                    (arm.requests, arm.errors) = (requests, errors);
                    if tp.latency {
                        let (promql, by_arm) = &latency[&tp.chunk];
                        let by_arm = by_arm.as_ref().map_err(Clone::clone)?;
                        let buckets = by_arm.get(key).cloned().unwrap_or_default();
                        if buckets.iter().any(|b| b.count.is_nan()) {
                            return Err(nan(promql, key, "latency buckets"));
                        }
                        arm.latency_buckets = buckets;
                    }
                }
                for (metric, sums) in ratios.remove(&i).unwrap_or_default() {
                    let sums = sums?;
                    let get = |name: &str| sums.get(name).copied().unwrap_or(0.0);
                    let (stage, prod) = (
                        RatioCounts {
                            bad: get("stage_bad"),
                            total: get("stage_total"),
                        },
                        RatioCounts {
                            bad: get("prod_bad"),
                            total: get("prod_total"),
                        },
                    );
                    look.stage.ratios.insert(metric.clone(), stage);
                    look.prod.ratios.insert(metric.clone(), prod);
                }
                Ok(look)
            });
            out.insert(target.key.clone(), counts);
        }
        (out, sent)
    }

    fn plan<K>(&self, targets: &[QueryTarget<'_, K>], window: Duration) -> Plan {
        let mut queries = Vec::new();
        let mut planned = Vec::with_capacity(targets.len());
        // Chunks of targets whose arms fit in one query: (arm keys, any latency metric).
        let mut chunks: Vec<(Vec<ArmKey>, bool)> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let (stage, prod) = target.arms();
            let metrics = &target.spec.analysis.metrics;
            let latency = metrics.iter().any(|m| m.kind == MetricKind::Latency);
            let ratio_queries: Result<Vec<_>, _> = metrics
                .iter()
                .filter(|m| m.kind == MetricKind::Ratio)
                .map(|metric| {
                    ratio_promql(metric, &stage, &prod, window).map(|promql| PlannedQuery {
                        promql,
                        purpose: Purpose::Ratio {
                            target: i,
                            metric: metric.name.clone(),
                        },
                    })
                })
                .collect();
            let ratio_queries = match ratio_queries {
                Ok(q) => q,
                Err(e) => {
                    planned.push(Err(e));
                    continue;
                }
            };
            queries.extend(ratio_queries);
            let (stage, prod) = (self.grouping.key(&stage), self.grouping.key(&prod));
            if chunks
                .last()
                .is_none_or(|(keys, _)| keys.len() + 2 > MAX_ARMS_PER_QUERY)
            {
                chunks.push((Vec::new(), false));
            }
            let chunk = chunks.len() - 1;
            let (keys, any_latency) = chunks.last_mut().expect("a chunk was just pushed");
            keys.extend([stage.clone(), prod.clone()]);
            *any_latency |= latency;
            planned.push(Ok(TargetPlan {
                chunk,
                stage,
                prod,
                latency,
            }));
        }
        let mut batched = Vec::new();
        for (chunk, (keys, any_latency)) in chunks.iter().enumerate() {
            let keys: Vec<&ArmKey> = keys.iter().collect();
            batched.push(PlannedQuery {
                promql: promql::traffic_query(self.grouping, &keys, window),
                purpose: Purpose::Traffic { chunk },
            });
            if *any_latency {
                batched.push(PlannedQuery {
                    promql: promql::latency_query(self.grouping, &keys, window),
                    purpose: Purpose::Latency { chunk },
                });
            }
        }
        batched.extend(queries);
        Plan {
            queries: batched,
            targets: planned,
        }
    }

    /// (requests, errors) per arm; a NaN stays in its arm's sums.
    fn split_traffic(&self, samples: Vec<Sample>) -> HashMap<ArmKey, (f64, f64)> {
        let mut out: HashMap<ArmKey, (f64, f64)> = HashMap::new();
        for s in samples {
            let Some(key) = self.grouping.series_key(&s.labels) else {
                continue;
            };
            let entry = out.entry(key).or_default();
            entry.0 += s.value;
            if s.labels.get(promql::CLASS_LABEL).map(String::as_str) == Some(promql::ERROR_CLASS) {
                entry.1 += s.value;
            }
        }
        out
    }

    /// Cumulative buckets per arm, sorted by boundary (`le` is in milliseconds). A counter
    /// reset seen in one bucket series and not another (or a custom query) can leave a bucket
    /// below the one before it; like `histogram_quantile`, counts are raised to the running
    /// maximum so the histogram stays cumulative.
    fn split_latency(&self, samples: Vec<Sample>) -> HashMap<ArmKey, Vec<Bucket>> {
        let mut out: HashMap<ArmKey, Vec<Bucket>> = HashMap::new();
        for s in samples {
            let Some(key) = self.grouping.series_key(&s.labels) else {
                continue;
            };
            let Some(le_ms) = s.labels.get("le").and_then(|le| le.parse::<f64>().ok()) else {
                tracing::warn!(labels = ?s.labels, "latency bucket without a numeric le; ignored");
                continue;
            };
            out.entry(key).or_default().push(Bucket {
                le_ms,
                count: s.value,
            });
        }
        for buckets in out.values_mut() {
            buckets.sort_by(|a, b| a.le_ms.total_cmp(&b.le_ms));
            let mut max = 0.0_f64;
            for b in buckets.iter_mut() {
                max = max.max(b.count);
                b.count = max;
            }
        }
        out
    }
}

fn nan(query: &str, key: &ArmKey, what: &str) -> TelemetryError {
    TelemetryError::NotANumber {
        query: shown_query(query),
        series: format!("{} {what}", key.0.join("/")),
    }
}

fn ratio_promql(
    metric: &MetricSpec,
    stage: &ArmVars,
    prod: &ArmVars,
    window: Duration,
) -> Result<String, TelemetryError> {
    let template = |e: String| TelemetryError::Template {
        metric: metric.name.clone(),
        message: e,
    };
    let (Some(bad), Some(total)) = (&metric.bad, &metric.total) else {
        return Err(template(
            "a ratio metric needs both `bad` and `total` PromQL".into(),
        ));
    };
    promql::ratio_query(bad, total, stage, prod, window).map_err(template)
}

/// The four labelled sums of a ratio query by `canaryd_series`.
fn split_ratio(
    promql: &str,
    samples: Vec<Sample>,
) -> Result<BTreeMap<&'static str, f64>, TelemetryError> {
    let mut out = BTreeMap::new();
    for s in samples {
        let Some(series) = s.labels.get(promql::SERIES_LABEL) else {
            continue;
        };
        let Some(name) = ["stage_bad", "stage_total", "prod_bad", "prod_total"]
            .into_iter()
            .find(|n| n == series)
        else {
            continue;
        };
        if s.value.is_nan() {
            return Err(TelemetryError::NotANumber {
                query: shown_query(promql),
                series: name.replace('_', " "),
            });
        }
        out.insert(name, s.value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stage: &str, prod: &str, metrics: &str) -> CanarySpec {
        serde_yaml_ng::from_str(&format!(
            "{{virtualService: {{name: vs}}, prod: {{host: {prod}, deployment: {{name: app}}}}, stage: {{host: {stage}, deployment: {{name: app, namespace: stage}}}}, analysis: {{metrics: {metrics}}}}}"
        ))
        .unwrap()
    }

    fn telemetry(mesh: MeshPreset) -> Telemetry {
        let config = serde_yaml_ng::from_str("{url: \"http://127.0.0.1:9\"}").unwrap();
        Telemetry::new(&config, mesh).unwrap()
    }

    const THREE: &str = r#"[{name: errors, kind: errorRate}, {name: latency, kind: latency, thresholdsMs: [250]}, {name: orders, kind: ratio, bad: "sum(increase(bad{ns='{{ namespace }}'}[{{ window }}]))", total: "sum(increase(all{ns='{{ namespace }}'}[{{ window }}]))"}]"#;

    #[test]
    fn one_canary_with_three_metrics_takes_three_queries() {
        let spec = spec("s.example", "p.example", THREE);
        let targets = [QueryTarget {
            key: 0,
            spec: &spec,
            namespace: "prod",
        }];
        let queries = telemetry(MeshPreset::Istio).queries(&targets, Duration::from_secs(30));
        assert_eq!(queries.len(), 3, "{queries:#?}");
        assert!(queries[0].starts_with("sum by (destination_service, canaryd_class)"));
        assert!(queries[1].starts_with("sum by (destination_service, le)"));
        assert!(
            queries[2].contains(r#"bad{ns='stage'}[30s]"#),
            "{}",
            queries[2]
        );
        assert!(
            queries[2].contains(r#"bad{ns='prod'}[30s]"#),
            "{}",
            queries[2]
        );
    }

    #[test]
    fn many_canaries_share_the_batched_queries_in_bounded_chunks() {
        let specs: Vec<CanarySpec> = (0..MAX_ARMS_PER_QUERY)
            .map(|i| {
                spec(
                    &format!("s{i}"),
                    &format!("p{i}"),
                    "[{name: e, kind: errorRate}]",
                )
            })
            .collect();
        let targets: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(key, spec)| QueryTarget {
                key,
                spec,
                namespace: "prod",
            })
            .collect();
        let queries = telemetry(MeshPreset::Envoy).queries(&targets, Duration::from_secs(30));
        // Two arms per Canary: MAX_ARMS_PER_QUERY / 2 Canaries per traffic query, no latency.
        assert_eq!(queries.len(), 2);
        assert!(
            queries[0].contains("(p0|p1|p10|p100|"),
            "{}",
            &queries[0][..300]
        );
        assert!(queries[1].contains(&format!("s{}", MAX_ARMS_PER_QUERY - 1)));
    }

    #[test]
    fn latency_buckets_come_out_sorted_and_cumulative() {
        let sample = |host: &str, le: &str, value: f64| Sample {
            labels: [("destination_service", host), ("le", le)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        };
        let by_arm = telemetry(MeshPreset::Istio).split_latency(vec![
            sample("a", "+Inf", 10.0),
            sample("a", "250", 9.6),
            sample("a", "100", 9.7),
            sample("b", "100", 1.0),
        ]);
        let a: Vec<(f64, f64)> = by_arm[&ArmKey(vec!["a".into()])]
            .iter()
            .map(|b| (b.le_ms, b.count))
            .collect();
        assert_eq!(a, [(100.0, 9.7), (250.0, 9.7), (f64::INFINITY, 10.0)]);
        assert_eq!(by_arm[&ArmKey(vec!["b".into()])].len(), 1);
    }

    #[tokio::test]
    async fn a_broken_template_fails_only_its_canary_before_any_query() {
        let broken = spec(
            "s",
            "p",
            r#"[{name: orders, kind: ratio, bad: "x{{ pod }}", total: "y"}]"#,
        );
        let targets = [QueryTarget {
            key: "broken",
            spec: &broken,
            namespace: "prod",
        }];
        let t = telemetry(MeshPreset::Istio);
        let plan = t.plan(&targets, Duration::from_secs(30));
        // Its chunk was never opened, so nothing is queried at all.
        assert!(plan.queries.is_empty());
        let err = plan.targets[0].as_ref().unwrap_err();
        assert_eq!(err.reason(), "template");
        assert!(
            err.to_string()
                .starts_with("metric orders: bad: unknown placeholder {{ pod }}"),
            "{err}"
        );
    }
}

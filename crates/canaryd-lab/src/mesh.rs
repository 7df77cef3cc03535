//! The simulated Istio mesh, pure part: given the prod/stage weights and how each version
//! behaves, it generates request outcomes and counts them as Istio's destination sidecars
//! would, in `istio_requests_total` and `istio_request_duration_milliseconds` with Istio's
//! standard labels and default buckets, and as the ingress gateway's Envoy would, in
//! `envoy_cluster_upstream_rq` and `envoy_cluster_upstream_rq_time`. Time and randomness come
//! in as arguments; it never watches the cluster or serves HTTP (that is [`super::mesh_server`]).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::scenario::Behaviour;

/// Istio's default buckets for `istio_request_duration_milliseconds`.
pub const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The lab's traffic enters through the ingress gateway, as the demo's users' would.
const SOURCE_WORKLOAD: &str = "istio-ingressgateway";
const SOURCE_NAMESPACE: &str = "istio-system";
/// What Istio reports for a cluster without a configured name.
const CLUSTER: &str = "Kubernetes";

/// One side of the split as Istio identifies it: the Service host the VirtualService routes
/// to and the pods behind it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Destination host, e.g. `flaskapp.prod.svc.cluster.local`.
    pub service_host: String,
    pub namespace: String,
    /// The Deployment's name (Istio's `destination_workload`).
    pub name: String,
    /// Pod label `app` (or `app.kubernetes.io/name`), else `unknown`, as Istio reports it.
    pub app: String,
    /// Pod label `version` (or `app.kubernetes.io/version`), else `unknown`.
    pub version: String,
    pub service_account: String,
    /// Image of the pod's first container; it decides how the workload behaves.
    pub image: String,
}

impl Workload {
    /// The workload that the Deployment's pod template describes; `None` when the
    /// Deployment has no name, namespace or container.
    pub fn from_deployment(service_host: &str, deployment: &Deployment) -> Option<Workload> {
        let template = deployment.spec.as_ref()?.template.clone();
        let pod = template.spec?;
        let image = pod.containers.first()?.image.clone()?;
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let label = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|k| labels.get(*k).cloned())
                .unwrap_or_else(|| "unknown".into())
        };
        Some(Workload {
            service_host: service_host.to_string(),
            namespace: deployment.metadata.namespace.clone()?,
            name: deployment.metadata.name.clone()?,
            app: label(["app", "app.kubernetes.io/name"]),
            version: label(["version", "app.kubernetes.io/version"]),
            service_account: pod.service_account_name.unwrap_or_else(|| "default".into()),
            image,
        })
    }
}

/// Istio's standard metric labels, as the destination sidecar reports them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IstioLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl IstioLabels {
    /// The labels of a request from the ingress gateway to `to` answered with `response_code`.
    pub fn destination(to: &Workload, response_code: u16) -> IstioLabels {
        let mut host = to.service_host.split('.');
        let service_name = host.next().unwrap_or_default().to_string();
        let service_namespace = host
            .next()
            .map_or_else(|| to.namespace.clone(), str::to_string);
        let canonical = |v: &str, fallback: &str| {
            if v == "unknown" {
                fallback.to_string()
            } else {
                v.to_string()
            }
        };
        IstioLabels {
            reporter: "destination".into(),
            source_workload: SOURCE_WORKLOAD.into(),
            source_workload_namespace: SOURCE_NAMESPACE.into(),
            source_principal: format!(
                "spiffe://cluster.local/ns/{SOURCE_NAMESPACE}/sa/{SOURCE_WORKLOAD}-service-account"
            ),
            source_app: SOURCE_WORKLOAD.into(),
            source_version: "unknown".into(),
            source_cluster: CLUSTER.into(),
            source_canonical_service: SOURCE_WORKLOAD.into(),
            source_canonical_revision: "latest".into(),
            destination_workload: to.name.clone(),
            destination_workload_namespace: to.namespace.clone(),
            destination_principal: format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                to.namespace, to.service_account
            ),
            destination_app: to.app.clone(),
            destination_version: to.version.clone(),
            destination_service: to.service_host.clone(),
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            destination_cluster: CLUSTER.into(),
            destination_canonical_service: canonical(&to.app, &to.name),
            destination_canonical_revision: canonical(&to.version, "latest"),
            request_protocol: "http".into(),
            response_code: response_code.to_string(),
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls".into(),
        }
    }
}

/// Labels of Envoy's per-cluster request counter, as the ingress gateway reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EnvoyResponseLabels {
    pub envoy_response_code: String,
    pub envoy_cluster_name: String,
}

/// Labels of Envoy's per-cluster request time histogram.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EnvoyClusterLabels {
    pub envoy_cluster_name: String,
}

impl EnvoyClusterLabels {
    /// The gateway's cluster for `to`'s Service, named as Istio names it.
    pub fn upstream(to: &Workload) -> Self {
        EnvoyClusterLabels {
            envoy_cluster_name: format!("outbound|80||{}", to.service_host),
        }
    }

    pub fn with_response_code(&self, response_code: u16) -> EnvoyResponseLabels {
        EnvoyResponseLabels {
            envoy_response_code: response_code.to_string(),
            envoy_cluster_name: self.envoy_cluster_name.clone(),
        }
    }
}

fn istio_duration_histogram() -> Histogram {
    Histogram::new(ISTIO_DURATION_BUCKETS_MS)
}

/// The mesh's metrics, registered in the registry that `/metrics` serves.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    pub requests: Family<IstioLabels, Counter>,
    pub durations: Family<IstioLabels, Histogram, fn() -> Histogram>,
    /// A counter in Envoy; a gauge here only because prometheus-client would name a counter
    /// `..._total`, which Envoy's is not. Queries (`rate`, `increase`) do not see the type.
    pub envoy_requests: Family<EnvoyResponseLabels, Gauge<u64, std::sync::atomic::AtomicU64>>,
    /// Envoy's request time histogram, with the same default buckets as Istio's.
    pub envoy_durations: Family<EnvoyClusterLabels, Histogram, fn() -> Histogram>,
}

impl MeshMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = MeshMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(istio_duration_histogram),
            envoy_requests: Family::default(),
            envoy_durations: Family::new_with_constructor(istio_duration_histogram),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled by the destination workload (simulated by the canaryd lab)",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (simulated by the canaryd lab)",
            metrics.durations.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq",
            "Upstream requests by response code, at the ingress gateway (simulated by the canaryd lab)",
            metrics.envoy_requests.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_time",
            "Upstream request time in milliseconds, at the ingress gateway (simulated by the canaryd lab)",
            metrics.envoy_durations.clone(),
        );
        metrics
    }
}

/// Prometheus text exposition (format 0.0.4) of the registry, with Go-style `le` values
/// (`le="500"`, as Istio's sidecars expose them, not `le="500.0"`).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One side of the split: who serves it, how it behaves, and its VirtualService weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub workload: Workload,
    pub behaviour: Behaviour,
    pub weight: u32,
}

/// What the mesh routes now.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficPlan {
    pub prod: Side,
    pub stage: Side,
}

/// Requests sent in one step, per side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub prod: u64,
    pub stage: u64,
}

/// Sends requests at a steady rate, split by weight, and records their outcomes.
#[derive(Debug)]
pub struct TrafficGenerator {
    requests_per_second: f64,
    /// Requests due but not yet sent: the fraction left over from earlier steps, so that
    /// any step size gives the configured rate in the long run.
    owed: f64,
    rng: StdRng,
}

impl TrafficGenerator {
    pub fn new(requests_per_second: f64, seed: u64) -> Self {
        Self {
            requests_per_second: requests_per_second.max(0.0),
            owed: 0.0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sends the requests due in `elapsed` according to `plan`. Each request goes to stage
    /// with probability stage weight / (sum of weights); when both weights are 0 (which
    /// Istio would refuse) everything goes to prod.
    pub fn advance(
        &mut self,
        plan: &TrafficPlan,
        elapsed: Duration,
        metrics: &MeshMetrics,
    ) -> Sent {
        self.owed += self.requests_per_second * elapsed.as_secs_f64();
        let due = self.owed.floor();
        self.owed -= due;
        let total = plan.prod.weight + plan.stage.weight;
        let mut sent = Sent::default();
        let sides = [&plan.prod, &plan.stage].map(|side| {
            let labels = [200, 500].map(|code| IstioLabels::destination(&side.workload, code));
            let cluster = EnvoyClusterLabels::upstream(&side.workload);
            let envoy = [200, 500].map(|code| cluster.with_response_code(code));
            (side, labels, cluster, envoy)
        });
        for _ in 0..due as u64 {
            let to_stage = total > 0 && self.rng.random_range(0..total) < plan.stage.weight;
            if to_stage {
                sent.stage += 1;
            } else {
                sent.prod += 1;
            }
            let (side, istio, cluster, envoy) = &sides[usize::from(to_stage)];
            let outcome = side.behaviour.sample(&mut self.rng);
            // The label sets are built for 200 and 500, the only codes a behaviour answers.
            let code = usize::from(outcome.response_code != 200);
            metrics.requests.get_or_create(&istio[code]).inc();
            metrics
                .durations
                .get_or_create(&istio[code])
                .observe(outcome.duration_ms);
            metrics.envoy_requests.get_or_create(&envoy[code]).inc();
            metrics
                .envoy_durations
                .get_or_create(cluster)
                .observe(outcome.duration_ms);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::BehaviourTable;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn workload(env: &str, image: &str) -> Workload {
        Workload {
            service_host: format!("flaskapp.{env}.svc.cluster.local"),
            namespace: env.into(),
            name: "flaskapp".into(),
            app: "flaskapp".into(),
            version: image.rsplit(':').next().unwrap().into(),
            service_account: "default".into(),
            image: image.into(),
        }
    }

    fn plan(prod_image: &str, stage_image: &str, stage_weight: u32) -> TrafficPlan {
        let table = BehaviourTable::demo();
        let side = |env, image, weight| Side {
            workload: workload(env, image),
            behaviour: table.behaviour(image).clone(),
            weight,
        };
        TrafficPlan {
            prod: side("prod", prod_image, 100 - stage_weight),
            stage: side("stage", stage_image, stage_weight),
        }
    }

    fn count(metrics: &MeshMetrics, side: &Side, code: u16) -> u64 {
        metrics
            .requests
            .get(&IstioLabels::destination(&side.workload, code))
            .map_or(0, |c| c.get())
    }

    fn fresh() -> (Registry, MeshMetrics) {
        let mut registry = Registry::default();
        let metrics = MeshMetrics::register(&mut registry);
        (registry, metrics)
    }

    /// Samples of a Prometheus text exposition: (name, labels, value).
    fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels close")),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once("=\"").expect("label is k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (
                    name.to_string(),
                    labels,
                    value.parse().expect("value is a number"),
                )
            })
            .collect()
    }

    #[test]
    fn the_rate_holds_for_any_step_size() {
        let (_, metrics) = fresh();
        let plan = plan("demoapp:v1", "demoapp:v2", 30);
        let mut generator = TrafficGenerator::new(50.0, 1);
        let mut total = 0;
        for _ in 0..70 {
            let sent = generator.advance(&plan, Duration::from_millis(30), &metrics);
            total += sent.prod + sent.stage;
        }
        // 70 steps of 30 ms at 50/s: 105 requests, never more, at most one still owed.
        assert!((104..=105).contains(&total), "{total}");
    }

    #[test]
    fn weight_zero_sends_nothing_and_weights_zero_send_to_prod() {
        let (_, metrics) = fresh();
        let mut generator = TrafficGenerator::new(100.0, 3);
        let none = generator.advance(
            &plan("demoapp:v1", "demoapp:v2", 0),
            Duration::from_secs(10),
            &metrics,
        );
        assert_eq!(
            none,
            Sent {
                prod: 1000,
                stage: 0
            }
        );
        let mut zero = plan("demoapp:v1", "demoapp:v2", 0);
        zero.prod.weight = 0;
        let sent = generator.advance(&zero, Duration::from_secs(1), &metrics);
        assert_eq!(
            sent,
            Sent {
                prod: 100,
                stage: 0
            }
        );
        let all = generator.advance(
            &plan("demoapp:v1", "demoapp:v2", 100),
            Duration::from_secs(1),
            &metrics,
        );
        assert_eq!(
            all,
            Sent {
                prod: 0,
                stage: 100
            }
        );
    }

    #[test]
    fn exposition_has_istio_names_labels_and_default_buckets() {
        let (registry, metrics) = fresh();
        let plan = plan("demoapp:v1", "demoapp:v3", 50);
        TrafficGenerator::new(50.0, 5).advance(&plan, Duration::from_secs(20), &metrics);
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));

        let samples = samples(&text);
        let stage_ok = |name: &str| {
            samples
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && l["destination_service"] == "flaskapp.stage.svc.cluster.local"
                        && l["response_code"] == "200"
                })
                .collect::<Vec<_>>()
        };
        let requests = stage_ok("istio_requests_total");
        assert_eq!(requests.len(), 1);
        let (_, labels, stage_requests) = requests[0];
        for (k, v) in [
            ("reporter", "destination"),
            ("source_workload", "istio-ingressgateway"),
            ("source_workload_namespace", "istio-system"),
            ("destination_service_name", "flaskapp"),
            ("destination_service_namespace", "stage"),
            ("destination_workload", "flaskapp"),
            ("destination_workload_namespace", "stage"),
            ("destination_app", "flaskapp"),
            ("destination_version", "v3"),
            ("request_protocol", "http"),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ] {
            assert_eq!(labels[k], v, "label {k}");
        }

        let buckets = stage_ok("istio_request_duration_milliseconds_bucket");
        let le: Vec<&str> = buckets.iter().map(|(_, l, _)| l["le"].as_str()).collect();
        assert_eq!(
            le,
            [
                "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
                "10000", "30000", "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf"
            ]
        );
        let counts: Vec<f64> = buckets.iter().map(|(_, _, v)| *v).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "buckets are cumulative"
        );
        assert_eq!(counts.last(), Some(stage_requests));
        assert_eq!(
            stage_ok("istio_request_duration_milliseconds_count")[0].2,
            *stage_requests
        );
        let sum = stage_ok("istio_request_duration_milliseconds_sum")[0].2;
        let mean = sum / stage_requests;
        assert!((40.0..150.0).contains(&mean), "mean latency {mean} ms");
    }

    #[test]
    fn the_gateways_envoy_counts_the_same_requests() {
        let (registry, metrics) = fresh();
        let plan = plan("demoapp:v1", "demoapp:v3", 50);
        TrafficGenerator::new(50.0, 5).advance(&plan, Duration::from_secs(20), &metrics);
        let samples = samples(&encode(&registry));
        let stage_cluster = "outbound|80||flaskapp.stage.svc.cluster.local";
        let envoy = |name: &str, code: Option<&str>| {
            samples
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && l["envoy_cluster_name"] == stage_cluster
                        && code.is_none_or(|c| l["envoy_response_code"] == c)
                })
                .map(|(_, _, v)| *v)
                .collect::<Vec<_>>()
        };
        for code in [200, 500] {
            assert_eq!(
                envoy("envoy_cluster_upstream_rq", Some(&code.to_string())),
                [count(&metrics, &plan.stage, code) as f64]
            );
        }
        let all = (count(&metrics, &plan.stage, 200) + count(&metrics, &plan.stage, 500)) as f64;
        assert_eq!(envoy("envoy_cluster_upstream_rq_time_count", None), [all]);
        assert_eq!(
            envoy("envoy_cluster_upstream_rq_time_bucket", None).len(),
            20
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Stage's share of requests is its weight, within five binomial standard deviations.
        #[test]
        fn traffic_splits_by_weight(stage_weight in 0u32..=100, seed: u64) {
            let (_, metrics) = fresh();
            let plan = plan("demoapp:v1", "demoapp:v2", stage_weight);
            let sent = TrafficGenerator::new(100.0, seed).advance(&plan, Duration::from_secs(40), &metrics);
            let n = (sent.prod + sent.stage) as f64;
            prop_assert_eq!(n, 4000.0);
            let p = f64::from(stage_weight) / 100.0;
            let sd = (n * p * (1.0 - p)).sqrt();
            prop_assert!((sent.stage as f64 - n * p).abs() <= 5.0 * sd + 1e-9, "{:?}", sent);
            let recorded = |side: &Side| count(&metrics, side, 200) + count(&metrics, side, 500);
            prop_assert_eq!((recorded(&plan.prod), recorded(&plan.stage)), (sent.prod, sent.stage));
        }

        /// Counters only grow, whatever the weights do between steps.
        #[test]
        fn counters_are_monotone(weights in proptest::collection::vec(0u32..=100, 1..20), seed: u64) {
            let (registry, metrics) = fresh();
            let mut generator = TrafficGenerator::new(50.0, seed);
            let mut before: BTreeMap<String, f64> = BTreeMap::new();
            for w in weights {
                generator.advance(&plan("demoapp:v1", "demoapp:v3", w), Duration::from_millis(700), &metrics);
                let now: BTreeMap<String, f64> = samples(&encode(&registry))
                    .into_iter()
                    .map(|(n, l, v)| (format!("{n}{l:?}"), v))
                    .collect();
                for (series, value) in &before {
                    prop_assert!(now.get(series).is_some_and(|v| v >= value), "{} fell", series);
                }
                before = now;
            }
        }
    }

    proptest! {
        // Each case sends 10,000 requests; a few seeds are enough.
        #![proptest_config(ProptestConfig::with_cases(6))]

        /// Stage's error share is its image's error rate, within five standard deviations.
        #[test]
        fn errors_follow_the_image(seed: u64) {
            let (_, metrics) = fresh();
            let plan = plan("demoapp:v1", "demoapp:v3", 100);
            TrafficGenerator::new(200.0, seed).advance(&plan, Duration::from_secs(50), &metrics);
            let (ok, failed) = (count(&metrics, &plan.stage, 200), count(&metrics, &plan.stage, 500));
            let n = (ok + failed) as f64;
            let sd = (n * 0.05 * 0.95).sqrt();
            prop_assert!((failed as f64 - 0.05 * n).abs() <= 5.0 * sd, "{} of {}", failed, n);
        }
    }
}

//! Shared by the telemetry tests: an exporter serving Istio, Envoy and app metrics with
//! known counts, scraped by the real Prometheus, and the instant at which `increase()` over
//! those counts is exact.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canaryd::analysis::{ArmCounts, Bucket, RatioCounts};
use canaryd::api::canary::CanarySpec;
use canaryd::config::{MeshPreset, PrometheusConfig};
use canaryd::telemetry::{PromClient, SelectBy, Telemetry};
use canaryd_lab::prometheus::{LabPrometheus, ScrapeTarget};
use jiff::Timestamp;

/// Counts of one arm as the exporter serves them.
#[derive(Clone, Debug)]
pub struct Arm {
    pub host: &'static str,
    pub namespace: &'static str,
    pub workload: &'static str,
    /// (response code, requests).
    pub codes: Vec<(u16, u64)>,
    /// (le in ms, cumulative count); the last one is +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// App-level counter for custom queries: (outcome, count).
    pub orders: Vec<(&'static str, u64)>,
}

impl Arm {
    /// What canaryd must read back for this arm (with the custom metric named `name`).
    pub fn expected(&self, latency: bool, ratio: Option<&str>) -> ArmCounts {
        let requests = self.codes.iter().map(|c| c.1).sum::<u64>() as f64;
        let errors = self
            .codes
            .iter()
            .filter(|c| (500..600).contains(&c.0))
            .map(|c| c.1)
            .sum::<u64>() as f64;
        let mut ratios = BTreeMap::new();
        if let Some(name) = ratio {
            let total = self.orders.iter().map(|o| o.1).sum::<u64>() as f64;
            let bad = self
                .orders
                .iter()
                .filter(|o| o.0 == "failed")
                .map(|o| o.1)
                .sum::<u64>() as f64;
            ratios.insert(name.to_string(), RatioCounts { bad, total });
        }
        ArmCounts {
            requests,
            errors,
            latency_buckets: if latency {
                self.buckets
                    .iter()
                    .map(|&(le_ms, count)| Bucket {
                        le_ms,
                        count: count as f64,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            ratios,
        }
    }
}

/// Exposition-format label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        le.to_string()
    }
}

/// The exposition text of all arms: every count times `scale` (0 before, 1 after), plus the
/// `canaryd_test_phase` gauge that tells which one Prometheus has scraped.
pub fn exposition(arms: &[Arm], scale: u64) -> String {
    let mut out = format!("canaryd_test_phase {scale}\n");
    for (reporter, extra) in [("destination", 0), ("source", 1000)] {
        for a in arms {
            for &(code, n) in &a.codes {
                // The source reporter sees the same requests; its counts must never be added.
                let _ = writeln!(
                    out,
                    "istio_requests_total{{reporter=\"{reporter}\",destination_service=\"{}\",destination_workload=\"{}\",destination_workload_namespace=\"{}\",response_code=\"{code}\"}} {}",
                    escape(a.host), escape(a.workload), escape(a.namespace), (n + extra) * scale
                );
            }
        }
    }
    for a in arms {
        for &(b, n) in &a.buckets {
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_service=\"{}\",destination_workload=\"{}\",destination_workload_namespace=\"{}\",le=\"{}\"}} {}",
                escape(a.host), escape(a.workload), escape(a.namespace), le(b), n * scale
            );
        }
    }
    // Envoy's own statistics: Istio's outbound cluster name for port 80 and 8080 (summed),
    // and an inbound cluster that names no host.
    for a in arms {
        for (i, &(code, n)) in a.codes.iter().enumerate() {
            let port = if i % 2 == 0 { 80 } else { 8080 };
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq{{envoy_response_code=\"{code}\",envoy_cluster_name=\"outbound|{port}||{}\"}} {}",
                escape(a.host), n * scale
            );
        }
    }
    let _ = writeln!(
        out,
        "envoy_cluster_upstream_rq{{envoy_response_code=\"200\",envoy_cluster_name=\"inbound|8080||\"}} {}",
        77 * scale
    );
    for a in arms {
        for &(b, n) in &a.buckets {
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"outbound|80||{}\",le=\"{}\"}} {}",
                escape(a.host), le(b), n * scale
            );
        }
    }
    for a in arms {
        for &(outcome, n) in &a.orders {
            let _ = writeln!(
                out,
                "app_orders_total{{namespace=\"{}\",app=\"{}\",outcome=\"{outcome}\"}} {}",
                escape(a.namespace),
                escape(a.workload),
                n * scale
            );
        }
    }
    out
}

type Body = Arc<dyn Fn() -> String + Send + Sync>;

/// A `/metrics` endpoint serving the text of the function it was last given.
pub struct Exporter {
    pub addr: SocketAddr,
    body: Arc<Mutex<Body>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub async fn start(body: String) -> Self {
        Self::start_fn(move || body.clone()).await
    }

    /// Serves `body()` at every scrape (counters that grow with time).
    pub async fn start_fn(body: impl Fn() -> String + Send + Sync + 'static) -> Self {
        let body: Arc<Mutex<Body>> = Arc::new(Mutex::new(Arc::new(body)));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let render = served.lock().unwrap().clone();
                let text = render();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, body, task }
    }

    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = Arc::new(move || body.clone());
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The exporter and the real Prometheus scraping it, after the counts went from 0 to their
/// final values. `window_end` is the timestamp of a scrape of the final values: `increase()`
/// over any window from before the first scrape to `window_end` is exactly the final count
/// (the window starts at a 0 sample, so nothing is extrapolated at the start, and ends at a
/// sample, so nothing is extrapolated at the end).
pub struct Lab {
    pub exporter: Exporter,
    pub prometheus: LabPrometheus,
    pub window_end: Timestamp,
}

/// Long enough to reach back to the first scrape.
pub const WINDOW: Duration = Duration::from_secs(600);

impl Lab {
    pub async fn start(arms: &[Arm]) -> Self {
        let exporter = Exporter::start(exposition(arms, 0)).await;
        let prometheus = LabPrometheus::start(
            &[ScrapeTarget {
                job: "exporter".into(),
                address: exporter.addr,
            }],
            Duration::from_secs(1),
        )
        .await
        .expect("start prometheus");
        let client = test_client(&prometheus.url(), 1);
        wait_for_phase(&client, 0.0).await;
        exporter.set(exposition(arms, 1));
        wait_for_phase(&client, 1.0).await;
        let at = client
            .instant("timestamp(canaryd_test_phase)", Timestamp::now())
            .await
            .unwrap();
        let window_end =
            Timestamp::from_millisecond((at[0].value * 1000.0).round() as i64).unwrap();
        Lab {
            exporter,
            prometheus,
            window_end,
        }
    }

    pub fn telemetry(&self, mesh: MeshPreset, select_by: SelectBy) -> Telemetry {
        Telemetry::with_client(test_client(&self.prometheus.url(), 2), mesh, select_by)
    }
}

pub fn prometheus_config(url: &str, retries: u32) -> PrometheusConfig {
    serde_yaml_ng::from_str(&format!(
        "{{url: \"{url}\", timeout: 5s, retries: {retries}}}"
    ))
    .unwrap()
}

pub fn test_client(url: &str, retries: u32) -> PromClient {
    PromClient::new(&prometheus_config(url, retries))
        .unwrap()
        .with_first_backoff(Duration::from_millis(50))
}

/// Polls Prometheus until it has scraped `canaryd_test_phase == phase`.
async fn wait_for_phase(client: &PromClient, phase: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(samples) = client.instant("canaryd_test_phase", Timestamp::now()).await {
            if samples.first().is_some_and(|s| s.value == phase) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not scrape phase {phase} within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Canary spec for the given arms and metrics (YAML list of MetricSpec).
pub fn canary(stage: &Arm, prod: &Arm, metrics: &str) -> CanarySpec {
    serde_yaml_ng::from_str(&format!(
        r#"
virtualService: {{name: vs}}
prod: {{host: {ph:?}, deployment: {{name: {pw:?}, namespace: {pn:?}}}}}
stage: {{host: {sh:?}, deployment: {{name: {sw:?}, namespace: {sn:?}}}}}
analysis:
  metrics: {metrics}
"#,
        ph = prod.host,
        pw = prod.workload,
        pn = prod.namespace,
        sh = stage.host,
        sw = stage.workload,
        sn = stage.namespace,
    ))
    .unwrap()
}

/// Errors, latency at 250 ms and a custom ratio of failed orders.
pub const THREE_METRICS: &str = r#"
    - {name: errors, kind: errorRate}
    - {name: latency, kind: latency, thresholdsMs: [250]}
    - name: orders
      kind: ratio
      bad: 'sum(increase(app_orders_total{namespace="{{ namespace }}", app="{{ workload }}", outcome="failed"}[{{ window }}]))'
      total: 'sum(increase(app_orders_total{namespace="{{ namespace }}", app="{{ workload }}"}[{{ window }}]))'
"#;

pub fn flaskapp_prod() -> Arm {
    Arm {
        host: "flaskapp.prod.svc.cluster.local",
        namespace: "prod",
        workload: "flaskapp",
        codes: vec![(200, 970), (404, 20), (503, 10)],
        buckets: vec![
            (25.0, 600),
            (100.0, 900),
            (250.0, 990),
            (1000.0, 1000),
            (f64::INFINITY, 1000),
        ],
        orders: vec![("ok", 495), ("failed", 5)],
    }
}

pub fn flaskapp_stage() -> Arm {
    Arm {
        host: "flaskapp.stage.svc.cluster.local",
        namespace: "stage",
        workload: "flaskapp",
        codes: vec![(200, 180), (500, 7), (502, 3)],
        buckets: vec![
            (25.0, 100),
            (100.0, 150),
            (250.0, 185),
            (1000.0, 190),
            (f64::INFINITY, 190),
        ],
        orders: vec![("ok", 88), ("failed", 2)],
    }
}

pub fn checkout_prod() -> Arm {
    Arm {
        host: "checkout.prod.svc.cluster.local",
        namespace: "prod",
        workload: "checkout",
        codes: vec![(200, 4000), (500, 40)],
        buckets: vec![(100.0, 3000), (f64::INFINITY, 4040)],
        orders: vec![],
    }
}

pub fn checkout_stage() -> Arm {
    Arm {
        host: "checkout.stage.svc.cluster.local",
        namespace: "stage",
        workload: "checkout",
        codes: vec![(200, 1000), (201, 5), (500, 1)],
        buckets: vec![(100.0, 700), (f64::INFINITY, 1006)],
        orders: vec![],
    }
}

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::*;
use crate::analysis::LookCounts;
use crate::api::{Canary, CanaryStatus, DecisionRecord, MetricReport, Phase, Verdict};
use crate::rollout::{Action, NotifyEvent};
use crate::telemetry::{MetricsSource, TelemetryError};

fn report(name: &str, upper: Option<f64>) -> MetricReport {
    MetricReport {
        name: name.into(),
        e_value: 3.5,
        rollback_threshold: 200.0,
        ratio_lower: 0.4,
        ratio_upper: upper,
        margin: 1.5,
        ..Default::default()
    }
}

fn progressing(weight: u8, metrics: Vec<MetricReport>) -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Progressing,
        step: 1,
        stage_weight: weight,
        rollout_started_at: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        last_decision: Some(DecisionRecord {
            verdict: Verdict::Advance,
            metrics,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn canary(namespace: &str, name: &str) -> Canary {
    let mut c: Canary = serde_yaml_ng::from_str(include_str!("../../config/canary-flaskapp.yaml"))
        .expect("the example Canary");
    c.metadata.namespace = Some(namespace.into());
    c.metadata.name = Some(name.into());
    c
}

fn series(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn a_canary_exports_phase_step_weights_and_statistics() {
    let admin = Admin::new();
    let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
    let new = progressing(30, vec![report("errors", Some(1.2))]);
    let actions = [Action::Notify {
        cause: crate::rollout::Cause::Analysis,
        event: NotifyEvent::StepAdvanced,
        message: "free text that must not become a label".into(),
    }];
    admin
        .metrics
        .record(&canary("prod", "flaskapp"), &new, &actions, now);
    let text = admin.encode();
    assert!(text.contains(
        r#"canaryd_canary_phase{namespace="prod",canary="flaskapp",phase="Progressing"} 1"#
    ));
    assert!(
        text.contains(r#"canaryd_canary_phase{namespace="prod",canary="flaskapp",phase="Idle"} 0"#)
    );
    assert!(text.contains(r#"canaryd_canary_step{namespace="prod",canary="flaskapp"} 1"#));
    assert!(text
        .contains(r#"canaryd_canary_weight{namespace="prod",canary="flaskapp",arm="stage"} 30"#));
    assert!(
        text.contains(r#"canaryd_canary_weight{namespace="prod",canary="flaskapp",arm="prod"} 70"#)
    );
    assert!(text.contains(
        r#"canaryd_canary_e_value{namespace="prod",canary="flaskapp",metric="errors"} 3.5"#
    ));
    assert!(text.contains(
        r#"canaryd_canary_ratio_bound{namespace="prod",canary="flaskapp",metric="errors",bound="upper"} 1.2"#
    ));
    assert!(text.contains(
        r#"canaryd_decisions_total{namespace="prod",canary="flaskapp",decision="step_advanced",reason="analysis"} 1"#
    ));
    assert!(text.contains(
        r#"canaryd_canary_info{namespace="prod",canary="flaskapp",stage_host="flaskapp.stage.svc.cluster.local",prod_host="flaskapp.prod.svc.cluster.local"} 1"#
    ));
    assert!(!text.contains("free text"));
}

#[test]
fn a_deleted_canary_leaves_no_series_behind() {
    let admin = Admin::new();
    let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
    let new = progressing(
        60,
        vec![report("errors", Some(1.2)), report("latency@500", None)],
    );
    let actions = [Action::Notify {
        cause: crate::rollout::Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: String::new(),
    }];
    let m = &admin.metrics;
    m.record(&canary("prod", "flaskapp"), &new, &actions, now);
    m.record(&canary("prod", "other"), &new, &[], now);
    m.forget_canary("prod", "flaskapp");
    let text = admin.encode();
    assert!(!text.contains(r#"canary="flaskapp""#), "{text}");
    assert!(text.contains(r#"canary="other""#));
    // The rollback's duration stays in the (unlabelled) histogram.
    assert!(text.contains("canaryd_time_to_rollback_seconds_count 1"));
}

#[test]
fn a_metric_dropped_from_the_spec_loses_its_series() {
    let admin = Admin::new();
    let now = Timestamp::now();
    let m = &admin.metrics;
    let first = progressing(
        30,
        vec![report("errors", Some(1.0)), report("custom", Some(1.0))],
    );
    m.record(&canary("ns", "c"), &first, &[], now);
    let second = progressing(30, vec![report("errors", None)]);
    m.record(&canary("ns", "c"), &second, &[], now);
    let text = admin.encode();
    assert!(series(&text, "canaryd_canary_e_value")
        .iter()
        .all(|l| !l.contains("custom")));
    assert!(!text.contains(r#"metric="errors",bound="upper""#));
}

#[test]
fn daemon_metrics_use_the_agreed_names() {
    let admin = Admin::new();
    let m = &admin.metrics;
    m.reconciled(Duration::from_millis(3), None);
    m.reconciled(Duration::from_millis(3), Some("api"));
    admin.queries.observe(Duration::from_millis(20), false);
    admin.deliveries.delivered("slack", true);
    m.set_leader(true);
    let text = admin.encode();
    for expected in [
        r#"canaryd_reconcile_total{result="ok"} 1"#,
        r#"canaryd_reconcile_total{result="error"} 1"#,
        r#"canaryd_reconcile_errors_total{category="api"} 1"#,
        "canaryd_reconcile_duration_seconds_count 2",
        "canaryd_last_reconcile_success_timestamp_seconds ",
        "canaryd_prometheus_query_duration_seconds_count 1",
        "canaryd_prometheus_query_errors_total 1",
        r#"canaryd_notifications_total{notifier="slack",result="delivered"} 1"#,
        "canaryd_leader 1",
        "canaryd_rollout_duration_seconds_count 0",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

#[tokio::test]
async fn the_admin_port_serves_metrics_health_and_readiness() {
    let admin = Admin::new();
    let (addr, task) = admin.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = crate::tls::http_client().build().expect("an HTTP client");
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    admin.readiness.set_ready();
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let page = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(page.contains("# TYPE canaryd_leader gauge"));
    task.abort();
}

/// Counts are never asked for here: the Canary stays Idle (stage runs prod's revision).
struct NoPrometheus;

impl MetricsSource for NoPrometheus {
    fn counts<'a>(
        &'a self,
        _: &'a Canary,
        _: Timestamp,
        _: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, TelemetryError>> {
        Box::pin(async {
            Err(TelemetryError::Config {
                key: "url",
                message: "no Prometheus in this test".into(),
            })
        })
    }
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaskapp, namespace: prod}
spec:
  replicas: 1
  selector: {matchLabels: {app: flaskapp}}
  template:
    metadata: {labels: {app: flaskapp}}
    spec: {containers: [{name: app, image: "demoapp:v1"}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaskapp, namespace: stage}
spec:
  replicas: 1
  selector: {matchLabels: {app: flaskapp}}
  template:
    metadata: {labels: {app: flaskapp}}
    spec: {containers: [{name: app, image: "demoapp:v1"}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: demoapp, namespace: prod}
spec:
  hosts: [flaskapp.example.com]
  http:
  - name: primary
    route:
    - destination: {host: flaskapp.prod.svc.cluster.local}
      weight: 100
    - destination: {host: flaskapp.stage.svc.cluster.local}
      weight: 0
"#;

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_controller_is_ready_after_sync_and_a_deleted_canary_leaves_no_series() {
    use canaryd_lab::apiserver::{ApiServer, ApiServerOptions};
    let server = ApiServer::start(ApiServerOptions {
        namespaces: vec!["prod".into(), "stage".into()],
        install_istio_crds: true,
        install_canary_crd: true,
        ..ApiServerOptions::default()
    })
    .await
    .unwrap();
    server.install(APP).unwrap();
    // Installed with canaryd's finalizer: the lab API server refuses the JSON patch kube-rs
    // sends to add the first finalizer (a `test` of the absent /metadata/finalizers).
    let mut canary: serde_json::Value =
        serde_yaml_ng::from_str(include_str!("../../config/canary-flaskapp.yaml")).unwrap();
    canary["metadata"]["finalizers"] = serde_json::json!([crate::cluster::FINALIZER]);
    server
        .install(&serde_json::to_string(&canary).unwrap())
        .unwrap();
    let client = server.client().unwrap();
    let config = crate::config::Config::parse(
        "prometheus: {url: 'http://127.0.0.1:1'}\nleaderElection: {enabled: false}\n",
    )
    .unwrap();

    let admin = Admin::new();
    let (addr, _server) = admin.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let controller = {
        let (client, admin) = (client.clone(), admin.clone());
        tokio::spawn(async move {
            crate::cluster::controller::run_with(client, &config, Arc::new(NoPrometheus), &admin)
                .await
        })
    };
    let http = crate::tls::http_client().build().expect("an HTTP client");
    let url = |path: &str| format!("http://{addr}{path}");
    eventually("/readyz", async || {
        http.get(url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let page = async || {
        http.get(url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually("the Canary's series", async || {
        let text = page().await;
        text.contains(r#"canaryd_canary_phase{namespace="prod",canary="flaskapp",phase="Idle"} 1"#)
            && text.contains("canaryd_leader 1")
            && text.contains(r#"canaryd_reconcile_total{result="ok"}"#)
    })
    .await;

    let canaries: kube::Api<Canary> = kube::Api::namespaced(client, "prod");
    canaries
        .delete("flaskapp", &Default::default())
        .await
        .unwrap();
    eventually("the series to go", async || {
        !page().await.contains(r#"canary="flaskapp""#)
    })
    .await;
    controller.abort();
}

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
    eventually("the rollout page to list the Canary", async || {
        let list = http
            .get(url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        list.contains(r#"href="/rollouts/prod/flaskapp""#) && list.contains(">Idle<")
    })
    .await;
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

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + seconds).unwrap()
}

/// A status as the controller writes it at a look `seconds` into a rollout.
fn looked(seconds: i64, verdict: Verdict, evidence: f64) -> CanaryStatus {
    let mut status = progressing(30, vec![report("errors", Some(1.2))]);
    status.rollout_started_at = Some(at(0));
    let decision = status.last_decision.as_mut().unwrap();
    decision.at = Some(at(seconds));
    decision.verdict = verdict;
    decision.metrics[0].e_value = evidence;
    status
}

#[test]
fn the_board_keeps_each_look_once_and_starts_over_with_a_new_rollout() {
    let board = board::Board::default();
    board.record("prod", "flaskapp", &looked(60, Verdict::Continue, 2.0));
    // The same status written twice (intent, then confirmation) is one look.
    board.record("prod", "flaskapp", &looked(60, Verdict::Continue, 2.0));
    board.record("prod", "flaskapp", &looked(120, Verdict::Advance, 0.5));
    let looks = board.looks("prod", "flaskapp");
    assert_eq!(looks.looks.len(), 2);
    assert_eq!(looks.names, ["errors"]);
    assert_eq!(looks.looks[1].verdict, Verdict::Advance);
    assert!((looks.looks[0].metrics[0].log10_evidence - 2f32.log10()).abs() < 1e-6);

    let mut next = looked(900, Verdict::Continue, 1.0);
    next.rollout_started_at = Some(at(800));
    board.record("prod", "flaskapp", &next);
    assert_eq!(
        board.looks("prod", "flaskapp").looks.len(),
        1,
        "a new rollout starts over"
    );
    board.forget("prod", "flaskapp");
    assert!(board.is_empty());
}

#[test]
fn the_board_stays_within_its_budget_however_many_canaries_look() {
    let board = board::Board::default();
    let canaries = board::LOOK_BUDGET / board::MIN_LOOKS_PER_CANARY;
    for look in 0..(board::MIN_LOOKS_PER_CANARY as i64 + 5) {
        for c in 0..canaries {
            board.record(
                "prod",
                &format!("app-{c}"),
                &looked(60 * (look + 1), Verdict::Continue, 1.0),
            );
        }
    }
    assert!(
        board.len() <= board::LOOK_BUDGET,
        "{} looks kept",
        board.len()
    );
    let one = board.looks("prod", "app-0");
    assert_eq!(one.looks.len(), board::MIN_LOOKS_PER_CANARY);
    assert_eq!(one.dropped, 5);
    assert_eq!(
        one.looks.back().unwrap().at,
        at(60 * (board::MIN_LOOKS_PER_CANARY as i64 + 5)),
        "the newest are kept"
    );
}

/// The controller's cache holding `canary`, as the page reads it.
fn cached(canary: &Canary) -> kube::runtime::reflector::Store<kube::api::DynamicObject> {
    let mut writer =
        kube::runtime::reflector::store::Writer::new(crate::cluster::decode::api_resource());
    let object = serde_json::from_value(serde_json::to_value(canary).unwrap()).unwrap();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
    writer.as_reader()
}

#[tokio::test]
async fn the_rollout_page_lists_canaries_and_draws_every_look_and_decision() {
    use crate::api::HistoryEntry;
    let admin = Admin::new();
    let mut canary = canary("prod", "flaskapp");
    let mut status = looked(240, Verdict::Rollback, 500.0);
    status.phase = Phase::RolledBack;
    status.stage_weight = 0;
    status.message = "rolled back <script>alert(1)</script>".into();
    status.stage_revision = Some("demoapp:v3".into());
    let entry = |s: i64, phase, step, w| HistoryEntry {
        at: at(s),
        phase,
        step,
        stage_weight: w,
        message: format!("{phase:?} at {w} %"),
    };
    status.history = vec![
        entry(0, Phase::Testing, 0, 0),
        entry(30, Phase::Progressing, 1, 30),
        entry(240, Phase::RolledBack, 1, 0),
    ];
    for (s, v, e) in [
        (90, Verdict::Continue, 3.0),
        (150, Verdict::Continue, 40.0),
        (240, Verdict::Rollback, 500.0),
    ] {
        let mut look = status.clone();
        let d = look.last_decision.as_mut().unwrap();
        (d.at, d.verdict, d.metrics[0].e_value) = (Some(at(s)), v, e);
        admin.board.record("prod", "flaskapp", &look);
    }
    canary.status = Some(status);
    admin.board.watch(cached(&canary));

    let (addr, task) = admin.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = crate::tls::http_client().build().expect("an HTTP client");
    let get = async |path: &str| {
        let r = http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (code, list) = get("/").await;
    assert_eq!(code, 200);
    assert!(list.contains(r#"href="/rollouts/prod/flaskapp""#), "{list}");
    assert!(list.contains(">RolledBack<") && list.contains("demoapp:v3"));

    let (code, page) = get("/rollouts/prod/flaskapp").await;
    assert_eq!(code, 200);
    // The planned steps, every look with its verdict, the threshold, the margin, the decisions.
    for step in ["step 0 · 0 %", "step 1 · 30 %", "step 2 · 60 %"] {
        assert!(page.contains(step), "missing {step}");
    }
    // Each look is a dot on the weight chart and on the evidence chart.
    assert_eq!(page.matches(r#"class="look continue""#).count(), 4);
    assert_eq!(page.matches(r#"class="look rollback""#).count(), 2);
    assert!(page.contains("rolls back at 10^2.3"));
    assert!(page.contains("margin 1.5x"));
    assert_eq!(page.matches(r#"<tr class="decision">"#).count(), 3);
    assert!(page.contains("RolledBack at 0 %"));
    // What a Canary's author wrote is text, never markup.
    assert!(!page.contains("<script>alert"), "unescaped message");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("<script>(function(){"), "the refresh script");

    let (code, fragment) = get("/rollouts/prod/flaskapp?fragment=1").await;
    assert_eq!(code, 200);
    assert!(fragment.starts_with("<h1>") && !fragment.contains("<html"));
    assert_eq!(get("/rollouts/prod/nothing").await.0, 404);
    task.abort();
}

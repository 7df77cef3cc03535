//! The Grafana dashboards (dashboards/*.json) and the alert rules (the chart's
//! files/canaryd.rules.yaml, which its PrometheusRule and deploy/alerts share) against
//! the real Prometheus: Prometheus scrapes the lab's simulated Istio mesh and canaryd's admin
//! server while a release goes through every phase (and another one rolls back); then every
//! PromQL expression of every panel, annotation and variable, with the dashboard variables
//! filled in as Grafana would, must parse and return data over the rollout. Alert rules must
//! parse.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd::api::{Canary, CanaryStatus, DecisionRecord, MetricReport, Phase, Verdict};
use canaryd::rollout::{Action, Cause, NotifyEvent};
use canaryd::server::Admin;
use canaryd_lab::mesh::{Side, TrafficGenerator, TrafficPlan, Workload};
use canaryd_lab::mesh_server::Mesh;
use canaryd_lab::prometheus::{LabPrometheus, ScrapeTarget};
use canaryd_lab::scenario::BehaviourTable;
use jiff::Timestamp;
use serde_json::Value;

const STAGE_HOST: &str = "flaskapp.stage.svc.cluster.local";
const PROD_HOST: &str = "flaskapp.prod.svc.cluster.local";

fn canary(name: &str) -> Canary {
    let mut c: Canary = serde_yaml_ng::from_str(include_str!("../../config/canary-flaskapp.yaml"))
        .expect("the example Canary");
    c.metadata.name = Some(name.into());
    c
}

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

/// Sends the app's traffic, split by the current stage weight, until aborted.
fn send_traffic(mesh: &Mesh, stage_weight: Arc<AtomicU32>) -> tokio::task::JoinHandle<()> {
    let metrics = mesh.metrics().clone();
    tokio::spawn(async move {
        let table = BehaviourTable::demo();
        let side = |env: &str, image: &str, weight| Side {
            workload: workload(env, image),
            behaviour: table.behaviour(image).clone(),
            weight,
        };
        let mut generator = TrafficGenerator::new(1000.0, 7);
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stage = stage_weight.load(Ordering::SeqCst);
            let plan = TrafficPlan {
                prod: side("prod", "demoapp:v1", 100 - stage),
                stage: side("stage", "demoapp:v2", stage),
            };
            generator.advance(&plan, last.elapsed(), &metrics);
            last = Instant::now();
        }
    })
}

fn report(name: &str, e_value: f64, upper: f64) -> MetricReport {
    MetricReport {
        name: name.into(),
        verdict: Verdict::Advance,
        e_value,
        rollback_threshold: 200.0,
        ratio_lower: 0.5,
        ratio_upper: Some(upper),
        margin: 1.5,
        ..Default::default()
    }
}

fn status(
    phase: Phase,
    step: u32,
    weight: u8,
    started: Timestamp,
    verdict: Verdict,
) -> CanaryStatus {
    CanaryStatus {
        phase,
        step,
        stage_weight: weight,
        rollout_started_at: Some(started),
        last_decision: Some(DecisionRecord {
            verdict,
            step,
            stage_weight: weight,
            metrics: vec![
                report(
                    "errors",
                    1.0 + f64::from(step),
                    2.0 / (1.0 + f64::from(step)),
                ),
                report("latency@500", 0.8, 1.8 / (1.0 + f64::from(step))),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn notify(event: NotifyEvent) -> Vec<Action> {
    let cause = match event {
        NotifyEvent::RolloutStarted => Cause::NewRevision,
        NotifyEvent::StepAdvanced | NotifyEvent::RolledBack => Cause::Analysis,
        _ => Cause::Lifecycle,
    };
    vec![Action::Notify {
        cause,
        event,
        message: String::new(),
    }]
}

/// What the controller records during the seed's release (flaskapp: 0, 30, 60, 100 %,
/// promoted, succeeded) and a release that rolls back at 30 % (broken), one phase every
/// two seconds while Prometheus scrapes every second.
async fn rollout(admin: &Admin, stage_weight: &AtomicU32) {
    let m = &admin.metrics;
    let flaskapp = canary("flaskapp");
    let broken = canary("broken");
    let started = Timestamp::now();
    m.set_leader(true);
    admin.deliveries.delivered("slack", true);
    let mut old_broken = CanaryStatus::default();
    let phases = [
        (Phase::Testing, 0, 0, NotifyEvent::RolloutStarted),
        (Phase::Progressing, 1, 30, NotifyEvent::StepAdvanced),
        (Phase::Progressing, 2, 60, NotifyEvent::StepAdvanced),
        (Phase::Promoting, 3, 100, NotifyEvent::Promoted),
        (Phase::Succeeded, 3, 0, NotifyEvent::Succeeded),
    ];
    for (i, (phase, step, weight, event)) in phases.into_iter().enumerate() {
        let new = status(phase, step, weight, started, Verdict::Advance);
        m.record(&flaskapp, &new, &notify(event), Timestamp::now());
        stage_weight.store(u32::from(weight), Ordering::SeqCst);
        let (broken_new, broken_event) = match i {
            0 => (
                status(Phase::Testing, 0, 0, started, Verdict::Continue),
                Some(NotifyEvent::RolloutStarted),
            ),
            1 => (
                status(Phase::Progressing, 1, 30, started, Verdict::Continue),
                Some(NotifyEvent::StepAdvanced),
            ),
            2 => (
                status(Phase::RolledBack, 1, 0, started, Verdict::Rollback),
                Some(NotifyEvent::RolledBack),
            ),
            _ => (old_broken.clone(), None),
        };
        let actions = broken_event.map(notify).unwrap_or_default();
        m.record(&broken, &broken_new, &actions, Timestamp::now());
        old_broken = broken_new;
        for _ in 0..20 {
            m.reconciled(Duration::from_millis(4), None);
            admin.queries.observe(Duration::from_millis(30), true);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        m.reconciled(Duration::from_millis(40), Some("api"));
        admin.queries.observe(Duration::from_millis(900), false);
    }
}

/// Fills in the dashboard variables as Grafana would for the seed's Canary.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$__range", "60s")
        .replace("$__interval", "1s")
        .replace("$namespace", "prod")
        .replace("$canary", "flaskapp")
        .replace("$stage_host", STAGE_HOST)
        .replace("$prod_host", PROD_HOST)
}

/// Every PromQL expression a dashboard runs: panel targets, annotations and the metric
/// selectors of its `label_values(...)` variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let title = format!("panel {:?} {}", panel["title"], target["refId"]);
            found.push((title, target["expr"].as_str().unwrap().to_string()));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = a["expr"].as_str() {
            found.push((format!("annotation {:?}", a["name"]), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let query = v["query"]["query"].as_str().unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _label)| selector.to_string())
                .unwrap_or_else(|| panic!("variable {} is not label_values(...)", v["name"]));
            found.push((format!("variable {:?}", v["name"]), inner));
        }
    }
    found
}

async fn query_range(
    http: &reqwest::Client,
    prometheus: &str,
    expr: &str,
    start: Timestamp,
) -> Result<Value, String> {
    let url = url::Url::parse_with_params(
        &format!("{prometheus}/api/v1/query_range"),
        &[
            ("query", expr.to_string()),
            ("start", start.as_second().to_string()),
            ("end", Timestamp::now().as_second().to_string()),
            ("step", "1".to_string()),
        ],
    )
    .unwrap();
    let body: Value = http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if body["status"] == "success" {
        Ok(body["data"]["result"].clone())
    } else {
        Err(format!("{}: {}", body["errorType"], body["error"]))
    }
}

/// Prometheus loads new targets only every few seconds: the rollout starts once both jobs
/// have been scraped, so that every counter is seen before it first moves.
async fn wait_for_scrapes(http: &reqwest::Client, prometheus: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = query_range(http, prometheus, "sum(up)", Timestamp::now()).await;
        let both = up.ok().and_then(|r| {
            r[0]["values"]
                .as_array()
                .and_then(|v| v.last().cloned())
                .map(|p| p[1] == "2")
        });
        if both == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped both targets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn has_data(result: &Value) -> bool {
    result.as_array().unwrap().iter().any(|series| {
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|point| point[1].as_str().is_some_and(|v| v != "NaN"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_parses_and_shows_a_rollout_in_real_prometheus() {
    let mesh = Mesh::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = Admin::new();
    let (admin_addr, _server) = admin.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let prometheus = LabPrometheus::start(
        &[
            ScrapeTarget {
                job: "mesh".into(),
                address: mesh.addr(),
            },
            ScrapeTarget {
                job: "canaryd".into(),
                address: admin_addr,
            },
        ],
        Duration::from_secs(1),
    )
    .await
    .expect("the real Prometheus (tests/run.sh installs it)");
    let http = canaryd::tls::http_client().build().expect("an HTTP client");
    wait_for_scrapes(&http, &prometheus.url()).await;
    let start = Timestamp::now();
    let stage_weight = Arc::new(AtomicU32::new(0));
    let traffic = send_traffic(&mesh, stage_weight.clone());
    rollout(&admin, &stage_weight).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.abort();

    let mut problems = Vec::new();
    let mut checked = 0;
    for file in ["canaryd-overview.json", "canaryd-canary.json"] {
        let path = format!("{}/dashboards/{file}", env!("CARGO_MANIFEST_DIR"));
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        assert!(
            dashboard["schemaVersion"].as_u64().unwrap() >= 39,
            "{file}: current schema"
        );
        assert!(
            dashboard["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: a Prometheus datasource variable"
        );
        for (what, expr) in expressions(&dashboard) {
            let expr = substitute(&expr);
            checked += 1;
            match query_range(&http, &prometheus.url(), &expr, start).await {
                Err(e) => problems.push(format!("{file} {what}: {expr}\n    does not run: {e}")),
                Ok(result) if !has_data(&result) => {
                    problems.push(format!("{file} {what}: {expr}\n    returns no data"))
                }
                Ok(_) => {}
            }
        }
    }
    let rules: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/helm/canaryd/files/canaryd.rules.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let expr = rule["expr"].as_str().unwrap();
        checked += 1;
        if let Err(e) = query_range(&http, &prometheus.url(), expr, start).await {
            problems.push(format!("alert rule {expr}\n    does not run: {e}"));
        }
    }
    assert!(checked > 40, "only {checked} expressions found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

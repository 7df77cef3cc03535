//! Reconciler scenarios against a mocked API server (kube-rs tower-test pattern: every
//! request the reconciler makes must be the next expected one, answered with a canned
//! response), and a check that the RBAC in deploy/ covers every call made.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};

use super::leader::Leadership;
use super::*;
use crate::analysis::{ArmCounts, LookCounts};
use crate::api::virtual_service::VirtualService;
use crate::api::{Canary, CanaryStatus, Phase};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn fixed_now() -> Timestamp {
    "2026-11-29T12:00:00Z".parse().unwrap()
}

fn minutes_ago(m: i64) -> Timestamp {
    fixed_now() - jiff::SignedDuration::from_mins(m)
}

/// Fixed counts for every look: stage's and prod's error rates.
struct FixedCounts {
    stage_error_rate: f64,
    prod_error_rate: f64,
}

impl MetricsSource for FixedCounts {
    fn counts<'a>(
        &'a self,
        _: &'a Canary,
        _: Timestamp,
        _: Duration,
    ) -> BoxFuture<'a, Result<LookCounts, crate::telemetry::TelemetryError>> {
        let arm = |requests: f64, rate: f64| ArmCounts {
            requests,
            errors: requests * rate,
            ..Default::default()
        };
        Box::pin(async move {
            Ok(LookCounts {
                stage: arm(300_000.0, self.stage_error_rate),
                prod: arm(700_000.0, self.prod_error_rate),
            })
        })
    }
}

fn canary(status: CanaryStatus) -> Canary {
    let mut c: Canary = serde_json::from_value(json!({
        "apiVersion": "canaryd.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "flaskapp", "namespace": "prod", "uid": "u1", "resourceVersion": "5",
                     "generation": 1, "finalizers": [FINALIZER]},
        "spec": {
            "virtualService": {"name": "demoapp", "namespace": "prod"},
            "prod":  {"host": "flaskapp.prod.svc.cluster.local",  "deployment": {"namespace": "prod",  "name": "flaskapp"}},
            "stage": {"host": "flaskapp.stage.svc.cluster.local", "deployment": {"namespace": "stage", "name": "flaskapp"}},
            "stepDuration": {"min": "2m", "max": "30m"},
            "analysis": {"interval": "30s", "metrics": [{"name": "errors", "kind": "errorRate", "margin": 1.5}]}
        }
    }))
    .unwrap();
    c.status = Some(status);
    c
}

fn deployment(ns: &str, image: &str, ready: bool) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "flaskapp", "namespace": ns, "generation": 1, "resourceVersion": "11"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "flaskapp", "env": ns}},
                 "template": {"metadata": {"labels": {"app": "flaskapp", "env": ns}},
                              "spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "availableReplicas": if ready { 1 } else { 0 }}
    }))
    .unwrap()
}

fn virtual_service(stage_weight: i64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "demoapp", "namespace": "prod", "resourceVersion": "21"},
        "spec": {"hosts": ["demoapp.example.com"], "http": [{"name": "primary", "timeout": "10s", "route": [
            {"destination": {"host": "flaskapp.prod.svc.cluster.local"}, "weight": 100 - stage_weight},
            {"destination": {"host": "flaskapp.stage.svc.cluster.local"}, "weight": stage_weight}
        ]}]}
    })
}

struct World {
    stage_image: &'static str,
    prod_image: &'static str,
    prod_ready: bool,
    stage_weight: i64,
    leader: bool,
    metrics: FixedCounts,
}

impl Default for World {
    fn default() -> Self {
        World {
            stage_image: "demoapp:v2",
            prod_image: "demoapp:v1",
            prod_ready: true,
            stage_weight: 0,
            leader: true,
            metrics: FixedCounts {
                stage_error_rate: 0.01,
                prod_error_rate: 0.01,
            },
        }
    }
}

fn context(world: World) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut deployments = Writer::<Deployment>::default();
    for d in [
        deployment("stage", world.stage_image, true),
        deployment("prod", world.prod_image, world.prod_ready),
    ] {
        deployments.apply_watcher_event(&watcher::Event::Apply(d));
    }
    let mut services = Writer::<VirtualService>::default();
    let vs: VirtualService = serde_json::from_value(virtual_service(world.stage_weight)).unwrap();
    services.apply_watcher_event(&watcher::Event::Apply(vs));
    let leader = Leadership::always();
    leader.set(world.leader);
    let mut ctx = Context::new(
        client,
        Arc::new(world.metrics),
        leader,
        deployments.as_reader(),
        services.as_reader(),
        Duration::from_secs(30),
    );
    ctx.now = fixed_now;
    ctx.grants = seed_grant();
    (Arc::new(ctx), handle)
}

/// The seed's ReferenceGrant: stage lets Canaries from prod drive its Deployment.
fn seed_grant() -> super::boundaries::Grants {
    let grant: crate::api::reference_grant::ReferenceGrant = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "canaryd-from-prod", "namespace": "stage"},
        "spec": {
            "from": [{"group": "canaryd.dev", "kind": "Canary", "namespace": "prod"}],
            "to": [{"group": "apps", "kind": "Deployment", "name": "flaskapp"}]
        }
    }))
    .unwrap();
    let mut writer = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Apply(grant));
    super::boundaries::Grants::Watched(writer.as_reader())
}

/// One expected request and how to answer it.
struct Expect {
    method: Method,
    path: &'static str,
    answer: fn(&Value) -> (StatusCode, Value),
}

fn echo(body: &Value) -> (StatusCode, Value) {
    (StatusCode::OK, body.clone())
}

/// The Canary as stored after a status patch.
fn status_answer(body: &Value) -> (StatusCode, Value) {
    let mut c = serde_json::to_value(canary(CanaryStatus::default())).unwrap();
    c["status"] = status_op(body)["value"].clone();
    (StatusCode::OK, c)
}

/// The request log of a scenario: (method, path, body).
type Seen = Arc<Mutex<Vec<(Method, String, Value)>>>;

/// Serves the expected requests in order; panics on any other request.
fn serve(
    mut handle: Handle,
    script: Vec<Expect>,
    seen: Seen,
    objects: Value,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for expect in script {
            let (request, send) = handle
                .next_request()
                .await
                .expect("the reconciler made the expected request");
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock()
                .unwrap()
                .push((method.clone(), path.clone(), body.clone()));
            assert_eq!(
                (&method, path.as_str()),
                (&expect.method, expect.path),
                "unexpected request; body {body}"
            );
            let (status, mut answer) = (expect.answer)(&body);
            if answer.is_null() {
                answer = objects[expect.path].clone();
            }
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    })
}

const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/prod/virtualservices/demoapp";
const STATUS_PATH: &str = "/apis/canaryd.dev/v1alpha1/namespaces/prod/canaries/flaskapp/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
const STAGE_PATH: &str = "/apis/apps/v1/namespaces/stage/deployments/flaskapp";
const PROD_PATH: &str = "/apis/apps/v1/namespaces/prod/deployments/flaskapp";

fn get(path: &'static str) -> Expect {
    Expect {
        method: Method::GET,
        path,
        answer: |_| (StatusCode::OK, Value::Null),
    }
}

fn patch(path: &'static str, answer: fn(&Value) -> (StatusCode, Value)) -> Expect {
    Expect {
        method: Method::PATCH,
        path,
        answer,
    }
}

fn event() -> Expect {
    Expect {
        method: Method::POST,
        path: EVENTS_PATH,
        answer: echo,
    }
}

/// Applies a JSON patch to the stored VirtualService at `stage_weight`.
fn patched_vs(body: &Value, stage_weight: i64) -> Value {
    let mut doc = virtual_service(stage_weight);
    let p: json_patch::Patch = serde_json::from_value(body.clone()).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    doc
}

fn weights_in(body: &Value) -> Vec<i64> {
    body.as_array()
        .unwrap()
        .iter()
        .filter(|op| op["path"].as_str().unwrap().ends_with("/weight"))
        .map(|op| op["value"].as_i64().unwrap())
        .collect()
}

/// The op of a status patch that writes the status (after its resourceVersion `test`).
fn status_op(body: &Value) -> &Value {
    body.as_array()
        .unwrap()
        .iter()
        .find(|op| op["path"] == "/status")
        .expect("a status patch writes /status")
}

fn status_in(body: &Value) -> CanaryStatus {
    serde_json::from_value(status_op(body)["value"].clone()).unwrap()
}

async fn run(
    ctx: Arc<Context>,
    canary: Canary,
    server: tokio::task::JoinHandle<()>,
) -> kube::runtime::controller::Action {
    let canary = looked_before(&ctx, canary).await;
    finished(reconcile::reconcile(Arc::new(canary), ctx), server).await
}

/// A progressing rollout without analysis state gets the state of two earlier looks at the
/// same counts: the first look of a rollout is held back for the second (there is no rate
/// yet to tell a burst from it), and the rounds tested here decide on their own look.
async fn looked_before(ctx: &Context, mut canary: Canary) -> Canary {
    let Some(status) = canary.status.as_ref() else {
        return canary;
    };
    if status.phase != Phase::Progressing || status.analysis.is_some() {
        return canary;
    }
    let counts = ctx
        .metrics
        .counts(&canary, fixed_now(), ctx.interval)
        .await
        .unwrap();
    let mut state = crate::api::AnalysisState::default();
    for look in 1..=2 {
        let at = crate::analysis::LookContext {
            step: status.step,
            stage_weight: status.stage_weight,
            elapsed_in_step: ctx.interval * look,
            min_duration: canary.spec.step_duration.min.0,
            comparative_steps: crate::analysis::comparative_steps(&canary.spec.steps),
        };
        state = crate::analysis::evaluate_look(&canary.spec.analysis, &state, &counts, &at)
            .unwrap()
            .state;
    }
    canary.status.as_mut().unwrap().analysis = Some(state);
    canary
}

/// The outcome of `round`, once it succeeded and every expected request was made.
async fn finished(
    round: impl std::future::Future<Output = Result<kube::runtime::controller::Action, super::Error>>,
    server: tokio::task::JoinHandle<()>,
) -> kube::runtime::controller::Action {
    let action = round.await.expect("reconcile succeeds");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("every expected request was made")
        .unwrap();
    action
}

fn objects() -> Value {
    json!({
        VS_PATH: virtual_service(30),
        STAGE_PATH: deployment("stage", "demoapp:v2", true),
        PROD_PATH: deployment("prod", "demoapp:v1", true),
    })
}

fn progressing(step: u32, weight: u8) -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Progressing,
        stage_revision: Some(workload::revision(
            &deployment("stage", "demoapp:v2", true),
            &Default::default(),
        )),
        prod_revision: Some(workload::revision(
            &deployment("prod", "demoapp:v1", true),
            &Default::default(),
        )),
        step,
        stage_weight: weight,
        rollout_started_at: Some(minutes_ago(20)),
        step_started_at: Some(minutes_ago(5)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_new_stage_revision_starts_a_rollout_at_zero() {
    let (ctx, handle) = context(World::default());
    let seen = Seen::default();
    let script = vec![event(), patch(STATUS_PATH, status_answer)];
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(CanaryStatus::default()), server).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].2["reason"], "RolloutStarted");
    let status = status_in(&seen[1].2);
    assert_eq!((status.phase, status.stage_weight), (Phase::Testing, 0));
    assert!(
        status.pending_gate.is_some(),
        "the pre-traffic gate is running"
    );
    let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Reconciling"], "only what is not usual");
}

#[tokio::test]
async fn a_short_signing_key_is_a_condition_and_its_gate_fails_without_a_request() {
    let (ctx, handle) = context(World::default());
    let mut c = canary(CanaryStatus::default());
    c.spec.webhooks = serde_json::from_value(json!([{
        "name": "ci", "type": "pre-rollout", "url": "http://ci.prod.svc/hook",
        "secretRef": {"name": "hmac", "key": "key"}
    }]))
    .unwrap();
    let secret = |_: &Value| {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "hmac", "namespace": "prod"},
            "data": {"key": "YWJj"}}); // "abc"
        (StatusCode::OK, secret)
    };
    let script = vec![
        Expect {
            method: Method::GET,
            path: "/api/v1/namespaces/prod/secrets/hmac",
            answer: secret,
        },
        event(),
        patch(STATUS_PATH, status_answer),
    ];
    let seen = Seen::default();
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx.clone(), c, server).await;
    let status = status_in(&seen.lock().unwrap()[2].2);
    let keys = status
        .conditions
        .iter()
        .find(|c| c.type_ == "SigningKeysReady")
        .expect("a SigningKeysReady condition");
    assert_eq!(keys.status, "False");
    assert!(
        keys.message
            .contains("is 3 bytes; a signing key needs at least 16"),
        "{}",
        keys.message
    );
    // The pre-traffic gate failed at once: the webhook was never called unsigned.
    let pending = status.pending_gate.expect("the pre-traffic gate");
    let result = ctx
        .gates
        .take(&super::gates::GateKey {
            canary_uid: "u1".into(),
            generation: 1,
            id: pending.id,
        })
        .expect("a result without running");
    assert!(!result.passed);
    assert!(result
        .message
        .starts_with("webhook ci not called: key key of Secret prod/hmac"));
}

#[tokio::test]
async fn another_canarys_gate_result_under_the_same_id_is_never_taken() {
    let (ctx, handle) = context(World::default());
    let mut testing = progressing(0, 0);
    testing.phase = Phase::Testing;
    testing.pending_gate = Some(crate::api::PendingGate {
        id: "b17a764a16-0-PreTraffic-1700000000000".into(),
        kind: crate::api::GateKind::PreTraffic,
        started_at: minutes_ago(0),
    });
    let key = |uid: &str| super::gates::GateKey {
        canary_uid: uid.into(),
        generation: 1,
        id: "b17a764a16-0-PreTraffic-1700000000000".into(),
    };
    // A second Canary on the same stage Deployment, started in the same millisecond: its
    // gate failed.
    ctx.gates
        .fail(key("u2"), "check smoke: answered 500".into());
    let seen = Seen::default();
    let script = vec![patch(STATUS_PATH, status_answer)];
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx.clone(), canary(testing), server).await;
    let status = status_in(&seen.lock().unwrap()[0].2);
    assert_eq!(
        status.phase,
        Phase::Testing,
        "not rolled back: {}",
        status.message
    );
    assert!(status.pending_gate.is_some());
    assert!(
        ctx.gates.is_running(&key("u1")),
        "this Canary runs its own gate"
    );
    let theirs = ctx
        .gates
        .take(&key("u2"))
        .expect("the other result is still there");
    assert_eq!(theirs.message, "check smoke: answered 500");
}

#[tokio::test]
async fn an_advance_writes_exactly_the_next_weights() {
    let (ctx, handle) = context(World {
        stage_weight: 30,
        ..Default::default()
    });
    let seen = Seen::default();
    let script = moving_traffic(vec![event()]);
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(progressing(1, 30)), server).await;
    let seen = seen.lock().unwrap();
    // Intent first: the status says where the weights go before they move.
    let intent = status_in(&seen[0].2);
    assert_eq!(
        (intent.phase, intent.step, intent.stage_weight),
        (Phase::Progressing, 2, 60)
    );
    let recorded = intent.traffic_intent.expect("the intent is in the status");
    assert_eq!((recorded.from, recorded.to), (30, 60));
    assert_eq!(
        seen[0].2[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "5"}),
        "the status write is fenced by the version it was decided on"
    );
    assert_eq!(weights_in(&seen[2].2), vec![40, 60], "prod 40, stage 60");
    assert_eq!(
        seen[2].2[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "21"}),
        "the weight write is fenced by the version it was computed from"
    );
    let confirmed = status_in(&seen[4].2);
    assert_eq!(confirmed.traffic_intent, None, "confirmed once written");
    assert_eq!(confirmed.traffic_version.as_deref(), Some("21"));
    assert_eq!(
        confirmed.last_decision.unwrap().verdict,
        crate::api::Verdict::Advance
    );
}

/// A round that moves traffic: the status with the intent, the weights (read, patch), the
/// round's other requests, then the confirming status write.
fn moving_traffic(others: Vec<Expect>) -> Vec<Expect> {
    let mut script = vec![
        patch(STATUS_PATH, status_answer),
        get(VS_PATH),
        patch(VS_PATH, |b| (StatusCode::OK, patched_vs(b, 30))),
    ];
    script.extend(others);
    script.push(patch(STATUS_PATH, status_answer));
    script
}

#[tokio::test]
async fn a_rollback_writes_100_0_and_records_the_event() {
    let (ctx, handle) = context(World {
        stage_weight: 30,
        metrics: FixedCounts {
            stage_error_rate: 0.10,
            prod_error_rate: 0.01,
        },
        ..Default::default()
    });
    let seen = Seen::default();
    let script = moving_traffic(vec![event()]);
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(progressing(1, 30)), server).await;
    let seen = seen.lock().unwrap();
    let intent = status_in(&seen[0].2);
    assert_eq!(
        intent.phase,
        Phase::RolledBack,
        "the rollback is decided in the status before the weights move"
    );
    assert_eq!(weights_in(&seen[2].2), vec![100, 0]);
    assert_eq!(seen[3].2["reason"], "RolledBack");
    assert_eq!(seen[3].2["type"], "Warning");
    assert_eq!(status_in(&seen[4].2).traffic_intent, None);
}

#[tokio::test]
async fn a_rollback_records_its_alert_in_the_status_and_alertmanager_gets_it() {
    let am = canaryd_lab::alertmanager::LabAlertmanager::start()
        .await
        .expect("alertmanager starts");
    let (mut ctx, handle) = context(World {
        stage_weight: 30,
        metrics: FixedCounts {
            stage_error_rate: 0.10,
            prod_error_rate: 0.01,
        },
        ..Default::default()
    });
    let notifiers = [crate::config::NotifierConfig::Alertmanager {
        name: "am".into(),
        url: am.url(),
    }];
    Arc::get_mut(&mut ctx).unwrap().notifier =
        crate::notify::Notifier::new(&notifiers, Default::default(), Default::default()).unwrap();
    let seen = Seen::default();
    let script = moving_traffic(vec![event()]);
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(progressing(1, 30)), server).await;
    let status = status_in(&seen.lock().unwrap()[0].2);
    let alert = &status.notifications.alerts[0];
    assert_eq!(alert.alertname, "CanaryRolledBack");
    assert!(
        alert
            .description
            .contains("errors: rollback · stage 10 % of"),
        "{}",
        alert.description
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let alerts = am.alerts().await.unwrap_or_default();
        if !alerts.is_empty() || std::time::Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["labels"]["canary"], "flaskapp");
    assert_eq!(
        alerts[0]["labels"]["stage_revision"],
        json!(status.stage_revision)
    );
}

#[tokio::test]
async fn a_conflict_on_the_virtual_service_is_retried_on_a_fresh_read() {
    let (ctx, handle) = context(World {
        stage_weight: 30,
        ..Default::default()
    });
    let seen = Seen::default();
    let conflict = |_: &Value| {
        (
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                   "message": "the object has been modified"}),
        )
    };
    let script = vec![
        patch(STATUS_PATH, status_answer),
        get(VS_PATH),
        patch(VS_PATH, conflict),
        get(VS_PATH),
        patch(VS_PATH, |b| (StatusCode::OK, patched_vs(b, 30))),
        event(),
        patch(STATUS_PATH, status_answer),
    ];
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(progressing(1, 30)), server).await;
    let seen = seen.lock().unwrap();
    assert_eq!(weights_in(&seen[4].2), vec![40, 60]);
    assert_eq!(status_in(&seen[6].2).stage_weight, 60);
}

#[tokio::test]
async fn promotion_sets_prod_images_then_waits_for_prod_to_be_ready() {
    let (ctx, handle) = context(World {
        stage_weight: 100,
        ..Default::default()
    });
    let seen = Seen::default();
    let script = vec![
        event(),
        get(STAGE_PATH),
        get(PROD_PATH),
        patch(PROD_PATH, |b| {
            let mut doc = serde_json::to_value(deployment("prod", "demoapp:v1", true)).unwrap();
            let p: json_patch::Patch = serde_json::from_value(b.clone()).unwrap();
            json_patch::patch(&mut doc, &p).unwrap();
            (StatusCode::OK, doc)
        }),
        patch(STATUS_PATH, status_answer),
    ];
    let server = serve(handle, script, seen.clone(), objects());
    run(ctx, canary(progressing(3, 100)), server).await;
    let promoted_template = {
        let seen = seen.lock().unwrap();
        let ops = seen[3].2.as_array().expect("a JSON patch");
        assert_eq!(ops[0]["op"], "test", "guarded by prod's resourceVersion");
        assert_eq!(
            ops[1..],
            [
                serde_json::json!({"op": "add", "path": "/spec/template/spec/containers/0/image", "value": "demoapp:v2"})
            ],
            "the image and nothing else"
        );
        status_in(&seen[4].2)
    };
    assert_eq!(
        (promoted_template.phase, promoted_template.stage_weight),
        (Phase::Promoting, 100)
    );

    // Prod runs v2 but is not ready yet: nothing to do.
    let (ctx, handle) = context(World {
        stage_weight: 100,
        prod_image: "demoapp:v2",
        prod_ready: false,
        ..Default::default()
    });
    let server = serve(handle, vec![], Seen::default(), objects());
    run(ctx, canary(promoted_template.clone()), server).await;

    // Ready: no checks configured, so traffic moves back to prod.
    let (ctx, handle) = context(World {
        stage_weight: 100,
        prod_image: "demoapp:v2",
        ..Default::default()
    });
    let seen = Seen::default();
    let script = vec![
        patch(STATUS_PATH, status_answer),
        get(VS_PATH),
        patch(VS_PATH, |b| (StatusCode::OK, patched_vs(b, 100))),
        event(),
        patch(STATUS_PATH, status_answer),
    ];
    let server = serve(
        handle,
        script,
        seen.clone(),
        json!({VS_PATH: virtual_service(100)}),
    );
    run(ctx, canary(promoted_template), server).await;
    let seen = seen.lock().unwrap();
    assert_eq!(status_in(&seen[0].2).phase, Phase::SwitchingBack);
    assert_eq!(weights_in(&seen[2].2), vec![100, 0]);
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_writes_nothing() {
    let (ctx, handle) = context(World {
        stage_weight: 30,
        leader: false,
        metrics: FixedCounts {
            stage_error_rate: 0.10,
            prod_error_rate: 0.01,
        },
        ..Default::default()
    });
    let action = reconcile::reconcile(Arc::new(canary(progressing(1, 30))), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    drop(ctx);
    let mut handle = handle;
    assert!(handle.next_request().await.is_none(), "no request was made");
}

#[tokio::test]
async fn an_invalid_spec_is_a_condition_not_a_crash_loop() {
    let (ctx, handle) = context(World::default());
    let mut c = canary(CanaryStatus::default());
    c.spec.steps = vec![0, 50, 40];
    let seen = Seen::default();
    let server = serve(
        handle,
        vec![patch(STATUS_PATH, status_answer)],
        seen.clone(),
        objects(),
    );
    let action = run(ctx, c, server).await;
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let status = status_in(&seen.lock().unwrap()[0].2);
    let cond = &status.conditions[0];
    assert_eq!(
        (cond.type_.as_str(), cond.status.as_str()),
        ("SpecValid", "False")
    );
    assert!(
        cond.message.contains("spec.steps[2]: 40 does not exceed"),
        "{}",
        cond.message
    );
}

/// (API group, resource, verb) of a request path, as RBAC names them.
fn rbac_triple(method: &Method, path: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = if parts[0] == "api" {
        (String::new(), &parts[2..])
    } else {
        (parts[1].to_string(), &parts[3..])
    };
    let rest = if rest.first() == Some(&"namespaces") {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [r, _, sub] => format!("{r}/{sub}"),
        [r, ..] => r.to_string(),
        [] => String::new(),
    };
    let verb = match *method {
        Method::GET if rest.len() >= 2 => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (group, resource, verb.to_string())
}

#[test]
fn rbac_in_deploy_covers_every_call_the_controller_makes() {
    // The daemon's own rights, and the Role a namespace with signed webhooks grants.
    let text = ["canaryd.yaml", "webhook-secrets.yaml"]
        .map(|f| {
            std::fs::read_to_string(format!("{}/deploy/rbac/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        })
        .join("\n---\n");
    let mut allowed = std::collections::HashSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" && v["kind"] != "Role" {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        allowed.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    // Calls made by the scenarios above, and by the watches, the finalizer, leader election,
    // webhook secrets and the status subresource.
    let mut needed = vec![
        (Method::GET, VS_PATH),
        (Method::PATCH, VS_PATH),
        (Method::POST, EVENTS_PATH),
        (
            Method::PATCH,
            "/apis/events.k8s.io/v1/namespaces/prod/events/x",
        ),
        (Method::PATCH, STATUS_PATH),
        (Method::GET, STAGE_PATH),
        (Method::PATCH, PROD_PATH),
        (
            Method::PATCH,
            "/apis/canaryd.dev/v1alpha1/namespaces/prod/canaries/flaskapp",
        ),
        (Method::GET, "/apis/canaryd.dev/v1alpha1/canaries"),
        (Method::GET, "/apis/apps/v1/deployments"),
        (Method::GET, "/apis/networking.istio.io/v1/virtualservices"),
        (
            Method::GET,
            "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
        ),
        (Method::GET, "/api/v1/namespaces/prod/secrets/hmac"),
        (
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/canaryd/leases/canaryd",
        ),
        (
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/canaryd/leases",
        ),
        (
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/canaryd/leases/canaryd",
        ),
    ]
    .into_iter()
    .map(|(m, p)| rbac_triple(&m, p))
    .collect::<Vec<_>>();
    // Lists come with watches.
    let watches: Vec<_> = needed
        .iter()
        .filter(|(_, _, v)| v == "list")
        .map(|(g, r, _)| (g.clone(), r.clone(), "watch".to_string()))
        .collect();
    needed.extend(watches);
    for triple in needed {
        assert!(
            allowed.contains(&triple),
            "deploy/rbac/canaryd.yaml does not allow {triple:?}"
        );
    }
}

#[tokio::test]
async fn a_cache_that_has_not_seen_our_status_write_is_not_decided_on_again() {
    let (ctx, handle) = context(World {
        stage_weight: 30,
        ..Default::default()
    });
    let script = moving_traffic(vec![event()]);
    let server = serve(handle, script, Seen::default(), objects());
    let stale = canary(progressing(1, 30));
    run(ctx.clone(), stale.clone(), server).await;
    // The same cached object again (our write not yet seen): no request, a short requeue.
    let action = reconcile::reconcile(Arc::new(stale), ctx)
        .await
        .expect("no error");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_millis(200))
    );
}

/// The Canary as stored, after `edit`: what an older or looser CRD let in.
fn stored(edit: impl FnOnce(&mut Value)) -> Arc<kube::api::DynamicObject> {
    let mut v = serde_json::to_value(canary(CanaryStatus::default())).unwrap();
    edit(&mut v);
    Arc::new(serde_json::from_value(v).unwrap())
}

/// [`decode::reconcile`] of `obj`, and every expected request made.
async fn run_stored(
    ctx: Arc<Context>,
    obj: Arc<kube::api::DynamicObject>,
    server: tokio::task::JoinHandle<()>,
) -> kube::runtime::controller::Action {
    finished(decode::reconcile(obj, ctx), server).await
}

fn bad_step_duration(v: &mut Value) {
    v["spec"]["stepDuration"] = json!({"min": "5 parsecs", "max": "99999999999999999999999s"});
}

#[tokio::test]
async fn a_spec_that_does_not_decode_is_a_condition_naming_the_field_written_once() {
    let (ctx, handle) = context(World::default());
    let seen = Seen::default();
    let server = serve(
        handle,
        vec![patch(STATUS_PATH, status_answer)],
        seen.clone(),
        objects(),
    );
    let action = run_stored(ctx.clone(), stored(bad_step_duration), server).await;
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let status = status_in(&seen.lock().unwrap()[0].2);
    let cond = &status.conditions[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_str()
        ),
        ("SpecValid", "False", "InvalidSpec")
    );
    assert!(
        cond.message
            .contains("spec.stepDuration.min: \"5 parsecs\" is not a duration"),
        "{}",
        cond.message
    );
    assert!(
        status
            .message
            .starts_with("invalid spec, nothing done: spec.stepDuration"),
        "{}",
        status.message
    );
    assert_eq!(status.observed_generation, Some(1));
    // With that status stored, the next round writes nothing (the mock has no more answers:
    // any request would fail the round).
    let again = stored(|v| {
        bad_step_duration(v);
        v["status"] = serde_json::to_value(&status).unwrap();
        // As stored after that write: a newer resourceVersion than the one it was based on.
        v["metadata"]["resourceVersion"] = json!("6");
    });
    let action = decode::reconcile(again, ctx).await.expect("no request");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn a_canary_being_deleted_whose_spec_does_not_decode_loses_the_finalizer() {
    let (ctx, handle) = context(World::default());
    let seen = Seen::default();
    let gone = |_: &Value| {
        let mut c = serde_json::to_value(canary(CanaryStatus::default())).unwrap();
        c["metadata"]["finalizers"] = json!([]);
        (StatusCode::OK, c)
    };
    let script = vec![patch(
        "/apis/canaryd.dev/v1alpha1/namespaces/prod/canaries/flaskapp",
        gone,
    )];
    let server = serve(handle, script, seen.clone(), objects());
    let obj = stored(|v| {
        bad_step_duration(v);
        v["metadata"]["deletionTimestamp"] = json!("2026-11-29T11:59:00Z");
    });
    run_stored(ctx, obj, server).await;
    let body = &seen.lock().unwrap()[0].2;
    assert_eq!(
        body,
        &json!([
            {"op": "test", "path": "/metadata/finalizers", "value": [FINALIZER]},
            {"op": "replace", "path": "/metadata/finalizers", "value": []}
        ])
    );
}

#[tokio::test]
async fn a_status_that_does_not_decode_is_started_over_from_empty() {
    let (ctx, handle) = context(World::default());
    let seen = Seen::default();
    let script = vec![event(), patch(STATUS_PATH, status_answer)];
    let server = serve(handle, script, seen.clone(), objects());
    let obj = stored(|v| v["status"] = json!({"phase": "Exploding", "step": "three"}));
    run_stored(ctx, obj, server).await;
    let status = status_in(&seen.lock().unwrap()[1].2);
    assert_eq!((status.phase, status.stage_weight), (Phase::Testing, 0));
}

#[tokio::test]
async fn an_older_canary_whose_spec_does_not_decode_owns_no_route() {
    let (ctx, handle) = context(World::default());
    let mut ctx = (*ctx).clone();
    let mut canaries = Writer::new(decode::api_resource());
    let older = stored(|v| {
        bad_step_duration(v);
        v["metadata"]["name"] = json!("older");
        v["metadata"]["uid"] = json!("u0");
        v["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    });
    for obj in [older, stored(|_| {})] {
        canaries.apply_watcher_event(&watcher::Event::Apply((*obj).clone()));
    }
    ctx.canaries = canaries.as_reader();
    let seen = Seen::default();
    let script = vec![event(), patch(STATUS_PATH, status_answer)];
    let server = serve(handle, script, seen.clone(), objects());
    run_stored(Arc::new(ctx), stored(|_| {}), server).await;
    let status = status_in(&seen.lock().unwrap()[1].2);
    assert_eq!(status.phase, Phase::Testing, "{}", status.message);
}

#[test]
fn windows_end_on_the_interval_grid_so_canaries_due_together_share_one_batch() {
    use super::reconcile::{look_due, window_end};
    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    let (scrape, interval) = (Duration::from_secs(15), Duration::from_secs(30));
    // Two Canaries looking 7 s apart read the same window end: one scrape interval back,
    // rounded down to the 30 s grid.
    for now in ["2026-12-08T10:00:47Z", "2026-12-08T10:00:54Z"] {
        assert_eq!(
            window_end(at(now), scrape, interval),
            Some(at("2026-12-08T10:00:30Z"))
        );
    }
    // A step started at :12 has its first look due when a grid point one interval later
    // has been scraped: the window (:12, :60] ends at 10:01:00, read at 10:01:15.
    let due = look_due(at("2026-12-08T10:00:12Z"), scrape, interval).unwrap();
    assert_eq!(due, at("2026-12-08T10:01:15Z"));
    assert_eq!(
        window_end(due, scrape, interval),
        Some(at("2026-12-08T10:01:00Z"))
    );
    // Then every 30 s, tiling time: each window starts where the last ended.
    let next = look_due(at("2026-12-08T10:01:00Z"), scrape, interval).unwrap();
    assert_eq!(next, at("2026-12-08T10:01:45Z"));
    assert_eq!(
        window_end(next, scrape, interval),
        Some(at("2026-12-08T10:01:30Z"))
    );
    // Not due a millisecond early.
    let early = next - jiff::SignedDuration::from_millis(1);
    assert_eq!(
        window_end(early, scrape, interval),
        Some(at("2026-12-08T10:01:00Z"))
    );
}

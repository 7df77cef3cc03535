//! canaryd in a shared cluster: a Canary author borrows none of canaryd's rights. Each test
//! plays an attack against the lab with the real daemon and asserts the safe outcome.

use std::process::Command;
use std::time::Duration;

use canaryd::api::virtual_service::VirtualService;
use canaryd::api::{Canary, Condition, Phase};
use canaryd_lab::harness::{lab_canary, Daemon, Lab, LabOptions};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::e2e_lab::ONE_AT_A_TIME;

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const TIMEOUT: Duration = Duration::from_secs(300);

/// A victim team's app and a tenant's own Deployment, in two more namespaces.
const VICTIM_AND_TENANT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: victim}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: critical, namespace: victim}
spec:
  replicas: 2
  selector: {matchLabels: {app: critical}}
  template:
    metadata: {labels: {app: critical}}
    spec:
      serviceAccountName: critical
      containers: [{name: app, image: "critical:v1"}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: critical, namespace: victim}
spec:
  hosts: ["critical.example.com"]
  http:
    - name: primary
      route:
        - destination: {host: critical.victim.svc.cluster.local}
          weight: 100
        - destination: {host: evil.tenant.svc.cluster.local}
          weight: 0
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: evil, namespace: tenant}
spec:
  replicas: 1
  selector: {matchLabels: {app: evil}}
  template:
    metadata: {labels: {app: evil}}
    spec:
      serviceAccountName: tenant-admin
      containers: [{name: app, image: "evil:v1", command: ["steal", "--everything"]}]
"#;

/// The tenant's Canary: prod is the victim's Deployment, stage its own, the victim's route.
const TENANT_CANARY: &str = r#"
apiVersion: canaryd.dev/v1alpha1
kind: Canary
metadata: {name: takeover, namespace: tenant}
spec:
  virtualService: {name: critical, namespace: victim}
  prod:  {host: critical.victim.svc.cluster.local, deployment: {namespace: victim, name: critical}}
  stage: {host: evil.tenant.svc.cluster.local, deployment: {name: evil}}
  stepDuration: {min: 4s, max: 1m}
  analysis: {interval: 4s}
"#;

/// A lab without Alertmanager, and without the lab's checks: its daemons keep the product's
/// egress defaults.
async fn quiet_lab() -> Lab {
    Lab::start(LabOptions {
        alertmanager: false,
        checks: false,
        ..Default::default()
    })
    .await
    .expect("the lab starts")
}

/// Follows Canary `namespace/name` until `done`; fails with the daemon's log.
async fn until(
    lab: &Lab,
    daemon: &Daemon,
    namespace: &str,
    name: &str,
    done: impl Fn(&Canary) -> bool,
) -> Canary {
    lab.follow_canary(namespace, name, TIMEOUT, |_| {}, done)
        .await
        .unwrap_or_else(|e| panic!("{}", daemon.explain(e)))
}

fn condition<'a>(c: &'a Canary, type_: &str) -> Option<&'a Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn is(c: &Canary, type_: &str, status: &str) -> bool {
    condition(c, type_).is_some_and(|c| c.status == status)
}

/// What a takeover would change: the victim Deployment's pod template and the route.
async fn victim_state(lab: &Lab) -> (serde_json::Value, serde_json::Value) {
    let d = Api::<Deployment>::namespaced(lab.client.clone(), "victim")
        .get("critical")
        .await
        .unwrap();
    let vs = Api::<VirtualService>::namespaced(lab.client.clone(), "victim")
        .get("critical")
        .await
        .unwrap();
    (
        serde_json::to_value(d.spec.unwrap().template).unwrap(),
        serde_json::to_value(vs.spec).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_canary_naming_another_namespace_reads_and_writes_nothing_there() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = quiet_lab().await;
    lab.api.install(VICTIM_AND_TENANT).unwrap();
    let before = victim_state(&lab).await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let canaries = Api::<Canary>::namespaced(lab.client.clone(), "tenant");
    let takeover: Canary = serde_yaml_ng::from_str(TENANT_CANARY).unwrap();
    canaries
        .create(&PostParams::default(), &takeover)
        .await
        .unwrap();

    let refused = until(&lab, &daemon, "tenant", "takeover", |c| {
        is(c, "ReferencesAllowed", "False")
    })
    .await;
    let message = &condition(&refused, "ReferencesAllowed").unwrap().message;
    for refused_ref in [
        "spec.virtualService: VirtualService victim/critical",
        "spec.prod.deployment: Deployment victim/critical",
        "kind: ReferenceGrant",
    ] {
        assert!(
            message.contains(refused_ref),
            "{refused_ref} not in: {message}"
        );
    }
    assert!(
        !message.contains("spec.stage.deployment"),
        "stage is the tenant's own Deployment"
    );

    // The tenant forces promotion, then edits the spec so that we can see the daemon decide
    // on the Canary with the command in it (observedGeneration follows the edit).
    let out = Command::new(BINARY)
        .args(["promote", "takeover", "-n", "tenant"])
        .env("KUBECONFIG", lab.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edit = serde_json::json!({"spec": {"stepDuration": {"max": "2m"}}});
    let edited = canaries
        .patch("takeover", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let generation = edited.metadata.generation;
    let decided = until(&lab, &daemon, "tenant", "takeover", |c| {
        c.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await;

    let status = decided.status.unwrap();
    assert_eq!(
        status.phase,
        Phase::Idle,
        "no rollout: {:?}",
        status.message
    );
    assert_eq!(status.stage_weight, 0);
    assert!(
        status.last_command.is_none(),
        "the command was not carried out"
    );
    assert_eq!(
        victim_state(&lab).await,
        before,
        "the victim's Deployment and route are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_canary_on_a_route_is_in_conflict_and_never_writes_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = quiet_lab().await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    // The same Canary again under another name, created after the lab's own.
    let mut copy = lab_canary(lab.options.speed);
    copy.metadata.name = Some("flaskapp-copy".into());
    lab.canaries()
        .create(&PostParams::default(), &copy)
        .await
        .unwrap();
    let conflicted = until(&lab, &daemon, "prod", "flaskapp-copy", |c| {
        is(c, "Conflict", "True")
    })
    .await;
    let message = &condition(&conflicted, "Conflict").unwrap().message;
    assert!(
        message.contains("Canary prod/flaskapp drives this route"),
        "{message}"
    );

    // A release: the owner takes it through every step; the copy joins in nowhere.
    lab.release("demoapp:v2").await.unwrap();
    // Either end will do (a healthy release is still rolled back at the engine's false-alarm
    // rate): what matters is that the owner's weights never went up again once they fell.
    let end = until(&lab, &daemon, "prod", "flaskapp", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.stage_revision.is_some() && matches!(s.phase, Phase::Succeeded | Phase::RolledBack)
        })
    })
    .await;
    let history: Vec<u8> = end
        .status
        .unwrap()
        .history
        .iter()
        .map(|h| h.stage_weight)
        .collect();
    let fell = history
        .windows(2)
        .position(|w| w[1] < w[0])
        .unwrap_or(history.len());
    assert!(
        history[..fell.min(history.len())]
            .windows(2)
            .all(|w| w[0] <= w[1])
            && history[fell.min(history.len())..]
                .windows(2)
                .all(|w| w[1] <= w[0]),
        "weight flap: {history:?}"
    );
    let copy = lab.canaries().get("flaskapp-copy").await.unwrap();
    assert!(is(&copy, "Conflict", "True"));
    let status = copy.status.unwrap();
    assert_eq!(status.phase, Phase::Idle);
    assert!(
        status.stage_revision.is_none(),
        "the copy never started a rollout"
    );
    assert!(status.history.is_empty(), "{:?}", status.history);
}

/// A loopback server that counts requests and answers every one with `status` and `body`.
async fn counting_server(
    status: u16,
    body: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (axum::http::StatusCode::from_u16(status).unwrap(), body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

/// Adds `gates` (checks and webhooks, as JSON) to the lab's Canary.
async fn with_gates(lab: &Lab, gates: serde_json::Value) {
    lab.canaries()
        .patch(
            "flaskapp",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": gates })),
        )
        .await
        .unwrap();
}

fn rolled_back(c: &Canary) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.stage_revision.is_some() && s.phase == Phase::RolledBack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_aimed_at_a_loopback_address_never_reaches_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = quiet_lab().await;
    // Stands in for the metadata endpoint or an admin port on the node.
    let (addr, hits) = counting_server(200, "secret-instance-credentials").await;
    let url = format!("http://{addr}/latest/meta-data/iam");
    with_gates(
        &lab,
        serde_json::json!({"checks": [{"name": "steal", "url": url, "bodyContains": "secret"}]}),
    )
    .await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    lab.release("demoapp:v2").await.unwrap();
    let end = until(&lab, &daemon, "prod", "flaskapp", rolled_back).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request reached it"
    );
    let message = end.status.unwrap().message;
    assert!(
        message.contains("allowPrivateAddresses") || message.contains("egress.hosts"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_body_or_url_credential_reaches_the_status_events_or_alerts() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The test sets the daemon's egress itself.
    let lab = Lab::start(LabOptions {
        checks: false,
        ..Default::default()
    })
    .await
    .expect("the lab starts");
    const MARKER: &str = "INTERNAL-ONLY-7f3a";
    let (addr, hits) = counting_server(500, MARKER).await;
    let url = format!("http://deployer:hunter2@{addr}/hook?token=tok-9c1e");
    with_gates(
        &lab,
        serde_json::json!({"webhooks": [{"name": "ci", "type": "pre-rollout", "url": url}]}),
    )
    .await;
    // This lab's admin lets the Canary reach the loopback server; the answer is still secret.
    let egress = format!(
        "egress: {{hosts: ['{}'], allowPrivateAddresses: true}}\n",
        addr.ip()
    );
    let daemon = lab
        .spawn_daemon_with(BINARY.as_ref(), "canaryd-0", &egress)
        .unwrap();
    lab.release("demoapp:v2").await.unwrap();
    let end = until(&lab, &daemon, "prod", "flaskapp", rolled_back).await;
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the webhook was called"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(lab.client.clone(), "prod")
        .list(&Default::default())
        .await
        .unwrap();
    let alerts = lab
        .alerts_when(TIMEOUT, |alerts| {
            alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == "CanaryRolledBack")
        })
        .await;
    let seen = [
        serde_json::to_string(&end.status).unwrap(),
        serde_json::to_string(&events).unwrap(),
        serde_json::to_string(&alerts).unwrap(),
        daemon.log_tail(),
    ];
    for (what, text) in ["status", "Events", "alerts", "log"].iter().zip(&seen) {
        for secret in [MARKER, "hunter2", "tok-9c1e"] {
            assert!(
                !text.contains(secret),
                "{secret} appears in the {what}: {text}"
            );
        }
    }
    assert!(
        seen[0].contains("answered 500"),
        "the status says what happened: {}",
        seen[0]
    );
}

//! End to end: the real `canaryd` binary against the lab (in-process Kubernetes API, simulated
//! rollouts and mesh, the real Prometheus), one whole rollout per test. The tests run one at a
//! time (each starts its own lab) and clean up their processes and files when they end or fail.

use std::process::Command;
use std::time::Duration;

use canaryd::api::{Canary, Phase};
use canaryd_lab::harness::{Daemon, Lab, LabOptions, LEASE_NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

/// One lab at a time on a 2-core machine (the demo's signal tests take it too).
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

async fn lab() -> Lab {
    Lab::start(LabOptions {
        requests_per_second: 4000.0,
        ..Default::default()
    })
    .await
    .expect("the lab starts")
}

/// A lab with canaryd running and `image` released to stage.
async fn released(image: &str) -> (Lab, Daemon) {
    let lab = lab().await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    lab.release(image).await.unwrap();
    (lab, daemon)
}

fn phase(c: &Canary) -> Option<Phase> {
    c.status
        .as_ref()
        .filter(|s| s.stage_revision.is_some())
        .map(|s| s.phase)
}

fn at_step(c: &Canary, step: u32) -> bool {
    phase(c) == Some(Phase::Progressing) && c.status.as_ref().is_some_and(|s| s.step >= step)
}

/// A terminal phase whose weights are on the route: canaryd records a traffic move in the
/// status (`trafficIntent`) before it writes the weights, and clears it once the route shows
/// them.
fn finished(c: &Canary) -> bool {
    matches!(
        phase(c),
        Some(Phase::Succeeded | Phase::RolledBack | Phase::Paused)
    ) && c
        .status
        .as_ref()
        .is_some_and(|s| s.traffic_intent.is_none())
}

/// The (phase, stage weight) sequence of the rollout, from the status history.
fn journey(c: &Canary) -> Vec<(Phase, u8)> {
    c.status
        .as_ref()
        .map(|s| {
            s.history
                .iter()
                .map(|h| (h.phase, h.stage_weight))
                .collect()
        })
        .unwrap_or_default()
}

const PROMOTED_JOURNEY: [(Phase, u8); 7] = [
    (Phase::Testing, 0),
    (Phase::Progressing, 30),
    (Phase::Progressing, 60),
    (Phase::Progressing, 100),
    (Phase::Promoting, 100),
    (Phase::SwitchingBack, 0),
    (Phase::Succeeded, 0),
];

async fn until(
    lab: &Lab,
    daemon: &canaryd_lab::harness::Daemon,
    done: impl Fn(&Canary) -> bool,
) -> Canary {
    match lab.follow(ROLLOUT_TIMEOUT, |_| {}, done).await {
        Ok(c) => c,
        Err(e) => panic!("{}", daemon.explain(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_goes_through_every_step_and_prod_ends_on_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, daemon) = released("demoapp:v2").await;
    let end = until(&lab, &daemon, finished).await;
    assert_eq!(phase(&end), Some(Phase::Succeeded), "{:?}", end.status);
    assert_eq!(journey(&end), PROMOTED_JOURNEY);
    assert_eq!(lab.prod_image().await.unwrap(), "demoapp:v2");
    assert_eq!(
        lab.stage_weight().await.unwrap(),
        0,
        "prod has all the traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_more_errors_is_rolled_back_at_its_first_traffic_step() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, daemon) = released("demoapp:v3").await;
    let end = until(&lab, &daemon, finished).await;
    let status = end.status.clone().unwrap();
    assert_eq!(status.phase, Phase::RolledBack, "{}", status.message);
    let decision = status.last_decision.unwrap();
    assert_eq!((decision.step, decision.stage_weight), (1, 30));
    assert!(decision.reason.contains("errors"), "{}", decision.reason);
    assert_eq!(lab.stage_weight().await.unwrap(), 0);
    assert_eq!(
        lab.prod_image().await.unwrap(),
        "demoapp:v1",
        "prod was not touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_health_page_fails_is_rolled_back_by_the_checks_before_any_traffic() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, daemon) = released(canaryd_lab::scenario::UNHEALTHY_IMAGE).await;
    let end = until(&lab, &daemon, finished).await;
    let status = end.status.clone().unwrap();
    assert_eq!(status.phase, Phase::RolledBack, "{}", status.message);
    assert_eq!(
        journey(&end),
        [(Phase::Testing, 0), (Phase::RolledBack, 0)],
        "no user request ever reached it"
    );
    let stage_health = format!(
        "{}: answered 503",
        lab.mesh
            .app_url("flaskapp.stage.svc.cluster.local", "/health")
    );
    assert!(
        status
            .message
            .contains("pre-traffic checks failed: check health: request 1/5")
            && status.message.contains(&stage_health),
        "{}",
        status.message
    );
    assert_eq!(lab.prod_image().await.unwrap(), "demoapp:v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_release_is_rolled_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, daemon) = released("demoapp:v4").await;
    let end = until(&lab, &daemon, finished).await;
    let status = end.status.clone().unwrap();
    assert_eq!(status.phase, Phase::RolledBack, "{}", status.message);
    assert!(status.last_decision.unwrap().reason.contains("latency"));
    assert_eq!(lab.stage_weight().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_during_a_step_holds_the_weights_until_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut lab = lab().await;
    // The lab's noData.after (20 s) would pause the rollout when the outage and Prometheus's
    // restart together take longer than that; this test is about holding, not pausing.
    lab.edit_canary(serde_json::json!({"analysis": {"noData": {"after": "2m"}}}))
        .await
        .unwrap();
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    lab.release("demoapp:v2").await.unwrap();
    until(&lab, &daemon, |c| at_step(c, 1)).await;

    lab.prometheus.stop();
    let held = until(&lab, &daemon, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.message.contains("telemetry unavailable"))
    })
    .await;
    let held_step = held.status.as_ref().unwrap().step;
    let weight = lab.stage_weight().await.unwrap();
    assert_eq!(
        i64::from(held.status.as_ref().unwrap().stage_weight),
        weight
    );
    // Nothing can be awaited here: the point is that nothing happens. Three more looks'
    // time without telemetry must leave the step and the weights where they were.
    let interval = held.spec.analysis.interval.unwrap().0;
    tokio::time::sleep(interval * 3).await;
    let now = lab.canaries().get("flaskapp").await.unwrap();
    assert_eq!(
        now.status.as_ref().unwrap().step,
        held_step,
        "advanced without telemetry"
    );
    assert_eq!(lab.stage_weight().await.unwrap(), weight, "weights held");

    lab.prometheus.restart().await.unwrap();
    let end = until(&lab, &daemon, finished).await;
    assert_eq!(phase(&end), Some(Phase::Succeeded), "{:?}", end.status);
    assert_eq!(
        journey(&end),
        PROMOTED_JOURNEY,
        "no step repeated or skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaryd_killed_mid_rollout_resumes_from_status() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, mut first) = released("demoapp:v2").await;
    until(&lab, &first, |c| at_step(c, 1)).await;
    first.kill();
    let second = lab.spawn_daemon(BINARY.as_ref(), "canaryd-1").unwrap();
    let end = until(&lab, &second, finished).await;
    assert_eq!(phase(&end), Some(Phase::Succeeded), "{:?}", end.status);
    assert_eq!(
        journey(&end),
        PROMOTED_JOURNEY,
        "no step repeated or skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_writes_and_the_other_takes_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = lab().await;
    let mut a = lab.spawn_daemon(BINARY.as_ref(), "canaryd-a").unwrap();
    let mut b = lab.spawn_daemon(BINARY.as_ref(), "canaryd-b").unwrap();
    lab.release("demoapp:v2").await.unwrap();
    until(&lab, &a, |c| at_step(c, 1)).await;

    let leases: Api<Lease> = Api::namespaced(lab.client.clone(), LEASE_NAMESPACE);
    let holder = leases
        .get("canaryd")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "prod");
    let reporters: std::collections::BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert_eq!(
        reporters,
        [holder.clone()].into(),
        "only the leader wrote Events"
    );

    let survivor = if holder == "canaryd-a" {
        a.kill();
        &b
    } else {
        b.kill();
        &a
    };
    let end = until(&lab, survivor, finished).await;
    assert_eq!(phase(&end), Some(Phase::Succeeded), "{:?}", end.status);
    assert_eq!(journey(&end), PROMOTED_JOURNEY);
    let lease = leases.get("canaryd").await.unwrap().spec.unwrap();
    assert_ne!(
        lease.holder_identity.unwrap(),
        holder,
        "the other replica took the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_rollout_and_can_abort_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (lab, daemon) = released("demoapp:v2").await;
    until(&lab, &daemon, |c| at_step(c, 1)).await;
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", lab.kubeconfig())
            .output()
            .expect("kubectl is installed (apt-get install -y kubectl)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = kubectl(&["get", "canaries", "-n", "prod"]);
    assert!(
        table.contains("PHASE") && table.contains("Progressing"),
        "{table}"
    );
    kubectl(&[
        "annotate",
        "canary",
        "flaskapp",
        "-n",
        "prod",
        "canaryd.dev/command=abort/from-kubectl",
        "--overwrite",
    ]);
    let end = until(&lab, &daemon, finished).await;
    let status = end.status.unwrap();
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(
        status.message.contains("aborted by an operator"),
        "{}",
        status.message
    );
    let phase = kubectl(&[
        "get",
        "canary",
        "flaskapp",
        "-n",
        "prod",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "RolledBack");
    assert_eq!(lab.stage_weight().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_never_becomes_ready_is_rolled_back_at_its_deadline_with_one_alert() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = lab().await;
    lab.edit_canary(serde_json::json!({"readiness": {"timeout": "8s"}}))
        .await
        .unwrap();
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let released = std::time::Instant::now();
    lab.release(canaryd_lab::scenario::CRASHLOOP_IMAGE)
        .await
        .unwrap();
    let end = until(&lab, &daemon, |c| phase(c) == Some(Phase::RolledBack)).await;
    let waited = released.elapsed();
    let status = end.status.clone().unwrap();
    assert!(
        status.message.contains("did not become ready within 8s")
            && status.message.contains("ProgressDeadlineExceeded"),
        "{}",
        status.message
    );
    assert!(status.stage_revision.is_some());
    assert_eq!(status.rolled_back_revision, status.stage_revision);
    assert_eq!(status.waiting_for_stage, None);
    assert!(
        waited >= Duration::from_secs(8),
        "rolled back after {waited:?}"
    );
    assert!(
        journey(&end)
            .iter()
            .all(|(p, w)| *w == 0 && *p != Phase::Testing),
        "no test and no traffic: {:?}",
        journey(&end)
    );
    assert_eq!(lab.stage_weight().await.unwrap(), 0);
    assert_eq!(lab.prod_image().await.unwrap(), "demoapp:v1");

    let events: Api<Event> = Api::namespaced(lab.client.clone(), "prod");
    let rolled_back: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolledBack"))
        .collect();
    assert_eq!(rolled_back.len(), 1, "{rolled_back:?}");
    assert_eq!(rolled_back[0].type_.as_deref(), Some("Warning"));

    let is_rollback = |a: &serde_json::Value| a["labels"]["alertname"] == "CanaryRolledBack";
    let alerts = lab
        .alerts_when(Duration::from_secs(30), |alerts| {
            alerts.iter().any(is_rollback)
        })
        .await
        .expect("Alertmanager is installed (tests/setup.sh)");
    // A few more rounds of the daemon must not add a second one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = lab
        .alertmanager
        .as_ref()
        .unwrap()
        .alerts()
        .await
        .unwrap_or(alerts);
    let fired: Vec<_> = alerts.iter().filter(|a| is_rollback(a)).collect();
    assert_eq!(fired.len(), 1, "{alerts:#?}");
    assert_eq!(
        fired[0]["labels"]["stage_revision"].as_str(),
        status.stage_revision.as_deref()
    );
    let description = fired[0]["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("did not become ready within 8s"),
        "{description}"
    );
}

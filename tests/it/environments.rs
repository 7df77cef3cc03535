//! Real environments: prod and stage are two releases of one chart that differ on purpose
//! (the lab's seed gives them different replicas, service accounts, env vars, config
//! references and resources). A revision is the image that runs: nothing else starts a
//! rollout, and promotion gives prod stage's image and nothing else.

use std::time::Duration;

use canaryd::api::{Canary, Phase};
use canaryd_lab::harness::{Lab, LabOptions};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const TIMEOUT: Duration = Duration::from_secs(300);

async fn spec_of(lab: &Lab, namespace: &str) -> Value {
    let d = Api::<Deployment>::namespaced(lab.client.clone(), namespace)
        .get("flaskapp")
        .await
        .expect("the Deployment exists");
    serde_json::to_value(d.spec.expect("a spec")).unwrap()
}

fn condition<'a>(c: &'a Canary, type_: &str) -> (&'a str, &'a str, Option<i64>) {
    let s = c.status.as_ref().expect("a status");
    let found = s
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions));
    (&found.status, &found.reason, found.observed_generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_that_differ_on_purpose_roll_out_only_a_new_image_and_prod_keeps_its_own_config(
) {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.lock().await;
    let lab = Lab::start(LabOptions {
        requests_per_second: 4000.0,
        ..Default::default()
    })
    .await
    .expect("the lab starts");
    let prod_before = spec_of(&lab, "prod").await;
    assert_ne!(
        prod_before["template"]["spec"]["containers"][0]["env"],
        spec_of(&lab, "stage").await["template"]["spec"]["containers"][0]["env"],
        "the seed's environments differ"
    );
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let idle = lab
        .follow(
            TIMEOUT,
            |_| {},
            |c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.message.contains("nothing to roll out"))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{}", daemon.explain(e)));
    let status = idle.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(
        status.message,
        "stage and prod both run demoapp:v1; nothing to roll out"
    );
    assert_eq!(condition(&idle, "Ready").0, "True");

    // A change of stage's configuration alone (env, replicas) is not a release.
    let config_change = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
        {"name": "flaskapp", "env": [{"name": "FEATURE_FLAGS", "value": "checkout-v3=on"}]}
    ]}}}});
    Api::<Deployment>::namespaced(lab.client.clone(), "stage")
        .patch(
            "flaskapp",
            &PatchParams::default(),
            &Patch::Strategic(&config_change),
        )
        .await
        .unwrap();
    lab.release("demoapp:v2").await.unwrap();
    let end = lab
        .follow(
            TIMEOUT,
            |_| {},
            |c| {
                c.status.as_ref().is_some_and(|s| {
                    s.stage_revision.as_deref() == Some("demoapp:v2")
                        && matches!(
                            s.phase,
                            Phase::Succeeded | Phase::RolledBack | Phase::Paused
                        )
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{}", daemon.explain(e)));
    let status = end.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{}", status.message);
    assert_eq!(status.prod_revision.as_deref(), Some("demoapp:v2"));
    let started: Vec<_> = status
        .history
        .iter()
        .filter(|h| h.phase == Phase::Testing)
        .map(|h| h.message.as_str())
        .collect();
    assert_eq!(
        started,
        ["new stage revision demoapp:v2: testing at 0 % before any traffic"],
        "one rollout, of the new image only"
    );

    // Field by field: prod runs stage's image and keeps everything else of its own.
    let prod_after = spec_of(&lab, "prod").await;
    let container = &prod_after["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "demoapp:v2");
    let before = &prod_before["template"]["spec"]["containers"][0];
    for field in ["env", "envFrom", "resources", "ports"] {
        assert_eq!(
            container[field], before[field],
            "prod keeps its own {field}"
        );
    }
    assert_eq!(
        container["env"][0]["value"],
        "postgres://db.prod.svc.cluster.local/flaskapp"
    );
    for field in ["replicas", "selector"] {
        assert_eq!(
            prod_after[field], prod_before[field],
            "prod keeps its own {field}"
        );
    }
    assert_eq!(
        prod_after["template"]["spec"]["serviceAccountName"],
        "flaskapp-prod"
    );
    assert_eq!(
        prod_after["template"]["metadata"]["labels"],
        prod_before["template"]["metadata"]["labels"]
    );
    let mut masked = prod_after.clone();
    masked["template"]["spec"]["containers"][0]["image"] = json!("demoapp:v1");
    assert_eq!(masked, prod_before, "nothing but the image changed in prod");

    // The conditions a GitOps tool or `kubectl wait` reads, for this generation.
    let generation = end.metadata.generation;
    assert_eq!(status.observed_generation, generation);
    assert_eq!(condition(&end, "Ready"), ("True", "Succeeded", generation));
    assert_eq!(
        condition(&end, "Promoted"),
        ("True", "Promoted", generation)
    );
    let mut shown: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        ["Promoted", "Ready"],
        "the others are in their usual state"
    );
}

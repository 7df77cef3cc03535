//! A Canary the daemon cannot decode, written while an older canaryd's looser CRD was
//! installed, already stored when the daemon starts: it holds up no other Canary, it is told
//! why, `canaryd status` shows it, it can be deleted, and no object body reaches the log.

use std::process::Command;
use std::time::Duration;

use canaryd::api::{Canary, Phase};
use canaryd::cluster::decode;
use canaryd_lab::harness::{Daemon, Lab, LabOptions};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};

use crate::e2e_lab::ONE_AT_A_TIME;

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const TIMEOUT: Duration = Duration::from_secs(300);
/// Would appear in the log if any body with the broken Canary in it were logged.
const MARKER: &str = "body-marker-5c1d0e";

/// The duration pattern of canaryd's CRD before the parser and the schema agreed: any
/// letters as a unit, any number of digits.
const OLD_PATTERN: &str = "^([0-9]+ *[a-zA-Z]+ *)+$";

/// Replaces the installed Canary CRD by a copy whose durations have the old pattern.
async fn install_older_crd(lab: &Lab) {
    let crds = Api::<CustomResourceDefinition>::all(lab.client.clone());
    let crd = crds.get("canaries.canaryd.dev").await.unwrap();
    let text = serde_json::to_string(&crd).unwrap();
    let pattern = serde_json::to_string(&canaryd::api::duration::pattern()).unwrap();
    assert!(
        text.contains(&pattern),
        "the installed CRD has today's pattern"
    );
    let older = text.replace(&pattern, &serde_json::to_string(OLD_PATTERN).unwrap());
    let older: CustomResourceDefinition = serde_json::from_str(&older).unwrap();
    crds.replace("canaries.canaryd.dev", &PostParams::default(), &older)
        .await
        .unwrap();
}

/// The lab's Canary, renamed `broken`, with the operator's durations and canaryd's finalizer
/// (an older daemon added it while it could still read the Canary).
fn broken() -> DynamicObject {
    let mut value = serde_json::to_value(canaryd_lab::harness::lab_canary(30)).unwrap();
    value["metadata"] = serde_json::json!({
        "name": "broken", "namespace": "prod",
        "finalizers": [canaryd::cluster::FINALIZER],
        "annotations": {"note": MARKER}
    });
    value["spec"]["stepDuration"] =
        serde_json::json!({"min": "5 parsecs", "max": "99999999999999999999999s"});
    serde_json::from_value(value).unwrap()
}

/// Polls the stored `broken` Canary until `done` holds for it (or it is gone, `None`).
async fn until_raw(
    api: &Api<DynamicObject>,
    daemon: &Daemon,
    done: impl Fn(Option<&DynamicObject>) -> bool,
) -> Option<DynamicObject> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let obj = api.get_opt("broken").await.unwrap();
        if done(obj.as_ref()) {
            return obj;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken never got there; last {obj:?}\ncanaryd's log:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn spec_valid(obj: &DynamicObject) -> Option<(String, String)> {
    let conditions = obj.data["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "SpecValid")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_does_not_decode_holds_up_no_other_after_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = Lab::start(LabOptions {
        alertmanager: false,
        ..Default::default()
    })
    .await
    .expect("the lab starts");
    install_older_crd(&lab).await;
    let raw: Api<DynamicObject> =
        Api::namespaced_with(lab.client.clone(), "prod", &decode::api_resource());
    raw.create(&PostParams::default(), &broken())
        .await
        .expect("the older CRD lets it in");
    // What a daemon start met: a stored Canary the typed list cannot decode.
    assert!(lab.canaries().list(&Default::default()).await.is_err());

    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let end = until_raw(&raw, &daemon, |o| o.and_then(spec_valid).is_some()).await;
    let (status, message) = spec_valid(end.as_ref().unwrap()).unwrap();
    assert_eq!(status, "False", "{message}");
    assert!(
        message.contains("spec.stepDuration.min: \"5 parsecs\" is not a duration"),
        "{message}"
    );
    assert!(message.contains("spec.stepDuration.max"), "{message}");
    let said = end.as_ref().unwrap().data["status"]["message"].clone();
    assert!(said.as_str().unwrap().starts_with("invalid spec"), "{said}");

    // The valid Canary is reconciled and rolls out a release.
    lab.release("demoapp:v2").await.unwrap();
    lab.follow(
        TIMEOUT,
        |_| {},
        |c: &Canary| {
            c.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Progressing)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{}", daemon.explain(e)));

    // `canaryd status` shows the broken one as invalid, with the reason, and the valid one
    // as before; a command reaches the broken one too.
    let canaryd = |args: &[&str]| {
        let out = Command::new(BINARY)
            .args(args)
            .env("KUBECONFIG", lab.kubeconfig())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "canaryd {args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = canaryd(&["status", "broken", "-n", "prod"]);
    assert!(
        shown.contains("Canary prod/broken: invalid, its spec cannot be read: spec.stepDuration"),
        "{shown}"
    );
    assert!(shown.contains("condition SpecValid=False"), "{shown}");
    let shown = canaryd(&["status", "flaskapp", "-n", "prod"]);
    assert!(shown.starts_with("Canary prod/flaskapp: "), "{shown}");
    assert!(shown.contains("condition Reconciling=True"), "{shown}");
    assert!(
        !shown.contains("SpecValid"),
        "valid: no such condition: {shown}"
    );
    canaryd(&["abort", "broken", "-n", "prod"]);

    // Deleted, it goes: canaryd removes its finalizer (there is no route to restore).
    raw.delete("broken", &DeleteParams::default())
        .await
        .unwrap();
    until_raw(&raw, &daemon, |o| o.is_none()).await;

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let count = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(count("the spec cannot be read"), 1, "{log}");
    assert_eq!(count("removing canaryd's finalizer"), 1, "{log}");
    assert_eq!(count(MARKER), 0, "no body in the log:\n{log}");
    assert_eq!(count("Error deserializing"), 0, "{log}");
}

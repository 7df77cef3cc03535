//! Events as `kubectl describe` shows them: one per decision, each with its own message; the
//! same decision repeated is one Event with a count, two different decisions under one reason
//! are two Events. Published through kube's real recorder to the lab's API server.

use canaryd::cluster::reconcile::kube_event;
use kube::runtime::events::{Recorder, Reporter};
use kube::Resource;

#[tokio::test]
async fn different_decisions_under_one_reason_are_separate_events_and_repeats_aggregate() {
    let (api, canary) = crate::lab_api::with_canary().await;
    let regarding = canary.object_ref(&());
    let recorder = Recorder::new(
        api.client().unwrap(),
        Reporter {
            controller: "canaryd".into(),
            instance: Some("canaryd-0".into()),
        },
    );
    let abort = "aborted by an operator (abort/1); prod has all traffic";
    let latency =
        "stage is worse than prod on latency@250: 9.1 % of requests slower than 250 ms vs 4.2 %";
    let started = |rev: &str| format!("new stage revision {rev}: testing it at 0 %");
    let sequence = [
        (false, "RolloutStarted", started("demoapp:v2")),
        (true, "RolledBack", abort.to_string()),
        (false, "RolloutStarted", started("demoapp:v2")),
        (true, "RolledBack", abort.to_string()),
        (false, "RolloutStarted", started("demoapp:v3")),
        (true, "RolledBack", latency.to_string()),
    ];
    for (warning, reason, message) in &sequence {
        recorder
            .publish(&kube_event(*warning, reason, message), &regarding)
            .await
            .expect("the Event is written");
    }

    // Not a blocking call: the API server answers on this test's runtime.
    let out = tokio::process::Command::new("kubectl")
        .args(["describe", "canary", "flaskapp", "-n", "prod"])
        .env("KUBECONFIG", api.kubeconfig_path())
        .output()
        .await
        .expect("kubectl is installed (apt-get install -y kubectl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .filter(|l| l.contains("RolledBack") || l.contains("RolloutStarted"))
        .collect();
    let line = |reason: &str, message: &str| {
        events
            .iter()
            .find(|l| l.contains(reason) && l.contains(message))
            .unwrap_or_else(|| panic!("no {reason} Event saying {message:?} in:\n{text}"))
            .to_string()
    };
    // Four distinct decisions, four Events, each with its own message.
    assert_eq!(events.len(), 4, "{text}");
    assert!(
        line("RolledBack", abort).contains("(x2"),
        "the repeated abort aggregates:\n{text}"
    );
    assert!(!line("RolledBack", "latency@250").contains("(x"), "{text}");
    assert!(
        line("RolloutStarted", "demoapp:v2").contains("(x2"),
        "{text}"
    );
    assert!(
        !line("RolloutStarted", "demoapp:v3").contains("(x"),
        "{text}"
    );
}

//! Notifications against the real Alertmanager (Debian package `prometheus-alertmanager`),
//! started by the test on a loopback port; alerts are read back through its v2 API.

use std::time::{Duration, Instant};

use canaryd::api::{Canary, CanaryStatus, Phase};
use canaryd::config::{NotifierConfig, NotifySettings};
use canaryd::notify::{Notifier, RetryPolicy};
use canaryd::rollout::{Action, NotifyEvent};
use canaryd_lab::alertmanager::LabAlertmanager;
use jiff::Timestamp;
use serde_json::Value;

fn canary() -> Canary {
    serde_yaml_ng::from_str(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: flaskapp, namespace: prod, uid: 0b7c}\nspec: {virtualService: {name: vs}, prod: {host: p, deployment: {name: flaskapp}}, stage: {host: s, deployment: {name: flaskapp, namespace: stage}}}",
    )
    .unwrap()
}

fn notifier(am: &LabAlertmanager) -> Notifier {
    let settings = NotifySettings {
        dashboard_url: Some(
            "http://grafana.local/d/canaryd?var-namespace={namespace}&var-canary={canary}".into(),
        ),
        canary_url: Some("http://argocd.local/{namespace}/{canary}".into()),
        resend_interval: canaryd::api::HumanDuration::from_secs(1),
        ..NotifySettings::default()
    };
    let retry = RetryPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    Notifier::new(
        &[NotifierConfig::Alertmanager {
            name: "am".into(),
            url: am.url(),
        }],
        settings,
        retry,
    )
    .unwrap()
}

fn rolled_back() -> (CanaryStatus, Vec<Action>) {
    let status = CanaryStatus {
        phase: Phase::RolledBack,
        stage_revision: Some("7d9f8c6b5".into()),
        prod_revision: Some("5f6c7d8e9".into()),
        ..Default::default()
    };
    let message = "rolled back at 30 % to stage: errors: stage fails 5.1 % of requests, prod 1.0 %; the evidence (e-value 412) passed the rollback threshold 200".to_string();
    (
        status,
        vec![Action::Notify {
            cause: canaryd::rollout::Cause::Lifecycle,
            event: NotifyEvent::RolledBack,
            message,
        }],
    )
}

async fn wait_for_alerts(am: &LabAlertmanager, want: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let alerts = am.alerts().await.unwrap_or_default();
        if alerts.len() == want || Instant::now() > deadline {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rollback_fires_one_alert_with_the_right_labels_until_the_next_rollout_succeeds() {
    let am = LabAlertmanager::start().await.expect("alertmanager starts");
    let notifier = notifier(&am);
    let canary = canary();
    let (mut status, actions) = rolled_back();
    let now = Timestamp::now();
    notifier.sync(&canary, &mut status, &actions, now);
    // Reconciles keep coming (and the same decision may be replayed): still one alert.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        notifier.sync(&canary, &mut status, &actions, now);
    }
    let alerts = wait_for_alerts(&am, 1, Duration::from_secs(10)).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{}", am.log_tail());
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "CanaryRolledBack");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["namespace"], "prod");
    assert_eq!(a["labels"]["canary"], "flaskapp");
    assert_eq!(a["labels"]["stage_revision"], "7d9f8c6b5");
    assert_eq!(a["status"]["state"], "active");
    let description = a["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("stage fails 5.1 % of requests"),
        "{description}"
    );
    assert!(a["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("rolled back"));
    assert_eq!(
        a["annotations"]["dashboard"],
        "http://grafana.local/d/canaryd?var-namespace=prod&var-canary=flaskapp"
    );
    assert_eq!(a["generatorURL"], "http://argocd.local/prod/flaskapp");

    // The next rollout of the Canary succeeds: the alert is resolved and leaves the status.
    status.phase = Phase::Succeeded;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status.notifications.is_empty() && Instant::now() < deadline {
        notifier.sync(&canary, &mut status, &[], Timestamp::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status.notifications.is_empty(),
        "{:?}",
        status.notifications
    );
    let alerts = wait_for_alerts(&am, 0, Duration::from_secs(5)).await;
    assert!(
        alerts.is_empty(),
        "resolved alerts are not active: {alerts:#?}"
    );
}

#[tokio::test]
async fn alertmanager_down_during_the_rollback_still_gets_the_alert_once_it_starts() {
    let mut am = LabAlertmanager::prepare().expect("alertmanager installed");
    let notifier = notifier(&am);
    let canary = canary();
    let (mut status, actions) = rolled_back();
    // One reconcile while Alertmanager is down; delivery retries in the background.
    notifier.sync(&canary, &mut status, &actions, Timestamp::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    am.restart().await.expect("alertmanager starts");
    let alerts = wait_for_alerts(&am, 1, Duration::from_secs(10)).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "CanaryRolledBack");
}

#[tokio::test]
async fn a_restarted_daemon_keeps_the_alert_of_a_paused_canary_firing() {
    let am = LabAlertmanager::start().await.expect("alertmanager starts");
    let canary = canary();
    let mut status = CanaryStatus {
        phase: Phase::Paused,
        stage_revision: Some("7d9f8c6b5".into()),
        ..Default::default()
    };
    let paused = [Action::Notify {
        cause: canaryd::rollout::Cause::Lifecycle,
        event: NotifyEvent::Paused,
        message: "paused at 30 % to stage: no telemetry for 10m".into(),
    }];
    // The first process records the alert in the status and dies before sending it.
    {
        let first = Notifier::new(
            &[NotifierConfig::Alertmanager {
                name: "am".into(),
                url: "http://127.0.0.1:1".into(),
            }],
            NotifySettings::default(),
            RetryPolicy::default(),
        )
        .unwrap();
        first.sync(&canary, &mut status, &paused, Timestamp::now());
    }
    assert_eq!(status.notifications.alerts.len(), 1);
    // The next process sends it from the status alone.
    let second = notifier(&am);
    second.sync(&canary, &mut status, &[], Timestamp::now());
    let alerts = wait_for_alerts(&am, 1, Duration::from_secs(10)).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "CanaryPaused");
    assert_eq!(alerts[0]["labels"]["severity"], "warning");
}

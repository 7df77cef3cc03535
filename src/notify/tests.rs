use super::receivers::Secret;
use super::*;
use crate::api::{NotificationEvent, NotificationRoute, Phase, Verdict};
use crate::rollout::NotifyEvent;

fn canary(routes: Vec<NotificationRoute>) -> Canary {
    let mut c: Canary = serde_yaml_ng::from_str(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: app, namespace: prod, uid: u-1}\nspec: {virtualService: {name: vs}, prod: {host: p, deployment: {name: app}}, stage: {host: s, deployment: {name: app, namespace: stage}}}",
    )
    .unwrap();
    c.spec.notifications = routes;
    c
}

fn notifier() -> Notifier {
    let configs = [
        NotifierConfig::Alertmanager {
            name: "am".into(),
            url: "http://127.0.0.1:9".into(),
        },
        NotifierConfig::Webhook {
            name: "hook".into(),
            url: "http://127.0.0.1:9".into(),
            secret_file: None,
        },
    ];
    Notifier::new(&configs, NotifySettings::default(), RetryPolicy::default()).unwrap()
}

fn rolled_back(status: &mut CanaryStatus) -> Vec<Action> {
    status.phase = Phase::RolledBack;
    status.stage_revision = Some("rev2".into());
    vec![Action::Notify {
        cause: crate::rollout::Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: "rolled back".into(),
    }]
}

#[tokio::test]
async fn rollback_goes_to_every_notifier_by_default_and_is_recorded_once() {
    let n = notifier();
    let c = canary(Vec::new());
    let mut status = CanaryStatus::default();
    let actions = rolled_back(&mut status);
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    n.sync(&c, &mut status, &actions, now);
    // The same decision again (a status write failed): nothing new.
    n.sync(&c, &mut status, &actions, now);
    let notes = &status.notifications;
    assert_eq!(notes.alerts.len(), 1);
    assert_eq!(notes.alerts[0].alertname, "CanaryRolledBack");
    assert_eq!(notes.alerts[0].receivers, ["am"]);
    assert_eq!(notes.pending.len(), 1);
    assert_eq!(notes.pending[0].receivers, ["hook"]);
    assert!(notes.pending[0].key.starts_with("u-1/"));
}

#[tokio::test]
async fn routes_choose_events_and_chatter_never_reaches_alertmanager() {
    let n = notifier();
    let c = canary(vec![
        NotificationRoute {
            notifier: "am".into(),
            events: vec![NotificationEvent::RolloutStarted],
        },
        NotificationRoute {
            notifier: "hook".into(),
            events: vec![NotificationEvent::RolloutStarted],
        },
    ]);
    let mut status = CanaryStatus {
        phase: Phase::Testing,
        ..Default::default()
    };
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    n.sync(
        &c,
        &mut status,
        &[Action::Notify {
            cause: crate::rollout::Cause::Lifecycle,
            event: NotifyEvent::RolloutStarted,
            message: "go".into(),
        }],
        now,
    );
    assert!(status.notifications.alerts.is_empty());
    assert_eq!(status.notifications.pending[0].receivers, ["hook"]);
    let mut status = CanaryStatus::default();
    let actions = rolled_back(&mut status);
    n.sync(&c, &mut status, &actions, now);
    assert!(
        status.notifications.is_empty(),
        "a rollback is not routed here"
    );
}

#[tokio::test]
async fn success_of_the_next_rollout_resolves_the_rollback_alert() {
    let n = notifier();
    let c = canary(Vec::new());
    let mut status = CanaryStatus::default();
    let actions = rolled_back(&mut status);
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    n.sync(&c, &mut status, &actions, now);
    status.phase = Phase::Progressing;
    n.sync(&c, &mut status, &[], now);
    assert!(
        status.notifications.alerts[0].resolved_at.is_none(),
        "still firing mid-rollout"
    );
    status.phase = Phase::Succeeded;
    n.sync(&c, &mut status, &[], now);
    assert_eq!(status.notifications.alerts[0].resolved_at, Some(now));
}

#[test]
fn the_description_names_the_numbers() {
    let decision = crate::api::DecisionRecord {
        verdict: Verdict::Rollback,
        metrics: vec![crate::api::MetricReport {
            name: "errors".into(),
            verdict: Verdict::Rollback,
            e_value: 412.0,
            rollback_threshold: 200.0,
            ratio_lower: 3.1,
            ratio_upper: Some(9.0),
            margin: 1.5,
            stage_rate: Some(0.05),
            prod_rate: Some(0.01),
            stage_requests: 1000,
            ..Default::default()
        }],
        ..Default::default()
    };
    let text = messages::describe("rolled back at 30 % to stage", Some(&decision));
    assert!(
        text.contains(
            "errors: rollback · stage 5 % of 1,000 requests, prod 1 % of 0 · evidence 10^2.6 \
             of 10^2.3 to roll back · stage/prod 3.1 to 9 (advance below 1.5)"
        ),
        "{text}"
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    assert_eq!(
        format!("{:?}", Secret(b"hooks.slack.com/T0/B0/x".to_vec())),
        "<secret>"
    );
}

#[test]
fn the_config_example_of_the_readme_parses_and_bad_urls_are_named() {
    let config = crate::config::Config::parse(
        "prometheus: {url: 'http://p:9090'}
notifiers:
  - {type: alertmanager, name: am, url: 'http://alertmanager.monitoring:9093'}
  - {type: slack, name: team-slack, urlFile: /etc/canaryd/slack/url}
  - {type: webhook, name: pager-bridge, url: 'https://hooks.internal/canaryd', secretFile: /etc/canaryd/hmac/key}
notify:
  dashboardUrl: 'https://grafana.example.com/d/canaryd?var-namespace={namespace}&var-canary={canary}'
  resendInterval: 1m
",
    )
    .unwrap();
    assert_eq!(config.notifiers.len(), 3);
    assert_eq!(
        config.notify.resend_interval.0,
        std::time::Duration::from_secs(60)
    );
    let (key, msg) = crate::config::Config::parse(
        "prometheus: {url: 'http://p'}\nnotifiers: [{type: webhook, name: x, url: 'hooks.internal'}]",
    )
    .unwrap_err();
    assert_eq!(key, "notifiers[0].url");
    assert!(msg.contains("http(s)"), "{msg}");
}

#[test]
fn a_missing_secret_file_is_an_error_that_names_the_file() {
    let configs = [NotifierConfig::Slack {
        name: "team".into(),
        url_file: "/nonexistent/slack-url".into(),
    }];
    let err = Notifier::new(&configs, NotifySettings::default(), RetryPolicy::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("notifiers[team]") && err.contains("/nonexistent/slack-url"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_pause_after_a_resume_is_a_new_notification() {
    let n = notifier();
    let c = canary(Vec::new());
    let t = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
    let mut status = CanaryStatus {
        phase: Phase::Paused,
        step: 1,
        step_started_at: Some(t(0)),
        ..Default::default()
    };
    let paused = [Action::Notify {
        cause: crate::rollout::Cause::Lifecycle,
        event: NotifyEvent::Paused,
        message: "paused".into(),
    }];
    n.sync(&c, &mut status, &paused, t(60));
    n.sync(&c, &mut status, &paused, t(90));
    assert_eq!(
        status.notifications.pending.len(),
        1,
        "a replay is the same event"
    );
    status.step_started_at = Some(t(120)); // resumed, then paused again
    n.sync(&c, &mut status, &paused, t(180));
    assert_eq!(status.notifications.pending.len(), 2);
}

#[tokio::test]
async fn rollback_after_rollback_keeps_the_outbox_bounded() {
    use crate::api::limits::{json_size, MAX_ALERTS, MAX_PENDING_NOTIFICATIONS, MAX_TEXT};
    let n = notifier();
    let c = canary(Vec::new());
    let mut status = CanaryStatus::default();
    for i in 0..50 {
        let now = Timestamp::from_second(1_700_000_000 + i).unwrap();
        status.phase = Phase::RolledBack;
        status.stage_revision = Some(format!("rev{i}"));
        let actions = [Action::Notify {
            cause: crate::rollout::Cause::Gate,
            event: NotifyEvent::RolledBack,
            message: format!("rolled back {i}: {}", "\"".repeat(100_000)),
        }];
        n.sync(&c, &mut status, &actions, now);
    }
    let notes = &status.notifications;
    assert_eq!(notes.pending.len(), MAX_PENDING_NOTIFICATIONS);
    assert!(notes.pending[0].message.starts_with("rolled back 40: "));
    assert!(notes
        .pending
        .iter()
        .all(|p| json_size(&p.message) <= MAX_TEXT));
    assert_eq!(notes.alerts.len(), MAX_ALERTS);
    let firing: Vec<_> = notes
        .alerts
        .iter()
        .filter(|a| a.resolved_at.is_none())
        .collect();
    assert_eq!(firing.len(), 1, "only the newest rollback fires");
    assert_eq!(firing[0].stage_revision.as_deref(), Some("rev49"));
    assert!(notes
        .alerts
        .iter()
        .all(|a| json_size(&a.description) <= MAX_TEXT));
}

//! Notifications to local receivers: a generic webhook that checks the HMAC signature and
//! dedupes by idempotency key, and a Slack-format receiver that checks the payload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use canaryd::api::{Canary, CanaryStatus, NotificationEvent, NotificationRoute, Phase};
use canaryd::config::{NotifierConfig, NotifySettings};
use canaryd::notify::signing::{signature, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use canaryd::notify::{Notifier, RetryPolicy, KEY_HEADER};
use canaryd::rollout::{Action, NotifyEvent};
use jiff::Timestamp;
use serde_json::Value;

const KEY: &[u8] = b"s3cret-hmac-key";

#[derive(Default)]
struct Seen {
    /// Valid deliveries by idempotency key.
    keys: HashMap<String, usize>,
    bodies: Vec<Value>,
    bad_signatures: usize,
    /// Requests still to refuse with 503.
    refuse: usize,
    attempts: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// What a receiver does with the Standard Webhooks headers: recompute, compare, reject old
/// ones (tests/it/webhook_signature.rs checks the same with an independent implementation).
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name| headers.get(name).and_then(|h| h.to_str().ok());
    let (Some(id), Some(t), Some(sig)) = (
        header(ID_HEADER),
        header(TIMESTAMP_HEADER).and_then(|t| t.parse::<i64>().ok()),
        header(SIGNATURE_HEADER),
    ) else {
        return false;
    };
    let fresh = (Timestamp::now().as_second() - t).abs() <= 300;
    // The id is the idempotency key, the same for every retry.
    fresh && Some(id) == header(KEY_HEADER) && signature(KEY, id, t, body) == sig
}

async fn hook(
    State(seen): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut seen = seen.lock().unwrap();
    seen.attempts += 1;
    if seen.refuse > 0 {
        seen.refuse -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if !verify(&headers, &body) {
        seen.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let key = headers[KEY_HEADER].to_str().unwrap().to_string();
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["key"], key.as_str());
    *seen.keys.entry(key).or_default() += 1;
    seen.bodies.push(value);
    StatusCode::OK
}

/// Accepts what Slack accepts: `text` and a list of typed blocks with valid text objects.
async fn slack(State(seen): State<Shared>, body: axum::body::Bytes) -> StatusCode {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let blocks_ok = value["blocks"].as_array().is_some_and(|blocks| {
        !blocks.is_empty()
            && blocks.len() <= 50
            && blocks.iter().all(|b| match b["type"].as_str() {
                Some("header") => {
                    b["text"]["type"] == "plain_text"
                        && b["text"]["text"].as_str().is_some_and(|t| t.len() <= 150)
                }
                Some("section") => {
                    b["text"]["type"] == "mrkdwn"
                        || b["fields"].as_array().is_some_and(|f| {
                            f.len() <= 10 && f.iter().all(|f| f["type"] == "mrkdwn")
                        })
                }
                Some("context") => b["elements"].as_array().is_some_and(|e| !e.is_empty()),
                _ => false,
            })
    });
    if !value["text"].is_string() || !blocks_ok {
        return StatusCode::BAD_REQUEST;
    }
    let mut seen = seen.lock().unwrap();
    seen.bodies.push(value);
    StatusCode::OK
}

async fn slow() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(60)).await;
    StatusCode::OK
}

async fn receiver(seen: Shared) -> String {
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/slack", post(slack))
        .route("/slow", post(slow))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn secret_file(dir: &tempfile::TempDir, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        first: Duration::from_millis(50),
        max: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    }
}

fn canary(routes: Vec<NotificationRoute>) -> Canary {
    let mut c: Canary = serde_yaml_ng::from_str(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: flaskapp, namespace: prod, uid: 0b7c}\nspec: {virtualService: {name: vs}, prod: {host: p, deployment: {name: flaskapp}}, stage: {host: s, deployment: {name: flaskapp, namespace: stage}}}",
    )
    .unwrap();
    c.spec.notifications = routes;
    c
}

fn every_event(notifier: &str) -> NotificationRoute {
    NotificationRoute {
        notifier: notifier.into(),
        events: vec![
            NotificationEvent::RolloutStarted,
            NotificationEvent::StepAdvanced,
            NotificationEvent::Paused,
            NotificationEvent::RolledBack,
            NotificationEvent::Promoted,
            NotificationEvent::Succeeded,
        ],
    }
}

fn webhook(name: &str, url: String, key_file: std::path::PathBuf) -> NotifierConfig {
    NotifierConfig::Webhook {
        name: name.into(),
        url,
        secret_file: Some(key_file),
    }
}

/// Reconciles (syncs) until nothing is pending, as the controller would.
async fn drain(n: &Notifier, c: &Canary, status: &mut CanaryStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status.notifications.pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still pending: {:?}",
            status.notifications
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        n.sync(c, status, &[], Timestamp::now());
    }
}

#[tokio::test]
async fn a_signed_webhook_sees_each_event_of_a_rollout_once() {
    let seen = Shared::default();
    seen.lock().unwrap().refuse = 2; // the receiver fails twice first: retried
    let url = receiver(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(
        &[webhook(
            "hook",
            format!("{url}/hook"),
            secret_file(&dir, "key", "s3cret-hmac-key\n"),
        )],
        NotifySettings::default(),
        fast(),
    )
    .unwrap();
    let c = canary(vec![every_event("hook")]);
    let mut status = CanaryStatus {
        rollout_started_at: Some(Timestamp::from_second(1_700_000_000).unwrap()),
        stage_revision: Some("7d9f8c6b5".into()),
        ..Default::default()
    };
    let steps = [
        (Phase::Testing, 0, NotifyEvent::RolloutStarted),
        (Phase::Progressing, 1, NotifyEvent::StepAdvanced),
        (Phase::Progressing, 2, NotifyEvent::StepAdvanced),
        (Phase::Promoting, 3, NotifyEvent::Promoted),
        (Phase::Succeeded, 3, NotifyEvent::Succeeded),
    ];
    for (phase, step, event) in steps {
        status.phase = phase;
        status.step = step;
        let actions = [Action::Notify {
            cause: canaryd::rollout::Cause::Lifecycle,
            event,
            message: format!("{} at step {step}", event.as_str()),
        }];
        // Every decision is seen twice (a failed status write replays it).
        notifier.sync(&c, &mut status, &actions, Timestamp::now());
        notifier.sync(&c, &mut status, &actions, Timestamp::now());
    }
    drain(&notifier, &c, &mut status).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(seen.keys.len(), 5, "{:?}", seen.keys);
    assert!(seen.keys.values().all(|&n| n == 1), "{:?}", seen.keys);
    let events: Vec<&str> = seen
        .bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    for e in ["RolloutStarted", "StepAdvanced", "Promoted", "Succeeded"] {
        assert!(events.contains(&e), "{events:?}");
    }
    let b = &seen.bodies[0];
    assert_eq!(
        (b["namespace"].as_str(), b["canary"].as_str()),
        (Some("prod"), Some("flaskapp"))
    );
    assert_eq!(b["stageRevision"], "7d9f8c6b5");
}

#[tokio::test]
async fn a_wrong_key_is_rejected_by_the_receiver() {
    let seen = Shared::default();
    let url = receiver(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(
        &[webhook(
            "hook",
            format!("{url}/hook"),
            secret_file(&dir, "key", "another key"),
        )],
        NotifySettings::default(),
        fast(),
    )
    .unwrap();
    let c = canary(Vec::new());
    let mut status = CanaryStatus {
        phase: Phase::RolledBack,
        ..Default::default()
    };
    let actions = [Action::Notify {
        cause: canaryd::rollout::Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: "rolled back".into(),
    }];
    notifier.sync(&c, &mut status, &actions, Timestamp::now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    assert!(seen.bad_signatures >= 1);
    assert!(seen.keys.is_empty());
}

#[tokio::test]
async fn a_notification_left_pending_by_a_dead_daemon_is_sent_once_by_the_next() {
    let seen = Shared::default();
    let url = receiver(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = secret_file(&dir, "key", "s3cret-hmac-key");
    let c = canary(Vec::new());
    let mut status = CanaryStatus {
        phase: Phase::RolledBack,
        ..Default::default()
    };
    let actions = [Action::Notify {
        cause: canaryd::rollout::Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: "rolled back".into(),
    }];
    {
        // The receiver cannot be reached from the first process, which then stops.
        let first = Notifier::new(
            &[webhook(
                "hook",
                "http://127.0.0.1:1/hook".into(),
                key.clone(),
            )],
            NotifySettings::default(),
            fast(),
        )
        .unwrap();
        first.sync(&c, &mut status, &actions, Timestamp::now());
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.sync(&c, &mut status, &[], Timestamp::now());
    }
    assert_eq!(
        status.notifications.pending.len(),
        1,
        "recorded in the status"
    );
    let second = Notifier::new(
        &[webhook("hook", format!("{url}/hook"), key)],
        NotifySettings::default(),
        fast(),
    )
    .unwrap();
    second.sync(&c, &mut status, &[], Timestamp::now());
    drain(&second, &c, &mut status).await;
    for _ in 0..5 {
        second.sync(&c, &mut status, &[], Timestamp::now());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.keys.len(), 1);
    assert!(seen.keys.values().all(|&n| n == 1), "{:?}", seen.keys);
}

#[tokio::test]
async fn slack_gets_a_valid_payload_and_a_dead_receiver_never_blocks() {
    let seen = Shared::default();
    let url = receiver(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = NotifySettings {
        dashboard_url: Some("http://grafana.local/d/x?var-canary={canary}".into()),
        ..NotifySettings::default()
    };
    let notifier = Notifier::new(
        &[
            NotifierConfig::Slack {
                name: "slack".into(),
                url_file: secret_file(&dir, "slack-url", &format!("{url}/slack\n")),
            },
            NotifierConfig::Webhook {
                name: "slow".into(),
                url: format!("{url}/slow"),
                secret_file: None,
            },
        ],
        settings,
        fast(),
    )
    .unwrap();
    let c = canary(Vec::new());
    let mut status = CanaryStatus {
        phase: Phase::RolledBack,
        stage_revision: Some("7d9f8c6b5".into()),
        ..Default::default()
    };
    let actions = [Action::Notify {
        cause: canaryd::rollout::Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: "rolled back at 30 % to stage: errors worse".into(),
    }];
    let started = Instant::now();
    for _ in 0..20 {
        notifier.sync(&c, &mut status, &actions, Timestamp::now());
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "sync never waits for a receiver"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().bodies.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notifier.sync(&c, &mut status, &[], Timestamp::now());
    let pending = &status.notifications.pending;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].receivers,
        ["slow"],
        "slack confirmed, the slow one still pending"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bodies.len(), 1);
    let body = &seen.bodies[0];
    let text = body.to_string();
    assert!(text.contains("Rolled back: prod/flaskapp"), "{text}");
    assert!(
        text.contains("<http://grafana.local/d/x?var-canary=flaskapp|Dashboard>"),
        "{text}"
    );
    assert!(
        !format!("{:?}", status).contains(&url),
        "no receiver URL in the status"
    );
}

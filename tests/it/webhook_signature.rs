//! canaryd's webhook signatures checked by an independent implementation of Standard
//! Webhooks: tests/standard_webhooks_verify.py (Python's standard library only) gets the
//! headers and body of real requests canaryd sent to a loopback server, from a gate's
//! webhook code and from the notification delivery, and must accept them; a changed body,
//! another key or a timestamp older than five minutes must be rejected.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use canaryd::api::{Canary, CanaryStatus, Phase};
use canaryd::cluster::gates::{GateRunner, Origin, WebhookCall, WebhookPayload};
use canaryd::config::NotifierConfig;
use canaryd::egress::EgressPolicy;
use canaryd::notify::signing::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use canaryd::notify::{Notifier, RetryPolicy};
use canaryd::rollout::{Action, Cause, NotifyEvent};
use jiff::Timestamp;
use serde_json::json;

/// A key in the scheme's own serialization: `whsec_` and 24 random-looking bytes in base64.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

type Seen = Arc<Mutex<Vec<Received>>>;

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let header = |name| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    seen.lock().unwrap().push(Received {
        id: header(ID_HEADER),
        timestamp: header(TIMESTAMP_HEADER),
        signature: header(SIGNATURE_HEADER),
        body: body.to_vec(),
    });
    StatusCode::NO_CONTENT
}

async fn receiver() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The verifier's verdict: `"ok"` or why not.
fn python_verify(r: &Received, secret: &str, now: Option<i64>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standard_webhooks_verify.py");
    let mut input = json!({
        "id": r.id,
        "timestamp": r.timestamp,
        "signature": r.signature,
        "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "secret": secret,
    });
    if let Some(now) = now {
        input["now"] = json!(now);
    }
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the independent verifier (bash tests/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        out.status.success(),
        verdict == "ok",
        "{verdict} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdict
}

/// The checks every real request must pass and the tampered ones must fail.
fn judge(r: &Received, secret: &str) {
    assert_eq!(python_verify(r, secret, None), "ok", "{r:?}");
    let tampered = Received {
        body: [r.body.as_slice(), b" "].concat(),
        ..r.clone()
    };
    assert_eq!(
        python_verify(&tampered, secret, None),
        "no matching signature"
    );
    let other = Received {
        id: format!("{}x", r.id),
        ..r.clone()
    };
    assert_eq!(python_verify(&other, secret, None), "no matching signature");
    assert_eq!(
        python_verify(r, "another-key-0123456789", None),
        "no matching signature"
    );
    // Replayed six minutes later: refused, though the signature is canaryd's own.
    let sent: i64 = r.timestamp.parse().unwrap();
    assert_eq!(
        python_verify(r, secret, Some(sent + 360)),
        "timestamp too old"
    );
    assert_eq!(python_verify(r, secret, Some(sent + 240)), "ok");
}

async fn wait_for(seen: &Seen, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} requests arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_gate_webhook_signature_verifies_with_an_independent_implementation() {
    let (url, seen) = receiver().await;
    let runner = GateRunner::new(EgressPolicy::new(
        &["127.0.0.1".into()],
        true,
        &["GET".into()],
    ));
    let call = WebhookCall {
        name: "ci".into(),
        url,
        timeout: Duration::from_secs(5),
        key: Some(signing::decode_key(WHSEC.as_bytes())),
    };
    let payload = WebhookPayload {
        event: "promote".into(),
        canary: "flaskapp".into(),
        namespace: "prod".into(),
        phase: "Promoting".into(),
        stage_revision: Some("7d9f8c6b5".into()),
        prod_revision: Some("5f6c7d8e9".into()),
        stage_weight: 100,
        message: "stage held 100 % for 2m".into(),
        images: Vec::new(),
    };
    let origin = Origin {
        canary_uid: "0b7c".into(),
        hosts: Vec::new(),
        rollout_started_at: 1_700_000_000,
        stage_revision: "7d9f8c6b5".into(),
    };
    runner.call(&call, &payload, &origin).await.unwrap();
    // Called again (a promotion retried): the same id, a new timestamp and signature.
    runner.call(&call, &payload, &origin).await.unwrap();
    let got = wait_for(&seen, 2).await;
    assert_eq!(got[0].id, "0b7c/1700000000/promote/7d9f8c6b5/ci");
    assert_eq!(got[1].id, got[0].id);
    for r in &got {
        judge(r, WHSEC);
    }
}

#[tokio::test]
async fn a_notification_signature_verifies_with_an_independent_implementation() {
    let (url, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // A key that is not in the whsec_ form is its text's bytes, for canaryd and the scheme.
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "plain-text-signing-key-0123\n").unwrap();
    let notifier = Notifier::new(
        &[NotifierConfig::Webhook {
            name: "hook".into(),
            url,
            secret_file: Some(key_file),
        }],
        Default::default(),
        RetryPolicy {
            first: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            ..RetryPolicy::default()
        },
    )
    .unwrap();
    let canary: Canary = serde_yaml_ng::from_str(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: flaskapp, namespace: prod, uid: 0b7c}\nspec: {virtualService: {name: vs}, prod: {host: p, deployment: {name: flaskapp}}, stage: {host: s, deployment: {name: flaskapp, namespace: stage}}}",
    )
    .unwrap();
    let mut status = CanaryStatus {
        phase: Phase::RolledBack,
        stage_revision: Some("7d9f8c6b5".into()),
        rollout_started_at: Some(Timestamp::from_second(1_700_000_000).unwrap()),
        ..Default::default()
    };
    let actions = [Action::Notify {
        cause: Cause::Lifecycle,
        event: NotifyEvent::RolledBack,
        message: "rolled back".into(),
    }];
    notifier.sync(&canary, &mut status, &actions, Timestamp::now());
    let got = wait_for(&seen, 1).await;
    // The id is the pending notification's key.
    assert_eq!(got[0].id, status.notifications.pending[0].key);
    judge(&got[0], "plain-text-signing-key-0123");
}

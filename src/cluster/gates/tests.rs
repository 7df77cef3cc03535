//! Each test plays one way a Canary's author could use canaryd's place in the network, or
//! read what canaryd reads, and checks the safe outcome. The servers are local and count
//! the requests they get.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;
use serde_json::json;

use super::*;
use crate::egress::EgressPolicy;

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Server {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// Answers every request with `status`, `headers` and the body `make_body` returns.
async fn serve_with(
    status: u16,
    headers: Vec<(&'static str, String)>,
    make_body: impl Fn() -> Body + Clone + Send + Sync + 'static,
) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    let app = Router::new().fallback(move |request_headers: HeaderMap| {
        let (h, s, headers, make_body) = (h.clone(), s.clone(), headers.clone(), make_body.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            s.lock().unwrap().push(request_headers);
            let mut r = Response::builder().status(status);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(make_body()).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        url,
        hits,
        headers: seen,
    }
}

async fn serve(status: u16, body: &'static str) -> Server {
    serve_with(status, Vec::new(), move || Body::from(body)).await
}

fn policy(hosts: &[&str], private: bool, methods: &[&str]) -> EgressPolicy {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
    EgressPolicy::new(&hosts, private, &methods)
}

/// Loopback allowed: the policy the tests with local servers need.
fn loopback() -> EgressPolicy {
    policy(&["127.0.0.1"], true, &["GET", "HEAD"])
}

fn check(spec: serde_json::Value) -> CheckSpec {
    let mut spec = spec;
    spec["name"] = json!("smoke");
    serde_json::from_value(spec).unwrap()
}

const STAGE: &str = "flaskapp.stage.svc.cluster.local";

fn job(checks: Vec<CheckSpec>) -> GateJob {
    GateJob {
        checks,
        host: STAGE.into(),
        hosts: vec!["flaskapp.prod.svc.cluster.local".into(), STAGE.into()],
        ..GateJob::default()
    }
}

fn key() -> GateKey {
    GateKey {
        canary_uid: "0b7c".into(),
        generation: 1,
        id: "7d9f8c6b-0-PreTraffic-1700000000000".into(),
    }
}

fn payload() -> WebhookPayload {
    WebhookPayload {
        event: "pre-rollout".into(),
        canary: "flaskapp".into(),
        namespace: "prod".into(),
        phase: "Testing".into(),
        stage_revision: Some("7d9f8c6b".into()),
        prod_revision: Some("5f6c7d8e".into()),
        stage_weight: 0,
        message: String::new(),
        images: Vec::new(),
    }
}

fn webhook_job(url: String) -> GateJob {
    GateJob {
        webhooks: vec![WebhookCall {
            name: "ci".into(),
            url,
            timeout: Duration::from_secs(5),
            key: Some(b"0123456789abcdef0123".to_vec()),
        }],
        payload: Some(payload()),
        ..job(Vec::new())
    }
}

async fn run(runner: &GateRunner, job: GateJob) -> GateResult {
    tokio::time::timeout(Duration::from_secs(20), runner.run(&key(), &job))
        .await
        .expect("the gate ends")
}

#[tokio::test]
async fn a_check_to_a_loopback_server_reaches_nothing_under_the_default_policy() {
    let server = serve(200, "ok").await;
    let runner = GateRunner::new(EgressPolicy::default());
    let result = run(
        &runner,
        job(vec![check(
            json!({"url": format!("{}/health", server.url)}),
        )]),
    )
    .await;
    assert!(!result.passed);
    assert!(
        result
            .message
            .starts_with("check smoke: host 127.0.0.1 refused")
            && result
                .message
                .contains("egress.hosts [*.svc, *.svc.cluster.local]"),
        "{}",
        result.message
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn the_canarys_own_host_passes_the_host_rule_but_not_the_address_rule() {
    // A stage host written as 127.0.0.1: allowed as the Canary's own host, still loopback.
    let server = serve(200, "ok").await;
    let runner = GateRunner::new(EgressPolicy::default());
    let mut j = job(vec![check(
        json!({"url": format!("http://{{{{ host }}}}:{}/", server.port())}),
    )]);
    j.host = "127.0.0.1".into();
    j.hosts = vec!["127.0.0.1".into()];
    let result = run(&runner, j.clone()).await;
    assert!(!result.passed);
    assert!(
        result.message.contains("refused: loopback address")
            && result.message.contains("egress.allowPrivateAddresses"),
        "{}",
        result.message
    );
    assert_eq!(server.hits(), 0);
    // Where the admin allows private addresses, the Canary's own host needs no pattern.
    let open = GateRunner::new(policy(&["*.svc"], true, &["GET"]));
    let result = run(&open, j).await;
    assert!(result.passed, "{}", result.message);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_name_allowed_by_pattern_that_resolves_to_loopback_is_refused_after_resolution() {
    let server = serve(200, "ok").await;
    let runner = GateRunner::new(policy(&["localhost"], false, &["GET"]));
    let url = format!("http://localhost:{}/health", server.port());
    let result = run(&runner, job(vec![check(json!({"url": url}))])).await;
    assert!(!result.passed);
    assert!(
        result
            .message
            .contains("host localhost refused: it resolves only to refused addresses")
            && result.message.contains("loopback")
            && result.message.contains("egress.allowPrivateAddresses"),
        "{}",
        result.message
    );
    assert_eq!(server.hits(), 0);
    // The same name as a webhook: refused the same way.
    let result = run(&runner, webhook_job(url)).await;
    assert!(!result.passed);
    assert!(
        result
            .message
            .contains("resolves only to refused addresses"),
        "{}",
        result.message
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn with_private_addresses_allowed_and_the_ip_listed_the_check_passes() {
    let server = serve(200, "status: ok").await;
    let runner = GateRunner::new(loopback());
    let spec =
        check(json!({"url": format!("{}/health", server.url), "bodyContains": "ok", "count": 3}));
    let result = run(&runner, job(vec![spec])).await;
    assert!(result.passed, "{}", result.message);
    assert!(
        result
            .message
            .starts_with("check smoke: 3/3 passed (slowest "),
        "{}",
        result.message
    );
    assert!(
        result.message.ends_with(" ms, bodyContains matched)"),
        "{}",
        result.message
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_metadata_address_is_refused_even_when_listed() {
    let runner = GateRunner::new(policy(
        &["169.254.169.254", "[fd00:ec2::254]"],
        false,
        &["GET"],
    ));
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/",
    ] {
        let result = run(&runner, job(vec![check(json!({"url": url}))])).await;
        assert!(!result.passed);
        assert!(
            result.message.contains("refused: cloud metadata address"),
            "{}",
            result.message
        );
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let second = serve(200, "ok").await;
    let first = serve_with(
        302,
        vec![("location", format!("{}/internal", second.url))],
        Body::empty,
    )
    .await;
    let runner = GateRunner::new(loopback());
    let result = run(
        &runner,
        job(vec![check(json!({"url": format!("{}/health", first.url)}))]),
    )
    .await;
    assert!(!result.passed);
    assert!(
        result.message.contains("answered 302 after "),
        "{}",
        result.message
    );
    assert!(
        result.message.ends_with("expected 200"),
        "{}",
        result.message
    );
    let webhook = run(&runner, webhook_job(format!("{}/hook", first.url))).await;
    assert!(!webhook.passed);
    assert!(
        webhook.message.ends_with("/hook answered 302 Found"),
        "{}",
        webhook.message
    );
    assert_eq!((first.hits(), second.hits()), (2, 0));
    // A 3xx is an answer like any other.
    let spec = check(json!({"url": format!("{}/health", first.url), "expectStatus": 302}));
    assert!(run(&runner, job(vec![spec])).await.passed);
    assert_eq!(second.hits(), 0);
}

#[tokio::test]
async fn no_answer_body_reaches_a_message() {
    const MARKER: &str = "MARKER-7f3a-internal-details";
    let failing = serve(500, "MARKER-7f3a-internal-details: db password hunter2").await;
    let runner = GateRunner::new(loopback());
    let result = run(&runner, webhook_job(format!("{}/hook", failing.url))).await;
    assert!(!result.passed);
    assert_eq!(
        result.message,
        format!(
            "webhook ci: {}/hook answered 500 Internal Server Error",
            failing.url
        )
    );
    let call = &webhook_job(String::new()).webhooks[0];
    let call = WebhookCall {
        url: format!("{}/hook", failing.url),
        ..call.clone()
    };
    let e = runner
        .call(&call, &payload(), &Origin::default())
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(MARKER), "{e}");
    assert!(!format!("{e:?}").contains(MARKER), "{e:?}");

    let result = run(
        &runner,
        job(vec![check(json!({"url": failing.url.clone()}))]),
    )
    .await;
    assert!(
        !result.passed && !result.message.contains(MARKER),
        "{}",
        result.message
    );
    // A 200 whose body does not contain the text: neither the body nor the text is shown.
    let ok = serve(200, "MARKER-7f3a-internal-details").await;
    let spec = check(json!({"url": ok.url.clone(), "bodyContains": "needle-9c1e"}));
    let result = run(&runner, job(vec![spec])).await;
    assert!(!result.passed);
    assert!(
        result.message.contains("bodyContains not matched"),
        "{}",
        result.message
    );
    assert!(
        !result.message.contains(MARKER) && !result.message.contains("needle-9c1e"),
        "{}",
        result.message
    );
}

#[tokio::test]
async fn userinfo_and_query_never_show_in_a_message() {
    let server = serve(500, "no").await;
    let secret_url = format!("http://user:pass@127.0.0.1:{}/x?token=abc", server.port());
    let shown = format!("http://127.0.0.1:{}/x", server.port());
    let secret_free = |m: &str| !m.contains("pass") && !m.contains("abc") && !m.contains("user");
    let runner = GateRunner::new(loopback());

    let result = run(
        &runner,
        job(vec![check(json!({"url": secret_url.clone()}))]),
    )
    .await;
    assert!(
        result.message.contains(&shown) && secret_free(&result.message),
        "{}",
        result.message
    );
    let result = run(&runner, webhook_job(secret_url.clone())).await;
    assert!(
        result.message.contains(&shown) && secret_free(&result.message),
        "{}",
        result.message
    );
    // Refused by the policy: the message names the host only.
    let strict = GateRunner::new(EgressPolicy::default());
    let result = run(
        &strict,
        job(vec![check(json!({"url": secret_url.clone()}))]),
    )
    .await;
    assert!(
        !result.passed && secret_free(&result.message),
        "{}",
        result.message
    );
    let result = run(&strict, webhook_job(secret_url.clone())).await;
    assert!(
        !result.passed && secret_free(&result.message),
        "{}",
        result.message
    );
    // No answer at all (nothing listens there any more): the error has no URL either.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("http://user:pass@127.0.0.1:{closed}/x?token=abc");
    let result = run(&runner, job(vec![check(json!({"url": dead.clone()}))])).await;
    assert!(
        !result.passed && secret_free(&result.message),
        "{}",
        result.message
    );
    let result = run(&runner, webhook_job(dead)).await;
    assert!(
        !result.passed && secret_free(&result.message),
        "{}",
        result.message
    );
    // Nor in the logs' view of a call.
    let call = WebhookCall {
        url: secret_url,
        ..webhook_job(String::new()).webhooks[0].clone()
    };
    assert!(secret_free(&format!("{call:?}")), "{call:?}");
    assert!(server.hits() >= 2);
}

#[tokio::test]
async fn a_post_check_is_refused_by_default() {
    let server = serve(200, "ok").await;
    let spec = check(json!({"url": server.url.clone(), "method": "POST"}));
    let runner = GateRunner::new(loopback());
    let result = run(&runner, job(vec![spec.clone()])).await;
    assert!(!result.passed);
    assert_eq!(
        result.message,
        "check smoke: method POST refused: it is not in egress.checkMethods [GET, HEAD] in \
         canaryd's config; an admin adds POST there"
    );
    assert_eq!(server.hits(), 0);
    let with_post = GateRunner::new(policy(&["127.0.0.1"], true, &["GET", "HEAD", "POST"]));
    assert!(run(&with_post, job(vec![spec])).await.passed);
    assert_eq!(server.hits(), 1);
}

/// A body that starts with `head` and then never ends.
fn endless(head: &'static str) -> Body {
    let chunks = futures::stream::unfold(0u64, move |n| async move {
        let chunk = if n == 0 {
            Bytes::from_static(head.as_bytes())
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Bytes::from(vec![b'x'; 4096])
        };
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    Body::from_stream(chunks)
}

#[tokio::test]
async fn the_body_is_read_only_until_it_matched_or_64_kib() {
    let runner = GateRunner::new(loopback());
    // The text first, then a body without end: the check stops reading at the match.
    let found = serve_with(200, Vec::new(), || endless("ready")).await;
    let spec = check(json!({"url": found.url.clone(), "bodyContains": "ready", "timeout": "10s"}));
    let result = run(&runner, job(vec![spec])).await;
    assert!(result.passed, "{}", result.message);
    // A body without end and without the text: given up after 64 KiB, not at the timeout.
    let never = serve_with(200, Vec::new(), || endless("nothing here")).await;
    let spec = check(json!({"url": never.url.clone(), "bodyContains": "ready", "timeout": "30s"}));
    let started = std::time::Instant::now();
    let result = run(&runner, job(vec![spec])).await;
    assert!(!result.passed);
    assert!(
        result.message.contains("not matched in the first 64 KiB"),
        "{}",
        result.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The text past the first 64 KiB does not count.
    let late = serve_with(200, Vec::new(), || {
        let mut body = vec![b'x'; 100 * 1024];
        body.extend_from_slice(b"ready");
        Body::from(body)
    })
    .await;
    let spec = check(json!({"url": late.url.clone(), "bodyContains": "ready"}));
    assert!(!run(&runner, job(vec![spec])).await.passed);
    // A match across two chunks counts.
    let split = serve_with(200, Vec::new(), || {
        let parts =
            ["..rea", "dy.."].map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p.as_bytes())));
        Body::from_stream(futures::stream::iter(parts))
    })
    .await;
    let spec = check(json!({"url": split.url.clone(), "bodyContains": "ready"}));
    assert!(run(&runner, job(vec![spec])).await.passed);
}

#[tokio::test]
async fn a_gate_webhook_keeps_its_id_across_runs_and_is_signed() {
    let server = serve(200, "").await;
    let runner = GateRunner::new(loopback());
    let j = webhook_job(format!("{}/hook", server.url));
    for _ in 0..2 {
        assert!(run(&runner, j.clone()).await.passed);
    }
    let seen = server.headers.lock().unwrap().clone();
    let ids: Vec<&str> = seen
        .iter()
        .map(|h| h["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids, ["0b7c/7d9f8c6b-0-PreTraffic-1700000000000/ci"; 2]);
    for h in &seen {
        assert!(h["webhook-signature"].to_str().unwrap().starts_with("v1,"));
        let t: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((jiff::Timestamp::now().as_second() - t).abs() < 60);
    }
    // A fire-and-forget webhook's id names the Canary, the rollout, the event and the revision.
    let origin = Origin {
        canary_uid: "0b7c".into(),
        hosts: Vec::new(),
        rollout_started_at: 1_700_000_000,
        stage_revision: "7d9f8c6b".into(),
    };
    let mut rollback = payload();
    rollback.event = "rollback".into();
    runner
        .call(&j.webhooks[0], &rollback, &origin)
        .await
        .unwrap();
    let last = server.headers.lock().unwrap().last().unwrap().clone();
    assert_eq!(last["webhook-id"], "0b7c/1700000000/rollback/7d9f8c6b/ci");
}

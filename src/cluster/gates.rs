//! Gates: the synthetic HTTP checks and the webhooks a rollout waits for, and the
//! fire-and-forget webhooks it calls.
//!
//! A gate runs in its own task so a slow check never blocks reconciliation; its result is
//! kept by id until the reconciler collects it. After a restart the pending gate recorded in
//! the status has no task, so it is started again (checks are safe to repeat).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::api::CheckSpec;
use crate::notify::signing::{signature, SIGNATURE_HEADER};
use crate::rollout::GateResult;

/// The JSON body of every webhook canaryd calls.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// `pre-rollout`, `confirm-promotion`, `post-rollout`, `rollback` or `promote`.
    pub event: String,
    pub canary: String,
    pub namespace: String,
    pub phase: String,
    pub stage_revision: Option<String>,
    pub prod_revision: Option<String>,
    pub stage_weight: u8,
    pub message: String,
    /// `promote` only: the images of stage's pod template, by container.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ContainerImage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerImage {
    pub container: String,
    pub image: String,
}

/// One webhook call, with its signing key when one is configured.
#[derive(Clone)]
pub struct WebhookCall {
    pub name: String,
    pub url: String,
    pub timeout: Duration,
    pub key: Option<Vec<u8>>,
}

impl std::fmt::Debug for WebhookCall {
    // The key never appears in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCall")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("signed", &self.key.is_some())
            .finish()
    }
}

/// Everything one gate runs: checks against one host, then webhooks.
#[derive(Clone, Debug, Default)]
pub struct GateJob {
    pub checks: Vec<CheckSpec>,
    /// Replaces `{{ host }}` in check URLs.
    pub host: String,
    pub webhooks: Vec<WebhookCall>,
    pub payload: Option<WebhookPayload>,
}

/// Whose gate: the Canary's uid and generation with the gate id the status records. Two
/// Canaries (or two generations of one spec) never see each other's results, even when
/// their ids are equal (same stage revision, step and start time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GateKey {
    pub canary_uid: String,
    pub generation: i64,
    pub id: String,
}

/// Runs gates in the background and hands out their results by key.
#[derive(Clone)]
pub struct GateRunner {
    http: reqwest::Client,
    gates: Arc<Mutex<HashMap<GateKey, Option<GateResult>>>>,
}

impl Default for GateRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl GateRunner {
    pub fn new() -> Self {
        Self {
            http: crate::tls::http_client()
                .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with default settings"),
            gates: Arc::default(),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The result of gate `key` if it finished; the result is handed out once.
    pub fn take(&self, key: &GateKey) -> Option<GateResult> {
        let mut gates = self.gates.lock().expect("gate map lock");
        match gates.get(key) {
            Some(Some(_)) => gates.remove(key).flatten(),
            _ => None,
        }
    }

    pub fn is_running(&self, key: &GateKey) -> bool {
        self.gates.lock().expect("gate map lock").contains_key(key)
    }

    /// Starts gate `key` unless it is already running or finished.
    pub fn start(&self, key: GateKey, job: GateJob) {
        {
            let mut gates = self.gates.lock().expect("gate map lock");
            if gates.contains_key(&key) {
                return;
            }
            gates.insert(key.clone(), None);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let (passed, message) = run_gate(&this.http, &job).await;
            tracing::info!(gate = %key.id, canary_uid = %key.canary_uid, passed, %message, "gate finished");
            let result = GateResult {
                id: key.id.clone(),
                passed,
                message,
            };
            this.gates
                .lock()
                .expect("gate map lock")
                .insert(key, Some(result));
        });
    }

    /// Records gate `key` as failed without running it (what it would run is refused).
    pub fn fail(&self, key: GateKey, message: String) {
        let result = GateResult {
            id: key.id.clone(),
            passed: false,
            message,
        };
        let mut gates = self.gates.lock().expect("gate map lock");
        gates.entry(key).or_insert(Some(result));
    }

    /// Calls webhooks whose answers do not matter (post-rollout, rollback), in the background.
    pub fn fire(&self, calls: Vec<WebhookCall>, payload: WebhookPayload) {
        let http = self.http.clone();
        tokio::spawn(async move {
            for call in calls {
                if let Err(e) = call_webhook(&http, &call, &payload).await {
                    tracing::warn!(webhook = %call.name, error = %e, "webhook failed");
                }
            }
        });
    }
}

async fn run_gate(http: &reqwest::Client, job: &GateJob) -> (bool, String) {
    let mut summary = Vec::new();
    for check in &job.checks {
        match run_check(http, check, &job.host).await {
            Ok(msg) => summary.push(msg),
            Err(e) => return (false, e.to_string()),
        }
    }
    if let Some(payload) = &job.payload {
        for call in &job.webhooks {
            match call_webhook(http, call, payload).await {
                Ok(()) => summary.push(format!("webhook {} answered 2xx", call.name)),
                Err(e) => return (false, format!("webhook {}: {e}", call.name)),
            }
        }
    }
    if summary.is_empty() {
        (true, "nothing to check".into())
    } else {
        (true, summary.join("; "))
    }
}

/// Why a check failed; the message is what the status, the Event and the log show.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("check {check}: bad method {method}")]
    BadMethod { check: String, method: String },
    #[error("check {}: request {} to {}: {kind}", .at.check, .at.request, .at.url)]
    Failed {
        at: CheckRequest,
        kind: CheckFailure,
    },
}

/// Which request of which check.
#[derive(Debug)]
pub struct CheckRequest {
    pub check: String,
    /// `i/count`.
    pub request: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("failed: {0}")]
    Request(#[source] reqwest::Error),
    #[error("answered {status}, expected {expected}")]
    Status { status: u16, expected: u16 },
    #[error("the body does not contain {0:?}")]
    Body(String),
}

/// Runs one check `count` times; every request must pass.
pub async fn run_check(
    http: &reqwest::Client,
    check: &CheckSpec,
    host: &str,
) -> Result<String, CheckError> {
    let url = check.url.replace("{{ host }}", host);
    let method = reqwest::Method::from_bytes(check.method.as_bytes()).map_err(|_| {
        CheckError::BadMethod {
            check: check.name.clone(),
            method: check.method.clone(),
        }
    })?;
    for i in 1..=check.count {
        let failed = |kind| CheckError::Failed {
            at: CheckRequest {
                check: check.name.clone(),
                request: format!("{i}/{}", check.count),
                url: url.clone(),
            },
            kind,
        };
        let response = http
            .request(method.clone(), &url)
            .timeout(check.timeout.0)
            .send()
            .await
            .map_err(|e| failed(CheckFailure::Request(e)))?;
        let status = response.status().as_u16();
        if status != check.expect_status {
            return Err(failed(CheckFailure::Status {
                status,
                expected: check.expect_status,
            }));
        }
        if let Some(needle) = &check.body_contains {
            let body = response.text().await.unwrap_or_default();
            if !body.contains(needle.as_str()) {
                return Err(failed(CheckFailure::Body(needle.clone())));
            }
        }
    }
    Ok(format!(
        "check {}: {}/{} passed",
        check.name, check.count, check.count
    ))
}

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Rejected {
        url: String,
        status: reqwest::StatusCode,
        /// The first 200 characters of the answer.
        body: String,
    },
}

/// POSTs the payload, signed when a key is configured; 2xx is success.
pub async fn call_webhook(
    http: &reqwest::Client,
    call: &WebhookCall,
    payload: &WebhookPayload,
) -> Result<(), WebhookError> {
    let body = serde_json::to_vec(payload).expect("a webhook payload serializes");
    let mut request = http
        .post(&call.url)
        .timeout(call.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(key) = &call.key {
        let now = jiff::Timestamp::now().as_second();
        request = request.header(SIGNATURE_HEADER, signature(key, now, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|source| WebhookError::Request {
            url: call.url.clone(),
            source,
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = response.text().await.unwrap_or_default();
        Err(WebhookError::Rejected {
            url: call.url.clone(),
            status,
            body: text.chars().take(200).collect(),
        })
    }
}

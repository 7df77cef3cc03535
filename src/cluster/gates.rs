//! Gates: the synthetic HTTP checks and the webhooks a rollout waits for, and the
//! fire-and-forget webhooks it calls.
//!
//! A gate runs in its own task so a slow check never blocks reconciliation; its result is
//! kept by id until the reconciler collects it. After a restart the pending gate recorded in
//! the status has no task, so it is started again (checks are safe to repeat).
//!
//! Every URL here is written by a Canary's author, so every request goes through the
//! daemon's [`EgressPolicy`]: the host is checked before any connection, the client's
//! resolver drops refused addresses, no redirect is followed and no proxy used. Messages
//! (status, Events, logs) show a URL without userinfo or query ([`redact`]) and never a
//! response body: a check failure says the status code, the latency and, for
//! `bodyContains`, only whether it matched (the expected text is left out too: it is the
//! author's own and would only lengthen the status). Webhooks are signed with Standard
//! Webhooks headers ([`crate::notify::signing`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde::Serialize;

use crate::api::{Canary, CanaryStatus, CheckSpec};
use crate::egress::{describe, redact, EgressPolicy, Refusal, MAX_BODY_BYTES};
use crate::notify::signing;
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
    // The key never appears in logs, nor the URL's userinfo or query.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCall")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
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
    /// The Canary's own `spec.prod.host` and `spec.stage.host`: allowed besides `egress.hosts`.
    pub hosts: Vec<String>,
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

/// Which Canary and rollout a webhook outside a gate speaks for (fire-and-forget webhooks
/// and the promotion webhook): the hosts its URLs may name besides `egress.hosts`, and what
/// its `webhook-id` is made of, so a repeated call of one message keeps its id.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub canary_uid: String,
    /// The Canary's own `spec.prod.host` and `spec.stage.host`.
    pub hosts: Vec<String>,
    /// Unix seconds; 0 outside a rollout.
    pub rollout_started_at: i64,
    pub stage_revision: String,
}

impl Origin {
    pub fn of(canary: &Canary, status: &CanaryStatus) -> Self {
        Self {
            canary_uid: canary.uid().unwrap_or_default(),
            hosts: vec![
                canary.spec.prod.host.clone(),
                canary.spec.stage.host.clone(),
            ],
            rollout_started_at: status.rollout_started_at.map_or(0, |t| t.as_second()),
            stage_revision: status.stage_revision.clone().unwrap_or_default(),
        }
    }

    /// `<uid>/<rollout start>/<event>/<stage revision>/<webhook>`, as a `webhook-id`.
    fn message_id(&self, event: &str, webhook: &str) -> String {
        signing::message_id(&format!(
            "{}/{}/{event}/{}/{webhook}",
            self.canary_uid, self.rollout_started_at, self.stage_revision
        ))
    }
}

/// Runs gates in the background and hands out their results by key.
#[derive(Clone)]
pub struct GateRunner {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
    gates: Arc<Mutex<HashMap<GateKey, Option<GateResult>>>>,
}

impl Default for GateRunner {
    fn default() -> Self {
        Self::new(EgressPolicy::default())
    }
}

/// What one request may use: the client that enforces the policy after resolution, the
/// policy, and the Canary's own hosts.
#[derive(Clone, Copy)]
struct Outbound<'a> {
    http: &'a reqwest::Client,
    policy: &'a EgressPolicy,
    hosts: &'a [String],
}

impl GateRunner {
    /// A runner whose every request follows `policy` (the daemon's `egress`).
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            http: policy.client(),
            policy: Arc::new(policy),
            gates: Arc::default(),
        }
    }

    fn outbound<'a>(&'a self, hosts: &'a [String]) -> Outbound<'a> {
        Outbound {
            http: &self.http,
            policy: &self.policy,
            hosts,
        }
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
            let result = this.run(&key, &job).await;
            tracing::info!(gate = %key.id, canary_uid = %key.canary_uid, passed = result.passed, message = %result.message, "gate finished");
            this.gates
                .lock()
                .expect("gate map lock")
                .insert(key, Some(result));
        });
    }

    /// Runs gate `key` now and returns its result (what [`Self::start`] runs in the background).
    pub async fn run(&self, key: &GateKey, job: &GateJob) -> GateResult {
        let out = self.outbound(&job.hosts);
        let (passed, message) = run_gate(out, key, job).await;
        GateResult {
            id: key.id.clone(),
            passed,
            message,
        }
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
    pub fn fire(&self, calls: Vec<WebhookCall>, payload: WebhookPayload, origin: Origin) {
        let this = self.clone();
        tokio::spawn(async move {
            for call in calls {
                if let Err(e) = this.call(&call, &payload, &origin).await {
                    tracing::warn!(webhook = %call.name, error = %e, "webhook failed");
                }
            }
        });
    }

    /// Calls one webhook now (the promotion webhook, and each of [`Self::fire`]'s), with
    /// the `webhook-id` of `origin`'s message.
    pub async fn call(
        &self,
        call: &WebhookCall,
        payload: &WebhookPayload,
        origin: &Origin,
    ) -> Result<(), WebhookError> {
        let id = origin.message_id(&payload.event, &call.name);
        call_webhook(self.outbound(&origin.hosts), call, payload, &id).await
    }
}

async fn run_gate(out: Outbound<'_>, key: &GateKey, job: &GateJob) -> (bool, String) {
    let mut summary = Vec::new();
    for check in &job.checks {
        match run_check(out, check, &job.host).await {
            Ok(msg) => summary.push(msg),
            Err(e) => return (false, e.to_string()),
        }
    }
    if let Some(payload) = &job.payload {
        for call in &job.webhooks {
            // The same for every run of this gate, restarts included.
            let id = signing::message_id(&format!("{}/{}/{}", key.canary_uid, key.id, call.name));
            match call_webhook(out, call, payload, &id).await {
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
    #[error("check {check}: {refusal}")]
    Refused { check: String, refusal: Refusal },
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
    /// Without userinfo and query.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// No answer: refused by the policy after resolution, timed out, connection failed.
    #[error("{}", describe(.0))]
    Request(#[source] reqwest::Error),
    #[error("answered {status} after {} ms, expected {expected}", .latency.as_millis())]
    Status {
        status: u16,
        expected: u16,
        latency: Duration,
    },
    #[error("answered {status} after {} ms; bodyContains not matched in the first {} KiB of the body", .latency.as_millis(), MAX_BODY_BYTES / 1024)]
    Body { status: u16, latency: Duration },
    #[error("answered {status} after {} ms; reading the body failed: {}", .latency.as_millis(), describe(.source))]
    BodyRead {
        status: u16,
        latency: Duration,
        #[source]
        source: reqwest::Error,
    },
}

/// Runs one check `count` times; every request must pass.
async fn run_check(out: Outbound<'_>, check: &CheckSpec, host: &str) -> Result<String, CheckError> {
    let refused = |refusal| CheckError::Refused {
        check: check.name.clone(),
        refusal,
    };
    let method = out.policy.check_method(&check.method).map_err(refused)?;
    let url = check.url.replace("{{ host }}", host);
    let url = out.policy.check_url(&url, out.hosts).map_err(refused)?;
    let shown = redact(url.as_str());
    let mut slowest = Duration::ZERO;
    for i in 1..=check.count {
        let failed = |kind| CheckError::Failed {
            at: CheckRequest {
                check: check.name.clone(),
                request: format!("{i}/{}", check.count),
                url: shown.clone(),
            },
            kind,
        };
        let started = Instant::now();
        let response = out
            .http
            .request(method.clone(), url.clone())
            .timeout(check.timeout.0)
            .send()
            .await
            .map_err(|e| failed(CheckFailure::Request(e.without_url())))?;
        let latency = started.elapsed();
        slowest = slowest.max(latency);
        let status = response.status().as_u16();
        if status != check.expect_status {
            return Err(failed(CheckFailure::Status {
                status,
                expected: check.expect_status,
                latency,
            }));
        }
        if let Some(needle) = &check.body_contains {
            match body_contains(response, needle.as_bytes()).await {
                Ok(true) => {}
                Ok(false) => return Err(failed(CheckFailure::Body { status, latency })),
                Err(e) => {
                    return Err(failed(CheckFailure::BodyRead {
                        status,
                        latency,
                        source: e.without_url(),
                    }))
                }
            }
        }
    }
    let matched = if check.body_contains.is_some() {
        ", bodyContains matched"
    } else {
        ""
    };
    Ok(format!(
        "check {}: {}/{} passed (slowest {} ms{matched})",
        check.name,
        check.count,
        check.count,
        slowest.as_millis()
    ))
}

/// Whether the first [`MAX_BODY_BYTES`] of the body contain `needle` (bytes of its UTF-8);
/// reads chunk by chunk and stops as soon as it matched or the bound is reached.
async fn body_contains(
    mut response: reqwest::Response,
    needle: &[u8],
) -> Result<bool, reqwest::Error> {
    if needle.is_empty() {
        return Ok(true);
    }
    let finder = memchr::memmem::Finder::new(needle);
    let mut seen: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        // A match may straddle the previous chunk's end.
        let from = seen.len().saturating_sub(needle.len() - 1);
        let room = MAX_BODY_BYTES - seen.len();
        seen.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if finder.find(&seen[from..]).is_some() {
            return Ok(true);
        }
        if seen.len() >= MAX_BODY_BYTES {
            return Ok(false);
        }
    }
    Ok(false)
}

/// Why a webhook call failed. No message carries the answer's body, nor the URL's userinfo
/// or query.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{url}: {refusal}")]
    Refused { url: String, refusal: Refusal },
    #[error("request to {url} failed: {}", describe(.source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Rejected {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// POSTs the payload with the Standard Webhooks headers (signed when a key is configured);
/// 2xx is success.
async fn call_webhook(
    out: Outbound<'_>,
    call: &WebhookCall,
    payload: &WebhookPayload,
    id: &str,
) -> Result<(), WebhookError> {
    let shown = redact(&call.url);
    let url = out
        .policy
        .check_url(&call.url, out.hosts)
        .map_err(|refusal| WebhookError::Refused {
            url: shown.clone(),
            refusal,
        })?;
    let body = serde_json::to_vec(payload).expect("a webhook payload serializes");
    let request = out
        .http
        .post(url)
        .timeout(call.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    let response = signing::sign(request, call.key.as_deref(), id, &body)
        .body(body)
        .send()
        .await
        .map_err(|e| WebhookError::Request {
            url: shown.clone(),
            source: e.without_url(),
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Rejected { url: shown, status })
    }
}

#[cfg(test)]
mod tests;

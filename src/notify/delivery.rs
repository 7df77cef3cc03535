//! Delivery: a bounded queue and one task per request, retried with exponential backoff
//! and jitter; what was confirmed is remembered in memory until the outbox lets it go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use rand::RngExt;
use tokio::sync::{mpsc, Semaphore};

use super::messages::{self, About};
use super::receivers::Receiver;
use super::signing;
use super::{Inner, Notifier, KEY_HEADER};
use crate::api::{Canary, CanaryStatus};

const CONCURRENT_REQUESTS: usize = 32;

/// How deliveries are repeated.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
    /// A notification not delivered for this long is given up (and logged).
    pub give_up_after: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter in [d/2, d].
    fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .first
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        let jitter = rand::rng().random_range(0.5..=1.0);
        d.mul_f64(jitter)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Delivery {
    InFlight,
    Delivered(Instant),
    GaveUp,
}

/// One request to one receiver; `id` names it in the delivery map.
pub(super) struct Job {
    id: String,
    receiver: String,
    body: serde_json::Value,
    key: String,
}

/// Why one request to a receiver failed (it is retried until `giveUpAfter`).
#[derive(Debug, thiserror::Error)]
pub(super) enum DeliveryError {
    #[error("no notifier of that name")]
    NoSuchNotifier,
    #[error("request to {shown} failed: {}", crate::egress::describe(.source))]
    Request {
        shown: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{shown} answered {status}")]
    Rejected {
        shown: String,
        status: reqwest::StatusCode,
    },
}

impl Notifier {
    /// Sends what the outbox in `status` holds that is pending or due: new events, events a
    /// previous process did not confirm, firing alerts to re-send, resolutions. Removes
    /// confirmed entries from the status. Never waits for a receiver.
    pub(super) fn deliver(&self, canary: &Canary, status: &mut CanaryStatus) {
        if status.notifications.is_empty() {
            return;
        }
        let about = self.about(canary, status);
        let mut pending = std::mem::take(&mut status.notifications.pending);
        for n in &mut pending {
            let key = n.key.clone();
            let (slack, webhook) = (messages::slack(n, &about), messages::webhook(n, &about));
            n.receivers.retain(|r| {
                let body = match self.inner.receivers.get(r) {
                    Some(Receiver::Slack { .. }) => slack.clone(),
                    Some(_) => webhook.clone(),
                    None => {
                        tracing::warn!(notifier = %r, key = %key, "no notifier of that name in the config; dropping");
                        return false;
                    }
                };
                !self.confirmed_once(format!("{key}@{r}"), r, &key, body)
            });
        }
        pending.retain(|n| !n.receivers.is_empty());
        status.notifications.pending = pending;

        // Alertmanager judges `endsAt` by its own clock, not by the reconcile's.
        let firing_until = Timestamp::now()
            + jiff::SignedDuration::try_from(self.inner.settings.resend_interval.0 * 4)
                .unwrap_or_default();
        let mut alerts = std::mem::take(&mut status.notifications.alerts);
        for a in &mut alerts {
            a.receivers.retain(|r| {
                let known = self.inner.receivers.contains_key(r);
                if !known {
                    tracing::warn!(notifier = %r, alert = %a.alertname, "no notifier of that name in the config; dropping");
                }
                known
            });
            let key = format!("{}/{}/{}", about.uid, a.alertname, a.starts_at.as_second());
            let body = serde_json::Value::Array(vec![messages::alert(a, &about, firing_until)]);
            match a.resolved_at {
                None => {
                    for r in &a.receivers {
                        self.keep_sending(format!("{key}@{r}"), r, &key, body.clone());
                    }
                }
                Some(_) => a.receivers.retain(|r| {
                    self.forget(&format!("{key}@{r}"));
                    !self.confirmed_once(format!("{key}/resolved@{r}"), r, &key, body.clone())
                }),
            }
        }
        alerts.retain(|a| !a.receivers.is_empty());
        status.notifications.alerts = alerts;
    }

    fn about(&self, canary: &Canary, status: &CanaryStatus) -> About {
        let namespace = canary.namespace().unwrap_or_default();
        let name = canary.name_any();
        let s = &self.inner.settings;
        About {
            dashboard_url: messages::link(&s.dashboard_url, &namespace, &name),
            canary_url: messages::link(&s.canary_url, &namespace, &name),
            uid: canary.uid().unwrap_or_default(),
            phase: status.phase.to_string(),
            prod_revision: status.prod_revision.clone(),
            stage_weight: status.stage_weight,
            decision: status.last_decision.clone(),
            namespace,
            canary: name,
        }
    }

    /// True once delivery `id` was confirmed (or given up); sends it when nobody is.
    fn confirmed_once(
        &self,
        id: String,
        receiver: &str,
        key: &str,
        body: serde_json::Value,
    ) -> bool {
        let state = self.deliveries().get(&id).copied();
        match state {
            Some(Delivery::Delivered(_)) | Some(Delivery::GaveUp) => {
                self.forget(&id);
                true
            }
            Some(Delivery::InFlight) => false,
            None => {
                self.enqueue(id, receiver, key, body);
                false
            }
        }
    }

    /// Sends delivery `id` again once `resendInterval` passed since it was last confirmed.
    fn keep_sending(&self, id: String, receiver: &str, key: &str, body: serde_json::Value) {
        let state = self.deliveries().get(&id).copied();
        let due = match state {
            None | Some(Delivery::GaveUp) => true,
            Some(Delivery::InFlight) => false,
            Some(Delivery::Delivered(at)) => at.elapsed() >= self.inner.settings.resend_interval.0,
        };
        if due {
            self.enqueue(id, receiver, key, body);
        }
    }

    fn enqueue(&self, id: String, receiver: &str, key: &str, body: serde_json::Value) {
        let Some(queue) = &self.inner.queue else {
            return;
        };
        let job = Job {
            id: id.clone(),
            receiver: receiver.into(),
            body,
            key: key.into(),
        };
        // Marked before it is queued: the delivery may finish before `try_send` returns.
        self.deliveries().insert(id.clone(), Delivery::InFlight);
        if queue.try_send(job).is_err() {
            // Left pending; the next reconcile tries again.
            self.forget(&id);
            tracing::warn!(notifier = %receiver, "the notification queue is full");
        }
    }

    fn forget(&self, id: &str) {
        self.deliveries().remove(id);
    }

    fn deliveries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Delivery>> {
        self.inner.deliveries.lock().expect("delivery map lock")
    }
}

/// Takes jobs off the queue; each runs in its own task, so a dead receiver delays only
/// its own notifications. Ends when the last [`Notifier`] is dropped.
pub(super) async fn dispatch(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Job>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    while let Some(job) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        drop(strong);
        let inner = inner.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut attempt = 0;
            loop {
                let Some(this) = inner.upgrade() else { return };
                // A firing alert that was resolved meanwhile is not sent any more.
                let current = this
                    .deliveries
                    .lock()
                    .expect("delivery map lock")
                    .get(&job.id)
                    .copied();
                if current != Some(Delivery::InFlight) {
                    return;
                }
                let result = {
                    let _permit = permits.acquire().await.expect("semaphore open");
                    send(&this, &job).await
                };
                this.metrics.delivered(&job.receiver, result.is_ok());
                let outcome = match result {
                    Ok(()) => Delivery::Delivered(Instant::now()),
                    Err(e) if started.elapsed() >= this.retry.give_up_after => {
                        tracing::error!(notifier = %job.receiver, key = %job.key, error = %e, attempts = attempt + 1, "giving the notification up");
                        Delivery::GaveUp
                    }
                    Err(e) => {
                        let delay = this.retry.delay(attempt);
                        tracing::warn!(notifier = %job.receiver, key = %job.key, error = %e, retry_in = ?delay, "notification not delivered; retrying");
                        drop(this);
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                // Unless forgotten meanwhile (a resolved alert's firing resend).
                if let Some(state) = this
                    .deliveries
                    .lock()
                    .expect("delivery map lock")
                    .get_mut(&job.id)
                {
                    *state = outcome;
                }
                return;
            }
        });
    }
}

async fn send(inner: &Inner, job: &Job) -> Result<(), DeliveryError> {
    let receiver = inner
        .receivers
        .get(&job.receiver)
        .ok_or(DeliveryError::NoSuchNotifier)?;
    let body = serde_json::to_vec(&job.body).expect("a JSON value always serializes");
    let (url, shown) = match receiver {
        Receiver::Alertmanager { url } => (url.clone(), crate::egress::redact(url)),
        Receiver::Slack { url } => (
            String::from_utf8_lossy(&url.0).into_owned(),
            "the Slack URL".to_string(),
        ),
        Receiver::Webhook { url, .. } => (url.clone(), crate::egress::redact(url)),
    };
    let mut request = inner
        .http
        .post(&url)
        .timeout(inner.retry.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Receiver::Webhook { key, .. } = receiver {
        // The pending notification's key: the same for every retry, and for every process.
        let id = signing::message_id(&job.key);
        request = request.header(KEY_HEADER, &job.key);
        request = signing::sign(request, key.as_ref().map(|k| k.0.as_slice()), &id, &body);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| DeliveryError::Request {
            shown: shown.clone(),
            // The URL may be a secret (Slack's); the message names it as `shown`.
            source: e.without_url(),
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Rejected { shown, status })
    }
}

//! Notifications: tells people about rollout events through Alertmanager, Slack-compatible
//! incoming webhooks and signed generic webhooks.
//!
//! The reconciler never waits for a receiver. [`Notifier::sync`] records each event as
//! pending in the Canary's status (with an idempotency key) and hands it to a background
//! task through a bounded queue; the task retries with exponential backoff and jitter. The
//! next reconcile removes what was confirmed. After a restart the pending entries in the
//! status are sent again, so nothing is lost; receivers drop keys they have seen, and
//! Alertmanager deduplicates alerts by their labels, so nothing is shown twice.
//!
//! Alertmanager gets alerts, not chatter: `RolledBack` and `Paused` become the alerts
//! `CanaryRolledBack` and `CanaryPaused`, kept in the status while they fire, re-sent every
//! `resendInterval` and resolved (`endsAt`) when the next rollout of the Canary succeeds
//! (a pause also resolves when the Canary leaves `Paused`). Other events are not sent to
//! Alertmanager. Secrets (Slack URLs, HMAC keys) are read from files and never logged.

pub mod messages;
mod metrics;
pub mod signing;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use rand::RngExt;
use tokio::sync::{mpsc, Semaphore};

use crate::api::{
    default_notification_events, AlertState, Canary, CanaryStatus, NotificationEvent,
    PendingNotification, Phase,
};
use signing::{signature, SIGNATURE_HEADER};

use crate::config::{NotifierConfig, NotifySettings};
use crate::rollout::{Action, NotifyEvent};
use messages::About;
pub use metrics::DeliveryMetrics;

/// Header with the notification's idempotency key on generic webhooks.
pub const KEY_HEADER: &str = "X-Canaryd-Idempotency-Key";
/// Pending notifications kept per Canary; the oldest is dropped beyond this.
const MAX_PENDING: usize = 20;
const QUEUE: usize = 1024;
const CONCURRENT_REQUESTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "notifiers[{name}]: cannot read {path}: {source}; mount the Secret there or fix the path"
    )]
    Secret {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("notifiers[{name}]: the file {path} is empty; it must hold the secret")]
    EmptySecret { name: String, path: String },
}

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

enum Receiver {
    Alertmanager { url: String },
    Slack { url: Secret },
    Webhook { url: String, key: Option<Secret> },
}

/// Bytes that never appear in `Debug` output or logs.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

fn read_secret(name: &str, path: &Path) -> Result<Secret, NotifyError> {
    let text = std::fs::read(path).map_err(|source| NotifyError::Secret {
        name: name.into(),
        path: path.display().to_string(),
        source,
    })?;
    let trimmed = text.trim_ascii().to_vec();
    if trimmed.is_empty() {
        return Err(NotifyError::EmptySecret {
            name: name.into(),
            path: path.display().to_string(),
        });
    }
    Ok(Secret(trimmed))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Delivery {
    InFlight,
    Delivered(Instant),
    GaveUp,
}

/// One request to one receiver; `id` names it in the delivery map.
struct Job {
    id: String,
    receiver: String,
    body: serde_json::Value,
    key: String,
}

struct Inner {
    receivers: HashMap<String, Receiver>,
    settings: NotifySettings,
    retry: RetryPolicy,
    http: reqwest::Client,
    deliveries: Mutex<HashMap<String, Delivery>>,
    queue: Option<mpsc::Sender<Job>>,
    /// Counts every attempt, delivered or failed, in canaryd's own metrics.
    metrics: DeliveryMetrics,
}

/// The notification service: cheap to clone, shared by every reconcile.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// A notifier with no receivers: events are logged only.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                receivers: HashMap::new(),
                settings: NotifySettings::default(),
                retry: RetryPolicy::default(),
                http: crate::tls::http_client().build().expect("an HTTP client"),
                deliveries: Mutex::default(),
                queue: None,
                metrics: DeliveryMetrics::default(),
            }),
        }
    }

    /// Reads the secrets and starts the delivery task (needs a tokio runtime).
    pub fn new(
        configs: &[NotifierConfig],
        settings: NotifySettings,
        retry: RetryPolicy,
    ) -> Result<Self, NotifyError> {
        Self::with_metrics(configs, settings, retry, DeliveryMetrics::default())
    }

    /// [`Self::new`], counting deliveries in `metrics`.
    pub fn with_metrics(
        configs: &[NotifierConfig],
        settings: NotifySettings,
        retry: RetryPolicy,
        metrics: DeliveryMetrics,
    ) -> Result<Self, NotifyError> {
        let mut receivers = HashMap::new();
        for c in configs {
            let r = match c {
                NotifierConfig::Alertmanager { url, .. } => Receiver::Alertmanager {
                    url: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                },
                NotifierConfig::Slack { name, url_file } => Receiver::Slack {
                    url: read_secret(name, url_file)?,
                },
                NotifierConfig::Webhook {
                    name,
                    url,
                    secret_file,
                } => Receiver::Webhook {
                    url: url.clone(),
                    key: secret_file
                        .as_deref()
                        .map(|p| read_secret(name, p))
                        .transpose()?,
                },
            };
            receivers.insert(c.name().to_string(), r);
        }
        if receivers.is_empty() {
            return Ok(Self::disabled());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            receivers,
            settings,
            retry,
            http: crate::tls::http_client()
                .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with default settings"),
            deliveries: Mutex::default(),
            queue: Some(tx),
            metrics,
        });
        tokio::spawn(dispatch(Arc::downgrade(&inner), rx));
        Ok(Self { inner })
    }

    /// From the daemon's config, counting deliveries in `metrics`.
    pub fn from_config(
        config: &crate::config::Config,
        metrics: DeliveryMetrics,
    ) -> Result<Self, NotifyError> {
        let retry = RetryPolicy {
            give_up_after: config.notify.give_up_after.0,
            ..RetryPolicy::default()
        };
        Self::with_metrics(&config.notifiers, config.notify.clone(), retry, metrics)
    }

    /// Records the decision's notify actions in `status` and sends what is pending or due:
    /// new events, events a previous process did not confirm, firing alerts to re-send,
    /// resolutions. Confirmed entries leave the status. Never waits for a receiver.
    pub fn sync(
        &self,
        canary: &Canary,
        status: &mut CanaryStatus,
        actions: &[Action],
        now: Timestamp,
    ) {
        for action in actions {
            if let Action::Notify { event, message, .. } = action {
                tracing::info!(canary = %canary.name_any(), namespace = canary.namespace().unwrap_or_default(), event = event.as_str(), %message, "rollout event");
                self.record(canary, status, event_of(*event), message, now);
            }
        }
        if status.phase != Phase::Paused {
            resolve(status, messages::PAUSED, now);
        }
        if status.phase == Phase::Succeeded {
            resolve(status, messages::ROLLED_BACK, now);
        }
        if self.inner.receivers.is_empty() {
            status.notifications = Default::default();
        }
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

    fn record(
        &self,
        canary: &Canary,
        status: &mut CanaryStatus,
        event: NotificationEvent,
        message: &str,
        now: Timestamp,
    ) {
        let routed = self.routed(canary, event);
        let mut key = format!(
            "{}/{}/{:?}/{}/{}",
            canary.uid().unwrap_or_default(),
            status.rollout_started_at.map_or(0, |t| t.as_second()),
            event,
            status.step,
            status.stage_revision.as_deref().unwrap_or("")
        );
        if event == NotificationEvent::Paused {
            // A resume restarts the step, so a second pause of the same step is a new event;
            // a replayed decision keeps the step's start and so the key.
            let step_start = status.step_started_at.map_or(0, |t| t.as_second());
            key.push_str(&format!("/{step_start}"));
        }
        let (alertmanagers, others): (Vec<String>, Vec<String>) =
            routed.into_iter().partition(|r| {
                matches!(
                    self.inner.receivers.get(r),
                    Some(Receiver::Alertmanager { .. })
                )
            });
        let alertname = match event {
            NotificationEvent::RolledBack => Some(messages::ROLLED_BACK),
            NotificationEvent::Paused => Some(messages::PAUSED),
            _ => None,
        };
        if let (Some(alertname), false) = (alertname, alertmanagers.is_empty()) {
            let firing = status.notifications.alerts.iter().any(|a| {
                a.alertname == alertname
                    && a.stage_revision == status.stage_revision
                    && a.resolved_at.is_none()
            });
            if !firing {
                // A newer rollback replaces the older one's alert.
                resolve(status, alertname, now);
                status.notifications.alerts.push(AlertState {
                    alertname: alertname.into(),
                    stage_revision: status.stage_revision.clone(),
                    starts_at: now,
                    description: messages::describe(message, status.last_decision.as_ref()),
                    receivers: alertmanagers,
                    resolved_at: None,
                });
            }
        }
        let pending = &mut status.notifications.pending;
        if others.is_empty() || pending.iter().any(|p| p.key == key) {
            return;
        }
        if pending.len() >= MAX_PENDING {
            let dropped = pending.remove(0);
            tracing::warn!(canary = %canary.name_any(), key = %dropped.key, "too many undelivered notifications; dropping the oldest");
        }
        pending.push(PendingNotification {
            key,
            event,
            message: message.into(),
            stage_revision: status.stage_revision.clone(),
            at: now,
            receivers: others,
        });
    }

    /// Notifier names that get `event` for this Canary.
    fn routed(&self, canary: &Canary, event: NotificationEvent) -> Vec<String> {
        let routes = &canary.spec.notifications;
        let mut names: Vec<String> = if routes.is_empty() {
            if default_notification_events().contains(&event) {
                self.inner.receivers.keys().cloned().collect()
            } else {
                Vec::new()
            }
        } else {
            routes
                .iter()
                .filter(|r| r.events.contains(&event))
                .map(|r| r.notifier.clone())
                .collect()
        };
        names.sort();
        names.dedup();
        names
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

fn event_of(event: NotifyEvent) -> NotificationEvent {
    match event {
        NotifyEvent::RolloutStarted => NotificationEvent::RolloutStarted,
        NotifyEvent::StepAdvanced => NotificationEvent::StepAdvanced,
        NotifyEvent::Paused => NotificationEvent::Paused,
        NotifyEvent::RolledBack => NotificationEvent::RolledBack,
        NotifyEvent::Promoted => NotificationEvent::Promoted,
        NotifyEvent::Succeeded => NotificationEvent::Succeeded,
    }
}

fn resolve(status: &mut CanaryStatus, alertname: &str, now: Timestamp) {
    for a in &mut status.notifications.alerts {
        if a.alertname == alertname && a.resolved_at.is_none() {
            a.resolved_at = Some(now);
        }
    }
}

/// Takes jobs off the queue; each runs in its own task, so a dead receiver delays only
/// its own notifications. Ends when the last [`Notifier`] is dropped.
async fn dispatch(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Job>) {
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

async fn send(inner: &Inner, job: &Job) -> Result<(), String> {
    let receiver = inner
        .receivers
        .get(&job.receiver)
        .ok_or("no such notifier")?;
    let body = serde_json::to_vec(&job.body).map_err(|e| e.to_string())?;
    let (url, shown) = match receiver {
        Receiver::Alertmanager { url } => (url.clone(), url.clone()),
        Receiver::Slack { url } => (
            String::from_utf8_lossy(&url.0).into_owned(),
            "the Slack URL".to_string(),
        ),
        Receiver::Webhook { url, .. } => (url.clone(), url.clone()),
    };
    let mut request = inner
        .http
        .post(&url)
        .timeout(inner.retry.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Receiver::Webhook { key, .. } = receiver {
        request = request.header(KEY_HEADER, &job.key);
        if let Some(key) = key {
            let now = Timestamp::now().as_second();
            request = request.header(SIGNATURE_HEADER, signature(&key.0, now, &body));
        }
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request to {shown} failed: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{shown} answered {status}"))
    }
}

#[cfg(test)]
mod tests;

//! Notifications: tells people about rollout events through Alertmanager, Slack-compatible
//! incoming webhooks and signed generic webhooks.
//!
//! The reconciler never waits for a receiver. [`Notifier::sync`] records each event as
//! pending in the Canary's status, with an idempotency key (`outbox`: a pure function of the
//! decision's actions and the configured receivers), and hands it to a background task
//! through a bounded queue (`delivery`); the task retries with exponential backoff and
//! jitter. The next reconcile removes what was confirmed. `receivers` reads the config and
//! its secret files; `signing` signs webhooks (the gates use it too). After a restart the pending entries in the
//! status are sent again, so nothing is lost; receivers drop keys they have seen, and
//! Alertmanager deduplicates alerts by their labels, so nothing is shown twice.
//!
//! Alertmanager gets alerts, not chatter: `RolledBack` and `Paused` become the alerts
//! `CanaryRolledBack` and `CanaryPaused`, kept in the status while they fire, re-sent every
//! `resendInterval` and resolved (`endsAt`) when the next rollout of the Canary succeeds
//! (a pause also resolves when the Canary leaves `Paused`). Other events are not sent to
//! Alertmanager. Secrets (Slack URLs, HMAC keys) are read from files and never logged.

mod delivery;
pub mod messages;
mod metrics;
mod outbox;
mod receivers;
pub mod signing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::mpsc;

use crate::api::{Canary, CanaryStatus};
use crate::config::{NotifierConfig, NotifySettings};
use crate::rollout::Action;
pub use delivery::RetryPolicy;
use delivery::{Delivery, Job};
pub use metrics::DeliveryMetrics;
use receivers::Receiver;

/// Header with the notification's idempotency key on generic webhooks.
pub const KEY_HEADER: &str = "X-Canaryd-Idempotency-Key";
const QUEUE: usize = 1024;

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
        let receivers = receivers::from_config(configs)?;
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
        tokio::spawn(delivery::dispatch(Arc::downgrade(&inner), rx));
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

    /// Records the decision's notify actions in the outbox of `status` (pure: see
    /// [`outbox`]) and sends what is pending or due. Never waits for a receiver.
    pub fn sync(
        &self,
        canary: &Canary,
        status: &mut CanaryStatus,
        actions: &[Action],
        now: Timestamp,
    ) {
        for action in actions {
            if let Action::Notify {
                event,
                cause,
                message,
            } = action
            {
                tracing::info!(canary = %canary.name_any(), namespace = canary.namespace().unwrap_or_default(), event = event.as_str(), cause = cause.as_str(), %message, "rollout event");
            }
        }
        let dropped = outbox::apply(&self.inner.receivers, canary, status, actions, now);
        for key in dropped {
            tracing::warn!(canary = %canary.name_any(), %key, "too many undelivered notifications; dropping the oldest");
        }
        self.deliver(canary, status);
    }
}

#[cfg(test)]
mod tests;

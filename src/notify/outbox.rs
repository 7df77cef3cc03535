//! The outbox in the Canary's status, as a pure function of the decision: which receivers
//! each notify action goes to (the Canary's routes, or every receiver for the default
//! events), the pending entries with their idempotency keys, and the alerts that fire and
//! resolve. No I/O: delivery (`super::delivery`) sends what this leaves in the status.

use std::collections::HashMap;

use jiff::Timestamp;
use kube::ResourceExt;

use super::messages;
use super::receivers::Receiver;
use crate::api::limits::{
    bounded, fit_status, MAX_ALERTS, MAX_PENDING_NOTIFICATIONS as MAX_PENDING, MAX_TEXT,
};
use crate::api::{
    default_notification_events, AlertState, Canary, CanaryStatus, NotificationEvent,
    PendingNotification, Phase,
};
use crate::rollout::{Action, NotifyEvent};

/// Records the decision's notify actions in `status.notifications` and resolves the alerts
/// the new phase ends; the last step before the status is written, so it also holds the
/// whole status under its size limit (`limits::fit_status`). Returns the keys of pending
/// entries dropped for room.
pub(super) fn apply(
    receivers: &HashMap<String, Receiver>,
    canary: &Canary,
    status: &mut CanaryStatus,
    actions: &[Action],
    now: Timestamp,
) -> Vec<String> {
    let mut dropped = Vec::new();
    for action in actions {
        if let Action::Notify { event, message, .. } = action {
            dropped.extend(record(
                receivers,
                canary,
                status,
                event_of(*event),
                message,
                now,
            ));
        }
    }
    if status.phase != Phase::Paused {
        resolve(status, messages::PAUSED, now);
    }
    if status.phase == Phase::Succeeded {
        resolve(status, messages::ROLLED_BACK, now);
    }
    if receivers.is_empty() {
        status.notifications = Default::default();
    }
    dropped.extend(fit_status(status));
    dropped
}

fn record(
    receivers: &HashMap<String, Receiver>,
    canary: &Canary,
    status: &mut CanaryStatus,
    event: NotificationEvent,
    message: &str,
    now: Timestamp,
) -> Vec<String> {
    let mut dropped = Vec::new();
    let routed = routed(receivers, canary, event);
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
    let (alertmanagers, others): (Vec<String>, Vec<String>) = routed
        .into_iter()
        .partition(|r| matches!(receivers.get(r), Some(Receiver::Alertmanager { .. })));
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
                description: bounded(
                    &messages::describe(message, status.last_decision.as_ref()),
                    MAX_TEXT,
                ),
                receivers: alertmanagers,
                resolved_at: None,
            });
            let alerts = &mut status.notifications.alerts;
            while alerts.len() > MAX_ALERTS {
                // The oldest resolved one (at most two fire at once, one per alert name).
                let i = alerts.iter().position(|a| a.resolved_at.is_some());
                alerts.remove(i.unwrap_or(0));
            }
        }
    }
    let pending = &mut status.notifications.pending;
    if others.is_empty() || pending.iter().any(|p| p.key == key) {
        return dropped;
    }
    if pending.len() >= MAX_PENDING {
        dropped.push(pending.remove(0).key);
    }
    pending.push(PendingNotification {
        key,
        event,
        message: bounded(message, MAX_TEXT),
        stage_revision: status.stage_revision.clone(),
        at: now,
        receivers: others,
    });
    dropped
}

/// Notifier names that get `event` for this Canary.
fn routed(
    receivers: &HashMap<String, Receiver>,
    canary: &Canary,
    event: NotificationEvent,
) -> Vec<String> {
    let routes = &canary.spec.notifications;
    let mut names: Vec<String> = if routes.is_empty() {
        if default_notification_events().contains(&event) {
            receivers.keys().cloned().collect()
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

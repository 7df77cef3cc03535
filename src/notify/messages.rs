//! The bodies canaryd sends: Alertmanager v2 alerts, Slack blocks, the generic webhook's
//! JSON. Pure: values in, JSON out.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{json, Value};

use crate::analysis::report_line;
use crate::api::{AlertState, DecisionRecord, NotificationEvent, PendingNotification};

/// What a message says about its Canary, besides the event itself.
#[derive(Clone, Debug, Default)]
pub struct About {
    pub namespace: String,
    pub canary: String,
    pub uid: String,
    pub phase: String,
    pub prod_revision: Option<String>,
    pub stage_weight: u8,
    pub decision: Option<DecisionRecord>,
    pub dashboard_url: Option<String>,
    pub canary_url: Option<String>,
}

/// The generic webhook's body (documented in README.md, "Notifications").
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookNotification<'a> {
    /// Idempotency key: receivers drop a key they have seen.
    pub key: &'a str,
    pub event: NotificationEvent,
    pub namespace: &'a str,
    pub canary: &'a str,
    pub uid: &'a str,
    pub phase: &'a str,
    pub stage_revision: Option<&'a str>,
    pub prod_revision: Option<&'a str>,
    pub stage_weight: u8,
    pub message: &'a str,
    pub at: Timestamp,
    /// The last decision and the statistics behind it, as in the Canary's status.
    pub decision: Option<&'a DecisionRecord>,
    pub dashboard_url: Option<&'a str>,
    pub canary_url: Option<&'a str>,
}

pub fn webhook(n: &PendingNotification, about: &About) -> Value {
    serde_json::to_value(WebhookNotification {
        key: &n.key,
        event: n.event,
        namespace: &about.namespace,
        canary: &about.canary,
        uid: &about.uid,
        phase: &about.phase,
        stage_revision: n.stage_revision.as_deref(),
        prod_revision: about.prod_revision.as_deref(),
        stage_weight: about.stage_weight,
        message: &n.message,
        at: n.at,
        decision: about.decision.as_ref(),
        dashboard_url: about.dashboard_url.as_deref(),
        canary_url: about.canary_url.as_deref(),
    })
    .expect("the payload serializes")
}

fn event_title(event: NotificationEvent) -> &'static str {
    match event {
        NotificationEvent::RolloutStarted => "Rollout started",
        NotificationEvent::StepAdvanced => "Step advanced",
        NotificationEvent::Paused => "Paused: needs a person",
        NotificationEvent::RolledBack => "Rolled back",
        NotificationEvent::Promoted => "Promoting",
        NotificationEvent::Succeeded => "Rollout succeeded",
    }
}

/// The statistics behind the last decision, one line per metric (as in the status's
/// `lastDecision.summary`).
pub fn numbers(decision: &DecisionRecord) -> Vec<String> {
    decision.metrics.iter().map(report_line).collect()
}

/// A Slack incoming-webhook message: a header, the decision, the numbers and links.
pub fn slack(n: &PendingNotification, about: &About) -> Value {
    let title = format!(
        "{}: {}/{}",
        event_title(n.event),
        about.namespace,
        about.canary
    );
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": n.message}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Stage release*\n{}", shown(n.stage_revision.as_deref()))},
            {"type": "mrkdwn", "text": format!("*Prod release*\n{}", shown(about.prod_revision.as_deref()))},
            {"type": "mrkdwn", "text": format!("*Phase*\n{}", about.phase)},
            {"type": "mrkdwn", "text": format!("*Stage weight*\n{} %", about.stage_weight)},
        ]}),
    ];
    if let Some(d) = &about.decision {
        let lines = numbers(d);
        if !lines.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Last decision: {}*\n{}", d.verdict.as_str(), lines.join("\n"))}}));
        }
    }
    let links: Vec<String> = [
        ("Dashboard", &about.dashboard_url),
        ("Canary", &about.canary_url),
    ]
    .into_iter()
    .filter_map(|(label, url)| url.as_ref().map(|u| format!("<{u}|{label}>")))
    .collect();
    if !links.is_empty() {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": links.join(" | ")}]}),
        );
    }
    json!({"text": format!("{title}: {}", n.message), "blocks": blocks})
}

/// One Alertmanager v2 alert (`POST /api/v2/alerts` takes a list of these). A firing alert
/// ends at `ends_at` unless sent again; a resolved one ends when it was resolved.
pub fn alert(a: &AlertState, about: &About, ends_at: Timestamp) -> Value {
    let severity = if a.alertname == ROLLED_BACK {
        "critical"
    } else {
        "warning"
    };
    let summary = if a.alertname == ROLLED_BACK {
        format!(
            "Canary {}/{} rolled back {}",
            about.namespace,
            about.canary,
            shown(a.stage_revision.as_deref())
        )
    } else {
        format!(
            "Canary {}/{} is paused and needs a person",
            about.namespace, about.canary
        )
    };
    let mut labels = json!({
        "alertname": a.alertname,
        "severity": severity,
        "namespace": about.namespace,
        "canary": about.canary,
    });
    if let Some(rev) = &a.stage_revision {
        labels["stage_revision"] = json!(rev);
    }
    let mut annotations = json!({"summary": summary, "description": a.description});
    if let Some(url) = &about.dashboard_url {
        annotations["dashboard"] = json!(url);
    }
    if let Some(url) = &about.canary_url {
        annotations["canary_url"] = json!(url);
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": a.starts_at.to_string(),
        "endsAt": a.resolved_at.unwrap_or(ends_at).to_string(),
    });
    if let Some(url) = &about.canary_url {
        alert["generatorURL"] = json!(url);
    }
    alert
}

pub const ROLLED_BACK: &str = "CanaryRolledBack";
pub const PAUSED: &str = "CanaryPaused";

/// The alert's description: the event's message and the numbers behind it, in plain words.
pub fn describe(message: &str, decision: Option<&DecisionRecord>) -> String {
    let mut text = message.to_string();
    if let Some(d) = decision {
        let lines = numbers(d);
        if !lines.is_empty() {
            text.push_str("\nLast look: ");
            text.push_str(&lines.join("; "));
        }
    }
    text
}

/// `{namespace}` and `{canary}` in a configured link.
pub fn link(template: &Option<String>, namespace: &str, canary: &str) -> Option<String> {
    template.as_ref().map(|t| {
        t.replace("{namespace}", namespace)
            .replace("{canary}", canary)
    })
}

/// A release as a person reads it (digests shortened), or "unknown".
fn shown(revision: Option<&str>) -> String {
    revision.map_or_else(|| "unknown".into(), crate::api::release::shorten)
}

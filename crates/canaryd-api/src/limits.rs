//! Bounds on everything a Canary's author controls and on what canaryd writes to its status,
//! so that one Canary can neither grow its object past what etcd stores (1.5 MiB a request)
//! nor make the daemon do unbounded work.
//!
//! The spec bounds are in the CRD schema (the API server enforces them) and checked again by
//! [`crate::validation`], because `canaryd validate` reads files without an API server. The
//! status bounds are applied where canaryd writes: free text through [`bounded`], lists by
//! their own limits, and [`fit_status`] as the last word before a status is written.

use std::time::Duration;

use crate::canary::CanaryStatus;

// -- spec: lists ------------------------------------------------------------------------

/// `spec.steps`.
pub const MAX_STEPS: usize = 20;
/// `spec.analysis.metrics`.
pub const MAX_METRICS: usize = 8;
/// `spec.analysis.metrics[].thresholdsMs`.
pub const MAX_THRESHOLDS: usize = 8;
/// Compared series of one spec: one per errorRate or ratio metric, one per latency threshold,
/// one per SLO limit. Each keeps two likelihood grids in the status, so this bounds
/// `status.analysis`; a schema cannot express it, the validation checks it.
pub const MAX_SERIES: usize = 10;
/// `spec.checks`.
pub const MAX_CHECKS: usize = 20;
/// `spec.webhooks`.
pub const MAX_WEBHOOKS: usize = 10;
/// `spec.notifications`.
/// `spec.revision.metadata` and `spec.revision.env`, each.
pub const MAX_REVISION_KEYS: usize = 8;
/// Longest revision kept as it is (`status.stageRevision`); a longer one is cut and given a
/// digest of the whole.
pub const MAX_REVISION: usize = 512;
pub const MAX_NOTIFICATION_ROUTES: usize = 10;
/// `spec.notifications[].events`: there are six events.
pub const MAX_ROUTE_EVENTS: usize = 6;

// -- spec: strings (characters) ---------------------------------------------------------

/// Names canaryd gives meaning to (checks, webhooks, metrics, notifiers) and namespaces
/// (a DNS label).
pub const MAX_NAME: usize = 63;
/// Names of Kubernetes objects (Deployment, VirtualService, Secret), a Secret's key and an
/// HTTP route's name: a DNS subdomain.
pub const MAX_OBJECT_NAME: usize = 253;
/// `host` of an environment: a DNS name.
pub const MAX_HOST: usize = 253;
/// Check, webhook and promotion webhook URLs.
pub const MAX_URL: usize = 2048;
/// `spec.checks[].bodyContains`.
pub const MAX_BODY_CONTAINS: usize = 1024;
/// `bad` and `total` PromQL of a ratio metric.
pub const MAX_PROMQL: usize = 4096;
/// A duration as written (`30s`, `1h 30m`).
pub const MAX_DURATION_TEXT: usize = 32;
/// Digits of one number in a duration: enough for a year in seconds (31557600s), and few
/// enough that no duration of [`MAX_DURATION_TEXT`] characters overflows.
pub const MAX_DURATION_DIGITS: usize = 9;
/// HTTP methods a check may use.
pub const CHECK_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

// -- spec: numbers ----------------------------------------------------------------------

/// `spec.checks[].count`: each is one HTTP request every time the check runs.
pub const MAX_CHECK_COUNT: u32 = 100;
/// `margin` and `tolerance`: the largest rate ratio of the analysis grid.
pub const MAX_RATIO: f64 = 16.0;
/// Latency thresholds and SLO limits, in milliseconds (one hour).
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
/// `spec.checks[].timeout`.
pub const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// `spec.webhooks[].timeout` and `spec.promotion.webhook.timeout`.
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Any duration, in a spec or the daemon's config: one year as humantime counts it (`1y`,
/// 365.25 days). The duration parser refuses longer ones; the schema's pattern cannot add up
/// a duration's parts, so this bound is the parser's alone.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

// -- status -----------------------------------------------------------------------------

/// The status of a Canary, serialized as JSON, stays below this.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;
/// Free text in the status (`message`, condition messages, decision reasons, notification
/// messages, alert descriptions), in bytes once written as a JSON string.
pub const MAX_TEXT: usize = 1024;
/// The message of a history entry (the full one is in `status.message` while it is current).
pub const MAX_HISTORY_TEXT: usize = 256;
/// Notifications not yet confirmed, per Canary; the oldest is dropped beyond this.
pub const MAX_PENDING_NOTIFICATIONS: usize = 10;
/// Alerts kept per Canary (firing, or resolved and not yet confirmed); the oldest resolved
/// one is dropped beyond this. At most two fire at once (one per alert name).
pub const MAX_ALERTS: usize = 4;

/// What replaces the end of a text cut short.
pub const ELLIPSIS: &str = "…";

/// Bytes `c` takes in a JSON string, counted the way the most escaping encoder writes it
/// (Go's `encoding/json` also escapes `<`, `>`, `&`, U+2028 and U+2029 as `\u00XX`).
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes `text` takes as a JSON string, without the quotes (an upper bound for any encoder).
pub fn json_size(text: &str) -> usize {
    text.chars().map(json_len).sum()
}

/// `text` cut to at most `max` bytes as a JSON string, on a character boundary, ending with
/// [`ELLIPSIS`] when it was cut; unchanged when it fits.
pub fn bounded(text: &str, max: usize) -> String {
    // One pass that stops at the bound: `cut` is where the text ends if it must be cut.
    let budget = max.saturating_sub(ELLIPSIS.len());
    let (mut used, mut cut) = (0, 0);
    for (i, c) in text.char_indices() {
        used += json_len(c);
        if used <= budget {
            cut = i + c.len_utf8();
        } else if used > max {
            return format!("{}{ELLIPSIS}", &text[..cut]);
        }
    }
    text.to_string()
}

/// Size of `status` as JSON.
pub fn status_size(status: &CanaryStatus) -> usize {
    serde_json::to_vec(status).map_or(usize::MAX, |v| v.len())
}

/// Keeps `status` below [`MAX_STATUS_BYTES`]: drops the oldest history entries, then the
/// oldest pending notifications, then resolved alerts, until it fits. Every text and list in
/// the status is bounded on its own, so a status built within those bounds fits without
/// this; it is the guard that holds when they add up to more. Returns the keys of the
/// notifications dropped.
pub fn fit_status(status: &mut CanaryStatus) -> Vec<String> {
    let mut dropped = Vec::new();
    while status_size(status) >= MAX_STATUS_BYTES {
        let notes = &mut status.notifications;
        if status.history.len() > 1 {
            status.history.remove(0);
        } else if !notes.pending.is_empty() {
            dropped.push(notes.pending.remove(0).key);
        } else if let Some(i) = notes.alerts.iter().position(|a| a.resolved_at.is_some()) {
            notes.alerts.remove(i);
        } else {
            break;
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::{HistoryEntry, Phase};

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(bounded("rolled back", 1024), "rolled back");
        let long = "é".repeat(1000); // 2000 bytes
        let cut = bounded(&long, 1024);
        assert!(cut.ends_with(ELLIPSIS));
        assert!(json_size(&cut) <= 1024, "{}", json_size(&cut));
        assert_eq!(cut.chars().filter(|&c| c == 'é').count(), (1024 - 3) / 2);
        assert_eq!(bounded(&"x".repeat(1024), 1024), "x".repeat(1024));
        assert_eq!(bounded(&"x".repeat(1025), 1024).len(), 1021 + 3);
    }

    #[test]
    fn escapes_count_as_what_they_take_in_json() {
        let nasty = "\"<\u{1}\\".repeat(500);
        let cut = bounded(&nasty, 1024);
        let json = serde_json::to_string(&cut).unwrap();
        assert!(json.len() <= 1024 + 2, "{}", json.len());
        assert!(json_size(&nasty) >= serde_json::to_string(&nasty).unwrap().len() - 2);
    }

    #[test]
    fn an_oversized_status_sheds_old_history_first() {
        let mut status = CanaryStatus::default();
        for i in 0..200 {
            status.history.push(HistoryEntry {
                at: jiff::Timestamp::from_second(i).unwrap(),
                phase: Phase::Progressing,
                step: 1,
                stage_weight: 30,
                message: "x".repeat(1000),
            });
        }
        assert!(fit_status(&mut status).is_empty());
        assert!(status_size(&status) < MAX_STATUS_BYTES);
        assert_eq!(status.history.last().unwrap().at.as_second(), 199);
    }
}

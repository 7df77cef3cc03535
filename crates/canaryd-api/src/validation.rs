//! Rules on a Canary spec that the OpenAPI schema cannot express. Every error names the
//! field and says how to fix it; a Canary that fails here is reported in its status and
//! left alone, never retried in a loop.
//!
//! The bounds of [`crate::limits`] are checked here too, although the schema has them:
//! `canaryd validate` reads files without an API server, and must refuse what the API
//! server refuses.

use std::collections::HashSet;

use super::canary::{CanarySpec, MetricKind, PromotionMode, WebhookTarget};
use super::limits::*;

/// One problem with a spec: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}; {fix}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Checks a spec; `namespace` is the Canary's own (the default for referenced objects).
/// Returns every problem found, not only the first.
pub fn validate(spec: &CanarySpec, namespace: &str) -> Result<(), Vec<SpecError>> {
    let mut errors = Vec::new();
    validate_bounds(spec, &mut errors);
    validate_steps(spec, &mut errors);
    validate_targets(spec, namespace, &mut errors);
    validate_durations(spec, &mut errors);
    validate_analysis(spec, &mut errors);
    validate_checks_and_webhooks(spec, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// All problems joined into one line, for a status condition or an error message.
pub fn describe(errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A list longer than `max`.
fn max_items(field: impl Into<String>, len: usize, max: usize, errors: &mut Vec<SpecError>) {
    if len > max {
        errors.push(err(
            field,
            format!("has {len} items, more than the {max} allowed"),
            format!("list at most {max}"),
        ));
    }
}

/// A text longer than `max` characters (as the API server counts them).
fn max_len(field: impl Into<String>, text: &str, max: usize, errors: &mut Vec<SpecError>) {
    let len = text.chars().count();
    if len > max {
        errors.push(err(
            field,
            format!("is {len} characters long, more than the {max} allowed"),
            format!("shorten it to at most {max} characters"),
        ));
    }
}

fn max_len_opt(field: String, text: &Option<String>, max: usize, errors: &mut Vec<SpecError>) {
    if let Some(text) = text {
        max_len(field, text, max, errors);
    }
}

fn max_duration(
    field: String,
    d: crate::HumanDuration,
    max: std::time::Duration,
    errors: &mut Vec<SpecError>,
) {
    if d.0 > max {
        let max = crate::HumanDuration(max);
        errors.push(err(
            field,
            format!("is {d}, longer than the {max} allowed"),
            format!("use at most {max}"),
        ));
    }
}

fn webhook_target_bounds(field: &str, w: &WebhookTarget, errors: &mut Vec<SpecError>) {
    max_len(format!("{field}.url"), &w.url, MAX_URL, errors);
    max_duration(
        format!("{field}.timeout"),
        w.timeout,
        MAX_WEBHOOK_TIMEOUT,
        errors,
    );
    if let Some(r) = &w.secret_ref {
        max_len(
            format!("{field}.secretRef.name"),
            &r.name,
            MAX_OBJECT_NAME,
            errors,
        );
        max_len(
            format!("{field}.secretRef.key"),
            &r.key,
            MAX_OBJECT_NAME,
            errors,
        );
    }
}

/// How many series the analysis of `spec` compares (see `analysis::series`): one per
/// errorRate or ratio metric, one per latency threshold, one per SLO limit.
pub fn series_count(spec: &CanarySpec) -> usize {
    let a = &spec.analysis;
    let metrics: usize = a
        .metrics
        .iter()
        .map(|m| match m.kind {
            MetricKind::Latency => m.thresholds_ms.len(),
            MetricKind::ErrorRate | MetricKind::Ratio => 1,
        })
        .sum();
    let slo = a.slo.as_ref().map_or(0, |slo| {
        usize::from(slo.max_error_rate.is_some())
            + slo.max_latency_ms.as_ref().map_or(0, |q| q.limits().len())
    });
    metrics + slo
}

/// The bounds of [`crate::limits`] on every list, text and number an author writes. Items
/// beyond a list's bound are not looked at (the list's own error says to remove them).
fn validate_bounds(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    let vs = &spec.virtual_service;
    max_len(
        "spec.virtualService.name",
        &vs.name,
        MAX_OBJECT_NAME,
        errors,
    );
    max_len_opt(
        "spec.virtualService.namespace".into(),
        &vs.namespace,
        MAX_NAME,
        errors,
    );
    max_len_opt(
        "spec.virtualService.route".into(),
        &vs.route,
        MAX_OBJECT_NAME,
        errors,
    );
    for (name, env) in [("prod", &spec.prod), ("stage", &spec.stage)] {
        let field = |f: &str| format!("spec.{name}.{f}");
        max_len(field("host"), &env.host, MAX_HOST, errors);
        let d = &env.deployment;
        max_len(field("deployment.name"), &d.name, MAX_OBJECT_NAME, errors);
        max_len_opt(
            field("deployment.namespace"),
            &d.namespace,
            MAX_NAME,
            errors,
        );
    }
    max_items("spec.steps", spec.steps.len(), MAX_STEPS, errors);

    let a = &spec.analysis;
    max_items(
        "spec.analysis.metrics",
        a.metrics.len(),
        MAX_METRICS,
        errors,
    );
    for (i, m) in a.metrics.iter().enumerate().take(MAX_METRICS) {
        let field = |f: &str| format!("spec.analysis.metrics[{i}].{f}");
        max_len(field("name"), &m.name, MAX_NAME, errors);
        max_items(
            field("thresholdsMs"),
            m.thresholds_ms.len(),
            MAX_THRESHOLDS,
            errors,
        );
        if let Some(t) = m.thresholds_ms.iter().find(|t| **t > MAX_LATENCY_MS) {
            errors.push(err(
                field("thresholdsMs"),
                format!("contains {t}, more than the {MAX_LATENCY_MS} ms allowed"),
                "use thresholds of at most an hour",
            ));
        }
        max_len_opt(field("bad"), &m.bad, MAX_PROMQL, errors);
        max_len_opt(field("total"), &m.total, MAX_PROMQL, errors);
    }
    if let Some(q) = a.slo.as_ref().and_then(|s| s.max_latency_ms.as_ref()) {
        for (quantile, ms) in q.limits() {
            if ms > MAX_LATENCY_MS {
                errors.push(err(
                    format!(
                        "spec.analysis.slo.maxLatencyMs.p{}",
                        (quantile * 100.0).round()
                    ),
                    format!("is {ms}, more than the {MAX_LATENCY_MS} ms allowed"),
                    "use a limit of at most an hour",
                ));
            }
        }
    }
    let series = series_count(spec);
    if series > MAX_SERIES {
        errors.push(err(
            "spec.analysis.metrics",
            format!(
                "compare {series} series (one per errorRate or ratio metric, latency threshold \
                 and SLO limit), more than the {MAX_SERIES} allowed"
            ),
            format!("compare at most {MAX_SERIES}: fewer thresholds or SLO limits"),
        ));
    }

    max_items("spec.checks", spec.checks.len(), MAX_CHECKS, errors);
    for (i, c) in spec.checks.iter().enumerate().take(MAX_CHECKS) {
        let field = |f: &str| format!("spec.checks[{i}].{f}");
        max_len(field("name"), &c.name, MAX_NAME, errors);
        max_len(field("url"), &c.url, MAX_URL, errors);
        max_len_opt(
            field("bodyContains"),
            &c.body_contains,
            MAX_BODY_CONTAINS,
            errors,
        );
        if c.count > MAX_CHECK_COUNT {
            errors.push(err(
                field("count"),
                format!("is {}, more than the {MAX_CHECK_COUNT} allowed", c.count),
                format!("send at most {MAX_CHECK_COUNT} requests (each is one request per gate)"),
            ));
        }
        if !(100..=599).contains(&c.expect_status) {
            errors.push(err(
                field("expectStatus"),
                format!("is {}", c.expect_status),
                "use an HTTP status between 100 and 599",
            ));
        }
        max_duration(field("timeout"), c.timeout, MAX_CHECK_TIMEOUT, errors);
    }

    max_items("spec.webhooks", spec.webhooks.len(), MAX_WEBHOOKS, errors);
    for (i, w) in spec.webhooks.iter().enumerate().take(MAX_WEBHOOKS) {
        max_len(
            format!("spec.webhooks[{i}].name"),
            &w.name,
            MAX_NAME,
            errors,
        );
        webhook_target_bounds(&format!("spec.webhooks[{i}]"), &w.target, errors);
    }
    if let Some(w) = &spec.promotion.webhook {
        webhook_target_bounds("spec.promotion.webhook", w, errors);
    }

    let routes = &spec.notifications;
    max_items(
        "spec.notifications",
        routes.len(),
        MAX_NOTIFICATION_ROUTES,
        errors,
    );
    for (i, r) in routes.iter().enumerate().take(MAX_NOTIFICATION_ROUTES) {
        let field = |f: &str| format!("spec.notifications[{i}].{f}");
        max_len(field("notifier"), &r.notifier, MAX_NAME, errors);
        max_items(field("events"), r.events.len(), MAX_ROUTE_EVENTS, errors);
    }
}

fn validate_steps(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    let steps = &spec.steps;
    let field = "spec.steps";
    if steps.len() < 2 {
        errors.push(err(
            field,
            format!("has {} step(s)", steps.len()),
            "list at least two steps, for example [0, 30, 60]",
        ));
        return;
    }
    if steps[0] != 0 {
        errors.push(err(
            field,
            format!("starts at {}", steps[0]),
            "start with 0, the pre-traffic test step",
        ));
    }
    let guarded = spec.analysis.slo.as_ref().is_some_and(|s| {
        s.max_error_rate.is_some()
            || s.max_latency_ms
                .as_ref()
                .is_some_and(|l| !l.limits().is_empty())
    });
    if steps.contains(&100) && !guarded && !spec.analysis.unguarded_full_load {
        errors.push(err(
            field,
            "holds stage at 100 %, where prod gets no traffic and nothing can be compared, \
             but spec.analysis.slo sets no limit, so a release that breaks only at full load \
             would be promoted",
            "add a guardrail (spec.analysis.slo.maxErrorRate, for example 0.05, or \
             maxLatencyMs), end the steps below 100 (for example [0, 30, 60]: promotion then \
             moves stage to 100 % while prod is updated), or set \
             spec.analysis.unguardedFullLoad: true",
        ));
    }
    if let Some(bad) = steps.iter().find(|&&w| w > 100) {
        errors.push(err(
            field,
            format!("contains {bad}"),
            "use weights between 0 and 100",
        ));
    }
    if let Some(i) = (1..steps.len()).find(|&i| steps[i] <= steps[i - 1]) {
        errors.push(err(
            format!("{field}[{i}]"),
            format!(
                "{} does not exceed the step before it ({})",
                steps[i],
                steps[i - 1]
            ),
            "make the weights strictly increasing",
        ));
    }
}

fn validate_targets(spec: &CanarySpec, namespace: &str, errors: &mut Vec<SpecError>) {
    if spec.prod.host == spec.stage.host {
        errors.push(err(
            "spec.stage.host",
            format!("equals spec.prod.host ({})", spec.prod.host),
            "name the two different hosts the VirtualService routes to",
        ));
    }
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| namespace.to_string());
    if spec.prod.deployment.name == spec.stage.deployment.name
        && ns(&spec.prod.deployment.namespace) == ns(&spec.stage.deployment.namespace)
    {
        errors.push(err(
            "spec.stage.deployment",
            "is the same Deployment as spec.prod.deployment",
            "point stage and prod at their own Deployments (usually the same name in two namespaces)",
        ));
    }
}

fn validate_durations(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    let d = &spec.step_duration;
    if d.max.0.is_zero() {
        errors.push(err(
            "spec.stepDuration.max",
            "is zero",
            "give each step time to decide, for example 30m",
        ));
    }
    if d.min > d.max {
        errors.push(err(
            "spec.stepDuration.min",
            format!("({}) is longer than max ({})", d.min, d.max),
            "make min at most max",
        ));
    }
    if let Some(interval) = spec.analysis.interval {
        if interval.0.as_secs() < 1 {
            errors.push(err(
                "spec.analysis.interval",
                format!("is {interval}"),
                "use at least 1s (Prometheus needs a window to count requests in)",
            ));
        }
    }
    if spec.analysis.no_data.after.0.is_zero() {
        errors.push(err(
            "spec.analysis.noData.after",
            "is zero",
            "allow some time without data, for example 10m",
        ));
    }
    if spec.readiness.timeout.0.is_zero() {
        errors.push(err(
            "spec.readiness.timeout",
            "is zero",
            "give a new revision time to become ready, for example 10m",
        ));
    }
}

fn validate_at_max(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    let p = &spec.analysis.at_max;
    if let Some(x) = p.detectable_ratio {
        if !(x > 1.0 && x <= MAX_RATIO) {
            errors.push(err(
                "spec.analysis.atMax.detectableRatio",
                format!("is {x}"),
                format!("use a rate ratio above 1 and at most {MAX_RATIO}, for example 2"),
            ));
        }
    }
    if !(p.final_alpha >= 0.0 && p.final_alpha < 0.5) {
        errors.push(err(
            "spec.analysis.atMax.finalAlpha",
            format!("is {}", p.final_alpha),
            "use a probability from 0 (no test at the maximum) up to 0.5, for example 0.01",
        ));
    }
    if !(p.beta > 0.0 && p.beta <= 0.5) {
        errors.push(err(
            "spec.analysis.atMax.beta",
            format!("is {}", p.beta),
            "use a probability above 0 and at most 0.5, for example 0.2 (80 % power)",
        ));
    }
    max_duration(
        "spec.analysis.atMax.extendBy".into(),
        p.extend_by,
        MAX_DURATION,
        errors,
    );
}

fn validate_analysis(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    validate_at_max(spec, errors);
    let a = &spec.analysis;
    if !(a.alpha > 0.0 && a.alpha < 0.5) {
        errors.push(err(
            "spec.analysis.alpha",
            format!("is {}", a.alpha),
            "use a probability between 0 and 0.5 (exclusive), for example 0.01",
        ));
    }
    if a.metrics.is_empty() {
        errors.push(err(
            "spec.analysis.metrics",
            "is empty",
            "list at least one metric, or omit the field for the defaults (errors and latency)",
        ));
    }
    let mut names = HashSet::new();
    for (i, m) in a.metrics.iter().enumerate().take(MAX_METRICS) {
        let field = |f: &str| format!("spec.analysis.metrics[{i}].{f}");
        if !names.insert(m.name.as_str()) {
            errors.push(err(
                field("name"),
                format!("\"{}\" is used twice", m.name),
                "give every metric its own name",
            ));
        }
        if m.name.is_empty()
            || !m
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.push(err(
                field("name"),
                format!("\"{}\" is not a simple name", m.name),
                "use letters, digits, '-' and '_' only",
            ));
        }
        if !(m.margin.is_finite() && m.margin > 1.0 && m.margin <= MAX_RATIO) {
            errors.push(err(
                field("margin"),
                format!("is {}", m.margin),
                format!("use a rate ratio above 1 and at most {MAX_RATIO}, for example 1.5 (stage at most 50% worse)"),
            ));
        }
        if !(m.tolerance.is_finite() && m.tolerance >= 1.0 && m.tolerance < m.margin) {
            errors.push(err(
                field("tolerance"),
                format!("is {} with margin {}", m.tolerance, m.margin),
                "use a ratio of at least 1 and below margin (1 rolls back any proven regression)",
            ));
        }
        match m.kind {
            MetricKind::Latency => {
                if m.thresholds_ms.is_empty() {
                    errors.push(err(
                        field("thresholdsMs"),
                        "is empty for a latency metric",
                        "list the latencies (histogram bucket boundaries, ms) a request should stay under, for example [250, 1000]",
                    ));
                }
                if let Some(t) = m
                    .thresholds_ms
                    .iter()
                    .find(|t| !(t.is_finite() && **t > 0.0))
                {
                    errors.push(err(
                        field("thresholdsMs"),
                        format!("contains {t}"),
                        "use positive milliseconds",
                    ));
                }
                if m.thresholds_ms.windows(2).any(|w| w[1] <= w[0]) {
                    errors.push(err(
                        field("thresholdsMs"),
                        "is not strictly increasing",
                        "list each threshold once, smallest first",
                    ));
                }
            }
            MetricKind::ErrorRate => {
                if !m.thresholds_ms.is_empty() {
                    errors.push(err(
                        field("thresholdsMs"),
                        "is set on an errorRate metric",
                        "remove it, or use kind: latency",
                    ));
                }
            }
            MetricKind::Ratio => {
                for (name, q) in [("bad", &m.bad), ("total", &m.total)] {
                    if q.as_deref().is_none_or(|q| q.trim().is_empty()) {
                        errors.push(err(
                            field(name),
                            "is missing for a ratio metric",
                            format!("give the PromQL of the {name} events of one arm, using {{{{ host }}}} and {{{{ window }}}}"),
                        ));
                    }
                }
                if !m.thresholds_ms.is_empty() {
                    errors.push(err(
                        field("thresholdsMs"),
                        "is set on a ratio metric",
                        "remove it; a ratio metric counts its own bad events",
                    ));
                }
            }
        }
        if m.kind != MetricKind::Ratio && (m.bad.is_some() || m.total.is_some()) {
            errors.push(err(
                field("bad"),
                "bad/total are set on a built-in metric kind",
                "remove them, or use kind: ratio",
            ));
        }
    }
    if let Some(slo) = &a.slo {
        if let Some(r) = slo.max_error_rate {
            if !(r.is_finite() && r > 0.0 && r < 1.0) {
                errors.push(err(
                    "spec.analysis.slo.maxErrorRate",
                    format!("is {r}"),
                    "use a fraction between 0 and 1, for example 0.01",
                ));
            }
        }
        if let Some(q) = &slo.max_latency_ms {
            for (quantile, ms) in q.limits() {
                if !(ms.is_finite() && ms > 0.0) {
                    errors.push(err(
                        format!(
                            "spec.analysis.slo.maxLatencyMs.p{}",
                            (quantile * 100.0).round()
                        ),
                        format!("is {ms}"),
                        "use positive milliseconds",
                    ));
                }
            }
        }
    }
}

fn validate_url(field: String, url: &str, errors: &mut Vec<SpecError>) {
    let concrete = url.replace("{{ host }}", "host.invalid");
    match url::Url::parse(&concrete) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => errors.push(err(
            field,
            format!("uses the scheme {}", u.scheme()),
            "use an http:// or https:// URL",
        )),
        Err(e) => errors.push(err(
            field,
            format!("\"{url}\" is not a URL ({e})"),
            "write a full URL such as http://{{ host }}/health",
        )),
    }
}

fn validate_checks_and_webhooks(spec: &CanarySpec, errors: &mut Vec<SpecError>) {
    let mut names = HashSet::new();
    for (i, c) in spec.checks.iter().enumerate().take(MAX_CHECKS) {
        let field = |f: &str| format!("spec.checks[{i}].{f}");
        if !names.insert(c.name.as_str()) {
            errors.push(err(
                field("name"),
                format!("\"{}\" is used twice", c.name),
                "give every check its own name",
            ));
        }
        validate_url(field("url"), &c.url, errors);
        if !CHECK_METHODS.contains(&c.method.as_str()) {
            errors.push(err(
                field("method"),
                format!("\"{}\" is not a method a check may use", c.method),
                format!("use one of {}", CHECK_METHODS.join(", ")),
            ));
        }
        if c.timeout.0.is_zero() {
            errors.push(err(field("timeout"), "is zero", "use a timeout such as 5s"));
        }
        if c.count == 0 {
            errors.push(err(field("count"), "is 0", "send at least one request"));
        }
    }
    let mut names = HashSet::new();
    for (i, w) in spec.webhooks.iter().enumerate().take(MAX_WEBHOOKS) {
        let field = |f: &str| format!("spec.webhooks[{i}].{f}");
        if !names.insert(w.name.as_str()) {
            errors.push(err(
                field("name"),
                format!("\"{}\" is used twice", w.name),
                "give every webhook its own name",
            ));
        }
        validate_url(field("url"), &w.target.url, errors);
    }
    match (&spec.promotion.mode, &spec.promotion.webhook) {
        (PromotionMode::Webhook, None) => errors.push(err(
            "spec.promotion.webhook",
            "is missing with mode webhook",
            "give the URL of the pipeline that updates prod, or use mode images",
        )),
        (PromotionMode::Webhook, Some(w)) => {
            validate_url("spec.promotion.webhook.url".into(), &w.url, errors)
        }
        (mode, Some(_)) => errors.push(err(
            "spec.promotion.webhook",
            format!("is set but mode is {mode:?}"),
            "remove it, or set mode: webhook",
        )),
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::*;
    use crate::duration::HumanDuration;
    use crate::limits::MAX_CHECKS;

    pub(crate) fn seed_spec() -> CanarySpec {
        serde_yaml_ng::from_str(
            r#"
virtualService: {name: demoapp, namespace: prod}
prod:  {host: flaskapp.prod.svc.cluster.local,  deployment: {namespace: prod,  name: flaskapp}}
stage: {host: flaskapp.stage.svc.cluster.local, deployment: {namespace: stage, name: flaskapp}}
"#,
        )
        .unwrap()
    }

    fn fields(spec: &CanarySpec) -> Vec<String> {
        validate(spec, "prod")
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn the_seed_canary_with_defaults_is_valid() {
        let spec = seed_spec();
        assert_eq!(spec.steps, vec![0, 30, 60]);
        assert_eq!(validate(&spec, "prod"), Ok(()));
    }

    #[test]
    fn steps_must_start_at_zero_and_increase() {
        let mut spec = seed_spec();
        spec.steps = vec![10, 50, 50, 90];
        let errors = validate(&spec, "prod").unwrap_err();
        let text = describe(&errors);
        assert!(text.contains("spec.steps: starts at 10"), "{text}");
        assert!(text.contains("spec.steps[2]: 50 does not exceed"), "{text}");
        spec.steps = vec![0];
        assert_eq!(fields(&spec), vec!["spec.steps"]);
        spec.steps = vec![0, 150];
        assert!(fields(&spec).contains(&"spec.steps".to_string()));
    }

    #[test]
    fn a_step_at_100_needs_a_guardrail_or_an_explicit_opt_out() {
        let mut spec = seed_spec();
        spec.steps = vec![0, 30, 60, 100];
        let text = describe(&validate(&spec, "prod").unwrap_err());
        assert!(
            text.contains("spec.steps: holds stage at 100 %")
                && text.contains("spec.analysis.slo.maxErrorRate")
                && text.contains("unguardedFullLoad: true"),
            "{text}"
        );
        spec.analysis.slo = Some(SloSpec {
            max_latency_ms: Some(LatencyQuantiles::default()),
            ..SloSpec::default()
        });
        assert_eq!(
            fields(&spec),
            vec!["spec.steps"],
            "an SLO without a limit guards nothing"
        );
        spec.analysis.slo = Some(SloSpec {
            max_error_rate: Some(0.05),
            ..SloSpec::default()
        });
        assert_eq!(validate(&spec, "prod"), Ok(()));
        spec.analysis.slo = None;
        spec.analysis.unguarded_full_load = true;
        assert_eq!(validate(&spec, "prod"), Ok(()));
    }

    #[test]
    fn the_at_max_policy_is_checked_with_the_fix() {
        let mut spec = seed_spec();
        spec.analysis.at_max.detectable_ratio = Some(1.0);
        spec.analysis.at_max.beta = 0.7;
        let text = describe(&validate(&spec, "prod").unwrap_err());
        assert!(
            text.contains("spec.analysis.atMax.detectableRatio: is 1; use a rate ratio above 1")
                && text.contains("spec.analysis.atMax.beta: is 0.7; use a probability"),
            "{text}"
        );
    }

    #[test]
    fn alpha_margin_and_durations_are_checked_with_the_fix() {
        let mut spec = seed_spec();
        spec.analysis.alpha = 0.5;
        spec.analysis.metrics[0].margin = 1.0;
        spec.step_duration.min = HumanDuration::from_secs(3600);
        let errors = validate(&spec, "prod").unwrap_err();
        let text = describe(&errors);
        assert!(text.contains("spec.analysis.alpha: is 0.5; use a probability"));
        assert!(text.contains("spec.analysis.metrics[0].margin: is 1; use a rate ratio above 1"));
        assert!(text.contains("spec.stepDuration.min: (1h) is longer than max (30m)"));
    }

    #[test]
    fn the_readiness_deadline_defaults_to_10m_rollback_and_must_not_be_zero() {
        let mut spec = seed_spec();
        assert_eq!(spec.readiness.timeout, HumanDuration::from_secs(600));
        assert_eq!(spec.readiness.action, ReadinessAction::Rollback);
        let written: CanarySpec = serde_yaml_ng::from_str(
            "virtualService: {name: vs}\nprod: {host: p, deployment: {name: a}}\n\
             stage: {host: s, deployment: {name: b}}\nreadiness: {timeout: 90s, action: pause}",
        )
        .unwrap();
        assert_eq!(written.readiness.timeout, HumanDuration::from_secs(90));
        assert_eq!(written.readiness.action, ReadinessAction::Pause);
        spec.readiness.timeout = HumanDuration::from_secs(0);
        let text = describe(&validate(&spec, "prod").unwrap_err());
        assert_eq!(
            text,
            "spec.readiness.timeout: is zero; give a new revision time to become ready, for \
             example 10m"
        );
    }

    #[test]
    fn metric_kinds_need_their_own_fields() {
        let mut spec = seed_spec();
        spec.analysis.metrics[1].thresholds_ms.clear();
        spec.analysis.metrics.push(MetricSpec {
            name: "custom".into(),
            kind: MetricKind::Ratio,
            margin: 1.2,
            tolerance: 1.0,
            thresholds_ms: vec![],
            bad: None,
            total: Some("sum(x)".into()),
        });
        assert_eq!(
            fields(&spec),
            vec![
                "spec.analysis.metrics[1].thresholdsMs",
                "spec.analysis.metrics[2].bad"
            ]
        );
    }

    #[test]
    fn same_environment_twice_is_rejected() {
        let mut spec = seed_spec();
        spec.stage = spec.prod.clone();
        assert_eq!(
            fields(&spec),
            vec!["spec.stage.host", "spec.stage.deployment"]
        );
    }

    #[test]
    fn check_urls_and_promotion_webhook_are_checked() {
        let mut spec = seed_spec();
        spec.checks.push(CheckSpec {
            name: "smoke".into(),
            url: "ftp://{{ host }}/x".into(),
            method: "FETCH".into(),
            expect_status: 200,
            body_contains: None,
            count: 1,
            timeout: HumanDuration::from_secs(5),
            every_step: false,
        });
        spec.promotion.mode = PromotionMode::Webhook;
        assert_eq!(
            fields(&spec),
            vec![
                "spec.checks[0].url",
                "spec.checks[0].method",
                "spec.promotion.webhook"
            ]
        );
    }

    fn check(i: usize) -> CheckSpec {
        CheckSpec {
            name: format!("check-{i}"),
            url: "http://{{ host }}/health".into(),
            method: "GET".into(),
            expect_status: 200,
            body_contains: None,
            count: 1,
            timeout: HumanDuration::from_secs(5),
            every_step: false,
        }
    }

    #[test]
    fn ten_thousand_checks_are_refused_naming_the_field_and_the_bound() {
        let mut spec = seed_spec();
        spec.checks = (0..10_000).map(check).collect();
        let errors = validate(&spec, "prod").unwrap_err();
        assert_eq!(
            describe(&errors),
            "spec.checks: has 10000 items, more than the 20 allowed; list at most 20"
        );
        spec.checks.truncate(MAX_CHECKS);
        assert_eq!(validate(&spec, "prod"), Ok(()));
    }

    #[test]
    fn every_list_text_and_number_an_author_writes_is_bounded() {
        let mut spec = seed_spec();
        spec.prod.host = format!("{}.example.com", "a".repeat(250));
        spec.stage.deployment.namespace = Some("n".repeat(64));
        spec.steps = (0..=21).map(|i| (i * 100 / 21) as u8).collect();
        let mut c = check(0);
        c.url = format!("http://{{{{ host }}}}/{}", "p".repeat(2048));
        c.count = 101;
        c.method = "PUT".into();
        c.timeout = HumanDuration::from_secs(61);
        c.body_contains = Some("b".repeat(1025));
        spec.checks.push(c);
        spec.analysis.metrics[0].margin = 17.0;
        spec.analysis.metrics[1].thresholds_ms = (1..=9).map(|i| i as f64 * 100.0).collect();
        spec.analysis.slo = Some(SloSpec {
            max_error_rate: Some(0.01),
            max_latency_ms: Some(LatencyQuantiles {
                p50: Some(100.0),
                p90: Some(200.0),
                p95: Some(300.0),
                p99: Some(4_000_000.0),
            }),
        });
        spec.webhooks.push(WebhookSpec {
            name: "w".repeat(64),
            kind: WebhookKind::PreRollout,
            target: WebhookTarget {
                url: "http://hooks.example.com/go".into(),
                timeout: HumanDuration::from_secs(301),
                secret_ref: None,
            },
        });
        spec.notifications = (0..11)
            .map(|i| NotificationRoute {
                notifier: format!("n{i}"),
                events: default_notification_events(),
            })
            .collect();
        let text = describe(&validate(&spec, "prod").unwrap_err());
        for expected in [
            "spec.prod.host: is 262 characters long, more than the 253 allowed",
            "spec.stage.deployment.namespace: is 64 characters long, more than the 63 allowed",
            "spec.steps: has 22 items, more than the 20 allowed",
            "spec.analysis.metrics[0].margin: is 17; use a rate ratio above 1 and at most 16",
            "spec.analysis.metrics[1].thresholdsMs: has 9 items, more than the 8 allowed",
            "spec.analysis.slo.maxLatencyMs.p99: is 4000000, more than the 3600000 ms allowed",
            "spec.analysis.metrics: compare 15 series",
            "more than the 10 allowed",
            "spec.checks[0].url: is 2066 characters long, more than the 2048 allowed",
            "spec.checks[0].bodyContains: is 1025 characters long, more than the 1024 allowed",
            "spec.checks[0].count: is 101, more than the 100 allowed",
            "spec.checks[0].method: \"PUT\" is not a method a check may use; use one of GET, HEAD, POST",
            "spec.checks[0].timeout: is 1m 1s, longer than the 1m allowed",
            "spec.webhooks[0].name: is 64 characters long, more than the 63 allowed",
            "spec.webhooks[0].timeout: is 5m 1s, longer than the 5m allowed",
            "spec.notifications: has 11 items, more than the 10 allowed",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
    }

    #[test]
    fn unknown_spec_fields_are_rejected_by_name() {
        let err = serde_yaml_ng::from_str::<CanarySpec>(
            r#"
virtualService: {name: demoapp}
prod:  {host: a, deployment: {name: a}}
stage: {host: b, deployment: {name: b}}
stepDuraton: {min: 1m}
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `stepDuraton`"), "{err}");
    }
}

//! Explanation: the plain-words reason of a look, shown in the status message, Events and
//! `canaryd analyze --explain`. The look's overall verdict is settled here too, from the
//! per-series reports and where the step is, because each verdict comes from the same branch
//! as the words that justify it.

use std::time::Duration;

use super::evaluate::{LookContext, Restart};
use super::series::{SeriesSpec, Source};
use crate::api::{MetricReport, Verdict};

/// The look's verdict and reason, followed by notes on how its inputs were read (evidence
/// restarted by a spec change, a latency threshold counted at another bucket boundary), which
/// hold whatever the verdict.
pub(super) fn decide(
    series: &[SeriesSpec],
    reports: &[MetricReport],
    restarted: &[Restart],
    ctx: &LookContext,
    live: bool,
    stage_has_data: bool,
) -> (Verdict, String) {
    let (verdict, mut reason) = judge(series, reports, ctx, live, stage_has_data);
    for r in restarted {
        reason.push_str(&match r {
            Restart::Rollout(name) => format!(
                " (the spec of {name} changed during the rollout; its evidence restarted, with a \
                 smaller share of alpha)"
            ),
            Restart::Step(name) => format!(
                " (the margin of {name} changed; this step's evidence restarted, the rollout's \
                 is kept)"
            ),
        });
    }
    for (s, r) in series.iter().zip(reports) {
        if let (Source::Latency { threshold_ms }, Some(b)) = (&s.source, r.boundary_ms) {
            if b != *threshold_ms {
                reason.push_str(&format!(
                    " ({} ms is not a histogram bucket boundary; {} counts requests slower than {b} ms)",
                    threshold_ms, s.name
                ));
            }
        }
    }
    (verdict, reason)
}

fn judge(
    series: &[SeriesSpec],
    reports: &[MetricReport],
    ctx: &LookContext,
    live: bool,
    stage_has_data: bool,
) -> (Verdict, String) {
    if !live {
        return (
            Verdict::Continue,
            "stage gets no live traffic at 0 %; the synthetic checks decide this step".into(),
        );
    }
    let worse: Vec<String> = series
        .iter()
        .zip(reports)
        .filter(|(_, r)| r.verdict == Verdict::Rollback)
        .map(|(s, r)| describe_rollback(s, r))
        .collect();
    if !worse.is_empty() {
        return (Verdict::Rollback, worse.join("; "));
    }
    if ctx.stage_weight >= 100 {
        return (
            Verdict::Continue,
            "prod gets no traffic at 100 %, so stage cannot be compared with it; only the SLO guardrails can still roll back".into(),
        );
    }
    if !stage_has_data {
        return (
            Verdict::Continue,
            "stage had no requests in this look; waiting for traffic".into(),
        );
    }
    let compared: Vec<(&SeriesSpec, &MetricReport)> = series
        .iter()
        .zip(reports)
        .filter(|(s, _)| !s.source.is_guardrail())
        .collect();
    let pending: Vec<String> = compared
        .iter()
        .filter(|(_, r)| r.verdict != Verdict::Advance)
        .map(|(s, r)| match r.ratio_upper {
            Some(u) => format!(
                "{} could still be up to {} times prod's rate (advance needs below {})",
                s.name,
                round2(u),
                round2(s.margin)
            ),
            None => format!(
                "{} has too few bad events to bound its ratio ({} in stage, {} in prod)",
                s.name,
                rate_text(r.stage_rate, r.stage_requests),
                rate_text(r.prod_rate, r.prod_requests)
            ),
        })
        .collect();
    if !pending.is_empty() || compared.is_empty() {
        let what = if compared.is_empty() {
            "no metric compares stage with prod".to_string()
        } else {
            pending.join("; ")
        };
        return (
            Verdict::Continue,
            format!("not known yet: no metric shows stage worse, but {what}"),
        );
    }
    let proven: Vec<String> = compared
        .iter()
        .map(|(s, r)| {
            format!(
                "{} at most {} times prod's rate",
                s.name,
                round2(r.ratio_upper.unwrap_or(f64::INFINITY))
            )
        })
        .collect();
    if ctx.elapsed_in_step < ctx.min_duration {
        let left = ctx.min_duration - ctx.elapsed_in_step;
        return (
            Verdict::Continue,
            format!(
                "stage is proven not worse than prod within the margins ({}); advancing once the step has lasted its minimum ({} left)",
                proven.join(", "),
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ),
        );
    }
    (
        Verdict::Advance,
        format!(
            "stage is proven not worse than prod within the margins: {}",
            proven.join(", ")
        ),
    )
}

fn describe_rollback(s: &SeriesSpec, r: &MetricReport) -> String {
    let evidence = format!(
        "evidence {} reached the rollback threshold {}",
        round2(r.e_value),
        round2(r.rollback_threshold)
    );
    match s.source {
        Source::SloErrors | Source::SloLatency { .. } => format!(
            "stage breaks the guardrail {}: {} are bad, the limit is {} % ({evidence})",
            s.name,
            rate_text(r.stage_rate, r.stage_requests),
            round2(s.tolerance * 100.0)
        ),
        _ => format!(
            "stage is worse than prod on {}: {} vs {} in prod, ratio at least {} ({evidence})",
            s.name,
            rate_text(r.stage_rate, r.stage_requests),
            rate_text(r.prod_rate, r.prod_requests),
            round2(r.ratio_lower)
        ),
    }
}

fn rate_text(rate: Option<f64>, requests: u64) -> String {
    match rate {
        Some(p) => format!("{} % of {requests} requests", round2(p * 100.0)),
        None => "no requests".into(),
    }
}

fn round2(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 100.0).round() / 100.0
    }
}

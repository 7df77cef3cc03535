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
                    threshold_ms,
                    s.name.split('@').next().unwrap_or(&s.name)
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
                "{} could still be up to {}x prod's rate (advance needs at most {}x)",
                label(s),
                sig2(u),
                sig2(s.margin)
            ),
            None => format!(
                "{} has too few bad events to bound its ratio ({} in stage, {} in prod)",
                label(s),
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
                "{} at most {}x prod's rate",
                label(s),
                sig2(r.ratio_upper.unwrap_or(f64::INFINITY))
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
        "evidence {}, rollback at {}",
        power_of_ten(r.e_value),
        power_of_ten(r.rollback_threshold)
    );
    match s.source {
        Source::SloErrors | Source::SloLatency { .. } => format!(
            "stage breaks the guardrail {}: {} are bad, the limit is {} % ({evidence})",
            label(s),
            rate_text(r.stage_rate, r.stage_requests),
            sig2(s.tolerance * 100.0)
        ),
        _ => format!(
            "stage is worse than prod on {}: {} vs {} in prod, at least {}x prod's rate ({evidence})",
            label(s),
            rate_text(r.stage_rate, r.stage_requests),
            rate_text(r.prod_rate, r.prod_requests),
            sig2(r.ratio_lower)
        ),
    }
}

/// Why a latency rollback came mostly from the shift part of its test: " (latency: the
/// evidence is mostly in requests slower than 100 ms, stage 9.1 % vs prod 6.2 %)".
pub(super) fn shift_note(
    name: &str,
    boundary_ms: Option<f64>,
    stage_rate: Option<f64>,
    prod_rate: Option<f64>,
) -> String {
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{} %", sig2(r * 100.0)));
    let metric = name.split_once('@').map_or(name, |(m, _)| m);
    let at = boundary_ms.map_or("a lower boundary".to_string(), |b| {
        format!("{} ms", sig_ms(b))
    });
    format!(
        " ({metric}: the evidence is mostly in requests slower than {at}, stage {} vs prod {}: \
         the whole distribution moved, not only the tail)",
        pct(stage_rate),
        pct(prod_rate)
    )
}

/// A series name in words: `latency@250` is `latency (slower than 250 ms)`.
pub fn series_words(name: &str) -> String {
    match name.split_once('@') {
        Some((metric, ms)) => format!("{metric} (slower than {ms} ms)"),
        None => name.to_string(),
    }
}

/// How a series is named in words: `latency (slower than 250 ms)` for `latency@250`,
/// `slo.maxLatencyMs.p99 (1000 ms)` for `slo:p99`.
fn label(s: &SeriesSpec) -> String {
    match s.source {
        Source::Latency { .. } => series_words(&s.name),
        Source::SloErrors => "slo.maxErrorRate".into(),
        Source::SloLatency { limit_ms } => format!(
            "slo.maxLatencyMs.{} ({} ms)",
            s.name.trim_start_matches("slo:"),
            sig_ms(limit_ms)
        ),
        _ => s.name.clone(),
    }
}

/// One metric's report on one line, as the status's `lastDecision.summary`, `canaryd status`
/// and notifications show it: `errors: continue · stage 0.51 % of 12,000 requests, prod 0.5 %
/// of 28,000 · evidence 10^-1.8 of 10^2.5 to roll back · stage/prod 0.35 to 1.7 (advance
/// below 1.5)`.
pub fn report_line(m: &MetricReport) -> String {
    let bounds = format!(
        "{} to {}",
        sig2(m.ratio_lower),
        m.ratio_upper.map_or("unbounded".to_string(), sig2)
    );
    let against = if m.name.starts_with("slo:") {
        format!("stage's rate / limit {bounds}")
    } else {
        format!("stage/prod {bounds} (advance below {})", sig2(m.margin))
    };
    let prod = match m.prod_rate {
        Some(p) => format!("{} % of {}", sig2(p * 100.0), thousands(m.prod_requests)),
        None => "no requests".into(),
    };
    let rates = if m.name.starts_with("slo:") {
        format!("stage {}", rate_text(m.stage_rate, m.stage_requests))
    } else {
        format!(
            "stage {}, prod {prod}",
            rate_text(m.stage_rate, m.stage_requests)
        )
    };
    format!(
        "{}: {} · {rates} · evidence {} of {} to roll back · {against}",
        series_words(&m.name),
        m.verdict.as_str(),
        power_of_ten(m.e_value),
        power_of_ten(m.rollback_threshold),
    )
}

fn rate_text(rate: Option<f64>, requests: u64) -> String {
    match rate {
        Some(p) => format!("{} % of {} requests", sig2(p * 100.0), thousands(requests)),
        None => "no requests".into(),
    }
}

/// Two significant digits (whole numbers from 100 on): 28, 1.7, 0.087, 130.
pub fn sig2(x: f64) -> String {
    if !x.is_finite() {
        return "unbounded".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() >= 100.0 {
        return format!("{}", x.round());
    }
    let digits = (1 - x.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{x:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A bucket boundary in milliseconds as written: 250, 0.5.
fn sig_ms(ms: f64) -> String {
    format!("{ms}")
}

/// Evidence in powers of ten, with one decimal: 10^6.9.
pub fn power_of_ten(x: f64) -> String {
    format!("10^{:.1}", x.max(f64::MIN_POSITIVE).log10())
}

/// 13079 -> 13,079.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        let cases = [
            (27.59, "28"),
            (1.68, "1.7"),
            (1.5, "1.5"),
            (2.0, "2"),
            (0.0874, "0.087"),
            (0.004, "0.004"),
            (130.4, "130"),
            (16.0, "16"),
        ];
        for (x, text) in cases {
            assert_eq!(sig2(x), text, "{x}");
        }
        assert_eq!(sig2(f64::INFINITY), "unbounded");
        assert_eq!(thousands(13079), "13,079");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(power_of_ten(8_617_478.0), "10^6.9");
        assert_eq!(power_of_ten(200.0), "10^2.3");
    }
}

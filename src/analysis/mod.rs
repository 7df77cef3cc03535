//! Pure statistics: decides from per-request counts of stage and prod whether stage is worse
//! (roll back), proven not worse within a margin (advance), or not yet known (continue).
//! No I/O, no clock: time and data come in as arguments, the state as a value.
//!
//! # The test (docs/architecture.md, section 4)
//!
//! Every metric is a rate of bad requests (5xx; slower than a latency threshold; a custom
//! bad/total pair). In look i, with n_s, n_p requests and b_s, b_p bad events, let
//! pi_i = n_s / (n_s + n_p) be stage's share. Modelling bad events as Poisson thinning of
//! the requests, given m_i = b_s + b_p the stage count is Binomial(m_i, q_i(r)) with
//! q_i(r) = r pi_i / (r pi_i + 1 - pi_i), where r is the stage/prod rate ratio. This holds
//! however the common rate drifts in time (diurnal load, bursts that hit both arms) and
//! whatever the allocation, which is why one likelihood can run across all steps.
//!
//! We keep ln L(r) = sum_i [b_s,i ln r - m_i ln(1 + pi_i (r - 1))] at a fixed grid of ratios:
//! 2^(k/4) for k = -8..=16 (0.25 to 16, four points per doubling, so any true ratio is within
//! 9 % of a grid point) plus the metric's `tolerance` r0 and `margin` inserted exactly. With
//! time-varying pi_i there is no conjugate prior, so the mixture is this discrete grid. Its
//! weights follow a normal density on ln r centred at r = 1 with standard deviation ln 2 (a
//! normal prior on the log rate ratio, the usual mixing choice for these e-values),
//! renormalised over the points on the alternative side of each test: most mass on the effects that matter (0.5x to 2x,
//! where evidence is slow to come), little on 16x, which any mixture detects at once. The
//! state of a series is these ~27 numbers (twice, see below) and four counters.
//!
//! * **Rollback**: M_t = sum over r_j > r0 of w_j L_t(r_j) / L_t(r0). For any true r <= r0 each
//!   look's factor has conditional expectation (q q_j/q0 + (1-q)(1-q_j)/(1-q0))^m <= 1, so M is
//!   a test supermartingale for the whole composite null (b_s given m is in fact
//!   hypergeometric; it is dominated by the binomial in convex order, Hoeffding 1963, so the
//!   bound still holds), and by Ville's inequality
//!   P(sup_t M_t >= 1/a) <= a (Lindon, Sanden, Shirikian, KDD 2022, arXiv 2205.14762; with a
//!   constant allocation it is the Beta/Dirichlet-multinomial mixture of Lindon & Malek,
//!   NeurIPS 2022, arXiv 2011.03567, with a discrete prior; a unit test checks the closed form).
//! * **Advance**: the same construction against "r >= x" (mixing over grid ratios below x),
//!   inverted into a confidence sequence (Howard et al., arXiv 1810.08240). The upper bound is
//!   the smallest grid ratio from which every test rejects; a metric passes when it is at or
//!   below `margin`. Advance needs every compared metric to pass, the minimum duration,
//!   stage traffic in the look, a weight strictly between 0 and 100, and no guardrail firing.
//! * **Bonferroni**: with K series (one per errorRate/ratio metric, one per latency threshold,
//!   one per SLO guardrail) every test uses the threshold K / alpha.
//!
//! # What is carried across steps, and the alpha accounting
//!
//! The lifecycle keeps [`AnalysisState`] for the whole rollout. For each compared series the
//! engine keeps two likelihoods: one over the whole rollout and one since the current step
//! started. The rollback e-value is E_t = 1/2 M_t(rollout) + c_k M_t(step k) with
//! c_k = 1 / (2 k (k + 1)) for step index k >= 1. Each M is a test supermartingale started at
//! a stopping time (the step's start; 1 before it), the weights of all processes that could
//! ever start sum to at most 1, and dropping the processes of finished steps only lowers E,
//! so E_t is bounded by a test supermartingale and P(false rollback over the whole rollout,
//! all looks, all steps) <= K * alpha / K = alpha. The rollout-wide part accumulates evidence
//! across steps (allocation changes are handled by the conditional binomial); the step part
//! catches a release that only degrades at a higher weight, whose earlier healthy evidence
//! would otherwise mask it. Steps are expected to only move forward within a rollout.
//! The advance confidence sequence uses the rollout-wide likelihood: the probability of ever
//! advancing a metric whose constant ratio is at or above its margin is at most alpha / K.
//!
//! A look at weight 0 is not folded (no live traffic; the checks decide). At weight 100 prod
//! gets no requests, so pi = 1 and the comparative likelihood does not move by construction;
//! only the guardrails can decide, and never towards advance.
//!
//! # Guardrails
//!
//! `slo.maxErrorRate` p0 and `slo.maxLatencyMs.pXX` (at most 1 - XX % of requests slower than
//! the limit) are tested on stage alone with the Bernoulli mixture e-process over
//! p_j = p0 2^(j/4), a test supermartingale for any drifting rate at or below p0. They can
//! only roll back (the lifecycle has nothing to compare at 100 %; an advance still needs the
//! comparisons). A latency limit that is not a bucket boundary is tested at the next boundary
//! above it, which never overstates the slow requests. Their evidence uses stage's totals over
//! the whole rollout, so it holds across steps too.
//!
//! # What it cannot do
//!
//! Proving "at most `margin` times prod" takes bad events: with none in either arm the bounds
//! stay open and the step waits, whatever the traffic. At a few requests per second, or a
//! base rate of 0.1 %, a 30-minute step rarely collects enough (BENCHMARKS.md: such healthy
//! rollouts reach the step's maximum and wait for a person). Rollback needs evidence too, but
//! a real regression produces it.

pub mod counts;
mod eprocess;
mod histogram;

use std::time::Duration;

pub use counts::{ArmCounts, Bucket, LookCounts, RatioCounts};

use crate::api::{
    AnalysisSpec, AnalysisState, LatencyEstimate, MetricKind, MetricReport, SeriesState, Verdict,
};
use eprocess::Grid;

/// Where the rollout is when a look is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookContext {
    /// Index into `spec.steps`.
    pub step: u32,
    pub stage_weight: u8,
    pub elapsed_in_step: Duration,
    pub min_duration: Duration,
}

/// The state after one look, the verdict and the statistics behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct LookOutcome {
    pub state: AnalysisState,
    pub verdict: Verdict,
    /// Plain words, for the status message, Events and `canaryd analyze --explain`.
    pub reason: String,
    pub metrics: Vec<MetricReport>,
    /// Whether stage had requests in this look (the lifecycle's noData policy).
    pub stage_has_data: bool,
}

/// Input that cannot be a count of requests. Each names the look (1-based, counting the
/// looks of the rollout) and the field, so the telemetry query behind it can be found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    #[error("look {look}: {field} is {value}; a window's increment cannot be negative: did a counter go down (a reset)? Count the window from the restarted counter")]
    CounterWentDown {
        look: u32,
        field: String,
        value: f64,
    },
    #[error("look {look}: {field} is {value}; counts must be finite and not negative")]
    InvalidCount {
        look: u32,
        field: String,
        value: f64,
    },
    #[error("look {look}: {field} is {bad}, more than {total_field} ({total})")]
    MoreBadThanTotal {
        look: u32,
        field: String,
        bad: f64,
        total_field: String,
        total: f64,
    },
    #[error("look {look}: {field}: buckets are not cumulative: le={le} counts {count}, less than {previous} before it (or boundaries out of order)")]
    NotCumulative {
        look: u32,
        field: String,
        le: f64,
        count: f64,
        previous: f64,
    },
    #[error("look {look}: {field}: the last bucket must be le=\"+Inf\"")]
    NoInfBucket { look: u32, field: String },
    #[error("look {look}: {field}: the +Inf bucket counts {inf} requests but {requests_field} is {requests}; both must come from the same histogram")]
    InfMismatch {
        look: u32,
        field: String,
        inf: f64,
        requests_field: String,
        requests: f64,
    },
    #[error("look {look}: {field} is missing; ratio metric \"{metric}\" needs bad and total counts for both arms")]
    MissingRatio {
        look: u32,
        field: String,
        metric: String,
    },
    #[error("look {look}: {field} is missing; \"{metric}\" needs the latency histogram of an arm with requests")]
    MissingBuckets {
        look: u32,
        field: String,
        metric: String,
    },
    #[error("look {look}: {field} has no bucket boundary at or below {threshold_ms} ms, needed by \"{metric}\"; lower the threshold or add buckets")]
    NoBoundary {
        look: u32,
        field: String,
        metric: String,
        threshold_ms: f64,
    },
}

/// The series a spec compares, in a fixed order.
struct SeriesSpec<'a> {
    name: String,
    source: Source<'a>,
    /// Comparative: (tolerance, margin). Guardrail: (limit on the stage rate, unused).
    tolerance: f64,
    margin: f64,
}

enum Source<'a> {
    Errors,
    Latency { threshold_ms: f64 },
    Ratio { metric: &'a str },
    SloErrors,
    SloLatency { limit_ms: f64 },
}

impl Source<'_> {
    fn is_guardrail(&self) -> bool {
        matches!(self, Source::SloErrors | Source::SloLatency { .. })
    }
}

fn series_of(spec: &AnalysisSpec) -> Vec<SeriesSpec<'_>> {
    let mut out = Vec::new();
    for m in &spec.metrics {
        let mut push = |name: String, source| {
            out.push(SeriesSpec {
                name,
                source,
                tolerance: m.tolerance,
                margin: m.margin,
            })
        };
        match m.kind {
            MetricKind::ErrorRate => push(m.name.clone(), Source::Errors),
            MetricKind::Ratio => push(m.name.clone(), Source::Ratio { metric: &m.name }),
            MetricKind::Latency => {
                for &t in &m.thresholds_ms {
                    push(
                        format!("{}@{t}", m.name),
                        Source::Latency { threshold_ms: t },
                    );
                }
            }
        }
    }
    if let Some(slo) = &spec.slo {
        if let Some(limit) = slo.max_error_rate {
            out.push(SeriesSpec {
                name: "slo:maxErrorRate".into(),
                source: Source::SloErrors,
                tolerance: limit,
                margin: limit,
            });
        }
        for (quantile, limit_ms) in slo.max_latency_ms.iter().flat_map(|l| l.limits()) {
            out.push(SeriesSpec {
                name: format!("slo:p{}", (quantile * 100.0).round()),
                source: Source::SloLatency { limit_ms },
                tolerance: 1.0 - quantile,
                margin: 1.0 - quantile,
            });
        }
    }
    out
}

/// Integer counts of one series in one look.
#[derive(Clone, Copy, Default)]
struct SeriesCounts {
    stage_requests: f64,
    stage_bad: f64,
    prod_requests: f64,
    prod_bad: f64,
    boundary_ms: Option<f64>,
}

/// Folds one look (counts of this window only) into the state and decides.
pub fn evaluate_look(
    spec: &AnalysisSpec,
    state: &AnalysisState,
    counts: &LookCounts,
    ctx: &LookContext,
) -> Result<LookOutcome, AnalysisError> {
    let look = state.looks + 1;
    validate_arm(look, "stage", &counts.stage)?;
    validate_arm(look, "prod", &counts.prod)?;
    let series = series_of(spec);
    let mut per_series = Vec::with_capacity(series.len());
    for s in &series {
        per_series.push(series_counts(look, s, counts)?);
    }

    let k = series.len().max(1) as f64;
    let log_threshold = (k / spec.alpha).ln();
    let live = ctx.stage_weight > 0;
    let stage_has_data = counts.stage.requests.round() > 0.0;
    let step_weight_ln = (0.5 / (ctx.step.max(1) as f64 * (ctx.step.max(1) as f64 + 1.0))).ln();

    let mut next = AnalysisState {
        looks: look,
        window_end: state.window_end,
        series: Vec::with_capacity(series.len()),
    };
    let mut reports = Vec::with_capacity(series.len());
    let mut restarted = Vec::new();
    for (s, c) in series.iter().zip(&per_series) {
        let guardrail = s.source.is_guardrail();
        let grid = (!guardrail).then(|| Grid::new(s.tolerance, s.margin));
        let glen = grid.map_or(0, |g| g.len());
        let mut st = match state.series.iter().find(|x| x.name == s.name) {
            Some(old)
                if old.tolerance == s.tolerance
                    && old.margin == s.margin
                    && old.log_likelihood.len() == glen =>
            {
                old.clone()
            }
            found => {
                if found.is_some() {
                    restarted.push(s.name.as_str());
                }
                SeriesState {
                    name: s.name.clone(),
                    tolerance: s.tolerance,
                    margin: s.margin,
                    log_likelihood: vec![0.0; glen],
                    step: ctx.step,
                    step_log_likelihood: vec![0.0; glen],
                    ..SeriesState::default()
                }
            }
        };
        if st.step != ctx.step {
            st.step = ctx.step;
            st.step_log_likelihood.iter_mut().for_each(|x| *x = 0.0);
        }
        if live {
            st.stage_requests += c.stage_requests as u64;
            st.stage_bad += c.stage_bad as u64;
            st.prod_requests += c.prod_requests as u64;
            st.prod_bad += c.prod_bad as u64;
            if let Some(g) = &grid {
                let total = c.stage_requests + c.prod_requests;
                if total > 0.0 {
                    let pi = c.stage_requests / total;
                    g.fold(&mut st.log_likelihood, c.stage_bad, c.prod_bad, pi);
                    g.fold(&mut st.step_log_likelihood, c.stage_bad, c.prod_bad, pi);
                }
            }
        }
        let rate = |bad: u64, n: u64| (n > 0).then(|| bad as f64 / n as f64);
        let (log_e, lower, upper) = match &grid {
            Some(g) => {
                let full = g.log_e_above(&st.log_likelihood, g.tolerance_idx);
                let step = g.log_e_above(&st.step_log_likelihood, g.tolerance_idx);
                let log_e = eprocess::log_add(0.5f64.ln() + full, step_weight_ln + step);
                let (lo, hi) = g.bounds(&st.log_likelihood, log_threshold);
                (log_e, lo, hi)
            }
            None => (
                eprocess::slo_log_e(st.stage_bad as f64, st.stage_requests as f64, s.tolerance),
                0.0,
                None,
            ),
        };
        let verdict = if live && log_e >= log_threshold {
            Verdict::Rollback
        } else if !guardrail && upper.is_some_and(|u| u <= s.margin) {
            Verdict::Advance
        } else {
            Verdict::Continue
        };
        let (stage_lat, prod_lat, cles) = match s.source {
            Source::Latency { .. } => (
                estimate(&counts.stage.latency_buckets),
                estimate(&counts.prod.latency_buckets),
                histogram::cles(&counts.stage.latency_buckets, &counts.prod.latency_buckets),
            ),
            Source::SloLatency { .. } => (estimate(&counts.stage.latency_buckets), None, None),
            _ => (None, None, None),
        };
        reports.push(MetricReport {
            name: s.name.clone(),
            verdict,
            // Capped so the status stays finite JSON; anything this large decided long ago.
            e_value: log_e.min(700.0).exp(),
            rollback_threshold: k / spec.alpha,
            ratio_lower: lower,
            ratio_upper: upper,
            margin: s.margin,
            stage_rate: rate(st.stage_bad, st.stage_requests),
            prod_rate: if guardrail {
                None
            } else {
                rate(st.prod_bad, st.prod_requests)
            },
            stage_requests: st.stage_requests,
            prod_requests: st.prod_requests,
            boundary_ms: c.boundary_ms,
            stage_latency_ms: stage_lat,
            prod_latency_ms: prod_lat,
            cles,
        });
        next.series.push(st);
    }

    let (verdict, mut reason) = decide(&series, &reports, ctx, live, stage_has_data);
    if !restarted.is_empty() {
        reason.push_str(&format!(
            " (the spec of {} changed during the rollout; its evidence restarted)",
            restarted.join(", ")
        ));
    }
    for (s, r) in series.iter().zip(&reports) {
        if let (Source::Latency { threshold_ms }, Some(b)) = (&s.source, r.boundary_ms) {
            if b != *threshold_ms {
                reason.push_str(&format!(
                    " ({} ms is not a histogram bucket boundary; {} counts requests slower than {b} ms)",
                    threshold_ms, s.name
                ));
            }
        }
    }
    Ok(LookOutcome {
        state: next,
        verdict,
        reason,
        metrics: reports,
        stage_has_data,
    })
}

fn decide(
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

fn estimate(buckets: &[Bucket]) -> Option<LatencyEstimate> {
    Some(LatencyEstimate {
        p50: histogram::quantile(buckets, 0.5)?,
        p90: histogram::quantile(buckets, 0.9)?,
        p99: histogram::quantile(buckets, 0.99)?,
    })
}

fn series_counts(look: u32, s: &SeriesSpec, c: &LookCounts) -> Result<SeriesCounts, AnalysisError> {
    let n_s = c.stage.requests.round();
    let n_p = c.prod.requests.round();
    let latency = |arm: &ArmCounts, side: &str, threshold_ms: f64, at_least: bool| {
        let n = arm.requests.round();
        if arm.latency_buckets.is_empty() {
            if n > 0.0 {
                return Err(AnalysisError::MissingBuckets {
                    look,
                    field: format!("{side}.latency_buckets"),
                    metric: s.name.clone(),
                });
            }
            return Ok((None, 0.0));
        }
        let found = if at_least {
            histogram::slower_than_at_least(&arm.latency_buckets, threshold_ms)
        } else {
            histogram::slower_than(&arm.latency_buckets, threshold_ms)
        };
        match found {
            Some((le, bad)) => Ok((Some(le), bad.round().clamp(0.0, n))),
            // A limit above every finite boundary: no bucket can show requests slower than it.
            None if at_least => Ok((None, 0.0)),
            None => Err(AnalysisError::NoBoundary {
                look,
                field: format!("{side}.latency_buckets"),
                metric: s.name.clone(),
                threshold_ms,
            }),
        }
    };
    let out = match s.source {
        Source::Errors => SeriesCounts {
            stage_requests: n_s,
            stage_bad: c.stage.errors.round().min(n_s),
            prod_requests: n_p,
            prod_bad: c.prod.errors.round().min(n_p),
            boundary_ms: None,
        },
        Source::SloErrors => SeriesCounts {
            stage_requests: n_s,
            stage_bad: c.stage.errors.round().min(n_s),
            ..SeriesCounts::default()
        },
        Source::Latency { threshold_ms } => {
            let (le_s, bad_s) = latency(&c.stage, "stage", threshold_ms, false)?;
            let (le_p, bad_p) = latency(&c.prod, "prod", threshold_ms, false)?;
            SeriesCounts {
                stage_requests: n_s,
                stage_bad: bad_s,
                prod_requests: n_p,
                prod_bad: bad_p,
                boundary_ms: le_s.or(le_p),
            }
        }
        Source::SloLatency { limit_ms, .. } => {
            let (le, bad) = latency(&c.stage, "stage", limit_ms, true)?;
            SeriesCounts {
                stage_requests: n_s,
                stage_bad: bad,
                boundary_ms: le,
                ..SeriesCounts::default()
            }
        }
        Source::Ratio { metric } => {
            let get = |arm: &ArmCounts, side: &str| {
                arm.ratios
                    .get(metric)
                    .copied()
                    .ok_or_else(|| AnalysisError::MissingRatio {
                        look,
                        field: format!("{side}.ratios.{metric}"),
                        metric: metric.to_string(),
                    })
            };
            let (rs, rp) = (get(&c.stage, "stage")?, get(&c.prod, "prod")?);
            SeriesCounts {
                stage_requests: rs.total.round(),
                stage_bad: rs.bad.round().min(rs.total.round()),
                prod_requests: rp.total.round(),
                prod_bad: rp.bad.round().min(rp.total.round()),
                boundary_ms: None,
            }
        }
    };
    Ok(out)
}

fn validate_arm(look: u32, side: &str, arm: &ArmCounts) -> Result<(), AnalysisError> {
    // Field names are formatted only for an error: this runs on every look.
    let count = |field: &dyn Fn() -> String, value: f64| {
        if value.is_finite() && value >= 0.0 {
            Ok(())
        } else if value.is_finite() {
            Err(AnalysisError::CounterWentDown {
                look,
                field: field(),
                value,
            })
        } else {
            Err(AnalysisError::InvalidCount {
                look,
                field: field(),
                value,
            })
        }
    };
    let not_more =
        |field: &dyn Fn() -> String, bad: f64, total_field: &dyn Fn() -> String, total: f64| {
            if bad <= total + 0.5 {
                Ok(())
            } else {
                Err(AnalysisError::MoreBadThanTotal {
                    look,
                    field: field(),
                    bad,
                    total_field: total_field(),
                    total,
                })
            }
        };
    let requests = || format!("{side}.requests");
    let errors = || format!("{side}.errors");
    count(&requests, arm.requests)?;
    count(&errors, arm.errors)?;
    not_more(&errors, arm.errors, &requests, arm.requests)?;
    for (name, r) in &arm.ratios {
        let bad = || format!("{side}.ratios.{name}.bad");
        let total = || format!("{side}.ratios.{name}.total");
        count(&bad, r.bad)?;
        count(&total, r.total)?;
        not_more(&bad, r.bad, &total, r.total)?;
    }
    if arm.latency_buckets.is_empty() {
        return Ok(());
    }
    let field = || format!("{side}.latency_buckets");
    let (mut prev_le, mut prev_count) = (f64::NEG_INFINITY, 0.0);
    for (i, b) in arm.latency_buckets.iter().enumerate() {
        count(&|| format!("{side}.latency_buckets[{i}]"), b.count)?;
        if b.le_ms.is_nan() || b.le_ms <= prev_le || b.count < prev_count {
            return Err(AnalysisError::NotCumulative {
                look,
                field: field(),
                le: b.le_ms,
                count: b.count,
                previous: prev_count,
            });
        }
        prev_le = b.le_ms;
        prev_count = b.count;
    }
    if prev_le != f64::INFINITY {
        return Err(AnalysisError::NoInfBucket {
            look,
            field: field(),
        });
    }
    // Prometheus extrapolates each series' increase() separately; allow rounding noise.
    if (prev_count - arm.requests).abs() > (1e-3 * arm.requests).max(1.0) {
        return Err(AnalysisError::InfMismatch {
            look,
            field: field(),
            inf: prev_count,
            requests_field: requests(),
            requests: arm.requests,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LatencyQuantiles, SloSpec};

    fn arm(requests: f64, errors: f64, slow: f64) -> ArmCounts {
        ArmCounts {
            requests,
            errors,
            latency_buckets: vec![
                Bucket {
                    le_ms: 100.0,
                    count: requests - slow - 1.0_f64.min(requests - slow),
                },
                Bucket {
                    le_ms: 250.0,
                    count: requests - slow,
                },
                Bucket {
                    le_ms: f64::INFINITY,
                    count: requests,
                },
            ],
            ..ArmCounts::default()
        }
    }

    fn spec() -> AnalysisSpec {
        let mut s = AnalysisSpec::default();
        s.metrics[1].thresholds_ms = vec![300.0];
        s
    }

    fn ctx(step: u32, weight: u8, secs: u64) -> LookContext {
        LookContext {
            step,
            stage_weight: weight,
            elapsed_in_step: Duration::from_secs(secs),
            min_duration: Duration::from_secs(120),
        }
    }

    /// Runs `looks` identical looks and returns the outcome of each.
    fn run(spec: &AnalysisSpec, counts: &LookCounts, looks: u32, weight: u8) -> Vec<LookOutcome> {
        let mut state = AnalysisState::default();
        (1..=looks)
            .map(|i| {
                let out =
                    evaluate_look(spec, &state, counts, &ctx(1, weight, 30 * i as u64)).unwrap();
                state = out.state.clone();
                out
            })
            .collect()
    }

    #[test]
    fn no_traffic_no_events_and_weight_zero_never_decide() {
        let s = spec();
        let empty = LookCounts::default();
        let busy = LookCounts {
            stage: arm(500.0, 50.0, 0.0),
            prod: arm(500.0, 0.0, 0.0),
        };
        let quiet = LookCounts {
            stage: arm(500.0, 0.0, 0.0),
            prod: arm(500.0, 0.0, 0.0),
        };
        for (counts, weight) in [(&empty, 30), (&busy, 0), (&quiet, 30)] {
            for out in run(&s, counts, 40, weight) {
                assert_eq!(out.verdict, Verdict::Continue, "{}", out.reason);
            }
        }
        let out = &run(&s, &empty, 1, 30)[0];
        assert!(!out.stage_has_data);
        assert!(out.reason.contains("no requests"), "{}", out.reason);
    }

    #[test]
    fn a_clear_regression_rolls_back_within_a_few_looks_and_says_why() {
        let counts = LookCounts {
            stage: arm(450.0, 14.0, 0.0),
            prod: arm(1050.0, 10.0, 0.0),
        };
        let outs = run(&spec(), &counts, 20, 30);
        let first = outs
            .iter()
            .position(|o| o.verdict == Verdict::Rollback)
            .expect("a 3x error rate is caught");
        assert!(first < 6, "caught only at look {}", first + 1);
        let o = &outs[first];
        assert!(
            o.reason.contains("worse than prod on errors"),
            "{}",
            o.reason
        );
        let errors = &o.metrics[0];
        assert!(errors.e_value >= errors.rollback_threshold);
        assert!(errors.ratio_lower >= 1.0, "{errors:?}");
        assert_eq!(o.metrics[1].verdict, Verdict::Continue);
    }

    #[test]
    fn a_healthy_stage_advances_only_after_the_minimum_duration() {
        let counts = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let outs = run(&spec(), &counts, 40, 30);
        let first = outs
            .iter()
            .position(|o| o.verdict == Verdict::Advance)
            .expect("equal rates with ~1000 events per look are proven within 1.5x");
        assert!(
            first >= 3,
            "advanced at {} s, before the 120 s minimum",
            30 * (first + 1)
        );
        assert!(outs[..first].iter().all(|o| o.verdict == Verdict::Continue));
        for m in &outs[first].metrics {
            assert!(m.ratio_upper.unwrap() <= m.margin && m.ratio_lower < 1.0);
        }
        assert_eq!(outs[first].metrics[1].boundary_ms, Some(250.0));
        assert!(
            outs[first].reason.contains(
                "300 ms is not a histogram bucket boundary; latency@300 counts requests slower than 250 ms"
            ),
            "{}",
            outs[first].reason
        );
        assert!(outs.iter().all(|o| o.verdict != Verdict::Rollback));
    }

    #[test]
    fn at_full_weight_only_a_guardrail_decides() {
        let mut s = spec();
        let healthy = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let mut state = run(&s, &healthy, 10, 30).pop().unwrap().state;
        let all_stage = LookCounts {
            stage: arm(10000.0, 100.0, 100.0),
            prod: ArmCounts::default(),
        };
        for i in 1..=20 {
            let out = evaluate_look(&s, &state, &all_stage, &ctx(3, 100, 30 * i)).unwrap();
            assert_eq!(out.verdict, Verdict::Continue, "{}", out.reason);
            state = out.state;
        }
        s.slo = Some(SloSpec {
            max_error_rate: Some(0.005),
            max_latency_ms: None,
        });
        let out = evaluate_look(&s, &state, &all_stage, &ctx(3, 100, 630)).unwrap();
        assert_eq!(out.verdict, Verdict::Rollback);
        assert!(
            out.reason.contains("guardrail slo:maxErrorRate"),
            "{}",
            out.reason
        );
    }

    #[test]
    fn a_latency_guardrail_uses_the_boundary_above_its_limit() {
        let mut s = spec();
        s.slo = Some(SloSpec {
            max_error_rate: None,
            max_latency_ms: Some(LatencyQuantiles {
                p99: Some(200.0),
                ..LatencyQuantiles::default()
            }),
        });
        // 5 % slower than 250 ms in both arms: not a regression, but p99 > 200 ms.
        let counts = LookCounts {
            stage: arm(1000.0, 0.0, 50.0),
            prod: arm(1000.0, 0.0, 50.0),
        };
        let outs = run(&s, &counts, 3, 50);
        let last = outs.last().unwrap();
        assert_eq!(last.verdict, Verdict::Rollback, "{}", last.reason);
        let slo = last.metrics.iter().find(|m| m.name == "slo:p99").unwrap();
        assert_eq!(slo.boundary_ms, Some(250.0));
        assert_eq!(
            slo.stage_latency_ms.unwrap().p99,
            250.0,
            "in the +Inf bucket"
        );
    }

    #[test]
    fn the_step_part_restarts_when_the_step_changes() {
        let s = spec();
        let counts = LookCounts {
            stage: arm(300.0, 3.0, 3.0),
            prod: arm(700.0, 7.0, 7.0),
        };
        let state = run(&s, &counts, 5, 30).pop().unwrap().state;
        let next = evaluate_look(&s, &state, &LookCounts::default(), &ctx(2, 60, 30)).unwrap();
        for (before, after) in state.series.iter().zip(&next.state.series) {
            assert_eq!(after.step, 2);
            assert!(after.step_log_likelihood.iter().all(|&x| x == 0.0));
            assert_eq!(before.log_likelihood, after.log_likelihood);
        }
    }

    #[test]
    fn the_state_survives_a_round_trip_through_the_status() {
        let s = spec();
        let counts = LookCounts {
            stage: arm(300.0, 5.0, 3.0),
            prod: arm(700.0, 7.0, 7.0),
        };
        let state = run(&s, &counts, 3, 30).pop().unwrap().state;
        let json = serde_json::to_string(&state).unwrap();
        let back: AnalysisState = serde_json::from_str(&json).unwrap();
        let a = evaluate_look(&s, &state, &counts, &ctx(1, 30, 120)).unwrap();
        let b = evaluate_look(&s, &back, &counts, &ctx(1, 30, 120)).unwrap();
        assert_eq!((a.verdict, &a.reason), (b.verdict, &b.reason));
        for (x, y) in a.metrics.iter().zip(&b.metrics) {
            assert!((x.e_value / y.e_value - 1.0).abs() < 1e-9);
            assert_eq!(
                (x.ratio_lower, x.ratio_upper),
                (y.ratio_lower, y.ratio_upper)
            );
        }
    }

    fn any_count() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            0.0..5000.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            -10.0..0.0f64,
        ]
    }

    fn any_arm() -> impl proptest::strategy::Strategy<Value = ArmCounts> {
        use proptest::prelude::*;
        (
            any_count(),
            any_count(),
            proptest::collection::vec(
                (
                    prop_oneof![0.0..600.0f64, Just(f64::INFINITY), Just(f64::NAN)],
                    any_count(),
                ),
                0..5,
            ),
        )
            .prop_map(|(requests, errors, buckets)| ArmCounts {
                requests,
                errors,
                latency_buckets: buckets
                    .into_iter()
                    .map(|(le_ms, count)| Bucket { le_ms, count })
                    .collect(),
                ..ArmCounts::default()
            })
    }

    proptest::proptest! {
        /// Whatever arrives from telemetry, a look returns a verdict or an error; it never
        /// panics, and a verdict's numbers are valid status JSON.
        #[test]
        fn any_input_gives_a_verdict_or_an_error(stage in any_arm(), prod in any_arm(), weight in 0u8..=100, step in 0u32..4) {
            let mut s = spec();
            s.slo = Some(SloSpec { max_error_rate: Some(0.01), max_latency_ms: Some(LatencyQuantiles { p99: Some(300.0), ..LatencyQuantiles::default() }) });
            let counts = LookCounts { stage, prod };
            if let Ok(out) = evaluate_look(&s, &AnalysisState::default(), &counts, &ctx(step, weight, 300)) {
                proptest::prop_assert!(out.metrics.iter().all(|m| m.e_value.is_finite() && m.ratio_lower.is_finite()));
                proptest::prop_assert!(serde_json::to_string(&out.state).is_ok());
                if weight == 0 {
                    proptest::prop_assert_eq!(out.verdict, Verdict::Continue);
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_look_and_field() {
        let s = spec();
        let ok = LookCounts {
            stage: arm(100.0, 1.0, 1.0),
            prod: arm(100.0, 1.0, 1.0),
        };
        let state = AnalysisState {
            looks: 6,
            ..AnalysisState::default()
        };
        let check = |counts: LookCounts, expect: &str| {
            let err = evaluate_look(&s, &state, &counts, &ctx(1, 30, 30))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("look 7: "), "{err}");
            assert!(err.contains(expect), "{err} lacks {expect}");
        };
        let mut c = ok.clone();
        c.stage.errors = f64::NAN;
        check(c, "stage.errors is NaN");
        let mut c = ok.clone();
        c.prod.requests = -3.0;
        check(
            c,
            "prod.requests is -3; a window's increment cannot be negative",
        );
        let mut c = ok.clone();
        c.prod.ratios.insert(
            "checkout".into(),
            RatioCounts {
                bad: 1.0,
                total: f64::INFINITY,
            },
        );
        check(c, "prod.ratios.checkout.total is inf");
        let mut c = ok.clone();
        c.stage.errors = 500.0;
        check(c, "stage.errors is 500, more than stage.requests");
        let mut c = ok.clone();
        c.prod.latency_buckets[1].count = 10.0;
        check(c, "prod.latency_buckets: buckets are not cumulative");
        let mut c = ok.clone();
        c.stage.latency_buckets[2].count = 150.0;
        check(
            c,
            "+Inf bucket counts 150 requests but stage.requests is 100",
        );
        let mut c = ok.clone();
        c.stage.latency_buckets.pop();
        check(
            c,
            "stage.latency_buckets: the last bucket must be le=\"+Inf\"",
        );
        let mut c = ok.clone();
        c.prod.latency_buckets.clear();
        check(c, "prod.latency_buckets is missing");
        let mut low = s.clone();
        low.metrics[1].thresholds_ms = vec![50.0];
        let err = evaluate_look(&low, &state, &ok, &ctx(1, 30, 30)).unwrap_err();
        assert!(err
            .to_string()
            .contains("no bucket boundary at or below 50 ms"));
        let mut ratio = s.clone();
        ratio.metrics.push(crate::api::MetricSpec {
            name: "checkout".into(),
            kind: MetricKind::Ratio,
            margin: 1.5,
            tolerance: 1.0,
            thresholds_ms: vec![],
            bad: Some("x".into()),
            total: Some("y".into()),
        });
        let err = evaluate_look(&ratio, &state, &ok, &ctx(1, 30, 30)).unwrap_err();
        assert!(err.to_string().contains("stage.ratios.checkout is missing"));
    }
}

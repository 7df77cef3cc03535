//! Evaluating one look: the context and outcome types, each series' counts read from the
//! look (an error when it lacks what a series needs), the fold into the carried state, and
//! the per-series e-values, bounds, verdicts and reports.

use std::time::Duration;

use super::counts::{ArmCounts, Bucket, LookCounts};
use super::eprocess::{self, Grid, StepEvents};
use super::series::{
    rollback_threshold, series_of, SeriesSpec, Source, SHIFT_POINTS, THRESHOLD_WEIGHT,
};
use super::validate::{validate_arm, AnalysisError};
use super::{explain, histogram};
use crate::api::{
    AnalysisSpec, AnalysisState, HeldCounts, LatencyEstimate, MetricReport, SeriesState, Verdict,
};

/// Where the rollout is when a look is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookContext {
    /// Index into `spec.steps`.
    pub step: u32,
    pub stage_weight: u8,
    pub elapsed_in_step: Duration,
    pub min_duration: Duration,
    /// How many steps of the spec compare stage with prod (weight strictly between 0 and
    /// 100): the rollback's per-step budget is split among them.
    pub comparative_steps: u32,
}

/// The steps of `steps` that compare stage with prod (weight strictly between 0 and 100).
pub fn comparative_steps(steps: &[u8]) -> u32 {
    steps.iter().filter(|w| (1..100).contains(*w)).count() as u32
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
    /// Whether a look is held back, not yet judged (see the pooling in the module docs).
    pub held: bool,
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

    // Shift series add to their latency series' test; they are not tests of their own.
    let reported = series
        .iter()
        .filter(|s| s.source.shift_of().is_none())
        .count();
    let threshold = rollback_threshold(spec.alpha, reported);
    let log_threshold = threshold.ln();
    // Advance needs every compared series to pass (an intersection-union test), so each
    // confidence sequence may use alpha itself: advancing a step in which any one metric is
    // at or above its margin needs that metric's sequence to be wrong.
    let advance_log_threshold = (1.0 / spec.alpha).ln();
    let live = ctx.stage_weight > 0;
    let stage_has_data = counts.stage.requests.round() > 0.0;

    let mut next = AnalysisState {
        looks: look,
        window_end: state.window_end,
        series: Vec::with_capacity(series.len()),
    };
    let mut reports = Vec::with_capacity(series.len());
    let mut restarted = Vec::new();
    let mut holding: Vec<&str> = Vec::new();
    // Per reported series its own log e-value; per shift series what it adds to its parent.
    let mut own_log_e = Vec::with_capacity(reported);
    let mut shifts: Vec<ShiftPart> = Vec::new();
    for (s, c) in series.iter().zip(&per_series) {
        let guardrail = s.source.is_guardrail();
        // The rollout-wide likelihood lives on the base grid plus the tolerance only, so an
        // edit of the margin keeps it; the step's adds the margin (the advance bound).
        let rollout_grid = (!guardrail).then(|| Grid::new(s.tolerance, s.tolerance));
        let grid = (!guardrail).then(|| Grid::new(s.tolerance, s.margin));
        let (rlen, glen) = (
            rollout_grid.map_or(0, |g| g.len()),
            grid.map_or(0, |g| g.len()),
        );
        let fresh = || SeriesState {
            name: s.name.clone(),
            tolerance: s.tolerance,
            margin: s.margin,
            log_likelihood: vec![0.0; rlen],
            step: ctx.step,
            step_log_likelihood: vec![0.0; glen],
            ..SeriesState::default()
        };
        let mut st = match state.series.iter().find(|x| x.name == s.name) {
            None => fresh(),
            Some(old) if guardrail => {
                if old.tolerance == s.tolerance {
                    old.clone()
                } else {
                    restarted.push(Restart::Rollout(s.name.as_str()));
                    fresh()
                }
            }
            Some(old) => {
                let mut st = old.clone();
                if old.tolerance != s.tolerance || old.log_likelihood.len() != rlen {
                    // A new null: the rollout's evidence restarts, with a smaller weight
                    // than the one it replaces (see `generation_weight`).
                    st.restarts = st.restarts.saturating_add(1);
                    st.log_likelihood = vec![0.0; rlen];
                    st.step_log_likelihood.clear();
                    restarted.push(Restart::Rollout(s.name.as_str()));
                } else if old.margin != s.margin && old.step == ctx.step {
                    restarted.push(Restart::Step(s.name.as_str()));
                }
                let step_grid_kept = st.step_log_likelihood.len() == glen && old.margin == s.margin;
                if !step_grid_kept && old.step == ctx.step {
                    // The step's evidence restarts mid-step, down-weighted likewise.
                    st.step_restarts = st.step_restarts.saturating_add(1);
                    st.step_generation = st.step_restarts;
                    reset_step(&mut st, glen);
                }
                st.tolerance = s.tolerance;
                st.margin = s.margin;
                st
            }
        };
        if st.step != ctx.step {
            st.step = ctx.step;
            st.step_generation = 0;
            reset_step(&mut st, glen);
        }
        let step_weight_ln = step_weight(ctx).ln() + generation_weight(st.step_generation).ln();
        let rollout_weight_ln = 0.5f64.ln() + generation_weight(st.restarts).ln();
        // A restarted step's confidence sequence gets its share of alpha the same way.
        let advance_log_threshold =
            advance_log_threshold - generation_weight(st.step_generation).ln();
        if live {
            let total = c.stage_requests + c.prod_requests;
            let share = if total > 0.0 {
                c.stage_requests / total
            } else {
                0.0
            };
            let look = HeldCounts {
                stage_requests: c.stage_requests as u64,
                stage_bad: c.stage_bad as u64,
                prod_requests: c.prod_requests as u64,
                prod_bad: c.prod_bad as u64,
                looks: 1,
                stage_share_of_bad: share * (c.stage_bad + c.prod_bad),
            };
            let held = st.held.take();
            let (folded, held) = match grid {
                Some(_) => pool(&st, held, look),
                None => (Some(look), None),
            };
            if let Some(look) = &folded {
                fold(&mut st, rollout_grid.as_ref().zip(grid.as_ref()), look);
            }
            if held.is_some() {
                let shown = s.source.shift_of().map_or(s, |p| &series[p]);
                if !holding.contains(&shown.name.as_str()) {
                    holding.push(shown.name.as_str());
                }
            }
            st.held = held;
        }
        let rate = |bad: u64, n: u64| (n > 0).then(|| bad as f64 / n as f64);
        let (mut detectable, mut worse_p) = (None, None);
        let (log_e, lower, upper) = match &grid {
            Some(g) => {
                let rg = rollout_grid.as_ref().expect("a comparison has both grids");
                let full = rg.log_e_above(&st.log_likelihood, rg.tolerance_idx);
                let step = g.log_e_above(&st.step_log_likelihood, g.tolerance_idx);
                let log_e = eprocess::log_add(rollout_weight_ln + full, step_weight_ln + step);
                if s.source.shift_of().is_some() {
                    // A shift part only adds evidence to its parent: no bounds, no power.
                    (log_e, 0.0, None)
                } else {
                    let events = StepEvents {
                        bad: st.step_bad as f64,
                        stage_bad: st.step_stage_bad as f64,
                        share: st.step_stage_share_of_bad,
                    };
                    detectable = g.detectable_ratio(
                        &st.step_log_likelihood,
                        events,
                        log_threshold - step_weight_ln,
                        1.0 - spec.at_max.beta,
                    );
                    worse_p = eprocess::worse_p_value(events, s.tolerance);
                    // Step-local: a release that regresses only at this weight cannot ride on
                    // the evidence of the steps before it.
                    let (lo, hi) = g.bounds(&st.step_log_likelihood, advance_log_threshold);
                    let (lo, hi) = narrowed(&mut st, lo, hi);
                    (log_e, lo, hi)
                }
            }
            None => (
                eprocess::slo_log_e(st.stage_bad as f64, st.stage_requests as f64, s.tolerance),
                0.0,
                None,
            ),
        };
        if let Some(parent) = s.source.shift_of() {
            shifts.push(ShiftPart {
                parent,
                log_e,
                boundary_ms: c.boundary_ms,
                stage_rate: rate(st.stage_bad, st.stage_requests),
                prod_rate: rate(st.prod_bad, st.prod_requests),
            });
            next.series.push(st);
            continue;
        }
        own_log_e.push(log_e);
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
            rollback_threshold: threshold,
            ratio_lower: lower,
            ratio_upper: upper,
            margin: s.margin,
            detectable_ratio: detectable,
            worse_p_value: worse_p,
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

    // A latency series rolls back on its threshold's evidence and its shift series' together.
    let mut shift_notes = Vec::new();
    for (parent, r) in reports.iter_mut().enumerate() {
        let parts: Vec<&ShiftPart> = shifts.iter().filter(|p| p.parent == parent).collect();
        if parts.is_empty() {
            continue;
        }
        let own = THRESHOLD_WEIGHT.ln() + own_log_e[parent];
        let log_e = parts
            .iter()
            .zip(SHIFT_POINTS)
            .fold(own, |acc, (p, (_, w))| {
                eprocess::log_add(acc, w.ln() + p.log_e)
            });
        r.e_value = log_e.min(700.0).exp();
        r.verdict = if live && log_e >= log_threshold {
            Verdict::Rollback
        } else if r.ratio_upper.is_some_and(|u| u <= r.margin) {
            Verdict::Advance
        } else {
            Verdict::Continue
        };
        let strongest = parts
            .iter()
            .zip(SHIFT_POINTS)
            .map(|(p, (_, w))| (w.ln() + p.log_e, p))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((shift_log_e, p)) = strongest {
            if r.verdict == Verdict::Rollback && shift_log_e > own {
                shift_notes.push(explain::shift_note(
                    &r.name,
                    p.boundary_ms,
                    p.stage_rate,
                    p.prod_rate,
                ));
            }
        }
    }

    let held = !holding.is_empty();
    // Shift series come last (`series_of`).
    let (mut verdict, mut reason) = explain::decide(
        &series[..reported],
        &reports,
        &restarted,
        ctx,
        live,
        stage_has_data,
    );
    if verdict == Verdict::Rollback {
        for note in shift_notes {
            reason.push_str(&note);
        }
    }
    if !holding.is_empty() {
        // Evidence held back may hold a regression: no advance until it is folded.
        if verdict == Verdict::Advance {
            verdict = Verdict::Continue;
            reason = "not advancing while a look is held back".into();
        } else if verdict == Verdict::Continue
            && reports
                .iter()
                .filter(|r| holding.contains(&r.name.as_str()))
                .all(|r| r.stage_requests == 0 && r.prod_requests == 0)
        {
            // Nothing of the held series is folded yet: its counts are held, not missing.
            reason = "not known yet: the first look is judged together with the next".into();
        }
        reason.push_str(&format!(
            " ({}: pooled with the next look before it is judged, because bad events in both \
             arms jumped above the rate so far, or there is no rate yet to compare them with)",
            holding.join(", ")
        ));
    }
    Ok(LookOutcome {
        state: next,
        verdict,
        reason,
        metrics: reports,
        stage_has_data,
        held,
    })
}

/// What one shift series adds to its latency series' rollback test at this look.
struct ShiftPart {
    parent: usize,
    log_e: f64,
    boundary_ms: Option<f64>,
    stage_rate: Option<f64>,
    prod_rate: Option<f64>,
}

/// At most this many looks are held back and pooled; the look after them is folded with them
/// whatever its rate: a real regression is judged at most this many looks late.
const MAX_HELD_LOOKS: u32 = 6;

/// What to fold now and what to hold back, given the looks held so far and this look.
/// Prometheus scrapes each pod at its own instant, so a look's window ends at a different
/// instant for each pod, and a burst of errors that hits both arms near a look's end falls
/// into that look for some pods and into the next for others: on its own, either look
/// would read the burst as stage's or as prod's. So a look whose bad events jumped is held,
/// and held looks are judged together with their neighbours: pooled with the next look
/// while either the held looks or the next look jumped (each measured against the other
/// while the rollout has too few bad events for a rate of its own), and folded together
/// with the first next look once neither did. A burst straddling either end of a held look
/// is then summed back whole for both arms. After [`MAX_HELD_LOOKS`] held looks the next is
/// folded with them whatever its rate. Every choice reads the bad events of both arms
/// together and the requests (m and n), never how the bad events split between the arms.
fn pool(
    st: &SeriesState,
    held: Option<HeldCounts>,
    look: HeldCounts,
) -> (Option<HeldCounts>, Option<HeldCounts>) {
    match held {
        None if jumped(st, &look, None) => (None, Some(look)),
        None => (Some(look), None),
        Some(h) if !jumped(st, &look, Some(&h)) && !jumped(st, &h, Some(&look)) => {
            (Some(pooled(&h, &look)), None)
        }
        Some(h) if h.looks < MAX_HELD_LOOKS => (None, Some(pooled(&h, &look))),
        Some(h) => (Some(pooled(&h, &look)), None),
    }
}

/// Whether the bad events of both arms together in `look` (m of n requests) jumped above
/// the reference rate by more than four Poisson standard deviations (and 3 events). The
/// reference is the rate folded so far; while that holds fewer than 10 bad events (the
/// first looks of a rollout), the neighbouring counts `other` are added to it, and with no
/// rate at all any look of more than 3 bad events counts as a jump: a burst in the first
/// look has nothing else to stand out against.
fn jumped(st: &SeriesState, look: &HeldCounts, other: Option<&HeldCounts>) -> bool {
    let (mut m0, mut n0) = (
        st.stage_bad.saturating_add(st.prod_bad) as f64,
        st.stage_requests.saturating_add(st.prod_requests) as f64,
    );
    if m0 < 10.0 {
        if let Some(o) = other {
            m0 += o.stage_bad.saturating_add(o.prod_bad) as f64;
            n0 += o.stage_requests.saturating_add(o.prod_requests) as f64;
        }
    }
    let rate = if n0 > 0.0 { m0 / n0 } else { 0.0 };
    let m = look.stage_bad.saturating_add(look.prod_bad) as f64;
    let expected = rate * look.stage_requests.saturating_add(look.prod_requests) as f64;
    m > expected + 4.0 * expected.sqrt() + 3.0
}

fn pooled(a: &HeldCounts, b: &HeldCounts) -> HeldCounts {
    HeldCounts {
        stage_requests: a.stage_requests.saturating_add(b.stage_requests),
        stage_bad: a.stage_bad.saturating_add(b.stage_bad),
        prod_requests: a.prod_requests.saturating_add(b.prod_requests),
        prod_bad: a.prod_bad.saturating_add(b.prod_bad),
        looks: a.looks + b.looks,
        stage_share_of_bad: a.stage_share_of_bad + b.stage_share_of_bad,
    }
}

/// Folds counts (one look, or several pooled) into a series' totals and likelihoods. Pooled
/// looks use stage's share weighted by each look's bad events (sum of m_i pi_i over m): given
/// the m_i, stage's bad events are a sum of binomials with that mean, which the binomial of
/// that share dominates in convex order, so the likelihood ratio stays a supermartingale
/// factor under the null.
fn fold(st: &mut SeriesState, grids: Option<(&Grid, &Grid)>, look: &HeldCounts) {
    // Saturating: a rollout long enough to count 2^64 requests keeps its last rates.
    st.stage_requests = st.stage_requests.saturating_add(look.stage_requests);
    st.stage_bad = st.stage_bad.saturating_add(look.stage_bad);
    st.prod_requests = st.prod_requests.saturating_add(look.prod_requests);
    st.prod_bad = st.prod_bad.saturating_add(look.prod_bad);
    st.step_stage_requests = st.step_stage_requests.saturating_add(look.stage_requests);
    if let Some((rg, g)) = grids {
        let total = (look.stage_requests + look.prod_requests) as f64;
        let (bs, bp) = (look.stage_bad as f64, look.prod_bad as f64);
        if total > 0.0 && bs + bp > 0.0 {
            let pi = (look.stage_share_of_bad / (bs + bp)).clamp(0.0, 1.0);
            rg.fold(&mut st.log_likelihood, bs, bp, pi);
            g.fold(&mut st.step_log_likelihood, bs, bp, pi);
            if pi > 0.0 && pi < 1.0 {
                // What the step's likelihood holds, for its detectable ratio.
                st.step_bad = st
                    .step_bad
                    .saturating_add(look.stage_bad.saturating_add(look.prod_bad));
                st.step_stage_bad = st.step_stage_bad.saturating_add(look.stage_bad);
                st.step_stage_share_of_bad += look.stage_share_of_bad;
            }
        }
    }
}

/// The weight of the current step's own rollback e-process: half of the budget, split evenly
/// over the steps that compare (weight strictly between 0 and 100), so none is left on steps
/// where nothing can be compared.
fn step_weight(ctx: &LookContext) -> f64 {
    0.5 / f64::from(ctx.comparative_steps.max(1))
}

/// Share of alpha kept for evidence restarted by spec edits during a rollout.
const RESTART_RESERVE: f64 = 0.05;

/// The factor on an e-process's weight (and on the advance sequence's alpha) by generation:
/// 0 for the process a rollout or step starts with, k for the one started by the k-th spec
/// edit that restarted it. 1 - 1/20 for generation 0, then 1/20 * 2^-k: the weights of every
/// process that can ever start still sum to at most 1, so edits never spend fresh alpha.
fn generation_weight(generation: u32) -> f64 {
    if generation == 0 {
        1.0 - RESTART_RESERVE
    } else {
        RESTART_RESERVE * 0.5f64.powi(generation.min(1000) as i32)
    }
}

/// Clears the step-local part of a series: its likelihood (on the step grid) and counts.
fn reset_step(st: &mut SeriesState, len: usize) {
    st.step_log_likelihood = vec![0.0; len];
    st.step_stage_requests = 0;
    st.step_bad = 0;
    st.step_stage_bad = 0;
    st.step_stage_share_of_bad = 0.0;
    st.step_ratio_lower = 0.0;
    st.step_ratio_upper = None;
}

/// This look's confidence bounds intersected with the step's earlier ones, kept in `st`.
/// Every look's interval holds the true ratio at once (with probability 1 - alpha), so their
/// intersection does too, and it never widens. An empty intersection means the step's data
/// fits no single ratio (the ratio moved within the step): the running bounds start again
/// from this look's.
fn narrowed(st: &mut SeriesState, lower: f64, upper: Option<f64>) -> (f64, Option<f64>) {
    let lo = lower.max(st.step_ratio_lower);
    let hi = match (upper, st.step_ratio_upper) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (lo, hi) = if hi.is_some_and(|h| h < lo) {
        (lower, upper)
    } else {
        (lo, hi)
    };
    st.step_ratio_lower = lo;
    st.step_ratio_upper = hi;
    (lo, hi)
}

/// Evidence a spec edit restarted in this look: the whole series' (a new tolerance or
/// guardrail limit), or only the current step's (a new margin).
#[derive(Clone, Copy)]
pub(super) enum Restart<'a> {
    Rollout(&'a str),
    Step(&'a str),
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
            // Arms without requests may have no histogram; one with requests must have one.
            let (s_empty, p_empty) = (
                c.stage.latency_buckets.is_empty(),
                c.prod.latency_buckets.is_empty(),
            );
            if s_empty || p_empty {
                let (le_s, bad_s) = latency(&c.stage, "stage", threshold_ms, false)?;
                let (le_p, bad_p) = latency(&c.prod, "prod", threshold_ms, false)?;
                return Ok(SeriesCounts {
                    stage_requests: if s_empty { 0.0 } else { n_s },
                    stage_bad: bad_s,
                    prod_requests: if p_empty { 0.0 } else { n_p },
                    prod_bad: bad_p,
                    boundary_ms: le_s.or(le_p),
                });
            }
            let (sb, pb) = (&c.stage.latency_buckets, &c.prod.latency_buckets);
            let Some((le, bad_s, bad_p)) = histogram::shared_slower_than(sb, pb, threshold_ms)
            else {
                return Err(AnalysisError::NoSharedBoundary {
                    look,
                    metric: s.name.clone(),
                    threshold_ms,
                });
            };
            // The requests of the histogram itself: the bad count and its total must come
            // from the same series, or a small mismatch alone looks like a regression.
            let (hs, hp) = (
                histogram::requests(sb).round(),
                histogram::requests(pb).round(),
            );
            SeriesCounts {
                stage_requests: hs,
                stage_bad: bad_s.round().clamp(0.0, hs),
                prod_requests: hp,
                prod_bad: bad_p.round().clamp(0.0, hp),
                boundary_ms: Some(le),
            }
        }
        Source::LatencyShift { at_ms, .. } => {
            // Nothing to count without both histograms or a shared boundary this low: no
            // evidence (the parent series reports a missing histogram).
            let (sb, pb) = (&c.stage.latency_buckets, &c.prod.latency_buckets);
            match histogram::shared_slower_than(sb, pb, at_ms) {
                Some((le, bad_s, bad_p)) if !sb.is_empty() && !pb.is_empty() => {
                    let (hs, hp) = (
                        histogram::requests(sb).round(),
                        histogram::requests(pb).round(),
                    );
                    SeriesCounts {
                        stage_requests: hs,
                        stage_bad: bad_s.round().clamp(0.0, hs),
                        prod_requests: hp,
                        prod_bad: bad_p.round().clamp(0.0, hp),
                        boundary_ms: Some(le),
                    }
                }
                _ => SeriesCounts::default(),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::{LatencyQuantiles, SloSpec};

    pub(in crate::analysis) fn arm(requests: f64, errors: f64, slow: f64) -> ArmCounts {
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

    pub(in crate::analysis) fn spec() -> AnalysisSpec {
        let mut s = AnalysisSpec::default();
        s.metrics[1].thresholds_ms = vec![300.0];
        s
    }

    pub(in crate::analysis) fn ctx(step: u32, weight: u8, secs: u64) -> LookContext {
        LookContext {
            step,
            stage_weight: weight,
            elapsed_in_step: Duration::from_secs(secs),
            min_duration: Duration::from_secs(120),
            comparative_steps: 2,
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

    /// Requests per look of one arm on the buckets 50, 100, 250 ms: `shares` of them slower
    /// than each boundary.
    fn spread(requests: f64, shares: [f64; 3]) -> ArmCounts {
        let bucket = |le_ms: f64, slower: f64| Bucket {
            le_ms,
            count: (requests * (1.0 - slower)).round(),
        };
        ArmCounts {
            requests,
            latency_buckets: vec![
                bucket(50.0, shares[0]),
                bucket(100.0, shares[1]),
                bucket(250.0, shares[2]),
                bucket(f64::INFINITY, 0.0),
            ],
            ..ArmCounts::default()
        }
    }

    /// The look at which `outs` first rolled back.
    fn first_rollback(outs: &[LookOutcome]) -> usize {
        outs.iter()
            .position(|o| o.verdict == Verdict::Rollback)
            .expect("rolled back")
    }

    /// Errors, and latency slower than 250 ms on the buckets of [`spread`].
    fn spec_at_250() -> AnalysisSpec {
        let mut s = spec();
        s.metrics[1].thresholds_ms = vec![250.0];
        s
    }

    #[test]
    fn a_slowdown_of_the_whole_distribution_is_caught_below_the_threshold() {
        let s = spec_at_250();
        // Stage is slower across the body (50 % instead of 40 % slower than 50 ms, 20 %
        // instead of 12 % slower than 100 ms) while its tail at 250 ms equals prod's: the
        // threshold's test alone never sees it, the shift part does.
        let slower = LookCounts {
            stage: spread(600.0, [0.5, 0.2, 0.01]),
            prod: spread(1400.0, [0.4, 0.12, 0.01]),
        };
        let outs = run(&s, &slower, 30, 30);
        let first = first_rollback(&outs);
        assert!(first < 10, "look {}", first + 1);
        let reason = &outs[first].reason;
        assert!(
            reason.contains("the evidence is mostly in requests slower than 100 ms"),
            "{reason}"
        );
        let latency = &outs[first].metrics[1];
        assert_eq!(latency.name, "latency@250");
        assert!(latency.ratio_lower < 1.0, "the tail itself is not worse");

        // The same arms, identical: nothing in 60 looks, and the state keeps the two shift
        // series after the reported ones.
        let same = LookCounts {
            stage: spread(600.0, [0.4, 0.12, 0.01]),
            prod: spread(1400.0, [0.4, 0.12, 0.01]),
        };
        let outs = run(&s, &same, 60, 30);
        assert!(outs.iter().all(|o| o.verdict != Verdict::Rollback));
        let names: Vec<_> = outs[59]
            .state
            .series
            .iter()
            .map(|x| x.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "errors",
                "latency@250",
                "latency@250<0.5",
                "latency@250<0.25"
            ]
        );
        assert_eq!(outs[59].metrics.len(), 2, "shift series are not reported");
    }

    #[test]
    fn a_tail_only_regression_is_still_caught_by_the_threshold() {
        let s = spec_at_250();
        // Only the tail: 3 % of stage's requests are slower than 250 ms against 1 %.
        let tail = LookCounts {
            stage: spread(600.0, [0.4, 0.12, 0.03]),
            prod: spread(1400.0, [0.4, 0.12, 0.01]),
        };
        let outs = run(&s, &tail, 30, 30);
        let first = first_rollback(&outs);
        assert!(first < 10, "look {}", first + 1);
        assert!(!outs[first]
            .reason
            .contains("mostly in requests slower than"));
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
                "300 ms is not a histogram bucket boundary; latency counts requests slower than 250 ms"
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
            out.reason.contains("guardrail slo.maxErrorRate"),
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
    fn the_bounds_never_widen_within_a_step_and_start_again_at_the_next() {
        let s = spec();
        let mut state = AnalysisState::default();
        let mut last: Option<(f64, f64)> = None;
        let mut unintersected_widened = false;
        // Equal rates in expectation, with looks that swing: one arm, then the other, has
        // the more errors.
        for i in 0..30u64 {
            let (a, b) = if i % 3 == 0 { (9.0, 2.0) } else { (1.0, 6.0) };
            let counts = LookCounts {
                stage: arm(300.0, a, a),
                prod: arm(700.0, 7.0 * b / 3.0, 7.0 * b / 3.0),
            };
            // The same look without the step's earlier bounds: this look's own interval.
            let mut fresh = state.clone();
            for st in &mut fresh.series {
                (st.step_ratio_lower, st.step_ratio_upper) = (0.0, None);
            }
            let at = ctx(1, 30, 30 * (i + 1));
            let alone = evaluate_look(&s, &fresh, &counts, &at).unwrap().metrics[0].clone();
            let (own_lo, own_hi) = (alone.ratio_lower, alone.ratio_upper);
            let out = evaluate_look(&s, &state, &counts, &at).unwrap();
            let m = &out.metrics[0];
            let (lo, hi) = (m.ratio_lower, m.ratio_upper.unwrap_or(f64::INFINITY));
            assert!(lo <= hi, "look {i}: empty interval {lo}..{hi}");
            assert!(lo >= own_lo && hi <= own_hi.unwrap_or(f64::INFINITY));
            if let Some((plo, phi)) = last {
                assert!(
                    lo >= plo && hi <= phi,
                    "look {i}: {plo}..{phi} widened to {lo}..{hi}"
                );
                unintersected_widened |= own_hi.unwrap_or(f64::INFINITY) > phi || own_lo < plo;
            }
            last = Some((lo, hi));
            state = out.state;
        }
        assert!(
            unintersected_widened,
            "the data should make a single look's bounds swing"
        );
        let next = evaluate_look(&s, &state, &LookCounts::default(), &ctx(2, 60, 30)).unwrap();
        assert_eq!(
            next.metrics[0].ratio_upper, None,
            "a new step starts with no bound"
        );
    }

    #[test]
    fn a_margin_edit_keeps_the_rollouts_evidence_and_restarts_only_the_steps() {
        let s = spec();
        let counts = LookCounts {
            stage: arm(300.0, 6.0, 3.0),
            prod: arm(700.0, 7.0, 7.0),
        };
        let state = run(&s, &counts, 5, 30).pop().unwrap().state;
        let mut edited = s.clone();
        edited.metrics[0].margin = 2.0;
        let out = evaluate_look(&edited, &state, &counts, &ctx(1, 30, 180)).unwrap();
        let (before, after) = (&state.series[0], &out.state.series[0]);
        assert_eq!(
            (after.margin, after.restarts, after.step_generation),
            (2.0, 0, 1)
        );
        assert_eq!(after.log_likelihood.len(), before.log_likelihood.len());
        assert!(
            after.log_likelihood[0] < before.log_likelihood[0],
            "the rollout's likelihood kept and extended by this look"
        );
        assert_eq!(
            (before.step_bad, after.step_bad),
            (65, 13),
            "the step part: this look only"
        );
        assert!(
            out.reason.contains("the margin of errors changed"),
            "{}",
            out.reason
        );
        // The latency series was not edited: untouched.
        assert_eq!(out.state.series[1].step_generation, 0);

        // Editing back and forth restarts the step again, each time with less alpha.
        let again = evaluate_look(&s, &out.state, &counts, &ctx(1, 30, 210)).unwrap();
        assert_eq!(again.state.series[0].step_generation, 2);
        assert!(generation_weight(2) < generation_weight(1));
        let total: f64 = (0..64).map(generation_weight).sum();
        assert!(total <= 1.0 + 1e-12, "{total}");
    }

    #[test]
    fn a_tolerance_edit_restarts_the_series_with_a_smaller_share_of_alpha() {
        let s = spec();
        let worse = LookCounts {
            stage: arm(300.0, 9.0, 3.0),
            prod: arm(700.0, 7.0, 7.0),
        };
        let state = run(&s, &worse, 3, 30).pop().unwrap().state;
        let mut edited = s.clone();
        edited.metrics[0].tolerance = 1.2;
        let out = evaluate_look(&edited, &state, &worse, &ctx(1, 30, 120)).unwrap();
        let st = &out.state.series[0];
        assert_eq!((st.restarts, st.tolerance), (1, 1.2));
        assert!(out
            .reason
            .contains("its evidence restarted, with a smaller share of alpha"));
        // The same single look from scratch, as generation 0, gives more evidence: the
        // restarted process weighs less.
        let fresh =
            evaluate_look(&edited, &AnalysisState::default(), &worse, &ctx(1, 30, 120)).unwrap();
        assert!(out.metrics[0].e_value < fresh.metrics[0].e_value);
    }

    #[test]
    fn a_release_that_regresses_only_at_the_next_step_cannot_ride_on_the_step_before() {
        let s = spec();
        // Step 1: a long healthy step with much evidence that stage equals prod.
        let healthy = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let mut state = AnalysisState::default();
        for i in 1..=40 {
            state = evaluate_look(&s, &state, &healthy, &ctx(1, 30, 30 * i))
                .unwrap()
                .state;
        }
        // Step 2: stage now fails 1.67 times as often as prod, above the margin (1.5), on
        // less traffic. The rollout-wide likelihood still says "about 1.1x"; this step's own
        // evidence cannot prove "at most 1.5x", so it does not advance.
        let worse = LookCounts {
            stage: arm(600.0, 10.0, 6.0),
            prod: arm(400.0, 4.0, 4.0),
        };
        for i in 1..=12 {
            let out = evaluate_look(&s, &state, &worse, &ctx(2, 60, 30 * i)).unwrap();
            state = out.state;
            assert_ne!(out.verdict, Verdict::Advance, "look {i}: {}", out.reason);
        }
    }

    fn buckets(bounds: &[f64], n: f64, slow_fraction: impl Fn(f64) -> f64) -> Vec<Bucket> {
        bounds
            .iter()
            .map(|&le| Bucket {
                le_ms: le,
                count: if le.is_finite() {
                    n * (1.0 - slow_fraction(le))
                } else {
                    n
                },
            })
            .collect()
    }

    #[test]
    fn both_arms_are_compared_at_a_boundary_they_share() {
        // The same latency distribution under two bucket layouts: stage [100, 200], prod
        // [100, 250]. "Slower than 200 ms" against "slower than 250 ms" would look like a
        // regression; both are read at 100 ms.
        let slow = |le: f64| 0.02 * 100.0 / le;
        let mut s = spec();
        s.metrics[1].thresholds_ms = vec![250.0];
        let mut counts = LookCounts {
            stage: arm(5000.0, 50.0, 0.0),
            prod: arm(5000.0, 50.0, 0.0),
        };
        counts.stage.latency_buckets = buckets(&[100.0, 200.0, f64::INFINITY], 5000.0, slow);
        counts.prod.latency_buckets = buckets(&[100.0, 250.0, f64::INFINITY], 5000.0, slow);
        let outs = run(&s, &counts, 30, 50);
        assert_eq!(outs[0].metrics[1].boundary_ms, Some(100.0));
        assert!(outs.iter().all(|o| o.verdict != Verdict::Rollback));
        // Nothing shared at or below the threshold: an error naming the metric, not a guess.
        counts.stage.latency_buckets = buckets(&[200.0, f64::INFINITY], 5000.0, slow);
        counts.prod.latency_buckets = buckets(&[250.0, f64::INFINITY], 5000.0, slow);
        let err =
            evaluate_look(&s, &AnalysisState::default(), &counts, &ctx(1, 50, 30)).unwrap_err();
        assert!(
            matches!(err, AnalysisError::NoSharedBoundary { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("\"latency@250\""), "{err}");
    }

    #[test]
    fn the_latency_series_counts_requests_from_the_histogram_itself() {
        // The request counter ran one scrape ahead of the histogram (+Inf 1 lower per look,
        // within what validation allows): the latency series reads n from the histogram, so
        // the mismatch is no evidence against stage.
        let mut s = spec();
        s.metrics[1].thresholds_ms = vec![250.0];
        let mut counts = LookCounts {
            stage: arm(400.0, 0.0, 4.0),
            prod: arm(400.0, 0.0, 4.0),
        };
        counts.stage.requests = 401.0;
        // Two looks: the rollout's first is held back for the second.
        let out = &run(&s, &counts, 2, 50)[1];
        assert_eq!(out.metrics[1].stage_requests, 800);
        assert_eq!(out.metrics[0].stage_requests, 802);
    }

    #[test]
    fn a_count_beyond_2_pow_53_is_refused_and_totals_saturate() {
        let counts = LookCounts {
            stage: ArmCounts {
                requests: 1e16,
                ..ArmCounts::default()
            },
            prod: arm(10.0, 0.0, 0.0),
        };
        let err = evaluate_look(&spec(), &AnalysisState::default(), &counts, &ctx(1, 30, 30))
            .unwrap_err();
        assert!(matches!(err, AnalysisError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("stage.requests"), "{err}");
        let mut state = run(
            &spec(),
            &LookCounts {
                stage: arm(100.0, 1.0, 1.0),
                prod: arm(100.0, 1.0, 1.0),
            },
            1,
            30,
        )[0]
        .state
        .clone();
        state.series[0].stage_requests = u64::MAX - 5;
        let out = evaluate_look(
            &spec(),
            &state,
            &LookCounts {
                stage: arm(100.0, 1.0, 1.0),
                prod: arm(100.0, 1.0, 1.0),
            },
            &ctx(1, 30, 60),
        )
        .unwrap();
        assert_eq!(out.state.series[0].stage_requests, u64::MAX);
    }

    #[test]
    fn the_per_step_budget_is_split_over_the_steps_that_compare() {
        assert_eq!(comparative_steps(&[0, 30, 60, 100]), 2);
        assert_eq!(comparative_steps(&[0, 100]), 0);
        assert_eq!(comparative_steps(&[0, 5, 10, 25, 50, 100]), 4);
        let at = |steps: u32| {
            step_weight(&LookContext {
                comparative_steps: steps,
                ..ctx(1, 30, 30)
            })
        };
        assert_eq!(at(2), 0.25);
        assert_eq!(at(4) * 4.0, 0.5, "half the budget over all comparing steps");
        assert_eq!(at(0), 0.5);
    }

    #[test]
    fn a_burst_in_both_arms_is_pooled_with_the_next_look_before_it_is_judged() {
        let s = spec();
        let calm = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let mut state = AnalysisState::default();
        for i in 1..=3 {
            state = evaluate_look(&s, &state, &calm, &ctx(1, 30, 30 * i))
                .unwrap()
                .state;
        }
        // Scrape timing put stage's share of a shared burst in this look and prod's in the
        // next: on its own this look would be strong evidence against stage.
        let stage_half = LookCounts {
            stage: arm(3000.0, 330.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let out = evaluate_look(&s, &state, &stage_half, &ctx(1, 30, 120)).unwrap();
        assert_eq!(out.verdict, Verdict::Continue, "{}", out.reason);
        assert!(
            out.reason.contains("pooled with the next look"),
            "{}",
            out.reason
        );
        let held = out.state.series[0].held.clone().expect("held back");
        assert_eq!((held.looks, held.stage_bad), (1, 330));
        assert_eq!(out.state.series[0].stage_bad, 90, "not folded yet");
        let prod_half = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 770.0, 70.0),
        };
        let out = evaluate_look(&s, &out.state, &prod_half, &ctx(1, 30, 150)).unwrap();
        // Pooled, both halves together: a burst both arms shared, no evidence against stage.
        assert!(
            out.state.series[0].held.is_some(),
            "still above the rate: held again"
        );
        // The pool still jumps above the rollout's rate, so calm looks join it until the
        // cap, then the whole is folded at once.
        let mut out = out;
        let mut calm_looks = 0;
        while out.state.series[0].held.is_some() {
            calm_looks += 1;
            let at = ctx(1, 30, 150 + 30 * calm_looks);
            out = evaluate_look(&s, &out.state, &calm, &at).unwrap();
            assert_ne!(out.verdict, Verdict::Rollback, "{}", out.reason);
        }
        // Held: the two halves and all but the last calm look.
        assert_eq!(
            2 + calm_looks - 1,
            u64::from(MAX_HELD_LOOKS),
            "at most {MAX_HELD_LOOKS} looks held"
        );
        assert_eq!(
            out.state.series[0].stage_bad,
            90 + 330 + 30 + 30 * calm_looks
        );
        assert!(out.metrics[0].e_value < 1.0, "{:?}", out.metrics[0]);
    }

    #[test]
    fn a_burst_split_across_the_first_two_looks_is_summed_back_before_it_is_judged() {
        // The rollout's first look has no rate to compare with. Scrape timing put stage's
        // share of a burst in it and prod's in the next look: folded alone, the first look
        // would roll stage back at once.
        let s = spec();
        let stage_half = LookCounts {
            stage: arm(3000.0, 330.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let prod_half = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 770.0, 70.0),
        };
        let calm = LookCounts {
            stage: arm(3000.0, 30.0, 30.0),
            prod: arm(7000.0, 70.0, 70.0),
        };
        let mut state = AnalysisState::default();
        let looks = [&stage_half, &prod_half].into_iter().chain([&calm; 8]);
        for (i, counts) in looks.enumerate() {
            let out = evaluate_look(&s, &state, counts, &ctx(1, 30, 30 * (i as u64 + 1))).unwrap();
            assert_ne!(
                out.verdict,
                Verdict::Rollback,
                "look {}: {}",
                i + 1,
                out.reason
            );
            if i == 0 {
                assert!(out.held, "nothing to compare the first look with: held");
                assert_eq!(out.state.series[0].stage_bad, 0);
                // Held, not missing: the reason does not say "no requests".
                assert!(
                    out.reason
                        .starts_with("not known yet: the first look is judged together"),
                    "{}",
                    out.reason
                );
            }
            state = out.state;
        }
        let errors = &state.series[0];
        assert!(errors.held.is_none());
        assert_eq!(errors.stage_bad, 330 + 30 * 9, "every look folded");
        // A first look without a burst is folded with the second: one look late, no more.
        let mut state = AnalysisState::default();
        for i in 1..=2 {
            let out = evaluate_look(&s, &state, &calm, &ctx(1, 30, 30 * i)).unwrap();
            assert_eq!(out.held, i == 1);
            state = out.state;
        }
        assert_eq!(state.series[0].stage_bad, 60);
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
}

//! `canaryd analyze --input FILE`: evaluates one step from recorded counts, offline, with
//! the same engine the daemon uses. Counts in the file are cumulative since the step
//! started; each look is turned into the increment since the previous look.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::analysis::{
    at_max, comparative_steps, evaluate_look, stage_served, ArmCounts, AtMax, Bucket, LookContext,
    LookCounts, LookOutcome, RatioCounts,
};
use crate::api::{
    duration::HumanDuration, validate, AnalysisSpec, AnalysisState, CanarySpec, Verdict,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Input {
    /// The Canary's `spec.analysis` section.
    #[serde(default)]
    analysis: AnalysisSpec,
    /// Earliest `t` at which `advance` may be returned.
    #[serde(default)]
    min_duration: HumanDuration,
    /// Stage weight of the step (percent). Without it, each look's weight is read from its
    /// share of requests.
    #[serde(default)]
    stage_weight: Option<u8>,
    /// How many steps of the Canary compare stage with prod (weight strictly between 0
    /// and 100); the rollback's per-step budget is split among them. Default: 2, as in the
    /// default steps [0, 30, 60, 100].
    #[serde(default)]
    comparative_steps: Option<u32>,
    /// The step maximum: at the first look with `t` at or past it and no decision before,
    /// `analysis.atMax` decides (`advance`, `pause`, or keep comparing for `extendBy`).
    #[serde(default)]
    max_duration: Option<HumanDuration>,
    looks: Vec<InputLook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLook {
    /// Seconds since the step started.
    t: f64,
    stage: ArmCounts,
    prod: ArmCounts,
}

/// The decision over a recorded step, ready to print.
#[derive(Debug)]
pub struct Analysis {
    looks: Vec<(f64, LookOutcome)>,
    /// Index of the look that decided, if any.
    decided: Option<usize>,
    /// The decision of `analysis.atMax` at the step maximum, if it decided: `advance` or
    /// `pause`, and why.
    at_max: Option<(&'static str, String)>,
}

/// Exit code of a rollback decision with `--fail-on-rollback`.
pub(super) const ROLLBACK_EXIT: u8 = 1;

pub fn run(input: &str, explain: bool, fail_on_rollback: bool) -> ExitCode {
    let text = if input == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(input)
    };
    let result = text
        .map_err(|e| format!("{input}: {e}"))
        .and_then(|t| analyze(&t).map_err(|e| format!("{input}: {e}")));
    match result {
        Ok(a) => {
            if explain {
                print!("{}", a.explain());
            } else {
                println!("{}", a.to_json());
            }
            if fail_on_rollback && a.verdict() == Verdict::Rollback {
                ExitCode::from(ROLLBACK_EXIT)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("invalid input: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parses and evaluates an input document; the error says what is wrong and where.
pub fn analyze(text: &str) -> Result<Analysis, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let input: Input = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    check_spec(&input.analysis)?;
    if input.looks.is_empty() {
        return Err("looks is empty; give at least one look".into());
    }
    let mut state = AnalysisState::default();
    let mut looks = Vec::new();
    let mut prev: Option<&InputLook> = None;
    for (i, look) in input.looks.iter().enumerate() {
        let at = format!("looks[{i}] (t={})", look.t);
        if !look.t.is_finite() || look.t < 0.0 || prev.is_some_and(|p| look.t <= p.t) {
            return Err(format!(
                "{at}: t must be seconds since the step started, increasing from look to look"
            ));
        }
        let counts = LookCounts {
            stage: increment(&at, "stage", &look.stage, prev.map(|p| &p.stage))?,
            prod: increment(&at, "prod", &look.prod, prev.map(|p| &p.prod))?,
        };
        let ctx = LookContext {
            step: 1,
            stage_weight: input.stage_weight.unwrap_or_else(|| weight_of(&counts)),
            elapsed_in_step: Duration::from_secs_f64(look.t),
            min_duration: input.min_duration.0,
            comparative_steps: input
                .comparative_steps
                .unwrap_or_else(|| comparative_steps(&crate::api::default_steps())),
        };
        let out = evaluate_look(&input.analysis, &state, &counts, &ctx)
            .map_err(|e| format!("{at}: {e}"))?;
        state = out.state.clone();
        let decided = out.verdict != Verdict::Continue;
        let at_max = match input.max_duration {
            Some(max)
                if !decided
                    && look.t >= max.0.as_secs_f64()
                    && (1..100).contains(&ctx.stage_weight) =>
            {
                let over = Duration::from_secs_f64(look.t) - max.0;
                let served = stage_served(&state, ctx.step);
                match at_max(
                    &input.analysis.at_max,
                    max.0,
                    over,
                    &out.metrics,
                    out.held,
                    served,
                ) {
                    AtMax::Advance(why) => Some(("advance", why)),
                    AtMax::Pause(why) => Some(("pause", why)),
                    AtMax::Extend(_) => None,
                }
            }
            _ => None,
        };
        looks.push((look.t, out));
        if decided || at_max.is_some() {
            return Ok(Analysis {
                decided: Some(looks.len() - 1),
                looks,
                at_max,
            });
        }
        prev = Some(look);
    }
    Ok(Analysis {
        looks,
        decided: None,
        at_max: None,
    })
}

/// The checks the daemon applies to `spec.analysis`, reported with `analysis.` paths. The
/// rest of the Canary is a placeholder that passes, built from JSON so that it keeps up
/// with the spec's defaults.
fn check_spec(analysis: &AnalysisSpec) -> Result<(), String> {
    let env = |name: &str| json!({"host": format!("{name}.invalid"), "deployment": {"name": name}});
    let spec: CanarySpec = serde_json::from_value(json!({
        "virtualService": {"name": "analyze"},
        "prod": env("prod"),
        "stage": env("stage"),
        "analysis": analysis,
    }))
    .map_err(|e| format!("analysis: {e}"))?;
    match validate(&spec, "default") {
        Ok(()) => Ok(()),
        Err(errors) => {
            let lines: Vec<String> = errors
                .iter()
                .filter(|e| e.field.starts_with("spec.analysis"))
                .map(|e| e.to_string().replacen("spec.", "", 1))
                .collect();
            if lines.is_empty() {
                Ok(())
            } else {
                Err(lines.join("; "))
            }
        }
    }
}

/// Stage weight as seen in the counts: the share of requests, 0 or 100 when one arm is idle.
pub(super) fn weight_of(c: &LookCounts) -> u8 {
    let (s, p) = (c.stage.requests.round(), c.prod.requests.round());
    match (s > 0.0, p > 0.0) {
        (false, true) => 0,
        (true, false) => 100,
        (false, false) => 50,
        (true, true) => (100.0 * s / (s + p)).round().clamp(1.0, 99.0) as u8,
    }
}

/// This look's counts minus the previous look's: the increments the engine folds.
fn increment(
    at: &str,
    side: &str,
    cur: &ArmCounts,
    prev: Option<&ArmCounts>,
) -> Result<ArmCounts, String> {
    let Some(prev) = prev else {
        return Ok(cur.clone());
    };
    let diff = |field: &str, now: f64, before: f64| {
        let d = now - before;
        if d < 0.0 {
            Err(format!(
                "{at}: {side}.{field} went down from {before} to {now}; counts must be cumulative since the step started (a counter reset?)"
            ))
        } else {
            Ok(d)
        }
    };
    let mut out = ArmCounts {
        requests: diff("requests", cur.requests, prev.requests)?,
        errors: diff("errors", cur.errors, prev.errors)?,
        ..ArmCounts::default()
    };
    if !prev.latency_buckets.is_empty() && !cur.latency_buckets.is_empty() {
        let same = prev.latency_buckets.len() == cur.latency_buckets.len()
            && prev
                .latency_buckets
                .iter()
                .zip(&cur.latency_buckets)
                .all(|(a, b)| a.le_ms == b.le_ms);
        if !same {
            return Err(format!(
                "{at}: {side}.latency_buckets has other boundaries than the look before; keep the histogram's buckets"
            ));
        }
        for (i, (b, a)) in cur
            .latency_buckets
            .iter()
            .zip(&prev.latency_buckets)
            .enumerate()
        {
            out.latency_buckets.push(Bucket {
                le_ms: b.le_ms,
                count: diff(&format!("latency_buckets[{i}]"), b.count, a.count)?,
            });
        }
    } else {
        out.latency_buckets = cur.latency_buckets.clone();
    }
    for (name, r) in &cur.ratios {
        let before = prev.ratios.get(name).copied().unwrap_or_default();
        out.ratios.insert(
            name.clone(),
            RatioCounts {
                bad: diff(&format!("ratios.{name}.bad"), r.bad, before.bad)?,
                total: diff(&format!("ratios.{name}.total"), r.total, before.total)?,
            },
        );
    }
    Ok(out)
}

impl Analysis {
    /// The decision: that of the deciding look (`advance` at the step maximum too), else
    /// `continue` (also for `pause`, which is no verdict of the engine).
    pub fn verdict(&self) -> Verdict {
        match &self.at_max {
            Some(("advance", _)) => Verdict::Advance,
            Some(_) => Verdict::Continue,
            None => self.last().1.verdict,
        }
    }

    fn last(&self) -> &(f64, LookOutcome) {
        &self.looks[self.decided.unwrap_or(self.looks.len() - 1)]
    }

    /// The decision's name: a look's verdict, or `pause` from `analysis.atMax`.
    pub fn decision(&self) -> &'static str {
        match &self.at_max {
            Some((d, _)) => d,
            None => self.verdict().as_str(),
        }
    }

    fn reason(&self) -> &str {
        match &self.at_max {
            Some((_, why)) => why,
            None => &self.last().1.reason,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (t, _) = self.last();
        let looks: Vec<serde_json::Value> =
            self.looks.iter().map(|(t, o)| look_json(*t, o)).collect();
        let mut doc = json!({
            "decision": self.decision(),
            "decided_at": self.decided.map(|_| *t),
            "reason": self.reason(),
            "looks": looks,
        });
        if self.at_max.is_some() {
            doc["at_max"] = json!(true);
        }
        doc
    }

    /// The decision in plain words, for a person.
    pub fn explain(&self) -> String {
        let (t, out) = self.last();
        let mut s = match self.decided {
            Some(i) => format!(
                "Decision: {} at t={t}s (look {} of the recording{}).\n",
                self.decision(),
                i + 1,
                if self.at_max.is_some() {
                    ", at the step maximum"
                } else {
                    ""
                }
            ),
            None => format!(
                "Decision: continue. After {} look(s), up to t={t}s, nothing is proven yet.\n",
                self.looks.len()
            ),
        };
        s.push_str(&format!("Why: {}.\n", self.reason()));
        s.push_str("Per metric at that look:\n");
        s.push_str(&metric_lines(out));
        s
    }
}

/// One look as JSON: `{"t", "decision", "metrics": [{name, verdict, e_value, ratio_*}]}`.
pub(super) fn look_json(t: f64, o: &LookOutcome) -> serde_json::Value {
    let metrics: Vec<serde_json::Value> = o
        .metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "verdict": m.verdict.as_str(),
                "e_value": m.e_value,
                "ratio_lower": m.ratio_lower,
                "ratio_upper": m.ratio_upper,
                "detectable_ratio": m.detectable_ratio,
            })
        })
        .collect();
    json!({"t": t, "decision": o.verdict.as_str(), "metrics": metrics})
}

/// One line per metric of a look, in plain words.
pub(super) fn metric_lines(out: &LookOutcome) -> String {
    let mut s = String::new();
    for m in &out.metrics {
        let upper = m
            .ratio_upper
            .map_or("unbounded".to_string(), |u| format!("{u:.2}"));
        let rates = match (m.stage_rate, m.prod_rate) {
            (Some(a), Some(b)) => {
                format!("; bad: stage {:.3} %, prod {:.3} %", a * 100.0, b * 100.0)
            }
            (Some(a), None) => format!("; bad: stage {:.3} %", a * 100.0),
            _ => String::new(),
        };
        s.push_str(&format!(
            "  - {}: {}; evidence stage is worse {:.3} (rolls back at {}); stage/prod ratio between {:.2} and {upper} (advances below {}){rates}",
            m.name,
            m.verdict.as_str(),
            m.e_value,
            m.rollback_threshold,
            m.ratio_lower,
            m.margin,
        ));
        if !m.name.starts_with("slo:") {
            match m.detectable_ratio {
                Some(d) => s.push_str(&format!(
                    "; this step would have caught a regression of {d:.2}x or more"
                )),
                None => s.push_str("; too few bad events in this step to catch even 16x"),
            }
        }
        if let Some(b) = m.boundary_ms {
            s.push_str(&format!("; histogram boundary used: {b} ms"));
        }
        if let (Some(st), Some(pr)) = (m.stage_latency_ms, m.prod_latency_ms) {
            s.push_str(&format!(
                "; p50/p90/p99 stage {:.0}/{:.0}/{:.0} ms, prod {:.0}/{:.0}/{:.0} ms",
                st.p50, st.p90, st.p99, pr.p50, pr.p90, pr.p99
            ));
        }
        if let Some(c) = m.cles {
            s.push_str(&format!(
                "; a stage request is slower than a prod request with probability {c:.2}"
            ));
        }
        s.push('\n');
    }
    s
}

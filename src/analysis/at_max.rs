//! The decision at a step's maximum duration when the comparison has proven nothing either
//! way, under `analysis.atMax` (README, "At the step maximum").
//!
//! * `advance` (the default), without `detectableRatio`: the step advances. Stage was not
//!   proven worse; the decision states, per metric, the smallest regression the step's bad
//!   events would have caught (with probability `1 - beta`), so a person reading it knows
//!   what "not proven worse" was worth.
//! * `advance` with `detectableRatio` X: the step advances only once every compared metric's
//!   detectable ratio is at most X; it keeps comparing for up to `extendBy` past the maximum,
//!   then pauses. A step whose true ratio is X or more survives its rollback test with
//!   probability at most `beta` once that power is reached, so
//!   P(advancing a step whose ratio is at least X) <= alpha + beta: alpha for the advance
//!   proven within the margins, beta for the advance at the maximum.
//! * `pause`: wait for a person.
//!
//! Before an advance at the maximum, one more test: on the step's bad events, a single
//! one-sided binomial test that stage is worse than its tolerance, at `finalAlpha` split over
//! the compared metrics. A release that leans worse without proof (a regression too small
//! or too new for the running test) pauses instead of advancing; a healthy step pauses there
//! with probability at most `finalAlpha`. It never rolls back, so the rollback guarantee
//! (alpha) is untouched.
//!
//! Never on missing data: a step in which stage served no requests pauses, and a look held
//! back for pooling is judged first.

use std::time::Duration;

use super::explain::{series_words as words, sig2};
use crate::api::{AnalysisState, AtMaxAction, AtMaxPolicy, MetricReport};

/// What a step at (or past) its maximum does now.
#[derive(Clone, Debug, PartialEq)]
pub enum AtMax {
    Advance(String),
    /// Keep comparing (the reason says for what).
    Extend(String),
    Pause(String),
}

/// `max` is the step maximum, `over` how long the step has run past it, `metrics` the last
/// look's reports of this step, `held` whether a look is held back, `stage_served` whether
/// stage had requests during the step.
pub fn at_max(
    policy: &AtMaxPolicy,
    max: Duration,
    over: Duration,
    metrics: &[MetricReport],
    held: bool,
    stage_served: bool,
) -> AtMax {
    let max = humantime::format_duration(max);
    if policy.action == AtMaxAction::Pause {
        return AtMax::Pause(format!("no decision within {max} (atMax: pause)"));
    }
    if !stage_served {
        return AtMax::Pause(format!(
            "stage served no requests within {max}, so nothing was compared"
        ));
    }
    if held {
        return AtMax::Extend(format!(
            "step maximum {max} reached while a look is held back; judging it first"
        ));
    }
    let caught = power_summary(metrics, policy.beta);
    let advance = |why: String| match leaning(policy, metrics) {
        // One test, only where the step would otherwise advance: never repeated during an
        // extension, so a healthy step pauses here with probability at most finalAlpha.
        Some((name, p)) => AtMax::Pause(format!(
            "not proven worse within {max}, but {} leans worse: one test at the maximum \
             on this step's bad events gives p = {} (finalAlpha {})",
            words(name),
            p_text(p),
            policy.final_alpha
        )),
        None => AtMax::Advance(why),
    };
    let Some(x) = policy.detectable_ratio else {
        return advance(format!("not proven worse within {max}; {caught}"));
    };
    let reached = comparative(metrics).all(|m| m.detectable_ratio.is_some_and(|d| d <= x));
    let extend = humantime::format_duration(policy.extend_by.0);
    if reached {
        advance(format!(
            "not proven worse within {max}; {caught} (detectableRatio {x} reached)"
        ))
    } else if over < policy.extend_by.0 {
        AtMax::Extend(format!(
            "not proven worse within {max}, but {caught}; comparing for up to {extend} more \
             until a regression of {x}x would be caught"
        ))
    } else {
        AtMax::Pause(format!(
            "not proven worse within {max} and {extend} more, but {caught}: a regression of \
             {x}x (detectableRatio) would not have been caught"
        ))
    }
}

/// The first compared metric whose final test rejects at `finalAlpha` split over the compared
/// metrics, with its p-value.
fn leaning<'a>(policy: &AtMaxPolicy, metrics: &'a [MetricReport]) -> Option<(&'a str, f64)> {
    let compared = comparative(metrics).count().max(1) as f64;
    comparative(metrics).find_map(|m| {
        m.worse_p_value
            .filter(|&p| p <= policy.final_alpha / compared)
            .map(|p| (m.name.as_str(), p))
    })
}

/// Whether stage served requests during `step`, by the analysis state: the `stage_served`
/// argument of [`at_max`].
pub fn stage_served(state: &AnalysisState, step: u32) -> bool {
    state
        .series
        .iter()
        .any(|s| s.step == step && s.step_stage_requests > 0)
}

fn comparative(metrics: &[MetricReport]) -> impl Iterator<Item = &MetricReport> {
    metrics.iter().filter(|m| !m.name.starts_with("slo:"))
}

/// "with 80 % power this step would have caught errors at 1.7x or worse, latency (slower than 250 ms) ...".
pub fn power_summary(metrics: &[MetricReport], beta: f64) -> String {
    let parts: Vec<String> = comparative(metrics)
        .map(|m| match m.detectable_ratio {
            Some(d) => format!("{} at {}x or worse", words(&m.name), sig2(d)),
            None => format!("{} not even at 16x (too few bad events)", words(&m.name)),
        })
        .collect();
    if parts.is_empty() {
        return "nothing is compared".into();
    }
    format!(
        "with {:.0} % power this step would have caught {}",
        (1.0 - beta) * 100.0,
        parts.join(", ")
    )
}

/// A p-value with two significant digits: 0.0042, 1.2e-7.
fn p_text(p: f64) -> String {
    if p >= 1e-4 {
        format!("{}", (p * 1e4).round() / 1e4)
    } else {
        format!("{p:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, detectable: Option<f64>) -> MetricReport {
        MetricReport {
            name: name.into(),
            detectable_ratio: detectable,
            ..MetricReport::default()
        }
    }

    const MAX: Duration = Duration::from_secs(900);

    #[test]
    fn the_default_advances_and_says_what_the_step_could_have_caught() {
        let policy = AtMaxPolicy::default();
        let metrics = [
            report("errors", Some(1.68)),
            report("latency@250", None),
            report("slo:maxErrorRate", None),
        ];
        let AtMax::Advance(why) = at_max(&policy, MAX, Duration::ZERO, &metrics, false, true)
        else {
            panic!("expected an advance");
        };
        assert_eq!(
            why,
            "not proven worse within 15m; with 80 % power this step would have caught \
             errors at 1.7x or worse, latency (slower than 250 ms) not even at 16x (too few bad \
             events)"
        );
    }

    #[test]
    fn missing_traffic_pause_policy_and_held_looks_never_advance() {
        let policy = AtMaxPolicy::default();
        let metrics = [report("errors", Some(1.2))];
        let no_traffic = at_max(&policy, MAX, Duration::ZERO, &metrics, false, false);
        assert!(matches!(no_traffic, AtMax::Pause(ref w) if w.contains("no requests")));
        let held = at_max(&policy, MAX, Duration::ZERO, &metrics, true, true);
        assert!(matches!(held, AtMax::Extend(_)));
        let pause = AtMaxPolicy {
            action: AtMaxAction::Pause,
            ..policy
        };
        let paused = at_max(&pause, MAX, Duration::ZERO, &metrics, false, true);
        assert!(matches!(paused, AtMax::Pause(ref w) if w.contains("atMax: pause")));
    }

    #[test]
    fn a_release_that_leans_worse_at_the_maximum_pauses_instead_of_advancing() {
        let policy = AtMaxPolicy::default();
        let leaning = |p: f64| MetricReport {
            worse_p_value: Some(p),
            ..report("errors", Some(1.7))
        };
        // Two compared metrics: the 1 % is split, 0.5 % each.
        let metrics = [leaning(0.004), report("latency@250", Some(2.0))];
        let AtMax::Pause(why) = at_max(&policy, MAX, Duration::ZERO, &metrics, false, true) else {
            panic!("expected a pause");
        };
        assert_eq!(
            why,
            "not proven worse within 15m, but errors leans worse: one test at the maximum on \
             this step's bad events gives p = 0.004 (finalAlpha 0.01)"
        );
        let metrics = [leaning(0.006), report("latency@250", Some(2.0))];
        assert!(matches!(
            at_max(&policy, MAX, Duration::ZERO, &metrics, false, true),
            AtMax::Advance(_)
        ));
        // During a detectableRatio extension the test waits for the step to be ready to
        // advance: it is run once, not at every look.
        let extending = AtMaxPolicy {
            detectable_ratio: Some(1.5),
            ..policy
        };
        let metrics = [leaning(0.001)];
        assert!(matches!(
            at_max(&extending, MAX, Duration::ZERO, &metrics, false, true),
            AtMax::Extend(_)
        ));
        let off = AtMaxPolicy {
            final_alpha: 0.0,
            ..policy
        };
        let metrics = [leaning(1e-9)];
        assert!(matches!(
            at_max(&off, MAX, Duration::ZERO, &metrics, false, true),
            AtMax::Advance(_)
        ));
    }

    #[test]
    fn a_detectable_ratio_extends_the_step_then_pauses() {
        let policy = AtMaxPolicy {
            detectable_ratio: Some(2.0),
            ..AtMaxPolicy::default()
        };
        let weak = [report("errors", Some(2.4))];
        let strong = [report("errors", Some(1.7))];
        let early = Duration::from_secs(60);
        assert!(matches!(
            at_max(&policy, MAX, early, &weak, false, true),
            AtMax::Extend(ref w) if w.contains("up to 15m more")
        ));
        assert!(matches!(
            at_max(&policy, MAX, early, &strong, false, true),
            AtMax::Advance(ref w) if w.contains("detectableRatio 2 reached")
        ));
        let late = policy.extend_by.0;
        assert!(matches!(
            at_max(&policy, MAX, late, &weak, false, true),
            AtMax::Pause(ref w) if w.contains("would not have been caught")
        ));
        let none = [report("errors", None)];
        assert!(matches!(
            at_max(&policy, MAX, late, &none, false, true),
            AtMax::Pause(_)
        ));
    }
}

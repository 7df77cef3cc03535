//! Input checks: [`AnalysisError`], and the checks that one arm's counts can be counts of
//! requests at all (finite, not negative, bad within total, cumulative buckets ending at +Inf).

use super::counts::ArmCounts;

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
    #[error("look {look}: stage and prod share no bucket boundary at or below {threshold_ms} ms, needed by \"{metric}\" (each arm must be asked the same question); give both the same buckets, or choose a threshold at a boundary both have")]
    NoSharedBoundary {
        look: u32,
        metric: String,
        threshold_ms: f64,
    },
    #[error("look {look}: {field} is {value}, more than 2^53 (9.0e15): not an exact count; was a counter's value read instead of a window's increment?")]
    TooLarge {
        look: u32,
        field: String,
        value: f64,
    },
    #[error("look {look}: {field} has no bucket boundary at or below {threshold_ms} ms, needed by \"{metric}\"; lower the threshold or add buckets")]
    NoBoundary {
        look: u32,
        field: String,
        metric: String,
        threshold_ms: f64,
    },
}

/// The largest count an f64 holds exactly (2^53); a window's count above it is no count.
pub const MAX_EXACT_COUNT: f64 = 9_007_199_254_740_992.0;

/// Checks that `arm` holds counts of requests; `side` ("stage" or "prod") prefixes the
/// field an error names.
pub(super) fn validate_arm(look: u32, side: &str, arm: &ArmCounts) -> Result<(), AnalysisError> {
    // Field names are formatted only for an error: this runs on every look.
    let count = |field: &dyn Fn() -> String, value: f64| {
        if value.is_finite() && value > MAX_EXACT_COUNT {
            Err(AnalysisError::TooLarge {
                look,
                field: field(),
                value,
            })
        } else if value.is_finite() && value >= 0.0 {
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
    // Requests and buckets are separate series (a scrape may catch one a request ahead of the
    // other); the latency series count their requests from the histogram itself.
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
    use crate::analysis::evaluate::tests::{arm, ctx, spec};
    use crate::analysis::{evaluate_look, LookCounts, RatioCounts};
    use crate::api::{AnalysisState, MetricKind};

    /// Through `evaluate_look`, so the errors raised while reading a series' counts (missing
    /// buckets or ratios, no usable boundary) are covered with the checks here.
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

//! Series planning: which series a spec yields, in a fixed order (one per errorRate or ratio
//! metric, one per latency threshold, one per SLO guardrail), and how the rollback's alpha is
//! split among them.

use crate::api::{AnalysisSpec, MetricKind};

/// The series a spec compares, in a fixed order.
pub(super) struct SeriesSpec<'a> {
    pub(super) name: String,
    pub(super) source: Source<'a>,
    /// Comparative: (tolerance, margin). Guardrail: (limit on the stage rate, unused).
    pub(super) tolerance: f64,
    pub(super) margin: f64,
}

/// Which counts of a look a series reads.
pub(super) enum Source<'a> {
    Errors,
    Latency {
        threshold_ms: f64,
    },
    Ratio {
        metric: &'a str,
    },
    SloErrors,
    SloLatency {
        limit_ms: f64,
    },
    /// The shift part of latency series `parent`'s rollback test: requests slower than the
    /// largest boundary both arms share at or below `at_ms` (a fraction of the threshold).
    /// Its evidence adds to the parent's; it is never reported or advanced on by itself.
    LatencyShift {
        at_ms: f64,
        parent: usize,
    },
}

impl Source<'_> {
    pub(super) fn is_guardrail(&self) -> bool {
        matches!(self, Source::SloErrors | Source::SloLatency { .. })
    }

    /// The parent series of a shift series.
    pub(super) fn shift_of(&self) -> Option<usize> {
        match self {
            Source::LatencyShift { parent, .. } => Some(*parent),
            _ => None,
        }
    }
}

/// Where a latency threshold's shift series count slow requests, as fractions of the
/// threshold, and the weight of each in the latency rollback test (the threshold's own
/// evidence weighs [`THRESHOLD_WEIGHT`]; the weights sum to 1).
pub(super) const SHIFT_POINTS: [(f64, f64); 2] = [(0.5, 0.25), (0.25, 0.25)];
pub(super) const THRESHOLD_WEIGHT: f64 = 0.5;

pub(super) fn series_of(spec: &AnalysisSpec) -> Vec<SeriesSpec<'_>> {
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
    // The shift series of every latency threshold, after all the series that are reported.
    let parents: Vec<(usize, f64, f64, f64)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s.source {
            Source::Latency { threshold_ms } => Some((i, threshold_ms, s.tolerance, s.margin)),
            _ => None,
        })
        .collect();
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
    for (parent, threshold_ms, tolerance, margin) in parents {
        for (fraction, _) in SHIFT_POINTS {
            out.push(SeriesSpec {
                name: format!("{}<{}", out[parent].name, fraction),
                source: Source::LatencyShift {
                    at_ms: threshold_ms * fraction,
                    parent,
                },
                tolerance,
                margin,
            });
        }
    }
    out
}

/// The e-value at which one series rolls back: Bonferroni over the spec's series, so that
/// together they roll back a release that is not worse with probability at most alpha. A spec
/// with no series still uses 1 / alpha.
pub(super) fn rollback_threshold(alpha: f64, series: usize) -> f64 {
    series.max(1) as f64 / alpha
}

//! One evaluation of one look for a Canary with 3 metrics (error rate, a latency threshold,
//! a custom ratio), with a state that has already folded 20 looks, as the daemon runs it
//! every interval. Run: `cargo bench --bench look`.

use std::hint::black_box;
use std::time::Duration;

use canaryd::analysis::{evaluate_look, ArmCounts, Bucket, LookContext, LookCounts, RatioCounts};
use canaryd::api::{AnalysisSpec, AnalysisState, MetricKind, MetricSpec};
use criterion::{criterion_group, criterion_main, Criterion};

/// Istio's default duration buckets (ms).
const ISTIO_BUCKETS: [f64; 19] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn arm(requests: f64, errors: f64, slow_share: f64) -> ArmCounts {
    let mut buckets: Vec<Bucket> = ISTIO_BUCKETS
        .iter()
        .map(|&le| {
            let below = 1.0 - (-(le / 60.0)).exp() * (1.0 + slow_share);
            Bucket {
                le_ms: le,
                count: (requests * below.clamp(0.0, 1.0)).floor(),
            }
        })
        .collect();
    buckets.push(Bucket {
        le_ms: f64::INFINITY,
        count: requests,
    });
    let mut arm = ArmCounts {
        requests,
        errors,
        latency_buckets: buckets,
        ..ArmCounts::default()
    };
    arm.ratios.insert(
        "checkout".into(),
        RatioCounts {
            bad: errors / 2.0,
            total: requests / 3.0,
        },
    );
    arm
}

fn bench_look(c: &mut Criterion) {
    let mut spec = AnalysisSpec::default();
    spec.metrics[1].thresholds_ms = vec![250.0];
    spec.metrics.push(MetricSpec {
        name: "checkout".into(),
        kind: MetricKind::Ratio,
        margin: 1.2,
        tolerance: 1.0,
        thresholds_ms: vec![],
        bad: Some("bad".into()),
        total: Some("total".into()),
    });
    let counts = LookCounts {
        stage: arm(452.0, 5.0, 0.01),
        prod: arm(1048.0, 10.0, 0.0),
    };
    let ctx = LookContext {
        step: 1,
        stage_weight: 30,
        elapsed_in_step: Duration::from_secs(600),
        min_duration: Duration::from_secs(120),
        comparative_steps: 2,
    };
    let mut state = AnalysisState::default();
    for _ in 0..20 {
        state = evaluate_look(&spec, &state, &counts, &ctx).unwrap().state;
    }
    c.bench_function("evaluate_look, 3 metrics", |b| {
        b.iter(|| {
            evaluate_look(
                black_box(&spec),
                black_box(&state),
                black_box(&counts),
                &ctx,
            )
        })
    });
}

criterion_group!(benches, bench_look);
criterion_main!(benches);

//! A/A property: whatever the traffic, base rates, drift and bursts, a release identical to
//! prod is rolled back in at most alpha of whole multi-step rollouts.

use std::cell::Cell;
use std::time::Duration;

use canaryd::analysis::{evaluate_look, ArmCounts, Bucket, LookContext, LookCounts};
use canaryd::api::{AnalysisSpec, AnalysisState, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};

pub(crate) const ALPHA: f64 = 0.01;
const ROLLOUTS_PER_CASE: u32 = 30;
const CASES: u32 = 100;

#[derive(Clone, Debug)]
struct Scenario {
    rps: f64,
    error_rate: f64,
    slow_rate: f64,
    drift: f64,
    bursts: bool,
    seed: u64,
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    (
        5.0..500.0f64,
        0.001..0.05f64,
        0.001..0.05f64,
        0.0..0.9f64,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(rps, error_rate, slow_rate, drift, bursts, seed)| Scenario {
                rps,
                error_rate,
                slow_rate,
                drift,
                bursts,
                seed,
            },
        )
}

fn arm(rng: &mut StdRng, n: u64, p_err: f64, p_slow: f64) -> ArmCounts {
    let draw = |rng: &mut StdRng, p: f64| Binomial::new(n, p.min(1.0)).unwrap().sample(rng) as f64;
    let slow = draw(rng, p_slow);
    ArmCounts {
        requests: n as f64,
        errors: draw(rng, p_err),
        latency_buckets: vec![
            Bucket {
                le_ms: 250.0,
                count: n as f64 - slow,
            },
            Bucket {
                le_ms: f64::INFINITY,
                count: n as f64,
            },
        ],
        ..ArmCounts::default()
    }
}

/// One healthy rollout over the 30 % and 60 % steps (30 s looks, 2 to 20 minutes per step);
/// true when it was rolled back. Stage's error rate is `stage_factor` times prod's.
fn rolled_back(spec: &AnalysisSpec, s: &Scenario, stage_factor: f64, rng: &mut StdRng) -> bool {
    let mut state = AnalysisState::default();
    let mut t = 0.0f64;
    for (step, weight) in [(1u32, 30u8), (2, 60)] {
        for look in 1..=40u64 {
            t += 30.0;
            let wave = 1.0 + s.drift * (t / 1200.0 * std::f64::consts::TAU).sin();
            let burst = if s.bursts && rng.random_bool(0.03) {
                20.0
            } else {
                1.0
            };
            // The realised split wanders around the configured weight.
            let share = (weight as f64 / 100.0 * rng.random_range(0.7..1.3)).min(0.95);
            let mean = s.rps * wave * 30.0;
            let n_s = Poisson::new(mean * share).unwrap().sample(rng) as u64;
            let n_p = Poisson::new(mean * (1.0 - share)).unwrap().sample(rng) as u64;
            let (pe, ps) = (s.error_rate * wave * burst, s.slow_rate * wave);
            let counts = LookCounts {
                stage: arm(rng, n_s, pe * stage_factor, ps),
                prod: arm(rng, n_p, pe, ps),
            };
            let ctx = LookContext {
                step,
                stage_weight: weight,
                elapsed_in_step: Duration::from_secs(30 * look),
                min_duration: Duration::from_secs(120),
                comparative_steps: 2,
            };
            let out = evaluate_look(spec, &state, &counts, &ctx).unwrap();
            assert!(out.metrics.iter().all(|m| m.e_value.is_finite()));
            match out.verdict {
                Verdict::Rollback => return true,
                Verdict::Advance => break,
                Verdict::Continue => state = out.state,
            }
        }
    }
    false
}

/// The analysis every A/A test runs: errors and latency over 250 ms at alpha 1 %.
pub(crate) fn spec() -> AnalysisSpec {
    let mut spec = AnalysisSpec {
        alpha: ALPHA,
        ..AnalysisSpec::default()
    };
    spec.metrics[1].thresholds_ms = vec![250.0];
    spec
}

/// Rollouts run and rollouts rolled back over `cases` random scenarios.
fn rollback_count(stage_factor: f64, cases: u32) -> (f64, f64) {
    let spec = spec();
    let (runs, rollbacks) = (Cell::new(0u32), Cell::new(0u32));
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(&scenarios(), |s| {
            let mut rng = StdRng::seed_from_u64(s.seed);
            for _ in 0..ROLLOUTS_PER_CASE {
                runs.set(runs.get() + 1);
                if rolled_back(&spec, &s, stage_factor, &mut rng) {
                    rollbacks.set(rollbacks.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    (runs.get() as f64, rollbacks.get() as f64)
}

#[test]
fn identical_releases_are_rolled_back_in_at_most_alpha_of_rollouts() {
    let (n, k) = rollback_count(1.0, CASES);
    // Allow three binomial standard deviations of sampling noise above alpha.
    let limit = n * ALPHA + 3.0 * (n * ALPHA * (1.0 - ALPHA)).sqrt();
    println!(
        "A/A: {k} false rollbacks in {n} rollouts ({:.2} %), alpha {ALPHA}",
        100.0 * k / n
    );
    assert!(k <= limit, "{k} false rollbacks in {n} rollouts");
}

#[test]
fn the_same_harness_catches_a_tripled_error_rate() {
    // Guards the A/A test against passing because nothing is ever rolled back.
    let (n, k) = rollback_count(3.0, CASES / 5);
    println!("3x: {k} rollbacks in {n} rollouts");
    assert!(k >= 0.8 * n, "only {k} of {n} caught");
}

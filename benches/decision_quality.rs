//! Decision quality of canaryd's analysis against three baselines, on simulated rollouts
//! with known truth. Run: `cargo bench --bench decision_quality` (5000 rollouts per family
//! and policy; 1000 simulate in about 25 s on 2 cores; add `-- --rollouts 200` for a quick
//! pass). Prints two Markdown tables (every policy, then the decision at the step maximum
//! side by side); BENCHMARKS.md explains them.
//!
//! A rollout goes through the 30 % and 60 % steps with 30 s looks (step 0 is the synthetic
//! checks, not simulated; reaching 100 % is full promotion, where prod gets no traffic and
//! nothing can be compared). Every policy sees the same generated traffic: the counts of a
//! 30 s slot are drawn from a random stream keyed by (family, rollout, slot), so two policies
//! at the same weight at the same time see identical requests.
//!
//! Policies (baselines implemented from their public descriptions):
//! * canaryd: `evaluate_look`, alpha 1 %, errors and requests slower than 250 ms, margin 1.5,
//!   step duration min 2 m; at the first look at or past the step maximum without a decision,
//!   `at_max` decides, as the lifecycle does. Three `analysis.atMax` policies:
//!   `pause` with a 30 m maximum (the rollout waits for a human: "stalled"); `advance` (the
//!   default) with 15 m; `advance` with `detectableRatio: 2` and 15 m, extended by up to
//!   15 m. A step advanced by `at_max` was not proven within its margins; the tables count
//!   the promotions that had such a step. Both `advance` policies keep the default
//!   `finalAlpha` (0.01): a step whose bad events lean worse on one final binomial test pauses
//!   ("stalled") instead of advancing.
//! * Flagger-style: every minute, stage alone against fixed thresholds (error rate at most
//!   twice prod's nominal rate, p99 at most 500 ms); no stage data is a failed check; roll
//!   back at the 5th failed check of the rollout; otherwise advance after 10 minutes.
//! * Kayenta-style: each 30 s look is one data point per arm (error rate, p99); every look
//!   re-judges all points of the step so far with a two-sided Mann-Whitney test at 98 %
//!   confidence; a metric fails when significant and stage's mean is over 1.25x prod's; any
//!   failed metric (score 50 < 75) rolls back; otherwise advance after 10 minutes.
//! * Naive z-test: every look, a one-sided two-proportion z-test at 1 % on the step's
//!   cumulative counts of each metric, without any correction for repeated looks; otherwise
//!   advance after 10 minutes.

use std::time::Duration;

use canaryd::analysis::{at_max, evaluate_look, ArmCounts, AtMax, Bucket, LookContext, LookCounts};
use canaryd::api::{AnalysisSpec, AnalysisState, AtMaxAction, AtMaxPolicy, Verdict};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};
use statrs::distribution::{ContinuousCDF, Normal};

const LOOK_S: u64 = 30;
const STEPS: [(u32, u8); 2] = [(1, 30), (2, 60)];
const CANARYD_MIN_S: u64 = 120;
const CANARYD_PAUSE: &str = "canaryd (atMax pause, 30m)";
const CANARYD_ADVANCE: &str = "canaryd (atMax advance, 15m)";
const CANARYD_DETECTABLE: &str = "canaryd (detectableRatio 2, 15m+15m)";
const FLAGGER: &str = "Flagger-style";
const KAYENTA: &str = "Kayenta-style";
const BASELINE_STEP_S: u64 = 600;
/// Bucket boundaries (ms) of the simulated histograms; the last is +Inf.
const LE: [f64; 8] = [
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    f64::INFINITY,
];
const SLOW_IDX: usize = 3; // requests slower than 250 ms
const LAT_MEDIAN_MS: f64 = 50.0;
const LAT_SIGMA: f64 = 0.7;

#[derive(Clone, Copy, PartialEq)]
enum Truth {
    Healthy,
    Bad,
    NoStageTraffic,
}

#[derive(Clone)]
struct Family {
    name: &'static str,
    truth: Truth,
    rps: f64,
    base_error: f64,
    error_factor: f64,
    latency_factor: f64,
    tail_share: f64,
    /// The stage's regression (error_factor) applies only at weights at or above this one.
    regress_from_weight: u8,
    diurnal: bool,
    bursts: bool,
    allocation_shift: bool,
}

impl Family {
    fn new(name: &'static str, truth: Truth) -> Self {
        Family {
            name,
            truth,
            rps: 50.0,
            base_error: 0.01,
            error_factor: 1.0,
            latency_factor: 1.0,
            tail_share: 0.0,
            regress_from_weight: 0,
            diurnal: false,
            bursts: false,
            allocation_shift: false,
        }
    }
}

fn families() -> Vec<Family> {
    use Truth::*;
    let f = Family::new;
    vec![
        f("healthy, steady, 50 req/s", Healthy),
        Family {
            rps: 1.0,
            ..f("healthy, steady, 1 req/s", Healthy)
        },
        Family {
            rps: 5.0,
            ..f("healthy, steady, 5 req/s", Healthy)
        },
        Family {
            rps: 20.0,
            ..f("healthy, steady, 20 req/s", Healthy)
        },
        Family {
            rps: 500.0,
            ..f("healthy, steady, 500 req/s", Healthy)
        },
        Family {
            base_error: 0.001,
            ..f("healthy, base rate 0.1 %", Healthy)
        },
        Family {
            base_error: 0.0001,
            ..f("healthy, base rate 0.01 %", Healthy)
        },
        Family {
            diurnal: true,
            ..f("healthy, diurnal drift", Healthy)
        },
        Family {
            bursts: true,
            ..f("healthy, bursts in both arms", Healthy)
        },
        Family {
            allocation_shift: true,
            ..f("healthy, allocation shifts mid-step", Healthy)
        },
        Family {
            error_factor: 0.8,
            latency_factor: 0.9,
            ..f("healthy, stage slightly better", Healthy)
        },
        Family {
            error_factor: 1.5,
            ..f("bad, errors 1.5x", Bad)
        },
        Family {
            error_factor: 2.0,
            ..f("bad, errors 2x", Bad)
        },
        Family {
            error_factor: 5.0,
            ..f("bad, errors 5x", Bad)
        },
        Family {
            error_factor: 2.0,
            rps: 5.0,
            ..f("bad, errors 2x, 5 req/s", Bad)
        },
        Family {
            error_factor: 2.0,
            rps: 500.0,
            ..f("bad, errors 2x, 500 req/s", Bad)
        },
        Family {
            error_factor: 1.6,
            regress_from_weight: 60,
            ..f("bad only at 60 %, errors 1.6x", Bad)
        },
        Family {
            error_factor: 2.0,
            regress_from_weight: 60,
            ..f("bad only at 60 %, errors 2x", Bad)
        },
        Family {
            latency_factor: 1.2,
            ..f("bad, latency +20 %", Bad)
        },
        Family {
            latency_factor: 1.5,
            ..f("bad, latency +50 %", Bad)
        },
        Family {
            tail_share: 0.025,
            ..f("bad, +500 ms tail on 2.5 %", Bad)
        },
        f("no stage traffic", NoStageTraffic),
    ]
}

/// Per-bucket (not cumulative) probabilities of one arm's latency.
fn bucket_probs(latency_factor: f64, tail_share: f64) -> [f64; 8] {
    let n = Normal::new(0.0, 1.0).unwrap();
    let mu = (LAT_MEDIAN_MS * latency_factor).ln();
    let cdf = |le: f64| {
        if le.is_infinite() {
            return 1.0;
        }
        let body = n.cdf((le.ln() - mu) / LAT_SIGMA);
        let tail = if le > 500.0 {
            n.cdf(((le - 500.0).ln() - mu) / LAT_SIGMA)
        } else {
            0.0
        };
        (1.0 - tail_share) * body + tail_share * tail
    };
    let mut out = [0.0; 8];
    let mut prev = 0.0;
    for (o, le) in out.iter_mut().zip(LE) {
        let c = cdf(le);
        *o = c - prev;
        prev = c;
    }
    out
}

#[derive(Clone, Copy, Default)]
struct Arm {
    n: u64,
    errors: u64,
    hist: [u64; 8],
}

impl Arm {
    fn slow(&self) -> u64 {
        self.hist[SLOW_IDX + 1..].iter().sum()
    }

    fn counts(&self) -> ArmCounts {
        let mut cum = 0;
        ArmCounts {
            requests: self.n as f64,
            errors: self.errors as f64,
            latency_buckets: LE
                .iter()
                .zip(self.hist)
                .map(|(&le_ms, c)| {
                    cum += c;
                    Bucket {
                        le_ms,
                        count: cum as f64,
                    }
                })
                .collect(),
            ..ArmCounts::default()
        }
    }

    /// p99 interpolated within buckets, as PromQL's histogram_quantile; None without data.
    fn p99(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = 0.99 * self.n as f64;
        let (mut lo, mut cum) = (0.0, 0.0);
        for (le, c) in LE.iter().zip(self.hist) {
            let next = cum + c as f64;
            if next >= rank && c > 0 {
                return Some(if le.is_infinite() {
                    lo
                } else {
                    lo + (le - lo) * (rank - cum) / c as f64
                });
            }
            cum = next;
            if le.is_finite() {
                lo = *le;
            }
        }
        Some(lo)
    }

    fn add(&mut self, o: &Arm) {
        self.n += o.n;
        self.errors += o.errors;
        for (a, b) in self.hist.iter_mut().zip(o.hist) {
            *a += b;
        }
    }
}

struct World {
    family: Family,
    index: u64,
    stage_probs: [f64; 8],
    prod_probs: [f64; 8],
}

impl World {
    fn new(family: Family, index: u64) -> Self {
        World {
            stage_probs: bucket_probs(family.latency_factor, family.tail_share),
            prod_probs: bucket_probs(1.0, 0.0),
            family,
            index,
        }
    }

    /// The traffic of one 30 s slot of one rollout at a given configured weight.
    fn slot(&self, rollout: u64, slot: u64, weight: u8, elapsed_in_step: u64) -> (Arm, Arm) {
        let f = &self.family;
        let seed = (self.index << 48) ^ (rollout << 20) ^ slot;
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let t = (slot * LOOK_S) as f64;
        let phase = (rollout as f64 * 0.618).fract() * std::f64::consts::TAU;
        let load = if f.diurnal {
            1.0 + 0.5 * (t / 3600.0 * std::f64::consts::TAU + phase).sin()
        } else {
            1.0
        };
        let burst = if f.bursts && rng.random_bool(0.05) {
            0.10
        } else {
            0.0
        };
        let mut share = weight as f64 / 100.0;
        if f.allocation_shift && elapsed_in_step > 300 {
            share = (share * 1.5).min(0.95);
        }
        if f.truth == Truth::NoStageTraffic {
            share = 0.0;
        }
        let total = Poisson::new(f.rps * load * LOOK_S as f64)
            .unwrap()
            .sample(&mut rng) as u64;
        let n_s = Binomial::new(total, share).unwrap().sample(&mut rng);
        let p = (f.base_error * load + burst).min(1.0);
        let draw = |rng: &mut StdRng, n: u64, p_err: f64, probs: &[f64; 8]| {
            let mut arm = Arm {
                n,
                errors: Binomial::new(n, p_err.min(1.0)).unwrap().sample(rng),
                hist: [0; 8],
            };
            let (mut left, mut mass) = (n, 1.0);
            for (h, &pb) in arm.hist.iter_mut().zip(probs) {
                if left == 0 || mass <= 0.0 {
                    break;
                }
                let c = Binomial::new(left, (pb / mass).clamp(0.0, 1.0))
                    .unwrap()
                    .sample(rng);
                *h = c;
                left -= c;
                mass -= pb;
            }
            arm.hist[7] += left;
            arm
        };
        let factor = if weight >= f.regress_from_weight {
            f.error_factor
        } else {
            1.0
        };
        let stage = draw(&mut rng, n_s, p * factor, &self.stage_probs);
        let prod = draw(&mut rng, total - n_s, p, &self.prod_probs);
        (stage, prod)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Decision {
    Continue,
    /// Proven, or (baselines) the fixed step length is over.
    Advance,
    /// canaryd at the step maximum, not proven within the margins.
    AdvanceAtMax,
    Rollback,
    /// The rollout waits for a human.
    Stall,
}

/// A policy sees one look at a time; `reset_step` is called when a step starts.
trait Policy {
    fn reset_rollout(&mut self);
    fn reset_step(&mut self);
    fn look(&mut self, step: u32, weight: u8, elapsed_s: u64, stage: &Arm, prod: &Arm) -> Decision;
    /// The step maximum: a rollback after it was caught while the step was extended.
    fn max_step_s(&self) -> u64;
}

struct Canaryd {
    spec: AnalysisSpec,
    state: AnalysisState,
    max_s: u64,
}

impl Policy for Canaryd {
    fn reset_rollout(&mut self) {
        self.state = AnalysisState::default();
    }
    fn reset_step(&mut self) {}
    fn look(&mut self, step: u32, weight: u8, elapsed_s: u64, stage: &Arm, prod: &Arm) -> Decision {
        let counts = LookCounts {
            stage: stage.counts(),
            prod: prod.counts(),
        };
        let ctx = LookContext {
            step,
            stage_weight: weight,
            elapsed_in_step: Duration::from_secs(elapsed_s),
            min_duration: Duration::from_secs(CANARYD_MIN_S),
            // Steps 30 % and 60 %.
            comparative_steps: 2,
        };
        let out = evaluate_look(&self.spec, &self.state, &counts, &ctx).expect("valid counts");
        self.state = out.state;
        match out.verdict {
            Verdict::Advance => Decision::Advance,
            Verdict::Rollback => Decision::Rollback,
            Verdict::Continue if elapsed_s < self.max_s => Decision::Continue,
            Verdict::Continue => {
                let served = self.state.series.iter().any(|s| s.step_stage_requests > 0);
                let over = Duration::from_secs(elapsed_s - self.max_s);
                let max = Duration::from_secs(self.max_s);
                match at_max(&self.spec.at_max, max, over, &out.metrics, out.held, served) {
                    AtMax::Advance(_) => Decision::AdvanceAtMax,
                    AtMax::Extend(_) => Decision::Continue,
                    AtMax::Pause(_) => Decision::Stall,
                }
            }
        }
    }
    fn max_step_s(&self) -> u64 {
        self.max_s
    }
}

struct Flagger {
    max_error_rate: f64,
    max_p99_ms: f64,
    failed: u32,
    minute: (Arm, u32),
}

impl Policy for Flagger {
    fn reset_rollout(&mut self) {
        self.failed = 0;
    }
    fn reset_step(&mut self) {
        self.minute = (Arm::default(), 0);
    }
    fn look(&mut self, _: u32, _: u8, elapsed_s: u64, stage: &Arm, _: &Arm) -> Decision {
        self.minute.0.add(stage);
        self.minute.1 += 1;
        if self.minute.1 == 2 {
            let m = self.minute.0;
            let ok = m.n > 0
                && (m.errors as f64 / m.n as f64) <= self.max_error_rate
                && m.p99().is_some_and(|p| p <= self.max_p99_ms);
            if !ok {
                self.failed += 1;
            }
            self.minute = (Arm::default(), 0);
            if self.failed >= 5 {
                return Decision::Rollback;
            }
        }
        if elapsed_s >= BASELINE_STEP_S {
            Decision::Advance
        } else {
            Decision::Continue
        }
    }
    fn max_step_s(&self) -> u64 {
        BASELINE_STEP_S
    }
}

#[derive(Default)]
struct Kayenta {
    /// Per look: (stage error rate, stage p99, prod error rate, prod p99); None without data.
    points: Vec<[Option<f64>; 4]>,
}

/// Two-sided Mann-Whitney p-value, normal approximation with tie correction.
fn mann_whitney_p(x: &[f64], y: &[f64]) -> f64 {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_x, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_x += all[i..=j].iter().filter(|a| a.1).count() as f64 * avg;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_x - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = (u - n1 * n2 / 2.0).abs() / var.sqrt();
    2.0 * (1.0 - Normal::new(0.0, 1.0).unwrap().cdf(z))
}

impl Policy for Kayenta {
    fn reset_rollout(&mut self) {}
    fn reset_step(&mut self) {
        self.points.clear();
    }
    fn look(&mut self, _: u32, _: u8, elapsed_s: u64, stage: &Arm, prod: &Arm) -> Decision {
        let rate = |a: &Arm| (a.n > 0).then(|| a.errors as f64 / a.n as f64);
        self.points
            .push([rate(stage), stage.p99(), rate(prod), prod.p99()]);
        for metric in 0..2 {
            let s: Vec<f64> = self.points.iter().filter_map(|p| p[metric]).collect();
            let p: Vec<f64> = self.points.iter().filter_map(|p| p[metric + 2]).collect();
            if s.len() < 3 || p.len() < 3 {
                continue; // NODATA: the metric is not judged
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (ms, mp) = (mean(&s), mean(&p));
            let worse = if mp > 0.0 { ms / mp > 1.25 } else { ms > 0.0 };
            if worse && mann_whitney_p(&s, &p) < 0.02 {
                return Decision::Rollback;
            }
        }
        if elapsed_s >= BASELINE_STEP_S {
            Decision::Advance
        } else {
            Decision::Continue
        }
    }
    fn max_step_s(&self) -> u64 {
        BASELINE_STEP_S
    }
}

#[derive(Default)]
struct ZTest {
    stage: Arm,
    prod: Arm,
}

impl Policy for ZTest {
    fn reset_rollout(&mut self) {}
    fn reset_step(&mut self) {
        self.stage = Arm::default();
        self.prod = Arm::default();
    }
    fn look(&mut self, _: u32, _: u8, elapsed_s: u64, stage: &Arm, prod: &Arm) -> Decision {
        self.stage.add(stage);
        self.prod.add(prod);
        let (ns, np) = (self.stage.n as f64, self.prod.n as f64);
        if ns > 0.0 && np > 0.0 {
            for (bs, bp) in [
                (self.stage.errors, self.prod.errors),
                (self.stage.slow(), self.prod.slow()),
            ] {
                let (ps, pp) = (bs as f64 / ns, bp as f64 / np);
                let pool = (bs + bp) as f64 / (ns + np);
                let se = (pool * (1.0 - pool) * (1.0 / ns + 1.0 / np)).sqrt();
                if se > 0.0 && (ps - pp) / se > 2.326 {
                    return Decision::Rollback;
                }
            }
        }
        if elapsed_s >= BASELINE_STEP_S {
            Decision::Advance
        } else {
            Decision::Continue
        }
    }
    fn max_step_s(&self) -> u64 {
        BASELINE_STEP_S
    }
}

enum Outcome {
    /// Time (s since the first traffic step) and stage requests served; whether it was in
    /// the first step, and after the step maximum (in an extension).
    RolledBack {
        t: u64,
        exposure: u64,
        first_step: bool,
        past_max: bool,
    },
    /// `at_max`: at least one step advanced at its maximum, not proven within the margins.
    Promoted {
        t: u64,
        at_max: bool,
    },
    Stalled,
}

fn run_rollout(world: &World, rollout: u64, policy: &mut dyn Policy) -> Outcome {
    policy.reset_rollout();
    let mut slot = 0;
    let mut exposure = 0;
    let mut at_max = false;
    for (i, &(step, weight)) in STEPS.iter().enumerate() {
        policy.reset_step();
        let mut elapsed = 0;
        loop {
            slot += 1;
            elapsed += LOOK_S;
            let (stage, prod) = world.slot(rollout, slot, weight, elapsed);
            exposure += stage.n;
            match policy.look(step, weight, elapsed, &stage, &prod) {
                Decision::Rollback => {
                    return Outcome::RolledBack {
                        t: slot * LOOK_S,
                        exposure,
                        first_step: i == 0,
                        past_max: elapsed > policy.max_step_s(),
                    }
                }
                Decision::Advance => break,
                Decision::AdvanceAtMax => {
                    at_max = true;
                    break;
                }
                Decision::Stall => return Outcome::Stalled,
                Decision::Continue => {}
            }
        }
    }
    Outcome::Promoted {
        t: slot * LOOK_S,
        at_max,
    }
}

fn policies(family: &Family) -> Vec<(&'static str, Box<dyn Policy>)> {
    let mut spec = AnalysisSpec {
        alpha: 0.01,
        ..AnalysisSpec::default()
    };
    spec.metrics[1].thresholds_ms = vec![250.0];
    let canaryd = |at_max: AtMaxPolicy, max_s: u64| -> Box<dyn Policy> {
        Box::new(Canaryd {
            spec: AnalysisSpec {
                at_max,
                ..spec.clone()
            },
            state: AnalysisState::default(),
            max_s,
        })
    };
    vec![
        (
            CANARYD_PAUSE,
            canaryd(
                AtMaxPolicy {
                    action: AtMaxAction::Pause,
                    ..AtMaxPolicy::default()
                },
                1800,
            ),
        ),
        (CANARYD_ADVANCE, canaryd(AtMaxPolicy::default(), 900)),
        (
            CANARYD_DETECTABLE,
            canaryd(
                AtMaxPolicy {
                    detectable_ratio: Some(2.0),
                    ..AtMaxPolicy::default()
                },
                900,
            ),
        ),
        (
            FLAGGER,
            Box::new(Flagger {
                max_error_rate: 2.0 * family.base_error,
                max_p99_ms: 500.0,
                failed: 0,
                minute: (Arm::default(), 0),
            }),
        ),
        (KAYENTA, Box::new(Kayenta::default())),
        ("naive z-test", Box::new(ZTest::default())),
    ]
}

#[derive(Default)]
struct Tally {
    rollouts: usize,
    rollback_t: Vec<u64>,
    exposure: Vec<u64>,
    first_step: usize,
    past_max: usize,
    promoted_t: Vec<u64>,
    promoted_at_max: usize,
    stalled: usize,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        self.rollouts += 1;
        match outcome {
            Outcome::RolledBack {
                t,
                exposure,
                first_step,
                past_max,
            } => {
                self.rollback_t.push(t);
                self.exposure.push(exposure);
                self.first_step += first_step as usize;
                self.past_max += past_max as usize;
            }
            Outcome::Promoted { t, at_max } => {
                self.promoted_t.push(t);
                self.promoted_at_max += at_max as usize;
            }
            Outcome::Stalled => self.stalled += 1,
        }
    }

    fn pct(&self, k: usize) -> String {
        format!("{:.1} %", 100.0 * k as f64 / self.rollouts as f64)
    }
}

fn tally_of<'a>(tallies: &'a [(&str, Tally)], name: &str) -> &'a Tally {
    &tallies
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a policy")
        .1
}

fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[((v.len() - 1) as f64 * q).round() as usize])
}

fn minutes(s: Option<u64>) -> String {
    s.map_or("–".into(), |s| format!("{:.1}", s as f64 / 60.0))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rollouts: u64 = args
        .iter()
        .position(|a| a == "--rollouts")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        // `cargo bench` passes --bench; run as a test (`cargo test --benches`), a smoke pass.
        .unwrap_or(if args.iter().any(|a| a == "--bench") {
            5000
        } else {
            20
        });
    let started = std::time::Instant::now();
    // DQ_ONLY=<text> runs only the families whose name contains it.
    let only = std::env::var("DQ_ONLY").unwrap_or_default();
    let fams: Vec<Family> = families()
        .into_iter()
        .filter(|f| f.name.contains(&only))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let results: Vec<(usize, Vec<(&'static str, Tally)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let fams = &fams;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (fi, fam) in fams.iter().enumerate().filter(|(i, _)| i % threads == k) {
                        let world = World::new(fam.clone(), fi as u64);
                        let mut tallies = Vec::new();
                        for (name, mut policy) in policies(fam) {
                            let mut t = Tally::default();
                            for r in 0..rollouts {
                                t.add(run_rollout(&world, r, policy.as_mut()));
                            }
                            tallies.push((name, t));
                        }
                        out.push((fi, tallies));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut results = results;
    results.sort_by_key(|(fi, _)| *fi);

    println!("{rollouts} rollouts per family and policy; steps 30 % and 60 %, 30 s looks.\n");
    println!("| family | policy | rolled back | caught at 30 % | median / p90 time to rollback (min) | median exposure (stage requests) | promoted | promoted with a step advanced at the max | median time to promotion (min) | stalled (needs a human) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (fi, tallies) in &mut results {
        let fam = &fams[*fi];
        for (name, t) in tallies.iter_mut() {
            let at_max = if [CANARYD_PAUSE, CANARYD_ADVANCE, CANARYD_DETECTABLE].contains(name) {
                t.pct(t.promoted_at_max)
            } else {
                "–".into()
            };
            println!(
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
                fam.name,
                name,
                t.pct(t.rollback_t.len()),
                t.pct(t.first_step),
                minutes(quantile(&mut t.rollback_t, 0.5)),
                minutes(quantile(&mut t.rollback_t, 0.9)),
                quantile(&mut t.exposure, 0.5).map_or("–".into(), |e| e.to_string()),
                t.pct(t.promoted_t.len()),
                at_max,
                minutes(quantile(&mut t.promoted_t, 0.5)),
                t.pct(t.stalled),
            );
        }
    }

    println!("\nAt the step maximum: promoted (in brackets: with a step advanced at the max, not proven within the margins), rolled back (in brackets: after the max, in the extension) and stalled, of all rollouts.\n");
    println!("| family | atMax pause, 30m: promoted / stalled | atMax advance, 15m: rolled back | atMax advance, 15m: promoted (at the max) | detectableRatio 2: rolled back (after the max) | detectableRatio 2: promoted (at the max) | detectableRatio 2: stalled | Flagger-style: promoted | Kayenta-style: promoted |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (fi, tallies) in &results {
        let of = |name| tally_of(tallies, name);
        let (pause, advance, detectable) = (
            of(CANARYD_PAUSE),
            of(CANARYD_ADVANCE),
            of(CANARYD_DETECTABLE),
        );
        let promoted = |t: &Tally| t.pct(t.promoted_t.len());
        println!(
            "| {} | {} / {} | {} | {} ({}) | {} ({}) | {} ({}) | {} | {} | {} |",
            fams[*fi].name,
            promoted(pause),
            pause.pct(pause.stalled),
            advance.pct(advance.rollback_t.len()),
            promoted(advance),
            advance.pct(advance.promoted_at_max),
            detectable.pct(detectable.rollback_t.len()),
            detectable.pct(detectable.past_max),
            promoted(detectable),
            detectable.pct(detectable.promoted_at_max),
            detectable.pct(detectable.stalled),
            promoted(of(FLAGGER)),
            promoted(of(KAYENTA)),
        );
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
}

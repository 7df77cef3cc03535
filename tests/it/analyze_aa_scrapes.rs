//! A/A on what the daemon really reads: counts with Prometheus semantics. Each pod's counters
//! are scraped every 15 s or 30 s at the pod's own offset, Prometheus misses scrapes during
//! outages (10 s up to a whole look), pods restart (their counters reset), traffic drifts and
//! bursts hit both arms; each look is what `telemetry::promql::exact_count` returns at the
//! look's edge (the last sample in the window minus the last sample at or before its start,
//! per pod). A release identical to prod must be rolled back in at most alpha of whole
//! multi-step rollouts, in every family: 15 s and 30 s scrapes, with and without bursts.

use std::time::Duration;

use canaryd::analysis::{
    at_max, evaluate_look, stage_served, ArmCounts, AtMax, Bucket, LookContext, LookCounts,
};
use canaryd::api::{AnalysisSpec, AnalysisState, Verdict};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};

use crate::analyze_aa::{spec, ALPHA};
/// The simulation's clock tick; scrape offsets, outages and look edges are multiples of it.
const TICK: u64 = 5;

#[derive(Clone, Copy, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    slow: u64,
}

struct Pod {
    /// Seconds past each scrape interval at which Prometheus scrapes this pod.
    offset: u64,
    now: Counters,
    /// What Prometheus stored: (time, counters), oldest first.
    samples: Vec<(u64, Counters)>,
}

impl Pod {
    /// The last stored sample in `(from, to]`, and the last at or before `from`.
    fn window(&self, from: u64, to: u64) -> (Option<Counters>, Option<Counters>) {
        let last = |limit: u64| self.samples.iter().rev().find(|(t, _)| *t <= limit);
        let end = last(to).filter(|(t, _)| *t > from).map(|&(_, c)| c);
        (end, last(from).map(|&(_, c)| c))
    }

    /// `exact_count` of each counter over `(from, to]`.
    fn count(&self, from: u64, to: u64) -> Counters {
        let (Some(end), start) = self.window(from, to) else {
            return Counters::default();
        };
        let start = start.unwrap_or_default();
        let diff = |e: u64, s: u64| if e >= s { e - s } else { e };
        Counters {
            requests: diff(end.requests, start.requests),
            errors: diff(end.errors, start.errors),
            slow: diff(end.slow, start.slow),
        }
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    scrape: u64,
    rps: f64,
    error_rate: f64,
    slow_rate: f64,
    drift: f64,
    bursts: bool,
    /// Chance per pod per look that it restarts.
    restarts: f64,
    /// Chance per look that Prometheus misses every scrape from the look's start for 10 s
    /// up to a whole look (a pod may then have no sample in the look at all).
    outages: f64,
    /// Stage's error rate is this many times prod's at the 30 % and at the 60 % step (1:
    /// identical releases).
    stage_factor: [f64; 2],
}

/// How a simulated rollout ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    RolledBack,
    /// Both steps advanced (proven, or at the step maximum by `analysis.atMax`).
    Promoted,
    Paused,
}

fn arm_counts(pods: &[Pod], from: u64, to: u64) -> ArmCounts {
    let mut c = Counters::default();
    for p in pods {
        let x = p.count(from, to);
        c.requests += x.requests;
        c.errors += x.errors;
        c.slow += x.slow;
    }
    ArmCounts {
        requests: c.requests as f64,
        errors: c.errors as f64,
        latency_buckets: vec![
            Bucket {
                le_ms: 250.0,
                count: (c.requests - c.slow.min(c.requests)) as f64,
            },
            Bucket {
                le_ms: f64::INFINITY,
                count: c.requests as f64,
            },
        ],
        ..ArmCounts::default()
    }
}

/// One release over the 30 % and 60 % steps (looks of 4 scrape intervals, at least 2
/// minutes per step). With `max`, a step that reaches it undecided is settled by the spec's
/// `analysis.atMax` policy, as in the daemon (kept comparing up to twice `max` when it says
/// extend); without, a step moves on after 20 minutes.
fn rollout(spec: &AnalysisSpec, s: &Scenario, max: Option<u64>, rng: &mut StdRng) -> End {
    let mut pods: Vec<Pod> = (0..5)
        .map(|_| Pod {
            offset: rng.random_range(0..s.scrape / TICK) * TICK,
            now: Counters::default(),
            samples: Vec::new(),
        })
        .collect();
    let (stage, prod) = (0..2, 2..5);
    let look = 4 * s.scrape;
    let mut state = AnalysisState::default();
    let mut t = 0u64;
    let mut missed_until = 0u64;
    let mut burst_until = 0u64;
    for (step, weight) in [(1u32, 30u8), (2, 60)] {
        let step_start = t;
        let last_look = max.map_or(1200, |m| 2 * m) / look;
        for k in 1..=last_look {
            let edge = step_start + k * look;
            if rng.random_bool(s.outages) {
                missed_until = t + rng.random_range(0..look / TICK) * TICK + 10;
            }
            let restart: Vec<Option<u64>> = (0..pods.len())
                .map(|_| {
                    rng.random_bool(s.restarts)
                        .then(|| t + rng.random_range(0..look / TICK) * TICK)
                })
                .collect();
            while t < edge {
                t += TICK;
                let wave = 1.0 + s.drift * (t as f64 / 1200.0 * std::f64::consts::TAU).sin();
                // A burst (a shared dependency failing) hits both arms: one every 15 minutes
                // on average, 5 to 30 s long, 20 times the error rate.
                if s.bursts && burst_until <= t && rng.random_bool(TICK as f64 / 900.0) {
                    burst_until = t + rng.random_range(1..=6) * TICK;
                }
                let burst = if t < burst_until { 20.0 } else { 1.0 };
                let n = Poisson::new(s.rps * wave * TICK as f64)
                    .unwrap()
                    .sample(rng) as u64;
                let to_stage = Binomial::new(n, f64::from(weight) / 100.0)
                    .unwrap()
                    .sample(rng);
                for (i, pod) in pods.iter_mut().enumerate() {
                    if restart[i] == Some(t) {
                        pod.now = Counters::default();
                    }
                    let (share, of) = if stage.contains(&i) {
                        (to_stage, stage.len() as u64)
                    } else {
                        (n - to_stage, prod.len() as u64)
                    };
                    let mine = share / of + u64::from((i as u64 % of) < share % of);
                    let draw = |rng: &mut StdRng, p: f64| {
                        Binomial::new(mine, p.min(1.0)).unwrap().sample(rng)
                    };
                    pod.now.requests += mine;
                    let factor = if stage.contains(&i) {
                        s.stage_factor[step as usize - 1]
                    } else {
                        1.0
                    };
                    pod.now.errors += draw(rng, s.error_rate * factor * wave * burst);
                    pod.now.slow += draw(rng, s.slow_rate * wave);
                    if t % s.scrape == pod.offset && t >= missed_until {
                        pod.samples.push((t, pod.now));
                    }
                }
            }
            let counts = LookCounts {
                stage: arm_counts(&pods[stage.clone()], edge - look, edge),
                prod: arm_counts(&pods[prod.clone()], edge - look, edge),
            };
            let ctx = LookContext {
                step,
                stage_weight: weight,
                elapsed_in_step: Duration::from_secs(k * look),
                min_duration: Duration::from_secs(120),
                comparative_steps: 2,
            };
            let out = evaluate_look(spec, &state, &counts, &ctx).unwrap();
            let elapsed = k * look;
            let verdict = match (out.verdict, max) {
                (Verdict::Continue, Some(m)) if elapsed >= m => {
                    let over = Duration::from_secs(elapsed - m);
                    let served = stage_served(&out.state, step);
                    let max = Duration::from_secs(m);
                    match at_max(&spec.at_max, max, over, &out.metrics, out.held, served) {
                        AtMax::Advance(_) => Verdict::Advance,
                        AtMax::Extend(_) if k < last_look => Verdict::Continue,
                        AtMax::Extend(_) | AtMax::Pause(_) => return End::Paused,
                    }
                }
                (v, _) => v,
            };
            state = out.state;
            match verdict {
                Verdict::Rollback => return End::RolledBack,
                // The next step starts from this state, as in the daemon.
                Verdict::Advance => break,
                Verdict::Continue if k == last_look && max.is_some() => return End::Paused,
                Verdict::Continue => {}
            }
        }
    }
    End::Promoted
}

fn rolled_back(spec: &AnalysisSpec, s: &Scenario, rng: &mut StdRng) -> bool {
    rollout(spec, s, None, rng) == End::RolledBack
}

/// Rollouts run and rolled back over random scenarios at one scrape interval.
fn rollbacks(scrape: u64, bursts: bool, stage_factor: f64, rollouts: u32, seed: u64) -> (f64, f64) {
    let spec = spec();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rolled = 0;
    for _ in 0..rollouts {
        let s = Scenario {
            scrape,
            rps: rng.random_range(5.0..500.0),
            error_rate: rng.random_range(0.001..0.05),
            slow_rate: rng.random_range(0.001..0.05),
            drift: rng.random_range(0.0..0.9),
            bursts: bursts && rng.random_bool(0.5),
            restarts: 0.02,
            outages: 0.1,
            stage_factor: [stage_factor; 2],
        };
        if rolled_back(&spec, &s, &mut rng) {
            rolled += 1;
        }
    }
    (f64::from(rollouts), f64::from(rolled))
}

/// The false rollbacks of 600 identical releases (`CANARYD_AA_ROLLOUTS` for more) stay within
/// `bound` (plus three binomial standard deviations of sampling noise).
fn check(scrape: u64, bursts: bool, bound: f64) {
    let rollouts = std::env::var("CANARYD_AA_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let (n, k) = rollbacks(scrape, bursts, 1.0, rollouts, 0x5eed + scrape);
    let limit = n * bound + 3.0 * (n * bound * (1.0 - bound)).sqrt();
    println!(
        "A/A at {scrape} s scrapes{}: {k} false rollbacks in {n} rollouts ({:.2} %), alpha {ALPHA}",
        if bursts { " with bursts" } else { "" },
        100.0 * k / n
    );
    assert!(k <= limit, "{k} false rollbacks in {n} rollouts");
}

#[test]
fn identical_releases_at_15_s_scrapes_are_rolled_back_in_at_most_alpha_of_rollouts() {
    check(15, true, ALPHA);
}

#[test]
fn identical_releases_at_30_s_scrapes_are_rolled_back_in_at_most_alpha_of_rollouts() {
    check(30, false, ALPHA);
}

#[test]
fn identical_releases_at_15_s_scrapes_without_bursts_are_rolled_back_in_at_most_alpha_of_rollouts()
{
    check(15, false, ALPHA);
}

/// At 30 s scrapes a burst that hits both arms can fall into different looks for stage and
/// prod (each pod is scraped at its own instant, and an outage moves a pod's last sample in a
/// look further back): the looks around a jump are pooled before they are judged.
#[test]
fn at_30_s_scrapes_bursts_split_across_looks_are_rolled_back_in_at_most_alpha_of_rollouts() {
    check(30, true, ALPHA);
}

#[test]
fn the_same_simulation_catches_a_tripled_error_rate() {
    // Guards the A/A tests against passing because nothing is ever rolled back.
    let (n, k) = rollbacks(15, true, 3.0, 100, 7);
    println!("3x at 15 s scrapes: {k} rollbacks in {n} rollouts");
    assert!(k >= 0.8 * n, "only {k} of {n} caught");
}

/// The targets on Prometheus-semantics counts at 15 s scrapes (restarts, outages, no
/// bursts), with the default policy at a 15-minute step maximum: (family, stage's factor at
/// 30 % and 60 %, what the family must show).
#[test]
fn the_targets_hold_on_counts_as_prometheus_gives_them() {
    let rollouts = std::env::var("CANARYD_AA_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u32);
    let spec = spec();
    let run = |factor: [f64; 2], seed: u64| {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ends = [0u32; 3];
        for _ in 0..rollouts {
            let s = Scenario {
                scrape: 15,
                rps: 50.0,
                error_rate: 0.01,
                slow_rate: 0.01,
                drift: 0.2,
                bursts: false,
                restarts: 0.02,
                outages: 0.1,
                stage_factor: factor,
            };
            let end = rollout(&spec, &s, Some(900), &mut rng);
            ends[end as usize] += 1;
        }
        let share = |e: End| f64::from(ends[e as usize]) / f64::from(rollouts);
        (
            share(End::RolledBack),
            share(End::Promoted),
            share(End::Paused),
        )
    };
    let healthy = run([1.0, 1.0], 11);
    let twice = run([2.0, 2.0], 12);
    let late = run([1.0, 1.6], 13);
    for (family, (rb, pr, pa)) in [
        ("healthy, 50 req/s", healthy),
        ("errors 2x, 50 req/s", twice),
        ("errors 1.6x only at 60 %", late),
    ] {
        println!(
            "15 s scrapes, {family}: rolled back {:.1} %, promoted {:.1} %, paused {:.1} % \
             ({rollouts} rollouts)",
            100.0 * rb,
            100.0 * pr,
            100.0 * pa
        );
    }
    // Each target with three binomial standard deviations of sampling noise, as `check`.
    let noise = |p: f64| 3.0 * (p * (1.0 - p) / f64::from(rollouts)).sqrt();
    assert!(
        healthy.1 >= 0.95 - noise(0.95),
        "healthy promoted {:.3}",
        healthy.1
    );
    assert!(twice.0 >= 0.99 - noise(0.99), "2x caught {:.3}", twice.0);
    assert!(
        late.1 <= 0.01 + noise(0.01),
        "1.6x at 60 % promoted {:.3}",
        late.1
    );
}

//! The conditional-binomial likelihood of the stage/prod rate ratio on a fixed grid, the
//! mixture e-processes built on it, their inversion into confidence bounds, and the
//! Bernoulli mixture e-process of the absolute SLO guardrails. Numbers only: no spec, no I/O.

/// Ratios of the base grid: 2^(k/4) for k = -8..=16, that is 0.25 to 16, four per doubling.
const BASE_LOW: i32 = -8;
const BASE_HIGH: i32 = 16;
/// Base points plus the tolerance and the margin, inserted when they are not on it.
pub const MAX_POINTS: usize = (BASE_HIGH - BASE_LOW + 1) as usize + 2;

/// The rate ratios at which the likelihood is tracked, sorted, with the tolerance (`r0`,
/// the rollback null) and the margin (the advance null) among them.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    ratios: [f64; MAX_POINTS],
    /// ln of each ratio, precomputed for the update.
    log_ratios: [f64; MAX_POINTS],
    /// ln of each point's prior weight (unnormalised): a normal density on ln r centred at
    /// r = 1 with standard deviation ln 2, so most mass sits on the ratios that matter
    /// (0.5 to 2) while 16x keeps some.
    log_weights: [f64; MAX_POINTS],
    len: usize,
    pub tolerance_idx: usize,
}

impl Grid {
    /// Callers guarantee `1 <= tolerance < margin`, both finite (the spec validation does).
    pub fn new(tolerance: f64, margin: f64) -> Self {
        let mut ratios = [0.0; MAX_POINTS];
        let mut len = 0;
        let mut push = |r: f64, ratios: &mut [f64; MAX_POINTS]| {
            if !ratios[..len].iter().any(|x| (x / r - 1.0).abs() < 1e-9) {
                ratios[len] = r;
                len += 1;
            }
        };
        for k in BASE_LOW..=BASE_HIGH {
            push((k as f64 / 4.0).exp2(), &mut ratios);
        }
        push(tolerance, &mut ratios);
        push(margin, &mut ratios);
        ratios[..len].sort_by(f64::total_cmp);
        let find = |r: f64| {
            ratios[..len]
                .iter()
                .position(|x| (x / r - 1.0).abs() < 1e-9)
                .unwrap_or(0)
        };
        let mut log_ratios = [0.0; MAX_POINTS];
        let mut log_weights = [0.0; MAX_POINTS];
        let tau = std::f64::consts::LN_2;
        for ((l, w), r) in log_ratios
            .iter_mut()
            .zip(&mut log_weights)
            .zip(&ratios[..len])
        {
            *l = r.ln();
            *w = -(*l * *l) / (2.0 * tau * tau);
        }
        Grid {
            log_weights,
            tolerance_idx: find(tolerance),
            ratios,
            log_ratios,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn ratios(&self) -> &[f64] {
        &self.ratios[..self.len]
    }

    /// Folds one look into log-likelihoods `ll` (one per grid ratio).
    ///
    /// Given m = b_s + b_p bad events and the stage share `pi` of requests, b_s is
    /// Binomial(m, q(r)) with q(r) = r pi / (r pi + 1 - pi). Dropping the terms that do not
    /// depend on r, ln L(r) gains b_s ln r - m ln(1 + pi (r - 1)).
    pub fn fold(&self, ll: &mut [f64], stage_bad: f64, prod_bad: f64, pi: f64) {
        let m = stage_bad + prod_bad;
        if m == 0.0 || !(pi > 0.0 && pi < 1.0) {
            return; // no events, or one arm without traffic: the likelihood is flat
        }
        let points = self.ratios[..self.len].iter().zip(&self.log_ratios);
        for (l, (r, ln_r)) in ll.iter_mut().zip(points) {
            *l += stage_bad * ln_r - m * (pi * (r - 1.0)).ln_1p();
        }
    }
}

/// ln of the mean of exp(x) over `xs` (uniform mixture weights); -inf when empty.
fn log_mean_exp(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NEG_INFINITY;
    }
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    max + sum.ln() - (xs.len() as f64).ln()
}

impl Grid {
    /// ln e-value against "r <= ratios[idx]": the prior mixture over the grid ratios above
    /// it, weights renormalised to 1. A test supermartingale under every r at or below the
    /// null value: per look, the expected likelihood ratio of an alternative above the null
    /// is at most 1 when the truth is at or below it.
    pub fn log_e_above(&self, ll: &[f64], idx: usize) -> f64 {
        let w = &self.log_weights[idx + 1..self.len];
        log_sum_exp2(&ll[idx + 1..self.len], w) - log_sum_exp2(&[], w) - ll[idx]
    }

    /// Confidence bounds on the ratio at level exp(-log_threshold), from the tests of every
    /// grid point: against "r <= x" mixing over the ratios above x, and against "r >= x"
    /// mixing over those below. The lower bound is the largest grid ratio such that it and
    /// every grid ratio below it are rejected (0 when none is); the upper bound the smallest
    /// such that it and every ratio above it are rejected (None: unbounded). A true ratio
    /// between two grid points is excluded only if the test at the grid point on its
    /// conservative side rejects, so coverage holds at the level of one test.
    pub fn bounds(&self, ll: &[f64], log_threshold: f64) -> (f64, Option<f64>) {
        let n = self.len;
        // Weighted likelihoods in linear space, shifted by their maximum, and running sums
        // from each end, so all 2n tests cost O(n). A term that underflows is negligible
        // next to the maximum; an all-underflow sum only makes a test more conservative.
        let shift = (0..n)
            .map(|i| ll[i] + self.log_weights[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let mut a = [0.0; MAX_POINTS];
        let mut w = [0.0; MAX_POINTS];
        for i in 0..n {
            a[i] = (ll[i] + self.log_weights[i] - shift).exp();
            w[i] = self.log_weights[i].exp();
        }
        let rejects = |sum_a: f64, sum_w: f64, i: usize| {
            sum_a.ln() + shift - sum_w.ln() - ll[i] >= log_threshold
        };
        let mut above = [(0.0, 0.0); MAX_POINTS];
        for i in (0..n.saturating_sub(1)).rev() {
            above[i] = (above[i + 1].0 + a[i + 1], above[i + 1].1 + w[i + 1]);
        }
        let mut lower = 0.0;
        for (i, &(sa, sw)) in above.iter().enumerate().take(n.saturating_sub(1)) {
            if rejects(sa, sw, i) {
                lower = self.ratios[i];
            } else {
                break;
            }
        }
        let mut below = [(0.0, 0.0); MAX_POINTS];
        for i in 1..n {
            below[i] = (below[i - 1].0 + a[i - 1], below[i - 1].1 + w[i - 1]);
        }
        let mut upper = None;
        for i in (1..n).rev() {
            if rejects(below[i].0, below[i].1, i) {
                upper = Some(self.ratios[i]);
            } else {
                break;
            }
        }
        (lower, upper)
    }
}

/// What one step's bad events could have detected: `m` bad events in both arms, `b_s` of
/// them stage's, and `share` = sum of m_i pi_i over the step's looks.
#[derive(Clone, Copy, Debug)]
pub struct StepEvents {
    pub bad: f64,
    pub stage_bad: f64,
    pub share: f64,
}

impl StepEvents {
    /// Stage's share of traffic over the step, weighted by each look's bad events; None
    /// without bad events, or with one arm idle (nothing to compare).
    fn mean_share(&self) -> Option<f64> {
        if self.bad < 1.0 {
            return None;
        }
        let pi = (self.share / self.bad).clamp(0.0, 1.0);
        (pi > 0.0 && pi < 1.0).then_some(pi)
    }
}

impl Grid {
    /// The smallest grid ratio x above the tolerance at which the step's own rollback test,
    /// evaluated once on this step's bad events, rejects with probability at least `power`
    /// had stage's ratio been x. `log_threshold` is what the step's mixture alone must reach
    /// (ln of the rollback threshold over the step part's weight); `step_ll` is the step's
    /// log-likelihood.
    ///
    /// The mixture is at least w_x L(x) / L(r0) (w_x: x's normalised prior weight), so the
    /// test rejects when b_s ln(x / r0) + D_x >= log_threshold - ln w_x, where
    /// D_x = -sum_i m_i ln((1 + pi_i (x - 1)) / (1 + pi_i (r0 - 1))) depends on the m_i and
    /// pi_i only (read back from the likelihoods). Given the m_i, b_s under ratio x is a sum
    /// of Binomial(m_i, q_i(x)); within a step the allocation is fixed, so it is taken as
    /// one Binomial(m, q(x)) at the step's mean share. A lower bound on the power of the
    /// sequential rule (which may also reject at any earlier look, and has the rollout-wide
    /// part besides); the same test rejects more often at any ratio above x.
    pub fn detectable_ratio(
        &self,
        step_ll: &[f64],
        events: StepEvents,
        log_threshold: f64,
        power: f64,
    ) -> Option<f64> {
        use statrs::distribution::{Binomial, DiscreteCDF};
        let StepEvents { bad, stage_bad, .. } = events;
        if step_ll.len() != self.len {
            return None;
        }
        let pi = events.mean_share()?;
        let t = self.tolerance_idx;
        let log_norm = log_sum_exp2(&[], &self.log_weights[t + 1..self.len]);
        let m = bad.round() as u64;
        for j in t + 1..self.len {
            let ln_ratio = self.log_ratios[j] - self.log_ratios[t];
            let d = step_ll[j] - step_ll[t] - stage_bad * ln_ratio;
            let needed = log_threshold - (self.log_weights[j] - log_norm);
            let k = ((needed - d) / ln_ratio).ceil().max(0.0);
            let r = self.ratios[j];
            let q = r * pi / (r * pi + 1.0 - pi);
            let p = if k <= 0.0 {
                1.0
            } else if k > m as f64 {
                0.0
            } else {
                Binomial::new(q, m).map_or(0.0, |b| b.sf(k as u64 - 1))
            };
            if p >= power {
                return Some(r);
            }
        }
        None
    }
}

/// One-sided p-value of "stage's rate is at most `r0` times prod's" from a step's bad events,
/// tested once: P(Binomial(m, q(r0)) >= b_s) at the step's mean share (the allocation is
/// fixed within a step; q is concave in the share, so the mean share only overstates the
/// null's mean and the test errs on the side of not rejecting). None without bad events in
/// both arms' traffic.
pub fn worse_p_value(events: StepEvents, r0: f64) -> Option<f64> {
    use statrs::distribution::{Binomial, DiscreteCDF};
    let pi = events.mean_share()?;
    let q0 = r0 * pi / (r0 * pi + 1.0 - pi);
    let (m, b) = (events.bad.round() as u64, events.stage_bad.round() as u64);
    if b == 0 {
        return Some(1.0);
    }
    Binomial::new(q0, m).ok().map(|d| d.sf(b - 1))
}

/// ln sum_i exp(xs[i] + ws[i]); with `xs` empty, ln sum_i exp(ws[i]).
fn log_sum_exp2(xs: &[f64], ws: &[f64]) -> f64 {
    let term = |i: usize| xs.get(i).copied().unwrap_or(0.0) + ws[i];
    let max = (0..ws.len()).map(term).fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + (0..ws.len())
        .map(|i| (term(i) - max).exp())
        .sum::<f64>()
        .ln()
}

/// ln(exp(a) + exp(b)).
pub fn log_add(a: f64, b: f64) -> f64 {
    let hi = a.max(b);
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + ((a - hi).exp() + (b - hi).exp()).ln()
}

/// ln e-value against "the stage's per-request bad probability is at most `limit`", from
/// its totals: a uniform mixture over p_j = limit * 2^(j/4) (below 1) of the Bernoulli
/// likelihood ratios (p_j / limit)^B ((1 - p_j) / (1 - limit))^(N - B). A test
/// supermartingale however the probability drifts, as long as it stays at or below `limit`.
pub fn slo_log_e(bad: f64, requests: f64, limit: f64) -> f64 {
    let mut xs = [0.0; 32];
    let mut n = 0;
    let ln_keep0 = (-limit).ln_1p();
    for j in 1..=32 {
        let p = limit * (j as f64 / 4.0).exp2();
        if p >= 0.999 || n == xs.len() {
            break;
        }
        xs[n] = bad * (j as f64 / 4.0) * std::f64::consts::LN_2
            + (requests - bad) * ((-p).ln_1p() - ln_keep0);
        n += 1;
    }
    log_mean_exp(&xs[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln_binomial_ratio(b: f64, m: f64, q: f64, q0: f64) -> f64 {
        b * (q / q0).ln() + (m - b) * ((1.0 - q) / (1.0 - q0)).ln()
    }

    fn q(r: f64, pi: f64) -> f64 {
        r * pi / (r * pi + 1.0 - pi)
    }

    /// A 30 % step of 20 looks with 12 bad events each, stage at prod's rate.
    fn healthy_step(g: &Grid) -> (Vec<f64>, StepEvents, [f64; 20]) {
        let (pi, m): (f64, [f64; 20]) = (0.3, [12.0; 20]);
        let mut ll = vec![0.0; g.len()];
        let (mut bad, mut stage_bad) = (0.0, 0.0);
        for &mi in &m {
            let bs = (mi * pi).round();
            g.fold(&mut ll, bs, mi - bs, pi);
            bad += mi;
            stage_bad += bs;
        }
        let events = StepEvents {
            bad,
            stage_bad,
            share: bad * pi,
        };
        (ll, events, m)
    }

    #[test]
    fn the_detectable_ratio_is_caught_by_the_steps_rollback_test_with_its_power() {
        use rand::SeedableRng;
        use rand_distr::{Binomial, Distribution};
        let g = Grid::new(1.0, 1.5);
        let (ll, events, m) = healthy_step(&g);
        // Two series at alpha 1 %, the step part weighted 1/4: the step's mixture must reach
        // 2 / 0.01 / 0.25 = 800 on its own.
        let log_threshold = 800f64.ln();
        let x = g
            .detectable_ratio(&ll, events, log_threshold, 0.8)
            .expect("240 bad events detect something");
        assert!(x > 1.5 && x < 4.0, "{x}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let runs = 2000;
        let caught = (0..runs)
            .filter(|_| {
                let mut sim = vec![0.0; g.len()];
                for &mi in &m {
                    let bs = Binomial::new(mi as u64, q(x, 0.3))
                        .unwrap()
                        .sample(&mut rng) as f64;
                    g.fold(&mut sim, bs, mi - bs, 0.3);
                }
                g.log_e_above(&sim, g.tolerance_idx) >= log_threshold
            })
            .count();
        // At least the stated power, less three standard errors of the simulation.
        let power = caught as f64 / runs as f64;
        assert!(
            power >= 0.8 - 3.0 * (0.8f64 * 0.2 / runs as f64).sqrt(),
            "{power} at {x}"
        );
    }

    #[test]
    fn the_final_test_is_the_binomial_tail_at_the_tolerance() {
        let events = |stage_bad: f64| StepEvents {
            bad: 100.0,
            stage_bad,
            share: 50.0,
        };
        // P(Binomial(100, 1/2) >= 65) = 0.00176.
        let p = worse_p_value(events(65.0), 1.0).unwrap();
        assert!((p - 0.00176).abs() < 2e-5, "{p}");
        assert_eq!(worse_p_value(events(0.0), 1.0), Some(1.0));
        // A higher tolerance makes the same counts less surprising.
        // q(1.5) = 0.6 at an even share: P(Binomial(100, 0.6) >= 65) = 0.18.
        let at_tolerance = worse_p_value(events(65.0), 1.5).unwrap();
        assert!((at_tolerance - 0.18).abs() < 0.01, "{at_tolerance}");
        let none = StepEvents {
            bad: 0.0,
            stage_bad: 0.0,
            share: 0.0,
        };
        assert_eq!(worse_p_value(none, 1.0), None);
    }

    #[test]
    fn more_events_detect_smaller_regressions_and_none_detect_nothing() {
        let g = Grid::new(1.0, 1.5);
        let (ll, events, _) = healthy_step(&g);
        let log_threshold = 800f64.ln();
        let mut twice = ll.clone();
        for l in &mut twice {
            *l *= 2.0;
        }
        let doubled = StepEvents {
            bad: 2.0 * events.bad,
            stage_bad: 2.0 * events.stage_bad,
            share: 2.0 * events.share,
        };
        let once = g.detectable_ratio(&ll, events, log_threshold, 0.8).unwrap();
        let more = g
            .detectable_ratio(&twice, doubled, log_threshold, 0.8)
            .unwrap();
        assert!(more < once, "{more} vs {once}");
        let none = StepEvents {
            bad: 0.0,
            stage_bad: 0.0,
            share: 0.0,
        };
        assert_eq!(
            g.detectable_ratio(&vec![0.0; g.len()], none, log_threshold, 0.8),
            None
        );
        // Three bad events cannot reach an e-value of 800 even at 16x.
        let few = StepEvents {
            bad: 3.0,
            stage_bad: 1.0,
            share: 0.9,
        };
        let mut ll3 = vec![0.0; g.len()];
        g.fold(&mut ll3, 1.0, 2.0, 0.3);
        assert_eq!(g.detectable_ratio(&ll3, few, log_threshold, 0.8), None);
    }

    #[test]
    fn grid_holds_tolerance_and_margin_exactly() {
        let g = Grid::new(1.1, 1.5);
        assert_eq!(g.ratios()[g.tolerance_idx], 1.1);
        assert!(g.ratios().contains(&1.5));
        assert!(g.ratios().windows(2).all(|w| w[0] < w[1]));
        let on_grid = Grid::new(1.0, 2.0);
        assert_eq!(on_grid.len(), MAX_POINTS - 2);
    }

    proptest::proptest! {
        /// With a constant share the e-value depends only on the totals, however the events
        /// are split into looks: the closed form is the binomial likelihood-ratio mixture.
        #[test]
        fn looks_at_constant_allocation_equal_one_binomial_on_the_totals(
            looks in proptest::collection::vec((0u32..40, 0u32..40), 1..12),
            pi in 0.05..0.95f64,
            tolerance in 1.0..1.4f64,
        ) {
            let g = Grid::new(tolerance, 1.5);
            let mut ll = vec![0.0; g.len()];
            for &(bs, bp) in &looks {
                g.fold(&mut ll, bs as f64, bp as f64, pi);
            }
            let b: f64 = looks.iter().map(|l| l.0 as f64).sum();
            let m: f64 = looks.iter().map(|l| (l.0 + l.1) as f64).sum();
            let r0 = g.tolerance_idx;
            let tau2 = 2.0 * std::f64::consts::LN_2.powi(2);
            let terms: Vec<(f64, f64)> = g.ratios()[r0 + 1..]
                .iter()
                .map(|&r| (-(r.ln().powi(2)) / tau2, ln_binomial_ratio(b, m, q(r, pi), q(tolerance, pi))))
                .collect();
            let max = terms.iter().map(|(w, l)| w + l).fold(f64::NEG_INFINITY, f64::max);
            let num: f64 = terms.iter().map(|(w, l)| (w + l - max).exp()).sum();
            let den: f64 = terms.iter().map(|(w, _)| w.exp()).sum();
            let closed = num.ln() + max - den.ln();
            let got = g.log_e_above(&ll, r0);
            proptest::prop_assert!((got - closed).abs() < 1e-7 * (1.0 + closed.abs()), "{} vs {}", got, closed);
        }
    }

    #[test]
    fn fine_beta_mixture_matches_the_beta_binomial_closed_form() {
        // Lindon & Malek: at constant allocation, a Beta(a, b) mixture over q gives the
        // Beta-binomial Bayes factor B(a + B, b + M - B) / B(a, b) / (q0^B (1 - q0)^(M - B)).
        // Our fold with a dense grid of ratios weighted by the Beta density in q must match.
        use statrs::function::beta::ln_beta;
        let (a, bpar, pi) = (2.0, 3.0, 0.4);
        let n = 4000;
        let mut ratios = Vec::new();
        let mut log_w = Vec::new();
        for i in 0..n {
            let qq = (i as f64 + 0.5) / n as f64;
            ratios.push(qq * (1.0 - pi) / (pi * (1.0 - qq)));
            log_w.push(
                (a - 1.0) * qq.ln() + (bpar - 1.0) * (1.0 - qq).ln()
                    - ln_beta(a, bpar)
                    - (n as f64).ln(),
            );
        }
        let mut ll = vec![0.0; n];
        let looks = [(4.0, 2.0), (1.0, 6.0), (3.0, 3.0)];
        for (bs, bp) in looks {
            for (l, r) in ll.iter_mut().zip(&ratios) {
                *l += bs * r.ln() - (bs + bp) * (pi * (r - 1.0)).ln_1p();
            }
        }
        // Relative to r = 1 (q0 = pi): the ll above drops the same constant for every r.
        let ll0 = 0.0;
        let mixed: f64 = ll
            .iter()
            .zip(&log_w)
            .map(|(l, w)| (l + w - ll0).exp())
            .sum::<f64>()
            .ln();
        let (b, m) = (8.0, 19.0);
        let closed = ln_beta(a + b, bpar + m - b)
            - ln_beta(a, bpar)
            - (b * pi.ln() + (m - b) * (1.0 - pi).ln());
        assert!((mixed - closed).abs() < 1e-4, "{mixed} vs {closed}");
    }

    #[test]
    fn bounds_bracket_the_observed_ratio_and_tighten_with_data() {
        let g = Grid::new(1.0, 1.5);
        let pi = 0.5;
        let mut ll = vec![0.0; g.len()];
        let thr = (100.0f64).ln();
        let (lo, hi) = g.bounds(&ll, thr);
        assert_eq!((lo, hi), (0.0, None), "no data, no bounds");
        g.fold(&mut ll, 200.0, 100.0, pi); // ratio 2
        let (lo, hi) = g.bounds(&ll, thr);
        let hi = hi.expect("bounded with 300 events");
        assert!(lo > 1.0 && lo < 2.0 && hi > 2.0 && hi < 4.0, "{lo} {hi}");
        g.fold(&mut ll, 2000.0, 1000.0, pi);
        let (lo2, hi2) = g.bounds(&ll, thr);
        assert!(
            lo2 >= lo && hi2.unwrap() <= hi && lo2 > 1.6,
            "{lo2} {hi2:?}"
        );
    }

    #[test]
    fn bounds_agree_with_testing_every_grid_point_one_by_one() {
        let g = Grid::new(1.0, 1.5);
        let n = g.len();
        let tau2 = 2.0 * std::f64::consts::LN_2.powi(2);
        let w: Vec<f64> = g
            .ratios()
            .iter()
            .map(|r| -(r.ln().powi(2)) / tau2)
            .collect();
        let below = |ll: &[f64], i: usize| {
            log_sum_exp2(&ll[..i], &w[..i]) - log_sum_exp2(&[], &w[..i]) - ll[i]
        };
        let thr = (200.0f64).ln();
        for (bs, bp, pi) in [
            (40.0, 10.0, 0.3),
            (5.0, 60.0, 0.5),
            (300.0, 700.0, 0.3),
            (1.0, 1.0, 0.6),
        ] {
            let mut ll = vec![0.0; n];
            for _ in 0..4 {
                g.fold(&mut ll, bs, bp, pi);
            }
            let lower = (0..n - 1)
                .take_while(|&i| g.log_e_above(&ll, i) >= thr)
                .last()
                .map_or(0.0, |i| g.ratios()[i]);
            let upper = (1..n)
                .rev()
                .take_while(|&i| below(&ll, i) >= thr)
                .last()
                .map(|i| g.ratios()[i]);
            assert_eq!(g.bounds(&ll, thr), (lower, upper), "{bs} {bp} {pi}");
        }
    }

    #[test]
    fn no_events_or_one_sided_traffic_leave_the_evidence_at_one() {
        let g = Grid::new(1.0, 1.5);
        let mut ll = vec![0.0; g.len()];
        g.fold(&mut ll, 0.0, 0.0, 0.3);
        g.fold(&mut ll, 5.0, 0.0, 1.0);
        g.fold(&mut ll, 0.0, 5.0, 0.0);
        assert!(ll.iter().all(|&x| x == 0.0));
        assert!(g.log_e_above(&ll, g.tolerance_idx).abs() < 1e-12);
    }

    #[test]
    fn slo_evidence_grows_only_above_the_limit() {
        assert!(slo_log_e(30.0, 1000.0, 0.01) > (400.0f64).ln());
        assert!(slo_log_e(5.0, 1000.0, 0.01) < 0.0);
        assert_eq!(slo_log_e(0.0, 0.0, 0.01), 0.0);
    }
}

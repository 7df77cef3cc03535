//! Pure statistics: decides from per-request counts of stage and prod whether stage is worse
//! (roll back), proven not worse within a margin (advance), or not yet known (continue).
//! No I/O, no clock: time and data come in as arguments, the state as a value.
//!
//! # The test (docs/architecture.md, section 4)
//!
//! Every metric is a rate of bad requests (5xx; slower than a latency threshold, read at the
//! largest bucket boundary at or below it that both arms' histograms share, with n from the
//! histogram itself; a custom bad/total pair). Counts above 2^53 are refused (no exact count
//! is that large) and the totals saturate. In look i, with n_s, n_p requests and b_s, b_p bad events, let
//! pi_i = n_s / (n_s + n_p) be stage's share. Modelling bad events as Poisson thinning of
//! the requests, given m_i = b_s + b_p the stage count is Binomial(m_i, q_i(r)) with
//! q_i(r) = r pi_i / (r pi_i + 1 - pi_i), where r is the stage/prod rate ratio. This holds
//! however the common rate drifts in time (diurnal load, bursts that hit both arms) and
//! whatever the allocation, which is why one likelihood can run across all steps.
//!
//! We keep ln L(r) = sum_i [b_s,i ln r - m_i ln(1 + pi_i (r - 1))] at a fixed grid of ratios:
//! 2^(k/4) for k = -8..=16 (0.25 to 16, four points per doubling, so any true ratio is within
//! 9 % of a grid point) plus the metric's `tolerance` r0 and `margin` inserted exactly. With
//! time-varying pi_i there is no conjugate prior, so the mixture is this discrete grid. Its
//! weights follow a normal density on ln r centred at r = 1 with standard deviation ln 2 (a
//! normal prior on the log rate ratio, the usual mixing choice for these e-values),
//! renormalised over the points on the alternative side of each test: most mass on the effects that matter (0.5x to 2x,
//! where evidence is slow to come), little on 16x, which any mixture detects at once. The
//! state of a series is these ~27 numbers (twice, see below) and four counters.
//!
//! * **Rollback**: M_t = sum over r_j > r0 of w_j L_t(r_j) / L_t(r0). For any true r <= r0,
//!   q = q_i(r) <= q0 and each look's factor has conditional expectation
//!   (q q_j/q0 + (1-q)(1-q_j)/(1-q0))^m, which is 1 at q = q0 and increasing in q (its
//!   derivative q_j/q0 - (1-q_j)/(1-q0) is positive for q_j > q0), hence <= 1: M is a test
//!   supermartingale for the whole composite null r <= r0, for any r0 >= 1. This is exact
//!   when bad events are Poisson given the traffic. With each request bad independently (rates
//!   p_s = r p_p), b_s given m is Fisher's noncentral hypergeometric with odds ratio
//!   r (1 - p_p) / (1 - r p_p); at r0 = 1 that is the central hypergeometric, which the
//!   binomial dominates in convex order (Hoeffding 1963), so the bound holds as stated. For
//!   r0 > 1 the test is exact for the null "odds ratio at most r0", which differs from "rate
//!   ratio at most r0" by the factor (1 - p_p) / (1 - r0 p_p): at rates of a few percent
//!   (p_p = 2 %, r0 = 1.2: 0.4 %) the tolerance is effectively that much smaller. By Ville's
//!   inequality
//!   P(sup_t M_t >= 1/a) <= a (Lindon, Sanden, Shirikian, KDD 2022, arXiv 2205.14762; with a
//!   constant allocation it is the Beta/Dirichlet-multinomial mixture of Lindon & Malek,
//!   NeurIPS 2022, arXiv 2011.03567, with a discrete prior; a unit test checks the closed form).
//! * **Advance**: the same construction against "r >= x" (mixing over grid ratios below x),
//!   inverted into a confidence sequence (Howard et al., arXiv 1810.08240). The upper bound is
//!   the smallest grid ratio from which every test rejects; a metric passes when it is at or
//!   below `margin`. Advance needs every compared metric to pass, the minimum duration,
//!   stage traffic in the look, a weight strictly between 0 and 100, and no guardrail firing.
//!   The sequence uses the **current step's** likelihood only, so a release that regresses
//!   only at a higher weight cannot ride on the evidence of the steps before it.
//! * **Thresholds**: with K series (one per errorRate/ratio metric, one per latency threshold,
//!   one per SLO guardrail) every rollback test uses K / alpha (Bonferroni: any one series
//!   rolls back). Advance is an intersection-union test (every series must pass), so each
//!   confidence sequence uses 1 / alpha: advancing a step in which some metric is at or above
//!   its margin needs that metric's own sequence to be wrong, probability at most alpha.
//!
//! # What is carried across steps, and the alpha accounting
//!
//! The lifecycle keeps [`AnalysisState`] for the whole rollout. For each compared series the
//! engine keeps two likelihoods: one over the whole rollout and one since the current step
//! started. The rollback e-value is E_t = 1/2 M_t(rollout) + c M_t(step k) with
//! c = 1 / (2 S), S the number of steps that compare (weight strictly between 0 and 100; at
//! least 1), so no budget is left on steps where nothing is compared. Each M is a test supermartingale started at
//! a stopping time (the step's start; 1 before it), the weights of all processes that could
//! ever start sum to at most 1, and dropping the processes of finished steps only lowers E,
//! so E_t is bounded by a test supermartingale and P(false rollback over the whole rollout,
//! all looks, all steps) <= K * alpha / K = alpha. The rollout-wide part accumulates evidence
//! across steps (allocation changes are handled by the conditional binomial); the step part
//! catches a release that only degrades at a higher weight, whose earlier healthy evidence
//! would otherwise mask it. Steps are expected to only move forward within a rollout.
//! The advance confidence sequence uses the step's own likelihood: for each step, the
//! probability of advancing it while some metric's ratio during that step is at or above its
//! margin is at most alpha.
//!
//! **Latency: threshold and shift.** A latency threshold T's rollback e-value is
//! 1/2 E(T) + 1/4 E(b1) + 1/4 E(b2), where E(b) is the e-process above (rollout plus step parts)
//! on requests slower than b, b1 and b2 the largest boundaries both arms share at or below T/2
//! and T/4 (the "shift" series, kept in the state after the reported ones and never reported
//! or advanced on). Each E(b) is a test supermartingale for the common filtration of looks under
//! "stage's rate of requests slower than b is at most `tolerance` times prod's" (each look's
//! factor has conditional expectation at most 1 given the past), so the average is one under
//! the intersection of these nulls, and the threshold is unchanged (shift series do not count
//! in K). A slowdown of the whole distribution shows far more events below T than above it and
//! is caught sooner; a tail-only regression keeps half the weight. Advance uses E(T)'s
//! confidence sequence only.
//!
//! **Pooling.** Prometheus scrapes every pod at its own instant, so a look's window ends at a
//! different instant for each pod (and further back for a pod whose scrapes an outage
//! missed), and a burst of errors that hits both arms (a shared dependency failing) can land
//! in one look for stage's pods and in the next for prod's, which the per-look binomial
//! would read as evidence against stage. A look whose bad events in both arms together (m of
//! n requests) jump beyond the rate folded so far (more than four Poisson standard
//! deviations) is held back; held looks are pooled with the next look while either they or
//! it jump, and folded together with the first next look once neither does, so a burst
//! straddling either end of a held look is summed back whole for both arms. While the
//! rollout has folded fewer than 10 bad events there is no rate of its own: a held look and
//! the next are then measured against each other, and the rollout's first look (more than 3
//! bad events) is held for the second. At most six looks are held; the seventh is folded with
//! them. A held look blocks an advance. The decisions read only m and n, never the split
//! between the arms, and pooled looks use stage's share weighted by each look's bad events,
//! so the rollback e-process stays a supermartingale under the null (a sum of binomials is
//! dominated by the binomial of the same mean in convex order). tests/it/analyze_aa_scrapes.rs
//! measures the false rollbacks this leaves at 15 s and 30 s scrapes.
//!
//! A look at weight 0 is not folded (no live traffic; the checks decide). At weight 100 prod
//! gets no requests, so pi = 1 and the comparative likelihood does not move by construction;
//! only the guardrails can decide, and never towards advance.
//!
//! # Guardrails
//!
//! `slo.maxErrorRate` p0 and `slo.maxLatencyMs.pXX` (at most 1 - XX % of requests slower than
//! the limit) are tested on stage alone with the Bernoulli mixture e-process over
//! p_j = p0 2^(j/4), a test supermartingale for any drifting rate at or below p0. They can
//! only roll back (the lifecycle has nothing to compare at 100 %; an advance still needs the
//! comparisons). A latency limit that is not a bucket boundary is tested at the next boundary
//! above it, which never overstates the slow requests. Their evidence uses stage's totals over
//! the whole rollout, so it holds across steps too.
//!
//! # What it cannot do, and the step maximum
//!
//! Proving "at most `margin` times prod" takes bad events: with none in either arm the bounds
//! stay open and the step waits, whatever the traffic. At a few requests per second, or a
//! base rate of 0.1 %, a 30-minute step rarely collects enough. Rollback needs evidence too,
//! but a real regression produces it. What a step does when its maximum comes with nothing
//! proven is a stated policy ([`at_max`], `analysis.atMax`); each look reports per compared
//! series the **detectable ratio**: the smallest grid ratio x that the step's own rollback
//! test, evaluated once on this step's bad events, would reject with probability at least
//! 1 - beta had stage's ratio been x (`Grid::detectable_ratio` derives it; a lower bound on
//! the power of the sequential rule).
//!
//! [`AnalysisState`]: crate::api::AnalysisState

mod at_max;
pub mod counts;
mod eprocess;
mod evaluate;
mod explain;
mod histogram;
mod series;
mod validate;

pub use at_max::{at_max, power_summary, stage_served, AtMax};
pub use counts::{ArmCounts, Bucket, LookCounts, RatioCounts};
pub use evaluate::{comparative_steps, evaluate_look, LookContext, LookOutcome};
pub use explain::{power_of_ten, report_line, series_words, sig2};
pub use validate::AnalysisError;

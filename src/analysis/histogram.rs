//! Reading cumulative latency histograms (Prometheus `le` buckets): requests slower than a
//! boundary, quantiles interpolated within buckets, and the Mann-Whitney effect size.

use super::counts::Bucket;

/// The largest boundary at or below `threshold_ms`, and the requests slower than it.
pub fn slower_than(buckets: &[Bucket], threshold_ms: f64) -> Option<(f64, f64)> {
    let b = buckets
        .iter()
        .rev()
        .find(|b| b.le_ms.is_finite() && b.le_ms <= threshold_ms)?;
    Some((b.le_ms, total(buckets) - b.count))
}

/// The largest boundary at or below `threshold_ms` that both histograms have, and the
/// requests of each that were slower than it: both arms are compared on the same question
/// ("slower than 200 ms"), even when their bucket layouts differ.
pub fn shared_slower_than(
    a: &[Bucket],
    b: &[Bucket],
    threshold_ms: f64,
) -> Option<(f64, f64, f64)> {
    let at = a.iter().rev().find(|x| {
        x.le_ms.is_finite() && x.le_ms <= threshold_ms && b.iter().any(|y| y.le_ms == x.le_ms)
    })?;
    let in_b = b.iter().find(|y| y.le_ms == at.le_ms)?;
    Some((at.le_ms, total(a) - at.count, total(b) - in_b.count))
}

/// The requests a histogram counted (its `+Inf` bucket).
pub fn requests(buckets: &[Bucket]) -> f64 {
    total(buckets)
}

/// The smallest boundary at or above `limit_ms`, and the requests slower than it: a
/// conservative count of requests slower than the limit (never more than the truth).
pub fn slower_than_at_least(buckets: &[Bucket], limit_ms: f64) -> Option<(f64, f64)> {
    let b = buckets
        .iter()
        .find(|b| b.le_ms.is_finite() && b.le_ms >= limit_ms)?;
    Some((b.le_ms, total(buckets) - b.count))
}

fn total(buckets: &[Bucket]) -> f64 {
    buckets.last().map_or(0.0, |b| b.count)
}

/// Quantile `q` (0..1) interpolated linearly within its bucket, as PromQL's
/// `histogram_quantile` does: the first bucket starts at 0, and a quantile in the +Inf
/// bucket is reported as the largest finite boundary. None without requests.
pub fn quantile(buckets: &[Bucket], q: f64) -> Option<f64> {
    let n = total(buckets);
    if n <= 0.0 {
        return None;
    }
    let rank = q * n;
    let (mut lo, mut below) = (0.0, 0.0);
    for b in buckets {
        if b.count >= rank && b.count > below {
            if !b.le_ms.is_finite() {
                return Some(lo);
            }
            return Some(lo + (b.le_ms - lo) * (rank - below) / (b.count - below));
        }
        if b.le_ms.is_finite() {
            lo = b.le_ms;
        }
        below = b.count;
    }
    Some(lo)
}

/// Common-language effect size: P(a stage request is slower than a prod request), ties
/// within a bucket counted half (Mann-Whitney U / (n_s n_p)). 0.5 means no difference.
/// Both histograms must have the same boundaries; None otherwise or without requests.
pub fn cles(stage: &[Bucket], prod: &[Bucket]) -> Option<f64> {
    let (ns, np) = (total(stage), total(prod));
    if ns <= 0.0
        || np <= 0.0
        || stage.len() != prod.len()
        || stage.iter().zip(prod).any(|(s, p)| s.le_ms != p.le_ms)
    {
        return None;
    }
    let (mut u, mut prev_s, mut prev_p) = (0.0, 0.0, 0.0);
    for (s, p) in stage.iter().zip(prod) {
        let (ds, dp) = (s.count - prev_s, p.count - prev_p);
        u += ds * (prev_p + 0.5 * dp);
        prev_s = s.count;
        prev_p = p.count;
    }
    Some(u / (ns * np))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs
            .iter()
            .map(|&(le_ms, count)| Bucket { le_ms, count })
            .collect()
    }

    #[test]
    fn threshold_off_a_boundary_uses_the_boundary_below() {
        let b = h(&[(100.0, 80.0), (250.0, 95.0), (f64::INFINITY, 100.0)]);
        assert_eq!(slower_than(&b, 300.0), Some((250.0, 5.0)));
        assert_eq!(slower_than(&b, 250.0), Some((250.0, 5.0)));
        assert_eq!(slower_than(&b, 50.0), None);
        assert_eq!(slower_than_at_least(&b, 200.0), Some((250.0, 5.0)));
        assert_eq!(slower_than_at_least(&b, 300.0), None);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = h(&[(100.0, 50.0), (200.0, 90.0), (f64::INFINITY, 100.0)]);
        assert_eq!(quantile(&b, 0.5), Some(100.0));
        assert_eq!(quantile(&b, 0.7), Some(150.0));
        assert_eq!(quantile(&b, 0.99), Some(200.0));
        assert_eq!(quantile(&h(&[(f64::INFINITY, 0.0)]), 0.5), None);
    }

    #[test]
    fn cles_says_which_arm_is_slower() {
        let fast = h(&[(100.0, 90.0), (200.0, 100.0), (f64::INFINITY, 100.0)]);
        let slow = h(&[(100.0, 10.0), (200.0, 100.0), (f64::INFINITY, 100.0)]);
        assert_eq!(cles(&fast, &fast), Some(0.5));
        assert!(cles(&slow, &fast).unwrap() > 0.8);
        assert!(cles(&fast, &slow).unwrap() < 0.2);
    }
}

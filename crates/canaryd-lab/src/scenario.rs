//! How each app image behaves in the simulated mesh (error rate, latency distribution) and
//! in the simulated Deployment controller (whether its pods ever become available), and the
//! demo's release scenarios. Pure data and sampling; it never generates traffic on its own
//! (that is [`super::mesh`]) and never talks to the cluster.
//!
//! Images: `demoapp:v1` is the baseline (1 % errors, about 60 ms), `demoapp:v2` is as healthy
//! as v1, `demoapp:v3` fails 5 % of requests, `demoapp:v4` is 60 % slower, and
//! [`CRASHLOOP_IMAGE`] (`demoapp:crashloop`) never becomes available: its rollout never
//! finishes, as with a crash loop or an image that cannot be pulled, and the old pods keep
//! serving. [`UNHEALTHY_IMAGE`] (`demoapp:unhealthy`) serves traffic like the baseline but
//! answers its `/health` page 503, which the Canary's checks catch before any traffic. Any
//! other image behaves like the baseline.

use std::collections::BTreeMap;
use std::fmt;

use rand::{Rng, RngExt};
use rand_distr::{Distribution, LogNormal};

/// The image the demo's prod runs before any release; unknown images behave like it.
pub const BASELINE_IMAGE: &str = "demoapp:v1";

/// An image whose pods never become ready (a crash loop, an image that cannot be pulled): the
/// lab's Deployment controller ([`super::workloads`]) never reports its rollout finished, and
/// reports it stuck (`ProgressDeadlineExceeded`) once the rollout delay has passed.
pub const CRASHLOOP_IMAGE: &str = "demoapp:crashloop";

/// An image whose pods run and serve, but whose `/health` page answers 503 (a release
/// broken outright: a missing config, a dependency it cannot reach): the lab's app server
/// ([`super::mesh_server`]) says so to the Canary's checks.
pub const UNHEALTHY_IMAGE: &str = "demoapp:unhealthy";

/// `image` matched by its last path segment without digest
/// (`registry.local/demoapp:crashloop@sha256:..`) and with the tag cut at its first dot
/// (`demoapp:crashloop.2`), as behaviours are.
fn family(image: &str) -> &str {
    let short = image.split('@').next().unwrap_or(image);
    let short = short.rsplit('/').next().unwrap_or(short);
    short.split('.').next().unwrap_or(short)
}

/// Whether pods of `image` ever become available: all but [`CRASHLOOP_IMAGE`] do (matched
/// as [`family`] says).
pub fn becomes_available(image: &str) -> bool {
    family(image) != CRASHLOOP_IMAGE
}

/// Whether `image` answers its `/health` page 200: all but [`UNHEALTHY_IMAGE`] do (matched
/// as [`family`] says).
pub fn answers_health(image: &str) -> bool {
    family(image) != UNHEALTHY_IMAGE
}

/// How one version of the app answers requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// Fraction of requests answered with HTTP 500, in [0, 1].
    pub error_rate: f64,
    pub latency: Latency,
}

/// Request latency: a log-normal body plus an optional slow tail.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    /// Median of the log-normal body, in milliseconds.
    pub median_ms: f64,
    /// Standard deviation of ln(latency); 0.5 keeps about 95 % of requests within a factor
    /// of 2.7 of the median.
    pub sigma: f64,
    pub slow_tail: Option<SlowTail>,
}

/// A fraction of requests that take `factor` times longer (cold caches, GC pauses); this is
/// what moves the "slower than 500 ms" share, which a median shift alone barely touches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowTail {
    pub fraction: f64,
    pub factor: f64,
}

/// What one simulated request got back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub response_code: u16,
    pub duration_ms: f64,
}

impl Behaviour {
    pub fn sample(&self, rng: &mut impl Rng) -> Outcome {
        let failed = rng.random_bool(self.error_rate.clamp(0.0, 1.0));
        Outcome {
            response_code: if failed { 500 } else { 200 },
            duration_ms: self.latency.sample(rng),
        }
    }

    /// The same behaviour with every latency multiplied by `factor` (1.6 = "60 % slower").
    pub fn slower(&self, factor: f64) -> Behaviour {
        Behaviour {
            latency: Latency {
                median_ms: self.latency.median_ms * factor,
                ..self.latency.clone()
            },
            ..self.clone()
        }
    }

    pub fn with_error_rate(&self, error_rate: f64) -> Behaviour {
        Behaviour {
            error_rate,
            ..self.clone()
        }
    }
}

impl Latency {
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        let median = self.median_ms.max(f64::MIN_POSITIVE);
        let body = LogNormal::new(median.ln(), self.sigma.max(0.0))
            .map(|d| d.sample(rng))
            .unwrap_or(median);
        match self.slow_tail {
            Some(tail) if rng.random_bool(tail.fraction.clamp(0.0, 1.0)) => body * tail.factor,
            _ => body,
        }
    }
}

/// image -> behaviour, with a baseline for images the table does not know.
#[derive(Clone, Debug, PartialEq)]
pub struct BehaviourTable {
    baseline: Behaviour,
    images: BTreeMap<String, Behaviour>,
}

impl BehaviourTable {
    /// A table that knows only the baseline.
    pub fn new(baseline: Behaviour) -> Self {
        Self {
            baseline,
            images: BTreeMap::new(),
        }
    }

    /// The demo's table: v1 is the baseline, v2 as healthy as v1, v3 fails 5 % of requests,
    /// v4 is 60 % slower; `v2.N`, `v3.N` and `v4.N` behave as v2, v3 and v4 (see
    /// [`BehaviourTable::behaviour`]).
    pub fn demo() -> Self {
        let v1 = Behaviour {
            error_rate: 0.01,
            latency: Latency {
                median_ms: 60.0,
                sigma: 0.45,
                slow_tail: Some(SlowTail {
                    fraction: 0.02,
                    factor: 6.0,
                }),
            },
        };
        Self::new(v1.clone())
            .with(BASELINE_IMAGE, v1.clone())
            .with(Scenario::Good.release_image(), v1.clone())
            .with(
                Scenario::BadErrors.release_image(),
                v1.with_error_rate(0.05),
            )
            .with(Scenario::BadLatency.release_image(), v1.slower(1.6))
    }

    pub fn with(mut self, image: &str, behaviour: Behaviour) -> Self {
        self.images.insert(image.to_string(), behaviour);
        self
    }

    /// The behaviour of `image`, matched exactly or by its last path segment without digest
    /// (`registry.local/team/demoapp:v2@sha256:..` is `demoapp:v2`), then with the tag cut
    /// at its first dot: `demoapp:v3.17` behaves as `demoapp:v3`, so a test can release a
    /// new revision (a new image) of the same behaviour again and again. Unknown images
    /// behave like the baseline, and a log line says so.
    pub fn behaviour(&self, image: &str) -> &Behaviour {
        let short = image.split('@').next().unwrap_or(image);
        let short = short.rsplit('/').next().unwrap_or(short);
        let family = match short.split_once(':') {
            Some((name, tag)) => {
                let tag = tag.split('.').next().unwrap_or(tag);
                format!("{name}:{tag}")
            }
            None => short.to_string(),
        };
        let known = self.images.get(image).or_else(|| self.images.get(short));
        match known.or_else(|| self.images.get(&family)) {
            Some(behaviour) => behaviour,
            None => {
                tracing::info!(
                    image,
                    known = ?self.images.keys().collect::<Vec<_>>(),
                    "image not in the lab's behaviour table; it behaves like the baseline"
                );
                &self.baseline
            }
        }
    }
}

/// The demo's releases: which image stage gets, and so how the rollout should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// v2, as healthy as prod: canaryd promotes it.
    Good,
    /// v3, 5 % of requests fail: canaryd rolls back.
    BadErrors,
    /// v4, 60 % slower: canaryd rolls back.
    BadLatency,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Good, Scenario::BadErrors, Scenario::BadLatency];

    pub fn release_image(self) -> &'static str {
        match self {
            Scenario::Good => "demoapp:v2",
            Scenario::BadErrors => "demoapp:v3",
            Scenario::BadLatency => "demoapp:v4",
        }
    }

    /// Whether canaryd is expected to promote the release (else roll it back).
    pub fn should_promote(self) -> bool {
        self == Scenario::Good
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Good => "good",
            Scenario::BadErrors => "bad-errors",
            Scenario::BadLatency => "bad-latency",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn share(n: usize, mut hit: impl FnMut() -> bool) -> f64 {
        (0..n).filter(|_| hit()).count() as f64 / n as f64
    }

    #[test]
    fn images_match_by_name_and_tag_whatever_the_registry() {
        let table = BehaviourTable::demo();
        let v3 = table.behaviour("demoapp:v3").clone();
        assert_eq!(v3.error_rate, 0.05);
        assert_eq!(table.behaviour("registry.local:5000/team/demoapp:v3"), &v3);
        assert_eq!(table.behaviour("demoapp:v3@sha256:abcdef"), &v3);
        assert_eq!(table.behaviour("registry.local:5000/demoapp:v3.17"), &v3);
        let v4 = table.behaviour("demoapp:v4").clone();
        assert_eq!(table.behaviour("demoapp:v4.2"), &v4);
        let table = table.with("demoapp:v3.5", v4);
        assert_eq!(
            table.behaviour("demoapp:v3.5").error_rate,
            0.01,
            "exact first"
        );
    }

    #[test]
    fn only_the_crashloop_image_never_becomes_available() {
        assert!(!becomes_available(CRASHLOOP_IMAGE));
        assert!(!becomes_available(
            "registry.local/team/demoapp:crashloop@sha256:ab"
        ));
        assert!(!becomes_available("demoapp:crashloop.2"));
        for image in [
            BASELINE_IMAGE,
            "demoapp:v2",
            "demoapp:v3.1",
            "somethingelse:latest",
        ] {
            assert!(becomes_available(image), "{image}");
        }
    }

    #[test]
    fn only_the_unhealthy_image_fails_its_health_page() {
        assert!(!answers_health(UNHEALTHY_IMAGE));
        assert!(!answers_health(
            "registry.local/demoapp:unhealthy.3@sha256:ab"
        ));
        for image in [
            BASELINE_IMAGE,
            "demoapp:v3",
            CRASHLOOP_IMAGE,
            "other:latest",
        ] {
            assert!(answers_health(image), "{image}");
        }
    }

    #[test]
    fn unknown_images_behave_like_the_baseline() {
        let table = BehaviourTable::demo();
        assert_eq!(
            table.behaviour("somethingelse:latest"),
            table.behaviour(BASELINE_IMAGE)
        );
    }

    #[test]
    fn scenarios_release_the_images_they_describe() {
        let table = BehaviourTable::demo();
        let v1 = table.behaviour(BASELINE_IMAGE);
        let image = |s: Scenario| table.behaviour(s.release_image());
        assert_eq!(image(Scenario::Good), v1);
        assert_eq!(image(Scenario::BadErrors).error_rate, 0.05);
        assert_eq!(image(Scenario::BadErrors).latency, v1.latency);
        assert_eq!(image(Scenario::BadLatency).error_rate, v1.error_rate);
        assert!(
            (image(Scenario::BadLatency).latency.median_ms - 1.6 * v1.latency.median_ms).abs()
                < 1e-9
        );
        assert_eq!(
            Scenario::ALL.map(|s| s.to_string()),
            ["good", "bad-errors", "bad-latency"]
        );
    }

    #[test]
    fn sampled_errors_and_latencies_follow_the_behaviour() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 40_000;
        let table = BehaviourTable::demo();
        let v3 = table.behaviour("demoapp:v3");
        // 5 % of 40k: sd is 0.11 %, so 0.5 % is more than four of them.
        let errors = share(n, || v3.sample(&mut rng).response_code == 500);
        assert!((errors - 0.05).abs() < 0.005, "error share {errors}");

        let v1 = table.behaviour(BASELINE_IMAGE);
        let below_median = share(n, || v1.latency.sample(&mut rng) < v1.latency.median_ms);
        // The slow tail moves 2 % of the lower half above the median.
        assert!((below_median - 0.49).abs() < 0.01, "{below_median}");

        let v4 = table.behaviour("demoapp:v4");
        let slow = |b: &Behaviour, rng: &mut StdRng| share(n, || b.latency.sample(rng) > 500.0);
        let (slow_v1, slow_v4) = (slow(v1, &mut rng), slow(v4, &mut rng));
        assert!(slow_v4 > 2.0 * slow_v1, "v1 {slow_v1}, v4 {slow_v4}");
    }
}

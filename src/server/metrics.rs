//! canaryd's own Prometheus metrics: what each Canary is doing (phase, step, weights, the
//! statistics of the last look), the decisions it took, and how the daemon itself fares
//! (reconciles, leadership; telemetry and notify register their own). Labels are bounded: a
//! Canary's namespace and name, a phase, a metric name from its spec, and small fixed sets
//! of decisions, reasons and error categories; never an error's text. A deleted Canary's
//! series are removed ([`Metrics::forget_canary`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::{Canary, CanaryStatus, Phase};
use crate::rollout::{Action, NotifyEvent};

const PHASES: [Phase; 8] = [
    Phase::Idle,
    Phase::Testing,
    Phase::Progressing,
    Phase::Promoting,
    Phase::SwitchingBack,
    Phase::Succeeded,
    Phase::RolledBack,
    Phase::Paused,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabels {
    namespace: String,
    canary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    namespace: String,
    canary: String,
    stage_host: String,
    prod_host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    canary: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    namespace: String,
    canary: String,
    arm: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    namespace: String,
    canary: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    namespace: String,
    canary: String,
    metric: String,
    bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    namespace: String,
    canary: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The series one Canary has created whose labels are not fixed by its name alone, so that
/// they can be removed when it goes away.
#[derive(Default)]
struct Emitted {
    info: Option<InfoLabels>,
    metrics: BTreeSet<String>,
    decisions: BTreeSet<(&'static str, &'static str)>,
}

/// Every metric canaryd exports, registered once; cheap to share behind an `Arc`.
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<CategoryLabels, Counter>,
    reconcile_duration: Histogram,
    last_success: FloatGauge,
    info: Family<InfoLabels, Gauge>,
    phase: Family<PhaseLabels, Gauge>,
    step: Family<CanaryLabels, Gauge>,
    weight: Family<ArmLabels, Gauge>,
    e_value: Family<MetricLabels, FloatGauge>,
    rollback_threshold: Family<MetricLabels, FloatGauge>,
    margin: Family<MetricLabels, FloatGauge>,
    ratio_bound: Family<BoundLabels, FloatGauge>,
    decisions: Family<DecisionLabels, Counter>,
    rollout_duration: Histogram,
    time_to_rollback: Histogram,
    leader: Gauge,
    emitted: Mutex<HashMap<(String, String), Emitted>>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let canaryd = registry.sub_registry_with_prefix("canaryd");
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            last_success: FloatGauge::default(),
            info: Family::default(),
            phase: Family::default(),
            step: Family::default(),
            weight: Family::default(),
            e_value: Family::default(),
            rollback_threshold: Family::default(),
            margin: Family::default(),
            ratio_bound: Family::default(),
            decisions: Family::default(),
            // 1 minute .. about 17 hours.
            rollout_duration: Histogram::new(exponential_buckets(60.0, 2.0, 11)),
            // 10 seconds .. about 3 hours.
            time_to_rollback: Histogram::new(exponential_buckets(10.0, 2.0, 11)),
            leader: Gauge::default(),
            emitted: Mutex::default(),
        };
        canaryd.register(
            "reconcile",
            "Reconciles of Canaries, by result",
            m.reconciles.clone(),
        );
        canaryd.register(
            "reconcile_errors",
            "Failed reconciles, by error category",
            m.reconcile_errors.clone(),
        );
        canaryd.register_with_unit(
            "reconcile_duration",
            "Time one reconcile of one Canary took",
            prometheus_client::registry::Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        canaryd.register(
            "last_reconcile_success_timestamp_seconds",
            "Unix time of the last reconcile that succeeded",
            m.last_success.clone(),
        );
        canaryd.register(
            "canary_info",
            "1 per Canary, labelled with the stage and prod hosts it compares",
            m.info.clone(),
        );
        canaryd.register(
            "canary_phase",
            "1 for the Canary's current phase, 0 for the others",
            m.phase.clone(),
        );
        canaryd.register(
            "canary_step",
            "Index of the Canary's current step in spec.steps",
            m.step.clone(),
        );
        canaryd.register(
            "canary_weight",
            "Percent of the traffic routed to each arm",
            m.weight.clone(),
        );
        canaryd.register(
            "canary_e_value",
            "Evidence that stage is worse than prod at the last look (rollback at the threshold)",
            m.e_value.clone(),
        );
        canaryd.register(
            "canary_rollback_threshold",
            "e-value at which the metric rolls the Canary back",
            m.rollback_threshold.clone(),
        );
        canaryd.register(
            "canary_margin",
            "Upper ratio bound below which the metric lets the Canary advance",
            m.margin.clone(),
        );
        canaryd.register(
            "canary_ratio_bound",
            "Confidence bounds of the stage/prod rate ratio at the last look",
            m.ratio_bound.clone(),
        );
        canaryd.register(
            "decisions",
            "Rollout decisions, by kind and by what drove them",
            m.decisions.clone(),
        );
        canaryd.register_with_unit(
            "rollout_duration",
            "Time from the start of a rollout to its success",
            prometheus_client::registry::Unit::Seconds,
            m.rollout_duration.clone(),
        );
        canaryd.register_with_unit(
            "time_to_rollback",
            "Time from the start of a rollout to its rollback",
            prometheus_client::registry::Unit::Seconds,
            m.time_to_rollback.clone(),
        );
        canaryd.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests and callers that do not export them.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// One finished reconcile: its duration, and its error category when it failed.
    pub fn reconciled(&self, took: Duration, error_category: Option<&'static str>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        match error_category {
            None => {
                self.reconciles
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                self.last_success
                    .set(Timestamp::now().as_millisecond() as f64 / 1000.0);
            }
            Some(category) => {
                self.reconciles
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                self.reconcile_errors
                    .get_or_create(&CategoryLabels { category })
                    .inc();
            }
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// What one reconcile decided: the Canary's state afterwards, the decisions among its
    /// actions, and the duration of a rollout that ended.
    pub fn record(&self, canary: &Canary, new: &CanaryStatus, actions: &[Action], now: Timestamp) {
        let spec = &canary.spec;
        let namespace = canary.metadata.namespace.as_deref().unwrap_or_default();
        let canary = canary.metadata.name.as_deref().unwrap_or_default();
        let mut emitted = self.emitted.lock().expect("metrics lock");
        let emitted = emitted
            .entry((namespace.to_string(), canary.to_string()))
            .or_default();
        let labels = CanaryLabels {
            namespace: namespace.into(),
            canary: canary.into(),
        };
        let info = InfoLabels {
            namespace: namespace.into(),
            canary: canary.into(),
            stage_host: spec.stage.host.clone(),
            prod_host: spec.prod.host.clone(),
        };
        if emitted.info.as_ref() != Some(&info) {
            if let Some(old_info) = emitted.info.replace(info.clone()) {
                self.info.remove(&old_info);
            }
            self.info.get_or_create(&info).set(1);
        }
        for phase in PHASES {
            self.phase
                .get_or_create(&phase_labels(&labels, phase))
                .set(i64::from(phase == new.phase));
        }
        self.step.get_or_create(&labels).set(i64::from(new.step));
        let stage = i64::from(new.stage_weight);
        self.weight
            .get_or_create(&arm_labels(&labels, "stage"))
            .set(stage);
        self.weight
            .get_or_create(&arm_labels(&labels, "prod"))
            .set(100 - stage);

        if let Some(decision) = &new.last_decision {
            let current: BTreeSet<String> =
                decision.metrics.iter().map(|m| m.name.clone()).collect();
            for gone in emitted.metrics.difference(&current) {
                self.remove_metric(&labels, gone);
            }
            for report in &decision.metrics {
                let l = metric_labels(&labels, &report.name);
                self.e_value.get_or_create(&l).set(report.e_value);
                self.rollback_threshold
                    .get_or_create(&l)
                    .set(report.rollback_threshold);
                self.margin.get_or_create(&l).set(report.margin);
                self.ratio_bound
                    .get_or_create(&bound_labels(&labels, &report.name, "lower"))
                    .set(report.ratio_lower);
                let upper = bound_labels(&labels, &report.name, "upper");
                match report.ratio_upper {
                    Some(u) => {
                        self.ratio_bound.get_or_create(&upper).set(u);
                    }
                    None => {
                        self.ratio_bound.remove(&upper);
                    }
                }
            }
            emitted.metrics = current;
        }

        for action in actions {
            let Action::Notify { event, cause, .. } = action else {
                continue;
            };
            let decision = decision_name(*event);
            let reason = cause.as_str();
            emitted.decisions.insert((decision, reason));
            self.decisions
                .get_or_create(&DecisionLabels {
                    namespace: namespace.into(),
                    canary: canary.into(),
                    decision,
                    reason,
                })
                .inc();
            let since_start = new
                .rollout_started_at
                .map(|start| now.duration_since(start).as_secs_f64().max(0.0));
            match (event, since_start) {
                (NotifyEvent::Succeeded, Some(s)) => self.rollout_duration.observe(s),
                (NotifyEvent::RolledBack, Some(s)) => self.time_to_rollback.observe(s),
                _ => {}
            }
        }
    }

    /// Removes every series of a Canary that is gone.
    pub fn forget_canary(&self, namespace: &str, canary: &str) {
        let labels = CanaryLabels {
            namespace: namespace.into(),
            canary: canary.into(),
        };
        for phase in PHASES {
            self.phase.remove(&phase_labels(&labels, phase));
        }
        self.step.remove(&labels);
        self.weight.remove(&arm_labels(&labels, "stage"));
        self.weight.remove(&arm_labels(&labels, "prod"));
        let emitted = self
            .emitted
            .lock()
            .expect("metrics lock")
            .remove(&(namespace.to_string(), canary.to_string()))
            .unwrap_or_default();
        if let Some(info) = &emitted.info {
            self.info.remove(info);
        }
        for metric in &emitted.metrics {
            self.remove_metric(&labels, metric);
        }
        for (decision, reason) in emitted.decisions {
            self.decisions.remove(&DecisionLabels {
                namespace: namespace.into(),
                canary: canary.into(),
                decision,
                reason,
            });
        }
    }

    fn remove_metric(&self, labels: &CanaryLabels, metric: &str) {
        let l = metric_labels(labels, metric);
        self.e_value.remove(&l);
        self.rollback_threshold.remove(&l);
        self.margin.remove(&l);
        self.ratio_bound
            .remove(&bound_labels(labels, metric, "lower"));
        self.ratio_bound
            .remove(&bound_labels(labels, metric, "upper"));
    }
}

fn phase_labels(c: &CanaryLabels, phase: Phase) -> PhaseLabels {
    PhaseLabels {
        namespace: c.namespace.clone(),
        canary: c.canary.clone(),
        phase: phase.as_str(),
    }
}

fn arm_labels(c: &CanaryLabels, arm: &'static str) -> ArmLabels {
    ArmLabels {
        namespace: c.namespace.clone(),
        canary: c.canary.clone(),
        arm,
    }
}

fn metric_labels(c: &CanaryLabels, metric: &str) -> MetricLabels {
    MetricLabels {
        namespace: c.namespace.clone(),
        canary: c.canary.clone(),
        metric: metric.into(),
    }
}

fn bound_labels(c: &CanaryLabels, metric: &str, bound: &'static str) -> BoundLabels {
    BoundLabels {
        namespace: c.namespace.clone(),
        canary: c.canary.clone(),
        metric: metric.into(),
        bound,
    }
}

/// The `decision` label: the rollout event, in snake case.
pub fn decision_name(event: NotifyEvent) -> &'static str {
    match event {
        NotifyEvent::RolloutStarted => "rollout_started",
        NotifyEvent::StepAdvanced => "step_advanced",
        NotifyEvent::Paused => "paused",
        NotifyEvent::RolledBack => "rolled_back",
        NotifyEvent::Promoted => "promoted",
        NotifyEvent::Succeeded => "succeeded",
    }
}

//! What the rollout page shows beyond a Canary's status: every look of the current rollout,
//! recorded by the replica that made it.
//!
//! A Canary's status keeps only the last decision and a short history of phase changes (so
//! that it stays small); the page draws each look's evidence and confidence bounds over the
//! whole rollout, so the controller hands every new decision to the [`Board`] as it writes
//! it. The board lives in memory: after a restart (or on a replica that does not lead) the
//! page starts with the looks made since, and says so. It is bounded whatever the size of
//! the fleet: at most [`LOOK_BUDGET`] looks in all, and at most [`MAX_LOOKS_PER_CANARY`] per
//! Canary (fewer when many Canaries share the budget; never fewer than
//! [`MIN_LOOKS_PER_CANARY`]), oldest dropped first; a Canary's looks are dropped when a new
//! rollout starts or the Canary is deleted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;

use crate::api::{CanaryStatus, Verdict};

/// Looks kept across all Canaries (about 100 bytes each).
pub const LOOK_BUDGET: usize = 100_000;
/// Looks kept for one Canary when the budget allows (six hours of one-minute looks).
pub const MAX_LOOKS_PER_CANARY: usize = 360;
/// Looks kept for one Canary however large the fleet.
pub const MIN_LOOKS_PER_CANARY: usize = 20;

/// One look as the page draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct Look {
    pub at: Timestamp,
    pub step: u32,
    pub stage_weight: u8,
    pub verdict: Verdict,
    pub metrics: Box<[LookMetric]>,
}

/// One compared quantity at one look (`f32`: the page needs no more).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LookMetric {
    /// Index into [`Looks::names`].
    pub series: u8,
    /// log10 of the evidence that stage is worse, and of the rollback threshold.
    pub log10_evidence: f32,
    pub log10_threshold: f32,
    /// Confidence bounds of the stage/prod ratio over the step; `upper` is NaN while the
    /// step's data cannot bound it.
    pub lower: f32,
    pub upper: f32,
    /// Ratio to advance below (a guardrail: the limit).
    pub margin: f32,
}

/// The looks of one Canary's current rollout.
#[derive(Clone, Debug, Default)]
pub struct Looks {
    /// The rollout these looks belong to (`status.rolloutStartedAt`).
    pub rollout: Option<Timestamp>,
    /// Series names, in the order first seen.
    pub names: Vec<String>,
    pub looks: VecDeque<Look>,
    /// Looks dropped to stay within the budget.
    pub dropped: usize,
}

/// Every Canary's recorded looks, and the controller's cache of Canaries the page lists.
#[derive(Default)]
pub struct Board {
    looks: Mutex<HashMap<(String, String), Looks>>,
    canaries: OnceLock<Store<DynamicObject>>,
}

impl Board {
    /// The controller's cache of Canaries, set once when the controller starts.
    pub fn watch(&self, canaries: Store<DynamicObject>) {
        let _ = self.canaries.set(canaries);
    }

    /// The Canaries as stored (none until the controller runs).
    pub fn canaries(&self) -> Vec<std::sync::Arc<DynamicObject>> {
        self.canaries.get().map(Store::state).unwrap_or_default()
    }

    /// Takes note of a status canaryd wrote: a last decision newer than the last recorded
    /// look is recorded; a new rollout starts a new record.
    pub fn record(&self, namespace: &str, name: &str, status: &CanaryStatus) {
        let Some(decision) = &status.last_decision else {
            return;
        };
        let Some(at) = decision.at else {
            return;
        };
        let mut all = self.looks.lock().expect("board lock");
        let tracked = all.len().max(1);
        let entry = all
            .entry((namespace.to_string(), name.to_string()))
            .or_default();
        if entry.rollout != status.rollout_started_at {
            *entry = Looks {
                rollout: status.rollout_started_at,
                ..Looks::default()
            };
        }
        if entry.looks.back().is_some_and(|last| last.at >= at) {
            return;
        }
        let metrics = decision
            .metrics
            .iter()
            .map(|m| {
                let series = match entry.names.iter().position(|n| *n == m.name) {
                    Some(i) => i,
                    None => {
                        entry.names.push(m.name.clone());
                        entry.names.len() - 1
                    }
                };
                LookMetric {
                    series: u8::try_from(series).unwrap_or(u8::MAX),
                    log10_evidence: log10(m.e_value),
                    log10_threshold: log10(m.rollback_threshold),
                    lower: m.ratio_lower as f32,
                    upper: m.ratio_upper.map_or(f32::NAN, |u| u as f32),
                    margin: m.margin as f32,
                }
            })
            .collect();
        let cap = (LOOK_BUDGET / tracked).clamp(MIN_LOOKS_PER_CANARY, MAX_LOOKS_PER_CANARY);
        while entry.looks.len() >= cap {
            entry.looks.pop_front();
            entry.dropped += 1;
        }
        entry.looks.push_back(Look {
            at,
            step: decision.step,
            stage_weight: decision.stage_weight,
            verdict: decision.verdict,
            metrics,
        });
    }

    /// The recorded looks of one Canary (empty when none).
    pub fn looks(&self, namespace: &str, name: &str) -> Looks {
        self.looks
            .lock()
            .expect("board lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Looks kept in all.
    pub fn len(&self) -> usize {
        self.looks
            .lock()
            .expect("board lock")
            .values()
            .map(|l| l.looks.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A deleted Canary's looks go with it.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.looks
            .lock()
            .expect("board lock")
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

fn log10(x: f64) -> f32 {
    x.max(f64::MIN_POSITIVE).log10() as f32
}

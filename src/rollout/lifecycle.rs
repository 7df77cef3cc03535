//! The phase machine behind [`decide`].
//!
//! ```text
//! Idle/Succeeded/RolledBack --new ready stage revision--> Testing (0 %, pre-traffic gate)
//! Testing --gate passed--> Progressing (steps[1]) --advance verdict, min dwell--> next step ...
//! last step passed (a 100 % step: held for min dwell with data) --> Promoting (stage 100 %,
//!   update prod, prod checks)
//! Promoting --prod ready and checked--> SwitchingBack (prod 100 %) --weights seen--> Succeeded
//! any active phase --rollback verdict / failed gate / abort--> RolledBack (prod 100 %)
//! Progressing --step maximum, not proven worse (analysis.atMax)--> next step, or Paused
//! any active phase --max duration, no data, drift (pause policy)--> Paused --resume--> back
//! any active phase --stage revision changed--> traffic to prod, start over for the new one
//! ```

use jiff::Timestamp;

use super::*;
use crate::analysis::{
    at_max, evaluate_look, report_line, stage_served, AnalysisError, AtMax, LookContext,
};
use crate::api::limits::{bounded, MAX_HISTORY_TEXT, MAX_TEXT};
use crate::api::release;
use crate::api::{
    AnalysisSpec, AnalysisState, CanarySpec, CanaryStatus, Condition, DecisionRecord, HistoryEntry,
    MetricReport, NoDataAction, PendingGate, Phase, PromotionMode, ReadinessAction, StageWait,
    TrafficContest, TrafficDriftPolicy, TrafficIntent, Verdict,
};

/// How a look's counts are judged: [`evaluate_look`] in [`decide`]; tests pin the verdict.
pub(crate) type Judge<'a> = &'a dyn Fn(
    &AnalysisSpec,
    &AnalysisState,
    &LookCounts,
    &LookContext,
) -> Result<LookOutcome, AnalysisError>;

/// Decides what to do next, judging a fresh look with the analysis.
pub fn decide(
    spec: &CanarySpec,
    status: &CanaryStatus,
    obs: &Observations,
    now: Timestamp,
) -> Decision {
    decide_with(spec, status, obs, now, &evaluate_look)
}

pub(crate) fn decide_with(
    spec: &CanarySpec,
    status: &CanaryStatus,
    obs: &Observations,
    now: Timestamp,
    judge: Judge,
) -> Decision {
    let mut r = Round {
        spec,
        obs,
        now,
        judge,
        status: status.clone(),
        actions: Vec::new(),
        cause: Cause::Lifecycle,
    };
    if r.preconditions_hold() {
        if obs.deleted {
            r.on_deleted();
        } else {
            r.step();
        }
    }
    r.finish(status)
}

/// The status of a Canary whose spec is invalid, or cannot even be decoded: the condition
/// `SpecValid=False` (reason `InvalidSpec`) and the message say why; nothing else changes,
/// and nothing is done until the spec changes.
pub fn hold_invalid_spec(status: &mut CanaryStatus, problem: &str, now: Timestamp) {
    set_condition(status, "SpecValid", false, "InvalidSpec", problem, now);
    status.message = bounded(&format!("invalid spec, nothing done: {problem}"), MAX_TEXT);
    summarize(status, now);
}

/// Sets condition `type_` to True or False; see [`set_condition_to`].
fn set_condition(
    status: &mut CanaryStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let value = if ok { "True" } else { "False" };
    set_condition_to(status, type_, value, reason, message, now);
}

/// Whether `value` is the usual state of condition `type_`, which the status leaves out:
/// kstatus's `Reconciling` and `Stalled` appear only while True (absent means False, as
/// kstatus and Flux read them), the outcomes `Promoted` and `RolledBack` only once reached,
/// and the preconditions only while they fail (`SpecValid=False`, `Conflict=True`, ...), as
/// Argo Rollouts does with `InvalidSpec`. `Ready` is always there. A Canary on its way
/// thus shows two conditions, not nine.
fn is_usual(type_: &str, value: &str) -> bool {
    match type_ {
        "Ready" => false,
        "SpecValid" | "ReferencesAllowed" | "SigningKeysReady" | "TrafficReady" => value == "True",
        _ => value == "False",
    }
}

/// Sets condition `type_` to `value` ("True", "False" or "Unknown"), or drops it when that
/// is its usual state ([`is_usual`]); its transition time moves only when its status does.
fn set_condition_to(
    status: &mut CanaryStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let conditions = &mut status.conditions;
    if is_usual(type_, value) {
        conditions.retain(|c| c.type_ != type_);
        return;
    }
    let message = bounded(message, MAX_TEXT);
    let message = message.as_str();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == value && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Some(now),
            observed_generation: status.observed_generation,
        }),
    }
}

/// The conditions tools wait on, derived from the phase and the precondition conditions:
/// `Ready` (kstatus: True when Idle or Succeeded with no new stage revision pending, False
/// when the rollout needs a person or the Canary can do nothing, Unknown while a rollout
/// runs or a new stage revision is awaited), `Reconciling` and `Stalled`
/// (what kstatus and Flux read), `Promoted` (the last rollout ended with prod on the new
/// release) and `RolledBack`, for `kubectl wait --for=condition=...`; each but `Ready` only
/// while it is not in its usual state ([`is_usual`]).
fn summarize(status: &mut CanaryStatus, now: Timestamp) {
    let blocked = status
        .conditions
        .iter()
        .find(|c| {
            matches!(
                (c.type_.as_str(), c.status.as_str()),
                ("SpecValid" | "ReferencesAllowed", "False") | ("Conflict", "True")
            )
        })
        .map(|c| (c.reason.clone(), c.message.clone()));
    let message = status.message.clone();
    // A new stage revision canaryd waits for (to become ready) is a rollout pending.
    let pending = status.waiting_for_stage.is_some() && !status.phase.is_active();
    let (ready, reason): (&str, String) = match (&blocked, status.phase) {
        (Some((reason, _)), _) => ("False", reason.clone()),
        (None, Phase::Idle | Phase::Succeeded | Phase::RolledBack) if pending => {
            ("Unknown", "Progressing".into())
        }
        (None, Phase::Idle | Phase::Succeeded) => ("True", status.phase.as_str().into()),
        (None, Phase::RolledBack | Phase::Paused) => ("False", status.phase.as_str().into()),
        (None, _) => ("Unknown", "Progressing".into()),
    };
    let ready_message = blocked
        .as_ref()
        .map_or(message.as_str(), |(_, m)| m.as_str());
    set_condition_to(status, "Ready", ready, &reason, ready_message, now);
    let active = blocked.is_none() && ready == "Unknown";
    set_condition(
        status,
        "Reconciling",
        active,
        "Progressing",
        ready_message,
        now,
    );
    let stalled = match (&blocked, status.phase) {
        (Some((reason, _)), _) => Some(reason.clone()),
        (None, Phase::RolledBack | Phase::Paused) if !active => Some(status.phase.as_str().into()),
        _ => None,
    };
    let stalled_reason = stalled.clone().unwrap_or_default();
    set_condition(
        status,
        "Stalled",
        stalled.is_some(),
        &stalled_reason,
        ready_message,
        now,
    );
    let release = status
        .stage_revision
        .as_deref()
        .map(release::shorten)
        .unwrap_or_else(|| "-".into());
    let promoted = status.phase == Phase::Succeeded;
    let why = format!("prod runs {release} with all traffic");
    set_condition(status, "Promoted", promoted, "Promoted", &why, now);
    let rolled_back = status.phase == Phase::RolledBack;
    set_condition(
        status,
        "RolledBack",
        rolled_back,
        "RolledBack",
        &message,
        now,
    );
}

/// Records that the status was decided on `generation` of the Canary: in
/// `status.observedGeneration` and in every condition (metav1.Condition's field).
pub fn observed(status: &mut CanaryStatus, generation: Option<i64>) {
    status.observed_generation = generation;
    for c in &mut status.conditions {
        c.observed_generation = generation;
    }
}

struct Round<'a> {
    spec: &'a CanarySpec,
    obs: &'a Observations,
    now: Timestamp,
    judge: Judge<'a>,
    status: CanaryStatus,
    actions: Vec<Action>,
    /// What brought this round's events about (the strongest cause seen).
    cause: Cause,
}

fn short(rev: &str) -> String {
    release::shorten(rev)
}

impl Round<'_> {
    /// A valid spec, allowed references, a route no older Canary drives, and a readable
    /// route, recorded as the `SpecValid`, `ReferencesAllowed`, `Conflict` and `TrafficReady`
    /// conditions. Without them nothing else is decided: the Canary holds where it is.
    fn preconditions_hold(&mut self) -> bool {
        if let Some(problem) = &self.obs.spec_problem {
            if !self.obs.deleted {
                hold_invalid_spec(&mut self.status, problem, self.now);
            }
            return false;
        }
        self.condition_usual("SpecValid");
        if let Some(problem) = &self.obs.reference_problem {
            if !self.obs.deleted {
                self.condition("ReferencesAllowed", false, "NotGranted", problem);
                self.say(format!("holding, nothing read or written: {problem}"));
            }
            return false;
        }
        match &self.obs.signing {
            Some(Ok(())) => self.condition_usual("SigningKeysReady"),
            // Not a hold: the webhooks whose key cannot sign are not called (a gate with
            // one fails), everything else goes on.
            Some(Err(problem)) => self.condition("SigningKeysReady", false, "KeyProblem", problem),
            None => {}
        }
        self.condition_usual("ReferencesAllowed");
        if let Some(owner) = &self.obs.route_owner {
            if !self.obs.deleted {
                let message = format!(
                    "Canary {owner} drives this route (the oldest Canary naming it); this one \
                     writes nothing until it is gone or names another route"
                );
                self.condition("Conflict", true, "RouteOwnedByAnother", &message);
                self.say(format!("holding: {message}"));
            }
            return false;
        }
        self.condition_usual("Conflict");
        match &self.obs.traffic {
            // Being deleted without a route: there is no traffic to restore.
            Err(_) if self.obs.deleted => false,
            Err(problem) => {
                self.condition("TrafficReady", false, "RouteProblem", problem);
                self.say(format!("holding: {problem}"));
                false
            }
            Ok(_) => {
                self.condition_usual("TrafficReady");
                true
            }
        }
    }

    fn condition(&mut self, type_: &str, ok: bool, reason: &str, message: &str) {
        set_condition(&mut self.status, type_, ok, reason, message, self.now);
    }

    /// Condition `type_` is in its usual state, which the status leaves out ([`is_usual`]).
    fn condition_usual(&mut self, type_: &str) {
        self.status.conditions.retain(|c| c.type_ != type_);
    }

    fn step(&mut self) {
        self.finish_traffic_intent();
        if let Some(cmd) = &self.obs.command {
            let key = command_key(&cmd.id);
            if self.status.last_command.as_deref() != Some(key.as_str()) {
                self.status.last_command = Some(key);
                self.because(Cause::Operator);
                self.on_command(cmd.verb);
            }
        }
        // Run the phase handlers until the state settles, so that one round reaches the
        // state these observations lead to and a repeat of them finds nothing to do.
        for _ in 0..8 {
            let before = self.marker();
            let phase = self.status.phase;
            if !phase.is_active() {
                self.inactive();
            } else if !self.on_stage_changed() {
                match phase {
                    Phase::Testing => self.testing(),
                    Phase::Progressing => self.progressing(),
                    Phase::Promoting => self.promoting(),
                    Phase::SwitchingBack => self.switching_back(),
                    _ => {}
                }
            }
            if self.marker() == before {
                break;
            }
        }
        if self.status.phase.is_active() {
            self.check_drift();
        }
        self.restart_lost_gate();
    }

    /// A pending gate that neither reported nor runs was lost with a previous process:
    /// start it again under the same id.
    fn restart_lost_gate(&mut self) {
        let Some(pending) = &self.status.pending_gate else {
            return;
        };
        let reported = self.obs.gate.as_ref().is_some_and(|g| g.id == pending.id);
        let started = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartGate { id, .. } if *id == pending.id));
        if !reported && !started && !self.obs.gate_running {
            self.actions.push(Action::StartGate {
                id: pending.id.clone(),
                kind: pending.kind,
            });
        }
    }

    /// Records what brought this round's events about; the strongest cause wins.
    fn because(&mut self, cause: Cause) {
        let strength = |c: Cause| match c {
            Cause::Operator => 5,
            Cause::Analysis => 4,
            Cause::Gate => 3,
            Cause::NoData => 2,
            Cause::NewRevision => 1,
            Cause::Lifecycle => 0,
        };
        if strength(cause) > strength(self.cause) {
            self.cause = cause;
        }
    }

    /// What identifies a point of progress; a handler that changes none of it is done.
    fn marker(&self) -> (Phase, u32, Option<String>, Option<String>, bool) {
        let s = &self.status;
        (
            s.phase,
            s.step,
            s.stage_revision.clone(),
            s.pending_gate.as_ref().map(|g| g.id.clone()),
            s.prod_update_requested_at.is_some(),
        )
    }

    // -- inactive phases -------------------------------------------------------------

    fn inactive(&mut self) {
        let obs = self.obs;
        let (Some(stage), Some(prod)) = (&obs.stage, &obs.prod) else {
            let missing = if self.obs.stage.is_none() {
                "stage"
            } else {
                "prod"
            };
            self.say(format!("waiting for the {missing} Deployment to exist"));
            return;
        };
        if self.status.prod_revision.as_deref() != Some(prod.revision.as_str()) {
            self.status.prod_revision = Some(prod.revision.clone());
        }
        if stage.revision == prod.revision
            || self.status.rolled_back_revision.as_deref() == Some(stage.revision.as_str())
        {
            // Nothing to wait for: no readiness clock.
            self.status.waiting_for_stage = None;
        }
        if stage.revision == prod.revision {
            if self.status.phase == Phase::Idle {
                self.say(format!(
                    "stage and prod both run {}; nothing to roll out",
                    short(&prod.revision)
                ));
            }
            return;
        }
        if self.status.rolled_back_revision.as_deref() == Some(stage.revision.as_str()) {
            return;
        }
        if !stage.ready {
            self.stage_not_ready(stage);
            return;
        }
        let revision = stage.revision.clone();
        self.because(Cause::NewRevision);
        self.start_rollout(revision);
    }

    fn start_rollout(&mut self, revision: String) {
        let s = &mut self.status;
        s.phase = Phase::Testing;
        s.stage_revision = Some(revision.clone());
        s.rollout_started_at = Some(self.now);
        s.step = 0;
        s.step_started_at = Some(self.now);
        s.analysis = None;
        s.last_decision = None;
        s.no_data_since = None;
        s.paused_from = None;
        s.prod_update_requested_at = None;
        s.rolled_back_revision = None;
        s.waiting_for_stage = None;
        self.clear_contest();
        self.set_weight(self.spec.steps[0]);
        self.start_gate(GateKind::PreTraffic);
        let msg = format!(
            "new stage revision {}: testing at 0 % before any traffic",
            short(&revision)
        );
        self.event(false, "RolloutStarted", msg.clone());
        self.notify(NotifyEvent::RolloutStarted, msg.clone());
        self.say(msg);
    }

    /// Stage runs a new revision that is not ready (in `Idle`, or in `Testing` once it went
    /// unready): starts the readiness clock for that revision (a new revision restarts it)
    /// and, once `spec.readiness.timeout` has passed, rolls the revision back or pauses.
    /// Returns true when it acted.
    fn stage_not_ready(&mut self, stage: &Workload) -> bool {
        let since = match &self.status.waiting_for_stage {
            Some(w) if w.revision == stage.revision => w.since,
            _ => {
                self.status.waiting_for_stage = Some(StageWait {
                    revision: stage.revision.clone(),
                    since: self.now,
                });
                self.now
            }
        };
        let policy = self.spec.readiness;
        let why = stage.why_not_ready.as_deref().unwrap_or("not ready");
        if self.now.duration_since(since) < policy.timeout.span() {
            let next = if self.status.phase == Phase::Testing {
                "the first traffic step waits for it"
            } else {
                "the rollout starts once it is"
            };
            self.say(format!(
                "stage revision {} is not ready yet ({why}); {next}, up to {} from {since} \
                 (readiness.timeout)",
                short(&stage.revision),
                policy.timeout
            ));
            return false;
        }
        let why = format!(
            "stage revision {} did not become ready within {}: {why}",
            short(&stage.revision),
            policy.timeout
        );
        if !self.status.phase.is_active() {
            self.begin_attempt(stage.revision.clone(), since);
        }
        self.status.waiting_for_stage = None;
        match policy.action {
            ReadinessAction::Rollback => self.rollback(why),
            ReadinessAction::Pause => self.pause(format!("{why} (readiness.action: pause)")),
        }
        true
    }

    /// The status of an attempt at rolling out `revision` that never got past waiting for
    /// stage to be ready (since `since`), so that the rollback or pause that ends it records,
    /// notifies and counts that revision and not the previous rollout.
    fn begin_attempt(&mut self, revision: String, since: Timestamp) {
        let s = &mut self.status;
        // A pause then continues here, waiting for stage again.
        s.phase = Phase::Idle;
        s.stage_revision = Some(revision);
        s.rollout_started_at = Some(since);
        s.step = 0;
        s.step_started_at = Some(since);
        s.analysis = None;
        s.last_decision = None;
        s.no_data_since = None;
        s.paused_from = None;
        s.prod_update_requested_at = None;
    }

    // -- changes that cut across phases ---------------------------------------------

    /// Stage vanished or got another revision mid-rollout. Returns true when handled.
    fn on_stage_changed(&mut self) -> bool {
        let Some(stage) = &self.obs.stage else {
            self.because(Cause::NewRevision);
            self.rollback("the stage Deployment disappeared".into());
            return true;
        };
        let current = self.status.stage_revision.clone().unwrap_or_default();
        if stage.revision == current {
            return false;
        }
        let new = stage.revision.clone();
        self.because(Cause::NewRevision);
        self.event(
            false,
            "NewRevision",
            format!(
                "stage changed from {} to {} during the rollout; traffic back to prod, starting over",
                short(&current),
                short(&new)
            ),
        );
        self.set_weight(0);
        self.status.pending_gate = None;
        self.status.phase = Phase::Idle;
        self.status.stage_revision = Some(new);
        self.status.analysis = None;
        true
    }

    /// A weight write recorded in the status (`trafficIntent`) that the route does not show
    /// yet was cut short (a crash, a timeout, a lost leadership) or is still on its way:
    /// write it again, so a restart finishes a started step or rollback instead of reading
    /// the old weights as someone else's change. Once the route shows it, the intent is done.
    /// A route that moved elsewhere meanwhile (not the old weight, nor, for a move toward
    /// prod, anywhere above the new one) was changed by someone else: the intent is dropped
    /// and drift handling reacts.
    fn finish_traffic_intent(&mut self) {
        let (Some(intent), Ok(seen)) = (self.status.traffic_intent.clone(), &self.obs.traffic)
        else {
            return;
        };
        if seen.stage_weight == intent.to {
            self.status.traffic_intent = None;
            self.status.traffic_version = Some(seen.version.clone());
        } else if seen.stage_weight == intent.from
            || (intent.to < intent.from && seen.stage_weight > intent.to)
        {
            self.status.stage_weight = intent.to;
            self.write_weights(intent.to);
        } else {
            self.status.traffic_intent = None;
        }
    }

    fn check_drift(&mut self) {
        let Ok(seen) = &self.obs.traffic else {
            return;
        };
        if self.status.traffic_version.as_deref() == Some(seen.version.as_str()) {
            return;
        }
        let ours = self.status.stage_weight;
        if self
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetWeights { .. }))
        {
            // This version is being overwritten now.
            self.status.traffic_version = Some(seen.version.clone());
            return;
        }
        if seen.stage_weight == ours {
            return;
        }
        self.status.traffic_version = Some(seen.version.clone());
        let what = format!(
            "the VirtualService routes {} % to stage but canaryd set {ours} %; someone else changed the weights",
            seen.stage_weight
        );
        if seen.stage_weight < ours && self.spec.traffic_drift == TrafficDriftPolicy::Reassert {
            // Someone moved users toward prod (an emergency, a person taking over): canaryd
            // never sends them back to stage on its own. It pauses where the route is.
            self.status.stage_weight = seen.stage_weight;
            if self.status.phase == Phase::Paused {
                self.event(true, "TrafficDrift", format!("{what}; staying paused"));
            } else {
                self.pause(format!(
                    "{what}; traffic moved toward prod is never moved back to stage by canaryd \
                     (resume continues at the step's weight, abort rolls back)"
                ));
            }
            return;
        }
        match self.spec.traffic_drift {
            TrafficDriftPolicy::Reassert => {
                if self.is_contested() {
                    // Until a person resumes, canaryd leaves the route to the other writer.
                    self.event(
                        true,
                        "TrafficDrift",
                        format!("{what}; not written back while the weights are contested (resume to take them back)"),
                    );
                    return;
                }
                if let Some(writer) = self.contested(seen.last_writer.clone()) {
                    let message = format!(
                        "{what}; {writer} changed the weights back {CONTESTED_AFTER} times within \
                         {}: paused instead of fighting it. Make {writer} leave the route's \
                         weights to canaryd (README: GitOps and pipelines), then resume",
                        humantime::format_duration(CONTESTED_WINDOW)
                    );
                    self.condition("TrafficContested", true, "ForeignWriter", &message);
                    if self.status.phase == Phase::Paused {
                        self.event(true, "TrafficDrift", format!("{message}; staying paused"));
                        self.say(message);
                    } else {
                        self.pause(message);
                    }
                    return;
                }
                self.event(
                    true,
                    "TrafficDrift",
                    format!("{what}; writing {ours} % back"),
                );
                self.write_weights(ours);
            }
            TrafficDriftPolicy::Pause if self.status.phase != Phase::Paused => {
                self.pause(format!("{what}; paused (spec.trafficDrift: pause)"));
            }
            TrafficDriftPolicy::Pause => {
                self.event(true, "TrafficDrift", format!("{what}; staying paused"));
            }
        }
    }

    /// Records one foreign change of the weights in `status.trafficContest` (the most recent
    /// [`CONTESTED_AFTER`]); returns who keeps changing them once the last
    /// [`CONTESTED_AFTER`] changes all fell within [`CONTESTED_WINDOW`] (a sliding window).
    fn contested(&mut self, writer: Option<String>) -> Option<String> {
        let window = jiff::SignedDuration::try_from(CONTESTED_WINDOW).expect("a small duration");
        let mut contest = self
            .status
            .traffic_contest
            .take()
            .unwrap_or(TrafficContest {
                changes: Vec::new(),
                writer: None,
            });
        contest.changes.push(self.now);
        let excess = contest
            .changes
            .len()
            .saturating_sub(CONTESTED_AFTER as usize);
        contest.changes.drain(..excess);
        contest.writer = writer.or(contest.writer);
        let name = contest
            .writer
            .as_deref()
            .map_or("another writer".to_string(), |w| {
                format!("field manager \"{w}\"")
            });
        let reached = contest.changes.len() == CONTESTED_AFTER as usize
            && self.now.duration_since(contest.changes[0]) <= window;
        self.status.traffic_contest = Some(contest);
        reached.then_some(name)
    }

    /// `TrafficContested=True`: another writer owns the weights until a person resumes.
    fn is_contested(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.type_ == "TrafficContested" && c.status == "True")
    }

    /// A person resumed, or a new rollout started: foreign writes are counted afresh.
    fn clear_contest(&mut self) {
        self.status.traffic_contest = None;
        self.condition_usual("TrafficContested");
    }

    fn on_deleted(&mut self) {
        let routed = self.obs.traffic.as_ref().is_ok_and(|t| t.stage_weight != 0);
        if self.status.phase.is_active() || self.status.stage_weight != 0 || routed {
            self.status.stage_weight = 0;
            self.write_weights(0);
            self.event(
                false,
                "Deleted",
                "the Canary is being deleted; all traffic restored to prod".into(),
            );
            self.status.phase = Phase::Idle;
            self.status.pending_gate = None;
        }
    }

    fn on_command(&mut self, verb: Verb) {
        let phase = self.status.phase;
        let from = self.status.paused_from.unwrap_or(Phase::Progressing);
        match (verb, phase) {
            (Verb::Abort, p) if p.is_active() => self.rollback("aborted by an operator".into()),
            (Verb::Resume, Phase::Paused) => self.resume(from),
            (Verb::Resume, Phase::RolledBack) => {
                self.status.rolled_back_revision = None;
                self.event(
                    false,
                    "Resumed",
                    "an operator asked to retry the rolled-back revision".into(),
                );
                self.status.phase = Phase::Idle;
            }
            (Verb::Promote, Phase::Testing | Phase::Progressing) => {
                self.event(
                    false,
                    "PromoteCommand",
                    "an operator asked to promote now".into(),
                );
                self.enter_promoting(true);
            }
            // Not from a pause in Idle: stage was never ready, nor tested.
            (Verb::Promote, Phase::Paused)
                if !matches!(from, Phase::SwitchingBack | Phase::Idle) =>
            {
                self.event(
                    false,
                    "PromoteCommand",
                    "an operator asked to promote now".into(),
                );
                self.enter_promoting(true);
            }
            (Verb::Promote, Phase::Promoting) => {
                self.event(
                    false,
                    "PromoteCommand",
                    "an operator confirmed the promotion".into(),
                );
                if self.status.prod_update_requested_at.is_none() {
                    self.request_prod_update(true);
                }
            }
            (verb, phase) => self.event(
                false,
                "CommandIgnored",
                format!("{verb:?} does nothing in phase {phase}"),
            ),
        }
    }

    fn resume(&mut self, from: Phase) {
        self.event(
            false,
            "Resumed",
            format!("an operator resumed the rollout ({from})"),
        );
        self.status.paused_from = None;
        self.status.no_data_since = None;
        self.status.pending_gate = None;
        self.status.waiting_for_stage = None;
        self.clear_contest();
        if from == Phase::Idle {
            // Paused because stage did not become ready: wait for it again, on a fresh clock.
            self.status.phase = Phase::Idle;
            self.say("resumed: waiting again for stage to become ready".into());
            return;
        }
        self.status.step_started_at = Some(self.now);
        let weight = self.current_step_weight();
        self.set_weight(weight);
        match from {
            Phase::Testing => {
                self.status.phase = Phase::Testing;
                self.start_gate(GateKind::PreTraffic);
            }
            Phase::Promoting => self.enter_promoting(false),
            Phase::SwitchingBack => self.enter_switching_back(),
            _ => {
                self.status.phase = Phase::Progressing;
                self.start_step_checks();
            }
        }
        self.say(format!(
            "resumed at {} % to stage",
            self.status.stage_weight
        ));
    }

    // -- active phases ----------------------------------------------------------------

    fn testing(&mut self) {
        // Stage was ready when the rollout started; one that went unready since (a crash
        // loop that looked ready at first) gets no traffic, on the readiness deadline.
        let obs = self.obs;
        let unready = obs.stage.as_ref().filter(|s| !s.ready);
        match self.take_gate_result() {
            Some(g) if !g.passed => {
                return self.rollback(format!("pre-traffic checks failed: {}", g.message))
            }
            // Passed while stage was not ready: they run again once it is.
            Some(_) if unready.is_some() => {}
            Some(g) => return self.advance(format!("pre-traffic checks passed: {}", g.message)),
            None => {}
        }
        if let Some(stage) = unready {
            self.stage_not_ready(stage);
            return;
        }
        self.status.waiting_for_stage = None;
        if self.elapsed_in_step() > self.spec.step_duration.max.span() {
            self.pause(format!(
                "the pre-traffic checks gave no result within {}",
                self.spec.step_duration.max
            ));
        } else if self.status.pending_gate.is_none() {
            self.start_gate(GateKind::PreTraffic);
        }
    }

    fn progressing(&mut self) {
        if let Some(g) = self.take_gate_result() {
            if !g.passed {
                return self.rollback(format!("step checks failed: {}", g.message));
            }
        }
        let judged = self.fold_look();
        if let Some(j) = &judged {
            if j.verdict == Verdict::Rollback {
                self.because(Cause::Analysis);
                return self.rollback(j.reason.clone());
            }
        }
        let weight = self.status.stage_weight;
        let min_passed = self.elapsed_in_step() >= self.spec.step_duration.min.span();
        let gates_clear = self.status.pending_gate.is_none();
        let data_ok = self.status.no_data_since.is_none();
        if let Some(j) = &judged {
            let proven = if weight >= 100 {
                // Prod is idle at 100 %, so nothing can be compared: stage must hold the
                // full load for the minimum dwell with data and no rollback verdict.
                j.stage_has_data
            } else {
                j.verdict == Verdict::Advance
            };
            if proven && min_passed && gates_clear && data_ok {
                self.because(Cause::Analysis);
                let why = if weight >= 100 {
                    format!(
                        "stage held 100 % for {}: {}",
                        self.spec.step_duration.min, j.reason
                    )
                } else {
                    j.reason.clone()
                };
                return self.advance(why);
            }
        }
        let policy = self.spec.analysis.no_data;
        if let Some(since) = self.status.no_data_since {
            if self.now.duration_since(since) >= policy.after.span() {
                let why = format!("no telemetry from stage for {}", policy.after);
                return match policy.action {
                    NoDataAction::Hold => self.pause(format!("{why} (noData: hold)")),
                    NoDataAction::Rollback => self.rollback(format!("{why} (noData: rollback)")),
                };
            }
        }
        let max = self.spec.step_duration.max;
        if self.elapsed_in_step() > max.span() {
            let last = self
                .status
                .last_decision
                .as_ref()
                .map(|d| d.reason.clone())
                .unwrap_or_else(|| "no analysis yet".into());
            if (1..100).contains(&weight) && data_ok && gates_clear {
                let over = (self.elapsed_in_step() - max.span()).unsigned_abs();
                let (metrics, held, served) = self.step_evidence();
                let policy = &self.spec.analysis.at_max;
                match at_max(policy, max.0, over, &metrics, held, served) {
                    AtMax::Advance(why) => {
                        self.because(Cause::Analysis);
                        return self.advance(format!("step maximum reached: {why}"));
                    }
                    AtMax::Extend(why) => {
                        let line = self.progress_line();
                        return self.say(format!("{line}: {why}"));
                    }
                    AtMax::Pause(why) => {
                        return self
                            .pause(format!("{why} at {weight} % to stage (last look: {last})"));
                    }
                }
            }
            return self.pause(format!(
                "no decision within {max} at {weight} % to stage (last look: {last})"
            ));
        }
        if let Some(j) = judged {
            let line = self.progress_line();
            self.say(format!("{line}: {}", j.reason));
        }
    }

    fn promoting(&mut self) {
        if let Some(g) = self.take_gate_result() {
            if self.status.prod_update_requested_at.is_none() {
                // The confirm-promotion gate: ask again until it says yes.
                if g.passed {
                    self.request_prod_update(false);
                } else {
                    self.say(format!(
                        "waiting for the promotion to be confirmed: {}",
                        g.message
                    ));
                    self.start_gate(GateKind::ConfirmPromotion);
                }
            } else if g.passed {
                self.enter_switching_back();
            } else {
                self.pause(format!(
                    "prod failed its checks after promotion ({}); traffic stays on stage",
                    g.message
                ));
            }
            return;
        }
        if self.elapsed_in_step() > self.spec.step_duration.max.span() {
            return self.pause(format!(
                "prod did not reach stage's revision and pass its checks within {}",
                self.spec.step_duration.max
            ));
        }
        if self.status.pending_gate.is_none() {
            let stage_rev = self.status.stage_revision.clone().unwrap_or_default();
            let prod_done = self
                .obs
                .prod
                .as_ref()
                .is_some_and(|p| p.revision == stage_rev && p.ready);
            if prod_done {
                self.status.prod_revision = Some(stage_rev.clone());
                if self.spec.checks.is_empty() {
                    self.enter_switching_back();
                } else {
                    self.start_gate(GateKind::ProdVerify);
                    self.say(format!(
                        "prod runs {}: checking prod at 0 %",
                        short(&stage_rev)
                    ));
                }
            } else {
                self.prod_readiness_deadline(&stage_rev);
            }
        }
    }

    /// Prod was asked to run stage's revision and does not run it ready within
    /// `spec.readiness.timeout`: pause, whatever `readiness.action` says. Stage keeps all the
    /// traffic, the safe side: a rollback would send users to a prod that is mid-update.
    fn prod_readiness_deadline(&mut self, stage_rev: &str) {
        let Some(requested) = self.status.prod_update_requested_at else {
            return;
        };
        let timeout = self.spec.readiness.timeout;
        if self.now.duration_since(requested) < timeout.span() {
            return;
        }
        let obs = self.obs;
        let why = match &obs.prod {
            None => "the prod Deployment is gone".to_string(),
            Some(p) if p.revision != stage_rev => format!("prod runs {}", short(&p.revision)),
            Some(p) => p
                .why_not_ready
                .clone()
                .unwrap_or_else(|| "not ready".into()),
        };
        self.pause(format!(
            "prod did not run stage revision {} ready within {timeout} of the promotion: \
             {why}; stage keeps all traffic",
            short(stage_rev)
        ));
    }

    fn switching_back(&mut self) {
        if self.obs.traffic.as_ref().is_ok_and(|t| t.stage_weight == 0) {
            let rev = self.status.stage_revision.clone().unwrap_or_default();
            let took = self
                .status
                .rollout_started_at
                .map(|t| {
                    humantime::format_duration(self.now.duration_since(t).unsigned_abs())
                        .to_string()
                })
                .unwrap_or_default();
            self.status.phase = Phase::Succeeded;
            self.status.prod_revision = Some(rev.clone());
            let msg = format!(
                "prod runs {} with all traffic; rollout took {took}",
                short(&rev)
            );
            self.event(false, "Succeeded", msg.clone());
            self.notify(NotifyEvent::Succeeded, msg.clone());
            self.actions.push(Action::CallWebhooks {
                kind: WebhookKind::PostRollout,
            });
            self.say(msg);
        } else if self.elapsed_in_step() > self.spec.step_duration.max.span() {
            self.pause("the VirtualService did not show all traffic on prod".into());
        }
    }

    // -- transitions ------------------------------------------------------------------

    fn advance(&mut self, why: String) {
        let next = self.status.step as usize + 1;
        if next >= self.spec.steps.len() {
            self.record_decision(Verdict::Advance, why.clone());
            return self.enter_promoting(false);
        }
        // Recorded where it was taken: the step and weight the evidence was gathered at.
        self.record_decision(Verdict::Advance, why.clone());
        let weight = self.spec.steps[next];
        self.status.phase = Phase::Progressing;
        self.status.step = next as u32;
        self.status.step_started_at = Some(self.now);
        self.status.no_data_since = None;
        self.status.pending_gate = None;
        self.set_weight(weight);
        self.start_step_checks();
        let msg = format!("{weight} % to stage (step {next}): {why}");
        self.event(false, "StepAdvanced", msg.clone());
        self.notify(NotifyEvent::StepAdvanced, msg.clone());
        self.say(msg);
    }

    fn enter_promoting(&mut self, forced: bool) {
        self.status.phase = Phase::Promoting;
        self.status.paused_from = None;
        self.status.step = (self.spec.steps.len() - 1) as u32;
        self.status.step_started_at = Some(self.now);
        self.status.pending_gate = None;
        self.status.prod_update_requested_at = None;
        self.set_weight(100);
        let rev = self.status.stage_revision.clone().unwrap_or_default();
        self.event(
            false,
            "Promoting",
            format!("stage holds 100 %; bringing prod to {}", short(&rev)),
        );
        let confirm = self
            .spec
            .webhooks
            .iter()
            .any(|w| w.kind == WebhookKind::ConfirmPromotion);
        if confirm && !forced {
            self.start_gate(GateKind::ConfirmPromotion);
            self.say("stage holds 100 %: waiting for the confirm-promotion webhooks".into());
        } else {
            self.request_prod_update(forced);
        }
    }

    fn request_prod_update(&mut self, by_operator: bool) {
        let rev = self.status.stage_revision.clone().unwrap_or_default();
        let method = match self.spec.promotion.mode {
            PromotionMode::Images => Some(UpdateMethod::Images),
            PromotionMode::CopyWholeTemplate => Some(UpdateMethod::CopyWholeTemplate),
            PromotionMode::Webhook => Some(UpdateMethod::Webhook),
            PromotionMode::Manual if by_operator => Some(UpdateMethod::Images),
            PromotionMode::Manual => None,
        };
        let Some(method) = method else {
            self.say(format!(
                "stage holds 100 %: waiting for a person to promote prod to {} (canaryd promote, or update prod)",
                short(&rev)
            ));
            return;
        };
        if let (UpdateMethod::Images, Some(problem)) = (method, &self.obs.promotion_problem) {
            return self.pause(format!(
                "prod cannot be brought to {}: {problem}; stage keeps all traffic",
                short(&rev)
            ));
        }
        self.status.prod_update_requested_at = Some(self.now);
        self.actions.push(Action::UpdateProd { method });
        let msg = format!("promoting prod to {}", short(&rev));
        self.notify(NotifyEvent::Promoted, msg.clone());
        self.say(msg);
    }

    fn enter_switching_back(&mut self) {
        self.status.phase = Phase::SwitchingBack;
        self.status.pending_gate = None;
        self.status.step_started_at = Some(self.now);
        self.set_weight(0);
        let msg = "prod runs the new revision; moving all traffic back to prod".to_string();
        self.event(false, "SwitchingBack", msg.clone());
        self.say(msg);
    }

    fn rollback(&mut self, why: String) {
        let weight = self.status.stage_weight;
        self.status.phase = Phase::RolledBack;
        self.status.rolled_back_revision = self.status.stage_revision.clone();
        self.status.pending_gate = None;
        self.status.paused_from = None;
        self.record_decision(Verdict::Rollback, why.clone());
        if weight != 0 || self.obs.traffic.as_ref().is_ok_and(|t| t.stage_weight != 0) {
            self.write_weights(0);
        }
        self.status.stage_weight = 0;
        let msg = format!("rolled back at {weight} % to stage: {why}");
        self.event(true, "RolledBack", msg.clone());
        self.notify(NotifyEvent::RolledBack, msg.clone());
        self.actions.push(Action::CallWebhooks {
            kind: WebhookKind::Rollback,
        });
        self.say(msg);
    }

    fn pause(&mut self, why: String) {
        self.status.paused_from = Some(self.status.phase);
        self.status.phase = Phase::Paused;
        self.status.pending_gate = None;
        let msg = format!("paused at {} % to stage: {why}", self.status.stage_weight);
        self.event(true, "Paused", msg.clone());
        self.notify(NotifyEvent::Paused, msg.clone());
        self.say(msg);
    }

    // -- helpers ----------------------------------------------------------------------

    fn current_step_weight(&self) -> u8 {
        let last = self.spec.steps.len().saturating_sub(1);
        self.spec.steps[(self.status.step as usize).min(last)]
    }

    fn elapsed_in_step(&self) -> jiff::SignedDuration {
        self.status
            .step_started_at
            .map(|t| self.now.duration_since(t))
            .unwrap_or_default()
    }

    /// The round's weight write: one per round, the last one decided (a rollback decided
    /// after a finished intent must not first send the intent's weight).
    fn write_weights(&mut self, stage: u8) {
        self.actions
            .retain(|a| !matches!(a, Action::SetWeights { .. }));
        self.actions.push(Action::SetWeights { stage });
    }

    fn set_weight(&mut self, stage: u8) {
        let stage = stage.min(100);
        if self.status.stage_weight != stage {
            self.status.stage_weight = stage;
            self.write_weights(stage);
        }
    }

    fn start_gate(&mut self, kind: GateKind) {
        let rev = self.status.stage_revision.clone().unwrap_or_default();
        let id = format!(
            "{}-{}-{:?}-{}",
            short(&rev),
            self.status.step,
            kind,
            self.now.as_millisecond()
        );
        self.status.pending_gate = Some(PendingGate {
            id: id.clone(),
            kind,
            started_at: self.now,
        });
        self.actions.push(Action::StartGate { id, kind });
    }

    fn start_step_checks(&mut self) {
        if self.status.stage_weight > 0 && self.spec.checks.iter().any(|c| c.every_step) {
            self.start_gate(GateKind::StepChecks);
        }
    }

    /// The result of the pending gate, if it arrived; clears the pending gate.
    fn take_gate_result(&mut self) -> Option<GateResult> {
        let pending = self.status.pending_gate.as_ref()?;
        let result = self
            .obs
            .gate
            .as_ref()
            .filter(|g| g.id == pending.id)?
            .clone();
        self.status.pending_gate = None;
        self.because(Cause::Gate);
        Some(result)
    }

    /// Judges a fresh look of the current step and folds it into the status; returns the
    /// judgement. A stale look is not judged at all.
    fn fold_look(&mut self) -> Option<LookOutcome> {
        let look = self.obs.look.as_ref()?;
        let last_end = self.status.analysis.as_ref().and_then(|a| a.window_end);
        let stale = look.step != self.status.step
            || last_end.is_some_and(|end| look.window_end <= end)
            || self
                .status
                .step_started_at
                .is_some_and(|start| look.window_end <= start);
        if stale {
            return None;
        }
        let judged = match &look.result {
            LookResult::Unavailable { reason } => Err(reason.clone()),
            LookResult::Counts(counts) => {
                let ctx = LookContext {
                    step: self.status.step,
                    stage_weight: self.status.stage_weight,
                    elapsed_in_step: self.elapsed_in_step().unsigned_abs(),
                    min_duration: self.spec.step_duration.min.0,
                    comparative_steps: crate::analysis::comparative_steps(&self.spec.steps),
                };
                let state = self.status.analysis.clone().unwrap_or_default();
                (self.judge)(&self.spec.analysis, &state, counts, &ctx)
                    .map_err(|e| format!("the counts are unusable: {e}"))
            }
        };
        match judged {
            Err(reason) => {
                self.status.no_data_since.get_or_insert(self.now);
                self.say(format!(
                    "holding at {} % to stage: telemetry unavailable ({reason})",
                    self.status.stage_weight
                ));
                None
            }
            Ok(j) => {
                let mut state = j.state.clone();
                state.window_end = Some(look.window_end);
                self.status.analysis = Some(state);
                if j.stage_has_data {
                    self.status.no_data_since = None;
                } else {
                    self.status.no_data_since.get_or_insert(self.now);
                }
                let metrics = j.metrics.iter().map(MetricReport::rounded).collect();
                self.status.last_decision = Some(self.decision(j.verdict, &j.reason, metrics));
                Some(j)
            }
        }
    }

    /// Where the step stands, for the status message: "step 1/3 · 30 % to stage · 1m40s of at
    /// least 2m (at most 30m)".
    fn progress_line(&self) -> String {
        let secs = |d: jiff::SignedDuration| {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs().max(0) as u64))
                .to_string()
        };
        let d = &self.spec.step_duration;
        format!(
            "step {}/{} · {} % to stage · {} of at least {} (at most {})",
            self.status.step,
            self.spec.steps.len().saturating_sub(1),
            self.status.stage_weight,
            secs(self.elapsed_in_step()),
            d.min,
            d.max
        )
    }

    /// What this step's analysis showed so far: the last look's reports, whether a look is
    /// held back, and whether stage served requests during the step.
    fn step_evidence(&self) -> (Vec<MetricReport>, bool, bool) {
        let step = self.status.step;
        let metrics = self
            .status
            .last_decision
            .as_ref()
            .filter(|d| d.step == step && d.verdict == Verdict::Continue)
            .map(|d| d.metrics.clone())
            .unwrap_or_default();
        let state = self.status.analysis.as_ref();
        let held = state.is_some_and(|a| a.series.iter().any(|s| s.held.is_some()));
        let served = !metrics.is_empty() && state.is_some_and(|a| stage_served(a, step));
        (metrics, held, served)
    }

    /// A decision taken now at the current step, with its reports and their summary lines.
    fn decision(
        &self,
        verdict: Verdict,
        reason: &str,
        metrics: Vec<MetricReport>,
    ) -> DecisionRecord {
        DecisionRecord {
            at: Some(self.now),
            verdict,
            step: self.status.step,
            stage_weight: self.status.stage_weight,
            reason: bounded(reason, MAX_TEXT),
            summary: metrics
                .iter()
                .map(|m| bounded(&report_line(m), MAX_TEXT))
                .collect(),
            metrics,
        }
    }

    /// Records a decision that was not a plain look (gates, timeouts, commands), keeping
    /// the last look's statistics when it belongs to the same step.
    fn record_decision(&mut self, verdict: Verdict, reason: String) {
        let metrics = self
            .status
            .last_decision
            .as_ref()
            .filter(|d| d.step == self.status.step)
            .map(|d| d.metrics.clone())
            .unwrap_or_default();
        self.status.last_decision = Some(self.decision(verdict, &reason, metrics));
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.actions.push(Action::RecordEvent {
            warning,
            reason,
            message,
        });
    }

    fn notify(&mut self, event: NotifyEvent, message: String) {
        // The cause is filled in by `finish`, once the round knows it.
        self.actions.push(Action::Notify {
            event,
            cause: Cause::Lifecycle,
            message,
        });
    }

    fn say(&mut self, message: String) {
        self.status.message = bounded(&message, MAX_TEXT);
    }

    fn finish(mut self, before: &CanaryStatus) -> Decision {
        if self.status.no_data_since.is_some() {
            self.because(Cause::NoData);
        }
        for action in &mut self.actions {
            if let Action::Notify { cause, .. } = action {
                *cause = self.cause;
            }
        }
        let to = self.actions.iter().find_map(|a| match a {
            Action::SetWeights { stage } => Some(*stage),
            _ => None,
        });
        if let Some(to) = to {
            // A write finished again keeps its first record (from where, when, why).
            let same = self
                .status
                .traffic_intent
                .as_ref()
                .is_some_and(|i| i.to == to);
            if !same {
                let from = match &self.obs.traffic {
                    Ok(t) => t.stage_weight,
                    Err(_) => before.stage_weight,
                };
                self.status.traffic_intent = Some(TrafficIntent {
                    from,
                    to,
                    at: self.now,
                    reason: bounded(&self.status.message, MAX_HISTORY_TEXT),
                });
            }
        }
        let s = &mut self.status;
        if s.phase != before.phase || s.step != before.step || s.stage_weight != before.stage_weight
        {
            s.history.push(HistoryEntry {
                at: self.now,
                phase: s.phase,
                step: s.step,
                stage_weight: s.stage_weight,
                message: bounded(&s.message, MAX_HISTORY_TEXT),
            });
            let excess = s.history.len().saturating_sub(HISTORY_LIMIT);
            s.history.drain(..excess);
        }
        summarize(&mut self.status, self.now);
        Decision {
            status: self.status,
            actions: self.actions,
        }
    }
}

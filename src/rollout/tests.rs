//! Lifecycle scenarios (the seed's release, rollbacks, restarts, commands) and properties
//! over random observation sequences.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::lifecycle::decide_with;
use super::*;
use crate::analysis::{AnalysisError, LookContext};
use crate::api::{
    AnalysisSpec, AnalysisState, CanarySpec, CanaryStatus, CheckSpec, HumanDuration, NoDataAction,
    Phase, PromotionMode, ReadinessAction, StageWait, TrafficDriftPolicy, Verdict, WebhookKind,
    WebhookSpec, WebhookTarget,
};

fn seed_spec() -> CanarySpec {
    let mut spec: CanarySpec = serde_yaml_ng::from_str(
        r#"
virtualService: {name: demoapp, namespace: prod}
prod:  {host: flaskapp.prod.svc.cluster.local,  deployment: {namespace: prod,  name: flaskapp}}
stage: {host: flaskapp.stage.svc.cluster.local, deployment: {namespace: stage, name: flaskapp}}
steps: [0, 30, 60, 100]
stepDuration: {min: 2m, max: 30m}
analysis: {slo: {maxErrorRate: 0.1}}
"#,
    )
    .unwrap();
    spec.checks.push(CheckSpec {
        name: "smoke".into(),
        url: "http://{{ host }}/health".into(),
        method: "GET".into(),
        expect_status: 200,
        body_contains: None,
        count: 20,
        timeout: HumanDuration::from_secs(5),
        every_step: false,
    });
    crate::api::validate(&spec, "prod").unwrap();
    spec
}

fn t0() -> Timestamp {
    "2026-11-29T12:00:00Z".parse().unwrap()
}

fn outcome(verdict: Verdict, reason: String, stage_has_data: bool) -> LookOutcome {
    LookOutcome {
        state: AnalysisState::default(),
        verdict,
        reason,
        metrics: vec![],
        stage_has_data,
        held: false,
    }
}

/// A judge that gives `outcome` to any look (tests pin the verdict, not the counts).
fn judging_as(
    outcome: Option<LookOutcome>,
) -> impl Fn(
    &AnalysisSpec,
    &AnalysisState,
    &LookCounts,
    &LookContext,
) -> Result<LookOutcome, AnalysisError> {
    move |_, _, _, _| Ok(outcome.clone().expect("a look with counts needs a verdict"))
}

fn ready(rev: &str) -> Option<Workload> {
    Some(Workload {
        revision: rev.into(),
        ready: true,
        why_not_ready: None,
    })
}

/// Drives the lifecycle like the reconciler would, one round at a time.
struct Sim {
    spec: CanarySpec,
    status: CanaryStatus,
    now: Timestamp,
    stage: Option<Workload>,
    prod: Option<Workload>,
    /// What the VirtualService holds; actions write it and bump its version.
    vs_weight: u8,
    vs_version: u64,
}

impl Sim {
    fn new(spec: CanarySpec) -> Self {
        Sim {
            spec,
            status: CanaryStatus::default(),
            now: t0(),
            stage: ready("v1"),
            prod: ready("v1"),
            vs_weight: 0,
            vs_version: 1,
        }
    }

    fn set_vs(&mut self, stage: u8) {
        self.vs_weight = stage;
        self.vs_version += 1;
    }

    fn wait(&mut self, secs: i64) {
        self.now += SignedDuration::from_secs(secs);
    }

    fn obs(&self) -> Observations {
        Observations {
            stage: self.stage.clone(),
            prod: self.prod.clone(),
            traffic: Ok(Traffic {
                stage_weight: self.vs_weight,
                version: self.vs_version.to_string(),
                last_writer: None,
            }),
            // The reconciler runs every gate it is asked to start.
            gate_running: self.status.pending_gate.is_some(),
            ..Default::default()
        }
    }

    /// One round; applies weight and prod-update actions like the reconciler.
    fn round(&mut self, obs: Observations) -> Vec<Action> {
        self.judged_round(obs, None)
    }

    /// One round whose look (if any) the analysis judges as `outcome`.
    fn judged_round(&mut self, obs: Observations, outcome: Option<LookOutcome>) -> Vec<Action> {
        let d = decide_with(
            &self.spec,
            &self.status,
            &obs,
            self.now,
            &judging_as(outcome),
        );
        self.status = d.status;
        for a in &d.actions {
            match a {
                Action::SetWeights { stage } => {
                    self.set_vs(*stage);
                    // The reconciler confirms a weight write it made in the same round.
                    self.status.traffic_intent = None;
                    self.status.traffic_version = Some(self.vs_version.to_string());
                }
                Action::UpdateProd { .. } => self.prod = self.stage.clone(),
                _ => {}
            }
        }
        d.actions
    }

    fn idle_round(&mut self) -> Vec<Action> {
        self.round(self.obs())
    }

    fn gate_result(&mut self, passed: bool) -> Vec<Action> {
        let id = self
            .status
            .pending_gate
            .as_ref()
            .expect("a pending gate")
            .id
            .clone();
        let mut obs = self.obs();
        obs.gate = Some(GateResult {
            id,
            passed,
            message: if passed {
                "20/20 passed"
            } else {
                "3/20 failed"
            }
            .into(),
        });
        self.round(obs)
    }

    fn look(&mut self, verdict: Verdict, has_data: bool) -> Vec<Action> {
        let mut obs = self.obs();
        obs.look = Some(Look {
            step: self.status.step,
            window_end: self.now,
            result: LookResult::Counts(Default::default()),
        });
        let outcome = outcome(
            verdict,
            format!("analysis says {}", verdict.as_str()),
            has_data,
        );
        self.judged_round(obs, Some(outcome))
    }

    /// A look in which stage served requests and nothing was proven: the errors metric
    /// could have caught a regression of `detectable` (None: not even 16x).
    fn at_max_look(&mut self, detectable: Option<f64>) -> Vec<Action> {
        let mut obs = self.obs();
        obs.look = Some(Look {
            step: self.status.step,
            window_end: self.now,
            result: LookResult::Counts(Default::default()),
        });
        let mut outcome = outcome(Verdict::Continue, "nothing proven yet".into(), true);
        outcome.metrics = vec![crate::api::MetricReport {
            name: "errors".into(),
            detectable_ratio: detectable,
            ..Default::default()
        }];
        outcome.state.series = vec![crate::api::SeriesState {
            name: "errors".into(),
            step: self.status.step,
            step_stage_requests: 500,
            ..Default::default()
        }];
        self.judged_round(obs, Some(outcome))
    }

    fn unavailable_look(&mut self) -> Vec<Action> {
        let mut obs = self.obs();
        obs.look = Some(Look {
            step: self.status.step,
            window_end: self.now,
            result: LookResult::Unavailable {
                reason: "Prometheus: connection refused".into(),
            },
        });
        self.round(obs)
    }

    fn command(&mut self, id: &str, verb: Verb) -> Vec<Action> {
        let mut obs = self.obs();
        obs.command = Some(Command {
            id: id.into(),
            verb,
        });
        self.round(obs)
    }

    /// A new stage revision arrives and passes the pre-traffic gate: stage at steps[1].
    fn start_and_pass_pre_traffic(&mut self, rev: &str) {
        self.stage = ready(rev);
        self.idle_round();
        assert_eq!(self.status.phase, Phase::Testing);
        self.gate_result(true);
        assert_eq!(self.status.phase, Phase::Progressing);
    }

    /// Advances from the current traffic step to the next one with an advance verdict.
    fn pass_step(&mut self) -> Vec<Action> {
        self.wait(120);
        let verdict = if self.status.stage_weight == 100 {
            Verdict::Continue
        } else {
            Verdict::Advance
        };
        self.look(verdict, true)
    }

    /// From a traffic step: every step advances, prod is promoted, passes its checks and
    /// gets all traffic back.
    fn run_to_success(&mut self) {
        while self.status.phase == Phase::Progressing {
            self.pass_step();
        }
        self.idle_round();
        self.gate_result(true);
        self.idle_round();
        assert_eq!(self.status.phase, Phase::Succeeded);
    }

    fn phase_weight(&self) -> (Phase, u8) {
        (self.status.phase, self.status.stage_weight)
    }
}

fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

fn set_weights(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetWeights { stage } => Some(*stage),
            _ => None,
        })
        .collect()
}

fn notified(actions: &[Action], event: NotifyEvent) -> bool {
    has(
        actions,
        |a| matches!(a, Action::Notify { event: e, .. } if *e == event),
    )
}

#[test]
fn steps_that_end_below_100_promote_from_the_last_one_with_stage_taking_all_traffic() {
    let mut spec = seed_spec();
    spec.steps = crate::api::default_steps();
    assert_eq!(spec.steps, vec![0, 30, 60]);
    spec.analysis.slo = None;
    crate::api::validate(&spec, "prod").expect("no 100 % step: no guardrail needed");
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    assert_eq!(set_weights(&sim.pass_step()), vec![60]);
    // The last step passed: stage takes all traffic while prod is brought to it.
    let a = sim.pass_step();
    assert_eq!(sim.phase_weight(), (Phase::Promoting, 100));
    assert_eq!(set_weights(&a), vec![100]);
    assert!(has(&a, |a| *a
        == Action::UpdateProd {
            method: UpdateMethod::Images
        }));
    sim.idle_round();
    sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::SwitchingBack, 0));
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert_eq!(sim.status.prod_revision.as_deref(), Some("v2"));
}

#[test]
fn the_seed_release_goes_0_30_60_100_then_promotes_prod_and_switches_back() {
    let mut sim = Sim::new(seed_spec());
    assert!(
        sim.idle_round().is_empty(),
        "same revision everywhere: nothing to do"
    );
    assert_eq!(sim.status.phase, Phase::Idle);

    sim.stage = ready("v2");
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Testing, 0));
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::PreTraffic,
            ..
        }
    )));
    assert!(notified(&a, NotifyEvent::RolloutStarted));

    let a = sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    assert_eq!(set_weights(&a), vec![30]);

    // An advance verdict before the minimum dwell does not advance.
    sim.wait(30);
    assert!(set_weights(&sim.look(Verdict::Advance, true)).is_empty());
    assert_eq!(sim.status.stage_weight, 30);

    assert_eq!(set_weights(&sim.pass_step()), vec![60]);
    assert_eq!(set_weights(&sim.pass_step()), vec![100]);
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 100));

    // Stage held 100 % for the minimum dwell: prod is brought to the new revision.
    let a = sim.pass_step();
    assert_eq!(sim.phase_weight(), (Phase::Promoting, 100));
    assert!(has(&a, |a| *a
        == Action::UpdateProd {
            method: UpdateMethod::Images
        }));
    assert!(notified(&a, NotifyEvent::Promoted));

    // Prod now runs v2 and is ready: its checks run at 0 %.
    let a = sim.idle_round();
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::ProdVerify,
            ..
        }
    )));
    let a = sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::SwitchingBack, 0));
    assert_eq!(set_weights(&a), vec![0]);

    let a = sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert!(notified(&a, NotifyEvent::Succeeded));
    assert!(has(&a, |a| *a
        == Action::CallWebhooks {
            kind: WebhookKind::PostRollout
        }));
    assert_eq!(sim.status.prod_revision.as_deref(), Some("v2"));
    assert_eq!(sim.vs_weight, 0, "prod has all the traffic again");
    assert!(
        sim.idle_round().is_empty(),
        "a finished rollout stays finished"
    );
    let phases: Vec<Phase> = sim.status.history.iter().map(|h| h.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Testing,
            Phase::Progressing,
            Phase::Progressing,
            Phase::Progressing,
            Phase::Promoting,
            Phase::SwitchingBack,
            Phase::Succeeded
        ]
    );
}

#[test]
fn a_rollback_verdict_at_any_traffic_step_sends_everything_to_prod() {
    for step in 1..=3u32 {
        let mut sim = Sim::new(seed_spec());
        sim.start_and_pass_pre_traffic("v2");
        while sim.status.step < step {
            sim.pass_step();
        }
        let weight = sim.status.stage_weight;
        sim.wait(30);
        let a = sim.look(Verdict::Rollback, true);
        assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0), "step {step}");
        assert_eq!(set_weights(&a), vec![0]);
        assert!(notified(&a, NotifyEvent::RolledBack));
        assert!(has(&a, |a| matches!(
            a,
            Action::RecordEvent {
                warning: true,
                reason: "RolledBack",
                ..
            }
        )));
        assert!(has(&a, |a| *a
            == Action::CallWebhooks {
                kind: WebhookKind::Rollback
            }));
        assert!(sim
            .status
            .message
            .contains(&format!("rolled back at {weight} %")));
        assert_eq!(
            sim.status.last_decision.as_ref().unwrap().verdict,
            Verdict::Rollback
        );
        // The rolled-back revision is not tried again on its own.
        sim.wait(600);
        assert!(sim.idle_round().is_empty());
        assert_eq!(sim.status.phase, Phase::RolledBack);
    }
}

#[test]
fn failed_pre_traffic_checks_roll_back_before_any_traffic() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    sim.idle_round();
    let a = sim.gate_result(false);
    assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0));
    assert!(set_weights(&a).is_empty(), "stage never had traffic");
    assert!(sim
        .status
        .message
        .contains("pre-traffic checks failed: 3/20 failed"));
}

#[test]
fn a_new_stage_revision_mid_rollout_restarts_from_zero() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    assert_eq!(sim.status.stage_weight, 60);

    sim.stage = Some(Workload {
        revision: "v3".into(),
        ready: false,
        why_not_ready: None,
    });
    let a = sim.idle_round();
    assert_eq!(set_weights(&a), vec![0], "traffic back to prod at once");
    assert_eq!(
        sim.status.phase,
        Phase::Idle,
        "waits for v3 to be available"
    );
    assert!(has(&a, |a| matches!(
        a,
        Action::RecordEvent {
            reason: "NewRevision",
            ..
        }
    )));

    sim.stage = ready("v3");
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Testing, 0));
    assert_eq!(sim.status.stage_revision.as_deref(), Some("v3"));
    assert_eq!(sim.status.step, 0);
    assert!(
        sim.status.analysis.is_none(),
        "the old revision's evidence is dropped"
    );
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::PreTraffic,
            ..
        }
    )));
}

#[test]
fn stage_reverted_to_prods_revision_means_nothing_to_do() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.stage = ready("v1");
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Idle, 0));
    assert_eq!(set_weights(&a), vec![0]);
    assert!(!has(&a, |a| matches!(a, Action::StartGate { .. })));
    assert!(sim.idle_round().is_empty());
    assert!(sim.status.message.contains("nothing to roll out"));
}

#[test]
fn no_decision_within_the_maximum_step_duration_pauses_under_at_max_pause() {
    let mut spec = seed_spec();
    spec.analysis.at_max.action = crate::api::AtMaxAction::Pause;
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..61 {
        sim.wait(30);
        sim.at_max_look(Some(1.2));
    }
    assert_eq!(sim.phase_weight(), (Phase::Paused, 30), "weights are held");
    assert!(
        sim.status
            .message
            .contains("no decision within 30m (atMax: pause)"),
        "{}",
        sim.status.message
    );
    assert_eq!(sim.status.paused_from, Some(Phase::Progressing));
}

#[test]
fn a_step_without_stage_requests_pauses_at_its_maximum_whatever_the_policy() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..61 {
        sim.wait(30);
        sim.look(Verdict::Continue, true);
    }
    assert_eq!(sim.phase_weight(), (Phase::Paused, 30));
    assert!(
        sim.status
            .message
            .contains("stage served no requests within 30m"),
        "{}",
        sim.status.message
    );
}

#[test]
fn at_the_maximum_a_step_not_proven_worse_advances_saying_what_it_could_have_caught() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..60 {
        sim.wait(30);
        sim.at_max_look(Some(1.68));
    }
    assert_eq!(
        sim.phase_weight(),
        (Phase::Progressing, 30),
        "not before the maximum"
    );
    sim.wait(30);
    sim.at_max_look(Some(1.68));
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 60));
    let decision = sim.status.last_decision.as_ref().unwrap();
    assert_eq!(decision.verdict, Verdict::Advance);
    assert_eq!(
        decision.reason,
        "step maximum reached: not proven worse within 30m; with 80 % power this step would \
         have caught errors at 1.7x or worse"
    );
}

#[test]
fn with_a_detectable_ratio_the_step_extends_until_the_power_is_reached_then_pauses() {
    let mut spec = seed_spec();
    spec.analysis.at_max.detectable_ratio = Some(1.5);
    let mut sim = Sim::new(spec.clone());
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..61 {
        sim.wait(30);
        sim.at_max_look(Some(1.7));
    }
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    assert!(
        sim.status.message.starts_with(
            "step 1/3 · 30 % to stage · 30m 30s of at least 2m (at most 30m): not proven worse"
        ) && sim.status.message.contains("comparing for up to 15m more"),
        "{}",
        sim.status.message
    );
    // The power arrives during the extension: the step advances.
    sim.wait(30);
    sim.at_max_look(Some(1.4));
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 60));

    // It never arrives: pause at the maximum plus extendBy.
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..91 {
        sim.wait(30);
        sim.at_max_look(Some(1.7));
    }
    assert_eq!(sim.phase_weight(), (Phase::Paused, 30));
    assert!(
        sim.status
            .message
            .contains("a regression of 1.5x (detectableRatio) would not"),
        "{}",
        sim.status.message
    );
}

#[test]
fn missing_telemetry_holds_then_follows_the_no_data_policy() {
    for action in [NoDataAction::Hold, NoDataAction::Rollback] {
        let mut spec = seed_spec();
        spec.analysis.no_data.action = action;
        let mut sim = Sim::new(spec);
        sim.start_and_pass_pre_traffic("v2");
        let mut moved = vec![];
        for i in 0..25 {
            sim.wait(30);
            let a = if i % 2 == 0 {
                sim.unavailable_look()
            } else {
                sim.look(Verdict::Advance, false)
            };
            moved.extend(set_weights(&a));
        }
        let expected = match action {
            NoDataAction::Hold => (Phase::Paused, 30),
            NoDataAction::Rollback => (Phase::RolledBack, 0),
        };
        assert_eq!(sim.phase_weight(), expected);
        assert!(!moved.contains(&60), "never advances on missing data");
        assert!(sim
            .status
            .message
            .contains("no telemetry from stage for 10m"));
    }
}

#[test]
fn deleting_the_canary_restores_prod() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    let mut obs = sim.obs();
    obs.deleted = true;
    let a = sim.round(obs);
    assert_eq!(set_weights(&a), vec![0]);
    let mut obs = sim.obs();
    obs.deleted = true;
    assert!(sim.round(obs).is_empty());

    let mut idle = Sim::new(seed_spec());
    let mut obs = idle.obs();
    obs.deleted = true;
    assert!(
        idle.round(obs).is_empty(),
        "an idle Canary leaves the weights alone"
    );
}

#[test]
fn abort_rolls_back_and_resume_retries() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let a = sim.command("c1", Verb::Abort);
    assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0));
    assert!(sim.status.message.contains("aborted by an operator"));
    assert!(notified(&a, NotifyEvent::RolledBack));
    assert!(
        sim.command("c1", Verb::Abort).is_empty(),
        "a command runs once"
    );

    let a = sim.command("c2", Verb::Resume);
    assert_eq!(
        sim.phase_weight(),
        (Phase::Testing, 0),
        "resume retries the revision"
    );
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::PreTraffic,
            ..
        }
    )));
}

#[test]
fn resume_continues_a_paused_step_with_a_fresh_clock() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    sim.wait(1900);
    sim.look(Verdict::Continue, true);
    assert_eq!(sim.phase_weight(), (Phase::Paused, 60));
    let a = sim.command("r1", Verb::Resume);
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 60));
    assert!(set_weights(&a).is_empty());
    assert_eq!(sim.status.step_started_at, Some(sim.now));
    assert_eq!(set_weights(&sim.pass_step()), vec![100]);
}

#[test]
fn promote_now_skips_the_analysis() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let a = sim.command("p1", Verb::Promote);
    assert_eq!(sim.phase_weight(), (Phase::Promoting, 100));
    assert_eq!(set_weights(&a), vec![100]);
    assert!(has(&a, |a| matches!(a, Action::UpdateProd { .. })));
}

#[test]
fn manual_promotion_waits_for_a_person() {
    let mut spec = seed_spec();
    spec.promotion.mode = PromotionMode::Manual;
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    sim.pass_step();
    let a = sim.pass_step();
    assert_eq!(sim.status.phase, Phase::Promoting);
    assert!(!has(&a, |a| matches!(a, Action::UpdateProd { .. })));
    assert!(sim.status.message.contains("waiting for a person"));
    sim.wait(60);
    assert!(sim.idle_round().is_empty());
    let a = sim.command("go", Verb::Promote);
    assert!(has(&a, |a| *a
        == Action::UpdateProd {
            method: UpdateMethod::Images
        }));
}

#[test]
fn confirm_promotion_gate_is_asked_until_it_agrees() {
    let mut spec = seed_spec();
    spec.webhooks.push(WebhookSpec {
        name: "approve".into(),
        kind: WebhookKind::ConfirmPromotion,
        target: WebhookTarget {
            url: "http://approver/".into(),
            timeout: HumanDuration::from_secs(5),
            secret_ref: None,
        },
    });
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    sim.pass_step();
    let a = sim.pass_step();
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::ConfirmPromotion,
            ..
        }
    )));
    sim.wait(30);
    let a = sim.gate_result(false);
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::ConfirmPromotion,
            ..
        }
    )));
    assert!(!has(&a, |a| matches!(a, Action::UpdateProd { .. })));
    sim.wait(30);
    let a = sim.gate_result(true);
    assert!(has(&a, |a| matches!(a, Action::UpdateProd { .. })));
}

#[test]
fn prod_failing_its_checks_after_promotion_keeps_traffic_on_stage() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.pass_step();
    sim.pass_step();
    sim.pass_step();
    sim.idle_round();
    let a = sim.gate_result(false);
    assert_eq!(sim.phase_weight(), (Phase::Paused, 100));
    assert!(notified(&a, NotifyEvent::Paused));
    assert!(set_weights(&a).is_empty());
}

#[test]
fn foreign_weight_changes_are_reasserted_once_or_pause() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.set_vs(50);
    let a = sim.idle_round();
    assert_eq!(set_weights(&a), vec![30]);
    assert!(has(&a, |a| matches!(
        a,
        Action::RecordEvent {
            reason: "TrafficDrift",
            ..
        }
    )));

    let mut spec = seed_spec();
    spec.traffic_drift = TrafficDriftPolicy::Pause;
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    sim.set_vs(50);
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Paused, 30));
    assert!(set_weights(&a).is_empty());
    assert!(sim.idle_round().is_empty(), "one reaction per change");
}

#[test]
fn a_writer_that_keeps_changing_the_weights_back_pauses_the_rollout_naming_it() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let foreign = |sim: &mut Sim| {
        sim.set_vs(50);
        let mut obs = sim.obs();
        if let Ok(t) = &mut obs.traffic {
            t.last_writer = Some("argocd-controller".into());
        }
        sim.round(obs)
    };
    for _ in 1..CONTESTED_AFTER {
        sim.wait(60);
        assert_eq!(set_weights(&foreign(&mut sim)), vec![30], "written back");
    }
    sim.wait(60);
    let a = foreign(&mut sim);
    assert!(set_weights(&a).is_empty(), "no fight");
    assert_eq!(sim.status.phase, Phase::Paused);
    assert!(notified(&a, NotifyEvent::Paused));
    let c = condition(&sim.status, "TrafficContested");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "ForeignWriter")
    );
    assert!(
        c.message
            .contains("field manager \"argocd-controller\" changed the weights back 3 times"),
        "{}",
        c.message
    );
    // Contested: the other writer keeps the route until a person resumes, however long.
    let paused_from = sim.status.paused_from;
    for _ in 0..3 {
        sim.wait(400);
        let a = foreign(&mut sim);
        assert!(
            set_weights(&a).is_empty(),
            "never written back while contested"
        );
        assert!(!notified(&a, NotifyEvent::Paused), "paused once");
        assert_eq!(sim.status.phase, Phase::Paused);
        assert_eq!(sim.status.paused_from, paused_from);
    }
    // Resumed by a person: counted afresh, the condition clears.
    sim.command("resume-1", Verb::Resume);
    assert_eq!(sim.status.phase, Phase::Progressing);
    assert!(
        sim.status
            .conditions
            .iter()
            .all(|c| c.type_ != "TrafficContested"),
        "resumed: not contested"
    );

    // Changes far apart are not a fight; the window slides over the most recent ones.
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    for _ in 0..=CONTESTED_AFTER {
        sim.wait(CONTESTED_WINDOW.as_secs() as i64 / 2 + 1);
        assert_eq!(set_weights(&foreign(&mut sim)), vec![30]);
    }
    assert_ne!(sim.status.phase, Phase::Paused);
    sim.wait(60);
    let a = foreign(&mut sim);
    assert!(
        set_weights(&a).is_empty(),
        "the last three within the window"
    );
    assert_eq!(sim.status.phase, Phase::Paused);
}

fn condition<'a>(status: &'a CanaryStatus, type_: &str) -> &'a crate::api::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {:?}", status.conditions))
}

/// (status, reason) of Ready, Reconciling, Stalled, Promoted and RolledBack; ("", "") for
/// one left out in its usual state.
fn summary(status: &CanaryStatus) -> [(String, String); 5] {
    ["Ready", "Reconciling", "Stalled", "Promoted", "RolledBack"].map(|t| {
        let c = status.conditions.iter().find(|c| c.type_ == t);
        c.map_or_else(Default::default, |c| (c.status.clone(), c.reason.clone()))
    })
}

fn sr(pairs: [(&str, &str); 5]) -> [(String, String); 5] {
    pairs.map(|(a, b)| (a.to_string(), b.to_string()))
}

#[test]
fn ready_promoted_and_rolled_back_follow_every_transition() {
    let mut sim = Sim::new(seed_spec());
    sim.idle_round();
    assert_eq!(
        summary(&sim.status),
        sr([("True", "Idle"), ("", ""), ("", ""), ("", ""), ("", "")])
    );
    sim.stage = ready("v2");
    sim.idle_round();
    let in_progress = sr([
        ("Unknown", "Progressing"),
        ("True", "Progressing"),
        ("", ""),
        ("", ""),
        ("", ""),
    ]);
    assert_eq!(summary(&sim.status), in_progress);
    sim.gate_result(true);
    assert_eq!(condition(&sim.status, "Ready").status, "Unknown");
    assert_eq!(summary(&sim.status), in_progress);
    sim.wait(120);
    sim.look(Verdict::Rollback, true);
    assert_eq!(
        summary(&sim.status),
        sr([
            ("False", "RolledBack"),
            ("", ""),
            ("True", "RolledBack"),
            ("", ""),
            ("True", "RolledBack")
        ])
    );

    // The next release: promoted.
    sim.wait(60);
    sim.start_and_pass_pre_traffic("v3");
    assert_eq!(summary(&sim.status), in_progress);
    sim.run_to_success();
    assert_eq!(
        summary(&sim.status),
        sr([
            ("True", "Succeeded"),
            ("", ""),
            ("", ""),
            ("True", "Promoted"),
            ("", "")
        ])
    );
    assert_eq!(
        condition(&sim.status, "Promoted").message,
        "prod runs v3 with all traffic"
    );

    // A new release that is not ready yet is a rollout pending, not a finished one.
    sim.stage = Some(Workload {
        revision: "v4".into(),
        ready: false,
        why_not_ready: Some("0 of 2 replicas updated".into()),
    });
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert_eq!(
        summary(&sim.status)[..2],
        sr([
            ("Unknown", "Progressing"),
            ("True", "Progressing"),
            ("", ""),
            ("", ""),
            ("", "")
        ])[..2]
    );

    // Paused: needs a person.
    sim.start_and_pass_pre_traffic("v4");
    sim.wait(31 * 60);
    sim.look(Verdict::Continue, true);
    assert_eq!(sim.status.phase, Phase::Paused);
    assert_eq!(
        summary(&sim.status),
        sr([
            ("False", "Paused"),
            ("", ""),
            ("True", "Paused"),
            ("", ""),
            ("", "")
        ])
    );

    // An invalid spec: Ready False with its reason, whatever the phase.
    let mut status = sim.status.clone();
    hold_invalid_spec(&mut status, "spec.steps: must start at 0", sim.now);
    assert_eq!(
        (
            condition(&status, "Ready").status.as_str(),
            condition(&status, "Ready").reason.as_str()
        ),
        ("False", "InvalidSpec")
    );
    assert_eq!(condition(&status, "Stalled").status, "True");
}

#[test]
fn every_condition_carries_the_generation_it_was_decided_on() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    sim.idle_round();
    observed(&mut sim.status, Some(7));
    assert_eq!(sim.status.observed_generation, Some(7));
    assert!(!sim.status.conditions.is_empty());
    assert!(sim
        .status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
}

#[test]
fn a_container_on_one_side_only_pauses_the_promotion_with_the_reason() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    while sim.status.stage_weight < 100 {
        sim.pass_step();
    }
    sim.wait(120);
    let mut obs = sim.obs();
    obs.promotion_problem = Some("prod has no container named \"metrics\"".into());
    obs.look = Some(Look {
        step: sim.status.step,
        window_end: sim.now,
        result: LookResult::Counts(Default::default()),
    });
    let a = sim.judged_round(obs, Some(outcome(Verdict::Continue, "fine".into(), true)));
    assert!(
        !has(&a, |a| matches!(a, Action::UpdateProd { .. })),
        "no guess"
    );
    assert_eq!(
        sim.phase_weight(),
        (Phase::Paused, 100),
        "stage keeps the traffic"
    );
    assert!(
        sim.status.message.starts_with(
            "paused at 100 % to stage: prod cannot be brought to v2: prod has no container named \"metrics\""
        ),
        "{}",
        sim.status.message
    );
}

#[test]
fn a_rollback_cut_short_by_a_crash_is_finished_not_undone() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.wait(120);
    // Decided and recorded: RolledBack, weights 0 ... then the process died.
    let d = decide(
        &sim.spec,
        &sim.status,
        &{
            let mut obs = sim.obs();
            obs.command = Some(Command {
                id: "abort-1".into(),
                verb: Verb::Abort,
            });
            obs
        },
        sim.now,
    );
    assert_eq!(set_weights(&d.actions), vec![0]);
    let recorded = d.status;
    assert_eq!(recorded.phase, Phase::RolledBack);
    let intent = recorded
        .traffic_intent
        .clone()
        .expect("the intent is recorded");
    assert_eq!((intent.from, intent.to), (30, 0));
    // The restarted daemon sees "RolledBack" with the route still at 30 % to stage.
    sim.status = recorded;
    assert_eq!(sim.vs_weight, 30);
    let a = sim.idle_round();
    assert_eq!(set_weights(&a), vec![0], "the rollback is finished");
    assert!(!has(&a, |a| matches!(
        a,
        Action::RecordEvent {
            reason: "TrafficDrift",
            ..
        }
    )));
    assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0));
    assert!(sim.idle_round().is_empty(), "and then nothing more");
}

#[test]
fn an_advance_cut_short_by_a_crash_is_finished_once_without_a_flap() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let d = {
        sim.wait(120);
        let mut obs = sim.obs();
        obs.look = Some(Look {
            step: sim.status.step,
            window_end: sim.now,
            result: LookResult::Counts(Default::default()),
        });
        decide_with(
            &sim.spec,
            &sim.status,
            &obs,
            sim.now,
            &judging_as(Some(outcome(Verdict::Advance, "fine".into(), true))),
        )
    };
    assert_eq!(set_weights(&d.actions), vec![60]);
    sim.status = d.status;
    // The route still shows 30 %: the old weights are not written back, 60 % is written
    // once, and the step is not advanced again.
    let a = sim.idle_round();
    assert_eq!(set_weights(&a), vec![60]);
    assert_eq!((sim.status.step, sim.status.stage_weight), (2, 60));
    assert!(sim.idle_round().is_empty());
    assert_eq!((sim.status.step, sim.status.stage_weight), (2, 60));
}

#[test]
fn traffic_moved_toward_prod_by_someone_else_is_never_moved_back() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    sim.set_vs(10);
    let a = sim.idle_round();
    assert!(
        set_weights(&a).is_empty(),
        "10 % is not written back to 30 %"
    );
    assert_eq!(sim.phase_weight(), (Phase::Paused, 10));
    assert!(
        sim.status.message.contains("never moved back to stage"),
        "{}",
        sim.status.message
    );
    assert!(sim.idle_round().is_empty(), "one reaction per change");
}

#[test]
fn looks_from_another_step_or_an_old_window_are_ignored() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.wait(300);
    let mut obs = sim.obs();
    obs.look = Some(Look {
        step: 2,
        window_end: sim.now,
        result: LookResult::Counts(Default::default()),
    });
    let rollback = outcome(Verdict::Rollback, "stale".into(), true);
    assert!(sim.judged_round(obs, Some(rollback)).is_empty());
    assert_eq!(sim.status.phase, Phase::Progressing);
}

#[test]
fn a_stale_look_is_not_judged() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.wait(300);
    let mut obs = sim.obs();
    obs.look = Some(Look {
        step: sim.status.step + 1,
        window_end: sim.now,
        result: LookResult::Counts(Default::default()),
    });
    let never = |_: &AnalysisSpec,
                 _: &AnalysisState,
                 _: &LookCounts,
                 _: &LookContext|
     -> Result<LookOutcome, AnalysisError> {
        panic!("a look from another step was judged")
    };
    let d = decide_with(&sim.spec, &sim.status, &obs, sim.now, &never);
    assert!(d.actions.is_empty());
}

#[test]
fn unusable_counts_hold_like_missing_telemetry() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.wait(300);
    let mut obs = sim.obs();
    let mut counts = LookCounts::default();
    counts.stage.requests = 10.0;
    counts.stage.errors = 11.0;
    obs.look = Some(Look {
        step: sim.status.step,
        window_end: sim.now,
        result: LookResult::Counts(counts),
    });
    // The real analysis: more errors than requests cannot be judged.
    let d = decide(&sim.spec, &sim.status, &obs, sim.now);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(set_weights(&d.actions).is_empty());
    assert!(d.status.no_data_since.is_some());
    assert!(
        d.status.message.contains("the counts are unusable"),
        "{}",
        d.status.message
    );
}

#[test]
fn a_gate_lost_with_a_previous_process_is_started_again_under_its_id() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    sim.idle_round();
    let pending = sim
        .status
        .pending_gate
        .clone()
        .expect("the pre-traffic gate");
    let mut obs = sim.obs();
    obs.gate_running = false;
    let a = sim.round(obs);
    assert_eq!(
        a,
        vec![Action::StartGate {
            id: pending.id.clone(),
            kind: pending.kind
        }]
    );
    assert_eq!(
        sim.status.pending_gate,
        Some(pending),
        "the same gate, not a new one"
    );
    assert!(
        sim.idle_round().is_empty(),
        "running again: nothing to start"
    );
}

#[test]
fn an_invalid_spec_or_a_missing_route_is_a_condition_and_nothing_else() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    let condition = |status: &CanaryStatus, type_: &str| {
        let c = status.conditions.iter().find(|c| c.type_ == type_).cloned();
        c.map(|c| (c.status, c.reason))
    };

    let mut obs = sim.obs();
    obs.spec_problem = Some("spec.steps[2]: 30 does not exceed the step before it".into());
    assert!(sim.round(obs).is_empty());
    assert_eq!(sim.status.phase, Phase::Idle);
    assert_eq!(
        condition(&sim.status, "SpecValid"),
        Some(("False".into(), "InvalidSpec".into()))
    );
    assert!(sim
        .status
        .message
        .starts_with("invalid spec, nothing done: spec.steps[2]"));

    let mut obs = sim.obs();
    obs.traffic = Err("VirtualService prod/demoapp not found".into());
    assert!(sim.round(obs).is_empty());
    assert_eq!(sim.status.phase, Phase::Idle, "no rollout without a route");
    assert_eq!(condition(&sim.status, "SpecValid"), None, "valid again");
    assert_eq!(
        condition(&sim.status, "TrafficReady"),
        Some(("False".into(), "RouteProblem".into()))
    );
    assert_eq!(
        sim.status.message,
        "holding: VirtualService prod/demoapp not found"
    );

    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Testing, "the route is back");
    assert_eq!(condition(&sim.status, "TrafficReady"), None, "found again");
}

#[test]
fn a_revoked_grant_or_an_older_owner_holds_a_rollout_without_a_write() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    let condition = |status: &CanaryStatus, type_: &str| {
        let c = status.conditions.iter().find(|c| c.type_ == type_).cloned();
        c.map(|c| (c.status, c.reason))
    };

    // The grant is deleted mid-rollout: even a rollback verdict writes nothing.
    sim.wait(120);
    let mut obs = sim.obs();
    obs.reference_problem = Some("spec.stage.deployment: Deployment stage/flaskapp ...".into());
    obs.look = Some(Look {
        step: sim.status.step,
        window_end: sim.now,
        result: LookResult::Counts(Default::default()),
    });
    let outcome = outcome(Verdict::Rollback, "worse".into(), true);
    assert!(sim.judged_round(obs, Some(outcome)).is_empty());
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
    assert_eq!(
        condition(&sim.status, "ReferencesAllowed"),
        Some(("False".into(), "NotGranted".into()))
    );

    // An older Canary owns the route: the same hold, named in a Conflict condition.
    let mut obs = sim.obs();
    obs.route_owner = Some("prod/first".into());
    assert!(sim.round(obs).is_empty());
    assert_eq!(
        condition(&sim.status, "Conflict"),
        Some(("True".into(), "RouteOwnedByAnother".into()))
    );
    assert!(sim
        .status
        .message
        .contains("Canary prod/first drives this route"));
    assert_eq!(
        condition(&sim.status, "ReferencesAllowed"),
        None,
        "granted again"
    );

    // Both cleared: the rollout goes on from where it held.
    assert_eq!(set_weights(&sim.pass_step()), vec![60]);
    assert_eq!(condition(&sim.status, "Conflict"), None, "owned again");
}

#[test]
fn every_event_names_what_caused_it() {
    let cause_of = |actions: &[Action], event: NotifyEvent| {
        actions.iter().find_map(|a| match a {
            Action::Notify {
                event: e, cause, ..
            } if *e == event => Some(*cause),
            _ => None,
        })
    };
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    let a = sim.idle_round();
    assert_eq!(
        cause_of(&a, NotifyEvent::RolloutStarted),
        Some(Cause::NewRevision)
    );
    let a = sim.gate_result(false);
    assert_eq!(cause_of(&a, NotifyEvent::RolledBack), Some(Cause::Gate));

    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    sim.wait(30);
    let a = sim.look(Verdict::Rollback, true);
    assert_eq!(cause_of(&a, NotifyEvent::RolledBack), Some(Cause::Analysis));

    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let a = sim.command("1", Verb::Abort);
    assert_eq!(cause_of(&a, NotifyEvent::RolledBack), Some(Cause::Operator));
}

// -- properties over random observation sequences ---------------------------------------

/// One random round: which observations change and how.
#[derive(Clone, Debug)]
struct Choice {
    secs: i64,
    /// A new stage revision (3: the Deployment is gone), or the same as before.
    stage_rev: Option<u8>,
    stage_ready: bool,
    /// prod's revision: v0..v2, 3 = the revision under rollout, or the same as before.
    prod_rev: Option<u8>,
    prod_ready: bool,
    weight: Option<u8>,
    look: Option<(u8, bool, bool)>,
    gate: Option<(bool, bool)>,
    command: Option<u8>,
    deleted: bool,
}

fn choice() -> impl Strategy<Value = Choice> {
    (
        1i64..900,
        (
            prop::option::weighted(0.08, 0u8..4),
            prop::bool::weighted(0.95),
            prop::option::weighted(0.3, 0u8..4),
            prop::bool::weighted(0.9),
        ),
        prop::option::weighted(0.1, 0u8..=100),
        prop::option::weighted(
            0.7,
            (
                // Mostly advance, sometimes continue, rarely roll back.
                prop::sample::select(vec![0u8, 0, 1, 1, 1, 1, 1, 1, 2]),
                prop::bool::weighted(0.9),
                prop::bool::weighted(0.9),
            ),
        ),
        prop::option::weighted(0.5, (prop::bool::weighted(0.9), prop::bool::weighted(0.8))),
        prop::option::weighted(0.03, 0u8..3),
        prop::bool::weighted(0.02),
    )
        .prop_map(
            |(secs, (sr, sok, pr, pok), weight, look, gate, command, deleted)| Choice {
                secs,
                stage_rev: sr,
                stage_ready: sok,
                prod_rev: pr,
                prod_ready: pok,
                weight,
                look,
                gate,
                command,
                deleted,
            },
        )
}

fn spec_variant() -> impl Strategy<Value = CanarySpec> {
    (
        prop::sample::select(vec![
            vec![0u8, 100],
            vec![0, 30, 60, 100],
            vec![0, 5, 10, 25, 50, 100],
        ]),
        prop::sample::select(vec![
            PromotionMode::Images,
            PromotionMode::Manual,
            PromotionMode::Webhook,
        ]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(steps, mode, every_step, pause_on_drift, rollback_on_no_data, pause_on_unready)| {
                let mut spec = seed_spec();
                spec.steps = steps;
                spec.promotion.mode = mode;
                if mode == PromotionMode::Webhook {
                    spec.promotion.webhook = Some(WebhookTarget {
                        url: "http://pipeline/".into(),
                        timeout: HumanDuration::from_secs(5),
                        secret_ref: None,
                    });
                }
                spec.checks[0].every_step = every_step;
                if pause_on_drift {
                    spec.traffic_drift = TrafficDriftPolicy::Pause;
                }
                if rollback_on_no_data {
                    spec.analysis.no_data.action = NoDataAction::Rollback;
                }
                if pause_on_unready {
                    spec.readiness.action = ReadinessAction::Pause;
                }
                spec
            },
        )
}

const VERDICTS: [Verdict; 3] = [Verdict::Continue, Verdict::Advance, Verdict::Rollback];

/// How the analysis judges the round's look, if it has one.
fn judgement(c: &Choice) -> Option<LookOutcome> {
    c.look
        .map(|(v, _, data)| outcome(VERDICTS[v as usize], "random".into(), data))
}

fn observe(c: &Choice, status: &CanaryStatus, vs_weight: (u8, u64)) -> Observations {
    let rev = |i: u8| format!("v{i}");
    Observations {
        stage: match c.stage_rev {
            Some(3) => None,
            Some(r) => Some(Workload {
                revision: rev(r),
                ready: c.stage_ready,
                why_not_ready: None,
            }),
            None => Some(Workload {
                revision: status.stage_revision.clone().unwrap_or_else(|| rev(1)),
                ready: c.stage_ready,
                why_not_ready: None,
            }),
        },
        prod: Some(Workload {
            revision: match (c.prod_rev, &status.stage_revision) {
                (Some(3), Some(r)) => r.clone(),
                (Some(r), _) => rev(r.min(2)),
                (None, _) => status.prod_revision.clone().unwrap_or_else(|| rev(0)),
            },
            ready: c.prod_ready,
            why_not_ready: None,
        }),
        traffic: Ok(match c.weight {
            Some(w) => Traffic {
                stage_weight: w,
                version: format!("foreign-{}", status.history.len()),
                last_writer: Some("kubectl-edit".into()),
            },
            None => Traffic {
                stage_weight: vs_weight.0,
                version: vs_weight.1.to_string(),
                last_writer: None,
            },
        }),
        look: c.look.map(|(_, this_step, _)| Look {
            step: if this_step {
                status.step
            } else {
                status.step + 1
            },
            window_end: Timestamp::MAX,
            result: LookResult::Counts(Default::default()),
        }),
        gate: c.gate.map(|(matching, passed)| {
            let id = match &status.pending_gate {
                Some(p) if matching => p.id.clone(),
                _ => "unrelated".into(),
            };
            GateResult {
                id,
                passed,
                message: "random".into(),
            }
        }),
        command: c.command.map(|v| Command {
            id: format!("cmd-{}", status.history.len()),
            verb: [Verb::Abort, Verb::Resume, Verb::Promote][v as usize],
        }),
        deleted: c.deleted,
        // The reconciler runs every gate it is asked to start.
        gate_running: status.pending_gate.is_some(),
        spec_problem: None,
        reference_problem: None,
        route_owner: None,
        signing: None,
        promotion_problem: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_invariants_hold_over_random_observations(
        spec in spec_variant(),
        choices in prop::collection::vec(choice(), 1..80),
    ) {
        let mut status = CanaryStatus::default();
        let mut vs = (0u8, 1u64);
        let mut now = t0();
        for c in &choices {
            now += SignedDuration::from_secs(c.secs);
            let mut obs = observe(c, &status, vs);
            if let Some(look) = &mut obs.look {
                look.window_end = now;
            }
            let judge = judging_as(judgement(c));
            let d = decide_with(&spec, &status, &obs, now, &judge);
            let new = &d.status;
            let written = set_weights(&d.actions);

            // Weights stay within 0..=100 and what is written is what the status records
            // (unless reasserting the recorded weight after a foreign change).
            prop_assert!(new.stage_weight <= 100);
            prop_assert!(written.iter().all(|w| *w <= 100));
            if let Some(last) = written.last() {
                prop_assert_eq!(*last, new.stage_weight);
            }

            // No advance without an advance verdict, passing checks or an operator's promote.
            if new.stage_weight > status.stage_weight {
                let gate_passed = obs.gate.as_ref().is_some_and(|g| g.passed
                    && status.pending_gate.as_ref().is_some_and(|p| p.id == g.id));
                let judged = matches!(&obs.look, Some(Look { step, .. }) if *step == status.step)
                    && judgement(c).is_some_and(|j| j.verdict == Verdict::Advance);
                let promote = obs.command.as_ref().is_some_and(|c| c.verb == Verb::Promote);
                let resume = obs.command.as_ref().is_some_and(|c| c.verb == Verb::Resume);
                prop_assert!(gate_passed || judged || promote || resume,
                    "weight {} -> {} without cause", status.stage_weight, new.stage_weight);
                if resume && !(gate_passed || judged || promote) {
                    // Resume only restores the weight of the step it paused at.
                    prop_assert_eq!(new.stage_weight, spec.steps[status.step as usize]);
                }
            }

            // Every rollback ends with prod at 100 %.
            if new.phase == Phase::RolledBack && status.phase != Phase::RolledBack {
                prop_assert_eq!(new.stage_weight, 0);
                prop_assert!(written.contains(&0) || (status.stage_weight == 0 && obs.traffic.as_ref().is_ok_and(|t| t.stage_weight == 0)));
            }

            // The reconciler started every gate it was asked to: now it runs.
            obs.gate_running = new.pending_gate.is_some();
            let mut confirmed = new.clone();
            let mut after = obs.clone();
            if let (Some(w), Ok(seen)) = (written.last(), &obs.traffic) {
                // Crash consistency: the intent is in the status before the weights move. A
                // process that died before writing them finds the same write to finish, and
                // nothing else: no step repeated, skipped or undone.
                let intent = new.traffic_intent.as_ref().expect("a weight write records its intent");
                prop_assert_eq!(intent.to, *w);
                let retry = decide_with(&spec, new, &obs, now, &judge);
                let again_written = set_weights(&retry.actions);
                if seen.stage_weight == *w {
                    // The route already showed them: nothing left to write.
                    prop_assert!(again_written.iter().all(|x| x == w));
                } else {
                    prop_assert_eq!(again_written, vec![*w]);
                }
                prop_assert_eq!(
                    (retry.status.phase, retry.status.step, retry.status.stage_weight),
                    (new.phase, new.step, new.stage_weight)
                );
                // The reconciler confirms the write; the route shows it.
                let version = (vs.1 + 1).to_string();
                confirmed.traffic_intent = None;
                confirmed.traffic_version = Some(version.clone());
                after.traffic = Ok(Traffic {
                    stage_weight: *w,
                    version,
                    last_writer: None,
                });
            }
            // Feeding the same observations again changes nothing. With a weight write, the
            // route showing it may let the rollout go on once (SwitchingBack -> Succeeded);
            // after that, repeats change nothing.
            let settled = if written.is_empty() {
                confirmed
            } else {
                decide_with(&spec, &confirmed, &after, now, &judge).status
            };
            after.gate_running = settled.pending_gate.is_some();
            let again = decide_with(&spec, &settled, &after, now, &judge);
            prop_assert!(again.actions.is_empty(), "repeat produced {:?}", again.actions);
            prop_assert_eq!(&again.status, &settled);

            if let Some(w) = written.last() {
                vs = (*w, vs.1 + 1);
            }
            status = d.status;
            prop_assert!(status.history.len() <= HISTORY_LIMIT);
        }
    }
}

#[test]
fn a_long_command_id_is_carried_out_once_and_not_copied_into_the_status() {
    let mut sim = Sim::new(seed_spec());
    sim.start_and_pass_pre_traffic("v2");
    let id = format!("abort/{}", "x".repeat(100_000));
    sim.command(&id, Verb::Abort);
    assert_eq!(sim.status.phase, Phase::RolledBack);
    let recorded = sim.status.last_command.clone().unwrap();
    assert!(recorded.starts_with("abort/xxx"), "{recorded}");
    assert!(recorded.len() < 200, "{}", recorded.len());
    assert!(
        sim.command(&id, Verb::Abort).is_empty(),
        "the same command again does nothing"
    );
    sim.command("resume/1", Verb::Resume);
    assert_eq!(sim.status.last_command.as_deref(), Some("resume/1"));
}

// -- the readiness deadline ---------------------------------------------------------------

/// A Deployment running `rev` whose pods never become available.
fn stuck(rev: &str) -> Option<Workload> {
    Some(Workload {
        revision: rev.into(),
        ready: false,
        why_not_ready: Some(
            "2 of 2 replicas updated, 0 available; Progressing=False ProgressDeadlineExceeded"
                .into(),
        ),
    })
}

fn event(actions: &[Action], reason: &str) -> Option<(bool, String)> {
    actions.iter().find_map(|a| match a {
        Action::RecordEvent {
            warning,
            reason: r,
            message,
        } if *r == reason => Some((*warning, message.clone())),
        _ => None,
    })
}

/// A finished rollout of v2, then v3 released to stage and never ready.
fn waiting_for_v3(spec: CanarySpec) -> Sim {
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    sim.run_to_success();
    sim.wait(3600);
    sim.stage = stuck("v3");
    let a = sim.idle_round();
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(sim.status.phase, Phase::Succeeded, "no rollout starts");
    sim
}

#[test]
fn a_stage_revision_that_never_becomes_ready_is_rolled_back_at_the_deadline() {
    let mut sim = waiting_for_v3(seed_spec());
    let since = sim.now;
    assert_eq!(
        sim.status.waiting_for_stage,
        Some(StageWait {
            revision: "v3".into(),
            since
        })
    );
    assert!(
        sim.status
            .message
            .contains("stage revision v3 is not ready yet (2 of 2 replicas updated"),
        "{}",
        sim.status.message
    );

    // Before the deadline, nothing happens, however often canaryd looks.
    for _ in 0..9 {
        sim.wait(60);
        assert!(sim.idle_round().is_empty());
    }
    assert_eq!(sim.status.phase, Phase::Succeeded);

    sim.wait(60);
    let a = sim.idle_round();
    let s = &sim.status;
    assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0));
    assert_eq!(s.rolled_back_revision.as_deref(), Some("v3"));
    assert_eq!(s.stage_revision.as_deref(), Some("v3"));
    assert_eq!(s.waiting_for_stage, None);
    assert_eq!(
        s.rollout_started_at,
        Some(since),
        "the attempt began at the release"
    );
    assert_eq!(
        s.message,
        "rolled back at 0 % to stage: stage revision v3 did not become ready within 10m: 2 of 2 \
         replicas updated, 0 available; Progressing=False ProgressDeadlineExceeded"
    );
    let decision = s.last_decision.as_ref().unwrap();
    assert_eq!((decision.verdict, decision.step), (Verdict::Rollback, 0));
    assert!(
        decision.metrics.is_empty(),
        "nothing of v2's rollout is kept"
    );
    let (warning, message) = event(&a, "RolledBack").expect("a RolledBack Event");
    assert!(warning);
    assert!(
        message.contains("did not become ready within 10m"),
        "{message}"
    );
    assert!(notified(&a, NotifyEvent::RolledBack), "the alert");
    assert!(has(&a, |a| *a
        == Action::CallWebhooks {
            kind: WebhookKind::Rollback
        }));
    assert!(set_weights(&a).is_empty(), "stage never had traffic");
    assert_eq!(sim.status.history.last().unwrap().phase, Phase::RolledBack);

    // Not tried again, ready or not, until a new revision or a resume.
    sim.wait(3600);
    assert!(sim.idle_round().is_empty());
    sim.stage = ready("v3");
    assert!(sim.idle_round().is_empty());
    assert_eq!(sim.status.phase, Phase::RolledBack);
    sim.command("resume/1", Verb::Resume);
    assert_eq!(sim.status.phase, Phase::Testing, "resume retries v3");
}

#[test]
fn a_stage_that_becomes_ready_in_time_starts_the_rollout() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = stuck("v2");
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Idle);
    assert!(sim.status.waiting_for_stage.is_some());
    sim.wait(599);
    assert!(sim.idle_round().is_empty());
    sim.stage = ready("v2");
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Testing, 0));
    assert!(notified(&a, NotifyEvent::RolloutStarted));
    assert_eq!(sim.status.waiting_for_stage, None);
    sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));
}

#[test]
fn a_new_stage_revision_restarts_the_readiness_clock() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = stuck("v2");
    sim.idle_round();
    sim.wait(500);
    sim.stage = stuck("v3");
    sim.idle_round();
    let since = sim.now;
    assert_eq!(
        sim.status.waiting_for_stage,
        Some(StageWait {
            revision: "v3".into(),
            since
        })
    );
    sim.wait(200); // 11m40s after v2 appeared, 3m20s after v3
    assert!(sim.idle_round().is_empty());
    assert_eq!(sim.status.phase, Phase::Idle);
    sim.wait(400);
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert_eq!(sim.status.rolled_back_revision.as_deref(), Some("v3"));

    // Stage back on prod's revision: nothing to wait for.
    let mut sim = Sim::new(seed_spec());
    sim.stage = stuck("v2");
    sim.idle_round();
    sim.stage = ready("v1");
    sim.idle_round();
    assert_eq!(sim.status.waiting_for_stage, None);
    sim.wait(3600);
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Idle);
}

#[test]
fn with_readiness_action_pause_an_unready_stage_pauses_for_a_person() {
    let mut spec = seed_spec();
    spec.readiness.action = ReadinessAction::Pause;
    spec.readiness.timeout = HumanDuration::from_secs(120);
    let mut sim = waiting_for_v3(spec);
    sim.wait(121);
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Paused, 0));
    assert_eq!(sim.status.paused_from, Some(Phase::Idle));
    assert_eq!(sim.status.rolled_back_revision, None);
    assert!(
        sim.status.message.starts_with(
            "paused at 0 % to stage: stage revision v3 did not become ready within 2m: 2 of 2"
        ),
        "{}",
        sim.status.message
    );
    assert!(event(&a, "Paused").is_some_and(|(warning, _)| warning));
    assert!(notified(&a, NotifyEvent::Paused));
    assert!(!notified(&a, NotifyEvent::RolledBack));
    assert!(sim.idle_round().is_empty(), "a pause waits for a person");

    // Promote cannot skip a stage that was never ready.
    let a = sim.command("promote/1", Verb::Promote);
    assert!(event(&a, "CommandIgnored").is_some(), "{a:?}");
    assert_eq!(sim.status.phase, Phase::Paused);

    // Resume waits again, on a fresh clock; a stage ready by then starts the rollout.
    sim.wait(30);
    let a = sim.command("resume/1", Verb::Resume);
    assert!(set_weights(&a).is_empty(), "{a:?}");
    assert_eq!(sim.phase_weight(), (Phase::Idle, 0));
    assert_eq!(
        sim.status.waiting_for_stage.as_ref().map(|w| w.since),
        Some(sim.now)
    );
    sim.wait(100);
    assert!(sim.idle_round().is_empty());
    sim.stage = ready("v3");
    sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Testing, 0));

    // Abort ends such a pause as a rollback of that revision.
    let mut spec = seed_spec();
    spec.readiness.action = ReadinessAction::Pause;
    let mut sim = waiting_for_v3(spec);
    sim.wait(601);
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Paused);
    sim.command("abort/1", Verb::Abort);
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert_eq!(sim.status.rolled_back_revision.as_deref(), Some("v3"));
}

#[test]
fn a_stage_that_goes_unready_while_testing_gets_no_traffic_and_meets_the_deadline() {
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Testing);
    // It looked ready, then its pods started crashing; the checks still passed.
    sim.stage = stuck("v2");
    sim.wait(5);
    let a = sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::Testing, 0));
    assert!(set_weights(&a).is_empty());
    assert!(
        sim.status.pending_gate.is_none(),
        "the passed checks are dropped"
    );
    assert!(
        sim.status
            .message
            .contains("the first traffic step waits for it"),
        "{}",
        sim.status.message
    );
    // Ready again in time: the checks run again, and their pass starts the traffic.
    sim.wait(60);
    sim.stage = ready("v2");
    let a = sim.idle_round();
    assert!(has(&a, |a| matches!(
        a,
        Action::StartGate {
            kind: GateKind::PreTraffic,
            ..
        }
    )));
    assert_eq!(sim.status.waiting_for_stage, None);
    sim.gate_result(true);
    assert_eq!(sim.phase_weight(), (Phase::Progressing, 30));

    // Unready for good: rolled back at the deadline, counted from when it went unready.
    let mut sim = Sim::new(seed_spec());
    sim.stage = ready("v2");
    sim.idle_round();
    sim.wait(30);
    sim.stage = stuck("v2");
    sim.idle_round();
    sim.wait(599);
    sim.idle_round();
    assert_eq!(sim.status.phase, Phase::Testing);
    sim.wait(1);
    let a = sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::RolledBack, 0));
    assert!(sim
        .status
        .message
        .contains("stage revision v2 did not become ready within 10m"));
    assert!(notified(&a, NotifyEvent::RolledBack));
    assert_eq!(
        sim.status.rollout_started_at,
        Some(t0()),
        "the rollout's own start"
    );
}

#[test]
fn prod_not_running_the_revision_ready_after_promotion_pauses_with_stage_at_100() {
    for action in [ReadinessAction::Rollback, ReadinessAction::Pause] {
        let mut spec = seed_spec();
        spec.readiness.action = action;
        let mut sim = Sim::new(spec);
        sim.start_and_pass_pre_traffic("v2");
        while sim.status.phase == Phase::Progressing {
            sim.pass_step();
        }
        assert_eq!(sim.phase_weight(), (Phase::Promoting, 100));
        // The update was requested, but prod's new pods never become available.
        sim.prod = Some(Workload {
            revision: "v2".into(),
            ready: false,
            why_not_ready: Some("1 of 2 replicas updated, 1 available, 1 old still running".into()),
        });
        sim.wait(300);
        assert!(sim.idle_round().is_empty());
        sim.wait(301);
        let a = sim.idle_round();
        assert_eq!(sim.phase_weight(), (Phase::Paused, 100), "{action:?}");
        assert!(set_weights(&a).is_empty(), "stage keeps all traffic");
        assert_eq!(sim.vs_weight, 100);
        assert_eq!(sim.status.paused_from, Some(Phase::Promoting));
        assert_eq!(
            sim.status.message,
            "paused at 100 % to stage: prod did not run stage revision v2 ready within 10m of \
             the promotion: 1 of 2 replicas updated, 1 available, 1 old still running; stage \
             keeps all traffic"
        );
        assert!(event(&a, "Paused").is_some_and(|(warning, _)| warning));
        assert!(notified(&a, NotifyEvent::Paused));

        // Resume asks for prod's update again, on a fresh clock.
        sim.wait(60);
        let a = sim.command(&format!("resume/{action:?}"), Verb::Resume);
        assert!(has(&a, |a| matches!(a, Action::UpdateProd { .. })));
        assert_eq!(sim.phase_weight(), (Phase::Promoting, 100));
    }

    // Prod still on the old revision (a pipeline that never ran) says so.
    let mut spec = seed_spec();
    spec.promotion.mode = PromotionMode::Webhook;
    spec.promotion.webhook = Some(WebhookTarget {
        url: "http://pipeline/".into(),
        timeout: HumanDuration::from_secs(5),
        secret_ref: None,
    });
    let mut sim = Sim::new(spec);
    sim.start_and_pass_pre_traffic("v2");
    while sim.status.phase == Phase::Progressing {
        sim.pass_step();
    }
    sim.prod = ready("v1");
    sim.wait(601);
    sim.idle_round();
    assert_eq!(sim.phase_weight(), (Phase::Paused, 100));
    assert!(
        sim.status
            .message
            .contains("within 10m of the promotion: prod runs v1"),
        "{}",
        sim.status.message
    );
}

// -- the largest valid Canary keeps its status small ------------------------------------

mod largest_valid_canary {
    use std::collections::BTreeMap;

    use super::*;
    use crate::analysis::{evaluate_look, ArmCounts, Bucket, RatioCounts};
    use crate::api::limits::*;
    use crate::api::{
        validation::series_count, Canary, DeploymentRef, Environment, MetricKind, MetricSpec,
        NotificationEvent, NotificationRoute, PromotionSpec, SecretKeyRef, VirtualServiceRef,
    };
    use crate::config::{NotifierConfig, NotifySettings};
    use crate::notify::{Notifier, RetryPolicy};

    /// `len` characters that cost the most in JSON and in UTF-8: quotes, backslashes, `<`,
    /// control characters and multi-byte letters, made distinct by `tag`.
    fn nasty(tag: &str, len: usize) -> String {
        let pattern = ['"', '\\', '<', '\u{1}', 'é', '語', '\n', '&'];
        let mut text: String = tag.chars().take(len).collect();
        let room = len - text.chars().count();
        text.extend(pattern.iter().cycle().take(room));
        text
    }

    /// `len` characters of a DNS-ish name, made distinct by `tag`.
    fn name(tag: &str, len: usize) -> String {
        format!("{tag}{}", "a".repeat(len - tag.len()))
    }

    fn url(tag: &str) -> String {
        let start = format!("http://{{{{ host }}}}/{tag}/");
        format!("{start}{}", "p".repeat(MAX_URL - start.len()))
    }

    fn target(tag: &str) -> crate::api::WebhookTarget {
        WebhookTarget {
            url: url(tag),
            timeout: HumanDuration(MAX_WEBHOOK_TIMEOUT),
            secret_ref: Some(SecretKeyRef {
                name: name(tag, MAX_OBJECT_NAME),
                key: name(tag, MAX_OBJECT_NAME),
            }),
        }
    }

    /// Three latency thresholds with long decimals (they are part of series names).
    fn thresholds() -> Vec<f64> {
        (0..3).map(|i| 3_599_990.123_456_789 + i as f64).collect()
    }

    /// Every list at its bound, every text at its longest, the most compared series, each
    /// with the longest name: 1 errorRate + 6 ratio metrics + 1 latency metric with three
    /// thresholds = 10 series, all with likelihood grids (guardrails have none).
    fn largest_spec() -> CanarySpec {
        let metric = |i: usize, kind: MetricKind| MetricSpec {
            name: name(&format!("m{i}-"), MAX_NAME),
            kind,
            margin: MAX_RATIO,
            tolerance: MAX_RATIO - 0.5,
            thresholds_ms: if kind == MetricKind::Latency {
                thresholds()
            } else {
                Vec::new()
            },
            bad: (kind == MetricKind::Ratio).then(|| name(&format!("bad{i}"), MAX_PROMQL)),
            total: (kind == MetricKind::Ratio).then(|| name(&format!("total{i}"), MAX_PROMQL)),
        };
        let mut metrics = vec![metric(0, MetricKind::ErrorRate)];
        metrics.extend((1..7).map(|i| metric(i, MetricKind::Ratio)));
        metrics.push(metric(7, MetricKind::Latency));
        let env = |tag: &str| Environment {
            host: name(tag, MAX_HOST),
            deployment: DeploymentRef {
                name: name(tag, MAX_OBJECT_NAME),
                namespace: Some(name(tag, MAX_NAME)),
            },
        };
        let kinds = [
            WebhookKind::PreRollout,
            WebhookKind::ConfirmPromotion,
            WebhookKind::PostRollout,
            WebhookKind::Rollback,
        ];
        let mut spec = seed_spec();
        spec.virtual_service = VirtualServiceRef {
            name: name("vs", MAX_OBJECT_NAME),
            namespace: Some(name("vs", MAX_NAME)),
            route: Some(name("route", MAX_OBJECT_NAME)),
        };
        spec.prod = env("prod");
        spec.stage = env("stage");
        spec.steps = (0..MAX_STEPS)
            .map(|i| (i * 100 / (MAX_STEPS - 1)) as u8)
            .collect();
        spec.analysis.metrics = metrics;
        spec.analysis.slo = None;
        spec.analysis.unguarded_full_load = true;
        // The pauses below are pauses at the step maximum.
        spec.analysis.at_max.action = crate::api::AtMaxAction::Pause;
        spec.checks = (0..MAX_CHECKS)
            .map(|i| CheckSpec {
                name: nasty(&format!("check {i} "), MAX_NAME),
                url: url(&format!("check{i}")),
                method: "POST".into(),
                expect_status: 599,
                body_contains: Some(nasty(&format!("body {i} "), MAX_BODY_CONTAINS)),
                count: MAX_CHECK_COUNT,
                timeout: HumanDuration(MAX_CHECK_TIMEOUT),
                every_step: true,
            })
            .collect();
        spec.webhooks = (0..MAX_WEBHOOKS)
            .map(|i| WebhookSpec {
                name: nasty(&format!("hook {i} "), MAX_NAME),
                kind: kinds[i % kinds.len()],
                target: target(&format!("hook{i}")),
            })
            .collect();
        spec.promotion = PromotionSpec {
            mode: PromotionMode::Webhook,
            webhook: Some(target("promote")),
        };
        spec.notifications = (0..MAX_NOTIFICATION_ROUTES)
            .map(|i| NotificationRoute {
                notifier: notifier_name(i),
                events: vec![
                    NotificationEvent::RolloutStarted,
                    NotificationEvent::StepAdvanced,
                    NotificationEvent::Paused,
                    NotificationEvent::RolledBack,
                    NotificationEvent::Promoted,
                    NotificationEvent::Succeeded,
                ],
            })
            .collect();
        spec
    }

    fn notifier_name(i: usize) -> String {
        name(&format!("notifier-{i}-"), MAX_NAME)
    }

    /// Receivers named as the routes name them (the last one an Alertmanager), none of
    /// which ever answers: every notification stays pending, every alert stays.
    fn notifier() -> Notifier {
        let configs: Vec<NotifierConfig> = (0..MAX_NOTIFICATION_ROUTES)
            .map(|i| {
                let name = notifier_name(i);
                let url = "http://127.0.0.1:9".to_string();
                if i + 1 == MAX_NOTIFICATION_ROUTES {
                    NotifierConfig::Alertmanager { name, url }
                } else {
                    NotifierConfig::Webhook {
                        name,
                        url,
                        secret_file: None,
                    }
                }
            })
            .collect();
        Notifier::new(&configs, NotifySettings::default(), RetryPolicy::default()).unwrap()
    }

    /// Counts every series of `spec` can read: buckets at each threshold, every ratio.
    fn counts(spec: &CanarySpec) -> LookCounts {
        let arm = |errors: f64| {
            let mut latency_buckets: Vec<Bucket> = thresholds()
                .into_iter()
                .enumerate()
                .map(|(i, le_ms)| Bucket {
                    le_ms,
                    count: 900.0 + i as f64,
                })
                .collect();
            latency_buckets.push(Bucket {
                le_ms: f64::INFINITY,
                count: 1000.0,
            });
            let ratios: BTreeMap<String, RatioCounts> = spec
                .analysis
                .metrics
                .iter()
                .filter(|m| m.kind == MetricKind::Ratio)
                .map(|m| {
                    let counts = RatioCounts {
                        bad: errors,
                        total: 1000.0,
                    };
                    (m.name.clone(), counts)
                })
                .collect();
            ArmCounts {
                requests: 1000.0,
                errors,
                latency_buckets,
                ratios,
            }
        };
        LookCounts {
            stage: arm(7.0),
            prod: arm(5.0),
        }
    }

    /// The longest numbers JSON can hold in each place: every float of the analysis
    /// written with 17 digits and an exponent, every count with 20 digits.
    fn longest_numbers(o: &mut LookOutcome) {
        const LONG: f64 = -1.234_567_890_123_456_7e-300;
        const COUNT: u64 = 10_000_000_000_000_000_000;
        for s in &mut o.state.series {
            s.log_likelihood.iter_mut().for_each(|x| *x = LONG);
            s.step_log_likelihood.iter_mut().for_each(|x| *x = LONG);
            s.stage_requests = COUNT;
            s.prod_requests = COUNT;
            s.stage_bad = COUNT;
            s.prod_bad = COUNT;
        }
        let latency = crate::api::LatencyEstimate {
            p50: LONG,
            p90: LONG,
            p99: LONG,
        };
        for m in &mut o.metrics {
            (m.e_value, m.rollback_threshold, m.ratio_lower, m.margin) = (LONG, LONG, LONG, LONG);
            (m.ratio_upper, m.stage_rate, m.prod_rate) = (Some(LONG), Some(LONG), Some(LONG));
            (m.stage_requests, m.prod_requests) = (COUNT, COUNT);
            (m.boundary_ms, m.cles) = (Some(LONG), Some(LONG));
            (m.stage_latency_ms, m.prod_latency_ms) = (Some(latency), Some(latency));
        }
    }

    /// The Sim's state, with the whole reconcile's status path: the real analysis (with
    /// the longest numbers), the lifecycle, then the notification outbox.
    struct Run {
        sim: Sim,
        canary: Canary,
        notifier: Notifier,
        rounds: usize,
        largest: usize,
    }

    impl Run {
        fn round(&mut self, obs: Observations, verdict: Verdict) {
            let judge = |spec: &AnalysisSpec,
                         state: &AnalysisState,
                         counts: &LookCounts,
                         ctx: &LookContext| {
                let mut o = evaluate_look(spec, state, counts, ctx)?;
                longest_numbers(&mut o);
                o.verdict = verdict;
                o.reason = format!("{}; {}", o.reason, nasty("analysis ", 20_000));
                Ok(o)
            };
            let sim = &mut self.sim;
            let d = decide_with(&sim.spec, &sim.status, &obs, sim.now, &judge);
            for a in &d.actions {
                match a {
                    Action::SetWeights { stage } => sim.set_vs(*stage),
                    Action::UpdateProd { .. } => sim.prod = sim.stage.clone(),
                    _ => {}
                }
            }
            let mut status = d.status;
            self.notifier
                .sync(&self.canary, &mut status, &d.actions, sim.now);
            status.observed_generation = Some(i64::MAX);
            let size = status_size(&status);
            assert!(
                size < MAX_STATUS_BYTES,
                "round {}: the status is {size} bytes",
                self.rounds
            );
            assert!(
                status.history.len() >= sim.status.history.len(),
                "round {}: the size guard had to drop history; the bounds do not add up",
                self.rounds
            );
            self.largest = self.largest.max(size);
            self.rounds += 1;
            sim.status = status;
        }

        fn idle(&mut self) {
            self.round(self.sim.obs(), Verdict::Continue);
        }

        fn gate(&mut self, passed: bool) {
            let mut obs = self.sim.obs();
            let id = self
                .sim
                .status
                .pending_gate
                .as_ref()
                .expect("a gate")
                .id
                .clone();
            obs.gate = Some(GateResult {
                id,
                passed,
                message: nasty("gate ", 100_000),
            });
            self.round(obs, Verdict::Continue);
        }

        fn look(&mut self, verdict: Verdict) {
            let mut obs = self.sim.obs();
            obs.look = Some(Look {
                step: self.sim.status.step,
                window_end: self.sim.now,
                result: LookResult::Counts(counts(&self.sim.spec)),
            });
            self.round(obs, verdict);
        }

        fn wait(&mut self, secs: i64) {
            self.sim.wait(secs);
        }

        /// Through every traffic step; `fail_at` fails that step's checks instead, and the
        /// rollout pauses once at `pause_at` and is resumed.
        fn steps(&mut self, fail_at: Option<u32>, mut pause_at: Option<u32>) {
            while self.sim.status.phase == Phase::Progressing {
                let step = self.sim.status.step;
                if self.sim.status.pending_gate.is_some() {
                    self.gate(fail_at != Some(step));
                    if self.sim.status.phase != Phase::Progressing {
                        return;
                    }
                }
                if pause_at == Some(step) {
                    pause_at = None;
                    self.wait(2 * 1800);
                    self.look(Verdict::Continue);
                    assert_eq!(self.sim.status.phase, Phase::Paused);
                    let mut obs = self.sim.obs();
                    obs.command = Some(Command {
                        id: format!("resume/{}", nasty(&step.to_string(), 20_000)),
                        verb: Verb::Resume,
                    });
                    self.round(obs, Verdict::Continue);
                    assert_eq!(
                        self.sim.status.phase,
                        Phase::Progressing,
                        "{}",
                        self.sim.status.message
                    );
                    continue;
                }
                self.wait(130);
                let verdict = if self.sim.status.stage_weight == 100 {
                    Verdict::Continue
                } else {
                    Verdict::Advance
                };
                self.look(verdict);
            }
        }

        /// One rollout of `rev`: rolled back at a step, paused and resumed, or promoted.
        fn rollout(&mut self, rev: &str, n: u32) {
            self.sim.stage = ready(rev);
            self.idle();
            assert_eq!(self.sim.status.phase, Phase::Testing, "{rev}");
            self.gate(true);
            let steps = self.sim.spec.steps.len() as u32;
            match n % 3 {
                0 => return self.steps(Some(1 + n % (steps - 1)), None),
                1 => self.steps(None, Some(1 + n % (steps - 2))),
                _ => self.steps(None, None),
            }
            assert_eq!(self.sim.status.phase, Phase::Promoting, "{rev}");
            self.gate(true); // confirm-promotion
            self.idle(); // prod runs the revision: its checks start
            self.gate(true);
            assert_eq!(self.sim.status.phase, Phase::SwitchingBack, "{rev}");
            self.idle();
            assert_eq!(self.sim.status.phase, Phase::Succeeded, "{rev}");
        }
    }

    #[tokio::test]
    async fn the_status_of_the_largest_valid_canary_stays_under_64_kib() {
        let spec = largest_spec();
        crate::api::validate(&spec, "prod").unwrap();
        assert_eq!(series_count(&spec), MAX_SERIES);
        let mut canary = Canary::new(&name("canary", MAX_OBJECT_NAME), spec.clone());
        canary.metadata.namespace = Some(name("ns", MAX_NAME));
        canary.metadata.uid = Some("6f1c1a62-5a3e-4c1e-9d8f-0123456789ab".into());
        let mut run = Run {
            sim: Sim::new(spec),
            canary,
            notifier: notifier(),
            rounds: 0,
            largest: 0,
        };
        run.idle();
        for n in 0..12 {
            // A pod template hash is 16 hex digits.
            run.rollout(&format!("{n:016x}"), n);
            run.wait(60);
        }
        let s = &run.sim.status;
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.notifications.pending.len(), MAX_PENDING_NOTIFICATIONS);
        assert_eq!(s.notifications.alerts.len(), MAX_ALERTS);
        assert_eq!(
            s.notifications.pending[0].receivers.len(),
            MAX_NOTIFICATION_ROUTES - 1
        );

        // Then every precondition fails in turn, each with a huge problem, so that every
        // condition carries a long message at once.
        let huge = |what: &str| nasty(what, 100_000);
        let mut obs = run.sim.obs();
        obs.traffic = Err(huge("route "));
        obs.signing = Some(Err(huge("signing ")));
        run.round(obs.clone(), Verdict::Continue);
        obs.route_owner = Some(huge("owner "));
        run.round(obs.clone(), Verdict::Continue);
        obs.reference_problem = Some(huge("grant "));
        run.round(obs.clone(), Verdict::Continue);
        obs.spec_problem = Some(huge("spec "));
        run.round(obs, Verdict::Continue);

        let s = &run.sim.status;
        assert!(s
            .conditions
            .iter()
            .all(|c| json_size(&c.message) <= MAX_TEXT));
        assert!(json_size(&s.message) <= MAX_TEXT);
        assert!(s
            .history
            .iter()
            .all(|h| json_size(&h.message) <= MAX_HISTORY_TEXT));
        assert!(s.last_command.as_ref().unwrap().len() < 200);
        let size = serde_json::to_vec(s).unwrap().len();
        assert!(size < 64 * 1024, "{size}");
        assert!(run.largest < 64 * 1024, "{}", run.largest);
        eprintln!(
            "largest status: {} bytes over {} rounds (final {size})",
            run.largest, run.rounds
        );
    }
}

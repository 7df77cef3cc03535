//! One reconcile of one Canary, as a pipeline ([`apply`]):
//! 1. `observe`: the spec's validity, Deployments and VirtualService from the shared caches,
//!    a due look's counts from Prometheus, gate results, operator commands;
//! 2. `rollout::decide` (pure): the new status and the actions, conditions included;
//! 3. `act`: weights, prod's template, gates, webhooks, Events, each write with a timeout;
//! 4. `write_status`: only after every action succeeded, so a failed one is decided again.
//!
//! **A round that moves traffic** runs in another order: intent, act, confirm.
//! 1. The decided status is written first, with the weights being written and why in
//!    `status.trafficIntent` (`from`, `to`, `at`, `reason`);
//! 2. then the weight patch (and the round's other actions);
//! 3. then the confirmation: the intent cleared and the route's new resourceVersion recorded.
//!
//! The invariant: **the status never lags behind the route.** Whatever the route shows, the
//! status already says why, so a process that dies at any point (before the patch, after it,
//! before the confirmation) leaves a status from which the next round, in this process or
//! another, finishes the move (`rollout` writes `to` again while the route shows `from`)
//! instead of reading the old weights as drift: a started rollback is completed, a step is
//! neither repeated nor skipped, and no weight flaps. A route that shows neither `from` nor
//! `to` was moved by someone else; drift handling then reacts, and traffic someone moved
//! toward prod is never sent back to stage by canaryd (it pauses instead).
//!
//! Every write is fenced: the status patch `test`s the Canary's resourceVersion the decision
//! was made on, the weight patch tests the VirtualService's and refuses a move toward stage
//! over weights other than `from`. A deposed leader's late write, or one decided on a cache
//! that lagged, fails with 422, and the next round decides again on what is stored. Failpoints
//! (`crate::failpoint`, feature `failpoints`) mark the two windows between the writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::gates::{ContainerImage, GateJob, GateKey, Origin, WebhookCall, WebhookPayload};
use super::{boundaries, commands, traffic, workload, Context, Error, FIELD_MANAGER, FINALIZER};
use crate::api::validation::{describe, validate};
use crate::api::{
    Canary, CanarySpec, CanaryStatus, GateKind, Phase, PromotionMode, SecretKeyRef, WebhookKind,
};
use crate::config::MIN_SCRAPES_PER_LOOK;
use crate::rollout::{self, Action, Decision, Look, LookResult, Observations, UpdateMethod};

/// Entry point for the kube-rs Controller.
pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Requeue::requeue(Duration::from_secs(5)));
    }
    let api: Api<Canary> =
        Api::namespaced(ctx.client.clone(), &canary.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, canary, |event| async {
        match event {
            Finalize::Apply(c) => apply(&c, &ctx, false).await,
            Finalize::Cleanup(c) => apply(&c, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// What the controller does after a failed reconcile: hold, and try again soon.
pub fn error_policy<K: Resource>(canary: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(
        canary = %canary.name_any(),
        namespace = canary.namespace().unwrap_or_default(),
        category = error.category(),
        %error,
        "reconcile failed; holding and retrying"
    );
    Requeue::requeue(Duration::from_secs(5))
}

async fn apply(canary: &Canary, ctx: &Context, deleting: bool) -> Result<Requeue, Error> {
    if is_stale(&canary.metadata, ctx) {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    let now = Timestamp::from_second((ctx.now)().as_second()).unwrap_or_else(|_| (ctx.now)());
    let status = canary.status.clone().unwrap_or_default();
    let (obs, keys) = observe(canary, &status, ctx, now, deleting).await;
    let decision = rollout::decide(&canary.spec, &status, &obs, now);
    let mut new = decision.status.clone();
    if deleting {
        act(canary, &decision, ctx, &keys).await?;
        ctx.notifier.sync(canary, &mut new, &decision.actions, now);
        return Ok(Requeue::await_change());
    }
    rollout::observed(&mut new, canary.metadata.generation);
    let moves_traffic = decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::SetWeights { .. }));
    if !moves_traffic {
        act(canary, &decision, ctx, &keys).await?;
        ctx.notifier.sync(canary, &mut new, &decision.actions, now);
        write_status(ctx, canary, &new).await?;
        // Only once written: a failed write is decided again, and must not count twice.
        report(ctx, canary, &new, &decision.actions, now);
        return Ok(next_round(&canary.spec, &obs, &new, ctx, now));
    }
    // Traffic moves: intent, act, confirm (see the module doc). The decided status, with
    // the weights in `trafficIntent`, is written first, so a process that dies after the
    // weight patch leaves a status that says what it was doing, and the next round finishes
    // it instead of undoing it.
    ctx.notifier.sync(canary, &mut new, &decision.actions, now);
    let intent_version = write_status(ctx, canary, &new).await?;
    report(ctx, canary, &new, &decision.actions, now);
    crate::failpoint::hit("intent-written");
    let route_version = act(canary, &decision, ctx, &keys).await?;
    if let (Some(route_version), Some(intent_version)) = (route_version, intent_version) {
        let mut confirmed = new.clone();
        confirmed.traffic_intent = None;
        confirmed.traffic_version = Some(route_version);
        let mut after = canary.clone();
        after.status = Some(new.clone());
        after.metadata.resource_version = Some(intent_version);
        write_status(ctx, &after, &confirmed).await?;
        new = confirmed;
    }
    Ok(next_round(&canary.spec, &obs, &new, ctx, now))
}

/// Hands a written status to canaryd's metrics and to the rollout page's board.
fn report(ctx: &Context, canary: &Canary, new: &CanaryStatus, actions: &[Action], now: Timestamp) {
    ctx.exported.record(canary, new, actions, now);
    let namespace = canary.metadata.namespace.as_deref().unwrap_or_default();
    let name = canary.metadata.name.as_deref().unwrap_or_default();
    ctx.board.record(namespace, name, new);
}

/// Everything the lifecycle needs to decide, read from the caches, the gate runner and,
/// when a look is due, Prometheus. Observing writes nothing (a finished gate's result is
/// handed out once; if this round fails, the lost gate is started again under its id).
async fn observe(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
    deleting: bool,
) -> (Observations, SigningKeys) {
    let ns = canary.namespace().unwrap_or_default();
    let spec = &canary.spec;
    let problem = match validate(spec, &ns) {
        Err(errors) => Some(describe(&errors)),
        Ok(()) => look_too_short(spec, ctx),
    };
    if let Some(problem) = problem {
        let obs = Observations {
            spec_problem: Some(problem),
            deleted: deleting,
            ..Observations::default()
        };
        return (obs, SigningKeys::default());
    }
    if let Err(problem) = boundaries::check_references(canary, ctx.references, &ctx.grants) {
        let obs = Observations {
            reference_problem: Some(problem),
            deleted: deleting,
            ..Observations::default()
        };
        return (obs, SigningKeys::default());
    }
    let others = super::decode::readable(&ctx.canaries);
    let route_owner = boundaries::route_owner(canary, &others, ctx.references, &ctx.grants);
    if route_owner.is_some() {
        let obs = Observations {
            route_owner,
            deleted: deleting,
            ..Observations::default()
        };
        return (obs, SigningKeys::default());
    }
    let env_ns = |d: &Option<String>| d.clone().unwrap_or_else(|| ns.clone());
    let deployment = |env: &crate::api::Environment| {
        let at = ObjectRef::<Deployment>::new(&env.deployment.name)
            .within(&env_ns(&env.deployment.namespace));
        ctx.deployments.get(&at)
    };
    let (stage, prod) = (deployment(&spec.stage), deployment(&spec.prod));
    // Only a rollout under way can promote: an idle Canary pays nothing for this check.
    let promoting_possible = status.phase.is_active();
    let promotion_problem = match (&stage, &prod, spec.promotion.mode) {
        (Some(s), Some(p), PromotionMode::Images | PromotionMode::Manual) if promoting_possible => {
            workload::images_patch(s, p, &spec.revision)
                .err()
                .map(|e| e.to_string())
        }
        _ => None,
    };
    let vs_ns = env_ns(&spec.virtual_service.namespace);
    let vs_ref = ObjectRef::new(&spec.virtual_service.name).within(&vs_ns);
    let traffic = match ctx.virtual_services.get(&vs_ref) {
        None => Err(format!(
            "VirtualService {vs_ns}/{} not found",
            spec.virtual_service.name
        )),
        Some(vs) => traffic::observe(&vs, spec).map_err(|e| e.to_string()),
    };
    let look = if status.phase == Phase::Progressing && !deleting && traffic.is_ok() {
        take_look(canary, status, ctx, now).await
    } else {
        None
    };
    let keys = read_keys(canary, ctx).await;
    let pending = status
        .pending_gate
        .as_ref()
        .map(|p| gate_key(canary, &p.id));
    let obs = Observations {
        spec_problem: None,
        reference_problem: None,
        route_owner: None,
        stage: stage.map(|d| workload::observe(&d, &spec.revision)),
        prod: prod.map(|d| workload::observe(&d, &spec.revision)),
        promotion_problem,
        traffic,
        look,
        gate: pending.as_ref().and_then(|key| ctx.gates.take(key)),
        gate_running: pending
            .as_ref()
            .is_some_and(|key| ctx.gates.is_running(key)),
        command: commands::pending(canary),
        deleted: deleting,
        signing: keys.summary(),
    };
    (obs, keys)
}

/// The counts of one look when one is due: the window runs from the end of the last window
/// (or the start of the step) to [`window_end`], at least one look interval long.
async fn take_look(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
) -> Option<Look> {
    let interval = look_interval(&canary.spec, ctx);
    let step_start = status.step_started_at?;
    let start = status
        .analysis
        .as_ref()
        .and_then(|a| a.window_end)
        .map_or(step_start, |end| end.max(step_start));
    let end = window_end(now, ctx.scrape_interval, interval)?;
    let window = end.duration_since(start);
    if window < jiff::SignedDuration::try_from(interval).ok()? {
        return None;
    }
    let result = match ctx.metrics.counts(canary, end, window.unsigned_abs()).await {
        Ok(counts) => LookResult::Counts(counts),
        Err(e) => {
            tracing::warn!(canary = %canary.name_any(), transient = e.is_transient(), error = %e, "no counts for this look; holding");
            LookResult::Unavailable {
                reason: e.to_string(),
            }
        }
    };
    Some(Look {
        step: status.step,
        window_end: end,
        result,
    })
}

/// Where a look taken at `now` ends its window: one scrape interval ago (so the window's last
/// scrape has been ingested), rounded down to a multiple of the look `interval` since the Unix
/// epoch. Every Canary with the same interval thus reads windows with the same ends, and
/// their looks, due at the same instant, are read by one batched query
/// ([`crate::telemetry::Batched`]). Consecutive windows still tile time: each starts where the
/// last ended.
pub(super) fn window_end(
    now: Timestamp,
    scrape: Duration,
    interval: Duration,
) -> Option<Timestamp> {
    let lagged = now - jiff::SignedDuration::try_from(scrape).ok()?;
    let grid = i64::try_from(interval.as_millis()).ok()?.max(1);
    Timestamp::from_millisecond(lagged.as_millisecond().div_euclid(grid) * grid).ok()
}

/// When the look after a window ending at `from` is due: at the first multiple of `interval`
/// at least one interval after `from`, plus one scrape interval (see [`window_end`]).
pub(super) fn look_due(from: Timestamp, scrape: Duration, interval: Duration) -> Option<Timestamp> {
    let grid = i64::try_from(interval.as_millis()).ok()?.max(1);
    let earliest = from.as_millisecond().checked_add(grid)?;
    let aligned = earliest.div_euclid(grid) * grid;
    let aligned = if aligned < earliest {
        aligned + grid
    } else {
        aligned
    };
    let lag = i64::try_from(scrape.as_millis()).ok()?;
    Timestamp::from_millisecond(aligned.checked_add(lag)?).ok()
}

/// The runner's key of this Canary's gate `id` (see [`GateKey`]).
fn gate_key(canary: &Canary, id: &str) -> GateKey {
    GateKey {
        canary_uid: canary.metadata.uid.clone().unwrap_or_default(),
        generation: canary.metadata.generation.unwrap_or_default(),
        id: id.into(),
    }
}

fn look_interval(spec: &CanarySpec, ctx: &Context) -> Duration {
    spec.analysis.interval.map(|d| d.0).unwrap_or(ctx.interval)
}

/// A Canary's own `analysis.interval` shorter than the daemon allows: at least
/// [`MIN_SCRAPES_PER_LOOK`] scrape intervals (the daemon's config checks its own default).
fn look_too_short(spec: &CanarySpec, ctx: &Context) -> Option<String> {
    let interval = spec.analysis.interval?;
    let shortest = ctx.scrape_interval * MIN_SCRAPES_PER_LOOK;
    (interval.0 < shortest).then(|| {
        format!(
            "spec.analysis.interval: {interval} is shorter than {MIN_SCRAPES_PER_LOOK} scrape \
             intervals of canaryd's Prometheus ({}); use at least {}, or leave it out for \
             the daemon's evaluationInterval",
            humantime::format_duration(ctx.scrape_interval),
            humantime::format_duration(shortest)
        )
    })
}

/// When to look at this Canary again (watches wake it sooner on any change).
fn next_round(
    spec: &CanarySpec,
    obs: &Observations,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
) -> Requeue {
    if obs.spec_problem.is_some() {
        // Nothing to do until someone edits the spec.
        return Requeue::await_change();
    }
    if obs.reference_problem.is_some() || obs.route_owner.is_some() {
        // A grant or the owner may change without a change of this Canary: look again.
        return Requeue::requeue(ctx.interval);
    }
    let interval = look_interval(spec, ctx);
    let soon = Duration::from_secs(1)
        .max(interval / 10)
        .min(Duration::from_secs(5));
    match status.phase {
        Phase::Testing | Phase::Promoting | Phase::SwitchingBack => Requeue::requeue(soon),
        Phase::Progressing => {
            let from = status
                .analysis
                .as_ref()
                .and_then(|a| a.window_end)
                .into_iter()
                .chain(status.step_started_at)
                .max()
                .unwrap_or(now);
            // A look is due once its window, ending one scrape interval ago on the interval's
            // grid, is long enough.
            let due = look_due(from, ctx.scrape_interval, interval).unwrap_or(now);
            let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
            if status.pending_gate.is_some() {
                Requeue::requeue(wait.min(soon))
            } else {
                Requeue::requeue(wait.max(Duration::from_millis(200)))
            }
        }
        // Waiting for a new stage revision to become ready: look again by its deadline.
        _ => match &status.waiting_for_stage {
            Some(w) => {
                let left = spec.readiness.timeout.span();
                let left = left.saturating_sub(now.duration_since(w.since));
                let left = Duration::try_from(left).unwrap_or_default();
                Requeue::requeue(interval.min(left).max(Duration::from_millis(200)))
            }
            None => Requeue::requeue(interval),
        },
    }
}

/// Carries out the decision's actions in order; the first failure stops the round. Returns
/// the route's resourceVersion after a weight write.
async fn act(
    canary: &Canary,
    decision: &Decision,
    ctx: &Context,
    keys: &SigningKeys,
) -> Result<Option<String>, Error> {
    let mut route_version = None;
    for action in &decision.actions {
        if let Some(version) = act_once(canary, &decision.status, ctx, keys, action).await? {
            route_version = Some(version);
        }
    }
    Ok(route_version)
}

async fn act_once(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    keys: &SigningKeys,
    action: &Action,
) -> Result<Option<String>, Error> {
    let spec = &canary.spec;
    let ns = canary.namespace().unwrap_or_default();
    match action {
        Action::SetWeights { stage } => {
            let vs_ns = spec
                .virtual_service
                .namespace
                .clone()
                .unwrap_or_else(|| ns.clone());
            let api = Api::namespaced(ctx.client.clone(), &vs_ns);
            // The weights the decision started from: a route someone else moved meanwhile
            // is not written over (a move toward prod needs no such guard).
            let from = status.traffic_intent.as_ref().map(|i| i.from);
            let set = traffic::set_weights(&api, &spec.virtual_service.name, spec, from, *stage);
            let written = ctx.write("the route's weights", set).await?;
            tracing::info!(canary = %canary.name_any(), namespace = %ns, stage = stage, prod = 100 - stage, "weights written");
            crate::failpoint::hit("weights-written");
            return Ok(written.metadata.resource_version);
        }
        Action::StartGate { id, kind } => start_gate(canary, status, ctx, keys, id.clone(), *kind),
        Action::UpdateProd { method } => {
            // The webhook mode writes nothing itself, but only the leader promotes.
            ctx.leading()?;
            update_prod(canary, status, ctx, keys, *method).await?;
        }
        Action::CallWebhooks { kind } => {
            let (calls, refused) = webhook_calls(canary, keys, *kind);
            for problem in refused {
                tracing::warn!(canary = %canary.name_any(), namespace = %ns, %problem, "webhook skipped");
            }
            if !calls.is_empty() {
                ctx.gates.fire(
                    calls,
                    payload(canary, status, kind_name(*kind)),
                    Origin::of(canary, status),
                );
            }
        }
        // Recorded in the status and sent in the background by `Notifier::sync`.
        Action::Notify { .. } => {}
        Action::RecordEvent {
            warning,
            reason,
            message,
        } => {
            let event = kube_event(*warning, reason, message);
            let on = canary.object_ref(&());
            let publish = ctx.recorder.publish(&event, &on);
            match ctx.write("an Event", publish).await {
                Err(Error::NotLeader) => return Err(Error::NotLeader),
                // An Event is a record, not an action: a lost one holds nothing up.
                Err(e) => {
                    tracing::warn!(canary = %canary.name_any(), error = %e, "cannot record an Event")
                }
                Ok(_) => {}
            }
        }
    }
    Ok(None)
}

/// The Event of one decision. kube's recorder folds an Event into an earlier one (a series,
/// `x2` in `kubectl describe`) when type, reason and action match, keeping the first note; so
/// the action carries a digest of the note: the same decision repeated aggregates, and
/// different decisions under one reason (an abort, then a latency rollback) stay apart, each
/// with its own message.
pub fn kube_event(warning: bool, reason: &str, message: &str) -> KubeEvent {
    use sha2::{Digest, Sha256};
    let note: String = message.chars().take(1000).collect();
    let digest = hex::encode(&Sha256::digest(note.as_bytes())[..5]);
    KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        action: format!("{reason}-{digest}"),
        note: Some(note),
        secondary: None,
    }
}

fn kind_name(kind: WebhookKind) -> &'static str {
    match kind {
        WebhookKind::PreRollout => "pre-rollout",
        WebhookKind::ConfirmPromotion => "confirm-promotion",
        WebhookKind::PostRollout => "post-rollout",
        WebhookKind::Rollback => "rollback",
    }
}

fn payload(canary: &Canary, status: &CanaryStatus, event: &str) -> WebhookPayload {
    WebhookPayload {
        event: event.into(),
        canary: canary.name_any(),
        namespace: canary.namespace().unwrap_or_default(),
        phase: status.phase.to_string(),
        stage_revision: status.stage_revision.clone(),
        prod_revision: status.prod_revision.clone(),
        stage_weight: status.stage_weight,
        message: status.message.clone(),
        images: Vec::new(),
    }
}

/// The shortest signing key canaryd signs with, in bytes (after `whsec_` decoding).
pub const MIN_KEY_BYTES: usize = 16;

/// The signing keys this Canary's webhooks name, read this round, by (Secret, key): the key,
/// or why it cannot sign. A webhook whose key cannot sign is never called unsigned.
#[derive(Default)]
struct SigningKeys(BTreeMap<(String, String), Result<Vec<u8>, String>>);

impl SigningKeys {
    /// `None` without signed webhooks; otherwise every problem, or `Ok`.
    fn summary(&self) -> Option<Result<(), String>> {
        if self.0.is_empty() {
            return None;
        }
        let problems: Vec<&str> = self
            .0
            .values()
            .filter_map(|k| k.as_ref().err())
            .map(String::as_str)
            .collect();
        Some(if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        })
    }

    fn key(&self, r: &Option<SecretKeyRef>) -> Result<Option<Vec<u8>>, String> {
        let Some(r) = r else { return Ok(None) };
        match self.0.get(&(r.name.clone(), r.key.clone())) {
            Some(Ok(key)) => Ok(Some(key.clone())),
            Some(Err(problem)) => Err(problem.clone()),
            None => Err(format!("Secret {} was not read", r.name)),
        }
    }
}

/// Every `secretRef` of the Canary's webhooks and promotion webhook.
fn secret_refs(spec: &CanarySpec) -> Vec<&SecretKeyRef> {
    let webhooks = spec.webhooks.iter().map(|w| &w.target);
    let promotion = spec.promotion.webhook.iter();
    webhooks
        .chain(promotion)
        .filter_map(|t| t.secret_ref.as_ref())
        .collect()
}

/// Reads the signing keys from Secrets in the Canary's own namespace (the only place
/// canaryd reads Secrets from, with the Role an admin grants per namespace).
async fn read_keys(canary: &Canary, ctx: &Context) -> SigningKeys {
    let ns = canary.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut keys = SigningKeys::default();
    for r in secret_refs(&canary.spec) {
        let at = (r.name.clone(), r.key.clone());
        if keys.0.contains_key(&at) {
            continue;
        }
        let key = match api.get(&r.name).await {
            Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
                "canaryd may not read Secrets in namespace {ns}; an admin adds {ns} to the \
                 chart's webhookSecrets.namespaces (or applies deploy/rbac/webhook-secrets.yaml there)"
            )),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                Err(format!("Secret {ns}/{} not found; create it or fix secretRef.name", r.name))
            }
            Err(e) => Err(format!("cannot read Secret {ns}/{}: {e}", r.name)),
            Ok(secret) => match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
                None => Err(format!(
                    "Secret {ns}/{} has no key {}; add the key or fix secretRef.key",
                    r.name, r.key
                )),
                Some(raw) => {
                    let key = crate::notify::signing::decode_key(&raw.0);
                    if key.len() < MIN_KEY_BYTES {
                        Err(format!(
                            "key {} of Secret {ns}/{} is {} bytes; a signing key needs at least \
                             {MIN_KEY_BYTES} (32 recommended, e.g. `openssl rand -base64 32`)",
                            r.key,
                            r.name,
                            key.len()
                        ))
                    } else {
                        Ok(key)
                    }
                }
            },
        };
        keys.0.insert(at, key);
    }
    keys
}

/// The calls to the webhooks of `kind`, and the names of those whose key cannot sign (with why).
fn webhook_calls(
    canary: &Canary,
    keys: &SigningKeys,
    kind: WebhookKind,
) -> (Vec<WebhookCall>, Vec<String>) {
    let mut calls = Vec::new();
    let mut refused = Vec::new();
    for w in canary.spec.webhooks.iter().filter(|w| w.kind == kind) {
        match keys.key(&w.target.secret_ref) {
            Ok(key) => calls.push(WebhookCall {
                name: w.name.clone(),
                url: w.target.url.clone(),
                timeout: w.target.timeout.0,
                key,
            }),
            Err(problem) => refused.push(format!("webhook {} not called: {problem}", w.name)),
        }
    }
    (calls, refused)
}

fn start_gate(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    keys: &SigningKeys,
    id: String,
    kind: GateKind,
) {
    let spec = &canary.spec;
    let (checks, host, webhook_kind) = match kind {
        GateKind::PreTraffic => (
            spec.checks.clone(),
            &spec.stage.host,
            Some(WebhookKind::PreRollout),
        ),
        GateKind::StepChecks => (
            spec.checks
                .iter()
                .filter(|c| c.every_step)
                .cloned()
                .collect(),
            &spec.stage.host,
            None,
        ),
        GateKind::ConfirmPromotion => (
            Vec::new(),
            &spec.prod.host,
            Some(WebhookKind::ConfirmPromotion),
        ),
        GateKind::ProdVerify => (spec.checks.clone(), &spec.prod.host, None),
    };
    let (webhooks, refused) = match webhook_kind {
        Some(k) => webhook_calls(canary, keys, k),
        None => Default::default(),
    };
    let key = gate_key(canary, &id);
    if !refused.is_empty() {
        // A gate webhook that cannot be signed fails the gate; it is never sent unsigned.
        tracing::warn!(canary = %canary.name_any(), gate = %id, problems = %refused.join("; "), "gate failed before it ran");
        ctx.gates.fail(key, refused.join("; "));
        return;
    }
    let job = GateJob {
        checks,
        host: host.clone(),
        hosts: vec![spec.prod.host.clone(), spec.stage.host.clone()],
        payload: webhook_kind.map(|k| payload(canary, status, kind_name(k))),
        webhooks,
    };
    tracing::info!(canary = %canary.name_any(), gate = %id, kind = kind.as_str(), "starting gate");
    ctx.gates.start(key, job);
}

async fn update_prod(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    keys: &SigningKeys,
    method: UpdateMethod,
) -> Result<(), Error> {
    let spec = &canary.spec;
    let ns = canary.namespace().unwrap_or_default();
    let env_ns = |d: &Option<String>| d.clone().unwrap_or_else(|| ns.clone());
    let stage_api: Api<Deployment> = Api::namespaced(
        ctx.client.clone(),
        &env_ns(&spec.stage.deployment.namespace),
    );
    let prod_api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &env_ns(&spec.prod.deployment.namespace));
    let stage = stage_api.get(&spec.stage.deployment.name).await?;
    match method {
        UpdateMethod::Images | UpdateMethod::CopyWholeTemplate => {
            let mut last = None;
            for _ in 0..3 {
                let prod = prod_api.get(&spec.prod.deployment.name).await?;
                let patch = match method {
                    UpdateMethod::Images => workload::images_patch(&stage, &prod, &spec.revision)?,
                    _ => workload::copy_template_patch(&stage, &prod)?,
                };
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).expect("a valid JSON patch");
                let params = PatchParams::apply(FIELD_MANAGER);
                let patch = Patch::Json::<()>(patch);
                let write = prod_api.patch(&spec.prod.deployment.name, &params, &patch);
                match ctx.write("prod's pod template", write).await {
                    Ok(_) => {
                        tracing::info!(canary = %canary.name_any(), release = %workload::revision(&stage, &spec.revision), ?method, "prod brought to stage's release");
                        return Ok(());
                    }
                    Err(Error::Api(kube::Error::Api(s))) if s.code == 409 || s.code == 422 => {
                        last = Some(Error::Api(kube::Error::Api(s)))
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.expect("the loop ran"))
        }
        UpdateMethod::Webhook => {
            let target = spec
                .promotion
                .webhook
                .as_ref()
                .ok_or(Error::NoPromotionWebhook)?;
            let call = WebhookCall {
                name: "promotion".into(),
                url: target.url.clone(),
                timeout: target.timeout.0,
                key: keys.key(&target.secret_ref).map_err(Error::SigningKey)?,
            };
            let mut body = payload(canary, status, "promote");
            body.images = stage
                .spec
                .iter()
                .flat_map(|s| s.template.spec.iter())
                .flat_map(|p| p.containers.iter())
                .map(|c| ContainerImage {
                    container: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                })
                .collect();
            ctx.gates
                .call(&call, &body, &Origin::of(canary, status))
                .await
                .map_err(Error::PromotionWebhook)
        }
    }
}

/// True while the cache still holds a version one of our status writes was based on.
pub(super) fn is_stale(meta: &ObjectMeta, ctx: &Context) -> bool {
    let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
        return false;
    };
    let mut written = ctx.written.lock().expect("written lock");
    match written.get(uid) {
        Some(based_on) if based_on.contains(version) => true,
        Some(_) => {
            written.remove(uid);
            false
        }
        None => false,
    }
}

/// Replaces the whole status (through the status subresource) when it changed, and
/// remembers which version of the Canary the write was based on (see [`is_stale`]). Returns
/// the Canary's resourceVersion after the write (`None` when nothing was written).
///
/// The patch carries a `test` of the resourceVersion the decision was made on: a write
/// decided on an old view (a replica that lost its lease while the new leader wrote, a
/// cache that lagged) fails with 422 instead of overwriting a newer status, and the next
/// round decides again on what is stored.
async fn write_status(
    ctx: &Context,
    canary: &Canary,
    new: &CanaryStatus,
) -> Result<Option<String>, Error> {
    if canary.status.clone().unwrap_or_default() == *new {
        return Ok(None);
    }
    let api: Api<Canary> =
        Api::namespaced(ctx.client.clone(), &canary.namespace().unwrap_or_default());
    let mut ops = Vec::new();
    if let Some(version) = &canary.metadata.resource_version {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}));
    }
    ops.push(json!({"op": "add", "path": "/status", "value": new}));
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("a valid JSON patch");
    let params = PatchParams::apply(FIELD_MANAGER);
    let name = canary.name_any();
    let patch = Patch::Json::<()>(patch);
    let stored = ctx
        .write("the status", api.patch_status(&name, &params, &patch))
        .await?;
    wrote_status(&canary.metadata, ctx);
    Ok(stored.metadata.resource_version)
}

/// Remembers that a status write was based on this version of the object (see [`is_stale`]).
pub(super) fn wrote_status(meta: &ObjectMeta, ctx: &Context) {
    if let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) {
        ctx.written
            .lock()
            .expect("written lock")
            .entry(uid.clone())
            .or_default()
            .push(version.clone());
    }
}

//! The `Canary` custom resource (`canaryd.dev/v1alpha1`): what a user asks for (spec) and
//! what canaryd reports (status). The schema the API server enforces is derived from these
//! types; rules a schema cannot express live in [`super::validation`].

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::limits::*;

/// Progressive delivery of the `stage` environment's new revisions to `prod`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canaryd.dev",
    version = "v1alpha1",
    kind = "Canary",
    namespaced,
    status = "CanaryStatus",
    shortname = "cny",
    category = "canaryd",
    doc = "A Canary drives the progressive delivery of one app from its stage environment to prod.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Stage weight","type":"integer","jsonPath":".status.stageWeight"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.stageRevision","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanarySpec {
    /// The Istio VirtualService whose HTTP route splits traffic between prod and stage.
    pub virtual_service: VirtualServiceRef,
    /// The environment that serves users by default and is promoted at the end.
    pub prod: Environment,
    /// The environment that receives new revisions first.
    pub stage: Environment,
    /// Stage traffic weight (percent) of each step, strictly increasing from 0 (the
    /// pre-traffic test); default [0, 30, 60]. After the last step stage takes all traffic
    /// while prod is updated. A step at 100 % (a hold at full load before promotion) needs
    /// an SLO guardrail or `analysis.unguardedFullLoad`.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 2, max = MAX_STEPS), inner(range(min = 0, max = 100)))]
    pub steps: Vec<u8>,
    /// How long each step lasts at least (before an advance) and at most (before canaryd
    /// pauses for a human, or applies the noData policy).
    #[serde(default)]
    pub step_duration: StepDuration,
    /// How long a new revision may take to become ready (stage before and during its test at
    /// 0 %, prod after its promotion), and what is done when stage does not.
    #[serde(default)]
    pub readiness: ReadinessPolicy,
    /// How stage is compared with prod at every step.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// Synthetic HTTP checks run against stage at 0 % (and at every step when asked), and
    /// against prod after promotion, before traffic moves back to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CHECKS))]
    pub checks: Vec<CheckSpec>,
    /// Webhooks called at points of the rollout; `pre-rollout` and `confirm-promotion` are gates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_WEBHOOKS))]
    pub webhooks: Vec<WebhookSpec>,
    /// What makes a release besides the images that run (for example a version annotation).
    /// Nothing else in the pod template is a revision: prod and stage may differ in env,
    /// resources, replicas, config references and labels on purpose.
    #[serde(default, skip_serializing_if = "RevisionSpec::is_empty")]
    pub revision: RevisionSpec,
    /// How prod is brought to the new revision once stage holds 100 %.
    #[serde(default)]
    pub promotion: PromotionSpec,
    /// What to do when someone else changes the weights during a rollout.
    #[serde(default)]
    pub traffic_drift: TrafficDriftPolicy,
    /// Which of the daemon's notifiers hear which rollout events. Without any route,
    /// `RolledBack` and `Paused` go to every notifier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NOTIFICATION_ROUTES))]
    pub notifications: Vec<NotificationRoute>,
}

/// Sends some rollout events of this Canary to one notifier of the daemon's config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationRoute {
    /// `name` of a notifier in the daemon's config.
    #[schemars(length(min = 1, max = MAX_NAME))]
    pub notifier: String,
    /// The events it gets; `[RolledBack, Paused]` when left out.
    #[serde(default = "default_notification_events")]
    #[schemars(length(max = MAX_ROUTE_EVENTS))]
    pub events: Vec<NotificationEvent>,
}

pub fn default_notification_events() -> Vec<NotificationEvent> {
    vec![NotificationEvent::RolledBack, NotificationEvent::Paused]
}

/// A rollout event people can be told about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NotificationEvent {
    RolloutStarted,
    StepAdvanced,
    /// Needs a person.
    Paused,
    RolledBack,
    Promoted,
    Succeeded,
}

/// Notifications not yet confirmed by their receivers, and the alerts canaryd keeps firing,
/// so a restarted daemon sends what is missing and nothing twice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingNotification>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertState>,
}

impl NotificationStatus {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.alerts.is_empty()
    }
}

/// One event on its way to the receivers named (those that have not confirmed it yet).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingNotification {
    /// Idempotency key: the same event of the same rollout always has the same key.
    pub key: String,
    pub event: NotificationEvent,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_revision: Option<String>,
    pub at: Timestamp,
    /// Notifier names still to confirm.
    pub receivers: Vec<String>,
}

/// An Alertmanager alert canaryd re-sends while it fires and resolves once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertState {
    /// `CanaryRolledBack` or `CanaryPaused`.
    pub alertname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_revision: Option<String>,
    pub starts_at: Timestamp,
    /// Why, in plain words.
    pub description: String,
    /// Alertmanager notifiers that get it (those that have not confirmed the resolution yet).
    pub receivers: Vec<String>,
    /// Set when the alert stopped firing; it is removed once every receiver confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
}

pub fn default_steps() -> Vec<u8> {
    vec![0, 30, 60]
}

/// Reference to the VirtualService and, optionally, the named HTTP route in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceRef {
    #[schemars(length(min = 1, max = MAX_OBJECT_NAME))]
    pub name: String,
    /// Defaults to the Canary's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME))]
    pub namespace: Option<String>,
    /// Name of the HTTP route to drive. Without it, canaryd uses the one route whose
    /// destinations are the prod and stage hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_OBJECT_NAME))]
    pub route: Option<String>,
}

/// One environment: the host the VirtualService routes to and the Deployment behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    /// Destination host as written in the VirtualService, e.g. `flaskapp.prod.svc.cluster.local`.
    #[schemars(length(min = 1, max = MAX_HOST))]
    pub host: String,
    pub deployment: DeploymentRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRef {
    #[schemars(length(min = 1, max = MAX_OBJECT_NAME))]
    pub name: String,
    /// Defaults to the Canary's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME))]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepDuration {
    /// Minimum time at a step before canaryd may advance (default 2m).
    #[serde(default = "default_step_min")]
    pub min: HumanDuration,
    /// Maximum time at a step without a decision (default 30m); `analysis.atMax` says what
    /// happens then.
    #[serde(default = "default_step_max")]
    pub max: HumanDuration,
}

fn default_step_min() -> HumanDuration {
    HumanDuration::from_secs(120)
}

fn default_step_max() -> HumanDuration {
    HumanDuration::from_secs(1800)
}

impl Default for StepDuration {
    fn default() -> Self {
        Self {
            min: default_step_min(),
            max: default_step_max(),
        }
    }
}

/// The deadline for a new revision to become ready: all replicas updated and available.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessPolicy {
    /// How long a new stage revision may stay not ready, and prod after its promotion not
    /// run stage's revision ready, before canaryd acts (default 10m).
    #[serde(default = "default_ready_timeout")]
    pub timeout: HumanDuration,
    /// What is done when stage is not ready in time. Prod after its promotion always pauses.
    #[serde(default)]
    pub action: ReadinessAction,
}

fn default_ready_timeout() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl Default for ReadinessPolicy {
    fn default() -> Self {
        Self {
            timeout: default_ready_timeout(),
            action: ReadinessAction::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReadinessAction {
    /// Roll the revision back (the default): it is not tried again until stage gets another
    /// revision or an operator resumes it.
    #[default]
    Rollback,
    /// Pause for a person.
    Pause,
}

/// The comparison of stage against prod. The same section is read by `canaryd analyze`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Probability budget for rolling back a release that is not worse, over the whole
    /// rollout and all looks (default 0.01).
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub alpha: f64,
    /// How often stage and prod are compared. Defaults to the daemon's `evaluationInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// The metrics compared; defaults to the error rate and requests slower than 500 ms.
    #[serde(default = "default_metrics")]
    #[schemars(length(max = MAX_METRICS))]
    pub metrics: Vec<MetricSpec>,
    /// Absolute limits on stage, enforced even when prod is just as bad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSpec>,
    /// What happens when stage's telemetry is missing (no traffic, Prometheus down).
    #[serde(default)]
    pub no_data: NoDataPolicy,
    /// What happens when a step that compares stage with prod reaches `stepDuration.max`
    /// with stage neither proven worse nor proven within its margins.
    #[serde(default)]
    pub at_max: AtMaxPolicy,
    /// Allow a step at 100 % without an SLO guardrail. At 100 % prod gets no traffic, so
    /// nothing is compared there and only a guardrail can catch a release that breaks at
    /// full load; without one, such a step only exposes every user to stage for longer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unguarded_full_load: bool,
}

pub fn default_alpha() -> f64 {
    0.01
}

pub fn default_metrics() -> Vec<MetricSpec> {
    vec![
        MetricSpec {
            name: "errors".into(),
            kind: MetricKind::ErrorRate,
            margin: default_margin(),
            tolerance: default_tolerance(),
            thresholds_ms: Vec::new(),
            bad: None,
            total: None,
        },
        MetricSpec {
            name: "latency".into(),
            kind: MetricKind::Latency,
            margin: default_margin(),
            tolerance: default_tolerance(),
            thresholds_ms: vec![500.0],
            bad: None,
            total: None,
        },
    ]
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            interval: None,
            metrics: default_metrics(),
            slo: None,
            no_data: NoDataPolicy::default(),
            at_max: AtMaxPolicy::default(),
            unguarded_full_load: false,
        }
    }
}

/// The decision at a step's maximum duration, when the comparison has proven nothing either
/// way (too few bad events to bound the ratio, the usual case at low traffic).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AtMaxPolicy {
    /// `advance` (the default): stage was not proven worse, so the step advances, and the
    /// decision states the smallest regression the step could have caught. `pause`: wait
    /// for a person.
    #[serde(default)]
    pub action: AtMaxAction,
    /// With `advance`: advance at the maximum only if a regression of this ratio (stage's
    /// bad rate over prod's) would have been caught with probability at least `1 - beta`,
    /// judged from the step's own bad events; otherwise keep comparing for up to
    /// `extendBy`, then pause. Unset: advance whatever the power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = MAX_RATIO))]
    pub detectable_ratio: Option<f64>,
    /// The accepted probability of missing a regression of `detectableRatio` (default 0.2:
    /// 80 % power). Also the power the detectable ratio of every decision is reported at.
    #[serde(default = "default_beta")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub beta: f64,
    /// With `detectableRatio`: how much longer than `stepDuration.max` a step may run to
    /// reach that power before it pauses (default 15m).
    #[serde(default = "default_extend_by")]
    pub extend_by: HumanDuration,
    /// Level of one more test at the maximum, on the step's bad events, that stage is worse
    /// than its tolerance (split over the compared metrics). When it rejects, the step
    /// pauses instead of advancing: a release that leans worse without proof is not
    /// advanced. A healthy step pauses there with probability at most this (default 0.01;
    /// 0 turns the test off).
    #[serde(default = "default_final_alpha")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub final_alpha: f64,
}

fn default_final_alpha() -> f64 {
    0.01
}

pub fn default_beta() -> f64 {
    0.2
}

fn default_extend_by() -> HumanDuration {
    HumanDuration::from_secs(900)
}

impl Default for AtMaxPolicy {
    fn default() -> Self {
        Self {
            action: AtMaxAction::default(),
            detectable_ratio: None,
            beta: default_beta(),
            extend_by: default_extend_by(),
            final_alpha: default_final_alpha(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AtMaxAction {
    /// Advance: not proven worse within the maximum (the default).
    #[default]
    Advance,
    /// Pause for a person, with the last look's figures.
    Pause,
}

/// One compared metric. Every metric is a rate of "bad" requests among all requests, so
/// stage and prod are compared by the ratio of their rates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    #[schemars(length(min = 1, max = MAX_NAME))]
    pub name: String,
    pub kind: MetricKind,
    /// Largest stage/prod rate ratio still accepted when advancing (default 1.5): canaryd
    /// advances once it is confident the ratio is below this.
    #[serde(default = "default_margin")]
    #[schemars(range(min = 1.0, max = MAX_RATIO))]
    pub margin: f64,
    /// Stage/prod rate ratio that is tolerated without a rollback (default 1.0: any proven
    /// regression rolls back). Must be below `margin`.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 1.0, max = MAX_RATIO))]
    pub tolerance: f64,
    /// `latency` only: a request slower than a threshold counts as bad. Each threshold should
    /// be a histogram bucket boundary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_THRESHOLDS), inner(range(max = MAX_LATENCY_MS)))]
    pub thresholds_ms: Vec<f64>,
    /// `ratio` only: PromQL for the bad events of one arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PROMQL))]
    pub bad: Option<String>,
    /// `ratio` only: PromQL for all events of one arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PROMQL))]
    pub total: Option<String>,
}

pub fn default_margin() -> f64 {
    1.5
}

pub fn default_tolerance() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricKind {
    /// 5xx responses among all requests.
    ErrorRate,
    /// Requests slower than each of `thresholdsMs`.
    Latency,
    /// A custom `bad` / `total` PromQL pair.
    Ratio,
}

/// Absolute guardrails on stage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SloSpec {
    /// Largest acceptable fraction of 5xx responses (e.g. 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Largest acceptable latency quantiles, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<LatencyQuantiles>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyQuantiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LATENCY_MS))]
    pub p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LATENCY_MS))]
    pub p90: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LATENCY_MS))]
    pub p95: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_LATENCY_MS))]
    pub p99: Option<f64>,
}

impl LatencyQuantiles {
    /// The configured limits as (quantile, milliseconds) pairs.
    pub fn limits(&self) -> Vec<(f64, f64)> {
        [
            (0.5, self.p50),
            (0.9, self.p90),
            (0.95, self.p95),
            (0.99, self.p99),
        ]
        .into_iter()
        .filter_map(|(q, ms)| ms.map(|ms| (q, ms)))
        .collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoDataPolicy {
    /// How long stage may go without telemetry before `action` is taken (default 10m).
    #[serde(default = "default_no_data_after")]
    pub after: HumanDuration,
    #[serde(default)]
    pub action: NoDataAction,
}

fn default_no_data_after() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl Default for NoDataPolicy {
    fn default() -> Self {
        Self {
            after: default_no_data_after(),
            action: NoDataAction::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NoDataAction {
    /// Keep the weights and pause for a human (the default). Never advance.
    #[default]
    Hold,
    /// Send all traffic back to prod.
    Rollback,
}

/// A synthetic HTTP check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckSpec {
    #[schemars(length(min = 1, max = MAX_NAME))]
    pub name: String,
    /// URL to request. `{{ host }}` is replaced by the host of the environment under test
    /// (stage during the rollout, prod after promotion).
    #[schemars(length(min = 1, max = MAX_URL))]
    pub url: String,
    /// `GET` (the default), `HEAD` or `POST`.
    #[serde(default = "default_method")]
    #[schemars(extend("enum" = CHECK_METHODS))]
    pub method: String,
    #[serde(default = "default_expect_status")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// The response body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_BODY_CONTAINS))]
    pub body_contains: Option<String>,
    /// Number of requests; every one must pass.
    #[serde(default = "default_check_count")]
    #[schemars(range(min = 1, max = MAX_CHECK_COUNT))]
    pub count: u32,
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Also run at every traffic step, not only at 0 %.
    #[serde(default)]
    pub every_step: bool,
}

fn default_method() -> String {
    "GET".into()
}

fn default_expect_status() -> u16 {
    200
}

fn default_check_count() -> u32 {
    1
}

fn default_check_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

/// Where and how a webhook is called.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookTarget {
    #[schemars(length(min = 1, max = MAX_URL))]
    pub url: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Secret key holding the HMAC-SHA256 signing key; the signature goes in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = MAX_OBJECT_NAME))]
    pub name: String,
    #[schemars(length(min = 1, max = MAX_OBJECT_NAME))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    #[schemars(length(min = 1, max = MAX_NAME))]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    #[serde(flatten)]
    pub target: WebhookTarget,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookKind {
    /// Gate before any traffic: a non-2xx answer rolls back.
    PreRollout,
    /// Gate before prod is updated: canaryd waits until it answers 2xx.
    ConfirmPromotion,
    /// Called once after a successful rollout.
    PostRollout,
    /// Called once after a rollback.
    Rollback,
}

/// What defines a release besides the images (container name and image, digest before tag,
/// over containers and init containers). `images` promotion copies these values to prod too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    /// Keys of pod-template annotations or labels (an annotation wins) whose values are part
    /// of the release, e.g. `app.kubernetes.io/version`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_REVISION_KEYS), inner(length(min = 1, max = MAX_OBJECT_NAME)))]
    pub metadata: Vec<String>,
    /// Names of container environment variables (literal `value`s) that are part of the
    /// release, e.g. a build id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_REVISION_KEYS), inner(length(min = 1, max = MAX_OBJECT_NAME)))]
    pub env: Vec<String>,
}

impl RevisionSpec {
    pub fn is_empty(&self) -> bool {
        self.metadata.is_empty() && self.env.is_empty()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionSpec {
    #[serde(default)]
    pub mode: PromotionMode,
    /// `webhook` mode: the pipeline to call (for example one that runs `helm upgrade` on prod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PromotionMode {
    /// Set each prod container's image (and init container's) to stage's, by container name,
    /// and the values `spec.revision` names; nothing else of prod changes.
    #[default]
    Images,
    /// Copy stage's whole pod template into prod (prod keeps only its labels): stage's env,
    /// config references, service account and resources replace prod's. Only for
    /// environments that differ in nothing else.
    CopyWholeTemplate,
    /// Call `promotion.webhook`, then wait until prod runs stage's revision.
    Webhook,
    /// Wait for a person: `canaryd promote`, or prod updated by other means.
    Manual,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrafficDriftPolicy {
    /// Record an Event and write canaryd's weights back (the default).
    #[default]
    Reassert,
    /// Record an Event and pause the rollout for a human.
    Pause,
}

// ---------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------

/// What canaryd observed and decided. State lives here, never only in memory, so a
/// restarted daemon continues where it stopped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default)]
    pub phase: Phase,
    /// One line, in plain words: what canaryd is doing and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The release stage runs that the current or last rollout is about: its images
    /// (`demoapp:v2`), plus what `spec.revision` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_revision: Option<String>,
    /// The release prod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prod_revision: Option<String>,
    /// Index into `spec.steps`.
    #[serde(default)]
    pub step: u32,
    /// Percent of traffic canaryd routes to stage; prod gets the rest.
    #[serde(default)]
    pub stage_weight: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    /// Since when stage's telemetry has been missing, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_since: Option<Timestamp>,
    /// The phase a `Paused` rollout continues in on `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_from: Option<Phase>,
    /// When canaryd asked for prod to be brought to stage's revision (during `Promoting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prod_update_requested_at: Option<Timestamp>,
    /// A new stage revision canaryd waits for to become ready, and since when (the clock of
    /// `spec.readiness.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_stage: Option<StageWait>,
    /// Checks or webhooks canaryd started and waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_gate: Option<PendingGate>,
    /// Stage revision that was rolled back; it is not rolled out again unless resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_revision: Option<String>,
    /// Id of the last operator command carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<String>,
    /// resourceVersion of the VirtualService canaryd last wrote over or reacted to, so a
    /// foreign change of the weights gets exactly one reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_version: Option<String>,
    /// Foreign weight changes canaryd wrote over during this rollout: when, and the last
    /// writer's field manager; too many within a window pause the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_contest: Option<TrafficContest>,
    /// Weights canaryd decided and is writing, recorded before the write; cleared once the
    /// route shows them. A restarted daemon finishes this write instead of taking the route's
    /// old weights for someone else's change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_intent: Option<TrafficIntent>,
    /// The analysis of the current rollout so far (counts and likelihoods per metric), what
    /// a restarted daemon continues from; reset when a new rollout starts. Stored packed on
    /// one line (`z1:` and base64 of deflated JSON; `lastDecision` says what it means); the
    /// object form of older statuses is still read.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::compact::packed"
    )]
    #[schemars(with = "Option<String>")]
    pub analysis: Option<AnalysisState>,
    /// The last decision and the statistics behind it: its reason, one line per metric
    /// (`summary`), and the per-metric reports packed on one line (`metrics`, `z1:` like
    /// `analysis`; `canaryd status` and the rollout page read them).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "stored_decision"
    )]
    #[schemars(with = "Option<StoredDecision>")]
    pub last_decision: Option<DecisionRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The most recent phase changes and decisions, newest last (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Notifications not yet delivered and alerts still firing.
    #[serde(default, skip_serializing_if = "NotificationStatus::is_empty")]
    pub notifications: NotificationStatus,
}

/// Someone else changing canaryd's weights back: when it last did (the most recent few).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficContest {
    /// The times of the most recent foreign changes, oldest first (at most 3).
    #[schemars(length(max = 3))]
    pub changes: Vec<Timestamp>,
    /// The field manager of the last foreign write (managedFields), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

/// A weight write in flight: from which stage weight to which, when and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficIntent {
    /// The stage weight the route showed when the write was decided.
    pub from: u8,
    /// The stage weight being written.
    pub to: u8,
    pub at: Timestamp,
    /// Why, in a few words (the decision's message).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// No rollout in progress; prod has all traffic.
    #[default]
    Idle,
    /// Stage at 0 %: synthetic checks and pre-rollout webhooks.
    Testing,
    /// Stage gets traffic, step by step, compared with prod.
    Progressing,
    /// Stage holds 100 %; prod is being brought to the new revision and checked.
    Promoting,
    /// Prod runs the new revision; traffic moves back to it.
    SwitchingBack,
    /// The rollout finished; prod runs the new revision with all traffic.
    Succeeded,
    /// Stage was worse, a check failed or an operator aborted; prod has all traffic.
    RolledBack,
    /// Waiting for a person (`canaryd resume`, `promote` or `abort`).
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Testing => "Testing",
            Phase::Progressing => "Progressing",
            Phase::Promoting => "Promoting",
            Phase::SwitchingBack => "SwitchingBack",
            Phase::Succeeded => "Succeeded",
            Phase::RolledBack => "RolledBack",
            Phase::Paused => "Paused",
        }
    }

    /// True while a rollout is under way (canaryd owns the weights).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Testing
                | Phase::Progressing
                | Phase::Promoting
                | Phase::SwitchingBack
                | Phase::Paused
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage revision that is not ready yet, and when canaryd first saw it so.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageWait {
    pub revision: String,
    pub since: Timestamp,
}

/// A gate canaryd started (checks, webhooks) and whose result it waits for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingGate {
    /// Unique per rollout, step and gate, so a late result of an old gate is ignored.
    pub id: String,
    pub kind: GateKind,
    pub started_at: Timestamp,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateKind {
    /// Stage at 0 %: all checks and `pre-rollout` webhooks.
    PreTraffic,
    /// Stage at a traffic step: the checks marked `everyStep`.
    StepChecks,
    /// Before prod is updated: `confirm-promotion` webhooks.
    ConfirmPromotion,
    /// Prod at 0 % after promotion: all checks against prod.
    ProdVerify,
}

impl GateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::PreTraffic => "pre-traffic checks",
            GateKind::StepChecks => "step checks",
            GateKind::ConfirmPromotion => "promotion confirmation",
            GateKind::ProdVerify => "prod checks",
        }
    }
}

/// Running state of the analysis of one rollout. Sums only, never raw samples.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisState {
    /// Number of looks (evaluation intervals) folded in.
    pub looks: u32,
    /// End of the last window folded in; the next window starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Timestamp>,
    /// Per compared quantity (a metric, or one threshold of a latency metric).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesState>,
}

/// The sufficient statistics of one compared quantity (or one SLO guardrail) over the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesState {
    /// Metric name, with `@<ms>` for a latency threshold; `slo:` for a guardrail.
    pub name: String,
    pub stage_requests: u64,
    pub prod_requests: u64,
    pub stage_bad: u64,
    pub prod_bad: u64,
    /// The tolerance and margin the likelihood grid was built for; a spec change restarts
    /// the series.
    #[serde(default)]
    pub tolerance: f64,
    #[serde(default)]
    pub margin: f64,
    /// Log-likelihood of the conditional-binomial model at each point of the rate-ratio
    /// grid, over the whole rollout (base64 of little-endian f64s, see `compact`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::compact::f64s"
    )]
    #[schemars(with = "String")]
    pub log_likelihood: Vec<f64>,
    /// The step the step-local likelihood belongs to.
    #[serde(default)]
    pub step: u32,
    /// The same log-likelihood since the current step started (same encoding).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::compact::f64s"
    )]
    #[schemars(with = "String")]
    pub step_log_likelihood: Vec<f64>,
    /// Since the current step started: stage's requests, the bad events of both arms, those
    /// of stage, and the sum over looks of each look's bad events times stage's share of
    /// its requests (what the detectable ratio is computed from).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_stage_requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_bad: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_stage_bad: u64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub step_stage_share_of_bad: f64,
    /// The running intersection of the step's confidence bounds on the rate ratio (no upper
    /// bound while none was finite): the bounds reported, and advanced on, never widen
    /// within a step. Valid because a confidence sequence holds at every look at once.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub step_ratio_lower: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ratio_upper: Option<f64>,
    /// Spec edits during the rollout that restarted this series' evidence: of the tolerance
    /// (the whole series), and of the margin mid-step (the step's part). Restarted evidence
    /// gets a smaller share of alpha, so edits never spend it afresh.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub step_restarts: u32,
    /// Which restart the current step's evidence started with (0: the step's start).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub step_generation: u32,
    /// Counts of looks held back, not yet folded: a look whose bad events in both arms
    /// together jumped far above the rollout's rate (a burst that hit both arms, which
    /// scrape timing may split across looks differently per arm) is pooled with the looks
    /// after it before it is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldCounts>,
}

/// Counts of one or more looks pooled together, waiting to be folded as one look.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldCounts {
    pub stage_requests: u64,
    pub stage_bad: u64,
    pub prod_requests: u64,
    pub prod_bad: u64,
    /// How many looks are pooled.
    pub looks: u32,
    /// Sum over the pooled looks of each look's bad events (both arms) times stage's share
    /// of its requests: the bad events stage would have had at equal rates.
    #[serde(default)]
    pub stage_share_of_bad: f64,
}

/// The verdict of one analysis look, as the rollout lifecycle consumes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Not yet known: keep the weights and look again.
    #[default]
    Continue,
    /// Stage is proven not worse than prod within the margins.
    Advance,
    /// Stage is proven worse (or breaks an SLO).
    Rollback,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Advance => "advance",
            Verdict::Rollback => "rollback",
        }
    }
}

/// A decision with the statistics behind it, in words and numbers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub at: Option<Timestamp>,
    pub verdict: Verdict,
    pub step: u32,
    pub stage_weight: u8,
    pub reason: String,
    /// One line per metric in words (what `kubectl describe` shows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricReport>,
}

/// [`DecisionRecord`] as the status stores it: the per-metric reports packed on one line
/// (`z1:` and base64 of deflated JSON), next to their one-line summaries, so that `kubectl
/// describe` shows three lines for three metrics instead of fifty. The list form of older
/// statuses is still read. Notifications carry the reports unpacked.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct StoredDecision {
    at: Option<Timestamp>,
    verdict: Verdict,
    step: u32,
    stage_weight: u8,
    reason: String,
    /// One line per metric in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    summary: Vec<String>,
    /// The reports behind the summary (four significant digits), packed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::compact::packed"
    )]
    #[schemars(with = "Option<String>")]
    metrics: Option<Vec<MetricReport>>,
}

/// `#[serde(with = ...)]` for `status.lastDecision`: stored as a [`StoredDecision`].
mod stored_decision {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{DecisionRecord, StoredDecision};

    pub fn serialize<S: Serializer>(d: &Option<DecisionRecord>, s: S) -> Result<S::Ok, S::Error> {
        d.as_ref()
            .map(|d| StoredDecision {
                at: d.at,
                verdict: d.verdict,
                step: d.step,
                stage_weight: d.stage_weight,
                reason: d.reason.clone(),
                summary: d.summary.clone(),
                metrics: (!d.metrics.is_empty()).then(|| d.metrics.clone()),
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DecisionRecord>, D::Error> {
        Ok(
            Option::<StoredDecision>::deserialize(d)?.map(|d| DecisionRecord {
                at: d.at,
                verdict: d.verdict,
                step: d.step,
                stage_weight: d.stage_weight,
                reason: d.reason,
                summary: d.summary,
                metrics: d.metrics.unwrap_or_default(),
            }),
        )
    }
}

/// What one compared quantity showed at the last look.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricReport {
    /// Metric name, with `@<ms>` for a latency threshold; `slo:` for a guardrail.
    pub name: String,
    pub verdict: Verdict,
    /// Evidence that stage is worse; rollback when it reaches `rollbackThreshold`.
    pub e_value: f64,
    pub rollback_threshold: f64,
    /// Confidence bounds of the stage/prod rate ratio over the current step (advance needs
    /// the upper one at or below the margin); no upper bound while the step's data cannot
    /// bound it. For a guardrail, bounds of stage rate / limit.
    pub ratio_lower: f64,
    #[serde(default)]
    pub ratio_upper: Option<f64>,
    /// Ratio to advance below (for a guardrail: the limit on the stage's rate).
    pub margin: f64,
    /// The smallest rate ratio that this step's bad events would have rolled back with
    /// probability at least `1 - analysis.atMax.beta` (None: not even the largest, 16x).
    /// Comparisons only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectable_ratio: Option<f64>,
    /// One-sided p-value of a single test, on this step's bad events, that stage's rate is
    /// at most `tolerance` times prod's (what `analysis.atMax.finalAlpha` is compared with).
    /// Comparisons only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse_p_value: Option<f64>,
    /// Observed rates of bad requests over the rollout.
    pub stage_rate: Option<f64>,
    pub prod_rate: Option<f64>,
    pub stage_requests: u64,
    pub prod_requests: u64,
    /// Latency: the histogram boundary (ms) actually used for the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_ms: Option<f64>,
    /// Latency: quantiles of this look, interpolated from the buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_latency_ms: Option<LatencyEstimate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prod_latency_ms: Option<LatencyEstimate>,
    /// Latency: P(a stage request is slower than a prod request) in this look, from bucket
    /// counts (Mann-Whitney U / (n_s n_p), ties half); 0.5 is no difference. Reported only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cles: Option<f64>,
}

impl MetricReport {
    /// The report as the status keeps it: statistics to four significant digits (what a
    /// person reads and a dashboard draws; the decision was taken on the exact values).
    pub fn rounded(&self) -> Self {
        let r = sig4;
        let q = |l: &LatencyEstimate| LatencyEstimate {
            p50: r(l.p50),
            p90: r(l.p90),
            p99: r(l.p99),
        };
        Self {
            e_value: r(self.e_value),
            rollback_threshold: r(self.rollback_threshold),
            ratio_lower: r(self.ratio_lower),
            ratio_upper: self.ratio_upper.map(r),
            detectable_ratio: self.detectable_ratio.map(r),
            worse_p_value: self.worse_p_value.map(r),
            stage_rate: self.stage_rate.map(r),
            prod_rate: self.prod_rate.map(r),
            stage_latency_ms: self.stage_latency_ms.as_ref().map(q),
            prod_latency_ms: self.prod_latency_ms.as_ref().map(q),
            cles: self.cles.map(r),
            ..self.clone()
        }
    }
}

/// `x` to four significant digits, through its decimal form, so that it is written as
/// 0.3094 and not 0.30940000000000001 (infinities and NaN as they are).
fn sig4(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.3e}").parse().unwrap_or(x)
}

/// Latency quantiles (ms) of one arm, estimated from histogram buckets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
pub struct LatencyEstimate {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Option<Timestamp>,
    /// The Canary's `metadata.generation` this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub phase: Phase,
    pub step: u32,
    pub stage_weight: u8,
    pub message: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_in_the_status_carries_four_significant_digits() {
        let report = MetricReport {
            name: "errors".into(),
            e_value: 0.309_378_485_722_358_27,
            rollback_threshold: 300.0,
            ratio_lower: 0.707_316_781_186_547_6,
            ratio_upper: Some(1.681_792_830_507_429),
            margin: 1.5,
            stage_rate: Some(0.010_154_431_986_460_757),
            worse_p_value: Some(1.572_099_577_732_22e-120),
            stage_latency_ms: Some(LatencyEstimate {
                p50: 65.917_571_234_735_42,
                p90: 150.107_758_620_689_65,
                p99: 392.187_499_999_999_4,
            }),
            stage_requests: 14_181,
            ..MetricReport::default()
        }
        .rounded();
        let json = serde_json::to_string(&report).unwrap();
        for written in [
            r#""eValue":0.3094"#,
            r#""rollbackThreshold":300.0"#,
            r#""ratioLower":0.7073"#,
            r#""ratioUpper":1.682"#,
            r#""stageRate":0.01015"#,
            r#""worsePValue":1.572e-120"#,
            r#""p99":392.2"#,
            r#""stageRequests":14181"#,
        ] {
            assert!(json.contains(written), "{written} not in {json}");
        }
    }
}

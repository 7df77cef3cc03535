//! The rollout lifecycle as a pure function:
//! `(spec, status, observations, now) -> (new status, actions)`.
//!
//! It owns every decision about phases, steps, weights and conditions, and runs the analysis
//! of a look itself (a look brings raw counts); it never calls a client. The reconciler
//! observes (the spec's validity, Deployments, VirtualService, one look's counts, gate
//! results, operator commands), calls [`decide`], carries out the actions and writes the
//! status.
//! Actions are idempotent, and the status remembers what was started (pending gates, the
//! last command, the last analysis window), so feeding the same observations twice yields
//! no new actions and a restarted daemon continues where it stopped.

mod lifecycle;

#[cfg(test)]
mod tests;

use jiff::Timestamp;

use crate::analysis::LookCounts;
pub use crate::analysis::LookOutcome;
use crate::api::{GateKind, WebhookKind};

pub use lifecycle::{decide, hold_invalid_spec, observed};

/// How many times someone else may change the weights back within [`CONTESTED_WINDOW`]
/// before canaryd stops writing them and pauses (instead of fighting a GitOps tool).
pub const CONTESTED_AFTER: u32 = 3;
/// The window of [`CONTESTED_AFTER`].
pub const CONTESTED_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// How many history entries the status keeps.
pub const HISTORY_LIMIT: usize = 20;

/// Longest operator command id kept as it is in `status.lastCommand`.
pub const MAX_COMMAND_ID: usize = 128;

/// What `status.lastCommand` records for the command `id` (the annotation's value, which
/// anyone who may annotate the Canary writes): the id itself when it is short, else its
/// start and a SHA-256 of the whole, so a long id is still carried out once and never
/// copied into the status.
pub fn command_key(id: &str) -> String {
    if id.len() <= MAX_COMMAND_ID {
        return id.to_string();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut start = 32;
    while !id.is_char_boundary(start) {
        start -= 1;
    }
    format!("{}…sha256:{hex}", &id[..start])
}

/// One Deployment as the lifecycle sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The release it runs: its images, plus what `spec.revision` names
    /// (`canaryd_api::release`).
    pub revision: String,
    /// Rolled out: observedGeneration current, updated and available replicas as desired.
    pub ready: bool,
    /// Why it is not ready, in a few words (replica counts, the controller's failing
    /// conditions); `None` when it is ready or nothing more is known.
    pub why_not_ready: Option<String>,
}

/// Everything observed in one reconcile round.
#[derive(Clone, Debug, PartialEq)]
pub struct Observations {
    /// What is wrong with the spec, in words that name each field and its fix (`None`: the
    /// spec passed every check). An invalid spec is reported and nothing else is done.
    pub spec_problem: Option<String>,
    /// Which references outside the Canary's namespace are not allowed, and what would
    /// allow them (`None`: all allowed). Nothing is read from or written to them.
    pub reference_problem: Option<String>,
    /// The Canary (`namespace/name`) that drives this Canary's route when it is another
    /// one; this Canary then writes nothing.
    pub route_owner: Option<String>,
    /// `None` when the Deployment does not exist.
    pub stage: Option<Workload>,
    pub prod: Option<Workload>,
    /// The split the VirtualService has now, or why it cannot be read (the Canary holds).
    pub traffic: Result<Traffic, String>,
    /// The analysis look taken this round, if one was due.
    pub look: Option<Look>,
    /// The result of a gate (checks, webhooks) the status says is pending.
    pub gate: Option<GateResult>,
    /// The pending gate is still running in this process. A pending gate with no result
    /// that is not running was lost (the daemon restarted) and is started again.
    pub gate_running: bool,
    /// Whether every webhook signing key could be read and is long enough; `None` when no
    /// webhook is signed.
    pub signing: Option<Result<(), String>>,
    /// Why prod cannot be given stage's images by a patch (a container on one side only),
    /// when promotion would set them; promotion then pauses with this reason.
    pub promotion_problem: Option<String>,
    /// An operator command found on the Canary.
    pub command: Option<Command>,
    /// The Canary is being deleted.
    pub deleted: bool,
}

/// The prod/stage split as read from the VirtualService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traffic {
    pub stage_weight: u8,
    /// The VirtualService's resourceVersion: each change of it is a new version.
    pub version: String,
    /// The field manager of its last write, when that was not canaryd (managedFields).
    pub last_writer: Option<String>,
}

impl Default for Observations {
    /// Nothing observed yet: no Deployments, no route.
    fn default() -> Self {
        Self {
            spec_problem: None,
            reference_problem: None,
            route_owner: None,
            stage: None,
            prod: None,
            traffic: Err("the VirtualService was not read".into()),
            look: None,
            gate: None,
            gate_running: false,
            signing: None,
            promotion_problem: None,
            command: None,
            deleted: false,
        }
    }
}

/// One look: the counts of one window, as read from telemetry. The lifecycle judges it.
#[derive(Clone, Debug, PartialEq)]
pub struct Look {
    /// The step the look was taken at; a look from another step is ignored.
    pub step: u32,
    /// End of the window; a look not newer than the last one folded in is ignored.
    pub window_end: Timestamp,
    pub result: LookResult,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LookResult {
    /// Both arms' counts over the window.
    Counts(LookCounts),
    /// Telemetry could not be read (Prometheus down, query error): hold, never advance.
    Unavailable { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateResult {
    pub id: String,
    pub passed: bool,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Unique per command; a command already carried out is not repeated.
    pub id: String,
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Roll back now.
    Abort,
    /// Continue a paused rollout, or retry a rolled-back revision.
    Resume,
    /// Skip the remaining analysis and promote prod now; in manual promotion mode, the
    /// go-ahead to update prod.
    Promote,
}

/// What the reconciler must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Route `stage` percent to stage and the rest to prod.
    SetWeights { stage: u8 },
    /// Run a gate's checks or webhooks and report a [`GateResult`] with this id.
    StartGate { id: String, kind: GateKind },
    /// Bring prod to stage's revision.
    UpdateProd { method: UpdateMethod },
    /// Call the webhooks of this kind (not gates: their answers do not matter).
    CallWebhooks { kind: WebhookKind },
    /// Tell people (Alertmanager, Slack, webhooks) about a rollout event.
    Notify {
        event: NotifyEvent,
        /// What brought the event about (a metric label: a small fixed set).
        cause: Cause,
        message: String,
    },
    /// Record a Kubernetes Event on the Canary.
    RecordEvent {
        warning: bool,
        reason: &'static str,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMethod {
    /// Set prod's images (and the values `spec.revision` names) to stage's.
    Images,
    /// Copy stage's whole pod template into the prod Deployment.
    CopyWholeTemplate,
    /// Call the promotion webhook (the user's pipeline updates prod).
    Webhook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    RolloutStarted,
    StepAdvanced,
    Paused,
    RolledBack,
    Promoted,
    Succeeded,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::RolloutStarted => "RolloutStarted",
            NotifyEvent::StepAdvanced => "StepAdvanced",
            NotifyEvent::Paused => "Paused",
            NotifyEvent::RolledBack => "RolledBack",
            NotifyEvent::Promoted => "Promoted",
            NotifyEvent::Succeeded => "Succeeded",
        }
    }
}

/// What brought a rollout event about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cause {
    /// An operator command (abort, resume, promote).
    Operator,
    /// An advance or rollback verdict of the analysis.
    Analysis,
    /// A gate's result: checks or webhooks.
    Gate,
    /// No telemetry from stage for `noData.after`.
    NoData,
    /// Stage got a new revision, or its Deployment went away.
    NewRevision,
    /// The lifecycle itself: a timeout, drift, a finished switch.
    #[default]
    Lifecycle,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Operator => "operator",
            Cause::Analysis => "analysis",
            Cause::Gate => "gate",
            Cause::NoData => "no_data",
            Cause::NewRevision => "new_revision",
            Cause::Lifecycle => "lifecycle",
        }
    }
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: crate::api::CanaryStatus,
    pub actions: Vec<Action>,
}

//! Chaos: many rollouts in the lab, healthy and bad releases mixed, with two canaryd replicas
//! under leader election while a fault injector, at random points (seeded), SIGKILLs the
//! leader and starts it again, freezes the leader (SIGSTOP) for longer than the lease and
//! thaws it (SIGCONT), holds back the leader's API answers past the renew deadline for a
//! while, and stops Prometheus and starts it again. The replicas also run with `FAILPOINTS`
//! set: with the `failpoints` feature (tests/run.sh builds with it) they abort at random
//! between the status write that records the intended weights and the weight patch
//! (`intent-written`), and between the weight patch and the confirming status write
//! (`weights-written`); the test starts every replica that ended again.
//!
//! Afterwards it checks the lab API server's write log (every committed write of a
//! VirtualService, Canary, Deployment and Lease, in commit order, with its writer: each
//! replica's kubeconfig carries its name as its token). A *rollout* is a stage revision: the
//! Canary status writes with that `stageRevision`; a VirtualService write belongs to the
//! rollout of the last Canary status write before it. The stage weight is the weight of the
//! stage host in the route `primary`. The properties, each checked over the whole log:
//!
//! 1. **No stage weight increase after a rollback was decided.** Once a status write puts
//!    rollout R in `RolledBack`, no later VirtualService write of R raises the stage weight,
//!    and no later status write puts R back into an active phase (Testing, Progressing,
//!    Promoting, SwitchingBack).
//! 2. **No step skipped or repeated.** In each rollout, the status's ranked states (Testing =
//!    0, Progressing at step k = k, then Promoting, SwitchingBack and Succeeded together) never
//!    go down and never go up by more than one, and the first one is Testing or step 1 (so
//!    Promoting comes only after the last step, and Testing never comes back); the stage
//!    weights written are the steps' weights, each raise goes to the next step's weight, no
//!    weight goes back to a lower non-zero step, and none rises again once it went to 0.
//! 3. **Every rollback ends at prod 100 %.** When a rollout that was rolled back ends (the next
//!    rollout's first status write, or the end of the log), the VirtualService routes 100 to
//!    prod and 0 to stage. (Between rollouts the test waits up to 30 s for the weights to
//!    settle before it releases again.)
//! 4. **Never two writers within one lease term.** A lease term starts with a write of the
//!    Lease `canaryd-system/canaryd` that names a new holder and lasts until the next such
//!    write. Within one term, the VirtualService, Canary and Deployment writes of the
//!    replicas all come from one replica.
//! 5. **Every rollout ends in a terminal phase or a documented pause.** Each release reaches
//!    Succeeded, RolledBack or Paused (a pause waits for a person, README "Rollouts") within
//!    the rollout timeout, and the last status write of its revision in the log is one of
//!    those.
//!
//! The closing note prints the seed, the rollouts and their outcomes, the faults injected by
//! kind and the violations (which must be 0), and keeps the write log as JSON lines under
//! the target directory.
//!
//! Short version (default run, a few minutes): [`chaos_short`]. Long version (ignored, 120
//! rollouts unless `CANARYD_CHAOS_ROLLOUTS` says otherwise):
//! `CANARYD_CHAOS_ROLLOUTS=120 cargo test --features canaryd/failpoints -p canaryd --test it chaos_long -- --ignored --nocapture`.
//! `CANARYD_CHAOS_SEED=<n>` replays a run's random choices (the seed is printed first).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use canaryd::api::{Canary, Phase};
use canaryd_lab::apiserver::{Delay, Resulting, WriteRecord};
use canaryd_lab::harness::{Daemon, Lab, LabOptions, LEASE_NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const PROD_HOST: &str = "flaskapp.prod.svc.cluster.local";
const STAGE_HOST: &str = "flaskapp.stage.svc.cluster.local";
const ROUTE: &str = "primary";
const LEASE_NAME: &str = "canaryd";
const REPLICAS: [&str; 2] = ["canaryd-a", "canaryd-b"];
/// The harness's leader election: leaseDuration 4s, renewDeadline 3s.
const LEASE_DURATION: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: Duration = Duration::from_secs(3);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.lock().await;
    run(Plan {
        rollouts: env_number("CANARYD_CHAOS_SHORT_ROLLOUTS").unwrap_or(8),
        every_kind: true,
        fault_chance: 1.0,
        failpoint_chance: 8,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 120 rollouts, about an hour; see the module doc for its command"]
async fn chaos_long() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.lock().await;
    run(Plan {
        rollouts: env_number("CANARYD_CHAOS_ROLLOUTS").unwrap_or(120),
        every_kind: false,
        fault_chance: 0.8,
        failpoint_chance: 3,
    })
    .await;
}

struct Plan {
    rollouts: usize,
    /// Inject each kind of fault at least once (round robin over a shuffled list).
    every_kind: bool,
    /// The chance that a rollout gets a fault.
    fault_chance: f64,
    /// Percent per failpoint pass (`FAILPOINTS`).
    failpoint_chance: u32,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    FreezeLeader,
    DelayAnswers,
    StopPrometheus,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::KillLeader,
        Fault::FreezeLeader,
        Fault::DelayAnswers,
        Fault::StopPrometheus,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Release {
    Healthy,
    Errors,
    Slow,
}

impl Release {
    fn image(self, n: usize) -> String {
        let family = match self {
            Release::Healthy => "v2",
            Release::Errors => "v3",
            Release::Slow => "v4",
        };
        format!("demoapp:{family}.{n}")
    }
}

/// The two replicas, started again whenever one ends.
struct Replicas {
    daemons: Vec<Option<Daemon>>,
    env: Vec<(String, String)>,
    /// Exits seen: by SIGABRT (a failpoint) and otherwise.
    aborted: usize,
    other_exits: Vec<String>,
}

impl Replicas {
    fn start(lab: &Lab, failpoints: &str) -> Replicas {
        let env = vec![("FAILPOINTS".to_string(), failpoints.to_string())];
        let mut replicas = Replicas {
            daemons: Vec::new(),
            env,
            aborted: 0,
            other_exits: Vec::new(),
        };
        for name in REPLICAS {
            let daemon = replicas.spawn(lab, name);
            replicas.daemons.push(Some(daemon));
        }
        replicas
    }

    fn spawn(&self, lab: &Lab, name: &str) -> Daemon {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        lab.spawn_daemon_env(BINARY.as_ref(), name, "", &env)
            .expect("a replica starts")
    }

    /// Starts again every replica that ended, counting how it ended.
    fn supervise(&mut self, lab: &Lab) {
        use std::os::unix::process::ExitStatusExt as _;
        for (i, name) in REPLICAS.iter().enumerate() {
            let ended = match self.daemons[i].as_mut() {
                Some(daemon) => daemon.exited(),
                None => None,
            };
            if let Some(status) = ended {
                if status.signal() == Some(6) {
                    self.aborted += 1;
                } else {
                    let daemon = self.daemons[i].as_ref().expect("it ran");
                    self.other_exits.push(format!(
                        "{} ended: {status}\n{}",
                        daemon.name,
                        daemon.log_tail()
                    ));
                }
                self.daemons[i] = Some(self.spawn(lab, name));
            }
        }
    }

    fn by_name(&mut self, name: &str) -> Option<&mut Daemon> {
        let i = REPLICAS.iter().position(|r| *r == name)?;
        self.daemons[i].as_mut()
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .flatten()
            .map(|d| std::fs::read_to_string(&d.log).unwrap_or_default())
            .collect()
    }
}

async fn holder(lab: &Lab) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(lab.client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// The leader by the Lease, else any replica.
async fn leader(lab: &Lab, rng: &mut StdRng) -> String {
    match holder(lab).await {
        Some(h) if REPLICAS.contains(&h.as_str()) => h,
        _ => REPLICAS[rng.random_range(0..REPLICAS.len())].to_string(),
    }
}

/// Waits `d` while keeping the replicas running.
async fn pause(lab: &Lab, replicas: &mut Replicas, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        replicas.supervise(lab);
        tokio::time::sleep(Duration::from_millis(200).min(until - Instant::now())).await;
    }
}

async fn inject(
    fault: Fault,
    lab: &mut Lab,
    replicas: &mut Replicas,
    rng: &mut StdRng,
    notes: &mut Vec<String>,
) {
    let target = leader(lab, rng).await;
    match fault {
        Fault::KillLeader => {
            if let Some(daemon) = replicas.by_name(&target) {
                daemon.kill();
            }
            let down = Duration::from_millis(rng.random_range(0..3000));
            notes.push(format!("SIGKILL {target}, restarted after {down:?}"));
            tokio::time::sleep(down).await;
            let i = REPLICAS
                .iter()
                .position(|r| *r == target)
                .expect("a replica");
            replicas.daemons[i] = Some(replicas.spawn(lab, &target));
        }
        Fault::FreezeLeader => {
            let frozen = LEASE_DURATION + Duration::from_millis(rng.random_range(1000..4000));
            if let Some(daemon) = replicas.by_name(&target) {
                daemon.freeze().expect("SIGSTOP");
            }
            notes.push(format!("SIGSTOP {target} for {frozen:?}"));
            pause(lab, replicas, frozen).await;
            if let Some(daemon) = replicas.by_name(&target) {
                daemon.thaw().expect("SIGCONT");
            }
        }
        Fault::DelayAnswers => {
            let by = RENEW_DEADLINE + Duration::from_millis(rng.random_range(500..2000));
            let leases_only = rng.random_bool(0.5);
            let window = Duration::from_millis(rng.random_range(4000..10_000));
            let mut delay = Delay::all(by).of_writer(&target);
            if leases_only {
                delay = delay.of_resource("leases");
            }
            let what = if leases_only { "Lease" } else { "every" };
            notes.push(format!(
                "{what} answer to {target} held back {by:?}, for {window:?}"
            ));
            lab.api.delay_responses(Some(delay));
            pause(lab, replicas, window).await;
            lab.api.delay_responses(None);
        }
        Fault::StopPrometheus => {
            let down = Duration::from_millis(rng.random_range(2000..8000));
            notes.push(format!("Prometheus stopped for {down:?}"));
            lab.prometheus.stop();
            pause(lab, replicas, down).await;
            lab.prometheus.restart().await.expect("Prometheus restarts");
        }
    }
}

fn phase_of(c: &Canary) -> Option<(Option<String>, Phase, String)> {
    c.status
        .as_ref()
        .map(|s| (s.stage_revision.clone(), s.phase, s.message.clone()))
}

fn terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Paused)
}

/// How one release ended, as the test saw it.
#[derive(Debug)]
struct Outcome {
    release: Release,
    image: String,
    revision: Option<String>,
    phase: Option<Phase>,
    message: String,
    took: Duration,
}

async fn run(plan: Plan) {
    let seed = env_number("CANARYD_CHAOS_SEED")
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
    println!(
        "chaos: seed {seed} (replay: CANARYD_CHAOS_SEED={seed}), {} rollouts",
        plan.rollouts
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let failpoints_built = cfg!(feature = "failpoints");
    if !failpoints_built {
        println!(
            "chaos: canaryd was built without the `failpoints` feature: no failpoint aborts \
             (tests/run.sh builds with --features canaryd/failpoints)"
        );
    }
    let mut lab = Lab::start(LabOptions {
        requests_per_second: 4000.0,
        rollout_delay: Duration::from_secs(1),
        seed,
        alertmanager: false,
        ..Default::default()
    })
    .await
    .expect("the lab starts");
    let canaries = lab.canaries();
    let steps: Vec<u8> = canaries.get("flaskapp").await.unwrap().spec.steps.clone();
    // The lab's noData.after (20 s) is shorter than an outage and Prometheus's restart can
    // take on a busy machine; a pause is allowed, but the run is about the faults.
    lab.edit_canary(serde_json::json!({"analysis": {"noData": {"after": "40s"}}}))
        .await
        .unwrap();
    let pct = plan.failpoint_chance;
    let failpoints = format!("intent-written={pct}%return;weights-written={pct}%return");
    let mut replicas = Replicas::start(&lab, &failpoints);

    let mut releases: Vec<Release> = (0..plan.rollouts)
        .map(|i| match i % 4 {
            0 | 2 => Release::Healthy,
            1 => Release::Errors,
            _ => Release::Slow,
        })
        .collect();
    releases.shuffle(&mut rng);
    let mut kinds: Vec<Fault> = Fault::ALL.to_vec();
    kinds.shuffle(&mut rng);

    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut outcomes = Vec::new();
    let mut pending: Option<(Fault, Duration)> = None;
    let mut n = 0;
    let mut extra = 0;
    let mut scheduled = 0;
    let started = Instant::now();
    loop {
        let done = n >= releases.len();
        let need_failpoint = failpoints_built && replicas.aborted == 0;
        let need_kinds = plan.every_kind && faults.len() < Fault::ALL.len();
        if done && !((need_failpoint || need_kinds) && extra < 4) {
            break;
        }
        let release = if done {
            extra += 1;
            Release::Healthy
        } else {
            releases[n]
        };
        n += 1;
        if pending.is_none() && rng.random_bool(plan.fault_chance) {
            let kind = if plan.every_kind {
                scheduled += 1;
                kinds[(scheduled - 1) % kinds.len()]
            } else {
                Fault::ALL[rng.random_range(0..Fault::ALL.len())]
            };
            // Within the rollout: a bad release is rolled back within seconds.
            let within = match release {
                Release::Healthy => 15_000,
                Release::Errors | Release::Slow => 3_000,
            };
            pending = Some((kind, Duration::from_millis(rng.random_range(300..within))));
        }
        let outcome = roll_out(
            &mut lab,
            &mut replicas,
            &mut rng,
            release,
            n,
            &mut pending,
            &mut faults,
            &mut notes,
        )
        .await;
        println!(
            "chaos: rollout {n} {} -> {:?} in {:?}{}",
            outcome.image,
            outcome.phase,
            outcome.took,
            if outcome.phase == Some(Phase::Paused) {
                format!(" ({})", outcome.message)
            } else {
                String::new()
            }
        );
        outcomes.push(outcome);
    }
    lab.api.delay_responses(None);
    replicas.supervise(&lab);
    let log = lab.write_log();
    let mut violations = check(&log, &steps);
    for o in &outcomes {
        if o.phase.is_none() {
            violations.push(Violation {
                property: 5,
                message: format!(
                    "{} (revision {:?}) did not end within {ROLLOUT_TIMEOUT:?}: {}",
                    o.image, o.revision, o.message
                ),
            });
        }
    }
    let revisions: Vec<String> = outcomes.iter().filter_map(|o| o.revision.clone()).collect();
    violations.extend(check_last_status(&log, &revisions));

    let daemon_logs = replicas.logs();
    let fired = |point: &str| {
        daemon_logs
            .matches(&format!("failpoint {point} fired"))
            .count()
    };
    let mut note = String::new();
    let _ = writeln!(
        note,
        "chaos: seed {seed}, {} rollouts in {:?}",
        outcomes.len(),
        started.elapsed()
    );
    let mut ends: BTreeMap<(Release, String), usize> = BTreeMap::new();
    for o in &outcomes {
        let end = o
            .phase
            .map_or("timed out".to_string(), |p| p.as_str().to_string());
        *ends.entry((o.release, end)).or_default() += 1;
    }
    for ((release, end), count) in &ends {
        let _ = writeln!(note, "  {release:?} releases ending {end}: {count}");
    }
    let _ = writeln!(note, "  faults injected:");
    for kind in Fault::ALL {
        let _ = writeln!(
            note,
            "    {kind:?}: {}",
            faults.get(&kind).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        note,
        "    failpoint aborts: {} (intent-written {}, weights-written {}){}",
        replicas.aborted,
        fired("intent-written"),
        fired("weights-written"),
        if failpoints_built {
            ""
        } else {
            " — built without the failpoints feature"
        }
    );
    let _ = writeln!(
        note,
        "    API answers held back: {}",
        lab.api.delayed_responses()
    );
    let _ = writeln!(
        note,
        "  other replica exits: {}",
        replicas.other_exits.len()
    );
    for exit in &replicas.other_exits {
        let _ = writeln!(note, "    {exit}");
    }
    let _ = writeln!(note, "  write log: {} records", log.len());
    let kept =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{seed}.jsonl"));
    if std::fs::copy(lab.dir.path().join("writes.jsonl"), &kept).is_ok() {
        let _ = writeln!(note, "  kept at {}", kept.display());
    }
    let _ = writeln!(note, "  violations: {}", violations.len());
    let mut by_property: BTreeMap<u8, usize> = BTreeMap::new();
    for v in &violations {
        *by_property.entry(v.property).or_default() += 1;
    }
    for (property, count) in &by_property {
        let _ = writeln!(note, "    property {property}: {count}");
    }
    for v in violations.iter().take(30) {
        let _ = writeln!(note, "    [{}] {}", v.property, v.message);
    }
    let _ = writeln!(note, "  faults in order:");
    for n in &notes {
        let _ = writeln!(note, "    {n}");
    }
    println!("{note}");
    assert!(violations.is_empty(), "{note}");
    if plan.every_kind {
        for kind in Fault::ALL {
            assert!(faults.contains_key(&kind), "no {kind:?} injected\n{note}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn roll_out(
    lab: &mut Lab,
    replicas: &mut Replicas,
    rng: &mut StdRng,
    release: Release,
    n: usize,
    pending: &mut Option<(Fault, Duration)>,
    faults: &mut BTreeMap<Fault, usize>,
    notes: &mut Vec<String>,
) -> Outcome {
    let canaries = lab.canaries();
    let before = canaries
        .get("flaskapp")
        .await
        .ok()
        .and_then(|c| c.status)
        .and_then(|s| s.stage_revision);
    let image = release.image(n);
    lab.release(&image).await.expect("a release");
    let started = Instant::now();
    let mut outcome = Outcome {
        release,
        image: image.clone(),
        revision: None,
        phase: None,
        message: String::new(),
        took: Duration::ZERO,
    };
    loop {
        replicas.supervise(lab);
        if let Some((fault, at)) = *pending {
            if started.elapsed() >= at {
                *pending = None;
                notes.push(format!("rollout {n} ({image}) at {at:?}:"));
                inject(fault, lab, replicas, rng, notes).await;
                *faults.entry(fault).or_default() += 1;
            }
        }
        if let Some((revision, phase, message)) = canaries
            .get("flaskapp")
            .await
            .ok()
            .as_ref()
            .and_then(phase_of)
        {
            if revision.is_some() && revision != before {
                outcome.revision = revision;
                outcome.message = message;
                if terminal(phase) {
                    outcome.phase = Some(phase);
                    break;
                }
            }
        }
        if started.elapsed() > ROLLOUT_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    outcome.took = started.elapsed();
    // A paused rollout keeps its weights until the next release takes over.
    if matches!(outcome.phase, Some(Phase::Succeeded | Phase::RolledBack)) {
        let until = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < until && lab.stage_weight().await.ok() != Some(0) {
            pause(lab, replicas, Duration::from_millis(250)).await;
        }
    }
    outcome
}

/// One broken property, with the log records that show it.
#[derive(Debug, Clone, PartialEq)]
struct Violation {
    property: u8,
    message: String,
}

fn is_replica(writer: &str) -> bool {
    REPLICAS.contains(&writer)
}

/// Progress of a status along the steps: Testing 0, Progressing at step k = k, and one rank
/// after the last step for Promoting, SwitchingBack and Succeeded (they move no step; one
/// round may go from Promoting to Succeeded, and the weights are checked on their own);
/// `None` for the phases that leave the path (RolledBack, Paused, Idle).
fn rank(phase: &str, step: u64, last_step: u64) -> Option<u64> {
    match phase {
        "Testing" => Some(0),
        "Progressing" => Some(step),
        "Promoting" | "SwitchingBack" | "Succeeded" => Some(last_step + 1),
        _ => None,
    }
}

fn active(phase: &str) -> bool {
    matches!(
        phase,
        "Testing" | "Progressing" | "Promoting" | "SwitchingBack"
    )
}

fn describe(r: &WriteRecord) -> String {
    let what = match &r.after {
        Resulting::VirtualService { .. } => format!(
            "weights prod {} stage {}",
            r.weight(Some(ROUTE), PROD_HOST).unwrap_or(-1),
            r.weight(Some(ROUTE), STAGE_HOST).unwrap_or(-1)
        ),
        Resulting::Canary {
            phase,
            step,
            stage_weight,
            stage_revision,
            traffic_intent,
            ..
        } => format!(
            "phase {} step {} stageWeight {} revision {}{}",
            phase.as_deref().unwrap_or("-"),
            step.unwrap_or(0),
            stage_weight.unwrap_or(0),
            stage_revision.as_deref().unwrap_or("-"),
            traffic_intent
                .as_ref()
                .map(|i| format!(" intent {i}"))
                .unwrap_or_default()
        ),
        Resulting::Deployment { image, .. } => {
            format!("image {}", image.as_deref().unwrap_or("-"))
        }
        Resulting::Lease { holder, .. } => format!("holder {}", holder.as_deref().unwrap_or("-")),
    };
    format!(
        "#{} {}ms {} {:?} {}{} {}/{}: {what}",
        r.seq,
        r.elapsed.as_millis(),
        r.writer,
        r.verb,
        r.kind,
        r.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
        r.namespace,
        r.name
    )
}

/// Per rollout, what properties 1 and 2 follow.
#[derive(Default)]
struct RolloutState {
    rolled_back: bool,
    /// The last ranked state and the record that set it.
    rank: Option<(u64, u64)>,
    /// The highest step weight written (index into the non-zero steps) and whether the
    /// weight went to 0 after it.
    level: Option<usize>,
    down: bool,
}

/// Properties 1 to 4 over the write log.
fn check(log: &[WriteRecord], steps: &[u8]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut push = |property: u8, message: String| violations.push(Violation { property, message });
    let last_step = steps.len().saturating_sub(1) as u64;
    let traffic: Vec<i64> = steps
        .iter()
        .map(|s| i64::from(*s))
        .filter(|w| *w > 0)
        .collect();
    let mut rollouts: BTreeMap<String, RolloutState> = BTreeMap::new();
    let mut current: Option<String> = None;
    // The VirtualService's stage and prod weights as of the last write.
    let mut weights: Option<(i64, i64, u64)> = None;
    // Lease terms: the holder, and the replicas that wrote in the term (with a record each).
    let mut term_holder: Option<String> = None;
    let mut term_start = 0;
    let mut term_writers: BTreeMap<String, u64> = BTreeMap::new();
    let by_seq: BTreeMap<u64, &WriteRecord> = log.iter().map(|r| (r.seq, r)).collect();
    let show = |seq: u64| by_seq.get(&seq).map(|r| describe(r)).unwrap_or_default();

    let end_of_rollout = |revision: &str,
                          rollouts: &BTreeMap<String, RolloutState>,
                          weights: Option<(i64, i64, u64)>,
                          push: &mut dyn FnMut(u8, String)| {
        let rolled_back = rollouts.get(revision).is_some_and(|s| s.rolled_back);
        if !rolled_back {
            return;
        }
        match weights {
            Some((0, 100, _)) => {}
            Some((stage, prod, seq)) => push(
                3,
                format!(
                    "rollout {revision} was rolled back but ended at prod {prod} / stage {stage}; last weights: {}",
                    show(seq)
                ),
            ),
            None => push(
                3,
                format!("rollout {revision} was rolled back but no weights were ever written"),
            ),
        }
    };

    for record in log {
        match &record.after {
            Resulting::Lease { holder, .. }
                if record.namespace == LEASE_NAMESPACE && record.name == LEASE_NAME =>
            {
                if holder.as_deref() != term_holder.as_deref() {
                    term_holder = holder.clone();
                    term_start = record.seq;
                    term_writers.clear();
                }
                continue;
            }
            Resulting::Lease { .. } => continue,
            _ => {}
        }
        if is_replica(&record.writer) {
            if let Some((other, seq)) = term_writers
                .iter()
                .find(|(w, _)| **w != record.writer)
                .map(|(w, s)| (w.clone(), *s))
            {
                push(
                    4,
                    format!(
                        "two writers in the lease term of {} (from #{term_start}): {} wrote {}, then {} wrote {}",
                        term_holder.as_deref().unwrap_or("nobody"),
                        other,
                        show(seq),
                        record.writer,
                        describe(record)
                    ),
                );
                // One report per intruding writer and term.
                term_writers.clear();
            }
            term_writers
                .entry(record.writer.clone())
                .or_insert(record.seq);
        }
        match &record.after {
            Resulting::VirtualService { .. } => {
                let (Some(stage), Some(prod)) = (
                    record.weight(Some(ROUTE), STAGE_HOST),
                    record.weight(Some(ROUTE), PROD_HOST),
                ) else {
                    continue;
                };
                let before = weights.map(|(s, _, _)| s);
                weights = Some((stage, prod, record.seq));
                if before == Some(stage) {
                    continue;
                }
                let Some(revision) = current.clone() else {
                    continue;
                };
                let state = rollouts.entry(revision.clone()).or_default();
                if state.rolled_back && before.is_some_and(|b| stage > b) {
                    push(
                        1,
                        format!(
                            "rollout {revision}: stage weight raised from {} after the rollback: {}",
                            before.unwrap_or_default(),
                            describe(record)
                        ),
                    );
                    continue;
                }
                if stage == 0 {
                    if state.level.is_some() {
                        state.down = true;
                    }
                    continue;
                }
                let Some(index) = traffic.iter().position(|w| *w == stage) else {
                    push(
                        2,
                        format!(
                            "rollout {revision}: stage weight {stage} is no step's: {}",
                            describe(record)
                        ),
                    );
                    continue;
                };
                if state.down {
                    push(
                        2,
                        format!(
                            "rollout {revision}: stage weight raised again to {stage} after it went to 0 (a step repeated): {}",
                            describe(record)
                        ),
                    );
                    state.down = false;
                    state.level = Some(index);
                    continue;
                }
                let next = state.level.map_or(0, |l| l + 1);
                if index > next {
                    push(
                        2,
                        format!(
                            "rollout {revision}: stage weight {} -> {stage} skips a step: {}",
                            before.unwrap_or_default(),
                            describe(record)
                        ),
                    );
                } else if state.level.is_some_and(|l| index < l) {
                    push(
                        2,
                        format!(
                            "rollout {revision}: stage weight went back {} -> {stage} (a step repeated): {}",
                            before.unwrap_or_default(),
                            describe(record)
                        ),
                    );
                }
                state.level = Some(state.level.map_or(index, |l| l.max(index)));
            }
            Resulting::Canary {
                phase,
                step,
                stage_revision,
                ..
            } if record.subresource == Some("status") => {
                let Some(revision) = stage_revision.clone() else {
                    continue;
                };
                if current.as_deref() != Some(revision.as_str()) {
                    if let Some(previous) = current.take() {
                        end_of_rollout(&previous, &rollouts, weights, &mut push);
                    }
                    current = Some(revision.clone());
                }
                let phase = phase.as_deref().unwrap_or("Idle");
                let state = rollouts.entry(revision.clone()).or_default();
                if phase == "RolledBack" {
                    state.rolled_back = true;
                    continue;
                }
                if state.rolled_back && active(phase) {
                    push(
                        1,
                        format!(
                            "rollout {revision}: the status went back from RolledBack to {phase}: {}",
                            describe(record)
                        ),
                    );
                    continue;
                }
                let step = step.unwrap_or(0);
                let Some(now) = rank(phase, step, last_step) else {
                    continue;
                };
                match state.rank {
                    None if now > 1 => push(
                        2,
                        format!(
                            "rollout {revision} starts at {phase} step {step}, not Testing: {}",
                            describe(record)
                        ),
                    ),
                    Some((was, seq)) if now > was + 1 => push(
                        2,
                        format!(
                            "rollout {revision}: a step skipped, from {} to {}",
                            show(seq),
                            describe(record)
                        ),
                    ),
                    Some((was, seq)) if now < was => push(
                        2,
                        format!(
                            "rollout {revision}: a step repeated, from {} back to {}",
                            show(seq),
                            describe(record)
                        ),
                    ),
                    _ => {}
                }
                if state.rank.is_none_or(|(was, _)| now != was) {
                    state.rank = Some((now, record.seq));
                }
            }
            _ => {}
        }
    }
    if let Some(last) = current {
        end_of_rollout(&last, &rollouts, weights, &mut push);
    }
    violations
}

/// Property 5 over the log: the last status write of each release's revision is terminal.
fn check_last_status(log: &[WriteRecord], revisions: &[String]) -> Vec<Violation> {
    let mut last: BTreeMap<&str, &WriteRecord> = BTreeMap::new();
    for record in log.iter().filter(|r| r.subresource == Some("status")) {
        if let Resulting::Canary {
            stage_revision: Some(revision),
            ..
        } = &record.after
        {
            last.insert(revision.as_str(), record);
        }
    }
    let wanted: BTreeSet<&str> = revisions.iter().map(String::as_str).collect();
    let mut violations = Vec::new();
    for revision in wanted {
        match last.get(revision).map(|r| (r, &r.after)) {
            Some((_, Resulting::Canary { phase: Some(p), .. }))
                if matches!(p.as_str(), "Succeeded" | "RolledBack" | "Paused") => {}
            Some((record, _)) => violations.push(Violation {
                property: 5,
                message: format!(
                    "rollout {revision}: its last status write is not terminal: {}",
                    describe(record)
                ),
            }),
            None => violations.push(Violation {
                property: 5,
                message: format!("rollout {revision}: no status write in the log"),
            }),
        }
    }
    violations
}

/// The checker on hand-made logs: each property is caught, and a clean log passes.
mod checker {
    use super::*;
    use canaryd_lab::apiserver::{RouteWeight, Verb};

    const STEPS: [u8; 4] = [0, 30, 60, 100];

    struct Log(Vec<WriteRecord>);

    impl Log {
        fn push(&mut self, writer: &str, kind: &str, status: bool, after: Resulting) -> &mut Self {
            let seq = self.0.len() as u64 + 1;
            self.0.push(WriteRecord {
                seq,
                at: jiff::Timestamp::UNIX_EPOCH,
                elapsed: Duration::from_millis(seq * 100),
                writer: writer.into(),
                verb: Verb::Patch,
                kind: kind.into(),
                namespace: if kind == "Lease" {
                    LEASE_NAMESPACE
                } else {
                    "prod"
                }
                .into(),
                name: if kind == "Lease" { LEASE_NAME } else { "x" }.into(),
                subresource: status.then_some("status"),
                resource_version: seq,
                after,
            });
            self
        }

        fn lease(&mut self, holder: &str) -> &mut Self {
            let after = Resulting::Lease {
                holder: Some(holder.into()),
                renew_time: None,
                transitions: None,
            };
            self.push(holder, "Lease", false, after)
        }

        fn weights(&mut self, writer: &str, stage: i64) -> &mut Self {
            let w = |host: &str, weight| RouteWeight {
                route: ROUTE.into(),
                host: host.into(),
                weight,
            };
            let after = Resulting::VirtualService {
                weights: vec![w(PROD_HOST, 100 - stage), w(STAGE_HOST, stage)],
            };
            self.push(writer, "VirtualService", false, after)
        }

        fn status(&mut self, writer: &str, revision: &str, phase: &str, step: u64) -> &mut Self {
            let after = Resulting::Canary {
                phase: Some(phase.into()),
                step: Some(step),
                stage_weight: None,
                stage_revision: Some(revision.into()),
                rolled_back_revision: None,
                traffic_intent: None,
                generation: None,
            };
            self.push(writer, "Canary", true, after)
        }

        fn properties(&self) -> Vec<u8> {
            let mut found: Vec<u8> = check(&self.0, &STEPS).iter().map(|v| v.property).collect();
            found.sort();
            found
        }
    }

    fn promoted(log: &mut Log, writer: &str, revision: &str) {
        log.weights(writer, 0)
            .status(writer, revision, "Testing", 0)
            .weights(writer, 30)
            .status(writer, revision, "Progressing", 1)
            .weights(writer, 60)
            .status(writer, revision, "Progressing", 2)
            .weights(writer, 100)
            .status(writer, revision, "Progressing", 3)
            .status(writer, revision, "Promoting", 3)
            .weights(writer, 0)
            .status(writer, revision, "Succeeded", 3);
    }

    #[test]
    fn a_clean_log_with_a_failover_passes() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a");
        promoted(&mut log, "canaryd-a", "r1");
        log.lease("canaryd-b");
        log.status("canaryd-b", "r2", "Testing", 0)
            .weights("canaryd-b", 30)
            .status("canaryd-b", "r2", "Progressing", 1)
            .weights("canaryd-b", 0)
            .status("canaryd-b", "r2", "RolledBack", 1);
        assert_eq!(log.properties(), Vec::<u8>::new());
        assert!(check_last_status(&log.0, &["r1".into(), "r2".into()]).is_empty());
    }

    #[test]
    fn a_raise_after_the_rollback_breaks_property_1() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 30)
            .status("canaryd-a", "r1", "Progressing", 1)
            .status("canaryd-a", "r1", "RolledBack", 1)
            .weights("canaryd-a", 0)
            .weights("canaryd-a", 30)
            .weights("canaryd-a", 0);
        assert_eq!(log.properties(), [1]);
    }

    #[test]
    fn skipped_and_repeated_steps_break_property_2() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 60);
        assert_eq!(log.properties(), [2], "0 -> 60 skips 30");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 30)
            .weights("canaryd-a", 60)
            .weights("canaryd-a", 30);
        assert_eq!(log.properties(), [2], "60 -> 30 goes back");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Progressing", 1)
            .status("canaryd-a", "r1", "Progressing", 3);
        assert_eq!(log.properties(), [2], "step 1 -> 3");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Progressing", 2)
            .status("canaryd-a", "r1", "Progressing", 1);
        assert_eq!(log.properties(), [2, 2], "0 -> 2 skips, 2 -> 1 repeats");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Progressing", 1)
            .status("canaryd-a", "r1", "Progressing", 2)
            .status("canaryd-a", "r1", "Promoting", 2);
        assert_eq!(log.properties(), [2], "promoted before the last step");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 30)
            .weights("canaryd-a", 0)
            .weights("canaryd-a", 30)
            .status("canaryd-a", "r1", "Progressing", 1);
        assert_eq!(log.properties(), [2], "30 -> 0 -> 30: a step repeated");
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Paused", 0)
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Progressing", 1);
        assert_eq!(log.properties(), Vec::<u8>::new(), "a pause and a resume");
    }

    #[test]
    fn a_rollback_left_with_stage_traffic_breaks_property_3() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 30)
            .status("canaryd-a", "r1", "RolledBack", 1)
            .status("canaryd-a", "r2", "Testing", 0);
        assert_eq!(log.properties(), [3]);
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .weights("canaryd-a", 30)
            .status("canaryd-a", "r1", "RolledBack", 1);
        assert_eq!(log.properties(), [3], "at the end of the log too");
    }

    #[test]
    fn two_writers_in_one_term_break_property_4() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .lease("canaryd-b")
            .status("canaryd-b", "r1", "Testing", 0)
            // a, frozen through b's takeover, writes on.
            .weights("canaryd-a", 30)
            .status("canaryd-a", "r1", "Progressing", 1);
        assert_eq!(log.properties(), [4]);
        // The lab's own writes (releases, rollouts) never count.
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .push(
                "canaryd-lab",
                "Deployment",
                false,
                Resulting::Deployment {
                    image: None,
                    generation: None,
                },
            )
            .status("canaryd-a", "r1", "Testing", 0);
        assert_eq!(log.properties(), Vec::<u8>::new());
    }

    #[test]
    fn a_rollout_whose_last_status_is_active_breaks_property_5() {
        let mut log = Log(Vec::new());
        log.lease("canaryd-a")
            .status("canaryd-a", "r1", "Testing", 0)
            .status("canaryd-a", "r1", "Succeeded", 3)
            .status("canaryd-a", "r1", "Progressing", 3);
        let found = check_last_status(&log.0, &["r1".into(), "r9".into()]);
        assert_eq!(found.iter().map(|v| v.property).collect::<Vec<_>>(), [5, 5]);
    }
}

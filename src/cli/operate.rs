//! The commands that talk to a cluster: `run` (the daemon), the operator commands `status`,
//! `promote`, `abort`, `resume` and `list` (through the user's kubeconfig, or the one
//! `--kubeconfig`/`--context` name).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::analysis::report_line;
use crate::api::{Canary, CanaryStatus, Phase};
use crate::cluster::{commands, decode};
use crate::config::{Config, LogFormat};
use crate::rollout::Verb;

/// Which cluster a command talks to: the kubeconfig's current context by default
/// (`KUBECONFIG`, `~/.kube/config`, else the in-cluster service account).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Connection {
    /// The kubeconfig file to use instead of KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The Canary's name.
    pub name: String,
    /// The Canary's namespace (default: the kubeconfig's).
    #[arg(long, short)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub cluster: Connection,
}

/// How `status` prints a Canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Plain words (with `--watch`, one line per change).
    #[default]
    Human,
    /// The Canary as stored, as one JSON object (with `--watch`, one per change, one per line).
    Json,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("canaryd: {message}");
    ExitCode::FAILURE
}

pub fn init_tracing(format: LogFormat, level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let text = rust_log
        .filter(|t| tracing_subscriber::EnvFilter::try_new(t).is_ok())
        .unwrap_or_else(|| level.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&text))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The filter `text` (the config's `log.level`, or `RUST_LOG`), with kube's client held to
/// errors: when kube-client cannot decode an answer it logs the whole body at WARN (target
/// `kube_client::client`), which for a list of Canaries is every Canary, on every retry.
/// canaryd's own messages carry the cause without the body. A filter that names
/// `kube_client` itself is taken as written; the client's TLS warnings
/// (`kube_client::client::tls`) stay at WARN.
pub fn log_filter(text: &str) -> tracing_subscriber::EnvFilter {
    if text.contains("kube_client") {
        return tracing_subscriber::EnvFilter::new(text);
    }
    let quiet = "kube_client::client=error,kube_client::client::tls=warn";
    let text = text.trim().trim_end_matches(',');
    tracing_subscriber::EnvFilter::new(if text.is_empty() {
        quiet.to_string()
    } else {
        format!("{text},{quiet}")
    })
}

pub fn run_daemon(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_tracing(config.log.format, &config.log.level);
    runtime().block_on(async {
        let client = match Client::try_default().await {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        let admin = crate::server::Admin::new();
        if let Err(e) = admin.serve(config.admin.listen).await {
            return fail(format!("admin server on {}: {e}", config.admin.listen));
        }
        let metrics: Arc<dyn crate::cluster::MetricsSource> =
            match crate::telemetry::Telemetry::new(&config.prometheus, config.mesh) {
                Ok(t) => Arc::new(crate::telemetry::Timed {
                    inner: Arc::new(crate::telemetry::Batched::start(
                        t,
                        Some(admin.queries.clone()),
                    )),
                    metrics: admin.queries.clone(),
                }),
                Err(e) => return fail(format!("prometheus: {e}")),
            };
        match crate::cluster::controller::run_with(client, &config, metrics, &admin).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

/// A client for the cluster `connection` names. Without `--kubeconfig` and `--context`,
/// kube's default: `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account.
pub async fn client(connection: &Connection) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: connection.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &connection.kubeconfig {
        None if connection.context.is_none() => {
            return Client::try_default().await.map_err(|e| e.to_string());
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string())?,
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// The target's Canaries, undecoded (see [`decode`]): a Canary whose spec or status does
/// not decode can still be shown and take a command.
async fn canaries(target: &Target) -> Result<(Api<DynamicObject>, String), String> {
    let client = client(&target.cluster).await?;
    let namespace =
        (target.namespace.clone()).unwrap_or_else(|| client.default_namespace().to_string());
    let api = Api::namespaced_with(client, &namespace, &decode::api_resource());
    Ok((api, namespace))
}

pub fn command(target: &Target, verb: Verb) -> ExitCode {
    runtime().block_on(async {
        let api = match canaries(target).await {
            Ok((api, _)) => api,
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        match commands::send(&api, &target.name, verb).await {
            Ok(value) => {
                println!(
                    "canary {} told to {} ({}={value}); canaryd carries it out at its next round",
                    target.name,
                    commands::verb_name(verb),
                    commands::COMMAND_ANNOTATION
                );
                ExitCode::SUCCESS
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                fail(format!("no Canary named {}", target.name))
            }
            Err(e) => fail(e),
        }
    })
}

/// `status --watch` could not follow the Canary at all (no cluster, no such Canary): an
/// exit code of its own, apart from the rollout's outcomes 0 to 3.
const WATCH_FAILED: u8 = 4;

/// A Canary whose spec or status does not decode is shown as such (see [`Shown`]), not as
/// a failure of the command. With `watch`, see [`watch`].
pub fn status(target: &Target, watch: bool, timeout: Option<Duration>, output: Output) -> ExitCode {
    runtime().block_on(async {
        let (api, namespace) = match canaries(target).await {
            Ok(found) => found,
            Err(e) if watch => return failed_watch(format!("cannot reach Kubernetes: {e}")),
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        let first = match api.get(&target.name).await {
            Ok(obj) => obj,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let message = format!("no Canary named {} in {namespace}", target.name);
                return if watch {
                    failed_watch(message)
                } else {
                    fail(message)
                };
            }
            Err(e) if watch => return failed_watch(e),
            Err(e) => return fail(e),
        };
        if !watch {
            match output {
                Output::Human => print!("{}", Shown::of(&first).describe()),
                Output::Json => println!("{}", pretty(&first)),
            }
            return ExitCode::SUCCESS;
        }
        let deadline = timeout.map(|t| (t, tokio::time::Instant::now() + t));
        tokio::select! {
            // Ctrl-C ends the watch as it always has: quietly, exit 0.
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            code = self::watch(api, &target.name, output, deadline) => code,
        }
    })
}

fn failed_watch(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("canaryd: {message}");
    ExitCode::from(WATCH_FAILED)
}

fn pretty(obj: &DynamicObject) -> String {
    serde_json::to_string_pretty(obj).unwrap_or_default()
}

/// How a watch for the current release ends, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Prod runs stage's current revision after its rollout: 0.
    Succeeded,
    /// Stage runs what prod runs and no rollout is under way: 0.
    NothingToRollOut,
    /// Stage's current revision was rolled back: 1.
    RolledBack,
    /// The rollout of stage's current revision waits for a person: 2.
    Paused,
    /// canaryd cannot read or does not accept the spec, so it rolls nothing out: 2.
    InvalidSpec,
}

impl Settled {
    pub fn exit_code(self) -> u8 {
        match self {
            Settled::Succeeded | Settled::NothingToRollOut => 0,
            Settled::RolledBack => 1,
            Settled::Paused | Settled::InvalidSpec => 2,
        }
    }
}

/// Exit code of a watch whose `--timeout` passed first.
pub const TIMED_OUT: u8 = 3;

/// Why canaryd does nothing with the Canary's current generation: `SpecValid=False`,
/// `ReferencesAllowed=False` or `Conflict=True` written for it (or by a daemon that records
/// no generation).
fn spec_rejected(c: &Canary) -> Option<String> {
    let s = c.status.as_ref()?;
    let current = match (s.observed_generation, c.metadata.generation) {
        (Some(seen), Some(now)) => seen >= now,
        _ => true,
    };
    s.conditions
        .iter()
        .find(|k| {
            current
                && matches!(
                    (k.type_.as_str(), k.status.as_str()),
                    ("SpecValid" | "ReferencesAllowed", "False") | ("Conflict", "True")
                )
        })
        .map(|k| k.message.clone())
}

/// Whether the stored Canary (`shown`) answers the question "how did the rollout of the
/// revision stage runs now (`stage`, computed from stage's Deployment; `None` while unknown)
/// end?", and the one-line summary. A terminal phase counts only for that revision: right
/// after a release the status still shows the previous rollout's end.
pub fn settled(shown: &Shown, stage: Option<&str>) -> Option<(Settled, String)> {
    let c = match shown {
        Shown::Invalid {
            name,
            namespace,
            problem,
            ..
        } => {
            return Some((
                Settled::InvalidSpec,
                format!("{namespace}/{name}: invalid spec, nothing is rolled out: {problem}"),
            ))
        }
        Shown::Canary(c) => c,
    };
    let at = format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or_default(),
        c.metadata.name.as_deref().unwrap_or_default()
    );
    if let Some(problem) = spec_rejected(c) {
        return Some((
            Settled::InvalidSpec,
            format!("{at}: nothing is rolled out: {problem}"),
        ));
    }
    let stage = stage?;
    let s = c.status.clone().unwrap_or_default();
    if s.traffic_intent.is_some() {
        // A traffic move is recorded but not yet on the route: the end is not there yet.
        return None;
    }
    let is = |r: &Option<String>| r.as_deref() == Some(stage);
    let ours = is(&s.stage_revision);
    match s.phase {
        Phase::Succeeded if ours => Some((
            Settled::Succeeded,
            format!("{at}: Succeeded: prod runs stage's revision {stage}"),
        )),
        Phase::RolledBack if ours || is(&s.rolled_back_revision) => Some((
            Settled::RolledBack,
            format!("{at}: RolledBack: revision {stage}: {}", s.message),
        )),
        Phase::Paused if ours => Some((
            Settled::Paused,
            format!(
                "{at}: Paused at step {} (stage {} %): {}; a person decides (canaryd resume, \
                 promote or abort)",
                s.step, s.stage_weight, s.message
            ),
        )),
        // Not rolled out again unless an operator resumes it.
        p if !p.is_active() && is(&s.rolled_back_revision) => Some((
            Settled::RolledBack,
            format!(
                "{at}: RolledBack: revision {stage} was rolled back before: {}",
                s.message
            ),
        )),
        p if !p.is_active() && is(&s.prod_revision) => Some((
            Settled::NothingToRollOut,
            format!("{at}: nothing to roll out: stage and prod both run {stage}"),
        )),
        _ => None,
    }
}

/// The stage Deployment a decoded Canary names: (namespace, name).
fn stage_deployment(c: &Canary) -> (String, String) {
    let d = &c.spec.stage.deployment;
    let namespace = d
        .namespace
        .clone()
        .or_else(|| c.metadata.namespace.clone())
        .unwrap_or_default();
    (namespace, d.name.clone())
}

/// Stage's revision as canaryd computes it, under the Canary's rule.
fn stage_revision(c: &Canary, deployment: &Deployment) -> String {
    crate::cluster::workload::revision(deployment, &c.spec.revision)
}

/// What the watch knows of stage's Deployment.
struct StageWatch {
    target: (String, String),
    events: BoxStream<'static, Result<watcher::Event<Deployment>, watcher::Error>>,
    /// The Deployment as last seen; `None` when it does not exist.
    current: Option<Deployment>,
    /// Set once its first listing is complete: `current` is then what the cluster holds.
    listed: bool,
    /// Since the current listing began, whether it held the Deployment.
    seen_in_listing: bool,
    last_error: Option<String>,
}

impl StageWatch {
    fn new(client: Client, target: (String, String)) -> Self {
        let api = Api::<Deployment>::namespaced(client, &target.0);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", target.1));
        Self {
            events: watcher(api, config).default_backoff().boxed(),
            target,
            current: None,
            listed: false,
            seen_in_listing: false,
            last_error: None,
        }
    }

    fn apply(&mut self, event: Result<watcher::Event<Deployment>, watcher::Error>) {
        use watcher::Event;
        match event {
            Ok(Event::Apply(d)) => self.current = Some(d),
            Ok(Event::Delete(_)) => self.current = None,
            Ok(Event::Init) => self.seen_in_listing = false,
            Ok(Event::InitApply(d)) => {
                self.seen_in_listing = true;
                self.current = Some(d);
            }
            Ok(Event::InitDone) => {
                if !self.seen_in_listing {
                    self.current = None;
                    eprintln!(
                        "canaryd: the stage Deployment {}/{} does not exist (yet); waiting for it",
                        self.target.0, self.target.1
                    );
                }
                self.listed = true;
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_error.as_ref() != Some(&text) {
                    eprintln!(
                        "canaryd: watch of the stage Deployment {}/{}: {text}",
                        self.target.0, self.target.1
                    );
                    self.last_error = Some(text);
                }
                return;
            }
        }
        self.last_error = None;
    }
}

/// Follows the Canary, printing each change, until its rollout of the revision stage runs
/// now has ended ([`settled`]), or `deadline` (the `--timeout` and when it passes).
async fn watch(
    api: Api<DynamicObject>,
    name: &str,
    output: Output,
    deadline: Option<(Duration, tokio::time::Instant)>,
) -> ExitCode {
    let client = api.clone().into_client();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut canary_events = watcher(api.clone(), config)
        .applied_objects()
        .default_backoff()
        .boxed();
    let mut stage: Option<StageWatch> = None;
    let mut latest: Option<Shown> = None;
    let mut last_line: Option<String> = None;
    let mut last_version: Option<String> = None;
    let timeout = async {
        match deadline {
            Some((_, at)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    loop {
        let next_stage = async {
            match stage.as_mut() {
                Some(w) => w.events.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut timeout => {
                let (after, _) = deadline.expect("a deadline when the timeout fires");
                let revision = stage.as_ref().and_then(|w| w.current.as_ref()).and_then(|d| match &latest {
                    Some(Shown::Canary(c)) => Some(stage_revision(c, d)),
                    _ => None,
                });
                eprintln!(
                    "canaryd: timed out after {}: the rollout of stage revision {} has not ended; last seen: {}",
                    humantime::format_duration(after),
                    revision.as_deref().unwrap_or("(unknown)"),
                    latest.as_ref().map_or("no status".to_string(), Shown::summary_now),
                );
                return ExitCode::from(TIMED_OUT);
            }
            next = canary_events.next() => match next {
                Some(Ok(obj)) => {
                    let shown = Shown::of(&obj);
                    match output {
                        Output::Human => {
                            let line = shown.watch_line();
                            // The line without its clock: a change is a change of what it says.
                            let now = line.split_once("  ").map_or(line.as_str(), |(_, l)| l).to_string();
                            if last_line.as_ref() != Some(&now) {
                                println!("{line}");
                                last_line = Some(now);
                            }
                        }
                        Output::Json => {
                            if obj.metadata.resource_version != last_version {
                                println!("{}", serde_json::to_string(&obj).unwrap_or_default());
                                last_version = obj.metadata.resource_version.clone();
                            }
                        }
                    }
                    if let Shown::Canary(c) = &shown {
                        let target = stage_deployment(c);
                        if stage.as_ref().is_none_or(|w| w.target != target) {
                            stage = Some(StageWatch::new(client.clone(), target));
                        }
                    }
                    latest = Some(shown);
                }
                Some(Err(e)) => eprintln!("canaryd: watch: {e}"),
                None => return ExitCode::SUCCESS,
            },
            Some(event) = next_stage => {
                if let Some(w) = stage.as_mut() {
                    w.apply(event);
                }
            }
        }
        let Some(shown) = &latest else { continue };
        let revision = match (shown, &stage) {
            (Shown::Canary(c), Some(w)) if w.listed => {
                w.current.as_ref().map(|d| stage_revision(c, d))
            }
            _ => None,
        };
        if let Some((how, summary)) = settled(shown, revision.as_deref()) {
            match output {
                Output::Human => println!("{summary}"),
                // stdout stays one JSON object per line.
                Output::Json => eprintln!("{summary}"),
            }
            return ExitCode::from(how.exit_code());
        }
    }
}

/// `list`: one row per Canary of a namespace, or of all (`all`).
pub fn list(all: bool, namespace: Option<&str>, connection: &Connection) -> ExitCode {
    runtime().block_on(async {
        let client = match client(connection).await {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        let resource = decode::api_resource();
        let (api, place) = if all {
            (
                Api::<DynamicObject>::all_with(client, &resource),
                "any namespace".to_string(),
            )
        } else {
            let ns =
                namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string);
            (
                Api::namespaced_with(client, &ns, &resource),
                format!("namespace {ns}"),
            )
        };
        match api.list(&ListParams::default()).await {
            Ok(list) if list.items.is_empty() => {
                eprintln!("no Canaries in {place}");
                ExitCode::SUCCESS
            }
            Ok(list) => {
                let shown: Vec<Shown> = list.items.iter().map(Shown::of).collect();
                print!("{}", table(&shown, all, jiff::Timestamp::now()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        }
    })
}

/// The `list` table: NAMESPACE (with `namespaces`), NAME, PHASE, STEP, STAGE%,
/// STAGE-REVISION, PROD-REVISION and SINCE (how long since the last phase or step change),
/// sorted by namespace and name. A Canary canaryd cannot read or accept is `Invalid`.
pub fn table(canaries: &[Shown], namespaces: bool, now: jiff::Timestamp) -> String {
    let mut rows: Vec<Vec<String>> = canaries
        .iter()
        .map(|shown| {
            let (namespace, name, phase, steps, status, created) = match shown {
                Shown::Canary(c) => (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                    if spec_rejected(c).is_some() {
                        "Invalid".to_string()
                    } else {
                        c.status.clone().unwrap_or_default().phase.to_string()
                    },
                    Some(c.spec.steps.len()),
                    c.status.clone().unwrap_or_default(),
                    c.metadata.creation_timestamp.as_ref().map(|t| t.0),
                ),
                Shown::Invalid {
                    name,
                    namespace,
                    status,
                    created,
                    ..
                } => (
                    namespace.clone(),
                    name.clone(),
                    "Invalid".to_string(),
                    None,
                    (**status).clone(),
                    *created,
                ),
            };
            let step = match steps {
                Some(n) if n > 0 => format!("{}/{}", status.step, n - 1),
                _ => status.step.to_string(),
            };
            let since = status
                .history
                .last()
                .map(|h| h.at)
                .or(status.rollout_started_at)
                .or(created);
            let mut row = vec![
                name,
                phase,
                step,
                status.stage_weight.to_string(),
                status.stage_revision.unwrap_or_else(|| "-".into()),
                status.prod_revision.unwrap_or_else(|| "-".into()),
                since.map_or("-".to_string(), |t| age(now, t)),
            ];
            if namespaces {
                row.insert(0, namespace);
            }
            row
        })
        .collect();
    rows.sort();
    let mut header: Vec<String> = [
        "NAME",
        "PHASE",
        "STEP",
        "STAGE%",
        "STAGE-REVISION",
        "PROD-REVISION",
        "SINCE",
    ]
    .map(String::from)
    .to_vec();
    if namespaces {
        header.insert(0, "NAMESPACE".into());
    }
    rows.insert(0, header);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("   ").trim_end();
        out.push('\n');
    }
    out
}

/// `now - then` as kubectl shows ages: 45s, 12m, 3h, 5d.
fn age(now: jiff::Timestamp, then: jiff::Timestamp) -> String {
    let secs = now.duration_since(then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A stored Canary as `status` shows it: decoded, or what of it decodes and why the rest
/// does not.
pub enum Shown {
    Canary(Box<Canary>),
    /// The spec does not decode: the problem, the name and the status (when it decodes).
    Invalid {
        name: String,
        namespace: String,
        problem: String,
        status: Box<CanaryStatus>,
        created: Option<jiff::Timestamp>,
    },
}

impl Shown {
    pub fn of(obj: &DynamicObject) -> Self {
        // A status that does not decode is shown as none, with the reason as its message.
        let status = decode::status(obj).unwrap_or_else(|problem| {
            Some(CanaryStatus {
                message: format!("status cannot be read: {problem}"),
                ..CanaryStatus::default()
            })
        });
        match decode::spec(obj) {
            Ok(spec) => Shown::Canary(Box::new(Canary {
                metadata: obj.metadata.clone(),
                spec,
                status,
            })),
            Err(problem) => Shown::Invalid {
                name: obj.metadata.name.clone().unwrap_or_default(),
                namespace: obj.metadata.namespace.clone().unwrap_or_default(),
                problem,
                status: Box::new(status.unwrap_or_default()),
                created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
            },
        }
    }

    /// Phase, step, weight and message in one line, for a timeout's last word.
    fn summary_now(&self) -> String {
        let line = self.watch_line();
        line.split_once("  ")
            .map_or(line.as_str(), |(_, l)| l)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn describe(&self) -> String {
        match self {
            Shown::Canary(c) => describe(c),
            Shown::Invalid {
                name,
                namespace,
                problem,
                status,
                ..
            } => {
                let mut out = format!(
                    "Canary {namespace}/{name}: invalid, its spec cannot be read: {problem}\n"
                );
                for cond in &status.conditions {
                    out += &format!(
                        "  condition {}={}: {}\n",
                        cond.type_, cond.status, cond.message
                    );
                }
                out
            }
        }
    }

    pub fn watch_line(&self) -> String {
        match self {
            Shown::Canary(c) => watch_line(c),
            Shown::Invalid { problem, .. } => format!(
                "{}  invalid: {problem}",
                jiff::Timestamp::now().strftime("%H:%M:%S")
            ),
        }
    }
}

/// One line per change, for `status --watch`.
pub fn watch_line(c: &Canary) -> String {
    let s = c.status.clone().unwrap_or_default();
    format!(
        "{}  {:<13} step {} stage {:>3}% prod {:>3}%  {}",
        jiff::Timestamp::now().strftime("%H:%M:%S"),
        s.phase.as_str(),
        s.step,
        s.stage_weight,
        100 - u32::from(s.stage_weight),
        s.message
    )
}

/// The whole status in plain words.
pub fn describe(c: &Canary) -> String {
    use std::fmt::Write;
    let s = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let name = c.metadata.name.clone().unwrap_or_default();
    let _ = writeln!(out, "Canary {ns}/{name}: {}", s.phase);
    let _ = writeln!(out, "  {}", s.message);
    let _ = writeln!(
        out,
        "  traffic: stage {}%, prod {}% (step {} of {:?})",
        s.stage_weight,
        100 - u32::from(s.stage_weight),
        s.step,
        c.spec.steps
    );
    let _ = writeln!(
        out,
        "  revisions: stage {}, prod {}",
        s.stage_revision.as_deref().unwrap_or("-"),
        s.prod_revision.as_deref().unwrap_or("-")
    );
    if let Some(d) = &s.last_decision {
        let _ = writeln!(
            out,
            "  last decision: {} at {}% - {}",
            d.verdict.as_str(),
            d.stage_weight,
            d.reason
        );
        for m in &d.metrics {
            let _ = writeln!(out, "    {}", report_line(m));
        }
    }
    for cond in &s.conditions {
        let _ = writeln!(
            out,
            "  condition {}={}: {}",
            cond.type_, cond.status, cond.message
        );
    }
    if !s.history.is_empty() {
        let _ = writeln!(out, "  history:");
        for h in &s.history {
            let _ = writeln!(
                out,
                "    {}  {:<13} {:>3}%  {}",
                h.at.strftime("%H:%M:%S"),
                h.phase.as_str(),
                h.stage_weight,
                h.message
            );
        }
    }
    out
}

/// Everything logged while `f` runs under `filter`, as text (the tests' log capture).
#[cfg(test)]
pub(crate) fn logged(filter: tracing_subscriber::EnvFilter, f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let out = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = buffer.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit_all() {
        tracing::warn!(target: "kube_client::client", "{{\"items\": [BODY]}}, SerdeError");
        tracing::warn!(target: "kube_client::client::tls", "failed to reload CA bundle");
        tracing::warn!(target: "canaryd::cluster::controller", "watch failed");
        tracing::info!(target: "canaryd::cluster::controller", "caches synced; ready");
    }

    fn stored(status: serde_json::Value, generation: i64) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "flaskapp", "namespace": "prod", "generation": generation,
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {
                "virtualService": {"name": "demoapp"},
                "prod": {"host": "p", "deployment": {"name": "flaskapp"}},
                "stage": {"host": "s", "deployment": {"name": "flaskapp", "namespace": "stage"}}
            },
            "status": status
        }))
        .unwrap()
    }

    fn settles(status: serde_json::Value, stage: Option<&str>) -> Option<Settled> {
        settled(&Shown::of(&stored(status, 1)), stage).map(|(how, _)| how)
    }

    #[test]
    fn a_watch_waits_for_the_end_of_the_rollout_of_stages_current_revision() {
        use serde_json::json;
        // Right after a release: the previous rollout's end is no answer.
        let before = json!({"phase": "Succeeded", "stageRevision": "v1", "prodRevision": "v1"});
        assert_eq!(settles(before.clone(), Some("v2")), None);
        assert_eq!(settles(before, None), None, "stage unknown yet");
        let ended =
            |phase: &str| json!({"phase": phase, "stageRevision": "v2", "prodRevision": "v1"});
        assert_eq!(settles(ended("Testing"), Some("v2")), None);
        assert_eq!(settles(ended("Paused"), Some("v2")), Some(Settled::Paused));
        assert_eq!(
            settles(ended("Paused"), Some("v3")),
            None,
            "a newer release restarts it"
        );
        assert_eq!(
            settles(ended("RolledBack"), Some("v2")),
            Some(Settled::RolledBack)
        );
        let done = json!({"phase": "Succeeded", "stageRevision": "v2", "prodRevision": "v2"});
        assert_eq!(settles(done, Some("v2")), Some(Settled::Succeeded));
        // Decided and recorded, but the weights are not on the route yet.
        let writing = json!({"phase": "RolledBack", "stageRevision": "v2", "prodRevision": "v1",
            "trafficIntent": {"from": 30, "to": 0, "at": "2026-12-07T10:00:00Z"}});
        assert_eq!(settles(writing, Some("v2")), None);
        // A revision rolled back before is not tried again: its rollout has ended.
        let refused = json!({"phase": "RolledBack", "stageRevision": "v3",
                             "rolledBackRevision": "v2", "prodRevision": "v1"});
        assert_eq!(settles(refused, Some("v2")), Some(Settled::RolledBack));
        // Stage runs what prod runs: nothing to wait for, also after a rollback.
        for phase in ["Idle", "Succeeded", "RolledBack"] {
            let same = json!({"phase": phase, "stageRevision": "v3", "rolledBackRevision": "v3",
                              "prodRevision": "v1"});
            assert_eq!(
                settles(same, Some("v1")),
                Some(Settled::NothingToRollOut),
                "{phase}"
            );
        }
        let mid = json!({"phase": "Progressing", "stageRevision": "v3", "prodRevision": "v1"});
        assert_eq!(
            settles(mid, Some("v1")),
            None,
            "canaryd sends traffic back first"
        );
        // No status yet: the daemon has not looked.
        assert_eq!(settles(serde_json::Value::Null, Some("v1")), None);
        let codes: Vec<u8> = [
            Settled::Succeeded,
            Settled::NothingToRollOut,
            Settled::RolledBack,
            Settled::Paused,
            Settled::InvalidSpec,
        ]
        .map(Settled::exit_code)
        .to_vec();
        assert_eq!(codes, [0, 0, 1, 2, 2]);
    }

    #[test]
    fn an_invalid_spec_ends_a_watch_unless_the_verdict_is_about_an_older_generation() {
        use serde_json::json;
        let rejected = |seen: i64| {
            json!({"phase": "Idle", "observedGeneration": seen, "conditions": [
                {"type": "SpecValid", "status": "False", "reason": "Invalid",
                 "message": "spec.steps[2]: 30 does not exceed the step before it (60)"}]})
        };
        let (how, summary) = settled(&Shown::of(&stored(rejected(2), 2)), None).unwrap();
        assert_eq!(how, Settled::InvalidSpec);
        assert!(
            summary.contains("spec.steps[2]: 30 does not exceed"),
            "{summary}"
        );
        // The spec changed since: wait for canaryd's word on it.
        assert_eq!(settled(&Shown::of(&stored(rejected(1), 2)), None), None);
        // A Canary that may not touch what it names, or whose route another one drives.
        for (type_, status) in [("ReferencesAllowed", "False"), ("Conflict", "True")] {
            let blocked = json!({"phase": "Idle", "observedGeneration": 2, "conditions": [
                {"type": type_, "status": status, "reason": "R", "message": "the reason"}]});
            let (how, summary) = settled(&Shown::of(&stored(blocked, 2)), Some("v2")).unwrap();
            assert_eq!(how, Settled::InvalidSpec, "{type_}");
            assert!(
                summary.ends_with("nothing is rolled out: the reason"),
                "{summary}"
            );
        }
        let mut broken = stored(serde_json::Value::Null, 1);
        broken.data["spec"]["stepDuration"] = json!({"min": "5 parsecs"});
        let (how, summary) = settled(&Shown::of(&broken), Some("v1")).unwrap();
        assert_eq!(how, Settled::InvalidSpec);
        assert!(summary.contains("spec.stepDuration.min"), "{summary}");
    }

    #[test]
    fn the_list_has_one_row_per_canary_and_invalid_ones_say_so() {
        use serde_json::json;
        let now: jiff::Timestamp = "2025-01-01T03:00:00Z".parse().unwrap();
        let mut good = stored(
            json!({"phase": "Progressing", "step": 2, "stageWeight": 60,
                   "stageRevision": "demoapp:v2", "prodRevision": "demoapp:v1",
                   "history": [{"at": "2025-01-01T02:55:00Z", "phase": "Progressing", "step": 2,
                                "stageWeight": 60, "message": "step 2"}]}),
            1,
        );
        good.metadata.namespace = Some("team-b".into());
        let mut broken = stored(serde_json::Value::Null, 1);
        broken.metadata.name = Some("broken".into());
        broken.data["spec"]["stepDuration"] = json!({"min": "5 parsecs"});
        let shown = [Shown::of(&good), Shown::of(&broken)];
        let text = table(&shown, true, now);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
                    "NAMESPACE",
                    "NAME",
                    "PHASE",
                    "STEP",
                    "STAGE%",
                    "STAGE-REVISION",
                    "PROD-REVISION",
                    "SINCE"
                ],
                vec!["prod", "broken", "Invalid", "0", "0", "-", "-", "3h"],
                vec![
                    "team-b",
                    "flaskapp",
                    "Progressing",
                    "2/2",
                    "60",
                    "demoapp:v2",
                    "demoapp:v1",
                    "5m"
                ],
            ],
            "{text}"
        );
        let text = table(&shown[..1], false, now);
        assert!(text.starts_with("NAME "), "{text}");
        assert!(!text.contains("team-b"), "{text}");
    }

    #[test]
    fn the_default_filter_drops_kube_client_bodies_and_keeps_our_messages() {
        for level in ["info", "info,kube=warn", "warn", "warn,"] {
            let log = logged(log_filter(level), emit_all);
            assert!(!log.contains("BODY"), "{level}: {log}");
            assert!(log.contains("failed to reload CA bundle"), "{level}: {log}");
            assert!(log.contains("watch failed"), "{level}: {log}");
        }
        assert!(logged(log_filter("info"), emit_all).contains("caches synced"));
        // Asked for by name, it is shown.
        let log = logged(log_filter("info,kube_client=warn"), emit_all);
        assert!(log.contains("BODY"), "{log}");
    }
}

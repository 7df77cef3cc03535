//! The commands that talk to a cluster: `run` (the daemon) and the operator commands
//! `status`, `promote`, `abort`, `resume` (through the user's kubeconfig).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::api::{Canary, CanaryStatus};
use crate::cluster::{commands, decode};
use crate::config::{Config, LogFormat};
use crate::rollout::Verb;

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The Canary's name.
    pub name: String,
    /// The Canary's namespace (default: the kubeconfig's).
    #[arg(long, short)]
    pub namespace: Option<String>,
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
                    inner: Arc::new(t),
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

/// The target's Canaries, undecoded (see [`decode`]): a Canary whose spec or status does
/// not decode can still be shown and take a command.
async fn canaries(target: &Target) -> Result<Api<DynamicObject>, kube::Error> {
    let client = Client::try_default().await?;
    let namespace =
        (target.namespace.clone()).unwrap_or_else(|| client.default_namespace().to_string());
    Ok(Api::namespaced_with(
        client,
        &namespace,
        &decode::api_resource(),
    ))
}

pub fn command(target: &Target, verb: Verb) -> ExitCode {
    runtime().block_on(async {
        let api = match canaries(target).await {
            Ok(api) => api,
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

/// A Canary whose spec or status does not decode is shown as such (see [`Shown`]), not as
/// a failure of the command.
pub fn status(target: &Target, watch: bool) -> ExitCode {
    runtime().block_on(async {
        let api = match canaries(target).await {
            Ok(api) => api,
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        if !watch {
            return match api.get(&target.name).await {
                Ok(obj) => {
                    print!("{}", Shown::of(&obj).describe());
                    ExitCode::SUCCESS
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    fail(format!("no Canary named {}", target.name))
                }
                Err(e) => fail(e),
            };
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
        let mut last: Option<String> = None;
        let mut stream = watcher(api, config)
            .applied_objects()
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                next = stream.next() => match next {
                    Some(Ok(obj)) => {
                        let line = Shown::of(&obj).watch_line();
                        // The line without its clock: a change is a change of what it says.
                        let now = line.split_once("  ").map_or(line.as_str(), |(_, l)| l).to_string();
                        if last.as_ref() != Some(&now) {
                            println!("{line}");
                            last = Some(now);
                        }
                    }
                    Some(Err(e)) => eprintln!("canaryd: watch: {e}"),
                    None => return ExitCode::SUCCESS,
                }
            }
        }
    })
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
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Shown::Canary(c) => describe(c),
            Shown::Invalid {
                name,
                namespace,
                problem,
                status,
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
            let _ = writeln!(
                out,
                "    {:<16} {:<9} e-value {:>9.3} (rollback at {:.0})  stage/prod ratio in [{:.2}, {}] (margin {:.2})",
                m.name,
                m.verdict.as_str(),
                m.e_value,
                m.rollback_threshold,
                m.ratio_lower,
                m.ratio_upper.map_or("unbounded".to_string(), |u| format!("{u:.2}")),
                m.margin
            );
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

//! The commands that talk to a cluster: `run` (the daemon) and the operator commands
//! `status`, `promote`, `abort`, `resume` (through the user's kubeconfig).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::api::{Canary, CanaryStatus};
use crate::cluster::commands;
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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

async fn canaries(target: &Target) -> Result<Api<Canary>, kube::Error> {
    let client = Client::try_default().await?;
    Ok(match &target.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    })
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

pub fn status(target: &Target, watch: bool) -> ExitCode {
    runtime().block_on(async {
        let api = match canaries(target).await {
            Ok(api) => api,
            Err(e) => return fail(format!("cannot reach Kubernetes: {e}")),
        };
        if !watch {
            return match api.get(&target.name).await {
                Ok(c) => {
                    print!("{}", describe(&c));
                    ExitCode::SUCCESS
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    fail(format!("no Canary named {}", target.name))
                }
                Err(e) => fail(e),
            };
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
        let mut last: Option<CanaryStatus> = None;
        let mut stream = watcher(api, config)
            .applied_objects()
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                next = stream.next() => match next {
                    Some(Ok(c)) => {
                        let now = c.status.clone().unwrap_or_default();
                        if last.as_ref() != Some(&now) {
                            println!("{}", watch_line(&c));
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

//! `canaryd analyze --prometheus URL --canary FILE`: the analysis of a Canary's current step
//! against live telemetry, one look per evaluation interval, printed as `--input` prints its
//! looks, until a decision or Ctrl-C. A dry run: it never touches the cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::analyze::{look_json, metric_lines, weight_of, ROLLBACK_EXIT};
use crate::analysis::{evaluate_look, LookContext};
use crate::api::{validate, AnalysisState, Canary, Verdict};
use crate::config::{Config, MeshPreset, PrometheusConfig};
use crate::telemetry::{QueryTarget, Telemetry};

/// The daemon's default evaluation interval, for a Canary that sets none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct LiveOptions {
    pub prometheus: String,
    pub canary: PathBuf,
    /// Start the step this long ago: past windows are evaluated at once, then live ones.
    /// Without it, the step starts at `status.stepStartedAt` if the manifest has one.
    pub since: Option<Duration>,
    /// How far behind now a window must end before it is read.
    pub lag: Duration,
    /// Daemon config whose `prometheus` (auth, TLS, headers) and `mesh` settings are used.
    pub config: Option<PathBuf>,
    pub mesh: Option<MeshPreset>,
    /// Write the looks read, in the `--input` format, to this file.
    pub record: Option<PathBuf>,
    pub explain: bool,
    /// Exit 1 on a rollback decision.
    pub fail_on_rollback: bool,
}

pub fn run(opts: LiveOptions) -> ExitCode {
    let setup = load_canary(&opts.canary).and_then(|canary| {
        let (settings, mesh) = prometheus_settings(&opts)?;
        let telemetry = Telemetry::new(&settings, mesh).map_err(|e| e.to_string())?;
        Ok((canary, telemetry))
    });
    let (canary, telemetry) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            code = watch(&canary, &telemetry, &opts) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted; no decision yet");
                ExitCode::from(130)
            }
        }
    })
}

/// Looks until a verdict other than `continue`.
async fn watch(canary: &Canary, telemetry: &Telemetry, opts: &LiveOptions) -> ExitCode {
    let spec = &canary.spec;
    let namespace = canary.metadata.namespace.as_deref().unwrap_or("default");
    let interval = spec.analysis.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
    let target = [QueryTarget {
        key: (),
        spec,
        namespace,
    }];
    let status = canary.status.clone().unwrap_or_default();
    // A Canary without a traffic step yet is analysed as at its first traffic step.
    let step = status.step.max(1);
    let queries = telemetry.queries(&target, interval);
    eprintln!(
        "reading {} every {}, {} queries per look:",
        telemetry.client().url(),
        humantime::format_duration(interval),
        queries.len()
    );
    for q in queries {
        eprintln!("  {q}");
    }
    let span = |d: Duration| SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    // The step so far: from `--since`, else from when the daemon started it, else from now.
    let step_start = match (opts.since, status.step_started_at) {
        (Some(since), _) => Timestamp::now() - span(opts.lag) - span(since),
        (None, Some(started)) => started,
        (None, None) => Timestamp::now() - span(opts.lag),
    };
    eprintln!("step {step} analysed from {step_start}");
    let mut state = AnalysisState::default();
    let mut recorder = opts
        .record
        .as_deref()
        .map(|path| Recorder::new(path, spec, status.stage_weight));
    let mut k = 0;
    loop {
        k += 1;
        let window_end = step_start + span(interval * k);
        let wait = (window_end + span(opts.lag)).duration_since(Timestamp::now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
        let t = (interval * k).as_secs_f64();
        let fetched = telemetry
            .fetch(&target, window_end, interval)
            .await
            .remove(&());
        let counts = match fetched.expect("fetch answers for every target") {
            Ok(counts) => counts,
            Err(e) => {
                eprintln!("look at t={t}s (window ending {window_end}): {e}; holding, the look is not counted");
                continue;
            }
        };
        if let Some(r) = &mut recorder {
            if let Err(e) = r.add(t, &counts) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
        let ctx = LookContext {
            step,
            stage_weight: match status.stage_weight {
                0 => weight_of(&counts),
                w => w,
            },
            elapsed_in_step: interval * k,
            min_duration: spec.step_duration.min.0,
            comparative_steps: crate::analysis::comparative_steps(&spec.steps),
        };
        let out = match evaluate_look(&spec.analysis, &state, &counts, &ctx) {
            Ok(out) => out,
            Err(e) => {
                eprintln!(
                    "look at t={t}s (window ending {window_end}): {e}; the look is not counted"
                );
                continue;
            }
        };
        state = out.state.clone();
        state.window_end = Some(window_end);
        if opts.explain {
            println!(
                "t={t}s (window ending {window_end}): {}: {}",
                out.verdict.as_str(),
                out.reason
            );
            print!("{}", metric_lines(&out));
        } else {
            let mut line = look_json(t, &out);
            line["window_end"] = window_end.to_string().into();
            line["reason"] = out.reason.clone().into();
            line["counts"] = serde_json::to_value(&counts).unwrap_or_default();
            println!("{line}");
        }
        if out.verdict == Verdict::Rollback && opts.fail_on_rollback {
            return ExitCode::from(ROLLBACK_EXIT);
        }
        if out.verdict != Verdict::Continue {
            return ExitCode::SUCCESS;
        }
    }
}

/// `--record`: the looks read so far as an `--input` document (counts cumulative since the
/// step started), rewritten after every look so an interrupted run leaves a valid file.
struct Recorder<'a> {
    path: &'a Path,
    spec: &'a crate::api::CanarySpec,
    /// The step's weight from the manifest's status (0: read from each look's counts).
    stage_weight: u8,
    total: crate::analysis::LookCounts,
    looks: Vec<serde_json::Value>,
}

impl<'a> Recorder<'a> {
    fn new(path: &'a Path, spec: &'a crate::api::CanarySpec, stage_weight: u8) -> Self {
        Recorder {
            path,
            spec,
            stage_weight,
            total: Default::default(),
            looks: Vec::new(),
        }
    }

    fn add(&mut self, t: f64, look: &crate::analysis::LookCounts) -> Result<(), String> {
        self.total.stage.accumulate(&look.stage);
        self.total.prod.accumulate(&look.prod);
        self.looks.push(serde_json::json!({
            "t": t,
            "stage": self.total.stage,
            "prod": self.total.prod,
        }));
        let mut doc = serde_json::json!({
            "analysis": self.spec.analysis,
            "minDuration": self.spec.step_duration.min,
            "comparativeSteps": crate::analysis::comparative_steps(&self.spec.steps),
            "looks": self.looks,
        });
        if self.stage_weight != 0 {
            doc["stageWeight"] = self.stage_weight.into();
        }
        let text = serde_json::to_string_pretty(&doc).expect("counts serialize");
        std::fs::write(self.path, text + "\n")
            .map_err(|e| format!("--record {}: {e}", self.path.display()))
    }
}

/// The Canary in the file (its first document), checked as the daemon checks it.
fn load_canary(path: &Path) -> Result<Canary, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let de = serde_yaml_ng::Deserializer::from_str(&text)
        .next()
        .ok_or_else(|| format!("{shown}: the file is empty; give a Canary manifest"))?;
    let canary: Canary = serde_path_to_error::deserialize(de)
        .map_err(|e| format!("{shown}: {}: {}", e.path(), e.inner()))?;
    let namespace = canary.metadata.namespace.as_deref().unwrap_or("default");
    validate(&canary.spec, namespace).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("{shown}: {e}")).collect();
        lines.join("\n")
    })?;
    Ok(canary)
}

fn prometheus_settings(opts: &LiveOptions) -> Result<(PrometheusConfig, MeshPreset), String> {
    let (mut settings, mesh) = match &opts.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| e.to_string())?;
            (config.prometheus, config.mesh)
        }
        None => (
            serde_yaml_ng::from_str::<PrometheusConfig>("url: http://127.0.0.1")
                .map_err(|e| e.to_string())?,
            MeshPreset::default(),
        ),
    };
    settings.url = opts.prometheus.clone();
    Ok((settings, opts.mesh.unwrap_or(mesh)))
}

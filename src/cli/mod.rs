//! The command line: one subcommand per job. Each subcommand parses its arguments here and
//! calls into the library; errors become a message on stderr and a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::duration::HumanDuration;
use crate::config::MeshPreset;

mod analyze;
mod analyze_live;
#[cfg(feature = "demo")]
mod demo;
pub(crate) mod operate;
mod validate;

#[derive(Debug, Parser)]
#[command(
    name = "canaryd",
    version,
    about = "Progressive delivery for Kubernetes and Istio, decided by sequential statistics"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the Canary CustomResourceDefinition (YAML) to install in a cluster.
    Crd {
        /// Print instead the subset of the Gateway API's ReferenceGrant CRD canaryd reads, for
        /// a cluster without the Gateway API.
        #[arg(long)]
        reference_grant: bool,
    },
    /// Evaluate one step as the daemon would: offline from recorded counts (JSON), or live
    /// against Prometheus, one look per evaluation interval until a decision or Ctrl-C.
    Analyze {
        /// The recorded counts and the analysis spec; `-` reads stdin.
        #[arg(
            long,
            required_unless_present = "prometheus",
            conflicts_with = "prometheus"
        )]
        input: Option<String>,
        /// Base URL of the Prometheus HTTP API to read live telemetry from.
        #[arg(long, requires = "canary")]
        prometheus: Option<String>,
        /// The Canary manifest (YAML) whose current step is analysed.
        #[arg(long, requires = "prometheus")]
        canary: Option<PathBuf>,
        /// Start the step this long ago (e.g. 10m): past windows are evaluated at once.
        /// Default: the Canary's status.stepStartedAt if the manifest has one, else now.
        #[arg(long, requires = "prometheus")]
        since: Option<HumanDuration>,
        /// How far behind now a window must end before it is read, so Prometheus has its
        /// last scrape (at least one scrape interval).
        #[arg(long, default_value = "15s", requires = "prometheus")]
        lag: HumanDuration,
        /// Daemon config file whose prometheus settings (auth, TLS, headers) and mesh apply.
        #[arg(long, requires = "prometheus")]
        config: Option<PathBuf>,
        /// Mesh preset of the built-in metrics: istio or envoy (default: the config's, or istio).
        #[arg(long, value_parser = parse_mesh, requires = "prometheus")]
        mesh: Option<MeshPreset>,
        /// Write the looks read from Prometheus to this file in the `--input` format (rewritten
        /// after every look), so the live run can be replayed offline exactly.
        #[arg(long, requires = "prometheus")]
        record: Option<PathBuf>,
        /// Say the decision in plain words instead of JSON.
        #[arg(long)]
        explain: bool,
        /// Exit 1 when the decision is a rollback (a CI gate); without it every decision
        /// exits 0.
        #[arg(long)]
        fail_on_rollback: bool,
    },
    /// Check Canary manifests and daemon config files without a cluster.
    Validate {
        /// YAML files: Canary manifests (several documents allowed) or a daemon config.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A whole rollout in a local lab (Kubernetes API, simulated mesh, real Prometheus),
    /// shown live: the quickest way to see what canaryd does.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run the daemon: watch Canaries and drive their rollouts (uses the kubeconfig or the
    /// in-cluster service account).
    Run {
        /// The daemon's config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a Canary's rollout: phase, weights, the last decision and its statistics.
    Status {
        #[command(flatten)]
        target: operate::Target,
        /// Show every change until the rollout of the revision stage runs now ends: exit 0
        /// Succeeded (or nothing to roll out), 1 RolledBack, 2 Paused or an invalid spec,
        /// 3 past --timeout, 4 when the Canary cannot be followed at all. Ctrl-C exits 0.
        #[arg(long, short)]
        watch: bool,
        /// With --watch: give up after this long (e.g. 30m, 1h), with exit code 3.
        #[arg(long, requires = "watch", value_name = "DURATION")]
        timeout: Option<HumanDuration>,
        /// human (plain words), or json (the Canary as stored; with --watch one object per
        /// change, one per line).
        #[arg(long, short, value_enum, default_value_t = operate::Output::Human)]
        output: operate::Output,
    },
    /// List the Canaries of a namespace (or of all): phase, step, stage weight, revisions.
    List {
        /// Every namespace.
        #[arg(long, short = 'A', conflicts_with = "namespace")]
        all_namespaces: bool,
        /// The namespace (default: the kubeconfig's).
        #[arg(long, short)]
        namespace: Option<String>,
        #[command(flatten)]
        cluster: operate::Connection,
    },
    /// Skip the remaining analysis and promote prod now (in manual mode: go ahead).
    Promote {
        #[command(flatten)]
        target: operate::Target,
    },
    /// Roll back now: all traffic to prod.
    Abort {
        #[command(flatten)]
        target: operate::Target,
    },
    /// Continue a paused rollout, or retry a rolled-back revision.
    Resume {
        #[command(flatten)]
        target: operate::Target,
    },
}

/// Runs a parsed command line and maps the outcome to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd { reference_grant } => {
            if reference_grant {
                print!("{}", crate::api::crd::reference_grant_crd_yaml());
            } else {
                print!("{}", crate::api::crd::canary_crd_yaml());
            }
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate::run(&files),
        Command::Analyze {
            input: Some(input),
            explain,
            fail_on_rollback,
            ..
        } => analyze::run(&input, explain, fail_on_rollback),
        Command::Analyze {
            prometheus,
            canary,
            since,
            lag,
            config,
            mesh,
            record,
            explain,
            fail_on_rollback,
            ..
        } => analyze_live::run(analyze_live::LiveOptions {
            prometheus: prometheus.expect("clap requires --input or --prometheus"),
            canary: canary.expect("clap requires --canary with --prometheus"),
            since: since.map(|d| d.0),
            lag: lag.0,
            config,
            mesh,
            record,
            explain,
            fail_on_rollback,
        }),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args),
        Command::Run { config } => operate::run_daemon(&config),
        Command::Status {
            target,
            watch,
            timeout,
            output,
        } => operate::status(&target, watch, timeout.map(|t| t.0), output),
        Command::List {
            all_namespaces,
            namespace,
            cluster,
        } => operate::list(all_namespaces, namespace.as_deref(), &cluster),
        Command::Promote { target } => operate::command(&target, crate::rollout::Verb::Promote),
        Command::Abort { target } => operate::command(&target, crate::rollout::Verb::Abort),
        Command::Resume { target } => operate::command(&target, crate::rollout::Verb::Resume),
    }
}

fn parse_mesh(s: &str) -> Result<MeshPreset, String> {
    match s {
        "istio" => Ok(MeshPreset::Istio),
        "envoy" => Ok(MeshPreset::Envoy),
        other => Err(format!(
            "\"{other}\" is not a mesh preset; use istio or envoy"
        )),
    }
}

//! The command line: one subcommand per job. Each subcommand parses its arguments here and
//! calls into the library; errors become a message on stderr and a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod operate;
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
    Crd,
    /// Evaluate one step from recorded counts (JSON), offline, as the daemon would.
    Analyze {
        /// The recorded counts and the analysis spec; `-` reads stdin.
        #[arg(long)]
        input: String,
        /// Say the decision in plain words instead of JSON.
        #[arg(long)]
        explain: bool,
    },
    /// Check Canary manifests and daemon config files without a cluster.
    Validate {
        /// YAML files: Canary manifests (several documents allowed) or a daemon config.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
        /// Keep showing every change until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
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
        Command::Crd => {
            print!("{}", crate::crd::canary_crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate::run(&files),
        Command::Analyze { input, explain } => analyze::run(&input, explain),
        Command::Run { config } => operate::run_daemon(&config),
        Command::Status { target, watch } => operate::status(&target, watch),
        Command::Promote { target } => operate::command(&target, crate::rollout::Verb::Promote),
        Command::Abort { target } => operate::command(&target, crate::rollout::Verb::Abort),
        Command::Resume { target } => operate::command(&target, crate::rollout::Verb::Resume),
    }
}

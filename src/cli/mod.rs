//! The command line: one subcommand per job. Each subcommand parses its arguments here and
//! calls into the library; errors become a message on stderr and a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
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
    }
}

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = canaryd::cli::Cli::parse();
    canaryd::cli::run(cli)
}

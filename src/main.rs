#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
    // Installed as `kubectl-canaryd`, the binary is a kubectl plugin: `kubectl canaryd list`.
    // Its help and errors then name the command as it was typed.
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut command = canaryd::cli::Cli::command();
    if invoked.as_deref() == Some("kubectl-canaryd") {
        command = command.bin_name("kubectl canaryd");
    }
    let cli =
        canaryd::cli::Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    canaryd::cli::run(cli)
}

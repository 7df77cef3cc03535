//! `canaryd validate FILE...`: the checks the daemon applies, run offline (for CI pipelines).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;

use crate::api::{validation, Canary};
use crate::config::Config;

pub fn run(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match check_file(file) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(problems) => {
                failed = true;
                problems.iter().for_each(|p| eprintln!("{p}"));
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// One line per valid object, or one line per problem.
pub fn check_file(path: &Path) -> Result<Vec<String>, Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(serde_yaml_ng::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{shown}: document {}: {e}", i + 1));
                continue;
            }
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_owned);
        match kind.as_deref() {
            Some("Canary") => match check_canary(value) {
                Ok(name) => ok.push(format!("{shown}: Canary {name} is valid")),
                Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{shown}: {e}"))),
            },
            // A manifest file holds other kinds beside the Canary (the VirtualService, a
            // Gateway, a ReferenceGrant): noted, not a failure.
            Some(other) => ok.push(format!(
                "{shown}: document {}: skipped kind {other} (canaryd validate checks Canaries and the daemon config)",
                i + 1
            )),
            None => {
                let yaml = serde_yaml_ng::to_string(&value).unwrap_or_default();
                match Config::parse(&yaml) {
                    Ok(_) => ok.push(format!("{shown}: daemon config is valid")),
                    Err((key, msg)) => problems.push(format!("{shown}: {key}: {msg}")),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}

fn check_canary(value: serde_yaml_ng::Value) -> Result<String, Vec<String>> {
    let canary: Canary = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        vec![format!("{path}: {}", e.into_inner())]
    })?;
    let namespace = canary
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = format!(
        "{namespace}/{}",
        canary.metadata.name.clone().unwrap_or_default()
    );
    validation::validate(&canary.spec, &namespace)
        .map(|()| name.clone())
        .map_err(|errs| {
            errs.into_iter()
                .map(|e| format!("Canary {name}: {e}"))
                .collect()
        })
}

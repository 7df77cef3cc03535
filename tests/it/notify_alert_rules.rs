//! The alert rules for canaryd itself (deploy/alerts/canaryd.rules.yaml, a symlink to the
//! chart's files/canaryd.rules.yaml), checked and unit-tested by the real `promtool` (Debian
//! package `prometheus`).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (install it with `apt-get install -y prometheus`)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_are_valid() {
    promtool(&["check", "rules", "canaryd.rules.yaml"]);
}

#[test]
fn the_rules_fire_when_they_should_and_only_then() {
    promtool(&["test", "rules", "canaryd.rules.test.yaml"]);
}

/// canaryd sends its rollback and pause alerts to Alertmanager itself; a rule of the same
/// name would raise each of them twice.
#[test]
fn no_rule_repeats_an_alert_canaryd_sends_itself() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts/canaryd.rules.yaml");
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for pushed in [
        canaryd::notify::messages::ROLLED_BACK,
        canaryd::notify::messages::PAUSED,
    ] {
        assert!(
            !names.contains(&pushed),
            "{pushed} is a rule too: {names:?}"
        );
    }
}

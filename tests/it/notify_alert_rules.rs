//! The alert rules for canaryd itself, checked and unit-tested by the real `promtool`
//! (Debian package `prometheus`).

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

//! The offline commands, run as a user runs them: the real binary, real files.

use std::process::Command;

fn canaryd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run canaryd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn crd_prints_the_committed_manifest() {
    let (code, out, _) = canaryd(&["crd"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds/canary.yaml"
    ))
    .unwrap();
    assert!(
        out == committed,
        "deploy/crds/canary.yaml is stale: regenerate with `cargo run -- crd > deploy/crds/canary.yaml`"
    );
}

#[test]
fn the_shipped_examples_validate() {
    let (code, out, err) = canaryd(&[
        "validate",
        "config/canary-flaskapp.yaml",
        "config/canaryd.yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Canary prod/flaskapp is valid"), "{out}");
    assert!(out.contains("daemon config is valid"), "{out}");

    // The example manifests hold other kinds too: each is noted and skipped, not a failure.
    let (code, out, err) = canaryd(&[
        "validate",
        "deploy/examples/canary.yaml",
        "deploy/examples/istio.yaml",
        "deploy/examples/referencegrant.yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("deploy/examples/canary.yaml: Canary prod/flaskapp is valid"),
        "{out}"
    );
    for kind in ["Gateway", "VirtualService", "ReferenceGrant"] {
        assert!(
            out.contains(&format!("skipped kind {kind} (canaryd validate checks")),
            "{out}"
        );
    }
}

#[test]
fn a_bad_canary_is_explained_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/canary-flaskapp.yaml"
    ))
    .unwrap()
    .replace("steps: [0, 30, 60, 100]", "steps: [0, 60, 30, 100]")
    .replace("slo: {maxErrorRate: 0.01, maxLatencyMs: {p99: 1000}}", "")
    .replace("alpha: 0.01", "alpha: 0.7");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = canaryd(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("spec.steps: holds stage at 100 %") && err.contains("unguardedFullLoad"),
        "{err}"
    );
    assert!(
        err.contains("spec.steps[2]: 30 does not exceed the step before it (60)"),
        "{err}"
    );
    assert!(err.contains("spec.analysis.alpha: is 0.7"), "{err}");
}

#[test]
fn a_misspelled_key_is_named_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: x, namespace: prod}\nspec:\n  \
         virtualService: {name: demoapp}\n  prod: {host: a, deployment: {name: a}}\n  \
         stage: {host: b, deployment: {name: b}}\n  analysis: {alpah: 0.01}\n",
    )
    .unwrap();
    let (code, _, err) = canaryd(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("spec.analysis.alpah: unknown field `alpah`"),
        "{err}"
    );
}

#[test]
fn validate_refuses_ten_thousand_checks_offline_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many-checks.yaml");
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/canary-flaskapp.yaml"
    ))
    .unwrap();
    let one =
        r#"    - {name: smoke, url: "http://{{ host }}/health", expectStatus: 200, count: 20}"#;
    assert!(seed.contains(one), "the seed's check line changed");
    let many: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"    - {{name: smoke-{i}, url: "http://{{{{ host }}}}/health", count: 10000}}"#
            )
        })
        .collect();
    std::fs::write(&path, seed.replace(one, &many.join("\n"))).unwrap();
    let (code, _, err) = canaryd(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("spec.checks: has 10000 items, more than the 20 allowed; list at most 20"),
        "{err}"
    );
    assert!(
        err.contains("spec.checks[0].count: is 10000, more than the 100 allowed"),
        "{err}"
    );
    assert!(
        err.lines().count() <= 25,
        "items beyond the bound are not reported one by one: {} lines",
        err.lines().count()
    );
}

#[test]
fn status_and_list_refuse_arguments_that_cannot_work() {
    let (code, _, err) = canaryd(&["status", "flaskapp", "-o", "yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'yaml'"), "{err}");
    assert!(err.contains("human") && err.contains("json"), "{err}");
    let (code, _, err) = canaryd(&["status", "flaskapp", "--timeout", "5m"]);
    assert_eq!(code, 2, "--timeout is for --watch");
    assert!(err.contains("--watch"), "{err}");
    let (code, _, err) = canaryd(&["status", "flaskapp", "--watch", "--timeout", "soon"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
    let (code, _, err) = canaryd(&["list", "-A", "-n", "prod"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn kubeconfig_and_context_are_the_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.kubeconfig");
    let missing = missing.to_str().unwrap();
    let (code, _, err) = canaryd(&["list", "--kubeconfig", missing]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("kubeconfig {missing}")), "{err}");
    // A watch that cannot follow the Canary at all has an exit code apart from the
    // rollout's outcomes (0 to 3).
    let (code, _, err) = canaryd(&["status", "flaskapp", "--watch", "--kubeconfig", missing]);
    assert_eq!(code, 4, "{err}");
    let kubeconfig = dir.path().join("lab.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: here, context: {cluster: c, user: u}}]\n\
         current-context: here\n",
    )
    .unwrap();
    let (code, _, err) = canaryd(&[
        "abort",
        "flaskapp",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--context",
        "elsewhere",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("elsewhere"), "{err}");
}

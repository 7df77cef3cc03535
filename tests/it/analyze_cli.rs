//! `canaryd analyze`: the offline evaluation users and tests run on recorded counts.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn analyze(input: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "--input", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn decision(input: &Value) -> Value {
    let out = analyze(&input.to_string(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn invalid(input: &str) -> String {
    let out = analyze(input, &[]);
    assert_eq!(out.status.code(), Some(2), "invalid input must exit 2");
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr).unwrap()
}

/// A recording of `looks` 30 s looks, counts cumulative since the step started, with
/// `rps` requests per second split 30/70 and the given per-request error probabilities.
fn recording(rps: f64, stage_err: f64, prod_err: f64, looks: u32) -> Value {
    let looks: Vec<Value> = (1..=looks)
        .map(|i| {
            let t = 30.0 * i as f64;
            let (ns, np) = ((0.3 * rps * t).round(), (0.7 * rps * t).round());
            let arm = |n: f64, p: f64| {
                json!({"requests": n, "errors": (n * p).round(),
                       "latency_buckets": [[100, (0.9 * n).round()], [250, (0.99 * n).round()], ["+Inf", n]]})
            };
            json!({"t": t, "stage": arm(ns, stage_err), "prod": arm(np, prod_err)})
        })
        .collect();
    json!({
        "analysis": {"alpha": 0.01, "metrics": [
            {"name": "errors", "kind": "errorRate", "margin": 1.5},
            {"name": "latency", "kind": "latency", "thresholdsMs": [250], "margin": 1.5}]},
        "minDuration": "2m",
        "looks": looks,
    })
}

const EXAMPLE: &str = r#"{
  "analysis": { "alpha": 0.01, "metrics": [ {"name": "errors", "kind": "errorRate", "margin": 1.5},
                {"name": "latency", "kind": "latency", "thresholdsMs": [250], "margin": 1.5} ] },
  "minDuration": "2m",
  "looks": [
    { "t": 30,
      "stage": { "requests": 452, "errors": 3, "latency_buckets": [[0.5, 0], [1, 0], [250, 446], ["+Inf", 452]] },
      "prod":  { "requests": 1048, "errors": 9, "latency_buckets": [[0.5, 0], [1, 0], [250, 1037], ["+Inf", 1048]] } }
  ]
}"#;

#[test]
fn one_early_look_is_not_enough_to_decide() {
    let out = decision(&serde_json::from_str(EXAMPLE).unwrap());
    assert_eq!(out["decision"], "continue");
    assert!(out["decided_at"].is_null());
    let metrics = out["looks"][0]["metrics"].as_array().unwrap();
    let names: Vec<&str> = metrics
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["errors", "latency@250"]);
    for m in metrics {
        assert!(m["e_value"].as_f64().unwrap() < 200.0);
        assert!(m["ratio_lower"].as_f64().unwrap() < 1.0);
        // Unbounded while the rollout's first look is held back for the second.
        assert!(m["ratio_upper"].as_f64().is_none_or(|u| u > 1.5));
    }
}

#[test]
fn a_tripled_error_rate_rolls_back_and_stops_at_the_deciding_look() {
    let out = decision(&recording(50.0, 0.03, 0.01, 60));
    assert_eq!(out["decision"], "rollback");
    let at = out["decided_at"].as_f64().unwrap();
    let looks = out["looks"].as_array().unwrap();
    assert_eq!(looks.last().unwrap()["t"].as_f64().unwrap(), at);
    assert!(
        at <= 600.0,
        "3x at 50 req/s must be caught within 10 minutes, took {at} s"
    );
    let errors = &looks.last().unwrap()["metrics"][0];
    assert_eq!(errors["verdict"], "rollback");
    assert!(errors["e_value"].as_f64().unwrap() >= 200.0);
    assert!(out["reason"].as_str().unwrap().contains("errors"));
}

#[test]
fn a_healthy_step_advances_but_not_before_the_minimum_duration() {
    let out = decision(&recording(500.0, 0.01, 0.01, 60));
    assert_eq!(out["decision"], "advance", "{}", out["reason"]);
    let at = out["decided_at"].as_f64().unwrap();
    assert!(at >= 120.0, "advanced at {at} s, before minDuration 2m");
    let last = out["looks"].as_array().unwrap().last().unwrap().clone();
    for m in last["metrics"].as_array().unwrap() {
        assert!(m["ratio_upper"].as_f64().unwrap() <= 1.5);
    }
}

#[test]
fn explain_says_the_decision_in_words() {
    let out = analyze(&recording(50.0, 0.05, 0.01, 60).to_string(), &["--explain"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Decision: rollback at t="), "{text}");
    assert!(
        text.contains("stage is worse than prod on errors"),
        "{text}"
    );
}

#[test]
fn invalid_input_exits_2_and_names_the_look_and_field() {
    let mut down = recording(50.0, 0.01, 0.01, 3);
    down["looks"][1]["stage"]["errors"] = json!(0);
    let msg = invalid(&down.to_string());
    assert!(
        msg.contains("looks[1] (t=60): stage.errors went down"),
        "{msg}"
    );

    let mut inf = recording(50.0, 0.01, 0.01, 2);
    inf["looks"][0]["prod"]["latency_buckets"][2][1] = json!(5000);
    let msg = invalid(&inf.to_string());
    assert!(msg.contains("looks[0] (t=30)"), "{msg}");
    assert!(
        msg.contains("prod.latency_buckets: the +Inf bucket counts 5000"),
        "{msg}"
    );

    let mut neg = recording(50.0, 0.01, 0.01, 1);
    neg["looks"][0]["prod"]["requests"] = json!(-1);
    assert!(invalid(&neg.to_string()).contains("prod.requests is -1"));

    let mut alpha = recording(50.0, 0.01, 0.01, 1);
    alpha["analysis"]["alpha"] = json!(0.7);
    assert!(invalid(&alpha.to_string()).contains("analysis.alpha: is 0.7"));

    let mut typo = recording(50.0, 0.01, 0.01, 1);
    typo["looks"][0]["stage"]["erors"] = json!(1);
    assert!(invalid(&typo.to_string()).contains("looks[0].stage"));

    assert!(invalid("{\"looks\": []}").contains("looks is empty"));
    assert!(invalid("not json").contains("expected"));
}

#[test]
fn no_stage_traffic_never_decides() {
    let mut rec = recording(50.0, 0.01, 0.01, 40);
    for look in rec["looks"].as_array_mut().unwrap() {
        look["stage"] = json!({"requests": 0, "errors": 0});
    }
    let out = decision(&rec);
    assert_eq!(out["decision"], "continue");
    assert_eq!(out["looks"].as_array().unwrap().len(), 40);
}

#[test]
fn fail_on_rollback_fails_a_ci_gate_on_a_rollback_decision_only() {
    let rollback = recording(50.0, 0.03, 0.01, 60).to_string();
    let advance = recording(500.0, 0.01, 0.01, 60).to_string();
    // Without the flag every decision exits 0, a rollback too.
    assert_eq!(analyze(&rollback, &[]).status.code(), Some(0));
    let gated = analyze(&rollback, &["--fail-on-rollback"]);
    assert_eq!(gated.status.code(), Some(1));
    let out: Value = serde_json::from_slice(&gated.stdout).expect("the decision is printed");
    assert_eq!(out["decision"], "rollback");
    let explained = analyze(&rollback, &["--fail-on-rollback", "--explain"]);
    assert_eq!(explained.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&explained.stdout).starts_with("Decision: rollback"));
    // Advance, and no decision yet, pass the gate.
    assert_eq!(
        analyze(&advance, &["--fail-on-rollback"]).status.code(),
        Some(0)
    );
    assert_eq!(
        analyze(EXAMPLE, &["--fail-on-rollback"]).status.code(),
        Some(0)
    );
    // Input that cannot be read stays exit 2.
    assert_eq!(
        analyze("not json", &["--fail-on-rollback"]).status.code(),
        Some(2)
    );
}

/// The live form: stage at 25 % 5xx against prod's 0.5 %, read from the real Prometheus,
/// decided as a rollback, exits 1 with the flag.
#[tokio::test]
async fn fail_on_rollback_fails_the_live_analysis_on_a_rollback() {
    use canaryd_lab::prometheus::{LabPrometheus, ScrapeTarget};
    use std::time::{Duration, Instant};

    let started = Instant::now();
    let exporter = crate::telemetry_common::Exporter::start_fn(move || {
        let secs = started.elapsed().as_secs_f64();
        let mut out = String::new();
        for (host, rps, err) in [
            ("flaskapp.stage.svc.cluster.local", 40.0, 0.25),
            ("flaskapp.prod.svc.cluster.local", 60.0, 0.005),
        ] {
            for (code, share) in [(200, 1.0 - err), (503, err)] {
                out += &format!(
                    "istio_requests_total{{reporter=\"destination\",destination_service=\"{host}\",response_code=\"{code}\"}} {}\n",
                    (rps * share * secs).round()
                );
            }
        }
        out
    })
    .await;
    let prometheus = LabPrometheus::start(
        &[ScrapeTarget {
            job: "mesh".into(),
            address: exporter.addr,
        }],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary.yaml");
    std::fs::write(
        &canary,
        "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\nmetadata: {name: flaskapp, namespace: prod}\n\
         spec:\n  virtualService: {name: demoapp}\n  \
         prod: {host: flaskapp.prod.svc.cluster.local, deployment: {name: flaskapp}}\n  \
         stage: {host: flaskapp.stage.svc.cluster.local, deployment: {name: flaskapp, namespace: stage}}\n  \
         analysis:\n    interval: 2s\n    metrics: [{name: errors, kind: errorRate}]\n",
    )
    .unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "--prometheus", &prometheus.url(), "--canary"])
        .arg(&canary)
        .args(["--lag", "1s", "--fail-on-rollback"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("a decision within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(last["decision"], "rollback", "{stdout}");
}

/// Low traffic, stage as good as prod: nothing is proven within the step's maximum, so the
/// policy at the maximum decides, and says what the step could have caught.
#[test]
fn at_the_step_maximum_the_policy_decides_and_reports_the_detectable_ratio() {
    let mut input = recording(6.0, 0.01, 0.01, 40);
    let undecided = decision(&input);
    assert_eq!(undecided["decision"], "continue", "{undecided}");
    assert!(
        undecided.get("at_max").is_none(),
        "without maxDuration the output is unchanged"
    );

    input["maxDuration"] = json!("15m");
    let out = decision(&input);
    assert_eq!(out["decision"], "advance", "{out}");
    assert_eq!(out["at_max"], true);
    assert_eq!(out["decided_at"], 900.0, "the first look at or past 15m");
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "not proven worse within 15m; with 80 % power this step would have caught errors at"
        ),
        "{reason}"
    );
    let last = out["looks"].as_array().unwrap().last().unwrap();
    let errors = &last["metrics"][0];
    assert_eq!(errors["name"], "errors");
    let detectable = errors["detectable_ratio"]
        .as_f64()
        .expect("a detectable ratio");
    assert!(detectable > 1.5 && detectable <= 16.0, "{detectable}");
    assert!(reason.contains("latency (slower than 250 ms)"), "{reason}");

    // Asking for the power to catch 1.5x, which this little traffic cannot give: the step
    // keeps comparing for extendBy, then pauses.
    input["analysis"]["atMax"] = json!({"detectableRatio": 1.5, "extendBy": "3m"});
    let out = decision(&input);
    assert_eq!(out["decision"], "pause", "{out}");
    assert_eq!(out["at_max"], true);
    assert_eq!(out["decided_at"], 1080.0, "15m plus 3m");
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("a regression of 1.5x (detectableRatio) would not have been caught"),
        "{out}"
    );

    input["analysis"]["atMax"] = json!({"action": "pause"});
    let out = decision(&input);
    assert_eq!(out["decision"], "pause", "{out}");
    assert_eq!(out["reason"], "no decision within 15m (atMax: pause)");
}

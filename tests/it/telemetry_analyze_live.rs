//! `canaryd analyze --prometheus URL --canary FILE`: live looks against the real Prometheus
//! until a decision.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::telemetry_common::{test_client, Exporter};
use canaryd_lab::prometheus::{LabPrometheus, ScrapeTarget};
use jiff::Timestamp;
use serde_json::Value;

const CANARY: &str = r#"
apiVersion: canaryd.dev/v1alpha1
kind: Canary
metadata: {name: flaskapp, namespace: prod}
spec:
  virtualService: {name: demoapp}
  prod: {host: flaskapp.prod.svc.cluster.local, deployment: {name: flaskapp}}
  stage: {host: flaskapp.stage.svc.cluster.local, deployment: {name: flaskapp, namespace: stage}}
  analysis:
    interval: 2s
    metrics:
      - {name: errors, kind: errorRate}
      - {name: latency, kind: latency, thresholdsMs: [100]}
"#;

/// Istio metrics after `secs` of traffic: stage 40 rps with 25 % 5xx, prod 60 rps with
/// 0.5 % 5xx; 90 % of requests under 100 ms. Histograms per response code, as Istio's are.
fn traffic(secs: f64) -> String {
    let mut out = String::new();
    let arms = [
        ("flaskapp.stage.svc.cluster.local", 40.0, 0.25),
        ("flaskapp.prod.svc.cluster.local", 60.0, 0.005),
    ];
    for (host, rps, err) in arms {
        for (code, share) in [(200, 1.0 - err), (503, err)] {
            let n = (rps * share * secs).round();
            let labels = format!(
                "reporter=\"destination\",destination_service=\"{host}\",response_code=\"{code}\""
            );
            let _ = writeln!(out, "istio_requests_total{{{labels}}} {n}");
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"100\"}} {}",
                (0.9 * n).round()
            );
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {n}"
            );
        }
    }
    out
}

#[tokio::test]
async fn analyze_against_live_prometheus_rolls_back_a_worse_stage() {
    let started = Instant::now();
    let exporter = Exporter::start_fn(move || traffic(started.elapsed().as_secs_f64())).await;
    let prometheus = LabPrometheus::start(
        &[ScrapeTarget {
            job: "mesh".into(),
            address: exporter.addr,
        }],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    // Wait until every series has 4 s of scrapes, so the 2 s windows `--since` replays are
    // fully covered (Prometheus's first scrape comes seconds after it starts).
    let client = test_client(&prometheus.url(), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .instant(
            "min(count_over_time(istio_requests_total[1h])) >= 9",
            Timestamp::now(),
        )
        .await
        .map_or(true, |s| s.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the mesh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary.yaml");
    std::fs::write(&canary, CANARY).unwrap();

    let recorded = dir.path().join("recorded.json");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "--prometheus", &prometheus.url(), "--canary"])
        .arg(&canary)
        .args(["--since", "2s", "--lag", "1s", "--record"])
        .arg(&recorded)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("a decision within 120 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Traffic (requests and 5xx) and latency, both arms in each.
    assert!(stderr.contains("2 queries per look"), "{stderr}");
    assert!(
        stderr.contains("istio_requests_total{reporter=\"destination\""),
        "{stderr}"
    );

    let looks: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON look per line"))
        .collect();
    let (last, before) = looks.split_last().expect("at least one look");
    assert_eq!(last["decision"], "rollback", "{looks:#?}\n{stderr}");
    assert!(before.iter().all(|l| l["decision"] == "continue"));
    // Consecutive windows, each one evaluation interval after the one before.
    let ends: Vec<Timestamp> = looks
        .iter()
        .map(|l| l["window_end"].as_str().unwrap().parse().unwrap())
        .collect();
    for pair in ends.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]),
            jiff::SignedDuration::from_secs(2),
            "{ends:?}"
        );
    }
    // What was read is the traffic the mesh served: about 80 stage and 120 prod requests per
    // 2 s window, a quarter of stage's 5xx, and the latency histogram alongside.
    for look in &looks {
        let (stage, prod) = (&look["counts"]["stage"], &look["counts"]["prod"]);
        let requests = stage["requests"].as_f64().unwrap();
        assert!((70.0..=90.0).contains(&requests), "{stage}");
        assert!(
            (105.0..=135.0).contains(&prod["requests"].as_f64().unwrap()),
            "{prod}"
        );
        let errors = stage["errors"].as_f64().unwrap();
        assert!((errors / requests - 0.25).abs() < 0.05, "{stage}");
        assert_eq!(stage["latency_buckets"][1][0], "+Inf", "{stage}");
    }

    // The recorded looks replay offline to the same decisions and evidence, look by look.
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "--input"])
        .arg(&recorded)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let offline: Value = serde_json::from_slice(&replay.stdout).unwrap();
    let replayed = offline["looks"].as_array().unwrap();
    assert_eq!(replayed.len(), looks.len(), "{offline:#}");
    for (live, again) in looks.iter().zip(replayed) {
        for key in ["t", "decision", "metrics"] {
            assert_eq!(live[key], again[key], "{key}: {live} vs {again}");
        }
    }

    // A manifest as `kubectl get -o yaml` shows it mid-step: the step is analysed from its
    // status.stepStartedAt, and `--explain` says the decision in words.
    let started_at = Timestamp::now() - jiff::SignedDuration::from_secs(3);
    std::fs::write(
        &canary,
        format!("{CANARY}status: {{phase: Progressing, step: 1, stageWeight: 40, stepStartedAt: \"{started_at}\"}}\n"),
    )
    .unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "--prometheus", &prometheus.url(), "--canary"])
        .arg(&canary)
        .args(["--lag", "1s", "--explain"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("a decision within 120 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("step 1 analysed from {started_at}")),
        "{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let decision = stdout.lines().rfind(|l| l.starts_with("t=")).unwrap();
    assert!(decision.contains(": rollback: "), "{stdout}");
    assert!(stdout.contains("  - errors: rollback;"), "{stdout}");
}

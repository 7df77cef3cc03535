//! `canaryd status --watch` as a pipeline runs it right after `helm upgrade` on stage: the real
//! binary, pointed at the lab with `--kubeconfig`, exits with the outcome of the rollout of the
//! revision stage runs now (0 Succeeded or nothing to roll out, 1 RolledBack, 2 Paused or an
//! invalid spec, 3 past `--timeout`), never with the end of the previous rollout; and
//! `canaryd list` shows the Canary.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use canaryd::api::{Canary, Phase};
use canaryd_lab::harness::{Daemon, Lab, LabOptions};
use serde_json::Value;

use crate::e2e_lab::ONE_AT_A_TIME;

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
/// A whole rollout in the lab takes about a minute; the watch itself is given 5m.
const RUN_TIMEOUT: Duration = Duration::from_secs(360);

async fn lab() -> Lab {
    Lab::start(LabOptions {
        requests_per_second: 4000.0,
        alertmanager: false,
        ..Default::default()
    })
    .await
    .expect("the lab starts")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `canaryd ARGS --kubeconfig KUBECONFIG` to its end, with no `KUBECONFIG` in its
/// environment: only the flag can lead it to the lab.
async fn canaryd(kubeconfig: &Path, args: &[&str]) -> Run {
    let run = tokio::process::Command::new(BINARY)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("canaryd {args:?} still runs after {RUN_TIMEOUT:?}"))
        .expect("canaryd runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What the pipeline's step runs after its `helm upgrade`.
const WATCH: [&str; 7] = [
    "status",
    "flaskapp",
    "-n",
    "prod",
    "--watch",
    "--timeout",
    "5m",
];

async fn stored(lab: &Lab) -> Canary {
    lab.canaries().get("flaskapp").await.unwrap()
}

fn status_of(c: &Canary) -> (Phase, Option<String>) {
    let s = c.status.clone().unwrap_or_default();
    (s.phase, s.stage_revision)
}

fn with_log(run: &Run, daemon: &Daemon) -> String {
    format!("{run}\ncanaryd run's log:\n{}", daemon.log_tail())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_waits_for_the_release_it_just_made_not_the_previous_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = lab().await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let kubeconfig = lab.kubeconfig();

    // Stage runs what prod runs: nothing to wait for, once canaryd has looked.
    let run = canaryd(kubeconfig, &WATCH).await;
    assert_eq!(run.code, Some(0), "{}", with_log(&run, &daemon));
    assert!(
        run.last_line()
            .contains("nothing to roll out: stage and prod both run demoapp:v1"),
        "{run}"
    );

    // A healthy release: the watch follows its rollout to the end and exits 0.
    lab.release("demoapp:v2").await.unwrap();
    let run = canaryd(kubeconfig, &WATCH).await;
    assert_eq!(run.code, Some(0), "{}", with_log(&run, &daemon));
    assert!(
        run.last_line()
            .contains("flaskapp: Succeeded: prod runs stage's revision demoapp:v2"),
        "{run}"
    );
    assert!(
        run.stdout.contains(" Progressing "),
        "the lines of the rollout come first: {run}"
    );
    assert_eq!(
        status_of(&stored(&lab).await),
        (Phase::Succeeded, Some("demoapp:v2".into()))
    );
    assert_eq!(lab.prod_image().await.unwrap(), "demoapp:v2");

    // A bad release right after: the Canary still says Succeeded (for v2) when the watch
    // starts, and the watch waits for v3's own end: rolled back, exit 1.
    lab.release("demoapp:v3").await.unwrap();
    let run = canaryd(kubeconfig, &WATCH).await;
    assert_eq!(run.code, Some(1), "{}", with_log(&run, &daemon));
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains(" Succeeded "),
        "the watch began on the previous rollout's end (the race it must not fall for): {run}"
    );
    assert!(
        run.last_line()
            .contains("flaskapp: RolledBack: revision demoapp:v3: "),
        "{run}"
    );
    assert_eq!(
        status_of(&stored(&lab).await),
        (Phase::RolledBack, Some("demoapp:v3".into()))
    );
    assert_eq!(lab.prod_image().await.unwrap(), "demoapp:v2");

    // Asked again, the same release is still a rollback: it is not rolled out again.
    let run = canaryd(kubeconfig, &WATCH).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.stdout.lines().count(), 2, "a line, the summary: {run}");

    // The list of every namespace shows it, with both revisions.
    let run = canaryd(kubeconfig, &["list", "-A", "--context", "canaryd-lab"]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "STEP",
            "STAGE%",
            "STAGE-REVISION",
            "PROD-REVISION",
            "SINCE"
        ],
        "{run}"
    );
    let row = rows
        .iter()
        .find(|r| r[..2] == ["prod", "flaskapp"])
        .unwrap_or_else(|| panic!("no row for prod/flaskapp: {run}"));
    assert_eq!(
        (row[2], row[4], row[5], row[6]),
        ("RolledBack", "0", "demoapp:v3", "demoapp:v2"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_past_its_timeout_exits_3_and_an_invalid_spec_exits_2() {
    let _one = ONE_AT_A_TIME.lock().await;
    let lab = lab().await;
    let daemon = lab.spawn_daemon(BINARY.as_ref(), "canaryd-0").unwrap();
    let kubeconfig = lab.kubeconfig();
    lab.release("demoapp:v2").await.unwrap();
    if let Err(e) = lab
        .follow(
            RUN_TIMEOUT,
            |_| {},
            |c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Progressing)
            },
        )
        .await
    {
        panic!("{}", daemon.explain(e));
    }

    // Mid-rollout, two seconds are not enough (a step lasts at least 4): exit 3, said on
    // stderr; stdout is the Canary as stored, one JSON object per line.
    let run = canaryd(
        kubeconfig,
        &[
            "status",
            "flaskapp",
            "-n",
            "prod",
            "--watch",
            "--timeout",
            "2s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(3), "{run}");
    assert!(
        run.stderr
            .contains("canaryd: timed out after 2s: the rollout of stage revision "),
        "{run}"
    );
    let objects: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!objects.is_empty(), "{run}");
    for o in &objects {
        assert_eq!(
            (&o["kind"], &o["metadata"]["name"]),
            (&"Canary".into(), &"flaskapp".into())
        );
        assert_eq!(o["status"]["stageRevision"], "demoapp:v2", "{o}");
    }

    // Without --watch, -o json is the one stored object.
    let run = canaryd(
        kubeconfig,
        &["status", "flaskapp", "-n", "prod", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let object: Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(object["spec"]["stage"]["deployment"]["namespace"], "stage");

    // A spec canaryd refuses (steps that go down) ends the watch with exit 2, naming why.
    lab.edit_canary(serde_json::json!({"steps": [0, 60, 30, 100]}))
        .await
        .unwrap();
    let run = canaryd(kubeconfig, &WATCH).await;
    assert_eq!(run.code, Some(2), "{}", with_log(&run, &daemon));
    assert!(
        run.last_line()
            .contains("flaskapp: nothing is rolled out: ")
            && run.last_line().contains("spec.steps"),
        "{run}"
    );
}

//! The real `kubectl` against the lab's API server, through the kubeconfig the server writes:
//! apply, get with server-side printer columns, get -w, explain, set image, scale, patch,
//! events, describe, server-side apply and delete, as a person runs them during the demo.

use std::process::{Output, Stdio};
use std::time::Duration;

use canaryd_api::Canary;
use canaryd_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: flaskapp
  namespace: prod
  labels: {app: flaskapp}
spec:
  replicas: 2
  selector:
    matchLabels: {app: flaskapp}
  template:
    metadata:
      labels: {app: flaskapp}
    spec:
      containers:
      - name: app
        image: flaskapp:1
        ports:
        - containerPort: 8080
      - name: sidecar
        image: proxy:1
---
apiVersion: v1
kind: Service
metadata:
  name: flaskapp
  namespace: prod
spec:
  selector: {app: flaskapp}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: canaryd.dev/v1alpha1
kind: Canary
metadata:
  name: flaskapp
  namespace: prod
spec:
  virtualService: {name: demoapp}
  prod: {host: flaskapp.prod.svc.cluster.local, deployment: {name: flaskapp, namespace: prod}}
  stage: {host: flaskapp.stage.svc.cluster.local, deployment: {name: flaskapp, namespace: stage}}
  steps: [0, 30, 60, 100]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: demoapp
  namespace: prod
spec:
  hosts: [flaskapp.example.com]
  http:
  - name: split
    route:
    - destination: {host: flaskapp.prod.svc.cluster.local}
      weight: 100
    - destination: {host: flaskapp.stage.svc.cluster.local}
      weight: 0
"#;

struct Lab {
    server: ApiServerHandle,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn start() -> Lab {
        let server = ApiServer::start(ApiServerOptions {
            install_canary_crd: true,
            install_istio_crds: true,
            namespaces: vec!["default".into(), "prod".into()],
            ..ApiServerOptions::default()
        })
        .await
        .expect("the lab API server starts");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.yaml"), MANIFEST).unwrap();
        Lab { server, dir }
    }

    fn manifest(&self) -> String {
        self.dir.path().join("app.yaml").display().to_string()
    }

    fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl to completion; panics with its output if it does not exit as `expect_ok`.
    async fn run(&self, args: &[&str], expect_ok: bool) -> Output {
        let output = tokio::time::timeout(KUBECTL_TIMEOUT, self.kubectl().args(args).output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl is installed (tests/setup.sh installs it)");
        assert_eq!(
            output.status.success(),
            expect_ok,
            "kubectl {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    async fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8(self.run(args, true).await.stdout).unwrap()
    }

    fn client(&self) -> kube::Client {
        self.server.client().unwrap()
    }
}

fn header_columns(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_sets_image_patches_and_deletes() {
    let lab = Lab::start().await;
    let manifest = lab.manifest();
    lab.run(&["create", "namespace", "stage"], true).await;
    lab.run(
        &[
            "create",
            "secret",
            "generic",
            "signing",
            "-n",
            "stage",
            "--from-literal=key=s3cret",
        ],
        true,
    )
    .await;
    let key = lab
        .stdout(&[
            "get",
            "secret",
            "signing",
            "-n",
            "stage",
            "-o",
            "jsonpath={.type} {.data.key}",
        ])
        .await;
    assert_eq!(key, "Opaque czNjcmV0");
    let applied = lab.stdout(&["apply", "-f", &manifest]).await;
    assert!(
        applied.contains("canary.canaryd.dev/flaskapp created"),
        "{applied}"
    );
    assert!(
        applied.contains("deployment.apps/flaskapp created"),
        "{applied}"
    );
    let again = lab.stdout(&["apply", "-f", &manifest]).await;
    assert!(
        again.contains("canary.canaryd.dev/flaskapp unchanged"),
        "{again}"
    );

    let canaries: Api<Canary> = Api::namespaced(lab.client(), "prod");
    let status = json!({"status": {"phase": "Progressing", "step": 1, "stageWeight": 30}});
    canaries
        .patch_status("flaskapp", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let table = lab.stdout(&["get", "canaries", "-n", "prod"]).await;
    assert_eq!(
        header_columns(&table),
        ["NAME", "PHASE", "STEP", "STAGE WEIGHT", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["flaskapp", "Progressing", "1", "30"]);
    let explained = lab.stdout(&["explain", "canary.spec.steps"]).await;
    assert!(explained.contains("Stage traffic weight"), "{explained}");
    let deployments_table = lab.stdout(&["get", "deploy", "-n", "prod"]).await;
    assert_eq!(
        header_columns(&deployments_table),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );

    lab.run(
        &[
            "set",
            "image",
            "deployment/flaskapp",
            "app=flaskapp:2",
            "-n",
            "prod",
        ],
        true,
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(lab.client(), "prod");
    let deployment = deployments.get("flaskapp").await.unwrap();
    let containers = deployment.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers[0].image.as_deref(), Some("flaskapp:2"));
    assert_eq!(
        containers[0].ports.as_ref().unwrap()[0].container_port,
        8080
    );
    assert_eq!(containers[1].image.as_deref(), Some("proxy:1"));
    assert_eq!(deployment.metadata.generation, Some(2));

    lab.run(
        &[
            "patch",
            "canary",
            "flaskapp",
            "-n",
            "prod",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"steps":[0,50,100]}}"#,
        ],
        true,
    )
    .await;
    assert_eq!(
        canaries.get("flaskapp").await.unwrap().spec.steps,
        vec![0, 50, 100]
    );
    lab.run(
        &[
            "patch",
            "deployment",
            "flaskapp",
            "-n",
            "prod",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
        true,
    )
    .await;
    lab.run(
        &["scale", "deployment/flaskapp", "--replicas=4", "-n", "prod"],
        true,
    )
    .await;
    let scaled = deployments.get("flaskapp").await.unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(4));
    let guarded = r#"[{"op":"test","path":"/spec/http/0/route/0/weight","value":50}]"#;
    lab.run(
        &[
            "patch", "vs", "demoapp", "-n", "prod", "--type", "json", "-p", guarded,
        ],
        false,
    )
    .await;
    let invalid = lab
        .run(
            &[
                "patch",
                "canary",
                "flaskapp",
                "-n",
                "prod",
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"steps":[0,150]}}"#,
            ],
            false,
        )
        .await;
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(stderr.contains("spec.steps[1]"), "{stderr}");

    let recorder = Recorder::new(lab.client(), "canaryd".into());
    let rollback = Event {
        type_: EventType::Warning,
        reason: "RolledBack".into(),
        note: Some("stage is worse than prod".into()),
        action: "Rollback".into(),
        secondary: None,
    };
    let flaskapp = canaries.get("flaskapp").await.unwrap();
    recorder
        .publish(&rollback, &flaskapp.object_ref(&()))
        .await
        .unwrap();
    let events = lab.stdout(&["get", "events", "-n", "prod"]).await;
    assert_eq!(
        header_columns(&events),
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        events.contains("canary/flaskapp   stage is worse than prod"),
        "{events}"
    );
    let described = lab
        .stdout(&["describe", "canary", "flaskapp", "-n", "prod"])
        .await;
    assert!(described.contains("RolledBack"), "{described}");

    lab.run(&["delete", "-f", &manifest], true).await;
    let empty = lab
        .run(&["get", "canaries,deployments", "-n", "prod"], true)
        .await;
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found"),
        "{empty:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_reports_conflicts_and_forces() {
    let lab = Lab::start().await;
    let manifest = lab.manifest();
    let applied = lab
        .stdout(&["apply", "--server-side", "-f", &manifest])
        .await;
    assert!(
        applied.contains("canary.canaryd.dev/flaskapp serverside-applied"),
        "{applied}"
    );
    lab.run(
        &[
            "set",
            "image",
            "deployment/flaskapp",
            "app=flaskapp:2",
            "-n",
            "prod",
        ],
        true,
    )
    .await;
    let conflict = lab
        .run(&["apply", "--server-side", "-f", &manifest], false)
        .await;
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(stderr.contains("conflict with \"kubectl-set\""), "{stderr}");
    lab.run(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &manifest,
        ],
        true,
    )
    .await;
    let image = lab
        .stdout(&[
            "get",
            "deploy",
            "flaskapp",
            "-n",
            "prod",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image, "flaskapp:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_a_row_for_each_change() {
    let lab = Lab::start().await;
    lab.run(&["apply", "-f", &lab.manifest()], true).await;
    let mut watch = lab
        .kubectl()
        .args(["get", "canaries", "-n", "prod", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl is installed");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(KUBECTL_TIMEOUT, lines.next_line())
            .await
            .expect("kubectl prints a line")
            .unwrap()
            .expect("kubectl is still watching")
    };
    let header = next_line().await;
    assert!(
        header.starts_with("NAME") && header.contains("STAGE WEIGHT"),
        "{header}"
    );
    let first = next_line().await;
    assert!(first.starts_with("flaskapp"), "{first}");

    let canaries: Api<Canary> = Api::namespaced(lab.client(), "prod");
    let status = json!({"status": {"phase": "Testing", "step": 0, "stageWeight": 0}});
    canaries
        .patch_status("flaskapp", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let changed = next_line().await;
    let cells: Vec<&str> = changed.split_whitespace().collect();
    assert_eq!(cells[..4], ["flaskapp", "Testing", "0", "0"], "{changed}");
    watch.kill().await.unwrap();
}

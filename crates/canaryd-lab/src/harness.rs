//! The whole lab in one place, for `canaryd demo` and the end-to-end tests: the API server
//! with the seed's objects, simulated Deployment rollouts, the simulated mesh and its
//! traffic, the real Prometheus scraping it, and any number of real `canaryd run` processes
//! pointed at it through a kubeconfig. Time is compressed by `speed`; the decision logic is
//! the same as in a cluster. Each daemon gets a kubeconfig of its own whose bearer token is
//! its name, so the API server's write log ([`Lab::write_log`], also `writes.jsonl` in the
//! lab's directory) tells the replicas apart; [`Daemon`] can be killed, stopped and
//! continued, for fault injection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;

use super::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions, WriteRecord};
use super::mesh_server::{AppTraffic, Mesh};
use super::prometheus::{LabPrometheus, ScrapeTarget};
use super::scenario::BehaviourTable;
use canaryd_api::{Canary, HumanDuration};

/// The seed's app: namespaces, Deployments and Services for flaskapp v1 in prod and stage,
/// the Gateway and the VirtualService demoapp at prod 100 / stage 0.
pub const SEED: &str = include_str!("seed.yaml");

/// Where the lab's Lease lives (the daemons' leader election).
pub const LEASE_NAMESPACE: &str = "canaryd-system";

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// How many times faster than real time the rollout runs: intervals and durations are
    /// divided by it.
    pub speed: u32,
    /// Requests per second the mesh sends to the app.
    pub requests_per_second: f64,
    /// How long a changed Deployment takes to become available.
    pub rollout_delay: Duration,
    pub scrape_interval: Duration,
    /// Seed of the simulated traffic: the same seed sends the same requests.
    pub seed: u64,
    /// Also start the real Alertmanager (when installed) and notify it of rollbacks: the
    /// daemon's config lists it as notifier `lab`, and the Canary routes its `RolledBack`
    /// and `Paused` events there.
    pub alertmanager: bool,
    /// Give the Canary the lab's HTTP checks ([`lab_checks`], against the mesh's app pages
    /// on loopback) and let the daemon reach them (see [`Lab::daemon_config_with`]). Off,
    /// the Canary has no checks and the daemon keeps the product's egress defaults.
    pub checks: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            speed: 30,
            requests_per_second: 2000.0,
            rollout_delay: Duration::from_secs(2),
            scrape_interval: Duration::from_secs(1),
            seed: jiff::Timestamp::now().as_nanosecond() as u64,
            alertmanager: true,
            checks: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("lab: {what}: {message}")]
pub struct LabError {
    pub what: &'static str,
    pub message: String,
}

fn fail(what: &'static str) -> impl FnOnce(String) -> LabError {
    move |message| LabError { what, message }
}

pub struct Lab {
    pub api: ApiServerHandle,
    pub client: Client,
    pub mesh: Mesh,
    pub prometheus: LabPrometheus,
    /// The real Alertmanager, when asked for and installed.
    pub alertmanager: Option<super::alertmanager::LabAlertmanager>,
    pub dir: tempfile::TempDir,
    pub options: LabOptions,
    /// The admin port of the first daemon started, which Prometheus scrapes as job `canaryd`.
    pub admin_port: u16,
    admin_taken: std::sync::atomic::AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The seed's Canary with durations divided by `speed` (never below what 1 s scrapes allow:
/// looks of at least 4 scrape intervals).
pub fn lab_canary(speed: u32) -> Canary {
    let speed = u64::from(speed.max(1));
    let scaled = |secs: u64, floor: u64| HumanDuration::from_secs((secs / speed).max(floor));
    let interval = scaled(60, 4);
    let mut canary: Canary = serde_yaml_ng::from_str(
        r#"
apiVersion: canaryd.dev/v1alpha1
kind: Canary
metadata: {name: flaskapp, namespace: prod}
spec:
  virtualService: {name: demoapp, namespace: prod, route: primary}
  prod:  {host: flaskapp.prod.svc.cluster.local,  deployment: {namespace: prod,  name: flaskapp}}
  stage: {host: flaskapp.stage.svc.cluster.local, deployment: {namespace: stage, name: flaskapp}}
  steps: [0, 30, 60, 100]
  analysis:
    alpha: 0.01
    metrics:
      - {name: errors,  kind: errorRate, margin: 1.5}
      - {name: latency, kind: latency, thresholdsMs: [250], margin: 1.5}
    # The guardrail of the 100 % step, where prod gets no traffic: 10 % errors is broken.
    slo: {maxErrorRate: 0.1}
  promotion: {mode: images}
"#,
    )
    .expect("the lab's Canary parses");
    canary.spec.analysis.interval = Some(interval);
    canary.spec.step_duration.min = scaled(120, interval.0.as_secs());
    canary.spec.step_duration.max = scaled(1800, 60);
    canary.spec.analysis.no_data.after = scaled(600, 20);
    canary
}

/// The name of the Alertmanager notifier in the lab's daemon config.
pub const ALERTMANAGER_NOTIFIER: &str = "lab";

/// The lab Canary's checks of the environment under test (`{{ host }}`: stage before and
/// during the rollout, prod after promotion), on the mesh's app pages at `mesh`: `health`
/// five times at 0 % and again at every step, `home` once at 0 % (its body names the app).
pub fn lab_checks(mesh: &Mesh) -> Vec<canaryd_api::canary::CheckSpec> {
    serde_json::from_value(json!([
        {"name": "health", "url": mesh.app_url("{{ host }}", "/health"), "count": 5, "everyStep": true},
        {"name": "home", "url": mesh.app_url("{{ host }}", "/"), "bodyContains": "flaskapp"},
    ]))
    .expect("the lab's checks parse")
}

impl Lab {
    /// Starts everything but canaryd: API server with the seed's objects and the Canary,
    /// rollouts, mesh traffic and Prometheus (which has scraped the mesh once on return),
    /// and Alertmanager when asked for. The Canary is [`lab_canary`] with the lab's checks
    /// (unless `options.checks` is off) and a notification route to Alertmanager (when it
    /// runs).
    pub async fn start(options: LabOptions) -> Result<Lab, LabError> {
        let dir = tempfile::Builder::new()
            .prefix("canaryd-lab-")
            .tempdir()
            .map_err(|e| fail("temporary directory")(e.to_string()))?;
        let api = ApiServer::start(ApiServerOptions {
            install_istio_crds: true,
            install_canary_crd: true,
            install_reference_grant_crd: true,
            write_log_file: Some(dir.path().join("writes.jsonl")),
            ..Default::default()
        })
        .await
        .map_err(|e| fail("API server")(e.to_string()))?;
        api.install(SEED)
            .map_err(|e| fail("seed objects")(e.to_string()))?;
        let client = api.client().map_err(|e| fail("client")(e.to_string()))?;
        let mut canary = lab_canary(options.speed);

        let mut tasks = vec![tokio::spawn(super::workloads::run(
            client.clone(),
            options.rollout_delay,
        ))];
        let mesh = Mesh::start(([127, 0, 0, 1], 0).into())
            .await
            .map_err(|e| fail("mesh")(e.to_string()))?;
        if options.checks {
            canary.spec.checks = lab_checks(&mesh);
        }
        let mut traffic = AppTraffic::for_canary(&canary);
        traffic.requests_per_second = options.requests_per_second;
        traffic.seed = options.seed;
        tasks.push(mesh.simulate(client.clone(), traffic, BehaviourTable::demo()));

        let admin_port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| fail("admin port")(e.to_string()))?;
        let targets = [
            ScrapeTarget {
                job: "mesh".into(),
                address: mesh.addr(),
            },
            ScrapeTarget {
                job: "canaryd".into(),
                address: ([127, 0, 0, 1], admin_port).into(),
            },
        ];
        let prometheus = LabPrometheus::start(&targets, options.scrape_interval)
            .await
            .map_err(|e| fail("Prometheus")(e.to_string()))?;
        let alertmanager = if options.alertmanager {
            match super::alertmanager::LabAlertmanager::start().await {
                Ok(am) => Some(am),
                Err(super::alertmanager::AlertmanagerError::NotInstalled) => None,
                Err(e) => return Err(fail("Alertmanager")(e.to_string())),
            }
        } else {
            None
        };
        if alertmanager.is_some() {
            canary.spec.notifications = serde_json::from_value(json!([
                {"notifier": ALERTMANAGER_NOTIFIER, "events": ["RolledBack", "Paused"]}
            ]))
            .expect("the lab's notification route parses");
        }
        Api::<Canary>::namespaced(client.clone(), "prod")
            .create(&PostParams::default(), &canary)
            .await
            .map_err(|e| fail("Canary")(e.to_string()))?;
        let lab = Lab {
            api,
            client,
            mesh,
            prometheus,
            alertmanager,
            dir,
            options,
            admin_port,
            admin_taken: Default::default(),
            tasks,
        };
        lab.wait_for_first_scrape().await?;
        Ok(lab)
    }

    pub fn kubeconfig(&self) -> &Path {
        self.api.kubeconfig_path()
    }

    /// Every committed write of a VirtualService, Canary, Deployment or Lease so far, with
    /// its writer: a daemon's name, `canaryd-lab` for the lab's own client (releases, the
    /// simulated Deployment controller).
    pub fn write_log(&self) -> Vec<WriteRecord> {
        self.api.write_log()
    }

    /// Waits until Prometheus has the mesh's traffic.
    async fn wait_for_first_scrape(&self) -> Result<(), LabError> {
        self.query_until("sum(istio_requests_total)", Duration::from_secs(60), |_| {
            true
        })
        .await
        .map(|_| ())
    }

    /// Polls an instant query until its first sample satisfies `done`; returns that value.
    pub async fn query_until(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> Result<f64, LabError> {
        let url = format!("{}/api/v1/query", self.prometheus.url());
        let http = crate::http_client().build().expect("an HTTP client");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let body: serde_json::Value =
                match http.get(&url).query(&[("query", promql)]).send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
            let value = body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value.filter(|v| done(*v)) {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail("Prometheus")(format!(
                    "`{promql}` gave no such value within {timeout:?} (last: {value:?}); its log:\n{}",
                    self.prometheus.log_tail()
                )));
            }
        }
    }

    /// Writes a daemon config for this lab and returns its path. The first daemon gets the
    /// admin port Prometheus scrapes; later ones any free port.
    pub fn daemon_config(&self, name: &str) -> Result<PathBuf, LabError> {
        self.daemon_config_with(name, "")
    }

    /// [`Lab::daemon_config`] with more top-level keys (YAML lines) appended. With
    /// `options.checks`, the config has the lab's `egress` setting (so `extra` must not set
    /// `egress` again).
    pub fn daemon_config_with(&self, name: &str, extra: &str) -> Result<PathBuf, LabError> {
        self.write_daemon_config(name, extra).map(|(path, _)| path)
    }

    /// Writes the config of daemon `name`; returns its path and admin listen address.
    fn write_daemon_config(
        &self,
        name: &str,
        extra: &str,
    ) -> Result<(PathBuf, SocketAddr), LabError> {
        let first = !self
            .admin_taken
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        let admin_port = if first { self.admin_port } else { 0 };
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let scrape = self.options.scrape_interval;
        let interval = lab_canary(self.options.speed)
            .spec
            .analysis
            .interval
            .map_or(scrape * 4, |i| i.0.max(scrape * 4));
        let (interval, scrape) = (HumanDuration(interval), HumanDuration(scrape));
        let text = format!(
            "prometheus: {{url: '{}', timeout: 5s, retries: 1, scrapeInterval: {scrape}}}\n\
             evaluationInterval: {interval}\n\
             leaderElection: {{enabled: true, namespace: {LEASE_NAMESPACE}, leaseDuration: 4s, renewDeadline: 3s}}\n\
             admin: {{listen: '{admin}'}}\n\
             log: {{format: text, level: 'info,kube=warn'}}\n{}{}",
            self.prometheus.url(),
            self.alertmanager
                .as_ref()
                .map(|am| format!(
                    "notifiers: [{{type: alertmanager, name: {ALERTMANAGER_NOTIFIER}, url: '{}'}}]\n",
                    am.url()
                ))
                .unwrap_or_default(),
            if self.options.checks {
                self.egress()
            } else {
                String::new()
            }
        ) + extra;
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).map_err(|e| fail("daemon config")(e.to_string()))?;
        Ok((path, admin))
    }

    /// The lab's `egress` setting. The product refuses loopback addresses by default, and
    /// the lab's apps answer only there (the mesh's app pages, see [`lab_checks`]): this lab
    /// lets its daemons reach the mesh's loopback address, besides the default cluster
    /// service names. A daemon in a cluster keeps the defaults.
    fn egress(&self) -> String {
        let defaults = ["*.svc", "*.svc.cluster.local"].map(|h| format!("'{h}'"));
        format!(
            "# The lab: its apps answer checks on loopback, which the product refuses by default.\n\
             egress: {{hosts: [{}, '{}'], allowPrivateAddresses: true}}\n",
            defaults.join(", "),
            self.mesh.addr().ip()
        )
    }

    /// Starts `canaryd run` (the given binary) against the lab; its log goes to a file.
    pub fn spawn_daemon(&self, binary: &Path, name: &str) -> Result<Daemon, LabError> {
        self.spawn_daemon_with(binary, name, "")
    }

    /// [`Lab::spawn_daemon`] with more daemon config (see [`Lab::daemon_config_with`]).
    pub fn spawn_daemon_with(
        &self,
        binary: &Path,
        name: &str,
        extra_config: &str,
    ) -> Result<Daemon, LabError> {
        self.spawn_daemon_env(binary, name, extra_config, &[])
    }

    /// [`Lab::spawn_daemon_with`] with more environment variables (e.g. `FAILPOINTS`). The
    /// daemon runs in the lab's directory, with a kubeconfig whose token is `name`; a daemon
    /// started again under the same name appends to the same log.
    pub fn spawn_daemon_env(
        &self,
        binary: &Path,
        name: &str,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<Daemon, LabError> {
        let (config, admin) = self.write_daemon_config(name, extra_config)?;
        let kubeconfig = self.dir.path().join(format!("{name}.kubeconfig"));
        self.api
            .write_kubeconfig_as(&kubeconfig, name)
            .map_err(|e| fail("daemon kubeconfig")(e.to_string()))?;
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail("daemon log")(e.to_string()))?;
        let child = super::process::tethered(binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(self.dir.path())
            .envs(env.iter().copied())
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", LEASE_NAMESPACE)
            .stdin(Stdio::null())
            .stdout(
                file.try_clone()
                    .map_err(|e| fail("daemon log")(e.to_string()))?,
            )
            .stderr(file)
            .spawn()
            .map_err(|e| fail("canaryd")(format!("cannot start {}: {e}", binary.display())))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log,
            admin: (admin.port() != 0).then_some(admin),
        })
    }

    /// Gives stage a new image, as `helm upgrade --set deployment.tag=...` would.
    pub async fn release(&self, image: &str) -> Result<(), LabError> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), "stage");
        let patch = json!({"spec": {"template": {
            "metadata": {"labels": {"version": image.rsplit(':').next().unwrap_or(image)}},
            "spec": {"containers": [{"name": "flaskapp", "image": image}]}
        }}});
        api.patch(
            "flaskapp",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .map_err(|e| fail("release")(e.to_string()))?;
        Ok(())
    }

    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), "prod")
    }

    /// Merges `spec` (a JSON merge patch of the seed Canary's spec) into the seed Canary, as
    /// `kubectl patch --type merge` would: a test's own settings on top of the lab's.
    pub async fn edit_canary(&self, spec: serde_json::Value) -> Result<(), LabError> {
        let patch = json!({ "spec": spec });
        self.canaries()
            .patch("flaskapp", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| fail("edit the Canary")(e.to_string()))?;
        Ok(())
    }

    /// Follows the Canary until `done` holds, calling `each` on every change; fails after
    /// `timeout` with the last status.
    pub async fn follow(
        &self,
        timeout: Duration,
        each: impl FnMut(&Canary),
        done: impl Fn(&Canary) -> bool,
    ) -> Result<Canary, LabError> {
        self.follow_canary("prod", "flaskapp", timeout, each, done)
            .await
    }

    /// [`Lab::follow`] for any Canary.
    pub async fn follow_canary(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        mut each: impl FnMut(&Canary),
        done: impl Fn(&Canary) -> bool,
    ) -> Result<Canary, LabError> {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let api = Api::<Canary>::namespaced(self.client.clone(), namespace);
        let mut stream = watcher(api, config)
            .applied_objects()
            .default_backoff()
            .boxed();
        let mut last = None;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    let status = last.as_ref().and_then(|c: &Canary| c.status.clone());
                    return Err(fail("timeout")(format!("the Canary did not get there within {timeout:?}; last status: {status:?}")));
                }
                next = stream.next() => match next {
                    Some(Ok(c)) => {
                        each(&c);
                        if done(&c) {
                            return Ok(c);
                        }
                        last = Some(c);
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "watch error; retrying"),
                    None => return Err(fail("watch")("the watch ended".into())),
                }
            }
        }
    }

    /// The stage weight the VirtualService has now.
    pub async fn stage_weight(&self) -> Result<i64, LabError> {
        let vs = Api::<canaryd_api::virtual_service::VirtualService>::namespaced(
            self.client.clone(),
            "prod",
        )
        .get("demoapp")
        .await
        .map_err(|e| fail("VirtualService")(e.to_string()))?;
        let split = vs
            .spec
            .traffic_split(
                Some("primary"),
                "flaskapp.prod.svc.cluster.local",
                "flaskapp.stage.svc.cluster.local",
            )
            .map_err(|e| fail("VirtualService")(e.to_string()))?;
        Ok(split.stage_weight)
    }

    /// The image prod's Deployment runs.
    pub async fn prod_image(&self) -> Result<String, LabError> {
        let d = Api::<Deployment>::namespaced(self.client.clone(), "prod")
            .get("flaskapp")
            .await
            .map_err(|e| fail("prod Deployment")(e.to_string()))?;
        Ok(d.spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default())
    }
}

impl Lab {
    /// The active alerts of Alertmanager once `done` holds for them (delivery is
    /// asynchronous); `None` without Alertmanager.
    pub async fn alerts_when(
        &self,
        timeout: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Option<Vec<serde_json::Value>> {
        let am = self.alertmanager.as_ref()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let alerts = am.alerts().await.unwrap_or_default();
            if done(&alerts) || tokio::time::Instant::now() > deadline {
                return Some(alerts);
            }
        }
    }
}

/// A running `canaryd run`, killed when dropped.
pub struct Daemon {
    /// Its `POD_NAME`, Lease identity and writer name.
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// The listen address of its admin server (metrics, health, pages), from the config the
    /// lab wrote; `None` when the daemon picked a free port itself (all but the first).
    pub admin: Option<SocketAddr>,
}

impl Daemon {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has ended (crashed, aborted by a failpoint, killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGSTOP: the process is frozen (no thread runs, its connections stay open), as a
    /// long GC pause or a stopped VM would leave it.
    pub fn freeze(&self) -> Result<(), LabError> {
        self.signal("STOP")
    }

    /// SIGCONT after [`Daemon::freeze`]: it runs on from where it stopped.
    pub fn thaw(&self) -> Result<(), LabError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), LabError> {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .map_err(|e| fail("signal")(format!("cannot run kill: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(fail("signal")(format!(
                "kill -s {signal} {} failed ({status})",
                self.child.id()
            )))
        }
    }

    pub fn log_tail(&self) -> String {
        super::process::tail(&self.log, 40)
    }

    /// The same error, with the end of this daemon's log appended.
    pub fn explain(&self, e: LabError) -> LabError {
        LabError {
            what: e.what,
            message: format!("{}\ncanaryd's log:\n{}", e.message, self.log_tail()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

//! The running simulated mesh: watches an app's VirtualService and its two Deployments
//! through the ordinary kube client, turns them into a [`TrafficPlan`], sends traffic by it in
//! real time, and serves the resulting Istio metrics on `/metrics` for Prometheus to scrape.
//! The decisions (who gets which request, how it goes) are in [`super::mesh`]; this module
//! only moves data between the cluster, the clock and HTTP.
//!
//! The same server stands in for the apps' Services, for synthetic checks: the lab has no
//! cluster DNS, so `http://<mesh>/<service host>/health` and `http://<mesh>/<service host>/`
//! reach the pods that serve that host now (the workload of the current traffic plan, old
//! pods during a rollout). `/health` answers 200 `ok`, or 503 for an image that is unhealthy
//! ([`super::scenario::answers_health`]); `/` answers 200 with the app's name and version.
//! Neither page samples the image's error rate or latency: those are rates, for the
//! statistics to judge, not something a handful of synthetic requests can tell.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::watcher::watch_object;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::mesh::{self, MeshMetrics, Side, TrafficGenerator, TrafficPlan, Workload};
use super::scenario::{answers_health, BehaviourTable};
use super::workloads::rollout_complete;
use canaryd_api::canary::Canary;
use canaryd_api::virtual_service::{RouteError, VirtualService};

/// One environment of the app: the host the VirtualService routes to and its Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub host: String,
    pub namespace: String,
    pub deployment: String,
}

/// The traffic of one app: where its split lives and how much traffic it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct AppTraffic {
    pub virtual_service_namespace: String,
    pub virtual_service: String,
    /// The HTTP route carrying the split; `None` for the only route to both hosts.
    pub route: Option<String>,
    pub prod: Target,
    pub stage: Target,
    pub requests_per_second: f64,
    /// How often traffic is sent; a weight change takes effect at the next tick.
    pub tick: Duration,
    pub seed: u64,
}

impl AppTraffic {
    /// The traffic of the app a Canary drives: 50 requests per second, sent every 100 ms.
    pub fn for_canary(canary: &Canary) -> Self {
        let own = canary.namespace().unwrap_or_else(|| "default".into());
        let spec = &canary.spec;
        let target = |env: &canaryd_api::canary::Environment| Target {
            host: env.host.clone(),
            namespace: env
                .deployment
                .namespace
                .clone()
                .unwrap_or_else(|| own.clone()),
            deployment: env.deployment.name.clone(),
        };
        AppTraffic {
            virtual_service_namespace: spec
                .virtual_service
                .namespace
                .clone()
                .unwrap_or_else(|| own.clone()),
            virtual_service: spec.virtual_service.name.clone(),
            route: spec.virtual_service.route.clone(),
            prod: target(&spec.prod),
            stage: target(&spec.stage),
            requests_per_second: 50.0,
            tick: Duration::from_millis(100),
            seed: 1,
        }
    }
}

/// The workload that answers a Deployment's traffic now: the current template once it is
/// rolled out; during a rollout the old pods keep answering, so the workload that served
/// before stays (or the current template, when none was seen before).
pub fn serving_workload(
    previous: Option<&Workload>,
    host: &str,
    deployment: &Deployment,
) -> Option<Workload> {
    match previous {
        Some(previous) if !rollout_complete(deployment) => Some(previous.clone()),
        _ => Workload::from_deployment(host, deployment),
    }
}

/// The plan for the split the VirtualService holds between the two workloads.
pub fn traffic_plan(
    virtual_service: &VirtualService,
    route: Option<&str>,
    prod: &Workload,
    stage: &Workload,
    table: &BehaviourTable,
) -> Result<TrafficPlan, RouteError> {
    let split =
        virtual_service
            .spec
            .traffic_split(route, &prod.service_host, &stage.service_host)?;
    let side = |workload: &Workload, weight: i64| Side {
        workload: workload.clone(),
        behaviour: table.behaviour(&workload.image).clone(),
        weight: u32::try_from(weight.clamp(0, 100)).unwrap_or(0),
    };
    Ok(TrafficPlan {
        prod: side(prod, split.prod_weight),
        stage: side(stage, split.stage_weight),
    })
}

/// Keeps `plans` at the plan the cluster describes (`None` while the VirtualService or a
/// Deployment is missing or the split cannot be read) until every receiver is gone.
pub async fn watch_plans(
    client: Client,
    app: AppTraffic,
    table: BehaviourTable,
    plans: watch::Sender<Option<TrafficPlan>>,
) {
    let vs_api = Api::<VirtualService>::namespaced(client.clone(), &app.virtual_service_namespace);
    let deployments = |t: &Target| Api::<Deployment>::namespaced(client.clone(), &t.namespace);
    let mut vs_events = watch_object(vs_api, &app.virtual_service)
        .default_backoff()
        .boxed();
    let mut prod_events = watch_object(deployments(&app.prod), &app.prod.deployment)
        .default_backoff()
        .boxed();
    let mut stage_events = watch_object(deployments(&app.stage), &app.stage.deployment)
        .default_backoff()
        .boxed();
    let mut virtual_service: Option<VirtualService> = None;
    let mut prod: Option<Workload> = None;
    let mut stage: Option<Workload> = None;
    loop {
        tokio::select! {
            event = vs_events.next() => match event {
                Some(Ok(object)) => virtual_service = object,
                Some(Err(error)) => tracing::warn!(%error, "lab mesh: watching the VirtualService failed; retrying"),
                None => return,
            },
            event = prod_events.next() => match event {
                Some(Ok(object)) => prod = object.and_then(|d| serving_workload(prod.as_ref(), &app.prod.host, &d)),
                Some(Err(error)) => tracing::warn!(%error, "lab mesh: watching the prod Deployment failed; retrying"),
                None => return,
            },
            event = stage_events.next() => match event {
                Some(Ok(object)) => stage = object.and_then(|d| serving_workload(stage.as_ref(), &app.stage.host, &d)),
                Some(Err(error)) => tracing::warn!(%error, "lab mesh: watching the stage Deployment failed; retrying"),
                None => return,
            },
            () = plans.closed() => return,
        }
        let plan = match (&virtual_service, &prod, &stage) {
            (Some(vs), Some(prod), Some(stage)) => traffic_plan(
                vs,
                app.route.as_deref(),
                prod,
                stage,
                &table,
            )
            .inspect_err(
                |error| tracing::warn!(%error, "lab mesh: no traffic until the split can be read"),
            )
            .ok(),
            _ => None,
        };
        plans.send_if_modified(|current| {
            let changed = *current != plan;
            if changed {
                tracing::info!(
                    prod = ?plan.as_ref().map(|p| (&p.prod.workload.image, p.prod.weight)),
                    stage = ?plan.as_ref().map(|p| (&p.stage.workload.image, p.stage.weight)),
                    "lab mesh: traffic plan changed"
                );
                *current = plan;
            }
            changed
        });
    }
}

/// Sends traffic by the latest plan every `tick`, in real time, until the plan's sender is
/// gone. Time without a plan sends nothing.
pub async fn drive(
    mut plans: watch::Receiver<Option<TrafficPlan>>,
    mut generator: TrafficGenerator,
    metrics: MeshMetrics,
    tick: Duration,
) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            now = ticks.tick() => {
                if let Some(plan) = plans.borrow_and_update().as_ref() {
                    generator.advance(plan, now - last, &metrics);
                }
                last = now;
            }
            changed = plans.changed() => if changed.is_err() { return },
        }
    }
}

/// The traffic plans of the simulated apps, which say which workload serves which host.
type Apps = Arc<Mutex<Vec<watch::Receiver<Option<TrafficPlan>>>>>;

/// The simulated mesh: one `/metrics` endpoint for the traffic of any number of apps, and
/// their pages for checks (`/<service host>/health`, `/<service host>/`).
pub struct Mesh {
    addr: SocketAddr,
    metrics: MeshMetrics,
    apps: Apps,
    server: JoinHandle<()>,
}

impl Mesh {
    /// Serves `/metrics` and the apps' pages on `listen` (port 0 picks a free port; see
    /// [`Mesh::addr`]).
    pub async fn start(listen: SocketAddr) -> std::io::Result<Mesh> {
        let mut registry = Registry::default();
        let metrics = MeshMetrics::register(&mut registry);
        let apps = Apps::default();
        let pages = Router::new()
            .route("/{host}/health", get(health_page))
            .route("/{host}/", get(home_page))
            .with_state(apps.clone());
        let router = Router::new()
            .route("/metrics", get(metrics_text))
            .with_state(Arc::new(registry))
            .merge(pages);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "lab mesh: the /metrics server stopped");
            }
        });
        tracing::info!(%addr, "lab mesh: serving Istio metrics on /metrics");
        Ok(Mesh {
            addr,
            metrics,
            apps,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` on the pods serving `host` (`{{ host }}` in a check's URL is
    /// replaced by the environment under test): `http://<addr>/<host><path>`.
    pub fn app_url(&self, host: &str, path: &str) -> String {
        format!("http://{}/{host}{path}", self.addr)
    }

    /// The scrape target for Prometheus (`host:port`).
    pub fn scrape_target(&self) -> String {
        self.addr.to_string()
    }

    pub fn metrics(&self) -> &MeshMetrics {
        &self.metrics
    }

    /// Starts sending `app`'s traffic, each version behaving as `table` says; abort the
    /// returned task to stop it (dropping the Mesh only stops serving `/metrics`).
    pub fn simulate(
        &self,
        client: Client,
        app: AppTraffic,
        table: BehaviourTable,
    ) -> JoinHandle<()> {
        let (sender, receiver) = watch::channel(None);
        self.apps
            .lock()
            .expect("the apps lock")
            .push(receiver.clone());
        let generator = TrafficGenerator::new(app.requests_per_second, app.seed);
        let tick = app.tick;
        let drive = drive(receiver, generator, self.metrics.clone(), tick);
        tokio::spawn(async move {
            tokio::join!(watch_plans(client, app, table, sender), drive);
        })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The workload serving `host` now, if any app's current plan routes to it.
fn serving(apps: &Apps, host: &str) -> Option<Workload> {
    let apps = apps.lock().expect("the apps lock");
    for plans in apps.iter() {
        if let Some(plan) = plans.borrow().as_ref() {
            for workload in [&plan.prod.workload, &plan.stage.workload] {
                if workload.service_host.eq_ignore_ascii_case(host) {
                    return Some(workload.clone());
                }
            }
        }
    }
    None
}

fn no_such_host(host: &str) -> (StatusCode, String) {
    (
        StatusCode::BAD_GATEWAY,
        format!("lab mesh: no app's traffic plan routes to {host}\n"),
    )
}

async fn health_page(State(apps): State<Apps>, Path(host): Path<String>) -> (StatusCode, String) {
    match serving(&apps, &host) {
        Some(w) if answers_health(&w.image) => (StatusCode::OK, "ok\n".into()),
        Some(w) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is unhealthy\n", w.image),
        ),
        None => no_such_host(&host),
    }
}

async fn home_page(State(apps): State<Apps>, Path(host): Path<String>) -> (StatusCode, String) {
    match serving(&apps, &host) {
        Some(w) => (
            StatusCode::OK,
            format!("{} {} ({})\n", w.app, w.version, w.image),
        ),
        None => no_such_host(&host),
    }
}

async fn metrics_text(State(registry): State<Arc<Registry>>) -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, mesh::CONTENT_TYPE)],
        mesh::encode(&registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PROD: &str = "flaskapp.prod.svc.cluster.local";
    const STAGE: &str = "flaskapp.stage.svc.cluster.local";

    fn deployment(namespace: &str, generation: i64, image: &str, rolled_out: bool) -> Deployment {
        let observed = if rolled_out {
            generation
        } else {
            generation - 1
        };
        serde_json::from_value(json!({
            "metadata": {"name": "flaskapp", "namespace": namespace, "generation": generation},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "flaskapp"}},
                "template": {
                    "metadata": {"labels": {"app": "flaskapp", "version": image.rsplit(':').next()}},
                    "spec": {"containers": [{"name": "app", "image": image}], "serviceAccountName": "flaskapp"}
                }
            },
            "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        }))
        .unwrap()
    }

    fn virtual_service(stage_weight: i64) -> VirtualService {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "flaskapp", "namespace": "prod"},
            "spec": {"hosts": ["flaskapp.example.com"], "http": [{"name": "primary", "route": [
                {"destination": {"host": PROD}, "weight": 100 - stage_weight},
                {"destination": {"host": STAGE}, "weight": stage_weight}
            ]}]}
        }))
        .unwrap()
    }

    #[test]
    fn old_pods_answer_until_the_rollout_is_done() {
        let v1 =
            serving_workload(None, STAGE, &deployment("stage", 1, "demoapp:v1", true)).unwrap();
        assert_eq!(
            (v1.image.as_str(), v1.version.as_str()),
            ("demoapp:v1", "v1")
        );
        assert_eq!(
            (v1.namespace.as_str(), v1.service_account.as_str()),
            ("stage", "flaskapp")
        );

        let rolling = deployment("stage", 2, "demoapp:v3", false);
        assert_eq!(
            serving_workload(Some(&v1), STAGE, &rolling),
            Some(v1.clone())
        );
        // First seen mid-rollout: nothing older is known, the template answers.
        assert_eq!(
            serving_workload(None, STAGE, &rolling).unwrap().image,
            "demoapp:v3"
        );

        let done = deployment("stage", 2, "demoapp:v3", true);
        assert_eq!(
            serving_workload(Some(&v1), STAGE, &done).unwrap().image,
            "demoapp:v3"
        );
    }

    #[test]
    fn the_plan_carries_the_weights_and_the_images_behaviour() {
        let table = BehaviourTable::demo();
        let prod =
            Workload::from_deployment(PROD, &deployment("prod", 1, "demoapp:v1", true)).unwrap();
        let stage =
            Workload::from_deployment(STAGE, &deployment("stage", 1, "demoapp:v3", true)).unwrap();
        let plan = traffic_plan(&virtual_service(30), None, &prod, &stage, &table).unwrap();
        assert_eq!((plan.prod.weight, plan.stage.weight), (70, 30));
        assert_eq!(plan.stage.behaviour.error_rate, 0.05);
        assert_eq!(plan.prod.behaviour, *table.behaviour("demoapp:v1"));

        let elsewhere = Workload {
            service_host: "other.stage.svc.cluster.local".into(),
            ..stage
        };
        assert!(traffic_plan(&virtual_service(30), None, &prod, &elsewhere, &table).is_err());
    }

    #[tokio::test]
    async fn the_app_pages_answer_as_the_pods_serving_each_host() {
        let table = BehaviourTable::demo();
        let workload = |host, namespace, image| {
            Workload::from_deployment(host, &deployment(namespace, 1, image, true)).unwrap()
        };
        let prod = workload(PROD, "prod", "demoapp:v3");
        let stage = workload(STAGE, "stage", super::super::scenario::UNHEALTHY_IMAGE);
        let plan = traffic_plan(&virtual_service(0), None, &prod, &stage, &table).unwrap();
        let mesh = Mesh::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let (_plans, receiver) = watch::channel(Some(plan));
        mesh.apps.lock().unwrap().push(receiver);

        let http = crate::http_client().build().unwrap();
        let get = |url: String| {
            let http = http.clone();
            async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        // A release with more errors is healthy; its errors are a rate, not a page.
        assert_eq!(
            get(mesh.app_url(PROD, "/health")).await,
            (200, "ok\n".into())
        );
        assert_eq!(
            get(mesh.app_url(PROD, "/")).await,
            (200, "flaskapp v3 (demoapp:v3)\n".into())
        );
        let (status, body) = get(mesh.app_url(STAGE, "/health")).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "demoapp:unhealthy is unhealthy\n")
        );
        let (status, body) = get(mesh.app_url("flaskapp.dev.svc.cluster.local", "/health")).await;
        assert_eq!(status, 502, "{body}");
    }

    #[test]
    fn a_canary_names_the_traffic_to_simulate() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "canaryd.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "flaskapp", "namespace": "prod"},
            "spec": {
                "virtualService": {"name": "flaskapp", "route": "primary"},
                "prod": {"host": PROD, "deployment": {"name": "flaskapp"}},
                "stage": {"host": STAGE, "deployment": {"name": "flaskapp", "namespace": "stage"}}
            }
        }))
        .unwrap();
        let app = AppTraffic::for_canary(&canary);
        assert_eq!(
            (
                app.virtual_service_namespace.as_str(),
                app.virtual_service.as_str(),
                app.route.as_deref()
            ),
            ("prod", "flaskapp", Some("primary"))
        );
        assert_eq!(
            app.prod,
            Target {
                host: PROD.into(),
                namespace: "prod".into(),
                deployment: "flaskapp".into()
            }
        );
        assert_eq!(app.stage.namespace, "stage");
        assert_eq!(app.requests_per_second, 50.0);
    }
}

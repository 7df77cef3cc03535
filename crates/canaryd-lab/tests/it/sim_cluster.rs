//! The lab's simulation against the lab's own API server, through the ordinary kube client:
//! a release of stage rolls out after the delay, and the mesh follows canaryd's weight patches
//! and the rolled-out image.

use std::future::Future;
use std::time::Duration;

use canaryd_api::virtual_service::VirtualService;
use canaryd_lab::apiserver::{ApiServer, ApiServerOptions};
use canaryd_lab::mesh::{IstioLabels, TrafficPlan};
use canaryd_lab::mesh_server::{watch_plans, AppTraffic, Mesh, Target};
use canaryd_lab::scenario::BehaviourTable;
use canaryd_lab::workloads::{self, rollout_complete};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::Api;
use serde_json::json;
use tokio::sync::watch;

const PROD: &str = "flaskapp.prod.svc.cluster.local";
const STAGE: &str = "flaskapp.stage.svc.cluster.local";
const DELAY: Duration = Duration::from_secs(1);

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaskapp, namespace: prod}
spec:
  replicas: 2
  selector: {matchLabels: {app: flaskapp}}
  template:
    metadata: {labels: {app: flaskapp}}
    spec: {containers: [{name: app, image: "demoapp:v1"}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaskapp, namespace: stage}
spec:
  replicas: 2
  selector: {matchLabels: {app: flaskapp}}
  template:
    metadata: {labels: {app: flaskapp}}
    spec: {containers: [{name: app, image: "demoapp:v1"}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaskapp, namespace: prod}
spec:
  hosts: [flaskapp.example.com]
  http:
  - name: primary
    route:
    - destination: {host: flaskapp.prod.svc.cluster.local}
      weight: 100
    - destination: {host: flaskapp.stage.svc.cluster.local}
      weight: 0
"#;

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn plan_where(
    plans: &mut watch::Receiver<Option<TrafficPlan>>,
    what: &str,
    test: impl Fn(&TrafficPlan) -> bool,
) -> TrafficPlan {
    let plan = within(what, plans.wait_for(|p| p.as_ref().is_some_and(&test)))
        .await
        .expect("the mesh watches");
    plan.clone().unwrap()
}

#[tokio::test]
async fn a_release_rolls_out_and_traffic_follows_the_weights() {
    let server = ApiServer::start(ApiServerOptions {
        namespaces: vec!["prod".into(), "stage".into()],
        install_istio_crds: true,
        ..ApiServerOptions::default()
    })
    .await
    .unwrap();
    server.install(MANIFEST).unwrap();
    let client = server.client().unwrap();
    let rollouts = tokio::spawn(workloads::run(client.clone(), DELAY));

    let stage = Api::<Deployment>::namespaced(client.clone(), "stage");
    let rolled_out = |d: Option<&Deployment>| d.is_some_and(rollout_complete);
    within(
        "the first rollout",
        await_condition(stage.clone(), "flaskapp", rolled_out),
    )
    .await
    .unwrap();

    let target = |namespace: &str, host: &str| Target {
        host: host.into(),
        namespace: namespace.into(),
        deployment: "flaskapp".into(),
    };
    let app = AppTraffic {
        virtual_service_namespace: "prod".into(),
        virtual_service: "flaskapp".into(),
        route: None,
        prod: target("prod", PROD),
        stage: target("stage", STAGE),
        requests_per_second: 1000.0,
        tick: Duration::from_millis(20),
        seed: 11,
    };
    let (sender, mut plans) = watch::channel(None);
    let watcher = tokio::spawn(watch_plans(
        client.clone(),
        app.clone(),
        BehaviourTable::demo(),
        sender,
    ));
    let mesh = Mesh::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let traffic = mesh.simulate(client.clone(), app, BehaviourTable::demo());

    let first = plan_where(&mut plans, "the first plan", |_| true).await;
    assert_eq!((first.prod.weight, first.stage.weight), (100, 0));

    // canaryd's own weight patch moves 30 % to stage.
    let virtual_services = Api::<VirtualService>::namespaced(client.clone(), "prod");
    let vs = virtual_services.get("flaskapp").await.unwrap();
    let split = vs.spec.traffic_split(None, PROD, STAGE).unwrap();
    let patch: json_patch::Patch =
        serde_json::from_value(split.weight_patch(PROD, STAGE, 30)).unwrap();
    virtual_services
        .patch(
            "flaskapp",
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .unwrap();
    let shifted = plan_where(&mut plans, "the 30 % split", |p| p.stage.weight == 30).await;
    assert_eq!(shifted.prod.weight, 70);

    // Release v3 to stage: progressing first, while the v1 pods still answer.
    let release = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "demoapp:v3"}]}}}});
    stage
        .patch("flaskapp", &PatchParams::default(), &Patch::Merge(release))
        .await
        .unwrap();
    let progressing = |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.observed_generation == Some(2) && s.updated_replicas == Some(0))
    };
    within(
        "the rollout to start",
        await_condition(stage.clone(), "flaskapp", progressing),
    )
    .await
    .unwrap();
    assert_eq!(
        plans.borrow().as_ref().unwrap().stage.workload.image,
        "demoapp:v1"
    );

    within(
        "the rollout to finish",
        await_condition(stage.clone(), "flaskapp", rolled_out),
    )
    .await
    .unwrap();
    let released = plan_where(&mut plans, "v3 to answer", |p| {
        p.stage.workload.image == "demoapp:v3"
    })
    .await;
    assert_eq!(released.stage.behaviour.error_rate, 0.05);

    // The running mesh sends stage its share too.
    let stage_ok = IstioLabels::destination(&released.stage.workload, 200);
    within("stage traffic", async {
        while mesh
            .metrics()
            .requests
            .get(&stage_ok)
            .is_none_or(|c| c.get() == 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    traffic.abort();
    watcher.abort();
    rollouts.abort();
}

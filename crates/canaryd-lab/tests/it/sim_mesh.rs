//! The running simulated mesh: traffic follows the VirtualService's weights and the
//! Deployments' images (watched through a mocked API server, tower-test), at the configured
//! rate in (paused, virtual) time, and `/metrics` serves Istio's metrics over HTTP.

use std::collections::HashMap;
use std::time::Duration;

use canaryd_lab::mesh::{
    self, IstioLabels, MeshMetrics, Side, TrafficGenerator, TrafficPlan, Workload,
};
use canaryd_lab::mesh_server::{drive, watch_plans, AppTraffic, Mesh, Target};
use canaryd_lab::scenario::BehaviourTable;
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tower_test::mock::{self, SendResponse};

const PROD: &str = "flaskapp.prod.svc.cluster.local";
const STAGE: &str = "flaskapp.stage.svc.cluster.local";

fn workload(env: &str, image: &str) -> Workload {
    Workload {
        service_host: format!("flaskapp.{env}.svc.cluster.local"),
        namespace: env.into(),
        name: "flaskapp".into(),
        app: "flaskapp".into(),
        version: "v1".into(),
        service_account: "default".into(),
        image: image.into(),
    }
}

fn plan(stage_weight: u32) -> TrafficPlan {
    let table = BehaviourTable::demo();
    let side = |env, weight| Side {
        workload: workload(env, "demoapp:v1"),
        behaviour: table.behaviour("demoapp:v1").clone(),
        weight,
    };
    TrafficPlan {
        prod: side("prod", 100 - stage_weight),
        stage: side("stage", stage_weight),
    }
}

fn requests(metrics: &MeshMetrics, side: &Side) -> u64 {
    [200, 500]
        .iter()
        .filter_map(|code| {
            metrics
                .requests
                .get(&IstioLabels::destination(&side.workload, *code))
                .map(|c| c.get())
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn traffic_flows_at_the_rate_and_weight_changes_apply_at_the_next_tick() {
    let mut registry = Registry::default();
    let metrics = MeshMetrics::register(&mut registry);
    let (plans, receiver) = watch::channel(None);
    let driver = tokio::spawn(drive(
        receiver,
        TrafficGenerator::new(50.0, 9),
        metrics.clone(),
        Duration::from_millis(100),
    ));
    let (prod, stage) = (&plan(0).prod, &plan(0).stage);

    // No plan, no traffic, and none owed for later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    plans.send_replace(Some(plan(0)));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_prod_only = requests(&metrics, prod);
    assert!((495..=505).contains(&after_prod_only), "{after_prod_only}");
    assert_eq!(requests(&metrics, stage), 0);

    plans.send_replace(Some(plan(100)));
    tokio::time::sleep(Duration::from_secs(10)).await;
    // At most the one tick due at the very moment of the change still went to prod.
    assert!(requests(&metrics, prod) - after_prod_only <= 5);
    let to_stage = requests(&metrics, stage);
    assert!((495..=505).contains(&to_stage), "{to_stage}");

    drop(plans);
    driver.await.expect("the driver stops when its plans end");
}

fn virtual_service(stage_weight: i64, resource_version: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "flaskapp", "namespace": "prod", "resourceVersion": resource_version},
        "spec": {"hosts": ["flaskapp.example.com"], "http": [{"route": [
            {"destination": {"host": PROD}, "weight": 100 - stage_weight},
            {"destination": {"host": STAGE}, "weight": stage_weight}
        ]}]}
    })
}

fn deployment(namespace: &str, generation: i64, image: &str, rolled_out: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "flaskapp", "namespace": namespace, "generation": generation, "resourceVersion": format!("{generation}")},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "flaskapp"}},
            "template": {
                "metadata": {"labels": {"app": "flaskapp"}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        },
        "status": {"observedGeneration": if rolled_out { generation } else { generation - 1 },
                   "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    })
}

fn respond(send: SendResponse<Response<Body>>, body: Vec<u8>) {
    send.send_response(Response::new(Body::from(body)));
}

fn modified(object: Value) -> Vec<u8> {
    format!("{}\n", json!({"type": "MODIFIED", "object": object})).into_bytes()
}

const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/prod/virtualservices";
const PROD_PATH: &str = "/apis/apps/v1/namespaces/prod/deployments";
const STAGE_PATH: &str = "/apis/apps/v1/namespaces/stage/deployments";

type MockHandle = mock::Handle<Request<Body>, Response<Body>>;

type Watches = HashMap<String, SendResponse<Response<Body>>>;

/// Answers list requests from `objects` and keeps watch requests open in `watches` until
/// there is one for each of `paths`. A watch request for a path means the watcher has
/// handled every event sent on that path before.
async fn open_watches(
    handle: &mut MockHandle,
    objects: &HashMap<&str, Value>,
    watches: &mut Watches,
    paths: &[&str],
) {
    while !paths.iter().all(|p| watches.contains_key(*p)) {
        let (request, send) = handle.next_request().await.expect("a request");
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldSelector=metadata.name%3Dflaskapp"),
            "{query}"
        );
        if query.contains("watch=true") {
            watches.insert(path, send);
        } else {
            let list =
                json!({"metadata": {"resourceVersion": "1"}, "items": [objects[path.as_str()]]});
            respond(send, serde_json::to_vec(&list).unwrap());
        }
    }
}

async fn plan_where(
    plans: &mut watch::Receiver<Option<TrafficPlan>>,
    what: impl Fn(&TrafficPlan) -> bool,
) -> TrafficPlan {
    let plan = tokio::time::timeout(
        Duration::from_secs(30),
        plans.wait_for(|p| p.as_ref().is_some_and(&what)),
    )
    .await
    .expect("the plan changes in time")
    .expect("the watcher runs");
    plan.clone().unwrap()
}

#[tokio::test]
async fn the_plan_follows_the_virtual_service_and_rolled_out_images() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let app = AppTraffic {
        virtual_service_namespace: "prod".into(),
        virtual_service: "flaskapp".into(),
        route: None,
        prod: Target {
            host: PROD.into(),
            namespace: "prod".into(),
            deployment: "flaskapp".into(),
        },
        stage: Target {
            host: STAGE.into(),
            namespace: "stage".into(),
            deployment: "flaskapp".into(),
        },
        requests_per_second: 50.0,
        tick: Duration::from_millis(100),
        seed: 1,
    };
    let (sender, mut plans) = watch::channel(None);
    let watcher = tokio::spawn(watch_plans(
        Client::new(service, "default"),
        app,
        BehaviourTable::demo(),
        sender,
    ));

    let objects = HashMap::from([
        (VS_PATH, virtual_service(0, "1")),
        (PROD_PATH, deployment("prod", 1, "demoapp:v1", true)),
        (STAGE_PATH, deployment("stage", 1, "demoapp:v1", true)),
    ]);
    let mut watches = Watches::new();
    open_watches(
        &mut handle,
        &objects,
        &mut watches,
        &[VS_PATH, PROD_PATH, STAGE_PATH],
    )
    .await;
    let first = plan_where(&mut plans, |_| true).await;
    assert_eq!((first.prod.weight, first.stage.weight), (100, 0));
    assert_eq!(first.stage.workload.image, "demoapp:v1");

    // canaryd shifts 30 % to stage.
    respond(
        watches.remove(VS_PATH).unwrap(),
        modified(virtual_service(30, "2")),
    );
    let shifted = plan_where(&mut plans, |p| p.stage.weight == 30).await;
    assert_eq!(shifted.prod.weight, 70);

    // stage gets v3; until its rollout is done the v1 pods keep answering.
    respond(
        watches.remove(STAGE_PATH).unwrap(),
        modified(deployment("stage", 2, "demoapp:v3", false)),
    );
    open_watches(&mut handle, &objects, &mut watches, &[STAGE_PATH]).await;
    assert_eq!(
        plans.borrow().as_ref().unwrap().stage.workload.image,
        "demoapp:v1"
    );

    respond(
        watches.remove(STAGE_PATH).unwrap(),
        modified(deployment("stage", 2, "demoapp:v3", true)),
    );
    let released = plan_where(&mut plans, |p| p.stage.workload.image == "demoapp:v3").await;
    assert_eq!(released.stage.behaviour.error_rate, 0.05);
    assert_eq!(released.stage.weight, 30);

    // The VirtualService is deleted: no split, no traffic.
    open_watches(&mut handle, &objects, &mut watches, &[VS_PATH]).await;
    let gone = json!({"type": "DELETED", "object": virtual_service(30, "3")});
    respond(
        watches.remove(VS_PATH).unwrap(),
        format!("{gone}\n").into_bytes(),
    );
    tokio::time::timeout(Duration::from_secs(30), plans.wait_for(Option::is_none))
        .await
        .unwrap()
        .unwrap();

    watcher.abort();
}

#[tokio::test]
async fn prometheus_can_scrape_the_metrics_endpoint() {
    let mesh = Mesh::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    TrafficGenerator::new(50.0, 4).advance(&plan(30), Duration::from_secs(4), mesh.metrics());

    let mut stream = tokio::net::TcpStream::connect(mesh.addr()).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {}", mesh::CONTENT_TYPE)),
        "{head}"
    );
    assert!(body.contains("# TYPE istio_requests_total counter"));
    assert!(body.contains("istio_requests_total{reporter=\"destination\""));
    for suffix in ["_bucket", "_sum", "_count"] {
        assert!(
            body.contains(&format!("istio_request_duration_milliseconds{suffix}{{")),
            "{suffix}"
        );
    }
    assert!(body.contains(&format!("destination_service=\"{STAGE}\"")));
    assert!(body.contains("le=\"+Inf\"} "));
    assert!(body.contains(&format!("envoy_cluster_upstream_rq{{envoy_response_code=\"200\",envoy_cluster_name=\"outbound|80||{STAGE}\"}}")));
}

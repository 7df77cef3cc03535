//! The lab's simulated Deployment controller against a mocked API server (tower-test):
//! expected request -> canned response, in the order the controller must send them.

use std::time::Duration;

use canaryd_lab::workloads;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower_test::mock::{self, Handle};

const DELAY: Duration = Duration::from_secs(5);
const STATUS_PATH: &str = "/apis/apps/v1/namespaces/stage/deployments/flaskapp/status";

fn deployment(generation: i64, image: &str, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "flaskapp", "namespace": "stage", "generation": generation, "resourceVersion": "10"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "flaskapp"}},
            "template": {
                "metadata": {"labels": {"app": "flaskapp"}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        },
        "status": status
    })
}

fn respond(send: mock::SendResponse<Response<Body>>, body: Value) {
    send.send_response(Response::new(Body::from(
        serde_json::to_vec(&body).unwrap(),
    )));
}

/// The next request, which must be a status patch; returns the status it writes.
async fn next_status_patch(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    answer: Value,
) -> Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), STATUS_PATH);
    assert!(request
        .uri()
        .query()
        .unwrap_or_default()
        .contains("fieldManager="));
    let body = request.into_body().collect_bytes().await.unwrap();
    respond(send, answer);
    serde_json::from_slice::<Value>(&body).unwrap()["status"].clone()
}

fn is_watch(request: &Request<Body>) -> bool {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .contains("watch=true")
}

#[tokio::test(start_paused = true)]
async fn a_changed_deployment_is_reported_rolled_out_after_the_delay() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let controller = tokio::spawn(workloads::run(Client::new(service, "default"), DELAY));
    let start = Instant::now();

    // The initial list shows generation 2 that no controller has observed yet.
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.uri().path(), "/apis/apps/v1/deployments");
    assert!(!is_watch(&request));
    let old_status = json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
    respond(
        send,
        json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "10"},
               "items": [deployment(2, "demoapp:v2", old_status)]}),
    );

    let progressing = next_status_patch(&mut handle, deployment(2, "demoapp:v2", json!({}))).await;
    assert_eq!(Instant::now(), start, "the rollout starts at once");
    assert_eq!(progressing["observedGeneration"], 2);
    assert_eq!(progressing["updatedReplicas"], 0);
    assert_eq!(progressing["availableReplicas"], 3, "old pods still serve");

    // The watch opens; it stays quiet for now.
    let (request, watch) = handle.next_request().await.unwrap();
    assert!(is_watch(&request));

    let complete = next_status_patch(&mut handle, deployment(2, "demoapp:v2", json!({}))).await;
    assert_eq!(Instant::now() - start, DELAY);
    assert_eq!(complete["observedGeneration"], 2);
    for field in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        assert_eq!(complete[field], 3, "{field}");
    }
    assert_eq!(complete["unavailableReplicas"], 0);
    let conditions = complete["conditions"].as_array().unwrap();
    let progressed = conditions
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressed["reason"], "NewReplicaSetAvailable");
    assert!(conditions
        .iter()
        .any(|c| c["type"] == "Available" && c["status"] == "True"));

    // The next release arrives through the watch and is rolled out in turn.
    let released = Instant::now();
    let event =
        json!({"type": "MODIFIED", "object": deployment(3, "demoapp:v3", complete.clone())});
    watch.send_response(Response::new(Body::from(format!("{event}\n").into_bytes())));
    let progressing = next_status_patch(&mut handle, deployment(3, "demoapp:v3", json!({}))).await;
    assert_eq!(progressing["observedGeneration"], 3);
    assert_eq!(progressing["updatedReplicas"], 0);

    let (request, _quiet_watch) = handle.next_request().await.unwrap();
    assert!(is_watch(&request));
    let complete = next_status_patch(&mut handle, deployment(3, "demoapp:v3", json!({}))).await;
    assert_eq!(Instant::now() - released, DELAY);
    assert_eq!(complete["observedGeneration"], 3);
    assert_eq!(complete["updatedReplicas"], 3);

    controller.abort();
}

#[tokio::test(start_paused = true)]
async fn a_crashloop_image_is_reported_stuck_and_stays_so_until_the_next_release() {
    let crashloop = canaryd_lab::scenario::CRASHLOOP_IMAGE;
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let controller = tokio::spawn(workloads::run(Client::new(service, "default"), DELAY));
    let start = Instant::now();

    let (request, send) = handle.next_request().await.unwrap();
    assert!(!is_watch(&request));
    let old_status = json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
    respond(
        send,
        json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "10"},
               "items": [deployment(2, crashloop, old_status)]}),
    );
    let progressing = next_status_patch(&mut handle, deployment(2, crashloop, json!({}))).await;
    assert_eq!(progressing["updatedReplicas"], 0);
    let (request, watch) = handle.next_request().await.unwrap();
    assert!(is_watch(&request));

    let stuck = next_status_patch(&mut handle, deployment(2, crashloop, json!({}))).await;
    assert_eq!(Instant::now() - start, DELAY);
    assert_eq!(stuck["updatedReplicas"], 3);
    assert_eq!(stuck["availableReplicas"], 3, "the old pods still serve");
    assert_eq!(stuck["replicas"], 6);
    let progressing = stuck["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");

    // Its own write comes back through the watch: nothing more is written, ever.
    let event = json!({"type": "MODIFIED", "object": deployment(2, crashloop, stuck.clone())});
    watch.send_response(Response::new(Body::from(format!("{event}\n").into_bytes())));
    let (request, _quiet_watch) = handle.next_request().await.unwrap();
    assert!(is_watch(&request), "{}", request.uri());
    let quiet = tokio::time::timeout(DELAY * 20, handle.next_request()).await;
    assert!(quiet.is_err(), "a stuck rollout was written again");

    controller.abort();
}

//! The lab's API server through the ordinary kube-rs client: what canaryd relies on when it
//! talks to a cluster (CRUD, optimistic concurrency, the patch types, status, generation,
//! finalizers, watches with bookmarks and 410, watcher + reflector, CRD schema validation).

use std::time::Duration;

use canaryd_api::Canary;
use canaryd_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn lab(options: ApiServerOptions) -> (ApiServerHandle, Client) {
    let server = ApiServer::start(ApiServerOptions {
        install_canary_crd: true,
        install_istio_crds: true,
        namespaces: vec!["default".into(), "prod".into(), "stage".into()],
        ..options
    })
    .await
    .expect("the lab API server starts");
    let client = server.client().expect("a kube client");
    (server, client)
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "tier": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn canary(name: &str) -> Value {
    json!({
        "apiVersion": "canaryd.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "virtualService": {"name": "demoapp"},
            "prod": {"host": "flaskapp.prod.svc.cluster.local", "deployment": {"name": "flaskapp", "namespace": "prod"}},
            "stage": {"host": "flaskapp.stage.svc.cluster.local", "deployment": {"name": "flaskapp", "namespace": "stage"}},
            "steps": [0, 30, 60, 100]
        }
    })
}

fn api_error(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(response) => *response,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn deployments_support_create_get_list_update_conflict_and_delete() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "prod");
    let created = deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        created.spec.as_ref().unwrap().replicas,
        Some(1),
        "defaulted"
    );

    let again = deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap_err();
    assert_eq!(api_error(again).reason, "AlreadyExists");

    deployments
        .create(&PostParams::default(), &deployment("api", "api:1"))
        .await
        .unwrap();
    let webs = deployments
        .list(&ListParams::default().labels("app in (web),tier=web"))
        .await
        .unwrap();
    assert_eq!(webs.items.len(), 1);
    assert!(webs.metadata.resource_version.is_some());
    let not_web = deployments
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(not_web.items[0].name_any(), "api");

    let mut fresh = deployments.get("web").await.unwrap();
    let stale = fresh.clone();
    fresh.spec.as_mut().unwrap().replicas = Some(3);
    let updated = deployments
        .replace("web", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    let conflict = deployments
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    let conflict = api_error(conflict);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let gone = deployments.get("web").await.unwrap_err();
    assert_eq!(api_error(gone).code, 404);

    let no_namespace: Api<Deployment> = Api::namespaced(client, "missing");
    let refused = no_namespace
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap_err();
    assert_eq!(api_error(refused).code, 404);
}

#[tokio::test]
async fn merge_json_and_apply_patches_behave_like_a_real_server() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();

    let merged = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"release": "r1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.labels()["release"], "r1");
    assert_eq!(merged.metadata.generation, Some(1), "metadata-only change");

    let failed_test: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 5},
        {"op": "replace", "path": "/spec/replicas", "value": 2}
    ]))
    .unwrap();
    let err = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(failed_test),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 422);

    let guarded: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 2}
    ]))
    .unwrap();
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(guarded))
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(2));
    assert_eq!(patched.metadata.generation, Some(2));

    let apply = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}
    });
    let not_forced = deployments
        .patch("web", &PatchParams::apply("canaryd"), &Patch::Apply(&apply))
        .await
        .unwrap_err();
    assert_eq!(
        api_error(not_forced).code,
        409,
        "the image is owned by the client that created the Deployment"
    );
    let applied = deployments
        .patch(
            "web",
            &PatchParams::apply("canaryd").force(),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    let containers = applied
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(containers.containers[0].image.as_deref(), Some("web:2"));
    let managers: Vec<String> = applied
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"canaryd".to_string()), "{managers:?}");

    let rival = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:3"}]}}}
    });
    let conflict = deployments
        .patch("web", &PatchParams::apply("gitops"), &Patch::Apply(&rival))
        .await
        .unwrap_err();
    let conflict = api_error(conflict);
    assert_eq!(conflict.code, 409);
    assert!(conflict.message.contains("canaryd"), "{}", conflict.message);
    let forced = deployments
        .patch(
            "web",
            &PatchParams::apply("gitops").force(),
            &Patch::Apply(&rival),
        )
        .await
        .unwrap();
    let image = forced.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("web:3"));

    let created_by_apply = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fresh"},
        "spec": {"selector": {"matchLabels": {"app": "fresh"}},
                 "template": {"metadata": {"labels": {"app": "fresh"}},
                              "spec": {"containers": [{"name": "app", "image": "fresh:1"}]}}}
    });
    let fresh = deployments
        .patch(
            "fresh",
            &PatchParams::apply("canaryd"),
            &Patch::Apply(&created_by_apply),
        )
        .await
        .unwrap();
    assert_eq!(fresh.metadata.generation, Some(1));
}

#[tokio::test]
async fn status_is_a_subresource_and_does_not_bump_generation() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let canaries: Api<Canary> = Api::namespaced(client, "prod");
    let mut with_status = canary("flaskapp");
    with_status["status"] = json!({"phase": "Progressing"});
    let created: Canary = canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(with_status).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        created.status.is_none(),
        "status is dropped on create of a resource with a status subresource"
    );
    assert_eq!(created.spec.analysis.alpha, 0.01, "schema defaults applied");

    let status = json!({"status": {"phase": "Progressing", "step": 1, "stageWeight": 30}});
    let after_status = canaries
        .patch_status("flaskapp", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let status = after_status.status.clone().unwrap();
    assert_eq!(status.step, 1);
    assert_eq!(status.stage_weight, 30);
    assert_eq!(after_status.metadata.generation, Some(1));

    let spec_and_status = json!({"spec": {"steps": [0, 50, 100]}, "status": {"step": 2}});
    let after_spec = canaries
        .patch(
            "flaskapp",
            &PatchParams::default(),
            &Patch::Merge(&spec_and_status),
        )
        .await
        .unwrap();
    assert_eq!(after_spec.metadata.generation, Some(2));
    assert_eq!(after_spec.spec.steps, vec![0, 50, 100]);
    assert_eq!(
        after_spec.status.unwrap().step,
        1,
        "the main resource ignores status"
    );

    let applied_status = json!({
        "apiVersion": "canaryd.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "flaskapp"},
        "status": {"phase": "Succeeded", "step": 3, "stageWeight": 0, "observedGeneration": 2}
    });
    let applied = canaries
        .patch_status(
            "flaskapp",
            &PatchParams::apply("canaryd").force(),
            &Patch::Apply(&applied_status),
        )
        .await
        .unwrap();
    assert_eq!(applied.status.as_ref().unwrap().step, 3);
    assert_eq!(applied.metadata.generation, Some(2));
}

/// Canaries in prod as untyped objects, so a test can send what the Rust types would refuse.
fn untyped_canaries(client: kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        "prod",
        &kube::api::ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "Canary"),
            "canaries",
        ),
    )
}

#[tokio::test]
async fn a_canary_that_breaks_the_crd_schema_is_refused_with_422_naming_the_field() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let canaries = untyped_canaries(client);
    let mut bad = canary("bad");
    bad["spec"]["steps"] = json!([0, 130]);
    let err = canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap_err();
    let err = api_error(err);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("spec.steps[1]"), "{}", err.message);

    let mut missing = canary("missing");
    missing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("virtualService");
    let err = canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(missing).unwrap(),
        )
        .await
        .unwrap_err();
    let err = api_error(err);
    assert!(
        err.message.contains("spec.virtualService: Required value"),
        "{}",
        err.message
    );

    let mut unknown = canary("pruned");
    unknown["spec"]["bogus"] = json!(true);
    let created = canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(unknown).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        created.data["spec"].get("bogus").is_none(),
        "unknown fields are pruned"
    );
}

#[tokio::test]
async fn a_canary_with_ten_thousand_checks_is_refused_with_422_naming_the_bound() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let canaries = untyped_canaries(client);
    let check = |i: usize| json!({"name": format!("c{i}"), "url": "http://{{ host }}/health"});
    let create = |checks: Vec<Value>| {
        let mut c = canary("many-checks");
        c["spec"]["checks"] = json!(checks);
        let canaries = canaries.clone();
        async move {
            canaries
                .create(&PostParams::default(), &serde_json::from_value(c).unwrap())
                .await
        }
    };
    let err = api_error(create((0..10_000).map(check).collect()).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .contains("spec.checks: Too many: must have at most 20 items"),
        "{}",
        err.message
    );

    let mut long = check(0);
    long["url"] = json!(format!("http://{{{{ host }}}}/{}", "p".repeat(2048)));
    long["count"] = json!(10_000);
    let err = api_error(create(vec![long]).await.unwrap_err());
    assert_eq!(err.code, 422);
    for expected in [
        "spec.checks[0].url in body should be at most 2048 chars long",
        "spec.checks[0].count in body should be less than or equal to 100",
    ] {
        assert!(err.message.contains(expected), "{}", err.message);
    }

    let created = create((0..20).map(check).collect()).await.unwrap();
    assert_eq!(created.data["spec"]["checks"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    let mut held = deployment("held", "held:1");
    held.metadata.finalizers = Some(vec!["canaryd.dev/cleanup".into()]);
    deployments
        .create(&PostParams::default(), &held)
        .await
        .unwrap();
    deployments
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = deployments.get("held").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    deployments
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(deployments.get_opt("held").await.unwrap().is_none());
}

#[tokio::test]
async fn a_watch_streams_changes_bookmarks_and_ends_at_its_timeout() {
    let (_server, client) = lab(ApiServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ApiServerOptions::default()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    let list = deployments.list(&ListParams::default()).await.unwrap();
    let from = list.metadata.resource_version.unwrap();
    let params = WatchParams::default().timeout(30).labels("app=web");
    let mut events = deployments
        .watch(&params.disable_bookmarks(), &from)
        .await
        .unwrap()
        .boxed();
    let mut bookmarked = deployments
        .watch(&WatchParams::default().timeout(2), &from)
        .await
        .unwrap()
        .boxed();
    deployments
        .create(&PostParams::default(), &deployment("other", "x:1"))
        .await
        .unwrap();
    deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();

    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match event {
            WatchEvent::Added(d) => seen.push(format!("ADDED {}", d.name_any())),
            WatchEvent::Modified(d) => seen.push(format!("MODIFIED {}", d.name_any())),
            WatchEvent::Deleted(d) => seen.push(format!("DELETED {}", d.name_any())),
            other => panic!("unexpected {other:?}"),
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen, ["ADDED web", "MODIFIED web", "DELETED web"]);

    let mut bookmarks = 0;
    while let Some(event) = tokio::time::timeout(WAIT, bookmarked.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        if let WatchEvent::Bookmark(b) = event {
            assert!(!b.metadata.resource_version.is_empty());
            bookmarks += 1;
        }
    }
    assert!(
        bookmarks >= 1,
        "bookmarks arrive and the stream ends at timeoutSeconds"
    );
}

#[tokio::test]
async fn a_watch_from_a_forgotten_resource_version_gets_410_expired() {
    let (_server, client) = lab(ApiServerOptions {
        history_limit: 2,
        ..ApiServerOptions::default()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    for name in ["a", "b", "c", "d"] {
        deployments
            .create(&PostParams::default(), &deployment(name, "x:1"))
            .await
            .unwrap();
    }
    let mut events = deployments
        .watch(&WatchParams::default().timeout(5), "1")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn a_kube_rs_watcher_and_reflector_follow_the_server() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), "prod");
    canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(canary("one")).unwrap(),
        )
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<Canary>();
    let mut events = reflector(
        writer,
        watcher(canaries.clone(), watcher::Config::default()),
    )
    .boxed();
    let converged = |names: &[&str], two_testing: bool| {
        let state = reader.state();
        let mut have: Vec<String> = state.iter().map(|c| c.name_any()).collect();
        have.sort();
        have == names
            && (!two_testing
                || state.iter().any(|c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| format!("{:?}", s.phase) == "Testing")
                }))
    };
    // The reflector's store changes as its stream is polled: poll until it shows the state.
    tokio::time::timeout(WAIT, async {
        while !converged(&["one"], false) {
            events
                .try_next()
                .await
                .unwrap()
                .expect("the watcher keeps going");
        }
    })
    .await
    .expect("the reflector lists the existing Canary");

    canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(canary("two")).unwrap(),
        )
        .await
        .unwrap();
    canaries
        .patch_status(
            "two",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Testing"}})),
        )
        .await
        .unwrap();
    canaries
        .delete("one", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while !converged(&["two"], true) {
            events
                .try_next()
                .await
                .unwrap()
                .expect("the watcher keeps going");
        }
    })
    .await
    .expect("the reflector follows creation, status and deletion");
}

#[tokio::test]
async fn creating_a_crd_serves_its_resource_at_once_and_deleting_it_stops() {
    let (server, _) = lab(ApiServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).expect("kube-rs connects through the kubeconfig");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {"group": "example.dev", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}}}}}}]}
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = created
        .status
        .unwrap()
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    let apply = PatchParams::apply("gitops").force();
    let first = crds
        .patch("widgets.example.dev", &apply, &Patch::Apply(&crd))
        .await
        .unwrap();
    // A later second must not make a no-op apply a change (managedFields times).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = crds
        .patch("widgets.example.dev", &apply, &Patch::Apply(&crd))
        .await
        .unwrap();
    assert_eq!(
        first.resource_version(),
        second.resource_version(),
        "re-applying an unchanged CRD changes nothing"
    );

    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let (widget, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.dev", "v1", "Widget"))
        .expect("widgets are discoverable");
    assert!(caps.scope == kube::discovery::Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &widget);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}
    }))
    .unwrap();
    let stored = widgets
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert_eq!(stored.data["spec"]["size"], json!(3));

    crds.delete("widgets.example.dev", &DeleteParams::default())
        .await
        .unwrap();
    let err = widgets.get("w").await.unwrap_err();
    assert_eq!(api_error(err).code, 404);
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(namespaces.get("prod").await.is_ok());
}

#[tokio::test]
async fn events_recorded_through_events_k8s_io_are_core_events_too() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use kube::runtime::events::{Event, EventType, Recorder};
    use kube::Resource;

    let (_server, client) = lab(ApiServerOptions::default()).await;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), "prod");
    let created = canaries
        .create(
            &PostParams::default(),
            &serde_json::from_value(canary("flaskapp")).unwrap(),
        )
        .await
        .unwrap();
    let recorder = Recorder::new(client.clone(), "canaryd".into());
    let event = Event {
        type_: EventType::Warning,
        reason: "RolledBack".into(),
        note: Some("stage is worse than prod".into()),
        action: "Rollback".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &created.object_ref(&()))
        .await
        .unwrap();
    recorder
        .publish(&event, &created.object_ref(&()))
        .await
        .unwrap();

    let core: Api<CoreEvent> = Api::namespaced(client, "prod");
    let about_canary = core
        .list(
            &ListParams::default()
                .fields("involvedObject.kind=Canary,involvedObject.name=flaskapp"),
        )
        .await
        .unwrap();
    assert_eq!(
        about_canary.items.len(),
        1,
        "the repeat is a series, not a new event"
    );
    let event = &about_canary.items[0];
    assert_eq!(event.message.as_deref(), Some("stage is worse than prod"));
    assert_eq!(event.reason.as_deref(), Some("RolledBack"));
    assert_eq!(event.reporting_component.as_deref(), Some("canaryd"));
    assert_eq!(event.series.as_ref().and_then(|s| s.count), Some(2));
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_initial_objects_then_changes() {
    let (_server, client) = lab(ApiServerOptions::default()).await;
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();
    let mut events = watcher(
        deployments.clone(),
        watcher::Config::default().streaming_lists(),
    )
    .boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitApply(d)) => initial.push(d.name_any()),
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => panic!("the watch ended before the initial events were complete"),
        }
    }
    assert_eq!(initial, ["web"]);
    deployments
        .create(&PostParams::default(), &deployment("api", "api:1"))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Apply(d)) => assert_eq!(d.name_any(), "api"),
        other => panic!("expected the new Deployment, got {other:?}"),
    }
}

const RICH_VIRTUAL_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: demoapp, namespace: prod, labels: {app: demo}}
spec:
  hosts: [demoapp.example.com]
  gateways: [prod/demo-gateway]
  exportTo: ["."]
  http:
  - name: admin
    match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: admin.prod.svc.cluster.local}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 0.1}}}
    corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
  - name: primary
    match:
    - uri: {prefix: /}
      headers: {x-tenant: {exact: a}}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
    timeout: 10s
    headers: {request: {set: {x-canary: "true"}}}
    mirror: {host: shadow.prod.svc.cluster.local}
    mirrorPercentage: {value: 5.5}
    route:
    - destination: {host: flaskapp.prod.svc.cluster.local, port: {number: 80}, subset: v1}
      weight: 100
      headers: {response: {add: {x-env: prod}}}
    - destination: {host: flaskapp.stage.svc.cluster.local, port: {number: 80}}
      weight: 0
  tcp:
  - route: [{destination: {host: db}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: demo-gateway, namespace: prod}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [demoapp.example.com]
    tls: {mode: SIMPLE, credentialName: demoapp-cert}
"#;

#[tokio::test]
async fn canaryd_shifts_istio_weights_with_a_guarded_json_patch_and_keeps_every_field() {
    use canaryd_api::virtual_service::VirtualService;
    const PROD: &str = "flaskapp.prod.svc.cluster.local";
    const STAGE: &str = "flaskapp.stage.svc.cluster.local";

    let (server, client) = lab(ApiServerOptions::default()).await;
    let installed = server
        .install(RICH_VIRTUAL_SERVICE)
        .expect("every Istio field of the manifest is in the CRD schema (strict validation)");
    assert_eq!(
        installed[1]["spec"]["servers"][0]["tls"]["credentialName"],
        json!("demoapp-cert")
    );
    let original = installed[0].clone();
    let services: Api<VirtualService> = Api::namespaced(client, "prod");
    let vs = services.get("demoapp").await.unwrap();
    let split = vs.spec.traffic_split(None, PROD, STAGE).unwrap();
    let patch: json_patch::Patch =
        serde_json::from_value(split.weight_patch(PROD, STAGE, 30)).unwrap();
    let shifted = services
        .patch(
            "demoapp",
            &PatchParams::default(),
            &Patch::Json::<()>(patch.clone()),
        )
        .await
        .unwrap();
    let shifted = serde_json::to_value(&shifted).unwrap();
    let mut expected = original["spec"].clone();
    expected["http"][1]["route"][0]["weight"] = json!(70);
    expected["http"][1]["route"][1]["weight"] = json!(30);
    assert_eq!(shifted["spec"], expected);
    assert_eq!(shifted["metadata"]["generation"], json!(2));

    let mut moved = serde_json::to_value(services.get("demoapp").await.unwrap()).unwrap();
    moved["spec"]["http"][1]["route"]
        .as_array_mut()
        .unwrap()
        .swap(0, 1);
    services
        .replace(
            "demoapp",
            &PostParams::default(),
            &serde_json::from_value(moved).unwrap(),
        )
        .await
        .unwrap();
    let stale = services
        .patch(
            "demoapp",
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_error(stale).code,
        422,
        "the test ops guard against moved destinations"
    );
}

#[tokio::test]
async fn a_lease_changes_hands_only_with_the_current_resource_version() {
    use k8s_openapi::api::coordination::v1::Lease;

    let (_server, client) = lab(ApiServerOptions::default()).await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let lease = |holder: &str| -> Lease {
        serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "canaryd-leader"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
        }))
        .unwrap()
    };
    let held = leases
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    let taken = leases
        .create(&PostParams::default(), &lease("b"))
        .await
        .unwrap_err();
    assert_eq!(api_error(taken).reason, "AlreadyExists");

    let mut renewed = held.clone();
    renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(20);
    leases
        .replace("canaryd-leader", &PostParams::default(), &renewed)
        .await
        .unwrap();

    let mut usurped = held;
    usurped.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let stale = leases
        .replace("canaryd-leader", &PostParams::default(), &usurped)
        .await
        .unwrap_err();
    assert_eq!(api_error(stale).code, 409);
    let current = leases.get("canaryd-leader").await.unwrap();
    assert_eq!(current.spec.unwrap().holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn the_write_log_records_who_wrote_what_in_commit_order_and_skips_no_ops() {
    use canaryd_lab::apiserver::{Resulting, Verb};
    let (server, _) = lab(ApiServerOptions::default()).await;
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "demoapp", "namespace": "prod"},
        "spec": {"hosts": ["demoapp"], "http": [{"name": "primary", "route": [
            {"destination": {"host": "prod.local"}, "weight": 100},
            {"destination": {"host": "stage.local"}, "weight": 0}]}]}
    });
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
    let as_writer = |writer: &str| -> Api<DynamicObject> {
        Api::namespaced_with(server.client_as(writer).unwrap(), "prod", &resource)
    };
    let object: DynamicObject = serde_json::from_value(vs).unwrap();
    as_writer("canaryd-a")
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let weights = |stage: i64| {
        Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 100 - stage},
                {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": stage}
            ]))
            .unwrap(),
        )
    };
    let params = PatchParams::default();
    as_writer("canaryd-b")
        .patch("demoapp", &params, &weights(30))
        .await
        .unwrap();
    // The same weights again change nothing: no commit, no record.
    as_writer("canaryd-a")
        .patch("demoapp", &params, &weights(30))
        .await
        .unwrap();
    let canaries = untyped_canaries(server.client_as("canaryd-a").unwrap());
    let created: DynamicObject = serde_json::from_value(canary("flaskapp")).unwrap();
    canaries
        .create(&PostParams::default(), &created)
        .await
        .unwrap();
    let status = json!({"status": {"phase": "Progressing", "step": 1, "stageWeight": 30,
        "stageRevision": "abc"}});
    canaries
        .patch_status("flaskapp", &params, &Patch::Merge(&status))
        .await
        .unwrap();
    canaries
        .delete("flaskapp", &DeleteParams::default())
        .await
        .unwrap();

    let log = server.write_log();
    let summary: Vec<(u64, &str, Verb, &str, Option<&str>)> = log
        .iter()
        .map(|r| {
            let who = r.writer.as_str();
            (r.seq, who, r.verb, r.kind.as_str(), r.subresource)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "canaryd-a", Verb::Create, "VirtualService", None),
            (2, "canaryd-b", Verb::Patch, "VirtualService", None),
            (3, "canaryd-a", Verb::Create, "Canary", None),
            (4, "canaryd-a", Verb::Patch, "Canary", Some("status")),
            (5, "canaryd-a", Verb::Delete, "Canary", None),
        ]
    );
    assert_eq!(log[0].weight(Some("primary"), "stage.local"), Some(0));
    assert_eq!(log[1].weight(Some("primary"), "stage.local"), Some(30));
    assert_eq!(log[1].weight(Some("primary"), "prod.local"), Some(70));
    assert!(log
        .windows(2)
        .all(|w| w[0].resource_version < w[1].resource_version));
    match &log[3].after {
        Resulting::Canary {
            phase,
            step,
            stage_weight,
            stage_revision,
            ..
        } => assert_eq!(
            (
                phase.as_deref(),
                *step,
                *stage_weight,
                stage_revision.as_deref()
            ),
            (Some("Progressing"), Some(1), Some(30), Some("abc"))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.write_log_since(4).len(), 1);
    // The lab's own client is `canaryd-lab`; a client without a token is `anonymous`.
    let deployments: Api<Deployment> = Api::namespaced(server.client().unwrap(), "prod");
    deployments
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();
    let last = server.write_log().pop().unwrap();
    assert_eq!(
        (last.writer.as_str(), last.kind.as_str()),
        ("canaryd-lab", "Deployment")
    );
    assert!(
        matches!(last.after, Resulting::Deployment { ref image, .. } if image.as_deref() == Some("web:1"))
    );
}

#[tokio::test]
async fn a_delay_holds_back_the_answers_it_names_until_it_is_cleared() {
    use canaryd_lab::apiserver::Delay;
    let (server, client) = lab(ApiServerOptions::default()).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(server.client_as("canaryd-a").unwrap(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "prod");
    let timed = |started: std::time::Instant| started.elapsed();
    server.delay_responses(Some(
        Delay::all(Duration::from_millis(800))
            .of_resource("leases")
            .of_writer("canaryd-a"),
    ));
    let started = std::time::Instant::now();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "canaryd"}, "spec": {"holderIdentity": "canaryd-a"}});
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(lease).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        timed(started) >= Duration::from_millis(800),
        "the Lease's answer waited"
    );
    let started = std::time::Instant::now();
    deployments.list(&ListParams::default()).await.unwrap();
    assert!(
        timed(started) < Duration::from_millis(800),
        "Deployments are not delayed"
    );
    // The write went through at once; only its answer waited.
    assert_eq!(server.write_log().last().unwrap().kind, "Lease");
    server.delay_responses(None);
    let started = std::time::Instant::now();
    leases.get("canaryd").await.unwrap();
    assert!(timed(started) < Duration::from_millis(800));
    assert_eq!(server.delayed_responses(), 1);
}

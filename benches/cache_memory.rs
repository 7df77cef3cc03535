//! Heap the daemon's Deployment cache holds for 10,000 Deployments as `kubectl apply` leaves
//! them (a last-applied manifest annotation, `managedFields` of the applier and of the
//! Deployment controller, a pod template with env, probes and resources), with every object
//! as the API serves it (the baseline) and trimmed as `canaryd run` caches it
//! (`canaryd::cluster::trim`). Counted by an instrumented allocator: bytes still allocated
//! once the cache is built. Run: `cargo bench --bench cache_memory`.

use std::alloc::System;

use canaryd::cluster::trim;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{json, Map, Value};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEPLOYMENTS: usize = 10_000;

/// The manifest a team applies.
fn manifest(i: usize) -> Value {
    let env: Vec<Value> = (0..10)
        .map(|k| json!({"name": format!("SETTING_{k}"), "value": format!("value-{i}-{k}")}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("app-{i}"), "namespace": format!("team-{}", i % 50),
                     "labels": {"app": format!("app-{i}"), "team": format!("team-{}", i % 50)}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": format!("app-{i}")}},
            "template": {
                "metadata": {"labels": {"app": format!("app-{i}"), "version": "v1"}},
                "spec": {"containers": [{
                    "name": "app", "image": format!("registry.example.com/team/app-{i}:1.4.{}", i % 7),
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "env": env,
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                       "periodSeconds": 5},
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                      "periodSeconds": 10}
                }]}
            }
        }
    })
}

/// `managedFields`' `fieldsV1` for the fields of `v`: `f:<key>` per object key, `k:{"name":..}`
/// per named list item, as the API server writes them.
fn fields_v1(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            out.insert(".".into(), json!({}));
            for (k, v) in map {
                out.insert(format!("f:{k}"), fields_v1(v));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Map::new();
            for item in items {
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    out.insert(format!("k:{{\"name\":\"{name}\"}}"), fields_v1(item));
                }
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// The Deployment as the API serves it after `kubectl apply` and a rollout.
fn served(i: usize) -> Deployment {
    let mut m = manifest(i);
    let applied = serde_json::to_string(&m).unwrap();
    let spec_fields = fields_v1(&m["spec"]);
    m["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": applied,
        "deployment.kubernetes.io/revision": "4"
    });
    m["metadata"]["generation"] = json!(4);
    m["metadata"]["uid"] = json!(format!("5b1c6f1e-0000-4000-8000-{i:012}"));
    m["metadata"]["resourceVersion"] = json!(format!("{}", 100_000 + i));
    m["status"] = json!({
        "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3,
        "availableReplicas": 3,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.",
             "lastUpdateTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"app-{i}-7d9f8c6b5d\" has successfully progressed."),
             "lastUpdateTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T09:00:00Z"}
        ]
    });
    let status_fields = fields_v1(&m["status"]);
    m["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1",
         "time": "2026-12-01T09:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {".": {},
             "f:kubectl.kubernetes.io/last-applied-configuration": {}}, "f:labels": {}},
             "f:spec": spec_fields}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
         "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}},
             "f:status": status_fields}}
    ]);
    serde_json::from_value(m).unwrap()
}

/// Bytes the cache holds once every Deployment went through `prepare` and into it.
fn cached_bytes(prepare: fn(&mut Deployment)) -> (usize, Writer<Deployment>) {
    let region = Region::new(GLOBAL);
    let mut writer = Writer::<Deployment>::default();
    for i in 0..DEPLOYMENTS {
        let mut d = served(i);
        prepare(&mut d);
        writer.apply_watcher_event(&watcher::Event::Apply(d));
    }
    let change = region.change();
    let held = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    (held.max(0) as usize, writer)
}

fn main() {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let (whole, kept) = cached_bytes(|_| {});
    drop(kept);
    let (trimmed, kept) = cached_bytes(trim::deployment);
    assert_eq!(kept.as_reader().state().len(), DEPLOYMENTS);
    println!(
        "cache of {DEPLOYMENTS} Deployments: as served {:.1} MiB, trimmed {:.1} MiB ({:.2}x of the \
         baseline, {:.1} KiB per Deployment)",
        mib(whole),
        mib(trimmed),
        trimmed as f64 / whole as f64,
        trimmed as f64 / DEPLOYMENTS as f64 / 1024.0
    );
}

//! What the watch caches keep of each object: everything reconcile reads, nothing else. A
//! Deployment applied with `kubectl apply` carries its whole previous manifest in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, and every object carries
//! `managedFields` (one entry per writer, with the set of fields each owns): together often
//! more than the object itself, and canaryd caches every Deployment of the cluster. Both are
//! dropped before an object enters the cache; canaryd never writes a cached object back
//! whole (its writes are JSON patches of single fields), so nothing is lost on the server.
//! A VirtualService keeps its `managedFields`: drift detection names the writer of foreign
//! weights from them.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DynamicObject;
use kube::core::ObjectMeta;

use crate::api::virtual_service::VirtualService;

/// The annotation in which `kubectl apply` keeps the last applied manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn drop_last_applied(meta: &mut ObjectMeta) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// A Deployment as the cache keeps it: no `managedFields`, no last-applied manifest.
pub fn deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    drop_last_applied(&mut d.metadata);
}

/// A VirtualService as the cache keeps it: no last-applied manifest.
pub fn virtual_service(vs: &mut VirtualService) {
    drop_last_applied(&mut vs.metadata);
}

/// A Canary as the cache keeps it: no `managedFields`, no last-applied manifest.
pub fn canary(c: &mut DynamicObject) {
    c.metadata.managed_fields = None;
    drop_last_applied(&mut c.metadata);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_drops_what_reconcile_never_reads_and_keeps_the_rest() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "flaskapp", "namespace": "stage", "generation": 4,
                "annotations": {LAST_APPLIED: "{\"apiVersion\":\"apps/v1\"}", "team": "web"},
                "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "selector": {"matchLabels": {"app": "flaskapp"}},
                "template": {"metadata": {"labels": {"app": "flaskapp"}},
                             "spec": {"containers": [{"name": "app", "image": "demoapp:v2"}]}}
            },
            "status": {"observedGeneration": 4, "replicas": 2}
        }))
        .unwrap();
        let before = d.clone();
        deployment(&mut d);
        assert_eq!(d.metadata.managed_fields, None);
        let annotations = d.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.len(), 1, "only the last-applied manifest goes");
        assert_eq!(annotations["team"], "web");
        assert_eq!((&d.spec, &d.status), (&before.spec, &before.status));
        assert_eq!(d.metadata.generation, Some(4));

        let mut vs: VirtualService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demoapp", "namespace": "prod",
                         "annotations": {LAST_APPLIED: "{}"},
                         "managedFields": [{"manager": "argocd-controller", "operation": "Apply"}]},
            "spec": {"hosts": ["demoapp.example.com"]}
        }))
        .unwrap();
        virtual_service(&mut vs);
        assert!(vs.metadata.annotations.unwrap().is_empty());
        assert_eq!(
            vs.metadata.managed_fields.unwrap()[0].manager.as_deref(),
            Some("argocd-controller"),
            "drift detection reads who wrote the weights"
        );
    }
}

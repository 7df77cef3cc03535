//! Deployments as the lifecycle sees them: a revision (a stable hash of the pod template's
//! spec) and readiness; and the promotion patch that brings prod to stage's template.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::rollout::Workload;

/// A stable hash of the pod template's spec.
///
/// The template's metadata (labels, annotations) is left out: prod keeps its own labels when
/// it is promoted, and labels do not change what runs. serde_json orders object keys, so the
/// same spec always hashes the same.
pub fn revision(deployment: &Deployment) -> String {
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let digest = Sha256::digest(spec.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// Rolled out: the controller saw the current generation and every replica is updated and
/// available, with no old replicas left.
pub fn is_ready(deployment: &Deployment) -> bool {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) == desired
        && status.available_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
}

pub fn observe(deployment: &Deployment) -> Workload {
    Workload {
        revision: revision(deployment),
        ready: is_ready(deployment),
    }
}

/// A Deployment without a spec: its pod template cannot be copied.
#[derive(Debug, thiserror::Error)]
#[error("the {0} Deployment has no spec")]
pub struct NoSpec(pub &'static str);

/// The JSON patch that gives prod stage's pod template while prod keeps its own template
/// labels (its selector must keep matching). Guarded by a `test` on prod's resourceVersion,
/// so a prod changed meanwhile is re-read rather than overwritten.
pub fn copy_template_patch(stage: &Deployment, prod: &Deployment) -> Result<Value, NoSpec> {
    let stage_template = stage
        .spec
        .as_ref()
        .map(|s| &s.template)
        .ok_or(NoSpec("stage"))?;
    let prod_spec = prod.spec.as_ref().ok_or(NoSpec("prod"))?;
    let mut template = serde_json::to_value(stage_template).expect("a pod template serializes");
    let prod_labels = serde_json::to_value(
        prod_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
    )
    .expect("labels serialize");
    template["metadata"]["labels"] = prod_labels;
    let version = prod.metadata.resource_version.clone().unwrap_or_default();
    Ok(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/spec/template", "value": template},
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn deployment(ns: &str, image: &str, env: &str) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "flaskapp", "namespace": ns, "generation": 2, "resourceVersion": "7"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "flaskapp", "env": env}},
                "template": {
                    "metadata": {"labels": {"app": "flaskapp", "env": env}, "annotations": {"a": "1"}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            },
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        }))
        .unwrap()
    }

    #[test]
    fn revision_follows_the_pod_spec_not_labels() {
        let a = deployment("prod", "demoapp:v1", "prod");
        let b = deployment("stage", "demoapp:v1", "stage");
        let c = deployment("stage", "demoapp:v2", "stage");
        assert_eq!(revision(&a), revision(&b));
        assert_ne!(revision(&b), revision(&c));
        assert_eq!(revision(&c), revision(&c.clone()));
        assert_eq!(revision(&a).len(), 16);
    }

    #[test]
    fn readiness_needs_the_current_generation_and_all_replicas() {
        let mut d = deployment("prod", "demoapp:v1", "prod");
        assert!(is_ready(&d));
        d.metadata.generation = Some(3);
        assert!(!is_ready(&d), "controller has not seen the new spec");
        d.status.as_mut().unwrap().observed_generation = Some(3);
        d.status.as_mut().unwrap().available_replicas = Some(1);
        assert!(!is_ready(&d), "a replica is not available");
        d.status.as_mut().unwrap().available_replicas = Some(2);
        d.status.as_mut().unwrap().replicas = Some(3);
        assert!(!is_ready(&d), "an old replica is still running");
    }

    #[test]
    fn promotion_copies_stage_template_and_keeps_prod_labels() {
        let stage = deployment("stage", "demoapp:v2", "stage");
        let prod = deployment("prod", "demoapp:v1", "prod");
        let patch: json_patch::Patch =
            serde_json::from_value(copy_template_patch(&stage, &prod).unwrap()).unwrap();
        let mut doc = serde_json::to_value(&prod).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let promoted: Deployment = serde_json::from_value(doc).unwrap();
        assert_eq!(revision(&promoted), revision(&stage));
        let tpl = &promoted.spec.as_ref().unwrap().template;
        assert_eq!(
            tpl.metadata.as_ref().unwrap().labels.as_ref().unwrap()["env"],
            "prod",
            "prod's selector still matches"
        );
        assert_eq!(promoted.spec.unwrap().selector, prod.spec.unwrap().selector);
    }
}

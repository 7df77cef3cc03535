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

/// Longest text [`why_not_ready`] takes from the Deployment's conditions (which anyone who
/// may write the Deployment's status writes).
const MAX_CONDITION_TEXT: usize = 200;

/// Why the Deployment is not ready, in words for a message: whether its controller saw the
/// spec, the replica counts, and its failing conditions (such as `ProgressDeadlineExceeded`,
/// which a crash loop or an image that cannot be pulled ends in). `None` when it is ready.
pub fn why_not_ready(deployment: &Deployment) -> Option<String> {
    if is_ready(deployment) {
        return None;
    }
    let Some(status) = &deployment.status else {
        return Some("the Deployment controller has reported no status yet".into());
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("the Deployment controller has not seen the current spec yet".into());
    }
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let mut why = format!(
        "{} of {desired} replicas updated, {} available",
        status.updated_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0)
    );
    let old = status.replicas.unwrap_or(0) - status.updated_replicas.unwrap_or(0);
    if old > 0 {
        why.push_str(&format!(", {old} old still running"));
    }
    let failing =
        status.conditions.iter().flatten().filter(|c| {
            c.status != "True" || c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    for c in failing {
        let reason = c.reason.as_deref().unwrap_or("");
        let message = c.message.as_deref().unwrap_or("");
        let text = format!("{}={} {reason}: {message}", c.type_, c.status);
        why.push_str("; ");
        why.push_str(&crate::api::limits::bounded(
            text.trim(),
            MAX_CONDITION_TEXT,
        ));
    }
    Some(why)
}

pub fn observe(deployment: &Deployment) -> Workload {
    Workload {
        revision: revision(deployment),
        ready: is_ready(deployment),
        why_not_ready: why_not_ready(deployment),
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
    fn a_deployment_that_is_not_ready_says_why() {
        let mut d = deployment("stage", "demoapp:crashloop", "stage");
        assert_eq!(why_not_ready(&d), None);
        d.metadata.generation = Some(3);
        assert_eq!(
            why_not_ready(&d).unwrap(),
            "the Deployment controller has not seen the current spec yet"
        );
        d.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": 3, "replicas": 4, "updatedReplicas": 2,
                "availableReplicas": 2, "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                     "message": format!("ReplicaSet \"flaskapp-1\" has timed out progressing.{}", "!".repeat(500))}
                ]
            }))
            .unwrap(),
        );
        let why = why_not_ready(&d).unwrap();
        assert!(
            why.starts_with(
                "2 of 2 replicas updated, 2 available, 2 old still running; Progressing=False \
                 ProgressDeadlineExceeded: ReplicaSet \"flaskapp-1\" has timed out progressing."
            ),
            "{why}"
        );
        assert!(why.len() < 300, "a condition's text is cut: {}", why.len());
        assert!(!why.contains("MinimumReplicasAvailable"), "{why}");
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

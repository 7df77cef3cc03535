//! Deployments as the lifecycle sees them: a revision (the images the pod template runs,
//! plus what `spec.revision` names: `canaryd_api::release`) and readiness; and the promotion
//! patches that bring prod to stage's release.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use serde_json::{json, Value};

use crate::api::release;
use crate::api::RevisionSpec;
use crate::rollout::Workload;

/// The release the Deployment's pod template runs (`demoapp:v2`).
pub fn revision(deployment: &Deployment, rule: &RevisionSpec) -> String {
    release::revision(template(deployment), rule)
}

fn template(deployment: &Deployment) -> &PodTemplateSpec {
    static EMPTY: std::sync::OnceLock<PodTemplateSpec> = std::sync::OnceLock::new();
    deployment
        .spec
        .as_ref()
        .map(|s| &s.template)
        .unwrap_or_else(|| EMPTY.get_or_init(PodTemplateSpec::default))
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

pub fn observe(deployment: &Deployment, rule: &RevisionSpec) -> Workload {
    Workload {
        revision: revision(deployment, rule),
        ready: is_ready(deployment),
        why_not_ready: why_not_ready(deployment),
    }
}

/// Why prod cannot be given stage's release by a patch.
#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("the {0} Deployment has no spec")]
    NoSpec(&'static str),
    #[error(
        "{side} has no {kind} named \"{name}\" and the other has one; promotion mode images \
         sets images by container name, so both must have the same containers: add it to \
         {side}'s chart, or promote with mode webhook"
    )]
    ContainerMismatch {
        side: &'static str,
        kind: &'static str,
        name: String,
    },
    #[error(
        "spec.revision.metadata names \"{0}\", a label of prod's selector; prod cannot take \
         stage's value without leaving its own pods: name an annotation or another label"
    )]
    SelectorKey(String),
    #[error(
        "spec.revision.env names \"{name}\", which stage's container \"{container}\" sets \
         from a reference (valueFrom), not a value; promotion copies only literal values: name \
         an env var with a value"
    )]
    NotLiteral { container: String, name: String },
}

/// The JSON patch that gives prod stage's images (containers and init containers, matched by
/// name) and the values `rule` names, and changes nothing else of prod: its env, resources,
/// replicas, config references, service account and labels stay its own. Guarded by a `test`
/// on prod's resourceVersion, so a prod changed meanwhile is re-read rather than overwritten.
pub fn images_patch(
    stage: &Deployment,
    prod: &Deployment,
    rule: &RevisionSpec,
) -> Result<Value, PromotionError> {
    let stage_pod = stage
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or(PromotionError::NoSpec("stage"))?;
    let prod_spec = prod.spec.as_ref().ok_or(PromotionError::NoSpec("prod"))?;
    let prod_pod = prod_spec
        .template
        .spec
        .as_ref()
        .ok_or(PromotionError::NoSpec("prod"))?;
    let version = prod.metadata.resource_version.clone().unwrap_or_default();
    let mut ops =
        vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": version})];
    let lists: [(&str, &str, &[Container], &[Container]); 2] = [
        (
            "containers",
            "container",
            &stage_pod.containers,
            &prod_pod.containers,
        ),
        (
            "initContainers",
            "init container",
            stage_pod.init_containers.as_deref().unwrap_or_default(),
            prod_pod.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (field, kind, stage_list, prod_list) in lists {
        matched(stage_list, prod_list, "prod", kind)?;
        matched(prod_list, stage_list, "stage", kind)?;
        for (i, p) in prod_list.iter().enumerate() {
            let s = stage_list
                .iter()
                .find(|s| s.name == p.name)
                .expect("matched above");
            let path = format!("/spec/template/spec/{field}/{i}");
            if s.image != p.image {
                ops.push(json!({"op": "add", "path": format!("{path}/image"), "value": s.image}));
            }
            env_ops(&rule.env, s, p, &path, &mut ops)?;
        }
    }
    metadata_ops(&rule.metadata, template(stage), prod, &mut ops)?;
    Ok(Value::Array(ops))
}

/// Every container of `from` has a namesake in `to`, else `side` (the owner of `to`) misses it.
fn matched(
    from: &[Container],
    to: &[Container],
    side: &'static str,
    kind: &'static str,
) -> Result<(), PromotionError> {
    match from.iter().find(|c| !to.iter().any(|t| t.name == c.name)) {
        Some(c) => Err(PromotionError::ContainerMismatch {
            side,
            kind,
            name: c.name.clone(),
        }),
        None => Ok(()),
    }
}

/// Stage's literal values of the env vars `names`, set in prod's container of the same name
/// (added when prod's lacks it, removed when stage's lacks it).
fn env_ops(
    names: &[String],
    stage: &Container,
    prod: &Container,
    path: &str,
    ops: &mut Vec<Value>,
) -> Result<(), PromotionError> {
    let prod_env = prod.env.as_deref().unwrap_or_default();
    let mut removed = Vec::new();
    let mut added_list = false;
    for name in names {
        let found = stage.env.iter().flatten().find(|e| &e.name == name);
        let value = match found {
            Some(e) if e.value_from.is_some() => {
                return Err(PromotionError::NotLiteral {
                    container: stage.name.clone(),
                    name: name.clone(),
                })
            }
            Some(e) => e.value.clone().unwrap_or_default(),
            None => {
                removed.extend(prod_env.iter().position(|e| &e.name == name));
                continue;
            }
        };
        let entry = json!({"name": name, "value": value});
        match prod_env.iter().position(|e| &e.name == name) {
            Some(j)
                if prod_env[j].value.as_deref() == Some(value.as_str())
                    && prod_env[j].value_from.is_none() => {}
            Some(j) => ops
                .push(json!({"op": "replace", "path": format!("{path}/env/{j}"), "value": entry})),
            None if prod.env.is_none() && !added_list => {
                added_list = true;
                ops.push(json!({"op": "add", "path": format!("{path}/env"), "value": [entry]}))
            }
            None => ops.push(json!({"op": "add", "path": format!("{path}/env/-"), "value": entry})),
        }
    }
    // Highest index first, so each removal leaves the others' indices as they were.
    removed.sort_unstable_by(|a, b| b.cmp(a));
    for j in removed {
        ops.push(json!({"op": "remove", "path": format!("{path}/env/{j}")}));
    }
    Ok(())
}

/// Stage's values of the pod-template annotations or labels `keys`, set in prod's template.
fn metadata_ops(
    keys: &[String],
    stage: &PodTemplateSpec,
    prod: &Deployment,
    ops: &mut Vec<Value>,
) -> Result<(), PromotionError> {
    let prod_meta = template(prod).metadata.clone().unwrap_or_default();
    let selector = prod
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let stage_meta = stage.metadata.clone().unwrap_or_default();
    // Maps this patch creates in prod's template (the first key adds the whole map).
    let mut created: Vec<&str> = Vec::new();
    for key in keys {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        let (map, value, prod_map) = match stage_meta.annotations.as_ref().and_then(|a| a.get(key))
        {
            Some(v) => ("annotations", v, &prod_meta.annotations),
            None => match stage_meta.labels.as_ref().and_then(|l| l.get(key)) {
                Some(v) => {
                    if selector.contains_key(key) {
                        return Err(PromotionError::SelectorKey(key.clone()));
                    }
                    ("labels", v, &prod_meta.labels)
                }
                None => {
                    // Stage does not set it: neither may prod, or they never match.
                    for (map, prod_map) in [
                        ("annotations", &prod_meta.annotations),
                        ("labels", &prod_meta.labels),
                    ] {
                        if prod_map.as_ref().is_some_and(|m| m.contains_key(key)) {
                            if map == "labels" && selector.contains_key(key) {
                                return Err(PromotionError::SelectorKey(key.clone()));
                            }
                            ops.push(json!({"op": "remove",
                                "path": format!("/spec/template/metadata/{map}/{escaped}")}));
                        }
                    }
                    continue;
                }
            },
        };
        if prod_map.as_ref().and_then(|m| m.get(key)) == Some(value) {
            continue;
        }
        if prod_map.is_none() && !created.contains(&map) {
            created.push(map);
            ops.push(
                json!({"op": "add", "path": format!("/spec/template/metadata/{map}"),
                "value": {key: value}}),
            );
        } else {
            ops.push(
                json!({"op": "add", "path": format!("/spec/template/metadata/{map}/{escaped}"),
                "value": value}),
            );
        }
    }
    Ok(())
}

/// The JSON patch that gives prod stage's whole pod template while prod keeps its own
/// template labels (its selector must keep matching): stage's env, config references,
/// service account and resources replace prod's. Guarded like [`images_patch`].
pub fn copy_template_patch(stage: &Deployment, prod: &Deployment) -> Result<Value, PromotionError> {
    let stage_template = stage
        .spec
        .as_ref()
        .map(|s| &s.template)
        .ok_or(PromotionError::NoSpec("stage"))?;
    let prod_spec = prod.spec.as_ref().ok_or(PromotionError::NoSpec("prod"))?;
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
    fn revision_is_the_image_not_the_environment() {
        let rule = RevisionSpec::default();
        let a = deployment("prod", "demoapp:v1", "prod");
        let b = deployment("stage", "demoapp:v1", "stage");
        let c = deployment("stage", "demoapp:v2", "stage");
        assert_eq!(revision(&a, &rule), revision(&b, &rule));
        assert_ne!(revision(&b, &rule), revision(&c, &rule));
        assert_eq!(revision(&c, &rule), "demoapp:v2");
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

    /// prod and stage as two Helm releases of one chart differ on purpose: env, config
    /// references, resources, service account, replicas, labels.
    fn environment(ns: &str, image: &str, version: &str) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "flaskapp", "namespace": ns, "generation": 2, "resourceVersion": "7"},
            "spec": {
                "replicas": if ns == "prod" { 6 } else { 1 },
                "selector": {"matchLabels": {"app": "flaskapp", "env": ns}},
                "template": {
                    "metadata": {"labels": {"app": "flaskapp", "env": ns},
                                 "annotations": {"app.kubernetes.io/version": version}},
                    "spec": {
                        "serviceAccountName": format!("flaskapp-{ns}"),
                        "initContainers": [{"name": "migrate", "image": image.replace("demoapp", "migrate"),
                            "env": [{"name": "DATABASE_URL", "value": format!("postgres://{ns}-db/app")}]}],
                        "containers": [
                            {"name": "app", "image": image,
                             "env": [{"name": "DATABASE_URL", "value": format!("postgres://{ns}-db/app")},
                                     {"name": "FEATURE_X", "value": (ns == "stage").to_string()}],
                             "envFrom": [{"configMapRef": {"name": format!("flaskapp-{ns}")}}],
                             "resources": {"limits": {"cpu": if ns == "prod" { "2" } else { "250m" }}}},
                            {"name": "sidecar", "image": "logshipper:3"}
                        ]
                    }
                }
            }
        }))
        .unwrap()
    }

    fn promoted(stage: &Deployment, prod: &Deployment, rule: &RevisionSpec) -> Deployment {
        let patch: json_patch::Patch =
            serde_json::from_value(images_patch(stage, prod, rule).unwrap()).unwrap();
        let mut doc = serde_json::to_value(prod).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn images_promotion_sets_images_and_keeps_everything_else_of_prod() {
        let rule = RevisionSpec::default();
        let prod = environment("prod", "demoapp:v1", "1.0.0");
        let stage = environment("stage", "demoapp:v2", "2.0.0");
        assert_eq!(
            revision(&prod, &rule),
            "app=demoapp:v1, sidecar=logshipper:3, init:migrate=migrate:v1"
        );
        let after = promoted(&stage, &prod, &rule);
        assert_eq!(revision(&after, &rule), revision(&stage, &rule));
        // Field by field, everything but the images is prod's own.
        let (mut expected, mut got) = (
            serde_json::to_value(&prod).unwrap(),
            serde_json::to_value(&after).unwrap(),
        );
        for v in [&mut expected, &mut got] {
            v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("-");
            v["spec"]["template"]["spec"]["initContainers"][0]["image"] = json!("-");
        }
        assert_eq!(got, expected, "only the images changed");
        let pod = after.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("demoapp:v2"));
        assert_eq!(
            pod.init_containers.as_ref().unwrap()[0].image.as_deref(),
            Some("migrate:v2")
        );
        assert_eq!(
            pod.containers[0].env.as_ref().unwrap()[0].value.as_deref(),
            Some("postgres://prod-db/app"),
            "prod keeps its database"
        );
    }

    #[test]
    fn images_promotion_copies_the_values_the_revision_names() {
        let rule = RevisionSpec {
            metadata: vec!["app.kubernetes.io/version".into()],
            env: vec!["FEATURE_X".into()],
        };
        let prod = environment("prod", "demoapp:v1", "1.0.0");
        let stage = environment("stage", "demoapp:v2", "2.0.0");
        let after = promoted(&stage, &prod, &rule);
        assert_eq!(revision(&after, &rule), revision(&stage, &rule));
        let pod = after.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        assert_eq!(env[0].value.as_deref(), Some("postgres://prod-db/app"));
        assert_eq!(env[1].value.as_deref(), Some("true"));
        assert_eq!(after.spec.as_ref().unwrap().replicas, Some(6));
    }

    #[test]
    fn a_named_value_stage_does_not_set_is_removed_from_prod_and_references_are_refused() {
        let rule = RevisionSpec {
            metadata: vec!["app.kubernetes.io/version".into(), "release-train".into()],
            env: vec!["FEATURE_X".into()],
        };
        let mut prod = environment("prod", "demoapp:v1", "1.0.0");
        let tpl = &mut prod.spec.as_mut().unwrap().template;
        tpl.metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .insert("release-train".into(), "blue".into());
        let mut stage = environment("stage", "demoapp:v2", "2.0.0");
        let pod = stage.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[0]
            .env
            .as_mut()
            .unwrap()
            .retain(|e| e.name != "FEATURE_X");
        let after = promoted(&stage, &prod, &rule);
        assert_eq!(revision(&after, &rule), revision(&stage, &rule));
        let env = after
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap();
        assert!(env.iter().all(|e| e.name != "FEATURE_X"));
        assert_eq!(env[0].value.as_deref(), Some("postgres://prod-db/app"));

        let pod = stage.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[0].env.as_mut().unwrap().push(
            serde_json::from_value(json!({"name": "FEATURE_X",
                "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "x"}}}))
            .unwrap(),
        );
        let err = images_patch(&stage, &prod, &rule).unwrap_err();
        assert!(matches!(err, PromotionError::NotLiteral { .. }), "{err}");
        assert!(err.to_string().contains("valueFrom"), "{err}");
    }

    #[test]
    fn a_container_on_one_side_only_is_an_error_not_a_guess() {
        let prod = environment("prod", "demoapp:v1", "1");
        let mut stage = environment("stage", "demoapp:v2", "2");
        let pod = stage.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[1].name = "metrics".into();
        let err = images_patch(&stage, &prod, &RevisionSpec::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prod has no container named \"metrics\" and the other has one; promotion mode \
             images sets images by container name, so both must have the same containers: add \
             it to prod's chart, or promote with mode webhook"
        );
        let rule = RevisionSpec {
            metadata: vec!["env".into()],
            env: vec![],
        };
        let mut stage = environment("stage", "demoapp:v2", "2");
        stage
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .annotations = None;
        assert!(matches!(
            images_patch(&stage, &prod, &rule),
            Err(PromotionError::SelectorKey(k)) if k == "env"
        ));
    }

    #[test]
    fn whole_template_promotion_copies_stage_template_and_keeps_prod_labels() {
        let rule = RevisionSpec::default();
        let stage = deployment("stage", "demoapp:v2", "stage");
        let prod = deployment("prod", "demoapp:v1", "prod");
        let patch: json_patch::Patch =
            serde_json::from_value(copy_template_patch(&stage, &prod).unwrap()).unwrap();
        let mut doc = serde_json::to_value(&prod).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let promoted: Deployment = serde_json::from_value(doc).unwrap();
        assert_eq!(revision(&promoted, &rule), revision(&stage, &rule));
        let tpl = &promoted.spec.as_ref().unwrap().template;
        assert_eq!(
            tpl.metadata.as_ref().unwrap().labels.as_ref().unwrap()["env"],
            "prod",
            "prod's selector still matches"
        );
        assert_eq!(promoted.spec.unwrap().selector, prod.spec.unwrap().selector);
    }
}

//! Canaries as the API server stores them, decoded one at a time. The controller watches
//! Canaries as untyped objects ([`DynamicObject`]), so a Canary written under an older or
//! looser CRD (a duration the parser refuses, a status of another version) can fail neither
//! the list nor the watch, and so hold up no other Canary. Each object is decoded when it is
//! reconciled:
//! - spec and status decode: the typed [`super::reconcile::reconcile`];
//! - the status does not: a log line, and the typed reconcile from an empty status;
//! - the spec does not: the condition `SpecValid=False` naming the field, written through the
//!   status subresource, and nothing else until the spec changes; being deleted, canaryd's
//!   finalizer is removed (the route is unknown, so no traffic can be restored).
//!
//! It never decides a rollout itself.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{Context, Error, FIELD_MANAGER, FINALIZER};
use crate::api::{Canary, CanarySpec, CanaryStatus};

/// The Canary's kind, for the untyped watch, store and writes.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<Canary>(&())
}

/// At most this many fields that do not decode are named in one message.
const MAX_PROBLEMS: usize = 3;

/// The top-level field `name` ("spec", "status") of `obj`: `None` when absent; when it does
/// not decode, the path of each field that does not and why ("spec.stepDuration.min: ...").
fn field<T: DeserializeOwned>(obj: &DynamicObject, name: &str) -> Result<Option<T>, String> {
    let Some(value) = obj.data.get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let first = match serde_path_to_error::deserialize(value) {
        Ok(decoded) => return Ok(Some(decoded)),
        Err(e) => e,
    };
    // serde stops at the first field; to name the others too, decode again without each
    // field named so far (left out, it takes its default), as long as leaving it out is not
    // itself the next error.
    let mut value = value.clone();
    let mut problems = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut error = Some(first);
    while let Some(e) = error.take() {
        let path = e.path().to_string();
        let at = if path == "." {
            name.to_string()
        } else {
            format!("{name}.{path}")
        };
        let caused_by_removal = removed.iter().any(|r| {
            r == &at || r.starts_with(&format!("{at}.")) || r.starts_with(&format!("{at}["))
        });
        if caused_by_removal {
            break;
        }
        problems.push(format!("{at}: {}", e.inner()));
        if problems.len() == MAX_PROBLEMS || !remove(&mut value, e.path()) {
            break;
        }
        removed.push(at);
        error = serde_path_to_error::deserialize::<_, T>(&value).err();
    }
    Err(problems.join("; "))
}

/// Removes the object key `path` leads to; false when it leads elsewhere (a list item, whose
/// removal would renumber the others, or nothing known).
fn remove(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        at = match segment {
            Segment::Map { key } => match at.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            Segment::Seq { index } => match at.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    at.as_object_mut()
        .is_some_and(|o| o.remove(key.as_str()).is_some())
}

/// The spec of `obj`, or why it cannot be read (the field's path first).
pub fn spec(obj: &DynamicObject) -> Result<CanarySpec, String> {
    field(obj, "spec")?.ok_or_else(|| "spec: missing; a Canary needs a spec".to_string())
}

/// The status of `obj` (`None` when it has none), or why it cannot be read.
pub fn status(obj: &DynamicObject) -> Result<Option<CanaryStatus>, String> {
    field(obj, "status")
}

/// The Canaries of `store` whose spec decodes, without their status (what the route's owner
/// and the watches' mappings need); the others are left out.
pub fn readable(store: &Store<DynamicObject>) -> Vec<Canary> {
    store
        .state()
        .iter()
        .filter_map(|obj| {
            Some(Canary {
                metadata: obj.metadata.clone(),
                spec: spec(obj).ok()?,
                status: None,
            })
        })
        .collect()
}

/// Entry point for the kube-rs Controller: decodes the stored object and reconciles it.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Requeue::requeue(Duration::from_secs(5)));
    }
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let status = status(&obj).unwrap_or_else(|problem| {
        tracing::warn!(
            canary = %name,
            %namespace,
            %problem,
            "the status cannot be read (written by another canaryd version?); starting from \
             an empty status"
        );
        None
    });
    match spec(&obj) {
        Ok(spec) => {
            let canary = Canary {
                metadata: obj.metadata.clone(),
                spec,
                status,
            };
            super::reconcile::reconcile(Arc::new(canary), ctx).await
        }
        Err(problem) => hold_unreadable(&obj, &problem, status.unwrap_or_default(), &ctx).await,
    }
}

/// A Canary whose spec cannot be decoded: `SpecValid=False` with `problem`, written once per
/// change; being deleted, canaryd's finalizer removed.
async fn hold_unreadable(
    obj: &DynamicObject,
    problem: &str,
    status: CanaryStatus,
    ctx: &Context,
) -> Result<Requeue, Error> {
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &api_resource());
    if obj.metadata.deletion_timestamp.is_some() {
        let finalizers = obj.finalizers();
        if finalizers.iter().any(|f| f == FINALIZER) {
            tracing::warn!(
                canary = %name,
                %namespace,
                %problem,
                "a Canary whose spec cannot be read is being deleted: its route cannot be known, \
                 so no traffic is restored; removing canaryd's finalizer (check the route's \
                 weights by hand)"
            );
            let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "replace", "path": "/metadata/finalizers", "value": kept}
            ]))
            .expect("a valid JSON patch");
            let params = PatchParams::apply(FIELD_MANAGER);
            let patch = Patch::Json::<()>(patch);
            ctx.write("the finalizer", api.patch(&name, &params, &patch))
                .await?;
        }
        return Ok(Requeue::await_change());
    }
    // The cache has not seen our last write yet: deciding on it would write (and warn) twice.
    if super::reconcile::is_stale(&obj.metadata, ctx) {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    let mut new = status.clone();
    crate::rollout::hold_invalid_spec(&mut new, problem, (ctx.now)());
    crate::rollout::observed(&mut new, obj.metadata.generation);
    if new != status {
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/status", "value": new}]))
                .expect("a valid JSON patch");
        let params = PatchParams::apply(FIELD_MANAGER);
        let patch = Patch::Json::<()>(patch);
        ctx.write("the status", api.patch_status(&name, &params, &patch))
            .await?;
        super::reconcile::wrote_status(&obj.metadata, ctx);
        tracing::warn!(
            canary = %name,
            %namespace,
            %problem,
            "the spec cannot be read; SpecValid=False, nothing done until the spec changes"
        );
    }
    Ok(Requeue::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: Value, status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "canaryd.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "broken", "namespace": "prod"},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn good_spec() -> Value {
        json!({
            "virtualService": {"name": "demoapp"},
            "prod": {"host": "p", "deployment": {"name": "flaskapp"}},
            "stage": {"host": "s", "deployment": {"name": "flaskapp"}}
        })
    }

    #[test]
    fn a_spec_that_does_not_decode_names_its_field_and_the_fix() {
        let mut bad = good_spec();
        bad["stepDuration"] = json!({"min": "5 parsecs", "max": "99999999999999999999999s"});
        let problem = spec(&object(bad, Value::Null)).unwrap_err();
        // Both fields, each with its rule.
        assert!(
            problem.contains("spec.stepDuration.min: \"5 parsecs\" is not a duration"),
            "{problem}"
        );
        assert!(problem.contains("unknown unit \"parsecs\""), "{problem}");
        assert!(
            problem.contains("spec.stepDuration.max: \"99999999999999999999999s\""),
            "{problem}"
        );
        assert!(problem.contains("more than the 9 digits"), "{problem}");
        // A required field that does not decode is named once, not again as missing.
        let mut bad = good_spec();
        bad["prod"]["host"] = json!(7);
        let problem = spec(&object(bad, Value::Null)).unwrap_err();
        assert!(
            problem.starts_with("spec.prod.host: invalid type"),
            "{problem}"
        );
        assert!(!problem.contains("missing"), "{problem}");
        let mut bad = good_spec();
        bad["checks"] = json!([{"name": "c", "url": "http://x/", "timeout": "1.5s"}]);
        let problem = spec(&object(bad, Value::Null)).unwrap_err();
        assert!(problem.starts_with("spec.checks[0].timeout: "), "{problem}");
        assert!(spec(&object(Value::Null, Value::Null))
            .unwrap_err()
            .starts_with("spec: missing"));
    }

    #[test]
    fn the_old_promotion_mode_copy_template_is_named_with_the_modes_that_replace_it() {
        let mut old = good_spec();
        old["promotion"] = json!({"mode": "copyTemplate"});
        let problem = spec(&object(old, Value::Null)).unwrap_err();
        assert!(
            problem.starts_with("spec.promotion.mode: unknown variant `copyTemplate`"),
            "{problem}"
        );
        assert!(
            problem.contains("`images`") && problem.contains("`copyWholeTemplate`"),
            "{problem}"
        );
    }

    #[test]
    fn a_status_that_does_not_decode_is_told_apart_from_the_spec() {
        let obj = object(good_spec(), json!({"phase": "Exploding", "step": -1}));
        assert!(spec(&obj).is_ok());
        let problem = status(&obj).unwrap_err();
        assert!(problem.starts_with("status.phase: "), "{problem}");
        assert_eq!(status(&object(good_spec(), Value::Null)), Ok(None));
    }

    #[test]
    fn the_readable_canaries_leave_out_the_undecodable_ones() {
        let mut writer = kube::runtime::reflector::store::Writer::new(api_resource());
        let mut bad = good_spec();
        bad["stepDuration"] = json!({"min": "5 parsecs"});
        let mut good = object(good_spec(), json!({"phase": "Exploding"}));
        good.metadata.name = Some("good".into());
        for obj in [object(bad, Value::Null), good] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(obj));
        }
        let readable = readable(&writer.as_reader());
        let names: Vec<String> = readable.iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["good"]);
        assert!(readable[0].status.is_none());
    }
}

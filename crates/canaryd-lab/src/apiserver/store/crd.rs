//! CustomResourceDefinitions: checking a CRD object against the resources already served,
//! working out the custom resource it defines and the status a real server gives it, and
//! what deleting one takes with it (its custom resources, and serving them). The write path
//! registers the defined resource only when it commits the CRD, so a refused write or a dry
//! run serves nothing. Never validates custom resources' objects: that is admission's job,
//! with the schema this module compiled.

use serde_json::{json, Value};

use super::now;
use super::storage::Storage;
use crate::apiserver::error::{qualified, ApiError, ApiResult, FieldCause};
use crate::apiserver::kinds::Builtin;
use crate::apiserver::registry::{self, Origin, Registry, ResourceType};

/// For a CRD object: the custom resource it defines (or its 422), and its status. None for
/// objects of any other kind.
pub(super) fn defined_resource(
    registry: &Registry,
    resource: &ResourceType,
    crd: &mut Value,
) -> ApiResult<Option<ResourceType>> {
    if resource.origin != Origin::Builtin(Builtin::CustomResourceDefinition) {
        return Ok(None);
    }
    let name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let defined = registry::from_crd(crd)
        .map_err(|causes| ApiError::invalid(&resource.group, &resource.kind, &name, causes))?;
    if let Some(builtin) = registry.get(&defined.group, &defined.plural) {
        if !builtin.is_custom() {
            return Err(ApiError::invalid(
                &resource.group,
                &resource.kind,
                &name,
                vec![FieldCause {
                    reason: "FieldValueInvalid",
                    field: "spec.group".into(),
                    message: format!(
                        "Invalid value: \"{}\": is a built-in resource",
                        qualified(&defined.group, &defined.plural)
                    ),
                }],
            ));
        }
    }
    // Conditions are set once, so an unchanged CRD re-applied is a no-op; storedVersions
    // accumulates every storage version, as on a real server.
    let conditions = match &crd["status"]["conditions"] {
        Value::Array(existing) if !existing.is_empty() => Value::Array(existing.clone()),
        _ => {
            let stamp = now();
            let condition = |kind: &str, reason: &str| {
                json!({"type": kind, "status": "True", "reason": reason, "message": "",
                       "lastTransitionTime": stamp})
            };
            json!([
                condition("NamesAccepted", "NoConflicts"),
                condition("Established", "InitialNamesAccepted")
            ])
        }
    };
    let mut stored_versions: Vec<Value> = crd["status"]["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let storage = json!(defined.storage_version);
    if !stored_versions.contains(&storage) {
        stored_versions.push(storage);
    }
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": conditions,
        "storedVersions": stored_versions,
    });
    Ok(Some(defined))
}

/// Deleting a CRD removes its custom resources at once (no Terminating phase) and stops
/// serving them.
pub(super) fn uninstall(crd: &Value, storage: &mut Storage, registry: &mut Registry) {
    let group = crd["spec"]["group"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plural = crd["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    storage.delete_all(registry, |(g, p, _, _)| *g == group && *p == plural);
    registry.remove(&group, &plural);
}

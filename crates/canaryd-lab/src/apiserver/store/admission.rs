//! Admission: what a create, update or patch may store. The status subresource split (which
//! part of the body a main-resource or `/status` write may change), server-owned metadata a
//! body cannot set, name and metadata rules, built-in kinds' defaults and checks (with the
//! cluster IPs Services get), and a custom resource's pruning, defaults and schema validation
//! under `fieldValidation`. Sees only the proposed object and the one it replaces: never
//! looks up other objects, never commits, and knows nothing of what CRDs serve or of deletion.

use serde_json::{json, Value};

use super::storage::resource_version_of;
use crate::apiserver::builtins;
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::fields::Scope;
use crate::apiserver::kinds::Builtin;
use crate::apiserver::registry::{Origin, ResourceType};
use crate::apiserver::validation::{self, NameRule};

/// `fieldValidation=` of a write: what to do about fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Metadata only the server sets on a create.
const SERVER_SET: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Metadata an update keeps from the stored object whatever the body says.
const KEPT_ON_UPDATE: [&str; 7] = [
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// The cluster IPs handed to Services, in order, from 10.96.0.11.
pub(super) struct ClusterIps {
    last: u32,
}

impl ClusterIps {
    pub(super) fn new() -> Self {
        ClusterIps { last: 10 }
    }

    fn allocate(&mut self) -> String {
        self.last += 1;
        let n = self.last;
        format!("10.96.{}.{}", n / 256, n % 256)
    }
}

/// The part of an object a write may change: a `/status` write only the status; any other
/// write all but the status when the kind has a status subresource, else everything.
pub(super) fn scope(resource: &ResourceType, requested: Scope) -> Scope {
    match requested {
        Scope::StatusOnly => Scope::StatusOnly,
        _ if resource.status_subresource => Scope::NoStatus,
        _ => Scope::All,
    }
}

/// Sets `to[field]` to `from[field]`, or removes it when `from` has none.
fn carry(to: &mut Value, from: &Value, field: &str) {
    match from.get(field) {
        Some(value) => to[field] = value.clone(),
        None => {
            if let Some(map) = to.as_object_mut() {
                map.remove(field);
            }
        }
    }
}

/// A create's body without what the server sets (and without the status, when a status
/// subresource owns it), in the storage version. `managedFields` stay when server-side apply
/// computed them.
pub(super) fn prepare_create(
    resource: &ResourceType,
    object: &mut Value,
    managed_fields_done: bool,
) {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for server_field in SERVER_SET {
            meta.remove(server_field);
        }
        if !managed_fields_done {
            meta.remove("managedFields");
        }
    }
    if resource.status_subresource {
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
    }
    object["apiVersion"] = json!(resource.storage_api_version());
}

/// The object an update of `current` proposes: `body` limited to `scope` (see [`scope`]), in
/// the storage version, with the server-owned metadata and resourceVersion of `current`.
/// `managedFields` come from `body` when server-side apply computed them, else from `current`
/// until the write path records this writer.
pub(super) fn prepare_update(
    resource: &ResourceType,
    scope: Scope,
    current: &Value,
    body: Value,
    managed_fields_done: bool,
) -> Value {
    let mut object = match scope {
        Scope::StatusOnly => {
            let mut object = current.clone();
            carry(&mut object, &body, "status");
            if managed_fields_done {
                object["metadata"]["managedFields"] = body["metadata"]["managedFields"].clone();
            }
            object
        }
        _ => {
            let mut object = body;
            if scope == Scope::NoStatus {
                carry(&mut object, current, "status");
            }
            object
        }
    };
    object["apiVersion"] = json!(resource.storage_api_version());
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    for kept in KEPT_ON_UPDATE {
        carry(meta, &current["metadata"], kept);
    }
    meta["resourceVersion"] = json!(resource_version_of(current).unwrap_or_default());
    if !managed_fields_done {
        meta["managedFields"] = current["metadata"]["managedFields"].clone();
    }
    object
}

/// Defaults, pruning and validation for one write; returns warnings.
pub(super) fn admit(
    resource: &ResourceType,
    object: &mut Value,
    old: Option<&Value>,
    field_validation: FieldValidation,
    cluster_ips: &mut ClusterIps,
) -> ApiResult<Vec<String>> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rule = match resource.origin {
        Origin::Builtin(Builtin::Namespace) => NameRule::Label,
        Origin::Builtin(Builtin::Service) => NameRule::Dns1035Label,
        _ => NameRule::Subdomain,
    };
    let mut causes = validation::check_name(&name, rule);
    causes.extend(validation::check_metadata(&object["metadata"]));
    let mut warnings = Vec::new();
    match resource.origin {
        Origin::Builtin(builtin) => {
            let mut allocate = || cluster_ips.allocate();
            causes.extend(builtins::admit(builtin, object, old, &mut allocate));
        }
        Origin::Custom => {
            let version = resource.version(&resource.storage_version);
            if let Some(schema) = version.and_then(|v| v.schema.clone()) {
                let removed = schema.prune(object);
                if !removed.is_empty() {
                    match field_validation {
                        FieldValidation::Strict => {
                            let list: Vec<String> = removed
                                .iter()
                                .map(|f| format!("unknown field \"{f}\""))
                                .collect();
                            return Err(ApiError::bad_request(format!(
                                "strict decoding error: {}",
                                list.join(", ")
                            )));
                        }
                        FieldValidation::Warn => warnings
                            .extend(removed.iter().map(|f| format!("unknown field \"{f}\""))),
                        FieldValidation::Ignore => {}
                    }
                }
                schema.apply_defaults(object);
                causes.extend(schema.validate(object));
            }
        }
    }
    if causes.is_empty() {
        Ok(warnings)
    } else {
        Err(ApiError::invalid(
            &resource.group,
            &resource.kind,
            &name,
            causes,
        ))
    }
}

//! The write path: create, update and server-side apply, from a request body to the next
//! stored object. Owns the order of the steps and what depends on other objects or on the
//! server: names from `generateName`, the namespace existing, 409s on an existing name or a
//! stale resourceVersion, uid, creationTimestamp, generation, managedFields, no-op writes and
//! dry runs; then commits, serving a CRD's resource with it. What a body may set is
//! admission's, what a CRD defines is `crd`'s, and when an update deletes is `deletion`'s.

use serde_json::{json, Value};

use super::admission::{self, FieldValidation};
use super::crd;
use super::deletion;
use super::now;
use super::storage::{resource_version_of, ChangeKind};
use super::Inner;
use crate::apiserver::builtins;
use crate::apiserver::error::{ApiError, ApiResult, FieldCause};
use crate::apiserver::fields::{self, ListRules, Scope, Writer};
use crate::apiserver::registry::{Origin, ResourceType};

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub manager: String,
    /// Who asked, for the write log (`write_log`): the request's bearer token.
    pub writer: String,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub force: bool,
}

/// The outcome of a write: the object as stored, and warnings for the `Warning` header.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// The part of an object whose change bumps `metadata.generation`.
fn desired_state(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    copy
}

/// List types for field ownership: a custom resource's schema, or the built-in field names.
fn list_rules(resource: &ResourceType) -> ListRules<'_> {
    static NO_SCHEMA: Value = Value::Null;
    match resource.origin {
        Origin::Builtin(_) => ListRules::FieldNames,
        Origin::Custom => ListRules::Schema(
            resource
                .version(&resource.storage_version)
                .and_then(|v| v.schema.as_deref())
                .map_or(&NO_SCHEMA, |schema| schema.openapi()),
        ),
    }
}

/// Records in `object`'s managedFields what this write's manager changed from `current`.
fn record_manager(
    resource: &ResourceType,
    options: &WriteOptions,
    scope: Scope,
    current: Option<&Value>,
    object: &mut Value,
    now: &str,
) {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let writer = Writer {
        manager: &options.manager,
        api_version: &api_version,
        scope,
        lists: list_rules(resource),
        now,
    };
    fields::record_update(current, object, &writer);
}

fn not_an_object() -> ApiError {
    ApiError::bad_request("the object must be a JSON object with apiVersion, kind and metadata")
}

fn check_kind(resource: &ResourceType, object: &Value) -> ApiResult<()> {
    if object["kind"].as_str() == Some(resource.kind.as_str()) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "the kind in the body ({}) does not match the kind of the resource ({})",
        object["kind"].as_str().unwrap_or_default(),
        resource.kind
    )))
}

/// A body that names an object names the one on the URL.
pub(super) fn check_name(body: &Value, name: &str) -> ApiResult<()> {
    if body["metadata"]["name"].as_str().unwrap_or(name) == name {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "the name of the object ({}) does not match the name on the URL ({name})",
        body["metadata"]["name"].as_str().unwrap_or_default()
    )))
}

/// Equal but for the times in managedFields: a no-op write, which a real server does not
/// commit (no new resourceVersion, no watch event).
fn unchanged(object: &Value, current: &Value) -> bool {
    let without_times = |v: &Value| {
        let mut v = v.clone();
        if let Some(entries) = v["metadata"]["managedFields"].as_array_mut() {
            for entry in entries {
                if let Some(map) = entry.as_object_mut() {
                    map.remove("time");
                }
            }
        }
        v
    };
    object == current || without_times(object) == without_times(current)
}

impl Inner {
    /// `managed_fields_done`: server-side apply has computed the object's managedFields.
    pub(super) fn create(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        mut object: Value,
        options: &WriteOptions,
        managed_fields_done: bool,
    ) -> ApiResult<Written> {
        if !object.is_object() {
            return Err(not_an_object());
        }
        check_kind(resource, &object)?;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        if object["metadata"]["name"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            match object["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    let suffix: String = self
                        .storage
                        .next_uid()
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(5)
                        .collect();
                    object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(ApiError::invalid(
                        &resource.group,
                        &resource.kind,
                        "",
                        vec![FieldCause {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ))
                }
            }
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if resource.namespaced {
            match object["metadata"]["namespace"].as_str() {
                Some(ns) if ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => object["metadata"]["namespace"] = json!(namespace),
            }
            if !self.storage.namespace_exists(namespace) {
                return Err(ApiError::not_found("", "namespaces", namespace));
            }
        } else if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        if self.storage.get(resource, namespace, &name).is_some() {
            return Err(ApiError::already_exists(
                &resource.group,
                &resource.plural,
                &name,
            ));
        }
        admission::prepare_create(resource, &mut object, managed_fields_done);
        let warnings = admission::admit(
            resource,
            &mut object,
            None,
            options.field_validation,
            &mut self.cluster_ips,
        )?;
        let defined = crd::defined_resource(&self.registry, resource, &mut object)?;
        let now = now();
        if !managed_fields_done {
            let scope = admission::scope(resource, Scope::All);
            record_manager(resource, options, scope, None, &mut object, &now);
        }
        let uid = self.storage.next_uid();
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now);
        if resource.tracks_generation() {
            meta["generation"] = json!(1);
        }
        if options.dry_run {
            return Ok(Written {
                object,
                created: true,
                warnings,
            });
        }
        let object =
            self.storage
                .commit(resource, namespace, &name, ChangeKind::Added, object, None);
        if let Some(defined) = defined {
            self.registry.insert(defined);
        }
        Ok(Written {
            object,
            created: true,
            warnings,
        })
    }

    /// Replaces `current` with `body` within `scope`; `managed_fields_done` as for `create`.
    pub(super) fn update(
        &mut self,
        resource: &ResourceType,
        current: Value,
        body: Value,
        scope: Scope,
        options: &WriteOptions,
        managed_fields_done: bool,
    ) -> ApiResult<Written> {
        if !body.is_object() {
            return Err(not_an_object());
        }
        let name = current["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = current["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(rv) = resource_version_of(&body) {
            if rv != resource_version_of(&current).unwrap_or_default() {
                return Err(ApiError::stale(&resource.group, &resource.plural, &name));
            }
        }
        let scope = admission::scope(resource, scope);
        let mut object =
            admission::prepare_update(resource, scope, &current, body, managed_fields_done);
        check_kind(resource, &object)?;
        let mut warnings = admission::admit(
            resource,
            &mut object,
            Some(&current),
            options.field_validation,
            &mut self.cluster_ips,
        )?;
        let defined = crd::defined_resource(&self.registry, resource, &mut object)?;
        if !managed_fields_done {
            record_manager(
                resource,
                options,
                scope,
                Some(&current),
                &mut object,
                &now(),
            );
        }
        if object["metadata"]["managedFields"].is_null() {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
        }
        if unchanged(&object, &current) {
            return Ok(Written {
                object: current,
                created: false,
                warnings,
            });
        }
        if resource.tracks_generation() && desired_state(&object) != desired_state(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        if options.dry_run {
            return Ok(Written {
                object,
                created: false,
                warnings,
            });
        }
        let kind = if deletion::finalized(&object) {
            ChangeKind::Deleted
        } else {
            ChangeKind::Modified
        };
        let object = self
            .storage
            .commit(resource, &namespace, &name, kind, object, Some(current));
        if let (ChangeKind::Modified, Some(defined)) = (kind, defined) {
            self.registry.insert(defined);
        }
        warnings.dedup();
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// Server-side apply of `config` by `options.manager`: merges it into the live object
    /// (conflicts are 409s unless `force`), then creates or updates.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        current: Option<Value>,
        config: &Value,
        scope: Scope,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        if options.manager.is_empty() {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![FieldCause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        }
        check_name(config, name)?;
        let api_version = config["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exists = current.is_some();
        let live = current.clone().map(|c| builtins::served(resource, c)).unwrap_or_else(|| {
            json!({"apiVersion": api_version, "kind": config["kind"], "metadata": {"name": name}})
        });
        let scope = admission::scope(resource, scope);
        let (group, plural) = (resource.group.clone(), resource.plural.clone());
        let now = now();
        let writer = Writer {
            manager: &options.manager,
            api_version: &api_version,
            scope,
            lists: list_rules(resource),
            now: &now,
        };
        let merged = fields::apply(
            &live,
            exists,
            config,
            &writer,
            options.force,
            |message, causes| {
                let mut error = ApiError::conflict(&group, &plural, name, "");
                error.message = message;
                if let Some(details) = error.details.as_mut() {
                    details["causes"] = Value::Array(causes);
                }
                error
            },
        )?;
        let merged = builtins::stored(resource, merged);
        match current {
            None => self.create(resource, namespace, merged, options, true),
            Some(current) => self.update(resource, current, merged, scope, options, true),
        }
    }
}

//! The in-memory object store: objects keyed by (group, resource, namespace, name), one global
//! monotonically increasing resourceVersion, uid, creationTimestamp, generation, finalizers and
//! deletionTimestamp, the status subresource split, optimistic concurrency (409 on a stale
//! resourceVersion), and the bounded history of changes that watches replay from. Every write
//! goes through one lock, so resourceVersions and change order agree. CRD objects turn their
//! custom resource on and off here. Never speaks HTTP.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::builtins;
use super::error::{qualified, ApiError, ApiResult, FieldCause};
use super::fields::{self, ListRules, Scope, Writer};
use super::patch::{self, PatchKind};
use super::registry::{self, Builtin, Origin, Registry, ResourceType};
use super::scale;
use super::selector::Selector;
use super::validation::{self, NameRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub resource_version: u64,
    pub group: String,
    pub plural: String,
    pub kind: ChangeKind,
    pub object: Value,
    /// The object before the write (for selector transitions in watches).
    pub previous: Option<Value>,
}

/// `fieldValidation=` of a write: what to do about fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub manager: String,
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

type ObjectKey = (String, String, String, String);

fn key(resource: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
    (
        resource.storage_group().to_string(),
        resource.plural.clone(),
        namespace.to_string(),
        name.to_string(),
    )
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Integral floats become integers, as a Go server's JSON round trip leaves them (`100.0` in a
/// YAML manifest is stored and served as `100`), so equal values compare equal.
pub fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15)
            {
                *value = json!(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

fn resource_version_of(object: &Value) -> Option<&str> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
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

fn not_an_object() -> ApiError {
    ApiError::bad_request("the object must be a JSON object with apiVersion, kind and metadata")
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

struct Inner {
    registry: Registry,
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes at or below this resourceVersion are no longer in `history`.
    forgotten_up_to: u64,
    changes: broadcast::Sender<Arc<Change>>,
    uid_seed: u64,
    next_cluster_ip: u32,
}

pub struct Store {
    inner: Mutex<Inner>,
}

/// What a watch starts from: the events to send first, then the live feed.
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub resource_version: u64,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(history_limit.max(16));
        let uid_seed = jiff::Timestamp::now().as_nanosecond() as u64;
        Store {
            inner: Mutex::new(Inner {
                registry: Registry::with_builtins(),
                objects: BTreeMap::new(),
                resource_version: 0,
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                forgotten_up_to: 0,
                changes,
                uid_seed,
                next_cluster_ip: 10,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock().registry.lookup(group, version, plural).cloned()
    }

    pub fn current_resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&resource.group, &resource.plural, name))
    }

    /// Matching objects (all namespaces when `namespace` is None) and the list resourceVersion.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .matching(resource, namespace, selector)
            .cloned()
            .collect();
        (items, inner.resource_version)
    }

    /// Subscribes a watch. `since` None (or 0) starts with the current objects as ADDED; an
    /// older resourceVersion than the history holds is the 410 `Expired` of a real server.
    pub fn watch(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
        since: Option<u64>,
    ) -> ApiResult<WatchStart> {
        let inner = self.lock();
        let live = inner.changes.subscribe();
        let backlog = match since {
            None | Some(0) => inner
                .matching(resource, namespace, selector)
                .map(|object| {
                    Arc::new(Change {
                        resource_version: resource_version_of(object)
                            .and_then(|rv| rv.parse().ok())
                            .unwrap_or(0),
                        group: resource.storage_group().to_string(),
                        plural: resource.plural.clone(),
                        kind: ChangeKind::Added,
                        object: object.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(rv) if rv < inner.forgotten_up_to => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    inner.forgotten_up_to + 1
                )))
            }
            Some(rv) => inner
                .history
                .iter()
                .filter(|c| c.resource_version > rv)
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            backlog,
            live,
            resource_version: inner.resource_version,
        })
    }

    pub fn create(
        &self,
        resource: &ResourceType,
        namespace: &str,
        body: Value,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut inner = self.lock();
        inner.create(
            resource,
            namespace,
            builtins::stored(resource, body),
            options,
            false,
        )
    }

    pub fn update(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        scope: Scope,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut inner = self.lock();
        let current = inner.current(resource, namespace, name)?;
        if body["metadata"]["name"].as_str().unwrap_or(name) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        if resource_version_of(&body).is_none() && resource.is_custom() {
            return Err(ApiError::invalid(
                &resource.group,
                &resource.kind,
                name,
                vec![FieldCause {
                    reason: "FieldValueInvalid",
                    field: "metadata.resourceVersion".into(),
                    message: "Invalid value: 0x0: must be specified for an update".into(),
                }],
            ));
        }
        let body = builtins::stored(resource, body);
        inner.update(resource, current, body, scope, options, false)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        patch_body: &Value,
        scope: Scope,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut inner = self.lock();
        let current = inner.objects.get(&key(resource, namespace, name)).cloned();
        let missing = || ApiError::not_found(&resource.group, &resource.plural, name);
        if kind == PatchKind::Apply {
            if current.is_none() && scope == Scope::StatusOnly {
                return Err(missing());
            }
            return inner.apply(
                resource, namespace, name, current, patch_body, scope, options,
            );
        }
        let current = current.ok_or_else(missing)?;
        let mut patched = builtins::served(resource, current.clone());
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut patched, patch_body),
            PatchKind::Json => patch::json_patch(&mut patched, patch_body)?,
            PatchKind::Strategic if resource.is_custom() => {
                return Err(ApiError::unsupported_media_type(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ))
            }
            PatchKind::Strategic => patch::strategic_merge(&mut patched, patch_body),
            PatchKind::Apply => unreachable!("apply patches return above"),
        }
        let patched = builtins::stored(resource, patched);
        inner.update(resource, current, patched, scope, options, false)
    }

    /// Reads the `scale` view, lets `change` edit it, and writes the replica count back.
    pub fn scale(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        change: impl FnOnce(Value) -> ApiResult<Value>,
        options: &WriteOptions,
    ) -> ApiResult<Value> {
        let paths = resource
            .scale_subresource
            .as_ref()
            .ok_or_else(ApiError::not_found_path)?;
        let mut inner = self.lock();
        let current = inner.current(resource, namespace, name)?;
        let changed = change(scale::view(paths, &current))?;
        let updated = scale::write(paths, &current, &changed);
        let written = inner.update(resource, current, updated, Scope::All, options, false)?;
        Ok(scale::view(paths, &written.object))
    }

    pub fn delete(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        inner.delete(resource, namespace, name, preconditions)
    }
}

impl Inner {
    fn matching<'a>(
        &'a self,
        resource: &'a ResourceType,
        namespace: Option<&'a str>,
        selector: &'a Selector,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        // Keys sort by group, resource, namespace, name: scan only this resource's range.
        let start = key(resource, namespace.unwrap_or_default(), "");
        self.objects
            .range(start..)
            .take_while(move |((g, p, ns, _), _)| {
                *g == resource.storage_group()
                    && *p == resource.plural
                    && namespace.is_none_or(|wanted| wanted == ns)
            })
            .map(|(_, object)| object)
            .filter(move |object| selector.matches(object))
    }

    fn current(&self, resource: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&key(resource, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&resource.group, &resource.plural, name))
    }

    fn next_uid(&mut self) -> String {
        self.uid_seed = self.uid_seed.wrapping_add(1);
        let digest = Sha256::digest(self.uid_seed.to_le_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-4{}-8{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    fn commit(
        &mut self,
        resource: &ResourceType,
        kind: ChangeKind,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            resource_version: self.resource_version,
            group: resource.storage_group().to_string(),
            plural: resource.plural.clone(),
            kind,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.forgotten_up_to = old.resource_version;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Defaults, pruning and validation for one write; returns warnings.
    fn admit(
        &mut self,
        resource: &ResourceType,
        object: &mut Value,
        old: Option<&Value>,
        options: &WriteOptions,
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
                let mut allocate = || {
                    self.next_cluster_ip += 1;
                    let n = self.next_cluster_ip;
                    format!("10.96.{}.{}", n / 256, n % 256)
                };
                causes.extend(builtins::admit(builtin, object, old, &mut allocate));
            }
            Origin::Custom => {
                let version = resource.version(&resource.storage_version);
                if let Some(schema) = version.and_then(|v| v.schema.clone()) {
                    let removed = schema.prune(object);
                    if !removed.is_empty() {
                        match options.field_validation {
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

    fn create(
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
        if object["kind"].as_str() != Some(resource.kind.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the kind in the body ({}) does not match the kind of the resource ({})",
                object["kind"].as_str().unwrap_or_default(),
                resource.kind
            )));
        }
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
            let ns_exists = self.objects.contains_key(&(
                String::new(),
                "namespaces".into(),
                String::new(),
                namespace.into(),
            ));
            if !ns_exists {
                return Err(ApiError::not_found("", "namespaces", namespace));
            }
        } else if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        let object_key = key(resource, namespace, &name);
        if self.objects.contains_key(&object_key) {
            return Err(ApiError::already_exists(
                &resource.group,
                &resource.plural,
                &name,
            ));
        }
        if let Some(meta) = object["metadata"].as_object_mut() {
            for server_field in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
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
        let warnings = self.admit(resource, &mut object, None, options)?;
        let crd_type = self.crd_type(resource, &mut object)?;
        let now = now();
        if !managed_fields_done {
            let scope = if resource.status_subresource {
                Scope::NoStatus
            } else {
                Scope::All
            };
            let api_version = object["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let writer = Writer {
                manager: &options.manager,
                api_version: &api_version,
                scope,
                lists: list_rules(resource),
                now: &now,
            };
            fields::record_update(None, &mut object, &writer);
        }
        let uid = self.next_uid();
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
        object["metadata"]["resourceVersion"] = json!(self.bump());
        self.objects.insert(object_key, object.clone());
        if let Some(crd_type) = crd_type {
            self.registry.insert(crd_type);
        }
        self.commit(resource, ChangeKind::Added, object.clone(), None);
        Ok(Written {
            object,
            created: true,
            warnings,
        })
    }

    /// For a CRD object: the custom resource it defines (or its 422), and its status.
    fn crd_type(
        &self,
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
        if let Some(builtin) = self.registry.get(&defined.group, &defined.plural) {
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

    #[allow(clippy::too_many_arguments)]
    fn apply(
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
        if config["metadata"]["name"].as_str().unwrap_or(name) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                config["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let api_version = config["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exists = current.is_some();
        let live = current.clone().map(|c| builtins::served(resource, c)).unwrap_or_else(|| {
            json!({"apiVersion": api_version, "kind": config["kind"], "metadata": {"name": name}})
        });
        let scope = if scope == Scope::StatusOnly || !resource.status_subresource {
            scope
        } else {
            Scope::NoStatus
        };
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

    fn update(
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
        let current_rv = resource_version_of(&current)
            .unwrap_or_default()
            .to_string();
        if let Some(rv) = resource_version_of(&body) {
            if rv != current_rv {
                return Err(ApiError::stale(&resource.group, &resource.plural, &name));
            }
        }
        let scope = match scope {
            Scope::StatusOnly => Scope::StatusOnly,
            _ if resource.status_subresource => Scope::NoStatus,
            _ => Scope::All,
        };
        let mut object = match scope {
            Scope::StatusOnly => {
                let mut object = current.clone();
                match body.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                if managed_fields_done {
                    object["metadata"]["managedFields"] = body["metadata"]["managedFields"].clone();
                }
                object
            }
            _ => {
                let mut object = body;
                if scope == Scope::NoStatus {
                    match current.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(map) = object.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                object
            }
        };
        if object["kind"].as_str() != Some(resource.kind.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the kind in the body ({}) does not match the kind of the resource ({})",
                object["kind"].as_str().unwrap_or_default(),
                resource.kind
            )));
        }
        object["apiVersion"] = json!(resource.storage_api_version());
        {
            let meta = &mut object["metadata"];
            if !meta.is_object() {
                *meta = json!({});
            }
            for kept in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match current["metadata"].get(kept) {
                    Some(value) => meta[kept] = value.clone(),
                    None => {
                        if let Some(map) = meta.as_object_mut() {
                            map.remove(kept);
                        }
                    }
                }
            }
            meta["resourceVersion"] = json!(current_rv);
            if !managed_fields_done {
                meta["managedFields"] = current["metadata"]["managedFields"].clone();
            }
        }
        let mut warnings = self.admit(resource, &mut object, Some(&current), options)?;
        let crd_type = self.crd_type(resource, &mut object)?;
        if !managed_fields_done {
            let api_version = object["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let now = now();
            let writer = Writer {
                manager: &options.manager,
                api_version: &api_version,
                scope,
                lists: list_rules(resource),
                now: &now,
            };
            fields::record_update(Some(&current), &mut object, &writer);
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
        let finalized = object["metadata"]["deletionTimestamp"].is_string()
            && object["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        object["metadata"]["resourceVersion"] = json!(self.bump());
        let object_key = key(resource, &namespace, &name);
        if finalized {
            self.objects.remove(&object_key);
            self.commit(resource, ChangeKind::Deleted, object.clone(), Some(current));
        } else {
            self.objects.insert(object_key, object.clone());
            if let Some(crd_type) = crd_type {
                self.registry.insert(crd_type);
            }
            self.commit(
                resource,
                ChangeKind::Modified,
                object.clone(),
                Some(current),
            );
        }
        warnings.dedup();
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    fn delete(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
    ) -> ApiResult<Value> {
        let current = self.current(resource, namespace, name)?;
        for (field, wanted) in [
            ("resourceVersion", &preconditions["resourceVersion"]),
            ("uid", &preconditions["uid"]),
        ] {
            if let Some(wanted) = wanted.as_str() {
                let actual = current["metadata"][field].as_str().unwrap_or_default();
                if wanted != actual {
                    return Err(ApiError::conflict(
                        &resource.group,
                        &resource.plural,
                        name,
                        &format!("Precondition failed: {field}: {wanted}, actual: {actual}"),
                    ));
                }
            }
        }
        let object_key = key(resource, namespace, name);
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current["metadata"]["deletionTimestamp"].is_string() {
                return Ok(current);
            }
            let mut object = current.clone();
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            object["metadata"]["resourceVersion"] = json!(self.bump());
            self.objects.insert(object_key, object.clone());
            self.commit(
                resource,
                ChangeKind::Modified,
                object.clone(),
                Some(current),
            );
            return Ok(object);
        }
        match resource.origin {
            Origin::Builtin(Builtin::Namespace) => self.delete_all(|(_, _, ns, _)| ns == name),
            Origin::Builtin(Builtin::CustomResourceDefinition) => {
                let group = current["spec"]["group"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let plural = current["spec"]["names"]["plural"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.delete_all(|(g, p, _, _)| *g == group && *p == plural);
                self.registry.remove(&group, &plural);
            }
            _ => {}
        }
        let mut object = current.clone();
        object["metadata"]["resourceVersion"] = json!(self.bump());
        self.objects.remove(&object_key);
        self.commit(resource, ChangeKind::Deleted, object.clone(), Some(current));
        Ok(object)
    }

    /// Removes every object whose key matches, each with its DELETED change.
    fn delete_all(&mut self, doomed: impl Fn(&ObjectKey) -> bool) {
        let keys: Vec<ObjectKey> = self.objects.keys().filter(|k| doomed(k)).cloned().collect();
        for object_key in keys {
            let Some(current) = self.objects.remove(&object_key) else {
                continue;
            };
            let Some(resource) = self.registry.get(&object_key.0, &object_key.1).cloned() else {
                continue;
            };
            let mut object = current.clone();
            object["metadata"]["resourceVersion"] = json!(self.bump());
            self.commit(&resource, ChangeKind::Deleted, object, Some(current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WriteOptions {
        WriteOptions {
            manager: "test".into(),
            dry_run: false,
            field_validation: FieldValidation::Strict,
            force: false,
        }
    }

    fn store_with_default_namespace() -> (Store, ResourceType, ResourceType) {
        let store = Store::new(100);
        let namespaces = store.lookup("", "v1", "namespaces").unwrap();
        let services = store.lookup("", "v1", "services").unwrap();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        store.create(&namespaces, "", ns, &options()).unwrap();
        (store, namespaces, services)
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_bad_request() {
        let (store, _, services) = store_with_default_namespace();
        let err = store
            .create(&services, "default", json!([1]), &options())
            .unwrap_err();
        assert_eq!(err.code, 400);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        store.create(&services, "default", svc, &options()).unwrap();
        let err = store
            .update(
                &services,
                "default",
                "web",
                json!("x"),
                Scope::All,
                &options(),
            )
            .unwrap_err();
        assert_eq!(err.code, 400);
        let err = store
            .patch(
                &services,
                "default",
                "web",
                PatchKind::Merge,
                &json!("x"),
                Scope::All,
                &options(),
            )
            .unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn a_no_op_write_keeps_the_resource_version_and_defaults_add_no_nulls() {
        let (store, _, services) = store_with_default_namespace();
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        let created = store
            .create(&services, "default", svc, &options())
            .unwrap()
            .object;
        assert!(created["spec"].get("ports").is_none());
        let before = store.current_resource_version();
        let again = store
            .update(
                &services,
                "default",
                "web",
                created.clone(),
                Scope::All,
                &options(),
            )
            .unwrap();
        assert_eq!(again.object, created);
        assert_eq!(store.current_resource_version(), before);
    }

    #[test]
    fn lists_scan_one_resource_in_one_or_all_namespaces() {
        let (store, namespaces, services) = store_with_default_namespace();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}});
        store.create(&namespaces, "", ns, &options()).unwrap();
        for (namespace, name) in [("default", "a"), ("prod", "b"), ("prod", "c")] {
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}});
            store.create(&services, namespace, svc, &options()).unwrap();
        }
        let names = |namespace: Option<&str>| -> Vec<String> {
            let (items, _) = store.list(&services, namespace, &Selector::default());
            items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(Some("prod")), ["b", "c"]);
        assert_eq!(names(None), ["a", "b", "c"]);
        assert!(names(Some("nowhere")).is_empty());
        let (all_namespaces, _) = store.list(&namespaces, None, &Selector::default());
        assert_eq!(all_namespaces.len(), 2);
    }
}

//! The in-memory object store, behind one lock: every read and write takes it once, so
//! resourceVersions and change order agree, and a write sees the registry and the objects as
//! they are. This module is the API the handlers use (reads, watches, create, update, patch,
//! `scale`, delete) and applies patches to the stored object; the jobs behind it are its
//! modules: `storage` (objects, resourceVersions, history, watch fan-out), `write` (the steps
//! of create, update and server-side apply), `admission` (what a body may set: status
//! subresource split, defaults, validation), `crd` (what a CustomResourceDefinition serves)
//! and `deletion` (finalizers, deletionTimestamp, what goes with a Namespace or a CRD).
//! Never speaks HTTP.

mod admission;
mod crd;
mod deletion;
mod storage;
mod write;

use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};

pub use admission::FieldValidation;
pub use storage::{Change, ChangeKind, WatchStart};
pub use write::{WriteOptions, Written};

use super::builtins;
use super::error::{ApiError, ApiResult, FieldCause};
use super::fields::Scope;
use super::patch::{self, PatchKind};
use super::registry::{Registry, ResourceType};
use super::scale;
use super::selector::Selector;
use super::write_log::{Commit, Verb, WriteLog, WriteRecord};
use admission::ClusterIps;
use storage::{resource_version_of, Storage};

/// The timestamp format of `metadata` and conditions.
fn now() -> String {
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

/// What the lock guards. The registry lives beside the objects because CRD writes change it.
struct Inner {
    registry: Registry,
    storage: Storage,
    cluster_ips: ClusterIps,
    log: WriteLog,
}

impl Inner {
    /// Logs the write when it committed (a no-op or a dry run does not move the counter).
    /// Runs one write and records it in the write log when it committed (a write that
    /// changed nothing leaves the resourceVersion, and the log, as they were).
    fn logged<T>(
        &mut self,
        writer: &str,
        verb: Verb,
        (resource, scope): (&ResourceType, Scope),
        write: impl FnOnce(&mut Self) -> ApiResult<T>,
        object: impl Fn(&T) -> &Value,
    ) -> ApiResult<T> {
        let before = self.storage.resource_version();
        let written = write(self)?;
        if self.storage.resource_version() != before {
            self.log.record(Commit {
                writer,
                verb,
                kind: &resource.kind,
                status: scope == Scope::StatusOnly,
                object: object(&written),
            });
        }
        Ok(written)
    }
}

pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Store {
            inner: Mutex::new(Inner {
                registry: Registry::with_builtins(),
                storage: Storage::new(history_limit),
                cluster_ips: ClusterIps::new(),
                log: WriteLog::new(),
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

    /// The write log from record `seq + 1` on (`0`: all of it).
    pub fn write_log_since(&self, seq: u64) -> Vec<WriteRecord> {
        self.lock().log.since(seq)
    }

    /// Also appends the write log's records to `path`, as JSON lines.
    pub fn write_log_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.lock().log.also_to_file(path)
    }

    pub fn current_resource_version(&self) -> u64 {
        self.lock().storage.resource_version()
    }

    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.lock().storage.current(resource, namespace, name)
    }

    /// Matching objects (all namespaces when `namespace` is None) and the list resourceVersion.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Value>, u64) {
        self.lock().storage.list(resource, namespace, selector)
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
        self.lock()
            .storage
            .watch(resource, namespace, selector, since)
    }

    pub fn create(
        &self,
        resource: &ResourceType,
        namespace: &str,
        body: Value,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut inner = self.lock();
        let body = builtins::stored(resource, body);
        inner.logged(
            &options.writer,
            Verb::Create,
            (resource, Scope::All),
            |inner| inner.create(resource, namespace, body, options, false),
            |w| &w.object,
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
        let current = inner.storage.current(resource, namespace, name)?;
        write::check_name(&body, name)?;
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
        inner.logged(
            &options.writer,
            Verb::Update,
            (resource, scope),
            |inner| inner.update(resource, current, body, scope, options, false),
            |w| &w.object,
        )
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
        inner.logged(
            &options.writer,
            Verb::Patch,
            (resource, scope),
            |inner| inner.patch(resource, namespace, name, kind, patch_body, scope, options),
            |w| &w.object,
        )
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
        let current = inner.storage.current(resource, namespace, name)?;
        let changed = change(scale::view(paths, &current))?;
        let updated = scale::write(paths, &current, &changed);
        let written = inner.logged(
            &options.writer,
            Verb::Update,
            (resource, Scope::All),
            |inner| inner.update(resource, current, updated, Scope::All, options, false),
            |w| &w.object,
        )?;
        Ok(scale::view(paths, &written.object))
    }

    /// `writer` is who asked, for the write log.
    pub fn delete(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
        writer: &str,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        inner.logged(
            writer,
            Verb::Delete,
            (resource, Scope::All),
            |inner| inner.delete(resource, namespace, name, preconditions),
            |object| object,
        )
    }
}

impl Inner {
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        patch_body: &Value,
        scope: Scope,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        let current = self.storage.get(resource, namespace, name).cloned();
        let missing = || ApiError::not_found(&resource.group, &resource.plural, name);
        if kind == PatchKind::Apply {
            if current.is_none() && scope == Scope::StatusOnly {
                return Err(missing());
            }
            return self.apply(
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
        self.update(resource, current, patched, scope, options, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WriteOptions {
        WriteOptions {
            manager: "test".into(),
            writer: "test".into(),
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

//! Storage: the objects keyed by (storage group, resource, namespace, name), the one
//! monotonically increasing resourceVersion, uids, and the bounded history of changes that
//! watches replay from, fanned out live to every watch. A commit stamps the next
//! resourceVersion and records the change in the same step, so resourceVersions and change
//! order agree. Never decides whether a write is allowed or what it stores: that is the write
//! path's and admission's job.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::registry::{Registry, ResourceType};
use crate::apiserver::selector::Selector;

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

/// What a watch starts from: the events to send first, then the live feed.
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub resource_version: u64,
}

/// (storage group, plural, namespace, name): sorting by it keeps one resource's objects, and
/// within it one namespace's, in a contiguous range.
pub(super) type ObjectKey = (String, String, String, String);

fn key(resource: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
    (
        resource.storage_group().to_string(),
        resource.plural.clone(),
        namespace.to_string(),
        name.to_string(),
    )
}

pub(super) fn resource_version_of(object: &Value) -> Option<&str> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
}

pub(super) struct Storage {
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes at or below this resourceVersion are no longer in `history`.
    forgotten_up_to: u64,
    changes: broadcast::Sender<Arc<Change>>,
    uid_seed: u64,
}

impl Storage {
    pub(super) fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(history_limit.max(16));
        Storage {
            objects: BTreeMap::new(),
            resource_version: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            forgotten_up_to: 0,
            changes,
            uid_seed: jiff::Timestamp::now().as_nanosecond() as u64,
        }
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(super) fn get(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<&Value> {
        self.objects.get(&key(resource, namespace, name))
    }

    /// The stored object, or the 404 a read or write of a missing object gets.
    pub(super) fn current(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Value> {
        self.get(resource, namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&resource.group, &resource.plural, name))
    }

    pub(super) fn namespace_exists(&self, namespace: &str) -> bool {
        self.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            namespace.into(),
        ))
    }

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

    /// Matching objects (all namespaces when `namespace` is None) and the list resourceVersion.
    pub(super) fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Value>, u64) {
        let items = self
            .matching(resource, namespace, selector)
            .cloned()
            .collect();
        (items, self.resource_version)
    }

    /// Subscribes a watch. `since` None (or 0) starts with the current objects as ADDED; an
    /// older resourceVersion than the history holds is the 410 `Expired` of a real server.
    pub(super) fn watch(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
        since: Option<u64>,
    ) -> ApiResult<WatchStart> {
        let live = self.changes.subscribe();
        let backlog = match since {
            None | Some(0) => self
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
            Some(rv) if rv < self.forgotten_up_to => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    self.forgotten_up_to + 1
                )))
            }
            Some(rv) => self
                .history
                .iter()
                .filter(|c| c.resource_version > rv)
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            backlog,
            live,
            resource_version: self.resource_version,
        })
    }

    pub(super) fn next_uid(&mut self) -> String {
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

    /// Stamps `object` with the next resourceVersion, stores it (or, for `Deleted`, removes
    /// it) and records the change for watches; returns the object as committed.
    pub(super) fn commit(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        kind: ChangeKind,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let object_key = key(resource, namespace, name);
        if kind == ChangeKind::Deleted {
            self.objects.remove(&object_key);
        } else {
            self.objects.insert(object_key, object.clone());
        }
        let change = Arc::new(Change {
            resource_version: self.resource_version,
            group: resource.storage_group().to_string(),
            plural: resource.plural.clone(),
            kind,
            object: object.clone(),
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
        object
    }

    /// Removes every object whose key matches, each with its DELETED change.
    pub(super) fn delete_all(&mut self, registry: &Registry, doomed: impl Fn(&ObjectKey) -> bool) {
        let keys: Vec<ObjectKey> = self.objects.keys().filter(|k| doomed(k)).cloned().collect();
        for object_key in keys {
            // Removed here, not only by `commit`, so that an object whose resource is no
            // longer registered still goes (without a change).
            let Some(current) = self.objects.remove(&object_key) else {
                continue;
            };
            let Some(resource) = registry.get(&object_key.0, &object_key.1) else {
                continue;
            };
            let (_, _, namespace, name) = &object_key;
            self.commit(
                resource,
                namespace,
                name,
                ChangeKind::Deleted,
                current.clone(),
                Some(current),
            );
        }
    }
}

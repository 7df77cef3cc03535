//! Field ownership (`metadata.managedFields`) and server-side apply, simplified.
//!
//! What is modelled: every write records which manager set which fields, in the real
//! `FieldsV1` encoding (`f:spec`, `k:{"name":"app"}` for keyed list items, `.` for an item
//! itself). An update (PUT or a non-apply patch) gives the writer the fields whose values it
//! changed and takes them from everyone else. An apply (`application/apply-patch+yaml`) merges
//! the applied configuration into the live object (maps recursively, keyed lists by key, other
//! lists atomically), takes ownership of exactly the fields it names, removes fields it owned
//! before and no longer names unless another manager also owns them, and answers 409 Conflict
//! (`FieldManagerConflict` causes) when it would change a value another manager owns, unless
//! `force=true`, which moves ownership to it. Status-subresource writes are recorded under
//! `subresource: status`.
//!
//! Lists merge as their type says: for custom resources, the CRD schema's
//! `x-kubernetes-list-type` (`map` keyed by `x-kubernetes-list-map-keys`, `set` with `v:`
//! members, anything else atomic, as on a real server); for built-in kinds, which have no
//! schema here, the keyed lists of `patch::merge_key` by field name (one key each, where a real
//! server sometimes has two, e.g. container ports by port and protocol) and `finalizers` as a
//! set. Of metadata, managers own labels, annotations, finalizers and ownerReferences. Not
//! modelled: version conversion of field sets, `x-kubernetes-map-type`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::patch::merge_key;

/// One owned field: a path of FieldsV1 segments (`f:spec`, `k:{"name":"app"}`).
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write may own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every field (resources without a status subresource).
    All,
    /// The main resource of a kind with a status subresource: all but `status`.
    NoStatus,
    /// A write to the `status` subresource.
    StatusOnly,
}

impl Scope {
    fn includes(self, top_level: &str) -> bool {
        match (self, top_level) {
            (_, "apiVersion" | "kind") => false,
            (Scope::StatusOnly, field) => field == "status",
            (Scope::NoStatus, "status") => false,
            _ => true,
        }
    }

    fn subresource(self) -> Option<&'static str> {
        (self == Scope::StatusOnly).then_some("status")
    }
}

/// The metadata fields a manager can own; the rest of metadata belongs to the server.
const METADATA_FIELDS: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// How a list merges and is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Where list types come from: the built-in kinds' field names, or a CRD schema.
#[derive(Debug, Clone, Copy)]
pub enum ListRules<'a> {
    FieldNames,
    Schema(&'a Value),
}

/// The subschema at a field path (`f:` into properties, `k:`/`v:` into items).
fn schema_at<'a>(root: &'a Value, path: &[String]) -> &'a Value {
    static NONE: Value = Value::Null;
    path.iter()
        .fold(root, |schema, segment| match segment.strip_prefix("f:") {
            Some(field) => schema["properties"]
                .get(field)
                .or_else(|| schema.get("additionalProperties"))
                .unwrap_or(&NONE),
            None => &schema["items"],
        })
}

impl ListRules<'_> {
    fn kind(self, path: &[String], items: &[Value]) -> ListKind {
        let by_field_name = || {
            let field = path
                .last()
                .and_then(|s| s.strip_prefix("f:"))
                .unwrap_or_default();
            if field == "finalizers" {
                return ListKind::Set;
            }
            merge_key(field, items).map_or(ListKind::Atomic, |k| ListKind::Map(vec![k.to_string()]))
        };
        match self {
            ListRules::FieldNames => by_field_name(),
            ListRules::Schema(_) if path.first().is_some_and(|s| s == "f:metadata") => {
                by_field_name()
            }
            ListRules::Schema(root) => {
                let schema = schema_at(root, path);
                match schema["x-kubernetes-list-type"].as_str() {
                    Some("set") => ListKind::Set,
                    Some("map") => ListKind::Map(
                        schema["x-kubernetes-list-map-keys"]
                            .as_array()
                            .map(|keys| {
                                keys.iter()
                                    .filter_map(|k| k.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => ListKind::Atomic,
                }
            }
        }
    }
}

/// Who writes, and the rules their write is recorded under.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub scope: Scope,
    pub lists: ListRules<'a>,
    pub now: &'a str,
}

fn key_segment(item: &Value, keys: &[String]) -> Option<String> {
    let mut map = Map::new();
    for key in keys {
        map.insert(key.clone(), item.get(key)?.clone());
    }
    (!map.is_empty()).then(|| format!("k:{}", Value::Object(map)))
}

fn same_key(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter()
        .all(|k| a.get(k).is_some() && a.get(k) == b.get(k))
}

fn walk(
    value: &Value,
    path: &mut FieldPath,
    lists: ListRules,
    out: &mut BTreeMap<FieldPath, Value>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                walk(v, path, lists, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match lists.kind(path, items) {
            ListKind::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone(), item.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) if items.iter().all(|i| key_segment(i, &keys).is_some()) => {
                for item in items {
                    path.push(key_segment(item, &keys).unwrap_or_default());
                    out.insert(path.clone(), Value::Null);
                    walk(item, path, lists, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), value.clone());
            }
        },
        other => {
            if !path.is_empty() {
                out.insert(path.clone(), other.clone());
            }
        }
    }
}

/// Every owned-able field of `object` in `scope`, with its value (list items map to null).
pub fn leaves(object: &Value, scope: Scope, lists: ListRules) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        if !scope.includes(key) {
            continue;
        }
        let mut path = vec![format!("f:{key}")];
        if key == "metadata" {
            for meta in METADATA_FIELDS {
                if let Some(v) = value.get(meta) {
                    path.push(format!("f:{meta}"));
                    walk(v, &mut path, lists, &mut out);
                    path.pop();
                }
            }
        } else {
            walk(value, &mut path, lists, &mut out);
        }
    }
    out
}

/// The `FieldsV1` JSON of a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for segment in path {
            let child = node
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            node = child.as_object_mut().expect("fieldsV1 nodes are objects");
        }
    }
    // A member that also has owned children is marked with ".".
    fn mark(node: &mut Map<String, Value>, set: &FieldSet, path: &mut FieldPath) {
        for (key, child) in node.iter_mut() {
            if key == "." {
                continue;
            }
            path.push(key.clone());
            if let Some(map) = child.as_object_mut() {
                if !map.is_empty() && set.contains(path) {
                    map.insert(".".into(), json!({}));
                }
                mark(map, set, path);
            }
            path.pop();
        }
    }
    mark(&mut root, set, &mut Vec::new());
    Value::Object(root)
}

pub fn from_fields_v1(fields: &Value) -> FieldSet {
    fn collect(node: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(map) = node.as_object() else {
            return;
        };
        if map.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for (key, child) in map {
            if key == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(key.clone());
            collect(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    collect(fields, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn read_entries(object: Option<&Value>) -> Vec<Entry> {
    let Some(list) = object.and_then(|o| o["metadata"]["managedFields"].as_array()) else {
        return Vec::new();
    };
    list.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_for<'a>(entries: &'a mut Vec<Entry>, writer: &Writer, operation: &str) -> &'a mut Entry {
    let subresource = writer.scope.subresource().map(str::to_string);
    let position = entries.iter().position(|e| {
        e.manager == writer.manager && e.operation == operation && e.subresource == subresource
    });
    let index = match position {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: writer.manager.to_string(),
                operation: operation.to_string(),
                api_version: writer.api_version.to_string(),
                time: writer.now.to_string(),
                subresource,
                fields: FieldSet::new(),
            });
            entries.len() - 1
        }
    };
    let entry = &mut entries[index];
    entry.time = writer.now.to_string();
    entry.api_version = writer.api_version.to_string();
    entry
}

/// Who wrote what: records an update by `writer` from `old` to `new` in `new`'s managedFields.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer) {
    let before = old
        .map(|o| leaves(o, writer.scope, writer.lists))
        .unwrap_or_default();
    let after = leaves(new, writer.scope, writer.lists);
    let changed: FieldSet = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(value))
        .map(|(path, _)| path.clone())
        .collect();
    let removed: FieldSet = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .cloned()
        .collect();
    let mut entries = read_entries(old);
    for entry in &mut entries {
        entry
            .fields
            .retain(|f| !changed.contains(f) && !removed.contains(f));
    }
    if !changed.is_empty() {
        let entry = entry_for(&mut entries, writer, "Update");
        entry.fields.extend(changed);
    }
    write_entries(new, entries);
}

/// Whether a list item is the one a `k:{...}` (keyed item) or `v:...` (set member) names.
fn segment_matches(segment: &str, item: &Value) -> bool {
    if let Some(member) = segment.strip_prefix("v:") {
        return serde_json::from_str::<Value>(member).is_ok_and(|m| &m == item);
    }
    let Some(key_json) = segment.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(key_json) else {
        return false;
    };
    keys.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn get_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = value;
    for segment in path {
        current = match segment.strip_prefix("f:") {
            Some(field) => current.get(field)?,
            None => current
                .as_array()?
                .iter()
                .find(|item| segment_matches(segment, item))?,
        };
    }
    Some(current)
}

fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for segment in parents {
        let next = match segment.strip_prefix("f:") {
            Some(field) => current.get_mut(field),
            None => current
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|item| segment_matches(segment, item))),
        };
        match next {
            Some(n) => current = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(field) => {
            if let Some(map) = current.as_object_mut() {
                map.remove(field);
            }
        }
        None => {
            if let Some(items) = current.as_array_mut() {
                items.retain(|item| !segment_matches(last, item));
            }
        }
    }
}

/// Merges an applied configuration into the live object: maps recursively, map-lists by key
/// and sets by member (applied order first), every other value replaced.
fn merge_applied(target: &mut Value, applied: &Value, path: &mut FieldPath, lists: ListRules) {
    match (target, applied) {
        (Value::Object(live), Value::Object(config)) => {
            for (key, value) in config {
                path.push(format!("f:{key}"));
                match live.get_mut(key) {
                    Some(existing) if !value.is_null() => {
                        merge_applied(existing, value, path, lists)
                    }
                    _ => {
                        live.insert(key.clone(), value.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(live), Value::Array(config)) => match lists.kind(path, config) {
            ListKind::Set => {
                let mut merged = config.clone();
                merged.extend(live.iter().filter(|f| !config.contains(f)).cloned());
                *live = merged;
            }
            ListKind::Map(keys) if config.iter().all(|c| key_segment(c, &keys).is_some()) => {
                let mut merged = Vec::new();
                for item in config {
                    let mut base = live
                        .iter()
                        .find(|l| same_key(l, item, &keys))
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    path.push(key_segment(item, &keys).unwrap_or_default());
                    merge_applied(&mut base, item, path, lists);
                    path.pop();
                    merged.push(base);
                }
                merged.extend(
                    live.iter()
                        .filter(|l| !config.iter().any(|c| same_key(l, c, &keys)))
                        .cloned(),
                );
                *live = merged;
            }
            _ => *live = config.clone(),
        },
        (target, applied) => *target = applied.clone(),
    }
}

fn dotted(path: &FieldPath) -> String {
    path.iter()
        .map(|segment| match segment.strip_prefix("f:") {
            Some(field) => format!(".{field}"),
            None if segment.starts_with("v:") => format!("[{}]", &segment[2..]),
            None => {
                let keys: Value =
                    serde_json::from_str(segment.trim_start_matches("k:")).unwrap_or_default();
                let pairs: Vec<String> = keys
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                format!("[{}]", pairs.join(","))
            }
        })
        .collect()
}

/// Server-side apply of `config` by `writer` onto `live` (`exists` false: it is created).
/// Returns the merged object with its managedFields, or the 409 a real server answers.
pub fn apply(
    live: &Value,
    exists: bool,
    config: &Value,
    writer: &Writer,
    force: bool,
    conflict: impl Fn(String, Vec<Value>) -> ApiError,
) -> Result<Value, ApiError> {
    let (manager, scope) = (writer.manager, writer.scope);
    let live_ref = exists.then_some(live);
    let mut entries = read_entries(live_ref);
    let applied = leaves(config, scope, writer.lists);
    let applied_set: FieldSet = applied.keys().cloned().collect();
    let mine = |e: &Entry| {
        e.manager == manager
            && e.operation == "Apply"
            && e.subresource.as_deref() == scope.subresource()
    };
    let mut conflicts = Vec::new();
    for (path, value) in &applied {
        let differs =
            get_at(live, path).is_some_and(|current| current != value && !value.is_null());
        if !differs {
            continue;
        }
        for entry in entries.iter_mut().filter(|e| !mine(e)) {
            if entry.fields.contains(path) {
                if force {
                    entry.fields.remove(path);
                } else {
                    conflicts.push((
                        entry.manager.clone(),
                        entry.api_version.clone(),
                        path.clone(),
                    ));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, v, p)| {
                json!({"reason": "FieldManagerConflict",
                       "message": format!("conflict with \"{m}\" using {v}"),
                       "field": dotted(p)})
            })
            .collect();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {}", dotted(p)))
            .collect();
        let noun = if conflicts.len() == 1 {
            "conflict"
        } else {
            "conflicts"
        };
        let message = format!(
            "Apply failed with {} {noun}: {}",
            conflicts.len(),
            lines.join("\n")
        );
        return Err(conflict(message, causes));
    }
    let previously: FieldSet = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut merged = live.clone();
    let mut body = config.clone();
    if let Some(map) = body.as_object_mut() {
        map.retain(|k, _| scope.includes(k) || k == "metadata");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.retain(|k, _| METADATA_FIELDS.contains(&k.as_str()));
        }
    }
    merge_applied(&mut merged, &body, &mut Vec::new(), writer.lists);
    for path in previously.difference(&applied_set) {
        let shared = entries
            .iter()
            .any(|e| !mine(e) && e.fields.iter().any(|f| f.starts_with(path)));
        if !shared {
            remove_at(&mut merged, path);
        }
    }
    let entry = entry_for(&mut entries, writer, "Apply");
    entry.fields = applied_set;
    write_entries(&mut merged, entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn conflict(message: String, causes: Vec<Value>) -> ApiError {
        let mut e = ApiError::conflict("apps", "deployments", "web", &message);
        e.details = Some(json!({"causes": causes}));
        e
    }

    fn writer<'a>(manager: &'a str, api_version: &'a str) -> Writer<'a> {
        Writer {
            manager,
            api_version,
            scope: Scope::All,
            lists: ListRules::FieldNames,
            now: NOW,
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "app", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_with_keyed_items() {
        let set: FieldSet = leaves(&deployment(1, "a"), Scope::All, ListRules::FieldNames)
            .into_keys()
            .collect();
        let encoded = to_fields_v1(&set);
        let item =
            &encoded["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert_eq!(item["."], json!({}));
        assert_eq!(item["f:image"], json!({}));
        assert_eq!(from_fields_v1(&encoded), set);
    }

    #[test]
    fn apply_conflicts_with_another_managers_value_unless_forced() {
        let mut live = deployment(1, "a");
        record_update(None, &mut live, &writer("kubectl-edit", "apps/v1"));
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        let err = apply(
            &live,
            true,
            &config,
            &writer("canaryd", "apps/v1"),
            false,
            conflict,
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains(".spec.replicas"), "{}", err.message);
        let forced = apply(
            &live,
            true,
            &config,
            &writer("canaryd", "apps/v1"),
            true,
            conflict,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], json!(3));
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("a")
        );
    }

    #[test]
    fn a_field_dropped_from_the_applied_config_is_removed() {
        let base = json!({"metadata": {"name": "web"}});
        let first = json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2"}}});
        let applied = apply(&base, true, &first, &writer("m", "v1"), false, conflict).unwrap();
        assert_eq!(applied["metadata"]["labels"]["b"], json!("2"));
        let second = json!({"metadata": {"name": "web", "labels": {"a": "1"}}});
        let reapplied =
            apply(&applied, true, &second, &writer("m", "v1"), false, conflict).unwrap();
        assert_eq!(reapplied["metadata"]["labels"], json!({"a": "1"}));
        let entry = &reapplied["metadata"]["managedFields"][0];
        assert_eq!(entry["operation"], json!("Apply"));
        assert_eq!(entry["manager"], json!("m"));
    }

    #[test]
    fn finalizers_are_a_set_each_manager_owns_its_own() {
        let base = json!({"metadata": {"name": "web", "finalizers": ["other.dev/keep"]}});
        let mut live = base.clone();
        record_update(None, &mut live, &writer("other", "v1"));
        let config = json!({"metadata": {"name": "web", "finalizers": ["canaryd.dev/cleanup"]}});
        let applied = apply(
            &live,
            true,
            &config,
            &writer("canaryd", "v1"),
            false,
            conflict,
        )
        .unwrap();
        assert_eq!(
            applied["metadata"]["finalizers"],
            json!(["canaryd.dev/cleanup", "other.dev/keep"])
        );
        let release = json!({"metadata": {"name": "web"}});
        let released = apply(
            &applied,
            true,
            &release,
            &writer("canaryd", "v1"),
            false,
            conflict,
        )
        .unwrap();
        assert_eq!(
            released["metadata"]["finalizers"],
            json!(["other.dev/keep"])
        );
    }

    #[test]
    fn an_update_takes_the_changed_fields_from_the_previous_owner() {
        let mut first = deployment(1, "a");
        record_update(None, &mut first, &writer("alice", "apps/v1"));
        let mut second = deployment(1, "b");
        second["metadata"]["managedFields"] = first["metadata"]["managedFields"].clone();
        record_update(Some(&first), &mut second, &writer("bob", "apps/v1"));
        let entries = second["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        let bob = entries.iter().find(|e| e["manager"] == "bob").unwrap();
        let image = &bob["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"app\"}"]["f:image"];
        assert_eq!(image, &json!({}));
    }

    #[test]
    fn custom_resource_lists_follow_the_schema_list_type() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "conditions": {"type": "array", "items": {"type": "object"}},
            "history": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object"}}}}}});
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "history": [{"id": "r1", "phase": "Succeeded"}]}});
        let paths = |lists| -> Vec<String> {
            leaves(&status, Scope::StatusOnly, lists)
                .keys()
                .map(|p| p.join("/"))
                .collect()
        };
        let by_schema = paths(ListRules::Schema(&schema));
        assert!(
            by_schema.contains(&"f:status/f:conditions".to_string()),
            "a list without a list type is atomic: {by_schema:?}"
        );
        assert!(
            by_schema.contains(&"f:status/f:history/k:{\"id\":\"r1\"}/f:phase".to_string()),
            "{by_schema:?}"
        );
        let by_name = paths(ListRules::FieldNames);
        assert!(
            by_name.contains(&"f:status/f:conditions/k:{\"type\":\"Ready\"}/f:status".to_string()),
            "built-in conditions merge by type: {by_name:?}"
        );
    }
}

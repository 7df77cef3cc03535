//! The three non-apply patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902, with
//! `test` ops) and strategic merge patch for built-in kinds. Strategic merge is modelled by
//! field name: the well-known list fields of the built-in kinds merge by their key (containers
//! and env by `name`, container ports by `containerPort`, ...), every other list is replaced;
//! the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and `$setElementOrder` directives
//! kubectl sends are honoured. Pure: values in, value out.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// From the request's `Content-Type`.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902; a failed `test` or a missing path is the 422 a real server answers. As in the
/// real server (evanphx/json-patch), a `test` for `null` passes on a missing path: kube-rs's
/// finalizer helper relies on it to add the first finalizer.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let mut operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    operations.0.retain(|op| match op {
        json_patch::PatchOperation::Test(t) => {
            !(t.value.is_null() && target.pointer(t.path.as_str()).is_none())
        }
        _ => true,
    });
    json_patch::patch(target, &operations).map_err(|e| ApiError::unprocessable(e.to_string()))
}

/// The key a list field of a built-in kind merges by, or `None` for a list that is replaced.
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if items.iter().any(|p| p.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Lists of scalars that strategic merge unions instead of replacing.
fn merges_scalars(field: &str) -> bool {
    field == "finalizers"
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(field: &str, original: &mut Vec<Value>, patch: &[Value]) {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *original = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    let Some(key) = merge_key(field, patch).or_else(|| merge_key(field, original)) else {
        if merges_scalars(field) {
            for item in patch {
                if !original.contains(item) {
                    original.push(item.clone());
                }
            }
        } else {
            *original = patch.iter().map(strip_directives).collect();
        }
        return;
    };
    for item in patch {
        let position = original
            .iter()
            .position(|o| o.get(key).is_some() && o.get(key) == item.get(key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                original.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut original[i], item),
            (None, false) => original.push(strip_directives(item)),
        }
    }
}

/// Applies a strategic merge patch to `target` in place.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) if value.get("$patch").and_then(Value::as_str) == Some("delete") => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let entry = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(entry, value);
            }
            Value::Array(items) => match target_map.get_mut(key) {
                Some(Value::Array(original)) => merge_list(key, original, items),
                _ => {
                    target_map.insert(
                        key.clone(),
                        Value::Array(
                            items
                                .iter()
                                .filter(|i| i.get("$patch").is_none())
                                .map(strip_directives)
                                .collect(),
                        ),
                    );
                }
            },
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch_map.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            if let (Some(Value::Array(list)), Some(order)) =
                (target_map.get_mut(field), value.as_array())
            {
                reorder(field, list, order);
            }
        }
    }
}

/// Puts the elements named in `$setElementOrder` first, in that order.
fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let position = |item: &Value| match merge_key(field, order) {
        Some(key) => order
            .iter()
            .position(|o| o.get(key) == item.get(key))
            .unwrap_or(usize::MAX),
        None => order.iter().position(|o| o == item).unwrap_or(usize::MAX),
    };
    list.sort_by_key(position);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "proxy:1"}]}}}})
    }

    #[test]
    fn a_null_test_passes_on_a_missing_path_like_a_real_server() {
        let mut target = json!({"metadata": {"name": "x"}});
        let add_first = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
        ]);
        json_patch(&mut target, &add_first).unwrap();
        assert_eq!(target["metadata"]["finalizers"], json!(["f"]));
        let stale = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        assert!(
            json_patch(&mut target, &stale).is_err(),
            "an existing value is not null"
        );
    }

    #[test]
    fn kubectl_set_image_changes_one_container_and_keeps_the_rest() {
        let mut target = deployment();
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{"image": "app:2", "name": "app"}]}}}});
        strategic_merge(&mut target, &patch);
        let containers = &target["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], json!("app:2"));
        assert_eq!(containers[0]["ports"][0]["containerPort"], json!(80));
        assert_eq!(containers[1]["image"], json!("proxy:1"));
    }

    #[test]
    fn patch_delete_removes_a_keyed_element_and_null_removes_a_field() {
        let mut target = deployment();
        let patch = json!({"spec": {"replicas": null, "template": {"spec": {"containers": [
            {"name": "sidecar", "$patch": "delete"}]}}}});
        strategic_merge(&mut target, &patch);
        assert!(target["spec"].get("replicas").is_none());
        assert_eq!(
            target["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced() {
        let mut target = json!({"spec": {"args": ["a", "b"]}, "metadata": {"finalizers": ["x"]}});
        strategic_merge(
            &mut target,
            &json!({"spec": {"args": ["c"]}, "metadata": {"finalizers": ["y"]}}),
        );
        assert_eq!(target["spec"]["args"], json!(["c"]));
        assert_eq!(target["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn a_failed_json_patch_test_is_unprocessable() {
        let mut target = json!({"spec": {"weight": 10}});
        let err = json_patch(
            &mut target,
            &json!([{"op": "test", "path": "/spec/weight", "value": 20},
                    {"op": "replace", "path": "/spec/weight", "value": 30}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(target["spec"]["weight"], json!(10));
    }
}

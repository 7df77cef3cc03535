//! The `scale` subresource (`autoscaling/v1` `Scale`) of Deployments and of custom resources
//! whose CRD declares `subresources.scale`: a view of the replica count that `kubectl scale`
//! reads and writes. Pure: object in, Scale out, and back.

use serde_json::{json, Value};

use super::registry::ScalePaths;
use super::table::select;

fn selector_text(selector: &Value) -> Value {
    match selector {
        Value::String(s) => json!(s),
        Value::Object(_) => {
            let pairs: Vec<String> = selector["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            json!(pairs.join(","))
        }
        _ => Value::Null,
    }
}

/// The `Scale` view of an object.
pub fn view(paths: &ScalePaths, object: &Value) -> Value {
    let first = |path: &str| select(object, path).first().copied().cloned();
    let meta = &object["metadata"];
    let mut status = json!({"replicas": first(&paths.status_replicas).unwrap_or(json!(0))});
    if let Some(selector) = paths.label_selector.as_deref().and_then(first) {
        status["selector"] = selector_text(&selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": first(&paths.spec_replicas).unwrap_or(json!(0))},
        "status": status,
    })
}

/// The object with the replica count of `scale` written to its spec path.
pub fn write(paths: &ScalePaths, object: &Value, scale: &Value) -> Value {
    let mut updated = object.clone();
    let mut target = &mut updated;
    for segment in paths.spec_replicas.split('.').filter(|s| !s.is_empty()) {
        target = &mut target[segment];
    }
    *target = scale["spec"]["replicas"].clone();
    updated["metadata"]["resourceVersion"] = scale["metadata"]["resourceVersion"].clone();
    updated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> ScalePaths {
        ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".spec.selector".into()),
        }
    }

    #[test]
    fn a_deployment_scales_through_its_scale_view() {
        let deploy = json!({"metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 1}});
        let mut scale = view(&paths(), &deploy);
        assert_eq!(scale["spec"]["replicas"], json!(2));
        assert_eq!(scale["status"]["selector"], json!("app=web"));
        scale["spec"]["replicas"] = json!(5);
        let scaled = write(&paths(), &deploy, &scale);
        assert_eq!(scaled["spec"]["replicas"], json!(5));
        assert_eq!(scaled["status"]["replicas"], json!(1));
    }
}

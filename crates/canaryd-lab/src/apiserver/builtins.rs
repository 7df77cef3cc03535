//! What the API server itself does to built-in kinds on a write, trimmed to what canaryd and
//! kubectl observe: defaults (Deployment strategy and replicas, Service type, ports and a
//! cluster IP, Namespace phase, Secret type), a Secret's write-only `stringData` stored
//! base64-encoded in `data`, the validation a real server would refuse with a 422 (a
//! Deployment's selector must match its template and is immutable, its containers need a name
//! and an image), and the conversion between the two views of one Event (`events.k8s.io/v1` is
//! served from core `v1` storage, with the real server's field mapping). Pure apart from the
//! cluster IP handed in by the store.

use serde_json::{json, Value};

use super::error::FieldCause;
use super::kinds::Builtin;
use super::registry::{Origin, ResourceType};

/// `events.k8s.io/v1` field -> core `v1` Event field (k8s pkg/apis/events/v1 conversion).
const EVENT_FIELDS: [(&str, &str); 6] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];
const EVENT_CONTROLLER: (&str, &str) = ("reportingController", "reportingComponent");

fn rename(mut object: Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) -> Value {
    if let Some(map) = object.as_object_mut() {
        for (from, to) in pairs {
            if let Some(value) = map.remove(from) {
                map.insert(to.to_string(), value);
            }
        }
    }
    object
}

fn is_events_v1(resource: &ResourceType) -> bool {
    resource.origin == Origin::Builtin(Builtin::Event)
}

/// An object of `resource` as it is stored (an `events.k8s.io` Event in core form).
pub fn stored(resource: &ResourceType, object: Value) -> Value {
    if !is_events_v1(resource) {
        return object;
    }
    let pairs = EVENT_FIELDS.into_iter().chain([EVENT_CONTROLLER]);
    let mut object = rename(object, pairs);
    object["apiVersion"] = json!("v1");
    object
}

/// A stored object as `resource` serves it (a core Event in `events.k8s.io` form).
pub fn served(resource: &ResourceType, object: Value) -> Value {
    if !is_events_v1(resource) {
        return object;
    }
    let pairs = EVENT_FIELDS
        .into_iter()
        .chain([EVENT_CONTROLLER])
        .map(|(v1, core)| (core, v1));
    rename(object, pairs)
}

fn required(field: &str) -> FieldCause {
    FieldCause {
        reason: "FieldValueRequired",
        field: field.to_string(),
        message: "Required value".to_string(),
    }
}

fn set_default(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.entry(key.to_string()).or_insert(value);
    }
}

fn deployment(object: &mut Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    if !object["spec"].is_object() {
        return vec![required("spec")];
    }
    let spec = &mut object["spec"];
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    set_default(
        spec,
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
    );
    let containers = spec.pointer_mut("/template/spec/containers");
    if let Some(containers) = containers.and_then(Value::as_array_mut) {
        for container in containers {
            set_default(container, "terminationMessagePolicy", json!("File"));
            let latest = container["image"]
                .as_str()
                .is_some_and(|i| !i.contains(':') || i.ends_with(":latest"));
            let policy = if latest { "Always" } else { "IfNotPresent" };
            set_default(container, "imagePullPolicy", json!(policy));
        }
    }
    let selector = &spec["selector"]["matchLabels"];
    match selector.as_object() {
        None => causes.push(required("spec.selector")),
        Some(match_labels) => {
            let labels = &spec["template"]["metadata"]["labels"];
            let matches = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
            if !matches {
                causes.push(FieldCause {
                    reason: "FieldValueInvalid",
                    field: "spec.template.metadata.labels".to_string(),
                    message: format!(
                        "Invalid value: {labels}: `selector` does not match template `labels`"
                    ),
                });
            }
        }
    }
    if let Some(old) = old {
        if old["spec"]["selector"] != spec["selector"] {
            causes.push(FieldCause {
                reason: "FieldValueInvalid",
                field: "spec.selector".to_string(),
                message: format!("Invalid value: {}: field is immutable", spec["selector"]),
            });
        }
    }
    let containers = spec["template"]["spec"]["containers"].as_array();
    match containers {
        Some(list) if !list.is_empty() => {
            for (i, container) in list.iter().enumerate() {
                for field in ["name", "image"] {
                    if container[field].as_str().is_none_or(str::is_empty) {
                        causes.push(required(&format!(
                            "spec.template.spec.containers[{i}].{field}"
                        )));
                    }
                }
            }
        }
        _ => causes.push(required("spec.template.spec.containers")),
    }
    causes
}

fn service(object: &mut Value, old: Option<&Value>, allocate_ip: &mut dyn FnMut() -> String) {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let spec = &mut object["spec"];
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if spec.get("clusterIP").is_none() {
        let ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str().map(str::to_string))
            .unwrap_or_else(allocate_ip);
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_default(port, "protocol", json!("TCP"));
            let number = port["port"].clone();
            set_default(port, "targetPort", number);
        }
    }
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Secret's `stringData` is write-only: the server merges it into `data`, base64-encoded.
fn secret(object: &mut Value) {
    if object["type"].as_str().is_none_or(str::is_empty) {
        object["type"] = json!("Opaque");
    }
    let Some(Value::Object(string_data)) =
        object.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (key, value) in string_data {
        let text = value.as_str().unwrap_or_default().as_bytes().to_vec();
        object["data"][key] = json!(base64(&text));
    }
}

/// Defaults and checks of a built-in kind's write; empty when the object is acceptable.
pub fn admit(
    builtin: Builtin,
    object: &mut Value,
    old: Option<&Value>,
    allocate_ip: &mut dyn FnMut() -> String,
) -> Vec<FieldCause> {
    match builtin {
        Builtin::Deployment => deployment(object, old),
        Builtin::Service => {
            service(object, old, allocate_ip);
            Vec::new()
        }
        Builtin::Secret => {
            secret(object);
            Vec::new()
        }
        Builtin::Namespace => {
            if object["status"]["phase"].is_null() {
                object["status"] = json!({"phase": "Active"});
            }
            Vec::new()
        }
        Builtin::CoreEvent
        | Builtin::Event
        | Builtin::Lease
        | Builtin::CustomResourceDefinition => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_ip() -> String {
        "10.96.0.10".to_string()
    }

    #[test]
    fn a_deployment_gets_defaults_and_its_selector_must_match() {
        let mut deploy = json!({"spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
        assert!(admit(Builtin::Deployment, &mut deploy, None, &mut no_ip).is_empty());
        assert_eq!(deploy["spec"]["replicas"], json!(1));
        assert_eq!(deploy["spec"]["strategy"]["type"], json!("RollingUpdate"));
        let mut wrong = deploy.clone();
        wrong["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let causes = admit(Builtin::Deployment, &mut wrong, None, &mut no_ip);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn an_event_reads_the_same_through_both_apis() {
        let registry = super::super::registry::Registry::with_builtins();
        let events_v1 = registry.get("events.k8s.io", "events").unwrap();
        let written = json!({"kind": "Event", "regarding": {"kind": "Canary", "name": "web"},
            "note": "rolled back", "reportingController": "canaryd.dev/canaryd", "reason": "RolledBack"});
        let core = stored(events_v1, written.clone());
        assert_eq!(core["involvedObject"]["name"], json!("web"));
        assert_eq!(core["message"], json!("rolled back"));
        assert_eq!(core["reportingComponent"], json!("canaryd.dev/canaryd"));
        let mut back = served(events_v1, core);
        back.as_object_mut().unwrap().remove("apiVersion");
        assert_eq!(back, written);
    }

    #[test]
    fn secret_string_data_is_stored_base64_encoded() {
        let mut secret =
            json!({"data": {"a": "eA=="}, "stringData": {"key": "hello", "k2": "hi!"}});
        admit(Builtin::Secret, &mut secret, None, &mut no_ip);
        assert_eq!(
            secret["data"],
            json!({"a": "eA==", "key": "aGVsbG8=", "k2": "aGkh"})
        );
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["type"], json!("Opaque"));
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn a_service_keeps_its_cluster_ip_across_updates() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        admit(Builtin::Service, &mut svc, None, &mut no_ip);
        assert_eq!(svc["spec"]["clusterIP"], json!("10.96.0.10"));
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], json!(80));
        let mut updated = json!({"spec": {"ports": [{"port": 81}]}});
        admit(Builtin::Service, &mut updated, Some(&svc), &mut || {
            "10.96.0.99".into()
        });
        assert_eq!(updated["spec"]["clusterIP"], json!("10.96.0.10"));
    }
}

//! Custom resource validation as a real API server does it with a structural schema: prune
//! unknown fields (except under `x-kubernetes-preserve-unknown-fields`), apply `default`s, then
//! validate against the CRD's `openAPIV3Schema` (with the `jsonschema` crate, after turning
//! OpenAPI's `nullable` and `x-kubernetes-int-or-string` into JSON Schema), reporting the
//! failed fields by path. Also the metadata rules every object obeys (name, label and
//! annotation key formats). Pure: no store.

use serde_json::{json, Map, Value};

use super::error::FieldCause;

/// A compiled CRD version schema.
pub struct Schema {
    structural: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").finish_non_exhaustive()
    }
}

const SUBSCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "definitions"];
const SUBSCHEMA_ONE: &[&str] = &["items", "additionalProperties", "not"];
const SUBSCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];

/// OpenAPI v3.0 schema -> JSON Schema draft 4 (which shares its `exclusiveMaximum` booleans).
fn to_json_schema(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        let converted = if SUBSCHEMA_MAPS.contains(&key.as_str()) {
            match value.as_object() {
                Some(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), to_json_schema(v)))
                        .collect(),
                ),
                None => value.clone(),
            }
        } else if SUBSCHEMA_ONE.contains(&key.as_str()) {
            to_json_schema(value)
        } else if SUBSCHEMA_LISTS.contains(&key.as_str()) {
            match value.as_array() {
                Some(items) => Value::Array(items.iter().map(to_json_schema).collect()),
                None => value.clone(),
            }
        } else if key.starts_with("x-kubernetes-") || key == "nullable" || key == "default" {
            continue;
        } else {
            value.clone()
        };
        out.insert(key.clone(), converted);
    }
    if object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if object.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(options)) = out.get_mut("enum") {
            options.push(Value::Null);
        }
    }
    Value::Object(out)
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

fn join_field(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn prune(value: &mut Value, schema: &Value, path: &str, root: bool, removed: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = root || schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
            let keep_unknown = preserves_unknown(schema) || additional.is_some();
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = join_field(path, &key);
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                match child_schema {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            prune(child, child_schema, &child_path, false, removed);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&key);
                        removed.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, item_schema, &format!("{path}[{i}]"), false, removed);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (key, property) in properties {
                    let Some(default) = property.get("default") else {
                        continue;
                    };
                    let missing = match map.get(key) {
                        None => true,
                        Some(Value::Null) => property["nullable"] != Value::Bool(true),
                        Some(_) => false,
                    };
                    if missing {
                        map.insert(key.clone(), default.clone());
                    }
                }
                for (key, child) in map.iter_mut() {
                    if let Some(property) = properties.get(key) {
                        apply_defaults(child, property);
                    }
                }
            }
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(child, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    apply_defaults(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// `/spec/steps/0/weight` -> `spec.steps[0].weight`.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// How a real server shows a bad value in `Invalid value: ...`.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".to_string(),
        Value::Array(_) => "\"array\"".to_string(),
        other => other.to_string(),
    }
}

fn quoted_list(options: &Value) -> String {
    options
        .as_array()
        .map(|o| {
            o.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn cause_of(error: &jsonschema::ValidationError<'_>) -> FieldCause {
    use jsonschema::error::ValidationErrorKind as K;
    let field = field_path(error.instance_path().as_str());
    let value = error.instance();
    let invalid = |what: String| FieldCause {
        reason: "FieldValueInvalid",
        field: field.clone(),
        message: format!("Invalid value: {}: {field} in body {what}", shown(value)),
    };
    match error.kind() {
        K::Required { property } => FieldCause {
            reason: "FieldValueRequired",
            field: join_field(&field, property.as_str().unwrap_or_default()),
            message: "Required value".to_string(),
        },
        K::Enum { options } => FieldCause {
            reason: "FieldValueNotSupported",
            field: field.clone(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                quoted_list(options)
            ),
        },
        K::Maximum { limit } => invalid(format!("should be less than or equal to {limit}")),
        K::Minimum { limit } => invalid(format!("should be greater than or equal to {limit}")),
        K::ExclusiveMaximum { limit } => invalid(format!("should be less than {limit}")),
        K::ExclusiveMinimum { limit } => invalid(format!("should be greater than {limit}")),
        K::MaxLength { limit } => invalid(format!("should be at most {limit} chars long")),
        K::MinLength { limit } => invalid(format!("should be at least {limit} chars long")),
        K::MaxItems { limit } => FieldCause {
            reason: "FieldValueTooMany",
            field: field.clone(),
            message: format!("Too many: must have at most {limit} items"),
        },
        K::MinItems { limit } => invalid(format!("should have at least {limit} items")),
        K::Pattern { pattern } => invalid(format!("should match '{pattern}'")),
        K::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(t) => t.to_string(),
                jsonschema::error::TypeKind::Multiple(ts) => {
                    let names: Vec<String> = ts.into_iter().map(|t| t.to_string()).collect();
                    names.join(", ")
                }
            };
            FieldCause {
                reason: "FieldValueTypeInvalid",
                field: field.clone(),
                message: format!(
                    "Invalid value: {}: {field} in body must be of type {expected}: {}",
                    shown(value),
                    shown(value)
                ),
            }
        }
        _ => FieldCause {
            reason: "FieldValueInvalid",
            field: field.clone(),
            message: format!("Invalid value: {}: {error}", shown(value)),
        },
    }
}

impl Schema {
    /// Compiles a CRD version's `openAPIV3Schema`; the error says why it is not a schema.
    pub fn compile(openapi: &Value) -> Result<Schema, String> {
        let validator = jsonschema::draft4::options()
            .should_validate_formats(false)
            .build(&to_json_schema(openapi))
            .map_err(|e| format!("Invalid value: not a valid schema: {e}"))?;
        Ok(Schema {
            structural: openapi.clone(),
            validator,
        })
    }

    /// The schema as the CRD declares it (for the OpenAPI documents).
    pub fn openapi(&self) -> &Value {
        &self.structural
    }

    /// Drops fields the schema does not declare; returns their paths (for `fieldValidation`).
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        let mut removed = Vec::new();
        prune(object, &self.structural, "", true, &mut removed);
        removed
    }

    pub fn apply_defaults(&self, object: &mut Value) {
        apply_defaults(object, &self.structural);
    }

    /// Every field the schema rejects (empty when valid). `metadata` is checked elsewhere.
    pub fn validate(&self, object: &Value) -> Vec<FieldCause> {
        let mut body = object.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("metadata");
        }
        let schema_without_metadata = self
            .validator
            .iter_errors(&body)
            .filter(|e| !e.instance_path().as_str().starts_with("/metadata"))
            .map(|e| cause_of(&e))
            .collect();
        schema_without_metadata
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// The rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain: most kinds.
    Subdomain,
    /// DNS-1123 label: Namespaces.
    Label,
    /// DNS-1035 label (starts with a letter): Services.
    Dns1035Label,
}

pub fn check_name(name: &str, rule: NameRule) -> Vec<FieldCause> {
    let (valid, what) = match rule {
        NameRule::Subdomain => (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
        ),
        NameRule::Label => (
            is_dns_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character",
        ),
        NameRule::Dns1035Label => (
            is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character",
        ),
    };
    if valid {
        return Vec::new();
    }
    vec![FieldCause {
        reason: "FieldValueInvalid",
        field: "metadata.name".to_string(),
        message: format!("Invalid value: \"{name}\": {what}"),
    }]
}

/// Label values: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Label and annotation keys: an optional DNS subdomain prefix and `/`, then a name part.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// `metadata.labels` and annotation keys as a real server checks them.
pub fn check_metadata(metadata: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let invalid = |field: String, value: &str, why: &str| FieldCause {
        reason: "FieldValueInvalid",
        field,
        message: format!("Invalid value: \"{value}\": {why}"),
    };
    const KEY_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', \
        and must start and end with an alphanumeric character (at most 63 characters), with an \
        optional DNS subdomain prefix and '/'";
    const VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric \
        characters, '-', '_' or '.', and must start and end with an alphanumeric character (at \
        most 63 characters)";
    for (key, value) in metadata["labels"].as_object().into_iter().flatten() {
        if !is_qualified_name(key) {
            causes.push(invalid("metadata.labels".into(), key, KEY_RULE));
        }
        let text = value.as_str().unwrap_or_default();
        if !is_label_value(text) {
            causes.push(invalid(format!("metadata.labels.{key}"), text, VALUE_RULE));
        }
    }
    for key in metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if !is_qualified_name(&key.to_lowercase()) {
            causes.push(invalid("metadata.annotations".into(), key, KEY_RULE));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary_schema() -> Schema {
        let crd: Value = serde_yaml_ng::from_str(&canaryd_api::crd::canary_crd_yaml()).unwrap();
        Schema::compile(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]).unwrap()
    }

    #[test]
    fn nullable_and_int_or_string_become_json_schema() {
        let converted = to_json_schema(&json!({"type": "object", "properties": {
            "a": {"type": "string", "nullable": true},
            "b": {"x-kubernetes-int-or-string": true}}}));
        assert_eq!(
            converted["properties"]["a"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            converted["properties"]["b"]["anyOf"][0]["type"],
            json!("integer")
        );
    }

    #[test]
    fn unknown_fields_are_pruned_except_where_preserved() {
        let schema = Schema::compile(&json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}))
        .unwrap();
        let mut object = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "spec": {"a": "1", "bogus": 2}, "status": {"free": true}, "extra": 1});
        let removed = schema.prune(&mut object);
        assert_eq!(removed, vec!["extra".to_string(), "spec.bogus".to_string()]);
        assert_eq!(object["status"]["free"], json!(true));
        assert_eq!(object["metadata"]["name"], json!("n"));
    }

    #[test]
    fn defaults_fill_nested_fields_of_a_canary() {
        let schema = canary_schema();
        let mut object = json!({"spec": {}});
        schema.apply_defaults(&mut object);
        assert_eq!(object["spec"]["analysis"]["alpha"], json!(0.01));
    }

    #[test]
    fn a_violation_names_the_field_like_a_real_server() {
        let schema = Schema::compile(&json!({"type": "object", "properties": {"spec": {
            "type": "object", "required": ["name"], "properties": {
                "alpha": {"type": "number", "maximum": 0.5},
                "steps": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "kind": {"type": "string", "enum": ["a", "b"]}}}}}))
        .unwrap();
        let causes =
            schema.validate(&json!({"spec": {"alpha": 0.9, "steps": [1, -1], "kind": "c"}}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.alpha"), "{causes:?}");
        assert!(fields.contains(&"spec.steps[1]"), "{causes:?}");
        assert!(fields.contains(&"spec.name"), "{causes:?}");
        let alpha = causes.iter().find(|c| c.field == "spec.alpha").unwrap();
        assert_eq!(
            alpha.message,
            "Invalid value: 0.9: spec.alpha in body should be less than or equal to 0.5"
        );
        let kind = causes.iter().find(|c| c.field == "spec.kind").unwrap();
        assert_eq!(kind.reason, "FieldValueNotSupported");
    }

    #[test]
    fn names_follow_the_rule_of_their_kind() {
        assert!(check_name("flask-app.v1", NameRule::Subdomain).is_empty());
        assert_eq!(
            check_name("Flask_App", NameRule::Subdomain)[0].field,
            "metadata.name"
        );
        assert!(!check_name("", NameRule::Subdomain).is_empty());
        assert!(!check_name("prod.eu", NameRule::Label).is_empty());
        assert!(!check_name("1web", NameRule::Dns1035Label).is_empty());
        assert!(check_name("web-1", NameRule::Dns1035Label).is_empty());
    }

    #[test]
    fn labels_and_annotation_keys_are_checked() {
        let ok = json!({"labels": {"app.kubernetes.io/name": "flask_app-1.0", "empty": ""},
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}});
        assert!(check_metadata(&ok).is_empty());
        let bad = json!({"labels": {"app": "has space", "-bad": "x"}});
        let fields: Vec<String> = check_metadata(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["metadata.labels", "metadata.labels.app"]);
    }
}

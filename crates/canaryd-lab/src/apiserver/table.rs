//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for, with the
//! columns of a CRD's `additionalPrinterColumns` or, for built-ins, the columns a real server
//! prints. Pure: objects in, table JSON out.

use serde_json::{json, Value};

use super::kinds::Builtin;

/// How a cell's value is found in an object.
#[derive(Debug, Clone)]
pub enum Cell {
    Name,
    /// A simple JSONPath (`.status.phase`, `.spec.containers[*].image`).
    Path(String),
    /// A timestamp at a JSONPath, shown as an age (`5m`), like `type: date` columns.
    Age(String),
    Computed(fn(&Value) -> Value),
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub cell: Cell,
}

impl Column {
    pub fn new(name: &str, type_: &str, cell: Cell) -> Self {
        Column {
            name: name.to_string(),
            type_: type_.to_string(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            cell,
        }
    }

    fn format(mut self, format: &str) -> Self {
        self.format = format.to_string();
        self
    }

    fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }

    fn value(&self, object: &Value) -> Value {
        match &self.cell {
            Cell::Name => object["metadata"]["name"].clone(),
            // Like the API server, a string column shows any other value as JSON.
            Cell::Path(path) => match join(select(object, path)) {
                Value::Null => Value::Null,
                Value::String(s) => Value::String(s),
                other if self.type_ == "string" => Value::String(other.to_string()),
                other => other,
            },
            Cell::Age(path) => select(object, path)
                .first()
                .and_then(|v| v.as_str())
                .map_or(Value::Null, |t| Value::String(age_of(t))),
            Cell::Computed(f) => f(object),
        }
    }
}

fn name_column() -> Column {
    Column::new("Name", "string", Cell::Name).format("name")
}

fn age_column() -> Column {
    Column::new(
        "Age",
        "date",
        Cell::Age(".metadata.creationTimestamp".into()),
    )
}

/// Values at a JSONPath of the form `.a.b[0].c` or `.a[*].b`; missing paths select nothing.
pub fn select<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = vec![object];
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (field, index) = match segment.split_once('[') {
            Some((field, rest)) => (field, Some(rest.trim_end_matches(']'))),
            None => (segment, None),
        };
        let mut next = Vec::new();
        for value in current {
            let value = if field.is_empty() {
                Some(value)
            } else {
                value.get(field)
            };
            match (value, index) {
                (Some(v), None) => next.push(v),
                (Some(Value::Array(items)), Some("*")) => next.extend(items.iter()),
                (Some(Value::Array(items)), Some(i)) => {
                    if let Some(item) = i.parse::<usize>().ok().and_then(|i| items.get(i)) {
                        next.push(item);
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    current.into_iter().filter(|v| !v.is_null()).collect()
}

fn join(values: Vec<&Value>) -> Value {
    match values.as_slice() {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => Value::String(
            many.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// `kubectl`'s short human duration (`45s`, `3m20s`, `5h`, `12d`), as the server prints ages.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if years < 8 {
        match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        }
    } else {
        format!("{years}y")
    }
}

fn age_of(timestamp: &str) -> String {
    match timestamp.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<invalid>".to_string(),
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn service_external_ip(svc: &Value) -> Value {
    let ips: Vec<String> = select(svc, ".spec.externalIPs[*]")
        .into_iter()
        .map(text)
        .collect();
    Value::String(if ips.is_empty() {
        "<none>".into()
    } else {
        ips.join(",")
    })
}

fn service_ports(svc: &Value) -> Value {
    let ports: Vec<String> = select(svc, ".spec.ports[*]")
        .into_iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{node}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    Value::String(if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    })
}

fn selector_text(map: &Value) -> Value {
    let pairs: Vec<String> = map
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
        .unwrap_or_default();
    Value::String(if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    })
}

fn service_selector(svc: &Value) -> Value {
    selector_text(&svc["spec"]["selector"])
}

fn deployment_selector(deploy: &Value) -> Value {
    selector_text(&deploy["spec"]["selector"]["matchLabels"])
}

fn deployment_ready(deploy: &Value) -> Value {
    let ready = deploy["status"]["readyReplicas"].as_i64().unwrap_or(0);
    let desired = deploy["spec"]["replicas"].as_i64().unwrap_or(1);
    Value::String(format!("{ready}/{desired}"))
}

fn deployment_up_to_date(deploy: &Value) -> Value {
    json!(deploy["status"]["updatedReplicas"].as_i64().unwrap_or(0))
}

fn deployment_available(deploy: &Value) -> Value {
    json!(deploy["status"]["availableReplicas"].as_i64().unwrap_or(0))
}

fn deployment_containers(deploy: &Value) -> Value {
    join(select(deploy, ".spec.template.spec.containers[*].name"))
}

fn deployment_images(deploy: &Value) -> Value {
    join(select(deploy, ".spec.template.spec.containers[*].image"))
}

fn secret_data_count(secret: &Value) -> Value {
    json!(secret["data"].as_object().map_or(0, serde_json::Map::len))
}

fn event_last_seen(event: &Value) -> Value {
    let candidates = [
        ".series.lastObservedTime",
        ".lastTimestamp",
        ".deprecatedLastTimestamp",
        ".eventTime",
        ".metadata.creationTimestamp",
    ];
    candidates
        .iter()
        .find_map(|path| select(event, path).first().and_then(|v| v.as_str()))
        .map_or(Value::Null, |t| Value::String(age_of(t)))
}

fn object_ref(reference: &Value) -> Value {
    Value::String(format!(
        "{}/{}",
        text(&reference["kind"]).to_lowercase(),
        text(&reference["name"])
    ))
}

fn core_event_object(event: &Value) -> Value {
    object_ref(&event["involvedObject"])
}

fn event_object(event: &Value) -> Value {
    object_ref(&event["regarding"])
}

/// The columns a real server prints for a built-in kind.
pub fn builtin_columns(builtin: Builtin) -> Vec<Column> {
    use Cell::{Computed, Path};
    let path = |p: &str| Path(p.to_string());
    match builtin {
        Builtin::Namespace => vec![
            name_column(),
            Column::new("Status", "string", path(".status.phase")),
            age_column(),
        ],
        Builtin::Service => vec![
            name_column(),
            Column::new("Type", "string", path(".spec.type")),
            Column::new("Cluster-IP", "string", path(".spec.clusterIP")),
            Column::new("External-IP", "string", Computed(service_external_ip)),
            Column::new("Port(s)", "string", Computed(service_ports)),
            age_column(),
            Column::new("Selector", "string", Computed(service_selector)).wide(),
        ],
        Builtin::Secret => vec![
            name_column(),
            Column::new("Type", "string", path(".type")),
            Column::new("Data", "string", Computed(secret_data_count)),
            age_column(),
        ],
        Builtin::Deployment => vec![
            name_column(),
            Column::new("Ready", "string", Computed(deployment_ready)),
            Column::new("Up-to-date", "string", Computed(deployment_up_to_date)),
            Column::new("Available", "string", Computed(deployment_available)),
            age_column(),
            Column::new("Containers", "string", Computed(deployment_containers)).wide(),
            Column::new("Images", "string", Computed(deployment_images)).wide(),
            Column::new("Selector", "string", Computed(deployment_selector)).wide(),
        ],
        Builtin::CoreEvent => vec![
            Column::new("Last Seen", "string", Computed(event_last_seen)),
            Column::new("Type", "string", path(".type")),
            Column::new("Reason", "string", path(".reason")),
            Column::new("Object", "string", Computed(core_event_object)),
            Column::new("Message", "string", path(".message")),
        ],
        Builtin::Event => vec![
            Column::new("Last Seen", "string", Computed(event_last_seen)),
            Column::new("Type", "string", path(".type")),
            Column::new("Reason", "string", path(".reason")),
            Column::new("Object", "string", Computed(event_object)),
            Column::new("Message", "string", path(".note")),
        ],
        Builtin::Lease => vec![
            name_column(),
            Column::new("Holder", "string", path(".spec.holderIdentity")),
            age_column(),
        ],
        Builtin::CustomResourceDefinition => vec![
            name_column(),
            Column::new("Created At", "date", path(".metadata.creationTimestamp")),
        ],
    }
}

/// Name plus a CRD version's `additionalPrinterColumns` (or just Age when it declares none).
pub fn custom_columns(declared: &Value) -> Vec<Column> {
    let mut columns = vec![name_column()];
    match declared.as_array() {
        Some(declared) if !declared.is_empty() => {
            for column in declared {
                let type_ = column["type"].as_str().unwrap_or("string");
                let path = column["jsonPath"].as_str().unwrap_or_default().to_string();
                let cell = if type_ == "date" {
                    Cell::Age(path)
                } else {
                    Cell::Path(path)
                };
                let mut parsed =
                    Column::new(column["name"].as_str().unwrap_or_default(), type_, cell);
                parsed.format = column["format"].as_str().unwrap_or_default().to_string();
                parsed.description = column["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                parsed.priority = column["priority"].as_i64().unwrap_or(0);
                columns.push(parsed);
            }
        }
        _ => columns.push(age_column()),
    }
    columns
}

/// What a row carries besides its cells (`includeObject=None|Metadata|Object`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn row(columns: &[Column], object: &Value, include: Include) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| c.value(object)).collect();
    let embedded = match include {
        Include::None => Value::Null,
        Include::Object => object.clone(),
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        }),
    };
    json!({"cells": cells, "object": embedded})
}

/// A `Table` of `objects` at list resourceVersion `resource_version`.
pub fn table(
    columns: &[Column],
    objects: &[Value],
    include: Include,
    resource_version: &str,
) -> Value {
    let definitions: Vec<Value> = columns.iter().map(Column::definition).collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(columns, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn jsonpath_selects_nested_fields_and_lists() {
        let deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}}}});
        assert_eq!(
            join(select(&deploy, ".spec.template.spec.containers[*].image")),
            json!("x:1,y:2")
        );
        assert_eq!(
            join(select(&deploy, ".spec.template.spec.containers[1].name")),
            json!("b")
        );
        assert_eq!(join(select(&deploy, ".status.phase")), Value::Null);
    }

    #[test]
    fn a_deployment_row_shows_ready_over_desired() {
        let deploy = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        let t = table(
            &builtin_columns(Builtin::Deployment),
            &[deploy],
            Include::Metadata,
            "7",
        );
        assert_eq!(t["rows"][0]["cells"][0], json!("web"));
        assert_eq!(t["rows"][0]["cells"][1], json!("2/3"));
        assert_eq!(
            t["rows"][0]["object"]["kind"],
            json!("PartialObjectMetadata")
        );
        assert_eq!(t["metadata"]["resourceVersion"], json!("7"));
    }
}

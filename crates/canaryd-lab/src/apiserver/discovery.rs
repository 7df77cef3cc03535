//! Discovery documents (`/api`, `/apis`, group and group/version resource lists, `/version`)
//! built from the registry, so kube-rs and kubectl find every served resource, including
//! custom resources the moment their CRD is created. Also the minimal OpenAPI v3 documents
//! kubectl reads before `apply` to learn that the server validates fields itself
//! (`fieldValidation`): one PATCH operation per kind with its group-version-kind and that
//! parameter, plus the CRDs' schemas (so `kubectl explain canary.spec` works); built-in kinds
//! have none, and `/openapi/v2` stays 404. Pure: registry in, JSON out.

use serde_json::{json, Value};

use super::registry::{Registry, ResourceType};

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-canaryd-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/`: the paths the server serves, as a real server lists them.
pub fn root_paths(registry: &Registry) -> Value {
    let mut paths = vec![
        "/api".to_string(),
        "/api/v1".to_string(),
        "/apis".to_string(),
    ];
    for (group, versions) in registry.group_versions() {
        if group.is_empty() {
            continue;
        }
        paths.push(format!("/apis/{group}"));
        paths.extend(versions.iter().map(|v| format!("/apis/{group}/{v}")));
    }
    paths.extend(["/healthz", "/livez", "/openapi/v3", "/readyz", "/version"].map(String::from));
    json!({"paths": paths})
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first.
fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stability, minor) = if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n.parse().unwrap_or(0))
    } else {
        (2, 0)
    };
    (stability, major, minor)
}

fn group_document(group: &str, mut versions: Vec<String>) -> Value {
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, versions)| group_document(&group, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    registry
        .group_versions()
        .into_iter()
        .find(|(group, _)| group == name && !name.is_empty())
        .map(|(group, versions)| group_document(&group, versions))
}

fn served_at<'a>(
    registry: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a ResourceType> + 'a {
    registry
        .all()
        .filter(move |r| r.group == group && r.version(version).is_some())
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// The `APIResourceList` of one group/version, or None when nothing is served there.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for resource in served_at(registry, group, version) {
        let mut entry = json!({
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": VERBS,
        });
        if !resource.short_names.is_empty() {
            entry["shortNames"] = json!(resource.short_names);
        }
        if !resource.categories.is_empty() {
            entry["categories"] = json!(resource.categories);
        }
        resources.push(entry);
        if resource.scale_subresource.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if resource.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        "api/v1".to_string()
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group/version's document is.
pub fn openapi_index(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.group_versions() {
        for version in versions {
            let path = openapi_path(&group, &version);
            let url = format!("/openapi/v3/{path}?hash=lab");
            paths.insert(path, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/apis/<group>/<version>`: one PATCH operation per kind, which is what kubectl
/// reads to learn that the server supports `fieldValidation`.
/// Where a real server names a custom resource's schema: `dev.canaryd.v1alpha1.Canary`.
fn schema_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

pub fn openapi_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for resource in served_at(registry, group, version) {
        if let Some(schema) = resource.version(version).and_then(|v| v.schema.as_ref()) {
            let mut documented = schema.openapi().clone();
            documented["x-kubernetes-group-version-kind"] =
                json!([{"group": group, "version": version, "kind": resource.kind}]);
            schemas.insert(schema_name(group, version, &resource.kind), documented);
        }
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let scope = if resource.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let path = format!("{prefix}{scope}/{}/{{name}}", resource.plural);
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", resource.kind),
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": resource.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-canaryd-lab"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_discoverable_with_status_subresources() {
        let registry = Registry::with_builtins();
        let apps = resource_list(&registry, "apps", "v1").unwrap();
        let names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["deployments", "deployments/scale", "deployments/status"]
        );
        let groups = group_list(&registry);
        let group_names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert!(group_names.contains(&"coordination.k8s.io"));
        assert!(!group_names.contains(&""));
        assert!(resource_list(&registry, "apps", "v2").is_none());
    }

    #[test]
    fn the_preferred_version_is_the_most_stable() {
        let doc = group_document(
            "x.dev",
            vec!["v1alpha1".into(), "v1".into(), "v2beta1".into()],
        );
        assert_eq!(doc["preferredVersion"]["version"], json!("v1"));
        assert_eq!(doc["versions"][1]["version"], json!("v2beta1"));
    }
}

//! Which resources the server serves: the preloaded built-in kinds and the custom resources
//! that `CustomResourceDefinition` objects turn on. Owns names, scope, versions, subresources,
//! printer columns and compiled schemas; never stores objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::error::FieldCause;
use super::kinds::Builtin;
use super::table::{self, Column};
use super::validation::Schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Builtin(Builtin),
    Custom,
}

#[derive(Debug, Clone)]
pub struct ServedVersion {
    pub name: String,
    pub schema: Option<Arc<Schema>>,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub versions: Vec<ServedVersion>,
    pub storage_version: String,
    pub status_subresource: bool,
    pub scale_subresource: Option<ScalePaths>,
    pub origin: Origin,
}

/// Where the `scale` subresource reads and writes replicas (a CRD's `subresources.scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

impl ResourceType {
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The group objects are stored under: `events.k8s.io` Events share core Events' storage,
    /// as on a real server; every other resource has its own.
    pub fn storage_group(&self) -> &str {
        if self.origin == Origin::Builtin(Builtin::Event) {
            ""
        } else {
            &self.group
        }
    }

    /// The apiVersion of objects as stored.
    pub fn storage_api_version(&self) -> String {
        if self.origin == Origin::Builtin(Builtin::Event) {
            "v1".to_string()
        } else {
            self.api_version(&self.storage_version)
        }
    }

    pub fn version(&self, version: &str) -> Option<&ServedVersion> {
        self.versions.iter().find(|v| v.name == version)
    }

    /// The table columns of a served version.
    pub fn columns(&self, version: &str) -> &[Column] {
        self.version(version).map_or(&[], |v| v.columns.as_slice())
    }

    pub fn is_custom(&self) -> bool {
        self.origin == Origin::Custom
    }

    /// Kinds whose `metadata.generation` counts spec changes (workloads, CRDs, custom resources).
    pub fn tracks_generation(&self) -> bool {
        matches!(
            self.origin,
            Origin::Custom
                | Origin::Builtin(Builtin::Deployment | Builtin::CustomResourceDefinition)
        )
    }
}

/// `(group, plural)` identifies a resource's storage; versions are views of it.
pub type GroupResource = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<GroupResource, ResourceType>,
}

struct BuiltinSpec {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    builtin: Builtin,
}

const BUILTINS: &[BuiltinSpec] = &[
    BuiltinSpec {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        status: true,
        builtin: Builtin::Namespace,
    },
    BuiltinSpec {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        builtin: Builtin::Service,
    },
    BuiltinSpec {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        builtin: Builtin::Secret,
    },
    BuiltinSpec {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        builtin: Builtin::CoreEvent,
    },
    BuiltinSpec {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        builtin: Builtin::Event,
    },
    BuiltinSpec {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        builtin: Builtin::Deployment,
    },
    BuiltinSpec {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        builtin: Builtin::Lease,
    },
    BuiltinSpec {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        status: true,
        builtin: Builtin::CustomResourceDefinition,
    },
];

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

fn str_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn required(value: &Value, field: &str, causes: &mut Vec<FieldCause>) -> String {
    match value.as_str() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => {
            causes.push(FieldCause {
                reason: "FieldValueRequired",
                field: field.to_string(),
                message: "Required value".to_string(),
            });
            String::new()
        }
    }
}

/// The custom resource a CRD object defines, with its schemas compiled; or the field errors
/// a real server reports for a CRD it refuses.
pub fn from_crd(crd: &Value) -> Result<ResourceType, Vec<FieldCause>> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let mut causes = Vec::new();
    let group = required(&spec["group"], "spec.group", &mut causes);
    let plural = required(&names["plural"], "spec.names.plural", &mut causes);
    let kind = required(&names["kind"], "spec.names.kind", &mut causes);
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(FieldCause {
            reason: "FieldValueInvalid",
            field: "metadata.name".to_string(),
            message: format!(
                "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
            ),
        });
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            causes.push(FieldCause {
                reason: "FieldValueNotSupported",
                field: "spec.scope".to_string(),
                message: "Unsupported value: supported values: \"Cluster\", \"Namespaced\""
                    .to_string(),
            });
            true
        }
    };
    let mut versions = Vec::new();
    let mut storage_version = None;
    let mut status_subresource = false;
    let mut scale_subresource = None;
    let empty = Vec::new();
    let declared = spec["versions"].as_array().unwrap_or(&empty);
    if declared.is_empty() {
        causes.push(FieldCause {
            reason: "FieldValueRequired",
            field: "spec.versions".to_string(),
            message: "Required value: must have exactly one version marked as storage version"
                .to_string(),
        });
    }
    for (i, version) in declared.iter().enumerate() {
        let version_name = required(
            &version["name"],
            &format!("spec.versions[{i}].name"),
            &mut causes,
        );
        if version["storage"].as_bool() == Some(true) {
            storage_version = Some(version_name.clone());
        }
        status_subresource |= version["subresources"]["status"].is_object();
        let scale = &version["subresources"]["scale"];
        if let Some(spec_replicas) = scale["specReplicasPath"].as_str() {
            scale_subresource = Some(ScalePaths {
                spec_replicas: spec_replicas.to_string(),
                status_replicas: scale["statusReplicasPath"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                label_selector: scale["labelSelectorPath"].as_str().map(str::to_string),
            });
        }
        if version["served"].as_bool() != Some(true) {
            continue;
        }
        let schema = match &version["schema"]["openAPIV3Schema"] {
            Value::Null => None,
            schema => match Schema::compile(schema) {
                Ok(compiled) => Some(Arc::new(compiled)),
                Err(message) => {
                    causes.push(FieldCause {
                        reason: "FieldValueInvalid",
                        field: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        message,
                    });
                    None
                }
            },
        };
        let columns = table::custom_columns(&version["additionalPrinterColumns"]);
        versions.push(ServedVersion {
            name: version_name,
            schema,
            columns,
        });
    }
    if storage_version.is_none() && !declared.is_empty() {
        causes.push(FieldCause {
            reason: "FieldValueInvalid",
            field: "spec.versions".to_string(),
            message: "Invalid value: must have exactly one version marked as storage version"
                .to_string(),
        });
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let list_kind = names["listKind"]
        .as_str()
        .map_or_else(|| format!("{kind}List"), str::to_string);
    let singular = names["singular"]
        .as_str()
        .map_or_else(|| kind.to_lowercase(), str::to_string);
    Ok(ResourceType {
        group,
        plural,
        singular,
        list_kind,
        kind,
        namespaced,
        short_names: str_list(&names["shortNames"]),
        categories: str_list(&names["categories"]),
        versions,
        storage_version: storage_version.unwrap_or_default(),
        status_subresource,
        scale_subresource,
        origin: Origin::Custom,
    })
}

impl Registry {
    /// The built-in kinds a fresh server serves.
    pub fn with_builtins() -> Self {
        let mut registry = Registry::default();
        for spec in BUILTINS {
            let columns = table::builtin_columns(spec.builtin);
            registry.insert(ResourceType {
                group: spec.group.to_string(),
                plural: spec.plural.to_string(),
                singular: spec.kind.to_lowercase(),
                kind: spec.kind.to_string(),
                list_kind: format!("{}List", spec.kind),
                namespaced: spec.namespaced,
                short_names: strings(spec.short_names),
                categories: strings(spec.categories),
                versions: vec![ServedVersion {
                    name: spec.version.to_string(),
                    schema: None,
                    columns,
                }],
                storage_version: spec.version.to_string(),
                status_subresource: spec.status,
                scale_subresource: (spec.builtin == Builtin::Deployment).then(|| ScalePaths {
                    spec_replicas: ".spec.replicas".into(),
                    status_replicas: ".status.replicas".into(),
                    label_selector: Some(".spec.selector".into()),
                }),
                origin: Origin::Builtin(spec.builtin),
            });
        }
        registry
    }

    pub fn insert(&mut self, resource: ResourceType) {
        self.types
            .insert((resource.group.clone(), resource.plural.clone()), resource);
    }

    pub fn remove(&mut self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types.remove(&(group.to_string(), plural.to_string()))
    }

    /// The resource served at `/apis/<group>/<version>/<plural>`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|r| r.version(version).is_some())
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&(group.to_string(), plural.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Served group/versions in a stable order: `(group, [versions])`, core group first.
    pub fn group_versions(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for resource in self.types.values() {
            let versions = groups.entry(resource.group.clone()).or_default();
            for version in &resource.versions {
                if !versions.contains(&version.name) {
                    versions.push(version.name.clone());
                }
            }
        }
        groups.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_crd_becomes_a_namespaced_resource_with_status_and_columns() {
        let crd: Value = serde_yaml_ng::from_str(&canaryd_api::crd::canary_crd_yaml()).unwrap();
        let canaries = from_crd(&crd).unwrap();
        assert_eq!(canaries.group, "canaryd.dev");
        assert_eq!(canaries.plural, "canaries");
        assert_eq!(canaries.short_names, vec!["cny".to_string()]);
        assert!(canaries.namespaced && canaries.status_subresource);
        let v1alpha1 = canaries.version("v1alpha1").unwrap();
        assert!(v1alpha1.schema.is_some());
        let names: Vec<&str> = v1alpha1.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Phase",
                "Step",
                "Stage weight",
                "Revision",
                "Message",
                "Age"
            ]
        );
    }

    #[test]
    fn a_crd_named_unlike_its_plural_and_group_is_refused() {
        let crd = serde_json::json!({
            "metadata": {"name": "wrong"},
            "spec": {"group": "x.dev", "scope": "Namespaced",
                     "names": {"plural": "things", "kind": "Thing"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        let causes = from_crd(&crd).unwrap_err();
        assert_eq!(causes[0].field, "metadata.name");
    }
}

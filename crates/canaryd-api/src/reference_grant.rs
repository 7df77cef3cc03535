//! The Gateway API's `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`), as canaryd
//! reads it: a grant in a *target* namespace names the namespaces (and kinds) whose objects
//! may refer to objects there. canaryd honours grants whose `from` names `canaryd.dev`
//! `Canary` and whose `to` names the kind it would drive (`apps` `Deployment`,
//! `networking.istio.io` `VirtualService`), optionally one object by name.
//!
//! The type covers the fields canaryd reads; unknown fields are ignored, so grants written
//! for the full upstream CRD parse too.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group and kind a grant's `from` must name for canaryd to honour it.
pub const CANARY_GROUP: &str = "canaryd.dev";
pub const CANARY_KIND: &str = "Canary";

/// Trusts kinds of objects in other namespaces to refer to kinds of objects in this one.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    plural = "referencegrants",
    shortname = "refgrant",
    category = "gateway-api",
    namespaced
)]
pub struct ReferenceGrantSpec {
    /// Who may refer (entries are ORed).
    #[schemars(length(min = 1, max = 16))]
    pub from: Vec<ReferenceGrantFrom>,
    /// What may be referred to in this namespace (entries are ORed).
    #[schemars(length(min = 1, max = 16))]
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ReferenceGrantFrom {
    /// API group of the referring kind; `canaryd.dev` for Canaries.
    #[schemars(length(max = 253))]
    pub group: String,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The namespace the referring objects live in.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ReferenceGrantTo {
    /// API group of the referred-to kind (`apps`, `networking.istio.io`; `""` is core).
    #[schemars(length(max = 253))]
    pub group: String,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Only this object; every object of the kind when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
}

/// One object a Canary refers to: where it is, its group and kind, its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference<'a> {
    pub group: &'static str,
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl std::fmt::Display for Reference<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ReferenceGrant {
    /// True when this grant lets Canaries in `from_namespace` drive `target`. A grant only
    /// speaks for its own namespace.
    pub fn allows(&self, from_namespace: &str, target: &Reference) -> bool {
        self.metadata.namespace.as_deref() == Some(target.namespace)
            && self.spec.from.iter().any(|f| {
                f.group == CANARY_GROUP && f.kind == CANARY_KIND && f.namespace == from_namespace
            })
            && self.spec.to.iter().any(|t| {
                t.group == target.group
                    && t.kind == target.kind
                    && t.name.as_deref().is_none_or(|n| n == target.name)
            })
    }
}

/// The grant that would allow `target` from `from_namespace`, as one line of YAML a person
/// can pass to `kubectl apply -f -`.
pub fn grant_for(from_namespace: &str, target: &Reference) -> String {
    format!(
        "{{apiVersion: gateway.networking.k8s.io/v1beta1, kind: ReferenceGrant, \
         metadata: {{name: canaryd-from-{from_namespace}, namespace: {}}}, \
         spec: {{from: [{{group: {CANARY_GROUP}, kind: {CANARY_KIND}, namespace: {from_namespace}}}], \
         to: [{{group: {}, kind: {}, name: {}}}]}}}}",
        target.namespace, target.group, target.kind, target.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ns: &str, from: &str, to_kind: &str, name: Option<&str>) -> ReferenceGrant {
        let group = if to_kind == "Deployment" {
            "apps"
        } else {
            "networking.istio.io"
        };
        let mut g = ReferenceGrant::new(
            "g",
            ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: CANARY_GROUP.into(),
                    kind: CANARY_KIND.into(),
                    namespace: from.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: group.into(),
                    kind: to_kind.into(),
                    name: name.map(Into::into),
                }],
            },
        );
        g.metadata.namespace = Some(ns.into());
        g
    }

    const STAGE_APP: Reference = Reference {
        group: "apps",
        kind: "Deployment",
        namespace: "stage",
        name: "flaskapp",
    };

    #[test]
    fn a_grant_allows_only_its_namespace_the_named_source_and_the_named_object() {
        assert!(grant("stage", "prod", "Deployment", None).allows("prod", &STAGE_APP));
        assert!(grant("stage", "prod", "Deployment", Some("flaskapp")).allows("prod", &STAGE_APP));
        // Another source namespace, another object, another kind, another grant namespace.
        assert!(!grant("stage", "tenant", "Deployment", None).allows("prod", &STAGE_APP));
        assert!(!grant("stage", "prod", "Deployment", Some("other")).allows("prod", &STAGE_APP));
        assert!(!grant("stage", "prod", "VirtualService", None).allows("prod", &STAGE_APP));
        assert!(!grant("victim", "prod", "Deployment", None).allows("prod", &STAGE_APP));
    }

    #[test]
    fn the_suggested_grant_parses_and_allows_the_reference() {
        let text = grant_for("prod", &STAGE_APP);
        let g: ReferenceGrant = serde_yaml_ng::from_str(&text).expect("the suggestion parses");
        assert!(g.allows("prod", &STAGE_APP));
    }
}

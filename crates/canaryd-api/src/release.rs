//! What a release is: the images a pod template runs, plus the few values the Canary's
//! `spec.revision` names. Environments differ on purpose in everything else (env, resources,
//! replicas, config references, service accounts, labels), so none of that is a revision.
//!
//! A revision is written in words a person reads: `demoapp:v2` for a pod of one container,
//! `app=demoapp:v2, worker=jobs:v2` for several (by container name), `init:migrate=tools:v2` for an init
//! container, then the named values in brackets. Equal revisions are equal releases.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use sha2::{Digest, Sha256};

use crate::limits::{ELLIPSIS, MAX_REVISION};
use crate::RevisionSpec;

/// The release `template` runs, under the Canary's `rule`.
pub fn revision(template: &PodTemplateSpec, rule: &RevisionSpec) -> String {
    let pod = template.spec.as_ref();
    let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
    let inits = pod
        .and_then(|p| p.init_containers.as_deref())
        .unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    if containers.len() == 1 && inits.is_empty() {
        parts.push(image_identity(containers[0].image.as_deref().unwrap_or("")).into_owned());
    } else {
        // By name: the same containers in another order are the same release (promotion
        // matches them by name).
        let mut named: Vec<&Container> = containers.iter().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        for c in named {
            parts.push(format!("{}={}", c.name, image_of(c)));
        }
        let mut named: Vec<&Container> = inits.iter().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        for c in named {
            parts.push(format!("init:{}={}", c.name, image_of(c)));
        }
    }
    let mut text = parts.join(", ");
    let extras = named_values(template, rule);
    if !extras.is_empty() {
        text.push_str(&format!(
            " ({})",
            extras
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    bounded_revision(text)
}

/// The values `rule` names in `template`, in the rule's order: each metadata key (an
/// annotation before a label of the same key; empty when neither is set), then each env
/// var's literal values over all containers (several distinct values joined with `|`).
pub fn named_values(template: &PodTemplateSpec, rule: &RevisionSpec) -> Vec<(String, String)> {
    let meta = template.metadata.as_ref();
    let mut out = Vec::new();
    for key in &rule.metadata {
        let value = meta
            .and_then(|m| m.annotations.as_ref().and_then(|a| a.get(key)))
            .or_else(|| meta.and_then(|m| m.labels.as_ref().and_then(|l| l.get(key))))
            .cloned()
            .unwrap_or_default();
        out.push((key.clone(), value));
    }
    let containers = template.spec.iter().flat_map(|p| {
        p.containers
            .iter()
            .chain(p.init_containers.iter().flatten())
    });
    let containers: Vec<&Container> = containers.collect();
    for name in &rule.env {
        let mut values: Vec<&str> = Vec::new();
        for c in &containers {
            for e in c.env.iter().flatten().filter(|e| &e.name == name) {
                let v = e.value.as_deref().unwrap_or("");
                if !values.contains(&v) {
                    values.push(v);
                }
            }
        }
        out.push((name.clone(), values.join("|")));
    }
    out
}

fn image_of(c: &Container) -> Cow<'_, str> {
    image_identity(c.image.as_deref().unwrap_or(""))
}

/// An image reference as a release identity: with a digest, the repository and the digest
/// (a tag beside a digest does not decide what runs); otherwise the reference as written.
pub fn image_identity(reference: &str) -> Cow<'_, str> {
    let Some((name, digest)) = reference.split_once('@') else {
        return Cow::Borrowed(reference);
    };
    // A tag is a `:` in the last path segment (a registry's port is before the first `/`).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[last_slash..].find(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    };
    Cow::Owned(format!("{repo}@{digest}"))
}

/// A revision of at most [`MAX_REVISION`] bytes: a longer one keeps its start and gets a
/// digest of the whole, so two long revisions that differ only at the end still differ.
fn bounded_revision(text: String) -> String {
    if text.len() <= MAX_REVISION {
        return text;
    }
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut keep = MAX_REVISION - 64;
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{ELLIPSIS}sha256:{hex}", &text[..keep])
}

/// A revision as messages show it: digests cut to their first 12 hex digits
/// (`demoapp@sha256:0123456789ab…`); the full revision stays in the status.
pub fn shorten(revision: &str) -> String {
    const SHOWN: usize = 12;
    let mut out = String::with_capacity(revision.len());
    let mut rest = revision;
    while let Some(i) = rest.find("@sha256:") {
        let start = i + "@sha256:".len();
        out.push_str(&rest[..start]);
        let hex_len = rest[start..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - start);
        if hex_len > SHOWN {
            out.push_str(&rest[start..start + SHOWN]);
            out.push_str(ELLIPSIS);
        } else {
            out.push_str(&rest[start..start + hex_len]);
        }
        rest = &rest[start + hex_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn one_container_is_its_image_and_nothing_else_of_the_pod_counts() {
        let prod = template(json!({
            "metadata": {"labels": {"env": "prod"}},
            "spec": {"serviceAccountName": "prod-sa", "containers": [{
                "name": "app", "image": "demoapp:v1",
                "env": [{"name": "DATABASE_URL", "value": "postgres://prod"}],
                "envFrom": [{"configMapRef": {"name": "prod-config"}}],
                "resources": {"limits": {"cpu": "2"}}
            }]}
        }));
        let stage = template(json!({
            "metadata": {"labels": {"env": "stage"}},
            "spec": {"containers": [{
                "name": "app", "image": "demoapp:v1",
                "env": [{"name": "DATABASE_URL", "value": "postgres://stage"}],
                "resources": {"limits": {"cpu": "500m"}}
            }]}
        }));
        let rule = RevisionSpec::default();
        assert_eq!(revision(&prod, &rule), "demoapp:v1");
        assert_eq!(revision(&prod, &rule), revision(&stage, &rule));
    }

    #[test]
    fn several_containers_and_init_containers_are_named() {
        let t = template(json!({"spec": {
            "initContainers": [{"name": "migrate", "image": "tools:v2"}],
            "containers": [{"name": "app", "image": "demoapp:v2"}, {"name": "worker", "image": "jobs:v2"}]
        }}));
        assert_eq!(
            revision(&t, &RevisionSpec::default()),
            "app=demoapp:v2, worker=jobs:v2, init:migrate=tools:v2"
        );
        let swapped = template(json!({"spec": {
            "initContainers": [{"name": "migrate", "image": "tools:v2"}],
            "containers": [{"name": "worker", "image": "jobs:v2"}, {"name": "app", "image": "demoapp:v2"}]
        }}));
        assert_eq!(
            revision(&swapped, &RevisionSpec::default()),
            revision(&t, &RevisionSpec::default()),
            "the order of containers is not a release"
        );
    }

    #[test]
    fn a_digest_takes_precedence_over_a_tag() {
        let tagged = format!("registry.local:5000/team/demoapp:v2@{DIGEST}");
        assert_eq!(
            image_identity(&tagged),
            format!("registry.local:5000/team/demoapp@{DIGEST}")
        );
        assert_eq!(
            image_identity("registry.local:5000/demoapp:v2"),
            "registry.local:5000/demoapp:v2"
        );
        let a = template(json!({"spec": {"containers": [{"name": "app", "image": tagged}]}}));
        let b = template(json!({"spec": {"containers": [{"name": "app",
            "image": format!("registry.local:5000/team/demoapp:latest@{DIGEST}")}]}}));
        assert_eq!(
            revision(&a, &RevisionSpec::default()),
            revision(&b, &RevisionSpec::default())
        );
        assert_eq!(
            shorten(&revision(&a, &RevisionSpec::default())),
            "registry.local:5000/team/demoapp@sha256:0123456789ab…"
        );
    }

    #[test]
    fn named_values_are_part_of_the_revision() {
        let rule = RevisionSpec {
            metadata: vec!["app.kubernetes.io/version".into()],
            env: vec!["BUILD".into()],
        };
        let t = |version: &str, build: &str, db: &str| {
            template(json!({
                "metadata": {"labels": {"app.kubernetes.io/version": version}},
                "spec": {"containers": [{"name": "app", "image": "demoapp:v2", "env": [
                    {"name": "BUILD", "value": build}, {"name": "DATABASE_URL", "value": db}
                ]}]}
            }))
        };
        assert_eq!(
            revision(&t("2.0.1", "77", "prod"), &rule),
            "demoapp:v2 (app.kubernetes.io/version=2.0.1, BUILD=77)"
        );
        assert_eq!(
            revision(&t("2.0.1", "77", "prod"), &rule),
            revision(&t("2.0.1", "77", "stage"), &rule)
        );
        assert_ne!(
            revision(&t("2.0.1", "77", "x"), &rule),
            revision(&t("2.0.2", "77", "x"), &rule)
        );
        assert_ne!(
            revision(&t("2.0.1", "77", "x"), &rule),
            revision(&t("2.0.1", "78", "x"), &rule)
        );
    }

    #[test]
    fn a_long_revision_is_bounded_and_still_tells_releases_apart() {
        let many = |last: &str| {
            let mut containers: Vec<_> = (0..40)
                .map(|i| json!({"name": format!("container-{i}"), "image": format!("registry.example/team/image-{i}:v1")}))
                .collect();
            containers.push(json!({"name": "last", "image": last}));
            template(json!({"spec": {"containers": containers}}))
        };
        let a = revision(&many("x:v1"), &RevisionSpec::default());
        let b = revision(&many("x:v2"), &RevisionSpec::default());
        assert!(a.len() <= MAX_REVISION, "{}", a.len());
        assert_ne!(a, b);
    }
}

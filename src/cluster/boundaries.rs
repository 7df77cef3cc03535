//! Who may make canaryd drive what. canaryd holds cluster-wide rights; a Canary author must
//! not borrow them. Two rules, both pure and derived from what the caches hold (nothing is
//! kept in memory only, so a restarted daemon decides the same):
//! - **References**: an object outside the Canary's namespace (a Deployment or the
//!   VirtualService) is driven only when the daemon's [`ReferencePolicy`] allows it; under
//!   the default `granted`, a Gateway API `ReferenceGrant` in the object's namespace must
//!   name the Canary's namespace and the object's kind (and optionally its name).
//! - **One owner per route**: of the Canaries that may drive one VirtualService route, the
//!   oldest (creation time, then uid) drives it; the others hold with a `Conflict`.

use kube::ResourceExt;

use crate::api::reference_grant::{grant_for, Reference, ReferenceGrant};
use crate::api::Canary;
use crate::config::ReferencePolicy;

/// The grants canaryd can see: none at all when the ReferenceGrant CRD is not installed.
#[derive(Clone)]
pub enum Grants {
    Watched(kube::runtime::reflector::Store<ReferenceGrant>),
    NotInstalled,
}

impl Grants {
    fn allow(&self, from_namespace: &str, target: &Reference) -> bool {
        match self {
            Grants::Watched(store) => store
                .state()
                .iter()
                .any(|g| g.allows(from_namespace, target)),
            Grants::NotInstalled => false,
        }
    }
}

/// The objects a Canary drives, with the spec field that names each.
fn references(canary: &Canary) -> [(&'static str, Reference<'_>); 3] {
    let own = canary.metadata.namespace.as_deref().unwrap_or_default();
    let spec = &canary.spec;
    fn deployment<'a>(own: &'a str, env: &'a crate::api::Environment) -> Reference<'a> {
        Reference {
            group: "apps",
            kind: "Deployment",
            namespace: env.deployment.namespace.as_deref().unwrap_or(own),
            name: &env.deployment.name,
        }
    }
    [
        (
            "spec.virtualService",
            Reference {
                group: "networking.istio.io",
                kind: "VirtualService",
                namespace: spec.virtual_service.namespace.as_deref().unwrap_or(own),
                name: &spec.virtual_service.name,
            },
        ),
        ("spec.prod.deployment", deployment(own, &spec.prod)),
        ("spec.stage.deployment", deployment(own, &spec.stage)),
    ]
}

/// `Err` names every reference the policy refuses, and what would allow it.
pub fn check_references(
    canary: &Canary,
    policy: ReferencePolicy,
    grants: &Grants,
) -> Result<(), String> {
    let own = canary.metadata.namespace.as_deref().unwrap_or_default();
    let refused: Vec<String> = references(canary)
        .iter()
        .filter(|(_, target)| target.namespace != own && !allowed(own, target, policy, grants))
        .map(|(field, target)| match policy {
            ReferencePolicy::SameNamespace => format!(
                "{field}: {target} is outside the Canary's namespace {own}, and the daemon's \
                 `references: sameNamespace` allows none; create the Canary in {} instead",
                target.namespace
            ),
            _ if matches!(grants, Grants::NotInstalled) => format!(
                "{field}: {target} is outside the Canary's namespace {own} and needs a \
                 ReferenceGrant, but the ReferenceGrant CRD is not installed; install the \
                 Gateway API CRDs (or deploy/gateway-api/referencegrant.yaml), restart canaryd \
                 and create {}",
                grant_for(own, target)
            ),
            _ => format!(
                "{field}: {target} is outside the Canary's namespace {own}, and no \
                 ReferenceGrant in {} lets Canaries from {own} drive it; to allow it, create {}",
                target.namespace,
                grant_for(own, target)
            ),
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused.join("; "))
    }
}

fn allowed(own: &str, target: &Reference, policy: ReferencePolicy, grants: &Grants) -> bool {
    match policy {
        ReferencePolicy::Any => true,
        ReferencePolicy::SameNamespace => false,
        ReferencePolicy::Granted => grants.allow(own, target),
    }
}

/// The Canary that drives `canary`'s route when it is another one: among the Canaries
/// naming the same VirtualService, with the same route name or either without one, whose
/// references are allowed, the oldest by creation time, then uid. `None`: `canary` drives
/// it (or may not drive anything, which [`check_references`] reports).
pub fn route_owner<'a>(
    canary: &Canary,
    all: impl IntoIterator<Item = &'a Canary>,
    policy: ReferencePolicy,
    grants: &Grants,
) -> Option<String> {
    let route = |c: &Canary| {
        let own = c.metadata.namespace.clone().unwrap_or_default();
        let vs = &c.spec.virtual_service;
        (
            vs.namespace.clone().unwrap_or(own),
            vs.name.clone(),
            vs.route.clone(),
        )
    };
    let (ns, name, mine) = route(canary);
    let age = |c: &Canary| {
        (
            c.metadata.creation_timestamp.clone().map(|t| t.0),
            c.metadata.uid.clone(),
        )
    };
    all.into_iter()
        .filter(|other| {
            let (o_ns, o_name, theirs) = route(other);
            o_ns == ns
                && o_name == name
                && (mine.is_none() || theirs.is_none() || mine == theirs)
                && check_references(other, policy, grants).is_ok()
        })
        .min_by_key(|c| age(c))
        .filter(|owner| owner.metadata.uid != canary.metadata.uid)
        .map(|owner| {
            format!(
                "{}/{}",
                owner.namespace().unwrap_or_default(),
                owner.name_any()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::reference_grant::{ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    /// The seed's Canary in `ns`, created at second `created`, naming `stage/flaskapp`.
    fn canary(ns: &str, name: &str, created: i64) -> Canary {
        let mut c: Canary = serde_yaml_ng::from_str(&format!(
            "apiVersion: canaryd.dev/v1alpha1\nkind: Canary\n\
             metadata: {{name: {name}, namespace: {ns}, uid: {ns}-{name}}}\n\
             spec:\n  virtualService: {{name: demoapp, namespace: prod}}\n  \
             prod: {{host: flaskapp.prod, deployment: {{namespace: prod, name: flaskapp}}}}\n  \
             stage: {{host: flaskapp.stage, deployment: {{namespace: stage, name: flaskapp}}}}\n"
        ))
        .unwrap();
        c.metadata.creation_timestamp = Some(Time(
            jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
        ));
        c
    }

    fn grants(list: &[(&str, &str, &str, &str)]) -> Grants {
        let mut writer = Writer::<ReferenceGrant>::default();
        for (i, (ns, from, group, kind)) in list.iter().enumerate() {
            let mut g = ReferenceGrant::new(
                &format!("g{i}"),
                ReferenceGrantSpec {
                    from: vec![ReferenceGrantFrom {
                        group: "canaryd.dev".into(),
                        kind: "Canary".into(),
                        namespace: (*from).into(),
                    }],
                    to: vec![ReferenceGrantTo {
                        group: (*group).into(),
                        kind: (*kind).into(),
                        name: None,
                    }],
                },
            );
            g.metadata.namespace = Some((*ns).into());
            writer.apply_watcher_event(&Event::Apply(g));
        }
        Grants::Watched(writer.as_reader())
    }

    const SEED_GRANT: (&str, &str, &str, &str) = ("stage", "prod", "apps", "Deployment");

    #[test]
    fn the_seed_needs_one_grant_for_the_stage_deployment() {
        let seed = canary("prod", "flaskapp", 0);
        let refused = check_references(&seed, ReferencePolicy::Granted, &grants(&[]))
            .expect_err("stage/flaskapp is in another namespace");
        assert!(refused.starts_with("spec.stage.deployment: Deployment stage/flaskapp"));
        assert!(refused.contains("kind: ReferenceGrant"), "{refused}");
        assert!(
            !refused.contains("spec.prod"),
            "prod is in the Canary's namespace"
        );
        check_references(&seed, ReferencePolicy::Granted, &grants(&[SEED_GRANT])).unwrap();
        check_references(&seed, ReferencePolicy::Any, &Grants::NotInstalled).unwrap();
        let strict = check_references(
            &seed,
            ReferencePolicy::SameNamespace,
            &grants(&[SEED_GRANT]),
        );
        assert!(strict.unwrap_err().contains("sameNamespace"));
        let missing = check_references(&seed, ReferencePolicy::Granted, &Grants::NotInstalled);
        assert!(missing.unwrap_err().contains("CRD is not installed"));
    }

    #[test]
    fn a_tenant_is_refused_every_object_of_another_namespace() {
        // The seed's grant speaks for prod only: a tenant gains nothing from it.
        let tenant = canary("tenant", "mine", 0);
        let refused = check_references(&tenant, ReferencePolicy::Granted, &grants(&[SEED_GRANT]))
            .unwrap_err();
        for field in [
            "spec.virtualService",
            "spec.prod.deployment",
            "spec.stage.deployment",
        ] {
            assert!(refused.contains(field), "{field} missing from: {refused}");
        }
    }

    #[test]
    fn the_oldest_allowed_canary_owns_a_route_and_a_refused_one_never_does() {
        let g = grants(&[SEED_GRANT]);
        let first = canary("prod", "first", 10);
        let second = canary("prod", "second", 20);
        // Older, but refused (a tenant naming prod's route): it cannot take the route.
        let squatter = canary("tenant", "squatter", 0);
        let all = [&first, &second, &squatter];
        let policy = ReferencePolicy::Granted;
        assert_eq!(route_owner(&first, all, policy, &g), None);
        assert_eq!(
            route_owner(&second, all, policy, &g).as_deref(),
            Some("prod/first")
        );
        // Named routes: different names do not conflict; a missing name conflicts with any.
        let mut other_route = second.clone();
        other_route.spec.virtual_service.route = Some("secondary".into());
        let mut named_first = first.clone();
        named_first.spec.virtual_service.route = Some("primary".into());
        assert_eq!(
            route_owner(&other_route, [&named_first, &other_route], policy, &g),
            None
        );
        assert_eq!(
            route_owner(&other_route, [&first, &other_route], policy, &g).as_deref(),
            Some("prod/first")
        );
        // Equal creation times: the uid decides, the same way on every replica.
        let twin = canary("prod", "twin", 10);
        let owners = [
            route_owner(&first, [&first, &twin], policy, &g),
            route_owner(&twin, [&first, &twin], policy, &g),
        ];
        assert_eq!(owners.iter().filter(|o| o.is_none()).count(), 1);
    }
}

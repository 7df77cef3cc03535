//! Simulated Deployment rollouts: the lab has no kubelet and no Deployment controller, so
//! this plays the controller's part. When a Deployment's spec changes it reports the rollout
//! as progressing at once and, after a configurable delay, as finished (all replicas updated,
//! ready and available), through the status subresource, as the real controller would. A
//! template with an image whose pods never become available ([`scenario::becomes_available`])
//! is reported stuck instead after the delay: new pods not available, the old ones still
//! serving, `Progressing=False` with `ProgressDeadlineExceeded`; only a new spec moves it. It
//! creates no ReplicaSets or Pods and never touches a Deployment's spec.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::scenario;

/// The field manager of every status this simulation writes.
pub const FIELD_MANAGER: &str = "canaryd-lab-deployment-controller";

/// Whether the Deployment's current spec is rolled out and available, by the rules of
/// `kubectl rollout status`.
pub fn rollout_complete(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else {
        return false;
    };
    let observed = match deployment.metadata.generation {
        Some(generation) => status.observed_generation.unwrap_or(0) >= generation,
        None => true,
    };
    let replicas = desired_replicas(deployment);
    let updated = status.updated_replicas.unwrap_or(0);
    observed
        && updated >= replicas
        && status.replicas.unwrap_or(0) <= updated
        && status.available_replicas.unwrap_or(0) >= updated
}

fn desired_replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// A short hash of the pod template, like the `pod-template-hash` the controller gives the
/// template's ReplicaSet.
pub fn pod_template_hash(deployment: &Deployment) -> String {
    let template = deployment.spec.as_ref().map(|s| &s.template);
    let bytes = serde_json::to_vec(&template).expect("a pod template serializes");
    Sha256::digest(bytes)
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one rollout rolls out: the spec generation and the pod template. The template
/// counts on its own so that an API server that does not bump `generation` still gets its
/// rollouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    generation: Option<i64>,
    template_hash: String,
}

impl Revision {
    pub fn of(deployment: &Deployment) -> Self {
        Revision {
            generation: deployment.metadata.generation,
            template_hash: pod_template_hash(deployment),
        }
    }
}

/// Whether the Deployment needs a rollout, given the last revision this simulation
/// finished for it (`None` when it has not seen the Deployment before).
pub fn needs_rollout(deployment: &Deployment, finished: Option<&Revision>) -> bool {
    !rollout_complete(deployment) || finished.is_some_and(|f| *f != Revision::of(deployment))
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
        last_update_time: Some(Time(now)),
    }
}

fn replica_set_name(deployment: &Deployment) -> String {
    format!(
        "{}-{}",
        deployment.name_any(),
        pod_template_hash(deployment)
    )
}

fn available(available: i32, replicas: i32, now: Timestamp) -> DeploymentCondition {
    if available >= replicas {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    }
}

/// The old pods that still serve while a new template rolls out (at most `replicas`).
fn still_available(deployment: &Deployment, replicas: i32) -> i32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(replicas)
}

/// The status the controller reports once it has seen a new spec: the new ReplicaSet has no
/// pods yet and the old pods (if any) still serve.
pub fn progressing_status(deployment: &Deployment, now: Timestamp) -> DeploymentStatus {
    let replicas = desired_replicas(deployment);
    let old_available = still_available(deployment, replicas);
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(0),
        ready_replicas: Some(old_available),
        available_replicas: Some(old_available),
        unavailable_replicas: Some(replicas - old_available),
        conditions: Some(vec![
            available(old_available, replicas, now),
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!(
                    "ReplicaSet \"{}\" is progressing.",
                    replica_set_name(deployment)
                ),
                now,
            ),
        ]),
        ..DeploymentStatus::default()
    }
}

/// The status of a finished rollout: every replica runs the current template and is available.
pub fn complete_status(deployment: &Deployment, now: Timestamp) -> DeploymentStatus {
    let replicas = desired_replicas(deployment);
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(replicas),
        ready_replicas: Some(replicas),
        available_replicas: Some(replicas),
        // The controller leaves out a zero, but a merge patch would then keep the count of
        // the progressing status.
        unavailable_replicas: Some(0),
        conditions: Some(vec![
            available(replicas, replicas, now),
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    replica_set_name(deployment)
                ),
                now,
            ),
        ]),
        ..DeploymentStatus::default()
    }
}

/// Whether every container of the Deployment's pod template runs an image whose pods
/// become available (see [`scenario::becomes_available`]).
pub fn becomes_available(deployment: &Deployment) -> bool {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .is_none_or(|pod| {
            pod.containers
                .iter()
                .filter_map(|c| c.image.as_deref())
                .all(scenario::becomes_available)
        })
}

/// The status of a rollout whose new pods never become available (a crash loop): every
/// replica of the new template exists and none is available, the old pods keep serving, and
/// the controller gave up waiting, as after `progressDeadlineSeconds`.
pub fn stuck_status(deployment: &Deployment, now: Timestamp) -> DeploymentStatus {
    let replicas = desired_replicas(deployment);
    let old_available = still_available(deployment, replicas);
    DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(replicas + old_available),
        updated_replicas: Some(replicas),
        ready_replicas: Some(old_available),
        available_replicas: Some(old_available),
        unavailable_replicas: Some(replicas),
        conditions: Some(vec![
            available(old_available, replicas, now),
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!(
                    "ReplicaSet \"{}\" has timed out progressing.",
                    replica_set_name(deployment)
                ),
                now,
            ),
        ]),
        ..DeploymentStatus::default()
    }
}

struct Pending {
    due: Instant,
    revision: Revision,
}

/// Plays the Deployment controller for every Deployment in the cluster until dropped: a
/// rollout finishes `delay` after the controller first sees its spec. Write failures are
/// logged and the finish is retried a second later.
pub async fn run(client: Client, delay: Duration) {
    let api = Api::<Deployment>::all(client.clone());
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut latest: HashMap<ObjectRef<Deployment>, Deployment> = HashMap::new();
    let mut finished: HashMap<ObjectRef<Deployment>, Revision> = HashMap::new();
    let mut pending: HashMap<ObjectRef<Deployment>, Pending> = HashMap::new();
    // Rollouts reported stuck: their pods never become available until the spec changes.
    let mut stuck: HashMap<ObjectRef<Deployment>, Revision> = HashMap::new();
    // What a re-list has shown so far; whatever it did not show was deleted meanwhile.
    let mut listed: HashSet<ObjectRef<Deployment>> = HashSet::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d))) => {
                    let key = ObjectRef::from_obj(&d);
                    let revision = Revision::of(&d);
                    if !needs_rollout(&d, finished.get(&key)) {
                        finished.insert(key.clone(), revision);
                        stuck.remove(&key);
                    } else if stuck.get(&key) == Some(&revision) {
                        // Stays stuck until its spec changes.
                    } else if pending.get(&key).map(|p| &p.revision) != Some(&revision) {
                        stuck.remove(&key);
                        if write_status(&client, &d, progressing_status(&d, Timestamp::now())).await {
                            tracing::info!(deployment = %key, "lab: rollout started");
                        }
                        pending.insert(key.clone(), Pending { due: Instant::now() + delay, revision });
                    }
                    listed.insert(key.clone());
                    latest.insert(key, d);
                }
                Some(Ok(watcher::Event::Delete(d))) => {
                    let key = ObjectRef::from_obj(&d);
                    latest.remove(&key);
                    finished.remove(&key);
                    pending.remove(&key);
                    stuck.remove(&key);
                }
                Some(Ok(watcher::Event::Init)) => listed.clear(),
                Some(Ok(watcher::Event::InitDone)) => {
                    latest.retain(|key, _| listed.contains(key));
                    finished.retain(|key, _| listed.contains(key));
                    pending.retain(|key, _| listed.contains(key));
                    stuck.retain(|key, _| listed.contains(key));
                }
                Some(Err(error)) => tracing::warn!(%error, "lab: watching Deployments failed; retrying"),
                None => return,
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                let due: Vec<_> = pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    let Some(d) = latest.get(&key) else { continue };
                    let revision = Revision::of(d);
                    if !becomes_available(d) {
                        if write_status(&client, d, stuck_status(d, Timestamp::now())).await {
                            tracing::info!(deployment = %key, "lab: rollout stuck (pods never become available)");
                            pending.remove(&key);
                            stuck.insert(key, revision);
                        } else if let Some(p) = pending.get_mut(&key) {
                            p.due = now + Duration::from_secs(1);
                        }
                    } else if write_status(&client, d, complete_status(d, Timestamp::now())).await {
                        tracing::info!(deployment = %key, "lab: rollout finished");
                        pending.remove(&key);
                        finished.insert(key, revision);
                    } else if let Some(p) = pending.get_mut(&key) {
                        p.due = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }
}

/// Writes `status` through the status subresource; false (and a log line) if that failed.
async fn write_status(client: &Client, deployment: &Deployment, status: DeploymentStatus) -> bool {
    let namespace = deployment.namespace().unwrap_or_default();
    let api = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let patch = Patch::Merge(json!({ "status": status }));
    match api
        .patch_status(&deployment.name_any(), &params, &patch)
        .await
    {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, deployment = %deployment.name_any(), %namespace, "lab: writing Deployment status failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deployment(generation: i64, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "flaskapp", "namespace": "stage", "generation": generation},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "flaskapp"}},
                "template": {
                    "metadata": {"labels": {"app": "flaskapp"}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            }
        }))
        .unwrap()
    }

    fn with_status(mut d: Deployment, status: DeploymentStatus) -> Deployment {
        d.status = Some(status);
        d
    }

    fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> &'a DeploymentCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn a_new_spec_needs_a_rollout_until_the_finished_status_is_written() {
        let now = Timestamp::UNIX_EPOCH;
        let v1 = deployment(1, "demoapp:v1");
        assert!(needs_rollout(&v1, None), "no status yet");

        let progressing = with_status(v1.clone(), progressing_status(&v1, now));
        assert!(!rollout_complete(&progressing));
        assert!(needs_rollout(&progressing, None));

        let done = with_status(v1.clone(), complete_status(&v1, now));
        assert!(rollout_complete(&done));
        assert!(!needs_rollout(&done, None));
        assert!(!needs_rollout(&done, Some(&Revision::of(&v1))));

        // A new template with a new generation: the old status no longer counts.
        let mut v2 = deployment(2, "demoapp:v2");
        v2.status = done.status.clone();
        assert!(!rollout_complete(&v2));
        assert!(needs_rollout(&v2, Some(&Revision::of(&v1))));
    }

    #[test]
    fn a_template_change_counts_even_when_the_server_keeps_the_generation() {
        let v1 = deployment(1, "demoapp:v1");
        let v2 = with_status(
            deployment(1, "demoapp:v2"),
            complete_status(&v1, Timestamp::UNIX_EPOCH),
        );
        assert!(rollout_complete(&v2), "the status looks finished");
        assert!(needs_rollout(&v2, Some(&Revision::of(&v1))));
        assert!(!needs_rollout(&v2, Some(&Revision::of(&v2))));
        assert_ne!(pod_template_hash(&v1), pod_template_hash(&v2));
    }

    #[test]
    fn statuses_read_like_the_deployment_controllers() {
        let now = Timestamp::UNIX_EPOCH;
        let v1 = deployment(1, "demoapp:v1");
        let done = complete_status(&v1, now);
        assert_eq!(
            (
                done.observed_generation,
                done.replicas,
                done.updated_replicas,
                done.ready_replicas,
                done.available_replicas
            ),
            (Some(1), Some(2), Some(2), Some(2), Some(2))
        );
        assert_eq!(condition(&done, "Available").status, "True");
        let progressed = condition(&done, "Progressing");
        assert_eq!(progressed.reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(
            progressed.message.as_deref(),
            Some(
                format!(
                    "ReplicaSet \"flaskapp-{}\" has successfully progressed.",
                    pod_template_hash(&v1)
                )
                .as_str()
            )
        );

        // During the next rollout the old pods keep the Deployment available.
        let v2 = with_status(deployment(2, "demoapp:v2"), done);
        let progressing = progressing_status(&v2, now);
        assert_eq!(
            (progressing.updated_replicas, progressing.available_replicas),
            (Some(0), Some(2))
        );
        assert_eq!(condition(&progressing, "Available").status, "True");
        assert_eq!(
            condition(&progressing, "Progressing").reason.as_deref(),
            Some("ReplicaSetUpdated")
        );

        // A brand-new Deployment has no old pods.
        let fresh = progressing_status(&v1, now);
        assert_eq!(condition(&fresh, "Available").status, "False");
        assert_eq!(fresh.unavailable_replicas, Some(2));
        assert_eq!(complete_status(&v1, now).unavailable_replicas, Some(0));
    }

    #[test]
    fn a_crashloop_image_is_reported_stuck_with_the_old_pods_serving() {
        let now = Timestamp::UNIX_EPOCH;
        let v1 = deployment(1, "demoapp:v1");
        assert!(becomes_available(&v1));
        let v1 = with_status(v1.clone(), complete_status(&v1, now));
        let bad = with_status(
            deployment(2, scenario::CRASHLOOP_IMAGE),
            v1.status.clone().unwrap(),
        );
        assert!(!becomes_available(&bad));
        let status = stuck_status(&bad, now);
        assert_eq!(
            (
                status.replicas,
                status.updated_replicas,
                status.available_replicas
            ),
            (Some(4), Some(2), Some(2))
        );
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing.status, "False");
        assert_eq!(
            progressing.reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
        let stuck = with_status(bad.clone(), status);
        assert!(!rollout_complete(&stuck), "never finished");
        assert!(needs_rollout(&stuck, None));
    }

    proptest! {
        /// Whatever the spec, the progressing status keeps a rollout open (unless there is
        /// nothing to roll out) and the finished status closes it.
        #[test]
        fn written_statuses_open_and_close_the_rollout(
            generation in 1i64..1000,
            replicas in 0i32..50,
            old_available in 0i32..50,
            tag in "[a-z0-9]{1,8}",
        ) {
            let now = Timestamp::UNIX_EPOCH;
            let mut d = deployment(generation, &format!("demoapp:{tag}"));
            d.spec.as_mut().unwrap().replicas = Some(replicas);
            d.status = Some(DeploymentStatus { available_replicas: Some(old_available), ..DeploymentStatus::default() });

            let progressing = with_status(d.clone(), progressing_status(&d, now));
            prop_assert_eq!(rollout_complete(&progressing), replicas == 0);
            let done = with_status(d.clone(), complete_status(&d, now));
            prop_assert!(rollout_complete(&done));
            prop_assert!(!needs_rollout(&done, Some(&Revision::of(&d))));
            prop_assert!(!needs_rollout(&done, None));
        }
    }
}

//! The prod/stage split in the VirtualService: read it, and write only the two weights.
//!
//! Writes are JSON patches guarded by `test` ops on the destination hosts (see
//! [`crate::api::virtual_service`]) and on the resourceVersion they were computed from. A rejected patch (409 Conflict, or 422 when a `test` op
//! fails because the routes moved) is retried on a fresh read; the answer of the API server
//! is read back to verify that the weights are what canaryd asked for.

use kube::api::{Api, Patch, PatchParams};

use crate::api::virtual_service::{RouteError, TrafficSplit, VirtualService};
use crate::api::CanarySpec;
use crate::rollout::Traffic;

use super::FIELD_MANAGER;

const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("cannot read VirtualService {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the weights of VirtualService {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("VirtualService {name}: {source}")]
    Route {
        name: String,
        #[source]
        source: RouteError,
    },
    #[error(
        "VirtualService {name} routes {seen} % to stage, not the {from} % this write was \
         decided on; not moving it to {wanted} % (someone else changed it; deciding again)"
    )]
    Moved {
        name: String,
        seen: i64,
        from: u8,
        wanted: u8,
    },
    #[error("VirtualService {name} still routes {seen} % to stage after writing {wanted} %")]
    NotApplied { name: String, seen: i64, wanted: u8 },
}

impl TrafficError {
    /// A VirtualService that cannot carry the split is the user's to fix, not a blip.
    pub fn is_permanent(&self) -> bool {
        matches!(self, TrafficError::Route { .. })
    }
}

/// The split of a VirtualService as the lifecycle observes it.
pub fn observe(vs: &VirtualService, spec: &CanarySpec) -> Result<Traffic, RouteError> {
    let split = find_split(vs, spec)?;
    Ok(Traffic {
        stage_weight: split.stage_weight.clamp(0, 100) as u8,
        version: vs.metadata.resource_version.clone().unwrap_or_default(),
        last_writer: last_writer(vs),
    })
}

/// The field manager of the VirtualService's most recent write when it is not canaryd's
/// (from `managedFields`): who to name when someone else keeps changing the weights.
fn last_writer(vs: &VirtualService) -> Option<String> {
    let entries = vs.metadata.managed_fields.as_ref()?;
    let latest = entries
        .iter()
        .max_by_key(|e| e.time.as_ref().map(|t| t.0))?;
    let manager = latest.manager.as_deref()?;
    (manager != super::FIELD_MANAGER)
        .then(|| crate::api::limits::bounded(manager, crate::api::limits::MAX_NAME * 2))
}

fn find_split(vs: &VirtualService, spec: &CanarySpec) -> Result<TrafficSplit, RouteError> {
    vs.spec.traffic_split(
        spec.virtual_service.route.as_deref(),
        &spec.prod.host,
        &spec.stage.host,
    )
}

/// Writes `stage` percent to stage and the rest to prod; returns the VirtualService as the
/// API server stored it (as read, when it already carries those weights).
///
/// `from` is the stage weight the decision started from. A move toward stage is written
/// only over exactly that weight: if someone (a person, another replica that took over)
/// moved the route since, the write is refused with [`TrafficError::Moved`] and the next
/// round decides on what the route shows. A move toward prod is always written. The patch
/// carries a `test` of the resourceVersion it was computed from, so nothing that lands
/// between the read and the write is overwritten unseen.
pub async fn set_weights(
    api: &Api<VirtualService>,
    name: &str,
    spec: &CanarySpec,
    from: Option<u8>,
    stage: u8,
) -> Result<VirtualService, TrafficError> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let vs = api.get(name).await.map_err(|source| TrafficError::Read {
            name: name.into(),
            source,
        })?;
        let split = find_split(&vs, spec).map_err(|source| TrafficError::Route {
            name: name.into(),
            source,
        })?;
        if split.stage_weight == i64::from(stage) && split.prod_weight == 100 - i64::from(stage) {
            return Ok(vs);
        }
        if let Some(from) = from {
            if i64::from(stage) > split.stage_weight && split.stage_weight != i64::from(from) {
                return Err(TrafficError::Moved {
                    name: name.into(),
                    seen: split.stage_weight,
                    from,
                    wanted: stage,
                });
            }
        }
        let mut patch = split.weight_patch(&spec.prod.host, &spec.stage.host, stage);
        if let (Some(ops), Some(version)) = (patch.as_array_mut(), &vs.metadata.resource_version) {
            ops.insert(
                0,
                serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}),
            );
        }
        let patch: json_patch::Patch =
            serde_json::from_value(patch).expect("weight_patch builds a valid JSON patch");
        let params = PatchParams::apply(FIELD_MANAGER);
        match api.patch(name, &params, &Patch::Json::<()>(patch)).await {
            Ok(written) => {
                let now = find_split(&written, spec).map_err(|source| TrafficError::Route {
                    name: name.into(),
                    source,
                })?;
                if now.stage_weight != i64::from(stage) || now.prod_weight != 100 - i64::from(stage)
                {
                    return Err(TrafficError::NotApplied {
                        name: name.into(),
                        seen: now.stage_weight,
                        wanted: stage,
                    });
                }
                return Ok(written);
            }
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                tracing::info!(
                    virtual_service = name,
                    code = status.code,
                    "weights patch rejected; retrying on a fresh read"
                );
                last_error = Some(kube::Error::Api(status));
            }
            Err(source) => {
                return Err(TrafficError::Write {
                    name: name.into(),
                    source,
                })
            }
        }
    }
    Err(TrafficError::Write {
        name: name.into(),
        source: last_error.expect("the loop ran"),
    })
}

//! Deletion: preconditions, finalizers (an object with finalizers only gets a
//! deletionTimestamp, and goes when a write removes the last one), and what goes with a
//! Namespace or a CRD, at once. Never validates or defaults objects, and never decides what
//! a CRD serves.

use serde_json::{json, Value};

use super::crd;
use super::now;
use super::storage::ChangeKind;
use super::Inner;
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::kinds::Builtin;
use crate::apiserver::registry::{Origin, ResourceType};

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// An object marked for deletion whose finalizers are all gone: the write that removed the
/// last one deletes it.
pub(super) fn finalized(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string() && !has_finalizers(object)
}

impl Inner {
    pub(super) fn delete(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
    ) -> ApiResult<Value> {
        let current = self.storage.current(resource, namespace, name)?;
        for (field, wanted) in [
            ("resourceVersion", &preconditions["resourceVersion"]),
            ("uid", &preconditions["uid"]),
        ] {
            if let Some(wanted) = wanted.as_str() {
                let actual = current["metadata"][field].as_str().unwrap_or_default();
                if wanted != actual {
                    return Err(ApiError::conflict(
                        &resource.group,
                        &resource.plural,
                        name,
                        &format!("Precondition failed: {field}: {wanted}, actual: {actual}"),
                    ));
                }
            }
        }
        if has_finalizers(&current) {
            if current["metadata"]["deletionTimestamp"].is_string() {
                return Ok(current);
            }
            let mut object = current.clone();
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(self.storage.commit(
                resource,
                namespace,
                name,
                ChangeKind::Modified,
                object,
                Some(current),
            ));
        }
        match resource.origin {
            Origin::Builtin(Builtin::Namespace) => self
                .storage
                .delete_all(&self.registry, |(_, _, ns, _)| ns == name),
            Origin::Builtin(Builtin::CustomResourceDefinition) => {
                crd::uninstall(&current, &mut self.storage, &mut self.registry)
            }
            _ => {}
        }
        Ok(self.storage.commit(
            resource,
            namespace,
            name,
            ChangeKind::Deleted,
            current.clone(),
            Some(current),
        ))
    }
}

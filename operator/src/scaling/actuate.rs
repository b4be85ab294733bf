//! Writing a decision to the cluster: pod deletion costs before a scale-down, then the
//! replica count through the Deployment's scale subresource.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::autoscaler::{PodLoad, deletion_cost};

/// The field manager of the replica count and of the autoscaler's part of `status`. Not the
/// reconciler's: server-side apply would otherwise drop each other's fields.
pub const AUTOSCALER_FIELD_MANAGER: &str = "ferry-autoscaler";
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Gives every pod of the consumer its deletion cost, so that the ReplicaSet removes the
/// idlest pods (and the unready ones) first. Only pods whose cost changed are patched.
pub async fn set_deletion_costs(
    pods: &Api<Pod>,
    loads: &[(PodLoad<String>, Option<String>)],
) -> Result<(), kube::Error> {
    for (load, current) in loads {
        let cost = deletion_cost(load).to_string();
        if current.as_deref() == Some(cost.as_str()) {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}});
        pods.patch(
            &load.id,
            &PatchParams {
                field_manager: Some(AUTOSCALER_FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

pub async fn write_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    replicas: u32,
) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"replicas": replicas}});
    deployments
        .patch_scale(
            name,
            &PatchParams {
                field_manager: Some(AUTOSCALER_FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

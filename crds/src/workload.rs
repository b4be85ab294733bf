//! The parts of the spec that shape the pods: `spec.worker`, `spec.serviceAccount`,
//! `spec.sidecar`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Serialize};

/// `spec.serviceAccount`: the ServiceAccount Ferry creates for the worker pods
/// (`<name>-worker`), unless `spec.worker.spec.serviceAccountName` names one of your own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    /// Annotations copied onto the ServiceAccount: the way to grant the pods cloud access,
    /// e.g. `eks.amazonaws.com/role-arn` (IRSA) or `iam.gke.io/gcp-service-account`
    /// (Workload Identity).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels copied onto the ServiceAccount.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `spec.sidecar`: overrides for the injected `ferry-consumer` container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of the sidecar. Unset: the image the operator was installed with (recommended:
    /// it matches the operator's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the sidecar. Unset: the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "compact_resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

/// The schema of `spec.worker`: any pod template. The full generated PodTemplateSpec schema
/// would be most of the CRD's size (past what some tools accept in an annotation) and would
/// repeat the API server's own validation, which runs anyway when Ferry creates the
/// Deployment; so it is kept open, as kube-rs projects usually do.
pub(crate) fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `requests` and `limits` as maps of quantities, without the several kilobytes of
/// description k8s-openapi attaches to every `Quantity` (and `claims`, which a sidecar never
/// needs).
fn compact_resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = serde_json::json!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-int-or-string": true,
            "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
        },
    });
    let with_description = |description: &str| {
        let mut q = quantities.clone();
        q["description"] = description.into();
        q
    };
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "limits": with_description("Most of each resource the sidecar may use, e.g. `memory: 128Mi`."),
            "requests": with_description("Resources reserved for the sidecar, e.g. `cpu: 50m`, `memory: 64Mi`."),
        },
    })
}

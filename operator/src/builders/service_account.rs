//! The worker pods' ServiceAccount, carrying the cloud identity annotations.

use ferry_crds::QueueConsumer;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::metadata::{child_labels, owner_reference, worker_name};
use super::settings::OperatorSettings;

/// The ServiceAccount `<name>-worker` with `spec.serviceAccount`'s annotations (IRSA's
/// `eks.amazonaws.com/role-arn`, Workload Identity's `iam.gke.io/gcp-service-account`) and
/// labels, on top of the operator's default annotations
/// (`FERRY_WORKER_SERVICE_ACCOUNT_ANNOTATIONS`). `None` when `spec.worker.spec.serviceAccountName` names the user's own account:
/// Ferry then has no account to manage, and the reconciler deletes one it made before.
pub fn desired_service_account(
    qc: &QueueConsumer,
    settings: &OperatorSettings,
) -> Option<ServiceAccount> {
    let user_named = qc
        .spec
        .worker
        .spec
        .as_ref()
        .and_then(|p| p.service_account_name.as_ref())
        .is_some();
    if user_named {
        return None;
    }
    let requested = qc.spec.service_account.clone().unwrap_or_default();
    let mut annotations = settings.worker_service_account_annotations.clone();
    annotations.extend(requested.annotations);
    let mut labels = requested.labels;
    // Ferry's labels win: the reconciler finds its children by them.
    labels.extend(child_labels(qc));
    Some(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(worker_name(qc)),
            namespace: qc.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner_reference(qc)]),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    })
}

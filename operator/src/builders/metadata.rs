//! Names, labels and owner references shared by every child object.

use std::collections::BTreeMap;

use ferry_crds::QueueConsumer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

/// `app.kubernetes.io/managed-by`: the recommended label that tells people and tools who owns
/// an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "ferry";
/// Ties a child to its QueueConsumer; also the Deployment's selector, so it must never change
/// for an existing consumer.
pub const QUEUE_CONSUMER_LABEL: &str = "ferry.dev/queue-consumer";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// The Deployment's and the ServiceAccount's name. The CRD caps QueueConsumer names at 56
/// characters so this stays a valid 63-character label value and DNS label.
pub fn worker_name(qc: &QueueConsumer) -> String {
    format!("{}-worker", qc.metadata.name.as_deref().unwrap_or_default())
}

/// The Deployment's selector: only the consumer's name, because a selector is immutable and
/// must not change when labels are added later.
pub fn selector_labels(qc: &QueueConsumer) -> BTreeMap<String, String> {
    BTreeMap::from([(
        QUEUE_CONSUMER_LABEL.to_string(),
        qc.metadata.name.clone().unwrap_or_default(),
    )])
}

/// Labels of every child object and of the worker pods.
pub fn child_labels(qc: &QueueConsumer) -> BTreeMap<String, String> {
    let mut labels = selector_labels(qc);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(COMPONENT_LABEL.into(), "worker".into());
    labels
}

/// A child's identity: `name` in the consumer's namespace, Ferry's labels, owned by it.
pub(super) fn child_metadata(qc: &QueueConsumer, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: qc.metadata.namespace.clone(),
        labels: Some(child_labels(qc)),
        owner_references: Some(vec![owner_reference(qc)]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference that makes the garbage collector delete a child with its
/// QueueConsumer, and that lets the controller map child events back to the consumer.
pub fn owner_reference(qc: &QueueConsumer) -> OwnerReference {
    OwnerReference {
        api_version: QueueConsumer::api_version(&()).into_owned(),
        kind: QueueConsumer::kind(&()).into_owned(),
        name: qc.metadata.name.clone().unwrap_or_default(),
        uid: qc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

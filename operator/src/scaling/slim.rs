//! What the autoscaler keeps of each watched object. Its caches hold every QueueConsumer,
//! worker Deployment and worker pod of the cluster, and most of each object is what it never
//! reads: `managedFields` (one entry per writer, each a copy of the field set), the
//! Deployment's pod template, a pod's full container specs and status. Dropping them as
//! events arrive keeps the operator's memory proportional to what it uses (see the scale
//! benchmark in docs/performance.md). Pure.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Pod, PodSpec, PodStatus, PodTemplateSpec,
};
use kube::api::ObjectMeta;

use crate::builders::SIDECAR_NAME;
use ferry_crds::QueueConsumer;

/// `kubectl apply` keeps a whole copy of the object here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn slim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The autoscaler reads spec, status and identity; never who wrote which field.
pub fn consumer(qc: &mut QueueConsumer) {
    slim_metadata(&mut qc.metadata);
}

/// Name, replicas and status counts are all the autoscaler reads of a Deployment; the
/// reconciler also reads a `ReplicaFailure` condition (pods that cannot be created, and why).
pub fn deployment(deployment: &mut Deployment) {
    slim_metadata(&mut deployment.metadata);
    deployment.spec.template = PodTemplateSpec::default();
    if let Some(status) = &mut deployment.status {
        status.conditions = status
            .conditions
            .take()
            .map(|all| {
                all.into_iter()
                    .filter(|c| {
                        c.type_.as_deref() == Some(REPLICA_FAILURE)
                            && c.status.as_deref() == Some("True")
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|kept| !kept.is_empty());
    }
}

/// The kubelet's reason for a container it cannot start because a Secret or ConfigMap (or a
/// key of one) its environment needs is missing.
pub const CONFIG_ERROR: &str = "CreateContainerConfigError";

/// The Deployment condition that says its pods cannot be created.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// A pod's labels and annotations (consumer, deletion cost), phase, IP, deletion mark and
/// the sidecar's ports: what scraping and choosing pods to remove need; and a container that
/// cannot start for want of a Secret (`CreateContainerConfigError`), so that the autoscaler
/// can put back the sidecar Secret its pods wait for.
pub fn pod(pod: &mut Pod) {
    slim_metadata(&mut pod.metadata);
    if let Some(spec) = &mut pod.spec {
        let sidecar = spec
            .containers
            .iter()
            .find(|c| c.name == SIDECAR_NAME)
            .map(|c| Container {
                name: c.name.clone(),
                ports: c.ports.clone(),
                ..Container::default()
            });
        *spec = PodSpec {
            containers: sidecar.into_iter().collect(),
            ..PodSpec::default()
        };
    }
    if let Some(status) = &mut pod.status {
        let waiting_for_config = status
            .container_statuses
            .take()
            .into_iter()
            .flatten()
            .filter(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .is_some_and(|w| w.reason.as_deref() == Some(CONFIG_ERROR))
            })
            .map(|c| ContainerStatus {
                name: c.name,
                state: c.state,
                ..ContainerStatus::default()
            })
            .collect::<Vec<_>>();
        *status = PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            container_statuses: Some(waiting_for_config).filter(|c| !c.is_empty()),
            ..PodStatus::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_keeps_what_scraping_and_removal_read() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "shop",
                "labels": {"ferry.dev/queueconsumer": "orders"},
                "annotations": {"controller.kubernetes.io/pod-deletion-cost": "5", LAST_APPLIED: "{}"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"containers": [
                {"name": "worker", "image": "app", "env": [{"name": "A", "value": "1"}]},
                {"name": SIDECAR_NAME, "image": "ferry", "ports": [{"name": "metrics", "containerPort": 9090}]}
            ]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        pod(&mut p);
        assert!(p.metadata.managed_fields.is_none());
        assert_eq!(p.metadata.labels.as_ref().unwrap().len(), 1);
        let annotations = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, SIDECAR_NAME);
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            9090
        );
        assert!(spec.containers[0].image.is_none());
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.7"));
        assert!(status.conditions.is_none());
        assert!(status.container_statuses.is_none());

        // A container the kubelet cannot start for want of a Secret is kept, alone.
        let mut waiting: Pod = serde_json::from_value(serde_json::json!({
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "worker", "ready": false, "restartCount": 0, "image": "app", "imageID": "",
                 "state": {"running": {}}},
                {"name": SIDECAR_NAME, "ready": false, "restartCount": 0, "image": "ferry", "imageID": "",
                 "state": {"waiting": {"reason": CONFIG_ERROR, "message": "secret \"s\" not found"}}}
            ]}
        }))
        .unwrap();
        pod(&mut waiting);
        let kept = waiting.status.unwrap().container_statuses.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, SIDECAR_NAME);
        assert_eq!(
            kept[0]
                .state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .message
                .as_deref(),
            Some("secret \"s\" not found")
        );
        assert!(kept[0].image.is_empty());
    }

    #[test]
    fn a_deployment_keeps_its_name_replicas_and_counts() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "namespace": "shop",
                "managedFields": [{"manager": "ferry-operator", "operation": "Apply"}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "worker", "image": "app"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2,
                "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .unwrap();
        deployment(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        assert_eq!(d.spec.replicas, Some(3));
        assert!(d.spec.template.spec.is_none());
        let status = d.status.as_ref().unwrap();
        assert_eq!((status.replicas, status.ready_replicas), (Some(3), Some(2)));
        assert!(status.conditions.is_none());

        // Pods that cannot be created: the reconciler says why in the QueueConsumer's status.
        d.status.as_mut().unwrap().conditions = serde_json::from_value(serde_json::json!([
            {"type": "Available", "status": "False"},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "forbidden"},
        ]))
        .unwrap();
        deployment(&mut d);
        let kept = d.status.unwrap().conditions.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].message.as_deref(), Some("forbidden"));
    }
}

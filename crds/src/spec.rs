//! The `QueueConsumer` resource and its `spec`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterSpec;
use crate::delivery::DeliverySpec;
use crate::periodic::PeriodicTask;
use crate::queue::QueueSpec;
use crate::scaling::ScalingSpec;
use crate::status::QueueConsumerStatus;
use crate::workload::{ServiceAccountSpec, SidecarSpec, pod_template_schema};

/// What happens to the queue and its dead-letter queue when the QueueConsumer is deleted.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the queue, the dead-letter queue and their messages (the default): deleting the
    /// object never deletes messages unless asked.
    #[default]
    Retain,
    /// Delete the queue and the dead-letter queue, unless the dead-letter queue still holds
    /// messages (then both are kept and the object waits, saying so in its status) or
    /// `forceDelete` is set.
    Delete,
}

/// What the QueueConsumer asks for. Ferry creates the queue (SQS, or a Pub/Sub topic and
/// subscription) and its dead-letter queue, runs `worker` with the ferry-consumer sidecar that
/// delivers each message to it over HTTP, scales it with the backlog (to and from zero), and
/// reports all of it in `status`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "QueueConsumer",
    namespaced,
    status = "QueueConsumerStatus",
    shortname = "qc",
    category = "ferry",
    derive = "PartialEq",
    doc = "A queue with its dead-letter queue, consumed by an autoscaled worker Deployment with the ferry-consumer sidecar injected.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.queue.provider"),
    printcolumn(name = "Queue", type_ = "string", json_path = ".status.queue.name"),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.backlog.visible"),
    printcolumn(name = "Dead Letters", type_ = "integer", json_path = ".status.backlog.deadLetter", description = "messages in the dead-letter queue"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend", description = "consumption stopped by spec.suspend"),
    printcolumn(name = "Redrive", type_ = "string", json_path = ".status.redrive.phase", description = "the last redrive of the dead-letter queue", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Child names are `<name>-worker` and the name is a label value (at most 63 characters).
    validation = Rule::new("size(self.metadata.name) <= 56").message("metadata.name of a QueueConsumer has at most 56 characters (its Deployment is named <name>-worker)"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.deadLetter.maxDeliveries) || self.queue.provider != 'pubsub' || (self.deadLetter.maxDeliveries >= 5 && self.deadLetter.maxDeliveries <= 100)").message("spec.deadLetter.maxDeliveries must be between 5 and 100 for Pub/Sub (SQS allows 1-1000)"),
    validation = Rule::new("!has(self.deadLetter.retentionSeconds) || self.queue.provider != 'pubsub' || (self.deadLetter.retentionSeconds >= 600 && self.deadLetter.retentionSeconds <= 604800)").message("spec.deadLetter.retentionSeconds must be between 600 and 604800 for Pub/Sub (SQS allows 60-1209600)"),
    validation = Rule::new("!self.forceDelete || self.deletionPolicy == 'Delete'").message("spec.forceDelete applies only with deletionPolicy: Delete")
)]
pub struct QueueConsumerSpec {
    /// The queue to consume, created by Ferry (or adopted) with its dead-letter queue.
    pub queue: QueueSpec,
    /// The dead-letter queue: after how many deliveries a failing message is parked there,
    /// and for how long.
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,
    /// `Retain` (default) keeps the queue, the dead-letter queue and their messages when this
    /// object is deleted; `Delete` deletes them, unless the dead-letter queue holds messages.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// With `deletionPolicy: Delete`, delete the queues even when the dead-letter queue still
    /// holds messages (they are lost).
    #[serde(default)]
    pub force_delete: bool,
    /// The pod template of the worker: your container(s), which receive messages over HTTP
    /// on the pod's loopback (see `delivery`). Ferry adds the ferry-consumer sidecar, labels,
    /// probes for the sidecar, a preStop drain hook, and restricted security settings where
    /// you left them unset. Takes any field of a Deployment's `spec.template`.
    #[schemars(schema_with = "pod_template_schema")]
    #[x_kube(validation = Rule::new("has(self.spec) && has(self.spec.containers) && size(self.spec.containers) >= 1").message("spec.worker.spec.containers needs at least one container: the worker"))]
    pub worker: PodTemplateSpec,
    /// How the sidecar delivers messages to the worker.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// Replica bounds and the autoscaling target.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// The worker pods' ServiceAccount, with annotations for cloud identity (IRSA, Workload
    /// Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSpec>,
    /// Periodic tasks, as Elastic Beanstalk's `cron.yaml` lists them (`name`, `url`,
    /// `schedule`): at each tick the operator sends a message to the queue that the sidecar
    /// delivers to `url`, retried and dead-lettered like any other message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub periodic_tasks: Vec<PeriodicTask>,
    /// Overrides for the injected ferry-consumer sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
    /// Stop consuming, for instance while a service the worker calls is down, so that
    /// messages wait in the queue instead of using up their deliveries and landing in the
    /// dead-letter queue. The worker is scaled to zero (each pod finishes what it holds and
    /// hands the rest back) and held there, and periodic tasks send no ticks, until this is
    /// false again. Messages keep arriving and wait, but only for the queue's retention
    /// period (SQS: 4 days unless `spec.queue.sqs.messageRetentionSeconds` says otherwise;
    /// Pub/Sub: 7 days).
    #[serde(default)]
    pub suspend: bool,
}

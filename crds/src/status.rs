//! `status` of a QueueConsumer, written by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The condition types a QueueConsumer reports. `Ready` is true when the queue is ready and
/// the workload is ready; the others say which part is not.
pub mod condition_type {
    /// Everything below is in order: messages are being consumed (or can be, at zero replicas).
    pub const READY: &str = "Ready";
    /// The queue, its dead-letter queue and the redrive policy exist as the spec asks.
    pub const QUEUE_READY: &str = "QueueReady";
    /// The ServiceAccount and the Deployment exist and the Deployment has rolled out.
    pub const WORKLOAD_READY: &str = "WorkloadReady";
    /// The autoscaler has fresh signals and is scaling; false while it holds (signals
    /// missing or stale).
    pub const SCALING_ACTIVE: &str = "ScalingActive";
}

/// What Ferry observed and did, written by the operator: conditions, the provisioned queue
/// and dead-letter queue, the backlog, replicas and the last scaling decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueConsumerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `QueueReady`, `WorkloadReady` and `ScalingActive`, each with a reason and a
    /// message saying what to do when it is not `True`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The queue Ferry provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueReference>,
    /// The dead-letter queue Ferry provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<QueueReference>,
    /// The queue's backlog at the last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogStatus>,
    /// Pods of the worker Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods of the worker Deployment that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Replicas the autoscaler last asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The last scaling decision that changed the replica count, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaling: Option<ScalingRecord>,
    /// The last redrive of the dead-letter queue, asked for with the `ferry.dev/redrive`
    /// annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveStatus>,
    /// Each periodic task of `spec.periodicTasks`: the last tick sent and the next one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub periodic_tasks: Vec<crate::periodic::PeriodicTaskStatus>,
}

/// The annotation that asks the operator to move every message in the dead-letter queue
/// back to the queue, once the worker is fixed: `kubectl annotate qc <name>
/// ferry.dev/redrive=$(date +%s) --overwrite`. Each new value is one redrive; an
/// annotation rather than a spec field because it asks for an action, not a state (as
/// `kubectl rollout restart` does).
pub const REDRIVE_ANNOTATION: &str = "ferry.dev/redrive";

/// How a redrive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RedrivePhase {
    /// Messages are being moved.
    Running,
    /// Nothing is left to move.
    Succeeded,
    /// Stopped by an error that will not go away by itself (permissions, a missing queue);
    /// `message` says what to fix, and a new annotation value starts again.
    Failed,
    /// The annotation was removed before the redrive finished.
    Stopped,
}

/// A redrive of the dead-letter queue as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveStatus {
    /// The `ferry.dev/redrive` annotation's value this redrive answers.
    pub request: String,
    /// `Running`, `Succeeded`, `Failed` or `Stopped`.
    pub phase: RedrivePhase,
    /// Messages moved back to the queue so far.
    pub moved: i64,
    /// Messages this redrive had already moved that failed again and are back in the
    /// dead-letter queue: they are left there, not moved a second time.
    pub failed_again: i64,
    /// When the operator first saw this annotation value.
    pub started_at: Time,
    /// When it ended, whichever way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// What happened, in a sentence.
    pub message: String,
}

/// Identifies a provisioned queue (or dead-letter queue).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueReference {
    /// Short name (SQS queue name; Pub/Sub subscription name).
    pub name: String,
    /// What the sidecar consumes: the SQS queue URL, or the Pub/Sub subscription path
    /// `projects/<project>/subscriptions/<name>`.
    pub id: String,
    /// SQS only: the queue's ARN (what a redrive policy names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Pub/Sub only: the topic path `projects/<project>/topics/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Message counts. A count the provider does not report is absent, never zero (Pub/Sub has
/// no real-time backlog API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BacklogStatus {
    /// Messages waiting to be received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible: Option<i64>,
    /// Messages received and not yet deleted/acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// Messages not yet visible (SQS delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<i64>,
    /// Messages in the dead-letter queue: when it grows, the worker fails on some messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<i64>,
    /// When these counts were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}

/// A scaling decision as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRecord {
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, as a CamelCase word (e.g. `LatencyTarget`, `Activate`, `Idle`).
    pub reason: String,
    /// Why, in a sentence with the numbers.
    pub message: String,
    /// When the decision was made.
    pub time: Time,
    /// The numbers the decision was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<ScalingSignalsRecord>,
}

/// The autoscaler's inputs and estimates behind a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSignalsRecord {
    /// Visible messages.
    pub visible: i64,
    /// Messages in flight.
    pub in_flight: i64,
    /// Delayed messages.
    pub delayed: i64,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Seconds between the signals' sampling and the decision.
    pub age_seconds: f64,
    /// Estimated messages per second arriving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Smoothed mean seconds per delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_seconds: Option<f64>,
    /// Messages per second one replica can complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_replica_capacity: Option<f64>,
    /// Share of delivery slots busy (0-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<f64>,
    /// Mean seconds messages had waited when received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_age_at_receipt_seconds: Option<f64>,
    /// Replicas the queue needs by the rule in `basis`.
    pub needed_replicas: i32,
    /// The rule: `LatencyTarget`, `PlannedQueue`, `BacklogPerReplica`, `BacklogFallback` or
    /// `RateLimit`.
    pub basis: String,
    /// True when `arrivalRate` averages recurring bursts in instead of following each burst
    /// as a new rate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bursts_averaged: bool,
    /// Visible messages of those bursts that the averaged rate provisions for, left out of
    /// the backlog to drain so they are not counted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_messages_provisioned: Option<i64>,
}

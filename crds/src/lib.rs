//! ferry-crds: the `QueueConsumer` API (group `ferry.dev`, version `v1alpha1`).
//!
//! The types are the schema: every doc comment becomes a description in the CRD (what
//! `kubectl explain` shows), and the bounds and CEL rules on them are what the API server
//! enforces at admission. `crds/queueconsumer.yaml` is generated from them by `crdgen`.

pub mod crd;
pub mod dead_letter;
pub mod delivery;
pub mod names;
pub mod periodic;
pub mod queue;
pub mod scaling;
pub mod spec;
pub mod status;
pub mod workload;

pub use dead_letter::DeadLetterSpec;
pub use delivery::{DeliverySpec, RetryBackoff};
pub use names::default_queue_name;
pub use periodic::{PeriodicTask, PeriodicTaskStatus, RUN_TASK_ANNOTATION, task_to_run};
pub use queue::{PubSubQueueSpec, PubSubRetryPolicy, QueueProvider, QueueSpec, SqsQueueSpec};
pub use scaling::ScalingSpec;
pub use spec::{DeletionPolicy, QueueConsumer, QueueConsumerSpec};
pub use status::{
    BacklogStatus, QueueConsumerStatus, QueueReference, REDRIVE_ANNOTATION, RedrivePhase,
    RedriveStatus, ScalingRecord, ScalingSignalsRecord, condition_type,
};
pub use workload::{ServiceAccountSpec, SidecarSpec};

//! `spec.scaling`: the autoscaler's user-facing knobs. Mirrors the operator's
//! `autoscaler::ScalingSpec` field for field; the schema and CEL rules repeat its `validate`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// `spec.scaling`. Ferry scales the worker Deployment between `minReplicas` and `maxReplicas`
/// from the queue's backlog and the sidecars' measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.scaling.minReplicas must not exceed maxReplicas")
)]
pub struct ScalingSpec {
    /// Fewest replicas. 0 lets the consumer scale to zero when its queue is idle; it starts
    /// again when messages arrive (see `activationBacklog`).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas (at least 1).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// How long a message may wait in the queue before a worker starts it, seconds. When
    /// neither this nor `backlogPerReplica` is set, a 30-second target applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1))]
    pub target_latency_seconds: Option<f64>,
    /// Messages (visible + in flight) one replica should carry. Used alone when no latency
    /// target is set, as a floor next to it when both are set, and as the fallback while the
    /// service time has not been measured yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub backlog_per_replica: Option<i32>,
    /// A consumer at zero replicas starts when more than this many messages are visible.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_backlog: i32,
    /// Scale down only to the highest replica count recommended during this many seconds.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// Seconds the queue must be completely idle before the last replica goes (with
    /// `minReplicas: 0`).
    #[serde(default = "default_idle_before_zero_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub idle_before_zero_seconds: i32,
    /// Most replicas added in one decision, beyond doubling the current count.
    #[serde(default = "default_max_scale_up_step")]
    #[schemars(range(min = 1))]
    pub max_scale_up_step: i32,
}

/// The latency target used when the spec sets no target at all. Not a schema default: a
/// default there could never be removed, and `backlogPerReplica` alone must stay possible.
pub const DEFAULT_TARGET_LATENCY_SECONDS: f64 = 30.0;

// The same defaults as the operator's `ScalingSpec::default()`.
fn default_max_replicas() -> i32 {
    50
}
fn default_scale_down_stabilization_seconds() -> i32 {
    30
}
fn default_idle_before_zero_seconds() -> i32 {
    120
}
fn default_max_scale_up_step() -> i32 {
    20
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_latency_seconds: None,
            backlog_per_replica: None,
            activation_backlog: 0,
            scale_down_stabilization_seconds: default_scale_down_stabilization_seconds(),
            idle_before_zero_seconds: default_idle_before_zero_seconds(),
            max_scale_up_step: default_max_scale_up_step(),
        }
    }
}

impl ScalingSpec {
    /// The latency target in force: the spec's, or the default when no target is set at all.
    pub fn effective_target_latency_seconds(&self) -> Option<f64> {
        match (self.target_latency_seconds, self.backlog_per_replica) {
            (None, None) => Some(DEFAULT_TARGET_LATENCY_SECONDS),
            (target, _) => target,
        }
    }
}

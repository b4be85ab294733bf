//! `spec.scaling` (and `spec.delivery.maxPerSecond`) as the autoscaler's input.

use crate::autoscaler::ScalingSpec;

/// The CRD's `spec.scaling` (Kubernetes-style signed integers) as the autoscaler's
/// `ScalingSpec`. The schema already rejects negative values; clamping keeps this total
/// for objects that bypassed admission (e.g. written before a CRD upgrade).
pub fn autoscaler_spec(spec: &ferry_crds::QueueConsumerSpec) -> ScalingSpec {
    let scaling = &spec.scaling;
    let non_negative = |v: i32| u32::try_from(v).unwrap_or(0);
    ScalingSpec {
        min_replicas: non_negative(scaling.min_replicas),
        max_replicas: non_negative(scaling.max_replicas),
        target_latency_seconds: scaling.effective_target_latency_seconds(),
        backlog_per_replica: scaling.backlog_per_replica.map(non_negative),
        activation_backlog: non_negative(scaling.activation_backlog),
        scale_down_stabilization_seconds: non_negative(scaling.scale_down_stabilization_seconds),
        idle_before_zero_seconds: non_negative(scaling.idle_before_zero_seconds),
        max_scale_up_step: non_negative(scaling.max_scale_up_step),
        delivery_max_per_second: spec.delivery.max_per_second.filter(|rate| *rate > 0.0),
    }
}

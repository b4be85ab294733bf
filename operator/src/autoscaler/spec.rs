//! The user-facing scaling knobs (`spec.scaling` of a QueueConsumer) and the operator-side
//! tuning that users never see.

use serde::{Deserialize, Serialize};

/// `spec.scaling`. Field names are the CRD's (camelCase); the CRD's schema and CEL rules will
/// repeat [`ScalingSpec::validate`] so that `kubectl apply` rejects what this rejects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScalingSpec {
    /// 0 lets the consumer scale to zero when its queue is idle.
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// How long a message may wait in the queue before a worker starts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_latency_seconds: Option<f64>,
    /// Messages (visible + in flight) one replica should carry. Used alone when no latency
    /// target is set, as a floor next to it when both are set, and as the fallback while the
    /// service time has not been measured yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_per_replica: Option<u32>,
    /// A consumer at zero replicas starts when more than this many messages are visible.
    pub activation_backlog: u32,
    /// Scale down only to the highest replica count recommended during this window.
    pub scale_down_stabilization_seconds: u32,
    /// How long the queue must be completely idle before the last replica goes.
    pub idle_before_zero_seconds: u32,
    /// Most replicas added in one decision, beyond doubling the current count.
    pub max_scale_up_step: u32,
    /// `spec.delivery.maxPerSecond`: most deliveries per second across all replicas. More
    /// replicas than deliver that many would only share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_max_per_second: Option<f64>,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: 50,
            target_latency_seconds: Some(30.0),
            backlog_per_replica: None,
            activation_backlog: 0,
            scale_down_stabilization_seconds: 30,
            idle_before_zero_seconds: 120,
            max_scale_up_step: 20,
            delivery_max_per_second: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("maxReplicas must be at least 1")]
    MaxReplicasZero,
    #[error("minReplicas ({min}) must not exceed maxReplicas ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("targetLatencySeconds must be a positive number of seconds, got {0}")]
    BadLatencyTarget(f64),
    #[error("backlogPerReplica must be at least 1")]
    BacklogPerReplicaZero,
    #[error("set targetLatencySeconds, backlogPerReplica, or both")]
    NoTarget,
    #[error("maxScaleUpStep must be at least 1")]
    ScaleUpStepZero,
}

impl ScalingSpec {
    /// The spec for a consumer whose queue nobody can count (Pub/Sub without Cloud
    /// Monitoring): at zero replicas nothing would see a message arrive, so one stays.
    pub fn keeping_one_replica(mut self) -> Self {
        self.min_replicas = self.min_replicas.max(1);
        self
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.max_replicas == 0 {
            return Err(SpecError::MaxReplicasZero);
        }
        if self.min_replicas > self.max_replicas {
            return Err(SpecError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if let Some(t) = self.target_latency_seconds
            && !(t.is_finite() && t > 0.0)
        {
            return Err(SpecError::BadLatencyTarget(t));
        }
        if self.backlog_per_replica == Some(0) {
            return Err(SpecError::BacklogPerReplicaZero);
        }
        if self.target_latency_seconds.is_none() && self.backlog_per_replica.is_none() {
            return Err(SpecError::NoTarget);
        }
        if self.max_scale_up_step == 0 {
            return Err(SpecError::ScaleUpStepZero);
        }
        Ok(())
    }
}

/// Operator-wide constants of the policy. They are not in the CRD because choosing them needs
/// the queueing reasoning documented in `docs/autoscaling.md`, not knowledge of the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTuning {
    /// Signals older than this are stale: the policy holds instead of guessing. A few poll
    /// intervals, so that one slow scrape does not freeze scaling.
    pub stale_after_seconds: f64,
    /// Share of the latency target the steady-state queueing delay may use; the rest absorbs
    /// pod start-up and measurement lag when load rises.
    pub queueing_budget_fraction: f64,
    /// Share of the latency target in which an accumulated backlog should be drained...
    pub drain_budget_fraction: f64,
    /// ...and the least share left for it at a cold start, when the backlog has already
    /// waited and waits for the start-up as well.
    pub cold_start_drain_min_fraction: f64,
    /// Quantile of the wait the queueing budget applies to.
    pub wait_quantile: f64,
    /// Busy fraction of all delivery slots the policy plans for at most: rate estimates are
    /// noisy and a queue run at 100 % has no margin for them.
    pub max_utilization: f64,
    /// Seconds of polls the arrival rate is averaged over while it looks stable...
    pub arrival_window_seconds: f64,
    /// ...or longer, until the average holds this many messages...
    pub min_arrivals_averaged: f64,
    /// ...but never longer than this.
    pub max_arrival_window_seconds: f64,
    /// A poll whose arrivals differ from the average by more than this many standard
    /// deviations (Poisson's, widened by the measured dispersion) starts a new average.
    pub rate_change_sigmas: f64,
    /// ...with the spread of a count expected to be at least this many messages, so that a
    /// poll expecting 1.5 needs 11 to count as a change.
    pub min_variance_for_rate_change: f64,
    /// Rises of the arrivals that came back down before a replica could start (bursts) are
    /// remembered this long...
    pub burst_memory_seconds: f64,
    /// ...and once this many are remembered, a rise no larger than the largest of them is
    /// taken for one more and averaged in, not followed as a new rate (if the replicas the
    /// average rate needs start it within the drain budget).
    pub min_bursts_remembered: usize,
    /// Standard deviations of the average's error (Poisson's, widened by the measured
    /// dispersion) added to the arrival rate before provisioning.
    pub rate_confidence_sigmas: f64,
    /// Standard errors a trend of the polls' arrival rates must be from flat to move the
    /// estimate from the window's average to where the trend has taken it...
    pub trend_sigmas: f64,
    /// ...and the polls the window must hold to measure one.
    pub min_polls_for_trend: usize,
    /// Recent polls whose poll-to-poll moves measure how much burstier than Poisson the
    /// arrivals are, and how much more the mean service time scatters than its deliveries
    /// explain (the dispersions); half of them are needed before one is used.
    pub dispersion_polls: usize,
    /// Arrivals two consecutive polls must hold between them for their move to count.
    pub min_messages_for_dispersion: f64,
    /// Deliveries each of two consecutive polls' mean service times must average for their
    /// move to count.
    pub min_completions_for_dispersion: f64,
    /// How far a poll's completions may differ from its receives, as a share of them, for
    /// its mean service time to count toward the measured scatter.
    pub steady_rate_tolerance: f64,
    /// How many times what the sidecars took a queue's count may fall by between two polls
    /// and still be believed (their receive rate is a windowed mean, not the poll's count;
    /// one pod's slots more are allowed for deliveries that end around the sample). A count
    /// that falls further is stale.
    pub believable_count_fall: f64,
    /// The most the measured dispersion may widen Poisson's spread (variance over mean), so
    /// that very bursty traffic still has its larger changes of rate followed at once.
    pub max_dispersion: f64,
    /// Weight of one delivery's duration in the service-time average: about the inverse of
    /// how many recent deliveries the average remembers...
    pub service_time_weight_per_delivery: f64,
    /// ...and the most one poll's mean may weigh.
    pub service_time_smoothing: f64,
    /// Deliveries seen before the service-time estimate stops being bounded from below by
    /// Little's law (busy slots, or the messages held, over the rate they pass through).
    pub young_estimate_deliveries: f64,
    /// Messages the sidecars must have received within the arrival window before the
    /// message-seconds they held over them bound a young service-time estimate.
    pub min_receipts_for_holding_bound: f64,
    /// Replica start-up assumed until one has been observed.
    pub default_startup_seconds: f64,
    /// Weight of a new start-up observation in its moving average.
    pub startup_smoothing: f64,
    /// Share of the latency target a planned queue may use, so that fewer whole replicas
    /// than the fractional demand rounds up to can run while it lasts...
    pub planned_queue_fraction: f64,
    /// ...only where each slot serves at least this many messages within that share (1: a
    /// job no longer than the planned wait; a queue behind longer jobs waits for a slot to
    /// turn over, not for a backlog to drain)...
    pub planned_queue_min_turns: f64,
    /// ...and only for a count that would carry the queue at least this long before stepping
    /// down to it, so the replicas change every few minutes at most, not every poll.
    pub planned_queue_min_dwell_seconds: f64,
    /// Backlog per replica used before the service time is known when the spec sets none,
    /// in multiples of one replica's concurrency.
    pub fallback_backlog_per_slot: f64,
}

impl Default for PolicyTuning {
    fn default() -> Self {
        Self {
            stale_after_seconds: 20.0,
            queueing_budget_fraction: 0.5,
            drain_budget_fraction: 0.5,
            cold_start_drain_min_fraction: 1.0 / 3.0,
            wait_quantile: 0.99,
            max_utilization: 0.98,
            arrival_window_seconds: 60.0,
            min_arrivals_averaged: 300.0,
            max_arrival_window_seconds: 600.0,
            rate_change_sigmas: 4.0,
            min_variance_for_rate_change: 5.0,
            burst_memory_seconds: 600.0,
            min_bursts_remembered: 2,
            rate_confidence_sigmas: 2.0,
            trend_sigmas: 3.0,
            min_polls_for_trend: 4,
            dispersion_polls: 40,
            min_messages_for_dispersion: 20.0,
            min_completions_for_dispersion: 10.0,
            steady_rate_tolerance: 0.25,
            believable_count_fall: 1.5,
            max_dispersion: 16.0,
            service_time_weight_per_delivery: 0.01,
            service_time_smoothing: 0.3,
            young_estimate_deliveries: 200.0,
            min_receipts_for_holding_bound: 10.0,
            default_startup_seconds: 15.0,
            startup_smoothing: 0.3,
            fallback_backlog_per_slot: 1.0,
            planned_queue_fraction: 0.25,
            planned_queue_min_dwell_seconds: 120.0,
            planned_queue_min_turns: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ScalingSpec::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_min_above_max_and_missing_targets() {
        let spec = ScalingSpec {
            min_replicas: 5,
            max_replicas: 2,
            ..ScalingSpec::default()
        };
        assert_eq!(
            spec.validate(),
            Err(SpecError::MinAboveMax { min: 5, max: 2 })
        );
        let spec = ScalingSpec {
            target_latency_seconds: None,
            backlog_per_replica: None,
            ..ScalingSpec::default()
        };
        assert_eq!(spec.validate(), Err(SpecError::NoTarget));
        let spec = ScalingSpec {
            target_latency_seconds: Some(-1.0),
            ..ScalingSpec::default()
        };
        assert_eq!(spec.validate(), Err(SpecError::BadLatencyTarget(-1.0)));
    }

    #[test]
    fn serde_uses_crd_field_names_and_fills_defaults() {
        let spec: ScalingSpec =
            serde_json::from_str(r#"{"minReplicas":1,"targetLatencySeconds":10}"#).unwrap();
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.target_latency_seconds, Some(10.0));
        assert_eq!(spec.max_replicas, ScalingSpec::default().max_replicas);
        let json = serde_json::to_value(ScalingSpec::default()).unwrap();
        assert!(json.get("scaleDownStabilizationSeconds").is_some());
        assert!(json.get("idleBeforeZeroSeconds").is_some());
        assert!(json.get("backlogPerReplica").is_none());
    }
}

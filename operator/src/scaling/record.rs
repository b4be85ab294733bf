//! What a scaling decision writes into `status`: the decision record, the backlog and the
//! `ScalingActive` condition. Pure; messages hold no numbers that change every poll, so an
//! unchanged situation never rewrites the status.

use ferry_crds::{BacklogStatus, ScalingRecord, ScalingSignalsRecord, condition_type};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::signals::BacklogSource;
use crate::autoscaler::{DemandBasis, ScalingDecision, ScalingReason, ScalingSignals, SpecError};
use crate::builders::{ConditionStatus, ConditionUpdate};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn basis_word(basis: DemandBasis) -> &'static str {
    match basis {
        DemandBasis::LatencyTarget => "LatencyTarget",
        DemandBasis::PlannedQueue => "PlannedQueue",
        DemandBasis::BacklogPerReplica => "BacklogPerReplica",
        DemandBasis::BacklogFallback => "BacklogFallback",
        DemandBasis::RateLimit => "RateLimit",
    }
}

/// `status.lastScaling` for a decision that changed the replica count.
pub fn scaling_record(decision: &ScalingDecision, time: Time) -> ScalingRecord {
    ScalingRecord {
        from: to_i32(decision.from),
        to: to_i32(decision.to),
        reason: decision.reason.code().into(),
        message: decision.message(),
        time,
        signals: decision.signals.as_ref().map(|s| ScalingSignalsRecord {
            visible: to_i64(s.visible),
            in_flight: to_i64(s.in_flight),
            delayed: to_i64(s.delayed),
            ready_replicas: to_i32(s.ready_replicas),
            age_seconds: round(s.age_seconds),
            arrival_rate: s.arrival_rate.map(round),
            service_seconds: s.service_seconds.map(round),
            per_replica_capacity: s.per_replica_capacity.map(round),
            saturation: s.saturation.map(round),
            mean_age_at_receipt_seconds: s.mean_age_at_receipt_seconds.map(round),
            needed_replicas: to_i32(s.needed_replicas),
            basis: basis_word(s.basis).into(),
            bursts_averaged: s.bursts_averaged,
            burst_messages_provisioned: (s.burst_messages_provisioned > 0)
                .then(|| to_i64(s.burst_messages_provisioned)),
        }),
    }
}

/// Three decimals are plenty for people and keep the JSON short.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `status.backlog`; an estimate is not a count, so it is not shown as one.
pub fn backlog_status(
    signals: &ScalingSignals,
    source: BacklogSource,
    dead_letter: Option<u64>,
    observed_at: Time,
) -> BacklogStatus {
    let counted = source != BacklogSource::EstimatedFromWait;
    BacklogStatus {
        visible: counted.then(|| to_i64(signals.backlog.visible)),
        in_flight: counted.then(|| to_i64(signals.backlog.in_flight)),
        delayed: counted.then(|| to_i64(signals.backlog.delayed)),
        dead_letter: dead_letter.map(to_i64),
        observed_at: Some(observed_at),
    }
}

/// Why the autoscaler runs the way it does, for the `ScalingActive` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalerMode {
    Deciding(BacklogSource),
    Holding(ScalingReason),
    InvalidSpec(SpecError),
    /// Pub/Sub without Cloud Monitoring at zero replicas: nothing could see messages arrive.
    KeepingOneForPubSub,
    /// `spec.suspend`: held at zero.
    Suspended,
    /// `spec.suspend` turned false, and no signal has come since.
    Resuming,
}

pub fn scaling_condition(mode: &ScalerMode, generation: Option<i64>) -> ConditionUpdate {
    let (status, reason, message) = match mode {
        ScalerMode::Deciding(source) => (
            ConditionStatus::True,
            "SignalsFresh",
            match source {
                BacklogSource::Sidecars => {
                    "scaling from the backlog and throughput the sidecars report".to_string()
                }
                BacklogSource::Queue => {
                    "scaling from the queue's own counts (no sidecar is reporting)".to_string()
                }
                BacklogSource::EstimatedFromWait => {
                    "scaling from the sidecars' throughput and message wait; the backlog itself is not readable without Cloud Monitoring (set FERRY_PUBSUB_MONITORING on the operator and the sidecars)".to_string()
                }
            },
        ),
        ScalerMode::Holding(reason) => (
            ConditionStatus::False,
            reason.code(),
            match reason {
                ScalingReason::SignalsStale { .. } => "the sidecars' counts are stale; holding the replica count until they are fresh (see the sidecars' ferry_queue_api_errors_total and logs)".to_string(),
                ScalingReason::WorkerUnavailable { .. } => "the worker is unavailable in every pod (it stopped being ready, or says it cannot work), so no sidecar receives and messages wait in the queue: holding the replica count until a worker is ready again (see the pods' /readyz on the metrics port, the worker's readiness path and its logs)".to_string(),
                _ => "no sidecar could be scraped and the queue could not be read; holding the replica count (see `kubectl get pods` and the operator's log)".to_string(),
            },
        ),
        ScalerMode::InvalidSpec(error) => (
            ConditionStatus::False,
            "InvalidScalingSpec",
            format!("{error}; fix spec.scaling"),
        ),
        ScalerMode::KeepingOneForPubSub => (
            ConditionStatus::True,
            "KeepingOneReplica",
            "Pub/Sub reports its backlog only through Cloud Monitoring, which the operator is not configured to read (FERRY_PUBSUB_MONITORING): keeping at least one replica so arriving messages are seen".to_string(),
        ),
        ScalerMode::Suspended => (
            ConditionStatus::False,
            "Suspended",
            "spec.suspend is true: the worker is held at zero replicas and no message is consumed; messages wait in the queue, for its retention period at most; set spec.suspend to false to resume".to_string(),
        ),
        ScalerMode::Resuming => (
            ConditionStatus::True,
            "Resuming",
            "spec.suspend is false again: scaling from what the queue holds, as from zero; waiting for the first signals".to_string(),
        ),
    };
    ConditionUpdate {
        type_: condition_type::SCALING_ACTIVE.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{BacklogSignal, SignalsUsed};
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn meet_demand(bursts_averaged: bool, burst_messages_provisioned: u64) -> ScalingDecision {
        ScalingDecision {
            at: 10.0,
            from: 1,
            to: 4,
            reason: ScalingReason::MeetDemand { needed: 4 },
            signals: Some(SignalsUsed {
                sampled_at: 9.0,
                age_seconds: 1.0,
                visible: 300,
                in_flight: 10,
                delayed: 0,
                ready_replicas: 1,
                arrival_rate: Some(12.345_678),
                service_seconds: Some(0.1),
                per_replica_capacity: Some(100.0),
                per_replica_throughput: Some(90.0),
                saturation: Some(1.0),
                mean_age_at_receipt_seconds: Some(3.0),
                needed_replicas: 4,
                basis: DemandBasis::LatencyTarget,
                bursts_averaged,
                burst_messages_provisioned,
            }),
        }
    }

    #[test]
    fn a_decision_is_recorded_with_its_numbers() {
        let record = scaling_record(&meet_demand(false, 0), at(10));
        assert_eq!((record.from, record.to), (1, 4));
        assert_eq!(record.reason, "MeetDemand");
        assert_eq!(
            record.message,
            "1 → 4: 4 replicas needed to meet the target"
        );
        let signals = record.signals.unwrap();
        assert_eq!(signals.visible, 300);
        assert_eq!(signals.arrival_rate, Some(12.346));
        assert_eq!(signals.basis, "LatencyTarget");
        assert_eq!(
            (signals.bursts_averaged, signals.burst_messages_provisioned),
            (false, None)
        );
    }

    #[test]
    fn a_decision_that_averages_bursts_in_says_so_and_how_many_messages_it_left_to_the_rate() {
        let record = scaling_record(&meet_demand(true, 120), at(10));
        assert_eq!(
            record.message,
            "1 → 4: 4 replicas needed to meet the target; the arrival rate averages in the \
             bursts that recur, and 120 visible messages of theirs are provisioned for by it, \
             not drained on top"
        );
        let signals = record.signals.unwrap();
        assert_eq!(
            (signals.bursts_averaged, signals.burst_messages_provisioned),
            (true, Some(120))
        );
        let between_bursts = scaling_record(&meet_demand(true, 0), at(10));
        assert!(
            between_bursts
                .message
                .ends_with("; the arrival rate averages in the bursts that recur"),
            "{}",
            between_bursts.message
        );
        assert_eq!(
            between_bursts.signals.unwrap().burst_messages_provisioned,
            None
        );
    }

    #[test]
    fn an_estimated_backlog_is_not_shown_as_a_count() {
        let signals = ScalingSignals {
            sampled_at: 1.0,
            backlog: BacklogSignal {
                visible: 20,
                in_flight: 3,
                delayed: 0,
            },
            throughput: None,
            ready_replicas: 1,
            workers_unavailable: 0,
            concurrency_per_replica: 4,
        };
        let estimated = backlog_status(&signals, BacklogSource::EstimatedFromWait, None, at(1));
        assert_eq!((estimated.visible, estimated.in_flight), (None, None));
        let counted = backlog_status(&signals, BacklogSource::Sidecars, Some(2), at(1));
        assert_eq!(
            (counted.visible, counted.in_flight, counted.dead_letter),
            (Some(20), Some(3), Some(2))
        );
    }

    #[test]
    fn the_condition_says_what_to_do_when_scaling_holds() {
        let holding =
            scaling_condition(&ScalerMode::Holding(ScalingReason::SignalsMissing), Some(2));
        assert_eq!(holding.status, ConditionStatus::False);
        assert_eq!(holding.reason, "SignalsMissing");
        assert!(holding.message.contains("kubectl get pods"));
        let invalid = scaling_condition(
            &ScalerMode::InvalidSpec(SpecError::MinAboveMax { min: 3, max: 2 }),
            Some(2),
        );
        assert!(invalid.message.contains("fix spec.scaling"));
        // Same state, same condition: nothing to rewrite between polls.
        assert_eq!(
            scaling_condition(&ScalerMode::Deciding(BacklogSource::Sidecars), Some(1)),
            scaling_condition(&ScalerMode::Deciding(BacklogSource::Sidecars), Some(1))
        );
    }

    #[test]
    fn a_suspension_is_recorded_as_a_decision_and_says_how_to_resume() {
        let decision = ScalingDecision::suspended(10.0, 3);
        let record = scaling_record(&decision, at(10));
        assert_eq!((record.from, record.to), (3, 0));
        assert_eq!(record.reason, "Suspended");
        assert!(
            record.message.starts_with("3 → 0: spec.suspend is true"),
            "{}",
            record.message
        );
        assert_eq!(record.signals, None);
        let condition = scaling_condition(&ScalerMode::Suspended, Some(4));
        assert_eq!(condition.status, ConditionStatus::False);
        assert_eq!(condition.reason, "Suspended");
        let resuming = scaling_condition(&ScalerMode::Resuming, Some(5));
        assert_eq!(
            (resuming.status, resuming.reason.as_str()),
            (ConditionStatus::True, "Resuming")
        );
        assert!(
            condition.message.contains("set spec.suspend to false"),
            "{}",
            condition.message
        );
    }
}

//! Conditions per the Kubernetes API conventions, without churn: `lastTransitionTime` moves
//! only when the status does, and an unchanged condition is reported as unchanged so the
//! reconciler can skip the status write entirely.

use ferry_crds::condition_type;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One condition as the reconciler observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: String,
    pub status: ConditionStatus,
    /// CamelCase, e.g. `QueueProvisioned`, `QueueNotFound`.
    pub reason: String,
    /// A sentence for people, saying what to do when the status is not `True`.
    pub message: String,
    /// The `metadata.generation` the observation was made against.
    pub observed_generation: Option<i64>,
}

/// Sets `update` in `conditions` and says whether anything changed. `now` becomes the
/// `lastTransitionTime` only when the status changes (or the condition is new); a changed
/// reason, message or generation with the same status keeps the original time.
pub fn set_condition(conditions: &mut Vec<Condition>, update: ConditionUpdate, now: Time) -> bool {
    let status = update.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            let unchanged = existing.status == status
                && existing.reason == update.reason
                && existing.message == update.message
                && existing.observed_generation == update.observed_generation;
            if unchanged {
                return false;
            }
            if existing.status != status {
                existing.status = status.into();
                existing.last_transition_time = now;
            }
            existing.reason = update.reason;
            existing.message = update.message;
            existing.observed_generation = update.observed_generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: update.type_,
                status: status.into(),
                reason: update.reason,
                message: update.message,
                observed_generation: update.observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// `Ready` from its parts: `True` only when `QueueReady` and `WorkloadReady` are both `True`;
/// otherwise it carries the first failing part's reason and message, so `kubectl get qc`
/// says what is wrong without a `describe`.
pub fn ready_summary(
    conditions: &[Condition],
    observed_generation: Option<i64>,
) -> ConditionUpdate {
    let parts = [condition_type::QUEUE_READY, condition_type::WORKLOAD_READY];
    let failing =
        parts
            .iter()
            .find_map(|part| match conditions.iter().find(|c| c.type_ == *part) {
                Some(c) if c.status == "True" => None,
                Some(c) => Some((
                    if c.status == "False" {
                        ConditionStatus::False
                    } else {
                        ConditionStatus::Unknown
                    },
                    c.reason.clone(),
                    c.message.clone(),
                )),
                None => Some((
                    ConditionStatus::Unknown,
                    "Reconciling".to_string(),
                    format!("{part} has not been observed yet"),
                )),
            });
    let (status, reason, message) = failing.unwrap_or((
        ConditionStatus::True,
        "Consuming".into(),
        "the queue and the worker are ready".into(),
    ));
    ConditionUpdate {
        type_: condition_type::READY.into(),
        status,
        reason,
        message,
        observed_generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn update(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        generation: i64,
    ) -> ConditionUpdate {
        ConditionUpdate {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(generation),
        }
    }

    #[test]
    fn a_new_condition_is_added_with_now() {
        let mut conditions = Vec::new();
        let changed = set_condition(
            &mut conditions,
            update("QueueReady", ConditionStatus::True, "Provisioned", 1),
            at(100),
        );
        assert!(changed);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].observed_generation, Some(1));
    }

    #[test]
    fn the_same_observation_changes_nothing() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            update("QueueReady", ConditionStatus::True, "Provisioned", 1),
            at(100),
        );
        let before = conditions.clone();
        let changed = set_condition(
            &mut conditions,
            update("QueueReady", ConditionStatus::True, "Provisioned", 1),
            at(200),
        );
        assert!(!changed);
        assert_eq!(conditions, before);
    }

    #[test]
    fn same_status_with_new_details_keeps_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::False, "Progressing", 1),
            at(100),
        );
        let changed = set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::False, "PodsUnready", 2),
            at(200),
        );
        assert!(changed);
        assert_eq!(conditions[0].reason, "PodsUnready");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn a_status_change_moves_the_transition_time_and_leaves_others_alone() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            update("QueueReady", ConditionStatus::True, "Provisioned", 1),
            at(50),
        );
        set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::False, "Progressing", 1),
            at(100),
        );
        set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::True, "Available", 1),
            at(300),
        );
        let workload = conditions
            .iter()
            .find(|c| c.type_ == "WorkloadReady")
            .unwrap();
        assert_eq!(workload.status, "True");
        assert_eq!(workload.last_transition_time, at(300));
        let queue = conditions.iter().find(|c| c.type_ == "QueueReady").unwrap();
        assert_eq!(queue.last_transition_time, at(50));
        assert_eq!(conditions.len(), 2);
    }

    #[test]
    fn ready_is_true_only_when_both_parts_are() {
        let mut conditions = Vec::new();
        let ready = ready_summary(&conditions, Some(4));
        assert_eq!(ready.status, ConditionStatus::Unknown);
        assert_eq!(ready.reason, "Reconciling");
        set_condition(
            &mut conditions,
            update("QueueReady", ConditionStatus::True, "Provisioned", 4),
            at(1),
        );
        set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::False, "PodsUnready", 4),
            at(1),
        );
        let ready = ready_summary(&conditions, Some(4));
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "PodsUnready");
        assert_eq!(ready.message, "PodsUnready message");
        set_condition(
            &mut conditions,
            update("WorkloadReady", ConditionStatus::True, "Available", 4),
            at(2),
        );
        let ready = ready_summary(&conditions, Some(4));
        assert_eq!(ready.status, ConditionStatus::True);
        assert_eq!(ready.type_, "Ready");
        assert_eq!(ready.observed_generation, Some(4));
    }
}

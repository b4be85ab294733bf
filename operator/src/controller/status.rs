//! `status` from what the reconcile observed: conditions without churn, identifiers,
//! replicas. Written only when something changed.

use ferry_crds::{QueueConsumer, QueueConsumerStatus, QueueReference, condition_type};
use ferry_queues::QueueError;
use ferry_queues::provision::ProvisionedQueue;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::{Context, Error, FIELD_MANAGER};
use crate::builders::{BuildError, ConditionStatus, ConditionUpdate, ready_summary, set_condition};
use crate::scaling::slim::REPLICA_FAILURE;

/// What one reconcile found.
pub struct Observed {
    pub provisioned: Option<ProvisionedQueue>,
    pub queue_error: Option<QueueError>,
    pub build_error: Option<BuildError>,
    pub deployment: Option<Deployment>,
    /// The redrive's status after this reconcile's pass, when one ran or stopped.
    pub redrive: Option<ferry_crds::RedriveStatus>,
    /// Every periodic task's status after this reconcile, when the queue was reached.
    pub periodic_tasks: Option<Vec<ferry_crds::PeriodicTaskStatus>>,
}

/// `QueueNotFound`-style reasons from an error kind.
fn reason_of(error: &QueueError) -> String {
    let label = error.kind.label();
    let camel: String = label
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("Queue{camel}")
}

/// A queue's short name from its URL or path.
pub(super) fn short(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .to_string()
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> ConditionUpdate {
    ConditionUpdate {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
    }
}

/// The status this observation calls for, starting from the current one so unchanged
/// conditions keep their transition times. Pure.
pub fn desired_status(qc: &QueueConsumer, observed: &Observed, now: Time) -> QueueConsumerStatus {
    let generation = qc.metadata.generation;
    let mut status = qc.status.clone().unwrap_or_default();
    let queue_condition = match (&observed.provisioned, &observed.queue_error) {
        (Some(queue), _) => condition(
            condition_type::QUEUE_READY,
            ConditionStatus::True,
            "QueueProvisioned",
            format!(
                "queue {} and dead-letter queue {} exist; messages move to the dead-letter queue after {} deliveries",
                short(&queue.queue),
                short(&queue.dead_letter),
                qc.spec.dead_letter.max_deliveries
            ),
            generation,
        ),
        (None, Some(error)) => condition(
            condition_type::QUEUE_READY,
            ConditionStatus::False,
            &reason_of(error),
            error.to_string(),
            generation,
        ),
        (None, None) => condition(
            condition_type::QUEUE_READY,
            ConditionStatus::Unknown,
            "Reconciling",
            "the queue has not been checked yet".into(),
            generation,
        ),
    };
    set_condition(&mut status.conditions, queue_condition, now.clone());
    let workload_condition = match (
        &observed.build_error,
        &observed.deployment,
        &observed.provisioned,
    ) {
        (Some(error), _, _) => condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::False,
            error.reason(),
            format!("{error}; fix spec.worker"),
            generation,
        ),
        (None, Some(deployment), _) => workload_condition(deployment, generation),
        (None, None, _) => condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::Unknown,
            "WaitingForQueue",
            "the worker Deployment is created once the queue exists".into(),
            generation,
        ),
    };
    set_condition(&mut status.conditions, workload_condition, now.clone());
    let ready = ready_summary(&status.conditions, generation);
    set_condition(&mut status.conditions, ready, now);
    if let Some(queue) = &observed.provisioned {
        let pubsub = qc.spec.queue.provider == ferry_crds::QueueProvider::Pubsub;
        status.queue = Some(QueueReference {
            name: short(&queue.queue),
            id: queue.queue.clone(),
            arn: None,
            topic: pubsub.then(|| queue.publish_to.clone()),
        });
        status.dead_letter = Some(QueueReference {
            name: short(&queue.dead_letter),
            id: queue.dead_letter.clone(),
            arn: None,
            topic: pubsub.then(|| queue.dead_letter_publish_to.clone()),
        });
    }
    if let Some(deployment) = &observed.deployment {
        let deployment_status = deployment.status.clone().unwrap_or_default();
        status.replicas = Some(deployment_status.replicas.unwrap_or(0));
        status.ready_replicas = Some(deployment_status.ready_replicas.unwrap_or(0));
    }
    if let Some(redrive) = &observed.redrive {
        status.redrive = Some(redrive.clone());
    }
    if let Some(tasks) = &observed.periodic_tasks {
        status.periodic_tasks = tasks.clone();
    }
    status.observed_generation = generation;
    status
}

fn workload_condition(deployment: &Deployment, generation: Option<i64>) -> ConditionUpdate {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let current = deployment.status.clone().unwrap_or_default();
    let available = current.available_replicas.unwrap_or(0);
    let name = deployment.name_any();
    if wanted == 0 {
        return condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::True,
            "ScaledToZero",
            format!("Deployment {name} is scaled to zero; it scales up when messages arrive"),
            generation,
        );
    }
    // The cluster refuses to create pods (a namespace's Pod Security level, a quota): the
    // refusal says what to change, so it is passed on rather than "not available yet".
    let refused = current
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_.as_deref() == Some(REPLICA_FAILURE) && c.status.as_deref() == Some("True")
        })
        .map(|c| c.message.clone().unwrap_or_default());
    if available >= 1 {
        let mut message =
            format!("{available} of {wanted} worker pods of Deployment {name} are available");
        if let Some(refused) = refused {
            message.push_str(&format!("; more cannot be created: {refused}"));
        }
        condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::True,
            "WorkerAvailable",
            message,
            generation,
        )
    } else if let Some(refused) = refused {
        condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::False,
            "PodCreationFailed",
            format!(
                "Deployment {name} cannot create its worker pods: {refused}; fix spec.worker, or the namespace's policy"
            ),
            generation,
        )
    } else {
        condition(
            condition_type::WORKLOAD_READY,
            ConditionStatus::False,
            "WorkerUnavailable",
            format!(
                "no worker pod of Deployment {name} is available yet; see `kubectl describe deployment {name}` and the pods' events"
            ),
            generation,
        )
    }
}

pub(super) fn now() -> Time {
    Time(Timestamp::now())
}

async fn patch_status(
    qc: &QueueConsumer,
    ctx: &Context,
    status: &QueueConsumerStatus,
) -> Result<(), Error> {
    let api: Api<QueueConsumer> = Api::namespaced(
        ctx.client.clone(),
        &qc.namespace().unwrap_or_else(|| "default".into()),
    );
    let patch = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "status": reconciler_part(status),
    });
    api.patch_status(
        &qc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The part of `status` the reconciler owns: everything but what the autoscaler writes under
/// its own field manager (`ScalingActive`, `desiredReplicas`, `lastScaling`, `backlog`).
/// Applying those too would make the reconciler co-own them and write back stale copies.
fn reconciler_part(status: &QueueConsumerStatus) -> QueueConsumerStatus {
    let mut part = status.clone();
    part.conditions
        .retain(|c| c.type_ != condition_type::SCALING_ACTIVE);
    part.desired_replicas = None;
    part.last_scaling = None;
    part.backlog = None;
    part
}

/// Writes the status only when it differs from the one the object carries, and tells the
/// user about every condition that changed status with an Event.
pub async fn write(qc: &QueueConsumer, ctx: &Context, observed: &Observed) -> Result<(), Error> {
    let status = desired_status(qc, observed, now());
    if qc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    patch_status(qc, ctx, &status).await?;
    for (type_, status, reason, message) in transitions(qc.status.as_ref(), &status) {
        announce(qc, ctx, &type_, &status, &reason, &message).await;
    }
    Ok(())
}

/// Conditions whose status is new or different: (type, status, reason, message).
fn transitions(
    before: Option<&QueueConsumerStatus>,
    after: &QueueConsumerStatus,
) -> Vec<(String, String, String, String)> {
    after
        .conditions
        .iter()
        .filter(|c| c.type_ != condition_type::READY)
        .filter(|c| {
            let previous = before.and_then(|b| b.conditions.iter().find(|p| p.type_ == c.type_));
            previous.is_none_or(|p| p.status != c.status)
        })
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect()
}

/// An Event for a condition that changed status.
async fn announce(
    qc: &QueueConsumer,
    ctx: &Context,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let action = format!("Set{type_}");
    publish_event(qc, ctx, status == "False", reason, &action, message).await;
}

/// Events are for people; failing to publish one must not fail the reconcile.
pub(super) async fn publish_event(
    qc: &QueueConsumer,
    ctx: &Context,
    warning: bool,
    reason: &str,
    action: &str,
    message: &str,
) {
    use crate::events::{Event, EventType};
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &qc.object_ref(&())).await {
        tracing::debug!("could not publish an event: {error}");
    }
}

/// `Ready=False, reason DeletionBlocked` while `deletionPolicy: Delete` waits for the DLQ.
pub async fn write_deletion_blocked(
    qc: &QueueConsumer,
    ctx: &Context,
    error: &Error,
) -> Result<(), Error> {
    let mut status = qc.status.clone().unwrap_or_default();
    let changed = set_condition(
        &mut status.conditions,
        condition(
            condition_type::READY,
            ConditionStatus::False,
            "DeletionBlocked",
            error.to_string(),
            qc.metadata.generation,
        ),
        now(),
    );
    if changed {
        patch_status(qc, ctx, &status).await?;
        announce(
            qc,
            ctx,
            condition_type::READY,
            "False",
            "DeletionBlocked",
            &error.to_string(),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_queues::QueueErrorKind;

    fn consumer() -> QueueConsumer {
        serde_json::from_str(
            r#"{"apiVersion":"ferry.dev/v1alpha1","kind":"QueueConsumer","metadata":{"name":"orders","namespace":"shop","generation":3},
                "spec":{"queue":{"provider":"sqs"},"deadLetter":{"maxDeliveries":5},
                        "worker":{"spec":{"containers":[{"name":"app","image":"app"}]}}}}"#,
        )
        .unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn provisioned() -> ProvisionedQueue {
        ProvisionedQueue {
            queue: "http://sqs/1/shop-orders".into(),
            dead_letter: "http://sqs/1/shop-orders-dlq".into(),
            publish_to: "http://sqs/1/shop-orders".into(),
            dead_letter_publish_to: "http://sqs/1/shop-orders-dlq".into(),
            corrected: vec![],
            created: vec![],
        }
    }

    fn get<'a>(
        status: &'a QueueConsumerStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_queue_error_says_what_to_do_and_ready_follows_it() {
        let observed = Observed {
            provisioned: None,
            queue_error: Some(QueueError::new(
                "CheckOwner",
                QueueErrorKind::Conflict,
                "SQS queue x belongs to billing/orders",
            )),
            build_error: None,
            deployment: None,
            redrive: None,
            periodic_tasks: None,
        };
        let status = desired_status(&consumer(), &observed, at(10));
        let queue = get(&status, condition_type::QUEUE_READY);
        assert_eq!(
            (queue.status.as_str(), queue.reason.as_str()),
            ("False", "QueueConflict")
        );
        assert!(queue.message.contains("adopt"), "{}", queue.message);
        let ready = get(&status, condition_type::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "QueueConflict")
        );
        assert_eq!(status.observed_generation, Some(3));
    }

    /// A worker Deployment as the cluster reports it: `available` pods, and the refusal of
    /// its ReplicaSet when there is one.
    fn deployment(available: i32, refused: Option<&str>) -> Deployment {
        let mut conditions = vec![serde_json::json!({"type": "Available", "status": "False"})];
        if let Some(message) = refused {
            conditions.push(
                serde_json::json!({"type": "ReplicaFailure", "status": "True",
                "reason": "FailedCreate", "message": message}),
            );
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": available, "conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn pods_the_cluster_refuses_are_named_with_its_reason() {
        let refusal = r#"pods "orders-worker-1" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#;
        let observe = |deployment| Observed {
            provisioned: Some(provisioned()),
            queue_error: None,
            build_error: None,
            deployment: Some(deployment),
            redrive: None,
            periodic_tasks: None,
        };
        let status = desired_status(&consumer(), &observe(deployment(0, Some(refusal))), at(10));
        let workload = get(&status, condition_type::WORKLOAD_READY);
        assert_eq!(
            (workload.status.as_str(), workload.reason.as_str()),
            ("False", "PodCreationFailed")
        );
        assert!(workload.message.contains(refusal), "{}", workload.message);
        let ready = get(&status, condition_type::READY);
        assert_eq!(ready.reason, "PodCreationFailed");

        // Some pods run: available, and the refusal of the rest is still told.
        let status = desired_status(&consumer(), &observe(deployment(1, Some(refusal))), at(10));
        let workload = get(&status, condition_type::WORKLOAD_READY);
        assert_eq!(workload.status, "True");
        assert!(workload.message.contains(refusal), "{}", workload.message);

        // No refusal: not available yet, as before.
        let status = desired_status(&consumer(), &observe(deployment(0, None)), at(10));
        assert_eq!(
            get(&status, condition_type::WORKLOAD_READY).reason,
            "WorkerUnavailable"
        );
    }

    #[test]
    fn an_unchanged_observation_yields_the_same_status() {
        let observed = Observed {
            provisioned: Some(provisioned()),
            queue_error: None,
            build_error: None,
            deployment: None,
            redrive: None,
            periodic_tasks: None,
        };
        let mut qc = consumer();
        let first = desired_status(&qc, &observed, at(10));
        qc.status = Some(first.clone());
        let second = desired_status(&qc, &observed, at(99));
        assert_eq!(
            first, second,
            "no churn: same observation, same status, same times"
        );
        assert_eq!(first.queue.as_ref().unwrap().name, "shop-orders");
        assert_eq!(
            get(&first, condition_type::WORKLOAD_READY).reason,
            "WaitingForQueue"
        );
    }

    #[test]
    fn events_are_for_status_changes_only() {
        let observed = Observed {
            provisioned: Some(provisioned()),
            queue_error: None,
            build_error: None,
            deployment: None,
            redrive: None,
            periodic_tasks: None,
        };
        let mut qc = consumer();
        let first = desired_status(&qc, &observed, at(10));
        let announced: Vec<String> = transitions(None, &first).into_iter().map(|t| t.2).collect();
        assert_eq!(announced, vec!["QueueProvisioned", "WaitingForQueue"]);
        qc.status = Some(first.clone());
        let again = desired_status(&qc, &observed, at(20));
        assert!(transitions(Some(&first), &again).is_empty());
    }
}

//! Moving a QueueConsumer's dead-letter queue back to its queue when the user asks, with the
//! `ferry.dev/redrive` annotation, once the worker is fixed.
//!
//! A redrive can hold more messages than one reconcile should spend time on, so it runs in
//! passes of at most [`PASS_BUDGET`], one per reconcile, and `status.redrive` carries its
//! progress from one to the next (an operator restart carries on from there). What to do
//! next is decided by the pure [`next_step`] and [`after_pass`]; this module's only call
//! out is the pass itself, in `ferry_queues::redrive`.

use std::time::Duration;

use ferry_crds::{QueueConsumer, REDRIVE_ANNOTATION, RedrivePhase, RedriveStatus};
use ferry_queues::provision::ProvisionedQueue;
use ferry_queues::redrive::{RedrivePass, RedriveRequest, redrive};
use ferry_queues::{QueueError, QueueErrorKind};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::last_written::LastWritten;
use super::{Context, is_terminal, queue_request, status};
use crate::builders::QUEUE_CONSUMER_LABEL;

/// How long one pass may move messages: long enough for thousands, short enough that the
/// reconcile's other work and a removed annotation are seen again soon.
const PASS_BUDGET: Duration = Duration::from_secs(15);
/// The next pass of a redrive that is not finished.
const NEXT_PASS: Duration = Duration::from_secs(1);
/// After a pass that failed on something that may pass (throttling, an outage).
const RETRY_PASS: Duration = Duration::from_secs(10);
/// How often a redrive waiting for the worker's rollout looks again.
const HOLD_RECHECK: Duration = Duration::from_secs(2);

/// The `status.redrive` each object's last pass wrote.
pub type LastPasses = LastWritten<RedriveStatus>;

/// What the annotation and the last recorded redrive call for.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// Nothing: no annotation, or its value was redriven already.
    Idle,
    /// A pass of this request, continuing from `so_far` when it is already running.
    Pass {
        request: &'a str,
        so_far: Option<&'a RedriveStatus>,
    },
    /// The annotation was removed while a redrive ran: record that it stopped.
    Stop(RedriveStatus),
}

/// Pure: the step for this annotation value and the recorded redrive.
pub fn next_step<'a>(
    annotation: Option<&'a str>,
    recorded: Option<&'a RedriveStatus>,
    now: &Time,
) -> Step<'a> {
    let running = recorded.filter(|r| r.phase == RedrivePhase::Running);
    match annotation.map(str::trim).filter(|v| !v.is_empty()) {
        None => match running {
            Some(running) => Step::Stop(RedriveStatus {
                phase: RedrivePhase::Stopped,
                completed_at: Some(now.clone()),
                message: format!(
                    "stopped because the {REDRIVE_ANNOTATION} annotation was removed, after moving {} message(s); the rest stay in the dead-letter queue",
                    running.moved
                ),
                ..running.clone()
            }),
            None => Step::Idle,
        },
        Some(request) => match recorded {
            Some(r) if r.request == request && r.phase != RedrivePhase::Running => Step::Idle,
            Some(r) if r.request == request => Step::Pass {
                request,
                so_far: Some(r),
            },
            _ => Step::Pass {
                request,
                so_far: None,
            },
        },
    }
}

/// Pure: the redrive's status after a pass, from what it had moved before. `dead_letter` and
/// `queue` are the short names the message shows.
pub fn after_pass(
    request: &str,
    so_far: Option<&RedriveStatus>,
    pass: Result<RedrivePass, &QueueError>,
    now: &Time,
    (dead_letter, queue): (&str, &str),
) -> RedriveStatus {
    let started_at = so_far.map_or_else(|| now.clone(), |r| r.started_at.clone());
    let before = so_far.map_or(0, |r| r.moved);
    let failed_before = so_far.map_or(0, |r| r.failed_again);
    let record = |phase, moved: i64, failed_again: i64, message: String| RedriveStatus {
        request: request.to_string(),
        phase,
        moved,
        failed_again,
        started_at: started_at.clone(),
        completed_at: (phase != RedrivePhase::Running).then(|| now.clone()),
        message,
    };
    match pass {
        Ok(pass) => {
            let moved = before + to_count(pass.moved);
            // A message left in the dead-letter queue is handed back at the end of each pass
            // and met again by the next one, so passes must not add these up.
            let failed_again = failed_before.max(to_count(pass.left_again));
            if !pass.finished {
                return record(
                    RedrivePhase::Running,
                    moved,
                    failed_again,
                    format!(
                        "moving the messages of dead-letter queue {dead_letter} back to {queue}: {moved} so far"
                    ),
                );
            }
            let mut message = format!(
                "moved {moved} message(s) from dead-letter queue {dead_letter} back to {queue}"
            );
            if failed_again > 0 {
                message.push_str(&format!(
                    "; {failed_again} of them failed again and stay in the dead-letter queue: see why before a new redrive"
                ));
            }
            record(RedrivePhase::Succeeded, moved, failed_again, message)
        }
        Err(error) if is_terminal(error.kind) => record(
            RedrivePhase::Failed,
            before,
            failed_before,
            format!(
                "stopped after moving {before} message(s): {error}; {}, then set a new {REDRIVE_ANNOTATION} value",
                fix_for(error.kind)
            ),
        ),
        Err(error) => record(
            RedrivePhase::Running,
            before,
            failed_before,
            format!(
                "moved {before} message(s) so far; the last pass failed ({error}) and is retried"
            ),
        ),
    }
}

/// Pure: why a redrive must not start yet, or `None`. A redrive is usually asked for right
/// after a fix is deployed, and until the rollout is over a pod of the old worker can take
/// the messages it moves and fail them again: one that is still stopping delivers what its
/// last long poll brought (a drain hands nothing back, so as not to spend a delivery
/// attempt). So the first pass waits until the worker Deployment has rolled out its latest
/// template and none of the consumer's pods is terminating.
pub fn hold_reason(deployment: Option<&Deployment>, pods: &[Pod]) -> Option<String> {
    let mut reasons = Vec::new();
    if let Some(deployment) = deployment {
        let status = deployment.status.clone().unwrap_or_default();
        let generation = deployment.metadata.generation.unwrap_or(0);
        let replicas = status.replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        if status.observed_generation.unwrap_or(0) < generation {
            reasons.push("its latest change is not rolled out yet".to_string());
        } else if updated < replicas {
            reasons.push(format!(
                "{} of its {replicas} pod(s) run an older template",
                replicas - updated
            ));
        }
    }
    let stopping = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .count();
    if stopping > 0 {
        reasons.push(format!("{stopping} pod(s) are still stopping"));
    }
    (!reasons.is_empty()).then(|| {
        format!(
            "{WAITING_FOR_ROLLOUT} ({}): a pod of the old worker would fail the messages again",
            reasons.join("; ")
        )
    })
}

/// How the message of a redrive that waits to start begins.
const WAITING_FOR_ROLLOUT: &str = "waiting for the worker's rollout before moving anything";

/// Pure: the status of a redrive that waits to start (see [`hold_reason`]).
fn held(
    request: &str,
    so_far: Option<&RedriveStatus>,
    now: &Time,
    reason: String,
) -> RedriveStatus {
    RedriveStatus {
        request: request.to_string(),
        phase: RedrivePhase::Running,
        moved: 0,
        failed_again: 0,
        started_at: so_far.map_or_else(|| now.clone(), |r| r.started_at.clone()),
        completed_at: None,
        message: reason,
    }
}

fn fix_for(kind: QueueErrorKind) -> &'static str {
    match kind {
        QueueErrorKind::PermissionDenied => {
            "give the operator's cloud identity the permissions to receive and delete on the dead-letter queue and to send to the queue (docs/install.md)"
        }
        QueueErrorKind::NotFound => "check that the queue and its dead-letter queue exist",
        _ => "fix the cause",
    }
}

fn to_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs the step the annotation calls for: the new `status.redrive`, and when the next pass
/// is due, or `None` when there is nothing to do.
pub async fn reconcile(
    qc: &QueueConsumer,
    ctx: &Context,
    queue: &ProvisionedQueue,
    deployment: Option<&Deployment>,
) -> Option<(RedriveStatus, Option<Duration>)> {
    let now = status::now();
    // This process's own last pass is never older than what the watch cache shows.
    let remembered = ctx.redrives.get(qc);
    let recorded = remembered
        .as_ref()
        .or_else(|| qc.status.as_ref().and_then(|s| s.redrive.as_ref()));
    let annotation = qc.annotations().get(REDRIVE_ANNOTATION).map(String::as_str);
    let (request, so_far) = match next_step(annotation, recorded, &now) {
        // Nothing to do, but what this process wrote last is written again. The status is
        // built from the watch cache, which may not show that write yet: a reconcile in that
        // window with anything else to write (the replicas, a condition) would put the older
        // redrive status back, a finished redrive would read Running for good, and nothing
        // would correct it, since this step is idle.
        Step::Idle => return remembered.map(|last| (last, None)),
        Step::Stop(stopped) => {
            announce(qc, ctx, &stopped).await;
            ctx.redrives.record(qc, stopped.clone());
            return Some((stopped, None));
        }
        Step::Pass { request, so_far } => (request, so_far),
    };
    let nothing_moved_yet = so_far.is_none_or(|r| r.moved == 0 && r.failed_again == 0);
    // Only before anything is moved: a started redrive goes on whatever the pods do.
    let hold = if nothing_moved_yet {
        hold_reason(deployment, &worker_pods(qc, ctx).await)
    } else {
        None
    };
    if let Some(reason) = hold {
        let waiting = held(request, so_far, &now, reason);
        if so_far.is_none_or(|r| r.message != waiting.message) {
            announce(qc, ctx, &waiting).await;
        }
        ctx.redrives.record(qc, waiting.clone());
        return Some((waiting, Some(HOLD_RECHECK)));
    }
    let cloud = queue_request(qc, &ctx.cloud);
    let pass = redrive(&RedriveRequest {
        provider: cloud.provider,
        endpoint: cloud.endpoint.as_deref(),
        dead_letter: &queue.dead_letter,
        destination: &queue.publish_to,
        request,
        budget: PASS_BUDGET,
    })
    .await;
    match &pass {
        Ok(pass) => ctx
            .metrics
            .redriven_messages
            .with_label_values(&[
                qc.namespace().unwrap_or_else(|| "default".into()).as_str(),
                qc.name_any().as_str(),
            ])
            .inc_by(pass.moved),
        Err(error) => {
            tracing::warn!(name = %qc.name_any(), request, "redrive pass failed: {error}")
        }
    }
    let names = (
        status::short(&queue.dead_letter),
        status::short(&queue.queue),
    );
    let next = after_pass(
        request,
        so_far,
        pass.as_ref().copied(),
        &now,
        (&names.0, &names.1),
    );
    let first_pass = so_far.is_none_or(|r| r.message.starts_with(WAITING_FOR_ROLLOUT));
    if first_pass || next.phase != RedrivePhase::Running {
        announce(qc, ctx, &next).await;
    }
    ctx.redrives.record(qc, next.clone());
    let due = match (&next.phase, &pass) {
        (RedrivePhase::Running, Ok(_)) => Some(NEXT_PASS),
        (RedrivePhase::Running, Err(_)) => Some(RETRY_PASS),
        _ => None,
    };
    Some((next, due))
}

/// The consumer's worker pods. A failed list holds nothing back: the pods are only looked at
/// to avoid a needless second redrive, and the redrive counts what fails again either way.
async fn worker_pods(qc: &QueueConsumer, ctx: &Context) -> Vec<Pod> {
    let namespace = qc.namespace().unwrap_or_else(|| "default".into());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{QUEUE_CONSUMER_LABEL}={}", qc.name_any());
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(name = %qc.name_any(), "listing the worker pods before a redrive: {error}");
            Vec::new()
        }
    }
}

/// An Event when a redrive starts and when it ends, whichever way.
async fn announce(qc: &QueueConsumer, ctx: &Context, redrive: &RedriveStatus) {
    let (warning, reason) = match redrive.phase {
        RedrivePhase::Running => (false, "RedriveStarted"),
        RedrivePhase::Succeeded => (false, "Redriven"),
        RedrivePhase::Failed => (true, "RedriveFailed"),
        RedrivePhase::Stopped => (true, "RedriveStopped"),
    };
    status::publish_event(qc, ctx, warning, reason, "Redrive", &redrive.message).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn recorded(request: &str, phase: RedrivePhase, moved: i64) -> RedriveStatus {
        RedriveStatus {
            request: request.into(),
            phase,
            moved,
            failed_again: 0,
            started_at: at(100),
            completed_at: None,
            message: String::new(),
        }
    }

    const NAMES: (&str, &str) = ("orders-dlq", "orders");

    #[test]
    fn each_new_annotation_value_is_one_redrive() {
        let now = at(200);
        assert_eq!(next_step(None, None, &now), Step::Idle);
        assert_eq!(next_step(Some("  "), None, &now), Step::Idle);
        assert_eq!(
            next_step(Some("1"), None, &now),
            Step::Pass {
                request: "1",
                so_far: None
            }
        );
        let done = recorded("1", RedrivePhase::Succeeded, 7);
        assert_eq!(next_step(Some("1"), Some(&done), &now), Step::Idle);
        assert_eq!(
            next_step(Some("2"), Some(&done), &now),
            Step::Pass {
                request: "2",
                so_far: None
            }
        );
        let failed = recorded("1", RedrivePhase::Failed, 3);
        assert_eq!(next_step(Some("1"), Some(&failed), &now), Step::Idle);
    }

    #[test]
    fn a_running_redrive_continues_and_stops_when_the_annotation_goes() {
        let now = at(200);
        let running = recorded("1", RedrivePhase::Running, 40);
        assert_eq!(
            next_step(Some("1"), Some(&running), &now),
            Step::Pass {
                request: "1",
                so_far: Some(&running)
            }
        );
        let Step::Stop(stopped) = next_step(None, Some(&running), &now) else {
            panic!("a removed annotation stops a running redrive");
        };
        assert_eq!(stopped.phase, RedrivePhase::Stopped);
        assert_eq!(stopped.moved, 40);
        assert_eq!(stopped.completed_at, Some(now));
        assert!(
            stopped.message.contains("after moving 40"),
            "{}",
            stopped.message
        );
    }

    #[test]
    fn passes_add_up_until_nothing_is_left() {
        let first = after_pass(
            "1",
            None,
            Ok(RedrivePass {
                moved: 500,
                left_again: 0,
                finished: false,
            }),
            &at(200),
            NAMES,
        );
        assert_eq!(first.phase, RedrivePhase::Running);
        assert_eq!((first.moved, first.started_at.clone()), (500, at(200)));
        assert_eq!(first.completed_at, None);
        let last = after_pass(
            "1",
            Some(&first),
            Ok(RedrivePass {
                moved: 20,
                left_again: 2,
                finished: true,
            }),
            &at(216),
            NAMES,
        );
        assert_eq!(last.phase, RedrivePhase::Succeeded);
        assert_eq!((last.moved, last.failed_again), (520, 2));
        assert_eq!(last.started_at, at(200));
        assert_eq!(last.completed_at, Some(at(216)));
        assert!(
            last.message.starts_with("moved 520 message(s) from dead-letter queue orders-dlq back to orders; 2 of them failed again"),
            "{}",
            last.message
        );
    }

    #[test]
    fn messages_met_again_in_later_passes_are_not_counted_twice() {
        let pass = |left_again| RedrivePass {
            moved: 0,
            left_again,
            finished: false,
        };
        let first = after_pass("1", None, Ok(pass(3)), &at(200), NAMES);
        let second = after_pass("1", Some(&first), Ok(pass(3)), &at(216), NAMES);
        assert_eq!(second.failed_again, 3);
    }

    #[test]
    fn errors_that_need_a_fix_fail_the_redrive_and_others_retry() {
        let running = recorded("1", RedrivePhase::Running, 40);
        let denied = QueueError::new(
            "ReceiveMessage",
            QueueErrorKind::PermissionDenied,
            "not authorized",
        );
        let failed = after_pass("1", Some(&running), Err(&denied), &at(300), NAMES);
        assert_eq!(failed.phase, RedrivePhase::Failed);
        assert_eq!(failed.moved, 40);
        assert_eq!(failed.completed_at, Some(at(300)));
        assert!(
            failed.message.contains("permissions to receive and delete"),
            "{}",
            failed.message
        );
        assert!(
            failed.message.contains("set a new ferry.dev/redrive value"),
            "{}",
            failed.message
        );
        let throttled = QueueError::new("SendMessageBatch", QueueErrorKind::Throttled, "slow down");
        let retried = after_pass("1", Some(&running), Err(&throttled), &at(300), NAMES);
        assert_eq!(retried.phase, RedrivePhase::Running);
        assert_eq!(retried.completed_at, None);
        assert!(
            retried.message.contains("is retried"),
            "{}",
            retried.message
        );
    }

    #[test]
    fn the_last_pass_is_remembered_for_the_same_object_only() {
        let object = |uid: &str| {
            let mut qc: QueueConsumer = serde_json::from_value(serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "QueueConsumer",
                "metadata": {"name": "orders", "namespace": "shop", "uid": uid},
                "spec": {"queue": {"provider": "sqs"},
                         "worker": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}
            }))
            .unwrap();
            qc.metadata.uid = Some(uid.into());
            qc
        };
        let passes = LastPasses::default();
        let running = recorded("1", RedrivePhase::Running, 40);
        passes.record(&object("a"), running.clone());
        assert_eq!(passes.get(&object("a")), Some(running));
        assert_eq!(
            passes.get(&object("b")),
            None,
            "a recreated object starts afresh"
        );
        passes.forget(&object("a"));
        assert_eq!(passes.get(&object("a")), None);
    }

    fn deployment(generation: i64, observed: i64, replicas: i32, updated: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "generation": generation},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated}
        }))
        .unwrap()
    }

    fn pod(stopping: bool) -> Pod {
        let mut metadata = serde_json::json!({"name": "orders-worker-abc"});
        if stopping {
            metadata["deletionTimestamp"] = "2026-12-06T00:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({ "metadata": metadata })).unwrap()
    }

    #[test]
    fn a_redrive_waits_until_no_pod_of_the_old_worker_is_left() {
        let rolled_out = deployment(3, 3, 2, 2);
        assert_eq!(
            hold_reason(Some(&rolled_out), &[pod(false), pod(false)]),
            None
        );
        assert_eq!(
            hold_reason(None, &[]),
            None,
            "no workload: nothing to protect"
        );
        assert_eq!(
            hold_reason(Some(&deployment(0, 0, 0, 0)), &[]),
            None,
            "scaled to zero, nothing stopping"
        );

        let not_seen = hold_reason(Some(&deployment(4, 3, 2, 2)), &[]).unwrap();
        assert!(not_seen.starts_with(WAITING_FOR_ROLLOUT), "{not_seen}");
        assert!(not_seen.contains("not rolled out yet"), "{not_seen}");

        let half = hold_reason(Some(&deployment(4, 4, 3, 1)), &[]).unwrap();
        assert!(
            half.contains("2 of its 3 pod(s) run an older template"),
            "{half}"
        );

        let stopping = hold_reason(Some(&rolled_out), &[pod(false), pod(true), pod(true)]).unwrap();
        assert!(
            stopping.contains("2 pod(s) are still stopping"),
            "{stopping}"
        );
        assert!(
            stopping.ends_with("would fail the messages again"),
            "{stopping}"
        );
    }

    #[test]
    fn a_waiting_redrive_keeps_its_start_and_has_moved_nothing() {
        let first = held("r1", None, &at(100), "waiting".into());
        assert_eq!(first.phase, RedrivePhase::Running);
        assert_eq!((first.moved, first.failed_again), (0, 0));
        assert_eq!(first.started_at, at(100));
        assert_eq!(first.completed_at, None);
        let later = held("r1", Some(&first), &at(130), "waiting".into());
        assert_eq!(later, first, "no status churn while it waits");
    }
}

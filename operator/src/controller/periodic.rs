//! Periodic tasks (`spec.periodicTasks`, Elastic Beanstalk's `cron.yaml`): at each tick of a
//! task's schedule, one message to the queue, which the sidecar delivers to the task's path.
//!
//! Going through the queue rather than calling the worker means a tick is retried and
//! dead-lettered like any message, wakes a consumer scaled to zero, and is sent once however
//! many pods run (only the elected operator sends). `status.periodicTasks` records the next
//! tick of each task, so an operator restart neither repeats a tick nor forgets one: a tick
//! missed while no operator ran is still sent within the task's `startingDeadlineSeconds`.
//! What to do is decided by the pure [`plan`] and [`after_send`]; the send is this module's
//! only call out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ferry_crds::{
    PeriodicTask, PeriodicTaskStatus, QueueConsumer, RUN_TASK_ANNOTATION, task_to_run,
};
use ferry_queues::QueueError;
use ferry_queues::model::{fifo_id, periodic_task};
use ferry_queues::provision::ProvisionedQueue;
use ferry_queues::provision::{OutgoingMessage, publish};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::last_written::LastWritten;
use super::{Context, queue_request, status};

/// How soon a tick whose message could not be sent is tried again (within its deadline).
const RETRY_SEND: Duration = Duration::from_secs(5);

/// The `status.periodicTasks` each object's last reconcile computed: the next reconcile may
/// start before the watch cache shows that write, and must not send a tick twice.
pub type LastTicks = LastWritten<Vec<PeriodicTaskStatus>>;

/// The `ferry.dev/run-task` value each object was last warned about.
pub type RefusedRuns = LastWritten<String>;

/// Parses a schedule as `cron.yaml` writes it: five fields or a macro. Seconds and
/// years, which some cron dialects add, are refused: the CRD's rule already does, and a
/// schedule that means something else here than where it was written must not run.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule.trim())
        .map_err(|e| e.to_string())
}

/// A task's schedule in its time zone: the ticks it names, as instants.
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// The task's `schedule` and `timeZone`, or a sentence saying which field to fix.
    pub fn of(task: &PeriodicTask) -> Result<Self, String> {
        let cron = parse_schedule(&task.schedule).map_err(|error| {
            format!(
                "schedule `{}` is not valid: {error}; fix spec.periodicTasks[{}].schedule",
                task.schedule, task.name
            )
        })?;
        let zone = match task.time_zone.as_deref() {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                format!(
                    "time zone `{name}` is not an IANA time zone name this operator knows; fix spec.periodicTasks[{}].timeZone",
                    task.name
                )
            })?,
        };
        Ok(Self { cron, zone })
    }

    /// The first tick after `at`.
    pub fn next_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc))
    }

    /// The last tick at or before `at`.
    ///
    /// The backward search can land on an instant that is no tick (the last second before a
    /// daylight-saving gap, for a task at a fixed time inside it), so its answer is only a
    /// starting point: the ticks are those the forward search names.
    pub fn latest_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let second = chrono::Duration::seconds(1);
        let mut before = at;
        for _ in 0..3 {
            let back = self
                .cron
                .find_previous_occurrence(&before.with_timezone(&self.zone), true)
                .ok()?
                .with_timezone(&Utc);
            let mut latest = None;
            let mut next = self.next_after(back - second);
            while let Some(tick) = next.filter(|t| *t <= at) {
                latest = Some(tick);
                next = self.next_after(tick);
            }
            if latest.is_some() {
                return latest;
            }
            before = back - second;
        }
        None
    }
}

/// What to do for one task now.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// The tick to send a message for, now.
    pub send: Option<DateTime<Utc>>,
    /// The task's status without a send (or when the send fails).
    pub status: PeriodicTaskStatus,
    /// A tick that is skipped because its deadline passed before it could be sent.
    pub skipped: Option<DateTime<Utc>>,
    /// When to look again: the next tick, or the retry of a tick not sent yet.
    pub next_look: Option<DateTime<Utc>>,
}

/// Pure: what `task` calls for at `now`, given what its status recorded last.
///
/// A task first seen (or whose schedule changed) starts from its next tick; nothing before
/// it is sent. A tick is sent once `now` reaches it; if several passed unseen (no operator
/// ran), only the latest is sent, and only within `startingDeadlineSeconds` of it.
pub fn plan(
    task: &PeriodicTask,
    recorded: Option<&PeriodicTaskStatus>,
    now: DateTime<Utc>,
) -> Plan {
    // Earlier sends stay visible whatever changed since.
    let history = recorded.filter(|r| r.name == task.name);
    let entry = |next: Option<DateTime<Utc>>, message: String| PeriodicTaskStatus {
        name: task.name.clone(),
        schedule: task.schedule.clone(),
        time_zone: task.time_zone.clone(),
        last_schedule_time: history.and_then(|r| r.last_schedule_time.clone()),
        last_message_id: history.and_then(|r| r.last_message_id.clone()),
        next_schedule_time: next.map(to_time),
        last_skipped_time: history.and_then(|r| r.last_skipped_time.clone()),
        last_run_request: history.and_then(|r| r.last_run_request.clone()),
        last_run_time: history.and_then(|r| r.last_run_time.clone()),
        message,
    };
    let idle = |status: PeriodicTaskStatus, next_look| Plan {
        send: None,
        status,
        skipped: None,
        next_look,
    };
    let schedule = match Schedule::of(task) {
        Ok(schedule) => schedule,
        Err(message) => return idle(entry(None, message), None),
    };
    let next_after = |at: DateTime<Utc>| schedule.next_after(at);
    // The tick this schedule waits for, as recorded; none for a task first seen or whose
    // schedule or time zone changed.
    let recorded = history
        .filter(|r| r.schedule == task.schedule && r.time_zone == task.time_zone)
        .and_then(|r| {
            let due = from_time(r.next_schedule_time.as_ref()?);
            Some((r, due))
        });
    let Some((recorded, due)) = recorded else {
        let next = next_after(now);
        let message = if next.is_none() {
            format!("schedule `{}` has no tick to come", task.schedule)
        } else {
            String::new()
        };
        return idle(entry(next, message), next);
    };
    if now < due {
        return idle(recorded.clone(), Some(due));
    }
    // The latest tick that has come: `due` itself unless later ones passed unseen too.
    let tick = schedule
        .latest_until(now)
        .filter(|t| *t >= due)
        .unwrap_or(due);
    let deadline = chrono::Duration::seconds(i64::from(task.starting_deadline_seconds()));
    if now - tick > deadline {
        let next = next_after(now);
        let message = format!(
            "the tick at {} was skipped: it could not be sent within startingDeadlineSeconds ({}s) (was the operator running?)",
            scheduled_at(tick),
            deadline.num_seconds()
        );
        return Plan {
            send: None,
            status: PeriodicTaskStatus {
                last_skipped_time: Some(to_time(tick)),
                ..entry(next, message)
            },
            skipped: Some(tick),
            next_look: next,
        };
    }
    Plan {
        send: Some(tick),
        status: recorded.clone(),
        skipped: None,
        next_look: Some(tick + deadline),
    }
}

/// What suspends a task's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    /// `spec.suspend`: the whole consumer.
    Consumer,
    /// `spec.periodicTasks[].suspend`: this task alone.
    Task,
}

impl Suspension {
    /// What suspends `task` under `qc`, if anything; the consumer's suspension is named first,
    /// since ending the task's alone would not resume it.
    pub fn of(qc: &QueueConsumer, task: &PeriodicTask) -> Option<Self> {
        if qc.spec.suspend {
            Some(Self::Consumer)
        } else if task.suspend {
            Some(Self::Task)
        } else {
            None
        }
    }
}

/// Pure: what `task` calls for while it is suspended: no tick. The next tick is forgotten
/// rather than kept due, so that resuming starts from the task's next tick instead of sending
/// one that passed during the suspension, or reporting it skipped.
pub fn suspended(
    task: &PeriodicTask,
    recorded: Option<&PeriodicTaskStatus>,
    by: Suspension,
) -> Plan {
    let history = recorded.filter(|r| r.name == task.name);
    let field = match by {
        Suspension::Consumer => "spec.suspend".to_string(),
        Suspension::Task => format!("spec.periodicTasks[{}].suspend", task.name),
    };
    Plan {
        send: None,
        status: PeriodicTaskStatus {
            name: task.name.clone(),
            schedule: task.schedule.clone(),
            time_zone: task.time_zone.clone(),
            next_schedule_time: None,
            message: format!(
                "no tick is sent while {field} is true; the task starts again from its next tick when it is false"
            ),
            ..history.cloned().unwrap_or_default()
        },
        skipped: None,
        next_look: None,
    }
}

/// Pure: the task's status after sending the message for `tick` (or failing to).
pub fn after_send(
    task: &PeriodicTask,
    before: &PeriodicTaskStatus,
    tick: DateTime<Utc>,
    sent: Result<String, &QueueError>,
    now: DateTime<Utc>,
) -> PeriodicTaskStatus {
    match sent {
        Ok(message_id) => {
            let next = Schedule::of(task)
                .ok()
                .and_then(|schedule| schedule.next_after(now));
            PeriodicTaskStatus {
                name: task.name.clone(),
                schedule: task.schedule.clone(),
                time_zone: task.time_zone.clone(),
                last_schedule_time: Some(to_time(tick)),
                last_message_id: Some(message_id),
                next_schedule_time: next.map(to_time),
                message: String::new(),
                ..before.clone()
            }
        }
        Err(error) => {
            let deadline =
                tick + chrono::Duration::seconds(i64::from(task.starting_deadline_seconds()));
            PeriodicTaskStatus {
                message: format!(
                    "could not send the tick at {}: {error}; retrying until {}",
                    scheduled_at(tick),
                    scheduled_at(deadline)
                ),
                ..before.clone()
            }
        }
    }
}

/// Pure: the task's status after sending its message on the `ferry.dev/run-task` value
/// `request` (or failing to). A failed run is tried again while the annotation holds the
/// same value.
pub fn after_run(
    before: &PeriodicTaskStatus,
    request: &str,
    sent: Result<String, &QueueError>,
    now: DateTime<Utc>,
) -> PeriodicTaskStatus {
    match sent {
        Ok(message_id) => PeriodicTaskStatus {
            last_run_request: Some(request.to_string()),
            last_run_time: Some(to_time(now)),
            message: format!("ran on {RUN_TASK_ANNOTATION}={request}: message {message_id}"),
            ..before.clone()
        },
        Err(error) => PeriodicTaskStatus {
            message: format!(
                "could not send the run asked by {RUN_TASK_ANNOTATION}={request}: {error}; retrying every {}s while the annotation keeps this value",
                RETRY_SEND.as_secs()
            ),
            ..before.clone()
        },
    }
}

/// The message of a run out of schedule: the task's message, scheduled at `now`; on a FIFO
/// queue deduplicated per request rather than per tick.
pub fn run_message(
    task: &PeriodicTask,
    now: DateTime<Utc>,
    request: &str,
    fifo: bool,
) -> OutgoingMessage {
    OutgoingMessage {
        deduplication_id: fifo.then(|| fifo_id(&task.name, &format!("run:{request}"))),
        ..task_message(task, now, fifo)
    }
}

/// The message for one tick, as Elastic Beanstalk's worker daemon sends it.
pub fn task_message(task: &PeriodicTask, tick: DateTime<Utc>, fifo: bool) -> OutgoingMessage {
    OutgoingMessage {
        body: periodic_task::BODY.as_bytes().to_vec(),
        attributes: vec![
            (periodic_task::NAME_ATTRIBUTE.into(), task.name.clone()),
            (periodic_task::PATH_ATTRIBUTE.into(), task.url.clone()),
            (
                periodic_task::SCHEDULED_AT_ATTRIBUTE.into(),
                scheduled_at(tick),
            ),
        ],
        // A FIFO queue needs a group; the task's own keeps its ticks in order. Its
        // deduplication id makes a tick sent twice (an operator that stopped between the
        // send and the status write) arrive once, within SQS's five-minute window. Both are
        // made of the task's name, which may hold characters SQS refuses in them (spaces).
        ordering_group: fifo.then(|| fifo_id(&task.name, "")),
        deduplication_id: fifo.then(|| fifo_id(&task.name, &tick.timestamp().to_string())),
    }
}

/// `2015-03-05 10:00:00 UTC`: how Elastic Beanstalk writes a tick in
/// `beanstalk.sqsd.scheduled_time`, which workers receive in `X-Aws-Sqsd-Scheduled-At`.
pub fn scheduled_at(tick: DateTime<Utc>) -> String {
    tick.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn to_time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(at.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn from_time(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(time.0.as_second(), 0).unwrap_or_default()
}

/// Sends what is due for every task of `qc` and returns their statuses (in spec order) and
/// how long until one needs looking at again.
pub async fn reconcile(
    qc: &QueueConsumer,
    ctx: &Context,
    queue: &ProvisionedQueue,
) -> (Vec<PeriodicTaskStatus>, Option<Duration>) {
    let now = DateTime::from_timestamp(status::now().0.as_second(), 0).unwrap_or_default();
    let remembered = ctx.periodic.get(qc);
    let recorded = remembered.unwrap_or_else(|| {
        qc.status
            .as_ref()
            .map(|s| s.periodic_tasks.clone())
            .unwrap_or_default()
    });
    let cloud = queue_request(qc, &ctx.cloud);
    // One message to the queue; its id, as the worker will receive it.
    let send = async |message: OutgoingMessage| {
        publish(
            cloud.provider,
            cloud.endpoint.as_deref(),
            &queue.publish_to,
            vec![message],
        )
        .await
        .map(|ids| ids.into_iter().next().unwrap_or_default())
    };
    let fifo = queue.publish_to.ends_with(".fifo");
    let run_request = qc
        .annotations()
        .get(RUN_TASK_ANNOTATION)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let run_target = run_request
        .as_deref()
        .and_then(|v| task_to_run(v, &qc.spec.periodic_tasks))
        .map(|t| t.name.clone());
    if let Some(request) = &run_request
        && run_target.is_none()
        && ctx.run_refused.get(qc).as_ref() != Some(request)
    {
        let message = format!(
            "{RUN_TASK_ANNOTATION}={request} names no task in spec.periodicTasks; set it to a task's name (then optionally @ and anything new)"
        );
        tracing::warn!(name = %qc.name_any(), "{message}");
        status::publish_event(
            qc,
            ctx,
            true,
            "PeriodicTaskRunRefused",
            "RunPeriodicTask",
            &message,
        )
        .await;
        ctx.run_refused.record(qc, request.clone());
    }
    let mut statuses = Vec::with_capacity(qc.spec.periodic_tasks.len());
    let mut next_look: Option<DateTime<Utc>> = None;
    for task in &qc.spec.periodic_tasks {
        let previous = recorded.iter().find(|r| r.name == task.name);
        let plan = match Suspension::of(qc, task) {
            Some(by) => suspended(task, previous, by),
            None => plan(task, previous, now),
        };
        let mut look = plan.next_look;
        let mut entry = plan.status;
        if let Some(skipped) = plan.skipped {
            tracing::warn!(name = %qc.name_any(), task = %task.name, tick = %skipped, "periodic task tick skipped");
            status::publish_event(
                qc,
                ctx,
                true,
                "PeriodicTaskSkipped",
                "SendPeriodicTask",
                &entry.message,
            )
            .await;
        }
        if let Some(tick) = plan.send {
            let sent = send(task_message(task, tick, fifo)).await;
            let failed = sent.is_err();
            entry = after_send(task, &entry, tick, sent.as_ref().cloned(), now);
            if failed {
                tracing::warn!(name = %qc.name_any(), task = %task.name, "{}", entry.message);
                if previous.is_none_or(|p| p.message != entry.message) {
                    status::publish_event(
                        qc,
                        ctx,
                        true,
                        "PeriodicTaskFailed",
                        "SendPeriodicTask",
                        &entry.message,
                    )
                    .await;
                }
                let retry = now + chrono::Duration::from_std(RETRY_SEND).unwrap_or_default();
                look = look.map(|deadline| deadline.min(retry)).or(Some(retry));
            } else {
                tracing::info!(name = %qc.name_any(), task = %task.name, tick = %tick, "periodic task sent");
                look = entry.next_schedule_time.as_ref().map(from_time);
            }
        }
        if let Some(request) = run_request
            .as_deref()
            .filter(|_| run_target.as_deref() == Some(task.name.as_str()))
            .filter(|r| entry.last_run_request.as_deref() != Some(*r))
        {
            let sent = send(run_message(task, now, request, fifo)).await;
            let failed = sent.is_err();
            entry = after_run(&entry, request, sent.as_ref().cloned(), now);
            status::publish_event(
                qc,
                ctx,
                failed,
                if failed {
                    "PeriodicTaskFailed"
                } else {
                    "PeriodicTaskRun"
                },
                "RunPeriodicTask",
                &entry.message,
            )
            .await;
            if failed {
                tracing::warn!(name = %qc.name_any(), task = %task.name, "{}", entry.message);
                let retry = now + chrono::Duration::from_std(RETRY_SEND).unwrap_or_default();
                look = look.map(|at| at.min(retry)).or(Some(retry));
            } else {
                tracing::info!(name = %qc.name_any(), task = %task.name, request, "periodic task run on request");
            }
        }
        if let Some(look) = look {
            next_look = Some(next_look.map_or(look, |n| n.min(look)));
        }
        statuses.push(entry);
    }
    ctx.periodic.record(qc, statuses.clone());
    ctx.metrics.record_periodic_tasks(
        &qc.namespace().unwrap_or_default(),
        &qc.name_any(),
        &statuses,
    );
    let due_in = next_look.map(|at| {
        (at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    });
    (statuses, due_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn task(schedule: &str) -> PeriodicTask {
        PeriodicTask {
            name: "cleanup".into(),
            url: "/tasks/cleanup".into(),
            schedule: schedule.into(),
            time_zone: None,
            starting_deadline_seconds: None,
            suspend: false,
        }
    }

    fn zoned(schedule: &str, zone: &str) -> PeriodicTask {
        PeriodicTask {
            time_zone: Some(zone.into()),
            ..task(schedule)
        }
    }

    /// The ticks of `task` after `from`, in UTC.
    fn ticks(task: &PeriodicTask, from: &str, count: usize) -> Vec<DateTime<Utc>> {
        let schedule = Schedule::of(task).unwrap();
        std::iter::successors(schedule.next_after(at(from)), |t| schedule.next_after(*t))
            .take(count)
            .collect()
    }

    #[test]
    fn a_time_zone_keeps_the_wall_clock_time_across_daylight_saving_changes() {
        let nightly = zoned("30 2 * * *", "Europe/Berlin");
        // Winter (UTC+1), summer (UTC+2).
        assert_eq!(
            ticks(&nightly, "2027-01-15T00:00:00Z", 1),
            [at("2027-01-15T01:30:00Z")]
        );
        assert_eq!(
            ticks(&nightly, "2027-07-15T00:00:00Z", 1),
            [at("2027-07-15T00:30:00Z")]
        );
        // 28 March 2027: 02:00 jumps to 03:00, so 02:30 never shows; the task runs once, at
        // 03:00 local.
        assert_eq!(
            ticks(&nightly, "2027-03-27T02:00:00Z", 2),
            [at("2027-03-28T01:00:00Z"), at("2027-03-29T00:30:00Z")]
        );
        // 31 October 2027: 03:00 goes back to 02:00, so 02:30 shows twice; the task runs at
        // the first only.
        assert_eq!(
            ticks(&nightly, "2027-10-30T02:00:00Z", 3),
            [
                at("2027-10-31T00:30:00Z"),
                at("2027-11-01T01:30:00Z"),
                at("2027-11-02T01:30:00Z")
            ]
        );
        // Ticks missed while no operator ran are found the same way, backwards.
        let schedule = Schedule::of(&nightly).unwrap();
        assert_eq!(
            schedule.latest_until(at("2027-01-17T01:40:00Z")),
            Some(at("2027-01-17T01:30:00Z"))
        );
        assert_eq!(
            schedule.latest_until(at("2027-03-28T01:10:00Z")),
            Some(at("2027-03-28T01:00:00Z"))
        );
        // An operator back after the skipped hour's tick sends that tick, not an instant
        // next to it.
        let recorded = plan(&nightly, None, at("2027-03-27T00:00:00Z")).status;
        assert_eq!(
            plan(&nightly, Some(&recorded), at("2027-03-28T01:02:00Z")).send,
            Some(at("2027-03-28T01:00:00Z"))
        );
        // A task every half hour runs at each half hour the clock shows, once: none in the
        // skipped hour, and in the repeated one only the first time (so an hour passes
        // between 02:30 summer time and 03:00 winter time).
        let half_hourly = zoned("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&half_hourly, "2027-03-28T00:00:00Z", 3),
            [
                at("2027-03-28T00:30:00Z"),
                at("2027-03-28T01:00:00Z"),
                at("2027-03-28T01:30:00Z")
            ]
        );
        assert_eq!(
            ticks(&half_hourly, "2027-10-30T23:45:00Z", 4),
            [
                at("2027-10-31T00:00:00Z"),
                at("2027-10-31T00:30:00Z"),
                at("2027-10-31T02:00:00Z"),
                at("2027-10-31T02:30:00Z")
            ]
        );
        // Half-hour offsets and days: Monday 09:00 in Kolkata is 03:30 UTC.
        assert_eq!(
            ticks(
                &zoned("0 9 * * MON", "Asia/Kolkata"),
                "2027-01-01T00:00:00Z",
                1
            ),
            [at("2027-01-04T03:30:00Z")]
        );
    }

    #[test]
    fn a_suspended_task_sends_nothing_and_resumes_from_its_next_tick() {
        let hourly = task("0 * * * *");
        let sent = sent(&hourly, "2026-03-05T10:00:00Z", "2026-03-05T10:00:01Z");
        let paused = suspended(&hourly, Some(&sent), Suspension::Consumer);
        assert_eq!(
            (paused.send, paused.skipped, paused.next_look),
            (None, None, None)
        );
        assert_eq!(paused.status.next_schedule_time, None);
        assert_eq!(paused.status.last_message_id.as_deref(), Some("m-1"));
        assert!(
            paused.status.message.contains("spec.suspend is true"),
            "{}",
            paused.status.message
        );
        // The same while it lasts: no status write per tick.
        assert_eq!(
            suspended(&hourly, Some(&paused.status), Suspension::Consumer),
            paused
        );
        // Resumed after three ticks passed: none of them is sent, none reported skipped.
        let resumed = plan(&hourly, Some(&paused.status), at("2026-03-05T13:20:00Z"));
        assert_eq!((resumed.send, resumed.skipped), (None, None));
        assert!(!resumed.status.latest_tick_skipped());
        assert_eq!(resumed.status.message, "");
        assert_eq!(
            resumed.status.next_schedule_time,
            Some(to_time(at("2026-03-05T14:00:00Z")))
        );
        // A task first seen while suspended is listed, with nothing to come yet.
        let new = suspended(&hourly, None, Suspension::Consumer);
        assert_eq!(new.status.name, "cleanup");
        assert_eq!(new.status.last_schedule_time, None);
    }

    /// `spec.periodicTasks[].suspend` stops that task alone, and says which field to change;
    /// the consumer's own suspension is named first, since it holds every task.
    #[test]
    fn a_task_suspended_on_its_own_sends_nothing_and_names_its_field() {
        let mut qc: QueueConsumer = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "QueueConsumer",
            "metadata": {"name": "orders"},
            "spec": {
                "queue": {"provider": "sqs"},
                "worker": {"spec": {"containers": [{"name": "w", "image": "w"}]}},
                "periodicTasks": [
                    {"name": "cleanup", "url": "/c", "schedule": "0 * * * *", "suspend": true},
                    {"name": "report", "url": "/r", "schedule": "0 * * * *"},
                ],
            },
        }))
        .unwrap();
        let (cleanup, report) = (
            qc.spec.periodic_tasks[0].clone(),
            qc.spec.periodic_tasks[1].clone(),
        );
        assert_eq!(Suspension::of(&qc, &cleanup), Some(Suspension::Task));
        assert_eq!(Suspension::of(&qc, &report), None, "the other task runs");
        let sent = sent(&cleanup, "2026-03-05T10:00:00Z", "2026-03-05T10:00:01Z");
        let paused = suspended(&cleanup, Some(&sent), Suspension::Task);
        assert_eq!((paused.send, paused.next_look), (None, None));
        assert_eq!(
            paused.status.message,
            "no tick is sent while spec.periodicTasks[cleanup].suspend is true; the task starts again from its next tick when it is false"
        );
        qc.spec.suspend = true;
        assert_eq!(Suspension::of(&qc, &cleanup), Some(Suspension::Consumer));
        assert_eq!(Suspension::of(&qc, &report), Some(Suspension::Consumer));
        // Written as in cron.yaml, without the field, a task is not suspended; false is not
        // written back.
        assert!(!report.suspend);
        assert!(!serde_json::to_string(&report).unwrap().contains("suspend"));
    }

    #[test]
    fn a_changed_time_zone_starts_again_and_an_unknown_one_says_what_to_fix() {
        let utc = task("0 3 * * *");
        let recorded = plan(&utc, None, at("2027-01-10T12:00:00Z")).status;
        assert_eq!(recorded.time_zone, None);
        let berlin = zoned("0 3 * * *", "Europe/Berlin");
        let moved = plan(&berlin, Some(&recorded), at("2027-01-11T02:30:00Z"));
        // 03:00 in Berlin (02:00 UTC) has passed today; the recorded UTC tick (03:00 UTC) is
        // not sent: the next tick is the zone's own, tomorrow.
        assert_eq!(moved.send, None);
        assert_eq!(moved.status.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(
            moved.status.next_schedule_time,
            Some(to_time(at("2027-01-12T02:00:00Z")))
        );
        let due = plan(&berlin, Some(&moved.status), at("2027-01-12T02:00:00Z"));
        assert_eq!(due.send, Some(at("2027-01-12T02:00:00Z")));
        let sent = after_send(
            &berlin,
            &due.status,
            at("2027-01-12T02:00:00Z"),
            Ok("m-1".into()),
            at("2027-01-12T02:00:01Z"),
        );
        assert_eq!(
            sent.next_schedule_time,
            Some(to_time(at("2027-01-13T02:00:00Z")))
        );
        let unknown = plan(
            &zoned("0 3 * * *", "Europe/Berln"),
            None,
            at("2027-01-10T12:00:00Z"),
        );
        assert_eq!((unknown.send, unknown.next_look), (None, None));
        assert!(
            unknown
                .status
                .message
                .contains("time zone `Europe/Berln` is not an IANA time zone name")
                && unknown
                    .status
                    .message
                    .contains("fix spec.periodicTasks[cleanup].timeZone"),
            "{}",
            unknown.status.message
        );
    }

    fn sent(task: &PeriodicTask, tick: &str, now: &str) -> PeriodicTaskStatus {
        let first = plan(task, None, at("2026-01-01T00:00:00Z")).status;
        after_send(task, &first, at(tick), Ok("m-1".into()), at(now))
    }

    #[test]
    fn a_new_task_waits_for_its_next_tick_and_sends_nothing_before_it() {
        let hourly = task("0 * * * *");
        let first = plan(&hourly, None, at("2026-03-05T10:20:00Z"));
        assert_eq!(first.send, None);
        assert_eq!(first.next_look, Some(at("2026-03-05T11:00:00Z")));
        assert_eq!(
            first.status.next_schedule_time,
            Some(to_time(at("2026-03-05T11:00:00Z")))
        );
        // Before the tick: nothing, and the status stays as it was (no churn).
        let early = plan(&hourly, Some(&first.status), at("2026-03-05T10:59:59Z"));
        assert_eq!(early.send, None);
        assert_eq!(early.status, first.status);
        // At the tick: send it.
        let due = plan(&hourly, Some(&first.status), at("2026-03-05T11:00:00Z"));
        assert_eq!(due.send, Some(at("2026-03-05T11:00:00Z")));
    }

    #[test]
    fn a_sent_tick_is_recorded_and_not_sent_again() {
        let hourly = task("0 * * * *");
        let after = sent(&hourly, "2026-03-05T11:00:00Z", "2026-03-05T11:00:01Z");
        assert_eq!(
            after.last_schedule_time,
            Some(to_time(at("2026-03-05T11:00:00Z")))
        );
        assert_eq!(after.last_message_id.as_deref(), Some("m-1"));
        assert_eq!(
            after.next_schedule_time,
            Some(to_time(at("2026-03-05T12:00:00Z")))
        );
        let again = plan(&hourly, Some(&after), at("2026-03-05T11:00:30Z"));
        assert_eq!(again.send, None);
        assert_eq!(again.status, after);
        assert_eq!(again.next_look, Some(at("2026-03-05T12:00:00Z")));
    }

    #[test]
    fn ticks_missed_while_no_operator_ran_send_the_latest_within_the_deadline_only() {
        let every_minute = task("* * * * *");
        let after = sent(
            &every_minute,
            "2026-03-05T11:00:00Z",
            "2026-03-05T11:00:01Z",
        );
        // Down from 11:00:30 to 11:03:10: 11:01, 11:02 and 11:03 passed; 11:03 is sent.
        let back = plan(&every_minute, Some(&after), at("2026-03-05T11:03:10Z"));
        assert_eq!(back.send, Some(at("2026-03-05T11:03:00Z")));
        // Down for an hour with a 300 s deadline: the latest tick (12:00) is still in time.
        let long = plan(&every_minute, Some(&after), at("2026-03-05T12:00:20Z"));
        assert_eq!(long.send, Some(at("2026-03-05T12:00:00Z")));
        // A daily task whose tick is an hour gone is skipped, and says why.
        let daily = task("0 3 * * *");
        let recorded = sent(&daily, "2026-03-04T03:00:00Z", "2026-03-04T03:00:01Z");
        let late = plan(&daily, Some(&recorded), at("2026-03-05T04:00:00Z"));
        assert_eq!(late.send, None);
        assert_eq!(late.skipped, Some(at("2026-03-05T03:00:00Z")));
        assert!(
            late.status
                .message
                .contains("2026-03-05 03:00:00 UTC was skipped"),
            "{}",
            late.status.message
        );
        assert_eq!(
            late.status.next_schedule_time,
            Some(to_time(at("2026-03-06T03:00:00Z")))
        );
        assert_eq!(late.status.last_schedule_time, recorded.last_schedule_time);
        // The skip is recorded, and stays the latest until a tick is sent again; a restart
        // in between (the plan of the same status) keeps it.
        assert_eq!(
            late.status.last_skipped_time,
            Some(to_time(at("2026-03-05T03:00:00Z")))
        );
        assert!(late.status.latest_tick_skipped());
        assert!(!recorded.latest_tick_skipped());
        let waiting = plan(&daily, Some(&late.status), at("2026-03-05T04:00:05Z"));
        assert!(waiting.status.latest_tick_skipped());
        let next = plan(&daily, Some(&late.status), at("2026-03-06T03:00:00Z"));
        assert_eq!(next.send, Some(at("2026-03-06T03:00:00Z")));
        let resumed = after_send(
            &daily,
            &next.status,
            at("2026-03-06T03:00:00Z"),
            Ok("m-2".into()),
            at("2026-03-06T03:00:01Z"),
        );
        assert!(!resumed.latest_tick_skipped());
        assert_eq!(resumed.last_skipped_time, late.status.last_skipped_time);
        // With a longer deadline the same tick is sent.
        let patient = PeriodicTask {
            starting_deadline_seconds: Some(7200),
            ..daily.clone()
        };
        assert_eq!(
            plan(&patient, Some(&recorded), at("2026-03-05T04:00:00Z")).send,
            Some(at("2026-03-05T03:00:00Z"))
        );
    }

    #[test]
    fn a_failed_send_keeps_the_tick_due_and_says_until_when_it_is_retried() {
        let hourly = task("0 * * * *");
        let first = plan(&hourly, None, at("2026-03-05T10:20:00Z")).status;
        let due = plan(&hourly, Some(&first), at("2026-03-05T11:00:00Z"));
        let error = QueueError::new(
            "SendMessageBatch",
            ferry_queues::QueueErrorKind::Unavailable,
            "connection refused",
        );
        let failed = after_send(
            &hourly,
            &due.status,
            at("2026-03-05T11:00:00Z"),
            Err(&error),
            at("2026-03-05T11:00:00Z"),
        );
        assert_eq!(failed.next_schedule_time, first.next_schedule_time);
        assert!(
            failed
                .message
                .contains("retrying until 2026-03-05 11:05:00 UTC"),
            "{}",
            failed.message
        );
        // Still due on the next look.
        assert_eq!(
            plan(&hourly, Some(&failed), at("2026-03-05T11:00:05Z")).send,
            Some(at("2026-03-05T11:00:00Z"))
        );
    }

    #[test]
    fn a_changed_schedule_starts_again_from_its_own_next_tick() {
        let hourly = task("0 * * * *");
        let after = sent(&hourly, "2026-03-05T11:00:00Z", "2026-03-05T11:00:01Z");
        let daily = task("30 6 * * *");
        let changed = plan(&daily, Some(&after), at("2026-03-05T12:10:00Z"));
        assert_eq!(changed.send, None);
        assert_eq!(changed.status.schedule, "30 6 * * *");
        assert_eq!(
            changed.status.next_schedule_time,
            Some(to_time(at("2026-03-06T06:30:00Z")))
        );
        // What was sent before stays visible.
        assert_eq!(changed.status.last_message_id.as_deref(), Some("m-1"));
    }

    #[test]
    fn cron_yaml_schedules_parse_and_bad_ones_say_what_to_fix() {
        for good in [
            "*/10 * * * *",
            "0 3 * * MON-FRI",
            "0 0 1 JAN *",
            "@daily",
            "5,35 8-18 * * 1-5",
        ] {
            assert!(parse_schedule(good).is_ok(), "{good}");
        }
        let bad = plan(&task("61 * * * *"), None, at("2026-03-05T10:20:00Z"));
        assert_eq!(bad.send, None);
        assert_eq!(bad.next_look, None);
        assert_eq!(bad.status.next_schedule_time, None);
        assert!(
            bad.status
                .message
                .contains("fix spec.periodicTasks[cleanup].schedule"),
            "{}",
            bad.status.message
        );
        assert!(
            parse_schedule("0 * * * * *").is_err(),
            "seconds are not cron.yaml's"
        );
    }

    #[test]
    fn a_run_on_request_is_recorded_once_and_a_failed_one_says_it_is_retried() {
        let daily = task("0 3 * * *");
        let recorded = sent(&daily, "2026-03-05T03:00:00Z", "2026-03-05T03:00:01Z");
        let now = at("2026-03-05T10:15:00Z");
        let ran = after_run(&recorded, "cleanup@1", Ok("m-9".into()), now);
        assert_eq!(ran.last_run_request.as_deref(), Some("cleanup@1"));
        assert_eq!(ran.last_run_time, Some(to_time(now)));
        assert_eq!(
            ran.message,
            "ran on ferry.dev/run-task=cleanup@1: message m-9"
        );
        // The schedule's record is untouched: the next tick is still the one it named.
        assert_eq!(ran.last_schedule_time, recorded.last_schedule_time);
        assert_eq!(ran.next_schedule_time, recorded.next_schedule_time);
        assert_eq!(ran.last_message_id, recorded.last_message_id);
        // And the next tick keeps the run's record.
        let next = after_send(
            &daily,
            &ran,
            at("2026-03-06T03:00:00Z"),
            Ok("m-10".into()),
            at("2026-03-06T03:00:01Z"),
        );
        assert_eq!(next.last_run_request.as_deref(), Some("cleanup@1"));
        let error = QueueError::new(
            "SendMessageBatch",
            ferry_queues::QueueErrorKind::Throttled,
            "slow down",
        );
        let failed = after_run(&ran, "cleanup@2", Err(&error), now);
        assert_eq!(failed.last_run_request.as_deref(), Some("cleanup@1"));
        assert!(
            failed.message.contains("cleanup@2") && failed.message.contains("retrying"),
            "{}",
            failed.message
        );
        // A run's message is the task's, scheduled now; on FIFO deduplicated per request.
        let message = run_message(&daily, now, "cleanup@1", true);
        assert!(message.attributes.contains(&(
            "beanstalk.sqsd.scheduled_time".into(),
            "2026-03-05 10:15:00 UTC".into()
        )));
        assert_ne!(
            message.deduplication_id,
            task_message(&daily, now, true).deduplication_id
        );
        assert_ne!(
            message.deduplication_id,
            run_message(&daily, now, "cleanup@2", true).deduplication_id
        );
    }

    #[test]
    fn the_message_is_the_worker_daemons_and_fifo_ticks_deduplicate() {
        let hourly = task("0 * * * *");
        let tick = at("2026-03-05T11:00:00Z");
        let message = task_message(&hourly, tick, false);
        assert_eq!(message.body, b"elasticbeanstalk scheduled job");
        assert!(
            message
                .attributes
                .contains(&("beanstalk.sqsd.path".into(), "/tasks/cleanup".into()))
        );
        assert!(message.attributes.contains(&(
            "beanstalk.sqsd.scheduled_time".into(),
            "2026-03-05 11:00:00 UTC".into()
        )));
        assert_eq!(message.deduplication_id, None);
        let fifo = task_message(&hourly, tick, true);
        let group = fifo.ordering_group.clone().unwrap();
        assert!(group.starts_with("cleanup-"), "{group}");
        assert_eq!(
            fifo.deduplication_id,
            task_message(&hourly, tick, true).deduplication_id
        );
        assert_ne!(
            fifo.deduplication_id,
            task_message(&hourly, at("2026-03-05T12:00:00Z"), true).deduplication_id
        );
        // SQS allows neither spaces nor more than 128 characters in either id.
        let spaced = PeriodicTask {
            name: format!("Nightly report {}", "x".repeat(200)),
            ..hourly.clone()
        };
        let message = task_message(&spaced, tick, true);
        for id in [message.ordering_group, message.deduplication_id] {
            let id = id.unwrap();
            assert!(
                id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()),
                "{id}"
            );
        }
    }
}

//! `spec.periodicTasks`: Elastic Beanstalk's `cron.yaml`, as part of the QueueConsumer.
//!
//! At each tick of a task's schedule the operator sends one message to the queue, in the
//! format Elastic Beanstalk's worker daemon sends its periodic tasks (body `elasticbeanstalk
//! scheduled job`, attributes `beanstalk.sqsd.task_name`, `beanstalk.sqsd.path` and
//! `beanstalk.sqsd.scheduled_time`). The sidecar delivers it to the task's `url` like any
//! other message, so a task is retried, dead-lettered and scaled from zero like the rest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// How long after its tick a task that could not be sent on time (the operator was
/// restarting, the queue API was down) is still sent, by default.
pub const DEFAULT_STARTING_DEADLINE_SECONDS: i32 = 300;

/// One periodic task: the same three fields as an entry of `cron.yaml`'s `cron` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodicTask {
    /// The task's name, unique in the list; the worker receives it in `X-Aws-Sqsd-Taskname`
    /// (SQS) and `Ferry-Task-Name`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("!self.matches('[\\\\x00-\\\\x1f\\\\x7f]')").message("spec.periodicTasks[].name must not contain control characters (it is sent as an HTTP header)"))]
    pub name: String,
    /// The path on the worker that the task's message is POSTed to, such as
    /// `/tasks/cleanup`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.matches('[\\\\s\\\\x00-\\\\x1f\\\\x7f]')").message("spec.periodicTasks[].url must be a path starting with '/', without spaces"))]
    pub url: String,
    /// When, in `timeZone` (UTC by default): five cron fields (`minute hour day-of-month
    /// month day-of-week`, with lists, ranges, steps and names such as `MON` or `JAN`) or one
    /// of `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly`. Elastic Beanstalk's
    /// `cron.yaml` schedules are taken unchanged.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^\\\\s*@(yearly|annually|monthly|weekly|daily|midnight|hourly)\\\\s*$') || self.matches('^\\\\s*[^\\\\s@]+(\\\\s+[^\\\\s@]+){4}\\\\s*$')").message("spec.periodicTasks[].schedule must be five cron fields (minute hour day-of-month month day-of-week) or @yearly, @monthly, @weekly, @daily or @hourly"))]
    pub schedule: String,
    /// The time zone `schedule` is read in, as an IANA name such as `Europe/Berlin` or
    /// `America/New_York`; UTC when absent (`cron.yaml`'s schedules are UTC). Ticks follow
    /// the wall clock, each of its minutes at most once: when daylight saving time starts, a
    /// task at a fixed minute and hour in the skipped hour (`30 2 * * *`) runs at the first
    /// minute after it, and one with `*` or a step there skips it; when it ends, the hour
    /// that repeats runs the first time only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "time_zone_schema")]
    pub time_zone: Option<String>,
    /// How many seconds after its tick a task that could not be sent on time (the operator
    /// was not running, the queue API failed) may still be sent; later, that tick is skipped
    /// and an Event says so. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub starting_deadline_seconds: Option<i32>,
    /// `true` stops this task's ticks, as `suspend` does for a CronJob, while the consumer and
    /// its other tasks go on: the ticks that pass meanwhile are neither sent nor reported
    /// skipped, and `false` again starts from the task's next tick. A
    /// `ferry.dev/run-task` request still runs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// The names `timeZone` accepts: the IANA database the operator carries (so a name admitted
/// is one the operator can use). Checked by a CEL rule rather than an `enum` so that a typo is
/// answered with one sentence, not the list of some 600 zones.
fn time_zone_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|zone| format!("'{}'", zone.name()))
        .collect::<Vec<_>>()
        .join(",");
    schemars::json_schema!({
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": format!("self in [{names}]"),
            "message": "spec.periodicTasks[].timeZone must be an IANA time zone name, such as UTC, Europe/Berlin or America/New_York",
        }],
    })
}

impl PeriodicTask {
    pub fn starting_deadline_seconds(&self) -> i32 {
        self.starting_deadline_seconds
            .unwrap_or(DEFAULT_STARTING_DEADLINE_SECONDS)
    }
}

/// A periodic task as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodicTaskStatus {
    /// The task's name.
    pub name: String,
    /// The schedule these times follow; a changed schedule or time zone starts again from
    /// its next tick.
    pub schedule: String,
    /// The time zone of `schedule`; absent: UTC. The times below are in UTC, as every
    /// Kubernetes time is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The last tick whose message was sent to the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The id of the message sent for that tick (the worker receives it as the message id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
    /// The next tick a message will be sent for; absent when the schedule is invalid or
    /// never fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The last tick that was skipped: not sent within `startingDeadlineSeconds` (no operator
    /// ran, or the queue refused the message until then). Later than `lastScheduleTime`, it
    /// means the task's latest tick did not run; `ferry_periodic_task_skipped` says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped_time: Option<Time>,
    /// The last `ferry.dev/run-task` value that ran this task out of schedule, and when its
    /// message was sent; a new value runs it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// What happened last, in a sentence: an invalid schedule, a skipped or failed tick.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl PeriodicTaskStatus {
    /// Whether the task's latest tick was skipped rather than sent: a skip recorded after
    /// the last send.
    pub fn latest_tick_skipped(&self) -> bool {
        match (&self.last_skipped_time, &self.last_schedule_time) {
            (Some(skipped), Some(sent)) => skipped.0 > sent.0,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The annotation that runs one periodic task now, out of schedule, as `kubectl create job
/// --from=cronjob/…` does for a CronJob: `kubectl annotate qc <name>
/// ferry.dev/run-task="<task name>@$(date +%s)" --overwrite`. The value is the task's name,
/// optionally followed by `@` and anything that makes it new; each new value sends the task's
/// message once.
pub const RUN_TASK_ANNOTATION: &str = "ferry.dev/run-task";

/// The task a `ferry.dev/run-task` value names, among `tasks`: the whole value when a task
/// has that name (names may contain `@`), else the part before the last `@`.
pub fn task_to_run<'a>(value: &str, tasks: &'a [PeriodicTask]) -> Option<&'a PeriodicTask> {
    let value = value.trim();
    let named = |name: &str| tasks.iter().find(|t| t.name == name);
    named(value).or_else(|| named(value.rsplit_once('@')?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_task_value_names_a_task_with_or_without_a_token() {
        let task = |name: &str| PeriodicTask {
            name: name.into(),
            url: "/tasks".into(),
            schedule: "@daily".into(),
            time_zone: None,
            starting_deadline_seconds: None,
            suspend: false,
        };
        let tasks = [task("report"), task("sync@eu")];
        let run = |value: &str| task_to_run(value, &tasks).map(|t| t.name.as_str());
        assert_eq!(run("report"), Some("report"));
        assert_eq!(run(" report@1733500000 "), Some("report"));
        assert_eq!(run("sync@eu"), Some("sync@eu"));
        assert_eq!(run("sync@eu@2"), Some("sync@eu"));
        assert_eq!(run("sync"), None);
        assert_eq!(run("cleanup@1"), None);
        assert_eq!(run(""), None);
    }
}

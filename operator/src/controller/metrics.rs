//! The operator's own series (see docs/metrics.md): how long reconciles take and why they
//! fail, what the autoscaler sees and decides per QueueConsumer, and each consumer's scaling
//! bounds, which the alert rules compare against.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ferry_crds::PeriodicTaskStatus;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct OperatorMetrics {
    registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    /// `ferry_consumer_backlog{namespace,queueconsumer}`: visible messages at the last poll.
    pub consumer_backlog: GaugeVec,
    /// `ferry_consumer_replicas{namespace,queueconsumer,kind="current|desired"}`.
    pub consumer_replicas: GaugeVec,
    /// `ferry_scaling_decisions_total{namespace,queueconsumer,direction="up|down"}`.
    pub scaling_decisions: IntCounterVec,
    /// `ferry_redriven_messages_total{namespace,queueconsumer}`: messages moved from the
    /// dead-letter queue back to the queue.
    pub redriven_messages: IntCounterVec,
    /// `ferry_consumer_target_latency_seconds`: the effective `spec.scaling.targetLatencySeconds`.
    target_latency: GaugeVec,
    /// `ferry_consumer_max_replicas`: `spec.scaling.maxReplicas`.
    max_replicas: IntGaugeVec,
    /// `ferry_consumer_suspended`: 1 while `spec.suspend` is true.
    suspended: IntGaugeVec,
    /// `ferry_queue_api_requests_total{provider,operation}`: copied from
    /// `ferry_queues::calls` at every scrape, since the calls are made inside that crate.
    queue_api_requests: IntCounterVec,
    /// `ferry_periodic_task_last_schedule_time_seconds{namespace,queueconsumer,task}`.
    periodic_last_tick: GaugeVec,
    /// `ferry_periodic_task_skipped{namespace,queueconsumer,task}`: 1 while the task's latest
    /// tick was skipped. Read from `status`, so a restarted operator still reports it.
    periodic_skipped: IntGaugeVec,
    /// The tasks each consumer has series for, so a removed task's series go with it.
    periodic_tasks: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "ferry_reconcile_duration_seconds",
                "Time one QueueConsumer reconcile took, cloud calls included.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new("ferry_reconcile_errors_total", "Failed reconciles by reason (a queue error kind, kubernetes, finalizer, dead_letter_not_empty)."),
            &["reason"],
        )
        .expect("valid metric");
        let consumer = ["namespace", "queueconsumer"];
        let target_latency = GaugeVec::new(
            Opts::new(
                "ferry_consumer_target_latency_seconds",
                "How long a message of this QueueConsumer may wait before a worker starts it (spec.scaling); absent when only backlogPerReplica is set.",
            ),
            &consumer,
        )
        .expect("valid metric");
        let max_replicas = IntGaugeVec::new(
            Opts::new(
                "ferry_consumer_max_replicas",
                "spec.scaling.maxReplicas of this QueueConsumer.",
            ),
            &consumer,
        )
        .expect("valid metric");
        let consumer_backlog = GaugeVec::new(
            Opts::new(
                "ferry_consumer_backlog",
                "Visible messages of a QueueConsumer's queue at the autoscaler's last poll (estimated from throughput and wait for Pub/Sub without Cloud Monitoring).",
            ),
            &["namespace", "queueconsumer"],
        )
        .expect("valid metric");
        let consumer_replicas = GaugeVec::new(
            Opts::new(
                "ferry_consumer_replicas",
                "Replicas of a QueueConsumer's worker Deployment: current (the Deployment's count) and desired (the autoscaler's last decision).",
            ),
            &["namespace", "queueconsumer", "kind"],
        )
        .expect("valid metric");
        let suspended = IntGaugeVec::new(
            Opts::new(
                "ferry_consumer_suspended",
                "1 while a QueueConsumer's spec.suspend is true (held at zero replicas, consuming nothing), else 0.",
            ),
            &consumer,
        )
        .expect("valid metric");
        let scaling_decisions = IntCounterVec::new(
            Opts::new(
                "ferry_scaling_decisions_total",
                "Scaling decisions that changed a QueueConsumer's replica count.",
            ),
            &["namespace", "queueconsumer", "direction"],
        )
        .expect("valid metric");
        let redriven_messages = IntCounterVec::new(
            Opts::new(
                "ferry_redriven_messages_total",
                "Messages a redrive (the ferry.dev/redrive annotation) moved from a QueueConsumer's dead-letter queue back to its queue.",
            ),
            &consumer,
        )
        .expect("valid metric");
        let queue_api_requests = IntCounterVec::new(
            Opts::new(
                "ferry_queue_api_requests_total",
                "Control-plane calls the operator made to SQS, Pub/Sub and Cloud Monitoring (provisioning, drift checks, queue counts at zero replicas), by provider and API operation.",
            ),
            &["provider", "operation"],
        )
        .expect("valid metric");
        let task = ["namespace", "queueconsumer", "task"];
        let periodic_last_tick = GaugeVec::new(
            Opts::new(
                "ferry_periodic_task_last_schedule_time_seconds",
                "Unix time of the last tick of a periodic task (spec.periodicTasks) whose message was sent to the queue.",
            ),
            &task,
        )
        .expect("valid metric");
        let periodic_skipped = IntGaugeVec::new(
            Opts::new(
                "ferry_periodic_task_skipped",
                "1 while a periodic task's latest tick was skipped (not sent within startingDeadlineSeconds), until a tick is sent again.",
            ),
            &task,
        )
        .expect("valid metric");
        for collector in [
            Box::new(consumer_backlog.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(periodic_last_tick.clone()),
            Box::new(periodic_skipped.clone()),
            Box::new(queue_api_requests.clone()),
            Box::new(consumer_replicas.clone()),
            Box::new(suspended.clone()),
            Box::new(scaling_decisions.clone()),
            Box::new(redriven_messages.clone()),
            Box::new(target_latency.clone()),
            Box::new(max_replicas.clone()),
        ] {
            registry.register(collector).expect("unique");
        }
        registry
            .register(Box::new(reconcile_duration.clone()))
            .expect("unique");
        registry
            .register(Box::new(reconcile_errors.clone()))
            .expect("unique");
        Self {
            registry,
            reconcile_duration,
            reconcile_errors,
            consumer_backlog,
            consumer_replicas,
            scaling_decisions,
            redriven_messages,
            target_latency,
            max_replicas,
            suspended,
            queue_api_requests,
            periodic_last_tick,
            periodic_skipped,
            periodic_tasks: Mutex::default(),
        }
    }
}

impl OperatorMetrics {
    /// Publishes a consumer's scaling bounds and whether it is suspended, so alerts can say
    /// "older than this consumer's target", "at this consumer's maximum" or "suspended for
    /// long" without copying each spec into the rules.
    pub fn record_scaling_bounds(
        &self,
        namespace: &str,
        name: &str,
        scaling: &crate::autoscaler::ScalingSpec,
        suspended: bool,
    ) {
        let labels = [namespace, name];
        self.suspended
            .with_label_values(&labels)
            .set(i64::from(suspended));
        match scaling.target_latency_seconds {
            Some(target) => self.target_latency.with_label_values(&labels).set(target),
            None => {
                let _ = self.target_latency.remove_label_values(&labels);
            }
        }
        self.max_replicas
            .with_label_values(&labels)
            .set(i64::from(scaling.max_replicas));
    }

    /// Publishes each periodic task's last tick and whether its latest was skipped, from the
    /// status just computed; series of tasks no longer in the spec are dropped.
    pub fn record_periodic_tasks(
        &self,
        namespace: &str,
        name: &str,
        statuses: &[PeriodicTaskStatus],
    ) {
        let mut known = self
            .periodic_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tasks = known
            .entry((namespace.to_string(), name.to_string()))
            .or_default();
        let current: BTreeSet<String> = statuses.iter().map(|s| s.name.clone()).collect();
        for gone in tasks.difference(&current) {
            self.forget_periodic_task(namespace, name, gone);
        }
        for status in statuses {
            let labels = [namespace, name, status.name.as_str()];
            match &status.last_schedule_time {
                Some(tick) => self
                    .periodic_last_tick
                    .with_label_values(&labels)
                    .set(tick.0.as_second() as f64),
                None => {
                    let _ = self.periodic_last_tick.remove_label_values(&labels);
                }
            }
            self.periodic_skipped
                .with_label_values(&labels)
                .set(i64::from(status.latest_tick_skipped()));
        }
        if current.is_empty() {
            known.remove(&(namespace.to_string(), name.to_string()));
        } else {
            *tasks = current;
        }
    }

    fn forget_periodic_task(&self, namespace: &str, name: &str, task: &str) {
        let _ = self
            .periodic_last_tick
            .remove_label_values(&[namespace, name, task]);
        let _ = self
            .periodic_skipped
            .remove_label_values(&[namespace, name, task]);
    }

    /// Drops a deleted QueueConsumer's series, so dashboards do not show it forever and
    /// nothing alerts on a consumer that is gone.
    pub fn forget_consumer(&self, namespace: &str, name: &str) {
        self.record_periodic_tasks(namespace, name, &[]);
        let _ = self
            .consumer_backlog
            .remove_label_values(&[namespace, name]);
        for kind in ["current", "desired"] {
            let _ = self
                .consumer_replicas
                .remove_label_values(&[namespace, name, kind]);
        }
        for direction in ["up", "down"] {
            let _ = self
                .scaling_decisions
                .remove_label_values(&[namespace, name, direction]);
        }
        let _ = self
            .redriven_messages
            .remove_label_values(&[namespace, name]);
        let _ = self.target_latency.remove_label_values(&[namespace, name]);
        let _ = self.max_replicas.remove_label_values(&[namespace, name]);
        let _ = self.suspended.remove_label_values(&[namespace, name]);
    }

    pub fn encode(&self) -> String {
        self.copy_queue_api_requests(&ferry_queues::calls::snapshot());
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl OperatorMetrics {
    /// Brings the counter up to the totals counted so far (they only grow).
    fn copy_queue_api_requests(&self, totals: &[(&str, &str, u64)]) {
        for &(provider, operation, total) in totals {
            let counter = self
                .queue_api_requests
                .with_label_values(&[provider, operation]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_api_requests_follow_the_totals() {
        let metrics = OperatorMetrics::default();
        metrics.copy_queue_api_requests(&[("pubsub", "GetTopic", 3)]);
        metrics.copy_queue_api_requests(&[
            ("pubsub", "GetTopic", 5),
            ("monitoring", "ListTimeSeries", 1),
        ]);
        let text = metrics.encode();
        assert!(
            text.contains(
                "ferry_queue_api_requests_total{operation=\"GetTopic\",provider=\"pubsub\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_queue_api_requests_total{operation=\"ListTimeSeries\",provider=\"monitoring\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn series_use_the_documented_names() {
        let metrics = OperatorMetrics::default();
        metrics
            .reconcile_errors
            .with_label_values(&["conflict"])
            .inc();
        metrics
            .reconcile_duration
            .with_label_values(&["ok"])
            .observe(0.2);
        let text = metrics.encode();
        assert!(
            text.contains("ferry_reconcile_errors_total{reason=\"conflict\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_reconcile_duration_seconds_count{outcome=\"ok\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn scaling_bounds_follow_the_spec_and_go_with_the_consumer() {
        let metrics = OperatorMetrics::default();
        let mut spec = crate::autoscaler::ScalingSpec {
            max_replicas: 7,
            target_latency_seconds: Some(12.5),
            ..Default::default()
        };
        metrics.record_scaling_bounds("shop", "orders", &spec, false);
        let text = metrics.encode();
        assert!(
            text.contains(
                "ferry_consumer_suspended{namespace=\"shop\",queueconsumer=\"orders\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_consumer_target_latency_seconds{namespace=\"shop\",queueconsumer=\"orders\"} 12.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_consumer_max_replicas{namespace=\"shop\",queueconsumer=\"orders\"} 7"
            ),
            "{text}"
        );
        spec.target_latency_seconds = None;
        metrics.record_scaling_bounds("shop", "orders", &spec, true);
        assert!(
            metrics.encode().contains(
                "ferry_consumer_suspended{namespace=\"shop\",queueconsumer=\"orders\"} 1"
            )
        );
        assert!(
            !metrics
                .encode()
                .contains("ferry_consumer_target_latency_seconds{")
        );
        metrics.forget_consumer("shop", "orders");
        assert!(!metrics.encode().contains("ferry_consumer_max_replicas{"));
        assert!(!metrics.encode().contains("ferry_consumer_suspended{"));
    }

    #[test]
    fn periodic_tasks_report_their_last_tick_and_a_skip_until_the_next_send() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        let time = |s: i64| Some(Time(Timestamp::from_second(s).unwrap()));
        let status = |name: &str, sent: Option<Time>, skipped: Option<Time>| PeriodicTaskStatus {
            name: name.into(),
            schedule: "0 3 * * *".into(),
            time_zone: None,
            last_schedule_time: sent,
            last_message_id: None,
            next_schedule_time: None,
            last_skipped_time: skipped,
            last_run_request: None,
            last_run_time: None,
            message: String::new(),
        };
        let metrics = OperatorMetrics::default();
        metrics.record_periodic_tasks(
            "shop",
            "orders",
            &[
                status("report", time(1_772_679_600), time(1_772_766_000)),
                status("cleanup", time(1_772_679_600), None),
                status("new", None, None),
            ],
        );
        let text = metrics.encode();
        let series = |name: &str, task: &str, value: &str| {
            format!("{name}{{namespace=\"shop\",queueconsumer=\"orders\",task=\"{task}\"}} {value}")
        };
        for expected in [
            series("ferry_periodic_task_skipped", "report", "1"),
            series("ferry_periodic_task_skipped", "cleanup", "0"),
            series("ferry_periodic_task_skipped", "new", "0"),
            series(
                "ferry_periodic_task_last_schedule_time_seconds",
                "cleanup",
                "1772679600",
            ),
        ] {
            assert!(text.contains(&expected), "{expected} in {text}");
        }
        assert!(!text.contains("ferry_periodic_task_last_schedule_time_seconds{namespace=\"shop\",queueconsumer=\"orders\",task=\"new\"}"));
        // The next tick is sent; `cleanup` leaves the spec.
        metrics.record_periodic_tasks(
            "shop",
            "orders",
            &[status("report", time(1_772_852_400), time(1_772_766_000))],
        );
        let text = metrics.encode();
        assert!(
            text.contains(&series("ferry_periodic_task_skipped", "report", "0")),
            "{text}"
        );
        assert!(!text.contains("task=\"cleanup\""), "{text}");
        metrics.forget_consumer("shop", "orders");
        assert!(!metrics.encode().contains("ferry_periodic_task"));
    }
}

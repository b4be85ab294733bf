//! The sidecar's Prometheus series. Every name here is documented in docs/metrics.md and
//! read by the operator's autoscaler, the dashboard and the alert rules.

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use ferry_queues::{QueueStats, SettleOutcome};

const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
const AGE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 21600.0, 86400.0,
];

/// Series for one queue; the `queue` label is fixed at construction.
pub struct Metrics {
    registry: Registry,
    queue_messages: IntGaugeVec,
    dead_letter_messages: IntGaugeVec,
    stats_timestamp: GaugeVec,
    pub received: prometheus::IntCounter,
    completed: IntCounterVec,
    deliveries: IntCounterVec,
    pub delivery_duration: Histogram,
    pub message_age: Histogram,
    pub in_flight: IntGauge,
    pub concurrency_limit: IntGauge,
    api_errors: IntCounterVec,
    pub ready: IntGauge,
    pub worker_unavailable: IntGauge,
    pub draining: IntGauge,
    pub lease_extensions: prometheus::IntCounter,
    /// Absent without a limit (see `record_rate_limit`).
    rate_limit: GaugeVec,
    pub rate_limit_wait: Counter,
    queue: String,
}

impl Metrics {
    pub fn new(queue: &str, provider: &str) -> Self {
        let registry = Registry::new();
        let labels = |name: &str, help: &str| Opts::new(name, help).const_label("queue", queue);
        let queue_messages = IntGaugeVec::new(
            Opts::new("ferry_queue_messages", "Messages in the queue by state, as the provider reports them (SQS ApproximateNumberOf*)."),
            &["queue", "state"],
        )
        .expect("valid metric");
        let dead_letter_messages = IntGaugeVec::new(
            Opts::new(
                "ferry_dead_letter_messages",
                "Messages waiting in the dead-letter queue.",
            ),
            &["queue"],
        )
        .expect("valid metric");
        let stats_timestamp = GaugeVec::new(
            Opts::new("ferry_queue_stats_timestamp_seconds", "Unix time of the last successful read of the queue statistics; stale values mean the ferry_queue_messages series are old."),
            &["queue"],
        )
        .expect("valid metric");
        let received = prometheus::IntCounter::with_opts(labels(
            "ferry_messages_received_total",
            "Messages received from the queue.",
        ))
        .expect("valid metric");
        let completed = IntCounterVec::new(
            labels("ferry_messages_completed_total", "Deliveries settled, by outcome: succeeded (deleted/acked), retried (handed back with backoff), dead_lettered (sent to the DLQ by Ferry), released (handed back unprocessed at shutdown)."),
            &["outcome"],
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            labels("ferry_deliveries_total", "HTTP deliveries to the worker by result: 2xx, 3xx, 4xx, 429, 5xx, timeout, connection_refused, error."),
            &["result"],
        )
        .expect("valid metric");
        let delivery_duration = Histogram::with_opts(
            HistogramOpts::from(labels(
                "ferry_delivery_duration_seconds",
                "Time from the start of the HTTP delivery to the worker's answer.",
            ))
            .buckets(DELIVERY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let message_age = Histogram::with_opts(
            HistogramOpts::from(labels(
                "ferry_message_age_seconds",
                "Time a message waited between publishing and being received by this sidecar.",
            ))
            .buckets(AGE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let in_flight = IntGauge::with_opts(labels("ferry_in_flight", "Messages held by this sidecar: being delivered, waiting behind their ordering group, or waiting for their turn under the rate limit."))
            .expect("valid metric");
        let concurrency_limit = IntGauge::with_opts(labels(
            "ferry_concurrency_limit",
            "FERRY_CONCURRENCY: the most deliveries in flight at once.",
        ))
        .expect("valid metric");
        let api_errors = IntCounterVec::new(
            labels("ferry_queue_api_errors_total", "Failed queue API calls by operation and kind (not_found, permission_denied, throttled, unavailable, invalid, lease_expired, other)."),
            &["operation", "kind"],
        )
        .expect("valid metric");
        let ready = IntGauge::with_opts(labels(
            "ferry_ready",
            "1 when the queue answers, the worker listens and the sidecar is receiving.",
        ))
        .expect("valid metric");
        let worker_unavailable = IntGauge::with_opts(labels(
            "ferry_worker_unavailable",
            "1 while the sidecar holds receiving because its worker, ready before, stopped being so (nothing listens, or the readiness path fails after a failed delivery); 0 otherwise, also while the worker first starts.",
        ))
        .expect("valid metric");
        let draining = IntGauge::with_opts(labels(
            "ferry_draining",
            "1 once the sidecar stopped receiving (drain request or SIGTERM).",
        ))
        .expect("valid metric");
        let lease_extensions = prometheus::IntCounter::with_opts(labels("ferry_lease_extensions_total", "Lease (visibility) extensions made for deliveries that outlasted FERRY_LEASE_SECONDS / 3."))
            .expect("valid metric");
        let rate_limit = GaugeVec::new(
            Opts::new("ferry_rate_limit_per_second", "FERRY_RATE_LIMIT (or what PUT /rate-limit set): the most deliveries this sidecar starts per second. Absent when there is no limit."),
            &["queue"],
        )
        .expect("valid metric");
        let rate_limit_wait = Counter::with_opts(labels(
            "ferry_rate_limit_wait_seconds_total",
            "Seconds deliveries spent waiting for their turn under the rate limit.",
        ))
        .expect("valid metric");
        let build_info = Gauge::with_opts(
            labels("ferry_build_info", "Build information.")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("provider", provider),
        )
        .expect("valid metric");
        build_info.set(1.0);
        for collector in [
            Box::new(queue_messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead_letter_messages.clone()),
            Box::new(stats_timestamp.clone()),
            Box::new(received.clone()),
            Box::new(completed.clone()),
            Box::new(deliveries.clone()),
            Box::new(delivery_duration.clone()),
            Box::new(message_age.clone()),
            Box::new(in_flight.clone()),
            Box::new(concurrency_limit.clone()),
            Box::new(api_errors.clone()),
            Box::new(ready.clone()),
            Box::new(worker_unavailable.clone()),
            Box::new(draining.clone()),
            Box::new(lease_extensions.clone()),
            Box::new(rate_limit.clone()),
            Box::new(rate_limit_wait.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Outcomes start at zero so rate() and the dashboard work before the first event.
        for outcome in [
            SettleOutcome::Succeeded,
            SettleOutcome::Retried,
            SettleOutcome::DeadLettered,
            SettleOutcome::Released,
        ] {
            completed.with_label_values(&[outcome.label()]);
        }
        Self {
            registry,
            queue_messages,
            dead_letter_messages,
            stats_timestamp,
            received,
            completed,
            deliveries,
            delivery_duration,
            message_age,
            in_flight,
            concurrency_limit,
            api_errors,
            ready,
            worker_unavailable,
            draining,
            lease_extensions,
            rate_limit,
            rate_limit_wait,
            queue: queue.to_string(),
        }
    }

    pub fn completed(&self, outcome: SettleOutcome) {
        self.completed.with_label_values(&[outcome.label()]).inc();
    }

    pub fn delivery(&self, result: &str) {
        self.deliveries.with_label_values(&[result]).inc();
    }

    pub fn api_error(&self, error: &ferry_queues::QueueError) {
        self.api_errors
            .with_label_values(&[error.operation, error.kind.label()])
            .inc();
    }

    /// Records the provider's counts. A count the provider does not have is left absent
    /// rather than reported as zero, so nobody reads "unknown" as "empty".
    pub fn record_stats(&self, stats: &QueueStats, unix_now: f64) {
        let q = self.queue.as_str();
        for (state, value) in [
            ("visible", stats.visible),
            ("in_flight", stats.in_flight),
            ("delayed", stats.delayed),
        ] {
            if let Some(v) = value {
                self.queue_messages
                    .with_label_values(&[q, state])
                    .set(v as i64);
            }
        }
        if let Some(v) = stats.dead_letter_visible {
            self.dead_letter_messages
                .with_label_values(&[q])
                .set(v as i64);
        }
        self.stats_timestamp.with_label_values(&[q]).set(unix_now);
    }

    /// The current rate limit; without one the series is absent, not 0, which would read
    /// as "deliver nothing".
    pub fn record_rate_limit(&self, per_second: Option<f64>) {
        let q = self.queue.as_str();
        match per_second {
            Some(rate) => self.rate_limit.with_label_values(&[q]).set(rate),
            None => {
                let _ = self.rate_limit.remove_label_values(&[q]);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_counts_are_absent_not_zero() {
        let m = Metrics::new("orders", "pubsub");
        m.record_stats(&QueueStats::default(), 1.0);
        let text = m.encode();
        assert!(!text.contains("ferry_queue_messages{"), "{text}");
        assert!(text.contains("ferry_queue_stats_timestamp_seconds{queue=\"orders\"} 1"));
        m.record_stats(
            &QueueStats {
                visible: Some(5),
                in_flight: Some(2),
                delayed: Some(0),
                dead_letter_visible: Some(1),
                oldest_age_seconds: None,
            },
            2.0,
        );
        let text = m.encode();
        assert!(
            text.contains("ferry_queue_messages{queue=\"orders\",state=\"visible\"} 5"),
            "{text}"
        );
        assert!(text.contains("ferry_dead_letter_messages{queue=\"orders\"} 1"));
    }

    #[test]
    fn no_rate_limit_is_no_series() {
        let m = Metrics::new("orders", "sqs");
        m.record_rate_limit(None);
        let text = m.encode();
        assert!(!text.contains("ferry_rate_limit_per_second{"), "{text}");
        assert!(
            text.contains("ferry_rate_limit_wait_seconds_total{queue=\"orders\"} 0"),
            "{text}"
        );
        m.record_rate_limit(Some(12.5));
        assert!(
            m.encode()
                .contains("ferry_rate_limit_per_second{queue=\"orders\"} 12.5")
        );
        m.record_rate_limit(None);
        m.record_rate_limit(None);
        assert!(!m.encode().contains("ferry_rate_limit_per_second{"));
    }

    #[test]
    fn outcomes_exist_from_the_start() {
        let text = Metrics::new("orders", "sqs").encode();
        for outcome in ["succeeded", "retried", "dead_lettered", "released"] {
            assert!(
                text.contains(&format!(
                    "ferry_messages_completed_total{{outcome=\"{outcome}\",queue=\"orders\"}} 0"
                )),
                "{text}"
            );
        }
    }
}

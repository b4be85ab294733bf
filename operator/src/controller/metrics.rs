//! The operator's own series (see docs/metrics.md): how long reconciles take and why they
//! fail.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct OperatorMetrics {
    registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
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
        }
    }
}

impl OperatorMetrics {
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
}

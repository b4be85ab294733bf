//! Periodic reads of the queue's own statistics (backlog, DLQ depth) and readiness checks.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_queues::{MessageQueue, Provider};

use crate::health::Health;
use crate::metrics::Metrics;

/// Pub/Sub has no backlog API outside Cloud Monitoring, so its poll only proves the
/// subscription is there; that is an administrative call with a per-project quota, hence
/// the slower pace.
const PUBSUB_CHECK_INTERVAL: Duration = Duration::from_secs(30);

pub async fn run(
    queue: Arc<dyn MessageQueue>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    interval: Duration,
) {
    let interval = match queue.provider() {
        Provider::Sqs => interval,
        Provider::PubSub => interval.max(PUBSUB_CHECK_INTERVAL),
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let result = match queue.provider() {
            Provider::Sqs => queue.stats().await,
            Provider::PubSub => match queue.check().await {
                Ok(()) => queue.stats().await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(stats) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                metrics.record_stats(&stats, now);
                health.queue_answered();
                failing = false;
            }
            Err(error) => {
                metrics.api_error(&error);
                health.queue_failed(&error);
                if !failing {
                    tracing::error!(
                        queue = queue.queue_name(),
                        "reading queue statistics: {error}"
                    );
                }
                failing = true;
            }
        }
    }
}

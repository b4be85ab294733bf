//! The operator's own read of a queue's counts, for when no sidecar can report them: at zero
//! replicas (activation) and while the first pods start. SQS answers GetQueueAttributes;
//! Pub/Sub has no backlog API, only Cloud Monitoring, and only when it is configured.
//!
//! Pub/Sub is read per project, not per subscription: the first consumer of a project that
//! needs its count in a poll reads every subscription of the project in one
//! `timeSeries.list`, and the other consumers of that poll take theirs from the same answer.
//! A thousand idle consumers then cost one Monitoring call per poll, not a thousand (or,
//! as each subscription's read used to be, two thousand).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_crds::QueueProvider;
use ferry_queues::monitoring::{MonitoringClient, MonitoringConfig};
use ferry_queues::{ConsumerTarget, MessageQueue, Provider, QueueError, QueueErrorKind};
use tokio::sync::OnceCell;

use super::signals::QueueReading;
use crate::autoscaler::BacklogSignal;

/// Where the queues are, as the operator was configured.
#[derive(Clone, Debug, Default)]
pub struct QueueReaderSettings {
    /// An SQS-compatible server (local clusters, tests).
    pub sqs_endpoint: Option<String>,
    /// Read Pub/Sub backlogs from Cloud Monitoring (or a compatible endpoint).
    pub pubsub_monitoring: Option<MonitoringConfig>,
}

/// One project's answer in one poll, shared by every consumer of the project.
type ProjectBacklogs = Arc<OnceCell<Result<(SystemTime, HashMap<String, u64>), QueueError>>>;

/// Keeps one SQS client per queue and one Monitoring client, so a poll costs calls, not
/// connection set-ups.
pub struct QueueReader {
    settings: QueueReaderSettings,
    sqs: Mutex<HashMap<String, Arc<dyn MessageQueue>>>,
    monitoring: OnceCell<MonitoringClient>,
    /// This poll's Pub/Sub answers, by project; emptied when a poll starts.
    pubsub_this_poll: Mutex<HashMap<String, ProjectBacklogs>>,
}

/// `projects/<project>/subscriptions/<id>` → (project, id).
fn split_subscription(path: &str) -> Option<(&str, &str)> {
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", project, "subscriptions", id] if !project.is_empty() && !id.is_empty() => {
            Some((project, id))
        }
        _ => None,
    }
}

impl QueueReader {
    pub fn new(settings: QueueReaderSettings) -> Self {
        Self {
            settings,
            sqs: Mutex::default(),
            monitoring: OnceCell::new(),
            pubsub_this_poll: Mutex::default(),
        }
    }

    /// Whether the backlog of this provider's queues can be read at all.
    pub fn can_read(&self, provider: QueueProvider) -> bool {
        match provider {
            QueueProvider::Sqs => true,
            QueueProvider::Pubsub => self.settings.pubsub_monitoring.is_some(),
        }
    }

    /// Forgets the previous poll's Pub/Sub answers, so this poll reads fresh counts.
    pub fn start_poll(&self) {
        self.pubsub_this_poll.lock().expect("pubsub lock").clear();
    }

    async fn sqs(&self, queue: &str) -> Result<Arc<dyn MessageQueue>, QueueError> {
        if let Some(client) = self.sqs.lock().expect("sqs lock").get(queue) {
            return Ok(client.clone());
        }
        let target = ConsumerTarget {
            provider: Provider::Sqs,
            queue: queue.to_string(),
            dead_letter: None,
            dead_letter_topic: None,
            endpoint: self.settings.sqs_endpoint.clone(),
            lease: Duration::from_secs(30),
            max_outstanding: 1,
            monitoring: None,
        };
        let client = ferry_queues::connect(&target).await?;
        self.sqs
            .lock()
            .expect("sqs lock")
            .insert(queue.to_string(), client.clone());
        Ok(client)
    }

    async fn monitoring(&self) -> Result<&MonitoringClient, QueueError> {
        let Some(config) = &self.settings.pubsub_monitoring else {
            return Err(QueueError::new(
                "ListTimeSeries",
                QueueErrorKind::Invalid,
                "Pub/Sub backlogs are read from Cloud Monitoring, which is not configured (FERRY_PUBSUB_MONITORING)",
            ));
        };
        self.monitoring
            .get_or_try_init(|| async { MonitoringClient::new(config) })
            .await
    }

    /// The undelivered count of one subscription, from its project's answer of this poll
    /// (read now if no consumer of the project asked yet).
    async fn pubsub(&self, subscription: &str) -> Result<(SystemTime, Option<u64>), QueueError> {
        let (project, id) = split_subscription(subscription).ok_or_else(|| {
            QueueError::new(
                "ListTimeSeries",
                QueueErrorKind::Invalid,
                format!("{subscription:?} is not a projects/<p>/subscriptions/<s> path"),
            )
        })?;
        let cell = self
            .pubsub_this_poll
            .lock()
            .expect("pubsub lock")
            .entry(project.to_string())
            .or_default()
            .clone();
        let answer = cell
            .get_or_init(|| async {
                let now = SystemTime::now();
                let monitoring = self.monitoring().await?;
                Ok((
                    now,
                    monitoring.undelivered_by_subscription(project, now).await?,
                ))
            })
            .await;
        match answer {
            Ok((at, counts)) => Ok((*at, counts.get(id).copied())),
            Err(error) => Err(error.clone()),
        }
    }

    /// The queue's counts now. `Ok(None)` when the provider has no data yet (Cloud
    /// Monitoring lags a few minutes behind a new subscription).
    pub async fn read(
        &self,
        provider: QueueProvider,
        queue: &str,
    ) -> Result<Option<QueueReading>, QueueError> {
        let (at, visible, in_flight, delayed) = match provider {
            QueueProvider::Sqs => {
                let now = SystemTime::now();
                let stats = self.sqs(queue).await?.stats().await?;
                (now, stats.visible, stats.in_flight, stats.delayed)
            }
            QueueProvider::Pubsub => {
                let (at, visible) = self.pubsub(queue).await?;
                (at, visible, None, None)
            }
        };
        let Some(visible) = visible else {
            return Ok(None);
        };
        Ok(Some(QueueReading {
            at: super::unix_seconds(at),
            backlog: BacklogSignal {
                visible,
                in_flight: in_flight.unwrap_or(0),
                delayed: delayed.unwrap_or(0),
            },
        }))
    }

    /// Drops the clients of queues no QueueConsumer uses any more.
    pub fn retain(&self, in_use: impl Fn(&str) -> bool) {
        self.sqs
            .lock()
            .expect("sqs lock")
            .retain(|queue, _| in_use(queue));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_paths_split_into_project_and_id() {
        assert_eq!(
            split_subscription("projects/p/subscriptions/shop-orders"),
            Some(("p", "shop-orders"))
        );
        assert_eq!(split_subscription("projects//subscriptions/x"), None);
        assert_eq!(split_subscription("https://sqs/queue"), None);
    }
}

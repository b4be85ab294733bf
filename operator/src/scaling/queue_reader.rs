//! The operator's own read of a queue's counts, for when no sidecar can report them: at zero
//! replicas (activation) and while the first pods start. SQS answers GetQueueAttributes;
//! Pub/Sub has no backlog API, only Cloud Monitoring, and only when it is configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_crds::QueueProvider;
use ferry_queues::monitoring::{CloudMonitoring, MonitoringConfig};
use ferry_queues::{ConsumerTarget, MessageQueue, Provider, QueueError, QueueErrorKind};

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

enum Reader {
    Sqs(Arc<dyn MessageQueue>),
    PubSub(Arc<CloudMonitoring>),
}

/// Keeps one client per queue, so a poll costs one call, not a connection set-up.
pub struct QueueReader {
    settings: QueueReaderSettings,
    readers: Mutex<HashMap<String, Arc<Reader>>>,
}

impl QueueReader {
    pub fn new(settings: QueueReaderSettings) -> Self {
        Self {
            settings,
            readers: Mutex::default(),
        }
    }

    /// Whether the backlog of this provider's queues can be read at all.
    pub fn can_read(&self, provider: QueueProvider) -> bool {
        match provider {
            QueueProvider::Sqs => true,
            QueueProvider::Pubsub => self.settings.pubsub_monitoring.is_some(),
        }
    }

    async fn reader(
        &self,
        provider: QueueProvider,
        queue: &str,
    ) -> Result<Arc<Reader>, QueueError> {
        if let Some(reader) = self.readers.lock().expect("readers lock").get(queue) {
            return Ok(reader.clone());
        }
        let reader = Arc::new(match provider {
            QueueProvider::Sqs => {
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
                Reader::Sqs(ferry_queues::connect(&target).await?)
            }
            QueueProvider::Pubsub => {
                let Some(config) = &self.settings.pubsub_monitoring else {
                    return Err(QueueError::new(
                        "ListTimeSeries",
                        QueueErrorKind::Invalid,
                        "Pub/Sub backlogs are read from Cloud Monitoring, which is not configured (FERRY_PUBSUB_MONITORING)",
                    ));
                };
                Reader::PubSub(Arc::new(CloudMonitoring::new(config, queue, None)?))
            }
        });
        self.readers
            .lock()
            .expect("readers lock")
            .insert(queue.to_string(), reader.clone());
        Ok(reader)
    }

    /// The queue's counts now. `Ok(None)` when the provider has no data yet (Cloud
    /// Monitoring lags a few minutes behind a new subscription).
    pub async fn read(
        &self,
        provider: QueueProvider,
        queue: &str,
    ) -> Result<Option<QueueReading>, QueueError> {
        let reader = self.reader(provider, queue).await?;
        let now = SystemTime::now();
        let stats = match reader.as_ref() {
            Reader::Sqs(queue) => queue.stats().await?,
            Reader::PubSub(monitoring) => monitoring.backlog(now).await?,
        };
        let Some(visible) = stats.visible else {
            return Ok(None);
        };
        Ok(Some(QueueReading {
            at: super::unix_seconds(now),
            backlog: BacklogSignal {
                visible,
                in_flight: stats.in_flight.unwrap_or(0),
                delayed: stats.delayed.unwrap_or(0),
            },
        }))
    }

    /// Drops the clients of queues no QueueConsumer uses any more.
    pub fn retain(&self, in_use: impl Fn(&str) -> bool) {
        self.readers
            .lock()
            .expect("readers lock")
            .retain(|queue, _| in_use(queue));
    }
}

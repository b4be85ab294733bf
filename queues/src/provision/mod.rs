//! Creating a queue together with its dead-letter queue, keeping it as asked (drift is
//! corrected), recording who owns it, and deleting it safely.
//!
//! The operator builds on these; the test harness and the local demo use them directly.
//! Everything is idempotent: calling [`ensure_queue`] again converges, never duplicates.

mod publish;
mod pubsub;
mod sqs;

use std::time::Duration;

pub use publish::{OutgoingMessage, publish};

use crate::{Provider, QueueError};

/// Who owns a queue: recorded as SQS tags / Pub/Sub labels at creation, and checked before
/// Ferry changes or deletes an existing queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

/// What to create. Names are short names (no URL, no project prefix).
#[derive(Clone, Debug)]
pub struct QueueRequest {
    pub provider: Provider,
    pub name: String,
    /// Pub/Sub project.
    pub project: Option<String>,
    pub endpoint: Option<String>,
    /// Deliveries before the queue moves a message to the dead-letter queue
    /// (SQS maxReceiveCount 1-1000, Pub/Sub maxDeliveryAttempts 5-100).
    pub max_deliveries: u32,
    /// SQS visibility timeout / Pub/Sub ack deadline.
    pub lease: Duration,
    /// SQS FIFO queue, or Pub/Sub subscription with message ordering.
    pub ordered: bool,
    /// Pub/Sub retry policy backoff bounds.
    pub retry_backoff: Option<(Duration, Duration)>,
    /// How long the queue keeps a message (SQS 60 s-14 d, Pub/Sub 10 min-7 d).
    pub retention: Option<Duration>,
    /// How long the dead-letter queue keeps a message; 14 days (SQS) / 7 days (Pub/Sub) by default.
    pub dead_letter_retention: Option<Duration>,
    /// SQS: delivery delay (0-900 s).
    pub delay: Option<Duration>,
    /// SQS FIFO: content-based deduplication.
    pub content_based_deduplication: bool,
    /// SQS: a KMS key for server-side encryption; without one, SQS-managed encryption is used.
    pub kms_key: Option<String>,
    /// Pub/Sub: exactly-once delivery.
    pub exactly_once: bool,
    /// Pub/Sub: a subscription filter (fixed at creation).
    pub filter: Option<String>,
    /// Recorded on the queues; an existing queue owned by another is refused.
    pub owner: Option<Owner>,
    /// Take over an existing queue that has no or another owner.
    pub adopt: bool,
    /// The queue is probably not there yet (its QueueConsumer was never provisioned): Pub/Sub
    /// resources are created first and looked up only when that fails, one call each
    /// instead of a look-up and a create. Only a hint: an existing resource is still found
    /// and checked, at one call more than a look-up alone.
    pub expect_new: bool,
}

impl QueueRequest {
    /// A request with Ferry's defaults, for `..QueueRequest::new(provider, name)`.
    pub fn new(provider: Provider, name: impl Into<String>) -> Self {
        Self {
            provider,
            name: name.into(),
            project: None,
            endpoint: None,
            max_deliveries: 5,
            lease: Duration::from_secs(60),
            ordered: false,
            retry_backoff: None,
            retention: None,
            dead_letter_retention: None,
            delay: None,
            content_based_deduplication: false,
            kms_key: None,
            exactly_once: false,
            filter: None,
            owner: None,
            adopt: false,
            expect_new: false,
        }
    }
}

/// What exists afterwards, in the form `FERRY_QUEUE` / `FERRY_DEAD_LETTER` take.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvisionedQueue {
    /// SQS queue URL or Pub/Sub subscription path.
    pub queue: String,
    /// SQS DLQ URL or the DLQ topic's subscription path.
    pub dead_letter: String,
    /// Pub/Sub: the topic producers publish to. SQS: the queue URL.
    pub publish_to: String,
    /// Pub/Sub: the dead-letter topic. SQS: the DLQ URL.
    pub dead_letter_publish_to: String,
    /// Settings that differed from the request and were put back (drift), by name.
    pub corrected: Vec<String>,
    /// Resources this call created, by name.
    pub created: Vec<String>,
}

/// How a deletion ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The queue and its dead-letter queue are gone (or were never there).
    Deleted,
    /// Refused: the dead-letter queue still holds messages (at least this many) and the
    /// request did not say `force`.
    DeadLetterNotEmpty(u64),
}

/// Provisions queues with clients kept between calls: for a long-lived caller such as the
/// operator, which would otherwise set up new clients (TLS, connection pools) for every
/// reconcile of every QueueConsumer.
#[derive(Default)]
pub struct Provisioner {
    pubsub: pubsub::ClientCache,
}

impl Provisioner {
    /// Creates the queue and its dead-letter queue, or converges existing ones to the request.
    pub async fn ensure(&self, request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
        match request.provider {
            Provider::Sqs => sqs::ensure(request).await,
            Provider::PubSub => pubsub::ensure(&self.pubsub, request).await,
        }
    }

    /// Deletes the queue and its dead-letter queue, unless the dead-letter queue still holds
    /// messages and `force` is false. Queues owned by someone else are never deleted.
    pub async fn delete(
        &self,
        request: &QueueRequest,
        force: bool,
    ) -> Result<DeleteOutcome, QueueError> {
        match request.provider {
            Provider::Sqs => sqs::delete(request, force).await,
            Provider::PubSub => pubsub::delete(&self.pubsub, request, force).await,
        }
    }
}

/// Creates the queue and its dead-letter queue, or converges existing ones to the request.
pub async fn ensure_queue(request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
    Provisioner::default().ensure(request).await
}

/// Deletes the queue and its dead-letter queue, unless the dead-letter queue still holds
/// messages and `force` is false. Queues owned by someone else are never deleted.
pub async fn delete_queue(
    request: &QueueRequest,
    force: bool,
) -> Result<DeleteOutcome, QueueError> {
    Provisioner::default().delete(request, force).await
}

/// Tag/label keys that record ownership. Pub/Sub label keys and values allow only lowercase
/// letters, digits, `-` and `_`, so the same keys work for both providers.
pub(crate) const OWNER_CLUSTER: &str = "ferry-dev-cluster";
pub(crate) const OWNER_NAMESPACE: &str = "ferry-dev-namespace";
pub(crate) const OWNER_NAME: &str = "ferry-dev-name";
pub(crate) const MANAGED_BY: &str = "managed-by";

impl Owner {
    pub(crate) fn labels(&self) -> Vec<(String, String)> {
        vec![
            (MANAGED_BY.into(), "ferry".into()),
            (OWNER_CLUSTER.into(), label_value(&self.cluster)),
            (OWNER_NAMESPACE.into(), label_value(&self.namespace)),
            (OWNER_NAME.into(), label_value(&self.name)),
        ]
    }

    /// Whether the recorded labels name this owner. No labels at all, or another owner, is "not ours".
    pub(crate) fn owns(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        self.labels().iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub(crate) fn describe(labels: &std::collections::HashMap<String, String>) -> String {
        match (
            labels.get(OWNER_NAMESPACE),
            labels.get(OWNER_NAME),
            labels.get(OWNER_CLUSTER),
        ) {
            (Some(ns), Some(name), Some(cluster)) => {
                format!("QueueConsumer {ns}/{name} in cluster {cluster}")
            }
            _ => "no QueueConsumer (it was not created by Ferry)".into(),
        }
    }
}

/// Lowercase, `[a-z0-9_-]`, at most 63 characters: what Pub/Sub labels accept.
fn label_value(value: &str) -> String {
    value
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

pub(crate) fn conflict(
    resource: &str,
    labels: &std::collections::HashMap<String, String>,
) -> QueueError {
    QueueError::new(
        "CheckOwner",
        crate::QueueErrorKind::Conflict,
        format!(
            "{resource} already exists and belongs to {}",
            Owner::describe(labels)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn owner_labels_fit_pubsub_rules() {
        let owner = Owner {
            cluster: "Prod.EU".into(),
            namespace: "shop".into(),
            name: "Orders".into(),
        };
        let labels: HashMap<String, String> = owner.labels().into_iter().collect();
        assert_eq!(labels[OWNER_CLUSTER], "prod-eu");
        assert_eq!(labels[OWNER_NAME], "orders");
        assert!(owner.owns(&labels));
        let other = Owner {
            name: "payments".into(),
            ..owner.clone()
        };
        assert!(!other.owns(&labels));
        assert!(!owner.owns(&HashMap::new()));
        assert!(Owner::describe(&labels).contains("shop/orders"));
    }
}

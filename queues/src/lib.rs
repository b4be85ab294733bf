//! Everything in Ferry that speaks AWS SQS or Google Pub/Sub.
//!
//! The rest of the workspace sees only the provider-neutral types of [`model`] and the
//! [`MessageQueue`] trait; the AWS and Google types stay inside [`sqs`] and [`pubsub`].

pub mod calls;
pub mod error;
pub mod model;
pub mod monitoring;
pub mod provision;
pub mod pubsub;
pub mod redrive;
pub mod sqs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use error::{QueueError, QueueErrorKind};
pub use model::{DeadLetterReason, Lease, Provider, QueueStats, ReceivedMessage, SettleOutcome};

/// The consuming side of a queue, as the sidecar's pump uses it.
///
/// Every method that takes a [`Lease`] settles that one delivery; the lease is consumed so
/// a message can never be settled twice.
#[async_trait]
pub trait MessageQueue: Send + Sync + 'static {
    /// Waits up to `wait` for messages and returns at most `max` (0 < max <= 10 for SQS).
    async fn receive(&self, max: usize, wait: Duration)
    -> Result<Vec<ReceivedMessage>, QueueError>;

    /// The worker succeeded: delete (SQS) or acknowledge (Pub/Sub).
    async fn ack(&self, lease: Lease) -> Result<(), QueueError>;

    /// The worker failed: make the message available again after `delay`, so the queue's
    /// own redrive policy counts this delivery toward the dead-letter threshold.
    async fn retry_after(&self, lease: Lease, delay: Duration) -> Result<(), QueueError>;

    /// Hands messages back at once without counting as processed (shutdown, ordering).
    async fn release(&self, leases: Vec<Lease>) -> Result<(), QueueError>;

    /// Keeps messages leased while their delivery is still running.
    async fn extend(&self, leases: &[&Lease], lease_for: Duration) -> Result<(), QueueError>;

    /// Whether [`MessageQueue::extend`] is needed at all: the Pub/Sub client library keeps
    /// its own leases alive, SQS needs us to do it.
    fn needs_lease_extension(&self) -> bool;

    /// Whether every `receive` is a call to the provider (SQS), so an empty answer still
    /// proves the queue is reachable. Pub/Sub's receive reads a local buffer fed by a stream.
    fn receive_calls_the_queue(&self) -> bool;

    /// Copies the message to the dead-letter queue. The caller acks it afterwards, so a
    /// failure here leaves the message in the source queue rather than losing it.
    async fn send_to_dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &DeadLetterReason,
    ) -> Result<(), QueueError>;

    /// Backlog statistics of the queue and its dead-letter queue, where the provider has them.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// A cheap call that proves the queue exists and the credentials work (readiness).
    async fn check(&self) -> Result<(), QueueError>;

    /// Stops taking new messages from the provider and hands back what it pre-fetched.
    async fn close(&self);

    /// Waits until every settlement made so far has reached the provider; called after a
    /// drain, before the process exits.
    async fn flush(&self);

    /// The queue's short name, used as the `queue` metric label and `X-Aws-Sqsd-Queue`.
    fn queue_name(&self) -> &str;

    fn provider(&self) -> Provider;
}

/// Where a consumer connects to.
#[derive(Clone, Debug)]
pub struct ConsumerTarget {
    pub provider: Provider,
    /// SQS queue URL, or `projects/<p>/subscriptions/<s>`.
    pub queue: String,
    /// DLQ URL, or the DLQ's subscription path.
    pub dead_letter: Option<String>,
    /// Pub/Sub only: the topic dead letters are published to. When absent it is read from
    /// the subscription's dead-letter policy.
    pub dead_letter_topic: Option<String>,
    /// An SQS-compatible server or the Pub/Sub emulator (`host:port` or a URL).
    pub endpoint: Option<String>,
    /// How long a received message stays leased before it is extended or redelivered.
    pub lease: Duration,
    /// Pub/Sub only: how many unacknowledged messages the server may push to this client.
    pub max_outstanding: usize,
    /// Pub/Sub only: read the backlog from Cloud Monitoring.
    pub monitoring: Option<monitoring::MonitoringConfig>,
}

/// Connects to the queue described by `target`.
pub async fn connect(target: &ConsumerTarget) -> Result<Arc<dyn MessageQueue>, QueueError> {
    match target.provider {
        Provider::Sqs => Ok(Arc::new(sqs::SqsQueue::connect(target).await?)),
        Provider::PubSub => Ok(Arc::new(pubsub::PubSubQueue::connect(target).await?)),
    }
}

//! `spec.queue`: which cloud queue the consumer reads and how Ferry provisions it.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The queue service a consumer reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueProvider {
    /// Amazon SQS (a standard or FIFO queue, with a dead-letter queue through a redrive policy).
    Sqs,
    /// Google Cloud Pub/Sub (a topic and a pull subscription, with a dead-letter topic).
    Pubsub,
}

impl QueueProvider {
    /// The value of `FERRY_PROVIDER` and of `spec.queue.provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqs => "sqs",
            Self::Pubsub => "pubsub",
        }
    }
}

/// `spec.queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
// Changing either would silently point the consumer at a different queue and orphan the old
// one with its messages; a new QueueConsumer is the honest way to do that.
#[x_kube(
    validation = Rule::new("self.provider == oldSelf.provider").message("spec.queue.provider is immutable: create a new QueueConsumer to move to another provider"),
    validation = Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("spec.queue.name is immutable: it cannot be set, changed or removed after creation"),
    validation = Rule::new("!has(self.sqs) || self.provider == 'sqs'").message("spec.queue.sqs is only allowed with provider: sqs"),
    validation = Rule::new("!has(self.pubsub) || self.provider == 'pubsub'").message("spec.queue.pubsub is only allowed with provider: pubsub"),
    validation = Rule::new("!has(self.name) || self.provider != 'sqs' || (has(self.sqs) && self.sqs.fifo) == self.name.endsWith('.fifo')").message("an SQS FIFO queue's name must end with '.fifo', and only a FIFO queue's name may"),
    validation = Rule::new("!has(self.name) || self.provider != 'sqs' || (self.name.size() <= 80 && self.name.matches('^[A-Za-z0-9_-]+(\\\\.fifo)?$'))").message("an SQS queue name has 1-80 characters: letters, digits, '-' and '_' (and the '.fifo' suffix of a FIFO queue)"),
    validation = Rule::new("!has(self.name) || self.provider != 'pubsub' || (self.name.matches('^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$') && !self.name.startsWith('goog'))").message("a Pub/Sub topic and subscription name has 3-255 characters, starts with a letter, does not start with 'goog', and uses letters, digits and - _ . ~ + %")
)]
pub struct QueueSpec {
    /// The queue service: `sqs` or `pubsub`. Immutable.
    pub provider: QueueProvider,
    /// The queue's name (SQS queue; Pub/Sub topic and subscription). Defaults to
    /// `<namespace>-<name>` of the QueueConsumer (with `.fifo` appended for an SQS FIFO queue).
    /// Immutable: it cannot be set, changed or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    /// SQS settings; only with `provider: sqs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsQueueSpec>,
    /// Pub/Sub settings; only with `provider: pubsub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubQueueSpec>,
}

/// `spec.queue.sqs`: attributes of the SQS queue (the dead-letter queue gets the same type and
/// encryption).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.contentBasedDeduplication || self.fifo").message("contentBasedDeduplication needs fifo: true")
)]
pub struct SqsQueueSpec {
    /// A FIFO queue: ordered per message group, exactly-once processing within the
    /// deduplication window. Its name ends with `.fifo`. Immutable (SQS cannot change a
    /// queue's type).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.queue.sqs.fifo is immutable: SQS cannot change a queue's type"))]
    pub fifo: bool,
    /// FIFO only: deduplicate by a SHA-256 of the body when the producer sends no deduplication id.
    #[serde(default)]
    pub content_based_deduplication: bool,
    /// Seconds a received message stays invisible to other consumers (0-43200). The sidecar
    /// extends it while a delivery runs, so this matters mostly for crashed consumers.
    /// SQS's default (30) applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 43200))]
    pub visibility_timeout_seconds: Option<i32>,
    /// Seconds SQS keeps a message that nobody deleted (60-1209600, 1 minute to 14 days).
    /// SQS's default (345600, 4 days) applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 1209600))]
    pub message_retention_seconds: Option<i32>,
    /// Seconds every new message stays invisible after it is sent (0-900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 900))]
    pub delay_seconds: Option<i32>,
    /// KMS key (id, ARN or alias) for server-side encryption with KMS. Unset: SQS-managed
    /// encryption (SSE-SQS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_master_key_id: Option<String>,
    /// AWS region of the queue. Unset: the operator's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Adopt a queue that already exists under this name instead of failing: Ferry then
    /// manages its attributes and redrive policy like those of a queue it created.
    #[serde(default)]
    pub adopt: bool,
}

/// `spec.queue.pubsub`: the topic and subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PubSubQueueSpec {
    /// Google Cloud project of the topic and subscription. Unset: the operator's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Seconds the subscriber has to ack a message before Pub/Sub redelivers it (10-600). The
    /// sidecar extends leases while a delivery runs. Pub/Sub's default (10) applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 600))]
    pub ack_deadline_seconds: Option<i32>,
    /// Seconds the subscription keeps unacknowledged messages (600-604800, 10 minutes to 7
    /// days). Pub/Sub's default (7 days) applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 600, max = 604800))]
    pub message_retention_seconds: Option<i32>,
    /// Deliver messages with the same ordering key in the order published. Immutable
    /// (Pub/Sub cannot change it on a subscription).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.queue.pubsub.enableMessageOrdering is immutable: Pub/Sub cannot change it on a subscription"))]
    pub enable_message_ordering: bool,
    /// Exactly-once delivery: an acknowledged message is never redelivered.
    #[serde(default)]
    pub enable_exactly_once_delivery: bool,
    /// Subscription filter on message attributes (Pub/Sub filter syntax, at most 256
    /// characters); messages that do not match are acknowledged by Pub/Sub and never
    /// delivered. Immutable (Pub/Sub cannot change a subscription's filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.queue.pubsub.filter is immutable: Pub/Sub cannot change a subscription's filter"))]
    pub filter: Option<String>,
    /// Pub/Sub's redelivery backoff after a nack or an expired ack deadline. Unset: immediate
    /// redelivery (the sidecar still waits its own backoff, see `spec.delivery.retryBackoff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<PubSubRetryPolicy>,
    /// Adopt a topic and subscription that already exist under this name instead of failing.
    #[serde(default)]
    pub adopt: bool,
}

/// `spec.queue.pubsub.retryPolicy`: exponential backoff between redeliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minimumBackoffSeconds <= self.maximumBackoffSeconds").message("minimumBackoffSeconds must not exceed maximumBackoffSeconds")
)]
pub struct PubSubRetryPolicy {
    /// Shortest wait before a redelivery, seconds (0-600).
    #[serde(default = "default_pubsub_min_backoff")]
    #[schemars(range(min = 0, max = 600))]
    pub minimum_backoff_seconds: i32,
    /// Longest wait before a redelivery, seconds (0-600).
    #[serde(default = "default_pubsub_max_backoff")]
    #[schemars(range(min = 0, max = 600))]
    pub maximum_backoff_seconds: i32,
}

// Pub/Sub's own defaults when a retry policy is set without bounds.
fn default_pubsub_min_backoff() -> i32 {
    10
}

fn default_pubsub_max_backoff() -> i32 {
    600
}

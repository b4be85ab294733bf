use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    Sqs,
    PubSub,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqs => "sqs",
            Self::PubSub => "pubsub",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sqs" => Ok(Self::Sqs),
            "pubsub" => Ok(Self::PubSub),
            other => Err(format!(
                "unknown provider {other:?}; accepted values: sqs, pubsub"
            )),
        }
    }
}

/// The right to settle one received message. Consumed by ack, retry, release, so a
/// delivery is settled exactly once.
pub struct Lease(pub(crate) LeaseInner);

pub(crate) enum LeaseInner {
    Sqs { receipt_handle: String },
    PubSub(google_cloud_pubsub::subscriber::handler::Handler),
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Receipt handles and ack ids are credentials of a sort; keep them out of logs.
        match &self.0 {
            LeaseInner::Sqs { .. } => f.write_str("Lease(sqs)"),
            LeaseInner::PubSub(_) => f.write_str("Lease(pubsub)"),
        }
    }
}

/// One message as received, in provider-neutral form.
#[derive(Debug)]
pub struct ReceivedMessage {
    pub id: String,
    pub body: Bytes,
    /// User attributes with a textual value (SQS String/Number, all Pub/Sub attributes).
    pub attributes: BTreeMap<String, String>,
    /// When the producer published it (SQS `SentTimestamp`, Pub/Sub `publish_time`).
    pub published_at: Option<SystemTime>,
    /// When it was first received by any consumer (SQS only).
    pub first_received_at: Option<SystemTime>,
    /// How many times it has been delivered, this one included, when the provider counts.
    pub delivery_attempt: Option<u32>,
    /// SQS FIFO message group or Pub/Sub ordering key: messages sharing it are delivered
    /// one at a time, in order.
    pub ordering_group: Option<String>,
    /// SQS FIFO deduplication id, kept so dead-lettering preserves it.
    pub deduplication_id: Option<String>,
    /// Who sent a periodic task's message (SQS `SenderId`: the account or role that sent
    /// it), which the worker daemon passes on as `X-Aws-Sqsd-Sender-Id`. Kept for periodic
    /// tasks only, the one kind of message it is passed on with.
    pub sender_id: Option<String>,
    pub lease: Lease,
}

/// Why a message is sent to the dead-letter queue by Ferry itself.
#[derive(Clone, Debug)]
pub struct DeadLetterReason {
    /// The worker's HTTP status, when it answered.
    pub status: Option<u16>,
    pub description: String,
}

/// Backlog counts as the provider reports them. `None` where the provider has no such count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub visible: Option<u64>,
    pub in_flight: Option<u64>,
    pub delayed: Option<u64>,
    pub dead_letter_visible: Option<u64>,
    /// Age of the oldest unacknowledged message in seconds (Pub/Sub via Cloud Monitoring).
    pub oldest_age_seconds: Option<f64>,
}

/// How a delivery ended, as recorded in metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SettleOutcome {
    Succeeded,
    Retried,
    DeadLettered,
    Released,
}

impl SettleOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Released => "released",
        }
    }
}

/// A message with a placeholder lease, for unit tests of code that reads messages but never
/// settles them (header mapping, ordering).
#[doc(hidden)]
pub fn test_message(id: &str, body: &str, attributes: BTreeMap<String, String>) -> ReceivedMessage {
    ReceivedMessage {
        id: id.to_string(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        attributes,
        published_at: None,
        first_received_at: None,
        delivery_attempt: None,
        ordering_group: None,
        deduplication_id: None,
        sender_id: None,
        lease: Lease(LeaseInner::Sqs {
            receipt_handle: String::new(),
        }),
    }
}

/// Attributes the sidecar adds when it dead-letters a message itself: they describe the
/// failure, not the message, so a redrive takes them off again.
pub mod dead_letter_attributes {
    /// Why the message was dead-lettered, in words.
    pub const REASON: &str = "ferry-dead-letter-reason";
    /// The worker's HTTP status, when it answered one.
    pub const STATUS: &str = "ferry-dead-letter-status";
    /// The message's id in the queue it failed in.
    pub const SOURCE_MESSAGE_ID: &str = "ferry-source-message-id";
    /// Pub/Sub: the subscription it failed in.
    pub const SOURCE_SUBSCRIPTION: &str = "ferry-source-subscription";
    /// Pub/Sub: the message's ordering key, since the dead-letter topic is not published
    /// with ordering; a redrive restores the key from it.
    pub const ORDERING_KEY: &str = "ferry-ordering-key";
    /// All of them.
    pub const ALL: [&str; 5] = [
        REASON,
        STATUS,
        SOURCE_MESSAGE_ID,
        SOURCE_SUBSCRIPTION,
        ORDERING_KEY,
    ];
}

/// Periodic tasks (Elastic Beanstalk's `cron.yaml`) travel as ordinary messages in the
/// worker daemon's format: this body, and attributes naming the task, the path on the worker
/// it is delivered to, and the tick it is for (`2015-03-05 10:00:00 UTC`).
/// A value for an SQS FIFO id (`MessageDeduplicationId`, `MessageGroupId`) from `readable`
/// (a message id, a task name) and `key` (what makes it unique: a redrive request, a tick):
/// the same for the same pair in every process and release, so a send repeated within SQS's
/// five-minute window (after a crash) is dropped. At most 128 characters of the allowed set
/// (ASCII letters, digits and punctuation): `readable` cut to 96 characters, anything else in
/// it replaced by `_`, then a hash of `key` and the whole of `readable`, so two names that
/// read alike stay apart.
pub fn fifo_id(readable: &str, key: &str) -> String {
    let shown: String = readable
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(96)
        .collect();
    format!("{shown}-{:016x}", stable_hash(key, readable))
}

/// FNV-1a, 64 bits: stable across processes and Rust versions, unlike `DefaultHasher`, so an
/// operator restarted within the deduplication window derives the same id.
fn stable_hash(key: &str, readable: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // The separator (never in UTF-8) keeps ("ab", "c") and ("a", "bc") apart.
    key.bytes()
        .chain([0xff])
        .chain(readable.bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

pub mod periodic_task {
    pub const BODY: &str = "elasticbeanstalk scheduled job";
    pub const NAME_ATTRIBUTE: &str = "beanstalk.sqsd.task_name";
    pub const PATH_ATTRIBUTE: &str = "beanstalk.sqsd.path";
    pub const SCHEDULED_AT_ATTRIBUTE: &str = "beanstalk.sqsd.scheduled_time";
}

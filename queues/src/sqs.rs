//! AWS SQS through `aws-sdk-sqs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::model::LeaseInner;
use crate::model::{dead_letter_attributes, periodic_task};
use crate::{
    ConsumerTarget, DeadLetterReason, Lease, MessageQueue, Provider, QueueError, QueueErrorKind,
    QueueStats, ReceivedMessage,
};

/// SQS refuses batches of more than ten entries.
pub const MAX_BATCH: usize = 10;
/// SQS allows at most ten message attributes; dead-lettering adds its own only while they fit.
pub(crate) const MAX_MESSAGE_ATTRIBUTES: usize = 10;
/// The longest visibility timeout SQS accepts (12 h).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// How long the batcher waits for more deletes to fill a batch. Nothing waits on it but the
/// delete itself (the worker slot is free once the worker answered), and it turns one call
/// per message into one per ten under load.
const DELETE_LINGER: Duration = Duration::from_millis(2);
/// Delete batches sent concurrently; one at a time would cap throughput at one round trip.
const CONCURRENT_DELETE_BATCHES: usize = 8;

pub struct SqsQueue {
    client: Client,
    url: String,
    name: String,
    dead_letter_url: Option<String>,
    lease: Duration,
    deletes: mpsc::UnboundedSender<PendingDelete>,
    /// Deletes handed to the batcher and not yet answered; `flush` waits for zero.
    deletes_in_flight: watch::Sender<usize>,
}

struct PendingDelete {
    receipt_handle: String,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// Builds an SQS client from the SDK's default chains (env, profile, IRSA web identity,
/// instance metadata), with an endpoint override for SQS-compatible servers.
pub async fn client(endpoint: Option<&str>, queue_url_hint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint_url(endpoint));
    }
    if endpoint.is_some() && !credentials_configured() {
        // Local SQS-compatible servers accept any signature; without this a developer would
        // have to invent AWS credentials just to talk to one.
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "ferry-local",
            "ferry-local",
            None,
            None,
            "ferry-local-endpoint",
        ));
    }
    // The region, when we can know it without asking the instance metadata service: the
    // queue URL names it, the environment may set it, and a local server does not care.
    // Leaving it to the default chain would query the metadata address, which only makes
    // sense on EC2/EKS without AWS_REGION.
    let region_from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    match queue_url_hint.and_then(region_from_queue_url) {
        Some(region) => loader = loader.region(Region::new(region)),
        None if endpoint.is_some() && !region_from_env => {
            loader = loader.region(Region::new("us-east-1"))
        }
        None => {}
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if shared.region().is_none() {
        // A queue URL names its region; failing that, an SQS-compatible server ignores it.
        let region = queue_url_hint
            .and_then(region_from_queue_url)
            .unwrap_or_else(|| "us-east-1".into());
        config = config.region(Region::new(region));
    }
    Client::from_conf(config.build())
}

/// SQS takes whole seconds; a backoff is rounded up so a short one never becomes "at once".
fn visibility_seconds(delay: Duration) -> i32 {
    let delay = delay.min(MAX_VISIBILITY);
    (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)) as i32
}

/// Whether any AWS credential source is configured, judged from the environment alone so
/// that no metadata-service request is made to find out.
fn credentials_configured() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
        || std::env::var_os("HOME").is_some_and(|home| {
            std::path::Path::new(&home)
                .join(".aws/credentials")
                .exists()
        })
}

fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// `https://sqs.eu-west-1.amazonaws.com/123/q` → `eu-west-1`.
pub fn region_from_queue_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    match (parts.next()?, parts.next()?) {
        ("sqs", region) if region.contains('-') => Some(region.to_string()),
        (region, "queue") if region.contains('-') => Some(region.to_string()),
        _ => None,
    }
}

/// The last path segment of a queue URL is the queue's name.
pub fn queue_name_from_url(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_string()
}

pub(crate) fn map_sdk_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().unwrap_or_default().to_string();
    let kind = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            QueueErrorKind::Unavailable
        }
        SdkError::ConstructionFailure(_) => QueueErrorKind::Invalid,
        _ => classify_code(&code),
    };
    let mut message = DisplayErrorContext(&err).to_string();
    if matches!(&err, SdkError::DispatchFailure(_))
        && message.to_lowercase().contains("credentials")
    {
        return QueueError::new(
            operation,
            QueueErrorKind::PermissionDenied,
            format!(
                "no AWS credentials found ({message}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or IRSA"
            ),
        );
    }
    if !code.is_empty() && !message.contains(&code) {
        message = format!("{code}: {message}");
    }
    QueueError::new(operation, kind, message)
}

pub(crate) fn classify_code(code: &str) -> QueueErrorKind {
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue" => {
            QueueErrorKind::NotFound
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "InvalidSecurity"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "MissingAuthenticationToken" => QueueErrorKind::PermissionDenied,
        "ThrottlingException"
        | "RequestThrottled"
        | "Throttling"
        | "OverLimit"
        | "KmsThrottled" => QueueErrorKind::Throttled,
        "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" | "MessageNotInflight" => {
            QueueErrorKind::LeaseExpired
        }
        "InternalError" | "InternalFailure" | "ServiceUnavailable" => QueueErrorKind::Unavailable,
        "InvalidParameterValue"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "UnsupportedOperation"
        | "InvalidAddress"
        | "ValidationError"
        | "MissingParameter" => QueueErrorKind::Invalid,
        _ => QueueErrorKind::Other,
    }
}

impl SqsQueue {
    pub async fn connect(target: &ConsumerTarget) -> Result<Self, QueueError> {
        if !target.queue.contains("://") {
            return Err(QueueError::new(
                "connect",
                QueueErrorKind::Invalid,
                format!(
                    "FERRY_QUEUE must be an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>), got {:?}",
                    target.queue
                ),
            ));
        }
        let client = client(target.endpoint.as_deref(), Some(&target.queue)).await;
        Ok(Self::with_client(client, target))
    }

    pub fn with_client(client: Client, target: &ConsumerTarget) -> Self {
        let (deletes, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_delete_batcher(
            client.clone(),
            target.queue.clone(),
            pending,
        ));
        Self {
            name: queue_name_from_url(&target.queue),
            url: target.queue.clone(),
            dead_letter_url: target.dead_letter.clone(),
            lease: target.lease,
            client,
            deletes,
            deletes_in_flight: watch::channel(0).0,
        }
    }

    fn receipt(lease: Lease) -> String {
        match lease.0 {
            LeaseInner::Sqs { receipt_handle } => receipt_handle,
            LeaseInner::PubSub(_) => unreachable!("a Pub/Sub lease cannot come from an SQS queue"),
        }
    }

    fn receipt_ref(lease: &Lease) -> &str {
        match &lease.0 {
            LeaseInner::Sqs { receipt_handle } => receipt_handle,
            LeaseInner::PubSub(_) => unreachable!("a Pub/Sub lease cannot come from an SQS queue"),
        }
    }

    async fn change_visibility_batch(
        &self,
        operation: &'static str,
        receipts: Vec<String>,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        change_visibility_batch(&self.client, &self.url, operation, receipts, visibility).await
    }
}

/// Changes the visibility of messages in batches of ten; every batch is tried, and the first
/// failure is returned. The sidecar hands messages back and extends leases with it, the
/// redrive hands back what it holds.
pub(crate) async fn change_visibility_batch(
    client: &Client,
    queue_url: &str,
    operation: &'static str,
    receipts: Vec<String>,
    visibility: Duration,
) -> Result<(), QueueError> {
    let seconds = visibility.min(MAX_VISIBILITY).as_secs() as i32;
    let mut first_error = None;
    for chunk in receipts.chunks(MAX_BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(seconds)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        let result = client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => {
                if let Some(failed) = out.failed().first() {
                    first_error.get_or_insert(QueueError::new(
                        operation,
                        classify_code(failed.code()),
                        format!(
                            "{} of {} entries failed: {}",
                            out.failed().len(),
                            chunk.len(),
                            failed.message().unwrap_or(failed.code())
                        ),
                    ));
                }
            }
            Err(err) => {
                first_error.get_or_insert(map_sdk_error(operation, err));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Collects deletes that arrive while earlier ones are in flight into batches of up to ten,
/// so a busy consumer makes one DeleteMessageBatch call where it would make ten, without
/// ever waiting for a batch to fill.
async fn run_delete_batcher(
    client: Client,
    url: String,
    mut pending: mpsc::UnboundedReceiver<PendingDelete>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_DELETE_BATCHES));
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + DELETE_LINGER;
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => match tokio::time::timeout_at(deadline, pending.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    _ => break,
                },
            }
        }
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            delete_batch(&client, &url, batch).await;
            drop(permit);
        });
    }
}

async fn delete_batch(client: &Client, url: &str, batch: Vec<PendingDelete>) {
    if batch.len() == 1 {
        let one = batch.into_iter().next().expect("one entry");
        let result = client
            .delete_message()
            .queue_url(url)
            .receipt_handle(&one.receipt_handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk_error("DeleteMessage", e));
        let _ = one.done.send(result);
        return;
    }
    let entries = batch
        .iter()
        .enumerate()
        .map(|(i, d)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&d.receipt_handle)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect::<Vec<_>>();
    match client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let mut failures: HashMap<usize, QueueError> = out
                .failed()
                .iter()
                .filter_map(|f| {
                    let index = f.id().parse::<usize>().ok()?;
                    Some((
                        index,
                        QueueError::new(
                            "DeleteMessageBatch",
                            classify_code(f.code()),
                            f.message().unwrap_or(f.code()).to_string(),
                        ),
                    ))
                })
                .collect();
            for (i, d) in batch.into_iter().enumerate() {
                let _ = d.done.send(failures.remove(&i).map_or(Ok(()), Err));
            }
        }
        Err(err) => {
            let err = map_sdk_error("DeleteMessageBatch", err);
            for d in batch {
                let _ = d.done.send(Err(err.clone()));
            }
        }
    }
}

fn epoch_millis(value: Option<&String>) -> Option<SystemTime> {
    let millis = value?.parse::<u64>().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(millis))
}

fn textual_attributes(
    attributes: Option<HashMap<String, MessageAttributeValue>>,
) -> BTreeMap<String, String> {
    attributes
        .unwrap_or_default()
        .into_iter()
        // Binary attributes are dropped, as Elastic Beanstalk's worker daemon does.
        .filter_map(|(name, value)| value.string_value.map(|v| (name, v)))
        .collect()
}

/// The system attributes a delivery carries, and no others: `All` would also bring the
/// trace header and the sequence number of every message, which nothing reads, for SQS to
/// send and the SDK to parse. (`SenderId` is read for periodic tasks only, but SQS cannot be
/// asked for it on some messages.)
pub const RECEIVED_SYSTEM_ATTRIBUTES: [MessageSystemAttributeName; 6] = [
    MessageSystemAttributeName::SentTimestamp,
    MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
    MessageSystemAttributeName::ApproximateReceiveCount,
    MessageSystemAttributeName::MessageGroupId,
    MessageSystemAttributeName::MessageDeduplicationId,
    MessageSystemAttributeName::SenderId,
];

#[async_trait]
impl MessageQueue for SqsQueue {
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(self.lease.min(MAX_VISIBILITY).as_secs() as i32)
            .set_message_system_attribute_names(Some(RECEIVED_SYSTEM_ATTRIBUTES.to_vec()))
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| map_sdk_error("ReceiveMessage", e))?;
        let messages = out.messages.unwrap_or_default();
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let receipt_handle = m.receipt_handle?;
                let system = m.attributes.unwrap_or_default();
                let get = |name: MessageSystemAttributeName| system.get(&name);
                let attributes = textual_attributes(m.message_attributes);
                let sender_id = if attributes.contains_key(periodic_task::NAME_ATTRIBUTE) {
                    get(MessageSystemAttributeName::SenderId).cloned()
                } else {
                    None
                };
                Some(ReceivedMessage {
                    id: m.message_id.unwrap_or_default(),
                    body: m.body.unwrap_or_default().into(),
                    attributes,
                    published_at: epoch_millis(get(MessageSystemAttributeName::SentTimestamp)),
                    first_received_at: epoch_millis(get(
                        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                    )),
                    delivery_attempt: get(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok()),
                    ordering_group: get(MessageSystemAttributeName::MessageGroupId).cloned(),
                    deduplication_id: get(MessageSystemAttributeName::MessageDeduplicationId)
                        .cloned(),
                    sender_id,
                    lease: Lease(LeaseInner::Sqs { receipt_handle }),
                })
            })
            .collect())
    }

    async fn ack(&self, lease: Lease) -> Result<(), QueueError> {
        let stopped = || {
            QueueError::new(
                "DeleteMessage",
                QueueErrorKind::Other,
                "delete batcher stopped",
            )
        };
        let (done, result) = oneshot::channel();
        // Only a drain waits on this count, and only for zero: waking its waiters on every
        // delete would cost a notification per message for nothing.
        self.deletes_in_flight.send_if_modified(|n| {
            *n += 1;
            false
        });
        let answered = match self.deletes.send(PendingDelete {
            receipt_handle: Self::receipt(lease),
            done,
        }) {
            Ok(()) => result.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        self.deletes_in_flight.send_if_modified(|n| {
            *n -= 1;
            *n == 0
        });
        answered
    }

    async fn retry_after(&self, lease: Lease, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(Self::receipt(lease))
            .visibility_timeout(visibility_seconds(delay))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk_error("ChangeMessageVisibility", e))
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<(), QueueError> {
        let receipts = leases.into_iter().map(Self::receipt).collect();
        self.change_visibility_batch("ChangeMessageVisibilityBatch", receipts, Duration::ZERO)
            .await
    }

    async fn extend(&self, leases: &[&Lease], lease_for: Duration) -> Result<(), QueueError> {
        let receipts = leases
            .iter()
            .map(|l| Self::receipt_ref(l).to_string())
            .collect();
        self.change_visibility_batch("ChangeMessageVisibilityBatch", receipts, lease_for)
            .await
    }

    fn needs_lease_extension(&self) -> bool {
        true
    }

    fn receive_calls_the_queue(&self) -> bool {
        true
    }

    async fn send_to_dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &DeadLetterReason,
    ) -> Result<(), QueueError> {
        let Some(dlq) = &self.dead_letter_url else {
            return Err(QueueError::new(
                "SendMessage",
                QueueErrorKind::Invalid,
                "a permanent failure needs a dead-letter queue, and FERRY_DEAD_LETTER is not set",
            ));
        };
        let mut attributes: HashMap<String, MessageAttributeValue> = message
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), string_attribute(v)))
            .collect();
        let ferry_attributes = [
            (
                dead_letter_attributes::REASON,
                Some(reason.description.clone()),
            ),
            (
                dead_letter_attributes::STATUS,
                reason.status.map(|s| s.to_string()),
            ),
            (
                dead_letter_attributes::SOURCE_MESSAGE_ID,
                Some(message.id.clone()),
            ),
        ];
        for (name, value) in ferry_attributes {
            if let Some(value) = value
                && attributes.len() < MAX_MESSAGE_ATTRIBUTES
            {
                attributes.insert(name.to_string(), string_attribute(&value));
            }
        }
        let mut send = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(String::from_utf8_lossy(&message.body))
            .set_message_attributes(Some(attributes));
        if dlq.ends_with(".fifo") {
            send = send
                .message_group_id(
                    message
                        .ordering_group
                        .clone()
                        .unwrap_or_else(|| "ferry-dead-letter".into()),
                )
                .message_deduplication_id(
                    message
                        .deduplication_id
                        .clone()
                        .unwrap_or_else(|| message.id.clone()),
                );
        }
        send.send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk_error("SendMessage", e))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        crate::calls::record("sqs", "GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| map_sdk_error("GetQueueAttributes", e))?;
        let attributes = out.attributes.unwrap_or_default();
        let count =
            |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok());
        let mut stats = QueueStats {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            ..QueueStats::default()
        };
        if let Some(dlq) = &self.dead_letter_url {
            let out = self
                .client
                .get_queue_attributes()
                .queue_url(dlq)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|e| map_sdk_error("GetQueueAttributes", e))?;
            stats.dead_letter_visible = out
                .attributes
                .unwrap_or_default()
                .get(&QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|v| v.parse().ok());
        }
        Ok(stats)
    }

    async fn check(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk_error("GetQueueAttributes", e))
    }

    async fn close(&self) {}

    /// A delivery gives its worker slot back before its delete is answered, so a drain that
    /// found every slot free still waits here for the deletes.
    async fn flush(&self) {
        let mut in_flight = self.deletes_in_flight.subscribe();
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }

    fn queue_name(&self) -> &str {
        &self.name
    }

    fn provider(&self) -> Provider {
        Provider::Sqs
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_the_queue_url() {
        assert_eq!(
            region_from_queue_url("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_queue_url("https://us-east-2.queue.amazonaws.com/123/q").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(region_from_queue_url("http://127.0.0.1:5000/123/q"), None);
    }

    #[test]
    fn queue_name_is_the_last_path_segment() {
        assert_eq!(
            queue_name_from_url("https://sqs.eu-west-1.amazonaws.com/123/orders.fifo"),
            "orders.fifo"
        );
        assert_eq!(queue_name_from_url("http://127.0.0.1:5000/123/q/"), "q");
    }

    #[test]
    fn visibility_rounds_up_to_whole_seconds() {
        assert_eq!(visibility_seconds(Duration::ZERO), 0);
        assert_eq!(visibility_seconds(Duration::from_millis(200)), 1);
        assert_eq!(visibility_seconds(Duration::from_secs(5)), 5);
        assert_eq!(visibility_seconds(Duration::from_secs(100_000)), 43_200);
    }

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify_code("AWS.SimpleQueueService.NonExistentQueue"),
            QueueErrorKind::NotFound
        );
        assert_eq!(
            classify_code("AccessDenied"),
            QueueErrorKind::PermissionDenied
        );
        assert_eq!(classify_code("RequestThrottled"), QueueErrorKind::Throttled);
        assert_eq!(
            classify_code("ReceiptHandleIsInvalid"),
            QueueErrorKind::LeaseExpired
        );
    }
}

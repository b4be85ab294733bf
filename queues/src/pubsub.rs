//! Google Pub/Sub through the official `google-cloud-pubsub` crate.
//!
//! Receiving uses the client's streaming pull, which also keeps every message we hold
//! leased (so a slow worker never causes a redelivery) and applies flow control, so the
//! server never pushes more than `max_outstanding` unacknowledged messages to this pod.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{ShutdownBehavior, ShutdownToken};
use tokio::sync::{Mutex, OnceCell, mpsc, watch};

use crate::model::LeaseInner;
use crate::model::dead_letter_attributes;
use crate::monitoring::CloudMonitoring;
use crate::{
    ConsumerTarget, DeadLetterReason, Lease, MessageQueue, Provider, QueueError, QueueErrorKind,
    QueueStats, ReceivedMessage,
};

type Received = Result<(Message, Handler), QueueError>;

pub struct PubSubQueue {
    subscription: String,
    name: String,
    endpoint: Option<String>,
    admin: SubscriptionAdmin,
    dead_letter_topic: OnceCell<String>,
    configured_dead_letter_topic: Option<String>,
    dead_letter_publisher: OnceCell<Publisher>,
    prefetched: Mutex<mpsc::Receiver<Received>>,
    /// Flipped on close: held retries are handed back at once instead of at their time.
    closing: watch::Sender<bool>,
    /// Set by the first `close`.
    closed: AtomicBool,
    /// The live stream's shutdown handle; the stream is rebuilt after it ends on an error.
    current_stream: Arc<SyncMutex<Option<ShutdownToken>>>,
    monitoring: Option<CloudMonitoring>,
}

/// The endpoint to use, if any: `FERRY_ENDPOINT` first, then `PUBSUB_EMULATOR_HOST`, which
/// the Google client libraries of other languages honour and this one does not.
pub fn emulator_endpoint(explicit: Option<&str>) -> Option<String> {
    let raw = explicit.map(str::to_string).or_else(|| {
        std::env::var("PUBSUB_EMULATOR_HOST")
            .ok()
            .filter(|v| !v.is_empty())
    })?;
    Some(if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    })
}

/// Credentials for an emulator are anonymous; for Google, the default chain (ADC,
/// Workload Identity, metadata server).
macro_rules! configure_builder {
    ($builder:expr, $endpoint:expr) => {{
        let builder = $builder;
        match $endpoint {
            Some(endpoint) => builder.with_endpoint(endpoint.clone()).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            ),
            None => builder,
        }
    }};
}
pub(crate) use configure_builder;

pub(crate) fn map_gax_error(
    operation: &'static str,
    err: &google_cloud_pubsub::Error,
) -> QueueError {
    let credentials = credentials_failed(err);
    let kind = if credentials {
        QueueErrorKind::PermissionDenied
    } else if let Some(status) = err.status() {
        match status.code {
            Code::NotFound => QueueErrorKind::NotFound,
            Code::PermissionDenied | Code::Unauthenticated => QueueErrorKind::PermissionDenied,
            Code::ResourceExhausted => QueueErrorKind::Throttled,
            Code::Unavailable
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled => QueueErrorKind::Unavailable,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists => QueueErrorKind::Invalid,
            _ => QueueErrorKind::Other,
        }
    } else if err.is_timeout()
        || err.is_io()
        || err.is_connect()
        || err.is_transport()
        || err.is_exhausted()
    {
        QueueErrorKind::Unavailable
    } else {
        QueueErrorKind::Other
    };
    let message = if credentials {
        format!(
            "no usable Google credentials ({err}); use Workload Identity, GOOGLE_APPLICATION_CREDENTIALS, or PUBSUB_EMULATOR_HOST for the emulator"
        )
    } else {
        err.to_string()
    };
    QueueError::new(operation, kind, message)
}

/// Whether the call failed for want of credentials, before it was sent. The client retries
/// such a failure when the credential source calls it transient (a metadata server that does
/// not answer, as off Google Cloud with no credentials configured), and then reports the
/// exhausted retries, with the credentials error as the cause: look through the chain.
fn credentials_failed(err: &google_cloud_pubsub::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<google_cloud_pubsub::Error>()
            .is_some_and(|e| e.is_authentication())
            || e.is::<google_cloud_auth::errors::CredentialsError>()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

pub(crate) fn map_publish_error(err: &google_cloud_pubsub::error::PublishError) -> QueueError {
    use google_cloud_pubsub::error::PublishError;
    match err {
        PublishError::Rpc(inner) => map_gax_error("Publish", inner),
        other => QueueError::new("Publish", QueueErrorKind::Unavailable, other.to_string()),
    }
}

fn builder_error(operation: &'static str, err: impl std::fmt::Display) -> QueueError {
    QueueError::new(operation, QueueErrorKind::Invalid, err.to_string())
}

/// `projects/p/subscriptions/s` → `s`.
pub fn short_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

pub async fn subscription_admin(
    endpoint: Option<&String>,
) -> Result<SubscriptionAdmin, QueueError> {
    configure_builder!(SubscriptionAdmin::builder(), endpoint)
        .build()
        .await
        .map_err(|e| builder_error("connect", e))
}

impl PubSubQueue {
    pub async fn connect(target: &ConsumerTarget) -> Result<Self, QueueError> {
        let parts: Vec<&str> = target.queue.split('/').collect();
        if parts.len() != 4 || parts[0] != "projects" || parts[2] != "subscriptions" {
            return Err(QueueError::new(
                "connect",
                QueueErrorKind::Invalid,
                format!(
                    "FERRY_QUEUE must be a subscription path projects/<project>/subscriptions/<name>, got {:?}",
                    target.queue
                ),
            ));
        }
        let endpoint = emulator_endpoint(target.endpoint.as_deref());
        let subscriber = configure_builder!(Subscriber::builder(), endpoint.as_ref())
            .build()
            .await
            .map_err(|e| builder_error("connect", e))?;
        let admin = subscription_admin(endpoint.as_ref()).await?;
        let (tx, rx) = mpsc::channel(target.max_outstanding.max(1));
        let (closing, _) = watch::channel(false);
        let current_stream = Arc::new(SyncMutex::new(None));
        tokio::spawn(pump_stream(
            StreamParams {
                subscriber,
                subscription: target.queue.clone(),
                max_outstanding: target.max_outstanding.max(1) as i64,
                lease: target.lease,
            },
            tx,
            closing.subscribe(),
            current_stream.clone(),
        ));
        Ok(Self {
            name: short_name(&target.queue),
            subscription: target.queue.clone(),
            endpoint,
            admin,
            dead_letter_topic: OnceCell::new(),
            configured_dead_letter_topic: target.dead_letter_topic.clone(),
            dead_letter_publisher: OnceCell::new(),
            prefetched: Mutex::new(rx),
            closing,
            closed: AtomicBool::new(false),
            current_stream,
            monitoring: target
                .monitoring
                .as_ref()
                .map(|config| {
                    CloudMonitoring::new(config, &target.queue, target.dead_letter.as_deref())
                })
                .transpose()?,
        })
    }

    async fn dead_letter_topic(&self) -> Result<&String, QueueError> {
        self.dead_letter_topic
            .get_or_try_init(|| async {
                if let Some(topic) = &self.configured_dead_letter_topic {
                    return Ok(topic.clone());
                }
                let subscription = self
                    .admin
                    .get_subscription()
                    .set_subscription(self.subscription.clone())
                    .send()
                    .await
                    .map_err(|e| map_gax_error("GetSubscription", &e))?;
                subscription
                    .dead_letter_policy
                    .map(|p| p.dead_letter_topic)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        QueueError::new(
                            "Publish",
                            QueueErrorKind::Invalid,
                            format!("subscription {} has no dead-letter policy and FERRY_DEAD_LETTER_TOPIC is not set, so a permanent failure has nowhere to go", self.subscription),
                        )
                    })
            })
            .await
    }

    async fn dead_letter_publisher(&self) -> Result<&Publisher, QueueError> {
        let topic = self.dead_letter_topic().await?.clone();
        self.dead_letter_publisher
            .get_or_try_init(|| async {
                configure_builder!(Publisher::builder(topic), self.endpoint.as_ref())
                    // A dead letter is rare; waiting to fill a batch would only delay the ack.
                    .set_message_count_threshold(1)
                    .build()
                    .await
                    .map_err(|e| builder_error("Publish", e))
            })
            .await
    }
}

struct StreamParams {
    subscriber: Subscriber,
    subscription: String,
    max_outstanding: i64,
    lease: Duration,
}

/// Moves messages from the client's stream into a bounded channel the pump drains, and
/// surfaces stream errors (a missing subscription, bad credentials) to `receive`. The
/// stream ends after a permanent error; it is rebuilt with backoff, so a subscription
/// created after the sidecar started is picked up without a restart.
async fn pump_stream(
    params: StreamParams,
    tx: mpsc::Sender<Received>,
    mut closing: watch::Receiver<bool>,
    current: Arc<SyncMutex<Option<ShutdownToken>>>,
) {
    let mut consecutive_failures = 0u32;
    loop {
        if *closing.borrow() {
            return;
        }
        let mut stream = params
            .subscriber
            .subscribe(params.subscription.clone())
            .set_max_outstanding_messages(params.max_outstanding)
            .set_max_lease_extension(params.lease)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        *current.lock().expect("stream lock") = Some(stream.shutdown_token());
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(received) => {
                    consecutive_failures = 0;
                    Ok(received)
                }
                Err(e) => Err(map_gax_error("StreamingPull", &e)),
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
        consecutive_failures += 1;
        let pause =
            Duration::from_secs(1 << consecutive_failures.min(5)).min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = until_closing(&mut closing) => return,
        }
    }
}

async fn until_closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

fn to_system_time(ts: &google_cloud_wkt::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(ts.seconds()).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, ts.nanos().max(0) as u32))
}

fn to_received(message: Message, handler: Handler) -> ReceivedMessage {
    let attributes: BTreeMap<String, String> = message.attributes.into_iter().collect();
    ReceivedMessage {
        id: message.message_id,
        body: message.data,
        attributes,
        published_at: message.publish_time.as_ref().and_then(to_system_time),
        first_received_at: None,
        delivery_attempt: handler
            .delivery_attempt()
            .and_then(|a| u32::try_from(a).ok()),
        ordering_group: Some(message.ordering_key).filter(|k| !k.is_empty()),
        deduplication_id: None,
        sender_id: None,
        lease: Lease(LeaseInner::PubSub(handler)),
    }
}

fn handler(lease: Lease) -> Handler {
    match lease.0 {
        LeaseInner::PubSub(h) => h,
        LeaseInner::Sqs { .. } => {
            unreachable!("an SQS lease cannot come from a Pub/Sub subscription")
        }
    }
}

#[async_trait]
impl MessageQueue for PubSubQueue {
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let mut prefetched = self.prefetched.lock().await;
        let first = match tokio::time::timeout(wait, prefetched.recv()).await {
            Err(_) | Ok(None) => return Ok(Vec::new()),
            Ok(Some(item)) => item?,
        };
        let mut out = vec![to_received(first.0, first.1)];
        while out.len() < max {
            match prefetched.try_recv() {
                Ok(Ok((m, h))) => out.push(to_received(m, h)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "streaming pull reported an error");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, lease: Lease) -> Result<(), QueueError> {
        match handler(lease) {
            Handler::ExactlyOnce(h) => h.confirmed_ack().await.map_err(|e| {
                let kind = match e {
                    google_cloud_pubsub::error::AckError::LeaseExpired => {
                        QueueErrorKind::LeaseExpired
                    }
                    _ => QueueErrorKind::Unavailable,
                };
                QueueError::new("Acknowledge", kind, e.to_string())
            }),
            other => {
                other.ack();
                Ok(())
            }
        }
    }

    async fn retry_after(&self, lease: Lease, delay: Duration) -> Result<(), QueueError> {
        let handler = handler(lease);
        if delay.is_zero() || *self.closing.borrow() {
            handler.nack();
            return Ok(());
        }
        // Pub/Sub has no per-message "visible again in N seconds": we keep the message
        // leased (the client extends the lease) and nack it when the backoff is over, or at
        // once when the sidecar shuts down. The subscription's retry policy applies on top.
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = until_closing(&mut closing) => {}
            }
            handler.nack();
        });
        Ok(())
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<(), QueueError> {
        leases.into_iter().map(handler).for_each(Handler::nack);
        Ok(())
    }

    async fn extend(&self, _leases: &[&Lease], _lease_for: Duration) -> Result<(), QueueError> {
        Ok(())
    }

    fn needs_lease_extension(&self) -> bool {
        false
    }

    fn receive_calls_the_queue(&self) -> bool {
        false
    }

    async fn send_to_dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &DeadLetterReason,
    ) -> Result<(), QueueError> {
        let publisher = self.dead_letter_publisher().await?;
        let mut attributes: Vec<(String, String)> = message
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.push((
            dead_letter_attributes::REASON.into(),
            reason.description.clone(),
        ));
        if let Some(status) = reason.status {
            attributes.push((dead_letter_attributes::STATUS.into(), status.to_string()));
        }
        attributes.push((
            dead_letter_attributes::SOURCE_MESSAGE_ID.into(),
            message.id.clone(),
        ));
        attributes.push((
            dead_letter_attributes::SOURCE_SUBSCRIPTION.into(),
            self.subscription.clone(),
        ));
        if let Some(key) = &message.ordering_group {
            // The dead-letter topic is not published with ordering; keep the key for redrive.
            attributes.push((dead_letter_attributes::ORDERING_KEY.into(), key.clone()));
        }
        let dead_letter = Message::new()
            .set_data(message.body.clone())
            .set_attributes(attributes);
        publisher
            .publish(dead_letter)
            .await
            .map(|_| ())
            .map_err(|e| map_publish_error(&e))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        // Pub/Sub exposes backlog only through Cloud Monitoring; without it the sidecar
        // reports what it sees itself (receive rate, age at receipt, in flight) instead.
        match &self.monitoring {
            Some(monitoring) => monitoring.backlog(SystemTime::now()).await,
            None => Ok(QueueStats::default()),
        }
    }

    async fn check(&self) -> Result<(), QueueError> {
        self.admin
            .get_subscription()
            .set_subscription(self.subscription.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_gax_error("GetSubscription", &e))
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.closing.send_replace(true);
        // Stop the stream first so nothing new arrives, then hand back what was prefetched.
        let shutdown = self.current_stream.lock().expect("stream lock").clone();
        let mut prefetched = self.prefetched.lock().await;
        prefetched.close();
        while let Ok(item) = prefetched.try_recv() {
            if let Ok((_, h)) = item {
                h.nack();
            }
        }
        drop(prefetched);
        if let Some(shutdown) = shutdown {
            tokio::spawn(async move { shutdown.shutdown().await });
        }
    }

    async fn flush(&self) {
        let shutdown = self.current_stream.lock().expect("stream lock").clone();
        if let Some(shutdown) = shutdown {
            // Completes once every ack and nack the client holds has been sent.
            let _ = tokio::time::timeout(Duration::from_secs(10), shutdown.shutdown()).await;
        }
    }

    fn queue_name(&self) -> &str {
        &self.name
    }

    fn provider(&self) -> Provider {
        Provider::PubSub
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_are_named_even_after_the_clients_retries() {
        use google_cloud_gax::error::{CredentialsError, Error};
        let no_metadata_server = || {
            Error::authentication(CredentialsError::from_msg(
                true,
                "cannot reach the metadata server",
            ))
        };
        for err in [no_metadata_server(), Error::exhausted(no_metadata_server())] {
            let mapped = map_gax_error("GetTopic", &err);
            assert_eq!(mapped.kind, QueueErrorKind::PermissionDenied, "{err}");
            assert!(
                mapped
                    .to_string()
                    .contains("GOOGLE_APPLICATION_CREDENTIALS"),
                "{mapped}"
            );
        }
        let unreachable = map_gax_error("GetTopic", &Error::exhausted(Error::io("reset")));
        assert_eq!(unreachable.kind, QueueErrorKind::Unavailable);
    }

    #[test]
    fn emulator_endpoint_prefers_the_explicit_one() {
        assert_eq!(
            emulator_endpoint(Some("127.0.0.1:8085")).as_deref(),
            Some("http://127.0.0.1:8085")
        );
        assert_eq!(
            emulator_endpoint(Some("http://h:1")).as_deref(),
            Some("http://h:1")
        );
    }

    #[test]
    fn short_name_is_the_last_segment() {
        assert_eq!(short_name("projects/p/subscriptions/orders"), "orders");
    }
}

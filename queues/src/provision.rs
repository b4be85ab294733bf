//! Creating a queue together with its dead-letter queue.
//!
//! The operator builds on these; the test harness and the local demo use them directly.
//! Every function is idempotent: an existing queue with the same name is reused.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, RetryPolicy};

use crate::pubsub::{configure_builder, emulator_endpoint, map_gax_error, subscription_admin};
use crate::sqs::map_sdk_error;
use crate::{Provider, QueueError, QueueErrorKind};

/// What to create. Names are short names (no URL, no project prefix).
#[derive(Clone, Debug)]
pub struct QueueRequest {
    pub provider: Provider,
    pub name: String,
    /// Pub/Sub project.
    pub project: Option<String>,
    pub endpoint: Option<String>,
    /// Deliveries before the queue moves a message to the dead-letter queue.
    pub max_deliveries: u32,
    /// SQS visibility timeout / Pub/Sub ack deadline.
    pub lease: Duration,
    /// SQS FIFO queue, or Pub/Sub subscription with message ordering.
    pub ordered: bool,
    /// Pub/Sub retry policy backoff bounds.
    pub retry_backoff: Option<(Duration, Duration)>,
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
}

pub async fn ensure_queue(request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
    match request.provider {
        Provider::Sqs => ensure_sqs(request).await,
        Provider::PubSub => ensure_pubsub(request).await,
    }
}

async fn ensure_sqs(request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
    let client = crate::sqs::client(request.endpoint.as_deref(), None).await;
    let suffix = if request.ordered { ".fifo" } else { "" };
    let base = request.name.trim_end_matches(".fifo");
    let mut dlq_attributes = HashMap::from([(
        aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
        "1209600".to_string(),
    )]);
    if request.ordered {
        dlq_attributes.insert(
            aws_sdk_sqs::types::QueueAttributeName::FifoQueue,
            "true".into(),
        );
    }
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{base}-dlq{suffix}"))
        .set_attributes(Some(dlq_attributes))
        .send()
        .await
        .map_err(|e| map_sdk_error("CreateQueue", e))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| map_sdk_error("GetQueueAttributes", e))?
        .attributes
        .unwrap_or_default()
        .remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .ok_or_else(|| {
            QueueError::new(
                "GetQueueAttributes",
                QueueErrorKind::Other,
                "the DLQ has no QueueArn",
            )
        })?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": request.max_deliveries.to_string(),
    });
    let mut attributes = HashMap::from([
        (
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            redrive.to_string(),
        ),
        (
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            request.lease.as_secs().to_string(),
        ),
    ]);
    if request.ordered {
        attributes.insert(
            aws_sdk_sqs::types::QueueAttributeName::FifoQueue,
            "true".into(),
        );
        attributes.insert(
            aws_sdk_sqs::types::QueueAttributeName::ContentBasedDeduplication,
            "true".into(),
        );
    }
    let url = client
        .create_queue()
        .queue_name(format!("{base}{suffix}"))
        .set_attributes(Some(attributes))
        .send()
        .await
        .map_err(|e| map_sdk_error("CreateQueue", e))?
        .queue_url
        .unwrap_or_default();
    Ok(ProvisionedQueue {
        publish_to: url.clone(),
        queue: url,
        dead_letter_publish_to: dlq_url.clone(),
        dead_letter: dlq_url,
    })
}

fn ignore_exists<T>(
    result: Result<T, google_cloud_pubsub::Error>,
    operation: &'static str,
) -> Result<(), QueueError> {
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.status()
                .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::AlreadyExists) =>
        {
            Ok(())
        }
        Err(e) => Err(map_gax_error(operation, &e)),
    }
}

async fn ensure_pubsub(request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
    let project = request.project.as_deref().ok_or_else(|| {
        QueueError::new(
            "CreateTopic",
            QueueErrorKind::Invalid,
            "a Pub/Sub queue needs a project",
        )
    })?;
    let endpoint = emulator_endpoint(request.endpoint.as_deref());
    let topics = configure_builder!(TopicAdmin::builder(), endpoint.as_ref())
        .build()
        .await
        .map_err(|e| QueueError::new("connect", QueueErrorKind::Invalid, e.to_string()))?;
    let subscriptions = subscription_admin(endpoint.as_ref()).await?;
    let topic = format!("projects/{project}/topics/{}", request.name);
    let dlq_topic = format!("projects/{project}/topics/{}-dlq", request.name);
    let subscription = format!("projects/{project}/subscriptions/{}", request.name);
    let dlq_subscription = format!("projects/{project}/subscriptions/{}-dlq", request.name);
    for name in [&topic, &dlq_topic] {
        ignore_exists(
            topics.create_topic().set_name(name.clone()).send().await,
            "CreateTopic",
        )?;
    }
    // The dead-letter topic gets its subscription first, so no dead letter is ever published
    // to a topic nobody keeps.
    ignore_exists(
        subscriptions
            .create_subscription()
            .set_name(dlq_subscription.clone())
            .set_topic(dlq_topic.clone())
            .set_ack_deadline_seconds(60)
            .send()
            .await,
        "CreateSubscription",
    )?;
    let mut create = subscriptions
        .create_subscription()
        .set_name(subscription.clone())
        .set_topic(topic.clone())
        .set_ack_deadline_seconds(request.lease.as_secs().clamp(10, 600) as i32)
        .set_enable_message_ordering(request.ordered)
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(dlq_topic.clone())
                .set_max_delivery_attempts(request.max_deliveries.clamp(5, 100) as i32),
        );
    if let Some((min, max)) = request.retry_backoff {
        create = create.set_retry_policy(
            RetryPolicy::new()
                .set_minimum_backoff(google_cloud_wkt::Duration::try_from(min).unwrap_or_default())
                .set_maximum_backoff(google_cloud_wkt::Duration::try_from(max).unwrap_or_default()),
        );
    }
    ignore_exists(create.send().await, "CreateSubscription")?;
    Ok(ProvisionedQueue {
        queue: subscription,
        dead_letter: dlq_subscription,
        publish_to: topic,
        dead_letter_publish_to: dlq_topic,
    })
}

/// A message to publish, provider-neutral.
#[derive(Clone, Debug, Default)]
pub struct OutgoingMessage {
    pub body: Vec<u8>,
    pub attributes: Vec<(String, String)>,
    /// SQS FIFO message group / Pub/Sub ordering key.
    pub ordering_group: Option<String>,
}

/// Publishes messages in order and returns their ids. A producer-side helper for tests,
/// the demo and the benchmarks; applications use their own SDK.
pub async fn publish(
    provider: Provider,
    endpoint: Option<&str>,
    destination: &str,
    messages: Vec<OutgoingMessage>,
) -> Result<Vec<String>, QueueError> {
    match provider {
        Provider::Sqs => {
            let client = crate::sqs::client(endpoint, Some(destination)).await;
            let fifo = destination.ends_with(".fifo");
            let mut ids = Vec::with_capacity(messages.len());
            for (index, chunk) in messages.chunks(crate::sqs::MAX_BATCH).enumerate() {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let mut entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(String::from_utf8_lossy(&m.body));
                        for (k, v) in &m.attributes {
                            entry = entry.message_attributes(
                                k,
                                aws_sdk_sqs::types::MessageAttributeValue::builder()
                                    .data_type("String")
                                    .string_value(v)
                                    .build()
                                    .expect("data type is set"),
                            );
                        }
                        if fifo {
                            entry = entry
                                .message_group_id(
                                    m.ordering_group.clone().unwrap_or_else(|| "default".into()),
                                )
                                .message_deduplication_id(format!("{index}-{i}-{}", uniq()));
                        }
                        entry.build().expect("id and body are set")
                    })
                    .collect::<Vec<_>>();
                let out = client
                    .send_message_batch()
                    .queue_url(destination)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| map_sdk_error("SendMessageBatch", e))?;
                if let Some(failed) = out.failed().first() {
                    return Err(QueueError::new(
                        "SendMessageBatch",
                        QueueErrorKind::Other,
                        failed.code().to_string(),
                    ));
                }
                let mut sent: Vec<_> = out.successful().to_vec();
                sent.sort_by_key(|s| s.id().parse::<usize>().unwrap_or(0));
                ids.extend(sent.into_iter().map(|s| s.message_id().to_string()));
            }
            Ok(ids)
        }
        Provider::PubSub => {
            let endpoint = emulator_endpoint(endpoint);
            let publisher = configure_builder!(
                Publisher::builder(destination.to_string()),
                endpoint.as_ref()
            )
            .build()
            .await
            .map_err(|e| QueueError::new("connect", QueueErrorKind::Invalid, e.to_string()))?;
            let futures: Vec<_> = messages
                .into_iter()
                .map(|m| {
                    let mut message = Message::new().set_data(m.body).set_attributes(m.attributes);
                    if let Some(key) = m.ordering_group {
                        message = message.set_ordering_key(key);
                    }
                    publisher.publish(message)
                })
                .collect();
            let mut ids = Vec::with_capacity(futures.len());
            for future in futures {
                ids.push(
                    future
                        .await
                        .map_err(|e| crate::pubsub::map_publish_error(&e))?,
                );
            }
            Ok(ids)
        }
    }
}

fn uniq() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

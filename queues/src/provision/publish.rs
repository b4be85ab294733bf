//! A producer-side helper: the operator's periodic tasks, tests, the demo and the
//! benchmarks; applications publish with their own SDK.

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

use crate::pubsub::{configure_builder, emulator_endpoint};
use crate::sqs::map_sdk_error;
use crate::{Provider, QueueError, QueueErrorKind};

/// A message to publish, provider-neutral.
#[derive(Clone, Debug, Default)]
pub struct OutgoingMessage {
    pub body: Vec<u8>,
    pub attributes: Vec<(String, String)>,
    /// SQS FIFO message group / Pub/Sub ordering key.
    pub ordering_group: Option<String>,
    /// SQS FIFO: the deduplication id (a message sent twice with one id within five minutes
    /// arrives once). Without one, each message gets a unique id.
    pub deduplication_id: Option<String>,
}

/// Publishes messages in order and returns their ids. It sets up a client per call: for
/// tests, the demo and the operator's periodic tasks (a message a minute at most), not for
/// a stream of messages.
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
                                .message_deduplication_id(
                                    m.deduplication_id
                                        .clone()
                                        .unwrap_or_else(|| format!("{index}-{i}-{}", uniq())),
                                );
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

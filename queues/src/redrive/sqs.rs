//! An SQS redrive pass: long-polled receives from the dead-letter queue, each batch copied
//! with SendMessageBatch and deleted with DeleteMessageBatch once the copy is confirmed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};

use super::{
    REDRIVE_ATTRIBUTE, RedrivePass, RedriveRequest, carried_attributes, deduplication_id,
    redriven_by,
};
use crate::sqs::{
    MAX_BATCH, MAX_MESSAGE_ATTRIBUTES, MAX_VISIBILITY, change_visibility_batch, classify_code,
    map_sdk_error,
};
use crate::{QueueError, QueueErrorKind};

/// A long poll of one second: short polling asks a subset of SQS's servers and can answer
/// "empty" while messages exist, which would end a redrive early.
const RECEIVE_WAIT_SECONDS: i32 = 1;
/// How long past the budget a received message stays invisible: a message left again must not
/// come back within the pass (it would be counted twice), nor one whose copy is in progress.
const VISIBILITY_MARGIN: Duration = Duration::from_secs(30);
/// SQS's limit on a whole SendMessageBatch (the sum of its messages). Counted conservatively
/// against the classic 256 KiB, which every SQS-compatible server accepts.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Used when a FIFO destination is fed from a dead-letter queue without groups, which FIFO
/// requires on every message.
const FALLBACK_GROUP: &str = "ferry-redrive";

pub(super) async fn pass(request: &RedriveRequest<'_>) -> Result<RedrivePass, QueueError> {
    let started = Instant::now();
    let client = crate::sqs::client(request.endpoint, Some(request.dead_letter)).await;
    let mut pass = RedrivePass::default();
    // Receipt handles of messages left again, kept invisible until the pass ends so that the
    // pass's next receives do not return them again.
    let mut held = Vec::new();
    let outcome = async {
        loop {
            if started.elapsed() >= request.budget {
                return Ok(false);
            }
            let received = receive(&client, request).await?;
            if received.is_empty() {
                return Ok(true);
            }
            let mut to_move = Vec::with_capacity(received.len());
            for message in received {
                if redriven_by(marker(&message), request.request) {
                    held.extend(message.receipt_handle);
                    pass.left_again += 1;
                } else {
                    to_move.push(message);
                }
            }
            for batch in send_batches(to_move) {
                pass.moved += copy_then_delete(&client, request, batch).await?;
            }
        }
    }
    .await;
    // Handed back even when the pass failed, so they do not stay invisible for the whole
    // visibility timeout. A failure here loses nothing: they return when it ends.
    if let Err(err) = change_visibility_batch(
        &client,
        request.dead_letter,
        "ChangeMessageVisibilityBatch",
        held,
        Duration::ZERO,
    )
    .await
    {
        tracing::warn!(error = %err, "could not hand back dead letters left again; they return when their visibility timeout ends");
    }
    pass.finished = outcome?;
    Ok(pass)
}

async fn receive(
    client: &Client,
    request: &RedriveRequest<'_>,
) -> Result<Vec<Message>, QueueError> {
    let visibility = (request.budget + VISIBILITY_MARGIN).min(MAX_VISIBILITY);
    let visibility = visibility.as_secs() + u64::from(visibility.subsec_nanos() > 0);
    let out = client
        .receive_message()
        .queue_url(request.dead_letter)
        .max_number_of_messages(MAX_BATCH as i32)
        .wait_time_seconds(RECEIVE_WAIT_SECONDS)
        .visibility_timeout(visibility as i32)
        // The group is the only system attribute a copy needs: FIFO requires it, and it
        // keeps the group's order in the destination.
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| map_sdk_error("ReceiveMessage", e))?;
    // A message without a receipt handle cannot be deleted or handed back; it is left alone
    // and returns when its visibility timeout ends.
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.receipt_handle.is_some())
        .collect())
}

fn marker(message: &Message) -> Option<&str> {
    message
        .message_attributes
        .as_ref()?
        .get(REDRIVE_ATTRIBUTE)?
        .string_value
        .as_deref()
}

/// Splits received messages into SendMessageBatch calls: at most ten entries and
/// [`MAX_BATCH_BYTES`] each, in the order received (a FIFO group's order is kept).
fn send_batches(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut batches: Vec<Vec<Message>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message_bytes(&message);
        match batches.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                batch.push(message);
            }
            _ => {
                bytes = size;
                batches.push(vec![message]);
            }
        }
    }
    batches
}

/// A message's size as SQS counts it: body, plus each attribute's name, type and value.
fn message_bytes(message: &Message) -> usize {
    let body = message.body.as_deref().map_or(0, str::len);
    let attributes: usize = message
        .message_attributes
        .iter()
        .flatten()
        .map(|(name, value)| {
            name.len()
                + value.data_type.len()
                + value.string_value.as_deref().map_or(0, str::len)
                + value.binary_value.as_ref().map_or(0, |b| b.as_ref().len())
        })
        .sum();
    // The marker, which may be added.
    body + attributes + REDRIVE_ATTRIBUTE.len() + "String".len() + super::MAX_REQUEST_CHARS * 4
}

/// Copies one batch to the destination, then deletes from the dead-letter queue exactly the
/// messages whose copy SQS confirmed. Returns how many were moved; a message whose copy failed
/// is handed back and the failure returned.
async fn copy_then_delete(
    client: &Client,
    request: &RedriveRequest<'_>,
    batch: Vec<Message>,
) -> Result<u64, QueueError> {
    let fifo = request.destination.ends_with(".fifo");
    let marker = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(request.request)
        .build()
        .map_err(|e| QueueError::new("SendMessageBatch", QueueErrorKind::Invalid, e.to_string()))?;
    let entries = batch
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let attributes: HashMap<String, MessageAttributeValue> = carried_attributes(
                message.message_attributes.clone().unwrap_or_default(),
                marker.clone(),
                Some(MAX_MESSAGE_ATTRIBUTES),
            )
            .into_iter()
            .collect();
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(message.body.as_deref().unwrap_or_default())
                .set_message_attributes(Some(attributes));
            if fifo {
                let group = message
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .map_or(FALLBACK_GROUP, String::as_str);
                // Without a message id (never seen) the receipt handle still makes a
                // deduplication id; it only dedups within this receive.
                let source_id = message
                    .message_id
                    .as_deref()
                    .or(message.receipt_handle.as_deref())
                    .unwrap_or_default();
                entry = entry
                    .message_group_id(group)
                    .message_deduplication_id(deduplication_id(source_id, request.request));
            }
            entry.build().map_err(|e| {
                QueueError::new("SendMessageBatch", QueueErrorKind::Invalid, e.to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sent = match client
        .send_message_batch()
        .queue_url(request.destination)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(sent) => sent,
        Err(err) => {
            let err = map_sdk_error("SendMessageBatch", err);
            hand_back(client, request, batch.iter()).await;
            return Err(err);
        }
    };
    let copied: Vec<&Message> = sent
        .successful()
        .iter()
        .filter_map(|entry| batch.get(entry.id().parse::<usize>().ok()?))
        .collect();
    let first_failure = sent.failed().first().map(|failure| {
        QueueError::new(
            "SendMessageBatch",
            classify_code(failure.code()),
            format!(
                "{}: {}",
                failure.code(),
                failure
                    .message()
                    .unwrap_or("a copy to the destination failed")
            ),
        )
    });
    if first_failure.is_some() {
        let failed: Vec<&Message> = sent
            .failed()
            .iter()
            .filter_map(|entry| batch.get(entry.id().parse::<usize>().ok()?))
            .collect();
        hand_back(client, request, failed.into_iter()).await;
    }
    let moved = delete(client, request.dead_letter, &copied).await?;
    match first_failure {
        Some(err) => Err(err),
        None => Ok(moved),
    }
}

/// Deletes copied messages from the dead-letter queue. A delete that fails leaves a message
/// in both queues (it returns to the dead-letter queue when its visibility timeout ends): a
/// duplicate, never a loss, and reported as the pass's error.
async fn delete(
    client: &Client,
    dead_letter: &str,
    copied: &[&Message],
) -> Result<u64, QueueError> {
    if copied.is_empty() {
        return Ok(0);
    }
    let entries = copied
        .iter()
        .enumerate()
        .map(|(index, message)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .set_receipt_handle(message.receipt_handle.clone())
                .build()
                .map_err(|e| {
                    QueueError::new("DeleteMessageBatch", QueueErrorKind::Invalid, e.to_string())
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = client
        .delete_message_batch()
        .queue_url(dead_letter)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| map_sdk_error("DeleteMessageBatch", e))?;
    if let Some(failure) = out.failed().first() {
        return Err(QueueError::new(
            "DeleteMessageBatch",
            classify_code(failure.code()),
            format!(
                "{} of {} copied messages could not be deleted from the dead-letter queue and will be redriven again (a duplicate): {}",
                out.failed().len(),
                copied.len(),
                failure.message().unwrap_or(failure.code())
            ),
        ));
    }
    Ok(out.successful().len() as u64)
}

/// Makes messages whose copy failed visible again at once; they stay in the dead-letter queue.
async fn hand_back<'m>(
    client: &Client,
    request: &RedriveRequest<'_>,
    messages: impl Iterator<Item = &'m Message>,
) {
    let receipts = messages.filter_map(|m| m.receipt_handle.clone()).collect();
    if let Err(err) = change_visibility_batch(
        client,
        request.dead_letter,
        "ChangeMessageVisibilityBatch",
        receipts,
        Duration::ZERO,
    )
    .await
    {
        tracing::warn!(error = %err, "could not hand back dead letters whose copy failed; they return when their visibility timeout ends");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body_bytes: usize) -> Message {
        Message::builder().body("x".repeat(body_bytes)).build()
    }

    #[test]
    fn batches_hold_ten_messages_and_fit_the_size_limit() {
        let sizes: Vec<usize> = send_batches((0..25).map(|_| message(10)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [10, 10, 5]);

        let big = send_batches((0..5).map(|_| message(100 * 1024)).collect());
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);

        // A message too big for any batch still goes, alone (SQS then decides).
        let huge = send_batches(vec![message(300 * 1024), message(1)]);
        assert_eq!(huge.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }
}

//! SQS: the dead-letter queue first, then the queue with its redrive policy, then the DLQ's
//! redrive-allow policy naming the queue.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName as Attr;

use super::{DeleteOutcome, ProvisionedQueue, QueueRequest, conflict};
use crate::sqs::map_sdk_error;
use crate::{QueueError, QueueErrorKind};

const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

struct Names {
    queue: String,
    dead_letter: String,
}

fn names(request: &QueueRequest) -> Names {
    let suffix = if request.ordered { ".fifo" } else { "" };
    let base = request.name.trim_end_matches(".fifo");
    Names {
        queue: format!("{base}{suffix}"),
        dead_letter: format!("{base}-dlq{suffix}"),
    }
}

/// The attributes the request asks for, as SQS spells them. Redrive settings are added
/// separately because they need the other queue's ARN.
fn desired_attributes(request: &QueueRequest, dead_letter: bool) -> HashMap<Attr, String> {
    let mut attributes = HashMap::new();
    let retention = if dead_letter {
        request
            .dead_letter_retention
            .unwrap_or(DEFAULT_DEAD_LETTER_RETENTION)
    } else {
        request
            .retention
            .unwrap_or(Duration::from_secs(4 * 24 * 3600))
    };
    attributes.insert(
        Attr::MessageRetentionPeriod,
        retention.as_secs().to_string(),
    );
    if !dead_letter {
        attributes.insert(Attr::VisibilityTimeout, request.lease.as_secs().to_string());
        attributes.insert(
            Attr::DelaySeconds,
            request.delay.unwrap_or_default().as_secs().to_string(),
        );
    }
    if request.ordered {
        attributes.insert(Attr::FifoQueue, "true".into());
        if !dead_letter {
            attributes.insert(
                Attr::ContentBasedDeduplication,
                request.content_based_deduplication.to_string(),
            );
        }
    }
    // Encrypted at rest by default: with the customer's key when given, else SQS-managed.
    match &request.kms_key {
        Some(key) => {
            attributes.insert(Attr::KmsMasterKeyId, key.clone());
        }
        None => {
            attributes.insert(Attr::SqsManagedSseEnabled, "true".into());
        }
    }
    attributes
}

fn redrive_policy(dead_letter_arn: &str, max_deliveries: u32) -> String {
    serde_json::json!({ "deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_deliveries })
        .to_string()
}

fn redrive_allow_policy(queue_arn: &str) -> String {
    serde_json::json!({ "redrivePermission": "byQueue", "sourceQueueArns": [queue_arn] })
        .to_string()
}

/// Whether an attribute as SQS reports it matches what we asked for. JSON policies are
/// compared as JSON, because SQS may reorder keys and turn numbers into strings.
fn same_value(attr: &Attr, current: &str, desired: &str) -> bool {
    match attr {
        Attr::RedrivePolicy | Attr::RedriveAllowPolicy => {
            let normalize = |text: &str| -> Option<serde_json::Value> {
                let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
                if let Some(count) = value.get_mut("maxReceiveCount") {
                    let as_number = count
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .or_else(|| count.as_u64());
                    *count = serde_json::json!(as_number);
                }
                Some(value)
            };
            normalize(current).is_some() && normalize(current) == normalize(desired)
        }
        _ => current.eq_ignore_ascii_case(desired),
    }
}

/// The attributes SQS cannot change after creation.
fn immutable(attr: &Attr) -> bool {
    matches!(attr, Attr::FifoQueue)
}

struct Existing {
    url: String,
    tags: HashMap<String, String>,
}

async fn find(client: &Client, name: &str) -> Result<Option<Existing>, QueueError> {
    crate::calls::record("sqs", "GetQueueUrl");
    let url = match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => out.queue_url.unwrap_or_default(),
        Err(err) => {
            let err = map_sdk_error("GetQueueUrl", err);
            return if err.kind == QueueErrorKind::NotFound {
                Ok(None)
            } else {
                Err(err)
            };
        }
    };
    crate::calls::record("sqs", "ListQueueTags");
    let tags = client
        .list_queue_tags()
        .queue_url(&url)
        .send()
        .await
        .map_err(|e| map_sdk_error("ListQueueTags", e))?
        .tags
        .unwrap_or_default();
    Ok(Some(Existing { url, tags }))
}

async fn arn(client: &Client, url: &str) -> Result<String, QueueError> {
    crate::calls::record("sqs", "GetQueueAttributes");
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(Attr::QueueArn)
        .send()
        .await
        .map_err(|e| map_sdk_error("GetQueueAttributes", e))?
        .attributes
        .unwrap_or_default()
        .remove(&Attr::QueueArn)
        .ok_or_else(|| {
            QueueError::new(
                "GetQueueAttributes",
                QueueErrorKind::Other,
                format!("{url} has no QueueArn"),
            )
        })
}

/// Creates the queue, or checks ownership of the existing one and corrects drift. Returns
/// its URL; `created` and `corrected` collect what happened.
async fn converge(
    client: &Client,
    request: &QueueRequest,
    name: &str,
    attributes: HashMap<Attr, String>,
    created: &mut Vec<String>,
    corrected: &mut Vec<String>,
) -> Result<String, QueueError> {
    let owner_tags: HashMap<String, String> =
        request.owner.iter().flat_map(|o| o.labels()).collect();
    let Some(existing) = find(client, name).await? else {
        crate::calls::record("sqs", "CreateQueue");
        let url = client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .set_tags(Some(owner_tags).filter(|t| !t.is_empty()))
            .send()
            .await
            .map_err(|e| map_sdk_error("CreateQueue", e))?
            .queue_url
            .unwrap_or_default();
        created.push(name.to_string());
        return Ok(url);
    };
    if let Some(owner) = &request.owner
        && !owner.owns(&existing.tags)
    {
        if !request.adopt {
            return Err(conflict(&format!("SQS queue {name}"), &existing.tags));
        }
        crate::calls::record("sqs", "TagQueue");
        client
            .tag_queue()
            .queue_url(&existing.url)
            .set_tags(Some(owner_tags))
            .send()
            .await
            .map_err(|e| map_sdk_error("TagQueue", e))?;
        corrected.push(format!("{name}: owner (adopted)"));
    }
    crate::calls::record("sqs", "GetQueueAttributes");
    let current = client
        .get_queue_attributes()
        .queue_url(&existing.url)
        .attribute_names(Attr::All)
        .send()
        .await
        .map_err(|e| map_sdk_error("GetQueueAttributes", e))?
        .attributes
        .unwrap_or_default();
    let mut changes = HashMap::new();
    for (attr, desired) in attributes {
        let matches = current.get(&attr).is_some_and(|now| same_value(&attr, now, &desired))
            // SQS reports FifoQueue only for FIFO queues.
            || (attr == Attr::FifoQueue && desired == "false" && !current.contains_key(&attr))
            // Some SQS-compatible servers accept a redrive-allow policy but never report it;
            // setting it on every pass would look like endless drift.
            || (attr == Attr::RedriveAllowPolicy && !current.contains_key(&attr));
        if matches {
            continue;
        }
        if immutable(&attr) {
            return Err(QueueError::new(
                "SetQueueAttributes",
                QueueErrorKind::Invalid,
                format!(
                    "{name} has {attr}={:?} and SQS cannot change it; delete the queue or use another name",
                    current.get(&attr)
                ),
            ));
        }
        corrected.push(format!("{name}: {attr}"));
        changes.insert(attr, desired);
    }
    if !changes.is_empty() {
        crate::calls::record("sqs", "SetQueueAttributes");
        client
            .set_queue_attributes()
            .queue_url(&existing.url)
            .set_attributes(Some(changes))
            .send()
            .await
            .map_err(|e| map_sdk_error("SetQueueAttributes", e))?;
    }
    Ok(existing.url)
}

pub(super) async fn ensure(request: &QueueRequest) -> Result<ProvisionedQueue, QueueError> {
    let client = crate::sqs::client(request.endpoint.as_deref(), None).await;
    let names = names(request);
    let (mut created, mut corrected) = (Vec::new(), Vec::new());
    let dlq_url = converge(
        &client,
        request,
        &names.dead_letter,
        desired_attributes(request, true),
        &mut created,
        &mut corrected,
    )
    .await?;
    let dlq_arn = arn(&client, &dlq_url).await?;
    let mut attributes = desired_attributes(request, false);
    attributes.insert(
        Attr::RedrivePolicy,
        redrive_policy(&dlq_arn, request.max_deliveries),
    );
    let url = converge(
        &client,
        request,
        &names.queue,
        attributes,
        &mut created,
        &mut corrected,
    )
    .await?;
    // Only our queue may move messages into this DLQ (and be redriven back from it).
    let queue_arn = arn(&client, &url).await?;
    let allow = HashMap::from([(Attr::RedriveAllowPolicy, redrive_allow_policy(&queue_arn))]);
    let mut allow_set = Vec::new();
    converge(
        &client,
        request,
        &names.dead_letter,
        allow,
        &mut Vec::new(),
        &mut allow_set,
    )
    .await?;
    // Setting it right after creating the DLQ completes the creation; it is drift only when
    // the DLQ was already there.
    if !created.contains(&names.dead_letter) {
        corrected.extend(allow_set);
    }
    Ok(ProvisionedQueue {
        publish_to: url.clone(),
        queue: url,
        dead_letter_publish_to: dlq_url.clone(),
        dead_letter: dlq_url,
        corrected,
        created,
    })
}

pub(super) async fn delete(
    request: &QueueRequest,
    force: bool,
) -> Result<DeleteOutcome, QueueError> {
    let client = crate::sqs::client(request.endpoint.as_deref(), None).await;
    let names = names(request);
    let queue = find(&client, &names.queue).await?;
    let dead_letter = find(&client, &names.dead_letter).await?;
    for (name, existing) in [(&names.queue, &queue), (&names.dead_letter, &dead_letter)] {
        if let (Some(owner), Some(existing)) = (&request.owner, existing)
            && !owner.owns(&existing.tags)
        {
            return Err(conflict(&format!("SQS queue {name}"), &existing.tags));
        }
    }
    if let Some(dlq) = &dead_letter
        && !force
    {
        crate::calls::record("sqs", "GetQueueAttributes");
        let attributes = client
            .get_queue_attributes()
            .queue_url(&dlq.url)
            .attribute_names(Attr::ApproximateNumberOfMessages)
            .attribute_names(Attr::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Attr::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| map_sdk_error("GetQueueAttributes", e))?
            .attributes
            .unwrap_or_default();
        let waiting: u64 = attributes
            .values()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        if waiting > 0 {
            return Ok(DeleteOutcome::DeadLetterNotEmpty(waiting));
        }
    }
    for existing in [queue, dead_letter].into_iter().flatten() {
        crate::calls::record("sqs", "DeleteQueue");
        client
            .delete_queue()
            .queue_url(&existing.url)
            .send()
            .await
            .map_err(|e| map_sdk_error("DeleteQueue", e))?;
    }
    Ok(DeleteOutcome::Deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policies_compare_as_json() {
        let desired = redrive_policy("arn:aws:sqs:us-east-1:1:q-dlq", 5);
        let reported =
            r#"{"maxReceiveCount":"5","deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:q-dlq"}"#;
        assert!(same_value(&Attr::RedrivePolicy, reported, &desired));
        assert!(!same_value(
            &Attr::RedrivePolicy,
            &redrive_policy("arn:aws:sqs:us-east-1:1:q-dlq", 6),
            &desired
        ));
        assert!(same_value(&Attr::VisibilityTimeout, "30", "30"));
        assert!(same_value(&Attr::SqsManagedSseEnabled, "True", "true"));
    }

    #[test]
    fn fifo_queues_get_fifo_names_and_attributes() {
        let mut request = QueueRequest::new(crate::Provider::Sqs, "orders");
        request.ordered = true;
        let n = names(&request);
        assert_eq!(
            (n.queue.as_str(), n.dead_letter.as_str()),
            ("orders.fifo", "orders-dlq.fifo")
        );
        let attributes = desired_attributes(&request, false);
        assert_eq!(attributes[&Attr::FifoQueue], "true");
        assert_eq!(attributes[&Attr::SqsManagedSseEnabled], "true");
        assert_eq!(attributes[&Attr::VisibilityTimeout], "60");
        let dlq = desired_attributes(&request, true);
        assert_eq!(dlq[&Attr::MessageRetentionPeriod], "1209600");
        assert!(!dlq.contains_key(&Attr::VisibilityTimeout));
    }
}

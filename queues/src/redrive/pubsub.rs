//! A Pub/Sub redrive pass: unary pulls from the dead-letter subscription, each batch published
//! to the main topic, and a dead letter acknowledged only once its copy's publish is confirmed.
//!
//! Why unary Pull (over Pub/Sub's REST API) and not the client library's streaming pull, which
//! the sidecar uses: a pass must end, and ending a streaming pull means cancelling it. What a
//! pass hands back (nacks) before the cancel, the service may redeliver to the still-open
//! stream, where it waits out its ack deadline; what it hands back after, it cannot. (The
//! Pub/Sub emulator as installed made it worse: it kept sending messages to cancelled streams,
//! and a handed-back message came back after 2 s, 60-70 s, or not within 180 s in five
//! identical runs; the tests run it repaired, see docs/sandbox.md.) A unary pull leaves nothing
//! open between calls, so what a pass hands back is available at once. The client library has no unary
//! Pull, so these three calls (pull, modifyAckDeadline, acknowledge) go over REST; publishing
//! stays with the library's `Publisher`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use serde::Deserialize;

use super::{
    ORDERING_KEY_ATTRIBUTE, REDRIVE_ATTRIBUTE, RedrivePass, RedriveRequest, carried_attributes,
    redriven_by,
};
use crate::pubsub::{configure_builder, emulator_endpoint, map_publish_error};
use crate::{QueueError, QueueErrorKind};

/// No message for this long ends the pass as finished: Pub/Sub cannot say a subscription is
/// empty, and a pull answering at once may miss messages now and then, so it takes several
/// empty pulls in a row.
pub(super) const IDLE: Duration = Duration::from_secs(2);
/// The pause between two empty pulls while waiting for [`IDLE`] to pass.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Messages per pull: large enough to keep the publisher's batches full, small enough that
/// one batch is settled well within a pass.
const PULL_BATCH: usize = 250;
/// Received messages stay leased this long past the budget: a message left again must not
/// come back within the pass (it would be counted twice), nor one whose copy is in progress.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Pub/Sub's longest ack deadline.
const MAX_LEASE: Duration = Duration::from_secs(600);
const GOOGLE_ENDPOINT: &str = "https://pubsub.googleapis.com";

pub(super) async fn pass(request: &RedriveRequest<'_>) -> Result<RedrivePass, QueueError> {
    let started = Instant::now();
    let endpoint = emulator_endpoint(request.endpoint);
    let subscription = PullClient::new(endpoint.as_deref(), request.dead_letter)?;
    let publisher = configure_builder!(
        Publisher::builder(request.destination.to_string()),
        endpoint.as_ref()
    )
    .build()
    .await
    .map_err(|e| QueueError::new("connect", QueueErrorKind::Invalid, e.to_string()))?;
    let lease = (request.budget + LEASE_MARGIN).min(MAX_LEASE);

    let mut pass = RedrivePass::default();
    // Ack ids of messages left again, kept leased until the pass ends.
    let mut held = Vec::new();
    let outcome = async {
        let mut last_message = Instant::now();
        loop {
            if started.elapsed() >= request.budget {
                return Ok(false);
            }
            let pulled = subscription.pull().await?;
            if pulled.is_empty() {
                if last_message.elapsed() >= IDLE {
                    return Ok(true);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            last_message = Instant::now();
            let ack_ids: Vec<String> = pulled.iter().map(|p| p.ack_id.clone()).collect();
            if let Err(err) = subscription.modify_ack_deadline(&ack_ids, lease).await {
                subscription.hand_back(&ack_ids).await;
                return Err(err);
            }
            let mut to_move = Vec::with_capacity(pulled.len());
            for pulled in pulled {
                let marker = pulled.message.attributes.get(REDRIVE_ATTRIBUTE);
                if redriven_by(marker.map(String::as_str), request.request) {
                    held.push(pulled.ack_id);
                    pass.left_again += 1;
                } else {
                    to_move.push(pulled);
                }
            }
            pass.moved +=
                copy_then_ack(&subscription, &publisher, request.request, to_move).await?;
        }
    }
    .await;
    subscription.hand_back(&held).await;
    pass.finished = outcome?;
    Ok(pass)
}

/// Publishes a batch of copies at once, waits for every confirmation, then acknowledges the
/// dead letters whose copy the server confirmed and hands back the others. Returns how many
/// were moved, or the first publish failure.
async fn copy_then_ack(
    subscription: &PullClient,
    publisher: &Publisher,
    request: &str,
    batch: Vec<Pulled>,
) -> Result<u64, QueueError> {
    let (ack_ids, copies): (Vec<String>, Vec<_>) = batch
        .into_iter()
        .map(|pulled| {
            (
                pulled.ack_id,
                publisher.publish(copy(pulled.message, request)),
            )
        })
        .unzip();
    let results = futures::future::join_all(copies).await;
    let mut copied = Vec::with_capacity(ack_ids.len());
    let mut not_copied = Vec::new();
    let mut first_failure = None;
    for (ack_id, result) in ack_ids.into_iter().zip(results) {
        match result {
            Ok(_) => copied.push(ack_id),
            Err(err) => {
                first_failure.get_or_insert_with(|| map_publish_error(&err));
                not_copied.push(ack_id);
            }
        }
    }
    subscription.hand_back(&not_copied).await;
    subscription.acknowledge(&copied).await?;
    match first_failure {
        Some(err) => Err(err),
        None => Ok(copied.len() as u64),
    }
}

/// The copy of a dead letter: same data, its own attributes without the dead-letter
/// bookkeeping, the redrive marker, and its ordering key (kept in an attribute by the sidecar,
/// whose dead-letter topic is published without ordering).
fn copy(message: Message, request: &str) -> Message {
    let key = ordering_key(&message.ordering_key, &message.attributes);
    let attributes = carried_attributes(message.attributes, request.to_string(), None);
    let copy = Message::new()
        .set_data(message.data)
        .set_attributes(attributes);
    match key {
        Some(key) => copy.set_ordering_key(key),
        None => copy,
    }
}

fn ordering_key(own: &str, attributes: &HashMap<String, String>) -> Option<String> {
    Some(own)
        .filter(|k| !k.is_empty())
        .or_else(|| {
            attributes
                .get(ORDERING_KEY_ATTRIBUTE)
                .map(String::as_str)
                .filter(|k| !k.is_empty())
        })
        .map(str::to_string)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PullResponse {
    #[serde(default)]
    received_messages: Vec<Pulled>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pulled {
    ack_id: String,
    /// The library's own message type reads Pub/Sub's JSON (base64 data, camelCase names).
    #[serde(default)]
    message: Message,
}

/// Pull, modifyAckDeadline and acknowledge on one subscription, over Pub/Sub's REST API; with
/// Google credentials unless talking to the emulator.
struct PullClient {
    http: reqwest::Client,
    /// `https://pubsub.googleapis.com/v1/projects/p/subscriptions/s`
    url: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl PullClient {
    fn new(emulator: Option<&str>, subscription: &str) -> Result<Self, QueueError> {
        let credentials = match emulator {
            Some(_) => None,
            None => Some(
                google_cloud_auth::credentials::Builder::default()
                    .with_scopes(["https://www.googleapis.com/auth/pubsub"])
                    .build()
                    .map_err(|e| {
                        QueueError::new(
                            "Pull",
                            QueueErrorKind::PermissionDenied,
                            format!("no usable Google credentials ({e}); use Workload Identity, GOOGLE_APPLICATION_CREDENTIALS, or PUBSUB_EMULATOR_HOST for the emulator"),
                        )
                    })?,
            ),
        };
        let base = emulator.unwrap_or(GOOGLE_ENDPOINT).trim_end_matches('/');
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| QueueError::new("Pull", QueueErrorKind::Invalid, e.to_string()))?,
            url: format!("{base}/v1/{subscription}"),
            credentials,
        })
    }

    /// Whatever the subscription has now, up to [`PULL_BATCH`], without waiting: a pull that
    /// waits for messages would have to be abandoned at the end of the pass, and the
    /// emulator leases messages to an abandoned pull (they would be invisible until their ack
    /// deadline).
    async fn pull(&self) -> Result<Vec<Pulled>, QueueError> {
        let body = serde_json::json!({ "maxMessages": PULL_BATCH, "returnImmediately": true });
        let answer = self.call("Pull", "pull", body).await?;
        let response: PullResponse = serde_json::from_str(&answer).map_err(|e| {
            QueueError::new(
                "Pull",
                QueueErrorKind::Other,
                format!("unreadable answer: {e}"),
            )
        })?;
        Ok(response.received_messages)
    }

    async fn modify_ack_deadline(
        &self,
        ack_ids: &[String],
        lease: Duration,
    ) -> Result<(), QueueError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({ "ackIds": ack_ids, "ackDeadlineSeconds": lease.as_secs() });
        self.call("ModifyAckDeadline", "modifyAckDeadline", body)
            .await
            .map(drop)
    }

    /// Deletes copied dead letters. A failure leaves them in the dead-letter queue as well as
    /// in the destination (a duplicate when they are redriven again), and fails the pass.
    async fn acknowledge(&self, ack_ids: &[String]) -> Result<(), QueueError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({ "ackIds": ack_ids });
        self.call("Acknowledge", "acknowledge", body).await.map(drop).map_err(|e| {
            QueueError::new(
                e.operation,
                e.kind,
                format!("{} copied messages stay in the dead-letter queue too, and will be redriven again (a duplicate): {}", ack_ids.len(), e.message),
            )
        })
    }

    /// Makes messages available again at once (a nack). A failure loses nothing: they return
    /// when their lease ends.
    async fn hand_back(&self, ack_ids: &[String]) {
        if let Err(err) = self.modify_ack_deadline(ack_ids, Duration::ZERO).await {
            tracing::warn!(error = %err, "could not hand back dead letters; they return when their lease ends");
        }
    }

    async fn call(
        &self,
        operation: &'static str,
        method: &str,
        body: serde_json::Value,
    ) -> Result<String, QueueError> {
        let mut call = self.http.post(format!("{}:{method}", self.url)).json(&body);
        if let Some(credentials) = &self.credentials {
            let headers = credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|e| {
                    QueueError::new(
                        operation,
                        QueueErrorKind::PermissionDenied,
                        format!("Google credentials: {e}"),
                    )
                })?;
            if let google_cloud_auth::credentials::CacheableResource::New { data, .. } = headers {
                call = call.headers(data);
            }
        }
        let response = call
            .send()
            .await
            .map_err(|e| QueueError::new(operation, QueueErrorKind::Unavailable, e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| QueueError::new(operation, QueueErrorKind::Unavailable, e.to_string()))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(QueueError::new(
                operation,
                status_kind(status.as_u16()),
                format!("HTTP {status}: {}", text.trim()),
            ))
        }
    }
}

/// The kind of a failed REST call, by HTTP status (Google's mapping of its gRPC codes).
fn status_kind(status: u16) -> QueueErrorKind {
    match status {
        401 | 403 => QueueErrorKind::PermissionDenied,
        404 => QueueErrorKind::NotFound,
        429 => QueueErrorKind::Throttled,
        400 | 409 | 412 => QueueErrorKind::Invalid,
        408 | 499 | 500..=599 => QueueErrorKind::Unavailable,
        _ => QueueErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_keeps_data_and_ordering_and_drops_bookkeeping() {
        let dead_letter = Message::new()
            .set_data(bytes::Bytes::from_static(b"\x00{\"order\":1}\xff"))
            .set_ordering_key("customer-7")
            .set_attributes([
                ("tenant", "acme"),
                ("CloudPubSubDeadLetterSourceDeliveryCount", "5"),
                ("ferry-dead-letter-reason", "HTTP 500"),
                ("ferry-redrive", "older"),
            ]);
        let copy = copy(dead_letter, "fix-1");
        assert_eq!(&copy.data[..], b"\x00{\"order\":1}\xff");
        assert_eq!(copy.ordering_key, "customer-7");
        let expected: HashMap<String, String> = [("tenant", "acme"), ("ferry-redrive", "fix-1")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(copy.attributes, expected);
    }

    #[test]
    fn the_ordering_key_comes_from_the_sidecars_attribute_when_the_message_has_none() {
        let saved = HashMap::from([(ORDERING_KEY_ATTRIBUTE.to_string(), "k1".to_string())]);
        assert_eq!(ordering_key("", &saved).as_deref(), Some("k1"));
        assert_eq!(ordering_key("own", &saved).as_deref(), Some("own"));
        assert_eq!(ordering_key("", &HashMap::new()), None);
        let empty = HashMap::from([(ORDERING_KEY_ATTRIBUTE.to_string(), String::new())]);
        assert_eq!(ordering_key("", &empty), None);
    }

    #[test]
    fn a_pull_answer_is_read_with_binary_data_and_attributes() {
        let answer = r#"{"receivedMessages": [{
            "ackId": "projects/p/subscriptions/s:7",
            "message": {"data": "AHsifQ==", "attributes": {"tenant": "acme"},
                        "messageId": "7", "publishTime": "2026-01-02T03:04:05.678Z",
                        "orderingKey": "k"},
            "deliveryAttempt": 3
        }]}"#;
        let response: PullResponse = serde_json::from_str(answer).expect("parse");
        let [pulled] = &response.received_messages[..] else {
            panic!("one message")
        };
        assert_eq!(pulled.ack_id, "projects/p/subscriptions/s:7");
        assert_eq!(&pulled.message.data[..], b"\x00{\"}");
        assert_eq!(pulled.message.attributes["tenant"], "acme");
        assert_eq!(pulled.message.ordering_key, "k");
        let empty: PullResponse = serde_json::from_str("{}").expect("an empty answer");
        assert!(empty.received_messages.is_empty());
    }

    #[test]
    fn http_statuses_map_to_kinds() {
        assert_eq!(status_kind(404), QueueErrorKind::NotFound);
        assert_eq!(status_kind(403), QueueErrorKind::PermissionDenied);
        assert_eq!(status_kind(429), QueueErrorKind::Throttled);
        assert_eq!(status_kind(503), QueueErrorKind::Unavailable);
        assert_eq!(status_kind(400), QueueErrorKind::Invalid);
    }
}

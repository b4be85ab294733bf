//! A small SQS endpoint of our own, fast enough to measure a consumer (moto is not).
//!
//! It speaks the JSON protocol that `aws-sdk-sqs` and the AWS SDK for JavaScript v3 use
//! (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`, `application/x-amz-json-1.0`) for the
//! calls a consumer makes: ReceiveMessage, DeleteMessage(Batch), ChangeMessageVisibility
//! (Batch), GetQueueAttributes, GetQueueUrl. There is one queue, `bench`, whose messages are
//! made when a receive asks for them, numbered from 0: an unbounded supply while the
//! benchmark measures throughput, or released one at a time by [`SqsEndpoint::release`]
//! while it measures latency. Deletes are counted, not checked; nothing is redelivered (the
//! benchmark's worker always succeeds). Each served message can have its serving time
//! recorded, so the latency a consumer adds is measured from the moment the endpoint handed
//! the message over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::Value;

/// The queue's name; its URL is `http://127.0.0.1:<port>/000000000000/bench`.
pub const QUEUE_NAME: &str = "bench";
/// Long polls are honoured up to this long, so a drained benchmark phase ends quickly.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Bytes of padding in each body, so a message is about the size of a small JSON event.
const PAD: usize = 200;

#[derive(Default)]
struct Supply {
    /// The next message number to make.
    next: u64,
    /// Messages numbered below this may be served.
    limit: u64,
}

pub struct Shared {
    supply: Mutex<Supply>,
    released: tokio::sync::Notify,
    pub deletes: AtomicU64,
    pub served: AtomicU64,
    pub receive_calls: AtomicU64,
    pub delete_calls: AtomicU64,
    /// Message number → when it was served (Unix ns), while latency is being recorded.
    recorded: Mutex<Option<HashMap<u64, u64>>>,
    queue_url: String,
    attributes_md5: String,
    pad: String,
}

#[derive(Clone)]
pub struct SqsEndpoint {
    pub shared: Arc<Shared>,
}

impl SqsEndpoint {
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            supply: Mutex::new(Supply {
                next: 0,
                limit: u64::MAX,
            }),
            released: tokio::sync::Notify::new(),
            deletes: AtomicU64::new(0),
            served: AtomicU64::new(0),
            receive_calls: AtomicU64::new(0),
            delete_calls: AtomicU64::new(0),
            recorded: Mutex::new(None),
            queue_url: format!("http://127.0.0.1:{port}/000000000000/{QUEUE_NAME}"),
            attributes_md5: message_attributes_md5(&[("source", "String", "ferry-bench")]),
            pad: "x".repeat(PAD),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("SQS endpoint stopped: {e}");
            }
        });
        Ok(Self { shared })
    }

    pub fn queue_url(&self) -> String {
        self.shared.queue_url.clone()
    }

    pub fn endpoint_url(&self) -> String {
        self.shared
            .queue_url
            .trim_end_matches(&format!("/000000000000/{QUEUE_NAME}"))
            .to_string()
    }

    /// Every receive gets as many messages as it asks for.
    pub fn unlimited(&self) {
        self.shared.supply.lock().expect("supply lock").limit = u64::MAX;
        self.shared.released.notify_waiters();
    }

    /// No more messages until [`SqsEndpoint::release`].
    pub fn freeze(&self) {
        let mut supply = self.shared.supply.lock().expect("supply lock");
        supply.limit = supply.next;
    }

    /// Makes one more message available and wakes a waiting long poll.
    pub fn release(&self) -> u64 {
        let n = {
            let mut supply = self.shared.supply.lock().expect("supply lock");
            supply.limit = supply.limit.max(supply.next) + 1;
            supply.limit - 1
        };
        self.shared.released.notify_waiters();
        n
    }

    pub fn record_latency(&self, on: bool) -> HashMap<u64, u64> {
        let mut recorded = self.shared.recorded.lock().expect("record lock");
        let previous = recorded.take().unwrap_or_default();
        if on {
            *recorded = Some(HashMap::new());
        }
        previous
    }

    pub fn deletes(&self) -> u64 {
        self.shared.deletes.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn take(&self, max: u64) -> Option<std::ops::Range<u64>> {
        let mut supply = self.supply.lock().expect("supply lock");
        if supply.next >= supply.limit {
            return None;
        }
        let count = max.min(supply.limit - supply.next);
        let start = supply.next;
        supply.next += count;
        Some(start..start + count)
    }
}

/// MD5 of message attributes as SQS computes it: per attribute, sorted by name, the
/// length-prefixed name, data type, a transport byte (1 = string) and the value.
fn message_attributes_md5(attributes: &[(&str, &str, &str)]) -> String {
    let mut sorted = attributes.to_vec();
    sorted.sort();
    let mut hasher = Md5::new();
    for (name, data_type, value) in sorted {
        for part in [name, data_type] {
            hasher.update((part.len() as u32).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update([1u8]);
        hasher.update((value.len() as u32).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-amz-json-1.0")], body).into_response()
}

fn error(code: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [
            (
                header::CONTENT_TYPE,
                "application/x-amz-json-1.0".to_string(),
            ),
            (
                header::HeaderName::from_static("x-amzn-query-error"),
                format!("AWS.SimpleQueueService.{code};Sender"),
            ),
        ],
        serde_json::json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message})
            .to_string(),
    )
        .into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix("AmazonSQS.") else {
        return error(
            "UnsupportedOperation",
            "only the JSON protocol (X-Amz-Target: AmazonSQS.*) is served",
        );
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error("InvalidParameterValue", &format!("bad JSON: {e}")),
    };
    match operation {
        "ReceiveMessage" => receive(&shared, &request).await,
        "DeleteMessage" => {
            shared.delete_calls.fetch_add(1, Ordering::Relaxed);
            shared.deletes.fetch_add(1, Ordering::Relaxed);
            json("{}".into())
        }
        "DeleteMessageBatch" => {
            let ids = entry_ids(&request);
            shared.delete_calls.fetch_add(1, Ordering::Relaxed);
            shared
                .deletes
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            json(batch_result(&ids))
        }
        "ChangeMessageVisibility" => json("{}".into()),
        "ChangeMessageVisibilityBatch" => json(batch_result(&entry_ids(&request))),
        "GetQueueAttributes" => {
            let (visible, in_flight) = {
                let supply = shared.supply.lock().expect("supply lock");
                (
                    supply.limit.saturating_sub(supply.next).min(1_000_000),
                    supply
                        .next
                        .saturating_sub(shared.deletes.load(Ordering::Relaxed)),
                )
            };
            json(
                serde_json::json!({"Attributes": {
                    "ApproximateNumberOfMessages": visible.to_string(),
                    "ApproximateNumberOfMessagesNotVisible": in_flight.to_string(),
                    "ApproximateNumberOfMessagesDelayed": "0",
                    "QueueArn": format!("arn:aws:sqs:us-east-1:000000000000:{QUEUE_NAME}"),
                    "VisibilityTimeout": "60",
                }})
                .to_string(),
            )
        }
        "GetQueueUrl" => {
            if request.get("QueueName").and_then(Value::as_str) == Some(QUEUE_NAME) {
                json(serde_json::json!({"QueueUrl": shared.queue_url}).to_string())
            } else {
                error("QueueDoesNotExist", "the benchmark serves one queue, bench")
            }
        }
        other => error(
            "UnsupportedOperation",
            &format!("{other} is not served by the benchmark endpoint"),
        ),
    }
}

fn entry_ids(request: &Value) -> Vec<String> {
    request
        .get("Entries")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("Id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn batch_result(ids: &[String]) -> String {
    let successful: Vec<Value> = ids.iter().map(|id| serde_json::json!({"Id": id})).collect();
    serde_json::json!({"Successful": successful, "Failed": []}).to_string()
}

fn names(request: &Value, field: &str) -> Vec<String> {
    request
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn receive(shared: &Shared, request: &Value) -> Response {
    shared.receive_calls.fetch_add(1, Ordering::Relaxed);
    let max = request
        .get("MaxNumberOfMessages")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if !(1..=10).contains(&max) {
        return error(
            "InvalidParameterValue",
            "MaxNumberOfMessages must be between 1 and 10",
        );
    }
    let wait = Duration::from_secs(
        request
            .get("WaitTimeSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    )
    .min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let range = loop {
        let notified = shared.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(range) = shared.take(max) {
            break Some(range);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            break None;
        }
    };
    let Some(range) = range else {
        return json("{\"Messages\":[]}".into());
    };

    let mut system = names(request, "MessageSystemAttributeNames");
    system.extend(names(request, "AttributeNames"));
    let all_system = system.iter().any(|n| n == "All");
    let wants = |name: &str| all_system || system.iter().any(|n| n == name);
    let user = names(request, "MessageAttributeNames");
    let with_user_attributes = user
        .iter()
        .any(|n| n == "All" || n == ".*" || n == "source" || n == "source.*");

    let now_ns = unix_nanos();
    let now_ms = (now_ns / 1_000_000).to_string();
    let mut out = String::with_capacity(640 * (range.end - range.start) as usize);
    out.push_str("{\"Messages\":[");
    for (i, n) in range.clone().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", shared.pad);
        let body_md5 = hex(&Md5::digest(body.as_bytes()));
        let body_json = serde_json::to_string(&body).expect("a string serializes");
        out.push_str(&format!(
            "{{\"MessageId\":\"{:08x}-0000-4000-8000-{n:012x}\",\"ReceiptHandle\":\"rh-{n}\",\"MD5OfBody\":\"{body_md5}\",\"Body\":{body_json}",
            n >> 48
        ));
        let mut attributes = Vec::new();
        for (name, value) in [
            ("SentTimestamp", now_ms.as_str()),
            ("ApproximateReceiveCount", "1"),
            ("ApproximateFirstReceiveTimestamp", now_ms.as_str()),
            ("SenderId", "AIDAFERRYBENCH"),
        ] {
            if wants(name) {
                attributes.push(format!("\"{name}\":\"{value}\""));
            }
        }
        if !attributes.is_empty() {
            out.push_str(",\"Attributes\":{");
            out.push_str(&attributes.join(","));
            out.push('}');
        }
        if with_user_attributes {
            out.push_str(&format!(
                ",\"MD5OfMessageAttributes\":\"{}\",\"MessageAttributes\":{{\"source\":{{\"DataType\":\"String\",\"StringValue\":\"ferry-bench\"}}}}",
                shared.attributes_md5
            ));
        }
        out.push('}');
    }
    out.push_str("]}");
    shared
        .served
        .fetch_add(range.end - range.start, Ordering::Relaxed);
    if let Some(recorded) = shared.recorded.lock().expect("record lock").as_mut() {
        for n in range {
            recorded.insert(n, now_ns);
        }
    }
    json(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoint as aws-sdk-sqs sees it: receive with attributes, batch delete, counts.
    #[tokio::test]
    async fn serves_the_aws_sdk() {
        use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
        let endpoint = SqsEndpoint::start(0).await.expect("endpoint starts");
        let queue = endpoint.queue_url();
        let client = ferry_queues::sqs::client(Some(&endpoint.endpoint_url()), Some(&queue)).await;
        let out = client
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(3)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let messages = out.messages();
        assert_eq!(messages.len(), 3);
        let first = &messages[0];
        assert!(first.body().unwrap_or_default().starts_with("{\"n\":0,"));
        assert_eq!(
            first.md5_of_body(),
            Some(hex(&Md5::digest(first.body().unwrap_or_default().as_bytes())).as_str())
        );
        assert!(
            first
                .attributes()
                .is_some_and(|a| a.contains_key(&MessageSystemAttributeName::SentTimestamp))
        );
        assert_eq!(
            first
                .message_attributes()
                .and_then(|a| a["source"].string_value()),
            Some("ferry-bench")
        );
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("id and handle")
            })
            .collect();
        let deleted = client
            .delete_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("delete");
        assert_eq!(deleted.successful().len(), 3);
        assert_eq!(endpoint.deletes(), 3);

        // Frozen, a short long poll comes back empty; a release is served.
        endpoint.freeze();
        let empty = client
            .receive_message()
            .queue_url(&queue)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        assert!(empty.messages().is_empty());
        endpoint.release();
        let one = client
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        assert_eq!(one.messages().len(), 1);
    }
}

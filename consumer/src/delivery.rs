//! Delivering one message to the worker over HTTP, and what its answer means.

use std::time::{Duration, SystemTime};

use ferry_queues::model::periodic_task;
use ferry_queues::{Provider, ReceivedMessage};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use crate::config::StatusSet;
use crate::worker_client::{ExchangeError, WorkerClient};

/// Elastic Beanstalk's worker daemon identifies itself this way; workers that check for it
/// keep working, and the suffix says who is really calling.
const SQSD_USER_AGENT: &str = concat!("aws-sqsd/1.1 ferry-consumer/", env!("CARGO_PKG_VERSION"));
const FERRY_USER_AGENT: &str = concat!("ferry-consumer/", env!("CARGO_PKG_VERSION"));

/// Why the worker cannot take messages now.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerNotReady {
    /// It answered its readiness path, with a status outside 200-399: the worker runs and
    /// says it cannot work, rather than refusing the connection or not answering.
    pub answered: bool,
    pub why: String,
}

impl std::fmt::Display for WorkerNotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// What the worker did with a delivery, before we decide what that means.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerAnswer {
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    TimedOut,
    ConnectFailed(String),
    Failed(String),
}

impl WorkerAnswer {
    /// A short label for `ferry_deliveries_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Status { code, .. } => match code {
                200..=299 => "2xx",
                300..=399 => "3xx",
                429 => "429",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Self::TimedOut => "timeout",
            Self::ConnectFailed(_) => "connection_refused",
            Self::Failed(_) => "error",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Status { code, .. } => format!("worker answered HTTP {code}"),
            Self::TimedOut => "worker did not answer within FERRY_DELIVERY_TIMEOUT".into(),
            Self::ConnectFailed(e) => {
                format!("could not connect to the worker at FERRY_DELIVERY_URL: {e}")
            }
            Self::Failed(e) => format!("delivery failed: {e}"),
        }
    }
}

/// What to do with the message.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Ack,
    /// Retry after this long; the queue counts the delivery toward its dead-letter threshold.
    Retry(Duration),
    DeadLetter {
        status: u16,
    },
}

/// Retry timing: exponential from `min`, capped at `max`, with jitter so a fleet of pods
/// that failed together does not retry together.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// `attempt` is the delivery that just failed, 1 for the first. `jitter` is in [0, 1).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let full = self.min.mul_f64(2f64.powi(exponent as i32)).min(self.max);
        // "Equal jitter": never less than half the backoff, so retries still spread out.
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Decides the fate of a message from the worker's answer. Pure, so every rule is tested.
pub fn verdict(
    answer: &WorkerAnswer,
    attempt: u32,
    permanent: &StatusSet,
    retry: &RetryPolicy,
    jitter: f64,
) -> Verdict {
    match answer {
        WorkerAnswer::Status {
            code: 200..=299, ..
        } => Verdict::Ack,
        WorkerAnswer::Status { code, .. } if permanent.contains(*code) => {
            Verdict::DeadLetter { status: *code }
        }
        // The worker knows best when it can take the message again; the cap keeps a
        // mistaken header from parking a message for days.
        WorkerAnswer::Status {
            retry_after: Some(after),
            ..
        } => Verdict::Retry((*after).min(MAX_RETRY_AFTER)),
        _ => Verdict::Retry(retry.backoff(attempt, jitter)),
    }
}

/// SQS's longest visibility timeout; also the longest Retry-After we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(43_200);

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The headers that are the same on every delivery of a consumer, made once. A header value
/// made once and cloned shares its bytes; made per message it is a copy each time.
#[derive(Clone, Debug)]
pub struct FixedHeaders {
    provider: Provider,
    content_type: Option<HeaderValue>,
    queue: Option<HeaderValue>,
}

impl FixedHeaders {
    pub fn new(provider: Provider, queue_name: &str, content_type: &str) -> Self {
        Self {
            provider,
            content_type: header_value(content_type),
            queue: header_value(queue_name),
        }
    }
}

/// The request headers of a delivery, per the worker contract.
///
/// Built for every message, so it allocates as little as it can: fixed values are shared,
/// numbers and timestamps become header values without an intermediate copy, and the
/// attribute header names share one buffer.
pub fn delivery_headers(message: &ReceivedMessage, fixed: &FixedHeaders) -> HeaderMap {
    let families = match fixed.provider {
        Provider::Sqs => 2,
        Provider::PubSub => 1,
    };
    let mut headers = HeaderMap::with_capacity(12 + message.attributes.len() * families);
    if let Some(content_type) = &fixed.content_type {
        headers.append(CONTENT_TYPE, content_type.clone());
    }
    if let Some(queue) = &fixed.queue {
        headers.append(HeaderName::from_static("ferry-queue"), queue.clone());
    }
    let id = header_value(&message.id);
    if let Some(id) = &id {
        headers.append(HeaderName::from_static("ferry-message-id"), id.clone());
    }
    if let Some(group) = message.ordering_group.as_deref().and_then(header_value) {
        headers.append(HeaderName::from_static("ferry-ordering-key"), group);
    }
    let mut name = String::with_capacity(64);
    let mut put_attributes = |headers: &mut HeaderMap, prefix: &str| {
        for (attribute, value) in &message.attributes {
            name.clear();
            name.push_str(prefix);
            name.push_str(attribute);
            // Attribute names that cannot be header names (Pub/Sub allows almost anything)
            // are left out rather than mangled into something the worker would misread.
            if let (Ok(header), Some(value)) =
                (HeaderName::from_bytes(name.as_bytes()), header_value(value))
            {
                headers.append(header, value);
            }
        }
    };
    put_attributes(&mut headers, "ferry-attr-");
    let attempt = message.delivery_attempt.map(HeaderValue::from);
    if let Some(attempt) = &attempt {
        headers.append(
            HeaderName::from_static("ferry-delivery-attempt"),
            attempt.clone(),
        );
    }
    if let Some(at) = message.published_at.and_then(rfc3339) {
        headers.append(HeaderName::from_static("ferry-published-at"), at);
    }
    let task = periodic_task_headers(message);
    match fixed.provider {
        Provider::Sqs => {
            headers.append(USER_AGENT, HeaderValue::from_static(SQSD_USER_AGENT));
            if let Some(id) = id {
                headers.append(HeaderName::from_static("x-aws-sqsd-msgid"), id);
            }
            if let Some(queue) = &fixed.queue {
                headers.append(HeaderName::from_static("x-aws-sqsd-queue"), queue.clone());
            }
            if let Some(at) = message.first_received_at.and_then(rfc3339) {
                headers.append(HeaderName::from_static("x-aws-sqsd-first-received-at"), at);
            }
            if let Some(attempt) = attempt {
                headers.append(HeaderName::from_static("x-aws-sqsd-receive-count"), attempt);
            }
            put_attributes(&mut headers, "x-aws-sqsd-attr-");
            if let Some((name, scheduled_at)) = &task {
                headers.append(HeaderName::from_static("x-aws-sqsd-taskname"), name.clone());
                if let Some(at) = scheduled_at {
                    headers.append(
                        HeaderName::from_static("x-aws-sqsd-scheduled-at"),
                        at.clone(),
                    );
                }
                if let Some(sender) = message.sender_id.as_deref().and_then(header_value) {
                    headers.append(HeaderName::from_static("x-aws-sqsd-sender-id"), sender);
                }
            }
        }
        Provider::PubSub => {
            headers.append(USER_AGENT, HeaderValue::from_static(FERRY_USER_AGENT));
        }
    }
    if let Some((name, scheduled_at)) = task {
        headers.append(HeaderName::from_static("ferry-task-name"), name);
        if let Some(at) = scheduled_at {
            headers.append(HeaderName::from_static("ferry-scheduled-at"), at);
        }
    }
    headers
}

/// A periodic task's name and tick, when the message is one (see
/// `ferry_queues::model::periodic_task`).
fn periodic_task_headers(message: &ReceivedMessage) -> Option<(HeaderValue, Option<HeaderValue>)> {
    if message.attributes.is_empty() {
        return None;
    }
    let name = header_value(message.attributes.get(periodic_task::NAME_ATTRIBUTE)?)?;
    let scheduled_at = message
        .attributes
        .get(periodic_task::SCHEDULED_AT_ATTRIBUTE)
        .and_then(|at| header_value(at));
    Some((name, scheduled_at))
}

/// Where a message goes on the worker: a periodic task's own path, as Elastic Beanstalk's
/// worker daemon does, or (`None`) the configured `FERRY_DELIVERY_URL`.
pub fn task_path(message: &ReceivedMessage) -> Option<&str> {
    if message.attributes.is_empty() {
        return None;
    }
    message
        .attributes
        .get(periodic_task::PATH_ATTRIBUTE)
        .map(String::as_str)
}

/// Any text a header may carry, UTF-8 included (as obs-text, which workers' HTTP servers
/// accept); a value with control characters is left out.
fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// ISO 8601 in UTC with milliseconds, as the worker daemon sends it; written into one
/// buffer of the right size, which the header value then owns without a copy.
fn rfc3339(at: SystemTime) -> Option<HeaderValue> {
    use std::fmt::Write;
    let mut text = String::with_capacity("2023-11-14T22:13:20.123Z".len());
    write!(text, "{}", humantime::format_rfc3339_millis(at)).ok()?;
    HeaderValue::try_from(text).ok()
}

/// The HTTP side of delivery: the worker client (see `worker_client` for why it is our own)
/// and the delivery timeout.
pub struct Deliverer {
    client: WorkerClient,
    timeout: Duration,
    /// `FERRY_WORKER_READINESS_PATH`: what says the worker can take messages, beyond
    /// accepting a connection.
    readiness_path: Option<String>,
}

/// The longest a readiness check waits for the worker's answer: a worker busy starting may
/// be slow to answer, and the check is simply asked again.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

impl Deliverer {
    pub fn new(
        url: &str,
        concurrency: usize,
        connect_timeout: Duration,
        timeout: Duration,
        readiness_path: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: WorkerClient::new(url, concurrency, connect_timeout)?,
            timeout,
            readiness_path,
        })
    }

    /// `host:port` of the worker.
    pub fn worker_address(&self) -> &str {
        self.client.address()
    }

    /// What the sidecar waits for before receiving, for the log and `/readyz`.
    pub fn worker_awaited(&self) -> String {
        match &self.readiness_path {
            Some(path) => format!(
                "answer 200-399 at http://{}{path} (FERRY_WORKER_READINESS_PATH)",
                self.client.address()
            ),
            None => format!("listen on {} (FERRY_DELIVERY_URL)", self.client.address()),
        }
    }

    /// Whether this answer puts the worker's readiness in doubt, so that it is asked again
    /// before the next receive: nothing listening, always; with a readiness path, anything
    /// that says the worker rather than the message failed (5xx, 429, a timeout, a broken
    /// exchange). A worker whose database went away answers every message 5xx and its
    /// readiness path 503: asked, the sidecar stops receiving until it is ready again, and
    /// the messages wait in the queue instead of spending their deliveries on the outage.
    /// A worker that is ready and failed one message costs one GET.
    pub fn doubts_worker(&self, answer: &WorkerAnswer) -> bool {
        match answer {
            WorkerAnswer::ConnectFailed(_) => true,
            _ if self.readiness_path.is_none() => false,
            WorkerAnswer::Status { code, .. } => *code == 429 || *code >= 500,
            WorkerAnswer::TimedOut | WorkerAnswer::Failed(_) => true,
        }
    }

    /// Whether the worker can take messages now: it answers 200-399 at its readiness path, or,
    /// without one, accepts a connection. The error says what it did instead.
    pub async fn worker_ready(&self) -> Result<(), WorkerNotReady> {
        let not_ready = |answered, why| Err(WorkerNotReady { answered, why });
        let Some(path) = &self.readiness_path else {
            return match self.client.accepts_connections().await {
                Ok(()) => Ok(()),
                Err(error) => not_ready(false, error.to_string()),
            };
        };
        match tokio::time::timeout(READINESS_TIMEOUT, self.client.get(path)).await {
            // What the kubelet counts as ready, so the two agree on a probe they share.
            Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
            Ok(Ok(status)) => not_ready(true, format!("GET {path} answered {status}")),
            Ok(Err(error)) => not_ready(false, error.to_string()),
            Err(_) => not_ready(
                false,
                format!(
                    "GET {path} had no answer within {}s",
                    READINESS_TIMEOUT.as_secs()
                ),
            ),
        }
    }

    /// Delivers to the worker's URL, or to `path` on it (a periodic task's).
    pub async fn deliver(
        &self,
        path: Option<&str>,
        headers: HeaderMap,
        body: &[u8],
    ) -> WorkerAnswer {
        match tokio::time::timeout(self.timeout, self.client.post(path, headers, body)).await {
            Ok(Ok(response)) => WorkerAnswer::Status {
                code: response.status,
                retry_after: response
                    .retry_after
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now())),
            },
            Ok(Err(ExchangeError::Connect(e))) => WorkerAnswer::ConnectFailed(e.to_string()),
            Ok(Err(e @ ExchangeError::Broken(_))) => WorkerAnswer::Failed(e.to_string()),
            Err(_) => WorkerAnswer::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(4));
        assert_eq!(p.backoff(5, 1.0), Duration::from_secs(32));
        assert_eq!(p.backoff(6, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(1000, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(0, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn jitter_keeps_at_least_half() {
        let p = policy();
        assert_eq!(p.backoff(3, 0.0), Duration::from_secs(4));
        let mid = p.backoff(3, 0.5);
        assert!(mid > Duration::from_secs(4) && mid < Duration::from_secs(8));
    }

    #[test]
    fn verdicts_follow_the_worker_contract() {
        let permanent = crate::config::StatusSet::default();
        let none = |code| WorkerAnswer::Status {
            code,
            retry_after: None,
        };
        for code in [200, 201, 204, 299] {
            assert_eq!(
                verdict(&none(code), 1, &permanent, &policy(), 1.0),
                Verdict::Ack
            );
        }
        for answer in [
            none(500),
            none(503),
            none(429),
            none(404),
            none(302),
            WorkerAnswer::TimedOut,
            WorkerAnswer::ConnectFailed("refused".into()),
        ] {
            assert_eq!(
                verdict(&answer, 2, &permanent, &policy(), 1.0),
                Verdict::Retry(Duration::from_secs(4)),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        let permanent = crate::config::StatusSet::default();
        let answer = WorkerAnswer::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            verdict(&answer, 1, &permanent, &policy(), 1.0),
            Verdict::Retry(Duration::from_secs(7))
        );
        let answer = WorkerAnswer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(10_000_000)),
        };
        assert_eq!(
            verdict(&answer, 1, &permanent, &policy(), 1.0),
            Verdict::Retry(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn permanent_statuses_dead_letter() {
        let permanent = clap::Parser::try_parse_from([
            "ferry-consumer",
            "--provider",
            "sqs",
            "--queue",
            "http://h/1/q",
            "--permanent-failure-statuses",
            "400-422",
        ])
        .map(|c: crate::config::Config| c.permanent_failure_statuses)
        .unwrap();
        let answer = WorkerAnswer::Status {
            code: 422,
            retry_after: None,
        };
        assert_eq!(
            verdict(&answer, 1, &permanent, &policy(), 1.0),
            Verdict::DeadLetter { status: 422 }
        );
        let answer = WorkerAnswer::Status {
            code: 429,
            retry_after: None,
        };
        assert!(matches!(
            verdict(&answer, 1, &permanent, &policy(), 1.0),
            Verdict::Retry(_)
        ));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    fn message(attributes: &[(&str, &str)]) -> ReceivedMessage {
        // A lease is needed to build a message; an SQS receipt handle never leaves the crate
        // in tests because nothing settles it.
        ferry_queues::model::test_message(
            "m-1",
            "{}",
            attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn sqs_deliveries_carry_both_header_families() {
        let mut m = message(&[("tenant", "acme"), ("priority", "7")]);
        m.delivery_attempt = Some(3);
        m.published_at = Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        m.first_received_at = Some(UNIX_EPOCH + Duration::from_millis(1_700_000_001_000));
        let h = delivery_headers(
            &m,
            &FixedHeaders::new(Provider::Sqs, "orders", "application/json"),
        );
        let get = |n: &str| h.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("content-type"), "application/json");
        assert_eq!(get("ferry-message-id"), "m-1");
        assert_eq!(get("ferry-delivery-attempt"), "3");
        assert_eq!(get("ferry-queue"), "orders");
        assert_eq!(get("ferry-published-at"), "2023-11-14T22:13:20.123Z");
        assert_eq!(get("ferry-attr-tenant"), "acme");
        assert_eq!(get("x-aws-sqsd-msgid"), "m-1");
        assert_eq!(get("x-aws-sqsd-queue"), "orders");
        assert_eq!(get("x-aws-sqsd-receive-count"), "3");
        assert_eq!(
            get("x-aws-sqsd-first-received-at"),
            "2023-11-14T22:13:21.000Z"
        );
        assert_eq!(get("x-aws-sqsd-attr-priority"), "7");
        assert!(get("user-agent").starts_with("aws-sqsd/1.1"));
    }

    #[test]
    fn pubsub_deliveries_carry_ferry_headers_only() {
        let mut m = message(&[("bad name", "x"), ("ok", "y"), ("city", "Zürich")]);
        m.ordering_group = Some("customer-9".into());
        let h = delivery_headers(
            &m,
            &FixedHeaders::new(Provider::PubSub, "orders-sub", "text/plain"),
        );
        assert_eq!(h.get("content-type").unwrap(), "text/plain");
        assert_eq!(h.get("ferry-attr-ok").unwrap(), "y");
        assert_eq!(
            h.get("ferry-attr-city").unwrap().as_bytes(),
            "Zürich".as_bytes()
        );
        assert_eq!(h.get("ferry-ordering-key").unwrap(), "customer-9");
        assert!(h.get("x-aws-sqsd-msgid").is_none());
        assert!(h.iter().all(|(n, _)| !n.as_str().contains(' ')));
        assert!(
            h.get("ferry-delivery-attempt").is_none(),
            "unknown attempts are not invented"
        );
    }

    #[test]
    fn periodic_tasks_carry_the_worker_daemons_task_headers_and_their_path() {
        let mut task = message(&[
            ("beanstalk.sqsd.task_name", "Remove unattended jobs"),
            ("beanstalk.sqsd.path", "/tasks/cleanup"),
            ("beanstalk.sqsd.scheduled_time", "2026-03-05 11:00:00 UTC"),
        ]);
        task.sender_id = Some("AROAEXAMPLE:ferry-operator".into());
        assert_eq!(task_path(&task), Some("/tasks/cleanup"));
        let h = delivery_headers(
            &task,
            &FixedHeaders::new(Provider::Sqs, "orders", "application/json"),
        );
        let get = |n: &str| h.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("x-aws-sqsd-taskname"), "Remove unattended jobs");
        assert_eq!(get("x-aws-sqsd-scheduled-at"), "2026-03-05 11:00:00 UTC");
        assert_eq!(get("x-aws-sqsd-sender-id"), "AROAEXAMPLE:ferry-operator");
        assert_eq!(get("ferry-task-name"), "Remove unattended jobs");
        assert_eq!(get("ferry-scheduled-at"), "2026-03-05 11:00:00 UTC");
        let h = delivery_headers(
            &task,
            &FixedHeaders::new(Provider::PubSub, "orders-sub", "application/json"),
        );
        assert_eq!(h.get("ferry-task-name").unwrap(), "Remove unattended jobs");
        assert!(h.get("x-aws-sqsd-taskname").is_none());
        // Any other message goes to FERRY_DELIVERY_URL, without task headers.
        let plain = message(&[("tenant", "acme")]);
        assert_eq!(task_path(&plain), None);
        let h = delivery_headers(
            &plain,
            &FixedHeaders::new(Provider::Sqs, "orders", "application/json"),
        );
        assert!(h.get("ferry-task-name").is_none() && h.get("x-aws-sqsd-taskname").is_none());
    }

    /// A real HTTP worker on a loopback port that redirects `/` to `/elsewhere` and would
    /// answer 200 there.
    async fn redirecting_worker() -> String {
        use axum::{
            Router,
            http::{StatusCode, header::LOCATION},
            routing::{any, post},
        };
        let app = Router::new()
            .route(
                "/",
                post(|| async { (StatusCode::FOUND, [(LOCATION, "/elsewhere")]) }),
            )
            .route("/elsewhere", any(|| async { StatusCode::OK }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/")
    }

    #[tokio::test]
    async fn a_redirect_is_the_workers_answer_not_followed() {
        let url = redirecting_worker().await;
        let deliverer = Deliverer::new(
            &url,
            1,
            Duration::from_secs(5),
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        let answer = deliverer.deliver(None, HeaderMap::new(), b"{}").await;
        assert_eq!(
            answer,
            WorkerAnswer::Status {
                code: 302,
                retry_after: None
            }
        );
        assert_eq!(answer.label(), "3xx");
    }

    #[test]
    fn only_answers_that_blame_the_worker_put_its_readiness_in_doubt() {
        let deliverer = |path: Option<&str>| {
            Deliverer::new(
                "http://127.0.0.1:8080/",
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
                path.map(String::from),
            )
            .unwrap()
        };
        let status = |code| WorkerAnswer::Status {
            code,
            retry_after: None,
        };
        let refused = WorkerAnswer::ConnectFailed("refused".into());
        let blaming_the_worker = [
            status(500),
            status(503),
            status(429),
            WorkerAnswer::TimedOut,
            WorkerAnswer::Failed("reset".into()),
        ];
        let blaming_the_message = [
            status(200),
            status(204),
            status(302),
            status(400),
            status(404),
        ];

        let listening_only = deliverer(None);
        assert!(listening_only.doubts_worker(&refused));
        for answer in blaming_the_worker.iter().chain(&blaming_the_message) {
            assert!(!listening_only.doubts_worker(answer), "{answer:?}");
        }

        let with_path = deliverer(Some("/ready"));
        assert!(with_path.doubts_worker(&refused));
        for answer in &blaming_the_worker {
            assert!(with_path.doubts_worker(answer), "{answer:?}");
        }
        for answer in &blaming_the_message {
            assert!(!with_path.doubts_worker(answer), "{answer:?}");
        }
    }

    #[test]
    fn answers_have_metric_labels() {
        assert_eq!(
            WorkerAnswer::Status {
                code: 204,
                retry_after: None
            }
            .label(),
            "2xx"
        );
        assert_eq!(
            WorkerAnswer::Status {
                code: 429,
                retry_after: None
            }
            .label(),
            "429"
        );
        assert_eq!(WorkerAnswer::TimedOut.label(), "timeout");
    }
}

//! The sidecar end to end: the real `ferry-consumer` binary against moto's SQS server and
//! Google's Pub/Sub emulator, delivering to a real HTTP worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ferry_queues::provision::{
    OutgoingMessage, ProvisionedQueue, QueueRequest, ensure_queue, publish,
};
use ferry_queues::{ConsumerTarget, Provider};
use ferry_tests::emulators::{self, PUBSUB_PROJECT};
use ferry_tests::sidecar::{Sidecar, SidecarEnv};
use ferry_tests::worker::{Reply, Worker};
use ferry_tests::{eventually, unique_name};

const BINARY: &str = env!("CARGO_BIN_EXE_ferry-consumer");

struct Setup {
    provider: Provider,
    endpoint: String,
    queue: ProvisionedQueue,
    max_deliveries: u32,
}

async fn provision(provider: Provider, ordered: bool, max_deliveries: u32) -> Setup {
    let endpoint = match provider {
        Provider::Sqs => emulators::moto().url(),
        Provider::PubSub => emulators::pubsub().host_port(),
    };
    provision_on(provider, endpoint, ordered, max_deliveries).await
}

async fn provision_on(
    provider: Provider,
    endpoint: String,
    ordered: bool,
    max_deliveries: u32,
) -> Setup {
    let request = QueueRequest {
        provider,
        name: unique_name("ferry"),
        project: Some(PUBSUB_PROJECT.into()),
        endpoint: Some(endpoint.clone()),
        max_deliveries,
        lease: Duration::from_secs(10),
        ordered,
        // Short, so retries in tests take seconds.
        retry_backoff: Some((Duration::from_millis(100), Duration::from_secs(1))),
        ..QueueRequest::new(provider, "")
    };
    let queue = ensure_queue(&request)
        .await
        .expect("provision the queue and its DLQ");
    Setup {
        provider,
        endpoint,
        queue,
        max_deliveries,
    }
}

impl Setup {
    fn env(&self, worker_url: &str) -> SidecarEnv {
        SidecarEnv::default()
            .set("FERRY_PROVIDER", self.provider)
            .set("FERRY_QUEUE", &self.queue.queue)
            .set("FERRY_DEAD_LETTER", &self.queue.dead_letter)
            .set("FERRY_ENDPOINT", &self.endpoint)
            .set("FERRY_DELIVERY_URL", worker_url)
            .set("FERRY_RECEIVE_WAIT_SECONDS", 1)
            .set("FERRY_RETRY_BACKOFF_MIN", 0.2)
            .set("FERRY_RETRY_BACKOFF_MAX", 1)
            .set("FERRY_STATS_INTERVAL", 0.5)
            .set("FERRY_LEASE_SECONDS", 10)
            .set("AWS_REGION", "us-east-1")
    }

    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Vec<String> {
        publish(
            self.provider,
            Some(&self.endpoint),
            &self.queue.publish_to,
            messages,
        )
        .await
        .expect("publish")
    }

    async fn publish_bodies(&self, bodies: &[String]) -> Vec<String> {
        self.publish(
            bodies
                .iter()
                .map(|b| OutgoingMessage {
                    body: b.clone().into_bytes(),
                    attributes: vec![("tenant".into(), "acme".into())],
                    ordering_group: None,
                    deduplication_id: None,
                })
                .collect(),
        )
        .await
    }

    /// A plain consumer of `queue` (the queue or its DLQ), for the test to read what is left.
    async fn reader(&self, queue: &str) -> std::sync::Arc<dyn ferry_queues::MessageQueue> {
        ferry_queues::connect(&ConsumerTarget {
            provider: self.provider,
            queue: queue.to_string(),
            dead_letter: None,
            dead_letter_topic: None,
            endpoint: Some(self.endpoint.clone()),
            lease: Duration::from_secs(30),
            max_outstanding: 100,
            monitoring: None,
        })
        .await
        .unwrap_or_else(|e| panic!("connect to {queue}: {e}"))
    }

    /// Reads everything in the dead-letter queue (acknowledging it), as (body, attributes).
    async fn take_dead_letters(&self, expected: usize) -> Vec<(String, BTreeMap<String, String>)> {
        let dlq = self.reader(&self.queue.dead_letter).await;
        let mut out = Vec::new();
        // Generous: in one loaded CI run the emulator handed out nothing for 30 s after a
        // streaming subscriber had gone (before the tests repaired it, docs/sandbox.md: it
        // kept the messages for the gone stream until their ack deadline ran out).
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while out.len() < expected && std::time::Instant::now() < deadline {
            for m in dlq
                .receive(10, Duration::from_secs(1))
                .await
                .expect("receive from the DLQ")
            {
                out.push((
                    String::from_utf8_lossy(&m.body).into_owned(),
                    m.attributes.clone(),
                ));
                dlq.ack(m.lease).await.expect("ack the dead letter");
            }
        }
        dlq.close().await;
        out
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"{prefix}\":{i}}}")).collect()
}

fn start(env: &SidecarEnv) -> Sidecar {
    Sidecar::start(Path::new(BINARY), env)
}

ferry_tests::for_both_providers!(
    every_message_is_delivered_once_and_settled,
    a_failing_message_is_retried_then_dead_lettered_after_the_configured_deliveries,
    a_permanent_status_dead_letters_at_once,
    a_worker_slower_than_the_lease_causes_no_duplicate,
    a_worker_not_listening_yet_costs_no_delivery_attempt,
    a_worker_not_ready_yet_at_its_readiness_path_costs_no_delivery_attempt,
    a_worker_that_stops_being_ready_holds_receiving_until_it_is_ready_again,
    sigterm_finishes_in_flight_work_and_hands_back_the_rest,
    sigkill_loses_nothing,
    the_drain_endpoint_answers_once_in_flight_work_is_done,
    drained_holds_the_workers_hook_until_the_sigterm_drain_is_done,
    retry_after_from_the_worker_is_honoured,
    ordering_groups_are_delivered_one_at_a_time_in_order,
    a_missing_queue_makes_the_sidecar_unready_not_crash,
    a_periodic_task_message_goes_to_its_path_with_the_task_headers,
    a_rate_limit_spaces_deliveries_and_can_be_changed_at_runtime,
);

/// N messages: each delivered once with the contract's headers, settled, and /metrics says so.
async fn every_message_is_delivered_once_and_settled(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let worker = Worker::start(|_| Reply::ok()).await;
    let sidecar = start(&setup.env(&worker.url()).set("FERRY_CONCURRENCY", 4));
    let ids = setup.publish_bodies(&bodies("n", 20)).await;

    eventually(
        Duration::from_secs(30),
        "20 successful deliveries",
        async || (worker.succeeded_ids().len() >= 20).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delivered = worker.succeeded_ids();
    delivered.sort();
    let mut published = ids.clone();
    published.sort();
    assert_eq!(delivered, published, "every message delivered exactly once");

    let first = &worker.deliveries()[0];
    let header = |name: &str| {
        first
            .headers
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("header {name} missing: {:?}", first.headers))
    };
    assert!(ids.contains(&header("ferry-message-id")));
    assert_eq!(header("ferry-attr-tenant"), "acme");
    assert_eq!(header("content-type"), "application/json");
    assert!(header("ferry-published-at").ends_with('Z'));
    assert_eq!(header("ferry-delivery-attempt"), "1");
    let queue_name = setup.queue.queue.rsplit('/').next().unwrap().to_string();
    assert_eq!(header("ferry-queue"), queue_name);
    if provider == Provider::Sqs {
        assert_eq!(header("x-aws-sqsd-msgid"), header("ferry-message-id"));
        assert_eq!(header("x-aws-sqsd-queue"), queue_name);
        assert_eq!(header("x-aws-sqsd-receive-count"), "1");
        assert_eq!(header("x-aws-sqsd-attr-tenant"), "acme");
        assert!(header("x-aws-sqsd-first-received-at").ends_with('Z'));
        assert!(header("user-agent").starts_with("aws-sqsd/1.1"));
    }

    assert_eq!(sidecar.completed("succeeded").await, Some(20.0));
    assert_eq!(sidecar.completed("retried").await, Some(0.0));
    assert_eq!(
        sidecar.metric("ferry_messages_received_total").await,
        Some(20.0)
    );
    assert_eq!(
        sidecar
            .metric("ferry_deliveries_total{result=\"2xx\"")
            .await,
        Some(20.0)
    );
    assert_eq!(sidecar.metric("ferry_in_flight").await, Some(0.0));
    assert_eq!(sidecar.metric("ferry_concurrency_limit").await, Some(4.0));
    assert_eq!(
        sidecar
            .metric("ferry_delivery_duration_seconds_count")
            .await,
        Some(20.0)
    );
    assert_eq!(
        sidecar.metric("ferry_message_age_seconds_count").await,
        Some(20.0)
    );
    assert_eq!(sidecar.metric("ferry_ready").await, Some(1.0));
    assert_eq!(sidecar.get("/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(sidecar.get("/healthz").await.map(|r| r.0), Some(200));
    if provider == Provider::Sqs {
        let backlog_empty = async || {
            let visible = sidecar
                .metric("ferry_queue_messages{state=\"visible\"")
                .await?;
            let in_flight = sidecar
                .metric("ferry_queue_messages{state=\"in_flight\"")
                .await?;
            let dlq = sidecar.metric("ferry_dead_letter_messages").await?;
            (visible == 0.0 && in_flight == 0.0 && dlq == 0.0).then_some(())
        };
        eventually(
            Duration::from_secs(10),
            "the queue statistics to show an empty queue",
            backlog_empty,
        )
        .await;
    }
}

/// `PUT /rate-limit` with a plain-text body, as the operator sends it: (status, body).
async fn put_rate_limit(sidecar: &Sidecar, body: &str) -> (u16, String) {
    control(sidecar, reqwest::Method::PUT, "/rate-limit", body, None).await
}

/// A request to the sidecar's port with a plain-text body and, if given, the control
/// token: (status, body).
async fn control(
    sidecar: &Sidecar,
    method: reqwest::Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .request(
            method,
            format!("http://127.0.0.1:{}{path}", sidecar.metrics_port),
        )
        .header("content-type", "text/plain")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("the answer's body"))
}

/// With FERRY_CONTROL_TOKEN, `/drain` and `PUT /rate-limit` act only on a request that
/// carries it: anything else is refused with 401 and changes nothing (the sidecar keeps
/// receiving at its rate); reading stays open, and the token is never logged.
#[tokio::test]
async fn the_control_endpoints_need_the_token_when_one_is_set() {
    const TOKEN: &str = "a-control-token-0123456789";
    let setup = provision(Provider::Sqs, false, 5).await;
    let worker = Worker::start(|_| Reply::ok()).await;
    let sidecar = start(&setup.env(&worker.url()).set("FERRY_CONTROL_TOKEN", TOKEN));
    eventually(Duration::from_secs(20), "/readyz to be ready", async || {
        let (status, _) = sidecar.get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    for token in [None, Some("not-the-control-token-0123"), Some("")] {
        for (method, path, body) in [
            (reqwest::Method::PUT, "/rate-limit", "1"),
            (reqwest::Method::GET, "/drain", ""),
            (reqwest::Method::POST, "/drain", ""),
        ] {
            let (status, answer) = control(&sidecar, method.clone(), path, body, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert!(answer.contains("Authorization: Bearer"), "{answer}");
        }
    }
    assert_eq!(
        sidecar.get("/rate-limit").await,
        Some((200, "{\"rate_limit_per_second\":null}".to_string())),
        "reading needs no token"
    );
    assert_eq!(sidecar.metric("ferry_draining").await, Some(0.0));
    let ids = setup.publish_bodies(&bodies("after", 3)).await;
    eventually(
        Duration::from_secs(30),
        "deliveries go on after the refused drains",
        async || (worker.succeeded_ids().len() >= ids.len()).then_some(()),
    )
    .await;

    let (status, answer) = control(
        &sidecar,
        reqwest::Method::PUT,
        "/rate-limit",
        "2",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, answer.as_str()),
        (200, "{\"rate_limit_per_second\":2.0}")
    );
    let (status, answer) = control(&sidecar, reqwest::Method::GET, "/drain", "", Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"drained\":true"), "{answer}");
    assert_eq!(sidecar.metric("ferry_draining").await, Some(1.0));
    let log = sidecar.log_text();
    assert!(
        log.contains("refused a request to drain without the control token"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token is never logged");
}

/// FERRY_RATE_LIMIT spaces delivery starts evenly, with no burst even from a full queue, and
/// `PUT /rate-limit` changes the limit while the sidecar runs: slower, then none.
async fn a_rate_limit_spaces_deliveries_and_can_be_changed_at_runtime(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let worker = Worker::start(|_| Reply::ok()).await;
    // All in the queue before the sidecar starts: nothing but the limit holds them back.
    let mut ids = setup.publish_bodies(&bodies("paced", 60)).await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_CONCURRENCY", 10)
            .set("FERRY_RATE_LIMIT", 20),
    );
    eventually(
        Duration::from_secs(30),
        "60 deliveries at 20 a second",
        async || (worker.succeeded_ids().len() >= 60).then_some(()),
    )
    .await;
    let starts: Vec<std::time::Instant> = worker.deliveries().iter().map(|d| d.started).collect();
    assert_eq!(starts.len(), 60, "each message delivered once");
    // 20 a second, 50 ms apart: any 22 consecutive starts span 1.05 s, so no 1-second
    // window holds more than 21 of them.
    for (i, window) in starts.windows(22).enumerate() {
        assert!(
            window[21] - window[0] >= Duration::from_secs(1),
            "starts {i} to {} came within {:?}",
            i + 21,
            window[21] - window[0]
        );
    }
    let took = starts[59] - starts[0];
    assert!(took >= Duration::from_millis(2900), "60 starts in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "paced, not stalled: {took:?}"
    );
    assert_eq!(
        sidecar.metric("ferry_rate_limit_per_second").await,
        Some(20.0)
    );
    let waited = sidecar
        .metric("ferry_rate_limit_wait_seconds_total")
        .await
        .expect("the wait counter");
    // Batches of up to 10 (what starts within a second, capped by the concurrency) wait
    // 0, 50, …, 450 ms for their starts: 2.25 s per full batch.
    assert!(waited > 2.0, "waited {waited} s in all");
    assert_eq!(
        sidecar.get("/rate-limit").await,
        Some((200, r#"{"rate_limit_per_second":20.0}"#.to_string()))
    );

    for bad in ["fast", "0", "-3", "", "10/s"] {
        let (status, body) = put_rate_limit(&sidecar, bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body.contains("positive number") && body.contains("none"),
            "{bad:?}: {body}"
        );
    }
    assert_eq!(
        sidecar.metric("ferry_rate_limit_per_second").await,
        Some(20.0),
        "a refused change changes nothing"
    );

    // Slower: one every 2 s.
    assert_eq!(
        put_rate_limit(&sidecar, "0.5").await,
        (200, r#"{"rate_limit_per_second":0.5}"#.to_string())
    );
    assert_eq!(
        sidecar.metric("ferry_rate_limit_per_second").await,
        Some(0.5)
    );
    ids.extend(setup.publish_bodies(&bodies("slow", 30)).await);
    eventually(
        Duration::from_secs(20),
        "a delivery at the slower rate",
        async || (worker.deliveries().len() > 60).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let slow: Vec<std::time::Instant> = worker.deliveries()[60..]
        .iter()
        .map(|d| d.started)
        .collect();
    assert!(
        (1..=3).contains(&slow.len()),
        "at 0.5 a second, {} deliveries in 3 s",
        slow.len()
    );
    for pair in slow.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(1900),
            "{:?} apart at 0.5 a second",
            pair[1] - pair[0]
        );
    }

    // None: the rest (some 28 messages, a minute at 0.5 a second) go at once.
    let removed = std::time::Instant::now();
    assert_eq!(
        put_rate_limit(&sidecar, "none").await,
        (200, r#"{"rate_limit_per_second":null}"#.to_string())
    );
    assert_eq!(
        sidecar.get("/rate-limit").await,
        Some((200, r#"{"rate_limit_per_second":null}"#.to_string()))
    );
    let (_, text) = sidecar.get("/metrics").await.expect("/metrics");
    assert!(
        !text.contains("ferry_rate_limit_per_second"),
        "no limit, no series:\n{text}"
    );
    eventually(
        Duration::from_secs(20),
        "the rest once the limit is gone",
        async || (worker.succeeded_ids().len() >= 90).then_some(()),
    )
    .await;
    let rest = removed.elapsed();
    assert!(
        rest < Duration::from_secs(5),
        "without a limit the last {} took {rest:?}",
        90 - 60 - slow.len()
    );
    let mut delivered = worker.succeeded_ids();
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids, "every message delivered once");
    let log = sidecar.log_text();
    for change in ["from 20/s to 0.5/s", "from 0.5/s to none"] {
        assert!(
            log.contains(&format!("delivery rate limit changed {change}")),
            "{change}: log:\n{log}"
        );
    }
}

/// A message in the format of Elastic Beanstalk's periodic tasks (what the operator sends
/// for `spec.periodicTasks`) is POSTed to the task's path with the task headers; the
/// messages around it still go to FERRY_DELIVERY_URL.
async fn a_periodic_task_message_goes_to_its_path_with_the_task_headers(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let worker = Worker::start(|_| Reply::ok()).await;
    let _sidecar = start(&setup.env(&worker.url()));
    let task = OutgoingMessage {
        body: b"elasticbeanstalk scheduled job".to_vec(),
        attributes: vec![
            ("beanstalk.sqsd.task_name".into(), "Nightly report".into()),
            (
                "beanstalk.sqsd.path".into(),
                "/tasks/report?format=csv".into(),
            ),
            (
                "beanstalk.sqsd.scheduled_time".into(),
                "2026-03-05 03:00:00 UTC".into(),
            ),
        ],
        ..Default::default()
    };
    let ids = setup.publish(vec![task]).await;
    setup.publish_bodies(&bodies("plain", 1)).await;
    eventually(
        Duration::from_secs(30),
        "both messages delivered",
        async || (worker.succeeded_ids().len() >= 2).then_some(()),
    )
    .await;
    let deliveries = worker.deliveries();
    let task = deliveries
        .iter()
        .find(|d| d.message_id == ids[0])
        .expect("the task delivered");
    assert_eq!(task.path, "/tasks/report?format=csv");
    assert_eq!(task.body, "elasticbeanstalk scheduled job");
    let header = |name: &str| task.headers.get(name).map(String::as_str);
    assert_eq!(header("ferry-task-name"), Some("Nightly report"));
    assert_eq!(
        header("ferry-scheduled-at"),
        Some("2026-03-05 03:00:00 UTC")
    );
    if provider == Provider::Sqs {
        assert_eq!(header("x-aws-sqsd-taskname"), Some("Nightly report"));
        assert_eq!(
            header("x-aws-sqsd-scheduled-at"),
            Some("2026-03-05 03:00:00 UTC")
        );
        // Who sent it, as SQS reports it (moto: its fixed account's sender).
        assert!(
            header("x-aws-sqsd-sender-id").is_some_and(|s| !s.is_empty()),
            "{:?}",
            task.headers
        );
    }
    let plain = deliveries
        .iter()
        .find(|d| d.message_id != ids[0])
        .expect("the plain message");
    assert_eq!(plain.path, "/work");
    assert!(!plain.headers.contains_key("ferry-task-name"));
    assert!(!plain.headers.contains_key("x-aws-sqsd-sender-id"));
}

/// A worker answering 500 gets exactly max-deliveries attempts, with backoff between them,
/// then the queue's redrive moves the message to the DLQ.
async fn a_failing_message_is_retried_then_dead_lettered_after_the_configured_deliveries(
    provider: Provider,
) {
    let max = if provider == Provider::Sqs { 3 } else { 5 };
    let setup = provision(provider, false, max).await;
    let worker = Worker::start(|_| Reply::status(500)).await;
    let sidecar = start(&setup.env(&worker.url()));
    let ids = setup
        .publish_bodies(&["{\"fails\":true}".to_string()])
        .await;

    let dead = setup.take_dead_letters(1).await;
    assert_eq!(dead.len(), 1, "the failing message reaches the DLQ");
    assert_eq!(dead[0].0, "{\"fails\":true}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        worker.times_seen(&ids[0]),
        setup.max_deliveries as usize,
        "delivered exactly max-deliveries times"
    );
    let attempts: Vec<String> = worker
        .deliveries()
        .iter()
        .map(|d| d.headers["ferry-delivery-attempt"].clone())
        .collect();
    let expected: Vec<String> = (1..=setup.max_deliveries).map(|n| n.to_string()).collect();
    assert_eq!(attempts, expected);
    let starts: Vec<_> = worker.deliveries().iter().map(|d| d.started).collect();
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(90),
            "retries are spaced by the backoff: {:?}",
            pair[1] - pair[0]
        );
    }
    assert_eq!(sidecar.completed("retried").await, Some(f64::from(max)));
    assert_eq!(
        sidecar
            .metric("ferry_deliveries_total{result=\"5xx\"")
            .await,
        Some(f64::from(max))
    );
    assert_eq!(sidecar.completed("succeeded").await, Some(0.0));
}

/// A status listed as permanent sends the message to the DLQ after one delivery, with the
/// reason attached; the other messages are unaffected.
async fn a_permanent_status_dead_letters_at_once(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let worker = Worker::start(|d| {
        if d.body.contains("poison") {
            Reply::status(422)
        } else {
            Reply::ok()
        }
    })
    .await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_PERMANENT_FAILURE_STATUSES", "400,422"),
    );
    let ids = setup
        .publish_bodies(&[
            "{\"poison\":1}".to_string(),
            "{\"fine\":1}".to_string(),
            "{\"fine\":2}".to_string(),
        ])
        .await;

    let dead = setup.take_dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "{\"poison\":1}");
    assert_eq!(
        dead[0]
            .1
            .get("ferry-dead-letter-status")
            .map(String::as_str),
        Some("422")
    );
    assert_eq!(dead[0].1.get("ferry-source-message-id"), Some(&ids[0]));
    assert_eq!(
        dead[0].1.get("tenant").map(String::as_str),
        Some("acme"),
        "user attributes are kept"
    );
    eventually(
        Duration::from_secs(10),
        "the two good messages",
        async || (worker.succeeded_ids().len() == 2).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        worker.times_seen(&ids[0]),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(sidecar.completed("dead_lettered").await, Some(1.0));
    assert_eq!(sidecar.completed("succeeded").await, Some(2.0));
}

/// A delivery that takes longer than the lease keeps its message leased: no second delivery.
async fn a_worker_slower_than_the_lease_causes_no_duplicate(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let worker = Worker::start(|_| Reply::ok().after(Duration::from_secs(16))).await;
    let sidecar = start(&setup.env(&worker.url()).set("FERRY_DELIVERY_TIMEOUT", 60));
    let ids = setup.publish_bodies(&["{\"slow\":true}".to_string()]).await;

    eventually(
        Duration::from_secs(40),
        "the slow delivery to finish",
        async || (worker.succeeded_ids().len() == 1).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        worker.times_seen(&ids[0]),
        1,
        "a slow worker must not cause a redelivery"
    );
    if provider == Provider::Sqs {
        assert!(
            sidecar
                .metric("ferry_lease_extensions_total")
                .await
                .unwrap_or(0.0)
                >= 2.0,
            "the lease was extended"
        );
    }
    assert_eq!(sidecar.completed("succeeded").await, Some(1.0));
}

/// A worker that is not listening yet (one that starts slowly, or on another port than
/// FERRY_DELIVERY_URL's): the sidecar receives nothing for it, so no message spends a
/// delivery on a refused connection, and says why in /readyz and its log. Once the worker
/// listens, every message is processed once, at its first delivery.
async fn a_worker_not_listening_yet_costs_no_delivery_attempt(provider: Provider) {
    let setup = provision(provider, false, 20).await;
    let port = ferry_tests::free_port();
    let url = format!("http://127.0.0.1:{port}/work");
    let sidecar = start(&setup.env(&url));
    let ids = setup.publish_bodies(&bodies("down", 4)).await;

    let body = eventually(
        Duration::from_secs(20),
        "/readyz to say it waits for the worker",
        async || {
            let (status, body) = sidecar.get("/readyz").await?;
            (status == 503 && body.contains("waiting for the worker")).then_some(body)
        },
    )
    .await;
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sidecar
            .metric("ferry_deliveries_total{result=\"connection_refused\"")
            .await
            .unwrap_or(0.0),
        0.0,
        "nothing is received for a worker that is not there"
    );
    assert_eq!(sidecar.metric("ferry_ready").await, Some(0.0));
    assert_eq!(
        sidecar.metric("ferry_worker_unavailable").await,
        Some(0.0),
        "a worker still starting is not one that went away"
    );

    let worker = Worker::start_on(port, |_| Reply::ok()).await;
    eventually(
        Duration::from_secs(30),
        "all messages once the worker listens",
        async || (worker.succeeded_ids().len() >= 4).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    each_delivered_once_at_its_first_attempt(
        &sidecar,
        worker.deliveries(),
        ids,
        "waiting for the worker to listen on",
    )
    .await;
}

/// After the sidecar waited for its worker: every message was delivered once, each at its
/// first attempt (none spent while the worker was not there), `/readyz` is ready, and the
/// log said what it waited for.
async fn each_delivered_once_at_its_first_attempt(
    sidecar: &Sidecar,
    deliveries: Vec<ferry_tests::worker::Delivery>,
    mut expected: Vec<String>,
    logged: &str,
) {
    let mut delivered: Vec<String> = deliveries
        .iter()
        .filter(|d| d.answered.is_some_and(|s| (200..300).contains(&s)))
        .map(|d| d.message_id.clone())
        .collect();
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected, "each message once");
    for delivery in deliveries {
        assert_eq!(
            delivery
                .headers
                .get("ferry-delivery-attempt")
                .map(String::as_str),
            Some("1"),
            "no delivery was spent while the worker was not there or not ready: {delivery:?}"
        );
    }
    eventually(Duration::from_secs(10), "/readyz to be ready", async || {
        let (status, _) = sidecar.get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    assert!(
        sidecar.log_text().contains(logged),
        "the log says what it waits for"
    );
}

/// A worker that listens before it can work (FERRY_WORKER_READINESS_PATH answers 503): the
/// sidecar receives nothing until the path answers 200-399, so no message spends a delivery on
/// the worker's start, and /readyz says what it waits for.
async fn a_worker_not_ready_yet_at_its_readiness_path_costs_no_delivery_attempt(
    provider: Provider,
) {
    let setup = provision(provider, false, 20).await;
    let (worker, down) = worker_that_can_be_down(true).await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_WORKER_READINESS_PATH", "/ready"),
    );
    let ids = setup.publish_bodies(&bodies("warming", 4)).await;
    let messages = || message_deliveries(&worker);

    let body = eventually(
        Duration::from_secs(20),
        "/readyz to say it waits for the readiness path",
        async || {
            let (status, body) = sidecar.get("/readyz").await?;
            (status == 503 && body.contains("GET /ready answered 503")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("FERRY_WORKER_READINESS_PATH"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        messages().is_empty(),
        "nothing delivered to a worker that is not ready: {:?}",
        messages()
    );
    assert!(
        worker.deliveries().iter().any(|d| d.path == "/ready"),
        "the readiness path was asked"
    );

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "all messages once the worker is ready",
        async || {
            (messages()
                .iter()
                .filter(|d| d.answered == Some(200))
                .count()
                >= 4)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    each_delivered_once_at_its_first_attempt(
        &sidecar,
        messages(),
        ids,
        "waiting for the worker to answer 200-399 at http://",
    )
    .await;
}

/// A worker that has not been ready since the sidecar started and keeps answering its
/// readiness path 503 (a pod started while the worker's database is down): the sidecar waits
/// as for a worker that starts and reports it available (the autoscaler counts on pods that
/// start) until the worker has said so for 30 s, then reports it unavailable, as it does at
/// once for a worker that stopped being ready, and /readyz says why. The behaviour does not
/// depend on the queue, so it runs on SQS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_says_from_the_start_it_cannot_work_is_reported_unavailable_after_30_s() {
    let setup = provision(Provider::Sqs, false, 20).await;
    let (worker, down) = worker_that_can_be_down(true).await;
    let started = std::time::Instant::now();
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_WORKER_READINESS_PATH", "/ready"),
    );
    let ids = setup.publish_bodies(&bodies("outage-at-start", 3)).await;
    eventually(
        Duration::from_secs(20),
        "/readyz to say it waits for the readiness path",
        async || {
            let (status, body) = sidecar.get("/readyz").await?;
            (status == 503 && body.contains("GET /ready answered 503")).then_some(())
        },
    )
    .await;
    assert_eq!(
        sidecar.metric("ferry_worker_unavailable").await,
        Some(0.0),
        "a worker that is starting counts as available"
    );

    eventually(
        Duration::from_secs(45),
        "the sidecar to report the worker unavailable",
        async || (sidecar.metric("ferry_worker_unavailable").await == Some(1.0)).then_some(()),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "reported after {:?}, before the worker had said it for 30 s",
        started.elapsed()
    );
    let (status, body) = sidecar.get("/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("it has answered that it is not ready for"),
        "/readyz says why: {body}"
    );
    assert!(
        message_deliveries(&worker).is_empty(),
        "nothing delivered meanwhile: {:?}",
        message_deliveries(&worker)
    );

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "every message once the worker is ready",
        async || {
            (message_deliveries(&worker)
                .iter()
                .filter(|d| d.answered == Some(200))
                .count()
                >= ids.len())
            .then_some(())
        },
    )
    .await;
    assert_eq!(sidecar.metric("ferry_worker_unavailable").await, Some(0.0));
}

/// A worker that answers 503 to everything, its readiness path (`/ready`) included, while
/// the flag returned is set, and 200 otherwise.
async fn worker_that_can_be_down(
    down: bool,
) -> (Worker, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(down));
    let worker = Worker::start({
        let down = flag.clone();
        move |_| {
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::status(503)
            } else {
                Reply::ok()
            }
        }
    })
    .await;
    (worker, flag)
}

/// What the worker was sent, without the sidecar's readiness checks.
fn message_deliveries(worker: &Worker) -> Vec<ferry_tests::worker::Delivery> {
    worker
        .deliveries()
        .into_iter()
        .filter(|d| d.path != "/ready")
        .collect()
}

/// A worker that was ready and then fails (its database went away: every message 503, and
/// its readiness path too): the failed deliveries make the sidecar ask the readiness path,
/// it stops receiving, and the messages wait in the queue instead of spending their
/// deliveries on the outage; once the path answers 200 again, each is delivered.
async fn a_worker_that_stops_being_ready_holds_receiving_until_it_is_ready_again(
    provider: Provider,
) {
    const CONCURRENCY: usize = 2;
    let setup = provision(provider, false, 20).await;
    let (worker, down) = worker_that_can_be_down(false).await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_WORKER_READINESS_PATH", "/ready")
            .set("FERRY_CONCURRENCY", CONCURRENCY),
    );
    let messages = || message_deliveries(&worker);
    let answered = |status| -> Vec<String> {
        messages()
            .into_iter()
            .filter(|d| d.answered == Some(status))
            .map(|d| d.message_id)
            .collect()
    };
    let failed = || answered(503).len();
    let readiness_asked = || {
        worker
            .deliveries()
            .iter()
            .filter(|d| d.path == "/ready")
            .count()
    };

    let mut expected = setup.publish_bodies(&bodies("before", 4)).await;
    eventually(
        Duration::from_secs(30),
        "the first messages while the worker is up",
        async || (answered(200).len() >= 4).then_some(()),
    )
    .await;

    down.store(true, std::sync::atomic::Ordering::SeqCst);
    expected.extend(setup.publish_bodies(&bodies("outage", 12)).await);
    let body = eventually(
        Duration::from_secs(30),
        "/readyz to say the worker is not ready again",
        async || {
            let (status, body) = sidecar.get("/readyz").await?;
            (status == 503 && body.contains("GET /ready answered 503")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("again before receiving"), "{body}");
    let failed_when_held = failed();
    let asked_when_held = readiness_asked();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Retries come back after 0.2-1 s (the test's backoff), so a sidecar that kept receiving
    // would have failed each of them again several times by now.
    assert_eq!(
        failed(),
        failed_when_held,
        "nothing delivered while the worker is not ready: {:?}",
        messages()
    );
    assert!(
        failed_when_held <= 2 * CONCURRENCY,
        "at most what the sidecar held and had asked for when the first failure came back: {:?}",
        messages()
    );
    assert!(
        readiness_asked() > asked_when_held,
        "the readiness path is asked again while the sidecar waits"
    );
    assert_eq!(sidecar.metric("ferry_ready").await, Some(0.0));
    assert_eq!(
        sidecar.metric("ferry_worker_unavailable").await,
        Some(1.0),
        "what the autoscaler reads"
    );

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "every message once the worker is ready again",
        async || (answered(200).len() >= expected.len()).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delivered = answered(200);
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected, "each message once");
    assert_eq!(
        failed(),
        failed_when_held,
        "no delivery spent on the outage beyond those that revealed it"
    );
    eventually(Duration::from_secs(10), "/readyz to be ready", async || {
        let (status, _) = sidecar.get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    assert_eq!(sidecar.metric("ferry_worker_unavailable").await, Some(0.0));
    assert!(
        sidecar.log_text().contains("again before receiving"),
        "the log says the sidecar holds for the worker"
    );
}

/// SIGTERM mid-delivery: the deliveries in flight finish and are acked, nothing more is
/// started, what the sidecar had prefetched is handed back, the process exits 0, and a new
/// sidecar gets every other message, each once.
async fn sigterm_finishes_in_flight_work_and_hands_back_the_rest(provider: Provider) {
    let setup = provision(provider, false, 10).await;
    let worker = Worker::start(|_| Reply::ok().after(Duration::from_secs(3))).await;
    let env = setup
        .env(&worker.url())
        .set("FERRY_CONCURRENCY", 2)
        .set("FERRY_DRAIN_TIMEOUT", 20);
    let mut sidecar = start(&env);
    // On Pub/Sub the streaming pull prefetches beyond the two delivery slots; the drain hands
    // those back. SQS never receives beyond the free slots, so there the rest wait in the
    // queue.
    let ids = setup.publish_bodies(&bodies("term", 6)).await;

    eventually(
        Duration::from_secs(20),
        "two deliveries in flight",
        async || (worker.deliveries().len() >= 2).then_some(()),
    )
    .await;
    // A second into the 3 s deliveries rather than at their first byte, which once came
    // 87 ms after the sidecar started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit 0 after SIGTERM, got {status}; log:\n{}",
        sidecar.log_text()
    );
    let in_flight_at_term = worker.deliveries();
    assert_eq!(
        in_flight_at_term.len(),
        2,
        "nothing new was delivered after SIGTERM"
    );
    assert!(
        in_flight_at_term.iter().all(|d| d.answered == Some(200)),
        "the in-flight deliveries completed"
    );
    assert!(
        sidecar.log_text().contains("drained"),
        "log:\n{}",
        sidecar.log_text()
    );

    let _second = start(&env);
    // The prefetched messages come back at once; a message the queue was handing to the
    // stream as it closed would wait out its lease (10 s here).
    eventually(
        Duration::from_secs(60),
        "the rest delivered by a new sidecar",
        async || (worker.succeeded_ids().len() >= 6).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delivered = worker.succeeded_ids();
    delivered.sort();
    let mut expected = ids;
    expected.sort();
    assert_eq!(
        delivered, expected,
        "nothing lost and nothing processed twice"
    );
}

/// `/drain` (the preStop hook) stops receiving and answers only when the deliveries in
/// flight have finished; readiness turns false; SIGTERM afterwards exits at once.
async fn the_drain_endpoint_answers_once_in_flight_work_is_done(provider: Provider) {
    let setup = provision(provider, false, 10).await;
    let worker = Worker::start(|_| Reply::ok().after(Duration::from_secs(2))).await;
    let mut sidecar = start(&setup.env(&worker.url()).set("FERRY_CONCURRENCY", 1));
    setup.publish_bodies(&bodies("drain", 3)).await;
    eventually(
        Duration::from_secs(20),
        "a delivery in flight",
        async || (!worker.deliveries().is_empty()).then_some(()),
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = sidecar.get("/drain").await.expect("drain answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"drained":true,"in_flight":0}"#);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "drain waited for the delivery"
    );
    assert!(worker.deliveries().iter().all(|d| d.answered == Some(200)));
    let delivered = worker.deliveries().len();
    let (ready, reason) = sidecar.get("/readyz").await.unwrap();
    assert_eq!(ready, 503);
    assert!(reason.contains("draining"), "{reason}");
    assert_eq!(sidecar.metric("ferry_draining").await, Some(1.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        worker.deliveries().len(),
        delivered,
        "nothing is delivered after a drain"
    );
    sidecar.signal("TERM");
    assert!(sidecar.wait_exit(Duration::from_secs(5)).await.success());
}

/// `/drained` (the worker containers' preStop hook, which carries no token) starts nothing:
/// it answers once the drain SIGTERM began has finished the delivery in flight, before the
/// sidecar exits. A sidecar that is not stopping answers it with 409 after the patience, and
/// goes on delivering.
async fn drained_holds_the_workers_hook_until_the_sigterm_drain_is_done(provider: Provider) {
    const TOKEN: &str = "a-control-token-0123456789";
    let setup = provision(provider, false, 10).await;
    let worker = Worker::start(|_| Reply::ok().after(Duration::from_secs(3))).await;
    let env = setup
        .env(&worker.url())
        .set("FERRY_CONCURRENCY", 1)
        .set("FERRY_CONTROL_TOKEN", TOKEN);
    let mut sidecar = start(&env);
    let ids = setup.publish_bodies(&bodies("drained", 3)).await;
    eventually(
        Duration::from_secs(20),
        "a delivery in flight",
        async || (!worker.deliveries().is_empty()).then_some(()),
    )
    .await;
    let port = sidecar.metrics_port;
    let hook = tokio::spawn(async move {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/drained"))
            .await
            .expect("/drained answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("its body"))
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!hook.is_finished(), "/drained waits for a drain");
    assert_eq!(
        sidecar.metric("ferry_draining").await,
        Some(0.0),
        "and starts none"
    );
    sidecar.signal("TERM");
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), hook)
        .await
        .expect("/drained answers within the drain")
        .expect("the hook's task");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"drained":true,"in_flight":0}"#)
    );
    assert_eq!(worker.deliveries().len(), 1, "nothing new after SIGTERM");
    assert!(
        worker.deliveries().iter().all(|d| d.answered == Some(200)),
        "the delivery in flight finished before the hook was answered"
    );
    assert!(sidecar.wait_exit(Duration::from_secs(5)).await.success());

    let second = start(&env);
    eventually(
        Duration::from_secs(20),
        "the second sidecar to listen",
        async || second.get("/healthz").await.map(|_| ()),
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = second.get("/drained").await.expect("/drained answers");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not draining"), "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "it waited for a drain to begin"
    );
    eventually(
        Duration::from_secs(60),
        "the other messages delivered by the sidecar that was asked",
        async || (worker.succeeded_ids().len() >= ids.len()).then_some(()),
    )
    .await;
    assert_eq!(second.metric("ferry_draining").await, Some(0.0));
}

/// A drain that begins while an SQS long poll is waiting: the poll cannot be called off,
/// and the message it then brings is delivered and deleted, not handed back. (Every receive
/// counts towards `maxReceiveCount`, so handing it back would spend one of the message's
/// deliveries on a scale-down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_drain_finds_in_a_long_poll_is_delivered_not_handed_back() {
    let setup = provision(Provider::Sqs, false, 10).await;
    let worker = Worker::start(|_| Reply::ok()).await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_CONCURRENCY", 1)
            .set("FERRY_RECEIVE_WAIT_SECONDS", 5),
    );
    eventually(Duration::from_secs(20), "the sidecar ready", async || {
        (sidecar.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    // Into the long poll on an empty queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (drained, ids) = tokio::join!(sidecar.get("/drain"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        setup.publish_bodies(&bodies("late", 1)).await
    });
    let (status, body) = drained.expect("drain answers");
    assert_eq!(status, 200, "{body}");
    let deliveries = worker.deliveries();
    assert_eq!(
        deliveries
            .iter()
            .map(|d| d.message_id.clone())
            .collect::<Vec<_>>(),
        ids,
        "the message the long poll brought was delivered once; log:\n{}",
        sidecar.log_text()
    );
    assert_eq!(deliveries[0].answered, Some(200));
    // Deleted: nothing is left for the next consumer.
    let left = setup
        .reader(&setup.queue.queue)
        .await
        .receive(10, Duration::from_secs(2))
        .await
        .expect("receive");
    assert!(left.is_empty(), "still in the queue: {left:?}");
}

/// A 429 with `Retry-After: 3` holds the message back for three seconds (not the 0.2 s
/// backoff the sidecar would otherwise use), then it is delivered again.
async fn retry_after_from_the_worker_is_honoured(provider: Provider) {
    let setup = provision(provider, false, 10).await;
    let worker = Worker::start(|d| {
        if d.seen == 1 {
            Reply {
                retry_after: Some("3".into()),
                ..Reply::status(429)
            }
        } else {
            Reply::ok()
        }
    })
    .await;
    let _sidecar = start(&setup.env(&worker.url()));
    setup.publish_bodies(&["{\"busy\":1}".to_string()]).await;
    eventually(
        Duration::from_secs(30),
        "the retried delivery",
        async || (worker.succeeded_ids().len() == 1).then_some(()),
    )
    .await;
    let deliveries = worker.deliveries();
    assert_eq!(deliveries.len(), 2);
    let gap = deliveries[1].started - deliveries[0].started;
    assert!(
        gap >= Duration::from_millis(2900),
        "Retry-After: 3 honoured, got {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(10),
        "not held much longer than asked: {gap:?}"
    );
}

/// SIGKILL mid-delivery: the lease runs out and the queue redelivers to the next sidecar.
async fn sigkill_loses_nothing(provider: Provider) {
    let setup = provision(provider, false, 10).await;
    // The first delivery outlives the test, so the only 2xx the worker can give is to a
    // redelivery: an answer to the killed sidecar's request (hyper may not notice the closed
    // connection) can neither count as the message being saved nor hide its redelivery.
    let worker = Worker::start(|d| {
        if d.seen == 1 {
            Reply::ok().after(Duration::from_secs(600))
        } else {
            Reply::ok()
        }
    })
    .await;
    let env = setup.env(&worker.url());
    let sidecar = start(&env);
    let ids = setup.publish_bodies(&["{\"kill\":true}".to_string()]).await;
    eventually(
        Duration::from_secs(20),
        "the delivery to start",
        async || (!worker.deliveries().is_empty()).then_some(()),
    )
    .await;
    // Killed a moment into the delivery rather than at its first byte, as a kill mid-load
    // would be. The delivery lasts 600 s, so the kill still lands in the middle of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sidecar.signal("KILL");
    drop(sidecar);

    let _second = start(&env);
    // The lease is 10 s, but with the whole suite on 2 cores the Pub/Sub emulator's
    // redelivery once took longer than 60 s in CI; the wait is generous, not the lease.
    eventually(
        Duration::from_secs(120),
        "the redelivery after the lease expired",
        async || (worker.succeeded_ids() == ids).then_some(()),
    )
    .await;
}

/// Messages of one ordering group (FIFO group / ordering key) never overlap and keep their
/// order, while different groups proceed in parallel.
async fn ordering_groups_are_delivered_one_at_a_time_in_order(provider: Provider) {
    let setup = provision(provider, true, 10).await;
    let worker = Worker::start(|d| {
        let n: u64 = d.body.bytes().map(u64::from).sum();
        Reply::ok().after(Duration::from_millis(n % 40))
    })
    .await;
    let _sidecar = start(&setup.env(&worker.url()).set("FERRY_CONCURRENCY", 6));
    let mut messages = Vec::new();
    for i in 0..6 {
        for group in ["a", "b", "c"] {
            messages.push(OutgoingMessage {
                body: format!("{group}-{i}").into_bytes(),
                attributes: vec![],
                ordering_group: Some(group.into()),
                deduplication_id: None,
            });
        }
    }
    setup.publish(messages).await;

    eventually(
        Duration::from_secs(40),
        "all 18 ordered messages",
        async || (worker.succeeded_ids().len() >= 18).then_some(()),
    )
    .await;
    assert!(
        worker.overlapping_groups().is_empty(),
        "two deliveries of one group overlapped: {:?}",
        worker.overlapping_groups()
    );
    for group in ["a", "b", "c"] {
        let order: Vec<String> = worker
            .deliveries()
            .into_iter()
            .filter(|d| d.answered == Some(200) && d.body.starts_with(group))
            .map(|d| d.body)
            .collect();
        let expected: Vec<String> = (0..6).map(|i| format!("{group}-{i}")).collect();
        assert_eq!(order, expected, "group {group} in order");
    }
}

/// A queue that does not exist: readiness false with the reason, errors counted, the process
/// keeps retrying instead of crash-looping, and still exits cleanly on SIGTERM.
async fn a_missing_queue_makes_the_sidecar_unready_not_crash(provider: Provider) {
    let setup = provision(provider, false, 5).await;
    let missing = match provider {
        Provider::Sqs => setup.queue.queue.replace("/ferry-", "/missing-ferry-"),
        Provider::PubSub => format!(
            "projects/{PUBSUB_PROJECT}/subscriptions/{}",
            unique_name("missing")
        ),
    };
    let worker = Worker::start(|_| Reply::ok()).await;
    let mut sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_QUEUE", &missing)
            .set("FERRY_STATS_INTERVAL", 0.2),
    );
    let (status, body) = eventually(Duration::from_secs(20), "/readyz to explain", async || {
        let (status, body) = sidecar.get("/readyz").await?;
        (status == 503 && body.contains("not_found")).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("what to do"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sidecar.is_running(),
        "a missing queue must not crash the sidecar"
    );
    let errors = sidecar.get("/metrics").await.unwrap().1;
    assert!(
        errors.contains("ferry_queue_api_errors_total{kind=\"not_found\""),
        "{errors}"
    );
    assert_eq!(sidecar.metric("ferry_ready").await, Some(0.0));
    sidecar.signal("TERM");
    assert!(sidecar.wait_exit(Duration::from_secs(10)).await.success());
}

/// With Cloud Monitoring configured, a Pub/Sub sidecar exports the subscription's backlog,
/// and the dead-letter subscription's depth, from it. (Google offers no Monitoring emulator;
/// the stand-in answers the documented `timeSeries.list` shape.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_backlog_comes_from_cloud_monitoring_when_configured() {
    let setup = provision(Provider::PubSub, false, 5).await;
    let monitoring = ferry_tests::monitoring::FakeMonitoring::start().await;
    let subscription_id = setup.queue.queue.rsplit('/').next().unwrap().to_string();
    let dlq_id = setup
        .queue
        .dead_letter
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    monitoring.set(
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        &subscription_id,
        1234,
    );
    monitoring.set(
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        &dlq_id,
        7,
    );
    let worker = Worker::start(|_| Reply::ok()).await;
    let sidecar = start(
        &setup
            .env(&worker.url())
            .set("FERRY_PUBSUB_MONITORING", "true")
            .set("FERRY_MONITORING_ENDPOINT", monitoring.url()),
    );
    eventually(
        Duration::from_secs(20),
        "the backlog from Cloud Monitoring",
        async || {
            let visible = sidecar
                .metric("ferry_queue_messages{state=\"visible\"")
                .await?;
            let dead = sidecar.metric("ferry_dead_letter_messages").await?;
            (visible == 1234.0 && dead == 7.0).then_some(())
        },
    )
    .await;
    assert!(
        monitoring.filters().iter().any(|f| f.contains(&format!(
            "resource.labels.subscription_id=\"{subscription_id}\""
        ))),
        "{:?}",
        monitoring.filters()
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let out = std::process::Command::new(BINARY)
        .env_clear()
        .env("FERRY_PROVIDER", "sqs")
        .env("FERRY_QUEUE", "https://sqs.eu-west-1.amazonaws.com/1/q")
        .env("FERRY_CONCURRENCY", "lots")
        .output()
        .expect("run ferry-consumer");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FERRY_CONCURRENCY must be a whole number from 1 to 1000"),
        "{stderr}"
    );

    let out = std::process::Command::new(BINARY)
        .env_clear()
        .env("FERRY_PROVIDER", "pubsub")
        .env("FERRY_QUEUE", "orders")
        .output()
        .expect("run ferry-consumer");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("projects/<project>/subscriptions/<subscription>")
    );

    let out = std::process::Command::new(BINARY)
        .env_clear()
        .output()
        .expect("run ferry-consumer");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_PROVIDER"));

    for bad in ["0", "-5", "NaN", "inf", "lots", ""] {
        let out = std::process::Command::new(BINARY)
            .env_clear()
            .env("FERRY_PROVIDER", "sqs")
            .env("FERRY_QUEUE", "https://sqs.eu-west-1.amazonaws.com/1/q")
            .env("FERRY_RATE_LIMIT", bad)
            .output()
            .expect("run ferry-consumer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("FERRY_RATE_LIMIT must be a positive number of deliveries per second"),
            "{bad:?}: {stderr}"
        );
    }
}

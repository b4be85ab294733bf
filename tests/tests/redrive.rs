//! Redriving a dead-letter queue back to its queue (`ferry_queues::redrive`) against moto's SQS
//! server and Google's Pub/Sub emulator: every message arrives once with its own attributes and
//! ordering group and without the dead-letter bookkeeping, a message this request moved before
//! is left where it is, and a pass cut short by its budget loses nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_queues::provision::{
    OutgoingMessage, Owner, ProvisionedQueue, QueueRequest, ensure_queue, publish,
};
use ferry_queues::redrive::{REDRIVE_ATTRIBUTE, RedrivePass, RedriveRequest, redrive};
use ferry_queues::{ConsumerTarget, Provider};
use ferry_tests::emulators::{self, PUBSUB_PROJECT};
use ferry_tests::unique_name;

ferry_tests::for_both_providers!(
    every_dead_letter_is_moved_once_without_its_bookkeeping,
    a_message_this_request_moved_before_is_left_in_the_dead_letter_queue,
    the_ordering_group_survives_the_move,
    a_pass_out_of_budget_loses_nothing_and_the_next_one_finishes,
);

/// The budget of a pass that is expected to finish: far more than a few dozen messages need.
const PASS_BUDGET: Duration = Duration::from_secs(10);

/// A queue and its dead-letter queue on the provider's emulator.
struct Setup {
    provider: Provider,
    endpoint: String,
    queue: ProvisionedQueue,
}

async fn setup(provider: Provider, ordered: bool) -> Setup {
    let endpoint = match provider {
        Provider::Sqs => emulators::moto().url(),
        Provider::PubSub => emulators::pubsub().host_port(),
    };
    let request = QueueRequest {
        project: Some(PUBSUB_PROJECT.into()),
        endpoint: Some(endpoint.clone()),
        lease: Duration::from_secs(30),
        ordered,
        owner: Some(Owner {
            cluster: "test".into(),
            namespace: "shop".into(),
            name: "orders".into(),
        }),
        ..QueueRequest::new(provider, unique_name("redrive"))
    };
    let queue = ensure_queue(&request).await.expect("provision");
    Setup {
        provider,
        endpoint,
        queue,
    }
}

/// A message as it arrived in a queue, for comparison.
#[derive(Clone, Debug, PartialEq)]
struct Arrived {
    body: String,
    attributes: BTreeMap<String, String>,
    ordering_group: Option<String>,
}

fn message(body: &str, attributes: &[(&str, &str)], group: Option<&str>) -> OutgoingMessage {
    OutgoingMessage {
        body: body.as_bytes().to_vec(),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ordering_group: group.map(str::to_string),
        deduplication_id: None,
    }
}

/// What the sidecar (and, on Pub/Sub, the service's own dead-lettering) adds to a dead letter.
fn bookkeeping(provider: Provider) -> Vec<(&'static str, &'static str)> {
    let mut attributes = vec![
        ("ferry-dead-letter-reason", "the worker answered 500"),
        ("ferry-source-message-id", "original-id"),
        (REDRIVE_ATTRIBUTE, "an-earlier-request"),
    ];
    if provider == Provider::PubSub {
        attributes.extend([
            ("ferry-dead-letter-status", "500"),
            ("CloudPubSubDeadLetterSourceDeliveryCount", "5"),
            (
                "CloudPubSubDeadLetterSourceSubscription",
                "projects/ferry-test/subscriptions/orders",
            ),
        ]);
    }
    attributes
}

impl Setup {
    async fn put_dead_letters(&self, messages: Vec<OutgoingMessage>) {
        publish(
            self.provider,
            Some(&self.endpoint),
            &self.queue.dead_letter_publish_to,
            messages,
        )
        .await
        .expect("put messages in the dead-letter queue");
    }

    async fn pass(&self, request: &str, budget: Duration) -> RedrivePass {
        redrive(&RedriveRequest {
            provider: self.provider,
            endpoint: Some(&self.endpoint),
            dead_letter: &self.queue.dead_letter,
            destination: &self.queue.publish_to,
            request,
            budget,
        })
        .await
        .expect("a redrive pass")
    }

    /// Passes until one reports finished; what they moved and left, summed.
    async fn redrive_to_the_end(&self, request: &str) -> RedrivePass {
        let mut total = RedrivePass::default();
        for _ in 0..10 {
            let pass = self.pass(request, PASS_BUDGET).await;
            total.moved += pass.moved;
            total.left_again += pass.left_again;
            if pass.finished {
                total.finished = true;
                return total;
            }
        }
        panic!("ten passes of {PASS_BUDGET:?} did not finish: {total:?}");
    }

    /// Receives from the main queue (or with `dead_letter`, its dead-letter queue) until
    /// `expected` messages arrived, then `linger` more to catch duplicates; acknowledges all.
    async fn receive(&self, dead_letter: bool, expected: usize, linger: Duration) -> Vec<Arrived> {
        let queue = if dead_letter {
            &self.queue.dead_letter
        } else {
            &self.queue.queue
        };
        let consumer = ferry_queues::connect(&ConsumerTarget {
            provider: self.provider,
            queue: queue.clone(),
            dead_letter: None,
            dead_letter_topic: None,
            endpoint: Some(self.endpoint.clone()),
            lease: Duration::from_secs(60),
            max_outstanding: 100,
            monitoring: None,
        })
        .await
        .expect("connect a consumer");
        let mut arrived = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut done_at = None;
        loop {
            if arrived.len() >= expected && done_at.is_none() {
                done_at = Some(Instant::now() + linger);
            }
            let now = Instant::now();
            if done_at.is_some_and(|end| now >= end) || now >= deadline {
                break;
            }
            for message in consumer
                .receive(10, Duration::from_millis(500))
                .await
                .expect("receive")
            {
                arrived.push(Arrived {
                    body: String::from_utf8_lossy(&message.body).into_owned(),
                    attributes: message.attributes.clone(),
                    ordering_group: message.ordering_group.clone(),
                });
                consumer.ack(message.lease).await.expect("ack");
            }
        }
        consumer.close().await;
        consumer.flush().await;
        arrived
    }
}

fn bodies(arrived: &[Arrived]) -> Vec<String> {
    let mut bodies: Vec<String> = arrived.iter().map(|a| a.body.clone()).collect();
    bodies.sort();
    bodies
}

/// 25 dead letters with user attributes and the dead-letter bookkeeping: passes until
/// finished move each exactly once, with its attributes but none of the bookkeeping, marked
/// with the request; the dead-letter queue is empty afterwards.
async fn every_dead_letter_is_moved_once_without_its_bookkeeping(provider: Provider) {
    let setup = setup(provider, false).await;
    let count = 25;
    let mut messages = Vec::new();
    for i in 0..count {
        let seq = i.to_string();
        let mut attributes = vec![("tenant", "acme"), ("seq", seq.as_str())];
        attributes.extend(bookkeeping(provider));
        messages.push(message(&format!("{{\"order\":{i}}}"), &attributes, None));
    }
    setup.put_dead_letters(messages).await;

    let started = Instant::now();
    let total = setup.redrive_to_the_end("fix-2024-06-01").await;
    eprintln!("{provider}: {total:?} in {:?}", started.elapsed());
    assert_eq!(
        total,
        RedrivePass {
            moved: count as u64,
            left_again: 0,
            finished: true
        }
    );

    let arrived = setup.receive(false, count, Duration::from_secs(2)).await;
    let expected: Vec<String> = {
        let mut b: Vec<String> = (0..count).map(|i| format!("{{\"order\":{i}}}")).collect();
        b.sort();
        b
    };
    assert_eq!(bodies(&arrived), expected, "each message exactly once");
    for message in &arrived {
        let seq = message
            .body
            .trim_start_matches("{\"order\":")
            .trim_end_matches('}');
        let expected: BTreeMap<String, String> = [
            ("tenant", "acme"),
            ("seq", seq),
            (REDRIVE_ATTRIBUTE, "fix-2024-06-01"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(message.attributes, expected, "{}", message.body);
    }
    let left = setup.receive(true, 0, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "the dead-letter queue still holds {left:?}"
    );
}

/// A dead letter that already carries this request's marker was moved by it and failed again:
/// it stays in the dead-letter queue (every pass hands it back), while one marked by another
/// request is moved.
async fn a_message_this_request_moved_before_is_left_in_the_dead_letter_queue(provider: Provider) {
    let setup = setup(provider, false).await;
    setup
        .put_dead_letters(vec![
            message(
                "failed-again",
                &[("tenant", "acme"), (REDRIVE_ATTRIBUTE, "fix-2")],
                None,
            ),
            message(
                "moved-by-fix-1",
                &[("tenant", "acme"), (REDRIVE_ATTRIBUTE, "fix-1")],
                None,
            ),
        ])
        .await;

    let first = setup.pass("fix-2", PASS_BUDGET).await;
    assert_eq!(
        first,
        RedrivePass {
            moved: 1,
            left_again: 1,
            finished: true
        }
    );
    // The next pass finds it again: it was handed back, not lost and not moved.
    let second = setup.pass("fix-2", PASS_BUDGET).await;
    assert_eq!(
        second,
        RedrivePass {
            moved: 0,
            left_again: 1,
            finished: true
        }
    );

    let moved = setup.receive(false, 1, Duration::from_secs(2)).await;
    assert_eq!(bodies(&moved), ["moved-by-fix-1"]);
    assert_eq!(
        moved[0]
            .attributes
            .get(REDRIVE_ATTRIBUTE)
            .map(String::as_str),
        Some("fix-2")
    );
    let left = setup.receive(true, 1, Duration::from_secs(2)).await;
    assert_eq!(bodies(&left), ["failed-again"]);
    assert_eq!(
        left[0]
            .attributes
            .get(REDRIVE_ATTRIBUTE)
            .map(String::as_str),
        Some("fix-2"),
        "left untouched"
    );
}

/// SQS FIFO message groups and Pub/Sub ordering keys are kept; on SQS also the order within a
/// group. On Pub/Sub the key the sidecar saves in `ferry-ordering-key` (its dead-letter topic
/// is published without ordering) becomes the copy's ordering key again.
async fn the_ordering_group_survives_the_move(provider: Provider) {
    let setup = setup(provider, true).await;
    let mut messages = Vec::new();
    for i in 0..6 {
        for group in ["customer-1", "customer-2"] {
            messages.push(message(&format!("{group}/{i}"), &[], Some(group)));
        }
    }
    if provider == Provider::PubSub {
        messages.push(message(
            "customer-3/0",
            &[("ferry-ordering-key", "customer-3")],
            None,
        ));
    }
    let expected = messages.len();
    setup.put_dead_letters(messages).await;

    let total = setup.redrive_to_the_end("fix-ordering").await;
    assert_eq!(total.moved, expected as u64, "{total:?}");

    let arrived = setup.receive(false, expected, Duration::from_secs(2)).await;
    assert_eq!(arrived.len(), expected, "{arrived:?}");
    for message in &arrived {
        let group = message.body.split('/').next().map(str::to_string);
        assert_eq!(message.ordering_group, group, "{}", message.body);
        assert!(
            !message.attributes.contains_key("ferry-ordering-key"),
            "{message:?}"
        );
    }
    if provider == Provider::Sqs {
        for group in ["customer-1", "customer-2"] {
            let order: Vec<&str> = arrived
                .iter()
                .filter(|m| m.ordering_group.as_deref() == Some(group))
                .map(|m| m.body.as_str())
                .collect();
            let expected: Vec<String> = (0..6).map(|i| format!("{group}/{i}")).collect();
            assert_eq!(order, expected, "the order within {group}");
        }
    }
}

/// A pass with no budget starts nothing; one with a budget far shorter than its work stops
/// early (after the batch it is in) and hands back what it did not move; passes with a budget
/// then finish, and every message is in the main queue exactly once.
async fn a_pass_out_of_budget_loses_nothing_and_the_next_one_finishes(provider: Provider) {
    let setup = setup(provider, false).await;
    // Thirty SQS batches (about 50 ms each on moto) or two Pub/Sub pulls with their
    // publishes: more than the short pass below can do.
    let count = 300;
    setup
        .put_dead_letters(
            (0..count)
                .map(|i| message(&format!("m{i:03}"), &[("seq", &i.to_string())], None))
                .collect(),
        )
        .await;

    let none = setup.pass("fix", Duration::ZERO).await;
    assert_eq!(none, RedrivePass::default(), "no budget, no work");

    let short = setup.pass("fix", Duration::from_millis(100)).await;
    eprintln!("{provider}: a 100 ms pass: {short:?}");
    assert!(!short.finished, "{short:?}");

    let rest = setup.redrive_to_the_end("fix").await;
    assert_eq!(short.moved + rest.moved, count as u64, "{short:?} {rest:?}");
    assert_eq!(short.left_again + rest.left_again, 0);

    let arrived = setup.receive(false, count, Duration::from_secs(2)).await;
    let expected: Vec<String> = (0..count).map(|i| format!("m{i:03}")).collect();
    assert_eq!(bodies(&arrived), expected, "each message exactly once");
    let left = setup.receive(true, 0, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "the dead-letter queue still holds {left:?}"
    );
}

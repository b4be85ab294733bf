//! Pub/Sub: the topic and the dead-letter topic, a subscription on the dead-letter topic (so
//! dead letters are kept and can be inspected and redriven), then the subscription with its
//! dead-letter policy, retry policy, ack deadline, ordering, exactly-once and filter.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, RetryPolicy, Subscription};

use super::{DeleteOutcome, ProvisionedQueue, QueueRequest, conflict};
use crate::pubsub::{configure_builder, emulator_endpoint, map_gax_error, subscription_admin};
use crate::{ConsumerTarget, Provider, QueueError, QueueErrorKind};

/// Pub/Sub keeps unacknowledged messages at most 7 days.
const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEAD_LETTER_ACK_DEADLINE: i32 = 60;

struct Names {
    topic: String,
    dead_letter_topic: String,
    subscription: String,
    dead_letter_subscription: String,
}

fn names(project: &str, name: &str) -> Names {
    Names {
        topic: format!("projects/{project}/topics/{name}"),
        dead_letter_topic: format!("projects/{project}/topics/{name}-dlq"),
        subscription: format!("projects/{project}/subscriptions/{name}"),
        dead_letter_subscription: format!("projects/{project}/subscriptions/{name}-dlq"),
    }
}

fn wkt(duration: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::try_from(duration).unwrap_or_default()
}

fn seconds(duration: &Option<google_cloud_wkt::Duration>) -> Option<i64> {
    duration.as_ref().map(|d| d.seconds())
}

fn is_not_found(err: &google_cloud_pubsub::Error) -> bool {
    err.status().is_some_and(|s| s.code == Code::NotFound)
}

/// A create that may fail only because the resource is there already (or may not be made
/// by this caller, while looking it up is allowed): the look-up decides.
fn look_up_instead(err: &google_cloud_pubsub::Error) -> bool {
    err.status()
        .is_some_and(|s| matches!(s.code, Code::AlreadyExists | Code::PermissionDenied))
}

#[derive(Clone)]
struct Clients {
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

async fn build_clients(endpoint: Option<&String>) -> Result<Clients, QueueError> {
    let topics = configure_builder!(TopicAdmin::builder(), endpoint)
        .build()
        .await
        .map_err(|e| QueueError::new("connect", QueueErrorKind::Invalid, e.to_string()))?;
    let subscriptions = subscription_admin(endpoint).await?;
    Ok(Clients {
        topics,
        subscriptions,
    })
}

/// One pair of admin clients per endpoint, kept by a long-lived caller (the operator's
/// [`super::Provisioner`]). Building one sets up TLS and a connection pool, which costs far
/// more CPU and memory than the calls it then makes: reconciling a thousand QueueConsumers
/// built two thousand. The clients are made to be shared (an `Arc` inside); calls multiplex
/// over their HTTP/2 connections. Kept per caller, not per process, because a client belongs
/// to the Tokio runtime that built it.
#[derive(Default)]
pub(super) struct ClientCache(tokio::sync::Mutex<HashMap<Option<String>, Clients>>);

impl ClientCache {
    async fn get(&self, request: &QueueRequest) -> Result<Clients, QueueError> {
        let endpoint = emulator_endpoint(request.endpoint.as_deref());
        let mut cached = self.0.lock().await;
        if let Some(clients) = cached.get(&endpoint) {
            return Ok(clients.clone());
        }
        let clients = build_clients(endpoint.as_ref()).await?;
        cached.insert(endpoint, clients.clone());
        Ok(clients)
    }
}

fn project(request: &QueueRequest) -> Result<&str, QueueError> {
    request
        .project
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            QueueError::new(
                "CreateTopic",
                QueueErrorKind::Invalid,
                "a Pub/Sub queue needs a project",
            )
        })
}

fn owner_labels(request: &QueueRequest) -> HashMap<String, String> {
    request.owner.iter().flat_map(|o| o.labels()).collect()
}

/// Refuses a resource owned by someone else unless adoption was asked for; true when its
/// labels must be rewritten to claim it.
fn check_owner(
    request: &QueueRequest,
    what: &str,
    labels: &HashMap<String, String>,
) -> Result<bool, QueueError> {
    match &request.owner {
        Some(owner) if !owner.owns(labels) => {
            if request.adopt {
                Ok(true)
            } else {
                Err(conflict(what, labels))
            }
        }
        _ => Ok(false),
    }
}

/// Topics are created with the owner's labels but never claimed or refused: a topic is
/// where producers publish and may legitimately feed other subscriptions too. Ownership is
/// decided on the subscriptions, which are what Ferry consumes and deletes.
async fn ensure_topic(
    clients: &Clients,
    request: &QueueRequest,
    name: &str,
    created: &mut Vec<String>,
) -> Result<(), QueueError> {
    if request.expect_new {
        crate::calls::record("pubsub", "CreateTopic");
        match create_topic(clients, request, name).await {
            Ok(()) => {
                created.push(name.to_string());
                return Ok(());
            }
            Err(e) if look_up_instead(&e) => {}
            Err(e) => return Err(map_gax_error("CreateTopic", &e)),
        }
    }
    crate::calls::record("pubsub", "GetTopic");
    match clients.topics.get_topic().set_topic(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => {
            crate::calls::record("pubsub", "CreateTopic");
            create_topic(clients, request, name)
                .await
                .map_err(|e| map_gax_error("CreateTopic", &e))?;
            created.push(name.to_string());
            Ok(())
        }
        Err(e) => Err(map_gax_error("GetTopic", &e)),
    }
}

async fn create_topic(
    clients: &Clients,
    request: &QueueRequest,
    name: &str,
) -> Result<(), google_cloud_pubsub::Error> {
    clients
        .topics
        .create_topic()
        .set_name(name)
        .set_labels(owner_labels(request))
        .send()
        .await
        .map(drop)
}

/// The subscription as the request describes it.
fn desired_subscription(request: &QueueRequest, names: &Names) -> Subscription {
    let mut subscription = Subscription::new()
        .set_name(names.subscription.clone())
        .set_topic(names.topic.clone())
        .set_ack_deadline_seconds(request.lease.as_secs().clamp(10, 600) as i32)
        .set_enable_message_ordering(request.ordered)
        .set_enable_exactly_once_delivery(request.exactly_once)
        .set_filter(request.filter.clone().unwrap_or_default())
        .set_labels(owner_labels(request))
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(names.dead_letter_topic.clone())
                .set_max_delivery_attempts(request.max_deliveries as i32),
        );
    if let Some(retention) = request.retention {
        subscription = subscription.set_message_retention_duration(wkt(retention));
    }
    if let Some((min, max)) = request.retry_backoff {
        subscription = subscription.set_retry_policy(
            RetryPolicy::new()
                .set_minimum_backoff(wkt(min))
                .set_maximum_backoff(wkt(max)),
        );
    }
    subscription
}

/// The update mask paths whose values differ; Err for differences Pub/Sub cannot change.
fn drift(current: &Subscription, desired: &Subscription) -> Result<Vec<&'static str>, QueueError> {
    let immutable = [
        ("topic", current.topic != desired.topic),
        (
            "enable_message_ordering",
            current.enable_message_ordering != desired.enable_message_ordering,
        ),
        ("filter", current.filter != desired.filter),
    ];
    if let Some((field, _)) = immutable.iter().find(|(_, differs)| *differs) {
        return Err(QueueError::new(
            "UpdateSubscription",
            QueueErrorKind::Invalid,
            format!(
                "subscription {} has a different {field}, which Pub/Sub cannot change; delete the subscription or use another name",
                current.name
            ),
        ));
    }
    let dead_letter = |s: &Subscription| {
        s.dead_letter_policy
            .as_ref()
            .map(|p| (p.dead_letter_topic.clone(), p.max_delivery_attempts))
    };
    let retry = |s: &Subscription| {
        s.retry_policy
            .as_ref()
            .map(|p| (seconds(&p.minimum_backoff), seconds(&p.maximum_backoff)))
    };
    let mut paths = Vec::new();
    if current.ack_deadline_seconds != desired.ack_deadline_seconds {
        paths.push("ack_deadline_seconds");
    }
    if dead_letter(current) != dead_letter(desired) {
        paths.push("dead_letter_policy");
    }
    if desired.retry_policy.is_some() && retry(current) != retry(desired) {
        paths.push("retry_policy");
    }
    if current.enable_exactly_once_delivery != desired.enable_exactly_once_delivery {
        paths.push("enable_exactly_once_delivery");
    }
    if desired.message_retention_duration.is_some()
        && seconds(&current.message_retention_duration)
            != seconds(&desired.message_retention_duration)
    {
        paths.push("message_retention_duration");
    }
    Ok(paths)
}

async fn ensure_subscription(
    clients: &Clients,
    request: &QueueRequest,
    desired: Subscription,
    created: &mut Vec<String>,
    corrected: &mut Vec<String>,
) -> Result<(), QueueError> {
    let name = desired.name.clone();
    if request.expect_new {
        crate::calls::record("pubsub", "CreateSubscription");
        match create_subscription(clients, desired.clone()).await {
            Ok(()) => {
                created.push(name);
                return Ok(());
            }
            Err(e) if look_up_instead(&e) => {}
            Err(e) => return Err(map_gax_error("CreateSubscription", &e)),
        }
    }
    crate::calls::record("pubsub", "GetSubscription");
    match clients
        .subscriptions
        .get_subscription()
        .set_subscription(&name)
        .send()
        .await
    {
        Ok(current) => {
            let adopt = check_owner(
                request,
                &format!("Pub/Sub subscription {name}"),
                &current.labels,
            )?;
            let mut paths = drift(&current, &desired)?;
            if adopt {
                if request.endpoint.is_some() {
                    // The emulator rejects "labels" in an update mask; Google accepts it.
                    corrected.push(format!(
                        "{name}: owner (adopted; the emulator cannot record it)"
                    ));
                } else {
                    paths.push("labels");
                }
            }
            if !paths.is_empty() {
                corrected.extend(paths.iter().map(|p| format!("{name}: {p}")));
                crate::calls::record("pubsub", "UpdateSubscription");
                let mut update = desired;
                if adopt {
                    let mut labels = current.labels.clone();
                    labels.extend(owner_labels(request));
                    update = update.set_labels(labels);
                }
                clients
                    .subscriptions
                    .update_subscription()
                    .set_subscription(update)
                    .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(paths))
                    .send()
                    .await
                    .map_err(|e| map_gax_error("UpdateSubscription", &e))?;
            }
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            crate::calls::record("pubsub", "CreateSubscription");
            create_subscription(clients, desired)
                .await
                .map_err(|e| map_gax_error("CreateSubscription", &e))?;
            created.push(name);
            Ok(())
        }
        Err(e) => Err(map_gax_error("GetSubscription", &e)),
    }
}

async fn create_subscription(
    clients: &Clients,
    desired: Subscription,
) -> Result<(), google_cloud_pubsub::Error> {
    clients
        .subscriptions
        .create_subscription()
        .with_request(desired)
        .send()
        .await
        .map(drop)
}

pub(super) async fn ensure(
    cache: &ClientCache,
    request: &QueueRequest,
) -> Result<ProvisionedQueue, QueueError> {
    if !(5..=100).contains(&request.max_deliveries) {
        return Err(QueueError::new(
            "CreateSubscription",
            QueueErrorKind::Invalid,
            format!(
                "Pub/Sub allows 5 to 100 delivery attempts before dead-lettering, got {}",
                request.max_deliveries
            ),
        ));
    }
    let names = names(project(request)?, &request.name);
    let clients = cache.get(request).await?;
    let (mut created, mut created_dead_letter, mut corrected) =
        (Vec::new(), Vec::new(), Vec::new());
    // The two topics depend on nothing: made side by side, one round trip instead of two.
    futures::try_join!(
        ensure_topic(&clients, request, &names.topic, &mut created),
        ensure_topic(
            &clients,
            request,
            &names.dead_letter_topic,
            &mut created_dead_letter
        ),
    )?;
    created.append(&mut created_dead_letter);
    // The dead-letter topic gets its subscription before anything can be dead-lettered, so no
    // dead letter is published to a topic nobody keeps.
    let dead_letter_subscription = Subscription::new()
        .set_name(names.dead_letter_subscription.clone())
        .set_topic(names.dead_letter_topic.clone())
        .set_ack_deadline_seconds(DEAD_LETTER_ACK_DEADLINE)
        .set_labels(owner_labels(request))
        .set_message_retention_duration(wkt(request
            .dead_letter_retention
            .unwrap_or(DEFAULT_DEAD_LETTER_RETENTION)));
    ensure_subscription(
        &clients,
        request,
        dead_letter_subscription,
        &mut created,
        &mut corrected,
    )
    .await?;
    ensure_subscription(
        &clients,
        request,
        desired_subscription(request, &names),
        &mut created,
        &mut corrected,
    )
    .await?;
    Ok(ProvisionedQueue {
        queue: names.subscription,
        dead_letter: names.dead_letter_subscription,
        publish_to: names.topic,
        dead_letter_publish_to: names.dead_letter_topic,
        corrected,
        created,
    })
}

/// Pub/Sub has no message count outside Cloud Monitoring, so a non-empty DLQ is detected by
/// receiving from its subscription and handing the message straight back.
async fn dead_letter_has_messages(
    request: &QueueRequest,
    subscription: &str,
) -> Result<bool, QueueError> {
    let queue = crate::connect(&ConsumerTarget {
        provider: Provider::PubSub,
        queue: subscription.to_string(),
        dead_letter: None,
        dead_letter_topic: None,
        endpoint: request.endpoint.clone(),
        lease: Duration::from_secs(10),
        max_outstanding: 1,
        monitoring: None,
    })
    .await?;
    let received = queue.receive(1, Duration::from_secs(3)).await;
    let found = match received {
        Ok(messages) => {
            let found = !messages.is_empty();
            queue
                .release(messages.into_iter().map(|m| m.lease).collect())
                .await?;
            found
        }
        Err(e) if e.kind == QueueErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    queue.close().await;
    queue.flush().await;
    Ok(found)
}

pub(super) async fn delete(
    cache: &ClientCache,
    request: &QueueRequest,
    force: bool,
) -> Result<DeleteOutcome, QueueError> {
    let names = names(project(request)?, &request.name);
    let clients = cache.get(request).await?;
    let mut subscriptions = Vec::new();
    for name in [&names.subscription, &names.dead_letter_subscription] {
        crate::calls::record("pubsub", "GetSubscription");
        match clients
            .subscriptions
            .get_subscription()
            .set_subscription(name)
            .send()
            .await
        {
            Ok(s) => {
                if request.owner.as_ref().is_some_and(|o| !o.owns(&s.labels)) {
                    return Err(conflict(&format!("Pub/Sub subscription {name}"), &s.labels));
                }
                subscriptions.push(name.clone());
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_gax_error("GetSubscription", &e)),
        }
    }
    if !force
        && subscriptions.contains(&names.dead_letter_subscription)
        && dead_letter_has_messages(request, &names.dead_letter_subscription).await?
    {
        return Ok(DeleteOutcome::DeadLetterNotEmpty(1));
    }
    for name in subscriptions {
        crate::calls::record("pubsub", "DeleteSubscription");
        match clients
            .subscriptions
            .delete_subscription()
            .set_subscription(&name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_gax_error("DeleteSubscription", &e)),
        }
    }
    for name in [&names.topic, &names.dead_letter_topic] {
        crate::calls::record("pubsub", "GetTopic");
        match clients.topics.get_topic().set_topic(name).send().await {
            Ok(topic)
                if request
                    .owner
                    .as_ref()
                    .is_some_and(|o| !o.owns(&topic.labels)) =>
            {
                // A topic someone else owns stays; other subscribers may depend on it.
                continue;
            }
            Ok(_) => {}
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(map_gax_error("GetTopic", &e)),
        }
        crate::calls::record("pubsub", "DeleteTopic");
        match clients.topics.delete_topic().set_topic(name).send().await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_gax_error("DeleteTopic", &e)),
        }
    }
    Ok(DeleteOutcome::Deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_finds_mutable_and_refuses_immutable_changes() {
        let mut request = QueueRequest::new(Provider::PubSub, "orders");
        request.project = Some("p".into());
        let names = names("p", "orders");
        let desired = desired_subscription(&request, &names);
        assert!(drift(&desired, &desired).unwrap().is_empty());
        let current = desired.clone().set_ack_deadline_seconds(30);
        assert_eq!(
            drift(&current, &desired).unwrap(),
            vec!["ack_deadline_seconds"]
        );
        let current = desired.clone().set_filter("attributes.kind = \"x\"");
        let err = drift(&current, &desired).unwrap_err();
        assert!(err.message.contains("filter"), "{err}");
        let current = desired.clone().set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(names.dead_letter_topic.clone())
                .set_max_delivery_attempts(9),
        );
        assert_eq!(
            drift(&current, &desired).unwrap(),
            vec!["dead_letter_policy"]
        );
    }
}

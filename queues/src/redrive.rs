//! Moving the messages of a dead-letter queue back to the main queue, once the user has
//! fixed the worker and asks for it.
//!
//! The operator calls [`redrive`] once per reconcile, each call one bounded pass, until a pass
//! reports [`RedrivePass::finished`]: a redrive can hold more messages than one reconcile should
//! spend time on, and a pass that ends keeps nothing in memory, so an operator restart simply
//! carries on with the next pass.
//!
//! **Never lose a message.** Each message is first copied to the destination (SQS
//! SendMessageBatch, Pub/Sub publish awaited until the server has it) and only then deleted
//! from (SQS) or acknowledged on (Pub/Sub) the dead-letter queue. A copy that fails leaves the
//! message in the dead-letter queue, handed back at once. A crash, a failed delete or a failed
//! acknowledgement between the two steps leaves the message in both queues: a redrive can
//! duplicate a message (an SQS FIFO destination drops the duplicate when it is sent again
//! within five minutes, as its deduplication id comes from the dead letter's id and the
//! request), it never loses one.
//!
//! **Never loop.** Each copy carries [`REDRIVE_ATTRIBUTE`] with the request's token. A message
//! that fails again after being moved comes back to the dead-letter queue with that marker, and
//! the same request then leaves it there ([`RedrivePass::left_again`]) instead of feeding it
//! to the broken worker forever. A new request (another token) moves it again.

mod pubsub;
mod sqs;

use std::time::Duration;

use crate::{Provider, QueueError, QueueErrorKind};

/// Marks a message this redrive request put back on the main queue.
///
/// Its value is the request's token, so a message that fails again and returns to the
/// dead-letter queue is recognised and left there by the same request, and moved by a new one.
pub const REDRIVE_ATTRIBUTE: &str = "ferry-redrive";

/// The longest request token: it is written as an attribute value, and 256 characters of
/// UTF-8 (at most 1,024 bytes) fit Pub/Sub's attribute value limit.
pub const MAX_REQUEST_CHARS: usize = 256;

/// One pass of a redrive: where from, where to, and for how long.
pub struct RedriveRequest<'a> {
    pub provider: Provider,
    /// An SQS-compatible server or the Pub/Sub emulator, as elsewhere in the crate
    /// (ConsumerTarget::endpoint).
    pub endpoint: Option<&'a str>,
    /// SQS: the DLQ URL. Pub/Sub: the dead-letter topic's subscription path
    /// `projects/p/subscriptions/s`.
    pub dead_letter: &'a str,
    /// SQS: the main queue URL. Pub/Sub: the main topic path `projects/p/topics/t`.
    pub destination: &'a str,
    /// The user's request token (any string up to 256 chars); written as the value of
    /// REDRIVE_ATTRIBUTE.
    pub request: &'a str,
    /// Stop starting new work after this long; the pass then returns finished = false.
    pub budget: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedrivePass {
    /// Messages copied to the destination and then removed from the dead-letter queue in this
    /// pass.
    pub moved: u64,
    /// Messages found in the dead-letter queue that already carry REDRIVE_ATTRIBUTE == request:
    /// this request moved them once and they failed again, so they are left there (handed
    /// back), not moved again.
    pub left_again: u64,
    /// Nothing is left to move: a receive/pull that waited ~1-2 s returned no message other
    /// than ones held or left_again.
    pub finished: bool,
}

/// Runs one pass: moves messages from `request.dead_letter` to `request.destination` until the
/// dead-letter queue has nothing else to move (`finished`) or the budget is spent.
///
/// A pass may run past its budget by the time one batch takes to finish (SQS: a receive of up
/// to 1 s, a send and a delete of up to ten messages; Pub/Sub: a pull of up to 250, their
/// publishes and an acknowledge), since stopping in the middle of a copy would only leave
/// duplicates.
///
/// Limits worth knowing:
/// - SQS allows ten message attributes; a message that already has ten (after the dead-letter
///   bookkeeping is stripped) is copied without the marker, so if it fails again the same
///   request moves it again.
/// - SQS FIFO: a message left again is held until the pass ends, and while it is held SQS
///   delivers no later message of its group. Only messages dead-lettered after it (new
///   failures since the redrive started) can sit behind it; they stay in the dead-letter queue.
/// - Pub/Sub has no "queue is empty" answer: `finished` means that pulls repeated for
///   two seconds returned nothing to move.
pub async fn redrive(request: &RedriveRequest<'_>) -> Result<RedrivePass, QueueError> {
    validate(request)?;
    match request.provider {
        Provider::Sqs => sqs::pass(request).await,
        Provider::PubSub => pubsub::pass(request).await,
    }
}

fn validate(request: &RedriveRequest<'_>) -> Result<(), QueueError> {
    let invalid =
        |message: String| Err(QueueError::new("redrive", QueueErrorKind::Invalid, message));
    if request.request.is_empty() || request.request.chars().count() > MAX_REQUEST_CHARS {
        // SQS refuses an empty attribute value; the upper bound keeps the marker within
        // Pub/Sub's attribute value limit.
        return invalid(format!(
            "the redrive request token must have 1 to {MAX_REQUEST_CHARS} characters, got {}",
            request.request.chars().count()
        ));
    }
    if request.dead_letter == request.destination {
        return invalid(format!(
            "the dead-letter queue and the destination are the same ({}); a redrive would move messages onto themselves",
            request.dead_letter
        ));
    }
    Ok(())
}

use crate::model::dead_letter_attributes::{
    ALL as FERRY_DEAD_LETTER_ATTRIBUTES, ORDERING_KEY as ORDERING_KEY_ATTRIBUTE,
};

/// Pub/Sub's own dead-letter forwarding adds attributes with this prefix
/// (`CloudPubSubDeadLetterSourceDeliveryCount`, `...SourceSubscription`, ...).
const PUBSUB_DEAD_LETTER_PREFIX: &str = "CloudPubSubDeadLetter";

/// Whether an attribute records the message's stay in the dead-letter queue (or an earlier
/// redrive) rather than belonging to the message: such attributes are not copied back.
fn is_bookkeeping(name: &str) -> bool {
    name == REDRIVE_ATTRIBUTE
        || name.starts_with(PUBSUB_DEAD_LETTER_PREFIX)
        || FERRY_DEAD_LETTER_ATTRIBUTES.contains(&name)
}

/// The attributes a redriven copy carries: the message's own, without the dead-letter
/// bookkeeping, plus `REDRIVE_ATTRIBUTE = marker` while fewer than `max` remain (SQS allows
/// ten; a message that already uses all of them is copied without the marker rather than
/// losing one of its own attributes). Generic over the value so SQS keeps each attribute's
/// data type and binary values.
fn carried_attributes<V>(
    attributes: impl IntoIterator<Item = (String, V)>,
    marker: V,
    max: Option<usize>,
) -> Vec<(String, V)> {
    let mut carried: Vec<(String, V)> = attributes
        .into_iter()
        .filter(|(name, _)| !is_bookkeeping(name))
        .collect();
    if max.is_none_or(|max| carried.len() < max) {
        carried.push((REDRIVE_ATTRIBUTE.to_string(), marker));
    }
    carried
}

/// Whether this request moved the message before (it failed again since): the value of its
/// [`REDRIVE_ATTRIBUTE`] is this request's token.
fn redriven_by(marker: Option<&str>, request: &str) -> bool {
    marker == Some(request)
}

/// The SQS FIFO deduplication id of the copy of dead-letter message `message_id` made by
/// `request`: the same for every attempt, so a send retried within SQS's five-minute window
/// (after a crash or a failed delete) is dropped by the destination instead of duplicated.
/// Another request gets another id, so a message moved, failed again and redriven anew is
/// not mistaken for a duplicate.
fn deduplication_id(message_id: &str, request: &str) -> String {
    crate::model::fifo_id(message_id, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<V>(attributes: &[(String, V)]) -> Vec<&str> {
        let mut names: Vec<&str> = attributes.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn bookkeeping_is_stripped_and_the_marker_added() {
        let attributes = [
            ("tenant", "acme"),
            ("ferry-dead-letter-reason", "HTTP 500"),
            ("ferry-dead-letter-status", "500"),
            ("ferry-source-message-id", "m-1"),
            ("ferry-source-subscription", "projects/p/subscriptions/s"),
            ("ferry-ordering-key", "k"),
            ("CloudPubSubDeadLetterSourceDeliveryCount", "5"),
            ("CloudPubSubDeadLetterSourceSubscription", "s"),
            ("ferry-redrive", "an-older-request"),
            // Only the exact names and the Pub/Sub prefix are bookkeeping.
            ("ferry-dead-letter-reasons", "mine"),
            ("cloudpubsubdeadletter", "mine too"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let carried = carried_attributes(attributes, "req-2".to_string(), None);
        assert_eq!(
            names(&carried),
            [
                "cloudpubsubdeadletter",
                "ferry-dead-letter-reasons",
                "ferry-redrive",
                "tenant"
            ]
        );
        assert!(carried.contains(&("ferry-redrive".into(), "req-2".into())));
        assert!(carried.contains(&("tenant".into(), "acme".into())));
    }

    #[test]
    fn the_marker_is_added_only_while_sqs_has_room() {
        let own = |n: usize| (0..n).map(|i| (format!("a{i}"), i)).collect::<Vec<_>>();
        let room = crate::sqs::MAX_MESSAGE_ATTRIBUTES;
        let nine = carried_attributes(own(room - 1), 99, Some(room));
        assert_eq!(nine.len(), room);
        assert_eq!(nine.last(), Some(&(REDRIVE_ATTRIBUTE.to_string(), 99)));

        let ten = carried_attributes(own(room), 99, Some(room));
        assert_eq!(ten, own(room), "all ten of its own kept, no marker");

        // Bookkeeping makes room: ten with three of Ferry's leave seven and the marker.
        let mut with_bookkeeping = own(7);
        with_bookkeeping.push(("ferry-dead-letter-reason".into(), 0));
        with_bookkeeping.push(("ferry-source-message-id".into(), 0));
        with_bookkeeping.push(("ferry-redrive".into(), 0));
        let carried = carried_attributes(with_bookkeeping, 99, Some(room));
        assert_eq!(carried.len(), 8);
        assert_eq!(carried.last(), Some(&(REDRIVE_ATTRIBUTE.to_string(), 99)));
    }

    #[test]
    fn sqs_attribute_types_and_binary_values_are_kept() {
        use aws_sdk_sqs::primitives::Blob;
        use aws_sdk_sqs::types::MessageAttributeValue;
        let value = |data_type: &str, text: Option<&str>, binary: Option<&[u8]>| {
            MessageAttributeValue::builder()
                .data_type(data_type)
                .set_string_value(text.map(str::to_string))
                .set_binary_value(binary.map(Blob::new))
                .build()
                .expect("data type is set")
        };
        let attributes = [
            ("count".to_string(), value("Number", Some("42"), None)),
            (
                "price".to_string(),
                value("Number.float", Some("1.5"), None),
            ),
            (
                "blob".to_string(),
                value("Binary", None, Some(&[0, 255, 7])),
            ),
        ];
        let marker = value("String", Some("req"), None);
        let carried = carried_attributes(attributes.clone(), marker.clone(), Some(10));
        for (name, original) in &attributes {
            let copy = carried.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            assert_eq!(copy, Some(original), "{name}");
        }
        assert!(carried.contains(&(REDRIVE_ATTRIBUTE.to_string(), marker)));
    }

    #[test]
    fn only_this_requests_marker_means_moved_before() {
        assert!(redriven_by(Some("2024-06-01"), "2024-06-01"));
        assert!(!redriven_by(Some("2024-05-01"), "2024-06-01"));
        assert!(!redriven_by(None, "2024-06-01"));
        assert!(!redriven_by(Some("2024-06-01 "), "2024-06-01"));
    }

    #[test]
    fn deduplication_ids_are_deterministic_short_and_allowed() {
        let id = "8b1d6f2e-3c4a-4e5f-9a7b-1c2d3e4f5a6b";
        let first = deduplication_id(id, "fix-123");
        assert_eq!(first, deduplication_id(id, "fix-123"), "deterministic");
        assert_ne!(first, deduplication_id(id, "fix-124"), "per request");
        assert_ne!(
            first,
            deduplication_id("8b1d6f2e-3c4a-4e5f-9a7b-1c2d3e4f5a6c", "fix-123"),
            "per message"
        );
        assert!(first.starts_with(id), "{first}");
        // Pinned, so a change of hash (which would break deduplication across an operator
        // upgrade within five minutes) is a deliberate one.
        assert_eq!(deduplication_id("m", "r"), "m-8821cb195f70e7a9");

        let long_request = "ü ".repeat(MAX_REQUEST_CHARS / 2);
        let awkward_id = format!("{} é\t{}", "x".repeat(200), "y");
        for id in [deduplication_id(&awkward_id, &long_request), first] {
            assert!(id.len() <= 128, "{} chars", id.len());
            assert!(id.chars().all(|c| c.is_ascii_graphic()), "{id}");
        }
        // Ids that share their first 96 characters still differ.
        assert_ne!(
            deduplication_id(&format!("{}a", "x".repeat(100)), "r"),
            deduplication_id(&format!("{}b", "x".repeat(100)), "r")
        );
    }

    #[test]
    fn requests_are_validated() {
        let request = |token: &'static str, dead_letter: &'static str| RedriveRequest {
            provider: Provider::Sqs,
            endpoint: None,
            dead_letter,
            destination: "q",
            request: token,
            budget: Duration::from_secs(1),
        };
        assert!(validate(&request("fix", "dlq")).is_ok());
        let long: &'static str = "x".repeat(MAX_REQUEST_CHARS + 1).leak();
        for bad in [
            request("", "dlq"),
            request(long, "dlq"),
            request("fix", "q"),
        ] {
            assert_eq!(
                validate(&bad).expect_err("invalid").kind,
                QueueErrorKind::Invalid
            );
        }
        let longest: &'static str = "ü".repeat(MAX_REQUEST_CHARS).leak();
        assert!(validate(&request(longest, "dlq")).is_ok());
    }
}

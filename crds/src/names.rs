//! The queue name Ferry uses when `spec.queue.name` is unset.

use crate::queue::QueueProvider;
use crate::spec::QueueConsumer;

/// SQS allows 80 characters including the `.fifo` suffix.
const SQS_MAX: usize = 80;
/// Pub/Sub allows 255; a shorter name keeps dead-letter names (`<name>-dead-letter`) valid.
const PUBSUB_MAX: usize = 200;
const FIFO_SUFFIX: &str = ".fifo";

/// `<namespace>-<name>`, made valid for the provider: dots become dashes, an SQS FIFO queue
/// gets `.fifo`, a Pub/Sub name starts with a letter, and a name too long is cut and ends with
/// a hash of the whole, so two long names never collide.
pub fn default_queue_name(
    namespace: &str,
    name: &str,
    provider: QueueProvider,
    fifo: bool,
) -> String {
    let mut base: String = format!("{namespace}-{name}")
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    let (max, suffix) = match provider {
        QueueProvider::Sqs if fifo => (SQS_MAX - FIFO_SUFFIX.len(), FIFO_SUFFIX),
        QueueProvider::Sqs => (SQS_MAX, ""),
        QueueProvider::Pubsub => {
            if !base.starts_with(|c: char| c.is_ascii_alphabetic()) || base.starts_with("goog") {
                base.insert_str(0, "ferry-");
            }
            (PUBSUB_MAX, "")
        }
    };
    if base.len() > max {
        let hash = format!("-{:08x}", fnv1a(base.as_bytes()));
        base.truncate(max - hash.len());
        base.push_str(&hash);
    }
    base.push_str(suffix);
    base
}

/// A stable hash (the same in every build and release, unlike `std`'s hasher), for names.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl QueueConsumer {
    /// The queue's name: `spec.queue.name`, or [`default_queue_name`] from the object's
    /// namespace and name.
    pub fn queue_name(&self) -> String {
        if let Some(name) = &self.spec.queue.name {
            return name.clone();
        }
        let fifo = self.spec.queue.sqs.as_ref().is_some_and(|s| s.fifo);
        default_queue_name(
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default(),
            self.spec.queue.provider,
            fifo,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_names_replace_dots_and_get_the_fifo_suffix() {
        assert_eq!(
            default_queue_name("shop", "orders.v2", QueueProvider::Sqs, false),
            "shop-orders-v2"
        );
        assert_eq!(
            default_queue_name("shop", "orders", QueueProvider::Sqs, true),
            "shop-orders.fifo"
        );
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let a = default_queue_name("n", &"a".repeat(100), QueueProvider::Sqs, true);
        let b = default_queue_name(
            "n",
            &format!("{}b", "a".repeat(99)),
            QueueProvider::Sqs,
            true,
        );
        assert_eq!(a.len(), 80);
        assert!(a.ends_with(".fifo"));
        assert_ne!(a, b);
    }

    #[test]
    fn pubsub_names_start_with_a_letter_and_not_goog() {
        assert_eq!(
            default_queue_name("1ns", "x", QueueProvider::Pubsub, false),
            "ferry-1ns-x"
        );
        assert_eq!(
            default_queue_name("google", "x", QueueProvider::Pubsub, false),
            "ferry-google-x"
        );
        assert_eq!(
            default_queue_name("team", "x", QueueProvider::Pubsub, false),
            "team-x"
        );
    }
}

//! `spec.deadLetter`: where messages go after too many failed deliveries.

use serde::{Deserialize, Serialize};

/// `spec.deadLetter`. Ferry always creates a dead-letter queue (SQS) or topic with a
/// subscription (Pub/Sub) next to the queue, so that a message that keeps failing is parked
/// instead of retried forever or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Deliveries (the first one included) after which the queue moves a message to the
    /// dead-letter queue: SQS `maxReceiveCount` (1-1000), Pub/Sub `maxDeliveryAttempts` (5-100).
    #[serde(default = "default_max_deliveries")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: i32,
    /// Seconds the dead-letter queue keeps a message: SQS 60-1209600, Pub/Sub 600-604800.
    /// Unset: the provider's longest (14 days on SQS, 7 days on Pub/Sub), so there is time to
    /// fix the worker and redrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 1209600))]
    pub retention_seconds: Option<i32>,
}

/// Valid for both providers (Pub/Sub's own default is also 5).
fn default_max_deliveries() -> i32 {
    5
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        Self {
            max_deliveries: default_max_deliveries(),
            retention_seconds: None,
        }
    }
}

use std::fmt;

/// What kind of failure a queue API call had, which decides what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueErrorKind {
    /// The queue, subscription or topic does not exist.
    NotFound,
    /// Credentials are missing or not allowed to do this.
    PermissionDenied,
    /// Throttled by the provider; back off.
    Throttled,
    /// The provider could not be reached or answered with a server error; try again.
    Unavailable,
    /// The request itself was wrong (bad configuration); retrying will not help.
    Invalid,
    /// The queue exists and belongs to someone else.
    Conflict,
    /// The lease (receipt handle / ack id) is no longer valid; the message will be redelivered.
    LeaseExpired,
    Other,
}

impl QueueErrorKind {
    /// A short, stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::LeaseExpired => "lease_expired",
            Self::Other => "other",
        }
    }

    /// What an operator should do about it, for log lines and conditions.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::NotFound => "create the queue (or fix FERRY_QUEUE / FERRY_DEAD_LETTER)",
            Self::PermissionDenied => {
                "provide credentials allowed to receive, delete and change visibility (SQS) or pull and acknowledge (Pub/Sub)"
            }
            Self::Throttled => "nothing: Ferry backs off; raise the provider quota if it persists",
            Self::Unavailable => "check the endpoint and network; Ferry retries with backoff",
            Self::Invalid => "fix the configuration named in the message",
            Self::Conflict => {
                "choose another queue name, or set adopt: true to take the existing queue over"
            }
            Self::LeaseExpired => {
                "nothing: the message will be redelivered; raise FERRY_LEASE_SECONDS if deliveries are slow"
            }
            Self::Other => "see the message",
        }
    }
}

/// A failed queue API call: which operation, what kind of failure, and the provider's words.
#[derive(Debug, Clone, thiserror::Error)]
pub struct QueueError {
    pub operation: &'static str,
    pub kind: QueueErrorKind,
    pub message: String,
}

impl QueueError {
    pub fn new(operation: &'static str, kind: QueueErrorKind, message: impl Into<String>) -> Self {
        Self {
            operation,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}; what to do: {}",
            self.operation,
            self.kind.label(),
            self.message,
            self.kind.remedy()
        )
    }
}

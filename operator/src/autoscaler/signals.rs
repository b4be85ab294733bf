//! What the autoscaler knows about a consumer at one poll.
//!
//! All times are seconds on a clock the caller chooses (the operator: a monotonic clock; the
//! simulator: simulated time). The policy never reads a clock itself.

use serde::{Deserialize, Serialize};

/// The queue's own counts, as the sidecars report them (`ferry_queue_messages{state}`) or, at
/// zero replicas, as the operator reads them from the queue's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BacklogSignal {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet settled.
    pub in_flight: u64,
    /// Sent with a delay that has not elapsed yet.
    pub delayed: u64,
}

/// What the ready sidecars measured over the scrape window, summed over them. Absent when no
/// sidecar is ready (at zero, or while the first pods start).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThroughputSignal {
    /// Length of the window the rates were computed over.
    pub window_seconds: f64,
    /// `rate(ferry_messages_received_total)`, messages per second.
    pub receive_rate: f64,
    /// `rate(ferry_messages_completed_total)`, messages per second, all outcomes.
    pub completion_rate: f64,
    /// Mean of `ferry_delivery_duration_seconds` over the window; `None` when nothing completed.
    pub mean_service_seconds: Option<f64>,
    /// Mean of `ferry_message_age_seconds` (wait before receipt) over the window.
    pub mean_age_at_receipt_seconds: Option<f64>,
    /// `ferry_in_flight`, summed.
    pub in_flight: u64,
    /// `ferry_concurrency_limit`, summed.
    pub concurrency_limit: u64,
}

impl ThroughputSignal {
    /// Fraction of the delivery slots in use.
    pub fn saturation(&self) -> Option<f64> {
        (self.concurrency_limit > 0).then(|| self.in_flight as f64 / self.concurrency_limit as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSignals {
    /// When the values were true. The policy holds when this is too old.
    pub sampled_at: f64,
    pub backlog: BacklogSignal,
    pub throughput: Option<ThroughputSignal>,
    /// Pods whose sidecar was scraped.
    pub ready_replicas: u32,
    /// Of those, the pods whose sidecar holds receiving because their worker, ready before,
    /// stopped being so (`ferry_worker_unavailable`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub workers_unavailable: u32,
    /// Concurrency of one replica (`spec.delivery.concurrency`): known even at zero replicas,
    /// so that activation can size the first step.
    pub concurrency_per_replica: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ScalingSignals {
    /// Whether every pod reporting holds receiving because its worker went away (its
    /// readiness path fails, or nothing listens): what it depends on is down, or a new
    /// version cannot work, and more pods would only wait with the others.
    pub fn every_worker_unavailable(&self) -> bool {
        self.ready_replicas > 0 && self.workers_unavailable >= self.ready_replicas
    }

    /// Messages completed per second per ready replica over the window.
    pub fn per_replica_throughput(&self) -> Option<f64> {
        let t = self.throughput.as_ref()?;
        (self.ready_replicas > 0).then(|| t.completion_rate / f64::from(self.ready_replicas))
    }

    /// Whether the consumer left messages in the queue during this sample's window: no pod
    /// was receiving, every delivery slot was busy, or what it received had waited at least
    /// a poll window. Otherwise the receivers took whatever arrived, and a visible count that
    /// grew is a count catching up, not messages left behind.
    pub fn holds_messages_back(&self) -> bool {
        self.throughput.is_none_or(|t| {
            t.saturation().is_none_or(|s| s >= 1.0)
                || t.mean_age_at_receipt_seconds
                    .is_some_and(|age| age >= t.window_seconds)
        })
    }

    /// True when nothing waits, nothing runs and nothing arrived during the window. Delayed
    /// messages count as work: they will become visible without anyone sending them.
    pub fn is_idle(&self) -> bool {
        let b = &self.backlog;
        let quiet = self
            .throughput
            .is_none_or(|t| t.receive_rate == 0.0 && t.in_flight == 0);
        b.visible == 0 && b.in_flight == 0 && b.delayed == 0 && quiet
    }
}

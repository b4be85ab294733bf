//! What the autoscaler knows about a consumer at one poll.
//!
//! All times are seconds on a clock the caller chooses (the operator: a monotonic clock; the
//! simulator: simulated time). The policy never reads a clock itself.

use serde::{Deserialize, Serialize};

/// The most messages a waiting-backlog estimate assumes arrived per message received: a wait
/// that grows as fast as time passes would otherwise mean an unbounded rate.
const MAX_ARRIVALS_PER_RECEIPT: f64 = 10.0;

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

    /// The backlog where nobody can read the queue's counts (Pub/Sub without Cloud
    /// Monitoring), from how fast messages are received and how long they had waited;
    /// `earlier` is this estimate at the poll before.
    ///
    /// Little's law (received per second × their mean wait) holds for a queue in balance,
    /// and reads a growing one far too low: a replica taking 16 msg/s out of 200 arriving
    /// receives 16 a second that waited about as long as the burst has lasted, while 184 a
    /// second pile up behind them. The wait's growth between two polls tells how fast they
    /// arrived: this window's receipts were published over `window - (growth of the mean
    /// wait)` seconds, so at `received × window / that span` a second. What waits is at most
    /// what that rate brings over the mean wait, and no more than the poll before's estimate
    /// plus what that rate less the receipts adds in a window: a burst shorter than the wait
    /// is not read as lasting all of it. With no earlier poll, or a wait that does not grow,
    /// it is Little's law, and it is never less: a busy queue is never read as empty.
    pub fn backlog_estimated_from_wait(&self, earlier: Option<WaitEstimate>) -> BacklogSignal {
        let age = self.mean_age_at_receipt_seconds.unwrap_or(0.0);
        let window = self.window_seconds;
        let littles_law = self.receive_rate * age;
        let waiting = match earlier {
            Some(earlier) if age > earlier.mean_age_at_receipt_seconds && window > 0.0 => {
                let growth = age - earlier.mean_age_at_receipt_seconds;
                let span = (window - growth).max(window / MAX_ARRIVALS_PER_RECEIPT);
                let arrival_rate = self.receive_rate * window / span;
                let grown_by = (arrival_rate - self.receive_rate) * window;
                (arrival_rate * age)
                    .min(earlier.waiting as f64 + grown_by)
                    .max(littles_law)
            }
            _ => littles_law,
        };
        BacklogSignal {
            visible: waiting.round() as u64,
            in_flight: self.in_flight,
            delayed: 0,
        }
    }
}

/// What [`ThroughputSignal::backlog_estimated_from_wait`] found at one poll, kept for the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitEstimate {
    pub mean_age_at_receipt_seconds: f64,
    /// Messages estimated to wait.
    pub waiting: u64,
}

impl WaitEstimate {
    /// `None` when nothing was received in the window, so there is no wait to compare with.
    pub fn of(throughput: &ThroughputSignal, backlog: &BacklogSignal) -> Option<Self> {
        Some(Self {
            mean_age_at_receipt_seconds: throughput.mean_age_at_receipt_seconds?,
            waiting: backlog.visible,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One replica of 8 slots taking 16 msg/s of 0.5 s jobs, over 3 s windows.
    fn receiving(mean_age: f64) -> ThroughputSignal {
        ThroughputSignal {
            window_seconds: 3.0,
            receive_rate: 16.0,
            completion_rate: 16.0,
            mean_service_seconds: Some(0.5),
            mean_age_at_receipt_seconds: Some(mean_age),
            in_flight: 8,
            concurrency_limit: 8,
        }
    }

    fn earlier(mean_age: f64, waiting: u64) -> Option<WaitEstimate> {
        Some(WaitEstimate {
            mean_age_at_receipt_seconds: mean_age,
            waiting,
        })
    }

    #[test]
    fn a_wait_that_grows_reads_the_arrivals_piling_up_behind_the_receipts() {
        // 120 msg/s arrive and 16 are taken: the wait grows by 0.87 s a second, 2.6 s a
        // window, and this window's 48 receipts were published over 0.4 s. 888 waited at the
        // poll before; 312 more now.
        let t = receiving(10.0);
        let grown = t.backlog_estimated_from_wait(earlier(7.4, 888));
        assert_eq!(grown.visible, 1200, "120 msg/s for the last 10 s");
        assert_eq!(grown.in_flight, 8);
        // Little's law alone reads 160: what the replica takes, not what arrives.
        assert_eq!(t.backlog_estimated_from_wait(None).visible, 160);
    }

    #[test]
    fn a_burst_shorter_than_the_wait_is_not_read_as_lasting_all_of_it() {
        // The same receipts, but only 100 waited at the poll before: the queue grew by at
        // most 312 since, not to 120 msg/s over the whole 10 s wait.
        let t = receiving(10.0);
        assert_eq!(
            t.backlog_estimated_from_wait(earlier(7.4, 100)).visible,
            412
        );
        // Nor is the estimate ever below Little's law.
        assert_eq!(t.backlog_estimated_from_wait(earlier(9.9, 0)).visible, 160);
    }

    #[test]
    fn a_wait_that_holds_or_falls_is_littles_law() {
        let t = receiving(10.0);
        assert_eq!(
            t.backlog_estimated_from_wait(earlier(10.0, 900)).visible,
            160
        );
        assert_eq!(
            t.backlog_estimated_from_wait(earlier(14.0, 900)).visible,
            160
        );
    }

    #[test]
    fn a_wait_growing_as_fast_as_time_is_read_as_a_bounded_rate() {
        // Receipts all published at one instant would mean an unbounded rate: at most ten
        // arrivals are read per receipt.
        let t = receiving(10.0);
        assert_eq!(
            t.backlog_estimated_from_wait(earlier(6.0, 10_000)).visible,
            1600
        );
    }
}

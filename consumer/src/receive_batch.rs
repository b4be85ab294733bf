//! How many messages a receive asks for, and whether it waits a moment to ask for more.
//!
//! The pump asks for as many messages as it has free delivery slots. Busy on one thread with
//! a worker that answers within a millisecond, it finds about half of its slots free at each
//! receive (the other half are still delivering the previous batch), so at concurrency 10 a
//! ReceiveMessage carried 5.3 messages where it may carry 10. Each call costs the same
//! signing, serializing and round trip whatever it carries, so half-full batches cost CPU per
//! message, and CPU is what bounds a busy sidecar. When deliveries are that quick, the slots
//! still taken come back within a millisecond, and waiting that long for them fills the batch.
//! When they are slow (a 50 ms worker), a wait would only leave the free slots idle, so the
//! pump receives at once, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest a receive waits for more free slots. Also the pace below which deliveries
/// count as quick: a slot taken by such a delivery is likely to come back within this time.
/// (Tokio's timer ticks in milliseconds, so a shorter wait would be rounded up to this.)
pub const RECEIVE_LINGER: Duration = Duration::from_millis(1);

/// How long deliveries have been taking lately: an exponentially weighted mean of the
/// worker's answer times, weight 1/8 to the newest. Shared by every delivery task, so kept
/// in an atomic; two deliveries ending at once may lose one sample, which a mean can spare.
#[derive(Debug, Default)]
pub struct DeliveryPace {
    /// Mean in nanoseconds, plus one; 0 until the first delivery.
    mean_plus_one_ns: AtomicU64,
}

impl DeliveryPace {
    pub fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1);
        let mean = match self.mean_plus_one_ns.load(Ordering::Relaxed) {
            0 => sample,
            stored => {
                let old = stored - 1;
                old - old / 8 + sample / 8
            }
        };
        self.mean_plus_one_ns
            .store(mean.saturating_add(1), Ordering::Relaxed);
    }

    /// None before the first delivery.
    pub fn typical(&self) -> Option<Duration> {
        match self.mean_plus_one_ns.load(Ordering::Relaxed) {
            0 => None,
            stored => Some(Duration::from_nanos(stored - 1)),
        }
    }
}

/// How long to wait for more free slots before receiving, if at all. `free` slots are held
/// for this receive, which asks for at most `batch` messages (`min(concurrency, 10)`).
pub fn linger_before_receive(
    free: usize,
    batch: usize,
    pace: Option<Duration>,
) -> Option<Duration> {
    let quick = pace.is_some_and(|typical| typical <= RECEIVE_LINGER);
    (free < batch && quick).then_some(RECEIVE_LINGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_unknown_until_a_delivery_ends() {
        let pace = DeliveryPace::default();
        assert_eq!(pace.typical(), None);
        pace.record(Duration::ZERO);
        assert_eq!(pace.typical(), Some(Duration::ZERO));
    }

    #[test]
    fn the_pace_follows_recent_deliveries() {
        let pace = DeliveryPace::default();
        pace.record(Duration::from_micros(200));
        assert_eq!(pace.typical(), Some(Duration::from_micros(200)));
        // The worker slows down to 50 ms: within a few dozen deliveries the pace says so.
        for _ in 0..40 {
            pace.record(Duration::from_millis(50));
        }
        let typical = pace.typical().unwrap();
        assert!(typical > Duration::from_millis(49), "{typical:?}");
        // One quick answer among slow ones does not make deliveries quick.
        pace.record(Duration::from_micros(100));
        assert!(pace.typical().unwrap() > RECEIVE_LINGER);
    }

    #[test]
    fn waits_for_more_slots_only_when_deliveries_are_quick_and_the_batch_is_not_full() {
        let quick = Some(Duration::from_micros(300));
        let slow = Some(Duration::from_millis(50));
        assert_eq!(linger_before_receive(5, 10, quick), Some(RECEIVE_LINGER));
        assert_eq!(linger_before_receive(5, 10, slow), None);
        assert_eq!(
            linger_before_receive(5, 10, None),
            None,
            "nothing known yet"
        );
        assert_eq!(
            linger_before_receive(10, 10, quick),
            None,
            "the batch is full"
        );
        assert_eq!(linger_before_receive(1, 1, quick), None, "concurrency 1");
        assert_eq!(
            linger_before_receive(1, 10, Some(RECEIVE_LINGER)),
            Some(RECEIVE_LINGER),
            "a pace of exactly the linger still counts as quick"
        );
    }
}

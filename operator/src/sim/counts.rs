//! The queue's counts as the backends report them.
//!
//! SQS: `ApproximateNumberOfMessages` and its siblings are eventually consistent: a read may
//! return the queue as it was some seconds earlier, and the counts can take about a minute to
//! settle. Both `ferry` (through its sidecars) and KEDA read them, so both get the same
//! staleness.
//!
//! Pub/Sub: the subscription's backlog is only in Cloud Monitoring
//! (`num_undelivered_messages`), which Google samples every 60 s and publishes up to 120 s
//! later, as Google documents it. KEDA's Pub/Sub scaler reads it; ferry reads it only when configured
//! to, and otherwise estimates the backlog from what its sidecars measure.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::TickRecord;

/// How a read of the queue's counts sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueCounts {
    /// SQS's queue attributes.
    Approximate(ApproximateCounts),
    /// Pub/Sub through Cloud Monitoring.
    Monitoring(CloudMonitoring),
}

impl Default for QueueCounts {
    fn default() -> Self {
        Self::Approximate(ApproximateCounts::default())
    }
}

impl QueueCounts {
    /// `(visible, not visible)` as a read at `history[index]`'s second reports them.
    pub fn read(&self, history: &[TickRecord], index: usize) -> (u64, u64) {
        match self {
            Self::Approximate(counts) => counts.read(history, index),
            Self::Monitoring(monitoring) => monitoring.read(history, index),
        }
    }
}

/// Cloud Monitoring's view of a subscription: one sample every `sample_period_seconds`,
/// readable `delay_seconds` after it was taken, so a read sees the queue as it was between
/// `delay` and `delay + period` seconds earlier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloudMonitoring {
    pub sample_period_seconds: u32,
    pub delay_seconds: u32,
}

impl Default for CloudMonitoring {
    fn default() -> Self {
        Self {
            sample_period_seconds: 60,
            delay_seconds: 120,
        }
    }
}

impl CloudMonitoring {
    /// `num_undelivered_messages` counts the messages not yet acknowledged, those leased to a
    /// subscriber included: Pub/Sub's visible and not visible together, returned as visible.
    /// Before the first sample is published there is no data, which scalers read as 0.
    pub fn read(&self, history: &[TickRecord], index: usize) -> (u64, u64) {
        let period = self.sample_period_seconds.max(1) as usize;
        let Some(published) = index.checked_sub(self.delay_seconds as usize) else {
            return (0, 0);
        };
        let record = history[published / period * period];
        (record.visible + record.not_visible, 0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ApproximateCounts {
    /// A read returns the counts of a second drawn uniformly from the last this many
    /// (0: the counts of the read's own second).
    pub settle_seconds: u32,
    /// Which earlier second a read sees depends only on this seed and the read's second, so
    /// two policies reading at the same instant see the same counts.
    pub seed: u64,
}

impl ApproximateCounts {
    /// `(visible, not visible)` as a read of `history[index]`'s second reports them.
    pub fn read(&self, history: &[TickRecord], index: usize) -> (u64, u64) {
        let back = if self.settle_seconds == 0 {
            0
        } else {
            StdRng::seed_from_u64(self.seed ^ index as u64).random_range(0..=self.settle_seconds)
                as usize
        };
        let record = history[index.saturating_sub(back)];
        (record.visible, record.not_visible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> Vec<TickRecord> {
        (0..200)
            .map(|t| TickRecord {
                time: f64::from(t),
                visible: t as u64,
                not_visible: 1000 + t as u64,
                ..TickRecord::default()
            })
            .collect()
    }

    #[test]
    fn exact_counts_read_their_own_second() {
        let counts = ApproximateCounts::default();
        assert_eq!(counts.read(&history(), 150), (150, 1150));
    }

    #[test]
    fn settling_counts_are_up_to_that_many_seconds_old_and_spread_over_them() {
        let counts = ApproximateCounts {
            settle_seconds: 60,
            seed: 7,
        };
        let history = history();
        let ages: Vec<u64> = (100..200)
            .map(|i| {
                let (visible, not_visible) = counts.read(&history, i);
                assert_eq!(
                    not_visible,
                    1000 + visible,
                    "both counts come from one second"
                );
                i as u64 - visible
            })
            .collect();
        assert!(ages.iter().all(|&a| a <= 60), "{ages:?}");
        assert!(ages.iter().any(|&a| a < 20) && ages.iter().any(|&a| a > 40));
        assert!(counts.read(&history, 5).0 <= 5);
        // The same read gives the same answer: ferry and KEDA see one queue.
        assert_eq!(counts.read(&history, 123), counts.read(&history, 123));
    }

    #[test]
    fn cloud_monitoring_reads_the_minute_sample_published_two_minutes_on() {
        let monitoring = CloudMonitoring::default();
        let history = history();
        // Nothing published yet.
        assert_eq!(monitoring.read(&history, 119), (0, 0));
        // The sample of second 0 from 120 s on, of second 60 from 180 s on.
        assert_eq!(monitoring.read(&history, 120), (1000, 0));
        assert_eq!(monitoring.read(&history, 179), (1000, 0));
        assert_eq!(monitoring.read(&history, 180), (60 + 1060, 0));
        let counts = QueueCounts::Monitoring(monitoring);
        assert_eq!(counts.read(&history, 199), (60 + 1060, 0));
    }
}

//! The queue's counts as SQS reports them. `ApproximateNumberOfMessages` and its siblings are
//! eventually consistent: a read may return the queue as it was some seconds earlier, and the
//! counts can take about a minute to settle. Both `ferry` (through its sidecars) and KEDA read
//! them, so both get the same staleness.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::TickRecord;

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
}

//! Per-policy numbers of one run, in the field names of `report.json`.

use serde::{Deserialize, Serialize};

use super::model::RunOutcome;

/// Exactly the fields of one policy in `report.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub replica_seconds: f64,
    pub scale_events: u32,
    pub slo_violation_s: f64,
}

/// What the stdout table shows besides the report fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyStats {
    pub summary: PolicySummary,
    pub p50_wait_s: f64,
    pub messages: usize,
    pub redeliveries: u64,
}

/// Nearest-rank quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl PolicyStats {
    pub fn of(outcome: &RunOutcome) -> Self {
        let mut waits = outcome.waits.clone();
        waits.sort_by(f64::total_cmp);
        Self {
            summary: PolicySummary {
                p99_wait_s: quantile(&waits, 0.99),
                max_wait_s: waits.last().copied().unwrap_or(0.0),
                replica_seconds: outcome.replica_seconds,
                scale_events: outcome.scale_events,
                slo_violation_s: outcome.slo_violation_seconds,
            },
            p50_wait_s: quantile(&waits, 0.5),
            messages: waits.len(),
            redeliveries: outcome.redeliveries,
        }
    }

    /// The latency target counts as met when the 99th percentile wait is within it.
    pub fn meets(&self, latency_target_seconds: f64) -> bool {
        self.summary.p99_wait_s <= latency_target_seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.01), 7.0);
    }
}

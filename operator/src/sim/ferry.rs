//! The `ferry` policy in the simulator: the operator's poll loop around the very same
//! [`ScalingPolicy`] the controller runs, fed with what scraping the sidecars would return.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autoscaler::{
    BacklogSignal, ScalingDecision, ScalingPolicy, ScalingSignals, ScalingState, ThroughputSignal,
    WaitEstimate,
};

use super::counts::QueueCounts;
use super::model::{Controller, RemovalMode, TickRecord};

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// Seconds between two polls of the operator.
    pub poll_interval_seconds: u32,
    /// Age of the values a scrape returns (sidecar refresh of queue attributes, scrape time).
    pub lag_seconds: u32,
    /// Share of polls whose scrape fails, so the policy gets no signals at all.
    pub failure_rate: f64,
    /// How the queue's counts read.
    pub counts: QueueCounts,
    /// When ferry reads them.
    pub counts_read: CountsRead,
    /// Seed for which polls fail.
    pub seed: u64,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            poll_interval_seconds: 3,
            lag_seconds: 2,
            failure_rate: 0.0,
            counts: QueueCounts::default(),
            counts_read: CountsRead::Always,
            seed: 0,
        }
    }
}

/// When ferry's backlog comes from the queue's counts, as the operator decides by backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountsRead {
    /// SQS: the sidecars report the counts at every poll, and the operator reads them at zero.
    Always,
    /// Pub/Sub with Cloud Monitoring: its counts are minutes old, so they only start a
    /// consumer at zero; while sidecars run, the backlog is estimated from their wait.
    AtZero,
    /// Pub/Sub without it: always estimated, and one replica stays.
    Never,
}

pub struct FerryController {
    policy: ScalingPolicy,
    state: ScalingState,
    scrape: ScrapeConfig,
    concurrency_per_replica: u32,
    failures: StdRng,
    /// The backlog estimated from the sidecars' wait at the last poll, if it was.
    wait_estimate: Option<WaitEstimate>,
    pub decisions: Vec<ScalingDecision>,
}

impl FerryController {
    pub fn new(policy: ScalingPolicy, scrape: ScrapeConfig, concurrency_per_replica: u32) -> Self {
        Self {
            policy,
            state: ScalingState::default(),
            failures: StdRng::seed_from_u64(scrape.seed),
            scrape,
            concurrency_per_replica,
            wait_estimate: None,
            decisions: Vec::new(),
        }
    }

    /// The signals a poll at `now` sees: the queue and the sidecars as they were `lag` seconds
    /// ago, rates over the poll interval before that.
    fn scrape(&self, history: &[TickRecord]) -> Option<ScalingSignals> {
        let latest = history
            .len()
            .checked_sub(1 + self.scrape.lag_seconds as usize)?;
        let sample = history[latest];
        let earlier = history[latest.saturating_sub(self.scrape.poll_interval_seconds as usize)];
        let window = sample.time - earlier.time;
        let throughput = (sample.ready_receiving_pods > 0 && window > 0.0).then(|| {
            let completed = sample.completed_total - earlier.completed_total;
            let received = sample.received_total - earlier.received_total;
            ThroughputSignal {
                window_seconds: window,
                receive_rate: received as f64 / window,
                completion_rate: completed as f64 / window,
                mean_service_seconds: (completed > 0).then(|| {
                    (sample.service_seconds_total - earlier.service_seconds_total)
                        / completed as f64
                }),
                mean_age_at_receipt_seconds: (received > 0).then(|| {
                    (sample.age_at_receipt_seconds_total - earlier.age_at_receipt_seconds_total)
                        / received as f64
                }),
                in_flight: sample.running,
                concurrency_limit: u64::from(sample.ready_receiving_pods)
                    * u64::from(self.concurrency_per_replica),
            }
        });
        let backlog = match (self.scrape.counts_read, throughput) {
            (CountsRead::Always, _) | (CountsRead::AtZero, None) => {
                let (visible, not_visible) = self.scrape.counts.read(history, latest);
                BacklogSignal {
                    visible,
                    in_flight: not_visible,
                    delayed: 0,
                }
            }
            (CountsRead::AtZero | CountsRead::Never, Some(t)) => {
                t.backlog_estimated_from_wait(self.wait_estimate)
            }
            // No pod ready to measure anything: nothing is known, and the policy holds.
            (CountsRead::Never, None) => return None,
        };
        Some(ScalingSignals {
            sampled_at: sample.time,
            backlog,
            throughput,
            ready_replicas: sample.ready_receiving_pods,
            workers_unavailable: 0,
            concurrency_per_replica: self.concurrency_per_replica,
        })
    }
}

impl Controller for FerryController {
    fn removal_mode(&self) -> RemovalMode {
        RemovalMode::DrainIdlest
    }

    fn tick(&mut self, now: f64, history: &[TickRecord], replicas: u32) -> Option<u32> {
        if !(now as u64).is_multiple_of(u64::from(self.scrape.poll_interval_seconds.max(1))) {
            return None;
        }
        let failed = self.scrape.failure_rate > 0.0
            && self.failures.random::<f64>() < self.scrape.failure_rate;
        let signals = if failed { None } else { self.scrape(history) };
        self.wait_estimate = signals.as_ref().and_then(|s| {
            let estimated = match self.scrape.counts_read {
                CountsRead::Always => false,
                CountsRead::AtZero | CountsRead::Never => s.throughput.is_some(),
            };
            WaitEstimate::of(s.throughput.as_ref()?, &s.backlog).filter(|_| estimated)
        });
        let decision = self
            .policy
            .decide(&mut self.state, now, replicas, signals.as_ref());
        let to = decision.to;
        if decision.from != decision.to {
            self.decisions.push(decision);
        }
        Some(to)
    }
}

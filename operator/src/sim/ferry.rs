//! The `ferry` policy in the simulator: the operator's poll loop around the very same
//! [`ScalingPolicy`] the controller runs, fed with what scraping the sidecars would return.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autoscaler::{
    BacklogSignal, ScalingDecision, ScalingPolicy, ScalingSignals, ScalingState, ThroughputSignal,
};

use super::counts::ApproximateCounts;
use super::model::{Controller, RemovalMode, TickRecord};

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// Seconds between two polls of the operator.
    pub poll_interval_seconds: u32,
    /// Age of the values a scrape returns (sidecar refresh of queue attributes, scrape time).
    pub lag_seconds: u32,
    /// Share of polls whose scrape fails, so the policy gets no signals at all.
    pub failure_rate: f64,
    /// How stale the queue's counts are when the sidecars read them.
    pub counts: ApproximateCounts,
    /// Seed for which polls fail.
    pub seed: u64,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            poll_interval_seconds: 3,
            lag_seconds: 2,
            failure_rate: 0.0,
            counts: ApproximateCounts::default(),
            seed: 0,
        }
    }
}

pub struct FerryController {
    policy: ScalingPolicy,
    state: ScalingState,
    scrape: ScrapeConfig,
    concurrency_per_replica: u32,
    failures: StdRng,
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
        let (visible, not_visible) = self.scrape.counts.read(history, latest);
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
        Some(ScalingSignals {
            sampled_at: sample.time,
            backlog: BacklogSignal {
                visible,
                in_flight: not_visible,
                delayed: 0,
            },
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

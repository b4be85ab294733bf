//! One trace through the three policies, with KEDA's target tuned for it.

use crate::autoscaler::{PolicyTuning, ScalingDecision, ScalingPolicy, ScalingSpec};

use super::ferry::{CountsRead, FerryController, ScrapeConfig};
use super::keda::{KedaConfig, KedaController};
use super::model::{Controller, Message, ModelConfig, RunOutcome, materialize, run};
use super::oracle::oracle;
use super::summary::PolicyStats;
use super::trace::Trace;

/// KEDA `queueLength` values tried on each trace.
pub const KEDA_QUEUE_LENGTHS: &[u32] = &[
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 65, 80, 100, 130, 160, 200, 250, 300, 400,
    500, 750, 1000,
];

/// A run ends at the trace's end, or when the last message is done, but never later than this
/// long after the trace.
const DRAIN_ALLOWANCE_SECONDS: usize = 3600;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelConfig,
    pub scaling: ScalingSpec,
    pub tuning: PolicyTuning,
    pub scrape: ScrapeConfig,
    pub keda_queue_lengths: Vec<u32>,
    pub threads: usize,
}

impl BenchConfig {
    /// The model's target and bounds follow the spec, so every policy is judged by the same
    /// rules `ferry` is configured with.
    pub fn new(mut model: ModelConfig, scaling: ScalingSpec) -> Self {
        if let Some(target) = scaling.target_latency_seconds {
            model.latency_target_seconds = target;
        }
        model.max_replicas = scaling.max_replicas;
        Self {
            model,
            scaling,
            tuning: PolicyTuning::default(),
            scrape: ScrapeConfig::default(),
            keda_queue_lengths: KEDA_QUEUE_LENGTHS.to_vec(),
            threads: 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyRun {
    pub stats: PolicyStats,
    pub replicas: Vec<u32>,
    pub backlog: Vec<u64>,
    /// The ferry policy's decisions that changed the replica count, with their reasons.
    pub decisions: Vec<ScalingDecision>,
}

impl PolicyRun {
    fn of(outcome: RunOutcome) -> Self {
        Self {
            stats: PolicyStats::of(&outcome),
            replicas: outcome.replicas,
            backlog: outcome.backlog,
            decisions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TraceResult {
    pub name: String,
    pub latency_target_seconds: f64,
    pub ferry: PolicyRun,
    pub keda: PolicyRun,
    pub keda_queue_length: u32,
    pub oracle: PolicyRun,
}

/// The goal, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub ferry_meets_target: bool,
    pub half_of_keda_wait: bool,
    pub no_costlier_than_keda: bool,
    pub within_oracle_bound: bool,
}

impl Verdict {
    pub const ORACLE_FACTOR: f64 = 1.25;

    pub fn all(&self) -> bool {
        self.ferry_meets_target
            && self.half_of_keda_wait
            && self.no_costlier_than_keda
            && self.within_oracle_bound
    }
}

impl TraceResult {
    pub fn verdict(&self) -> Verdict {
        let (f, k, o) = (
            &self.ferry.stats.summary,
            &self.keda.stats.summary,
            &self.oracle.stats.summary,
        );
        Verdict {
            ferry_meets_target: self.ferry.stats.meets(self.latency_target_seconds),
            half_of_keda_wait: f.p99_wait_s <= k.p99_wait_s / 2.0,
            no_costlier_than_keda: f.replica_seconds <= k.replica_seconds,
            within_oracle_bound: f.replica_seconds <= Verdict::ORACLE_FACTOR * o.replica_seconds,
        }
    }
}

pub fn run_ferry(
    config: &BenchConfig,
    trace: &Trace,
    messages: &[Message],
) -> anyhow::Result<PolicyRun> {
    // As the operator does for a queue nobody can count (Pub/Sub without Cloud Monitoring).
    let spec = if config.scrape.counts_read == CountsRead::Never {
        config.scaling.clone().keeping_one_replica()
    } else {
        config.scaling.clone()
    };
    let policy = ScalingPolicy::new(spec, config.tuning.clone())?;
    let mut ferry = FerryController::new(
        policy,
        config.scrape.clone(),
        config.model.concurrency_per_pod,
    );
    let mut result = PolicyRun::of(run_controller(config, trace, messages, &mut ferry));
    result.decisions = std::mem::take(&mut ferry.decisions);
    Ok(result)
}

fn run_controller(
    config: &BenchConfig,
    trace: &Trace,
    messages: &[Message],
    controller: &mut dyn Controller,
) -> RunOutcome {
    let duration = trace.duration_seconds();
    run(
        &config.model,
        messages,
        duration,
        controller,
        duration + DRAIN_ALLOWANCE_SECONDS,
    )
}

fn run_keda(
    config: &BenchConfig,
    trace: &Trace,
    messages: &[Message],
    queue_length: u32,
) -> PolicyRun {
    let keda_config = KedaConfig {
        counts: config.scrape.counts,
        min_replicas: config.scaling.min_replicas,
        ..KedaConfig::with_queue_length(
            queue_length,
            config.scaling.max_replicas,
            config.scrape.lag_seconds,
        )
    };
    let mut keda = KedaController::new(keda_config);
    PolicyRun::of(run_controller(config, trace, messages, &mut keda))
}

/// KEDA at its best on this trace: the fewest replica-seconds among the queue lengths that
/// meet the latency target (p99 wait), or the lowest p99 wait if none does.
pub fn tune_keda(config: &BenchConfig, trace: &Trace, messages: &[Message]) -> (u32, PolicyRun) {
    let lengths = &config.keda_queue_lengths;
    let threads = config.threads.max(1);
    let mut runs: Vec<(u32, PolicyRun)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    lengths
                        .iter()
                        .skip(worker)
                        .step_by(threads)
                        .map(|&q| (q, run_keda(config, trace, messages, q)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a KEDA sweep thread panicked"))
            .collect()
    });
    runs.sort_by_key(|(q, _)| *q);
    let target = config.model.latency_target_seconds;
    runs.iter()
        .filter(|(_, r)| r.stats.meets(target))
        .min_by(|a, b| {
            a.1.stats
                .summary
                .replica_seconds
                .total_cmp(&b.1.stats.summary.replica_seconds)
        })
        .or_else(|| {
            runs.iter().min_by(|a, b| {
                a.1.stats
                    .summary
                    .p99_wait_s
                    .total_cmp(&b.1.stats.summary.p99_wait_s)
            })
        })
        .expect("the KEDA sweep has at least one queue length")
        .clone()
}

pub fn run_trace(config: &BenchConfig, trace: &Trace) -> anyhow::Result<TraceResult> {
    anyhow::ensure!(
        !config.keda_queue_lengths.is_empty(),
        "no KEDA queue lengths to sweep"
    );
    let messages = materialize(trace, &config.model);
    let ferry = run_ferry(config, trace, &messages)?;
    let (keda_queue_length, keda) = tune_keda(config, trace, &messages);
    let oracle = PolicyRun::of(oracle(
        &config.model,
        &messages,
        trace.duration_seconds(),
        config.scaling.min_replicas,
    ));
    Ok(TraceResult {
        name: trace.name.clone(),
        latency_target_seconds: config.model.latency_target_seconds,
        ferry,
        keda,
        keda_queue_length,
        oracle,
    })
}

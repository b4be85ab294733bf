//! Runs the autoscaling benchmark: the `ferry` policy, KEDA on the HPA (tuned per trace) and a
//! clairvoyant lower bound over the built-in traces or CSV traces of your own traffic.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ferry_operator::autoscaler::ScalingSpec;
use ferry_operator::sim::bench::{BenchConfig, run_trace};
use ferry_operator::sim::counts::{ApproximateCounts, CloudMonitoring, QueueCounts};
use ferry_operator::sim::ferry::CountsRead;
use ferry_operator::sim::model::ModelConfig;
use ferry_operator::sim::plot::trace_svg;
use ferry_operator::sim::report::{Report, table};
use ferry_operator::sim::trace::{Trace, builtin_suite};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-scalesim",
    about = "Runs ferry's autoscaling policy, KEDA on the HPA (tuned per trace) and a clairvoyant lower bound over traffic traces"
)]
struct Args {
    /// CSV trace `second,arrivals[,mean_service_s]`; repeatable. Without it, the built-in suite.
    #[arg(long = "trace", value_name = "FILE")]
    traces: Vec<PathBuf>,
    /// Run only the built-in traces with these names.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Write `report.json`, one SVG per trace and ferry's decisions per trace here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seconds a message may wait (the policy's target and the SLO every policy is judged by).
    #[arg(long, default_value_t = 30.0)]
    target_latency: f64,
    /// Seconds from creating a pod to its first delivery.
    #[arg(long, default_value_t = 15.0)]
    pod_startup: f64,
    /// Deliveries one pod runs at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Mean service seconds where the trace does not say.
    #[arg(long, default_value_t = 0.5)]
    mean_service: f64,
    /// Coefficient of variation of the log-normal service time.
    #[arg(long, default_value_t = 1.0)]
    service_cv: f64,
    /// Replica bounds for every policy.
    #[arg(long, default_value_t = 50)]
    max_replicas: u32,
    #[arg(long, default_value_t = 0)]
    min_replicas: u32,
    /// `spec.scaling.scaleDownStabilizationSeconds` for ferry (defaults to the CRD's).
    #[arg(long)]
    scale_down_stabilization: Option<u32>,
    /// `spec.scaling.idleBeforeZeroSeconds` for ferry.
    #[arg(long)]
    idle_before_zero: Option<u32>,
    /// `spec.scaling.maxScaleUpStep` for ferry.
    #[arg(long)]
    max_scale_up_step: Option<u32>,
    /// `spec.scaling.activationBacklog` for ferry.
    #[arg(long)]
    activation_backlog: Option<u32>,
    /// `spec.scaling.backlogPerReplica` for ferry.
    #[arg(long)]
    backlog_per_replica: Option<u32>,
    /// Seconds between the operator's polls.
    #[arg(long, default_value_t = 3)]
    poll_interval: u32,
    /// Share of ferry's scrapes that fail (the policy then holds).
    #[arg(long, default_value_t = 0.0)]
    scrape_failure_rate: f64,
    /// Age of scraped values (both ferry and KEDA see the queue this late).
    #[arg(long, default_value_t = 2)]
    metric_lag: u32,
    /// SQS's approximate counts: each read of the queue's visible and in-flight counts (by
    /// ferry's sidecars and by KEDA alike) returns them as they were up to this many seconds
    /// earlier, drawn per read. 0 reads them exactly.
    #[arg(long, default_value_t = 0)]
    count_settle: u32,
    /// The queue's backend. `sqs`: every read of its counts is exact or `--count-settle` stale.
    /// `pubsub`: the counts are only in Cloud Monitoring, a sample a minute published
    /// `--monitoring-delay` later; KEDA's Pub/Sub scaler reads them there, and ferry (unless
    /// `--pubsub-monitoring`) estimates the backlog from its sidecars' wait and keeps one
    /// replica, as the operator does.
    #[arg(long, value_enum, default_value_t = Provider::Sqs)]
    provider: Provider,
    /// With `--provider pubsub`: ferry reads Cloud Monitoring too (the operator's
    /// `FERRY_PUBSUB_MONITORING=true`), so it may scale to zero.
    #[arg(long)]
    pubsub_monitoring: bool,
    /// Seconds from a Cloud Monitoring sample to its being readable.
    #[arg(long, default_value_t = 120)]
    monitoring_delay: u32,
    /// Seed for service times and arrival instants (the built-in traces' rates are fixed).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Threads for KEDA's queue-length sweep.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Provider {
    Sqs,
    Pubsub,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let traces = if args.traces.is_empty() {
        let suite = builtin_suite();
        if args.only.is_empty() {
            suite
        } else {
            let picked: Vec<Trace> = suite
                .into_iter()
                .filter(|t| args.only.contains(&t.name))
                .collect();
            anyhow::ensure!(
                !picked.is_empty(),
                "no built-in trace named {:?}",
                args.only
            );
            picked
        }
    } else {
        args.traces
            .iter()
            .map(|p| Trace::from_file(p))
            .collect::<anyhow::Result<_>>()?
    };

    let model = ModelConfig {
        pod_startup_seconds: args.pod_startup,
        concurrency_per_pod: args.concurrency,
        default_mean_service_seconds: args.mean_service,
        service_cv: args.service_cv,
        seed: args.seed,
        ..ModelConfig::default()
    };
    let defaults = ScalingSpec::default();
    let scaling = ScalingSpec {
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        target_latency_seconds: Some(args.target_latency),
        backlog_per_replica: args.backlog_per_replica,
        activation_backlog: args
            .activation_backlog
            .unwrap_or(defaults.activation_backlog),
        scale_down_stabilization_seconds: args
            .scale_down_stabilization
            .unwrap_or(defaults.scale_down_stabilization_seconds),
        idle_before_zero_seconds: args
            .idle_before_zero
            .unwrap_or(defaults.idle_before_zero_seconds),
        max_scale_up_step: args.max_scale_up_step.unwrap_or(defaults.max_scale_up_step),
        // The model's pods deliver as fast as their slots allow.
        delivery_max_per_second: None,
    };
    scaling.validate()?;
    let mut config = BenchConfig::new(model, scaling);
    config.scrape.poll_interval_seconds = args.poll_interval.max(1);
    config.scrape.lag_seconds = args.metric_lag;
    match args.provider {
        Provider::Sqs => {
            anyhow::ensure!(
                !args.pubsub_monitoring,
                "--pubsub-monitoring needs --provider pubsub"
            );
            config.scrape.counts = QueueCounts::Approximate(ApproximateCounts {
                settle_seconds: args.count_settle,
                seed: args.seed,
            });
        }
        Provider::Pubsub => {
            anyhow::ensure!(
                args.count_settle == 0,
                "--count-settle describes SQS's counts; Pub/Sub's come from Cloud Monitoring (--monitoring-delay)"
            );
            config.scrape.counts = QueueCounts::Monitoring(CloudMonitoring {
                delay_seconds: args.monitoring_delay,
                ..CloudMonitoring::default()
            });
            config.scrape.counts_read = if args.pubsub_monitoring {
                CountsRead::AtZero
            } else {
                CountsRead::Never
            };
        }
    }
    anyhow::ensure!(
        (0.0..1.0).contains(&args.scrape_failure_rate),
        "--scrape-failure-rate must be in [0, 1)"
    );
    config.scrape.failure_rate = args.scrape_failure_rate;
    config.scrape.seed = args.seed;
    config.threads = args.threads;

    let mut results = Vec::new();
    for trace in &traces {
        eprintln!(
            "running {} ({} s, {} messages)",
            trace.name,
            trace.duration_seconds(),
            trace.total_arrivals()
        );
        results.push(run_trace(&config, trace)?);
    }
    print!("{}", table(&results));

    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let report = serde_json::to_string_pretty(&Report::of(&results))?;
        std::fs::write(dir.join("report.json"), report + "\n")?;
        for result in &results {
            let path = dir.join(format!("{}.svg", result.name));
            std::fs::write(&path, trace_svg(result))
                .with_context(|| format!("writing {}", path.display()))?;
            // Every replica change ferry made, with its reason and signals: the same
            // explanation the operator puts in status and Events.
            let path = dir.join(format!("{}.ferry-decisions.json", result.name));
            let decisions = serde_json::to_string_pretty(&result.ferry.decisions)?;
            std::fs::write(&path, decisions + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("wrote {}", dir.join("report.json").display());
    }
    Ok(())
}

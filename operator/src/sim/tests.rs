use super::bench::{BenchConfig, run_trace};
use super::counts::{ApproximateCounts, CloudMonitoring, QueueCounts};
use super::ferry::CountsRead;
use super::model::{Controller, Message, ModelConfig, RemovalMode, TickRecord, materialize, run};
use super::report::Report;
use super::trace::{Trace, TraceSecond};
use crate::autoscaler::ScalingSpec;

/// Holds `replicas` until `until`, then `after`.
struct Fixed {
    replicas: u32,
    until: f64,
    after: u32,
    mode: RemovalMode,
}

impl Controller for Fixed {
    fn removal_mode(&self) -> RemovalMode {
        self.mode
    }
    fn tick(&mut self, now: f64, _: &[TickRecord], _: u32) -> Option<u32> {
        Some(if now < self.until {
            self.replicas
        } else {
            self.after
        })
    }
}

fn constant_trace(rate: u32, seconds: usize, service: Option<f64>) -> Trace {
    Trace {
        name: "constant".into(),
        seconds: vec![
            TraceSecond {
                arrivals: rate,
                mean_service_seconds: service,
            };
            seconds
        ],
    }
}

/// `seconds` seconds of traffic, `arrivals(t)` messages in second `t`, at the model's
/// default service time.
fn trace_of(name: &str, seconds: u32, arrivals: impl Fn(u32) -> u32) -> Trace {
    Trace {
        name: name.into(),
        seconds: (0..seconds)
            .map(|t| TraceSecond {
                arrivals: arrivals(t),
                mean_service_seconds: None,
            })
            .collect(),
    }
}

/// The benchmark over `config()`, sweeping KEDA's queue length over `keda_queue_lengths`.
fn bench_of(scaling: ScalingSpec, keda_queue_lengths: &[u32]) -> BenchConfig {
    let mut bench = BenchConfig::new(config(), scaling);
    bench.keda_queue_lengths = keda_queue_lengths.to_vec();
    bench
}

fn config() -> ModelConfig {
    ModelConfig {
        pod_startup_seconds: 10.0,
        concurrency_per_pod: 4,
        ..ModelConfig::default()
    }
}

#[test]
fn every_message_is_served_once_and_pods_cost_from_creation() {
    let config = config();
    let trace = constant_trace(10, 300, None);
    let messages = materialize(&trace, &config);
    let mut fixed = Fixed {
        replicas: 3,
        until: f64::INFINITY,
        after: 3,
        mode: RemovalMode::DrainIdlest,
    };
    let outcome = run(&config, &messages, 300, &mut fixed, 1000);
    assert_eq!(outcome.waits.len(), messages.len());
    assert_eq!(outcome.redeliveries, 0);
    // Three pods for the whole run. Only messages that arrived while they started (10 s) or
    // while they drained what piled up meanwhile (24 msg/s against 10 arriving: 7 s more)
    // waited for more than a second.
    assert_eq!(outcome.replica_seconds, 3.0 * outcome.replicas.len() as f64);
    let early = messages.iter().filter(|m| m.arrival < 20.0).count();
    let slow = outcome.waits.iter().filter(|w| **w > 1.0).count();
    assert!(slow <= early, "{slow} slow waits, {early} early messages");
    assert!(slow > 0);
}

#[test]
fn an_underprovisioned_queue_builds_a_backlog_and_violates_the_target() {
    let config = config();
    // 10 msg/s × 0.5 s = 5 busy slots, one pod has 4.
    let trace = constant_trace(10, 600, None);
    let messages = materialize(&trace, &config);
    let mut fixed = Fixed {
        replicas: 1,
        until: f64::INFINITY,
        after: 1,
        mode: RemovalMode::DrainIdlest,
    };
    let outcome = run(&config, &messages, 600, &mut fixed, 600);
    assert!(outcome.slo_violation_seconds > 100.0);
    assert!(*outcome.backlog.last().unwrap() > 100);
}

#[test]
fn draining_never_cuts_work_but_killing_does() {
    let config = config();
    let trace = constant_trace(1, 200, Some(60.0));
    let messages: Vec<Message> = materialize(&trace, &config);
    let shrink = |mode| Fixed {
        replicas: 20,
        until: 150.0,
        after: 2,
        mode,
    };
    let drained = run(
        &config,
        &messages,
        200,
        &mut shrink(RemovalMode::DrainIdlest),
        5000,
    );
    assert_eq!(drained.redeliveries, 0);
    let killed = run(
        &config,
        &messages,
        200,
        &mut shrink(RemovalMode::KillNewest),
        5000,
    );
    assert!(killed.redeliveries > 0);
    let max = |w: &[f64]| w.iter().copied().fold(0.0, f64::max);
    assert!(max(&killed.waits) > max(&drained.waits));
}

#[test]
fn the_benchmark_runs_the_policy_and_reports_in_the_issue_shape() {
    let trace = trace_of(
        "tiny",
        600,
        |t| if (100..200).contains(&t) { 40 } else { 2 },
    );
    let bench = bench_of(ScalingSpec::default(), &[5, 20]);
    let result = run_trace(&bench, &trace).unwrap();
    assert!(result.ferry.stats.summary.scale_events > 0);
    assert!(result.ferry.stats.messages as u64 == trace.total_arrivals());
    assert!(result.oracle.stats.summary.replica_seconds > 0.0);
    assert!(
        result.oracle.stats.summary.replica_seconds <= result.ferry.stats.summary.replica_seconds
    );
    let json = serde_json::to_value(Report::of(&[result])).unwrap();
    let policies = &json["traces"][0]["policies"];
    assert_eq!(json["traces"][0]["name"], "tiny");
    for policy in ["ferry", "keda", "oracle"] {
        let mut keys: Vec<_> = policies[policy]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "max_wait_s",
                "p99_wait_s",
                "replica_seconds",
                "scale_events",
                "slo_violation_s"
            ]
        );
    }
}

#[test]
fn ferry_beats_tuned_keda_on_a_step_in_waits_and_cost() {
    let trace = trace_of(
        "step",
        900,
        |t| if (300..600).contains(&t) { 150 } else { 15 },
    );
    let bench = bench_of(ScalingSpec::default(), &[2, 5, 10, 20, 50]);
    let result = run_trace(&bench, &trace).unwrap();
    let (ferry, keda, oracle) = (
        &result.ferry.stats.summary,
        &result.keda.stats.summary,
        &result.oracle.stats.summary,
    );
    assert!(ferry.p99_wait_s < keda.p99_wait_s, "{ferry:?} {keda:?}");
    assert!(
        ferry.replica_seconds < keda.replica_seconds,
        "{ferry:?} {keda:?}"
    );
    assert!(
        oracle.replica_seconds < ferry.replica_seconds,
        "{oracle:?} {ferry:?}"
    );
    assert_eq!(ferry.slo_violation_s, 0.0);
}

#[test]
fn the_replica_bounds_apply_to_every_policy() {
    // Two messages a minute: left alone, every policy would idle at zero or one replica.
    let trace = trace_of("sparse", 900, |t| u32::from(t % 30 == 0));
    let spec = ScalingSpec {
        min_replicas: 2,
        max_replicas: 3,
        ..ScalingSpec::default()
    };
    let bench = bench_of(spec, &[1, 5]);
    let result = run_trace(&bench, &trace).unwrap();
    for (policy, run) in [
        ("ferry", &result.ferry),
        ("keda", &result.keda),
        ("oracle", &result.oracle),
    ] {
        let after_the_first_poll = &run.replicas[60..900];
        assert!(
            after_the_first_poll.iter().all(|&r| (2..=3).contains(&r)),
            "{policy}: {:?}",
            after_the_first_poll
        );
    }
}

#[test]
fn failed_scrapes_make_ferry_hold_not_scale_to_zero() {
    let trace = trace_of(
        "flaky",
        900,
        |t| if (300..600).contains(&t) { 150 } else { 15 },
    );
    let mut bench = bench_of(ScalingSpec::default(), &[5]);
    let healthy = run_trace(&bench, &trace).unwrap();
    bench.scrape.failure_rate = 0.4;
    bench.scrape.seed = 7;
    let flaky = run_trace(&bench, &trace).unwrap();
    // Four scrapes in ten fail: the policy holds through them, so the consumer never drops to
    // zero under load, and it still meets the target, reacting a poll later at worst.
    let loaded = 20..880;
    assert!(flaky.ferry.replicas[loaded].iter().all(|&r| r > 0));
    assert!(flaky.ferry.stats.meets(30.0), "{:?}", flaky.ferry.stats);
    assert_eq!(flaky.ferry.stats.summary.slo_violation_s, 0.0);
    let slack = flaky.ferry.stats.summary.max_wait_s - healthy.ferry.stats.summary.max_wait_s;
    assert!(
        slack <= 3.0 * 3.0,
        "{:?} {:?}",
        flaky.ferry.stats,
        healthy.ferry.stats
    );
    // Every change made without signals only enforced the bounds.
    assert!(
        flaky
            .ferry
            .decisions
            .iter()
            .all(|d| d.signals.is_some() || d.from == d.to || d.reason.code() == "OutsideBounds")
    );
}

#[test]
fn settling_counts_delay_both_policies_activation_and_lose_nothing() {
    // Load arrives to zero replicas, so only the queue's count can start a consumer: a
    // count up to 60 s stale starts both policies later, and every message is still served.
    let trace = trace_of("cold", 400, |t| if t >= 100 { 20 } else { 0 });
    let mut bench = bench_of(ScalingSpec::default(), &[5, 20]);
    let exact = run_trace(&bench, &trace).unwrap();
    bench.scrape.counts = QueueCounts::Approximate(ApproximateCounts {
        settle_seconds: 60,
        seed: 3,
    });
    let settling = run_trace(&bench, &trace).unwrap();
    for (name, exact, settling) in [
        ("ferry", &exact.ferry, &settling.ferry),
        ("keda", &exact.keda, &settling.keda),
    ] {
        assert_eq!(
            settling.stats.messages as u64,
            trace.total_arrivals(),
            "{name}"
        );
        assert!(
            settling.stats.summary.max_wait_s >= exact.stats.summary.max_wait_s,
            "{name}: {:?} vs {:?}",
            settling.stats.summary,
            exact.stats.summary
        );
    }
    assert_ne!(
        exact.ferry.stats.summary, settling.ferry.stats.summary,
        "the setting reached ferry's scrapes"
    );
    assert_ne!(
        exact.keda.stats.summary, settling.keda.stats.summary,
        "the setting reached KEDA's metric"
    );
}

#[test]
fn pubsub_without_monitoring_keeps_one_replica_and_follows_a_step_from_the_wait() {
    // Nobody reads the subscription's backlog: ferry sees only what its sidecars measure
    // (the backlog by Little's law) and keeps a replica through the quiet spells; KEDA reads
    // Cloud Monitoring, minutes late.
    let trace = trace_of("pubsub-step", 1200, |t| match t {
        0..300 => 5,
        300..600 => 100,
        600..900 => 0,
        _ => 5,
    });
    let mut bench = bench_of(ScalingSpec::default(), &[5, 20, 50]);
    bench.scrape.counts = QueueCounts::Monitoring(CloudMonitoring::default());
    bench.scrape.counts_read = CountsRead::Never;
    let pubsub = run_trace(&bench, &trace).unwrap();
    bench.scrape.counts = QueueCounts::default();
    bench.scrape.counts_read = CountsRead::Always;
    let sqs = run_trace(&bench, &trace).unwrap();

    for result in [&pubsub, &sqs] {
        for run in [&result.ferry, &result.keda] {
            assert_eq!(run.stats.messages as u64, trace.total_arrivals());
        }
    }
    let ferry = &pubsub.ferry;
    assert!(
        ferry.replicas.iter().all(|&r| r >= 1),
        "ferry kept a replica: {:?}",
        ferry.replicas
    );
    assert!(
        sqs.ferry.replicas[600..900].contains(&0),
        "with the queue's counts it goes to zero while the queue is quiet"
    );
    // 100 msg/s of 0.5 s jobs keep 50 slots busy: 13 replicas of 4.
    let peak = ferry.replicas[300..600].iter().copied().max().unwrap();
    assert!(peak >= 13, "peak {peak}");
    assert!(
        ferry.stats.meets(pubsub.latency_target_seconds),
        "{:?}",
        ferry.stats.summary
    );
    assert!(
        ferry
            .decisions
            .iter()
            .any(|d| d.signals.as_ref().is_some_and(|s| s.visible > 0)),
        "some decision used a backlog estimated from the wait"
    );
    // Minutes-old counts make KEDA's best on Pub/Sub wait longer than its best on SQS.
    assert!(
        pubsub.keda.stats.summary.p99_wait_s > sqs.keda.stats.summary.p99_wait_s,
        "{:?} vs {:?}",
        pubsub.keda.stats.summary,
        sqs.keda.stats.summary
    );
}

//! The scale benchmark in small (docs/performance.md, "The operator at scale"): 50
//! QueueConsumers applied at once against devcluster, the Pub/Sub emulator, the Monitoring
//! stand-in and the real ferry-operator process. Bounds are generous (a shared 2-core CI
//! machine, debug build); the point is that the path works end to end and that idle
//! consumers cost at most one queue call each per poll. `scripts/bench-scale.sh` measures.

use std::time::Duration;

use ferry_tests::scalebench::{ScaleBenchConfig, run};
use ferry_tests::{log_dir, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_consumers_become_ready_and_idle_cheaply() {
    let config = ScaleBenchConfig {
        count: 50,
        namespaces: 2,
        in_flight: 16,
        poll_interval_seconds: 2.0,
        ready_timeout: Duration::from_secs(180),
        settle: Duration::from_secs(4),
        window: Duration::from_secs(12),
        work_dir: log_dir().join(unique_name("scalebench")),
    };
    let report = run(&config).await.expect("the benchmark runs");
    let steady = &report.steady;
    assert!(
        steady.queue_calls_per_object_per_poll <= 1.0,
        "idle consumers cost {:.3} queue calls each per poll: {:?}",
        steady.queue_calls_per_object_per_poll,
        steady.queue_calls_by_operation
    );
    assert!(
        steady.monitoring_calls_seen as f64 <= steady.polls_in_window + 1.0,
        "one Monitoring call per poll for all consumers of the project, got {} in {:.1} polls",
        steady.monitoring_calls_seen,
        steady.polls_in_window
    );
    // Idle and unchanged: no writes at all, only the leader's lease renewals.
    let requests_besides_the_lease: u64 = steady
        .k8s_by_verb_and_resource
        .iter()
        .filter(|(key, _)| !key.ends_with(" leases"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        requests_besides_the_lease, 0,
        "steady-state requests besides the lease: {:?}",
        steady.k8s_by_verb_and_resource
    );
}

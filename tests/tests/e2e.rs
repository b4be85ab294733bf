//! The sandbox's loop, run non-interactively: devcluster with real pods, the real
//! `ferry-operator` process, the example QueueConsumer, and a queue emulator, under load and
//! under faults. Every scenario asserts on the same summary `scripts/sandbox.sh` prints.
//!
//! Scenarios run one at a time (each is a whole system on a 2-core machine) and each uses a
//! queue of its own on the shared emulator.

use std::time::Duration;

use ferry_queues::Provider;
use ferry_tests::sandbox::proxy::FaultProxy;
use ferry_tests::sandbox::{Sandbox, SandboxConfig, Snapshot, Summary};
use ferry_tests::{repo_root, unique_name};

/// One system at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(provider: Provider, scenario: &str) -> SandboxConfig {
    let mut config = SandboxConfig::new(provider);
    config.burst = 200;
    config.steady_rate = 10.0;
    config.steady_seconds = 8;
    config.poison_every = 25;
    config.poll_interval_seconds = 1.0;
    config.timeout = Duration::from_secs(240);
    config.work_dir = repo_root().join(format!(
        "target/test-logs/e2e-{scenario}-{}",
        provider.as_str()
    ));
    config.queue_name = Some(unique_name("e2e"));
    // The fault scenarios end when the load is settled; the whole loop redrives too, and
    // waits for a tick of the example's periodic task.
    config.redrive = false;
    config.periodic_tick = false;
    config
}

fn print_progress(snapshot: &Snapshot) {
    eprintln!(
        "t={:.0}s {} published={} processed={} replicas={}/{}",
        snapshot.elapsed.as_secs_f64(),
        snapshot.phase,
        snapshot.published,
        snapshot.processed,
        snapshot.current,
        snapshot.desired
    );
}

/// What every run must show: nothing lost, every poison message in the DLQ, the consumer
/// scaled out for the burst and back to its floor.
fn assert_sound(summary: &Summary, floor: i32, allowed_duplicates: usize) {
    eprintln!("{}", serde_json::to_string(summary).unwrap());
    assert_eq!(summary.lost, 0, "messages lost: {summary:?}");
    assert_eq!(
        summary.poison_not_dead_lettered, 0,
        "poison outside the DLQ: {summary:?}"
    );
    assert!(
        summary.duplicates <= allowed_duplicates,
        "{} duplicates, at most {allowed_duplicates} allowed: {summary:?}",
        summary.duplicates
    );
    assert_eq!(
        summary.processed + summary.in_dead_letter,
        summary.published,
        "{summary:?}"
    );
    assert!(
        summary.max_replicas > 1,
        "the burst scaled the consumer out: {summary:?}"
    );
    assert_eq!(
        summary.final_replicas, floor,
        "back at the floor: {summary:?}"
    );
}

ferry_tests::for_both_providers!(the_whole_loop_loses_nothing_and_scales_out_and_back,);

/// The sandbox as a newcomer runs it: a burst, a steady load, idle. Proves the full chain
/// (CRD → operator → queue + DLQ → Deployment with sidecar → autoscaler) delivers every
/// message exactly once or dead-letters it, scales out for the burst and back to the floor
/// (zero for SQS; one for Pub/Sub without Cloud Monitoring), and processes a tick of the
/// periodic task. The run then fixes the worker and, once it is rolled out, redrives with
/// `ferry.dev/redrive`: every dead letter moves back once and the fixed worker processes it
/// once (on SQS from zero replicas again), leaving the dead-letter queue empty.
async fn the_whole_loop_loses_nothing_and_scales_out_and_back(provider: Provider) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut config = config(provider, "loop");
    config.redrive = true;
    config.periodic_tick = true;
    let floor = config.floor();
    let mut sandbox = Sandbox::start(config).await.expect("sandbox starts");
    let summary = sandbox
        .run(&mut print_progress)
        .await
        .expect("the run settles");
    sandbox.shutdown().await;
    assert_sound(&summary, floor, 0);
    assert!(summary.dead_lettered >= summary.published / 25);
    // The example's periodic task: the operator sent its ticks through the queue and the
    // workers processed each once (on SQS, starting from zero for it).
    assert!(summary.periodic_ticks_processed >= 1, "{summary:?}");
    assert_eq!(summary.periodic_tick_duplicates, 0, "{summary:?}");
    let redrive = summary.redrive.as_ref().expect("the run redrove");
    assert_eq!(
        redrive.moved, summary.dead_lettered as i64,
        "every dead letter moved back once: {summary:?}"
    );
    assert_eq!(redrive.failed_again, 0, "{summary:?}");
    assert_eq!(
        redrive.processed_after, summary.dead_lettered,
        "{summary:?}"
    );
    assert_eq!(summary.in_dead_letter, 0, "{summary:?}");
    assert_eq!(summary.processed, summary.published, "{summary:?}");
}

/// Settles the rest of a scenario and returns its summary.
async fn finish(mut sandbox: Sandbox) -> Summary {
    sandbox
        .wait_settled(Duration::from_secs(240), &mut print_progress)
        .await
        .expect("settles");
    let summary = sandbox.summary().await.expect("summary");
    sandbox.shutdown().await;
    summary
}

/// The operator is SIGKILLed with a burst in the queue and restarted 5 s later. Proves that
/// nothing depends on the operator's memory: the queue keeps being consumed by the pods it
/// left, the restarted operator (new leader term, empty autoscaler state) takes over the
/// scaling, and the run ends with nothing lost or duplicated and the consumer at zero.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_killed_mid_load_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut sandbox = Sandbox::start(config(Provider::Sqs, "operator-killed"))
        .await
        .expect("sandbox starts");
    sandbox
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");
    sandbox.publish(300).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(3)).await;
    sandbox.kill_operator().await;
    sandbox
        .publish(50)
        .await
        .expect("publish while the operator is down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    sandbox.start_operator().expect("restart the operator");
    let summary = finish(sandbox).await;
    assert_sound(&summary, 0, 0);
}

ferry_tests::for_both_providers!(a_sidecar_killed_mid_load_loses_nothing,);

/// One pod's sidecar is SIGKILLed mid-load (no drain). Proves that messages it held are not
/// lost: they come back after their visibility timeout (SQS) or ack deadline (Pub/Sub) and
/// are processed by another pod or by the restarted sidecar. A message whose worker had
/// answered but whose delete or ack had not reached the queue yet is processed again:
/// at-least-once allows at most one per delivery slot of the killed sidecar (concurrency 4).
async fn a_sidecar_killed_mid_load_loses_nothing(provider: Provider) {
    let _one = ONE_AT_A_TIME.lock().await;
    let config = config(provider, "sidecar-killed");
    let floor = config.floor();
    let mut sandbox = Sandbox::start(config).await.expect("sandbox starts");
    sandbox
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");
    sandbox.publish(300).await.expect("publish");
    let mut killed = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if sandbox.ledger().processed() > 20 {
            killed = Some(sandbox.kill_one_sidecar().await.expect("kill a sidecar"));
            break;
        }
    }
    assert!(killed.is_some(), "the consumer never started processing");
    let summary = finish(sandbox).await;
    assert_sound(&summary, floor, 4);
}

ferry_tests::for_both_providers!(workers_down_for_a_while_lose_nothing,);

/// Every worker container is SIGKILLed mid-load (the kubelet restarts them). Proves that a
/// worker that is down is not a lost message: the sidecars' deliveries are refused, retried
/// with backoff, and processed once the workers are back. A worker killed after it logged
/// its 200 but before the answer left it has done the work the sidecar must assume undone:
/// at-least-once delivers that message again, so such a repeat is allowed, and only such
/// a repeat (each one is matched to the failed attempt its sidecar logged).
async fn workers_down_for_a_while_lose_nothing(provider: Provider) {
    let _one = ONE_AT_A_TIME.lock().await;
    let config = config(provider, "workers-down");
    let floor = config.floor();
    let mut sandbox = Sandbox::start(config).await.expect("sandbox starts");
    sandbox
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");
    sandbox.publish(300).await.expect("publish");
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if sandbox.ledger().processed() > 20 {
            break;
        }
    }
    let killed = sandbox.kill_workers().await.expect("kill the workers");
    assert!(killed > 0, "no worker was running");
    sandbox
        .wait_settled(Duration::from_secs(240), &mut print_progress)
        .await
        .expect("settles");
    let summary = sandbox.summary().await.expect("summary");
    let unexplained = sandbox
        .ledger()
        .unexplained_duplicates(&sandbox.failed_attempts_seen_by_sidecars());
    sandbox.shutdown().await;
    assert!(
        unexplained.is_empty(),
        "messages processed again although every answer reached the sidecar (seq): \
         {unexplained:?}; {summary:?}"
    );
    // At most one repeat per request in flight when the workers died (concurrency 4 in
    // examples/sandbox).
    assert_sound(&summary, floor, killed * 4);
}

/// The queue API becomes unreachable for 10 s mid-load (a proxy in front of moto closes
/// every connection, and new ones at once), for the operator and every sidecar. Proves the
/// system rides it out: receives and deletes fail and are retried, the autoscaler holds
/// instead of reading an unreachable queue as empty, and the run ends with nothing lost. A
/// delete that failed during the cut lets its message be processed again after the
/// visibility timeout; at most one per delivery slot (8 replicas × 4).
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_api_unreachable_for_a_while_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut config = config(Provider::Sqs, "queue-unreachable");
    let upstream = config
        .direct_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("moto listens on an address");
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    config.queue_endpoint_override = Some(format!("http://{}", proxy.addr()));
    let mut sandbox = Sandbox::start(config).await.expect("sandbox starts");
    sandbox
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");
    sandbox.publish(300).await.expect("publish");
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if sandbox.ledger().processed() > 20 {
            break;
        }
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let replicas_during = sandbox.replicas().await.expect("replicas").1;
    proxy.restore();
    assert!(
        replicas_during > 0,
        "the autoscaler did not read the unreachable queue as empty"
    );
    let summary = finish(sandbox).await;
    assert_sound(&summary, 0, 32);
}

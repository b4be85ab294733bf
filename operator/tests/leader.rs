//! Leader election against a cluster's Lease API (devcluster's, or `FERRY_TEST_KUBECONFIG`'s): one leader at a time, failover when the
//! leader disappears, immediate handover when it releases the lease.

use std::time::{Duration, Instant};

use ferry_operator::leader::{ElectionSettings, LeaderElection};
use ferry_tests::cluster::TestCluster;
use tokio::sync::{oneshot, watch};

fn settings(namespace: &str, identity: &str) -> ElectionSettings {
    ElectionSettings {
        lease_name: "ferry-operator".into(),
        namespace: namespace.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(300),
    }
}

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn campaign(cluster: &TestCluster, identity: &str) -> Candidate {
    let election = LeaderElection::new(cluster.client(), settings(cluster.namespace(), identity));
    let leading = election.leadership();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(election.run(async move {
        let _ = stopped.await;
    }));
    Candidate {
        leading,
        stop: Some(stop),
        task,
    }
}

async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_exactly_one_leader_and_fail_over() {
    let cluster = TestCluster::start().await;
    let a = campaign(&cluster, "replica-a");
    let b = campaign(&cluster, "replica-b");
    wait_until(Duration::from_secs(10), "a leader", || {
        *a.leading.borrow() || *b.leading.borrow()
    })
    .await;

    // For a few renewal rounds, never two leaders, and the same one throughout.
    let first_leader_is_a = *a.leading.borrow();
    for _ in 0..20 {
        let (la, lb) = (*a.leading.borrow(), *b.leading.borrow());
        assert!(!(la && lb), "two leaders at once");
        assert_eq!(
            la, first_leader_is_a,
            "leadership must not flap while the leader renews"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader dies without releasing: the other takes over once the lease expires.
    let (leader, follower) = if first_leader_is_a { (a, b) } else { (b, a) };
    leader.task.abort();
    let took = wait_until(Duration::from_secs(10), "failover", || {
        *follower.leading.borrow()
    })
    .await;
    assert!(
        took >= Duration::from_secs(1),
        "no takeover before the lease expired ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_hands_over_at_once() {
    let cluster = TestCluster::start().await;
    let mut a = campaign(&cluster, "replica-a");
    wait_until(Duration::from_secs(10), "a to lead", || *a.leading.borrow()).await;
    let b = campaign(&cluster, "replica-b");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!*b.leading.borrow(), "b follows while a renews");

    a.stop
        .take()
        .expect("stop handle")
        .send(())
        .expect("a is running");
    a.task.await.expect("a stops cleanly");
    assert!(!*a.leading.borrow(), "a stepped down");
    let took = wait_until(Duration::from_secs(10), "handover", || *b.leading.borrow()).await;
    assert!(
        took < Duration::from_secs(2),
        "a released lease is taken at the next round, not after expiry ({took:?})"
    );
}

//! The benchmark's QueueConsumers: what they look like, applying them all at once, and
//! watching when each becomes Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use ferry_crds::{QueueConsumer, condition_type};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

/// An idle consumer of a Pub/Sub subscription that may scale to zero, and does so as soon as
/// its queue reads empty (`idleBeforeZeroSeconds: 0`): a new Deployment starts at one
/// replica, and with no kubelet running it here, zero replicas is the only way its workload
/// becomes ready.
pub fn manifest(namespace: &str, name: &str) -> anyhow::Result<QueueConsumer> {
    let value = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "queue": {"provider": "pubsub", "name": subscription_id(namespace, name)},
            "deadLetter": {"maxDeliveries": 5},
            "scaling": {"minReplicas": 0, "maxReplicas": 4, "idleBeforeZeroSeconds": 0},
            "worker": {"spec": {"containers": [
                {"name": "worker", "image": "example.com/scalebench-worker:1"}
            ]}}
        }
    });
    Ok(serde_json::from_value(value)?)
}

/// The Pub/Sub subscription (and topic) id of a benchmark consumer.
pub fn subscription_id(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

/// `(namespace, name)` of consumer `index` of `count`, spread over `namespaces`.
pub fn placement(index: usize, namespaces: usize) -> (String, String) {
    (
        format!("scalebench-{}", index % namespaces.max(1)),
        format!("consumer-{index:05}"),
    )
}

/// When each consumer first showed a condition, since the benchmark's start.
#[derive(Default)]
pub struct Milestones {
    pub queue_ready: HashMap<(String, String), Instant>,
    pub ready: HashMap<(String, String), Instant>,
}

fn condition_true(qc: &QueueConsumer, type_: &str) -> bool {
    qc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Follows every QueueConsumer with one watch and records first-time milestones.
pub fn watch_milestones(api: Api<QueueConsumer>) -> Arc<Mutex<Milestones>> {
    let milestones = Arc::new(Mutex::new(Milestones::default()));
    let seen = milestones.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            match events.try_next().await {
                Ok(Some(qc)) => {
                    let key = (
                        qc.metadata.namespace.clone().unwrap_or_default(),
                        qc.metadata.name.clone().unwrap_or_default(),
                    );
                    let now = Instant::now();
                    let mut seen = seen.lock().expect("milestones lock");
                    if condition_true(&qc, condition_type::QUEUE_READY) {
                        seen.queue_ready.entry(key.clone()).or_insert(now);
                    }
                    if condition_true(&qc, condition_type::READY) {
                        seen.ready.entry(key).or_insert(now);
                    }
                }
                Ok(None) => return,
                Err(error) => eprintln!("benchmark watch: {error}"),
            }
        }
    });
    milestones
}

/// Creates every consumer, `in_flight` requests at a time; returns when each create was
/// answered, by consumer.
pub async fn create_all(
    client: &kube::Client,
    count: usize,
    namespaces: usize,
    in_flight: usize,
) -> anyhow::Result<HashMap<(String, String), Instant>> {
    let creates = (0..count).map(|index| {
        let client = client.clone();
        async move {
            let (namespace, name) = placement(index, namespaces);
            let api: Api<QueueConsumer> = Api::namespaced(client, &namespace);
            api.create(&PostParams::default(), &manifest(&namespace, &name)?)
                .await
                .with_context(|| format!("create QueueConsumer {namespace}/{name}"))?;
            anyhow::Ok(((namespace, name), Instant::now()))
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(in_flight.max(1))
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_are_spread_over_namespaces_with_unique_queues() {
        assert_eq!(
            placement(7, 4),
            ("scalebench-3".to_string(), "consumer-00007".to_string())
        );
        let qc = manifest("scalebench-3", "consumer-00007").unwrap();
        assert_eq!(qc.queue_name(), "scalebench-3-consumer-00007");
        assert_eq!(qc.spec.scaling.min_replicas, 0);
        assert_eq!(qc.spec.scaling.idle_before_zero_seconds, 0);
    }
}

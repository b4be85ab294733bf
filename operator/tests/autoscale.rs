//! The autoscaler's real loop on devcluster with real pods: the process kubelet runs the
//! `ferry-consumer` sidecar and the example worker for every pod, against moto's SQS server
//! and Google's Pub/Sub emulator. What the simulator predicts, the loop must do: a burst
//! scales out as soon as the sidecars report it, the backlog drains, the consumer goes back
//! to its floor (zero for SQS) after the idle time and comes back when messages arrive, and
//! no message reaches the worker twice because a pod was removed. On SQS, the burst and a
//! stream with a step are also replayed through `ferry-scalesim`'s model of the same run
//! (spec, policy, poll, slots, worker time, measured pod start-up), and the loop's moments,
//! replica counts, waits and replica-seconds must fall within what the model predicts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_crds::QueueConsumer;
use ferry_devcluster::DevCluster;
use ferry_operator::autoscaler::PolicyTuning;
use ferry_operator::builders::OperatorSettings;
use ferry_operator::controller::{self, CloudSettings, Context};
use ferry_operator::scaling::{self, AutoscalerSettings, QueueReaderSettings};
use ferry_queues::Provider;
use ferry_queues::provision::{OutgoingMessage, publish};
use ferry_tests::{emulators, workspace_binary};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};

#[path = "autoscale/prediction.rs"]
mod prediction;

use prediction::{
    Compared, Predictions, RunSummary, Trajectory, assert_as_predicted, figures,
    simulated_decision_log, simulated_mean_replicas,
};

const POLL: Duration = Duration::from_secs(1);
const SIDECAR_IMAGE: &str = "ghcr.io/ferry-dev/consumer:test";
/// The example worker's time per message (it varies each message's by ±50 %).
const WORKER_MS: u64 = 200;

struct Live {
    cluster: DevCluster,
    ctx: std::sync::Arc<Context>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Live {
    async fn start() -> Self {
        let cluster = DevCluster::builder()
            .kubelet(true)
            .image(
                "ghcr.io/ferry-dev/consumer:*",
                [workspace_binary("ferry-consumer").display().to_string()],
            )
            .image(
                "example.com/worker:*",
                [workspace_binary("ferry-example-worker")
                    .display()
                    .to_string()],
            )
            .start()
            .await
            .expect("devcluster");
        let client = cluster.client();
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &ferry_crds::crd::crd())
            .await
            .expect("install the CRD");
        // The worker pods must pass devcluster's PodSecurity admission at the strictest level.
        ferry_tests::cluster::enforce_restricted_pods(&client, "default")
            .await
            .expect("label the namespace");
        let mut settings = OperatorSettings::new(SIDECAR_IMAGE);
        // As the chart runs it: tokens derived with a key the operator made and stored.
        settings.control_key = Some(
            ferry_operator::control_key::load_or_create(&client, "default", "ferry-control-key")
                .await
                .expect("the control key"),
        );
        settings.sqs_endpoint = Some(emulators::moto().url());
        settings.pubsub_endpoint = Some(emulators::pubsub().host_port());
        settings.poll_interval = POLL;
        settings.pods_share_network = true;
        settings.sidecar_log_format = "text".into();
        // The sidecar must never ask an instance metadata service for anything.
        settings.sidecar_extra_env = vec![EnvVar {
            name: "AWS_EC2_METADATA_DISABLED".into(),
            value: Some("true".into()),
            value_from: None,
        }];
        let cloud = CloudSettings {
            sqs_endpoint: settings.sqs_endpoint.clone(),
            pubsub_endpoint: settings.pubsub_endpoint.clone(),
            pubsub_project: Some(emulators::PUBSUB_PROJECT.into()),
            cluster_name: "autoscale-test".into(),
        };
        let ctx = Context::new(client.clone(), settings, cloud);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let autoscaling = AutoscalerSettings {
            poll_interval: POLL,
            tuning: PolicyTuning::default(),
            queues: QueueReaderSettings {
                sqs_endpoint: Some(emulators::moto().url()),
                pubsub_monitoring: None,
            },
            namespace: None,
        };
        let tasks = vec![
            tokio::spawn(controller::run(
                ctx.clone(),
                Api::all(client.clone()),
                until_stopped(),
            )),
            tokio::spawn(scaling::run(ctx.clone(), autoscaling, until_stopped())),
        ];
        Self {
            cluster,
            ctx,
            stop: Some(stop),
            tasks,
        }
    }

    fn consumers(&self) -> Api<QueueConsumer> {
        Api::namespaced(self.cluster.client(), "default")
    }

    async fn replicas(&self, name: &str) -> Option<i32> {
        let deployments: Api<Deployment> = Api::namespaced(self.cluster.client(), "default");
        deployments.get_opt(name).await.ok()??.spec.replicas
    }

    /// The Deployment's replicas asked for and ready (0 and 0 before it exists).
    async fn replica_counts(&self, name: &str) -> (i32, i32) {
        let deployments: Api<Deployment> = Api::namespaced(self.cluster.client(), "default");
        let Ok(Some(deployment)) = deployments.get_opt(name).await else {
            return (0, 0);
        };
        let asked = deployment.spec.replicas.unwrap_or(0);
        let ready = deployment
            .status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        (asked, ready)
    }

    /// Pods of `consumer` that exist, running, starting or terminating.
    async fn pods_of(&self, consumer: &str) -> usize {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client(), "default");
        pods.list(&ListParams::default().labels(&format!("ferry.dev/queue-consumer={consumer}")))
            .await
            .map_or(usize::MAX, |list| list.items.len())
    }

    /// Waits until `consumer` has no pod at all: a pod scaled away drains first, and delivers
    /// what a long poll pending at its SIGTERM brings, so a run that must start cold waits
    /// for it to go.
    async fn no_pod_left(&self, consumer: &str) {
        eventually(Duration::from_secs(60), "no pod left", async || {
            (self.pods_of(consumer).await == 0).then_some(())
        })
        .await;
    }

    /// Every `200 message=<id>` line the example workers printed, by message id.
    fn successes(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for entry in std::fs::read_dir(self.cluster.logs_dir()).expect("pod logs") {
            let path = entry.expect("log entry").path();
            if !path.to_string_lossy().ends_with("_worker.log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("200 message=") {
                    let id = rest.split_whitespace().next().unwrap_or_default();
                    *seen.entry(id.to_string()).or_insert(0) += 1;
                }
            }
        }
        seen
    }

    /// When each message's successful delivery started at a worker (Unix seconds), from the
    /// `started_ms=` the example workers print.
    fn delivery_starts(&self) -> HashMap<String, f64> {
        let mut starts = HashMap::new();
        for entry in std::fs::read_dir(self.cluster.logs_dir()).expect("pod logs") {
            let path = entry.expect("log entry").path();
            if !path.to_string_lossy().ends_with("_worker.log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("200 message=") else {
                    continue;
                };
                let id = rest.split_whitespace().next().unwrap_or_default();
                let started_ms = rest
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("started_ms="))
                    .and_then(|ms| ms.parse::<f64>().ok())
                    .expect("the example worker prints started_ms");
                starts.insert(id.to_string(), started_ms / 1000.0);
            }
        }
        starts
    }

    /// Every container's log lines that mention one of `needles`, with the log's name, for
    /// failure messages.
    fn log_lines_mentioning<'a>(&self, needles: impl Iterator<Item = &'a str> + Clone) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.cluster.logs_dir()) else {
            return out;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let name = entry.file_name().to_string_lossy().to_string();
            for line in text.lines() {
                if needles.clone().any(|n| line.contains(n)) {
                    out.push_str(&format!("{name}: {line}\n"));
                }
            }
        }
        out
    }

    /// The last lines of every container's log, for failure messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.cluster.logs_dir()) else {
            return out;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            out.push_str(&format!("--- {}\n{tail}\n", entry.path().display()));
        }
        out
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.cluster.shutdown().await;
    }
}

fn consumer(provider: Provider, name: &str) -> QueueConsumer {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "queue": { "provider": provider.as_str(), "name": ferry_tests::unique_name("scale") },
            "deadLetter": { "maxDeliveries": 5 },
            "deletionPolicy": "Delete",
            "forceDelete": true,
            "delivery": { "concurrency": 2, "timeoutSeconds": 10 },
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 4,
                "targetLatencySeconds": 4,
                "scaleDownStabilizationSeconds": 4,
                "idleBeforeZeroSeconds": 4,
            },
            "worker": { "spec": { "containers": [{
                "name": "worker",
                "image": "example.com/worker:1",
                "env": [
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "WORKER_LISTEN", "value": "$(POD_IP):8080" },
                    { "name": "WORKER_LATENCY_MS", "value": WORKER_MS.to_string() },
                    { "name": "WORKER_VERBOSE", "value": "true" },
                ],
            }] } },
        }
    }))
    .expect("a valid QueueConsumer")
}

async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    ferry_tests::eventually(timeout, what, async || check().await).await
}

/// Creates `qc` and waits for its queue to exist.
async fn create_provisioned(
    api: &Api<QueueConsumer>,
    qc: &QueueConsumer,
) -> ferry_crds::QueueReference {
    api.create(&PostParams::default(), qc)
        .await
        .expect("create");
    let name = qc.metadata.name.clone().expect("a name");
    eventually(
        Duration::from_secs(60),
        "the queue provisioned",
        async || api.get(&name).await.ok()?.status?.queue,
    )
    .await
}

/// The value the operator gave the sidecar's `name` in the consumer's Deployment.
/// An entry of the consumer's sidecar Secret, as its sidecars read it when they start.
async fn sidecar_secret_entry(live: &Live, consumer: &str, key: &str) -> Option<String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(live.cluster.client(), "default");
    let secret = eventually(Duration::from_secs(60), "the sidecar Secret", async || {
        secrets
            .get_opt(&format!("{consumer}-ferry-sidecar"))
            .await
            .ok()?
    })
    .await;
    let value = secret.data?.remove(key)?;
    Some(String::from_utf8(value.0).expect("UTF-8"))
}

async fn sidecar_setting(live: &Live, consumer: &str, name: &str) -> Option<String> {
    let deployments: Api<Deployment> = Api::namespaced(live.cluster.client(), "default");
    let deployment = eventually(Duration::from_secs(60), "the Deployment", async || {
        deployments
            .get_opt(&format!("{consumer}-worker"))
            .await
            .ok()?
    })
    .await;
    deployment
        .spec
        .template
        .spec?
        .containers
        .into_iter()
        .find(|c| c.name == "ferry-consumer")?
        .env?
        .into_iter()
        .find(|e| e.name == name)?
        .value
}

async fn publish_burst(provider: Provider, destination: &str, count: usize) -> Vec<String> {
    let endpoint = match provider {
        Provider::Sqs => emulators::moto().url(),
        Provider::PubSub => emulators::pubsub().host_port(),
    };
    let messages = (0..count)
        .map(|i| OutgoingMessage {
            body: format!("{{\"order\":{i}}}").into_bytes(),
            attributes: vec![],
            ordering_group: None,
            deduplication_id: None,
        })
        .collect();
    publish(provider, Some(&endpoint), destination, messages)
        .await
        .expect("publish the burst")
}

/// Watches the Deployment's replica count until `done` says so, recording the highest count.
async fn watch_replicas(
    live: &Live,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl FnMut(i32, &HashMap<String, usize>) -> bool,
) -> i32 {
    let mut trajectory = Trajectory::from(Instant::now());
    watch_and_record(live, name, timeout, what, done, &mut trajectory).await
}

/// Like [`watch_replicas`], appending every poll's counts to `trajectory`.
async fn watch_and_record(
    live: &Live,
    name: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(i32, &HashMap<String, usize>) -> bool,
    trajectory: &mut Trajectory,
) -> i32 {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut highest = 0;
    let mut last = None;
    loop {
        let (replicas, ready) = live.replica_counts(name).await;
        let at = trajectory.origin.elapsed().as_secs_f64();
        trajectory.samples.push((at, replicas, ready));
        let consumer = name.trim_end_matches("-worker");
        if let Ok(qc) = live.consumers().get(consumer).await
            && let Some(last) = qc.status.and_then(|s| s.last_scaling)
            && trajectory
                .decisions
                .last()
                .is_none_or(|(_, seen)| *seen != last)
        {
            trajectory.decisions.push((at, last));
        }
        if last != Some(replicas) {
            eprintln!("{what}: {replicas} replicas at {:?}", start.elapsed());
            last = Some(replicas);
        }
        highest = highest.max(replicas);
        if done(replicas, &live.successes()) {
            return highest;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?} (replicas {replicas}, highest {highest}); operator metrics:\n{}\npod logs:\n{}",
            live.ctx.metrics.encode(),
            live.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

ferry_tests::for_both_providers!(a_burst_scales_out_drains_and_scales_back_without_duplicates,);

async fn a_burst_scales_out_drains_and_scales_back_without_duplicates(provider: Provider) {
    let live = Live::start().await;
    let api = live.consumers();
    let qc = api
        .create(&PostParams::default(), &consumer(provider, "burst"))
        .await
        .expect("create");
    let ready = eventually(Duration::from_secs(60), "QueueReady", async || {
        let qc = api.get("burst").await.ok()?;
        let status = qc.status.as_ref()?;
        status.queue.as_ref()?;
        Some(qc)
    })
    .await;
    let status = ready.status.clone().unwrap();
    let publish_to = match provider {
        Provider::Sqs => status.queue.as_ref().unwrap().id.clone(),
        Provider::PubSub => status.queue.as_ref().unwrap().topic.clone().unwrap(),
    };

    // The floor: an idle SQS consumer goes to zero. A Pub/Sub one keeps one replica, since
    // nothing could see messages arrive at zero without Cloud Monitoring, and says so.
    let floor = match provider {
        Provider::Sqs => 0,
        Provider::PubSub => 1,
    };
    watch_replicas(
        &live,
        "burst-worker",
        Duration::from_secs(60),
        "idle consumer at its floor",
        |replicas, _| replicas == floor,
    )
    .await;
    if floor == 0 {
        live.no_pod_left("burst").await;
    }
    if provider == Provider::PubSub {
        let qc = eventually(
            Duration::from_secs(30),
            "a running pod scraped",
            async || {
                let qc = api.get("burst").await.ok()?;
                let active = qc
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "ScalingActive")?
                    .clone();
                (active.reason == "KeepingOneReplica").then_some(active)
            },
        )
        .await;
        assert!(qc.message.contains("Cloud Monitoring"), "{}", qc.message);
    }

    // A burst: 10 × what one replica (2 slots × 5 msg/s) does per second.
    let count = 400;
    let started = Instant::now();
    let started_unix = scaling::unix_seconds(std::time::SystemTime::now());
    let mut trajectory = Trajectory::from(started);
    let ids = publish_burst(provider, &publish_to, count).await;
    assert_eq!(ids.len(), count);
    let published_after = started.elapsed();
    eprintln!("published {count} in {published_after:?}");
    let highest = watch_and_record(
        &live,
        "burst-worker",
        Duration::from_secs(90),
        "scaled out",
        |replicas, _| replicas >= 3,
        &mut trajectory,
    )
    .await;
    let scaled_out_after = started.elapsed();
    // From publishing to three replicas asked for: for SQS at zero, the operator's own read
    // of the queue at its next poll (1 s); for Pub/Sub, the running sidecar's next scrape at
    // the next poll. About a second for both here; the bound leaves room for a loaded
    // machine, and the SQS run is held to the moment the simulator predicts below.
    assert!(
        scaled_out_after < Duration::from_secs(20),
        "scale-out took {scaled_out_after:?} (publishing {count} took {published_after:?})"
    );
    // The scale subresource is written first, the status right after it.
    let last = eventually(
        Duration::from_secs(10),
        "status.lastScaling records the scale-out",
        async || {
            let qc = api.get("burst").await.ok()?;
            qc.status?.last_scaling.filter(|l| l.to > l.from)
        },
    )
    .await;
    assert!(last.to > last.from, "{last:?}");
    assert!(last.signals.is_some(), "{last:?}");

    // The backlog drains, then the consumer goes back to its floor: each message reached a
    // worker exactly once, scale-down included.
    let highest = highest.max(
        watch_and_record(
            &live,
            "burst-worker",
            Duration::from_secs(120),
            "drained and back at the floor",
            |replicas, seen| seen.len() == count && replicas == floor,
            &mut trajectory,
        )
        .await,
    );
    let seen = live.successes();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never processed: {missing:?}");
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered twice: {twice:?}; what the pods logged about them:\n{}",
        live.log_lines_mentioning(twice.iter().map(|(id, _)| id.as_str()))
    );
    // The status records the decision right after the scale subresource is written.
    let last = eventually(
        Duration::from_secs(10),
        "status.lastScaling records the scale-down",
        async || {
            let qc = api.get("burst").await.ok()?;
            qc.status?
                .last_scaling
                .filter(|l| l.to < l.from && l.to == floor)
        },
    )
    .await;
    assert!(last.signals.is_some(), "{last:?}");
    // The removed pods drained on their SIGTERM while their workers' preStop hooks waited on
    // /drained; nothing asked /drain without the token.
    let drains = live.log_lines_mentioning(
        ["draining: no new messages", "refused a request to drain"].into_iter(),
    );
    assert!(drains.contains("draining: no new messages"), "{drains}");
    assert!(!drains.contains("refused"), "{drains}");

    // SQS's counts are what the simulator models (the emulator has no Pub/Sub backlog to
    // read, so there the loop scales from its busy slots alone).
    if provider == Provider::Sqs {
        let starts = live.delivery_starts();
        let waits = ids.iter().map(|id| starts[id] - started_unix).collect();
        let predictions = Predictions::of(&qc, &[count as u32], &trajectory);
        let floor = qc.spec.scaling.min_replicas;
        let live_run = RunSummary::live(&trajectory, floor, waits);
        let predicted = predictions.summaries(floor);
        let mut compared = figures(&live_run, &predicted);
        // The burst asks for every replica allowed at once, live and in the model.
        compared.push(Compared {
            what: "peak replicas",
            live: f64::from(live_run.peak_replicas),
            predicted: predicted
                .iter()
                .map(|r| f64::from(r.peak_replicas))
                .collect(),
            seconds: 0.0,
            share: 0.0,
        });
        compared.push(Compared {
            what: "peak asked for at (s)",
            live: live_run.peak_at_s,
            predicted: predicted.iter().map(|r| r.peak_at_s).collect(),
            seconds: 1.0 + POLL.as_secs_f64(),
            share: 0.0,
        });
        assert_as_predicted(
            &format!(
                "a burst of {count}, live and in ferry-scalesim (pod start-up {:.1} s, measured live):",
                predictions.startup_seconds
            ),
            &compared,
            &format!(
                "  live decisions:\n{}  simulated decisions (seed 1):\n{}",
                trajectory.decision_log(),
                simulated_decision_log(&predictions.runs[1])
            ),
        );
    }

    // From zero and back: messages arriving at an SQS consumer at zero start it again.
    if provider == Provider::Sqs {
        let more = publish_burst(provider, &publish_to, 20).await;
        watch_replicas(
            &live,
            "burst-worker",
            Duration::from_secs(60),
            "woken from zero and drained",
            |_, seen| more.iter().all(|id| seen.contains_key(id)),
        )
        .await;
        let woke = api.get("burst").await.expect("get");
        let scaled = woke.status.unwrap();
        assert!(
            scaled.last_scaling.is_some(),
            "the activation is recorded in status"
        );
    }

    let metrics = live.ctx.metrics.encode();
    assert!(
        metrics.contains(r#"ferry_scaling_decisions_total{direction="up",namespace="default",queueconsumer="burst"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ferry_scaling_decisions_total{direction="down",namespace="default",queueconsumer="burst"}"#),
        "{metrics}"
    );
    eprintln!(
        "{provider:?}: scaled out to {highest} replicas {scaled_out_after:?} after the burst was published"
    );
    api.delete("burst", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

/// Publishes `per_second[i]` messages in second `i` after `origin`, in four batches a second
/// (the simulator spreads each second's arrivals over it), and returns every message's id
/// with when its batch was sent (Unix seconds).
async fn publish_at_rates(
    provider: Provider,
    destination: String,
    per_second: Vec<u32>,
    origin: Instant,
) -> Vec<(String, f64)> {
    const BATCHES: u32 = 4;
    let mut sent = Vec::new();
    for (second, count) in per_second.into_iter().enumerate() {
        for batch in 0..BATCHES {
            let size = count * (batch + 1) / BATCHES - count * batch / BATCHES;
            let offset =
                Duration::from_secs(second as u64) + Duration::from_secs(1) * batch / BATCHES;
            tokio::time::sleep_until((origin + offset).into()).await;
            if size == 0 {
                continue;
            }
            let at = scaling::unix_seconds(std::time::SystemTime::now());
            let ids = publish_burst(provider, &destination, size as usize).await;
            sent.extend(ids.into_iter().map(|id| (id, at)));
        }
    }
    sent
}

/// A steady stream, then several times the rate: the loop asks for the replicas the
/// simulator's model of the same stream asks for (sized from the arrival rate and the measured
/// service time against the latency target, not from the queue's length), at the moments
/// it does, and messages wait as long as predicted.
#[tokio::test]
async fn a_stream_and_its_step_get_the_replicas_the_simulator_predicts() {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(Provider::Sqs, "stream");
    qc.spec.scaling.max_replicas = 8;
    let queue = create_provisioned(&api, &qc).await;
    watch_replicas(
        &live,
        "stream-worker",
        Duration::from_secs(60),
        "an idle consumer at zero",
        |replicas, _| replicas == 0,
    )
    .await;
    live.no_pod_left("stream").await;

    // One replica serves 2 slots / 0.2 s = 10 msg/s at full load: under a third of one
    // replica, then more than one can serve and well within two. (Rates near a whole count
    // of replicas' capacity leave the loop and the model switching between two counts at
    // moments a second apart, which says nothing of either.)
    const PHASE_SECONDS: usize = 40;
    let (low, high) = (3, 12);
    let rates: Vec<u32> = std::iter::repeat_n(low, PHASE_SECONDS)
        .chain(std::iter::repeat_n(high, PHASE_SECONDS))
        .collect();
    let total: u32 = rates.iter().sum();
    let origin = Instant::now();
    let origin_unix = scaling::unix_seconds(std::time::SystemTime::now());
    let mut trajectory = Trajectory::from(origin);
    let publisher = tokio::spawn(publish_at_rates(
        Provider::Sqs,
        queue.id.clone(),
        rates.clone(),
        origin,
    ));
    watch_and_record(
        &live,
        "stream-worker",
        Duration::from_secs(240),
        "the stream served and the consumer back at zero",
        |replicas, seen| seen.len() == total as usize && replicas == 0,
        &mut trajectory,
    )
    .await;
    let sent = publisher.await.expect("the publisher");
    assert_eq!(sent.len(), total as usize);
    let seen = live.successes();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let starts = live.delivery_starts();
    let waits = sent.iter().map(|(id, at)| starts[id] - at).collect();

    // The model gets the arrivals as they were sent, should publishing have fallen behind.
    let mut arrivals = vec![0u32; rates.len() + 5];
    for (_, at) in &sent {
        let second = ((at - origin_unix).max(0.0) as usize).min(arrivals.len() - 1);
        arrivals[second] += 1;
    }
    let predictions = Predictions::of(&qc, &arrivals, &trajectory);
    let live_run = RunSummary::live(&trajectory, 0, waits);
    let mut compared = figures(&live_run, &predictions.summaries(0));
    // Each rate once the replicas for it have had time to come: what the arrival rate and
    // the service time ask for. Within half a replica of what the model runs.
    let settle = 15.0;
    let phase = PHASE_SECONDS as f64;
    for (what, from, to) in [
        ("mean replicas at the first rate", settle, phase),
        (
            "mean replicas at the second rate",
            phase + settle,
            2.0 * phase,
        ),
    ] {
        compared.push(Compared {
            what,
            live: trajectory.mean_replicas(from, to),
            predicted: predictions
                .runs
                .iter()
                .map(|run| simulated_mean_replicas(run, from, to))
                .collect(),
            seconds: 0.5,
            share: 0.0,
        });
    }
    assert_as_predicted(
        &format!(
            "{low} then {high} msg/s for {PHASE_SECONDS} s each (published over {:.1} s), live and in ferry-scalesim (pod start-up {:.1} s, measured live):",
            sent.last().map_or(0.0, |(_, at)| at - origin_unix),
            predictions.startup_seconds
        ),
        &compared,
        &format!(
            "  live decisions:\n{}  simulated decisions (seed 1):\n{}",
            trajectory.decision_log(),
            simulated_decision_log(&predictions.runs[1])
        ),
    );
    api.delete("stream", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

ferry_tests::for_both_providers!(a_suspended_consumer_holds_at_zero_keeps_its_messages_and_resumes,);

/// `spec.suspend`, as during an outage of what the worker calls: the running worker goes to
/// zero at the next poll and stays there while messages arrive, which wait in the queue
/// untouched; resuming brings the worker back and each message reaches it once.
async fn a_suspended_consumer_holds_at_zero_keeps_its_messages_and_resumes(provider: Provider) {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(provider, "paused");
    qc.spec.scaling.min_replicas = 1;
    let ready = create_provisioned(&api, &qc).await;
    let publish_to = match provider {
        Provider::Sqs => ready.id.clone(),
        Provider::PubSub => ready.topic.clone().unwrap(),
    };
    let set_suspend = async |suspend: bool| {
        api.patch(
            "paused",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"suspend": suspend}})),
        )
        .await
        .expect("patch spec.suspend");
    };

    // Running: messages are processed.
    let before = publish_burst(provider, &publish_to, 10).await;
    watch_replicas(
        &live,
        "paused-worker",
        Duration::from_secs(90),
        "running and processing",
        |_, seen| before.iter().all(|id| seen.contains_key(id)),
    )
    .await;

    set_suspend(true).await;
    watch_replicas(
        &live,
        "paused-worker",
        Duration::from_secs(30),
        "suspended: at zero",
        |replicas, _| replicas == 0,
    )
    .await;
    let status = eventually(
        Duration::from_secs(10),
        "the suspension in status",
        async || {
            let status = api.get("paused").await.ok()?.status?;
            let active = status
                .conditions
                .iter()
                .find(|c| c.type_ == "ScalingActive")?;
            (active.reason == "Suspended").then_some(status)
        },
    )
    .await;
    let last = status.last_scaling.clone().expect("lastScaling");
    assert_eq!(
        (last.to, last.reason.as_str()),
        (0, "Suspended"),
        "{last:?}"
    );
    // A pod being removed still delivers what its last receive brought; once none is left,
    // nothing consumes.
    let pods: Api<Pod> = Api::namespaced(live.cluster.client(), "default");
    eventually(
        Duration::from_secs(60),
        "the suspended consumer's pods gone",
        async || {
            let listed = pods
                .list(&ListParams::default().labels("ferry.dev/queue-consumer=paused"))
                .await
                .ok()?;
            listed.items.is_empty().then_some(())
        },
    )
    .await;

    // Messages arrive while suspended: nothing starts, nothing is processed.
    let during = publish_burst(provider, &publish_to, 20).await;
    let hold_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < hold_until {
        assert_eq!(
            live.replicas("paused-worker").await,
            Some(0),
            "a suspended consumer stays at zero with messages waiting"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seen = live.successes();
    assert!(
        during.iter().all(|id| !seen.contains_key(id)),
        "nothing is consumed while suspended"
    );
    if provider == Provider::Sqs {
        // The operator still reads the queue at zero, so the backlog shows what waits.
        eventually(
            Duration::from_secs(15),
            "the waiting messages in status.backlog",
            async || {
                let backlog = api.get("paused").await.ok()?.status?.backlog?;
                (backlog.visible? >= 20).then_some(())
            },
        )
        .await;
    }

    set_suspend(false).await;
    watch_replicas(
        &live,
        "paused-worker",
        Duration::from_secs(150),
        "resumed and drained",
        |_, seen| during.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let seen = live.successes();
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered twice: {twice:?}; what the pods logged about them:\n{}",
        live.log_lines_mentioning(twice.iter().map(|(id, _)| id.as_str()))
    );
    let status = api.get("paused").await.expect("get").status.unwrap();
    let active = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ScalingActive")
        .unwrap();
    assert_ne!(active.reason, "Suspended", "{active:?}");
    api.delete("paused", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

/// `ferry_rate_limit_per_second` of every running pod of `consumer` whose sidecar answers
/// (`None` for one that reports no limit), by pod name.
async fn rate_limits(live: &Live, consumer: &str) -> HashMap<String, Option<f64>> {
    let pods: Api<Pod> = Api::namespaced(live.cluster.client(), "default");
    let listed = pods
        .list(&ListParams::default().labels(&format!("ferry.dev/queue-consumer={consumer}")))
        .await
        .expect("list pods");
    let mut limits = HashMap::new();
    for pod in listed.items {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Ok(answer) = reqwest::get(format!("http://{ip}:9090/metrics")).await else {
            continue;
        };
        let Ok(page) = answer.text().await else {
            continue;
        };
        let limit = page
            .lines()
            .find(|l| l.starts_with("ferry_rate_limit_per_second"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok());
        limits.insert(pod.metadata.name.unwrap_or_default(), limit);
    }
    limits
}

/// `spec.delivery.maxPerSecond` on the real loop: a pod starts at its share at maxReplicas,
/// the autoscaler gives each running pod its share of the count there is, a backlog drains
/// at the limit and no faster, and replicas that could not deliver faster are not added.
/// (Provider-independent: the sidecar suite checks the pacing itself on both.)
#[tokio::test]
async fn a_delivery_rate_limit_is_shared_among_the_pods_and_caps_scaling() {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(Provider::Sqs, "paced");
    qc.spec.scaling.min_replicas = 1;
    qc.spec.delivery.max_per_second = Some(4.0);
    let queue = create_provisioned(&api, &qc).await;
    assert_eq!(
        sidecar_secret_entry(&live, "paced", "rate-limit")
            .await
            .as_deref(),
        Some("1"),
        "4/s shared by maxReplicas 4"
    );
    assert_eq!(
        sidecar_setting(&live, "paced", "FERRY_RATE_LIMIT").await,
        None,
        "read from the Secret, not written in the pod template"
    );
    let one_pod = eventually(
        Duration::from_secs(60),
        "the running pod told its share, the whole limit",
        async || {
            let limits = rate_limits(&live, "paced").await;
            (limits.len() == 1 && limits.values().all(|l| *l == Some(4.0))).then_some(limits)
        },
    )
    .await;
    eprintln!("shares: {one_pod:?}");

    // A few messages first, so the service time is measured before the backlog comes (the
    // limit bounds replicas from it; before it, queue length sizes a cold start).
    let warm_up = publish_burst(Provider::Sqs, &queue.id, 4).await;
    watch_replicas(
        &live,
        "paced-worker",
        Duration::from_secs(60),
        "warm-up",
        |_, seen| warm_up.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    tokio::time::sleep(3 * POLL).await;

    // 40 messages at 4/s: at least 9.75 s from the first delivery to the last, however many
    // replicas share the limit; without it this backlog (200 ms jobs, a 4 s target, 2 slots
    // a pod) scales to maxReplicas and drains in about 2 s.
    let started = Instant::now();
    let burst = publish_burst(Provider::Sqs, &queue.id, 40).await;
    let highest = watch_replicas(
        &live,
        "paced-worker",
        Duration::from_secs(60),
        "draining at the limit",
        |_, seen| burst.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "40 messages at 4/s took {took:?}"
    );
    // 4/s of 200 ms jobs keep about one slot busy: one replica of 2 slots. On a loaded
    // machine the measured time per message grows and the cap with it (a second replica
    // at 0.5 s); without the limit the same backlog takes maxReplicas, 4.
    assert!(
        highest <= 2,
        "replicas beyond what 4/s keeps busy are not added: {highest}"
    );
    let seen = live.successes();
    assert!(burst.iter().all(|id| seen[id] == 1), "each message once");

    // Two pods (minReplicas 2) share the limit: 2/s each.
    api.patch(
        "paced",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"scaling": {"minReplicas": 2}}})),
    )
    .await
    .expect("patch minReplicas");
    let two_pods = eventually(
        Duration::from_secs(60),
        "two pods at half the limit each",
        async || {
            let limits = rate_limits(&live, "paced").await;
            (limits.len() == 2 && limits.values().all(|l| *l == Some(2.0))).then_some(limits)
        },
    )
    .await;
    eprintln!("shares: {two_pods:?}");

    // A new limit, then none: the running pods are told, and none is replaced for it.
    let set_limit = async |limit: serde_json::Value| {
        api.patch(
            "paced",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"delivery": {"maxPerSecond": limit}}}),
            ),
        )
        .await
        .expect("patch maxPerSecond");
    };
    set_limit(serde_json::json!(6)).await;
    let raised = eventually(
        Duration::from_secs(60),
        "the same two pods at 3/s each",
        async || {
            let limits = rate_limits(&live, "paced").await;
            (limits.len() == 2 && limits.values().all(|l| *l == Some(3.0))).then_some(limits)
        },
    )
    .await;
    let names = |limits: &HashMap<String, Option<f64>>| {
        let mut names: Vec<String> = limits.keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&raised),
        names(&two_pods),
        "no pod rolled for a new limit"
    );
    // New pods would start at 6/s over maxReplicas 4.
    eventually(
        Duration::from_secs(30),
        "the Secret's starting share at 1.5/s",
        async || {
            let share = sidecar_secret_entry(&live, "paced", "rate-limit").await;
            (share.as_deref() == Some("1.5")).then_some(())
        },
    )
    .await;
    set_limit(serde_json::Value::Null).await;
    let removed = eventually(
        Duration::from_secs(60),
        "the same two pods unlimited",
        async || {
            let limits = rate_limits(&live, "paced").await;
            (limits.len() == 2 && limits.values().all(Option::is_none)).then_some(limits)
        },
    )
    .await;
    assert_eq!(
        names(&removed),
        names(&two_pods),
        "no pod rolled for a limit removed"
    );

    // Someone deletes the sidecar Secret, then a pod goes: its replacement cannot start its
    // sidecar (CreateContainerConfigError) until the autoscaler, seeing that, puts the Secret
    // back, well before the reconciler's next drift check.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(live.cluster.client(), "default");
    secrets
        .delete("paced-ferry-sidecar", &Default::default())
        .await
        .expect("delete the Secret");
    let pods: Api<Pod> = Api::namespaced(live.cluster.client(), "default");
    let gone = names(&removed)[0].clone();
    pods.delete(&gone, &Default::default())
        .await
        .expect("delete a pod");
    let replaced = eventually(
        Duration::from_secs(60),
        "a new pod's sidecar running, with the Secret put back",
        async || {
            let limits = rate_limits(&live, "paced").await;
            (limits.len() == 2 && !limits.contains_key(&gone)).then_some(limits)
        },
    )
    .await;
    eprintln!("after the Secret was put back: {replaced:?}");
    assert!(
        sidecar_secret_entry(&live, "paced", "control-token")
            .await
            .is_some(),
        "the Secret is back"
    );
    api.delete("paced", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

/// A QueueConsumer created suspended (to check an adopted queue's setup before consuming,
/// say) never starts a pod: its Deployment is created at zero, messages wait, and resuming
/// starts the worker, which processes each of them once.
#[tokio::test]
async fn a_consumer_created_suspended_starts_no_pod_until_resumed() {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(Provider::Sqs, "held");
    qc.spec.suspend = true;
    api.create(&PostParams::default(), &qc)
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(live.cluster.client(), "default");
    let no_pod_yet = async || {
        let listed = pods
            .list(&ListParams::default().labels("ferry.dev/queue-consumer=held"))
            .await
            .expect("list pods");
        assert!(
            listed.items.is_empty(),
            "a suspended consumer started a pod: {:?}",
            listed
                .items
                .iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        );
    };
    let queue = eventually(
        Duration::from_secs(60),
        "the queue provisioned",
        async || {
            no_pod_yet().await;
            api.get("held").await.ok()?.status?.queue
        },
    )
    .await;
    let waiting = publish_burst(Provider::Sqs, &queue.id, 10).await;
    let hold_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < hold_until {
        no_pod_yet().await;
        assert_eq!(live.replicas("held-worker").await, Some(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(live.successes().is_empty(), "nothing consumed");

    api.patch(
        "held",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    watch_replicas(
        &live,
        "held-worker",
        Duration::from_secs(90),
        "resumed and drained",
        |_, seen| waiting.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let seen = live.successes();
    assert!(waiting.iter().all(|id| seen[id] == 1), "each message once");
    api.delete("held", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

/// Gives the example worker of `qc` the setting `name` (when it is unavailable) and a
/// readiness probe at `/ready` on the delivery port, which the operator hands to the sidecar.
fn probe_the_worker_s_readiness(qc: &mut QueueConsumer, name: &str, value: &str) {
    let pod = qc.spec.worker.spec.as_mut().expect("a pod spec");
    let worker = &mut pod.containers[0];
    worker.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    });
    worker.readiness_probe = Some(
        serde_json::from_value(serde_json::json!({
            "httpGet": { "path": "/ready", "port": 8080 },
            "periodSeconds": 1
        }))
        .expect("a probe"),
    );
}

/// A worker whose readiness probe asks the delivery port: the operator hands its path to the
/// sidecar, which receives nothing until the worker answers it, so a worker that listens
/// seconds before it can work (here: 503 to everything for its first 6 s) spends no message's
/// delivery on its start.
#[tokio::test]
async fn the_worker_s_readiness_probe_holds_deliveries_until_it_is_ready() {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(Provider::Sqs, "warming");
    qc.spec.scaling.min_replicas = 1;
    probe_the_worker_s_readiness(&mut qc, "WORKER_READY_AFTER_MS", "6000");
    let queue = create_provisioned(&api, &qc).await;
    assert_eq!(
        sidecar_setting(&live, "warming", "FERRY_WORKER_READINESS_PATH")
            .await
            .as_deref(),
        Some("/ready"),
        "taken from the probe"
    );

    let ids = publish_burst(Provider::Sqs, &queue.id, 6).await;
    watch_replicas(
        &live,
        "warming-worker",
        Duration::from_secs(90),
        "processed once the worker is ready",
        |_, seen| ids.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let refused = live.log_lines_mentioning(ids.iter().map(String::as_str));
    let not_ready: Vec<&str> = refused
        .lines()
        .filter(|l| l.contains("503 message=") && l.contains("not_ready"))
        .collect();
    assert!(
        not_ready.is_empty(),
        "messages delivered before the worker was ready: {not_ready:?}"
    );
    let seen = live.successes();
    assert!(ids.iter().all(|id| seen[id] == 1), "each message once");
    assert!(
        live.log_lines_mentioning(std::iter::once("path=/ready not_ready"))
            .contains("503"),
        "the worker was asked while it was not ready"
    );
    api.delete("warming", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

/// A worker whose dependency goes away in every pod (the example worker answers 503 to
/// everything, its readiness probe's path included, while a file exists): the sidecars hold
/// receiving after the first failures, so messages wait in the queue instead of spending their
/// deliveries, and the autoscaler holds the replica count instead of adding pods that would
/// only wait too; once the worker is ready again, every message is processed once.
#[tokio::test]
async fn a_worker_down_in_every_pod_holds_the_replica_count_and_the_messages() {
    let live = Live::start().await;
    let api = live.consumers();
    let mut qc = consumer(Provider::Sqs, "outage");
    qc.spec.scaling.min_replicas = 1;
    let down_file = std::env::temp_dir().join(ferry_tests::unique_name("worker-down"));
    probe_the_worker_s_readiness(
        &mut qc,
        "WORKER_DOWN_WHILE_FILE",
        &down_file.display().to_string(),
    );
    let queue = create_provisioned(&api, &qc).await;
    // Two messages: one pod takes them at once, so the autoscaler has nothing to react to
    // (a bigger burst could be answered by a scale-up after the check below, in the outage).
    let before = publish_burst(Provider::Sqs, &queue.id, 2).await;
    watch_replicas(
        &live,
        "outage-worker",
        Duration::from_secs(90),
        "the first messages while the worker is up",
        |_, seen| before.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    // And one replica for 4 s on end, so the count the outage starts from is settled.
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut steady_since = Instant::now();
    while steady_since.elapsed() < Duration::from_secs(4) {
        let replicas = live.replicas("outage-worker").await;
        if replicas != Some(1) {
            assert!(
                Instant::now() < give_up,
                "not settled at one replica: {replicas:?}"
            );
            steady_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    std::fs::write(&down_file, "").expect("take the worker's dependency away");
    // Messages keep arriving during the outage, 4 a second for 15 s: a queue growing with
    // nothing completing, which without the sidecars' word reads as a consumer falling behind.
    let mut during = Vec::new();
    let started = Instant::now();
    let mut highest = 1;
    // The arrivals, and as long again for the autoscaler to answer them.
    while started.elapsed() < Duration::from_secs(30) {
        if started.elapsed() < Duration::from_secs(15) {
            during.extend(publish_burst(Provider::Sqs, &queue.id, 4).await);
        }
        highest = highest.max(live.replicas("outage-worker").await.unwrap_or(0));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        highest,
        1,
        "no pod added while the worker was down in every pod; operator metrics:\n{}",
        live.ctx.metrics.encode()
    );
    let status = eventually(
        Duration::from_secs(30),
        "ScalingActive to say the worker is unavailable",
        async || {
            let status = api.get("outage").await.ok()?.status?;
            let active = status
                .conditions
                .iter()
                .find(|c| c.type_ == "ScalingActive")?;
            (active.reason == "WorkerUnavailable").then_some(active.message.clone())
        },
    )
    .await;
    assert!(status.contains("holding the replica count"), "{status}");
    let spent = live
        .log_lines_mentioning(during.iter().map(String::as_str))
        .lines()
        .filter(|l| l.contains("503 message=") && l.contains(" down"))
        .count();
    // Concurrency 2: what the sidecar held, and had asked for, when the first 503s came back.
    assert!(
        spent <= 4,
        "{spent} deliveries spent on the outage:\n{}",
        live.log_lines_mentioning(std::iter::once(" down"))
    );

    std::fs::remove_file(&down_file).expect("bring the dependency back");
    watch_replicas(
        &live,
        "outage-worker",
        Duration::from_secs(90),
        "every message once the worker is ready again",
        |_, seen| during.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let seen = live.successes();
    assert!(
        before.iter().chain(&during).all(|id| seen[id] == 1),
        "each message once"
    );
    api.delete("outage", &Default::default())
        .await
        .expect("delete");
    live.stop().await;
}

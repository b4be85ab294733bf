//! The whole system on one machine: devcluster with its process kubelet, a queue emulator,
//! the CRD, the `ferry-operator` process, and the example QueueConsumer from `examples/sandbox/`
//! running the example worker with the `ferry-consumer` sidecar. [`Sandbox::run`] publishes
//! load in phases and watches it through; `ferry-sandbox` shows it live, the e2e suite
//! asserts on the [`Summary`].

pub mod ledger;
pub mod proxy;
mod view;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use ferry_crds::QueueConsumer;
use ferry_crds::status::RedrivePhase;
use ferry_devcluster::DevCluster;
use ferry_queues::Provider;
use ferry_queues::provision::{OutgoingMessage, publish};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

pub use ledger::{
    Ledger, Published, RedriveSummary, Summary, TaskDelivery, parse_delivery, parse_task_delivery,
    summarize,
};
pub use view::{Snapshot, View};

use crate::{emulators, free_port, repo_root, workspace_binary};

pub const CONSUMER_NAME: &str = "orders";
const DEPLOYMENT_NAME: &str = "orders-worker";
const NAMESPACE: &str = "default";
/// `spec.deadLetter.maxDeliveries` of the example QueueConsumers.
const MAX_DELIVERIES: usize = 5;

/// The load and the knobs of one run.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub provider: Provider,
    /// Messages published at once at the start.
    pub burst: usize,
    /// Then this many messages per second...
    pub steady_rate: f64,
    /// ...for this many seconds.
    pub steady_seconds: u64,
    /// Every n-th message is poison (the worker rejects it with 422); 0 for none.
    pub poison_every: u64,
    /// The operator's `FERRY_SCALING_POLL_INTERVAL`.
    pub poll_interval_seconds: f64,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// Logs and the kubeconfig go here.
    pub work_dir: PathBuf,
    /// Where the operator and the sidecars reach the queue API, when not directly (a fault
    /// proxy in front of the emulator). The publisher always goes directly.
    pub queue_endpoint_override: Option<String>,
    /// The queue's name instead of the example's `sandbox-orders`, so runs sharing one
    /// emulator do not share a queue.
    pub queue_name: Option<String>,
    /// After the load, fix the worker (it accepts the poison from then on), redrive the
    /// dead-letter queue with the `ferry.dev/redrive` annotation, and wait until the fixed
    /// worker has processed every dead-lettered message: the whole loop a team goes through.
    pub redrive: bool,
    /// Settle only once a worker has processed a tick of the example's periodic task (a
    /// message a minute; see [`Sandbox::settled`]); a run shorter than a minute waits for
    /// the first.
    pub periodic_tick: bool,
}

impl SandboxConfig {
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            burst: 600,
            steady_rate: 20.0,
            steady_seconds: 30,
            poison_every: 50,
            poll_interval_seconds: 2.0,
            timeout: Duration::from_secs(600),
            work_dir: repo_root().join("target/sandbox"),
            queue_endpoint_override: None,
            queue_name: None,
            redrive: true,
            periodic_tick: true,
        }
    }

    /// The scaling floor an idle consumer goes to: zero, except Pub/Sub without Cloud
    /// Monitoring keeps one replica (docs/autoscaling.md).
    pub fn floor(&self) -> i32 {
        match self.provider {
            Provider::Sqs => 0,
            Provider::PubSub => 1,
        }
    }

    fn example(&self) -> PathBuf {
        repo_root().join(format!(
            "examples/sandbox/queueconsumer-{}.yaml",
            self.provider.as_str()
        ))
    }

    /// The emulator's address as publishers and the operator use it.
    pub fn direct_endpoint(&self) -> String {
        match self.provider {
            Provider::Sqs => emulators::moto().url(),
            Provider::PubSub => emulators::pubsub().host_port(),
        }
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Child {
    process: tokio::process::Child,
    name: &'static str,
}

impl Child {
    fn kill_now(&mut self) {
        let _ = self.process.start_kill();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pid) = self.process.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.process.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        }
        let _ = self.process.start_kill();
    }
}

/// A running sandbox. Dropping it stops everything it started.
pub struct Sandbox {
    pub config: SandboxConfig,
    operator: Option<Child>,
    operator_addr: String,
    published: Vec<Published>,
    replica_seconds: f64,
    max_replicas: i32,
    started: Instant,
    last_sample: Option<Instant>,
    /// Every dead letter read so far (by sequence number). A read hands every message back,
    /// but one read may miss some (the emulators' pulls can come back empty early), so what
    /// each read saw is kept.
    dead_seen: BTreeSet<u64>,
    last_dead_letter_read: Option<Instant>,
    /// What the redrive phase did, once it has run.
    redrive: Option<RedriveSummary>,
    // Last: the cluster's pods stop after the operator.
    cluster: DevCluster,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sandbox {
    /// Starts the emulator, devcluster, the CRD, the operator, and applies the example
    /// QueueConsumer; returns once it is Ready.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Self> {
        let binaries = [
            workspace_binary("ferry-operator"),
            workspace_binary("ferry-consumer"),
            workspace_binary("ferry-example-worker"),
        ];
        // A previous run's pods and logs would be counted as this run's.
        let _ = std::fs::remove_dir_all(&config.work_dir);
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("create {}", config.work_dir.display()))?;
        // Starts the emulator now, so its start-up is not counted in the run.
        config.direct_endpoint();
        let cluster = DevCluster::builder()
            .kubelet(true)
            .work_dir(config.work_dir.join("cluster"))
            .kubeconfig(config.work_dir.join("kubeconfig"))
            .image(
                "ghcr.io/ferry-dev/consumer:*",
                [binaries[1].display().to_string()],
            )
            .image(
                "ghcr.io/ferry-dev/example-worker:*",
                [binaries[2].display().to_string()],
            )
            .start()
            .await
            .context("start devcluster")?;
        let client = cluster.client();
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &ferry_crds::crd::crd())
            .await
            .context("install the QueueConsumer CRD")?;
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ferry-system"}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .context("create ferry-system")?;
        // Every worker pod the operator makes must pass the strictest Pod Security level,
        // as devcluster's PodSecurity admission checks it when the ReplicaSet creates them.
        crate::cluster::enforce_restricted_pods(&client, NAMESPACE).await?;
        let mut sandbox = Self {
            operator_addr: format!("127.0.0.1:{}", free_port()),
            config,
            operator: None,
            published: Vec::new(),
            replica_seconds: 0.0,
            max_replicas: 0,
            started: Instant::now(),
            last_sample: None,
            dead_seen: BTreeSet::new(),
            last_dead_letter_read: None,
            redrive: None,
            cluster,
        };
        sandbox.start_operator()?;
        sandbox.apply_example().await?;
        Ok(sandbox)
    }

    pub fn kubeconfig(&self) -> &Path {
        self.cluster.kubeconfig()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.cluster.logs_dir()
    }

    pub fn operator_log(&self) -> PathBuf {
        self.config.work_dir.join("operator.log")
    }

    /// Starts `ferry-operator` as its own process, pointed at devcluster and the emulator.
    pub fn start_operator(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.operator_log())?;
        let endpoint = self
            .config
            .queue_endpoint_override
            .clone()
            .unwrap_or_else(|| self.config.direct_endpoint());
        let mut command = tokio::process::Command::new(workspace_binary("ferry-operator"));
        command
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("FERRY_SIDECAR_IMAGE", "ghcr.io/ferry-dev/consumer:sandbox")
            .env("FERRY_PODS_SHARE_NETWORK", "true")
            .env(
                "FERRY_SCALING_POLL_INTERVAL",
                self.config.poll_interval_seconds.to_string(),
            )
            .env("FERRY_LISTEN_ADDR", &self.operator_addr)
            .env("FERRY_CLUSTER_NAME", "sandbox")
            .env("FERRY_PUBSUB_PROJECT", emulators::PUBSUB_PROJECT)
            .env("POD_NAMESPACE", "ferry-system")
            // As the chart runs it: the control tokens' key in a Secret the operator makes.
            .env("FERRY_CONTROL_KEY_SECRET", "ferry-operator-control-key")
            .env("POD_NAME", "ferry-operator-0")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match self.config.provider {
            Provider::Sqs => command.env("FERRY_SQS_ENDPOINT", endpoint),
            Provider::PubSub => command.env("PUBSUB_EMULATOR_HOST", endpoint),
        };
        let process = command.spawn().context("start ferry-operator")?;
        self.operator = Some(Child {
            process,
            name: "ferry-operator",
        });
        Ok(())
    }

    /// SIGKILLs the operator where it stands, as a crashed pod.
    pub async fn kill_operator(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            operator.kill_now();
            let _ = operator.process.wait().await;
        }
    }

    async fn apply_example(&self) -> anyhow::Result<()> {
        let mut path = self.config.example();
        if let Some(name) = &self.config.queue_name {
            let text = std::fs::read_to_string(&path)?;
            let renamed = text.replace("name: sandbox-orders", &format!("name: {name}"));
            path = self.config.work_dir.join("queueconsumer.yaml");
            std::fs::write(&path, renamed)?;
        }
        let path = path.to_string_lossy();
        let out = self
            .cluster
            .kubectl_output(&["apply", "-f", &path])
            .await
            .context("run kubectl (it must be installed)")?;
        if !out.status.success() {
            bail!(
                "kubectl apply -f {path} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn consumers(&self) -> Api<QueueConsumer> {
        Api::namespaced(self.cluster.client(), NAMESPACE)
    }

    pub async fn consumer(&self) -> anyhow::Result<QueueConsumer> {
        Ok(self.consumers().get(CONSUMER_NAME).await?)
    }

    /// Waits for `Ready=True` (the queue exists and the workload is in place).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<QueueConsumer> {
        let deadline = Instant::now() + timeout;
        loop {
            let qc = self.consumers().get_opt(CONSUMER_NAME).await?;
            if let Some(qc) = qc {
                let ready = qc.status.as_ref().and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == ferry_crds::condition_type::READY)
                        .cloned()
                });
                match ready {
                    Some(c) if c.status == "True" => return Ok(qc),
                    Some(c) if Instant::now() >= deadline => {
                        bail!(
                            "QueueConsumer {CONSUMER_NAME} not Ready after {timeout:?}: {}: {} (operator log: {})",
                            c.reason,
                            c.message,
                            self.operator_log().display()
                        )
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "QueueConsumer {CONSUMER_NAME} has no status after {timeout:?}; see {}",
                    self.operator_log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Where producers publish: the SQS queue URL or the Pub/Sub topic.
    async fn destination(&self) -> anyhow::Result<String> {
        let qc = self.consumer().await?;
        let queue = qc
            .status
            .and_then(|s| s.queue)
            .ok_or_else(|| anyhow!("the QueueConsumer has no status.queue yet"))?;
        Ok(match self.config.provider {
            Provider::Sqs => queue.id,
            Provider::PubSub => queue
                .topic
                .ok_or_else(|| anyhow!("status.queue.topic is missing"))?,
        })
    }

    /// Publishes `count` messages, every `poison_every`-th one poison, and records them.
    pub async fn publish(&mut self, count: usize) -> anyhow::Result<()> {
        let destination = self.destination().await?;
        let first = self.published.len() as u64;
        let seqs: Vec<u64> = (first..first + count as u64).collect();
        let is_poison = |seq: u64| {
            self.config.poison_every > 0
                && seq % self.config.poison_every == self.config.poison_every - 1
        };
        let messages = seqs
            .iter()
            .map(|&seq| OutgoingMessage {
                body: if is_poison(seq) {
                    format!("{{\"seq\":{seq},\"note\":\"poison\"}}")
                } else {
                    format!("{{\"seq\":{seq}}}")
                }
                .into_bytes(),
                attributes: vec![],
                ordering_group: None,
                deduplication_id: None,
            })
            .collect();
        let at_ms = unix_ms();
        let ids = publish(
            self.config.provider,
            Some(&self.config.direct_endpoint()),
            &destination,
            messages,
        )
        .await
        .context("publish")?;
        // Kept beside the pod logs, to follow a message through them by hand.
        let record: String = seqs
            .iter()
            .zip(&ids)
            .map(|(seq, id)| format!("{seq},{id},{at_ms}\n"))
            .collect();
        let path = self.config.work_dir.join("published.csv");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, record.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        for (seq, id) in seqs.into_iter().zip(ids) {
            self.published.push(Published {
                seq,
                id,
                at_ms,
                poison: is_poison(seq),
            });
        }
        Ok(())
    }

    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// Every delivery line the workers printed so far.
    pub fn ledger(&self) -> Ledger {
        let mut ledger = Ledger::default();
        for text in self.container_logs("worker") {
            for line in text.lines() {
                if let Some(delivery) = parse_delivery(line) {
                    ledger.record(&delivery);
                } else if let Some(tick) = parse_task_delivery(line) {
                    ledger.record_tick(&tick);
                }
            }
        }
        ledger
    }

    /// The logs of every container named `container` so far, one text per pod.
    fn container_logs(&self, container: &str) -> Vec<String> {
        let suffix = format!("_{container}.log");
        let Ok(entries) = std::fs::read_dir(self.logs_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
            .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
            .collect()
    }

    /// The deliveries the sidecars logged as failed, as (message id, attempt): a worker
    /// that answered 500, or one whose answer never arrived because it died mid-request.
    pub fn failed_attempts_seen_by_sidecars(&self) -> HashSet<(String, u32)> {
        let mut out = HashSet::new();
        for text in self.container_logs("ferry-consumer") {
            for line in text.lines() {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let fields = &record["fields"];
                let retried = fields["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("; retrying"));
                if let (true, Some(id), Some(attempt)) = (
                    retried,
                    fields["message_id"].as_str(),
                    fields["attempt"].as_u64(),
                ) {
                    out.insert((id.to_string(), attempt as u32));
                }
            }
        }
        out
    }

    /// The Deployment's replica count; also integrates replica-seconds between calls.
    pub async fn replicas(&mut self) -> anyhow::Result<(i32, i32)> {
        let deployments: Api<Deployment> = Api::namespaced(self.cluster.client(), NAMESPACE);
        let deployment = deployments.get_opt(DEPLOYMENT_NAME).await?;
        let desired = deployment
            .as_ref()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(0);
        let existing = deployment
            .as_ref()
            .and_then(|d| d.status.as_ref()?.replicas)
            .unwrap_or(0);
        let now = Instant::now();
        if let Some(last) = self.last_sample {
            self.replica_seconds += f64::from(existing) * (now - last).as_secs_f64();
        }
        self.last_sample = Some(now);
        self.max_replicas = self.max_replicas.max(existing);
        Ok((existing, desired))
    }

    /// One observation for the live view.
    pub async fn snapshot(&mut self, phase: &str) -> anyhow::Result<Snapshot> {
        let (current, desired) = self.replicas().await?;
        let qc = self.consumer().await?;
        let status = qc.status.unwrap_or_default();
        let ledger = self.ledger();
        let operator_metrics = reqwest::get(format!("http://{}/metrics", self.operator_addr))
            .await
            .ok();
        let operator_metrics = match operator_metrics {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let backlog = crate::sidecar::metric_value(
            &operator_metrics,
            &format!("ferry_consumer_backlog{{queueconsumer=\"{CONSUMER_NAME}\"}}"),
        );
        let now = unix_ms();
        Ok(Snapshot {
            elapsed: self.started.elapsed(),
            phase: phase.to_string(),
            published: self.published.len(),
            processed: ledger.processed(),
            failed_deliveries: ledger.failed_deliveries(),
            rejected: ledger.rejected(),
            backlog,
            dead_letter: status.backlog.as_ref().and_then(|b| b.dead_letter),
            recent_max_wait_s: ledger
                .recent_max_wait_ms(&self.published, now.saturating_sub(5_000))
                .map(|ms| ms as f64 / 1000.0),
            current,
            desired,
            last_scaling: status
                .last_scaling
                .map(|s| format!("{} → {} {}", s.from, s.to, s.reason)),
        })
    }

    /// True once every published message is processed or dead-lettered, and the consumer is
    /// back at its floor. The workers' lines tell most of it; a message can also reach the
    /// dead-letter queue through deliveries no worker saw (refused connections while the
    /// workers were down, a sidecar killed while it held it), so once the consumer is at its
    /// floor with messages unaccounted for, the dead-letter queue is read (every 5 s at most).
    pub async fn settled(&mut self) -> anyhow::Result<bool> {
        let (current, desired) = self.replicas().await?;
        let floor = self.config.floor();
        if current != floor || desired != floor {
            return Ok(false);
        }
        let ledger = self.ledger();
        let unaccounted = |seen: &BTreeSet<u64>| {
            self.published
                .iter()
                .filter(|m| !ledger.is_settled(m.seq, MAX_DELIVERIES) && !seen.contains(&m.seq))
                .count()
        };
        if unaccounted(&self.dead_seen) != 0 {
            if self
                .last_dead_letter_read
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
            {
                return Ok(false);
            }
            self.last_dead_letter_read = Some(Instant::now());
            let dead = self.dead_letters().await?;
            self.dead_seen.extend(dead);
            if unaccounted(&self.dead_seen) != 0 {
                return Ok(false);
            }
        }
        self.ticks_settled(&ledger).await
    }

    /// The example's periodic task (`spec.periodicTasks`, a tick a minute): settled once a
    /// worker has processed a tick, so a run shorter than a minute waits for the first.
    /// A consumer at zero starts for a tick and goes back to zero after it, so there the last
    /// tick the operator sent must be processed too, or the run could end between a tick's
    /// send and the pod it starts. At a floor of one a tick changes no replicas, so there
    /// one processed tick is enough.
    async fn ticks_settled(&self, ledger: &Ledger) -> anyhow::Result<bool> {
        if !self.config.periodic_tick {
            return Ok(true);
        }
        if ledger.ticks_processed() == 0 {
            return Ok(false);
        }
        if self.config.floor() > 0 {
            return Ok(true);
        }
        let qc = self.consumer().await?;
        let sent = qc.status.map(|s| s.periodic_tasks).unwrap_or_default();
        Ok(sent
            .iter()
            .filter_map(|task| task.last_message_id.as_deref())
            .all(|id| ledger.tick_processed(id)))
    }

    /// Waits until [`Sandbox::settled`], showing progress; fails with what is missing.
    pub async fn wait_settled(
        &mut self,
        timeout: Duration,
        show: &mut dyn FnMut(&Snapshot),
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.settled().await? {
            let snapshot = self.snapshot("idle").await?;
            show(&snapshot);
            if Instant::now() >= deadline {
                bail!(
                    "not settled within {timeout:?}: {} of {} processed, replicas {} (floor {}); logs in {}",
                    snapshot.processed,
                    snapshot.published,
                    snapshot.current,
                    self.config.floor(),
                    self.config.work_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// The pod IPs of the worker pods that run now.
    async fn running_pod_ips(&self) -> anyhow::Result<Vec<String>> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.cluster.client(), NAMESPACE);
        let list = pods
            .list(&kube::api::ListParams::default().labels("ferry.dev/queue-consumer=orders"))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let status = p.status?;
                (status.phase.as_deref() == Some("Running")).then_some(status.pod_ip?)
            })
            .collect())
    }

    /// SIGKILLs the `ferry-consumer` sidecar of one running pod (the kubelet restarts it).
    /// Returns the pod IP it ran on.
    pub async fn kill_one_sidecar(&self) -> anyhow::Result<String> {
        let ips = self.running_pod_ips().await?;
        for ip in ips {
            let killed = kill_processes_with_env(&format!("FERRY_LISTEN_ADDR={ip}:9090"));
            if killed > 0 {
                return Ok(ip);
            }
        }
        bail!("no running sidecar to kill")
    }

    /// SIGKILLs the worker container of every running pod (the kubelet restarts them).
    pub async fn kill_workers(&self) -> anyhow::Result<usize> {
        let mut killed = 0;
        for ip in self.running_pod_ips().await? {
            killed += kill_processes_with_env(&format!("WORKER_LISTEN={ip}:8080"));
        }
        Ok(killed)
    }

    /// The sequence numbers of the messages in the dead-letter queue.
    pub async fn dead_letters(&self) -> anyhow::Result<BTreeSet<u64>> {
        let qc = self.consumer().await?;
        let dead_letter = qc
            .status
            .and_then(|s| s.dead_letter)
            .ok_or_else(|| anyhow!("the QueueConsumer has no status.deadLetter"))?;
        let bodies = match self.config.provider {
            Provider::Sqs => read_sqs(&self.config.direct_endpoint(), &dead_letter.id).await?,
            Provider::PubSub => {
                read_pubsub(&self.config.direct_endpoint(), &dead_letter.id).await?
            }
        };
        Ok(bodies
            .iter()
            .filter_map(|body| {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                value["seq"].as_u64()
            })
            .collect())
    }

    /// Runs the phases (burst, steady, idle until settled), calling `show` about once a
    /// second, and returns the summary.
    pub async fn run(&mut self, show: &mut dyn FnMut(&Snapshot)) -> anyhow::Result<Summary> {
        self.wait_ready(Duration::from_secs(120)).await?;
        self.started = Instant::now();
        self.last_sample = None;
        let deadline = self.started + self.config.timeout;
        self.publish(self.config.burst).await?;
        show(&self.snapshot("burst").await?);
        // The steady phase keeps to its rate whatever each round costs: every round publishes
        // what the clock says is due.
        let steady_start = Instant::now();
        let steady_for = Duration::from_secs(self.config.steady_seconds);
        let rate = self.config.steady_rate.max(0.0);
        let mut sent = 0usize;
        while steady_start.elapsed() < steady_for {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let due = (rate * steady_start.elapsed().min(steady_for).as_secs_f64()) as usize;
            if due > sent {
                self.publish(due - sent).await?;
                sent = due;
            }
            show(&self.snapshot("steady").await?);
        }
        // The last round can fall just short of the phase's end; what is left of the phase's
        // count goes now, so a run publishes what its flags say.
        let total = (rate * steady_for.as_secs_f64()) as usize;
        if total > sent {
            self.publish(total - sent).await?;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.wait_settled(remaining, show).await?;
        if self.config.redrive {
            self.fix_and_redrive(deadline, show).await?;
        }
        self.summary().await
    }

    /// What a team does once the bug behind its dead letters is fixed: deploy the fix (here
    /// the worker stops rejecting poison) and ask the operator to put the dead-letter queue
    /// back on the queue; waits until the fixed workers have processed every dead-lettered
    /// message and the consumer is back at its floor.
    pub async fn fix_and_redrive(
        &mut self,
        deadline: Instant,
        show: &mut dyn FnMut(&Snapshot),
    ) -> anyhow::Result<()> {
        let dead = self.dead_letters().await?;
        self.dead_seen.extend(dead);
        let dead_lettered = self.dead_seen.clone();
        if dead_lettered.is_empty() {
            return Ok(());
        }
        // The example worker rejects bodies containing WORKER_POISON; empty rejects nothing.
        // The redrive is asked for at once, as a team would after deploying its fix: the
        // operator waits for the rollout (and for pods of the old worker still stopping)
        // before it moves anything.
        self.kubectl(&[
            "patch",
            "qc",
            CONSUMER_NAME,
            "--type=json",
            r#"-p=[{"op":"add","path":"/spec/worker/spec/containers/0/env/-","value":{"name":"WORKER_POISON","value":""}}]"#,
        ])
        .await?;
        let asked = Instant::now();
        let request = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs()
            .to_string();
        self.kubectl(&[
            "annotate",
            "qc",
            CONSUMER_NAME,
            &format!("{}={request}", ferry_crds::status::REDRIVE_ANNOTATION),
            "--overwrite",
        ])
        .await?;
        let mut waited_for_rollout = false;
        let redrive = loop {
            let status = self.consumer().await?.status.and_then(|s| s.redrive);
            if let Some(r) = status.as_ref().filter(|r| r.request == request) {
                waited_for_rollout |= r.message.starts_with("waiting for the worker's rollout");
            }
            match status {
                Some(r) if r.request == request && r.phase == RedrivePhase::Succeeded => break r,
                Some(r) if r.request == request && r.phase != RedrivePhase::Running => {
                    bail!("the redrive ended {:?}: {}", r.phase, r.message)
                }
                _ => {}
            }
            show(&self.snapshot("redrive").await?);
            if Instant::now() >= deadline {
                bail!(
                    "the redrive did not finish before the deadline; see {}",
                    self.operator_log().display()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        loop {
            let ledger = self.ledger();
            let waiting = dead_lettered
                .iter()
                .filter(|seq| !ledger.is_processed(**seq))
                .count();
            let (current, desired) = self.replicas().await?;
            let floor = self.config.floor();
            if waiting == 0 && current == floor && desired == floor {
                self.redrive = Some(RedriveSummary {
                    moved: redrive.moved,
                    failed_again: redrive.failed_again,
                    processed_after: dead_lettered.len() - waiting,
                    waited_for_rollout,
                    seconds: (asked.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                });
                return Ok(());
            }
            show(&self.snapshot("redrive").await?);
            if Instant::now() >= deadline {
                bail!(
                    "{waiting} of the {} redriven messages not processed before the deadline (replicas {current}, floor {floor}); logs in {}",
                    dead_lettered.len(),
                    self.config.work_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .cluster
            .kubectl_output(args)
            .await
            .context("run kubectl (it must be installed)")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub async fn summary(&mut self) -> anyhow::Result<Summary> {
        let (current, _) = self.replicas().await?;
        let now_dead = self.dead_letters().await?;
        // Without a redrive the dead-letter queue only grows, and every read adds to what was
        // seen; after one, what it holds now is what is left.
        let in_dead_letter = if self.redrive.is_some() {
            now_dead
        } else {
            self.dead_seen.extend(now_dead);
            self.dead_seen.clone()
        };
        let mut summary = summarize(
            self.config.provider.as_str(),
            &self.published,
            &self.ledger(),
            &self.dead_seen,
            &in_dead_letter,
        );
        summary.redrive = self.redrive.clone();
        summary.replica_seconds = (self.replica_seconds * 10.0).round() / 10.0;
        summary.max_replicas = self.max_replicas;
        summary.final_replicas = current;
        summary.seconds = (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        Ok(summary)
    }

    /// Stops the operator, then every pod, then the cluster.
    pub async fn shutdown(mut self) {
        self.operator.take();
        self.cluster.shutdown().await;
    }
}

/// SIGKILLs every process whose environment holds `entry` (`NAME=value`); the sandbox's
/// pods are processes of this machine, told apart by their addresses.
fn kill_processes_with_env(entry: &str) -> usize {
    let mut killed = 0;
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(process.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == entry.as_bytes()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            killed += 1;
        }
    }
    killed
}

/// Every message in an SQS queue, left there: each is held until the reading is done (so it
/// is counted once) and then handed back, for a redrive to find.
async fn read_sqs(endpoint: &str, queue_url: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let target = ferry_queues::ConsumerTarget {
        provider: Provider::Sqs,
        queue: queue_url.to_string(),
        dead_letter: None,
        dead_letter_topic: None,
        endpoint: Some(endpoint.to_string()),
        lease: Duration::from_secs(60),
        max_outstanding: 10,
        monitoring: None,
    };
    let queue = ferry_queues::connect(&target).await?;
    let mut bodies = Vec::new();
    let mut leases = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let batch = queue.receive(10, Duration::from_secs(1)).await?;
        if batch.is_empty() {
            empty += 1;
        }
        for message in batch {
            bodies.push(message.body.to_vec());
            leases.push(message.lease);
        }
    }
    queue.release(leases).await?;
    queue.close().await;
    Ok(bodies)
}

/// Every message on a Pub/Sub subscription, through the emulator's REST pull, left there:
/// each is held until the reading is done (so it is counted once), then handed back with a
/// zero ack deadline, for a redrive to find.
async fn read_pubsub(endpoint: &str, subscription: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    use base64::Engine as _;
    let client = reqwest::Client::new();
    let base = format!("http://{endpoint}/v1/{subscription}");
    let mut bodies = Vec::new();
    let mut ack_ids = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let response: serde_json::Value = serde_json::from_str(
            &client
                .post(format!("{base}:pull"))
                .header("content-type", "application/json")
                .body(r#"{"maxMessages":100,"returnImmediately":true}"#)
                .send()
                .await?
                .text()
                .await?,
        )?;
        let received = response["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if received.is_empty() {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        for m in &received {
            ack_ids.push(m["ackId"].clone());
            if let Some(data) = m["message"]["data"].as_str() {
                bodies.push(base64::engine::general_purpose::STANDARD.decode(data)?);
            }
        }
    }
    if !ack_ids.is_empty() {
        let response = client
            .post(format!("{base}:modifyAckDeadline"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "ackIds": ack_ids, "ackDeadlineSeconds": 0 }).to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "handing back the dead letters read from {subscription}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(bodies)
}

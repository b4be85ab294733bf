//! The comparison: every consumer against the same backend and the same worker, one after
//! another in one run, measured the same way.
//!
//! Per run (backend, consumer, concurrency, worker delay):
//! 1. **Throughput** (saturation): the queue holds more than the consumer can take (SQS: the
//!    endpoint makes messages on demand; Pub/Sub: a backlog published beforehand). After the
//!    first message is delivered and a warm-up, messages completed in a fixed window give
//!    msgs/s (SQS: deletes seen by the endpoint; Pub/Sub: worker requests, or acks for the
//!    raw client); CPU over the same window (utime+stime of the process tree from /proc)
//!    gives CPU-seconds per 10,000 messages; VmHWM at the end gives peak RSS; the machine's
//!    busy share over the same window (/proc/stat, every process) says whether the cell was
//!    bounded by the consumer or by the machine's cores, which the consumer shares with the
//!    queue (endpoint or emulator) and the worker; the benchmark's own CPU over the window is
//!    what the worker and (SQS) the endpoint cost, which it serves from its own threads.
//! 2. **Latency** (low load): messages are released one at a time at a low rate.
//!    SQS: added latency = worker request start − the moment the endpoint served the message
//!    (exact). Pub/Sub (the emulator cannot be instrumented): worker request start − the
//!    moment a relay between the consumer and the emulator wrote the message to the
//!    consumer's socket (`stream_tap`), also exact; publish → worker request start is kept
//!    next to it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::Message;
use serde_json::{Value, json};

use crate::procstat;
use crate::sqs_endpoint::SqsEndpoint;
use crate::stream_tap::{Seen, StreamTap};
use crate::worker::{Worker, unix_nanos};

const PROJECT: &str = "ferry-bench";
/// Message numbers from here on are warm-ups, never measured.
const WARMUP_BASE: u64 = 1 << 40;
/// Message numbers of the latency phase's batched part start here.
const BATCHED_BASE: u64 = 1 << 32;
/// The emulator hands out a subscription's messages every 50 ms; messages published further
/// apart than that reach a consumer one at a time.
const EMULATOR_DISPATCH_GAP: Duration = Duration::from_millis(60);
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A smoke check: concurrency 10, worker 0 ms, short windows.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value = "target/bench/consumer.json")]
    pub out: PathBuf,
    /// The ferry-consumer binary (release build).
    #[arg(long, default_value = "target/release/ferry-consumer")]
    pub ferry: PathBuf,
    /// Where the peers live: peers/, node_modules/, .venv/.
    #[arg(long, default_value = "bench")]
    pub bench_dir: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "sqs,pubsub")]
    pub backends: Vec<String>,
    /// Only these consumers (names as in the table); the raw client always runs.
    #[arg(long, value_delimiter = ',')]
    pub consumers: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    #[arg(long, value_delimiter = ',')]
    pub worker_ms: Vec<u64>,
    /// Seconds of the throughput window (after a warm-up).
    #[arg(long)]
    pub window: Option<f64>,
    /// Paced messages in each latency phase, at least (200; --quick 20). p99 of 200 is the
    /// third-slowest message, so one pause of the machine moves it; more give a steadier tail.
    #[arg(long)]
    pub latency_samples: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqs,
    PubSub,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqs => "sqs",
            Self::PubSub => "pubsub",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consumer {
    RawSqs,
    /// The raw client plus a POST of every message: the smallest delivering consumer.
    RawSqsDelivering,
    RawPubSub,
    Ferry,
    SqsConsumerNode,
    PubSubNode,
    PubSubPython,
}

impl Consumer {
    fn name(self) -> &'static str {
        match self {
            Self::RawSqs => "raw aws-sdk-sqs",
            Self::RawSqsDelivering => "raw aws-sdk-sqs + POST",
            Self::RawPubSub => "raw google-cloud-pubsub",
            Self::Ferry => "ferry-consumer",
            Self::SqsConsumerNode => "sqs-consumer (node)",
            Self::PubSubNode => "@google-cloud/pubsub (node)",
            Self::PubSubPython => "google-cloud-pubsub (python)",
        }
    }

    fn is_raw(self) -> bool {
        matches!(self, Self::RawSqs | Self::RawPubSub)
    }

    fn for_backend(backend: Backend) -> Vec<Self> {
        match backend {
            Backend::Sqs => vec![Self::RawSqsDelivering, Self::Ferry, Self::SqsConsumerNode],
            Backend::PubSub => vec![Self::Ferry, Self::PubSubNode, Self::PubSubPython],
        }
    }
}

struct Settings {
    warmup: Duration,
    window: Duration,
    /// How long the low-load latency phase publishes...
    latency_span: Duration,
    /// ...but at least this many messages, so that a slow cell's p99 is not its maximum.
    latency_samples: usize,
    log_dir: PathBuf,
    ferry: PathBuf,
    bench_dir: PathBuf,
    self_exe: PathBuf,
}

/// One measured run, as written to consumer.json.
#[derive(Clone, Debug, Default)]
struct RunResult {
    backend: &'static str,
    consumer: &'static str,
    concurrency: usize,
    worker_ms: Option<u64>,
    msgs_per_s: Option<f64>,
    cpu_s_per_10k: Option<f64>,
    rss_mib: Option<f64>,
    /// CPU of the benchmark's own process per 10,000 messages over the throughput window:
    /// the worker and, on SQS, the endpoint (the Pub/Sub emulator is a process of its own).
    rig_cpu_s_per_10k: Option<f64>,
    /// Share of the machine's CPU that was busy during the throughput window (all processes:
    /// consumer, queue or emulator, worker).
    machine_busy_percent: Option<f64>,
    added_p50_ms: Option<f64>,
    added_p99_ms: Option<f64>,
    /// Pub/Sub: added latency of messages paced at up to 100 msgs/s, which the emulator
    /// hands out in batches, so a message can wait behind others of its batch.
    batched_p50_ms: Option<f64>,
    batched_p99_ms: Option<f64>,
    /// Pub/Sub: publish → worker start (or → receive for the raw client), before subtracting.
    observed_p50_ms: Option<f64>,
    observed_p99_ms: Option<f64>,
    latency_samples: usize,
    /// Share of the machine's CPU time the hypervisor gave elsewhere during this cell.
    steal_percent: Option<f64>,
    notes: Vec<String>,
}

impl RunResult {
    fn to_json(&self) -> Value {
        let round = |v: Option<f64>, digits: i32| {
            v.map(|v| {
                let f = 10f64.powi(digits);
                (v * f).round() / f
            })
        };
        json!({
            "backend": self.backend,
            "consumer": self.consumer,
            "concurrency": self.concurrency,
            "worker_ms": self.worker_ms,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "cpu_s_per_10k": round(self.cpu_s_per_10k, 3),
            "rss_mib": round(self.rss_mib, 1),
            "rig_cpu_s_per_10k": round(self.rig_cpu_s_per_10k, 3),
            "machine_busy_percent": round(self.machine_busy_percent, 0),
            "added_p50_ms": round(self.added_p50_ms, 3),
            "added_p99_ms": round(self.added_p99_ms, 3),
            "batched_p50_ms": round(self.batched_p50_ms, 3),
            "batched_p99_ms": round(self.batched_p99_ms, 3),
            "observed_p50_ms": round(self.observed_p50_ms, 3),
            "observed_p99_ms": round(self.observed_p99_ms, 3),
            "latency_samples": self.latency_samples,
            "steal_percent": round(self.steal_percent, 1),
            "notes": self.notes,
        })
    }
}

/// A consumer process in its own process group, with its log file.
struct Running {
    child: Child,
    log: PathBuf,
    /// Raw Pub/Sub client: acks so far, and message number → receive time.
    acked: Arc<AtomicU64>,
    received: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// What a consumer connects to.
struct Target {
    backend: Backend,
    /// SQS queue URL or Pub/Sub subscription path.
    queue: String,
    /// SQS endpoint URL or the emulator's URL.
    endpoint: String,
    emulator_host_port: String,
    worker_url: String,
}

fn spawn(
    settings: &Settings,
    consumer: Consumer,
    target: &Target,
    concurrency: usize,
    report_each: bool,
    tag: &str,
) -> anyhow::Result<Running> {
    let log = settings.log_dir.join(format!(
        "{}-{}-c{concurrency}-{tag}.log",
        target.backend.name(),
        consumer
            .name()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let log_file = std::fs::File::create(&log)?;
    let peers = settings.bench_dir.join("peers");
    let mut command = match consumer {
        Consumer::RawSqs | Consumer::RawSqsDelivering => {
            let mut c = Command::new(&settings.self_exe);
            if consumer == Consumer::RawSqsDelivering {
                c.args(["raw-sqs", "--deliver-to", &target.worker_url]);
            } else {
                c.arg("raw-sqs");
            }
            c.args([
                "--endpoint",
                &target.endpoint,
                "--queue",
                &target.queue,
                "--concurrency",
                &concurrency.to_string(),
                "--seconds",
                "120",
            ]);
            c
        }
        Consumer::RawPubSub => {
            let mut c = Command::new(&settings.self_exe);
            c.args([
                "raw-pubsub",
                "--endpoint",
                &target.endpoint,
                "--subscription",
                &target.queue,
                "--concurrency",
                &concurrency.to_string(),
                "--seconds",
                "120",
            ]);
            if report_each {
                c.arg("--report-each");
            }
            c
        }
        Consumer::Ferry => {
            let mut c = Command::new(&settings.ferry);
            c.env("FERRY_PROVIDER", target.backend.name())
                .env("FERRY_QUEUE", &target.queue)
                .env("FERRY_ENDPOINT", &target.endpoint)
                .env("FERRY_DELIVERY_URL", &target.worker_url)
                .env("FERRY_CONCURRENCY", concurrency.to_string())
                .env(
                    "FERRY_LISTEN_ADDR",
                    format!("127.0.0.1:{}", ferry_tests::free_port()),
                )
                .env("RUST_LOG", "warn");
            c
        }
        Consumer::SqsConsumerNode => {
            let mut c = Command::new("node");
            c.arg(peers.join("sqs_consumer.mjs"));
            c
        }
        Consumer::PubSubNode => {
            let mut c = Command::new("node");
            c.arg(peers.join("pubsub_node.mjs"));
            c
        }
        Consumer::PubSubPython => {
            let mut c = Command::new(settings.bench_dir.join(".venv/bin/python"));
            c.arg(peers.join("pubsub_python.py"));
            c
        }
    };
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("PUBSUB_EMULATOR_HOST", &target.emulator_host_port)
        .env("BENCH_QUEUE", &target.queue)
        .env("BENCH_ENDPOINT", &target.endpoint)
        .env("BENCH_WORKER_URL", &target.worker_url)
        .env("BENCH_CONCURRENCY", concurrency.to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stderr(log_file.try_clone()?);
    let acked = Arc::new(AtomicU64::new(0));
    let received = Arc::new(Mutex::new(HashMap::new()));
    let child = if consumer == Consumer::RawPubSub {
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (acked, received) = (acked.clone(), received.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("c"), Some(n), None) => {
                        acked.store(n.parse().unwrap_or(0), Ordering::Relaxed);
                    }
                    (Some("r"), Some(n), Some(at)) => {
                        if let (Ok(n), Ok(at)) = (n.parse(), at.parse()) {
                            received.lock().expect("received lock").insert(n, at);
                        }
                    }
                    _ => {}
                }
            }
        });
        child
    } else {
        command.stdout(log_file).spawn()?
    };
    Ok(Running {
        child,
        log,
        acked,
        received,
    })
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Latencies in ms from `from` (message → time) to `to` (message → time), for every message
/// in both.
fn latencies(from: &HashMap<u64, u64>, to: &HashMap<u64, u64>) -> Vec<f64> {
    let mut out: Vec<f64> = from
        .iter()
        .filter_map(|(n, start)| {
            let end = to.get(n)?;
            Some((*end as f64 - *start as f64) / 1e6)
        })
        .collect();
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

struct Bench {
    settings: Settings,
    worker: Worker,
    sqs: Option<SqsEndpoint>,
    pubsub: Option<PubSubBackend>,
    results: Vec<RunResult>,
}

struct PubSubBackend {
    url: String,
    host_port: String,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

/// Where a measurement's message count comes from.
fn count(bench: &Bench, backend: Backend, consumer: Consumer, running: &Running) -> u64 {
    match (backend, consumer) {
        (Backend::Sqs, _) => bench.sqs.as_ref().map_or(0, SqsEndpoint::deletes),
        (Backend::PubSub, Consumer::RawPubSub) => running.acked.load(Ordering::Relaxed),
        (Backend::PubSub, _) => bench.worker.requests(),
    }
}

async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

struct Throughput {
    msgs_per_s: f64,
    cpu_s_per_10k: f64,
    rss_mib: f64,
    rig_cpu_s_per_10k: f64,
    machine_busy_percent: Option<f64>,
    exhausted: bool,
}

impl Bench {
    /// Waits for the first message, warms up, then measures one window. `budget` is how
    /// many messages the queue holds (None: unlimited); the window closes early if the
    /// consumer gets near the end of them.
    async fn measure_throughput(
        &self,
        backend: Backend,
        consumer: Consumer,
        running: &mut Running,
        budget: Option<u64>,
    ) -> anyhow::Result<Throughput> {
        let base = count(self, backend, consumer, running);
        let started = wait_for(Duration::from_secs(60), || {
            count(self, backend, consumer, running) > base
        })
        .await;
        if !started {
            anyhow::bail!(
                "no message was processed within 60 s; log {}:\n{}",
                running.log.display(),
                running.log_tail()
            );
        }
        tokio::time::sleep(self.settings.warmup).await;
        let pid = running.pid();
        let n0 = count(self, backend, consumer, running);
        let cpu0 = procstat::cpu_seconds(pid);
        let machine0 = procstat::MachineTime::now();
        let rig0 = procstat::own_cpu_seconds();
        let t0 = Instant::now();
        let near_end = budget.map(|b| base + b - b / 50);
        let mut exhausted = false;
        while t0.elapsed() < self.settings.window {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if near_end.is_some_and(|end| count(self, backend, consumer, running) >= end) {
                exhausted = true;
                break;
            }
        }
        let n1 = count(self, backend, consumer, running);
        let cpu1 = procstat::cpu_seconds(pid);
        let machine_busy_percent = machine0.and_then(procstat::MachineTime::busy_percent_since);
        let rig1 = procstat::own_cpu_seconds();
        let elapsed = t0.elapsed().as_secs_f64();
        if !running.alive() {
            anyhow::bail!("the consumer exited; log:\n{}", running.log_tail());
        }
        let done = n1.saturating_sub(n0);
        if done == 0 {
            anyhow::bail!("no message completed in the window");
        }
        Ok(Throughput {
            msgs_per_s: done as f64 / elapsed,
            cpu_s_per_10k: (cpu1 - cpu0) / done as f64 * 10_000.0,
            rss_mib: procstat::peak_rss_mib(pid),
            rig_cpu_s_per_10k: (rig1 - rig0) / done as f64 * 10_000.0,
            machine_busy_percent,
            exhausted,
        })
    }

    async fn run_sqs(
        &mut self,
        consumer: Consumer,
        concurrency: usize,
        worker_ms: Option<u64>,
    ) -> anyhow::Result<RunResult> {
        let endpoint = self.sqs.clone().context("SQS endpoint")?;
        self.worker.set_delay(worker_ms.unwrap_or(0));
        endpoint.unlimited();
        let target = Target {
            backend: Backend::Sqs,
            queue: endpoint.queue_url(),
            endpoint: endpoint.endpoint_url(),
            emulator_host_port: String::new(),
            worker_url: self.worker.url(),
        };
        let tag = format!("w{}", worker_ms.unwrap_or(0));
        let mut running = spawn(&self.settings, consumer, &target, concurrency, false, &tag)?;
        let mut result = RunResult {
            backend: "sqs",
            consumer: consumer.name(),
            concurrency,
            worker_ms,
            ..RunResult::default()
        };
        let calls_before = endpoint.shared.receive_calls.load(Ordering::Relaxed);
        let served_before = endpoint.shared.served.load(Ordering::Relaxed);
        let delete_calls_before = endpoint.shared.delete_calls.load(Ordering::Relaxed);
        let deletes_before = endpoint.deletes();
        let measured = self
            .measure_throughput(Backend::Sqs, consumer, &mut running, None)
            .await;
        let calls = endpoint.shared.receive_calls.load(Ordering::Relaxed) - calls_before;
        let served = endpoint.shared.served.load(Ordering::Relaxed) - served_before;
        if calls > 0 {
            result.notes.push(format!(
                "{:.2} messages per ReceiveMessage call ({calls} calls)",
                served as f64 / calls as f64
            ));
        }
        let delete_calls =
            endpoint.shared.delete_calls.load(Ordering::Relaxed) - delete_calls_before;
        if delete_calls > 0 {
            result.notes.push(format!(
                "{:.2} messages per DeleteMessage(Batch) call ({delete_calls} calls)",
                (endpoint.deletes() - deletes_before) as f64 / delete_calls as f64
            ));
        }
        let throughput = match measured {
            Ok(t) => t,
            Err(e) => {
                running.stop();
                endpoint.unlimited();
                return Err(e);
            }
        };
        result.msgs_per_s = Some(throughput.msgs_per_s);
        result.cpu_s_per_10k = Some(throughput.cpu_s_per_10k);
        result.rss_mib = Some(throughput.rss_mib);
        result.machine_busy_percent = throughput.machine_busy_percent;
        result.rig_cpu_s_per_10k = Some(throughput.rig_cpu_s_per_10k);

        if !consumer.is_raw() {
            // Low load: stop the supply, let in-flight deliveries finish, then release
            // messages one at a time.
            endpoint.freeze();
            tokio::time::sleep(Duration::from_millis(300 + 2 * worker_ms.unwrap_or(0))).await;
            self.worker.record_latency(true);
            endpoint.record_latency(true);
            let rate = (throughput.msgs_per_s * 0.5).clamp(5.0, 200.0);
            let messages = ((rate * self.settings.latency_span.as_secs_f64()) as usize)
                .max(self.settings.latency_samples);
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for _ in 0..messages {
                ticker.tick().await;
                endpoint.release();
            }
            let worker = self.worker.clone();
            wait_for(Duration::from_secs(3), || {
                worker.recorded_count() >= messages
            })
            .await;
            let started = self.worker.record_latency(false);
            let served = endpoint.record_latency(false);
            let added = latencies(&served, &started);
            result.latency_samples = added.len();
            result.added_p50_ms = percentile(&added, 0.5);
            result.added_p99_ms = percentile(&added, 0.99);
            result.observed_p50_ms = result.added_p50_ms;
            result.observed_p99_ms = result.added_p99_ms;
            if added.len() < messages {
                result.notes.push(format!(
                    "latency: {} of {messages} paced messages reached the worker",
                    added.len()
                ));
            }
        }
        running.stop();
        endpoint.unlimited();
        Ok(result)
    }

    async fn new_subscription(&self, label: &str) -> anyhow::Result<(String, String)> {
        let pubsub = self.pubsub.as_ref().context("Pub/Sub emulator")?;
        let name = ferry_tests::unique_name(label);
        let topic = format!("projects/{PROJECT}/topics/{name}");
        let subscription = format!("projects/{PROJECT}/subscriptions/{name}");
        pubsub
            .topics
            .create_topic()
            .set_name(topic.clone())
            .send()
            .await?;
        pubsub
            .subscriptions
            .create_subscription()
            .set_name(subscription.clone())
            .set_topic(topic.clone())
            .set_ack_deadline_seconds(60)
            .send()
            .await?;
        Ok((topic, subscription))
    }

    async fn delete_subscription(&self, topic: &str, subscription: &str) {
        if let Some(pubsub) = &self.pubsub {
            let _ = pubsub
                .subscriptions
                .delete_subscription()
                .set_subscription(subscription.to_string())
                .send()
                .await;
            let _ = pubsub
                .topics
                .delete_topic()
                .set_topic(topic.to_string())
                .send()
                .await;
        }
    }

    async fn publisher(&self, topic: &str, batch: bool) -> anyhow::Result<Publisher> {
        let pubsub = self.pubsub.as_ref().context("Pub/Sub emulator")?;
        let mut builder = Publisher::builder(topic.to_string())
            .with_endpoint(pubsub.url.clone())
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        if !batch {
            builder = builder.set_message_count_threshold(1);
        }
        Ok(builder.build().await?)
    }

    async fn publish_backlog(&self, topic: &str, count: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let publisher = self.publisher(topic, true).await?;
        let mut n = 0;
        while n < count {
            let chunk = (count - n).min(2_000);
            let pending: Vec<_> = (n..n + chunk)
                .map(|i| publisher.publish(Message::new().set_data(body(i))))
                .collect();
            for future in pending {
                future.await?;
            }
            n += chunk;
        }
        Ok(started.elapsed())
    }

    async fn run_pubsub(
        &mut self,
        consumer: Consumer,
        concurrency: usize,
        worker_ms: Option<u64>,
        backlog: u64,
    ) -> anyhow::Result<RunResult> {
        let pubsub = self.pubsub.as_ref().context("Pub/Sub emulator")?;
        let (url, host_port) = (pubsub.url.clone(), pubsub.host_port.clone());
        self.worker.set_delay(worker_ms.unwrap_or(0));
        let mut result = RunResult {
            backend: "pubsub",
            consumer: consumer.name(),
            concurrency,
            worker_ms,
            ..RunResult::default()
        };
        let tag = format!("w{}", worker_ms.unwrap_or(0));

        // Throughput, from a backlog published before the consumer starts.
        let (topic, subscription) = self.new_subscription("bench-tput").await?;
        let took = self.publish_backlog(&topic, backlog).await?;
        eprintln!(
            "    published a backlog of {backlog} in {:.1} s",
            took.as_secs_f64()
        );
        let target = Target {
            backend: Backend::PubSub,
            queue: subscription.clone(),
            endpoint: url.clone(),
            emulator_host_port: host_port.clone(),
            worker_url: self.worker.url(),
        };
        let mut running = spawn(&self.settings, consumer, &target, concurrency, false, &tag)?;
        let measured = self
            .measure_throughput(Backend::PubSub, consumer, &mut running, Some(backlog))
            .await;
        running.stop();
        self.delete_subscription(&topic, &subscription).await;
        let throughput = measured?;
        result.msgs_per_s = Some(throughput.msgs_per_s);
        result.cpu_s_per_10k = Some(throughput.cpu_s_per_10k);
        result.rss_mib = Some(throughput.rss_mib);
        result.machine_busy_percent = throughput.machine_busy_percent;
        result.rig_cpu_s_per_10k = Some(throughput.rig_cpu_s_per_10k);
        if throughput.exhausted {
            result.notes.push(
                "the backlog ran low before the window ended; the window was shortened".into(),
            );
        }

        // Latency at low load, on a fresh subscription, with the consumer reaching the
        // emulator through a relay that notes when each message is handed to it.
        let (topic, subscription) = self.new_subscription("bench-lat").await?;
        let emulator: std::net::SocketAddr = host_port
            .parse()
            .with_context(|| format!("the emulator's address {host_port}"))?;
        let tap = StreamTap::start(emulator).await?;
        let target = Target {
            queue: subscription.clone(),
            endpoint: format!("http://{}", tap.addr),
            emulator_host_port: tap.addr.to_string(),
            ..target
        };
        let mut running = spawn(
            &self.settings,
            consumer,
            &target,
            concurrency,
            true,
            &format!("{tag}-latency"),
        )?;
        let outcome = self
            .pubsub_latency(consumer, &topic, &running, throughput.msgs_per_s, &tap.seen)
            .await;
        drop(tap);
        let alive = running.alive();
        let tail = running.log_tail();
        running.stop();
        self.delete_subscription(&topic, &subscription).await;
        match outcome {
            Ok((singles, batched)) => {
                result.latency_samples = singles.added.len();
                result.observed_p50_ms = percentile(&singles.observed, 0.5);
                result.observed_p99_ms = percentile(&singles.observed, 0.99);
                result.added_p50_ms = percentile(&singles.added, 0.5);
                result.added_p99_ms = percentile(&singles.added, 0.99);
                result.batched_p50_ms = percentile(&batched.added, 0.5);
                result.batched_p99_ms = percentile(&batched.added, 0.99);
                for (phase, paced) in [("one at a time", &singles), ("in batches", &batched)] {
                    if paced.observed.len() < paced.expected {
                        result.notes.push(format!(
                            "latency, {phase}: {} of {} paced messages arrived",
                            paced.observed.len(),
                            paced.expected
                        ));
                    }
                    if paced.added.len() < paced.observed.len() {
                        result.notes.push(format!(
                            "added latency, {phase}: {} of {} arrived messages were seen passing the relay",
                            paced.added.len(),
                            paced.observed.len()
                        ));
                    }
                }
            }
            Err(e) => result.notes.push(format!(
                "latency phase failed: {e}{}",
                if alive {
                    String::new()
                } else {
                    format!("; consumer exited:\n{tail}")
                }
            )),
        }
        Ok(result)
    }

    /// Publishes warm-ups until the consumer takes one, then two paced phases: messages
    /// one at a time (the figure compared with SQS's, where the endpoint hands each message
    /// over in a receive of its own), then at up to 100 msgs/s, which the emulator hands out
    /// in batches of about five.
    async fn pubsub_latency(
        &self,
        consumer: Consumer,
        topic: &str,
        running: &Running,
        saturated_rate: f64,
        relayed: &Seen,
    ) -> anyhow::Result<(Paced, Paced)> {
        let publisher = self.publisher(topic, false).await?;
        let base = count(self, Backend::PubSub, consumer, running);
        let mut warm = WARMUP_BASE;
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(self, Backend::PubSub, consumer, running) == base {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the consumer took no message within 60 s"
            );
            publisher
                .publish(Message::new().set_data(body(warm)))
                .await?;
            warm += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the warm-ups drain.
        let warmups = warm - WARMUP_BASE;
        wait_for(Duration::from_secs(5), || {
            count(self, Backend::PubSub, consumer, running) >= base + warmups
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let half = saturated_rate * 0.5;
        let singles = self
            .pubsub_paced(
                consumer,
                &publisher,
                running,
                relayed,
                half.clamp(5.0, 1.0 / EMULATOR_DISPATCH_GAP.as_secs_f64()),
                0,
            )
            .await?;
        let batched = self
            .pubsub_paced(
                consumer,
                &publisher,
                running,
                relayed,
                half.clamp(5.0, 100.0),
                BATCHED_BASE,
            )
            .await?;
        Ok((singles, batched))
    }

    /// Publishes messages numbered from `first` at `rate`; returns their publish → worker
    /// start (or → receive, raw) latencies and relay → worker start (or → receive)
    /// latencies, in ms, and how many were published.
    async fn pubsub_paced(
        &self,
        consumer: Consumer,
        publisher: &Publisher,
        running: &Running,
        relayed: &Seen,
        rate: f64,
        first: u64,
    ) -> anyhow::Result<Paced> {
        self.worker.record_latency(true);
        running.received.lock().expect("received lock").clear();
        relayed.record();
        let messages = ((rate * self.settings.latency_span.as_secs_f64()) as usize)
            .max(self.settings.latency_samples);
        let mut published = HashMap::with_capacity(messages);
        let mut pending = Vec::with_capacity(messages);
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for n in first..first + messages as u64 {
            ticker.tick().await;
            published.insert(n, unix_nanos());
            pending.push(publisher.publish(Message::new().set_data(body(n))));
        }
        for future in pending {
            future.await?;
        }
        let received = running.received.clone();
        let worker = self.worker.clone();
        let raw = consumer.is_raw();
        wait_for(Duration::from_secs(5), || {
            if raw {
                received.lock().expect("received lock").len() >= messages
            } else {
                worker.recorded_count() >= messages
            }
        })
        .await;
        let arrived = if raw {
            received.lock().expect("received lock").clone()
        } else {
            self.worker.record_latency(false)
        };
        self.worker.record_latency(false);
        let relayed = relayed.take();
        Ok(Paced {
            observed: latencies(&published, &arrived),
            added: latencies(&relayed, &arrived),
            expected: messages,
        })
    }
}

/// One paced phase of a Pub/Sub latency measurement, in ms.
struct Paced {
    /// Publish → worker start (raw: → receive).
    observed: Vec<f64>,
    /// Relay → worker start (raw: → receive).
    added: Vec<f64>,
    /// Messages published.
    expected: usize,
}

fn body(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"pad\":\"{PAD}\"}}").into_bytes()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    json!({"cpu": model, "cores": cores, "memory": memory, "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()})
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let out_dir = args.out.parent().map(Path::to_path_buf).unwrap_or_default();
    let log_dir = out_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let concurrencies = if !args.concurrency.is_empty() {
        args.concurrency.clone()
    } else if args.quick {
        vec![10]
    } else {
        vec![1, 10, 100]
    };
    let worker_delays = if !args.worker_ms.is_empty() {
        args.worker_ms.clone()
    } else if args.quick {
        vec![0]
    } else {
        vec![0, 50]
    };
    let window = args.window.unwrap_or(if args.quick { 2.0 } else { 4.0 });
    let settings = Settings {
        warmup: Duration::from_secs_f64(if args.quick { 0.5 } else { 1.0 }),
        window: Duration::from_secs_f64(window),
        latency_span: Duration::from_secs_f64(if args.quick { 1.0 } else { 5.0 }),
        latency_samples: args
            .latency_samples
            .unwrap_or(if args.quick { 20 } else { 200 }),
        log_dir,
        ferry: std::path::absolute(&args.ferry)?,
        bench_dir: std::path::absolute(&args.bench_dir)?,
        self_exe: std::env::current_exe()?,
    };
    anyhow::ensure!(
        settings.ferry.exists(),
        "no ferry-consumer at {} (cargo build --release -p ferry-consumer)",
        settings.ferry.display()
    );
    let backends: Vec<Backend> = args
        .backends
        .iter()
        .map(|b| match b.as_str() {
            "sqs" => Ok(Backend::Sqs),
            "pubsub" => Ok(Backend::PubSub),
            other => Err(anyhow::anyhow!("unknown backend {other}")),
        })
        .collect::<anyhow::Result<_>>()?;
    let wanted = |c: Consumer| {
        args.consumers.is_empty() || args.consumers.iter().any(|w| c.name().starts_with(w))
    };

    let worker = Worker::start().await?;
    let sqs = if backends.contains(&Backend::Sqs) {
        Some(SqsEndpoint::start(0).await?)
    } else {
        None
    };
    let pubsub = if backends.contains(&Backend::PubSub) {
        eprintln!("starting the Pub/Sub emulator...");
        let service = tokio::task::spawn_blocking(ferry_tests::emulators::pubsub).await?;
        let url = service.url();
        let topics = TopicAdmin::builder()
            .with_endpoint(url.clone())
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await?;
        let subscriptions = SubscriptionAdmin::builder()
            .with_endpoint(url.clone())
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await?;
        Some(PubSubBackend {
            url,
            host_port: service.host_port(),
            topics,
            subscriptions,
        })
    } else {
        None
    };
    let mut bench = Bench {
        settings,
        worker,
        sqs,
        pubsub,
        results: Vec::new(),
    };

    for backend in backends {
        for &concurrency in &concurrencies {
            let raw = match backend {
                Backend::Sqs => Consumer::RawSqs,
                Backend::PubSub => Consumer::RawPubSub,
            };
            // The raw client first: its rate sizes the Pub/Sub backlogs, its latency is the
            // Pub/Sub baseline.
            let guess = 40.0 * bench.settings.window.as_secs_f64().max(1.0) * 1_000.0 / 4.0;
            eprintln!("{} {} c={concurrency}", backend.name(), raw.name());
            let started = procstat::MachineTime::now();
            let raw_result = match backend {
                Backend::Sqs => bench.run_sqs(raw, concurrency, None).await,
                Backend::PubSub => bench.run_pubsub(raw, concurrency, None, guess as u64).await,
            };
            let raw_result = record(
                &mut bench,
                raw_result,
                started,
                (backend, raw, concurrency, None),
            );
            let raw_rate = raw_result.msgs_per_s.unwrap_or(5_000.0);
            for &delay in &worker_delays {
                for consumer in Consumer::for_backend(backend) {
                    if !wanted(consumer) {
                        continue;
                    }
                    eprintln!(
                        "{} {} c={concurrency} worker={delay}ms",
                        backend.name(),
                        consumer.name()
                    );
                    let started = procstat::MachineTime::now();
                    let outcome = match backend {
                        Backend::Sqs => bench.run_sqs(consumer, concurrency, Some(delay)).await,
                        Backend::PubSub => {
                            // Enough for warm-up and window at the best rate this can reach,
                            // with room to spare (ferry holds up to 2 × concurrency).
                            let bound = if delay == 0 {
                                raw_rate
                            } else {
                                raw_rate.min(2.0 * concurrency as f64 * 1000.0 / delay as f64)
                            };
                            let seconds = bench.settings.warmup.as_secs_f64()
                                + bench.settings.window.as_secs_f64();
                            let backlog = (bound * seconds * 1.5) as u64 + 200;
                            bench
                                .run_pubsub(consumer, concurrency, Some(delay), backlog)
                                .await
                        }
                    };
                    record(
                        &mut bench,
                        outcome,
                        started,
                        (backend, consumer, concurrency, Some(delay)),
                    );
                }
            }
        }
    }

    let ratios = ratios(&bench.results);
    let load_after = loadavg();
    let runs: Vec<Value> = bench.results.iter().map(RunResult::to_json).collect();
    let report = json!({
        "runs": runs,
        "ratios": ratios,
        "mode": if args.quick { "quick" } else { "full" },
        "window_s": window,
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "duration_s": started.elapsed().as_secs(),
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("{}", table(&runs));
    println!("{}", ratio_table(&ratios));
    println!(
        "load average before: {load_before}; after: {load_after}; took {} s; wrote {}",
        started.elapsed().as_secs(),
        args.out.display()
    );
    Ok(())
}

fn record(
    bench: &mut Bench,
    outcome: anyhow::Result<RunResult>,
    started: Option<procstat::MachineTime>,
    (backend, consumer, concurrency, worker_ms): (Backend, Consumer, usize, Option<u64>),
) -> RunResult {
    let mut result = outcome.unwrap_or_else(|e| {
        eprintln!("    FAILED: {e:#}");
        RunResult {
            backend: backend.name(),
            consumer: consumer.name(),
            concurrency,
            worker_ms,
            notes: vec![format!("failed: {e:#}")],
            ..RunResult::default()
        }
    });
    result.steal_percent = started.and_then(procstat::MachineTime::steal_percent_since);
    eprintln!(
        "    {:.0} msgs/s, {:.3} CPU s/10k, {:.1} MiB, added p50 {:?} ms p99 {:?} ms, steal {:.1} %",
        result.msgs_per_s.unwrap_or(0.0),
        result.cpu_s_per_10k.unwrap_or(0.0),
        result.rss_mib.unwrap_or(0.0),
        result.added_p50_ms.map(|v| (v * 1000.0).round() / 1000.0),
        result.added_p99_ms.map(|v| (v * 1000.0).round() / 1000.0),
        result.steal_percent.unwrap_or(0.0),
    );
    bench.results.push(result.clone());
    result
}

/// Per (backend, concurrency, worker): ferry against the best peer (most messages per
/// CPU-second) and against the raw-client ceiling.
fn ratios(results: &[RunResult]) -> Vec<Value> {
    let mut out = Vec::new();
    for ferry in results
        .iter()
        .filter(|r| r.consumer == Consumer::Ferry.name())
    {
        let (Some(ferry_rate), Some(ferry_cpu), Some(ferry_rss)) =
            (ferry.msgs_per_s, ferry.cpu_s_per_10k, ferry.rss_mib)
        else {
            continue;
        };
        let peers = results.iter().filter(|r| {
            r.backend == ferry.backend
                && r.concurrency == ferry.concurrency
                && r.worker_ms == ferry.worker_ms
                && r.consumer != ferry.consumer
                && r.consumer != Consumer::RawSqsDelivering.name()
                && r.cpu_s_per_10k.is_some()
        });
        let best = peers.min_by(|a, b| {
            a.cpu_s_per_10k
                .unwrap_or(f64::MAX)
                .total_cmp(&b.cpu_s_per_10k.unwrap_or(f64::MAX))
        });
        let raw = results.iter().find(|r| {
            r.backend == ferry.backend
                && r.concurrency == ferry.concurrency
                && (r.consumer == Consumer::RawSqs.name()
                    || r.consumer == Consumer::RawPubSub.name())
        });
        let delivering = results
            .iter()
            .find(|r| {
                r.backend == ferry.backend
                    && r.concurrency == ferry.concurrency
                    && r.worker_ms == ferry.worker_ms
                    && r.consumer == Consumer::RawSqsDelivering.name()
            })
            .and_then(|r| r.msgs_per_s)
            .map(|d| ((ferry_rate / d) * 100.0).round() / 100.0);
        let per_cpu = best
            .and_then(|b| b.cpu_s_per_10k)
            .map(|peer_cpu| peer_cpu / ferry_cpu);
        let rss = best.and_then(|b| b.rss_mib).map(|peer| ferry_rss / peer);
        let of_raw = raw.and_then(|r| r.msgs_per_s).map(|raw| ferry_rate / raw);
        let rate_vs_best = best.and_then(|b| b.msgs_per_s).map(|b| ferry_rate / b);
        out.push(json!({
            "backend": ferry.backend,
            "concurrency": ferry.concurrency,
            "worker_ms": ferry.worker_ms,
            "best_peer": best.map(|b| b.consumer),
            "msgs_per_cpu_s_vs_best_peer": per_cpu.map(|v| (v * 100.0).round() / 100.0),
            "rss_vs_best_peer": rss.map(|v| (v * 1000.0).round() / 1000.0),
            "msgs_per_s_vs_best_peer": rate_vs_best.map(|v| (v * 100.0).round() / 100.0),
            "msgs_per_s_vs_raw": of_raw.map(|v| (v * 100.0).round() / 100.0),
            "msgs_per_s_vs_raw_delivering": delivering,
            "added_p99_ms": ferry.added_p99_ms,
            "batched_p99_ms": ferry.batched_p99_ms,
            "goal_cpu_3x": per_cpu.map(|v| v >= 3.0),
            "goal_rss_fifth": rss.map(|v| v <= 0.2),
            "goal_p99_1ms": ferry.added_p99_ms.map(|v| v <= 1.0),
            // The raw ceiling is for a worker that answers at once; with a 50 ms worker the
            // bound is concurrency × 20 msgs/s.
            "goal_raw_0_9": if ferry.worker_ms == Some(0) { of_raw.map(|v| v >= 0.9) } else { None },
        }));
    }
    out
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// The runs table, from the rows as written to consumer.json (so `ferry-bench table` prints
/// the same table from a saved report).
fn table(runs: &[Value]) -> String {
    let mut out = String::from(
        "| backend | consumer | conc | worker ms | msgs/s | CPU s / 10k msgs | peak RSS MiB | added p50 ms | added p99 ms | in batches: added p50 / p99 ms | publish→start p50 / p99 ms | worker + endpoint CPU s / 10k | machine busy % | steal % |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let f = |key: &str, digits: usize| fmt(r[key].as_f64(), digits);
        let backend = r["backend"].as_str().unwrap_or("");
        let pair = |p50: &str, p99: &str, digits: usize| {
            if backend == "pubsub" && r[p50].is_number() {
                format!("{} / {}", f(p50, digits), f(p99, digits))
            } else {
                "–".into()
            }
        };
        let batched = pair("batched_p50_ms", "batched_p99_ms", 2);
        let observed = pair("observed_p50_ms", "observed_p99_ms", 1);
        out.push_str(&format!(
            "| {backend} | {} | {} | {} | {} | {} | {} | {} | {} | {batched} | {observed} | {} | {} | {} |\n",
            r["consumer"].as_str().unwrap_or(""),
            r["concurrency"],
            r["worker_ms"]
                .as_u64()
                .map_or("–".into(), |w| w.to_string()),
            f("msgs_per_s", 0),
            f("cpu_s_per_10k", 2),
            f("rss_mib", 1),
            f("added_p50_ms", 2),
            f("added_p99_ms", 2),
            f("rig_cpu_s_per_10k", 2),
            f("machine_busy_percent", 0),
            f("steal_percent", 0),
        ));
    }
    out
}

/// Prints the tables of a saved report (`target/bench/consumer.json`), for docs/performance.md.
pub fn print_report(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a benchmark report", path.display()))?;
    let rows = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    println!("{}", table(&rows("runs")));
    println!("{}", ratio_table(&rows("ratios")));
    println!(
        "mode {}, load average before: {}; after: {}; took {} s",
        report["mode"].as_str().unwrap_or("?"),
        report["loadavg_before"].as_str().unwrap_or("?"),
        report["loadavg_after"].as_str().unwrap_or("?"),
        report["duration_s"]
    );
    Ok(())
}

fn ratio_table(ratios: &[Value]) -> String {
    let mut out = String::from(
        "| backend | conc | worker ms | best peer | ferry msgs/CPU-s ÷ peer (goal ≥ 3) | ferry RSS ÷ peer (goal ≤ 0.2) | ferry msgs/s ÷ peer | ferry msgs/s ÷ raw (goal ≥ 0.9) | ferry msgs/s ÷ raw + POST | ferry added p99 ms (goal ≤ 1) | ferry added p99 ms in batches |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in ratios {
        let f = |key: &str, digits: usize| fmt(r[key].as_f64(), digits);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["backend"].as_str().unwrap_or(""),
            r["concurrency"],
            r["worker_ms"],
            r["best_peer"].as_str().unwrap_or("–"),
            f("msgs_per_cpu_s_vs_best_peer", 2),
            f("rss_vs_best_peer", 3),
            f("msgs_per_s_vs_best_peer", 2),
            if r["worker_ms"].as_u64() == Some(0) {
                f("msgs_per_s_vs_raw", 2)
            } else {
                "–".into()
            },
            f("msgs_per_s_vs_raw_delivering", 2),
            f("added_p99_ms", 2),
            f("batched_p99_ms", 2),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}

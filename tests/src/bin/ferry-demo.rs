//! The local demo: a real queue with a dead-letter queue on an emulator, the example worker,
//! and the `ferry-consumer` sidecar between them, with a live view of what happens.
//!
//! `scripts/demo.sh` builds the binaries and runs this.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_queues::provision::{OutgoingMessage, QueueRequest, ensure_queue, publish};
use ferry_queues::{ConsumerTarget, Provider};
use ferry_tests::emulators::{self, PUBSUB_PROJECT};
use ferry_tests::sidecar::metric_value;
use ferry_tests::{free_port, log_dir, unique_name};

#[derive(Parser, Debug)]
#[command(
    about = "Runs ferry-consumer against a local queue emulator with an example worker and shows what happens"
)]
struct Options {
    /// Queue provider: pubsub (Google's emulator) or sqs (moto).
    #[arg(long, default_value = "pubsub")]
    provider: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 300)]
    messages: usize,
    /// How many of them are poison (rejected with 422, dead-lettered at once).
    #[arg(long, default_value_t = 5)]
    poison: usize,
    /// Fraction of deliveries the worker fails with 500 (retried with backoff).
    #[arg(long, default_value_t = 0.2)]
    failure_rate: f64,
    /// Worker latency per message, in milliseconds.
    #[arg(long, default_value_t = 30)]
    latency_ms: u64,
    /// FERRY_CONCURRENCY for the sidecar.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Deliver to your own worker at this URL instead of starting the example worker.
    #[arg(long)]
    worker_url: Option<String>,
    /// Publish this file's content as every message body (poison messages still get theirs).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

struct Process(Child, &'static str);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.1);
        let _ = self.0.kill();
    }
}

fn sibling_binary(name: &str) -> PathBuf {
    let path = std::env::current_exe()
        .expect("current exe")
        .with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p ferry-consumer -p ferry-example-worker` (scripts/demo.sh does)",
        path.display()
    );
    path
}

fn spawn(name: &'static str, mut command: Command) -> Process {
    let log = log_dir().join(format!("demo-{name}.log"));
    let file = std::fs::File::create(&log).expect("create log");
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    println!("started {name} (log: {})", log.display());
    Process(child, name)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let provider: Provider = options.provider.parse().map_err(anyhow::Error::msg)?;
    println!(
        "starting the {} emulator ...",
        if provider == Provider::Sqs {
            "SQS (moto)"
        } else {
            "Pub/Sub"
        }
    );
    let endpoint = match provider {
        Provider::Sqs => emulators::moto().url(),
        Provider::PubSub => emulators::pubsub().host_port(),
    };
    let max_deliveries = 5;
    let queue = ensure_queue(&QueueRequest {
        provider,
        name: unique_name("demo-orders"),
        project: Some(PUBSUB_PROJECT.into()),
        endpoint: Some(endpoint.clone()),
        max_deliveries,
        lease: Duration::from_secs(30),
        ordered: false,
        retry_backoff: Some((Duration::from_secs(1), Duration::from_secs(10))),
        ..QueueRequest::new(provider, "")
    })
    .await?;
    println!(
        "queue {}\n  dead-letter queue {} (after {max_deliveries} deliveries)",
        queue.queue, queue.dead_letter
    );

    let (_worker, worker_url) = match &options.worker_url {
        Some(url) => {
            println!("delivering to your worker at {url}");
            (None, url.clone())
        }
        None => {
            let worker_port = free_port();
            let mut worker = Command::new(sibling_binary("ferry-example-worker"));
            worker
                .arg(format!("--listen=127.0.0.1:{worker_port}"))
                .arg(format!("--latency-ms={}", options.latency_ms))
                .arg(format!("--failure-rate={}", options.failure_rate));
            (
                Some(spawn("worker", worker)),
                format!("http://127.0.0.1:{worker_port}/"),
            )
        }
    };
    let body = match &options.body_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--body-file {}: {e}", path.display()))?,
        ),
        None => None,
    };

    let metrics_port = free_port();
    let mut sidecar = Command::new(sibling_binary("ferry-consumer"));
    sidecar
        .env("FERRY_PROVIDER", provider.as_str())
        .env("FERRY_QUEUE", &queue.queue)
        .env("FERRY_DEAD_LETTER", &queue.dead_letter)
        .env("FERRY_ENDPOINT", &endpoint)
        .env("FERRY_DELIVERY_URL", &worker_url)
        .env("FERRY_CONCURRENCY", options.concurrency.to_string())
        .env("FERRY_PERMANENT_FAILURE_STATUSES", "422")
        .env("FERRY_RETRY_BACKOFF_MIN", "1")
        .env("FERRY_RETRY_BACKOFF_MAX", "10")
        .env("FERRY_RECEIVE_WAIT_SECONDS", "2")
        .env("FERRY_STATS_INTERVAL", "1")
        .env("FERRY_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let _sidecar = spawn("ferry-consumer", sidecar);
    println!("sidecar metrics: curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^ferry_\n");

    let poison_every = options
        .messages
        .checked_div(options.poison)
        .map_or(usize::MAX, |every| every.max(1));
    let messages: Vec<OutgoingMessage> = (0..options.messages)
        .map(|i| {
            let kind = if i % poison_every == poison_every - 1 {
                "poison"
            } else {
                "order"
            };
            let generated = format!("{{\"{kind}\":{i}}}").into_bytes();
            OutgoingMessage {
                body: match (&body, kind) {
                    (Some(body), "order") => body.clone(),
                    _ => generated,
                },
                attributes: vec![("source".into(), "demo".into())],
                ordering_group: None,
                deduplication_id: None,
            }
        })
        .collect();
    let poison = messages
        .iter()
        .filter(|m| m.body.starts_with(b"{\"poison"))
        .count();
    let started = Instant::now();
    publish(provider, Some(&endpoint), &queue.publish_to, messages).await?;
    println!(
        "published {} messages ({poison} poison) in {:.1}s\n",
        options.messages,
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(options.timeout);
    let mut last = String::new();
    let summary = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = match client
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => continue,
        };
        let m = |series: &str| metric_value(&text, series).unwrap_or(0.0);
        let succeeded = m("ferry_messages_completed_total{outcome=\"succeeded\"");
        let retried = m("ferry_messages_completed_total{outcome=\"retried\"");
        let dead = m("ferry_messages_completed_total{outcome=\"dead_lettered\"");
        let age_sum = m("ferry_message_age_seconds_sum");
        let age_count = m("ferry_message_age_seconds_count").max(1.0);
        let line = format!(
            "t={:>4.0}s received={:>5} succeeded={:>5} retried={:>4} dead-lettered={:>3} in-flight={:>3} backlog={} dlq={} mean-age={:.2}s",
            started.elapsed().as_secs_f64(),
            m("ferry_messages_received_total"),
            succeeded,
            retried,
            dead,
            m("ferry_in_flight"),
            metric_value(&text, "ferry_queue_messages{state=\"visible\"")
                .map_or("n/a".into(), |v| v.to_string()),
            metric_value(&text, "ferry_dead_letter_messages")
                .map_or("n/a".into(), |v| v.to_string()),
            age_sum / age_count,
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        if succeeded + dead >= options.messages as f64 {
            break serde_json::json!({
                "provider": provider.as_str(),
                "published": options.messages,
                "succeeded": succeeded,
                "dead_lettered_by_ferry": dead,
                "retried": retried,
                "poison": poison,
                "seconds": started.elapsed().as_secs_f64(),
            });
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out after {}s; see the logs in {}",
                options.timeout,
                log_dir().display()
            );
        }
    };
    let dlq = ferry_queues::connect(&ConsumerTarget {
        provider,
        queue: queue.dead_letter.clone(),
        dead_letter: None,
        dead_letter_topic: None,
        endpoint: Some(endpoint.clone()),
        lease: Duration::from_secs(30),
        max_outstanding: 100,
        monitoring: None,
    })
    .await?;
    let mut in_dlq = 0;
    let peek_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < peek_until && in_dlq < poison {
        for m in dlq.receive(10, Duration::from_secs(1)).await? {
            in_dlq += 1;
            println!(
                "dead letter: {} (reason: {})",
                String::from_utf8_lossy(&m.body),
                m.attributes
                    .get("ferry-dead-letter-reason")
                    .map_or("", String::as_str)
            );
            dlq.release(vec![m.lease]).await?;
        }
    }
    dlq.close().await;
    println!("\n{summary}");
    anyhow::ensure!(
        in_dlq >= poison,
        "expected {poison} messages in the dead-letter queue, found {in_dlq}"
    );
    Ok(())
}

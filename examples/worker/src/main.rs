//! A worker that does what real workers do, on purpose: takes some time, fails now and then,
//! and rejects messages it can never process. Point `FERRY_DELIVERY_URL` at it.
//!
//! - 2xx after `--latency-ms` (± half, varying per message) for most deliveries;
//! - 500 for a `--failure-rate` fraction of deliveries (a transient failure: the retry of
//!   the same message is decided afresh, so it eventually succeeds);
//! - 422 for any body containing `--poison` (a permanent failure: list 422 in
//!   `FERRY_PERMANENT_FAILURE_STATUSES` and it goes to the dead-letter queue at once);
//! - 200 to a `GET` (a readiness check) while it is up;
//! - 503 to every request, `GET /ready` included, for the first `--ready-after-ms` after it
//!   starts listening (a worker that listens before it can work: point a readiness probe,
//!   or `FERRY_WORKER_READINESS_PATH`, at `/ready`);
//! - 503 to every request, `GET /ready` included, while the file `--down-while-file` names
//!   exists (an outage of what the worker depends on, on demand: `touch` it to take the
//!   worker's database away, remove it to bring it back).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "An example Ferry worker with configurable latency and failures"
)]
struct Options {
    /// Address to listen on.
    #[arg(long, env = "WORKER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Mean processing time per message, in milliseconds.
    #[arg(long, env = "WORKER_LATENCY_MS", default_value_t = 20)]
    latency_ms: u64,
    /// Fraction of deliveries (0.0-1.0) that fail with HTTP 500.
    #[arg(long, env = "WORKER_FAILURE_RATE", default_value_t = 0.0)]
    failure_rate: f64,
    /// Bodies containing this text are rejected with HTTP 422.
    #[arg(long, env = "WORKER_POISON", default_value = "poison")]
    poison: String,
    /// Answer 503 to everything for this many milliseconds after listening.
    #[arg(long, env = "WORKER_READY_AFTER_MS", default_value_t = 0)]
    ready_after_ms: u64,
    /// Answer 503 to everything while this file exists.
    #[arg(long, env = "WORKER_DOWN_WHILE_FILE")]
    down_while_file: Option<std::path::PathBuf>,
    /// Print one line per delivery: status, message id, attempt, latency, and when the
    /// delivery started (Unix milliseconds), which the sandbox reads to measure waits.
    #[arg(long, env = "WORKER_VERBOSE")]
    verbose: bool,
}

/// A number in [0, 1) that is the same for the same message and attempt, so runs repeat.
fn unit_hash(parts: impl Hash) -> f64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    (hasher.finish() % 1_000_000) as f64 / 1_000_000.0
}

struct Worker {
    options: Options,
    /// Until then, everything is answered 503 (`--ready-after-ms`).
    ready_at: std::time::Instant,
}

async fn work(
    State(worker): State<Arc<Worker>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let options = &worker.options;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let unavailable = if std::time::Instant::now() < worker.ready_at {
        Some("not_ready")
    } else if options.down_while_file.as_ref().is_some_and(|f| f.exists()) {
        Some("down")
    } else {
        None
    };
    if let Some(why) = unavailable {
        if options.verbose {
            println!(
                "503 message={} attempt={} path={} {why}",
                header("ferry-message-id"),
                header("ferry-delivery-attempt"),
                uri.path()
            );
        }
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if method == Method::GET {
        // A readiness check (`GET /ready`), not a message: up is all it asks.
        return StatusCode::OK;
    }
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let id = header("ferry-message-id");
    let attempt = header("ferry-delivery-attempt");
    let spread = unit_hash((&id, "latency"));
    let latency = Duration::from_millis((options.latency_ms as f64 * (0.5 + spread)) as u64);
    tokio::time::sleep(latency).await;
    let status =
        if !options.poison.is_empty() && String::from_utf8_lossy(&body).contains(&options.poison) {
            StatusCode::UNPROCESSABLE_ENTITY
        } else if unit_hash((&id, &attempt, "failure")) < options.failure_rate {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
    if options.verbose {
        // A periodic task's message comes to its own path, named in Ferry-Task-Name.
        let task = header("ferry-task-name");
        let task = if task.is_empty() {
            String::new()
        } else {
            format!(" task={}", one_word(&task))
        };
        println!(
            "{} message={id} attempt={attempt} latency={latency:?} started_ms={started_ms} path={}{task} body={}",
            status.as_u16(),
            uri.path(),
            one_word(&String::from_utf8_lossy(&body))
        );
    }
    status
}

/// The first 100 characters on one word, for the verbose line (the body's: the sandbox
/// matches deliveries to what it published by content, not by the ids the publisher was
/// given).
fn one_word(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = Options::parse();
    assert!(
        (0.0..=1.0).contains(&options.failure_rate),
        "--failure-rate must be between 0 and 1"
    );
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", options.listen));
    // The bound address, not the requested one: with port 0 the kernel picks it, and this
    // line is how whoever started the worker learns it.
    let bound = listener.local_addr().unwrap_or(options.listen);
    eprintln!("example worker listening on http://{bound}/");
    let ready_at = std::time::Instant::now() + Duration::from_millis(options.ready_after_ms);
    let worker = Arc::new(Worker { options, ready_at });
    let app = axum::Router::new().fallback(work).with_state(worker);
    axum::serve(listener, app).await.expect("serve");
}

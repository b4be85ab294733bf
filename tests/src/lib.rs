//! The test harness: real emulators (Google's Pub/Sub emulator, moto's SQS server), a
//! programmable HTTP worker, and the `ferry-consumer` process.
//!
//! Every service is started here, on 127.0.0.1, and a test that cannot get one fails with
//! a message that says how to install it. Nothing is skipped.

pub mod cluster;
pub mod emulators;
pub mod helm;
pub mod monitoring;
pub mod prometheus;
pub mod sandbox;
pub mod scalebench;
pub mod sidecar;
pub mod worker;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A directory for logs of the processes a test starts, kept after the run for debugging.
pub fn log_dir() -> PathBuf {
    let dir = repo_root().join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("create target/test-logs");
    dir
}

/// A binary of another workspace package, built next to the running test or program (`cargo test
/// --workspace` builds every package's binaries before any test runs). Panics with the
/// command that builds it when it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's own path");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let mut profile_dir = exe.parent().expect("a program lives in a directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("deps/ has a parent");
    }
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build it first (`cargo build --bin {name}`, or run `cargo test --workspace`)",
        binary.display()
    );
    binary
}

/// A port nobody listens on right now, and one this process has not handed out before: the
/// kernel may offer a port again as soon as its probe socket closes, and two tests running
/// side by side would then start their servers on the same port.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind an ephemeral port")
            .local_addr()
            .expect("local addr")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A name no other test in this run uses.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs each scenario `async fn name(provider: Provider)` as two tests, `name::sqs` and
/// `name::pubsub`, so every behaviour is pinned on both providers.
#[macro_export]
macro_rules! for_both_providers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqs() {
                super::$scenario(ferry_queues::Provider::Sqs).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pubsub() {
                super::$scenario(ferry_queues::Provider::PubSub).await
            }
        }
    )*};
}

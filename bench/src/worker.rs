//! The worker every consumer delivers to: answers 200 at once or after a set delay, counts
//! requests, and (while latency is being recorded) notes when each request started, keyed
//! by the message number in its body (`{"n":<number>,...}`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

pub struct Shared {
    pub delay_ms: AtomicU64,
    pub requests: AtomicU64,
    recorded: Mutex<Option<HashMap<u64, u64>>>,
}

#[derive(Clone)]
pub struct Worker {
    pub shared: Arc<Shared>,
    pub port: u16,
}

impl Worker {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            recorded: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("worker stopped: {e}");
            }
        });
        Ok(Self { shared, port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/work", self.port)
    }

    pub fn set_delay(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Starts (or stops) recording request start times; returns what was recorded so far.
    pub fn record_latency(&self, on: bool) -> HashMap<u64, u64> {
        let mut recorded = self.shared.recorded.lock().expect("record lock");
        let previous = recorded.take().unwrap_or_default();
        if on {
            *recorded = Some(HashMap::new());
        }
        previous
    }

    pub fn recorded_count(&self) -> usize {
        self.shared
            .recorded
            .lock()
            .expect("record lock")
            .as_ref()
            .map_or(0, HashMap::len)
    }
}

pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// The message number in a body `{"n":<number>,...}`.
pub fn message_number(body: &[u8]) -> Option<u64> {
    let start = body.windows(4).position(|w| w == b"\"n\":")? + 4;
    let digits = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&body[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

async fn handle(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let started = unix_nanos();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(recorded) = shared.recorded.lock().expect("record lock").as_mut()
        && let Some(n) = message_number(&body)
    {
        recorded.entry(n).or_insert(started);
    }
    let delay = shared.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_message_number() {
        assert_eq!(message_number(br#"{"n":42,"pad":"xx"}"#), Some(42));
        assert_eq!(message_number(br#"{"pad":"xx"}"#), None);
    }
}

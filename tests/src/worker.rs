//! A worker for tests: a real HTTP server whose answers a test scripts per delivery, and
//! which records every request it gets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio::task::JoinHandle;

/// What the worker answers to one delivery.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::ok()
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request the worker received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message_id: String,
    /// The request's path and query.
    pub path: String,
    pub body: String,
    pub headers: BTreeMap<String, String>,
    pub started: Instant,
    /// The status it answered with, once it did.
    pub answered: Option<u16>,
    /// How many times this message id had been seen, this one included.
    pub seen: usize,
}

type Behaviour = Arc<dyn Fn(&Delivery) -> Reply + Send + Sync>;

#[derive(Default)]
struct Record {
    deliveries: Vec<Delivery>,
    seen: HashMap<String, usize>,
    active_groups: HashSet<String>,
    /// Ordering keys that had two deliveries in progress at once.
    overlapping_groups: Vec<String>,
}

struct WorkerState {
    behaviour: Behaviour,
    record: Mutex<Record>,
}

pub struct Worker {
    pub port: u16,
    state: Arc<WorkerState>,
    server: JoinHandle<()>,
}

impl Worker {
    pub async fn start(behaviour: impl Fn(&Delivery) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(crate::free_port(), behaviour).await
    }

    pub async fn start_on(
        port: u16,
        behaviour: impl Fn(&Delivery) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = Arc::new(WorkerState {
            behaviour: Arc::new(behaviour),
            record: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the test worker");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("test worker serves");
        });
        Self {
            port,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/work", self.port)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state
            .record
            .lock()
            .expect("record lock")
            .deliveries
            .clone()
    }

    /// Message ids answered with 2xx, in the order the answers were given.
    pub fn succeeded_ids(&self) -> Vec<String> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.answered.is_some_and(|s| (200..300).contains(&s)))
            .map(|d| d.message_id)
            .collect()
    }

    pub fn times_seen(&self, message_id: &str) -> usize {
        self.state
            .record
            .lock()
            .expect("record lock")
            .seen
            .get(message_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn overlapping_groups(&self) -> Vec<String> {
        self.state
            .record
            .lock()
            .expect("record lock")
            .overlapping_groups
            .clone()
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(state): State<Arc<WorkerState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let message_id = headers.get("ferry-message-id").cloned().unwrap_or_default();
    let group = headers.get("ferry-ordering-key").cloned();
    let (index, delivery) = {
        let mut record = state.record.lock().expect("record lock");
        let seen = {
            let count = record.seen.entry(message_id.clone()).or_default();
            *count += 1;
            *count
        };
        if let Some(group) = &group
            && !record.active_groups.insert(group.clone())
        {
            record.overlapping_groups.push(group.clone());
        }
        let delivery = Delivery {
            message_id,
            path: uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
            started: Instant::now(),
            answered: None,
            seen,
        };
        record.deliveries.push(delivery.clone());
        (record.deliveries.len() - 1, delivery)
    };
    let reply = (state.behaviour)(&delivery);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    {
        let mut record = state.record.lock().expect("record lock");
        record.deliveries[index].answered = Some(reply.status);
        if let Some(group) = &group {
            record.active_groups.remove(group);
        }
    }
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    let mut response = (status, "").into_response();
    if let Some(after) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().expect("a valid header"));
    }
    response
}

//! A stand-in for Cloud Monitoring's `projects.timeSeries.list`, which has no emulator: it
//! answers the documented JSON shape with the values a test sets, and records the filters
//! it was asked for. A filter that names a subscription gets that subscription's series; one
//! that names only the metric (the operator's read of a whole project) gets a series for
//! every subscription with a value for that metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Values {
    /// (metric type, subscription id) → value
    points: HashMap<(String, String), i64>,
    filters: Vec<String>,
}

pub struct FakeMonitoring {
    pub port: u16,
    values: Arc<Mutex<Values>>,
    server: JoinHandle<()>,
}

impl FakeMonitoring {
    pub async fn start() -> Self {
        let values = Arc::new(Mutex::new(Values::default()));
        let app = axum::Router::new()
            .fallback(list_time_series)
            .with_state(values.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            port,
            values,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, metric: &str, subscription_id: &str, value: i64) {
        self.values
            .lock()
            .expect("lock")
            .points
            .insert((metric.to_string(), subscription_id.to_string()), value);
    }

    pub fn filters(&self) -> Vec<String> {
        self.values.lock().expect("lock").filters.clone()
    }

    /// How many `timeSeries.list` calls were answered so far.
    pub fn calls(&self) -> usize {
        self.values.lock().expect("lock").filters.len()
    }
}

impl Drop for FakeMonitoring {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn quoted_after<'a>(filter: &'a str, key: &str) -> Option<&'a str> {
    let rest = &filter[filter.find(key)? + key.len()..];
    let rest = rest.strip_prefix("=\"")?;
    Some(&rest[..rest.find('"')?])
}

async fn list_time_series(
    State(values): State<Arc<Mutex<Values>>>,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let filter = query.get("filter").cloned().unwrap_or_default();
    let mut values = values.lock().expect("lock");
    values.filters.push(filter.clone());
    let metric = quoted_after(&filter, "metric.type")
        .unwrap_or_default()
        .to_string();
    let subscription = quoted_after(&filter, "resource.labels.subscription_id")
        .unwrap_or_default()
        .to_string();
    let series = |subscription: &str, value: i64| {
        serde_json::json!({
            "resource": {"type": "pubsub_subscription", "labels": {"subscription_id": subscription}},
            "points": [{ "value": { "int64Value": value.to_string() } }]
        })
    };
    let body = if filter.contains("resource.labels.subscription_id") {
        match values.points.get(&(metric, subscription.clone())) {
            Some(&value) => serde_json::json!({ "timeSeries": [series(&subscription, value)] }),
            None => serde_json::json!({}),
        }
    } else {
        let all: Vec<_> = values
            .points
            .iter()
            .filter(|((m, _), _)| *m == metric)
            .map(|((_, subscription), &value)| series(subscription, value))
            .collect();
        serde_json::json!({ "timeSeries": all })
    };
    axum::Json(body)
}

//! `/metrics`, `/healthz`, `/readyz`, `/drain`, `/drained` and `/rate-limit` on
//! FERRY_LISTEN_ADDR.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::ControlToken;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pump::Pump;

#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub pump: Arc<Pump>,
    pub drain_timeout: Duration,
    /// `FERRY_CONTROL_TOKEN`: what `/drain` and `PUT /rate-limit` need; `None`, nothing.
    pub control_token: Option<Arc<ControlToken>>,
}

impl ServerState {
    /// The answer to a request that may not stop this sidecar or change its rate, or `None`
    /// when it may: it must carry `Authorization: Bearer <FERRY_CONTROL_TOKEN>` when there
    /// is one. Whoever reaches the metrics port may read; only those who know the token act.
    fn refusal(&self, headers: &HeaderMap, action: &str) -> Option<Response> {
        let expected = self.control_token.as_ref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same_secret(given.as_bytes(), expected.0.as_bytes()) {
            return None;
        }
        tracing::warn!("refused a request to {action} without the control token");
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Bearer"),
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                ],
                format!(
                    "To {action}, send the header Authorization: Bearer <FERRY_CONTROL_TOKEN>.\n"
                ),
            )
                .into_response(),
        )
    }
}

/// Compares without stopping at the first difference, so the time taken tells nothing of
/// how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differs, (a, b)| differs | (a ^ b))
            == 0
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // GET too, because a preStop httpGet hook can only GET.
        .route("/drain", get(drain).post(drain))
        .route("/drained", get(drained))
        .route("/rate-limit", get(rate_limit).put(set_rate_limit))
        .with_state(state)
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Stops receiving and answers once in-flight deliveries are done (or the drain timeout
/// passed), so a preStop hook holds the pod until its work is finished.
async fn drain(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    if let Some(refused) = state.refusal(&headers, "drain") {
        return refused;
    }
    drain_answer(state.pump.drain(state.drain_timeout).await)
}

/// How long `/drained` waits for a drain to begin. On a pod being deleted the sidecar's
/// SIGTERM comes at the same moment as the worker's preStop hook that asks.
pub const DRAIN_BEGIN_PATIENCE: Duration = Duration::from_secs(10);

/// Answers once this sidecar has drained, without starting a drain: the worker containers'
/// preStop hook, which keeps the worker serving until the sidecar, stopped by its own
/// SIGTERM, has finished what it delivers. It changes nothing, so it needs no token, and the
/// pod spec carries none. When no drain begins (the worker alone is restarting), it says so
/// and lets the worker go.
async fn drained(State(state): State<ServerState>) -> Response {
    match state.pump.until_drained(DRAIN_BEGIN_PATIENCE).await {
        Some(report) => drain_answer(report),
        None => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "This sidecar is not draining (no SIGTERM or /drain within {}s), so there is \
                 nothing to wait for: the worker may stop; the sidecar goes on delivering \
                 once it is back.\n",
                DRAIN_BEGIN_PATIENCE.as_secs()
            ),
        )
            .into_response(),
    }
}

/// `200 {"drained":true,"in_flight":0}`, or 504 with the deliveries the drain timeout cut.
fn drain_answer(report: crate::pump::DrainReport) -> Response {
    let status = if report.drained {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let body =
        serde_json::json!({ "drained": report.drained, "in_flight": report.still_in_flight });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The current limit, as `PUT /rate-limit` answers it.
async fn rate_limit(State(state): State<ServerState>) -> impl IntoResponse {
    rate_limit_answer(state.pump.rate_limit())
}

/// A plain-text body: a positive number of deliveries per second, or `none`. The operator
/// uses it to give each pod its share of `spec.delivery.maxPerSecond`.
async fn set_rate_limit(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(refused) = state.refusal(&headers, "change the rate limit") {
        return refused;
    }
    let body = body.trim();
    let per_second = if body.eq_ignore_ascii_case("none") {
        None
    } else if let Some(rate) = crate::rate_limit::parse_per_second(body) {
        Some(rate)
    } else {
        let accepted = crate::rate_limit::ACCEPTED;
        let body: String = body.chars().take(64).collect();
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("The body must be {accepted}, or none to remove the limit; got {body:?}.\n"),
        )
            .into_response();
    };
    state.pump.set_rate_limit(per_second);
    rate_limit_answer(per_second).into_response()
}

fn rate_limit_answer(per_second: Option<f64>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "rate_limit_per_second": per_second }).to_string(),
    )
}

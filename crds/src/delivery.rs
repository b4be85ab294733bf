//! `spec.delivery`: how the sidecar hands messages to the worker (the worker contract).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// `spec.delivery`: the sidecar POSTs each message to `http://127.0.0.1:<port><path>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// HTTP path the worker accepts messages on.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("spec.delivery.path must start with '/'"))]
    pub path: String,
    /// Port the worker listens on, on the pod's loopback (1-65535, not 9090, which the
    /// sidecar uses).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 9090").message("spec.delivery.port 9090 is the ferry-consumer sidecar's own port; the worker must listen on another"))]
    pub port: i32,
    /// Most messages delivered to one pod's worker at once (1-1000).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: i32,
    /// Seconds the worker may take for one message (1-43200); past it the delivery counts as
    /// failed and is retried. Pods get this long to finish in-flight work when they stop.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 43200))]
    pub timeout_seconds: i32,
    /// `Content-Type` header of deliveries.
    #[serde(default = "default_content_type")]
    #[schemars(length(min = 1, max = 255))]
    pub content_type: String,
    /// Worker answers (400-599) that mean "this message will never succeed": the sidecar sends
    /// it to the dead-letter queue at once instead of retrying. 2xx means success and can never
    /// be listed. Example: `[400, 422]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200), inner(range(min = 400, max = 599)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub permanent_failure_statuses: Vec<i32>,
    /// The sidecar's wait before retrying a failed delivery: `minSeconds` doubled per attempt,
    /// capped at `maxSeconds`, with jitter; a worker's `Retry-After` takes precedence.
    #[serde(default)]
    pub retry_backoff: RetryBackoff,
    /// A path on the worker's port that answers 200-399 once it can take messages (`/ready`),
    /// as a readiness probe does:
    /// the sidecar receives nothing until it does, at start and after the worker stopped
    /// listening, so a worker that listens before it can work spends no message's delivery
    /// on its start. Unset: the worker container's HTTP readiness probe on this port, if it
    /// has one; else accepting a connection is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains(' ')").message("spec.delivery.readinessPath must be a URL path starting with '/', such as /ready"))]
    pub readiness_path: Option<String>,
    /// Most deliveries per second to the worker across all its pods, retries included, for a
    /// worker that calls an API with a rate limit (fractions allowed, 0.001-1000000). The
    /// operator shares it among the running pods, and scales no further than it lets them
    /// deliver: messages beyond it wait in the queue, not in the pods. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 1000000))]
    pub max_per_second: Option<f64>,
}

/// `spec.delivery.retryBackoff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minSeconds <= self.maxSeconds").message("spec.delivery.retryBackoff.minSeconds must not exceed maxSeconds")
)]
pub struct RetryBackoff {
    /// Seconds before the first retry (0-43200, fractions allowed).
    #[serde(default = "default_backoff_min")]
    #[schemars(range(min = 0, max = 43200))]
    pub min_seconds: f64,
    /// Longest wait between retries, seconds (0-43200; an SQS visibility timeout cannot be
    /// longer).
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 0, max = 43200))]
    pub max_seconds: f64,
}

// The defaults are the sidecar's own (docs/consumer.md), so an empty `delivery` block behaves
// like a sidecar started without flags.
fn default_path() -> String {
    "/".into()
}
fn default_port() -> i32 {
    8080
}
fn default_concurrency() -> i32 {
    10
}
fn default_timeout_seconds() -> i32 {
    60
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_backoff_min() -> f64 {
    2.0
}
fn default_backoff_max() -> f64 {
    300.0
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            min_seconds: default_backoff_min(),
            max_seconds: default_backoff_max(),
        }
    }
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            path: default_path(),
            port: default_port(),
            concurrency: default_concurrency(),
            timeout_seconds: default_timeout_seconds(),
            content_type: default_content_type(),
            permanent_failure_statuses: Vec::new(),
            retry_backoff: RetryBackoff::default(),
            readiness_path: None,
            max_per_second: None,
        }
    }
}

//! What the builders need besides the QueueConsumer: the operator's installation settings and
//! the identifiers of the queues the reconciler provisioned.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_crds::QueueConsumerStatus;
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A few seconds: quick enough to meet a burst, slow enough that polling 1,000 consumers
/// stays cheap.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Operator-wide settings that shape every worker pod (from the Helm values / flags).
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// The ferry-consumer image, unless a QueueConsumer overrides it in `spec.sidecar.image`.
    pub sidecar_image: String,
    /// `imagePullPolicy` of the sidecar; `None` keeps Kubernetes' default for the tag.
    pub sidecar_image_pull_policy: Option<String>,
    /// Sidecar resources unless `spec.sidecar.resources` sets them.
    pub sidecar_resources: ResourceRequirements,
    /// `FERRY_ENDPOINT` of SQS sidecars: an SQS-compatible server, for local clusters and
    /// tests; `None` in production.
    pub sqs_endpoint: Option<String>,
    /// `FERRY_ENDPOINT` of Pub/Sub sidecars: the Pub/Sub emulator (`host:port`); `None` in
    /// production.
    pub pubsub_endpoint: Option<String>,
    /// `FERRY_LOG_FORMAT` of the sidecar: `json` for log collectors, `text` for people.
    pub sidecar_log_format: String,
    /// Extra environment for every sidecar (e.g. credentials of a local SQS-compatible
    /// server); appended after Ferry's own variables, so they cannot replace them.
    pub sidecar_extra_env: Vec<EnvVar>,
    /// How often the autoscaler polls the sidecars; they refresh the queue's statistics
    /// (`FERRY_STATS_INTERVAL`) as often, so every poll sees fresh counts.
    pub poll_interval: Duration,
    /// Pods of this cluster share one network namespace (devcluster runs every pod as a
    /// process on one host). Sidecars then listen on, and deliver to, the pod's own IP
    /// instead of `0.0.0.0` and `127.0.0.1`, which would collide between pods.
    pub pods_share_network: bool,
    /// Pub/Sub sidecars read their backlog from Cloud Monitoring (`FERRY_PUBSUB_MONITORING`).
    pub pubsub_monitoring: Option<ferry_queues::monitoring::MonitoringConfig>,
    /// Annotations every worker ServiceAccount Ferry creates starts with (one cloud identity
    /// for all consumers of a cluster); `spec.serviceAccount.annotations` wins per key.
    pub worker_service_account_annotations: BTreeMap<String, String>,
    /// The key each consumer's control token is derived with (`--control-key-secret`);
    /// `None`, a plain hash of the consumer's UID (`builders::control_token`).
    pub control_key: Option<ControlKey>,
}

/// The operator's secret key for control tokens. Never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlKey(Vec<u8>);

impl ControlKey {
    /// At least 32 bytes: an HMAC-SHA256 key shorter than its output weakens it.
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < 32 {
            return Err(format!(
                "the control key must be at least 32 bytes, got {}",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(…)")
    }
}

impl OperatorSettings {
    pub fn new(sidecar_image: impl Into<String>) -> Self {
        Self {
            sidecar_image: sidecar_image.into(),
            sidecar_image_pull_policy: None,
            sidecar_resources: default_sidecar_resources(),
            sqs_endpoint: None,
            pubsub_endpoint: None,
            sidecar_log_format: "json".into(),
            sidecar_extra_env: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            pods_share_network: false,
            pubsub_monitoring: None,
            worker_service_account_annotations: BTreeMap::new(),
            control_key: None,
        }
    }
}

/// The sidecar mostly waits on the network: a small CPU request, and a memory limit because
/// it buffers at most `2 × concurrency` messages (Pub/Sub flow control).
fn default_sidecar_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_string(), Quantity("256Mi".into()))].into()),
        ..ResourceRequirements::default()
    }
}

/// The provisioned queue identifiers the sidecar is configured with (the reconciler learns
/// them from provisioning and records them in `status.queue` / `status.deadLetter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedNames {
    /// `FERRY_QUEUE`: the SQS queue URL, or `projects/<p>/subscriptions/<s>`.
    pub queue: String,
    /// `FERRY_DEAD_LETTER`: the DLQ URL, or the dead-letter topic's subscription path.
    pub dead_letter: Option<String>,
    /// `FERRY_DEAD_LETTER_TOPIC` (Pub/Sub): where permanent failures are published; the
    /// sidecar reads it from the subscription's dead-letter policy when unset.
    pub dead_letter_topic: Option<String>,
}

impl ProvisionedNames {
    /// The names recorded in `status.queue` / `status.deadLetter`, so a reconcile that did not
    /// provision (nothing changed) still builds the same sidecar. `None` before the queue was
    /// ever provisioned.
    pub fn from_status(status: &QueueConsumerStatus) -> Option<Self> {
        let queue = status.queue.as_ref()?;
        let dead_letter = status.dead_letter.as_ref();
        Some(Self {
            queue: queue.id.clone(),
            dead_letter: dead_letter.map(|d| d.id.clone()),
            dead_letter_topic: dead_letter.and_then(|d| d.topic.clone()),
        })
    }
}

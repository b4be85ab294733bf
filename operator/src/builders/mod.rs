//! The pure build step: a `QueueConsumer` in, the desired child objects out. No client, no
//! clock, no randomness, so that the reconciler only orchestrates (read → build → apply →
//! status) and every rule about what the children look like is a plain unit test.

mod conditions;
mod deployment;
mod metadata;
mod scaling;
mod security;
mod service_account;
mod settings;
mod sidecar;
mod sidecar_secret;

pub use conditions::{ConditionStatus, ConditionUpdate, ready_summary, set_condition};
pub use deployment::{BuildError, CONTROL_TOKEN_ANNOTATION, desired_deployment};
pub use metadata::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, QUEUE_CONSUMER_LABEL, child_labels, owner_reference,
    selector_labels, worker_name,
};
pub use scaling::autoscaler_spec;
pub use service_account::desired_service_account;
pub use settings::ControlKey;
pub use settings::{DEFAULT_POLL_INTERVAL, OperatorSettings, ProvisionedNames};
pub use sidecar::{
    DRAINED_PATH, LIVENESS_PATH, METRICS_PORT, METRICS_PORT_NAME, READINESS_PATH, SIDECAR_NAME,
    drain_timeout_seconds, sidecar_env, sidecar_threads,
};
pub use sidecar_secret::{
    CONTROL_TOKEN_KEY, RATE_LIMIT_KEY, control_header, control_token, control_token_fingerprint,
    desired_sidecar_secret, sidecar_secret_name,
};

#[cfg(test)]
mod tests;

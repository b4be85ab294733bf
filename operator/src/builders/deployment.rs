//! The worker Deployment: `spec.worker` with the sidecar injected.

use std::collections::BTreeMap;

use ferry_crds::QueueConsumer;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::metadata::{child_labels, child_metadata, selector_labels, worker_name};
use super::security::{restrict_container, restrict_pod};
use super::settings::{OperatorSettings, ProvisionedNames};
use super::sidecar::{
    METRICS_PORT, SIDECAR_NAME, drain_timeout_seconds, sidecar_container, worker_stop_hook,
};
use super::sidecar_secret::{control_token, control_token_fingerprint};

/// Seconds past the drain timeout before the kubelet kills the pod: the preStop hooks answer
/// at the drain timeout at the latest, then the containers still get SIGTERM and exit.
const TERMINATION_MARGIN_SECONDS: i64 = 15;

/// Makes `kubectl logs` and `kubectl exec` pick the worker rather than asking which container.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// A fingerprint of the control token the pods read from the sidecar Secret, so that a new
/// operator key (hence a new token) rolls them.
pub const CONTROL_TOKEN_ANNOTATION: &str = "ferry.dev/control-token-sha256";

/// A `spec.worker` the builder cannot turn into a valid Deployment. The CRD's rules reject
/// most bad templates at admission; these are the conflicts only the builder can see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("spec.worker.spec.containers is empty: the worker needs at least one container")]
    NoWorkerContainer,
    #[error(
        "spec.worker container {container:?} uses the name {SIDECAR_NAME:?}, which Ferry gives the injected sidecar; rename it"
    )]
    SidecarNameTaken { container: String },
    #[error(
        "spec.worker container {container:?} listens on port {METRICS_PORT}, which the ferry-consumer sidecar uses in the same pod; use another port"
    )]
    MetricsPortTaken { container: String },
}

impl BuildError {
    /// The `reason` label of `ferry_reconcile_errors_total` and the condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoWorkerContainer => "NoWorkerContainer",
            Self::SidecarNameTaken { .. } => "SidecarNameTaken",
            Self::MetricsPortTaken { .. } => "MetricsPortTaken",
        }
    }
}

fn check_worker_containers(containers: &[Container]) -> Result<(), BuildError> {
    if containers.is_empty() {
        return Err(BuildError::NoWorkerContainer);
    }
    for c in containers {
        if c.name == SIDECAR_NAME {
            return Err(BuildError::SidecarNameTaken {
                container: c.name.clone(),
            });
        }
        let ports = c.ports.iter().flatten();
        if ports.into_iter().any(|p| p.container_port == METRICS_PORT) {
            return Err(BuildError::MetricsPortTaken {
                container: c.name.clone(),
            });
        }
    }
    Ok(())
}

/// `protocol` is part of the ports list's merge key (`containerPort`, `protocol`). Sent
/// without it, a server that merges before defaulting sees a new port on every apply and
/// appends a duplicate; spelling out the default makes the key match what is stored.
fn default_port_protocols(container: &mut Container) {
    for port in container.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// The worker Deployment `<name>-worker`: the user's pod template, restricted security
/// settings filled in where unset, a preStop drain hook on worker containers that have none,
/// the ferry-consumer sidecar appended, Ferry's labels and the owner reference.
pub fn desired_deployment(
    qc: &QueueConsumer,
    settings: &OperatorSettings,
    names: &ProvisionedNames,
) -> Result<Deployment, BuildError> {
    let template = &qc.spec.worker;
    let mut pod: PodSpec = template.spec.clone().unwrap_or_default();
    check_worker_containers(&pod.containers)?;
    let first_worker = pod.containers[0].name.clone();

    restrict_pod(&mut pod);
    for c in pod.init_containers.iter_mut().flatten() {
        restrict_container(c);
        default_port_protocols(c);
    }
    for c in &mut pod.containers {
        restrict_container(c);
        default_port_protocols(c);
        // Without it the worker would get SIGTERM while the sidecar is still delivering to
        // it; with it, the worker stops only after the sidecar has drained.
        let lifecycle = c.lifecycle.get_or_insert_with(Default::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = worker_stop_hook().pre_stop;
        }
    }
    // A regular container, not a native (init) sidecar: Kubernetes stops native sidecars
    // after the main containers, but this one must drain before the worker goes.
    pod.containers.push(sidecar_container(qc, settings, names));

    if pod.service_account_name.is_none() {
        pod.service_account_name = Some(worker_name(qc));
    }
    let grace = drain_timeout_seconds(qc) + TERMINATION_MARGIN_SECONDS;
    pod.termination_grace_period_seconds = Some(
        pod.termination_grace_period_seconds
            .map_or(grace, |user| user.max(grace)),
    );

    let user_meta = template.metadata.clone().unwrap_or_default();
    let mut pod_labels = user_meta.labels.unwrap_or_default();
    pod_labels.extend(child_labels(qc));
    let mut pod_annotations = user_meta.annotations.unwrap_or_default();
    pod_annotations
        .entry(DEFAULT_CONTAINER_ANNOTATION.into())
        .or_insert(first_worker);
    if let Some(token) = control_token(qc, settings) {
        pod_annotations.insert(
            CONTROL_TOKEN_ANNOTATION.into(),
            control_token_fingerprint(&token),
        );
    }

    Ok(Deployment {
        metadata: child_metadata(qc, worker_name(qc)),
        spec: DeploymentSpec {
            // Deliberately unset: the autoscaler owns the replica count and writes it through
            // the Deployment's scale subresource. If the applied object named a count, every
            // apply would fight the autoscaler. (A new Deployment starts at 1, or at 0 when its
            // QueueConsumer is created suspended, see `controller::create_at_zero`; the
            // autoscaler takes it from there, to 0 if the queue is idle.)
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector_labels(qc)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations).filter(|a: &BTreeMap<_, _>| !a.is_empty()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

//! The injected `ferry-consumer` container, configured per its contract (docs/consumer.md).

use ferry_crds::{QueueConsumer, QueueProvider};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Probe, ResourceRequirements, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::security::sidecar_security_context;
use super::settings::{OperatorSettings, ProvisionedNames};
use super::sidecar_secret::{
    CONTROL_TOKEN_KEY, RATE_LIMIT_KEY, control_token, sidecar_secret_name,
};

pub const SIDECAR_NAME: &str = "ferry-consumer";
/// `/metrics`, `/healthz`, `/readyz`, `/drain` and `/drained` (`FERRY_LISTEN_ADDR`).
pub const METRICS_PORT: i32 = 9090;
/// The autoscaler and Prometheus find the sidecars' metrics by this port name.
pub const METRICS_PORT_NAME: &str = "metrics";
pub const READINESS_PATH: &str = "/readyz";
pub const LIVENESS_PATH: &str = "/healthz";
/// Answers once the sidecar has drained, starting nothing: the worker containers' preStop
/// hook. (`/drain`, which starts a drain, needs the control token, which a hook would have
/// to carry in the pod spec.)
pub const DRAINED_PATH: &str = "/drained";

/// The sidecar's SQS long poll (`FERRY_RECEIVE_WAIT_SECONDS`' default): a drain lets a
/// pending poll answer and hands its messages back, so it may take this long.
const LONG_POLL_SECONDS: i64 = 20;

/// Seconds in-flight deliveries get when a pod stops: as long as one delivery may take (and
/// at least one long poll), so a removed pod finishes its work instead of leaving it to be
/// redelivered after the lease.
pub fn drain_timeout_seconds(qc: &QueueConsumer) -> i64 {
    i64::from(qc.spec.delivery.timeout_seconds.max(1)).max(LONG_POLL_SECONDS)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A variable read from the consumer's sidecar Secret when the container starts: a value the
/// operator changes there reaches the pods it starts next without rolling the running ones.
fn secret_env(qc: &QueueConsumer, name: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: sidecar_secret_name(qc),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Integral seconds print without a fraction, so the env does not change form between
/// releases (server-side apply would report every such change as a diff).
fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as i64)
    } else {
        s.to_string()
    }
}

/// What tells the sidecar the worker can take messages: `spec.delivery.readinessPath`, or
/// else the path of a worker container's HTTP readiness probe on the delivery port, the one
/// the kubelet already asks, so a worker that says when it is ready is waited for without
/// saying it twice. A probe the sidecar could not ask as the kubelet does (another host,
/// HTTPS, headers of its own) is not used: the sidecar would wait for an answer it cannot get.
pub fn worker_readiness_path(qc: &QueueConsumer) -> Option<String> {
    let delivery = &qc.spec.delivery;
    if let Some(path) = &delivery.readiness_path {
        return Some(path.clone());
    }
    qc.spec
        .worker
        .spec
        .as_ref()?
        .containers
        .iter()
        .find_map(|container| {
            let get = container.readiness_probe.as_ref()?.http_get.as_ref()?;
            let on_delivery_port = match &get.port {
                IntOrString::Int(port) => *port == delivery.port,
                IntOrString::String(name) => container.ports.iter().flatten().any(|port| {
                    port.name.as_deref() == Some(name.as_str())
                        && port.container_port == delivery.port
                }),
            };
            let as_the_kubelet = get.host.is_none()
                && get
                    .scheme
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case("HTTP"))
                && get.http_headers.as_ref().is_none_or(Vec::is_empty);
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            (on_delivery_port && as_the_kubelet && path.starts_with('/')).then_some(path)
        })
}

/// The sidecar's environment, in a fixed order (a reordering would be a spurious rollout).
pub fn sidecar_env(
    qc: &QueueConsumer,
    settings: &OperatorSettings,
    names: &ProvisionedNames,
) -> Vec<EnvVar> {
    let delivery = &qc.spec.delivery;
    let mut vars = vec![
        env("FERRY_PROVIDER", qc.spec.queue.provider.as_str()),
        env("FERRY_QUEUE", names.queue.clone()),
    ];
    if let Some(dlq) = &names.dead_letter {
        vars.push(env("FERRY_DEAD_LETTER", dlq.clone()));
    }
    if let Some(topic) = &names.dead_letter_topic {
        vars.push(env("FERRY_DEAD_LETTER_TOPIC", topic.clone()));
    }
    let endpoint = match qc.spec.queue.provider {
        QueueProvider::Sqs => &settings.sqs_endpoint,
        QueueProvider::Pubsub => &settings.pubsub_endpoint,
    };
    if let Some(endpoint) = endpoint {
        vars.push(env("FERRY_ENDPOINT", endpoint.clone()));
    }
    // The worker shares the pod's network namespace; loopback keeps deliveries off the
    // network. Where pods share the host's network, the pod IP is the pod's own address.
    let (listen_host, worker_host) = if settings.pods_share_network {
        vars.push(pod_ip_env());
        ("$(POD_IP)", "$(POD_IP)")
    } else {
        ("0.0.0.0", "127.0.0.1")
    };
    vars.push(env(
        "FERRY_DELIVERY_URL",
        format!("http://{worker_host}:{}{}", delivery.port, delivery.path),
    ));
    if let Some(path) = worker_readiness_path(qc) {
        vars.push(env("FERRY_WORKER_READINESS_PATH", path));
    }
    if control_token(qc, settings).is_some() {
        vars.push(secret_env(
            qc,
            "FERRY_CONTROL_TOKEN",
            CONTROL_TOKEN_KEY,
            false,
        ));
    }
    vars.push(env("FERRY_CONCURRENCY", delivery.concurrency.to_string()));
    vars.push(env(
        "FERRY_THREADS",
        sidecar_threads(&sidecar_resources(qc, settings)).to_string(),
    ));
    vars.push(env(
        "FERRY_DELIVERY_TIMEOUT",
        delivery.timeout_seconds.to_string(),
    ));
    vars.push(env("FERRY_CONTENT_TYPE", delivery.content_type.clone()));
    if !delivery.permanent_failure_statuses.is_empty() {
        let mut statuses = delivery.permanent_failure_statuses.clone();
        statuses.sort_unstable();
        statuses.dedup();
        let list: Vec<String> = statuses.iter().map(i32::to_string).collect();
        vars.push(env("FERRY_PERMANENT_FAILURE_STATUSES", list.join(",")));
    }
    // A pod starts at its share of `maxPerSecond` at maxReplicas, from the Secret, so that
    // setting, changing or removing the limit (or maxReplicas) rolls no pod; the autoscaler
    // tells each running pod its share of the count there is (autoscaler::rate_share).
    vars.push(secret_env(qc, "FERRY_RATE_LIMIT", RATE_LIMIT_KEY, true));
    vars.push(env(
        "FERRY_RETRY_BACKOFF_MIN",
        seconds(delivery.retry_backoff.min_seconds),
    ));
    vars.push(env(
        "FERRY_RETRY_BACKOFF_MAX",
        seconds(delivery.retry_backoff.max_seconds),
    ));
    vars.push(env(
        "FERRY_DRAIN_TIMEOUT",
        drain_timeout_seconds(qc).to_string(),
    ));
    vars.push(env(
        "FERRY_STATS_INTERVAL",
        seconds(settings.poll_interval.as_secs_f64()),
    ));
    vars.push(env(
        "FERRY_LISTEN_ADDR",
        format!("{listen_host}:{METRICS_PORT}"),
    ));
    vars.push(env("FERRY_LOG_FORMAT", settings.sidecar_log_format.clone()));
    if qc.spec.queue.provider == QueueProvider::Pubsub
        && let Some(monitoring) = &settings.pubsub_monitoring
    {
        vars.push(env("FERRY_PUBSUB_MONITORING", "true"));
        vars.push(env(
            "FERRY_MONITORING_ENDPOINT",
            monitoring.endpoint.clone(),
        ));
    }
    if qc.spec.queue.provider == QueueProvider::Sqs
        && let Some(region) = qc.spec.queue.sqs.as_ref().and_then(|s| s.region.clone())
    {
        // The SDK's default chain reads it; otherwise the region comes from the queue URL.
        vars.push(env("AWS_REGION", region));
    }
    vars.extend(settings.sidecar_extra_env.iter().cloned());
    vars
}

/// `POD_IP` from the downward API; defined before the variables that refer to it, since
/// `$(VAR)` only expands variables defined earlier.
fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(METRICS_PORT_NAME.into()),
        ..HTTPGetAction::default()
    }
}

/// `spec.sidecar.resources`, else the operator's defaults.
fn sidecar_resources(qc: &QueueConsumer, settings: &OperatorSettings) -> ResourceRequirements {
    qc.spec
        .sidecar
        .as_ref()
        .and_then(|s| s.resources.clone())
        .unwrap_or_else(|| settings.sidecar_resources.clone())
}

/// `FERRY_THREADS`: one per whole CPU the sidecar is given (its CPU limit, else its request),
/// at least one. One thread delivers thousands of messages a second and spends less CPU and
/// memory per message than several (docs/performance.md); a sidecar given whole cores gets
/// a thread for each.
pub fn sidecar_threads(resources: &ResourceRequirements) -> u32 {
    let cpus = |quantities: &Option<std::collections::BTreeMap<String, Quantity>>| {
        quantities
            .as_ref()?
            .get("cpu")
            .and_then(|q| cpu_cores(&q.0))
    };
    cpus(&resources.limits)
        .or_else(|| cpus(&resources.requests))
        .map_or(1, |cores| (cores.floor() as u32).clamp(1, 64))
}

/// A CPU quantity in cores: `250m`, `2`, `1.5`. Anything else (the API server has already
/// validated it) counts as less than a core.
fn cpu_cores(quantity: &str) -> Option<f64> {
    match quantity.strip_suffix('m') {
        Some(millicores) => millicores.parse::<f64>().ok().map(|m| m / 1000.0),
        None => quantity.parse().ok(),
    }
}

/// The worker containers' preStop hook: `/drained` answers once the sidecar, stopped by its
/// own SIGTERM (it has no hook, so the kubelet sends it at once), has finished its in-flight
/// deliveries, so the worker keeps serving them until then. The port is a number, since the
/// name is the sidecar's.
pub(super) fn worker_stop_hook() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some(DRAINED_PATH.into()),
                port: IntOrString::Int(METRICS_PORT),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

pub(super) fn sidecar_container(
    qc: &QueueConsumer,
    settings: &OperatorSettings,
    names: &ProvisionedNames,
) -> Container {
    let overrides = qc.spec.sidecar.as_ref();
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(
            overrides
                .and_then(|s| s.image.clone())
                .unwrap_or_else(|| settings.sidecar_image.clone()),
        ),
        image_pull_policy: settings.sidecar_image_pull_policy.clone(),
        env: Some(sidecar_env(qc, settings, names)),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Unready while the queue is missing, credentials are refused, or while draining:
        // the Deployment's availability then says the consumer cannot consume.
        readiness_probe: Some(Probe {
            http_get: Some(http_get(READINESS_PATH)),
            period_seconds: Some(5),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // /healthz answers while the process runs; queue trouble must not restart it.
        liveness_probe: Some(Probe {
            http_get: Some(http_get(LIVENESS_PATH)),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // No preStop hook: SIGTERM starts the drain, at the moment the worker's hook begins
        // to wait for it.
        lifecycle: None,
        resources: Some(sidecar_resources(qc, settings)),
        security_context: Some(sidecar_security_context()),
        ..Container::default()
    }
}

//! ferry-operator: watches QueueConsumers and makes each one a queue with its dead-letter
//! queue and a worker Deployment with the ferry-consumer sidecar.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use clap::Parser;
use ferry_operator::autoscaler::PolicyTuning;
use ferry_operator::builders::OperatorSettings;
use ferry_operator::controller::{self, CloudSettings, Context};
use ferry_operator::leader::{ElectionSettings, LeaderElection};
use ferry_operator::scaling::{self, AutoscalerSettings, QueueReaderSettings};
use ferry_operator::watches;
use futures::FutureExt;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The Ferry operator: QueueConsumer → queue + dead-letter queue + autoscaled worker"
)]
struct Options {
    /// The ferry-consumer image injected into every worker pod.
    #[arg(long, env = "FERRY_SIDECAR_IMAGE", default_value = concat!("ghcr.io/ferry-dev/consumer:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    /// An SQS-compatible server to provision on and to point sidecars at (local clusters).
    #[arg(long, env = "FERRY_SQS_ENDPOINT")]
    sqs_endpoint: Option<String>,
    /// The Pub/Sub emulator (host:port) to provision on and to point sidecars at.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pubsub_emulator_host: Option<String>,
    /// Project for Pub/Sub QueueConsumers that do not name one.
    #[arg(long, env = "FERRY_PUBSUB_PROJECT")]
    pubsub_project: Option<String>,
    /// Recorded on every queue as its owner's cluster, so two clusters never take each
    /// other's queues.
    #[arg(long, env = "FERRY_CLUSTER_NAME", default_value = "default")]
    cluster_name: String,
    /// Watch only these namespaces, comma-separated (all namespaces when unset or empty).
    #[arg(long, env = "FERRY_WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Annotations, as a JSON object, on every worker ServiceAccount Ferry creates (e.g. one
    /// IRSA role or Google service account for all consumers); a QueueConsumer's own
    /// `spec.serviceAccount.annotations` win per key.
    #[arg(long, env = "FERRY_WORKER_SERVICE_ACCOUNT_ANNOTATIONS", default_value = "{}", value_parser = parse_annotations)]
    worker_service_account_annotations: BTreeMap<String, String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FERRY_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen_addr: SocketAddr,
    /// Elect a leader among replicas on a Lease (turn off only for a single replica).
    #[arg(long, env = "FERRY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferry-system")]
    lease_namespace: String,
    /// A Secret in the operator's namespace (POD_NAMESPACE) holding the key each consumer's
    /// control token is derived with; made with a random key if missing. Unset: tokens are a
    /// plain hash of each consumer's UID, which those who may read the consumers can work out.
    #[arg(long, env = "FERRY_CONTROL_KEY_SECRET")]
    control_key_secret: Option<String>,
    /// This replica's identity in the election (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between two autoscaler polls of every QueueConsumer's sidecars; the sidecars
    /// refresh the queue's counts as often.
    #[arg(long, env = "FERRY_SCALING_POLL_INTERVAL", default_value = "5", value_parser = poll_interval)]
    poll_interval: Duration,
    /// Read Pub/Sub backlogs from Cloud Monitoring (operator and sidecars; needs
    /// roles/monitoring.viewer). Without it, Pub/Sub consumers keep at least one replica.
    #[arg(long, env = "FERRY_PUBSUB_MONITORING", default_value_t = false, action = clap::ArgAction::Set)]
    pubsub_monitoring: bool,
    /// The Cloud Monitoring API (or a compatible endpoint).
    #[arg(long, env = "FERRY_MONITORING_ENDPOINT", default_value = ferry_queues::monitoring::DEFAULT_ENDPOINT)]
    monitoring_endpoint: String,
    /// QueueConsumers reconciled at once. More starts a burst of new consumers sooner, at the
    /// cost of memory (each reconcile holds its objects and API connections).
    #[arg(long, env = "FERRY_MAX_CONCURRENT_RECONCILES", default_value_t = controller::RECONCILES_IN_PARALLEL, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Pods of this cluster share the host's network (devcluster): sidecars listen on and
    /// deliver to the pod IP. Never needed on a real cluster.
    #[arg(long, env = "FERRY_PODS_SHARE_NETWORK", default_value_t = false, action = clap::ArgAction::Set)]
    pods_share_network: bool,
}

fn poll_interval(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(s) if (0.1..=300.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "FERRY_SCALING_POLL_INTERVAL must be a number of seconds between 0.1 and 300, got {value:?}"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let options = Options::parse();
    let client = kube_client().await?;
    let leading = Arc::new(AtomicBool::new(!options.leader_election));
    let mut settings = OperatorSettings::new(options.sidecar_image.clone());
    settings.sqs_endpoint = options.sqs_endpoint.clone();
    settings.pubsub_endpoint = options.pubsub_emulator_host.clone();
    settings.poll_interval = options.poll_interval;
    settings.pods_share_network = options.pods_share_network;
    settings.control_key = match &options.control_key_secret {
        Some(name) => Some(
            ferry_operator::control_key::load_or_create(&client, &options.lease_namespace, name)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => {
            tracing::warn!(
                "--control-key-secret (FERRY_CONTROL_KEY_SECRET) is not set: each consumer's control token is a plain hash of its UID, which keeps other pods from draining or slowing its sidecars but not those who may read the QueueConsumer; the Helm chart sets it"
            );
            None
        }
    };
    let monitoring =
        options
            .pubsub_monitoring
            .then(|| ferry_queues::monitoring::MonitoringConfig {
                endpoint: options.monitoring_endpoint.clone(),
            });
    settings.pubsub_monitoring = monitoring.clone();
    let autoscaling = AutoscalerSettings {
        poll_interval: options.poll_interval,
        tuning: PolicyTuning::default(),
        queues: QueueReaderSettings {
            sqs_endpoint: options.sqs_endpoint.clone(),
            pubsub_monitoring: monitoring,
        },
        // Set per watched namespace below.
        namespace: None,
    };
    settings.worker_service_account_annotations =
        options.worker_service_account_annotations.clone();
    let cloud = CloudSettings {
        sqs_endpoint: options.sqs_endpoint.clone(),
        pubsub_endpoint: options.pubsub_emulator_host.clone(),
        pubsub_project: options.pubsub_project.clone(),
        cluster_name: options.cluster_name.clone(),
    };
    let watch_namespaces = controller::parse_watch_namespaces(&options.watch_namespace);
    let ctx = Context::new(client.clone(), settings, cloud);
    serve_health(options.listen_addr, leading.clone(), ctx.clone()).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let election = if options.leader_election {
        let identity = options.identity.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("ferry-operator-{}", std::process::id()))
        });
        let election = LeaderElection::new(
            client.clone(),
            ElectionSettings {
                lease_name: "ferry-operator".into(),
                namespace: options.lease_namespace.clone(),
                identity,
                lease_duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            },
        );
        let mut leadership = election.leadership();
        tokio::spawn(election.run(stopped(stop_rx.clone())));
        // Only the leader reconciles; a follower waits (or stops with the process).
        tokio::select! {
            _ = leadership.wait_for(|l| *l) => {}
            _ = stopped(stop_rx.clone()) => return Ok(()),
        }
        leading.store(true, Ordering::SeqCst);
        Some(leadership)
    } else {
        None
    };

    let stop = stopped(stop_rx.clone());
    let lost = async move {
        match election {
            Some(mut leadership) => {
                let _ = leadership.wait_for(|l| !*l).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = stop => {}
            _ = lost => tracing::error!("lost the leader lease; stopping so a restart rejoins as a follower"),
        }
    };
    let shutdown = shutdown.shared();
    tracing::info!(sidecar_image = %options.sidecar_image, poll_interval = ?options.poll_interval, namespaces = ?watch_namespaces, "reconciling and autoscaling QueueConsumers (no namespaces listed: all)");
    // One reconciler and one autoscaler per listed namespace, so that a Role in each listed
    // namespace is all the operator needs (no cluster-wide list or watch); the two share
    // that namespace's watches.
    let scope: Vec<Option<String>> = if watch_namespaces.is_empty() {
        vec![None]
    } else {
        watch_namespaces.iter().cloned().map(Some).collect()
    };
    let scopes = scope.into_iter().map(|namespace| {
        let (caches, events) = watches::start(&client, namespace.as_deref());
        let settings = AutoscalerSettings {
            namespace,
            ..autoscaling.clone()
        };
        futures::future::join(
            controller::run_watched(
                ctx.clone(),
                caches.clone(),
                events,
                options.max_concurrent_reconciles,
                shutdown.clone(),
            ),
            scaling::run_watched(ctx.clone(), settings, caches, shutdown.clone()),
        )
    });
    futures::future::join_all(scopes).await;
    Ok(())
}

/// A client that names itself in `User-Agent`, so API server audit logs and request
/// metrics (`apiserver_request_total`, devcluster's counter) can tell the operator's calls
/// from everyone else's; kube-rs sends none by default.
async fn kube_client() -> anyhow::Result<kube::Client> {
    let no_api = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("no Kubernetes API: {e}; run in a cluster or set KUBECONFIG")
    };
    let mut config = kube::Config::infer().await.map_err(|e| no_api(&e))?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("ferry-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    kube::Client::try_from(config).map_err(|e| no_api(&e))
}

fn parse_annotations(json: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_str(json).map_err(|e| {
        format!("expected a JSON object of strings, like {{\"iam.gke.io/gcp-service-account\":\"workers@p.iam.gserviceaccount.com\"}}: {e}")
    })
}

/// `/metrics` has the operator's series; `/healthz` answers while the process runs; `/readyz` once this replica leads (a follower
/// is alive but not doing the work).
async fn serve_health(
    addr: SocketAddr,
    leading: Arc<AtomicBool>,
    ctx: Arc<Context>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on FERRY_LISTEN_ADDR={addr}: {e}"))?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = ctx.metrics.encode();
                async move { text }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let leading = leading.load(Ordering::SeqCst);
                async move {
                    if leading {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not leading\n")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("health server stopped: {error}");
        }
    });
    Ok(())
}

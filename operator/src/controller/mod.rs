//! The QueueConsumer controller: read → build → apply → status, with one finalizer entry
//! point for the deletion policy. Everything it decides comes from the pure builders and
//! `queue_request`; this module only orchestrates calls.

mod applied;
mod last_written;
mod metrics;
mod periodic;
mod queue_request;
mod redrive;
mod status;
mod verified;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_crds::{DeletionPolicy, QueueConsumer};
use ferry_queues::QueueErrorKind;
use ferry_queues::provision::{DeleteOutcome, ProvisionedQueue, Provisioner};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::predicates;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::{Predicate, PredicateConfig};

pub use metrics::OperatorMetrics;
pub use queue_request::{CloudSettings, queue_request};

use crate::builders::{
    OperatorSettings, ProvisionedNames, desired_deployment, desired_service_account,
    desired_sidecar_secret,
};
use crate::watches::{self, Caches, Events};

/// The field manager of every object and status the operator writes.
pub const FIELD_MANAGER: &str = "ferry-operator";
/// Holds a QueueConsumer until its deletion policy has been carried out.
pub const FINALIZER: &str = "ferry.dev/queue-cleanup";
/// How often a healthy QueueConsumer is looked at again, to correct drift in the cloud.
const RESYNC: Duration = Duration::from_secs(300);
/// A terminal error (wrong name, no permission) will not fix itself; check back slowly.
const TERMINAL_RETRY: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Reconciles in flight at once, by default (`--max-concurrent-reconciles`). Unbounded, a
/// thousand new QueueConsumers meant a thousand concurrent reconciles, each with its own API
/// connection and buffers (the operator peaked above 250 MiB); a reconcile mostly waits on
/// the cloud and the API server, so a few dozen keep up.
pub const RECONCILES_IN_PARALLEL: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue: {0}")]
    Queue(#[from] ferry_queues::QueueError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error(
        "the dead-letter queue still holds {0} message(s); set spec.forceDelete: true to delete it anyway, or drain it first"
    )]
    DeadLetterNotEmpty(u64),
}

impl Error {
    /// The `reason` label of `ferry_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Queue(e) => e.kind.label(),
            Self::Kube(_) => "kubernetes",
            Self::Finalizer(_) => "finalizer",
            Self::DeadLetterNotEmpty(_) => "dead_letter_not_empty",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    /// Publishes Kubernetes Events on QueueConsumers (deduplicated into series).
    pub recorder: crate::events::EventRecorder,
    pub settings: OperatorSettings,
    pub cloud: CloudSettings,
    pub metrics: OperatorMetrics,
    /// Cloud clients kept between reconciles.
    provisioner: Provisioner,
    /// The last cloud check of each object, reused until a drift check is due.
    verified: verified::VerifiedQueues,
    /// The ServiceAccount and Deployment last applied per object, to skip re-applying them.
    applied: applied::AppliedChildren,
    /// The watched worker Deployments, one store per running controller (scope).
    deployments: RwLock<Vec<Store<Deployment>>>,
    /// Consecutive failures per object, for exponential backoff per object.
    failures: Mutex<HashMap<ObjectRef<QueueConsumer>, u32>>,
    /// The redrive status each object's last pass wrote: the next pass starts 1 s later,
    /// possibly before the watch cache shows that write.
    redrives: redrive::LastPasses,
    /// The periodic tasks' status each object's last reconcile computed, for the same reason.
    periodic: periodic::LastTicks,
    /// The `ferry.dev/run-task` value each object was last warned about (it names no task),
    /// so the Warning is published once per value, not at every reconcile.
    run_refused: periodic::RefusedRuns,
}

impl Context {
    pub fn new(
        client: kube::Client,
        settings: OperatorSettings,
        cloud: CloudSettings,
    ) -> Arc<Self> {
        let reporter = crate::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: crate::events::EventRecorder::new(client.clone(), reporter),
            client,
            settings,
            cloud,
            metrics: OperatorMetrics::default(),
            provisioner: Provisioner::default(),
            verified: verified::VerifiedQueues::default(),
            applied: applied::AppliedChildren::default(),
            deployments: RwLock::default(),
            failures: Mutex::default(),
            redrives: redrive::LastPasses::default(),
            periodic: periodic::LastTicks::default(),
            run_refused: periodic::RefusedRuns::default(),
        })
    }

    /// The watch cache's copy of a worker Deployment, in whichever scope watches it.
    fn cached_deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        let key = ObjectRef::new(name).within(namespace);
        self.deployments
            .read()
            .expect("deployments lock")
            .iter()
            .find_map(|store| store.get(&key))
    }
}

/// Runs the controller, with watches of its own, until the `shutdown` future resolves.
/// The operator's binary shares its watches with the autoscaler instead: [`run_watched`].
pub async fn run(
    ctx: Arc<Context>,
    api: Api<QueueConsumer>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let deployments = Api::<Deployment>::all(ctx.client.clone());
    let (caches, events) = watches::start_with(api, deployments);
    run_watched(ctx, caches, events, RECONCILES_IN_PARALLEL, shutdown).await;
}

/// `FERRY_WATCH_NAMESPACE`: a comma-separated list; blanks and repeats are dropped, and
/// nothing left means every namespace.
pub fn parse_watch_namespaces(value: &str) -> Vec<String> {
    let mut namespaces: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// Runs the controller on watches started by [`watches::start`] (one scope: a namespace, or
/// all), until `shutdown` resolves. It drives the watches, so the autoscaler reading the
/// same `caches` runs beside it.
pub async fn run_watched(
    ctx: Arc<Context>,
    caches: Caches,
    events: Events,
    reconciles_in_parallel: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    ctx.deployments
        .write()
        .expect("deployments lock")
        .push(caches.deployments.clone());
    // Reconcile when what the reconciler acts on changes: the spec (`generation`, which
    // marking for deletion bumps too) and the finalizers. Status writes, the reconciler's
    // own and the autoscaler's, change neither; reconciling on them re-applied every child
    // object several times per consumer and new consumers waited behind that churn.
    // The redrive and run-task annotations ask for an action without changing the spec.
    let consumers = events.consumers.predicate_filter(
        predicates::generation
            .combine(predicates::finalizers)
            .combine(|qc: &QueueConsumer| annotation_request(qc, ferry_crds::REDRIVE_ANNOTATION))
            .combine(|qc: &QueueConsumer| annotation_request(qc, ferry_crds::RUN_TASK_ANNOTATION)),
        PredicateConfig::default(),
    );
    Controller::for_stream(consumers, caches.consumers)
        .owns_stream(events.deployments)
        .with_config(controller::Config::default().concurrency(reconciles_in_parallel.max(1)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!("reconcile: {error}");
            }
        })
        .await;
}

/// An action annotation's value (`ferry.dev/redrive`, `ferry.dev/run-task`), hashed, for the
/// reconcile predicate.
fn annotation_request(qc: &QueueConsumer, annotation: &str) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let value = qc.annotations().get(annotation)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    Some(hasher.finish())
}

pub async fn reconcile(qc: Arc<QueueConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_once(qc, ctx.clone()).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_once(qc: Arc<QueueConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = qc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<QueueConsumer> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, qc, |event| async {
        match event {
            Finalizer::Apply(qc) => apply(&qc, &ctx).await,
            Finalizer::Cleanup(qc) => cleanup(&qc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

fn error_policy(qc: Arc<QueueConsumer>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(qc.as_ref());
    // Whatever failed, the next attempt applies the children again.
    ctx.applied.forget(&qc);
    let mut failures = ctx.failures.lock().expect("failures lock");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let count = failures.entry(key).or_insert(0);
    *count += 1;
    let delay = backoff(*count);
    tracing::warn!(name = %qc.name_any(), namespace = ?qc.namespace(), attempt = *count, retry_in = ?delay, "{error}");
    Action::requeue(delay)
}

/// 1 s doubling to 5 minutes: quick for a blip, gentle for a long outage.
fn backoff(consecutive_failures: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive_failures.saturating_sub(1).min(9)).min(MAX_BACKOFF)
}

async fn apply(qc: &QueueConsumer, ctx: &Context) -> Result<Action, Error> {
    let namespace = qc.namespace().unwrap_or_else(|| "default".into());
    ctx.metrics.record_scaling_bounds(
        &namespace,
        &qc.name_any(),
        &crate::builders::autoscaler_spec(&qc.spec),
        qc.spec.suspend,
    );
    let mut observed = status::Observed {
        provisioned: None,
        queue_error: None,
        build_error: None,
        deployment: None,
        redrive: None,
        periodic_tasks: None,
    };
    let mut requeue = RESYNC;
    let now = std::time::Instant::now();
    let reused = ctx.verified.fresh(qc, RESYNC, now);
    let checked_now = reused.is_none();
    let provisioned = match reused {
        Some((queue, drift_check_due)) => {
            requeue = drift_check_due;
            Ok(queue)
        }
        None => ctx.provisioner.ensure(&queue_request(qc, &ctx.cloud)).await,
    };
    match provisioned {
        Ok(queue) => {
            if !queue.corrected.is_empty() {
                tracing::info!(name = %qc.name_any(), corrected = ?queue.corrected, "queue settings drifted and were put back");
            }
            if checked_now {
                ctx.verified.record(qc, &queue, now);
            }
            observed.provisioned = Some(queue);
        }
        Err(error) if is_terminal(error.kind) => {
            ctx.verified.forget(qc);
            observed.queue_error = Some(error);
            requeue = TERMINAL_RETRY;
        }
        Err(error) => {
            // Transient: report it, then let error_policy back off.
            ctx.verified.forget(qc);
            observed.queue_error = Some(error.clone());
            status::write(qc, ctx, &observed).await?;
            return Err(error.into());
        }
    }
    if let Some(queue) = observed.provisioned.clone() {
        apply_workload(qc, ctx, &namespace, &queue, checked_now, &mut observed).await?;
        let deployment = observed.deployment.clone();
        if let Some((redrive, next_pass)) =
            redrive::reconcile(qc, ctx, &queue, deployment.as_ref()).await
        {
            observed.redrive = Some(redrive);
            requeue = next_pass.map_or(requeue, |due| due.min(requeue));
        }
        let (tasks, next_tick) = periodic::reconcile(qc, ctx, &queue).await;
        observed.periodic_tasks = Some(tasks);
        requeue = next_tick.map_or(requeue, |due| due.min(requeue));
    }
    ctx.failures
        .lock()
        .expect("failures lock")
        .remove(&ObjectRef::from_obj(qc));
    status::write(qc, ctx, &observed).await?;
    Ok(Action::requeue(requeue))
}

fn is_terminal(kind: QueueErrorKind) -> bool {
    matches!(
        kind,
        QueueErrorKind::NotFound
            | QueueErrorKind::PermissionDenied
            | QueueErrorKind::Invalid
            | QueueErrorKind::Conflict
    )
}

/// Applies the ServiceAccount, the sidecar Secret and the Deployment, each only when it
/// differs from the last one applied or may have drifted (`applied`); `drift_check` applies
/// them regardless.
async fn apply_workload(
    qc: &QueueConsumer,
    ctx: &Context,
    namespace: &str,
    queue: &ProvisionedQueue,
    drift_check: bool,
    observed: &mut status::Observed,
) -> Result<(), Error> {
    if drift_check {
        ctx.applied.forget(qc);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    match desired_service_account(qc, &ctx.settings) {
        Some(account) => {
            let desired = applied::fingerprint(&account);
            if !ctx.applied.service_account_current(qc, desired) {
                let name = account.metadata.name.clone().unwrap_or_default();
                accounts
                    .patch(&name, &params, &Patch::Apply(&account))
                    .await?;
                ctx.applied.record_service_account(qc, desired);
            }
        }
        None => remove_own_service_account(qc, &accounts).await?,
    }
    // Before the Deployment: its sidecars read it when they start.
    let secret = desired_sidecar_secret(qc, &ctx.settings);
    let desired = applied::fingerprint(&secret);
    if !ctx.applied.sidecar_secret_current(qc, desired) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let name = secret.metadata.name.clone().unwrap_or_default();
        secrets
            .patch(&name, &params, &Patch::Apply(&secret))
            .await?;
        ctx.applied.record_sidecar_secret(qc, desired);
    }
    let names = ProvisionedNames {
        queue: queue.queue.clone(),
        dead_letter: Some(queue.dead_letter.clone()),
        dead_letter_topic: (qc.spec.queue.provider == ferry_crds::QueueProvider::Pubsub)
            .then(|| queue.dead_letter_publish_to.clone()),
    };
    match desired_deployment(qc, &ctx.settings, &names) {
        Ok(deployment) => {
            let name = deployment.metadata.name.clone().unwrap_or_default();
            let desired = applied::fingerprint(&deployment);
            let live = ctx.cached_deployment(namespace, &name);
            let exists = live.is_some();
            if let Some(live) =
                live.filter(|live| ctx.applied.deployment_current(qc, desired, Some(live)))
            {
                observed.deployment = Some(Deployment::clone(&live));
                return Ok(());
            }
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            if qc.spec.suspend && !exists {
                create_at_zero(&deployments, &deployment).await?;
            }
            let applied = deployments
                .patch(&name, &params, &Patch::Apply(&deployment))
                .await?;
            ctx.applied.record_deployment(qc, desired, &applied);
            observed.deployment = Some(applied);
        }
        Err(error) => observed.build_error = Some(error),
    }
    Ok(())
}

/// A QueueConsumer created suspended gets its Deployment at zero replicas, so no pod starts
/// (on an adopted queue, one would consume). The applied object names no replica count (the
/// autoscaler owns it), and a Deployment created without one starts at 1; created first
/// with 0 by a plain create, the count belongs to that create, so the applies that follow
/// leave it alone, and the autoscaler takes it from there once resumed. Already there (a
/// cache that had not seen it): nothing to do.
async fn create_at_zero(
    deployments: &Api<Deployment>,
    deployment: &Deployment,
) -> Result<(), Error> {
    let mut at_zero = deployment.clone();
    at_zero.spec.replicas = Some(0);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match deployments.create(&params, &at_zero).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The worker template now names the user's own ServiceAccount: the one Ferry made before is
/// no longer asked for. Only an account this QueueConsumer owns is removed.
async fn remove_own_service_account(
    qc: &QueueConsumer,
    accounts: &Api<ServiceAccount>,
) -> Result<(), Error> {
    let name = crate::builders::worker_name(qc);
    let Some(existing) = accounts.get_opt(&name).await? else {
        return Ok(());
    };
    let ours = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == qc.metadata.uid.as_ref());
    if ours {
        accounts
            .delete(&name, &kube::api::DeleteParams::default())
            .await?;
        tracing::info!(name = %qc.name_any(), account = %name, "removed the ServiceAccount the worker no longer uses");
    }
    Ok(())
}

async fn cleanup(qc: &QueueConsumer, ctx: &Context) -> Result<Action, Error> {
    let namespace = qc.namespace().unwrap_or_else(|| "default".into());
    ctx.metrics.forget_consumer(&namespace, &qc.name_any());
    ctx.verified.forget(qc);
    ctx.applied.forget(qc);
    ctx.redrives.forget(qc);
    ctx.periodic.forget(qc);
    ctx.run_refused.forget(qc);
    if qc.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(name = %qc.name_any(), "deletionPolicy Retain: the queue, its dead-letter queue and their messages stay");
        return Ok(Action::await_change());
    }
    let request = queue_request(qc, &ctx.cloud);
    match ctx
        .provisioner
        .delete(&request, qc.spec.force_delete)
        .await?
    {
        DeleteOutcome::Deleted => {
            tracing::info!(name = %qc.name_any(), "deletionPolicy Delete: queue and dead-letter queue deleted");
            Ok(Action::await_change())
        }
        DeleteOutcome::DeadLetterNotEmpty(count) => {
            let error = Error::DeadLetterNotEmpty(count);
            status::write_deletion_blocked(qc, ctx, &error).await?;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn watch_namespaces_are_a_comma_separated_list() {
        assert_eq!(parse_watch_namespaces(""), Vec::<String>::new());
        assert_eq!(parse_watch_namespaces(" , "), Vec::<String>::new());
        assert_eq!(parse_watch_namespaces("shop"), vec!["shop"]);
        assert_eq!(
            parse_watch_namespaces("shop, billing,shop,"),
            vec!["billing", "shop"]
        );
    }

    #[test]
    fn only_fixable_errors_are_terminal() {
        assert!(is_terminal(QueueErrorKind::Conflict));
        assert!(is_terminal(QueueErrorKind::PermissionDenied));
        assert!(!is_terminal(QueueErrorKind::Throttled));
        assert!(!is_terminal(QueueErrorKind::Unavailable));
    }
}

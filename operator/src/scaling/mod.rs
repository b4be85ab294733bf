//! The autoscaler's loop: every poll, for each QueueConsumer, scrape its sidecars, combine
//! what they say into signals, ask the pure [`crate::autoscaler::ScalingPolicy`], and carry
//! the decision out (pod deletion costs, the scale subresource, `status`, an Event, metrics).
//!
//! It runs only on the leader, beside the reconciler, and keeps the policy's memory per
//! consumer in this process: a new leader starts cautious (see `autoscaler::state`).

mod actuate;
mod exposition;
mod queue_reader;
mod record;
mod signals;
pub(crate) mod slim;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_crds::{QueueConsumer, QueueConsumerStatus, QueueProvider, condition_type};
use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

pub use actuate::{AUTOSCALER_FIELD_MANAGER, DELETION_COST_ANNOTATION};
pub use exposition::{SidecarSample, parse_sample};
pub use queue_reader::{QueueReader, QueueReaderSettings};
pub use signals::{BacklogSource, PodScrape, QueueReading, ReportedCounts, combine};

use crate::autoscaler::{
    PodLoad, PolicyTuning, ScalingDecision, ScalingPolicy, ScalingState, WaitEstimate, rate_share,
};
use crate::builders::{
    MANAGED_BY_LABEL, METRICS_PORT, QUEUE_CONSUMER_LABEL, SIDECAR_NAME, autoscaler_spec,
    control_header, control_token, desired_sidecar_secret, set_condition, sidecar_secret_name,
    worker_name,
};
use crate::controller::Context;
use record::{ScalerMode, backlog_status, scaling_condition, scaling_record};

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct AutoscalerSettings {
    pub poll_interval: Duration,
    pub tuning: PolicyTuning,
    pub queues: QueueReaderSettings,
    /// Watch only this namespace (all when `None`), like the reconciler.
    pub namespace: Option<String>,
}

/// `status.backlog` changes with every message; writing it every poll would be status churn.
/// It is written when a decision changes the replica count, and otherwise at most this often.
const BACKLOG_STATUS_EVERY: f64 = 30.0;
/// Consumers polled at once: enough to poll a thousand within one interval without opening
/// a thousand connections at the same moment.
const CONSUMERS_IN_PARALLEL: usize = 64;

pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn to_time(unix: f64) -> Time {
    let nanos = (unix * 1e9) as i128;
    Time(Timestamp::from_nanosecond(nanos).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What the loop remembers about one consumer between polls.
#[derive(Default)]
struct Memory {
    policy: ScalingState,
    scrapes: BTreeMap<String, PodScrape>,
    /// The backlog estimated from the sidecars' wait at the last poll, if it was.
    wait_estimate: Option<WaitEstimate>,
    backlog_written_at: Option<f64>,
    /// Since when the policy has been holding for lack of signals.
    holding_since: Option<f64>,
    /// Suspended at an earlier poll, and no signal since: the condition says it resumes.
    resuming: bool,
    /// The autoscaler's part of `status` as its last apply wrote it, with the object's uid.
    applied: Option<(Option<String>, QueueConsumerStatus)>,
}

type ConsumerKey = (String, String);

struct Autoscaler {
    ctx: Arc<Context>,
    settings: AutoscalerSettings,
    http: reqwest::Client,
    queues: QueueReader,
    /// Boxed: a `Memory` is hundreds of bytes inline, and a table of a thousand grows by
    /// doubling, holding the old slots and the new while it does.
    memory: Mutex<HashMap<ConsumerKey, Box<Memory>>>,
}

fn api_for<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + std::fmt::Debug,
    K: serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A store kept current by a watch that runs until the process stops; `slim` drops what
/// the autoscaler never reads before an object is stored.
fn watched<K>(api: Api<K>, config: watcher::Config, slim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, config).default_backoff().modify(slim);
    let stream = reflector::reflector(writer, events)
        .applied_objects()
        .for_each(|event| {
            if let Err(error) = event {
                tracing::debug!("autoscaler watch: {error}");
            }
            future::ready(())
        });
    tokio::spawn(stream);
    store
}

/// Runs the loop, with watches of its own, until `shutdown` resolves. The operator's binary
/// shares the reconciler's watches instead: [`run_watched`].
pub async fn run(
    ctx: Arc<Context>,
    settings: AutoscalerSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let namespace = settings.namespace.clone();
    let caches = crate::watches::Caches {
        consumers: watched(
            api_for::<QueueConsumer>(&client, namespace.as_deref()),
            watcher::Config::default(),
            slim::consumer,
        ),
        deployments: watched(
            api_for::<Deployment>(&client, namespace.as_deref()),
            watcher::Config::default().labels(MANAGED_BY_LABEL),
            slim::deployment,
        ),
    };
    run_watched(ctx, settings, caches, shutdown).await;
}

/// Runs the loop on caches that the reconciler's watches keep current (see
/// `crate::watches`), until `shutdown` resolves. Pods are watched here: only the autoscaler
/// reads them.
pub async fn run_watched(
    ctx: Arc<Context>,
    settings: AutoscalerSettings,
    caches: crate::watches::Caches,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let crate::watches::Caches {
        consumers,
        deployments,
    } = caches;
    let pods = watched(
        api_for::<Pod>(&ctx.client, settings.namespace.as_deref()),
        watcher::Config::default().labels(MANAGED_BY_LABEL),
        slim::pod,
    );
    let scrape_timeout = settings
        .poll_interval
        .min(Duration::from_secs(2))
        .max(Duration::from_millis(500));
    let autoscaler = Arc::new(Autoscaler {
        http: reqwest::Client::builder()
            .timeout(scrape_timeout)
            .no_proxy()
            .build()
            .expect("an HTTP client without TLS always builds"),
        queues: QueueReader::new(settings.queues.clone()),
        memory: Mutex::default(),
        ctx,
        settings,
    });
    let polling = async {
        for store in [
            consumers.wait_until_ready().await,
            deployments.wait_until_ready().await,
            pods.wait_until_ready().await,
        ] {
            if let Err(error) = store {
                tracing::error!("autoscaler: a watch never became ready: {error}");
                return;
            }
        }
        let mut ticks = tokio::time::interval(autoscaler.settings.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            autoscaler.poll_all(&consumers, &deployments, &pods).await;
        }
    };
    tokio::select! {
        () = polling => {}
        () = shutdown => {}
    }
}

impl Autoscaler {
    async fn poll_all(
        self: &Arc<Self>,
        consumers: &Store<QueueConsumer>,
        deployments: &Store<Deployment>,
        pods: &Store<Pod>,
    ) {
        let mut pods_of: HashMap<ConsumerKey, Vec<Arc<Pod>>> = HashMap::new();
        for pod in pods.state() {
            if let Some(name) = pod.labels().get(QUEUE_CONSUMER_LABEL) {
                let key = (pod.namespace().unwrap_or_default(), name.clone());
                pods_of.entry(key).or_default().push(pod);
            }
        }
        let consumers = consumers.state();
        self.forget_deleted(&consumers);
        self.queues.start_poll();
        let polls = consumers.into_iter().map(|qc| {
            let key = (qc.namespace().unwrap_or_default(), qc.name_any());
            let deployment =
                deployments.get(&reflector::ObjectRef::new(&worker_name(&qc)).within(&key.0));
            let pods = pods_of.remove(&key).unwrap_or_default();
            let this = self.clone();
            async move {
                if let Err(error) = this.poll(&qc, deployment, pods).await {
                    tracing::warn!(namespace = %key.0, name = %key.1, "autoscaler: {error}");
                }
            }
        });
        futures::stream::iter(polls)
            .buffer_unordered(CONSUMERS_IN_PARALLEL)
            .collect::<()>()
            .await;
    }

    fn forget_deleted(&self, consumers: &[Arc<QueueConsumer>]) {
        let live: std::collections::HashSet<ConsumerKey> = consumers
            .iter()
            .map(|qc| (qc.namespace().unwrap_or_default(), qc.name_any()))
            .collect();
        let mut memory = self.memory.lock().expect("memory lock");
        memory.retain(|key, _| {
            let keep = live.contains(key);
            if !keep {
                self.ctx.metrics.forget_consumer(&key.0, &key.1);
            }
            keep
        });
        let queues: std::collections::HashSet<&str> = consumers
            .iter()
            .filter_map(|qc| qc.status.as_ref()?.queue.as_ref().map(|q| q.id.as_str()))
            .collect();
        self.queues.retain(|queue| queues.contains(queue));
    }

    async fn poll(
        &self,
        qc: &QueueConsumer,
        deployment: Option<Arc<Deployment>>,
        pods: Vec<Arc<Pod>>,
    ) -> Result<(), kube::Error> {
        // Not provisioned yet, or being deleted: the reconciler is in charge.
        let Some(deployment) = deployment else {
            return Ok(());
        };
        let Some(queue) = qc.status.as_ref().and_then(|s| s.queue.clone()) else {
            return Ok(());
        };
        if qc.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let namespace = qc.namespace().unwrap_or_default();
        let name = qc.name_any();
        let key = (namespace.clone(), name.clone());
        let mut memory = self
            .memory
            .lock()
            .expect("memory lock")
            .remove(&key)
            .unwrap_or_default();
        let result = self
            .poll_with(qc, &deployment, &pods, &queue.id, &mut memory)
            .await;
        self.memory.lock().expect("memory lock").insert(key, memory);
        result
    }

    async fn poll_with(
        &self,
        qc: &QueueConsumer,
        deployment: &Deployment,
        pods: &[Arc<Pod>],
        queue_id: &str,
        memory: &mut Memory,
    ) -> Result<(), kube::Error> {
        let namespace = qc.namespace().unwrap_or_default();
        let name = qc.name_any();
        let provider = qc.spec.queue.provider;
        let current = deployment
            .spec
            .replicas
            .map_or(1, |r| u32::try_from(r).unwrap_or(0));

        let pubsub_blind_at_zero = !self.queues.can_read(provider);
        let spec = if pubsub_blind_at_zero {
            autoscaler_spec(&qc.spec).keeping_one_replica()
        } else {
            autoscaler_spec(&qc.spec)
        };
        let policy = match ScalingPolicy::new(spec, self.settings.tuning.clone()) {
            Ok(policy) => policy,
            Err(error) => {
                return self
                    .write_status(
                        qc,
                        memory,
                        None,
                        None,
                        Some(&ScalerMode::InvalidSpec(error)),
                        unix_seconds(SystemTime::now()),
                    )
                    .await;
            }
        };

        let secret_name = sidecar_secret_name(qc);
        if pods.iter().any(|pod| waits_for_secret(pod, &secret_name)) {
            self.restore_sidecar_secret(qc, &namespace).await;
        }
        let now = unix_seconds(SystemTime::now());
        let scraped = self.scrape(pods).await;
        let mut active = BTreeMap::new();
        let mut loads = Vec::new();
        let mut receiving = Vec::new();
        for (pod, scrape) in scraped {
            let in_flight = scrape.as_ref().map_or(0, |s| s.sample.in_flight as u64);
            let ready = scrape.as_ref().is_some_and(|s| !s.sample.draining);
            let cost = pod.annotations().get(DELETION_COST_ANNOTATION).cloned();
            loads.push((
                PodLoad {
                    id: pod.name_any(),
                    ready,
                    in_flight,
                },
                cost,
            ));
            if let Some(scrape) = scrape.filter(|s| !s.sample.draining) {
                receiving.push((pod.clone(), scrape.sample.rate_limit));
                active.insert(pod.name_any(), scrape);
            }
        }
        let reported = active.values().any(|s| s.sample.backlog.is_some());
        let reading = if !reported && (current == 0 || active.is_empty()) && !pubsub_blind_at_zero {
            match self.queues.read(provider, queue_id).await {
                Ok(reading) => reading,
                Err(error) => {
                    tracing::warn!(%namespace, %name, "autoscaler: cannot read the queue's counts: {error}");
                    None
                }
            }
        } else {
            None
        };
        let concurrency = u32::try_from(qc.spec.delivery.concurrency.max(1)).unwrap_or(1);
        let reported_counts = match provider {
            QueueProvider::Sqs => ReportedCounts::Current,
            QueueProvider::Pubsub => ReportedCounts::MinutesOld,
        };
        let combined = combine(
            &memory.scrapes,
            &active,
            reading,
            reported_counts,
            concurrency,
            memory.wait_estimate,
            now,
        );
        memory.scrapes = active;
        memory.wait_estimate = combined.as_ref().and_then(|(s, source)| {
            let estimated = *source == BacklogSource::EstimatedFromWait;
            WaitEstimate::of(s.throughput.as_ref()?, &s.backlog).filter(|_| estimated)
        });
        let suspended = qc.spec.suspend;
        let decision = if suspended {
            // What the policy learned describes a queue that was being consumed; after a
            // suspension it starts again from what it sees then.
            memory.policy = ScalingState::default();
            ScalingDecision::suspended(now, current)
        } else {
            policy.decide(
                &mut memory.policy,
                now,
                current,
                combined.as_ref().map(|(s, _)| s),
            )
        };

        // Before a scale-up is written, so that the pods it adds (at their starting share)
        // find the others already at theirs. Without a limit, pods that still hold one (the
        // limit was just removed) are told there is none.
        let share = policy
            .spec()
            .delivery_max_per_second
            .map(|limit| rate_share::running_share(limit, pods.len(), decision.to));
        self.share_rate_limit(qc, &receiving, share).await;
        if decision.to != current {
            self.carry_out(qc, deployment, &decision, &loads).await?;
        }
        let metrics = &self.ctx.metrics;
        if let Some((signals, _)) = &combined {
            metrics
                .consumer_backlog
                .with_label_values(&[&namespace, &name])
                .set(signals.backlog.visible as f64);
        }
        let existing = deployment
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        metrics
            .consumer_replicas
            .with_label_values(&[&namespace, &name, "current"])
            .set(f64::from(existing));
        metrics
            .consumer_replicas
            .with_label_values(&[&namespace, &name, "desired"])
            .set(f64::from(decision.to));

        let mode = match (&combined, &decision.signals) {
            _ if suspended => {
                memory.holding_since = None;
                memory.resuming = true;
                Some(ScalerMode::Suspended)
            }
            (Some((_, source)), Some(_)) => {
                memory.holding_since = None;
                memory.resuming = false;
                Some(
                    if pubsub_blind_at_zero && qc.spec.scaling.min_replicas == 0 {
                        ScalerMode::KeepingOneForPubSub
                    } else {
                        ScalerMode::Deciding(*source)
                    },
                )
            }
            _ => {
                let since = *memory.holding_since.get_or_insert(now);
                // Pods starting, one slow scrape: too early to call it a problem, so the
                // condition stays as it is, unless it still says the consumer is suspended.
                if now - since >= self.settings.tuning.stale_after_seconds {
                    memory.resuming = false;
                    Some(ScalerMode::Holding(decision.reason.clone()))
                } else {
                    memory.resuming.then_some(ScalerMode::Resuming)
                }
            }
        };
        let dead_letter = self.dead_letter_count(&memory.scrapes);
        let backlog = combined
            .as_ref()
            .map(|(s, source)| backlog_status(s, *source, dead_letter, to_time(now)));
        let changed = (decision.to != current).then_some(&decision);
        self.write_status(qc, memory, changed, backlog, mode.as_ref(), now)
            .await
    }

    fn dead_letter_count(&self, scrapes: &BTreeMap<String, PodScrape>) -> Option<u64> {
        scrapes
            .values()
            .filter_map(|s| s.sample.dead_letter)
            .map(|v| v as u64)
            .max()
    }

    /// Puts back the consumer's sidecar Secret that its pods wait for: deleted by someone, it
    /// would otherwise be restored only at the reconciler's next drift check (the operator
    /// does not watch Secrets, which it may not read).
    async fn restore_sidecar_secret(&self, qc: &QueueConsumer, namespace: &str) {
        let secret = desired_sidecar_secret(qc, &self.ctx.settings);
        let name = secret.metadata.name.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        let params = PatchParams::apply(crate::controller::FIELD_MANAGER).force();
        match secrets.patch(&name, &params, &Patch::Apply(&secret)).await {
            Ok(_) => tracing::info!(
                %namespace, consumer = %qc.name_any(), secret = %name,
                "put back the sidecar Secret the consumer's pods were waiting for (CreateContainerConfigError)"
            ),
            Err(error) => tracing::warn!(
                %namespace, consumer = %qc.name_any(), secret = %name,
                "the consumer's pods wait for their sidecar Secret and it could not be put back (tried again next poll): {error}"
            ),
        }
    }

    /// Tells each receiving sidecar whose share differs its share of
    /// `spec.delivery.maxPerSecond` (`PUT /rate-limit`). A pod that misses it keeps the share
    /// it had, and is told again at the next poll.
    async fn share_rate_limit(
        &self,
        qc: &QueueConsumer,
        receiving: &[(Arc<Pod>, Option<f64>)],
        share: Option<f64>,
    ) {
        let outdated: Vec<&(Arc<Pod>, Option<f64>)> = receiving
            .iter()
            .filter(|(_, current)| rate_share::needs_share(*current, share))
            .collect();
        // Most polls change no share: the token is derived only for those that do.
        if outdated.is_empty() {
            return;
        }
        let token = control_token(qc, &self.ctx.settings);
        let token = token.as_deref();
        let updates = outdated
            .into_iter()
            .filter_map(|(pod, current)| Some((pod, *current, sidecar_url(pod, "rate-limit")?)))
            .map(|(pod, current, url)| async move {
                let mut request = self.http.put(&url).body(rate_share::share_body(share));
                if let Some(token) = token {
                    let (name, value) = control_header(token);
                    request = request.header(name, value);
                }
                let answer = request
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match answer {
                    Ok(_) => tracing::debug!(pod = %pod.name_any(), ?current, ?share, "rate limit share set"),
                    Err(error) => tracing::warn!(
                        pod = %pod.name_any(), %url, ?share,
                        "autoscaler: could not set the sidecar's share of spec.delivery.maxPerSecond (it keeps {current:?}/s; tried again next poll): {error}"
                    ),
                }
            });
        future::join_all(updates).await;
    }

    /// Scrapes every running pod's sidecar at once; `None` for a pod that did not answer.
    async fn scrape(&self, pods: &[Arc<Pod>]) -> Vec<(Arc<Pod>, Option<PodScrape>)> {
        let scrapes = pods.iter().map(|pod| async move {
            let url = sidecar_url(pod, "metrics")?;
            let response = self.http.get(&url).send().await.ok()?;
            let at = unix_seconds(SystemTime::now());
            let text = response.error_for_status().ok()?.text().await.ok()?;
            match parse_sample(&text) {
                Ok(sample) => Some(PodScrape { at, sample }),
                Err(error) => {
                    tracing::warn!(pod = %pod.name_any(), %url, "autoscaler: {error}");
                    None
                }
            }
        });
        let results = future::join_all(scrapes).await;
        pods.iter().cloned().zip(results).collect()
    }

    async fn carry_out(
        &self,
        qc: &QueueConsumer,
        deployment: &Deployment,
        decision: &ScalingDecision,
        loads: &[(PodLoad<String>, Option<String>)],
    ) -> Result<(), kube::Error> {
        let namespace = qc.namespace().unwrap_or_default();
        // Costs rank the pods that go against those that stay; at zero every pod goes.
        if decision.replicas_to_remove() > 0 && decision.to > 0 {
            actuate::set_deletion_costs(
                &Api::namespaced(self.ctx.client.clone(), &namespace),
                loads,
            )
            .await?;
        }
        actuate::write_replicas(
            &Api::namespaced(self.ctx.client.clone(), &namespace),
            &deployment.name_any(),
            decision.to,
        )
        .await?;
        let direction = decision.direction();
        tracing::info!(%namespace, name = %qc.name_any(), from = decision.from, to = decision.to, reason = decision.reason.code(), "{}", decision.message());
        self.ctx
            .metrics
            .scaling_decisions
            .with_label_values(&[&namespace, &qc.name_any(), direction.label()])
            .inc();
        use crate::events::{Event, EventType};
        let event = Event {
            type_: EventType::Normal,
            reason: if decision.to > decision.from {
                "ScaledUp".into()
            } else {
                "ScaledDown".into()
            },
            note: Some(decision.message()),
            action: "Scale".into(),
            secondary: Some(deployment.object_ref(&())),
        };
        if let Err(error) = self.ctx.recorder.publish(&event, &qc.object_ref(&())).await {
            tracing::debug!("could not publish an event: {error}");
        }
        Ok(())
    }

    /// Applies the autoscaler's part of `status` when it differs from what the object shows.
    /// Every field this manager owns is sent each time: server-side apply removes owned
    /// fields an apply leaves out.
    async fn write_status(
        &self,
        qc: &QueueConsumer,
        memory: &mut Memory,
        decision: Option<&ScalingDecision>,
        backlog: Option<ferry_crds::BacklogStatus>,
        mode: Option<&ScalerMode>,
        now: f64,
    ) -> Result<(), kube::Error> {
        let before = own_fields_as_applied(qc, memory.applied.as_ref());
        let mut after = before.clone();
        if let Some(mode) = mode {
            set_condition(
                &mut after.conditions,
                scaling_condition(mode, qc.metadata.generation),
                to_time(now),
            );
        }
        if let Some(decision) = decision {
            after.last_scaling = Some(scaling_record(decision, to_time(now)));
            after.desired_replicas = Some(i32::try_from(decision.to).unwrap_or(i32::MAX));
        }
        let backlog_due = decision.is_some()
            || memory
                .backlog_written_at
                .is_none_or(|at| now - at >= BACKLOG_STATUS_EVERY);
        if let Some(backlog) = backlog
            && backlog_due
            && !same_counts(before.backlog.as_ref(), &backlog)
        {
            after.backlog = Some(backlog);
            memory.backlog_written_at = Some(now);
        }
        if after == before {
            return Ok(());
        }
        let api: Api<QueueConsumer> =
            Api::namespaced(self.ctx.client.clone(), &qc.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "QueueConsumer",
            "status": autoscaler_part(&after),
        });
        api.patch_status(
            &qc.name_any(),
            &PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        memory.applied = Some((qc.metadata.uid.clone(), own_fields(&after)));
        Ok(())
    }
}

/// The object's status with the autoscaler's own fields as its last apply wrote them.
///
/// The watch cache shows a status write some time after it was made: under load, a poll
/// could read the object as it was before the previous poll's apply. Taking the autoscaler's
/// fields from there left `lastScaling` and `desiredReplicas` out of the next apply, and
/// server-side apply removes the fields a manager stops sending (devcluster refused those
/// applies as invalid instead; a real API server would have dropped the record). Nobody else
/// writes these fields, so what this process last applied is the newest truth; after a
/// restart or for a new object (another uid), the cache is all there is.
fn own_fields_as_applied(
    qc: &QueueConsumer,
    applied: Option<&(Option<String>, QueueConsumerStatus)>,
) -> QueueConsumerStatus {
    let mut status = qc.status.clone().unwrap_or_default();
    if let Some((_, own)) = applied.filter(|(uid, _)| *uid == qc.metadata.uid) {
        status
            .conditions
            .retain(|c| c.type_ != condition_type::SCALING_ACTIVE);
        status.conditions.extend(
            own.conditions
                .iter()
                .filter(|c| c.type_ == condition_type::SCALING_ACTIVE)
                .cloned(),
        );
        status.desired_replicas = own.desired_replicas;
        status.last_scaling = own.last_scaling.clone();
        status.backlog = own.backlog.clone();
    }
    status
}

/// The fields of `status` the autoscaler owns, nothing else.
fn own_fields(status: &QueueConsumerStatus) -> QueueConsumerStatus {
    QueueConsumerStatus {
        conditions: status
            .conditions
            .iter()
            .filter(|c| c.type_ == condition_type::SCALING_ACTIVE)
            .cloned()
            .collect(),
        desired_replicas: status.desired_replicas,
        last_scaling: status.last_scaling.clone(),
        backlog: status.backlog.clone(),
        ..QueueConsumerStatus::default()
    }
}

/// The part of `status` the autoscaler owns; the reconciler owns the rest.
pub fn autoscaler_part(status: &QueueConsumerStatus) -> serde_json::Value {
    let mut part = serde_json::Map::new();
    let condition: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == condition_type::SCALING_ACTIVE)
        .collect();
    part.insert("conditions".into(), serde_json::json!(condition));
    if let Some(v) = status.desired_replicas {
        part.insert("desiredReplicas".into(), v.into());
    }
    if let Some(v) = &status.last_scaling {
        part.insert("lastScaling".into(), serde_json::json!(v));
    }
    if let Some(v) = &status.backlog {
        part.insert("backlog".into(), serde_json::json!(v));
    }
    serde_json::Value::Object(part)
}

/// Backlog counts equal apart from when they were read: not worth a write.
fn same_counts(
    before: Option<&ferry_crds::BacklogStatus>,
    after: &ferry_crds::BacklogStatus,
) -> bool {
    before.is_some_and(|b| {
        (b.visible, b.in_flight, b.delayed, b.dead_letter)
            == (
                after.visible,
                after.in_flight,
                after.delayed,
                after.dead_letter,
            )
    })
}

/// The sidecar's `/metrics` on the pod's IP, at the port the sidecar container declares.
/// `http://<pod IP>:<sidecar's metrics port>/<path>`, for a running pod that is not stopping.
fn sidecar_url(pod: &Pod, path: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == SIDECAR_NAME)?
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(crate::builders::METRICS_PORT_NAME))
        .map_or(METRICS_PORT, |p| p.container_port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(format!("http://{host}:{port}/{path}"))
}

/// Whether one of `pod`'s containers cannot start because Secret `name` (or a key of it) is
/// missing: the kubelet's `CreateContainerConfigError`, whose message names the Secret
/// (`secret "orders-ferry-sidecar" not found`, `couldn't find key control-token in Secret
/// shop/orders-ferry-sidecar`).
pub fn waits_for_secret(pod: &Pod, name: &str) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .any(|waiting| {
            waiting.reason.as_deref() == Some(slim::CONFIG_ERROR)
                && waiting.message.as_deref().is_some_and(|m| {
                    m.contains(&format!("\"{name}\"")) || m.ends_with(&format!("/{name}"))
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(uid: &str, status: serde_json::Value) -> QueueConsumer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "QueueConsumer",
            "metadata": {"name": "orders", "namespace": "shop", "uid": uid, "generation": 1},
            "spec": {"queue": {"provider": "pubsub"}, "deadLetter": {"maxDeliveries": 5},
                     "worker": {"spec": {"containers": [{"name": "app", "image": "app"}]}}},
            "status": status
        }))
        .unwrap()
    }

    fn applied_status() -> QueueConsumerStatus {
        serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "ScalingActive", "status": "True", "reason": "SignalsFresh",
                            "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"}],
            "desiredReplicas": 0,
            "lastScaling": {"from": 1, "to": 0, "reason": "Idle", "message": "idle",
                            "time": "2026-12-01T00:00:00Z"}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_waiting_for_its_sidecar_secret_is_recognised_by_the_kubelet_s_message() {
        let pod = |reason: &str, message: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "orders-worker-1"},
                "status": {"containerStatuses": [
                    {"name": "app", "ready": false, "restartCount": 0, "image": "app", "imageID": "",
                     "state": {"running": {}}},
                    {"name": "ferry-consumer", "ready": false, "restartCount": 0, "image": "c", "imageID": "",
                     "state": {"waiting": {"reason": reason, "message": message}}},
                ]},
            }))
            .unwrap()
        };
        let name = "orders-ferry-sidecar";
        let error = "CreateContainerConfigError";
        assert!(waits_for_secret(
            &pod(error, "secret \"orders-ferry-sidecar\" not found"),
            name
        ));
        assert!(waits_for_secret(
            &pod(
                error,
                "couldn't find key control-token in Secret shop/orders-ferry-sidecar"
            ),
            name
        ));
        assert!(!waits_for_secret(
            &pod(error, "secret \"db-password\" not found"),
            name
        ));
        assert!(!waits_for_secret(
            &pod(error, "secret \"orders-ferry-sidecar-old\" not found"),
            name
        ));
        assert!(!waits_for_secret(
            &pod(
                error,
                "couldn't find key k in Secret shop/orders-ferry-sidecar-old"
            ),
            name
        ));
        assert!(!waits_for_secret(&pod("ContainerCreating", ""), name));
        assert!(!waits_for_secret(&Pod::default(), name));
    }

    /// The 422s of the scale benchmark: a poll read the object from before the previous
    /// poll's apply, and its apply left `lastScaling` out.
    #[test]
    fn a_stale_cache_does_not_drop_what_the_autoscaler_applied() {
        let stale = consumer(
            "u1",
            serde_json::json!({"conditions": [{"type": "Ready", "status": "False", "reason": "WorkerUnavailable",
                               "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}),
        );
        let remembered = (Some("u1".to_string()), applied_status());
        let status = own_fields_as_applied(&stale, Some(&remembered));
        let part = autoscaler_part(&status);
        assert_eq!(part["lastScaling"]["to"], 0, "{part}");
        assert_eq!(part["desiredReplicas"], 0, "{part}");
        assert_eq!(part["conditions"][0]["type"], "ScalingActive", "{part}");
        assert!(
            status.conditions.iter().any(|c| c.type_ == "Ready"),
            "the rest of the status is the cache's"
        );
        assert_eq!(own_fields(&status), applied_status());
    }

    #[test]
    fn another_object_of_the_same_name_starts_from_its_own_status() {
        let recreated = consumer("u2", serde_json::json!({}));
        let remembered = (Some("u1".to_string()), applied_status());
        let status = own_fields_as_applied(&recreated, Some(&remembered));
        assert!(status.last_scaling.is_none() && status.conditions.is_empty());
    }
}

//! The receive → deliver → settle pump.
//!
//! Backpressure comes from one semaphore with a slot per allowed delivery: a slot is taken
//! before a message is received and given back when it is settled, so the sidecar never
//! holds more messages than it can start delivering at once. Messages that share an
//! ordering group (SQS FIFO message group, Pub/Sub ordering key) go through one runner per
//! group, one at a time and in order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant, SystemTime};

use ferry_queues::{
    DeadLetterReason, Lease, MessageQueue, QueueError, ReceivedMessage, SettleOutcome,
};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::StatusSet;
use crate::delivery::{
    Deliverer, FixedHeaders, RetryPolicy, Verdict, WorkerAnswer, delivery_headers, task_path,
    verdict,
};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::rate_limit::{RateLimit, Turn};
use crate::receive_batch::{DeliveryPace, linger_before_receive};

/// Longest pause between failed receives; short enough to notice a fixed queue quickly.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(30);

/// How often a sidecar waiting for its worker asks again: often at first, so a worker that
/// is starting is found at once, then once a second, so a worker that is down for a while
/// (its readiness path may check a database) is not asked ten times a second throughout.
const WORKER_RETRY: Duration = Duration::from_millis(100);
const WORKER_RETRY_LATER: Duration = Duration::from_secs(1);
const WORKER_RETRY_QUICKLY_FOR: Duration = Duration::from_secs(5);
/// How often a long wait for the worker is said again in the log.
const WORKER_WAIT_LOG: Duration = Duration::from_secs(30);
/// How long a worker that has not yet been ready may answer its readiness path with a
/// failure before the sidecar reports it unavailable (`ferry_worker_unavailable`), as it does
/// at once for a worker that was ready. A worker may answer 503 while it warms up; one that
/// still does after this long is most likely waiting for something it depends on, and more
/// pods would wait too. Kept above common warm-up times: while every pod reports it, the
/// autoscaler adds none, which would slow a scale-out from zero.
const STARTING_WORKER_PATIENCE: Duration = Duration::from_secs(30);

pub struct PumpSettings {
    pub concurrency: usize,
    pub receive_wait: Duration,
    pub lease: Duration,
    pub content_type: String,
    pub permanent_failure_statuses: StatusSet,
    pub retry: RetryPolicy,
    /// `FERRY_RATE_LIMIT`: most delivery starts per second; `None`, no limit.
    pub rate_limit: Option<f64>,
}

/// Randomness and time, injected so the pump's decisions are reproducible in tests.
pub struct Environment {
    pub jitter: Box<dyn Fn() -> f64 + Send + Sync>,
    pub now: fn() -> SystemTime,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            jitter: Box::new(rand::random::<f64>),
            now: SystemTime::now,
        }
    }
}

struct Held {
    message: ReceivedMessage,
    _slot: OwnedSemaphorePermit,
}

pub struct Pump {
    queue: Arc<dyn MessageQueue>,
    deliverer: Deliverer,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    settings: PumpSettings,
    env: Environment,
    headers: FixedHeaders,
    slots: Arc<Semaphore>,
    draining: watch::Sender<bool>,
    /// Accepted messages whose delete/ack has not been answered yet. A delivery gives its
    /// slot back as soon as the worker accepted the message; this count is raised before
    /// that, so a drain that finds every slot free still sees the settle and waits for it.
    settling: watch::Sender<usize>,
    /// How the drain ended, once it has: what `/drained` (the worker containers' preStop
    /// hook) waits for.
    drained: watch::Sender<Option<DrainReport>>,
    groups: SyncMutex<HashMap<String, mpsc::UnboundedSender<Held>>>,
    /// How long the worker has been taking to answer; decides whether a receive waits for
    /// more free slots (`receive_batch`).
    pace: DeliveryPace,
    /// Whether the worker must be seen ready before the next receive: at start, and after a
    /// delivery's answer put it in doubt (`Deliverer::doubts_worker`).
    worker_unconfirmed: AtomicBool,
    /// Paces delivery starts, and with them receives (`FERRY_RATE_LIMIT`, `/rate-limit`).
    rate_limit: RateLimit,
}

/// One settle a drain must wait for; counted down when the settle ends, however it ends.
/// Only a drain waits on the count, and only for zero, so only reaching zero wakes it:
/// a notification per message would be work on every delivery for nothing.
struct Settling<'a>(&'a watch::Sender<usize>);

impl<'a> Settling<'a> {
    fn start(count: &'a watch::Sender<usize>) -> Self {
        count.send_if_modified(|n| {
            *n += 1;
            false
        });
        Self(count)
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.0.send_if_modified(|n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    pub drained: bool,
    pub still_in_flight: usize,
}

impl Pump {
    pub fn new(
        queue: Arc<dyn MessageQueue>,
        deliverer: Deliverer,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        settings: PumpSettings,
        env: Environment,
    ) -> Arc<Self> {
        metrics.concurrency_limit.set(settings.concurrency as i64);
        metrics.record_rate_limit(settings.rate_limit);
        Arc::new(Self {
            headers: FixedHeaders::new(
                queue.provider(),
                queue.queue_name(),
                &settings.content_type,
            ),
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            draining: watch::channel(false).0,
            settling: watch::channel(0).0,
            drained: watch::channel(None).0,
            groups: SyncMutex::new(HashMap::new()),
            pace: DeliveryPace::default(),
            worker_unconfirmed: AtomicBool::new(true),
            rate_limit: RateLimit::new(settings.rate_limit),
            queue,
            deliverer,
            metrics,
            health,
            settings,
            env,
        })
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The delivery starts allowed per second; `None` when unlimited.
    pub fn rate_limit(&self) -> Option<f64> {
        self.rate_limit.per_second()
    }

    /// Changes the rate limit (`None` removes it); deliveries already given their start
    /// keep it, the next ones and the next receive follow the new rate.
    pub fn set_rate_limit(&self, per_second: Option<f64>) {
        let show = |rate: Option<f64>| rate.map_or("none".to_string(), |r| format!("{r}/s"));
        self.rate_limit.set(per_second, |before, after| {
            self.metrics.record_rate_limit(after);
            tracing::info!(
                queue = self.queue.queue_name(),
                "delivery rate limit changed from {} to {}",
                show(before),
                show(after)
            );
        });
    }

    /// Receives and dispatches until a drain starts.
    pub async fn run(self: Arc<Self>) {
        let mut draining = self.draining.subscribe();
        let mut consecutive_errors = 0u32;
        let mut worker_seen_ready = false;
        loop {
            if *draining.borrow() {
                return;
            }
            if self.worker_unconfirmed.load(Ordering::Relaxed) {
                if !self.wait_for_worker(&mut draining, worker_seen_ready).await {
                    return;
                }
                worker_seen_ready = true;
            }
            if self.rate_limit.is_limited() && !self.wait_for_the_rate_limit(&mut draining).await {
                return;
            }
            let first = tokio::select! {
                slot = self.slots.clone().acquire_owned() => slot.expect("slots are never closed"),
                _ = until_draining(&mut draining) => return,
            };
            let batch = self.receive_batch();
            let mut slots = vec![first];
            while slots.len() < batch {
                match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => slots.push(slot),
                    Err(_) => break,
                }
            }
            self.wait_for_a_fuller_batch(&mut slots, batch).await;
            if *draining.borrow() {
                return;
            }
            if self.worker_unconfirmed.load(Ordering::Relaxed) {
                // A delivery failed while this loop waited for its slots (they are often
                // the failed deliveries' own): ask the worker first, not the queue.
                continue;
            }
            let receive = self.queue.receive(slots.len(), self.settings.receive_wait);
            tokio::pin!(receive);
            let received = tokio::select! {
                r = &mut receive => r,
                _ = until_draining(&mut draining) => {
                    self.deliver_pending_receive(receive, slots).await;
                    return;
                }
            };
            match received {
                Ok(messages) => {
                    if consecutive_errors > 0 {
                        tracing::info!(
                            queue = self.queue.queue_name(),
                            "receiving again after {consecutive_errors} failed attempts"
                        );
                    }
                    consecutive_errors = 0;
                    if !messages.is_empty() || self.queue.receive_calls_the_queue() {
                        self.health.queue_answered();
                    }
                    let accepted = !messages.is_empty();
                    for message in messages {
                        let slot = slots.pop().expect("never more messages than slots");
                        self.accept(Held {
                            message,
                            _slot: slot,
                        });
                    }
                    if accepted {
                        // Let the deliveries just spawned reach the worker before the next
                        // receive is built and signed: on one thread that work would
                        // otherwise sit between every message and its delivery.
                        tokio::task::yield_now().await;
                    }
                }
                Err(error) => {
                    consecutive_errors += 1;
                    self.metrics.api_error(&error);
                    self.health.queue_failed(&error);
                    if consecutive_errors == 1 || consecutive_errors.is_power_of_two() {
                        tracing::error!(
                            queue = self.queue.queue_name(),
                            attempts = consecutive_errors,
                            "{error}"
                        );
                    }
                    drop(slots);
                    let pause = error_backoff(consecutive_errors, (self.env.jitter)());
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = until_draining(&mut draining) => return,
                    }
                }
            }
        }
    }

    /// Holds receiving until the worker accepts a connection, or answers 200-399 at its
    /// readiness path when it has one; false when a drain began first. `again`: the worker
    /// was ready before, and a delivery's answer put that in doubt.
    ///
    /// A message received for a worker that is not listening (still starting, restarting,
    /// or listening on another port than FERRY_DELIVERY_URL's) spends one of its deliveries
    /// on a refused connection, and one received for a worker that listens before it can
    /// work (a connection pool still opening, a model still loading), or that stopped being
    /// able to (its database is down), spends it on a 503; a worker that starts slowly or an
    /// outage of what it depends on would send good messages to the dead-letter queue.
    /// Waiting spends none: messages stay in the queue, where other pods can take them, and
    /// the sidecar is not ready meanwhile.
    async fn wait_for_worker(&self, draining: &mut watch::Receiver<bool>, again: bool) -> bool {
        let awaited = self.deliverer.worker_awaited();
        let started = std::time::Instant::now();
        let mut said_at: Option<std::time::Instant> = None;
        // Since when a worker that was not ready before has answered that it is not ready.
        let mut answering_since: Option<std::time::Instant> = None;
        let mut said_unavailable = false;
        loop {
            match self.deliverer.worker_ready().await {
                Ok(()) => {
                    self.worker_unconfirmed.store(false, Ordering::Relaxed);
                    self.health.worker_listening();
                    self.metrics.worker_unavailable.set(0);
                    if said_at.is_some() {
                        tracing::info!(
                            "waited {:.1}s for the worker to {awaited}; receiving",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return true;
                }
                Err(error) => {
                    answering_since = if error.answered {
                        answering_since.or(Some(std::time::Instant::now()))
                    } else {
                        None
                    };
                    let answering_for = answering_since.map(|since| since.elapsed());
                    let unavailable =
                        again || answering_for.is_some_and(|t| t >= STARTING_WORKER_PATIENCE);
                    let why = if again {
                        format!(
                            "waiting for the worker to {awaited} again before receiving (it failed a delivery and is not ready): {error}"
                        )
                    } else if unavailable {
                        format!(
                            "waiting for the worker to {awaited} before receiving: it has answered that it is not ready for {}s, so it runs but cannot work (does something it depends on fail?): {error}",
                            answering_for.unwrap_or_default().as_secs()
                        )
                    } else {
                        format!("waiting for the worker to {awaited} before receiving: {error}")
                    };
                    // Said at once, then every WORKER_WAIT_LOG, and when the worker comes to
                    // count as unavailable; loud when a worker that was ready stopped being
                    // so, or once a wait lasts.
                    if said_at.is_none_or(|at| at.elapsed() >= WORKER_WAIT_LOG)
                        || unavailable != said_unavailable
                    {
                        if said_at.is_none() && !again {
                            tracing::info!("{why}");
                        } else {
                            tracing::warn!(waited_s = started.elapsed().as_secs(), "{why}");
                        }
                        said_at = Some(std::time::Instant::now());
                        said_unavailable = unavailable;
                        self.health.worker_missing(why);
                        // What the autoscaler reads: more pods cannot help a worker that is
                        // down in every one of them.
                        self.metrics.worker_unavailable.set(i64::from(unavailable));
                    }
                }
            }
            let retry = if started.elapsed() < WORKER_RETRY_QUICKLY_FOR {
                WORKER_RETRY
            } else {
                WORKER_RETRY_LATER
            };
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = until_draining(draining) => return false,
            }
        }
    }

    /// Under a rate limit, holds the next receive until every message received so far has
    /// its start (a later start than now means earlier messages are still waiting for their
    /// turn); false when a drain began first. Together with `receive_batch` this keeps what
    /// waits for the limit in the queue, where other pods can take it: a received message
    /// waits at most about a second for its start.
    async fn wait_for_the_rate_limit(&self, draining: &mut watch::Receiver<bool>) -> bool {
        loop {
            let changed = self.rate_limit.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(turn) = self.rate_limit.not_before(Instant::now()) else {
                return true;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(turn.into()) => {}
                _ = changed => {}
                _ = until_draining(draining) => return false,
            }
        }
    }

    /// How many messages the next receive asks for at most: the free slots it takes, up to
    /// an SQS batch, and under a rate limit what the limit lets start within a second.
    fn receive_batch(&self) -> usize {
        let batch = self.settings.concurrency.min(ferry_queues::sqs::MAX_BATCH);
        match self.rate_limit.receive_batch() {
            Some(limit) => batch.min(limit),
            None => batch,
        }
    }

    /// Waits briefly for more free slots when deliveries are quick and the receive would
    /// ask for fewer messages than it may (see `receive_batch`). Only for queues whose
    /// receive is a call: Pub/Sub's reads a local buffer, and costs nothing to repeat.
    async fn wait_for_a_fuller_batch(&self, slots: &mut Vec<OwnedSemaphorePermit>, batch: usize) {
        if !self.queue.receive_calls_the_queue() {
            return;
        }
        let Some(linger) = linger_before_receive(slots.len(), batch, self.pace.typical()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + linger;
        while slots.len() < batch {
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(slot) => slots.push(slot.expect("slots are never closed")),
                Err(_) => break,
            }
        }
    }

    /// A drain started while a receive call was pending. An SQS long poll cannot be called
    /// off: the server may already have leased messages to it, and abandoning the call would
    /// leave them invisible until their lease runs out. Nor are they handed back: every
    /// receive counts towards the queue's `maxReceiveCount`, so a message that had failed a
    /// few times could reach the dead-letter queue through scale-downs alone, without the
    /// deliveries it is owed. They are delivered like any other: the worker is still running
    /// (its preStop hook waits for this drain), and their slots, taken until they are
    /// settled, make the drain wait for them. Pub/Sub's receive reads a local buffer; nothing
    /// is leased by abandoning it.
    async fn deliver_pending_receive(
        self: &Arc<Self>,
        receive: impl std::future::Future<Output = Result<Vec<ReceivedMessage>, QueueError>>,
        mut slots: Vec<OwnedSemaphorePermit>,
    ) {
        if !self.queue.receive_calls_the_queue() {
            return;
        }
        if let Ok(messages) = receive.await {
            for message in messages {
                let slot = slots.pop().expect("never more messages than slots");
                self.accept(Held {
                    message,
                    _slot: slot,
                });
            }
        }
    }

    fn accept(self: &Arc<Self>, held: Held) {
        self.metrics.received.inc();
        self.metrics.in_flight.inc();
        if let Some(published) = held.message.published_at {
            let age = (self.env.now)()
                .duration_since(published)
                .unwrap_or_default();
            self.metrics.message_age.observe(age.as_secs_f64());
        }
        let Some(group) = held.message.ordering_group.clone() else {
            // The turn is taken here, not in the spawned task, so the pump's next receive
            // sees it whichever thread runs the task, and when.
            let turn = self.rate_limit.take(Instant::now);
            let pump = self.clone();
            tokio::spawn(async move {
                pump.deliver_and_settle(held, None, turn).await;
            });
            return;
        };
        let mut groups = self.groups.lock().expect("group map lock");
        let held = match groups.get(&group) {
            Some(runner) => match runner.send(held) {
                Ok(()) => return,
                Err(mpsc::error::SendError(held)) => held,
            },
            None => held,
        };
        let (runner, queued) = mpsc::unbounded_channel();
        runner
            .send(held)
            .unwrap_or_else(|_| unreachable!("the receiver is alive"));
        groups.insert(group.clone(), runner);
        let pump = self.clone();
        tokio::spawn(async move { pump.run_group(group, queued).await });
    }

    /// Delivers one ordering group's messages one after another. A failure hands the rest
    /// of the group back, so nothing later in the group overtakes the failed message.
    async fn run_group(self: Arc<Self>, group: String, mut queued: mpsc::UnboundedReceiver<Held>) {
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        let mut draining = self.draining.subscribe();
        loop {
            let next = {
                let mut waiting = pending.lock().await;
                while let Ok(held) = queued.try_recv() {
                    waiting.push_back(held);
                }
                waiting.pop_front()
            };
            let Some(next) = next else {
                let mut groups = self.groups.lock().expect("group map lock");
                match queued.try_recv() {
                    Ok(held) => {
                        drop(groups);
                        pending.lock().await.push_back(held);
                        continue;
                    }
                    Err(_) => {
                        groups.remove(&group);
                        return;
                    }
                }
            };
            if self.is_draining() {
                self.release_held(vec![next], "drain").await;
                break;
            }
            // A group's message takes its turn when it is its group's turn, not on receipt.
            let turn = self.rate_limit.take(Instant::now);
            let delivery = self.deliver_and_settle(next, Some(pending.clone()), turn);
            tokio::pin!(delivery);
            let succeeded = tokio::select! {
                ok = &mut delivery => ok,
                _ = until_draining(&mut draining) => {
                    // Messages waiting behind the one being delivered go back at once.
                    let waiting: Vec<Held> = pending.lock().await.drain(..).collect();
                    self.release_held(waiting, "drain").await;
                    delivery.await
                }
            };
            if !succeeded || self.is_draining() {
                break;
            }
        }
        // Stop taking new messages for this group, then hand back what is waiting.
        let mut rest: Vec<Held> = pending.lock().await.drain(..).collect();
        self.groups.lock().expect("group map lock").remove(&group);
        while let Ok(held) = queued.try_recv() {
            rest.push(held);
        }
        self.release_held(rest, "ordering group").await;
    }

    async fn release_held(&self, held: Vec<Held>, why: &str) {
        self.release_messages(held.into_iter().map(|h| h.message).collect(), why)
            .await;
    }

    async fn release_messages(&self, messages: Vec<ReceivedMessage>, why: &str) {
        if messages.is_empty() {
            return;
        }
        let count = messages.len();
        let leases: Vec<Lease> = messages.into_iter().map(|m| m.lease).collect();
        if let Err(error) = self.queue.release(leases).await {
            self.metrics.api_error(&error);
            tracing::warn!(
                count,
                "could not hand back messages ({why}); they return when their lease expires: {error}"
            );
        }
        for _ in 0..count {
            self.metrics.completed(SettleOutcome::Released);
            self.metrics.in_flight.dec();
        }
    }

    /// Delivers one message and settles it; true when the worker succeeded. `companions`
    /// are messages waiting behind it in its ordering group, kept leased alongside it.
    /// `turn` is when the rate limit lets it start (`None`: no limit).
    async fn deliver_and_settle(
        &self,
        held: Held,
        companions: Option<Arc<Mutex<VecDeque<Held>>>>,
        turn: Option<Turn>,
    ) -> bool {
        let Held {
            message,
            _slot: slot,
        } = held;
        if let Some(turn) = turn {
            // Under the lease extension too: behind ordering groups, or at a rate lowered
            // after the message was received, a turn can be further away than the lease.
            let wait = self.wait_for_turn(turn);
            tokio::pin!(wait);
            self.with_lease_extension(wait, &message, companions.as_deref())
                .await;
        }
        let headers = delivery_headers(&message, &self.headers);
        let started = std::time::Instant::now();
        // Pinned here, in this task's own state, and lent to the lease extension: a future
        // moved into another async fn is laid out again inside it, and with 100 deliveries
        // in flight every byte of this task is held 100 times.
        let answer = {
            let path = task_path(&message);
            let delivery = self.deliverer.deliver(path, headers, &message.body);
            tokio::pin!(delivery);
            self.with_lease_extension(delivery, &message, companions.as_deref())
                .await
        };
        let took = started.elapsed();
        if self.deliverer.doubts_worker(&answer) {
            self.worker_unconfirmed.store(true, Ordering::Relaxed);
        }
        self.pace.record(took);
        self.metrics.delivery_duration.observe(took.as_secs_f64());
        self.metrics.delivery(answer.label());
        let attempt = message.delivery_attempt.unwrap_or(1);
        let decision = verdict(
            &answer,
            attempt,
            &self.settings.permanent_failure_statuses,
            &self.settings.retry,
            (self.env.jitter)(),
        );
        let succeeded = decision == Verdict::Ack;
        // The worker is done with a message it accepted: the delete/ack needs no delivery
        // slot, and holding one for the queue's round trip would leave the worker idle. A
        // drain still waits for it through `settling`, raised before the slot goes (a drain
        // that took every slot between the two and stopped the process would lose the
        // delete, and the message would be delivered again after its lease).
        let settling = succeeded.then(|| Settling::start(&self.settling));
        let slot = (!succeeded).then_some(slot);
        let outcome = self.settle(message, &answer, decision, attempt).await;
        drop(settling);
        drop(slot);
        self.metrics.completed(outcome);
        self.metrics.in_flight.dec();
        succeeded
    }

    /// Waits for a delivery's start under the rate limit. Not cut short by a drain: the
    /// wait is part of the delivery (for a message received without an ordering group,
    /// about a second at most, see `wait_for_the_rate_limit`).
    async fn wait_for_turn(&self, turn: Turn) {
        let waited = self.rate_limit.wait(turn).await;
        if !waited.is_zero() {
            self.metrics.rate_limit_wait.inc_by(waited.as_secs_f64());
        }
    }

    /// Runs the delivery, extending the lease every third of its length when the queue needs
    /// it, so a worker slower than the lease never causes a second delivery of the message.
    /// (Also the wait for a delivery's turn under the rate limit.)
    async fn with_lease_extension<T>(
        &self,
        mut delivery: Pin<&mut impl Future<Output = T>>,
        message: &ReceivedMessage,
        companions: Option<&Mutex<VecDeque<Held>>>,
    ) -> T {
        if !self.queue.needs_lease_extension() {
            return delivery.await;
        }
        let period = self.settings.lease / 3;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                answer = delivery.as_mut() => return answer,
                _ = ticker.tick() => {
                    let waiting = match companions {
                        Some(c) => Some(c.lock().await),
                        None => None,
                    };
                    let mut leases = vec![&message.lease];
                    if let Some(waiting) = &waiting {
                        leases.extend(waiting.iter().map(|h| &h.message.lease));
                    }
                    match self.queue.extend(&leases, self.settings.lease).await {
                        Ok(()) => self.metrics.lease_extensions.inc_by(leases.len() as u64),
                        Err(error) => {
                            self.metrics.api_error(&error);
                            tracing::warn!(message_id = %message.id, "could not extend the lease of a running delivery: {error}");
                        }
                    }
                }
            }
        }
    }

    async fn settle(
        &self,
        message: ReceivedMessage,
        answer: &WorkerAnswer,
        decision: Verdict,
        attempt: u32,
    ) -> SettleOutcome {
        let id = message.id.clone();
        match decision {
            Verdict::Ack => {
                tracing::debug!(message_id = %id, attempt, "delivered");
                if let Err(error) = self.queue.ack(message.lease).await {
                    self.report(&error, &id, "the worker succeeded but the message could not be deleted/acked; it will be delivered again");
                }
                SettleOutcome::Succeeded
            }
            Verdict::Retry(delay) => {
                tracing::warn!(message_id = %id, attempt, retry_in = ?delay, "{}; retrying", answer.describe());
                if let Err(error) = self.queue.retry_after(message.lease, delay).await {
                    self.report(
                        &error,
                        &id,
                        "could not set the retry delay; the message returns when its lease expires",
                    );
                }
                SettleOutcome::Retried
            }
            Verdict::DeadLetter { status } => {
                let reason = DeadLetterReason {
                    status: Some(status),
                    description: format!(
                        "worker answered HTTP {status}, listed in FERRY_PERMANENT_FAILURE_STATUSES"
                    ),
                };
                // Sent first, acked after: if either step fails the message stays in the
                // source queue, at worst as a duplicate in the DLQ, never lost.
                match self.queue.send_to_dead_letter(&message, &reason).await {
                    Ok(()) => {
                        tracing::warn!(message_id = %id, attempt, status, "permanent failure; moved to the dead-letter queue");
                        if let Err(error) = self.queue.ack(message.lease).await {
                            self.report(&error, &id, "sent to the dead-letter queue but not removed from the queue; it will be delivered again");
                        }
                        SettleOutcome::DeadLettered
                    }
                    Err(error) => {
                        self.report(&error, &id, "could not send a permanently failed message to the dead-letter queue; retrying it instead");
                        let delay = self.settings.retry.backoff(attempt, (self.env.jitter)());
                        if let Err(error) = self.queue.retry_after(message.lease, delay).await {
                            self.metrics.api_error(&error);
                        }
                        SettleOutcome::Retried
                    }
                }
            }
        }
    }

    fn report(&self, error: &QueueError, message_id: &str, what: &str) {
        self.metrics.api_error(error);
        tracing::warn!(message_id, "{what}: {error}");
    }

    /// Stops receiving, hands back what is not being delivered, and waits up to `deadline`
    /// for in-flight deliveries to finish. Safe to call more than once (preStop, then SIGTERM).
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        if !self.draining.send_replace(true) {
            tracing::info!(
                queue = self.queue.queue_name(),
                "draining: no new messages will be received"
            );
        }
        self.metrics.draining.set(1);
        self.health.set_draining();
        self.queue.close().await;
        let all = self.settings.concurrency as u32;
        let mut settling = self.settling.subscribe();
        let finished = async {
            let slots = self.slots.acquire_many(all).await;
            let _ = settling.wait_for(|n| *n == 0).await;
            slots
        };
        let report = match tokio::time::timeout(deadline, finished).await {
            Ok(_) => {
                self.queue.flush().await;
                DrainReport {
                    drained: true,
                    still_in_flight: 0,
                }
            }
            Err(_) => DrainReport {
                drained: false,
                still_in_flight: self.settings.concurrency - self.slots.available_permits(),
            },
        };
        self.drained.send_replace(Some(report));
        report
    }

    /// Waits, without starting one, for a drain to begin (at most `to_begin`) and then to
    /// end. `None` when none began in time: this sidecar is not stopping.
    pub async fn until_drained(&self, to_begin: Duration) -> Option<DrainReport> {
        let mut draining = self.draining.subscribe();
        tokio::time::timeout(to_begin, until_draining(&mut draining))
            .await
            .ok()?;
        let mut drained = self.drained.subscribe();
        let report: Option<DrainReport> = *drained.wait_for(Option::is_some).await.ok()?;
        report
    }
}

/// Resolves once a drain has started. (A wrapper, because the guard `wait_for` returns must
/// not live across an await in a spawned task.)
async fn until_draining(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

/// Pause after the n-th consecutive failed receive: 0.5 s doubling up to 30 s, jittered.
fn error_backoff(consecutive: u32, jitter: f64) -> Duration {
    RetryPolicy {
        min: Duration::from_millis(500),
        max: MAX_ERROR_BACKOFF,
    }
    .backoff(consecutive, jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_errors_back_off_to_a_cap() {
        assert_eq!(error_backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(error_backoff(2, 1.0), Duration::from_secs(1));
        assert_eq!(error_backoff(20, 1.0), MAX_ERROR_BACKOFF);
        assert!(error_backoff(20, 0.0) >= MAX_ERROR_BACKOFF / 2);
    }
}

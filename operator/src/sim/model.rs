//! A discrete-time model of one queue and the pods consuming it.
//!
//! Time advances in 1 s ticks; the controller acts at tick boundaries, but messages start and
//! finish at exact (fractional) times, so waits are not rounded to the tick. Each ready pod
//! has `concurrency` delivery slots; a slot takes the oldest visible message as soon as it is
//! free. Pods become ready `pod_startup_seconds` after they are created and cost
//! replica-seconds from creation until they are gone.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::random::lognormal;
use super::trace::Trace;
use crate::autoscaler::{PodLoad, choose_pods_to_remove};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub pod_startup_seconds: f64,
    pub concurrency_per_pod: u32,
    /// Used for trace seconds that do not give their own.
    pub default_mean_service_seconds: f64,
    /// Coefficient of variation of the (log-normal) service time.
    pub service_cv: f64,
    /// How long a pod the HPA removes may keep working before it is killed.
    pub termination_grace_seconds: f64,
    /// When a killed pod's message becomes visible again, counted from its receipt.
    pub visibility_timeout_seconds: f64,
    /// The wait a message may have; waits beyond it are SLO violations.
    pub latency_target_seconds: f64,
    pub max_replicas: u32,
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            pod_startup_seconds: 15.0,
            concurrency_per_pod: 8,
            default_mean_service_seconds: 0.5,
            service_cv: 1.0,
            termination_grace_seconds: 30.0,
            visibility_timeout_seconds: 30.0,
            latency_target_seconds: 30.0,
            max_replicas: 50,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message {
    pub arrival: f64,
    pub service: f64,
}

/// Every message of a trace with its exact arrival and service time, drawn once so that all
/// policies see the very same work.
pub fn materialize(trace: &Trace, config: &ModelConfig) -> Vec<Message> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut messages = Vec::with_capacity(trace.total_arrivals() as usize);
    for (second, load) in trace.seconds.iter().enumerate() {
        let mean = load
            .mean_service_seconds
            .unwrap_or(config.default_mean_service_seconds);
        let mut offsets: Vec<f64> = (0..load.arrivals).map(|_| rng.random::<f64>()).collect();
        offsets.sort_by(f64::total_cmp);
        for offset in offsets {
            messages.push(Message {
                arrival: second as f64 + offset,
                service: lognormal(&mut rng, mean, config.service_cv),
            });
        }
    }
    messages
}

/// How a controller's scale-down picks and stops pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalMode {
    /// Ferry: the pods [`choose_pods_to_remove`] picks stop receiving and finish what they
    /// hold before they exit.
    DrainIdlest,
    /// A ReplicaSet scaling down: unready pods first, then the newest; each gets the
    /// termination grace period, after which its unfinished messages are cut and reappear
    /// once their visibility timeout expires.
    KillNewest,
}

/// The state at the end of a tick, with cumulative counters as a Prometheus scrape sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TickRecord {
    pub time: f64,
    pub visible: u64,
    /// Received and not settled, including messages of killed pods still invisible.
    pub not_visible: u64,
    /// Messages being processed by sidecars.
    pub running: u64,
    pub received_total: u64,
    pub completed_total: u64,
    pub service_seconds_total: f64,
    pub age_at_receipt_seconds_total: f64,
    /// Ready pods that still receive (not draining, not terminating).
    pub ready_receiving_pods: u32,
}

/// A controller under test: called at every tick boundary, it may set a new replica count.
pub trait Controller {
    fn removal_mode(&self) -> RemovalMode;
    fn tick(&mut self, now: f64, history: &[TickRecord], replicas: u32) -> Option<u32>;
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    message: Message,
    visible_at: f64,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    message: Message,
    received_at: f64,
    ends_at: f64,
}

#[derive(Debug, Clone)]
struct Slot {
    free_at: f64,
    running: Option<Running>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PodPhase {
    Serving,
    Draining,
    Terminating { kill_at: f64 },
}

#[derive(Debug, Clone)]
struct Pod {
    created_at: f64,
    stop_requested_at: f64,
    ready_at: f64,
    phase: PodPhase,
    slots: Vec<Slot>,
}

impl Pod {
    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.running.is_some()).count()
    }
}

/// Slot availability, earliest first.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FreeSlot {
    at: f64,
    pod: usize,
    slot: usize,
}

impl Eq for FreeSlot {}

impl Ord for FreeSlot {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.pod.cmp(&self.pod))
            .then_with(|| other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for FreeSlot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What one run of a controller over a trace produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Wait of every message, from first arrival to the start of the delivery that finished.
    pub waits: Vec<f64>,
    pub replica_seconds: f64,
    pub scale_events: u32,
    pub slo_violation_seconds: f64,
    /// Per second: replica count the controller set, and visible backlog.
    pub replicas: Vec<u32>,
    pub backlog: Vec<u64>,
    pub redeliveries: u64,
}

struct Cluster<'a> {
    config: &'a ModelConfig,
    pods: Vec<Pod>,
    replicas: u32,
    queue: VecDeque<Queued>,
    /// Messages of killed pods, invisible until `.0`.
    invisible: Vec<(f64, Message)>,
    finished_pod_seconds: f64,
    record: TickRecord,
    waits: Vec<f64>,
    redeliveries: u64,
}

impl<'a> Cluster<'a> {
    fn new(config: &'a ModelConfig, expected_messages: usize) -> Self {
        Self {
            config,
            pods: Vec::new(),
            replicas: 0,
            queue: VecDeque::new(),
            invisible: Vec::new(),
            finished_pod_seconds: 0.0,
            record: TickRecord::default(),
            waits: Vec::with_capacity(expected_messages),
            redeliveries: 0,
        }
    }

    fn serving(&self) -> u32 {
        self.pods
            .iter()
            .filter(|p| p.phase == PodPhase::Serving)
            .count() as u32
    }

    fn scale_to(&mut self, now: f64, replicas: u32, mode: RemovalMode) {
        let replicas = replicas.min(self.config.max_replicas);
        self.replicas = replicas;
        let serving = self.serving();
        for _ in serving..replicas {
            let slots = (0..self.config.concurrency_per_pod)
                .map(|_| Slot {
                    free_at: now,
                    running: None,
                })
                .collect();
            self.pods.push(Pod {
                created_at: now,
                stop_requested_at: f64::INFINITY,
                ready_at: now + self.config.pod_startup_seconds,
                phase: PodPhase::Serving,
                slots,
            });
        }
        if replicas >= serving {
            return;
        }
        let serving_pods =
            (0..self.pods.len()).filter(|&i| self.pods[i].phase == PodPhase::Serving);
        let to_remove = (serving - replicas) as usize;
        let candidates: Vec<usize> = match mode {
            RemovalMode::DrainIdlest => {
                let loads: Vec<PodLoad<usize>> = serving_pods
                    .map(|i| PodLoad {
                        id: i,
                        ready: self.pods[i].ready_at <= now,
                        in_flight: self.pods[i].in_flight() as u64,
                    })
                    .collect();
                choose_pods_to_remove(&loads, to_remove)
            }
            RemovalMode::KillNewest => {
                let mut newest_first: Vec<usize> = serving_pods.collect();
                let pods = &self.pods;
                newest_first.sort_by(|&a, &b| {
                    let (pa, pb) = (&pods[a], &pods[b]);
                    (pa.ready_at <= now)
                        .cmp(&(pb.ready_at <= now))
                        .then(pb.created_at.total_cmp(&pa.created_at))
                });
                newest_first.truncate(to_remove);
                newest_first
            }
        };
        for &i in &candidates {
            self.pods[i].stop_requested_at = now;
            self.pods[i].phase = match mode {
                RemovalMode::DrainIdlest => PodPhase::Draining,
                RemovalMode::KillNewest => PodPhase::Terminating {
                    kill_at: now + self.config.termination_grace_seconds,
                },
            };
        }
    }

    fn kill_overdue(&mut self, now: f64) {
        let visibility = self.config.visibility_timeout_seconds;
        for pod in &mut self.pods {
            let PodPhase::Terminating { kill_at } = pod.phase else {
                continue;
            };
            if kill_at > now {
                continue;
            }
            for slot in &mut pod.slots {
                if let Some(run) = slot.running.take() {
                    if run.ends_at <= kill_at {
                        slot.running = Some(run);
                        continue;
                    }
                    self.invisible
                        .push(((run.received_at + visibility).max(kill_at), run.message));
                    self.redeliveries += 1;
                }
            }
        }
    }

    fn enqueue(&mut self, arrivals: &[Message], tick_end: f64) {
        self.queue.extend(arrivals.iter().map(|&message| Queued {
            message,
            visible_at: message.arrival,
        }));
        let mut i = 0;
        while i < self.invisible.len() {
            if self.invisible[i].0 < tick_end {
                let (visible_at, message) = self.invisible.swap_remove(i);
                // A reappearing message joins by the time it becomes visible; its wait keeps
                // counting from its first arrival.
                let position = self
                    .queue
                    .iter()
                    .position(|q| q.visible_at > visible_at)
                    .unwrap_or(self.queue.len());
                self.queue.insert(
                    position,
                    Queued {
                        message,
                        visible_at,
                    },
                );
            } else {
                i += 1;
            }
        }
    }

    /// A delivery finished. Its wait counts only now: a delivery cut by a kill does not
    /// finish, and the message's wait runs on until a later delivery does.
    fn complete(record: &mut TickRecord, waits: &mut Vec<f64>, run: Running) {
        record.completed_total += 1;
        record.service_seconds_total += run.message.service;
        waits.push(run.received_at - run.message.arrival);
    }

    fn dispatch(&mut self, tick_start: f64, tick_end: f64) {
        let mut free = BinaryHeap::new();
        for (p, pod) in self.pods.iter().enumerate() {
            if pod.phase != PodPhase::Serving || pod.ready_at >= tick_end {
                continue;
            }
            for (s, slot) in pod.slots.iter().enumerate() {
                let at = slot.free_at.max(pod.ready_at).max(tick_start);
                if at < tick_end {
                    free.push(FreeSlot {
                        at,
                        pod: p,
                        slot: s,
                    });
                }
            }
        }
        while let Some(Queued {
            message: head,
            visible_at,
        }) = self.queue.front().copied()
        {
            let Some(FreeSlot { at, pod, slot }) = free.pop() else {
                break;
            };
            let start = at.max(visible_at);
            if start >= tick_end {
                break;
            }
            self.queue.pop_front();
            let slot_ref = &mut self.pods[pod].slots[slot];
            if let Some(done) = slot_ref.running.take() {
                Self::complete(&mut self.record, &mut self.waits, done);
            }
            let wait = start - head.arrival;
            self.record.received_total += 1;
            self.record.age_at_receipt_seconds_total += wait;
            let ends_at = start + head.service;
            slot_ref.running = Some(Running {
                message: head,
                received_at: start,
                ends_at,
            });
            slot_ref.free_at = ends_at;
            if ends_at < tick_end {
                free.push(FreeSlot {
                    at: ends_at,
                    pod,
                    slot,
                });
            }
        }
        for pod in &mut self.pods {
            for slot in &mut pod.slots {
                if let Some(run) = slot.running
                    && run.ends_at < tick_end
                {
                    slot.running = None;
                    Self::complete(&mut self.record, &mut self.waits, run);
                }
            }
        }
    }

    fn retire(&mut self, tick_end: f64) {
        let mut finished = 0.0;
        self.pods.retain(|pod| {
            let gone = pod.phase != PodPhase::Serving && pod.in_flight() == 0;
            if gone {
                let last_work = pod
                    .slots
                    .iter()
                    .map(|s| s.free_at)
                    .fold(pod.stop_requested_at, f64::max);
                finished += last_work.min(tick_end) - pod.created_at;
            }
            !gone
        });
        self.finished_pod_seconds += finished;
    }

    /// Records the end of a tick and returns how long the oldest waiting message has waited.
    fn record_tick(&mut self, tick_end: f64) -> f64 {
        let running: u64 = self.pods.iter().map(|p| p.in_flight() as u64).sum();
        self.record.time = tick_end;
        self.record.visible = self.queue.len() as u64;
        self.record.running = running;
        self.record.not_visible = running + self.invisible.len() as u64;
        self.record.ready_receiving_pods = self
            .pods
            .iter()
            .filter(|p| p.phase == PodPhase::Serving && p.ready_at <= tick_end)
            .count() as u32;
        self.queue
            .iter()
            .take(64)
            .map(|q| tick_end - q.message.arrival)
            .fold(0.0, f64::max)
    }

    fn live_pod_seconds(&self, now: f64) -> f64 {
        self.pods.iter().map(|p| now - p.created_at).sum()
    }

    fn idle(&self) -> bool {
        self.queue.is_empty()
            && self.invisible.is_empty()
            && self.pods.iter().all(|p| p.in_flight() == 0)
    }
}

/// Runs `controller` over the messages. The run lasts the trace's duration, and longer while
/// messages are left, up to `horizon_cap` seconds.
pub fn run(
    config: &ModelConfig,
    messages: &[Message],
    duration_seconds: usize,
    controller: &mut dyn Controller,
    horizon_cap: usize,
) -> RunOutcome {
    let mode = controller.removal_mode();
    let mut cluster = Cluster::new(config, messages.len());
    let mut history = vec![TickRecord::default()];
    let mut next_message = 0;
    let mut scale_events = 0;
    let mut slo_violation_seconds = 0.0;
    let mut replicas_series = Vec::with_capacity(duration_seconds);
    let mut backlog_series = Vec::with_capacity(duration_seconds);
    let mut second = 0usize;
    loop {
        let done = next_message == messages.len() && cluster.idle();
        if (second >= duration_seconds && done) || second >= horizon_cap {
            break;
        }
        let now = second as f64;
        let tick_end = now + 1.0;
        if let Some(target) = controller.tick(now, &history, cluster.replicas)
            && target != cluster.replicas
        {
            scale_events += 1;
            cluster.scale_to(now, target, mode);
        }
        cluster.kill_overdue(now);
        let first = next_message;
        while next_message < messages.len() && messages[next_message].arrival < tick_end {
            next_message += 1;
        }
        cluster.enqueue(&messages[first..next_message], tick_end);
        cluster.dispatch(now, tick_end);
        cluster.retire(tick_end);
        let oldest_age = cluster.record_tick(tick_end);
        if oldest_age > config.latency_target_seconds {
            slo_violation_seconds += 1.0;
        }
        replicas_series.push(cluster.replicas);
        backlog_series.push(cluster.record.visible);
        history.push(cluster.record);
        second += 1;
    }
    let end = second as f64;
    // At the cap, running messages count with the wait they had, and waiting ones with the
    // wait so far.
    let mut waits = std::mem::take(&mut cluster.waits);
    for pod in &cluster.pods {
        waits.extend(
            pod.slots
                .iter()
                .filter_map(|s| s.running)
                .map(|r| r.received_at - r.message.arrival),
        );
    }
    waits.extend(cluster.queue.iter().map(|q| end - q.message.arrival));
    waits.extend(cluster.invisible.iter().map(|(_, m)| end - m.arrival));
    RunOutcome {
        waits,
        replica_seconds: cluster.finished_pod_seconds + cluster.live_pod_seconds(end),
        scale_events,
        slo_violation_seconds,
        replicas: replicas_series,
        backlog: backlog_series,
        redeliveries: cluster.redeliveries,
    }
}

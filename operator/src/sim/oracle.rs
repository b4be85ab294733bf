//! The `oracle`: the replica-seconds a clairvoyant scheduler needs to start every message
//! within the latency target, in a model relaxed in its favour.
//!
//! It knows every arrival and service time in advance and has no polling, lag or dispatch
//! delay. It pools the slots of all pods as if they were one, and may pause a message and
//! resume it later (at most one slot per message at a time): every schedule a real policy can
//! run is one of these, so this can only be cheaper. A message meets the target when it can
//! finish by `arrival + target + service`. Each second the oracle pays for the fewest pods
//! that keep every message able to finish in time (only messages without slack force
//! capacity: later capacity serves everything earlier capacity could), then gives the slots
//! it pays for anyway to the earliest deadlines, so it wastes a slot only when no message at
//! all is waiting.
//!
//! Start-ups: going from zero to one pod costs the model's start-up delay, or the idle time
//! since the last pod if that is shorter (keeping it would have been cheaper). Pods beyond
//! the first are taken to start for free: charging them would make the bound depend on how
//! smoothly the oracle places them, and a lower bound must not overcharge. It is not a policy
//! anyone could run.

use super::model::{Message, ModelConfig, RunOutcome};

const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, Copy)]
struct Pending {
    arrival: f64,
    finish_by: f64,
    remaining: f64,
    started: bool,
}

pub fn oracle(
    config: &ModelConfig,
    messages: &[Message],
    duration_seconds: usize,
    min_replicas: u32,
) -> RunOutcome {
    let slots_per_pod = f64::from(config.concurrency_per_pod);
    let target = config.latency_target_seconds;
    // Sorted by `finish_by`, earliest first.
    let mut pending: Vec<Pending> = Vec::new();
    let mut forced: Vec<f64> = Vec::new();
    let mut waits = Vec::with_capacity(messages.len());
    let mut replicas_series = Vec::new();
    let mut backlog_series = Vec::new();
    let mut first_pod_last_used: Option<usize> = None;
    let mut startup_cost = 0.0;
    let mut next = 0;
    let mut t = 0usize;
    while t < duration_seconds || next < messages.len() || !pending.is_empty() {
        let now = t as f64;
        let tick_end = now + 1.0;
        while next < messages.len() && messages[next].arrival < tick_end {
            let m = messages[next];
            let entry = Pending {
                arrival: m.arrival,
                finish_by: m.arrival + target + m.service,
                remaining: m.service,
                started: false,
            };
            let at = pending.partition_point(|p| p.finish_by <= entry.finish_by);
            pending.insert(at, entry);
            next += 1;
        }
        // Work that cannot wait past this second without missing a deadline.
        forced.clear();
        forced.extend(pending.iter().map(|p| {
            let must = p.remaining - (p.finish_by - tick_end);
            must.clamp(0.0, p.remaining.min(1.0))
        }));
        let must_total: f64 = forced.iter().sum();
        let replicas =
            ((must_total / slots_per_pod - EPSILON).ceil().max(0.0) as u32).max(min_replicas);
        let mut spare = f64::from(replicas) * slots_per_pod - must_total;
        for (p, must) in pending.iter_mut().zip(&forced) {
            let extra = (p.remaining.min(1.0) - must).min(spare).max(0.0);
            spare -= extra;
            let work = must + extra;
            if work > EPSILON {
                if !p.started {
                    p.started = true;
                    waits.push((now - p.arrival).max(0.0));
                }
                p.remaining -= work;
            }
        }
        pending.retain(|p| p.remaining > EPSILON);

        if replicas > 0 {
            startup_cost += match first_pod_last_used {
                Some(p) if p + 1 == t => 0.0,
                Some(p) => ((t - p - 1) as f64).min(config.pod_startup_seconds),
                None => config.pod_startup_seconds,
            };
            first_pod_last_used = Some(t);
        }
        replicas_series.push(replicas);
        backlog_series.push(pending.iter().filter(|p| !p.started).count() as u64);
        t += 1;
    }
    let scale_events = replicas_series.windows(2).filter(|w| w[0] != w[1]).count() as u32;
    let busy: f64 = replicas_series.iter().map(|&r| f64::from(r)).sum();
    RunOutcome {
        waits,
        replica_seconds: busy + startup_cost,
        scale_events,
        slo_violation_seconds: 0.0,
        replicas: replicas_series,
        backlog: backlog_series,
        redeliveries: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig {
            concurrency_per_pod: 4,
            latency_target_seconds: 10.0,
            pod_startup_seconds: 5.0,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn every_message_starts_within_the_target() {
        let messages: Vec<Message> = (0..1000)
            .map(|i| Message {
                arrival: f64::from(i) * 0.1,
                service: 0.7,
            })
            .collect();
        let outcome = oracle(&config(), &messages, 100, 0);
        assert_eq!(outcome.waits.len(), 1000);
        assert!(outcome.waits.iter().all(|w| *w <= 10.0));
    }

    #[test]
    fn steady_work_costs_its_slot_seconds_plus_one_start() {
        // 10 msg/s × 0.4 s = 4 busy slots = one pod of 4 slots, all the time.
        let messages: Vec<Message> = (0..10_000)
            .map(|i| Message {
                arrival: f64::from(i) * 0.1,
                service: 0.4,
            })
            .collect();
        let outcome = oracle(&config(), &messages, 1000, 0);
        let work: f64 = messages.iter().map(|m| m.service).sum::<f64>() / 4.0;
        assert!(
            outcome.replica_seconds >= work,
            "{}",
            outcome.replica_seconds
        );
        assert!(
            outcome.replica_seconds <= work * 1.02 + 20.0,
            "{}",
            outcome.replica_seconds
        );
    }

    #[test]
    fn a_lone_message_costs_a_start_up_and_its_service() {
        let messages = [Message {
            arrival: 100.2,
            service: 3.0,
        }];
        let outcome = oracle(&config(), &messages, 300, 0);
        // Started lazily when its slack runs out, runs 3 s on one pod that had to start.
        assert_eq!(outcome.replica_seconds, 3.0 + 5.0);
        assert!(
            outcome.waits[0] <= 10.0 && outcome.waits[0] > 8.0,
            "{}",
            outcome.waits[0]
        );
    }
}

//! The `oracle`: the replica-seconds a clairvoyant scheduler needs to start every message
//! within the latency target, in a model relaxed in its favour.
//!
//! It knows every arrival and service time in advance, pays for pods only while it uses
//! their slots (plus start-ups, see below), pools the slots of all pods as if they were one
//! (no message is ever stuck behind a busy pod while another has room), and has no polling,
//! lag or dispatch delay. Each second it starts only the messages whose deadline forces them
//! and then fills the slots it pays for anyway with the next ones (lazy earliest-deadline
//! scheduling): buying capacity later never costs more, because later capacity can serve
//! everything earlier capacity could. Each "pod level" it uses is either kept idle through a
//! gap or stopped and started again, whichever is cheaper, at the model's start-up delay.
//! The result is a lower bound for these rules, not a policy anyone could run.

use std::collections::VecDeque;

use super::model::{Message, ModelConfig, RunOutcome};

const EPSILON: f64 = 1e-9;

pub fn oracle(
    config: &ModelConfig,
    messages: &[Message],
    duration_seconds: usize,
    min_replicas: u32,
) -> RunOutcome {
    let slots_per_pod = f64::from(config.concurrency_per_pod);
    let target = config.latency_target_seconds;
    let mut waiting: VecDeque<Message> = VecDeque::new();
    let mut running: Vec<f64> = Vec::new();
    let mut waits = Vec::with_capacity(messages.len());
    let mut replicas_series = Vec::new();
    let mut backlog_series = Vec::new();
    let mut level_last_used: Vec<Option<usize>> = Vec::new();
    let mut startup_cost = 0.0;
    let mut next = 0;
    let mut t = 0usize;
    while t < duration_seconds
        || next < messages.len()
        || !waiting.is_empty()
        || !running.is_empty()
    {
        let now = t as f64;
        let tick_end = now + 1.0;
        while next < messages.len() && messages[next].arrival < tick_end {
            waiting.push_back(messages[next]);
            next += 1;
        }
        // Work of the running messages this second, at one slot each.
        let mut used = 0.0;
        for remaining in &mut running {
            let share = remaining.min(1.0);
            used += share;
            *remaining -= share;
        }
        while let Some(m) = waiting.front().copied() {
            if m.arrival + target >= tick_end {
                break;
            }
            waiting.pop_front();
            waits.push((now - m.arrival).max(0.0));
            let share = m.service.min(1.0);
            used += share;
            running.push(m.service - share);
        }
        let replicas = ((used / slots_per_pod - EPSILON).ceil().max(0.0) as u32).max(min_replicas);
        let mut spare = f64::from(replicas) * slots_per_pod - used;
        while spare > EPSILON {
            let Some(m) = waiting.pop_front() else {
                break;
            };
            waits.push((now - m.arrival).max(0.0));
            let share = m.service.min(1.0).min(spare);
            spare -= share;
            running.push(m.service - share);
        }
        running.retain(|r| *r > EPSILON);

        if level_last_used.len() < replicas as usize {
            level_last_used.resize(replicas as usize, None);
        }
        for last in level_last_used.iter_mut().take(replicas as usize) {
            startup_cost += match *last {
                Some(p) if p + 1 == t => 0.0,
                Some(p) => ((t - p - 1) as f64).min(config.pod_startup_seconds),
                None => config.pod_startup_seconds,
            };
            *last = Some(t);
        }
        replicas_series.push(replicas);
        backlog_series.push(waiting.len() as u64);
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
        // Started lazily at its deadline, runs 3 s on one pod that had to start.
        assert_eq!(outcome.replica_seconds, 3.0 + 5.0);
        assert!((outcome.waits[0] - 9.8).abs() < 1e-9);
    }
}

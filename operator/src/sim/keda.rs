//! KEDA's SQS scaler (or its Pub/Sub scaler) driving an HPA, modelled from their documented
//! defaults (REFERENCE.md):
//!
//! - metric: visible + in flight (`scaleOnInFlight` on, delayed off), read from the queue's
//!   attributes with the same lag `ferry` gets; on Pub/Sub, `num_undelivered_messages` from
//!   Cloud Monitoring, minutes old ([`super::counts::CloudMonitoring`]);
//! - KEDA's own loop every `pollingInterval` (30 s) does 0 → 1 when the metric is above the
//!   activation length, and 1 → 0 after `cooldownPeriod` (300 s) without activity;
//! - the HPA syncs every 15 s: desired = ceil(metric / queueLength) (`AverageValue`), no
//!   change within 10 % tolerance, scale-up at most max(+100 %, +4 pods) per sync, scale-down to
//!   the highest recommendation of the last 300 s;
//! - the ReplicaSet removes unready then newest pods, which get the grace period.

use std::collections::VecDeque;

use super::counts::QueueCounts;
use super::model::{Controller, RemovalMode, TickRecord};

#[derive(Debug, Clone, PartialEq)]
pub struct KedaConfig {
    pub queue_length: u32,
    pub activation_queue_length: u32,
    pub polling_interval_seconds: u32,
    pub cooldown_seconds: u32,
    pub hpa_sync_seconds: u32,
    pub tolerance: f64,
    pub scale_down_stabilization_seconds: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub lag_seconds: u32,
    /// How the queue's counts read for KEDA's scaler (SQS attributes, Pub/Sub through Cloud
    /// Monitoring).
    pub counts: QueueCounts,
}

impl KedaConfig {
    pub fn with_queue_length(queue_length: u32, max_replicas: u32, lag_seconds: u32) -> Self {
        Self {
            queue_length,
            activation_queue_length: 0,
            polling_interval_seconds: 30,
            cooldown_seconds: 300,
            hpa_sync_seconds: 15,
            tolerance: 0.1,
            scale_down_stabilization_seconds: 300,
            min_replicas: 0,
            max_replicas,
            lag_seconds,
            counts: QueueCounts::default(),
        }
    }
}

pub struct KedaController {
    config: KedaConfig,
    last_active: Option<f64>,
    recommendations: VecDeque<(f64, u32)>,
}

impl KedaController {
    pub fn new(config: KedaConfig) -> Self {
        Self {
            config,
            last_active: None,
            recommendations: VecDeque::new(),
        }
    }

    fn metric(&self, history: &[TickRecord]) -> Option<u64> {
        let index = history
            .len()
            .checked_sub(1 + self.config.lag_seconds as usize)?;
        let (visible, not_visible) = self.config.counts.read(history, index);
        Some(visible + not_visible)
    }

    fn keda_loop(&mut self, now: f64, backlog: u64, replicas: u32) -> Option<u32> {
        let active = backlog > u64::from(self.config.activation_queue_length);
        if active {
            self.last_active = Some(now);
            if replicas == 0 {
                return Some(self.config.min_replicas.max(1));
            }
        } else if replicas > self.config.min_replicas {
            let idle_for = self.last_active.map_or(f64::INFINITY, |t| now - t);
            if self.config.min_replicas == 0 && idle_for >= f64::from(self.config.cooldown_seconds)
            {
                self.recommendations.clear();
                return Some(0);
            }
        }
        None
    }

    fn hpa_sync(&mut self, now: f64, backlog: u64, replicas: u32) -> u32 {
        let target = f64::from(self.config.queue_length);
        let current = f64::from(replicas);
        let ratio = backlog as f64 / (target * current);
        let raw = if (ratio - 1.0).abs() <= self.config.tolerance {
            replicas
        } else {
            (backlog as f64 / target).ceil() as u32
        };
        let hpa_min = self.config.min_replicas.max(1);
        let raw = raw.clamp(hpa_min, self.config.max_replicas);
        self.recommendations.push_back((now, raw));
        let window = f64::from(self.config.scale_down_stabilization_seconds);
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t < now - window)
        {
            self.recommendations.pop_front();
        }
        if raw > replicas {
            let limit = (replicas * 2).max(replicas + 4);
            raw.min(limit)
        } else {
            let stabilized = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(raw);
            stabilized.min(replicas)
        }
    }
}

impl Controller for KedaController {
    fn removal_mode(&self) -> RemovalMode {
        RemovalMode::KillNewest
    }

    fn tick(&mut self, now: f64, history: &[TickRecord], replicas: u32) -> Option<u32> {
        let second = now as u64;
        let backlog = self.metric(history)?;
        let mut replicas_now = replicas;
        let mut changed = None;
        if second.is_multiple_of(u64::from(self.config.polling_interval_seconds))
            && let Some(to) = self.keda_loop(now, backlog, replicas_now)
        {
            replicas_now = to;
            changed = Some(to);
        }
        // The HPA leaves a scaled-to-zero target alone (KEDA owns 0 ↔ 1) and sees KEDA's
        // change only at its next sync.
        if changed.is_none()
            && replicas_now > 0
            && second.is_multiple_of(u64::from(self.config.hpa_sync_seconds))
        {
            let to = self.hpa_sync(now, backlog, replicas_now);
            if to != replicas_now {
                changed = Some(to);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history_with_backlog(backlog: u64) -> Vec<TickRecord> {
        vec![
            TickRecord {
                visible: backlog,
                ..TickRecord::default()
            };
            4
        ]
    }

    #[test]
    fn hpa_scale_up_is_limited_to_doubling_or_four_pods() {
        let mut keda = KedaController::new(KedaConfig::with_queue_length(5, 100, 1));
        let h = history_with_backlog(1000);
        assert_eq!(keda.tick(0.0, &h, 0), Some(1));
        assert_eq!(keda.tick(15.0, &h, 1), Some(5));
        assert_eq!(keda.tick(30.0, &h, 5), Some(10));
        assert_eq!(keda.tick(45.0, &h, 10), Some(20));
        // Between syncs nothing happens.
        assert_eq!(keda.tick(46.0, &h, 20), None);
    }

    #[test]
    fn hpa_ignores_changes_within_tolerance_and_stabilizes_scale_down() {
        let mut keda = KedaController::new(KedaConfig::with_queue_length(10, 100, 1));
        assert_eq!(keda.tick(15.0, &history_with_backlog(105), 10), None);
        assert_eq!(keda.tick(30.0, &history_with_backlog(300), 10), Some(20));
        // Load falls; the 300 s window remembers 30.
        for t in (45..330).step_by(15) {
            assert_eq!(
                keda.tick(f64::from(t), &history_with_backlog(50), 20),
                None,
                "{t}"
            );
        }
        assert_eq!(keda.tick(345.0, &history_with_backlog(50), 20), Some(5));
    }

    #[test]
    fn keda_goes_to_zero_only_after_the_cooldown() {
        let mut keda = KedaController::new(KedaConfig::with_queue_length(5, 100, 1));
        assert_eq!(keda.tick(0.0, &history_with_backlog(3), 0), Some(1));
        let empty = history_with_backlog(0);
        let mut zero_at = None;
        for t in (30..700).step_by(30) {
            if keda.tick(f64::from(t), &empty, 1) == Some(0) {
                zero_at = Some(t);
                break;
            }
        }
        assert_eq!(zero_at, Some(300));
    }
}

//! What the policy remembers about one consumer between polls. The operator keeps one
//! [`ScalingState`] per QueueConsumer in memory; losing it (a restart, a new leader) only
//! makes the next decisions more cautious: the service time is re-learned and a scale-down
//! waits a full stabilization window again.

use std::collections::VecDeque;

use super::signals::ScalingSignals;

#[derive(Debug, Clone, Default)]
pub struct ScalingState {
    previous: Option<PreviousSample>,
    service_seconds: Option<f64>,
    recommendations: VecDeque<Recommendation>,
    idle_since: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct PreviousSample {
    sampled_at: f64,
    visible: u64,
}

#[derive(Debug, Clone, Copy)]
struct Recommendation {
    at: f64,
    replicas: u32,
}

/// Rates derived from the latest sample and the remembered ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    pub arrival_rate: Option<f64>,
    pub service_seconds: Option<f64>,
}

impl ScalingState {
    /// A sample older than the last one seen arrived late; using it would run time backwards.
    pub fn is_out_of_order(&self, signals: &ScalingSignals) -> bool {
        self.previous
            .is_some_and(|p| signals.sampled_at < p.sampled_at)
    }

    /// Folds a fresh sample into the estimates.
    pub fn observe(&mut self, signals: &ScalingSignals, smoothing: f64) -> Estimates {
        let visible = signals.backlog.visible;
        // Receivers see only what they take; what they leave behind shows up as backlog
        // growth, so together they are the arrival rate even when the consumer is saturated.
        let growth = self.previous.and_then(|p| {
            let dt = signals.sampled_at - p.sampled_at;
            (dt > 0.0).then(|| (visible as f64 - p.visible as f64) / dt)
        });
        let arrival_rate = match (signals.throughput, growth) {
            (Some(t), g) => Some((t.receive_rate + g.unwrap_or(0.0)).max(0.0)),
            (None, Some(g)) => Some(g.max(0.0)),
            (None, None) => None,
        };
        if let Some(sample) = signals.throughput.and_then(|t| t.mean_service_seconds)
            && sample.is_finite()
            && sample > 0.0
        {
            self.service_seconds = Some(match self.service_seconds {
                Some(old) => old + smoothing * (sample - old),
                None => sample,
            });
        }
        if signals.sampled_at > self.previous.map_or(f64::NEG_INFINITY, |p| p.sampled_at) {
            self.previous = Some(PreviousSample {
                sampled_at: signals.sampled_at,
                visible,
            });
        }
        Estimates {
            arrival_rate,
            service_seconds: self.service_seconds,
        }
    }

    /// Seconds the queue has been idle, counting this sample.
    pub fn track_idle(&mut self, signals: &ScalingSignals) -> Option<f64> {
        if signals.is_idle() {
            let since = *self.idle_since.get_or_insert(signals.sampled_at);
            Some(signals.sampled_at - since)
        } else {
            self.idle_since = None;
            None
        }
    }

    /// Records a recommendation and returns the highest one within `window` seconds.
    /// The first call also records `current`, so that a fresh state (a restarted operator)
    /// waits a whole window before its first scale-down.
    pub fn recommend(&mut self, now: f64, current: u32, replicas: u32, window: f64) -> u32 {
        if self.recommendations.is_empty() {
            self.recommendations.push_back(Recommendation {
                at: now,
                replicas: current,
            });
        }
        self.recommendations
            .push_back(Recommendation { at: now, replicas });
        while self
            .recommendations
            .front()
            .is_some_and(|r| r.at < now - window)
        {
            self.recommendations.pop_front();
        }
        self.recommendations
            .iter()
            .map(|r| r.replicas)
            .max()
            .unwrap_or(replicas)
    }
}

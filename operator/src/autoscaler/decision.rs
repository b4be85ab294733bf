//! The outcome of one poll: what to do, why, and from which numbers. It is what `status`
//! shows, what the Event says, and what `ferry_scaling_decisions_total{direction}` counts.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScalingDirection {
    Up,
    Down,
    None,
}

impl ScalingDirection {
    /// The `direction` label of `ferry_scaling_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::None => "none",
        }
    }
}

/// Which rule produced the replica count the queue needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DemandBasis {
    /// Arrival rate, backlog and measured service time against the latency target.
    LatencyTarget,
    /// The latency target, with fewer replicas than it rounds up to while a short planned
    /// queue (at most a quarter of the target) carries the rest of the demand.
    PlannedQueue,
    /// The spec's `backlogPerReplica`.
    BacklogPerReplica,
    /// Queue length per replica because the service time has not been measured yet.
    BacklogFallback,
    /// Fewer than the target asks for: `spec.delivery.maxPerSecond` is all these replicas
    /// may deliver, and more would not deliver faster.
    RateLimit,
}

/// The numbers a decision was made from, kept so that the decision explains itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalsUsed {
    pub sampled_at: f64,
    pub age_seconds: f64,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub ready_replicas: u32,
    /// Messages per second arriving, estimated as receive rate plus backlog growth.
    pub arrival_rate: Option<f64>,
    /// Smoothed mean delivery duration.
    pub service_seconds: Option<f64>,
    /// Messages per second one replica can complete: concurrency / service time.
    pub per_replica_capacity: Option<f64>,
    /// Messages per second one ready replica completed during the window.
    pub per_replica_throughput: Option<f64>,
    pub saturation: Option<f64>,
    pub mean_age_at_receipt_seconds: Option<f64>,
    pub needed_replicas: u32,
    pub basis: DemandBasis,
    /// The arrival rate averages recurring bursts in rather than following each as a new
    /// rate.
    pub bursts_averaged: bool,
    /// Visible messages of those bursts that the averaged rate provisions for, and so were
    /// not counted again in the backlog to drain.
    pub burst_messages_provisioned: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ScalingReason {
    SignalsMissing,
    SignalsStale {
        age_seconds: f64,
        limit_seconds: f64,
    },
    /// Every pod's sidecar holds receiving because its worker stopped being ready, or, not
    /// yet ready, has said for a while that it cannot work: adding
    /// pods would add more that wait, and a thundering herd when it recovers.
    WorkerUnavailable {
        pods: u32,
    },
    /// The replica count was outside `[min, max]` (the spec changed); fixed without signals.
    OutsideBounds {
        min: u32,
        max: u32,
    },
    Activate {
        visible: u64,
        threshold: u32,
    },
    StayAtZero {
        visible: u64,
        threshold: u32,
    },
    MeetDemand {
        needed: u32,
    },
    ScaleUpLimited {
        needed: u32,
        step: u32,
    },
    /// The service time is unknown and requested replicas are still starting: their
    /// throughput will size the next step, the growing queue alone cannot.
    AwaitingThroughput {
        needed: u32,
        ready: u32,
    },
    CappedAtMax {
        needed: u32,
        max: u32,
    },
    Steady {
        needed: u32,
    },
    HoldForStabilization {
        needed: u32,
        highest_recent: u32,
        window_seconds: u32,
    },
    ScaleDown {
        needed: u32,
        window_seconds: u32,
    },
    /// A rise of the arrivals followed as a new rate ended before the replicas it asked
    /// for were ready: those not needed for what it left in the queue are let go unstarted.
    BurstOver {
        needed: u32,
        not_started: u32,
    },
    KeepOneUntilIdle {
        idle_seconds: f64,
        required_seconds: u32,
    },
    IdleToZero {
        idle_seconds: f64,
    },
    /// `spec.suspend`: no replicas, whatever the queue holds.
    Suspended,
}

impl ScalingReason {
    /// A CamelCase word for Event reasons and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SignalsMissing => "SignalsMissing",
            Self::SignalsStale { .. } => "SignalsStale",
            Self::WorkerUnavailable { .. } => "WorkerUnavailable",
            Self::OutsideBounds { .. } => "OutsideBounds",
            Self::Activate { .. } => "Activate",
            Self::StayAtZero { .. } => "StayAtZero",
            Self::MeetDemand { .. } => "MeetDemand",
            Self::ScaleUpLimited { .. } => "ScaleUpLimited",
            Self::AwaitingThroughput { .. } => "AwaitingThroughput",
            Self::CappedAtMax { .. } => "CappedAtMax",
            Self::Steady { .. } => "Steady",
            Self::HoldForStabilization { .. } => "HoldForStabilization",
            Self::ScaleDown { .. } => "ScaleDown",
            Self::BurstOver { .. } => "BurstOver",
            Self::KeepOneUntilIdle { .. } => "KeepOneUntilIdle",
            Self::IdleToZero { .. } => "IdleToZero",
            Self::Suspended => "Suspended",
        }
    }
}

impl fmt::Display for ScalingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SignalsMissing => write!(
                f,
                "no signals: holding, an unknown queue is not an empty one"
            ),
            Self::SignalsStale {
                age_seconds,
                limit_seconds,
            } => write!(
                f,
                "signals are {age_seconds:.0}s old (limit {limit_seconds:.0}s): holding"
            ),
            Self::WorkerUnavailable { pods } => write!(
                f,
                "the worker is unavailable in all {pods} pods (it stopped being ready, or says it cannot work; their sidecars hold receiving; see the pods' /readyz): holding, more pods would not help"
            ),
            Self::OutsideBounds { min, max } => {
                write!(
                    f,
                    "replica count brought within minReplicas {min} and maxReplicas {max}"
                )
            }
            Self::Activate { visible, threshold } => write!(
                f,
                "{visible} messages visible, above the activation backlog {threshold}: starting from zero"
            ),
            Self::StayAtZero { visible, threshold } => write!(
                f,
                "{visible} messages visible, not above the activation backlog {threshold}: staying at zero"
            ),
            Self::MeetDemand { needed } => write!(f, "{needed} replicas needed to meet the target"),
            Self::ScaleUpLimited { needed, step } => write!(
                f,
                "{needed} replicas needed; adding at most {step} in one step"
            ),
            Self::AwaitingThroughput { needed, ready } => write!(
                f,
                "{needed} replicas by queue length, but the service time is unknown and only {ready} requested replicas are ready: waiting for them to measure it"
            ),
            Self::CappedAtMax { needed, max } => {
                write!(f, "{needed} replicas needed, capped at maxReplicas {max}")
            }
            Self::Steady { needed } => write!(f, "{needed} replicas needed: no change"),
            Self::HoldForStabilization {
                needed,
                highest_recent,
                window_seconds,
            } => write!(
                f,
                "{needed} replicas needed, but {highest_recent} were needed within the last {window_seconds}s: not scaling down yet"
            ),
            Self::ScaleDown {
                needed,
                window_seconds,
            } => write!(
                f,
                "at most {needed} replicas needed for {window_seconds}s: scaling down"
            ),
            Self::BurstOver {
                needed,
                not_started,
            } => write!(
                f,
                "the burst that asked for more replicas ended before they started; {needed} replicas drain what it left: letting {not_started} go unstarted"
            ),
            Self::KeepOneUntilIdle {
                idle_seconds,
                required_seconds,
            } => write!(
                f,
                "queue idle for {idle_seconds:.0}s of the {required_seconds}s required before zero: keeping one replica"
            ),
            Self::IdleToZero { idle_seconds } => {
                write!(f, "queue idle for {idle_seconds:.0}s: scaling to zero")
            }
            Self::Suspended => write!(
                f,
                "spec.suspend is true: no message is consumed until it is false"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// When the decision was made, on the caller's clock.
    pub at: f64,
    pub from: u32,
    pub to: u32,
    pub reason: ScalingReason,
    /// `None` when the decision was made without usable signals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signals: Option<SignalsUsed>,
}

impl ScalingDecision {
    /// `spec.suspend`: zero replicas, from the signals of no one. Pods removed this way
    /// drain as on any scale-down: they finish what they hold and hand the rest back.
    pub fn suspended(now: f64, current: u32) -> Self {
        Self {
            at: now,
            from: current,
            to: 0,
            reason: ScalingReason::Suspended,
            signals: None,
        }
    }

    pub fn direction(&self) -> ScalingDirection {
        match self.to.cmp(&self.from) {
            std::cmp::Ordering::Greater => ScalingDirection::Up,
            std::cmp::Ordering::Less => ScalingDirection::Down,
            std::cmp::Ordering::Equal => ScalingDirection::None,
        }
    }

    /// How many pods the operator should mark for removal (the idlest ones, through
    /// `controller.kubernetes.io/pod-deletion-cost`) before writing the new count.
    pub fn replicas_to_remove(&self) -> u32 {
        self.from.saturating_sub(self.to)
    }

    pub fn replicas_to_add(&self) -> u32 {
        self.to.saturating_sub(self.from)
    }

    /// The human-readable explanation, for `status` and Events.
    pub fn message(&self) -> String {
        let mut message = format!("{} → {}: {}", self.from, self.to, self.reason);
        let Some(signals) = self.signals.as_ref() else {
            return message;
        };
        match signals.basis {
            DemandBasis::PlannedQueue => message.push_str(
                " (fewer than the target rounds up to, while a short planned queue carries the rest)",
            ),
            DemandBasis::RateLimit => message.push_str(
                " (all that spec.delivery.maxPerSecond lets deliver: more replicas would not drain the queue faster)",
            ),
            _ => {}
        }
        if signals.bursts_averaged {
            message.push_str("; the arrival rate averages in the bursts that recur");
            if signals.burst_messages_provisioned > 0 {
                message.push_str(&format!(
                    ", and {} visible messages of theirs are provisioned for by it, not drained on top",
                    signals.burst_messages_provisioned
                ));
            }
        }
        message
    }
}

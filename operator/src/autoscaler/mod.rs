//! The autoscaler's pure part: from the signals of one consumer to an explained decision.
//!
//! The operator's loop, each poll and for each QueueConsumer, builds [`ScalingSignals`] from
//! the scraped sidecars (or the queue's attributes at zero), calls [`ScalingPolicy::decide`]
//! with the [`ScalingState`] it keeps for that consumer, marks the
//! [`ScalingDecision::replicas_to_remove`] pods [`choose_pods_to_remove`] picks (through
//! [`deletion_cost`]), writes `to` through the scale
//! subresource, and reports the decision in `status`, an Event and
//! `ferry_scaling_decisions_total{direction}`.

mod decision;
mod policy;
pub mod rate_share;
mod removal;
mod signals;
mod spec;
pub mod staffing;
mod state;

pub use decision::{DemandBasis, ScalingDecision, ScalingDirection, ScalingReason, SignalsUsed};
pub use policy::ScalingPolicy;
pub use removal::{PodLoad, choose_pods_to_remove, deletion_cost};
pub use signals::{BacklogSignal, ScalingSignals, ThroughputSignal, WaitEstimate};
pub use spec::{PolicyTuning, ScalingSpec, SpecError};
pub use state::{Estimates, ScalingState};

#[cfg(test)]
mod tests;

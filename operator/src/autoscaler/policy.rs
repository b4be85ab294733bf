//! The scaling policy: signals in, one explained decision out. Pure and deterministic; the
//! operator's loop and the simulator call the same [`ScalingPolicy::decide`].

use super::decision::{DemandBasis, ScalingDecision, ScalingReason, SignalsUsed};
use super::signals::ScalingSignals;
use super::spec::{PolicyTuning, ScalingSpec, SpecError};
use super::staffing::slots_needed;
use super::state::{Estimates, ScalingState};

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    spec: ScalingSpec,
    tuning: PolicyTuning,
}

/// What [`ScalingPolicy::fewest_with_planned_queue`] weighs, from one poll's estimates.
struct PlannedQueueInputs {
    target: f64,
    service_seconds: f64,
    /// Messages per second one ready replica completes.
    per_replica_rate: f64,
    /// The arrival rate provisioned for (the estimate plus its error).
    planning_rate: f64,
    /// The arrival rate estimate itself. The planned queue grows at the shortfall against
    /// it: the queue absorbs the estimate's error, and every poll sees how long it is, so
    /// the upper bound the slots are provisioned for would count that error twice.
    arrival_rate: f64,
    /// Visible messages plus what piles up before the replicas asked for are ready.
    backlog_messages: f64,
    /// Seconds until a replica asked for at the next poll would serve: the sample's age,
    /// one poll and a start-up.
    reaction_seconds: f64,
    /// The replica count the Deployment is set to now: fewer need the minimum dwell.
    current: u32,
}

/// Replicas the queue needs right now, before bounds, steps and stabilization.
#[derive(Debug, Clone, Copy)]
struct Demand {
    replicas: u32,
    basis: DemandBasis,
    /// Visible messages of familiar bursts left out of the backlog to drain.
    burst_messages_provisioned: f64,
    /// Sized for what a burst followed as a rate left behind, now that it is over: replicas
    /// still starting beyond this count were asked for by traffic already gone.
    after_burst: bool,
}

impl Demand {
    /// A count from a rule that drains the whole queue: no burst is left out of it.
    fn by_queue_length(replicas: u32, basis: DemandBasis) -> Self {
        Self {
            replicas,
            basis,
            burst_messages_provisioned: 0.0,
            after_burst: false,
        }
    }
}

impl ScalingPolicy {
    pub fn new(spec: ScalingSpec, tuning: PolicyTuning) -> Result<Self, SpecError> {
        spec.validate()?;
        Ok(Self { spec, tuning })
    }

    pub fn spec(&self) -> &ScalingSpec {
        &self.spec
    }

    /// One poll. `current` is the replica count the Deployment is set to (not how many pods
    /// are ready); `signals` is `None` when the scrape failed. `now` is the caller's clock,
    /// the same clock `signals.sampled_at` is on.
    pub fn decide(
        &self,
        state: &mut ScalingState,
        now: f64,
        current: u32,
        signals: Option<&ScalingSignals>,
    ) -> ScalingDecision {
        let Some(signals) = signals else {
            return self.hold(now, current, ScalingReason::SignalsMissing);
        };
        let age = now - signals.sampled_at;
        if age > self.tuning.stale_after_seconds || state.is_out_of_order(signals) {
            let reason = ScalingReason::SignalsStale {
                age_seconds: age,
                limit_seconds: self.tuning.stale_after_seconds,
            };
            return self.hold(now, current, reason);
        }
        if signals.every_worker_unavailable() {
            // Not observed either: a window without completions says nothing of the
            // worker's speed or of how fast messages arrive to a working consumer.
            let reason = ScalingReason::WorkerUnavailable {
                pods: signals.ready_replicas,
            };
            return self.hold(now, current, reason);
        }

        let drain_seconds = self
            .spec
            .target_latency_seconds
            .map(|target| target * self.tuning.drain_budget_fraction);
        let estimates = state.observe(signals, &self.tuning, drain_seconds);
        let demand = self.demand(signals, &estimates, current, age);
        let idle_seconds = state.track_idle(signals);
        let used = self.signals_used(now, signals, &estimates, demand);
        let (to, reason) = if current == 0 {
            self.decide_at_zero(signals, demand)
        } else {
            self.decide_while_running(
                state,
                now,
                current,
                signals.ready_replicas,
                demand,
                idle_seconds,
            )
        };
        state.note_decision(now, current, to);
        ScalingDecision {
            at: now,
            from: current,
            to,
            reason,
            signals: Some(used),
        }
    }

    /// Without usable signals nothing about the queue is known, so the count stays, except
    /// that the spec's bounds always apply.
    fn hold(&self, now: f64, current: u32, reason: ScalingReason) -> ScalingDecision {
        let to = current.clamp(self.spec.min_replicas, self.spec.max_replicas);
        let reason = if to == current {
            reason
        } else {
            ScalingReason::OutsideBounds {
                min: self.spec.min_replicas,
                max: self.spec.max_replicas,
            }
        };
        ScalingDecision {
            at: now,
            from: current,
            to,
            reason,
            signals: None,
        }
    }

    fn demand(
        &self,
        signals: &ScalingSignals,
        estimates: &Estimates,
        current: u32,
        sample_age: f64,
    ) -> Demand {
        let backlog = &signals.backlog;
        let slots_per_replica = f64::from(signals.concurrency_per_replica.max(1));
        let work = (backlog.visible + backlog.in_flight) as f64;
        let per_replica = |messages_per_replica: f64| (work / messages_per_replica).ceil() as u32;

        let by_latency = match (
            self.spec.target_latency_seconds,
            estimates.arrival_rate,
            estimates.planning_arrival_rate,
            estimates.service_seconds,
        ) {
            (Some(target), Some(arrival_rate), Some(planning_rate), Some(service_seconds)) => {
                // Replicas asked for now serve only after a start-up, and the queue grows
                // meanwhile wherever capacity falls short: first with the replicas ready now,
                // then with those already on their way.
                let per_replica_rate = slots_per_replica / service_seconds;
                let shortfall = |replicas: u32| {
                    (arrival_rate - f64::from(replicas) * per_replica_rate).max(0.0)
                };
                let pending = estimates.pending_ready_seconds;
                let growth = shortfall(signals.ready_replicas) * pending
                    + shortfall(current) * (estimates.startup_seconds - pending);
                // The visible messages and that growth must start within part of the target
                // on top of the arrivals...
                let drain_seconds =
                    self.backlog_drain_seconds(target, signals, estimates, sample_age);
                // ...except a familiar burst's messages: the arrival rate counts them already,
                // and the replicas it needs start them within the drain budget (what made the
                // burst familiar), so draining them again would add replicas that come when
                // the burst is gone. Only as many as the ready replicas start within the
                // budget, though: until those replicas run, the rest is a backlog like any.
                let provisioned = estimates
                    .familiar_burst_messages
                    .min(f64::from(signals.ready_replicas) * per_replica_rate * drain_seconds);
                let backlog_messages = (backlog.visible as f64 - provisioned).max(0.0) + growth;
                // Short messages can share a slot in turn (B·S/D slots); a message longer
                // than the drain window needs a slot of its own (B slots).
                let backlog_slots = backlog_messages * (service_seconds / drain_seconds).min(1.0);
                let arrival_slots = slots_needed(
                    planning_rate,
                    service_seconds,
                    target * self.tuning.queueing_budget_fraction,
                    self.tuning.wait_quantile,
                    self.tuning.max_utilization,
                );
                let slots = arrival_slots as f64 + backlog_slots;
                let whole = (slots / slots_per_replica).ceil() as u32;
                let fewer = self.fewest_with_planned_queue(
                    whole,
                    &PlannedQueueInputs {
                        target,
                        service_seconds,
                        per_replica_rate,
                        planning_rate,
                        arrival_rate,
                        backlog_messages,
                        reaction_seconds: sample_age
                            + estimates.poll_seconds
                            + estimates.startup_seconds,
                        current,
                    },
                );
                Some(Demand {
                    replicas: fewer,
                    basis: if fewer < whole {
                        DemandBasis::PlannedQueue
                    } else {
                        DemandBasis::LatencyTarget
                    },
                    burst_messages_provisioned: provisioned.min(backlog.visible as f64),
                    // Set below for whichever rule's count is used.
                    after_burst: false,
                })
            }
            _ => None,
        };
        let by_backlog = self.spec.backlog_per_replica.map(|b| {
            Demand::by_queue_length(per_replica(f64::from(b)), DemandBasis::BacklogPerReplica)
        });

        let demand = match (by_latency, by_backlog) {
            (Some(l), Some(b)) if b.replicas > l.replicas => b,
            (Some(l), _) => l,
            (None, Some(b)) => b,
            (None, None) => Demand::by_queue_length(
                per_replica(slots_per_replica * self.tuning.fallback_backlog_per_slot),
                DemandBasis::BacklogFallback,
            ),
        };
        let demand = match self.rate_limited_replicas(estimates.service_seconds, slots_per_replica)
        {
            Some(cap) if demand.replicas > cap => {
                Demand::by_queue_length(cap, DemandBasis::RateLimit)
            }
            _ => demand,
        };
        Demand {
            after_burst: estimates.followed_burst_over.is_some(),
            ..demand
        }
    }

    /// Seconds the waiting backlog may take to drain: the usual share of the target, or at a
    /// cold start only what is left of it. Then the backlog has waited since it was first
    /// seen and waits for the start-up too, with nothing serving it; never less than a share
    /// of the target, though: the first messages may already be late, and asking for ever
    /// more replicas would not help them.
    fn backlog_drain_seconds(
        &self,
        target: f64,
        signals: &ScalingSignals,
        estimates: &Estimates,
        sample_age: f64,
    ) -> f64 {
        let usual = target * self.tuning.drain_budget_fraction;
        let left = if let Some(burst_age) = estimates.followed_burst_over {
            // A burst's messages have waited since it began, and the replicas kept for them
            // serve once those already starting are ready.
            target - burst_age - sample_age - estimates.pending_ready_seconds
        } else if signals.ready_replicas > 0 {
            return usual;
        } else {
            target - estimates.work_seen_seconds - sample_age - estimates.startup_seconds
        };
        usual.min(left.max(target * self.tuning.cold_start_drain_min_fraction))
    }

    /// Under `spec.delivery.maxPerSecond` the pods deliver no faster however many there are,
    /// so replicas beyond those that serve arrivals at that rate (sized by the same staffing
    /// rule as any arrival rate) would only share it and idle. Messages beyond it wait in the
    /// queue. Unknown until the service time is measured.
    fn rate_limited_replicas(
        &self,
        service_seconds: Option<f64>,
        slots_per_replica: f64,
    ) -> Option<u32> {
        let limit = self.spec.delivery_max_per_second?;
        let service_seconds = service_seconds?;
        let wait = self.spec.target_latency_seconds.unwrap_or(service_seconds)
            * self.tuning.queueing_budget_fraction;
        let slots = slots_needed(
            limit,
            service_seconds,
            wait,
            self.tuning.wait_quantile,
            self.tuning.max_utilization,
        );
        Some(((slots as f64 / slots_per_replica).ceil() as u32).max(1))
    }

    /// Whole replicas can only meet a fractional demand by rounding up, which on a small
    /// pool is most of its headroom (3.4 replicas' worth of work runs on 4). A short queue
    /// lets fewer replicas carry it for a while: the backlog grows by the shortfall, and
    /// once it would outgrow the planned share of the target the next poll asks for the
    /// whole count again, which drains it. Returns the fewest replicas (at most `whole`)
    /// whose queue stays within that share and which maxReplicas could still drain within
    /// the rest of the target. Stepping down to a count needs the queue to stay within its
    /// share for the longer of the reaction time and the minimum dwell; a count that already
    /// runs goes on while it does for the reaction time alone. Without that hysteresis the
    /// dwell, asked again at every poll, ended each cycle as soon as the queue held a few
    /// polls' worth, and a cycle's scale-up (a start-up's worth of replica-seconds) came
    /// every minute instead of every few. Jobs longer than the planned wait get no planned
    /// queue: a message queued behind them waits for a slot to turn over, the job's own
    /// length, not for a backlog to drain.
    fn fewest_with_planned_queue(&self, whole: u32, inputs: &PlannedQueueInputs) -> u32 {
        let tuning = &self.tuning;
        let planned_wait = inputs.target * tuning.planned_queue_fraction;
        if planned_wait <= 0.0
            || inputs.service_seconds * tuning.planned_queue_min_turns > planned_wait
        {
            return whole;
        }
        let max_surplus =
            f64::from(self.spec.max_replicas) * inputs.per_replica_rate - inputs.planning_rate;
        let step_down_horizon = inputs
            .reaction_seconds
            .max(tuning.planned_queue_min_dwell_seconds);
        let carries_the_queue = |replicas: u32| {
            let horizon = if replicas < inputs.current {
                step_down_horizon
            } else {
                inputs.reaction_seconds
            };
            let rate = f64::from(replicas) * inputs.per_replica_rate;
            let shortfall = (inputs.arrival_rate - rate).max(0.0);
            // The most messages these replicas start within the planned wait.
            let allowance = rate * planned_wait;
            inputs.backlog_messages + shortfall * horizon <= allowance
                && max_surplus * (inputs.target - planned_wait) >= allowance
        };
        let mut replicas = whole;
        while replicas > 1 && carries_the_queue(replicas - 1) {
            replicas -= 1;
        }
        replicas
    }

    fn decide_at_zero(&self, signals: &ScalingSignals, demand: Demand) -> (u32, ScalingReason) {
        let visible = signals.backlog.visible;
        let threshold = self.spec.activation_backlog;
        if visible <= u64::from(threshold) {
            let to = self.spec.min_replicas;
            return if to > 0 {
                (
                    to,
                    ScalingReason::OutsideBounds {
                        min: self.spec.min_replicas,
                        max: self.spec.max_replicas,
                    },
                )
            } else {
                (0, ScalingReason::StayAtZero { visible, threshold })
            };
        }
        let wanted = demand
            .replicas
            .max(1)
            .clamp(self.spec.min_replicas, self.spec.max_replicas);
        (
            wanted.min(self.spec.max_scale_up_step),
            ScalingReason::Activate { visible, threshold },
        )
    }

    fn decide_while_running(
        &self,
        state: &mut ScalingState,
        now: f64,
        current: u32,
        ready: u32,
        demand: Demand,
        idle_seconds: Option<f64>,
    ) -> (u32, ScalingReason) {
        let spec = &self.spec;
        let idle_long_enough =
            idle_seconds.is_some_and(|idle| idle >= f64::from(spec.idle_before_zero_seconds));
        // Idling for idleBeforeZero is already a stabilization of its own, so zero does not
        // wait for the scale-down window on top.
        if spec.min_replicas == 0 && idle_long_enough {
            return (
                0,
                ScalingReason::IdleToZero {
                    idle_seconds: idle_seconds.unwrap_or_default(),
                },
            );
        }
        let floor = spec.min_replicas.max(1);
        let target = demand.replicas.clamp(floor, spec.max_replicas);
        let window = spec.scale_down_stabilization_seconds;
        let highest_recent = state.recommend(now, current, target, f64::from(window));

        if target > current && demand.basis == DemandBasis::BacklogFallback && ready < current {
            return (
                current,
                ScalingReason::AwaitingThroughput {
                    needed: demand.replicas,
                    ready,
                },
            );
        }
        if demand.after_burst && target < current && ready < current {
            // The replicas still starting were asked for by a burst that is already over:
            // those the queue no longer needs are let go before they start. Nothing is
            // cut (they hold no work), so the stabilization window, which keeps serving
            // replicas through a lull, has nothing to protect.
            let to = target.max(ready);
            if to < current {
                return (
                    to,
                    ScalingReason::BurstOver {
                        needed: demand.replicas,
                        not_started: current - to,
                    },
                );
            }
        }
        if target > current {
            let step = spec.max_scale_up_step.max(current);
            let to = target.min(current + step);
            let reason = if to < target {
                ScalingReason::ScaleUpLimited {
                    needed: demand.replicas,
                    step,
                }
            } else if demand.replicas > spec.max_replicas {
                ScalingReason::CappedAtMax {
                    needed: demand.replicas,
                    max: spec.max_replicas,
                }
            } else {
                ScalingReason::MeetDemand {
                    needed: demand.replicas,
                }
            };
            return (to, reason);
        }
        if highest_recent < current {
            return (
                highest_recent,
                ScalingReason::ScaleDown {
                    needed: demand.replicas,
                    window_seconds: window,
                },
            );
        }
        if target < current {
            return (
                current,
                ScalingReason::HoldForStabilization {
                    needed: demand.replicas,
                    highest_recent,
                    window_seconds: window,
                },
            );
        }
        match idle_seconds {
            Some(idle) if spec.min_replicas == 0 && demand.replicas == 0 => (
                current,
                ScalingReason::KeepOneUntilIdle {
                    idle_seconds: idle,
                    required_seconds: spec.idle_before_zero_seconds,
                },
            ),
            _ => (
                current,
                ScalingReason::Steady {
                    needed: demand.replicas,
                },
            ),
        }
    }

    fn signals_used(
        &self,
        now: f64,
        signals: &ScalingSignals,
        estimates: &Estimates,
        demand: Demand,
    ) -> SignalsUsed {
        let throughput = signals.throughput.as_ref();
        SignalsUsed {
            sampled_at: signals.sampled_at,
            age_seconds: now - signals.sampled_at,
            visible: signals.backlog.visible,
            in_flight: signals.backlog.in_flight,
            delayed: signals.backlog.delayed,
            ready_replicas: signals.ready_replicas,
            arrival_rate: estimates.arrival_rate,
            service_seconds: estimates.service_seconds,
            per_replica_capacity: estimates
                .service_seconds
                .map(|s| f64::from(signals.concurrency_per_replica) / s),
            per_replica_throughput: signals.per_replica_throughput(),
            saturation: throughput.and_then(|t| t.saturation()),
            mean_age_at_receipt_seconds: throughput.and_then(|t| t.mean_age_at_receipt_seconds),
            needed_replicas: demand.replicas,
            basis: demand.basis,
            bursts_averaged: estimates.bursts_averaged,
            burst_messages_provisioned: demand.burst_messages_provisioned.round() as u64,
        }
    }
}

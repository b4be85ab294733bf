//! What the policy remembers about one consumer between polls. The operator keeps one
//! [`ScalingState`] per QueueConsumer in memory; losing it (a restart, a new leader) only
//! makes the next decisions more cautious: the service time is re-learned and a scale-down
//! waits a full stabilization window again.

use std::collections::VecDeque;

use super::signals::{ScalingSignals, ThroughputSignal};
use super::spec::PolicyTuning;

/// The median of χ² with one degree of freedom: what the median poll-to-poll move is, in
/// units of its Poisson variance, when arrivals are Poisson.
const CHI_SQUARE_1_MEDIAN: f64 = 0.455;

/// Recent poll-to-poll moves of a measured quantity, each in units of the variance it would
/// have from sampling noise alone (χ² with one degree of freedom when that is all there is).
/// Their median says how much noisier than that the quantity really is: a median, so that a
/// real change, one large move, does not read as noise and hide the next change.
#[derive(Debug, Clone, Default)]
struct NoiseMoves(VecDeque<f64>);

impl NoiseMoves {
    fn record(&mut self, move_: f64, sampling_variance: f64, tuning: &PolicyTuning) {
        self.0.push_back(move_ * move_ / sampling_variance);
        if self.0.len() > tuning.dispersion_polls {
            self.0.pop_front();
        }
    }

    /// Variance over the sampling variance (at least 1), or 1 until half the polls are held.
    fn dispersion(&self, tuning: &PolicyTuning) -> f64 {
        if self.0.len() < tuning.dispersion_polls / 2 {
            return 1.0;
        }
        let mut moves: Vec<f64> = self.0.iter().copied().collect();
        moves.sort_by(f64::total_cmp);
        let median = moves[moves.len() / 2];
        (median / CHI_SQUARE_1_MEDIAN).clamp(1.0, tuning.max_dispersion)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScalingState {
    previous: Option<PreviousSample>,
    /// Arrivals seen per poll since the rate last changed, oldest first.
    arrivals: VecDeque<ArrivalCount>,
    /// How far each recent poll's arrival rate moved from the one before, against the move
    /// Poisson arrivals would make. Not cleared when the rate changes: burstiness belongs to
    /// the traffic, not to one rate.
    arrival_moves: NoiseMoves,
    /// A rise of the arrivals far above the average before it, while it lasts...
    rise: Option<Rise>,
    /// ...and the recent ones that have ended, oldest first.
    past_rises: VecDeque<Rise>,
    /// The last rise followed as a new rate that ended within a start-up (a burst over
    /// before the replicas asked for at its start were ready)...
    followed_burst_ended: Option<Rise>,
    /// ...and the poll after it that confirmed it, still at the base rate.
    followed_burst_over_at: Option<f64>,
    /// The last poll's mean service time and how many deliveries it averaged, if it was steady.
    last_service_sample: Option<(f64, f64)>,
    /// How far each recent poll's mean service time moved from the one before, against the
    /// move sampling alone would make if service times varied as much as their mean (CV 1).
    service_moves: NoiseMoves,
    /// Whether the service time is changing, and upwards: set by a poll far outside the usual
    /// scatter, cleared by the first poll on the other side of the estimate.
    service_change_up: Option<bool>,
    service_seconds: Option<f64>,
    /// Deliveries completed per poll, averaged over the last few polls.
    recent_completions: f64,
    /// When the queue was first seen holding work since it last held none.
    work_since: Option<f64>,
    /// Deliveries the service-time estimate has seen since this state began.
    deliveries_seen: f64,
    /// The slots of the last poll, if all of them were busy.
    saturated_slots: Option<u64>,
    /// While the estimate is young, the service time Little's law gives for the messages
    /// held over the arrival window (see `holding_bound`).
    holding_bound: Option<f64>,
    recommendations: VecDeque<Recommendation>,
    idle_since: Option<f64>,
    /// Learned seconds from asking for more replicas to seeing them ready.
    startup_seconds: Option<f64>,
    awaiting_ready: Option<ScaleUp>,
}

#[derive(Debug, Clone, Copy)]
struct ScaleUp {
    requested_at: f64,
    replicas: u32,
}

#[derive(Debug, Clone, Copy)]
struct PreviousSample {
    sampled_at: f64,
    visible: u64,
    held_back: bool,
    /// Messages the sidecars held (`ferry_in_flight`, summed).
    held: u64,
}

#[derive(Debug, Clone, Copy)]
struct ArrivalCount {
    at: f64,
    seconds: f64,
    messages: f64,
    /// Messages the sidecars received during the poll, and the message-seconds they held
    /// (the mean of its two ends' counts times its length): over a window, the second over
    /// the first is Little's law for the sidecars.
    received: f64,
    held_seconds: f64,
    /// Part of a familiar burst: in the average, but not what the polls between bursts are
    /// judged against, nor in their trend.
    burst: bool,
    /// The queue's count fell by no more than the sidecars took from it: a count that fell
    /// further is stale, and the arrivals it implies are not to be trusted.
    count_consistent: bool,
}

/// Arrivals far above their average, from the first poll above to the first back at it.
#[derive(Debug, Clone, Copy)]
struct Rise {
    started_at: f64,
    /// The latest poll of it: the first back at the base once it has ended.
    ended_at: f64,
    /// Messages per second of the average it rose from.
    base_rate: f64,
    /// Messages beyond that rate.
    excess: f64,
    /// Messages the sidecars received over its polls.
    received: f64,
    /// Averaged into the window as a familiar burst rather than restarting it.
    absorbed: bool,
}

impl Rise {
    fn lasted(&self) -> f64 {
        self.ended_at - self.started_at
    }
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
    /// The arrival rate the policy provisions for: the estimate plus its Poisson error, so
    /// that headroom shrinks as the evidence grows (busy queues run hot, sparse ones don't).
    pub planning_arrival_rate: Option<f64>,
    pub service_seconds: Option<f64>,
    /// How long a replica asked for now takes to become ready (learned, or the default).
    pub startup_seconds: f64,
    /// How long until the replicas already asked for are ready.
    pub pending_ready_seconds: f64,
    /// Seconds between the last two samples: how soon a change can next be seen.
    pub poll_seconds: f64,
    /// How long the queue has held work without a break, as of the sample: at a cold start,
    /// how long its oldest message has waited at least.
    pub work_seen_seconds: f64,
    /// Messages of the familiar bursts averaged into the arrival rate within the drain
    /// budget: the rate provisions for them already.
    pub familiar_burst_messages: f64,
    /// Whether the arrival rate averages recurring bursts in (polls of one are in its
    /// window) instead of following each as a new rate.
    pub bursts_averaged: bool,
    /// Seconds since a burst began, if this sample confirmed it over: a rise followed as a
    /// new rate that lasted no longer than a start-up, so the replicas asked for at its
    /// start were for traffic already gone while its first messages still wait.
    pub followed_burst_over: Option<f64>,
}

impl ScalingState {
    /// A sample older than the last one seen arrived late; using it would run time backwards.
    pub fn is_out_of_order(&self, signals: &ScalingSignals) -> bool {
        self.previous
            .is_some_and(|p| signals.sampled_at < p.sampled_at)
    }

    /// Folds a fresh sample into the estimates. A sample seen before (the operator polled
    /// faster than the sidecars refreshed) adds nothing and leaves the estimates as they are.
    ///
    /// `drain_seconds` is how soon a backlog must be drained (`None` without a latency
    /// target): a recurring burst is averaged into the arrival rate only if the replicas
    /// that rate needs start it within that time.
    pub fn observe(
        &mut self,
        signals: &ScalingSignals,
        tuning: &PolicyTuning,
        drain_seconds: Option<f64>,
    ) -> Estimates {
        let visible = signals.backlog.visible;
        let held_back = signals.holds_messages_back();
        let held = signals.throughput.map_or(0, |t| t.in_flight);
        let repeated = self
            .previous
            .is_some_and(|p| p.sampled_at == signals.sampled_at);
        let latest = self.previous.and_then(|p| {
            let seconds = signals.sampled_at - p.sampled_at;
            (seconds > 0.0).then(|| {
                // Receivers see only what they take; what they leave behind shows up as
                // backlog growth, so together they are the arrivals even when the consumer is
                // saturated. But a queue's counts can be stale (SQS's settle within about a
                // minute), and a stale count that catches up would read as a burst: growth
                // counts only when something held messages back at either end of the poll.
                let growth = if held_back || p.held_back {
                    visible as f64 - p.visible as f64
                } else {
                    0.0
                };
                let received = signals.throughput.map_or(0.0, |t| t.receive_rate * seconds);
                ArrivalCount {
                    at: signals.sampled_at,
                    seconds,
                    messages: (received + growth).max(0.0),
                    received,
                    held_seconds: (p.held + held) as f64 / 2.0 * seconds,
                    burst: false,
                    count_consistent: p.visible as f64 - visible as f64
                        <= received * tuning.believable_count_fall
                            + f64::from(signals.concurrency_per_replica),
                }
            })
        });
        let (arrival_rate, planning_arrival_rate) = match latest {
            Some(latest) => {
                let (rate, upper) = self.fold_arrivals(latest, drain_seconds, tuning);
                (Some(rate), Some(upper))
            }
            None if repeated && !self.arrivals.is_empty() => {
                let (rate, upper) = self.arrival_average(tuning);
                (Some(rate), Some(upper))
            }
            // No history yet: what the sidecars received is all that is known.
            None => {
                let rate = signals.throughput.map(|t| t.receive_rate);
                (rate, rate)
            }
        };
        if !repeated && let Some(t) = signals.throughput {
            let young = self.deliveries_seen < tuning.young_estimate_deliveries;
            self.deliveries_seen += t.completion_rate * t.window_seconds;
            // Messages wait when the queue shows them, or when those received had waited a
            // poll's length for it (a count read late may still show none).
            let messages_waiting = signals.backlog.visible > 0
                || t.mean_age_at_receipt_seconds
                    .is_some_and(|age| age >= t.window_seconds);
            let saturation_bound = self
                .saturation_bound(&t, messages_waiting)
                .filter(|_| young);
            self.holding_bound = young.then(|| self.holding_bound(tuning)).flatten();
            if let Some(sample) = t.mean_service_seconds
                && sample.is_finite()
                && sample > 0.0
            {
                self.fold_service_time(sample.max(saturation_bound.unwrap_or(0.0)), &t, tuning);
                // A bound is not one more sample to average in: an estimate below it is wrong.
                if let (Some(bound), Some(estimate)) = (saturation_bound, self.service_seconds) {
                    self.service_seconds = Some(estimate.max(bound));
                }
            }
            self.recent_completions += tuning.service_time_smoothing
                * (t.completion_rate * t.window_seconds - self.recent_completions);
        }
        if signals.sampled_at > self.previous.map_or(f64::NEG_INFINITY, |p| p.sampled_at) {
            self.previous = Some(PreviousSample {
                sampled_at: signals.sampled_at,
                visible,
                held_back,
                held,
            });
        }
        let work_seen_seconds = if visible + signals.backlog.in_flight == 0 {
            self.work_since = None;
            0.0
        } else {
            signals.sampled_at - *self.work_since.get_or_insert(signals.sampled_at)
        };
        if let Some(waiting) = self.awaiting_ready
            && signals.ready_replicas >= waiting.replicas
        {
            let took = signals.sampled_at - waiting.requested_at;
            if took >= 0.0 {
                self.startup_seconds = Some(match self.startup_seconds {
                    Some(old) => old + tuning.startup_smoothing * (took - old),
                    None => took,
                });
            }
            self.awaiting_ready = None;
        }
        let startup_seconds = self.startup_estimate(tuning);
        let pending_ready_seconds = self.awaiting_ready.map_or(0.0, |w| {
            (startup_seconds - (signals.sampled_at - w.requested_at)).clamp(0.0, startup_seconds)
        });
        Estimates {
            arrival_rate,
            planning_arrival_rate,
            // The holding bound only floors what is reported; the estimate keeps learning
            // from completions alone. Raised to each poll's bound, whose receipts carry
            // Poisson's error, it would end near the highest of them; and a poll's mean of
            // one or two long jobs, floored at about the true mean, averages well above it
            // (jobs of 300 s were estimated at 400 s either way).
            service_seconds: self
                .service_seconds
                .map(|s| s.max(self.holding_bound.unwrap_or(0.0))),
            startup_seconds,
            pending_ready_seconds,
            poll_seconds: latest.map_or(0.0, |l| l.seconds),
            work_seen_seconds,
            familiar_burst_messages: self
                .familiar_burst_messages(signals.sampled_at, drain_seconds),
            bursts_averaged: self.arrivals.iter().any(|a| a.burst),
            followed_burst_over: self
                .followed_burst_ended
                .filter(|_| self.followed_burst_over_at == Some(signals.sampled_at))
                .filter(|r| {
                    // Its messages are somewhere: taken by the sidecars since, or still
                    // waiting. A queue count that lost them is stale, not a burst's end.
                    let taken = r.received + latest.map_or(0.0, |l| l.received);
                    taken + (visible + held) as f64 >= r.excess
                })
                .map(|r| signals.sampled_at - r.started_at + latest.map_or(0.0, |l| l.seconds)),
        }
    }

    // Right after a cold start only the quick deliveries have finished, and their mean would
    // size the replicas for the quick ones while the slots hold the rest. Until enough
    // deliveries have been seen, Little's law bounds the service time from below in two
    // ways that count the deliveries still running: `saturation_bound` and `holding_bound`.
    // (Messages waiting behind their ordering group count as held too, so on a FIFO queue
    // with few groups the bounds can be high; they last only those first deliveries and err
    // toward more replicas.)

    /// A poll whose slots were all busy throughout: busy slots over completions per second.
    fn saturation_bound(&mut self, t: &ThroughputSignal, messages_waiting: bool) -> Option<f64> {
        // All slots busy at this poll and the last, with messages waiting at both, so that a
        // slot freed in between took the next one at once: busy throughout. (Busy at two
        // instants alone says nothing of between them: a light stream on a few slots fills
        // them now and then. With 2 slots polled every second, 3 msg/s of 0.2 s jobs put the
        // estimate at 0.43 s, and a step to 20 msg/s asked for 12 replicas where 3 serve.) A
        // replica that became ready within the window was busy only part of it, so only the
        // smaller count was busy throughout.
        let saturated_now =
            messages_waiting && t.concurrency_limit > 0 && t.in_flight >= t.concurrency_limit;
        let busy_throughout = self
            .saturated_slots
            .filter(|_| saturated_now)
            .map(|before| before.min(t.concurrency_limit));
        self.saturated_slots = saturated_now.then_some(t.concurrency_limit);
        busy_throughout
            .filter(|_| t.completion_rate > 0.0)
            .map(|busy| busy as f64 / t.completion_rate)
    }

    /// The arrival window, once the sidecars received enough in it: the message-seconds they
    /// held over the messages they received. Held messages are those received and not
    /// finished, so while the holding builds up after a start this stays below the mean
    /// service time, and reaches it once as many finish as start. (Received, not arrived:
    /// while a backlog drains, the sidecars hold what they take from it, far more than what
    /// arrives.) It needs no busy slots: jobs that take minutes, arriving a few a minute,
    /// never fill them, and their estimate learned from the few quick ones that had finished
    /// (34 s for jobs of 300 s, five minutes in) and ran them short of slots.
    fn holding_bound(&self, tuning: &PolicyTuning) -> Option<f64> {
        let (received, held_seconds) = self
            .arrivals
            .iter()
            .fold((0.0, 0.0), |(r, h), a| (r + a.received, h + a.held_seconds));
        (received >= tuning.min_receipts_for_holding_bound).then(|| held_seconds / received)
    }

    /// Folds one poll's mean service time into the estimate.
    fn fold_service_time(&mut self, sample: f64, t: &ThroughputSignal, tuning: &PolicyTuning) {
        let completions = (t.completion_rate * t.window_seconds).max(1.0);
        // Only polls that complete about as much as they receive measure the scatter: while
        // a queue fills or drains, the deliveries that finish are not a fair sample (the
        // long ones finish last), and that bias is not the traffic's scatter.
        let steady = completions >= tuning.min_completions_for_dispersion
            && (t.completion_rate - t.receive_rate).abs()
                <= tuning.steady_rate_tolerance * t.receive_rate;
        if let (Some((previous, previous_completions)), Some(estimate)) =
            (self.last_service_sample, self.service_seconds)
            && steady
        {
            let sampling_variance =
                estimate * estimate * (1.0 / previous_completions + 1.0 / completions);
            self.service_moves
                .record(sample - previous, sampling_variance, tuning);
        }
        self.last_service_sample = steady.then_some((sample, completions));
        // Where the polls' means scatter more than their deliveries explain (batches of
        // slow and fast jobs arriving by turns), each poll says less about the mean the
        // replicas must be sized for, and weighs less: otherwise the estimate, and the
        // replicas, follow every batch. A poll far outside that scatter is a real change
        // of service time: it, the polls on the same side after it and the first one
        // back across the estimate keep their full weight.
        let dispersion = self.service_moves.dispersion(tuning);
        // A poll that finishes far more than it takes in (the last deliveries of a drained
        // backlog or burst) finishes what earlier polls started, and the long ones are
        // over-represented: their short siblings finished before. Such a poll weighs only
        // its share of the recent deliveries and is no sign of a change of service time:
        // at full weight, every drained batch of jobs of 0.5 s mean left the estimate
        // 0.3-0.4 s higher, and batch after batch it climbed (0.5 -> 0.88 -> 1.03 -> 1.20).
        let received = t.receive_rate * t.window_seconds;
        let leftovers_share = (completions > received * (1.0 + tuning.steady_rate_tolerance)
            && completions < self.recent_completions)
            .then(|| completions / self.recent_completions);
        let changing = leftovers_share.is_none()
            && self.service_seconds.is_some_and(|estimate| {
                let deviation = sample - estimate;
                let spread = estimate * (dispersion / completions).sqrt();
                if deviation.abs() > tuning.rate_change_sigmas * spread {
                    self.service_change_up = Some(deviation > 0.0);
                    true
                } else if self.service_change_up.is_some() {
                    // Still on the change's side, or back across it (the change was
                    // passing, like the long jobs that finish last when a queue drains):
                    // either way this poll tells where the mean now is.
                    if self.service_change_up != Some(deviation > 0.0) {
                        self.service_change_up = None;
                    }
                    true
                } else {
                    false
                }
            });
        // Weighted by how many deliveries the sample averages, so that a window with two
        // long jobs moves the estimate as little as two deliveries should; capped per poll
        // so that busy queues still average over several polls.
        let weight = (1.0 - (1.0 - tuning.service_time_weight_per_delivery).powf(completions))
            .min(tuning.service_time_smoothing)
            * leftovers_share.unwrap_or(1.0)
            / if changing { 1.0 } else { dispersion };
        self.service_seconds = Some(match self.service_seconds {
            Some(old) => old + weight * (sample - old),
            None => sample,
        });
    }

    /// Remembers a scale-up until its replicas are ready, to learn how long start-up takes.
    pub fn note_decision(&mut self, now: f64, from: u32, to: u32) {
        if to > from {
            self.awaiting_ready = Some(match self.awaiting_ready {
                Some(w) => ScaleUp {
                    requested_at: w.requested_at,
                    replicas: to,
                },
                None => ScaleUp {
                    requested_at: now,
                    replicas: to,
                },
            });
        } else if to < from
            && let Some(w) = &mut self.awaiting_ready
        {
            w.replicas = w.replicas.min(to);
        }
    }

    /// The arrival rate (and its upper confidence bound) over the recent polls, unless the
    /// latest poll is too far from it to be Poisson noise: then the rate changed, and only the
    /// latest poll describes the new one. One noisy poll thus neither scales up nor holds a
    /// scale-down, while a real step is followed at once. A rise like the bursts that recur
    /// is the exception: it is averaged in (see `begin_rise`).
    fn fold_arrivals(
        &mut self,
        mut latest: ArrivalCount,
        drain_seconds: Option<f64>,
        tuning: &PolicyTuning,
    ) -> (f64, f64) {
        // Keep at least `arrival_window_seconds`, and longer while that holds too few
        // messages for a steady average.
        let previous_at = self.arrivals.back().map(|a| a.at);
        let mut kept: f64 = self.arrivals.iter().map(|a| a.messages).sum();
        while let Some(oldest) = self.arrivals.front() {
            let too_old = oldest.at < latest.at - tuning.arrival_window_seconds;
            let enough = kept - oldest.messages >= tuning.min_arrivals_averaged;
            let way_too_old = oldest.at < latest.at - tuning.max_arrival_window_seconds;
            if !(too_old && enough || way_too_old) {
                break;
            }
            kept -= oldest.messages;
            self.arrivals.pop_front();
        }
        let (seconds, messages) = self.regular_totals();
        if let Some(previous) = self.arrivals.back().copied() {
            self.note_poll_to_poll(&previous, &latest, tuning);
        }
        let in_a_rise = self.rise.is_some();
        self.follow_rise(&latest, drain_seconds, tuning);
        if seconds > 0.0 {
            let expected = messages / seconds * latest.seconds;
            let deviation = (latest.messages - expected) / self.count_spread(expected, tuning);
            if deviation > tuning.rate_change_sigmas && !in_a_rise {
                let rise =
                    self.begin_rise(&latest, messages / seconds, expected, drain_seconds, tuning);
                if !rise.absorbed {
                    self.arrivals.clear();
                }
            } else if deviation.abs() > tuning.rate_change_sigmas
                && !self.rise.is_some_and(|r| r.absorbed)
            {
                self.arrivals.clear();
            }
        }
        latest.burst = self.rise.is_some_and(|r| r.absorbed);
        if self.rise.is_none()
            && latest.count_consistent
            && previous_at
                .is_some_and(|at| self.followed_burst_ended.is_some_and(|r| r.ended_at == at))
        {
            self.followed_burst_over_at = Some(latest.at);
        }
        self.arrivals.push_back(latest);
        self.arrival_average(tuning)
    }

    /// The excess of the absorbed rise under way and of those that ended within the drain
    /// budget.
    fn familiar_burst_messages(&self, now: f64, drain_seconds: Option<f64>) -> f64 {
        let Some(drain_seconds) = drain_seconds else {
            return 0.0;
        };
        self.past_rises
            .iter()
            .filter(|r| r.absorbed && r.ended_at >= now - drain_seconds)
            .chain(self.rise.iter().filter(|r| r.absorbed))
            .map(|r| r.excess)
            .sum()
    }

    /// Seconds and messages of the polls in the window that are not part of a burst.
    fn regular_totals(&self) -> (f64, f64) {
        self.arrivals
            .iter()
            .filter(|a| !a.burst)
            .fold((0.0, 0.0), |(s, m), a| (s + a.seconds, m + a.messages))
    }

    /// How far a poll's count may stray from `expected` by chance: Poisson's spread widened
    /// by the measured dispersion. A Poisson count of a few has a far longer upper tail than
    /// the normal curve gives it: 7 messages where 1.5 are expected happen once in 1,100
    /// polls, not once in 280,000 as their 4.5 standard deviations suggest, and each such
    /// poll restarted the average from itself and scaled up for a stabilization window.
    fn count_spread(&self, expected: f64, tuning: &PolicyTuning) -> f64 {
        let variance = expected.max(tuning.min_variance_for_rate_change);
        (self.dispersion(tuning) * variance).sqrt()
    }

    /// A poll far above the average begins a rise, or resumes the last one if that ended
    /// less long ago than it lasted: a stale queue count that catches up in steps shows one
    /// burst as several rises. A rise no larger than the bursts that recur is one more of
    /// them, and is absorbed.
    fn begin_rise(
        &mut self,
        latest: &ArrivalCount,
        base_rate: f64,
        expected: f64,
        drain_seconds: Option<f64>,
        tuning: &PolicyTuning,
    ) -> Rise {
        let excess = latest.messages - expected;
        let burst_max_seconds = self.burst_max_seconds(tuning);
        let resumed = self
            .past_rises
            .back()
            .filter(|r| r.lasted() <= burst_max_seconds && latest.at - r.ended_at <= r.lasted())
            .copied();
        let mut rise = match resumed {
            Some(r) => {
                self.past_rises.pop_back();
                Rise {
                    ended_at: latest.at,
                    excess: r.excess + excess,
                    received: r.received + latest.received,
                    ..r
                }
            }
            None => Rise {
                started_at: latest.at,
                ended_at: latest.at,
                base_rate,
                excess,
                received: latest.received,
                absorbed: false,
            },
        };
        rise.absorbed = self.is_familiar_burst(&rise, drain_seconds, tuning);
        self.rise = Some(rise);
        rise
    }

    /// Follows an open rise with the latest poll: back at the rate it rose from, it ends and
    /// is remembered; still above, its excess grows. An absorbed rise that outgrows the
    /// familiar bursts, or lasts longer than a burst, was a change of rate after all, and the
    /// average restarts from where it began.
    fn follow_rise(
        &mut self,
        latest: &ArrivalCount,
        drain_seconds: Option<f64>,
        tuning: &PolicyTuning,
    ) {
        let Some(mut rise) = self.rise else {
            return;
        };
        rise.ended_at = latest.at;
        rise.received += latest.received;
        let base = rise.base_rate * latest.seconds;
        if (latest.messages - base) / self.count_spread(base, tuning) <= tuning.rate_change_sigmas {
            if !rise.absorbed
                && rise.lasted() <= self.burst_max_seconds(tuning)
                && latest.count_consistent
            {
                self.followed_burst_ended = Some(rise);
            }
            self.past_rises.push_back(rise);
            self.rise = None;
            return;
        }
        rise.excess += latest.messages - base;
        if rise.absorbed && !self.is_familiar_burst(&rise, drain_seconds, tuning) {
            self.arrivals.retain(|a| a.at >= rise.started_at);
            self.arrivals.iter_mut().for_each(|a| a.burst = false);
            rise.absorbed = false;
        }
        if !rise.absorbed && rise.lasted() > self.burst_max_seconds(tuning) {
            // A change of rate: bursts on top of the new rate rise from it.
            self.past_rises.push_back(rise);
            self.rise = None;
            return;
        }
        self.rise = Some(rise);
    }

    /// Whether a rise is, so far, one more of the bursts that recur: no longer than a burst,
    /// no larger than the largest remembered, once enough of them are, and small enough to
    /// be served within the drain budget by the replicas the average rate needs.
    fn is_familiar_burst(
        &mut self,
        rise: &Rise,
        drain_seconds: Option<f64>,
        tuning: &PolicyTuning,
    ) -> bool {
        let now = rise.ended_at;
        while self
            .past_rises
            .front()
            .is_some_and(|r| r.ended_at < now - tuning.burst_memory_seconds)
        {
            self.past_rises.pop_front();
        }
        let Some(drain_seconds) = drain_seconds else {
            return false;
        };
        let burst_max_seconds = self.burst_max_seconds(tuning);
        let bursts = || {
            self.past_rises
                .iter()
                .filter(|r| r.lasted() <= burst_max_seconds)
        };
        let Some(first) = bursts().next() else {
            return false;
        };
        let largest = bursts().map(|r| r.excess).fold(0.0, f64::max);
        // Bursts of one size differ by their counts' own noise.
        let familiar = largest + tuning.rate_change_sigmas * self.count_spread(largest, tuning);
        // Averaged in, a burst is served by the replicas the average arrival rate needs:
        // only if they start it within the drain budget. (Judged by the traffic, not by the
        // replicas running now: those change with the verdict, and the verdict with them.)
        let (seconds, messages) = self.regular_totals();
        let regular_rate = if seconds > 0.0 {
            messages / seconds
        } else {
            0.0
        };
        // Over the time since the first remembered began, at least its own length.
        let burst_rate =
            bursts().map(|r| r.excess).sum::<f64>() / (now - first.started_at).max(first.lasted());
        bursts().count() >= tuning.min_bursts_remembered
            && rise.lasted() <= burst_max_seconds
            && rise.excess <= familiar
            && rise.excess <= (regular_rate + burst_rate) * drain_seconds
    }

    /// The longest rise that is a burst: one over before a replica asked for at its start
    /// would be ready. Replicas for a longer one serve it while it lasts, and its rate is
    /// worth following.
    fn burst_max_seconds(&self, tuning: &PolicyTuning) -> f64 {
        self.startup_estimate(tuning)
    }

    /// Seconds from asking for a replica to seeing it ready: learned, or the default.
    fn startup_estimate(&self, tuning: &PolicyTuning) -> f64 {
        self.startup_seconds
            .unwrap_or(tuning.default_startup_seconds)
    }

    /// The averaged arrival rate and its upper confidence bound.
    fn arrival_average(&self, tuning: &PolicyTuning) -> (f64, f64) {
        let (seconds, messages) = self
            .arrivals
            .iter()
            .fold((0.0, 0.0), |(s, m), a| (s + a.seconds, m + a.messages));
        let error =
            tuning.rate_confidence_sigmas * (self.dispersion(tuning) * messages.max(1.0)).sqrt();
        let trend = self.arrival_trend(tuning);
        (
            messages / seconds + trend,
            (messages + error) / seconds + trend,
        )
    }

    /// How far the arrival rate has moved since the middle of the averaged window, where the
    /// polls in it show a trend: a rate that climbs (or falls) steadily for minutes, as a day's
    /// traffic does, is ahead of (behind) its average over the window by half the window, at
    /// least 30 s of the trend. Zero
    /// unless the least-squares slope of the polls' rates is `trend_sigmas` standard errors
    /// from flat, by Poisson's spread widened by the measured dispersion or by the fit's own
    /// residuals if larger (stale queue counts that catch up scatter the polls beyond their
    /// dispersion, and a trend read into them would be noise).
    fn arrival_trend(&self, tuning: &PolicyTuning) -> f64 {
        let (seconds, messages) = self.regular_totals();
        let regular = || self.arrivals.iter().filter(|a| !a.burst);
        let polls = regular().count();
        if polls < tuning.min_polls_for_trend || seconds <= 0.0 {
            return 0.0;
        }
        let polls = polls as f64;
        let rate = messages / seconds;
        // Each poll's rate, at the middle of its window, weighted by its length.
        let middle = |a: &ArrivalCount| a.at - a.seconds / 2.0;
        let mean_time = regular().map(|a| a.seconds * middle(a)).sum::<f64>() / seconds;
        let spread_in_time: f64 = regular()
            .map(|a| a.seconds * (middle(a) - mean_time).powi(2))
            .sum();
        if spread_in_time <= 0.0 {
            return 0.0;
        }
        let slope = regular()
            .map(|a| a.seconds * (middle(a) - mean_time) * (a.messages / a.seconds - rate))
            .sum::<f64>()
            / spread_in_time;
        let residuals: f64 = regular()
            .map(|a| {
                let fitted = rate + slope * (middle(a) - mean_time);
                a.seconds * (a.messages / a.seconds - fitted).powi(2)
            })
            .sum();
        let poisson_variance = self.dispersion(tuning) * rate.max(1.0 / seconds);
        let variance = poisson_variance.max(residuals / (polls - 2.0));
        let standard_error = (variance / spread_in_time).sqrt();
        if slope.abs() <= tuning.trend_sigmas * standard_error {
            return 0.0;
        }
        let now = self.arrivals.back().map_or(mean_time, |a| a.at);
        (slope * (now - mean_time)).max(-rate)
    }

    /// Real traffic is burstier than Poisson from second to second. Judged by Poisson's
    /// spread, its ordinary bursts read as changes of rate, and each one restarts the average
    /// from a single poll and scales up for a stabilization window.
    fn note_poll_to_poll(
        &mut self,
        previous: &ArrivalCount,
        latest: &ArrivalCount,
        tuning: &PolicyTuning,
    ) {
        let messages = previous.messages + latest.messages;
        // A few messages tell nothing of their spread.
        if messages < tuning.min_messages_for_dispersion {
            return;
        }
        let rate = messages / (previous.seconds + latest.seconds);
        let move_ = latest.messages / latest.seconds - previous.messages / previous.seconds;
        let poisson_variance = rate * (1.0 / previous.seconds + 1.0 / latest.seconds);
        self.arrival_moves.record(move_, poisson_variance, tuning);
    }

    /// Variance over mean of the arrivals per poll (1 for Poisson).
    fn dispersion(&self, tuning: &PolicyTuning) -> f64 {
        self.arrival_moves.dispersion(tuning)
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
        // A recommendation no higher than a newer one can never be the window's highest
        // again: dropping it keeps the answer and the memory small (one entry for a
        // consumer that recommends the same count poll after poll, not one per poll).
        while self
            .recommendations
            .back()
            .is_some_and(|r| r.replicas <= replicas)
        {
            self.recommendations.pop_back();
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

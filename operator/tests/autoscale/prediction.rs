//! The live runs of `autoscale.rs` against `ferry-scalesim`'s model of the same runs: what
//! a run came to (its replica counts over time, decisions, waits), what the model predicts
//! for it, and the comparison the tests assert.

use ferry_crds::{QueueConsumer, ScalingRecord};
use ferry_operator::builders::autoscaler_spec;
use ferry_operator::sim::bench::{BenchConfig, PolicyRun, run_ferry};
use ferry_operator::sim::ferry::ScrapeConfig;
use ferry_operator::sim::model::{ModelConfig, materialize};
use ferry_operator::sim::summary::quantile;
use ferry_operator::sim::trace::{Trace, TraceSecond};
use std::time::Instant;

use super::{POLL, WORKER_MS};

/// The Deployment's replica counts over a live run, as `watch_and_record` sampled them.
pub struct Trajectory {
    pub origin: Instant,
    /// Seconds since `origin`, replicas asked for (`spec.replicas`), replicas ready.
    pub samples: Vec<(f64, i32, i32)>,
    /// Every `status.lastScaling` seen, with when it was first seen, for failure messages.
    pub decisions: Vec<(f64, ScalingRecord)>,
}

impl Trajectory {
    pub fn from(origin: Instant) -> Self {
        Self {
            origin,
            samples: Vec::new(),
            decisions: Vec::new(),
        }
    }

    /// The first moment (seconds since `origin`) at which `holds(asked, ready)`, if any.
    pub fn first(&self, holds: impl Fn(i32, i32) -> bool) -> Option<f64> {
        self.samples
            .iter()
            .find(|(_, asked, ready)| holds(*asked, *ready))
            .map(|(at, _, _)| *at)
    }

    /// Replica-seconds asked for between `from` and `to` (seconds since `origin`).
    pub fn replica_seconds_between(&self, from: f64, to: f64) -> f64 {
        self.samples
            .windows(2)
            .map(|pair| {
                let ((at, asked, _), (next, _, _)) = (pair[0], pair[1]);
                f64::from(asked) * (next.min(to) - at.max(from)).max(0.0)
            })
            .sum()
    }

    /// Mean replicas asked for between `from` and `to`.
    pub fn mean_replicas(&self, from: f64, to: f64) -> f64 {
        self.replica_seconds_between(from, to) / (to - from)
    }

    /// The decisions seen, one a line, as `status.lastScaling` explained them.
    pub fn decision_log(&self) -> String {
        self.decisions
            .iter()
            .map(|(at, d)| decision_line(*at, &d.message))
            .collect()
    }

    /// Seconds from a replica asked for to its pod serving, each time the count rose: the
    /// pod start-up the simulator must be given to predict this run.
    pub fn startup_seconds(&self) -> Vec<f64> {
        let highest = self.samples.iter().map(|s| s.1).max().unwrap_or(0);
        (1..=highest)
            .filter_map(|k| {
                let asked = self.first(|asked, _| asked >= k)?;
                let ready = self.first(|_, ready| ready >= k)?;
                Some(ready - asked)
            })
            .collect()
    }
}

/// What one run came to, live or simulated, on the clock of its first message.
#[derive(Debug)]
pub struct RunSummary {
    /// When the first replica above the floor was asked for.
    pub first_scale_up_s: f64,
    pub peak_replicas: i32,
    /// When the peak was first asked for.
    pub peak_at_s: f64,
    /// When the replicas were back at the floor after the peak.
    pub back_at_floor_s: f64,
    /// Replicas asked for, integrated until then.
    pub replica_seconds: f64,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
}

impl RunSummary {
    pub fn live(trajectory: &Trajectory, floor: i32, mut waits: Vec<f64>) -> Self {
        waits.sort_by(f64::total_cmp);
        let peak_replicas = trajectory.samples.iter().map(|s| s.1).max().unwrap_or(0);
        let peak_at_s = trajectory
            .first(|asked, _| asked == peak_replicas)
            .unwrap_or(f64::NAN);
        let back_at_floor_s = trajectory
            .samples
            .iter()
            .find(|(at, asked, _)| *at > peak_at_s && *asked == floor)
            .map_or(f64::NAN, |s| s.0);
        Self {
            first_scale_up_s: trajectory
                .first(|asked, _| asked > floor)
                .unwrap_or(f64::NAN),
            peak_replicas,
            peak_at_s,
            back_at_floor_s,
            replica_seconds: trajectory.replica_seconds_between(0.0, back_at_floor_s),
            p50_wait_s: quantile(&waits, 0.5),
            p99_wait_s: quantile(&waits, 0.99),
            max_wait_s: waits.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn simulated(run: &PolicyRun, floor: i32) -> Self {
        // One value per second: the count set during that second.
        let replicas: Vec<i32> = run.replicas.iter().map(|r| *r as i32).collect();
        let peak_replicas = replicas.iter().copied().max().unwrap_or(0);
        let second_of = |holds: &dyn Fn(usize, i32) -> bool| {
            replicas
                .iter()
                .enumerate()
                .find(|(i, r)| holds(*i, **r))
                .map_or(f64::NAN, |(i, _)| i as f64)
        };
        let peak_at_s = second_of(&|_, r| r == peak_replicas);
        let back_at_floor_s = second_of(&|i, r| i as f64 > peak_at_s && r == floor);
        Self {
            first_scale_up_s: second_of(&|_, r| r > floor),
            peak_replicas,
            peak_at_s,
            back_at_floor_s,
            replica_seconds: replicas
                .iter()
                .take(back_at_floor_s as usize)
                .map(|r| f64::from(*r))
                .sum(),
            p50_wait_s: run.stats.p50_wait_s,
            p99_wait_s: run.stats.summary.p99_wait_s,
            max_wait_s: run.stats.summary.max_wait_s,
        }
    }
}

/// What the simulator predicts for a live run: its model run with several seeds (arrival
/// instants, service times) and pod start-ups half a second either side of the one measured
/// live, since the model moves in whole seconds and a start-up of 1.1 or 0.9 s puts the
/// first ready pod in another one.
pub struct Predictions {
    pub runs: Vec<PolicyRun>,
    pub startup_seconds: f64,
}

impl Predictions {
    /// `ferry-scalesim`'s model of what was just run live: `arrivals[i]` messages in second
    /// `i`, this consumer's spec, the same policy and tuning, poll interval, concurrency and
    /// worker time, and the pod start-up measured live (the median of `trajectory`'s).
    pub fn of(qc: &QueueConsumer, arrivals: &[u32], trajectory: &Trajectory) -> Self {
        let mut startups = trajectory.startup_seconds();
        startups.sort_by(f64::total_cmp);
        assert!(
            !startups.is_empty(),
            "no pod start-up observed: {:?}",
            trajectory.samples
        );
        let startup_seconds = startups[startups.len() / 2];
        // As long as the live run was watched, and a little longer, so that the model's
        // return to the floor is in it too.
        let observed = trajectory.samples.last().map_or(0.0, |s| s.0).ceil() as usize + 30;
        let trace = Trace {
            name: "live".into(),
            seconds: (0..observed.max(arrivals.len()))
                .map(|second| TraceSecond {
                    arrivals: arrivals.get(second).copied().unwrap_or(0),
                    mean_service_seconds: None,
                })
                .collect(),
        };
        let mut runs = Vec::new();
        for seed in 1..=4 {
            for offset in [-0.5, 0.0, 0.5] {
                let model = ModelConfig {
                    pod_startup_seconds: (startup_seconds + offset).max(0.0),
                    concurrency_per_pod: u32::try_from(qc.spec.delivery.concurrency)
                        .expect("concurrency"),
                    default_mean_service_seconds: WORKER_MS as f64 / 1000.0,
                    // The example worker takes 0.5-1.5 times its latency, uniformly: a CV
                    // of 1/sqrt(12).
                    service_cv: 12f64.sqrt().recip(),
                    seed,
                    ..ModelConfig::default()
                };
                let mut config = BenchConfig::new(model, autoscaler_spec(&qc.spec));
                config.scrape = ScrapeConfig {
                    poll_interval_seconds: POLL.as_secs() as u32,
                    // The sidecars read the queue's counts every second; the operator
                    // scrapes them at its poll.
                    lag_seconds: 1,
                    ..ScrapeConfig::default()
                };
                let messages = materialize(&trace, &config.model);
                runs.push(run_ferry(&config, &trace, &messages).expect("the simulator runs"));
            }
        }
        Self {
            runs,
            startup_seconds,
        }
    }

    pub fn summaries(&self, floor: i32) -> Vec<RunSummary> {
        self.runs
            .iter()
            .map(|run| RunSummary::simulated(run, floor))
            .collect()
    }
}

/// The simulated decisions that changed the replicas, one a line, explained as the operator
/// explains them in `status.lastScaling`.
pub fn simulated_decision_log(run: &PolicyRun) -> String {
    run.decisions
        .iter()
        .map(|d| decision_line(d.at, &d.message()))
        .collect()
}

fn decision_line(at: f64, message: &str) -> String {
    format!("  {at:6.1} s {message}\n")
}

/// One figure of a live run against the range the simulator's runs predict for it, with the
/// slack allowed beyond that range: `seconds` plus `share` of the range's ends.
pub struct Compared {
    pub what: &'static str,
    pub live: f64,
    pub predicted: Vec<f64>,
    pub seconds: f64,
    pub share: f64,
}

impl Compared {
    pub fn range(&self) -> (f64, f64) {
        let low = self.predicted.iter().copied().fold(f64::INFINITY, f64::min);
        let high = self
            .predicted
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    pub fn holds(&self) -> bool {
        let (low, high) = self.range();
        self.live >= low * (1.0 - self.share) - self.seconds
            && self.live <= high * (1.0 + self.share) + self.seconds
    }

    pub fn line(&self) -> String {
        let (low, high) = self.range();
        format!(
            "  {:<34} live {:>7.2}   predicted {:>7.2} .. {:<7.2} {}\n",
            self.what,
            self.live,
            low,
            high,
            if self.holds() {
                ""
            } else {
                "<- not as predicted"
            }
        )
    }
}

/// The figures every live run is held to: when the loop first acted, how long messages
/// waited, when it was back at its floor, and the replica-seconds until then. The simulator
/// moves in whole seconds and polls on them, and the live loop reads the queue up to a
/// second earlier or later, so moments may differ by a tick and a poll; what follows from
/// the worker's speed (waits, the drain, the return to the floor after the stabilization and
/// idle time) by a quarter more, since a shared machine runs the pods and the emulator slower
/// or faster than the model's exact service times.
pub fn figures(live: &RunSummary, predicted: &[RunSummary]) -> Vec<Compared> {
    let tick_and_poll = 1.0 + POLL.as_secs_f64();
    let of = |f: fn(&RunSummary) -> f64| predicted.iter().map(f).collect::<Vec<_>>();
    vec![
        Compared {
            what: "first scale-up (s)",
            live: live.first_scale_up_s,
            predicted: of(|r| r.first_scale_up_s),
            seconds: tick_and_poll,
            share: 0.0,
        },
        Compared {
            what: "p50 wait (s)",
            live: live.p50_wait_s,
            predicted: of(|r| r.p50_wait_s),
            seconds: tick_and_poll,
            share: 0.25,
        },
        Compared {
            what: "p99 wait (s)",
            live: live.p99_wait_s,
            predicted: of(|r| r.p99_wait_s),
            seconds: tick_and_poll,
            share: 0.25,
        },
        Compared {
            what: "last message's wait (s)",
            live: live.max_wait_s,
            predicted: of(|r| r.max_wait_s),
            seconds: tick_and_poll,
            share: 0.25,
        },
        Compared {
            what: "back at the floor (s)",
            live: live.back_at_floor_s,
            predicted: of(|r| r.back_at_floor_s),
            seconds: tick_and_poll,
            share: 0.25,
        },
        Compared {
            what: "replica-seconds until then",
            live: live.replica_seconds,
            predicted: of(|r| r.replica_seconds),
            seconds: 0.0,
            share: 0.25,
        },
    ]
}

/// Prints the comparison (with `details`: the decisions, live and simulated) and fails,
/// marking every figure off the prediction, if any is.
pub fn assert_as_predicted(title: &str, compared: &[Compared], details: &str) {
    let table: String = compared.iter().map(Compared::line).collect();
    let report = format!("{title}\n{table}");
    eprintln!("{report}{details}");
    assert!(
        compared.iter().all(Compared::holds),
        "the live run is not what the simulator predicts:\n{report}{details}"
    );
}

/// Mean replicas a simulated run set over `[from, to)` seconds.
pub fn simulated_mean_replicas(run: &PolicyRun, from: f64, to: f64) -> f64 {
    let seconds = &run.replicas[from as usize..to as usize];
    seconds.iter().map(|r| f64::from(*r)).sum::<f64>() / seconds.len() as f64
}

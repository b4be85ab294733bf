//! Scrapes of a consumer's sidecars (and, when they cannot tell, the queue itself) combined
//! into the policy's [`ScalingSignals`]. Pure: the loop does the I/O and passes the clock in.

use std::collections::BTreeMap;

use crate::autoscaler::{BacklogSignal, ScalingSignals, ThroughputSignal, WaitEstimate};

use super::exposition::SidecarSample;

/// One successful scrape of one pod's sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct PodScrape {
    /// Unix seconds of the scrape.
    pub at: f64,
    pub sample: SidecarSample,
}

/// The queue's counts read by the operator itself (SQS attributes, Cloud Monitoring).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueReading {
    /// Unix seconds the counts were true.
    pub at: f64,
    pub backlog: BacklogSignal,
}

/// How current the queue counts the sidecars report are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedCounts {
    /// SQS's attributes, read at every poll.
    Current,
    /// Pub/Sub's, from Cloud Monitoring: two to three minutes old. Read as the queue now,
    /// they would scale for a backlog long drained or miss one just come, so while sidecars
    /// run the backlog is estimated from their wait; the counts only start a consumer at
    /// zero (through the operator's own read).
    MinutesOld,
}

/// Where the backlog in a [`ScalingSignals`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogSource {
    /// The sidecars' reads of the queue's counts.
    Sidecars,
    /// The operator read the queue (no sidecar reported counts).
    Queue,
    /// Nobody can read the counts (Pub/Sub without Cloud Monitoring): estimated by Little's
    /// law from how fast messages are received and how long they waited. It is a lower
    /// bound, so it can under-scale but never reads a busy queue as empty.
    EstimatedFromWait,
}

impl BacklogSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sidecars => "sidecars",
            Self::Queue => "queue",
            Self::EstimatedFromWait => "estimated_from_wait",
        }
    }
}

/// `current - previous` for a counter; a restarted sidecar starts again from zero.
fn increase(current: f64, previous: f64) -> f64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

/// Rates over the window between each pod's previous scrape and this one, summed over the
/// pods seen both times. `None` when no pod was seen twice.
fn throughput(
    previous: &BTreeMap<String, PodScrape>,
    current: &BTreeMap<String, PodScrape>,
) -> Option<ThroughputSignal> {
    let mut windows = 0.0;
    let mut pods = 0u32;
    let (mut received, mut completed) = (0.0, 0.0);
    let (mut service_sum, mut service_count) = (0.0, 0.0);
    let (mut age_sum, mut age_count) = (0.0, 0.0);
    for (pod, now) in current {
        let Some(before) = previous.get(pod) else {
            continue;
        };
        let window = now.at - before.at;
        if window <= 0.0 {
            continue;
        }
        let (a, b) = (&now.sample, &before.sample);
        pods += 1;
        windows += window;
        received += increase(a.received, b.received) / window;
        completed += increase(a.completed, b.completed) / window;
        service_sum += increase(a.service_seconds_sum, b.service_seconds_sum);
        service_count += increase(a.service_count, b.service_count);
        age_sum += increase(a.age_seconds_sum, b.age_seconds_sum);
        age_count += increase(a.age_count, b.age_count);
    }
    if pods == 0 {
        return None;
    }
    let mean = |sum: f64, count: f64| (count > 0.0).then(|| sum / count);
    let active = current.values().map(|p| &p.sample);
    let (in_flight, limit) = active.fold((0.0, 0.0), |(f, l), s| {
        (f + s.in_flight, l + s.concurrency_limit)
    });
    Some(ThroughputSignal {
        window_seconds: windows / f64::from(pods),
        receive_rate: received,
        completion_rate: completed,
        mean_service_seconds: mean(service_sum, service_count),
        mean_age_at_receipt_seconds: mean(age_sum, age_count),
        in_flight: in_flight as u64,
        concurrency_limit: limit as u64,
    })
}

/// The signals of one consumer at one poll, or `None` when nothing trustworthy is known
/// (the policy then holds: a missing signal is never an empty queue).
///
/// `current` holds this poll's scrapes of the pods that are not draining; `previous` the
/// scrapes of the poll before. `queue` is the operator's own read of the queue, made when no
/// sidecar reports counts it can use. `earlier` is the backlog estimated from the wait at the poll
/// before, if it was. `now` is the scrape time (Unix seconds).
pub fn combine(
    previous: &BTreeMap<String, PodScrape>,
    current: &BTreeMap<String, PodScrape>,
    queue: Option<QueueReading>,
    reported_counts: ReportedCounts,
    concurrency_per_replica: u32,
    earlier: Option<WaitEstimate>,
    now: f64,
) -> Option<(ScalingSignals, BacklogSource)> {
    let throughput = throughput(previous, current);
    // Every sidecar reads the same queue-wide counts; the newest read is the truth.
    let reported = current
        .values()
        .filter_map(|p| p.sample.backlog)
        .filter(|_| reported_counts == ReportedCounts::Current)
        .max_by(|a, b| a.read_at.total_cmp(&b.read_at));
    let (sampled_at, backlog, source) = if let Some(r) = reported {
        let backlog = BacklogSignal {
            visible: r.visible as u64,
            in_flight: r.in_flight as u64,
            delayed: r.delayed as u64,
        };
        (r.read_at, backlog, BacklogSource::Sidecars)
    } else if let Some(q) = queue {
        (q.at, q.backlog, BacklogSource::Queue)
    } else {
        let backlog = throughput?.backlog_estimated_from_wait(earlier);
        (now, backlog, BacklogSource::EstimatedFromWait)
    };
    let signals = ScalingSignals {
        sampled_at,
        backlog,
        throughput,
        ready_replicas: u32::try_from(current.len()).unwrap_or(u32::MAX),
        workers_unavailable: u32::try_from(
            current
                .values()
                .filter(|p| p.sample.worker_unavailable)
                .count(),
        )
        .unwrap_or(u32::MAX),
        concurrency_per_replica,
    };
    Some((signals, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::exposition::ReportedBacklog;

    fn scrape(at: f64, received: f64, completed: f64, backlog: Option<(f64, f64)>) -> PodScrape {
        PodScrape {
            at,
            sample: SidecarSample {
                received,
                completed,
                service_seconds_sum: completed * 0.2,
                service_count: completed,
                age_seconds_sum: received * 2.0,
                age_count: received,
                in_flight: 4.0,
                concurrency_limit: 10.0,
                backlog: backlog.map(|(visible, read_at)| ReportedBacklog {
                    visible,
                    in_flight: 4.0,
                    delayed: 0.0,
                    read_at,
                }),
                ..SidecarSample::default()
            },
        }
    }

    fn pods(list: &[(&str, PodScrape)]) -> BTreeMap<String, PodScrape> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    /// `combine` of sidecar scrapes of pods of concurrency 10, with no read of the queue.
    fn from_sidecars(
        previous: &BTreeMap<String, PodScrape>,
        current: &BTreeMap<String, PodScrape>,
        reported_counts: ReportedCounts,
        earlier: Option<WaitEstimate>,
        now: f64,
    ) -> Option<(ScalingSignals, BacklogSource)> {
        combine(previous, current, None, reported_counts, 10, earlier, now)
    }

    /// Two pods' scrapes 5 s apart; the second reports counts read at 103 s (30 visible) and
    /// 104 s (25).
    fn two_pods_reporting_counts() -> (BTreeMap<String, PodScrape>, BTreeMap<String, PodScrape>) {
        let before = pods(&[
            ("a", scrape(100.0, 100.0, 90.0, None)),
            ("b", scrape(100.0, 50.0, 50.0, None)),
        ]);
        let now = pods(&[
            ("a", scrape(105.0, 150.0, 140.0, Some((30.0, 103.0)))),
            ("b", scrape(105.0, 100.0, 100.0, Some((25.0, 104.0)))),
        ]);
        (before, now)
    }

    #[test]
    fn rates_sum_over_pods_and_the_newest_backlog_read_wins() {
        let (before, now) = two_pods_reporting_counts();
        let (signals, source) =
            from_sidecars(&before, &now, ReportedCounts::Current, None, 105.0).unwrap();
        assert_eq!(source, BacklogSource::Sidecars);
        assert_eq!(signals.sampled_at, 104.0);
        assert_eq!(signals.backlog.visible, 25);
        assert_eq!(signals.ready_replicas, 2);
        assert_eq!(signals.workers_unavailable, 0);
        let mut down = now.clone();
        down.get_mut("b").unwrap().sample.worker_unavailable = true;
        let (one_down, _) =
            from_sidecars(&before, &down, ReportedCounts::Current, None, 105.0).unwrap();
        assert_eq!(one_down.workers_unavailable, 1);
        assert!(!one_down.every_worker_unavailable());
        down.get_mut("a").unwrap().sample.worker_unavailable = true;
        let (both_down, _) =
            from_sidecars(&before, &down, ReportedCounts::Current, None, 105.0).unwrap();
        assert!(both_down.every_worker_unavailable());
        let t = signals.throughput.unwrap();
        assert_eq!((t.receive_rate, t.completion_rate), (20.0, 20.0));
        assert_eq!(t.window_seconds, 5.0);
        assert!((t.mean_service_seconds.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(t.mean_age_at_receipt_seconds, Some(2.0));
        assert_eq!((t.in_flight, t.concurrency_limit), (8, 20));
    }

    #[test]
    fn minutes_old_counts_from_running_sidecars_give_way_to_the_wait() {
        // Pub/Sub sidecars reporting Cloud Monitoring's counts: a backlog of minutes ago.
        let (before, now) = two_pods_reporting_counts();
        let (signals, source) =
            from_sidecars(&before, &now, ReportedCounts::MinutesOld, None, 105.0).unwrap();
        assert_eq!(source, BacklogSource::EstimatedFromWait);
        // 20 received a second after waiting 2 s each.
        assert_eq!(signals.backlog.visible, 40);
        assert_eq!(signals.sampled_at, 105.0);
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero() {
        let before = pods(&[("a", scrape(100.0, 1000.0, 1000.0, None))]);
        let now = pods(&[("a", scrape(110.0, 30.0, 20.0, Some((0.0, 109.0))))]);
        let t = from_sidecars(&before, &now, ReportedCounts::Current, None, 110.0)
            .unwrap()
            .0
            .throughput
            .unwrap();
        assert_eq!((t.receive_rate, t.completion_rate), (3.0, 2.0));
    }

    #[test]
    fn without_sidecars_the_queue_read_is_used() {
        let reading = QueueReading {
            at: 50.0,
            backlog: BacklogSignal {
                visible: 7,
                in_flight: 0,
                delayed: 2,
            },
        };
        let (signals, source) = combine(
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some(reading),
            ReportedCounts::Current,
            4,
            None,
            51.0,
        )
        .unwrap();
        assert_eq!(source, BacklogSource::Queue);
        assert_eq!(signals.backlog, reading.backlog);
        assert_eq!(signals.sampled_at, 50.0);
        assert_eq!(signals.throughput, None);
        assert_eq!(signals.concurrency_per_replica, 4);
    }

    #[test]
    fn nothing_known_is_no_signal_not_an_empty_queue() {
        assert_eq!(
            combine(
                &BTreeMap::new(),
                &BTreeMap::new(),
                None,
                ReportedCounts::Current,
                4,
                None,
                1.0
            ),
            None
        );
        // One scrape alone gives no rates, and without counts there is nothing to go on.
        let now = pods(&[("a", scrape(105.0, 10.0, 10.0, None))]);
        assert_eq!(
            combine(
                &BTreeMap::new(),
                &now,
                None,
                ReportedCounts::Current,
                4,
                None,
                105.0
            ),
            None
        );
    }

    #[test]
    fn without_counts_the_backlog_is_estimated_from_the_wait() {
        let before = pods(&[("a", scrape(100.0, 0.0, 0.0, None))]);
        // 50 received in 5 s (10/s) after waiting 2 s each: about 20 are queued behind them.
        let now = pods(&[("a", scrape(105.0, 50.0, 45.0, None))]);
        let (signals, source) =
            from_sidecars(&before, &now, ReportedCounts::Current, None, 105.0).unwrap();
        assert_eq!(source, BacklogSource::EstimatedFromWait);
        assert_eq!(signals.backlog.visible, 20);
        assert_eq!(signals.backlog.in_flight, 4);
        assert_eq!(signals.sampled_at, 105.0);
        // The poll before, they had waited 1 s and 13 were estimated to wait: this window's
        // 50 were published over 4 s, so 12.5 a second arrived, and 25 wait.
        let earlier = WaitEstimate {
            mean_age_at_receipt_seconds: 1.0,
            waiting: 13,
        };
        let (grown, _) =
            from_sidecars(&before, &now, ReportedCounts::Current, Some(earlier), 105.0).unwrap();
        assert_eq!(grown.backlog.visible, 25);
    }
}

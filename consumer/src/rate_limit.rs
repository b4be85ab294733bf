//! `FERRY_RATE_LIMIT`: at most N delivery starts per second, changeable at run time.
//!
//! Strict spacing (GCRA without burst): each delivery starts `1 / rate` after the one before
//! it, or at once when that moment has passed; idle time saves no turns. No burst, because
//! the limits this protects (a third-party API's "100 requests per second") are often
//! enforced over short windows. The pump also receives no more than the limit lets start
//! within about a second, and only once every message received before has its turn
//! (`RateLimit::receive_batch`, `RateLimit::not_before`), so messages waiting for the limit
//! stay in the queue, where other pods can take them, rather than in this one. A change of
//! the rate applies at once, to the deliveries already waiting for their turn too.
//!
//! [`Pacing`] is the pure part, with time passed in; [`RateLimit`] shares it between the
//! pump, the deliveries and the `/rate-limit` endpoint.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The longest spacing kept. Rates below one a year are paced as one a year, so that
/// `1 / rate` always fits an `Instant` addition.
const LONGEST_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `FERRY_RATE_LIMIT` and `PUT /rate-limit` accept as a number.
pub const ACCEPTED: &str = "a positive number of deliveries per second, such as 100, 12.5 or 0.5";

/// A rate given as text: a positive, finite number of deliveries per second.
pub fn parse_per_second(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|rate| rate.is_finite() && *rate > 0.0)
}

/// Delivery starts paced at a rate, or not at all. Pure: the caller says what time it is.
#[derive(Debug, Clone, Default)]
pub struct Pacing {
    limit: Option<Limit>,
    /// The start handed out last, while limited.
    last_start: Option<Instant>,
    /// Counts rate changes: a start handed out before the latest change is taken again.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    per_second: f64,
    interval: Duration,
}

impl Limit {
    fn new(per_second: f64) -> Self {
        debug_assert!(per_second.is_finite() && per_second > 0.0, "{per_second}");
        let interval = Duration::try_from_secs_f64(1.0 / per_second)
            .unwrap_or(LONGEST_INTERVAL)
            .min(LONGEST_INTERVAL);
        Self {
            per_second,
            interval,
        }
    }
}

impl Pacing {
    pub fn new(per_second: Option<f64>) -> Self {
        Self {
            limit: per_second.map(Limit::new),
            ..Self::default()
        }
    }

    /// A new rate at `now`, or `None` for no limit. Starts handed out for later than `now`
    /// are void (see `generation`): the deliveries waiting for them take new ones, spaced at
    /// the new rate from `now`. A start already made keeps its spacing: the next one is at
    /// least `1 / rate` (the new rate) after it.
    pub fn set(&mut self, per_second: Option<f64>, now: Instant) {
        self.limit = per_second.map(Limit::new);
        self.generation += 1;
        if self.last_start.is_some_and(|last| last > now) {
            self.last_start = Some(now);
        }
    }

    pub fn per_second(&self) -> Option<f64> {
        self.limit.map(|l| l.per_second)
    }

    /// Which rate change the starts handed out from now on belong to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The earliest a delivery may start; `None` when it may start at any time.
    pub fn next_allowed(&self) -> Option<Instant> {
        let limit = self.limit?;
        Some(self.last_start? + limit.interval)
    }

    /// Takes the next turn: the instant the delivery asking at `now` starts (`now` itself
    /// without a limit, or when the previous start is at least `1 / rate` ago).
    pub fn take(&mut self, now: Instant) -> Instant {
        if self.limit.is_none() {
            return now;
        }
        let start = self.next_allowed().map_or(now, |next| next.max(now));
        self.last_start = Some(start);
        start
    }

    /// How many messages one receive may ask for: what the rate lets start within a second,
    /// at least one. `None` without a limit.
    pub fn receive_batch(&self) -> Option<usize> {
        // `as` saturates: a rate of 1e300 asks for as many as the other bounds allow.
        self.limit.map(|l| (l.per_second.floor() as usize).max(1))
    }
}

/// When one delivery may start, under the rate in force when it was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub at: Instant,
    generation: u64,
}

/// The pacing shared by the pump, its deliveries and the `/rate-limit` endpoint.
///
/// Without a limit, a delivery's whole cost here is one relaxed load of `limited`: the
/// sidecar's CPU per message is what bounds it, and most sidecars run without a limit.
#[derive(Debug, Default)]
pub struct RateLimit {
    limited: AtomicBool,
    /// `Pacing::generation`, readable without the lock by deliveries waiting for a turn.
    generation: AtomicU64,
    pacing: Mutex<Pacing>,
    /// Wakes a receive or a delivery waiting for its turn when the rate changes.
    changed: Notify,
}

impl RateLimit {
    pub fn new(per_second: Option<f64>) -> Self {
        Self {
            limited: AtomicBool::new(per_second.is_some()),
            generation: AtomicU64::new(0),
            pacing: Mutex::new(Pacing::new(per_second)),
            changed: Notify::new(),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    pub fn per_second(&self) -> Option<f64> {
        self.lock().per_second()
    }

    /// Sets the rate (`None`: no limit) and returns the one before. `report` is called with
    /// both while the change is still the latest, so two changes at once are reported (the
    /// gauge set) in the order they were made. Deliveries waiting for a turn take a new one.
    pub fn set(
        &self,
        per_second: Option<f64>,
        report: impl FnOnce(Option<f64>, Option<f64>),
    ) -> Option<f64> {
        let before = {
            let mut pacing = self.lock();
            let before = pacing.per_second();
            pacing.set(per_second, Instant::now());
            self.generation
                .store(pacing.generation(), Ordering::Relaxed);
            self.limited.store(per_second.is_some(), Ordering::Relaxed);
            report(before, per_second);
            before
        };
        self.changed.notify_waiters();
        before
    }

    /// The next delivery's turn: `None` without a limit (the clock is not read then).
    pub fn take(&self, now: impl FnOnce() -> Instant) -> Option<Turn> {
        if !self.is_limited() {
            return None;
        }
        let mut pacing = self.lock();
        // Read under the lock, so turns are handed out in the order of the clock readings.
        pacing.limit.is_some().then(|| Turn {
            at: pacing.take(now()),
            generation: pacing.generation(),
        })
    }

    /// Waits until `turn` comes, or, after a change of the rate, the turn taken instead.
    /// Returns how long it waited.
    pub async fn wait(&self, mut turn: Turn) -> Duration {
        let asked = Instant::now();
        if turn.at <= asked {
            return Duration::ZERO;
        }
        loop {
            let changed = self.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if turn.generation != self.generation.load(Ordering::Relaxed) {
                match self.take(Instant::now) {
                    Some(again) => turn = again,
                    None => break,
                }
            }
            if turn.at <= Instant::now() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(turn.at.into()) => {}
                _ = changed => {}
            }
        }
        asked.elapsed()
    }

    /// `None` when a delivery may start at `now`, else the instant it may.
    pub fn not_before(&self, now: Instant) -> Option<Instant> {
        self.lock().next_allowed().filter(|next| *next > now)
    }

    pub fn receive_batch(&self) -> Option<usize> {
        if !self.is_limited() {
            return None;
        }
        self.lock().receive_batch()
    }

    /// Resolves at the next change of the rate. Create it before reading the state it
    /// should wake on, and `enable` it (see `tokio::sync::Notify`).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacing> {
        self.pacing.lock().expect("rate limit lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_are_spaced_by_one_over_the_rate() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(20.0));
        // Ten asking at once start 50 ms apart, the first at once.
        let starts: Vec<Duration> = (0..10).map(|_| pacing.take(t0) - t0).collect();
        assert_eq!(starts, (0..10).map(|i| ms(50 * i)).collect::<Vec<_>>());
        assert_eq!(pacing.next_allowed(), Some(t0 + ms(500)));
        // One asking after its turn has come starts when it asks, not earlier.
        assert_eq!(pacing.take(t0 + ms(800)), t0 + ms(800));
        assert_eq!(pacing.take(t0 + ms(810)), t0 + ms(850));
    }

    #[test]
    fn no_burst_after_an_idle_time() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(10.0));
        pacing.take(t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pacing.take(later), later);
        assert_eq!(
            pacing.take(later),
            later + ms(100),
            "idle time saves no turns"
        );
    }

    #[test]
    fn a_rate_change_applies_from_the_last_start() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(1.0));
        assert_eq!(pacing.take(t0), t0);
        assert_eq!(pacing.next_allowed(), Some(t0 + Duration::from_secs(1)));
        // Faster: the next may start 10 ms after the last, not a second after it.
        pacing.set(Some(100.0), t0 + ms(1));
        assert_eq!(pacing.per_second(), Some(100.0));
        assert_eq!(pacing.take(t0 + ms(1)), t0 + ms(10));
        // Slower.
        pacing.set(Some(2.0), t0 + ms(11));
        assert_eq!(pacing.take(t0 + ms(11)), t0 + ms(510));
    }

    #[test]
    fn a_rate_change_voids_the_turns_still_to_come() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(1.0));
        let before = pacing.generation();
        let turns: Vec<Instant> = (0..5).map(|_| pacing.take(t0)).collect();
        assert_eq!(turns[4], t0 + Duration::from_secs(4));
        // At 0.5 s the rate goes up to 100: the four waiting take new turns, 10 ms apart
        // from the change, instead of keeping theirs up to 4 s away.
        let change = t0 + ms(500);
        pacing.set(Some(100.0), change);
        assert_ne!(pacing.generation(), before, "the turns handed out are void");
        let again: Vec<Instant> = (0..4).map(|_| pacing.take(change)).collect();
        assert_eq!(
            again,
            (1..=4).map(|i| change + ms(10 * i)).collect::<Vec<_>>()
        );
        // Down to 2 a second: spaced 500 ms from the change, not from the last turn taken.
        pacing.set(Some(2.0), change + ms(15));
        assert_eq!(pacing.take(change + ms(15)), change + ms(515));
    }

    #[test]
    fn none_is_unlimited() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(None);
        for _ in 0..1000 {
            assert_eq!(pacing.take(t0), t0);
        }
        assert_eq!(pacing.next_allowed(), None);
        assert_eq!(pacing.receive_batch(), None);
        // A limit set afterwards starts from now: unlimited starts leave no debt.
        pacing.set(Some(4.0), t0);
        assert_eq!(pacing.take(t0), t0);
        assert_eq!(pacing.take(t0), t0 + ms(250));
        // Removed again: at once, whatever was taken.
        pacing.set(None, t0);
        assert_eq!(pacing.take(t0), t0);
        assert_eq!(pacing.next_allowed(), None);
    }

    #[test]
    fn fractional_rates() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(0.5));
        assert_eq!(pacing.take(t0), t0);
        assert_eq!(pacing.take(t0), t0 + Duration::from_secs(2));
        assert_eq!(pacing.receive_batch(), Some(1), "at least one per receive");
        let mut pacing = Pacing::new(Some(12.5));
        for _ in 0..3 {
            pacing.take(t0);
        }
        assert_eq!(pacing.next_allowed(), Some(t0 + ms(240)));
        assert_eq!(pacing.receive_batch(), Some(12));
        // Three a second: three turns span a whole second to the nanosecond's rounding.
        let mut pacing = Pacing::new(Some(3.0));
        let third = (0..4).map(|_| pacing.take(t0)).last().unwrap() - t0;
        assert!(
            third.abs_diff(Duration::from_secs(1)) < Duration::from_micros(1),
            "{third:?}"
        );
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(Some(1e-300));
        pacing.take(t0);
        assert_eq!(pacing.take(t0), t0 + LONGEST_INTERVAL);
        let mut pacing = Pacing::new(Some(1e300));
        assert_eq!(pacing.take(t0), t0);
        assert_eq!(pacing.take(t0), t0, "a sub-nanosecond spacing is none");
        assert_eq!(pacing.receive_batch(), Some(usize::MAX));
    }

    #[test]
    fn accepted_text() {
        assert_eq!(parse_per_second("12.5"), Some(12.5));
        assert_eq!(parse_per_second(" 100\n"), Some(100.0));
        assert_eq!(parse_per_second("0.000001"), Some(0.000001));
        assert_eq!(parse_per_second("1e-6"), Some(0.000001));
        for bad in ["0", "-1", "NaN", "inf", "", "fast", "10/s"] {
            assert_eq!(parse_per_second(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shared_limit_reads_no_clock_without_a_limit() {
        let limit = RateLimit::new(None);
        assert!(!limit.is_limited());
        assert_eq!(limit.take(|| unreachable!("no clock read")), None);
        assert_eq!(limit.receive_batch(), None);
        assert_eq!(limit.set(Some(10.0), |_, _| {}), None);
        assert!(limit.is_limited());
        let t0 = Instant::now();
        assert_eq!(limit.take(|| t0).map(|t| t.at), Some(t0));
        assert_eq!(limit.not_before(t0), Some(t0 + ms(100)));
        assert_eq!(limit.not_before(t0 + ms(100)), None);
        assert_eq!(limit.receive_batch(), Some(10));
        let mut reported = None;
        assert_eq!(limit.set(None, |a, b| reported = Some((a, b))), Some(10.0));
        assert_eq!(reported, Some((Some(10.0), None)));
        assert_eq!(limit.not_before(t0), None);
        assert_eq!(limit.per_second(), None);
    }

    #[tokio::test]
    async fn a_waiting_delivery_follows_a_change_of_the_rate() {
        let limit = std::sync::Arc::new(RateLimit::new(Some(1.0)));
        let now = Instant::now();
        let first = limit.take(|| now).unwrap();
        assert_eq!(
            limit.wait(first).await,
            Duration::ZERO,
            "the first goes at once"
        );
        // The second's turn is a second away; the limit is removed 50 ms into its wait.
        let second = limit.take(Instant::now).unwrap();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.wait(second).await }
        });
        tokio::time::sleep(ms(50)).await;
        limit.set(None, |_, _| {});
        let waited = waiting.await.unwrap();
        assert!(
            waited >= ms(50) && waited < ms(500),
            "went when the limit went: {waited:?}"
        );
        // Lowered while waiting: the turn is taken again at the new rate.
        limit.set(Some(100.0), |_, _| {});
        let a = limit.take(Instant::now).unwrap();
        let b = limit.take(Instant::now).unwrap();
        assert_eq!(b.at - a.at, ms(10));
        limit.set(Some(4.0), |_, _| {});
        let waited = limit.wait(b).await;
        assert!(
            waited >= ms(200) && waited < ms(400),
            "b waits a quarter second, the new spacing: {waited:?}"
        );
    }
}

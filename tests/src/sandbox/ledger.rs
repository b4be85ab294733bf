//! Who got what: the example workers' delivery lines, the publisher's record and the
//! dead-letter queue's contents, reconciled into the run's summary. Pure: the sandbox reads
//! the files and the queue, this module only counts.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

/// One line the example worker prints per delivery with `WORKER_VERBOSE`:
/// `200 message=<id> attempt=<n> latency=<d> started_ms=<unix ms> body=<body>`. Deliveries
/// are matched to what was published by the sequence number in the body, so the count does
/// not rest on the ids the publisher was given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub status: u16,
    pub seq: u64,
    pub message_id: String,
    /// The delivery attempt the sidecar numbered it (1 for the first).
    pub attempt: u32,
    pub started_ms: u64,
}

/// A delivery line taken apart: the status, the `key=value` words before `body=`, the body.
struct Line<'a> {
    status: u16,
    words: Vec<(&'a str, &'a str)>,
    body: &'a str,
}

impl<'a> Line<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let (head, body) = line.split_once(" body=")?;
        let mut words = head.split_whitespace();
        let status = words.next()?.parse().ok()?;
        Some(Self {
            status,
            words: words.filter_map(|w| w.split_once('=')).collect(),
            body,
        })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.words.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

pub fn parse_delivery(line: &str) -> Option<Delivery> {
    let line = Line::parse(line)?;
    let body: serde_json::Value = serde_json::from_str(line.body).ok()?;
    Some(Delivery {
        status: line.status,
        seq: body["seq"].as_u64()?,
        message_id: line.get("message")?.to_string(),
        attempt: line.get("attempt")?.parse().ok()?,
        started_ms: line.get("started_ms")?.parse().ok()?,
    })
}

/// A periodic task's delivery line, which the example worker marks with the task's name:
/// `200 message=<id> attempt=<n> … path=/tasks/heartbeat task=heartbeat body=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDelivery {
    pub status: u16,
    pub message_id: String,
    pub task: String,
}

pub fn parse_task_delivery(line: &str) -> Option<TaskDelivery> {
    let line = Line::parse(line)?;
    Some(TaskDelivery {
        status: line.status,
        message_id: line.get("message")?.to_string(),
        task: line.get("task")?.to_string(),
    })
}

/// A message the sandbox published: its sequence number (also in its body), the id the
/// provider gave it, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub id: String,
    pub at_ms: u64,
    pub poison: bool,
}

/// What the deliveries say so far, per published sequence number.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Successful deliveries (2xx) per message, and when the first one started.
    successes: HashMap<u64, (usize, u64)>,
    /// The (message id, attempt) of each successful delivery, per message.
    success_attempts: HashMap<u64, Vec<(String, u32)>>,
    /// Failed deliveries per message (any non-2xx).
    failures: HashMap<u64, usize>,
    /// Messages the worker rejected as permanent (422): the sidecar dead-letters them at once.
    rejected: HashMap<u64, u64>,
    /// The attempt numbers a worker saw, per message id (a redriven Pub/Sub message is a new
    /// message with an id of its own, whose attempts count from 1 again).
    attempts_seen: HashMap<String, BTreeSet<u32>>,
    /// Successful deliveries per periodic task message (one per tick the operator sent).
    tick_successes: HashMap<String, usize>,
}

impl Ledger {
    pub fn record_tick(&mut self, delivery: &TaskDelivery) {
        if (200..300).contains(&delivery.status) {
            *self
                .tick_successes
                .entry(delivery.message_id.clone())
                .or_insert(0) += 1;
        }
    }

    /// Whether a worker answered 2xx to the periodic task message with this id.
    pub fn tick_processed(&self, message_id: &str) -> bool {
        self.tick_successes.contains_key(message_id)
    }

    pub fn ticks_processed(&self) -> usize {
        self.tick_successes.len()
    }

    pub fn record(&mut self, delivery: &Delivery) {
        self.attempts_seen
            .entry(delivery.message_id.clone())
            .or_default()
            .insert(delivery.attempt);
        match delivery.status {
            200..=299 => {
                let entry = self
                    .successes
                    .entry(delivery.seq)
                    .or_insert((0, delivery.started_ms));
                entry.0 += 1;
                entry.1 = entry.1.min(delivery.started_ms);
                self.success_attempts
                    .entry(delivery.seq)
                    .or_default()
                    .push((delivery.message_id.clone(), delivery.attempt));
            }
            status => {
                *self.failures.entry(delivery.seq).or_insert(0) += 1;
                if status == 422 {
                    self.rejected
                        .entry(delivery.seq)
                        .or_insert(delivery.started_ms);
                }
            }
        }
    }

    pub fn processed(&self) -> usize {
        self.successes.len()
    }

    /// Whether a worker answered 2xx to this message.
    pub fn is_processed(&self, seq: u64) -> bool {
        self.successes.contains_key(&seq)
    }

    /// Failed deliveries that were retried or dead-lettered.
    pub fn failed_deliveries(&self) -> usize {
        self.failures.values().sum()
    }

    pub fn rejected(&self) -> usize {
        self.rejected.len()
    }

    /// Delivery attempts the queue counted that no worker saw: the numbers missing below the
    /// highest attempt a worker saw of each message, and how many messages have such gaps.
    /// The queue numbers every hand-over to a consumer, so a gap is a hand-over that never
    /// became a delivery: a sidecar that stopped with the message in hand, or a queue that
    /// gave it to a consumer that had gone (the Pub/Sub emulator does without the repair the
    /// tests apply, docs/sandbox.md).
    pub fn unseen_attempts(&self) -> (usize, usize) {
        self.attempts_seen
            .values()
            .filter_map(|seen| {
                let highest = *seen.last()?;
                let missing = (1..highest).filter(|n| !seen.contains(n)).count();
                (missing > 0).then_some(missing)
            })
            .fold((0, 0), |(attempts, messages), missing| {
                (attempts + missing, messages + 1)
            })
    }

    /// Messages processed more than once that at-least-once delivery does not explain,
    /// sorted. A repeat is explained when a worker answered 2xx to an attempt that the
    /// sidecar counted as failed (`answers_lost`: the attempts the sidecars logged as failed
    /// deliveries): the worker did the work and died before its answer reached the sidecar,
    /// which then had to deliver the message again.
    pub fn unexplained_duplicates(&self, answers_lost: &HashSet<(String, u32)>) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .success_attempts
            .iter()
            .filter(|(_, attempts)| {
                let lost = attempts.iter().filter(|a| answers_lost.contains(a)).count();
                attempts.len() - lost > 1
            })
            .map(|(seq, _)| *seq)
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether the workers are done with this message: it succeeded, was rejected as
    /// poison, or failed as often as the queue allows before dead-lettering it.
    pub fn is_settled(&self, seq: u64, max_deliveries: usize) -> bool {
        self.successes.contains_key(&seq)
            || self.rejected.contains_key(&seq)
            || self
                .failures
                .get(&seq)
                .is_some_and(|n| *n >= max_deliveries)
    }

    /// When the first delivery that settled the message started: its first success or its
    /// rejection as poison, whichever came first (a poison message processed after a redrive
    /// waited until it was rejected; the redrive is a later, deliberate step).
    fn settled_at(&self, seq: u64) -> Option<u64> {
        let succeeded = self.successes.get(&seq).map(|(_, at)| *at);
        let rejected = self.rejected.get(&seq).copied();
        match (succeeded, rejected) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Milliseconds from publishing to the first delivery that settled the message.
    fn wait_ms(&self, message: &Published) -> Option<u64> {
        Some(self.settled_at(message.seq)?.saturating_sub(message.at_ms))
    }

    /// The longest wait among messages first settled at or after `since_ms`, for the live view.
    pub fn recent_max_wait_ms(&self, published: &[Published], since_ms: u64) -> Option<u64> {
        published
            .iter()
            .filter_map(|m| {
                let started = self.settled_at(m.seq)?;
                (started >= since_ms).then(|| started.saturating_sub(m.at_ms))
            })
            .max()
    }
}

/// The run's outcome; printed as the sandbox's last line, asserted on by the e2e suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub provider: String,
    pub published: usize,
    /// Messages a worker answered 2xx to.
    pub processed: usize,
    /// Messages found in the dead-letter queue (before the redrive, when the run had one).
    pub dead_lettered: usize,
    /// Poison messages published that never reached the dead-letter queue.
    pub poison_not_dead_lettered: usize,
    /// Messages in the dead-letter queue when the run ended: `dead_lettered` without a
    /// redrive, 0 after one that put every message back and saw it processed.
    pub in_dead_letter: usize,
    /// Published, and neither processed nor in the dead-letter queue at the end. Must be 0.
    pub lost: usize,
    /// The lost ones, as `seq/id`, to look them up in the logs (left out when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_messages: Vec<String>,
    /// Messages a worker answered 2xx to more than once.
    pub duplicates: usize,
    /// Deliveries the worker failed (each one retried or, at the limit, dead-lettered).
    pub failed_deliveries: usize,
    /// Periodic task ticks (`spec.periodicTasks`, sent by the operator) a worker answered 2xx
    /// to, and how many of them more than once.
    pub periodic_ticks_processed: usize,
    pub periodic_tick_duplicates: usize,
    /// Delivery attempts the queue counted that reached no worker (see
    /// [`Ledger::unseen_attempts`]), and the messages they belong to.
    pub unseen_attempts: usize,
    pub messages_with_unseen_attempts: usize,
    pub max_wait_s: f64,
    pub p99_wait_s: f64,
    /// Worker pods × seconds they existed, summed over the run.
    pub replica_seconds: f64,
    pub max_replicas: i32,
    pub final_replicas: i32,
    pub seconds: f64,
    /// The redrive after the worker was fixed, when the run had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveSummary>,
}

/// What the redrive at the end of a run did: the operator's counts from `status.redrive`,
/// and what the workers' lines say became of the messages it moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedriveSummary {
    /// `status.redrive.moved`: messages the operator put back on the queue.
    pub moved: i64,
    /// `status.redrive.failedAgain`: moved, failed again, left in the dead-letter queue.
    pub failed_again: i64,
    /// Dead-lettered messages a worker then answered 2xx to.
    pub processed_after: usize,
    /// From the annotation to the last dead-lettered message processed.
    pub seconds: f64,
    /// Whether the sandbox saw the operator hold the redrive until the fix was rolled out
    /// and no pod of the old worker was left (it looks once a second, so a short wait can
    /// pass unseen).
    pub waited_for_rollout: bool,
}

/// Everything but the timing fields and the redrive, which the sandbox fills in.
/// `dead_lettered` is every message seen in the dead-letter queue before any redrive;
/// `in_dead_letter` what it holds at the end (the same set when there was no redrive).
pub fn summarize(
    provider: &str,
    published: &[Published],
    ledger: &Ledger,
    dead_lettered: &BTreeSet<u64>,
    in_dead_letter: &BTreeSet<u64>,
) -> Summary {
    let processed: BTreeSet<u64> = published
        .iter()
        .filter(|m| ledger.successes.contains_key(&m.seq))
        .map(|m| m.seq)
        .collect();
    let lost_messages: Vec<String> = published
        .iter()
        .filter(|m| !processed.contains(&m.seq) && !in_dead_letter.contains(&m.seq))
        .map(|m| format!("{}/{}", m.seq, m.id))
        .collect();
    let lost = lost_messages.len();
    let duplicates = ledger.successes.values().filter(|(n, _)| *n > 1).count();
    let poison_not_dead_lettered = published
        .iter()
        .filter(|m| m.poison && !dead_lettered.contains(&m.seq))
        .count();
    let mut waits: Vec<u64> = published.iter().filter_map(|m| ledger.wait_ms(m)).collect();
    waits.sort_unstable();
    let quantile = |q: f64| {
        if waits.is_empty() {
            return 0.0;
        }
        let index = ((waits.len() as f64 * q).ceil() as usize).clamp(1, waits.len()) - 1;
        waits[index] as f64 / 1000.0
    };
    let (unseen_attempts, messages_with_unseen_attempts) = ledger.unseen_attempts();
    Summary {
        provider: provider.to_string(),
        published: published.len(),
        processed: processed.len(),
        dead_lettered: dead_lettered.len(),
        poison_not_dead_lettered,
        in_dead_letter: in_dead_letter.len(),
        lost,
        lost_messages,
        duplicates,
        failed_deliveries: ledger.failed_deliveries(),
        periodic_ticks_processed: ledger.ticks_processed(),
        periodic_tick_duplicates: ledger.tick_successes.values().filter(|n| **n > 1).count(),
        unseen_attempts,
        messages_with_unseen_attempts,
        max_wait_s: quantile(1.0),
        p99_wait_s: quantile(0.99),
        replica_seconds: 0.0,
        max_replicas: 0,
        final_replicas: 0,
        seconds: 0.0,
        redrive: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(seq: u64, id: &str, poison: bool) -> Published {
        Published {
            seq,
            id: id.into(),
            at_ms: 1_000,
            poison,
        }
    }

    fn line(status: u16, seq: u64, at: u64) -> Delivery {
        attempt_line(status, seq, 1, at)
    }

    fn ledger_of(deliveries: impl IntoIterator<Item = Delivery>) -> Ledger {
        let mut ledger = Ledger::default();
        for delivery in deliveries {
            ledger.record(&delivery);
        }
        ledger
    }

    fn attempt_line(status: u16, seq: u64, attempt: u32, at: u64) -> Delivery {
        parse_delivery(&format!(
            "{status} message=id-{seq} attempt={attempt} latency=200ms started_ms={at} body={{\"seq\":{seq}}}"
        ))
        .unwrap()
    }

    #[test]
    fn worker_lines_parse_and_other_lines_do_not() {
        assert_eq!(
            parse_delivery(
                r#"500 message=m-1 attempt=2 latency=201ms started_ms=1764000000123 body={"seq":7,"note":"poison"}"#
            ),
            Some(Delivery {
                status: 500,
                seq: 7,
                message_id: "m-1".into(),
                attempt: 2,
                started_ms: 1_764_000_000_123
            })
        );
        assert_eq!(
            parse_delivery("200 message=m-1 attempt=1 latency=1ms started_ms=1 body={}"),
            None,
            "a body without a sequence number is not the sandbox's"
        );
        assert_eq!(
            parse_delivery("example worker listening on http://127.0.0.2:8080/"),
            None
        );
    }

    #[test]
    fn periodic_task_lines_are_counted_apart_from_the_published_messages() {
        let tick = "200 message=t-1 attempt=1 latency=150ms started_ms=5 path=/tasks/heartbeat task=heartbeat body=elasticbeanstalk_scheduled_job";
        assert_eq!(
            parse_delivery(tick),
            None,
            "not one of the published messages"
        );
        let parsed = parse_task_delivery(tick).unwrap();
        assert_eq!(
            parsed,
            TaskDelivery {
                status: 200,
                message_id: "t-1".into(),
                task: "heartbeat".into()
            }
        );
        let plain = r#"200 message=m-1 attempt=1 latency=1ms started_ms=1 path=/ body={"seq":1}"#;
        assert_eq!(parse_task_delivery(plain), None);
        assert_eq!(parse_delivery(plain).map(|d| d.seq), Some(1));
        let mut ledger = Ledger::default();
        let failed = parse_task_delivery(&tick.replacen("200", "500", 1)).unwrap();
        ledger.record_tick(&failed);
        assert!(!ledger.tick_processed("t-1"));
        ledger.record_tick(&parsed);
        ledger.record_tick(&parsed);
        assert!(ledger.tick_processed("t-1"));
        let summary = summarize("sqs", &[], &ledger, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            (
                summary.periodic_ticks_processed,
                summary.periodic_tick_duplicates
            ),
            (1, 1)
        );
    }

    #[test]
    fn the_summary_counts_lost_duplicates_and_dead_letters() {
        let messages = [
            published(0, "a", false),
            published(1, "b", false),
            published(2, "c", true),
            published(3, "d", false),
        ];
        let ledger = ledger_of([
            line(500, 0, 1_500),
            line(200, 0, 3_000),
            line(200, 1, 2_000),
            line(200, 1, 9_000),
            line(422, 2, 1_100),
        ]);
        assert!(ledger.is_settled(0, 5) && ledger.is_settled(2, 5));
        assert!(!ledger.is_settled(3, 5));
        let dead = BTreeSet::from([2]);
        let summary = summarize("sqs", &messages, &ledger, &dead, &dead);
        assert_eq!(summary.processed, 2);
        assert_eq!(summary.dead_lettered, 1);
        assert_eq!(summary.lost, 1, "d went nowhere");
        assert_eq!(summary.duplicates, 1, "b twice");
        assert_eq!(summary.failed_deliveries, 2);
        assert_eq!(summary.poison_not_dead_lettered, 0);
        assert_eq!(summary.max_wait_s, 2.0);
        assert_eq!(summary.p99_wait_s, 2.0);
        assert_eq!(ledger.recent_max_wait_ms(&messages, 2_500), Some(2_000));
    }

    #[test]
    fn after_a_redrive_a_message_is_lost_only_if_neither_processed_nor_still_dead_lettered() {
        let messages = [
            published(0, "a", true),
            published(1, "b", true),
            published(2, "c", true),
        ];
        let ledger = ledger_of([
            line(422, 0, 1_100),
            line(422, 1, 1_200),
            line(422, 2, 1_300),
            // The fixed worker processes two of them once they are redriven.
            line(200, 0, 9_000),
            line(200, 1, 9_100),
        ]);
        let before = BTreeSet::from([0, 1, 2]);
        let summary = summarize("sqs", &messages, &ledger, &before, &BTreeSet::new());
        assert_eq!(summary.dead_lettered, 3);
        assert_eq!(summary.poison_not_dead_lettered, 0);
        assert_eq!(summary.processed, 2);
        assert_eq!(summary.in_dead_letter, 0);
        assert_eq!(summary.duplicates, 0, "a 422 then a 200 is one processing");
        assert_eq!(summary.lost_messages, vec!["2/c".to_string()]);
        let still_dead = BTreeSet::from([2]);
        let summary = summarize("sqs", &messages, &ledger, &before, &still_dead);
        assert_eq!((summary.lost, summary.in_dead_letter), (0, 1));
        assert_eq!(
            summary.max_wait_s, 0.3,
            "a poison message waited until its first, rejected, delivery"
        );
    }

    #[test]
    fn attempts_missing_from_the_workers_lines_are_counted_per_message() {
        let ledger = ledger_of([
            // Seen in order: nothing missing.
            attempt_line(500, 0, 1, 1_000),
            attempt_line(200, 0, 2, 2_000),
            // Attempts 2 and 3 went to a stream no worker read.
            attempt_line(500, 1, 1, 1_000),
            attempt_line(200, 1, 4, 130_000),
            // The first hand-over was lost; lines may come in any order.
            attempt_line(200, 2, 3, 70_000),
            attempt_line(500, 2, 2, 5_000),
        ]);
        assert_eq!(ledger.unseen_attempts(), (3, 2));
        let messages = [
            published(0, "a", false),
            published(1, "b", false),
            published(2, "c", false),
        ];
        let summary = summarize(
            "pubsub",
            &messages,
            &ledger,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(
            (
                summary.unseen_attempts,
                summary.messages_with_unseen_attempts
            ),
            (3, 2)
        );
    }

    #[test]
    fn a_repeat_is_explained_only_by_an_answer_the_sidecar_never_got() {
        let ledger = ledger_of([
            attempt_line(200, 0, 1, 1_000),
            attempt_line(200, 0, 2, 2_000),
            attempt_line(200, 1, 1, 1_000),
            attempt_line(200, 1, 2, 2_000),
            attempt_line(200, 2, 1, 1_000),
            attempt_line(200, 3, 1, 1_000),
            attempt_line(200, 3, 2, 2_000),
            attempt_line(200, 3, 3, 3_000),
        ]);
        let lost = HashSet::from([
            ("id-0".to_string(), 1),
            ("id-1".to_string(), 2),
            ("id-2".to_string(), 1),
            ("id-3".to_string(), 1),
        ]);
        assert_eq!(
            ledger.unexplained_duplicates(&lost),
            vec![3],
            "0 and 1 repeat once after a lost answer, 2 does not repeat, 3 repeats twice after one"
        );
        assert_eq!(
            ledger.unexplained_duplicates(&HashSet::new()),
            vec![0, 1, 3]
        );
    }
}

//! Kubernetes Events about QueueConsumers, with a repeat folded into a series (`count`,
//! `lastObservedTime`) as kube's `Recorder` does, but remembering only what a repeat needs.
//!
//! kube's `Recorder` keeps every event it published in the last 6 minutes whole: the
//! `events.k8s.io/v1` Event and a key of two object references, about 1.7 KB inline per
//! slot of its hash table. A thousand new QueueConsumers publish four events each; the
//! table grew to 8,192 slots and, while doubling, held the old one too: 18 MB of the
//! operator's 53 MB peak heap in the scale benchmark (heaptrack, docs/performance.md).
//! Here a series is a 64-bit fingerprint of its key, the event's name, a count and a time:
//! about 70 bytes a slot, where the key's strings inline took about 300 (2.2 MB of peak
//! heap for the benchmark's 4,000 events while the table doubled). Two different keys share
//! a fingerprint with odds of about 1 in 10^12 among 4,000 series; the cost would be one
//! event counted into another's series.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published event can still become a series (kube's `Recorder` uses the same).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// Forgetting expired series walks all of them; once in a while is soon enough.
const PRUNE_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// What makes two events the same occurrence repeated (kube's `EventKey`, less the
/// reporter, which is one per process).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    warning: bool,
    action: String,
    reason: String,
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    related: Option<(Option<String>, Option<String>, Option<String>)>,
}

impl SeriesKey {
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    fn new(event: &Event, regarding: &ObjectReference) -> Self {
        Self {
            warning: matches!(event.type_, EventType::Warning),
            action: event.action.clone(),
            reason: event.reason.clone(),
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            related: event
                .secondary
                .as_ref()
                .map(|r| (r.kind.clone(), r.namespace.clone(), r.name.clone())),
        }
    }
}

/// One published event that a repeat turns into a series.
#[derive(Clone, Debug, PartialEq)]
struct Series {
    name: String,
    count: i32,
    last_seen: Timestamp,
}

/// The series published in the last [`SERIES_TTL`]. Pure: time is passed in.
#[derive(Default)]
struct SeriesMemory {
    series: HashMap<u64, Series>,
    pruned_at: Option<Timestamp>,
}

impl SeriesMemory {
    /// The event this one repeats, with the count it now makes, if it is a repeat.
    fn repeat_of(&mut self, key: &SeriesKey, now: Timestamp) -> Option<(String, i32)> {
        if self.pruned_at.is_none_or(|at| at + PRUNE_EVERY <= now) {
            self.series.retain(|_, s| s.last_seen + SERIES_TTL > now);
            self.pruned_at = Some(now);
        }
        self.series
            .get(&key.fingerprint())
            .filter(|s| s.last_seen + SERIES_TTL > now)
            .map(|s| (s.name.clone(), s.count + 1))
    }

    fn remember(&mut self, key: SeriesKey, name: String, count: i32, now: Timestamp) {
        self.series.insert(
            key.fingerprint(),
            Series {
                name,
                count,
                last_seen: now,
            },
        );
    }
}

/// Publishes Events; shared by the reconciler and the autoscaler.
pub struct EventRecorder {
    client: kube::Client,
    reporter: Reporter,
    memory: Mutex<SeriesMemory>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            memory: Mutex::default(),
        }
    }

    /// Creates the event, or, when the same one was published in the last 6 minutes, counts
    /// it into that event's series.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey::new(event, regarding);
        let repeat = self
            .memory
            .lock()
            .expect("events lock")
            .repeat_of(&key, now);
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let (name, count) = match repeat {
            Some((name, count)) => {
                let series = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(now)}
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await?;
                (name, count)
            }
            None => {
                let created = self.new_event(event, regarding, now);
                let name = created.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &created).await?;
                (name, 1)
            }
        };
        self.memory
            .lock()
            .expect("events lock")
            .remember(key, name, count, now);
        Ok(())
    }

    /// The Event kube's `Recorder` would create.
    fn new_event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: event.secondary.clone(),
            ..K8sEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some("note".into()),
            action: "SetQueueReady".into(),
            secondary: None,
        }
    }

    fn regarding(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("QueueConsumer".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_repeat_within_six_minutes_counts_into_the_series() {
        let mut memory = SeriesMemory::default();
        let key = SeriesKey::new(&event("QueueProvisioned"), &regarding("orders"));
        assert_eq!(memory.repeat_of(&key, at(0)), None);
        memory.remember(key.clone(), "orders.1".into(), 1, at(0));
        assert_eq!(memory.repeat_of(&key, at(10)), Some(("orders.1".into(), 2)));
        memory.remember(key.clone(), "orders.1".into(), 2, at(10));
        assert_eq!(
            memory.repeat_of(&key, at(300)),
            Some(("orders.1".into(), 3))
        );
        assert_eq!(
            memory.repeat_of(&key, at(10 + 360)),
            None,
            "six minutes after the last one it is a new event"
        );
    }

    #[test]
    fn another_reason_or_object_is_another_event_and_old_series_are_forgotten() {
        let mut memory = SeriesMemory::default();
        let key = SeriesKey::new(&event("QueueProvisioned"), &regarding("orders"));
        memory.remember(key.clone(), "orders.1".into(), 1, at(0));
        let other_reason = SeriesKey::new(&event("QueueNotFound"), &regarding("orders"));
        let other_object = SeriesKey::new(&event("QueueProvisioned"), &regarding("billing"));
        assert_eq!(memory.repeat_of(&other_reason, at(1)), None);
        assert_eq!(memory.repeat_of(&other_object, at(1)), None);
        memory.repeat_of(&other_object, at(400));
        assert!(memory.series.is_empty(), "expired series are dropped");
    }
}

//! When each QueueConsumer's queue was last checked in the cloud, so that a reconcile that
//! is not due for a drift check reuses what the last check found.
//!
//! Reconciles come far more often than the spec changes: the Deployment's status moves, the
//! autoscaler scales, the operator's own status write comes back as an event. Checking the
//! queue each time cost four cloud calls (two for SQS's DLQ and queue, more with tags)
//! per reconcile, several per new consumer and per scale-to-zero. Now the cloud is asked when
//! the object is new, when its spec changed (`generation`), and every [`super::RESYNC`]
//! for drift, as documented.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_crds::QueueConsumer;
use ferry_queues::provision::ProvisionedQueue;
use kube::runtime::reflector::ObjectRef;

/// One object's last successful check.
#[derive(Clone)]
struct Verified {
    uid: Option<String>,
    generation: Option<i64>,
    queue: ProvisionedQueue,
    at: Instant,
}

#[derive(Default)]
pub struct VerifiedQueues {
    last: Mutex<HashMap<ObjectRef<QueueConsumer>, Verified>>,
}

/// The same object (uid) with the same spec (generation).
fn same_spec(verified: &Verified, qc: &QueueConsumer) -> bool {
    verified.uid == qc.metadata.uid && verified.generation == qc.metadata.generation
}

impl VerifiedQueues {
    /// What the last check of this object's current spec found, and how long until the
    /// next drift check is due, when one was made less than `every` before `now`.
    pub fn fresh(
        &self,
        qc: &QueueConsumer,
        every: Duration,
        now: Instant,
    ) -> Option<(ProvisionedQueue, Duration)> {
        let last = self.last.lock().expect("verified lock");
        let verified = last.get(&ObjectRef::from_obj(qc))?;
        let age = now.saturating_duration_since(verified.at);
        (same_spec(verified, qc) && age < every).then(|| (verified.queue.clone(), every - age))
    }

    /// A check succeeded: the queue is as `queue` says, as of `now`. What was corrected or
    /// created is not repeated to a reconcile that reuses the result.
    pub fn record(&self, qc: &QueueConsumer, queue: &ProvisionedQueue, now: Instant) {
        let queue = ProvisionedQueue {
            corrected: Vec::new(),
            created: Vec::new(),
            ..queue.clone()
        };
        self.last.lock().expect("verified lock").insert(
            ObjectRef::from_obj(qc),
            Verified {
                uid: qc.metadata.uid.clone(),
                generation: qc.metadata.generation,
                queue,
                at: now,
            },
        );
    }

    /// The next reconcile must ask the cloud (an error, a deletion).
    pub fn forget(&self, qc: &QueueConsumer) {
        self.last
            .lock()
            .expect("verified lock")
            .remove(&ObjectRef::from_obj(qc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(uid: &str, generation: i64) -> QueueConsumer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "QueueConsumer",
            "metadata": {"name": "orders", "namespace": "shop", "uid": uid, "generation": generation},
            "spec": {"queue": {"provider": "sqs"}, "deadLetter": {"maxDeliveries": 5},
                     "worker": {"spec": {"containers": [{"name": "app", "image": "app"}]}}}
        }))
        .unwrap()
    }

    fn queue() -> ProvisionedQueue {
        ProvisionedQueue {
            queue: "q".into(),
            dead_letter: "dlq".into(),
            publish_to: "q".into(),
            dead_letter_publish_to: "dlq".into(),
            corrected: vec!["q: VisibilityTimeout".into()],
            created: vec!["q".into()],
        }
    }

    #[test]
    fn a_check_is_reused_for_the_same_spec_until_the_next_one_is_due() {
        let verified = VerifiedQueues::default();
        let every = Duration::from_secs(300);
        let t0 = Instant::now();
        let qc = consumer("u1", 1);
        assert!(verified.fresh(&qc, every, t0).is_none());
        verified.record(&qc, &queue(), t0);
        let (reused, due_in) = verified
            .fresh(&qc, every, t0 + Duration::from_secs(100))
            .expect("fresh");
        assert_eq!(reused.queue, "q");
        assert!(reused.corrected.is_empty() && reused.created.is_empty());
        assert_eq!(due_in, Duration::from_secs(200));
        assert!(verified.fresh(&qc, every, t0 + every).is_none());
    }

    #[test]
    fn a_new_spec_or_a_new_object_is_checked_again() {
        let verified = VerifiedQueues::default();
        let every = Duration::from_secs(300);
        let t0 = Instant::now();
        verified.record(&consumer("u1", 1), &queue(), t0);
        assert!(verified.fresh(&consumer("u1", 2), every, t0).is_none());
        assert!(verified.fresh(&consumer("u2", 1), every, t0).is_none());
        verified.forget(&consumer("u1", 1));
        assert!(verified.fresh(&consumer("u1", 1), every, t0).is_none());
    }
}

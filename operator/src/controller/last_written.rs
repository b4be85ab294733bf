//! What this process last wrote to an object's status, per object.
//!
//! A reconcile reads the status from the watch cache, which may not show this process's
//! own last write yet. Parts of the status that record an action taken (a redrive pass, a
//! periodic task's tick) must not be read from that older copy, or the action would be
//! taken twice or its record put back to what it was.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_crds::QueueConsumer;
use kube::runtime::reflector::ObjectRef;

pub struct LastWritten<T>(Mutex<HashMap<ObjectRef<QueueConsumer>, Stamped<T>>>);

/// The object's uid when it was written, and what was written.
type Stamped<T> = (Option<String>, T);

impl<T> Default for LastWritten<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Clone> LastWritten<T> {
    /// What was last written for this object, when it is the same object (same uid: a
    /// deleted and recreated object starts afresh).
    pub fn get(&self, qc: &QueueConsumer) -> Option<T> {
        let written = self.0.lock().expect("last written lock");
        written
            .get(&ObjectRef::from_obj(qc))
            .filter(|(uid, _)| *uid == qc.metadata.uid)
            .map(|(_, value)| value.clone())
    }

    pub fn record(&self, qc: &QueueConsumer, value: T) {
        let mut written = self.0.lock().expect("last written lock");
        written.insert(ObjectRef::from_obj(qc), (qc.metadata.uid.clone(), value));
    }

    pub fn forget(&self, qc: &QueueConsumer) {
        let mut written = self.0.lock().expect("last written lock");
        written.remove(&ObjectRef::from_obj(qc));
    }
}

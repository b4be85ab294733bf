//! The object store: every object of every kind as JSON, one global resourceVersion, and a
//! bounded history of changes so watches can resume from a recent version (older ones get 410).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

/// Group and plural resource name: the storage identity of a kind (all versions share it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// Namespace ("" for cluster-scoped) and name.
pub type ObjectKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct ChangeEvent {
    pub kind: EventType,
    pub gr: GroupResource,
    pub rv: u64,
    pub object: Arc<Value>,
    /// The previous state, so selector-filtered watches can turn "stopped matching" into DELETED.
    pub old: Option<Arc<Value>>,
}

/// What a mutation closure decided.
pub enum Mutation {
    Put(Value),
    Delete,
    Unchanged,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<GroupResource, BTreeMap<ObjectKey, Arc<Value>>>,
    history: VecDeque<Arc<ChangeEvent>>,
    /// Highest resourceVersion whose event was dropped from `history`.
    compacted: u64,
    history_limit: usize,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<ChangeEvent>>,
}

/// A point-in-time listing together with a live subscription that starts right after it.
pub struct Snapshot {
    pub rv: u64,
    pub items: Vec<Arc<Value>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(history_limit.max(1024));
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                history_limit,
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, gr: &GroupResource, key: &ObjectKey) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(gr)
            .and_then(|m| m.get(key))
            .cloned()
    }

    /// All objects of a resource, optionally in one namespace, sorted by namespace and name.
    pub fn list(&self, gr: &GroupResource, namespace: Option<&str>) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            rv: inner.rv,
            items: collect(&inner, gr, namespace),
        }
    }

    /// Page through objects in key order after `after`, keeping those `keep` accepts, up to
    /// `limit`. Returns the page, the current resourceVersion and whether more matches follow.
    pub fn scan(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        after: Option<&ObjectKey>,
        limit: Option<usize>,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> (Vec<Arc<Value>>, u64, bool) {
        use std::ops::Bound;
        let inner = self.lock();
        let Some(m) = inner.objects.get(gr) else {
            return (Vec::new(), inner.rv, false);
        };
        let lower = match (after, namespace) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut more = false;
        for ((ns, _), v) in m.range((lower, Bound::Unbounded)) {
            if let Some(want) = namespace
                && ns != want
            {
                if ns.as_str() > want {
                    break;
                }
                continue;
            }
            if !keep(v) {
                continue;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                more = true;
                break;
            }
            out.push(v.clone());
        }
        (out, inner.rv, more)
    }

    /// Subscribe and, atomically with it, either list current state or replay history after `rv`.
    pub fn watch_from(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        rv: Option<u64>,
    ) -> (
        broadcast::Receiver<Arc<ChangeEvent>>,
        u64,
        Result<WatchOrigin, ()>,
    ) {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let origin = match rv {
            None => Ok(WatchOrigin::List(collect(&inner, gr, namespace))),
            Some(v) if v < inner.compacted => Err(()),
            Some(v) => Ok(WatchOrigin::Replay(
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > v && &e.gr == gr)
                    .cloned()
                    .collect(),
            )),
        };
        (rx, inner.rv, origin)
    }

    /// Read-modify-write one object under the store lock. The closure sees the current object
    /// and returns what to do; the new resourceVersion is stamped into `metadata.resourceVersion`.
    pub fn mutate<E>(
        &self,
        gr: &GroupResource,
        key: &ObjectKey,
        f: impl FnOnce(Option<&Value>, u64) -> Result<Mutation, E>,
    ) -> Result<Option<Arc<Value>>, E> {
        let mut inner = self.lock();
        let next_rv = inner.rv + 1;
        let current = inner.objects.get(gr).and_then(|m| m.get(key)).cloned();
        let mutation = f(current.as_deref(), next_rv)?;
        match mutation {
            Mutation::Unchanged => Ok(current),
            Mutation::Put(mut obj) => {
                inner.rv = next_rv;
                set_rv(&mut obj, next_rv);
                let obj = Arc::new(obj);
                inner
                    .objects
                    .entry(gr.clone())
                    .or_default()
                    .insert(key.clone(), obj.clone());
                let kind = if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                self.record(&mut inner, kind, gr, next_rv, obj.clone(), current);
                Ok(Some(obj))
            }
            Mutation::Delete => {
                let Some(old) = current else {
                    return Ok(None);
                };
                inner.rv = next_rv;
                if let Some(m) = inner.objects.get_mut(gr) {
                    m.remove(key);
                }
                // A deleted object's final state carries the deletion's resourceVersion.
                let mut last = (*old).clone();
                set_rv(&mut last, next_rv);
                let last = Arc::new(last);
                self.record(
                    &mut inner,
                    EventType::Deleted,
                    gr,
                    next_rv,
                    last.clone(),
                    Some(old),
                );
                Ok(Some(last))
            }
        }
    }

    fn record(
        &self,
        inner: &mut Inner,
        kind: EventType,
        gr: &GroupResource,
        rv: u64,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(ChangeEvent {
            kind,
            gr: gr.clone(),
            rv,
            object,
            old,
        });
        inner.history.push_back(ev.clone());
        while inner.history.len() > inner.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(ev);
    }

    /// Every resource that currently has objects (used by garbage collection and namespace cleanup).
    pub fn resources(&self) -> Vec<GroupResource> {
        self.lock().objects.keys().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.tx.subscribe()
    }

    pub fn object_count(&self) -> usize {
        self.lock().objects.values().map(|m| m.len()).sum()
    }
}

pub enum WatchOrigin {
    List(Vec<Arc<Value>>),
    Replay(Vec<Arc<ChangeEvent>>),
}

fn collect(inner: &Inner, gr: &GroupResource, namespace: Option<&str>) -> Vec<Arc<Value>> {
    let Some(m) = inner.objects.get(gr) else {
        return Vec::new();
    };
    match namespace {
        None => m.values().cloned().collect(),
        Some(ns) => m
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

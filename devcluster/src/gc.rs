//! Garbage collection by ownerReferences (background and foreground), and namespace teardown.
//! Driven by the store's change feed, with an index of owners to dependents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::cluster::{Cluster, DeleteOptions, meta_str};
use crate::store::{ChangeEvent, EventType, GroupResource, ObjectKey};

type Loc = (GroupResource, ObjectKey);

#[derive(Default)]
struct Index {
    uids: HashMap<String, Loc>,
    dependents: HashMap<String, HashSet<Loc>>,
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn loc(gr: &GroupResource, obj: &Value) -> Loc {
    (
        gr.clone(),
        (
            meta_str(obj, "namespace").unwrap_or("").to_string(),
            meta_str(obj, "name").unwrap_or("").to_string(),
        ),
    )
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

pub async fn run(cluster: Arc<Cluster>) {
    let mut rx = cluster.store.subscribe();
    let mut idx = Index::default();
    rebuild(&cluster, &mut idx);
    loop {
        match rx.recv().await {
            Ok(ev) => handle(&cluster, &mut idx, &ev),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                rebuild(&cluster, &mut idx);
                sweep(&cluster, &idx);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn rebuild(cluster: &Cluster, idx: &mut Index) {
    *idx = Index::default();
    for gr in cluster.store.resources() {
        for obj in cluster.store.list(&gr, None).items {
            index_add(idx, &gr, &obj);
        }
    }
}

fn index_add(idx: &mut Index, gr: &GroupResource, obj: &Value) {
    let l = loc(gr, obj);
    if let Some(u) = meta_str(obj, "uid") {
        idx.uids.insert(u.to_string(), l.clone());
    }
    for o in owner_uids(obj) {
        idx.dependents.entry(o).or_default().insert(l.clone());
    }
}

fn index_remove_refs(idx: &mut Index, gr: &GroupResource, obj: &Value) {
    let l = loc(gr, obj);
    for o in owner_uids(obj) {
        if let Some(set) = idx.dependents.get_mut(&o) {
            set.remove(&l);
            if set.is_empty() {
                idx.dependents.remove(&o);
            }
        }
    }
}

/// After a lag, catch up: dependents of vanished owners and pending foreground/namespace deletions.
fn sweep(cluster: &Cluster, idx: &Index) {
    let owners: Vec<String> = idx.dependents.keys().cloned().collect();
    for o in owners {
        if !idx.uids.contains_key(&o) {
            collect_dependents_of(cluster, idx, &o);
        }
    }
    for (l_gr, key) in idx.uids.values() {
        if let Some(obj) = cluster.store.get(l_gr, key) {
            progress_deletion(cluster, idx, l_gr, &obj);
        }
    }
}

fn handle(cluster: &Cluster, idx: &mut Index, ev: &ChangeEvent) {
    if let Some(old) = &ev.old {
        index_remove_refs(idx, &ev.gr, old);
    }
    match ev.kind {
        EventType::Added | EventType::Modified => {
            index_add(idx, &ev.gr, &ev.object);
            let absent: Vec<String> = owner_uids(&ev.object)
                .into_iter()
                .filter(|u| !idx.uids.contains_key(u))
                .collect();
            if !absent.is_empty() {
                for u in &absent {
                    drop_owner(cluster, idx, &loc(&ev.gr, &ev.object), u);
                }
            }
            progress_deletion(cluster, idx, &ev.gr, &ev.object);
        }
        EventType::Deleted => {
            index_remove_refs(idx, &ev.gr, &ev.object);
            if let Some(u) = meta_str(&ev.object, "uid") {
                idx.uids.remove(u);
                collect_dependents_of(cluster, idx, u);
            }
            // Owners waiting in foreground deletion may now be free to go.
            for o in owner_uids(&ev.object) {
                if let Some((gr, key)) = idx.uids.get(&o).cloned()
                    && let Some(owner) = cluster.store.get(&gr, &key)
                {
                    progress_deletion(cluster, idx, &gr, &owner);
                }
            }
            if let Some(ns) = meta_str(&ev.object, "namespace").filter(|n| !n.is_empty()) {
                let ns_gr = GroupResource::new("", "namespaces");
                if let Some(n) = cluster.store.get(&ns_gr, &(String::new(), ns.to_string())) {
                    progress_deletion(cluster, idx, &ns_gr, &n);
                }
            }
        }
    }
}

fn collect_dependents_of(cluster: &Cluster, idx: &Index, owner: &str) {
    let deps: Vec<Loc> = idx
        .dependents
        .get(owner)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    for d in deps {
        drop_owner(cluster, idx, &d, owner);
    }
}

/// `owner` is gone: delete the dependent if no other owner remains, else just drop the reference.
fn drop_owner(cluster: &Cluster, idx: &Index, dep: &Loc, owner: &str) {
    let (gr, key) = dep;
    let Some(obj) = cluster.store.get(gr, key) else {
        return;
    };
    let Some(info) = cluster.registry.find_gr(gr) else {
        return;
    };
    let remaining = owner_uids(&obj)
        .into_iter()
        .filter(|u| u != owner && idx.uids.contains_key(u))
        .count();
    if remaining == 0 {
        if !deleting(&obj) || info.plural == "pods" {
            let _ = cluster.delete(&info, &key.0, &key.1, &DeleteOptions::default());
        }
    } else {
        let owner = owner.to_string();
        let _ = cluster.modify(&info, &key.0, &key.1, "garbage-collector", move |cur| {
            let mut new = cur.clone();
            new.pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)?
                .retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner.as_str()));
            Some(new)
        });
    }
}

/// Foreground deletion and namespace teardown: delete what hangs off the object, then let it go.
fn progress_deletion(cluster: &Cluster, idx: &Index, gr: &GroupResource, obj: &Value) {
    if !deleting(obj) {
        return;
    }
    let Some(info) = cluster.registry.find_gr(gr) else {
        return;
    };
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    let ns = meta_str(obj, "namespace").unwrap_or("").to_string();
    if gr.group.is_empty() && gr.resource == "namespaces" {
        let mut left = 0;
        for rgr in cluster.store.resources() {
            let Some(rinfo) = cluster.registry.find_gr(&rgr) else {
                continue;
            };
            if !rinfo.namespaced {
                continue;
            }
            for o in cluster.store.list(&rgr, Some(&name)).items {
                left += 1;
                if !deleting(&o) {
                    let n = meta_str(&o, "name").unwrap_or("").to_string();
                    let _ = cluster.delete(&rinfo, &name, &n, &DeleteOptions::default());
                }
            }
        }
        if left == 0
            && obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
        {
            cluster.remove_now(&info, "", &name);
        }
        return;
    }
    if has_finalizer(obj, "foregroundDeletion") {
        let uid = meta_str(obj, "uid").unwrap_or("").to_string();
        let deps: Vec<Loc> = idx
            .dependents
            .get(&uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut alive = 0;
        for (dgr, dkey) in deps {
            let Some(d) = cluster.store.get(&dgr, &dkey) else {
                continue;
            };
            alive += 1;
            if !deleting(&d)
                && let Some(dinfo) = cluster.registry.find_gr(&dgr)
            {
                let opts = DeleteOptions {
                    propagation: Some("Foreground".into()),
                    ..Default::default()
                };
                let _ = cluster.delete(&dinfo, &dkey.0, &dkey.1, &opts);
            }
        }
        if alive == 0 {
            let _ = cluster.modify(&info, &ns, &name, "garbage-collector", |cur| {
                let mut new = cur.clone();
                new.pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)?
                    .retain(|f| f != "foregroundDeletion");
                Some(new)
            });
        }
    }
}

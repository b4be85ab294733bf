//! Built-in controllers: Deployment → ReplicaSet → Pods, with Deployment status and
//! pod-deletion-cost-aware scale-down. Driven by the store's change feed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::cluster::{Cluster, DeleteOptions, WriteOptions, meta_str, now, random_suffix};
use crate::registry::ResourceInfo;
use crate::selectors::LabelSelector;
use crate::store::ChangeEvent;

const MANAGER: &str = "kube-controller-manager";
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    Deployment(String, String),
    ReplicaSet(String, String),
}

struct Infos {
    deploy: ResourceInfo,
    rs: ResourceInfo,
    pods: ResourceInfo,
}

pub async fn run(cluster: Arc<Cluster>) {
    let (Ok(deploy), Ok(rs), Ok(pods)) = (
        cluster.resource("apps", "v1", "deployments"),
        cluster.resource("apps", "v1", "replicasets"),
        cluster.resource("", "v1", "pods"),
    ) else {
        return;
    };
    let infos = Infos { deploy, rs, pods };
    let mut rx = cluster.store.subscribe();
    let mut resync = tokio::time::interval(Duration::from_secs(5));
    loop {
        let mut work = BTreeSet::new();
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => enqueue(&cluster, &infos, &ev, &mut work),
                Err(broadcast::error::RecvError::Lagged(_)) => resync_all(&cluster, &infos, &mut work),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = resync.tick() => resync_all(&cluster, &infos, &mut work),
        }
        // Drain what else is queued so a burst of events costs one reconcile per object.
        loop {
            match rx.try_recv() {
                Ok(ev) => enqueue(&cluster, &infos, &ev, &mut work),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    resync_all(&cluster, &infos, &mut work)
                }
                Err(_) => break,
            }
        }
        // ReplicaSets first so Deployment status sees their fresh counts.
        let (rss, deps): (Vec<_>, Vec<_>) = work
            .into_iter()
            .partition(|w| matches!(w, Work::ReplicaSet(..)));
        for w in rss.into_iter().chain(deps) {
            let r = match &w {
                Work::Deployment(ns, n) => reconcile_deployment(&cluster, &infos, ns, n),
                Work::ReplicaSet(ns, n) => reconcile_replicaset(&cluster, &infos, ns, n),
            };
            if let Err(e) = r {
                tracing::debug!(?w, error = %e, "controller reconcile failed; will retry on the next event");
            }
        }
        tokio::task::yield_now().await;
    }
}

fn resync_all(cluster: &Cluster, infos: &Infos, work: &mut BTreeSet<Work>) {
    for d in cluster.store.list(&infos.deploy.gr(), None).items {
        work.insert(Work::Deployment(
            meta_str(&d, "namespace").unwrap_or("").into(),
            meta_str(&d, "name").unwrap_or("").into(),
        ));
    }
    for r in cluster.store.list(&infos.rs.gr(), None).items {
        work.insert(Work::ReplicaSet(
            meta_str(&r, "namespace").unwrap_or("").into(),
            meta_str(&r, "name").unwrap_or("").into(),
        ));
    }
}

fn controller_of(obj: &Value, kind: &str) -> Option<String> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| {
            r.get("controller").and_then(Value::as_bool) == Some(true)
                && r.get("kind").and_then(Value::as_str) == Some(kind)
        })
        .and_then(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
}

fn enqueue(cluster: &Cluster, infos: &Infos, ev: &ChangeEvent, work: &mut BTreeSet<Work>) {
    let ns = meta_str(&ev.object, "namespace").unwrap_or("").to_string();
    let name = meta_str(&ev.object, "name").unwrap_or("").to_string();
    if ev.gr == infos.deploy.gr() {
        work.insert(Work::Deployment(ns, name));
    } else if ev.gr == infos.rs.gr() {
        if let Some(d) = controller_of(&ev.object, "Deployment") {
            work.insert(Work::Deployment(ns.clone(), d));
        }
        work.insert(Work::ReplicaSet(ns, name));
    } else if ev.gr == infos.pods.gr()
        && let Some(rs) = controller_of(&ev.object, "ReplicaSet")
    {
        if let Some(r) = cluster.try_get(&infos.rs, &ns, &rs)
            && let Some(d) = controller_of(&r, "Deployment")
        {
            work.insert(Work::Deployment(ns.clone(), d));
        }
        work.insert(Work::ReplicaSet(ns, rs));
    }
}

fn owned_by<'a>(items: &'a [Arc<Value>], uid: &str) -> Vec<&'a Arc<Value>> {
    items
        .iter()
        .filter(|o| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter().any(|r| {
                        r.get("uid").and_then(Value::as_str) == Some(uid)
                            && r.get("controller").and_then(Value::as_bool) == Some(true)
                    })
                })
        })
        .collect()
}

fn owner_ref(obj: &Value, kind: &str, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": meta_str(obj, "name"), "uid": meta_str(obj, "uid"),
        "controller": true, "blockOwnerDeletion": true,
    })
}

fn i(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

pub fn pod_ready(pod: &Value) -> bool {
    status_condition(pod, "Ready")
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// Kubernetes' hash alphabet, so names look like `web-5d8f7c9b6d`.
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // Hash what the template means, not how a client spelled it: `"creationTimestamp": null`
    // (which typed clients such as `kubectl rollout undo` send) must not change the hash.
    fn without_nulls(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
            other => other.clone(),
        }
    }
    let bytes = serde_json::to_vec(&without_nulls(template)).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (0..10)
        .map(|k| ALPHABET[((h >> (k * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn int_or_percent(v: Option<&Value>, total: i64, round_up: bool, default: &str) -> i64 {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            if round_up {
                x.ceil() as i64
            } else {
                x.floor() as i64
            }
        }
        _ => 0,
    }
}

fn reconcile_deployment(
    cluster: &Cluster,
    infos: &Infos,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    let Some(dep) = cluster.try_get(&infos.deploy, ns, name) else {
        return Ok(());
    };
    if deleting(&dep) {
        return Ok(());
    }
    let uid = meta_str(&dep, "uid").unwrap_or("").to_string();
    let desired = i(dep.pointer("/spec/replicas"));
    let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let all_rs = cluster.store.list(&infos.rs.gr(), Some(ns)).items;
    let owned: Vec<Arc<Value>> = owned_by(&all_rs, &uid).into_iter().cloned().collect();
    let mut new_rs = owned
        .iter()
        .find(|r| {
            r.pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str)
                == Some(hash.as_str())
        })
        .cloned();
    let old_rs: Vec<Arc<Value>> = owned
        .iter()
        .filter(|r| Some(*r) != new_rs.as_ref())
        .cloned()
        .collect();
    let max_rev = owned
        .iter()
        .filter_map(|r| {
            r.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i64>().ok())
        })
        .max()
        .unwrap_or(0);
    let recreate = dep.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let surge = if recreate {
        0
    } else {
        int_or_percent(
            dep.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            desired,
            true,
            "25%",
        )
    };
    let mut unavailable = if recreate {
        desired
    } else {
        int_or_percent(
            dep.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            desired,
            false,
            "25%",
        )
    };
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let old_replicas: i64 = old_rs.iter().map(|r| i(r.pointer("/spec/replicas"))).sum();
    let old_pods: i64 = old_rs
        .iter()
        .map(|r| i(r.pointer("/status/replicas")))
        .sum();
    if new_rs.is_none() {
        let mut tmpl = template.clone();
        tmpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = dep.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["pod-template-hash"] = json!(hash);
        let initial = if old_rs.is_empty() { desired } else { 0 };
        let rs = json!({
            "metadata": {
                "name": format!("{name}-{hash}"), "namespace": ns, "labels": labels,
                "annotations": {
                    "deployment.kubernetes.io/revision": (max_rev + 1).to_string(),
                    "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                    "deployment.kubernetes.io/max-replicas": (desired + surge).to_string(),
                },
                "ownerReferences": [owner_ref(&dep, "Deployment", "apps/v1")],
            },
            "spec": {"replicas": initial, "selector": selector, "template": tmpl,
                     "minReadySeconds": dep.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0))},
        });
        let created = cluster.create(
            &infos.rs,
            ns,
            rs,
            &WriteOptions {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
        )?;
        new_rs = Some(Arc::new(created));
        cluster.record_event(
            &dep,
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled up replica set {name}-{hash} from 0 to {initial}"),
            "deployment-controller",
        );
    }
    let new_rs = new_rs.expect("new ReplicaSet exists");
    let new_name = meta_str(&new_rs, "name").unwrap_or("").to_string();
    // The current ReplicaSet carries the highest revision (a rollback re-activates an old one),
    // and the Deployment mirrors it; `kubectl rollout history/undo` read these annotations.
    let revision_of = |r: &Value| {
        r.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let mut revision = revision_of(&new_rs);
    if old_rs.iter().any(|r| revision_of(r) > revision) {
        revision = max_rev + 1;
        cluster.modify(&infos.rs, ns, &new_name, MANAGER, |cur| {
            let mut new = cur.clone();
            new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                json!(revision.to_string());
            Some(new)
        })?;
    }
    if dep
        .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
        .and_then(Value::as_str)
        != Some(revision.to_string().as_str())
    {
        cluster.modify(&infos.deploy, ns, name, MANAGER, |cur| {
            let mut new = cur.clone();
            if !new["metadata"]["annotations"].is_object() {
                new["metadata"]["annotations"] = json!({});
            }
            new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                json!(revision.to_string());
            Some(new)
        })?;
    }
    let new_spec = i(new_rs.pointer("/spec/replicas"));
    let new_ready = i(new_rs.pointer("/status/availableReplicas"));
    let old_available: i64 = old_rs
        .iter()
        .map(|r| i(r.pointer("/status/availableReplicas")))
        .sum();
    // Scale the new ReplicaSet up within the surge budget.
    let target_new = if old_rs
        .iter()
        .all(|r| i(r.pointer("/spec/replicas")) == 0 && i(r.pointer("/status/replicas")) == 0)
    {
        desired
    } else if recreate {
        if old_pods == 0 && old_replicas == 0 {
            desired
        } else {
            0
        }
    } else {
        let room = desired + surge - old_replicas;
        new_spec.max(room.min(desired)).min(desired).max(0)
    };
    let target_new = if old_rs.is_empty() {
        desired
    } else {
        target_new
    };
    if target_new != new_spec
        || rs_annotation(&new_rs, "deployment.kubernetes.io/desired-replicas")
            != Some(desired.to_string())
    {
        set_rs_replicas(
            cluster,
            infos,
            &dep,
            (ns, &new_name),
            target_new,
            desired,
            surge,
        )?;
    }
    // Scale old ReplicaSets down as far as availability allows (all the way for Recreate).
    let min_available = desired - unavailable;
    let mut can_remove = if recreate {
        old_replicas
    } else {
        (old_available + new_ready - min_available).max(0)
    };
    let mut olds = old_rs.clone();
    olds.sort_by_key(|r| meta_str(r, "creationTimestamp").unwrap_or("").to_string());
    for r in &olds {
        let cur = i(r.pointer("/spec/replicas"));
        if cur == 0 {
            continue;
        }
        let unavailable_here = cur - i(r.pointer("/status/availableReplicas"));
        let cut = (can_remove + unavailable_here.max(0)).min(cur);
        if cut > 0 {
            set_rs_replicas(
                cluster,
                infos,
                &dep,
                (ns, meta_str(r, "name").unwrap_or("")),
                cur - cut,
                desired,
                surge,
            )?;
            can_remove = (can_remove - (cut - unavailable_here.max(0))).max(0);
        }
    }
    // Keep revisionHistoryLimit old, empty ReplicaSets.
    let limit = dep
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10) as usize;
    let mut empty_old: Vec<&Arc<Value>> = olds
        .iter()
        .filter(|r| i(r.pointer("/spec/replicas")) == 0 && i(r.pointer("/status/replicas")) == 0)
        .collect();
    if empty_old.len() > limit {
        let excess = empty_old.len() - limit;
        for r in empty_old.drain(..excess) {
            let _ = cluster.delete(
                &infos.rs,
                ns,
                meta_str(r, "name").unwrap_or(""),
                &DeleteOptions::default(),
            );
        }
    }
    write_deployment_status(
        cluster,
        infos,
        &dep,
        ns,
        name,
        desired,
        unavailable,
        &new_name,
    )
}

fn rs_annotation(rs: &Value, key: &str) -> Option<String> {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn set_rs_replicas(
    cluster: &Cluster,
    infos: &Infos,
    dep: &Value,
    rs: (&str, &str),
    replicas: i64,
    desired: i64,
    surge: i64,
) -> anyhow::Result<()> {
    let (ns, name) = rs;
    let before = cluster
        .try_get(&infos.rs, ns, name)
        .map(|r| i(r.pointer("/spec/replicas")))
        .unwrap_or(0);
    cluster.modify(&infos.rs, ns, name, MANAGER, |cur| {
        let mut new = cur.clone();
        new["spec"]["replicas"] = json!(replicas);
        new["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
            json!(desired.to_string());
        new["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] =
            json!((desired + surge).to_string());
        Some(new)
    })?;
    if before != replicas {
        let dir = if replicas > before { "up" } else { "down" };
        cluster.record_event(
            dep,
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled {dir} replica set {name} from {before} to {replicas}"),
            "deployment-controller",
        );
    }
    Ok(())
}

fn condition(existing: &[Value], type_: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now();
    let prev = existing
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_));
    let same = prev.is_some_and(|p| p.get("status").and_then(Value::as_str) == Some(status));
    let transition = if same {
        prev.and_then(|p| p.get("lastTransitionTime").cloned())
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    let same_reason =
        same && prev.is_some_and(|p| p.get("reason").and_then(Value::as_str) == Some(reason));
    let update = if same_reason {
        prev.and_then(|p| p.get("lastUpdateTime").cloned())
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": transition, "lastUpdateTime": update})
}

#[allow(clippy::too_many_arguments)]
fn write_deployment_status(
    cluster: &Cluster,
    infos: &Infos,
    dep: &Value,
    ns: &str,
    name: &str,
    desired: i64,
    max_unavailable: i64,
    new_name: &str,
) -> anyhow::Result<()> {
    let uid = meta_str(dep, "uid").unwrap_or("");
    let all_rs = cluster.store.list(&infos.rs.gr(), Some(ns)).items;
    let owned = owned_by(&all_rs, uid);
    let sum = |ptr: &str| -> i64 { owned.iter().map(|r| i(r.pointer(ptr))).sum() };
    let replicas = sum("/status/replicas");
    let ready = sum("/status/readyReplicas");
    let available = sum("/status/availableReplicas");
    let updated = owned
        .iter()
        .filter(|r| meta_str(r, "name") == Some(new_name))
        .map(|r| i(r.pointer("/status/replicas")))
        .sum::<i64>();
    let existing = dep
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let avail_ok = available >= desired - max_unavailable;
    let available_c = if avail_ok {
        condition(
            &existing,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        condition(
            &existing,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let complete = updated == desired && replicas == desired && available == desired;
    // Progress = any change in the replica counts or the spec; without progress for
    // progressDeadlineSeconds, Progressing turns False (ProgressDeadlineExceeded).
    let prev = dep.get("status");
    let counts = |s: Option<&Value>| {
        [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .map(|k| i(s.and_then(|s| s.get(k))))
    };
    let progressed = counts(prev)
        != [
            replicas,
            updated,
            ready,
            available,
            i(dep.pointer("/metadata/generation")),
        ];
    let deadline = dep
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    let last_progress = existing
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Progressing"))
        .and_then(|c| c.get("lastUpdateTime").and_then(Value::as_str))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds());
    let already_stalled = existing.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("Progressing")
            && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    });
    let stalled = !complete
        && !progressed
        && (already_stalled || last_progress.is_some_and(|s| s > deadline));
    let mut progressing_c = if complete {
        condition(
            &existing,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if stalled {
        condition(
            &existing,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        condition(
            &existing,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    if progressed && !complete {
        progressing_c["lastUpdateTime"] = json!(now());
    }
    let mut conditions = vec![available_c, progressing_c];
    // A ReplicaSet that cannot create its pods says so on the Deployment too, the new one's
    // failure first (the Deployment controller's getReplicaFailures).
    let failure = owned
        .iter()
        .filter(|r| meta_str(r, "name") == Some(new_name))
        .chain(
            owned
                .iter()
                .filter(|r| meta_str(r, "name") != Some(new_name)),
        )
        .find_map(|r| status_condition(r, "ReplicaFailure").cloned());
    if let Some(failure) = failure {
        conditions.push(condition(
            &existing,
            "ReplicaFailure",
            failure
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("True"),
            failure.get("reason").and_then(Value::as_str).unwrap_or(""),
            failure.get("message").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    let mut status = json!({
        "observedGeneration": i(dep.pointer("/metadata/generation")),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": conditions,
    });
    if desired - available > 0 {
        status["unavailableReplicas"] = json!(desired - available);
    }
    let obj = status.as_object_mut().expect("status object");
    obj.retain(|k, v| !(v == &json!(0) && k != "observedGeneration"));
    if dep.get("status") == Some(&status) {
        return Ok(());
    }
    cluster.write_status(&infos.deploy, ns, name, status, MANAGER)?;
    Ok(())
}

/// Rank for scale-down: lower sorts first, i.e. is deleted first.
fn deletion_rank(pod: &Value) -> (bool, u8, bool, i64, i64, std::cmp::Reverse<String>) {
    let assigned = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let cost = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DELETION_COST))
        .and_then(Value::as_str)
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(0);
    let restarts: i64 = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| i(c.get("restartCount"))).sum())
        .unwrap_or(0);
    (
        assigned,
        phase,
        pod_ready(pod),
        cost,
        -restarts,
        std::cmp::Reverse(meta_str(pod, "creationTimestamp").unwrap_or("").to_string()),
    )
}

fn reconcile_replicaset(
    cluster: &Cluster,
    infos: &Infos,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    let Some(rs) = cluster.try_get(&infos.rs, ns, name) else {
        return Ok(());
    };
    let uid = meta_str(&rs, "uid").unwrap_or("").to_string();
    let selector = LabelSelector::from_object(rs.pointer("/spec/selector").unwrap_or(&json!({})));
    let pods_all = cluster.store.list(&infos.pods.gr(), Some(ns)).items;
    let mut active: Vec<Arc<Value>> = owned_by(&pods_all, &uid)
        .into_iter()
        .filter(|p| !deleting(p) && selector.matches(p.pointer("/metadata/labels")))
        .filter(|p| {
            !matches!(
                p.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        })
        .cloned()
        .collect();
    let desired = if deleting(&rs) {
        i(rs.pointer("/status/replicas"))
    } else {
        i(rs.pointer("/spec/replicas"))
    };
    let diff = desired - active.len() as i64;
    // Why the last pod could not be created, for the ReplicaFailure condition.
    let mut failed_create: Option<String> = None;
    if !deleting(&rs) && diff > 0 {
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for _ in 0..diff {
            let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
            meta["name"] = json!(format!("{name}-{}", random_suffix(5)));
            meta["generateName"] = json!(format!("{name}-"));
            meta["namespace"] = json!(ns);
            meta["ownerReferences"] = json!([owner_ref(&rs, "ReplicaSet", "apps/v1")]);
            let pod = json!({"metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            let created = cluster.create(
                &infos.pods,
                ns,
                pod,
                &WriteOptions {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
            );
            // As the ReplicaSet controller does: `kubectl describe rs` says why there are no
            // pods (a refused pod-security level, a terminating namespace).
            let created = match created {
                Ok(created) => created,
                Err(e) => {
                    cluster.record_event(
                        &rs,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                        "replicaset-controller",
                    );
                    failed_create = Some(e.message);
                    break;
                }
            };
            cluster.record_event(
                &rs,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {}", meta_str(&created, "name").unwrap_or("")),
                "replicaset-controller",
            );
            active.push(Arc::new(created));
        }
    } else if !deleting(&rs) && diff < 0 {
        let mut ranked = active.clone();
        ranked.sort_by_key(|p| deletion_rank(p));
        for p in ranked.iter().take((-diff) as usize) {
            let pod = meta_str(p, "name").unwrap_or("");
            if cluster
                .delete(&infos.pods, ns, pod, &DeleteOptions::default())
                .is_ok()
            {
                cluster.record_event(
                    &rs,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod}"),
                    "replicaset-controller",
                );
            }
        }
        let gone: Vec<&str> = ranked
            .iter()
            .take((-diff) as usize)
            .filter_map(|p| meta_str(p, "name"))
            .collect();
        active.retain(|p| !gone.contains(&meta_str(p, "name").unwrap_or("")));
    }
    let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;
    let min_ready = i(rs.pointer("/spec/minReadySeconds"));
    let available = active
        .iter()
        .filter(|p| pod_ready(p) && ready_for(p) >= min_ready)
        .count() as i64;
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": i(rs.pointer("/metadata/generation")),
    });
    status
        .as_object_mut()
        .expect("object")
        .retain(|k, v| !(v == &json!(0) && k != "replicas" && k != "observedGeneration"));
    // ReplicaFailure while pods cannot be created, gone once they can; the first failure's
    // message stays until then, as with the real controller (each attempt's message names
    // another generated pod, and rewriting it would wake this controller again at once).
    // The Deployment controller copies it to the Deployment.
    if failed_create.is_some() {
        let kept = status_condition(&rs, "ReplicaFailure").cloned();
        let failure = kept.unwrap_or_else(|| {
            json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                   "message": failed_create.as_deref().unwrap_or(""), "lastTransitionTime": now()})
        });
        status["conditions"] = json!([failure]);
    }
    if rs.get("status") != Some(&status) {
        cluster.write_status(&infos.rs, ns, name, status, MANAGER)?;
    }
    match failed_create {
        Some(message) => anyhow::bail!("creating a pod of {ns}/{name}: {message}"),
        None => Ok(()),
    }
}

/// The condition of this type in an object's `status.conditions`.
fn status_condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// Seconds since the pod's Ready condition turned true.
fn ready_for(pod: &Value) -> i64 {
    status_condition(pod, "Ready")
        .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_deletion_cost_goes_first() {
        let mk = |name: &str, cost: Option<&str>| {
            let mut p = json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": "devcluster"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
            if let Some(c) = cost {
                p["metadata"]["annotations"] = json!({DELETION_COST: c});
            }
            p
        };
        let mut pods = [mk("a", Some("100")), mk("b", Some("-5")), mk("c", None)];
        pods.sort_by_key(deletion_rank);
        let names: Vec<&str> = pods.iter().filter_map(|p| meta_str(p, "name")).collect();
        assert_eq!(names, ["b", "c", "a"]);
    }

    #[test]
    fn unready_and_unassigned_pods_go_before_ready_ones() {
        let ready = json!({"metadata": {"name": "r"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let unready = json!({"metadata": {"name": "u"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let mut pods = [ready, unready, pending];
        pods.sort_by_key(deletion_rank);
        let names: Vec<&str> = pods.iter().filter_map(|p| meta_str(p, "name")).collect();
        assert_eq!(names, ["p", "u", "r"]);
    }
}

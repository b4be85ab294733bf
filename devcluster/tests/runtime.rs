//! kube-runtime against devcluster: the watcher survives reconnects, bookmarks and 410s without
//! missing a change, and a Controller reconciles every object.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use ferry_devcluster::DevCluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"suite": "rt"}}, "data": {"v": "0"}}),
    )
    .expect("cm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_reconnects_and_410_relists_without_missing_changes() {
    // One-second watches force constant reconnects. Bookmarks are rarer than that, so each
    // reconnect resumes from the last ConfigMap change; unrelated write noise and a tiny history
    // push that point out of the history, forcing 410 relists. (Resuming from bookmarks is
    // covered by controller_reconciles_every_object and the API suite.)
    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .history_limit(3)
        .bookmark_interval(Duration::from_secs(30))
        .start()
        .await
        .expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let (reader, writer) = reflector::store();
    let stream = watcher(
        cms.clone(),
        watcher::Config::default().labels("suite=rt").timeout(1),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    let handle = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    reader.wait_until_ready().await.expect("store ready");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(dc.client(), "default");
    let noise: Vec<_> = (0..3)
        .map(|k| {
            let secrets = secrets.clone();
            tokio::spawn(async move {
                let name = format!("noise-{k}");
                let s: k8s_openapi::api::core::v1::Secret =
                    serde_json::from_value(json!({"metadata": {"name": name}})).expect("secret");
                secrets
                    .create(&PostParams::default(), &s)
                    .await
                    .expect("noise");
                for n in 0u64.. {
                    let patch = Patch::Merge(json!({"stringData": {"n": n.to_string()}}));
                    let _ = secrets.patch(&name, &PatchParams::default(), &patch).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let mut expected = BTreeSet::new();
    for round in 0..6 {
        for i in 0..40 {
            let name = format!("o-{round}-{i}");
            cms.create(&PostParams::default(), &cm(&name))
                .await
                .expect("create");
            expected.insert(name);
        }
        for i in (0..40).step_by(4) {
            let name = format!("o-{round}-{i}");
            cms.delete(&name, &DeleteParams::default())
                .await
                .expect("delete");
            expected.remove(&name);
        }
        for i in (1..40).step_by(4) {
            cms.patch(
                &format!("o-{round}-{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "1"}})),
            )
            .await
            .expect("patch");
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Reconnects keep resuming from the last ConfigMap change while the noise continues, so a
    // 410 relist is bound to happen; wait for one before letting the noise stop.
    let state = dc.state().clone();
    eventually(20, "a 410 relist", || {
        let state = state.clone();
        async move {
            (state
                .stats
                .watches_expired
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0)
            .then_some(())
        }
    })
    .await;
    for n in &noise {
        n.abort();
    }
    // Converged means every name and every modification: a round's patches follow its deletes,
    // so a store that already has the right names may still be a few events short of them.
    let view = |reader: &reflector::Store<ConfigMap>| {
        let state = reader.state();
        let names: BTreeSet<String> = state
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        let modified = state
            .iter()
            .filter(|c| c.data.as_ref().and_then(|d| d.get("v")).map(String::as_str) == Some("1"))
            .count();
        (names, modified)
    };
    let reader2 = reader.clone();
    let expected2 = expected.clone();
    // The timeout below reports what is missing, before `eventually` would give up on its own.
    let converged = eventually(60, "reflector converges", move || {
        let reader = reader2.clone();
        let expected = expected2.clone();
        async move {
            let (names, modified) = view(&reader);
            (names == expected && modified == 60).then_some(())
        }
    });
    if tokio::time::timeout(Duration::from_secs(20), converged)
        .await
        .is_err()
    {
        let (names, modified) = view(&reader);
        panic!(
            "the store never converged: {modified} of 60 modifications, missing {:?}, extra {:?}",
            expected.difference(&names).collect::<Vec<_>>(),
            names.difference(&expected).collect::<Vec<_>>()
        );
    }
    let stats = &dc.state().stats;
    let expired = stats
        .watches_expired
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = stats
        .watches_started
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        expired > 0,
        "the watcher went through 410 relists ({expired} of {started} watches)"
    );
    assert!(started > 3, "the watcher reconnected ({started} watches)");
    handle.abort();
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_every_object() {
    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .bookmark_interval(Duration::from_millis(500))
        .start()
        .await
        .expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let ctx = Arc::new(cms.clone());
    async fn reconcile(
        obj: Arc<ConfigMap>,
        api: Arc<Api<ConfigMap>>,
    ) -> Result<Action, ReconcileError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "annotations": {"reconciled": "yes"}}});
        api.patch(
            &name,
            &PatchParams::apply("test-controller"),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Api<ConfigMap>>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let controller = Controller::new(
        cms.clone(),
        watcher::Config::default().labels("suite=rt").timeout(2),
    )
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    for i in 0..25 {
        cms.create(&PostParams::default(), &cm(&format!("c-{i}")))
            .await
            .expect("create");
    }
    eventually(20, "all reconciled", || {
        let cms = cms.clone();
        async move {
            let list = cms.list(&Default::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|c| {
                    c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("reconciled"))
                        .is_some()
                })
                .count();
            (done == 25).then_some(())
        }
    })
    .await;
    // Let the two-second watch expire: the controller resumes from its last bookmark (no relist,
    // no 410) and still sees a change made afterwards.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cms.create(&PostParams::default(), &cm("c-late"))
        .await
        .expect("create late");
    eventually(10, "late object reconciled", || {
        let cms = cms.clone();
        async move {
            let c = cms.get("c-late").await.ok()?;
            c.metadata
                .annotations
                .as_ref()?
                .get("reconciled")
                .map(|_| ())
        }
    })
    .await;
    let stats = &dc.state().stats;
    assert!(
        stats
            .watches_started
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the watch was resumed"
    );
    assert_eq!(
        stats
            .watches_expired
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "resumed without a relist"
    );
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_sees_initial_state_and_changes() {
    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .start()
        .await
        .expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("s-{i}")))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store();
    let stream = watcher(
        cms.clone(),
        watcher::Config::default()
            .labels("suite=rt")
            .streaming_lists(),
    )
    .reflect(writer)
    .applied_objects();
    let handle = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    reader
        .wait_until_ready()
        .await
        .expect("ready after the initial-events-end bookmark");
    assert_eq!(reader.state().len(), 5);
    cms.create(&PostParams::default(), &cm("s-late"))
        .await
        .expect("create");
    let r2 = reader.clone();
    eventually(10, "late object seen", move || {
        let r = r2.clone();
        async move { (r.state().len() == 6).then_some(()) }
    })
    .await;
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_event_recorder_publishes_and_updates_series() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .start()
        .await
        .expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let target = cms
        .create(&PostParams::default(), &cm("evented"))
        .await
        .expect("create");
    let recorder = Recorder::new(
        dc.client(),
        Reporter {
            controller: "ferry-operator".into(),
            instance: None,
        },
    );
    let reference = kube::Resource::object_ref(&target, &());
    let ev = Event {
        type_: EventType::Normal,
        reason: "Provisioned".into(),
        note: Some("queue created".into()),
        action: "Provision".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.expect("publish");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("publish again (series)");
    let events: Api<K8sEvent> = Api::namespaced(dc.client(), "default");
    let list = events.list(&Default::default()).await.expect("list");
    assert_eq!(
        list.items.len(),
        1,
        "the repeat became a series on the same event"
    );
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Provisioned"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("evented")
    );
    assert!(e.series.as_ref().is_some_and(|s| s.count >= 2));
    // Upstream stores both Event APIs together: the core/v1 view shows the same event.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(dc.client(), "default");
    let listed = core.list(&Default::default()).await.expect("core list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].involved_object.name.as_deref(),
        Some("evented")
    );
    assert_eq!(listed.items[0].message.as_deref(), Some("queue created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_with_finalizer_and_status_apply_on_a_custom_resource() {
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    use std::sync::Mutex;

    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .bookmark_interval(Duration::from_millis(500))
        .start()
        .await
        .expect("start");
    common::install_widgets(&dc).await;
    let widgets = common::widget_api(&dc.client(), "default");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let cleaned = Arc::new(Mutex::new(Vec::<String>::new()));

    struct Ctx {
        api: Api<DynamicObject>,
        cleaned: Arc<Mutex<Vec<String>>>,
    }
    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Err(#[from] kube::runtime::finalizer::Error<kube::Error>);

    async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Err> {
        let api = ctx.api.clone();
        let cleaned = ctx.cleaned.clone();
        finalizer(&ctx.api, "ferry.dev/cleanup", obj, |ev| async move {
            match ev {
                Fin::Apply(o) => {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
                                        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
                    api.patch_status(&name, &PatchParams::apply("ferry-operator").force(), &Patch::Apply(&status)).await?;
                    Ok(Action::await_change())
                }
                Fin::Cleanup(o) => {
                    cleaned.lock().expect("lock").push(o.metadata.name.clone().unwrap_or_default());
                    Ok::<_, kube::Error>(Action::await_change())
                }
            }
        })
        .await
        .map_err(Err::from)
    }
    fn error_policy(_: Arc<DynamicObject>, _: &Err, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let ctx = Arc::new(Ctx {
        api: widgets.clone(),
        cleaned: cleaned.clone(),
    });
    let controller = Controller::new_with(widgets.clone(), watcher::Config::default(), ar)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "fin"}, "spec": {"replicas": 1}})).expect("w");
    widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create");
    let ready = eventually(10, "finalizer added and status applied", || {
        let widgets = widgets.clone();
        async move {
            widgets.get("fin").await.ok().filter(|o| {
                o.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| f.contains(&"ferry.dev/cleanup".to_string()))
                    && o.data["status"]["conditions"][0]["status"] == "True"
            })
        }
    })
    .await;
    assert_eq!(ready.metadata.generation, Some(1));
    widgets
        .delete("fin", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(10, "cleanup ran and the object is gone", || {
        let widgets = widgets.clone();
        async move {
            widgets
                .get_opt("fin")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert_eq!(*cleaned.lock().expect("lock"), ["fin"]);
    handle.abort();
}

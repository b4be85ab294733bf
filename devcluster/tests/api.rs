//! API semantics through `kube::Client`: the behaviours Ferry's operator relies on.

mod common;

use std::time::Duration;

use common::{eventually, install_widgets, widget_api};
use ferry_devcluster::DevCluster;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::DynamicObject;
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("configmap")
}

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": "unmapped/image:1", "env": [{"name": "A", "value": "1"}]}]}}}
    }))
    .expect("deployment")
}

async fn quiet() -> DevCluster {
    DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .start()
        .await
        .expect("devcluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_serves_builtin_and_crd_resources() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let discovery = kube::discovery::Discovery::new(dc.client())
        .run()
        .await
        .expect("discovery");
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push((
                ar.group.clone(),
                ar.plural.clone(),
                caps.subresources
                    .iter()
                    .map(|(s, _)| s.plural.clone())
                    .collect::<Vec<_>>(),
            ));
        }
    }
    for (g, p) in [
        ("", "pods"),
        ("", "namespaces"),
        ("apps", "deployments"),
        ("coordination.k8s.io", "leases"),
        ("events.k8s.io", "events"),
        ("policy", "poddisruptionbudgets"),
        ("rbac.authorization.k8s.io", "roles"),
        ("example.com", "widgets"),
    ] {
        assert!(
            found.iter().any(|(fg, fp, _)| fg == g && fp == p),
            "{g}/{p} missing from discovery"
        );
    }
    let (_, _, subs) = found
        .iter()
        .find(|(g, p, _)| g == "apps" && p == "deployments")
        .expect("deployments");
    assert!(subs.contains(&"scale".to_string()) && subs.contains(&"status".to_string()));
    let v = dc.client().apiserver_version().await.expect("version");
    assert_eq!(v.major, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_generate_name_and_list_with_selectors() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let mut generated = cm("", json!({"app": "a", "tier": "x"}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = cms
        .create(&PostParams::default(), &generated)
        .await
        .expect("create");
    let name = made.metadata.name.clone().expect("generated name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(made.metadata.uid.is_some() && made.metadata.creation_timestamp.is_some());
    cms.create(
        &PostParams::default(),
        &cm("b", json!({"app": "b", "tier": "x"})),
    )
    .await
    .expect("create b");
    cms.create(&PostParams::default(), &cm("c", json!({"app": "c"})))
        .await
        .expect("create c");
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("tier=x,app!=a"))
                .await
                .expect("list")
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app in (b,c)"))
                .await
                .expect("list")
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("!tier"))
                .await
                .expect("list")
        ),
        ["c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .expect("list")
        ),
        ["c"]
    );
    // Pagination: limit + continue walks everything exactly once.
    let page = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none_or(|c| c.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects_with_codes_and_reasons() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    assert_eq!(
        api_status(cms.get("missing").await.expect_err("404")),
        (404, "NotFound".into())
    );
    cms.create(&PostParams::default(), &cm("dup", json!({})))
        .await
        .expect("create");
    assert_eq!(
        api_status(
            cms.create(&PostParams::default(), &cm("dup", json!({})))
                .await
                .expect_err("409")
        ),
        (409, "AlreadyExists".into())
    );
    let bad: Api<ConfigMap> = Api::namespaced(dc.client(), "no-such-namespace");
    assert_eq!(
        api_status(
            bad.create(&PostParams::default(), &cm("x", json!({})))
                .await
                .expect_err("ns")
        )
        .0,
        404
    );
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    let mut d = deployment("bad", 1);
    d.spec.selector.match_labels = Some([("app".to_string(), "other".to_string())].into());
    assert_eq!(
        api_status(
            deps.create(&PostParams::default(), &d)
                .await
                .expect_err("422")
        ),
        (422, "Invalid".into())
    );
    let mut bad_name = cm("Not_Valid", json!({}));
    bad_name.metadata.name = Some("Not_Valid".into());
    assert_eq!(
        api_status(
            cms.create(&PostParams::default(), &bad_name)
                .await
                .expect_err("422")
        )
        .0,
        422
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_stale_resource_version_conflicts() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("occ", json!({})))
        .await
        .expect("create");
    let mut a = first.clone();
    a.data = Some([("k".to_string(), "a".to_string())].into());
    let updated = cms
        .replace("occ", &PostParams::default(), &a)
        .await
        .expect("first update wins");
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );
    let mut b = first.clone();
    b.data = Some([("k".to_string(), "b".to_string())].into());
    assert_eq!(
        api_status(
            cms.replace("occ", &PostParams::default(), &b)
                .await
                .expect_err("stale")
        ),
        (409, "Conflict".into())
    );
    // A no-op update does not bump the resourceVersion.
    let again = cms
        .replace("occ", &PostParams::default(), &updated)
        .await
        .expect("noop");
    assert_eq!(
        again.metadata.resource_version,
        updated.metadata.resource_version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_changes_bookmarks_timeouts_and_gone() {
    let dc = DevCluster::builder()
        .controllers(false)
        .kubelet(false)
        .history_limit(20)
        .bookmark_interval(Duration::from_millis(300))
        .start()
        .await
        .expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().labels("w=1").timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &cm("w", json!({"w": "1"})))
        .await
        .expect("create");
    cms.create(&PostParams::default(), &cm("other", json!({})))
        .await
        .expect("create unselected");
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .expect("patch");
    cms.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream
            .try_next()
            .await
            .expect("event")
            .expect("open stream")
        {
            WatchEvent::Added(c) => seen.push(("ADDED", c.metadata.name.expect("name"))),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.metadata.name.expect("name"))),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.metadata.name.expect("name"))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "w".to_string()),
            ("MODIFIED", "w".to_string()),
            ("DELETED", "w".to_string())
        ]
    );

    // Bookmarks carry a resourceVersion; timeoutSeconds ends the stream.
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let started = std::time::Instant::now();
    let events: Vec<_> = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default().timeout(1)
            },
            &rv,
        )
        .await
        .expect("watch")
        .collect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "timeoutSeconds is honoured"
    );
    assert!(events.iter().any(
        |e| matches!(e, Ok(WatchEvent::Bookmark(b)) if !b.metadata.resource_version.is_empty())
    ));

    // A version older than the retained history is 410 Gone.
    for i in 0..30 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("churn-{i}"), json!({})),
        )
        .await
        .expect("churn");
    }
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match old.try_next().await.expect("event").expect("an event") {
        WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_merge_json_and_strategic() {
    let dc = quiet().await;
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    deps.create(&PostParams::default(), &deployment("p", 1))
        .await
        .expect("create");
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 8080}]},
                                                                     {"name": "side", "image": "unmapped/side:1"}]}}}});
    let d = deps
        .patch("p", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .expect("strategic");
    let pod = d.spec.template.spec.expect("pod spec");
    assert_eq!(pod.containers.len(), 2);
    let env: Vec<String> = pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(env, ["A", "B"], "env merged by name");
    assert_eq!(pod.containers[0].image.as_deref(), Some("unmapped/image:1"));
    assert_eq!(
        pod.containers[0].ports.as_ref().expect("ports")[0]
            .protocol
            .as_deref(),
        Some("TCP"),
        "defaulted"
    );
    let del = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
    let d = deps
        .patch("p", &PatchParams::default(), &Patch::Strategic(del))
        .await
        .expect("delete item");
    assert_eq!(d.spec.template.spec.expect("pod").containers.len(), 1);
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 3}
    ]))
    .expect("json patch");
    let d = deps
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(d.spec.replicas, Some(3));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 99}]))
            .expect("patch");
    assert_eq!(
        api_status(
            deps.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
                .await
                .expect_err("test op fails")
        )
        .0,
        422
    );
    let d = deps
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .expect("merge");
    assert_eq!(
        d.metadata
            .labels
            .expect("labels")
            .get("x")
            .map(String::as_str),
        Some("1")
    );
    let d = deps
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
        )
        .await
        .expect("merge null");
    assert!(d.metadata.labels.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_ownership_removes_dropped_fields_and_conflicts() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let ssa = PatchParams::apply("ferry");
    let full = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
    cms.patch("ssa", &ssa, &Patch::Apply(&full))
        .await
        .expect("apply creates");
    let other = cms
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"z": "3"}})),
        )
        .await
        .expect("another manager");
    let managers: Vec<String> = other
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"ferry".to_string()) && managers.len() == 2,
        "{managers:?}"
    );
    let less = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}}, "data": {"x": "1"}});
    let c = cms
        .patch("ssa", &ssa, &Patch::Apply(&less))
        .await
        .expect("apply again");
    let data = c.data.expect("data");
    assert_eq!(
        data.keys().cloned().collect::<Vec<_>>(),
        ["x", "z"],
        "y removed, z kept (owned by someone else)"
    );
    assert_eq!(c.metadata.labels.expect("labels").len(), 1);
    // Another manager takes x; re-applying x with a different value conflicts unless forced.
    cms.patch(
        "ssa",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "theirs"}})),
    )
    .await
    .expect("take x");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": "mine"}});
    assert_eq!(
        api_status(
            cms.patch("ssa", &ssa, &Patch::Apply(&mine))
                .await
                .expect_err("conflict")
        ),
        (409, "Conflict".into())
    );
    let forced = cms
        .patch("ssa", &ssa.clone().force(), &Patch::Apply(&mine))
        .await
        .expect("force");
    assert_eq!(
        forced.data.expect("data").get("x").map(String::as_str),
        Some("mine")
    );
    // Apply without a field manager is rejected.
    let anon = PatchParams {
        field_manager: None,
        ..Default::default()
    };
    assert!(cms.patch("ssa", &anon, &Patch::Apply(&mine)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merges_keyed_lists() {
    let dc = quiet().await;
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    let ssa = PatchParams::apply("ferry");
    let mut d = serde_json::to_value(deployment("ssa-d", 1)).expect("json");
    d["apiVersion"] = json!("apps/v1");
    d["kind"] = json!("Deployment");
    deps.patch("ssa-d", &ssa, &Patch::Apply(&d))
        .await
        .expect("apply");
    // Someone else adds an env var to the same container; our next apply keeps it and drops ours.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "env": [{"name": "THEIRS", "value": "x"}]}]}}}});
    deps.patch("ssa-d", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .expect("strategic");
    d["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "B", "value": "2"}]);
    let out = deps
        .patch("ssa-d", &ssa, &Patch::Apply(&d))
        .await
        .expect("apply 2");
    let env: Vec<String> = out.spec.template.spec.expect("pod").containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        env.contains(&"THEIRS".to_string())
            && env.contains(&"B".to_string())
            && !env.contains(&"A".to_string()),
        "{env:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_cleared() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    cms.create(&PostParams::default(), &cm("fin", json!({})))
        .await
        .expect("create");
    // The exact patch kube::runtime::finalizer sends to add the first finalizer.
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["ferry.dev/cleanup"]}
    ]))
    .expect("patch");
    cms.patch("fin", &PatchParams::default(), &Patch::<()>::Json(add))
        .await
        .expect("add finalizer");
    cms.delete("fin", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let held = cms.get("fin").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    // New finalizers cannot resurrect it, but the object may still be updated.
    cms.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .expect("update while terminating");
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["ferry.dev/cleanup"]},
        {"op": "remove", "path": "/metadata/finalizers"}
    ]))
    .expect("patch");
    cms.patch("fin", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("clear finalizers");
    assert!(cms.get_opt("fin").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_references_are_garbage_collected() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let owner_for = |o: &ConfigMap| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid, "blockOwnerDeletion": true}]);
    // Background: the owner goes at once, dependents follow.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .expect("owner");
    let mut dep = cm("dep", json!({}));
    dep.metadata.owner_references = Some(serde_json::from_value(owner_for(&owner)).expect("refs"));
    cms.create(&PostParams::default(), &dep).await.expect("dep");
    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete");
    eventually(5, "dependent collected", || async {
        cms.get_opt("dep")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    // Foreground: the owner waits (with a finalizer) until its dependents are gone.
    let owner = cms
        .create(&PostParams::default(), &cm("fg", json!({})))
        .await
        .expect("owner");
    let mut dep = cm("fg-dep", json!({}));
    dep.metadata.owner_references = Some(serde_json::from_value(owner_for(&owner)).expect("refs"));
    dep.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &dep).await.expect("dep");
    cms.delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete");
    let waiting = eventually(5, "dependent marked", || async {
        cms.get("fg-dep")
            .await
            .ok()
            .filter(|d| d.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    let o = cms.get("fg").await.expect("owner still present");
    assert!(
        o.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    cms.patch(
        "fg-dep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release");
    eventually(5, "owner gone", || async {
        cms.get_opt("fg")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    // Orphan: dependents stay, without the reference.
    let owner = cms
        .create(&PostParams::default(), &cm("orph", json!({})))
        .await
        .expect("owner");
    let mut dep = cm("orph-dep", json!({}));
    dep.metadata.owner_references = Some(serde_json::from_value(owner_for(&owner)).expect("refs"));
    cms.create(&PostParams::default(), &dep).await.expect("dep");
    cms.delete("orph", &DeleteParams::orphan())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = cms.get("orph-dep").await.expect("orphan kept");
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_scale_subresources_and_generation() {
    let dc = quiet().await;
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    let d = deps
        .create(&PostParams::default(), &deployment("s", 2))
        .await
        .expect("create");
    assert_eq!(d.metadata.generation, Some(1));
    assert!(d.status.is_none(), "create ignores status");
    // Status writes do not touch spec or generation.
    let st = deps.patch_status("s", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 9}, "status": {"replicas": 2, "observedGeneration": 1}}))).await.expect("status");
    assert_eq!(st.metadata.generation, Some(1));
    assert_eq!(st.spec.replicas, Some(2));
    assert_eq!(st.status.as_ref().expect("status").replicas, Some(2));
    // Main-resource writes ignore status; metadata-only changes keep generation.
    let m = deps
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}, "status": {"replicas": 7}})),
        )
        .await
        .expect("labels");
    assert_eq!(m.metadata.generation, Some(1));
    assert_eq!(m.status.expect("status").replicas, Some(2));
    // Scale subresource.
    let scale = deps.get_scale("s").await.expect("scale");
    assert_eq!(scale.spec.expect("spec").replicas, Some(2));
    assert_eq!(
        scale.status.expect("status").selector.as_deref(),
        Some("app=s")
    );
    deps.patch_scale(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("patch scale");
    let after = deps.get("s").await.expect("get");
    assert_eq!(after.spec.replicas, Some(5));
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    let scale_entry = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.subresource.as_deref() == Some("scale"));
    assert!(
        scale_entry.is_some(),
        "the /scale write is recorded against the scale subresource"
    );
    // A patch is unconditional unless it names a resourceVersion, so other writers racing
    // with it (a controller applying the spec) never make it fail with a conflict.
    let labels = {
        let deps = deps.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                let labels = Patch::Merge(json!({"metadata": {"labels": {"l": i.to_string()}}}));
                deps.patch("s", &PatchParams::default(), &labels)
                    .await
                    .expect("label patch");
            }
        })
    };
    for i in 0..500 {
        let scale = Patch::Merge(json!({"spec": {"replicas": i % 7}}));
        deps.patch_scale("s", &PatchParams::default(), &scale)
            .await
            .expect("a scale patch without resourceVersion is never a conflict");
    }
    labels.await.expect("label writer");
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}));
    let conflict = deps
        .patch_scale("s", &PatchParams::default(), &stale)
        .await
        .expect_err("a stale resourceVersion in the patch is checked");
    assert!(
        matches!(&conflict, kube::Error::Api(e) if e.code == 409),
        "{conflict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_validate_default_prune_and_run_cel() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let w = widget_api(&dc.client(), "default");
    let obj = |spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})).expect("widget")
    };
    let made = w
        .create(
            &PostParams::default(),
            &obj(json!({"replicas": 2, "unknown": true})),
        )
        .await
        .expect("create");
    assert_eq!(
        made.data["spec"],
        json!({"replicas": 2, "minReplicas": 0, "mode": "fast"}),
        "defaulted and pruned"
    );
    assert_eq!(made.metadata.generation, Some(1));
    let mut bad = obj(json!({"replicas": -1}));
    bad.metadata.name = Some("neg".into());
    let (code, reason) = api_status(
        w.create(&PostParams::default(), &bad)
            .await
            .expect_err("minimum"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let mut cel = obj(json!({"replicas": 1, "minReplicas": 3}));
    cel.metadata.name = Some("cel".into());
    match w
        .create(&PostParams::default(), &cel)
        .await
        .expect_err("CEL rule")
    {
        kube::Error::Api(s) => assert!(
            s.message.contains("replicas must be >= minReplicas"),
            "{}",
            s.message
        ),
        e => panic!("{e:?}"),
    }
    match w
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": "slow"}})),
        )
        .await
        .expect_err("transition rule")
    {
        kube::Error::Api(s) => assert!(s.message.contains("mode is immutable"), "{}", s.message),
        e => panic!("{e:?}"),
    }
    let mut wrong_type = obj(json!({"replicas": "three"}));
    wrong_type.metadata.name = Some("typed".into());
    assert_eq!(
        api_status(
            w.create(&PostParams::default(), &wrong_type)
                .await
                .expect_err("type")
        )
        .0,
        422
    );
    // Status and scale subresources on the custom resource.
    let st = w
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "selector": "app=w"}})),
        )
        .await
        .expect("status");
    assert_eq!(st.metadata.generation, Some(1));
    w.patch_scale(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("scale");
    let scale = w.get_scale("w").await.expect("get scale");
    assert_eq!(scale.spec.expect("spec").replicas, Some(4));
    assert_eq!(scale.status.as_ref().expect("status").replicas, 2);
    assert_eq!(
        scale.status.expect("status").selector.as_deref(),
        Some("app=w")
    );
    assert_eq!(w.get("w").await.expect("get").metadata.generation, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_responses_use_printer_columns() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let w = widget_api(&dc.client(), "default");
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "t"}, "spec": {"replicas": 3}})).expect("w");
    w.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    w.patch_status(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .expect("status");
    let req = http::Request::get("/apis/example.com/v1/namespaces/default/widgets")
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let table: serde_json::Value = dc.client().request(req).await.expect("table");
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Name", "Replicas", "Ready", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], "t");
    assert_eq!(table["rows"][0]["cells"][1], 3);
    assert_eq!(table["rows"][0]["cells"][2], "True");
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_contents() {
    let dc = quiet().await;
    let nss: Api<Namespace> = Api::all(dc.client());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).expect("ns"),
    )
    .await
    .expect("ns");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(dc.client(), "tmp");
    assert!(
        sas.get_opt("default").await.expect("get").is_some(),
        "every namespace gets a default service account"
    );
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "tmp");
    cms.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .expect("cm");
    nss.delete("tmp", &DeleteParams::default())
        .await
        .expect("delete ns");
    eventually(5, "namespace gone", || async {
        nss.get_opt("tmp")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(cms.get_opt("a").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_to_the_status_subresource() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let w = widget_api(&dc.client(), "default");
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "st"}, "spec": {"replicas": 1}})).expect("w");
    w.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let status = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "st"},
                        "status": {"replicas": 1, "conditions": [{"type": "Ready", "status": "False"}, {"type": "Synced", "status": "True"}]}});
    let pp = PatchParams::apply("ferry-operator").force();
    let out = w
        .patch_status("st", &pp, &Patch::Apply(&status))
        .await
        .expect("apply status");
    assert_eq!(
        out.data["status"]["conditions"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(out.metadata.generation, Some(1));
    let entry = out
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("ferry-operator"))
        .expect("entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    // Dropping a condition from the applied status removes it.
    let less = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "st"},
                      "status": {"replicas": 1, "conditions": [{"type": "Ready", "status": "True"}]}});
    let out = w
        .patch_status("st", &pp, &Patch::Apply(&less))
        .await
        .expect("apply status again");
    assert_eq!(
        out.data["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}])
    );
    assert_eq!(out.data["spec"]["replicas"], 1, "spec untouched");
}

/// Two managers apply their own parts of a status, as Ferry's reconciler and autoscaler do.
/// When one stops setting a field that holds others, the whole field goes, as with
/// structured-merge-diff: removing only its leaves left `lastChange: {}` behind, which the
/// schema's required fields then refused (the scale benchmark's 422s on `lastScaling`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_removes_a_dropped_object_field_whole() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let w = widget_api(&dc.client(), "default");
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "two"}, "spec": {"replicas": 1}})).expect("w");
    w.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let status = |fields: serde_json::Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "two"}, "status": fields});
    let scaler = PatchParams::apply("scaler").force();
    let operator = PatchParams::apply("operator").force();
    w.patch_status(
        "two",
        &scaler,
        &Patch::Apply(&status(
            json!({"lastChange": {"from": 1, "to": 0, "detail": {"why": "idle"}}}),
        )),
    )
    .await
    .expect("the scaler's part");
    w.patch_status(
        "two",
        &operator,
        &Patch::Apply(&status(json!({"replicas": 0}))),
    )
    .await
    .expect("the operator's part");
    let out = w
        .patch_status(
            "two",
            &scaler,
            &Patch::Apply(&status(json!({"selector": "app=two"}))),
        )
        .await
        .expect("an apply without lastChange is valid");
    assert_eq!(
        out.data["status"],
        json!({"replicas": 0, "selector": "app=two"}),
        "lastChange removed whole, the operator's field kept"
    );
    // A field another manager still owns part of stays, with that part.
    w.patch_status(
        "two",
        &scaler,
        &Patch::Apply(&status(
            json!({"lastChange": {"from": 0, "to": 2, "detail": {"why": "busy"}}}),
        )),
    )
    .await
    .expect("set again");
    w.patch_status(
        "two",
        &operator,
        &Patch::Apply(&status(
            json!({"replicas": 0, "lastChange": {"from": 0, "to": 2}}),
        )),
    )
    .await
    .expect("the operator co-owns from and to");
    let out = w
        .patch_status("two", &scaler, &Patch::Apply(&status(json!({}))))
        .await
        .expect("drop again");
    assert_eq!(
        out.data["status"]["lastChange"],
        json!({"from": 0, "to": 2}),
        "only the scaler's own detail goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_list_version_lets_a_watch_catch_up_with_changes_between_pages() {
    let dc = quiet().await;
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    for n in ["a", "b", "c", "d"] {
        cms.create(&PostParams::default(), &cm(n, json!({})))
            .await
            .expect("create");
    }
    let first = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    // A change to an object already listed, made while paging.
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .expect("patch");
    let token = first.metadata.continue_.clone().expect("token");
    let last = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(
        last.metadata.resource_version, first.metadata.resource_version,
        "pages report the first page's version"
    );
    let rv = last.metadata.resource_version.expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.try_next().await.expect("event").expect("an event") {
        WatchEvent::Modified(c) => assert_eq!(c.metadata.name.as_deref(), Some("a")),
        other => panic!("expected the change made between pages, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_kubeconfig_works_for_kube_rs() {
    let dc = quiet().await;
    let kubeconfig =
        kube::config::Kubeconfig::read_from(dc.kubeconfig()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).expect("client");
    let nss: Api<Namespace> = Api::all(client);
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");
    // And the server answers /readyz once it serves.
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("request");
    let body = dc.client().request_text(req).await.expect("readyz");
    assert_eq!(body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_string_data_is_folded_into_data() {
    let dc = quiet().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(dc.client(), "default");
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}, "data": {"other": "eA=="}
    }))
    .expect("secret");
    let made = secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("create");
    assert!(made.string_data.is_none());
    let data = made.data.expect("data");
    assert_eq!(
        data.get("token").map(|b| b.0.as_slice()),
        Some(b"s3cret".as_slice())
    );
    assert_eq!(
        data.get("other").map(|b| b.0.as_slice()),
        Some(b"x".as_slice())
    );
    assert_eq!(made.type_.as_deref(), Some("Opaque"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_updates_take_effect_only_when_admitted() {
    let dc = quiet().await;
    install_widgets(&dc).await;
    let crds: Api<DynamicObject> = Api::all_with(
        dc.client(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let ptr = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
    // A broken CEL rule is rejected and the served schema stays as it was.
    let mut broken = common::widget_crd();
    broken.pointer_mut(ptr).expect("props")["color"] =
        json!({"type": "string", "x-kubernetes-validations": [{"rule": "self.size( >"}]});
    let pp = PatchParams::apply("test").force();
    let err = crds
        .patch("widgets.example.com", &pp, &Patch::Apply(&broken))
        .await
        .expect_err("invalid CEL");
    assert_eq!(api_status(err).0, 422);
    let w = widget_api(&dc.client(), "default");
    let obj = |name: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"replicas": 1, "color": "red"}})).expect("w")
    };
    let pruned = w
        .create(&PostParams::default(), &obj("before"))
        .await
        .expect("create");
    assert!(
        pruned.data["spec"].get("color").is_none(),
        "old schema still served"
    );
    // A valid change is served at once.
    let mut fixed = common::widget_crd();
    fixed.pointer_mut(ptr).expect("props")["color"] = json!({"type": "string"});
    crds.patch("widgets.example.com", &pp, &Patch::Apply(&fixed))
        .await
        .expect("valid update");
    let kept = w
        .create(&PostParams::default(), &obj("after"))
        .await
        .expect("create");
    assert_eq!(kept.data["spec"]["color"], "red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_are_refused() {
    let dc = quiet().await;
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    deps.create(&PostParams::default(), &deployment("imm", 1))
        .await
        .expect("create");
    let change = json!({"spec": {"selector": {"matchLabels": {"app": "imm", "x": "y"}},
                                 "template": {"metadata": {"labels": {"app": "imm", "x": "y"}}}}});
    let err = deps
        .patch("imm", &PatchParams::default(), &Patch::Strategic(change))
        .await
        .expect_err("selector is immutable");
    assert_eq!(api_status(err), (422, "Invalid".into()));
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let mut c = cm("frozen", json!({}));
    c.immutable = Some(true);
    cms.create(&PostParams::default(), &c)
        .await
        .expect("create");
    let err = cms
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "other"}})),
        )
        .await
        .expect_err("immutable data");
    assert_eq!(api_status(err).0, 422);
    cms.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"ok": "yes"}}})),
    )
    .await
    .expect("metadata still changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_matches_ports_without_protocol_to_their_defaulted_twin() {
    let dc = quiet().await;
    let deps: Api<Deployment> = Api::namespaced(dc.client(), "default");
    let mut d = serde_json::to_value(deployment("ports", 1)).expect("json");
    d["apiVersion"] = json!("apps/v1");
    d["kind"] = json!("Deployment");
    d["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": 8080}]);
    let ssa = PatchParams::apply("ferry").force();
    for _ in 0..3 {
        deps.patch("ports", &ssa, &Patch::Apply(&d))
            .await
            .expect("apply");
    }
    let got = deps.get("ports").await.expect("get");
    let ports = got.spec.template.spec.expect("pod").containers[0]
        .ports
        .clone()
        .unwrap_or_default();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    // No self-conflict and no spurious change: a fourth identical apply keeps the resourceVersion.
    let rv = got.metadata.resource_version.clone();
    let again = deps
        .patch("ports", &PatchParams::apply("ferry"), &Patch::Apply(&d))
        .await
        .expect("apply again");
    assert_eq!(again.metadata.resource_version, rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_client_verb_and_resource() {
    let dc = quiet().await;
    let mut config = kube::Config::new(dc.url().parse().expect("url"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("counted-client/1.0"),
    ));
    let counted: Api<ConfigMap> =
        Api::namespaced(kube::Client::try_from(config).expect("client"), "default");
    let before = dc.requests();
    counted
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .expect("create");
    counted.get("a").await.expect("get");
    counted.list(&ListParams::default()).await.expect("list");
    let mut watch = counted
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("watch")
        .boxed();
    while watch.try_next().await.expect("watch event").is_some() {}
    // Another client's requests are counted under its own (empty) User-Agent.
    let other: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    other.get("a").await.expect("get");

    let window = dc.requests().since(&before);
    let mine = window.from_agent("counted-client/");
    assert_eq!(
        mine.by_verb_and_resource().into_iter().collect::<Vec<_>>(),
        vec![
            ("create configmaps".to_string(), 1),
            ("get configmaps".to_string(), 1),
            ("list configmaps".to_string(), 1),
            ("watch configmaps".to_string(), 1),
        ]
    );
    assert_eq!(window.total(), 5);
}

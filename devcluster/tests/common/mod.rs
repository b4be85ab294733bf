//! Shared helpers for the devcluster suites.
#![allow(dead_code)]

use std::time::Duration;

use ferry_devcluster::DevCluster;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run kubectl against the cluster without blocking the runtime the server lives on.
pub async fn kubectl(dc: &DevCluster, args: &[&str]) -> Kubectl {
    kubectl_stdin(dc, args, None).await
}

pub async fn kubectl_stdin(dc: &DevCluster, args: &[&str], stdin: Option<&str>) -> Kubectl {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.env("KUBECONFIG", dc.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl must be on the PATH");
    let mut sin = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        sin.write_all(s.as_bytes()).await.expect("write stdin");
    }
    drop(sin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finished in time")
        .expect("kubectl ran");
    Kubectl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Poll until `f` returns Some, or panic with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": [
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "x-kubernetes-validations": [
                                {"rule": "self.minReplicas <= self.replicas", "message": "replicas must be >= minReplicas"},
                                {"rule": "!has(oldSelf.mode) || self.mode == oldSelf.mode", "message": "mode is immutable"}
                            ],
                            "properties": {
                                "replicas": {"type": "integer", "minimum": 0, "default": 1},
                                "minReplicas": {"type": "integer", "default": 0},
                                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                                          "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}
                            }
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "replicas": {"type": "integer"},
                                "selector": {"type": "string"},
                                "lastChange": {"type": "object", "required": ["from", "to"],
                                               "properties": {"from": {"type": "integer"}, "to": {"type": "integer"},
                                                              "detail": {"type": "object", "properties": {"why": {"type": "string"}}}}},
                                "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                                               "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}}
                            }
                        }
                    }
                }}
            }]
        }
    })
}

pub fn widget_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Create the Widget CRD and wait until its resource is served.
pub async fn install_widgets(dc: &DevCluster) {
    let crds: Api<DynamicObject> = Api::all_with(
        dc.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(widget_crd()).expect("crd");
    crds.create(&Default::default(), &crd)
        .await
        .expect("create CRD");
    let w = widget_api(&dc.client(), "default");
    eventually(10, "widgets served", || {
        let w = w.clone();
        async move { w.list(&Default::default()).await.ok() }
    })
    .await;
}

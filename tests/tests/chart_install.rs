//! `helm install` of the chart, with Helm's own client, into devcluster: the operator's
//! Deployment becomes available from the chart alone, one replica leads, and the operator it
//! runs reconciles QueueConsumers in the namespaces it was given (and no others) against
//! moto's SQS server.
//!
//! devcluster-only values: pods there have no service-account token, so the operator finds
//! the API server through `KUBECONFIG` (`operator.extraEnv`); and pods share the host's
//! network, so each operator binds its own pod IP (`operator.bindAddress: "$(POD_IP)"`) and
//! tells the sidecars to do the same (`FERRY_PODS_SHARE_NETWORK`).

use std::time::Duration;

use ferry_devcluster::DevCluster;
use ferry_tests::{emulators, helm};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

const RELEASE_NAMESPACE: &str = "ferry-system";

fn queue_consumers(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let kind = GroupVersionKind::gvk("ferry.dev", "v1alpha1", "QueueConsumer");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&kind))
}

fn consumer(name: &str, queue: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": { "name": name },
        "spec": {
            "queue": { "provider": "sqs", "name": queue },
            "worker": { "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] } },
        }
    }))
    .expect("a QueueConsumer")
}

fn condition_status(qc: &DynamicObject, type_: &str) -> Option<String> {
    qc.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_brings_up_a_leader_elected_operator_that_reconciles_its_namespaces() {
    let operator = ferry_tests::workspace_binary("ferry-operator");
    let cluster = DevCluster::builder()
        .image(
            "ghcr.io/ferry-dev/operator:*",
            [operator.to_string_lossy().to_string()],
        )
        .start()
        .await
        .expect("devcluster");
    let client = cluster.client();
    for namespace in [RELEASE_NAMESPACE, "shop", "billing", "elsewhere"] {
        let out = cluster
            .kubectl_output(&["create", "namespace", namespace])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // The operator's pods (and the workers it makes in shop) must pass devcluster's
    // PodSecurity admission at the strictest level.
    for namespace in [RELEASE_NAMESPACE, "shop"] {
        ferry_tests::cluster::enforce_restricted_pods(&client, namespace)
            .await
            .unwrap();
    }

    let values = json!({
        "operator": {
            "bindAddress": "$(POD_IP)",
            "port": ferry_tests::free_port(),
            "clusterName": "chart-test",
            "extraEnv": [
                {"name": "KUBECONFIG", "value": cluster.kubeconfig().to_string_lossy()},
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
                {"name": "FERRY_PODS_SHARE_NETWORK", "value": "true"},
            ],
        },
        "cloud": {"aws": {"sqsEndpoint": emulators::moto().url(), "region": "us-east-1"}},
        "rbac": {"watchNamespaces": ["shop", "billing"]},
        "dashboard": {"enabled": true},
    });
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let installed = tokio::task::spawn_blocking(move || {
        helm::install(&values, "ferry", RELEASE_NAMESPACE, &kubeconfig)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("helm install failed: {e}"));
    assert_eq!(installed["status"], "deployed", "{installed}");

    // Helm installed the CRD from crds/, with the annotation that keeps it on uninstall.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("queueconsumers.ferry.dev").await.expect("the CRD");
    assert_eq!(
        crd.metadata.annotations.unwrap()["helm.sh/resource-policy"],
        "keep"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    ferry_tests::eventually(
        Duration::from_secs(90),
        "the operator Deployment available with both replicas",
        async || {
            let d = deployments.get("ferry-operator").await.ok()?;
            let status = d.status?;
            let available = status.conditions?.iter().any(|c| {
                c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
            });
            (available && status.available_replicas == Some(2)).then_some(())
        },
    )
    .await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let holder = ferry_tests::eventually(
        Duration::from_secs(30),
        "a replica holding the Lease",
        async || {
            leases
                .get("ferry-operator")
                .await
                .ok()?
                .spec?
                .holder_identity
        },
    )
    .await;
    assert!(holder.starts_with("ferry-operator-"), "{holder}");

    // The operator the chart runs does its job where it was told to, with the endpoint the
    // values gave it, and leaves other namespaces alone.
    let queue = ferry_tests::unique_name("chart");
    let shop = queue_consumers(client.clone(), "shop");
    shop.create(&PostParams::default(), &consumer("orders", &queue))
        .await
        .expect("create in shop");
    let elsewhere = queue_consumers(client.clone(), "elsewhere");
    elsewhere
        .create(
            &PostParams::default(),
            &consumer("ignored", &format!("{queue}-x")),
        )
        .await
        .expect("create in elsewhere");
    let ready = ferry_tests::eventually(
        Duration::from_secs(60),
        "QueueReady=True for shop/orders",
        async || {
            let qc = shop.get("orders").await.ok()?;
            (condition_status(&qc, "QueueReady")? == "True").then_some(qc)
        },
    )
    .await;
    let queue_url = ready.data["status"]["queue"]["id"].as_str().unwrap();
    assert!(
        queue_url.starts_with(&emulators::moto().url()) && queue_url.ends_with(&queue),
        "{queue_url}"
    );
    let shop_deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    shop_deployments
        .get("orders-worker")
        .await
        .expect("the worker Deployment");
    let ignored = elsewhere.get("ignored").await.unwrap();
    assert!(
        ignored.metadata.finalizers.is_none() && ignored.data.get("status").is_none(),
        "a namespace outside rbac.watchNamespaces is not touched: {ignored:?}"
    );
    cluster.shutdown().await;
}

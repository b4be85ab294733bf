//! The real `ferry-operator` process started with no cloud credentials at all, as on a
//! cluster where IRSA or Workload Identity was forgotten: each QueueConsumer's `QueueReady`
//! condition must say that credentials are missing and how to provide them, instead of a
//! generic error or silence.
//!
//! Nothing here may reach a cloud: the AWS SDK is told not to ask the instance metadata
//! service, and Google's client is pointed at a local address where no metadata server
//! listens, so both credential chains end, with an error, on this machine.

use std::process::Stdio;
use std::time::Duration;

use ferry_crds::QueueConsumer;
use ferry_queues::Provider;
use ferry_tests::cluster::TestCluster;
use ferry_tests::workspace_binary;
use kube::api::{Api, PostParams};

/// A loopback port nothing listens on (the discard port), for the Google metadata server.
const NO_METADATA_SERVER: &str = "127.0.0.1:9";

fn consumer(provider: Provider, name: &str) -> QueueConsumer {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": { "name": name },
        "spec": {
            "queue": { "provider": provider.as_str(), "name": ferry_tests::unique_name("nocreds") },
            "worker": { "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] } },
        }
    }))
    .expect("a valid QueueConsumer")
}

fn queue_ready(qc: &QueueConsumer) -> Option<(String, String, String)> {
    let c = qc
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "QueueReady")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_cloud_credentials_are_named_in_the_status() {
    let cluster = TestCluster::start().await;
    cluster.install_crd().await;

    // An empty home: no ~/.aws, no gcloud application-default credentials.
    let logs = ferry_tests::repo_root().join("target/test-logs");
    let home = logs.join("no-credentials-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("a home directory");
    let log_path = logs.join("operator-no-credentials.log");
    let log = std::fs::File::create(&log_path).expect("operator log");
    let mut operator = tokio::process::Command::new(workspace_binary("ferry-operator"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("FERRY_SIDECAR_IMAGE", "ghcr.io/ferry-dev/consumer:test")
        .env("FERRY_LISTEN_ADDR", "127.0.0.1:0")
        .env("FERRY_CLUSTER_NAME", "test")
        .env("FERRY_PUBSUB_PROJECT", "ferry-no-credentials")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("GCE_METADATA_HOST", NO_METADATA_SERVER)
        // Its own namespace only: on a shared cluster, other tests' QueueConsumers are not
        // this credential-less operator's to mark failed. (Its kubeconfig must then carry
        // its own credentials, a token or a certificate: the empty home has no cloud CLI
        // login for an exec plugin to use.)
        .env("FERRY_WATCH_NAMESPACE", cluster.namespace())
        .env("POD_NAMESPACE", cluster.namespace())
        .env("POD_NAME", "ferry-operator-0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry-operator");

    let api: Api<QueueConsumer> = cluster.api();
    for (provider, name) in [(Provider::Sqs, "no-aws"), (Provider::PubSub, "no-google")] {
        api.create(&PostParams::default(), &consumer(provider, name))
            .await
            .expect("create");
    }

    for (name, names) in [
        ("no-aws", ["AWS credentials", "AWS_ACCESS_KEY_ID"]),
        (
            "no-google",
            ["Google credentials", "GOOGLE_APPLICATION_CREDENTIALS"],
        ),
    ] {
        let (status, reason, message) = ferry_tests::eventually(
            Duration::from_secs(90),
            &format!("{name}: QueueReady false, naming the missing credentials"),
            async || {
                let qc = api.get(name).await.ok()?;
                queue_ready(&qc).filter(|(status, _, message)| {
                    status == "False" && message.contains("credentials")
                })
            },
        )
        .await;
        eprintln!("{name}: QueueReady {status} {reason}: {message}");
        for expected in names {
            assert!(
                message.contains(expected),
                "{name}: the message should name {expected:?}: {message}"
            );
        }
        let ready = api.get(name).await.expect("get");
        let ready = ready
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(ready.as_deref(), Some("False"), "{name} must not be Ready");
    }

    let _ = operator.kill().await;
}

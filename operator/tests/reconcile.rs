//! The controller against a cluster (devcluster, or `FERRY_TEST_KUBECONFIG`'s), moto's SQS
//! server and the Pub/Sub emulator: a QueueConsumer becomes a queue with its dead-letter
//! queue and a worker Deployment with the sidecar, its status says so, and deletion follows
//! the deletion policy without losing dead letters.

use std::time::Duration;

use ferry_crds::QueueConsumer;
use ferry_operator::builders::OperatorSettings;
use ferry_operator::controller::{self, CloudSettings, Context};
use ferry_queues::Provider;
use ferry_queues::provision::{OutgoingMessage, ensure_queue, publish};
use ferry_tests::cluster::TestCluster;
use ferry_tests::emulators;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, PostParams};

struct Running {
    cluster: TestCluster,
    /// The running controller's context (its metrics).
    ctx: std::sync::Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start() -> Self {
        let cluster = TestCluster::start().await;
        cluster.install_crd().await;
        let (ctx, stop, task) = spawn_controller(&cluster);
        Self {
            cluster,
            ctx,
            stop: Some(stop),
            task,
        }
    }

    /// Kills the running controller where it stands (no graceful shutdown), then starts a
    /// new one, as a crashed and restarted operator pod would.
    async fn crash_and_restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let (ctx, stop, task) = spawn_controller(&self.cluster);
        self.ctx = ctx;
        self.stop = Some(stop);
        self.task = task;
    }

    fn api(&self) -> Api<QueueConsumer> {
        self.cluster.api()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// The controller, watching this test's namespace only: on a shared cluster, the
/// QueueConsumers of tests running beside it are not its to reconcile.
fn spawn_controller(
    cluster: &TestCluster,
) -> (
    std::sync::Arc<Context>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let ctx = Context::new(
        cluster.client(),
        OperatorSettings::new("ghcr.io/ferry-dev/consumer:test"),
        cloud_settings(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(ctx.clone(), cluster.api(), async move {
        let _ = stopped.await;
    }));
    (ctx, stop, task)
}

fn cloud_settings() -> CloudSettings {
    CloudSettings {
        sqs_endpoint: Some(emulators::moto().url()),
        pubsub_endpoint: Some(emulators::pubsub().host_port()),
        pubsub_project: Some(emulators::PUBSUB_PROJECT.into()),
        cluster_name: "test".into(),
    }
}

fn consumer(provider: Provider, name: &str, deletion_policy: &str, force: bool) -> QueueConsumer {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": { "name": name },
        "spec": {
            "queue": { "provider": provider.as_str(), "name": ferry_tests::unique_name("op") },
            "deadLetter": { "maxDeliveries": 5 },
            "deletionPolicy": deletion_policy,
            "forceDelete": force,
            "worker": { "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] } },
        }
    }))
    .expect("a valid QueueConsumer")
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    ferry_tests::eventually(Duration::from_secs(30), what, async || check().await).await
}

fn request_endpoint(provider: Provider) -> Option<String> {
    match provider {
        Provider::Sqs => cloud_settings().sqs_endpoint,
        Provider::PubSub => cloud_settings().pubsub_endpoint,
    }
}

/// A plain consumer of the queue, for a test to read what reached it.
async fn queue_reader(
    provider: Provider,
    queue: String,
) -> std::sync::Arc<dyn ferry_queues::MessageQueue> {
    ferry_queues::connect(&ferry_queues::ConsumerTarget {
        provider,
        queue,
        dead_letter: None,
        dead_letter_topic: None,
        endpoint: request_endpoint(provider),
        lease: Duration::from_secs(60),
        max_outstanding: 100,
        monitoring: None,
    })
    .await
    .expect("connect to the queue")
}

/// The first Event with this reason, once there is one.
async fn event(running: &Running, reason: &str) -> k8s_openapi::api::events::v1::Event {
    let events: Api<k8s_openapi::api::events::v1::Event> = running.cluster.api();
    eventually(&format!("a {reason} event"), async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

fn condition(qc: &QueueConsumer, type_: &str) -> Option<(String, String, String)> {
    let c = qc
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

ferry_tests::for_both_providers!(
    a_queue_consumer_gets_its_queue_dead_letter_queue_and_worker,
    delete_policy_waits_for_dead_letters_unless_forced,
    dead_letters_go_back_to_the_queue_when_the_annotation_asks,
    a_periodic_task_sends_one_message_per_tick_even_across_an_operator_restart,
    a_periodic_task_runs_now_once_per_run_task_value,
);

async fn a_queue_consumer_gets_its_queue_dead_letter_queue_and_worker(provider: Provider) {
    let running = Running::start().await;
    let api = running.api();
    let qc = api
        .create(
            &PostParams::default(),
            &consumer(provider, "orders", "Retain", false),
        )
        .await
        .expect("create");
    let queue_name = qc.spec.queue.name.clone().unwrap();

    let ready = eventually("QueueReady=True", async || {
        let qc = api.get("orders").await.ok()?;
        (condition(&qc, "QueueReady")?.0 == "True").then_some(qc)
    })
    .await;
    let status = ready.status.clone().unwrap();
    let queue_url = status.queue.as_ref().unwrap().id.clone();
    assert!(queue_url.ends_with(&queue_name), "{queue_url}");
    assert!(
        status
            .dead_letter
            .as_ref()
            .unwrap()
            .id
            .ends_with(&format!("{queue_name}-dlq"))
    );
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert!(
        ready
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == controller::FINALIZER)
    );

    // The queue really exists, with its DLQ, and belongs to this object.
    let mut request = controller::queue_request(&ready, &cloud_settings());
    request.adopt = false;
    let existing = ensure_queue(&request)
        .await
        .expect("the queue is there and ours");
    assert!(existing.created.is_empty(), "{existing:?}");

    // The worker Deployment carries the sidecar configured for this queue.
    let deployments: Api<Deployment> = running.cluster.api();
    let deployment = deployments
        .get("orders-worker")
        .await
        .expect("worker Deployment");
    let pod = deployment.spec.template.spec.clone().unwrap();
    let sidecar = pod
        .containers
        .iter()
        .find(|c| c.name == "ferry-consumer")
        .expect("sidecar injected");
    let env = |name: &str| {
        sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env("FERRY_QUEUE").as_deref(), Some(queue_url.as_str()));
    assert_eq!(env("FERRY_PROVIDER").as_deref(), Some(provider.as_str()));
    assert!(env("FERRY_DEAD_LETTER").unwrap().ends_with("-dlq"));
    let owner = deployment
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| o.kind.as_str()),
        Some("QueueConsumer")
    );

    // The sidecars' control token and starting rate share are in a Secret of the consumer's,
    // which the sidecar reads when it starts; the pod spec names it and holds no token.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = running.cluster.api();
    let secret = secrets
        .get("orders-ferry-sidecar")
        .await
        .expect("the sidecar Secret");
    assert_eq!(
        secret.metadata.owner_references.unwrap_or_default()[0].kind,
        "QueueConsumer",
        "deleted with the consumer"
    );
    let token = secret.data.unwrap_or_default()["control-token"].0.clone();
    let token = String::from_utf8(token).unwrap();
    assert_eq!(token.len(), 40);
    assert!(
        !serde_json::to_string(&deployment).unwrap().contains(&token),
        "the Deployment never holds the token"
    );
    let from_secret = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "FERRY_CONTROL_TOKEN")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .expect("FERRY_CONTROL_TOKEN from the Secret");
    assert_eq!(
        (from_secret.name.as_str(), from_secret.key.as_str()),
        ("orders-ferry-sidecar", "control-token")
    );

    // Ferry made the workers' ServiceAccount; once the template names the user's own, it goes.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = running.cluster.api();
    assert!(accounts.get_opt("orders-worker").await.unwrap().is_some());
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-worker"));

    // No pods run here (no kubelet), so the workload is not ready and Ready says why.
    let (ready_status, reason, message) = condition(&ready, "Ready").unwrap();
    assert_eq!(ready_status, "False");
    assert_eq!(reason, "WorkerUnavailable", "{message}");

    // The user is told, in `kubectl describe qc`, that the queue is there.
    let events: Api<k8s_openapi::api::events::v1::Event> = running.cluster.api();
    eventually("a QueueProvisioned event", async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("QueueProvisioned")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders")
            })
            .then_some(())
    })
    .await;

    // A second look changes nothing: no status churn.
    let version = api.get("orders").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.get("orders").await.unwrap().metadata.resource_version,
        version
    );

    let own_account = serde_json::json!({ "spec": { "worker": { "spec": { "serviceAccountName": "team-account" } } } });
    api.patch(
        "orders",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&own_account),
    )
    .await
    .expect("patch");
    eventually("Ferry's ServiceAccount to be removed", async || {
        accounts
            .get_opt("orders-worker")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Retain: deleting the object leaves the queue (and its messages) in place.
    api.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the object to go", async || {
        api.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        ensure_queue(&request)
            .await
            .expect("still there")
            .created
            .is_empty()
    );
    running.stop().await;
}

async fn delete_policy_waits_for_dead_letters_unless_forced(provider: Provider) {
    let running = Running::start().await;
    let api = running.api();
    api.create(
        &PostParams::default(),
        &consumer(provider, "payments", "Delete", false),
    )
    .await
    .expect("create");
    let qc = eventually("QueueReady=True", async || {
        let qc = api.get("payments").await.ok()?;
        (condition(&qc, "QueueReady")?.0 == "True").then_some(qc)
    })
    .await;
    let dead_letter = qc.status.as_ref().unwrap().dead_letter.clone().unwrap();
    // SQS: the DLQ's URL; Pub/Sub: the dead-letter topic.
    let destination = dead_letter.topic.clone().unwrap_or(dead_letter.id.clone());
    publish(
        provider,
        request_endpoint(provider).as_deref(),
        &destination,
        vec![OutgoingMessage {
            body: b"{\"parked\":1}".to_vec(),
            ..Default::default()
        }],
    )
    .await
    .expect("a dead letter");

    api.delete("payments", &DeleteParams::default())
        .await
        .expect("delete");
    let blocked = eventually("Ready=False DeletionBlocked", async || {
        let qc = api.get("payments").await.ok()?;
        (condition(&qc, "Ready")?.1 == "DeletionBlocked").then_some(qc)
    })
    .await;
    assert!(
        condition(&blocked, "Ready")
            .unwrap()
            .2
            .contains("forceDelete")
    );
    assert!(
        blocked.metadata.deletion_timestamp.is_some(),
        "the object waits, held by the finalizer"
    );

    // The user decides the dead letters may go.
    let patch = serde_json::json!({ "spec": { "forceDelete": true } });
    api.patch(
        "payments",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("force");
    eventually("the object to go", async || {
        api.get_opt("payments").await.ok()?.is_none().then_some(())
    })
    .await;
    let request = controller::queue_request(&qc, &cloud_settings());
    assert!(
        !ensure_queue(&request)
            .await
            .expect("recreate")
            .created
            .is_empty(),
        "the queues had been deleted"
    );
    running.stop().await;
}

/// Bad objects never reach the operator: `kubectl apply` is refused at admission with the
/// CRD's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_rejects_invalid_queue_consumers_with_a_readable_message() {
    let running = Running::start().await;
    let namespace = running.cluster.namespace();
    // `kubectl apply` of a QueueConsumer `bad` with this spec: refused, and what it said.
    let refusal = async |spec: &str| {
        let manifest =
            std::env::temp_dir().join(format!("{}.yaml", ferry_tests::unique_name("bad-qc")));
        let object = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: QueueConsumer\nmetadata:\n  name: bad\n  namespace: {namespace}\nspec:\n{spec}  worker:\n    spec:\n      containers:\n        - name: app\n          image: example.com/app:1\n"
        );
        std::fs::write(&manifest, object).unwrap();
        let out = running
            .cluster
            .kubectl(&["apply", "-f", &manifest.to_string_lossy()])
            .await;
        let _ = std::fs::remove_file(&manifest);
        assert!(!out.status.success(), "kubectl apply must fail");
        assert!(
            running.api().get_opt("bad").await.unwrap().is_none(),
            "nothing was stored"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refusal(
        r#"  queue:
    provider: pubsub
    sqs:
      fifo: true
  deadLetter:
    maxDeliveries: 200
  periodicTasks:
    - name: nightly
      url: /tasks/nightly
      schedule: "30 2 * * *"
      timeZone: Europe/Berln
"#,
    )
    .await;
    assert!(
        stderr.contains("maxDeliveries must be between 5 and 100 for Pub/Sub"),
        "{stderr}"
    );
    assert!(
        stderr.contains("timeZone must be an IANA time zone name"),
        "{stderr}"
    );
    // The schema's own bounds, which the API server checks before the rules.
    let stderr = refusal(
        r#"  queue:
    provider: sqs
  delivery:
    maxPerSecond: 0
"#,
    )
    .await;
    assert!(
        stderr.contains(
            "spec.delivery.maxPerSecond in body should be greater than or equal to 0.001"
        ),
        "{stderr}"
    );
    running.stop().await;
}

/// An operator killed in the middle of reconciling (here: right after the object appears, so
/// at any point of provisioning) leaves nothing half-done that a restart cannot finish: the
/// restarted controller converges to the same queue, Deployment and status, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_converges_after_a_crash_mid_reconcile() {
    let mut running = Running::start().await;
    let api = running.api();
    let qc = consumer(Provider::Sqs, "restart", "Retain", false);
    api.create(&PostParams::default(), &qc)
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(30)).await;
    running.crash_and_restart().await;
    let ready = eventually("QueueReady=True after the restart", async || {
        let qc = api.get("restart").await.ok()?;
        (condition(&qc, "QueueReady")?.0 == "True").then_some(qc)
    })
    .await;
    let again = ensure_queue(&controller::queue_request(&ready, &cloud_settings()))
        .await
        .expect("the queue exists");
    assert!(
        again.created.is_empty() && again.corrected.is_empty(),
        "{again:?}"
    );
    let deployments: Api<Deployment> = running.cluster.api();
    assert!(
        deployments
            .get_opt("restart-worker")
            .await
            .unwrap()
            .is_some()
    );
    running.stop().await;
}

/// The reconciler skips applying a worker Deployment that is as its last apply left it; a
/// Deployment someone changed or deleted is still put back at its next event, and the
/// autoscaler's replica count (the scale subresource) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_the_worker_deployment_is_put_back() {
    let running = Running::start().await;
    let api = running.api();
    api.create(
        &PostParams::default(),
        &consumer(Provider::Sqs, "drift", "Retain", false),
    )
    .await
    .expect("create");
    let deployments: Api<Deployment> = running.cluster.api();
    let image = |d: &Deployment| {
        d.spec
            .template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "worker")?
            .image
            .clone()
    };
    eventually("the worker Deployment", async || {
        deployments
            .get_opt("drift-worker")
            .await
            .ok()?
            .filter(|d| image(d).is_some())
    })
    .await;

    // Someone edits the worker's image: put back at the Deployment's event.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "example.com/other:2"}]}}}});
    deployments
        .patch(
            "drift-worker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&edit),
        )
        .await
        .expect("edit the Deployment");
    eventually("the image to be put back", async || {
        let d = deployments.get("drift-worker").await.ok()?;
        (image(&d).as_deref() == Some("example.com/worker:1")).then_some(())
    })
    .await;

    // The replica count is the autoscaler's: a scale is not undone.
    let scale = serde_json::json!({"spec": {"replicas": 3}});
    deployments
        .patch_scale(
            "drift-worker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&scale),
        )
        .await
        .expect("scale");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments.get("drift-worker").await.unwrap();
    assert_eq!(d.spec.replicas, Some(3));

    // Deleted: made again.
    deployments
        .delete("drift-worker", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the Deployment to be made again", async || {
        deployments
            .get_opt("drift-worker")
            .await
            .ok()?
            .filter(|d| d.metadata.deletion_timestamp.is_none() && image(d).is_some())
    })
    .await;
    running.stop().await;
}

/// A namespace that enforces the `restricted` Pod Security level refuses a worker that asks
/// for more (here: privilege escalation, which Ferry keeps as the user's own choice). The
/// QueueConsumer says so, with the cluster's own reason, instead of "not available yet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_the_namespace_refuses_are_named_in_the_status() {
    let running = Running::start().await;
    ferry_tests::cluster::enforce_restricted_pods(
        &running.cluster.client(),
        running.cluster.namespace(),
    )
    .await
    .expect("label the namespace");
    let mut qc = consumer(Provider::Sqs, "escalating", "Retain", false);
    qc.spec.worker.spec.as_mut().unwrap().containers[0].security_context = Some(
        serde_json::from_value(serde_json::json!({"allowPrivilegeEscalation": true})).unwrap(),
    );
    let api = running.api();
    api.create(&PostParams::default(), &qc)
        .await
        .expect("create");
    let (status, reason, message) =
        eventually("WorkloadReady=False PodCreationFailed", async || {
            let qc = api.get("escalating").await.ok()?;
            condition(&qc, "WorkloadReady").filter(|(_, reason, _)| reason == "PodCreationFailed")
        })
        .await;
    eprintln!("WorkloadReady {status} {reason}: {message}");
    assert_eq!(status, "False");
    for expected in [
        r#"violates PodSecurity "restricted:latest""#,
        "allowPrivilegeEscalation != false",
        "fix spec.worker",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    let ready = condition(&api.get("escalating").await.unwrap(), "Ready").unwrap();
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "PodCreationFailed")
    );
    running.stop().await;
}

/// The user fixed the worker and asks, with `kubectl annotate`, for the dead letters to go
/// back: every one reaches the queue once, marked with the request, the status counts them
/// and says so, an Event tells it, and the same annotation value does not move them again.
async fn dead_letters_go_back_to_the_queue_when_the_annotation_asks(provider: Provider) {
    let running = Running::start().await;
    let api = running.api();
    api.create(
        &PostParams::default(),
        &consumer(provider, "refunds", "Retain", false),
    )
    .await
    .expect("create");
    let qc = eventually("QueueReady=True", async || {
        let qc = api.get("refunds").await.ok()?;
        (condition(&qc, "QueueReady")?.0 == "True").then_some(qc)
    })
    .await;
    let status = qc.status.clone().unwrap();
    let dead_letter = status.dead_letter.unwrap();
    let parked: Vec<OutgoingMessage> = (0..12)
        .map(|i| OutgoingMessage {
            body: format!("{{\"refund\":{i}}}").into_bytes(),
            attributes: vec![("tenant".into(), "acme".into())],
            ..Default::default()
        })
        .collect();
    publish(
        provider,
        request_endpoint(provider).as_deref(),
        dead_letter.topic.as_ref().unwrap_or(&dead_letter.id),
        parked,
    )
    .await
    .expect("dead letters");

    let out = running
        .cluster
        .kubectl(&[
            "-n",
            running.cluster.namespace(),
            "annotate",
            "queueconsumer",
            "refunds",
            "ferry.dev/redrive=after-fix-1",
            "--overwrite",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let redriven = ferry_tests::eventually(
        Duration::from_secs(60),
        "the redrive to finish",
        async || {
            let redrive = api.get("refunds").await.ok()?.status?.redrive?;
            (redrive.phase == ferry_crds::RedrivePhase::Succeeded).then_some(redrive)
        },
    )
    .await;
    assert_eq!(redriven.request, "after-fix-1");
    assert_eq!(
        (redriven.moved, redriven.failed_again),
        (12, 0),
        "{redriven:?}"
    );
    assert!(
        redriven
            .message
            .starts_with("moved 12 message(s) from dead-letter queue"),
        "{}",
        redriven.message
    );
    let series = format!(
        "ferry_redriven_messages_total{{namespace=\"{}\",queueconsumer=\"refunds\"}} 12",
        running.cluster.namespace()
    );
    let exposition = running.ctx.metrics.encode();
    assert!(exposition.contains(&series), "{series} in:\n{exposition}");
    let wide = running
        .cluster
        .kubectl(&[
            "-n",
            running.cluster.namespace(),
            "get",
            "qc",
            "refunds",
            "-o",
            "wide",
        ])
        .await;
    let table = String::from_utf8_lossy(&wide.stdout);
    assert!(
        table.contains("DEAD LETTERS") && table.contains("REDRIVE") && table.contains("Succeeded"),
        "kubectl get -o wide shows the redrive: {table}"
    );

    let consumer = queue_reader(provider, status.queue.unwrap().id).await;
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bodies.len() < 12 && std::time::Instant::now() < deadline {
        for message in consumer
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive")
        {
            assert_eq!(
                message.attributes.get("tenant").map(String::as_str),
                Some("acme")
            );
            assert_eq!(
                message
                    .attributes
                    .get(ferry_queues::redrive::REDRIVE_ATTRIBUTE)
                    .map(String::as_str),
                Some("after-fix-1")
            );
            bodies.push(String::from_utf8_lossy(&message.body).into_owned());
            consumer.ack(message.lease).await.expect("ack");
        }
    }
    consumer.close().await;
    consumer.flush().await;
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        12,
        "every dead letter is back on the queue once: {bodies:?}"
    );

    let told = event(&running, "Redriven").await;
    assert!(
        told.note
            .unwrap_or_default()
            .contains("moved 12 message(s)")
    );

    // A spec change, which makes the operator reconcile again.
    let set_concurrency = async |concurrency: u32| {
        let patch = serde_json::json!({ "spec": { "delivery": { "concurrency": concurrency } } });
        api.patch(
            "refunds",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("a spec change");
    };
    // The same value again (a re-apply of a manifest carrying it) moves nothing.
    set_concurrency(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api
        .get("refunds")
        .await
        .unwrap()
        .status
        .unwrap()
        .redrive
        .unwrap();
    assert_eq!(after, redriven, "a redrive that finished is not run again");

    // A status write built from a watch cache that had not yet seen the finished redrive
    // puts the Running status of its last pass back; the next reconcile puts it right.
    let stale = serde_json::json!({ "status": { "redrive": {
        "phase": "Running",
        "completedAt": null,
        "message": "moving the messages of dead-letter queue back: 12 so far",
    } } });
    api.patch_status(
        "refunds",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&stale),
    )
    .await
    .expect("a stale status write");
    set_concurrency(4).await;
    eventually("the finished redrive's status back", async || {
        let redrive = api.get("refunds").await.ok()?.status?.redrive?;
        (redrive == redriven).then_some(())
    })
    .await;
    running.stop().await;
}

/// Creates the consumer `reports` with one periodic task, `Nightly report`.
/// `reports`, with one periodic task: `Nightly report` at `schedule`, with `more` fields.
async fn create_with_task(
    api: &Api<QueueConsumer>,
    provider: Provider,
    url: &str,
    schedule: &str,
    more: serde_json::Value,
) {
    let mut qc = consumer(provider, "reports", "Retain", false);
    let mut task = serde_json::json!({
        "name": "Nightly report", "url": url, "schedule": schedule
    });
    if let (Some(task), Some(more)) = (task.as_object_mut(), more.as_object()) {
        task.extend(more.clone());
    }
    qc.spec.periodic_tasks = vec![serde_json::from_value(task).unwrap()];
    api.create(&PostParams::default(), &qc)
        .await
        .expect("create");
}

/// The status of `reports`' periodic task.
async fn task_status(api: &Api<QueueConsumer>) -> Option<ferry_crds::PeriodicTaskStatus> {
    let status = api.get("reports").await.ok()?.status?;
    status.periodic_tasks.into_iter().next()
}

/// A `cron.yaml` entry in `spec.periodicTasks`: at its tick one message reaches the queue in
/// the worker daemon's format, the status records it and names the next tick, and an
/// operator that crashes and restarts right after does not send that tick again.
async fn a_periodic_task_sends_one_message_per_tick_even_across_an_operator_restart(
    provider: Provider,
) {
    let mut running = Running::start().await;
    let api = running.api();
    create_with_task(
        &api,
        provider,
        "/tasks/report?format=csv",
        "* * * * *",
        serde_json::json!({}),
    )
    .await;
    let task_status = async || task_status(&api).await;
    let first = eventually("the task's first tick in the status", async || {
        let task = task_status().await?;
        task.next_schedule_time.is_some().then_some(task)
    })
    .await;
    assert_eq!(
        first.last_schedule_time, None,
        "nothing is sent before the first tick"
    );
    let tick = first.next_schedule_time.clone().unwrap();
    let sent = ferry_tests::eventually(
        Duration::from_secs(90),
        "the tick's message to be sent",
        async || {
            let task = task_status().await?;
            (task.last_schedule_time.as_ref() == Some(&tick)).then_some(task)
        },
    )
    .await;
    assert!(sent.message.is_empty(), "{}", sent.message);
    assert!(
        sent.next_schedule_time.as_ref().unwrap().0 > tick.0,
        "the next tick is named: {sent:?}"
    );
    running.crash_and_restart().await;

    let status = api.get("reports").await.unwrap().status.unwrap();
    let consumer = queue_reader(provider, status.queue.unwrap().id).await;
    let scheduled_at = tick.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut for_this_tick = Vec::new();
    // Long enough for the restarted operator to reconcile and, were it to, send again.
    let until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < until {
        for message in consumer
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive")
        {
            let attribute = |name: &str| message.attributes.get(name).cloned().unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&message.body),
                "elasticbeanstalk scheduled job"
            );
            assert_eq!(attribute("beanstalk.sqsd.task_name"), "Nightly report");
            assert_eq!(attribute("beanstalk.sqsd.path"), "/tasks/report?format=csv");
            // A later tick may come while this runs; only this one's copies are counted.
            if attribute("beanstalk.sqsd.scheduled_time") == scheduled_at {
                for_this_tick.push(message.id.clone());
            }
            consumer.ack(message.lease).await.expect("ack");
        }
    }
    consumer.close().await;
    consumer.flush().await;
    assert_eq!(
        for_this_tick,
        vec![sent.last_message_id.clone().unwrap()],
        "one message for the tick at {scheduled_at}, the one the status names"
    );
    running.stop().await;
}

/// `kubectl annotate qc … ferry.dev/run-task="<task>@<token>"`: the task's message is sent
/// at once, out of schedule, once per value, also across an operator restart; a value that
/// names no task is refused with a Warning that says so.
async fn a_periodic_task_runs_now_once_per_run_task_value(provider: Provider) {
    let mut running = Running::start().await;
    let api = running.api();
    // A tick a year, at midnight on 1 January where the year begins first (UTC+14, no
    // daylight saving time): none comes while this runs.
    create_with_task(
        &api,
        provider,
        "/tasks/report",
        "0 0 1 1 *",
        serde_json::json!({"timeZone": "Pacific/Kiritimati"}),
    )
    .await;
    let task_status = async || task_status(&api).await;
    let next = eventually("the task in the status", async || {
        task_status().await?.next_schedule_time
    })
    .await;
    assert_eq!(
        next.0.strftime("%m-%d %H:%M:%S").to_string(),
        "12-31 10:00:00",
        "the tick is read in the task's time zone: {next:?}"
    );
    let run = async |value: &str| {
        let patch = serde_json::json!({ "metadata": { "annotations": {
            ferry_crds::RUN_TASK_ANNOTATION: value
        } } });
        api.patch(
            "reports",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotate");
    };
    let ran = async |value: &str| {
        eventually("the run recorded", async || {
            let task = task_status().await?;
            (task.last_run_request.as_deref() == Some(value)).then_some(task)
        })
        .await
    };
    run("Nightly report@1").await;
    let first = ran("Nightly report@1").await;
    assert!(first.last_run_time.is_some() && first.last_schedule_time.is_none());
    running.crash_and_restart().await;
    let api = running.api();

    let status = api.get("reports").await.unwrap().status.unwrap();
    let consumer = queue_reader(provider, status.queue.unwrap().id).await;
    let read_for = async |seconds: u64| {
        let mut ids = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(seconds);
        while std::time::Instant::now() < until {
            for message in consumer
                .receive(10, Duration::from_millis(500))
                .await
                .expect("receive")
            {
                assert_eq!(
                    message
                        .attributes
                        .get("beanstalk.sqsd.task_name")
                        .map(String::as_str),
                    Some("Nightly report")
                );
                assert_eq!(
                    message
                        .attributes
                        .get("beanstalk.sqsd.path")
                        .map(String::as_str),
                    Some("/tasks/report")
                );
                ids.push(message.id.clone());
                consumer.ack(message.lease).await.expect("ack");
            }
        }
        ids
    };
    // Long enough for the restarted operator to reconcile and, were it to, send again.
    let sent = read_for(10).await;
    assert_eq!(sent.len(), 1, "one message for the value: {sent:?}");
    assert!(first.message.ends_with(&sent[0]), "{}", first.message);

    // A value that names no task sends nothing and says why.
    run("Weekly report@1").await;
    let refused = event(&running, "PeriodicTaskRunRefused").await;
    assert!(
        refused
            .note
            .unwrap_or_default()
            .contains("Weekly report@1 names no task"),
    );
    // A new value for the task runs it again.
    run("Nightly report@2").await;
    ran("Nightly report@2").await;
    let again = read_for(5).await;
    assert_eq!(again.len(), 1, "{again:?}");

    // Suspended on its own, the task has no next tick and says why; a request still runs it.
    let mut qc = api.get("reports").await.unwrap();
    qc.spec.periodic_tasks[0].suspend = true;
    let patch = serde_json::json!({ "spec": { "periodicTasks": qc.spec.periodic_tasks } });
    api.patch(
        "reports",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("suspend the task");
    let paused = eventually("the task suspended in the status", async || {
        let task = task_status().await?;
        task.message
            .contains("spec.periodicTasks[Nightly report].suspend is true")
            .then_some(task)
    })
    .await;
    assert_eq!(paused.next_schedule_time, None, "{paused:?}");
    run("Nightly report@3").await;
    ran("Nightly report@3").await;
    let suspended_run = read_for(5).await;
    assert_eq!(suspended_run.len(), 1, "{suspended_run:?}");
    consumer.close().await;
    consumer.flush().await;
    running.stop().await;
}

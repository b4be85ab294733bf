//! The dashboard and the alert rules against a real Prometheus scraping a real Ferry: the
//! chart is installed with Helm into devcluster, its operator runs a QueueConsumer on moto's
//! SQS with real worker pods (the example worker behind the ferry-consumer sidecar), and
//! Prometheus discovers the pods from devcluster's API the way the chart's PodMonitor and
//! ServiceMonitor tell prometheus-operator to. Then every dashboard query (variables
//! substituted) and every alert expression must return data through Prometheus' HTTP API,
//! (Debian's Prometheus is built without Kubernetes discovery, so the test writes the pods
//! it finds in devcluster to a file_sd file with the same `__meta_kubernetes_*` labels.)
//! and every alert must fire in the scenario made for it: a dead-letter queue filled by
//! poison messages, messages older than a tiny target, half the deliveries failing, a backlog
//! growing at maxReplicas, a deletion blocked by dead letters, a scrape target gone, a
//! periodic task's tick missed while the operator was scaled to zero, a suspended consumer,
//! a worker whose dependency went away.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_devcluster::DevCluster;
use ferry_queues::Provider;
use ferry_queues::provision::{OutgoingMessage, publish};
use ferry_tests::prometheus::Prometheus;
use ferry_tests::sidecar::{Sidecar, SidecarEnv};
use ferry_tests::{emulators, helm, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const RELEASE_NAMESPACE: &str = "ferry-system";
const NAMESPACE: &str = "shop";
const CONSUMER: &str = "orders";

fn queue_consumers(client: kube::Client) -> Api<DynamicObject> {
    let kind = GroupVersionKind::gvk("ferry.dev", "v1alpha1", "QueueConsumer");
    Api::namespaced_with(client, NAMESPACE, &ApiResource::from_gvk(&kind))
}

/// A consumer built to trip every alert (and fill every panel, hence a delivery rate limit it
/// never reaches): two slow replicas at most (the autoscaler goes from one to two), a 0.1 s latency target,
/// a worker that fails half its deliveries and rejects poison, `Delete` so that its
/// dead letters block the deletion, and a periodic task every minute whose ticks must be sent
/// within a second. The worker answers 503 to everything while `down_file` exists, its
/// readiness path included.
fn consumer(queue: &str, down_file: &std::path::Path) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": { "name": CONSUMER },
        "spec": {
            "queue": { "provider": "sqs", "name": queue },
            "deadLetter": { "maxDeliveries": 2 },
            "deletionPolicy": "Delete",
            "delivery": {
                "concurrency": 1,
                "maxPerSecond": 100,
                "readinessPath": "/ready",
                "permanentFailureStatuses": [422],
                "retryBackoff": { "minSeconds": 0.5, "maxSeconds": 1 }
            },
            "scaling": { "maxReplicas": 2, "targetLatencySeconds": 0.1 },
            "periodicTasks": [{
                "name": "report", "url": "/tasks/report", "schedule": "* * * * *",
                "startingDeadlineSeconds": 1
            }],
            "worker": { "spec": { "containers": [{
                "name": "worker",
                "image": "example.com/worker:1",
                "env": [
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "WORKER_LISTEN", "value": "$(POD_IP):8080" },
                    { "name": "WORKER_LATENCY_MS", "value": "300" },
                    { "name": "WORKER_FAILURE_RATE", "value": "0.5" },
                    { "name": "WORKER_DOWN_WHILE_FILE", "value": down_file.display().to_string() }
                ]
            }] } }
        }
    }))
    .expect("a QueueConsumer")
}

/// The chart's values for devcluster (see chart_install.rs), alerts without waiting time.
fn values(cluster: &DevCluster) -> Value {
    let no_wait = json!({"for": "0s"});
    json!({
        "operator": {
            "bindAddress": "$(POD_IP)",
            "port": ferry_tests::free_port(),
            "scalingPollInterval": 1,
            "extraEnv": [
                {"name": "KUBECONFIG", "value": cluster.kubeconfig().to_string_lossy()},
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
                {"name": "FERRY_PODS_SHARE_NETWORK", "value": "true"},
            ],
        },
        "cloud": {"aws": {"sqsEndpoint": emulators::moto().url(), "region": "us-east-1"}},
        "metrics": {"serviceMonitor": {"enabled": true, "interval": "1s"}, "podMonitor": {"enabled": true, "interval": "1s"}},
        "prometheusRule": {"enabled": true, "alerts": {
            "deadLetterNotEmpty": no_wait, "messagesOlderThanTarget": no_wait,
            "backlogGrowingAtMaxReplicas": {"for": "0s", "window": "1m"},
            "workerFailureRatio": no_wait, "operatorReconcileErrors": no_wait, "scrapeTargetDown": no_wait,
            "periodicTaskSkipped": no_wait, "consumerSuspended": no_wait, "workerUnavailable": no_wait,
        }},
    })
}

/// A monitor's `relabelings` as Prometheus' `relabel_configs`.
fn relabel_configs(relabelings: &Value) -> Vec<Value> {
    relabelings
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut out = serde_json::Map::new();
            for (key, value) in r.as_object().unwrap() {
                let key = match key.as_str() {
                    "sourceLabels" => "source_labels",
                    "targetLabel" => "target_label",
                    other => other,
                };
                out.insert(key.to_string(), value.clone());
            }
            Value::Object(out)
        })
        .collect()
}

/// What prometheus-operator generates for the chart's PodMonitor and ServiceMonitor, over
/// the pods of devcluster. One difference: devcluster maintains no Endpoints, so the operator's
/// pods are found by the Service's selector (role pod) instead of through the Service's
/// endpoints; the labels they get are the same.
fn scrape_config(rendered: &helm::Rendered, sidecar_b: &Sidecar) -> Value {
    let pod_monitor = rendered.one("PodMonitor");
    let pod_endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    let mut pod_relabel = vec![
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by", "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_managed_by"], "regex": "(ferry);true"}),
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_labelpresent_ferry_dev_queue_consumer"], "regex": "(true)"}),
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": pod_endpoint["port"]}),
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}),
        json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"target_label": "job", "replacement": format!("{RELEASE_NAMESPACE}/{}", pod_monitor["metadata"]["name"].as_str().unwrap())}),
    ];
    pod_relabel.extend(relabel_configs(&pod_endpoint["relabelings"]));

    let service_monitor = rendered.one("ServiceMonitor");
    let service_endpoint = &service_monitor["spec"]["endpoints"][0];
    let mut operator_relabel: Vec<Value> = service_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| {
            let label = key.replace(['.', '/', '-'], "_");
            json!({"action": "keep", "source_labels": [format!("__meta_kubernetes_pod_label_{label}")], "regex": value})
        })
        .collect();
    operator_relabel.extend([
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": service_endpoint["port"]}),
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"target_label": "job", "replacement": rendered.one("Service")["metadata"]["name"]}),
    ]);
    operator_relabel.extend(relabel_configs(&service_endpoint["relabelings"]));

    let sd = |namespace: &str| json!([{"files": [format!("pods-{namespace}.json")], "refresh_interval": "1s"}]);
    json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "podMonitor/ferry-consumers",
                "honor_labels": pod_endpoint["honorLabels"].as_bool().unwrap_or(false),
                "metrics_path": pod_endpoint["path"],
                "file_sd_configs": sd(NAMESPACE),
                // A second sidecar of the same consumer, outside devcluster, on a queue that
                // does not exist: queue API errors, and later a target that stops answering.
                // Its labels are what Kubernetes discovery gives a pod.
                "static_configs": [{
                    "targets": [format!("127.0.0.1:{}", sidecar_b.metrics_port)],
                    "labels": {
                        "__meta_kubernetes_namespace": NAMESPACE,
                        "__meta_kubernetes_pod_name": format!("{CONSUMER}-worker-outside"),
                        "__meta_kubernetes_pod_container_name": "ferry-consumer",
                        "__meta_kubernetes_pod_container_port_name": "metrics",
                        "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by": "ferry",
                        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_managed_by": "true",
                        "__meta_kubernetes_pod_label_ferry_dev_queue_consumer": CONSUMER,
                        "__meta_kubernetes_pod_labelpresent_ferry_dev_queue_consumer": "true",
                    }
                }],
                "relabel_configs": pod_relabel,
            },
            {
                "job_name": "serviceMonitor/ferry-operator",
                "honor_labels": service_endpoint["honorLabels"],
                "metrics_path": service_endpoint["path"],
                "file_sd_configs": sd(RELEASE_NAMESPACE),
                "relabel_configs": operator_relabel,
            },
        ],
    })
}

/// A label name as Kubernetes discovery writes it.
fn sanitized(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The targets Prometheus' Kubernetes pod discovery would find in `namespace`: one per
/// container port of every pod with an IP, with its `__meta_kubernetes_*` labels.
async fn discover_pods(client: &kube::Client, namespace: &str) -> Value {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut groups = Vec::new();
    for pod in pods
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let mut pod_labels = serde_json::Map::new();
        pod_labels.insert("__meta_kubernetes_namespace".into(), json!(namespace));
        pod_labels.insert(
            "__meta_kubernetes_pod_name".into(),
            json!(pod.metadata.name),
        );
        for (key, value) in pod.metadata.labels.clone().unwrap_or_default() {
            let key = sanitized(&key);
            pod_labels.insert(format!("__meta_kubernetes_pod_label_{key}"), json!(value));
            pod_labels.insert(
                format!("__meta_kubernetes_pod_labelpresent_{key}"),
                json!("true"),
            );
        }
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in container.ports.iter().flatten() {
                let mut labels = pod_labels.clone();
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    json!(container.name),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_name".into(),
                    json!(port.name),
                );
                groups.push(
                    json!({"targets": [format!("{ip}:{}", port.container_port)], "labels": labels}),
                );
            }
        }
    }
    Value::Array(groups)
}

/// Keeps `pods-<namespace>.json` in Prometheus' directory current, as discovery would.
fn keep_discovering(client: kube::Client, dir: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for namespace in [NAMESPACE, RELEASE_NAMESPACE] {
                let targets = discover_pods(&client, namespace).await;
                let path = dir.join(format!("pods-{namespace}.json"));
                let partial = dir.join(format!("pods-{namespace}.json.tmp"));
                if std::fs::write(&partial, targets.to_string()).is_ok() {
                    let _ = std::fs::rename(&partial, &path);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Grafana's substitutions for one consumer; `$__rate_interval` as Grafana sets it for a
/// short time range (one minute).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", NAMESPACE)
        .replace("$queueconsumer", CONSUMER)
}

/// Every query of the dashboard: `(where, expr)`, panel targets and variable queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/ferry/dashboards/ferry.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("query_result(")
                .and_then(|q| q.strip_suffix(')'))
                .expect("variables use query_result(...)");
            queries.push((format!("variable {}", variable["name"]), substitute(inner)));
        }
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!("panel {} ({})", panel["title"], target["legendFormat"]),
                substitute(target["expr"].as_str().unwrap()),
            ));
        }
    }
    queries
}

async fn wait_firing(prometheus: &Prometheus, alerts: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let firing: BTreeSet<String> = prometheus
            .firing()
            .await
            .iter()
            .map(|a| {
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let missing: Vec<&&str> = alerts.iter().filter(|a| !firing.contains(**a)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not firing after {timeout:?}: {missing:?} (firing: {firing:?}); targets: {:#?}",
            prometheus.targets().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scale_operator(cluster: &DevCluster, deployment: &str, replicas: u32) {
    let out = cluster
        .kubectl_output(&[
            "scale",
            "deployment",
            "-n",
            RELEASE_NAMESPACE,
            deployment,
            &format!("--replicas={replicas}"),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_and_alert_returns_data_and_the_alerts_fire() {
    let started = Instant::now();
    let moto = emulators::moto();
    let cluster = DevCluster::builder()
        .image(
            "ghcr.io/ferry-dev/operator:*",
            [ferry_tests::workspace_binary("ferry-operator")
                .to_string_lossy()
                .to_string()],
        )
        .image(
            "ghcr.io/ferry-dev/consumer:*",
            [ferry_tests::workspace_binary("ferry-consumer")
                .to_string_lossy()
                .to_string()],
        )
        .image(
            "example.com/worker:*",
            [ferry_tests::workspace_binary("ferry-example-worker")
                .to_string_lossy()
                .to_string()],
        )
        .start()
        .await
        .expect("devcluster");
    let client = cluster.client();
    for namespace in [RELEASE_NAMESPACE, NAMESPACE] {
        let out = cluster
            .kubectl_output(&["create", "namespace", namespace])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    // The monitors and rules come from the same render; devcluster has no prometheus-operator
    // CRDs, so the release itself is installed without them.
    let values = values(&cluster);
    let rendered = helm::render(&values, "ferry", RELEASE_NAMESPACE).expect("render");
    let mut install_values = values.clone();
    install_values["metrics"]["serviceMonitor"]["enabled"] = json!(false);
    install_values["metrics"]["podMonitor"]["enabled"] = json!(false);
    install_values["prometheusRule"]["enabled"] = json!(false);
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    tokio::task::spawn_blocking(move || {
        helm::install(&install_values, "ferry", RELEASE_NAMESPACE, &kubeconfig)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("helm install failed: {e}"));

    let queue = ferry_tests::unique_name("prom");
    // Prometheus watches from before the consumer exists, so it sees the first scale-up.
    let missing_queue = format!("{}/000000000000/{}-missing", moto.url(), queue);
    let mut sidecar_b = Sidecar::start(
        &ferry_tests::workspace_binary("ferry-consumer"),
        &SidecarEnv::default()
            .set("FERRY_PROVIDER", "sqs")
            .set("FERRY_QUEUE", &missing_queue)
            .set("FERRY_ENDPOINT", moto.url())
            .set("AWS_REGION", "us-east-1")
            .set("FERRY_DELIVERY_URL", "http://127.0.0.1:9/"),
    );

    let rule = rendered.one("PrometheusRule");
    let rules = json!({"groups": rule["spec"]["groups"]});
    let config = scrape_config(&rendered, &sidecar_b);
    let prometheus = Prometheus::start(&config.to_string(), &rules.to_string());
    let discovery = keep_discovering(client.clone(), prometheus.dir.clone());

    let consumers = queue_consumers(client.clone());
    let down_file = std::env::temp_dir().join(format!("{queue}-worker-down"));
    consumers
        .create(&PostParams::default(), &consumer(&queue, &down_file))
        .await
        .expect("create the QueueConsumer");
    let queue_url = ferry_tests::eventually(
        Duration::from_secs(90),
        "the queue provisioned",
        async || {
            let qc = consumers.get(CONSUMER).await.ok()?;
            qc.data["status"]["queue"]["id"].as_str().map(String::from)
        },
    )
    .await;

    // Poison goes to the dead-letter queue at once (422); the rest is published faster than
    // two replicas at 300 ms per message can take, and waits longer than 0.1 s.
    let publisher = tokio::spawn({
        let queue_url = queue_url.clone();
        let endpoint = moto.url();
        async move {
            for round in 0..600 {
                let body = if round % 4 == 0 {
                    "poison order"
                } else {
                    "order"
                };
                let _ = publish(
                    Provider::Sqs,
                    Some(&endpoint),
                    &queue_url,
                    vec![
                        OutgoingMessage {
                            body: format!("{{\"{body}\":{round}}}").into_bytes(),
                            ..Default::default()
                        };
                        2
                    ],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    wait_firing(
        &prometheus,
        &[
            "FerryDeadLetterQueueNotEmpty",
            "FerryMessagesOlderThanTarget",
            "FerryWorkerFailureRatioHigh",
            "FerryBacklogGrowingAtMaxReplicas",
        ],
        Duration::from_secs(180),
    )
    .await;

    // A sidecar that stops answering. Not before Prometheus has scraped its queue API
    // errors twice: the dashboard's error panel is a rate, and the alerts above can fire
    // within seconds of Prometheus starting.
    ferry_tests::eventually(
        Duration::from_secs(60),
        "Prometheus has a rate of sidecar B's queue API errors",
        async || {
            let series = prometheus
                .query_range(
                    "rate(ferry_queue_api_errors_total[1m])",
                    started.elapsed() + Duration::from_secs(5),
                )
                .await
                .ok()?;
            (!series.is_empty()).then_some(())
        },
    )
    .await;
    sidecar_b.signal("KILL");
    let _ = sidecar_b.wait_exit(Duration::from_secs(10)).await;
    wait_firing(
        &prometheus,
        &["FerryScrapeTargetDown"],
        Duration::from_secs(60),
    )
    .await;

    // The operator scaled to zero over a tick of the periodic task (an upgrade or a drain
    // gone wrong): once it is back, the tick is past its one-second deadline and skipped.
    // First a tick is sent, so the dashboard has a last tick to show.
    ferry_tests::eventually(
        Duration::from_secs(90),
        "a tick of the periodic task sent",
        async || {
            let qc = consumers.get(CONSUMER).await.ok()?;
            qc.data["status"]["periodicTasks"][0]["lastScheduleTime"]
                .is_string()
                .then_some(())
        },
    )
    .await;
    let operator = rendered.one("Deployment")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    scale_operator(&cluster, &operator, 0).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    ferry_tests::eventually(
        Duration::from_secs(60),
        "the operator's pod gone",
        async || {
            pods.list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let next_tick = (now.as_secs() / 60 + 1) * 60;
    tokio::time::sleep(Duration::from_secs(next_tick - now.as_secs() + 3)).await;
    scale_operator(&cluster, &operator, 1).await;
    wait_firing(
        &prometheus,
        &["FerryPeriodicTaskSkipped"],
        Duration::from_secs(90),
    )
    .await;
    let qc = consumers.get(CONSUMER).await.expect("the QueueConsumer");
    // The skip stays recorded after the next tick is sent (the alert then ends).
    let task = &qc.data["status"]["periodicTasks"][0];
    assert!(task["lastSkippedTime"].is_string(), "{task}");

    // Suspended, as during an outage of what the worker calls: held at zero replicas while
    // messages keep arriving, and the alert says so.
    let set_suspend = async |suspend: bool| {
        consumers
            .patch(
                CONSUMER,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"suspend": suspend}})),
            )
            .await
            .expect("patch spec.suspend");
    };
    set_suspend(true).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    ferry_tests::eventually(
        Duration::from_secs(60),
        "the suspended consumer's worker at zero replicas",
        async || {
            let worker = deployments.get(&format!("{CONSUMER}-worker")).await.ok()?;
            (worker.spec.replicas == Some(0)).then_some(())
        },
    )
    .await;
    wait_firing(
        &prometheus,
        &["FerryConsumerSuspended"],
        Duration::from_secs(60),
    )
    .await;
    // Resumed: the waiting messages bring a worker back, whose sidecar Prometheus scrapes
    // again.
    set_suspend(false).await;
    ferry_tests::eventually(
        Duration::from_secs(90),
        "a resumed worker's sidecar scraped",
        async || {
            let series = prometheus
                .query(&format!("ferry_build_info{{queueconsumer=\"{CONSUMER}\"}}"))
                .await
                .ok()?;
            (!series.is_empty()).then_some(())
        },
    )
    .await;

    // What the worker depends on goes away: a sidecar that was receiving holds receiving
    // after the next failed delivery, and says so. (A pod that starts during the outage
    // waits for its worker as for any worker that starts: not the same signal.)
    // Asked of the pods that run now: Prometheus still holds the last samples of the pods
    // the suspension removed, which were receiving.
    let worker_pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    ferry_tests::eventually(
        Duration::from_secs(60),
        "a resumed sidecar receiving",
        async || {
            let running = worker_pods
                .list(
                    &kube::api::ListParams::default()
                        .labels(&format!("ferry.dev/queue-consumer={CONSUMER}")),
                )
                .await
                .ok()?;
            for pod in running.items {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = pod.metadata.name.unwrap_or_default();
                let ready = prometheus
                    .query(&format!("ferry_ready{{pod=\"{name}\"}} == 1"))
                    .await
                    .ok()?;
                if !ready.is_empty() {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    std::fs::write(&down_file, "").expect("take the worker's dependency away");
    publish(
        Provider::Sqs,
        Some(&moto.url()),
        &queue_url,
        vec![OutgoingMessage {
            body: b"{\"during\":\"outage\"}".to_vec(),
            ..Default::default()
        }],
    )
    .await
    .expect("publish during the outage");
    wait_firing(
        &prometheus,
        &["FerryWorkerUnavailable"],
        Duration::from_secs(60),
    )
    .await;
    std::fs::remove_file(&down_file).expect("bring the dependency back");

    // The variables offer exactly this consumer, so no query needs editing. (Asked here,
    // while it exists: its deletion below drops the operator's series, and its idle worker
    // may be gone by the end.)
    let consumers_offered = prometheus
        .query(&substitute(
            "group by (queueconsumer) (ferry_consumer_max_replicas{namespace=~\"$namespace\"}) or group by (queueconsumer) (ferry_build_info{namespace=~\"$namespace\", queueconsumer!=\"\"})",
        ))
        .await
        .unwrap();
    assert!(
        consumers_offered
            .iter()
            .any(|s| s["metric"]["queueconsumer"] == CONSUMER),
        "{consumers_offered:?}"
    );

    // Deleting a Delete-policy consumer whose dead-letter queue holds messages fails, and
    // keeps failing, until forced.
    consumers
        .delete(CONSUMER, &DeleteParams::default())
        .await
        .expect("delete the QueueConsumer");
    wait_firing(
        &prometheus,
        &["FerryOperatorReconcileErrors"],
        Duration::from_secs(60),
    )
    .await;
    // A few more scrapes and evaluations, so every window holds samples on both sides of
    // the last change.
    tokio::time::sleep(Duration::from_secs(5)).await;
    publisher.abort();
    discovery.abort();

    // Every query over the whole scenario, as the dashboard shows it.
    let window = started.elapsed() + Duration::from_secs(5);
    let mut without_data = Vec::new();
    for (place, expr) in dashboard_queries() {
        match prometheus.query_range(&expr, window).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => without_data.push(format!("{place}: {expr}")),
            Err(error) => without_data.push(format!("{place}: {expr}: {error}")),
        }
    }
    for rule in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        match prometheus.query_range(expr, window).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => without_data.push(format!("alert {}: {expr}", rule["alert"])),
            Err(error) => without_data.push(format!("alert {}: {expr}: {error}", rule["alert"])),
        }
    }
    assert!(
        without_data.is_empty(),
        "queries that returned no data:\n{}",
        without_data.join("\n")
    );

    // Let the consumer go, dead letters and all, so the cluster shuts down clean.
    let _ = consumers
        .patch(
            CONSUMER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"forceDelete": true}})),
        )
        .await;
    cluster.shutdown().await;
}

//! The Helm chart through Helm's own engine: `helm lint --strict`, rendering with the
//! defaults and with every optional part on, the values schema, and what the rendered objects
//! promise (least-privilege RBAC, the restricted Pod Security Standard, the CRD, the
//! monitors, the alert rules and the dashboard).

use std::collections::BTreeSet;

use ferry_tests::helm::{self, Rendered};
use ferry_tests::repo_root;
use serde_json::{Value, json};

const NAMESPACE: &str = "ferry-system";

fn defaults() -> Rendered {
    helm::render(&json!({}), "ferry", NAMESPACE).expect("the defaults render")
}

/// Every optional part on, identities and endpoints set, watching two namespaces.
fn everything_on() -> Value {
    json!({
        "operator": {"replicas": 3},
        "serviceAccount": {"annotations": {"example.com/team": "platform"}},
        "cloud": {
            "aws": {"roleArn": "arn:aws:iam::123456789012:role/ferry-operator", "region": "eu-west-1", "sqsEndpoint": "http://sqs.local:4566"},
            "gcp": {"serviceAccount": "ferry-operator@my-project.iam.gserviceaccount.com", "project": "my-project", "pubsubEmulatorHost": "pubsub-emulator:8085"}
        },
        "workers": {"serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "workers@my-project.iam.gserviceaccount.com"}}},
        "rbac": {"watchNamespaces": ["shop", "billing"]},
        "metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": true, "labels": {"release": "prometheus"}}
        },
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
        "dashboard": {"enabled": true, "annotations": {"grafana_folder": "Ferry"}}
    })
}

fn all_on() -> Rendered {
    helm::render(&everything_on(), "ferry", NAMESPACE).expect("every optional part renders")
}

#[test]
fn lint_strict_passes_with_defaults_and_with_everything_on() {
    for values in [json!({}), everything_on()] {
        let findings = helm::lint(&values);
        let serious: Vec<_> = findings.iter().filter(|(s, _, _)| *s >= 2).collect();
        assert!(
            serious.is_empty(),
            "helm lint --strict with {values}: {serious:#?}"
        );
    }
}

fn env_of(deployment: &Value) -> Vec<(String, Value)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

fn env_value(deployment: &Value, name: &str) -> Option<String> {
    env_of(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(String::from))
}

#[test]
fn defaults_give_two_leader_elected_operators_with_a_budget_and_probes() {
    let rendered = defaults();
    let kinds: BTreeSet<String> = rendered
        .objects()
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        kinds, expected,
        "monitors, rules and the dashboard are off by default"
    );

    let deployment = rendered.one("Deployment");
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        env_value(&deployment, "MALLOC_ARENA_MAX").as_deref(),
        Some(ferry_tests::scalebench::operator::CHART_MALLOC_ARENA_MAX),
        "the scale benchmark runs the operator with the chart's arena cap"
    );
    assert_eq!(
        env_value(&deployment, "FERRY_LEADER_ELECTION").as_deref(),
        Some("true")
    );
    assert_eq!(
        env_value(&deployment, "FERRY_WATCH_NAMESPACE"),
        None,
        "cluster-wide"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/ferry-dev/operator:0.1.0");
    assert_eq!(
        env_value(&deployment, "FERRY_SIDECAR_IMAGE").as_deref(),
        Some("ghcr.io/ferry-dev/consumer:0.1.0"),
        "the sidecar image follows the chart's appVersion"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"], "/healthz",
            "{probe}: /readyz is 200 on the leader only and would stall rollouts"
        );
    }
    for (field, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            container["resources"][field][key].is_string(),
            "resources.{field}.{key}"
        );
    }
    // The pods' namespace and name come from the downward API, for the Lease and Events.
    for (name, path) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        let (_, var) = env_of(&deployment)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap();
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
    }

    let pdb = rendered.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // One replica without an election: no budget (it would block every drain), no Lease rights.
    let single = helm::render(
        &json!({"operator": {"replicas": 1, "leaderElection": false}}),
        "ferry",
        NAMESPACE,
    )
    .expect("one replica without an election renders");
    assert!(single.of_kind("PodDisruptionBudget").is_empty());
    assert_eq!(
        grants(&single, "Role"),
        control_key_grants(),
        "the control key's, not the Lease's"
    );
    assert_eq!(
        env_value(&single.one("Deployment"), "FERRY_LEADER_ELECTION").as_deref(),
        Some("false")
    );
}

/// `(apiGroup, resource, verb)` granted, with `resourceNames` when the rule names objects.
fn grants(rendered: &Rendered, kind: &str) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for role in rendered.of_kind(kind) {
        for rule in role["rules"].as_array().expect("rules") {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            let names = list("resourceNames").join(",");
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        out.insert((group.clone(), resource.clone(), verb, names.clone()));
                    }
                }
            }
        }
    }
    out
}

fn grant_set(rows: &[(&str, &str, &[&str], &str)]) -> BTreeSet<(String, String, String, String)> {
    rows.iter()
        .flat_map(|(group, resource, verbs, names)| {
            verbs.iter().map(move |verb| {
                (
                    group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                    names.to_string(),
                )
            })
        })
        .collect()
}

/// What the operator calls (operator/src: the controller, its finalizer, status writes,
/// server-side apply of the children, Events, the autoscaler's scale writes and pod
/// deletion costs) and nothing more.
fn consumer_grants() -> BTreeSet<(String, String, String, String)> {
    grant_set(&[
        (
            "ferry.dev",
            "queueconsumers",
            &["get", "list", "watch", "patch"],
            "",
        ),
        ("ferry.dev", "queueconsumers/status", &["get", "patch"], ""),
        ("ferry.dev", "queueconsumers/finalizers", &["update"], ""),
        (
            "apps",
            "deployments",
            &["get", "list", "watch", "create", "patch"],
            "",
        ),
        ("apps", "deployments/scale", &["get", "patch", "update"], ""),
        (
            "",
            "serviceaccounts",
            &["get", "create", "patch", "delete"],
            "",
        ),
        ("", "secrets", &["create", "patch"], ""),
        ("", "pods", &["get", "list", "watch", "patch"], ""),
        ("", "events", &["create", "patch"], ""),
        ("events.k8s.io", "events", &["create", "patch"], ""),
    ])
}

fn lease_grants() -> BTreeSet<(String, String, String, String)> {
    grant_set(&[
        ("coordination.k8s.io", "leases", &["create"], ""),
        (
            "coordination.k8s.io",
            "leases",
            &["get", "update"],
            "ferry-operator",
        ),
    ])
}

/// The control key's Secret in the operator's namespace: made once, then only that one read.
fn control_key_grants() -> BTreeSet<(String, String, String, String)> {
    grant_set(&[
        ("", "secrets", &["create"], ""),
        ("", "secrets", &["get"], "ferry-operator-control-key"),
    ])
}

fn assert_no_wildcards(rendered: &Rendered) {
    for kind in ["ClusterRole", "Role"] {
        for (group, resource, verb, _) in grants(rendered, kind) {
            assert!(
                !group.contains('*') && !resource.contains('*') && !verb.contains('*'),
                "{kind} grants a wildcard: {group}/{resource} {verb}"
            );
        }
    }
}

#[test]
fn rbac_grants_exactly_what_the_operator_calls_cluster_wide() {
    let rendered = defaults();
    assert_no_wildcards(&rendered);
    assert_eq!(grants(&rendered, "ClusterRole"), consumer_grants());
    assert_eq!(
        grants(&rendered, "Role"),
        &lease_grants() | &control_key_grants()
    );
    for role in rendered.of_kind("Role") {
        assert_eq!(
            role["metadata"]["namespace"], NAMESPACE,
            "the Lease and the control key live in the operator's namespace"
        );
    }
    let deployment = rendered.one("Deployment");
    assert_eq!(
        env_value(&deployment, "FERRY_CONTROL_KEY_SECRET").as_deref(),
        Some("ferry-operator-control-key"),
        "the operator is told the Secret its Role lets it read"
    );

    let account = rendered.one("ServiceAccount");
    let account_name = account["metadata"]["name"].clone();
    let deployment = rendered.one("Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        account_name
    );
    for binding in rendered
        .of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(rendered.of_kind("RoleBinding"))
    {
        assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(binding["subjects"][0]["name"], account_name);
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    }
}

#[test]
fn rbac_for_listed_namespaces_is_a_role_in_each_and_nothing_cluster_wide() {
    let rendered = all_on();
    assert_no_wildcards(&rendered);
    assert!(rendered.of_kind("ClusterRole").is_empty());
    assert!(rendered.of_kind("ClusterRoleBinding").is_empty());
    let roles = rendered.of_kind("Role");
    let mut namespaces: Vec<&str> = roles
        .iter()
        .filter(|r| r["metadata"]["name"] == "ferry-operator")
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["billing", "shop"]);
    for namespace in ["shop", "billing"] {
        let in_namespace = Rendered {
            manifests: [(
                "roles.yaml".to_string(),
                roles
                    .iter()
                    .filter(|r| {
                        r["metadata"]["namespace"] == namespace
                            && r["metadata"]["name"] == "ferry-operator"
                    })
                    .map(|r| format!("---\n{r}\n"))
                    .collect(),
            )]
            .into(),
            crds: Default::default(),
        };
        assert_eq!(
            grants(&in_namespace, "Role"),
            consumer_grants(),
            "{namespace}"
        );
        assert!(
            rendered.of_kind("RoleBinding").iter().any(|b| {
                b["metadata"]["namespace"] == namespace && b["roleRef"]["name"] == "ferry-operator"
            }),
            "a RoleBinding in {namespace}"
        );
    }
    assert_eq!(
        env_value(&rendered.one("Deployment"), "FERRY_WATCH_NAMESPACE").as_deref(),
        Some("shop,billing")
    );
}

/// The "restricted" Pod Security Standard, as Kubernetes' PodSecurity admission checks it
/// (devcluster's copy of its checks, which also guards the namespaces of the live tests).
fn assert_restricted(pod: &Value, who: &str) {
    let found = ferry_devcluster::pod_security::violations(
        ferry_devcluster::pod_security::Level::Restricted,
        pod,
    );
    assert!(found.is_empty(), "{who}: {found:#?}");
}

#[test]
fn operator_pods_meet_the_restricted_pod_security_standard() {
    for rendered in [defaults(), all_on()] {
        let deployment = rendered.one("Deployment");
        assert_restricted(&deployment["spec"]["template"]["spec"], "operator");
    }
}

#[test]
fn the_chart_installs_the_generated_crd_byte_for_byte_and_keeps_it() {
    let generated = std::fs::read(repo_root().join("crds/queueconsumer.yaml")).unwrap();
    let in_chart = std::fs::read(repo_root().join("charts/ferry/crds/queueconsumer.yaml"))
        .expect("charts/ferry/crds/queueconsumer.yaml");
    assert!(
        generated == in_chart,
        "charts/ferry/crds/queueconsumer.yaml differs from crds/queueconsumer.yaml; copy it: cp crds/queueconsumer.yaml charts/ferry/crds/"
    );
    let rendered = defaults();
    assert_eq!(
        rendered.crds.keys().collect::<Vec<_>>(),
        ["crds/queueconsumer.yaml"]
    );
    assert_eq!(
        rendered.crds["crds/queueconsumer.yaml"].as_bytes(),
        generated.as_slice(),
        "Helm installs what crds/ holds"
    );
    let crd: Value = serde_saphyr::from_str(&rendered.crds["crds/queueconsumer.yaml"]).unwrap();
    assert_eq!(crd["metadata"]["name"], "queueconsumers.ferry.dev");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstalling must never delete every QueueConsumer with the CRD"
    );
    assert!(
        rendered
            .objects()
            .iter()
            .all(|o| o["kind"] != "CustomResourceDefinition"),
        "the CRD comes from crds/, not from a template"
    );
}

#[test]
fn cloud_identities_and_endpoints_reach_the_operator_and_the_workers() {
    let rendered = all_on();
    let account = rendered.one("ServiceAccount");
    let annotations = &account["metadata"]["annotations"];
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/ferry-operator"
    );
    assert_eq!(
        annotations["iam.gke.io/gcp-service-account"],
        "ferry-operator@my-project.iam.gserviceaccount.com"
    );
    assert_eq!(annotations["example.com/team"], "platform");

    let deployment = rendered.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    for (name, value) in [
        ("FERRY_SQS_ENDPOINT", "http://sqs.local:4566"),
        ("PUBSUB_EMULATOR_HOST", "pubsub-emulator:8085"),
        ("FERRY_PUBSUB_PROJECT", "my-project"),
        ("AWS_REGION", "eu-west-1"),
    ] {
        assert_eq!(
            env_value(&deployment, name).as_deref(),
            Some(value),
            "{name}"
        );
    }
    let worker_annotations: Value = serde_json::from_str(
        &env_value(&deployment, "FERRY_WORKER_SERVICE_ACCOUNT_ANNOTATIONS")
            .expect("worker ServiceAccount defaults"),
    )
    .expect("a JSON object");
    assert_eq!(
        worker_annotations,
        json!({"iam.gke.io/gcp-service-account": "workers@my-project.iam.gserviceaccount.com"})
    );
}

#[test]
fn monitors_scrape_the_operator_with_its_labels_and_every_consumers_sidecar() {
    let rendered = all_on();
    let service = rendered.one("Service");
    let monitor = rendered.one("ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(
        endpoint["honorLabels"], true,
        "per-consumer series carry their own namespace"
    );

    let pods = rendered.one("PodMonitor");
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "ferry"
    );
    assert_eq!(
        pods["spec"]["selector"]["matchExpressions"][0]["key"],
        "ferry.dev/queue-consumer"
    );
    assert_eq!(
        pods["spec"]["namespaceSelector"]["matchNames"],
        json!(["shop", "billing"])
    );
    let endpoint = &pods["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        endpoint["port"], "metrics",
        "the sidecar's port name (ferry_operator::builders::METRICS_PORT_NAME)"
    );
    assert!(
        endpoint["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["targetLabel"] == "queueconsumer"
                && r["sourceLabels"]
                    == json!(["__meta_kubernetes_pod_label_ferry_dev_queue_consumer"])),
        "the QueueConsumer's name becomes the queueconsumer label"
    );

    let cluster_wide = helm::render(
        &json!({"metrics": {"podMonitor": {"enabled": true}}}),
        "ferry",
        NAMESPACE,
    )
    .unwrap();
    assert_eq!(
        cluster_wide.one("PodMonitor")["spec"]["namespaceSelector"],
        json!({"any": true})
    );
}

/// The anchors GitHub gives the headings of docs/operations.md.
fn runbook_anchors() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section() {
    let rendered = all_on();
    let rule = rendered.one("PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "FerryDeadLetterQueueNotEmpty",
            "FerryMessagesOlderThanTarget",
            "FerryBacklogGrowingAtMaxReplicas",
            "FerryWorkerFailureRatioHigh",
            "FerryWorkerUnavailable",
            "FerryOperatorReconcileErrors",
            "FerryScrapeTargetDown",
            "FerryPeriodicTaskSkipped",
            "FerryConsumerSuspended",
        ]
    );
    let anchors = runbook_anchors();
    for rule in rules {
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').expect("an anchor").1;
        assert!(
            url.contains("docs/operations.md#") && anchors.contains(anchor),
            "{url}: no such section in docs/operations.md"
        );
        assert!(rule["labels"]["severity"].is_string());
        assert!(
            rule["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("{{"),
            "Prometheus templates survive Helm's"
        );
    }
    // Each alert can be switched off on its own.
    let off = helm::render(
        &json!({"prometheusRule": {"enabled": true, "alerts": {"scrapeTargetDown": {"enabled": false}}}}),
        "ferry",
        NAMESPACE,
    )
    .unwrap();
    let rules = off.one("PrometheusRule")["spec"]["groups"][0]["rules"].clone();
    assert_eq!(rules.as_array().unwrap().len(), names.len() - 1);
    assert!(!rules.to_string().contains("FerryScrapeTargetDown"));
}

#[test]
fn the_dashboard_configmap_is_the_dashboard_file_for_grafanas_sidecar() {
    let rendered = all_on();
    let config_map = rendered.one("ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Ferry"
    );
    let file = std::fs::read_to_string(repo_root().join("charts/ferry/dashboards/ferry.json"))
        .expect("the dashboard file");
    let from_chart: Value =
        serde_json::from_str(config_map["data"]["ferry.json"].as_str().unwrap())
            .expect("the ConfigMap holds JSON");
    let from_file: Value = serde_json::from_str(&file).expect("the file is JSON");
    assert_eq!(from_chart, from_file);
}

#[test]
fn bad_values_fail_the_install_with_a_message_naming_them() {
    let cases = [
        (
            json!({"operator": {"replicas": "two"}}),
            "/operator/replicas",
        ),
        (json!({"operatr": {"replicas": 2}}), "operatr"),
        (
            json!({"cloud": {"aws": {"roleArn": "ferry-operator"}}}),
            "/cloud/aws/roleArn",
        ),
        (
            json!({"cloud": {"gcp": {"serviceAccount": "ferry-operator"}}}),
            "/cloud/gcp/serviceAccount",
        ),
        (
            json!({"rbac": {"watchNamespaces": ["Shop_Floor"]}}),
            "/rbac/watchNamespaces/0",
        ),
        (
            json!({"operator": {"image": {"pullPolicy": "Sometimes"}}}),
            "/operator/image/pullPolicy",
        ),
        (
            json!({"prometheusRule": {"alerts": {"deadLetterNotEmpty": {"for": "five minutes"}}}}),
            "/prometheusRule/alerts/deadLetterNotEmpty/for",
        ),
        (
            json!({"workers": {"serviceAccount": {"annotations": {"a": 1}}}}),
            "/workers/serviceAccount/annotations/a",
        ),
        // Combinations the schema cannot express fail in the templates, as clearly.
        (
            json!({"operator": {"leaderElection": false}}),
            "operator.leaderElection: false needs operator.replicas: 1",
        ),
        (
            json!({"operator": {"podDisruptionBudget": {"minAvailable": 2}}}),
            "minAvailable must be below operator.replicas",
        ),
    ];
    for (values, named) in cases {
        let error = match helm::render(&values, "ferry", NAMESPACE) {
            Ok(_) => panic!("{values} was accepted"),
            Err(error) => error,
        };
        assert!(
            error.contains(named),
            "the error for {values} should name {named:?}: {error}"
        );
    }
}

/// Every `ferry_*` series name a PromQL expression reads.
fn series_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ferry_"))
        .map(String::from)
        .collect()
}

#[test]
fn the_dashboard_reads_documented_series_scoped_to_the_chosen_consumers() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/ferry/dashboards/ferry.json")).unwrap(),
    )
    .unwrap();
    let documented = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "queueconsumer"]);

    let mut read = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = series_names(expr);
            for name in &names {
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                assert!(
                    documented.contains(&format!("`{base}`")),
                    "{name} ({}) is not in docs/metrics.md",
                    panel["title"]
                );
            }
            let operator_wide = names.iter().all(|n| n.starts_with("ferry_reconcile_"));
            if !operator_wide {
                assert!(
                    expr.contains("namespace=~\"$namespace\"")
                        && expr.contains("queueconsumer=~\"$queueconsumer\""),
                    "{}: {expr} ignores the namespace/consumer variables",
                    panel["title"]
                );
            }
            read.extend(names);
        }
    }
    for wanted in [
        "ferry_queue_messages",
        "ferry_message_age_seconds_bucket",
        "ferry_messages_received_total",
        "ferry_messages_completed_total",
        "ferry_dead_letter_messages",
        "ferry_delivery_duration_seconds_bucket",
        "ferry_consumer_backlog",
        "ferry_consumer_replicas",
        "ferry_scaling_decisions_total",
        "ferry_queue_api_errors_total",
        "ferry_reconcile_errors_total",
    ] {
        assert!(read.contains(wanted), "no panel shows {wanted}");
    }
}

//! The desired children of example QueueConsumers.

use ferry_crds::QueueConsumer;
use k8s_openapi::api::core::v1::{Container, EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::*;

fn consumer(spec: serde_json::Value) -> QueueConsumer {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 3},
        "spec": spec,
    }))
    .unwrap()
}

fn sqs_consumer() -> QueueConsumer {
    consumer(json!({
        "queue": {"provider": "sqs", "sqs": {"region": "eu-west-1"}},
        "worker": {
            "metadata": {"labels": {"team": "shop"}, "annotations": {"note": "kept"}},
            "spec": {"containers": [{"name": "worker", "image": "shop/orders:1"}]},
        },
        "delivery": {"path": "/jobs", "port": 3000, "concurrency": 20, "timeoutSeconds": 45,
                     "permanentFailureStatuses": [422, 400],
                     "retryBackoff": {"minSeconds": 0.5, "maxSeconds": 60}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/orders"}},
    }))
}

fn names() -> ProvisionedNames {
    ProvisionedNames {
        queue: "http://127.0.0.1:5000/000000000000/shop-orders".into(),
        dead_letter: Some("http://127.0.0.1:5000/000000000000/shop-orders-dead-letter".into()),
        dead_letter_topic: None,
    }
}

fn settings() -> OperatorSettings {
    OperatorSettings {
        sqs_endpoint: Some("http://127.0.0.1:5000".into()),
        pubsub_endpoint: Some("127.0.0.1:8085".into()),
        ..OperatorSettings::new("ghcr.io/ferry-dev/ferry-consumer:0.1.0")
    }
}

fn containers(qc: &QueueConsumer) -> Vec<Container> {
    let d = desired_deployment(qc, &settings(), &names()).unwrap();
    d.spec.template.spec.unwrap().containers
}

fn env_value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn the_sidecar_is_configured_per_its_contract() {
    let env = sidecar_env(&sqs_consumer(), &settings(), &names());
    let expect = [
        ("FERRY_PROVIDER", "sqs"),
        (
            "FERRY_QUEUE",
            "http://127.0.0.1:5000/000000000000/shop-orders",
        ),
        (
            "FERRY_DEAD_LETTER",
            "http://127.0.0.1:5000/000000000000/shop-orders-dead-letter",
        ),
        ("FERRY_ENDPOINT", "http://127.0.0.1:5000"),
        ("FERRY_DELIVERY_URL", "http://127.0.0.1:3000/jobs"),
        ("FERRY_CONCURRENCY", "20"),
        ("FERRY_THREADS", "1"),
        ("FERRY_DELIVERY_TIMEOUT", "45"),
        ("FERRY_CONTENT_TYPE", "application/json"),
        ("FERRY_PERMANENT_FAILURE_STATUSES", "400,422"),
        ("FERRY_RETRY_BACKOFF_MIN", "0.5"),
        ("FERRY_RETRY_BACKOFF_MAX", "60"),
        ("FERRY_DRAIN_TIMEOUT", "45"),
        ("FERRY_STATS_INTERVAL", "5"),
        ("FERRY_LISTEN_ADDR", "0.0.0.0:9090"),
        ("FERRY_LOG_FORMAT", "json"),
        ("AWS_REGION", "eu-west-1"),
    ];
    for (name, value) in expect {
        assert_eq!(env_value(&env, name), Some(value), "{name}");
    }
    let from_secret = [
        ("FERRY_CONTROL_TOKEN", CONTROL_TOKEN_KEY, None),
        ("FERRY_RATE_LIMIT", RATE_LIMIT_KEY, Some(true)),
    ];
    for (name, key, optional) in from_secret {
        let reference = env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{name} from the sidecar Secret: {env:?}"));
        assert_eq!(
            (
                reference.name.as_str(),
                reference.key.as_str(),
                reference.optional
            ),
            ("orders-ferry-sidecar", key, optional),
            "{name}"
        );
    }
    assert_eq!(
        env.len(),
        expect.len() + from_secret.len(),
        "no variable beyond the contract: {env:?}"
    );
}

#[test]
fn optional_sidecar_settings_are_left_out_when_unset() {
    let qc = consumer(json!({
        "queue": {"provider": "pubsub"},
        "worker": {"spec": {"containers": [{"name": "w", "image": "w"}]}},
    }));
    let names = ProvisionedNames {
        queue: "projects/p/subscriptions/shop-orders".into(),
        dead_letter: None,
        dead_letter_topic: Some("projects/p/topics/shop-orders-dead-letter".into()),
    };
    let env = sidecar_env(&qc, &OperatorSettings::new("img"), &names);
    assert_eq!(env_value(&env, "FERRY_PROVIDER"), Some("pubsub"));
    assert_eq!(
        env_value(&env, "FERRY_DELIVERY_URL"),
        Some("http://127.0.0.1:8080/")
    );
    assert_eq!(
        env_value(&env, "FERRY_DEAD_LETTER_TOPIC"),
        Some("projects/p/topics/shop-orders-dead-letter")
    );
    for absent in [
        "FERRY_DEAD_LETTER",
        "FERRY_ENDPOINT",
        "FERRY_PERMANENT_FAILURE_STATUSES",
        "FERRY_RATE_LIMIT",
        "AWS_REGION",
    ] {
        assert_eq!(env_value(&env, absent), None, "{absent}");
    }
}

#[test]
fn the_worker_readiness_path_is_the_spec_s_or_the_worker_s_readiness_probe_on_the_delivery_port() {
    let with_probe = |probe: serde_json::Value, ports: serde_json::Value| {
        consumer(json!({
            "queue": {"provider": "sqs"},
            "delivery": {"port": 3000},
            "worker": {"spec": {"containers": [
                {"name": "side", "image": "s"},
                {"name": "w", "image": "w", "ports": ports, "readinessProbe": probe},
            ]}},
        }))
    };
    let path = |qc: &QueueConsumer| {
        env_value(
            &sidecar_env(qc, &settings(), &names()),
            "FERRY_WORKER_READINESS_PATH",
        )
        .map(str::to_string)
    };
    let get = |get: serde_json::Value| json!({"httpGet": get});
    assert_eq!(
        path(&with_probe(
            get(json!({"path": "/ready", "port": 3000})),
            json!([])
        )),
        Some("/ready".into())
    );
    assert_eq!(
        path(&with_probe(
            get(json!({"path": "/up", "port": "http"})),
            json!([{"name": "http", "containerPort": 3000}])
        )),
        Some("/up".into())
    );
    assert_eq!(
        path(&with_probe(get(json!({"port": 3000})), json!([]))),
        Some("/".into()),
        "the probe's default path"
    );
    for not_usable in [
        get(json!({"path": "/ready", "port": 3001})),
        get(json!({"path": "/ready", "port": 3000, "scheme": "HTTPS"})),
        get(json!({"path": "/ready", "port": 3000, "host": "10.0.0.1"})),
        get(
            json!({"path": "/ready", "port": 3000, "httpHeaders": [{"name": "X-Token", "value": "t"}]}),
        ),
        json!({"tcpSocket": {"port": 3000}}),
    ] {
        assert_eq!(
            path(&with_probe(not_usable.clone(), json!([]))),
            None,
            "{not_usable}"
        );
    }
    // The spec's own path wins.
    let mut qc = with_probe(get(json!({"path": "/ready", "port": 3000})), json!([]));
    qc.spec.delivery.readiness_path = Some("/warm".into());
    assert_eq!(path(&qc), Some("/warm".into()));
    // None at all without either.
    assert_eq!(path(&sqs_consumer()), None);
}

#[test]
fn extra_env_comes_after_ferrys_own() {
    let mut s = settings();
    s.sidecar_extra_env.push(EnvVar {
        name: "AWS_ACCESS_KEY_ID".into(),
        value: Some("test".into()),
        value_from: None,
    });
    let env = sidecar_env(&sqs_consumer(), &s, &names());
    assert_eq!(env.last().unwrap().name, "AWS_ACCESS_KEY_ID");
}

#[test]
fn the_deployment_is_named_labelled_owned_and_leaves_replicas_to_the_autoscaler() {
    let qc = sqs_consumer();
    let d = desired_deployment(&qc, &settings(), &names()).unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("orders-worker"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("shop"));
    let labels = d.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[MANAGED_BY_LABEL], "ferry");
    assert_eq!(labels[QUEUE_CONSUMER_LABEL], "orders");
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "QueueConsumer");
    assert_eq!(owner.api_version, "ferry.dev/v1alpha1");
    assert_eq!(owner.uid, "uid-1");
    assert_eq!(owner.controller, Some(true));
    let spec = d.spec;
    assert_eq!(spec.replicas, None);
    assert_eq!(spec.selector.match_labels, Some(selector_labels(&qc)));
    let meta = spec.template.metadata.unwrap();
    let pod_labels = meta.labels.unwrap();
    assert_eq!(pod_labels["team"], "shop");
    assert_eq!(pod_labels[QUEUE_CONSUMER_LABEL], "orders");
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["note"], "kept");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "worker"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-worker"));
    // Drain (the delivery timeout, 45 s) plus the margin for the containers to exit.
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
}

#[test]
fn the_sidecar_has_probes_a_drain_hook_a_metrics_port_and_resources() {
    let all = containers(&sqs_consumer());
    assert_eq!(all.len(), 2);
    let sidecar = &all[1];
    assert_eq!(sidecar.name, SIDECAR_NAME);
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/ferry-dev/ferry-consumer:0.1.0")
    );
    let port = &sidecar.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some(METRICS_PORT_NAME), METRICS_PORT)
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(path(&sidecar.readiness_probe), READINESS_PATH);
    assert_eq!(path(&sidecar.liveness_probe), LIVENESS_PATH);
    assert_eq!(
        sidecar.lifecycle, None,
        "no hook: the kubelet's SIGTERM starts the drain at once"
    );
    let resources = sidecar.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
}

#[test]
fn spec_sidecar_overrides_image_and_resources() {
    let mut qc = sqs_consumer();
    qc.spec.sidecar = serde_json::from_value(json!({
        "image": "registry.local/ferry-consumer:dev",
        "resources": {"requests": {"cpu": "10m"}},
    }))
    .unwrap();
    let sidecar = containers(&qc).pop().unwrap();
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.local/ferry-consumer:dev")
    );
    let resources = sidecar.resources.unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"].0, "10m");
    assert_eq!(resources.limits, None);
}

#[test]
fn the_sidecar_runs_a_thread_per_whole_cpu_it_is_given() {
    let resources = |value: serde_json::Value| -> ResourceRequirements {
        serde_json::from_value(value).unwrap()
    };
    let threads = |value| sidecar_threads(&resources(value));
    assert_eq!(threads(json!({})), 1);
    assert_eq!(threads(json!({"requests": {"cpu": "50m"}})), 1);
    assert_eq!(threads(json!({"requests": {"cpu": "1500m"}})), 1);
    assert_eq!(threads(json!({"requests": {"cpu": "2"}})), 2);
    // The limit is what the sidecar may use; a request above it cannot be scheduled anyway.
    assert_eq!(
        threads(json!({"requests": {"cpu": "4"}, "limits": {"cpu": "2.5"}})),
        2
    );
    assert_eq!(threads(json!({"limits": {"cpu": "8000m"}})), 8);
    assert_eq!(threads(json!({"limits": {"cpu": "500"}})), 64);

    let mut qc = sqs_consumer();
    qc.spec.sidecar =
        serde_json::from_value(json!({"resources": {"limits": {"cpu": "3"}}})).unwrap();
    let env = sidecar_env(&qc, &settings(), &names());
    assert_eq!(env_value(&env, "FERRY_THREADS"), Some("3"));
}

#[test]
fn restricted_security_is_the_default_and_user_choices_stay() {
    let qc = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {
            "securityContext": {"runAsUser": 1000},
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [
                {"name": "worker", "image": "w"},
                {"name": "helper", "image": "h", "securityContext": {
                    "allowPrivilegeEscalation": true,
                    "capabilities": {"add": ["NET_BIND_SERVICE"]},
                }},
            ],
        }},
    }));
    let d = desired_deployment(&qc, &settings(), &names()).unwrap();
    let pod = d.spec.template.spec.unwrap();
    let pod_ctx = pod.security_context.unwrap();
    assert_eq!(pod_ctx.run_as_user, Some(1000));
    assert_eq!(pod_ctx.run_as_non_root, Some(true));
    assert_eq!(pod_ctx.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let ctx = |c: &Container| c.security_context.clone().unwrap();
    let init = ctx(&pod.init_containers.unwrap()[0]);
    assert_eq!(init.allow_privilege_escalation, Some(false));
    let worker = ctx(&pod.containers[0]);
    assert_eq!(worker.allow_privilege_escalation, Some(false));
    assert_eq!(
        worker.capabilities.unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    let helper = ctx(&pod.containers[1]);
    assert_eq!(helper.allow_privilege_escalation, Some(true));
    let caps = helper.capabilities.unwrap();
    assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let sidecar = ctx(&pod.containers[2]);
    assert_eq!(sidecar.run_as_non_root, Some(true));
    assert_eq!(sidecar.allow_privilege_escalation, Some(false));
    assert_eq!(sidecar.read_only_root_filesystem, Some(true));
    assert_eq!(
        sidecar.capabilities.unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(sidecar.seccomp_profile.unwrap().type_, "RuntimeDefault");

    // What a namespace enforcing `restricted` would say of it: only the user's own choice.
    let found = restricted_violations(&qc);
    assert_eq!(
        found,
        [
            r#"allowPrivilegeEscalation != false (container "helper" must set securityContext.allowPrivilegeEscalation=false)"#
        ]
    );
}

/// The checks of Kubernetes' PodSecurity admission at the `restricted` level (devcluster's
/// copy of them) that the worker Deployment's pod template fails.
fn restricted_violations(qc: &QueueConsumer) -> Vec<String> {
    let d = desired_deployment(qc, &settings(), &names()).unwrap();
    let spec = serde_json::to_value(d.spec.template.spec.unwrap()).unwrap();
    ferry_devcluster::pod_security::violations(
        ferry_devcluster::pod_security::Level::Restricted,
        &spec,
    )
}

#[test]
fn a_worker_that_sets_nothing_is_admitted_where_restricted_is_enforced() {
    for provider in ["sqs", "pubsub"] {
        let qc = consumer(json!({
            "queue": {"provider": provider},
            "worker": {"spec": {
                "initContainers": [{"name": "migrate", "image": "m"}],
                "containers": [{"name": "worker", "image": "w", "ports": [{"containerPort": 8080}]}],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            }},
        }));
        assert_eq!(
            restricted_violations(&qc),
            Vec::<String>::new(),
            "{provider}"
        );
    }
}

#[test]
fn the_control_token_is_the_consumer_s_own_derived_with_the_key_and_only_in_the_secret() {
    let qc = sqs_consumer();
    let keyed = |key: u8| {
        let mut settings = settings();
        settings.control_key = Some(ControlKey::new(vec![key; 32]).unwrap());
        settings
    };
    let token = control_token(&qc, &keyed(1)).unwrap();
    assert_eq!(token.len(), 40);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(
        control_token(&qc, &keyed(1)),
        Some(token.clone()),
        "the same at every reconcile"
    );
    assert_ne!(
        control_token(&qc, &keyed(2)).unwrap(),
        token,
        "another key, another token"
    );
    assert_ne!(
        control_token(&qc, &settings()).unwrap(),
        token,
        "not the plain hash of the UID anyone can work out"
    );
    let mut other = sqs_consumer();
    other.metadata.uid = Some("uid-2".into());
    assert_ne!(
        control_token(&other, &keyed(1)).unwrap(),
        token,
        "each consumer its own"
    );
    other.metadata.uid = None;
    assert_eq!(control_token(&other, &keyed(1)), None);
    assert!(
        ControlKey::new(vec![0; 31]).is_err(),
        "a short key is refused"
    );
    assert_eq!(format!("{:?}", keyed(1).control_key), "Some(ControlKey(…))");

    let secret = desired_sidecar_secret(&qc, &keyed(1));
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("orders-ferry-sidecar")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        secret.metadata.owner_references,
        Some(vec![owner_reference(&qc)]),
        "deleted with its consumer"
    );
    let data = secret.data.unwrap();
    assert_eq!(data[CONTROL_TOKEN_KEY].0, token.as_bytes());
    assert!(!data.contains_key(RATE_LIMIT_KEY), "no limit, no entry");

    let deployment = desired_deployment(&qc, &keyed(1), &names()).unwrap();
    let template = serde_json::to_string(&deployment).unwrap();
    assert!(
        !template.contains(&token),
        "the pod spec never holds the token"
    );
    let annotations = deployment
        .spec
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    let fingerprint = &annotations[CONTROL_TOKEN_ANNOTATION];
    assert_eq!(fingerprint, &control_token_fingerprint(&token));
    let other_key = desired_deployment(&qc, &keyed(2), &names()).unwrap();
    assert_ne!(
        other_key
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONTROL_TOKEN_ANNOTATION],
        *fingerprint,
        "a new key rolls the pods, whose token would be refused"
    );
}

/// A new pod starts at its share of `maxPerSecond` at `maxReplicas`, read from the Secret:
/// changing either changes no pod template, so no pod is rolled; the running pods are told
/// their share at run time.
#[test]
fn a_pod_starts_at_its_share_at_max_replicas_from_the_secret_and_a_change_rolls_no_pod() {
    let unlimited = sqs_consumer();
    let mut limited = sqs_consumer();
    limited.spec.delivery.max_per_second = Some(30.0);
    limited.spec.scaling.max_replicas = 4;
    let share = |qc: &QueueConsumer| {
        desired_sidecar_secret(qc, &settings())
            .data
            .unwrap()
            .get(RATE_LIMIT_KEY)
            .map(|v| String::from_utf8(v.0.clone()).unwrap())
    };
    assert_eq!(
        share(&limited).as_deref(),
        Some("7.5"),
        "30/s over at most 4 pods"
    );
    assert_eq!(share(&unlimited), None);
    let template = |qc: &QueueConsumer| {
        serde_json::to_value(
            desired_deployment(qc, &settings(), &names())
                .unwrap()
                .spec
                .template,
        )
        .unwrap()
    };
    assert_eq!(template(&limited), template(&unlimited));
    let mut more_pods = limited.clone();
    more_pods.spec.scaling.max_replicas = 60;
    assert_eq!(share(&more_pods).as_deref(), Some("0.5"));
    assert_eq!(template(&more_pods), template(&limited));
}

#[test]
fn workers_wait_for_the_drain_unless_they_have_their_own_pre_stop() {
    let qc = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"containers": [
            {"name": "worker", "image": "w"},
            {"name": "own", "image": "o", "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}},
        ]}},
    }));
    let all = containers(&qc);
    let hook = all[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    let get = hook.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some(DRAINED_PATH), &IntOrString::Int(METRICS_PORT))
    );
    assert_eq!(get.http_headers, None, "the hook carries no token");
    let own = all[1]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert!(own.exec.is_some() && own.http_get.is_none());
}

#[test]
fn a_longer_user_grace_period_is_kept() {
    let qc = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"terminationGracePeriodSeconds": 600, "containers": [{"name": "w", "image": "w"}]}},
    }));
    let d = desired_deployment(&qc, &settings(), &names()).unwrap();
    let pod = d.spec.template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(600));
}

#[test]
fn conflicts_with_the_sidecar_are_build_errors() {
    let taken_name = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"containers": [{"name": "ferry-consumer", "image": "w"}]}},
    }));
    let err = desired_deployment(&taken_name, &settings(), &names()).unwrap_err();
    assert_eq!(err.reason(), "SidecarNameTaken");
    let taken_port = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"containers": [{"name": "w", "image": "w", "ports": [{"containerPort": 9090}]}]}},
    }));
    let err = desired_deployment(&taken_port, &settings(), &names()).unwrap_err();
    assert!(err.to_string().contains("port 9090"), "{err}");
    let empty = consumer(json!({"queue": {"provider": "sqs"}, "worker": {}}));
    assert_eq!(
        desired_deployment(&empty, &settings(), &names()),
        Err(BuildError::NoWorkerContainer)
    );
}

#[test]
fn the_service_account_carries_the_identity_annotations() {
    let sa = desired_service_account(&sqs_consumer(), &settings()).unwrap();
    assert_eq!(sa.metadata.name.as_deref(), Some("orders-worker"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some("shop"));
    let annotations = sa.metadata.annotations.unwrap();
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/orders"
    );
    assert_eq!(sa.metadata.labels.unwrap()[MANAGED_BY_LABEL], "ferry");
    assert_eq!(sa.metadata.owner_references.unwrap()[0].name, "orders");
}

#[test]
fn operator_default_annotations_apply_unless_the_consumer_sets_the_same_key() {
    let mut defaults = settings();
    defaults.worker_service_account_annotations = [
        ("eks.amazonaws.com/role-arn", "arn:aws:iam::1:role/default"),
        ("eks.amazonaws.com/sts-regional-endpoints", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let annotations = desired_service_account(&sqs_consumer(), &defaults)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/orders"
    );
    assert_eq!(
        annotations["eks.amazonaws.com/sts-regional-endpoints"],
        "true"
    );

    let plain = consumer(json!({"queue": {"provider": "sqs"}, "worker": {}}));
    let annotations = desired_service_account(&plain, &defaults)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/default"
    );
}

#[test]
fn no_service_account_when_the_worker_names_its_own() {
    let qc = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"serviceAccountName": "shared", "containers": [{"name": "w", "image": "w"}]}},
    }));
    assert_eq!(desired_service_account(&qc, &settings()), None);
    let d = desired_deployment(&qc, &settings(), &names()).unwrap();
    let pod = d.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("shared"));
}

#[test]
fn building_twice_gives_the_same_objects() {
    // Server-side apply of an identical object is a no-op: no rollout, no status churn.
    let qc = sqs_consumer();
    assert_eq!(
        desired_deployment(&qc, &settings(), &names()),
        desired_deployment(&qc, &settings(), &names())
    );
}

#[test]
fn scaling_maps_onto_the_autoscaler_spec_and_validates() {
    let qc = sqs_consumer();
    let spec = autoscaler_spec(&qc.spec);
    assert_eq!(spec, crate::autoscaler::ScalingSpec::default());
    assert_eq!(spec.validate(), Ok(()));
    let mut backlog_only = qc.spec.clone();
    backlog_only.scaling = ferry_crds::ScalingSpec {
        min_replicas: 1,
        max_replicas: 5,
        backlog_per_replica: Some(10),
        ..ferry_crds::ScalingSpec::default()
    };
    backlog_only.delivery.max_per_second = Some(40.0);
    let spec = autoscaler_spec(&backlog_only);
    assert_eq!(spec.delivery_max_per_second, Some(40.0));
    assert_eq!(spec.target_latency_seconds, None);
    assert_eq!(spec.backlog_per_replica, Some(10));
    assert_eq!((spec.min_replicas, spec.max_replicas), (1, 5));
    assert_eq!(spec.validate(), Ok(()));
}

#[test]
fn worker_ports_spell_out_the_default_protocol() {
    let qc = consumer(json!({
        "queue": {"provider": "sqs"},
        "worker": {"spec": {"containers": [{"name": "w", "image": "w", "ports": [
            {"containerPort": 8080},
            {"containerPort": 5353, "protocol": "UDP"},
        ]}]}},
    }));
    let ports = containers(&qc)[0].ports.clone().unwrap();
    let protocols: Vec<_> = ports.iter().map(|p| p.protocol.as_deref()).collect();
    assert_eq!(protocols, [Some("TCP"), Some("UDP")]);
}

#[test]
fn provisioned_names_come_back_from_status() {
    use ferry_crds::{QueueConsumerStatus, QueueReference};
    assert_eq!(
        ProvisionedNames::from_status(&QueueConsumerStatus::default()),
        None
    );
    let status = QueueConsumerStatus {
        queue: Some(QueueReference {
            name: "shop-orders".into(),
            id: "projects/p/subscriptions/shop-orders".into(),
            arn: None,
            topic: Some("projects/p/topics/shop-orders".into()),
        }),
        dead_letter: Some(QueueReference {
            name: "shop-orders-dead-letter".into(),
            id: "projects/p/subscriptions/shop-orders-dead-letter".into(),
            arn: None,
            topic: Some("projects/p/topics/shop-orders-dead-letter".into()),
        }),
        ..QueueConsumerStatus::default()
    };
    let names = ProvisionedNames::from_status(&status).unwrap();
    assert_eq!(names.queue, "projects/p/subscriptions/shop-orders");
    assert_eq!(
        names.dead_letter.as_deref(),
        Some("projects/p/subscriptions/shop-orders-dead-letter")
    );
    assert_eq!(
        names.dead_letter_topic.as_deref(),
        Some("projects/p/topics/shop-orders-dead-letter")
    );
}

#[test]
fn where_pods_share_the_host_network_the_sidecar_uses_the_pod_ip() {
    let shared = OperatorSettings {
        pods_share_network: true,
        poll_interval: std::time::Duration::from_millis(1500),
        ..settings()
    };
    let env = sidecar_env(&sqs_consumer(), &shared, &names());
    let position = |name: &str| env.iter().position(|e| e.name == name).unwrap();
    let pod_ip = &env[position("POD_IP")];
    assert_eq!(
        pod_ip
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "status.podIP"
    );
    assert!(
        position("POD_IP") < position("FERRY_DELIVERY_URL"),
        "$(POD_IP) expands only after POD_IP is defined"
    );
    assert_eq!(
        env_value(&env, "FERRY_DELIVERY_URL"),
        Some("http://$(POD_IP):3000/jobs")
    );
    assert_eq!(env_value(&env, "FERRY_LISTEN_ADDR"), Some("$(POD_IP):9090"));
    assert_eq!(env_value(&env, "FERRY_STATS_INTERVAL"), Some("1.5"));
}

#[test]
fn each_provider_gets_its_own_local_endpoint() {
    let pubsub = consumer(json!({
        "queue": {"provider": "pubsub"},
        "worker": {"spec": {"containers": [{"name": "worker", "image": "w"}]}},
    }));
    let env = sidecar_env(&pubsub, &settings(), &names());
    assert_eq!(env_value(&env, "FERRY_ENDPOINT"), Some("127.0.0.1:8085"));
    let env = sidecar_env(&sqs_consumer(), &settings(), &names());
    assert_eq!(
        env_value(&env, "FERRY_ENDPOINT"),
        Some("http://127.0.0.1:5000")
    );
}

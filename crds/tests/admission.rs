//! The CEL rules, evaluated the way the API server (and the devcluster) evaluates them: with
//! kube-cel, Kubernetes' CEL libraries, after schema defaulting, transition rules against the
//! old object.

use ferry_crds::QueueConsumer;
use kube::CustomResourceExt;
use serde_json::{Value, json};

struct Admission {
    compiled: kube_cel::CompiledSchema,
    root: kube_cel::RootContext,
    validator: kube_cel::Validator,
}

impl Admission {
    fn new() -> Self {
        let crd = serde_json::to_value(QueueConsumer::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        Self {
            compiled: kube_cel::compile_schema(schema),
            root: kube_cel::RootContext {
                api_version: "ferry.dev/v1alpha1".into(),
                api_group: "ferry.dev".into(),
                kind: "QueueConsumer".into(),
            },
            validator: kube_cel::Validator::new(),
        }
    }

    /// The messages of the rules `obj` breaks (empty when admitted).
    fn check(&self, obj: &Value, old: Option<&Value>) -> Vec<String> {
        match self.validator.validate_compiled_with_context(
            &self.compiled,
            obj,
            old,
            Some(&self.root),
        ) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_vec()
                .into_iter()
                .map(|e| e.to_string())
                .collect(),
        }
    }

    fn assert_admitted(&self, obj: &Value) {
        let errors = self.check(obj, None);
        assert!(errors.is_empty(), "rejected: {errors:?}\n{obj:#}");
    }

    fn assert_rejected(&self, obj: &Value, old: Option<&Value>, message: &str) {
        let errors = self.check(obj, old);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "expected a rejection containing {message:?}, got {errors:?}"
        );
    }
}

fn sqs() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "queue": {"provider": "sqs", "name": "orders", "sqs": {"visibilityTimeoutSeconds": 60}},
            "worker": {"spec": {"containers": [{"name": "worker", "image": "shop/orders:1"}]}},
        }
    })
}

fn pubsub() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": "thumbnails", "namespace": "media"},
        "spec": {
            "queue": {"provider": "pubsub", "pubsub": {"project": "media-prod", "ackDeadlineSeconds": 60}},
            "deadLetter": {"maxDeliveries": 10},
            "worker": {"spec": {"containers": [{"name": "worker", "image": "media/thumbs:1"}]}},
        }
    })
}

fn with(mut obj: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut node = &mut obj;
    for seg in parent.split('/').filter(|s| !s.is_empty()) {
        node = node
            .as_object_mut()
            .unwrap()
            .entry(seg)
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut().unwrap().insert(key.into(), value);
    obj
}

#[test]
fn good_objects_are_admitted() {
    let a = Admission::new();
    a.assert_admitted(&sqs());
    a.assert_admitted(&pubsub());
    let fifo = with(sqs(), "/spec/queue/name", json!("orders.fifo"));
    let fifo = with(fifo, "/spec/queue/sqs/fifo", json!(true));
    let fifo = with(
        fifo,
        "/spec/queue/sqs/contentBasedDeduplication",
        json!(true),
    );
    a.assert_admitted(&fifo);
    let scaled = with(
        sqs(),
        "/spec/scaling",
        json!({"minReplicas": 2, "maxReplicas": 2}),
    );
    a.assert_admitted(&scaled);
    a.assert_admitted(&with(sqs(), "/spec/deadLetter/maxDeliveries", json!(1000)));
}

#[test]
fn the_committed_examples_are_admitted() {
    let a = Admission::new();
    for file in ["queueconsumer-sqs.yaml", "queueconsumer-pubsub.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let obj: Value = serde_saphyr::from_str(&text).unwrap();
        a.assert_admitted(&obj);
        let typed: QueueConsumer = serde_json::from_value(obj).unwrap();
        assert!(typed.spec.worker.spec.is_some(), "{file}");
    }
}

#[test]
fn provider_blocks_are_exclusive() {
    let a = Admission::new();
    let both = with(sqs(), "/spec/queue/pubsub", json!({"project": "p"}));
    a.assert_rejected(
        &both,
        None,
        "spec.queue.pubsub is only allowed with provider: pubsub",
    );
    let wrong = with(pubsub(), "/spec/queue/sqs", json!({}));
    a.assert_rejected(
        &wrong,
        None,
        "spec.queue.sqs is only allowed with provider: sqs",
    );
}

#[test]
fn fifo_names_and_name_syntax() {
    let a = Admission::new();
    let fifo_without_suffix = with(sqs(), "/spec/queue/sqs/fifo", json!(true));
    a.assert_rejected(
        &fifo_without_suffix,
        None,
        "FIFO queue's name must end with '.fifo'",
    );
    let suffix_without_fifo = with(sqs(), "/spec/queue/name", json!("orders.fifo"));
    a.assert_rejected(
        &suffix_without_fifo,
        None,
        "FIFO queue's name must end with '.fifo'",
    );
    let bad_chars = with(sqs(), "/spec/queue/name", json!("orders/v2"));
    a.assert_rejected(&bad_chars, None, "an SQS queue name has 1-80 characters");
    let too_long = with(sqs(), "/spec/queue/name", json!("a".repeat(81)));
    a.assert_rejected(&too_long, None, "an SQS queue name has 1-80 characters");
    let goog = with(pubsub(), "/spec/queue/name", json!("google-events"));
    a.assert_rejected(&goog, None, "does not start with 'goog'");
    let dedup = with(
        sqs(),
        "/spec/queue/sqs/contentBasedDeduplication",
        json!(true),
    );
    a.assert_rejected(&dedup, None, "contentBasedDeduplication needs fifo: true");
}

#[test]
fn max_deliveries_depend_on_the_provider() {
    let a = Admission::new();
    a.assert_admitted(&with(sqs(), "/spec/deadLetter/maxDeliveries", json!(2)));
    for bad in [2, 101] {
        let obj = with(pubsub(), "/spec/deadLetter/maxDeliveries", json!(bad));
        a.assert_rejected(&obj, None, "must be between 5 and 100 for Pub/Sub");
    }
    let retention = with(pubsub(), "/spec/deadLetter/retentionSeconds", json!(120));
    a.assert_rejected(
        &retention,
        None,
        "must be between 600 and 604800 for Pub/Sub",
    );
}

#[test]
fn scaling_delivery_and_deletion_rules() {
    let a = Admission::new();
    let inverted = with(
        sqs(),
        "/spec/scaling",
        json!({"minReplicas": 5, "maxReplicas": 2}),
    );
    a.assert_rejected(
        &inverted,
        None,
        "spec.scaling.minReplicas must not exceed maxReplicas",
    );
    let port = with(sqs(), "/spec/delivery/port", json!(9090));
    a.assert_rejected(&port, None, "9090 is the ferry-consumer sidecar's own port");
    let path = with(sqs(), "/spec/delivery/path", json!("jobs"));
    a.assert_rejected(&path, None, "spec.delivery.path must start with '/'");
    for bad in ["ready", "/re ady"] {
        let readiness = with(sqs(), "/spec/delivery/readinessPath", json!(bad));
        a.assert_rejected(
            &readiness,
            None,
            "spec.delivery.readinessPath must be a URL path starting with '/'",
        );
    }
    a.assert_admitted(&with(
        sqs(),
        "/spec/delivery/readinessPath",
        json!("/ready"),
    ));
    let backoff = with(
        sqs(),
        "/spec/delivery/retryBackoff",
        json!({"minSeconds": 10, "maxSeconds": 5}),
    );
    a.assert_rejected(&backoff, None, "minSeconds must not exceed maxSeconds");
    let force = with(sqs(), "/spec/forceDelete", json!(true));
    a.assert_rejected(
        &force,
        None,
        "spec.forceDelete applies only with deletionPolicy: Delete",
    );
    a.assert_admitted(&with(force, "/spec/deletionPolicy", json!("Delete")));
    let policy = with(
        pubsub(),
        "/spec/queue/pubsub/retryPolicy",
        json!({"minimumBackoffSeconds": 60, "maximumBackoffSeconds": 30}),
    );
    a.assert_rejected(
        &policy,
        None,
        "minimumBackoffSeconds must not exceed maximumBackoffSeconds",
    );
}

#[test]
fn periodic_tasks_take_cron_yaml_entries_and_refuse_what_cannot_be_sent() {
    let a = Admission::new();
    let task = |name: &str, url: &str, schedule: &str| {
        with(
            sqs(),
            "/spec/periodicTasks",
            json!([{"name": name, "url": url, "schedule": schedule}]),
        )
    };
    a.assert_admitted(&task(
        "Remove unattended jobs",
        "/tasks/cleanup?all=1",
        "*/10 * * * *",
    ));
    a.assert_admitted(&task("nightly", "/nightly", "0 3 * * MON-FRI"));
    a.assert_admitted(&task("hourly", "/h", " @hourly "));
    a.assert_rejected(
        &task("t", "tasks/cleanup", "* * * * *"),
        None,
        "url must be a path starting with '/'",
    );
    a.assert_rejected(
        &task("t", "/tasks/clean up", "* * * * *"),
        None,
        "url must be a path starting with '/'",
    );
    a.assert_rejected(
        &task("line\nbreak", "/t", "* * * * *"),
        None,
        "name must not contain control characters",
    );
    let zoned = |zone: &str| {
        with(
            sqs(),
            "/spec/periodicTasks",
            json!([{"name": "nightly", "url": "/n", "schedule": "30 2 * * *", "timeZone": zone}]),
        )
    };
    for zone in [
        "Europe/Berlin",
        "UTC",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+5",
    ] {
        a.assert_admitted(&zoned(zone));
    }
    // A typo, the host's zone and offsets are not names the operator can read a schedule in.
    for zone in ["Europe/Berln", "europe/berlin", "Local", "+02:00", ""] {
        a.assert_rejected(
            &zoned(zone),
            None,
            "timeZone must be an IANA time zone name",
        );
    }
    // Seconds (six fields), four fields and unknown macros are not cron.yaml schedules.
    for schedule in ["0 * * * * *", "* * * *", "@every 5m", "@reboot"] {
        a.assert_rejected(
            &task("t", "/t", schedule),
            None,
            "schedule must be five cron fields",
        );
    }
}

#[test]
fn worker_needs_a_container_and_names_fit_labels() {
    let a = Admission::new();
    let empty = with(sqs(), "/spec/worker", json!({"spec": {"containers": []}}));
    a.assert_rejected(&empty, None, "needs at least one container");
    let long = with(sqs(), "/metadata/name", json!("x".repeat(57)));
    a.assert_rejected(&long, None, "at most 56 characters");
}

#[test]
fn provider_queue_name_and_queue_type_are_immutable() {
    let a = Admission::new();
    let old = sqs();
    assert!(
        a.check(&sqs(), Some(&old)).is_empty(),
        "an unchanged object is admitted"
    );
    let renamed = with(sqs(), "/spec/queue/name", json!("orders-v2"));
    a.assert_rejected(&renamed, Some(&old), "spec.queue.name is immutable");
    let unnamed = pubsub();
    let named_later = with(pubsub(), "/spec/queue/name", json!("thumbnails"));
    a.assert_rejected(&named_later, Some(&unnamed), "spec.queue.name is immutable");
    let moved = with(
        with(sqs(), "/spec/queue/provider", json!("pubsub")),
        "/spec/queue/sqs",
        Value::Null,
    );
    let moved = {
        let mut m = moved;
        m["spec"]["queue"].as_object_mut().unwrap().remove("sqs");
        m
    };
    a.assert_rejected(&moved, Some(&old), "spec.queue.provider is immutable");
    let fifo_old = with(
        with(sqs(), "/spec/queue/name", json!("o.fifo")),
        "/spec/queue/sqs/fifo",
        json!(true),
    );
    let fifo_new = with(fifo_old.clone(), "/spec/queue/sqs/fifo", json!(false));
    a.assert_rejected(
        &fifo_new,
        Some(&fifo_old),
        "spec.queue.sqs.fifo is immutable",
    );
    let ordered = with(
        pubsub(),
        "/spec/queue/pubsub/enableMessageOrdering",
        json!(true),
    );
    a.assert_rejected(
        &ordered,
        Some(&pubsub()),
        "enableMessageOrdering is immutable",
    );
    // Mutable settings may change.
    let longer_deadline = with(
        pubsub(),
        "/spec/queue/pubsub/ackDeadlineSeconds",
        json!(120),
    );
    assert!(a.check(&longer_deadline, Some(&pubsub())).is_empty());
}

#[test]
fn every_rule_compiles_in_scope_and_within_the_cost_budget() {
    let a = Admission::new();
    fn walk(s: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
        out.extend(s.compilation_errors().iter().map(|e| e.to_string()));
        for compiled in s.validations.iter().flatten() {
            let rule = &compiled.rule.rule;
            for w in kube_cel::analyze_rule(rule, s, kube_cel::ScopeContext::CrdValidation) {
                if w.kind != kube_cel::WarningKind::MissingBounds {
                    out.push(format!("{}: {}", w.rule, w.message));
                }
            }
        }
        s.properties.values().for_each(|c| walk(c, out));
        if let Some(i) = &s.items {
            walk(i, out);
        }
    }
    let mut problems = Vec::new();
    walk(&a.compiled, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

//! What the generated schema tells the API server (and `kubectl explain`).

use ferry_crds::QueueConsumer;
use kube::CustomResourceExt;
use serde_json::Value;

fn crd() -> Value {
    serde_json::to_value(QueueConsumer::crd()).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The schema node at a dotted property path.
fn node(path: &str) -> Value {
    path.split('.')
        .fold(schema(), |n, p| n["properties"][p].clone())
}

fn rules(node: &Value) -> Vec<String> {
    node["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn names_scope_and_subresources() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "queueconsumers.ferry.dev");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "ferry.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "QueueConsumer");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["qc"]));
    assert_eq!(spec["names"]["categories"], serde_json::json!(["ferry"]));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    // No scale subresource: see docs/crd.md (the spec has bounds, not a replica count).
    assert!(version["subresources"].get("scale").is_none());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Provider",
            "Queue",
            "Backlog",
            "Dead Letters",
            "Replicas",
            "Suspended",
            "Redrive",
            "Age"
        ]
    );
}

#[test]
fn every_property_is_described_for_kubectl_explain() {
    fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node["properties"].as_object() {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&node("spec"), "spec", &mut missing);
    walk(&node("status"), "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn bounds_from_the_issue_are_in_the_schema() {
    let cases = [
        ("spec.queue.sqs.visibilityTimeoutSeconds", 0.0, 43200.0),
        ("spec.queue.sqs.messageRetentionSeconds", 60.0, 1209600.0),
        ("spec.queue.sqs.delaySeconds", 0.0, 900.0),
        ("spec.queue.pubsub.ackDeadlineSeconds", 10.0, 600.0),
        (
            "spec.queue.pubsub.retryPolicy.minimumBackoffSeconds",
            0.0,
            600.0,
        ),
        (
            "spec.queue.pubsub.retryPolicy.maximumBackoffSeconds",
            0.0,
            600.0,
        ),
        ("spec.deadLetter.maxDeliveries", 1.0, 1000.0),
        ("spec.delivery.concurrency", 1.0, 1000.0),
        ("spec.delivery.port", 1.0, 65535.0),
    ];
    for (path, min, max) in cases {
        let n = node(path);
        assert_eq!(n["minimum"].as_f64(), Some(min), "{path} minimum");
        assert_eq!(n["maximum"].as_f64(), Some(max), "{path} maximum");
    }
    let statuses = node("spec.delivery.permanentFailureStatuses");
    assert_eq!(statuses["items"]["minimum"].as_f64(), Some(400.0));
    assert_eq!(statuses["items"]["maximum"].as_f64(), Some(599.0));
    assert_eq!(statuses["x-kubernetes-list-type"], "set");
    assert_eq!(
        node("spec.scaling.minReplicas")["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        node("spec.scaling.maxReplicas")["minimum"].as_f64(),
        Some(1.0)
    );
}

#[test]
fn cross_field_rules_are_cel_validations() {
    let queue = rules(&node("spec.queue"));
    assert!(queue.contains(&"self.provider == oldSelf.provider".to_string()));
    assert!(
        queue
            .iter()
            .any(|r| r.contains("self.name == oldSelf.name"))
    );
    assert!(queue.iter().any(|r| r.contains("endsWith('.fifo')")));
    assert!(queue.contains(&"!has(self.sqs) || self.provider == 'sqs'".to_string()));
    assert!(queue.contains(&"!has(self.pubsub) || self.provider == 'pubsub'".to_string()));
    assert!(
        rules(&node("spec.scaling")).contains(&"self.minReplicas <= self.maxReplicas".to_string())
    );
    assert!(
        rules(&node("spec"))
            .iter()
            .any(|r| r.contains("self.deadLetter.maxDeliveries >= 5"))
    );
    assert!(rules(&node("spec.queue.sqs.fifo")).contains(&"self == oldSelf".to_string()));
    // Every rule carries a message, so a rejection reads as a sentence, not as CEL.
    fn all_have_messages(node: &Value) {
        for r in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "rule without message: {r}"
            );
        }
        for key in ["properties", "additionalProperties"] {
            if let Some(children) = node[key].as_object() {
                children.values().for_each(all_have_messages);
            }
        }
        if node["items"].is_object() {
            all_have_messages(&node["items"]);
        }
    }
    all_have_messages(&schema());
}

#[test]
fn worker_is_an_open_pod_template_and_conditions_merge_by_type() {
    let worker = node("spec.worker");
    assert_eq!(worker["type"], "object");
    assert_eq!(worker["x-kubernetes-preserve-unknown-fields"], true);
    let conditions = node("status.conditions");
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
}

#[test]
fn the_crd_stays_small_enough_for_client_side_apply() {
    // `kubectl apply` stores the whole object in an annotation limited to 256 KiB.
    let size = serde_json::to_string(&crd()).unwrap().len();
    assert!(size < 128 * 1024, "the CRD is {size} bytes");
}

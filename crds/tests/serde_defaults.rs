//! The Rust types, their defaults and their wire form.

use ferry_crds::{
    DeletionPolicy, DeliverySpec, QueueConsumer, QueueConsumerStatus, QueueProvider,
    QueueReference, ScalingSpec, condition_type,
};
use serde_json::json;

fn minimal() -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "queue": {"provider": "sqs"},
            "worker": {"spec": {"containers": [{"name": "worker", "image": "w:1"}]}},
        }
    })
}

#[test]
fn omitted_fields_take_the_documented_defaults() {
    let qc: QueueConsumer = serde_json::from_value(minimal()).unwrap();
    let spec = &qc.spec;
    assert_eq!(spec.queue.provider, QueueProvider::Sqs);
    assert_eq!(spec.dead_letter.max_deliveries, 5);
    assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
    assert!(!spec.force_delete);
    assert_eq!(spec.delivery, DeliverySpec::default());
    assert_eq!(spec.delivery.path, "/");
    assert_eq!(spec.delivery.port, 8080);
    assert_eq!(spec.delivery.concurrency, 10);
    assert_eq!(spec.delivery.timeout_seconds, 60);
    assert_eq!(spec.delivery.content_type, "application/json");
    assert_eq!(spec.scaling, ScalingSpec::default());
    assert_eq!(spec.scaling.max_replicas, 50);
    assert_eq!(spec.scaling.effective_target_latency_seconds(), Some(30.0));
    assert_eq!(qc.queue_name(), "shop-orders");
}

#[test]
fn a_backlog_target_alone_disables_the_default_latency_target() {
    let scaling = ScalingSpec {
        backlog_per_replica: Some(10),
        ..ScalingSpec::default()
    };
    assert_eq!(scaling.effective_target_latency_seconds(), None);
}

#[test]
fn schema_defaults_equal_serde_defaults() {
    // The API server fills defaults from the schema, the operator from serde; they must agree.
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(QueueConsumer::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let delivery = serde_json::to_value(DeliverySpec::default()).unwrap();
    assert_eq!(spec["properties"]["delivery"]["default"], delivery);
    let scaling = serde_json::to_value(ScalingSpec::default()).unwrap();
    assert_eq!(spec["properties"]["scaling"]["default"], scaling);
}

#[test]
fn an_example_round_trips_through_json() {
    let text = include_str!("../../examples/queueconsumer-pubsub.yaml");
    let qc: QueueConsumer = serde_saphyr::from_str(text).unwrap();
    assert_eq!(qc.spec.queue.provider, QueueProvider::Pubsub);
    assert_eq!(qc.spec.scaling.backlog_per_replica, Some(20));
    let json = serde_json::to_value(&qc).unwrap();
    assert_eq!(json["spec"]["queue"]["provider"], "pubsub");
    assert_eq!(json["spec"]["deadLetter"]["maxDeliveries"], 10);
    // Unset optional fields stay off the wire, so server-side apply does not claim them.
    assert!(json["spec"]["queue"].get("sqs").is_none());
    assert!(
        json["spec"]["scaling"]
            .get("targetLatencySeconds")
            .is_none()
    );
    let back: QueueConsumer = serde_json::from_value(json).unwrap();
    assert_eq!(back, qc);
}

#[test]
fn status_round_trips_and_omits_what_is_unknown() {
    let status = QueueConsumerStatus {
        observed_generation: Some(3),
        queue: Some(QueueReference {
            name: "shop-orders".into(),
            id: "https://sqs.eu-west-1.amazonaws.com/1/shop-orders".into(),
            arn: Some("arn:aws:sqs:eu-west-1:1:shop-orders".into()),
            topic: None,
        }),
        replicas: Some(2),
        ..QueueConsumerStatus::default()
    };
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["observedGeneration"], 3);
    assert_eq!(json["queue"]["arn"], "arn:aws:sqs:eu-west-1:1:shop-orders");
    assert!(json.get("backlog").is_none());
    assert!(json.get("conditions").is_none());
    assert_eq!(
        serde_json::from_value::<QueueConsumerStatus>(json).unwrap(),
        status
    );
    assert_eq!(condition_type::READY, "Ready");
}

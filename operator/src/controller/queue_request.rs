//! The queue a QueueConsumer asks for, in the form `ferry_queues::provision` takes. Pure.

use std::time::Duration;

use ferry_crds::{QueueConsumer, QueueProvider};
use ferry_queues::Provider;
use ferry_queues::provision::{Owner, QueueRequest};

/// Where the operator provisions queues: endpoints for local servers, the default project.
#[derive(Clone, Debug, Default)]
pub struct CloudSettings {
    /// An SQS-compatible server (`FERRY_SQS_ENDPOINT`).
    pub sqs_endpoint: Option<String>,
    /// The Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`).
    pub pubsub_endpoint: Option<String>,
    /// Project for Pub/Sub consumers that do not name one (`FERRY_PUBSUB_PROJECT`).
    pub pubsub_project: Option<String>,
    /// Recorded on every queue as its owner's cluster.
    pub cluster_name: String,
}

fn seconds(value: Option<i32>) -> Option<Duration> {
    value
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

pub fn queue_request(qc: &QueueConsumer, cloud: &CloudSettings) -> QueueRequest {
    let spec = &qc.spec;
    let provider = match spec.queue.provider {
        QueueProvider::Sqs => Provider::Sqs,
        QueueProvider::Pubsub => Provider::PubSub,
    };
    let mut request = QueueRequest::new(provider, qc.queue_name());
    // No queue in the status yet: a new object, whose queue is almost always new too.
    request.expect_new = qc.status.as_ref().is_none_or(|s| s.queue.is_none());
    request.max_deliveries = u32::try_from(spec.dead_letter.max_deliveries).unwrap_or(1);
    request.dead_letter_retention = seconds(spec.dead_letter.retention_seconds);
    request.owner = Some(Owner {
        cluster: cloud.cluster_name.clone(),
        namespace: qc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: qc.metadata.name.clone().unwrap_or_default(),
    });
    match provider {
        Provider::Sqs => {
            request.endpoint = cloud.sqs_endpoint.clone();
            if let Some(sqs) = &spec.queue.sqs {
                request.ordered = sqs.fifo;
                request.content_based_deduplication = sqs.content_based_deduplication;
                request.lease = seconds(sqs.visibility_timeout_seconds).unwrap_or(request.lease);
                request.retention = seconds(sqs.message_retention_seconds);
                request.delay = seconds(sqs.delay_seconds);
                request.kms_key = sqs.kms_master_key_id.clone();
                request.adopt = sqs.adopt;
            }
        }
        Provider::PubSub => {
            request.endpoint = cloud.pubsub_endpoint.clone();
            request.project = cloud.pubsub_project.clone();
            if let Some(pubsub) = &spec.queue.pubsub {
                request.project = pubsub.project.clone().or(request.project);
                request.lease = seconds(pubsub.ack_deadline_seconds).unwrap_or(request.lease);
                request.retention = seconds(pubsub.message_retention_seconds);
                request.ordered = pubsub.enable_message_ordering;
                request.exactly_once = pubsub.enable_exactly_once_delivery;
                request.filter = pubsub.filter.clone().filter(|f| !f.is_empty());
                request.retry_backoff = pubsub.retry_policy.as_ref().map(|r| {
                    (
                        Duration::from_secs(u64::try_from(r.minimum_backoff_seconds).unwrap_or(0)),
                        Duration::from_secs(u64::try_from(r.maximum_backoff_seconds).unwrap_or(0)),
                    )
                });
                request.adopt = pubsub.adopt;
            }
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(json: &str) -> QueueConsumer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn sqs_settings_map_onto_the_request() {
        let qc = consumer(
            r#"{"apiVersion":"ferry.dev/v1alpha1","kind":"QueueConsumer",
                "metadata":{"name":"orders","namespace":"shop"},
                "spec":{"queue":{"provider":"sqs","name":"orders","sqs":{"fifo":true,"visibilityTimeoutSeconds":45,"delaySeconds":5,"adopt":true}},
                        "deadLetter":{"maxDeliveries":7},
                        "worker":{"spec":{"containers":[{"name":"app","image":"app"}]}}}}"#,
        );
        let cloud = CloudSettings {
            sqs_endpoint: Some("http://127.0.0.1:5000".into()),
            cluster_name: "dev".into(),
            ..Default::default()
        };
        let request = queue_request(&qc, &cloud);
        assert_eq!(request.provider, Provider::Sqs);
        assert_eq!(request.name, "orders");
        assert_eq!(request.max_deliveries, 7);
        assert_eq!(request.lease, Duration::from_secs(45));
        assert_eq!(request.delay, Some(Duration::from_secs(5)));
        assert!(request.ordered && request.adopt);
        assert_eq!(request.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let owner = request.owner.unwrap();
        assert_eq!(
            (
                owner.cluster.as_str(),
                owner.namespace.as_str(),
                owner.name.as_str()
            ),
            ("dev", "shop", "orders")
        );
    }

    #[test]
    fn pubsub_takes_the_default_project_unless_the_object_names_one() {
        let json = |project: &str| {
            format!(
                r#"{{"apiVersion":"ferry.dev/v1alpha1","kind":"QueueConsumer","metadata":{{"name":"orders","namespace":"shop"}},
                "spec":{{"queue":{{"provider":"pubsub","pubsub":{{{project}"ackDeadlineSeconds":20,"retryPolicy":{{"minimumBackoffSeconds":1,"maximumBackoffSeconds":60}}}}}},
                        "deadLetter":{{"maxDeliveries":5}},
                        "worker":{{"spec":{{"containers":[{{"name":"app","image":"app"}}]}}}}}}}}"#
            )
        };
        let cloud = CloudSettings {
            pubsub_project: Some("default-project".into()),
            ..Default::default()
        };
        let request = queue_request(&consumer(&json("")), &cloud);
        assert_eq!(request.project.as_deref(), Some("default-project"));
        assert_eq!(request.lease, Duration::from_secs(20));
        assert_eq!(
            request.retry_backoff,
            Some((Duration::from_secs(1), Duration::from_secs(60)))
        );
        let request = queue_request(&consumer(&json(r#""project":"theirs","#)), &cloud);
        assert_eq!(request.project.as_deref(), Some("theirs"));
    }
}

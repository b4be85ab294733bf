//! The watches the reconciler and the autoscaler share in one scope (a namespace, or the
//! whole cluster): QueueConsumers and the worker Deployments, each kept once in memory.
//!
//! Both used to watch and cache both kinds on their own: two copies of every QueueConsumer
//! and two streams of every Deployment event decoded in one process. Now one watch per kind
//! feeds one store, which the autoscaler reads, and one stream of events, which triggers
//! the reconciler. The reconciler reads the Deployment store too, to see whether a
//! Deployment is still as its last apply left it (`controller::applied`).

use ferry_crds::QueueConsumer;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::builders::MANAGED_BY_LABEL;
use crate::scaling::slim;

/// What the autoscaler and the reconciler read: the stores the watches keep current.
#[derive(Clone)]
pub struct Caches {
    pub consumers: Store<QueueConsumer>,
    pub deployments: Store<Deployment>,
}

/// The watches' events, for the reconciler, which drives them: the stores fill only while
/// these streams are polled.
pub struct Events {
    pub consumers: BoxStream<'static, Result<QueueConsumer, watcher::Error>>,
    pub deployments: BoxStream<'static, Result<Deployment, watcher::Error>>,
}

/// Watches QueueConsumers and Ferry's worker Deployments in `namespace` (all when `None`).
/// Objects are stored slim (`scaling::slim`): nobody reads `managedFields` or a
/// Deployment's pod template from the cache.
pub fn start(client: &kube::Client, namespace: Option<&str>) -> (Caches, Events) {
    start_with(api(client, namespace), api(client, namespace))
}

/// The same, on these two APIs (the scope is theirs).
pub fn start_with(
    consumer_api: Api<QueueConsumer>,
    deployment_api: Api<Deployment>,
) -> (Caches, Events) {
    let (consumers, consumer_writer) = reflector::store();
    let (deployments, deployment_writer) = reflector::store();
    let consumer_events = watcher(consumer_api, watcher::Config::default())
        .default_backoff()
        .modify(slim::consumer)
        .reflect(consumer_writer)
        .applied_objects()
        .boxed();
    let deployment_events = watcher(
        deployment_api,
        watcher::Config::default().labels(MANAGED_BY_LABEL),
    )
    .default_backoff()
    .modify(slim::deployment)
    .reflect(deployment_writer)
    // Deletions too: a deleted worker Deployment is made again at once.
    .touched_objects()
    .boxed();
    (
        Caches {
            consumers,
            deployments,
        },
        Events {
            consumers: consumer_events,
            deployments: deployment_events,
        },
    )
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
